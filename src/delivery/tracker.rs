//! In-flight messages: those waiting for a retry or for an acknowledgement, with their
//! timers on the wheel.
//!
//! Only messages that need it are tracked: a message pushed into a mailbox on its first
//! attempt, with no ack asked, never reaches this module.
//!
//! # Ground rules
//!
//! - A tracked message *is* its timer: the wheel holds the entry itself, so each has
//!   exactly one live timer (NATS #6085: no shared timer), and cancelling the timer
//!   (an ack) removes the entry. The same id may be tracked more than once (an id sent
//!   twice is two messages, except under exactly-once); `by_id` finds them for acks.
//! - The state lock is never held while pushing into a mailbox or dead-lettering.
//! - `max_concurrent_deliveries` bounds the entries; past it, `track` refuses and the
//!   caller dead-letters the message with `Overloaded`. After `drain` (shutdown) it
//!   refuses too, so nothing is left behind with no driver to fire it.

use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use ahash::AHasher;

use super::call_timers::{CallTimerKey, CallTimers};
use super::dedup::{Dedupe, Reservation};
use super::retry::RetryPolicy;
use super::shards::{Shards, SHARDS};
use super::shrink;
use chrono::{DateTime, Utc};

use super::manager::{DeliveryRecord, DeliveryStatus};
use crate::message::{
    reply::ReplyTimeout, AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority,
    Outgoing,
};
use crate::router::Refusal;
use crate::stats::Counter;
use crate::sync::{lock, Mutex};
use crate::timer::service::TimerService;
use crate::timer::{TimerKey, TimerWheel};

type IdMap<V> = std::collections::HashMap<MessageId, V, BuildHasherDefault<AHasher>>;

/// What a tracked message is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Its last push was refused; the timer fires the next attempt.
    Retry,
    /// It is in a mailbox; the timer fires if no ack arrives first.
    AwaitAck,
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
    /// Set for a message handed back from a crashed agent: each retry goes to the
    /// agent registered under this name then (the crashed one's successor).
    pub(crate) by_name: Option<String>,
}

/// What the wheel holds.
#[derive(Debug)]
pub(crate) enum TimerEvent {
    /// A tracked message: its next attempt (`Stage::Retry`) or its overdue ack
    /// (`Stage::AwaitAck`) is due.
    Tracked(Box<Tracked>),
    /// A user's timer (`send_after`, `send_interval`) is due.
    User(Box<UserTimer>),
}

/// A user's timer: a message to send to `to` once, or one made every period.
pub(crate) struct UserTimer {
    pub(crate) to: AgentPid,
    pub(crate) kind: UserKind,
}

/// What a [`UserTimer`] sends.
pub(crate) enum UserKind {
    /// `send_after`: this message, once.
    Once(AgentMessage),
    /// `send_interval`: a message made by `make` every `period` ticks; `deadline` is
    /// the tick it is due at now, `id` its entry in `State::intervals`.
    Interval {
        id: u64,
        make: Box<dyn FnMut() -> AgentMessage + Send>,
        period: u64,
        deadline: u64,
    },
}

impl std::fmt::Debug for UserTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            UserKind::Once(_) => "once",
            UserKind::Interval { .. } => "interval",
        };
        f.debug_struct("UserTimer")
            .field("to", &self.to)
            .field("kind", &kind)
            .finish()
    }
}

/// A timer set by `MessageSystem::send_after` or `send_interval`; give it to
/// `cancel_timer` to cancel it.
///
/// Opaque. A ref names a timer of the system that made it: `send_after`'s names one
/// place on the wheel (a slot and a generation, so a fired or cancelled timer's ref
/// never cancels a later timer), `send_interval`'s an entry that outlives each firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerRef(TimerRefKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TimerRefKind {
    Once(TimerKey),
    Interval(u64),
    /// A timer that fired when it was set (zero delay).
    Fired,
}

