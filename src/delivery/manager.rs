//! `DeliveryManager`: the seed's delivery-tracking API, bounded and clock-driven.
//!
//! The manager keeps one [`DeliveryRecord`] per tracked message and answers which
//! messages need a retry. It sends nothing itself: whoever owns it (the system's driver,
//! or user code as in the seed's "Retry Logic" example) calls `mark_*` as a delivery
//! progresses and redelivers the [`get_retry_candidates`](DeliveryManager::get_retry_candidates).
//!
//! # Lifecycle
//!
//! ```text
//! record → Pending → mark_in_transit (attempts += 1) → InTransit
//!        → mark_delivered → Delivered → mark_acknowledged → Acknowledged
//!        ↘ mark_failed → Failed(error) → (retry) mark_in_transit → …
//!        ↘ mark_expired → Expired
//! ```
//!
//! Transitions are not policed, with one exception: `Acknowledged` and `Expired` are
//! terminal, and later `mark_*` calls on such a record succeed without changing it (a
//! late retry outcome must not resurrect an acknowledged message). Under
//! `AtMostOnce`, `mark_delivered` also acknowledges (nothing will ever ack it).
//!
//! # Retry candidates
//!
//! A record is a candidate when the manager kept its envelope
//! ([`record_message`](DeliveryManager::record_message)), the guarantee is not
//! `AtMostOnce`, it has retries left (`attempts <= max_retries`, i.e. the first attempt
//! plus `max_retries` retries, with the per-message override of
//! [`RetryPolicy::for_message`]) and it is
//! - `Failed`, or
//! - `InTransit` for at least `acknowledgment_timeout` since its last attempt, or
//! - `Delivered` but not acknowledged for at least `acknowledgment_timeout`, when its
//!   envelope asked for an ack (`require_ack`).
//!
//! Time is read through the manager's [`Clock`]; an `acknowledgment_timeout` of zero is
//! treated as one [`TICK`] so that a redelivery loop cannot spin.
//!
//! # The `max_delivery_records` bound
//!
//! At most `max_delivery_records` records are kept. Recording a new id at the limit
//! evicts the record that became **final** longest ago. Final means nothing more can
//! happen to it through the manager:
//! - `Acknowledged` or `Expired`;
//! - `Failed` with no retry left (or without a kept envelope, or under `AtMostOnce`);
//! - `Delivered` when no ack is awaited (`require_ack` false, or `AtMostOnce`).
//!   Records made with the envelope-less `record` await an ack under
//!   `AtLeastOnce`/`ExactlyOnce` unless made with `record_with_ack(.., false)`.
//!
//! If every record is still in flight, recording fails with
//! `MessagingError::Overloaded` instead of forgetting one. Eviction is O(1) amortised:
//! final records are queued in the order they became final.
//! [`cleanup`](DeliveryManager::cleanup) drops final records older than
//! `cleanup_interval`.
//!
//! Statistics ([`get_stats`](DeliveryManager::get_stats)) describe the records kept now
//! and are maintained incrementally (O(1) to read).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHasher;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::retry::RetryPolicy;
use super::{DeliveryConfig, DeliveryGuarantee};
use crate::error::{MessagingError, MessagingResult};
use crate::message::{AgentPid, MessageEnvelope, MessageId};
use crate::sync::{lock, Mutex};
use crate::timer::{Clock, SystemClock, TICK};

type IdMap<V> = HashMap<MessageId, V, BuildHasherDefault<AHasher>>;

/// Where a tracked message is in its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Recorded, not yet attempted.
    Pending,
    /// An attempt is under way.
    InTransit,
    /// In the destination's mailbox.
    Delivered,
    /// Acknowledged by the receiver.
    Acknowledged,
    /// The last attempt failed, with why.
    Failed(String),
    /// Its `DeliveryOptions::timeout` passed before delivery.
    Expired,
}

/// What the manager knows about one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The message.
    pub message_id: MessageId,
    /// Its sender, if any.
    pub from: Option<AgentPid>,
    /// Its destination.
    pub to: AgentPid,
    /// Where it is now.
    pub status: DeliveryStatus,
    /// Delivery attempts so far (`mark_in_transit` calls).
    pub attempts: u32,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When the last attempt started.
    pub last_attempt: Option<DateTime<Utc>>,
    /// When it was (last) delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was acknowledged.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The last failure's reason.
    pub error_message: Option<String>,
}

