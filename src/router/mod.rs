//! Routing: from an envelope's destination pid to a mailbox lane.
//!
//! 1. [`MessageRouter`] (here): the seam for custom routing, and the configuration.
//! 2. `default`: [`DefaultMessageRouter`], lookup → breaker → balance → push, and what
//!    each delivery guarantee does with a refused push.
//! 3. `group`: groups addressed like agents, and their [`LoadBalance`] strategies.
//! 4. `breaker`: the per-destination circuit breaker.

pub(crate) mod breaker;
pub(crate) mod default;
pub(crate) mod group;

use std::time::Duration;

pub use self::breaker::{BreakerState, CircuitBreakerConfig};
pub use self::default::DefaultMessageRouter;
pub use self::group::LoadBalance;
use crate::delivery::DeliveryConfig;
use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::MailboxSender;
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority};

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

/// Router counters (zero when `enable_metrics` is off).
///
/// `messages_delivered` counts pushes into mailboxes, redeliveries included;
/// `messages_failed` counts messages given up on (each is in the dead letters). For the
/// ledger that adds up per message, see `DeliveryStats`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouterStats {
    /// Messages accepted for routing.
    pub messages_routed: u64,
    /// Pushes into mailboxes (redeliveries included).
    pub messages_delivered: u64,
    /// Messages given up on (dead-lettered).
    pub messages_failed: u64,
    /// Registered destinations (agents and groups).
    pub active_routes: usize,
    /// Redelivery attempts.
    pub retry_attempts: u64,
    /// Messages still waiting for a retry or an acknowledgement.
    pub messages_pending: u64,
    /// Times a destination's circuit breaker opened.
    pub circuit_trips: u64,
}

/// How messages find their destination.
///
/// Implement it to customise routing and run a `MessageSystem` on it with
/// `MessageSystem::builder(..).router(..)`.
pub trait MessageRouter: Send + Sync {
    /// Routes `envelope` to its destination.
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()>;

    /// Makes `agent_id` reachable through `sender`.
    fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()>;

    /// Makes `agent_id` unreachable.
    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()>;

    /// The router's counters.
    fn get_stats(&self) -> RouterStats;

    /// Stops routing.
    fn shutdown(&self) -> MessagingResult<()>;

    /// Routes an already-built message (`MessageSystem::send`). Routers that only
    /// handle envelopes keep this default, which refuses with a clear error.
    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        let _ = (message, priority);
        Err(envelopes_only(to))
    }
}

/// What the default `route` of a router that handles only envelopes answers (the sync
/// and async `MessageRouter` traits alike).
pub(crate) fn envelopes_only(to: &AgentPid) -> MessagingError {
    MessagingError::DeliveryFailed(to.clone(), "this router only routes envelopes".into())
}
