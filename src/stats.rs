//! Contention-free event counters.
//!
//! A [`Counter`] is striped over cache-padded cells: each thread adds to the stripe its
//! thread index selects, so producers on different cores never share a cache line on
//! the send path. Reading sums the stripes (exact once writers are quiet).

use std::sync::atomic::Ordering::Relaxed;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, AtomicUsize};

/// Stripes per counter; a power of two.
const STRIPES: usize = 8;

/// A striped `u64` counter.
pub(crate) struct Counter {
    stripes: [CachePadded<AtomicU64>; STRIPES],
}

impl Counter {
    pub(crate) fn new() -> Self {
        Counter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }

    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe()].fetch_add(n, Relaxed);
    }

    /// Adds one.
    #[inline]
    pub(crate) fn incr(&self) {
        self.add(1);
    }

    /// The sum over all stripes.
    pub(crate) fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.load(Relaxed)).sum()
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// This thread's stripe, assigned round-robin on first use.
#[inline]
fn stripe() -> usize {
    #[cfg(not(loom))]
    {
        use std::cell::Cell;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        STRIPE.with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Relaxed) % STRIPES;
                s.set(i);
            }
            i
        })
    }
    // Loom threads share thread-locals across iterations; one stripe keeps it simple.
    #[cfg(loom)]
    0
}

/// A gauge's high-water mark.
pub(crate) fn record_max(cell: &AtomicUsize, value: usize) {
    let mut current = cell.load(Relaxed);
    while value > current {
        match cell.compare_exchange_weak(current, value, Relaxed, Relaxed) {
            Ok(_) => break,
            Err(c) => current = c,
        }
    }
}
