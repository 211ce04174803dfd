//! The engine's timers: what happens when a tracked message's timer fires (its next
//! attempt after a refusal, or its ack is overdue), when a call's reply is overdue,
//! and how a message is given up on.
//!
//! # Invariants
//!
//! - A fired message is "in hand" (still pending in the ledger) until it is tracked
//!   again, delivered or given up on; `settled` ends that.
//! - Retries stop after `max_retries` attempts beyond the first (`max_retries: 0`
//!   never retries) or at the message's expiry, whichever comes first; each waits
//!   `min(retry_delay × multiplier^n, max_retry_delay)`, and never less than the
//!   breaker's reset.
//! - An ack that lands while its message is out of the wheel (firing, or a refused
//!   push being taken back) settles it: the message is not redelivered nor
//!   dead-lettered.

use std::time::Instant;

use super::dedup::Reservation;
use super::engine::{refused, AckedPush, Engine, TrackFailed};
use super::tracker::{Due, Stage, Tracked, UserKind, UserTimer};
use super::DeliveryGuarantee;
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadMessage};
use crate::error::MessagingError;
use crate::message::{AgentPid, DeliveryOptions, MessageId, MessagePriority, Outgoing};
use crate::observe::events;
use crate::router::{Destination, Push, Refusal};
use crate::timer::service::{Fire, TimerService};

impl Engine {
    /// Fires every retry and timeout due by the system's clock. Returns when the next
    /// one is due.
    pub(crate) fn run_due_timers(&self) -> Option<Instant> {
        let (due, _) = self.tracker.take_due();
        for event in due {
            match event {
                Due::Call(timeout) => timeout.expire(),
                Due::User(timer) => self.fire_user(timer),
                Due::Tracked(tracked) => {
                    self.retry(tracked);
                    self.tracker.settled();
                }
            }
        }
        if self.meters.due(|| self.tracker.now()) {
            self.publish_metrics(false);
        }
        self.tracker.next_deadline()
    }

