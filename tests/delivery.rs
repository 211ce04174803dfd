//! Delivery guarantees on a manual clock: every row of the semantics table in API.md,
//! retries and backoff, acks and redelivery counts, expiry, dead-letter reasons, the
//! circuit breaker and groups.

use std::time::Duration;

use serde_json::json;
use terraphim_agent_messaging::*;

mod common;
use common::sync::{manual_builder, registered};

struct Harness {
    system: MessageSystem,
    clock: ManualClock,
}

fn harness(
    guarantee: DeliveryGuarantee,
    mailbox_cap: usize,
    tweak: impl FnOnce(&mut RouterConfig),
) -> Harness {
    harness_with(guarantee, mailbox_cap, tweak, None)
}

fn harness_with(
    guarantee: DeliveryGuarantee,
    mailbox_cap: usize,
    tweak: impl FnOnce(&mut RouterConfig),
    breaker: Option<CircuitBreakerConfig>,
) -> Harness {
    let mut config = RouterConfig::default();
    config.delivery_config.guarantee = guarantee;
    config.delivery_config.retry_delay = Duration::from_millis(100);
    config.delivery_config.retry_backoff_multiplier = 2.0;
    config.delivery_config.acknowledgment_timeout = Duration::from_secs(1);
    tweak(&mut config);
    let (mut builder, clock) = manual_builder(config, mailbox_cap);
    if let Some(b) = breaker {
        builder = builder.circuit_breaker(b);
    }
    Harness {
        system: builder.build().unwrap(),
        clock,
    }
}

impl Harness {
    fn agent(&self) -> (AgentPid, AgentMailbox) {
        registered(&self.system)
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.system.run_due_timers();
    }
}

fn envelope(to: &AgentPid, n: u64) -> MessageEnvelope {
    MessageEnvelope::new(
        to.clone(),
        "job".into(),
        json!({ "n": n }),
        DeliveryOptions::default(),
    )
}

fn drain(mailbox: &AgentMailbox) -> Vec<AgentMessage> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = mailbox.try_receive() {
        out.push(m);
    }
    out
}

#[test]
fn at_most_once_full_is_an_error_at_once() {
    let h = harness(DeliveryGuarantee::AtMostOnce, 1, |_| {});
    let (pid, mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 1)).unwrap();
    let err = h.system.send_message(envelope(&pid, 2)).unwrap_err();
    assert!(matches!(err, MessagingError::MailboxFull(_)));
    let dead = h.system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::MailboxFull);
    // Not retried.
    h.advance(Duration::from_secs(60));
    assert_eq!(drain(&mailbox).len(), 1);
}

#[test]
fn at_least_once_full_is_retried_with_backoff() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 1, |_| {});
    let (pid, mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 1)).unwrap();
    h.system.send_message(envelope(&pid, 2)).unwrap(); // full: accepted for retry
    assert_eq!(drain(&mailbox).len(), 1);
    // The first retry is due after retry_delay (100 ms), not before.
    h.advance(Duration::from_millis(99));
    assert!(mailbox.is_empty());
    h.advance(Duration::from_millis(1));
    let got = drain(&mailbox);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].payload::<serde_json::Value>(),
        Some(&json!({"n": 2}))
    );
    assert!(h.system.dead_letters().is_empty());
}

#[test]
fn at_least_once_gives_up_after_max_retries() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 1, |c| {
        c.delivery_config.max_retries = 3
    });
    let (pid, _mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 1)).unwrap();
    let mut env = envelope(&pid, 2);
    env.delivery_options.max_retries = 3;
    let id = env.id.clone();
    h.system.send_message(env).unwrap();
    // Backoff 100, 200, 400 ms: nothing is dead before the third retry fails.
    h.advance(Duration::from_millis(100));
    h.advance(Duration::from_millis(200));
    assert!(h.system.dead_letters().is_empty());
    h.advance(Duration::from_millis(400));
    let dead = h.system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 4); // first attempt + max_retries
    assert!(matches!(
        dead[0].reason,
        DeadLetterReason::RetriesExhausted(_)
    ));
}

