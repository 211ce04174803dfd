//! The retry schedule: `min(retry_delay * multiplier^attempt, max_retry_delay)`.
//!
//! A [`RetryPolicy`] is a validated [`DeliveryConfig`] retry section. Every delay it
//! hands out is
//!
//! - **never zero** (a zero `retry_delay` is clamped to one [`TICK`], so retries never
//!   spin; mulligan #31),
//! - **capped** at `max_retry_delay`, whatever the attempt number (`u32::MAX` included;
//!   tryhard #24),
//! - **non-decreasing** in the attempt number (without jitter),
//! - **panic-free**: the power is computed in `f64`, saturates to infinity, and is turned
//!   back into a `Duration` with `Duration::try_from_secs_f64`, never
//!   `from_secs_f64` on an unchecked value (scylladb/latte #208).
//!
//! # Validation and clamps
//!
//! | field | refused (`Err`) | clamped (documented, no error) |
//! |---|---|---|
//! | `retry_backoff_multiplier` | NaN, ±∞, negative, below 1.0 | — |
//! | `max_retry_delay` | zero | — |
//! | `retry_delay` | — | zero → 1 ms ([`TICK`]); above `max_retry_delay` → `max_retry_delay` |
//! | `max_retries` | — | any `u32` accepted; delays stay capped |
//! | jitter fraction | NaN, outside `[0, 1]` | — |

use std::time::Duration;

use crate::delivery::DeliveryConfig;
use crate::message::DeliveryOptions;
use crate::timer::TICK;

/// How long to wait before each retry, and how many retries to make.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::{DeliveryConfig, RetryPolicy};
///
/// let policy = RetryPolicy::from_config(&DeliveryConfig::default()).unwrap();
/// assert_eq!(policy.delay(0), Duration::from_millis(100));
/// assert_eq!(policy.delay(1), Duration::from_millis(200));
/// assert_eq!(policy.delay(u32::MAX), Duration::from_secs(30)); // capped
///
/// let mut bad = DeliveryConfig::default();
/// bad.retry_backoff_multiplier = f64::NAN;
/// assert!(RetryPolicy::from_config(&bad).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    max_retries: u32,
    /// Delay before the first retry; in `1 ns..=max_retry_delay`, at least [`TICK`]
    /// unless `max_retry_delay` is smaller.
    retry_delay: Duration,
    /// Finite, ≥ 1.
    multiplier: f64,
    /// Non-zero cap on any delay.
    max_retry_delay: Duration,
    /// Jitter fraction in `[0, 1]`; 0 = none.
    jitter: f64,
}

