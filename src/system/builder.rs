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
    #[cfg(feature = "nats")]
    pub(super) cluster: Option<crate::cluster::ClusterConfig>,
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
            #[cfg(feature = "nats")]
            cluster: None,
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

    /// Makes the system a node of a cluster on NATS JetStream (cargo feature `nats`):
    /// pids registered here become reachable from every node of the cluster, and
    /// pids registered on other nodes from here, with the same calls (see the README's
    /// "Cluster" section for what crosses and what each guarantee means across nodes).
    ///
    /// `build()` then connects, on a client runtime thread of the system's own, and
    /// fails with a clear error if the server does not answer within
    /// [`ClusterConfig::connect_timeout`](crate::ClusterConfig::connect_timeout).
    #[cfg(feature = "nats")]
    pub fn cluster(mut self, config: crate::cluster::ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// Builds the system, refusing a bad configuration (and, with
    /// [`cluster`](Self::cluster), an unreachable server).
    pub fn build(self) -> MessagingResult<MessageSystem> {
        #[cfg(feature = "nats")]
        if self.cluster.is_some() {
            return self.build_node(None);
        }
        let system = self.build_unchecked();
        match &system.inner.config_error {
            Some(e) => Err(MessagingError::Configuration(e.clone())),
            None => Ok(system),
        }
    }

    /// Builds a cluster node: checks what can be checked without the server, connects
    /// (on `runtime`, or a client runtime thread of its own), then assembles the system
    /// around the node.
    #[cfg(feature = "nats")]
    pub(crate) fn build_node(
        mut self,
        link: Option<(crate::cluster::Link, crate::cluster::ClientRuntime)>,
    ) -> MessagingResult<MessageSystem> {
        use crate::cluster::{connect, ClientRuntime};
        let config = self.cluster.take().ok_or_else(|| {
            MessagingError::Configuration("no cluster configuration was given".into())
        })?;
        self.precheck()?;
        let config = self.node_config(config)?;
        if self.router.is_some() {
            return Err(MessagingError::Configuration(
                "a cluster node routes through its own table: cluster(..) with a custom \
                 router(..) is not built yet"
                    .into(),
            ));
        }
        config.validate().map_err(MessagingError::Configuration)?;
        let (link, runtime) = match link {
            Some(link) => link,
            None => {
                let runtime = ClientRuntime::owned(config.node_name())?;
                // `connect` keeps to the connect timeout itself; the margin only guards
                // against a runtime that never runs it.
                let bound = config.connect_timeout + std::time::Duration::from_secs(1);
                let url = config.url().to_string();
                let link =
                    runtime.block_on(&format!("connecting to {url}"), bound, connect(config))?;
                (link, runtime)
            }
        };
        let system = self.assemble(Some((link, runtime)));
        match &system.inner.config_error {
            Some(e) => Err(MessagingError::Configuration(e.clone())),
            None => Ok(system),
        }
    }

    /// The node's configuration as this system's settings complete it: durable when
    /// its mailboxes are persistent (refused at most once: nothing would be stored).
    #[cfg(feature = "nats")]
    pub(crate) fn node_config(
        &self,
        mut config: crate::cluster::ClusterConfig,
    ) -> MessagingResult<crate::cluster::ClusterConfig> {
        config.durable = self.mailbox_config.enable_persistence;
        let at_most_once =
            self.config.delivery_config.guarantee == crate::delivery::DeliveryGuarantee::AtMostOnce;
        if config.durable && at_most_once {
            return Err(MessagingError::Configuration(
                "enable_persistence: true with DeliveryGuarantee::AtMostOnce: at-most-once \
                 messages are never stored; choose AtLeastOnce or ExactlyOnce"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// The checks `build_unchecked` makes, up front (a cluster node checks before it
    /// connects).
    #[cfg(feature = "nats")]
    pub(crate) fn precheck(&self) -> MessagingResult<()> {
        validate_router_config(&self.config)
            .and_then(|()| self.mailbox_config.validate_on(true))
            .and_then(|()| RetryPolicy::from_config(&self.config.delivery_config).map(|_| ()))
            .and_then(|()| match &self.breaker {
                Some(b) => BreakerSettings::new(b).map(|_| ()),
                None => Ok(()),
            })
            .map_err(MessagingError::Configuration)
    }

    /// Builds the system; a refused configuration is kept and reported by every
    /// operation.
    pub(super) fn build_unchecked(self) -> MessageSystem {
        self.assemble(
            #[cfg(feature = "nats")]
            None,
        )
    }

    /// Puts the parts together (on a cluster node, around `node`).
    fn assemble(
        self,
        #[cfg(feature = "nats")] node: Option<(
            crate::cluster::Link,
            crate::cluster::ClientRuntime,
        )>,
    ) -> MessageSystem {
        #[cfg(feature = "nats")]
        let cluster_node = node.is_some();
        #[cfg(not(feature = "nats"))]
        let cluster_node = false;
        let mut config_error = validate_router_config(&self.config)
            .and_then(|()| self.mailbox_config.validate_on(cluster_node))
            .err();
        let dead_letters = Arc::new(DeadLetters::new(self.dead_letter_capacity));
        let settings = Arc::new(Settings::new(
            self.mailbox_config,
            self.starvation_budget,
            dead_letters.clone(),
            cluster_node,
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
        #[cfg(feature = "nats")]
        let (routes, cluster) = match node {
            // A cluster node: its own table first, then the other nodes.
            Some((link, runtime)) => {
                let local =
                    std::sync::Arc::new(LocalRoutes::new(table.clone(), breaker, timers.clone()));
                let policy = RetryPolicy::from_config(&engine_config.delivery_config)
                    .expect("the retry policy was checked above");
                let node = std::sync::Arc::new(crate::cluster::Node::launch(
                    link,
                    runtime,
                    local.clone(),
                    dead_letters.clone(),
                    policy,
                    engine_config.delivery_config.guarantee,
                    engine_config.delivery_config.acknowledgment_timeout,
                ));
                let durable = node.is_durable();
                let remote: std::sync::Arc<dyn crate::router::Destination> = node.clone();
                let routes = crate::router::cluster::ClusterRoutes::new(local, remote, durable);
                (Routes::Cluster(routes), Some(node))
            }
            None => (
                routes_of(self.router, table.clone(), breaker, &timers),
                None,
            ),
        };
        #[cfg(not(feature = "nats"))]
        let routes = routes_of(self.router, table.clone(), breaker, &timers);
        let engine = Engine::new(
            engine_config,
            routes,
            table,
            timers.clone(),
            dead_letters.clone(),
        )
        .expect("the retry policy was checked above");
        let engine = std::sync::Arc::new(engine);
        #[cfg(feature = "nats")]
        if let Some(node) = &cluster {
            node.attach(&engine);
        }
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
                #[cfg(feature = "nats")]
                cluster,
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

/// The table, or a custom router.
fn routes_of(
    router: Option<std::sync::Arc<dyn MessageRouter>>,
    table: Arc<AgentTable>,
    breaker: Option<BreakerSettings>,
    timers: &std::sync::Arc<TimerService>,
) -> Routes {
    match router {
        Some(router) => Routes::Custom(CustomRoutes::new(router, breaker, timers.clone())),
        None => Routes::Local(LocalRoutes::new(table, breaker, timers.clone())),
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
