//! Routing: from a destination pid to a mailbox, and nothing more.
//!
//! The delivery engine (`crate::delivery`) decides *whether and when* a message is
//! attempted; a router decides *where* one attempt goes. They meet at one narrow
//! interface, [`Destination`]: push a message to a pid and learn whether it was
//! accepted, refused for now (full, breaker open, empty group), or gone (closed, no
//! such pid). Two kinds implement it:
//!
//! 1. `default`: `LocalRoutes`, the system's own mailbox table: lookup → group pick
//!    → breaker admission → push.
//! 2. `custom`: `CustomRoutes`, a user's [`MessageRouter`] behind the same
//!    interface, with the same breakers.
//! 3. `cluster` (cargo feature `nats`): `ClusterRoutes`, the local table first, then a
//!    remote destination (the NATS transport) for pids that live on other nodes.
//!
//! Here: the [`MessageRouter`] trait (the seam for custom routing), the interface,
//! and the router counters.
//!
//! # Invariants
//!
//! - A push hands the message back whenever it did not deliver it (`Refused`,
//!   `Closed`, `NotFound`; `Failed` when a custom router gave it back), so the engine
//!   can retry or dead-letter it.

#[cfg(feature = "nats")]
pub(crate) mod cluster;
pub(crate) mod custom;
pub(crate) mod default;

use serde::{Deserialize, Serialize};

use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::MailboxSender;
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority, Outgoing};

/// Router counters (zero when `enable_metrics` is off), per message like
/// `DeliveryStats` (the same message is never counted twice in one field):
///
/// | field | in `DeliveryStats` terms |
/// |---|---|
/// | `messages_routed` | `total_messages` |
/// | `messages_delivered` | `delivered + acknowledged`: delivered, and final |
/// | `messages_failed` | `failed + expired`: given up on, each in the dead letters |
/// | `messages_pending` | `pending + in_transit`: not yet final (waiting for a retry or an ack) |
///
/// so that `messages_routed = messages_delivered + messages_failed + messages_pending`
/// plus the exactly-once duplicates suppressed.
/// | `retry_attempts` | `total_attempts - (total_messages - duplicates)`: attempts after the first |
///
/// With a custom router, `MessageSystem::get_stats` reports the router's own
/// `get_stats()` instead (the engine's ledger is in `delivery_stats()`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStats {
    /// Messages accepted for routing.
    pub messages_routed: u64,
    /// Messages delivered and final: no ack asked, or acknowledged (each counted once,
    /// however many copies).
    pub messages_delivered: u64,
    /// Messages given up on (dead-lettered).
    pub messages_failed: u64,
    /// Registered destinations (agents and groups).
    pub active_routes: usize,
    /// Redelivery attempts.
    pub retry_attempts: u64,
    /// Messages not yet final: waiting for a retry or for their acknowledgement.
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

/// Why a push was refused for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MailboxFull,
    CircuitOpen,
    EmptyGroup,
}

impl Refusal {
    /// The refusal in words (an event's `reason`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MailboxFull => "mailbox full",
            Refusal::CircuitOpen => "circuit open",
            Refusal::EmptyGroup => "empty group",
        }
    }
}

/// What one push did. Every outcome but `Done` hands the message back.
pub(crate) enum Push {
    /// Accepted by a mailbox (or by a custom router).
    Done,
    /// Taken by a cluster transport, which carries it to another node and settles its
    /// acknowledgement there: for the sending engine, done, with no ack to wait for.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Transported,
    /// Refused for now; the breaker's earliest retry tick, or 0.
    Refused(Outgoing, Refusal, u64),
    /// The destination's mailbox is closed.
    Closed(Outgoing),
    /// No such destination.
    NotFound(Outgoing),
    /// A custom router failed otherwise; the message, if it handed it back.
    Failed(Option<Outgoing>, MessagingError),
    /// A broadcast group: the engine sends a copy to each of these members.
    Fanout(Outgoing, Vec<AgentPid>),
    /// A group picked a member on another cluster node: route it there by pid (the
    /// cluster routes do; nothing else has remote members).
    Forward(Outgoing, AgentPid),
}

