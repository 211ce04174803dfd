//! Table model L7: a stale handle or route racing unregister and slot reuse.

use loom::sync::Arc;
use terraphim_agent_messaging::__private::{agent_id, is_live};
use terraphim_agent_messaging::{
    AgentPid, DeadLetter, DeadLetterReason, DeadMessage, MessageSystem, MessagingError,
    RouterConfig,
};

use crate::{assert_all_dropped, model, spawn, tag, tagged};

/// `(to, reason, tag)` of each dead letter.
fn dead(system: &MessageSystem) -> Vec<(AgentPid, DeadLetterReason, (u8, u8))> {
    system
        .dead_letters()
        .into_iter()
        .map(
            |DeadLetter {
                 to,
                 reason,
                 message,
                 ..
             }| match message {
                DeadMessage::Message(m) => (to, reason, tag(&m)),
                DeadMessage::Envelope(_) => panic!("not an envelope"),
            },
        )
        .collect()
}

/// Unregisters `a`, registers a fresh `b` (which may take `a`'s slot) and checks that
/// `a`'s registration id is dead and differs from `b`'s.
fn replace(system: &MessageSystem, a: &AgentPid) -> AgentPid {
    let id_a = agent_id(system, a).expect("a is registered");
    system.unregister_agent(a).unwrap();
    let b = AgentPid::new();
    system.register_agent(b.clone()).unwrap();
    let id_b = agent_id(system, &b).expect("b is registered");
    assert_ne!(id_a, id_b, "a reused slot gets a new generation");
    assert!(!is_live(system, id_a, a));
    b
}

/// Asserts that `b`'s mailbox is empty: the stale message never reaches it.
#[track_caller]
fn assert_b_untouched(system: &MessageSystem, b: &AgentPid) {
    let mailbox = system.get_mailbox(b).unwrap();
    assert!(
        mailbox.try_receive().unwrap().is_none(),
        "stale message reached b"
    );
}

/// L7: a stale `MailboxSender` of `a` sends while `a` is unregistered and `b` takes its
/// slot. With no receiver handle for `a`, the message is dead-lettered exactly once
/// (refused on the closed mailbox, or accepted and drained at close); `b` never sees it.
#[test]
fn l7_stale_sender_vs_slot_reuse() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::new(RouterConfig::default());
        let a = AgentPid::new();
        system.register_agent(a.clone()).unwrap();
        let stale = system.sender(&a).unwrap();
        let t = token.clone();
        let producer = spawn(move || match stale.send(tagged(&t, 0, 0)) {
            Ok(()) => true,
            Err(MessagingError::ChannelClosed(_)) => false,
            Err(e) => panic!("unexpected send error: {e}"),
        });
        let b = replace(&system, &a);
        producer.join().unwrap();
        assert_b_untouched(&system, &b);
        let dead = dead(&system);
        assert_eq!(dead.len(), 1, "exactly one dead letter");
        assert_eq!(dead[0].0, a);
        assert_eq!(dead[0].1, DeadLetterReason::MailboxClosed);
        assert_eq!(dead[0].2, (0, 0));
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

/// L7b: as L7, but a receiver handle of `a` survives the unregister: an accepted stale
/// message is received by `a` (then `ChannelClosed`), a refused one is dead-lettered.
#[test]
fn l7_stale_sender_with_live_receiver() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::new(RouterConfig::default());
        let a = AgentPid::new();
        system.register_agent(a.clone()).unwrap();
        let stale = system.sender(&a).unwrap();
        let mailbox_a = system.get_mailbox(&a).unwrap();
        let t = token.clone();
        let producer = spawn(move || stale.send(tagged(&t, 0, 0)).is_ok());
        let b = replace(&system, &a);
        let ok = producer.join().unwrap();
        assert_b_untouched(&system, &b);
        let mut received = Vec::new();
        loop {
            match mailbox_a.receive() {
                Ok(m) => received.push(tag(&m)),
                Err(MessagingError::ChannelClosed(_)) => break,
                Err(e) => panic!("unexpected receive error: {e}"),
            }
        }
        let dead = dead(&system);
        if ok {
            assert_eq!(received, [(0, 0)], "an accepted message reaches a");
            assert!(dead.is_empty());
        } else {
            assert!(received.is_empty());
            assert_eq!(dead.len(), 1);
            assert_eq!((&dead[0].0, dead[0].2), (&a, (0, 0)));
        }
        drop(mailbox_a);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

/// L7c: a send routed by pid races unregister + re-register: it is delivered to `a`
/// (then dead-lettered at close) or refused as `AgentNotFound` (and dead-lettered),
/// never routed to `b`.
#[test]
fn l7_routed_send_vs_slot_reuse() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::new(RouterConfig::default());
        let a = AgentPid::new();
        system.register_agent(a.clone()).unwrap();
        let (s, to, t) = (system.clone(), a.clone(), token.clone());
        let producer = spawn(move || s.send(&to, tagged(&t, 0, 0)).err());
        let b = replace(&system, &a);
        let err = producer.join().unwrap();
        assert_b_untouched(&system, &b);
        let dead = dead(&system);
        assert_eq!(dead.len(), 1, "exactly one dead letter");
        assert_eq!((&dead[0].0, dead[0].2), (&a, (0, 0)));
        let expected = match err {
            None => DeadLetterReason::MailboxClosed,
            Some(MessagingError::AgentNotFound(pid)) => {
                assert_eq!(pid, a);
                DeadLetterReason::AgentNotFound
            }
            Some(e) => panic!("unexpected send error: {e}"),
        };
        assert_eq!(dead[0].1, expected);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}
