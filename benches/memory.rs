//! Memory per idle agent and per delivered message, beside crossbeam-channel and flume.
//!
//! # Method
//!
//! A counting global allocator wraps `System` and tracks live bytes (requested sizes,
//! so malloc's own per-chunk overhead is not in them) and the number of allocations.
//! Each case runs in a fresh child process (this binary re-executed with `--case`), so
//! its RSS delta (from `/proc/self/statm`) is not blurred by memory an earlier case
//! freed. A case snapshots the counters, does its work, snapshots again:
//!
//! - `agents N`: register `N` agents in a `MessageSystem` (pids made beforehand): bytes
//!   per idle registered agent, table slot included; also the time it took, and the
//!   live bytes left after the system is dropped (should be 0).
//! - `agents_burst N`: the same `N` agents, then each is sent a burst of [`BURST`]
//!   casts on each of the four priorities, drains it and waits for its next message
//!   (a `poll_receive` that returns `Pending`, as a receiver about to sleep): live bytes
//!   per agent, registration included. A waiting receiver gives its lane blocks back
//!   (issue 12, item 6), so this stays near the idle figure; before, ~25 KiB.
//! - `crossbeam N`, `flume N`: `N` idle unbounded `AgentMessage` channel pairs kept in a
//!   pre-sized `Vec` (the bare channel), and `*_map N`: the same pairs in a
//!   `HashMap<AgentPid, (Sender, Receiver)>`, i.e. with a registry slot like ours.
//! - `retain_*`: 1,000,000 messages sent and received through one mailbox (or channel),
//!   one at a time and in batches of 1,000: live bytes after vs before should be about
//!   one block, not anything per message.
//!
//! Target (issue): ≤ 256 bytes per idle registered agent, table slot included, and
//! 1,000,000 agents registered in under a second. `cargo bench --bench memory` prints a
//! markdown table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, MailboxConfig, MailboxSender, MessageEnvelope,
    MessagePriority, MessageSystem, RouterConfig,
};

// ===== counting allocator =====

/// Live bytes (requested sizes).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Allocations ever made (`realloc` counts as one more).
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// returns its result; the counters are bookkeeping only and never affect the pointers.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we forward.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc` (`ptr` came from us, and
        // so from `System`, with this layout).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ===== snapshots =====

/// Counters and RSS at one moment.
#[derive(Clone, Copy)]
struct Snap {
    live: usize,
    allocs: usize,
    rss: usize,
    at: Instant,
}

fn snap() -> Snap {
    Snap {
        live: LIVE.load(Relaxed),
        allocs: ALLOCS.load(Relaxed),
        rss: rss_bytes(),
        at: Instant::now(),
    }
}

/// Resident set size: the second field of `/proc/self/statm`, in pages.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Relaxed);
    if cached != 0 {
        return cached;
    }
    let size = Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    PAGE.store(size, Relaxed);
    size
}

/// What one case reports (one line on the child's stdout).
#[derive(Clone, Copy)]
struct Outcome {
    live: i64,
    allocs: usize,
    rss: i64,
    took: Duration,
    /// Live bytes left after tearing down (agents) or a second measurement (retain).
    extra: i64,
}

impl Outcome {
    fn between(a: Snap, b: Snap, extra: i64) -> Self {
        Outcome {
            live: b.live as i64 - a.live as i64,
            allocs: b.allocs - a.allocs,
            rss: b.rss as i64 - a.rss as i64,
            took: b.at - a.at,
            extra,
        }
    }

    fn print(&self) {
        println!(
            "RESULT {} {} {} {} {}",
            self.live,
            self.allocs,
            self.rss,
            self.took.as_nanos(),
            self.extra
        );
    }

    fn parse(line: &str) -> Option<Self> {
        let mut f = line.strip_prefix("RESULT ")?.split_whitespace();
        Some(Outcome {
            live: f.next()?.parse().ok()?,
            allocs: f.next()?.parse().ok()?,
            rss: f.next()?.parse().ok()?,
            took: Duration::from_nanos(f.next()?.parse().ok()?),
            extra: f.next()?.parse().ok()?,
        })
    }
}

// ===== cases (run in the child) =====

fn pids(n: usize) -> Vec<AgentPid> {
    (0..n).map(|_| AgentPid::new()).collect()
}