#[test]
fn unknown_destination_is_an_error_for_every_guarantee() {
    for g in [
        DeliveryGuarantee::AtMostOnce,
        DeliveryGuarantee::AtLeastOnce,
        DeliveryGuarantee::ExactlyOnce,
    ] {
        let h = harness(g, 0, |_| {});
        let err = h
            .system
            .send_message(envelope(&AgentPid::new(), 1))
            .unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{g:?}");
    }
}

fn acked_envelope(to: &AgentPid) -> MessageEnvelope {
    let mut e = envelope(to, 7);
    e.delivery_options.require_ack = true;
    e.delivery_options.max_retries = 3;
    e
}

#[test]
fn at_least_once_redelivers_until_acked() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 0, |_| {});
    let (pid, mailbox) = h.agent();
    let env = acked_envelope(&pid);
    let id = env.id.clone();
    h.system.send_message(env).unwrap();
    assert_eq!(drain(&mailbox).len(), 1);
    h.advance(Duration::from_secs(1)); // ack timeout: redelivered, same id
    let again = drain(&mailbox);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id(), &id);
    h.system.acknowledge(&id).unwrap();
    h.advance(Duration::from_secs(10));
    assert!(drain(&mailbox).is_empty());
    assert!(matches!(
        h.system.acknowledge(&id),
        Err(MessagingError::UnknownMessage(_))
    ));
}

#[test]
fn at_least_once_unacked_is_delivered_one_plus_max_retries_times() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 0, |_| {});
    let (pid, mailbox) = h.agent();
    h.system.send_message(acked_envelope(&pid)).unwrap();
    let mut copies = drain(&mailbox).len();
    for _ in 0..10 {
        h.advance(Duration::from_secs(1));
        copies += drain(&mailbox).len();
    }
    assert_eq!(copies, 4);
    let dead = h.system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::NotAcknowledged);
}

#[test]
fn exactly_once_unacked_is_never_seen_twice() {
    let h = harness(DeliveryGuarantee::ExactlyOnce, 0, |_| {});
    let (pid, mailbox) = h.agent();
    h.system.send_message(acked_envelope(&pid)).unwrap();
    let mut copies = drain(&mailbox).len();
    for _ in 0..10 {
        h.advance(Duration::from_secs(1));
        copies += drain(&mailbox).len();
    }
    assert_eq!(copies, 1);
    assert_eq!(
        h.system.dead_letters()[0].reason,
        DeadLetterReason::NotAcknowledged
    );
}

#[test]
fn same_id_twice() {
    for (g, expected) in [
        (DeliveryGuarantee::AtMostOnce, 2),
        (DeliveryGuarantee::AtLeastOnce, 2),
        (DeliveryGuarantee::ExactlyOnce, 1),
    ] {
        let h = harness(g, 0, |_| {});
        let (pid, mailbox) = h.agent();
        let env = envelope(&pid, 1);
        h.system.send_message(env.clone()).unwrap();
        h.system.send_message(env).unwrap();
        assert_eq!(drain(&mailbox).len(), expected, "{g:?}");
    }
}

#[test]
fn exactly_once_window_expires() {
    let h = harness(DeliveryGuarantee::ExactlyOnce, 0, |c| {
        c.delivery_config.cleanup_interval = Duration::from_secs(5)
    });
    let (pid, mailbox) = h.agent();
    let env = envelope(&pid, 1);
    h.system.send_message(env.clone()).unwrap();
    h.advance(Duration::from_secs(5));
    h.system.send_message(env).unwrap();
    assert_eq!(drain(&mailbox).len(), 2);
}

