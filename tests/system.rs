//! MessageSystem, router and agent table: registration, routing, call, handles, shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::__private::{agent_id, is_live, set_next_generation};
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, DeadLetterReason, DeadMessage, DeliveryOptions, MailboxConfig,
    MailboxSender, MessageEnvelope, MessagePriority, MessageRouter, MessageSystem, MessagingError,
    MessagingResult, RouterConfig, RouterStats, SystemInfo, TrySendError,
};

mod common;
use common::sync::{register, within};

// ===== helpers =====

fn system() -> MessageSystem {
    MessageSystem::new(RouterConfig::default())
}

fn envelope(to: &AgentPid, payload: serde_json::Value) -> MessageEnvelope {
    MessageEnvelope::new(
        to.clone(),
        "test".into(),
        payload,
        DeliveryOptions::default(),
    )
}

/// Receives on another thread until the mailbox closes; returns (u64 payloads, error).
fn spawn_receiver(
    system: &MessageSystem,
    pid: &AgentPid,
) -> thread::JoinHandle<(Vec<u64>, MessagingError)> {
    let mb = system.get_mailbox(pid).unwrap();
    thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match mb.receive() {
                Ok(m) => got.push(*m.payload::<u64>().expect("u64 payload")),
                Err(e) => return (got, e),
            }
        }
    })
}

// ===== quick start =====

#[test]
fn quick_start() {
    let system = MessageSystem::new(RouterConfig::default());
    let agent1 = AgentPid::new();
    let agent2 = AgentPid::new();
    system.register_agent(agent1.clone()).unwrap();
    system.register_agent(agent2.clone()).unwrap();

    let payload = json!({"message": "Hello, Agent2!"});
    let envelope = MessageEnvelope::new(
        agent2.clone(),
        "greeting".to_string(),
        payload.clone(),
        DeliveryOptions::default(),
    )
    .with_from(agent1.clone());
    let id = envelope.id.clone();
    system.send_message(envelope).unwrap();

    let mailbox = system.get_mailbox(&agent2).expect("agent2 has a mailbox");
    let message = mailbox.receive_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(message.id(), &id);
    assert_eq!(message.from(), Some(&agent1));
    assert_eq!(message.message_type(), Some("greeting"));
    assert_eq!(message.payload::<serde_json::Value>(), Some(&payload));
    assert!(!message.expects_response());
    assert!(system.get_mailbox(&agent1).unwrap().is_empty());

    system.shutdown().unwrap();
}

#[test]
fn envelope_without_from_and_priority() {
    let system = system();
    let to = register(&system);
    let mut low = envelope(&to, json!(1));
    low.delivery_options.priority = MessagePriority::Low;
    let mut critical = envelope(&to, json!(2));
    critical.delivery_options.priority = MessagePriority::Critical;
    system.send_message(low).unwrap();
    system.send_message(critical).unwrap();
    let mb = system.get_mailbox(&to).unwrap();
    let first = mb.try_receive().unwrap().unwrap();
    assert_eq!(first.payload::<serde_json::Value>(), Some(&json!(2)));
    assert_eq!(first.from(), None, "no sender: from() is None");
    let second = mb.try_receive().unwrap().unwrap();
    assert_eq!(second.payload::<serde_json::Value>(), Some(&json!(1)));
}

// ===== send =====

#[test]
fn send_cast_info_call() {
    let system = system();
    let (from, to) = (register(&system), register(&system));
    let cast = AgentMessage::cast(from.clone(), 7u64);
    let cast_id = cast.id().clone();
    system.send(&to, cast).unwrap();
    let info = AgentMessage::info(SystemInfo::HealthCheck {
        agent_id: to.clone(),
        timestamp: chrono::Utc::now(),
    });
    system.send(&to, info).unwrap();
    let (call, reply) = AgentMessage::call(from.clone(), "ping", Duration::from_secs(5));
    system
        .send_with_priority(&to, call, MessagePriority::High)
        .unwrap();

    let mb = system.get_mailbox(&to).unwrap();
    // The High call overtakes the two Normal messages.
    match mb.receive().unwrap() {
        AgentMessage::Call {
            from: f,
            payload,
            reply_to,
            ..
        } => {
            assert_eq!(f, from);
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"ping"));
            reply_to.send(Box::new("pong")).unwrap();
        }
        other => panic!("expected the call, got {other:?}"),
    }
    assert_eq!(*reply.recv().unwrap().downcast::<&str>().unwrap(), "pong");
    let m = mb.receive().unwrap();
    assert_eq!(m.id(), &cast_id);
    assert_eq!(m.payload::<u64>(), Some(&7));
    assert!(matches!(
        mb.receive().unwrap(),
        AgentMessage::Info {
            info: SystemInfo::HealthCheck { ref agent_id, .. },
            ..
        } if *agent_id == to
    ));
    assert!(mb.is_empty());
}

