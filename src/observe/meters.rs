//! `metrics` counters, gauges and histograms (cargo feature `metrics`).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `agent_messaging_messages_sent_total` | counter | | messages accepted (`DeliveryStats::total_messages`) |
//! | `agent_messaging_messages_delivered_total` | counter | | delivered and final (`delivered + acknowledged`) |
//! | `agent_messaging_retries_total` | counter | | attempts after the first (`RouterStats::retry_attempts`), redeliveries included |
//! | `agent_messaging_redeliveries_total` | counter | | of those, redeliveries after a missing ack |
//! | `agent_messaging_dead_letters_total` | counter | `reason` | dead letters, by reason (`DeadLetterReason::label`) |
//! | `agent_messaging_breaker_trips_total` | counter | | times a breaker opened (`RouterStats::circuit_trips`) |
//! | `agent_messaging_calls_total` | counter | `outcome` = `ok`, `timeout`, `failed` | calls (`call`, `call_async`, tokio's `call`) |
//! | `agent_messaging_agents` | gauge | | registered agents |
//! | `agent_messaging_queued_messages` | gauge | | messages in mailboxes, all agents |
//! | `agent_messaging_pending_messages` | gauge | | messages waiting for a retry or an ack |
//! | `agent_messaging_open_breakers` | gauge | | breakers open or half-open |
//! | `agent_messaging_mailbox_depth` | gauge | `agent` | queue length of agents named with `watch_depth` |
//! | `agent_messaging_call_duration_seconds` | histogram | | round trip of answered calls, 1 call in 8 |
//! | `agent_messaging_mailbox_wait_seconds` | histogram | | time from push to receive, 1 message in 64 per mailbox |
//!
//! # How numbers reach the recorder
//!
//! No counter or gauge touches the recorder on a per-message path: they are read from
//! what the system keeps anyway (the ledger, the agent table, the tracker) and
//! *published*: at most once a second from the timer loop, at shutdown (gauges to
//! zero), and on `MessageSystem::publish_metrics`. A publish adds to each counter what
//! it grew since the last one and moves each gauge by its change, so several systems
//! in one process add up. Calls are counted in striped counters (a thread-local
//! increment) and published the same way. Histograms record samples as they happen,
//! on paths that read the clock anyway (one mailbox receive in 64) or for one call in
//! eight (picked by the call's id), so a call reads the clock twice at most one time
//! in eight.
//!
//! The counters that follow the ledger stay at zero with `enable_metrics: false`.

#[cfg(feature = "metrics")]
use std::sync::atomic::Ordering::Relaxed;
#[cfg(feature = "metrics")]
use std::time::Instant;

#[cfg(feature = "metrics")]
use crate::stats::Counter;
#[cfg(feature = "metrics")]
use crate::sync::{lock, AtomicU64, Mutex};

// ===== names =====

/// Messages accepted.
pub(crate) const SENT: &str = "agent_messaging_messages_sent_total";
/// Messages delivered and final.
pub(crate) const DELIVERED: &str = "agent_messaging_messages_delivered_total";
/// Attempts after the first.
pub(crate) const RETRIES: &str = "agent_messaging_retries_total";
/// Redeliveries after a missing ack.
pub(crate) const REDELIVERIES: &str = "agent_messaging_redeliveries_total";
/// Dead letters by `reason`.
pub(crate) const DEAD_LETTERS: &str = "agent_messaging_dead_letters_total";
/// Breaker openings.
pub(crate) const BREAKER_TRIPS: &str = "agent_messaging_breaker_trips_total";
/// Calls by `outcome`.
pub(crate) const CALLS: &str = "agent_messaging_calls_total";
/// Registered agents.
pub(crate) const AGENTS: &str = "agent_messaging_agents";
/// Messages in mailboxes.
pub(crate) const QUEUED: &str = "agent_messaging_queued_messages";
/// Messages waiting for a retry or an ack.
pub(crate) const PENDING: &str = "agent_messaging_pending_messages";
/// Breakers open or half-open.
pub(crate) const OPEN_BREAKERS: &str = "agent_messaging_open_breakers";
/// Queue length of a watched agent, by `agent`.
pub(crate) const MAILBOX_DEPTH: &str = "agent_messaging_mailbox_depth";
/// Call round trips.
pub(crate) const CALL_DURATION: &str = "agent_messaging_call_duration_seconds";
/// Time in mailbox.
pub(crate) const MAILBOX_WAIT: &str = "agent_messaging_mailbox_wait_seconds";