impl DeliveryRecord {
    /// A `Pending` record created now (wall clock).
    pub fn new(message_id: MessageId, from: Option<AgentPid>, to: AgentPid) -> Self {
        Self::at(message_id, from, to, Utc::now())
    }

    fn at(message_id: MessageId, from: Option<AgentPid>, to: AgentPid, now: DateTime<Utc>) -> Self {
        DeliveryRecord {
            message_id,
            from,
            to,
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: now,
            last_attempt: None,
            delivered_at: None,
            acknowledged_at: None,
            error_message: None,
        }
    }

    /// Whether the status is `Acknowledged`, `Failed` or `Expired` (the seed's notion;
    /// the manager's eviction rule is finer, see the module doc).
    pub fn is_final_state(&self) -> bool {
        matches!(
            self.status,
            DeliveryStatus::Acknowledged | DeliveryStatus::Failed(_) | DeliveryStatus::Expired
        )
    }
}

/// The record's own lifecycle, for a record you keep yourself (as in 1.x).
///
/// Each method sets the status and stamps its timestamp with the wall clock
/// (`Utc::now()`); none touches another timestamp. They are plain setters: unlike
/// [`DeliveryManager`]'s `mark_*`, which leave an `Acknowledged` or `Expired` record as
/// it is, they apply whatever the current status.
///
/// | method | `status` | also sets |
/// |---|---|---|
/// | `mark_in_transit` | `InTransit` | `attempts += 1`, `last_attempt` |
/// | `mark_delivered` | `Delivered` | `delivered_at` |
/// | `mark_acknowledged` | `Acknowledged` | `acknowledged_at` |
/// | `mark_failed(error)` | `Failed(error)` | `error_message = Some(error)` |
/// | `mark_expired` | `Expired` | nothing |
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::{AgentPid, DeliveryRecord, DeliveryStatus, MessageId};
///
/// let mut record = DeliveryRecord::new(MessageId::new(), None, AgentPid::new());
/// record.mark_in_transit();
/// record.mark_delivered();
/// record.mark_acknowledged();
/// assert_eq!(record.status, DeliveryStatus::Acknowledged);
/// assert_eq!(record.attempts, 1);
/// assert!(record.last_attempt <= record.delivered_at);
/// assert!(record.delivered_at <= record.acknowledged_at);
/// assert!(record.is_final_state());
/// ```
impl DeliveryRecord {
    /// An attempt starts: status `InTransit`, one more attempt (saturating), and
    /// `last_attempt` is now.
    pub fn mark_in_transit(&mut self) {
        self.status = DeliveryStatus::InTransit;
        self.attempts = self.attempts.saturating_add(1);
        self.last_attempt = Some(Utc::now());
    }

    /// The message reached its mailbox: status `Delivered`, and `delivered_at` is now.
    pub fn mark_delivered(&mut self) {
        self.status = DeliveryStatus::Delivered;
        self.delivered_at = Some(Utc::now());
    }

    /// The receiver acknowledged it: status `Acknowledged`, and `acknowledged_at` is now.
    pub fn mark_acknowledged(&mut self) {
        self.status = DeliveryStatus::Acknowledged;
        self.acknowledged_at = Some(Utc::now());
    }

    /// The attempt failed: status `Failed(error)`, and `error_message` keeps `error`.
    pub fn mark_failed(&mut self, error: String) {
        self.error_message = Some(error.clone());
        self.status = DeliveryStatus::Failed(error);
    }

    /// The message's time ran out: status `Expired`.
    pub fn mark_expired(&mut self) {
        self.status = DeliveryStatus::Expired;
    }
}

