//! SPSC and 2-producer throughput: our mailbox beside crossbeam-channel, flume and tokio
//! mpsc, each carrying `u64` the idiomatic way and (ours, crossbeam, flume) the same
//! `AgentMessage::cast(pid, n)` values.
//!
//! One run moves `n` messages through a fresh channel: `producers` threads each send
//! `n / producers`, one consumer thread receives exactly `n` with the blocking receive;
//! the clock runs from before the spawns to after the joins. That loop ([`run`]) and the
//! `AgentMessage` contenders are `benches/common/contenders.rs`, which the criterion
//! bench `benches/mailbox.rs` runs too.
//! tokio mpsc runs producers and consumer as tasks on one current-thread runtime (the
//! producers never yield, so the queue fills and then drains: tokio's best case).

use std::hint::black_box;
use std::time::Instant;

use terraphim_agent_messaging::{AgentMessage, AgentPid};

use crate::contenders::{self, run};
use crate::harness::{medians_interleaved, rate, Better, Results, Sizes};

/// Ours; with `batched`, the receiver drains in batches of up to [`contenders::BATCH`]
/// (`receive_many`), reported beside the per-message row (the target reads the latter).
fn ours(producers: usize, n: usize, from: &AgentPid, batched: bool) -> f64 {
    rate(n, contenders::ours(producers, n, from, batched))
}

fn crossbeam_msg(producers: usize, n: usize, from: &AgentPid) -> f64 {
    rate(n, contenders::crossbeam_msg(producers, n, from))
}

fn crossbeam_u64(producers: usize, n: usize) -> f64 {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    rate(
        n,
        run(
            producers,
            n,
            tx,
            rx,
            |tx, i| tx.send(i as u64).expect("rx alive"),
            |rx| {
                black_box(rx.recv().expect("a message"));
                1
            },
        ),
    )
}

fn flume_msg(producers: usize, n: usize, from: &AgentPid) -> f64 {
    rate(n, contenders::flume_msg(producers, n, from))
}

fn flume_u64(producers: usize, n: usize) -> f64 {
    let (tx, rx) = flume::unbounded::<u64>();
    rate(
        n,
        run(
            producers,
            n,
            tx,
            rx,
            |tx, i| tx.send(i as u64).expect("rx alive"),
            |rx| {
                black_box(rx.recv().expect("a message"));
                1
            },
        ),
    )
}

/// tokio mpsc (unbounded) on a current-thread runtime: producer tasks + consumer task.
fn tokio_u64(producers: usize, n: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let per = n / producers;
        let start = Instant::now();
        for p in 0..producers {
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in p * per..(p + 1) * per {
                    tx.send(i as u64).expect("rx alive");
                }
            });
        }
        drop(tx);
        let consumer = tokio::spawn(async move {
            for _ in 0..per * producers {
                black_box(rx.recv().await.expect("a message"));
            }
        });
        consumer.await.expect("consumer");
        rate(n, start.elapsed())
    })
}

/// tokio mpsc carrying the same `AgentMessage`, current-thread.
fn tokio_msg(producers: usize, n: usize, from: &AgentPid) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AgentMessage>();
        let per = n / producers;
        let start = Instant::now();
        for p in 0..producers {
            let tx = tx.clone();
            let from = from.clone();
            tokio::spawn(async move {
                for i in p * per..(p + 1) * per {
                    tx.send(AgentMessage::cast(from.clone(), i as u64))
                        .expect("rx alive");
                }
            });
        }
        drop(tx);
        let consumer = tokio::spawn(async move {
            for _ in 0..per * producers {
                drop(black_box(rx.recv().await.expect("a message")));
            }
        });
        consumer.await.expect("consumer");
        rate(n, start.elapsed())
    })
}

pub fn bench(sizes: &Sizes, results: &mut Results) {
    let from = AgentPid::new();
    let n = sizes.n_channel;
    for (producers, label) in [(1usize, "spsc"), (2, "2p")] {
        println!(
            "\n== throughput {label} ({n} messages, median of {} interleaved rounds) ==",
            sizes.runs
        );
        let p = producers;
        let medians = medians_interleaved(
            sizes.runs,
            &mut [
                &mut || ours(p, n, &from, false),
                &mut || ours(p, n, &from, true),
                &mut || crossbeam_msg(p, n, &from),
                &mut || flume_msg(p, n, &from),
                &mut || tokio_msg(p, n, &from),
                &mut || crossbeam_u64(p, n),
                &mut || flume_u64(p, n),
                &mut || tokio_u64(p, n),
            ],
        );
        let names = [
            "ours mailbox, AgentMessage",
            "ours mailbox, AgentMessage, receive_many(64)",
            "crossbeam, AgentMessage",
            "flume, AgentMessage",
            "tokio mpsc current-thread, AgentMessage",
            "crossbeam, u64",
            "flume, u64",
            "tokio mpsc current-thread, u64",
        ];
        for (name, value) in names.iter().zip(medians) {
            results.push(
                "throughput",
                format!("{label}: {name}"),
                value,
                "msg/s",
                Better::Higher,
            );
        }
    }
}

/// One run of one contender (for `--one`).
pub fn one(which: &str, producers: usize, n: usize) -> f64 {
    let from = AgentPid::new();
    match which {
        "ours" => ours(producers, n, &from, false),
        "crossbeam" => crossbeam_msg(producers, n, &from),
        _ => unreachable!(),
    }
}
