//! Cast throughput into an actor, call round trips to an actor, and idle actors, for
//! actix, ractor and kameo beside ours (an agent = a thread looping on `receive`).
//!
//! Cast throughput: the actor (or agent) is started first; then the clock starts,
//! `producers` plain threads send their share of `n` casts (`do_send`, `cast`,
//! `tell(..).try_send()`, `MailboxSender::try_send`), and the clock stops when the
//! actor's handler has counted `n`. Every actor runs on its own thread: actix in its
//! `System`, ractor and kameo on a current-thread tokio runtime, ours on a plain thread.
//! Mailboxes are unbounded everywhere (kameo is spawned with `mailbox::unbounded()`,
//! actix's `do_send` ignores the capacity, ractor's are unbounded).

use std::hint::black_box;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::{
    AgentMessage, AgentPid, MessagePriority, MessageSystem, RouterConfig,
};

use crate::harness::{medians_interleaved, rate, Better, Results, Samples, Sizes};

/// A cast carrying a u64.
pub struct Cast(pub u64);
/// A call carrying a u64, answered with it.
pub struct Ping(pub u64);

/// Starts producers sending `n` casts through `send`, waits on `done` for the handler.
fn timed_casts<T: Clone + Send>(
    producers: usize,
    n: usize,
    tx: T,
    done: &std_mpsc::Receiver<()>,
    send: impl Fn(&T, u64) + Sync,
) -> f64 {
    let per = n / producers;
    let start = Instant::now();
    thread::scope(|s| {
        for p in 0..producers {
            let tx = tx.clone();
            let send = &send;
            s.spawn(move || {
                for i in p * per..(p + 1) * per {
                    send(&tx, i as u64);
                }
            });
        }
        done.recv().expect("handler saw n");
    });
    rate(per * producers, start.elapsed())
}

// ===== ours =====

/// Ours: a registered agent, a thread looping on `receive` (or, with `batched`, on
/// `receive_many` in batches of up to 64), casts through the pre-resolved
/// `MailboxSender` (`routed = false`) or `MessageSystem::send` by pid.
pub fn ours_casts(producers: usize, n: usize, routed: bool, batched: bool) -> f64 {
    let system = MessageSystem::new(RouterConfig::default());
    let (from, pid) = (AgentPid::new(), AgentPid::new());
    system.register_agent(pid.clone()).expect("register");
    let mailbox = system.get_mailbox(&pid).expect("registered");
    let (done_tx, done_rx) = std_mpsc::channel();
    let total = (n / producers) * producers;
    let agent = thread::spawn(move || {
        let mut count = 0usize;
        let mut handle = |message: AgentMessage| {
            if let AgentMessage::Cast { payload, .. } = message {
                black_box(payload);
                count += 1;
                if count == total {
                    done_tx.send(()).expect("main waits");
                }
            }
        };
        if batched {
            let batch = crate::contenders::BATCH;
            let mut buf = Vec::with_capacity(batch);
            while mailbox.receive_many(&mut buf, batch).is_ok() {
                buf.drain(..).for_each(&mut handle);
            }
        } else {
            while let Ok(message) = mailbox.receive() {
                handle(message);
            }
        }
    });
    let r = if routed {
        timed_casts(producers, n, system.clone(), &done_rx, |system, i| {
            system
                .send(&pid, AgentMessage::cast(from.clone(), i))
                .expect("registered");
        })
    } else {
        let sender = system.sender(&pid).expect("registered");
        timed_casts(producers, n, sender, &done_rx, |tx, i| {
            tx.try_send(AgentMessage::cast(from.clone(), i), MessagePriority::Normal)
                .expect("open mailbox");
        })
    };
    system.shutdown().expect("shutdown");
    agent.join().expect("agent");
    r
}

// ===== actix =====

mod ax {
    use super::*;
    use actix::prelude::*;

    impl actix::Message for Cast {
        type Result = ();
    }
    impl actix::Message for Ping {
        type Result = u64;
    }

    pub struct Counter {
        pub count: usize,
        pub total: usize,
        pub done: std_mpsc::Sender<()>,
    }
    impl Actor for Counter {
        type Context = Context<Self>;
    }
    impl Handler<Cast> for Counter {
        type Result = ();
        fn handle(&mut self, msg: Cast, _: &mut Context<Self>) {
            black_box(msg.0);
            self.count += 1;
            if self.count == self.total {
                self.done.send(()).expect("main waits");
            }
        }
    }

    pub struct Echo;
    impl Actor for Echo {
        type Context = Context<Self>;
    }
    impl Handler<Ping> for Echo {
        type Result = u64;
        fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> u64 {
            msg.0
        }
    }

