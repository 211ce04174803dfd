//! Receiving from other nodes: what arrives on this node's subjects is pushed into its
//! own table, exactly as a local send's first attempt would be.
//!
//! | the local push answered | at most once (core subject) | at least once (stream) |
//! |---|---|---|
//! | accepted | done | acked to JetStream |
//! | full, breaker open, empty group | dead letter (`MailboxFull`, `CircuitOpen`, ...) | NAK with the message's back-off delay; JetStream redelivers; after `max_retries` redeliveries: dead letter (`RetriesExhausted`) and `Term` |
//! | closed | dead letter `MailboxClosed` | same, and `Term` |
//! | unknown pid | dead letter `AgentNotFound` | same, and `Term` |
//! | garbage, another wire version | dead letter `Transport`, with the reason and the raw bytes | same, and `Term` |
//!
//! A call (core request) is pushed as at most once: accepted, its reply is awaited (up
//! to the call's timeout) and sent back if it is a `serde_json::Value`; refused,
//! unknown or closed, it is dead-lettered here and answered with the error at once.
//!
//! Dead letters land in this (the receiving) node's `dead_letters()`. A frame sent
//! exactly once is first reserved in the node's exactly-once window (the engine's):
//! a copy already delivered within the window is acked and counted, not delivered.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, AckKind};
use futures_util::StreamExt;

use super::acks::{await_ack, Awaited};
use super::registry::Owner;
use super::{wire, Shared};
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadMessage};
use crate::delivery::dedup::Reservation;
use crate::delivery::RetryPolicy;
use crate::message::{AgentMessage, AgentPid, DeliveryOptions, MessageId, Outgoing, Payload};
use crate::observe::events;
use crate::router::{Destination, Push, Refusal};

/// What to do with a frame after the local push.
enum Verdict {
    Delivered,
    /// In the mailbox, sent with `require_ack`: settled when its agent acknowledges
    /// it, or redelivered after the acknowledgement timeout (see [`AwaitingAcks`]).
    AwaitAck(Awaited),
    /// Refused for now: redeliver after this delay.
    Later(Duration),
    /// Given up on (dead-lettered here).
    GaveUp,
}

/// The at-most-once subscription of this node.
pub(crate) async fn direct(shared: Arc<Shared>, mut subscriber: async_nats::Subscriber) {
    while let Some(message) = subscriber.next().await {
        // Every delivery is the first and the last.
        let _ = deliver(&shared, &message.subject, &message.payload, 1, false);
    }
}

/// Calls from other nodes (core request/reply): each is pushed into the callee's
/// mailbox as a call whose reply is awaited here and sent back.
pub(crate) async fn calls(
    shared: Arc<Shared>,
    mut subscriber: async_nats::Subscriber,
    client: async_nats::Client,
) {
    while let Some(message) = subscriber.next().await {
        shared.counters.received.incr();
        let answer = serve(&shared, &message.subject, &message.payload);
        let Some(reply) = message.reply else {
            continue; // Nobody to answer (not a request): dead-lettered above if bad.
        };
        match answer {
            Ok(waiting) => {
                let client = client.clone();
                tokio::spawn(async move {
                    if let Some(frame) = waiting.await {
                        answer_with(&client, reply, frame).await;
                    }
                });
            }
            Err(frame) => answer_with(&client, reply, frame).await,
        }
    }
}

async fn answer_with(
    client: &async_nats::Client,
    reply: async_nats::Subject,
    frame: wire::ReplyFrame,
) {
    if let Ok(bytes) = serde_json::to_vec(&frame) {
        let _ = client.publish(reply, bytes.into()).await;
    }
}

/// Pushes one call into its mailbox: a future of its answer (`None`: no reply within
/// the call's timeout, so no answer: the caller has timed out), or the error answer at
/// once (the call dead-lettered here).
fn serve(
    shared: &Shared,
    subject: &str,
    payload: &[u8],
) -> Result<
    impl std::future::Future<Output = Option<wire::ReplyFrame>> + Send + 'static,
    wire::ReplyFrame,
> {
    let call = match wire::decode_call(payload) {
        Ok(call) => call,
        Err(why) => {
            undecodable(shared, subject, payload, 1, &why);
            return Err(wire::ReplyFrame::error(why));
        }
    };
    let timeout = Duration::from_millis(call.timeout_ms);
    let (reply_to, reply) = crate::message::reply_channel();
    let message = AgentMessage::Call {
        id: call.id,
        from: call.from,
        payload: Payload::new(call.payload),
        reply_to,
        timeout,
    };
    let to = call.to;
    let priority = crate::message::MessagePriority::Normal;
    let policy = shared.policy.clone();
    match push(
        shared,
        to.clone(),
        Outgoing::Message(message),
        &policy,
        priority,
        1,
        false,
    ) {
        Verdict::Delivered => {
            shared.counters.calls_served.incr();
            Ok(async move {
                match tokio::time::timeout(timeout, reply).await {
                    Ok(Ok(payload)) => Some(match payload.take::<serde_json::Value>() {
                        Ok(value) => wire::ReplyFrame::reply(value),
                        Err(_) => wire::ReplyFrame::error(
                            "the reply is not a serde_json::Value and cannot cross a process",
                        ),
                    }),
                    Ok(Err(_)) => Some(wire::ReplyFrame::error(
                        "the callee dropped the call without a reply",
                    )),
                    Err(_) => None,
                }
            })
        }
        _ => Err(wire::ReplyFrame::error(format!(
            "the call to agent {to} was not delivered on this node (see its dead letters)"
        ))),
    }
}

