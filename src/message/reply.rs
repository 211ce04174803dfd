//! The reply channel of a call: a one-shot slot that works from sync and async code.
//!
//! `AgentMessage::call` returns the [`ReplyReceiver`]; the [`ReplySender`] travels inside
//! the `Call` message as `reply_to`. Each call has its own slot, so a late reply can
//! never reach a later call.
//!
//! State moves once, from `EMPTY` to `SENT` (the sender wrote the value first), to
//! `SENDER_GONE` (dropped without replying) or to `RECEIVER_GONE`; whoever moves it
//! second reads the outcome. The value is written before `SENT` is published (Release)
//! and read only after it is observed (Acquire).
#![allow(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire, SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use super::Payload;
use crate::sync::{Arc, AtomicUsize, UnsafeCell};
use crate::wait::{block_until, Look, WaitCell, Waiter};

const EMPTY: usize = 0;
const SENT: usize = 1;
const SENDER_GONE: usize = 2;
const RECEIVER_GONE: usize = 3;
/// The call's timer fired first (async calls, whose timeout sits on the timer wheel).
const TIMED_OUT: usize = 4;

struct Slot {
    /// `EMPTY` until one side finishes.
    state: AtomicUsize,
    /// Written by the sender before `SENT`; taken by the receiver after it.
    value: UnsafeCell<Option<Payload>>,
    /// The receiver's waiter.
    waiter: WaitCell,
}

// SAFETY: `value` is handed from the sender to the receiver through the state protocol of
// the module docs; `Payload` is `Send`.
unsafe impl Sync for Slot {}
// SAFETY: as above.
unsafe impl Send for Slot {}

/// The sending half of a call's reply channel (`reply_to` in `AgentMessage::Call`).
pub struct ReplySender {
    slot: Arc<Slot>,
    /// Whether `send` already ran (the drop then has nothing to announce).
    done: bool,
}

/// The receiving half of a call's reply channel: `recv()`, `recv_timeout(d)`, or `.await`.
pub struct ReplyReceiver {
    slot: Arc<Slot>,
}

/// Why no reply arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// The callee dropped the call without replying.
    Closed,
    /// The timeout passed first.
    Timeout,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::Closed => "the call was dropped without a reply",
            ReplyError::Timeout => "no reply before the timeout",
        })
    }
}

impl std::error::Error for ReplyError {}

impl Slot {
    fn new() -> Self {
        Slot {
            state: AtomicUsize::new(EMPTY),
            value: UnsafeCell::new(None),
            waiter: WaitCell::new(),
        }
    }
}

// A thread's spare slot: a call's receiver that ends as the slot's last holder puts the
// slot here, and the thread's next call takes it instead of allocating. One per
// thread, so a thread keeps at most one idle slot (~100 bytes).
#[cfg(not(loom))]
std::thread_local! {
    static SPARE_SLOT: std::cell::Cell<Option<Arc<Slot>>> = const { std::cell::Cell::new(None) };
}
#[cfg(loom)]
loom::thread_local! {
    static SPARE_SLOT: std::cell::Cell<Option<Arc<Slot>>> = std::cell::Cell::new(None);
}

/// A fresh reply channel: the thread's spare slot if it has one, else a new one.
pub fn reply_channel() -> (ReplySender, ReplyReceiver) {
    let slot = SPARE_SLOT
        .try_with(|spare| spare.take())
        .ok()
        .flatten()
        .unwrap_or_else(|| Arc::new(Slot::new()));
    (
        ReplySender {
            slot: slot.clone(),
            done: false,
        },
        ReplyReceiver { slot },
    )
}

// ===== impl ReplySender =====

impl ReplySender {
    /// Sends the reply. Hands it back if the caller stopped waiting.
    ///
    /// Takes what converts into a [`Payload`]: the seed's `reply_to.send(Box::new(r))`
    /// (the box travels as it is), a received `Payload` passed on, or
    /// `Payload::new(r)`, which for a small `r` allocates nothing.
    #[inline]
    pub fn send(self, value: impl Into<Payload>) -> Result<(), Payload> {
        self.send_payload(value.into())
    }

    fn send_payload(mut self, value: Payload) -> Result<(), Payload> {
        self.done = true;
        if self.slot.state.load(Acquire) != EMPTY {
            return Err(value);
        }
        // SAFETY: only the sender writes `value`, and the receiver reads it only after
        // observing `SENT`, which is published below.
        self.slot.value.with_mut(|p| unsafe { *p = Some(value) });
        match self
            .slot
            .state
            .compare_exchange(EMPTY, SENT, SeqCst, Acquire)
        {
            Ok(_) => {
                self.slot.waiter.wake();
                Ok(())
            }
            // SAFETY: the receiver is gone and never reads; we wrote the value, take it back.
            Err(_) => Err(self
                .slot
                .value
                .with_mut(|p| unsafe { (*p).take() })
                .expect("value written above")),
        }
    }

