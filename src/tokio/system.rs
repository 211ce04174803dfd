//! [`MessageSystem`]: the async twin of the core system, and its builder.
//!
//! Every method forwards to the core (the core never waits except for replies and
//! receives, which have async forms), and the timers run on a task of the current
//! runtime (see `timers`). With a custom async router ([`MessageSystem::with_router`])
//! the core's delivery engine attempts through it (see `router::PolledRouter`), and the
//! system awaits it for registration, statistics and shutdown.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::runtime::Handle;

use super::delivery::DeliveryManager;
use super::mailbox::{AgentMailbox, MailboxSender};
use super::router::{MessageRouter, PolledRouter};
use super::timers::TimerTask;
use crate::breaker::CircuitBreakerConfig;
use crate::dead_letter::{DeadLetter, DeadLetterKind, DeadLetterStats, DeadLetterSubscription};
use crate::delivery::{DeliveryStats, RouterConfig, TimerRef};
use crate::error::{MessagingError, MessagingResult, SendTimeoutError};
use crate::group::LoadBalance;
use crate::mailbox::{MailboxConfig, MailboxStats};
use crate::message::{
    AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority, Payload,
};
use crate::router::RouterStats;
use crate::system::{downcast_reply, MonitorRef};
use crate::timer::driver::TimerDriver;
use crate::timer::service::Fire;
use crate::timer::Clock;

/// The messaging system, async: register agents, send, call, receive, observe.
///
/// Cheap to clone; clones share everything. Built inside a tokio runtime, its timers
/// (retries, ack timeouts, call timeouts) run on a task of that runtime; built outside
/// one, on the core's timer thread.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::tokio::{AgentMessage, AgentPid, MessageSystem, RouterConfig};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let system = MessageSystem::new(RouterConfig::default());
/// let (client, server) = (AgentPid::new(), AgentPid::new());
/// system.register_agent(server.clone()).await?;
///
/// let mailbox = system.get_mailbox(&server).await.unwrap();
/// let worker = tokio::spawn(async move {
///     while let Ok(message) = mailbox.receive().await {
///         if let AgentMessage::Call { payload, reply_to, .. } = message {
///             let n = *payload.downcast::<u64>().unwrap();
///             reply_to.send(Box::new(n * n)).ok();
///         }
///     }
/// });
///
/// let answer: u64 = system.call_typed(client, &server, 12u64, Duration::from_secs(1)).await?;
/// assert_eq!(answer, 144);
/// system.shutdown().await?; // the worker's receive returns ChannelClosed
/// worker.await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MessageSystem {
    shared: Arc<Shared>,
}

struct Shared {
    /// The sync system: mailboxes, the delivery engine, the timer wheel.
    core: crate::MessageSystem,
    /// The custom async router, if any (the core's engine attempts through it).
    router: Option<Arc<dyn MessageRouter>>,
    /// The timer task, when the timers run on the runtime.
    timers: Option<TimerTask>,
}

/// Builds a tokio [`MessageSystem`] with options beyond `RouterConfig` (the twin of
/// [`crate::MessageSystemBuilder`]).
pub struct MessageSystemBuilder {
    core: crate::MessageSystemBuilder,
    driver: Option<TimerDriver>,
    router: Option<Arc<dyn MessageRouter>>,
    #[cfg(feature = "nats")]
    cluster: Option<crate::ClusterConfig>,
}

impl MessageSystemBuilder {
    /// The configuration of every mailbox the system creates.
    pub fn mailbox_config(mut self, config: MailboxConfig) -> Self {
        self.core = self.core.mailbox_config(config);
        self
    }

    /// Anti-starvation budget of every mailbox (0 = strict priority order).
    pub fn starvation_budget(mut self, budget: u32) -> Self {
        self.core = self.core.starvation_budget(budget);
        self
    }

