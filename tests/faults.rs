//! Faults on real threads: full mailboxes, stalling receivers, breaker trips,
//! unregister/re-register chaos, unacked messages, panicking handlers, receivers dropped
//! mid-stream and shutdown under load; every message is tallied (received, dead-lettered
//! or refused), none lost, none duplicated where the guarantee forbids it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::*;

mod common;
use common::{XorShift, DEADLINE};

fn config(guarantee: DeliveryGuarantee, max_retries: u32) -> RouterConfig {
    let mut config = RouterConfig {
        max_concurrent_deliveries: 100_000,
        ..RouterConfig::default()
    };
    let d = &mut config.delivery_config;
    d.guarantee = guarantee;
    d.max_retries = max_retries;
    d.retry_delay = Duration::from_millis(1);
    d.retry_backoff_multiplier = 2.0;
    d.max_retry_delay = Duration::from_millis(5);
    d.acknowledgment_timeout = Duration::from_millis(10);
    config
}

/// A system on real threads. It keeps every dead letter: these tests account for each
/// message by id, and a run can give up on more than the default bound.
fn system(config: RouterConfig, capacity: usize, breaker: bool) -> MessageSystem {
    let mut builder = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: capacity,
            ..MailboxConfig::default()
        })
        .dead_letter_capacity(usize::MAX);
    if breaker {
        builder = builder.circuit_breaker(CircuitBreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_millis(15),
        });
    }
    builder.build().unwrap()
}

