//! Mailbox state machine: random operation sequences (send/try_send through senders and
//! handles, bursts across block boundaries, try_receive, receive, close, remove, handle
//! and sender clones and drops) run against a `VecDeque`-per-priority model, in strict
//! priority order and with an anti-starvation budget.
//!
//! Checked after every operation: each dequeue is the model's head (strict: of the
//! highest non-empty priority; budget: of its own priority, and no head waits more than
//! `budget + 4` dequeues); seq strictly increases per (sender, priority); `Full(msg)` /
//! `Closed(msg)` exactly when the model says so, handing back the message sent; after
//! close the rest drains, then `ChannelClosed`; leftovers of a closed mailbox with no
//! handle go to the dead letters; `is_empty`, `queue_size` and every stats counter
//! match the model.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadLetter, DeadLetterReason, DeadMessage, MailboxConfig,
    MailboxSender, MessageSystem, MessagingError, RouterConfig, TimerDriver, TrySendError,
};

mod common;
use common::PRIORITIES;

/// Distinct logical senders (the `sender` of each message's payload).
const SENDERS: usize = 3;

/// `(sender, priority index, seq)`: what every message carries.
type Tag = (usize, usize, u64);

#[derive(Debug, Clone, Copy)]
enum Via {
    /// `MailboxSender::try_send`.
    TrySender,
    /// `MailboxSender::send_with_priority` (refused → dead letter).
    SendSender,
    /// `AgentMailbox::try_send`.
    TryHandle,
    /// `AgentMailbox::send_with_priority` (refused → dead letter).
    SendHandle,
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        sender: usize,
        prio: usize,
        via: Via,
    },
    /// `n` try_sends in a row: crosses the lanes' 31-slot blocks.
    Burst {
        sender: usize,
        prio: usize,
        n: usize,
    },
    TryRecv,
    /// `receive()` (only when the model says it will not block) or
    /// `receive_timeout(ZERO)`.
    Recv {
        zero_timeout: bool,
    },
    /// `close()` on a handle (or `remove_mailbox` if there is none), or
    /// `remove_mailbox`.
    Close {
        remove: bool,
    },
    NewSender,
    DropSender,
    CloneHandle,
    DropHandle,
}

#[derive(Debug, Clone, Copy)]
enum Order {
    /// `preserve_order: true`: strict priority.
    Strict,
    /// `starvation_budget(b)`.
    Budget(u32),
    /// `preserve_order: false`: the default budget (64).
    Unordered,
}

/// The model.
struct Model {
    order: Order,
    /// A head waits at most `budget + slack` dequeues (budget mode).
    slack: u32,
    lanes: [VecDeque<Tag>; 4],
    cap: usize,
    closed: bool,
    /// Next seq per (sender, priority).
    next_seq: [[u64; 4]; SENDERS],
    /// Last seq received per (sender, priority).
    last_seen: HashMap<(usize, usize), u64>,
    /// Dequeues each lane's head has waited through (budget mode).
    waited: [u32; 4],
    pushed: u64,
    popped: u64,
    drained: u64,
}

impl Model {
    fn new(order: Order, cap: usize, slack: u32) -> Self {
        Model {
            order,
            slack,
            lanes: Default::default(),
            cap,
            closed: false,
            next_seq: [[0; 4]; SENDERS],
            last_seen: HashMap::new(),
            waited: [0; 4],
            pushed: 0,
            popped: 0,
            drained: 0,
        }
    }

    fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    fn is_full(&self) -> bool {
        self.cap > 0 && self.len() >= self.cap
    }

    fn next_tag(&mut self, sender: usize, prio: usize) -> Tag {
        let seq = self.next_seq[sender][prio];
        self.next_seq[sender][prio] += 1;
        (sender, prio, seq)
    }

    fn push(&mut self, tag: Tag) {
        if self.lanes[tag.1].is_empty() {
            self.waited[tag.1] = 0;
        }
        self.lanes[tag.1].push_back(tag);
        self.pushed += 1;
    }

    /// The budget the system was built with, if any.
    fn budget(&self) -> Option<u32> {
        match self.order {
            Order::Strict => None,
            Order::Budget(b) => Some(b),
            Order::Unordered => Some(64),
        }
    }

