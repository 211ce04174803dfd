//! Helpers shared by the integration tests, each test file taking them with `mod common;`:
//! the generous deadline and bounded waits (`within`, `wait_until`), a seeded xorshift
//! generator, the four priorities in order, and registering agents and building a
//! system on a `ManualClock` with manual timers, in the sync flavour (`common::sync`,
//! the crate root's types) and the tokio one (`common::tokio`, the types of
//! `terraphim_agent_messaging::tokio`), and a per-thread counting allocator for tests
//! that measure allocations and memory (`common::alloc`, which a binary installs itself),
//! and a layer capturing `tracing` events (`common::capture`).
//!
//! `init_tracing` prints the crate's events when `RUST_LOG` is set (cargo feature
//! `tracing`), through libtest's capture: `RUST_LOG=debug cargo test` shows them for
//! the tests that fail. The system builders below call it, so every test that builds a
//! system through them does.
//!
//! No test binary uses all of it, hence `allow(dead_code)`. Paths into the tokio crate
//! are written `::tokio` here, since `tokio` alone would name the submodule.
#![allow(dead_code)]

pub mod alloc;
#[cfg(feature = "tracing")]
pub mod capture;

use std::thread;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::MessagePriority;

/// Generous bound for anything that should take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The four priorities, lowest first (`PRIORITIES[p.index()] == p`).
pub const PRIORITIES: [MessagePriority; 4] = [
    MessagePriority::Low,
    MessagePriority::Normal,
    MessagePriority::High,
    MessagePriority::Critical,
];

/// Installs, once per test binary, a `tracing` subscriber that prints the events
/// `RUST_LOG` selects (e.g. `RUST_LOG=debug`, or
/// `RUST_LOG=terraphim_agent_messaging::delivery=trace`) through the test harness's
/// capture. Without `RUST_LOG`, or without the `tracing` feature, it does nothing.
pub fn init_tracing() {
    #[cfg(feature = "tracing")]
    {
        use tracing_subscriber::EnvFilter;
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Ok(filter) = EnvFilter::try_from_default_env() {
                let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(colour)
                    .with_test_writer()
                    .try_init();
            }
        });
    }
}

/// Polls `cond` every millisecond until it holds; fails the test after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A tiny xorshift generator (no `rand` dependency): the same seed, the same sequence.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`, any `u64` (scrambled, never the all-zero state).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A generator whose state is `state` as given (must not be zero).
    pub fn from_state(state: u64) -> Self {
        assert_ne!(state, 0, "xorshift is stuck at zero");
        XorShift(state)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The sync flavour: the crate root's `MessageSystem` on threads.
pub mod sync {
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    use terraphim_agent_messaging::{
        AgentMailbox, AgentPid, MailboxConfig, ManualClock, MessageSystem, MessageSystemBuilder,
        RouterConfig, TimerDriver,
    };

    /// Runs `f` on its own thread and fails the test if it does not finish within
    /// `secs`; a panic in `f` is the test's panic.
    pub fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let worker = thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(r) => {
                worker.join().unwrap();
                r
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The closure panicked: surface its panic.
                std::panic::resume_unwind(worker.join().unwrap_err())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung for more than {secs} s"),
        }
    }

    /// Registers a fresh pid; returns it (no mailbox handle is taken).
    pub fn register(system: &MessageSystem) -> AgentPid {
        super::init_tracing();
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).unwrap();
        pid
    }

    /// Registers a fresh pid; returns it and its mailbox.
    pub fn registered(system: &MessageSystem) -> (AgentPid, AgentMailbox) {
        let pid = register(system);
        let mailbox = system.get_mailbox(&pid).unwrap();
        (pid, mailbox)
    }

    /// A builder on a new `ManualClock` with `TimerDriver::Manual` (the test moves the
    /// clock and runs due timers itself), mailboxes bounded at `cap`; and the clock.
    pub fn manual_builder(config: RouterConfig, cap: usize) -> (MessageSystemBuilder, ManualClock) {
        super::init_tracing();
        let clock = ManualClock::new();
        let builder = MessageSystem::builder(config)
            .mailbox_config(MailboxConfig {
                max_messages: cap,
                ..MailboxConfig::default()
            })
            .clock(Arc::new(clock.clone()))
            .timer_driver(TimerDriver::Manual);
        (builder, clock)
    }

    /// [`manual_builder`], built.
    pub fn manual_system(config: RouterConfig, cap: usize) -> (MessageSystem, ManualClock) {
        let (builder, clock) = manual_builder(config, cap);
        (builder.build().unwrap(), clock)
    }
}

/// The tokio flavour: `terraphim_agent_messaging::tokio`'s `MessageSystem` on a runtime.
#[cfg(feature = "tokio")]
pub mod tokio {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use terraphim_agent_messaging::tokio::{
        AgentMailbox, AgentPid, MailboxConfig, ManualClock, MessageSystem, MessageSystemBuilder,
        RouterConfig, TimerDriver,
    };

    /// Fails the test if `f` takes longer than `secs`.
    pub async fn within<F: Future>(secs: u64, f: F) -> F::Output {
        match ::tokio::time::timeout(Duration::from_secs(secs), f).await {
            Ok(out) => out,
            Err(_) => panic!("hung for more than {secs} s"),
        }
    }

    /// Registers a fresh pid; returns it and its mailbox.
    pub async fn registered(system: &MessageSystem) -> (AgentPid, AgentMailbox) {
        super::init_tracing();
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).await.unwrap();
        let mailbox = system.get_mailbox(&pid).await.unwrap();
        (pid, mailbox)
    }

    /// A builder on a new `ManualClock`, mailboxes bounded at `cap`, and the clock. Its
    /// timer driver is still the default (a task sleeping on the clock's terms).
    pub fn clocked_builder(
        config: RouterConfig,
        cap: usize,
    ) -> (MessageSystemBuilder, ManualClock) {
        super::init_tracing();
        let clock = ManualClock::new();
        let builder = MessageSystem::builder(config)
            .mailbox_config(MailboxConfig {
                max_messages: cap,
                ..MailboxConfig::default()
            })
            .clock(Arc::new(clock.clone()));
        (builder, clock)
    }

    /// A system on a new `ManualClock` with `TimerDriver::Manual` (no timer task: the
    /// test moves the clock and runs due timers itself), mailboxes bounded at `cap`;
    /// and the clock.
    pub fn manual_system(config: RouterConfig, cap: usize) -> (MessageSystem, ManualClock) {
        let (builder, clock) = clocked_builder(config, cap);
        let system = builder.timer_driver(TimerDriver::Manual).build().unwrap();
        (system, clock)
    }
}