/// Counts of messages by delivery status: of the records a [`DeliveryManager`] keeps,
/// or, from `MessageSystem::delivery_stats` (and the system's own
/// `delivery_manager().get_stats()`), of every message the system accepted.
///
/// Each field has one meaning, read off the [`DeliveryStatus`] of a record; a system's
/// records (`delivery_manager().get_delivery_record`) carry the same statuses:
///
/// | field | a message that is… | in a system |
/// |---|---|---|
/// | `pending` | waiting for an attempt (`Pending`) | waiting on the wheel for a retry |
/// | `in_transit` | sent, its outcome not known yet (`InTransit`) | in a mailbox, waiting for its ack |
/// | `delivered` | delivered (`Delivered`) | in a mailbox, no ack asked: final |
/// | `acknowledged` | acknowledged (`Acknowledged`) | final |
/// | `failed` / `expired` | given up on (`Failed`, `Expired`) | final, each in the dead letters |
///
/// For a system the ledger adds up: `total_messages = pending + in_transit + delivered
/// + acknowledged + failed + expired + duplicates`. `RouterStats` counts the same
/// messages (see its table); `MailboxStats` counts copies, per mailbox.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Messages counted (records kept; or messages a system accepted).
    pub total_messages: u64,
    /// Waiting for an attempt.
    pub pending: u64,
    /// Sent, outcome (the ack) not known yet.
    pub in_transit: u64,
    /// Delivered (and final, in a system).
    pub delivered: u64,
    /// Acknowledged.
    pub acknowledged: u64,
    /// Given up on.
    pub failed: u64,
    /// Expired before delivery.
    pub expired: u64,
    /// Attempts, summed.
    pub total_attempts: u64,
    /// Exactly-once copies suppressed because their id was already delivered (system
    /// statistics only; 0 when read from 1.x's serialised stats, which lack the field).
    #[serde(default)]
    pub duplicates: u64,
}

impl DeliveryStats {
    /// `(delivered + acknowledged) / total_messages`: the share that reached its
    /// destination; 0.0 when there are none.
    pub fn success_rate(&self) -> f64 {
        ratio(self.delivered + self.acknowledged, self.total_messages)
    }

    /// `failed / total_messages`; 0.0 when there are none.
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failed, self.total_messages)
    }

    /// `total_attempts / total_messages`; 0.0 when there are none.
    pub fn average_attempts(&self) -> f64 {
        ratio(self.total_attempts, self.total_messages)
    }

    /// The counter of `status`.
    fn bucket(&mut self, status: &DeliveryStatus) -> &mut u64 {
        match status {
            DeliveryStatus::Pending => &mut self.pending,
            DeliveryStatus::InTransit => &mut self.in_transit,
            DeliveryStatus::Delivered => &mut self.delivered,
            DeliveryStatus::Acknowledged => &mut self.acknowledged,
            DeliveryStatus::Failed(_) => &mut self.failed,
            DeliveryStatus::Expired => &mut self.expired,
        }
    }
}