    /// Checks that `got` may be dequeued now and takes it out of the model.
    fn dequeue(&mut self, got: Tag) -> Result<(), TestCaseError> {
        let (sender, prio, seq) = got;
        prop_assert!(prio < 4 && sender < SENDERS, "bad tag {got:?}");
        match self.budget() {
            None => {
                let highest = (0..4).rev().find(|&p| !self.lanes[p].is_empty());
                prop_assert_eq!(highest, Some(prio), "strict order: got {:?}", got);
            }
            Some(budget) => {
                for p in 0..4 {
                    if p != prio && !self.lanes[p].is_empty() {
                        self.waited[p] += 1;
                        prop_assert!(
                            self.waited[p] <= budget + self.slack,
                            "lane {p} head starved for {} dequeues (budget {budget})",
                            self.waited[p]
                        );
                    }
                }
                self.waited[prio] = 0;
            }
        }
        let head = self.lanes[prio].pop_front();
        prop_assert_eq!(head, Some(got), "not the head of its lane");
        if let Some(last) = self.last_seen.insert((sender, prio), seq) {
            prop_assert!(
                seq > last,
                "seq went back for {:?}: {} after {}",
                (sender, prio),
                seq,
                last
            );
        }
        self.popped += 1;
        Ok(())
    }

    /// Everything queued, in no particular order (the drain into dead letters).
    fn drain(&mut self) -> Vec<Tag> {
        let all: Vec<Tag> = self.lanes.iter_mut().flat_map(|l| l.drain(..)).collect();
        self.drained += all.len() as u64;
        all
    }
}

/// The system under test: one mailbox of a `MessageSystem`'s manager.
struct Harness {
    system: MessageSystem,
    pid: AgentPid,
    from: Vec<AgentPid>,
    handles: Vec<AgentMailbox>,
    senders: Vec<MailboxSender>,
    removed: bool,
}

fn tag_of(m: &AgentMessage) -> Tag {
    *m.payload::<Tag>().expect("payload is a Tag")
}

impl Harness {
    fn new(order: Order, cap: usize) -> Self {
        let config = MailboxConfig {
            max_messages: cap,
            preserve_order: !matches!(order, Order::Unordered),
            ..MailboxConfig::default()
        };
        let mut builder = MessageSystem::builder(RouterConfig::default())
            .mailbox_config(config)
            .timer_driver(TimerDriver::Manual);
        if let Order::Budget(b) = order {
            builder = builder.starvation_budget(b);
        }
        let system = builder.build().unwrap();
        let pid = AgentPid::new();
        system.register_agent(pid.clone()).unwrap();
        let handles = vec![system.get_mailbox(&pid).unwrap()];
        let senders = vec![system.sender(&pid).unwrap()];
        Harness {
            system,
            pid,
            from: (0..SENDERS).map(|_| AgentPid::new()).collect(),
            handles,
            senders,
            removed: false,
        }
    }

    fn message(&self, tag: Tag) -> AgentMessage {
        AgentMessage::cast(self.from[tag.0].clone(), tag)
    }

    /// A sender to use, if any can be had: a kept one, or a fresh one from the table.
    fn some_sender(&self) -> Option<MailboxSender> {
        match self.senders.last() {
            Some(s) => Some(s.clone()),
            None => {
                let fresh = self.system.sender(&self.pid);
                assert_eq!(fresh.is_some(), !self.removed, "sender lookup");
                fresh
            }
        }
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        self.system.mailboxes().dead_letters()
    }
}

/// Expected dead letters: in order, or as a multiset (drains).
fn check_dead_letters(
    h: &Harness,
    expected: &[(Tag, DeadLetterReason)],
    ordered: bool,
) -> Result<(), TestCaseError> {
    let dead = h.dead_letters();
    let mut got: Vec<(Tag, DeadLetterReason)> = dead
        .iter()
        .map(|d| {
            assert_eq!(d.to, h.pid);
            let tag = match &d.message {
                DeadMessage::Message(m) => {
                    assert_eq!(m.id(), &d.id);
                    tag_of(m)
                }
                DeadMessage::Envelope(e) => panic!("unexpected envelope {e:?}"),
            };
            (tag, d.reason.clone())
        })
        .collect();
    let mut want = expected.to_vec();
    if !ordered {
        got.sort_by_key(|(t, _)| *t);
        want.sort_by_key(|(t, _)| *t);
    }
    prop_assert_eq!(got, want, "dead letters");
    Ok(())
}

