//! [`DeadLetters`]: the bounded store of one system (or of a standalone mailbox or
//! mailbox manager), and the subscriptions it hands letters to. The module above
//! explains the bound and the ledger.
//!
//! # Ground rules
//!
//! - `kept` never holds more than `capacity` letters: a push at capacity pops the
//!   oldest in the same critical section.
//! - A recorded letter goes to the first live subscription that wants its kind and has
//!   room, else into `kept`. It leaves `kept` only through `drain*` (counted `taken`) or
//!   by being pushed out (counted `dropped` under its reason); it leaves an inbox only
//!   by being received (counted `taken`) or, when the subscription is dropped, back
//!   into `kept`. `recorded` counts every push, so `recorded = kept + in inboxes +
//!   taken + dropped` whenever no push, drain or receive is midway.
//! - Locks are taken store first, then an inbox, never the other way round.
//! - Letters are freed, and subscribers woken, outside the store's lock (a message's
//!   drop runs user code: its payload's `Drop`; a wake may run an executor's).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::subscription::{DeadLetterSubscription, Inbox};
use super::{DeadLetter, DeadLetterKind, DeadLetterStats, DEFAULT_DEAD_LETTER_CAPACITY};
use crate::error::{MessagingError, MessagingResult};
use crate::observe;
use crate::stats::Counter;
use crate::sync::{lock, Arc, AtomicU64, AtomicUsize, Mutex};

/// How many [`DeadLetterKind`]s there are.
const KINDS: usize = DeadLetterKind::ALL.len();

/// The dead-letter store of a system (or of a standalone mailbox or manager).
pub(crate) struct DeadLetters {
    /// The most letters `kept` holds; 0 keeps none.
    capacity: usize,
    state: Mutex<State>,
    /// Live subscriptions, written under the lock: a store that keeps nothing reads it
    /// to record a letter without the lock when nobody subscribes.
    subscribed: AtomicUsize,
    /// Every letter ever pushed. Striped: producers on different cores that refuse
    /// messages at once do not share its line.
    recorded: Counter,
    /// Letters drained by readers or received by subscribers.
    taken: AtomicU64,
    /// Letters dropped, by [`DeadLetterKind::index`].
    dropped: [AtomicU64; KINDS],
    /// Letters recorded, by [`DeadLetterKind::index`] (for the metrics).
    #[cfg(feature = "metrics")]
    by_reason: [AtomicU64; KINDS],
}

/// What the store's lock guards.
struct State {
    /// The newest letters nobody took, oldest first.
    kept: VecDeque<DeadLetter>,
    /// Every subscription not yet dropped, oldest first (the order letters are offered
    /// in); closed ones stay listed until dropped, for the letters they hold.
    inboxes: Vec<Arc<Inbox>>,
    /// The system shut down: subscriptions are closed and new ones start closed.
    closed: bool,
}

/// What [`State::offer`] did with a letter.
// A value that lives for one return: boxing the letter would cost an allocation per
// refusal to save a move.
#[allow(clippy::large_enum_variant)]
enum Offered {
    /// An inbox took it; wake its subscriber.
    Taken(Arc<Inbox>),
    /// No live inbox wanted it or had room: the letter, handed back.
    Refused(DeadLetter),
}

impl State {
    /// Keeps `letter`, handing back the letter it pushed out (or `letter` itself at
    /// capacity 0) for the caller to count as dropped.
    fn keep(&mut self, letter: DeadLetter, capacity: usize) -> Option<DeadLetter> {
        if capacity == 0 {
            return Some(letter);
        }
        let len = self.kept.len();
        let oldest = if len >= capacity {
            self.kept.pop_front()
        } else {
            if len == self.kept.capacity() {
                // Grow by doubling, as `push_back` would, but never past `capacity`
                // slots: a full store's buffer is exactly its bound.
                self.kept.reserve_exact(len.max(4).min(capacity - len));
            }
            None
        };
        self.kept.push_back(letter);
        oldest
    }

    /// Hands `letter` to the first live inbox that wants it and has room.
    fn offer(&self, mut letter: DeadLetter) -> Offered {
        if self.closed {
            return Offered::Refused(letter);
        }
        let kind = letter.reason.kind();
        for inbox in self.inboxes.iter().filter(|i| i.wants(kind)) {
            match inbox.offer(letter) {
                None => return Offered::Taken(inbox.clone()),
                Some(back) => letter = back,
            }
        }
        Offered::Refused(letter)
    }

    /// Subscriptions that can still take letters.
    fn live(&self) -> usize {
        if self.closed {
            0
        } else {
            self.inboxes.len()
        }
    }
}

