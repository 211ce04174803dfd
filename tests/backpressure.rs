//! Back-pressure: `send_timeout` waits for room in a bounded mailbox, wakes waiting
//! senders in the order they began to wait, and hands the message back after its
//! timeout or at close.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::sync::{manual_system, registered, within};
use common::wait_until;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, LoadBalance, MailboxConfig, MessagePriority,
    MessagingError, RouterConfig, TrySendError,
};

fn bounded(cap: usize) -> AgentMailbox {
    AgentMailbox::new(
        AgentPid::new(),
        MailboxConfig {
            max_messages: cap,
            ..MailboxConfig::default()
        },
    )
}

fn n(k: u64) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), k)
}

const NORMAL: MessagePriority = MessagePriority::Normal;

#[test]
fn times_out_and_hands_the_message_back() {
    let mailbox = bounded(1);
    let sender = mailbox.sender();
    sender.send_timeout(n(1), NORMAL, Duration::ZERO).unwrap();
    let start = Instant::now();
    match sender.send_timeout(n(2), NORMAL, Duration::from_millis(30)) {
        Err(TrySendError::Full(m)) => assert_eq!(m.payload::<u64>(), Some(&2)),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(sender.blocked_senders(), 0);
    // Zero timeout: try_send.
    assert!(matches!(
        sender.send_timeout(n(3), NORMAL, Duration::ZERO),
        Err(TrySendError::Full(_))
    ));
    assert_eq!(mailbox.queue_size(), 1);
}

#[test]
fn a_receive_wakes_a_waiting_sender() {
    let mailbox = bounded(1);
    let sender = mailbox.sender();
    sender.try_send(n(0), NORMAL).unwrap();
    let waiting = {
        let sender = sender.clone();
        thread::spawn(move || sender.send_timeout(n(1), NORMAL, Duration::MAX))
    };
    wait_until("the sender waits", || sender.blocked_senders() == 1);
    assert_eq!(mailbox.receive().unwrap().payload::<u64>(), Some(&0));
    waiting.join().unwrap().unwrap();
    assert_eq!(mailbox.receive().unwrap().payload::<u64>(), Some(&1));
}

#[test]
fn waiting_senders_are_served_in_order() {
    within(20, || {
        let mailbox = bounded(1);
        let sender = mailbox.sender();
        sender.try_send(n(100), NORMAL).unwrap();
        let mut threads = Vec::new();
        for k in 0..4u64 {
            let s = sender.clone();
            threads.push(thread::spawn(move || {
                s.send_timeout(n(k), NORMAL, Duration::from_secs(10))
            }));
            wait_until("the sender queues", || {
                sender.blocked_senders() == k as usize + 1
            });
        }
        let got: Vec<u64> = (0..5)
            .map(|_| *mailbox.receive().unwrap().payload::<u64>().unwrap())
            .collect();
        assert_eq!(got, [100, 0, 1, 2, 3]);
        for t in threads {
            t.join().unwrap().unwrap();
        }
    });
}

#[test]
fn close_wakes_waiting_senders() {
    let mailbox = bounded(1);
    let sender = mailbox.sender();
    sender.try_send(n(0), NORMAL).unwrap();
    let waiting = {
        let sender = sender.clone();
        thread::spawn(move || sender.send_timeout(n(1), NORMAL, Duration::MAX))
    };
    wait_until("the sender waits", || sender.blocked_senders() == 1);
    mailbox.close();
    match within(5, move || waiting.join().unwrap()) {
        Err(TrySendError::Closed(m)) => assert_eq!(m.payload::<u64>(), Some(&1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unbounded_never_waits() {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    for k in 0..100 {
        mailbox
            .sender()
            .send_timeout(n(k), NORMAL, Duration::MAX)
            .unwrap();
    }
    assert_eq!(mailbox.queue_size(), 100);
}

#[test]
fn system_send_timeout() {
    let (system, _clock) = manual_system(RouterConfig::default(), 1);
    let (pid, mailbox) = registered(&system);
    system.send_timeout(&pid, n(1), Duration::ZERO).unwrap();
    let e = system
        .send_timeout(&pid, n(2), Duration::from_millis(5))
        .unwrap_err();
    assert!(matches!(e.error, MessagingError::MailboxFull(_)));
    assert_eq!(e.into_inner().payload::<u64>(), Some(&2));
    let ghost = AgentPid::new();
    let e = system
        .send_timeout(&ghost, n(3), Duration::from_millis(5))
        .unwrap_err();
    assert!(matches!(e.error, MessagingError::AgentNotFound(_)));
    let group = system.create_group(LoadBalance::RoundRobin).unwrap();
    let e = system
        .send_timeout(&group, n(4), Duration::from_millis(5))
        .unwrap_err();
    assert!(matches!(e.error, MessagingError::InvalidMessage(_)));
    assert_eq!(mailbox.receive().unwrap().payload::<u64>(), Some(&1));
    let converted: MessagingError = system
        .send_timeout(&ghost, n(5), Duration::ZERO)
        .unwrap_err()
        .into();
    assert!(matches!(converted, MessagingError::AgentNotFound(_)));
}

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use super::*;
    use terraphim_agent_messaging::tokio as tk;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_in_order_and_times_out() {
        let mailbox: tk::AgentMailbox = bounded(1).into();
        let sender = mailbox.sender();
        sender.try_send(n(100), NORMAL).unwrap();
        let mut tasks = Vec::new();
        for k in 0..3u64 {
            let s = sender.clone();
            tasks.push(tokio::spawn(async move {
                s.send_timeout(n(k), NORMAL, Duration::from_secs(10)).await
            }));
            common::tokio::within(5, async {
                while sender.blocked_senders() != k as usize + 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(*mailbox.receive().await.unwrap().payload::<u64>().unwrap());
        }
        assert_eq!(got, [100, 0, 1, 2]);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        sender.try_send(n(7), NORMAL).unwrap();
        match sender
            .send_timeout(n(8), NORMAL, Duration::from_millis(20))
            .await
        {
            Err(TrySendError::Full(m)) => assert_eq!(m.payload::<u64>(), Some(&8)),
            other => panic!("{other:?}"),
        }
        assert_eq!(sender.blocked_senders(), 0);
    }

    #[tokio::test]
    async fn system_twin() {
        let system = tk::MessageSystem::builder(RouterConfig::default())
            .mailbox_config(MailboxConfig {
                max_messages: 1,
                ..MailboxConfig::default()
            })
            .build()
            .unwrap();
        let (pid, _mailbox) = common::tokio::registered(&system).await;
        system
            .send_timeout(&pid, n(1), Duration::from_millis(5))
            .await
            .unwrap();
        let e = system
            .send_timeout(&pid, n(2), Duration::from_millis(5))
            .await
            .unwrap_err();
        assert!(matches!(e.error, MessagingError::MailboxFull(_)));
        system.shutdown().await.unwrap();
    }
}
