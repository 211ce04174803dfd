//! A per-destination circuit breaker in one atomic word.
//!
//! A breaker stops hammering a destination that keeps refusing messages: after
//! `failure_threshold` consecutive delivery failures it *opens* and refuses at once
//! (`MessagingError::CircuitOpen`); after `reset_timeout` it lets exactly **one** probe
//! through (*half-open*); the probe's outcome closes or re-opens it.
//!
//! The breaker holds no clock: callers pass `now` in wheel ticks (1 tick = 1 ms, see
//! [`TickSource`](crate::TickSource)) and the reset timeout in ticks.
//!
//! # Transitions
//!
//! | state | event | next state | caller gets / does |
//! |---|---|---|---|
//! | Closed(f) | `admit` | Closed(f) | `Allowed` (one load, no write) |
//! | Closed(f) | `on_success(Allowed)` | Closed(0) | (no write when `f == 0`) |
//! | Closed(f) | `on_failure(Allowed)`, `f + 1 < threshold` | Closed(f + 1) | |
//! | Closed(f) | `on_failure(Allowed)`, `f + 1 >= threshold` | Open(now, trips = 1) | |
//! | Open(t) | `admit`, `now < t + reset` | Open(t) | `Rejected { retry_at: t + reset }` |
//! | Open(t) | `admit`, `now >= t + reset`, wins the CAS | HalfOpen(t) | `Probe` |
//! | Open(t) | `admit`, `now >= t + reset`, loses the CAS | (as the winner left it) | re-examined: `Rejected` while half-open |
//! | HalfOpen | `admit` | HalfOpen | `Rejected { retry_at: now + reset }` |
//! | HalfOpen | `on_success(Probe)` | Closed(0) | |
//! | HalfOpen | `on_failure(Probe)` | Open(now, trips + 1) | |
//! | Open / HalfOpen | `on_success(Allowed)`, `on_failure(Allowed)` | unchanged | a late outcome of a send admitted before the breaker opened |
//! | any | `on_success(Rejected)`, `on_failure(Rejected)` | unchanged | nothing was sent |
//!
//! While half-open, `retry_at` is `now + reset`: the probe is in flight, and if it
//! fails the breaker re-opens no earlier than `now`, so no new probe can be admitted
//! before `now + reset`. (If the probe succeeds, a caller retrying then finds the
//! breaker closed.) `opened_at + reset` would lie in the past and make callers spin.
//!
//! `trips` counts consecutive openings without a close in between (saturating at 63),
//! so a caller may escalate the reset timeout it passes to `admit` after failed probes.
//!
//! # Word layout
//!
//! | bits | Closed | Open / HalfOpen |
//! |---|---|---|
//! | 63..62 | state = 0 | state = 1 (Open) / 2 (HalfOpen) |
//! | 61..56 | 0 | `trips` |
//! | 55..0 | consecutive failures (≤ `u32::MAX`) | `opened_at` tick (saturating at 2^56 − 1, ~2.3 million years) |
//!
//! A closed breaker with no failures is the word 0. No other data is published through
//! the word, so the orderings below only order the breaker's own transitions.

use std::fmt::Display;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observe::events;
use crate::sync::AtomicU64;

/// When a destination's breaker opens and how long it stays open.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::CircuitBreakerConfig;
///
/// let config = CircuitBreakerConfig { failure_threshold: 3, ..Default::default() };
/// assert!(config.validate().is_ok());
/// assert_eq!(config.reset_timeout, Duration::from_secs(30));
/// assert!(CircuitBreakerConfig { failure_threshold: 0, ..config }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreakerConfig {
    /// Consecutive delivery failures that open the breaker (≥ 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe is let through (> 0).
    pub reset_timeout: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
        }
    }
}