/// Sends one message as `via` says; checks the outcome against the model.
fn send(
    h: &mut Harness,
    m: &mut Model,
    sender: usize,
    prio: usize,
    via: Via,
) -> Result<(), TestCaseError> {
    let via = match via {
        Via::TryHandle | Via::SendHandle if h.handles.is_empty() => Via::TrySender,
        via => via,
    };
    let sender_handle = match via {
        Via::TrySender | Via::SendSender => match h.some_sender() {
            Some(s) => Some(s),
            None => return Ok(()), // nothing to send through
        },
        _ => None,
    };
    let tag = m.next_tag(sender, prio);
    let message = h.message(tag);
    let priority = PRIORITIES[prio];
    let expect_closed = m.closed;
    let expect_full = !m.closed && m.is_full();
    match via {
        Via::TrySender | Via::TryHandle => {
            let r = match &sender_handle {
                Some(s) => s.try_send(message, priority),
                None => h.handles[0].try_send(message, priority),
            };
            match r {
                Ok(()) => {
                    prop_assert!(
                        !expect_closed && !expect_full,
                        "accepted {tag:?}, model closed={expect_closed} full={expect_full}"
                    );
                    m.push(tag);
                }
                Err(TrySendError::Full(back)) => {
                    prop_assert!(
                        expect_full,
                        "Full for {tag:?} but the model has room (len {}, cap {})",
                        m.len(),
                        m.cap
                    );
                    prop_assert_eq!(tag_of(&back), tag, "Full hands back the message sent");
                }
                Err(TrySendError::Closed(back)) => {
                    prop_assert!(expect_closed, "Closed for {tag:?} but the model is open");
                    prop_assert_eq!(tag_of(&back), tag, "Closed hands back the message sent");
                }
            }
            check_dead_letters(h, &[], true)
        }
        Via::SendSender | Via::SendHandle => {
            let r = match &sender_handle {
                Some(s) => s.send_with_priority(message, priority),
                None => h.handles[0].send_with_priority(message, priority),
            };
            match r {
                Ok(()) => {
                    prop_assert!(
                        !expect_closed && !expect_full,
                        "accepted {tag:?}, model closed={expect_closed} full={expect_full}"
                    );
                    m.push(tag);
                    check_dead_letters(h, &[], true)
                }
                Err(MessagingError::MailboxFull(pid)) => {
                    prop_assert!(expect_full);
                    prop_assert_eq!(pid, h.pid.clone());
                    check_dead_letters(h, &[(tag, DeadLetterReason::MailboxFull)], true)
                }
                Err(MessagingError::ChannelClosed(pid)) => {
                    prop_assert!(expect_closed);
                    prop_assert_eq!(pid, h.pid.clone());
                    check_dead_letters(h, &[(tag, DeadLetterReason::MailboxClosed)], true)
                }
                Err(e) => Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            }
        }
    }
}

/// One receive outcome against the model.
fn received(
    h: &Harness,
    m: &mut Model,
    r: Result<Option<AgentMessage>, MessagingError>,
    zero_timeout: bool,
) -> Result<(), TestCaseError> {
    match r {
        Ok(Some(message)) => m.dequeue(tag_of(&message)),
        Ok(None) => {
            prop_assert!(
                m.len() == 0 && !m.closed,
                "None, but model len {} closed {}",
                m.len(),
                m.closed
            );
            Ok(())
        }
        Err(MessagingError::MessageTimeout(pid)) => {
            prop_assert!(zero_timeout && m.len() == 0 && !m.closed);
            prop_assert_eq!(pid, h.pid.clone());
            Ok(())
        }
        Err(MessagingError::ChannelClosed(pid)) => {
            prop_assert!(
                m.len() == 0 && m.closed,
                "ChannelClosed, but model len {} closed {}",
                m.len(),
                m.closed
            );
            prop_assert_eq!(pid, h.pid.clone());
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!("unexpected {e:?}"))),
    }
}

/// The mailbox is closed: with no handle left, what is queued goes to the dead letters.
fn after_close(h: &Harness, m: &mut Model) -> Result<(), TestCaseError> {
    if h.handles.is_empty() {
        let drained: Vec<(Tag, DeadLetterReason)> = m
            .drain()
            .into_iter()
            .map(|t| (t, DeadLetterReason::MailboxClosed))
            .collect();
        check_dead_letters(h, &drained, false)
    } else {
        check_dead_letters(h, &[], true)
    }
}

