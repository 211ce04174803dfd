//! Stress: many producers, exactly-once delivery, FIFO per (producer, priority), and no
//! message lost or stranded when unregister or close races the senders.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadLetterReason, DeadMessage, DeliveryGuarantee,
    DeliveryOptions, MailboxConfig, MailboxManager, MessageEnvelope, MessagePriority,
    MessageSystem, MessagingError, RouterConfig, TrySendError,
};

mod common;
use common::{XorShift, PRIORITIES};

// ===== two producers, one mailbox =====

/// Two producer threads, each sending `n` casts `(producer, seq, priority)` at random
/// priorities (seeded by `seed`); each returns how many it sent per priority.
fn two_producers(mb: &AgentMailbox, n: u64, seed: u64) -> Vec<thread::JoinHandle<[u64; 4]>> {
    (0..2u64)
        .map(|p| {
            let tx = mb.sender();
            thread::spawn(move || {
                let mut rng = XorShift::new(p + seed);
                let mut sent = [0u64; 4];
                for i in 0..n {
                    let pr = PRIORITIES[rng.below(4) as usize];
                    tx.try_send(AgentMessage::cast(AgentPid::nil(), (p, i, pr)), pr)
                        .unwrap();
                    sent[pr.index()] += 1;
                }
                sent
            })
        })
        .collect()
}

#[test]
fn stress_two_producers_exactly_once_fifo() {
    const N: u64 = 200_000;
    let mb = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let producers = two_producers(&mb, N, 1);
    // last[p][prio] = last seq seen; count[p][prio] = messages seen.
    let mut last = [[None::<u64>; 4]; 2];
    let mut count = [[0u64; 4]; 2];
    let mut received = 0;
    while received < 2 * N {
        let m = mb
            .receive_timeout(Duration::from_secs(10))
            .expect("producers stalled");
        let &(p, i, pr) = m.payload::<(u64, u64, MessagePriority)>().unwrap();
        let slot = &mut last[p as usize][pr.index()];
        assert!(
            slot.is_none_or(|l| l < i),
            "FIFO violated for producer {p} at {pr:?}: {i} after {slot:?}"
        );
        *slot = Some(i);
        count[p as usize][pr.index()] += 1;
        received += 1;
    }
    for (p, handle) in producers.into_iter().enumerate() {
        assert_eq!(
            handle.join().unwrap(),
            count[p],
            "per-priority counts of {p}"
        );
    }
    // Strictly increasing per (producer, priority) + equal counts = exactly once.
    for last in last {
        assert_eq!(last.iter().flatten().max(), Some(&(N - 1)));
    }
    assert!(mb.try_receive().unwrap().is_none());
    let s = mb.stats();
    assert_eq!(s.total_messages_received, 2 * N);
    assert_eq!(s.total_messages_processed, 2 * N);
    assert_eq!(s.current_queue_size, 0);
}

/// The same through `receive_many` in batches of up to 64: every message once, FIFO
/// per producer and priority, across batch boundaries.
#[test]
fn stress_two_producers_receive_many() {
    const N: u64 = 200_000;
    let mb = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let producers = two_producers(&mb, N, 11);
    let mut last = [[None::<u64>; 4]; 2];
    let mut count = [[0u64; 4]; 2];
    let mut received = 0;
    let mut batches = 0;
    let mut buf = Vec::with_capacity(64);
    while received < 2 * N {
        buf.clear();
        let n = mb.receive_many(&mut buf, 64).unwrap();
        assert!((1..=64).contains(&n) && n == buf.len());
        for m in &buf {
            let &(p, i, pr) = m.payload::<(u64, u64, MessagePriority)>().unwrap();
            let slot = &mut last[p as usize][pr.index()];
            assert!(slot.is_none_or(|l| l < i), "FIFO violated: {p} {pr:?} {i}");
            *slot = Some(i);
            count[p as usize][pr.index()] += 1;
        }
        received += n as u64;
        batches += 1;
    }
    for (p, handle) in producers.into_iter().enumerate() {
        assert_eq!(
            handle.join().unwrap(),
            count[p],
            "per-priority counts of {p}"
        );
    }
    assert_eq!(received, 2 * N);
    for last in last {
        assert_eq!(last.iter().flatten().max(), Some(&(N - 1)));
    }
    assert!(mb.try_receive().unwrap().is_none());
    assert_eq!(mb.stats().total_messages_processed, 2 * N);
    // Batches did form (not one message per call throughout).
    assert!(batches < 2 * N, "{batches} batches for {} messages", 2 * N);
}

