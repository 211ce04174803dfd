//! [`DefaultMessageRouter`]: the table lookup, the breaker, the group balance, the push,
//! and what the delivery guarantee does when the push is refused.
//!
//! The fast path (destination found, breaker closed, mailbox accepts, no ack asked)
//! takes the table's read lock, pushes, and bumps two striped counters: no allocation
//! beyond the message, no clock read, no tracking. Everything else is cold:
//!
//! | push outcome | `AtMostOnce` | `AtLeastOnce` / `ExactlyOnce` |
//! |---|---|---|
//! | accepted, no ack asked | done | done (`ExactlyOnce`: id committed to the window) |
//! | accepted, `require_ack` | done | tracked until `acknowledge`; redelivered on timeout |
//! | mailbox full, breaker open, empty group | `Err`, dead letter | `Ok`; retried with backoff, then dead letter |
//! | destination unknown | `Err(AgentNotFound)`, dead letter | same |
//! | mailbox closed meanwhile | `Err(ChannelClosed)`, dead letter | same |

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{OnceLock, Weak};
use std::time::Instant;

use super::breaker::{Admission, BreakerState, CircuitBreakerConfig};
use super::{MessageRouter, RouterConfig, RouterStats};
use crate::delivery::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters, DeadMessage};
use crate::delivery::dedup::Reservation;
use crate::delivery::retry::RetryPolicy;
use crate::delivery::tracker::{Due, Outgoing, Refusal, Stage, TrackError, Tracked, Tracker};
use crate::delivery::{DeliveryGuarantee, DeliveryStats};
use crate::driver::{Driver, Fire, TimerDriver};
use crate::error::{MessagingError, MessagingResult, TrySendError};
use crate::mailbox::shared::disarm_call;
use crate::mailbox::shared::Shared;
use crate::mailbox::MailboxSender;
use crate::message::{
    AgentMessage, AgentPid, DeliveryOptions, MessageEnvelope, MessageId, MessagePriority,
    ReplyReceiver,
};
use crate::stats::Counter;
use crate::sync::{Arc, AtomicBool};
use crate::table::{AgentTable, InsertError, Target};
use crate::timer::TimerKey;
use crate::timer::{Clock, SystemClock};

/// Breaker settings in ticks.
#[derive(Debug, Clone, Copy)]
struct BreakerSettings {
    threshold: u32,
    reset_ticks: u64,
}

/// What a push of a message that asked for an ack did.
enum AckedPush {
    /// In the mailbox, tracked for its ack.
    Delivered,
    /// Acknowledged (through an earlier copy) before the refused push was taken back.
    Acknowledged,
    /// Could not be tracked; already dead-lettered.
    NotTracked(TrackFailed),
    /// Refused for now (the refusal is in `last_refusal`); back in the retry stage.
    Refused(Box<Tracked>, u64),
    /// The destination went away.
    Gone(Box<Tracked>, DeadLetterReason),
}

/// Why a message could not be tracked (it has been dead-lettered).
#[derive(Debug, Clone, Copy)]
enum TrackFailed {
    Overloaded,
    Closed,
    /// Acknowledged while out of the wheel: settled, nothing to do.
    Acknowledged,
    /// The clock is at its last tick: dead-lettered as expired.
    Expired,
}

/// What one push attempt did.
enum Push {
    Done,
    Refused(AgentMessage, Refusal, u64),
    Closed(AgentMessage),
    NotFound(AgentMessage),
}

/// The built-in router.
pub struct DefaultMessageRouter {
    config: RouterConfig,
    guarantee: DeliveryGuarantee,
    policy: RetryPolicy,
    breaker: Option<BreakerSettings>,
    table: Arc<AgentTable>,
    dead_letters: Arc<DeadLetters>,
    pub(crate) tracker: Tracker,
    driver: Driver,
    /// The system's handle on this router, for the driver thread.
    this: OnceLock<Weak<dyn Fire>>,
    shut_down: AtomicBool,
}

/// Everything a router is built from.
pub(crate) struct Parts {
    pub(crate) table: Arc<AgentTable>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    pub(crate) driver: TimerDriver,
    pub(crate) breaker: Option<CircuitBreakerConfig>,
}

