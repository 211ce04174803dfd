//! The swarm demo: a coordinator hands tasks to a load-balanced group of worker agents
//! and to one flaky worker, so that retries, the circuit breaker and dead letters show.
//!
//! ```text
//! cargo run --release --example swarm
//! cargo run --release --example swarm -- --agents 8 --messages 1000000 --duration 20
//! cargo run --release --example swarm --features tracing,metrics -- --metrics-addr 127.0.0.1:9000
//! RUST_LOG=debug cargo run --release --example swarm --features tracing
//! ```
//!
//! - The coordinator casts envelopes (JSON payloads, mixed priorities, some asking for an
//!   ack); two caller threads make blocking calls with a timeout. Most tasks go to the
//!   group (one pid, least-loaded member), one in 64 to the flaky worker's own pid.
//! - Each worker is a thread looping on its mailbox. Mailboxes hold 64 messages.
//! - The flaky worker stalls for 150 ms out of every 500 ms, never answers some calls
//!   and forgets some acks. While it stalls its mailbox fills: deliveries are refused,
//!   retried with backoff, its breaker opens, and what runs out of retries is
//!   dead-lettered. Nothing is lost: the delivery ledger must balance at the end (the
//!   exit code is 1 if it does not).
//! - With the `metrics` feature and `--metrics-addr`, the system's metrics are served
//!   as Prometheus text at `http://ADDR/metrics` while it runs (and `--linger` seconds
//!   after the report); with `tracing`, `RUST_LOG` selects the events printed to
//!   stderr (e.g. `RUST_LOG=terraphim_agent_messaging=debug`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, CircuitBreakerConfig, DeliveryConfig, DeliveryGuarantee,
    DeliveryOptions, DeliveryStats, LoadBalance, MailboxConfig, MailboxSender, MailboxStats,
    MessageEnvelope, MessagePriority, MessageSystem, MessagingError, ReplySender, RouterConfig,
};

/// Bounded mailboxes, so that a stalled worker's mailbox fills.
const MAILBOX_CAPACITY: usize = 64;
/// Threads making blocking calls beside the coordinator's casts.
const CALLERS: usize = 2;
/// How long a caller waits for a reply.
const CALL_TIMEOUT: Duration = Duration::from_millis(25);
/// The flaky worker's cycle: it works for `FLAKY_PERIOD - FLAKY_STALL`, then stalls.
const FLAKY_PERIOD: Duration = Duration::from_millis(500);
const FLAKY_STALL: Duration = Duration::from_millis(150);
/// Backpressure: the coordinator waits while a healthy worker holds this many messages.
/// Below the mailbox capacity, so healthy workers never refuse a message: every retry
/// and trip in the report is the flaky worker's.
const HIGH_WATER: usize = 48;
/// One task in this many goes to the flaky worker; the rest to the group.
const FLAKY_EVERY: u64 = 64;
/// How often the main thread checks whether a phase is over.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait at the end for retries and acks to settle before shutting down.
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

const USAGE: &str = "\
swarm: a coordinator, a load-balanced group of workers, one of them flaky

usage: cargo run --release --example swarm -- [options]

  --agents N        workers: N-1 in a load-balanced group, 1 flaky (default 4, min 2)
  --messages N      tasks to hand out, calls and casts together (default 100000)
  --duration SECS   stop handing out tasks after this long (default 10)
  --work-us N       simulated work per task in microseconds (default 30)
  --metrics-addr A  serve Prometheus metrics at http://A/metrics (feature metrics)
  --linger SECS     with --metrics-addr: keep serving this long after the report
  -h, --help        this text

  RUST_LOG=debug    print the library's events to stderr (feature tracing)";

// ===== arguments =====

struct Args {
    agents: usize,
    messages: u64,
    duration: Duration,
    work: Duration,
    metrics_addr: Option<SocketAddr>,
    linger: Duration,
}

