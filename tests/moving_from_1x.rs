//! The calls a 1.x user makes, against this crate: the items the README's "Moving from
//! 1.x" table marks as the same, and the ones it marks as changed on purpose, each with
//! the behaviour that table promises. Public API only.
//!
//! Sections: envelope expiry at an explicit time; `DeliveryRecord`'s own lifecycle;
//! `MailboxStats`' counting hooks and the mailbox's own counting; `from()` of an
//! envelope without a sender; pids and supervisor ids as 1.x built them; what changed on
//! purpose in `DeliveryManager`; then the same calls through `::tokio`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeliveryConfig, DeliveryGuarantee, DeliveryManager,
    DeliveryOptions, DeliveryRecord, DeliveryStatus, MailboxConfig, MailboxStats, ManualClock,
    MessageEnvelope, MessageId, MessagePriority, MessageSystem, MessagingError, RouterConfig,
    SupervisorId, TimerDriver,
};
use uuid::Uuid;

/// An envelope to nobody in particular whose timeout is `timeout`.
fn envelope_with_timeout(timeout: Duration) -> MessageEnvelope {
    let options = DeliveryOptions {
        timeout,
        ..DeliveryOptions::default()
    };
    MessageEnvelope::new(AgentPid::new(), "tick".into(), json!({"n": 7}), options)
}

// ===== MessageEnvelope::is_expired(now) =====

#[test]
fn expiry_at_exactly_the_timeout_is_not_yet_expired() {
    let envelope = envelope_with_timeout(Duration::from_secs(30));
    let deadline = envelope.created_at + TimeDelta::seconds(30);

    assert!(!envelope.is_expired(envelope.created_at));
    assert!(!envelope.is_expired(deadline - TimeDelta::milliseconds(1)));
    assert!(
        !envelope.is_expired(deadline),
        "exactly `timeout` after creation is still in time"
    );
    assert!(envelope.is_expired(deadline + TimeDelta::milliseconds(1)));
    assert!(envelope.is_expired(deadline + TimeDelta::nanoseconds(1)));
    assert!(envelope.is_expired(deadline + TimeDelta::days(365)));
}

#[test]
fn expiry_before_creation_counts_as_no_time_passed() {
    let envelope = envelope_with_timeout(Duration::from_millis(10));
    assert!(!envelope.is_expired(envelope.created_at - TimeDelta::hours(1)));
    assert!(!envelope.is_expired(DateTime::<Utc>::MIN_UTC));
    assert!(envelope.is_expired(DateTime::<Utc>::MAX_UTC));
}

#[test]
fn expiry_with_a_zero_timeout_starts_right_after_creation() {
    let envelope = envelope_with_timeout(Duration::ZERO);
    assert!(!envelope.is_expired(envelope.created_at));
    assert!(envelope.is_expired(envelope.created_at + TimeDelta::nanoseconds(1)));
}

#[test]
fn expiry_follows_created_at_when_it_is_set_by_hand() {
    // A 1.x user may rebuild an envelope read back from storage: `created_at` is a
    // public field, and expiry is measured from it.
    let mut envelope = envelope_with_timeout(Duration::from_secs(60));
    let now = Utc::now();
    envelope.created_at = now - TimeDelta::seconds(61);
    assert!(envelope.is_expired(now));
    envelope.created_at = now - TimeDelta::seconds(60);
    assert!(!envelope.is_expired(now));
}

#[test]
fn expiry_now_reads_the_wall_clock() {
    let fresh = envelope_with_timeout(Duration::from_secs(3600));
    assert!(!fresh.is_expired_now());

    let mut stale = envelope_with_timeout(Duration::from_secs(1));
    stale.created_at = Utc::now() - TimeDelta::seconds(2);
    assert!(stale.is_expired_now());
}

// ===== DeliveryRecord's own lifecycle =====

/// Runs `step` on `record` and returns the wall-clock window it ran in.
fn timed(
    record: &mut DeliveryRecord,
    step: impl FnOnce(&mut DeliveryRecord),
) -> (DateTime<Utc>, DateTime<Utc>) {
    let before = Utc::now();
    step(record);
    (before, Utc::now())
}

fn within(stamp: Option<DateTime<Utc>>, (from, to): (DateTime<Utc>, DateTime<Utc>)) -> bool {
    stamp.is_some_and(|t| from <= t && t <= to)
}

