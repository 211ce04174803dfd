//! Where time comes from, and how it becomes wheel ticks.
//!
//! The rest of the system reads time only through a [`Clock`], so tests can
//! swap in a [`ManualClock`] and run retries and timeouts deterministically
//! and instantly. [`TickSource`] converts between `Instant`s and the `u64`
//! ticks a [`TimerWheel`](super::TimerWheel) works in (1 tick = 1 ms).
//!
//! # Invariants
//!
//! * Deadlines round **up** to a tick and the current time rounds **down**,
//!   so `tick(now) >= tick(deadline)` implies `now >= deadline`: a timer
//!   driven through a `TickSource` never fires early (and at most one tick
//!   late).
//! * Every conversion saturates; none panics or overflows, even for
//!   `Duration::MAX` or `u64::MAX` ticks.
//! * A `ManualClock` never goes backwards.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Length of one wheel tick.
pub const TICK: Duration = Duration::from_millis(1);

/// Nanoseconds per tick, for the rounding arithmetic.
const NANOS_PER_TICK: u128 = TICK.as_nanos();

/// A source of the current time.
///
/// # Examples
///
/// ```rust
/// use std::sync::Arc;
/// use terraphim_agent_messaging::{Clock, ManualClock, SystemClock};
///
/// let clocks: Vec<Arc<dyn Clock>> = vec![Arc::new(SystemClock), Arc::new(ManualClock::new())];
/// for clock in &clocks {
///     let _ = clock.now();
/// }
/// ```
pub trait Clock: Send + Sync + Debug + 'static {
    /// Returns the current time. Successive calls never go backwards.
    fn now(&self) -> Instant;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// The operating system's monotonic clock ([`Instant::now`]).
///
/// # Examples
///
/// ```rust
/// use terraphim_agent_messaging::{Clock, SystemClock};
/// let a = SystemClock.now();
/// assert!(SystemClock.now() >= a);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for deterministic tests.
///
/// Clones share the same time: advancing one advances all of them.
///
/// # Examples
///
/// ```rust
/// use std::time::Duration;
/// use terraphim_agent_messaging::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let seen_by_system = clock.clone();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(seen_by_system.now() - start, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The shared current time. A mutex is simple and this is not a hot
    /// path; poisoning is ignored because an `Instant` cannot be left torn.
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// Creates a clock frozen at the real current time.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// assert_eq!(clock.now(), clock.now());
    /// ```
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// Creates a clock frozen at `start`.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::Instant;
    /// use terraphim_agent_messaging::{Clock, ManualClock};
    /// let start = Instant::now();
    /// assert_eq!(ManualClock::starting_at(start).now(), start);
    /// ```
    pub fn starting_at(start: Instant) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`, saturating at the latest
    /// representable `Instant` (so `Duration::MAX` is safe).
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use terraphim_agent_messaging::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// let start = clock.now();
    /// clock.advance(Duration::from_millis(3));
    /// assert_eq!(clock.now(), start + Duration::from_millis(3));
    /// clock.advance(Duration::MAX); // saturates, no panic
    /// ```
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now = saturating_add(*now, by);
    }

    /// Sets the clock to `to`, unless that is in its past: a clock never
    /// goes backwards, so earlier instants are ignored.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::Duration;
    /// use terraphim_agent_messaging::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// let start = clock.now();
    /// clock.set(start + Duration::from_secs(1));
    /// clock.set(start); // ignored
    /// assert_eq!(clock.now(), start + Duration::from_secs(1));
    /// ```
    pub fn set(&self, to: Instant) {
        let mut now = self.lock();
        *now = (*now).max(to);
    }

    /// Locks the shared time, ignoring poisoning (see the field doc).
    fn lock(&self) -> MutexGuard<'_, Instant> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.lock()
    }
}

/// Converts between `Instant`s and wheel ticks: tick `n` is the instant
/// `origin + n * TICK` (1 ms).
///
/// # Examples
///
/// ```rust
/// use std::time::{Duration, Instant};
/// use terraphim_agent_messaging::TickSource;
///
/// let origin = Instant::now();
/// let ticks = TickSource::new(origin);
/// let half = Duration::from_micros(1500);
/// assert_eq!(ticks.instant_to_tick(origin + half), 1); // now: rounds down
/// assert_eq!(ticks.deadline_to_tick(origin + half), 2); // deadline: rounds up
/// assert_eq!(ticks.deadline_after(origin, Duration::MAX), u64::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TickSource {
    /// The instant of tick 0. Instants before it map to tick 0.
    origin: Instant,
}

impl TickSource {
    /// Creates a source whose tick 0 is `origin`.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::Instant;
    /// use terraphim_agent_messaging::TickSource;
    /// let origin = Instant::now();
    /// assert_eq!(TickSource::new(origin).origin(), origin);
    /// ```
    pub fn new(origin: Instant) -> Self {
        Self { origin }
    }

