//! Acknowledgements that cross back: a message sent with `require_ack` to an agent on
//! this node stays unsettled in the stream until its agent acknowledges it here.
//!
//! | what happens | the stream message |
//! |---|---|
//! | the agent calls `acknowledge(&id)` on this node's system | acked |
//! | no acknowledgement within `acknowledgment_timeout` (this system's), and retries left | NAK with the message's back-off: JetStream redelivers it, the agent sees it again |
//! | no acknowledgement, no retries left | dead letter here (`RetriesExhausted`) and `Term` |
//! | this node dies first | the server redelivers it after the consumer's ack wait, to this node's successor |
//!
//! While it waits, progress is reported to the server at least twice per ack wait, so a
//! timeout longer than the consumer's ack wait does not make the server redeliver on
//! its own. An exactly-once message that times out leaves the node's exactly-once
//! window before the NAK, so that its redelivery is delivered, not taken for a copy.
//!
//! # Invariants
//!
//! - Each waiting message is settled exactly once: by its acknowledgement or by its
//!   timeout, whichever removes it from the map first.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHasher;
use async_nats::jetstream::{AckKind, Message};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connect::ACK_WAIT_FLOOR;
use super::{inbound, Shared};
use crate::dead_letter::DeadLetterReason;
use crate::delivery::RetryPolicy;
use crate::message::MessageId;
use crate::observe::events;

/// The messages waiting for their agent's acknowledgement, by id.
#[derive(Default)]
pub(crate) struct AwaitingAcks {
    waiting: Mutex<HashMap<MessageId, oneshot::Sender<()>, BuildHasherDefault<AHasher>>>,
}

impl AwaitingAcks {
    /// Starts waiting for `id`'s acknowledgement, before its push: an agent may take
    /// the message and acknowledge it before the push has returned.
    pub(crate) fn expect(&self, id: &MessageId) -> oneshot::Receiver<()> {
        let (acked_tx, acked) = oneshot::channel();
        self.lock().insert(id.clone(), acked_tx);
        acked
    }

    /// Stops waiting for `id` (its push did not deliver it).
    pub(crate) fn forget(&self, id: &MessageId) {
        self.lock().remove(id);
    }

    /// Settles `id` as acknowledged; `false` if it is not waiting here.
    pub(crate) fn acknowledge(&self, id: &MessageId) -> bool {
        match self.lock().remove(id) {
            Some(acked) => {
                let _ = acked.send(());
                true
            }
            None => false,
        }
    }

    /// Messages waiting now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<MessageId, oneshot::Sender<()>, BuildHasherDefault<AHasher>>,
    > {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a waiting message needs to be settled.
pub(crate) struct Awaited {
    pub(crate) id: MessageId,
    pub(crate) policy: RetryPolicy,
    /// How many times the stream has delivered it (1 on the first).
    pub(crate) delivered: u32,
    pub(crate) exactly_once: bool,
    /// Resolved by [`AwaitingAcks::acknowledge`].
    pub(crate) acked: oneshot::Receiver<()>,
}

/// Keeps `message` unsettled until its agent acknowledges it or the timeout passes
/// (see the module doc). Runs on the client runtime.
pub(crate) fn await_ack(shared: &Arc<Shared>, awaited: Awaited, message: Message) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let Awaited {
            id,
            policy,
            delivered,
            exactly_once,
            acked,
        } = awaited;
        let timeout = shared.ack_timeout.max(Duration::from_millis(1));
        let deadline = Instant::now() + timeout;
        let progress_every = ACK_WAIT_FLOOR / 2;
        tokio::pin!(acked);
        loop {
            let next = (Instant::now() + progress_every).min(deadline);
            tokio::select! {
                _ = &mut acked => {
                    let _ = message.ack().await;
                    return;
                }
                _ = tokio::time::sleep_until(next) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
        // The timeout: unless an acknowledgement took it out of the map first.
        if shared.acks.lock().remove(&id).is_none() {
            let _ = acked.await;
            let _ = message.ack().await;
            return;
        }
        if exactly_once {
            // Its redelivery must be delivered, not taken for a copy.
            if let Some(engine) = shared.engine.get().and_then(std::sync::Weak::upgrade) {
                engine.tracker.uncommit(&inbound::arrival_key(&id));
            }
        }
        let kind = if delivered <= policy.max_retries() {
            shared.counters.redelivery_requests.incr();
            let delay = policy.delay(delivered - 1);
            if let Ok(frame) = super::wire::decode(&message.payload) {
                let to = frame.to.clone();
                let out = frame.into_outgoing();
                events::redelivery_requested(&to, &out, delivered, delay, "no acknowledgement");
            }
            AckKind::Nak(Some(delay))
        } else {
            let reason = DeadLetterReason::RetriesExhausted(format!(
                "no acknowledgement within {timeout:?}, after {delivered} deliveries through \
                 the stream"
            ));
            inbound::bury_frame(
                &shared,
                &message.subject,
                &message.payload,
                delivered,
                reason,
            );
            AckKind::Term
        };
        let _ = message.ack_with(kind).await;
    });
}
