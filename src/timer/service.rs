//! The timer service of one system: its clock, the tick base of its wheel, and the
//! driver that turns the wheel.
//!
//! Every `MessageSystem` has exactly one. Whatever owns timers (the delivery engine:
//! retries, ack timeouts, call timeouts, the exactly-once window) implements [`Fire`]
//! and keeps its wheel beside the records the timers belong to, so that a record and
//! its timer change under one lock; the service tells it what time it is, and runs the
//! one loop that fires what is due:
//!
//! ```text
//! loop {
//!     next = target.fire_due()                       // fire every timer due by the clock
//!     sleep(service.wait_before(next)) or woken     // measured on the Clock, ≤ heartbeat
//! }
//! ```
//!
//! The thread driver (`driver`) and the tokio task (`crate::tokio`) differ only in how
//! they sleep; both compute the wait with [`TimerService::wait_before`] on the system's
//! [`Clock`], so a `ManualClock` never makes either spin.
//!
//! # Invariants
//!
//! - `next_wake` is never later than the earliest deadline on the wheel: a timer set
//!   earlier than it wakes the driver ([`TimerService::scheduled`]), and every firing
//!   pass stores the wheel's next deadline ([`TimerService::planned`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use super::driver::{Driver, TimerDriver};
use super::{Clock, TickSource, TICK};
use crate::sync::AtomicU64;

/// Something with timers to fire: the service's driver calls it.
pub(crate) trait Fire: Send + Sync + 'static {
    /// Fires everything due now; returns when the next timer is due.
    fn fire_due(&self) -> Option<Instant>;

    /// The service whose clock measures the driver's sleeps.
    fn timers(&self) -> &TimerService;
}

/// Time and its driver for one system (see the module doc).
pub(crate) struct TimerService {
    clock: std::sync::Arc<dyn Clock>,
    ticks: TickSource,
    /// Longest sleep between firing passes: housekeeping (the exactly-once window)
    /// runs at least this often (`RouterConfig::retry_interval`).
    heartbeat: Duration,
    /// The earliest deadline the driver has been told about (`u64::MAX`: none).
    next_wake: AtomicU64,
    driver: Driver,
    /// Who fires the timers; set once, right after the owner is built.
    target: OnceLock<Weak<dyn Fire>>,
}

impl TimerService {
    pub(crate) fn new(
        clock: std::sync::Arc<dyn Clock>,
        driver: TimerDriver,
        heartbeat: Duration,
    ) -> Self {
        let ticks = TickSource::new(clock.now());
        TimerService {
            clock,
            ticks,
            heartbeat: heartbeat.max(TICK),
            next_wake: AtomicU64::new(u64::MAX),
            driver: Driver::new(driver),
            target: OnceLock::new(),
        }
    }

    /// Names who fires the timers (the driver holds it weakly).
    pub(crate) fn attach(&self, target: Weak<dyn Fire>) {
        let _ = self.target.set(target);
    }

    /// The clock.
    pub(crate) fn clock(&self) -> &std::sync::Arc<dyn Clock> {
        &self.clock
    }

    /// The tick base (tick 0 = when the service was made).
    pub(crate) fn ticks(&self) -> &TickSource {
        &self.ticks
    }

    /// The current tick.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.ticks.instant_to_tick(self.clock.now())
    }

    /// The tick `after` from now (rounded up, saturating).
    #[inline]
    pub(crate) fn after(&self, after: Duration) -> u64 {
        self.ticks.deadline_after(self.clock.now(), after)
    }

    /// The instant of `tick`.
    pub(crate) fn instant_of(&self, tick: u64) -> Instant {
        self.ticks.tick_to_instant(tick)
    }

    /// A timer was set at `deadline`: if it is earlier than any the driver waits for,
    /// wake the driver to re-plan (starting its thread on first use).
    #[inline]
    pub(crate) fn scheduled(&self, deadline: u64) {
        // Most deadlines are later than the one the driver already waits for (calls
        // with one timeout arrive in deadline order): a load, not a read-modify-write.
        if deadline >= self.next_wake.load(Relaxed) {
            return;
        }
        if deadline < self.next_wake.fetch_min(deadline, Relaxed) {
            if let Some(target) = self.target.get() {
                self.driver.wake(target.clone());
            }
        }
    }

    /// A firing pass left `next` as the wheels' earliest deadline.
    pub(crate) fn planned(&self, next: Option<u64>) {
        self.next_wake.store(next.unwrap_or(u64::MAX), Relaxed);
    }

    /// How long a driver may sleep after a firing pass that returned `next`: until
    /// `next` by the system's clock, at most a heartbeat, at least a tick (everything
    /// due has fired, so `next` is in the future; the floor only guards against a
    /// clock that disagrees with the wheel's rounding).
    pub(crate) fn wait_before(&self, next: Option<Instant>) -> Duration {
        let now = self.clock.now();
        next.map_or(self.heartbeat, |at| {
            at.saturating_duration_since(now).min(self.heartbeat)
        })
        .max(TICK)
    }

    /// Stops the driver (and waits for its thread, unless called from it).
    pub(crate) fn stop(&self) {
        self.driver.stop();
    }
}

impl std::fmt::Debug for TimerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerService")
            .field("driver", self.driver.mode())
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// One firing pass of the loop both drivers run: fires what is due on `target` and
/// returns how long to sleep, or `None` once the target (its system) is gone.
pub(crate) fn turn(target: &Weak<dyn Fire>) -> Option<Duration> {
    let fire = target.upgrade()?;
    let next = fire.fire_due();
    Some(fire.timers().wait_before(next))
}