    /// Whether the caller has stopped waiting (dropped its receiver or timed out).
    pub fn is_closed(&self) -> bool {
        matches!(self.slot.state.load(Acquire), RECEIVER_GONE | TIMED_OUT)
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        if !self.done
            && self
                .slot
                .state
                .compare_exchange(EMPTY, SENDER_GONE, SeqCst, Acquire)
                .is_ok()
        {
            self.slot.waiter.wake();
        }
    }
}

impl fmt::Debug for ReplySender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplySender").finish_non_exhaustive()
    }
}

// ===== impl ReplyReceiver =====

impl ReplyReceiver {
    /// The reply if it has arrived; `Ok(None)` if it may still come.
    pub fn try_recv(&mut self) -> Result<Option<Payload>, ReplyError> {
        // SAFETY: `&mut self`: this receiver is the slot's only reader, and it is busy here.
        unsafe { self.slot.take(Look::Plain) }
    }

    /// Blocks until the reply arrives.
    pub fn recv(mut self) -> Result<Payload, ReplyError> {
        self.wait(None).unwrap_or(Err(ReplyError::Timeout))
    }

    /// Blocks until the reply arrives or `timeout` passes. The timeout counts from the
    /// end of a short spin (microseconds, no yield), so a reply that comes quickly costs
    /// no clock read; past the deadline it returns after at most one delayed wake-up.
    pub fn recv_timeout(mut self, timeout: Duration) -> Result<Payload, ReplyError> {
        self.wait(Some(timeout)).unwrap_or(Err(ReplyError::Timeout))
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Option<Result<Payload, ReplyError>> {
        let slot = &*self.slot;
        block_until(&slot.waiter, timeout, |look| {
            // SAFETY: `&mut self` is held for the whole wait: no other take can run.
            unsafe { slot.take(look) }.transpose()
        })
    }
}

impl Slot {
    /// The reply if it has arrived; `Ok(None)` if it may still come.
    ///
    /// `look`: [`Look::BeforeSleep`] after registering (see `wait`).
    ///
    /// # Safety
    ///
    /// Only the slot's receiver calls this, and never twice at the same time.
    unsafe fn take(&self, look: Look) -> Result<Option<Payload>, ReplyError> {
        let state = match look {
            Look::Plain => self.state.load(Acquire),
            // Writes `EMPTY` back if still empty, so that the outcome's CAS reads from
            // it and its wake sees the registration.
            Look::BeforeSleep => self
                .state
                .compare_exchange(EMPTY, EMPTY, AcqRel, Acquire)
                .unwrap_or_else(|s| s),
        };
        match state {
            // SAFETY: `SENT` (Acquire) shows the sender's write, and the sender
            // no longer touches `value`; the caller is the only reader. A second take
            // finds `None`: the reply was already received.
            SENT => match self.value.with_mut(|p| unsafe { (*p).take() }) {
                Some(value) => Ok(Some(value)),
                None => Err(ReplyError::Closed),
            },
            SENDER_GONE => Err(ReplyError::Closed),
            TIMED_OUT => Err(ReplyError::Timeout),
            _ => Ok(None),
        }
    }
}

impl ReplyReceiver {
    /// A handle that can end the wait with `Timeout` (used by the timer wheel).
    pub(crate) fn timeout_handle(&self) -> ReplyTimeout {
        ReplyTimeout {
            slot: self.slot.clone(),
        }
    }
}

/// Ends a call's wait with `Timeout` unless the reply came first.
pub(crate) struct ReplyTimeout {
    slot: Arc<Slot>,
}

impl ReplyTimeout {
    /// Fires the timeout. A reply sent afterwards is handed back to its sender.
    pub(crate) fn expire(self) {
        if self
            .slot
            .state
            .compare_exchange(EMPTY, TIMED_OUT, SeqCst, Acquire)
            .is_ok()
        {
            self.slot.waiter.wake();
        }
    }
}

impl fmt::Debug for ReplyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyTimeout").finish_non_exhaustive()
    }
}

impl Future for ReplyReceiver {
    type Output = Result<Payload, ReplyError>;