    /// A circuit breaker per destination (see
    /// [`crate::MessageSystemBuilder::circuit_breaker`]).
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.core = self.core.circuit_breaker(config);
        self
    }

    /// The clock retries, timeouts and breakers read (default: the system clock). The
    /// timer task measures its sleeps on it too.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.core = self.core.clock(clock);
        self
    }

    /// Who turns the timer wheel. Default: a task on the current runtime (the core's
    /// thread outside a runtime). Setting it explicitly (e.g. `TimerDriver::Manual`
    /// with a `ManualClock`) starts no task.
    pub fn timer_driver(mut self, driver: TimerDriver) -> Self {
        self.driver = Some(driver);
        self
    }

    /// How many dead letters the system keeps (see
    /// [`crate::MessageSystemBuilder::dead_letter_capacity`]; default 10,000, the newest).
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.core = self.core.dead_letter_capacity(capacity);
        self
    }

    /// Routes through a custom async router (see [`MessageSystem::with_router`]).
    pub fn router(mut self, router: Arc<dyn MessageRouter>) -> Self {
        self.router = Some(router);
        self
    }

    /// Makes the system a node of a cluster on NATS JetStream (cargo feature `nats`;
    /// see [`crate::MessageSystemBuilder::cluster`]). The node's client runs on the
    /// current runtime, so the system is built with [`connect`](Self::connect)`.await`,
    /// not `build()`.
    #[cfg(feature = "nats")]
    pub fn cluster(mut self, config: crate::ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// Builds the system and, with [`cluster`](Self::cluster), connects it to the
    /// cluster on the current runtime: a clear error if the server does not answer
    /// within the connect timeout. Without `cluster` it is [`build`](Self::build).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes builds nothing (a connection being
    /// made is closed).
    #[cfg(feature = "nats")]
    pub async fn connect(mut self) -> MessagingResult<MessageSystem> {
        let Some(config) = self.cluster.take() else {
            return self.build();
        };
        let runtime = Handle::try_current().map_err(|_| {
            MessagingError::Configuration(
                "a tokio cluster node connects on the current tokio runtime: call connect() \
                 inside one (or use the root flavour, which runs its own)"
                    .into(),
            )
        })?;
        if self.router.is_some() {
            return Err(MessagingError::Configuration(
                "a cluster node routes through its own table: cluster(..) with a custom \
                 router(..) is not built yet"
                    .into(),
            ));
        }
        self.core.precheck()?;
        let config = self.core.node_config(config)?;
        let link = crate::cluster::connect(config.clone()).await?;
        let node = Some((
            link,
            crate::cluster::ClientRuntime::Borrowed(runtime.clone()),
        ));
        let core = self.core.cluster(config);
        if let Some(driver) = self.driver {
            let core = core.timer_driver(driver).build_node(node)?;
            return Ok(MessageSystem::from_parts(core, None, None));
        }
        let (task, wake) = TimerTask::new();
        let core = core
            .timer_driver(TimerDriver::External(wake))
            .build_node(node)?;
        let engine: Arc<dyn Fire> = core.engine().clone();
        task.start(&runtime, Arc::downgrade(&engine));
        Ok(MessageSystem::from_parts(core, None, Some(task)))
    }

    /// Builds the system, refusing a bad configuration. Inside a tokio runtime it
    /// spawns the timer task there. A cluster node is built with
    /// [`connect`](Self::connect)`.await` instead (this refuses it).
    pub fn build(self) -> MessagingResult<MessageSystem> {
        #[cfg(feature = "nats")]
        if self.cluster.is_some() {
            return Err(MessagingError::Configuration(
                "a tokio cluster node connects asynchronously: build it with \
                 `.connect().await` instead of `.build()`"
                    .into(),
            ));
        }
        let mut core = self.core;
        if let Some(router) = &self.router {
            core = core.router(Arc::new(PolledRouter::new(router.clone())));
        }
        let runtime = match self.driver {
            Some(driver) => {
                let core = core.timer_driver(driver).build()?;
                return Ok(MessageSystem::from_parts(core, self.router, None));
            }
            None => Handle::try_current().ok(),
        };
        let Some(runtime) = runtime else {
            // Outside a runtime: the core's own timer thread.
            let core = core.build()?;
            return Ok(MessageSystem::from_parts(core, self.router, None));
        };
        let (task, wake) = TimerTask::new();
        let core = core.timer_driver(TimerDriver::External(wake)).build()?;
        let engine: Arc<dyn Fire> = core.engine().clone();
        task.start(&runtime, Arc::downgrade(&engine));
        Ok(MessageSystem::from_parts(core, self.router, Some(task)))
    }
}

