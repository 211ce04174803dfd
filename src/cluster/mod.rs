//! Cluster nodes on NATS JetStream (cargo feature `nats`): agents on other processes
//! and machines, reached by pid with the same calls.
//!
//! 1. `config`: [`ClusterConfig`], the server, the node's name, auth, TLS, names.
//! 2. `runtime`: where the client runs (a thread of the node's own, or the caller's
//!    tokio runtime).
//! 3. `registry`: the pid → node registry (a JetStream KV bucket) and its mirror.
//! 4. `wire`: the versioned JSON frame a message crosses in.
//! 5. `outbound`: the node as a [`Destination`] for pids of other nodes, and the
//!    publisher task (pipelined publish acks, retries, dead letters).
//! 6. `inbound`: what arrives for this node, pushed into its own table.
//! 7. here: [`Node`]: connecting, starting and stopping; registration; counters.
//!
//! A message to a pid that this node's table does not know goes to the node that owns
//! it (`router::cluster` asks the table first):
//!
//! | guarantee | sender publishes | receiving node |
//! |---|---|---|
//! | `AtMostOnce` | core NATS on `{prefix}.direct.{node}`; `Ok` once queued for the socket, nothing more learnt | pushes into the mailbox; full, closed or unknown: dead letter there |
//! | `AtLeastOnce` | JetStream stream `{prefix}_msgs` on `{prefix}.node.{node}`, `Nats-Msg-Id` = the message id; acks awaited pipelined; a publish not acknowledged is retried with the message's back-off, then dead-lettered on the sender | a durable pull consumer per node; acked once the mailbox accepted it; refused: NAK with the back-off delay, and after `max_retries` redeliveries a dead letter there |
//! | a call (any guarantee) | a core request to `{prefix}.call.{node}` with the call's timeout; the JSON reply comes back to the caller | pushes the call into the mailbox and answers with the callee's reply (a `serde_json::Value`); refused, unknown, or a reply that cannot cross: an error answer, a dead letter there, and the caller fails at once (`DeliveryFailed`) |
//! | `ExactlyOnce` | as `AtLeastOnce`: the stream drops a republished id within its duplicate window (2 min) | as `AtLeastOnce`, and the id is reserved in the node's own exactly-once window (the engine's) before the push and committed once a mailbox took it: a redelivered copy (its ack lost) is acked and counted, not delivered again |
//!
//! # Invariants
//!
//! - Nothing handed to the transport vanishes without a trace: it is in a mailbox,
//!   in a dead letter (on the sending or the receiving node, with the reason), or
//!   still in the stream (at-least-once, until a node consumes it).
//! - The send path never blocks and never awaits: it resolves the pid in the mirror,
//!   encodes, and queues for the publisher task (full queue: `Refused`, so the engine
//!   retries or reports it as for a full mailbox).

mod config;
mod inbound;
mod outbound;
mod registry;
mod runtime;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;

use self::config::Auth;
pub use self::config::ClusterConfig;
use self::outbound::Outbox;
use self::registry::{lease_key, pid_key, Registry};
pub(crate) use self::runtime::ClientRuntime;
use crate::dead_letter::DeadLetters;
use crate::delivery::engine::Engine;
use crate::delivery::{DeliveryGuarantee, RetryPolicy};
use crate::error::{MessagingError, MessagingResult};
use crate::message::AgentPid;
use crate::router::default::LocalRoutes;
use crate::stats::Counter;

