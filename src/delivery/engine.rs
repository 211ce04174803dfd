//! The delivery engine: what each guarantee does with a message, from its first push
//! to its last (delivered, acknowledged, dead-lettered, or a suppressed duplicate).
//!
//! The engine owns the guarantees (dedupe reservation, tracking, retries with backoff,
//! ack timeouts, expiry, give-up and dead letters, the ledger) and talks to
//! destinations through one narrow interface, [`Destination`]: one push, answered
//! `Done`, `Refused`, `Closed`, `NotFound` or `Failed`. The system's mailbox table and
//! a custom router both sit behind it.
//!
//! This file holds the first attempt; `redelivery` holds what happens when a timer
//! fires (retries, overdue acks) and how a message is given up on.
//!
//! The fast path (destination found, accepted, no ack asked) costs one push and one
//! striped counter: no allocation beyond the message, no clock read, no tracking.
//! With the `tracing` feature it adds one `TRACE` event (`routing`), a relaxed load
//! when nobody listens; refusals, retries and give-ups are reported from the slow paths
//! (see `crate::observe`).
//!
//! | push outcome | `AtMostOnce` | `AtLeastOnce` / `ExactlyOnce` |
//! |---|---|---|
//! | accepted, no ack asked | done | done (`ExactlyOnce`: id committed to the window) |
//! | accepted, `require_ack` | done | tracked until `acknowledge`; redelivered on timeout |
//! | mailbox full, breaker open, empty group | `Err`, dead letter | `Ok`; retried with backoff, then dead letter |
//! | destination unknown | `Err(AgentNotFound)`, dead letter | same |
//! | mailbox closed meanwhile | `Err(ChannelClosed)`, dead letter | same |
//! | a custom router's own error | `Err` as returned, dead letter | same |
//!
//! # Invariants
//!
//! - Every message handed to [`Engine::dispatch`] is counted accepted exactly once and
//!   ends in exactly one final bucket of the ledger (see `DeliveryStats`), or is still
//!   tracked (pending), or in hand between a timer firing and its next step.
//! - Exactly-once: an id is reserved before its push and committed only once a
//!   mailbox accepted it (NATS #6415: never recorded before the commit).
//! - A message that asks for an ack is tracked *before* its push, so an ack that
//!   arrives before the pushing thread runs again finds it.

use super::call_timers::CallTimerKey;
use super::dedup::Reservation;
use super::retry::RetryPolicy;
use super::tracker::{Stage, TimerRef, TrackError, Tracked, Tracker, UserKind, UserTimer};
use super::{DeliveryGuarantee, DeliveryStats, RouterConfig};
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters};
use crate::error::{MessagingError, MessagingResult};
use crate::message::{
    AgentMessage, AgentPid, DeliveryOptions, MessageEnvelope, MessageId, MessagePriority, Outgoing,
    ReplyReceiver,
};
use crate::observe::events;
use crate::observe::meters::{CallOutcome, Meters};
use crate::router::{Destination, Push, Refusal, RouterStats, Routes};
use crate::stats::Counter;
use crate::sync::Arc;
use crate::table::AgentTable;
use crate::timer::service::TimerService;
use crate::timer::TimerKey;

/// What a push of a message that asked for an ack did.
pub(super) enum AckedPush {
    /// In the mailbox, tracked for its ack.
    Delivered,
    /// Acknowledged (through an earlier copy) before the refused push was taken back.
    Acknowledged,
    /// Could not be tracked; already dead-lettered.
    NotTracked(TrackFailed),
    /// Refused for now (the refusal is in `last_refusal`); back in the retry stage.
    Refused(Box<Tracked>, u64),
    /// The destination went away, or a custom router failed.
    Gone(Box<Tracked>, DeadLetterReason, MessagingError),
}

/// Why a message could not be tracked (it has been dead-lettered).
#[derive(Debug, Clone, Copy)]
pub(super) enum TrackFailed {
    Overloaded,
    Closed,
    /// Acknowledged while out of the wheel: settled, nothing to do.
    Acknowledged,
    /// The clock is at its last tick: dead-lettered as expired.
    Expired,
}

