//! Receive-side models (issue 12): the receiver claim handed between threads, a task's
//! registration displaced by a blocking receiver, a receiver behind a claimed but
//! unwritten slot (sync and async), the anti-starvation drain, and `receive_many`.

use std::future::poll_fn;

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use terraphim_agent_messaging::{
    AgentMailbox, AgentPid, MailboxConfig, MessagePriority, MessageSystem, MessagingError,
    RouterConfig, TimerDriver,
};

use crate::{assert_all_dropped, model, spawn, tag, tagged};

const NORMAL: MessagePriority = MessagePriority::Normal;
const HIGH: MessagePriority = MessagePriority::High;
const LOW: MessagePriority = MessagePriority::Low;

fn unbounded() -> AgentMailbox {
    AgentMailbox::new(AgentPid::new(), MailboxConfig::default())
}

/// What one receive attempt of a model gave.
#[derive(Debug, PartialEq)]
enum Got {
    Message((u8, u8)),
    Nothing,
    Busy,
    Closed,
}

fn got(result: Result<Option<terraphim_agent_messaging::AgentMessage>, MessagingError>) -> Got {
    match result {
        Ok(Some(message)) => Got::Message(tag(&message)),
        Ok(None) | Err(MessagingError::MessageTimeout(_)) => Got::Nothing,
        Err(MessagingError::ReceiverBusy(_)) => Got::Busy,
        Err(MessagingError::ChannelClosed(_)) => Got::Closed,
        Err(e) => panic!("unexpected receive error: {e}"),
    }
}

/// The messages among `gots`.
fn messages(gots: &[Got]) -> Vec<(u8, u8)> {
    gots.iter()
        .filter_map(|g| match g {
            Got::Message(t) => Some(*t),
            _ => None,
        })
        .collect()
}

// ===== the receiver claim between two receivers =====

/// Two threads receive from one mailbox through their own handles (one `try_receive`,
/// one `receive_timeout`) while main sends two messages: the claim passes between them
/// (with the lane's head, which each reads as the single consumer), a receive that
/// finds it taken gets `ReceiverBusy`, and each message arrives exactly once: the rest
/// is drained in order after the joins. (Two attempts per receiver cost ~1 M
/// iterations; one each keeps the handoff and the busy case.)
#[test]
fn claim_handed_between_two_receivers() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let polling = {
            let mailbox = mailbox.clone();
            spawn(move || got(mailbox.try_receive()))
        };
        let blocking = {
            let mailbox = mailbox.clone();
            spawn(move || {
                got(mailbox
                    .receive_timeout(std::time::Duration::from_secs(1))
                    .map(Some))
            })
        };
        let sender = mailbox.sender();
        sender.try_send(tagged(&token, 0, 0), NORMAL).unwrap();
        sender.try_send(tagged(&token, 0, 1), NORMAL).unwrap();
        let gots = [polling.join().unwrap(), blocking.join().unwrap()];
        let mut all = messages(&gots);
        all.sort_unstable();
        let mut rest = Vec::new();
        while let Some(message) = mailbox.try_receive().unwrap() {
            rest.push(tag(&message));
        }
        assert!(rest.windows(2).all(|w| w[0] < w[1]), "FIFO: {rest:?}");
        if let (Some(taken), Some(left)) = (all.last(), rest.first()) {
            assert!(taken < left, "a later message taken before an earlier one");
        }
        all.extend(rest);
        all.sort_unstable();
        assert_eq!(all, [(0, 0), (0, 1)], "exactly once: {gots:?}");
        drop((mailbox, sender));
        assert_all_dropped(&token);
    });
}

// ===== poll_receive displaced by a blocking receiver =====

/// Issue 12, item 3: a task waits in `poll_receive` (its waker registered, the claim
/// released) while a blocking `receive_timeout` on another handle registers over it, and
/// main sends one message, then closes. The task is always woken (loom reports a
/// deadlock otherwise) and ends with the message, `ReceiverBusy` or `ChannelClosed`;
/// the message is received exactly once.
#[test]
fn poll_receive_displaced_by_a_blocking_receiver() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let task = {
            let mailbox = mailbox.clone();
            spawn(move || {
                let result = crate::block_on(poll_fn(|cx| mailbox.poll_receive(cx)));
                got(result.map(Some))
            })
        };
        let blocking = {
            let mailbox = mailbox.clone();
            spawn(move || {
                got(mailbox
                    .receive_timeout(std::time::Duration::from_secs(1))
                    .map(Some))
            })
        };
        mailbox
            .sender()
            .try_send(tagged(&token, 0, 0), NORMAL)
            .unwrap();
        let b = blocking.join().unwrap();
        mailbox.close();
        let a = task.join().unwrap();
        let mut all = messages(&[a, b]);
        while let Ok(message) = mailbox.receive() {
            all.push(tag(&message));
        }
        assert_eq!(all, [(0, 0)], "exactly once");
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

// ===== a receiver behind a claimed but unwritten slot =====

