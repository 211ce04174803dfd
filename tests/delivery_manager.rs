//! `DeliveryManager`: the seed's retry and statistics examples, the record lifecycle,
//! retry candidates on a manual clock, the backoff schedule and the record bound.

use std::sync::Arc;
use std::time::Duration;

use terraphim_agent_messaging::{
    AgentPid, DeliveryConfig, DeliveryGuarantee, DeliveryManager, DeliveryOptions, DeliveryStats,
    DeliveryStatus, ManualClock, MessageEnvelope, MessageId, MessagingError,
};

fn envelope(options: DeliveryOptions) -> MessageEnvelope {
    MessageEnvelope::new(
        AgentPid::new(),
        "test_message".to_string(),
        serde_json::json!({"data": "test"}),
        options,
    )
    .with_from(AgentPid::new())
}

fn on_clock(config: DeliveryConfig) -> (DeliveryManager, ManualClock) {
    let clock = ManualClock::new();
    let manager = DeliveryManager::with_clock(config, Arc::new(clock.clone())).unwrap();
    (manager, clock)
}

fn with_guarantee(guarantee: DeliveryGuarantee) -> DeliveryConfig {
    DeliveryConfig {
        guarantee,
        ..DeliveryConfig::default()
    }
}

/// The seed's "Retry Logic" example, sync, with a failed message to retry.
#[test]
fn seed_retry_logic() {
    let delivery_manager = DeliveryManager::new(DeliveryConfig::default());
    let failed = envelope(DeliveryOptions::default());
    delivery_manager.record_message(&failed).unwrap();
    delivery_manager.mark_in_transit(&failed.id).unwrap();
    delivery_manager
        .mark_failed(&failed.id, "network error".into())
        .unwrap();

    let retry_candidates = delivery_manager.get_retry_candidates();
    assert_eq!(retry_candidates.len(), 1);
    for envelope in retry_candidates {
        assert_eq!(envelope.id, failed.id);
        assert_eq!(envelope.attempts, 1);
        let delay = delivery_manager.calculate_retry_delay(envelope.attempts);
        assert_eq!(delay, Duration::from_millis(200));
    }
}

/// The seed's "Delivery Statistics" example, sync, on 3 acknowledged and 2 failed.
#[test]
fn seed_statistics() {
    let delivery_manager = DeliveryManager::new(DeliveryConfig::default());
    for i in 0..5 {
        let e = envelope(DeliveryOptions::default());
        delivery_manager.record_message(&e).unwrap();
        delivery_manager.mark_in_transit(&e.id).unwrap();
        if i < 3 {
            delivery_manager.mark_delivered(&e.id).unwrap();
            delivery_manager.mark_acknowledged(&e.id).unwrap();
        } else {
            delivery_manager
                .mark_failed(&e.id, "test error".into())
                .unwrap();
        }
    }
    let stats = delivery_manager.get_stats();
    assert_eq!(stats.total_messages, 5);
    assert_eq!((stats.acknowledged, stats.failed), (3, 2));
    assert_eq!(stats.success_rate(), 0.6);
    assert_eq!(stats.failure_rate(), 0.4);
    assert_eq!(stats.average_attempts(), 1.0);
    assert_eq!(stats.total_attempts, 5);
}

#[test]
fn rates_at_zero() {
    let stats = DeliveryManager::new(DeliveryConfig::default()).get_stats();
    assert_eq!(stats, DeliveryStats::default());
    assert_eq!(stats.success_rate(), 0.0);
    assert_eq!(stats.failure_rate(), 0.0);
    assert_eq!(stats.average_attempts(), 0.0);
}