fn ratio(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

/// Tracks delivery of messages: status, attempts, retries, acks (see the module doc).
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::{
///     AgentPid, DeliveryConfig, DeliveryManager, DeliveryOptions, DeliveryStatus,
///     MessageEnvelope,
/// };
///
/// let manager = DeliveryManager::new(DeliveryConfig::default());
/// let envelope = MessageEnvelope::new(
///     AgentPid::new(),
///     "job".into(),
///     serde_json::json!({"n": 1}),
///     DeliveryOptions::default(),
/// );
/// manager.record_message(&envelope)?;
/// manager.mark_in_transit(&envelope.id)?;
/// manager.mark_failed(&envelope.id, "mailbox full".into())?;
///
/// let retry = manager.get_retry_candidates();
/// assert_eq!(retry.len(), 1);
/// assert_eq!(retry[0].attempts, 1);
/// assert_eq!(manager.calculate_retry_delay(retry[0].attempts).as_millis(), 200);
/// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
/// ```
pub struct DeliveryManager {
    /// The (validated) configuration.
    config: DeliveryConfig,
    /// The retry schedule of `config`.
    policy: RetryPolicy,
    /// Where time comes from.
    clock: Arc<dyn Clock>,
    /// `clock.now()` at construction …
    origin: Instant,
    /// … and the wall-clock time then: timestamps are `origin_utc + (now - origin)`, so
    /// a manual clock's advances show in them.
    origin_utc: DateTime<Utc>,
    /// Records and the eviction queue; a cold path, one short critical section per call.
    inner: Mutex<Inner>,
    /// Set for a system's manager (`MessageSystem::delivery_manager`): the records are
    /// the engine's own, and `inner` stays empty.
    engine: Option<Arc<Engine>>,
}

/// The records and their bookkeeping.
#[derive(Default)]
struct Inner {
    records: IdMap<Entry>,
    /// Final records in the order they became final: `(id, final_seq, when)`. Entries
    /// whose record is gone or no longer final with that `final_seq` are stale and
    /// skipped.
    finals: VecDeque<(MessageId, u64, Instant)>,
    /// Source of `Entry::inserted` and `Entry::final_seq` stamps.
    next_seq: u64,
    /// Counts by status, kept in step with `records`.
    stats: DeliveryStats,
}

/// One tracked message.
struct Entry {
    record: DeliveryRecord,
    /// The envelope to redeliver (`record_message` only).
    envelope: Option<MessageEnvelope>,
    /// Whether `Delivered` still waits for an ack.
    needs_ack: bool,
    /// Retries allowed after the first attempt (per-message override applied).
    max_retries: u32,
    /// Insertion stamp, for a stable candidate order.
    inserted: u64,
    /// When the last attempt started (clock time).
    last_attempt_at: Option<Instant>,
    /// When it was last delivered (clock time).
    delivered_at: Option<Instant>,
    /// `Some(stamp)` while final and queued in `Inner::finals` under that stamp.
    final_seq: Option<u64>,
}

/// What a `mark_*` call does to a record.
enum Mark {
    InTransit,
    Delivered,
    Acknowledged,
    Failed(String),
    Expired,
}

// ===== impl DeliveryManager =====

impl DeliveryManager {
    /// A manager on the system clock.
    ///
    /// A refused configuration does not fail here: each refused field is replaced by
    /// its [`DeliveryConfig::default()`] value (multiplier 2.0, `max_retry_delay` 30 s,
    /// `max_delivery_records` 10 000) and [`config`](Self::config) shows the values in
    /// use. Use [`try_new`](Self::try_new) to get the error instead.
    pub fn new(config: DeliveryConfig) -> Self {
        let config = sanitize(config);
        Self::with_clock(config, Arc::new(SystemClock)).expect("sanitized config is valid")
    }

    /// A manager on the system clock, refusing a bad configuration.
    ///
    /// # Errors
    ///
    /// `Configuration` when [`RetryPolicy::from_config`] refuses the retry settings or
    /// `max_delivery_records` is 0.
    pub fn try_new(config: DeliveryConfig) -> MessagingResult<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A manager reading time from `clock` (e.g. a [`ManualClock`](crate::ManualClock)).
    ///
    /// # Errors
    ///
    /// As [`try_new`](Self::try_new).
    pub fn with_clock(config: DeliveryConfig, clock: Arc<dyn Clock>) -> MessagingResult<Self> {
        let policy = RetryPolicy::from_config(&config).map_err(MessagingError::Configuration)?;
        if config.max_delivery_records == 0 {
            return Err(MessagingError::Configuration(
                "max_delivery_records must be at least 1, got 0".into(),
            ));
        }
        let origin = clock.now();
        Ok(DeliveryManager {
            config,
            policy,
            clock,
            origin,
            origin_utc: Utc::now(),
            inner: Mutex::new(Inner::default()),
            engine: None,
        })
    }

    /// The face of a system's engine (see `MessageSystem::delivery_manager`).
    pub(crate) fn of_engine(engine: Arc<Engine>) -> Self {
        let config = engine.config.delivery_config.clone();
        let clock = engine.timers().clock().clone();
        let mut manager = Self::with_clock(config, clock).expect("the engine's config is valid");
        manager.policy = engine.policy().clone();
        manager.engine = Some(engine);
        manager
    }

    /// A system's records are the engine's: only acks reach them from outside.
    fn read_only(&self) -> MessagingResult<()> {
        match self.engine {
            Some(_) => Err(MessagingError::Configuration(
                "this is a system's delivery manager: its records are driven by the system \
                 (acknowledge with mark_acknowledged); use DeliveryManager::new for records of \
                 your own"
                    .into(),
            )),
            None => Ok(()),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// The retry schedule.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Starts tracking `envelope`, keeping a copy for redelivery.
    ///
    /// Under `ExactlyOnce`, recording an id that is already tracked is a no-op (it is not
    /// counted twice): the manager's dedupe window is the record's lifetime (until it
    /// is removed, cleaned up or evicted). Under the other guarantees it starts the
    /// record afresh (status `Pending`, 0 attempts, the new envelope).
    ///
    /// # Errors
    ///
    /// `Overloaded` at `max_delivery_records` with no final record to evict.
    pub fn record_message(&self, envelope: &MessageEnvelope) -> MessagingResult<()> {
        self.read_only()?;
        let needs_ack = envelope.delivery_options.require_ack;
        let max_retries = self
            .policy
            .for_message(&envelope.delivery_options)
            .max_retries();
        self.insert(
            envelope.id.clone(),
            envelope.from.clone(),
            envelope.to.clone(),
            Some(envelope.clone()),
            needs_ack,
            max_retries,
        )
    }

    /// Like [`record_message`](Self::record_message) without keeping the envelope (so
    /// never a retry candidate). `Delivered` counts as awaiting an ack unless the
    /// guarantee is `AtMostOnce`; see [`record_with_ack`](Self::record_with_ack).
    #[cfg(test)]
    pub(crate) fn record(
        &self,
        id: MessageId,
        from: Option<AgentPid>,
        to: AgentPid,
    ) -> MessagingResult<()> {
        self.record_with_ack(id, from, to, true)
    }

    /// Like `record`, saying whether `Delivered` still awaits an ack (which decides when
    /// the record becomes evictable).
    #[cfg(test)]
    pub(crate) fn record_with_ack(
        &self,
        id: MessageId,
        from: Option<AgentPid>,
        to: AgentPid,
        require_ack: bool,
    ) -> MessagingResult<()> {
        let max_retries = self.policy.max_retries();
        self.insert(id, from, to, None, require_ack, max_retries)
    }

    fn insert(
        &self,
        id: MessageId,
        from: Option<AgentPid>,
        to: AgentPid,
        envelope: Option<MessageEnvelope>,
        require_ack: bool,
        max_retries: u32,
    ) -> MessagingResult<()> {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if let Some(old) = inner.records.get(&id) {
            if self.config.guarantee == DeliveryGuarantee::ExactlyOnce {
                return Ok(());
            }
            let old = old.record.clone();
            inner.forget(&old);
        } else if inner.records.len() >= self.config.max_delivery_records && !inner.evict_one() {
            return Err(MessagingError::Overloaded(format!(
                "max_delivery_records ({}) reached and every record is still in flight",
                self.config.max_delivery_records
            )));
        }
        let record = DeliveryRecord::at(id.clone(), from, to, self.utc(now));
        inner.stats.total_messages += 1;
        *inner.stats.bucket(&record.status) += 1;
        let inserted = inner.stamp();
        let entry = Entry {
            record,
            envelope,
            needs_ack: require_ack && self.config.guarantee != DeliveryGuarantee::AtMostOnce,
            max_retries,
            inserted,
            last_attempt_at: None,
            delivered_at: None,
            final_seq: None,
        };
        inner.records.insert(id, entry);
        Ok(())
    }

    /// Counts an attempt: `attempts += 1`, `last_attempt = now`, status `InTransit`.
    ///
    /// # Errors
    ///
    /// `UnknownMessage` if `id` is not tracked.
    pub fn mark_in_transit(&self, id: &MessageId) -> MessagingResult<()> {
        self.read_only()?;
        self.mark(id, Mark::InTransit)
    }

    /// Status `Delivered`, `delivered_at = now` (under `AtMostOnce`, also acknowledged).
    ///
    /// # Errors
    ///
    /// `UnknownMessage` if `id` is not tracked.
    pub fn mark_delivered(&self, id: &MessageId) -> MessagingResult<()> {
        self.read_only()?;
        self.mark(id, Mark::Delivered)
    }

    /// Status `Acknowledged`, `acknowledged_at = now` (terminal).
    ///
    /// # Errors
    ///
    /// `UnknownMessage` if `id` is not tracked.
    pub fn mark_acknowledged(&self, id: &MessageId) -> MessagingResult<()> {
        if let Some(engine) = &self.engine {
            return engine.acknowledge(id);
        }
        self.mark(id, Mark::Acknowledged)
    }

    /// Status `Failed(error)`, `error_message = error`.
    ///
    /// # Errors
    ///
    /// `UnknownMessage` if `id` is not tracked.
    pub fn mark_failed(&self, id: &MessageId, error: String) -> MessagingResult<()> {
        self.read_only()?;
        self.mark(id, Mark::Failed(error))
    }

    /// Status `Expired` (terminal).
    ///
    /// # Errors
    ///
    /// `UnknownMessage` if `id` is not tracked.
    pub fn mark_expired(&self, id: &MessageId) -> MessagingResult<()> {
        self.read_only()?;
        self.mark(id, Mark::Expired)
    }

    fn mark(&self, id: &MessageId, mark: Mark) -> MessagingResult<()> {
        let now = self.clock.now();
        let utc = self.utc(now);
        let at_most_once = self.config.guarantee == DeliveryGuarantee::AtMostOnce;
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let entry = inner
            .records
            .get_mut(id)
            .ok_or_else(|| MessagingError::UnknownMessage(id.clone()))?;
        let record = &mut entry.record;
        if matches!(
            record.status,
            DeliveryStatus::Acknowledged | DeliveryStatus::Expired
        ) {
            return Ok(());
        }
        let old_status = record.status.clone();
        match mark {
            Mark::InTransit => {
                record.status = DeliveryStatus::InTransit;
                let before = record.attempts;
                record.attempts = before.saturating_add(1);
                record.last_attempt = Some(utc);
                entry.last_attempt_at = Some(now);
                inner.stats.total_attempts += u64::from(record.attempts - before);
            }
            Mark::Delivered => {
                record.status = DeliveryStatus::Delivered;
                record.delivered_at = Some(utc);
                entry.delivered_at = Some(now);
                if at_most_once {
                    record.status = DeliveryStatus::Acknowledged;
                    record.acknowledged_at = Some(utc);
                }
            }
            Mark::Acknowledged => {
                record.status = DeliveryStatus::Acknowledged;
                record.acknowledged_at = Some(utc);
            }
            Mark::Failed(error) => {
                record.status = DeliveryStatus::Failed(error.clone());
                record.error_message = Some(error);
            }
            Mark::Expired => record.status = DeliveryStatus::Expired,
        }
        *inner.stats.bucket(&old_status) -= 1;
        *inner.stats.bucket(&record.status) += 1;
        let is_final = self.is_final(entry);
        match (is_final, entry.final_seq) {
            (true, None) => {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                entry.final_seq = Some(seq);
                inner.finals.push_back((id.clone(), seq, now));
                inner.compact();
            }
            (false, Some(_)) => entry.final_seq = None,
            _ => {}
        }
        Ok(())
    }

    /// Whether nothing more can happen to `entry` through the manager (evictable).
    fn is_final(&self, entry: &Entry) -> bool {
        match entry.record.status {
            DeliveryStatus::Acknowledged | DeliveryStatus::Expired => true,
            DeliveryStatus::Failed(_) => !self.retryable(entry),
            DeliveryStatus::Delivered => !entry.needs_ack,
            DeliveryStatus::Pending | DeliveryStatus::InTransit => false,
        }
    }

    /// Whether `entry` may be redelivered by a caller of `get_retry_candidates`.
    fn retryable(&self, entry: &Entry) -> bool {
        entry.envelope.is_some()
            && self.config.guarantee != DeliveryGuarantee::AtMostOnce
            && entry.record.attempts <= entry.max_retries
    }

    /// The envelopes to redeliver now (see the module doc), oldest record first, each
    /// with `attempts` set to the record's attempts.
    pub fn get_retry_candidates(&self) -> Vec<MessageEnvelope> {
        if let Some(engine) = &self.engine {
            return engine.tracker.retry_candidates();
        }
        let now = self.clock.now();
        let timeout = self.config.acknowledgment_timeout.max(TICK);
        let timed_out = |since: Option<Instant>| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= timeout)
        };
        let inner = lock(&self.inner);
        let mut due: Vec<(u64, MessageEnvelope)> = inner
            .records
            .values()
            .filter(|entry| {
                self.retryable(entry)
                    && match entry.record.status {
                        DeliveryStatus::Failed(_) => true,
                        DeliveryStatus::InTransit => timed_out(entry.last_attempt_at),
                        DeliveryStatus::Delivered => {
                            entry.needs_ack && timed_out(entry.delivered_at)
                        }
                        _ => false,
                    }
            })
            .filter_map(|entry| {
                let mut envelope = entry.envelope.clone()?;
                envelope.attempts = entry.record.attempts;
                Some((entry.inserted, envelope))
            })
            .collect();
        drop(inner);
        due.sort_unstable_by_key(|(inserted, _)| *inserted);
        due.into_iter().map(|(_, envelope)| envelope).collect()
    }

    /// The delay before the retry after `attempts` attempts: `policy().delay(attempts)`.
    pub fn calculate_retry_delay(&self, attempts: u32) -> Duration {
        self.policy.delay(attempts)
    }

    /// Counts of the records kept, by status.
    pub fn get_stats(&self) -> DeliveryStats {
        if let Some(engine) = &self.engine {
            return engine.delivery_stats();
        }
        lock(&self.inner).stats.clone()
    }

    /// A copy of `id`'s record.
    pub fn get_delivery_record(&self, id: &MessageId) -> Option<DeliveryRecord> {
        if let Some(engine) = &self.engine {
            let utc = |tick| self.utc(engine.timers().instant_of(tick));
            return engine.tracker.record(id, utc);
        }
        lock(&self.inner).records.get(id).map(|e| e.record.clone())
    }

    /// Stops tracking `id`, returning its record.
    pub fn remove(&self, id: &MessageId) -> Option<DeliveryRecord> {
        self.read_only().ok()?;
        let mut inner = lock(&self.inner);
        let entry = inner.records.remove(id)?;
        inner.forget(&entry.record);
        Some(entry.record)
    }

    /// Drops the final records that became final at least `cleanup_interval` ago (by
    /// the clock); returns how many.
    pub fn cleanup(&self) -> usize {
        if self.read_only().is_err() {
            return 0;
        }
        let now = self.clock.now();
        let keep = self.config.cleanup_interval;
        let mut inner = lock(&self.inner);
        let mut removed = 0;
        while let Some(when) = inner.oldest_final() {
            if now.saturating_duration_since(when) < keep || !inner.evict_one() {
                break;
            }
            removed += 1;
        }
        removed
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        if let Some(engine) = &self.engine {
            return engine.tracker.len();
        }
        lock(&self.inner).records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wall-clock time of clock instant `at`.
    fn utc(&self, at: Instant) -> DateTime<Utc> {
        TimeDelta::from_std(at.saturating_duration_since(self.origin))
            .ok()
            .and_then(|since| self.origin_utc.checked_add_signed(since))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// `config` with each refused field replaced by its default.
fn sanitize(mut config: DeliveryConfig) -> DeliveryConfig {
    let defaults = DeliveryConfig::default();
    let m = config.retry_backoff_multiplier;
    if !m.is_finite() || m < 1.0 {
        config.retry_backoff_multiplier = defaults.retry_backoff_multiplier;
    }
    if config.max_retry_delay.is_zero() {
        config.max_retry_delay = defaults.max_retry_delay;
    }
    if config.max_delivery_records == 0 {
        config.max_delivery_records = defaults.max_delivery_records;
    }
    config
}

// ===== impl Inner =====

impl Inner {
    fn stamp(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Takes a removed (or replaced) record out of the counts.
    fn forget(&mut self, record: &DeliveryRecord) {
        self.stats.total_messages -= 1;
        *self.stats.bucket(&record.status) -= 1;
        self.stats.total_attempts -= u64::from(record.attempts);
    }

    /// Drops stale entries from the front of `finals`; returns when the record that
    /// became final longest ago did so.
    fn oldest_final(&mut self) -> Option<Instant> {
        while let Some((id, seq, when)) = self.finals.front() {
            if self
                .records
                .get(id)
                .is_some_and(|e| e.final_seq == Some(*seq))
            {
                return Some(*when);
            }
            self.finals.pop_front();
        }
        None
    }

    /// Removes the record that became final longest ago; false if none is final.
    fn evict_one(&mut self) -> bool {
        if self.oldest_final().is_none() {
            return false;
        }
        let (id, _, _) = self.finals.pop_front().expect("a live front");
        let entry = self.records.remove(&id).expect("live entries are recorded");
        self.forget(&entry.record);
        true
    }

    /// Drops stale queue entries once they outnumber the records (amortised O(1)).
    fn compact(&mut self) {
        if self.finals.len() > 2 * self.records.len() + 64 {
            let records = &self.records;
            self.finals
                .retain(|(id, seq, _)| records.get(id).is_some_and(|e| e.final_seq == Some(*seq)));
        }
    }
}

impl fmt::Debug for DeliveryManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryManager")
            .field("config", &self.config)
            .field("records", &self.len())
            .field("clock", &self.clock)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::timer::ManualClock;

    fn manager(max: usize) -> (DeliveryManager, ManualClock) {
        let clock = ManualClock::new();
        let config = DeliveryConfig {
            max_delivery_records: max,
            ..DeliveryConfig::default()
        };
        (
            DeliveryManager::with_clock(config, Arc::new(clock.clone())).unwrap(),
            clock,
        )
    }

    /// The incremental stats equal a recount.
    fn check_stats(m: &DeliveryManager) {
        let inner = lock(&m.inner);
        let mut recount = DeliveryStats::default();
        for e in inner.records.values() {
            recount.total_messages += 1;
            *recount.bucket(&e.record.status) += 1;
            recount.total_attempts += u64::from(e.record.attempts);
        }
        assert_eq!(recount, inner.stats);
    }

    #[test]
    fn stats_stay_exact() {
        let (m, _clock) = manager(4);
        let ids: Vec<MessageId> = (0..40).map(|_| MessageId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            let _ = m.record(id.clone(), None, AgentPid::new());
            let _ = m.mark_in_transit(id);
            match i % 4 {
                0 => m.mark_acknowledged(id).unwrap_or(()),
                1 => m.mark_failed(id, "x".into()).unwrap_or(()),
                2 => m.mark_expired(id).unwrap_or(()),
                _ => {
                    m.remove(&ids[i - 1]);
                }
            }
            check_stats(&m);
        }
        assert!(m.len() <= 4);
    }

    #[test]
    fn stale_final_entries_are_compacted() {
        let (m, _clock) = manager(8);
        let id = MessageId::new();
        m.record(id.clone(), None, AgentPid::new()).unwrap();
        for _ in 0..1000 {
            m.mark_failed(&id, "x".into()).unwrap(); // final (no envelope)
            m.mark_in_transit(&id).unwrap(); // not final
        }
        assert!(lock(&m.inner).finals.len() <= 2 + 64, "bounded queue");
        check_stats(&m);
    }

    #[test]
    fn sanitizes_or_refuses() {
        let bad = DeliveryConfig {
            retry_backoff_multiplier: f64::NAN,
            max_retry_delay: Duration::ZERO,
            max_delivery_records: 0,
            ..DeliveryConfig::default()
        };
        assert!(matches!(
            DeliveryManager::try_new(bad.clone()),
            Err(MessagingError::Configuration(_))
        ));
        let m = DeliveryManager::new(bad);
        assert_eq!(m.config().retry_backoff_multiplier, 2.0);
        assert_eq!(m.config().max_retry_delay, Duration::from_secs(30));
        assert_eq!(m.config().max_delivery_records, 10_000);
        let zero_records = DeliveryConfig {
            max_delivery_records: 0,
            ..DeliveryConfig::default()
        };
        let err = DeliveryManager::try_new(zero_records).unwrap_err();
        assert!(err.to_string().contains("max_delivery_records"), "{err}");
    }

    #[test]
    fn timestamps_follow_the_clock() {
        let (m, clock) = manager(8);
        let id = MessageId::new();
        m.record(id.clone(), None, AgentPid::new()).unwrap();
        clock.advance(Duration::from_secs(60));
        m.mark_in_transit(&id).unwrap();
        let r = m.get_delivery_record(&id).unwrap();
        assert_eq!(
            (r.last_attempt.unwrap() - r.created_at).to_std().unwrap(),
            Duration::from_secs(60)
        );
        clock.advance(Duration::MAX);
        m.mark_delivered(&id).unwrap(); // saturates, no panic
        assert!(m.get_delivery_record(&id).unwrap().delivered_at.is_some());
    }
}