/// `Ok(None)` means `--help`.
fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        agents: 4,
        messages: 100_000,
        duration: Duration::from_secs(10),
        work: Duration::from_micros(30),
        metrics_addr: None,
        linger: Duration::ZERO,
    };
    while let Some(arg) = argv.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        // Both `--flag value` and `--flag=value`.
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), value.to_string()),
            None => {
                let value = argv.next().ok_or(format!("{arg} needs a value"))?;
                (arg, value)
            }
        };
        let number = || {
            value
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{flag}: `{value}` is not a whole number"))
        };
        let seconds = || match value.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                Ok(Duration::from_secs_f64(secs.min(86_400.0)))
            }
            _ => Err(format!("{flag}: `{value}` is not a number of seconds")),
        };
        match flag.as_str() {
            "--agents" => args.agents = number()?.clamp(2, 1024) as usize,
            "--messages" => args.messages = number()?.max(1),
            "--work-us" => args.work = Duration::from_micros(number()?),
            "--duration" => {
                args.duration = seconds()?;
                if args.duration.is_zero() {
                    return Err("--duration must be positive".into());
                }
            }
            "--linger" => args.linger = seconds()?,
            "--metrics-addr" => {
                let addr = value
                    .parse::<SocketAddr>()
                    .map_err(|_| format!("--metrics-addr: `{value}` is not an address"))?;
                if !cfg!(feature = "metrics") {
                    return Err(
                        "--metrics-addr needs the metrics feature: cargo run --release \
                        --example swarm --features tracing,metrics -- --metrics-addr ADDR"
                            .into(),
                    );
                }
                args.metrics_addr = Some(addr);
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Some(args))
}

// ===== observing =====

/// `RUST_LOG` picks the library's events to print on stderr (feature `tracing`).
fn init_logging() {
    #[cfg(feature = "tracing")]
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

/// Serves the metrics recorder's Prometheus text at `http://addr/metrics` (feature
/// `metrics`), on a thread of the exporter's own.
fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    #[cfg(feature = "metrics")]
    {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
    }
    #[cfg(not(feature = "metrics"))]
    Err(format!(
        "cannot serve metrics on {addr}: built without the metrics feature"
    ))
}

// ===== the swarm =====

/// Counters the demo keeps itself (the library keeps its own; the report shows both).
#[derive(Default)]
struct Counters {
    next_task: AtomicU64,
    casts_sent: AtomicU64,
    casts_handled: AtomicU64,
    send_errors: AtomicU64,
    calls_ok: AtomicU64,
    calls_timeout: AtomicU64,
    calls_failed: AtomicU64,
    acks: AtomicU64,
    /// Acks of a copy whose message was already acknowledged or given up on: a
    /// redelivery (at-least-once) that another worker had already handled.
    late_acks: AtomicU64,
}

impl Counters {
    /// The next task number, or `None` once the budget or the time is up.
    fn take_task(&self, limit: u64, deadline: Instant) -> Option<u64> {
        if Instant::now() >= deadline {
            return None;
        }
        let task = self.next_task.fetch_add(1, Relaxed);
        (task < limit).then_some(task)
    }

    fn sent(&self) -> u64 {
        let calls = self.calls_ok.load(Relaxed)
            + self.calls_timeout.load(Relaxed)
            + self.calls_failed.load(Relaxed);
        self.casts_sent.load(Relaxed) + calls
    }
}

/// What every thread shares.
struct Swarm {
    system: MessageSystem,
    coordinator: AgentPid,
    group: AgentPid,
    flaky: AgentPid,
    workers: Vec<AgentPid>,
    /// Pre-resolved senders of the healthy workers, for backpressure.
    healthy: Vec<MailboxSender>,
    counters: Counters,
    started: Instant,
    work: Duration,
}

fn build_system() -> Result<MessageSystem, MessagingError> {
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee: DeliveryGuarantee::AtLeastOnce,
            max_retries: 3,
            retry_delay: Duration::from_millis(50),
            retry_backoff_multiplier: 2.0,
            max_retry_delay: Duration::from_millis(500),
            acknowledgment_timeout: Duration::from_millis(100),
            ..DeliveryConfig::default()
        },
        retry_interval: Duration::from_millis(100),
        // Room for everything a stall puts in flight: past it, messages would be
        // dead-lettered as `Overloaded` instead of retried.
        max_concurrent_deliveries: 20_000,
        enable_metrics: true,
    };
    MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: MAILBOX_CAPACITY,
            ..MailboxConfig::default()
        })
        .circuit_breaker(CircuitBreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_millis(200),
        })
        .build()
}

