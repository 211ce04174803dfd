//! The swarm demo as a user runs it with `--metrics-addr`: a child process of the
//! built example on a free loopback port, scraped with a plain HTTP/1.0 GET while its
//! live lines run and again after its report, whose ledger the counters must match.
//!
//! `cargo test --all-features` builds the example with both features before running
//! this; a targeted run (`--test swarm_metrics`) builds it if it is missing or was
//! built without them, into its own target directory (the running cargo holds the
//! usual one). Every wait is bounded; the child is stopped by its own handle.
#![cfg(all(feature = "tracing", feature = "metrics"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on building the example when it has to be built here.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on the demo's whole run (2 s of traffic, up to 3 s of draining, the report).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/<profile>/`, the directory of this test binary's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    deps.parent().unwrap().to_path_buf()
}

fn example_in(profile_dir: &Path) -> PathBuf {
    let name = format!("swarm{}", std::env::consts::EXE_SUFFIX);
    profile_dir.join("examples").join(name)
}

/// Whether `swarm` exists and was built with both features (its `--help` says).
fn has_features(swarm: &Path) -> bool {
    let Ok(out) = Command::new(swarm).arg("--help").output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).contains("built with: tracing=true metrics=true")
}

/// The example binary, built with `tracing` and `metrics`.
fn swarm_binary() -> PathBuf {
    let built = example_in(&profile_dir());
    if has_features(&built) {
        return built;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = profile_dir().parent().unwrap().join("swarm-metrics-test");
    let mut cargo = Command::new(env!("CARGO"))
        .args([
            "build",
            "--example",
            "swarm",
            "--features",
            "tracing,metrics",
        ])
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .spawn()
        .expect("cargo runs");
    let started = Instant::now();
    loop {
        if let Some(status) = cargo.try_wait().unwrap() {
            assert!(status.success(), "building the swarm example failed");
            break;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = cargo.kill();
            let _ = cargo.wait();
            panic!("building the swarm example took more than {BUILD_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let built = example_in(&target.join("debug"));
    assert!(
        has_features(&built),
        "{} lacks the features",
        built.display()
    );
    built
}

/// A loopback port nobody listens on (bound, then released for the child).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET /metrics` over HTTP/1.0: the body of a 200 answer, or why not.
fn scrape(port: u16) -> Result<String, String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.") || !head.lines().next().unwrap_or("").contains(" 200") {
        return Err(format!("not a 200: {head}"));
    }
    Ok(body.to_string())
}

/// Samples by series (`name{labels}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> u64 {
    let value = samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"));
    *value as u64
}

/// The demo's stdout, line by line, read on a thread of its own.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines until one satisfies `done`; fails after `RUN_TIMEOUT` or at EOF.
fn read_until(lines: &Receiver<String>, out: &mut Vec<String>, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let stop = done(&line);
                out.push(line);
                if stop {
                    return;
                }
            }
            Err(e) => panic!(
                "the demo stopped talking ({e:?}); its output:\n{}",
                out.join("\n")
            ),
        }
    }
}

/// A row of the report: `  label<padded to 34> value`, the value without thousands
/// separators.
fn row<'a>(report: &'a [String], label: &str) -> &'a str {
    report
        .iter()
        .find_map(|line| {
            let (name, value) = (line.get(2..36)?, line.get(36..)?);
            (name.trim() == label).then_some(value.trim())
        })
        .unwrap_or_else(|| panic!("no `{label}` row in:\n{}", report.join("\n")))
}