    /// Returns the instant of tick 0.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::Instant;
    /// use terraphim_agent_messaging::TickSource;
    /// let origin = Instant::now();
    /// assert_eq!(TickSource::new(origin).tick_to_instant(0), origin);
    /// ```
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The tick to pass to `TimerWheel::advance` at time `now`: whole ticks
    /// elapsed since the origin, rounded **down** (0 before the origin,
    /// `u64::MAX` at most).
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::{Duration, Instant};
    /// use terraphim_agent_messaging::TickSource;
    /// let origin = Instant::now();
    /// let ticks = TickSource::new(origin);
    /// assert_eq!(ticks.instant_to_tick(origin + Duration::from_micros(999)), 0);
    /// ```
    pub fn instant_to_tick(&self, now: Instant) -> u64 {
        floor_ticks(now.saturating_duration_since(self.origin))
    }

    /// The tick to give `TimerWheel::insert` for a timer due at `deadline`,
    /// rounded **up** so it never fires early (0 before the origin,
    /// `u64::MAX` at most).
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::{Duration, Instant};
    /// use terraphim_agent_messaging::TickSource;
    /// let origin = Instant::now();
    /// let ticks = TickSource::new(origin);
    /// assert_eq!(ticks.deadline_to_tick(origin + Duration::from_nanos(1)), 1);
    /// ```
    pub fn deadline_to_tick(&self, deadline: Instant) -> u64 {
        ceil_ticks(deadline.saturating_duration_since(self.origin))
    }

    /// The deadline tick of a timer started at `now` with `timeout`, rounded
    /// up. Unlike `deadline_to_tick(now + timeout)` this cannot panic: a
    /// timeout too large for an `Instant` (such as `Duration::MAX`) gives
    /// `u64::MAX`.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::{Duration, Instant};
    /// use terraphim_agent_messaging::TickSource;
    /// let origin = Instant::now();
    /// let ticks = TickSource::new(origin);
    /// let now = origin + Duration::from_millis(10);
    /// assert_eq!(ticks.deadline_after(now, Duration::from_millis(5)), 15);
    /// ```
    pub fn deadline_after(&self, now: Instant, timeout: Duration) -> u64 {
        // Stay in `Duration` arithmetic: `Instant + Duration` may panic.
        let since_origin = match now.checked_duration_since(self.origin) {
            Some(ahead) => ahead.saturating_add(timeout),
            None => timeout.saturating_sub(self.origin.saturating_duration_since(now)),
        };
        ceil_ticks(since_origin)
    }

    /// The instant at which tick `tick` starts, saturating at the latest
    /// representable `Instant` for ticks beyond it.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use std::time::{Duration, Instant};
    /// use terraphim_agent_messaging::TickSource;
    /// let origin = Instant::now();
    /// let ticks = TickSource::new(origin);
    /// assert_eq!(ticks.tick_to_instant(7), origin + Duration::from_millis(7));
    /// let _far = ticks.tick_to_instant(u64::MAX); // no panic
    /// ```
    pub fn tick_to_instant(&self, tick: u64) -> Instant {
        saturating_add(self.origin, ticks_to_duration(tick))
    }
}

/// `tick * TICK` as a `Duration` (cannot overflow: `u64::MAX` ms fits).
fn ticks_to_duration(tick: u64) -> Duration {
    // Relies on TICK being exactly 1 ms; the assertion below keeps it honest.
    const _: () = assert!(NANOS_PER_TICK == 1_000_000);
    Duration::from_millis(tick)
}

/// Whole ticks in `d`, rounded up, saturating at `u64::MAX`.
fn ceil_ticks(d: Duration) -> u64 {
    // Whole seconds are whole ticks, so only the sub-second part rounds. In u64: a u128
    // division (`as_nanos() / ...`) costs a library call on every timer armed.
    let part = u64::from(d.subsec_nanos()).div_ceil(NANOS_PER_TICK as u64);
    d.as_secs()
        .saturating_mul(TICKS_PER_SEC)
        .saturating_add(part)
}

/// Whole ticks in `d`, rounded down, saturating at `u64::MAX`.
fn floor_ticks(d: Duration) -> u64 {
    let part = u64::from(d.subsec_nanos()) / NANOS_PER_TICK as u64;
    d.as_secs()
        .saturating_mul(TICKS_PER_SEC)
        .saturating_add(part)
}

/// Ticks per second (TICK divides a second exactly).
const TICKS_PER_SEC: u64 = (1_000_000_000 / NANOS_PER_TICK) as u64;
const _: () = assert!(1_000_000_000 % NANOS_PER_TICK == 0);

