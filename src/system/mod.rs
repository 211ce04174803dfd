//! [`MessageSystem`]: agents, mailboxes, the delivery engine and its timers, wired
//! together.
//!
//! 1. `builder`: [`MessageSystemBuilder`], how the parts are put together.
//! 2. here: [`MessageSystem`], registration, groups, sending, calls, observing.
//! 3. `call`: [`CallFuture`], a call awaited on any executor.
//! 4. `default_router`: [`DefaultMessageRouter`], the built-in routing as a
//!    standalone [`MessageRouter`](crate::MessageRouter).
//!
//! # Invariants
//!
//! - Every send goes through the one delivery engine, whatever routes it (the table
//!   or a custom router), so the guarantees, the ledger and the timers are the same.
//! - After `shutdown`, every operation but observing fails; every mailbox is closed
//!   and everything still tracked is dead-lettered.

mod builder;
mod call;
mod default_router;

use std::any::Any;
use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::time::{Duration, Instant};

pub use self::builder::MessageSystemBuilder;
pub use self::call::CallFuture;
pub(crate) use self::call::{downcast_reply, reply_error};
pub use self::default_router::DefaultMessageRouter;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::delivery::engine::Engine;
use crate::delivery::{DeliveryManager, DeliveryStats, RouterConfig};
use crate::error::{MessagingError, MessagingResult};
use crate::group::{Group, LoadBalance};
use crate::mailbox::{AgentMailbox, MailboxSender, MailboxStats};
use crate::message::{
    AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority, Payload,
};
use crate::router::{MessageRouter, RouterStats, Routes};
use crate::sync::{Arc, AtomicBool};
use crate::table::manager::MailboxManager;
use crate::table::InsertError;

/// The messaging system: register agents, send, call, receive, observe.
///
/// Cheap to clone; clones share everything.
///
/// # Examples
///
/// ```
/// use serde_json::json;
/// use terraphim_agent_messaging::{
///     AgentPid, DeliveryOptions, MessageEnvelope, MessageSystem, RouterConfig,
/// };
///
/// let system = MessageSystem::new(RouterConfig::default());
/// let (a, b) = (AgentPid::new(), AgentPid::new());
/// system.register_agent(a.clone())?;
/// system.register_agent(b.clone())?;
///
/// let envelope = MessageEnvelope::new(b.clone(), "greeting".into(), json!({"hi": 1}), DeliveryOptions::default())
///     .with_from(a.clone());
/// system.send_message(envelope)?;
///
/// let message = system.get_mailbox(&b).unwrap().receive()?;
/// assert_eq!(message.from(), Some(&a));
/// assert_eq!(message.message_type(), Some("greeting"));
/// assert_eq!(message.payload::<serde_json::Value>(), Some(&json!({"hi": 1})));
/// system.shutdown()?;
/// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
/// ```
#[derive(Clone)]
pub struct MessageSystem {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    config: RouterConfig,
    /// Set when the configuration was refused: every operation reports it.
    config_error: Option<String>,
    mailboxes: MailboxManager,
    /// A std `Arc`: the timer driver holds a `Weak` to it.
    engine: std::sync::Arc<Engine>,
    dead_letters: Arc<DeadLetters>,
    shut_down: AtomicBool,
    /// This system's cluster node, if it is one (cargo feature `nats`).
    #[cfg(feature = "nats")]
    cluster: Option<std::sync::Arc<crate::cluster::Node>>,
}

impl MessageSystem {
    /// A system with default mailboxes. A refused configuration makes every operation
    /// return that `Configuration` error; [`MessageSystem::builder`]`(..).build()`
    /// reports it up front.
    pub fn new(config: RouterConfig) -> Self {
        Self::builder(config).build_unchecked()
    }

    /// A builder for options beyond `RouterConfig`.
    pub fn builder(config: RouterConfig) -> MessageSystemBuilder {
        MessageSystemBuilder::new(config)
    }

