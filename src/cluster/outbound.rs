//! Sending to other nodes: the node as a [`Destination`], and the publisher task.
//!
//! The push (on the sender's thread) resolves the pid in the registry mirror, refuses
//! what cannot cross or is not built yet, encodes the frame, checks it against the
//! server's `max_payload`, and queues it for the publisher; nothing there waits.
//!
//! | the push met | outcome |
//! |---|---|
//! | pid unknown to the registry, or its node's lease lapsed | `NotFound` (`AgentNotFound`, dead letter) |
//! | a call with a `serde_json::Value` payload | `Done`: a request is on its way (see below) |
//! | a cast whose payload is not a `serde_json::Value`, a reply, an ack | `Failed`, `InvalidMessage`: cannot cross a process |
//! | a frame over the server's `max_payload` | `Failed`, `InvalidMessage` naming both sizes |
//! | the publisher's queue full | `Refused` (as a full mailbox: retried, or `Err` at most once) |
//! | the node leaving | `Failed`, `System` |
//! | queued | `Transported` (done for the sender; an ack is settled on the receiving node) |
//!
//! The publisher (one task per node) writes at-most-once frames with a core publish
//! and at-least-once frames with a JetStream publish whose `Nats-Msg-Id` is the
//! message id (a retried publish that the stream already has is dropped by the
//! stream's duplicate window). It does not wait for one publish ack before the next
//! publish: up to [`MAX_IN_FLIGHT`] acks are awaited together. A publish that is not
//! acknowledged is retried after the message's back-off, up to its `max_retries`, then
//! dead-lettered on this node (`Transport`).
//!
//! A call is a core NATS request to `{prefix}.call.{node}`, made on the client runtime
//! with the call's timeout (plus a little, so that the caller's own timeout decides):
//! the callee's JSON reply goes to the caller's reply slot; an error answer (the
//! callee's mailbox refused it, it is gone, its reply cannot cross) or no responder
//! drops the slot, so the caller fails at once with `DeliveryFailed` (the callee's
//! node keeps a dead letter saying why). A call is not retried.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::receipts::Receipt;
use super::registry::Owner;
use super::{wire, Node, Shared};
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadMessage};
use crate::delivery::{DeliveryGuarantee, RetryPolicy};
use crate::error::MessagingError;
use crate::message::{
    AgentMessage, AgentPid, DeliveryOptions, MessageId, MessagePriority, Outgoing, Payload,
};
use crate::observe::events;
use crate::router::{Destination, Push, Refusal};

/// Messages the publisher holds before pushes are refused (back-pressure).
const OUTBOX_CAPACITY: usize = 8192;
/// Publish acks awaited at once.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// Room left for the headers (`Nats-Msg-Id`) under the server's `max_payload`.
const HEADER_ROOM: usize = 128;

/// One message on its way to the server.
pub(crate) struct Parcel {
    subject: String,
    /// JetStream (at least once) or core NATS (at most once).
    stream: bool,
    bytes: Bytes,
    id: MessageId,
    to: AgentPid,
    /// Publishes tried so far.
    attempts: u32,
    policy: RetryPolicy,
    /// The message itself, for a dead letter.
    out: Outgoing,
    /// The sender waiting until the stream stored it (a durable destination).
    receipt: Option<Receipt>,
}

/// The queue into the publisher, and the signal that tells it to drain.
pub(crate) struct Outbox {
    tx: mpsc::Sender<Parcel>,
    drain: Drain,
}

/// What the publisher task reads.
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Parcel>,
    drain: Drain,
}

/// Tells the publisher to take no more and finish what it holds by a deadline.
#[derive(Clone, Default)]
pub(crate) struct Drain {
    notify: Arc<Notify>,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Drain {
    /// Starts draining; whatever is not published within `bound` is dead-lettered.
    pub(crate) fn drain(&self, bound: Duration) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + bound);
        self.notify.notify_one();
    }

    fn deadline(&self) -> Instant {
        self.deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Instant::now)
    }
}