/// What a cluster node has done so far (`MessageSystem::cluster_stats`).
///
/// On the sending side `published + publish_failed + queued` is what was handed to the
/// transport; on the receiving side every frame `received` (redeliveries included) was
/// `delivered`, put back for a redelivery (`redelivery_requests`), or `dead_lettered`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// This node's name.
    pub node: String,
    /// Messages the server took: at-most-once written to the connection, at-least-once
    /// acknowledged by the stream.
    pub published: u64,
    /// Publishes tried again after the stream did not acknowledge them.
    pub publish_retries: u64,
    /// Messages given up on by the publisher (dead-lettered on this node, reason
    /// `Transport`).
    pub publish_failed: u64,
    /// Messages waiting for the publisher or for their publish ack.
    pub queued: u64,
    /// Frames that arrived for this node (each redelivery counts).
    pub received: u64,
    /// Arrived messages a local mailbox accepted.
    pub delivered: u64,
    /// Arrived messages refused for now (mailbox full, breaker open) and handed back to
    /// JetStream for a redelivery after the back-off.
    pub redelivery_requests: u64,
    /// Arrived messages given up on here (dead letters): unknown or closed agent,
    /// refused after `max_retries`, undecodable.
    pub dead_lettered: u64,
    /// Of those, frames that did not decode or carried another wire version.
    pub undecodable: u64,
    /// Exactly-once copies that arrived again within the dedupe window (acked to
    /// JetStream, not delivered again).
    pub duplicates: u64,
    /// Calls this node sent to other nodes.
    pub calls_sent: u64,
    /// Of those, calls that got no reply (an error answer, no responder, garbage);
    /// their callers failed with `DeliveryFailed`. A call that simply timed out is
    /// not counted here.
    pub calls_failed: u64,
    /// Calls from other nodes pushed into a mailbox here.
    pub calls_served: u64,
}

/// The node's counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: Counter,
    pub(crate) publish_retries: Counter,
    pub(crate) publish_failed: Counter,
    pub(crate) handed: Counter,
    pub(crate) received: Counter,
    pub(crate) delivered: Counter,
    pub(crate) redelivery_requests: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) undecodable: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) calls_sent: Counter,
    pub(crate) calls_failed: Counter,
    pub(crate) calls_served: Counter,
}

/// What the node's tasks share.
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) registry: Registry,
    pub(crate) local: std::sync::Arc<LocalRoutes>,
    pub(crate) dead_letters: crate::sync::Arc<DeadLetters>,
    /// The system's retry schedule (each message's options override it).
    pub(crate) policy: RetryPolicy,
    pub(crate) counters: Counters,
    /// The system's engine, for its exactly-once window (set once it is built; weak,
    /// since the engine reaches this node through its routes).
    pub(crate) engine: OnceLock<std::sync::Weak<Engine>>,
}

/// A connection made and set up, not yet running (see [`connect`]).
pub(crate) struct Link {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    registry: Registry,
    watch: kv::Watch,
    direct: async_nats::Subscriber,
    calls: async_nats::Subscriber,
    consumer: consumer::PullConsumer,
    messages: consumer::pull::Stream,
    max_payload: usize,
}

/// Connects to the server and sets up what the node needs, all within the connect
/// timeout: the stream, the registry bucket (and a mirror of it), this node's durable
/// consumer and its at-most-once subscription, and a first lease.
pub(crate) async fn connect(config: ClusterConfig) -> MessagingResult<Link> {
    config.validate().map_err(MessagingError::Configuration)?;
    let timeout = config.connect_timeout;
    let url = config.url.clone();
    let step = Step::default();
    match ::tokio::time::timeout(timeout, set_up(config, step.clone())).await {
        Ok(link) => link,
        Err(_) => Err(MessagingError::System(format!(
            "cluster: the NATS server at {url} did not answer within the connect timeout \
             ({timeout:?}) while {}",
            step.get()
        ))),
    }
}

/// What [`set_up`] is doing, for the timeout's message.
#[derive(Clone, Default)]
struct Step(Arc<Mutex<&'static str>>);

impl Step {
    fn set(&self, what: &'static str) {
        *lock(&self.0) = what;
    }

    fn get(&self) -> &'static str {
        let what = *lock(&self.0);
        if what.is_empty() {
            "connecting"
        } else {
            what
        }
    }
}

