//! Call round-trip latency, p50/p99/p99.9, one call at a time (each timed with
//! `Instant`, ~20–30 ns of clock overhead included equally for everyone), in steady
//! state: every contender warms up for at least [`WARM_UP`] first (see there why).
//!
//! - sync: `MessageSystem::call` to an agent whose thread loops on `receive` and replies,
//!   vs crossbeam ping-pong on 2 threads (a request channel and a reply channel, u64),
//!   and crossbeam with a fresh `bounded(1)` reply channel per call (a call's shape).
//! - async, current-thread runtime: `tokio::MessageSystem::call` to an agent task looping
//!   on `receive().await`, vs tokio mpsc + a oneshot per call; the actor peers (actix
//!   `send().await`, ractor `call`, kameo `ask`) are in `actors.rs`. A second ours row
//!   has the peer's shape: a pre-resolved `MailboxSender` (the peer's `Sender`) and the
//!   call's reply channel awaited with no timeout (the peer's oneshot), so the gap between
//!   the two ours rows is what routing by pid and the timeout cost. A second tokio row
//!   awaits its oneshot under `tokio::time::timeout`, the timeout our call has.

use std::future::Future;
use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::{
    AgentMessage, AgentPid, MessagePriority, MessageSystem, RouterConfig,
};

use crate::harness::{
    percentiles, percentiles_interleaved, sample_sync, Better, Percentiles, Results, Samples,
    Sizes, WARM_UP,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Times `calls` awaits of `one(i)` (after the same warm-up as `sample_sync`: at least
/// [`WARM_UP`] and `calls / 10` untimed calls).
pub async fn sample_async<F: Future<Output = ()>>(
    calls: usize,
    mut one: impl FnMut(u64) -> F,
) -> Samples {
    let start = Instant::now();
    let mut i = 0u64;
    while i < (calls / 10) as u64 || start.elapsed() < WARM_UP {
        one(i).await;
        i += 1;
    }
    let mut ns = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        one(i as u64).await;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns
}

pub fn push(results: &mut Results, name: &str, p: Percentiles) {
    results.push("latency", format!("{name} p50"), p.p50, "ns", Better::Lower);
    results.push("latency", format!("{name} p99"), p.p99, "ns", Better::Lower);
    results.push(
        "latency",
        format!("{name} p99.9"),
        p.p999,
        "ns",
        Better::Lower,
    );
}

fn ours_sync(calls: usize) -> Samples {
    let system = MessageSystem::new(RouterConfig::default());
    let (client, server) = (AgentPid::new(), AgentPid::new());
    system.register_agent(server.clone()).expect("register");
    let mailbox = system.get_mailbox(&server).expect("registered");
    let agent = thread::spawn(move || {
        while let Ok(message) = mailbox.receive() {
            if let AgentMessage::Call {
                payload, reply_to, ..
            } = message
            {
                reply_to.send(payload).ok();
            }
        }
    });
    let p = sample_sync(calls, |i| {
        black_box(
            system
                .call(client.clone(), &server, i, TIMEOUT)
                .expect("reply"),
        );
    });
    system.shutdown().expect("shutdown");
    agent.join().expect("agent");
    p
}

fn crossbeam_ping_pong(calls: usize) -> Samples {
    let (req_tx, req_rx) = crossbeam_channel::unbounded::<u64>();
    let (rep_tx, rep_rx) = crossbeam_channel::unbounded::<u64>();
    let server = thread::spawn(move || {
        while let Ok(n) = req_rx.recv() {
            rep_tx.send(n).ok();
        }
    });
    let p = sample_sync(calls, |i| {
        req_tx.send(i).expect("server alive");
        black_box(rep_rx.recv().expect("reply"));
    });
    drop(req_tx);
    server.join().expect("server");
    p
}

fn crossbeam_reply_channel(calls: usize) -> Samples {
    type Request = (u64, crossbeam_channel::Sender<u64>);
    let (req_tx, req_rx) = crossbeam_channel::unbounded::<Request>();
    let server = thread::spawn(move || {
        while let Ok((n, reply)) = req_rx.recv() {
            reply.send(n).ok();
        }
    });
    let p = sample_sync(calls, |i| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        req_tx.send((i, tx)).expect("server alive");
        black_box(rx.recv().expect("reply"));
    });
    drop(req_tx);
    server.join().expect("server");
    p
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ours_async(calls: usize) -> Samples {
    ours_calls(calls, false)
}

/// Ours shaped like the tokio peer.
fn ours_async_direct(calls: usize) -> Samples {
    ours_calls(calls, true)
}

/// `tokio::MessageSystem::call` to an agent task that answers every call; with
/// `direct`, the tokio peer's shape instead: a pre-resolved `MailboxSender` (the peer's
/// `Sender`) and the call's reply channel awaited with no timeout (the peer's oneshot).
fn ours_calls(calls: usize, direct: bool) -> Samples {
    use terraphim_agent_messaging::tokio::MessageSystem;
    current_thread().block_on(async move {
        let system = MessageSystem::new(RouterConfig::default());
        let (client, server) = (AgentPid::new(), AgentPid::new());
        system
            .register_agent(server.clone())
            .await
            .expect("register");
        let mailbox = system.get_mailbox(&server).await.expect("registered");
        let sender = system.sender(&server).expect("registered");
        let agent = tokio::spawn(async move {
            while let Ok(message) = mailbox.receive().await {
                if let AgentMessage::Call {
                    payload, reply_to, ..
                } = message
                {
                    reply_to.send(payload).ok();
                }
            }
        });
        let p = sample_async(calls, |i| {
            let (system, sender, client, server) = (&system, &sender, &client, &server);
            async move {
                let reply = if direct {
                    let (call, reply) = AgentMessage::call(client.clone(), i, TIMEOUT);
                    sender
                        .try_send(call, MessagePriority::Normal)
                        .expect("open mailbox");
                    reply.await.expect("reply")
                } else {
                    system
                        .call(client.clone(), server, i, TIMEOUT)
                        .await
                        .expect("reply")
                };
                black_box(reply);
            }
        })
        .await;
        system.shutdown().await.expect("shutdown");
        agent.await.expect("agent");
        p
    })
}

fn tokio_mpsc_oneshot(calls: usize) -> Samples {
    tokio_calls(calls, false)
}

/// The tokio peer with the timeout our call has.
fn tokio_mpsc_oneshot_timeout(calls: usize) -> Samples {
    tokio_calls(calls, true)
}

/// tokio mpsc carrying the request and a oneshot per call for the reply; with `timeout`,
/// the oneshot is awaited under `tokio::time::timeout` (a timer registered and cancelled
/// per call).
fn tokio_calls(calls: usize, timeout: bool) -> Samples {
    current_thread().block_on(async move {
        type Request = (u64, tokio::sync::oneshot::Sender<u64>);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let server = tokio::spawn(async move {
            while let Some((n, reply)) = rx.recv().await {
                reply.send(n).ok();
            }
        });
        let p = sample_async(calls, |i| {
            let tx = &tx;
            async move {
                let (reply, answer) = tokio::sync::oneshot::channel();
                tx.send((i, reply)).expect("server alive");
                let answer = if timeout {
                    tokio::time::timeout(TIMEOUT, answer)
                        .await
                        .expect("in time")
                } else {
                    answer.await
                };
                black_box(answer.expect("reply"));
            }
        })
        .await;
        drop(tx);
        server.await.expect("server");
        p
    })
}

pub fn bench(sizes: &Sizes, results: &mut Results) {
    let (calls, runs) = (sizes.calls, sizes.runs);
    println!("\n== call round trip ({calls} calls each, {runs} interleaved rounds) ==");
    let sync = percentiles_interleaved(
        runs,
        calls,
        &mut [
            &mut ours_sync,
            &mut crossbeam_ping_pong,
            &mut crossbeam_reply_channel,
        ],
    );
    let sync_names = [
        "call sync: ours MessageSystem::call",
        "call sync: crossbeam ping-pong (2 threads)",
        "call sync: crossbeam + bounded(1) reply per call",
    ];
    let asynchronous = percentiles_interleaved(
        runs,
        calls,
        &mut [
            &mut ours_async,
            &mut ours_async_direct,
            &mut tokio_mpsc_oneshot,
            &mut tokio_mpsc_oneshot_timeout,
            &mut crate::actors::actix_calls,
            &mut crate::actors::ractor_calls,
            &mut crate::actors::kameo_calls,
        ],
    );
    let async_names = [
        "call async: ours tokio::MessageSystem::call (current-thread)",
        "call async: ours pre-resolved MailboxSender + reply, no timeout (the peer's shape)",
        "call async: tokio mpsc + oneshot (current-thread)",
        "call async: tokio mpsc + oneshot under tokio::time::timeout (current-thread)",
        "call: actix send().await (System)",
        "call: ractor call (current-thread)",
        "call: kameo ask (current-thread)",
    ];
    for (name, p) in sync_names.iter().zip(sync) {
        push(results, name, p);
    }
    for (name, p) in async_names.iter().zip(asynchronous) {
        push(results, name, p);
    }
}

/// One latency case (for `--one`).
pub fn one(case: &str, calls: usize) -> Percentiles {
    percentiles(match case {
        "call-sync-ours" => ours_sync(calls),
        "call-sync-crossbeam" => crossbeam_ping_pong(calls),
        "call-async-ours" => ours_async(calls),
        "call-async-tokio" => tokio_mpsc_oneshot(calls),
        "call-async-tokio-timeout" => tokio_mpsc_oneshot_timeout(calls),
        "call-async-ours-direct" => ours_async_direct(calls),
        _ => unreachable!(),
    })
}
