//! Mailbox behaviour: priority order, capacity, blocking/async receive, close, stats, drops.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadLetterReason, DeadMessage, MailboxConfig,
    MailboxManager, MessagePriority, MessageSystem, MessagingError, RouterConfig, TrySendError,
};

use MessagePriority::{Critical, High, Low, Normal};

mod common;
use common::sync::within;
use common::{wait_until, XorShift, PRIORITIES};

// ===== helpers =====

fn mailbox() -> AgentMailbox {
    AgentMailbox::new(AgentPid::new(), MailboxConfig::default())
}

fn bounded(max_messages: usize) -> AgentMailbox {
    AgentMailbox::new(
        AgentPid::new(),
        MailboxConfig {
            max_messages,
            ..MailboxConfig::default()
        },
    )
}

fn unordered() -> MailboxConfig {
    MailboxConfig {
        preserve_order: false,
        ..MailboxConfig::default()
    }
}

/// A cast carrying `(sender, priority, seq)`.
fn msg(sender: u64, priority: MessagePriority, seq: u64) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), (sender, priority, seq))
}

fn tag(m: &AgentMessage) -> (u64, MessagePriority, u64) {
    *m.payload::<(u64, MessagePriority, u64)>()
        .expect("payload is (sender, priority, seq)")
}

// ===== a tiny executor =====

/// Wakes a parked thread.
struct ThreadWaker {
    thread: thread::Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        self.thread.unpark();
    }
}