/// Every metric, with its kind and help text (`describe_*`).
#[cfg(feature = "metrics")]
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (SENT, Kind::Counter, "Messages accepted for delivery."),
    (
        DELIVERED,
        Kind::Counter,
        "Messages delivered and final (no ack asked, or acknowledged).",
    ),
    (
        RETRIES,
        Kind::Counter,
        "Delivery attempts after the first, redeliveries included.",
    ),
    (
        REDELIVERIES,
        Kind::Counter,
        "Redeliveries after a missing acknowledgement.",
    ),
    (
        DEAD_LETTERS,
        Kind::Counter,
        "Messages given up on, by reason.",
    ),
    (
        BREAKER_TRIPS,
        Kind::Counter,
        "Times a destination's circuit breaker opened.",
    ),
    (
        CALLS,
        Kind::Counter,
        "Calls by outcome: ok, timeout, failed.",
    ),
    (AGENTS, Kind::Gauge, "Registered agents."),
    (
        QUEUED,
        Kind::Gauge,
        "Messages queued in mailboxes, all agents.",
    ),
    (
        PENDING,
        Kind::Gauge,
        "Messages waiting for a retry or an acknowledgement.",
    ),
    (
        OPEN_BREAKERS,
        Kind::Gauge,
        "Circuit breakers open or half-open.",
    ),
    (
        MAILBOX_DEPTH,
        Kind::Gauge,
        "Queue length of an agent named with watch_depth.",
    ),
    (
        CALL_DURATION,
        Kind::Histogram,
        "Round trip of answered calls (1 call in 8).",
    ),
    (
        MAILBOX_WAIT,
        Kind::Histogram,
        "Time from push to receive (1 message in 64 per mailbox).",
    ),
];

#[cfg(feature = "metrics")]
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One call in this many has its round trip timed.
const CALL_SAMPLE: u64 = 8;

/// How often the timer loop publishes, in wheel ticks (1 tick = 1 ms).
pub(crate) const PUBLISH_EVERY_TICKS: u64 = 1_000;

// ===== calls =====

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// A reply arrived.
    Ok = 0,
    /// None within the timeout.
    Timeout = 1,
    /// Not sent, or dropped without a reply.
    Failed = 2,
}

#[cfg(feature = "metrics")]
const CALL_OUTCOMES: [(CallOutcome, &str); 3] = [
    (CallOutcome::Ok, "ok"),
    (CallOutcome::Timeout, "timeout"),
    (CallOutcome::Failed, "failed"),
];

/// Times one call in [`CALL_SAMPLE`] (zero-sized without the feature).
#[derive(Debug)]
pub(crate) struct CallTimer {
    #[cfg(feature = "metrics")]
    started: Option<Instant>,
}

impl CallTimer {
    /// Starts timing if `id_bits` (random bits of the call's id) pick this call.
    #[inline(always)]
    pub(crate) fn start(id_bits: u64) -> Self {
        #[cfg(feature = "metrics")]
        {
            CallTimer {
                started: (id_bits % CALL_SAMPLE == 0).then(Instant::now),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = id_bits;
            CallTimer {}
        }
    }

    /// A timer that records nothing.
    #[inline(always)]
    pub(crate) fn none() -> Self {
        CallTimer {
            #[cfg(feature = "metrics")]
            started: None,
        }
    }

    /// The reply arrived: records the round trip, if timed.
    #[inline(always)]
    pub(crate) fn answered(self) {
        #[cfg(feature = "metrics")]
        if let Some(started) = self.started {
            metrics::histogram!(CALL_DURATION).record(started.elapsed().as_secs_f64());
        }
    }
}

// ===== mailboxes =====

/// A sampled message spent `nanos` in its mailbox.
#[inline(always)]
pub(crate) fn mailbox_wait(nanos: u64) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(MAILBOX_WAIT).record(nanos as f64 / 1e9);
    #[cfg(not(feature = "metrics"))]
    let _ = nanos;
}

// ===== a system's meters =====

/// One system's numbers at one moment, read by its publisher.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    /// `DeliveryStats::total_messages`.
    pub(crate) sent: u64,
    /// `delivered + acknowledged`.
    pub(crate) delivered: u64,
    /// Attempts after the first.
    pub(crate) retries: u64,
    /// Breaker openings.
    pub(crate) breaker_trips: u64,
    /// Dead letters by reason label, in a fixed order.
    pub(crate) dead_letters: Vec<(&'static str, u64)>,
    /// Registered agents.
    pub(crate) agents: u64,
    /// Messages in mailboxes.
    pub(crate) queued: u64,
    /// Messages waiting for a retry or an ack.
    pub(crate) pending: u64,
    /// Breakers not closed.
    pub(crate) open_breakers: u64,
    /// Queue length of each watched agent, by name.
    pub(crate) depths: Vec<(String, u64)>,
}

/// What a system counts for the recorder itself, and what it published so far.
/// Zero-sized without the feature.
#[derive(Default)]
pub(crate) struct Meters {
    /// Calls by [`CallOutcome`].
    #[cfg(feature = "metrics")]
    calls: [Counter; 3],
    #[cfg(feature = "metrics")]
    redeliveries: Counter,
    /// What the recorder has been told (held while publishing, so publishes do not
    /// interleave).
    #[cfg(feature = "metrics")]
    published: Mutex<Published>,
    /// The tick from which the timer loop publishes again.
    #[cfg(feature = "metrics")]
    next_publish: AtomicU64,
}

/// The numbers last published.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Published {
    snapshot: Snapshot,
    calls: [u64; 3],
    redeliveries: u64,
}