impl DefaultMessageRouter {
    /// A router with an empty table. Its timers are driven by hand
    /// ([`run_due_timers`](Self::run_due_timers)); inside a `MessageSystem` a driver
    /// thread does it.
    ///
    /// A refused `delivery_config` falls back to the defaults for the retry policy;
    /// use [`DefaultMessageRouter::try_new`] to get the error instead.
    pub fn new(config: RouterConfig) -> Self {
        Self::try_new(config.clone()).unwrap_or_else(|_| {
            let mut config = config;
            config.delivery_config = crate::DeliveryConfig {
                guarantee: config.delivery_config.guarantee,
                ..Default::default()
            };
            Self::try_new(config).expect("default delivery config is valid")
        })
    }

    /// A router with an empty table, refusing a bad configuration.
    pub fn try_new(config: RouterConfig) -> MessagingResult<Self> {
        Self::with_parts(
            config,
            Parts {
                table: Arc::new(AgentTable::new()),
                dead_letters: Arc::new(DeadLetters::default()),
                clock: std::sync::Arc::new(SystemClock),
                driver: TimerDriver::Manual,
                breaker: None,
            },
        )
    }

    pub(crate) fn with_parts(config: RouterConfig, parts: Parts) -> MessagingResult<Self> {
        let policy = RetryPolicy::from_config(&config.delivery_config)
            .map_err(MessagingError::Configuration)?;
        let breaker = match parts.breaker {
            Some(b) => {
                b.validate().map_err(MessagingError::Configuration)?;
                Some(BreakerSettings {
                    threshold: b.failure_threshold,
                    reset_ticks: b.reset_ticks(),
                })
            }
            None => None,
        };
        let delivery = &config.delivery_config;
        let tracker = Tracker::new(
            parts.clock,
            config.max_concurrent_deliveries,
            delivery.cleanup_interval,
            delivery.max_delivery_records,
        );
        Ok(DefaultMessageRouter {
            guarantee: delivery.guarantee,
            policy,
            breaker,
            table: parts.table,
            dead_letters: parts.dead_letters,
            tracker,
            driver: Driver::new(parts.driver, config.retry_interval),
            this: OnceLock::new(),
            shut_down: AtomicBool::new(false),
            config,
        })
    }

    /// Lets the driver thread reach this router.
    pub(crate) fn attach(&self, this: Weak<dyn Fire>) {
        let _ = self.this.set(this);
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Takes the dead letters of this router.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.drain()
    }

    /// Fires every retry and timeout due by the router's clock. Returns when the next
    /// one is due. Only needed with `TimerDriver::Manual` (a standalone router, or
    /// tests with a `ManualClock`).
    pub fn run_due_timers(&self) -> Option<Instant> {
        let (due, _) = self.tracker.take_due();
        for event in due {
            match event {
                Due::Call(timeout) => timeout.expire(),
                Due::Tracked(tracked) => {
                    self.retry(tracked);
                    self.tracker.settled();
                }
            }
        }
        self.tracker.next_deadline()
    }

    /// Counts an event, unless `enable_metrics` is off.
    #[inline]
    fn count(&self, counter: &Counter) {
        if self.config.enable_metrics {
            counter.incr();
        }
    }

    fn check_running(&self) -> MessagingResult<()> {
        if self.shut_down.load(Acquire) {
            Err(MessagingError::System("the router is shut down".into()))
        } else {
            Ok(())
        }
    }

    // ===== dispatch =====

    /// Routes an envelope with its options. The caller has checked that the router
    /// (or the system around it) is running.
    pub(crate) fn dispatch_envelope(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        let to = envelope.to.clone();
        let options = envelope.delivery_options.clone();
        self.dispatch(&to, Outgoing::Envelope(envelope), &options)
    }