impl RetryPolicy {
    /// Validates the retry section of `config` (see the module doc for what is refused
    /// and what is clamped).
    ///
    /// # Errors
    ///
    /// A message naming the field and its value when `retry_backoff_multiplier` is not
    /// a finite number ≥ 1.0, or `max_retry_delay` is zero.
    pub fn from_config(config: &DeliveryConfig) -> Result<Self, String> {
        let multiplier = config.retry_backoff_multiplier;
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(format!(
                "retry_backoff_multiplier must be a finite number >= 1.0, got {multiplier}"
            ));
        }
        if config.max_retry_delay.is_zero() {
            return Err("max_retry_delay must be greater than zero, got 0ns".to_string());
        }
        let max_retry_delay = config.max_retry_delay;
        Ok(RetryPolicy {
            max_retries: config.max_retries,
            retry_delay: clamp_delay(config.retry_delay, max_retry_delay),
            multiplier,
            max_retry_delay,
            jitter: 0.0,
        })
    }

    /// The policy for one message: `options.max_retries` and `options.retry_delay`
    /// replace the policy's values when they differ from [`DeliveryOptions::default()`]
    /// (3 retries, 100 ms). A message that keeps the defaults follows the system's
    /// [`DeliveryConfig`]. The replaced `retry_delay` is clamped as in
    /// [`from_config`](Self::from_config); the multiplier, cap and jitter are the
    /// policy's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use terraphim_agent_messaging::{DeliveryConfig, DeliveryOptions, RetryPolicy};
    ///
    /// let mut config = DeliveryConfig::default();
    /// config.max_retries = 7;
    /// let policy = RetryPolicy::from_config(&config).unwrap();
    /// assert_eq!(policy.for_message(&DeliveryOptions::default()).max_retries(), 7);
    ///
    /// let mut options = DeliveryOptions::default();
    /// options.max_retries = 1;
    /// options.retry_delay = Duration::from_millis(5);
    /// let one = policy.for_message(&options);
    /// assert_eq!((one.max_retries(), one.delay(0)), (1, Duration::from_millis(5)));
    /// ```
    pub fn for_message(&self, options: &DeliveryOptions) -> Self {
        let defaults = DeliveryOptions::default();
        let mut policy = self.clone();
        if options.max_retries != defaults.max_retries {
            policy.max_retries = options.max_retries;
        }
        if options.retry_delay != defaults.retry_delay {
            policy.retry_delay = clamp_delay(options.retry_delay, self.max_retry_delay);
        }
        policy
    }

    /// Retries after the first attempt (a message is tried at most `1 + max_retries`
    /// times).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The (clamped) delay before the first retry.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }

    /// The backoff multiplier (finite, ≥ 1).
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The cap on any one delay.
    pub fn max_retry_delay(&self) -> Duration {
        self.max_retry_delay
    }

    /// The jitter fraction (0 = none).
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The delay before retry number `attempt` (0 = the first retry):
    /// `min(retry_delay * multiplier^attempt, max_retry_delay)`.
    ///
    /// Never zero, never decreasing in `attempt`, never above `max_retry_delay`, never
    /// panics.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.retry_delay;
        if attempt == 0 || self.multiplier == 1.0 {
            return base;
        }
        let factor = self.multiplier.powf(f64::from(attempt)); // ≥ 1, maybe +∞
        let secs = base.as_secs_f64() * factor; // ≥ 0, maybe +∞, never NaN
        let scaled = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        // `max(base)`: the f64 round trip may lose a few nanoseconds of a long base
        // delay; keeping at least `base` keeps the schedule monotonic from attempt 0.
        scaled.max(base).min(self.max_retry_delay)
    }

    /// The same policy with jitter: each [`delay_with_jitter`](Self::delay_with_jitter)
    /// is drawn uniformly from `[d * (1 - fraction), d]` where `d = delay(attempt)`.
    ///
    /// Jitter trades monotonicity for spread: jittered delays of successive attempts
    /// may decrease, so that many messages failing together do not retry together.
    /// They stay capped and never fall below one [`TICK`] (or `d`, if smaller).
    ///
    /// # Errors
    ///
    /// `fraction` NaN or outside `[0, 1]`.
    pub fn with_jitter(mut self, fraction: f64) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!(
                "retry jitter must be a fraction in [0, 1], got {fraction}"
            ));
        }
        self.jitter = fraction;
        Ok(self)
    }

    /// [`delay`](Self::delay) with jitter drawn from `seed` (a cheap xorshift64*
    /// generator seeded per call, so the same seed gives the same delay). Without
    /// jitter this is `delay(attempt)`.
    pub fn delay_with_jitter(&self, attempt: u32, seed: u64) -> Duration {
        let delay = self.delay(attempt);
        if self.jitter == 0.0 {
            return delay;
        }
        // A uniform `u` in [0, 1) from the top 53 bits.
        let u = (xorshift64_star(seed) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let keep = 1.0 - self.jitter * u; // in (0, 1]
        let jittered = Duration::try_from_secs_f64(delay.as_secs_f64() * keep).unwrap_or(delay);
        jittered.min(delay).max(TICK.min(delay))
    }
}

impl Default for RetryPolicy {
    /// The policy of [`DeliveryConfig::default()`]: 3 retries, 100 ms doubling, 30 s cap.
    fn default() -> Self {
        Self::from_config(&DeliveryConfig::default()).expect("the default config is valid")
    }
}

/// The documented clamp of a first-retry delay: zero → [`TICK`], then at most `max`.
fn clamp_delay(delay: Duration, max: Duration) -> Duration {
    let at_least_a_tick = if delay.is_zero() { TICK } else { delay };
    at_least_a_tick.min(max)
}