impl CircuitBreakerConfig {
    /// Refuses a zero `failure_threshold` or a zero `reset_timeout`.
    ///
    /// # Errors
    ///
    /// A message naming the refused field.
    pub fn validate(&self) -> Result<(), String> {
        if self.failure_threshold == 0 {
            return Err("circuit breaker failure_threshold must be at least 1, got 0".into());
        }
        if self.reset_timeout.is_zero() {
            return Err("circuit breaker reset_timeout must be greater than zero, got 0ns".into());
        }
        Ok(())
    }

    /// `reset_timeout` in whole ticks, rounded up, at least 1, saturating.
    pub(crate) fn reset_ticks(&self) -> u64 {
        let ticks = self
            .reset_timeout
            .as_nanos()
            .div_ceil(crate::timer::TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

/// A system's breaker settings in ticks, and the admission rule every destination
/// kind applies around a push (the mailbox table and custom routers alike). Both
/// report the transitions they cause, naming the destination `to`: opened (`WARN`),
/// half-open and closed (`INFO`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    threshold: u32,
    reset_ticks: u64,
}

impl BreakerSettings {
    /// The settings of a validated `config`.
    pub(crate) fn new(config: &CircuitBreakerConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(BreakerSettings {
            threshold: config.failure_threshold,
            reset_ticks: config.reset_ticks(),
        })
    }

    /// Before a push to the destination of `breaker`: its admission, or the tick at
    /// which to retry. `now` is read only when the breaker is not closed (the fast path
    /// reads no clock). `seed` (a message id's bits) spreads the retries waiting on one
    /// breaker over a quarter of its reset time, so they do not all arrive with the
    /// probe.
    #[inline]
    pub(crate) fn admit(
        &self,
        breaker: &Breaker,
        now: impl FnOnce() -> u64,
        seed: u64,
        to: &impl Display,
    ) -> Result<Admission, u64> {
        if breaker.state() == BreakerState::Closed {
            return Ok(Admission::Allowed);
        }
        // A probe that failed again waits twice as long, up to 32 times the
        // configured reset timeout.
        let escalation = breaker.trips().saturating_sub(1).min(5);
        let reset = self.reset_ticks.saturating_mul(1 << escalation);
        match breaker.admit(now(), reset) {
            Admission::Rejected { retry_at } => {
                let jitter = seed % (self.reset_ticks / 4 + 1);
                Err(retry_at.saturating_add(jitter))
            }
            Admission::Probe => {
                events::breaker_half_open(to);
                Ok(Admission::Probe)
            }
            admission => Ok(admission),
        }
    }

    /// After the push: records its outcome. Returns whether this failure opened the
    /// breaker (a trip).
    #[inline]
    pub(crate) fn record(
        &self,
        breaker: &Breaker,
        admission: Admission,
        accepted: bool,
        now: impl FnOnce() -> u64,
        to: &impl Display,
    ) -> bool {
        if accepted {
            breaker.on_success(admission);
            if admission == Admission::Probe {
                events::breaker_closed(to);
            }
            return false;
        }
        let was_open = breaker.state() == BreakerState::Open;
        breaker.on_failure(admission, now(), self.threshold);
        let tripped = !was_open && breaker.state() == BreakerState::Open;
        if tripped {
            events::breaker_opened(to, breaker.trips());
        }
        tripped
    }
}

/// A breaker's state, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Deliveries go through.
    Closed,
    /// Deliveries are refused until the reset timeout passes.
    Open,
    /// One probe delivery is in flight; others are refused.
    HalfOpen,
}

/// What `admit` decided for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// The one probe of a half-open breaker: go ahead, and report the outcome.
    Probe,
    /// Refused; try again at tick `retry_at`.
    Rejected {
        /// The earliest tick at which `admit` may let a delivery through.
        retry_at: u64,
    },
}

/// One destination's breaker (see the module doc for the transitions).
#[derive(Debug)]
pub(crate) struct Breaker {
    /// The packed state word (see "Word layout").
    word: AtomicU64,
}

// ===== the packed word =====

