//! A one-for-one supervisor, OTP style, on monitors, names and crash detection.
//!
//! A supervisor agent starts a pool of named workers (`worker-0` … `worker-3`), each
//! on its own thread (or, in the second half, its own tokio task), and monitors them.
//! `worker-0` panics every `crash_every` messages. A crash stops its agent with reason
//! `panicked: …`; the supervisor's monitor tells it, and it starts a successor under
//! the same name. The messages the crashed worker left queued are at-least-once:
//! the engine hands them to whoever holds the name next, so none is lost. Like OTP's
//! `max_restarts` in `max_seconds`, a supervisor that has to restart more often than
//! that gives up: it stops its workers and then itself, with a reason its own monitor
//! (here, the main thread's observer) sees.
//!
//! `cargo run --example supervision` runs four bounded scenes (threads and tasks,
//! each steady and then a crash storm) and prints restarts, messages processed and
//! the delivery ledger. `tests/seed_readme.rs` runs the same scenes and checks them.
#![allow(dead_code)] // `tests/seed_readme.rs` includes this file and uses part of it

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeliveryConfig, DeliveryStats, MessageSystem,
    MessagingError, RouterConfig, SystemInfo,
};

/// One scene.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Workers in the pool.
    pub workers: usize,
    /// `worker-0` panics after every this many messages.
    pub crash_every: u64,
    /// Messages the producer sends (round robin over the names).
    pub messages: u64,
    /// Restart intensity: more than `max_restarts` within `max_seconds` and the
    /// supervisor gives up.
    pub max_restarts: usize,
    /// See `max_restarts`.
    pub max_seconds: Duration,
    /// How long the scene may take at most.
    pub deadline: Duration,
}

impl Scene {
    /// Crashes now and then, well within the restart intensity.
    pub fn steady() -> Self {
        Scene {
            workers: 4,
            crash_every: 25,
            messages: 1_000,
            max_restarts: 1_000,
            max_seconds: Duration::from_secs(5),
            deadline: Duration::from_secs(20),
        }
    }

    /// Crashes on every other message: the restart intensity is reached at once.
    pub fn storm() -> Self {
        Scene {
            workers: 4,
            crash_every: 2,
            messages: 1_000,
            max_restarts: 3,
            max_seconds: Duration::from_secs(5),
            deadline: Duration::from_secs(20),
        }
    }
}

/// What a scene did.
#[derive(Debug)]
pub struct Report {
    /// Workers restarted by the supervisor.
    pub restarts: usize,
    /// Messages the producer got accepted (a send refused while a worker restarts is
    /// sent again; one never accepted is not counted).
    pub sent: u64,
    /// Distinct messages the workers processed.
    pub processed: u64,
    /// Messages processed more than once (at-least-once allows it).
    pub duplicates: u64,
    /// Accepted messages no worker processed (after a supervisor gave up: those its
    /// stopped workers left queued, in the dead letters).
    pub lost: u64,
    /// Dead letters (sends refused by a mailbox that closed under them).
    pub dead_letters: usize,
    /// Why the supervisor stopped, as its monitor saw it (`None`: it ran to the end).
    pub supervisor_stopped: Option<String>,
    /// The delivery ledger at the end.
    pub ledger: DeliveryStats,
}

/// What the workers processed: how often each message id, and how many crashes.
#[derive(Default)]
struct Processed(Mutex<HashMap<u64, u32>>, AtomicUsize);

impl Processed {
    fn record(&self, k: u64) {
        *self.0.lock().unwrap().entry(k).or_default() += 1;
    }

    fn distinct(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }

    fn crashed(&self) {
        self.1.fetch_add(1, SeqCst);
    }

    fn crashes(&self) -> usize {
        self.1.load(SeqCst)
    }
}

/// Whether the scene is over: every message processed and every crash restarted (the
/// last message of `worker-0` may be the one it crashes on; shutting down before that
/// crash is restarted would race the restart), or the supervisor gave up, or time is up.
fn settled(
    processed: &Processed,
    sent: u64,
    restarts: &Mutex<usize>,
    gave_up: bool,
    elapsed: Duration,
    scene: &Scene,
) -> bool {
    let all_restarted = *restarts.lock().unwrap() >= processed.crashes();
    (processed.distinct() >= sent && all_restarted) || gave_up || elapsed >= scene.deadline
}

fn worker_name(i: usize) -> String {
    format!("worker-{i}")
}