#[test]
fn record_lifecycle_sets_each_status_and_its_own_timestamp() {
    let (id, from, to) = (MessageId::new(), AgentPid::new(), AgentPid::new());
    let mut record = DeliveryRecord::new(id.clone(), Some(from.clone()), to.clone());
    assert_eq!(record.status, DeliveryStatus::Pending);
    assert_eq!((record.attempts, record.last_attempt), (0, None));
    assert_eq!((record.delivered_at, record.acknowledged_at), (None, None));
    assert_eq!(record.error_message, None);
    assert!(!record.is_final_state());

    let sent = timed(&mut record, DeliveryRecord::mark_in_transit);
    assert_eq!(record.status, DeliveryStatus::InTransit);
    assert_eq!(record.attempts, 1);
    assert!(within(record.last_attempt, sent));
    assert_eq!((record.delivered_at, record.acknowledged_at), (None, None));
    assert!(!record.is_final_state());

    let arrived = timed(&mut record, DeliveryRecord::mark_delivered);
    assert_eq!(record.status, DeliveryStatus::Delivered);
    assert!(within(record.delivered_at, arrived));
    assert!(
        within(record.last_attempt, sent),
        "the attempt's time is kept"
    );
    assert_eq!(record.acknowledged_at, None);
    assert_eq!(record.attempts, 1, "delivery is not another attempt");
    assert!(!record.is_final_state());

    let acked = timed(&mut record, DeliveryRecord::mark_acknowledged);
    assert_eq!(record.status, DeliveryStatus::Acknowledged);
    assert!(within(record.acknowledged_at, acked));
    assert!(within(record.delivered_at, arrived));
    assert!(record.last_attempt <= record.delivered_at);
    assert!(record.delivered_at <= record.acknowledged_at);
    assert!(record.is_final_state());

    // Identity never changes along the way.
    assert_eq!(record.message_id, id);
    assert_eq!(record.from, Some(from));
    assert_eq!(record.to, to);
    assert_eq!(record.error_message, None);
}

#[test]
fn record_failure_keeps_the_reason_and_a_retry_counts_again() {
    let mut record = DeliveryRecord::new(MessageId::new(), None, AgentPid::new());
    record.mark_in_transit();
    let first_attempt = record.last_attempt;

    record.mark_failed("mailbox full".to_string());
    assert_eq!(record.status, DeliveryStatus::Failed("mailbox full".into()));
    assert_eq!(record.error_message.as_deref(), Some("mailbox full"));
    assert_eq!(record.last_attempt, first_attempt, "failing stamps nothing");
    assert_eq!((record.delivered_at, record.acknowledged_at), (None, None));
    assert!(record.is_final_state(), "1.x's notion: Failed is final");

    std::thread::sleep(Duration::from_millis(2));
    let retried = timed(&mut record, DeliveryRecord::mark_in_transit);
    assert_eq!(record.status, DeliveryStatus::InTransit);
    assert_eq!(record.attempts, 2);
    assert!(within(record.last_attempt, retried));
    assert!(record.last_attempt > first_attempt);
    assert_eq!(
        record.error_message.as_deref(),
        Some("mailbox full"),
        "the last failure's reason stays until the next one"
    );

    record.mark_failed("agent gone".to_string());
    assert_eq!(record.error_message.as_deref(), Some("agent gone"));
}

#[test]
fn record_expiry_is_final_and_stamps_nothing() {
    let mut record = DeliveryRecord::new(MessageId::new(), None, AgentPid::new());
    let created_at = record.created_at;
    record.mark_expired();
    assert_eq!(record.status, DeliveryStatus::Expired);
    assert!(record.is_final_state());
    assert_eq!(record.created_at, created_at);
    assert_eq!(record.attempts, 0);
    assert_eq!(record.last_attempt, None);
    assert_eq!((record.delivered_at, record.acknowledged_at), (None, None));
}

#[test]
fn record_setters_apply_whatever_the_status_like_1x() {
    // A record the user owns is plain data: the setters do not guard terminal states
    // (the DeliveryManager's mark_* do, for records it tracks).
    let mut record = DeliveryRecord::new(MessageId::new(), None, AgentPid::new());
    record.mark_acknowledged();
    record.mark_failed("late failure".into());
    assert_eq!(record.status, DeliveryStatus::Failed("late failure".into()));
    assert!(record.acknowledged_at.is_some(), "earlier stamps stay");

    record.mark_expired();
    record.mark_delivered();
    assert_eq!(record.status, DeliveryStatus::Delivered);

    record.attempts = u32::MAX;
    record.mark_in_transit();
    assert_eq!(
        record.attempts,
        u32::MAX,
        "saturates instead of overflowing"
    );
}