#[test]
fn lifecycle() {
    let (manager, clock) = on_clock(DeliveryConfig::default());
    let e = envelope(DeliveryOptions::default());
    manager.record_message(&e).unwrap();
    let r = manager.get_delivery_record(&e.id).unwrap();
    assert_eq!(r.status, DeliveryStatus::Pending);
    assert_eq!((r.attempts, &r.from, &r.to), (0, &e.from, &e.to));
    assert!(r.last_attempt.is_none() && r.delivered_at.is_none());
    assert!(!r.is_final_state());

    clock.advance(Duration::from_secs(1));
    manager.mark_in_transit(&e.id).unwrap();
    let r = manager.get_delivery_record(&e.id).unwrap();
    assert_eq!(
        (r.status.clone(), r.attempts),
        (DeliveryStatus::InTransit, 1)
    );
    let since_created = (r.last_attempt.unwrap() - r.created_at).to_std().unwrap();
    assert_eq!(
        since_created,
        Duration::from_secs(1),
        "timestamps follow the clock"
    );

    manager.mark_delivered(&e.id).unwrap();
    assert_eq!(manager.get_stats().delivered, 1);
    manager.mark_acknowledged(&e.id).unwrap();
    let r = manager.get_delivery_record(&e.id).unwrap();
    assert_eq!(r.status, DeliveryStatus::Acknowledged);
    assert!(r.delivered_at.is_some() && r.acknowledged_at.is_some());
    assert!(r.is_final_state());

    // Acknowledged is terminal: a late retry outcome does not resurrect it.
    manager.mark_in_transit(&e.id).unwrap();
    manager.mark_failed(&e.id, "late".into()).unwrap();
    let r = manager.get_delivery_record(&e.id).unwrap();
    assert_eq!((r.status, r.attempts), (DeliveryStatus::Acknowledged, 1));

    let failed = envelope(DeliveryOptions::default());
    manager.record_message(&failed).unwrap();
    manager.mark_failed(&failed.id, "boom".into()).unwrap();
    let r = manager.get_delivery_record(&failed.id).unwrap();
    assert_eq!(r.status, DeliveryStatus::Failed("boom".into()));
    assert_eq!(r.error_message.as_deref(), Some("boom"));

    let expired = envelope(DeliveryOptions::default());
    manager.record_message(&expired).unwrap();
    manager.mark_expired(&expired.id).unwrap();
    manager.mark_delivered(&expired.id).unwrap();
    assert_eq!(
        manager.get_delivery_record(&expired.id).unwrap().status,
        DeliveryStatus::Expired
    );

    let stats = manager.get_stats();
    assert_eq!(
        (
            stats.total_messages,
            stats.acknowledged,
            stats.failed,
            stats.expired
        ),
        (3, 1, 1, 1)
    );
    let removed = manager.remove(&failed.id).unwrap();
    assert_eq!(removed.message_id, failed.id);
    assert!(manager.get_delivery_record(&failed.id).is_none());
    assert_eq!(manager.get_stats().total_messages, 2);
    assert_eq!(manager.get_stats().failed, 0);
    assert!(manager.remove(&failed.id).is_none());
}

#[test]
fn at_most_once_delivered_is_acknowledged() {
    let (manager, _clock) = on_clock(with_guarantee(DeliveryGuarantee::AtMostOnce));
    let e = envelope(DeliveryOptions::default());
    manager.record_message(&e).unwrap();
    manager.mark_in_transit(&e.id).unwrap();
    manager.mark_delivered(&e.id).unwrap();
    assert_eq!(
        manager.get_delivery_record(&e.id).unwrap().status,
        DeliveryStatus::Acknowledged
    );
    // Never a retry candidate, even failed.
    let f = envelope(DeliveryOptions::default());
    manager.record_message(&f).unwrap();
    manager.mark_failed(&f.id, "full".into()).unwrap();
    assert!(manager.get_retry_candidates().is_empty());
}

#[test]
fn unknown_ids() {
    let manager = DeliveryManager::new(DeliveryConfig::default());
    let id = MessageId::new();
    let results = [
        manager.mark_in_transit(&id),
        manager.mark_delivered(&id),
        manager.mark_acknowledged(&id),
        manager.mark_failed(&id, "x".into()),
        manager.mark_expired(&id),
    ];
    for result in results {
        match result {
            Err(MessagingError::UnknownMessage(unknown)) => assert_eq!(unknown, id),
            other => panic!("{other:?}"),
        }
    }
    assert!(manager.get_delivery_record(&id).is_none());
    assert!(manager.remove(&id).is_none());
}

#[test]
fn exactly_once_duplicate_record() {
    let manager = DeliveryManager::new(with_guarantee(DeliveryGuarantee::ExactlyOnce));
    let e = envelope(DeliveryOptions::default());
    manager.record_message(&e).unwrap();
    manager.mark_in_transit(&e.id).unwrap();
    manager.record_message(&e).unwrap();
    let stats = manager.get_stats();
    assert_eq!(
        (stats.total_messages, stats.in_transit),
        (1, 1),
        "not counted twice"
    );
    assert_eq!(
        manager.get_delivery_record(&e.id).unwrap().attempts,
        1,
        "kept"
    );

    // Other guarantees start the record afresh (still one record).
    let manager = DeliveryManager::new(DeliveryConfig::default());
    manager.record_message(&e).unwrap();
    manager.mark_in_transit(&e.id).unwrap();
    manager.record_message(&e).unwrap();
    let stats = manager.get_stats();
    assert_eq!(
        (stats.total_messages, stats.pending, stats.total_attempts),
        (1, 1, 0)
    );
}

