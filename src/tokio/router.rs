//! The async [`MessageRouter`] trait, as the seed's "Custom Message Router" writes it.
//!
//! A tokio [`MessageSystem`](super::MessageSystem) runs on a custom router with
//! [`MessageSystem::with_router`](super::MessageSystem::with_router): the system keeps
//! owning the mailboxes and hands each registered agent's [`MailboxSender`] to
//! [`register_agent`](MessageRouter::register_agent); `send_message` goes through
//! [`route_message`](MessageRouter::route_message), `send` and `call` through
//! [`route`](MessageRouter::route).

use async_trait::async_trait;

use super::mailbox::MailboxSender;
use crate::error::{MessagingError, MessagingResult};
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority};
use crate::router::{DefaultMessageRouter, RouterStats};

/// How messages find their destination (async; implement it with `#[async_trait]`).
///
/// Only [`route_message`](Self::route_message) and
/// [`register_agent`](Self::register_agent) are required; the others have defaults.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use terraphim_agent_messaging::tokio::{
///     async_trait, AgentPid, MailboxSender, MessageEnvelope, MessageRouter, MessagingError,
///     MessagingResult,
/// };
///
/// #[derive(Default)]
/// struct MapRouter {
///     routes: Mutex<HashMap<AgentPid, MailboxSender>>,
/// }
///
/// #[async_trait]
/// impl MessageRouter for MapRouter {
///     async fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
///         let sender = self.routes.lock().unwrap().get(&envelope.to).cloned();
///         let sender = sender.ok_or_else(|| MessagingError::AgentNotFound(envelope.to.clone()))?;
///         sender.send(envelope.into_message()).await
///     }
///
///     async fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()> {
///         self.routes.lock().unwrap().insert(agent_id, sender);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait MessageRouter: Send + Sync {
    /// Routes `envelope` to its destination.
    async fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()>;

    /// Makes `agent_id` reachable through `sender`.
    async fn register_agent(
        &self,
        agent_id: AgentPid,
        sender: MailboxSender,
    ) -> MessagingResult<()>;

    /// Makes `agent_id` unreachable. The default does nothing (the system closes the
    /// agent's mailbox anyway, so its sender fails with `ChannelClosed`).
    async fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        let _ = agent_id;
        Ok(())
    }

    /// The router's counters. The default reports zeros.
    async fn get_stats(&self) -> RouterStats {
        RouterStats::default()
    }

    /// Stops routing. The default does nothing.
    async fn shutdown(&self) -> MessagingResult<()> {
        Ok(())
    }

    /// Routes an already-built message (`MessageSystem::send`, `call`). Routers that
    /// only handle envelopes keep this default, which refuses with a clear error.
    async fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        let _ = (message, priority);
        Err(crate::router::envelopes_only(to))
    }
}

/// The built-in router, usable through the async trait (as in the seed). Every method
/// completes in its first poll.
#[async_trait]
impl MessageRouter for DefaultMessageRouter {
    async fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        crate::MessageRouter::route_message(self, envelope)
    }

    async fn register_agent(
        &self,
        agent_id: AgentPid,
        sender: MailboxSender,
    ) -> MessagingResult<()> {
        crate::MessageRouter::register_agent(self, agent_id, sender.into_sync())
    }

    async fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        crate::MessageRouter::unregister_agent(self, agent_id)
    }

    async fn get_stats(&self) -> RouterStats {
        crate::MessageRouter::get_stats(self)
    }

    async fn shutdown(&self) -> MessagingResult<()> {
        crate::MessageRouter::shutdown(self)
    }

    async fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        crate::MessageRouter::route(self, to, message, priority)
    }
}

/// The sync router inside the core of a system that routes through an async router:
/// registration bookkeeping succeeds, routing through the core directly is refused
/// (it would bypass the async router).
pub(crate) struct AsyncRouted;

impl crate::MessageRouter for AsyncRouted {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        Err(refused(&envelope.to))
    }

    fn register_agent(&self, _: AgentPid, _: crate::MailboxSender) -> MessagingResult<()> {
        Ok(())
    }

    fn unregister_agent(&self, _: &AgentPid) -> MessagingResult<()> {
        Ok(())
    }

    fn get_stats(&self) -> RouterStats {
        RouterStats::default()
    }

    fn shutdown(&self) -> MessagingResult<()> {
        Ok(())
    }

    fn route(&self, to: &AgentPid, _: AgentMessage, _: MessagePriority) -> MessagingResult<()> {
        Err(refused(to))
    }
}

fn refused(to: &AgentPid) -> MessagingError {
    MessagingError::DeliveryFailed(
        to.clone(),
        "this system routes through an async router: send through the tokio MessageSystem".into(),
    )
}