/// This node's durable consumer (re-reading it after an error).
pub(crate) async fn stream(
    shared: Arc<Shared>,
    mut messages: consumer::pull::Stream,
    consumer: consumer::PullConsumer,
) {
    loop {
        while let Some(next) = messages.next().await {
            let Ok(message) = next else {
                // Heartbeats missed or the connection cycled: read again.
                break;
            };
            let delivered = message
                .info()
                .map(|info| u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
                .unwrap_or(1);
            let verdict = deliver(&shared, &message.subject, &message.payload, delivered, true);
            let ack = match verdict {
                Verdict::Delivered => AckKind::Ack,
                Verdict::AwaitAck(awaited) => {
                    await_ack(&shared, awaited, message);
                    continue;
                }
                Verdict::Later(delay) => AckKind::Nak(Some(delay)),
                Verdict::GaveUp => AckKind::Term,
            };
            // A lost ack means a redelivery: at least once allows the copy.
            let _ = message.ack_with(ack).await;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(again) = consumer.messages().await {
                messages = again;
                break;
            }
        }
    }
}

/// Decodes a frame and pushes it into the local routes; `delivered` is how many times
/// it has arrived (1 on the first), `redeliver` whether a refusal may wait for another.
fn deliver(
    shared: &Shared,
    subject: &str,
    payload: &[u8],
    delivered: u32,
    redeliver: bool,
) -> Verdict {
    let counters = &shared.counters;
    counters.received.incr();
    let mut frame = match wire::decode(payload) {
        Ok(frame) => frame,
        Err(why) => {
            undecodable(shared, subject, payload, delivered, &why);
            return Verdict::GaveUp;
        }
    };
    let (to, priority) = (frame.to.clone(), frame.priority);
    let from_node = std::mem::take(&mut frame.from_node);
    // Exactly once: reserve the id in the engine's window before the push, commit it
    // once a mailbox took it (never before: NATS #6415), roll it back otherwise.
    let engine = match frame.exactly_once {
        true => shared.engine.get().and_then(std::sync::Weak::upgrade),
        false => None,
    };
    let out = frame.into_outgoing();
    events::frame_received(&to, &out, &from_node, delivered);
    let id = out.id().clone();
    let arrival = arrival_key(&id);
    if let Some(engine) = &engine {
        if engine.tracker.reserve(&arrival) == Reservation::Duplicate {
            counters.duplicates.incr();
            events::duplicate_arrival(&to, &id);
            return Verdict::Delivered;
        }
    }
    // An ack that crosses back: only through the stream (at most once asks none).
    let wants_ack =
        redeliver && matches!(&out, Outgoing::Envelope(e) if e.delivery_options.require_ack);
    let policy = match &out {
        Outgoing::Envelope(e) => shared.policy.for_message(&e.delivery_options),
        Outgoing::Message(_) => shared.policy.for_message(&DeliveryOptions {
            priority,
            ..DeliveryOptions::default()
        }),
    };
    let acked = wants_ack.then(|| shared.acks.expect(&id));
    let verdict = push(shared, to, out, &policy, priority, delivered, redeliver);
    if let Some(engine) = &engine {
        match verdict {
            Verdict::Delivered => engine.tracker.commit(&arrival),
            _ => engine.tracker.rollback(&arrival),
        }
    }
    match (acked, verdict) {
        (Some(acked), Verdict::Delivered) => Verdict::AwaitAck(Awaited {
            id,
            policy,
            delivered,
            exactly_once: engine.is_some(),
            acked,
        }),
        (Some(_), verdict) => {
            shared.acks.forget(&id);
            verdict
        }
        (None, verdict) => verdict,
    }
}

/// The key an arrival takes in the engine's exactly-once window: the id with its bits
/// flipped, so that the sending side's entry of the same id (a durable node sends to
/// its own agents through the stream) is not taken for an earlier arrival.
pub(crate) fn arrival_key(id: &MessageId) -> MessageId {
    MessageId(uuid::Uuid::from_u128(!id.0.as_u128()))
}

/// Pushes an arrived message into the local routes and settles what they answered.
fn push(
    shared: &Shared,
    to: AgentPid,
    out: Outgoing,
    policy: &RetryPolicy,
    priority: crate::message::MessagePriority,
    delivered: u32,
    redeliver: bool,
) -> Verdict {
    let counters = &shared.counters;
    match shared.local.push(&to, out, priority) {
        Push::Done | Push::Transported => {
            counters.delivered.incr();
            Verdict::Delivered
        }
        Push::Refused(out, refusal, _) => {
            if redeliver && delivered <= policy.max_retries() {
                return later(shared, &to, &out, policy, delivered, refusal.as_str());
            }
            bury(
                shared,
                to,
                out,
                delivered,
                refusal_reason(refusal, redeliver),
            );
            Verdict::GaveUp
        }
        Push::Closed(out) => {
            bury(shared, to, out, delivered, DeadLetterReason::MailboxClosed);
            Verdict::GaveUp
        }
        // A pid the registry still gives to this node, not registered here (yet): a
        // restarted node whose agents register again. Its messages wait for it.
        Push::NotFound(out)
            if redeliver
                && delivered <= policy.max_retries()
                && shared.registry.owner(&to) == Some(Owner::Me) =>
        {
            let why = "its agent is not registered here (yet)";
            later(shared, &to, &out, policy, delivered, why)
        }
        Push::NotFound(out) => {
            bury(shared, to, out, delivered, DeadLetterReason::AgentNotFound);
            Verdict::GaveUp
        }
        Push::Failed(out, e) => {
            let reason = DeadLetterReason::RetriesExhausted(e.to_string());
            match out {
                Some(out) => bury(shared, to, out, delivered, reason),
                None => counters.dead_lettered.incr(),
            }
            Verdict::GaveUp
        }
        // Group pids are not in the registry, so nothing from another node should
        // reach a group here; if it does, it is not sent on a second hop.
        Push::Forward(out, member) => {
            let why = format!("a group here picked member {member} on another node for a message that came from another node");
            bury(shared, to, out, delivered, DeadLetterReason::Transport(why));
            Verdict::GaveUp
        }
        // A broadcast group's copies are made by the sending system's engine; one that
        // arrives from another node is not fanned out here (yet): buried, with why.
        Push::Fanout(out, _) => {
            let why = "a broadcast group takes messages from its own node only".into();
            bury(shared, to, out, delivered, DeadLetterReason::Transport(why));
            Verdict::GaveUp
        }
    }
}

/// Dead-letters a frame that did not decode, keeping its bytes.
fn undecodable(shared: &Shared, subject: &str, payload: &[u8], attempts: u32, why: &str) {
    shared.counters.undecodable.incr();
    let raw = AgentMessage::Cast {
        id: MessageId::new(),
        from: AgentPid::nil(),
        payload: Payload::new(payload.to_vec()),
        message_type: Some("cluster.undecodable".into()),
    };
    bury(
        shared,
        AgentPid::nil(),
        Outgoing::Message(raw),
        attempts,
        DeadLetterReason::Transport(format!("{why}, on subject {subject}")),
    );
}

/// Puts an arrived message back for a redelivery after the back-off.
fn later(
    shared: &Shared,
    to: &AgentPid,
    out: &Outgoing,
    policy: &RetryPolicy,
    delivered: u32,
    why: &str,
) -> Verdict {
    shared.counters.redelivery_requests.incr();
    let delay = policy.delay(delivered - 1);
    events::redelivery_requested(to, out, delivered, delay, why);
    Verdict::Later(delay)
}

/// Dead-letters the message a frame carries (or the frame, if it does not decode).
pub(crate) fn bury_frame(
    shared: &Shared,
    subject: &str,
    payload: &[u8],
    attempts: u32,
    reason: DeadLetterReason,
) {
    match wire::decode(payload) {
        Ok(frame) => {
            let to = frame.to.clone();
            bury(shared, to, frame.into_outgoing(), attempts, reason);
        }
        Err(why) => undecodable(shared, subject, payload, attempts, &why),
    }
}

fn bury(shared: &Shared, to: AgentPid, out: Outgoing, attempts: u32, reason: DeadLetterReason) {
    shared.counters.dead_lettered.incr();
    let message = DeadMessage::from(out);
    shared.dead_letters.push(DeadLetter {
        id: message.id().clone(),
        to,
        reason,
        attempts,
        message,
    });
}

/// The dead-letter reason of a refusal, named as the engine names it for a local
/// message (at most once: at once; at least once: out of retries).
fn refusal_reason(refusal: Refusal, retried: bool) -> DeadLetterReason {
    match refusal {
        Refusal::MailboxFull if retried => {
            DeadLetterReason::RetriesExhausted("mailbox full".into())
        }
        Refusal::MailboxFull => DeadLetterReason::MailboxFull,
        Refusal::CircuitOpen => DeadLetterReason::CircuitOpen,
        Refusal::EmptyGroup => DeadLetterReason::RetriesExhausted("group has no members".into()),
    }
}