    /// A user's timer fired: `send_after` sends its message (an agent gone meanwhile
    /// dead-letters it, as any send would); `send_interval` makes and sends the next
    /// message and re-arms, unless its target is gone (then it ends, making nothing)
    /// or its `make` panicked (then it ends too).
    fn fire_user(&self, mut timer: Box<UserTimer>) {
        let to = timer.to.clone();
        let (make, period, deadline) = match &mut timer.kind {
            UserKind::Once(_) => {
                let UserKind::Once(message) = timer.kind else {
                    unreachable!("matched Once")
                };
                let _ = self.dispatch_message(&to, message, MessagePriority::Normal);
                return;
            }
            UserKind::Interval {
                make,
                period,
                deadline,
                ..
            } => (make, *period, *deadline),
        };
        if !self.routes.knows(&to).unwrap_or(true) {
            return self.tracker.forget_interval(&timer);
        }
        let Ok(message) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) else {
            return self.tracker.forget_interval(&timer);
        };
        if let Err(MessagingError::AgentNotFound(_) | MessagingError::ChannelClosed(_)) =
            self.dispatch_message(&to, message, MessagePriority::Normal)
        {
            return self.tracker.forget_interval(&timer);
        }
        // Fixed rate; a clock that jumped past several periods fires once, then
        // keeps the period from now (no burst).
        let now = self.tracker.now();
        let mut next = deadline.saturating_add(period);
        if next <= now {
            next = now.saturating_add(period);
        }
        if let Err(timer) = self.tracker.rearm(timer, next) {
            // Only at the clock's last tick: nothing can be scheduled any more.
            self.tracker.forget_interval(&timer);
        }
    }

    /// A tracked message's timer fired.
    fn retry(&self, mut tracked: Box<Tracked>) {
        let to = tracked.to.clone();
        let counters = &self.tracker.counters;
        if tracked.stage == Stage::AwaitAck {
            if tracked.attempts > tracked.policy.max_retries() {
                let attempts = tracked.attempts;
                let reason = DeadLetterReason::NotAcknowledged;
                return self.give_up(&to, tracked.payload, attempts, reason);
            }
            tracked.attempts = tracked.attempts.saturating_add(1);
            self.count(&counters.retries);
            if self.config.enable_metrics {
                self.meters.redelivered();
            }
            // Exactly-once: the mailbox already accepted this id inside the window, so a
            // second copy is suppressed; the attempt still counts.
            let suppressed = self.guarantee == DeliveryGuarantee::ExactlyOnce;
            events::redelivery(&to, &tracked.payload, tracked.attempts, suppressed);
            if suppressed {
                let ack = self.config.delivery_config.acknowledgment_timeout;
                let _ = self.track(tracked, self.tracker.after(ack));
                return;
            }
            return self.after_acked_push(self.push_acked(tracked), None);
        }

        // A retry of a refused push.
        if self.tracker.now() >= tracked.expires_at {
            let attempts = tracked.attempts;
            return self.give_up(&to, tracked.payload, attempts, DeadLetterReason::Expired);
        }
        // Handed back from a crashed agent: to its name's holder now, or later.
        let to = match &tracked.by_name {
            Some(name) => match self.names.get().and_then(|resolve| resolve(name)) {
                Some(pid) => {
                    tracked.to = pid.clone();
                    pid
                }
                None => {
                    tracked.attempts = tracked.attempts.saturating_add(1);
                    self.count(&counters.retries);
                    tracked.last_refusal = None;
                    let _ = self.retry_later(tracked, 0);
                    return;
                }
            },
            None => to,
        };
        let reserved = match self.guarantee {
            DeliveryGuarantee::ExactlyOnce => {
                let id = tracked.payload.id().clone();
                if self.tracker.reserve(&id) == Reservation::Duplicate {
                    events::duplicate(&to, &tracked.payload);
                    self.count(&counters.duplicates);
                    return;
                }
                Some(id)
            }
            _ => None,
        };
        tracked.attempts = tracked.attempts.saturating_add(1);
        self.count(&counters.retries);
        if tracked.require_ack {
            return self.after_acked_push(self.push_acked(tracked), reserved.as_ref());
        }
        let attempts = tracked.attempts;
        events::routing(&to, &tracked.payload, attempts);
        // The payload moves out for the push and back in if it is refused.
        let pushed = self.routes.push(&to, tracked.payload, tracked.priority);
        refused(&to, &pushed, attempts);
        if let Some(id) = &reserved {
            match pushed {
                Push::Done | Push::Transported => self.tracker.commit(id),
                _ => self.tracker.rollback(id),
            }
        }
        match pushed {
            Push::Done | Push::Transported => self.count(&counters.delivered_later),
            Push::Refused(payload, refusal, retry_at) => {
                tracked.payload = payload;
                tracked.last_refusal = Some(refusal);
                let _ = self.retry_later(tracked, retry_at);
            }
            Push::Closed(payload) => {
                self.give_up(&to, payload, attempts, DeadLetterReason::MailboxClosed)
            }
            Push::NotFound(payload) | Push::Forward(payload, _) => {
                self.give_up(&to, payload, attempts, DeadLetterReason::AgentNotFound)
            }
            Push::Failed(payload, error) => self.router_failed(&to, payload, attempts, &error),
            Push::Fanout(payload, members) => {
                let options = DeliveryOptions {
                    priority: tracked.priority,
                    ..DeliveryOptions::default()
                };
                let _ = self.fan_out(&to, payload, &members, &options, attempts);
            }
        }
    }

    /// Settles a retried push of a message that asked for an ack.
    fn after_acked_push(&self, pushed: AckedPush, reserved: Option<&MessageId>) {
        let delivered = matches!(pushed, AckedPush::Delivered | AckedPush::Acknowledged);
        if let Some(id) = reserved {
            if delivered {
                self.tracker.commit(id);
            } else {
                self.tracker.rollback(id);
            }
        }
        match pushed {
            AckedPush::Delivered | AckedPush::Acknowledged | AckedPush::NotTracked(_) => {}
            AckedPush::Refused(tracked, retry_at) => {
                let _ = self.retry_later(tracked, retry_at);
            }
            AckedPush::Gone(tracked, reason, _) => {
                let to = tracked.to.clone();
                self.give_up(&to, tracked.payload, tracked.attempts, reason);
            }
        }
    }

    /// Schedules the next attempt after `policy.delay`, or gives up once the attempts
    /// made exceed `max_retries` (so `max_retries: 0` never retries).
    pub(super) fn retry_later(
        &self,
        tracked: Box<Tracked>,
        retry_at: u64,
    ) -> Result<(), TrackFailed> {
        if tracked.attempts > tracked.policy.max_retries() {
            let reason = match tracked.last_refusal {
                None if tracked.by_name.is_some() => DeadLetterReason::RetriesExhausted(format!(
                    "no agent registered as {:?} took over",
                    tracked.by_name.as_deref().unwrap_or_default()
                )),
                Some(Refusal::CircuitOpen) => DeadLetterReason::CircuitOpen,
                Some(Refusal::EmptyGroup) => {
                    DeadLetterReason::RetriesExhausted("group has no members".into())
                }
                _ => DeadLetterReason::RetriesExhausted("mailbox full".into()),
            };
            let to = tracked.to.clone();
            self.give_up(&to, tracked.payload, tracked.attempts, reason);
            return Ok(());
        }
        let delay = tracked.policy.delay(tracked.attempts - 1);
        let deadline = self.tracker.after(delay).max(retry_at);
        events::retry_scheduled(
            &tracked.to,
            &tracked.payload,
            tracked.attempts.saturating_add(1),
            delay,
        );
        self.track(tracked, deadline).map(|_| ())
    }

    /// Dead-letters a message the system gives up on.
    pub(super) fn give_up(
        &self,
        to: &AgentPid,
        payload: Outgoing,
        attempts: u32,
        reason: DeadLetterReason,
    ) {
        let counters = &self.tracker.counters;
        // An ack that arrived while the message was out of the wheel settles it (and
        // `acknowledge` counted it).
        if matches!(payload, Outgoing::Envelope(_)) && self.tracker.finish_firing(payload.id()) {
            return;
        }
        if reason == DeadLetterReason::Expired {
            self.count(&counters.expired);
        } else {
            self.count(&counters.failed);
        }
        let message = DeadMessage::from(payload);
        self.bury(DeadLetter {
            id: message.id().clone(),
            to: to.clone(),
            reason,
            attempts,
            message,
        });
    }
}

impl Fire for Engine {
    fn fire_due(&self) -> Option<Instant> {
        self.run_due_timers()
    }

    fn timers(&self) -> &TimerService {
        Engine::timers(self)
    }
}