impl DeadLetters {
    /// A store keeping at most `capacity` letters (0: none, counts only). Nothing is
    /// allocated up front, so a huge capacity costs only what is kept.
    pub(crate) fn new(capacity: usize) -> Self {
        DeadLetters {
            capacity,
            state: Mutex::new(State {
                kept: VecDeque::new(),
                inboxes: Vec::new(),
                closed: false,
            }),
            subscribed: AtomicUsize::new(0),
            recorded: Counter::new(),
            taken: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            #[cfg(feature = "metrics")]
            by_reason: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Dead letters ever recorded, by reason label (for the metrics).
    #[cfg(feature = "metrics")]
    pub(crate) fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let counts = self.by_reason.iter().map(|n| n.load(Relaxed));
        super::DeadLetterReason::LABELS
            .into_iter()
            .zip(counts)
            .collect()
    }

    /// Records `letter`: hands it to a subscription that wants it, or keeps it, pushing
    /// out the oldest if the store is full.
    pub(crate) fn push(&self, letter: DeadLetter) {
        observe::events::dead_letter(&letter.to, &letter.message, &letter.reason, letter.attempts);
        #[cfg(feature = "metrics")]
        self.by_reason[letter.reason.kind().index()].fetch_add(1, Relaxed);
        self.recorded.incr();
        // Nobody to hand it to and nowhere to keep it: count it, lock-free. A
        // subscription made concurrently may miss it, as it would by a moment anyway.
        if self.capacity == 0 && self.subscribed.load(Acquire) == 0 {
            self.count_dropped(letter);
            return;
        }
        let (to_wake, pushed_out) = {
            let mut state = lock(&self.state);
            match state.offer(letter) {
                Offered::Taken(inbox) => (Some(inbox), None),
                Offered::Refused(letter) => (None, state.keep(letter, self.capacity)),
            }
        };
        if let Some(inbox) = to_wake {
            inbox.wake();
        }
        if let Some(oldest) = pushed_out {
            self.count_dropped(oldest);
        }
    }

    /// Counts `letter` as dropped under its reason, and frees it.
    fn count_dropped(&self, letter: DeadLetter) {
        self.dropped[letter.reason.kind().index()].fetch_add(1, Relaxed);
    }

    /// Counts `n` letters taken by a reader or a subscriber.
    pub(super) fn count_taken(&self, n: u64) {
        self.taken.fetch_add(n, Relaxed);
    }

    /// Takes every letter kept so far, oldest first.
    pub(crate) fn drain(&self) -> Vec<DeadLetter> {
        // Taking the whole ring buffer frees its memory with the letters.
        let all = std::mem::take(&mut lock(&self.state).kept);
        self.count_taken(all.len() as u64);
        all.into()
    }

    /// Takes the letters kept so far that `pick` selects, oldest first; keeps the rest
    /// in order.
    pub(crate) fn drain_where(&self, mut pick: impl FnMut(&DeadLetter) -> bool) -> Vec<DeadLetter> {
        let picked: Vec<DeadLetter> = {
            let mut state = lock(&self.state);
            if !state.kept.iter().any(&mut pick) {
                return Vec::new();
            }
            let mut picked = Vec::new();
            let mut rest = VecDeque::with_capacity(state.kept.len());
            for letter in std::mem::take(&mut state.kept) {
                if pick(&letter) {
                    picked.push(letter);
                } else {
                    rest.push_back(letter);
                }
            }
            state.kept = rest;
            picked
        };
        self.count_taken(picked.len() as u64);
        picked
    }

    /// A subscription to `store`'s letters of `kinds`, holding up to `capacity` of them.
    /// (An associated function: loom's `Arc` cannot be a method receiver.)
    pub(crate) fn subscribe(
        store: &Arc<Self>,
        kinds: &[DeadLetterKind],
        capacity: usize,
    ) -> MessagingResult<DeadLetterSubscription> {
        if capacity == 0 {
            return Err(MessagingError::Configuration(
                "a dead-letter subscription needs a capacity of at least 1".into(),
            ));
        }
        if kinds.is_empty() {
            return Err(MessagingError::Configuration(
                "a dead-letter subscription needs at least one DeadLetterKind".into(),
            ));
        }
        Ok(DeadLetterSubscription::new(store.clone(), kinds, capacity))
    }

    /// Lists a new subscription's inbox (closed at once after a shutdown).
    pub(super) fn register(&self, inbox: Arc<Inbox>) {
        let mut state = lock(&self.state);
        if state.closed {
            inbox.close();
        }
        state.inboxes.push(inbox);
        self.subscribed.store(state.live(), Release);
    }

    /// A subscription is dropped: unlists its inbox and keeps what it still held.
    pub(super) fn unregister(&self, inbox: &Arc<Inbox>) {
        let pushed_out: Vec<DeadLetter> = {
            let mut state = lock(&self.state);
            state.inboxes.retain(|i| !Arc::ptr_eq(i, inbox));
            self.subscribed.store(state.live(), Release);
            let held = inbox.close_and_take();
            held.into_iter()
                .filter_map(|letter| state.keep(letter, self.capacity))
                .collect()
        };
        for letter in pushed_out {
            self.count_dropped(letter);
        }
    }

    /// The system shut down: every subscription ends once it has received what it
    /// holds, and later letters stay in the store.
    pub(crate) fn close(&self) {
        let inboxes = {
            let mut state = lock(&self.state);
            state.closed = true;
            self.subscribed.store(0, Release);
            state.inboxes.clone()
        };
        for inbox in inboxes {
            inbox.close();
        }
    }

    /// Letters ever recorded.
    pub(crate) fn total(&self) -> u64 {
        self.recorded.get()
    }

    /// The counters, and how many letters are kept and waiting in subscriptions now.
    pub(crate) fn stats(&self) -> DeadLetterStats {
        let (kept, in_subscriptions) = {
            let state = lock(&self.state);
            let waiting: usize = state.inboxes.iter().map(|i| i.len()).sum();
            (state.kept.len() as u64, waiting as u64)
        };
        let mut dropped_by_reason = BTreeMap::new();
        for kind in DeadLetterKind::ALL {
            let n = self.dropped[kind.index()].load(Relaxed);
            if n > 0 {
                dropped_by_reason.insert(*kind, n);
            }
        }
        DeadLetterStats {
            capacity: self.capacity,
            recorded: self.recorded.get(),
            kept,
            in_subscriptions,
            taken: self.taken.load(Relaxed),
            dropped: dropped_by_reason.values().sum(),
            dropped_by_reason,
        }
    }
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self::new(DEFAULT_DEAD_LETTER_CAPACITY)
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("capacity", &self.capacity)
            .field("recorded", &self.total())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterReason;
    use crate::message::{AgentMessage, AgentPid};

    fn letter(n: u64, reason: DeadLetterReason) -> DeadLetter {
        DeadLetter::message(
            AgentPid::nil(),
            AgentMessage::cast(AgentPid::nil(), n),
            reason,
        )
    }

    fn tags(letters: &[DeadLetter]) -> Vec<u64> {
        letters
            .iter()
            .map(|l| match &l.message {
                super::super::DeadMessage::Message(m) => *m.payload::<u64>().unwrap(),
                super::super::DeadMessage::Envelope(_) => unreachable!(),
            })
            .collect()
    }

    fn adds_up(s: &DeadLetterStats) -> bool {
        s.recorded == s.kept + s.in_subscriptions + s.taken + s.dropped
    }

    #[test]
    fn keeps_the_newest_and_counts_the_rest() {
        let store = DeadLetters::new(2);
        store.push(letter(1, DeadLetterReason::AgentNotFound));
        store.push(letter(2, DeadLetterReason::MailboxFull));
        store.push(letter(3, DeadLetterReason::MailboxFull));
        store.push(letter(4, DeadLetterReason::Expired));
        let s = store.stats();
        assert_eq!((s.recorded, s.kept, s.dropped), (4, 2, 2));
        assert_eq!(
            s.dropped_by_reason.into_iter().collect::<Vec<_>>(),
            [
                (DeadLetterKind::MailboxFull, 1),
                (DeadLetterKind::AgentNotFound, 1)
            ]
        );
        assert_eq!(tags(&store.drain()), [3, 4]);
        let s = store.stats();
        assert_eq!((s.kept, s.taken), (0, 2));
        assert!(adds_up(&s), "{s:?}");
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let store = DeadLetters::new(0);
        for n in 0..3 {
            store.push(letter(n, DeadLetterReason::Shutdown));
        }
        assert!(store.drain().is_empty());
        let s = store.stats();
        assert_eq!((s.recorded, s.kept, s.dropped), (3, 0, 3));
        assert_eq!(s.dropped_by_reason[&DeadLetterKind::Shutdown], 3);
        assert!(adds_up(&s), "{s:?}");
    }

    #[test]
    fn the_ring_buffer_stops_growing_at_capacity() {
        let store = DeadLetters::new(100);
        for n in 0..100 {
            store.push(letter(n, DeadLetterReason::MailboxFull));
        }
        let allocated = lock(&store.state).kept.capacity();
        assert!(allocated <= 100, "{allocated} slots for a bound of 100");
        for n in 100..10_000 {
            store.push(letter(n, DeadLetterReason::MailboxFull));
        }
        assert_eq!(lock(&store.state).kept.capacity(), allocated);
        assert_eq!(lock(&store.state).kept.len(), 100);
        // A drain gives the buffer back.
        assert_eq!(store.drain().len(), 100);
        assert_eq!(lock(&store.state).kept.capacity(), 0);
    }

    #[test]
    fn drain_where_keeps_the_rest_in_order() {
        let store = DeadLetters::new(10);
        for n in 0..6 {
            let reason = if n % 2 == 0 {
                DeadLetterReason::Expired
            } else {
                DeadLetterReason::MailboxFull
            };
            store.push(letter(n, reason));
        }
        let expired = store.drain_where(|l| l.reason == DeadLetterReason::Expired);
        assert_eq!(tags(&expired), [0, 2, 4]);
        assert!(store.drain_where(|_| false).is_empty());
        assert_eq!(tags(&store.drain()), [1, 3, 5]);
        let s = store.stats();
        assert_eq!((s.taken, s.kept), (6, 0));
        assert!(adds_up(&s), "{s:?}");
    }

    #[test]
    fn every_kind_has_its_own_counter() {
        for (i, kind) in DeadLetterKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