// ===== eight producers through the system, with unregister mid-stream =====

/// `(producer, seq)` of a routed envelope's payload.
fn key_of(value: &serde_json::Value) -> (u64, u64) {
    let a = value.as_array().expect("[producer, seq]");
    (a[0].as_u64().unwrap(), a[1].as_u64().unwrap())
}

/// Receives from `pid` until its mailbox closes; returns `(producer, seq, priority)`s.
fn receiver(system: MessageSystem, pid: AgentPid) -> Vec<(u64, u64, u64)> {
    let Some(mb) = system.get_mailbox(&pid) else {
        return Vec::new(); // unregistered before we got here: dead letters hold its mail
    };
    let mut got = Vec::new();
    loop {
        match mb.receive() {
            Ok(m) => {
                let (p, seq) = key_of(m.payload::<serde_json::Value>().unwrap());
                let prio = m.message_type().unwrap().parse().unwrap();
                got.push((p, seq, prio));
            }
            Err(MessagingError::ChannelClosed(_)) => return got,
            // The mailbox closed before we held it and the close is draining it into the
            // dead letters: wait for the drain to finish.
            Err(MessagingError::ReceiverBusy(_)) => thread::yield_now(),
            Err(e) => panic!("receiver: {e}"),
        }
    }
}

#[test]
fn stress_unregister_mid_stream() {
    const PRODUCERS: u64 = 8;
    const PER_PRODUCER: u64 = 25_000;
    const DESTS: usize = 4;
    // Every refused message is checked by id below: keep every dead letter.
    let system = MessageSystem::builder(RouterConfig::default())
        .dead_letter_capacity((PRODUCERS * PER_PRODUCER) as usize)
        .build()
        .unwrap();
    let dests: Vec<AgentPid> = (0..DESTS).map(|_| AgentPid::new()).collect();
    let mut receivers = Vec::new();
    for d in &dests {
        system.register_agent(d.clone()).unwrap();
        let (s, d) = (system.clone(), d.clone());
        receivers.push(thread::spawn(move || receiver(s, d)));
    }

    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (system, dests, done) = (system.clone(), dests.clone(), done.clone());
        thread::spawn(move || {
            let mut rng = XorShift::new(99);
            let mut spawned = Vec::new();
            let mut cycles = 0u64;
            while !done.load(SeqCst) {
                for _ in 0..rng.below(5_000) {
                    std::hint::spin_loop();
                }
                let d = &dests[rng.below(DESTS as u64) as usize];
                match system.unregister_agent(d) {
                    Ok(()) => cycles += 1,
                    Err(MessagingError::AgentNotFound(_)) => {}
                    Err(e) => panic!("unregister: {e}"),
                }
                // Sometimes leave it unregistered for a while (sends fail meanwhile).
                if rng.below(3) != 0 {
                    if rng.below(2) == 0 {
                        thread::yield_now();
                    }
                    system.register_agent(d.clone()).unwrap();
                    let (s, d) = (system.clone(), d.clone());
                    spawned.push(thread::spawn(move || receiver(s, d)));
                }
            }
            (spawned, cycles)
        })
    };

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (system, dests) = (system.clone(), dests.clone());
            thread::spawn(move || {
                let mut rng = XorShift::new(1000 + p);
                // Per message: Ok (true) or refused with Err (false).
                let mut outcomes = Vec::with_capacity(PER_PRODUCER as usize);
                for seq in 0..PER_PRODUCER {
                    let to = &dests[rng.below(DESTS as u64) as usize];
                    let prio = PRIORITIES[rng.below(4) as usize];
                    let env = MessageEnvelope::new(
                        to.clone(),
                        prio.index().to_string(),
                        json!([p, seq]),
                        DeliveryOptions {
                            priority: prio,
                            ..DeliveryOptions::default()
                        },
                    );
                    match system.send_message(env) {
                        Ok(()) => outcomes.push(true),
                        Err(
                            MessagingError::AgentNotFound(_) | MessagingError::ChannelClosed(_),
                        ) => outcomes.push(false),
                        Err(e) => panic!("unexpected send error: {e}"),
                    }
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<Vec<bool>> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, SeqCst);
    let (spawned, cycles) = chaos.join().unwrap();
    receivers.extend(spawned);
    system.shutdown().unwrap();

    let mut received = HashSet::new();
    for r in receivers {
        let got = r.join().unwrap();
        // FIFO per (producer, priority) within one registration's receiver.
        let mut last = vec![[None::<u64>; 4]; PRODUCERS as usize];
        for (p, seq, prio) in got {
            let slot = &mut last[p as usize][prio as usize];
            assert!(slot.is_none_or(|l| l < seq), "FIFO violated");
            *slot = Some(seq);
            assert!(received.insert((p, seq)), "({p}, {seq}) received twice");
        }
    }
    let mut dead = HashSet::new();
    for d in system.dead_letters() {
        let key = match &d.message {
            DeadMessage::Message(m) => key_of(m.payload::<serde_json::Value>().unwrap()),
            DeadMessage::Envelope(e) => key_of(&e.payload),
        };
        assert!(
            matches!(
                d.reason,
                DeadLetterReason::AgentNotFound | DeadLetterReason::MailboxClosed
            ),
            "{:?}",
            d.reason
        );
        assert!(dead.insert(key), "{key:?} dead-lettered twice");
        assert!(
            !received.contains(&key),
            "{key:?} received and dead-lettered"
        );
    }

    let (mut ok, mut refused) = (0u64, 0u64);
    for (p, outcome) in outcomes.iter().enumerate() {
        for (seq, &accepted) in outcome.iter().enumerate() {
            let key = (p as u64, seq as u64);
            if accepted {
                ok += 1;
                assert!(
                    received.contains(&key) || dead.contains(&key),
                    "{key:?} accepted but lost"
                );
            } else {
                refused += 1;
                assert!(dead.contains(&key), "{key:?} refused but not dead-lettered");
            }
        }
    }
    let sent = PRODUCERS * PER_PRODUCER;
    assert_eq!(ok + refused, sent);
    assert_eq!(received.len() as u64 + dead.len() as u64, sent, "tally");
    assert!(cycles > 0, "the chaos thread never unregistered anything");
    let (stats, _) = system.get_stats();
    assert_eq!(stats.messages_delivered, ok);
    assert_eq!(stats.messages_failed, refused);
    assert_eq!(stats.messages_routed, sent);
    assert_eq!(system.dead_letter_count(), dead.len() as u64);
}

// ===== stranded messages: a sender races close =====

#[test]
fn stress_no_stranded_message_on_close() {
    let rounds = if cfg!(debug_assertions) {
        2_000
    } else {
        10_000
    };
    let mut rng = XorShift::new(7);
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..rounds {
        assert!(Instant::now() < deadline, "too slow at round {round}");
        let manager = MailboxManager::new(MailboxConfig {
            max_messages: if rng.below(4) == 0 { 8 } else { 0 },
            ..MailboxConfig::default()
        });
        let pid = AgentPid::new();
        let tx = manager.create_mailbox(pid.clone()).unwrap();
        // 0: a receiver drains after close; 1: no receiver handle ever;
        // 2: a receiver takes some, then drops its handle mid-stream.
        let mode = rng.below(3);
        let seed = rng.next();
        let started = Arc::new(AtomicBool::new(false));
        let sender_started = started.clone();
        let sender = thread::spawn(move || {
            let mut rng = XorShift::new(seed);
            let mut weaks: Vec<Weak<()>> = Vec::new();
            let mut ok = 0u64;
            sender_started.store(true, SeqCst);
            loop {
                let token = Arc::new(());
                weaks.push(Arc::downgrade(&token));
                let prio = PRIORITIES[rng.below(4) as usize];
                match tx.try_send(AgentMessage::cast(AgentPid::nil(), token), prio) {
                    Ok(()) => {
                        ok += 1;
                        if ok > 256 {
                            // Leave the closer some CPU on a small machine.
                            thread::yield_now();
                        }
                    }
                    Err(TrySendError::Full(_)) => thread::yield_now(),
                    Err(TrySendError::Closed(_)) => return (ok, weaks),
                }
            }
        });
        let rx = match mode {
            1 => None,
            _ => Some(manager.get_mailbox(&pid).unwrap()),
        };
        let take = rng.below(50);
        let receiver = rx.map(|mb| {
            thread::spawn(move || {
                let mut got = 0u64;
                loop {
                    if mode == 2 && got == take {
                        return got; // drops the handle; the rest goes to dead letters
                    }
                    match mb.receive_timeout(Duration::from_secs(10)) {
                        Ok(m) => {
                            assert!(m.payload::<Arc<()>>().is_some());
                            got += 1;
                        }
                        Err(MessagingError::ChannelClosed(_)) => return got,
                        Err(e) => panic!("receiver: {e}"),
                    }
                }
            })
        });
        // Close while the sender is mid-stream (sometimes right at its start).
        while !started.load(SeqCst) {
            assert!(Instant::now() < deadline, "sender never started");
            thread::yield_now();
        }
        for _ in 0..rng.below(3_000) {
            std::hint::spin_loop();
        }
        manager.remove_mailbox(&pid).unwrap();
        let (ok, weaks) = sender.join().unwrap();
        let received = receiver.map_or(0, |r| r.join().unwrap());
        let dead = manager.dead_letters();
        assert!(dead
            .iter()
            .all(|d| d.reason == DeadLetterReason::MailboxClosed && d.to == pid));
        // A fast sender can queue more than the store keeps: the rest is counted.
        let dropped = manager.dead_letter_stats().dropped;
        assert_eq!(
            received + dead.len() as u64 + dropped,
            ok,
            "round {round} (mode {mode}): {ok} sends returned Ok, {received} received, {} dead-lettered, {dropped} dropped",
            dead.len()
        );
        drop(dead);
        drop(manager);
        for (i, w) in weaks.iter().enumerate() {
            assert!(
                w.upgrade().is_none(),
                "round {round} (mode {mode}): message {i} of {} leaked",
                weaks.len()
            );
        }
    }
}

// ===== the ledger read while it moves =====

/// `delivery_stats` read in a loop while one thread sends the same exactly-once envelope
/// over and over: the counters are read one after another, so a snapshot can see a
/// duplicate before the acceptance it follows. Every snapshot stays sane (no underflow
/// in `total_attempts`, never more delivered than accepted), and at rest the ledger is
/// exact: one delivered, every other copy a duplicate. Before the fix the subtraction
/// panicked in 5 runs of 5.
#[test]
fn stress_stats_read_while_duplicates_stream_in() {
    let mut config = RouterConfig::default();
    config.delivery_config.guarantee = DeliveryGuarantee::ExactlyOnce;
    let system = MessageSystem::new(config);
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let envelope = MessageEnvelope::new(
        pid.clone(),
        "dup".to_string(),
        json!(1),
        DeliveryOptions::default(),
    );
    let n: u64 = 200_000;
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..n {
                system.send_message(envelope.clone()).unwrap();
            }
            done.store(true, SeqCst);
        });
        s.spawn(|| loop {
            // At least one snapshot, however the threads are scheduled.
            let finished = done.load(SeqCst);
            let stats = system.delivery_stats();
            assert!(stats.delivered <= 1, "{stats:?}");
            assert!(stats.delivered <= stats.total_messages, "{stats:?}");
            // A wrapped subtraction (release builds) would be near u64::MAX.
            assert!(stats.total_attempts <= n, "{stats:?}");
            if finished {
                break;
            }
        });
    });
    let stats = system.delivery_stats();
    assert_eq!(stats.total_messages, n);
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.duplicates, n - 1);
    assert_eq!(stats.total_attempts, 1);
    system.shutdown().unwrap();
}
