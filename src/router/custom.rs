//! [`CustomRoutes`]: a user's [`MessageRouter`] behind the engine's [`Destination`]
//! interface, so that retries, acks, breakers and the ledger work the same as with the
//! system's own table.
//!
//! One attempt calls `route_message` for an envelope and `route` for a built message,
//! and reads the router's answer:
//!
//! | the router returned | outcome |
//! |---|---|
//! | `Ok` | `Done`: the router took the message |
//! | `MailboxFull`, `CircuitOpen`, `Overloaded` | `Refused`: retried per the guarantee |
//! | `ChannelClosed` | `Closed` |
//! | `AgentNotFound` | `NotFound` |
//! | any other error | `Failed`, reported to the sender as it is |
//!
//! The message comes back for a retry or a dead letter: an envelope from a copy kept
//! for the attempt (custom routers are a cold path), a built message through the
//! mailbox handback (`MailboxSender::send` refused inside the attempt parks it for the
//! engine instead of dead-lettering it).
//!
//! Breakers are kept per destination pid, beside the router (the table keeps them in
//! the mailbox, where the fast path finds them): a pid gets one at its first failure,
//! and loses it when it is unregistered.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use ahash::AHasher;

use super::{Destination, MessageRouter, Push, Refusal};
#[cfg(feature = "metrics")]
use crate::breaker::BreakerState;
use crate::breaker::{Admission, Breaker, BreakerSettings};
use crate::error::MessagingError;
use crate::mailbox::handback;
use crate::message::{AgentPid, MessagePriority, Outgoing};
use crate::stats::Counter;
use crate::sync::{lock, Mutex};
use crate::timer::service::TimerService;

type PidMap<V> = HashMap<AgentPid, V, BuildHasherDefault<AHasher>>;

/// A custom router as a [`Destination`].
pub(crate) struct CustomRoutes {
    router: std::sync::Arc<dyn MessageRouter>,
    breaker: Option<BreakerSettings>,
    /// One breaker per destination pid that has had a failure (or an open breaker).
    breakers: Mutex<PidMap<std::sync::Arc<Breaker>>>,
    timers: std::sync::Arc<TimerService>,
    /// Times a destination's breaker opened.
    pub(crate) breaker_trips: Counter,
}

impl CustomRoutes {
    pub(crate) fn new(
        router: std::sync::Arc<dyn MessageRouter>,
        breaker: Option<BreakerSettings>,
        timers: std::sync::Arc<TimerService>,
    ) -> Self {
        CustomRoutes {
            router,
            breaker,
            breakers: Mutex::new(PidMap::default()),
            timers,
            breaker_trips: Counter::new(),
        }
    }

    /// The user's router.
    pub(crate) fn router(&self) -> &std::sync::Arc<dyn MessageRouter> {
        &self.router
    }

    /// `to`'s breaker, if it has one (a pid gets one at its first failure).
    fn breaker_of(&self, to: &AgentPid) -> Option<std::sync::Arc<Breaker>> {
        lock(&self.breakers).get(to).cloned()
    }

    /// Forgets `pid`'s breaker (it was unregistered).
    pub(crate) fn forget(&self, pid: &AgentPid) {
        lock(&self.breakers).remove(pid);
    }

    /// Breakers open or half-open (the `metrics` gauge).
    #[cfg(feature = "metrics")]
    pub(crate) fn open_breakers(&self) -> u64 {
        let breakers = lock(&self.breakers);
        let open = breakers
            .values()
            .filter(|b| b.state() != BreakerState::Closed);
        open.count() as u64
    }

    /// Calls the router once; returns its answer and the message to hand back.
    fn attempt(
        &self,
        to: &AgentPid,
        out: Outgoing,
        priority: MessagePriority,
    ) -> (Result<(), MessagingError>, Option<Outgoing>) {
        let (result, kept, parked) = match out {
            Outgoing::Envelope(envelope) => {
                let copy = envelope.clone();
                let (result, parked) = handback::scope(|| self.router.route_message(envelope));
                (result, Some(Outgoing::Envelope(copy)), parked)
            }
            Outgoing::Message(message) => {
                let (result, parked) = handback::scope(|| self.router.route(to, message, priority));
                (result, None, parked)
            }
        };
        match (result.is_ok(), kept, parked) {
            // The router answered `Ok` although a `send` inside it was refused: that
            // message is buried as the `send` would have done.
            (true, kept, Some(parked)) => {
                parked.bury();
                (result, kept)
            }
            // Refused, and the engine kept a copy of the envelope: the copy stands for
            // the cast the refused `send` parked.
            (false, Some(kept), _) => (result, Some(kept)),
            (false, None, Some(parked)) => (result, Some(Outgoing::Message(parked.into_message()))),
            (_, kept, None) => (result, kept),
        }
    }
}

impl Destination for CustomRoutes {
    fn push(&self, to: &AgentPid, out: Outgoing, priority: MessagePriority) -> Push {
        let now = || self.timers.now();
        let guarded = match &self.breaker {
            Some(settings) => {
                let breaker = self.breaker_of(to);
                let seed = out.id().0.as_u64_pair().1;
                let admission = match &breaker {
                    Some(breaker) => settings.admit(breaker, now, seed, to),
                    None => Ok(Admission::Allowed),
                };
                match admission {
                    Ok(admission) => Some((settings, breaker, admission)),
                    Err(retry_at) => return Push::Refused(out, Refusal::CircuitOpen, retry_at),
                }
            }
            None => None,
        };
        let (result, back) = self.attempt(to, out, priority);
        let refusal = match &result {
            Ok(()) => None,
            Err(MessagingError::MailboxFull(_)) | Err(MessagingError::Overloaded(_)) => {
                Some(Refusal::MailboxFull)
            }
            Err(MessagingError::CircuitOpen(_)) => Some(Refusal::CircuitOpen),
            Err(_) => None,
        };
        if let Some((settings, breaker, admission)) = guarded {
            let failed = refusal.is_some();
            // A pid gets a breaker at its first failure; a success needs one only to
            // close it.
            let breaker = match breaker {
                Some(breaker) => Some(breaker),
                None if failed => Some(lock(&self.breakers).entry(to.clone()).or_default().clone()),
                None => None,
            };
            if let Some(breaker) = breaker {
                let recorded = result.is_ok() || failed;
                if recorded && settings.record(&breaker, admission, !failed, now, to) {
                    self.breaker_trips.incr();
                }
            }
        }
        match (result, back) {
            (Ok(()), _) => Push::Done,
            (Err(_), Some(back)) if refusal.is_some() => {
                Push::Refused(back, refusal.expect("matched"), 0)
            }
            (Err(MessagingError::ChannelClosed(_)), Some(back)) => Push::Closed(back),
            (Err(MessagingError::AgentNotFound(_)), Some(back)) => Push::NotFound(back),
            (Err(e), back) => Push::Failed(back, e),
        }
    }
}
