//! Delivery guarantees: at-most-once, at-least-once, exactly-once.
//!
//! | guarantee | mailbox full / breaker open | destination unknown | `require_ack`, no ack in time | same id twice |
//! |---|---|---|---|---|
//! | `AtMostOnce` | `Err` at once, not retried | `Err(AgentNotFound)` | not redelivered | delivered twice |
//! | `AtLeastOnce` | `Ok`, retried with backoff, then dead letter | `Err(AgentNotFound)` | redelivered up to `max_retries`, then dead letter | delivered twice |
//! | `ExactlyOnce` | as `AtLeastOnce` | `Err(AgentNotFound)` | as `AtLeastOnce`, never seen twice | delivered once within the window |

pub(crate) mod call_timers;
pub(crate) mod dedup;
pub(crate) mod engine;
pub(crate) mod manager;
mod meters;
mod redelivery;
pub(crate) mod retry;
pub(crate) mod shards;
pub(crate) mod tracker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::manager::{DeliveryManager, DeliveryRecord, DeliveryStats, DeliveryStatus};
pub use self::retry::RetryPolicy;
pub use self::tracker::TimerRef;

/// Delivery guarantee levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum DeliveryGuarantee {
    /// Fire and forget: one attempt, failures are reported, never retried.
    AtMostOnce,
    /// Retry until delivered (and acknowledged, when asked).
    #[default]
    AtLeastOnce,
    /// As at-least-once, plus deduplication by message id.
    ExactlyOnce,
}

/// How the system delivers, retries and deduplicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// The guarantee.
    pub guarantee: DeliveryGuarantee,
    /// Redelivery attempts after the first.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub retry_delay: Duration,
    /// Each retry waits this much longer than the previous (≥ 1, finite).
    pub retry_backoff_multiplier: f64,
    /// Cap on any one retry delay.
    pub max_retry_delay: Duration,
    /// How long a `require_ack` message waits for its ack before redelivery.
    pub acknowledgment_timeout: Duration,
    /// How long finished delivery records are kept, and the exactly-once dedupe window.
    pub cleanup_interval: Duration,
    /// Upper bound on delivery records kept at once.
    pub max_delivery_records: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            guarantee: DeliveryGuarantee::AtLeastOnce,
            max_retries: 3,
            retry_delay: Duration::from_millis(100),
            retry_backoff_multiplier: 2.0,
            max_retry_delay: Duration::from_secs(30),
            acknowledgment_timeout: Duration::from_secs(30),
            cleanup_interval: Duration::from_secs(300),
            max_delivery_records: 10_000,
        }
    }
}

/// Router configuration: the seed's four fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Delivery guarantees, retries and acknowledgements.
    pub delivery_config: DeliveryConfig,
    /// The timer driver's heartbeat: retries and timeouts fire at their own deadlines
    /// (there is no polling), and housekeeping such as expiring the exactly-once
    /// window runs at least this often. Must be non-zero.
    pub retry_interval: Duration,
    /// Upper bound on messages in flight at once (waiting for a retry or an ack);
    /// past it, a message that would need tracking is dead-lettered with `Overloaded`.
    pub max_concurrent_deliveries: usize,
    /// Whether the router keeps its counters (`RouterStats`, `DeliveryStats`); off, they
    /// stay zero and a send touches no counter at all.
    pub enable_metrics: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            delivery_config: DeliveryConfig::default(),
            retry_interval: Duration::from_secs(5),
            max_concurrent_deliveries: 100,
            enable_metrics: true,
        }
    }
}

/// Halves what a collection holds once it is under a quarter full (and past a small
/// floor, so a quiet window does not reallocate at every expiry).
pub(crate) fn shrink<C>(
    c: &mut C,
    size: impl Fn(&C) -> (usize, usize),
    to: impl Fn(&mut C, usize),
) {
    const FLOOR: usize = 64;
    let (len, capacity) = size(c);
    if capacity > FLOOR && len < capacity / 4 {
        to(c, (len * 2).max(FLOOR));
    }
}