impl Outbox {
    pub(crate) fn new() -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let drain = Drain::default();
        (
            Outbox {
                tx,
                drain: drain.clone(),
            },
            Inbox { rx, drain },
        )
    }

    pub(crate) fn drain_signal(&self) -> Drain {
        self.drain.clone()
    }
}

// ===== impl Destination for Node =====

impl Destination for Node {
    fn push(&self, to: &AgentPid, out: Outgoing, priority: MessagePriority) -> Push {
        let registry = &self.shared.registry;
        let stream = self.guarantee != DeliveryGuarantee::AtMostOnce;
        let is_call = matches!(&out, Outgoing::Message(AgentMessage::Call { .. }));
        let owner = match registry.owner(to) {
            None => return Push::NotFound(out),
            // Only a durable node's own messages go through the stream (`claims`);
            // otherwise the mirror still has a pid this node just unregistered.
            Some(Owner::Me) if !self.claims(to, &out) => return Push::NotFound(out),
            // A durable node that is down keeps what the stream carries, nothing else.
            Some(Owner::Durable(_)) if !stream || is_call => return Push::NotFound(out),
            Some(owner) => owner,
        };
        let node = owner.node(registry.me()).clone();
        if is_call {
            return self.call(to, &node, out);
        }
        let exactly_once = self.guarantee == DeliveryGuarantee::ExactlyOnce;
        let (frame, out) = wire::encode(to, out, priority, self.name(), &node, exactly_once);
        let bytes = match frame {
            Ok(bytes) => bytes,
            Err(e) => return Push::Failed(Some(out), e),
        };
        if bytes.len() + HEADER_ROOM > self.max_payload {
            let e = MessagingError::InvalidMessage(format!(
                "message {} to agent {to} on node {node:?} is {} bytes on the wire, over the \
                 server's max_payload of {} bytes (headers need up to {HEADER_ROOM} more)",
                out.id(),
                bytes.len(),
                self.max_payload
            ));
            return Push::Failed(Some(out), e);
        }
        let (subject, stream) = self.parcel_subject(&node);
        let options = match &out {
            Outgoing::Envelope(e) => Cow::Borrowed(&e.delivery_options),
            Outgoing::Message(_) => Cow::Owned(DeliveryOptions {
                priority,
                ..DeliveryOptions::default()
            }),
        };
        let policy = self.shared.policy.for_message(&options);
        let mut parcel = Parcel {
            subject,
            stream,
            bytes: Bytes::from(bytes),
            id: out.id().clone(),
            to: to.clone(),
            attempts: 1,
            policy,
            out,
            receipt: None,
        };
        // A sender waiting for the store (`Receipts::expect`) gets its receipt here:
        // from now on every outcome of the parcel is reported on it. Only a durable
        // node's stream keeps it on file (a group's sender asks whatever the pick).
        if stream && self.stores_at(&owner) {
            parcel.receipt = self.receipts.make(&parcel.id);
        }
        match self.outbox.tx.try_send(parcel) {
            Ok(()) => {
                self.shared.counters.handed.incr();
                Push::Transported
            }
            Err(mpsc::error::TrySendError::Full(parcel)) => {
                // Retried by the engine later: this sender does not wait for that.
                self.receipts.unmake(&parcel.id);
                Push::Refused(parcel.out, Refusal::MailboxFull, 0)
            }
            Err(mpsc::error::TrySendError::Closed(parcel)) => Push::Failed(
                Some(parcel.out),
                MessagingError::System(format!(
                    "cluster: node {:?} is leaving the cluster; message not sent",
                    self.name()
                )),
            ),
        }
    }

    fn claims(&self, to: &AgentPid, out: &Outgoing) -> bool {
        self.shared.config.durable
            && self.guarantee != DeliveryGuarantee::AtMostOnce
            && wire::crosses(out)
            && self.shared.registry.owner(to) == Some(Owner::Me)
    }
}

