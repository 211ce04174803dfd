//! Loom models of the lock-free core: lanes, wait cell, close/drain, bounded capacity,
//! the agent table, the reply slot and the dead-letter store's subscriptions.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --profile loom --no-default-features
//! --test loom` (see `.ci/run`). Under `--cfg loom` the library's `crate::sync` is loom's,
//! and a lane block holds 2 slots, so a handful of messages crosses block boundaries.
//!
//! Every message carries a `loom::sync::Arc<()>` token: loom's leak check then flags a
//! message that was neither delivered nor dropped, and each model also checks that the
//! token count is back to 1 at the end.
#![cfg(loom)]

mod breaker;
mod dead_letter;
mod delivery;
mod lane;
mod mailbox;
mod receive;
mod reply;
mod signals;
mod table;
mod timer;

use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use loom::sync::{Arc, Condvar, Mutex};
use terraphim_agent_messaging::{AgentMessage, AgentPid};

/// Preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set.
const DEFAULT_PREEMPTIONS: usize = 2;

/// Explores every interleaving of `f` (up to the preemption bound), honouring the usual
/// `LOOM_*` variables. With `--nocapture`, prints the iterations and time it took.
#[track_caller]
pub(crate) fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let caller = Location::caller();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    let iterations = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = iterations.clone();
    let f = std::sync::Arc::new(f);
    let start = Instant::now();
    builder.check(move || {
        counter.fetch_add(1, Relaxed);
        // Loom runs the model's main thread on a 32 KiB coroutine stack, too small for
        // a `MessageSystem`: run the body on a model thread with a bigger one.
        let f = f.clone();
        spawn(move || f()).join().unwrap();
        assert_eq!(
            terraphim_agent_messaging::__private::live_lane_blocks(),
            0,
            "a lane block leaked"
        );
    });
    let elapsed = start.elapsed();
    let truncated = builder.max_duration.is_some_and(|max| elapsed >= max);
    eprintln!(
        "loom model {}:{}: {} iterations in {:.2?} (preemptions {}){}",
        caller.file(),
        caller.line(),
        iterations.load(Relaxed),
        elapsed,
        builder.preemption_bound.unwrap_or(0),
        if truncated {
            " STOPPED BY LOOM_MAX_DURATION"
        } else {
            ""
        },
    );
}

/// Coroutine stack of every model thread, in words (loom's default is 4 Ki words).
const STACK_WORDS: usize = 1 << 16;

/// `loom::thread::spawn` with a stack big enough for the whole crate's call depth.
pub(crate) fn spawn<F, T>(f: F) -> loom::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    loom::thread::Builder::new()
        .stack_size(STACK_WORDS)
        .spawn(f)
        .expect("spawn a model thread")
}

/// Runs `future` to completion on this loom thread. Its waker sets a flag and
/// notifies a condvar the thread waits on, so a lost wake-up deadlocks the model.
///
/// It never unparks the thread: a wake that comes after the
/// future resolved (the timer thread's `expire` racing the reply) would unpark this
/// thread while it is blocked in `join` or on a mutex, which trips loom's own
/// assertions (`state.notified` in `Notify::wait`, "expected to be able to acquire
/// lock") from preemption bound 3 on. std's park token tolerates such a stale unpark;
/// loom's model of it does not. A condvar notify reaches only its waiters.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Notify {
        woken: Mutex<bool>,
        condvar: Condvar,
    }
    impl Wake for Notify {
        fn wake(self: std::sync::Arc<Self>) {
            // `try_lock` and yield rather than `lock`: a thread blocked on a loom mutex
            // trips loom's assertion ("expected to be able to acquire lock") if a late
            // unpark of its own arrives meanwhile, which happens when a blocking
            // receiver wakes the task it displaces (model
            // `poll_receive_displaced_by_a_blocking_receiver`, 3 preemptions) and a
            // producer then wakes the receiver's own registration.
            let mut woken = loop {
                match self.woken.try_lock() {
                    Ok(woken) => break woken,
                    Err(_) => loom::thread::yield_now(),
                }
            };
            *woken = true;
            self.condvar.notify_one();
        }
    }
    let notify = std::sync::Arc::new(Notify {
        woken: Mutex::new(false),
        condvar: Condvar::new(),
    });
    let waker = Waker::from(notify.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let mut woken = notify.woken.lock().unwrap();
        while !*woken {
            woken = notify.condvar.wait(woken).unwrap();
        }
        *woken = false;
    }
}

/// A message's payload: who sent it, its sequence number, and the leak-check token.
pub(crate) struct Tagged {
    pub(crate) sender: u8,
    pub(crate) seq: u8,
    _token: Arc<()>,
}

/// A cast from `sender` numbered `seq`, holding a clone of `token`.
pub(crate) fn tagged(token: &Arc<()>, sender: u8, seq: u8) -> AgentMessage {
    AgentMessage::cast(
        AgentPid::nil(),
        Tagged {
            sender,
            seq,
            _token: token.clone(),
        },
    )
}

/// `(sender, seq)` of a message built by [`tagged`].
pub(crate) fn tag(message: &AgentMessage) -> (u8, u8) {
    let t = message
        .payload::<Tagged>()
        .expect("every model message is Tagged");
    (t.sender, t.seq)
}

/// Asserts that every message `token` was given to has been dropped.
#[track_caller]
pub(crate) fn assert_all_dropped(token: &Arc<()>) {
    assert_eq!(
        Arc::strong_count(token),
        1,
        "a message is still alive (leaked or stranded)"
    );
}