async fn set_up(config: ClusterConfig, step: Step) -> MessagingResult<Link> {
    let url = config.url.clone();
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        MessagingError::System(format!("cluster: {what} on the NATS server at {url}: {e}"))
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("terraphim-agent-messaging {}", config.node))
        .connection_timeout(config.connect_timeout)
        .require_tls(config.require_tls || config.ca_file.is_some());
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    options = match &config.auth {
        Auth::None => options,
        Auth::UserPassword(user, password) => {
            options.user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => options.token(token.clone()),
        Auth::CredentialsFile(path) => options.credentials_file(path).await.map_err(|e| {
            MessagingError::Configuration(format!(
                "cluster: cannot read the credentials file {}: {e}",
                path.display()
            ))
        })?,
    };
    step.set("connecting");
    let client = options.connect(config.url.as_str()).await.map_err(|e| {
        MessagingError::System(format!(
            "cluster: cannot connect to the NATS server at {url}: {e}"
        ))
    })?;
    let max_payload = client.server_info().max_payload;
    let js = jetstream::new(client.clone());

    step.set("setting up the message stream");
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream_name(),
            subjects: vec![format!("{}.node.*", config.prefix)],
            // Each node's subject has one consumer, and a message goes once it is acked.
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            failed(
                "cannot set up the message stream (is JetStream enabled, -js?)",
                &e,
            )
        })?;
    step.set("setting up the registry bucket");
    let bucket = config.bucket_name();
    let kv = match js.get_key_value(bucket.clone()).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("cannot set up the registry bucket", &e))?,
    };
    // A live node with the same name would share this node's consumer and lease.
    step.set("checking that this node's name is free");
    if let Ok(Some(entry)) = kv.entry(lease_key(&config.node)).await {
        if let Some(age) = live_lease_age(&entry) {
            return Err(MessagingError::Configuration(format!(
                "cluster: node name {:?} is in use by a live node (its lease was renewed \
                 {age:?} ago); choose another name, or wait until that node's lease lapses",
                config.node
            )));
        }
    }
    // Our own lease first: the bucket is not empty, so the watch below has a current
    // entry to announce that it has caught up.
    step.set("writing this node's lease");
    put_lease(&kv, &config)
        .await
        .map_err(|e| failed("cannot write this node's lease", &e))?;
    // Only now, with the name ours: the consumer and the subscriptions.
    step.set("setting up this node's consumer");
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.node,
            consumer::pull::Config {
                durable_name: Some(config.node.clone()),
                filter_subject: config.node_subject(&config.node),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| failed("cannot set up this node's consumer", &e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| failed("cannot read this node's consumer", &e))?;
    step.set("subscribing");
    let direct = client
        .subscribe(config.direct_subject(&config.node))
        .await
        .map_err(|e| failed("cannot subscribe", &e))?;
    let calls = client
        .subscribe(config.call_subject(&config.node))
        .await
        .map_err(|e| failed("cannot subscribe", &e))?;

    step.set("reading the registry");
    let registry = Registry::new(&config.node);
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| failed("cannot watch the registry", &e))?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| failed("cannot read the registry", &e))?;
        registry.apply(&entry);
        if entry.seen_current {
            break;
        }
    }
    Ok(Link {
        config,
        client,
        js,
        kv,
        registry,
        watch,
        direct,
        calls,
        consumer,
        messages,
        max_payload,
    })
}

/// How long ago a lease entry was renewed, if its lease has not lapsed yet: the
/// server's timestamp against this machine's wall clock (the one place clocks meet;
/// a skew shifts the answer by the skew).
fn live_lease_age(entry: &kv::Entry) -> Option<Duration> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let lease_ms: u64 = std::str::from_utf8(&entry.value).ok()?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let renewed = u128::try_from(entry.created.unix_timestamp_nanos()).ok()?;
    let age = Duration::from_nanos(u64::try_from(now.saturating_sub(renewed)).ok()?);
    (age < Duration::from_millis(lease_ms)).then_some(age)
}

async fn put_lease(kv: &kv::Store, config: &ClusterConfig) -> Result<u64, kv::PutError> {
    let ms = config.lease.as_millis().to_string();
    kv.put(lease_key(&config.node), ms.into_bytes().into())
        .await
}

