//! The calls a 1.x user makes, against this crate: the items the README's "Moving from
//! 1.x" table marks as the same, and the ones it marks as changed on purpose, each with
//! the behaviour that table promises. Public API only.
//!
//! Sections: envelope expiry at an explicit time; `DeliveryRecord`'s own lifecycle;
//! `from()` of an envelope without a sender.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use terraphim_agent_messaging::{AgentPid, DeliveryOptions, MessageEnvelope};

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
fn expiry_boundary_is_inclusive_of_the_timeout() {
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