impl TimerRef {
    /// The ref of a timer that fired at once.
    pub(crate) fn fired() -> Self {
        TimerRef(TimerRefKind::Fired)
    }
}

/// Why `track` refused.
pub(crate) enum TrackError {
    /// It was acknowledged while its timer fired (it is settled; do not push it).
    Acknowledged,
    /// `max_concurrent_deliveries` messages are in flight.
    Overloaded(Box<Tracked>),
    /// The tracker was drained (shutdown).
    Closed(Box<Tracked>),
    /// Time has reached the end of the clock's range: nothing can be scheduled.
    EndOfTime(Box<Tracked>),
}

/// A due event with what it needs.
pub(crate) enum Due {
    Tracked(Box<Tracked>),
    Call(ReplyTimeout),
    User(Box<UserTimer>),
}

struct State {
    wheel: TimerWheel<TimerEvent>,
    /// The timers of the tracked messages, by id.
    by_id: IdMap<Vec<TimerKey>>,
    /// Tracked messages by stage.
    retrying: usize,
    awaiting_ack: usize,
    /// Ids of messages that asked for an ack and are out of the wheel for a moment (a
    /// timer fired, or a refused push is being rescheduled), with whether an ack came
    /// meanwhile. `track` and `finish_firing` settle them under this lock, so an ack
    /// that lands in that moment is never lost.
    firing: IdMap<bool>,
    /// Messages handed to the router by `take_due` and not yet settled (re-tracked,
    /// delivered or given up): still pending, so the ledger adds up meanwhile.
    in_hand: usize,
    /// Set by `drain`: nothing more is tracked.
    closed: bool,
    /// Live `send_interval` timers: id → the wheel key of its next firing (stale
    /// while it fires). Cancelling removes the entry; a firing re-arms only if its
    /// entry is still here.
    intervals: IdMap64<TimerKey>,
    /// The next interval id.
    next_interval: u64,
}

type IdMap64<V> = std::collections::HashMap<u64, V, BuildHasherDefault<AHasher>>;

impl State {
    fn count(&mut self, stage: Stage, up: bool) {
        let n = match stage {
            Stage::Retry => &mut self.retrying,
            Stage::AwaitAck => &mut self.awaiting_ack,
        };
        *n = if up { *n + 1 } else { *n - 1 };
    }

    /// Forgets `key` as a timer of `id`.
    fn unindex(&mut self, id: &MessageId, key: TimerKey) {
        if let Some(keys) = self.by_id.get_mut(id) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.by_id.remove(id);
            }
        }
    }
}

/// The router's counters (see `DeliveryStats` for how they add up). The fast path
/// (accepted and delivered by the first push) bumps one: `delivered_at_once`.
#[derive(Default)]
pub(crate) struct DeliveryCounters {
    /// Messages handed to the router that the first push did not settle as delivered
    /// (all messages handed over: see `accepted_and_delivered`).
    pub(crate) accepted_otherwise: Counter,
    /// Messages accepted and delivered by their first push, with no ack asked (final).
    pub(crate) delivered_at_once: Counter,
    /// Messages that reached a mailbox on a later attempt and needed no ack (final;
    /// all delivered: see `accepted_and_delivered`).
    pub(crate) delivered_later: Counter,
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
}

impl DeliveryCounters {
    /// Messages handed to the router, and those of them that reached a mailbox and
    /// needed no ack (final). `delivered_at_once` is read once for both, so a snapshot
    /// taken while messages flow never shows more delivered than accepted.
    pub(crate) fn accepted_and_delivered(&self) -> (u64, u64) {
        let at_once = self.delivered_at_once.get();
        (
            at_once + self.accepted_otherwise.get(),
            at_once + self.delivered_later.get(),
        )
    }
}