// ===== MailboxStats hooks =====

#[test]
fn stats_hooks_count_in_and_out_like_1x() {
    let pid = AgentPid::new();
    let mut stats = MailboxStats::new(pid.clone());
    assert_eq!(stats.agent_id, pid);
    assert_eq!(
        (
            stats.total_messages_received,
            stats.total_messages_processed
        ),
        (0, 0)
    );
    assert_eq!(
        (stats.current_queue_size, stats.max_queue_size_reached),
        (0, 0)
    );
    assert_eq!(
        (stats.last_message_received, stats.last_message_processed),
        (None, None)
    );
    assert_eq!(stats.average_processing_time, Duration::ZERO);
    assert_eq!(stats.messages_dead_lettered, 0);

    let before = Utc::now();
    for _ in 0..3 {
        stats.record_message_received();
    }
    let received = (before, Utc::now());
    assert_eq!(stats.total_messages_received, 3);
    assert_eq!(stats.current_queue_size, 3);
    assert_eq!(stats.max_queue_size_reached, 3);
    assert!(within(stats.last_message_received, received));
    assert_eq!(stats.last_message_processed, None);

    let before = Utc::now();
    stats.record_message_processed(Duration::from_millis(10));
    stats.record_message_processed(Duration::from_millis(40));
    let processed = (before, Utc::now());
    assert_eq!(stats.total_messages_processed, 2);
    assert_eq!(stats.current_queue_size, 1);
    assert_eq!(stats.max_queue_size_reached, 3, "the high-water mark stays");
    assert_eq!(stats.average_processing_time, Duration::from_millis(25));
    assert!(within(stats.last_message_processed, processed));

    stats.record_message_received();
    assert_eq!(
        (stats.current_queue_size, stats.max_queue_size_reached),
        (2, 3)
    );
}

#[test]
fn stats_hooks_average_every_sample_equally() {
    let mut stats = MailboxStats::new(AgentPid::new());
    let samples = [7u64, 1, 1, 1, 5, 9, 3, 13];
    for ms in samples {
        stats.record_message_processed(Duration::from_millis(ms));
    }
    let mean = samples.iter().sum::<u64>() / samples.len() as u64; // 5 ms exactly
    assert_eq!(stats.average_processing_time, Duration::from_millis(mean));
    assert_eq!(stats.total_messages_processed, samples.len() as u64);
}

#[test]
fn stats_hooks_never_underflow_or_overflow() {
    let mut stats = MailboxStats::new(AgentPid::new());
    stats.record_message_processed(Duration::MAX);
    assert_eq!(
        stats.current_queue_size, 0,
        "out with nothing queued stays at 0"
    );
    assert_eq!(stats.average_processing_time, Duration::MAX);
    stats.record_message_processed(Duration::MAX);
    assert_eq!(stats.average_processing_time, Duration::MAX);
    stats.record_message_processed(Duration::ZERO);
    assert!(stats.average_processing_time < Duration::MAX);

    stats.total_messages_received = u64::MAX;
    stats.current_queue_size = usize::MAX;
    stats.record_message_received();
    assert_eq!(stats.total_messages_received, u64::MAX);
    assert_eq!(stats.current_queue_size, usize::MAX);
}

#[test]
fn a_mailbox_counts_every_way_out_without_hooks() {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    for n in 0..5u32 {
        mailbox
            .send(AgentMessage::cast(AgentPid::new(), n))
            .unwrap();
    }
    assert_eq!(mailbox.stats().total_messages_received, 5);
    assert_eq!(mailbox.stats().current_queue_size, 5);

    mailbox.receive().unwrap();
    mailbox.try_receive().unwrap().unwrap();
    mailbox.receive_timeout(Duration::from_secs(1)).unwrap();
    let mut batch = Vec::new();
    assert_eq!(mailbox.receive_many(&mut batch, 8).unwrap(), 2);

    let stats = mailbox.stats();
    assert_eq!(stats.total_messages_received, 5);
    assert_eq!(stats.total_messages_processed, 5);
    assert_eq!(stats.current_queue_size, 0);
    assert!(stats.max_queue_size_reached >= 1);
    assert!(stats.last_message_received.is_some());
    assert!(stats.last_message_processed.is_some());
}