/// The delivery engine of one system.
pub(crate) struct Engine {
    pub(crate) config: RouterConfig,
    pub(super) guarantee: DeliveryGuarantee,
    policy: RetryPolicy,
    pub(super) routes: Routes,
    pub(crate) tracker: Tracker,
    pub(super) dead_letters: Arc<DeadLetters>,
    /// The system's agents and groups, read for the `metrics` gauges.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) table: Arc<AgentTable>,
    /// What the system counts for the `metrics` recorder (zero-sized without it).
    pub(super) meters: Meters,
    /// Agents whose queue length is published, by the name given to `watch_depth`.
    #[cfg(feature = "metrics")]
    pub(super) watched: crate::sync::Mutex<Vec<(String, AgentPid)>>,
    /// Resolves a registered name to its agent now (set once by the system, which
    /// keeps the names): retries of messages handed back from a crashed agent.
    pub(crate) names: std::sync::OnceLock<NameResolver>,
}

/// See [`Engine::names`].
pub(crate) type NameResolver = Box<dyn Fn(&str) -> Option<AgentPid> + Send + Sync>;

impl Engine {
    /// An engine over `routes`, on the system's timer service, refusing a bad retry
    /// configuration.
    pub(crate) fn new(
        config: RouterConfig,
        routes: Routes,
        table: Arc<AgentTable>,
        timers: std::sync::Arc<TimerService>,
        dead_letters: Arc<DeadLetters>,
    ) -> MessagingResult<Self> {
        let policy = RetryPolicy::from_config(&config.delivery_config)
            .map_err(MessagingError::Configuration)?;
        let delivery = &config.delivery_config;
        let tracker = Tracker::new(
            timers,
            config.max_concurrent_deliveries,
            delivery.cleanup_interval,
            delivery.max_delivery_records,
        );
        Ok(Engine {
            guarantee: delivery.guarantee,
            policy,
            routes,
            tracker,
            dead_letters,
            table,
            meters: Meters::default(),
            #[cfg(feature = "metrics")]
            watched: Default::default(),
            config,
            names: std::sync::OnceLock::new(),
        })
    }

    /// The retry schedule.
    pub(crate) fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The destinations attempts go to.
    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The system's timer service.
    pub(crate) fn timers(&self) -> &std::sync::Arc<TimerService> {
        self.tracker.timers()
    }

    /// Counts an event, unless `enable_metrics` is off.
    #[inline]
    pub(super) fn count(&self, counter: &Counter) {
        if self.config.enable_metrics {
            counter.incr();
        }
    }

    /// Counts a call's outcome for the `metrics` recorder, unless `enable_metrics` is
    /// off.
    #[inline]
    pub(crate) fn count_call(&self, outcome: CallOutcome) {
        if self.config.enable_metrics {
            self.meters.call_ended(outcome);
        }
    }

    // ===== dispatch =====

    /// Sends an envelope with its options.
    pub(crate) fn dispatch_envelope(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        let to = envelope.to.clone();
        let options = envelope.delivery_options.clone();
        self.dispatch(&to, Outgoing::Envelope(envelope), &options)
    }

    /// Sends a built message at `priority` with default options.
    pub(crate) fn dispatch_message(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        let options = DeliveryOptions {
            priority,
            ..DeliveryOptions::default()
        };
        self.dispatch(to, Outgoing::Message(message), &options)
    }

    #[inline]
    fn dispatch(
        &self,
        to: &AgentPid,
        out: Outgoing,
        options: &DeliveryOptions,
    ) -> MessagingResult<()> {
        // Every branch counts the message accepted exactly once: the fast path (first
        // push delivered it) in `delivered_at_once` alone, the others in
        // `accepted_otherwise` before anything can settle it.
        let counters = &self.tracker.counters;
        // Exactly-once: reserve the id before the push so that a concurrent copy
        // cannot push too; commit only once the message is really in a mailbox.
        let reserved = match self.guarantee {
            DeliveryGuarantee::ExactlyOnce => {
                let id = out.id().clone();
                if self.tracker.reserve(&id) == Reservation::Duplicate {
                    events::duplicate(to, &out);
                    self.count(&counters.accepted_otherwise);
                    self.count(&counters.duplicates);
                    return Ok(());
                }
                Some(id)
            }
            _ => None,
        };
        // Acks need a copy to redeliver; only envelopes can ask for one.
        let require_ack = options.require_ack
            && self.guarantee != DeliveryGuarantee::AtMostOnce
            && matches!(out, Outgoing::Envelope(_));
        if require_ack {
            self.count(&counters.accepted_otherwise);
            let tracked = self.tracked(to, out, options, Stage::AwaitAck);
            return self.first_acked_attempt(tracked, reserved.as_ref());
        }
        events::routing(to, &out, 1);
        match self.routes.push(to, out, options.priority) {
            Push::Done | Push::Transported => {
                if let Some(id) = &reserved {
                    self.tracker.commit(id);
                }
                self.count(&counters.delivered_at_once);
                Ok(())
            }
            failed => {
                self.count(&counters.accepted_otherwise);
                if let Some(id) = &reserved {
                    self.tracker.rollback(id);
                }
                self.first_attempt_failed(to, failed, options)
            }
        }
    }