/// A `Normal` message is queued; main sends `High` while thread R receives twice,
/// blocking: if that send had returned before R's first receive, that receive gets the
/// `High`. A receive that finds the `High` claimed but unwritten (main mid-send) may take
/// the `Normal` first (the send has not returned), and the second receive then parks
/// until the write wakes it. With `asynchronous`, the receives are `receive_async`
/// futures. (R receives and main sends, not the other way round: a wake can land after
/// a receive found its message, and loom's park model, unlike std's, trips on that stale
/// unpark if the thread then blocks in `join`, from 3 preemptions on.)
fn behind_an_unwritten_slot(asynchronous: bool) {
    model(move || {
        let token = Arc::new(());
        let mailbox = unbounded();
        // The extra lanes exist already, so the race is about the slot, not the install.
        mailbox.try_send(tagged(&token, 9, 0), LOW).unwrap();
        assert_eq!(tag(&mailbox.receive().unwrap()), (9, 0));
        mailbox.try_send(tagged(&token, 0, 0), NORMAL).unwrap();
        let sent = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (mailbox, sent) = (mailbox.clone(), sent.clone());
            spawn(move || {
                let receive = || {
                    let message = if asynchronous {
                        crate::block_on(mailbox.receive_async())
                    } else {
                        mailbox.receive()
                    };
                    tag(&message.unwrap())
                };
                let high_sent = sent.load(SeqCst);
                let first = receive();
                if high_sent {
                    assert_eq!(first, (1, 0), "a returned High send goes before Normal");
                }
                [first, receive()]
            })
        };
        mailbox.try_send(tagged(&token, 1, 0), HIGH).unwrap();
        sent.store(true, SeqCst);
        let mut both = receiver.join().unwrap();
        both.sort_unstable();
        assert_eq!(both, [(0, 0), (1, 0)]);
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

#[test]
fn receive_behind_an_unwritten_slot() {
    behind_an_unwritten_slot(false);
}

#[test]
fn receive_async_behind_an_unwritten_slot() {
    behind_an_unwritten_slot(true);
}

// ===== anti-starvation =====

/// `preserve_order: false` with a budget of 1: a `Low` message is queued, and P sends
/// two `High` while main receives all three. The `Low` is passed over at most once
/// (it is first or second), the `High`s keep their order, each arrives once.
#[test]
fn anti_starvation_drain() {
    model(|| {
        let token = Arc::new(());
        let system = MessageSystem::builder(RouterConfig::default())
            .timer_driver(TimerDriver::Manual)
            .starvation_budget(1)
            .build()
            .expect("valid configuration");
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).unwrap();
        let mailbox = system.get_mailbox(&pid).unwrap();
        let sender = system.sender(&pid).unwrap();
        sender.try_send(tagged(&token, 0, 0), LOW).unwrap();
        let t = token.clone();
        let producer = spawn(move || {
            sender.try_send(tagged(&t, 1, 0), HIGH).unwrap();
            sender.try_send(tagged(&t, 1, 1), HIGH).unwrap();
        });
        // Polling, not `receive`: a producer's wake can land after the receiver found its
        // message, and loom's park model (unlike std's) trips on that stale unpark once
        // the thread blocks in `join` (from 3 preemptions on; see `block_on`).
        let mut got = Vec::new();
        while got.len() < 3 {
            match mailbox.try_receive().unwrap() {
                Some(message) => got.push(tag(&message)),
                None => loom::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        let low_at = got.iter().position(|t| *t == (0, 0)).expect("the Low");
        assert!(low_at <= 1, "Low passed over more than once: {got:?}");
        let highs: Vec<_> = got.iter().filter(|t| t.0 == 1).collect();
        assert_eq!(highs, [&(1, 0), &(1, 1)], "{got:?}");
        assert!(mailbox.try_receive().unwrap().is_none());
        drop(mailbox);
        system.shutdown().unwrap();
        drop(system);
        assert_all_dropped(&token);
    });
}

// ===== receive_many =====

/// Main sends two messages (filling a block and installing the next) while thread R
/// takes them in batches with `receive_many`: every batch has at least one message and
/// no more than asked, and both arrive once each, in order. (Three messages cost ~240 k
/// iterations. R receives and main sends, for the reason given at
/// `behind_an_unwritten_slot`.)
#[test]
fn receive_many_with_a_concurrent_producer() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || {
                let mut all = Vec::new();
                while all.len() < 2 {
                    let mut buf = Vec::new();
                    let limit = 2 - all.len();
                    let n = mailbox.receive_many(&mut buf, limit).unwrap();
                    assert!((1..=limit).contains(&n) && n == buf.len(), "{n} of {buf:?}");
                    all.extend(buf.iter().map(tag));
                }
                all
            })
        };
        let sender = mailbox.sender();
        for seq in 0..2 {
            sender.try_send(tagged(&token, 0, seq), NORMAL).unwrap();
        }
        assert_eq!(receiver.join().unwrap(), [(0, 0), (0, 1)]);
        drop((mailbox, sender));
        assert_all_dropped(&token);
    });
}
