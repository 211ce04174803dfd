//! [`DeliveryManager`]: the seed's async delivery-tracking API over the sync one.
//!
//! Every async method completes in its first poll (the core holds its lock for one
//! short critical section and never waits), so all of them are cancel safe: a future
//! dropped unpolled changes nothing, a polled one has done its work.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::delivery::{DeliveryConfig, DeliveryRecord, DeliveryStats, RetryPolicy};
use crate::error::MessagingResult;
use crate::message::{MessageEnvelope, MessageId};
use crate::timer::Clock;

/// Tracks delivery of messages: status, attempts, retries, acks (the async twin of
/// [`crate::DeliveryManager`]; see there for the lifecycle and the record bound).
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::tokio::{
///     AgentPid, DeliveryConfig, DeliveryManager, DeliveryOptions, MessageEnvelope,
/// };
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = DeliveryManager::new(DeliveryConfig::default());
/// let envelope = MessageEnvelope::new(AgentPid::new(), "job".into(),
///     serde_json::json!({"n": 1}), DeliveryOptions::default());
/// manager.record_message(&envelope).await?;
/// manager.mark_in_transit(&envelope.id).await?;
/// manager.mark_failed(&envelope.id, "mailbox full".into()).await?;
///
/// let retry = manager.get_retry_candidates().await;
/// assert_eq!(retry.len(), 1);
/// assert_eq!(manager.calculate_retry_delay(retry[0].attempts).as_millis(), 200);
/// # Ok(())
/// # }
/// ```
pub struct DeliveryManager {
    inner: crate::DeliveryManager,
}

impl DeliveryManager {
    /// A manager on the system clock; refused fields fall back to their defaults (see
    /// [`crate::DeliveryManager::new`]).
    pub fn new(config: DeliveryConfig) -> Self {
        crate::DeliveryManager::new(config).into()
    }

    /// A manager on the system clock, refusing a bad configuration.
    pub fn try_new(config: DeliveryConfig) -> MessagingResult<Self> {
        crate::DeliveryManager::try_new(config).map(Into::into)
    }

    /// A manager reading time from `clock` (e.g. a `ManualClock`).
    pub fn with_clock(config: DeliveryConfig, clock: Arc<dyn Clock>) -> MessagingResult<Self> {
        crate::DeliveryManager::with_clock(config, clock).map(Into::into)
    }

    /// The sync manager underneath.
    pub fn as_sync(&self) -> &crate::DeliveryManager {
        &self.inner
    }

    /// The configuration in use.
    pub fn config(&self) -> &DeliveryConfig {
        self.inner.config()
    }

    /// The retry schedule.
    pub fn policy(&self) -> &RetryPolicy {
        self.inner.policy()
    }

    /// Starts tracking `envelope`, keeping a copy for redelivery.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn record_message(&self, envelope: &MessageEnvelope) -> MessagingResult<()> {
        self.inner.record_message(envelope)
    }

    /// An attempt starts (`attempts += 1`).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn mark_in_transit(&self, message_id: &MessageId) -> MessagingResult<()> {
        self.inner.mark_in_transit(message_id)
    }

    /// The message reached its mailbox.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn mark_delivered(&self, message_id: &MessageId) -> MessagingResult<()> {
        self.inner.mark_delivered(message_id)
    }

    /// The receiver acknowledged the message.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn mark_acknowledged(&self, message_id: &MessageId) -> MessagingResult<()> {
        self.inner.mark_acknowledged(message_id)
    }

    /// The last attempt failed with `error`.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn mark_failed(&self, message_id: &MessageId, error: String) -> MessagingResult<()> {
        self.inner.mark_failed(message_id, error)
    }

    /// The message expired before delivery.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn mark_expired(&self, message_id: &MessageId) -> MessagingResult<()> {
        self.inner.mark_expired(message_id)
    }

    /// The envelopes to redeliver now, oldest first, each with `attempts` set.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_retry_candidates(&self) -> Vec<MessageEnvelope> {
        self.inner.get_retry_candidates()
    }

    /// The delay before the retry after `attempts` attempts (exponential backoff,
    /// capped).
    pub fn calculate_retry_delay(&self, attempts: u32) -> Duration {
        self.inner.calculate_retry_delay(attempts)
    }

    /// Counts of the records kept, by status.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_stats(&self) -> DeliveryStats {
        self.inner.get_stats()
    }

    /// A copy of `message_id`'s record.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_delivery_record(&self, message_id: &MessageId) -> Option<DeliveryRecord> {
        self.inner.get_delivery_record(message_id)
    }

    /// Stops tracking `message_id`, returning its record.
    pub fn remove(&self, message_id: &MessageId) -> Option<DeliveryRecord> {
        self.inner.remove(message_id)
    }

    /// Drops the final records older than `cleanup_interval`; returns how many.
    pub fn cleanup(&self) -> usize {
        self.inner.cleanup()
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

impl From<crate::DeliveryManager> for DeliveryManager {
    fn from(inner: crate::DeliveryManager) -> Self {
        DeliveryManager { inner }
    }
}

impl fmt::Debug for DeliveryManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}
