//! The timer service's `next_wake` protocol: a deadline set while the driver runs a
//! firing pass is never missed. The driver either sees it in that pass's plan, or is
//! woken (`TimerDriver::External`, the hook the tokio task and, as an `unpark`, the
//! thread driver sit behind).

use std::time::Duration;

use loom::sync::{Condvar, Mutex};
use terraphim_agent_messaging::{
    AgentPid, Clock, DeliveryGuarantee, ManualClock, MessageSystem, RouterConfig, TimerDriver,
};

use crate::{model, spawn};

/// A driver's wake-up: set by the hook, waited for by the driver.
#[derive(Default)]
struct Wake {
    woken: Mutex<bool>,
    condvar: Condvar,
}

/// A system on a manual clock whose timer driver is the hook of `Wake`, with one
/// registered callee: returns the system, its clock, the wake and the callee.
fn external_driver_system() -> (MessageSystem, ManualClock, std::sync::Arc<Wake>, AgentPid) {
    let wake = std::sync::Arc::new(Wake::default());
    let hook = {
        let wake = wake.clone();
        std::sync::Arc::new(move || {
            *wake.woken.lock().unwrap() = true;
            wake.condvar.notify_one();
        })
    };
    let clock = ManualClock::new();
    let config = RouterConfig {
        delivery_config: terraphim_agent_messaging::DeliveryConfig {
            guarantee: DeliveryGuarantee::AtMostOnce,
            ..Default::default()
        },
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(config)
        .clock(std::sync::Arc::new(clock.clone()))
        .timer_driver(TimerDriver::External(hook))
        .build()
        .expect("valid configuration");
    let callee = AgentPid::new();
    system.register_agent(callee.clone()).unwrap();
    (system, clock, wake, callee)
}

/// A driver thread: one firing pass, then it sleeps as the real driver would: not at
/// all if the pass's plan is before `needed`, else until woken (loom reports a
/// deadlock if the wake is lost).
fn driver_pass(
    system: &MessageSystem,
    wake: &std::sync::Arc<Wake>,
    needed: std::time::Instant,
) -> loom::thread::JoinHandle<()> {
    let (system, wake) = (system.clone(), wake.clone());
    spawn(move || {
        let next = system.run_due_timers();
        if !next.is_some_and(|at| at < needed) {
            let mut woken = wake.woken.lock().unwrap();
            while !*woken {
                woken = wake.condvar.wait(woken).unwrap();
            }
        }
    })
}

/// Main sets a call timeout of 10 ms while a driver thread runs a firing pass, then
/// sleeps as the real driver would: not at all if the pass's plan covers 10 ms, else
/// until woken (loom reports a deadlock if the wake is lost). A call timeout of 100 ms
/// set before makes the early one move `next_wake` down. Runs with the wake hook
/// cleared after that first timeout.
#[test]
fn timer_deadline_set_during_a_firing_pass() {
    model(|| {
        let (system, clock, wake, callee) = external_driver_system();
        let start = clock.now();
        let far = system.call_async(AgentPid::new(), &callee, 0u8, Duration::from_millis(100));
        *wake.woken.lock().unwrap() = false;

        let driver = driver_pass(&system, &wake, start + Duration::from_millis(50));
        let near = system.call_async(AgentPid::new(), &callee, 1u8, Duration::from_millis(10));
        driver.join().unwrap();
        drop((near, far));
        system.shutdown().unwrap();
    });
}

/// As above, but the pass fires a timer that is due: before it plans, `next_wake` still
/// holds that timer's (passed) deadline. Main sets a 20 ms timeout during the pass,
/// after one at 5 ms (due) and one at 100 ms: the pass's plan (100 ms) must not cover
/// over it unwoken. The 20 ms arm may compare with the stale 5 ms and tell no one; the
/// driver's sleep, read after the plan is stored, must then see it (loom: deadlock if
/// not).
#[test]
fn timer_set_while_a_pass_fires_an_earlier_one() {
    model(|| {
        let (system, clock, wake, callee) = external_driver_system();
        let start = clock.now();
        let due = system.call_async(AgentPid::new(), &callee, 0u8, Duration::from_millis(5));
        let far = system.call_async(AgentPid::new(), &callee, 1u8, Duration::from_millis(100));
        clock.advance(Duration::from_millis(6));
        *wake.woken.lock().unwrap() = false;

        let driver = driver_pass(&system, &wake, start + Duration::from_millis(50));
        let near = system.call_async(AgentPid::new(), &callee, 2u8, Duration::from_millis(14));
        driver.join().unwrap();
        drop((due, near, far));
        system.shutdown().unwrap();
    });
}
