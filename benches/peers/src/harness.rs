//! The small harness: run sizes, medians, percentiles, RSS, and the result rows.

use std::time::{Duration, Instant};

/// Run sizes. `PEERS_HEAVY=1` multiplies them (and adds the 1,000,000-actor cases).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub heavy: bool,
    /// Repetitions of each throughput case (the median is reported).
    pub runs: usize,
    /// Messages per run through plain channels and our mailbox.
    pub n_channel: usize,
    /// Messages per run into an actor (actix, ractor, kameo, ours as an agent).
    pub n_actor: usize,
    /// Envelopes per run through the 1.x reference router.
    pub n_reference: usize,
    /// Timed calls per latency case (after a warm-up of a tenth of that).
    pub calls: usize,
    /// Idle actors per memory case of the actor peers.
    pub idle_actors: usize,
    /// Registered agents of the 1.x reference in its larger memory case.
    pub reference_agents_large: usize,
}

impl Sizes {
    pub fn from_env() -> Self {
        let heavy = std::env::var("PEERS_HEAVY").is_ok_and(|v| !v.is_empty() && v != "0");
        if heavy {
            Sizes {
                heavy,
                runs: 11,
                n_channel: 2_000_000,
                n_actor: 1_000_000,
                n_reference: 300_000,
                calls: 300_000,
                idle_actors: 1_000_000,
                reference_agents_large: 1_000_000,
            }
        } else {
            Sizes {
                heavy,
                runs: 9,
                n_channel: 500_000,
                n_actor: 200_000,
                n_reference: 100_000,
                calls: 100_000,
                idle_actors: 100_000,
                reference_agents_large: 100_000,
            }
        }
    }
}

/// Medians of `runs` rounds over several contenders, interleaved: each round runs every
/// contender once, in an order shuffled afresh each round ([`round_order`]). So every
/// contender meets the same mix of allocator, cache and neighbour states: run back to
/// back, later contenders found a heap the earlier ones had warmed (up to 40% apart),
/// and with a fixed rotation each contender always followed the same predecessor.
pub fn medians_interleaved(runs: usize, contenders: &mut [&mut dyn FnMut() -> f64]) -> Vec<f64> {
    let k = contenders.len();
    let mut samples = vec![Vec::with_capacity(runs); k];
    for round in 0..runs {
        for i in round_order(round, k) {
            samples[i].push((contenders[i])());
        }
    }
    samples.iter_mut().map(|v| median(v)).collect()
}

/// The order of `k` contenders in round `round`: a Fisher–Yates shuffle seeded by the
/// round, so runs of the suite are reproducible.
pub fn round_order(round: usize, k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..k).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (round as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    for i in (1..k).rev() {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        order.swap(i, (r % (i as u64 + 1)) as usize);
    }
    order
}

/// Median of `runs` repetitions of `one` (each returns msg/s, ns/op, …).
pub fn median_of(runs: usize, mut one: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(|_| one()).collect();
    median(&mut v)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Messages per second for `n` messages in `elapsed`.
pub fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// p50, p99, p99.9 (ns) of per-call latencies.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

pub fn percentiles(mut ns: Vec<u64>) -> Percentiles {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 - 1.0) * q).round() as usize] as f64;
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

/// Per-call latencies in nanoseconds, in the order taken.
pub type Samples = Vec<u64>;

/// Latency percentiles of several contenders, sampled in interleaved rounds: each
/// round gives every contender `calls / runs` calls (plus its own warm-up), in an order
/// shuffled each round ([`round_order`]), and each contender's samples are pooled. Like
/// [`medians_interleaved`], so that no contender always meets a warmer or colder
/// machine than another.
pub fn percentiles_interleaved(
    runs: usize,
    calls: usize,
    contenders: &mut [&mut dyn FnMut(usize) -> Samples],
) -> Vec<Percentiles> {
    let k = contenders.len();
    let per_round = (calls / runs).max(1);
    let mut pooled: Vec<Samples> = vec![Vec::with_capacity(per_round * runs); k];
    for round in 0..runs {
        for i in round_order(round, k) {
            pooled[i].extend((contenders[i])(per_round));
        }
    }
    pooled.into_iter().map(percentiles).collect()
}

