//! Memory an agent holds when it is idle again (issue 12, item 6).
//!
//! - After a burst on all four priorities, drained, and once the receiver waits for the
//!   next message (here: a `poll_receive` that returns `Pending`), a registered agent
//!   holds about what an idle one does: its lane blocks (~3 KiB each, up to two per
//!   lane) are given back. What stays is listed in [`KEPT`].
//! - A send refused because the mailbox is closed allocates nothing, at any priority
//!   (it used to allocate and free the extra lanes each time for a non-`Normal` one).
//!
//! Memory is counted per thread by this binary's counting allocator
//! (`common::alloc`): every send, receive and wait below runs on the test's thread.

mod common;

use std::task::{Context, Waker};

use common::sync::manual_system;
use common::PRIORITIES;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, MailboxConfig, MessagePriority, RouterConfig,
    TrySendError,
};

#[global_allocator]
static ALLOCATOR: common::alloc::Counting = common::alloc::Counting;

/// Bytes this thread holds (allocated minus freed on it).
fn held() -> i64 {
    common::alloc::counts().held_bytes
}

/// Allocations this thread has made.
fn allocations() -> u64 {
    common::alloc::counts().allocations
}

/// Agents measured (the per-agent figures are averages over them).
const AGENTS: usize = 256;
/// Messages per priority in the burst: more than three blocks' worth, so every lane
/// crosses block boundaries and parks a spare.
const BURST: u64 = 100;
/// Bytes an agent may keep after the burst beyond its idle figure: the three extra
/// lanes' heads and tails (512 B), allocated on the first non-`Normal` message and kept
/// for the mailbox's life (producers reach them without a reference count), and the
/// sampled statistics allocated with the first message (80 B with `metrics`). No lane
/// block (~3 KiB each).
const KEPT: i64 = 640;

/// Receives everything queued; returns how many.
fn drain(mailbox: &AgentMailbox) -> u64 {
    let mut n = 0;
    while let Some(message) = mailbox.try_receive().unwrap() {
        drop(message);
        n += 1;
    }
    n
}

#[test]
fn an_agent_that_received_a_burst_gives_its_blocks_back_once_it_waits() {
    let (system, _clock) = manual_system(RouterConfig::default(), 0);
    let pids: Vec<AgentPid> = (0..AGENTS).map(|_| AgentPid::new()).collect();
    let from = AgentPid::new();
    let mut mailboxes = Vec::with_capacity(AGENTS);
    let mut senders = Vec::with_capacity(AGENTS);

    let start = held();
    for pid in &pids {
        system.register_agent(pid.clone()).unwrap();
    }
    let idle = (held() - start) / AGENTS as i64;
    for pid in &pids {
        mailboxes.push(system.get_mailbox(pid).unwrap());
        senders.push(system.sender(pid).unwrap());
    }

    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let before_burst = held();
    for (mailbox, sender) in mailboxes.iter().zip(&senders) {
        for priority in PRIORITIES {
            for i in 0..BURST {
                sender
                    .try_send(AgentMessage::cast(from.clone(), i), priority)
                    .unwrap();
            }
        }
        assert_eq!(drain(mailbox), 4 * BURST);
        // The receiver waits for the next message.
        assert!(mailbox.poll_receive(&mut cx).is_pending());
    }
    let kept = (held() - before_burst) / AGENTS as i64;
    eprintln!(
        "per agent: idle {idle} B; after a burst of {BURST} on each priority, drained, \
         waiting: {} B ({kept} B more)",
        idle + kept
    );
    assert!(
        kept <= KEPT,
        "an agent keeps {kept} B more after a burst than idle ({idle} B); at most {KEPT}"
    );

    // The lanes still work after giving their blocks back.
    for (mailbox, sender) in mailboxes.iter().zip(&senders) {
        for priority in PRIORITIES {
            sender
                .try_send(AgentMessage::cast(from.clone(), 7u64), priority)
                .unwrap();
        }
        let order: Vec<_> = (0..4)
            .map(|_| mailbox.try_receive().unwrap().unwrap())
            .map(|m| m.payload::<u64>().copied())
            .collect();
        assert_eq!(order, [Some(7); 4]);
        assert_eq!(mailbox.stats().total_messages_received, 4 * BURST + 4);
        assert!(mailbox.is_empty());
    }
}

/// Sends `priority` to a closed mailbox; returns the allocations the send made.
fn allocations_of_a_refused_send(mailbox: &AgentMailbox, priority: MessagePriority) -> u64 {
    let sender = mailbox.sender();
    let message = AgentMessage::cast(AgentPid::nil(), 1u64);
    let before = allocations();
    let refused = sender.try_send(message, priority);
    let made = allocations() - before;
    match refused {
        Err(TrySendError::Closed(message)) => drop(message),
        other => panic!("{priority:?} to a closed mailbox: {other:?}"),
    }
    made
}

#[test]
fn a_send_to_a_closed_mailbox_allocates_nothing() {
    for priority in PRIORITIES {
        // Closed before any extra lane existed.
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        mailbox.close();
        for _ in 0..3 {
            assert_eq!(
                allocations_of_a_refused_send(&mailbox, priority),
                0,
                "{priority:?} send to a mailbox closed before its extra lanes existed"
            );
        }

        // Closed after a `Low` message installed them.
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        mailbox
            .try_send(
                AgentMessage::cast(AgentPid::nil(), 0u64),
                MessagePriority::Low,
            )
            .unwrap();
        drop(mailbox.try_receive().unwrap());
        mailbox.close();
        assert_eq!(
            allocations_of_a_refused_send(&mailbox, priority),
            0,
            "{priority:?} send to a mailbox closed after its extra lanes existed"
        );
    }
}

#[test]
fn a_send_to_an_unregistered_agent_allocates_nothing() {
    let (system, _clock) = manual_system(RouterConfig::default(), 0);
    let (pid, mailbox) = common::sync::registered(&system);
    let sender = system.sender(&pid).unwrap();
    system.unregister_agent(&pid).unwrap();
    drop(mailbox);
    for priority in PRIORITIES {
        let message = AgentMessage::cast(AgentPid::nil(), 1u64);
        let before = allocations();
        let refused = sender.try_send(message, priority);
        let made = allocations() - before;
        assert!(
            matches!(refused, Err(TrySendError::Closed(_))),
            "{priority:?}"
        );
        drop(refused);
        assert_eq!(made, 0, "{priority:?} send to an unregistered agent");
    }
}
