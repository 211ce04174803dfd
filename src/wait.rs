//! The single receiver's wait cell: a parked thread or a task `Waker`.
//!
//! One receiver registers, many producers wake. The protocol is that of tokio's
//! `AtomicWaker`, plus a fast path so that a producer pays nothing on this cell (a
//! load) when no one waits:
//!
//! - A producer publishes with a read-modify-write on a word of its own: a lane's claim
//!   counter, a slot's `ready` flag or the lane's first-block pointer, a reply's state.
//!   Then it loads the cell's state; seeing `IDLE`, it stops.
//! - The receiver registers (`IDLE → REGISTERING → WAITING`), then looks once more before
//!   it sleeps, and that look ([`Look::BeforeSleep`]) is a read-modify-write on each
//!   word it would sleep on (`fetch_add(0)`, `fetch_or(false)`, a `compare_exchange`
//!   that writes back what it expects).
//! - No wake is lost: the two read-modify-writes on one word are ordered. If the
//!   producer's comes later, it reads from the receiver's (every write to these words is
//!   a read-modify-write, so any later one is in the receiver's release sequence), the
//!   registration happens-before the producer's load of the state, and that load sees
//!   it. If the producer's comes first, the receiver's look reads it and finds the
//!   value. This needs release and acquire on one word, not the `SeqCst` total order
//!   across two, which loom does not model (it treats `SeqCst` as `AcqRel`): loom checks
//!   this code exactly as it ships, without fences of its own.
//! - A producer that finds a waiter sets `WAKING`; if the state was exactly `WAITING` it
//!   takes the waiter and wakes it. A wake that lands during `REGISTERING` is noticed by
//!   the registering receiver, which then wakes itself.
//!
//! # Whose waiter is stored
//!
//! A receiver that stops waiting (it found its value, timed out, or its future was
//! dropped) deregisters, so that a waiter stored under `WAITING` belongs to a receiver
//! that still waits, or to a `poll_receive` caller, which cannot tell when it stops.
//! Registering over a waiter that is not the registrant's own (another thread, or a
//! waker that does not `will_wake` the same task) hands the displaced waiter back to the
//! registrant, which wakes it: it polls again and learns what happened (the mailbox's
//! receiver claim is taken, or its message is there) instead of sleeping on unwoken
//! (issue 12, item 3).
//!
//! Only the holder of `REGISTERING` (the receiver) or of `WAKING` (the producer that
//! moved the state from `WAITING`) touches `waiter`.
//!
//! Every write to the state is a read-modify-write, also where a store would do (back to
//! `IDLE`, on slow paths only): all writes are then totally ordered as loom sees them.
//! Loom orders a plain store only against what its thread has seen, so a deregistering
//! receiver's store of `IDLE` racing a producer's `fetch_or` left the two unordered, and
//! at 3 preemptions (traced) loom let a later load return the producer's value
//! although the next registration happened-before that load: a lost wake-up that the
//! C++ model (one modification order per atomic) does not allow, reported on the
//! shipped code.
#![allow(unsafe_code)]

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::task::Waker;

use crate::sync::{thread, AtomicUsize, UnsafeCell};

/// Nobody waits; no waiter is stored.
const IDLE: usize = 0;
/// The receiver is storing, or removing, its waiter.
const REGISTERING: usize = 0b001;
/// A waiter is stored and wants a wake.
const WAITING: usize = 0b010;
/// A producer is taking the waiter to wake it.
const WAKING: usize = 0b100;

/// How a receiver looks for its value (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Plain loads: any look that is not the last one before sleeping.
    Plain,
    /// The look after registering and before sleeping: a read-modify-write on each word
    /// a producer publishes with, so that a publish it misses sees the registration.
    BeforeSleep,
}

/// How the receiver wants to be woken.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A blocked thread: `unpark` it.
    Thread(thread::Thread),
    /// An async task: wake it.
    Task(Waker),
}

impl Waiter {
    pub(crate) fn wake(self) {
        match self {
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Task(waker) => waker.wake(),
        }
    }

    /// Whether both wake the same receiver (the same thread, or the same task).
    fn same(&self, other: &Waiter) -> bool {
        match (self, other) {
            (Waiter::Thread(a), Waiter::Thread(b)) => a.id() == b.id(),
            (Waiter::Task(a), Waiter::Task(b)) => a.will_wake(b),
            _ => false,
        }
    }
}