/// Polls until nothing waits for a retry or an ack, and the ledger adds up (a retry
/// the driver thread has taken off the wheel but not yet pushed is in no counter).
fn quiesce(system: &MessageSystem) {
    let start = Instant::now();
    loop {
        let s = system.delivery_stats();
        if s.pending + s.in_transit == 0
            && s.total_messages
                == s.delivered + s.acknowledged + s.failed + s.expired + s.duplicates
        {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "never quiescent: {s:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn assert_ledger(s: &DeliveryStats) {
    assert_eq!(
        s.total_messages,
        s.delivered
            + s.acknowledged
            + s.failed
            + s.expired
            + s.duplicates
            + s.pending
            + s.in_transit,
        "ledger: {s:?}"
    );
}

/// The reason a refused send's dead letter must carry.
fn reason_of(e: &MessagingError) -> DeadLetterReason {
    match e {
        MessagingError::AgentNotFound(_) => DeadLetterReason::AgentNotFound,
        MessagingError::ChannelClosed(_) => DeadLetterReason::MailboxClosed,
        MessagingError::MailboxFull(_) => DeadLetterReason::MailboxFull,
        MessagingError::CircuitOpen(_) => DeadLetterReason::CircuitOpen,
        other => panic!("unexpected send error {other:?}"),
    }
}

fn payload_of(m: &AgentMessage) -> (u64, u64) {
    let v = m.payload::<serde_json::Value>().expect("a json payload");
    (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
}

/// What one receiver thread saw.
#[derive(Default)]
struct Seen {
    /// (id, (producer, seq)) of every message taken out of a mailbox.
    received: Vec<(MessageId, (u64, u64))>,
    /// Ids whose `acknowledge` returned `Ok`.
    acked: Vec<MessageId>,
}

/// Receives for `pid` until `stop` is set and the system is shut down, following the
/// agent through unregister/re-register; stalls now and then so mailboxes fill up.
/// `ack(seq)`: whether to acknowledge that message (`None`: never ack).
fn receiver(
    system: MessageSystem,
    pid: AgentPid,
    stop: Arc<AtomicBool>,
    seed: u64,
    ack: Option<fn(u64) -> bool>,
) -> thread::JoinHandle<Seen> {
    thread::spawn(move || {
        let mut rng = XorShift::new(seed);
        let mut seen = Seen::default();
        loop {
            let finished = stop.load(SeqCst) && system.is_shut_down();
            let Some(mailbox) = system.get_mailbox(&pid) else {
                if finished {
                    return seen;
                }
                thread::sleep(Duration::from_micros(200));
                continue;
            };
            loop {
                match mailbox.receive_timeout(Duration::from_millis(5)) {
                    Ok(m) => {
                        let (p, seq) = payload_of(&m);
                        if let Some(ack) = ack {
                            if ack(seq) && system.acknowledge(m.id()).is_ok() {
                                seen.acked.push(m.id().clone());
                            }
                        }
                        seen.received.push((m.id().clone(), (p, seq)));
                        if rng.below(16) == 0 {
                            thread::sleep(Duration::from_millis(rng.below(3) + 1));
                        }
                    }
                    Err(MessagingError::MessageTimeout(_)) => {}
                    Err(MessagingError::ChannelClosed(_)) => break,
                    Err(e) => panic!("receive: {e:?}"),
                }
            }
            drop(mailbox);
            if stop.load(SeqCst) && system.is_shut_down() {
                return seen;
            }
        }
    })
}

/// What the producers sent: id → (producer, seq), and the refused sends.
#[derive(Default)]
struct Sent {
    ids: HashMap<MessageId, (u64, u64)>,
    refused: Vec<(MessageId, MessagingError)>,
    /// Sends refused because the system was shut down: never accepted.
    after_shutdown: Vec<MessageId>,
}

fn producer(
    system: MessageSystem,
    agents: Vec<AgentPid>,
    p: u64,
    count: u64,
    require_ack: bool,
    stop: Option<Arc<AtomicBool>>,
) -> thread::JoinHandle<Sent> {
    thread::spawn(move || {
        let mut rng = XorShift::new(p + 100);
        let mut sent = Sent::default();
        for seq in 0..count {
            if stop.as_ref().is_some_and(|s| s.load(SeqCst)) {
                break;
            }
            let to = &agents[rng.below(agents.len() as u64) as usize];
            let options = DeliveryOptions {
                require_ack,
                ..DeliveryOptions::default()
            };
            let e = MessageEnvelope::new(to.clone(), "job".into(), json!([p, seq]), options);
            let id = e.id.clone();
            sent.ids.insert(id.clone(), (p, seq));
            match system.send_message(e) {
                Ok(()) => {}
                Err(MessagingError::System(_)) if system.is_shut_down() => {
                    sent.ids.remove(&id);
                    sent.after_shutdown.push(id);
                    break;
                }
                Err(e) => sent.refused.push((id, e)),
            }
            if rng.below(64) == 0 {
                thread::yield_now();
            }
        }
        sent
    })
}

/// Unregisters and re-registers a random agent now and then, until `stop`.
fn chaos(
    system: MessageSystem,
    agents: Vec<AgentPid>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut rng = XorShift::new(7);
        let mut rounds = 0;
        while !stop.load(SeqCst) {
            thread::sleep(Duration::from_millis(rng.below(4) + 2));
            let pid = &agents[rng.below(agents.len() as u64) as usize];
            system.unregister_agent(pid).unwrap();
            thread::sleep(Duration::from_millis(1));
            system.register_agent(pid.clone()).unwrap();
            rounds += 1;
        }
        rounds
    })
}

fn merge(sents: Vec<Sent>) -> Sent {
    let mut all = Sent::default();
    for s in sents {
        all.ids.extend(s.ids);
        all.refused.extend(s.refused);
        all.after_shutdown.extend(s.after_shutdown);
    }
    all
}

/// Dead letters by id: (reason, whether the router kept the envelope).
fn dead_by_id(dead: Vec<DeadLetter>) -> HashMap<MessageId, Vec<(DeadLetterReason, bool)>> {
    let mut by_id: HashMap<MessageId, Vec<(DeadLetterReason, bool)>> = HashMap::new();
    for d in dead {
        let envelope = matches!(d.message, DeadMessage::Envelope(_));
        by_id.entry(d.id).or_default().push((d.reason, envelope));
    }
    by_id
}

// ===== stress with faults, no acks =====

struct Outcome {
    sent: Sent,
    received: HashMap<MessageId, u32>,
    acked: HashMap<MessageId, u32>,
    dead: HashMap<MessageId, Vec<(DeadLetterReason, bool)>>,
    stats: DeliveryStats,
    router: RouterStats,
    chaos_rounds: usize,
}

/// Runs producers, receivers and chaos, waits for quiescence, shuts down, and collects
/// everything.
fn run(
    system: MessageSystem,
    agents: usize,
    producers: u64,
    per_producer: u64,
    require_ack: bool,
    ack: Option<fn(u64) -> bool>,
) -> Outcome {
    let pids: Vec<AgentPid> = (0..agents).map(|_| AgentPid::new()).collect();
    for pid in &pids {
        system.register_agent(pid.clone()).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop_chaos = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = pids
        .iter()
        .enumerate()
        .map(|(i, pid)| receiver(system.clone(), pid.clone(), stop.clone(), i as u64 + 1, ack))
        .collect();
    let chaos = chaos(system.clone(), pids.clone(), stop_chaos.clone());
    let producers: Vec<_> = (0..producers)
        .map(|p| {
            producer(
                system.clone(),
                pids.clone(),
                p,
                per_producer,
                require_ack,
                None,
            )
        })
        .collect();
    let sent = merge(producers.into_iter().map(|h| h.join().unwrap()).collect());
    stop_chaos.store(true, SeqCst);
    let chaos_rounds = chaos.join().unwrap();
    quiesce(&system);
    let stats = system.delivery_stats();
    let (router, _) = system.get_stats();
    stop.store(true, SeqCst);
    system.shutdown().unwrap();
    let mut received: HashMap<MessageId, u32> = HashMap::new();
    let mut acked: HashMap<MessageId, u32> = HashMap::new();
    for r in receivers {
        let seen = r.join().unwrap();
        for (id, payload) in seen.received {
            assert_eq!(
                sent.ids.get(&id),
                Some(&payload),
                "unknown or altered message"
            );
            *received.entry(id).or_default() += 1;
        }
        for id in seen.acked {
            *acked.entry(id).or_default() += 1;
        }
    }
    let dead = dead_by_id(system.dead_letters());
    for id in dead.keys() {
        assert!(sent.ids.contains_key(id), "dead letter for an unknown id");
    }
    // Refused sends are dead-lettered with the matching reason.
    for (id, e) in &sent.refused {
        let reasons = dead
            .get(id)
            .unwrap_or_else(|| panic!("{e:?} not dead-lettered"));
        assert!(
            reasons.iter().any(|(r, _)| *r == reason_of(e)),
            "{e:?} dead-lettered as {reasons:?}"
        );
    }
    let after = system.delivery_stats();
    assert_eq!(after.pending + after.in_transit, 0, "{after:?}");
    assert_ledger(&after);
    Outcome {
        sent,
        received,
        acked,
        dead,
        stats,
        router,
        chaos_rounds,
    }
}

/// No acks: each accepted message is received exactly once or dead-lettered exactly
/// once, under any guarantee.
fn stress_no_ack(guarantee: DeliveryGuarantee) {
    let system = system(config(guarantee, 3), 8, true);
    let o = run(system, 3, 3, 6000, false, None);
    let mut lost = 0;
    for id in o.sent.ids.keys() {
        let r = o.received.get(id).copied().unwrap_or(0);
        let d = o.dead.get(id).map_or(0, |v| v.len() as u32);
        assert!(r <= 1, "{guarantee:?}: received {r} times");
        assert!(r + d <= 1, "{guarantee:?}: received {r} and dead {d}");
        if r + d == 0 {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "{guarantee:?}: messages lost");
    let s = &o.stats;
    assert_ledger(s);
    assert_eq!(s.total_messages, o.sent.ids.len() as u64, "{s:?}");
    assert_eq!(s.duplicates + s.acknowledged, 0, "{s:?}");
    // Router dead letters are failed/expired; the other deliveries were pushes.
    assert_eq!(
        s.delivered + s.failed + s.expired,
        o.sent.ids.len() as u64,
        "{s:?}"
    );
    assert!(o.router.circuit_trips > 0, "{:?}", o.router);
    assert!(o.chaos_rounds > 0);
    assert!(!o.received.is_empty() && !o.dead.is_empty());
}

#[test]
fn stress_faults_at_most_once() {
    stress_no_ack(DeliveryGuarantee::AtMostOnce);
}

#[test]
fn stress_faults_at_least_once() {
    stress_no_ack(DeliveryGuarantee::AtLeastOnce);
}

#[test]
fn stress_faults_exactly_once() {
    stress_no_ack(DeliveryGuarantee::ExactlyOnce);
}

// ===== require_ack =====

/// Every fifth message is never acknowledged.
fn ack_most(seq: u64) -> bool {
    seq % 5 != 0
}

fn stress_acks(guarantee: DeliveryGuarantee) {
    const MAX_RETRIES: u32 = 2;
    let system = system(config(guarantee, MAX_RETRIES), 16, true);
    let o = run(system, 3, 2, 2500, true, Some(ack_most));
    let mut not_acknowledged = 0;
    for (id, &(_, seq)) in &o.sent.ids {
        let received = o.received.get(id).copied().unwrap_or(0);
        let acked = o.acked.get(id).copied().unwrap_or(0);
        let dead = o.dead.get(id).map(Vec::as_slice).unwrap_or(&[]);
        // The router's verdict (kept envelope) vs copies dropped with a mailbox.
        let given_up: Vec<_> = dead.iter().filter(|(_, env)| *env).collect();
        let copies_dead = dead.len() - given_up.len();
        assert!(acked <= 1, "acked twice");
        assert_eq!(
            acked as usize + given_up.len(),
            1,
            "{guarantee:?} seq {seq}: acked {acked}, given up {given_up:?}"
        );
        match guarantee {
            DeliveryGuarantee::ExactlyOnce => assert!(
                received as usize + copies_dead <= 1,
                "exactly-once: received {received}, copies dead {copies_dead}"
            ),
            _ => assert!(
                received as usize + copies_dead <= 1 + MAX_RETRIES as usize,
                "more than 1 + max_retries copies"
            ),
        }
        if !ack_most(seq) {
            assert_eq!(acked, 0);
            if guarantee == DeliveryGuarantee::ExactlyOnce && received == 1 {
                assert_eq!(given_up[0].0, DeadLetterReason::NotAcknowledged);
            }
        }
        if given_up
            .iter()
            .any(|(r, _)| *r == DeadLetterReason::NotAcknowledged)
        {
            not_acknowledged += 1;
        }
    }
    assert!(not_acknowledged > 0);
    let s = &o.stats;
    assert_ledger(s);
    assert_eq!(s.total_messages, o.sent.ids.len() as u64);
    assert_eq!(
        s.acknowledged,
        o.acked.values().map(|&n| u64::from(n)).sum::<u64>(),
        "{s:?}"
    );
    assert!(o.router.circuit_trips > 0, "{:?}", o.router);
}

#[test]
fn stress_acks_at_least_once() {
    stress_acks(DeliveryGuarantee::AtLeastOnce);
}

#[test]
fn stress_acks_exactly_once() {
    stress_acks(DeliveryGuarantee::ExactlyOnce);
}

// ===== a panicking handler =====

#[test]
fn handler_panic_affects_only_its_agent() {
    let system = system(config(DeliveryGuarantee::AtLeastOnce, 3), 0, false);
    let pids: Vec<AgentPid> = (0..3).map(|_| AgentPid::new()).collect();
    for pid in &pids {
        system.register_agent(pid.clone()).unwrap();
    }
    let received = Arc::new(Mutex::new(HashMap::<MessageId, u32>::new()));
    let expected_per_agent = 300u64;
    // Agent 0's thread dies in its handler at the 50th message.
    let dying = {
        let mailbox = system.get_mailbox(&pids[0]).unwrap();
        let received = received.clone();
        thread::spawn(move || {
            for n in 0.. {
                let m = mailbox.receive_timeout(DEADLINE).unwrap();
                *received.lock().unwrap().entry(m.id().clone()).or_default() += 1;
                if n == 49 {
                    panic!("handler failure (expected by the test)");
                }
            }
        })
    };
    // Agents 1 and 2 catch a panic every 7th message and go on; agent 1's handler also
    // sends through the system before it panics.
    let workers: Vec<_> = (1..3)
        .map(|i| {
            let mailbox = system.get_mailbox(&pids[i]).unwrap();
            let received = received.clone();
            let system = system.clone();
            let forward_to = pids[2].clone();
            thread::spawn(move || {
                let mut panics = 0;
                let mut n = 0;
                let expected = expected_per_agent + if i == 2 { expected_per_agent / 7 } else { 0 };
                while n < expected {
                    let m = match mailbox.receive_timeout(Duration::from_secs(2)) {
                        Ok(m) => m,
                        Err(MessagingError::MessageTimeout(_)) => break,
                        Err(e) => panic!("{e:?}"),
                    };
                    n += 1;
                    *received.lock().unwrap().entry(m.id().clone()).or_default() += 1;
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if n % 7 == 0 {
                            if i == 1 {
                                let e = MessageEnvelope::new(
                                    forward_to.clone(),
                                    "fwd".into(),
                                    json!([9, n]),
                                    DeliveryOptions::default(),
                                );
                                system.send_message(e).unwrap();
                            }
                            panic!("handler failure (expected by the test)");
                        }
                    }));
                    panics += usize::from(outcome.is_err());
                }
                panics
            })
        })
        .collect();
    let mut ids = Vec::new();
    for n in 0..expected_per_agent {
        for pid in &pids {
            let e = MessageEnvelope::new(
                pid.clone(),
                "job".into(),
                json!([0, n]),
                DeliveryOptions::default(),
            );
            ids.push(e.id.clone());
            match system.send_message(e) {
                Ok(()) => {}
                // Agent 0 crashed meanwhile and is stopped: refused, dead-lettered.
                Err(MessagingError::AgentNotFound(to)) if to == pids[0] => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert!(dying.join().is_err(), "agent 0's handler panicked");
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
    // Agent 0 crashed with its last mailbox handle: it is stopped (`panicked: …`)
    // and its backlog dead-lettered with that reason (it has no name for a successor
    // to take it by). The system still works: stats, sends and receives to the
    // live agents.
    let (router, mailboxes) = system.get_stats();
    assert_eq!(router.active_routes, 2);
    assert_eq!(mailboxes.len(), 2);
    assert!(system.get_mailbox(&pids[0]).is_none());
    let dead = system.dead_letters();
    assert_eq!(dead.len() as u64, expected_per_agent - 50);
    let crashed =
        DeadLetterReason::AgentStopped("panicked: handler failure (expected by the test)".into());
    assert!(dead
        .iter()
        .all(|d| d.reason == crashed || d.reason == DeadLetterReason::AgentNotFound));
    let probe = MessageEnvelope::new(
        pids[1].clone(),
        "job".into(),
        json!([1, 1]),
        DeliveryOptions::default(),
    );
    let probe_id = probe.id.clone();
    system.send_message(probe).unwrap();
    let got = system
        .get_mailbox(&pids[1])
        .unwrap()
        .receive_timeout(DEADLINE)
        .unwrap();
    assert_eq!(got.id(), &probe_id);
    let received = received.lock().unwrap();
    let dead_ids: HashMap<_, _> = dead.iter().map(|d| (d.id.clone(), ())).collect();
    for id in &ids {
        let r = received.get(id).copied().unwrap_or(0);
        let d = u32::from(dead_ids.contains_key(id));
        assert_eq!(r + d, 1, "lost or duplicated");
    }
    let s = system.delivery_stats();
    assert_ledger(&s);
    system.shutdown().unwrap();
}

// ===== a receiver dropped mid-stream =====

/// The receiver takes 100 messages and drops its handle while producers keep sending;
/// calls wait in the full mailbox; then the agent is unregistered. Calls fail at once,
/// senders get `ChannelClosed` (message handed back) or `AgentNotFound`, and every
/// message is received or dead-lettered.
#[test]
fn receiver_dropped_mid_stream() {
    const CAPACITY: usize = 16;
    let system = system(config(DeliveryGuarantee::AtLeastOnce, 3), CAPACITY, false);
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let received_ids = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let mailbox = system.get_mailbox(&pid).unwrap();
        let received_ids = received_ids.clone();
        thread::spawn(move || {
            while received_ids.lock().unwrap().len() < 100 {
                if let Ok(m) = mailbox.receive_timeout(Duration::from_millis(5)) {
                    received_ids.lock().unwrap().push(m.id().clone());
                }
            }
            drop(mailbox);
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let spawn_producers = |count: u64, stop: Option<&Arc<AtomicBool>>| -> Vec<_> {
        (0..2)
            .map(|p| {
                let agents = vec![pid.clone()];
                producer(system.clone(), agents, p, count, false, stop.cloned())
            })
            .collect()
    };
    let producers = spawn_producers(u64::MAX, Some(&stop));
    worker.join().unwrap();
    thread::sleep(Duration::from_millis(5));
    stop.store(true, SeqCst);
    let mut sents: Vec<Sent> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    quiesce(&system);
    // Make room for two calls, which then wait in the mailbox nobody reads.
    {
        let mailbox = system.get_mailbox(&pid).unwrap();
        assert_eq!(mailbox.queue_size(), CAPACITY);
        for _ in 0..2 {
            let m = mailbox.try_receive().unwrap().unwrap();
            received_ids.lock().unwrap().push(m.id().clone());
        }
    }
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let system = system.clone();
            let pid = pid.clone();
            thread::spawn(move || {
                system
                    .call(AgentPid::new(), &pid, 1u32, Duration::from_secs(5))
                    .map(|_| ())
            })
        })
        .collect();
    let sender = system.sender(&pid).unwrap();
    let start = Instant::now();
    while sender.queue_size() < CAPACITY {
        assert!(start.elapsed() < DEADLINE, "the calls never arrived");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(system.delivery_stats().pending, 0, "the calls are queued");
    let unregistered = Instant::now();
    system.unregister_agent(&pid).unwrap();
    for c in callers {
        let r = c.join().unwrap();
        assert!(
            matches!(r, Err(MessagingError::DeliveryFailed(..))),
            "a queued call must fail when its agent goes: {r:?}"
        );
    }
    assert!(
        unregistered.elapsed() < Duration::from_secs(2),
        "a pending call waited for its timeout"
    );
    // Senders now fail at once: the pre-resolved sender hands the message back.
    match sender.try_send(
        AgentMessage::cast(AgentPid::nil(), "late"),
        MessagePriority::Normal,
    ) {
        Err(TrySendError::Closed(m)) => {
            assert_eq!(m.payload::<&str>(), Some(&"late"), "the message comes back");
        }
        other => panic!("send after unregister: {other:?}"),
    }
    let late = spawn_producers(200, None);
    let late: Vec<Sent> = late.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(late
        .iter()
        .all(|s| s.refused.len() == 200 && s.ids.len() == 200));
    sents.extend(late);
    let sent = merge(sents);
    quiesce(&system);
    let dead = dead_by_id(system.dead_letters());
    let received_ids = received_ids.lock().unwrap();
    let mut counts: HashMap<&MessageId, u32> = HashMap::new();
    for id in received_ids.iter() {
        *counts.entry(id).or_default() += 1;
    }
    assert!(!sent.refused.is_empty(), "senders saw the agent go");
    for (id, e) in &sent.refused {
        assert!(
            matches!(
                e,
                MessagingError::AgentNotFound(_) | MessagingError::ChannelClosed(_)
            ),
            "{e:?}"
        );
        assert!(dead.contains_key(id));
    }
    for id in sent.ids.keys() {
        let r = counts.get(id).copied().unwrap_or(0);
        let d = dead.get(id).map_or(0, |v| v.len() as u32);
        assert_eq!(r + d, 1, "lost or duplicated");
    }
    let s = system.delivery_stats();
    assert_ledger(&s);
    assert_eq!(s.total_messages, sent.ids.len() as u64 + 2, "{s:?}");
    system.shutdown().unwrap();
}

/// A call waiting for a retry (mailbox full) when its agent is unregistered fails at
/// once, not after its timeout.
#[test]
fn call_waiting_for_a_retry_fails_when_the_agent_goes() {
    let system = system(config(DeliveryGuarantee::AtLeastOnce, 1_000), 1, false);
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let _mailbox = system.get_mailbox(&pid).unwrap();
    system
        .send(&pid, AgentMessage::cast(AgentPid::nil(), "blocker"))
        .unwrap();
    let caller = {
        let system = system.clone();
        let pid = pid.clone();
        thread::spawn(move || {
            let r = system.call(AgentPid::new(), &pid, 1u32, Duration::from_secs(3));
            r.map(|_| ())
        })
    };
    // The call is refused by the full mailbox and waits for retries.
    let start = Instant::now();
    while system.delivery_stats().pending == 0 {
        assert!(start.elapsed() < DEADLINE);
        thread::sleep(Duration::from_millis(1));
    }
    let unregistered = Instant::now();
    system.unregister_agent(&pid).unwrap();
    let r = caller.join().unwrap();
    let waited = unregistered.elapsed();
    assert!(r.is_err());
    assert!(
        waited < Duration::from_millis(1500),
        "the caller waited {waited:?} for a call that was given up on: {r:?}"
    );
    system.shutdown().unwrap();
}

// ===== shutdown under load =====

fn shutdown_under_load(guarantee: DeliveryGuarantee) {
    let system = system(config(guarantee, 3), 4, true);
    let pids: Vec<AgentPid> = (0..3).map(|_| AgentPid::new()).collect();
    for pid in &pids {
        system.register_agent(pid.clone()).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = pids
        .iter()
        .enumerate()
        .map(|(i, pid)| {
            receiver(
                system.clone(),
                pid.clone(),
                stop.clone(),
                i as u64 + 1,
                None,
            )
        })
        .collect();
    let producers: Vec<_> = (0..3)
        .map(|p| producer(system.clone(), pids.clone(), p, u64::MAX, false, None))
        .collect();
    thread::sleep(Duration::from_millis(150));
    stop.store(true, SeqCst);
    system.shutdown().unwrap();
    let sent = merge(producers.into_iter().map(|h| h.join().unwrap()).collect());
    assert_eq!(
        sent.after_shutdown.len(),
        3,
        "every producer saw the shutdown"
    );
    let mut received: HashMap<MessageId, u32> = HashMap::new();
    for r in receivers {
        for (id, payload) in r.join().unwrap().received {
            assert_eq!(sent.ids.get(&id), Some(&payload));
            *received.entry(id).or_default() += 1;
        }
    }
    let s = system.delivery_stats();
    let dead = dead_by_id(system.dead_letters());
    for id in &sent.after_shutdown {
        assert!(
            !received.contains_key(id) && !dead.contains_key(id),
            "refused yet handled"
        );
    }
    for (id, e) in &sent.refused {
        let reasons = dead
            .get(id)
            .unwrap_or_else(|| panic!("{e:?} not dead-lettered"));
        assert!(
            reasons.iter().any(|(r, _)| *r == reason_of(e)),
            "{e:?}: {reasons:?}"
        );
    }
    let mut lost = 0;
    for id in sent.ids.keys() {
        let r = received.get(id).copied().unwrap_or(0);
        let d = dead.get(id).map_or(0, |v| v.len() as u32);
        assert!(r + d <= 1, "{guarantee:?}: received {r}, dead {d}");
        lost += u32::from(r + d == 0);
    }
    assert_eq!(lost, 0, "{guarantee:?}: lost after shutdown; {s:?}");
    assert_eq!(
        s.pending + s.in_transit,
        0,
        "still tracked after shutdown: {s:?}"
    );
    assert_ledger(&s);
    assert_eq!(s.total_messages, sent.ids.len() as u64, "{s:?}");
}

#[test]
fn shutdown_under_load_at_least_once() {
    shutdown_under_load(DeliveryGuarantee::AtLeastOnce);
}

#[test]
fn shutdown_under_load_exactly_once() {
    shutdown_under_load(DeliveryGuarantee::ExactlyOnce);
}
