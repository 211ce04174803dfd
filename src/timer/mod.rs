//! Timers: when something must happen later (ack, call and retry timeouts,
//! dedupe expiry, circuit-breaker resets).
//!
//! A *timer* here is a value of any type `T` parked in a [`TimerWheel`] until
//! a deadline, expressed as a `u64` *tick*. Nothing runs by itself: whoever
//! owns the wheel calls [`TimerWheel::advance`] with the current tick and gets
//! back the values whose deadline has passed, and asks
//! [`TimerWheel::next_deadline`] how long it may sleep. Time is read through a
//! [`Clock`] (real: [`SystemClock`]; tests: [`ManualClock`]) and converted to
//! ticks by a [`TickSource`], 1 tick = [`TICK`] = 1 ms.
//!
//! 1. `wheel` — the hierarchical timing wheel (Varghese &
//!    Lauck): six levels of 64 slots over a slab, O(1) insert/cancel, exact
//!    `next_deadline`, no clock, no locks, no `unsafe`.
//! 2. `clock` — the [`Clock`] trait, its two implementations,
//!    and `Instant` ↔ tick conversion (deadlines round up, "now" rounds
//!    down, so nothing fires early).
//!
//! # Levels
//!
//! | level | slot covers             | level covers             |
//! |-------|-------------------------|--------------------------|
//! | 0     | 1 tick (1 ms)           | 64 ticks (64 ms)         |
//! | 1     | 64 ticks (64 ms)        | 2^12 ticks (~4 s)        |
//! | 2     | 2^12 ticks (~4 s)       | 2^18 ticks (~4.4 min)    |
//! | 3     | 2^18 ticks (~4.4 min)   | 2^24 ticks (~4.7 h)      |
//! | 4     | 2^24 ticks (~4.7 h)     | 2^30 ticks (~12.4 days)  |
//! | 5     | 2^30 ticks (~12.4 days) | 2^36 ticks (~2.2 years)  |
//! | overflow | —                    | later deadlines, up to `u64::MAX`, kept exact |
//!
//! # Examples
//!
//! ```rust
//! use std::time::Duration;
//! use terraphim_agent_messaging::{Clock, ManualClock, TickSource, TimerWheel};
//!
//! let clock = ManualClock::new();
//! let ticks = TickSource::new(clock.now());
//! let mut wheel = TimerWheel::new();
//! let key = wheel
//!     .insert(ticks.deadline_after(clock.now(), Duration::from_secs(2)), "retry")
//!     .unwrap();
//!
//! clock.advance(Duration::from_secs(2));
//! let mut expired = Vec::new();
//! wheel.advance(ticks.instant_to_tick(clock.now()), &mut expired);
//! assert_eq!(expired, vec![(key, "retry")]);
//! ```

mod clock;
pub(crate) mod driver;
pub(crate) mod service;
mod wheel;

pub use self::clock::{Clock, ManualClock, SystemClock, TickSource, TICK};
pub use self::wheel::{Elapsed, RescheduleError, TimerKey, TimerWheel};