    /// The router configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    fn check(&self) -> MessagingResult<()> {
        if let Some(e) = &self.inner.config_error {
            return Err(MessagingError::Configuration(e.clone()));
        }
        if self.inner.shut_down.load(Acquire) {
            return Err(MessagingError::System(
                "the message system is shut down".into(),
            ));
        }
        Ok(())
    }

    /// Registers `agent_id` and creates its mailbox.
    ///
    /// On a cluster node it also makes `agent_id` reachable from every node: this
    /// waits for the cluster's registry to take it (bounded by the connect timeout) and
    /// fails, registering nothing, if it does not.
    pub fn register_agent(&self, agent_id: AgentPid) -> MessagingResult<()> {
        self.register_local(agent_id.clone())?;
        #[cfg(feature = "nats")]
        if let Some(node) = &self.inner.cluster {
            if let Err(e) = node.announce_blocking(&agent_id) {
                let _ = self.unregister_local(&agent_id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`register_agent`](Self::register_agent) in this process only.
    pub(crate) fn register_local(&self, agent_id: AgentPid) -> MessagingResult<()> {
        self.check()?;
        if agent_id.is_nil() {
            return Err(MessagingError::InvalidMessage(
                "the nil pid means \"no sender\" and cannot be registered".into(),
            ));
        }
        let sender = self.inner.mailboxes.create_mailbox(agent_id.clone())?;
        if let Some(router) = self.custom_router() {
            if let Err(e) = router.register_agent(agent_id.clone(), sender) {
                let _ = self.inner.mailboxes.remove_mailbox(&agent_id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unregisters `agent_id` and closes its mailbox: a receiver holding its mailbox
    /// drains what is queued and then gets `ChannelClosed`; with no receiver left, the
    /// queued messages go to the dead letters.
    ///
    /// On a cluster node it also removes `agent_id` from the cluster's registry; if the
    /// registry cannot be told, the agent is unregistered here all the same and the
    /// error says so.
    pub fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.unregister_local(agent_id)?;
        #[cfg(feature = "nats")]
        if let Some(node) = &self.inner.cluster {
            node.withdraw_blocking(agent_id)?;
        }
        Ok(())
    }

    /// [`unregister_agent`](Self::unregister_agent) in this process only.
    pub(crate) fn unregister_local(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        if let Some(router) = self.custom_router() {
            router.unregister_agent(agent_id)?;
        }
        self.inner.mailboxes.remove_mailbox(agent_id)?;
        self.inner.engine.routes().forget(agent_id);
        // A member that goes away leaves its groups (O(groups), not O(agents)).
        for group in self.inner.mailboxes.table().groups() {
            let _ = group.leave(agent_id);
        }
        Ok(())
    }

    // ===== groups =====

    /// Creates a load-balanced group, addressed like an agent: a message sent to the
    /// returned pid goes to one member, picked by `strategy`.
    pub fn create_group(&self, strategy: LoadBalance) -> MessagingResult<AgentPid> {
        self.check()?;
        let pid = AgentPid::new();
        let group = Arc::new(Group::new(pid.clone(), strategy));
        match self.inner.mailboxes.table().insert_group(group) {
            Ok(_) => Ok(pid),
            Err(InsertError::Duplicate) => Err(MessagingError::DuplicateAgent(pid)),
            Err(InsertError::Full) => Err(MessagingError::System("agent table full".into())),
        }
    }

    /// Adds the registered agent `member` to `group`.
    pub fn join_group(&self, group: &AgentPid, member: &AgentPid) -> MessagingResult<()> {
        self.check()?;
        let sender = self
            .sender(member)
            .ok_or_else(|| MessagingError::AgentNotFound(member.clone()))?;
        self.group(group)?.join(sender)
    }

    /// Removes `member` from `group`.
    pub fn leave_group(&self, group: &AgentPid, member: &AgentPid) -> MessagingResult<()> {
        self.group(group)?.leave(member)
    }

    /// The members of `group`.
    pub fn group_members(&self, group: &AgentPid) -> MessagingResult<Vec<AgentPid>> {
        Ok(self.group(group)?.members())
    }

    /// Removes `group`; its members stay registered.
    pub fn delete_group(&self, group: &AgentPid) -> MessagingResult<()> {
        self.group(group)?;
        self.inner.mailboxes.table().remove(group);
        Ok(())
    }

    fn group(&self, group: &AgentPid) -> MessagingResult<Arc<Group>> {
        self.inner
            .mailboxes
            .table()
            .group(group)
            .ok_or_else(|| MessagingError::AgentNotFound(group.clone()))
    }

    /// Routes `envelope` to its destination; it arrives as a `Cast` with the envelope's
    /// id, sender, type and payload.
    pub fn send_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.check()?;
        self.inner.engine.dispatch_envelope(envelope)
    }

    /// Sends a built message (`call`, `cast`, `info`, …) at `Normal` priority.
    pub fn send(&self, to: &AgentPid, message: AgentMessage) -> MessagingResult<()> {
        self.send_with_priority(to, message, MessagePriority::Normal)
    }

    /// Sends a built message at `priority`.
    pub fn send_with_priority(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.check()?;
        self.inner.engine.dispatch_message(to, message, priority)
    }

    /// Calls `to` with `payload` and blocks for the reply (gen_server:call).
    ///
    /// No reply within `timeout` gives `MessageTimeout(to)`; a zero timeout fails at
    /// once without sending. A callee that drops the call gives `DeliveryFailed`.
    pub fn call<T: Any + Send>(
        &self,
        from: AgentPid,
        to: &AgentPid,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<Payload> {
        if timeout.is_zero() {
            return Err(MessagingError::MessageTimeout(to.clone()));
        }
        let (message, reply) = AgentMessage::call(from, payload, timeout);
        self.send(to, message)?;
        reply.recv_timeout(timeout).map_err(|e| reply_error(to, e))
    }

    /// Calls `to` without blocking: a future, on any executor, that resolves to the
    /// reply, `MessageTimeout(to)` after `timeout`, or `DeliveryFailed` if the callee
    /// dropped the call. The timeout sits on the system's timer wheel: no thread or
    /// task per call.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the call: its timer is cancelled and a late reply
    /// is handed back to the replier.
    pub fn call_async<T: Any + Send>(
        &self,
        from: AgentPid,
        to: &AgentPid,
        payload: T,
        timeout: Duration,
    ) -> CallFuture {
        let to = to.clone();
        if timeout.is_zero() {
            return CallFuture::failed(MessagingError::MessageTimeout(to));
        }
        let (message, reply) = AgentMessage::call(from, payload, timeout);
        if let Err(e) = self.send(&to, message) {
            return CallFuture::failed(e);
        }
        let engine = &self.inner.engine;
        let timer = engine.schedule_call_timeout(&reply, timeout);
        CallFuture::waiting(to, reply, timer.map(|key| (key, engine.clone())))
    }

    /// [`call`](Self::call), downcasting the reply to `R`.
    pub fn call_typed<R: Any, T: Any + Send>(
        &self,
        from: AgentPid,
        to: &AgentPid,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<R> {
        let reply = self.call(from, to, payload, timeout)?;
        downcast_reply(to, reply)
    }

    /// A pre-resolved sender to `agent_id`: no lookup per send.
    pub fn sender(&self, agent_id: &AgentPid) -> Option<MailboxSender> {
        self.inner.mailboxes.get_mailbox_sender(agent_id)
    }

    /// `agent_id`'s mailbox: the same queue the router delivers into.
    pub fn get_mailbox(&self, agent_id: &AgentPid) -> Option<AgentMailbox> {
        self.inner.mailboxes.get_mailbox(agent_id)
    }

    /// The mailbox manager.
    pub fn mailboxes(&self) -> &MailboxManager {
        &self.inner.mailboxes
    }

    /// Router counters and every mailbox's statistics.
    pub fn get_stats(&self) -> (RouterStats, Vec<MailboxStats>) {
        let router = match self.custom_router() {
            Some(router) => router.get_stats(),
            None => {
                let routes = self.inner.mailboxes.table().len();
                self.inner.engine.router_stats(routes)
            }
        };
        (router, self.inner.mailboxes.get_all_stats())
    }

    /// Acknowledges a message sent with `require_ack: true`, ending its tracking.
    /// `UnknownMessage` if it is not awaiting an ack (already acknowledged, given up
    /// on, or never asked for one).
    pub fn acknowledge(&self, id: &MessageId) -> MessagingResult<()> {
        self.inner.engine.acknowledge(id)
    }

    /// Fires every retry and timeout due by the system's clock, and returns when the
    /// next one is due. Needed only with [`TimerDriver::Manual`](crate::TimerDriver);
    /// the default driver thread does this by itself.
    pub fn run_due_timers(&self) -> Option<Instant> {
        self.inner.engine.run_due_timers()
    }

    /// The delivery ledger: every accepted message is delivered, acknowledged, failed,
    /// expired, a suppressed duplicate, or still pending (see `DeliveryStats`), with
    /// the built-in routes and with a custom router alike.
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.inner.engine.delivery_stats()
    }

    /// The system's own delivery records, through the seed's `DeliveryManager` API:
    /// [`get_retry_candidates`](DeliveryManager::get_retry_candidates) lists the
    /// messages waiting on the timer wheel for a retry or an ack, and
    /// [`get_stats`](DeliveryManager::get_stats) is [`delivery_stats`](Self::delivery_stats).
    pub fn delivery_manager(&self) -> DeliveryManager {
        DeliveryManager::of_engine(self.inner.engine.clone())
    }

    /// Takes every dead letter recorded so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.drain()
    }

    /// Dead letters ever recorded (drained or not).
    pub fn dead_letter_count(&self) -> u64 {
        self.inner.dead_letters.total()
    }

    /// Stops the system: later operations fail, every mailbox closes (receivers drain
    /// what is queued, then get `ChannelClosed`). Idempotent.
    pub fn shutdown(&self) -> MessagingResult<()> {
        if self.inner.shut_down.swap(true, AcqRel) {
            return Ok(());
        }
        // A cluster node leaves first: other nodes stop resolving its pids, and what it
        // was publishing is published (or dead-lettered, with the reason).
        #[cfg(feature = "nats")]
        if let Some(node) = &self.inner.cluster {
            node.leave_blocking();
        }
        let result = match self.custom_router() {
            Some(router) => router.shutdown(),
            None => Ok(()),
        };
        self.inner.engine.stop();
        self.inner.mailboxes.close_all();
        result
    }

    /// Whether `shutdown` has run.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Acquire)
    }

    /// The custom router, if the system routes through one.
    fn custom_router(&self) -> Option<&std::sync::Arc<dyn MessageRouter>> {
        match self.inner.engine.routes() {
            Routes::Custom(custom) => Some(custom.router()),
            _ => None,
        }
    }

    // ===== cluster (cargo feature `nats`) =====

    /// The node `agent_id` lives on, as this node sees it: this node's name for an
    /// agent registered here, another node's for one registered there (while that
    /// node's lease is fresh), `None` if no live node has it. `None` on a system that
    /// is not a cluster node.
    #[cfg(feature = "nats")]
    pub fn cluster_node_of(&self, agent_id: &AgentPid) -> Option<String> {
        let node = self.inner.cluster.as_ref()?;
        if self.inner.mailboxes.table().lookup(agent_id).is_some() {
            return Some(node.name().to_string());
        }
        node.node_of(agent_id)
    }

    /// What this cluster node has published, received, delivered and given up on;
    /// `None` on a system that is not a cluster node.
    #[cfg(feature = "nats")]
    pub fn cluster_stats(&self) -> Option<crate::cluster::ClusterStats> {
        self.inner.cluster.as_ref().map(|node| node.stats())
    }

    /// The cluster node, if this system is one (the tokio flavour awaits it).
    #[cfg(feature = "nats")]
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn cluster(&self) -> Option<&std::sync::Arc<crate::cluster::Node>> {
        self.inner.cluster.as_ref()
    }

    /// The delivery engine (the tokio flavour drives its timers).
    #[cfg(feature = "tokio")]
    pub(crate) fn engine(&self) -> &std::sync::Arc<Engine> {
        &self.inner.engine
    }
}

impl fmt::Debug for MessageSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSystem")
            .field("agents", &self.inner.mailboxes.len())
            .field("shut_down", &self.is_shut_down())
            .finish()
    }
}
