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
//!
//! A reservation lasts at most two windows: a push is synchronous, so one still
//! unsettled after a window lost its thread (a custom router that unwound); a sweep of
//! the map once per window (O(ids), amortised O(1) per id) forgets it rather than
//! keeping it a duplicate forever. Capacity never evicts a reservation (that would let
//! a concurrent copy push). Once expiry has emptied most of the map and the queue,
//! their memory is given back.

use std::collections::VecDeque;
use std::hash::BuildHasherDefault;

use ahash::AHasher;

use super::shrink;
use crate::message::MessageId;

type IdMap<V> = std::collections::HashMap<MessageId, V, BuildHasherDefault<AHasher>>;

/// What the window knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A push is in progress; stale after this tick.
    Reserved { until: u64 },
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
    /// When the next sweep for stale reservations is due.
    next_sweep: u64,
}

impl Dedupe {
    pub(crate) fn new(window_ticks: u64, capacity: usize) -> Self {
        Dedupe {
            window: window_ticks.max(1),
            capacity: capacity.max(1),
            seen: IdMap::default(),
            order: VecDeque::new(),
            next_sweep: window_ticks.max(1),
        }
    }

    pub(crate) fn reserve(&mut self, id: &MessageId, now: u64) -> Reservation {
        self.expire(now);
        match self.seen.get(id) {
            Some(_) => Reservation::Duplicate,
            None => {
                let until = now.saturating_add(self.window);
                self.seen.insert(id.clone(), Seen::Reserved { until });
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
        if matches!(self.seen.get(id), Some(Seen::Reserved { .. })) {
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

    /// Forgets ids whose window has passed, and stale reservations; gives memory
    /// back once most of it is empty.
    pub(crate) fn expire(&mut self, now: u64) {
        while let Some(&(until, _)) = self.order.front() {
            if until > now {
                break;
            }
            let (until, id) = self.order.pop_front().expect("front exists");
            self.forget(&id, until);
        }
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(self.window);
            self.seen
                .retain(|_, seen| !matches!(seen, Seen::Reserved { until } if *until <= now));
        }
        shrink(
            &mut self.seen,
            |m| (m.len(), m.capacity()),
            |m, n| m.shrink_to(n),
        );
        shrink(
            &mut self.order,
            |q| (q.len(), q.capacity()),
            |q, n| q.shrink_to(n),
        );
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

    /// Slots allocated (map and queue), whatever is in them.
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.seen.capacity() + self.order.capacity()
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
    fn a_reservation_never_settled_expires_with_the_window() {
        // A push that never committed nor rolled back (its thread unwound in a custom
        // router): the id must not stay a "duplicate", nor in memory, forever.
        let mut d = Dedupe::new(100, 10);
        let id = MessageId::new();
        assert_eq!(d.reserve(&id, 0), Reservation::Fresh);
        assert_eq!(d.reserve(&id, 99), Reservation::Duplicate);
        assert_eq!(d.reserve(&id, 100), Reservation::Fresh);
        d.rollback(&id);
        d.expire(1_000);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn capacity_never_evicts_a_reservation_in_flight() {
        let mut d = Dedupe::new(u64::MAX, 2);
        let in_flight = MessageId::new();
        assert_eq!(d.reserve(&in_flight, 0), Reservation::Fresh);
        for _ in 0..5 {
            let id = MessageId::new();
            assert_eq!(d.reserve(&id, 0), Reservation::Fresh);
            d.commit(&id, 0);
        }
        assert_eq!(d.reserve(&in_flight, 0), Reservation::Duplicate);
    }

    #[test]
    fn the_map_shrinks_after_a_spike() {
        let mut d = Dedupe::new(10, 100_000);
        for _ in 0..50_000 {
            let id = MessageId::new();
            d.reserve(&id, 0);
            d.commit(&id, 0);
        }
        let peak = d.allocated();
        d.expire(10);
        assert_eq!(d.len(), 0);
        assert!(
            d.allocated() * 16 < peak,
            "{} of {peak} slots kept",
            d.allocated()
        );
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