fn thread_waker() -> (Arc<ThreadWaker>, Waker) {
    let inner = Arc::new(ThreadWaker {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    (inner.clone(), Waker::from(inner))
}

/// Runs `future` to completion on this thread, parking between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let (_, waker) = thread_waker();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

// ===== basics =====

#[test]
fn smoke() {
    let mb = mailbox();
    let from = AgentPid::new();
    let sent = AgentMessage::cast(from.clone(), "hello");
    let id = sent.id().clone();
    mb.send(sent).unwrap();
    assert_eq!(mb.queue_size(), 1);
    assert!(!mb.is_empty());
    let got = mb.receive().unwrap();
    assert_eq!(got.id(), &id);
    assert_eq!(got.from(), Some(&from));
    assert_eq!(got.payload::<&str>(), Some(&"hello"));
    assert!(mb.is_empty());
    assert!(mb.try_receive().unwrap().is_none());
}

#[test]
fn priority_order() {
    let mb = mailbox();
    // Two senders, interleaved, every priority, in scrambled order.
    let mut rng = XorShift::from_state(0x9E37_79B9);
    let mut seq = [[0u64; 4]; 2];
    let mut sent = 0;
    for _ in 0..400 {
        let s = rng.below(2);
        let p = PRIORITIES[rng.below(4) as usize];
        let n = &mut seq[s as usize][p.index()];
        mb.send_with_priority(msg(s, p, *n), p).unwrap();
        *n += 1;
        sent += 1;
    }
    let mut last: [[Option<u64>; 4]; 2] = [[None; 4]; 2];
    let mut current = Critical;
    for _ in 0..sent {
        let (s, p, n) = tag(&mb.try_receive().unwrap().expect("queued"));
        assert!(p <= current, "{p:?} after {current:?}");
        current = p;
        let slot = &mut last[s as usize][p.index()];
        assert_eq!(*slot, n.checked_sub(1), "FIFO per (sender, priority)");
        *slot = Some(n);
    }
    assert!(mb.try_receive().unwrap().is_none());
    for s in 0..2 {
        for p in PRIORITIES {
            assert_eq!(last[s][p.index()].map_or(0, |n| n + 1), seq[s][p.index()]);
        }
    }
}

#[test]
fn priority_order_single_sender() {
    let mb = mailbox();
    for p in [Low, Normal, High, Critical, Low, Critical, Normal, High] {
        mb.send_with_priority(msg(0, p, 0), p).unwrap();
    }
    let got: Vec<_> = (0..8).map(|_| tag(&mb.receive().unwrap()).1).collect();
    assert_eq!(
        got,
        [Critical, Critical, High, High, Normal, Normal, Low, Low]
    );
}

#[test]
fn strict_order_when_preserve_order() {
    // preserve_order = true (the default): a Low waits behind any number of Critical,
    // even when Critical keeps arriving.
    let mb = mailbox();
    mb.send_with_priority(msg(0, Low, 0), Low).unwrap();
    mb.send_with_priority(msg(0, Normal, 0), Normal).unwrap();
    for i in 0..500 {
        mb.send_with_priority(msg(0, Critical, i), Critical)
            .unwrap();
    }
    for i in 500..1000 {
        assert_eq!(tag(&mb.receive().unwrap()).1, Critical);
        mb.send_with_priority(msg(0, Critical, i), Critical)
            .unwrap();
    }
    for _ in 0..500 {
        assert_eq!(tag(&mb.receive().unwrap()).1, Critical);
    }
    assert_eq!(tag(&mb.receive().unwrap()).1, Normal);
    assert_eq!(tag(&mb.receive().unwrap()).1, Low);
    assert!(mb.is_empty());
}

/// Receives from a mailbox kept flooded with Critical (refilled after every receive) and
/// checks that every queued lower-priority message is served within `budget + 3`
/// receives of the last one of its priority.
fn check_no_starvation(mb: &AgentMailbox, budget: u64) {
    for i in 0..budget * 4 + 16 {
        mb.send_with_priority(msg(9, Critical, i), Critical)
            .unwrap();
    }
    for p in [Low, Normal, High] {
        for i in 0..3 {
            mb.send_with_priority(msg(0, p, i), p).unwrap();
        }
    }
    let mut since_served = [0u64; 3];
    let mut served = [0u64; 3];
    let flood = budget * 4 + 16;
    for critical_seq in flood..flood + (budget + 3) * 10 {
        let (_, p, n) = tag(&mb.try_receive().unwrap().expect("flooded"));
        // Keep the flood going.
        mb.send_with_priority(msg(9, Critical, critical_seq), Critical)
            .unwrap();
        for (i, count) in since_served.iter_mut().enumerate() {
            if served[i] < 3 {
                *count += 1;
                assert!(
                    *count <= budget + 3,
                    "{:?} starved for {} receives (budget {budget})",
                    PRIORITIES[i],
                    *count
                );
            }
        }
        if p != Critical {
            let i = p.index();
            assert_eq!(n, served[i], "FIFO within {p:?}");
            served[i] += 1;
            since_served[i] = 0;
        }
    }
    assert_eq!(served, [3, 3, 3], "every lower-priority message was served");
}

#[test]
fn no_starvation_default_budget() {
    let mb = AgentMailbox::new(AgentPid::new(), unordered());
    check_no_starvation(&mb, 64);
}

#[test]
fn no_starvation_custom_budget() {
    for budget in [1u32, 2, 5, 17] {
        let system = MessageSystem::builder(RouterConfig::default())
            .mailbox_config(unordered())
            .starvation_budget(budget)
            .build()
            .unwrap();
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).unwrap();
        let mb = system.get_mailbox(&pid).unwrap();
        check_no_starvation(&mb, u64::from(budget));
        system.shutdown().unwrap();
    }
}

#[test]
fn no_starvation_serves_low_exactly_after_budget() {
    // With only Critical and Low queued, Low is served right after `budget` Criticals.
    let budget = 8u32;
    let system = MessageSystem::builder(RouterConfig::default())
        .mailbox_config(unordered())
        .starvation_budget(budget)
        .build()
        .unwrap();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mb = system.get_mailbox(&pid).unwrap();
    mb.send_with_priority(msg(0, Low, 0), Low).unwrap();
    for i in 0..100 {
        mb.send_with_priority(msg(0, Critical, i), Critical)
            .unwrap();
    }
    let order: Vec<_> = (0..101).map(|_| tag(&mb.receive().unwrap()).1).collect();
    let low_at = order.iter().position(|&p| p == Low).unwrap();
    assert_eq!(low_at, budget as usize, "order: {order:?}");
}

#[test]
fn starvation_budget_zero_is_strict() {
    let system = MessageSystem::builder(RouterConfig::default())
        .mailbox_config(unordered())
        .starvation_budget(0)
        .build()
        .unwrap();
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mb = system.get_mailbox(&pid).unwrap();
    mb.send_with_priority(msg(0, Low, 0), Low).unwrap();
    for i in 0..300 {
        mb.send_with_priority(msg(0, Critical, i), Critical)
            .unwrap();
    }
    for _ in 0..300 {
        assert_eq!(tag(&mb.receive().unwrap()).1, Critical);
    }
    assert_eq!(tag(&mb.receive().unwrap()).1, Low);
}

// ===== capacity =====

#[test]
fn capacity() {
    for cap in [1usize, 2, 1000] {
        let mb = bounded(cap);
        for i in 0..cap as u64 {
            mb.try_send(
                msg(0, PRIORITIES[i as usize % 4], i),
                PRIORITIES[i as usize % 4],
            )
            .unwrap();
        }
        assert_eq!(mb.queue_size(), cap);
        // Full, at every priority: the message comes back untouched.
        for p in PRIORITIES {
            let m = msg(1, p, 7);
            let id = m.id().clone();
            match mb.try_send(m, p) {
                Err(TrySendError::Full(back)) => {
                    assert_eq!(back.id(), &id);
                    assert_eq!(tag(&back), (1, p, 7));
                }
                other => panic!("cap {cap}: expected Full, got {other:?}"),
            }
        }
        assert!(matches!(
            mb.send(msg(1, Normal, 8)),
            Err(MessagingError::MailboxFull(ref pid)) if pid == mb.agent_id()
        ));
        assert_eq!(mb.queue_size(), cap);
        // One out, one in.
        mb.receive().unwrap();
        mb.try_send(msg(2, Normal, 0), Normal).unwrap();
        assert!(matches!(
            mb.try_send(msg(2, Normal, 1), Normal),
            Err(TrySendError::Full(_))
        ));
        for _ in 0..cap {
            mb.receive().unwrap();
        }
        assert!(mb.is_empty());
        let s = mb.stats();
        assert_eq!(s.total_messages_received, cap as u64 + 1);
        assert_eq!(s.total_messages_processed, cap as u64 + 1);
    }
}

#[test]
fn capacity_send_dead_letters() {
    let manager = MailboxManager::new(MailboxConfig {
        max_messages: 2,
        ..MailboxConfig::default()
    });
    let pid = AgentPid::new();
    let sender = manager.create_mailbox(pid.clone()).unwrap();
    sender.send(msg(0, Normal, 0)).unwrap();
    sender.send_with_priority(msg(0, High, 1), High).unwrap();
    let refused = msg(0, Low, 2);
    let refused_id = refused.id().clone();
    assert!(matches!(
        sender.send_with_priority(refused, Low),
        Err(MessagingError::MailboxFull(ref p)) if *p == pid
    ));
    let mb = manager.get_mailbox(&pid).unwrap();
    assert!(matches!(
        mb.send(msg(0, Normal, 3)),
        Err(MessagingError::MailboxFull(_))
    ));
    let dead = manager.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].id, refused_id);
    assert_eq!(dead[0].to, pid);
    assert_eq!(dead[0].reason, DeadLetterReason::MailboxFull);
    match &dead[0].message {
        DeadMessage::Message(m) => assert_eq!(tag(m), (0, Low, 2)),
        other => panic!("expected the message itself, got {other:?}"),
    }
    assert_eq!(dead[1].reason, DeadLetterReason::MailboxFull);
    assert_eq!(mb.queue_size(), 2);
    assert_eq!(mb.stats().total_messages_received, 2);
}

