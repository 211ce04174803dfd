//! Routing: from an envelope's destination pid to a mailbox lane.
//!
//! [`MessageRouter`] is the seam for custom routing; [`DefaultMessageRouter`] looks the
//! destination up in the agent table and pushes into its mailbox.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::delivery::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters, DeadMessage};
use crate::delivery::DeliveryConfig;
use crate::error::{MessagingError, MessagingResult, TrySendError};
use crate::mailbox::MailboxSender;
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority};
use crate::stats::Counter;
use crate::sync::{Arc, AtomicBool};
use crate::table::{AgentTable, InsertError};

/// Router configuration: the seed's four fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Delivery guarantees, retries and acknowledgements.
    pub delivery_config: DeliveryConfig,
    /// How often the retry driver re-examines work it could not finish (see `driver`).
    pub retry_interval: Duration,
    /// Upper bound on messages in flight (tracked for retry or ack) at once.
    pub max_concurrent_deliveries: usize,
    /// Whether the router keeps its counters (off saves a few atomics per send).
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

/// Router counters.
///
/// `messages_routed = messages_delivered + messages_failed + messages_pending`; every
/// failed message is in the dead letters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouterStats {
    /// Messages accepted for routing.
    pub messages_routed: u64,
    /// Messages put into a mailbox.
    pub messages_delivered: u64,
    /// Messages given up on (dead-lettered).
    pub messages_failed: u64,
    /// Registered destinations.
    pub active_routes: usize,
    /// Redelivery attempts.
    pub retry_attempts: u64,
    /// Messages still waiting for a retry or an acknowledgement.
    pub messages_pending: u64,
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
        Err(MessagingError::DeliveryFailed(
            to.clone(),
            "this router only routes envelopes".into(),
        ))
    }
}

/// Router counters, kept contention-free.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) routed: Counter,
    pub(crate) delivered: Counter,
    pub(crate) failed: Counter,
    pub(crate) retries: Counter,
}

/// The built-in router: a table lookup, then a push into the destination's lane.
pub struct DefaultMessageRouter {
    config: RouterConfig,
    table: Arc<AgentTable>,
    dead_letters: Arc<DeadLetters>,
    metrics: Metrics,
    shut_down: AtomicBool,
}

impl DefaultMessageRouter {
    /// A router with an empty table.
    pub fn new(config: RouterConfig) -> Self {
        Self::with_parts(
            config,
            Arc::new(AgentTable::new()),
            Arc::new(DeadLetters::default()),
        )
    }

    pub(crate) fn with_parts(
        config: RouterConfig,
        table: Arc<AgentTable>,
        dead_letters: Arc<DeadLetters>,
    ) -> Self {
        DefaultMessageRouter {
            config,
            table,
            dead_letters,
            metrics: Metrics::default(),
            shut_down: AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Pushes `message` into `to`'s mailbox once. A refused message is dead-lettered
    /// and reported.
    #[inline]
    pub(crate) fn deliver(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        let metrics = self.config.enable_metrics;
        if metrics {
            self.metrics.routed.incr();
        }
        let mut message = Some(message);
        let outcome = self.table.with(to, |mailbox| {
            mailbox.try_send(message.take().expect("sent once"), priority)
        });
        match outcome {
            Some(Ok(())) => {
                if metrics {
                    self.metrics.delivered.incr();
                }
                Ok(())
            }
            Some(Err(refused)) => {
                let err = refused.to_error(to);
                let reason = match refused {
                    TrySendError::Full(_) => DeadLetterReason::MailboxFull,
                    TrySendError::Closed(_) => DeadLetterReason::MailboxClosed,
                };
                self.give_up(to, DeadMessage::Message(refused.into_inner()), reason);
                Err(err)
            }
            None => {
                if let Some(message) = message {
                    self.give_up(
                        to,
                        DeadMessage::Message(message),
                        DeadLetterReason::AgentNotFound,
                    );
                }
                Err(MessagingError::AgentNotFound(to.clone()))
            }
        }
    }

    fn give_up(&self, to: &AgentPid, message: DeadMessage, reason: DeadLetterReason) {
        if self.config.enable_metrics {
            self.metrics.failed.incr();
        }
        let id = match &message {
            DeadMessage::Envelope(e) => e.id.clone(),
            DeadMessage::Message(m) => m.id().clone(),
        };
        self.dead_letters.push(DeadLetter {
            id,
            to: to.clone(),
            reason,
            attempts: 1,
            message,
        });
    }

    /// Takes the dead letters of this router.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.drain()
    }

    fn check_running(&self) -> MessagingResult<()> {
        if self.shut_down.load(Relaxed) {
            Err(MessagingError::System("the router is shut down".into()))
        } else {
            Ok(())
        }
    }
}

impl MessageRouter for DefaultMessageRouter {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.check_running()?;
        let to = envelope.to.clone();
        let priority = envelope.delivery_options.priority;
        self.deliver(&to, envelope.into_message(), priority)
    }

    fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()> {
        self.check_running()?;
        if sender.agent_id() != &agent_id {
            return Err(MessagingError::InvalidMessage(format!(
                "sender for {} registered as {agent_id}",
                sender.agent_id()
            )));
        }
        match self.table.insert(sender.shared().clone()) {
            Ok(_) => Ok(()),
            Err(InsertError::Duplicate) => Err(MessagingError::DuplicateAgent(agent_id)),
            Err(InsertError::Full) => Err(MessagingError::System("agent table full".into())),
        }
    }

    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        let mailbox = self
            .table
            .remove(agent_id)
            .ok_or_else(|| MessagingError::AgentNotFound(agent_id.clone()))?;
        mailbox.close();
        Ok(())
    }

    fn get_stats(&self) -> RouterStats {
        let delivered = self.metrics.delivered.get();
        let failed = self.metrics.failed.get();
        RouterStats {
            messages_routed: self.metrics.routed.get().max(delivered + failed),
            messages_delivered: delivered,
            messages_failed: failed,
            active_routes: self.table.len(),
            retry_attempts: self.metrics.retries.get(),
            messages_pending: 0,
        }
    }

    fn shutdown(&self) -> MessagingResult<()> {
        self.shut_down.store(true, Relaxed);
        for mailbox in self.table.clear() {
            mailbox.close();
        }
        Ok(())
    }

    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.check_running()?;
        self.deliver(to, message, priority)
    }
}

impl fmt::Debug for DefaultMessageRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultMessageRouter")
            .field("config", &self.config)
            .field("agents", &self.table.len())
            .finish()
    }
}