// ===== call =====

/// Answers every call with payload `n: u64` by `n * 2` until the mailbox closes.
fn spawn_doubler(system: &MessageSystem, pid: &AgentPid) -> thread::JoinHandle<usize> {
    let mb = system.get_mailbox(pid).unwrap();
    thread::spawn(move || {
        let mut answered = 0;
        while let Ok(message) = mb.receive() {
            if let AgentMessage::Call {
                payload, reply_to, ..
            } = message
            {
                let n = *payload.downcast::<u64>().unwrap();
                reply_to.send(Box::new(n * 2)).unwrap();
                answered += 1;
            }
        }
        answered
    })
}

#[test]
fn call_round_trip() {
    let system = system();
    let (client, server) = (AgentPid::new(), register(&system));
    let worker = spawn_doubler(&system, &server);
    let s = system.clone();
    within(20, move || {
        for n in 0..200u64 {
            let reply = s
                .call(client.clone(), &server, n, Duration::from_secs(10))
                .unwrap();
            assert_eq!(*reply.downcast::<u64>().unwrap(), n * 2);
            let typed: u64 = s
                .call_typed(client.clone(), &server, n + 1, Duration::from_secs(10))
                .unwrap();
            assert_eq!(typed, (n + 1) * 2);
        }
        // Wrong reply type: a clear error, not a panic.
        let wrong = s.call_typed::<String, _>(client, &server, 1u64, Duration::from_secs(10));
        assert!(matches!(wrong, Err(MessagingError::InvalidMessage(_))));
        s.shutdown().unwrap();
    });
    assert_eq!(worker.join().unwrap(), 401);
}

#[test]
fn call_timeout() {
    let system = system();
    let server = register(&system);
    let start = Instant::now();
    let r = system.call(AgentPid::new(), &server, 1u64, Duration::from_millis(50));
    assert!(matches!(r, Err(MessagingError::MessageTimeout(ref p)) if *p == server));
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(start.elapsed() < Duration::from_secs(5));
    // The call is still queued; answering it now reaches nobody.
    let mb = system.get_mailbox(&server).unwrap();
    match mb.try_receive().unwrap().unwrap() {
        AgentMessage::Call { reply_to, .. } => {
            assert!(reply_to.is_closed());
            assert!(reply_to.send(Box::new(2u64)).is_err());
        }
        other => panic!("expected the call, got {other:?}"),
    }
}

#[test]
fn call_zero_timeout() {
    let system = system();
    let server = register(&system);
    let start = Instant::now();
    let r = system.call(AgentPid::new(), &server, 1u64, Duration::ZERO);
    assert!(matches!(r, Err(MessagingError::MessageTimeout(ref p)) if *p == server));
    assert!(start.elapsed() < Duration::from_secs(1));
    let r = system.call_typed::<u64, _>(AgentPid::new(), &server, 1u64, Duration::ZERO);
    assert!(matches!(r, Err(MessagingError::MessageTimeout(_))));
}

#[test]
fn call_huge_timeout() {
    let system = system();
    let server = register(&system);
    let worker = spawn_doubler(&system, &server);
    let s = system.clone();
    let n: u64 = within(10, move || {
        s.call_typed(AgentPid::new(), &server, 21u64, Duration::MAX)
            .unwrap()
    });
    assert_eq!(n, 42);
    system.shutdown().unwrap();
    worker.join().unwrap();
}

#[test]
fn call_dropped_by_callee() {
    let system = system();
    let server = register(&system);
    let mb = system.get_mailbox(&server).unwrap();
    let dropper = thread::spawn(move || {
        let m = mb.receive().unwrap();
        assert!(m.expects_response());
        drop(m);
    });
    let s = system.clone();
    let r = within(10, move || {
        s.call(AgentPid::new(), &server, 1u64, Duration::from_secs(30))
    });
    assert!(
        matches!(r, Err(MessagingError::DeliveryFailed(..))),
        "{r:?}"
    );
    dropper.join().unwrap();
}

