//! Connecting a node: the client, the stream, the registry bucket, the name check,
//! the consumer and the subscriptions, all within the connect timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;

use super::config::{Auth, ClusterConfig};
use super::node::lock;
use super::registry::{lease_key, LeaseValue, Registry};
use crate::error::{MessagingError, MessagingResult};

/// The shortest time the server waits for a message's ack before redelivering it.
pub(crate) const ACK_WAIT_FLOOR: Duration = Duration::from_secs(5);

/// A connection made and set up, not yet running (see [`connect`]).
pub(crate) struct Link {
    pub(super) config: ClusterConfig,
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) kv: kv::Store,
    pub(super) registry: Registry,
    pub(super) watch: kv::Watch,
    pub(super) direct: async_nats::Subscriber,
    pub(super) calls: async_nats::Subscriber,
    pub(super) alive: async_nats::Subscriber,
    pub(super) consumer: consumer::PullConsumer,
    pub(super) messages: consumer::pull::Stream,
    pub(super) max_payload: usize,
    /// The name was taken over from a holder whose lease had not lapsed but that no
    /// longer answered (a crashed predecessor).
    pub(super) took_over: bool,
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
        // Named here: the TLS layer reports only the OS error, when it connects.
        std::fs::File::open(ca).map_err(|e| {
            MessagingError::Configuration(format!(
                "cluster: cannot read the CA file {}: {e}",
                ca.display()
            ))
        })?;
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
    // A live node with the same name would share this node's consumer and lease; one
    // that crashed (its lease not lapsed yet) no longer answers on its alive subject.
    step.set("checking that this node's name is free");
    let mut took_over = false;
    if let Ok(Some(entry)) = kv.entry(lease_key(&config.node)).await {
        if let Some(age) = live_lease_age(&entry) {
            took_over = true;
            if holder_answers(&client, &config).await {
                return Err(MessagingError::Configuration(format!(
                    "cluster: node name {:?} is in use by a live node (its lease was renewed \
                     {age:?} ago and it answers); choose another name, or stop that node",
                    config.node
                )));
            }
        }
    }
    // Our own lease first: the bucket is not empty, so the watch below has a current
    // entry to announce that it has caught up.
    step.set("writing this node's lease");
    put_lease(&kv, &config, false)
        .await
        .map_err(|e| failed("cannot write this node's lease", &e))?;
    let alive = client
        .subscribe(config.alive_subject(&config.node))
        .await
        .map_err(|e| failed("cannot subscribe", &e))?;
    // Only now, with the name ours: the consumer and the subscriptions.
    step.set("setting up this node's consumer");
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.node,
            consumer::pull::Config {
                durable_name: Some(config.node.clone()),
                filter_subject: config.node_subject(&config.node),
                ack_policy: consumer::AckPolicy::Explicit,
                // A message a crashed node took but never settled comes back to its
                // successor one lease later, at least 5 s (a shorter wait would
                // redeliver what a busy node is still working through); a
                // `require_ack` message waiting longer for its agent sends progress.
                ack_wait: config.lease.max(ACK_WAIT_FLOOR),
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
        alive,
        consumer,
        messages,
        max_payload,
        took_over,
    })
}

/// How long ago a lease entry was renewed, if its lease has not lapsed yet and its
/// node has not left: the server's timestamp against this machine's wall clock (the
/// one place clocks meet; a skew shifts the answer by the skew).
fn live_lease_age(entry: &kv::Entry) -> Option<Duration> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let value = LeaseValue::decode(&entry.value)?;
    if value.left {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let renewed = u128::try_from(entry.created.unix_timestamp_nanos()).ok()?;
    let age = Duration::from_nanos(u64::try_from(now.saturating_sub(renewed)).ok()?);
    (age < Duration::from_millis(value.lease_ms)).then_some(age)
}

/// Whether the node holding this node's name still answers on its alive subject. The
/// server answers "no responders" at once when nobody subscribes: a crashed process's
/// connection, and its subscriptions, are gone as soon as the server sees its socket
/// close. A probe that gets no answer at all (a holder whose loops are stopping, a
/// server not done with the closed socket) is tried again; a holder that stays
/// silent through every probe counts as live (refusing the name is the safe mistake).
async fn holder_answers(client: &async_nats::Client, config: &ClusterConfig) -> bool {
    const PROBES: u32 = 3;
    let wait = (config.connect_timeout / (2 * PROBES)).min(Duration::from_millis(500));
    for _ in 0..PROBES {
        let request = async_nats::Request::new()
            .payload(bytes::Bytes::new())
            .timeout(Some(wait));
        match client
            .send_request(config.alive_subject(&config.node), request)
            .await
        {
            Ok(_) => return true,
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                return false
            }
            Err(_) => continue,
        }
    }
    true
}

/// Writes this node's lease (`left`: a durable node leaving cleanly).
pub(super) async fn put_lease(
    kv: &kv::Store,
    config: &ClusterConfig,
    left: bool,
) -> Result<u64, kv::PutError> {
    let value = LeaseValue {
        lease_ms: u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX),
        durable: config.durable,
        left,
    };
    kv.put(lease_key(&config.node), value.encode()).await
}