impl Swarm {
    fn new(agents: usize, work: Duration) -> Result<Self, MessagingError> {
        let system = build_system()?;
        let coordinator = AgentPid::new();
        system.register_agent(coordinator.clone())?;
        // The healthy workers form a group: one pid, each message to the member with
        // the shortest queue. The flaky worker has only its own pid, so its breaker,
        // retries and dead letters show without holding up the group's traffic.
        let group = system.create_group(LoadBalance::LeastLoaded)?;
        let workers: Vec<AgentPid> = (0..agents).map(|_| AgentPid::new()).collect();
        let flaky = workers.last().expect("at least two workers").clone();
        for pid in &workers {
            system.register_agent(pid.clone())?;
            if *pid != flaky {
                system.join_group(&group, pid)?;
            }
        }
        let healthy = (workers.iter())
            .filter(|pid| **pid != flaky)
            .filter_map(|pid| system.sender(pid))
            .collect();
        Ok(Swarm {
            system,
            coordinator,
            group,
            flaky,
            workers,
            healthy,
            counters: Counters::default(),
            started: Instant::now(),
            work,
        })
    }

    /// Whether a healthy worker is near its capacity. The flaky worker is left out on
    /// purpose: its refusals are the library's to handle (retries, breaker, dead letters).
    fn backlogged(&self) -> bool {
        self.healthy.iter().any(|s| s.queue_size() >= HIGH_WATER)
    }
}