fn case_agents(n: usize) -> Outcome {
    let pids = pids(n);
    let base = LIVE.load(Relaxed);
    let system = MessageSystem::new(RouterConfig::default());
    let before = snap();
    for pid in &pids {
        system.register_agent(pid.clone()).expect("register");
    }
    let after = snap();
    assert_eq!(system.mailboxes().len(), n);
    drop(system);
    // Everything the system allocated, itself included, must be freed.
    let left = LIVE.load(Relaxed) as i64 - base as i64;
    Outcome::between(before, after, left)
}

/// Casts per priority in the `agents_burst` case: more than three blocks' worth.
const BURST: u64 = 100;

fn case_agents_burst(n: usize) -> Outcome {
    let pids = pids(n);
    let from = AgentPid::new();
    let system = MessageSystem::new(RouterConfig::default());
    let mut handles = Vec::with_capacity(n);
    let before = snap();
    for pid in &pids {
        system.register_agent(pid.clone()).expect("register");
    }
    // Handles are `Arc` clones in a vector sized beforehand: no allocation.
    for pid in &pids {
        handles.push((
            system.get_mailbox(pid).expect("registered"),
            system.sender(pid).expect("registered"),
        ));
    }
    let mut cx = Context::from_waker(Waker::noop());
    for (mailbox, sender) in &handles {
        for priority in [
            MessagePriority::Low,
            MessagePriority::Normal,
            MessagePriority::High,
            MessagePriority::Critical,
        ] {
            for i in 0..BURST {
                sender
                    .try_send(AgentMessage::cast(from.clone(), i), priority)
                    .expect("open");
            }
        }
        while let Some(message) = mailbox.try_receive().expect("open") {
            drop(black_box(message));
        }
        assert!(mailbox.poll_receive(&mut cx).is_pending());
    }
    let after = snap();
    drop(handles);
    drop(system);
    Outcome::between(before, after, 0)
}

fn case_pairs<P>(n: usize, make: impl Fn() -> P) -> Outcome {
    let mut pairs = Vec::with_capacity(n);
    let before = snap();
    for _ in 0..n {
        pairs.push(make());
    }
    let after = snap();
    drop(black_box(pairs));
    Outcome::between(before, after, 0)
}

fn case_pairs_map<P>(n: usize, make: impl Fn() -> P) -> Outcome {
    let pids = pids(n);
    let mut map = HashMap::new();
    let before = snap();
    for pid in &pids {
        map.insert(pid.clone(), make());
    }
    let after = snap();
    drop(black_box(map));
    Outcome::between(before, after, 0)
}

/// Messages for the retention cases.
const RETAIN_N: usize = 1_000_000;
const BATCH: usize = 1_000;

/// Sends and receives `RETAIN_N` messages one at a time, then in batches of `BATCH`;
/// `live` is the first delta, `extra` the second.
fn case_retain(send: impl Fn(AgentMessage), recv: impl Fn() -> AgentMessage) -> Outcome {
    let from = AgentPid::new();
    // Warm up: the first block, thread-locals.
    send(AgentMessage::cast(from.clone(), 0u64));
    drop(recv());
    let before = snap();
    for i in 0..RETAIN_N {
        send(AgentMessage::cast(from.clone(), i as u64));
        drop(black_box(recv()));
    }
    let after = snap();
    for _ in 0..RETAIN_N / BATCH {
        for i in 0..BATCH {
            send(AgentMessage::cast(from.clone(), i as u64));
        }
        for _ in 0..BATCH {
            drop(black_box(recv()));
        }
    }
    let batched = LIVE.load(Relaxed) as i64 - after.live as i64;
    Outcome::between(before, after, batched)
}

fn run_case(name: &str, n: usize) -> Outcome {
    match name {
        "agents" => case_agents(n),
        "agents_burst" => case_agents_burst(n),
        "crossbeam" => case_pairs(n, crossbeam_channel::unbounded::<AgentMessage>),
        "flume" => case_pairs(n, flume::unbounded::<AgentMessage>),
        "crossbeam_map" => case_pairs_map(n, crossbeam_channel::unbounded::<AgentMessage>),
        "flume_map" => case_pairs_map(n, flume::unbounded::<AgentMessage>),
        "retain_ours" => {
            let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
            let tx: MailboxSender = mailbox.sender();
            case_retain(
                |m| tx.try_send(m, MessagePriority::Normal).expect("open"),
                || mailbox.receive().expect("a message"),
            )
        }
        "retain_crossbeam" => {
            let (tx, rx) = crossbeam_channel::unbounded();
            case_retain(
                |m| tx.send(m).expect("open"),
                || rx.recv().expect("a message"),
            )
        }
        other => panic!("unknown case {other}"),
    }
}

