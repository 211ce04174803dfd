//! Timers at 1,000,000 pending: our `TimerWheel` insert and cancel vs tokio-util's
//! `DelayQueue` insert and remove.
//!
//! Each side is filled with 1,000,000 timers at pseudo-random delays of 1 ms – 1 h (the
//! same sequence for both; our wheel ticks are 1 ms). Then, per run, `m` more timers are
//! inserted (timed) and those `m` are cancelled in shuffled order (timed), so the
//! pending count stays between 1,000,000 and 1,000,000 + `m`. The median ns/op of the
//! runs is reported. `DelayQueue` runs inside a current-thread runtime with the time
//! driver (it needs one); nothing is polled, so no timer fires on either side.

use std::hint::black_box;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::TimerWheel;

use crate::harness::{median, Better, Results, Sizes};

const PENDING: usize = 1_000_000;

/// A small deterministic generator (64-bit LCG, high bits).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// A delay in 1..=3_600_000 ms.
    fn delay(&mut self) -> u64 {
        1 + self.next() % 3_600_000
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn ours(m: usize, runs: usize) -> (f64, f64) {
    let mut rng = Lcg(42);
    let mut wheel = TimerWheel::<u64>::with_now(0);
    let mut keep = Vec::with_capacity(PENDING);
    for i in 0..PENDING {
        keep.push(
            wheel
                .insert(rng.delay(), i as u64)
                .expect("future deadline"),
        );
    }
    let (mut ins, mut can) = (Vec::new(), Vec::new());
    let mut keys = Vec::with_capacity(m);
    for _ in 0..runs {
        let delays: Vec<u64> = (0..m).map(|_| rng.delay()).collect();
        keys.clear();
        let t = Instant::now();
        for (i, &d) in delays.iter().enumerate() {
            keys.push(wheel.insert(d, i as u64).expect("future deadline"));
        }
        ins.push(t.elapsed().as_nanos() as f64 / m as f64);
        rng.shuffle(&mut keys);
        let t = Instant::now();
        for &key in &keys {
            black_box(wheel.cancel(key));
        }
        can.push(t.elapsed().as_nanos() as f64 / m as f64);
        assert_eq!(wheel.len(), PENDING);
    }
    black_box(&keep);
    (median(&mut ins), median(&mut can))
}

fn delay_queue(m: usize, runs: usize) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut rng = Lcg(42);
        let mut queue = tokio_util::time::DelayQueue::<u64>::new();
        let mut keep = Vec::with_capacity(PENDING);
        for i in 0..PENDING {
            keep.push(queue.insert(i as u64, Duration::from_millis(rng.delay())));
        }
        let (mut ins, mut can) = (Vec::new(), Vec::new());
        let mut keys = Vec::with_capacity(m);
        for _ in 0..runs {
            let delays: Vec<u64> = (0..m).map(|_| rng.delay()).collect();
            keys.clear();
            let t = Instant::now();
            for (i, &d) in delays.iter().enumerate() {
                keys.push(queue.insert(i as u64, Duration::from_millis(d)));
            }
            ins.push(t.elapsed().as_nanos() as f64 / m as f64);
            rng.shuffle(&mut keys);
            let t = Instant::now();
            for key in &keys {
                black_box(queue.remove(key));
            }
            can.push(t.elapsed().as_nanos() as f64 / m as f64);
            assert_eq!(queue.len(), PENDING);
        }
        black_box(&keep);
        (median(&mut ins), median(&mut can))
    })
}

pub fn bench(sizes: &Sizes, results: &mut Results) {
    let m = if sizes.heavy { 1_000_000 } else { 200_000 };
    println!(
        "\n== timers at {PENDING} pending ({m} inserts + {m} cancels per run, median of {}) ==",
        sizes.runs
    );
    let (oi, oc) = ours(m, sizes.runs);
    let (di, dc) = delay_queue(m, sizes.runs);
    let s = "timers";
    results.push(
        s,
        "timers: ours TimerWheel insert",
        oi,
        "ns/op",
        Better::Lower,
    );
    results.push(
        s,
        "timers: ours TimerWheel cancel",
        oc,
        "ns/op",
        Better::Lower,
    );
    results.push(
        s,
        "timers: tokio-util DelayQueue insert",
        di,
        "ns/op",
        Better::Lower,
    );
    results.push(
        s,
        "timers: tokio-util DelayQueue remove",
        dc,
        "ns/op",
        Better::Lower,
    );
}