/// State field shift.
const STATE_SHIFT: u32 = 62;
/// State value: closed.
const CLOSED: u64 = 0;
/// State value: open.
const OPEN: u64 = 1;
/// State value: half-open.
const HALF_OPEN: u64 = 2;
/// Trips field shift (bits 61..56).
const TRIPS_SHIFT: u32 = 56;
/// Largest trips value.
const MAX_TRIPS: u64 = 63;
/// Mask of the low 56 bits: failures (closed) or `opened_at` (open, half-open).
const PAYLOAD: u64 = (1 << TRIPS_SHIFT) - 1;

fn state_of(word: u64) -> u64 {
    word >> STATE_SHIFT
}

fn payload_of(word: u64) -> u64 {
    word & PAYLOAD
}

fn trips_of(word: u64) -> u64 {
    (word >> TRIPS_SHIFT) & MAX_TRIPS
}

fn pack(state: u64, trips: u64, payload: u64) -> u64 {
    (state << STATE_SHIFT) | (trips.min(MAX_TRIPS) << TRIPS_SHIFT) | payload.min(PAYLOAD)
}

// ===== impl Breaker =====

impl Breaker {
    /// A closed breaker with no failures.
    pub(crate) fn new() -> Self {
        Breaker {
            word: AtomicU64::new(0),
        }
    }

    /// Decides whether a delivery at tick `now` may go ahead.
    ///
    /// `reset_ticks` is the open period (see
    /// [`CircuitBreakerConfig::reset_ticks`]); a caller may lengthen it with
    /// [`trips`](Self::trips). Closed costs one `Acquire` load.
    #[inline]
    pub(crate) fn admit(&self, now: u64, reset_ticks: u64) -> Admission {
        let mut word = self.word.load(Acquire);
        loop {
            match state_of(word) {
                CLOSED => return Admission::Allowed,
                OPEN => {
                    let retry_at = payload_of(word).saturating_add(reset_ticks);
                    if now < retry_at {
                        return Admission::Rejected { retry_at };
                    }
                    let probing = pack(HALF_OPEN, trips_of(word), payload_of(word));
                    // One caller wins the CAS and probes; a loser re-examines what the
                    // winner left (half-open → rejected).
                    match self.word.compare_exchange(word, probing, AcqRel, Acquire) {
                        Ok(_) => return Admission::Probe,
                        Err(current) => word = current,
                    }
                }
                _ => {
                    return Admission::Rejected {
                        retry_at: now.saturating_add(reset_ticks),
                    }
                }
            }
        }
    }

    /// Reports a successful delivery admitted as `admission`.
    pub(crate) fn on_success(&self, admission: Admission) {
        match admission {
            // Only the probe's holder moves the breaker out of half-open.
            Admission::Probe => self.word.store(pack(CLOSED, 0, 0), Release),
            Admission::Allowed => {
                let mut word = self.word.load(Acquire);
                // Closed with failures: reset them. Already 0, or open (a late
                // success of a send admitted before the breaker opened): no write.
                while state_of(word) == CLOSED && payload_of(word) != 0 {
                    match self.word.compare_exchange_weak(word, 0, AcqRel, Acquire) {
                        Ok(_) => return,
                        Err(current) => word = current,
                    }
                }
            }
            Admission::Rejected { .. } => {}
        }
    }