impl MessageSystem {
    /// A system with default mailboxes. Inside a tokio runtime its timers run on a task
    /// of that runtime; outside one, on the core's timer thread.
    ///
    /// A refused configuration makes every operation return that `Configuration`
    /// error; [`MessageSystem::builder`]`(..).build()` reports it up front.
    pub fn new(config: RouterConfig) -> Self {
        match Self::builder(config.clone()).build() {
            Ok(system) => system,
            // The core's lenient constructor keeps the error for every operation.
            Err(_) => Self::from_core(crate::MessageSystem::new(config)),
        }
    }

    /// A builder for options beyond `RouterConfig`.
    pub fn builder(config: RouterConfig) -> MessageSystemBuilder {
        MessageSystemBuilder {
            core: crate::MessageSystem::builder(config),
            driver: None,
            router: None,
            #[cfg(feature = "nats")]
            cluster: None,
        }
    }

    /// A system that routes through `router`.
    ///
    /// The system owns the mailboxes: `register_agent` creates one and hands its
    /// sender to `router.register_agent`; `send_message` calls `router.route_message`;
    /// `send`, `send_with_priority` and `call` call `router.route`, each attempt made
    /// by the system's delivery engine (so retries, acks, breakers, call timeouts and
    /// `delivery_stats` work as with the built-in routes); `get_stats` reports
    /// `router.get_stats()`; `unregister_agent` and `shutdown` call the router first.
    pub fn with_router(
        config: RouterConfig,
        router: Arc<dyn MessageRouter>,
    ) -> MessagingResult<Self> {
        Self::builder(config).router(router).build()
    }

    /// Wraps a sync system (its timers keep whatever driver it was built with).
    pub fn from_core(core: crate::MessageSystem) -> Self {
        Self::from_parts(core, None, None)
    }

    fn from_parts(
        core: crate::MessageSystem,
        router: Option<Arc<dyn MessageRouter>>,
        timers: Option<TimerTask>,
    ) -> Self {
        MessageSystem {
            shared: Arc::new(Shared {
                core,
                router,
                timers,
            }),
        }
    }

    /// The sync system underneath: the same agents, mailboxes and delivery engine.
    pub fn as_sync(&self) -> &crate::MessageSystem {
        &self.shared.core
    }

    /// The router configuration.
    pub fn config(&self) -> &RouterConfig {
        self.shared.core.config()
    }

    /// Whether a timer task of this system is running on a tokio runtime.
    pub fn has_timer_task(&self) -> bool {
        self.shared
            .timers
            .as_ref()
            .is_some_and(TimerTask::is_running)
    }

    // ===== agents =====

