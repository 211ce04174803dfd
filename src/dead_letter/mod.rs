//! Dead letters: every message the system gave up on, with why, in a bounded store.
//!
//! Nothing accepted is dropped silently: a message refused by a full mailbox, left in a
//! mailbox nobody can receive from any more, out of retries, or expired, is recorded
//! here. The store keeps the newest letters up to its capacity for
//! `MessageSystem::dead_letters()` to drain; beyond that it keeps a count.
//!
//! 1. here: [`DeadLetter`], [`DeadLetterReason`] and its [`DeadLetterKind`],
//!    [`DeadMessage`], [`DeadLetterStats`].
//! 2. `store`: the bounded store of one system (or of a standalone mailbox or manager).
//! 3. `subscription`: [`DeadLetterSubscription`], a bounded inbox that takes the
//!    letters of chosen reasons as they are recorded.
//!
//! # The bound, and which letters it keeps
//!
//! A store keeps at most `capacity` letters ([`DEFAULT_DEAD_LETTER_CAPACITY`] unless
//! `MessageSystemBuilder::dead_letter_capacity` says otherwise). A letter that arrives
//! at a full store pushes out the **oldest** one, which is dropped and counted under
//! its own reason in [`DeadLetterStats::dropped_by_reason`]. Capacity 0 keeps none and
//! counts every letter.
//!
//! Why the newest: an operator reads dead letters to learn what is failing *now*, and
//! under sustained overload the newest letters say that while the oldest only repeat
//! what the counts already say. NATS JetStream's default discard policy for a stream at
//! its limits (`DiscardOld`) makes the same choice. Akka's dead-letter logging keeps
//! the first few and then only counts, which loses the later phase of an incident;
//! Erlang drops a message to a dead process without a trace, which this crate's
//! contract forbids: every letter is at least counted.
//!
//! # The ledger
//!
//! Every letter recorded is, at any moment, kept (in the store), waiting in a
//! subscription, taken (drained by a reader or received by a subscriber), or dropped
//! (pushed out, or never kept at capacity 0):
//! `recorded = kept + in_subscriptions + taken + dropped`, exact once writers are quiet.
//! `recorded` is `MessageSystem::dead_letter_count()`. Each message the delivery engine
//! gives up on is one letter and one `failed` or `expired` in `delivery_stats()`;
//! messages a mailbox held when it closed with no receiver left are letters too
//! (`MailboxClosed`), counted `delivered` by the engine, which handed them over.
//!
//! # Memory and contention
//!
//! The store holds at most `capacity` letters, each with its message (payload
//! included): its memory is bounded by `capacity` times the largest message, and it is
//! freed when a reader drains it. Recording a letter bumps a striped counter and takes
//! one short lock: the critical section moves two letters within a ring buffer that,
//! once full, never allocates, and the letter pushed out is freed after the lock is
//! released. At capacity 0 recording takes no lock at all. The store is not sharded:
//! one order across all letters and an exact "newest `capacity`" are worth more to an
//! operator than the few tens of nanoseconds a shard would save on what is already the
//! failure path.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessageId, Outgoing};
use crate::observe::Traced;

mod store;
mod subscription;

pub(crate) use self::store::DeadLetters;
pub use self::subscription::DeadLetterSubscription;

/// How many dead letters a system keeps by default (the newest ones; older ones are
/// dropped and counted). See `MessageSystemBuilder::dead_letter_capacity`.
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 10_000;

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
    /// The agent stopped with this exit reason (`exit`, a crash: `panicked: …`, or a
    /// link) while the message was queued and no receiver was left to drain it.
    AgentStopped(String),
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
            DeadLetterReason::AgentStopped(reason) => write!(f, "agent stopped: {reason}"),
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