impl Meters {
    /// Counts a call that ended with `outcome`.
    #[inline(always)]
    pub(crate) fn call_ended(&self, outcome: CallOutcome) {
        #[cfg(feature = "metrics")]
        self.calls[outcome as usize].incr();
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    /// Counts a redelivery after a missing ack.
    #[inline(always)]
    pub(crate) fn redelivered(&self) {
        #[cfg(feature = "metrics")]
        self.redeliveries.incr();
    }

    /// Whether the timer loop should publish at tick `now()` (true at most once per
    /// [`PUBLISH_EVERY_TICKS`]; the clock is not read without the feature).
    #[inline(always)]
    pub(crate) fn due(&self, now: impl FnOnce() -> u64) -> bool {
        #[cfg(feature = "metrics")]
        {
            let now = now();
            let next = self.next_publish.load(Relaxed);
            now >= next
                && self
                    .next_publish
                    .compare_exchange(
                        next,
                        now.saturating_add(PUBLISH_EVERY_TICKS),
                        Relaxed,
                        Relaxed,
                    )
                    .is_ok()
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = now;
            false
        }
    }

    /// Publishes the snapshot `read` returns (called under the publisher's lock, so
    /// two publishes never interleave): counters grow by what they grew since the
    /// last publish, gauges move by their change.
    pub(crate) fn publish(&self, read: impl FnOnce() -> Snapshot) {
        #[cfg(feature = "metrics")]
        {
            let mut last = lock(&self.published);
            let now = read();
            describe();
            // Every counter is touched, by 0 if need be, so that it shows from the first
            // publish.
            let grew = |name: &'static str, old: u64, new: u64| {
                metrics::counter!(name).increment(new.saturating_sub(old));
            };
            let was = &last.snapshot;
            grew(SENT, was.sent, now.sent);
            grew(DELIVERED, was.delivered, now.delivered);
            grew(RETRIES, was.retries, now.retries);
            grew(BREAKER_TRIPS, was.breaker_trips, now.breaker_trips);
            for (i, &(reason, count)) in now.dead_letters.iter().enumerate() {
                let old = was.dead_letters.get(i).map_or(0, |&(_, n)| n);
                let grown = count.saturating_sub(old);
                metrics::counter!(DEAD_LETTERS, "reason" => reason).increment(grown);
            }
            let moved = |name: &'static str, old: u64, new: u64| {
                let gauge = metrics::gauge!(name);
                if new >= old {
                    gauge.increment((new - old) as f64);
                } else {
                    gauge.decrement((old - new) as f64);
                }
            };
            moved(AGENTS, was.agents, now.agents);
            moved(QUEUED, was.queued, now.queued);
            moved(PENDING, was.pending, now.pending);
            moved(OPEN_BREAKERS, was.open_breakers, now.open_breakers);
            // Named by the user: set, not summed over systems.
            for (name, depth) in &now.depths {
                metrics::gauge!(MAILBOX_DEPTH, "agent" => name.clone()).set(*depth as f64);
            }
            let calls = self.calls.each_ref().map(Counter::get);
            for (outcome, label) in CALL_OUTCOMES {
                let (old, new) = (last.calls[outcome as usize], calls[outcome as usize]);
                metrics::counter!(CALLS, "outcome" => label).increment(new.saturating_sub(old));
            }
            let redeliveries = self.redeliveries.get();
            grew(REDELIVERIES, last.redeliveries, redeliveries);
            // Counters only move forward, even if a reading raced a concurrent update.
            let forward = |old: u64, new: u64| old.max(new);
            let mut kept = now;
            kept.sent = forward(was.sent, kept.sent);
            kept.delivered = forward(was.delivered, kept.delivered);
            kept.retries = forward(was.retries, kept.retries);
            kept.breaker_trips = forward(was.breaker_trips, kept.breaker_trips);
            for (i, entry) in kept.dead_letters.iter_mut().enumerate() {
                entry.1 = forward(was.dead_letters.get(i).map_or(0, |&(_, n)| n), entry.1);
            }
            last.calls = std::array::from_fn(|i| forward(last.calls[i], calls[i]));
            last.redeliveries = forward(last.redeliveries, redeliveries);
            last.snapshot = kept;
        }
        #[cfg(not(feature = "metrics"))]
        let _ = read;
    }
}

/// Gives every metric its help text and unit (the recorder keeps the latest; cheap
/// enough for once per publish, and right even if the recorder came late).
#[cfg(feature = "metrics")]
fn describe() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
}

#[cfg(all(test, feature = "metrics", not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn call_sampling_picks_one_in_eight() {
        let timed = (0..800u64)
            .filter(|bits| CallTimer::start(*bits).started.is_some())
            .count();
        assert_eq!(timed, 100);
    }

    #[test]
    fn due_at_most_once_per_period() {
        let meters = Meters::default();
        let at = |tick: u64| move || tick;
        assert!(meters.due(at(0)));
        assert!(!meters.due(at(1)));
        assert!(!meters.due(at(PUBLISH_EVERY_TICKS - 1)));
        assert!(meters.due(at(PUBLISH_EVERY_TICKS)));
        assert!(!meters.due(at(PUBLISH_EVERY_TICKS)));
    }
}
