//! Mailbox models L1–L7: lanes across block boundaries, priorities, send vs close,
//! last-handle drop, bounded capacity, park/unpark, and a receiver giving its lane
//! blocks back before it sleeps.

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadMessage, MailboxConfig, MailboxManager,
    MailboxSender, MessagePriority, MessagingError, TrySendError,
};

use crate::{assert_all_dropped, model, spawn, tag, tagged};

const NORMAL: MessagePriority = MessagePriority::Normal;
const HIGH: MessagePriority = MessagePriority::High;
const LOW: MessagePriority = MessagePriority::Low;

fn unbounded() -> AgentMailbox {
    AgentMailbox::new(AgentPid::new(), MailboxConfig::default())
}

fn bounded(max_messages: usize) -> AgentMailbox {
    let config = MailboxConfig {
        max_messages,
        ..MailboxConfig::default()
    };
    AgentMailbox::new(AgentPid::new(), config)
}

/// Receives with `try_receive` until `n` messages arrived, yielding to loom in between.
/// Installs the extra lanes (and the producers' cached pointer to them) with a `Low`
/// message from `sender`, then receives it.
fn install_extra_lanes(mailbox: &AgentMailbox, token: &Arc<()>, sender: u8) {
    mailbox
        .sender()
        .try_send(tagged(token, sender, 0), LOW)
        .unwrap();
    assert_eq!(tag(&mailbox.receive().unwrap()), (sender, 0));
}

fn receive_n(mailbox: &AgentMailbox, n: usize) -> Vec<(u8, u8)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match mailbox.try_receive().expect("mailbox is open") {
            Some(message) => got.push(tag(&message)),
            None => thread::yield_now(),
        }
    }
    got
}

/// Takes `n` messages that must all be ready now (every send returned before).
#[track_caller]
fn take_ready(mailbox: &AgentMailbox, n: usize) -> Vec<(u8, u8)> {
    (0..n)
        .map(|i| {
            let message = mailbox.try_receive().expect("mailbox is open");
            tag(&message.unwrap_or_else(|| panic!("message {i} of {n} sent but not ready")))
        })
        .collect()
}

/// Receives until `ChannelClosed`, returning the tags in order.
fn receive_until_closed(mailbox: &AgentMailbox) -> Vec<(u8, u8)> {
    let mut got = Vec::new();
    loop {
        match mailbox.receive() {
            Ok(message) => got.push(tag(&message)),
            Err(MessagingError::ChannelClosed(_)) => return got,
            Err(e) => panic!("unexpected receive error: {e}"),
        }
    }
}

/// Asserts that the messages of each sender arrived in sequence order, without gaps.
#[track_caller]
fn assert_fifo_per_sender(got: &[(u8, u8)], senders: usize) {
    let mut next = vec![0u8; senders];
    for &(sender, seq) in got {
        assert_eq!(
            seq, next[sender as usize],
            "sender {sender} out of order: {got:?}"
        );
        next[sender as usize] += 1;
    }
}

/// Sends and reports `Ok` as true; a refused message must come back as `Closed`.
fn send_or_closed(
    sender: &MailboxSender,
    message: AgentMessage,
    priority: MessagePriority,
) -> bool {
    match sender.try_send(message, priority) {
        Ok(()) => true,
        Err(TrySendError::Closed(message)) => {
            drop(message);
            false
        }
        Err(TrySendError::Full(_)) => panic!("unbounded mailbox reported Full"),
    }
}

// ===== L1: two producers, block boundaries =====

