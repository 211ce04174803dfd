//! A node's [`ClusterStats`] as `metrics` (cargo features `nats` and `metrics`), each
//! labelled `node` (the node's name: one series per node, a handful per cluster).
//!
//! | name | kind | what (`ClusterStats` field) |
//! |---|---|---|
//! | `agent_messaging_cluster_published_total` | counter | taken by the server (`published`) |
//! | `agent_messaging_cluster_publish_retries_total` | counter | publishes tried again (`publish_retries`) |
//! | `agent_messaging_cluster_publish_failed_total` | counter | given up on by the publisher, dead-lettered here (`publish_failed`) |
//! | `agent_messaging_cluster_received_total` | counter | frames that arrived, redeliveries included (`received`) |
//! | `agent_messaging_cluster_delivered_total` | counter | arrivals a mailbox took (`delivered`) |
//! | `agent_messaging_cluster_redelivery_requests_total` | counter | arrivals put back for a redelivery (`redelivery_requests`) |
//! | `agent_messaging_cluster_dead_letters_total` | counter | arrivals given up on here (`dead_lettered`) |
//! | `agent_messaging_cluster_duplicates_total` | counter | exactly-once copies not delivered again (`duplicates`) |
//! | `agent_messaging_cluster_calls_total` | counter, `outcome` = `sent`, `failed`, `served` | remote calls (`calls_sent`, `calls_failed`, `calls_served`) |
//! | `agent_messaging_cluster_queued` | gauge | waiting for the publisher or its ack (`queued`) |
//! | `agent_messaging_cluster_awaiting_ack` | gauge | arrivals waiting for their agent's ack (`awaiting_ack`) |
//!
//! Published as the system's own metrics are (`observe::meters`): what each counter
//! grew since the last publish, once a second from a task of the node and once more
//! when it leaves; nothing on a per-message path.

use std::time::Duration;

use super::Shared;

const PUBLISHED: &str = "agent_messaging_cluster_published_total";
const PUBLISH_RETRIES: &str = "agent_messaging_cluster_publish_retries_total";
const PUBLISH_FAILED: &str = "agent_messaging_cluster_publish_failed_total";
const RECEIVED: &str = "agent_messaging_cluster_received_total";
const DELIVERED: &str = "agent_messaging_cluster_delivered_total";
const REDELIVERY_REQUESTS: &str = "agent_messaging_cluster_redelivery_requests_total";
const DEAD_LETTERS: &str = "agent_messaging_cluster_dead_letters_total";
const DUPLICATES: &str = "agent_messaging_cluster_duplicates_total";
const CALLS: &str = "agent_messaging_cluster_calls_total";
const QUEUED: &str = "agent_messaging_cluster_queued";
const AWAITING_ACK: &str = "agent_messaging_cluster_awaiting_ack";

/// Publishes the node's counters every second (a task of the node).
pub(crate) async fn publish_every_second(shared: std::sync::Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        publish(&shared);
    }
}

/// Publishes what grew since the last publish.
pub(crate) fn publish(shared: &Shared) {
    let now = shared.stats();
    let was = {
        let mut last = shared.metered.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none() {
            describe();
        }
        last.replace(now.clone()).unwrap_or_default()
    };
    let node = now.node.clone();
    let grew = |name: &'static str, old: u64, new: u64| {
        metrics::counter!(name, "node" => node.clone()).increment(new.saturating_sub(old));
    };
    grew(PUBLISHED, was.published, now.published);
    grew(PUBLISH_RETRIES, was.publish_retries, now.publish_retries);
    grew(PUBLISH_FAILED, was.publish_failed, now.publish_failed);
    grew(RECEIVED, was.received, now.received);
    grew(DELIVERED, was.delivered, now.delivered);
    grew(
        REDELIVERY_REQUESTS,
        was.redelivery_requests,
        now.redelivery_requests,
    );
    grew(DEAD_LETTERS, was.dead_lettered, now.dead_lettered);
    grew(DUPLICATES, was.duplicates, now.duplicates);
    for (outcome, old, new) in [
        ("sent", was.calls_sent, now.calls_sent),
        ("failed", was.calls_failed, now.calls_failed),
        ("served", was.calls_served, now.calls_served),
    ] {
        metrics::counter!(CALLS, "node" => node.clone(), "outcome" => outcome)
            .increment(new.saturating_sub(old));
    }
    metrics::gauge!(QUEUED, "node" => node.clone()).set(now.queued as f64);
    metrics::gauge!(AWAITING_ACK, "node" => node).set(now.awaiting_ack as f64);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(PUBLISHED, "Messages the NATS server took from this node.");
    describe_counter!(
        PUBLISH_RETRIES,
        "Publishes tried again after no stream ack."
    );
    describe_counter!(
        PUBLISH_FAILED,
        "Publishes given up on (dead-lettered on this node)."
    );
    describe_counter!(
        RECEIVED,
        "Frames that arrived for this node, redeliveries included."
    );
    describe_counter!(DELIVERED, "Arrived messages a local mailbox took.");
    describe_counter!(
        REDELIVERY_REQUESTS,
        "Arrived messages put back for a redelivery."
    );
    describe_counter!(DEAD_LETTERS, "Arrived messages dead-lettered on this node.");
    describe_counter!(DUPLICATES, "Exactly-once copies not delivered again.");
    describe_counter!(CALLS, "Remote calls: sent, failed, served.");
    describe_gauge!(QUEUED, "Messages waiting for the publisher or its ack.");
    describe_gauge!(
        AWAITING_ACK,
        "Arrived messages waiting for their agent's ack."
    );
}
