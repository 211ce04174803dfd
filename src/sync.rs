//! The one import point for every atomic, `Arc`, thread and `UnsafeCell` the crate uses.
//!
//! Under `RUSTFLAGS="--cfg loom"` these are loom's checked twins, so the loom models in
//! `loom_tests/` explore the real lanes, wait cells and table rather than copies of them.
//! The gate is `cfg(loom)` alone: `loom_tests/` links the library without `cfg(test)`.
//!
//! Nothing else in the crate may name `std::sync::atomic`, `std::thread::park` or
//! `std::cell::UnsafeCell` directly.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize},
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
};

#[cfg(not(loom))]
pub(crate) use std::{
    sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize},
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
};

#[cfg(not(loom))]
pub(crate) use self::std_cell::UnsafeCell;

/// A read-mostly lock whose readers do not contend with each other: crossbeam's
/// `ShardedLock` (one reader lock per thread shard; a writer takes them all). Under loom,
/// a plain `RwLock` with the same guards' API.
#[cfg(not(loom))]
pub(crate) use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
#[cfg(loom)]
pub(crate) use loom::sync::{
    RwLock as ShardedLock, RwLockReadGuard as ShardedLockReadGuard,
    RwLockWriteGuard as ShardedLockWriteGuard,
};

/// Spin-wait hint: a CPU pause normally, a loom yield under loom so that a spinning
/// thread lets the model schedule the thread it waits for (loom #162).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Waiting for another thread to finish a few instructions (a producer mid-write):
/// spins, then yields the CPU, so a producer descheduled mid-send does not cost the
/// waiter a whole time slice of spinning. Under loom every step is a yield.
#[derive(Default)]
pub(crate) struct SpinWait {
    #[cfg(not(loom))]
    backoff: crossbeam_utils::Backoff,
}

impl SpinWait {
    /// After a lost compare-and-swap: spins for exponentially longer each time (no
    /// yield), so that contending threads stop stealing the line from each other on
    /// every attempt. Under loom, a yield.
    #[inline]
    pub(crate) fn contended(&self) {
        #[cfg(not(loom))]
        self.backoff.spin();
        #[cfg(loom)]
        loom::thread::yield_now();
    }

    #[inline]
    pub(crate) fn wait(&self) {
        #[cfg(not(loom))]
        self.backoff.snooze();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}

/// Waiting for a producer that is writing the slot the receiver needs (it has claimed
/// it): spins a bounded few microseconds at most (1 + 2 + … + 64 CPU pauses, no yield,
/// no clock read), after which the caller stops waiting and parks, or reports "nothing
/// yet". Under loom it never spins: the caller goes straight to that fallback, which is
/// the path worth checking.
#[derive(Default)]
pub(crate) struct BriefSpin {
    #[cfg(not(loom))]
    step: u32,
}

impl BriefSpin {
    /// Spins once more; `false` once the budget is spent.
    #[inline]
    pub(crate) fn spin(&mut self) -> bool {
        #[cfg(loom)]
        return false;
        #[cfg(not(loom))]
        {
            const STEPS: u32 = 7;
            if self.step >= STEPS {
                return false;
            }
            for _ in 0..1u32 << self.step {
                std::hint::spin_loop();
            }
            self.step += 1;
            true
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its
/// data consistent before anything that could panic, so a poisoned lock still holds
/// valid data and one panicking agent must not take the whole system down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(loom)]
    return mutex.lock().unwrap();
    #[cfg(not(loom))]
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks, ignoring poisoning (see [`lock`]).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    #[cfg(loom)]
    return lock.read().unwrap();
    #[cfg(not(loom))]
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks a sharded lock, ignoring poisoning (see [`lock`]).
pub(crate) fn read_sharded<T>(lock: &ShardedLock<T>) -> ShardedLockReadGuard<'_, T> {
    #[cfg(loom)]
    return lock.read().unwrap();
    #[cfg(not(loom))]
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks a sharded lock, ignoring poisoning (see [`lock`]).
pub(crate) fn write_sharded<T>(lock: &ShardedLock<T>) -> ShardedLockWriteGuard<'_, T> {
    #[cfg(loom)]
    return lock.write().unwrap();
    #[cfg(not(loom))]
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks, ignoring poisoning (see [`lock`]).
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    #[cfg(loom)]
    return lock.write().unwrap();
    #[cfg(not(loom))]
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(not(loom))]
mod std_cell {
    /// `std::cell::UnsafeCell` with loom's closure-based access API, so that the same
    /// code compiles against both (the pattern of crossbeam-epoch's `primitive` module).
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` with a shared raw pointer to the value.
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with a unique raw pointer to the value.
        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}
