//! In-flight messages: those waiting for a retry or for an acknowledgement, with their
//! timers on the wheel.
//!
//! Only messages that need it are tracked: a message pushed into a mailbox on its first
//! attempt, with no ack asked, never reaches this module.
//!
//! # Ground rules
//!
//! - Each tracked message has exactly one live timer (NATS #6085: no shared timer),
//!   recorded in its entry; removing the entry cancels the timer, so a fired timer
//!   whose entry is gone (acknowledged, already handled) is ignored.
//! - The state lock is never held while pushing into a mailbox or dead-lettering.
//! - `max_concurrent_deliveries` bounds the entries; past it, `track` refuses and the
//!   caller dead-letters the message with `Overloaded`.

use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ahash::AHasher;

use super::dead_letter::DeadMessage;
use super::dedup::{Dedupe, Reservation};
use super::retry::RetryPolicy;
use crate::message::{
    reply::ReplyTimeout, AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority,
};
use crate::stats::Counter;
use crate::sync::{lock, AtomicU64, Mutex};
use crate::timer::{Clock, TickSource, TimerKey, TimerWheel};

type IdMap<V> = std::collections::HashMap<MessageId, V, BuildHasherDefault<AHasher>>;

/// A message on its way: a routed envelope or a built message.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Envelope(MessageEnvelope),
    Message(AgentMessage),
}

impl Outgoing {
    pub(crate) fn id(&self) -> &MessageId {
        match self {
            Outgoing::Envelope(e) => &e.id,
            Outgoing::Message(m) => m.id(),
        }
    }

    pub(crate) fn into_message(self) -> AgentMessage {
        match self {
            Outgoing::Envelope(e) => e.into_message(),
            Outgoing::Message(m) => m,
        }
    }

    pub(crate) fn into_dead(self) -> DeadMessage {
        match self {
            Outgoing::Envelope(e) => DeadMessage::Envelope(e),
            Outgoing::Message(m) => DeadMessage::Message(m),
        }
    }
}

/// What a tracked message is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Its last push was refused; the timer fires the next attempt.
    Retry,
    /// It is in a mailbox; the timer fires if no ack arrives first.
    AwaitAck,
}

/// Why the last attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MailboxFull,
    CircuitOpen,
    EmptyGroup,
}

/// One tracked message.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub(crate) to: AgentPid,
    pub(crate) priority: MessagePriority,
    pub(crate) policy: RetryPolicy,
    pub(crate) require_ack: bool,
    /// Attempts made so far (the first push counts as 1).
    pub(crate) attempts: u32,
    /// Tick after which the message expires instead of being retried.
    pub(crate) expires_at: u64,
    pub(crate) stage: Stage,
    pub(crate) last_refusal: Option<Refusal>,
    /// `Retry`: the message to push. `AwaitAck`: the envelope to redeliver.
    pub(crate) payload: Outgoing,
}

/// What the wheel holds.
#[derive(Debug)]
pub(crate) enum TimerEvent {
    /// Time for the next attempt of a tracked message.
    Retry(MessageId),
    /// The ack of a tracked message is overdue.
    AckTimeout(MessageId),
    /// A call's reply is overdue.
    Call(ReplyTimeout),
}

/// A due event with what it needs.
pub(crate) enum Due {
    Tracked(Box<Tracked>),
    Call(ReplyTimeout),
}

struct Entry {
    tracked: Box<Tracked>,
    timer: TimerKey,
}

struct State {
    wheel: TimerWheel<TimerEvent>,
    tracked: IdMap<Entry>,
}

/// The router's counters (see `DeliveryStats` for how they add up). The fast path
/// bumps two: `accepted` and `delivered`.
#[derive(Default)]
pub(crate) struct DeliveryCounters {
    /// Messages handed to the router.
    pub(crate) accepted: Counter,
    /// Messages that reached a mailbox and needed no ack (final).
    pub(crate) delivered: Counter,
    /// Messages acknowledged (final).
    pub(crate) acknowledged: Counter,
    /// Messages dead-lettered for any reason but expiry (final).
    pub(crate) failed: Counter,
    /// Messages that expired before delivery (final).
    pub(crate) expired: Counter,
    /// Exactly-once copies suppressed (final).
    pub(crate) duplicates: Counter,
    /// Retry and redelivery attempts.
    pub(crate) retries: Counter,
    /// Pushes of messages that await an ack (first delivery and redeliveries).
    pub(crate) pushes: Counter,
    /// Times a destination's breaker opened.
    pub(crate) breaker_trips: Counter,
}

/// In-flight messages, their timers, and the exactly-once window.
pub(crate) struct Tracker {
    state: Mutex<State>,
    dedupe: Mutex<Dedupe>,
    clock: std::sync::Arc<dyn Clock>,
    ticks: TickSource,
    limit: usize,
    /// The earliest deadline the driver has been told about (`u64::MAX`: none).
    pub(crate) next_wake: AtomicU64,
    pub(crate) counters: DeliveryCounters,
}

impl Tracker {
    pub(crate) fn new(
        clock: std::sync::Arc<dyn Clock>,
        limit: usize,
        dedupe_window: Duration,
        dedupe_capacity: usize,
    ) -> Self {
        let ticks = TickSource::new(clock.now());
        let window = ticks.deadline_after(ticks.origin(), dedupe_window);
        Tracker {
            state: Mutex::new(State {
                wheel: TimerWheel::new(),
                tracked: IdMap::default(),
            }),
            dedupe: Mutex::new(Dedupe::new(window, dedupe_capacity)),
            clock,
            ticks,
            limit: limit.max(1),
            next_wake: AtomicU64::new(u64::MAX),
            counters: DeliveryCounters::default(),
        }
    }

