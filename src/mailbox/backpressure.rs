//! Back-pressure: senders that wait for room in a bounded mailbox (`send_timeout`),
//! woken in the order they began to wait, with no thread per waiter.
//!
//! A mailbox allocates its [`SendWaiters`] when the first sender has to wait. A
//! waiting sender queues a ticket with how to wake it (its thread, or its task's
//! waker) and sleeps; each receive that frees a slot wakes the queue's head; the head
//! takes the slot and leaves the queue, and if room is left, wakes the next.
//!
//! # Invariants
//!
//! - Only the head of the queue takes a freed slot (a sender that is not waiting may
//!   still take it first: `try_send` never queues). So waiting senders get their
//!   slots in the order they queued.
//! - No lost wake-up: a sender queues itself, then loads `reserved` (SeqCst); a
//!   receiver releases a slot with a SeqCst `fetch_sub`, then loads the queue's
//!   pointer and `waiting` count (SeqCst). In the single order of SeqCst operations,
//!   either the receiver sees the waiter and wakes the head, or the sender's load sees
//!   the freed slot. A head that leaves (sent, timed out, or dropped) wakes the next
//!   waiter if room is left, so a wake that reached a departing head is not lost.
//! - `close` wakes every waiter: each then gets `Closed` with its message.
//! - No wake runs under the queue's lock: wakers are user code and may send.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::shared::Shared;
use crate::error::TrySendError;
use crate::message::{AgentMessage, MessagePriority};
use crate::sync::{lock, thread, AtomicUsize, Mutex};

/// How a waiting sender is woken.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tasks wait in the tokio twin only
#[derive(Clone)]
enum Wake {
    Thread(thread::Thread),
    Task(Waker),
}

impl Wake {
    fn wake(&self) {
        match self {
            Wake::Thread(t) => t.unpark(),
            Wake::Task(w) => w.wake_by_ref(),
        }
    }
}

/// The senders waiting for room in one mailbox.
pub(crate) struct SendWaiters {
    queue: Mutex<Queue>,
    /// Entries in `queue` (read without the lock by every receive that frees a slot).
    waiting: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<(u64, Wake)>,
    next_ticket: u64,
}

