//! Agent mailboxes: lock-free multi-priority MPSC queues with one receiver.
//!
//! Layers, bottom up:
//!
//! 1. [`lane`](self::lane): one unbounded lock-free MPSC block list (the only `unsafe`
//!    queue code), and below it `block_cache`, one freed block kept per thread.
//! 2. [`priority`](self::priority): four lanes, the drain order and the anti-starvation
//!    budget.
//! 3. [`shared`](self::shared): capacity, the receiver claim, close and drain, stats.
//! 4. [`handle`](self::handle): the public [`AgentMailbox`] and [`MailboxSender`].
//! 5. [`handback`](self::handback): refused sends handed back to the delivery engine.
//! 6. [`backpressure`](self::backpressure): senders waiting for room in a bounded
//!    mailbox (`send_timeout`), woken in order.
//!
//! Mailboxes by pid ([`MailboxManager`](crate::MailboxManager)) live a layer up, over
//! the agent table.
//!
//! # Guarantees
//!
//! - `Critical` before `High` before `Normal` before `Low`; FIFO within a priority from
//!   one sender. With `preserve_order: false`, a lower priority is served after being
//!   passed over 64 times (see `priority`).
//! - A bounded mailbox (`max_messages > 0`) never holds more than `max_messages`; a
//!   refused message is handed back (`try_send`) or dead-lettered (`send`).
//! - One receiver at a time; a second concurrent receive gets `ReceiverBusy`. A task
//!   pending in `poll_receive` that another receiver takes the place of is woken.
//! - No receive waits for a producer descheduled mid-send longer than a few
//!   microseconds of spinning: `try_receive` then reports nothing for now (or takes a
//!   lower priority, where the order allows: see `priority`), `receive_timeout` sleeps
//!   until its deadline, a blocking or async receive sleeps until that producer's write
//!   wakes it.
//! - After `close`, the receiver drains what was queued, then gets `ChannelClosed`.
//! - A receiver waiting for its next message holds no lane block: they are given back
//!   when it goes to sleep (see `shared`, "Memory").

pub(crate) mod backpressure;
#[cfg(not(loom))]
mod block_cache;
pub(crate) mod handback;
pub(crate) mod handle;
pub(crate) mod lane;
pub(crate) mod priority;
pub(crate) mod shared;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::handle::{AgentMailbox, MailboxSender, ReceiveFuture};
use crate::message::AgentPid;

/// Mailbox configuration: the seed's four fields.
///
/// | field | meaning |
/// |---|---|
/// | `max_messages` | 0 = unbounded (Erlang-style); otherwise an exact bound |
/// | `preserve_order` | `true`: strict priority order; `false`: a starved lower priority is served after 64 higher messages |
/// | `enable_persistence` | `true` only on a cluster node (cargo feature `nats`, `MessageSystemBuilder::cluster`), at least once: its agents' messages are stored in JetStream before a send returns `Ok` (see the README's "Cluster"); elsewhere refused with a `Configuration` error that says so |
/// | `stats_interval` | the time constant of the `average_processing_time` moving average; must be non-zero |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxConfig {
    /// Maximum number of queued messages (0 = unbounded).
    pub max_messages: usize,
    /// Strict priority order (`true`) or starvation-free order (`false`).
    pub preserve_order: bool,
    /// Store the agents' messages on file (a cluster node only; refused elsewhere).
    pub enable_persistence: bool,
    /// Averaging window for processing-time statistics.
    pub stats_interval: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            max_messages: 0,
            preserve_order: true,
            enable_persistence: false,
            stats_interval: Duration::from_secs(60),
        }
    }
}

impl MailboxConfig {
    /// Checks the configuration; the error text says what to change.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_on(false)
    }

    /// [`validate`](Self::validate), where `cluster_node` says whether the mailboxes
    /// belong to a cluster node (the one place persistence exists).
    pub(crate) fn validate_on(&self, cluster_node: bool) -> Result<(), String> {
        if self.enable_persistence && !cluster_node {
            return Err(
                "enable_persistence: true needs a cluster node: mailboxes of a \
                        single process are in memory; build with the cargo feature `nats` \
                        and MessageSystemBuilder::cluster(ClusterConfig::new(url, node)) to \
                        store them in NATS JetStream, or set it to false"
                    .into(),
            );
        }
        if self.stats_interval.is_zero() {
            return Err("stats_interval must be greater than zero".into());
        }
        Ok(())
    }
}