// ===== orchestration (the parent) =====

fn spawn_case(name: &str, n: usize) -> Outcome {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--case", name, &n.to_string()])
        .output()
        .expect("spawn case");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "case {name} {n} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(Outcome::parse)
        .unwrap_or_else(|| panic!("case {name} printed no result: {stdout}"))
}

fn per(total: i64, n: usize) -> f64 {
    total as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let name = &args[i + 1];
        let n: usize = args[i + 2].parse().expect("count");
        run_case(name, n).print();
        return;
    }

    println!("## Sizes\n");
    println!("| type | size_of (bytes) |\n|---|---:|");
    println!(
        "| `AgentMessage` | {} |",
        std::mem::size_of::<AgentMessage>()
    );
    println!(
        "| `MessageEnvelope` | {} |",
        std::mem::size_of::<MessageEnvelope>()
    );
    println!("| `AgentPid` | {} |", std::mem::size_of::<AgentPid>());
    println!(
        "| `MailboxSender` | {} |",
        std::mem::size_of::<MailboxSender>()
    );
    println!(
        "| `crossbeam_channel::Sender<AgentMessage>` | {} |",
        std::mem::size_of::<crossbeam_channel::Sender<AgentMessage>>()
    );
    println!(
        "| `flume::Sender<AgentMessage>` | {} |",
        std::mem::size_of::<flume::Sender<AgentMessage>>()
    );

    println!("\n## Idle agents / channels\n");
    println!("Live bytes are requested sizes (malloc's chunk overhead is only in RSS).\n");
    println!("| what | n | live B/each | allocs/each | RSS B/each | time | left after drop |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut sizes = vec![100_000];
    let mut million = None;
    let first = spawn_case("agents", 100_000);
    if first.took * 10 < Duration::from_secs(10) {
        sizes.push(1_000_000);
    }
    let row = |what: &str, n: usize, o: &Outcome, left: &str| {
        println!(
            "| {what} | {n} | {:.1} | {:.2} | {:.1} | {:.1?} | {left} |",
            per(o.live, n),
            o.allocs as f64 / n as f64,
            per(o.rss, n),
            o.took,
        );
    };
    for &n in &sizes {
        let o = if n == 100_000 {
            first
        } else {
            let o = spawn_case("agents", n);
            million = Some(o.took);
            o
        };
        row("MessageSystem agent", n, &o, &format!("{} B", o.extra));
        if n == 100_000 {
            // A tenth as many: before blocks were given back, 25 KiB each.
            let m = n / 10;
            let burst = spawn_case("agents_burst", m);
            row(
                &format!(
                    "MessageSystem agent after {BURST} casts on each priority, drained, waiting"
                ),
                m,
                &burst,
                "-",
            );
        }
        for (name, what) in [
            ("crossbeam", "crossbeam unbounded pair"),
            ("crossbeam_map", "crossbeam pair in HashMap<AgentPid, _>"),
            ("flume", "flume unbounded pair"),
            ("flume_map", "flume pair in HashMap<AgentPid, _>"),
        ] {
            row(what, n, &spawn_case(name, n), "-");
        }
    }

    println!("\n## Retention per delivered message ({RETAIN_N} messages through one queue)\n");
    println!("| queue | live Δ, one at a time | live Δ, batches of {BATCH} | allocs/msg | time |");
    println!("|---|---:|---:|---:|---:|");
    for (name, what) in [
        ("retain_ours", "AgentMailbox"),
        ("retain_crossbeam", "crossbeam unbounded"),
    ] {
        let o = spawn_case(name, RETAIN_N);
        println!(
            "| {what} | {} B | {} B | {:.3} | {:.1?} |",
            o.live,
            o.extra,
            o.allocs as f64 / RETAIN_N as f64,
            o.took
        );
    }

    let ok_bytes = per(first.live, 100_000) <= 256.0;
    println!(
        "\nTarget ≤ 256 B per idle registered agent (live, n = 100000): {}",
        if ok_bytes { "met" } else { "NOT met" }
    );
    match million {
        Some(t) => println!(
            "Target 1,000,000 agents registered in < 1 s: {} ({t:.2?})",
            if t < Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
        ),
        None => println!("1,000,000 agents not run: 100,000 took {:.2?}", first.took),
    }
}
