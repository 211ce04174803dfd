//! The exactly-once window: which message ids a mailbox has already accepted.
//!
//! An id moves `absent → Reserved → Committed` or back to `absent`:
//!
//! - `reserve` before the push, so two concurrent sends of one id cannot both push;
//! - `commit` once the message is really in a mailbox (never earlier: a retry of a
//!   message whose first push failed must not be mistaken for a duplicate, NATS #6415);
//! - `rollback` if the push failed.
//!
//! # Bounds
//!
//! A committed id is remembered for `window` ticks (`DeliveryConfig::cleanup_interval`)
//! and at most `capacity` ids (`DeliveryConfig::max_delivery_records`) are remembered at
//! once: past that the oldest leave the window early. Ids are committed in time order,
//! so expiry pops from the front of a queue: O(1) amortised per id.

use std::collections::VecDeque;
use std::hash::BuildHasherDefault;

use ahash::AHasher;

use crate::message::MessageId;

type IdMap<V> = std::collections::HashMap<MessageId, V, BuildHasherDefault<AHasher>>;

/// What the window knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A push is in progress.
    Reserved,
    /// Accepted by a mailbox; remembered until this tick.
    Committed { until: u64 },
}

/// The outcome of [`Dedupe::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// First sighting: push, then commit or roll back.
    Fresh,
    /// Already accepted or being pushed: do not push again.
    Duplicate,
}

/// The window of seen ids.
#[derive(Debug)]
pub(crate) struct Dedupe {
    window: u64,
    capacity: usize,
    seen: IdMap<Seen>,
    /// Committed ids in commit order, with their expiry tick.
    order: VecDeque<(u64, MessageId)>,
}

impl Dedupe {
    pub(crate) fn new(window_ticks: u64, capacity: usize) -> Self {
        Dedupe {
            window: window_ticks.max(1),
            capacity: capacity.max(1),
            seen: IdMap::default(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn reserve(&mut self, id: &MessageId, now: u64) -> Reservation {
        self.expire(now);
        match self.seen.get(id) {
            Some(_) => Reservation::Duplicate,
            None => {
                self.seen.insert(id.clone(), Seen::Reserved);
                Reservation::Fresh
            }
        }
    }

    pub(crate) fn commit(&mut self, id: &MessageId, now: u64) {
        let until = now.saturating_add(self.window);
        self.seen.insert(id.clone(), Seen::Committed { until });
        self.order.push_back((until, id.clone()));
        while self.order.len() > self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.forget(&old, u64::MAX);
            }
        }
    }

    pub(crate) fn rollback(&mut self, id: &MessageId) {
        if self.seen.get(id) == Some(&Seen::Reserved) {
            self.seen.remove(id);
        }
    }

    /// Forgets a committed id whose message never reached its receiver after all (it
    /// was handed back from a crashed agent's mailbox), so that its redelivery is not
    /// taken for a duplicate.
    pub(crate) fn uncommit(&mut self, id: &MessageId) {
        if let Some(Seen::Committed { .. }) = self.seen.get(id) {
            self.seen.remove(id);
        }
    }

    /// Forgets ids whose window has passed.
    pub(crate) fn expire(&mut self, now: u64) {
        while let Some(&(until, _)) = self.order.front() {
            if until > now {
                break;
            }
            let (until, id) = self.order.pop_front().expect("front exists");
            self.forget(&id, until);
        }
    }

    /// Removes `id` if its committed entry expires no later than `until` (a later
    /// re-commit of the same id keeps it).
    fn forget(&mut self, id: &MessageId, until: u64) {
        if let Some(Seen::Committed { until: u }) = self.seen.get(id) {
            if *u <= until {
                self.seen.remove(id);
            }
        }
    }

    /// Ids remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reserve_commit_duplicate_expire() {
        let mut d = Dedupe::new(100, 10);
        let id = MessageId::new();
        assert_eq!(d.reserve(&id, 0), Reservation::Fresh);
        assert_eq!(d.reserve(&id, 0), Reservation::Duplicate);
        d.commit(&id, 0);
        assert_eq!(d.reserve(&id, 99), Reservation::Duplicate);
        assert_eq!(d.reserve(&id, 100), Reservation::Fresh);
    }

    #[test]
    fn rollback_allows_retry() {
        let mut d = Dedupe::new(100, 10);
        let id = MessageId::new();
        assert_eq!(d.reserve(&id, 0), Reservation::Fresh);
        d.rollback(&id);
        assert_eq!(d.reserve(&id, 1), Reservation::Fresh);
    }

    #[test]
    fn capacity_bounds_memory() {
        let mut d = Dedupe::new(u64::MAX, 3);
        let ids: Vec<_> = (0..10).map(|_| MessageId::new()).collect();
        for id in &ids {
            assert_eq!(d.reserve(id, 0), Reservation::Fresh);
            d.commit(id, 0);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.reserve(&ids[9], 0), Reservation::Duplicate);
        assert_eq!(d.reserve(&ids[0], 0), Reservation::Fresh);
    }
}
