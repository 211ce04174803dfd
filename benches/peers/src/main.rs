//! The peer benchmark suite of issue 5: this crate beside crossbeam-channel, flume, tokio
//! mpsc, actix, ractor, kameo, tokio-util's `DelayQueue` and the 1.x reference
//! (`terraphim_agent_messaging` 1.19.2), doing the same work in the same run.
//!
//! Usage (see `scripts/bench-peers.sh`):
//!
//! ```text
//! peers [throughput] [actors] [latency] [routed] [memory] [timers]   # default: all
//! peers --mem <case> <n>                                             # one memory case (internal)
//! peers --one <case> <n>                                             # one case, for profilers
//! ```
//!
//! `PEERS_HEAVY=1` runs larger sizes; `PEERS_RESULTS_DIR` overrides where results.json,
//! results.md and chart.svg go (default: `benches/peers/results`). Each module's doc says
//! what its cases do and how they are timed.

mod actors;
/// The producer/consumer loop and the contenders, shared with the criterion benches.
#[path = "../../common/contenders.rs"]
mod contenders;
mod harness;
mod latency;
mod memory;
mod report;
mod routed;
mod throughput;
mod timers;

use std::path::PathBuf;
use std::time::Instant;

use harness::{Results, Sizes};

const SECTIONS: [&str; 6] = [
    "throughput",
    "actors",
    "latency",
    "routed",
    "memory",
    "timers",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--mem") {
        let case = args.get(1).expect("--mem <case> <n>");
        let n = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .expect("--mem <case> <n>");
        memory::child(case, n);
        return;
    }
    if args.first().map(String::as_str) == Some("--one") {
        let case = args.get(1).expect("--one <case> <n>");
        let n = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .expect("--one <case> <n>");
        one(case, n);
        return;
    }
    let chosen: Vec<&str> = if args.is_empty() {
        SECTIONS.to_vec()
    } else {
        for a in &args {
            assert!(
                SECTIONS.contains(&a.as_str()),
                "unknown section {a}; choose from {SECTIONS:?}"
            );
        }
        args.iter().map(String::as_str).collect()
    };

    let sizes = Sizes::from_env();
    let machine = report::Machine::detect(sizes.heavy);
    println!(
        "peer benchmarks: {} × {}, {} sizes {:?}",
        machine.nproc,
        machine.cpu,
        if sizes.heavy { "heavy" } else { "quick" },
        sizes
    );
    let started = Instant::now();
    let mut results = Results::default();
    for section in &chosen {
        let t = Instant::now();
        match *section {
            "throughput" => throughput::bench(&sizes, &mut results),
            "actors" => actors::bench_casts(&sizes, &mut results),
            "latency" => latency::bench(&sizes, &mut results),
            "routed" => routed::bench(&sizes, &mut results),
            "memory" => memory::bench(&sizes, &mut results),
            "timers" => timers::bench(&sizes, &mut results),
            _ => unreachable!(),
        }
        println!("  ({section}: {:.1} s)", t.elapsed().as_secs_f64());
    }
    report::targets(&mut results);

    println!("\n== ratios (ours × vs each peer) ==");
    for row in &results.rows {
        if let Some((_, x)) = report::advantage(&results, row) {
            println!("  {:<66} {:>8.2}×", row.name, x);
        }
    }

    let dir = std::env::var_os("PEERS_RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    report::write(&dir, &results, &machine).expect("write results");
    println!(
        "\nwrote {}/results.json, results.md, chart.svg ({:.0} s in all)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}

/// One case alone with `n` messages (or calls), for `valgrind --tool=callgrind`, `perf`
/// or `strace -c`: spsc-ours, 2p-ours, spsc-crossbeam, 2p-crossbeam, cast-ours,
/// cast-ours-2p, cast-by-pid-ours, cast-by-pid-ours-2p, routed-ours,
/// pre-resolved-ours, routed-2p-ours, routed-2p-exactly-once, routed-2p-churn, call-sync-ours, call-sync-crossbeam, call-async-ours,
/// call-async-ours-direct, call-async-tokio, call-async-tokio-timeout.
fn one(case: &str, n: usize) {
    let t = Instant::now();
    let what = match case {
        "spsc-ours" => format!("{:.0} msg/s", throughput::one("ours", 1, n)),
        "2p-ours" => format!("{:.0} msg/s", throughput::one("ours", 2, n)),
        "spsc-crossbeam" => format!("{:.0} msg/s", throughput::one("crossbeam", 1, n)),
        "2p-crossbeam" => format!("{:.0} msg/s", throughput::one("crossbeam", 2, n)),
        "cast-ours" => format!("{:.0} msg/s", actors::ours_casts(1, n, false, false)),
        "cast-ours-2p" => format!("{:.0} msg/s", actors::ours_casts(2, n, false, false)),
        "cast-by-pid-ours" => format!("{:.0} msg/s", actors::ours_casts(1, n, true, false)),
        "cast-by-pid-ours-2p" => format!("{:.0} msg/s", actors::ours_casts(2, n, true, false)),
        "routed-ours" => format!("{:.0} msg/s", routed::one(n, false)),
        "pre-resolved-ours" => format!("{:.0} msg/s", routed::one(n, true)),
        "routed-2p-ours" | "routed-2p-exactly-once" | "routed-2p-churn" => routed::one_2p(case, n),
        "call-sync-ours"
        | "call-sync-crossbeam"
        | "call-async-ours"
        | "call-async-ours-direct"
        | "call-async-tokio"
        | "call-async-tokio-timeout" => {
            format!("{:?}", latency::one(case, n))
        }
        other => panic!("unknown case {other}"),
    };
    println!("{case} {n}: {what} ({:.2} s)", t.elapsed().as_secs_f64());
}