// ===== calls =====

impl Node {
    /// Sends a call as a request (see the module doc).
    fn call(&self, to: &AgentPid, node: &str, out: Outgoing) -> Push {
        let Outgoing::Message(AgentMessage::Call {
            id,
            from,
            payload,
            reply_to,
            timeout,
        }) = out
        else {
            unreachable!("only calls come here")
        };
        let rebuild = |payload, reply_to| {
            Outgoing::Message(AgentMessage::Call {
                id: id.clone(),
                from: from.clone(),
                payload,
                reply_to,
                timeout,
            })
        };
        let Some(value) = payload.downcast_ref::<serde_json::Value>() else {
            let e = MessagingError::InvalidMessage(format!(
                "a call whose payload is not a serde_json::Value cannot cross to agent {to} on \
                 node {node:?}"
            ));
            return Push::Failed(Some(rebuild(payload, reply_to)), e);
        };
        let frame = wire::CallFrame {
            v: wire::WIRE_VERSION,
            to: to.clone(),
            from_node: self.name().to_string(),
            id: id.clone(),
            from: from.clone(),
            payload: value.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let bytes = match serde_json::to_vec(&frame) {
            Ok(bytes) => bytes,
            Err(e) => return Push::Failed(Some(rebuild(payload, reply_to)), e.into()),
        };
        if bytes.len() + HEADER_ROOM > self.max_payload {
            let e = MessagingError::InvalidMessage(format!(
                "call {id} to agent {to} on node {node:?} is {} bytes on the wire, over the \
                 server's max_payload of {} bytes",
                bytes.len(),
                self.max_payload
            ));
            return Push::Failed(Some(rebuild(payload, reply_to)), e);
        }
        let counters = self.shared.clone();
        let client = self.client.clone();
        let subject = self.shared.config.call_subject(node);
        // The caller's own timeout decides; the request outlives it a little.
        let wait = timeout.saturating_add(Duration::from_millis(250));
        counters.counters.calls_sent.incr();
        self.runtime.handle().spawn(async move {
            let request = async_nats::Request::new()
                .payload(Bytes::from(bytes))
                .timeout(Some(wait));
            let answer = match client.send_request(subject, request).await {
                Ok(reply) => wire::ReplyFrame::decode(&reply.payload),
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(value) => {
                    let _ = reply_to.send(Payload::new(value));
                }
                // Dropping the slot fails the caller at once (`DeliveryFailed`).
                Err(_) => {
                    counters.counters.calls_failed.incr();
                    drop(reply_to);
                }
            }
        });
        Push::Done
    }
}

// ===== the publisher =====

type Keyed = Pin<Box<dyn Future<Output = (u64, Option<String>)> + Send>>;

/// The publisher's state: parcels waiting for their ack or their retry, by key.
struct Publisher {
    shared: Arc<Shared>,
    client: async_nats::Client,
    js: jetstream::Context,
    held: HashMap<u64, Parcel>,
    next_key: u64,
    /// Publish acks: the key and the error, if any.
    acks: FuturesUnordered<Keyed>,
    /// Retries waiting out their back-off.
    retries: FuturesUnordered<Keyed>,
}

/// The publisher task (see the module doc).
pub(crate) async fn publish(
    shared: Arc<Shared>,
    client: async_nats::Client,
    js: jetstream::Context,
    inbox: Inbox,
) {
    let Inbox { mut rx, drain } = inbox;
    let mut p = Publisher {
        shared,
        client,
        js,
        held: HashMap::new(),
        next_key: 0,
        acks: FuturesUnordered::new(),
        retries: FuturesUnordered::new(),
    };
    let mut open = true;
    let mut deadline: Option<Instant> = None;
    loop {
        if !open && p.acks.is_empty() && p.retries.is_empty() {
            break;
        }
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = drain.notify.notified(), if deadline.is_none() => {
                deadline = Some(drain.deadline());
                rx.close();
            }
            _ = until_deadline => break,
            Some((key, error)) = p.acks.next(), if !p.acks.is_empty() => p.settle(key, error),
            Some((key, _)) = p.retries.next(), if !p.retries.is_empty() => {
                if let Some(parcel) = p.held.remove(&key) {
                    p.send(parcel).await;
                }
            }
            received = rx.recv(), if open && p.acks.len() < MAX_IN_FLIGHT => match received {
                Some(parcel) => p.send(parcel).await,
                None => open = false,
            },
        }
    }
    // Out of time while leaving: what is left is given up on, with the reason.
    rx.close();
    while let Ok(parcel) = rx.try_recv() {
        p.bury(
            parcel,
            "the node left the cluster before publishing it".into(),
        );
    }
    for (_, parcel) in std::mem::take(&mut p.held) {
        p.bury(
            parcel,
            "the node left the cluster before the stream acknowledged it (it may still be delivered)"
                .into(),
        );
    }
}