/// A cell holding at most one [`Waiter`].
///
/// `repr(C)`: `state`, read by every producer, comes first, so that a mailbox can keep
/// it on its send line and the waiter itself off it.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct WaitCell {
    /// `IDLE`, `REGISTERING`, `WAITING`, with `WAKING` or'ed in by producers.
    state: AtomicUsize,
    /// The registered waiter; see the module docs for who may touch it.
    waiter: UnsafeCell<Option<Waiter>>,
}

impl WaitCell {
    pub(crate) fn new() -> Self {
        WaitCell {
            state: AtomicUsize::new(IDLE),
            waiter: UnsafeCell::new(None),
        }
    }

    /// Registers `waiter` to be woken by the next [`WaitCell::wake`]. Returns the
    /// waiter it displaced if that one was still registered and belongs to another
    /// receiver (module docs): the caller wakes it, unless it knows the registration
    /// was its own.
    ///
    /// Must be called by one thread at a time (the receiver-claim holder). After it
    /// returns, the caller looks again with [`Look::BeforeSleep`] before sleeping.
    pub(crate) fn register(&self, waiter: Waiter) -> Option<Waiter> {
        let prev = match self
            .state
            .compare_exchange(IDLE, REGISTERING, AcqRel, Acquire)
            .or_else(|s| {
                // A stored waiter that nobody woke yet: replace it.
                if s == WAITING {
                    self.state
                        .compare_exchange(WAITING, REGISTERING, AcqRel, Acquire)
                } else {
                    Err(s)
                }
            }) {
            Ok(prev) => prev,
            // A wake is in progress: treat it as ours. The waking producer still holds
            // `WAKING`; until it stores `IDLE`, every register lands here and the caller's
            // park returns at once, so this is a spin loop: let the producer run (under
            // loom this yields; without it loom sees an endless loop, model
            // `l6_send_then_close_wakes_parked_receiver`). tokio's `AtomicWaker` does
            // the same. The stored waiter is the producer's to wake.
            Err(_) => {
                waiter.wake();
                crate::sync::spin_hint();
                return None;
            }
        };
        // SAFETY: `REGISTERING` excludes producers from `waiter` (they only take it after
        // moving the state from exactly `WAITING`), and the Acquire above shows the
        // previous registrant's write.
        let old = self.waiter.with_mut(|p| unsafe { (*p).replace(waiter) });
        let displaced = old.filter(|old| {
            // SAFETY: as above; a shared look at the waiter just stored.
            prev == WAITING && !self.waiter.with(|p| unsafe { is_same(&*p, old) })
        });
        if let Err(actual) = self
            .state
            .compare_exchange(REGISTERING, WAITING, AcqRel, Acquire)
        {
            // A producer set `WAKING` while we registered; it left the waiter to us.
            // Take it back and wake ourselves.
            debug_assert_eq!(actual, REGISTERING | WAKING);
            // SAFETY: the state is still `REGISTERING | WAKING`, which no producer acts
            // on; we hold the registration.
            let waiter = self.waiter.with_mut(|p| unsafe { (*p).take() });
            self.state.swap(IDLE, AcqRel);
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        }
        displaced
    }

    /// Removes the caller's registration, if it is still there: the caller stops
    /// waiting. Only the receiver that registered last (the claim holder) calls this.
    pub(crate) fn deregister(&self) {
        // A producer took the waiter already (`IDLE`), or is taking it (`WAKING`): then
        // there is nothing of ours left to remove.
        if self.state.load(Relaxed) != WAITING
            || self
                .state
                .compare_exchange(WAITING, REGISTERING, Acquire, Relaxed)
                .is_err()
        {
            return;
        }
        // SAFETY: we hold `REGISTERING` (see `register`).
        let waiter = self.waiter.with_mut(|p| unsafe { (*p).take() });
        // A producer that or'ed in `WAKING` meanwhile left the wake to us, and we are
        // leaving: `IDLE` drops its bit with ours.
        self.state.swap(IDLE, AcqRel);
        drop(waiter);
    }

    /// Wakes the registered waiter, if any. Called by producers after publishing with a
    /// read-modify-write (module docs).
    #[inline]
    pub(crate) fn wake(&self) {
        if let Some(waiter) = self.take() {
            waiter.wake();
        }
    }