#[test]
fn hooks_on_a_snapshot_change_the_copy_only() {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    mailbox
        .send(AgentMessage::cast(AgentPid::new(), "one"))
        .unwrap();

    let mut snapshot = mailbox.stats();
    snapshot.record_message_received();
    snapshot.record_message_processed(Duration::from_millis(3));
    assert_eq!(snapshot.total_messages_received, 2);
    assert_eq!(snapshot.total_messages_processed, 1);

    let live = mailbox.stats();
    assert_eq!(live.total_messages_received, 1);
    assert_eq!(live.total_messages_processed, 0);
    assert_eq!(live.current_queue_size, 1);
}

#[test]
fn stats_serialised_by_1x_still_deserialise() {
    // 1.x's MailboxStats had no `messages_dead_lettered`, its DeliveryStats no
    // `duplicates`.
    let pid = AgentPid::new();
    let mailbox: MailboxStats = serde_json::from_value(json!({
        "agent_id": pid,
        "total_messages_received": 4,
        "total_messages_processed": 3,
        "current_queue_size": 1,
        "max_queue_size_reached": 2,
        "last_message_received": null,
        "last_message_processed": null,
        "average_processing_time": {"secs": 0, "nanos": 1500},
    }))
    .unwrap();
    assert_eq!(mailbox.agent_id, pid);
    assert_eq!(mailbox.total_messages_received, 4);
    assert_eq!(mailbox.average_processing_time, Duration::from_nanos(1500));
    assert_eq!(mailbox.messages_dead_lettered, 0);

    let delivery: terraphim_agent_messaging::DeliveryStats = serde_json::from_value(json!({
        "total_messages": 2, "pending": 0, "in_transit": 0, "delivered": 1,
        "acknowledged": 1, "failed": 0, "expired": 0, "total_attempts": 2,
    }))
    .unwrap();
    assert_eq!(delivery.total_messages, 2);
    assert_eq!(delivery.duplicates, 0);
}

#[test]
fn envelopes_and_records_keep_1x_s_json() {
    // The field names and shapes 1.x wrote; each reads back and writes the same.
    let (id, from, to) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let envelope = json!({
        "id": id, "from": from, "to": to, "message_type": "job",
        "payload": {"n": 1},
        "delivery_options": {
            "priority": "High", "timeout": {"secs": 30, "nanos": 0}, "require_ack": true,
            "max_retries": 3, "retry_delay": {"secs": 0, "nanos": 100000000},
        },
        "created_at": "2025-01-02T03:04:05Z", "attempts": 2,
    });
    let read: MessageEnvelope = serde_json::from_value(envelope.clone()).unwrap();
    assert_eq!(read.id, MessageId(id));
    assert_eq!(read.from, Some(AgentPid(from)));
    assert_eq!(read.delivery_options.priority, MessagePriority::High);
    assert_eq!(read.attempts, 2);
    assert_eq!(serde_json::to_value(&read).unwrap(), envelope);

    let record = json!({
        "message_id": id, "from": null, "to": to, "status": {"Failed": "full"},
        "attempts": 1, "created_at": "2025-01-02T03:04:05Z",
        "last_attempt": "2025-01-02T03:04:06Z", "delivered_at": null,
        "acknowledged_at": null, "error_message": "full",
    });
    let read: DeliveryRecord = serde_json::from_value(record.clone()).unwrap();
    assert_eq!(read.status, DeliveryStatus::Failed("full".into()));
    assert_eq!(serde_json::to_value(&read).unwrap(), record);
}

#[test]
fn configurations_keep_1x_s_json() {
    let delivery = json!({
        "guarantee": "ExactlyOnce", "max_retries": 5,
        "retry_delay": {"secs": 0, "nanos": 250000000}, "retry_backoff_multiplier": 1.5,
        "max_retry_delay": {"secs": 10, "nanos": 0},
        "acknowledgment_timeout": {"secs": 2, "nanos": 0},
        "cleanup_interval": {"secs": 60, "nanos": 0}, "max_delivery_records": 500,
    });
    let read: DeliveryConfig = serde_json::from_value(delivery.clone()).unwrap();
    assert_eq!(read.guarantee, DeliveryGuarantee::ExactlyOnce);
    assert_eq!(read.retry_delay, Duration::from_millis(250));
    assert_eq!(serde_json::to_value(&read).unwrap(), delivery);

    let mailbox = json!({
        "max_messages": 8, "preserve_order": false, "enable_persistence": false,
        "stats_interval": {"secs": 60, "nanos": 0},
    });
    let read: MailboxConfig = serde_json::from_value(mailbox.clone()).unwrap();
    assert_eq!(read.max_messages, 8);
    assert_eq!(serde_json::to_value(&read).unwrap(), mailbox);
}

