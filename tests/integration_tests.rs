//! End to end, a tour: the seed README's Quick Start in both flavours, calls across
//! threads and tasks, a load-balanced group, and the delivery guarantees table, each
//! through the public API only. The mechanisms have their own files (`delivery.rs`,
//! `system.rs`, `tokio.rs`, …); this is the seed's `cargo test --test
//! integration_tests`, and the place to start reading.
//!
//! `RUST_LOG=debug cargo test --features tracing --test integration_tests` prints the
//! crate's events of a failing test.

use std::thread;
use std::time::Duration;

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, DeliveryGuarantee, DeliveryOptions, LoadBalance, MessageEnvelope,
    MessageSystem, MessagingError, RouterConfig,
};

mod common;
use common::init_tracing;
use common::sync::{manual_system, registered, within};

fn envelope(to: &AgentPid, n: u64) -> MessageEnvelope {
    MessageEnvelope::new(
        to.clone(),
        "job".into(),
        json!({ "n": n }),
        DeliveryOptions::default(),
    )
}

/// The seed's Quick Start with the root's blocking calls (`.await` dropped).
#[test]
fn quick_start_sync() {
    init_tracing();
    let system = MessageSystem::new(RouterConfig::default());
    let (agent1, agent2) = (AgentPid::new(), AgentPid::new());
    system.register_agent(agent1.clone()).unwrap();
    system.register_agent(agent2.clone()).unwrap();
    let hello = MessageEnvelope::new(
        agent2.clone(),
        "greeting".to_string(),
        json!({"message": "Hello, Agent2!"}),
        DeliveryOptions::default(),
    )
    .with_from(agent1.clone());
    system.send_message(hello).unwrap();

    let message = system.get_mailbox(&agent2).unwrap().receive().unwrap();
    assert_eq!(message.from(), Some(&agent1));
    assert_eq!(message.message_type(), Some("greeting"));
    assert_eq!(
        message.payload::<serde_json::Value>(),
        Some(&json!({"message": "Hello, Agent2!"}))
    );
    system.shutdown().unwrap();
    assert_eq!(system.delivery_stats().delivered, 1);
}

/// The seed's Quick Start as written, on `terraphim_agent_messaging::tokio`.
#[cfg(feature = "tokio")]
#[tokio::test]
async fn quick_start_tokio() -> Result<(), Box<dyn std::error::Error>> {
    use terraphim_agent_messaging::tokio::MessageSystem;
    init_tracing();
    let system = MessageSystem::new(RouterConfig::default());
    let (agent1, agent2) = (AgentPid::new(), AgentPid::new());
    system.register_agent(agent1.clone()).await?;
    system.register_agent(agent2.clone()).await?;
    let envelope = MessageEnvelope::new(
        agent2.clone(),
        "greeting".to_string(),
        json!({"message": "Hello, Agent2!"}),
        DeliveryOptions::default(),
    )
    .with_from(agent1.clone());
    system.send_message(envelope).await?;

    let mailbox = system.get_mailbox(&agent2).await.expect("registered");
    let message = common::tokio::within(10, mailbox.receive()).await?;
    assert_eq!(message.message_type(), Some("greeting"));
    system.shutdown().await?;
    assert!(matches!(
        mailbox.receive().await,
        Err(MessagingError::ChannelClosed(_))
    ));
    Ok(())
}

/// A server thread answers calls; a caller blocks for each reply, and a call nobody
/// answers times out.
#[test]
fn calls_across_threads() {
    within(10, || {
        init_tracing();
        let system = MessageSystem::new(RouterConfig::default());
        let (client, server) = (AgentPid::new(), AgentPid::new());
        system.register_agent(server.clone()).unwrap();
        let mailbox = system.get_mailbox(&server).unwrap();
        let worker = thread::spawn(move || {
            while let Ok(message) = mailbox.receive() {
                if let AgentMessage::Call {
                    payload, reply_to, ..
                } = message
                {
                    let n = *payload.downcast::<u64>().unwrap();
                    reply_to.send(Box::new(n * n)).ok();
                }
            }
        });
        for n in 1..=10u64 {
            let answer: u64 = system
                .call_typed(client.clone(), &server, n, Duration::from_secs(5))
                .unwrap();
            assert_eq!(answer, n * n);
        }
        let silent = AgentPid::new();
        system.register_agent(silent.clone()).unwrap();
        let unanswered = system.call(client, &silent, 1u64, Duration::from_millis(20));
        assert!(matches!(unanswered, Err(MessagingError::MessageTimeout(_))));
        system.shutdown().unwrap();
        worker.join().unwrap();
    });
}