fn number(text: &str) -> u64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{text}` is not a number"))
}

/// The metric label of a dead-letter reason as the report prints it.
fn reason_label(printed: &str) -> &'static str {
    let kinds = [
        ("mailbox full", "mailbox_full"),
        ("mailbox closed", "mailbox_closed"),
        ("agent not found", "agent_not_found"),
        ("retries exhausted", "retries_exhausted"),
        ("not acknowledged", "not_acknowledged"),
        ("expired", "expired"),
        ("circuit open", "circuit_open"),
        ("overloaded", "overloaded"),
        ("system shut down", "shutdown"),
    ];
    let found = kinds.iter().find(|(text, _)| printed.starts_with(text));
    found
        .unwrap_or_else(|| panic!("unknown reason `{printed}`"))
        .1
}

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_swarm_serves_metrics_that_match_its_ledger() {
    let swarm = swarm_binary();
    let port = free_port();
    let child = Command::new(&swarm)
        .args([
            "--duration",
            "2",
            "--messages",
            "100000000",
            "--agents",
            "4",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--linger", "60"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example starts");
    let mut child = Running(child);
    let lines = lines_of(&mut child.0);
    let mut out = Vec::new();

    // While the live lines run: the endpoint answers, and once a publish lands after
    // the traffic started (one a second), it shows the swarm (a coordinator and 4
    // workers) and messages sent.
    read_until(&lines, &mut out, |l| l.contains(" sent "));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = scrape(port);
        if let Ok(body) = &body {
            let s = samples(body);
            let sent = s.get("agent_messaging_messages_sent_total");
            if s.get("agent_messaging_agents") == Some(&5.0) && sent.is_some_and(|n| *n > 0.0) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no live metrics: {body:?}");
        thread::sleep(Duration::from_millis(100));
    }

    // After the report: the final numbers, published at shutdown.
    read_until(&lines, &mut out, |l| l.starts_with("serving http://"));
    let report = &out;
    assert_eq!(row(report, "ledger balanced"), "yes");
    let s = samples(&scrape(port).expect("the final scrape"));

    let ledger = |name: &str| number(row(report, name));
    assert_eq!(
        sample(&s, "agent_messaging_messages_sent_total"),
        ledger("total_messages")
    );
    assert_eq!(
        sample(&s, "agent_messaging_messages_delivered_total"),
        ledger("delivered") + ledger("acknowledged")
    );
    assert_eq!(
        sample(&s, "agent_messaging_retries_total"),
        ledger("retries")
    );
    assert_eq!(
        sample(&s, "agent_messaging_breaker_trips_total"),
        ledger("breaker trips")
    );

    let calls: Vec<u64> = row(report, "calls ok / timeout / failed")
        .split('/')
        .map(number)
        .collect();
    for (outcome, printed) in ["ok", "timeout", "failed"].into_iter().zip(calls) {
        let series = format!("agent_messaging_calls_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&s, &series), printed, "{outcome}");
    }

    // Dead letters: the total, and each reason the report lists.
    let dead_total: u64 = s
        .iter()
        .filter(|(series, _)| series.starts_with("agent_messaging_dead_letters_total{"))
        .map(|(_, v)| *v as u64)
        .sum();
    assert_eq!(dead_total, ledger("dead letters"));
    let at = report
        .iter()
        .position(|l| l.get(2..36).is_some_and(|n| n.trim() == "dead letters"))
        .unwrap();
    let mut by_label: BTreeMap<&str, u64> = BTreeMap::new();
    for line in report[at + 1..]
        .iter()
        .take_while(|l| l.starts_with("    "))
    {
        let (reason, count) = line.trim().rsplit_once(' ').expect("reason and count");
        *by_label.entry(reason_label(reason.trim())).or_default() += number(count);
    }
    for (label, count) in by_label {
        let series = format!("agent_messaging_dead_letters_total{{reason=\"{label}\"}}");
        assert_eq!(sample(&s, &series), count, "{label}");
    }

    // A shut-down system holds nothing.
    for gauge in [
        "agent_messaging_agents",
        "agent_messaging_queued_messages",
        "agent_messaging_pending_messages",
        "agent_messaging_open_breakers",
    ] {
        assert_eq!(sample(&s, gauge), 0, "{gauge}");
    }
    // The histograms were fed.
    assert!(sample(&s, "agent_messaging_call_duration_seconds_count") > 0);
    assert!(sample(&s, "agent_messaging_mailbox_wait_seconds_count") > 0);
}
