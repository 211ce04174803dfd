//! The dead-letter store: bounded (the newest `dead_letter_capacity` letters are kept,
//! older ones dropped and counted by reason), drained whole or by reason, subscribed to
//! by reason, reachable from a standalone mailbox, and its ledger adds up:
//! `recorded = kept + in_subscriptions + taken + dropped`.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadLetter, DeadLetterKind, DeadLetterReason,
    DeadLetterStats, DeadMessage, DeliveryGuarantee, MailboxConfig, MessageSystem, MessagingError,
    RouterConfig, DEFAULT_DEAD_LETTER_CAPACITY,
};

mod common;
use common::sync::{manual_builder, register, within};

// ===== helpers =====

fn at_most_once() -> RouterConfig {
    let mut config = RouterConfig::default();
    config.delivery_config.guarantee = DeliveryGuarantee::AtMostOnce;
    config
}

/// An at-most-once system on a manual clock, mailboxes bounded at 1, keeping at most
/// `capacity` dead letters.
fn system_keeping(capacity: usize) -> MessageSystem {
    let (builder, _clock) = manual_builder(at_most_once(), 1);
    builder.dead_letter_capacity(capacity).build().unwrap()
}

/// A registered agent whose mailbox (bounded at 1) is already full.
fn full_agent(system: &MessageSystem) -> AgentPid {
    let pid = register(system);
    system.send(&pid, cast(u64::MAX)).unwrap();
    pid
}

fn cast(n: u64) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), n)
}

/// Sends `tags` to `to`, each refused (`MailboxFull`).
fn refuse(system: &MessageSystem, to: &AgentPid, tags: impl IntoIterator<Item = u64>) {
    for n in tags {
        match system.send(to, cast(n)) {
            Err(MessagingError::MailboxFull(_)) => {}
            other => panic!("expected MailboxFull, got {other:?}"),
        }
    }
}

fn tag(letter: &DeadLetter) -> u64 {
    match &letter.message {
        DeadMessage::Message(m) => *m.payload::<u64>().unwrap(),
        DeadMessage::Envelope(e) => e.payload.as_u64().unwrap(),
    }
}

fn tags(letters: &[DeadLetter]) -> Vec<u64> {
    letters.iter().map(tag).collect()
}

/// `recorded = kept + in_subscriptions + taken + dropped`, and the per-reason drops sum
/// to the total.
fn assert_adds_up(stats: &DeadLetterStats) {
    assert_eq!(
        stats.recorded,
        stats.kept + stats.in_subscriptions + stats.taken + stats.dropped,
        "{stats:?}"
    );
    assert_eq!(
        stats.dropped_by_reason.values().sum::<u64>(),
        stats.dropped,
        "{stats:?}"
    );
}

// ===== the bound =====

#[test]
fn default_capacity() {
    assert_eq!(DEFAULT_DEAD_LETTER_CAPACITY, 10_000);
    let system = MessageSystem::new(RouterConfig::default());
    assert_eq!(
        system.dead_letter_stats().capacity,
        DEFAULT_DEAD_LETTER_CAPACITY
    );
    assert_eq!(
        system.dead_letter_stats(),
        DeadLetterStats {
            capacity: DEFAULT_DEAD_LETTER_CAPACITY,
            ..DeadLetterStats::default()
        }
    );
    system.shutdown().unwrap();
}

#[test]
fn capacity_keeps_the_newest() {
    let system = system_keeping(3);
    let pid = full_agent(&system);
    refuse(&system, &pid, 1..=10);

    let stats = system.dead_letter_stats();
    assert_eq!(stats.capacity, 3);
    assert_eq!(stats.recorded, 10);
    assert_eq!(stats.kept, 3);
    assert_eq!(stats.dropped, 7);
    assert_eq!(
        stats.dropped_by_reason.get(&DeadLetterKind::MailboxFull),
        Some(&7)
    );
    assert_adds_up(&stats);
    assert_eq!(system.dead_letter_count(), 10, "every letter is counted");

    // The oldest were dropped: the newest three remain, oldest first.
    let dead = system.dead_letters();
    assert_eq!(tags(&dead), [8, 9, 10]);
    assert!(dead
        .iter()
        .all(|d| d.reason == DeadLetterReason::MailboxFull));

    let stats = system.dead_letter_stats();
    assert_eq!((stats.kept, stats.taken, stats.dropped), (0, 3, 7));
    assert_adds_up(&stats);
    // Room again after the drain: the next letters are kept.
    refuse(&system, &pid, 11..=12);
    assert_eq!(tags(&system.dead_letters()), [11, 12]);
    system.shutdown().unwrap();
}