impl SendWaiters {
    fn enqueue(&self, wake: Wake) -> u64 {
        let mut queue = lock(&self.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.entries.push_back((ticket, wake));
        self.waiting.fetch_add(1, SeqCst);
        ticket
    }

    fn is_head(&self, ticket: u64) -> bool {
        lock(&self.queue)
            .entries
            .front()
            .is_some_and(|(t, _)| *t == ticket)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn set_waker(&self, ticket: u64, waker: &Waker) {
        let mut queue = lock(&self.queue);
        if let Some((_, wake)) = queue.entries.iter_mut().find(|(t, _)| *t == ticket) {
            match wake {
                Wake::Task(w) if w.will_wake(waker) => {}
                _ => *wake = Wake::Task(waker.clone()),
            }
        }
    }

    /// Wakes the head, after releasing the queue: a waker is user code, and one that
    /// sends into this full mailbox queues itself, taking the lock (issue 12, item 4).
    /// The clone is a reference count (a waker's, a thread's), on a slow path: only
    /// when a sender waits.
    fn wake_head(&self) {
        let head = lock(&self.queue)
            .entries
            .front()
            .map(|(_, wake)| wake.clone());
        if let Some(wake) = head {
            wake.wake();
        }
    }

    /// Wakes every waiter (close), after releasing the queue, as `wake_head` does.
    fn wake_all(&self) {
        let all: Vec<Wake> = lock(&self.queue)
            .entries
            .iter()
            .map(|(_, wake)| wake.clone())
            .collect();
        for wake in all {
            wake.wake();
        }
    }

    /// Removes `ticket`; returns whether another sender still waits.
    fn leave(&self, ticket: u64) -> bool {
        let mut queue = lock(&self.queue);
        if let Some(at) = queue.entries.iter().position(|(t, _)| *t == ticket) {
            queue.entries.remove(at);
            self.waiting.fetch_sub(1, SeqCst);
        }
        !queue.entries.is_empty()
    }
}

impl Shared {
    /// The waiters, allocating them on first use.
    fn send_waiters(&self) -> &SendWaiters {
        if let Some(waiters) = self.send_waiters_if_any() {
            return waiters;
        }
        let new = Box::into_raw(Box::new(SendWaiters {
            queue: Mutex::new(Queue::default()),
            waiting: AtomicUsize::new(0),
        }));
        match self
            .send_waiters
            .compare_exchange(std::ptr::null_mut(), new, SeqCst, Acquire)
        {
            // SAFETY: installed from a `Box` just now; freed only in `Shared::drop`.
            Ok(_) => unsafe { &*new },
            Err(current) => {
                // SAFETY: `new` was never published.
                drop(unsafe { Box::from_raw(new) });
                // SAFETY: installed by another thread from a `Box`; freed only in
                // `Shared::drop`.
                unsafe { &*current }
            }
        }
    }

    fn send_waiters_if_any(&self) -> Option<&SendWaiters> {
        let p = self.send_waiters.load(SeqCst);
        // SAFETY: a non-null pointer was installed from a `Box` and is freed only in
        // `Shared::drop`.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// A receive freed a slot: wake the first waiting sender, if any.
    #[inline]
    pub(super) fn wake_a_sender(&self) {
        if let Some(waiters) = self.send_waiters_if_any() {
            if waiters.waiting.load(SeqCst) > 0 {
                waiters.wake_head();
            }
        }
    }

    /// The mailbox closed: every waiting sender wakes (and gets `Closed`).
    pub(super) fn wake_all_senders(&self) {
        if let Some(waiters) = self.send_waiters_if_any() {
            waiters.wake_all();
        }
    }

    /// Senders waiting for room now.
    pub(crate) fn blocked_senders(&self) -> usize {
        self.send_waiters_if_any()
            .map_or(0, |w| w.waiting.load(Acquire))
    }

    /// Whether `ticket` may take a slot now: it heads the queue and there is room, or
    /// the mailbox closed (the send then fails at once).
    fn may_try(&self, waiters: &SendWaiters, ticket: u64) -> bool {
        self.lanes().is_closed()
            || (self.reserved.load(SeqCst) < self.capacity && waiters.is_head(ticket))
    }

    /// `ticket` leaves the queue; the next waiter is woken if there is room for it.
    fn leave_queue(&self, waiters: &SendWaiters, ticket: u64) {
        if waiters.leave(ticket) && self.reserved.load(SeqCst) < self.capacity {
            waiters.wake_head();
        }
    }

    /// Queues `message`, waiting up to `timeout` for room (blocking the thread);
    /// hands it back as `Full` after the timeout, or `Closed`. `Duration::MAX` waits
    /// without end; a zero timeout is `try_send`.
    pub(crate) fn send_timeout(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
        timeout: Duration,
    ) -> Result<(), TrySendError> {
        let mut message = match self.try_send(message, priority) {
            Err(TrySendError::Full(m)) if self.capacity > 0 && !timeout.is_zero() => m,
            other => return other,
        };
        let deadline = Instant::now().checked_add(timeout);
        let waiters = self.send_waiters();
        let ticket = waiters.enqueue(Wake::Thread(thread::current()));
        let result = loop {
            if self.may_try(waiters, ticket) {
                match self.try_send(message, priority) {
                    Err(TrySendError::Full(m)) => message = m,
                    done => break done,
                }
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break Err(TrySendError::Full(message));
                    }
                    park_timeout(deadline - now);
                }
            }
        };
        self.leave_queue(waiters, ticket);
        result
    }
}

#[cfg(not(loom))]
fn park_timeout(timeout: Duration) {
    thread::park_timeout(timeout);
}

/// Loom has no clock: a timed wait is a yield.
#[cfg(loom)]
fn park_timeout(_timeout: Duration) {
    thread::yield_now();
}

/// A send that waits for room without blocking the thread, on any executor: the core
/// of the tokio twin's `send_timeout`, which puts a timer around it and takes the
/// message back with [`SendWhenRoom::into_message`] when it fires.
///
/// # Cancel safety
///
/// Dropping it leaves the queue; the message is dropped with it unless taken back.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) struct SendWhenRoom<'a> {
    shared: &'a Shared,
    message: Option<AgentMessage>,
    priority: MessagePriority,
    ticket: Option<u64>,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl<'a> SendWhenRoom<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Self {
        SendWhenRoom {
            shared,
            message: Some(message),
            priority,
            ticket: None,
        }
    }

    /// Leaves the queue and hands the message back (if it was not sent).
    pub(crate) fn into_message(mut self) -> Option<AgentMessage> {
        self.leave();
        self.message.take()
    }

    fn leave(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.leave_queue(self.shared.send_waiters(), ticket);
        }
    }
}

impl Future for SendWhenRoom<'_> {
    type Output = Result<(), TrySendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let shared = this.shared;
        let Some(mut message) = this.message.take() else {
            return Poll::Ready(Ok(())); // polled after completion: sent already
        };
        let waiters = match this.ticket {
            None => {
                match shared.try_send(message, this.priority) {
                    Err(TrySendError::Full(m)) if shared.capacity > 0 => message = m,
                    done => return Poll::Ready(done),
                }
                let waiters = shared.send_waiters();
                this.ticket = Some(waiters.enqueue(Wake::Task(cx.waker().clone())));
                waiters
            }
            Some(ticket) => {
                let waiters = shared.send_waiters();
                waiters.set_waker(ticket, cx.waker());
                waiters
            }
        };
        let ticket = this.ticket.expect("queued above");
        if shared.may_try(waiters, ticket) {
            match shared.try_send(message, this.priority) {
                Err(TrySendError::Full(m)) => message = m,
                done => {
                    this.leave();
                    return Poll::Ready(done);
                }
            }
        }
        this.message = Some(message);
        Poll::Pending
    }
}

impl Drop for SendWhenRoom<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}
