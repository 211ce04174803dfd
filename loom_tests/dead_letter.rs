//! Dead-letter models: a subscriber parked in `recv` wakes for a refusal recorded on
//! another thread and ends at shutdown (no lost wake-up between the store's push and
//! the subscriber's registration); a subscription dropped while a letter is recorded
//! loses nothing (the bounded store's ledger adds up, every token is dropped).

use loom::sync::Arc;
use terraphim_agent_messaging::{
    AgentPid, DeadLetter, DeadLetterKind, DeadLetterStats, DeadMessage, DeliveryConfig,
    DeliveryGuarantee, MailboxConfig, MessageSystem, MessagingError, RouterConfig, TimerDriver,
};

use crate::{assert_all_dropped, model, spawn, tag, tagged};

/// An at-most-once system on manual timers, mailboxes bounded at 1, keeping at most
/// `capacity` dead letters.
fn system(capacity: usize) -> MessageSystem {
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee: DeliveryGuarantee::AtMostOnce,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    };
    MessageSystem::builder(config)
        .timer_driver(TimerDriver::Manual)
        .mailbox_config(MailboxConfig {
            max_messages: 1,
            ..MailboxConfig::default()
        })
        .dead_letter_capacity(capacity)
        .build()
        .expect("valid configuration")
}

fn tag_of(letter: &DeadLetter) -> (u8, u8) {
    match &letter.message {
        DeadMessage::Message(m) => tag(m),
        DeadMessage::Envelope(_) => panic!("not an envelope"),
    }
}

#[track_caller]
fn assert_adds_up(stats: &DeadLetterStats) {
    assert_eq!(
        stats.recorded,
        stats.kept + stats.in_subscriptions + stats.taken + stats.dropped,
        "{stats:?}"
    );
}

/// A subscriber blocks in `recv` while another thread's send is refused: it receives
/// that letter, then the one the shutdown buries (the message left in the mailbox),
/// then `None`.
#[test]
fn dl1_parked_subscriber_wakes_and_ends() {
    model(|| {
        let token = Arc::new(());
        let system = system(4);
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).unwrap();
        system.send(&pid, tagged(&token, 0, 0)).unwrap();
        let mut subscription = system
            .subscribe_dead_letters(DeadLetterKind::ALL, 4)
            .unwrap();
        let subscriber = spawn(move || {
            let mut got = Vec::new();
            while let Some(letter) = subscription.recv() {
                got.push((tag_of(&letter), letter.reason.kind()));
            }
            got
        });
        let refused = system.send(&pid, tagged(&token, 0, 1));
        assert!(matches!(refused, Err(MessagingError::MailboxFull(_))));
        system.shutdown().unwrap();
        assert_eq!(
            subscriber.join().unwrap(),
            [
                ((0, 1), DeadLetterKind::MailboxFull),
                ((0, 0), DeadLetterKind::MailboxClosed),
            ]
        );
        assert_adds_up(&system.dead_letter_stats());
        assert!(system.dead_letters().is_empty());
        drop(system);
        assert_all_dropped(&token);
    });
}

/// A subscription holding a letter is dropped while another thread's send is refused
/// into a store that keeps one: each letter is kept or dropped-and-counted exactly
/// once, whichever order the two take the store's lock in.
#[test]
fn dl2_subscription_drop_races_a_refusal() {
    model(|| {
        let token = Arc::new(());
        let system = system(1);
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).unwrap();
        system.send(&pid, tagged(&token, 0, 0)).unwrap();
        let subscription = system
            .subscribe_dead_letters(DeadLetterKind::ALL, 1)
            .unwrap();
        assert!(system.send(&pid, tagged(&token, 0, 1)).is_err());
        let (s, p, t) = (system.clone(), pid.clone(), token.clone());
        let sender = spawn(move || {
            assert!(s.send(&p, tagged(&t, 0, 2)).is_err());
        });
        drop(subscription);
        sender.join().unwrap();

        let stats = system.dead_letter_stats();
        assert_adds_up(&stats);
        assert_eq!(
            (stats.recorded, stats.in_subscriptions),
            (2, 0),
            "{stats:?}"
        );
        assert_eq!((stats.kept, stats.dropped), (1, 1), "{stats:?}");
        let kept = system.dead_letters();
        assert_eq!(kept.len(), 1);
        // The survivor is whichever reached the store last.
        assert!(matches!(tag_of(&kept[0]), (0, 1) | (0, 2)));
        drop(kept);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}
