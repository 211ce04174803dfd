//! A waker may call back into the system: routing wakes a receiver's task with no lock
//! of the system held (issue 12, item 4).
//!
//! Each test parks a task (`poll_receive` with a waker of its own) on an agent's
//! mailbox, then routes a message to that agent. The waker, when woken, registers an
//! agent (a write to the agent table) or joins a group (a write to the group's member
//! list), on the waking thread. Were the router still holding the table's or the
//! group's read lock when it wakes, that write would wait for the lock its own thread
//! holds: a deadlock, which the test reports after its deadline instead of hanging.
//!
//! The same happens across threads with std's writer-preferring `RwLock`: a waker
//! that only routes (a read) would queue behind another thread's queued register.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use common::DEADLINE;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeliveryOptions, LoadBalance, MessageEnvelope,
    MessageSystem, RouterConfig,
};

/// What the waker does on the waking thread.
enum OnWake {
    Register,
    JoinGroup(AgentPid),
}

struct CallingBackWaker {
    system: Arc<MessageSystem>,
    on_wake: OnWake,
    done: mpsc::SyncSender<()>,
}

impl Wake for CallingBackWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let agent = AgentPid::new();
        self.system.register_agent(agent.clone()).unwrap();
        if let OnWake::JoinGroup(group) = &self.on_wake {
            self.system.join_group(group, &agent).unwrap();
        }
        let _ = self.done.try_send(());
    }
}

/// Parks a task on `mailbox` with a waker that does `on_wake`, runs `route` on another
/// thread, and fails unless the waker ran to its end and the task then received.
///
/// All of it runs on a thread of its own, which the test only waits for: on a deadlock
/// that thread stays blocked (holding the system), and the test fails cleanly.
fn wake_calls_back(
    system: Arc<MessageSystem>,
    mailbox: AgentMailbox,
    on_wake: OnWake,
    route: impl FnOnce() + Send + 'static,
) {
    let (finished, outcome) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let (done, woken) = mpsc::sync_channel(1);
        let waker = Waker::from(Arc::new(CallingBackWaker {
            system: system.clone(),
            on_wake,
            done,
        }));
        let mut cx = Context::from_waker(&waker);
        assert!(mailbox.poll_receive(&mut cx).is_pending());
        thread::spawn(route);
        woken.recv().unwrap();
        assert!(matches!(
            mailbox.poll_receive(&mut cx),
            Poll::Ready(Ok(AgentMessage::Cast { .. }))
        ));
        finished.send(()).unwrap();
    });
    match outcome.recv_timeout(DEADLINE) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "the waker's call back into the system deadlocked: a lock was held across the wake"
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed (see above)"),
    }
}

fn system_with_agent() -> (Arc<MessageSystem>, AgentPid, AgentMailbox) {
    common::init_tracing();
    let system = Arc::new(MessageSystem::new(RouterConfig::default()));
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mailbox = system.get_mailbox(&pid).unwrap();
    (system, pid, mailbox)
}

#[test]
fn a_routed_send_wakes_with_the_agent_table_unlocked() {
    let (system, pid, mailbox) = system_with_agent();
    let router = system.clone();
    wake_calls_back(system.clone(), mailbox, OnWake::Register, move || {
        let envelope =
            MessageEnvelope::new(pid, "ping".into(), 1.into(), DeliveryOptions::default());
        router.send_message(envelope).unwrap();
    });
}

#[test]
fn a_built_message_routed_by_pid_wakes_with_the_agent_table_unlocked() {
    let (system, pid, mailbox) = system_with_agent();
    let router = system.clone();
    wake_calls_back(system.clone(), mailbox, OnWake::Register, move || {
        router
            .send(&pid, AgentMessage::cast(AgentPid::new(), 1u64))
            .unwrap();
    });
}

#[test]
fn a_send_through_a_group_wakes_with_the_group_unlocked() {
    let (system, pid, mailbox) = system_with_agent();
    let group = system.create_group(LoadBalance::RoundRobin).unwrap();
    system.join_group(&group, &pid).unwrap();
    let router = system.clone();
    let to = group.clone();
    wake_calls_back(
        system.clone(),
        mailbox,
        OnWake::JoinGroup(group),
        move || {
            router
                .send(&to, AgentMessage::cast(AgentPid::new(), 1u64))
                .unwrap();
        },
    );
}

#[test]
fn a_broadcast_wakes_with_the_group_unlocked() {
    let (system, pid, mailbox) = system_with_agent();
    let group = system.create_group(LoadBalance::Broadcast).unwrap();
    system.join_group(&group, &pid).unwrap();
    let router = system.clone();
    let to = group.clone();
    wake_calls_back(
        system.clone(),
        mailbox,
        OnWake::JoinGroup(group),
        move || {
            let envelope =
                MessageEnvelope::new(to, "all".into(), 1.into(), DeliveryOptions::default());
            router.send_message(envelope).unwrap();
        },
    );
}

/// A task waiting for room in a bounded mailbox (`send_timeout` of the tokio flavour)
/// is woken by the receive that frees a slot. Its waker sends twice: the first takes
/// the free slot, the second finds the mailbox full and queues to wait, which takes
/// the waiting senders' lock: the receive must have released it before waking.
#[cfg(feature = "tokio")]
#[test]
fn a_receive_wakes_a_waiting_sender_with_the_queue_unlocked() {
    use std::future::Future;
    use terraphim_agent_messaging::tokio as tk;
    use terraphim_agent_messaging::{MailboxConfig, MessagePriority};

    struct SendingWaker {
        sender: tk::MailboxSender,
        done: mpsc::SyncSender<()>,
    }
    impl Wake for SendingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let mut cx = Context::from_waker(Waker::noop());
            for k in 0..2u64 {
                let message = AgentMessage::cast(AgentPid::nil(), k);
                let send = self
                    .sender
                    .send_timeout(message, MessagePriority::Normal, DEADLINE);
                let _ = std::pin::pin!(send).as_mut().poll(&mut cx);
            }
            let _ = self.done.try_send(());
        }
    }

    let (finished, outcome) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _in_runtime = runtime.enter();
        let config = MailboxConfig {
            max_messages: 1,
            ..MailboxConfig::default()
        };
        let mailbox: tk::AgentMailbox = AgentMailbox::new(AgentPid::new(), config).into();
        let sender = mailbox.sender();
        sender
            .try_send(
                AgentMessage::cast(AgentPid::nil(), 9u64),
                MessagePriority::Normal,
            )
            .unwrap();
        let (done, woken) = mpsc::sync_channel(1);
        let waker = Waker::from(Arc::new(SendingWaker {
            sender: sender.clone(),
            done,
        }));
        let message = AgentMessage::cast(AgentPid::nil(), 10u64);
        let mut waiting =
            std::pin::pin!(sender.send_timeout(message, MessagePriority::Normal, DEADLINE));
        assert!(waiting
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let mut noop = Context::from_waker(Waker::noop());
        let received = std::pin::pin!(mailbox.try_receive()).poll(&mut noop);
        assert!(matches!(received, Poll::Ready(Ok(Some(_)))));
        woken.recv().unwrap();
        finished.send(()).unwrap();
    });
    match outcome.recv_timeout(DEADLINE) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "the waker's send deadlocked: the waiting senders' lock was held across the wake"
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed (see above)"),
    }
}
