//! Dead letters: every message the system gave up on, with why.
//!
//! Nothing accepted is dropped silently: a message refused by a full mailbox, left in a
//! mailbox nobody can receive from any more, out of retries, or expired, lands here
//! until `MessageSystem::dead_letters()` drains it.

use std::collections::VecDeque;
use std::fmt;

use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessageId, Outgoing};
use crate::stats::Counter;
use crate::sync::{lock, Mutex};

/// Why a message was given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The bounded mailbox was full (and the guarantee does not retry).
    MailboxFull,
    /// The mailbox closed (agent unregistered or system shut down) with the message
    /// still queued and no receiver left to drain it.
    MailboxClosed,
    /// The destination is not registered (any more).
    AgentNotFound,
    /// Every retry failed; the last error is given.
    RetriesExhausted(String),
    /// No acknowledgement arrived after every redelivery.
    NotAcknowledged,
    /// `DeliveryOptions::timeout` passed before delivery.
    Expired,
    /// The destination's circuit breaker stayed open through every retry.
    CircuitOpen,
    /// Too many messages were in flight (`max_concurrent_deliveries`).
    Overloaded(String),
    /// The system shut down while the message waited for a retry or an ack.
    Shutdown,
    /// The cluster transport gave up on it (cargo feature `nats`): a frame that did not
    /// decode or carried another wire version (on the receiving node), or a publish the
    /// server never acknowledged (on the sending node); why.
    Transport(String),
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::MailboxFull => f.write_str("mailbox full"),
            DeadLetterReason::MailboxClosed => f.write_str("mailbox closed"),
            DeadLetterReason::AgentNotFound => f.write_str("agent not found"),
            DeadLetterReason::RetriesExhausted(e) => write!(f, "retries exhausted: {e}"),
            DeadLetterReason::NotAcknowledged => f.write_str("not acknowledged"),
            DeadLetterReason::Expired => f.write_str("expired"),
            DeadLetterReason::CircuitOpen => f.write_str("circuit open"),
            DeadLetterReason::Overloaded(why) => write!(f, "overloaded: {why}"),
            DeadLetterReason::Shutdown => f.write_str("system shut down"),
            DeadLetterReason::Transport(why) => write!(f, "transport: {why}"),
        }
    }
}

/// The message itself, in the form the system held it.
#[derive(Debug)]
pub enum DeadMessage {
    /// A routed envelope.
    Envelope(MessageEnvelope),
    /// A message sent directly.
    Message(AgentMessage),
}

impl DeadMessage {
    /// The message's id.
    pub fn id(&self) -> &MessageId {
        match self {
            DeadMessage::Envelope(e) => &e.id,
            DeadMessage::Message(m) => m.id(),
        }
    }
}

impl From<Outgoing> for DeadMessage {
    /// A call given up on can never be answered, so a built message is disarmed (its
    /// caller fails at once instead of waiting out its timeout).
    fn from(out: Outgoing) -> Self {
        match out {
            Outgoing::Envelope(e) => DeadMessage::Envelope(e),
            Outgoing::Message(m) => DeadMessage::Message(m.disarm()),
        }
    }
}

/// One message given up on.
#[derive(Debug)]
pub struct DeadLetter {
    /// The message's id.
    pub id: MessageId,
    /// Where it was going.
    pub to: AgentPid,
    /// Why it was given up on.
    pub reason: DeadLetterReason,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The message.
    pub message: DeadMessage,
}

impl DeadLetter {
    /// A dead letter for a mailbox-level message.
    pub(crate) fn message(to: AgentPid, message: AgentMessage, reason: DeadLetterReason) -> Self {
        DeadLetter {
            id: message.id().clone(),
            to,
            reason,
            attempts: 1,
            message: DeadMessage::Message(message),
        }
    }
}

/// The dead-letter queue of a system (or of a standalone mailbox).
#[derive(Default)]
pub(crate) struct DeadLetters {
    queue: Mutex<VecDeque<DeadLetter>>,
    /// Every dead letter ever pushed (the queue is drained by readers).
    total: Counter,
}

impl DeadLetters {
    pub(crate) fn push(&self, letter: DeadLetter) {
        self.total.incr();
        lock(&self.queue).push_back(letter);
    }

    /// Takes every dead letter queued so far.
    pub(crate) fn drain(&self) -> Vec<DeadLetter> {
        lock(&self.queue).drain(..).collect()
    }

    /// Dead letters ever recorded.
    pub(crate) fn total(&self) -> u64 {
        self.total.get()
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}
