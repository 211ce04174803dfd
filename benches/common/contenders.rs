//! The contender harness both benchmark suites drive: the criterion benches
//! (`benches/mailbox.rs`) and the peer suite (`benches/peers`, its own workspace), each
//! taking this file with `#[path = ".../common/contenders.rs"] mod contenders;`, so that
//! both time the same producer/consumer loop around the same contenders.
//!
//! [`run`] moves `n` messages through a fresh channel (or mailbox): `producers` threads
//! each send their share, one consumer thread receives them all with the blocking
//! receive; the clock runs from before the spawns to after the joins. Each contender
//! returns that wall time; the criterion benches sum it over `iter_custom`'s iterations,
//! the peer suite turns it into a rate.
//!
//! Every contender moves the same values: the producer builds each message itself
//! (`AgentMessage::cast(from.clone(), i as u64)`, or [`envelope`]), so payload
//! allocations are equal for all; the consumer passes each message through `black_box`
//! and drops it.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeliveryOptions, MailboxConfig, MailboxSender,
    MessageEnvelope, MessagePriority, MessageSystem,
};

/// `producers` threads call `send(&tx, i)` for their share of `0..n`; one consumer calls
/// `recv(&mut rx)`, which returns how many messages it took, until all arrived.
/// Returns spawn → join.
pub fn run<T, R>(
    producers: usize,
    n: usize,
    tx: T,
    mut rx: R,
    send: impl Fn(&T, usize) + Sync,
    mut recv: impl FnMut(&mut R) -> usize + Send,
) -> Duration
where
    T: Clone + Send,
    R: Send,
{
    let per = n / producers;
    let start = Instant::now();
    thread::scope(|s| {
        for p in 0..producers {
            let tx = tx.clone();
            let send = &send;
            s.spawn(move || {
                for i in p * per..(p + 1) * per {
                    send(&tx, i);
                }
            });
        }
        drop(tx);
        s.spawn(move || {
            let mut got = 0;
            while got < per * producers {
                got += recv(&mut rx);
            }
        });
    });
    start.elapsed()
}

/// The batch size of the `receive_many` variants.
pub const BATCH: usize = 64;

// ===== casts at one priority: ours, crossbeam-channel, flume =====

/// Ours: a fresh unbounded mailbox, casts at `Normal` through its `MailboxSender`; with
/// `batched`, the consumer drains in batches of up to [`BATCH`] (`receive_many`).
pub fn ours(producers: usize, n: usize, from: &AgentPid, batched: bool) -> Duration {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let mut buf = Vec::with_capacity(BATCH);
    run(
        producers,
        n,
        mailbox.sender(),
        mailbox,
        |tx, i| {
            tx.try_send(
                AgentMessage::cast(from.clone(), i as u64),
                MessagePriority::Normal,
            )
            .expect("open, unbounded mailbox");
        },
        move |rx| {
            if !batched {
                drop(black_box(rx.receive().expect("a message")));
                return 1;
            }
            let got = rx.receive_many(&mut buf, BATCH).expect("messages");
            buf.drain(..).for_each(|m| drop(black_box(m)));
            got
        },
    )
}

/// crossbeam-channel (unbounded) carrying the same casts.
pub fn crossbeam_msg(producers: usize, n: usize, from: &AgentPid) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<AgentMessage>();
    run(
        producers,
        n,
        tx,
        rx,
        |tx, i| {
            tx.send(AgentMessage::cast(from.clone(), i as u64))
                .expect("receiver alive")
        },
        |rx| {
            drop(black_box(rx.recv().expect("a message")));
            1
        },
    )
}

/// flume (unbounded) carrying the same casts.
pub fn flume_msg(producers: usize, n: usize, from: &AgentPid) -> Duration {
    let (tx, rx) = flume::unbounded::<AgentMessage>();
    run(
        producers,
        n,
        tx,
        rx,
        |tx, i| {
            tx.send(AgentMessage::cast(from.clone(), i as u64))
                .expect("receiver alive")
        },
        |rx| {
            drop(black_box(rx.recv().expect("a message")));
            1
        },
    )
}

// ===== routed envelopes: one producer, one consumer =====

/// The envelope every routed contender carries: built per message by the producer.
pub fn envelope(from: &AgentPid, to: &AgentPid, i: usize) -> MessageEnvelope {
    MessageEnvelope::new(
        to.clone(),
        "bench".to_string(),
        json!({ "n": i }),
        DeliveryOptions::default(),
    )
    .with_from(from.clone())
}

/// Takes one message off our mailbox.
fn receive_one(rx: &mut AgentMailbox) -> usize {
    drop(black_box(rx.receive().expect("a message")));
    1
}

/// Ours, routed by pid: `system.send_message(envelope)` into `to`'s `mailbox`.
pub fn routed(
    system: MessageSystem,
    mailbox: AgentMailbox,
    from: &AgentPid,
    to: &AgentPid,
    n: usize,
) -> Duration {
    run(
        1,
        n,
        system,
        mailbox,
        |system, i| {
            system
                .send_message(envelope(from, to, i))
                .expect("registered agent");
        },
        receive_one,
    )
}

/// Ours, pre-resolved: `to`'s `sender` (from `MessageSystem::sender`), then per message
/// `try_send(envelope.into_message(), envelope.delivery_options.priority)`.
pub fn pre_resolved(
    sender: MailboxSender,
    mailbox: AgentMailbox,
    from: &AgentPid,
    to: &AgentPid,
    n: usize,
) -> Duration {
    run(
        1,
        n,
        sender,
        mailbox,
        |tx, i| {
            let envelope = envelope(from, to, i);
            let priority = envelope.delivery_options.priority;
            tx.try_send(envelope.into_message(), priority)
                .expect("open mailbox");
        },
        receive_one,
    )
}

/// crossbeam-channel carrying the same envelopes (no routing, no conversion): the
/// ceiling any `send_message` can reach when the producer builds one JSON envelope per
/// message.
pub fn crossbeam_envelope(from: &AgentPid, to: &AgentPid, n: usize) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<MessageEnvelope>();
    run(
        1,
        n,
        tx,
        rx,
        |tx, i| tx.send(envelope(from, to, i)).expect("receiver alive"),
        |rx| {
            drop(black_box(rx.recv().expect("a message")));
            1
        },
    )
}
