//! The thread driver: turns a system's timer wheel on a thread of its own.
//!
//! With [`TimerDriver::Thread`] (the default) one thread per system is started on the
//! first timer; it runs the service's loop (`service::turn`), parking until the next
//! deadline (no periodic polling) or until an earlier deadline unparks it, and stops
//! with `shutdown` or when the system is dropped. With [`TimerDriver::Manual`] nothing
//! runs by itself: tests advance a `ManualClock` and call `run_due_timers()`. With
//! [`TimerDriver::External`] an executor task runs the same loop (the tokio flavour).

use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Mutex, Weak};
use std::thread::{self, JoinHandle, Thread};

use super::service::{turn, Fire};
use crate::sync::{Arc, AtomicBool};

/// Who turns the timer wheel.
#[derive(Clone, Default)]
pub enum TimerDriver {
    /// A thread per system, started on the first timer (the default).
    #[default]
    Thread,
    /// Nobody: call `run_due_timers()` yourself (tests with a `ManualClock`).
    Manual,
    /// An executor task calls `run_due_timers()`; this is called whenever an earlier
    /// deadline appears, so the task can re-plan its sleep (the tokio adapter).
    External(std::sync::Arc<dyn Fn() + Send + Sync>),
}

impl std::fmt::Debug for TimerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimerDriver::Thread => "Thread",
            TimerDriver::Manual => "Manual",
            TimerDriver::External(_) => "External",
        })
    }
}

/// The driver of one system.
pub(crate) struct Driver {
    mode: TimerDriver,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<(Thread, JoinHandle<()>)>>,
}

impl Driver {
    pub(crate) fn new(mode: TimerDriver) -> Self {
        let mode = if cfg!(loom) && matches!(mode, TimerDriver::Thread) {
            TimerDriver::Manual
        } else {
            mode
        };
        Driver {
            mode,
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        }
    }

    pub(crate) fn mode(&self) -> &TimerDriver {
        &self.mode
    }

    /// A deadline earlier than any the driver sleeps towards was set: start the
    /// thread, or wake it to re-plan.
    pub(crate) fn wake(&self, target: Weak<dyn Fire>) {
        if self.stop.load(Acquire) {
            return;
        }
        match &self.mode {
            TimerDriver::Thread => {}
            TimerDriver::Manual => return,
            TimerDriver::External(wake) => return wake(),
        }
        let mut slot = lock_std(&self.thread);
        match &*slot {
            Some((thread, _)) => thread.unpark(),
            None => {
                let stop = self.stop.clone();
                let spawned = thread::Builder::new()
                    .name("agent-messaging-timers".into())
                    .spawn(move || run(target, stop));
                // Spawn failure leaves timers to the next wake (or `run_due_timers`).
                if let Ok(handle) = spawned {
                    *slot = Some((handle.thread().clone(), handle));
                }
            }
        }
    }

    /// Stops the thread and waits for it (unless called from it).
    pub(crate) fn stop(&self) {
        if self.stop.swap(true, AcqRel) {
            return;
        }
        let taken = lock_std(&self.thread).take();
        if let Some((thread, handle)) = taken {
            thread.unpark();
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The driver's own mutex is std's: the thread is never part of a loom model.
fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(target: Weak<dyn Fire>, stop: Arc<AtomicBool>) {
    while !stop.load(Acquire) {
        let Some(wait) = turn(&target) else { return };
        thread::park_timeout(wait);
    }
}
