//! Delivery models L8–L9: an ack racing its ack timeout, a retry racing shutdown, a
//! call's reply racing its timeout on the wheel, and the exactly-once window.
//!
//! Every system here runs on a `ManualClock` with `TimerDriver::Manual`: a model thread
//! advances the clock and calls `run_due_timers`, so the timer firing is one of the
//! racing threads. Built messages carry the leak-check token; envelopes (the only
//! messages that can ask for an ack) carry JSON, so the ack models tally copies by id.

use std::time::Duration;

use loom::sync::Arc;
use serde_json::json;
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, DeadLetter, DeadLetterReason, DeadMessage, DeliveryConfig,
    DeliveryGuarantee, DeliveryOptions, DeliveryStats, MailboxConfig, ManualClock, MessageEnvelope,
    MessageId, MessageSystem, MessagingError, Payload, RouterConfig, TimerDriver,
};

use crate::{assert_all_dropped, model, spawn, tag, tagged, Tagged};

/// How long a `require_ack` message waits for its ack.
const ACK_TIMEOUT: Duration = Duration::from_millis(10);
/// Delay before a first retry.
const RETRY_DELAY: Duration = Duration::from_millis(1);
/// Far enough to make every timer of a model due.
const LONG: Duration = Duration::from_secs(1);

/// A system on a manual clock, driven by hand.
fn system(
    guarantee: DeliveryGuarantee,
    max_retries: u32,
    max_messages: usize,
) -> (MessageSystem, ManualClock) {
    let clock = ManualClock::new();
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee,
            max_retries,
            retry_delay: RETRY_DELAY,
            acknowledgment_timeout: ACK_TIMEOUT,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    };
    let mailbox = MailboxConfig {
        max_messages,
        ..MailboxConfig::default()
    };
    let system = MessageSystem::builder(config)
        .clock(std::sync::Arc::new(clock.clone()))
        .timer_driver(TimerDriver::Manual)
        .mailbox_config(mailbox)
        .build()
        .expect("valid configuration");
    (system, clock)
}

/// Asserts the ledger adds up: every accepted message is in exactly one bucket.
#[track_caller]
fn assert_ledger(stats: &DeliveryStats) {
    let settled = stats.delivered
        + stats.acknowledged
        + stats.failed
        + stats.expired
        + stats.duplicates
        + stats.pending
        + stats.in_transit;
    assert_eq!(stats.total_messages, settled, "ledger: {stats:?}");
}

/// `(id, reason)` of every dead letter.
fn dead_ids(system: &MessageSystem) -> Vec<(MessageId, DeadLetterReason)> {
    system
        .dead_letters()
        .into_iter()
        .map(|DeadLetter { id, reason, .. }| (id, reason))
        .collect()
}

