//! Breaker model L10 (one probe in half-open) and destination-lifecycle races on the
//! agent table: double unregister, register vs unregister, generation wrap (the
//! table's generation is a `u8` under loom).

use std::time::Duration;

use loom::sync::Arc;
use terraphim_agent_messaging::__private::{agent_id, is_live, set_next_generation};
use terraphim_agent_messaging::{
    AgentPid, CircuitBreakerConfig, DeadLetter, DeadLetterReason, DeadMessage, DeliveryConfig,
    DeliveryGuarantee, MailboxConfig, ManualClock, MessageSystem, MessagingError, RouterConfig,
    TimerDriver,
};

use crate::{assert_all_dropped, model, spawn, tag, tagged};

/// `(tag, reason)` of every dead letter.
fn dead(system: &MessageSystem) -> Vec<((u8, u8), DeadLetterReason)> {
    system
        .dead_letters()
        .into_iter()
        .map(
            |DeadLetter {
                 reason, message, ..
             }| match message {
                DeadMessage::Message(m) => (tag(&m), reason),
                DeadMessage::Envelope(_) => panic!("not an envelope"),
            },
        )
        .collect()
}

// ===== L10: breaker half-open =====

/// An `AtMostOnce` system on a manual clock with a breaker that opens on the first
/// failure and waits 1 ms, and a capacity-1 agent whose breaker is open: a filler is
/// queued and a second send tripped it. Returns the system, clock, agent.
fn tripped(token: &Arc<()>) -> (MessageSystem, ManualClock, AgentPid) {
    let clock = ManualClock::new();
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee: DeliveryGuarantee::AtMostOnce,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    };
    let system = MessageSystem::builder(config)
        .clock(std::sync::Arc::new(clock.clone()))
        .timer_driver(TimerDriver::Manual)
        .mailbox_config(MailboxConfig {
            max_messages: 1,
            ..MailboxConfig::default()
        })
        .circuit_breaker(CircuitBreakerConfig {
            failure_threshold: 1,
            reset_timeout: Duration::from_millis(1),
        })
        .build()
        .expect("valid configuration");
    let agent = AgentPid::new();
    system.register_agent(agent.clone()).unwrap();
    system.send(&agent, tagged(token, 0, 0)).unwrap();
    match system.send(&agent, tagged(token, 0, 1)) {
        Err(MessagingError::MailboxFull(_)) => {}
        other => panic!("expected MailboxFull, got {other:?}"),
    }
    assert_eq!(system.get_stats().0.circuit_trips, 1);
    assert_eq!(dead(&system), [((0, 1), DeadLetterReason::MailboxFull)]);
    // Still open: refused without reaching the mailbox.
    match system.send(&agent, tagged(token, 0, 2)) {
        Err(MessagingError::CircuitOpen(_)) => {}
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(dead(&system), [((0, 2), DeadLetterReason::CircuitOpen)]);
    (system, clock, agent)
}

/// How one racing send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Ok,
    Full,
    Open,
}

/// Sends from 3 threads (main + 2) once the reset timeout has passed.
fn three_senders(system: &MessageSystem, agent: &AgentPid, token: &Arc<()>) -> Vec<Sent> {
    let send =
        |s: &MessageSystem, a: &AgentPid, t: &Arc<()>, p: u8| match s.send(a, tagged(t, p, 0)) {
            Ok(()) => Sent::Ok,
            Err(MessagingError::MailboxFull(_)) => Sent::Full,
            Err(MessagingError::CircuitOpen(_)) => Sent::Open,
            Err(e) => panic!("unexpected send error: {e}"),
        };
    let threads: Vec<_> = (1..=2u8)
        .map(|p| {
            let (s, a, t) = (system.clone(), agent.clone(), token.clone());
            spawn(move || send(&s, &a, &t, p))
        })
        .collect();
    let mut outcomes = vec![send(system, agent, token, 3)];
    outcomes.extend(threads.into_iter().map(|t| t.join().unwrap()));
    outcomes
}