#[test]
fn wait_for_shutdown_returns_once_the_mailbox_closes() {
    let system = MessageSystem::new(RouterConfig::default());
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mailbox = system.get_mailbox(&pid).unwrap();

    let waiter = {
        let mailbox = mailbox.clone();
        std::thread::spawn(move || mailbox.wait_for_shutdown())
    };
    std::thread::sleep(Duration::from_millis(5));
    assert!(!waiter.is_finished());
    system.unregister_agent(&pid).unwrap();
    waiter.join().unwrap();
    assert!(mailbox.is_closed());
    mailbox.wait_for_shutdown(); // already closed: returns at once
}

// ===== from() of a routed envelope =====

/// An envelope to `to` without a sender (no `with_from`).
fn anonymous(to: &AgentPid, n: u32) -> MessageEnvelope {
    MessageEnvelope::new(
        to.clone(),
        "anonymous".into(),
        json!({ "n": n }),
        DeliveryOptions::default(),
    )
}

#[test]
fn from_of_an_envelope_without_a_sender_is_none() {
    let system = MessageSystem::new(RouterConfig::default());
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mailbox = system.get_mailbox(&pid).unwrap();

    let envelope = anonymous(&pid, 1);
    let id = envelope.id.clone();
    system.send_message(envelope).unwrap();
    let message = mailbox.receive().unwrap();

    assert_eq!(message.from(), None, "no sender was given, none is made up");
    assert_eq!(message.id(), &id);
    assert_eq!(message.message_type(), Some("anonymous"));
    match &message {
        AgentMessage::Cast { from, .. } => assert!(from.is_nil(), "the field holds the nil pid"),
        other => panic!("expected a cast, got {other:?}"),
    }

    // The one-line change for 1.x code that relied on a sender always being there: 1.x
    // made up a fresh pid, and so does `unwrap_or_default`.
    let sender: AgentPid = message.from().cloned().unwrap_or_default();
    assert!(!sender.is_nil());
    system.shutdown().unwrap();
}

#[test]
fn from_of_an_envelope_with_a_sender_is_that_sender() {
    let system = MessageSystem::new(RouterConfig::default());
    let (from, to) = (AgentPid::new(), AgentPid::new());
    system.register_agent(to.clone()).unwrap();
    let mailbox = system.get_mailbox(&to).unwrap();

    system
        .send_message(anonymous(&to, 2).with_from(from.clone()))
        .unwrap();
    assert_eq!(mailbox.receive().unwrap().from(), Some(&from));
    system.shutdown().unwrap();
}

#[test]
fn from_stays_none_on_redelivery() {
    // 1.x made up a different pid on each retry; here a retried copy has no sender either.
    let clock = ManualClock::new();
    let system = MessageSystem::builder(RouterConfig::default())
        .mailbox_config(MailboxConfig {
            max_messages: 1,
            ..MailboxConfig::default()
        })
        .clock(std::sync::Arc::new(clock.clone()))
        .timer_driver(TimerDriver::Manual)
        .build()
        .unwrap();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mailbox = system.get_mailbox(&pid).unwrap();

    system.send_message(anonymous(&pid, 1)).unwrap(); // fills the mailbox
    system.send_message(anonymous(&pid, 2)).unwrap(); // refused for now, retried later
    let first = mailbox.receive().unwrap();
    assert_eq!(first.from(), None);

    clock.advance(Duration::from_secs(1));
    system.run_due_timers();
    let retried = mailbox.try_receive().unwrap().expect("redelivered");
    assert_eq!(
        retried.payload::<serde_json::Value>(),
        Some(&json!({"n": 2}))
    );
    assert_eq!(retried.from(), None);
    system.shutdown().unwrap();
}