#[test]
fn zero_capacity_counts_only() {
    let system = system_keeping(0);
    let pid = full_agent(&system);
    refuse(&system, &pid, 1..=5);
    assert!(system.dead_letters().is_empty(), "nothing is kept");
    let stats = system.dead_letter_stats();
    assert_eq!((stats.recorded, stats.kept, stats.dropped), (5, 0, 5));
    assert_eq!(
        stats.dropped_by_reason.get(&DeadLetterKind::MailboxFull),
        Some(&5)
    );
    assert_adds_up(&stats);
    assert_eq!(system.dead_letter_count(), 5);
    // The delivery ledger is unaffected: the letters are counted failed.
    let ledger = system.delivery_stats();
    assert_eq!((ledger.delivered, ledger.failed), (1, 5));
    system.shutdown().unwrap();
}

#[test]
fn drops_are_counted_by_the_dropped_letters_reason() {
    let system = system_keeping(2);
    let full = full_agent(&system);
    let unknown = AgentPid::new();
    // Oldest first: 2 not found, 1 full, 1 closed (queued when its agent went away,
    // with no receiver left), then 2 full, which push out all but the last two.
    for n in 1..=2 {
        let err = system.send(&unknown, cast(n)).unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err:?}");
    }
    refuse(&system, &full, [3]);
    let closing = register(&system);
    system.send(&closing, cast(4)).unwrap();
    system.unregister_agent(&closing).unwrap();
    refuse(&system, &full, [5, 6]);

    let stats = system.dead_letter_stats();
    assert_eq!((stats.recorded, stats.kept, stats.dropped), (6, 2, 4));
    let by_reason: Vec<(DeadLetterKind, u64)> = stats
        .dropped_by_reason
        .iter()
        .map(|(k, n)| (*k, *n))
        .collect();
    assert_eq!(
        by_reason,
        [
            (DeadLetterKind::MailboxFull, 1),
            (DeadLetterKind::MailboxClosed, 1),
            (DeadLetterKind::AgentNotFound, 2),
        ]
    );
    assert_adds_up(&stats);
    assert_eq!(tags(&system.dead_letters()), [5, 6]);
    system.shutdown().unwrap();
}

#[test]
fn reason_kinds() {
    let cases = [
        (DeadLetterReason::MailboxFull, DeadLetterKind::MailboxFull),
        (
            DeadLetterReason::MailboxClosed,
            DeadLetterKind::MailboxClosed,
        ),
        (
            DeadLetterReason::AgentNotFound,
            DeadLetterKind::AgentNotFound,
        ),
        (
            DeadLetterReason::RetriesExhausted("x".into()),
            DeadLetterKind::RetriesExhausted,
        ),
        (
            DeadLetterReason::NotAcknowledged,
            DeadLetterKind::NotAcknowledged,
        ),
        (DeadLetterReason::Expired, DeadLetterKind::Expired),
        (DeadLetterReason::CircuitOpen, DeadLetterKind::CircuitOpen),
        (
            DeadLetterReason::Overloaded("y".into()),
            DeadLetterKind::Overloaded,
        ),
        (DeadLetterReason::Shutdown, DeadLetterKind::Shutdown),
        (
            DeadLetterReason::AgentStopped("panicked: boom".into()),
            DeadLetterKind::AgentStopped,
        ),
        (
            DeadLetterReason::Transport("bad frame".into()),
            DeadLetterKind::Transport,
        ),
    ];
    for (reason, kind) in &cases {
        assert_eq!(reason.kind(), *kind, "{reason}");
        assert!(
            reason.to_string().starts_with(&kind.to_string()),
            "{reason} / {kind}"
        );
    }
    let all: Vec<DeadLetterKind> = cases.iter().map(|(_, k)| *k).collect();
    assert_eq!(DeadLetterKind::ALL, all.as_slice());
}

