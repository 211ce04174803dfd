//! [`Node`]: a running cluster node: its loops, registration, counters, leaving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::connect::{put_lease, Link};
use super::outbound::{self, Outbox};
use super::receipts::{Receipts, Waiting};
use super::registry::{lease_key, pid_key, Owner};
use super::runtime::ClientRuntime;
use super::{inbound, ClusterStats, Counters, Shared};
use crate::dead_letter::DeadLetters;
use crate::delivery::engine::Engine;
use crate::delivery::{DeliveryGuarantee, RetryPolicy};
use crate::error::{MessagingError, MessagingResult};
use crate::message::AgentPid;
use crate::observe::events;
use crate::router::default::LocalRoutes;

/// A running cluster node: the system's route to other nodes, and what it registers.
pub(crate) struct Node {
    pub(super) shared: Arc<Shared>,
    pub(super) client: async_nats::Client,
    kv: kv::Store,
    pub(super) guarantee: DeliveryGuarantee,
    pub(super) max_payload: usize,
    pub(super) outbox: Outbox,
    /// Senders waiting until the stream stored their message.
    pub(super) receipts: Receipts,
    /// The publisher task, awaited when the node leaves.
    publisher: Mutex<Option<::tokio::task::JoinHandle<()>>>,
    /// The other loops (registry watch, heartbeat, inbound), aborted when it leaves.
    tasks: Mutex<Vec<::tokio::task::AbortHandle>>,
    left: AtomicBool,
    /// Last: dropping an owned runtime joins its thread.
    pub(super) runtime: ClientRuntime,
}

impl Node {
    /// Starts the node's loops on `runtime` (nothing here waits).
    pub(crate) fn launch(
        link: Link,
        runtime: ClientRuntime,
        local: std::sync::Arc<LocalRoutes>,
        dead_letters: crate::sync::Arc<DeadLetters>,
        policy: RetryPolicy,
        guarantee: DeliveryGuarantee,
        ack_timeout: Duration,
    ) -> Node {
        let Link {
            config,
            client,
            js,
            kv,
            registry,
            watch,
            direct,
            calls,
            alive,
            consumer,
            messages,
            max_payload,
            took_over,
        } = link;
        events::node_joined(&config.node, &config.url, config.durable, took_over);
        let lease = config.lease;
        let shared = Arc::new(Shared {
            config,
            registry,
            local,
            dead_letters,
            policy,
            counters: Counters::default(),
            engine: OnceLock::new(),
            acks: Default::default(),
            ack_timeout,
            client: client.clone(),
            #[cfg(feature = "metrics")]
            metered: Default::default(),
        });
        let handle = runtime.handle().clone();
        let (outbox, inbox) = Outbox::new();
        let publisher = handle.spawn(outbound::publish(shared.clone(), client.clone(), js, inbox));
        let tasks = vec![
            handle
                .spawn(watch_registry(shared.clone(), kv.clone(), watch))
                .abort_handle(),
            handle
                .spawn(heartbeat(shared.clone(), kv.clone(), lease))
                .abort_handle(),
            handle
                .spawn(inbound::direct(shared.clone(), direct))
                .abort_handle(),
            handle
                .spawn(inbound::calls(shared.clone(), calls, client.clone()))
                .abort_handle(),
            handle
                .spawn(inbound::stream(shared.clone(), messages, consumer))
                .abort_handle(),
            handle
                .spawn(answer_alive(alive, client.clone()))
                .abort_handle(),
            #[cfg(feature = "metrics")]
            handle
                .spawn(super::meters::publish_every_second(shared.clone()))
                .abort_handle(),
        ];
        Node {
            shared,
            client,
            kv,
            guarantee,
            max_payload,
            outbox,
            receipts: Receipts::default(),
            publisher: Mutex::new(Some(publisher)),
            tasks: Mutex::new(tasks),
            left: AtomicBool::new(false),
            runtime,
        }
    }

    /// Gives the node its system's engine (for the exactly-once window).
    pub(crate) fn attach(&self, engine: &std::sync::Arc<Engine>) {
        let _ = self.shared.engine.set(std::sync::Arc::downgrade(engine));
    }

    /// Whether this node stores its agents' messages (`enable_persistence`).
    pub(crate) fn is_durable(&self) -> bool {
        self.shared.config.durable
    }

