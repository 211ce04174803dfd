//! [`CallFuture`]: a call awaited on any executor, its timeout on the system's wheel;
//! and what every call reports when it ends (`observe_call`), in both flavours.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::delivery::call_timers::CallTimerKey;
use crate::delivery::engine::Engine;
use crate::error::{MessagingError, MessagingResult};
use crate::message::{AgentPid, Payload, ReplyError, ReplyReceiver};
use crate::observe::events::{self, CallSpan};
use crate::observe::meters::{CallOutcome, CallTimer};

/// The future of [`MessageSystem::call_async`](crate::MessageSystem::call_async).
pub struct CallFuture {
    state: CallState,
    to: AgentPid,
}

enum CallState {
    Waiting(Waiting),
    Failed(MessagingError),
    Done,
}

/// A call sent, its reply awaited.
pub(super) struct Waiting {
    pub(super) reply: ReplyReceiver,
    /// The call's timeout on the system's wheel (`None`: it had passed already).
    pub(super) timer: Option<CallTimerKey>,
    pub(super) engine: std::sync::Arc<Engine>,
    /// Entered on every poll, so the reply is awaited inside the call's span.
    pub(super) span: CallSpan,
    pub(super) clock: CallTimer,
}

impl CallFuture {
    pub(super) fn waiting(to: AgentPid, waiting: Waiting) -> Self {
        CallFuture {
            state: CallState::Waiting(waiting),
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
        if let CallState::Waiting(waiting) = &mut self.state {
            if let Some(key) = waiting.timer.take() {
                waiting.engine.cancel_call_timeout(key);
            }
        }
    }
}

impl Future for CallFuture {
    type Output = MessagingResult<Payload>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match &mut this.state {
            CallState::Waiting(waiting) => {
                let _in_call = waiting.span.enter();
                match Pin::new(&mut waiting.reply).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.map_err(|e| reply_error(&this.to, e)),
                }
            }
            CallState::Failed(_) => match std::mem::replace(&mut this.state, CallState::Done) {
                CallState::Failed(e) => return Poll::Ready(Err(e)),
                _ => unreachable!("matched Failed"),
            },
            CallState::Done => panic!("CallFuture polled after completion"),
        };
        this.cancel_timer();
        if let CallState::Waiting(waiting) = std::mem::replace(&mut this.state, CallState::Done) {
            let _in_call = waiting.span.enter();
            observe_call(
                &waiting.engine,
                &this.to,
                outcome.as_ref().map(|_| ()),
                waiting.clock,
            );
        }
        Poll::Ready(outcome)
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        self.cancel_timer();
    }
}

/// Reports how a call to `to` ended (inside its span, if the caller entered it): its
/// event, its outcome counter and, for an answered call picked for timing, its round
/// trip. A call future dropped before it resolves reports nothing.
pub(crate) fn observe_call(
    engine: &Engine,
    to: &AgentPid,
    outcome: Result<(), &MessagingError>,
    clock: CallTimer,
) {
    match outcome {
        Ok(()) => {
            events::call_answered(to);
            clock.answered();
            engine.count_call(CallOutcome::Ok);
        }
        Err(MessagingError::MessageTimeout(_)) => {
            events::call_timed_out(to);
            engine.count_call(CallOutcome::Timeout);
        }
        Err(e) => {
            events::call_failed(to, e);
            engine.count_call(CallOutcome::Failed);
        }
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
    reply.take::<R>().map_err(|_| {
        MessagingError::InvalidMessage(format!(
            "reply from {to} is not a {}",
            std::any::type_name::<R>()
        ))
    })
}
