//! Cluster nodes on NATS JetStream (cargo feature `nats`): agents on other processes
//! and machines, reached by pid with the same calls.
//!
//! 1. `config`: [`ClusterConfig`], the server, the node's name, auth, TLS, names.
//! 2. `runtime`: where the client runs (a thread of the node's own, or the caller's
//!    tokio runtime).
//! 3. `registry`: the pid → node registry (a JetStream KV bucket) and its mirror.
//! 4. `wire`: the versioned JSON frame a message crosses in.
//! 5. `outbound`: the node as a [`Destination`] for pids of other nodes, and the
//!    publisher task (pipelined publish acks, retries, dead letters); `receipts`:
//!    senders to a durable node waiting until the stream stored their message.
//! 6. `inbound`: what arrives for this node, pushed into its own table; `acks`: the
//!    stream messages waiting for their agent's `acknowledge` (`require_ack`).
//! 7. `connect`: connecting and setting up, within the connect timeout.
//! 8. `node`: [`Node`], a running node: its loops, registration, leaving.
//! 9. `meters` (cargo feature `metrics`): the counters below as metrics, per node.
//! 10. here: what the node's tasks share, and its counters.
//!
//! A message to a pid that this node's table does not know goes to the node that owns
//! it (`router::cluster` asks the table first):
//!
//! | guarantee | sender publishes | receiving node |
//! |---|---|---|
//! | `AtMostOnce` | core NATS on `{prefix}.direct.{node}`; `Ok` once queued for the socket, nothing more learnt | pushes into the mailbox; full, closed or unknown: dead letter there |
//! | `AtLeastOnce` | JetStream stream `{prefix}_msgs` on `{prefix}.node.{node}`, `Nats-Msg-Id` = the message id; acks awaited pipelined; a publish not acknowledged is retried with the message's back-off, then dead-lettered on the sender | a durable pull consumer per node; acked once the mailbox accepted it; refused: NAK with the back-off delay, and after `max_retries` redeliveries a dead letter there |
//! | a call (any guarantee) | a core request to `{prefix}.call.{node}` with the call's timeout; the JSON reply comes back to the caller | pushes the call into the mailbox and answers with the callee's reply (a `serde_json::Value`); refused, unknown, or a reply that cannot cross: an error answer, a dead letter there, and the caller fails at once (`DeliveryFailed`) |
//! | `ExactlyOnce` | as `AtLeastOnce`: the stream drops a republished id within its duplicate window (2 min) | as `AtLeastOnce`, and the id is reserved in the node's own exactly-once window (the engine's, under the id's arrival key) before the push and committed once a mailbox took it: a redelivered copy (its ack lost) is acked and counted, not delivered again |
//! | `require_ack` (at least once) | as its guarantee; once queued, its engine no longer waits for the ack (taken where the agent lives) | acked to JetStream only once the agent calls `acknowledge` here (`acks`); redelivered after the acknowledgement timeout |
//!
//! A *durable* node (`enable_persistence`) also takes its own agents' stream-carried
//! messages through the stream (`claims`), and a send to any durable node's pid (or
//! to a group here that picks one) waits for the publish ack (`receipts`); its pids
//! resolve while it is down, for the stream only (`registry`).
//!
//! # Invariants
//!
//! - Nothing handed to the transport vanishes without a trace: it is in a mailbox,
//!   in a dead letter (on the sending or the receiving node, with the reason), or
//!   still in the stream (at-least-once, until a node consumes it).
//! - The push never blocks and never awaits: it resolves the pid in the mirror,
//!   encodes, and queues for the publisher task (full queue: `Refused`, so the engine
//!   retries or reports it as for a full mailbox). Only a send to a durable node waits,
//!   after the push, on its receipt.

mod acks;
mod config;
mod connect;
mod inbound;
#[cfg(feature = "metrics")]
mod meters;
mod node;
mod outbound;
mod receipts;
mod registry;
mod runtime;
mod wire;

use std::sync::OnceLock;

pub use self::config::ClusterConfig;
pub(crate) use self::connect::{connect, Link};
pub(crate) use self::node::{stored, Node};
pub(crate) use self::receipts::Waiting;
use self::registry::Registry;
pub(crate) use self::runtime::ClientRuntime;
use crate::dead_letter::DeadLetters;
use crate::delivery::engine::Engine;
use crate::delivery::RetryPolicy;
use crate::router::default::LocalRoutes;
use crate::stats::Counter;

