//! A few mutexes instead of one: state split by a key's hash, so that threads working
//! on different keys (message ids, calls) rarely take the same lock.
//!
//! # Invariants
//!
//! - The number of shards is a power of two, fixed at creation; a key always maps to
//!   the same shard.
//! - Each shard sits on cache lines of its own, so two threads on two shards do not
//!   bounce one line.
//! - Nothing takes two shards at once, so shards cannot deadlock one another; walks
//!   over all of them (expiry, the timer driver) take one at a time.

use crossbeam_utils::CachePadded;

use crate::sync::{lock, Mutex, MutexGuard};

/// The shards of a system's exactly-once window and call timers: 16 (a few per core on
/// the machines this runs on). One under loom: keys are message ids, random in each of
/// loom's executions, so the shard touched would differ between executions, which
/// loom cannot replay. One shard keeps the race that matters (an arm into a wheel the
/// firing pass has visited, `call_timers`).
#[cfg(not(loom))]
pub(crate) const SHARDS: usize = 16;
#[cfg(loom)]
pub(crate) const SHARDS: usize = 1;

/// `T` split into mutex-guarded shards.
pub(crate) struct Shards<T> {
    shards: Box<[CachePadded<Mutex<T>>]>,
}

impl<T> Shards<T> {
    /// `n` shards (rounded up to a power of two, at least one), made by `make`.
    pub(crate) fn new(n: usize, mut make: impl FnMut() -> T) -> Self {
        let n = n.max(1).next_power_of_two();
        Shards {
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(make())))
                .collect(),
        }
    }

    /// How many shards.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// The shard of `key` (any well-mixed or sequential 64-bit value: it is mixed
    /// again, Fibonacci hashing).
    #[inline]
    pub(crate) fn index(&self, key: u64) -> usize {
        let mixed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        mixed as usize & (self.shards.len() - 1)
    }

    /// Locks shard `index`.
    #[inline]
    pub(crate) fn lock(&self, index: usize) -> MutexGuard<'_, T> {
        lock(&self.shards[index])
    }

    /// Locks the shard of `key`.
    #[inline]
    pub(crate) fn lock_key(&self, key: u64) -> MutexGuard<'_, T> {
        self.lock(self.index(key))
    }

    /// Runs `f` on each shard in turn, one lock at a time.
    pub(crate) fn each(&self, mut f: impl FnMut(&mut T)) {
        for shard in self.shards.iter() {
            f(&mut lock(shard));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_every_shard() {
        let shards = Shards::new(SHARDS, || ());
        let mut hit = [0usize; SHARDS];
        for key in 0..SHARDS as u64 * 64 {
            hit[shards.index(key)] += 1;
        }
        assert!(hit.iter().all(|&n| n > 0), "{hit:?}");
    }

    #[test]
    fn rounds_up_to_a_power_of_two() {
        assert_eq!(Shards::new(0, || ()).len(), 1);
        assert_eq!(Shards::new(3, || ()).len(), 4);
    }
}