/// Untimed calls before sampling: at least a tenth of the timed ones, and for at least
/// this long. Two freshly spawned threads that hand work back and forth start out on
/// one core about as often as not on this 2-core VM (~3.6 µs round trips for every
/// contender) until the scheduler's load balancing moves one away, which takes tens of
/// milliseconds; a round of ~11,000 calls was over before that. Steady-state latency is
/// what a long-lived agent sees, so every contender warms up past it.
pub const WARM_UP: Duration = Duration::from_millis(200);

/// Times `calls` calls of `one` one by one (after the warm-up: [`WARM_UP`], and at least
/// `calls / 10` untimed calls).
pub fn sample_sync(calls: usize, mut one: impl FnMut(u64)) -> Samples {
    let start = Instant::now();
    let mut i = 0u64;
    while i < (calls / 10) as u64 || start.elapsed() < WARM_UP {
        one(i);
        i += 1;
    }
    let mut ns = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        one(i as u64);
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns
}

/// Resident set size of this process in bytes (`/proc/self/statm`, field 2).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm resident field");
    pages * page_size()
}

fn page_size() -> u64 {
    // Every Linux target this suite runs on uses 4 KiB base pages; statm counts those.
    4096
}

/// Whether a larger or a smaller value is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One measured value.
#[derive(Clone, Debug)]
pub struct Row {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
    pub note: String,
}

/// One issue-5 target: ours against a peer (or an absolute bound).
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// "ours ÷ peer" (or "peer ÷ ours" for costs), as printed; for absolute bounds the value.
    pub ratio: f64,
    /// Human-readable bound, e.g. "≥ 1.0×".
    pub bound: String,
    pub met: bool,
    /// For the chart: whether this is a ratio (log axis) or an absolute value.
    pub is_ratio: bool,
    /// The bound as a number on the same axis.
    pub bound_value: f64,
}

#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
}

impl Results {
    pub fn push(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        better: Better,
    ) -> f64 {
        self.push_note(section, name, value, unit, better, "")
    }

    pub fn push_note(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        better: Better,
        note: impl Into<String>,
    ) -> f64 {
        let row = Row {
            section,
            name: name.into(),
            value,
            unit,
            better,
            note: note.into(),
        };
        println!(
            "  {:<58} {:>14} {}{}",
            row.name,
            fmt_value(value),
            unit,
            if row.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", row.note)
            }
        );
        self.rows.push(row);
        value
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.name == name).map(|r| r.value)
    }

    /// A ratio target: `ratio` must be `>= min` (pass `min` for "at least") or
    /// `<= max` (pass `at_most = true`).
    pub fn ratio_target(&mut self, name: impl Into<String>, ratio: f64, bound: f64, at_most: bool) {
        let met = if at_most {
            ratio <= bound
        } else {
            ratio >= bound
        };
        let t = Target {
            name: name.into(),
            ratio,
            bound: format!("{} {}×", if at_most { "≤" } else { "≥" }, bound),
            met,
            is_ratio: true,
            bound_value: bound,
        };
        println!(
            "  TARGET {:<56} {:>8.2}×  (bound {})  {}",
            t.name,
            t.ratio,
            t.bound,
            if met { "MET" } else { "MISSED" }
        );
        self.targets.push(t);
    }

    /// An absolute target: `value <= bound`.
    pub fn abs_target(&mut self, name: impl Into<String>, value: f64, bound: f64, unit: &str) {
        let met = value <= bound;
        let t = Target {
            name: name.into(),
            ratio: value,
            bound: format!("≤ {} {unit}", fmt_value(bound)),
            met,
            is_ratio: false,
            bound_value: bound,
        };
        println!(
            "  TARGET {:<56} {:>8} {unit}  (bound {})  {}",
            t.name,
            fmt_value(value),
            t.bound,
            if met { "MET" } else { "MISSED" }
        );
        self.targets.push(t);
    }
}

/// Three significant figures, thousands grouped.
pub fn fmt_value(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v.abs() >= 1000.0 {
        let r = v.round() as i64;
        let s = r.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if r < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