/// L10: the breaker is due for a probe and the mailbox is still full, so the probe
/// fails and re-opens the breaker. Of 3 concurrent senders exactly one is let through
/// (it reaches the mailbox: `MailboxFull`), the other two get `CircuitOpen`; a
/// half-open breaker admitting everyone (opossum #120) gives several `MailboxFull`.
#[test]
fn l10_half_open_admits_one_probe() {
    model(|| {
        let token = Arc::new(());
        let (system, clock, agent) = tripped(&token);
        clock.advance(Duration::from_millis(2));
        let outcomes = three_senders(&system, &agent, &token);
        let probes = outcomes.iter().filter(|o| **o == Sent::Full).count();
        let open = outcomes.iter().filter(|o| **o == Sent::Open).count();
        assert_eq!((probes, open), (1, 2), "{outcomes:?}");
        // The failed probe re-opened the breaker: a second trip.
        assert_eq!(system.get_stats().0.circuit_trips, 2);
        let dead = dead(&system);
        assert_eq!(dead.len(), 3, "each refused send is dead-lettered once");
        for (t, reason) in &dead {
            let expected = match outcomes[usize::from(t.0 % 3)] {
                Sent::Full => DeadLetterReason::MailboxFull,
                _ => DeadLetterReason::CircuitOpen,
            };
            assert_eq!(*reason, expected, "{t:?}");
        }
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

/// L10b: as above, but the filler was taken so the probe succeeds and closes the
/// breaker. Exactly one send is `Ok` (the probe, or the first send after it closed);
/// the others get `CircuitOpen` while half-open, or `MailboxFull` after the close (the
/// capacity-1 mailbox holds the probe's message). Each refusal is dead-lettered once,
/// and the accepted message is the one in the mailbox.
#[test]
fn l10_probe_success_closes() {
    model(|| {
        let token = Arc::new(());
        let (system, clock, agent) = tripped(&token);
        let mailbox = system.get_mailbox(&agent).unwrap();
        assert_eq!(tag(&mailbox.try_receive().unwrap().unwrap()), (0, 0));
        clock.advance(Duration::from_millis(2));
        let outcomes = three_senders(&system, &agent, &token);
        let ok = outcomes.iter().filter(|o| **o == Sent::Ok).count();
        assert_eq!(ok, 1, "{outcomes:?}");
        let queued = tag(&mailbox.try_receive().unwrap().expect("the probe's message"));
        assert_eq!(outcomes[usize::from(queued.0 % 3)], Sent::Ok);
        assert!(mailbox.try_receive().unwrap().is_none());
        let dead = dead(&system);
        assert_eq!(dead.len(), 2, "{dead:?}");
        for (t, reason) in &dead {
            let expected = match outcomes[usize::from(t.0 % 3)] {
                Sent::Full => DeadLetterReason::MailboxFull,
                Sent::Open => DeadLetterReason::CircuitOpen,
                Sent::Ok => panic!("an accepted message was dead-lettered"),
            };
            assert_eq!(*reason, expected, "{t:?}");
        }
        drop(mailbox);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

// ===== L7: destination lifecycle on the agent table =====

/// Two threads unregister the same agent: exactly one `Ok`, the other
/// `AgentNotFound`; the queued message is dead-lettered once (`MailboxClosed`).
#[test]
fn l7_double_unregister() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::new(RouterConfig::default());
        let a = AgentPid::new();
        system.register_agent(a.clone()).unwrap();
        system.send(&a, tagged(&token, 0, 0)).unwrap();
        let (s, p) = (system.clone(), a.clone());
        let other = spawn(move || s.unregister_agent(&p));
        let mine = system.unregister_agent(&a);
        let theirs = other.join().unwrap();
        match (mine, theirs) {
            (Ok(()), Err(MessagingError::AgentNotFound(p)))
            | (Err(MessagingError::AgentNotFound(p)), Ok(())) => assert_eq!(p, a),
            other => panic!("not exactly one winner: {other:?}"),
        }
        assert!(system.get_mailbox(&a).is_none());
        assert_eq!(system.mailboxes().len(), 0);
        assert_eq!(dead(&system), [((0, 0), DeadLetterReason::MailboxClosed)]);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

/// An agent with a queued message is unregistered while another thread registers the
/// same pid again: the register fails `DuplicateAgent` (it came first) or succeeds
/// with a fresh, empty mailbox (it came after). The old message is dead-lettered once
/// and never shows up in the new mailbox; a send afterwards reaches the new mailbox
/// exactly when the pid is registered.
#[test]
fn l7_register_races_unregister() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::new(RouterConfig::default());
        let a = AgentPid::new();
        system.register_agent(a.clone()).unwrap();
        system.send(&a, tagged(&token, 0, 0)).unwrap();
        let (s, p) = (system.clone(), a.clone());
        let registrar = spawn(move || match s.register_agent(p.clone()) {
            Ok(()) => true,
            Err(MessagingError::DuplicateAgent(d)) => {
                assert_eq!(d, p);
                false
            }
            Err(e) => panic!("unexpected register error: {e}"),
        });
        system.unregister_agent(&a).unwrap();
        let registered = registrar.join().unwrap();
        assert_eq!(dead(&system), [((0, 0), DeadLetterReason::MailboxClosed)]);
        assert_eq!(system.get_mailbox(&a).is_some(), registered);
        assert_eq!(system.mailboxes().len(), usize::from(registered));
        let after = system.send(&a, tagged(&token, 0, 1));
        if registered {
            after.unwrap();
            let mailbox = system.get_mailbox(&a).unwrap();
            assert_eq!(tag(&mailbox.try_receive().unwrap().unwrap()), (0, 1));
            assert!(mailbox.try_receive().unwrap().is_none());
        } else {
            assert!(matches!(after, Err(MessagingError::AgentNotFound(_))));
            assert_eq!(dead(&system), [((0, 1), DeadLetterReason::AgentNotFound)]);
        }
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

/// The generation wraps (a `u8` under loom): `a` is registered in slot 0 with
/// generation 0, then `a` is unregistered and slot 0 reused until the counter wraps
/// and `b` gets slot 0 with generation 0 again, while a stale sender of `a` sends.
/// `a`'s stale id equals `b`'s, yet it is not live for `a` (the pid check), and the
/// stale message is dead-lettered for `a`, never delivered to `b`.
#[test]
fn l7_generation_wrap() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::new(RouterConfig::default());
        let a = AgentPid::new();
        system.register_agent(a.clone()).unwrap();
        let id_a = agent_id(&system, &a).unwrap();
        let stale = system.sender(&a).unwrap();
        let t = token.clone();
        let producer = spawn(move || stale.send(tagged(&t, 0, 0)).is_ok());

        system.unregister_agent(&a).unwrap();
        // As if 255 registrations had come and gone through slot 0: the next one takes
        // the last generation, the one after wraps to 0.
        set_next_generation(&system, u32::from(u8::MAX));
        let c = AgentPid::new();
        system.register_agent(c.clone()).unwrap();
        system.unregister_agent(&c).unwrap();
        let b = AgentPid::new();
        system.register_agent(b.clone()).unwrap();
        let id_b = agent_id(&system, &b).unwrap();
        assert_eq!(id_a, id_b, "the wrap reissued a's (index, generation)");
        assert!(
            !is_live(&system, id_a, &a),
            "a stale id passed the pid check"
        );
        assert!(is_live(&system, id_b, &b));

        producer.join().unwrap();
        let mailbox_b = system.get_mailbox(&b).unwrap();
        assert!(
            mailbox_b.try_receive().unwrap().is_none(),
            "stale message reached b"
        );
        let dead = dead(&system);
        assert_eq!(dead, [((0, 0), DeadLetterReason::MailboxClosed)]);
        drop(mailbox_b);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}