/// Starts a call to `server` on another thread and waits until it is queued.
fn queued_call(
    system: &MessageSystem,
    server: &AgentPid,
) -> thread::JoinHandle<(MessagingResult<u64>, Duration)> {
    let (s, to) = (system.clone(), server.clone());
    let caller = thread::spawn(move || {
        let start = Instant::now();
        let r = s.call_typed::<u64, _>(AgentPid::new(), &to, 1u64, Duration::from_secs(30));
        (r, start.elapsed())
    });
    let tx = system.sender(server).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tx.queue_size() == 0 {
        assert!(Instant::now() < deadline, "the call never arrived");
        thread::sleep(Duration::from_millis(1));
    }
    caller
}

#[test]
fn call_fails_when_callee_unregistered() {
    // The callee goes away with the call still queued and nobody to receive it: the
    // call is dead-lettered, and the caller must fail promptly, not wait out its timeout.
    let system = system();
    let server = register(&system);
    let caller = queued_call(&system, &server);
    system.unregister_agent(&server).unwrap();
    let (r, took) = within(5, move || caller.join().unwrap());
    assert!(
        matches!(r, Err(MessagingError::DeliveryFailed(..))),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(10), "the caller waited {took:?}");
    let dead = system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::MailboxClosed);
    match &dead[0].message {
        DeadMessage::Message(AgentMessage::Call {
            payload, reply_to, ..
        }) => {
            assert_eq!(payload.downcast_ref::<u64>(), Some(&1));
            assert!(reply_to.is_closed(), "nobody can answer a dead call");
        }
        other => panic!("expected the call, got {other:?}"),
    }
}

#[test]
fn call_fails_on_shutdown() {
    let system = system();
    let server = register(&system);
    let caller = queued_call(&system, &server);
    system.shutdown().unwrap();
    let (r, took) = within(5, move || caller.join().unwrap());
    assert!(
        matches!(r, Err(MessagingError::DeliveryFailed(..))),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(10), "the caller waited {took:?}");
    assert_eq!(system.dead_letters().len(), 1);
}

#[test]
fn call_unknown_agent() {
    let system = system();
    let ghost = AgentPid::new();
    let r = system.call(AgentPid::new(), &ghost, 1u64, Duration::from_secs(5));
    assert!(matches!(r, Err(MessagingError::AgentNotFound(ref p)) if *p == ghost));
}

// ===== pre-resolved senders =====