    /// Registers `agent_id` and creates its mailbox.
    ///
    /// # Cancel safety
    ///
    /// With the built-in router it completes in its first poll. With a custom router,
    /// dropping the future while `router.register_agent` runs leaves the mailbox
    /// registered in the system but perhaps not in the router.
    pub async fn register_agent(&self, agent_id: AgentPid) -> MessagingResult<()> {
        let core = &self.shared.core;
        core.register_local(agent_id.clone())?;
        // A cluster node waits for the registry (bounded by the client's timeouts).
        #[cfg(feature = "nats")]
        if let Some(node) = core.cluster() {
            if let Err(e) = node.announce(&agent_id).await {
                let _ = core.unregister_local(&agent_id);
                return Err(e);
            }
        }
        if let Some(router) = &self.shared.router {
            let sender = core
                .sender(&agent_id)
                .ok_or_else(|| MessagingError::AgentNotFound(agent_id.clone()))?;
            if let Err(e) = router.register_agent(agent_id.clone(), sender.into()).await {
                let _ = core.unregister_agent(&agent_id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unregisters `agent_id` and closes its mailbox: a receiver drains what is queued
    /// and then gets `ChannelClosed`; with no receiver left, the queued messages go to
    /// the dead letters.
    ///
    /// # Cancel safety
    ///
    /// With the built-in router it completes in its first poll. With a custom router,
    /// the mailbox is closed only after `router.unregister_agent` returns.
    pub async fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        if let Some(router) = &self.shared.router {
            router.unregister_agent(agent_id).await?;
        }
        self.shared.core.unregister_local(agent_id)?;
        #[cfg(feature = "nats")]
        if let Some(node) = self.shared.core.cluster() {
            node.withdraw(agent_id).await?;
        }
        Ok(())
    }

    /// A pre-resolved sender to `agent_id`: no lookup per send.
    pub fn sender(&self, agent_id: &AgentPid) -> Option<MailboxSender> {
        self.shared.core.sender(agent_id).map(Into::into)
    }

    /// `agent_id`'s mailbox: the same queue the router delivers into.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_mailbox(&self, agent_id: &AgentPid) -> Option<AgentMailbox> {
        self.shared.core.get_mailbox(agent_id).map(Into::into)
    }

    // ===== sending =====

    /// Routes `envelope` to its destination; it arrives as a `Cast` with the envelope's
    /// id, sender, type and payload.
    ///
    /// # Cancel safety
    ///
    /// With the built-in router it completes in its first poll (retries then happen
    /// on the timer task). With a custom router it is as cancel safe as the router's
    /// `route_message`.
    pub async fn send_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        #[cfg(feature = "nats")]
        if let Some(node) = self.shared.core.storing_node(&envelope.to) {
            let core = &self.shared.core;
            let id = envelope.id.clone();
            let waiting = core.dispatch_stored(node, &id, || core.dispatch_envelope(envelope))?;
            return match waiting {
                Some(waiting) => crate::cluster::stored(waiting).await,
                None => Ok(()),
            };
        }
        self.shared.core.send_message(envelope)
    }

    /// Sends a built message (`call`, `cast`, `info`, …) at `Normal` priority.
    ///
    /// # Cancel safety
    ///
    /// As [`send_message`](Self::send_message).
    pub async fn send(&self, to: &AgentPid, message: AgentMessage) -> MessagingResult<()> {
        self.send_with_priority(to, message, MessagePriority::Normal)
            .await
    }

    /// Sends a built message at `priority`.
    ///
    /// # Cancel safety
    ///
    /// As [`send_message`](Self::send_message).
    pub async fn send_with_priority(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        #[cfg(feature = "nats")]
        if let Some(node) = self.shared.core.storing_node(to) {
            let core = &self.shared.core;
            let id = message.id().clone();
            let waiting =
                core.dispatch_stored(node, &id, || core.dispatch_message(to, message, priority))?;
            return match waiting {
                Some(waiting) => crate::cluster::stored(waiting).await,
                None => Ok(()),
            };
        }
        self.shared.core.send_with_priority(to, message, priority)
    }

    /// Calls `to` with `payload` and waits for the reply (gen_server:call), without
    /// blocking the thread.
    ///
    /// No reply within `timeout` gives `MessageTimeout(to)` (the timeout sits on the
    /// system's timer wheel: no task or timer per call); a zero timeout fails at once
    /// without sending. A callee that drops the call gives `DeliveryFailed`.
    ///
    /// # Cancel safety
    ///
    /// The call is sent in the first poll. Dropping the future afterwards abandons the
    /// call: its timer is cancelled and a late reply is handed back to the replier
    /// (`reply_to.send` returns it as `Err`).
    pub async fn call<T: Any + Send>(
        &self,
        from: AgentPid,
        to: &AgentPid,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<Payload> {
        self.shared
            .core
            .call_async(from, to, payload, timeout)
            .await
    }

    /// [`call`](Self::call), taking the reply out as an `R` ([`Payload::take`]: no
    /// allocation for a small `R`); a reply of another type is `InvalidMessage`.
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn call_typed<R: Any, T: Any + Send>(
        &self,
        from: AgentPid,
        to: &AgentPid,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<R> {
        let reply = self.call(from, to, payload, timeout).await?;
        downcast_reply(to, reply)
    }

    /// Acknowledges a message sent with `require_ack: true`, ending its tracking.
    /// `UnknownMessage` if it is not awaiting an ack.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn acknowledge(&self, id: &MessageId) -> MessagingResult<()> {
        self.shared.core.acknowledge(id)
    }

    // ===== groups =====

    /// Creates a load-balanced group, addressed like an agent.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn create_group(&self, strategy: LoadBalance) -> MessagingResult<AgentPid> {
        self.shared.core.create_group(strategy)
    }

    /// Adds the registered agent `member` to `group`.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn join_group(&self, group: &AgentPid, member: &AgentPid) -> MessagingResult<()> {
        self.shared.core.join_group(group, member)
    }

