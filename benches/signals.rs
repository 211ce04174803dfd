//! What signals and user timers cost.
//!
//! - `send_after_cancel`: one `send_after` and its `cancel_timer` with 1,000,000 timers
//!   pending, beside tokio-util's `DelayQueue` `insert` + `remove` at the same load
//!   (its own 1,000,000 pending, on a current-thread runtime, never polled). Each iteration
//!   is one insert and one cancel, so criterion reports the pair's cost per timer.
//! - `unregister_monitored`: `unregister_agent` of an agent watched by 0, 1, 16 and
//!   256 monitors (every monitor's notice is sent); the difference over 0, divided by
//!   the monitors, is what a monitor adds to a stop.
//!
//! Both systems run on a `ManualClock` with manual timers: nothing fires meanwhile.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, ManualClock, MessageSystem, RouterConfig, TimerDriver,
};

const PENDING: u64 = 1_000_000;

fn manual() -> MessageSystem {
    MessageSystem::builder(RouterConfig::default())
        .clock(Arc::new(ManualClock::new()))
        .timer_driver(TimerDriver::Manual)
        .build()
        .unwrap()
}

/// Deadlines spread over an hour, as the peers' timer benchmark does.
fn delay(n: u64) -> Duration {
    Duration::from_millis(1 + (n * 7919) % 3_600_000)
}

fn send_after_cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("send_after_cancel");
    group.throughput(Throughput::Elements(1));

    let system = manual();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    for n in 0..PENDING {
        system
            .send_after(&pid, AgentMessage::cast(AgentPid::nil(), ()), delay(n))
            .unwrap();
    }
    let mut n = 0u64;
    group.bench_function("ours", |b| {
        b.iter(|| {
            n += 1;
            let message = AgentMessage::cast(AgentPid::nil(), ());
            let timer = system.send_after(&pid, message, delay(n)).unwrap();
            black_box(system.cancel_timer(timer));
        })
    });
    drop(system);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut queue = tokio_util::time::DelayQueue::with_capacity(PENDING as usize + 1);
        for n in 0..PENDING {
            queue.insert(n, delay(n));
        }
        let mut n = 0u64;
        group.bench_function("tokio_util_delay_queue", |b| {
            b.iter(|| {
                n += 1;
                let key = queue.insert(n, delay(n));
                black_box(queue.remove(&key));
            })
        });
    });
    group.finish();
}

fn unregister_monitored(c: &mut Criterion) {
    let mut group = c.benchmark_group("unregister_monitored");
    let system = manual();
    let watcher = AgentPid::new();
    system.register_agent(watcher.clone()).unwrap();
    let inbox = system.get_mailbox(&watcher).unwrap();
    for monitors in [0usize, 1, 16, 256] {
        group.bench_function(format!("{monitors}_monitors"), |b| {
            b.iter_batched(
                || {
                    while let Ok(Some(_)) = inbox.try_receive() {}
                    let target = AgentPid::new();
                    system.register_agent(target.clone()).unwrap();
                    for _ in 0..monitors {
                        system.monitor(&watcher, &target).unwrap();
                    }
                    target
                },
                |target| system.unregister_agent(&target).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = send_after_cancel, unregister_monitored
}
criterion_main!(benches);
