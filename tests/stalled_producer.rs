//! A producer descheduled between claiming its slot and writing it (issue 12, item 2):
//! `try_receive` returns at once, `receive_timeout` keeps its deadline, the async
//! receive is `Pending` and woken by the write, and lower lanes are served only where
//! the priority contract allows.
//!
//! `__private::stall_send` leaves a send exactly in that state, deterministically.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use terraphim_agent_messaging::__private::stall_send;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, MailboxConfig, MessagePriority, MessagingError,
};

const HIGH: MessagePriority = MessagePriority::High;
const NORMAL: MessagePriority = MessagePriority::Normal;

/// How long a call that must not wait may take before the test calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(5);
/// Slack over a bound for a descheduled caller: one scheduler time slice, generously.
const SLICE: Duration = Duration::from_millis(50);

fn mailbox() -> AgentMailbox {
    AgentMailbox::new(AgentPid::new(), MailboxConfig::default())
}

fn cast(n: u64) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), n)
}

fn n(message: &AgentMessage) -> u64 {
    *message.payload::<u64>().expect("a u64 cast")
}

/// Runs `f` on a thread and returns its result and how long it took; panics if it has
/// not returned within [`WATCHDOG`] (the thread is then left spinning).
#[track_caller]
fn within_watchdog<R: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> (R, Duration) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let start = Instant::now();
        let r = f();
        let _ = tx.send((r, start.elapsed()));
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{what} did not return within {WATCHDOG:?}"))
}

#[test]
fn try_receive_returns_at_once_behind_a_stalled_send() {
    let mb = mailbox();
    let tx = mb.sender();
    let stalled = stall_send(&tx, cast(1), HIGH).unwrap();
    let m = mb.clone();
    let (got, took) = within_watchdog("try_receive", move || {
        m.try_receive().map(|o| o.map(|m| n(&m)))
    });
    assert_eq!(got.unwrap(), None, "nothing is ready yet");
    assert!(took < SLICE, "try_receive took {took:?}");
    stalled.finish();
    assert_eq!(mb.try_receive().unwrap().map(|m| n(&m)), Some(1));
}

/// The stalled `High` send has not returned and is the only `High` message: the
/// receive may order itself before that send and take the `Normal` one.
#[test]
fn try_receive_takes_a_lower_lane_past_the_only_higher_send_in_flight() {
    let mb = mailbox();
    let tx = mb.sender();
    let stalled = stall_send(&tx, cast(1), HIGH).unwrap();
    tx.try_send(cast(2), NORMAL).unwrap();
    let m = mb.clone();
    let (got, _) = within_watchdog("try_receive", move || {
        m.try_receive().map(|o| o.map(|m| n(&m)))
    });
    assert_eq!(got.unwrap(), Some(2));
    stalled.finish();
    assert_eq!(mb.try_receive().unwrap().map(|m| n(&m)), Some(1));
}

/// Behind the stalled `High` send is a `High` send that returned: every `Normal`
/// message must wait for it, so `try_receive` reports nothing for now.
#[test]
fn try_receive_keeps_priority_behind_a_returned_higher_send() {
    let mb = mailbox();
    let tx = mb.sender();
    let stalled = stall_send(&tx, cast(1), HIGH).unwrap();
    tx.try_send(cast(2), HIGH).unwrap();
    tx.try_send(cast(3), NORMAL).unwrap();
    let m = mb.clone();
    let (got, _) = within_watchdog("try_receive", move || {
        m.try_receive().map(|o| o.map(|m| n(&m)))
    });
    assert_eq!(
        got.unwrap(),
        None,
        "a Normal must not overtake a returned High"
    );
    stalled.finish();
    let order: Vec<u64> = (0..3)
        .map(|_| n(&mb.try_receive().unwrap().unwrap()))
        .collect();
    assert_eq!(order, [1, 2, 3]);
}

#[test]
fn receive_timeout_keeps_its_deadline_behind_a_stalled_send() {
    let mb = mailbox();
    let tx = mb.sender();
    let stalled = stall_send(&tx, cast(1), HIGH).unwrap();
    let timeout = Duration::from_millis(20);
    let m = mb.clone();
    let (got, took) = within_watchdog("receive_timeout", move || {
        m.receive_timeout(timeout).map(|m| n(&m))
    });
    assert!(
        matches!(got, Err(MessagingError::MessageTimeout(_))),
        "{got:?}"
    );
    assert!(
        took < timeout + SLICE,
        "receive_timeout(20 ms) took {took:?}"
    );
    stalled.finish();
    assert_eq!(n(&mb.receive_timeout(timeout).unwrap()), 1);
}

/// A blocking receive parks behind the unwritten slot and the write wakes it.
#[test]
fn receive_is_woken_by_the_stalled_write() {
    let mb = mailbox();
    let tx = mb.sender();
    let stalled = stall_send(&tx, cast(1), HIGH).unwrap();
    let m = mb.clone();
    let receiver = thread::spawn(move || n(&m.receive().unwrap()));
    thread::sleep(Duration::from_millis(20));
    stalled.finish();
    assert_eq!(receiver.join().unwrap(), 1);
}

/// Counts its wakes.
struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn async_receive_is_pending_then_woken_by_the_stalled_write() {
    let mb = mailbox();
    let tx = mb.sender();
    let stalled = stall_send(&tx, cast(1), HIGH).unwrap();
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let (to_poller, polls) = mpsc::channel::<()>();
    let (results, from_poller) = mpsc::channel();
    let (m, w) = (mb.clone(), wakes.clone());
    thread::spawn(move || {
        let waker = Waker::from(w);
        let mut cx = Context::from_waker(&waker);
        let mut future = Box::pin(m.receive_async());
        for () in polls {
            let start = Instant::now();
            let poll = future.as_mut().poll(&mut cx).map(|r| r.map(|m| n(&m)));
            if results.send((poll, start.elapsed())).is_err() {
                return;
            }
        }
    });
    let poll = || {
        to_poller.send(()).unwrap();
        from_poller
            .recv_timeout(WATCHDOG)
            .expect("a poll did not return (it spins on the unwritten slot)")
    };
    let (first, took) = poll();
    assert!(first.is_pending(), "{first:?}");
    assert!(took < SLICE, "the poll took {took:?}");
    stalled.finish();
    assert_eq!(wakes.0.load(SeqCst), 1, "the write wakes the task");
    let (second, _) = poll();
    assert!(matches!(second, Poll::Ready(Ok(1))), "{second:?}");
}