    /// The first push was not accepted: report, retry or give up per the guarantee.
    #[cold]
    fn first_attempt_failed(
        &self,
        to: &AgentPid,
        failed: Push,
        options: &DeliveryOptions,
    ) -> MessagingResult<()> {
        refused(to, &failed, 1);
        match failed {
            Push::Done | Push::Transported => unreachable!("handled by dispatch"),
            // A remote group member is the cluster routes' to route; from any other
            // routes it is unreachable.
            Push::NotFound(out) | Push::Forward(out, _) => {
                self.give_up(to, out, 1, DeadLetterReason::AgentNotFound);
                Err(MessagingError::AgentNotFound(to.clone()))
            }
            Push::Closed(out) => {
                self.give_up(to, out, 1, DeadLetterReason::MailboxClosed);
                Err(MessagingError::ChannelClosed(to.clone()))
            }
            Push::Failed(out, error) => {
                self.router_failed(to, out, 1, &error);
                Err(error)
            }
            Push::Fanout(out, members) => self.fan_out(to, out, &members, options, 1),
            Push::Refused(out, refusal, retry_at) => {
                if self.guarantee == DeliveryGuarantee::AtMostOnce {
                    let (reason, err) = refusal_error(to, refusal);
                    self.give_up(to, out, 1, reason);
                    return Err(err);
                }
                let mut tracked = self.tracked(to, out, options, Stage::Retry);
                tracked.last_refusal = Some(refusal);
                self.retry_later(tracked, retry_at)
                    .or_else(|e| self.settle_untracked(e))
            }
        }
    }

    /// The first attempt of a message that asked for an ack.
    #[cold]
    fn first_acked_attempt(
        &self,
        tracked: Box<Tracked>,
        reserved: Option<&MessageId>,
    ) -> MessagingResult<()> {
        let pushed = self.push_acked(tracked);
        let delivered = matches!(pushed, AckedPush::Delivered | AckedPush::Acknowledged);
        if let Some(id) = reserved {
            if delivered {
                self.tracker.commit(id);
            } else {
                self.tracker.rollback(id);
            }
        }
        match pushed {
            AckedPush::Delivered | AckedPush::Acknowledged => Ok(()),
            AckedPush::NotTracked(e) => self.settle_untracked(e),
            AckedPush::Refused(tracked, retry_at) => self
                .retry_later(tracked, retry_at)
                .or_else(|e| self.settle_untracked(e)),
            AckedPush::Gone(tracked, reason, err) => {
                let to = tracked.to.clone();
                self.give_up(&to, tracked.payload, 1, reason);
                Err(err)
            }
        }
    }