#[test]
fn capacity_concurrent_senders() {
    const SENDERS: u64 = 4;
    const PER_SENDER: u64 = 5_000;
    for cap in [1usize, 3, 16] {
        let mb = bounded(cap);
        let accepted = Arc::new(AtomicUsize::new(0));
        let full_seen = Arc::new(AtomicUsize::new(0));
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let tx = mb.sender();
                let (accepted, full_seen) = (accepted.clone(), full_seen.clone());
                thread::spawn(move || {
                    for i in 0..PER_SENDER {
                        let p = PRIORITIES[(i % 4) as usize];
                        let mut m = msg(s, p, i);
                        loop {
                            match tx.try_send(m, p) {
                                Ok(()) => break,
                                Err(TrySendError::Full(back)) => {
                                    full_seen.fetch_add(1, SeqCst);
                                    m = back;
                                    thread::yield_now();
                                }
                                Err(TrySendError::Closed(_)) => panic!("closed"),
                            }
                        }
                        accepted.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let mut last = vec![[None::<u64>; 4]; SENDERS as usize];
        let mut received = 0u64;
        let total = SENDERS * PER_SENDER;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received < total {
            let len = mb.queue_size();
            assert!(len <= cap, "queue_size {len} > capacity {cap}");
            match mb.try_receive().unwrap() {
                Some(m) => {
                    let (s, p, n) = tag(&m);
                    let slot = &mut last[s as usize][p.index()];
                    assert!(slot.is_none_or(|l| l < n), "FIFO per (sender, priority)");
                    *slot = Some(n);
                    received += 1;
                }
                None => {
                    assert!(Instant::now() < deadline, "stalled at {received}");
                    thread::yield_now();
                }
            }
            assert!(mb.queue_size() <= cap);
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(accepted.load(SeqCst) as u64, received);
        assert!(mb.try_receive().unwrap().is_none());
        let s = mb.stats();
        assert_eq!(s.total_messages_received, total);
        assert_eq!(s.total_messages_processed, total);
        assert!(s.max_queue_size_reached <= cap);
    }
}

// ===== blocking receive, close =====

#[test]
fn receive_wakes_on_send() {
    let mb = mailbox();
    let tx = mb.sender();
    let got = within(10, move || {
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            tx.send(msg(0, Normal, 42)).unwrap();
        });
        let got = mb.receive().unwrap();
        sender.join().unwrap();
        got
    });
    assert_eq!(tag(&got), (0, Normal, 42));
}

#[test]
fn receive_wakes_on_many_sends() {
    // Ping-pong: the receiver blocks on every message.
    let mb = mailbox();
    let tx = mb.sender();
    let back = mailbox();
    let back_tx = back.sender();
    within(20, move || {
        let echo = thread::spawn(move || {
            for i in 0..2_000 {
                let m = mb.receive().unwrap();
                assert_eq!(tag(&m).2, i);
                back_tx.send(m).unwrap();
            }
        });
        for i in 0..2_000 {
            tx.send(msg(0, Normal, i)).unwrap();
            assert_eq!(tag(&back.receive().unwrap()).2, i);
        }
        echo.join().unwrap();
    });
}

#[test]
fn close_wakes_blocked_receiver() {
    let mb = mailbox();
    let rx = mb.clone();
    let receiver = thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match rx.receive() {
                Ok(m) => got.push(tag(&m).2),
                Err(e) => return (got, e),
            }
        }
    });
    mb.send(msg(0, Normal, 0)).unwrap();
    wait_until("the receiver to take the message", || mb.is_empty());
    // Give the receiver time to block again, then close.
    thread::sleep(Duration::from_millis(50));
    mb.close();
    let (got, err) = within(10, move || receiver.join().unwrap());
    assert_eq!(got, [0]);
    assert!(matches!(err, MessagingError::ChannelClosed(ref p) if p == mb.agent_id()));
}

#[test]
fn close_drains_then_closed() {
    let mb = mailbox();
    let rx = mb.clone();
    let receiver = thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match rx.receive() {
                Ok(m) => got.push(tag(&m)),
                Err(e) => return (got, e),
            }
        }
    });
    mb.send_with_priority(msg(0, Low, 0), Low).unwrap();
    mb.send_with_priority(msg(0, Critical, 1), Critical)
        .unwrap();
    mb.send(msg(0, Normal, 2)).unwrap();
    mb.close();
    assert!(mb.is_closed());
    assert!(matches!(
        mb.send(msg(0, Normal, 3)),
        Err(MessagingError::ChannelClosed(_))
    ));
    match mb.try_send(msg(0, High, 4), High) {
        Err(TrySendError::Closed(back)) => assert_eq!(tag(&back), (0, High, 4)),
        other => panic!("expected Closed, got {other:?}"),
    }
    let (got, err) = within(10, move || receiver.join().unwrap());
    assert_eq!(got.len(), 3, "everything queued before close is drained");
    assert!(matches!(err, MessagingError::ChannelClosed(_)));
    // Still closed on later calls.
    assert!(matches!(
        mb.try_receive(),
        Err(MessagingError::ChannelClosed(_))
    ));
    assert!(matches!(
        mb.receive_timeout(Duration::from_secs(5)),
        Err(MessagingError::ChannelClosed(_))
    ));
    // The two refused after close: `send` dead-letters, `try_send` hands back.
    assert_eq!(mb.stats().messages_dead_lettered, 0);
}