    pub struct Idle;
    impl Actor for Idle {
        type Context = Context<Self>;
    }

    pub fn casts(producers: usize, n: usize) -> f64 {
        let (done_tx, done_rx) = std_mpsc::channel();
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let total = (n / producers) * producers;
        let sys = thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let addr = Counter {
                    count: 0,
                    total,
                    done: done_tx,
                }
                .start();
                addr_tx.send(addr).expect("main waits");
                stop_rx.await.ok();
            })
        });
        let addr = addr_rx.recv().expect("actor started");
        let r = timed_casts(producers, n, addr, &done_rx, |addr, i| {
            addr.do_send(Cast(i))
        });
        stop_tx.send(()).ok();
        sys.join().expect("actix thread");
        r
    }

    pub fn calls(calls: usize) -> Samples {
        actix_rt::System::new().block_on(async move {
            let addr = Echo.start();
            crate::latency::sample_async(calls, |i| {
                let addr = addr.clone();
                async move {
                    black_box(addr.send(Ping(i)).await.expect("reply"));
                }
            })
            .await
        })
    }

    /// `n` idle actors; returns (RSS delta bytes, seconds to start them).
    pub fn idle(n: usize) -> (u64, f64) {
        actix_rt::System::new().block_on(async move {
            let mut addrs = Vec::with_capacity(n);
            let before = crate::harness::rss_bytes();
            let t = Instant::now();
            for _ in 0..n {
                addrs.push(Idle.start());
            }
            // Let every actor run its start-up.
            for _ in 0..4 {
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let after = crate::harness::rss_bytes();
            black_box(&addrs);
            (after.saturating_sub(before), secs)
        })
    }
}

// ===== ractor =====

mod rc {
    use super::*;
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    pub enum Msg {
        Cast(u64),
        Ping(u64, RpcReplyPort<u64>),
    }

    pub struct Counter;
    pub struct CounterState {
        count: usize,
        total: usize,
        done: std_mpsc::Sender<()>,
    }

    impl Actor for Counter {
        type Msg = Msg;
        type State = CounterState;
        type Arguments = (usize, std_mpsc::Sender<()>);

        async fn pre_start(
            &self,
            _: ActorRef<Msg>,
            (total, done): Self::Arguments,
        ) -> Result<CounterState, ActorProcessingErr> {
            Ok(CounterState {
                count: 0,
                total,
                done,
            })
        }

        async fn handle(
            &self,
            _: ActorRef<Msg>,
            message: Msg,
            state: &mut CounterState,
        ) -> Result<(), ActorProcessingErr> {
            match message {
                Msg::Cast(n) => {
                    black_box(n);
                    state.count += 1;
                    if state.count == state.total {
                        state.done.send(()).expect("main waits");
                    }
                }
                Msg::Ping(n, reply) => {
                    reply.send(n).ok();
                }
            }
            Ok(())
        }
    }

    pub struct Idle;
    impl Actor for Idle {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    pub fn casts(producers: usize, n: usize) -> f64 {
        let (done_tx, done_rx) = std_mpsc::channel();
        let (ref_tx, ref_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let total = (n / producers) * producers;
        let rt_thread = thread::spawn(move || {
            current_thread().block_on(async move {
                let (actor, handle) = Actor::spawn(None, Counter, (total, done_tx))
                    .await
                    .expect("spawn");
                ref_tx.send(actor.clone()).expect("main waits");
                stop_rx.await.ok();
                actor.stop(None);
                handle.await.ok();
            })
        });
        let actor = ref_rx.recv().expect("actor started");
        let r = timed_casts(producers, n, actor, &done_rx, |actor, i| {
            actor.cast(Msg::Cast(i)).expect("actor alive");
        });
        stop_tx.send(()).ok();
        rt_thread.join().expect("ractor thread");
        r
    }

    pub fn calls(calls: usize) -> Samples {
        current_thread().block_on(async move {
            let (done_tx, _done_rx) = std_mpsc::channel();
            let (actor, handle) = Actor::spawn(None, Counter, (usize::MAX, done_tx))
                .await
                .expect("spawn");
            let p = crate::latency::sample_async(calls, |i| {
                let actor = actor.clone();
                async move {
                    let r = actor.call(|port| Msg::Ping(i, port), None).await;
                    black_box(r.expect("sent").expect("reply"));
                }
            })
            .await;
            actor.stop(None);
            handle.await.ok();
            p
        })
    }

