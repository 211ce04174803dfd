//! [`DeadLetters`]: the bounded store of one system (or of a standalone mailbox or
//! mailbox manager). The module above explains the bound and the ledger.
//!
//! # Ground rules
//!
//! - `kept` never holds more than `capacity` letters: a push at capacity pops the
//!   oldest in the same critical section.
//! - A letter leaves `kept` only through `drain*` (counted `taken`) or by being pushed
//!   out (counted `dropped` under its reason); `recorded` counts every push. So
//!   `recorded = kept.len() + taken + dropped` whenever no push or drain is midway.
//! - Letters are freed outside the lock (a message's drop runs user code: its payload's
//!   `Drop`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use super::{DeadLetter, DeadLetterKind, DeadLetterStats, DEFAULT_DEAD_LETTER_CAPACITY};
use crate::stats::Counter;
use crate::sync::{lock, AtomicU64, Mutex};

/// How many [`DeadLetterKind`]s there are.
const KINDS: usize = DeadLetterKind::ALL.len();

/// The dead-letter store of a system (or of a standalone mailbox or manager).
pub(crate) struct DeadLetters {
    /// The most letters `kept` holds; 0 keeps none.
    capacity: usize,
    /// The newest letters, oldest first.
    kept: Mutex<VecDeque<DeadLetter>>,
    /// Every letter ever pushed. Striped: producers on different cores that refuse
    /// messages at once do not share its line.
    recorded: Counter,
    /// Letters drained by readers.
    taken: AtomicU64,
    /// Letters dropped, by [`DeadLetterKind::index`].
    dropped: [AtomicU64; KINDS],
}

impl DeadLetters {
    /// A store keeping at most `capacity` letters (0: none, counts only). Nothing is
    /// allocated up front, so a huge capacity costs only what is kept.
    pub(crate) fn new(capacity: usize) -> Self {
        DeadLetters {
            capacity,
            kept: Mutex::new(VecDeque::new()),
            recorded: Counter::new(),
            taken: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Records `letter`: keeps it, pushing out the oldest if the store is full.
    pub(crate) fn push(&self, letter: DeadLetter) {
        self.recorded.incr();
        if self.capacity == 0 {
            self.count_dropped(letter);
            return;
        }
        let pushed_out = {
            let mut kept = lock(&self.kept);
            let oldest = if kept.len() >= self.capacity {
                kept.pop_front()
            } else {
                None
            };
            kept.push_back(letter);
            oldest
        };
        if let Some(oldest) = pushed_out {
            self.count_dropped(oldest);
        }
    }

    /// Counts `letter` as dropped under its reason, and frees it.
    fn count_dropped(&self, letter: DeadLetter) {
        self.dropped[letter.reason.kind().index()].fetch_add(1, Relaxed);
    }

    /// Takes every letter kept so far, oldest first.
    pub(crate) fn drain(&self) -> Vec<DeadLetter> {
        // Taking the whole ring buffer frees its memory with the letters.
        let all = std::mem::take(&mut *lock(&self.kept));
        self.taken.fetch_add(all.len() as u64, Relaxed);
        all.into()
    }

    /// Letters ever recorded.
    pub(crate) fn total(&self) -> u64 {
        self.recorded.get()
    }

    /// The counters, and how many letters are kept now.
    pub(crate) fn stats(&self) -> DeadLetterStats {
        let kept = lock(&self.kept).len() as u64;
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
            in_subscriptions: 0,
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
        let allocated = lock(&store.kept).capacity();
        for n in 100..10_000 {
            store.push(letter(n, DeadLetterReason::MailboxFull));
        }
        assert_eq!(lock(&store.kept).capacity(), allocated);
        assert_eq!(lock(&store.kept).len(), 100);
        // A drain gives the buffer back.
        assert_eq!(store.drain().len(), 100);
        assert_eq!(lock(&store.kept).capacity(), 0);
    }

    #[test]
    fn every_kind_has_its_own_counter() {
        for (i, kind) in DeadLetterKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
