//! [`MessageSystem`]: agents, mailboxes and routing wired together.

use std::any::Any;
use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::delivery::dead_letter::{DeadLetter, DeadLetters};
use crate::delivery::DeliveryStats;
use crate::driver::{Fire, TimerDriver};
use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::shared::Settings;
use crate::mailbox::{AgentMailbox, MailboxConfig, MailboxManager, MailboxSender, MailboxStats};
use crate::message::{
    AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority, Payload, ReplyError,
    ReplyReceiver,
};
use crate::router::default::Parts;
use crate::router::group::Group;
use crate::router::{
    CircuitBreakerConfig, DefaultMessageRouter, LoadBalance, MessageRouter, RouterConfig,
    RouterStats,
};
use crate::sync::{Arc, AtomicBool};
use crate::table::{AgentTable, InsertError};
use crate::timer::{Clock, SystemClock, TimerKey};

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
    // A std `Arc`: the driver thread holds a `Weak` to the router inside.
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    config: RouterConfig,
    /// Set when the configuration was refused: every operation reports it.
    config_error: Option<String>,
    mailboxes: MailboxManager,
    routing: Routing,
    dead_letters: Arc<DeadLetters>,
    shut_down: AtomicBool,
}

/// Who routes: the built-in router over the system's own table, or a custom one.
enum Routing {
    Default(std::sync::Arc<DefaultMessageRouter>),
    Custom(std::sync::Arc<dyn MessageRouter>),
}

/// Builds a [`MessageSystem`] with options beyond `RouterConfig`.
pub struct MessageSystemBuilder {
    config: RouterConfig,
    mailbox_config: MailboxConfig,
    starvation_budget: Option<u32>,
    router: Option<std::sync::Arc<dyn MessageRouter>>,
    breaker: Option<CircuitBreakerConfig>,
    clock: Option<std::sync::Arc<dyn Clock>>,
    timer_driver: TimerDriver,
}

impl MessageSystemBuilder {
    /// A circuit breaker per destination: open after `failure_threshold` consecutive
    /// refused deliveries, half-open (one probe) after `reset_timeout`, closed after a
    /// success. While open, sends fail with `CircuitOpen` (`AtMostOnce`) or are
    /// retried after the reset timeout.
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// The clock retries, timeouts and breakers read (default: the system clock).
    /// Pair a `ManualClock` with [`TimerDriver::Manual`] and drive timers with
    /// [`MessageSystem::run_due_timers`].
    pub fn clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Who turns the timer wheel (default: a thread per system).
    pub fn timer_driver(mut self, driver: TimerDriver) -> Self {
        self.timer_driver = driver;
        self
    }

    /// The configuration of every mailbox the system creates.
    pub fn mailbox_config(mut self, config: MailboxConfig) -> Self {
        self.mailbox_config = config;
        self
    }

    /// Anti-starvation budget of every mailbox: a lower priority is served after being
    /// passed over this many times (0 = strict priority order). Overrides the default
    /// that `MailboxConfig::preserve_order` implies.
    pub fn starvation_budget(mut self, budget: u32) -> Self {
        self.starvation_budget = Some(budget);
        self
    }

    /// Routes through a custom router. The system still owns the mailboxes: it passes
    /// each registered agent's sender to `router.register_agent`.
    pub fn router(mut self, router: std::sync::Arc<dyn MessageRouter>) -> Self {
        self.router = Some(router);
        self
    }

    /// Builds the system, refusing a bad configuration.
    pub fn build(self) -> MessagingResult<MessageSystem> {
        let system = self.build_unchecked();
        match &system.inner.config_error {
            Some(e) => Err(MessagingError::Configuration(e.clone())),
            None => Ok(system),
        }
    }

