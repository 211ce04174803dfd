//! [`DeadLetterSubscription`]: a bounded inbox that takes the letters of the reasons it
//! asked for, as they are recorded.
//!
//! # Ground rules
//!
//! - The store hands a letter to an inbox while holding its own lock, then the inbox's
//!   (always in that order); the subscriber pops under the inbox's lock alone.
//! - One receiver per subscription: every receiving method takes `&mut self`, which is
//!   what lets the inbox use the crate's single-waiter [`WaitCell`].
//! - No wake-up is lost without a fence: the subscriber registers in `waiter`, then
//!   looks at the inbox under its lock; the store pushes under that lock, then wakes.
//!   If the subscriber's look comes after the push it sees the letter; if it comes
//!   before, the registration happened before the push (the lock orders the two) and
//!   the wake sees it.
//! - A closed inbox takes no more letters; what it holds can still be received.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use super::{DeadLetter, DeadLetterKind, DeadLetters};
use crate::sync::{lock, Arc, AtomicU64, Mutex};
use crate::wait::{block_until, WaitCell, Waiter};

/// A subscription's buffer, shared by the store (which fills it) and the subscriber.
pub(crate) struct Inbox {
    /// Bit `kind.index()` set: this inbox takes letters of that kind.
    kinds: u32,
    /// The most letters `letters` holds.
    capacity: usize,
    letters: Mutex<Letters>,
    /// The subscriber, when it waits.
    waiter: WaitCell,
    /// Letters of its kinds this inbox had no room for.
    overflowed: AtomicU64,
}

/// What [`Inbox::letters`] guards.
struct Letters {
    /// Oldest first, at most `capacity`.
    queue: VecDeque<DeadLetter>,
    /// No more letters will come (the system shut down, or the subscription was dropped).
    closed: bool,
}