#[test]
fn close_before_any_send_at_every_priority() {
    for p in PRIORITIES {
        let mb = mailbox();
        mb.close();
        assert!(matches!(
            mb.try_send(msg(0, p, 0), p),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(
            mb.try_receive(),
            Err(MessagingError::ChannelClosed(_))
        ));
    }
}

#[test]
fn closed_with_no_receiver_dead_letters_leftovers() {
    let manager = MailboxManager::new(MailboxConfig::default());
    let pid = AgentPid::new();
    let sender = manager.create_mailbox(pid.clone()).unwrap();
    let mb = manager.get_mailbox(&pid).unwrap();
    for (i, p) in PRIORITIES.into_iter().enumerate() {
        sender.send_with_priority(msg(0, p, i as u64), p).unwrap();
    }
    mb.receive().unwrap(); // the Critical one
    manager.remove_mailbox(&pid).unwrap();
    assert!(sender.is_closed());
    // A receiver handle is still alive: nothing is dead-lettered yet.
    assert!(manager.dead_letters().is_empty());
    let stats_handle = mb.clone();
    drop(mb);
    // Still one handle alive.
    assert!(manager.dead_letters().is_empty());
    drop(stats_handle);
    let dead = manager.dead_letters();
    assert_eq!(dead.len(), 3);
    assert!(dead
        .iter()
        .all(|d| d.reason == DeadLetterReason::MailboxClosed && d.to == pid));
    let order: Vec<_> = dead
        .iter()
        .map(|d| match &d.message {
            DeadMessage::Message(m) => tag(m).1,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(order, [High, Normal, Low]);
}

// ===== receive_timeout, try_receive =====

#[test]
fn receive_timeout() {
    let mb = mailbox();
    let start = Instant::now();
    assert!(matches!(
        mb.receive_timeout(Duration::ZERO),
        Err(MessagingError::MessageTimeout(ref p)) if p == mb.agent_id()
    ));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "zero timeout waited"
    );

    let start = Instant::now();
    assert!(matches!(
        mb.receive_timeout(Duration::from_millis(30)),
        Err(MessagingError::MessageTimeout(_))
    ));
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "returned early"
    );

    mb.send(msg(0, Normal, 1)).unwrap();
    assert_eq!(tag(&mb.receive_timeout(Duration::ZERO).unwrap()).2, 1);
    mb.send(msg(0, Normal, 2)).unwrap();
    assert_eq!(
        tag(&mb.receive_timeout(Duration::from_secs(1)).unwrap()).2,
        2
    );
    mb.send(msg(0, Normal, 3)).unwrap();
    assert_eq!(tag(&mb.receive_timeout(Duration::MAX).unwrap()).2, 3);
}

#[test]
fn receive_timeout_wakes_on_send() {
    let mb = mailbox();
    let tx = mb.sender();
    within(10, move || {
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(msg(0, High, 5)).unwrap();
        });
        let start = Instant::now();
        let got = mb.receive_timeout(Duration::MAX).unwrap();
        assert_eq!(tag(&got), (0, High, 5));
        assert!(start.elapsed() < Duration::from_secs(5));
        sender.join().unwrap();
    });
}

#[test]
fn try_receive() {
    let mb = mailbox();
    assert!(mb.try_receive().unwrap().is_none());
    mb.send_with_priority(msg(0, Low, 0), Low).unwrap();
    mb.send_with_priority(msg(0, High, 1), High).unwrap();
    assert_eq!(tag(&mb.try_receive().unwrap().unwrap()), (0, High, 1));
    assert_eq!(tag(&mb.try_receive().unwrap().unwrap()), (0, Low, 0));
    assert!(mb.try_receive().unwrap().is_none());
    mb.close();
    assert!(matches!(
        mb.try_receive(),
        Err(MessagingError::ChannelClosed(_))
    ));
}

// ===== async =====

#[test]
fn receive_async() {
    let mb = mailbox();
    mb.send(msg(0, Normal, 1)).unwrap();
    assert_eq!(tag(&block_on(mb.receive_async()).unwrap()).2, 1);

    // Pending, then woken from another thread.
    let tx = mb.sender();
    let got = within(10, move || {
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send_with_priority(msg(0, Critical, 2), Critical)
                .unwrap();
        });
        let got = block_on(mb.receive_async());
        sender.join().unwrap();
        (got, mb)
    });
    let (got, mb) = got;
    assert_eq!(tag(&got.unwrap()), (0, Critical, 2));

    // Close wakes a pending future with ChannelClosed.
    let closer = mb.clone();
    let res = within(10, move || {
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            closer.close();
        });
        let r = block_on(mb.receive_async());
        t.join().unwrap();
        r
    });
    assert!(matches!(res, Err(MessagingError::ChannelClosed(_))));
}

#[test]
fn receive_async_many() {
    let mb = mailbox();
    let tx = mb.sender();
    within(20, move || {
        let sender = thread::spawn(move || {
            for i in 0..5_000 {
                tx.send(msg(0, Normal, i)).unwrap();
                if i % 64 == 0 {
                    thread::yield_now();
                }
            }
        });
        for i in 0..5_000 {
            assert_eq!(tag(&block_on(mb.receive_async()).unwrap()).2, i);
        }
        sender.join().unwrap();
    });
}

