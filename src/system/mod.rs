//! [`MessageSystem`]: agents, mailboxes, the delivery engine and its timers, wired
//! together.
//!
//! 1. `builder`: [`MessageSystemBuilder`], how the parts are put together.
//! 2. here: [`MessageSystem`], registration, groups, sending, calls, observing.
//! 3. `call`: [`CallFuture`], a call awaited on any executor.
//! 4. `default_router`: [`DefaultMessageRouter`], the built-in routing as a
//!    standalone [`MessageRouter`](crate::MessageRouter).
//! 5. `signals`: monitors, links, exit reasons, trapped exits, names, and the one
//!    function every stop goes through.
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
mod signals;

use std::any::Any;
use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::time::{Duration, Instant};

pub use self::builder::MessageSystemBuilder;
pub use self::call::CallFuture;
pub(crate) use self::call::{downcast_reply, reply_error};
use self::call::{observe_call, Waiting};
pub use self::default_router::DefaultMessageRouter;
pub use self::signals::{MonitorRef, MAX_NAME_LEN};
use crate::dead_letter::{
    DeadLetter, DeadLetterKind, DeadLetterStats, DeadLetterSubscription, DeadLetters,
};
use crate::delivery::engine::Engine;
use crate::delivery::{DeliveryManager, DeliveryStats, RouterConfig, TimerRef};
use crate::error::{MessagingError, MessagingResult};
use crate::group::{Group, LoadBalance};
use crate::mailbox::{AgentMailbox, MailboxSender, MailboxStats};
use crate::message::{
    AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority, Payload,
};
use crate::observe::events::{self, CallSpan, Ledger};
use crate::observe::meters::CallTimer;
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
    /// Monitors, links, trapped exits and names (see `signals`).
    signals: signals::Signals,
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
        events::registered(&agent_id);
        Ok(())
    }

    /// Unregisters `agent_id` and closes its mailbox: a receiver holding its mailbox
    /// drains what is queued and then gets `ChannelClosed`; with no receiver left, the
    /// queued messages go to the dead letters. The agent stops with reason
    /// `"normal"`: its monitors fire, its names are released, its links are removed
    /// (a linked agent that traps exits is told; others are not stopped).
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

    /// [`unregister_agent`](Self::unregister_agent) in this process only: the agent
    /// stops with reason `"normal"`.
    pub(crate) fn unregister_local(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.stop(agent_id, signals::NORMAL)?;
        events::unregistered(agent_id);
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
            Ok(_) => {
                events::group_created(&pid, &strategy);
                Ok(pid)
            }
            Err(InsertError::Duplicate) => Err(MessagingError::DuplicateAgent(pid)),
            Err(InsertError::Full) => Err(MessagingError::System("agent table full".into())),
        }
    }

    /// Adds the registered agent `member` to `group`. On a cluster node `member` may
    /// live on another node: the group's picks (and a broadcast's copies) for it are
    /// sent there by pid; the group itself is addressed on this node.
    pub fn join_group(&self, group: &AgentPid, member: &AgentPid) -> MessagingResult<()> {
        self.check()?;
        let joining = match self.sender(member) {
            Some(sender) => crate::group::Member::Local(sender),
            None => self.remote_member(member)?,
        };
        self.group(group)?.join(joining)?;
        events::group_joined(group, member);
        self.group_changed(group, member, "group_member_joined");
        Ok(())
    }

    /// A member that is not registered here: on a cluster node, a pid another node
    /// owns (it stays a member if that node goes away; sends to it then fail as to any
    /// remote pid).
    fn remote_member(&self, member: &AgentPid) -> MessagingResult<crate::group::Member> {
        #[cfg(feature = "nats")]
        if let Some(node) = &self.inner.cluster {
            if node.node_of(member).is_some_and(|n| n != node.name()) {
                return Ok(crate::group::Member::Remote(member.clone()));
            }
        }
        Err(MessagingError::AgentNotFound(member.clone()))
    }

    /// Removes `member` from `group`.
    pub fn leave_group(&self, group: &AgentPid, member: &AgentPid) -> MessagingResult<()> {
        self.group(group)?.leave(member)?;
        events::group_left(group, member);
        self.group_changed(group, member, "group_member_left");
        Ok(())
    }

    /// The members of `group`.
    pub fn group_members(&self, group: &AgentPid) -> MessagingResult<Vec<AgentPid>> {
        Ok(self.group(group)?.members())
    }

    /// Removes `group`; its members stay registered. Its monitors fire with
    /// `"normal"`.
    pub fn delete_group(&self, group: &AgentPid) -> MessagingResult<()> {
        self.group(group)?;
        self.remove_group(group);
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
        #[cfg(feature = "nats")]
        if let Some(node) = self.storing_node(&envelope.to) {
            let id = envelope.id.clone();
            let waiting = self.dispatch_stored(node, &id, || self.dispatch_envelope(envelope))?;
            return waiting.map_or(Ok(()), |w| node.wait_stored_blocking(w));
        }
        self.dispatch_envelope(envelope)
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
        #[cfg(feature = "nats")]
        if let Some(node) = self.storing_node(to) {
            let id = message.id().clone();
            let waiting =
                self.dispatch_stored(node, &id, || self.dispatch_message(to, message, priority))?;
            return waiting.map_or(Ok(()), |w| node.wait_stored_blocking(w));
        }
        self.dispatch_message(to, message, priority)
    }

    /// Calls `to` with `payload` and blocks for the reply (gen_server:call). A small
    /// `payload` travels inline in the message (see [`Payload`]); so does a small reply
    /// sent as `Payload::new(r)`.
    ///
    /// No reply within `timeout` gives `MessageTimeout(to)`; a zero timeout fails at
    /// once without sending. A callee that drops the call gives `DeliveryFailed`.
    ///
    /// With the `tracing` feature the call runs in a `call` span (`TRACE`) with its
    /// message id, `from`, `to` and `timeout`, from the send to the reply.
    pub fn call<T: Any + Send>(
        &self,
        from: AgentPid,
        to: &AgentPid,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<Payload> {
        let engine = &self.inner.engine;
        if timeout.is_zero() {
            let timed_out = MessagingError::MessageTimeout(to.clone());
            observe_call(engine, to, Err(&timed_out), CallTimer::none());
            return Err(timed_out);
        }
        let (message, reply) = AgentMessage::call(from, payload, timeout);
        let span = CallSpan::new(message.id(), message.from(), to, timeout);
        let _in_call = span.enter();
        let clock = CallTimer::start(message.id().0.as_u64_pair().1);
        let answer = self
            .send(to, message)
            .and_then(|()| reply.recv_timeout(timeout).map_err(|e| reply_error(to, e)));
        observe_call(engine, to, answer.as_ref().map(|_| ()), clock);
        answer
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
        let engine = &self.inner.engine;
        if timeout.is_zero() {
            let timed_out = MessagingError::MessageTimeout(to.clone());
            observe_call(engine, &to, Err(&timed_out), CallTimer::none());
            return CallFuture::failed(timed_out);
        }
        let (message, reply) = AgentMessage::call(from, payload, timeout);
        let span = CallSpan::new(message.id(), message.from(), &to, timeout);
        let clock = CallTimer::start(message.id().0.as_u64_pair().1);
        let call_id = message.id().clone();
        let sent = {
            let _in_call = span.enter();
            self.send(&to, message)
                .inspect_err(|e| observe_call(engine, &to, Err(e), CallTimer::none()))
        };
        if let Err(e) = sent {
            return CallFuture::failed(e);
        }
        let timer = engine.schedule_call_timeout(&reply, timeout, &call_id);
        let waiting = Waiting {
            reply,
            timer,
            engine: engine.clone(),
            span,
            clock,
        };
        CallFuture::waiting(to, waiting)
    }

    /// [`call`](Self::call), taking the reply out as an `R` ([`Payload::take`]: no
    /// allocation for a small `R`); a reply of another type is `InvalidMessage`.
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

    /// Queues `message` in `to`'s bounded mailbox at `Normal` priority, waiting up
    /// to `timeout` for room (back-pressure; blocks the thread): see
    /// [`MailboxSender::send_timeout`]. Goes straight to the mailbox, as a
    /// [`sender`](Self::sender) does: no retries (waiting is the alternative to
    /// them), and the mailbox's own counters, not the delivery ledger, count it.
    ///
    /// # Errors
    ///
    /// The message comes back with why: `MailboxFull` after the timeout,
    /// `ChannelClosed`, `AgentNotFound`, or `InvalidMessage` for a group (it has no
    /// one mailbox to wait for).
    // The error hands the message back, as `TrySendError` does: it is the message's size.
    #[allow(clippy::result_large_err)]
    pub fn send_timeout(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        timeout: Duration,
    ) -> Result<(), crate::error::SendTimeoutError> {
        let (error, message) = match self.check().and_then(|()| self.resolve_for_waiting(to)) {
            Ok(sender) => match sender.send_timeout(message, MessagePriority::Normal, timeout) {
                Ok(()) => return Ok(()),
                Err(e) => (e.to_error(to), e.into_inner()),
            },
            Err(error) => (error, message),
        };
        Err(crate::error::SendTimeoutError { error, message })
    }

    /// The mailbox `send_timeout` waits on.
    pub(crate) fn resolve_for_waiting(&self, to: &AgentPid) -> MessagingResult<MailboxSender> {
        if let Some(sender) = self.sender(to) {
            return Ok(sender);
        }
        if self.inner.mailboxes.table().group(to).is_some() {
            return Err(MessagingError::InvalidMessage(format!(
                "{to} is a group: send_timeout waits for room in one agent's mailbox"
            )));
        }
        Err(MessagingError::AgentNotFound(to.clone()))
    }

    // ===== user timers =====

    /// Sends `message` to `to` after `delay` (Erlang's `erlang:send_after`), on the
    /// system's timer wheel: no thread or task per timer, and it follows the system's
    /// clock (a `ManualClock` test fires it with `run_due_timers`). When it fires, the
    /// message is sent as [`send`](Self::send) would: to an agent that has stopped
    /// meanwhile, it is dead-lettered (`AgentNotFound`).
    ///
    /// A zero delay sends at once (the ref's [`cancel_timer`](Self::cancel_timer) then
    /// returns `false`); `Duration::MAX` (or anything past the clock's range) never
    /// fires but holds its message until cancelled or the system is dropped. A timer
    /// still pending at `shutdown` never fires: its message was never sent.
    ///
    /// A pending timer costs about 150 bytes with its message (a wheel slot, the
    /// boxed timer holding the message inline, the wheel's spare capacity), plus the
    /// message's payload: `tests/user_timers.rs` measures 150 bytes per timer at a
    /// million pending.
    ///
    /// # Errors
    ///
    /// `AgentNotFound` if `to` is not registered now (with the built-in routes); the
    /// system's error after shutdown.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use terraphim_agent_messaging::{AgentMessage, AgentPid, MessageSystem, RouterConfig};
    ///
    /// let system = MessageSystem::new(RouterConfig::default());
    /// let pid = AgentPid::new();
    /// system.register_agent(pid.clone())?;
    /// let tick = system.send_after(&pid, AgentMessage::cast(AgentPid::nil(), "tick"), Duration::from_millis(5))?;
    /// let message = system.get_mailbox(&pid).unwrap().receive()?;
    /// assert_eq!(message.payload::<&str>(), Some(&"tick"));
    /// assert!(!system.cancel_timer(tick), "it fired");
    /// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
    /// ```
    pub fn send_after(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        delay: Duration,
    ) -> MessagingResult<TimerRef> {
        self.check()?;
        if self.inner.engine.routes().knows(to) == Some(false) {
            return Err(MessagingError::AgentNotFound(to.clone()));
        }
        Ok(self.inner.engine.send_after(to, message, delay))
    }

    /// Sends `make()` to `to` every `period` (Erlang's `timer:send_interval`), the
    /// first one period from now, on the system's timer wheel. Fixed rate: a clock
    /// that jumps over several periods fires once, then goes on from there. The timer
    /// cancels itself once `to` has stopped (making no more messages), or if `make`
    /// panics.
    ///
    /// # Errors
    ///
    /// `InvalidMessage` for a zero period (it would fire without end);
    /// `AgentNotFound` if `to` is not registered now (with the built-in routes).
    /// `Duration::MAX` is accepted and never fires.
    pub fn send_interval(
        &self,
        to: &AgentPid,
        make: impl FnMut() -> AgentMessage + Send + 'static,
        period: Duration,
    ) -> MessagingResult<TimerRef> {
        self.check()?;
        if period.is_zero() {
            return Err(MessagingError::InvalidMessage(
                "send_interval's period must be greater than zero".into(),
            ));
        }
        if self.inner.engine.routes().knows(to) == Some(false) {
            return Err(MessagingError::AgentNotFound(to.clone()));
        }
        Ok(self.inner.engine.send_interval(to, Box::new(make), period))
    }

    /// Cancels a timer of [`send_after`](Self::send_after) or
    /// [`send_interval`](Self::send_interval). `true` if it was pending (its message
    /// is dropped unsent) or, for an interval, still running; `false` if it fired
    /// already, ended, or was cancelled before.
    pub fn cancel_timer(&self, timer: TimerRef) -> bool {
        self.inner.engine.cancel_user_timer(timer)
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
        let acked = self.inner.engine.acknowledge(id);
        // A message from another node waits in the stream for this acknowledgement.
        #[cfg(feature = "nats")]
        if acked.is_err()
            && self
                .inner
                .cluster
                .as_ref()
                .is_some_and(|n| n.acknowledge(id))
        {
            return Ok(());
        }
        acked
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

    /// Takes every dead letter kept so far, oldest first. The store keeps the newest
    /// `dead_letter_capacity` letters (see [`MessageSystemBuilder::dead_letter_capacity`]);
    /// [`dead_letter_stats`](Self::dead_letter_stats) counts the ones it dropped.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters.drain()
    }

    /// Takes the dead letters kept so far whose reason is of `kind`, oldest first;
    /// the others stay.
    pub fn dead_letters_of(&self, kind: DeadLetterKind) -> Vec<DeadLetter> {
        self.inner
            .dead_letters
            .drain_where(|letter| letter.reason.kind() == kind)
    }

    /// Subscribes to the dead letters of `kinds` ([`DeadLetterKind::ALL`] for every
    /// one): from now on, each such letter goes to the subscription while it holds
    /// fewer than `capacity` (then to the next subscription, or the store). It ends
    /// when the system shuts down. See [`DeadLetterSubscription`].
    ///
    /// A capacity of 0 or no kinds is a `Configuration` error.
    pub fn subscribe_dead_letters(
        &self,
        kinds: &[DeadLetterKind],
        capacity: usize,
    ) -> MessagingResult<DeadLetterSubscription> {
        self.check()?;
        DeadLetters::subscribe(&self.inner.dead_letters, kinds, capacity)
    }

    /// Dead letters ever recorded: kept, taken or dropped.
    pub fn dead_letter_count(&self) -> u64 {
        self.inner.dead_letters.total()
    }

    /// The dead-letter store's counters: recorded, kept, taken, and dropped by reason
    /// (`recorded = kept + in_subscriptions + taken + dropped`).
    pub fn dead_letter_stats(&self) -> DeadLetterStats {
        self.inner.dead_letters.stats()
    }

    /// Stops the system: later operations fail, every mailbox closes (receivers drain
    /// what is queued, then get `ChannelClosed`), and dead-letter subscriptions end.
    /// Idempotent.
    ///
    /// With the `tracing` feature it logs the delivery ledger (`INFO`); with `metrics`
    /// it publishes the final counters and sets the system's gauges to zero.
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
        self.shutdown_signals();
        self.inner.engine.stop();
        self.inner.mailboxes.close_all();
        // After the last letters the shutdown buries: subscribers receive those, then end.
        self.inner.dead_letters.close();
        self.inner.engine.publish_metrics(true);
        events::shut_down(|| {
            let l = self.delivery_stats();
            Ledger {
                total_messages: l.total_messages,
                delivered: l.delivered,
                acknowledged: l.acknowledged,
                failed: l.failed,
                expired: l.expired,
                duplicates: l.duplicates,
                pending: l.pending,
                in_transit: l.in_transit,
                dead_letters: self.dead_letter_count(),
            }
        });
        result
    }

    /// Publishes `agent`'s queue length as the gauge
    /// `agent_messaging_mailbox_depth{agent = name}` (cargo feature `metrics`), with
    /// the other metrics. For a few agents you name: a label per agent would make one
    /// time series per pid. Watching another agent under the same name replaces it;
    /// an agent that is not registered reads 0.
    #[cfg(feature = "metrics")]
    pub fn watch_depth(&self, agent: &AgentPid, name: impl Into<String>) {
        self.inner.engine.watch_depth(name.into(), agent.clone());
    }

    /// Publishes the system's counters and gauges to the `metrics` recorder now (cargo
    /// feature `metrics`). The timer driver does it by itself at most once a second
    /// and at least every `retry_interval`, and `shutdown` once more; this is for a
    /// `TimerDriver::Manual` system, or to read fresh numbers at once.
    ///
    /// Counters grow by what they grew since the last publish and gauges move by
    /// their change, so several systems in one process add up. A recorder installed
    /// after some publishes sees only what grew since.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        self.inner.engine.publish_metrics(self.is_shut_down());
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

    /// Checks the configuration and hands `envelope` to the engine (no waiting for a
    /// store: the callers wait for that, each flavour its own way).
    pub(crate) fn dispatch_envelope(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.check()?;
        self.inner.engine.dispatch_envelope(envelope)
    }

    /// As [`dispatch_envelope`](Self::dispatch_envelope), for a built message.
    pub(crate) fn dispatch_message(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.check()?;
        self.inner.engine.dispatch_message(to, message, priority)
    }

    /// The cluster node, if sends to `to` wait until the stream stored them (a pid of
    /// a durable node, at least once).
    #[cfg(feature = "nats")]
    pub(crate) fn storing_node(
        &self,
        to: &AgentPid,
    ) -> Option<&std::sync::Arc<crate::cluster::Node>> {
        self.inner.cluster.as_ref().filter(|node| node.stores(to))
    }

    /// Dispatches through `dispatch` with a receipt asked for: what to wait on, if the
    /// push queued the message for the stream (`None`: delivered otherwise, e.g. a
    /// payload that cannot cross, or refused for now and left to the engine's retries).
    #[cfg(feature = "nats")]
    pub(crate) fn dispatch_stored(
        &self,
        node: &crate::cluster::Node,
        id: &crate::message::MessageId,
        dispatch: impl FnOnce() -> MessagingResult<()>,
    ) -> MessagingResult<Option<crate::cluster::Waiting>> {
        node.expect_receipt(id);
        let sent = dispatch();
        let waiting = node.take_receipt(id);
        sent.map(|()| waiting)
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
