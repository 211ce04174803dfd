//! [`LocalRoutes`]: the system's own destinations, its mailbox table.
//!
//! One attempt: look the pid up → pick a member if it is a group → ask the member's
//! breaker → push into the mailbox. The fast path (found, breaker closed, accepted)
//! takes the table's read lock for one hash lookup and one push, and wakes the receiver
//! after releasing it: no allocation beyond the message, no clock read, no counter.
//!
//! | what the attempt met | outcome |
//! |---|---|
//! | mailbox accepted | `Done` (the breaker, if any, records a success) |
//! | mailbox full | `Refused(MailboxFull)` (the breaker records a failure) |
//! | breaker open, or half-open with its probe out | `Refused(CircuitOpen, retry_at)` |
//! | group with no member | `Refused(EmptyGroup)` |
//! | broadcast group | `Fanout(members)`: the engine sends a copy to each |
//! | group that picked a member on another node | `Forward(member)`: the cluster routes send it there |
//! | mailbox closed meanwhile | `Closed` |
//! | no such pid | `NotFound` |

use super::{Destination, Push, Refusal};
use crate::breaker::BreakerSettings;
use crate::group::{LoadBalance, Member};
use crate::mailbox::shared::{Shared, Wake};
use crate::message::{AgentMessage, AgentPid, MessageEnvelope, MessagePriority, Outgoing};
use crate::observe::events;
use crate::stats::Counter;
use crate::sync::Arc;
use crate::table::{AgentTable, Target};
use crate::timer::service::TimerService;

/// The mailbox table as a [`Destination`].
pub(crate) struct LocalRoutes {
    table: Arc<AgentTable>,
    breaker: Option<BreakerSettings>,
    /// The system's clock, read only by breakers that are not closed.
    timers: std::sync::Arc<TimerService>,
    /// Times a destination's breaker opened.
    pub(crate) breaker_trips: Counter,
}

impl LocalRoutes {
    pub(crate) fn new(
        table: Arc<AgentTable>,
        breaker: Option<BreakerSettings>,
        timers: std::sync::Arc<TimerService>,
    ) -> Self {
        LocalRoutes {
            table,
            breaker,
            timers,
            breaker_trips: Counter::new(),
        }
    }

    /// Whether `pid` is registered (an agent or a group).
    pub(crate) fn knows(&self, pid: &AgentPid) -> bool {
        self.table.lookup(pid).is_some()
    }

    /// One push into `mailbox`, through its breaker; the receiver to wake comes back
    /// apart, for the caller to wake once it has released the table.
    #[inline]
    fn push_into(
        &self,
        mailbox: &Shared,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> (Push, Wake) {
        let now = || self.timers.now();
        let admission = match &self.breaker {
            Some(settings) => {
                let seed = message.id().0.as_u64_pair().1;
                match settings.admit(&mailbox.breaker, now, seed, &mailbox.pid) {
                    Ok(admission) => Some((settings, admission)),
                    Err(retry_at) => {
                        let out = Outgoing::Message(message);
                        return (
                            Push::Refused(out, Refusal::CircuitOpen, retry_at),
                            Wake::NONE,
                        );
                    }
                }
            }
            None => None,
        };
        let (pushed, wake) = mailbox.try_push(message, priority);
        if let Some((settings, admission)) = admission {
            // A closed mailbox is not a delivery failure: the agent is gone.
            let closed = matches!(pushed, Err(crate::TrySendError::Closed(_)));
            let accepted = pushed.is_ok();
            if !closed && settings.record(&mailbox.breaker, admission, accepted, now, &mailbox.pid)
            {
                self.breaker_trips.incr();
            }
        }
        let push = match pushed {
            Ok(()) => Push::Done,
            Err(crate::TrySendError::Full(message)) => {
                Push::Refused(Outgoing::Message(message), Refusal::MailboxFull, 0)
            }
            Err(crate::TrySendError::Closed(message)) => Push::Closed(Outgoing::Message(message)),
        };
        (push, wake)
    }
}

impl Destination for LocalRoutes {
    /// An envelope travels as its cast; one refused goes back into its envelope.
    #[inline]
    fn push(&self, to: &AgentPid, out: Outgoing, priority: MessagePriority) -> Push {
        match out {
            Outgoing::Message(message) => self.push_message(to, message, priority),
            Outgoing::Envelope(envelope) => {
                let (cast, rest) = envelope.into_cast();
                match self.push_message(to, cast, priority) {
                    Push::Done => Push::Done,
                    refused => refused.map_back(|out| match out {
                        Outgoing::Message(cast) => MessageEnvelope::from_cast(cast, rest)
                            .map_or_else(Outgoing::Message, Outgoing::Envelope),
                        envelope => envelope,
                    }),
                }
            }
        }
    }
}

impl LocalRoutes {
    /// Looks `to` up and pushes `message` into its (or its group member's) mailbox.
    ///
    /// The receiver is woken after the table (and the group) is released: a waker is
    /// user code, which may register an agent or join a group, writes that would wait
    /// for the read lock this thread holds (and, with std's writer-preferring lock, a
    /// waker that only routes would wait behind another thread's queued write).
    #[inline]
    fn push_message(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Push {
        let Some(found) = self.table.lookup(to) else {
            return Push::NotFound(Outgoing::Message(message));
        };
        let (push, wake) = match found.target() {
            Target::Agent(mailbox) => self.push_into(mailbox, message, priority),
            Target::Group(group) if group.strategy() == LoadBalance::Broadcast => {
                let members = group.members();
                let out = Outgoing::Message(message);
                if members.is_empty() {
                    return Push::Refused(out, Refusal::EmptyGroup, 0);
                }
                (Push::Fanout(out, members), Wake::NONE)
            }
            Target::Group(group) => {
                let mut message = Some(message);
                let pushed = group.with_member(|member| {
                    let message = message.take().expect("pushed once");
                    events::group_pick(to, member.pid(), &message);
                    match member {
                        Member::Local(sender) => self.push_into(sender.shared(), message, priority),
                        Member::Remote(pid) => (
                            Push::Forward(Outgoing::Message(message), pid.clone()),
                            Wake::NONE,
                        ),
                    }
                });
                pushed.unwrap_or_else(|_| {
                    let message = message.take().expect("not yet pushed");
                    let refused = Push::Refused(Outgoing::Message(message), Refusal::EmptyGroup, 0);
                    (refused, Wake::NONE)
                })
            }
        };
        drop(found);
        wake.now();
        push
    }
}
