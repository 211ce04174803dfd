//! User timers: `send_after`, `send_interval` and `cancel_timer` on the system's timer
//! wheel, driven by a manual clock (no test sleeps), their bad input, and the memory a
//! million pending timers take.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::sync::{manual_system, registered};
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, DeadLetterReason, ErrorCategory, MessagingError, RouterConfig,
};

/// Counts the bytes this thread holds, so the memory test measures its own timers only.
#[global_allocator]
static ALLOCATOR: common::alloc::Counting = common::alloc::Counting;

fn tick(n: u64) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), n)
}

#[test]
fn send_after_fires_once_at_its_deadline() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    let timer = system
        .send_after(&pid, tick(1), Duration::from_millis(50))
        .unwrap();
    clock.advance(Duration::from_millis(49));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_none(), "not early");
    clock.advance(Duration::from_millis(1));
    system.run_due_timers();
    assert_eq!(
        inbox.try_receive().unwrap().unwrap().payload::<u64>(),
        Some(&1)
    );
    clock.advance(Duration::from_secs(10));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_none(), "once");
    assert!(!system.cancel_timer(timer), "fired already");
}

#[test]
fn cancelled_send_after_never_fires() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    let timer = system
        .send_after(&pid, tick(1), Duration::from_millis(50))
        .unwrap();
    let kept = system
        .send_after(&pid, tick(2), Duration::from_millis(50))
        .unwrap();
    assert_ne!(timer, kept);
    assert!(system.cancel_timer(timer));
    assert!(!system.cancel_timer(timer), "twice");
    clock.advance(Duration::from_millis(60));
    system.run_due_timers();
    assert_eq!(
        inbox.try_receive().unwrap().unwrap().payload::<u64>(),
        Some(&2)
    );
    assert!(inbox.try_receive().unwrap().is_none());
}

#[test]
fn send_after_to_a_stopped_agent_dead_letters() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, _inbox) = registered(&system);
    system
        .send_after(&pid, tick(1), Duration::from_millis(5))
        .unwrap();
    system.unregister_agent(&pid).unwrap();
    clock.advance(Duration::from_millis(5));
    system.run_due_timers();
    let letters = system.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::AgentNotFound);
    assert_eq!(letters[0].to, pid);
}

#[test]
fn send_interval_repeats_and_stops_with_its_target() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    let made = Arc::new(AtomicU64::new(0));
    let counter = made.clone();
    let timer = system
        .send_interval(
            &pid,
            move || tick(counter.fetch_add(1, Relaxed)),
            Duration::from_millis(10),
        )
        .unwrap();
    for n in 0..3 {
        clock.advance(Duration::from_millis(10));
        system.run_due_timers();
        assert_eq!(
            inbox.try_receive().unwrap().unwrap().payload::<u64>(),
            Some(&n)
        );
    }
    // A jump over many periods fires once, not a burst.
    clock.advance(Duration::from_millis(95));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_some());
    assert!(inbox.try_receive().unwrap().is_none());
    system.unregister_agent(&pid).unwrap();
    clock.advance(Duration::from_millis(20));
    system.run_due_timers();
    assert_eq!(made.load(Relaxed), 4, "nothing made for a stopped target");
    assert!(system.dead_letters().is_empty());
    assert!(!system.cancel_timer(timer), "it ended itself");
}

#[test]
fn cancelled_interval_stops() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    let timer = system
        .send_interval(&pid, || tick(0), Duration::from_millis(10))
        .unwrap();
    clock.advance(Duration::from_millis(10));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_some());
    assert!(system.cancel_timer(timer));
    clock.advance(Duration::from_millis(100));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_none());
    assert!(!system.cancel_timer(timer));
}

#[test]
fn interval_whose_make_panics_ends() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    let timer = system
        .send_interval(
            &pid,
            || panic!("no message today"),
            Duration::from_millis(10),
        )
        .unwrap();
    clock.advance(Duration::from_millis(10));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_none());
    assert!(!system.cancel_timer(timer));
}

#[test]
fn bad_timer_input() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    // Zero delay: sent at once.
    let now = system.send_after(&pid, tick(0), Duration::ZERO).unwrap();
    assert!(inbox.try_receive().unwrap().is_some());
    assert!(!system.cancel_timer(now));
    // Duration::MAX: never fires, can be cancelled.
    let never = system.send_after(&pid, tick(1), Duration::MAX).unwrap();
    let forever = system
        .send_interval(&pid, || tick(2), Duration::MAX)
        .unwrap();
    clock.advance(Duration::from_secs(86_400 * 365 * 100));
    system.run_due_timers();
    assert!(inbox.try_receive().unwrap().is_none());
    assert!(system.cancel_timer(never));
    assert!(system.cancel_timer(forever));
    // Zero period: refused.
    let e = system
        .send_interval(&pid, || tick(3), Duration::ZERO)
        .unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Validation);
    // Unknown target: refused up front.
    let ghost = AgentPid::new();
    assert!(matches!(
        system.send_after(&ghost, tick(4), Duration::from_millis(1)),
        Err(MessagingError::AgentNotFound(p)) if p == ghost
    ));
    assert!(matches!(
        system.send_interval(&ghost, || tick(5), Duration::from_millis(1)),
        Err(MessagingError::AgentNotFound(_))
    ));
}

/// A million pending `send_after` timers: no hang, and the memory per timer.
#[test]
fn a_million_pending_timers() {
    const N: usize = 1_000_000;
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    let held = || common::alloc::counts().held_bytes;
    let before = held();
    let mut refs = Vec::with_capacity(N);
    let refs_bytes = held() - before;
    for n in 0..N {
        let delay = Duration::from_millis(1 + (n as u64 * 7919) % 3_600_000);
        refs.push(
            system
                .send_after(&pid, AgentMessage::cast(AgentPid::nil(), ()), delay)
                .unwrap(),
        );
    }
    let per_timer = (held() - before - refs_bytes) as f64 / N as f64;
    eprintln!("memory per pending send_after timer: {per_timer:.1} bytes");
    assert!(per_timer < 256.0, "{per_timer} bytes per timer");
    // Cancel every other one; the rest fire within the hour.
    let cancelled = refs
        .iter()
        .step_by(2)
        .filter(|r| system.cancel_timer(**r))
        .count();
    assert_eq!(cancelled, N / 2);
    clock.advance(Duration::from_secs(3_600));
    system.run_due_timers();
    let mut got = 0;
    while inbox.try_receive().unwrap().is_some() {
        got += 1;
    }
    assert_eq!(got, N / 2);
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn tokio_twins() {
    let (system, clock) = common::tokio::manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = common::tokio::registered(&system).await;
    let once = system
        .send_after(&pid, tick(1), Duration::from_millis(5))
        .await
        .unwrap();
    let every = system
        .send_interval(&pid, || tick(2), Duration::from_millis(5))
        .await
        .unwrap();
    clock.advance(Duration::from_millis(5));
    system.run_due_timers();
    let mut got: Vec<u64> = Vec::new();
    while let Some(m) = inbox.try_receive().await.unwrap() {
        got.push(*m.payload::<u64>().unwrap());
    }
    got.sort();
    assert_eq!(got, [1, 2]);
    assert!(!system.cancel_timer(once));
    assert!(system.cancel_timer(every));
}
