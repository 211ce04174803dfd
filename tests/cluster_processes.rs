//! Cluster nodes in separate processes (cargo feature `nats`): the cluster demo
//! (`examples/cluster.rs`) run as a child process against a server this test starts
//! (`tests/cluster_support`). The demo starts three worker nodes as processes of
//! their own, SIGKILLs one mid-stream and restarts it; the test reads the `LEDGER`
//! line it prints per guarantee and checks it: every accepted job delivered, none
//! lost, no exactly-once job reported twice.
//!
//! The demo's binary is built by `cargo test` with the other examples, next to this
//! test's executable (`target/<profile>/examples/cluster`). Missing or older than the
//! sources, the test fails and says how to build it; it never skips.
#![cfg(feature = "nats")]

mod cluster_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use cluster_support::NatsServer;
use serde_json::Value;

/// How long the demo may run (it takes about 20 s).
const BOUND: Duration = Duration::from_secs(90);
/// Jobs per guarantee.
const JOBS: u64 = 120;

#[test]
fn worker_processes_one_killed_and_restarted_lose_no_job() {
    let demo = demo_binary();
    let server = NatsServer::start();
    let started = Instant::now();
    let mut child = Command::new(&demo)
        .args([
            "--jobs",
            &JOBS.to_string(),
            "--rate",
            "60",
            "--workers",
            "3",
        ])
        .args(["--kill-at", "0.4", "--down-secs", "1", "--drain-secs", "40"])
        .env("NATS_URL", server.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", demo.display()));
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            lines.push(line);
        }
        lines
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND {
            // Its workers leave when their stdin (held by the demo) closes.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo ran for more than {BOUND:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let lines = reader.join().unwrap();
    assert!(status.success(), "the demo exited with {status}");

    let ledgers: Vec<Value> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("LEDGER "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    let guarantees: Vec<&str> = ledgers
        .iter()
        .map(|l| l["guarantee"].as_str().unwrap())
        .collect();
    assert_eq!(guarantees, ["at-least-once", "exactly-once"], "{lines:#?}");
    for ledger in &ledgers {
        let n = |field: &str| {
            ledger[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} in {ledger}"))
        };
        assert_eq!(
            ledger["killed"], true,
            "a worker process was killed: {ledger}"
        );
        assert_eq!(n("accepted") + n("refused"), JOBS, "{ledger}");
        assert_eq!(n("refused"), 0, "{ledger}");
        assert_eq!(n("lost"), 0, "{ledger}");
        assert_eq!(
            n("delivered") + n("dead_lettered") + n("pending") + n("lost"),
            n("accepted"),
            "{ledger}"
        );
        assert_eq!(n("delivered"), n("accepted"), "all done in time: {ledger}");
        if ledger["guarantee"] == "exactly-once" {
            assert_eq!(n("duplicates"), 0, "{ledger}");
        }
    }
    println!("the demo took {:?}", started.elapsed());
}

/// `target/<profile>/examples/cluster`, next to this test's `deps/` directory; a
/// missing or stale binary fails here, saying how to build it.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let demo = profile_dir.join("examples").join("cluster");
    let build = "`cargo test --features nats` builds it with the other examples; when running \
                 this test alone, first `cargo build --features nats --example cluster` (with \
                 the same profile as the tests)";
    let built = std::fs::metadata(&demo)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "the demo binary {} is missing ({e}): {build}",
                demo.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest =
        newest_source(&root.join("src")).max(modified(&root.join("examples").join("cluster.rs")));
    assert!(
        built >= newest,
        "the demo binary {} is older than the sources: {build}",
        demo.display()
    );
    demo
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_source(&path)
        } else {
            modified(&path)
        };
        newest = newest.max(time);
    }
    newest
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
