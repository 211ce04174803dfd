//! [`MessageSystemBuilder`]: how a system is put together.
//!
//! Bottom up: the dead-letter store, the mailboxes and their table, the timer service
//! (clock + driver), the destinations (the table, or a custom router), and the
//! delivery engine over them, which the timer service then drives.

use super::{Inner, MessageSystem};
use crate::breaker::{BreakerSettings, CircuitBreakerConfig};
use crate::dead_letter::{DeadLetters, DEFAULT_DEAD_LETTER_CAPACITY};
use crate::delivery::engine::Engine;
use crate::delivery::{DeliveryConfig, RetryPolicy, RouterConfig};
use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::shared::{CrashHook, Settings};
use crate::mailbox::MailboxConfig;
use crate::router::custom::CustomRoutes;
use crate::router::default::LocalRoutes;
use crate::router::{MessageRouter, Routes};
use crate::sync::{Arc, AtomicBool};
use crate::table::manager::MailboxManager;
use crate::table::AgentTable;
use crate::timer::driver::TimerDriver;
use crate::timer::service::{Fire, TimerService};
use crate::timer::{Clock, SystemClock};

/// Builds a [`MessageSystem`] with options beyond `RouterConfig`.
pub struct MessageSystemBuilder {
    pub(super) config: RouterConfig,
    pub(super) mailbox_config: MailboxConfig,
    pub(super) starvation_budget: Option<u32>,
    pub(super) router: Option<std::sync::Arc<dyn MessageRouter>>,
    pub(super) breaker: Option<CircuitBreakerConfig>,
    pub(super) clock: Option<std::sync::Arc<dyn Clock>>,
    pub(super) timer_driver: TimerDriver,
    pub(super) dead_letter_capacity: usize,
}

impl MessageSystemBuilder {
    pub(super) fn new(config: RouterConfig) -> Self {
        MessageSystemBuilder {
            config,
            mailbox_config: MailboxConfig::default(),
            starvation_budget: None,
            router: None,
            breaker: None,
            clock: None,
            timer_driver: TimerDriver::Thread,
            dead_letter_capacity: DEFAULT_DEAD_LETTER_CAPACITY,
        }
    }