    fn build_unchecked(self) -> MessageSystem {
        let mut config_error = validate_router_config(&self.config)
            .and_then(|()| self.mailbox_config.validate())
            .err();
        let dead_letters = Arc::new(DeadLetters::default());
        let settings = Arc::new(Settings::new(
            self.mailbox_config,
            self.starvation_budget,
            dead_letters.clone(),
        ));
        let table = Arc::new(AgentTable::new());
        let mailboxes = MailboxManager::with_parts(table.clone(), settings);
        let parts = Parts {
            table,
            dead_letters: dead_letters.clone(),
            clock: self
                .clock
                .unwrap_or_else(|| std::sync::Arc::new(SystemClock)),
            driver: self.timer_driver,
            breaker: self.breaker,
        };
        let routing = match self.router {
            Some(router) => Routing::Custom(router),
            None => match DefaultMessageRouter::with_parts(self.config.clone(), parts) {
                Ok(router) => {
                    let router = std::sync::Arc::new(router);
                    let fire: std::sync::Arc<dyn Fire> = router.clone();
                    let weak = std::sync::Arc::downgrade(&fire);
                    router.attach(weak);
                    Routing::Default(router)
                }
                Err(e) => {
                    config_error.get_or_insert_with(|| e.to_string());
                    let fallback = DefaultMessageRouter::new(RouterConfig::default());
                    Routing::Default(std::sync::Arc::new(fallback))
                }
            },
        };
        MessageSystem {
            inner: std::sync::Arc::new(Inner {
                config: self.config,
                config_error,
                mailboxes,
                routing,
                dead_letters,
                shut_down: AtomicBool::new(false),
            }),
        }
    }
}

fn validate_router_config(config: &RouterConfig) -> Result<(), String> {
    if config.retry_interval.is_zero() {
        return Err("retry_interval must be greater than zero".into());
    }
    if config.max_concurrent_deliveries == 0 {
        return Err("max_concurrent_deliveries must be at least 1".into());
    }
    if config.delivery_config.max_delivery_records == 0 {
        return Err("delivery_config.max_delivery_records must be at least 1 (it bounds the exactly-once window)".into());
    }
    Ok(())
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
        MessageSystemBuilder {
            config,
            mailbox_config: MailboxConfig::default(),
            starvation_budget: None,
            router: None,
            breaker: None,
            clock: None,
            timer_driver: TimerDriver::Thread,
        }
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
    pub fn register_agent(&self, agent_id: AgentPid) -> MessagingResult<()> {
        self.check()?;
        if agent_id.is_nil() {
            return Err(MessagingError::InvalidMessage(
                "the nil pid means \"no sender\" and cannot be registered".into(),
            ));
        }
        let sender = self.inner.mailboxes.create_mailbox(agent_id.clone())?;
        if let Routing::Custom(router) = &self.inner.routing {
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
    pub fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        if let Routing::Custom(router) = &self.inner.routing {
            router.unregister_agent(agent_id)?;
        }
        self.inner.mailboxes.remove_mailbox(agent_id)?;
        // A member that goes away leaves its groups.
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
        match &self.inner.routing {
            Routing::Default(router) => router.dispatch_envelope(envelope),
            Routing::Custom(router) => router.route_message(envelope),
        }
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
        match &self.inner.routing {
            Routing::Default(router) => router.dispatch_message(to, message, priority),
            Routing::Custom(router) => router.route(to, message, priority),
        }
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
        let router = match &self.inner.routing {
            Routing::Default(router) => router.clone(),
            Routing::Custom(_) => {
                return CallFuture::failed(MessagingError::Configuration(
                    "call_async needs the default router's timer wheel".into(),
                ))
            }
        };
        let (message, reply) = AgentMessage::call(from, payload, timeout);
        if let Err(e) = self.send(&to, message) {
            return CallFuture::failed(e);
        }
        let timer = router.schedule_call_timeout(&reply, timeout);
        CallFuture {
            state: CallState::Waiting {
                reply,
                timer: timer.map(|key| (key, router)),
            },
            to,
        }
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
        reply.downcast::<R>().map(|r| *r).map_err(|_| {
            MessagingError::InvalidMessage(format!(
                "reply from {to} is not a {}",
                std::any::type_name::<R>()
            ))
        })
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
        let router = match &self.inner.routing {
            Routing::Default(router) => router.get_stats(),
            Routing::Custom(router) => router.get_stats(),
        };
        (router, self.inner.mailboxes.get_all_stats())
    }

    /// Acknowledges a message sent with `require_ack: true`, ending its tracking.
    /// `UnknownMessage` if it is not awaiting an ack (already acknowledged, given up
    /// on, or never asked for one).
    pub fn acknowledge(&self, id: &MessageId) -> MessagingResult<()> {
        match &self.inner.routing {
            Routing::Default(router) => router.acknowledge(id),
            Routing::Custom(_) => Err(MessagingError::UnknownMessage(id.clone())),
        }
    }

    /// Fires every retry and timeout due by the system's clock, and returns when the
    /// next one is due. Needed only with [`TimerDriver::Manual`]; the default driver
    /// thread does this by itself.
    pub fn run_due_timers(&self) -> Option<Instant> {
        match &self.inner.routing {
            Routing::Default(router) => router.run_due_timers(),
            Routing::Custom(_) => None,
        }
    }

    /// The delivery ledger: every accepted message is delivered, acknowledged, failed,
    /// expired, a suppressed duplicate, or still pending (see `DeliveryStats`).
    /// All zero with a custom router.
    pub fn delivery_stats(&self) -> DeliveryStats {
        match &self.inner.routing {
            Routing::Default(router) => router.delivery_stats(),
            Routing::Custom(_) => DeliveryStats::default(),
        }
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
        let result = match &self.inner.routing {
            Routing::Default(router) => router.shutdown(),
            Routing::Custom(router) => router.shutdown(),
        };
        self.inner.mailboxes.close_all();
        result
    }

    /// Whether `shutdown` has run.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Acquire)
    }
}