#[test]
fn receive_async_cancel_safe() {
    let mb = mailbox();
    let (flag, waker) = thread_waker();
    let mut cx = Context::from_waker(&waker);
    {
        let mut fut = Box::pin(mb.receive_async());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        // The pending future holds the receiver.
        assert!(matches!(
            mb.try_receive(),
            Err(MessagingError::ReceiverBusy(_))
        ));
        // Dropped while pending.
    }
    assert!(!flag.woken.load(SeqCst));
    mb.send(msg(0, Normal, 9)).unwrap();
    assert_eq!(
        tag(&mb.receive_timeout(Duration::from_secs(5)).unwrap()).2,
        9
    );

    // A message that arrives after a poll is taken only by a later poll; dropping the
    // future in between loses nothing.
    let mut fut = Box::pin(mb.receive_async());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    mb.send(msg(0, Normal, 10)).unwrap();
    assert!(flag.woken.load(SeqCst), "a send wakes the pending future");
    drop(fut);
    assert_eq!(tag(&mb.try_receive().unwrap().unwrap()).2, 10);

    // poll_receive works on its own too.
    assert!(mb.poll_receive(&mut cx).is_pending());
    mb.send(msg(0, Normal, 11)).unwrap();
    match mb.poll_receive(&mut cx) {
        Poll::Ready(Ok(m)) => assert_eq!(tag(&m).2, 11),
        other => panic!("expected the message, got {other:?}"),
    }
}

/// Issue 12, item 3: a task pending in `poll_receive` (which releases the claim when it
/// returns) is not forgotten when a blocking receive on another handle registers in its
/// place: it is woken, and its next poll sees the message or `ReceiverBusy`.
#[test]
fn poll_receive_is_woken_when_a_blocking_receiver_takes_its_place() {
    let mb = mailbox();
    let (flag, waker) = thread_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(mb.poll_receive(&mut cx).is_pending());
    // Another handle's receive waits (and times out) while the task is pending.
    let other = mb.clone();
    let timed_out = thread::spawn(move || other.receive_timeout(Duration::from_millis(20)));
    assert!(matches!(
        timed_out.join().unwrap(),
        Err(MessagingError::MessageTimeout(_))
    ));
    mb.send(msg(0, Normal, 1)).unwrap();
    assert!(
        flag.woken.load(SeqCst),
        "the pending task is woken (by the displacement or by the send)"
    );
    match mb.poll_receive(&mut cx) {
        Poll::Ready(Ok(m)) => assert_eq!(tag(&m).2, 1),
        other => panic!("expected the message, got {other:?}"),
    }
}

// ===== one receiver at a time =====