/// A snapshot of one mailbox's counters.
///
/// `total_messages_received = total_messages_processed + messages_dead_lettered +
/// current_queue_size` at rest. Timestamps, `average_processing_time` and
/// `max_queue_size_reached` are sampled once per 64 messages (plus the first), so the
/// hot path reads no clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxStats {
    /// The mailbox's agent.
    pub agent_id: AgentPid,
    /// Messages accepted into the mailbox.
    pub total_messages_received: u64,
    /// Messages handed to the receiver.
    pub total_messages_processed: u64,
    /// Messages queued now.
    pub current_queue_size: usize,
    /// Highest queue length seen (sampled).
    pub max_queue_size_reached: usize,
    /// When a message was last accepted (sampled).
    pub last_message_received: Option<chrono::DateTime<chrono::Utc>>,
    /// When a message was last handed out (sampled).
    pub last_message_processed: Option<chrono::DateTime<chrono::Utc>>,
    /// Moving average of the time between handing out a message and the next receive.
    pub average_processing_time: Duration,
    /// Messages left queued at close and moved to the dead letters (0 when read from
    /// 1.x's serialised stats, which lack the field).
    #[serde(default)]
    pub messages_dead_lettered: u64,
}

/// Counting by hand, as 1.x's `MailboxStats` hooks did.
///
/// A mailbox keeps its own counters: every message it accepts counts as received, and
/// every message that leaves it through any receive (`receive`, `receive_timeout`,
/// `try_receive`, `receive_many`, `drain_until_closed`, the async twins) counts as
/// processed, so no hook is needed to keep [`AgentMailbox::stats`] right. That method
/// returns a copy, as in 1.x: calling these hooks on it changes the copy only.
///
/// They are for statistics kept by hand, e.g. by a custom [`MessageRouter`] with its own
/// queues, or by an agent that hands received messages to workers and wants
/// "processed" to mean "handled": start from [`MailboxStats::new`] (or a snapshot) and
/// call [`record_message_received`](Self::record_message_received) and
/// [`record_message_processed`](Self::record_message_processed) as messages come and go.
///
/// [`MessageRouter`]: crate::MessageRouter
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::{AgentPid, MailboxStats};
///
/// let mut stats = MailboxStats::new(AgentPid::new());
/// stats.record_message_received();
/// stats.record_message_received();
/// stats.record_message_processed(Duration::from_millis(10));
/// stats.record_message_processed(Duration::from_millis(30));
/// assert_eq!(stats.total_messages_processed, 2);
/// assert_eq!(stats.current_queue_size, 0);
/// assert_eq!(stats.max_queue_size_reached, 2);
/// assert_eq!(stats.average_processing_time, Duration::from_millis(20));
/// ```
impl MailboxStats {
    /// Empty statistics for `agent_id`: every counter 0, no timestamps.
    pub fn new(agent_id: AgentPid) -> Self {
        MailboxStats {
            agent_id,
            total_messages_received: 0,
            total_messages_processed: 0,
            current_queue_size: 0,
            max_queue_size_reached: 0,
            last_message_received: None,
            last_message_processed: None,
            average_processing_time: Duration::ZERO,
            messages_dead_lettered: 0,
        }
    }

    /// Counts a message in: one more received and queued, the high-water mark follows,
    /// and `last_message_received` is now (wall clock). Counters saturate.
    pub fn record_message_received(&mut self) {
        self.total_messages_received = self.total_messages_received.saturating_add(1);
        self.current_queue_size = self.current_queue_size.saturating_add(1);
        self.max_queue_size_reached = self.max_queue_size_reached.max(self.current_queue_size);
        self.last_message_received = Some(chrono::Utc::now());
    }

    /// Counts a message out after `processing_time`: one more processed, one fewer
    /// queued (never below 0), `last_message_processed` is now (wall clock), and
    /// `average_processing_time` takes in the sample as a running mean:
    /// `(average × (n − 1) + processing_time) / n`, `n` the new
    /// `total_messages_processed` (from `MailboxStats::new`, the mean of the samples).
    pub fn record_message_processed(&mut self, processing_time: Duration) {
        self.total_messages_processed = self.total_messages_processed.saturating_add(1);
        self.current_queue_size = self.current_queue_size.saturating_sub(1);
        self.last_message_processed = Some(chrono::Utc::now());
        // Running mean: mean += (sample - mean) / n, in nanoseconds. Each term stays
        // between the old mean and the sample, so nothing overflows.
        let n = i128::from(self.total_messages_processed);
        let mean = self.average_processing_time.as_nanos() as i128;
        let sample = processing_time.as_nanos() as i128;
        let next = (mean + (sample - mean) / n) as u128;
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        self.average_processing_time =
            Duration::new((next / NANOS_PER_SEC) as u64, (next % NANOS_PER_SEC) as u32);
    }
}