impl Inbox {
    fn new(kinds: &[DeadLetterKind], capacity: usize) -> Self {
        Inbox {
            kinds: kinds.iter().fold(0, |bits, k| bits | 1 << k.index()),
            capacity,
            letters: Mutex::new(Letters {
                queue: VecDeque::new(),
                closed: false,
            }),
            waiter: WaitCell::new(),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Whether this inbox takes letters of `kind`.
    pub(super) fn wants(&self, kind: DeadLetterKind) -> bool {
        self.kinds & (1 << kind.index()) != 0
    }

    /// Takes `letter` if there is room (`None`; the caller then wakes the subscriber),
    /// or hands it back. Called with the store's lock held.
    pub(super) fn offer(&self, letter: DeadLetter) -> Option<DeadLetter> {
        let mut letters = lock(&self.letters);
        if letters.closed {
            return Some(letter);
        }
        if letters.queue.len() >= self.capacity {
            self.overflowed.fetch_add(1, Relaxed);
            return Some(letter);
        }
        letters.queue.push_back(letter);
        None
    }

    /// Wakes the subscriber, if it waits.
    pub(super) fn wake(&self) {
        self.waiter.wake();
    }

    /// Letters waiting to be received.
    pub(super) fn len(&self) -> usize {
        lock(&self.letters).queue.len()
    }

    /// Takes no more letters; wakes a waiting subscriber so it sees the end.
    pub(super) fn close(&self) {
        lock(&self.letters).closed = true;
        self.waiter.wake();
    }

    /// Closes, and takes back every letter not yet received.
    pub(super) fn close_and_take(&self) -> VecDeque<DeadLetter> {
        let mut letters = lock(&self.letters);
        letters.closed = true;
        std::mem::take(&mut letters.queue)
    }
}

/// A subscription to a system's dead letters of some reasons, from
/// [`MessageSystem::subscribe_dead_letters`](crate::MessageSystem::subscribe_dead_letters).
///
/// Each letter recorded goes to **one** place: the first subscription that asked for
/// its reason and has room, else the store (which keeps the newest up to its bound).
/// A subscription therefore *takes* its letters, as a queue consumer would: use it to
/// act on dead letters as they happen (alert, log, re-send), and the store for what
/// nobody took. Letters that find the subscription full go on to the next subscriber
/// or the store, and are counted in [`overflowed`](Self::overflowed).
///
/// The subscription ends once the system shuts down: the receiving methods return the
/// letters it still holds (those buried by the shutdown itself included), then
/// `None`. Dropped, it gives the letters it still holds back to the store.
///
/// Receiving takes `&mut self`: one receiver per subscription. It is also an
/// [`Iterator`] that blocks between letters and ends with the subscription.
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::{
///     AgentMessage, AgentPid, DeadLetterKind, DeliveryGuarantee, MailboxConfig, MessageSystem,
///     RouterConfig,
/// };
///
/// let mut config = RouterConfig::default();
/// config.delivery_config.guarantee = DeliveryGuarantee::AtMostOnce;
/// let system = MessageSystem::builder(config)
///     .mailbox_config(MailboxConfig { max_messages: 1, ..MailboxConfig::default() })
///     .build()?;
/// let mut full = system.subscribe_dead_letters(&[DeadLetterKind::MailboxFull], 64)?;
///
/// let agent = AgentPid::new();
/// system.register_agent(agent.clone())?;
/// system.send(&agent, AgentMessage::cast(AgentPid::nil(), 1u64))?;
/// assert!(system.send(&agent, AgentMessage::cast(AgentPid::nil(), 2u64)).is_err());
///
/// let letter = full.try_recv().expect("the refused message");
/// assert_eq!(letter.to, agent);
/// system.shutdown()?;
/// assert!(full.recv().is_none()); // ended by the shutdown
/// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
/// ```
pub struct DeadLetterSubscription {
    inbox: Arc<Inbox>,
    store: Arc<DeadLetters>,
}

impl DeadLetterSubscription {
    /// Registers a new inbox with `store`. `kinds` and `capacity` are checked by the
    /// caller (at least one kind, capacity ≥ 1).
    pub(super) fn new(store: Arc<DeadLetters>, kinds: &[DeadLetterKind], capacity: usize) -> Self {
        let inbox = Arc::new(Inbox::new(kinds, capacity));
        store.register(inbox.clone());
        DeadLetterSubscription { inbox, store }
    }

    /// One look: `Some(Some(letter))`, `Some(None)` once closed and empty, `None` if
    /// nothing is there yet.
    fn poll_letter(&self) -> Option<Option<DeadLetter>> {
        let mut letters = lock(&self.inbox.letters);
        match letters.queue.pop_front() {
            Some(letter) => {
                // Under the inbox's lock, so that `in_subscriptions + taken` never
                // misses a letter between the two.
                self.store.count_taken(1);
                Some(Some(letter))
            }
            None if letters.closed => Some(None),
            None => None,
        }
    }

    /// Takes a letter if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<DeadLetter> {
        self.poll_letter().flatten()
    }

    /// Blocks until a letter arrives; `None` once the subscription has ended (the
    /// system shut down) and holds no more.
    pub fn recv(&mut self) -> Option<DeadLetter> {
        block_until(&self.inbox.waiter, None, |_| self.poll_letter()).flatten()
    }

    /// Like [`recv`](Self::recv), but gives up after `timeout` (`None` then too; tell
    /// the two apart with [`is_closed`](Self::is_closed)). A zero timeout takes only what
    /// is ready; `Duration::MAX` waits forever.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<DeadLetter> {
        block_until(&self.inbox.waiter, Some(timeout), |_| self.poll_letter()).flatten()
    }

    /// Waits for a letter without blocking the thread, on any executor; `None` once the
    /// subscription has ended and holds no more.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a letter is taken only in the poll that returns it.
    pub fn recv_async(&mut self) -> impl Future<Output = Option<DeadLetter>> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(outcome) = self.poll_letter() {
                return Poll::Ready(outcome);
            }
            self.inbox.waiter.register(Waiter::Task(cx.waker().clone()));
            match self.poll_letter() {
                Some(outcome) => Poll::Ready(outcome),
                None => Poll::Pending,
            }
        })
    }

    /// Whether the subscription has ended: no more letters will come (those it holds
    /// can still be received).
    pub fn is_closed(&self) -> bool {
        lock(&self.inbox.letters).closed
    }

    /// Letters of the subscribed reasons that found this subscription full (they went
    /// to another subscription or to the store).
    pub fn overflowed(&self) -> u64 {
        self.inbox.overflowed.load(Relaxed)
    }

    /// Letters waiting to be received.
    pub fn len(&self) -> usize {
        self.inbox.len()
    }

    /// Whether no letter is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for DeadLetterSubscription {
    type Item = DeadLetter;

    /// [`recv`](DeadLetterSubscription::recv): blocks, and ends with the subscription.
    fn next(&mut self) -> Option<DeadLetter> {
        self.recv()
    }
}

impl Drop for DeadLetterSubscription {
    fn drop(&mut self) {
        self.store.unregister(&self.inbox);
    }
}

impl fmt::Debug for DeadLetterSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterSubscription")
            .field("waiting", &self.len())
            .field("capacity", &self.inbox.capacity)
            .field("overflowed", &self.overflowed())
            .field("closed", &self.is_closed())
            .finish()
    }
}