/// `base + by`, or the latest instant representable on this platform if
/// that overflows (found by bisection, ~100 `checked_add`s; rare path).
fn saturating_add(base: Instant, by: Duration) -> Instant {
    if let Some(t) = base.checked_add(by) {
        return t;
    }
    // Invariant: `base + lo` is representable, `base + hi` is not.
    let (mut lo, mut hi) = (Duration::ZERO, by);
    while hi.saturating_sub(lo) > Duration::from_nanos(1) {
        let mid = lo + hi.saturating_sub(lo) / 2;
        if base.checked_add(mid).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    base + lo
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The u64 tick arithmetic agrees with the plain u128 formulas, saturation included.
    #[test]
    fn tick_rounding_matches_nanosecond_division() {
        let reference = |d: Duration, ceil: bool| {
            let nanos = d.as_nanos();
            let ticks = if ceil {
                nanos.div_ceil(NANOS_PER_TICK)
            } else {
                nanos / NANOS_PER_TICK
            };
            u64::try_from(ticks).unwrap_or(u64::MAX)
        };
        let secs = [
            0,
            1,
            59,
            1 << 32,
            u64::MAX / 1000,
            u64::MAX / 1000 + 1,
            u64::MAX,
        ];
        let nanos = [
            0,
            1,
            999_999,
            1_000_000,
            1_000_001,
            500_000_000,
            999_999_999,
        ];
        for &s in &secs {
            for &n in &nanos {
                let d = Duration::new(s, n);
                assert_eq!(ceil_ticks(d), reference(d, true), "ceil {d:?}");
                assert_eq!(floor_ticks(d), reference(d, false), "floor {d:?}");
            }
        }
    }

    #[test]
    fn manual_clock_is_shared_and_monotonic() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let start = clock.now();
        assert_eq!(clock.now(), start, "frozen");
        other.advance(Duration::from_millis(5));
        assert_eq!(clock.now(), start + Duration::from_millis(5));
        clock.set(start);
        assert_eq!(
            other.now(),
            start + Duration::from_millis(5),
            "never backwards"
        );
        clock.set(start + Duration::from_secs(1));
        assert_eq!(other.now(), start + Duration::from_secs(1));
        let as_dyn: Arc<dyn Clock> = Arc::new(other);
        assert_eq!(as_dyn.now(), clock.now());
    }

    #[test]
    fn manual_clock_saturates() {
        let clock = ManualClock::new();
        clock.advance(Duration::MAX);
        let far = clock.now();
        assert!(far.checked_add(Duration::from_nanos(1)).is_none());
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), far);
    }

    #[test]
    fn rounding_never_fires_early() {
        let origin = Instant::now();
        let ticks = TickSource::new(origin);
        for nanos in [0u64, 1, 999_999, 1_000_000, 1_000_001, 1_999_999, 2_000_000] {
            let t = origin + Duration::from_nanos(nanos);
            let floor = nanos / 1_000_000;
            let ceil = nanos.div_ceil(1_000_000);
            assert_eq!(ticks.instant_to_tick(t), floor, "{nanos}");
            assert_eq!(ticks.deadline_to_tick(t), ceil, "{nanos}");
            assert_eq!(
                ticks.deadline_after(origin, Duration::from_nanos(nanos)),
                ceil
            );
            // Once "now" reaches the deadline's tick, the deadline has passed.
            assert!(ticks.tick_to_instant(ceil) >= t);
            assert!(ticks.tick_to_instant(floor) <= t);
        }
    }

    #[test]
    fn before_origin_is_tick_zero() {
        let now = Instant::now();
        let origin = now + Duration::from_secs(1);
        let ticks = TickSource::new(origin);
        assert_eq!(ticks.instant_to_tick(now), 0);
        assert_eq!(ticks.deadline_to_tick(now), 0);
        assert_eq!(ticks.deadline_after(now, Duration::from_millis(500)), 0);
        assert_eq!(ticks.deadline_after(now, Duration::from_millis(1500)), 500);
        assert_eq!(
            ticks.deadline_after(now, Duration::from_micros(1_000_001)),
            1
        );
    }

    #[test]
    fn saturating_everywhere() {
        let origin = Instant::now();
        let ticks = TickSource::new(origin);
        assert_eq!(ticks.deadline_after(origin, Duration::MAX), u64::MAX);
        let far = ticks.tick_to_instant(u64::MAX);
        assert!(far >= origin);
        if origin
            .checked_add(Duration::from_millis(u64::MAX))
            .is_some()
        {
            // Representable (e.g. Linux): the round trip is exact.
            assert_eq!(ticks.instant_to_tick(far), u64::MAX);
        }
        let mut clock_far = ManualClock::starting_at(origin);
        clock_far.advance(Duration::MAX);
        assert!(ticks.instant_to_tick(clock_far.now()) > 0);
        clock_far = ManualClock::default();
        let _ = clock_far.now();
        assert!(SystemClock.now() >= origin);
    }
}