/// The future of [`MessageSystem::call_async`].
pub struct CallFuture {
    state: CallState,
    to: AgentPid,
}

enum CallState {
    Waiting {
        reply: ReplyReceiver,
        timer: Option<(TimerKey, std::sync::Arc<DefaultMessageRouter>)>,
    },
    Failed(MessagingError),
    Done,
}

impl CallFuture {
    fn failed(e: MessagingError) -> Self {
        CallFuture {
            state: CallState::Failed(e),
            to: AgentPid::nil(),
        }
    }

    fn cancel_timer(&mut self) {
        if let CallState::Waiting { timer, .. } = &mut self.state {
            if let Some((key, router)) = timer.take() {
                router.cancel_call_timeout(key);
            }
        }
    }
}

impl Future for CallFuture {
    type Output = MessagingResult<Payload>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match &mut this.state {
            CallState::Waiting { reply, .. } => match Pin::new(reply).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.map_err(|e| reply_error(&this.to, e)),
            },
            CallState::Failed(_) => match std::mem::replace(&mut this.state, CallState::Done) {
                CallState::Failed(e) => return Poll::Ready(Err(e)),
                _ => unreachable!("matched Failed"),
            },
            CallState::Done => panic!("CallFuture polled after completion"),
        };
        this.cancel_timer();
        this.state = CallState::Done;
        Poll::Ready(outcome)
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        self.cancel_timer();
    }
}

impl fmt::Debug for CallFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFuture").field("to", &self.to).finish()
    }
}

/// The error a caller sees when no reply came: the timeout passed, or the callee
/// dropped the call.
pub(crate) fn reply_error(to: &AgentPid, e: ReplyError) -> MessagingError {
    match e {
        ReplyError::Timeout => MessagingError::MessageTimeout(to.clone()),
        ReplyError::Closed => MessagingError::DeliveryFailed(
            to.clone(),
            "the call was dropped without a reply".into(),
        ),
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