#[test]
fn second_receiver_busy() {
    let mb = mailbox();
    let rx = mb.clone();
    let receiver = thread::spawn(move || loop {
        // Our probing try_receive may hold the claim for an instant: retry then.
        match rx.receive_timeout(Duration::from_secs(30)) {
            Err(MessagingError::ReceiverBusy(_)) => thread::yield_now(),
            other => return other,
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match mb.try_receive() {
            Err(MessagingError::ReceiverBusy(p)) => {
                assert_eq!(&p, mb.agent_id());
                break;
            }
            Ok(None) => {
                assert!(Instant::now() < deadline, "receiver never claimed");
                thread::yield_now();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(mb.receive(), Err(MessagingError::ReceiverBusy(_))));
    assert!(matches!(
        mb.receive_timeout(Duration::from_secs(1)),
        Err(MessagingError::ReceiverBusy(_))
    ));
    assert!(matches!(
        block_on(mb.receive_async()),
        Err(MessagingError::ReceiverBusy(_))
    ));
    // The busy attempts did not disturb the first receiver.
    mb.send(msg(0, Normal, 1)).unwrap();
    let got = within(10, move || receiver.join().unwrap()).unwrap();
    assert_eq!(tag(&got).2, 1);
    // Free again.
    assert!(mb.try_receive().unwrap().is_none());
}

// ===== stats, len =====

#[test]
fn stats() {
    let manager = MailboxManager::new(MailboxConfig::default());
    let pid = AgentPid::new();
    let sender = manager.create_mailbox(pid.clone()).unwrap();
    let mb = manager.get_mailbox(&pid).unwrap();
    let s = mb.stats();
    assert_eq!(s.agent_id, pid);
    assert_eq!(
        (
            s.total_messages_received,
            s.total_messages_processed,
            s.current_queue_size
        ),
        (0, 0, 0)
    );
    assert!(s.last_message_received.is_none());
    for i in 0..10 {
        sender
            .send_with_priority(msg(0, PRIORITIES[i % 4], i as u64), PRIORITIES[i % 4])
            .unwrap();
    }
    for _ in 0..4 {
        mb.receive().unwrap();
    }
    let s = mb.stats();
    assert_eq!(s.total_messages_received, 10);
    assert_eq!(s.total_messages_processed, 4);
    assert_eq!(s.current_queue_size, 6);
    assert_eq!(s.messages_dead_lettered, 0);
    assert!(s.max_queue_size_reached >= 6 && s.max_queue_size_reached <= 10);
    assert!(s.last_message_received.is_some());
    assert!(s.last_message_processed.is_some());
    assert_eq!(manager.get_all_stats(), vec![s]);

    manager.remove_mailbox(&pid).unwrap();
    drop(mb);
    // Last receiver handle gone on a closed mailbox: leftovers are dead-lettered.
    assert_eq!(manager.dead_letters().len(), 6);
    assert!(sender.is_closed());
    assert_eq!(sender.queue_size(), 0);
}

#[test]
fn stats_add_up_after_dead_lettering() {
    let manager = MailboxManager::new(MailboxConfig::default());
    let pid = AgentPid::new();
    manager.create_mailbox(pid.clone()).unwrap();
    let mb = manager.get_mailbox(&pid).unwrap();
    let observer = mb.clone();
    for i in 0..100 {
        mb.send(msg(0, Normal, i)).unwrap();
    }
    for _ in 0..30 {
        mb.receive().unwrap();
    }
    mb.close();
    assert_eq!(observer.stats().messages_dead_lettered, 0);
    drop(mb);
    assert_eq!(
        observer.stats().messages_dead_lettered,
        0,
        "a handle is alive"
    );
    // Drain manually through the last handle instead: still adds up.
    let mut drained = 0;
    observer.drain_until_closed(|_| drained += 1);
    assert_eq!(drained, 70);
    let s = observer.stats();
    assert_eq!(s.total_messages_received, 100);
    assert_eq!(
        s.total_messages_processed + s.messages_dead_lettered + s.current_queue_size as u64,
        100
    );
    assert_eq!(s.total_messages_processed, 100);

    // Second mailbox: close with no handle left → dead letters counted in stats.
    let pid2 = AgentPid::new();
    let sender = manager.create_mailbox(pid2.clone()).unwrap();
    for i in 0..40 {
        sender.send(msg(0, Low, i)).unwrap();
    }
    let mb2 = manager.get_mailbox(&pid2).unwrap();
    for _ in 0..15 {
        mb2.receive().unwrap();
    }
    drop(mb2);
    manager.remove_mailbox(&pid2).unwrap();
    assert_eq!(manager.dead_letters().len(), 25);
    assert_eq!(sender.queue_size(), 0);
}

#[test]
fn stats_dead_lettered_counter() {
    // Closed (still registered) with leftovers; the last receiver handle goes: the
    // leftovers are dead-lettered and counted in `messages_dead_lettered`.
    let system = MessageSystem::new(RouterConfig::default());
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mb = system.get_mailbox(&pid).unwrap();
    for i in 0..20 {
        system.send(&pid, msg(0, Normal, i)).unwrap();
    }
    for _ in 0..5 {
        mb.receive().unwrap();
    }
    mb.close();
    let probe = mb.clone();
    drop(mb);
    assert_eq!(probe.stats().messages_dead_lettered, 0, "a handle is alive");
    drop(probe);
    let dead = system.dead_letters();
    assert_eq!(dead.len(), 15);
    assert!(dead
        .iter()
        .all(|d| d.reason == DeadLetterReason::MailboxClosed));
    let s = system.get_mailbox(&pid).unwrap().stats();
    assert_eq!(s.total_messages_received, 20);
    assert_eq!(s.total_messages_processed, 5);
    assert_eq!(s.messages_dead_lettered, 15);
    assert_eq!(s.current_queue_size, 0);
    let (_, all) = system.get_stats();
    assert_eq!(all, vec![s]);
}

#[test]
fn len_exact_across_blocks() {
    // tokio #6602: is_empty/len wrong at a block boundary (blocks hold 31 here).
    for n in 1..=257usize {
        let mb = mailbox();
        let p = PRIORITIES[n % 4];
        for i in 0..n {
            assert_eq!(mb.queue_size(), i);
            assert_eq!(mb.is_empty(), i == 0);
            mb.send_with_priority(msg(0, p, i as u64), p).unwrap();
        }
        assert_eq!(mb.queue_size(), n);
        assert!(!mb.is_empty());
        for i in 0..n {
            assert_eq!(tag(&mb.try_receive().unwrap().unwrap()).2, i as u64);
            assert_eq!(
                mb.queue_size(),
                n - i - 1,
                "n = {n}, after {} receives",
                i + 1
            );
            assert_eq!(mb.is_empty(), i + 1 == n);
        }
        assert!(mb.try_receive().unwrap().is_none());
        // Close at a boundary: len stays exact.
        mb.send_with_priority(msg(0, p, 0), p).unwrap();
        mb.close();
        assert_eq!(mb.queue_size(), 1);
        mb.receive().unwrap();
        assert_eq!(mb.queue_size(), 0);
        assert!(mb.is_empty());
    }
}

#[test]
fn len_exact_interleaved() {
    // One long-lived mailbox, send/receive phases of every length up to 257 so that the
    // head and tail sit at every offset of a block.
    let mb = mailbox();
    let mut expected = 0usize;
    let mut seq = 0u64;
    let mut next = 0u64;
    for n in 1..=257usize {
        for _ in 0..n {
            mb.send(msg(0, Normal, seq)).unwrap();
            seq += 1;
            expected += 1;
            assert_eq!(mb.queue_size(), expected);
        }
        for _ in 0..(n - n / 3) {
            assert_eq!(tag(&mb.try_receive().unwrap().unwrap()).2, next);
            next += 1;
            expected -= 1;
            assert_eq!(mb.queue_size(), expected);
            assert_eq!(mb.is_empty(), expected == 0);
        }
    }
}

// ===== configuration =====

#[test]
fn persistence_refused() {
    let config = MailboxConfig {
        enable_persistence: true,
        ..MailboxConfig::default()
    };
    check_refused(config);
}

#[test]
fn zero_stats_interval_refused() {
    let config = MailboxConfig {
        stats_interval: Duration::ZERO,
        ..MailboxConfig::default()
    };
    check_refused(config);
}

fn check_refused(config: MailboxConfig) {
    assert!(config.validate().is_err());
    assert!(matches!(
        AgentMailbox::try_new(AgentPid::new(), config.clone()),
        Err(MessagingError::Configuration(_))
    ));
    let mb = AgentMailbox::new(AgentPid::new(), config.clone());
    let conf = |r: Result<_, MessagingError>| matches!(r, Err(MessagingError::Configuration(_)));
    assert!(conf(mb.send(msg(0, Normal, 0))));
    assert!(conf(mb.send_with_priority(msg(0, High, 0), High)));
    assert!(conf(mb.sender().send(msg(0, Normal, 0))));
    assert!(conf(mb.receive().map(|_| ())));
    assert!(conf(mb.receive_timeout(Duration::from_secs(5)).map(|_| ())));
    assert!(conf(mb.try_receive().map(|_| ())));
    assert!(conf(block_on(mb.receive_async()).map(|_| ())));
    // try_send hands the message back.
    match mb.try_send(msg(0, Low, 1), Low) {
        Err(TrySendError::Closed(back)) => assert_eq!(tag(&back), (0, Low, 1)),
        other => panic!("expected the message back, got {other:?}"),
    }
    assert_eq!(mb.queue_size(), 0);
    // Through a manager and a system.
    assert!(matches!(
        MailboxManager::new(config.clone()).create_mailbox(AgentPid::new()),
        Err(MessagingError::Configuration(_))
    ));
    assert!(matches!(
        MessageSystem::builder(RouterConfig::default())
            .mailbox_config(config.clone())
            .build(),
        Err(MessagingError::Configuration(_))
    ));
}

// ===== drops =====

/// Payloads count their drops; each id may be dropped once.
struct Token(u64);

static DROPPED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

impl Drop for Token {
    fn drop(&mut self) {
        let mut dropped = DROPPED.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            dropped.get_or_insert_with(HashSet::new).insert(self.0),
            "token {} dropped twice",
            self.0
        );
    }
}

fn token(id: u64) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), Token(id))
}