impl Traced for DeadMessage {
    fn message_id(&self) -> u128 {
        self.id().0.as_u128()
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

impl DeadLetterReason {
    /// Every [`label`](Self::label), in declaration order.
    pub const LABELS: [&'static str; 11] = [
        "mailbox_full",
        "mailbox_closed",
        "agent_not_found",
        "retries_exhausted",
        "not_acknowledged",
        "expired",
        "circuit_open",
        "overloaded",
        "shutdown",
        "agent_stopped",
        "transport",
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
        Self::LABELS[self.kind().index()]
    }

    /// The reason without its details: what dead letters are counted and selected by.
    pub fn kind(&self) -> DeadLetterKind {
        match self {
            DeadLetterReason::MailboxFull => DeadLetterKind::MailboxFull,
            DeadLetterReason::MailboxClosed => DeadLetterKind::MailboxClosed,
            DeadLetterReason::AgentNotFound => DeadLetterKind::AgentNotFound,
            DeadLetterReason::RetriesExhausted(_) => DeadLetterKind::RetriesExhausted,
            DeadLetterReason::NotAcknowledged => DeadLetterKind::NotAcknowledged,
            DeadLetterReason::Expired => DeadLetterKind::Expired,
            DeadLetterReason::CircuitOpen => DeadLetterKind::CircuitOpen,
            DeadLetterReason::Overloaded(_) => DeadLetterKind::Overloaded,
            DeadLetterReason::Shutdown => DeadLetterKind::Shutdown,
            DeadLetterReason::AgentStopped(_) => DeadLetterKind::AgentStopped,
            DeadLetterReason::Transport(_) => DeadLetterKind::Transport,
        }
    }
}

/// A [`DeadLetterReason`] without its details, one per variant: the key of
/// [`DeadLetterStats::dropped_by_reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeadLetterKind {
    /// [`DeadLetterReason::MailboxFull`].
    MailboxFull,
    /// [`DeadLetterReason::MailboxClosed`].
    MailboxClosed,
    /// [`DeadLetterReason::AgentNotFound`].
    AgentNotFound,
    /// [`DeadLetterReason::RetriesExhausted`], whatever the last error.
    RetriesExhausted,
    /// [`DeadLetterReason::NotAcknowledged`].
    NotAcknowledged,
    /// [`DeadLetterReason::Expired`].
    Expired,
    /// [`DeadLetterReason::CircuitOpen`].
    CircuitOpen,
    /// [`DeadLetterReason::Overloaded`], whatever the limit.
    Overloaded,
    /// [`DeadLetterReason::Shutdown`].
    Shutdown,
    /// [`DeadLetterReason::AgentStopped`], whatever the exit reason.
    AgentStopped,
    /// [`DeadLetterReason::Transport`], whatever the cause.
    Transport,
}

impl DeadLetterKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [DeadLetterKind] = &[
        DeadLetterKind::MailboxFull,
        DeadLetterKind::MailboxClosed,
        DeadLetterKind::AgentNotFound,
        DeadLetterKind::RetriesExhausted,
        DeadLetterKind::NotAcknowledged,
        DeadLetterKind::Expired,
        DeadLetterKind::CircuitOpen,
        DeadLetterKind::Overloaded,
        DeadLetterKind::Shutdown,
        DeadLetterKind::AgentStopped,
        DeadLetterKind::Transport,
    ];

    /// The kind's position in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DeadLetterKind {
    /// The words [`DeadLetterReason`]'s `Display` starts with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadLetterKind::MailboxFull => "mailbox full",
            DeadLetterKind::MailboxClosed => "mailbox closed",
            DeadLetterKind::AgentNotFound => "agent not found",
            DeadLetterKind::RetriesExhausted => "retries exhausted",
            DeadLetterKind::NotAcknowledged => "not acknowledged",
            DeadLetterKind::Expired => "expired",
            DeadLetterKind::CircuitOpen => "circuit open",
            DeadLetterKind::Overloaded => "overloaded",
            DeadLetterKind::Shutdown => "system shut down",
            DeadLetterKind::AgentStopped => "agent stopped",
            DeadLetterKind::Transport => "transport",
        })
    }
}

/// A snapshot of a dead-letter store's counters (exact once writers are quiet).
///
/// `recorded = kept + in_subscriptions + taken + dropped`, and `dropped` is the sum of
/// `dropped_by_reason`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterStats {
    /// The most letters the store keeps (0: none, counts only).
    pub capacity: usize,
    /// Letters ever recorded (`dead_letter_count()`).
    pub recorded: u64,
    /// Letters in the store now, at most `capacity`.
    pub kept: u64,
    /// Letters handed to subscriptions and not yet received.
    pub in_subscriptions: u64,
    /// Letters taken out: drained by readers or received by subscribers.
    pub taken: u64,
    /// Letters dropped: pushed out of a full store by newer ones (or never kept, at
    /// capacity 0).
    pub dropped: u64,
    /// `dropped`, by the dropped letter's reason (only reasons with drops appear).
    pub dropped_by_reason: BTreeMap<DeadLetterKind, u64>,
}