/// One step of xorshift64* from `seed` (splitmix-scrambled first, so 0 and small
/// seeds work too).
fn xorshift64_star(seed: u64) -> u64 {
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    x |= 1; // xorshift's state must not be 0
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(retry_delay: Duration, multiplier: f64, max: Duration) -> DeliveryConfig {
        DeliveryConfig {
            retry_delay,
            retry_backoff_multiplier: multiplier,
            max_retry_delay: max,
            ..DeliveryConfig::default()
        }
    }

    #[test]
    fn default_sequence() {
        let policy = RetryPolicy::default();
        let got: Vec<u128> = (0..11).map(|a| policy.delay(a).as_millis()).collect();
        assert_eq!(
            got,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(policy.max_retries(), 3);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn refuses_bad_multipliers() {
        for m in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            0.0,
            0.5,
            0.999,
        ] {
            let err = RetryPolicy::from_config(&config(TICK, m, Duration::from_secs(1)))
                .expect_err("refused");
            assert!(err.contains("retry_backoff_multiplier"), "{err}");
            assert!(err.contains(&m.to_string()), "{err}");
        }
        assert!(RetryPolicy::from_config(&config(TICK, 1.0, TICK)).is_ok());
    }

    #[test]
    fn refuses_zero_cap() {
        let err = RetryPolicy::from_config(&config(TICK, 2.0, Duration::ZERO)).unwrap_err();
        assert!(err.contains("max_retry_delay"), "{err}");
    }

    #[test]
    fn clamps_delays() {
        let zero = RetryPolicy::from_config(&config(Duration::ZERO, 2.0, Duration::MAX)).unwrap();
        assert_eq!(zero.delay(0), TICK);
        assert_eq!(zero.delay(1), 2 * TICK);
        let above = RetryPolicy::from_config(&config(
            Duration::from_secs(10),
            2.0,
            Duration::from_secs(1),
        ))
        .unwrap();
        assert_eq!(above.retry_delay(), Duration::from_secs(1));
        assert_eq!(above.delay(5), Duration::from_secs(1));
        // A cap below one tick still gives non-zero delays.
        let tiny = RetryPolicy::from_config(&config(Duration::ZERO, 2.0, Duration::from_nanos(1)))
            .unwrap();
        assert_eq!(tiny.delay(0), Duration::from_nanos(1));
        assert_eq!(tiny.delay(u32::MAX), Duration::from_nanos(1));
    }

    #[test]
    fn extremes() {
        let max = RetryPolicy::from_config(&config(Duration::MAX, 2.0, Duration::MAX)).unwrap();
        assert_eq!(max.delay(0), Duration::MAX);
        assert_eq!(max.delay(1), Duration::MAX);
        assert_eq!(max.delay(u32::MAX), Duration::MAX);
        let huge = RetryPolicy::from_config(&config(TICK, f64::MAX, Duration::MAX)).unwrap();
        assert_eq!(huge.delay(0), TICK);
        assert_eq!(huge.delay(1), Duration::MAX);
        let mut many = config(TICK, 1.0, Duration::from_secs(1));
        many.max_retries = u32::MAX;
        let many = RetryPolicy::from_config(&many).unwrap();
        assert_eq!(many.max_retries(), u32::MAX);
        assert_eq!(many.delay(u32::MAX), TICK);
    }

    #[test]
    fn per_message_override() {
        let base = RetryPolicy::from_config(&DeliveryConfig {
            max_retries: 9,
            retry_delay: Duration::from_millis(50),
            ..DeliveryConfig::default()
        })
        .unwrap();
        assert_eq!(base.for_message(&DeliveryOptions::default()), base);
        let options = DeliveryOptions {
            max_retries: 0,
            retry_delay: Duration::ZERO,
            ..DeliveryOptions::default()
        };
        let one = base.for_message(&options);
        assert_eq!(one.max_retries(), 0);
        assert_eq!(one.delay(0), TICK, "zero clamped");
        let long = DeliveryOptions {
            retry_delay: Duration::from_secs(3600),
            ..DeliveryOptions::default()
        };
        assert_eq!(base.for_message(&long).delay(0), Duration::from_secs(30));
        assert_eq!(base.for_message(&long).max_retries(), 9);
    }

    #[test]
    fn jitter() {
        for bad in [f64::NAN, -0.1, 1.1, f64::INFINITY] {
            assert!(RetryPolicy::default().with_jitter(bad).is_err(), "{bad}");
        }
        let none = RetryPolicy::default();
        assert_eq!(none.delay_with_jitter(2, 42), none.delay(2));
        let half = RetryPolicy::default().with_jitter(0.5).unwrap();
        let d = half.delay(3);
        let draws: Vec<Duration> = (0..1000).map(|s| half.delay_with_jitter(3, s)).collect();
        assert!(draws.iter().all(|j| *j <= d && *j >= d / 2), "in range");
        assert_eq!(half.delay_with_jitter(3, 7), half.delay_with_jitter(3, 7));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900, "spread: {}", distinct.len());
        let low = draws.iter().filter(|j| **j < d * 3 / 4).count();
        assert!((350..650).contains(&low), "uniform-ish: {low}");
        let full = RetryPolicy::default().with_jitter(1.0).unwrap();
        assert!((0..1000).all(|s| full.delay_with_jitter(0, s) >= TICK));
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            Just(Duration::from_nanos(1)),
            (0u64..100_000_000_000).prop_map(Duration::from_nanos),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    fn multiplier() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(1.0),
            Just(f64::MAX),
            Just(1.0 + f64::EPSILON),
            1.0f64..4.0,
            1.0f64..1e300,
            any::<f64>(),
        ]
    }

    proptest! {
        #[test]
        fn delays_are_sane(
            retry_delay in duration(),
            max in duration(),
            m in multiplier(),
            attempt in prop_oneof![0u32..80, any::<u32>()],
            seed in any::<u64>(),
            jitter in 0.0f64..=1.0,
        ) {
            let policy = match RetryPolicy::from_config(&config(retry_delay, m, max)) {
                Ok(policy) => policy,
                Err(_) => {
                    prop_assert!(!m.is_finite() || m < 1.0 || max.is_zero());
                    return Ok(());
                }
            };
            let d = policy.delay(attempt);
            prop_assert!(!d.is_zero());
            prop_assert!(d <= max);
            prop_assert!(d >= policy.delay(0));
            prop_assert!(policy.delay(attempt.saturating_add(1)) >= d, "monotone");
            let j = policy.with_jitter(jitter).unwrap().delay_with_jitter(attempt, seed);
            prop_assert!(!j.is_zero() && j <= d);
        }

        #[test]
        fn monotone_over_a_run(retry_delay in duration(), m in 1.0f64..3.0, max in duration()) {
            if let Ok(policy) = RetryPolicy::from_config(&config(retry_delay, m, max)) {
                let mut previous = Duration::ZERO;
                for attempt in 0..200 {
                    let d = policy.delay(attempt);
                    prop_assert!(d >= previous, "attempt {attempt}: {d:?} < {previous:?}");
                    previous = d;
                }
            }
        }
    }
}