    /// A circuit breaker per destination: open after `failure_threshold` consecutive
    /// refused deliveries, half-open (one probe) after `reset_timeout`, closed after a
    /// success. While open, sends fail with `CircuitOpen` (`AtMostOnce`) or are
    /// retried after the reset timeout. Works with a custom router too (its
    /// `MailboxFull`, `CircuitOpen` and `Overloaded` answers count as failures).
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// The clock retries, timeouts and breakers read (default: the system clock).
    /// Pair a `ManualClock` with [`TimerDriver::Manual`] and drive timers with
    /// [`MessageSystem::run_due_timers`].
    pub fn clock(mut self, clock: std::sync::Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Who turns the timer wheel (default: a thread per system).
    pub fn timer_driver(mut self, driver: TimerDriver) -> Self {
        self.timer_driver = driver;
        self
    }

    /// The configuration of every mailbox the system creates.
    pub fn mailbox_config(mut self, config: MailboxConfig) -> Self {
        self.mailbox_config = config;
        self
    }

    /// Anti-starvation budget of every mailbox: a lower priority is served after being
    /// passed over this many times (0 = strict priority order). Overrides the default
    /// that `MailboxConfig::preserve_order` implies.
    pub fn starvation_budget(mut self, budget: u32) -> Self {
        self.starvation_budget = Some(budget);
        self
    }

    /// How many dead letters the system keeps (default
    /// [`DEFAULT_DEAD_LETTER_CAPACITY`], 10,000): the newest ones. A letter that arrives
    /// at a full store pushes out the oldest, which is dropped and counted under its
    /// reason in [`MessageSystem::dead_letter_stats`]. 0 keeps none and only counts;
    /// `usize::MAX` keeps everything (nothing is allocated up front either way).
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// Routes through a custom router. The system still owns the mailboxes (it passes
    /// each registered agent's sender to `router.register_agent`) and the delivery
    /// engine: retries, acks, breakers, call timeouts and the ledger work as with the
    /// built-in routes, each attempt going through the router.
    pub fn router(mut self, router: std::sync::Arc<dyn MessageRouter>) -> Self {
        self.router = Some(router);
        self
    }

    /// Builds the system, refusing a bad configuration.
    pub fn build(self) -> MessagingResult<MessageSystem> {
        let system = self.build_unchecked();
        match &system.inner.config_error {
            Some(e) => Err(MessagingError::Configuration(e.clone())),
            None => Ok(system),
        }
    }

    /// Builds the system; a refused configuration is kept and reported by every
    /// operation.
    pub(super) fn build_unchecked(self) -> MessageSystem {
        let mut config_error = validate_router_config(&self.config)
            .and_then(|()| self.mailbox_config.validate())
            .err();
        let dead_letters = Arc::new(DeadLetters::new(self.dead_letter_capacity));
        let settings = Arc::new(Settings::new(
            self.mailbox_config,
            self.starvation_budget,
            dead_letters.clone(),
        ));
        let table = Arc::new(AgentTable::new());
        let mailboxes = MailboxManager::with_parts(table.clone(), settings.clone());
        let clock = self
            .clock
            .unwrap_or_else(|| std::sync::Arc::new(SystemClock));
        let timers = std::sync::Arc::new(TimerService::new(
            clock,
            self.timer_driver,
            self.config.retry_interval,
        ));
        let breaker = self.breaker.and_then(|b| {
            BreakerSettings::new(&b)
                .map_err(|e| config_error.get_or_insert(e))
                .ok()
        });
        let routes = match self.router {
            Some(router) => Routes::Custom(CustomRoutes::new(router, breaker, timers.clone())),
            None => Routes::Local(LocalRoutes::new(table.clone(), breaker, timers.clone())),
        };
        // A refused retry policy is reported by every operation; the engine runs on the
        // defaults meanwhile (keeping the guarantee).
        let mut engine_config = self.config.clone();
        if let Err(e) = RetryPolicy::from_config(&engine_config.delivery_config) {
            config_error.get_or_insert(e);
            engine_config.delivery_config = DeliveryConfig {
                guarantee: engine_config.delivery_config.guarantee,
                ..Default::default()
            };
        }
        let engine = Engine::new(
            engine_config,
            routes,
            table,
            timers.clone(),
            dead_letters.clone(),
        )
        .expect("the retry policy was checked above");
        let engine = std::sync::Arc::new(engine);
        let fire: std::sync::Arc<dyn Fire> = engine.clone();
        timers.attach(std::sync::Arc::downgrade(&fire));
        engine.start_metering();
        super::signals::install_panic_hook();
        let system = MessageSystem {
            inner: std::sync::Arc::new(Inner {
                config: self.config,
                config_error,
                mailboxes,
                engine,
                dead_letters,
                signals: super::signals::Signals::new(),
                shut_down: AtomicBool::new(false),
            }),
        };
        // A crashed receiver stops its agent; the hooks hold the system weakly (the
        // system owns the mailboxes and the engine that hold them).
        let weak = std::sync::Arc::downgrade(&system.inner);
        let names = weak.clone();
        let _ = system.inner.engine.names.set(Box::new(move |name| {
            let inner = names.upgrade()?;
            MessageSystem { inner }.whereis(name)
        }));
        let _ = settings.on_crash.set(CrashHook(Box::new(move |mailbox| {
            if let Some(inner) = weak.upgrade() {
                MessageSystem { inner }.crashed(mailbox);
            }
        })));
        system
    }
}

fn validate_router_config(config: &RouterConfig) -> Result<(), String> {
    if config.retry_interval.is_zero() {
        return Err("retry_interval must be greater than zero".into());
    }
    if config.max_concurrent_deliveries == 0 {
        return Err("max_concurrent_deliveries must be at least 1".into());
    }
    if config.delivery_config.max_delivery_records == 0 {
        return Err("delivery_config.max_delivery_records must be at least 1 (it bounds the exactly-once window)".into());
    }
    Ok(())
}