/// What a cluster node has done so far (`MessageSystem::cluster_stats`).
///
/// On the sending side `published + publish_failed + queued` is what was handed to the
/// transport; on the receiving side every frame `received` (redeliveries included) was
/// `delivered`, put back for a redelivery (`redelivery_requests`), or `dead_lettered`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// This node's name.
    pub node: String,
    /// Whether its connection to the server is up now (it reconnects by itself).
    pub connected: bool,
    /// Messages the server took: at-most-once written to the connection, at-least-once
    /// acknowledged by the stream.
    pub published: u64,
    /// Publishes tried again after the stream did not acknowledge them.
    pub publish_retries: u64,
    /// Messages given up on by the publisher (dead-lettered on this node, reason
    /// `Transport`).
    pub publish_failed: u64,
    /// Messages waiting for the publisher or for their publish ack.
    pub queued: u64,
    /// Frames that arrived for this node (each redelivery counts).
    pub received: u64,
    /// Arrived messages a local mailbox accepted.
    pub delivered: u64,
    /// Arrived messages refused for now (mailbox full, breaker open) and handed back to
    /// JetStream for a redelivery after the back-off.
    pub redelivery_requests: u64,
    /// Arrived messages given up on here (dead letters): unknown or closed agent,
    /// refused after `max_retries`, undecodable.
    pub dead_lettered: u64,
    /// Of those, frames that did not decode or carried another wire version.
    pub undecodable: u64,
    /// Exactly-once copies that arrived again within the dedupe window (acked to
    /// JetStream, not delivered again).
    pub duplicates: u64,
    /// Calls this node sent to other nodes.
    pub calls_sent: u64,
    /// Of those, calls that got no reply (an error answer, no responder, garbage);
    /// their callers failed with `DeliveryFailed`. A call that simply timed out is
    /// not counted here.
    pub calls_failed: u64,
    /// Calls from other nodes pushed into a mailbox here.
    pub calls_served: u64,
    /// Nodes without persistence whose lease lapsed and whose registry entries this
    /// node deleted.
    pub lapsed_nodes_removed: u64,
    /// Arrived `require_ack` messages in a mailbox here, waiting for their agent's
    /// acknowledgement (until then they are unsettled in the stream).
    pub awaiting_ack: u64,
}

/// The node's counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: Counter,
    pub(crate) publish_retries: Counter,
    pub(crate) publish_failed: Counter,
    pub(crate) handed: Counter,
    pub(crate) received: Counter,
    pub(crate) delivered: Counter,
    pub(crate) redelivery_requests: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) undecodable: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) calls_sent: Counter,
    pub(crate) calls_failed: Counter,
    pub(crate) calls_served: Counter,
    pub(crate) nodes_cleaned: Counter,
}

/// What the node's tasks share.
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) registry: Registry,
    pub(crate) local: std::sync::Arc<LocalRoutes>,
    pub(crate) dead_letters: crate::sync::Arc<DeadLetters>,
    /// The system's retry schedule (each message's options override it).
    pub(crate) policy: RetryPolicy,
    pub(crate) counters: Counters,
    /// The system's engine, for its exactly-once window (set once it is built; weak,
    /// since the engine reaches this node through its routes).
    pub(crate) engine: OnceLock<std::sync::Weak<Engine>>,
    /// Arrived `require_ack` messages waiting for their agent's acknowledgement.
    pub(crate) acks: self::acks::AwaitingAcks,
    /// How long they wait (the system's `acknowledgment_timeout`).
    pub(crate) ack_timeout: std::time::Duration,
    /// The connection (for its state).
    pub(crate) client: async_nats::Client,
    /// The stats at the last metrics publish (`meters`).
    #[cfg(feature = "metrics")]
    pub(crate) metered: std::sync::Mutex<Option<ClusterStats>>,
}

impl Shared {
    /// The counters as [`ClusterStats`].
    pub(crate) fn stats(&self) -> ClusterStats {
        let c = &self.counters;
        let handed = c.handed.get();
        let settled = c.published.get() + c.publish_failed.get();
        ClusterStats {
            node: self.config.node.clone(),
            connected: self.client.connection_state() == async_nats::connection::State::Connected,
            published: c.published.get(),
            publish_retries: c.publish_retries.get(),
            publish_failed: c.publish_failed.get(),
            queued: handed.saturating_sub(settled),
            received: c.received.get(),
            delivered: c.delivered.get(),
            redelivery_requests: c.redelivery_requests.get(),
            dead_lettered: c.dead_lettered.get(),
            undecodable: c.undecodable.get(),
            duplicates: c.duplicates.get(),
            calls_sent: c.calls_sent.get(),
            calls_failed: c.calls_failed.get(),
            calls_served: c.calls_served.get(),
            lapsed_nodes_removed: c.nodes_cleaned.get(),
            awaiting_ack: self.acks.len() as u64,
        }
    }
}