    /// Reports a failed delivery admitted as `admission`, at tick `now`; `threshold`
    /// consecutive failures open the breaker (0 is treated as 1).
    pub(crate) fn on_failure(&self, admission: Admission, now: u64, threshold: u32) {
        match admission {
            Admission::Probe => {
                let trips = trips_of(self.word.load(Acquire)) + 1;
                self.word.store(pack(OPEN, trips, now), Release);
            }
            Admission::Allowed => {
                let threshold = u64::from(threshold.max(1));
                let mut word = self.word.load(Acquire);
                // Open or half-open already: a late failure changes nothing.
                while state_of(word) == CLOSED {
                    let failures = (payload_of(word) + 1).min(u64::from(u32::MAX));
                    let next = if failures >= threshold {
                        pack(OPEN, 1, now)
                    } else {
                        pack(CLOSED, 0, failures)
                    };
                    match self.word.compare_exchange_weak(word, next, AcqRel, Acquire) {
                        Ok(_) => return,
                        Err(current) => word = current,
                    }
                }
            }
            Admission::Rejected { .. } => {}
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        match state_of(self.word.load(Acquire)) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed (0 when open or half-open).
    #[cfg(test)]
    pub(crate) fn consecutive_failures(&self) -> u32 {
        let word = self.word.load(Acquire);
        if state_of(word) == CLOSED {
            u32::try_from(payload_of(word)).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// Consecutive openings without a close in between (0 when closed, at most 63).
    pub(crate) fn trips(&self) -> u32 {
        trips_of(self.word.load(Acquire)) as u32
    }

    /// The tick at which the breaker last opened (`None` when closed).
    #[cfg(test)]
    pub(crate) fn opened_at(&self) -> Option<u64> {
        let word = self.word.load(Acquire);
        (state_of(word) != CLOSED).then(|| payload_of(word))
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    const RESET: u64 = 100;

    fn open_at(now: u64, threshold: u32) -> Breaker {
        let b = Breaker::new();
        for _ in 0..threshold {
            assert_eq!(b.admit(now, RESET), Admission::Allowed);
            b.on_failure(Admission::Allowed, now, threshold);
        }
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    #[test]
    fn config_validation() {
        assert!(CircuitBreakerConfig::default().validate().is_ok());
        let zero = CircuitBreakerConfig {
            failure_threshold: 0,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("failure_threshold"));
        let instant = CircuitBreakerConfig {
            reset_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(instant.validate().unwrap_err().contains("reset_timeout"));
        let ticks = |d| {
            CircuitBreakerConfig {
                reset_timeout: d,
                ..Default::default()
            }
            .reset_ticks()
        };
        assert_eq!(ticks(Duration::from_secs(30)), 30_000);
        assert_eq!(ticks(Duration::from_nanos(1)), 1);
        assert_eq!(ticks(Duration::from_micros(1500)), 2);
        assert_eq!(ticks(Duration::MAX), u64::MAX);
    }

    #[test]
    fn closed_counts_consecutive_failures() {
        let b = Breaker::new();
        assert_eq!(b.state(), BreakerState::Closed);
        for n in 1..3 {
            b.on_failure(Admission::Allowed, 5, 3);
            assert_eq!(b.consecutive_failures(), n);
            assert_eq!(b.state(), BreakerState::Closed);
        }
        b.on_success(Admission::Allowed);
        assert_eq!(b.consecutive_failures(), 0, "a success resets");
        b.on_success(Admission::Allowed);
        assert_eq!(b.word.load(Acquire), 0);
        for _ in 0..2 {
            b.on_failure(Admission::Allowed, 5, 3);
        }
        assert_eq!(b.state(), BreakerState::Closed, "not consecutive enough");
        b.on_failure(Admission::Allowed, 7, 3);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened_at(), Some(7));
        assert_eq!(b.trips(), 1);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn threshold_one_and_zero() {
        let b = Breaker::new();
        b.on_failure(Admission::Allowed, 1, 1);
        assert_eq!(b.state(), BreakerState::Open);
        let b = Breaker::new();
        b.on_failure(Admission::Allowed, 1, 0);
        assert_eq!(b.state(), BreakerState::Open, "0 treated as 1");
    }

    #[test]
    fn open_rejects_until_reset() {
        let b = open_at(1000, 2);
        for now in [1000, 1001, 1099] {
            assert_eq!(
                b.admit(now, RESET),
                Admission::Rejected { retry_at: 1100 },
                "{now}"
            );
        }
        assert_eq!(b.state(), BreakerState::Open);
        // Late outcomes of sends admitted before opening change nothing.
        b.on_success(Admission::Allowed);
        b.on_failure(Admission::Allowed, 1050, 2);
        b.on_success(Admission::Rejected { retry_at: 1100 });
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened_at(), Some(1000));
    }

    #[test]
    fn half_open_admits_one_probe() {
        let b = open_at(1000, 1);
        assert_eq!(b.admit(1100, RESET), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(1100, RESET), Admission::Rejected { retry_at: 1200 });
        assert_eq!(b.admit(5000, RESET), Admission::Rejected { retry_at: 5100 });
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes() {
        let b = open_at(1000, 3);
        let probe = b.admit(1200, RESET);
        assert_eq!(probe, Admission::Probe);
        b.on_success(probe);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!((b.consecutive_failures(), b.trips()), (0, 0));
        assert_eq!(b.admit(1200, RESET), Admission::Allowed);
        // The threshold counts afresh.
        b.on_failure(Admission::Allowed, 1201, 3);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens() {
        let b = open_at(1000, 1);
        let probe = b.admit(1100, RESET);
        b.on_failure(probe, 1150, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened_at(), Some(1150));
        assert_eq!(b.trips(), 2, "escalation kept");
        assert_eq!(b.admit(1200, RESET), Admission::Rejected { retry_at: 1250 });
        let again = b.admit(1250, RESET);
        assert_eq!(again, Admission::Probe);
        b.on_failure(again, 1250, 1);
        assert_eq!(b.trips(), 3);
        b.on_success(b.admit(1350, RESET));
        assert_eq!((b.state(), b.trips()), (BreakerState::Closed, 0));
    }

    #[test]
    fn saturates() {
        let b = Breaker::new();
        b.on_failure(Admission::Allowed, u64::MAX, 1);
        assert_eq!(b.opened_at(), Some(PAYLOAD));
        assert_eq!(
            b.admit(u64::MAX - 1, u64::MAX),
            Admission::Rejected { retry_at: u64::MAX }
        );
        let mut probe = b.admit(u64::MAX, u64::MAX);
        assert_eq!(probe, Admission::Probe);
        assert_eq!(
            b.admit(u64::MAX, u64::MAX),
            Admission::Rejected { retry_at: u64::MAX }
        );
        for _ in 0..100 {
            b.on_failure(probe, 0, 1);
            probe = b.admit(u64::MAX, 0);
            assert_eq!(probe, Admission::Probe);
        }
        b.on_failure(probe, 0, 1);
        assert_eq!(b.trips(), 63);
        assert_eq!(b.state(), BreakerState::Open);
        let many = Breaker::new();
        many.word
            .store(pack(CLOSED, 0, u64::from(u32::MAX)), Release);
        many.on_failure(Admission::Allowed, 3, u32::MAX);
        assert_eq!(many.state(), BreakerState::Open);
    }

    #[test]
    fn racing_half_open_admits_exactly_one_probe() {
        for round in 0..200 {
            let b = Arc::new(open_at(0, 1));
            let start = Arc::new(Barrier::new(3));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let (b, start) = (b.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        b.admit(RESET, RESET)
                    })
                })
                .collect();
            let outcomes: Vec<Admission> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let probes = outcomes.iter().filter(|a| **a == Admission::Probe).count();
            assert_eq!(probes, 1, "round {round}: {outcomes:?}");
            assert!(outcomes
                .iter()
                .all(|a| matches!(a, Admission::Probe | Admission::Rejected { retry_at: 200 })));
            assert_eq!(b.state(), BreakerState::HalfOpen);
        }
    }

    #[test]
    fn racing_failures_open_once() {
        let b = Arc::new(Breaker::new());
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        b.on_failure(Admission::Allowed, 9, 2_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open, "3000 failures ≥ 2000");
        assert_eq!((b.opened_at(), b.trips()), (Some(9), 1));
    }
}