    /// Pushes a copy of a message that asked for an ack, tracking it for its ack
    /// *before* the push: a receiver may take the copy and acknowledge it before this
    /// thread runs again, and that ack must find the message.
    pub(super) fn push_acked(&self, mut tracked: Box<Tracked>) -> AckedPush {
        let Outgoing::Envelope(envelope) = &tracked.payload else {
            unreachable!("only envelopes ask for acks")
        };
        let copy = Outgoing::Envelope(envelope.clone());
        let (to, priority, attempt) = (tracked.to.clone(), tracked.priority, tracked.attempts);
        tracked.stage = Stage::AwaitAck;
        let ack = self.config.delivery_config.acknowledgment_timeout;
        let key = match self.track(tracked, self.tracker.after(ack)) {
            Ok(key) => key,
            Err(e) => return AckedPush::NotTracked(e),
        };
        events::routing(&to, &copy, attempt);
        let failed = match self.routes.push(&to, copy, priority) {
            Push::Done => return AckedPush::Delivered,
            // Another node settles the ack (its agent acknowledges there): this engine
            // has nothing to wait for, and its ledger counts the message delivered.
            Push::Transported => {
                return match self.tracker.untrack(key) {
                    Some(tracked) => {
                        // Not coming back: an ack given meanwhile is not for us.
                        self.tracker.finish_firing(tracked.payload.id());
                        self.count(&self.tracker.counters.delivered_later);
                        AckedPush::Delivered
                    }
                    None => AckedPush::Acknowledged,
                };
            }
            failed => failed,
        };
        refused(&to, &failed, attempt);
        // Take it back to retry; gone means it was acknowledged meanwhile (through an
        // earlier copy), which settles it.
        let Some(mut tracked) = self.tracker.untrack(key) else {
            return AckedPush::Acknowledged;
        };
        match failed {
            Push::Done | Push::Transported => unreachable!("handled above"),
            Push::Refused(_, refusal, retry_at) => {
                tracked.stage = Stage::Retry;
                tracked.last_refusal = Some(refusal);
                AckedPush::Refused(tracked, retry_at)
            }
            Push::Closed(_) => {
                let err = MessagingError::ChannelClosed(to);
                AckedPush::Gone(tracked, DeadLetterReason::MailboxClosed, err)
            }
            Push::NotFound(_) | Push::Forward(..) => {
                let err = MessagingError::AgentNotFound(to);
                AckedPush::Gone(tracked, DeadLetterReason::AgentNotFound, err)
            }
            Push::Failed(_, err) => {
                let reason = DeadLetterReason::RetriesExhausted(err.to_string());
                AckedPush::Gone(tracked, reason, err)
            }
            // A broadcast group: each member's copy is tracked for its own ack (the
            // receivers acknowledge the ids they got).
            Push::Fanout(_, members) => {
                let options = match &tracked.payload {
                    Outgoing::Envelope(e) => e.delivery_options.clone(),
                    Outgoing::Message(_) => DeliveryOptions::default(),
                };
                self.tracker.finish_firing(tracked.payload.id());
                let _ = self.fan_out(&to, tracked.payload, &members, &options, tracked.attempts);
                AckedPush::Delivered
            }
        }
    }

    /// Sends a copy of `out` to each member of a broadcast group, each a message of
    /// its own (its own id, guarantee, retries and ack); the original counts as
    /// delivered. A message that cannot be copied goes to no member: it is
    /// dead-lettered and refused with `InvalidMessage`. Returns the first error of a
    /// copy, if any (each copy is settled on its own either way).
    #[cold]
    pub(super) fn fan_out(
        &self,
        to: &AgentPid,
        out: Outgoing,
        members: &[AgentPid],
        options: &DeliveryOptions,
        attempts: u32,
    ) -> MessagingResult<()> {
        let copies: Option<Vec<(&AgentPid, Outgoing)>> = members
            .iter()
            .map(|member| out.copy_for(member).map(|copy| (member, copy)))
            .collect();
        let Some(copies) = copies else {
            let why = format!(
                "group {to} broadcasts: a {} whose payload cannot be copied goes to no \
                 member (copyable: JSON, strings, bytes, numbers; calls never)",
                match &out {
                    Outgoing::Message(m) => m.kind(),
                    Outgoing::Envelope(_) => "envelope",
                }
            );
            self.give_up(
                to,
                out,
                attempts,
                DeadLetterReason::RetriesExhausted(why.clone()),
            );
            return Err(MessagingError::InvalidMessage(why));
        };
        self.count(&self.tracker.counters.delivered_later);
        let mut result = Ok(());
        for (member, copy) in copies {
            let sent = match copy {
                Outgoing::Envelope(envelope) => self.dispatch_envelope(envelope),
                message => self.dispatch(member, message, options),
            };
            if let (Ok(()), Err(e)) = (&result, sent) {
                result = Err(e);
            }
        }
        result
    }

    /// What a first attempt reports when its message could not be tracked (it has
    /// been settled already: dead-lettered, or acknowledged).
    pub(super) fn settle_untracked(&self, error: TrackFailed) -> MessagingResult<()> {
        match error {
            TrackFailed::Overloaded => Err(MessagingError::Overloaded(format!(
                "{} messages already in flight (max_concurrent_deliveries)",
                self.config.max_concurrent_deliveries
            ))),
            // Accepted, then given up on at shutdown (dead letter `Shutdown`), expired (the
            // clock is at its end) or already acknowledged: settled, so `Ok`.
            TrackFailed::Closed | TrackFailed::Expired | TrackFailed::Acknowledged => Ok(()),
        }
    }

    fn tracked(
        &self,
        to: &AgentPid,
        payload: Outgoing,
        options: &DeliveryOptions,
        stage: Stage,
    ) -> Box<Tracked> {
        Box::new(Tracked {
            to: to.clone(),
            priority: options.priority,
            policy: self.policy.for_message(options),
            require_ack: matches!(payload, Outgoing::Envelope(_)) && options.require_ack,
            attempts: 1,
            expires_at: self.tracker.after(options.timeout),
            stage,
            last_refusal: None,
            payload,
            by_name: None,
        })
    }