    /// Settles an arrived `require_ack` message as acknowledged; `false` if none with
    /// this id waits here.
    pub(crate) fn acknowledge(&self, id: &crate::message::MessageId) -> bool {
        self.shared.acks.acknowledge(id)
    }

    /// This node's name.
    pub(crate) fn name(&self) -> &str {
        &self.shared.config.node
    }

    /// The node `pid` is registered on, as this node's mirror sees it (live, or down
    /// but durable).
    pub(crate) fn node_of(&self, pid: &AgentPid) -> Option<String> {
        self.shared.registry.resolve(pid).map(|n| n.to_string())
    }

    // ===== durable sends =====

    /// Whether a send to `to` waits until the stream stored it: at least once, to a
    /// pid of a durable node (this one, when it is durable), or to a group here (its
    /// pick may be such a pid: the push makes a receipt only if it is).
    pub(crate) fn stores(&self, to: &AgentPid) -> bool {
        let registry = &self.shared.registry;
        if self.guarantee == DeliveryGuarantee::AtMostOnce || !registry.durable_seen() {
            return false;
        }
        match registry.owner(to) {
            Some(owner) => self.stores_at(&owner),
            // Not in the registry, known here: a group.
            None => self.shared.local.knows(to),
        }
    }

    /// Whether the stream keeps what is sent to `owner`'s node on file for it.
    pub(super) fn stores_at(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Me => self.shared.config.durable,
            Owner::Live(node) => self.shared.registry.is_durable(node),
            Owner::Durable(_) => true,
        }
    }

    /// The sender of `id` will wait for the store (before dispatching it).
    pub(crate) fn expect_receipt(&self, id: &crate::message::MessageId) {
        self.receipts.expect(id);
    }

    /// The receipt to wait on, if the dispatch queued a parcel that makes one.
    pub(crate) fn take_receipt(&self, id: &crate::message::MessageId) -> Option<Waiting> {
        self.receipts.take(id)
    }

    /// How long a sender may wait for a store: every publish attempt the retry policy
    /// allows, each bounded by the connect timeout, and their back-offs.
    pub(crate) fn store_bound(&self) -> Duration {
        let policy = &self.shared.policy;
        let attempts = policy.max_retries().saturating_add(1);
        let mut bound = self.shared.config.connect_timeout * attempts;
        for retry in 0..policy.max_retries() {
            bound = bound.saturating_add(policy.delay(retry));
        }
        bound
    }

    /// Waits for a receipt from a thread: on an owned runtime, bounded by
    /// [`store_bound`](Self::store_bound); on a borrowed one (the tokio flavour's
    /// `as_sync()`), it cannot block a runtime thread and returns at once (the
    /// flavour's async sends wait).
    pub(crate) fn wait_stored_blocking(&self, waiting: Waiting) -> MessagingResult<()> {
        if !self.runtime.is_owned() {
            return Ok(());
        }
        self.runtime.block_on(
            "storing a message in the stream",
            self.store_bound(),
            stored(waiting),
        )
    }

    /// The counters.
    pub(crate) fn stats(&self) -> ClusterStats {
        self.shared.stats()
    }

    // ===== registration =====

    /// Makes `pid` resolve to this node on every node: created in the registry, or
    /// taken over from a node that no longer holds pids (lapsed, not durable); one
    /// that another live or durable node holds is refused with `DuplicateAgent`, as a
    /// second registration in one system is, so that a pid never lives on two nodes.
    pub(crate) fn announce(
        &self,
        pid: &AgentPid,
    ) -> impl std::future::Future<Output = MessagingResult<()>> + Send + 'static {
        let previous = self.shared.registry.insert_own(pid);
        let (kv, key, node) = (self.kv.clone(), pid_key(pid), self.name().to_string());
        let (shared, pid) = (self.shared.clone(), pid.clone());
        async move {
            let url = &shared.config.url;
            let failed = |e: &dyn std::fmt::Display| {
                MessagingError::System(format!(
                    "cluster: cannot register the pid in the registry at {url}: {e}"
                ))
            };
            let value: bytes::Bytes = node.clone().into_bytes().into();
            let taken = match kv.create(&key, value.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    kv.entry(&key).await.map_err(|e| failed(&e))?
                }
                Err(e) => return Err(failed(&e)),
            };
            let Some(entry) = taken else {
                // Deleted between the two reads: once more.
                return kv
                    .create(&key, value)
                    .await
                    .map(|_| ())
                    .map_err(|e| failed(&e));
            };
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            let live_elsewhere = holder != node && shared.registry.holds_pids(&holder);
            let written = match live_elsewhere {
                true => None,
                // Ours already (an earlier run of this node), or a gone node's.
                false => kv.update(&key, value, entry.revision).await.ok(),
            };
            if written.is_some() {
                return Ok(());
            }
            // Held by a live or durable node (or taken meanwhile): as for a pid
            // registered twice in one system.
            shared.registry.undo_own(&pid, previous);
            Err(MessagingError::DuplicateAgent(pid))
        }
    }

    /// Makes `pid` stop resolving (a delete in the registry).
    pub(crate) fn withdraw(
        &self,
        pid: &AgentPid,
    ) -> impl std::future::Future<Output = MessagingResult<()>> + Send + 'static {
        self.shared.registry.remove_own(pid);
        let (kv, key) = (self.kv.clone(), pid_key(pid));
        let url = self.shared.config.url.clone();
        async move {
            kv.delete(key).await.map_err(|e| {
                MessagingError::System(format!(
                    "cluster: the agent is unregistered here, but the registry at {url} \
                     could not be told (other nodes stop resolving it after this node's \
                     lease if it leaves): {e}"
                ))
            })
        }
    }

    /// [`announce`](Self::announce) from a thread: waits for the registry on an owned
    /// runtime; on a borrowed one (the tokio flavour's `as_sync()`), starts the write
    /// and returns (blocking a runtime thread could wait on itself).
    pub(crate) fn announce_blocking(&self, pid: &AgentPid) -> MessagingResult<()> {
        let write = self.announce(pid);
        self.wait_or_spawn("registering an agent", write)
    }

    /// [`withdraw`](Self::withdraw) from a thread (as [`announce_blocking`](Self::announce_blocking)).
    pub(crate) fn withdraw_blocking(&self, pid: &AgentPid) -> MessagingResult<()> {
        let write = self.withdraw(pid);
        self.wait_or_spawn("unregistering an agent", write)
    }

    fn wait_or_spawn<F>(&self, what: &str, future: F) -> MessagingResult<()>
    where
        F: std::future::Future<Output = MessagingResult<()>> + Send + 'static,
    {
        if self.runtime.is_owned() {
            self.runtime
                .block_on(what, self.shared.config.connect_timeout, future)
        } else {
            self.runtime.handle().spawn(future);
            Ok(())
        }
    }

    // ===== leaving =====

    /// Leaves the cluster cleanly: this node's pids and lease are deleted (other nodes
    /// stop resolving them at once; a durable node instead marks its lease `left`, and
    /// its pids keep taking at-least-once messages on file), the publisher drains what is queued (bounded by
    /// the connect timeout; the rest is dead-lettered `Shutdown`), then every loop
    /// stops. Idempotent.
    pub(crate) fn leave(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let first = !self.left.swap(true, Ordering::AcqRel);
        let shared = self.shared.clone();
        let (kv, client) = (self.kv.clone(), self.client.clone());
        let publisher = first.then(|| lock(&self.publisher).take()).flatten();
        let tasks: Vec<_> = if first {
            std::mem::take(&mut *lock(&self.tasks))
        } else {
            Vec::new()
        };
        let drain = self.outbox.drain_signal();
        async move {
            if !first {
                return;
            }
            let bound = shared.config.connect_timeout;
            events::node_left(&shared.config.node, shared.config.durable);
            // The heartbeat stops first, so the lease is not written back.
            for task in &tasks {
                task.abort();
            }
            let _ = ::tokio::time::timeout(bound, async {
                if shared.config.durable {
                    // Its pids keep resolving: what is sent to them waits on file.
                    let _ = put_lease(&kv, &shared.config, true).await;
                } else {
                    for pid in shared.registry.own_pids() {
                        let _ = kv.delete(pid_key(&pid)).await;
                    }
                    let _ = kv.delete(lease_key(&shared.config.node)).await;
                }
            })
            .await;
            drain.drain(bound);
            if let Some(publisher) = publisher {
                let _ = publisher.await;
            }
            let _ = ::tokio::time::timeout(bound, client.flush()).await;
            #[cfg(feature = "metrics")]
            super::meters::publish(&shared);
        }
    }

    /// [`leave`](Self::leave) from a thread (waits on an owned runtime, bounded).
    pub(crate) fn leave_blocking(&self) {
        let leave = self.leave();
        let bound = self.shared.config.connect_timeout * 3;
        let _ = self.wait_or_spawn_unit(bound, leave);
    }

    fn wait_or_spawn_unit<F>(&self, bound: Duration, future: F) -> MessagingResult<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let future = async move {
            future.await;
            Ok(())
        };
        if self.runtime.is_owned() {
            self.runtime.block_on("leaving the cluster", bound, future)
        } else {
            self.runtime.handle().spawn(future);
            Ok(())
        }
    }
}

