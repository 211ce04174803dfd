//! Dead letters: every message the system gave up on, with why.
//!
//! Nothing accepted is dropped silently: a message refused by a full mailbox, left in a
//! mailbox nobody can receive from any more, out of retries, or expired, lands here
//! until `MessageSystem::dead_letters()` drains it.

use std::collections::VecDeque;
use std::fmt;

use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessageId, Outgoing};
use crate::observe::{self, Traced};
use crate::stats::Counter;
#[cfg(feature = "metrics")]
use crate::sync::AtomicU64;
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
        }
    }
}

impl DeadLetterReason {
    /// Every [`label`](Self::label), in declaration order.
    pub const LABELS: [&'static str; 9] = [
        "mailbox_full",
        "mailbox_closed",
        "agent_not_found",
        "retries_exhausted",
        "not_acknowledged",
        "expired",
        "circuit_open",
        "overloaded",
        "shutdown",
    ];

    /// The reason's kind without its details, in snake case: a metric label
    /// (`agent_messaging_dead_letters_total{reason="..."}`), one of
    /// [`LABELS`](Self::LABELS).
    ///
    /// # Examples
    ///
    /// ```
    /// use terraphim_agent_messaging::DeadLetterReason;
    ///
    /// let reason = DeadLetterReason::RetriesExhausted("mailbox full".into());
    /// assert_eq!(reason.label(), "retries_exhausted");
    /// assert_eq!(reason.to_string(), "retries exhausted: mailbox full");
    /// ```
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// The position of the reason's kind in [`LABELS`](Self::LABELS).
    fn index(&self) -> usize {
        match self {
            DeadLetterReason::MailboxFull => 0,
            DeadLetterReason::MailboxClosed => 1,
            DeadLetterReason::AgentNotFound => 2,
            DeadLetterReason::RetriesExhausted(_) => 3,
            DeadLetterReason::NotAcknowledged => 4,
            DeadLetterReason::Expired => 5,
            DeadLetterReason::CircuitOpen => 6,
            DeadLetterReason::Overloaded(_) => 7,
            DeadLetterReason::Shutdown => 8,
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

impl Traced for DeadMessage {
    fn message_id(&self) -> &dyn fmt::Display {
        self.id()
    }

    fn message_type(&self) -> &str {
        match self {
            DeadMessage::Envelope(e) => &e.message_type,
            DeadMessage::Message(m) => Traced::message_type(m),
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
    /// Dead letters by reason, in the order of `DeadLetterReason::LABELS` (pushes are
    /// rare and take the queue's lock anyway: plain atomics suffice).
    #[cfg(feature = "metrics")]
    by_reason: [AtomicU64; 9],
}

impl DeadLetters {
    pub(crate) fn push(&self, letter: DeadLetter) {
        observe::events::dead_letter(&letter.to, &letter.message, &letter.reason, letter.attempts);
        #[cfg(feature = "metrics")]
        self.by_reason[letter.reason.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.total.incr();
        lock(&self.queue).push_back(letter);
    }

    /// Dead letters ever recorded, by reason label (for the metrics).
    #[cfg(feature = "metrics")]
    pub(crate) fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let counts = self
            .by_reason
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed));
        DeadLetterReason::LABELS.into_iter().zip(counts).collect()
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
