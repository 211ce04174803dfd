//! A bounded stress run for the leak checker: `valgrind --leak-check=full` runs it in CI.
//!
//! Sync core: 4 producers × 1,000 messages into a bounded mailbox (refusals retried by
//! the timer thread), `require_ack` envelopes redelivered until acknowledged, calls
//! with timeouts (answered and timed out), a load-balanced group, an agent unregistered
//! mid-stream, and shutdown. Then (with the `tokio` feature, the default) the tokio
//! flavour briefly on a current-thread runtime. Every message is tallied (delivered +
//! dead-lettered == sent, nothing duplicated); the program panics (exit ≠ 0) if the
//! tally is off.
//!
//! ```text
//! cargo run --release --example leak_check
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadLetter, DeadMessage, DeliveryConfig, DeliveryOptions,
    DeliveryStats, LoadBalance, MailboxConfig, MessageEnvelope, MessageSystem, MessagingError,
    RouterConfig,
};

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 1_000;

/// `(producer, seq)`.
type Tag = (u64, u64);

fn tag_of(m: &AgentMessage) -> Tag {
    if let Some(t) = m.payload::<Tag>() {
        return *t;
    }
    let v = m
        .payload::<serde_json::Value>()
        .expect("a tag or a JSON tag");
    (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
}

fn dead_tag(d: &DeadLetter) -> Option<Tag> {
    match &d.message {
        DeadMessage::Message(m) => m
            .payload::<Tag>()
            .copied()
            .or_else(|| m.payload::<serde_json::Value>().map(|_| tag_of(m))),
        DeadMessage::Envelope(e) => Some((
            e.payload[0].as_u64().unwrap(),
            e.payload[1].as_u64().unwrap(),
        )),
    }
}

/// Every accepted message is delivered, acknowledged or given up on. (Pending counts
/// alone can read 0 while the timer driver is refiring a batch of retries.)
fn settled(s: &DeliveryStats) -> bool {
    s.pending + s.in_transit == 0
        && s.delivered + s.acknowledged + s.failed + s.expired + s.duplicates == s.total_messages
}

/// What receivers saw.
#[derive(Default)]
struct Seen {
    tags: HashSet<Tag>,
    duplicates: u64,
}

/// Receives until closed: records casts, answers calls, acknowledges `require_ack`
/// envelopes on their second copy (so each is redelivered once).
fn receiver(
    system: MessageSystem,
    mailbox: AgentMailbox,
    seen: Arc<Mutex<Seen>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut first_copies = HashSet::new();
        while let Ok(message) = mailbox.receive() {
            if let AgentMessage::Call {
                payload, reply_to, ..
            } = message
            {
                let n = *payload.downcast::<u64>().unwrap();
                let _ = reply_to.send(Box::new(n + 1));
                continue;
            }
            let tag = tag_of(&message);
            let acked = message.message_type() == Some("acked");
            if acked {
                if first_copies.insert(tag) {
                    continue; // ignore the first copy: it comes again
                }
                // Copies already queued may still arrive after the ack: at-least-once
                // allows them, so only non-acked messages count as duplicates.
                let _ = system.acknowledge(message.id());
            }
            let mut seen = seen.lock().unwrap();
            if !seen.tags.insert(tag) && !acked {
                seen.duplicates += 1;
            }
        }
    })
}