fn apply(h: &mut Harness, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Send { sender, prio, via } => send(h, m, sender, prio, via),
        Op::Burst { sender, prio, n } => {
            for _ in 0..n {
                send(h, m, sender, prio, Via::TrySender)?;
            }
            Ok(())
        }
        Op::TryRecv => match h.handles.first() {
            Some(mb) => {
                let r = mb.try_receive();
                received(h, m, r, false)
            }
            None => Ok(()),
        },
        Op::Recv { zero_timeout } => match h.handles.first() {
            Some(mb) if zero_timeout => {
                let r = mb.receive_timeout(Duration::ZERO).map(Some);
                received(h, m, r, true)
            }
            // Never blocks: the model says a message or ChannelClosed is ready.
            Some(mb) if m.len() > 0 || m.closed => {
                let r = mb.receive().map(Some);
                received(h, m, r, false)
            }
            _ => Ok(()),
        },
        Op::Close { remove } => {
            if remove || h.handles.is_empty() {
                let r = h.system.mailboxes().remove_mailbox(&h.pid);
                if h.removed {
                    prop_assert!(
                        matches!(r, Err(MessagingError::AgentNotFound(ref p)) if *p == h.pid),
                        "{r:?}"
                    );
                } else {
                    prop_assert!(r.is_ok(), "{r:?}");
                    h.removed = true;
                }
            } else {
                h.handles[0].close();
            }
            m.closed = true;
            after_close(h, m)
        }
        Op::NewSender => {
            match h.system.sender(&h.pid) {
                Some(s) => {
                    prop_assert!(!h.removed);
                    h.senders.push(s);
                }
                None => prop_assert!(h.removed, "sender lookup failed while registered"),
            }
            Ok(())
        }
        Op::DropSender => {
            // Senders do not keep a mailbox open or closed.
            h.senders.pop();
            check_dead_letters(h, &[], true)
        }
        Op::CloneHandle => {
            if let Some(mb) = h.handles.first() {
                let clone = mb.clone();
                h.handles.push(clone);
            } else {
                match h.system.get_mailbox(&h.pid) {
                    Some(mb) => {
                        prop_assert!(!h.removed);
                        h.handles.push(mb);
                    }
                    None => prop_assert!(h.removed, "get_mailbox failed while registered"),
                }
            }
            Ok(())
        }
        Op::DropHandle => {
            if h.handles.pop().is_some() && m.closed {
                after_close(h, m)
            } else {
                check_dead_letters(h, &[], true)
            }
        }
    }
}

/// Everything observable without changing state matches the model.
fn check_observers(h: &Harness, m: &Model) -> Result<(), TestCaseError> {
    for mb in &h.handles {
        prop_assert_eq!(mb.queue_size(), m.len(), "queue_size");
        prop_assert_eq!(mb.is_empty(), m.len() == 0, "is_empty");
        prop_assert_eq!(mb.is_closed(), m.closed, "is_closed");
    }
    for s in &h.senders {
        prop_assert_eq!(s.queue_size(), m.len(), "sender queue_size");
        prop_assert_eq!(s.is_closed(), m.closed, "sender is_closed");
    }
    let mut all_stats = h.system.mailboxes().get_all_stats();
    prop_assert_eq!(all_stats.len(), usize::from(!h.removed), "get_all_stats");
    if let Some(mb) = h.handles.first() {
        all_stats.push(mb.stats());
    }
    for stats in all_stats {
        prop_assert_eq!(&stats.agent_id, &h.pid);
        prop_assert_eq!(stats.total_messages_received, m.pushed, "received");
        prop_assert_eq!(stats.total_messages_processed, m.popped, "processed");
        prop_assert_eq!(stats.current_queue_size, m.len(), "current_queue_size");
        prop_assert_eq!(stats.messages_dead_lettered, m.drained, "dead_lettered");
        prop_assert!(stats.max_queue_size_reached >= m.len());
        if m.cap > 0 {
            prop_assert!(stats.max_queue_size_reached <= m.cap, "max above capacity");
        }
        prop_assert_eq!(
            stats.total_messages_received,
            stats.total_messages_processed
                + stats.messages_dead_lettered
                + stats.current_queue_size as u64,
            "received = processed + dead-lettered + queued"
        );
    }
    Ok(())
}