#[test]
fn sender_handle() {
    let system = system();
    let pid = register(&system);
    let tx = system.sender(&pid).unwrap();
    assert_eq!(tx.agent_id(), &pid);
    assert!(system.sender(&AgentPid::new()).is_none());
    tx.send(AgentMessage::cast(AgentPid::nil(), 1u64)).unwrap();
    tx.try_send(
        AgentMessage::cast(AgentPid::nil(), 2u64),
        MessagePriority::High,
    )
    .unwrap();
    assert_eq!(tx.queue_size(), 2);
    let mb = system.get_mailbox(&pid).unwrap();
    assert_eq!(mb.receive().unwrap().payload::<u64>(), Some(&2));
    assert_eq!(mb.receive().unwrap().payload::<u64>(), Some(&1));
    assert!(tx.same_mailbox(&system.sender(&pid).unwrap()));

    system.unregister_agent(&pid).unwrap();
    assert!(tx.is_closed());
    assert!(matches!(
        tx.send(AgentMessage::cast(AgentPid::nil(), 3u64)),
        Err(MessagingError::ChannelClosed(ref p)) if *p == pid
    ));
    match tx.try_send(
        AgentMessage::cast(AgentPid::nil(), 4u64),
        MessagePriority::Low,
    ) {
        Err(TrySendError::Closed(back)) => assert_eq!(back.payload::<u64>(), Some(&4)),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(system.sender(&pid).is_none());
    assert!(system.get_mailbox(&pid).is_none());
}

#[test]
fn stale_sender_never_reaches_new_agent() {
    let system = system();
    let old = register(&system);
    let tx = system.sender(&old).unwrap();
    let old_id = agent_id(&system, &old).unwrap();
    system.unregister_agent(&old).unwrap();

    // A new agent takes the freed slot; the same pid registers again, too.
    let new = register(&system);
    let new_id = agent_id(&system, &new).unwrap();
    assert_ne!(new_id, old_id, "the reused slot has a new generation");
    assert!(!is_live(&system, old_id, &old));
    system.register_agent(old.clone()).unwrap();
    let again_id = agent_id(&system, &old).unwrap();
    assert_ne!(again_id, old_id);
    assert!(!is_live(&system, old_id, &old));
    assert!(is_live(&system, again_id, &old));

    for p in [
        MessagePriority::Low,
        MessagePriority::Normal,
        MessagePriority::High,
        MessagePriority::Critical,
    ] {
        assert!(matches!(
            tx.try_send(AgentMessage::cast(AgentPid::nil(), 1u64), p),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(
            tx.send_with_priority(AgentMessage::cast(AgentPid::nil(), 1u64), p),
            Err(MessagingError::ChannelClosed(_))
        ));
    }
    assert!(!tx.same_mailbox(&system.sender(&old).unwrap()));
    assert!(!tx.same_mailbox(&system.sender(&new).unwrap()));
    assert!(system.get_mailbox(&new).unwrap().is_empty());
    assert!(system.get_mailbox(&old).unwrap().is_empty());
    let (_, stats) = system.get_stats();
    assert!(stats.iter().all(|s| s.total_messages_received == 0));

    // The fresh registration works.
    system
        .send(&old, AgentMessage::cast(AgentPid::nil(), 5u64))
        .unwrap();
    assert_eq!(
        system
            .get_mailbox(&old)
            .unwrap()
            .receive()
            .unwrap()
            .payload::<u64>(),
        Some(&5)
    );
}

#[test]
fn generation_wrap() {
    let system = system();
    set_next_generation(&system, u32::MAX - 2);
    let mut stale = Vec::new();
    // Register/unregister one slot across the wrap: u32::MAX-2, u32::MAX-1, u32::MAX, 0, 1.
    for _ in 0..5 {
        let pid = register(&system);
        let id = agent_id(&system, &pid).unwrap();
        assert!(is_live(&system, id, &pid));
        for (old_id, old_pid) in &stale {
            assert_ne!(*old_id, id, "the generation repeated within one lap");
            assert!(!is_live(&system, *old_id, old_pid));
            assert!(!is_live(&system, *old_id, &pid));
        }
        system.unregister_agent(&pid).unwrap();
        assert!(!is_live(&system, id, &pid));
        stale.push((id, pid));
    }
    // Force the exact same (slot, generation) for a different pid: the pid check
    // keeps the stale id dead.
    let (first_id, first_pid) = stale[0].clone();
    set_next_generation(&system, u32::MAX - 2);
    let reuse = register(&system);
    assert_eq!(agent_id(&system, &reuse), Some(first_id));
    assert!(is_live(&system, first_id, &reuse));
    assert!(!is_live(&system, first_id, &first_pid));
    // And a live neighbour slot keeps working across the wrap.
    set_next_generation(&system, u32::MAX);
    let a = register(&system);
    let b = register(&system);
    let (ia, ib) = (
        agent_id(&system, &a).unwrap(),
        agent_id(&system, &b).unwrap(),
    );
    assert_ne!(ia, ib);
    assert!(is_live(&system, ia, &a) && is_live(&system, ib, &b));
    assert!(!is_live(&system, ia, &b) && !is_live(&system, ib, &a));
    system
        .send(&b, AgentMessage::cast(AgentPid::nil(), 1u64))
        .unwrap();
    assert_eq!(system.get_mailbox(&b).unwrap().queue_size(), 1);
    assert_eq!(system.get_mailbox(&a).unwrap().queue_size(), 0);
}

// ===== registration errors =====

#[test]
fn duplicate_registration() {
    let system = system();
    let pid = register(&system);
    let tx = system.sender(&pid).unwrap();
    assert!(matches!(
        system.register_agent(pid.clone()),
        Err(MessagingError::DuplicateAgent(ref p)) if *p == pid
    ));
    // The original registration is untouched.
    assert!(tx.same_mailbox(&system.sender(&pid).unwrap()));
    assert_eq!(system.mailboxes().len(), 1);
}

#[test]
fn nil_pid_refused() {
    let system = system();
    assert!(system.register_agent(AgentPid::nil()).is_err());
    assert!(system.get_mailbox(&AgentPid::nil()).is_none());
    assert_eq!(system.mailboxes().len(), 0);
}

#[test]
fn unknown_agent() {
    let system = system();
    let ghost = AgentPid::new();
    let env = envelope(&ghost, json!({"lost": true}));
    let env_id = env.id.clone();
    assert!(matches!(
        system.send_message(env),
        Err(MessagingError::AgentNotFound(ref p)) if *p == ghost
    ));
    let cast = AgentMessage::cast(AgentPid::nil(), 9u64);
    let cast_id = cast.id().clone();
    assert!(matches!(
        system.send(&ghost, cast),
        Err(MessagingError::AgentNotFound(_))
    ));
    let dead = system.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(system.dead_letter_count(), 2);
    assert!(system.dead_letters().is_empty(), "dead_letters drains");
    assert_eq!(dead[0].id, env_id);
    assert_eq!(dead[1].id, cast_id);
    for d in &dead {
        assert_eq!(d.reason, DeadLetterReason::AgentNotFound);
        assert_eq!(d.to, ghost);
    }
    match &dead[0].message {
        DeadMessage::Envelope(e) => assert_eq!(e.payload, json!({"lost": true})),
        DeadMessage::Message(m) => {
            assert_eq!(
                m.payload::<serde_json::Value>(),
                Some(&json!({"lost": true}))
            )
        }
    }
    match &dead[1].message {
        DeadMessage::Message(m) => assert_eq!(m.payload::<u64>(), Some(&9)),
        other => panic!("expected the message, got {other:?}"),
    }
    let (stats, _) = system.get_stats();
    assert_eq!(stats.messages_failed, 2);
    assert_eq!(stats.messages_delivered, 0);
}

#[test]
fn unregister_unknown() {
    let system = system();
    let ghost = AgentPid::new();
    assert!(matches!(
        system.unregister_agent(&ghost),
        Err(MessagingError::AgentNotFound(ref p)) if *p == ghost
    ));
    let pid = register(&system);
    system.unregister_agent(&pid).unwrap();
    assert!(matches!(
        system.unregister_agent(&pid),
        Err(MessagingError::AgentNotFound(_))
    ));
}

// ===== unregister =====

#[test]
fn unregister_dead_letters_queued() {
    let system = system();
    let pid = register(&system);
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let m = AgentMessage::cast(AgentPid::nil(), i);
        ids.push(m.id().clone());
        system.send(&pid, m).unwrap();
    }
    let env = envelope(&pid, json!("e"));
    ids.push(env.id.clone());
    system.send_message(env).unwrap();
    // Nobody ever took a receiver handle.
    system.unregister_agent(&pid).unwrap();
    let dead = system.dead_letters();
    assert_eq!(dead.len(), 11);
    assert!(dead
        .iter()
        .all(|d| d.reason == DeadLetterReason::MailboxClosed && d.to == pid));
    let mut dead_ids: Vec<_> = dead.iter().map(|d| d.id.clone()).collect();
    dead_ids.sort();
    ids.sort();
    assert_eq!(dead_ids, ids);
    let (stats, mailboxes) = system.get_stats();
    assert_eq!(stats.messages_routed, 11);
    assert_eq!(stats.messages_delivered, 11);
    assert_eq!(stats.messages_failed, 0);
    assert_eq!(stats.active_routes, 0);
    assert!(mailboxes.is_empty());
    assert_eq!(system.dead_letter_count(), 11);
    // Later sends: AgentNotFound, dead-lettered.
    assert!(matches!(
        system.send(&pid, AgentMessage::cast(AgentPid::nil(), 0u64)),
        Err(MessagingError::AgentNotFound(_))
    ));
    assert_eq!(system.dead_letter_count(), 12);
}

#[test]
fn unregister_wakes_blocked_receiver() {
    let system = system();
    let pid = register(&system);
    let receiver = spawn_receiver(&system, &pid);
    system
        .send(&pid, AgentMessage::cast(AgentPid::nil(), 1u64))
        .unwrap();
    // Let the receiver block on an empty mailbox.
    let mb = system.get_mailbox(&pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mb.is_empty() {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    drop(mb);
    thread::sleep(Duration::from_millis(30));
    // Queue more, then unregister at once: the receiver drains them first.
    for i in 2..=5u64 {
        system
            .send(&pid, AgentMessage::cast(AgentPid::nil(), i))
            .unwrap();
    }
    system.unregister_agent(&pid).unwrap();
    let (got, err) = within(10, move || receiver.join().unwrap());
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(matches!(err, MessagingError::ChannelClosed(ref p) if *p == pid));
    assert!(system.dead_letters().is_empty());
}

#[test]
fn unregister_idle_blocked_receiver() {
    let system = system();
    let pid = register(&system);
    let receiver = spawn_receiver(&system, &pid);
    thread::sleep(Duration::from_millis(30));
    system.unregister_agent(&pid).unwrap();
    let (got, err) = within(10, move || receiver.join().unwrap());
    assert!(got.is_empty());
    assert!(matches!(err, MessagingError::ChannelClosed(_)));
}

// ===== shutdown =====

#[test]
fn shutdown() {
    let system = system();
    let pids: Vec<_> = (0..3).map(|_| register(&system)).collect();
    let receivers: Vec<_> = pids.iter().map(|p| spawn_receiver(&system, p)).collect();
    system
        .send(&pids[0], AgentMessage::cast(AgentPid::nil(), 1u64))
        .unwrap();
    let unreceived = register(&system);
    system
        .send(&unreceived, AgentMessage::cast(AgentPid::nil(), 2u64))
        .unwrap();
    thread::sleep(Duration::from_millis(20));
    assert!(!system.is_shut_down());
    system.shutdown().unwrap();
    assert!(system.is_shut_down());
    let results = within(10, move || {
        receivers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(results[0].0, [1]);
    for (_, err) in &results {
        assert!(matches!(err, MessagingError::ChannelClosed(_)), "{err:?}");
    }
    // The message nobody could receive is a dead letter.
    let dead = system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].to, unreceived);
    assert_eq!(dead[0].reason, DeadLetterReason::MailboxClosed);

    // Later operations fail clearly.
    let is_shut = |e: &MessagingError| {
        matches!(e, MessagingError::System(_)) && e.to_string().contains("shut down")
    };
    let e = system.register_agent(AgentPid::new()).unwrap_err();
    assert!(is_shut(&e), "{e}");
    let e = system
        .send(&pids[0], AgentMessage::cast(AgentPid::nil(), 3u64))
        .unwrap_err();
    assert!(is_shut(&e), "{e}");
    let e = system
        .send_message(envelope(&pids[1], json!(3)))
        .unwrap_err();
    assert!(is_shut(&e), "{e}");
    let e = system
        .call(AgentPid::new(), &pids[2], 1u64, Duration::from_secs(1))
        .unwrap_err();
    assert!(is_shut(&e), "{e}");
    assert!(system.get_mailbox(&pids[0]).is_none());
    // Idempotent.
    system.shutdown().unwrap();
    system.clone().shutdown().unwrap();
    assert!(system.is_shut_down());
}

// ===== stats =====

#[test]
fn stats_add_up() {
    let system = system();
    let a = register(&system);
    let b = register(&system);
    let (stats, mailboxes) = system.get_stats();
    assert_eq!(
        stats,
        RouterStats {
            active_routes: 2,
            ..RouterStats::default()
        }
    );
    assert_eq!(mailboxes.len(), 2);
    for i in 0..7u64 {
        system
            .send(&a, AgentMessage::cast(AgentPid::nil(), i))
            .unwrap();
    }
    for i in 0..3u64 {
        system.send_message(envelope(&b, json!(i))).unwrap();
    }
    for _ in 0..4 {
        let _ = system.send(&AgentPid::new(), AgentMessage::cast(AgentPid::nil(), 0u64));
    }
    let (stats, mailboxes) = system.get_stats();
    assert_eq!(stats.messages_delivered, 10);
    assert_eq!(stats.messages_failed, 4);
    assert_eq!(
        stats.messages_routed,
        stats.messages_delivered + stats.messages_failed + stats.messages_pending
    );
    assert_eq!(stats.messages_routed, 14);
    assert_eq!(stats.active_routes, 2);
    let by_pid: HashMap<_, _> = mailboxes.iter().map(|s| (s.agent_id.clone(), s)).collect();
    assert_eq!(by_pid[&a].total_messages_received, 7);
    assert_eq!(by_pid[&a].current_queue_size, 7);
    assert_eq!(by_pid[&b].total_messages_received, 3);
    assert_eq!(system.dead_letter_count(), 4);
    system.unregister_agent(&a).unwrap();
    assert_eq!(system.get_stats().0.active_routes, 1);
}

#[test]
fn stats_with_metrics_off() {
    let system = MessageSystem::new(RouterConfig {
        enable_metrics: false,
        ..RouterConfig::default()
    });
    let a = register(&system);
    system
        .send(&a, AgentMessage::cast(AgentPid::nil(), 1u64))
        .unwrap();
    let (stats, _) = system.get_stats();
    assert_eq!(
        stats.messages_routed,
        stats.messages_delivered + stats.messages_failed
    );
    assert_eq!(stats.active_routes, 1);
}

// ===== configuration =====

#[test]
fn bad_router_config() {
    let bad = [
        RouterConfig {
            retry_interval: Duration::ZERO,
            ..RouterConfig::default()
        },
        RouterConfig {
            max_concurrent_deliveries: 0,
            ..RouterConfig::default()
        },
    ];
    for config in bad {
        assert!(matches!(
            MessageSystem::builder(config.clone()).build(),
            Err(MessagingError::Configuration(_))
        ));
        let system = MessageSystem::new(config);
        let pid = AgentPid::new();
        let conf = |r: MessagingResult<()>| matches!(r, Err(MessagingError::Configuration(_)));
        assert!(conf(system.register_agent(pid.clone())));
        assert!(conf(
            system.send(&pid, AgentMessage::cast(AgentPid::nil(), 1u64))
        ));
        assert!(conf(system.send_message(envelope(&pid, json!(1)))));
        assert!(conf(
            system
                .call(AgentPid::new(), &pid, 1u64, Duration::from_secs(1))
                .map(|_| ())
        ));
        assert!(system.get_mailbox(&pid).is_none());
    }
}

#[test]
fn bad_mailbox_config() {
    let config = MailboxConfig {
        enable_persistence: true,
        ..MailboxConfig::default()
    };
    assert!(matches!(
        MessageSystem::builder(RouterConfig::default())
            .mailbox_config(config.clone())
            .build(),
        Err(MessagingError::Configuration(_))
    ));
}

#[test]
fn bounded_mailboxes_from_builder() {
    let system = MessageSystem::builder(RouterConfig::default())
        .mailbox_config(MailboxConfig {
            max_messages: 2,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap();
    let pid = register(&system);
    let tx = system.sender(&pid).unwrap();
    tx.try_send(
        AgentMessage::cast(AgentPid::nil(), 1u64),
        MessagePriority::Normal,
    )
    .unwrap();
    tx.try_send(
        AgentMessage::cast(AgentPid::nil(), 2u64),
        MessagePriority::Normal,
    )
    .unwrap();
    assert!(matches!(
        tx.try_send(
            AgentMessage::cast(AgentPid::nil(), 3u64),
            MessagePriority::Normal
        ),
        Err(TrySendError::Full(_))
    ));
    assert_eq!(system.get_mailbox(&pid).unwrap().config().max_messages, 2);
}

// ===== custom router =====

#[derive(Default)]
struct CountingRouter {
    agents: Mutex<HashMap<AgentPid, MailboxSender>>,
    envelopes: AtomicUsize,
    messages: AtomicUsize,
    registrations: AtomicUsize,
    shutdowns: AtomicUsize,
}

impl MessageRouter for CountingRouter {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.envelopes.fetch_add(1, SeqCst);
        let to = envelope.to.clone();
        let priority = envelope.delivery_options.priority;
        self.route(&to, envelope.into_message(), priority)
    }

    fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()> {
        assert_eq!(sender.agent_id(), &agent_id);
        self.registrations.fetch_add(1, SeqCst);
        self.agents.lock().unwrap().insert(agent_id, sender);
        Ok(())
    }

    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.agents
            .lock()
            .unwrap()
            .remove(agent_id)
            .map(|_| ())
            .ok_or_else(|| MessagingError::AgentNotFound(agent_id.clone()))
    }

    fn get_stats(&self) -> RouterStats {
        RouterStats {
            messages_routed: (self.envelopes.load(SeqCst) + self.messages.load(SeqCst)) as u64,
            active_routes: self.agents.lock().unwrap().len(),
            ..RouterStats::default()
        }
    }

    fn shutdown(&self) -> MessagingResult<()> {
        self.shutdowns.fetch_add(1, SeqCst);
        Ok(())
    }

    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.messages.fetch_add(1, SeqCst);
        let sender = self
            .agents
            .lock()
            .unwrap()
            .get(to)
            .cloned()
            .ok_or_else(|| MessagingError::AgentNotFound(to.clone()))?;
        sender.send_with_priority(message, priority)
    }
}

#[test]
fn custom_router() {
    let router = Arc::new(CountingRouter::default());
    let system = MessageSystem::builder(RouterConfig::default())
        .router(router.clone())
        .build()
        .unwrap();
    let a = register(&system);
    let b = register(&system);
    assert_eq!(router.registrations.load(SeqCst), 2);
    assert!(router.agents.lock().unwrap()[&a].same_mailbox(&system.sender(&a).unwrap()));

    system
        .send_message(envelope(&b, json!({"via": "router"})).with_from(a.clone()))
        .unwrap();
    assert_eq!(router.envelopes.load(SeqCst), 1);
    system
        .send(&a, AgentMessage::cast(b.clone(), 5u64))
        .unwrap();
    // route_message forwards to route, so two messages went through `route`.
    assert_eq!(router.messages.load(SeqCst), 2);

    let got = system.get_mailbox(&b).unwrap().receive().unwrap();
    assert_eq!(got.from(), Some(&a));
    assert_eq!(
        got.payload::<serde_json::Value>(),
        Some(&json!({"via": "router"}))
    );
    assert_eq!(
        system
            .get_mailbox(&a)
            .unwrap()
            .receive()
            .unwrap()
            .payload::<u64>(),
        Some(&5)
    );
    let (stats, mailboxes) = system.get_stats();
    assert_eq!(stats.messages_routed, 3);
    assert_eq!(stats.active_routes, 2);
    assert_eq!(mailboxes.len(), 2);

    system.unregister_agent(&a).unwrap();
    assert!(!router.agents.lock().unwrap().contains_key(&a));
    assert!(system.get_mailbox(&a).is_none());
    assert!(matches!(
        system.send(&a, AgentMessage::cast(AgentPid::nil(), 0u64)),
        Err(MessagingError::AgentNotFound(_))
    ));
    system.shutdown().unwrap();
    system.shutdown().unwrap();
    assert_eq!(router.shutdowns.load(SeqCst), 1);
}

/// A router that only routes envelopes (keeps the default `route`).
struct EnvelopeOnly(CountingRouter);

impl MessageRouter for EnvelopeOnly {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        self.0.route_message(envelope)
    }
    fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()> {
        self.0.register_agent(agent_id, sender)
    }
    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.0.unregister_agent(agent_id)
    }
    fn get_stats(&self) -> RouterStats {
        self.0.get_stats()
    }
    fn shutdown(&self) -> MessagingResult<()> {
        self.0.shutdown()
    }
}