/// A running cluster node: the system's route to other nodes, and what it registers.
pub(crate) struct Node {
    shared: Arc<Shared>,
    client: async_nats::Client,
    kv: kv::Store,
    guarantee: DeliveryGuarantee,
    max_payload: usize,
    outbox: Outbox,
    /// The publisher task, awaited when the node leaves.
    publisher: Mutex<Option<::tokio::task::JoinHandle<()>>>,
    /// The other loops (registry watch, heartbeat, inbound), aborted when it leaves.
    tasks: Mutex<Vec<::tokio::task::AbortHandle>>,
    left: AtomicBool,
    /// Last: dropping an owned runtime joins its thread.
    runtime: ClientRuntime,
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
            consumer,
            messages,
            max_payload,
        } = link;
        let lease = config.lease;
        let shared = Arc::new(Shared {
            config,
            registry,
            local,
            dead_letters,
            policy,
            counters: Counters::default(),
            engine: OnceLock::new(),
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
        ];
        Node {
            shared,
            client,
            kv,
            guarantee,
            max_payload,
            outbox,
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

    /// This node's name.
    pub(crate) fn name(&self) -> &str {
        &self.shared.config.node
    }

    /// The live node `pid` is registered on, as this node's mirror sees it.
    pub(crate) fn node_of(&self, pid: &AgentPid) -> Option<String> {
        self.shared.registry.resolve(pid).map(|n| n.to_string())
    }

    /// The counters.
    pub(crate) fn stats(&self) -> ClusterStats {
        let c = &self.shared.counters;
        let handed = c.handed.get();
        let settled = c.published.get() + c.publish_failed.get();
        ClusterStats {
            node: self.name().to_string(),
            published: c.published.get(),
            publish_retries: c.publish_retries.get(),
            publish_failed: c.publish_failed.get(),
            queued: handed.saturating_sub(settled),
            received: c.received.get(),
            delivered: c.delivered.get(),
            redelivery_requests: c.redelivery_requests.get(),
            dead_lettered: c.dead_lettered.get(),
            undecodable: c.undecodable.get(),
            duplicates: c.duplicates.get(),
            calls_sent: c.calls_sent.get(),
            calls_failed: c.calls_failed.get(),
            calls_served: c.calls_served.get(),
        }
    }

    // ===== registration =====

    /// Makes `pid` resolve to this node on every node (a put in the registry).
    pub(crate) fn announce(
        &self,
        pid: &AgentPid,
    ) -> impl std::future::Future<Output = MessagingResult<()>> + Send + 'static {
        self.shared.registry.insert_own(pid);
        let (kv, key, node) = (self.kv.clone(), pid_key(pid), self.name().to_string());
        let url = self.shared.config.url.clone();
        async move {
            kv.put(key, node.into_bytes().into())
                .await
                .map(|_| ())
                .map_err(|e| {
                    MessagingError::System(format!(
                        "cluster: cannot register the pid in the registry at {url}: {e}"
                    ))
                })
        }
    }

    /// Makes `pid` stop resolving (a delete in the registry).
    pub(crate) fn withdraw(
        &self,
        pid: &AgentPid,
    ) -> impl std::future::Future<Output = MessagingResult<()>> + Send + 'static {
        self.shared.registry.remove(pid);
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
    /// stop resolving them at once), the publisher drains what is queued (bounded by
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
            // The heartbeat stops first, so the lease is not written back.
            for task in &tasks {
                task.abort();
            }
            let _ = ::tokio::time::timeout(bound, async {
                for pid in shared.registry.own_pids() {
                    let _ = kv.delete(pid_key(&pid)).await;
                }
                let _ = kv.delete(lease_key(&shared.config.node)).await;
            })
            .await;
            drain.drain(bound);
            if let Some(publisher) = publisher {
                let _ = publisher.await;
            }
            let _ = ::tokio::time::timeout(bound, client.flush()).await;
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

/// Renews this node's lease every third of it.
async fn heartbeat(shared: Arc<Shared>, kv: kv::Store, lease: Duration) {
    let mut every = ::tokio::time::interval(lease / 3);
    every.set_missed_tick_behavior(::tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = put_lease(&kv, &shared.config).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
