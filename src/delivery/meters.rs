//! The engine's side of the `metrics` feature: reading the system's numbers into a
//! snapshot for its publisher (`crate::observe::meters`), and the agents whose queue
//! length is published by name. Without the feature only the no-op entry points remain.
//!
//! A snapshot reads the ledger (one lock of the tracker), walks the agent table under
//! its read lock (one length and one breaker load per mailbox), and looks up the
//! watched agents: O(agents), at most once a second, on the timer thread or task.

#[cfg(feature = "metrics")]
use crate::breaker::BreakerState;
use crate::delivery::engine::Engine;
#[cfg(feature = "metrics")]
use crate::message::AgentPid;
#[cfg(feature = "metrics")]
use crate::observe::meters::Snapshot;
#[cfg(feature = "metrics")]
use crate::router::Routes;
#[cfg(feature = "metrics")]
use crate::sync::lock;

impl Engine {
    /// Publishes the system's numbers to the `metrics` recorder; after shutdown
    /// (`shut_down`), with every gauge at zero.
    pub(crate) fn publish_metrics(&self, shut_down: bool) {
        #[cfg(feature = "metrics")]
        self.meters.publish(|| self.snapshot(shut_down));
        #[cfg(not(feature = "metrics"))]
        let _ = shut_down;
    }

    /// Makes the timer driver run (and so publish) from now on, even before the first
    /// timer is set: a system that never retries and only makes blocking calls would
    /// otherwise publish only at shutdown.
    pub(crate) fn start_metering(&self) {
        #[cfg(feature = "metrics")]
        {
            let timers = self.timers();
            timers.scheduled(timers.after(std::time::Duration::ZERO));
        }
    }

    /// Publishes `pid`'s queue length as `agent_messaging_mailbox_depth{agent=name}`
    /// (replacing any agent watched under `name`).
    #[cfg(feature = "metrics")]
    pub(crate) fn watch_depth(&self, name: String, pid: AgentPid) {
        let mut watched = lock(&self.watched);
        watched.retain(|(n, _)| *n != name);
        watched.push((name, pid));
    }

    #[cfg(feature = "metrics")]
    fn snapshot(&self, shut_down: bool) -> Snapshot {
        let ledger = self.delivery_stats();
        let trips = if self.config.enable_metrics {
            self.routes.breaker_trips()
        } else {
            0
        };
        let mut snapshot = Snapshot {
            sent: ledger.total_messages,
            delivered: ledger.delivered + ledger.acknowledged,
            retries: self.tracker.counters.retries.get(),
            breaker_trips: trips,
            dead_letters: self.dead_letters.by_reason(),
            ..Snapshot::default()
        };
        let watched = lock(&self.watched);
        if shut_down {
            snapshot.depths = watched.iter().map(|(name, _)| (name.clone(), 0)).collect();
            return snapshot;
        }
        snapshot.pending = ledger.pending + ledger.in_transit;
        let mut open = 0;
        self.table.for_each(|mailbox| {
            snapshot.agents += 1;
            snapshot.queued += mailbox.len() as u64;
            if mailbox.breaker.state() != BreakerState::Closed {
                open += 1;
            }
        });
        snapshot.open_breakers = match &self.routes {
            Routes::Local(_) => open,
            Routes::Custom(custom) => custom.open_breakers(),
            #[cfg(feature = "nats")]
            Routes::Cluster(_) => open,
        };
        snapshot.depths = watched
            .iter()
            .map(|(name, pid)| {
                let depth = self.table.get(pid).map_or(0, |mailbox| mailbox.len());
                (name.clone(), depth as u64)
            })
            .collect();
        snapshot
    }
}