impl Drop for Node {
    /// Dropped without `shutdown` (or killed): every loop stops where it is, nothing is
    /// deleted from the registry, and the other nodes stop resolving this node's pids
    /// one lease after its last heartbeat.
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(publisher) = lock(&self.publisher).take() {
            publisher.abort();
        }
    }
}

/// Keeps the registry mirror up to date (re-watching after an error).
async fn watch_registry(shared: Arc<Shared>, kv: kv::Store, mut watch: kv::Watch) {
    loop {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(entry) => shared.registry.apply(&entry),
                Err(_) => break,
            }
        }
        loop {
            ::tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(again) = kv.watch_with_history(">").await {
                watch = again;
                break;
            }
        }
    }
}

/// Renews this node's lease every third of it; then writes back its own entries that
/// the others deleted while it was cut off, and deletes the entries of nodes without
/// persistence whose lease lapsed (each delete checked against the revision seen, so
/// a node that came back, or a pid registered again, is left alone).
async fn heartbeat(shared: Arc<Shared>, kv: kv::Store, lease: Duration) {
    let mut every = ::tokio::time::interval(lease / 3);
    every.set_missed_tick_behavior(::tokio::time::MissedTickBehavior::Delay);
    let mut renewed = true;
    loop {
        every.tick().await;
        if put_lease(&kv, &shared.config, false).await.is_err() {
            renewed = false;
            continue;
        }
        // Back after a failed renewal (cut off, perhaps past its lease): every
        // registration is written again unless the bucket has one for it (`create`
        // never takes a pid another node registered meanwhile); otherwise only those
        // the mirror saw deleted.
        let rewrite = match std::mem::replace(&mut renewed, true) {
            true => shared.registry.missing_own(),
            false => shared.registry.own_registered(),
        };
        let me = shared.config.node.clone();
        for pid in rewrite {
            let _ = kv
                .create(pid_key(&pid), me.clone().into_bytes().into())
                .await;
        }
        for gone in shared.registry.lapsed() {
            let pids = gone.pids.len();
            for (pid, revision) in gone.pids {
                let _ = kv
                    .delete_expect_revision(pid_key(&pid), Some(revision))
                    .await;
            }
            // Another survivor may have been first: then this delete fails.
            let lease = lease_key(&gone.node);
            if kv
                .delete_expect_revision(lease, Some(gone.lease_revision))
                .await
                .is_ok()
            {
                shared.counters.nodes_cleaned.incr();
                events::lapsed_node_removed(&gone.node, pids);
            }
        }
    }
}

/// Answers on this node's alive subject, so that a node starting under its name sees
/// that it is live (see `connect`).
async fn answer_alive(mut alive: async_nats::Subscriber, client: async_nats::Client) {
    while let Some(message) = alive.next().await {
        if let Some(reply) = message.reply {
            let _ = client.publish(reply, bytes::Bytes::new()).await;
        }
    }
}

/// What a receipt says, as the sender's result.
pub(crate) async fn stored(waiting: Waiting) -> MessagingResult<()> {
    match waiting.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(MessagingError::System(format!("cluster: {why}"))),
        Err(_) => Err(MessagingError::System(
            "cluster: the node left before the stream stored the message (dead-lettered)".into(),
        )),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// The parcel for a message going to `node`, with its subject per the guarantee.
    pub(crate) fn parcel_subject(&self, node: &str) -> (String, bool) {
        match self.guarantee {
            DeliveryGuarantee::AtMostOnce => (self.shared.config.direct_subject(node), false),
            _ => (self.shared.config.node_subject(node), true),
        }
    }
}
