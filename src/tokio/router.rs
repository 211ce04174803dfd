//! The async [`MessageRouter`] trait, as the seed's "Custom Message Router" writes it.
//!
//! A tokio [`MessageSystem`](super::MessageSystem) runs on a custom router with
//! [`MessageSystem::with_router`](super::MessageSystem::with_router): the system keeps
//! owning the mailboxes and hands each registered agent's [`MailboxSender`] to
//! [`register_agent`](MessageRouter::register_agent); `send_message` goes through
//! [`route_message`](MessageRouter::route_message), `send` and `call` through
//! [`route`](MessageRouter::route).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;

use super::mailbox::MailboxSender;
use crate::error::MessagingResult;
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority};
use crate::router::RouterStats;
use crate::system::DefaultMessageRouter;

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

/// A custom async router as the sync [`crate::MessageRouter`] the delivery engine
/// attempts through: the engine's retries, acks, breakers and ledger then work for it as
/// for the built-in routes.
///
/// Only routing goes through here; registration, statistics and shutdown are awaited on
/// the router by the tokio `MessageSystem` itself, so those methods do nothing.
///
/// A routing future is polled in place, with the mailbox handback active in every poll.
/// Routers over the system's mailboxes complete in their first poll (the mailboxes'
/// sends never wait). One that waits on something real is driven to completion on the
/// calling thread, which it blocks meanwhile: such a router must not wait on a task
/// that only the calling thread's runtime would run.
pub(crate) struct PolledRouter {
    router: Arc<dyn MessageRouter>,
}

impl PolledRouter {
    pub(crate) fn new(router: Arc<dyn MessageRouter>) -> Self {
        PolledRouter { router }
    }

    fn complete<'a>(
        &self,
        attempt: Pin<Box<dyn Future<Output = MessagingResult<()>> + Send + 'a>>,
    ) -> MessagingResult<()> {
        let mut attempt = attempt;
        let waker = std::task::Waker::noop();
        if let Poll::Ready(result) = attempt.as_mut().poll(&mut Context::from_waker(waker)) {
            return result;
        }
        // Pending: drive it to completion here, parking between polls.
        let thread = std::thread::current();
        let waker = std::task::Waker::from(Arc::new(Unpark(thread)));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(result) = attempt.as_mut().poll(&mut cx) {
                return result;
            }
            std::thread::park();
        }
    }
}

/// Wakes a thread parked in `PolledRouter::complete`.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl crate::MessageRouter for PolledRouter {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.complete(self.router.route_message(envelope))
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

    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.complete(self.router.route(to, message, priority))
    }
}