    /// Takes the registered waiter, if any, for the caller to wake: [`wake`](Self::wake)
    /// for a caller that holds a lock a waker might want (it wakes once it has let go).
    /// The waiter is taken, so no other producer wakes it: the caller must.
    #[inline]
    pub(crate) fn take(&self) -> Option<Waiter> {
        // Relaxed: a registration this wake must see happens-before this load (through
        // the publishing read-modify-write), so coherence alone makes the load see it.
        if self.state.load(Relaxed) == IDLE {
            return None;
        }
        self.take_slow()
    }

    #[cold]
    fn take_slow(&self) -> Option<Waiter> {
        let prev = self.state.fetch_or(WAKING, AcqRel);
        if prev == IDLE {
            // The waiter was woken by someone else since our load: undo our bit.
            self.state.fetch_and(!WAKING, AcqRel);
            None
        } else if prev == WAITING {
            // SAFETY: we moved the state from exactly `WAITING` to `WAITING | WAKING`;
            // the receiver does not touch `waiter` until the state is `IDLE` or `WAITING`
            // again, and other producers saw `WAKING` already set and backed off.
            let waiter = self.waiter.with_mut(|p| unsafe { (*p).take() });
            self.state.swap(IDLE, AcqRel);
            waiter
        } else {
            None
        }
    }
}

/// Whether the stored waiter `stored` wakes the same receiver as `old`.
fn is_same(stored: &Option<Waiter>, old: &Waiter) -> bool {
    stored.as_ref().is_some_and(|w| w.same(old))
}

// SAFETY: `waiter` is only touched by the holder of `REGISTERING` or of the `WAITING →
// WAKING` transition (module docs), and a `Waiter` is `Send`.
unsafe impl Sync for WaitCell {}
// SAFETY: as above.
unsafe impl Send for WaitCell {}

impl Default for WaitCell {
    fn default() -> Self {
        Self::new()
    }
}

/// Blocks the current thread until `ready` yields a value or `timeout` passes
/// (`None`: no timeout).
///
/// `ready` is called with [`Look::Plain`] before sleeping and after every wake-up, and
/// with [`Look::BeforeSleep`] right after registering (the lost-wake-up re-check).
/// Returns `None` on timeout. Only the single registrant of `cell` may call this; a
/// waiter of another receiver that it displaces is woken.
///
/// First it spins a few microseconds (no clock read, no yield), so that a value arriving
/// within that window costs neither a clock read nor a futex wait and wake (which cost
/// tens of microseconds on a busy virtual machine: a call's round trip went from ~58 us
/// to under 1 us at p50). Then the deadline is set, from now, and the thread yields a
/// few times and parks, checking the deadline after each yield: a wait overruns its
/// timeout by the spin (microseconds) plus at most one yield or wake-up that the
/// scheduler delays, never by a yield per step.
pub(crate) fn block_until<R>(
    cell: &WaitCell,
    timeout: Option<std::time::Duration>,
    mut ready: impl FnMut(Look) -> Option<R>,
) -> Option<R> {
    // None under loom, where spinning only multiplies branches.
    #[cfg(not(loom))]
    for step in 0..7 {
        if let Some(r) = ready(Look::Plain) {
            return Some(r);
        }
        for _ in 0..1u32 << step {
            std::hint::spin_loop();
        }
    }
    // A timeout too large for an `Instant` is no timeout.
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    #[cfg(not(loom))]
    for _ in 0..4 {
        if let Some(r) = ready(Look::Plain) {
            return Some(r);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return None;
        }
        thread::yield_now();
    }
    loop {
        if let Some(displaced) = cell.register(Waiter::Thread(thread::current())) {
            displaced.wake();
        }
        if let Some(r) = ready(Look::BeforeSleep) {
            cell.deregister();
            return Some(r);
        }
        let parked = match deadline {
            None => {
                thread::park();
                Some(())
            }
            Some(deadline) => park_until(deadline),
        };
        if parked.is_none() {
            cell.deregister();
            return None;
        }
        if let Some(r) = ready(Look::Plain) {
            cell.deregister();
            return Some(r);
        }
    }
}

/// Parks until `deadline`; `None` once it has passed.
#[cfg(not(loom))]
fn park_until(deadline: std::time::Instant) -> Option<()> {
    let now = std::time::Instant::now();
    if now >= deadline {
        return None;
    }
    thread::park_timeout(deadline - now);
    Some(())
}

/// Loom has no clock: a deadline is treated as already passed after one check.
#[cfg(loom)]
fn park_until(_deadline: std::time::Instant) -> Option<()> {
    None
}