impl Publisher {
    async fn send(&mut self, parcel: Parcel) {
        if !parcel.stream {
            // At most once: written to a live connection, or reported. The client would
            // buffer it through an outage and send it after reconnecting, possibly
            // before the receiving node has resubscribed: silently lost. Nothing is
            // retried.
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return self.bury(parcel, "at most once: not connected to the server".into());
            }
            let sent = self
                .client
                .publish(parcel.subject.clone(), parcel.bytes.clone())
                .await;
            match sent {
                Ok(()) => self.shared.counters.published.incr(),
                Err(e) => self.bury(parcel, format!("at-most-once publish failed: {e}")),
            }
            return;
        }
        let publish = PublishMessage::build()
            .payload(parcel.bytes.clone())
            .message_id(parcel.id.to_string());
        match self.js.send_publish(parcel.subject.clone(), publish).await {
            Ok(ack) => {
                let key = self.hold(parcel);
                self.acks.push(Box::pin(async move {
                    (key, ack.await.err().map(|e| e.to_string()))
                }));
            }
            Err(e) => self.retry_or_bury(parcel, e.to_string()),
        }
    }

    fn hold(&mut self, parcel: Parcel) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.held.insert(key, parcel);
        key
    }

    /// A publish ack (or its failure) arrived.
    fn settle(&mut self, key: u64, error: Option<String>) {
        let Some(parcel) = self.held.remove(&key) else {
            return;
        };
        match error {
            None => {
                self.shared.counters.published.incr();
                if let Some(receipt) = parcel.receipt {
                    let _ = receipt.send(Ok(()));
                }
            }
            Some(why) => self.retry_or_bury(parcel, why),
        }
    }

    fn retry_or_bury(&mut self, mut parcel: Parcel, why: String) {
        if parcel.attempts > parcel.policy.max_retries() {
            let attempts = parcel.attempts;
            return self.bury(
                parcel,
                format!(
                    "the stream did not acknowledge the publish after {attempts} attempts: {why}"
                ),
            );
        }
        let delay = parcel.policy.delay(parcel.attempts - 1);
        parcel.attempts += 1;
        self.shared.counters.publish_retries.incr();
        events::publish_retry(&parcel.to, &parcel.out, parcel.attempts, delay, &why);
        let key = self.hold(parcel);
        self.retries.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            (key, None)
        }));
    }

    fn bury(&self, parcel: Parcel, why: String) {
        self.shared.counters.publish_failed.incr();
        if let Some(receipt) = parcel.receipt {
            let _ = receipt.send(Err(format!("not stored: {why} (dead-lettered)")));
        }
        let message = DeadMessage::from(parcel.out);
        self.shared.dead_letters.push(DeadLetter {
            id: parcel.id,
            to: parcel.to,
            reason: DeadLetterReason::Transport(format!("to {}: {why}", parcel.subject)),
            attempts: parcel.attempts,
            message,
        });
    }
}