/// The config of every scene: at-least-once (the default), retries quick enough for
/// a successor that starts within milliseconds, and room to track every message a
/// crashed worker left queued (they wait on the wheel for its successor; past
/// `max_concurrent_deliveries` they would be dead-lettered as `Overloaded`).
fn system_config() -> RouterConfig {
    RouterConfig {
        max_concurrent_deliveries: 10_000,
        delivery_config: DeliveryConfig {
            retry_delay: Duration::from_millis(5),
            retry_backoff_multiplier: 1.5,
            max_retry_delay: Duration::from_millis(50),
            max_retries: 20,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    }
}

/// The body every worker runs on one message: record it, and `worker-0` crashes
/// after every `crash_every`.
fn handle(
    i: usize,
    message: &AgentMessage,
    handled: &mut u64,
    processed: &Processed,
    scene: &Scene,
) {
    if let Some(&k) = message.payload::<u64>() {
        processed.record(k);
        *handled += 1;
        if i == 0 && *handled % scene.crash_every == 0 {
            processed.crashed();
            panic!("worker-0 fails every {} messages", scene.crash_every);
        }
    }
}

/// Restart intensity: `true` once more than `max_restarts` fall within `max_seconds`.
struct Intensity {
    recent: VecDeque<Instant>,
    max_restarts: usize,
    max_seconds: Duration,
}

impl Intensity {
    fn exceeded_after_one_more(&mut self) -> bool {
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.max_seconds)
        {
            self.recent.pop_front();
        }
        self.recent.len() > self.max_restarts
    }
}

/// A crash to restart after: the worker's index, if `stopped` is one of ours and it
/// did not stop normally.
fn crashed(workers: &[AgentPid], message: &AgentMessage) -> Option<usize> {
    let AgentMessage::Info {
        info: SystemInfo::AgentStopped {
            agent_id, reason, ..
        },
        ..
    } = message
    else {
        return None;
    };
    let i = workers.iter().position(|w| w == agent_id)?;
    (reason != "normal" && reason != "shutdown").then_some(i)
}

/// The producer: sends `scene.messages` casts round robin by name, sending again a
/// message refused while its worker restarts. Stops early once `gave_up` says so.
fn produce(
    system: &MessageSystem,
    scene: &Scene,
    gave_up: impl Fn() -> bool,
    mut pause: impl FnMut(),
) -> u64 {
    let mut sent = 0;
    'messages: for k in 0..scene.messages {
        let name = worker_name(k as usize % scene.workers);
        loop {
            match system.send_named(&name, AgentMessage::cast(AgentPid::nil(), k)) {
                Ok(()) => {
                    sent += 1;
                    break;
                }
                Err(
                    MessagingError::UnknownName(_)
                    | MessagingError::ChannelClosed(_)
                    | MessagingError::AgentNotFound(_),
                ) => {
                    if gave_up() {
                        break 'messages;
                    }
                    pause();
                }
                Err(e) => panic!("send {k}: {e}"),
            }
        }
    }
    sent
}

/// The reason the observer's monitor of the supervisor reported, if any.
fn supervisor_exit(observer: &AgentMailbox) -> Option<String> {
    match observer.try_receive() {
        Ok(Some(AgentMessage::Info {
            info: SystemInfo::AgentStopped { reason, .. },
            ..
        })) => Some(reason),
        _ => None,
    }
}

// ===== threads =====

/// Starts worker `i` on a thread: registered, monitored by `supervisor`, then named.
fn start_thread_worker(
    system: &MessageSystem,
    supervisor: &AgentPid,
    i: usize,
    processed: &Arc<Processed>,
    scene: &Scene,
) -> Result<(AgentPid, thread::JoinHandle<()>), MessagingError> {
    let pid = AgentPid::new();
    system.register_agent(pid.clone())?;
    system.monitor(supervisor, &pid)?;
    system.register_name(&worker_name(i), &pid)?;
    let mailbox = system.get_mailbox(&pid).expect("just registered");
    let (processed, scene) = (processed.clone(), scene.clone());
    let thread = thread::Builder::new()
        .name(worker_name(i))
        .spawn(move || {
            let mut handled = 0;
            while let Ok(message) = mailbox.receive() {
                handle(i, &message, &mut handled, &processed, &scene);
            }
        })
        .expect("spawn a worker");
    Ok((pid, thread))
}