/// The tokio flavour's call: its timeout on the system's timer task.
#[cfg(feature = "tokio")]
#[tokio::test]
async fn calls_across_tasks() {
    use terraphim_agent_messaging::tokio::MessageSystem;
    let system = MessageSystem::new(RouterConfig::default());
    let (client, server) = (AgentPid::new(), AgentPid::new());
    let (_, mailbox) = common::tokio::registered(&system).await;
    system.register_agent(server.clone()).await.unwrap();
    let inbox = system.get_mailbox(&server).await.unwrap();
    let worker = tokio::spawn(async move {
        while let Ok(AgentMessage::Call {
            payload, reply_to, ..
        }) = inbox.receive().await
        {
            reply_to.send(payload).ok();
        }
    });
    let echoed: String = system
        .call_typed(
            client.clone(),
            &server,
            "ping".to_string(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(echoed, "ping");
    let silent = mailbox.agent_id().clone();
    let unanswered = system
        .call(client, &silent, 1u64, Duration::from_millis(20))
        .await;
    assert!(matches!(unanswered, Err(MessagingError::MessageTimeout(_))));
    system.shutdown().await.unwrap();
    worker.await.unwrap();
}

/// A round-robin group spreads work evenly; a member that goes away leaves it, and the
/// rest take its share.
#[test]
fn a_group_balances_and_outlives_a_member() {
    let (system, _clock) = manual_system(RouterConfig::default(), 0);
    let group = system.create_group(LoadBalance::RoundRobin).unwrap();
    let members: Vec<_> = (0..3).map(|_| registered(&system)).collect();
    for (pid, _) in &members {
        system.join_group(&group, pid).unwrap();
    }
    for n in 0..30 {
        system.send_message(envelope(&group, n)).unwrap();
    }
    let counts: Vec<usize> = members.iter().map(|(_, m)| m.queue_size()).collect();
    assert_eq!(counts, [10, 10, 10]);

    system.unregister_agent(&members[0].0).unwrap();
    for n in 0..10 {
        system.send_message(envelope(&group, n)).unwrap();
    }
    assert_eq!(members[1].1.queue_size() + members[2].1.queue_size(), 30);
    assert_eq!(system.group_members(&group).unwrap().len(), 2);
}

/// The guarantees table of the README, row by row, on a manual clock.
#[test]
fn the_guarantees_table() {
    for guarantee in [
        DeliveryGuarantee::AtMostOnce,
        DeliveryGuarantee::AtLeastOnce,
        DeliveryGuarantee::ExactlyOnce,
    ] {
        let mut config = RouterConfig::default();
        config.delivery_config.guarantee = guarantee;
        config.delivery_config.acknowledgment_timeout = Duration::from_secs(1);
        let (system, clock) = manual_system(config, 1);
        let advance = |by| {
            clock.advance(by);
            system.run_due_timers();
        };
        let (pid, mailbox) = registered(&system);

        // Mailbox full: an error at once, or retried until there is room.
        system.send_message(envelope(&pid, 1)).unwrap();
        let second = system.send_message(envelope(&pid, 2));
        assert_eq!(second.is_err(), guarantee == DeliveryGuarantee::AtMostOnce);
        assert!(mailbox.try_receive().unwrap().is_some());
        advance(Duration::from_secs(1));
        let retried = mailbox.try_receive().unwrap().is_some();
        assert_eq!(
            retried,
            guarantee != DeliveryGuarantee::AtMostOnce,
            "{guarantee:?}"
        );

        // Destination unknown: an error for every guarantee.
        let nobody = system.send_message(envelope(&AgentPid::new(), 3));
        assert!(matches!(nobody, Err(MessagingError::AgentNotFound(_))));

        // An ack asked and not given: redelivered, except at most once; exactly once
        // never shows the copy.
        let mut acked = envelope(&pid, 4);
        acked.delivery_options.require_ack = true;
        let id = acked.id.clone();
        system.send_message(acked).unwrap();
        assert!(mailbox.try_receive().unwrap().is_some());
        advance(Duration::from_secs(1));
        let copy = mailbox.try_receive().unwrap();
        let expect_copy = guarantee == DeliveryGuarantee::AtLeastOnce;
        assert_eq!(copy.is_some(), expect_copy, "{guarantee:?}");
        if guarantee != DeliveryGuarantee::AtMostOnce {
            system.acknowledge(&id).unwrap();
        }

        // The same id twice: delivered twice, but once under exactly-once.
        let twice = envelope(&pid, 5);
        system.send_message(twice.clone()).unwrap();
        assert!(mailbox.try_receive().unwrap().is_some());
        system.send_message(twice).unwrap();
        let again = mailbox.try_receive().unwrap().is_some();
        assert_eq!(
            again,
            guarantee != DeliveryGuarantee::ExactlyOnce,
            "{guarantee:?}"
        );

        // The ledger adds up: every message accepted is accounted for once.
        system.shutdown().unwrap();
        let l = system.delivery_stats();
        let settled = l.delivered + l.acknowledged + l.failed + l.expired + l.duplicates;
        assert_eq!(
            settled + l.pending + l.in_transit,
            l.total_messages,
            "{guarantee:?}"
        );
    }
}