    /// The system's guarantee.
    pub(crate) fn guarantee(&self) -> DeliveryGuarantee {
        self.guarantee
    }

    /// Takes back `messages` from the mailbox of `crashed`, an agent registered as
    /// `name` that crashed with them queued: each is retried on the usual schedule
    /// (after `retry_delay`, with backoff), every attempt going to whoever holds
    /// `name` then, until `max_retries` or its expiry. Each counts once more in the
    /// ledger (accepted back, then delivered or dead-lettered); under exactly-once
    /// its id leaves the window (its receiver never saw it).
    pub(crate) fn hand_back(&self, crashed: &AgentPid, name: &str, messages: Vec<AgentMessage>) {
        let options = DeliveryOptions::default();
        for message in messages {
            self.count(&self.tracker.counters.accepted_otherwise);
            if self.guarantee == DeliveryGuarantee::ExactlyOnce {
                self.tracker.uncommit(message.id());
            }
            let mut tracked =
                self.tracked(crashed, Outgoing::Message(message), &options, Stage::Retry);
            tracked.by_name = Some(name.to_string());
            let _ = self.retry_later(tracked, 0);
        }
    }

    /// Tracks `tracked` until `deadline`. At the in-flight limit (or after shutdown)
    /// dead-letters it and says why.
    pub(super) fn track(
        &self,
        tracked: Box<Tracked>,
        deadline: u64,
    ) -> Result<TimerKey, TrackFailed> {
        let refused = match self.tracker.track(tracked, deadline) {
            Ok(key) => return Ok(key),
            Err(refused) => refused,
        };
        let (tracked, reason, failed) = match refused {
            TrackError::Overloaded(tracked) => {
                let why = format!(
                    "{} messages already in flight",
                    self.config.max_concurrent_deliveries
                );
                (
                    tracked,
                    DeadLetterReason::Overloaded(why),
                    TrackFailed::Overloaded,
                )
            }
            TrackError::Closed(tracked) => {
                (tracked, DeadLetterReason::Shutdown, TrackFailed::Closed)
            }
            TrackError::EndOfTime(tracked) => {
                (tracked, DeadLetterReason::Expired, TrackFailed::Expired)
            }
            // Counted as acknowledged by `acknowledge` already.
            TrackError::Acknowledged => return Err(TrackFailed::Acknowledged),
        };
        let to = tracked.to.clone();
        let attempts = tracked.attempts;
        self.give_up(&to, tracked.payload, attempts, reason);
        Err(failed)
    }

    // ===== calls =====

    /// Puts a call's timeout on the system's call timers (the shard of `call_id`);
    /// `None` if it already passed (the call then sees `Timeout` at once).
    pub(crate) fn schedule_call_timeout(
        &self,
        reply: &ReplyReceiver,
        timeout: std::time::Duration,
        call_id: &MessageId,
    ) -> Option<CallTimerKey> {
        let deadline = self.tracker.after(timeout);
        let (high, low) = call_id.0.as_u64_pair();
        self.tracker
            .call_timeout(reply.timeout_handle(), deadline, high ^ low)
    }

    /// Cancels a call timeout that is no longer needed.
    pub(crate) fn cancel_call_timeout(&self, key: CallTimerKey) {
        self.tracker.cancel_call_timeout(key);
    }

    // ===== user timers =====

    /// Sends `message` to `to` after `delay`, on the wheel; a zero delay (or one that
    /// rounds to now) sends at once.
    pub(crate) fn send_after(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        delay: std::time::Duration,
    ) -> TimerRef {
        let timer = Box::new(UserTimer {
            to: to.clone(),
            kind: UserKind::Once(message),
        });
        let deadline = self.tracker.after(delay);
        match self.tracker.user_timer(timer, deadline) {
            Ok(r) => r,
            Err(timer) => {
                if let UserKind::Once(message) = timer.kind {
                    let _ = self.dispatch_message(to, message, MessagePriority::Normal);
                }
                TimerRef::fired()
            }
        }
    }