/// Runs `scene` with a supervisor and workers on threads.
pub fn run_threads(scene: &Scene) -> Report {
    let system = MessageSystem::new(system_config());
    let processed = Arc::new(Processed::default());
    let (supervisor, observer) = (AgentPid::new(), AgentPid::new());
    system.register_agent(supervisor.clone()).unwrap();
    system.register_agent(observer.clone()).unwrap();
    system.monitor(&observer, &supervisor).unwrap();
    let observer_box = system.get_mailbox(&observer).unwrap();
    let restarts = Arc::new(Mutex::new(0usize));

    let sup = {
        let (system, processed, scene, restarts) = (
            system.clone(),
            processed.clone(),
            scene.clone(),
            restarts.clone(),
        );
        let inbox = system.get_mailbox(&supervisor).unwrap();
        let me = supervisor.clone();
        thread::spawn(move || {
            let mut threads = Vec::new();
            let mut workers = Vec::new();
            for i in 0..scene.workers {
                let (pid, t) = start_thread_worker(&system, &me, i, &processed, &scene).unwrap();
                workers.push(pid);
                threads.push(t);
            }
            let mut intensity = Intensity {
                recent: VecDeque::new(),
                max_restarts: scene.max_restarts,
                max_seconds: scene.max_seconds,
            };
            while let Ok(message) = inbox.receive() {
                let Some(i) = crashed(&workers, &message) else {
                    continue;
                };
                if intensity.exceeded_after_one_more() {
                    for worker in &workers {
                        let _ = system.exit(worker, "shutdown");
                    }
                    let why = format!(
                        "reached max_restarts ({} in {:?})",
                        scene.max_restarts, scene.max_seconds
                    );
                    let _ = system.exit(&me, &why);
                    break;
                }
                match start_thread_worker(&system, &me, i, &processed, &scene) {
                    Ok((pid, t)) => {
                        workers[i] = pid;
                        threads.push(t);
                        *restarts.lock().unwrap() += 1;
                    }
                    // The system went down while a crash was being restarted.
                    Err(_) if system.is_shut_down() => break,
                    Err(e) => panic!("restarting worker-{i}: {e}"),
                }
            }
            threads
        })
    };

    let start = Instant::now();
    let gave_up = || system.get_mailbox(&supervisor).is_none();
    let sent = produce(&system, scene, gave_up, || {
        thread::sleep(Duration::from_millis(1))
    });
    while !settled(
        &processed,
        sent,
        &restarts,
        gave_up(),
        start.elapsed(),
        scene,
    ) {
        thread::sleep(Duration::from_millis(2));
    }
    system.shutdown().unwrap();
    for t in sup.join().unwrap() {
        let _ = t.join(); // the crashed ones panicked
    }
    report(&system, scene, &processed, sent, &observer_box, restarts)
}

fn report(
    system: &MessageSystem,
    _scene: &Scene,
    processed: &Processed,
    sent: u64,
    observer: &AgentMailbox,
    restarts: Arc<Mutex<usize>>,
) -> Report {
    let counts = processed.0.lock().unwrap();
    let distinct = counts.len() as u64;
    let duplicates = counts.values().map(|&n| u64::from(n - 1)).sum();
    let lost = (0..sent).filter(|k| !counts.contains_key(k)).count() as u64;
    let restarts = *restarts.lock().unwrap();
    Report {
        restarts,
        sent,
        processed: distinct,
        duplicates,
        lost,
        dead_letters: system.dead_letters().len(),
        supervisor_stopped: supervisor_exit(observer),
        ledger: system.delivery_stats(),
    }
}

// ===== tokio tasks =====

/// The same supervision with the supervisor and the workers on tokio tasks.
pub mod tasks {
    use super::*;
    use terraphim_agent_messaging::tokio as tk;