/// A fixed scramble of a task number: the answer to call `task` (so the caller can
/// check every reply), and the dice for its priority and ack, independent of where the
/// task goes.
fn mix(task: u64) -> u64 {
    let z = task.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Busy work standing in for what an agent does with a task.
fn simulate_work(work: Duration) {
    let start = Instant::now();
    while start.elapsed() < work {
        std::hint::spin_loop();
    }
}

// ===== workers =====

fn spawn_worker(swarm: Arc<Swarm>, pid: AgentPid) -> JoinHandle<()> {
    thread::spawn(move || {
        let mailbox = swarm.system.get_mailbox(&pid).expect("registered");
        let flaky = pid == swarm.flaky;
        // Calls the flaky worker never answers: held until its next stall, so their
        // callers time out instead of seeing the call dropped.
        let mut ignored: Vec<ReplySender> = Vec::new();
        loop {
            if flaky {
                if let Some(rest) = stall_left(swarm.started) {
                    ignored.clear();
                    thread::sleep(rest);
                }
            }
            // A timeout just means "nothing yet"; it lets the flaky worker go back to
            // its schedule even when idle.
            match mailbox.receive_timeout(Duration::from_millis(20)) {
                Ok(message) => handle(&swarm, flaky, message, &mut ignored),
                Err(MessagingError::MessageTimeout(_)) => continue,
                Err(MessagingError::ChannelClosed(_)) => break, // shut down, drained
                Err(e) => panic!("receive failed: {e}"),
            }
        }
    })
}

/// How much longer the flaky worker stalls, if it is in a stall now.
fn stall_left(started: Instant) -> Option<Duration> {
    let period = FLAKY_PERIOD.as_micros();
    let phase = started.elapsed().as_micros() % period;
    let stall_from = period - FLAKY_STALL.as_micros();
    (phase >= stall_from).then(|| Duration::from_micros((period - phase) as u64))
}

fn handle(swarm: &Swarm, flaky: bool, message: AgentMessage, ignored: &mut Vec<ReplySender>) {
    let c = &swarm.counters;
    match message {
        AgentMessage::Call {
            payload, reply_to, ..
        } => {
            let task = payload.downcast_ref::<u64>().copied().unwrap_or_default();
            if flaky && task % 5 == 0 {
                ignored.push(reply_to);
                return;
            }
            simulate_work(swarm.work);
            // Err: the caller gave up (timed out) before this retried call arrived.
            let _ = reply_to.send(Box::new(mix(task)));
        }
        AgentMessage::Cast {
            id,
            payload,
            message_type,
            ..
        } => {
            let task = payload
                .downcast_ref::<serde_json::Value>()
                .and_then(|v| v["task"].as_u64())
                .unwrap_or_default();
            simulate_work(swarm.work);
            c.casts_handled.fetch_add(1, Relaxed);
            // The flaky worker forgets every third ack: the message is redelivered and,
            // if it keeps landing there, dead-lettered as not acknowledged.
            if message_type.as_deref() == Some("task.ack") && !(flaky && task % 3 == 0) {
                match swarm.system.acknowledge(&id) {
                    Ok(()) => c.acks.fetch_add(1, Relaxed),
                    Err(_) => c.late_acks.fetch_add(1, Relaxed),
                };
            }
        }
        _ => {}
    }
}

// ===== coordinator and caller =====

/// Casts tasks as envelopes, pausing while the healthy workers are backlogged.
fn coordinate(swarm: &Swarm, limit: u64, deadline: Instant) {
    let c = &swarm.counters;
    while let Some(task) = c.take_task(limit, deadline) {
        while swarm.backlogged() && Instant::now() < deadline {
            thread::sleep(Duration::from_micros(50));
        }
        let to = destination(swarm, task);
        let dice = mix(task);
        let options = DeliveryOptions {
            priority: priority_of(dice % 16),
            require_ack: (dice >> 8) % 10 == 0,
            ..DeliveryOptions::default()
        };
        let kind = if options.require_ack {
            "task.ack"
        } else {
            "task"
        };
        let envelope =
            MessageEnvelope::new(to.clone(), kind.into(), json!({ "task": task }), options)
                .with_from(swarm.coordinator.clone());
        // At-least-once answers Ok for a refused push (it retries); an Err means the
        // message was given up on at once (it is in the dead letters all the same).
        c.casts_sent.fetch_add(1, Relaxed);
        if swarm.system.send_message(envelope).is_err() {
            c.send_errors.fetch_add(1, Relaxed);
        }
    }
}

/// Most tasks go to the group, a few to the flaky worker.
fn destination(swarm: &Swarm, task: u64) -> &AgentPid {
    if task % FLAKY_EVERY == 0 {
        &swarm.flaky
    } else {
        &swarm.group
    }
}

/// 1/16 Critical, 3/16 High, 8/16 Normal, 4/16 Low.
fn priority_of(sixteenth: u64) -> MessagePriority {
    match sixteenth {
        0 => MessagePriority::Critical,
        1..=3 => MessagePriority::High,
        4..=11 => MessagePriority::Normal,
        _ => MessagePriority::Low,
    }
}

/// Blocking calls with a timeout; returns the latency of each answered call.
fn call_loop(swarm: &Swarm, limit: u64, deadline: Instant) -> Vec<Duration> {
    let c = &swarm.counters;
    let mut latencies = Vec::new();
    while let Some(task) = c.take_task(limit, deadline) {
        let to = destination(swarm, task);
        let start = Instant::now();
        let from = swarm.coordinator.clone();
        match swarm
            .system
            .call_typed::<u64, _>(from, to, task, CALL_TIMEOUT)
        {
            Ok(reply) if reply == mix(task) => {
                latencies.push(start.elapsed());
                c.calls_ok.fetch_add(1, Relaxed);
            }
            Ok(reply) => panic!("task {task}: wrong answer {reply}"),
            Err(MessagingError::MessageTimeout(_)) => {
                c.calls_timeout.fetch_add(1, Relaxed);
            }
            Err(_) => {
                c.calls_failed.fetch_add(1, Relaxed);
            }
        }
    }
    latencies
}

// ===== progress =====

struct Progress {
    tty: bool,
    last: Instant,
    last_sent: u64,
}

impl Progress {
    fn new() -> Self {
        let tty = std::io::stdout().is_terminal();
        Progress {
            tty,
            last: Instant::now(),
            last_sent: 0,
        }
    }

    /// A refreshing line at ~10 Hz on a terminal, a plain line every 500 ms otherwise.
    fn maybe_tick(&mut self, swarm: &Swarm) {
        let interval = Duration::from_millis(if self.tty { 100 } else { 500 });
        if self.last.elapsed() >= interval {
            self.tick(swarm);
        }
    }

    fn tick(&mut self, swarm: &Swarm) {
        let c = &swarm.counters;
        let (router, _) = swarm.system.get_stats();
        let sent = c.sent();
        let rate = (sent - self.last_sent) as f64 / self.last.elapsed().as_secs_f64();
        (self.last, self.last_sent) = (Instant::now(), sent);
        // Short enough for an 80-column terminal: a wrapped line would not refresh.
        let line = format!(
            "{:.1}s  {} sent {}/s  calls {} ok {} t/o  {} retries  {} trips  {} dead",
            swarm.started.elapsed().as_secs_f64(),
            compact(sent),
            compact(rate as u64),
            compact(c.calls_ok.load(Relaxed)),
            compact(c.calls_timeout.load(Relaxed)),
            compact(router.retry_attempts),
            compact(router.circuit_trips),
            compact(swarm.system.dead_letter_count()),
        );
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r{line}\x1b[K");
            let _ = out.flush();
        } else {
            let _ = writeln!(out, "{line}");
        }
    }

    /// The last figures: on a terminal, refresh the line and end it; otherwise print
    /// them unless the last line is fresh.
    fn finish(&mut self, swarm: &Swarm) {
        if self.tty || self.last.elapsed() >= Duration::from_millis(100) {
            self.tick(swarm);
        }
        if self.tty {
            println!();
        }
    }
}

// ===== report =====

/// 999 → "999", 12345 → "12.3k", 123456 → "123k", 1234567 → "1.2M".
fn compact(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=99_949 => format!("{:.1}k", n as f64 / 1e3),
        99_950..=999_499 => format!("{:.0}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> String {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    match sorted.get(rank.clamp(1, sorted.len().max(1)) - 1) {
        Some(d) => format!("{d:.1?}"),
        None => "-".into(),
    }
}

/// `total = delivered + acknowledged + failed + expired + duplicates + pending +
/// in_transit`: every message the system accepted is accounted for exactly once.
fn balanced(l: &DeliveryStats) -> bool {
    let parts = [
        l.delivered,
        l.acknowledged,
        l.failed,
        l.expired,
        l.duplicates,
    ];
    parts.iter().sum::<u64>() + l.pending + l.in_transit == l.total_messages
}

fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<34} {value}");
}