#[test]
fn retry_candidates_after_ack_timeout() {
    let (manager, clock) = on_clock(DeliveryConfig {
        acknowledgment_timeout: Duration::from_secs(30),
        ..DeliveryConfig::default()
    });
    let acked = DeliveryOptions {
        require_ack: true,
        ..DeliveryOptions::default()
    };
    let delivered = envelope(acked.clone());
    let in_transit = envelope(DeliveryOptions::default());
    let no_ack = envelope(DeliveryOptions::default());
    for e in [&delivered, &in_transit, &no_ack] {
        manager.record_message(e).unwrap();
        manager.mark_in_transit(&e.id).unwrap();
    }
    manager.mark_delivered(&delivered.id).unwrap();
    manager.mark_delivered(&no_ack.id).unwrap();

    clock.advance(Duration::from_secs(30) - Duration::from_millis(1));
    assert!(
        manager.get_retry_candidates().is_empty(),
        "before the timeout"
    );

    clock.advance(Duration::from_millis(1));
    let ids: Vec<MessageId> = manager
        .get_retry_candidates()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        ids,
        vec![delivered.id.clone(), in_transit.id.clone()],
        "oldest first"
    );

    // An ack ends it; a redelivery restarts the timeout.
    manager.mark_acknowledged(&delivered.id).unwrap();
    manager.mark_in_transit(&in_transit.id).unwrap();
    assert!(manager.get_retry_candidates().is_empty());
    clock.advance(Duration::from_secs(30));
    let again = manager.get_retry_candidates();
    assert_eq!(again.len(), 1);
    assert_eq!((&again[0].id, again[0].attempts), (&in_transit.id, 2));
}

#[test]
fn retry_budget_is_first_attempt_plus_max_retries() {
    let (manager, _clock) = on_clock(DeliveryConfig::default()); // max_retries 3
    let e = envelope(DeliveryOptions::default());
    manager.record_message(&e).unwrap();
    let mut redeliveries = 0;
    loop {
        manager.mark_in_transit(&e.id).unwrap();
        manager.mark_failed(&e.id, "full".into()).unwrap();
        if manager.get_retry_candidates().is_empty() {
            break;
        }
        redeliveries += 1;
    }
    assert_eq!(redeliveries, 3);
    assert_eq!(manager.get_delivery_record(&e.id).unwrap().attempts, 4);

    // The per-message override applies.
    let once = envelope(DeliveryOptions {
        max_retries: 1,
        ..DeliveryOptions::default()
    });
    manager.record_message(&once).unwrap();
    manager.mark_in_transit(&once.id).unwrap();
    manager.mark_failed(&once.id, "full".into()).unwrap();
    assert_eq!(manager.get_retry_candidates().len(), 1);
    manager.mark_in_transit(&once.id).unwrap();
    manager.mark_failed(&once.id, "full".into()).unwrap();
    assert!(manager.get_retry_candidates().is_empty());
}

#[test]
fn retry_delay_sequence() {
    let manager = DeliveryManager::new(DeliveryConfig::default());
    let delays: Vec<u128> = (0..12)
        .map(|a| manager.calculate_retry_delay(a).as_millis())
        .collect();
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
    );
    assert_eq!(
        manager.calculate_retry_delay(u32::MAX),
        Duration::from_secs(30)
    );
}

#[test]
fn bad_config() {
    for m in [f64::NAN, f64::INFINITY, -2.0, 0.5] {
        let config = DeliveryConfig {
            retry_backoff_multiplier: m,
            ..DeliveryConfig::default()
        };
        match DeliveryManager::try_new(config.clone()) {
            Err(e @ MessagingError::Configuration(_)) => {
                assert!(e.to_string().contains("retry_backoff_multiplier"), "{e}")
            }
            other => panic!("{m}: {other:?}"),
        }
        // `new` falls back to the default multiplier rather than failing.
        let manager = DeliveryManager::new(config);
        assert_eq!(manager.calculate_retry_delay(1), Duration::from_millis(200));
    }
    let zero = DeliveryManager::try_new(DeliveryConfig {
        retry_delay: Duration::ZERO,
        max_retries: u32::MAX,
        ..DeliveryConfig::default()
    })
    .unwrap();
    assert_eq!(
        zero.calculate_retry_delay(0),
        Duration::from_millis(1),
        "clamped"
    );
}