    async fn start_task_worker(
        system: &tk::MessageSystem,
        supervisor: &AgentPid,
        i: usize,
        processed: &Arc<Processed>,
        scene: &Scene,
    ) -> Result<AgentPid, MessagingError> {
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).await?;
        system.monitor(supervisor, &pid).await?;
        system.register_name(&worker_name(i), &pid).await?;
        let mailbox = system.get_mailbox(&pid).await.expect("just registered");
        let (processed, scene) = (processed.clone(), scene.clone());
        tokio::spawn(async move {
            let mut handled = 0;
            while let Ok(message) = mailbox.receive().await {
                handle(i, &message, &mut handled, &processed, &scene);
            }
        });
        Ok(pid)
    }

    /// Runs `scene` with a supervisor and workers on tasks of the current runtime
    /// (which needs worker threads: a panicking task unwinds on one).
    pub async fn run(scene: &Scene) -> Report {
        let system = tk::MessageSystem::new(system_config());
        let processed = Arc::new(Processed::default());
        let (supervisor, observer) = (AgentPid::new(), AgentPid::new());
        system.register_agent(supervisor.clone()).await.unwrap();
        system.register_agent(observer.clone()).await.unwrap();
        system.monitor(&observer, &supervisor).await.unwrap();
        let observer_box = system.as_sync().get_mailbox(&observer).unwrap();
        let restarts = Arc::new(Mutex::new(0usize));

        let sup = {
            let (system, processed, scene, restarts) = (
                system.clone(),
                processed.clone(),
                scene.clone(),
                restarts.clone(),
            );
            let inbox = system.get_mailbox(&supervisor).await.unwrap();
            let me = supervisor.clone();
            tokio::spawn(async move {
                let mut workers = Vec::new();
                for i in 0..scene.workers {
                    let pid = start_task_worker(&system, &me, i, &processed, &scene)
                        .await
                        .unwrap();
                    workers.push(pid);
                }
                let mut intensity = Intensity {
                    recent: VecDeque::new(),
                    max_restarts: scene.max_restarts,
                    max_seconds: scene.max_seconds,
                };
                while let Ok(message) = inbox.receive().await {
                    let Some(i) = crashed(&workers, &message) else {
                        continue;
                    };
                    if intensity.exceeded_after_one_more() {
                        for worker in &workers {
                            let _ = system.exit(worker, "shutdown").await;
                        }
                        let why = format!(
                            "reached max_restarts ({} in {:?})",
                            scene.max_restarts, scene.max_seconds
                        );
                        let _ = system.exit(&me, &why).await;
                        break;
                    }
                    match start_task_worker(&system, &me, i, &processed, &scene).await {
                        Ok(pid) => {
                            workers[i] = pid;
                            *restarts.lock().unwrap() += 1;
                        }
                        // The system went down while a crash was being restarted.
                        Err(_) if system.is_shut_down() => break,
                        Err(e) => panic!("restarting worker-{i}: {e}"),
                    }
                }
            })
        };

        let start = Instant::now();
        let core = system.as_sync().clone();
        let gave_up = {
            let core = core.clone();
            let supervisor = supervisor.clone();
            move || core.get_mailbox(&supervisor).is_none()
        };
        // The producer blocks between retries: it runs on a blocking thread.
        let producer = {
            let (core, scene, gave_up) = (core.clone(), scene.clone(), gave_up.clone());
            tokio::task::spawn_blocking(move || {
                produce(&core, &scene, gave_up, || {
                    thread::sleep(Duration::from_millis(1))
                })
            })
        };
        let sent = producer.await.unwrap();
        while !settled(
            &processed,
            sent,
            &restarts,
            gave_up(),
            start.elapsed(),
            scene,
        ) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        system.shutdown().await.unwrap();
        sup.await.unwrap();
        report(&core, scene, &processed, sent, &observer_box, restarts)
    }
}

fn print(title: &str, report: &Report) {
    println!("== {title}");
    println!(
        "   restarts {}, sent {}, processed {} (duplicates {}), lost {}, dead letters {}",
        report.restarts,
        report.sent,
        report.processed,
        report.duplicates,
        report.lost,
        report.dead_letters
    );
    match &report.supervisor_stopped {
        Some(reason) => println!("   the supervisor stopped: {reason}"),
        None => println!("   the supervisor ran to the end"),
    }
    let l = &report.ledger;
    println!(
        "   ledger: accepted {}, delivered {}, failed {}, expired {}, pending {}, retries {}",
        l.total_messages,
        l.delivered,
        l.failed,
        l.expired,
        l.pending + l.in_transit,
        l.total_attempts.saturating_sub(l.total_messages)
    );
}

fn main() {
    print("threads, steady", &run_threads(&Scene::steady()));
    print("threads, crash storm", &run_threads(&Scene::storm()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    print(
        "tasks, steady",
        &runtime.block_on(tasks::run(&Scene::steady())),
    );
    print(
        "tasks, crash storm",
        &runtime.block_on(tasks::run(&Scene::storm())),
    );
}