impl Push {
    /// The message handed back, if any.
    pub(crate) fn message(&self) -> Option<&Outgoing> {
        match self {
            Push::Done | Push::Transported | Push::Failed(None, _) => None,
            Push::Refused(out, ..) | Push::Closed(out) | Push::NotFound(out) => Some(out),
            Push::Failed(Some(out), _) | Push::Fanout(out, _) | Push::Forward(out, _) => Some(out),
        }
    }

    /// Why the push did not deliver, in words (an event's `reason`; empty for `Done`
    /// and `Fanout`).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Push::Done | Push::Transported => "",
            Push::Refused(_, refusal, _) => refusal.as_str(),
            Push::Closed(_) => "mailbox closed",
            Push::NotFound(_) => "agent not found",
            Push::Failed(..) => "router error",
            Push::Fanout(..) => "",
            Push::Forward(..) => "member on another node",
        }
    }

    /// Applies `f` to the message handed back, if any.
    #[inline]
    pub(crate) fn map_back(self, f: impl FnOnce(Outgoing) -> Outgoing) -> Push {
        match self {
            Push::Done => Push::Done,
            Push::Transported => Push::Transported,
            Push::Refused(out, refusal, retry_at) => Push::Refused(f(out), refusal, retry_at),
            Push::Closed(out) => Push::Closed(f(out)),
            Push::NotFound(out) => Push::NotFound(f(out)),
            Push::Failed(out, e) => Push::Failed(out.map(f), e),
            Push::Fanout(out, members) => Push::Fanout(f(out), members),
            Push::Forward(out, member) => Push::Forward(f(out), member),
        }
    }
}

/// Where the delivery engine sends one attempt (see the module doc).
pub(crate) trait Destination: Send + Sync {
    /// Pushes `out` to `to` at `priority`.
    fn push(&self, to: &AgentPid, out: Outgoing, priority: MessagePriority) -> Push;

    /// Whether this destination takes `out` for `to` ahead of the local table (a
    /// durable cluster node stores its own agents' messages before they reach a
    /// mailbox). No by default.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    fn claims(&self, _to: &AgentPid, _out: &Outgoing) -> bool {
        false
    }
}

/// The destinations of one system: its own table, or a custom router (or, on a
/// cluster node, its own table and then the other nodes).
pub(crate) enum Routes {
    Local(default::LocalRoutes),
    Custom(custom::CustomRoutes),
    #[cfg(feature = "nats")]
    Cluster(cluster::ClusterRoutes),
}

impl Destination for Routes {
    #[inline]
    fn push(&self, to: &AgentPid, out: Outgoing, priority: MessagePriority) -> Push {
        match self {
            Routes::Local(local) => local.push(to, out, priority),
            Routes::Custom(custom) => custom.push(to, out, priority),
            #[cfg(feature = "nats")]
            Routes::Cluster(cluster) => cluster.push(to, out, priority),
        }
    }
}

impl Routes {
    /// Forgets what the routes keep about `pid` (it was unregistered).
    pub(crate) fn forget(&self, pid: &AgentPid) {
        if let Routes::Custom(custom) = self {
            custom.forget(pid);
        }
    }

    /// Whether `pid` is a destination now: `None` when a custom router routes (it
    /// alone knows) or when it may live on another node of a cluster.
    pub(crate) fn knows(&self, pid: &AgentPid) -> Option<bool> {
        match self {
            Routes::Local(local) => Some(local.knows(pid)),
            Routes::Custom(_) => None,
            #[cfg(feature = "nats")]
            Routes::Cluster(cluster) => cluster.local.knows(pid).then_some(true),
        }
    }

    /// Times a destination's breaker opened.
    pub(crate) fn breaker_trips(&self) -> u64 {
        match self {
            Routes::Local(local) => local.breaker_trips.get(),
            Routes::Custom(custom) => custom.breaker_trips.get(),
            #[cfg(feature = "nats")]
            Routes::Cluster(cluster) => cluster.local.breaker_trips.get(),
        }
    }
}