/// At-least-once letters (retries exhausted) overflow the same way, and the delivery
/// ledger and the store's ledger agree.
#[test]
fn retried_letters_overflow_too() {
    let mut config = RouterConfig::default();
    config.delivery_config.max_retries = 0;
    let (builder, _clock) = manual_builder(config, 1);
    let system = builder.dead_letter_capacity(1).build().unwrap();
    let pid = full_agent(&system);
    for n in 1..=3 {
        // Accepted (`Ok`), then given up on at once (`max_retries: 0`).
        system.send(&pid, cast(n)).unwrap();
    }
    let stats = system.dead_letter_stats();
    assert_eq!((stats.recorded, stats.kept, stats.dropped), (3, 1, 2));
    assert_eq!(
        stats
            .dropped_by_reason
            .get(&DeadLetterKind::RetriesExhausted),
        Some(&2)
    );
    assert_adds_up(&stats);
    let ledger = system.delivery_stats();
    assert_eq!(ledger.failed, stats.recorded);
    assert_eq!(ledger.total_messages, ledger.delivered + ledger.failed);
    let dead = system.dead_letters();
    assert_eq!(tags(&dead), [3]);
    assert!(matches!(
        dead[0].reason,
        DeadLetterReason::RetriesExhausted(_)
    ));
    system.shutdown().unwrap();
}