    /// The current tick.
    pub(crate) fn now(&self) -> u64 {
        self.ticks.instant_to_tick(self.clock.now())
    }

    /// The tick `after` from now (rounded up, saturating).
    pub(crate) fn after(&self, after: Duration) -> u64 {
        self.ticks.deadline_after(self.clock.now(), after)
    }

    /// The instant of `tick` (for the driver's sleep).
    pub(crate) fn instant_of(&self, tick: u64) -> Instant {
        self.ticks.tick_to_instant(tick)
    }

    // ===== exactly-once window =====

    pub(crate) fn reserve(&self, id: &MessageId) -> Reservation {
        let now = self.now();
        lock(&self.dedupe).reserve(id, now)
    }

    pub(crate) fn commit(&self, id: &MessageId) {
        let now = self.now();
        lock(&self.dedupe).commit(id, now);
    }

    pub(crate) fn rollback(&self, id: &MessageId) {
        lock(&self.dedupe).rollback(id);
    }

    // ===== tracking =====

    /// Tracks `tracked` with its timer at `deadline`. Hands it back at the limit.
    /// Returns the earliest deadline if it moved earlier (the driver must wake).
    pub(crate) fn track(
        &self,
        tracked: Box<Tracked>,
        deadline: u64,
    ) -> Result<Option<u64>, Box<Tracked>> {
        let id = tracked.payload.id().clone();
        let event = match tracked.stage {
            Stage::Retry => TimerEvent::Retry(id.clone()),
            Stage::AwaitAck => TimerEvent::AckTimeout(id.clone()),
        };
        let mut state = lock(&self.state);
        if state.tracked.len() >= self.limit && !state.tracked.contains_key(&id) {
            return Err(tracked);
        }
        let deadline = deadline.max(state.wheel.now() + 1);
        let timer = match state.wheel.insert(deadline, event) {
            Ok(key) => key,
            Err(_) => unreachable!("deadline is after the wheel's now"),
        };
        if let Some(old) = state.tracked.insert(id, Entry { tracked, timer }) {
            state.wheel.cancel(old.timer);
        }
        Ok(self.note_deadline(deadline))
    }

    /// Schedules a call timeout. Returns the earliest deadline if it moved earlier.
    pub(crate) fn call_timeout(
        &self,
        timeout: ReplyTimeout,
        deadline: u64,
    ) -> (Option<TimerKey>, Option<u64>) {
        let mut state = lock(&self.state);
        match state.wheel.insert(deadline, TimerEvent::Call(timeout)) {
            Ok(key) => {
                drop(state);
                (Some(key), self.note_deadline(deadline))
            }
            Err(elapsed) => {
                drop(state);
                if let TimerEvent::Call(t) = elapsed.into_inner() {
                    t.expire();
                }
                (None, None)
            }
        }
    }

    /// Cancels a call timeout that is no longer needed.
    pub(crate) fn cancel_timer(&self, key: TimerKey) {
        lock(&self.state).wheel.cancel(key);
    }

    fn note_deadline(&self, deadline: u64) -> Option<u64> {
        let previous = self.next_wake.fetch_min(deadline, Relaxed);
        (deadline < previous).then_some(deadline)
    }

    /// Ends tracking of an acknowledged message. `false` if it was not awaiting an ack.
    pub(crate) fn acknowledge(&self, id: &MessageId) -> bool {
        let mut state = lock(&self.state);
        match state.tracked.get(id) {
            Some(entry) if entry.tracked.stage == Stage::AwaitAck => {
                let entry = state.tracked.remove(id).expect("present");
                state.wheel.cancel(entry.timer);
                true
            }
            _ => false,
        }
    }

    /// Takes every event due now. Returns them and the next deadline.
    pub(crate) fn take_due(&self) -> (Vec<Due>, Option<u64>) {
        let now = self.now();
        let mut fired = Vec::new();
        let mut due = Vec::new();
        let mut state = lock(&self.state);
        state.wheel.advance(now, &mut fired);
        for (key, event) in fired {
            match event {
                TimerEvent::Retry(id) | TimerEvent::AckTimeout(id) => {
                    // Only the entry's own timer may fire it.
                    if state.tracked.get(&id).is_some_and(|e| e.timer == key) {
                        let entry = state.tracked.remove(&id).expect("present");
                        due.push(Due::Tracked(entry.tracked));
                    }
                }
                TimerEvent::Call(timeout) => due.push(Due::Call(timeout)),
            }
        }
        let next = state.wheel.next_deadline();
        self.next_wake.store(next.unwrap_or(u64::MAX), Relaxed);
        drop(state);
        lock(&self.dedupe).expire(now);
        (due, next)
    }

    /// When the next timer is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let next = lock(&self.state).wheel.next_deadline()?;
        Some(self.instant_of(next))
    }

    /// Messages waiting for a retry, and for an ack.
    pub(crate) fn pending(&self) -> (u64, u64) {
        let state = lock(&self.state);
        let awaiting = state
            .tracked
            .values()
            .filter(|e| e.tracked.stage == Stage::AwaitAck)
            .count() as u64;
        (state.tracked.len() as u64 - awaiting, awaiting)
    }

    /// Removes every tracked message (shutdown), handing them back.
    #[allow(clippy::vec_box)] // the boxes move on as they are (dead letters)
    pub(crate) fn drain(&self) -> Vec<Box<Tracked>> {
        let mut state = lock(&self.state);
        let entries: Vec<Entry> = state.tracked.drain().map(|(_, e)| e).collect();
        for e in &entries {
            state.wheel.cancel(e.timer);
        }
        entries.into_iter().map(|e| e.tracked).collect()
    }
}
