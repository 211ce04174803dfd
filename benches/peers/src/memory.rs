//! Memory per idle registered agent / idle actor / idle channel pair, and memory kept
//! per delivered message: RSS deltas (`/proc/self/statm`), each case in a fresh process
//! (this binary re-executed with `--mem <case> <n>`), so no case inherits another's heap.
//!
//! Everything a case needs beforehand (pids, a pre-sized `Vec` for the handles) is
//! allocated before the first RSS reading; the handles are kept alive until after the
//! second. Registered agents include their registry slot (ours: the slab table; 1.x:
//! its router and mailbox-manager `HashMap`s); channel pairs and actors are bare.

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use terraphim_agent_messaging::{AgentMessage, AgentPid, MessageSystem, RouterConfig};

use crate::harness::{fmt_value, rss_bytes, Better, Results, Sizes};

/// Runs case `case` with `n` in this process; prints `RESULT <bytes> <secs>`.
pub fn child(case: &str, n: usize) {
    let (bytes, secs) = match case {
        "ours" => ours_agents(n),
        "reference" => reference_agents(n),
        "actix" | "ractor" | "kameo" => crate::actors::idle(case, n),
        "crossbeam" => pairs(n, crossbeam_channel::unbounded::<AgentMessage>),
        "flume" => pairs(n, flume::unbounded::<AgentMessage>),
        "tokio" => pairs(n, tokio::sync::mpsc::unbounded_channel::<AgentMessage>),
        "retain-ours" => retain_ours(n),
        "retain-reference" => retain_reference(n),
        other => panic!("unknown memory case {other}"),
    };
    println!("RESULT {bytes} {secs}");
}

fn ours_agents(n: usize) -> (u64, f64) {
    let pids: Vec<AgentPid> = (0..n).map(|_| AgentPid::new()).collect();
    let system = MessageSystem::new(RouterConfig::default());
    let before = rss_bytes();
    let t = Instant::now();
    for pid in pids {
        system.register_agent(pid).expect("register");
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss_bytes();
    black_box(&system);
    (after.saturating_sub(before), secs)
}

fn reference_agents(n: usize) -> (u64, f64) {
    let pids: Vec<reference::AgentPid> = (0..n).map(|_| reference::AgentPid::new()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let system = reference::MessageSystem::new(reference::RouterConfig::default());
        let before = rss_bytes();
        let t = Instant::now();
        for pid in pids {
            system.register_agent(pid).await.expect("register");
        }
        let secs = t.elapsed().as_secs_f64();
        let after = rss_bytes();
        black_box(&system);
        (after.saturating_sub(before), secs)
    })
}

fn pairs<T>(n: usize, make: impl Fn() -> T) -> (u64, f64) {
    let mut v = Vec::with_capacity(n);
    let before = rss_bytes();
    let t = Instant::now();
    for _ in 0..n {
        v.push(make());
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss_bytes();
    black_box(&v);
    (after.saturating_sub(before), secs)
}

/// `n` envelopes routed and received one batch of 1,000 at a time after a warm-up of
/// 20,000: RSS growth across the `n`.
fn retain_ours(n: usize) -> (u64, f64) {
    let system = MessageSystem::new(RouterConfig::default());
    let (from, to) = (AgentPid::new(), AgentPid::new());
    system.register_agent(to.clone()).expect("register");
    let mailbox = system.get_mailbox(&to).expect("registered");
    let batch = |start: usize, len: usize| {
        for i in start..start + len {
            system
                .send_message(crate::contenders::envelope(&from, &to, i))
                .expect("registered");
        }
        for _ in 0..len {
            drop(black_box(mailbox.receive().expect("a message")));
        }
    };
    for b in 0..20 {
        batch(b * 1000, 1000);
    }
    let before = rss_bytes();
    let t = Instant::now();
    for b in 0..n / 1000 {
        batch(b * 1000, 1000);
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss_bytes();
    (after.saturating_sub(before), secs)
}

fn retain_reference(n: usize) -> (u64, f64) {
    use reference::MessageRouter as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let router = Arc::new(reference::DefaultMessageRouter::new(
            reference::RouterConfig::default(),
        ));
        let (from, to) = (reference::AgentPid::new(), reference::AgentPid::new());
        let mailbox = reference::AgentMailbox::new(to.clone(), reference::MailboxConfig::default());
        router
            .register_agent(to.clone(), mailbox.sender())
            .await
            .expect("register");
        let mut i = 0usize;
        let mut batches = |count: usize| {
            let (router, mailbox, from, to) = (&router, &mailbox, &from, &to);
            let start = i;
            i += count * 1000;
            async move {
                for b in 0..count {
                    for k in 0..1000 {
                        router
                            .route_message(crate::routed::ref_envelope(
                                from,
                                to,
                                start + b * 1000 + k,
                            ))
                            .await
                            .expect("routed");
                    }
                    for _ in 0..1000 {
                        drop(black_box(mailbox.receive().await.expect("a message")));
                    }
                }
            }
        };
        batches(20).await;
        let before = rss_bytes();
        let t = Instant::now();
        batches(n / 1000).await;
        let secs = t.elapsed().as_secs_f64();
        let after = rss_bytes();
        (after.saturating_sub(before), secs)
    })
}