#[test]
fn from_of_built_messages_is_their_sender() {
    let pid = AgentPid::new();
    assert_eq!(AgentMessage::cast(pid.clone(), 1u8).from(), Some(&pid));
    let (call, _reply) = AgentMessage::call(pid.clone(), 1u8, Duration::from_secs(1));
    assert_eq!(call.from(), Some(&pid));
    assert_eq!(AgentMessage::reply(pid.clone(), 1u8).from(), None);
    assert_eq!(AgentMessage::ack(MessageId::new()).from(), None);
    // The nil pid means "no sender" (what a routed envelope without one carries).
    assert_eq!(AgentMessage::cast(AgentPid::nil(), 1u8).from(), None);
}

// ===== pids and supervisor ids, as 1.x built them =====

#[test]
fn agent_pid_wraps_a_public_uuid() {
    let uuid = Uuid::new_v4();
    let pid = AgentPid(uuid);
    assert_eq!(pid.0, uuid);
    assert_eq!(pid.as_str(), uuid.to_string());
    assert_eq!(pid.to_string(), uuid.to_string());
    assert_eq!(format!("{pid:?}"), format!("AgentPid({uuid})"));
    assert_eq!(AgentPid(Uuid::nil()), AgentPid::nil());
    // Serialised as 1.x did: the bare UUID string.
    assert_eq!(serde_json::to_value(&pid).unwrap(), json!(uuid.to_string()));
    let back: AgentPid = serde_json::from_value(json!(uuid.to_string())).unwrap();
    assert_eq!(back, pid);
}

#[test]
fn supervisor_id_is_a_uuid_newtype() {
    let a = SupervisorId::new();
    assert_ne!(a, SupervisorId::new());
    assert_ne!(a, SupervisorId::default());
    assert_eq!(a.as_str(), a.0.to_string());
    assert_eq!(a.to_string(), a.0.to_string());
    assert_eq!(format!("{a:?}"), format!("SupervisorId({})", a.0));
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json, json!(a.0.to_string()));
    assert_eq!(serde_json::from_value::<SupervisorId>(json).unwrap(), a);
    let uuid = Uuid::new_v4();
    assert_eq!(SupervisorId(uuid).0, uuid);
}

// ===== DeliveryManager: what changed on purpose =====

fn tracked(manager: &DeliveryManager) -> MessageEnvelope {
    let envelope = anonymous(&AgentPid::new(), 0);
    manager.record_message(&envelope).unwrap();
    envelope
}

#[test]
fn max_retries_counts_retries_after_the_first_attempt() {
    // 1.x stopped offering a failed message once `attempts == max_retries`, the first
    // attempt included; here `max_retries` is what its name says.
    let manager = DeliveryManager::new(DeliveryConfig {
        max_retries: 2,
        ..DeliveryConfig::default()
    });
    let e = tracked(&manager);
    for attempt in 1..=3 {
        manager.mark_in_transit(&e.id).unwrap();
        manager.mark_failed(&e.id, "full".into()).unwrap();
        let retry = manager.get_retry_candidates();
        if attempt <= 2 {
            assert_eq!(retry.len(), 1, "retry {attempt} of 2 is offered");
            assert_eq!(retry[0].attempts, attempt);
        } else {
            assert!(retry.is_empty(), "1 attempt + 2 retries, then no more");
        }
    }
}

#[test]
fn success_rate_counts_delivered_messages_too() {
    // 1.x counted only acknowledged ones, so a delivered message that nobody acks (no
    // `require_ack`) never counted as a success.
    let manager = DeliveryManager::new(DeliveryConfig::default());
    let delivered = tracked(&manager);
    manager.mark_in_transit(&delivered.id).unwrap();
    manager.mark_delivered(&delivered.id).unwrap();
    let failed = tracked(&manager);
    manager.mark_in_transit(&failed.id).unwrap();
    manager.mark_failed(&failed.id, "gone".into()).unwrap();

    let stats = manager.get_stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.total_messages),
        (1, 1, 2)
    );
    assert_eq!(stats.success_rate(), 0.5);
    assert_eq!(stats.failure_rate(), 0.5);
    assert_eq!(stats.average_attempts(), 1.0);
}