    /// # Cancel safety
    ///
    /// Dropping the future drops the receiver: a reply sent afterwards is handed back to
    /// the replier by `ReplySender::send`.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(r) = this.try_recv().transpose() {
            return Poll::Ready(r);
        }
        // A displaced waker can only be this receiver's own from an earlier poll.
        drop(this.slot.waiter.register(Waiter::Task(cx.waker().clone())));
        // SAFETY: `&mut self`: this receiver is the slot's only reader.
        match unsafe { this.slot.take(Look::BeforeSleep) }.transpose() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

impl Drop for ReplyReceiver {
    fn drop(&mut self) {
        // Once the state has left `EMPTY` it never returns, so a receiver that saw the
        // outcome (the common case: it took the reply) needs no read-modify-write. If
        // the reply already arrived it is dropped with the slot.
        if self.slot.state.load(Acquire) == EMPTY {
            let _ = self
                .slot
                .state
                .compare_exchange(EMPTY, RECEIVER_GONE, AcqRel, Acquire);
        }
        self.recycle();
    }
}

impl ReplyReceiver {
    /// Keeps the slot as this thread's spare if this receiver is its last holder: the
    /// sender has gone (it replied, or dropped the call) and no timer holds it. The
    /// check is `Arc::get_mut`, whose Acquire shows every other holder's last use; the
    /// slot is then reset whole (a reply never taken is dropped here, as it would be
    /// with the slot). Otherwise the slot goes with its last holder, as any `Arc`.
    fn recycle(&mut self) {
        let Some(slot) = Arc::get_mut(&mut self.slot) else {
            return;
        };
        *slot = Slot::new();
        let _ = SPARE_SLOT.try_with(|spare| {
            if let Some(spare_slot) = spare.take() {
                spare.set(Some(spare_slot)); // one spare is enough
            } else {
                spare.set(Some(self.slot.clone()));
            }
        });
    }
}

impl fmt::Debug for ReplyReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyReceiver").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trip_across_threads() {
        let (tx, rx) = reply_channel();
        let t = std::thread::spawn(move || tx.send(Box::new(7u32)).unwrap());
        let v = rx.recv().unwrap();
        assert_eq!(*v.downcast::<u32>().unwrap(), 7);
        t.join().unwrap();
    }

    #[test]
    fn dropped_sender_closes() {
        let (tx, rx) = reply_channel();
        drop(tx);
        assert_eq!(rx.recv().unwrap_err(), ReplyError::Closed);
    }

    #[test]
    fn timeout_then_late_reply_is_handed_back() {
        let (tx, rx) = reply_channel();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)).unwrap_err(),
            ReplyError::Timeout
        );
        assert!(tx.is_closed());
        assert!(tx.send(Box::new(1u8)).is_err());
    }

    #[test]
    fn a_finished_call_leaves_its_slot_to_the_next_on_the_thread() {
        let (tx, rx) = reply_channel();
        let used = Arc::as_ptr(&rx.slot);
        tx.send(Box::new(1u8)).unwrap();
        assert!(rx.recv().is_ok());
        let (tx, rx) = reply_channel();
        assert_eq!(Arc::as_ptr(&rx.slot), used, "the slot was recycled");
        assert!(!tx.is_closed(), "a recycled slot starts empty");
        assert_eq!(
            rx.recv_timeout(Duration::ZERO).unwrap_err(),
            ReplyError::Timeout
        );
        assert!(tx.is_closed());
        // The sender still holds that one: it is not recycled, the next call gets a
        // fresh slot, and the late reply is handed back.
        let (_tx2, rx2) = reply_channel();
        assert_ne!(Arc::as_ptr(&rx2.slot), used);
        assert!(tx.send(Box::new(2u8)).is_err());
    }

    #[test]
    fn a_reply_never_taken_is_dropped_when_its_slot_is_recycled() {
        struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let drops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = reply_channel();
        tx.send(Box::new(Counted(drops.clone()))).unwrap();
        drop(rx);
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 1);
        let (tx, rx) = reply_channel();
        tx.send(Box::new(3u8)).unwrap();
        assert_eq!(*rx.recv().unwrap().downcast::<u8>().unwrap(), 3);
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn zero_and_huge_timeouts() {
        let (_tx, rx) = reply_channel();
        assert_eq!(
            rx.recv_timeout(Duration::ZERO).unwrap_err(),
            ReplyError::Timeout
        );
        let (tx, rx) = reply_channel();
        tx.send(Box::new(())).unwrap();
        assert!(rx.recv_timeout(Duration::MAX).is_ok());
    }
}
