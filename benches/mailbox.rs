//! Mailbox throughput beside its peers (crossbeam-channel, flume), carrying the same messages.
//!
//! # Method
//!
//! Every contender moves the same values: the producer builds each message itself
//! (`AgentMessage::cast(pid.clone(), i as u64)`, or a JSON `MessageEnvelope` in the
//! `send_message` group), so whatever the message allocates (nothing for the inline
//! `u64` payload; the JSON's box for an envelope) is allocated and freed equally for all;
//! the consumer takes each message, passes it through `black_box` and drops it.
//!
//! One iteration moves [`N`] messages through a fresh channel (or mailbox): it spawns
//! the producer threads (each sends its share of `N`) and one consumer thread that
//! receives exactly `N` with the blocking receive, then joins them. The timed span runs
//! from before the spawns to after the joins, so thread start-up (~50–100 µs, under 2%
//! of a run) is included equally for everyone. Criterion drives this through
//! `iter_custom` and reports `Throughput::Elements(N)` per iteration. That loop and the
//! contenders the peer suite (`benches/peers`) also runs live in `common/contenders.rs`,
//! which both include.
//!
//! Groups:
//!
//! - `spsc`: 1 producer, 1 consumer.
//! - `mpsc_2p`: 2 producers × `N / 2`, 1 consumer.
//! - `send_message`: `MessageSystem::send_message(envelope)` (routed by pid), the same
//!   through a pre-resolved `MessageSystem::sender` (`try_send(envelope.into_message())`),
//!   and crossbeam carrying the envelope itself or the `AgentMessage` it becomes.
//! - `priority_mix`: our mailbox with only `Normal`, only `High` (an extra lane), and
//!   the four priorities in turn (strict order, and with the anti-starvation budget of
//!   `preserve_order: false`).
//!
//! The configuration is deliberately quick (10 samples, 2 s measurement, 0.5 s warm-up):
//! `cargo bench --bench mailbox` takes about a minute. On a loaded machine, run it twice
//! and compare.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, MailboxConfig, MessagePriority, MessageSystem,
    RouterConfig,
};

/// The producer/consumer loop and the contenders, shared with the peer suite.
#[path = "common/contenders.rs"]
mod contenders;
use contenders::{envelope, run};

/// Messages per iteration.
const N: usize = 100_000;

/// `iters` runs of `one_run`, summed (the `iter_custom` contract).
fn runs(iters: u64, mut one_run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| one_run()).sum()
}

/// Ours, crossbeam and flume with `producers` producers, all at `Normal`.
fn three_way(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, producers: usize) {
    let from = AgentPid::new();
    let from = &from;

    group.bench_function("ours", |b| {
        b.iter_custom(|iters| runs(iters, || contenders::ours(producers, N, from, false)))
    });
    group.bench_function("crossbeam", |b| {
        b.iter_custom(|iters| runs(iters, || contenders::crossbeam_msg(producers, N, from)))
    });
    group.bench_function("flume", |b| {
        b.iter_custom(|iters| runs(iters, || contenders::flume_msg(producers, N, from)))
    });
}

fn spsc(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc");
    group.throughput(Throughput::Elements(N as u64));
    three_way(&mut group, 1);
    group.finish();
}

fn mpsc_2p(c: &mut Criterion) {
    let mut group = c.benchmark_group("mpsc_2p");
    group.throughput(Throughput::Elements(N as u64));
    three_way(&mut group, 2);
    group.finish();
}

fn send_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("send_message");
    group.throughput(Throughput::Elements(N as u64));
    // ~80 ms per iteration: flat sampling keeps the group within its 2 s budget.
    group.sampling_mode(SamplingMode::Flat);

    let system = MessageSystem::new(RouterConfig::default());
    let (from, to) = (AgentPid::new(), AgentPid::new());
    system.register_agent(to.clone()).expect("register");
    let mailbox = system.get_mailbox(&to).expect("registered");
    let (from, to) = (&from, &to);

    group.bench_function("routed", |b| {
        b.iter_custom(|iters| {
            runs(iters, || {
                contenders::routed(system.clone(), mailbox.clone(), from, to, N)
            })
        })
    });

    group.bench_function("pre_resolved", |b| {
        let sender = system.sender(to).expect("registered");
        b.iter_custom(|iters| {
            runs(iters, || {
                contenders::pre_resolved(sender.clone(), mailbox.clone(), from, to, N)
            })
        })
    });

    group.bench_function("crossbeam_envelope", |b| {
        b.iter_custom(|iters| runs(iters, || contenders::crossbeam_envelope(from, to, N)))
    });

    group.bench_function("crossbeam_into_message", |b| {
        b.iter_custom(|iters| {
            runs(iters, || {
                let (tx, rx) = crossbeam_channel::unbounded::<AgentMessage>();
                run(
                    1,
                    N,
                    tx,
                    rx,
                    |tx, i| {
                        tx.send(envelope(from, to, i).into_message())
                            .expect("receiver alive");
                    },
                    |rx| {
                        drop(black_box(rx.recv().expect("a message")));
                        1
                    },
                )
            })
        })
    });

    group.finish();
    system.shutdown().expect("shutdown");
}

/// A `priority_mix` case: name, `preserve_order`, priority of message `i`.
type Case = (&'static str, bool, fn(usize) -> MessagePriority);

fn priority_mix(c: &mut Criterion) {
    let mut group = c.benchmark_group("priority_mix");
    group.throughput(Throughput::Elements(N as u64));
    let from = AgentPid::new();
    let from = &from;

    let cases: [Case; 4] = [
        ("normal_only", true, |_| MessagePriority::Normal),
        ("high_only", true, |_| MessagePriority::High),
        ("mixed4_strict", true, |i| {
            MessagePriority::HIGHEST_FIRST[i % 4]
        }),
        ("mixed4_budget", false, |i| {
            MessagePriority::HIGHEST_FIRST[i % 4]
        }),
    ];
    for (name, preserve_order, priority_of) in cases {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runs(iters, || {
                    let config = MailboxConfig {
                        preserve_order,
                        ..MailboxConfig::default()
                    };
                    let mailbox = AgentMailbox::new(AgentPid::new(), config);
                    run(
                        1,
                        N,
                        mailbox.sender(),
                        mailbox,
                        |tx, i| {
                            tx.try_send(AgentMessage::cast(from.clone(), i as u64), priority_of(i))
                                .expect("open, unbounded mailbox");
                        },
                        |rx| {
                            drop(black_box(rx.receive().expect("a message")));
                            1
                        },
                    )
                })
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = spsc, mpsc_2p, send_message, priority_mix
}
criterion_main!(benches);