#[test]
fn bound_evicts_oldest_final() {
    let (manager, clock) = on_clock(DeliveryConfig {
        max_delivery_records: 3,
        ..DeliveryConfig::default()
    });
    let a = envelope(DeliveryOptions::default());
    let b = envelope(DeliveryOptions::default());
    let c = envelope(DeliveryOptions::default());
    for e in [&a, &b, &c] {
        manager.record_message(e).unwrap();
        manager.mark_in_transit(&e.id).unwrap();
    }
    // Final in the order c, a; b stays in flight.
    manager.mark_delivered(&c.id).unwrap(); // no ack asked: final
    clock.advance(Duration::from_millis(5));
    manager.mark_expired(&a.id).unwrap();

    let d = envelope(DeliveryOptions::default());
    manager.record_message(&d).unwrap();
    assert!(
        manager.get_delivery_record(&c.id).is_none(),
        "oldest final evicted"
    );
    assert!(manager.get_delivery_record(&a.id).is_some());
    assert!(
        manager.get_delivery_record(&b.id).is_some(),
        "in flight kept"
    );

    let e = envelope(DeliveryOptions::default());
    manager.record_message(&e).unwrap();
    assert!(manager.get_delivery_record(&a.id).is_none());
    assert_eq!(manager.len(), 3);
    let stats = manager.get_stats();
    assert_eq!(
        (stats.total_messages, stats.in_transit, stats.pending),
        (3, 1, 2)
    );
}

#[test]
fn bound_refuses_when_all_in_flight() {
    let (manager, _clock) = on_clock(DeliveryConfig {
        max_delivery_records: 2,
        ..DeliveryConfig::default()
    });
    let awaiting_ack = envelope(DeliveryOptions {
        require_ack: true,
        ..DeliveryOptions::default()
    });
    let retrying = envelope(DeliveryOptions::default());
    manager.record_message(&awaiting_ack).unwrap();
    manager.record_message(&retrying).unwrap();
    manager.mark_in_transit(&awaiting_ack.id).unwrap();
    manager.mark_delivered(&awaiting_ack.id).unwrap(); // awaits its ack: not final
    manager.mark_in_transit(&retrying.id).unwrap();
    manager.mark_failed(&retrying.id, "full".into()).unwrap(); // retries left: not final

    let third = envelope(DeliveryOptions::default());
    match manager.record_message(&third) {
        Err(e @ MessagingError::Overloaded(_)) => assert!(e.is_recoverable()),
        other => panic!("{other:?}"),
    }
    assert!(manager.get_delivery_record(&third.id).is_none());
    assert_eq!(manager.get_stats().total_messages, 2);
    // A re-record of a kept id needs no room.
    manager.record_message(&retrying).unwrap();

    manager.mark_acknowledged(&awaiting_ack.id).unwrap();
    manager.record_message(&third).unwrap();
    assert!(manager.get_delivery_record(&awaiting_ack.id).is_none());
}

#[test]
fn cleanup_drops_old_final_records() {
    let (manager, clock) = on_clock(DeliveryConfig {
        cleanup_interval: Duration::from_secs(60),
        ..DeliveryConfig::default()
    });
    let old = envelope(DeliveryOptions::default());
    let young = envelope(DeliveryOptions::default());
    let open = envelope(DeliveryOptions::default());
    for e in [&old, &young, &open] {
        manager.record_message(e).unwrap();
    }
    manager.mark_expired(&old.id).unwrap();
    clock.advance(Duration::from_secs(30));
    manager.mark_acknowledged(&young.id).unwrap();
    clock.advance(Duration::from_secs(30));
    assert_eq!(manager.cleanup(), 1);
    assert!(manager.get_delivery_record(&old.id).is_none());
    assert!(manager.get_delivery_record(&young.id).is_some());
    clock.advance(Duration::from_secs(30));
    assert_eq!(manager.cleanup(), 1);
    assert_eq!(manager.cleanup(), 0);
    assert_eq!(manager.len(), 1, "pending records are never cleaned up");
}

#[test]
fn shared_across_threads() {
    let manager = Arc::new(DeliveryManager::new(DeliveryConfig::default()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let manager = manager.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    let e = envelope(DeliveryOptions::default());
                    manager.record_message(&e).unwrap();
                    manager.mark_in_transit(&e.id).unwrap();
                    manager.mark_delivered(&e.id).unwrap();
                    manager.mark_acknowledged(&e.id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = manager.get_stats();
    assert_eq!((stats.total_messages, stats.acknowledged), (2000, 2000));
    assert_eq!(stats.total_attempts, 2000);
}
