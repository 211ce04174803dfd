//! Call round trips beside their peers, in the same run.
//!
//! - `call_sync`: `MessageSystem::call` to an agent whose thread answers every call,
//!   beside a crossbeam-channel ping-pong (a request channel carrying the payload and a
//!   reply channel back) between the same two threads.
//! - `call_async`: `tokio::MessageSystem::call` to an agent task, beside a tokio mpsc
//!   carrying the request with a oneshot for the reply, both on a current-thread runtime.
//! - `cast_async`: casts into an agent task that counts them, beside a tokio mpsc.
//!
//! Every contender allocates a box for the `u64` request and one for the `u64` reply, so
//! the payload allocations are the same: ours in the seed's way, the request travelling
//! inline and boxed by the callee's `payload.downcast::<u64>()`, the reply sent as
//! `Box::new(n + 1)` (before payloads went inline, `call` boxed the request itself). Each iteration is one round trip (`iter`), so criterion
//! reports time per call.

use std::any::Any;
use std::hint::black_box;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use terraphim_agent_messaging::{AgentMessage, AgentPid, MessageSystem, RouterConfig};

type Boxed = Box<dyn Any + Send>;

const TIMEOUT: Duration = Duration::from_secs(10);

fn call_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_sync");
    group.throughput(Throughput::Elements(1));

    // Ours: an agent thread answering calls.
    let system = MessageSystem::new(RouterConfig::default());
    let (client, server) = (AgentPid::new(), AgentPid::new());
    system.register_agent(server.clone()).unwrap();
    let mailbox = system.get_mailbox(&server).unwrap();
    let agent = thread::spawn(move || {
        while let Ok(message) = mailbox.receive() {
            if let AgentMessage::Call {
                payload, reply_to, ..
            } = message
            {
                let n = *payload.downcast::<u64>().unwrap();
                let _ = reply_to.send(Box::new(n + 1));
            }
        }
    });
    group.bench_function("ours", |b| {
        b.iter(|| {
            let reply = system
                .call(client.clone(), &server, black_box(1u64), TIMEOUT)
                .unwrap();
            black_box(reply.downcast::<u64>().unwrap());
        })
    });
    system.shutdown().unwrap();
    agent.join().unwrap();

    // crossbeam-channel ping-pong between the same two kinds of thread.
    let (req_tx, req_rx) = crossbeam_channel::unbounded::<Boxed>();
    let (rep_tx, rep_rx) = crossbeam_channel::unbounded::<Boxed>();
    let peer = thread::spawn(move || {
        while let Ok(request) = req_rx.recv() {
            let n = *request.downcast::<u64>().unwrap();
            if rep_tx.send(Box::new(n + 1)).is_err() {
                break;
            }
        }
    });
    group.bench_function("crossbeam_ping_pong", |b| {
        b.iter(|| {
            req_tx.send(Box::new(black_box(1u64))).unwrap();
            black_box(rep_rx.recv().unwrap().downcast::<u64>().unwrap());
        })
    });
    drop(req_tx);
    peer.join().unwrap();
    group.finish();
}

#[cfg(feature = "tokio")]
fn call_async(c: &mut Criterion) {
    use terraphim_agent_messaging::tokio as agents;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("call_async");
    group.throughput(Throughput::Elements(1));

    // Ours: an agent task answering calls.
    let (system, client, server) = runtime.block_on(async {
        let system = agents::MessageSystem::new(RouterConfig::default());
        let (client, server) = (AgentPid::new(), AgentPid::new());
        system.register_agent(server.clone()).await.unwrap();
        let mailbox = system.get_mailbox(&server).await.unwrap();
        tokio::spawn(async move {
            while let Ok(message) = mailbox.receive().await {
                if let AgentMessage::Call {
                    payload, reply_to, ..
                } = message
                {
                    let n = *payload.downcast::<u64>().unwrap();
                    let _ = reply_to.send(Box::new(n + 1));
                }
            }
        });
        (system, client, server)
    });
    group.bench_function("ours", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let reply = system
                    .call(client.clone(), &server, black_box(1u64), TIMEOUT)
                    .await
                    .unwrap();
                black_box(reply.downcast::<u64>().unwrap());
            })
        })
    });
    runtime.block_on(system.shutdown()).unwrap();

    // tokio mpsc carrying the request and a oneshot for the reply.
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Boxed, tokio::sync::oneshot::Sender<Boxed>)>();
    runtime.spawn(async move {
        while let Some((request, reply)) = rx.recv().await {
            let n = *request.downcast::<u64>().unwrap();
            let _ = reply.send(Box::new(n + 1));
        }
    });
    group.bench_function("tokio_mpsc_oneshot", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                tx.send((Box::new(black_box(1u64)), reply_tx)).unwrap();
                black_box(reply_rx.await.unwrap().downcast::<u64>().unwrap());
            })
        })
    });
    drop(tx);
    group.finish();
}

#[cfg(feature = "tokio")]
fn cast_async(c: &mut Criterion) {
    use terraphim_agent_messaging::tokio as agents;
    const N: u64 = 10_000;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("cast_async");
    group.throughput(Throughput::Elements(N));

    group.bench_function("ours", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let system = agents::MessageSystem::new(RouterConfig::default());
                let pid = AgentPid::new();
                system.register_agent(pid.clone()).await.unwrap();
                let mailbox = system.get_mailbox(&pid).await.unwrap();
                let counter = tokio::spawn(async move {
                    let mut seen = 0;
                    while seen < N {
                        mailbox.receive().await.unwrap();
                        seen += 1;
                    }
                });
                let sender = system.sender(&pid).unwrap();
                let from = AgentPid::new();
                for i in 0..N {
                    sender
                        .try_send(AgentMessage::cast(from.clone(), i), Default::default())
                        .unwrap();
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                counter.await.unwrap();
                system.shutdown().await.unwrap();
            })
        })
    });
    group.bench_function("tokio_mpsc", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AgentMessage>();
                let counter = tokio::spawn(async move {
                    let mut seen = 0;
                    while seen < N {
                        rx.recv().await.unwrap();
                        seen += 1;
                    }
                });
                let from = AgentPid::new();
                for i in 0..N {
                    tx.send(AgentMessage::cast(from.clone(), i)).unwrap();
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                counter.await.unwrap();
            })
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
}

#[cfg(feature = "tokio")]
criterion_group! {
    name = benches;
    config = config();
    targets = call_sync, call_async, cast_async
}

#[cfg(not(feature = "tokio"))]
criterion_group! {
    name = benches;
    config = config();
    targets = call_sync
}
criterion_main!(benches);