fn is_dropped(id: u64) -> bool {
    DROPPED
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|d| d.contains(&id))
}

fn dropped_count() -> usize {
    DROPPED.lock().unwrap().as_ref().map_or(0, |d| d.len())
}

#[test]
fn drops() {
    const RUNS: u64 = 100;
    const STEPS: usize = 2_000;
    let mut rng = XorShift::from_state(0x2545_F491_4F6C_DD1D);
    let mut next_id = 0u64;
    for run in 0..RUNS {
        let created_before = next_id;
        let cap = match rng.below(3) {
            0 => 0,
            _ => 1 + rng.below(40) as usize,
        };
        let via_manager = rng.below(2) == 0;
        let manager = MailboxManager::new(MailboxConfig {
            max_messages: cap,
            preserve_order: rng.below(2) == 0,
            ..MailboxConfig::default()
        });
        let pid = AgentPid::new();
        let (mut handles, mut senders) = if via_manager {
            let s = manager.create_mailbox(pid.clone()).unwrap();
            (vec![manager.get_mailbox(&pid).unwrap()], vec![s])
        } else {
            let mb = AgentMailbox::new(
                pid.clone(),
                MailboxConfig {
                    max_messages: cap,
                    ..MailboxConfig::default()
                },
            );
            let s = mb.sender();
            (vec![mb], vec![s])
        };
        let mut dead_drained = 0usize;
        for _ in 0..STEPS {
            let p = PRIORITIES[rng.below(4) as usize];
            match rng.below(100) {
                0..=39 => {
                    let id = next_id;
                    next_id += 1;
                    if let Some(s) = senders.first() {
                        match s.try_send(token(id), p) {
                            Ok(()) => assert!(!is_dropped(id)),
                            Err(e) => {
                                drop(e);
                                assert!(is_dropped(id), "refused token dropped with the error");
                            }
                        }
                    } else if let Some(h) = handles.first() {
                        match h.try_send(token(id), p) {
                            Ok(()) => {}
                            Err(e) => drop(e.into_inner()),
                        }
                    } else {
                        drop(token(id));
                    }
                }
                40..=54 => {
                    // `send`: refused messages go to the dead letters.
                    let id = next_id;
                    next_id += 1;
                    match handles.first() {
                        Some(h) => {
                            let _ = h.send_with_priority(token(id), p);
                        }
                        None => drop(token(id)),
                    }
                }
                55..=84 => {
                    if let Some(h) = handles.first() {
                        match h.try_receive() {
                            Ok(Some(m)) => {
                                let id = m.payload::<Token>().unwrap().0;
                                drop(m);
                                assert!(is_dropped(id));
                            }
                            Ok(None) | Err(MessagingError::ChannelClosed(_)) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
                85..=87 => {
                    if let Some(h) = handles.first() {
                        h.close();
                    }
                }
                88..=89 => {
                    if via_manager && rng.below(2) == 0 {
                        let _ = manager.remove_mailbox(&pid);
                    }
                }
                90..=93 => {
                    if let Some(h) = handles.first() {
                        handles.push(h.clone());
                    }
                }
                94..=96 => {
                    if !handles.is_empty() {
                        let i = rng.below(handles.len() as u64) as usize;
                        handles.swap_remove(i);
                    }
                }
                97 => {
                    if !senders.is_empty() {
                        senders.pop();
                    } else if let Some(h) = handles.first() {
                        senders.push(h.sender());
                    }
                }
                _ => {
                    dead_drained += manager.dead_letters().len();
                }
            }
        }
        drop(handles);
        drop(senders);
        dead_drained += manager.dead_letters().len();
        drop(manager);
        let _ = dead_drained;
        // Every token made in this run is dropped exactly once (double drops panic).
        for id in created_before..next_id {
            assert!(is_dropped(id), "run {run}: token {id} leaked");
        }
    }
    assert_eq!(dropped_count() as u64, next_id);
}

// ===== dead-lettered calls =====

#[test]
fn dead_lettered_call_fails_caller() {
    use terraphim_agent_messaging::ReplyError;
    let manager = MailboxManager::new(MailboxConfig {
        max_messages: 1,
        ..MailboxConfig::default()
    });
    let pid = AgentPid::new();
    let tx = manager.create_mailbox(pid.clone()).unwrap();
    let (first, first_reply) = AgentMessage::call(AgentPid::new(), 1u64, Duration::MAX);
    tx.send(first).unwrap();
    // Refused (full) and dead-lettered: the caller learns at once.
    let (second, second_reply) = AgentMessage::call(AgentPid::new(), 2u64, Duration::MAX);
    assert!(matches!(
        tx.send(second),
        Err(MessagingError::MailboxFull(_))
    ));
    assert_eq!(
        within(5, move || second_reply.recv().map(|_| ())),
        Err(ReplyError::Closed)
    );
    // Left queued when the mailbox closes with no receiver: the caller learns too.
    manager.remove_mailbox(&pid).unwrap();
    assert_eq!(
        within(5, move || first_reply.recv().map(|_| ())),
        Err(ReplyError::Closed)
    );
    let dead = manager.dead_letters();
    assert_eq!(dead.len(), 2);
    for d in dead {
        match d.message {
            DeadMessage::Message(AgentMessage::Call { reply_to, .. }) => {
                assert!(reply_to.is_closed());
                assert!(reply_to.send(Box::new(0u8)).is_err(), "handed back");
            }
            other => panic!("expected a call, got {other:?}"),
        }
    }
}

// ===== receive_many =====

#[test]
fn receive_many_takes_ready_messages_in_drain_order() {
    let mb = mailbox();
    let tx = mb.sender();
    for seq in 0..6 {
        tx.try_send(msg(0, Normal, seq), Normal).unwrap();
    }
    tx.try_send(msg(0, High, 100), High).unwrap();
    let mut buf = Vec::new();
    assert_eq!(mb.receive_many(&mut buf, 3).unwrap(), 3);
    // High first, then Normal in FIFO order.
    let tags: Vec<_> = buf.iter().map(tag).collect();
    assert_eq!(tags, [(0, High, 100), (0, Normal, 0), (0, Normal, 1)]);
    // Appends; takes only what is ready, up to the limit.
    assert_eq!(mb.receive_many(&mut buf, 100).unwrap(), 4);
    let seqs: Vec<_> = buf[3..].iter().map(|m| tag(m).2).collect();
    assert_eq!(seqs, [2, 3, 4, 5]);
    assert!(mb.is_empty());
    let stats = mb.stats();
    assert_eq!(stats.total_messages_processed, 7);
    assert_eq!(stats.current_queue_size, 0);
}

#[test]
fn receive_many_with_zero_limit_returns_at_once() {
    let mb = mailbox();
    let mut buf = Vec::new();
    // Nothing queued: a zero limit must not block.
    assert_eq!(within(5, move || mb.receive_many(&mut buf, 0)).unwrap(), 0);
    // A huge limit takes only what is ready and does not preallocate it.
    let mb = mailbox();
    mb.sender().try_send(msg(0, Normal, 0), Normal).unwrap();
    let mut buf = Vec::new();
    assert_eq!(mb.receive_many(&mut buf, usize::MAX).unwrap(), 1);
    assert!(buf.capacity() < 1024);
}

#[test]
fn receive_many_blocks_until_a_message_arrives() {
    let mb = mailbox();
    let tx = mb.sender();
    let got = within(10, move || {
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.try_send(msg(1, Normal, 7), Normal).unwrap();
        });
        let mut buf = Vec::new();
        let n = mb.receive_many(&mut buf, 8).unwrap();
        sender.join().unwrap();
        (n, buf.iter().map(tag).collect::<Vec<_>>())
    });
    assert_eq!(got, (1, vec![(1, Normal, 7)]));
}

#[test]
fn receive_many_drains_then_reports_close() {
    let mb = mailbox();
    let tx = mb.sender();
    for seq in 0..3 {
        tx.try_send(msg(0, Normal, seq), Normal).unwrap();
    }
    mb.close();
    let mut buf = Vec::new();
    assert_eq!(mb.receive_many(&mut buf, 10).unwrap(), 3);
    assert!(matches!(
        mb.receive_many(&mut buf, 10),
        Err(MessagingError::ChannelClosed(_))
    ));
    assert_eq!(buf.len(), 3);
}

#[test]
fn receive_many_async_takes_a_batch_and_is_cancel_safe() {
    let mb = mailbox();
    let tx = mb.sender();
    // Polled once while empty, then dropped: nothing is lost.
    {
        let mut buf = Vec::new();
        let mut pending = pin!(mb.receive_many_async(&mut buf, 4));
        let (_, waker) = thread_waker();
        assert!(pending
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    for seq in 0..5 {
        tx.try_send(msg(2, Normal, seq), Normal).unwrap();
    }
    let mut buf = Vec::new();
    assert_eq!(block_on(mb.receive_many_async(&mut buf, 4)).unwrap(), 4);
    assert_eq!(block_on(mb.receive_many_async(&mut buf, 4)).unwrap(), 1);
    let seqs: Vec<_> = buf.iter().map(|m| tag(m).2).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    // The claim was released: a plain receive works again.
    tx.try_send(msg(2, Normal, 5), Normal).unwrap();
    assert_eq!(tag(&mb.try_receive().unwrap().unwrap()).2, 5);
}
