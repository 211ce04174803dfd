//! The single receiver's wait cell: a parked thread or a task `Waker`.
//!
//! One receiver registers, many producers wake. The protocol is that of tokio's
//! `AtomicWaker`, plus a fast path so that a producer pays no read-modify-write when no
//! one waits:
//!
//! - The receiver registers (`IDLE → REGISTERING → WAITING`, `SeqCst`), then checks
//!   the queue once more before it sleeps, with a `SeqCst` load of what producers
//!   publish with (a lane's claim counter, a reply's state).
//! - A producer publishes with a `SeqCst` read-modify-write (the claim CAS), then loads
//!   the state with `SeqCst`. Seeing `IDLE` it stops: in the single total order of
//!   `SeqCst` operations either its load came after the receiver's registration (and
//!   saw it), or its publish came before the receiver's re-check (which sees it). So
//!   the send path pays no fence and no extra read-modify-write (on x86 a `SeqCst` load
//!   is a plain load, and the claim CAS is a locked instruction anyway).
//!   Otherwise it sets `WAKING`; if the state was exactly `WAITING` it takes the waiter
//!   and wakes it. A wake that lands during `REGISTERING` is noticed by the registering
//!   receiver, which then wakes itself.
//! - Loom treats `SeqCst` accesses as `AcqRel` (loom README), so it reports this
//!   handshake as a lost wake-up unless the handshake holds without the `SeqCst` total
//!   order. Loom now runs it as it ships (it used to add a `fence(SeqCst)` on each side
//!   under `cfg(loom)` only, and so checked another protocol).
//!
//! Only the holder of `REGISTERING` (the receiver) or of `WAKING` (the producer that
//! moved the state from `WAITING`) touches `waiter`.
#![allow(unsafe_code)]

use std::sync::atomic::Ordering::{AcqRel, Acquire, SeqCst};
use std::task::Waker;

use crate::sync::{thread, AtomicUsize, UnsafeCell};

/// Nobody waits (a stale waiter may be stored; it is never woken from this state).
const IDLE: usize = 0;
/// The receiver is storing its waiter.
const REGISTERING: usize = 0b001;
/// A waiter is stored and wants a wake.
const WAITING: usize = 0b010;
/// A producer is taking the waiter to wake it.
const WAKING: usize = 0b100;

/// How the receiver wants to be woken.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A blocked thread: `unpark` it.
    Thread(thread::Thread),
    /// An async task: wake it.
    Task(Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Task(waker) => waker.wake(),
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

    /// Registers `waiter` to be woken by the next [`WaitCell::wake`].
    ///
    /// Must be called by one thread at a time (the receiver-claim holder). After it
    /// returns, the caller re-checks its condition before sleeping; the fence is inside.
    pub(crate) fn register(&self, waiter: Waiter) {
        match self
            .state
            .compare_exchange(IDLE, REGISTERING, SeqCst, Acquire)
            .or_else(|s| {
                // A stored waiter that nobody woke yet: replace it.
                if s == WAITING {
                    self.state
                        .compare_exchange(WAITING, REGISTERING, SeqCst, Acquire)
                } else {
                    Err(s)
                }
            }) {
            Ok(_) => {
                // SAFETY: `REGISTERING` excludes producers from `waiter` (they only take it
                // after moving the state from exactly `WAITING`).
                let old = self.waiter.with_mut(|p| unsafe { (*p).replace(waiter) });
                drop(old);
                if let Err(actual) =
                    self.state
                        .compare_exchange(REGISTERING, WAITING, SeqCst, Acquire)
                {
                    // A producer set `WAKING` while we registered; it left the waiter
                    // to us. Take it back and wake ourselves.
                    debug_assert_eq!(actual, REGISTERING | WAKING);
                    // SAFETY: the state is still `REGISTERING | WAKING`, which no
                    // producer acts on; we hold the registration.
                    let waiter = self.waiter.with_mut(|p| unsafe { (*p).take() });
                    self.state.store(IDLE, SeqCst);
                    if let Some(waiter) = waiter {
                        waiter.wake();
                    }
                }
            }
            // A wake is in progress: treat it as ours. The waking producer still holds
            // `WAKING`; until it stores `IDLE`, every register lands here and the caller's
            // park returns at once, so this is a spin loop: let the producer run (under
            // loom this yields; without it loom sees an endless loop, model
            // `l6_send_then_close_wakes_parked_receiver`). tokio's `AtomicWaker` does
            // the same.
            Err(_) => {
                waiter.wake();
                crate::sync::spin_hint();
            }
        }
    }

    /// Wakes the registered waiter, if any. Called by producers after publishing.
    #[inline]
    pub(crate) fn wake(&self) {
        if self.state.load(SeqCst) == IDLE {
            return;
        }
        self.wake_slow();
    }

    #[cold]
    fn wake_slow(&self) {
        let prev = self.state.fetch_or(WAKING, AcqRel);
        if prev == IDLE {
            // The waiter was woken by someone else since our load: undo our bit.
            self.state.fetch_and(!WAKING, AcqRel);
        } else if prev == WAITING {
            // SAFETY: we moved the state from exactly `WAITING` to `WAITING | WAKING`;
            // the receiver does not touch `waiter` until the state is `IDLE` or `WAITING`
            // again, and other producers saw `WAKING` already set and backed off.
            let waiter = self.waiter.with_mut(|p| unsafe { (*p).take() });
            self.state.store(IDLE, SeqCst);
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        }
    }
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
/// `ready` is polled before sleeping, after registering (the lost-wake-up re-check),
/// and after every wake-up. Returns `None` on timeout. Only the single registrant of
/// `cell` may call this.
///
/// The clock is read only once the spin-and-yield phase is over and the thread is about
/// to park, so a value that arrives before costs no clock read. The timeout therefore
/// counts from the end of that phase, and a wait can overrun it by the phase's length:
/// a few microseconds when the core is free, but each of its four yields can give the
/// core away for a scheduler time slice when it is busy.
pub(crate) fn block_until<R>(
    cell: &WaitCell,
    timeout: Option<std::time::Duration>,
    mut ready: impl FnMut() -> Option<R>,
) -> Option<R> {
    // Spin, then yield, for a few microseconds before parking (crossbeam's `Backoff`):
    // a value that arrives within that window costs no futex wait and wake, which on a
    // busy virtual machine cost tens of microseconds (a call's round trip went from
    // ~58 us to under 1 us at p50). None under loom, where spinning only multiplies
    // branches.
    #[cfg(not(loom))]
    {
        let backoff = crossbeam_utils::Backoff::new();
        while !backoff.is_completed() {
            if let Some(r) = ready() {
                return Some(r);
            }
            backoff.snooze();
        }
    }
    // A timeout too large for an `Instant` is no timeout.
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    loop {
        cell.register(Waiter::Thread(thread::current()));
        if let Some(r) = ready() {
            return Some(r);
        }
        match deadline {
            None => thread::park(),
            Some(deadline) => park_until(deadline)?,
        }
        if let Some(r) = ready() {
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