/// Runs `case` with `n` in a fresh process of this binary.
fn spawn(case: &str, n: usize) -> Option<(u64, f64)> {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--mem", case, &n.to_string()])
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("RESULT "));
    match line {
        Some(line) => {
            let mut it = line.split_whitespace().skip(1);
            let bytes = it.next()?.parse().ok()?;
            let secs = it.next()?.parse().ok()?;
            Some((bytes, secs))
        }
        None => {
            eprintln!(
                "memory case {case} {n} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
    }
}

pub fn bench(sizes: &Sizes, results: &mut Results) {
    let s = "memory";
    println!(
        "\n== memory: RSS delta per idle agent / actor / channel pair (fresh process each) =="
    );
    let mut cases: Vec<(&str, &str, usize)> = vec![
        ("ours", "ours registered agent", 100_000),
        ("ours", "ours registered agent", 1_000_000),
        ("reference", "1.x reference registered agent", 100_000),
    ];
    if sizes.reference_agents_large > 100_000 {
        cases.push((
            "reference",
            "1.x reference registered agent",
            sizes.reference_agents_large,
        ));
    }
    for peer in ["actix", "ractor", "kameo"] {
        cases.push((peer, peer, 100_000));
        if sizes.idle_actors > 100_000 {
            cases.push((peer, peer, sizes.idle_actors));
        }
    }
    for peer in ["crossbeam", "flume", "tokio"] {
        cases.push((peer, peer, 100_000));
        cases.push((peer, peer, 1_000_000));
    }
    for (case, label, n) in cases {
        let what = match case {
            "ours" | "reference" => "",
            "actix" | "ractor" | "kameo" => " idle actor",
            _ => " idle unbounded channel pair (AgentMessage)",
        };
        if let Some((bytes, secs)) = spawn(case, n) {
            results.push_note(
                s,
                format!("memory: {label}{what} @ {}", fmt_value(n as f64)),
                bytes as f64 / n as f64,
                "B/each",
                Better::Lower,
                format!("{} s to create", fmt_value(secs)),
            );
            if case == "ours" || case == "reference" {
                results.push(
                    s,
                    format!("register: {label} @ {}", fmt_value(n as f64)),
                    secs,
                    "s",
                    Better::Lower,
                );
            }
        }
    }
    println!("\n== memory kept per routed + received message (100,000 after 20,000 warm-up) ==");
    for (case, label) in [
        ("retain-ours", "ours"),
        ("retain-reference", "1.x reference"),
    ] {
        if let Some((bytes, _)) = spawn(case, 100_000) {
            results.push(
                s,
                format!("retained per delivered message: {label}"),
                bytes as f64 / 100_000.0,
                "B/msg",
                Better::Lower,
            );
        }
    }
}