    /// Routes a built message at `priority` with default options. The caller has
    /// checked that the router (or the system around it) is running.
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
                    self.count(&counters.accepted_otherwise);
                    self.count(&counters.duplicates);
                    return Ok(());
                }
                Some(id)
            }
            _ => None,
        };
        // Acks need a copy to redeliver; only envelopes can ask for one.
        let require_ack = options.require_ack && self.guarantee != DeliveryGuarantee::AtMostOnce;
        if require_ack {
            self.count(&counters.accepted_otherwise);
            if let Outgoing::Envelope(envelope) = out {
                let tracked =
                    self.tracked(to, Outgoing::Envelope(envelope), options, Stage::AwaitAck);
                return self.first_acked_attempt(tracked, reserved.as_ref());
            }
            unreachable!("require_ack is only read from envelopes");
        }
        match self.push(to, out.into_message(), options.priority) {
            Push::Done => {
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
        match failed {
            Push::Done => unreachable!("handled by dispatch"),
            Push::NotFound(message) => {
                let payload = Outgoing::Message(message);
                self.give_up(to, payload, 1, DeadLetterReason::AgentNotFound);
                Err(MessagingError::AgentNotFound(to.clone()))
            }
            Push::Closed(message) => {
                let payload = Outgoing::Message(message);
                self.give_up(to, payload, 1, DeadLetterReason::MailboxClosed);
                Err(MessagingError::ChannelClosed(to.clone()))
            }
            Push::Refused(message, refusal, retry_at) => {
                let payload = Outgoing::Message(message);
                if self.guarantee == DeliveryGuarantee::AtMostOnce {
                    let (reason, err) = refusal_error(to, refusal);
                    self.give_up(to, payload, 1, reason);
                    return Err(err);
                }
                let mut tracked = self.tracked(to, payload, options, Stage::Retry);
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
        let to = tracked.to.clone();
        match self.push_acked(tracked) {
            AckedPush::Delivered | AckedPush::Acknowledged => {
                if let Some(id) = reserved {
                    self.tracker.commit(id);
                }
                Ok(())
            }
            failed => {
                if let Some(id) = reserved {
                    self.tracker.rollback(id);
                }
                match failed {
                    AckedPush::Delivered | AckedPush::Acknowledged => unreachable!("above"),
                    AckedPush::NotTracked(e) => self.settle_untracked(e),
                    AckedPush::Refused(tracked, retry_at) => self
                        .retry_later(tracked, retry_at)
                        .or_else(|e| self.settle_untracked(e)),
                    AckedPush::Gone(tracked, reason) => {
                        let err = match reason {
                            DeadLetterReason::AgentNotFound => {
                                MessagingError::AgentNotFound(to.clone())
                            }
                            _ => MessagingError::ChannelClosed(to.clone()),
                        };
                        self.give_up(&to, tracked.payload, 1, reason);
                        Err(err)
                    }
                }
            }
        }
    }

    /// Pushes a copy of a message that asked for an ack, tracking it for its ack
    /// *before* the push: a receiver may take the copy and acknowledge it before this
    /// thread runs again, and that ack must find the message.
    fn push_acked(&self, mut tracked: Box<Tracked>) -> AckedPush {
        let Outgoing::Envelope(envelope) = &tracked.payload else {
            unreachable!("only envelopes ask for acks")
        };
        let copy = envelope.clone().into_message();
        let (to, priority) = (tracked.to.clone(), tracked.priority);
        tracked.stage = Stage::AwaitAck;
        let ack = self.config.delivery_config.acknowledgment_timeout;
        let key = match self.track(tracked, self.tracker.after(ack)) {
            Ok(key) => key,
            Err(e) => return AckedPush::NotTracked(e),
        };
        let failed = match self.push(&to, copy, priority) {
            Push::Done => {
                self.count(&self.tracker.counters.pushes);
                return AckedPush::Delivered;
            }
            failed => failed,
        };
        // Take it back to retry; gone means it was acknowledged meanwhile (through an
        // earlier copy), which settles it.
        let Some(mut tracked) = self.tracker.untrack(key) else {
            return AckedPush::Acknowledged;
        };
        match failed {
            Push::Done => unreachable!("handled above"),
            Push::Refused(_, refusal, retry_at) => {
                tracked.stage = Stage::Retry;
                tracked.last_refusal = Some(refusal);
                AckedPush::Refused(tracked, retry_at)
            }
            Push::Closed(_) => AckedPush::Gone(tracked, DeadLetterReason::MailboxClosed),
            Push::NotFound(_) => AckedPush::Gone(tracked, DeadLetterReason::AgentNotFound),
        }
    }

    /// What a first attempt reports when its message could not be tracked (it has
    /// been settled already: dead-lettered, or acknowledged).
    fn settle_untracked(&self, error: TrackFailed) -> MessagingResult<()> {
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
        })
    }

    /// Puts a call's timeout on the wheel; `None` if it already passed (the call then
    /// sees `Timeout` at once).
    pub(crate) fn schedule_call_timeout(
        &self,
        reply: &ReplyReceiver,
        timeout: std::time::Duration,
    ) -> Option<TimerKey> {
        let deadline = self.tracker.after(timeout);
        let (key, moved_earlier) = self.tracker.call_timeout(reply.timeout_handle(), deadline);
        if moved_earlier.is_some() {
            self.wake_driver();
        }
        key
    }

    /// Cancels a call timeout that is no longer needed.
    pub(crate) fn cancel_call_timeout(&self, key: TimerKey) {
        self.tracker.cancel_timer(key);
    }

    fn wake_driver(&self) {
        if let Some(this) = self.this.get() {
            self.driver.wake(this.clone());
        }
    }

    /// Tracks `tracked` until `deadline`. At the in-flight limit (or after shutdown)
    /// dead-letters it and says why.
    fn track(&self, tracked: Box<Tracked>, deadline: u64) -> Result<TimerKey, TrackFailed> {
        match self.tracker.track(tracked, deadline) {
            Ok((key, moved_earlier)) => {
                if moved_earlier.is_some() {
                    self.wake_driver();
                }
                Ok(key)
            }
            Err(refused) => {
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
        }
    }

    // ===== one attempt =====

    /// Looks `to` up and pushes into its (or its group member's) mailbox.
    #[inline]
    fn push(&self, to: &AgentPid, message: AgentMessage, priority: MessagePriority) -> Push {
        let mut message = Some(message);
        let pushed = self.table.with_target(to, |target| match target {
            Target::Agent(mailbox) => self.push_into(mailbox, &mut message, priority),
            Target::Group(group) => group
                .with_member(|member| self.push_into(member.shared(), &mut message, priority))
                .unwrap_or_else(|_| {
                    let message = message.take().expect("not yet pushed");
                    Push::Refused(message, Refusal::EmptyGroup, 0)
                }),
        });
        match pushed {
            Some(push) => push,
            None => Push::NotFound(message.take().expect("not yet pushed")),
        }
    }

    #[inline]
    fn push_into(
        &self,
        mailbox: &Shared,
        message: &mut Option<AgentMessage>,
        priority: MessagePriority,
    ) -> Push {
        let message = message.take().expect("pushed once");
        let (admission, settings) = match self.breaker {
            Some(settings) if mailbox.breaker.state() != BreakerState::Closed => {
                let now = self.tracker.now();
                // A probe that failed again waits twice as long, up to 32 times the
                // configured reset timeout.
                let escalation = mailbox.breaker.trips().saturating_sub(1).min(5);
                let reset = settings.reset_ticks.saturating_mul(1 << escalation);
                match mailbox.breaker.admit(now, reset) {
                    Admission::Rejected { retry_at } => {
                        // Spread the retries waiting on one breaker over a quarter of
                        // its reset time, so they do not all arrive with the probe.
                        let spread = settings.reset_ticks / 4 + 1;
                        let jitter = message.id().0.as_u64_pair().1 % spread;
                        let retry_at = retry_at.saturating_add(jitter);
                        return Push::Refused(message, Refusal::CircuitOpen, retry_at);
                    }
                    admission => (admission, Some(settings)),
                }
            }
            settings => (Admission::Allowed, settings),
        };
        match mailbox.try_send(message, priority) {
            Ok(()) => {
                if settings.is_some() {
                    mailbox.breaker.on_success(admission);
                }
                Push::Done
            }
            Err(TrySendError::Full(message)) => {
                if let Some(settings) = settings {
                    let now = self.tracker.now();
                    let was_open = mailbox.breaker.state() == BreakerState::Open;
                    mailbox
                        .breaker
                        .on_failure(admission, now, settings.threshold);
                    if !was_open && mailbox.breaker.state() == BreakerState::Open {
                        self.count(&self.tracker.counters.breaker_trips);
                    }
                }
                Push::Refused(message, Refusal::MailboxFull, 0)
            }
            Err(TrySendError::Closed(message)) => Push::Closed(message),
        }
    }

    // ===== retries and ack timeouts =====

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
            // Exactly-once: the mailbox already accepted this id inside the window, so a
            // second copy is suppressed; the attempt still counts.
            if self.guarantee == DeliveryGuarantee::ExactlyOnce {
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
        let reserved = match self.guarantee {
            DeliveryGuarantee::ExactlyOnce => {
                let id = tracked.payload.id().clone();
                if self.tracker.reserve(&id) == Reservation::Duplicate {
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
        let message = tracked.payload.into_message();
        match self.push(&to, message, tracked.priority) {
            Push::Done => {
                if let Some(id) = &reserved {
                    self.tracker.commit(id);
                }
                self.count(&counters.delivered_later);
            }
            failed => {
                if let Some(id) = &reserved {
                    self.tracker.rollback(id);
                }
                match failed {
                    Push::Done => unreachable!("matched above"),
                    Push::Refused(message, refusal, retry_at) => {
                        tracked.payload = Outgoing::Message(message);
                        tracked.last_refusal = Some(refusal);
                        let _ = self.retry_later(tracked, retry_at);
                    }
                    Push::Closed(message) => {
                        let payload = Outgoing::Message(message);
                        self.give_up(&to, payload, attempts, DeadLetterReason::MailboxClosed)
                    }
                    Push::NotFound(message) => {
                        let payload = Outgoing::Message(message);
                        self.give_up(&to, payload, attempts, DeadLetterReason::AgentNotFound)
                    }
                }
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
            AckedPush::Gone(tracked, reason) => {
                let to = tracked.to.clone();
                self.give_up(&to, tracked.payload, tracked.attempts, reason);
            }
        }
    }

    /// Schedules the next attempt after `policy.delay`, or gives up once the attempts
    /// made exceed `max_retries` (so `max_retries: 0` never retries).
    fn retry_later(&self, tracked: Box<Tracked>, retry_at: u64) -> Result<(), TrackFailed> {
        if tracked.attempts > tracked.policy.max_retries() {
            let reason = match tracked.last_refusal {
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
        self.track(tracked, deadline).map(|_| ())
    }

    /// Dead-letters a message the system gives up on.
    fn give_up(&self, to: &AgentPid, payload: Outgoing, attempts: u32, reason: DeadLetterReason) {
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
        // A call given up on can never be answered: fail its caller now.
        let message = match payload {
            Outgoing::Message(message) => DeadMessage::Message(disarm_call(message)),
            envelope => envelope.into_dead(),
        };
        self.dead_letters.push(DeadLetter {
            id: message.id().clone(),
            to: to.clone(),
            reason,
            attempts,
            message,
        });
    }

    /// The delivery ledger (see `DeliveryStats`).
    pub fn delivery_stats(&self) -> DeliveryStats {
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

    /// Ends tracking of `id` (`MessageSystem::acknowledge`).
    pub(crate) fn acknowledge(&self, id: &MessageId) -> MessagingResult<()> {
        if self.tracker.acknowledge(id) {
            self.count(&self.tracker.counters.acknowledged);
            Ok(())
        } else {
            Err(MessagingError::UnknownMessage(id.clone()))
        }
    }

    /// Stops the driver and dead-letters everything still tracked.
    fn stop(&self) {
        self.shut_down.store(true, Release);
        self.driver.stop();
        for tracked in self.tracker.drain() {
            let to = tracked.to.clone();
            let attempts = tracked.attempts;
            self.give_up(&to, tracked.payload, attempts, DeadLetterReason::Shutdown);
        }
    }
}

fn refusal_error(to: &AgentPid, refusal: Refusal) -> (DeadLetterReason, MessagingError) {
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

impl Fire for DefaultMessageRouter {
    fn fire_due(&self) -> Option<Instant> {
        self.run_due_timers()
    }
}

impl MessageRouter for DefaultMessageRouter {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.check_running()?;
        self.dispatch_envelope(envelope)
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
            .remove_agent(agent_id)
            .ok_or_else(|| MessagingError::AgentNotFound(agent_id.clone()))?;
        mailbox.close();
        Ok(())
    }

    fn get_stats(&self) -> RouterStats {
        let c = &self.tracker.counters;
        let (pending, awaiting_ack) = self.tracker.pending();
        let (accepted, delivered) = c.accepted_and_delivered();
        RouterStats {
            messages_routed: accepted,
            messages_delivered: delivered + c.pushes.get(),
            messages_failed: c.failed.get() + c.expired.get(),
            active_routes: self.table.len(),
            retry_attempts: c.retries.get(),
            circuit_trips: c.breaker_trips.get(),
            messages_pending: pending + awaiting_ack,
        }
    }

    fn shutdown(&self) -> MessagingResult<()> {
        self.stop();
        self.table.close_all();
        Ok(())
    }

    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.check_running()?;
        self.dispatch_message(to, message, priority)
    }
}

impl Drop for DefaultMessageRouter {
    fn drop(&mut self) {
        self.driver.stop();
    }
}

impl fmt::Debug for DefaultMessageRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultMessageRouter")
            .field("config", &self.config)
            .field("destinations", &self.table.len())
            .field("timer_driver", &self.driver.mode())
            .finish()
    }
}
