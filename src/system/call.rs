//! [`CallFuture`]: a call awaited on any executor, its timeout on the system's wheel.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::delivery::engine::Engine;
use crate::error::{MessagingError, MessagingResult};
use crate::message::{AgentPid, Payload, ReplyError, ReplyReceiver};
use crate::timer::TimerKey;

/// The future of [`MessageSystem::call_async`].
pub struct CallFuture {
    state: CallState,
    to: AgentPid,
}

enum CallState {
    Waiting {
        reply: ReplyReceiver,
        timer: Option<(TimerKey, std::sync::Arc<Engine>)>,
    },
    Failed(MessagingError),
    Done,
}

impl CallFuture {
    pub(super) fn waiting(
        to: AgentPid,
        reply: ReplyReceiver,
        timer: Option<(TimerKey, std::sync::Arc<Engine>)>,
    ) -> Self {
        CallFuture {
            state: CallState::Waiting { reply, timer },
            to,
        }
    }

    pub(super) fn failed(e: MessagingError) -> Self {
        CallFuture {
            state: CallState::Failed(e),
            to: AgentPid::nil(),
        }
    }

    fn cancel_timer(&mut self) {
        if let CallState::Waiting { timer, .. } = &mut self.state {
            if let Some((key, engine)) = timer.take() {
                engine.cancel_call_timeout(key);
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

/// A call's reply as an `R`, or `InvalidMessage` naming the type it is not (both
/// flavours' `call_typed`).
pub(crate) fn downcast_reply<R: Any>(to: &AgentPid, reply: Payload) -> MessagingResult<R> {
    reply.downcast::<R>().map(|r| *r).map_err(|_| {
        MessagingError::InvalidMessage(format!(
            "reply from {to} is not a {}",
            std::any::type_name::<R>()
        ))
    })
}
