//! Faults in the tokio flavour: a handler that panics inside one agent's task (only that
//! task fails; nothing is poisoned; its undelivered messages are dead-lettered on
//! unregister), mailbox-full storms retried by the timer task, and circuit-breaker trips
//! and recovery on a multi-thread runtime. Every message is counted: delivered +
//! dead-lettered == sent, nothing duplicated.
#![cfg(feature = "tokio")]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use terraphim_agent_messaging::tokio::{
    AgentMailbox, AgentMessage, AgentPid, CircuitBreakerConfig, DeadLetterReason, DeadMessage,
    DeliveryConfig, DeliveryGuarantee, MailboxConfig, MessageSystem, MessagingError, RouterConfig,
};
use tokio::task::JoinHandle;

mod common;
use common::tokio::within;
use common::DEADLINE;

/// `(producer, seq)` of a message.
type Tag = (u64, u64);

fn tag_of(m: &AgentMessage) -> Tag {
    *m.payload::<Tag>().expect("payload is (producer, seq)")
}

/// An agent task: handles every message (replying `seq * 2` to calls) and panics on
/// `panic_on`.
fn agent(
    mailbox: AgentMailbox,
    panic_on: Option<Tag>,
    handled: Arc<Mutex<Vec<Tag>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(message) = mailbox.receive().await {
            let tag = tag_of(&message);
            if Some(tag) == panic_on {
                panic!("handler failure on {tag:?} (expected by the test)");
            }
            handled.lock().unwrap().push(tag);
            if let AgentMessage::Call { reply_to, .. } = message {
                let _ = reply_to.send(Box::new(tag.1 * 2));
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_fails_only_its_agent() {
    let system = MessageSystem::new(RouterConfig::default());
    let client = AgentPid::new();
    let pids: Vec<AgentPid> = (0..3).map(|_| AgentPid::new()).collect();
    let handled: Vec<Arc<Mutex<Vec<Tag>>>> = (0..3).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        system.register_agent(pid.clone()).await.unwrap();
        let mailbox = system.get_mailbox(pid).await.unwrap();
        let panic_on = (i == 0).then_some((0, 50));
        tasks.push(agent(mailbox, panic_on, handled[i].clone()));
    }
    let mut sent = [0u64; 3];
    let send = |i: usize, seq: u64| {
        let system = system.clone();
        let to = pids[i].clone();
        async move {
            system
                .send(&to, AgentMessage::cast(AgentPid::new(), (i as u64, seq)))
                .await
        }
    };

    // Agent 0 gets casts 0..50, the fatal call 50, then casts 51..100.
    for seq in 0..50 {
        send(0, seq).await.unwrap();
    }
    let fatal = system.as_sync().call_async(
        client.clone(),
        &pids[0],
        (0u64, 50u64),
        Duration::from_secs(60),
    );
    for seq in 51..100 {
        send(0, seq).await.unwrap();
    }
    sent[0] = 100;
    // Agents 1 and 2 work meanwhile.
    for seq in 0..100 {
        for (i, count) in sent.iter_mut().enumerate().skip(1) {
            send(i, seq).await.unwrap();
            *count += 1;
        }
    }

    // Only agent 0's task fails, with its panic.
    let failed = within(10, tasks.remove(0)).await.unwrap_err();
    assert!(failed.is_panic(), "{failed:?}");
    // The call it died on fails at once (its reply sender went with the panic), not
    // after its 60 s timeout.
    let started = Instant::now();
    match within(10, fatal).await {
        Err(MessagingError::DeliveryFailed(pid, _)) => assert_eq!(pid, pids[0]),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(tasks.iter().all(|t| !t.is_finished()), "others still run");

    // The others keep receiving and replying; nothing is poisoned.
    for seq in 100..150 {
        for i in 1..3 {
            let reply: u64 = within(
                10,
                system.call_typed(
                    client.clone(),
                    &pids[i],
                    (i as u64, seq),
                    Duration::from_secs(5),
                ),
            )
            .await
            .unwrap();
            assert_eq!(reply, seq * 2);
            sent[i] += 1;
        }
    }
    // Agent 0's task died with its last mailbox handle: the agent is stopped
    // (`panicked: …`, issue 14), so it is no longer routed to.
    let (router, mailboxes) = system.get_stats().await;
    assert_eq!(router.active_routes, 2);
    assert_eq!(mailboxes.len(), 2);
    let newcomer = AgentPid::new();
    system.register_agent(newcomer.clone()).await.unwrap();
    let newcomer_handled = Arc::default();
    let newcomer_task = agent(
        system.get_mailbox(&newcomer).await.unwrap(),
        None,
        Arc::clone(&newcomer_handled),
    );
    let reply: u64 = within(
        10,
        system.call_typed(client.clone(), &newcomer, (9u64, 21u64), DEADLINE),
    )
    .await
    .unwrap();
    assert_eq!(reply, 42);

    // A send to the stopped agent is refused (and dead-lettered as `AgentNotFound`).
    assert!(matches!(
        send(0, 100).await,
        Err(MessagingError::AgentNotFound(pid)) if pid == pids[0]
    ));
    sent[0] += 1;

    // What it never handled was dead-lettered with its exit reason when it crashed.
    let crashed = DeadLetterReason::AgentStopped(
        "panicked: handler failure on (0, 50) (expected by the test)".into(),
    );
    let dead = system.dead_letters();
    let handled0: Vec<Tag> = handled[0].lock().unwrap().clone();
    assert_eq!(handled0, (0..50).map(|s| (0, s)).collect::<Vec<_>>());
    let mut dead_tags: Vec<Tag> = dead
        .iter()
        .map(|d| {
            assert_eq!(d.to, pids[0]);
            assert!(
                d.reason == crashed || d.reason == DeadLetterReason::AgentNotFound,
                "{}",
                d.reason
            );
            match &d.message {
                DeadMessage::Message(m) => tag_of(m),
                DeadMessage::Envelope(e) => panic!("{e:?}"),
            }
        })
        .collect();
    dead_tags.sort_unstable();
    assert_eq!(dead_tags, (51..101).map(|s| (0, s)).collect::<Vec<_>>());
    // handled + the fatal one + dead-lettered == sent.
    assert_eq!(handled0.len() as u64 + 1 + dead_tags.len() as u64, sent[0]);

    system.shutdown().await.unwrap();
    for task in tasks {
        within(10, task).await.unwrap();
    }
    within(10, newcomer_task).await.unwrap();
    for i in 1..3 {
        let got = handled[i].lock().unwrap().clone();
        let unique: HashSet<Tag> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "agent {i}: duplicates");
        assert_eq!(got.len() as u64, sent[i], "agent {i}: lost");
    }
}

/// What a storm run saw.
#[derive(Default, Clone)]
struct Tally {
    delivered: HashSet<Tag>,
    duplicates: usize,
}

/// Receives until the mailbox closes, pausing `pause` every `every` messages.
fn consumer(
    mailbox: AgentMailbox,
    every: usize,
    pause: Duration,
    tally: Arc<Mutex<Tally>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok(m) = mailbox.receive().await {
            let tag = tag_of(&m);
            {
                let mut t = tally.lock().unwrap();
                if !t.delivered.insert(tag) {
                    t.duplicates += 1;
                }
            }
            n += 1;
            if n % every == 0 {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

/// `producers` tasks each send `per` casts to `to`; returns how many were accepted
/// (`Ok`) and the refused ones' tags (which must be in the dead letters).
async fn produce(
    system: &MessageSystem,
    to: &AgentPid,
    producers: u64,
    per: u64,
) -> (u64, Vec<Tag>) {
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let (system, to) = (system.clone(), to.clone());
            tokio::spawn(async move {
                let mut refused = Vec::new();
                for seq in 0..per {
                    match system
                        .send(&to, AgentMessage::cast(AgentPid::new(), (p, seq)))
                        .await
                    {
                        Ok(()) => {}
                        Err(MessagingError::Overloaded(_) | MessagingError::CircuitOpen(_)) => {
                            refused.push((p, seq))
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                    if seq % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        refused.extend(within(10, t).await.unwrap());
    }
    (producers * per - refused.len() as u64, refused)
}

/// Waits until every accepted message is settled (delivered or given up on, by the
/// delivery ledger) and the mailbox is empty.
///
/// `messages_pending == 0` is not enough: while the timer task fires a batch of
/// retries, those messages are out of the wheel and counted nowhere for a moment.
async fn quiesce(system: &MessageSystem, mailbox: &AgentMailbox) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = system.as_sync().delivery_stats();
        let settled = s.delivered + s.acknowledged + s.failed + s.expired + s.duplicates;
        if settled == s.total_messages && mailbox.queue_size().await == 0 {
            assert_eq!(s.pending + s.in_transit, 0);
            return;
        }
        assert!(Instant::now() < deadline, "not settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Checks delivered + dead-lettered == sent with nothing duplicated; returns the dead
/// letters' count.
fn check_tally(system: &MessageSystem, tally: &Tally, producers: u64, per: u64) -> usize {
    assert_eq!(tally.duplicates, 0, "duplicated deliveries");
    let dead: HashSet<Tag> = system
        .dead_letters()
        .iter()
        .map(|d| match &d.message {
            DeadMessage::Message(m) => tag_of(m),
            DeadMessage::Envelope(e) => panic!("{e:?}"),
        })
        .collect();
    assert!(
        tally.delivered.is_disjoint(&dead),
        "delivered and dead-lettered"
    );
    let all: HashSet<Tag> = (0..producers)
        .flat_map(|p| (0..per).map(move |s| (p, s)))
        .collect();
    let accounted: HashSet<Tag> = tally.delivered.union(&dead).copied().collect();
    assert_eq!(accounted, all, "lost messages");
    dead.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_mailbox_full_storm_retries() {
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee: DeliveryGuarantee::AtLeastOnce,
            max_retries: 1_000,
            retry_delay: Duration::from_millis(1),
            max_retry_delay: Duration::from_millis(4),
            ..DeliveryConfig::default()
        },
        max_concurrent_deliveries: 100_000,
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: 8,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap();
    assert!(system.has_timer_task(), "retries run on the runtime");
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).await.unwrap();
    let mailbox = system.get_mailbox(&pid).await.unwrap();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let receiving = consumer(
        mailbox.clone(),
        100,
        Duration::from_millis(1),
        tally.clone(),
    );
    let (producers, per) = (4, 500);
    let (accepted, refused) = produce(&system, &pid, producers, per).await;
    assert!(
        refused.is_empty(),
        "nothing refused at this in-flight limit"
    );
    assert_eq!(accepted, producers * per);
    quiesce(&system, &mailbox).await;
    let (router, _) = system.get_stats().await;
    assert!(router.retry_attempts > 0, "the storm needed retries");
    let seen = tally.lock().unwrap().clone();
    let dead = check_tally(&system, &seen, producers, per);
    assert_eq!(dead, 0, "nothing ran out of 1000 retries");
    let stats = system.as_sync().delivery_stats();
    assert_eq!(stats.total_messages, producers * per);
    assert_eq!(
        stats.delivered + stats.failed + stats.expired,
        producers * per
    );
    system.shutdown().await.unwrap();
    within(10, receiving).await.unwrap();
    assert_eq!(
        tally.lock().unwrap().delivered.len() as u64,
        producers * per
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_storm_with_exhausted_retries_and_in_flight_limit() {
    // Few retries and a small in-flight limit: some messages are given up on, each
    // exactly once, none lost.
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            max_retries: 2,
            retry_delay: Duration::from_millis(1),
            max_retry_delay: Duration::from_millis(2),
            ..DeliveryConfig::default()
        },
        max_concurrent_deliveries: 64,
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: 4,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).await.unwrap();
    let mailbox = system.get_mailbox(&pid).await.unwrap();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let receiving = consumer(mailbox.clone(), 20, Duration::from_millis(2), tally.clone());
    let (producers, per) = (4, 400);
    let (_accepted, refused) = produce(&system, &pid, producers, per).await;
    quiesce(&system, &mailbox).await;
    let seen = tally.lock().unwrap().clone();
    let dead = check_tally(&system, &seen, producers, per);
    assert!(dead >= refused.len());
    assert!(dead > 0, "this storm must exhaust some retries");
    system.shutdown().await.unwrap();
    within(10, receiving).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_trips_and_recovers() {
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            max_retries: 10_000,
            retry_delay: Duration::from_millis(1),
            max_retry_delay: Duration::from_millis(5),
            ..DeliveryConfig::default()
        },
        max_concurrent_deliveries: 100_000,
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: 4,
            ..MailboxConfig::default()
        })
        .circuit_breaker(CircuitBreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_millis(5),
        })
        .build()
        .unwrap();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).await.unwrap();
    let mailbox = system.get_mailbox(&pid).await.unwrap();

    // Nobody receives yet: 4 fit, the next 3 refusals open the breaker.
    let (producers, per) = (3, 300);
    let (accepted, refused) = produce(&system, &pid, producers, per).await;
    assert_eq!((accepted, refused.len()), (producers * per, 0));
    let (router, _) = system.get_stats().await;
    assert!(router.circuit_trips >= 1, "the breaker opened");
    assert_eq!(mailbox.queue_size().await, 4, "capacity respected");

    // The receiver comes back, slowly: probes succeed, the breaker closes, and every
    // retried message arrives (some trips may repeat while it is slow).
    let tally = Arc::new(Mutex::new(Tally::default()));
    let receiving = consumer(mailbox.clone(), 50, Duration::from_millis(3), tally.clone());
    quiesce(&system, &mailbox).await;
    let seen = tally.lock().unwrap().clone();
    let dead = check_tally(&system, &seen, producers, per);
    assert_eq!(dead, 0);

    // Closed again: a send goes straight into the mailbox, not to a retry. (Wait for
    // the slow consumer to empty the mailbox first, or a full mailbox would refuse it.)
    let deadline = Instant::now() + DEADLINE;
    while mailbox.queue_size().await > 0 {
        assert!(Instant::now() < deadline, "the consumer stopped");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = tally.lock().unwrap().delivered.len();
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), (99u64, 0u64)))
        .await
        .unwrap();
    assert_eq!(system.get_stats().await.0.messages_pending, 0);
    let deadline = Instant::now() + DEADLINE;
    while tally.lock().unwrap().delivered.len() == before {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    system.shutdown().await.unwrap();
    within(10, receiving).await.unwrap();
}
