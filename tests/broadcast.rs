//! `LoadBalance::Broadcast`: every member receives each message, as a copy of its own;
//! a message that cannot be copied reaches no member.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::sync::{manual_system, registered};
use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeliveryOptions, LoadBalance, MessageEnvelope,
    MessageSystem, MessagingError, RouterConfig,
};

const N: usize = 5;

fn group_of(system: &MessageSystem, n: usize) -> (AgentPid, Vec<AgentMailbox>) {
    let group = system.create_group(LoadBalance::Broadcast).unwrap();
    let members = (0..n)
        .map(|_| {
            let (pid, mailbox) = registered(system);
            system.join_group(&group, &pid).unwrap();
            mailbox
        })
        .collect();
    (group, members)
}

#[test]
fn every_member_gets_each_envelope() {
    let (system, _clock) = manual_system(RouterConfig::default(), 0);
    let (group, members) = group_of(&system, N);
    let envelope = MessageEnvelope::new(
        group.clone(),
        "news".into(),
        json!({"n": 1}),
        DeliveryOptions::default(),
    );
    let original = envelope.id.clone();
    system.send_message(envelope).unwrap();
    let mut ids = HashSet::new();
    for mailbox in &members {
        let message = mailbox.try_receive().unwrap().expect("a copy");
        assert_eq!(message.message_type(), Some("news"));
        assert_eq!(
            message.payload::<serde_json::Value>(),
            Some(&json!({"n": 1}))
        );
        assert!(ids.insert(message.id().clone()), "each copy has its own id");
        assert!(mailbox.try_receive().unwrap().is_none(), "one copy each");
    }
    assert!(!ids.contains(&original));
    // Built messages with copyable payloads go out too.
    system
        .send(
            &group,
            AgentMessage::cast(AgentPid::nil(), "hello".to_string()),
        )
        .unwrap();
    for mailbox in &members {
        let message = mailbox.try_receive().unwrap().unwrap();
        assert_eq!(
            message.payload::<String>().map(String::as_str),
            Some("hello")
        );
    }
    let stats = system.delivery_stats();
    // Two originals (delivered to the group) and 2 × N copies.
    assert_eq!(stats.total_messages, 2 + 2 * N as u64);
    assert_eq!(stats.delivered, stats.total_messages);
}

#[test]
fn an_uncopyable_payload_reaches_no_member() {
    struct Opaque;
    let (system, _clock) = manual_system(RouterConfig::default(), 0);
    let (group, members) = group_of(&system, 3);
    let e = system
        .send(&group, AgentMessage::cast(AgentPid::nil(), Opaque))
        .unwrap_err();
    assert!(
        matches!(&e, MessagingError::InvalidMessage(why) if why.contains("cannot be copied")),
        "{e}"
    );
    let (call, _reply) = AgentMessage::call(AgentPid::new(), 1u64, Duration::from_secs(1));
    assert!(matches!(
        system.send(&group, call),
        Err(MessagingError::InvalidMessage(_))
    ));
    for mailbox in &members {
        assert!(
            mailbox.try_receive().unwrap().is_none(),
            "never half-delivered"
        );
    }
    assert_eq!(system.dead_letters().len(), 2);
}

#[test]
fn an_empty_broadcast_group_is_retried_until_a_member_joins() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let group = system.create_group(LoadBalance::Broadcast).unwrap();
    system
        .send(&group, AgentMessage::cast(AgentPid::nil(), 7u64))
        .unwrap();
    let (pid, mailbox) = registered(&system);
    system.join_group(&group, &pid).unwrap();
    clock.advance(Duration::from_secs(1));
    system.run_due_timers();
    assert_eq!(
        mailbox.try_receive().unwrap().unwrap().payload::<u64>(),
        Some(&7)
    );
}

#[test]
fn acked_copies_are_acknowledged_one_by_one() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (group, members) = group_of(&system, 3);
    let options = DeliveryOptions {
        require_ack: true,
        ..DeliveryOptions::default()
    };
    system
        .send_message(MessageEnvelope::new(group, "job".into(), json!(1), options))
        .unwrap();
    for mailbox in &members {
        let copy = mailbox.try_receive().unwrap().unwrap();
        system.acknowledge(copy.id()).unwrap();
    }
    clock.advance(Duration::from_secs(60));
    system.run_due_timers();
    for mailbox in &members {
        assert!(mailbox.try_receive().unwrap().is_none(), "no redelivery");
    }
    let stats = system.delivery_stats();
    assert_eq!(stats.acknowledged, 3);
    assert_eq!(stats.pending + stats.in_transit, 0);
}