#[test]
fn exactly_once_retry_is_not_mistaken_for_duplicate() {
    let h = harness(DeliveryGuarantee::ExactlyOnce, 1, |_| {});
    let (pid, mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 1)).unwrap();
    let env = envelope(&pid, 2);
    h.system.send_message(env.clone()).unwrap(); // full → retry
    h.system.send_message(env).unwrap(); // same id again, still full: one more retry
    assert_eq!(drain(&mailbox).len(), 1);
    h.advance(Duration::from_millis(100));
    assert_eq!(drain(&mailbox).len(), 1);
    h.advance(Duration::from_secs(5));
    assert!(drain(&mailbox).is_empty(), "the copy must not arrive twice");
}

#[test]
fn expiry_dead_letters_pending_messages() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 1, |c| {
        c.delivery_config.max_retries = 100;
        c.delivery_config.max_retry_delay = Duration::from_millis(100);
    });
    let (pid, _mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 1)).unwrap();
    let mut env = envelope(&pid, 2);
    env.delivery_options.timeout = Duration::from_millis(350);
    env.delivery_options.max_retries = 100;
    h.system.send_message(env).unwrap();
    for _ in 0..5 {
        h.advance(Duration::from_millis(100));
    }
    let dead = h.system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::Expired);
}

#[test]
fn breaker_opens_half_opens_and_closes() {
    let h = harness_with(
        DeliveryGuarantee::AtMostOnce,
        1,
        |_| {},
        Some(CircuitBreakerConfig {
            failure_threshold: 2,
            reset_timeout: Duration::from_secs(10),
        }),
    );
    let (pid, mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 0)).unwrap();
    for _ in 0..2 {
        assert!(matches!(
            h.system.send_message(envelope(&pid, 1)),
            Err(MessagingError::MailboxFull(_))
        ));
    }
    // Open: refused without touching the mailbox, even after it drained.
    drain(&mailbox);
    let err = h.system.send_message(envelope(&pid, 2)).unwrap_err();
    assert!(matches!(err, MessagingError::CircuitOpen(_)));
    assert!(err.is_recoverable());
    // Half-open after reset_timeout: one probe; success closes it.
    h.advance(Duration::from_secs(10));
    h.system.send_message(envelope(&pid, 3)).unwrap();
    drain(&mailbox);
    h.system.send_message(envelope(&pid, 4)).unwrap();
    assert_eq!(drain(&mailbox).len(), 1);
}

#[test]
fn breaker_open_is_retried_under_at_least_once() {
    let h = harness_with(
        DeliveryGuarantee::AtLeastOnce,
        1,
        |c| c.delivery_config.max_retries = 10,
        Some(CircuitBreakerConfig {
            failure_threshold: 1,
            reset_timeout: Duration::from_secs(2),
        }),
    );
    let (pid, mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 0)).unwrap();
    let mut env = envelope(&pid, 1);
    env.delivery_options.max_retries = 10;
    h.system.send_message(env).unwrap(); // full → breaker opens, retry scheduled
    drain(&mailbox);
    h.advance(Duration::from_millis(100)); // retry: breaker still open
    assert!(mailbox.is_empty());
    h.advance(Duration::from_secs(2)); // reset passed: the retry is the probe
    h.advance(Duration::from_secs(2));
    assert_eq!(drain(&mailbox).len(), 1);
    assert!(h.system.dead_letters().is_empty());
}

#[test]
fn round_robin_group_spreads_evenly() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 0, |_| {});
    let group = h.system.create_group(LoadBalance::RoundRobin).unwrap();
    let members: Vec<_> = (0..3).map(|_| h.agent()).collect();
    for (pid, _) in &members {
        h.system.join_group(&group, pid).unwrap();
    }
    for n in 0..30 {
        h.system.send_message(envelope(&group, n)).unwrap();
    }
    for (_, mailbox) in &members {
        assert_eq!(drain(mailbox).len(), 10);
    }
}