#[test]
fn huge_capacity_is_unbounded_without_preallocating() {
    let system = system_keeping(usize::MAX);
    let pid = full_agent(&system);
    refuse(&system, &pid, 0..1_000);
    let stats = system.dead_letter_stats();
    assert_eq!((stats.kept, stats.dropped), (1_000, 0));
    assert_eq!(system.dead_letters().len(), 1_000);
    system.shutdown().unwrap();
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn tokio_builder_dead_letter_capacity() {
    use terraphim_agent_messaging::tokio;
    let (builder, _clock) = common::tokio::clocked_builder(at_most_once(), 1);
    let system = builder
        .timer_driver(tokio::TimerDriver::Manual)
        .dead_letter_capacity(2)
        .build()
        .unwrap();
    let (pid, _mailbox) = common::tokio::registered(&system).await;
    system.send(&pid, cast(0)).await.unwrap();
    for n in 1..=5 {
        assert!(system.send(&pid, cast(n)).await.is_err());
    }
    let stats = system.dead_letter_stats();
    assert_eq!((stats.capacity, stats.kept, stats.dropped), (2, 2, 3));
    assert_adds_up(&stats);
    assert_eq!(tags(&system.dead_letters()), [4, 5]);
    system.shutdown().await.unwrap();
}

// ===== by reason =====

#[test]
fn dead_letters_of_takes_one_reason() {
    let system = system_keeping(10);
    let full = full_agent(&system);
    refuse(&system, &full, [1]);
    assert!(system.send(&AgentPid::new(), cast(2)).is_err());
    refuse(&system, &full, [3]);

    assert_eq!(
        tags(&system.dead_letters_of(DeadLetterKind::MailboxFull)),
        [1, 3]
    );
    assert!(system.dead_letters_of(DeadLetterKind::Expired).is_empty());
    let stats = system.dead_letter_stats();
    assert_eq!((stats.kept, stats.taken), (1, 2));
    assert_adds_up(&stats);
    let rest = system.dead_letters();
    assert_eq!(tags(&rest), [2]);
    assert_eq!(rest[0].reason, DeadLetterReason::AgentNotFound);
    system.shutdown().unwrap();
}

// ===== subscriptions =====

#[test]
fn subscription_takes_the_reasons_it_asked_for() {
    let system = system_keeping(10);
    let full = full_agent(&system);
    let mut subscription = system
        .subscribe_dead_letters(&[DeadLetterKind::MailboxFull], 2)
        .unwrap();
    assert!(subscription.try_recv().is_none());
    // 1 and 2 fill the subscription; 3 finds it full and goes to the store, as does
    // the `AgentNotFound` letter it did not ask for.
    refuse(&system, &full, [1, 2, 3]);
    assert!(system.send(&AgentPid::new(), cast(4)).is_err());

    let stats = system.dead_letter_stats();
    assert_eq!(
        (stats.recorded, stats.in_subscriptions, stats.kept),
        (4, 2, 2)
    );
    assert_adds_up(&stats);
    assert_eq!(subscription.overflowed(), 1);
    assert_eq!(subscription.try_recv().map(|l| tag(&l)), Some(1));
    assert_eq!(
        subscription.recv_timeout(Duration::ZERO).map(|l| tag(&l)),
        Some(2)
    );
    assert!(subscription.try_recv().is_none());
    assert!(subscription
        .recv_timeout(Duration::from_millis(1))
        .is_none());

    let stats = system.dead_letter_stats();
    assert_eq!((stats.in_subscriptions, stats.taken, stats.kept), (0, 2, 2));
    assert_adds_up(&stats);
    assert_eq!(tags(&system.dead_letters()), [3, 4]);
    system.shutdown().unwrap();
}

#[test]
fn subscriptions_share_by_reason_and_room() {
    let system = system_keeping(10);
    let full = full_agent(&system);
    let mut only_full = system
        .subscribe_dead_letters(&[DeadLetterKind::MailboxFull], 1)
        .unwrap();
    let mut everything = system
        .subscribe_dead_letters(DeadLetterKind::ALL, 10)
        .unwrap();
    refuse(&system, &full, [1, 2]);
    assert!(system.send(&AgentPid::new(), cast(3)).is_err());
    // Each letter goes to one subscriber: the first that asked for it and has room.
    assert_eq!(only_full.try_recv().map(|l| tag(&l)), Some(1));
    assert!(only_full.try_recv().is_none());
    assert_eq!(only_full.overflowed(), 1);
    let rest: Vec<u64> = std::iter::from_fn(|| everything.try_recv())
        .map(|l| tag(&l))
        .collect();
    assert_eq!(rest, [2, 3]);
    assert_eq!(everything.overflowed(), 0);
    assert!(system.dead_letters().is_empty());
    system.shutdown().unwrap();
}

#[test]
fn blocked_subscriber_wakes_and_ends_at_shutdown() {
    within(10, || {
        let system = system_keeping(10);
        let full = full_agent(&system);
        let subscription = system
            .subscribe_dead_letters(DeadLetterKind::ALL, 16)
            .unwrap();
        let (got_one, next) = mpsc::channel();
        let subscriber = thread::spawn(move || {
            let mut got = Vec::new();
            // Blocks between letters; ends once the system is shut down and the
            // subscription drained.
            for letter in subscription {
                got.push((tag(&letter), letter.reason.kind()));
                got_one.send(()).unwrap();
            }
            got
        });
        refuse(&system, &full, [1]);
        next.recv().unwrap();
        refuse(&system, &full, [2]);
        next.recv().unwrap();
        // The shutdown buries the message still queued for `full` (nobody holds its
        // mailbox) before it ends the subscription.
        system.shutdown().unwrap();
        assert_eq!(
            subscriber.join().unwrap(),
            [
                (1, DeadLetterKind::MailboxFull),
                (2, DeadLetterKind::MailboxFull),
                (u64::MAX, DeadLetterKind::MailboxClosed),
            ]
        );
        assert!(system.dead_letters().is_empty());
        assert_adds_up(&system.dead_letter_stats());
    });
}

#[test]
fn a_dropped_subscription_gives_its_letters_back() {
    let system = system_keeping(2);
    let full = full_agent(&system);
    let subscription = system
        .subscribe_dead_letters(DeadLetterKind::ALL, 8)
        .unwrap();
    refuse(&system, &full, [1, 2, 3]);
    assert_eq!(system.dead_letter_stats().in_subscriptions, 3);
    drop(subscription);
    // Back in the store, which keeps its bound: the oldest is dropped and counted.
    let stats = system.dead_letter_stats();
    assert_eq!(
        (stats.in_subscriptions, stats.kept, stats.dropped),
        (0, 2, 1)
    );
    assert_adds_up(&stats);
    refuse(&system, &full, [4]);
    assert_eq!(tags(&system.dead_letters()), [3, 4]);
    system.shutdown().unwrap();
}

#[test]
fn subscription_at_capacity_zero() {
    // A store that keeps nothing still hands letters to its subscribers.
    let system = system_keeping(0);
    let full = full_agent(&system);
    let mut subscription = system
        .subscribe_dead_letters(DeadLetterKind::ALL, 1)
        .unwrap();
    refuse(&system, &full, [1, 2]);
    assert_eq!(subscription.try_recv().map(|l| tag(&l)), Some(1));
    let stats = system.dead_letter_stats();
    assert_eq!(
        (stats.recorded, stats.taken, stats.kept, stats.dropped),
        (2, 1, 0, 1)
    );
    assert_adds_up(&stats);
    system.shutdown().unwrap();
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn tokio_subscription_awaits_letters() {
    use terraphim_agent_messaging::tokio;
    let (system, _clock) = common::tokio::manual_system(at_most_once(), 1);
    let (pid, _mailbox) = common::tokio::registered(&system).await;
    system.send(&pid, cast(0)).await.unwrap();
    let mut subscription: tokio::DeadLetterSubscription = system
        .subscribe_dead_letters(tokio::DeadLetterKind::ALL, 4)
        .unwrap();
    let waiter = ::tokio::spawn(async move {
        let letter = subscription.recv_async().await;
        (letter.map(|l| tag(&l)), subscription)
    });
    // Let the waiter register before the letter arrives.
    ::tokio::task::yield_now().await;
    assert!(system.send(&pid, cast(1)).await.is_err());
    let (got, mut subscription) = common::tokio::within(10, waiter).await.unwrap();
    assert_eq!(got, Some(1));
    system.shutdown().await.unwrap();
    // Ended: `_mailbox` still holds the queued message, so nothing more is buried.
    assert!(subscription.recv_async().await.is_none());
    assert!(subscription.is_closed());
}

// ===== mailboxes =====

fn bounded(max_messages: usize) -> MailboxConfig {
    MailboxConfig {
        max_messages,
        ..MailboxConfig::default()
    }
}

#[test]
fn a_standalone_mailbox_reaches_its_dead_letters() {
    let mailbox = AgentMailbox::new(AgentPid::new(), bounded(1));
    let sender = mailbox.sender();
    mailbox.send(cast(0)).unwrap();
    assert!(matches!(
        mailbox.send(cast(1)),
        Err(MessagingError::MailboxFull(_))
    ));
    assert!(sender.send(cast(2)).is_err());

    let dead = mailbox.dead_letters();
    assert_eq!(tags(&dead), [1, 2]);
    assert!(dead
        .iter()
        .all(|d| d.reason == DeadLetterReason::MailboxFull && &d.to == mailbox.agent_id()));
    assert!(mailbox.dead_letters().is_empty(), "drained");

    // Closed: the queued message stays for the receiver; later sends are dead letters.
    mailbox.close();
    assert!(matches!(
        sender.send(cast(3)),
        Err(MessagingError::ChannelClosed(_))
    ));
    let dead = mailbox.dead_letters();
    assert_eq!(tags(&dead), [3]);
    assert_eq!(dead[0].reason, DeadLetterReason::MailboxClosed);
    assert_eq!(mailbox.receive().unwrap().payload::<u64>(), Some(&0));

    let stats = mailbox.dead_letter_stats();
    assert_eq!((stats.recorded, stats.taken), (3, 3));
    assert_adds_up(&stats);
}

#[test]
fn a_standalone_mailbox_keeps_the_default_bound() {
    let mailbox = AgentMailbox::new(AgentPid::new(), bounded(1));
    mailbox.send(cast(0)).unwrap();
    let refused = DEFAULT_DEAD_LETTER_CAPACITY as u64 + 5;
    for n in 1..=refused {
        assert!(mailbox.send(cast(n)).is_err());
    }
    let stats = mailbox.dead_letter_stats();
    assert_eq!(
        (stats.capacity, stats.kept, stats.dropped),
        (
            DEFAULT_DEAD_LETTER_CAPACITY,
            DEFAULT_DEAD_LETTER_CAPACITY as u64,
            5
        )
    );
    let dead = mailbox.dead_letters();
    assert_eq!(dead.len(), DEFAULT_DEAD_LETTER_CAPACITY);
    assert_eq!(tag(&dead[0]), 6, "the oldest five were dropped");
}

#[test]
fn a_registered_mailbox_takes_only_its_own_letters() {
    let system = system_keeping(10);
    let a = full_agent(&system);
    let b = full_agent(&system);
    refuse(&system, &a, [1]);
    refuse(&system, &b, [2]);
    refuse(&system, &a, [3]);
    let mailbox_a = system.get_mailbox(&a).unwrap();
    assert_eq!(tags(&mailbox_a.dead_letters()), [1, 3]);
    // The rest stays in the system's store; the mailbox reports that store's counters.
    assert_eq!(mailbox_a.dead_letter_stats(), system.dead_letter_stats());
    assert_eq!(tags(&system.dead_letters()), [2]);
    system.shutdown().unwrap();
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn tokio_standalone_mailbox_reaches_its_dead_letters() {
    use terraphim_agent_messaging::tokio;
    let mailbox = tokio::AgentMailbox::new(AgentPid::new(), bounded(1));
    mailbox.send(cast(0)).await.unwrap();
    assert!(mailbox.send(cast(1)).await.is_err());
    assert!(mailbox.sender().send(cast(2)).await.is_err());
    assert_eq!(tags(&mailbox.dead_letters()), [1, 2]);
    let stats = mailbox.dead_letter_stats();
    assert_eq!((stats.recorded, stats.kept, stats.taken), (2, 0, 2));
}