    pub fn idle(n: usize) -> (u64, f64) {
        current_thread().block_on(async move {
            let mut actors = Vec::with_capacity(n);
            let before = crate::harness::rss_bytes();
            let t = Instant::now();
            for _ in 0..n {
                actors.push(Actor::spawn(None, Idle, ()).await.expect("spawn"));
            }
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let after = crate::harness::rss_bytes();
            black_box(&actors);
            (after.saturating_sub(before), secs)
        })
    }
}

// ===== kameo =====

mod km {
    use super::*;
    use kameo::actor::Spawn;
    use kameo::message::{Context, Message};
    use kameo::Actor;

    #[derive(Actor)]
    pub struct Counter {
        count: usize,
        total: usize,
        done: std_mpsc::Sender<()>,
    }

    impl Message<Cast> for Counter {
        type Reply = ();
        async fn handle(&mut self, msg: Cast, _: &mut Context<Self, ()>) {
            black_box(msg.0);
            self.count += 1;
            if self.count == self.total {
                self.done.send(()).expect("main waits");
            }
        }
    }

    #[derive(Actor)]
    pub struct Echo;

    impl Message<Ping> for Echo {
        type Reply = u64;
        async fn handle(&mut self, msg: Ping, _: &mut Context<Self, u64>) -> u64 {
            msg.0
        }
    }

    #[derive(Actor)]
    pub struct Idle;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    pub fn casts(producers: usize, n: usize) -> f64 {
        let (done_tx, done_rx) = std_mpsc::channel();
        let (ref_tx, ref_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let total = (n / producers) * producers;
        let rt_thread = thread::spawn(move || {
            current_thread().block_on(async move {
                let actor = Counter::spawn_with_mailbox(
                    Counter {
                        count: 0,
                        total,
                        done: done_tx,
                    },
                    kameo::mailbox::unbounded(),
                );
                ref_tx.send(actor.clone()).expect("main waits");
                stop_rx.await.ok();
                actor.kill();
                actor.wait_for_shutdown().await;
            })
        });
        let actor = ref_rx.recv().expect("actor started");
        let r = timed_casts(producers, n, actor, &done_rx, |actor, i| {
            actor.tell(Cast(i)).try_send().expect("actor alive");
        });
        stop_tx.send(()).ok();
        rt_thread.join().expect("kameo thread");
        r
    }

    pub fn calls(calls: usize) -> Samples {
        current_thread().block_on(async move {
            let actor = Echo::spawn(Echo);
            let p = crate::latency::sample_async(calls, |i| {
                let actor = actor.clone();
                async move {
                    black_box(actor.ask(Ping(i)).await.expect("reply"));
                }
            })
            .await;
            actor.kill();
            p
        })
    }

    pub fn idle(n: usize) -> (u64, f64) {
        current_thread().block_on(async move {
            let mut actors = Vec::with_capacity(n);
            let before = crate::harness::rss_bytes();
            let t = Instant::now();
            for _ in 0..n {
                actors.push(Idle::spawn(Idle));
            }
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let after = crate::harness::rss_bytes();
            black_box(&actors);
            (after.saturating_sub(before), secs)
        })
    }
}

pub fn idle(peer: &str, n: usize) -> (u64, f64) {
    match peer {
        "actix" => ax::idle(n),
        "ractor" => rc::idle(n),
        "kameo" => km::idle(n),
        _ => panic!("unknown actor peer {peer}"),
    }
}

pub fn bench_casts(sizes: &Sizes, results: &mut Results) {
    let n = sizes.n_actor;
    let runs = sizes.runs;
    for (producers, label) in [(1usize, "spsc"), (2, "2p")] {
        println!(
            "\n== cast into an actor, {label} ({n} casts, median of {runs} interleaved rounds) =="
        );
        let p = producers;
        let medians = medians_interleaved(
            runs,
            &mut [
                &mut || ours_casts(p, n, false, false),
                &mut || ours_casts(p, n, false, true),
                &mut || ours_casts(p, n, true, false),
                &mut || ax::casts(p, n),
                &mut || rc::casts(p, n),
                &mut || km::casts(p, n),
            ],
        );
        let names = [
            "ours agent, MailboxSender::try_send",
            "ours agent, MailboxSender::try_send, agent on receive_many(64)",
            "ours agent, MessageSystem::send by pid",
            "actix do_send",
            "ractor cast",
            "kameo tell",
        ];
        for (name, value) in names.iter().zip(medians) {
            results.push(
                "actors",
                format!("{label} cast: {name}"),
                value,
                "msg/s",
                Better::Higher,
            );
        }
    }
}

/// The actor peers' call round trips (interleaved with ours in `latency.rs`).
pub fn actix_calls(calls: usize) -> Samples {
    ax::calls(calls)
}

pub fn ractor_calls(calls: usize) -> Samples {
    rc::calls(calls)
}

pub fn kameo_calls(calls: usize) -> Samples {
    km::calls(calls)
}