/// L1: 2 producers × 2 messages fill two blocks (and install a third): each message
/// arrives exactly once, FIFO per producer, and the mailbox is empty afterwards.
#[test]
fn l1_two_producers() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let producers: Vec<_> = (0..2u8)
            .map(|p| {
                let sender = mailbox.sender();
                let token = token.clone();
                spawn(move || {
                    for seq in 0..2 {
                        sender.try_send(tagged(&token, p, seq), NORMAL).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(mailbox.queue_size(), 4);
        let got = take_ready(&mailbox, 4);
        assert_fifo_per_sender(&got, 2);
        assert!(mailbox.try_receive().unwrap().is_none());
        assert!(mailbox.is_empty());
        assert_eq!(mailbox.stats().total_messages_processed, 4);
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// One producer sends `n` messages while the receiver pops them concurrently, in order.
#[track_caller]
fn one_producer_concurrent_receiver(n: u8) {
    model(move || {
        let token = Arc::new(());
        let mailbox = unbounded();
        let sender = mailbox.sender();
        let t = token.clone();
        let producer = spawn(move || {
            for seq in 0..n {
                sender.try_send(tagged(&t, 0, seq), NORMAL).unwrap();
            }
        });
        let got = receive_n(&mailbox, usize::from(n));
        assert_eq!(got, (0..n).map(|seq| (0, seq)).collect::<Vec<_>>());
        producer.join().unwrap();
        assert!(mailbox.try_receive().unwrap().is_none());
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L1b: one producer sends 3 messages (crossing a block boundary) while the receiver
/// pops concurrently, leaving the first block under the producer's feet.
#[test]
fn l1_concurrent_receive_across_blocks() {
    one_producer_concurrent_receiver(3);
}

/// L1d: blocks are recycled. One producer sends 5 messages (three blocks of two under
/// loom) while the receiver pops: the block the receiver leaves first is parked as the
/// spare and may be the one the producer installs third, written while the receiver
/// still reads the second.
#[test]
fn l1_recycled_block_under_a_live_producer() {
    one_producer_concurrent_receiver(5);
}

/// L1c: a send that returned is visible to a receive at once (tokio #2020), even while
/// another producer is still installing the lane's first block or writing an earlier
/// slot: `receive` gets a message without waiting for anything but that earlier write
/// (it parks, and that write wakes it: loom reports a deadlock otherwise), and once
/// every send returned, `try_receive` finds both.
#[test]
fn l1_returned_send_is_visible() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let (s0, t0) = (mailbox.sender(), token.clone());
        let p0 = spawn(move || s0.try_send(tagged(&t0, 0, 0), NORMAL).unwrap());
        let sent = Arc::new(AtomicBool::new(false));
        let (s1, t1, done) = (mailbox.sender(), token.clone(), sent.clone());
        let p1 = spawn(move || {
            s1.try_send(tagged(&t1, 1, 0), NORMAL).unwrap();
            done.store(true, SeqCst);
        });
        let mut got = Vec::new();
        if sent.load(SeqCst) {
            got.push(tag(&mailbox.receive().unwrap()));
        }
        p0.join().unwrap();
        p1.join().unwrap();
        while got.len() < 2 {
            let message = mailbox.try_receive().unwrap().expect("all sends returned");
            got.push(tag(&message));
        }
        got.sort_unstable();
        assert_eq!(got, [(0, 0), (1, 0)]);
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

// ===== L2: priorities =====

/// L2: A sends Low then High, B sends High; drained after join, both Highs come before
/// the Low, and each (sender, priority) stays FIFO.
#[test]
fn l2_priority_order() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let (sa, ta) = (mailbox.sender(), token.clone());
        let a = spawn(move || {
            sa.try_send(tagged(&ta, 0, 0), LOW).unwrap();
            sa.try_send(tagged(&ta, 0, 1), HIGH).unwrap();
        });
        let (sb, tb) = (mailbox.sender(), token.clone());
        let b = spawn(move || {
            sb.try_send(tagged(&tb, 1, 0), HIGH).unwrap();
        });
        a.join().unwrap();
        b.join().unwrap();
        let got = take_ready(&mailbox, 3);
        let mut highs = got[..2].to_vec();
        highs.sort_unstable();
        assert_eq!(highs, [(0, 1), (1, 0)], "Highs first: {got:?}");
        assert_eq!(got[2], (0, 0), "Low last: {got:?}");
        assert!(mailbox.try_receive().unwrap().is_none());
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// Pops the receiver of L2b attempts while the senders run.
const CONCURRENT_POPS: usize = 2;

/// L2b: the receiver pops with `try_receive` while A sends Low then High and B sends
/// High (both racing to allocate the extra lanes): every message arrives exactly once,
/// and a pop that starts after B's send returned never takes A's Low before B's High.
#[test]
fn l2_concurrent_receive() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let (sa, ta) = (mailbox.sender(), token.clone());
        let a = spawn(move || {
            sa.try_send(tagged(&ta, 0, 0), LOW).unwrap();
            sa.try_send(tagged(&ta, 0, 1), HIGH).unwrap();
        });
        let b_sent = Arc::new(AtomicBool::new(false));
        let (sb, tb, done) = (mailbox.sender(), token.clone(), b_sent.clone());
        let b = spawn(move || {
            sb.try_send(tagged(&tb, 1, 0), HIGH).unwrap();
            done.store(true, SeqCst);
        });
        // A bounded number of concurrent pops (an unbounded polling loop multiplies
        // loom's branches), then the rest after the joins.
        let mut got = Vec::new();
        let pop = |got: &mut Vec<(u8, u8)>| {
            let b_was_sent = b_sent.load(SeqCst);
            let Some(message) = mailbox.try_receive().unwrap() else {
                return false;
            };
            let t = tag(&message);
            if t == (0, 0) && b_was_sent {
                assert!(got.contains(&(1, 0)), "Low before a queued High: {got:?}");
            }
            got.push(t);
            true
        };
        for _ in 0..CONCURRENT_POPS {
            pop(&mut got);
        }
        a.join().unwrap();
        b.join().unwrap();
        // Every send returned: each remaining message is ready now.
        while got.len() < 3 {
            assert!(pop(&mut got), "a sent message is not ready: {got:?}");
        }
        let mut all = got.clone();
        all.sort_unstable();
        assert_eq!(all, [(0, 0), (0, 1), (1, 0)], "exactly once: {got:?}");
        assert!(mailbox.try_receive().unwrap().is_none());
        assert!(mailbox.is_empty());
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

// ===== L3: send vs close =====

/// L3: one send races `close`, then the receiver drains until `ChannelClosed` while the
/// sender may still be mid-push. The send is `Err(Closed(msg))` (handed back) or the
/// message is received: never `Ok` and stranded.
///
/// With `installed_before`, an earlier `Low` send (already received) installed the
/// extra lanes, so the racing send finds them through the producers' cached pointer.
fn send_races_close(priority: MessagePriority, installed_before: bool) {
    model(move || {
        let token = Arc::new(());
        let mailbox = unbounded();
        if installed_before {
            install_extra_lanes(&mailbox, &token, 1);
        }
        let (sender, t) = (mailbox.sender(), token.clone());
        let producer = spawn(move || send_or_closed(&sender, tagged(&t, 0, 0), priority));
        mailbox.close();
        let got = receive_until_closed(&mailbox);
        let ok = producer.join().unwrap();
        assert_eq!(
            got.len(),
            usize::from(ok),
            "Ok send must be received: {got:?}"
        );
        // Closed stays closed and drained.
        assert!(matches!(
            mailbox.try_receive(),
            Err(MessagingError::ChannelClosed(_))
        ));
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

#[test]
fn l3_send_races_close_normal() {
    send_races_close(NORMAL, false);
}

/// The High lane is allocated lazily: its install races close's sentinel swap.
#[test]
fn l3_send_races_close_high() {
    send_races_close(HIGH, false);
}

/// A High send through the producers' cached pointer races close's marking of the
/// extra lanes.
#[test]
fn l3_cached_extra_lane_send_races_close() {
    send_races_close(HIGH, true);
}

/// L3b: two sends (filling a block and installing the next) race close: the accepted
/// ones are a prefix, all of them are received in order, the rest come back.
#[test]
fn l3_two_sends_race_close() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let (sender, t) = (mailbox.sender(), token.clone());
        let producer = spawn(move || {
            let first = send_or_closed(&sender, tagged(&t, 0, 0), NORMAL);
            let second = send_or_closed(&sender, tagged(&t, 0, 1), NORMAL);
            assert!(first || !second, "Ok after Closed");
            usize::from(first) + usize::from(second)
        });
        mailbox.close();
        let got = receive_until_closed(&mailbox);
        let oks = producer.join().unwrap();
        assert_eq!(got.len(), oks, "every Ok send is received: {got:?}");
        assert_fifo_per_sender(&got, 1);
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

// ===== L4: last receiver handle vs sends =====

/// L4: a sender sends twice while main unregisters the agent and drops the last
/// `AgentMailbox`: every `Ok` message ends in the dead letters exactly once (in order),
/// every refused one comes back, nothing leaks or is freed twice.
#[test]
fn l4_last_handle_drop_vs_sends() {
    model(|| {
        let token = Arc::new(());
        let manager = MailboxManager::new(MailboxConfig::default());
        let pid = AgentPid::new();
        let sender = manager.create_mailbox(pid.clone()).unwrap();
        let mailbox = manager.get_mailbox(&pid).unwrap();
        let t = token.clone();
        let producer = spawn(move || {
            let first = send_or_closed(&sender, tagged(&t, 0, 0), NORMAL);
            let second = send_or_closed(&sender, tagged(&t, 0, 1), NORMAL);
            usize::from(first) + usize::from(second)
        });
        manager.remove_mailbox(&pid).unwrap();
        drop(mailbox);
        let oks = producer.join().unwrap();
        let dead: Vec<(u8, u8)> = manager
            .dead_letters()
            .into_iter()
            .map(|d| match d.message {
                DeadMessage::Message(m) => tag(&m),
                DeadMessage::Envelope(_) => panic!("not an envelope"),
            })
            .collect();
        assert_eq!(
            dead.len(),
            oks,
            "each Ok message dead-lettered once: {dead:?}"
        );
        assert_fifo_per_sender(&dead, 1);
        drop(manager);
        assert_all_dropped(&token);
    });
}

/// L4b: `close` on one thread races the drop of the last `AgentMailbox` on another,
/// with one message queued: exactly one of them drains it to the dead letters.
#[test]
fn l4_close_races_last_handle_drop() {
    model(|| {
        let token = Arc::new(());
        let manager = Arc::new(MailboxManager::new(MailboxConfig::default()));
        let pid = AgentPid::new();
        let sender = manager.create_mailbox(pid.clone()).unwrap();
        sender.try_send(tagged(&token, 0, 0), NORMAL).unwrap();
        let mailbox = manager.get_mailbox(&pid).unwrap();
        let (m, p) = (manager.clone(), pid.clone());
        let closer = spawn(move || m.remove_mailbox(&p).unwrap());
        drop(mailbox);
        closer.join().unwrap();
        assert_eq!(
            manager.dead_letters().len(),
            1,
            "the queued message is dead-lettered"
        );
        assert!(sender.is_closed());
        drop(sender);
        drop(manager);
        assert_all_dropped(&token);
    });
}

// ===== L5: bounded capacity =====

/// L5: capacity 1, two senders, nothing received: exactly one `Ok`, the other gets its
/// message back as `Full`, and the length never exceeds 1.
#[test]
fn l5_capacity_one_two_senders() {
    model(|| {
        let token = Arc::new(());
        let mailbox = bounded(1);
        let senders: Vec<_> = (0..2u8)
            .map(|p| {
                let (sender, t) = (mailbox.sender(), token.clone());
                spawn(move || match sender.try_send(tagged(&t, p, 0), NORMAL) {
                    Ok(()) => true,
                    Err(TrySendError::Full(m)) => {
                        assert_eq!(tag(&m), (p, 0));
                        false
                    }
                    Err(TrySendError::Closed(_)) => panic!("mailbox is open"),
                })
            })
            .collect();
        assert!(mailbox.queue_size() <= 1);
        assert!(mailbox.queue_size() <= 1);
        let oks = senders
            .into_iter()
            .map(|s| s.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(oks, 1, "capacity 1 admits exactly one message");
        assert_eq!(mailbox.queue_size(), 1);
        assert_eq!(take_ready(&mailbox, 1).len(), 1);
        assert!(mailbox.is_empty());
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L5b: capacity 1 with one message queued; a sender retries while the receiver takes
/// the queued one: the length never exceeds 1 and the sender gets in only after a pop.
#[test]
fn l5_capacity_one_send_vs_receive() {
    model(|| {
        let token = Arc::new(());
        let mailbox = bounded(1);
        mailbox.try_send(tagged(&token, 0, 0), NORMAL).unwrap();
        let (sender, t) = (mailbox.sender(), token.clone());
        let producer = spawn(move || {
            let ok = match sender.try_send(tagged(&t, 1, 0), NORMAL) {
                Ok(()) => true,
                Err(TrySendError::Full(m)) => {
                    drop(m);
                    false
                }
                Err(TrySendError::Closed(_)) => panic!("mailbox is open"),
            };
            assert!(sender.queue_size() <= 1);
            ok
        });
        let first = mailbox.try_receive().unwrap().map(|m| tag(&m));
        assert!(mailbox.queue_size() <= 1);
        // The pre-queued message is ready before the receiver starts.
        assert_eq!(first, Some((0, 0)));
        if producer.join().unwrap() {
            // Capacity was freed by the pop of the first message.
            assert_eq!(take_ready(&mailbox, 1), [(1, 0)]);
        }
        assert!(mailbox.try_receive().unwrap().is_none());
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L5c: `queue_size`/`is_empty` stay exact while another thread closes, at lengths
/// around a block boundary (0, 1, BLOCK_CAP − 1 … BLOCK_CAP + 1 with BLOCK_CAP = 2).
#[test]
fn l5_len_during_close() {
    for n in 0..=3u8 {
        model(move || {
            let token = Arc::new(());
            let mailbox = unbounded();
            for seq in 0..n {
                mailbox.try_send(tagged(&token, 0, seq), NORMAL).unwrap();
            }
            let closer = {
                let mailbox = mailbox.clone();
                spawn(move || mailbox.close())
            };
            assert_eq!(mailbox.queue_size(), usize::from(n));
            assert_eq!(mailbox.is_empty(), n == 0);
            closer.join().unwrap();
            assert_eq!(mailbox.queue_size(), usize::from(n));
            assert_eq!(receive_until_closed(&mailbox).len(), usize::from(n));
            assert!(mailbox.is_empty());
            drop(mailbox);
            assert_all_dropped(&token);
        });
    }
}

// ===== L6: park / unpark =====

/// A receiver thread blocks in `receive` on `mailbox` while this thread sends it
/// message `(0, seq)` at `priority`: the receiver gets exactly that message (loom
/// reports a deadlock if the wake is lost), and nothing is left behind.
fn send_to_parked_receiver(
    mailbox: AgentMailbox,
    token: &Arc<()>,
    seq: u8,
    priority: MessagePriority,
) {
    let receiver = {
        let mailbox = mailbox.clone();
        spawn(move || tag(&mailbox.receive().unwrap()))
    };
    mailbox
        .sender()
        .try_send(tagged(token, 0, seq), priority)
        .unwrap();
    assert_eq!(receiver.join().unwrap(), (0, seq));
    drop(mailbox);
    assert_all_dropped(token);
}

/// L6: the receiver blocks in `receive`; a send wakes it (no lost wake-up: loom reports
/// a deadlock if the receiver stays parked).
#[test]
fn l6_send_wakes_parked_receiver() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || tag(&mailbox.receive().unwrap()))
        };
        mailbox.sender().send(tagged(&token, 0, 0)).unwrap();
        assert_eq!(receiver.join().unwrap(), (0, 0));
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L6b: `close` while the receiver is parked: it wakes with `ChannelClosed`.
#[test]
fn l6_close_wakes_parked_receiver() {
    model(|| {
        let mailbox = unbounded();
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || mailbox.receive().map(|m| tag(&m)))
        };
        mailbox.close();
        assert!(matches!(
            receiver.join().unwrap(),
            Err(MessagingError::ChannelClosed(_))
        ));
    });
}

/// L6c: send then close while the receiver is parked: it gets the message, then
/// `ChannelClosed`.
#[test]
fn l6_send_then_close_wakes_parked_receiver() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || receive_until_closed(&mailbox))
        };
        mailbox.sender().send(tagged(&token, 0, 0)).unwrap();
        mailbox.close();
        assert_eq!(receiver.join().unwrap(), [(0, 0)]);
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L6d: the async path: the receiver task waits in `receive_async` (a `Waker` in the
/// wait cell) and a send wakes it.
#[test]
fn l6_send_wakes_async_receiver() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || tag(&crate::block_on(mailbox.receive_async()).unwrap()))
        };
        mailbox.sender().send(tagged(&token, 0, 0)).unwrap();
        assert_eq!(receiver.join().unwrap(), (0, 0));
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L6e: a `High` send wakes a parked receiver, whether the sender installs the extra
/// lanes while the receiver waits or finds them through the producers' cached pointer
/// (installed by an earlier `Low` send, already received).
fn extra_lane_send_wakes_parked_receiver(installed_before: bool) {
    model(move || {
        let token = Arc::new(());
        let mailbox = unbounded();
        if installed_before {
            install_extra_lanes(&mailbox, &token, 0);
        }
        send_to_parked_receiver(mailbox, &token, 1, HIGH);
    });
}

#[test]
fn l6_extra_lane_install_wakes_parked_receiver() {
    extra_lane_send_wakes_parked_receiver(false);
}

#[test]
fn l6_cached_extra_lane_send_wakes_parked_receiver() {
    extra_lane_send_wakes_parked_receiver(true);
}

/// L2c: two producers race to install the extra lanes; the loser, or a later look, may
/// find them through the winner's cached pointer, whose lanes it must then see fully
/// built. After the joins both messages are there, exactly once. (A parked receiver
/// woken through the cache is L6e.)
#[test]
fn l2_two_producers_race_extra_lane_install_and_cache() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        let (sender, t) = (mailbox.sender(), token.clone());
        let b = spawn(move || sender.try_send(tagged(&t, 1, 0), HIGH).unwrap());
        mailbox
            .sender()
            .try_send(tagged(&token, 0, 0), HIGH)
            .unwrap();
        b.join().unwrap();
        let mut got = take_ready(&mailbox, 2);
        got.sort_unstable();
        assert_eq!(got, [(0, 0), (1, 0)]);
        assert!(mailbox.try_receive().unwrap().is_none());
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

// ===== L7: a receiver gives its blocks back before sleeping =====

/// Sends `n` messages from sender 9 at `priority` and receives them: every lane used
/// holds a block (and, past a boundary, a spare) when the model starts.
fn used(mailbox: &AgentMailbox, token: &Arc<()>, priority: MessagePriority, n: u8) {
    for seq in 0..n {
        mailbox
            .sender()
            .try_send(tagged(token, 9, seq), priority)
            .unwrap();
    }
    assert_eq!(take_ready(mailbox, usize::from(n)).len(), usize::from(n));
}

/// L7: the receiver blocks in `receive` on a mailbox that has carried messages: its last
/// look before sleeping trims the empty lanes (freeing the block and the spare) while a
/// send of `priority` races it. The send either claims before the trim (which then
/// keeps the block) or installs a fresh block; either way it wakes the receiver (loom
/// reports a deadlock otherwise), and no block leaks or is freed twice.
fn send_wakes_a_receiver_trimming_before_sleep(priority: MessagePriority) {
    model(move || {
        let token = Arc::new(());
        let mailbox = unbounded();
        used(&mailbox, &token, NORMAL, 3);
        if priority != NORMAL {
            used(&mailbox, &token, priority, 3);
        }
        send_to_parked_receiver(mailbox, &token, 0, priority);
    });
}

#[test]
fn l7_normal_send_wakes_a_receiver_trimming_before_sleep() {
    send_wakes_a_receiver_trimming_before_sleep(NORMAL);
}

/// The extra lanes are trimmed too (they stay allocated; their blocks go).
#[test]
fn l7_high_send_wakes_a_receiver_trimming_before_sleep() {
    send_wakes_a_receiver_trimming_before_sleep(HIGH);
}

/// L7b: the async path: the receiver task's poll trims before returning `Pending`.
#[test]
fn l7_send_wakes_an_async_receiver_trimming_before_pending() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        used(&mailbox, &token, NORMAL, 3);
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || tag(&crate::block_on(mailbox.receive_async()).unwrap()))
        };
        mailbox.sender().send(tagged(&token, 0, 0)).unwrap();
        assert_eq!(receiver.join().unwrap(), (0, 0));
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L7c: two sends (the second crossing into a new block) race a receiver that takes
/// them with `receive`, trimming each time it is about to sleep: both arrive, in
/// order.
#[test]
fn l7_two_sends_race_a_receiver_trimming_between_them() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        used(&mailbox, &token, NORMAL, 1);
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || {
                let first = tag(&mailbox.receive().unwrap());
                let second = tag(&mailbox.receive().unwrap());
                [first, second]
            })
        };
        let sender = mailbox.sender();
        sender.try_send(tagged(&token, 0, 0), NORMAL).unwrap();
        sender.try_send(tagged(&token, 0, 1), NORMAL).unwrap();
        assert_eq!(receiver.join().unwrap(), [(0, 0), (0, 1)]);
        drop(mailbox);
        assert_all_dropped(&token);
    });
}

/// L7d: close races a receiver trimming before it sleeps, with a send in flight: the
/// send is received or handed back, the receiver ends with `ChannelClosed`, and the
/// closed lanes' blocks are freed exactly once.
#[test]
fn l7_close_races_a_receiver_trimming_before_sleep() {
    model(|| {
        let token = Arc::new(());
        let mailbox = unbounded();
        used(&mailbox, &token, NORMAL, 1);
        let receiver = {
            let mailbox = mailbox.clone();
            spawn(move || receive_until_closed(&mailbox))
        };
        let ok = send_or_closed(&mailbox.sender(), tagged(&token, 0, 0), NORMAL);
        mailbox.close();
        let got = receiver.join().unwrap();
        assert_eq!(got.len(), usize::from(ok), "{got:?}");
        drop(mailbox);
        assert_all_dropped(&token);
    });
}
