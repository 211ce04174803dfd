//! [`DefaultMessageRouter`]: the built-in routing on its own, as a [`MessageRouter`].
//!
//! A `MessageSystem` routes through its own table without one; this type is for code
//! that wants the built-in router as a value (as the 1.x crate offered): a system with
//! no mailboxes of its own, into which `register_agent` adopts the mailbox behind each
//! sender it is given. Its timers are driven by hand
//! ([`run_due_timers`](DefaultMessageRouter::run_due_timers)).

use std::fmt;
use std::time::Instant;

use super::MessageSystem;
use crate::dead_letter::DeadLetter;
use crate::delivery::{DeliveryConfig, DeliveryStats, RetryPolicy, RouterConfig};
use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::MailboxSender;
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority};
use crate::router::{MessageRouter, RouterStats};
use crate::timer::driver::TimerDriver;

/// The built-in router: the system's delivery engine over a table of the mailboxes
/// registered with it.
pub struct DefaultMessageRouter {
    system: MessageSystem,
}

impl DefaultMessageRouter {
    /// A router with an empty table. Its timers are driven by hand
    /// ([`run_due_timers`](Self::run_due_timers)).
    ///
    /// A refused `delivery_config` falls back to the defaults for the retry policy;
    /// use [`DefaultMessageRouter::try_new`] to get the error instead.
    pub fn new(config: RouterConfig) -> Self {
        let mut config = config;
        if RetryPolicy::from_config(&config.delivery_config).is_err() {
            config.delivery_config = DeliveryConfig {
                guarantee: config.delivery_config.guarantee,
                ..Default::default()
            };
        }
        Self::build(config)
    }

    /// A router with an empty table, refusing a bad configuration.
    pub fn try_new(config: RouterConfig) -> MessagingResult<Self> {
        RetryPolicy::from_config(&config.delivery_config).map_err(MessagingError::Configuration)?;
        Ok(Self::build(config))
    }

    fn build(config: RouterConfig) -> Self {
        let system = MessageSystem::builder(config)
            .timer_driver(TimerDriver::Manual)
            .build_unchecked();
        DefaultMessageRouter { system }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        self.system.config()
    }

    /// Takes the dead letters of this router.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.system.dead_letters()
    }

    /// Fires every retry and timeout due by the router's clock. Returns when the next
    /// one is due.
    pub fn run_due_timers(&self) -> Option<Instant> {
        self.system.run_due_timers()
    }

    /// The delivery ledger (see `DeliveryStats`).
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.system.delivery_stats()
    }
}

impl MessageRouter for DefaultMessageRouter {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.system.send_message(envelope)
    }

    fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()> {
        if sender.agent_id() != &agent_id {
            return Err(MessagingError::InvalidMessage(format!(
                "sender for {} registered as {agent_id}",
                sender.agent_id()
            )));
        }
        self.system.check()?;
        self.system.mailboxes().adopt(&sender)
    }

    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.system.mailboxes().remove_mailbox(agent_id)
    }

    fn get_stats(&self) -> RouterStats {
        self.system.get_stats().0
    }

    fn shutdown(&self) -> MessagingResult<()> {
        self.system.shutdown()
    }

    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.system.send_with_priority(to, message, priority)
    }
}

impl fmt::Debug for DefaultMessageRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultMessageRouter")
            .field("config", self.config())
            .field("destinations", &self.system.mailboxes().len())
            .finish()
    }
}