/// A router that refuses every registration.
struct Refusing;

impl MessageRouter for Refusing {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        Err(MessagingError::AgentNotFound(envelope.to))
    }
    fn register_agent(&self, _: AgentPid, _: MailboxSender) -> MessagingResult<()> {
        Err(MessagingError::System("no".into()))
    }
    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        Err(MessagingError::AgentNotFound(agent_id.clone()))
    }
    fn get_stats(&self) -> RouterStats {
        RouterStats::default()
    }
    fn shutdown(&self) -> MessagingResult<()> {
        Ok(())
    }
}

#[test]
fn custom_router_defaults_and_refusal() {
    let system = MessageSystem::builder(RouterConfig::default())
        .router(Arc::new(EnvelopeOnly(CountingRouter::default())))
        .build()
        .unwrap();
    let a = register(&system);
    assert!(matches!(
        system.send(&a, AgentMessage::cast(AgentPid::nil(), 1u64)),
        Err(MessagingError::DeliveryFailed(..))
    ));
    system.send_message(envelope(&a, json!(1))).unwrap();
    assert_eq!(system.get_mailbox(&a).unwrap().queue_size(), 1);

    // A refused registration leaves no mailbox behind.
    let system = MessageSystem::builder(RouterConfig::default())
        .router(Arc::new(Refusing))
        .build()
        .unwrap();
    let pid = AgentPid::new();
    assert!(system.register_agent(pid.clone()).is_err());
    assert!(system.get_mailbox(&pid).is_none());
    assert_eq!(system.mailboxes().len(), 0);
}