fn sync_core() {
    let started = Instant::now();
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            // Backoff up to 50 ms: under valgrind, which runs one thread at a time, a
            // few-millisecond cap lets the timer thread's retries crowd out the
            // receivers that would make room for them.
            max_retries: 100_000,
            retry_delay: Duration::from_millis(1),
            max_retry_delay: Duration::from_millis(200),
            acknowledgment_timeout: Duration::from_millis(50),
            ..DeliveryConfig::default()
        },
        max_concurrent_deliveries: 1_000_000,
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: 64,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut receivers = Vec::new();
    let mut register = |pid: &AgentPid| {
        system.register_agent(pid.clone()).unwrap();
        let mailbox = system.get_mailbox(pid).unwrap();
        receivers.push(receiver(system.clone(), mailbox, seen.clone()));
    };
    let (sink, server, doomed) = (AgentPid::new(), AgentPid::new(), AgentPid::new());
    let workers = [AgentPid::new(), AgentPid::new()];
    for pid in [&sink, &server, &doomed, &workers[0], &workers[1]] {
        register(pid);
    }
    let group = system.create_group(LoadBalance::RoundRobin).unwrap();
    for w in &workers {
        system.join_group(&group, w).unwrap();
    }
    // Registered, never received from: calls to it time out.
    let mute = AgentPid::new();
    system.register_agent(mute.clone()).unwrap();

    let refused = Arc::new(Mutex::new(Vec::<Tag>::new()));
    let replies = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let system = system.clone();
            let (sink, server, doomed, group) =
                (sink.clone(), server.clone(), doomed.clone(), group.clone());
            let (refused, replies) = (refused.clone(), replies.clone());
            thread::spawn(move || {
                for seq in 0..PER_PRODUCER {
                    let tag = (p, seq);
                    let sent = match seq % 10 {
                        0 => {
                            let options = DeliveryOptions {
                                require_ack: true,
                                ..DeliveryOptions::default()
                            };
                            let e = MessageEnvelope::new(
                                sink.clone(),
                                "acked".into(),
                                json!([p, seq]),
                                options,
                            );
                            system.send_message(e)
                        }
                        1 => system.send(&group, AgentMessage::cast(AgentPid::nil(), tag)),
                        2 => system.send(&doomed, AgentMessage::cast(AgentPid::nil(), tag)),
                        _ => system.send(&sink, AgentMessage::cast(AgentPid::nil(), tag)),
                    };
                    match sent {
                        Ok(()) => {}
                        Err(MessagingError::AgentNotFound(_)) => refused.lock().unwrap().push(tag),
                        Err(e) => panic!("{e}"),
                    }
                    if seq % 200 == 0 {
                        let n: u64 = system
                            .call_typed(AgentPid::new(), &server, seq, Duration::from_secs(30))
                            .unwrap();
                        assert_eq!(n, seq + 1);
                        replies.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();

    // Mid-stream: the doomed agent goes, and calls to the mute one time out.
    thread::sleep(Duration::from_millis(5));
    system.unregister_agent(&doomed).unwrap();
    for _ in 0..3 {
        match system.call(AgentPid::new(), &mute, 0u64, Duration::from_millis(2)) {
            Err(MessagingError::MessageTimeout(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    for t in producers {
        t.join().unwrap();
    }
    let sent_at = Instant::now();

    // Quiesce: everything settled.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = system.delivery_stats();
        if settled(&stats) {
            break;
        }
        assert!(Instant::now() < deadline, "stuck: {stats:?}");
        thread::sleep(Duration::from_millis(2));
    }
    let quiet_at = Instant::now();
    system.shutdown().unwrap();
    for r in receivers {
        r.join().unwrap();
    }

    let dead = system.dead_letters();
    let dead_tags: HashSet<Tag> = dead.iter().filter_map(dead_tag).collect();
    let mute_calls = dead.iter().filter(|d| d.to == mute).count();
    assert_eq!(
        mute_calls, 3,
        "the timed-out calls are dead-lettered at shutdown"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.duplicates, 0, "duplicated");
    let refused = refused.lock().unwrap();
    assert!(refused.iter().all(|t| dead_tags.contains(t)));
    let all: HashSet<Tag> = (0..PRODUCERS)
        .flat_map(|p| (0..PER_PRODUCER).map(move |s| (p, s)))
        .collect();
    let accounted: HashSet<Tag> = seen.tags.union(&dead_tags).copied().collect();
    assert!(seen.tags.is_disjoint(&dead_tags), "delivered and dead");
    assert_eq!(accounted, all, "lost messages");
    let calls = replies.load(Relaxed);
    assert_eq!(calls, PRODUCERS * PER_PRODUCER.div_ceil(200));
    println!(
        "sync core: sent in {:.1?}, quiet {:.1?} later",
        sent_at - started,
        quiet_at - sent_at
    );
    println!(
        "sync core: {} sent, {} delivered, {} dead-lettered ({} refused after unregister), {} calls answered, 3 timed out",
        all.len(),
        seen.tags.len(),
        dead_tags.len(),
        refused.len(),
        calls
    );
}

#[cfg(feature = "tokio")]
fn tokio_flavour() {
    use terraphim_agent_messaging::tokio as tk;
    const CASTS: u64 = 500;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (delivered, dead, answered) = runtime.block_on(async {
        let config = RouterConfig {
            delivery_config: DeliveryConfig {
                max_retries: 100_000,
                retry_delay: Duration::from_millis(1),
                max_retry_delay: Duration::from_millis(2),
                ..DeliveryConfig::default()
            },
            max_concurrent_deliveries: 1_000_000,
            ..RouterConfig::default()
        };
        let system = tk::MessageSystem::builder(config)
            .mailbox_config(MailboxConfig {
                max_messages: 16,
                ..MailboxConfig::default()
            })
            .build()
            .unwrap();
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).await.unwrap();
        let mailbox = system.get_mailbox(&pid).await.unwrap();
        let worker = tokio::spawn(async move {
            let mut tags = HashSet::new();
            while let Ok(m) = mailbox.receive().await {
                if let AgentMessage::Call {
                    payload, reply_to, ..
                } = m
                {
                    let n = *payload.downcast::<u64>().unwrap();
                    let _ = reply_to.send(Box::new(n * 3));
                } else {
                    assert!(tags.insert(tag_of(&m)), "duplicate");
                }
            }
            tags
        });
        let mut answered = 0;
        for seq in 0..CASTS {
            system
                .send(&pid, AgentMessage::cast(AgentPid::nil(), (9u64, seq)))
                .await
                .unwrap();
            if seq % 50 == 0 {
                let n: u64 = system
                    .call_typed(AgentPid::new(), &pid, seq, Duration::from_secs(30))
                    .await
                    .unwrap();
                assert_eq!(n, seq * 3);
                answered += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !settled(&system.as_sync().delivery_stats()) {
            assert!(Instant::now() < deadline, "stuck");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        system.shutdown().await.unwrap();
        let tags = worker.await.unwrap();
        (
            tags.len() as u64,
            system.dead_letters().len() as u64,
            answered,
        )
    });
    drop(runtime);
    assert_eq!(delivered + dead, CASTS, "lost messages");
    println!("tokio flavour: {CASTS} sent, {delivered} delivered, {dead} dead-lettered, {answered} calls answered");
}

fn main() {
    let started = Instant::now();
    sync_core();
    #[cfg(feature = "tokio")]
    tokio_flavour();
    println!("leak_check: ok in {:.1?}", started.elapsed());
}