/// Prints the table; returns whether the delivery ledger balances.
fn report(
    swarm: &Swarm,
    run: Duration,
    latencies: &mut [Duration],
    mailboxes: &[MailboxStats],
) -> bool {
    let c = &swarm.counters;
    let n = |counter: &AtomicU64| thousands(counter.load(Relaxed));
    let (router, _) = swarm.system.get_stats();
    // The store keeps the newest letters; the ones it dropped are counted by reason.
    let mut by_reason = swarm.system.dead_letter_stats().dropped_by_reason;
    for letter in swarm.system.dead_letters() {
        *by_reason.entry(letter.reason.kind()).or_default() += 1;
    }
    latencies.sort_unstable();
    let (sent, casts) = (c.sent(), c.casts_sent.load(Relaxed));
    println!();
    row("run time", format!("{:.2} s", run.as_secs_f64()));
    row(
        "tasks sent",
        format!(
            "{} (casts {}, calls {})",
            thousands(sent),
            thousands(casts),
            thousands(sent - casts)
        ),
    );
    row("  casts refused at once", n(&c.send_errors));
    row(
        "messages/s",
        thousands((sent as f64 / run.as_secs_f64()) as u64),
    );
    row(
        "call latency p50 / p99",
        format!(
            "{} / {}",
            percentile(latencies, 50.0),
            percentile(latencies, 99.0)
        ),
    );
    let calls = [&c.calls_ok, &c.calls_timeout, &c.calls_failed]
        .map(n)
        .join(" / ");
    row("calls ok / timeout / failed", calls);
    row(
        "acks / late acks",
        format!("{} / {}", n(&c.acks), n(&c.late_acks)),
    );
    row("retries", thousands(router.retry_attempts));
    row("breaker trips", thousands(router.circuit_trips));
    row("dead letters", thousands(by_reason.values().sum()));
    for (reason, count) in &by_reason {
        row(&format!("  {reason}"), thousands(*count));
    }
    let ledger = swarm.system.delivery_stats();
    println!("  delivery ledger");
    for (name, count) in [
        ("total_messages", ledger.total_messages),
        ("delivered", ledger.delivered),
        ("acknowledged", ledger.acknowledged),
        ("failed", ledger.failed),
        ("expired", ledger.expired),
        ("duplicates", ledger.duplicates),
        ("pending", ledger.pending),
        ("in_transit", ledger.in_transit),
    ] {
        row(&format!("  {name}"), thousands(count));
    }
    let ok = balanced(&ledger);
    row("  ledger balanced", if ok { "yes" } else { "NO" });
    println!(
        "  {:<34} {:>10} {:>10}",
        "per worker", "received", "processed"
    );
    for (i, pid) in swarm.workers.iter().enumerate() {
        let Some(stats) = mailboxes.iter().find(|s| s.agent_id == *pid) else {
            continue;
        };
        let name = if *pid == swarm.flaky {
            format!("worker-{i} (flaky)")
        } else {
            format!("worker-{i}")
        };
        let (received, processed) = (
            stats.total_messages_received,
            stats.total_messages_processed,
        );
        println!(
            "    {name:<32} {:>10} {:>10}",
            thousands(received),
            thousands(processed)
        );
    }
    ok
}