    /// Removes `member` from `group`.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn leave_group(&self, group: &AgentPid, member: &AgentPid) -> MessagingResult<()> {
        self.shared.core.leave_group(group, member)
    }

    /// The members of `group`.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn group_members(&self, group: &AgentPid) -> MessagingResult<Vec<AgentPid>> {
        self.shared.core.group_members(group)
    }

    /// Removes `group`; its members stay registered.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn delete_group(&self, group: &AgentPid) -> MessagingResult<()> {
        self.shared.core.delete_group(group)
    }

    /// Queues `message` in `to`'s bounded mailbox, waiting up to `timeout` for room
    /// without blocking the thread (see [`crate::MessageSystem::send_timeout`]).
    ///
    /// # Cancel safety
    ///
    /// As [`MailboxSender::send_timeout`].
    // The error hands the message back, as `TrySendError` does: it is the message's size.
    #[allow(clippy::result_large_err)]
    pub async fn send_timeout(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        let sender = match self.shared.core.resolve_for_waiting(to) {
            Ok(sender) => MailboxSender::from(sender),
            Err(error) => return Err(SendTimeoutError { error, message }),
        };
        sender
            .send_timeout(message, MessagePriority::Normal, timeout)
            .await
            .map_err(|e| SendTimeoutError {
                error: e.to_error(to),
                message: e.into_inner(),
            })
    }

    // ===== user timers =====

    /// Sends `message` to `to` after `delay`, on the system's timer wheel (see
    /// [`crate::MessageSystem::send_after`]).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn send_after(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        delay: Duration,
    ) -> MessagingResult<TimerRef> {
        self.shared.core.send_after(to, message, delay)
    }

    /// Sends `make()` to `to` every `period` (see
    /// [`crate::MessageSystem::send_interval`]).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn send_interval(
        &self,
        to: &AgentPid,
        make: impl FnMut() -> AgentMessage + Send + 'static,
        period: Duration,
    ) -> MessagingResult<TimerRef> {
        self.shared.core.send_interval(to, make, period)
    }

    /// Cancels a timer; `true` if it was pending (or, an interval, running).
    pub fn cancel_timer(&self, timer: TimerRef) -> bool {
        self.shared.core.cancel_timer(timer)
    }

    // ===== signals and names =====

    /// Monitors `target` for `watcher` (see [`crate::MessageSystem::monitor`]).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn monitor(
        &self,
        watcher: &AgentPid,
        target: &AgentPid,
    ) -> MessagingResult<MonitorRef> {
        self.shared.core.monitor(watcher, target)
    }

    /// Removes a monitor; `true` if it had not fired yet.
    pub fn demonitor(&self, monitor: MonitorRef) -> bool {
        self.shared.core.demonitor(monitor)
    }

    /// Links `a` and `b` (see [`crate::MessageSystem::link`]).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn link(&self, a: &AgentPid, b: &AgentPid) -> MessagingResult<()> {
        self.shared.core.link(a, b)
    }

    /// Removes the link between `a` and `b`, if any.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn unlink(&self, a: &AgentPid, b: &AgentPid) -> MessagingResult<()> {
        self.shared.core.unlink(a, b)
    }

    /// Whether `pid` traps exits (see [`crate::MessageSystem::trap_exits`]).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn trap_exits(&self, pid: &AgentPid, trap: bool) -> MessagingResult<()> {
        self.shared.core.trap_exits(pid, trap)
    }

    /// Stops `pid` with `reason` (see [`crate::MessageSystem::exit`]). With a custom
    /// router, the router's `unregister_agent` is awaited first.
    ///
    /// # Cancel safety
    ///
    /// With the built-in router it completes in its first poll.
    pub async fn exit(&self, pid: &AgentPid, reason: &str) -> MessagingResult<()> {
        if let Some(router) = &self.shared.router {
            router.unregister_agent(pid).await?;
        }
        self.shared.core.exit(pid, reason)
    }

    /// Registers `name` for `pid` (see [`crate::MessageSystem::register_name`]).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn register_name(&self, name: &str, pid: &AgentPid) -> MessagingResult<()> {
        self.shared.core.register_name(name, pid)
    }

    /// Releases `name`; `true` if it was registered.
    pub fn unregister_name(&self, name: &str) -> bool {
        self.shared.core.unregister_name(name)
    }

    /// The agent registered as `name`, if any.
    pub fn whereis(&self, name: &str) -> Option<AgentPid> {
        self.shared.core.whereis(name)
    }

    /// Sends `message` to the agent registered as `name` (resolved now).
    ///
    /// # Cancel safety
    ///
    /// As [`send_message`](Self::send_message).
    pub async fn send_named(&self, name: &str, message: AgentMessage) -> MessagingResult<()> {
        self.shared.core.send_named(name, message)
    }

    /// Routes `envelope` to the agent registered as `name` (resolved now).
    ///
    /// # Cancel safety
    ///
    /// As [`send_message`](Self::send_message).
    pub async fn send_message_named(
        &self,
        name: &str,
        envelope: MessageEnvelope,
    ) -> MessagingResult<()> {
        self.shared.core.send_message_named(name, envelope)
    }

    /// [`call`](Self::call) to the agent registered as `name` (resolved now).
    ///
    /// # Cancel safety
    ///
    /// As [`call`](Self::call).
    pub async fn call_named<T: Any + Send>(
        &self,
        from: AgentPid,
        name: &str,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<Payload> {
        let to = self
            .shared
            .core
            .whereis(name)
            .ok_or_else(|| MessagingError::UnknownName(name.to_string()))?;
        self.call(from, &to, payload, timeout).await
    }

    // ===== observing =====

    /// Router counters and every mailbox's statistics.
    ///
    /// # Cancel safety
    ///
    /// Changes nothing; with the built-in router it completes in its first poll.
    pub async fn get_stats(&self) -> (RouterStats, Vec<MailboxStats>) {
        match &self.shared.router {
            Some(router) => (
                router.get_stats().await,
                self.shared.core.mailboxes().get_all_stats(),
            ),
            None => self.shared.core.get_stats(),
        }
    }

    /// The delivery ledger (see [`crate::MessageSystem::delivery_stats`]).
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.shared.core.delivery_stats()
    }

    /// The system's own delivery records through the seed's `DeliveryManager` API
    /// (see [`crate::MessageSystem::delivery_manager`]).
    pub fn delivery_manager(&self) -> DeliveryManager {
        self.shared.core.delivery_manager().into()
    }

    /// Takes every dead letter kept so far, oldest first (see
    /// [`crate::MessageSystem::dead_letters`]).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared.core.dead_letters()
    }

    /// Takes the dead letters kept so far whose reason is of `kind`, oldest first.
    pub fn dead_letters_of(&self, kind: DeadLetterKind) -> Vec<DeadLetter> {
        self.shared.core.dead_letters_of(kind)
    }

    /// Subscribes to the dead letters of `kinds` (see
    /// [`crate::MessageSystem::subscribe_dead_letters`]); await them with
    /// [`DeadLetterSubscription::recv_async`]. The subscription ends at `shutdown`.
    pub fn subscribe_dead_letters(
        &self,
        kinds: &[DeadLetterKind],
        capacity: usize,
    ) -> MessagingResult<DeadLetterSubscription> {
        self.shared.core.subscribe_dead_letters(kinds, capacity)
    }

    /// Dead letters ever recorded: kept, taken or dropped.
    pub fn dead_letter_count(&self) -> u64 {
        self.shared.core.dead_letter_count()
    }

    /// The dead-letter store's counters (see [`crate::MessageSystem::dead_letter_stats`]).
    pub fn dead_letter_stats(&self) -> DeadLetterStats {
        self.shared.core.dead_letter_stats()
    }

    /// Fires every retry and timeout due by the system's clock, and returns when the
    /// next one is due. Needed only with `TimerDriver::Manual`.
    pub fn run_due_timers(&self) -> Option<std::time::Instant> {
        self.shared.core.run_due_timers()
    }

    /// Publishes `agent`'s queue length under `name` (see
    /// [`crate::MessageSystem::watch_depth`]; cargo feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn watch_depth(&self, agent: &AgentPid, name: impl Into<String>) {
        self.shared.core.watch_depth(agent, name)
    }

    /// Publishes the system's counters and gauges now (see
    /// [`crate::MessageSystem::publish_metrics`]; cargo feature `metrics`).
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        self.shared.core.publish_metrics()
    }

    // ===== shutdown =====

    /// Stops the system: later operations fail, every mailbox closes (receivers drain
    /// what is queued, then get `ChannelClosed`), messages still awaiting a retry or an
    /// ack go to the dead letters, and the timer task ends. Idempotent.
    ///
    /// # Cancel safety
    ///
    /// With the built-in router the system is shut down in the first poll; dropping the
    /// future afterwards only skips waiting for the timer task to end. With a custom
    /// router, the mailboxes close after `router.shutdown()` returns.
    pub async fn shutdown(&self) -> MessagingResult<()> {
        let mut result = Ok(());
        if !self.shared.core.is_shut_down() {
            // A cluster node leaves first (the core's shutdown then finds it left).
            #[cfg(feature = "nats")]
            if let Some(node) = self.shared.core.cluster() {
                node.leave().await;
            }
            if let Some(router) = &self.shared.router {
                result = router.shutdown().await;
            }
            let core = self.shared.core.shutdown();
            result = result.and(core);
        }
        if let Some(timers) = &self.shared.timers {
            timers.stop().await;
        }
        result
    }

    /// Whether `shutdown` has run.
    pub fn is_shut_down(&self) -> bool {
        self.shared.core.is_shut_down()
    }

    /// The node `agent_id` lives on, as this node sees it (see
    /// [`crate::MessageSystem::cluster_node_of`]).
    #[cfg(feature = "nats")]
    pub fn cluster_node_of(&self, agent_id: &AgentPid) -> Option<String> {
        self.shared.core.cluster_node_of(agent_id)
    }

    /// This cluster node's counters (see [`crate::MessageSystem::cluster_stats`]).
    #[cfg(feature = "nats")]
    pub fn cluster_stats(&self) -> Option<crate::ClusterStats> {
        self.shared.core.cluster_stats()
    }
}

impl From<crate::MessageSystem> for MessageSystem {
    fn from(core: crate::MessageSystem) -> Self {
        Self::from_core(core)
    }
}

impl fmt::Debug for MessageSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSystem")
            .field("core", &self.shared.core)
            .field("custom_router", &self.shared.router.is_some())
            .field("timer_task", &self.has_timer_task())
            .finish()
    }
}

impl fmt::Debug for MessageSystemBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSystemBuilder")
            .field("driver", &self.driver)
            .field("custom_router", &self.router.is_some())
            .finish_non_exhaustive()
    }
}