/// The starvation bound the implementation keeps: `budget + 4` dequeues (see
/// `budget_worst_case` for the documented `budget + 3`).
const SLACK: u32 = 4;

fn run(order: Order, cap: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    run_with(order, cap, ops, SLACK)
}

fn run_with(order: Order, cap: usize, ops: &[Op], slack: u32) -> Result<(), TestCaseError> {
    let mut h = Harness::new(order, cap);
    let mut m = Model::new(order, cap, slack);
    for op in ops {
        apply(&mut h, &mut m, op)?;
        check_observers(&h, &m)?;
    }
    // Finally: close, drain through a handle if there is one, else via dead letters.
    let mut ending = vec![Op::Close { remove: true }];
    ending.extend((0..m.len() + 1).map(|_| Op::Recv {
        zero_timeout: false,
    }));
    for op in &ending {
        apply(&mut h, &mut m, op)?;
        check_observers(&h, &m)?;
    }
    prop_assert_eq!(m.len(), 0, "everything drained");
    if let Some(mb) = h.handles.first() {
        prop_assert!(matches!(
            mb.try_receive(),
            Err(MessagingError::ChannelClosed(_))
        ));
    }
    prop_assert_eq!(m.pushed, m.popped + m.drained, "nothing lost");
    Ok(())
}

// ===== strategies =====

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![
        Just(Via::TrySender),
        Just(Via::SendSender),
        Just(Via::TryHandle),
        Just(Via::SendHandle),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..SENDERS, 0..4usize, via()).prop_map(|(sender, prio, via)| Op::Send { sender, prio, via }),
        2 => (0..SENDERS, 0..4usize, 1..40usize).prop_map(|(sender, prio, n)| Op::Burst { sender, prio, n }),
        12 => Just(Op::TryRecv),
        12 => any::<bool>().prop_map(|zero_timeout| Op::Recv { zero_timeout }),
        2 => any::<bool>().prop_map(|remove| Op::Close { remove }),
        3 => Just(Op::NewSender),
        3 => Just(Op::DropSender),
        3 => Just(Op::CloneHandle),
        3 => Just(Op::DropHandle),
    ]
}

fn capacity() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1..6usize, Just(31usize), Just(32usize)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn strict(cap in capacity(), ops in prop::collection::vec(op(), 0..100)) {
        run(Order::Strict, cap, &ops)?;
    }

    #[test]
    fn budget(
        cap in capacity(),
        order in prop_oneof![(1u32..5).prop_map(Order::Budget), Just(Order::Unordered)],
        ops in prop::collection::vec(op(), 0..100),
    ) {
        run(order, cap, &ops)?;
    }
}

/// A hand-written case: the burst crosses a block while higher priorities interleave,
/// then the handle goes away before close, so the rest is dead-lettered.
#[test]
fn smoke() {
    use Op::*;
    let ops = [
        Burst {
            sender: 0,
            prio: 0,
            n: 35,
        },
        Send {
            sender: 1,
            prio: 3,
            via: Via::SendHandle,
        },
        Send {
            sender: 2,
            prio: 2,
            via: Via::TryHandle,
        },
        TryRecv,
        TryRecv,
        TryRecv,
        DropHandle,
        Send {
            sender: 0,
            prio: 1,
            via: Via::SendSender,
        },
        Close { remove: false },
    ];
    run(Order::Strict, 0, &ops).unwrap();
    run(Order::Budget(1), 3, &ops).unwrap();
}

/// The budget bound at its worst: `High` and `Normal` overdue just as `Low` arrives,
/// then `b` `Critical` receives, then `High` and `Normal` overdue again: `Low` waits
/// `b + 4` receives: the bound src/mailbox/priority.rs documents, and it is tight (this
/// found the doc's earlier `b + 3`).
#[test]
fn budget_worst_case() {
    use Op::*;
    let send = |prio| Send {
        sender: 0,
        prio,
        via: Via::TrySender,
    };
    let mut ops = vec![
        Burst {
            sender: 0,
            prio: 3,
            n: 6,
        },
        send(2),
        send(1),
        send(2),
    ];
    ops.extend([TryRecv, TryRecv, TryRecv, send(1), send(0)]);
    assert!(
        run_with(Order::Budget(3), 0, &ops, 3).is_err(),
        "the bound is tight: Low waits b + 4 here"
    );
    run_with(Order::Budget(3), 0, &ops, SLACK).unwrap();
}