    /// Sends `make()` to `to` every `period` (non-zero), the first after one period.
    pub(crate) fn send_interval(
        &self,
        to: &AgentPid,
        make: Box<dyn FnMut() -> AgentMessage + Send>,
        period: std::time::Duration,
    ) -> TimerRef {
        let tick = crate::timer::TICK.as_nanos();
        let ticks = u64::try_from(period.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX);
        let timer = Box::new(UserTimer {
            to: to.clone(),
            kind: UserKind::Interval {
                id: 0,
                make,
                period: ticks.max(1),
                deadline: 0,
            },
        });
        let deadline = self.tracker.after(period);
        // A period is at least a tick, so the first deadline is after now, short of the
        // clock's last tick (then the interval never fires).
        self.tracker
            .user_timer(timer, deadline)
            .unwrap_or_else(|_| TimerRef::fired())
    }

    /// Cancels a user timer; `true` if it had not fired (an interval: was running).
    pub(crate) fn cancel_user_timer(&self, timer: TimerRef) -> bool {
        self.tracker.cancel_user(timer)
    }

    // ===== acks and the ledger =====

    /// Ends tracking of `id` (`MessageSystem::acknowledge`).
    pub(crate) fn acknowledge(&self, id: &MessageId) -> MessagingResult<()> {
        if self.tracker.acknowledge(id) {
            events::acknowledged(id);
            self.count(&self.tracker.counters.acknowledged);
            Ok(())
        } else {
            Err(MessagingError::UnknownMessage(id.clone()))
        }
    }

    /// The delivery ledger (see `DeliveryStats`).
    pub(crate) fn delivery_stats(&self) -> DeliveryStats {
        let c = &self.tracker.counters;
        let (pending, in_transit) = self.tracker.pending();
        let (accepted, delivered) = c.accepted_and_delivered();
        DeliveryStats {
            total_messages: accepted,
            pending,
            in_transit,
            delivered,
            acknowledged: c.acknowledged.get(),
            failed: c.failed.get(),
            expired: c.expired.get(),
            // Saturating: under concurrent sends the counters are read one after
            // another, so a duplicate can be seen before the acceptance it follows.
            total_attempts: accepted.saturating_sub(c.duplicates.get()) + c.retries.get(),
            duplicates: c.duplicates.get(),
        }
    }

    /// The router counters of the system's own routes, per message (see
    /// `RouterStats` for how they map onto the ledger).
    pub(crate) fn router_stats(&self, active_routes: usize) -> RouterStats {
        let ledger = self.delivery_stats();
        RouterStats {
            messages_routed: ledger.total_messages,
            messages_delivered: ledger.delivered + ledger.acknowledged,
            messages_failed: ledger.failed + ledger.expired,
            active_routes,
            retry_attempts: self.tracker.counters.retries.get(),
            circuit_trips: if self.config.enable_metrics {
                self.routes.breaker_trips()
            } else {
                0
            },
            messages_pending: ledger.pending + ledger.in_transit,
        }
    }

    /// Stops the timer driver and dead-letters everything still tracked.
    pub(crate) fn stop(&self) {
        self.timers().stop();
        for tracked in self.tracker.drain() {
            let to = tracked.to.clone();
            let attempts = tracked.attempts;
            self.give_up(&to, tracked.payload, attempts, DeadLetterReason::Shutdown);
        }
    }

    /// Dead-letters a message a custom router failed to deliver.
    pub(super) fn router_failed(
        &self,
        to: &AgentPid,
        out: Option<Outgoing>,
        attempts: u32,
        error: &MessagingError,
    ) {
        let reason = DeadLetterReason::RetriesExhausted(error.to_string());
        match out {
            Some(out) => self.give_up(to, out, attempts, reason),
            // The router kept (or dropped) the message: counted, with no letter to keep.
            None => self.count(&self.tracker.counters.failed),
        }
    }

    /// Records a dead letter.
    pub(super) fn bury(&self, letter: DeadLetter) {
        self.dead_letters.push(letter);
    }
}

/// Reports a push that did not deliver (its message came back, or the router kept it).
#[inline]
pub(super) fn refused(to: &AgentPid, pushed: &Push, attempt: u32) {
    if let Some(message) = pushed.message() {
        events::refused(to, message, attempt, pushed.reason());
    }
}

pub(super) fn refusal_error(to: &AgentPid, refusal: Refusal) -> (DeadLetterReason, MessagingError) {
    match refusal {
        Refusal::MailboxFull => (
            DeadLetterReason::MailboxFull,
            MessagingError::MailboxFull(to.clone()),
        ),
        Refusal::CircuitOpen => (
            DeadLetterReason::CircuitOpen,
            MessagingError::CircuitOpen(to.clone()),
        ),
        Refusal::EmptyGroup => (
            DeadLetterReason::RetriesExhausted("group has no members".into()),
            MessagingError::EmptyGroup(to.clone()),
        ),
    }
}