// ===== main =====

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            let (tracing, metrics) = (cfg!(feature = "tracing"), cfg!(feature = "metrics"));
            println!("\nbuilt with: tracing={tracing} metrics={metrics}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    if let Some(addr) = args.metrics_addr {
        if let Err(e) = serve_metrics(addr) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let swarm = match Swarm::new(args.agents, args.work) {
        Ok(swarm) => Arc::new(swarm),
        Err(e) => {
            eprintln!("error: cannot build the swarm: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The flaky worker's queue length, by name (a label per pid would make one series
    // per agent).
    #[cfg(feature = "metrics")]
    swarm.system.watch_depth(&swarm.flaky, "flaky");
    println!(
        "swarm: {} workers in a least-loaded group + 1 flaky, {} tasks, at most {:.0?}",
        args.agents - 1,
        thousands(args.messages),
        args.duration,
    );
    println!(
        "       mailboxes of {MAILBOX_CAPACITY}, at-least-once (3 retries), breaker at 3 refusals"
    );
    if let Some(addr) = args.metrics_addr {
        println!("       metrics at http://{addr}/metrics");
    }
    let workers: Vec<_> = (swarm.workers.iter().cloned())
        .map(|pid| spawn_worker(swarm.clone(), pid))
        .collect();
    let deadline = swarm.started + args.duration;
    let limit = args.messages;
    let coordinator = {
        let swarm = swarm.clone();
        thread::spawn(move || coordinate(&swarm, limit, deadline))
    };
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let swarm = swarm.clone();
            thread::spawn(move || call_loop(&swarm, limit, deadline))
        })
        .collect();

    let mut progress = Progress::new();
    while !(coordinator.is_finished() && callers.iter().all(|c| c.is_finished())) {
        thread::sleep(POLL);
        progress.maybe_tick(&swarm);
    }
    coordinator.join().expect("coordinator panicked");
    let mut latencies: Vec<Duration> = (callers.into_iter())
        .flat_map(|c| c.join().expect("caller panicked"))
        .collect();
    let run = swarm.started.elapsed();

    // Let retries and ack redeliveries run their course (bounded), so the ledger shows
    // them settled rather than cut short by the shutdown.
    let drain_until = Instant::now() + DRAIN_DEADLINE;
    while !settled(&swarm) && Instant::now() < drain_until {
        thread::sleep(POLL);
        progress.maybe_tick(&swarm);
    }
    progress.finish(&swarm);

    // Shutdown closes every mailbox; each worker drains what is queued, then its
    // receive returns ChannelClosed and the thread ends.
    // (Mailbox statistics are read first: shutdown unregisters every agent.)
    let (_, mailboxes) = swarm.system.get_stats();
    swarm.system.shutdown().expect("shutdown");
    for worker in workers {
        worker.join().expect("worker panicked");
    }
    let balanced = report(&swarm, run, &mut latencies, &mailboxes);
    if let (Some(addr), false) = (args.metrics_addr, args.linger.is_zero()) {
        // The final numbers stay up for a scrape (the library published them at
        // shutdown).
        println!("serving http://{addr}/metrics for {:.0?} more", args.linger);
        let _ = std::io::stdout().flush();
        thread::sleep(args.linger);
    }
    if balanced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Nothing waits for a retry or an ack, and every mailbox is empty.
fn settled(swarm: &Swarm) -> bool {
    let ledger = swarm.system.delivery_stats();
    let queued = swarm
        .workers
        .iter()
        .any(|pid| (swarm.system.sender(pid)).is_some_and(|s| s.queue_size() > 0));
    ledger.pending + ledger.in_transit == 0 && !queued
}