/// `(tag, reason)` of every dead letter (built messages only).
fn dead_tags(system: &MessageSystem) -> Vec<((u8, u8), DeadLetterReason)> {
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

/// A `Tagged` payload holding a clone of `token`.
fn payload(token: &Arc<()>, sender: u8, seq: u8) -> Tagged {
    Tagged {
        sender,
        seq,
        _token: token.clone(),
    }
}

/// A `require_ack` envelope to `to`.
fn acked_envelope(to: &AgentPid) -> MessageEnvelope {
    let options = DeliveryOptions {
        require_ack: true,
        ..DeliveryOptions::default()
    };
    MessageEnvelope::new(to.clone(), "job".into(), json!(1), options)
}

/// Takes every message ready in `agent`'s mailbox, returning their ids.
fn drain_ids(system: &MessageSystem, agent: &AgentPid) -> Vec<MessageId> {
    let mailbox = system.get_mailbox(agent).expect("registered");
    std::iter::from_fn(|| mailbox.try_receive().expect("open"))
        .map(|m| m.id().clone())
        .collect()
}

// ===== L8: an ack racing its ack timeout =====

/// What [`ack_vs_timeout`] saw.
struct AckRace {
    system: MessageSystem,
    clock: ManualClock,
    agent: AgentPid,
    id: MessageId,
    /// The receiver's `acknowledge` succeeded.
    ack_ok: bool,
    /// Copies the receiver got (the first, plus any redelivery ready after the race).
    copies: usize,
}

/// A `require_ack` envelope sits in the agent's mailbox. Thread A receives it and
/// acknowledges; thread B moves the clock past the ack timeout and fires the timers.
fn ack_vs_timeout(guarantee: DeliveryGuarantee, max_retries: u32) -> AckRace {
    let (system, clock) = system(guarantee, max_retries, 0);
    let agent = AgentPid::new();
    system.register_agent(agent.clone()).unwrap();
    let envelope = acked_envelope(&agent);
    let id = envelope.id.clone();
    system.send_message(envelope).unwrap();

    let (s, a) = (system.clone(), agent.clone());
    let receiver = spawn(move || {
        let mailbox = s.get_mailbox(&a).unwrap();
        let first = mailbox.try_receive().unwrap().expect("delivered before");
        match s.acknowledge(first.id()) {
            Ok(()) => true,
            Err(MessagingError::UnknownMessage(_)) => false,
            Err(e) => panic!("unexpected ack error: {e}"),
        }
    });
    let (s, c) = (system.clone(), clock.clone());
    let timer = spawn(move || {
        c.advance(ACK_TIMEOUT + Duration::from_millis(1));
        s.run_due_timers();
    });
    let ack_ok = receiver.join().unwrap();
    timer.join().unwrap();

    let more = drain_ids(&system, &agent);
    assert!(more.iter().all(|m| *m == id), "only copies of the envelope");
    AckRace {
        system,
        clock,
        agent,
        id,
        ack_ok,
        copies: 1 + more.len(),
    }
}

/// Fires every timer still pending, then asserts nothing is left on the wheel.
fn settle(race: &AckRace) {
    race.clock.advance(LONG);
    race.system.run_due_timers();
    race.clock.advance(LONG);
    assert!(race.system.run_due_timers().is_none(), "a timer is left");
}

/// With one redelivery allowed and the timer firing once, the timer never gives up:
/// whichever way the race goes, the message is not lost and not dead-lettered.
/// `strict`: also require the receiver's ack to succeed (see the ignored model).
fn redelivery_model(strict: bool) {
    let race = ack_vs_timeout(DeliveryGuarantee::AtLeastOnce, 1);
    assert!(
        race.copies <= 2,
        "at most 1 + 1 redelivery: {}",
        race.copies
    );
    let stats = race.system.delivery_stats();
    assert_ledger(&stats);
    assert_eq!(stats.failed, 0, "no dead letter: {stats:?}");
    assert!(dead_ids(&race.system).is_empty());
    if strict {
        assert!(
            race.ack_ok,
            "the receiver's ack of an awaited message was lost"
        );
    }
    if race.ack_ok {
        assert_eq!((stats.acknowledged, stats.in_transit), (1, 0), "{stats:?}");
    } else {
        // The ack lost the race: the timer had taken the message to redeliver it. The
        // redelivered copy is awaited and its ack settles the message.
        assert_eq!((stats.acknowledged, stats.in_transit), (0, 1), "{stats:?}");
        assert_eq!(race.copies, 2, "a lost ack means a redelivery");
        race.system.acknowledge(&race.id).unwrap();
    }
    settle(&race);
    let stats = race.system.delivery_stats();
    assert_ledger(&stats);
    assert_eq!((stats.acknowledged, stats.in_transit), (1, 0), "{stats:?}");
    assert!(drain_ids(&race.system, &race.agent).is_empty());
    assert!(dead_ids(&race.system).is_empty());
    race.system.shutdown().unwrap();
}

/// L8: an ack races its ack timeout under `AtLeastOnce` with one redelivery: the
/// receiver sees at most 2 copies, nothing is dead-lettered, and the ledger ends with
/// one acknowledged message and nothing in transit.
#[test]
fn ack_races_timeout_redelivery() {
    model(|| redelivery_model(false));
}

/// As above, requiring the receiver's ack to succeed (it acknowledges a copy it holds
/// while the message awaits its ack, and the timer never gives up here).
#[test]
fn ack_races_timeout_redelivery_ack_lost() {
    model(|| redelivery_model(true));
}

/// L8: an ack races its ack timeout under `AtLeastOnce` with no redelivery
/// (`max_retries: 0`): either the ack wins (acknowledged, no dead letter) or the timer
/// gives up first (`NotAcknowledged` dead letter, the ack gets `UnknownMessage`);
/// never both, never neither, and no second copy.
#[test]
fn ack_races_timeout_give_up() {
    model(|| {
        let race = ack_vs_timeout(DeliveryGuarantee::AtLeastOnce, 0);
        assert_eq!(race.copies, 1, "no redelivery with max_retries 0");
        let stats = race.system.delivery_stats();
        assert_ledger(&stats);
        let dead = dead_ids(&race.system);
        if race.ack_ok {
            assert!(dead.is_empty(), "acknowledged and dead-lettered: {dead:?}");
            assert_eq!((stats.acknowledged, stats.failed), (1, 0), "{stats:?}");
        } else {
            assert_eq!(dead, [(race.id.clone(), DeadLetterReason::NotAcknowledged)]);
            assert_eq!((stats.acknowledged, stats.failed), (0, 1), "{stats:?}");
        }
        assert_eq!((stats.pending, stats.in_transit), (0, 0), "{stats:?}");
        settle(&race);
        race.system.shutdown().unwrap();
    });
}

/// `ExactlyOnce` with one redelivery allowed: the timer re-arms the ack wait without
/// pushing a second copy. `strict`: also require the receiver's ack to succeed.
fn exactly_once_model(strict: bool) {
    let race = ack_vs_timeout(DeliveryGuarantee::ExactlyOnce, 1);
    assert_eq!(race.copies, 1, "exactly-once: never a second copy");
    let stats = race.system.delivery_stats();
    assert_ledger(&stats);
    assert_eq!(stats.failed, 0, "{stats:?}");
    if strict {
        assert!(race.ack_ok, "the receiver's only ack was lost");
    }
    if race.ack_ok {
        assert_eq!((stats.acknowledged, stats.in_transit), (1, 0), "{stats:?}");
        settle(&race);
        assert!(dead_ids(&race.system).is_empty());
    } else {
        // The ack lost the race and no copy will come to ack again: the message is
        // given up on as `NotAcknowledged` once its redelivery budget is spent.
        assert_eq!((stats.acknowledged, stats.in_transit), (0, 1), "{stats:?}");
        settle(&race);
        let dead = dead_ids(&race.system);
        assert_eq!(dead, [(race.id.clone(), DeadLetterReason::NotAcknowledged)]);
    }
    assert!(drain_ids(&race.system, &race.agent).is_empty(), "no copy");
    let stats = race.system.delivery_stats();
    assert_ledger(&stats);
    assert_eq!((stats.pending, stats.in_transit), (0, 0), "{stats:?}");
    race.system.shutdown().unwrap();
}

/// L8: an ack races its ack timeout under `ExactlyOnce`: the receiver never sees a
/// second copy, and the ledger stays consistent.
#[test]
fn exactly_once_ack_races_timeout() {
    model(|| exactly_once_model(false));
}

/// As above, requiring the ack to succeed: under `ExactlyOnce` a lost ack is not
/// repaired by a redelivery, so the message is dead-lettered `NotAcknowledged` although
/// its receiver acknowledged it.
#[test]
fn exactly_once_ack_races_timeout_ack_lost() {
    model(|| exactly_once_model(true));
}

// ===== L8: a retry racing shutdown =====

/// L8: a message waits for a retry (capacity-1 mailbox, full). Thread A takes the
/// filler, moves the clock and fires the retry while the main thread shuts the system
/// down. Each message ends exactly once: received, or dead-lettered (`Shutdown` if the
/// drain took it first; `AgentNotFound`/`MailboxClosed` if the retry fired and found
/// the agent gone); nothing stays pending.
#[test]
fn retry_races_shutdown() {
    model(|| {
        let token = Arc::new(());
        let (system, clock) = system(DeliveryGuarantee::AtLeastOnce, 3, 1);
        let agent = AgentPid::new();
        system.register_agent(agent.clone()).unwrap();
        let mailbox = system.get_mailbox(&agent).unwrap();
        system.send(&agent, tagged(&token, 0, 0)).unwrap();
        system.send(&agent, tagged(&token, 0, 1)).unwrap(); // full: waits for a retry
        assert_eq!(system.delivery_stats().pending, 1);

        let (s, c, m) = (system.clone(), clock.clone(), mailbox.clone());
        let driver = spawn(move || {
            let filler = m.try_receive().unwrap().expect("queued before");
            assert_eq!(tag(&filler), (0, 0));
            c.advance(LONG);
            s.run_due_timers();
        });
        system.shutdown().unwrap();
        driver.join().unwrap();

        let mut received = Vec::new();
        loop {
            match mailbox.receive() {
                Ok(m) => received.push(tag(&m)),
                Err(MessagingError::ChannelClosed(_)) => break,
                Err(e) => panic!("unexpected receive error: {e}"),
            }
        }
        let dead = dead_tags(&system);
        match (received.as_slice(), dead.as_slice()) {
            ([(0, 1)], []) => {}
            ([], [((0, 1), reason)]) => assert!(
                matches!(
                    reason,
                    DeadLetterReason::Shutdown
                        | DeadLetterReason::AgentNotFound
                        | DeadLetterReason::MailboxClosed
                ),
                "unexpected reason {reason:?}"
            ),
            _ => panic!("not exactly once: received {received:?}, dead {dead:?}"),
        }
        let stats = system.delivery_stats();
        assert_ledger(&stats);
        assert_eq!((stats.pending, stats.in_transit), (0, 0), "{stats:?}");
        assert_eq!(stats.delivered + stats.failed, 2, "{stats:?}");
        drop(mailbox);
        drop(system);
        assert_all_dropped(&token);
    });
}

/// L8: ack vs ack timeout vs shutdown. A `require_ack` envelope (one redelivery
/// allowed) is in the mailbox; thread A receives and acknowledges it, thread B fires
/// its ack timeout, the main thread shuts down. The message is settled exactly once:
/// acknowledged, or dead-lettered (the shutdown's drain, or a redelivery that found
/// the system gone); never both, nothing left in transit, at most 2 copies seen.
#[test]
fn ack_races_timeout_and_shutdown() {
    model(|| {
        let (system, clock) = system(DeliveryGuarantee::AtLeastOnce, 1, 0);
        let agent = AgentPid::new();
        system.register_agent(agent.clone()).unwrap();
        let mailbox = system.get_mailbox(&agent).unwrap();
        let envelope = acked_envelope(&agent);
        let id = envelope.id.clone();
        system.send_message(envelope).unwrap();

        let (s, m) = (system.clone(), mailbox.clone());
        let receiver = spawn(move || {
            let first = m.try_receive().unwrap().expect("delivered before");
            s.acknowledge(first.id()).is_ok()
        });
        let (s, c) = (system.clone(), clock.clone());
        let timer = spawn(move || {
            c.advance(ACK_TIMEOUT + Duration::from_millis(1));
            s.run_due_timers();
        });
        system.shutdown().unwrap();
        let ack_ok = receiver.join().unwrap();
        timer.join().unwrap();

        let mut copies = 1;
        loop {
            match mailbox.receive() {
                Ok(m) => {
                    assert_eq!(m.id(), &id);
                    copies += 1;
                }
                Err(MessagingError::ChannelClosed(_)) => break,
                Err(e) => panic!("unexpected receive error: {e}"),
            }
        }
        assert!(copies <= 2, "at most 1 + 1 redelivery: {copies}");
        let dead = dead_ids(&system);
        assert!(dead.iter().all(|(d, _)| *d == id));
        assert_eq!(
            usize::from(ack_ok) + dead.len(),
            1,
            "acked {ack_ok}, dead {dead:?}"
        );
        if let [(_, reason)] = dead.as_slice() {
            assert!(
                matches!(
                    reason,
                    DeadLetterReason::Shutdown
                        | DeadLetterReason::AgentNotFound
                        | DeadLetterReason::MailboxClosed
                ),
                "unexpected reason {reason:?}"
            );
        }
        let stats = system.delivery_stats();
        assert_ledger(&stats);
        assert_eq!((stats.pending, stats.in_transit), (0, 0), "{stats:?}");
        assert_eq!(
            (stats.acknowledged, stats.failed),
            (u64::from(ack_ok), u64::from(!ack_ok)),
            "{stats:?}"
        );
        assert!(system.run_due_timers().is_none(), "a timer is left");
    });
}

// ===== L9: a call's reply racing its timeout on the wheel =====

/// L9: `call_async` is awaited on the main thread while thread R replies and thread T
/// moves the clock past the timeout and fires the wheel: the caller sees exactly one
/// outcome, a reply it did not get is handed back to R, and no timer is left.
#[test]
fn call_reply_races_wheel_timeout() {
    model(|| {
        let token = Arc::new(());
        let (system, clock) = system(DeliveryGuarantee::AtMostOnce, 0, 0);
        let callee = AgentPid::new();
        system.register_agent(callee.clone()).unwrap();
        let timeout = Duration::from_millis(10);
        let request = payload(&token, 0, 0);
        let call = system.call_async(AgentPid::new(), &callee, request, timeout);

        let (mailbox, t) = (system.get_mailbox(&callee).unwrap(), token.clone());
        let replier = spawn(move || {
            let message = mailbox.try_receive().unwrap().expect("the call is queued");
            let AgentMessage::Call { reply_to, .. } = message else {
                panic!("not a call")
            };
            let reply = Payload::new(payload(&t, 1, 0));
            match reply_to.send(reply) {
                Ok(()) => true,
                Err(back) => {
                    assert!(back.downcast_ref::<Tagged>().is_some(), "handed back");
                    false
                }
            }
        });
        let (s, c) = (system.clone(), clock.clone());
        let timer = spawn(move || {
            c.advance(timeout + Duration::from_millis(1));
            s.run_due_timers();
        });
        let outcome = crate::block_on(call);
        let sent = replier.join().unwrap();
        timer.join().unwrap();
        match outcome {
            Ok(reply) => {
                assert!(sent, "a reply the caller got was sent Ok");
                let reply = reply.downcast::<Tagged>().expect("the reply");
                assert_eq!((reply.sender, reply.seq), (1, 0));
            }
            Err(MessagingError::MessageTimeout(to)) => {
                assert_eq!(to, callee);
                assert!(!sent, "a timed-out caller's reply is handed back");
            }
            Err(e) => panic!("unexpected call error: {e}"),
        }
        assert!(
            system.run_due_timers().is_none(),
            "the call's timer is left"
        );
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

// ===== the exactly-once window =====

/// A cast with a given id.
fn cast_with_id(id: &MessageId, token: &Arc<()>, sender: u8) -> AgentMessage {
    AgentMessage::Cast {
        id: id.clone(),
        from: AgentPid::nil(),
        payload: Payload::new(payload(token, sender, 0)),
        message_type: None,
    }
}

/// Two threads send a message with the same id under `ExactlyOnce`: the agent gets it
/// once, the other copy is counted as a duplicate (and dropped).
#[test]
fn dedupe_concurrent_same_id() {
    model(|| {
        let token = Arc::new(());
        let (system, _clock) = system(DeliveryGuarantee::ExactlyOnce, 3, 0);
        let agent = AgentPid::new();
        system.register_agent(agent.clone()).unwrap();
        let id = MessageId::new();
        let senders: Vec<_> = (1..=2u8)
            .map(|p| {
                let (s, a, id, t) = (system.clone(), agent.clone(), id.clone(), token.clone());
                spawn(move || s.send(&a, cast_with_id(&id, &t, p)).unwrap())
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(drain_ids(&system, &agent), [id]);
        let stats = system.delivery_stats();
        assert_ledger(&stats);
        assert_eq!((stats.delivered, stats.duplicates), (1, 1), "{stats:?}");
        assert!(dead_ids(&system).is_empty());
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

/// Two threads send the same id to a full capacity-1 mailbox while the main thread
/// takes the filler and fires the retries: the id is delivered exactly once, never
/// twice, and nothing is dead-lettered or left pending.
#[test]
fn dedupe_same_id_with_retry() {
    model(|| {
        let token = Arc::new(());
        let (system, clock) = system(DeliveryGuarantee::ExactlyOnce, 3, 1);
        let agent = AgentPid::new();
        system.register_agent(agent.clone()).unwrap();
        let mailbox = system.get_mailbox(&agent).unwrap();
        system.send(&agent, tagged(&token, 0, 0)).unwrap();
        let id = MessageId::new();
        let senders: Vec<_> = (1..=2u8)
            .map(|p| {
                let (s, a, id, t) = (system.clone(), agent.clone(), id.clone(), token.clone());
                spawn(move || s.send(&a, cast_with_id(&id, &t, p)).unwrap())
            })
            .collect();
        let filler = mailbox.try_receive().unwrap().expect("queued before");
        assert_eq!(tag(&filler), (0, 0));
        drop(filler);
        clock.advance(LONG);
        system.run_due_timers();
        for s in senders {
            s.join().unwrap();
        }
        // Let every retry run, taking what arrives in between.
        let mut copies = 0;
        for _ in 0..4 {
            while let Some(m) = mailbox.try_receive().unwrap() {
                assert_eq!(m.id(), &id);
                copies += 1;
            }
            clock.advance(LONG);
            system.run_due_timers();
        }
        assert!(mailbox.try_receive().unwrap().is_none());
        assert_eq!(copies, 1, "the id is delivered exactly once");
        let stats = system.delivery_stats();
        assert_ledger(&stats);
        assert_eq!((stats.delivered, stats.duplicates), (2, 1), "{stats:?}");
        assert_eq!((stats.pending, stats.failed), (0, 0), "{stats:?}");
        assert!(dead_ids(&system).is_empty());
        drop(mailbox);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}
