//! The timer task: turns the system's timer wheel on a tokio runtime.
//!
//! The core is built with `TimerDriver::External(wake)`, where `wake` notifies this
//! task whenever a deadline earlier than the one it sleeps towards appears. The loop is
//! the timer service's own (`crate::timer::service`), the one the thread driver runs;
//! only the sleep differs:
//!
//! ```text
//! loop {
//!     wait = turn(engine)              // fire what is due; how long until the next
//!     sleep(wait) or notified, whichever comes first
//! }
//! ```
//!
//! The wait is measured on the system's own `Clock` and capped by the heartbeat
//! (`RouterConfig::retry_interval`), so a custom clock never makes the loop spin.
//!
//! A `notify_one` that lands between `run_due_timers` and the sleep is not lost: it
//! leaves a permit that ends the next `notified()` at once.
//!
//! The task holds only a `Weak` on the system: dropping every handle without
//! `shutdown` ends it too.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;

use ::tokio::runtime::Handle;
use ::tokio::sync::Notify;
use ::tokio::task::JoinHandle;

use crate::timer::service::{turn, Fire};

/// The handle on one system's timer task.
pub(crate) struct TimerTask {
    /// Set to end the loop.
    stop: Arc<AtomicBool>,
    /// Wakes the loop: an earlier deadline, or `stop`.
    notify: Arc<Notify>,
    /// The spawned task, until `shutdown` takes it.
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl TimerTask {
    /// A task handle not yet started, and the wake hook for `TimerDriver::External`.
    pub(crate) fn new() -> (Self, Arc<dyn Fn() + Send + Sync>) {
        let notify = Arc::new(Notify::new());
        let wake = {
            let notify = notify.clone();
            Arc::new(move || notify.notify_one()) as Arc<dyn Fn() + Send + Sync>
        };
        let task = TimerTask {
            stop: Arc::new(AtomicBool::new(false)),
            notify,
            handle: Mutex::new(None),
        };
        (task, wake)
    }

    /// Spawns the loop on `runtime`, turning `target` while it lives.
    pub(crate) fn start(&self, runtime: &Handle, target: Weak<dyn Fire>) {
        let stop = self.stop.clone();
        let notify = self.notify.clone();
        let handle = runtime.spawn(run(target, stop, notify));
        *lock(&self.handle) = Some(handle);
    }

    /// Whether the loop is still running.
    pub(crate) fn is_running(&self) -> bool {
        lock(&self.handle)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Tells the loop to end, without waiting for it.
    fn signal(&self) -> Option<JoinHandle<()>> {
        self.stop.store(true, Ordering::Release);
        self.notify.notify_one();
        lock(&self.handle).take()
    }

    /// Ends the loop and waits until the task is gone.
    ///
    /// # Cancel safety
    ///
    /// The loop is told to stop in the first poll; dropping the future only skips the
    /// wait for it.
    pub(crate) async fn stop(&self) {
        if let Some(handle) = self.signal() {
            // The loop sees `stop` at its next wake-up (now); an abort ends it even if
            // it is parked on a runtime that is not being driven right now.
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for TimerTask {
    fn drop(&mut self) {
        if let Some(handle) = self.signal() {
            handle.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(target: Weak<dyn Fire>, stop: Arc<AtomicBool>, notify: Arc<Notify>) {
    while !stop.load(Ordering::Acquire) {
        let Some(wait) = turn(&target) else { return };
        first_of(::tokio::time::sleep(wait), notify.notified()).await;
    }
}

/// Waits for whichever of `a` and `b` finishes first (a two-armed `select!` without
/// the `macros` feature).
async fn first_of(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