#[test]
fn unknown_ids_and_terminal_records() {
    let manager = DeliveryManager::new(DeliveryConfig::default());
    let stranger = MessageId::new();
    // 1.x answered InvalidMessage("... not found ...").
    assert!(matches!(
        manager.mark_delivered(&stranger),
        Err(MessagingError::UnknownMessage(id)) if id == stranger
    ));

    // An acknowledged record stays acknowledged (1.x let a late failure overwrite it).
    let e = tracked(&manager);
    manager.mark_in_transit(&e.id).unwrap();
    manager.mark_acknowledged(&e.id).unwrap();
    manager.mark_failed(&e.id, "late".into()).unwrap();
    let record = manager.get_delivery_record(&e.id).unwrap();
    assert_eq!(record.status, DeliveryStatus::Acknowledged);
    assert_eq!(record.error_message, None);
}

#[test]
fn exactly_once_records_an_id_once_as_1x_did() {
    let manager = DeliveryManager::new(DeliveryConfig {
        guarantee: DeliveryGuarantee::ExactlyOnce,
        ..DeliveryConfig::default()
    });
    let e = tracked(&manager);
    manager.record_message(&e).unwrap();
    assert_eq!(manager.get_stats().total_messages, 1);
}

// ===== the same calls through ::tokio (the one `use` line a 1.x user changes) =====

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use std::time::Duration;

    use chrono::{TimeDelta, Utc};
    use serde_json::json;
    use terraphim_agent_messaging::tokio::{
        AgentMailbox, AgentMessage, AgentPid, DefaultMessageRouter, DeliveryConfig,
        DeliveryManager, DeliveryOptions, DeliveryRecord, DeliveryStatus, MailboxConfig,
        MailboxManager, MailboxStats, MessageEnvelope, MessageId, MessageRouter, MessageSystem,
        MessagingError, RouterConfig, SupervisorId,
    };

    fn envelope(to: &AgentPid, timeout: Duration) -> MessageEnvelope {
        let options = DeliveryOptions {
            timeout,
            ..DeliveryOptions::default()
        };
        MessageEnvelope::new(to.clone(), "job".into(), json!({"n": 1}), options)
    }

    #[test]
    fn expiry_at_an_explicit_time() {
        let e = envelope(&AgentPid::new(), Duration::from_millis(250));
        let deadline = e.created_at + TimeDelta::milliseconds(250);
        assert!(!e.is_expired(deadline));
        assert!(e.is_expired(deadline + TimeDelta::milliseconds(1)));
        assert!(!e.is_expired_now());
    }

    #[test]
    fn record_lifecycle() {
        let mut record = DeliveryRecord::new(MessageId::new(), None, AgentPid::new());
        let before = Utc::now();
        record.mark_in_transit();
        record.mark_delivered();
        record.mark_acknowledged();
        let after = Utc::now();
        assert_eq!(record.status, DeliveryStatus::Acknowledged);
        assert_eq!(record.attempts, 1);
        for stamp in [
            record.last_attempt,
            record.delivered_at,
            record.acknowledged_at,
        ] {
            assert!(stamp.is_some_and(|t| before <= t && t <= after));
        }
        record.mark_failed("x".into());
        assert_eq!(record.error_message.as_deref(), Some("x"));
        record.mark_expired();
        assert_eq!(record.status, DeliveryStatus::Expired);
    }

    #[tokio::test]
    async fn from_of_a_routed_envelope() {
        let system = MessageSystem::new(RouterConfig::default());
        let (sender, receiver) = (AgentPid::new(), AgentPid::new());
        system.register_agent(receiver.clone()).await.unwrap();
        let mailbox = system.get_mailbox(&receiver).await.unwrap();

        let without = envelope(&receiver, Duration::from_secs(30));
        system.send_message(without).await.unwrap();
        let with = envelope(&receiver, Duration::from_secs(30)).with_from(sender.clone());
        system.send_message(with).await.unwrap();

        let first = mailbox.receive().await.unwrap();
        assert_eq!(first.from(), None);
        assert!(!first.from().cloned().unwrap_or_default().is_nil());
        assert_eq!(mailbox.receive().await.unwrap().from(), Some(&sender));
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn stats_hooks_and_the_mailbox_s_own_counting() {
        let mut stats = MailboxStats::new(AgentPid::new());
        stats.record_message_received();
        stats.record_message_processed(Duration::from_micros(8));
        assert_eq!(
            (
                stats.total_messages_received,
                stats.total_messages_processed
            ),
            (1, 1)
        );
        assert_eq!(stats.average_processing_time, Duration::from_micros(8));

        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        for n in 0..3u8 {
            mailbox
                .send(AgentMessage::cast(AgentPid::new(), n))
                .await
                .unwrap();
        }
        mailbox.receive().await.unwrap();
        mailbox.try_receive().await.unwrap().unwrap();
        mailbox
            .receive_timeout(Duration::from_secs(1))
            .await
            .unwrap();
        let mut snapshot = mailbox.stats().await;
        assert_eq!(snapshot.total_messages_received, 3);
        assert_eq!(snapshot.total_messages_processed, 3);
        assert!(mailbox.is_empty().await);

        snapshot.record_message_received();
        assert_eq!(mailbox.stats().await.total_messages_received, 3, "a copy");
    }

    #[tokio::test]
    async fn wait_for_shutdown_after_close() {
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        let waiting = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.wait_for_shutdown().await })
        };
        mailbox.close();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woke after close")
            .unwrap();
        mailbox.wait_for_shutdown().await; // already closed
    }

    #[tokio::test]
    async fn a_standalone_router_into_a_standalone_mailbox() {
        // 1.x's DefaultMessageRouter, used on its own with a mailbox's sender.
        let router = DefaultMessageRouter::new(RouterConfig::default());
        let pid = AgentPid::new();
        let mailbox = AgentMailbox::new(pid.clone(), MailboxConfig::default());
        router
            .register_agent(pid.clone(), mailbox.sender())
            .await
            .unwrap();
        assert_eq!(router.get_stats().await.active_routes, 1);

        router
            .route_message(envelope(&pid, Duration::from_secs(30)))
            .await
            .unwrap();
        let stats = router.get_stats().await;
        assert_eq!((stats.messages_routed, stats.messages_delivered), (1, 1));
        let message = mailbox.receive().await.unwrap();
        assert_eq!(
            message.payload::<serde_json::Value>(),
            Some(&json!({"n": 1}))
        );

        router.unregister_agent(&pid).await.unwrap();
        assert_eq!(router.get_stats().await.active_routes, 0);

        // Changed on purpose: a sender must belong to the pid it is registered under,
        // and a router that was shut down says so (1.x: AgentNotFound).
        let other = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        assert!(router
            .register_agent(pid.clone(), other.sender())
            .await
            .is_err());
        router.shutdown().await.unwrap();
        let refused = router
            .route_message(envelope(&pid, Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert!(matches!(refused, MessagingError::System(_)), "{refused}");
    }

    #[tokio::test]
    async fn delivery_manager_and_mailbox_manager_as_1x_called_them() {
        let manager = DeliveryManager::new(DeliveryConfig::default());
        let e = envelope(&AgentPid::new(), Duration::from_secs(30));
        manager.record_message(&e).await.unwrap();
        manager.mark_in_transit(&e.id).await.unwrap();
        manager.mark_delivered(&e.id).await.unwrap();
        manager.mark_acknowledged(&e.id).await.unwrap();
        let record = manager.get_delivery_record(&e.id).await.unwrap();
        assert_eq!(record.status, DeliveryStatus::Acknowledged);
        assert!(record.is_final_state());
        assert_eq!(manager.get_stats().await.acknowledged, 1);
        assert_eq!(manager.calculate_retry_delay(0), Duration::from_millis(100));
        assert_eq!(manager.calculate_retry_delay(100), Duration::from_secs(30));

        let mailboxes = MailboxManager::new(MailboxConfig::default());
        let pid = AgentPid::new();
        let sender = mailboxes.create_mailbox(pid.clone()).await.unwrap();
        sender
            .send(AgentMessage::cast(AgentPid::new(), 5u8))
            .await
            .unwrap();
        assert!(mailboxes.get_mailbox_sender(&pid).await.is_some());
        let mailbox = mailboxes.get_mailbox(&pid).await.unwrap();
        assert_eq!(mailbox.receive().await.unwrap().payload::<u8>(), Some(&5));
        assert_eq!(mailboxes.get_all_stats().await.len(), 1);
        mailboxes.remove_mailbox(&pid).await.unwrap();
        assert!(mailboxes.list_agents().await.is_empty());
        assert!(sender.is_closed());
    }

    #[test]
    fn ids_through_the_tokio_paths() {
        let uuid = uuid::Uuid::new_v4();
        assert_eq!(AgentPid(uuid).0, uuid);
        assert_eq!(SupervisorId(uuid).as_str(), uuid.to_string());
    }
}