#[test]
fn empty_group_and_leaving_members() {
    let h = harness(DeliveryGuarantee::AtMostOnce, 0, |_| {});
    let group = h.system.create_group(LoadBalance::LeastLoaded).unwrap();
    assert!(matches!(
        h.system.send_message(envelope(&group, 1)),
        Err(MessagingError::EmptyGroup(_))
    ));
    let (a, _ma) = h.agent();
    h.system.join_group(&group, &a).unwrap();
    assert!(matches!(
        h.system.join_group(&group, &a),
        Err(MessagingError::DuplicateAgent(_))
    ));
    h.system.unregister_agent(&a).unwrap();
    assert!(h.system.group_members(&group).unwrap().is_empty());
    assert!(matches!(
        h.system.leave_group(&group, &a),
        Err(MessagingError::AgentNotFound(_))
    ));
}

#[test]
fn call_async_times_out_on_the_wheel() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 0, |_| {});
    let (pid, mailbox) = h.agent();
    let fut = h
        .system
        .call_async(AgentPid::new(), &pid, 1u32, Duration::from_secs(3));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = Box::pin(fut);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    h.advance(Duration::from_secs(3));
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(MessagingError::MessageTimeout(to))) => assert_eq!(to, pid),
        other => panic!("expected timeout, got {other:?}"),
    }
    // A late reply is handed back to the replier.
    if let Some(AgentMessage::Call { reply_to, .. }) = drain(&mailbox).pop() {
        assert!(reply_to.send(Box::new(())).is_err());
    } else {
        panic!("the call was delivered");
    }
}

#[test]
fn ledger_adds_up() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 2, |c| {
        c.delivery_config.max_retries = 1
    });
    let (pid, mailbox) = h.agent();
    let mut sent = 0;
    for n in 0..10 {
        let _ = h.system.send_message(envelope(&pid, n));
        sent += 1;
    }
    let _ = h.system.send_message(envelope(&AgentPid::new(), 99));
    sent += 1;
    let mut received = drain(&mailbox).len();
    h.advance(Duration::from_millis(100));
    received += drain(&mailbox).len();
    h.advance(Duration::from_millis(200));
    received += drain(&mailbox).len();
    let dead = h.system.dead_letters().len();
    let (router, _) = h.system.get_stats();
    assert_eq!(router.messages_pending, 0);
    assert_eq!(received + dead, sent);
    let d = h.system.delivery_stats();
    assert_eq!(d.total_messages, sent as u64);
    assert_eq!(d.delivered, received as u64);
    assert_eq!(d.failed + d.expired, dead as u64);
    assert_eq!(
        d.total_messages,
        d.delivered
            + d.acknowledged
            + d.failed
            + d.expired
            + d.duplicates
            + d.pending
            + d.in_transit
    );
}

#[test]
fn driver_thread_fires_retries_by_itself() {
    let mut config = RouterConfig::default();
    config.delivery_config.retry_delay = Duration::from_millis(5);
    let system = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: 1,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mailbox = system.get_mailbox(&pid).unwrap();
    system.send_message(envelope(&pid, 1)).unwrap();
    system.send_message(envelope(&pid, 2)).unwrap(); // full: the driver thread retries
    assert!(mailbox.receive_timeout(Duration::from_secs(5)).is_ok());
    let second = mailbox.receive_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        second.payload::<serde_json::Value>(),
        Some(&json!({"n": 2}))
    );
    system.shutdown().unwrap();
}

#[test]
fn shutdown_dead_letters_what_is_still_tracked() {
    let h = harness(DeliveryGuarantee::AtLeastOnce, 1, |_| {});
    let (pid, _mailbox) = h.agent();
    h.system.send_message(envelope(&pid, 1)).unwrap();
    h.system.send_message(envelope(&pid, 2)).unwrap(); // waiting for a retry
    h.system.shutdown().unwrap();
    let reasons: Vec<_> = h
        .system
        .dead_letters()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    assert!(reasons.contains(&DeadLetterReason::Shutdown), "{reasons:?}");
}

use std::future::Future;