/// The exactly-once window in shards, each remembering its share of `capacity` ids. A
/// small capacity (under 64 ids a shard) keeps one shard, so that its bound stays
/// exact; a large one is met to within a shard's rounding.
fn dedupe_shards(window: u64, capacity: usize) -> Shards<Dedupe> {
    let capacity = capacity.max(1);
    let n = if capacity >= SHARDS * 64 { SHARDS } else { 1 };
    Shards::new(n, || Dedupe::new(window, capacity.div_ceil(n)))
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What picks an id's shard: its two halves mixed (ids are random or sequential).
#[inline]
fn id_key(id: &MessageId) -> u64 {
    let (high, low) = id.0.as_u64_pair();
    high ^ low
}

/// In-flight messages, their timers, and the exactly-once window.
pub(crate) struct Tracker {
    state: Mutex<State>,
    /// The exactly-once window, split by id so that senders of different messages do
    /// not serialise on one lock (issue 12, item 4).
    dedupe: Shards<Dedupe>,
    /// Async calls' timeouts, in shards of their own.
    calls: CallTimers,
    /// The system's timer service: time, and the driver to wake for an earlier
    /// deadline.
    timers: std::sync::Arc<TimerService>,
    limit: usize,
    pub(crate) counters: DeliveryCounters,
}

impl Tracker {
    pub(crate) fn new(
        timers: std::sync::Arc<TimerService>,
        limit: usize,
        dedupe_window: Duration,
        dedupe_capacity: usize,
    ) -> Self {
        let ticks = timers.ticks();
        let window = ticks.deadline_after(ticks.origin(), dedupe_window);
        Tracker {
            state: Mutex::new(State {
                wheel: TimerWheel::new(),
                by_id: IdMap::default(),
                firing: IdMap::default(),
                in_hand: 0,
                retrying: 0,
                awaiting_ack: 0,
                closed: false,
                intervals: IdMap64::default(),
                next_interval: 0,
            }),
            dedupe: dedupe_shards(window, dedupe_capacity),
            calls: CallTimers::new(),
            timers,
            limit: limit.max(1),
            counters: DeliveryCounters::default(),
        }
    }

    /// The system's timer service.
    pub(crate) fn timers(&self) -> &std::sync::Arc<TimerService> {
        &self.timers
    }

    /// The current tick.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.timers.now()
    }

    /// The tick `after` from now (rounded up, saturating).
    #[inline]
    pub(crate) fn after(&self, after: Duration) -> u64 {
        self.timers.after(after)
    }

    // ===== exactly-once window =====

    pub(crate) fn reserve(&self, id: &MessageId) -> Reservation {
        let now = self.now();
        self.dedupe.lock_key(id_key(id)).reserve(id, now)
    }

    pub(crate) fn commit(&self, id: &MessageId) {
        let now = self.now();
        self.dedupe.lock_key(id_key(id)).commit(id, now);
    }

    pub(crate) fn rollback(&self, id: &MessageId) {
        self.dedupe.lock_key(id_key(id)).rollback(id);
    }

    pub(crate) fn uncommit(&self, id: &MessageId) {
        self.dedupe.lock_key(id_key(id)).uncommit(id);
    }

    // ===== tracking =====

    /// Tracks `tracked` with its timer at `deadline` (waking the driver if it is the
    /// earliest), or hands it back.
    pub(crate) fn track(
        &self,
        tracked: Box<Tracked>,
        deadline: u64,
    ) -> Result<TimerKey, TrackError> {
        let mut state = lock(&self.state);
        if tracked.require_ack && state.firing.remove(tracked.payload.id()) == Some(true) {
            return Err(TrackError::Acknowledged);
        }
        if state.closed {
            return Err(TrackError::Closed(tracked));
        }
        if state.retrying + state.awaiting_ack >= self.limit {
            return Err(TrackError::Overloaded(tracked));
        }
        let id = tracked.payload.id().clone();
        let stage = tracked.stage;
        let deadline = deadline.max(state.wheel.now().saturating_add(1));
        let key = match state.wheel.insert(deadline, TimerEvent::Tracked(tracked)) {
            Ok(key) => key,
            // Only at the last tick of time can a deadline not be after `now`.
            Err(elapsed) => match elapsed.into_inner() {
                TimerEvent::Tracked(tracked) => return Err(TrackError::EndOfTime(tracked)),
                TimerEvent::User(_) => unreachable!("inserted a tracked message"),
            },
        };
        state.by_id.entry(id).or_default().push(key);
        state.count(stage, true);
        drop(state);
        self.timers.scheduled(deadline);
        Ok(key)
    }

    /// Stops tracking the message of timer `key`; `None` if it is no longer tracked
    /// (acknowledged, fired, or drained).
    pub(crate) fn untrack(&self, key: TimerKey) -> Option<Box<Tracked>> {
        let mut state = lock(&self.state);
        match state.wheel.cancel(key)? {
            TimerEvent::Tracked(tracked) => {
                state.unindex(tracked.payload.id(), key);
                state.count(tracked.stage, false);
                if tracked.require_ack {
                    state.firing.insert(tracked.payload.id().clone(), false);
                }
                Some(tracked)
            }
            other => {
                // Not a tracked message's key: put nothing back (keys are never mixed).
                drop(other);
                None
            }
        }
    }

    /// Schedules a call timeout (in the call timers' shard of `key`); `None` if it
    /// already passed (the call then sees `Timeout` at once).
    pub(crate) fn call_timeout(
        &self,
        timeout: ReplyTimeout,
        deadline: u64,
        key: u64,
    ) -> Option<CallTimerKey> {
        match self.calls.arm(timeout, deadline, key, &self.timers) {
            Ok(key) => Some(key),
            Err(timeout) => {
                timeout.expire();
                None
            }
        }
    }

    /// Cancels a call timeout that is no longer needed.
    pub(crate) fn cancel_call_timeout(&self, key: CallTimerKey) {
        self.calls.disarm(key);
    }

    // ===== user timers =====

    /// Sets a user timer at `deadline`; hands it back if `deadline` has passed (the
    /// caller fires it at once).
    pub(crate) fn user_timer(
        &self,
        mut timer: Box<UserTimer>,
        deadline: u64,
    ) -> Result<TimerRef, Box<UserTimer>> {
        let mut state = lock(&self.state);
        let interval = match &mut timer.kind {
            UserKind::Interval {
                id, deadline: at, ..
            } => {
                *id = state.next_interval;
                *at = deadline;
                state.next_interval += 1;
                Some(*id)
            }
            UserKind::Once(_) => None,
        };
        let key = match state.wheel.insert(deadline, TimerEvent::User(timer)) {
            Ok(key) => key,
            Err(elapsed) => match elapsed.into_inner() {
                TimerEvent::User(timer) => return Err(timer),
                _ => unreachable!("inserted a user timer"),
            },
        };
        let r = match interval {
            Some(id) => {
                state.intervals.insert(id, key);
                TimerRef(TimerRefKind::Interval(id))
            }
            None => TimerRef(TimerRefKind::Once(key)),
        };
        drop(state);
        self.timers.scheduled(deadline);
        Ok(r)
    }

    /// Sets an interval timer that fired again, at `deadline`, unless it was
    /// cancelled meanwhile (then it is dropped). Hands it back if `deadline` has
    /// passed.
    pub(crate) fn rearm(&self, mut timer: Box<UserTimer>, next: u64) -> Result<(), Box<UserTimer>> {
        let UserKind::Interval { id, deadline, .. } = &mut timer.kind else {
            return Ok(());
        };
        let id = *id;
        *deadline = next;
        let mut state = lock(&self.state);
        if !state.intervals.contains_key(&id) {
            return Ok(()); // cancelled while it fired
        }
        match state.wheel.insert(next, TimerEvent::User(timer)) {
            Ok(key) => {
                state.intervals.insert(id, key);
                drop(state);
                self.timers.scheduled(next);
                Ok(())
            }
            Err(elapsed) => match elapsed.into_inner() {
                TimerEvent::User(timer) => Err(timer),
                _ => unreachable!("inserted a user timer"),
            },
        }
    }

    /// Ends interval `id` (its target is gone).
    pub(crate) fn forget_interval(&self, timer: &UserTimer) {
        if let UserKind::Interval { id, .. } = &timer.kind {
            lock(&self.state).intervals.remove(id);
        }
    }

    /// Cancels a user timer; `true` if it had not fired (an interval: had not been
    /// cancelled or ended).
    pub(crate) fn cancel_user(&self, timer: TimerRef) -> bool {
        let mut state = lock(&self.state);
        let key = match timer.0 {
            TimerRefKind::Fired => return false,
            TimerRefKind::Once(key) => key,
            TimerRefKind::Interval(id) => match state.intervals.remove(&id) {
                // Stale while it fires: the firing sees the entry gone and stops.
                Some(key) => {
                    if matches!(state.wheel.get(key), Some(TimerEvent::User(_))) {
                        state.wheel.cancel(key);
                    }
                    return true;
                }
                None => return false,
            },
        };
        // Only a user timer's key: a ref can never cancel a tracked message.
        if !matches!(state.wheel.get(key), Some(TimerEvent::User(t)) if matches!(t.kind, UserKind::Once(_)))
        {
            return false;
        }
        state.wheel.cancel(key).is_some()
    }

    /// Ends tracking of an acknowledged message: the oldest copy of `id` that asked for
    /// an ack, whether it waits for its ack or for a redelivery. `false` if none.
    pub(crate) fn acknowledge(&self, id: &MessageId) -> bool {
        let mut state = lock(&self.state);
        let Some(keys) = state.by_id.get(id) else {
            // Out of the wheel for a moment: settle it when it comes back.
            return match state.firing.get_mut(id) {
                Some(acked @ false) => {
                    *acked = true;
                    true
                }
                _ => false,
            };
        };
        let wants_ack = |key: &TimerKey| matches!(state.wheel.get(*key), Some(TimerEvent::Tracked(t)) if t.require_ack);
        let Some(key) = keys.iter().copied().find(wants_ack) else {
            return false;
        };
        let Some(TimerEvent::Tracked(tracked)) = state.wheel.cancel(key) else {
            unreachable!("found above")
        };
        state.unindex(id, key);
        state.count(tracked.stage, false);
        true
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
                TimerEvent::Tracked(tracked) => {
                    let id = tracked.payload.id().clone();
                    state.unindex(&id, key);
                    state.count(tracked.stage, false);
                    if tracked.require_ack {
                        state.firing.insert(id, false);
                    }
                    state.in_hand += 1;
                    due.push(Due::Tracked(tracked));
                }
                TimerEvent::User(timer) => due.push(Due::User(timer)),
            }
        }
        let next = state.wheel.next_deadline();
        // After a spike the maps keep their peak capacity: give it back.
        shrink(
            &mut state.by_id,
            |m| (m.len(), m.capacity()),
            |m, n| m.shrink_to(n),
        );
        shrink(
            &mut state.firing,
            |m| (m.len(), m.capacity()),
            |m, n| m.shrink_to(n),
        );
        drop(state);
        let mut overdue = Vec::new();
        let calls_next = self.calls.take_due(now, &mut overdue);
        due.extend(overdue.into_iter().map(Due::Call));
        let next = earliest(next, calls_next);
        self.timers.planned(next);
        self.dedupe.each(|window| window.expire(now));
        (due, next)
    }

    /// When the next timer is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let tracked = lock(&self.state).wheel.next_deadline();
        let next = earliest(tracked, self.calls.next_deadline())?;
        Some(self.timers.instant_of(next))
    }

    /// One message from `take_due` has been settled (re-tracked, delivered or given
    /// up).
    pub(crate) fn settled(&self) {
        let mut state = lock(&self.state);
        state.in_hand = state.in_hand.saturating_sub(1);
    }

    /// Ends the "firing" moment of a message that will not be tracked again (it is
    /// being given up on). Returns whether it was acknowledged meanwhile.
    pub(crate) fn finish_firing(&self, id: &MessageId) -> bool {
        lock(&self.state).firing.remove(id) == Some(true)
    }

    /// Messages waiting for a retry, and for an ack.
    pub(crate) fn pending(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (
            (state.retrying + state.in_hand) as u64,
            state.awaiting_ack as u64,
        )
    }

    /// The envelopes of every tracked message (waiting on the wheel for a retry or
    /// for its ack), soonest deadline first (ties in no set order), each with
    /// `attempts` set to the attempts made. Built messages (`MessageSystem::send`) have
    /// no envelope and are not listed; [`record`](Self::record) shows them.
    pub(crate) fn retry_candidates(&self) -> Vec<MessageEnvelope> {
        let state = lock(&self.state);
        let mut due: Vec<(u64, MessageEnvelope)> = state
            .by_id
            .values()
            .flatten()
            .filter_map(|&key| match state.wheel.get(key)? {
                TimerEvent::Tracked(tracked) => match &tracked.payload {
                    Outgoing::Envelope(envelope) => {
                        let mut envelope = envelope.clone();
                        envelope.attempts = tracked.attempts;
                        Some((state.wheel.deadline(key)?, envelope))
                    }
                    Outgoing::Message(_) => None,
                },
                TimerEvent::User(_) => None,
            })
            .collect();
        drop(state);
        due.sort_by_key(|(deadline, _)| *deadline);
        due.into_iter().map(|(_, envelope)| envelope).collect()
    }

    /// The record of the oldest tracked copy of `id`: `Pending` while it waits for a
    /// retry (with the last refusal), `InTransit` while it waits in a mailbox for its
    /// ack. `utc` turns a tick into a timestamp.
    pub(crate) fn record(
        &self,
        id: &MessageId,
        utc: impl Fn(u64) -> DateTime<Utc>,
    ) -> Option<DeliveryRecord> {
        let state = lock(&self.state);
        let key = *state.by_id.get(id)?.first()?;
        let Some(TimerEvent::Tracked(tracked)) = state.wheel.get(key) else {
            return None;
        };
        let (from, created_at) = match &tracked.payload {
            Outgoing::Envelope(e) => (e.from.clone(), e.created_at),
            Outgoing::Message(m) => (m.from().cloned(), utc(self.timers.now())),
        };
        let refusal = tracked.last_refusal.map(|r| format!("{r:?}"));
        let status = match tracked.stage {
            Stage::Retry => DeliveryStatus::Pending,
            Stage::AwaitAck => DeliveryStatus::InTransit,
        };
        Some(DeliveryRecord {
            message_id: id.clone(),
            from,
            to: tracked.to.clone(),
            status,
            attempts: tracked.attempts,
            created_at,
            last_attempt: None,
            delivered_at: None,
            acknowledged_at: None,
            error_message: refusal,
        })
    }

    /// Messages tracked now.
    pub(crate) fn len(&self) -> usize {
        let state = lock(&self.state);
        state.retrying + state.awaiting_ack
    }

    /// Removes every tracked message (shutdown), handing them back.
    #[allow(clippy::vec_box)] // the boxes move on as they are (dead letters)
    pub(crate) fn drain(&self) -> Vec<Box<Tracked>> {
        let mut state = lock(&self.state);
        state.closed = true;
        let keys: Vec<TimerKey> = state.by_id.drain().flat_map(|(_, keys)| keys).collect();
        state.retrying = 0;
        state.awaiting_ack = 0;
        keys.into_iter()
            .filter_map(|key| match state.wheel.cancel(key) {
                Some(TimerEvent::Tracked(tracked)) => Some(tracked),
                _ => None,
            })
            .collect()
    }
}
