//! Hierarchical timing wheel (Varghese & Lauck, "Hashed and Hierarchical
//! Timing Wheels", SOSP 1987), in safe Rust, over an index arena with a
//! dense free stack.
//!
//! The wheel knows nothing about clocks or locks: it takes `&mut self` and
//! `u64` ticks. See the parent module for the level table.
//!
//! # Invariants
//!
//! Write `e` for [`TimerWheel::now`] and "group `k`" of a tick for its bits
//! `6k..6k+6`. Every live node has `deadline > e`, and sits in exactly one
//! bucket:
//!
//! 1. **Level `k` slot `s`** iff `deadline` and `e` agree on every group above
//!    `k` and on the epoch (bits `36..`), differ in group `k`, and `s` is the
//!    deadline's group `k`. Because `deadline > e`, `s` is *strictly greater*
//!    than `e`'s group `k`, so a level's occupied slots never wrap around `e`.
//!    It follows that every deadline at level `k` is smaller than every
//!    deadline at level `k + 1`, and, inside a level, lower slots hold
//!    smaller deadlines: the earliest timer is always in the lowest occupied
//!    slot of the lowest non-empty level, found with two `trailing_zeros`.
//! 2. **Overflow** iff `deadline` lies in a later epoch (`(deadline ^ e) >=
//!    2^36`). Such a deadline is kept exactly (it "saturates" only in where it
//!    is stored, never in when it fires) and is redistributed when `e` enters a
//!    new epoch, so it can neither fire early nor hide shorter timers (tokio
//!    #8334, rpc-perf #180).
//! 3. A slot's bit in `Level::occupied` is set iff its list is non-empty.
//! 4. `Level::min[s]` (resp. `overflow_min`) is a lower bound on the deadlines
//!    in that bucket, and is exact unless the bucket's `stale` flag is set:
//!    the flag is raised only when the node holding the minimum is unlinked
//!    while others remain, and cleared whenever the minimum is known again.
//!
//! Moving `e` forward keeps (1) by draining, in time order, every slot whose
//! start is `<= now` (each drained node either fires or moves to a strictly
//! lower level), and keeps (2) by re-sorting the overflow list when the epoch
//! changes (once per 2^36 ticks, about 2.2 years at 1 ms per tick).

use std::error::Error;
use std::fmt;
use std::mem;
use std::num::NonZeroU16;

/// Bits of a tick consumed by one level: 64 slots per level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask selecting a slot index out of a shifted tick.
const SLOT_MASK: u64 = (SLOTS as u64) - 1;
/// Number of levels.
const LEVELS: usize = 6;
/// log2 of the ticks covered by the wheel proper (one "epoch").
const EPOCH_SHIFT: u32 = SLOT_BITS * LEVELS as u32;
/// Ticks covered by the wheel proper, one epoch: 64^6 = 2^36.
const WHEEL_RANGE: u64 = 1 << EPOCH_SHIFT;
/// Link sentinel: "no node". Arena indices are kept below it (see `grow`).
const NIL: u32 = u32::MAX;
/// Bucket number of the overflow list; wheel buckets are
/// `level * SLOTS + slot`, all smaller.
const OVERFLOW: u16 = (LEVELS * SLOTS) as u16;

/// Encodes bucket number `bucket` for `Node::bucket` as `bucket + 1`: the
/// zero niche makes `Option<Node<T>>` as small as `Node<T>` (32 bytes for an
/// 8-byte `T`, so an arena slot never straddles a cache line).
#[inline]
fn tag(bucket: u16) -> NonZeroU16 {
    NonZeroU16::MIN.saturating_add(bucket)
}

/// Decodes a `Node::bucket` tag back to its bucket number.
#[inline]
fn untag(tag: NonZeroU16) -> u16 {
    tag.get() - 1
}

/// A handle to a timer in a [`TimerWheel`].
///
/// A key is invalidated when its timer fires or is cancelled; the wheel
/// rejects invalidated ("stale") keys even after their storage is reused,
/// because each storage slot carries a generation that is bumped on every
/// free (ABA protection).
///
/// The generation is a `u32` that wraps (no overflow, no panic): a stale key
/// could only be confused with a live one if it were held while its storage
/// slot was freed and reused exactly 2^32 times, and then presented again.
///
/// # Examples
///
/// ```rust
/// use terraphim_agent_messaging::TimerWheel;
///
/// let mut wheel = TimerWheel::new();
/// let key = wheel.insert(10, "ack timeout").unwrap();
/// assert_eq!(wheel.cancel(key), Some("ack timeout"));
/// assert_eq!(wheel.cancel(key), None); // stale
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerKey {
    /// Index of the node in the wheel's arena.
    index: u32,
    /// Generation of that arena slot when the key was issued.
    generation: u32,
}

/// Error returned by [`TimerWheel::insert`] when the deadline is not in the
/// future; it hands the value back so the caller can fire it at once.
///
/// `Debug` prints `Elapsed(..)`, so it does not require `T: Debug`.
///
/// # Examples
///
/// ```rust
/// use terraphim_agent_messaging::{Elapsed, TimerWheel};
///
/// let mut wheel = TimerWheel::with_now(100);
/// let Err(Elapsed(v)) = wheel.insert(100, 7) else { panic!() };
/// assert_eq!(v, 7);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Elapsed<T>(pub T);

impl<T> Elapsed<T> {
    /// Returns the value that was not inserted.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::Elapsed;
    /// assert_eq!(Elapsed(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Elapsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Elapsed(..)")
    }
}

impl<T> fmt::Display for Elapsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has already elapsed")
    }
}

impl<T> Error for Elapsed<T> {}

/// Error returned by [`TimerWheel::reschedule`].
///
/// # Examples
///
/// ```rust
/// use terraphim_agent_messaging::{RescheduleError, TimerWheel};
///
/// let mut wheel = TimerWheel::with_now(5);
/// let key = wheel.insert(10, 'x').unwrap();
/// assert_eq!(wheel.reschedule(key, 3), Err(RescheduleError::Elapsed('x')));
/// assert_eq!(wheel.reschedule(key, 30), Err(RescheduleError::Stale));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RescheduleError<T> {
    /// The key is stale: its timer already fired or was cancelled.
    Stale,
    /// The new deadline is not in the future: the timer was removed (its key
    /// is now stale) and its value is handed back, as [`Elapsed`] does.
    Elapsed(T),
}

impl<T> fmt::Debug for RescheduleError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale => f.write_str("Stale"),
            Self::Elapsed(_) => f.write_str("Elapsed(..)"),
        }
    }
}

impl<T> fmt::Display for RescheduleError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale => f.write_str("timer key is stale"),
            Self::Elapsed(_) => f.write_str("deadline has already elapsed"),
        }
    }
}

impl<T> Error for RescheduleError<T> {}

/// One timer: an element of an intrusive doubly-linked bucket list.
struct Node<T> {
    /// The caller's payload.
    value: T,
    /// Exact tick at (or after) which the timer fires; never rounded.
    deadline: u64,
    /// Previous node in the bucket list, or `NIL` if this is the head.
    prev: u32,
    /// Next node in the bucket list, or `NIL` if this is the tail.
    next: u32,
    /// Bucket holding the node (`level * SLOTS + slot`, or `OVERFLOW`),
    /// encoded by [`tag`], so that an O(1) unlink can fix the head and the
    /// occupancy bit.
    bucket: NonZeroU16,
}

/// One level of the wheel: 64 bucket lists and their bookkeeping.
struct Level {
    /// Bit `s` is set iff `heads[s]` is non-empty (invariant 3), so the
    /// earliest occupied slot is `occupied.trailing_zeros()`.
    occupied: u64,
    /// Bit `s` is set iff `min[s]` may be below the true minimum of the slot
    /// (its minimum node was unlinked while others remained).
    stale: u64,
    /// Head node of each slot's list, or `NIL`.
    heads: [u32; SLOTS],
    /// Smallest deadline in each occupied slot (a lower bound when stale);
    /// meaningless for empty slots. Lets `next_deadline` be exact in O(1).
    min: [u64; SLOTS],
}

impl Level {
    /// An empty level.
    const EMPTY: Level = Level {
        occupied: 0,
        stale: 0,
        heads: [NIL; SLOTS],
        min: [0; SLOTS],
    };
}

/// A hierarchical timing wheel holding values of type `T` keyed by
/// [`TimerKey`].
///
/// Time is a `u64` tick count that only moves forward through
/// [`advance`](Self::advance). Operations cost O(1), except `advance`, which
/// costs O(occupied slots passed + timers fired + timers cascaded), each timer
/// cascading at most 6 times (plus one overflow pass per 2^36-tick epoch it
/// waits through); it never iterates tick by tick.
///
/// # Examples
///
/// ```rust
/// use terraphim_agent_messaging::TimerWheel;
///
/// let mut wheel = TimerWheel::new();
/// wheel.insert(5, "a").unwrap();
/// wheel.insert(70, "b").unwrap();
/// assert_eq!(wheel.next_deadline(), Some(5));
///
/// let mut expired = Vec::new();
/// wheel.advance(64, &mut expired);
/// assert_eq!(expired.len(), 1);
/// assert_eq!(expired[0].1, "a");
/// assert_eq!(wheel.next_deadline(), Some(70));
/// ```
pub struct TimerWheel<T> {
    /// Current tick `e`: every live timer has `deadline > now`.
    now: u64,
    /// Arena of timer slots, `None` when vacant; indices are the
    /// `TimerKey::index`. It never shrinks, so its size is bounded by the
    /// peak number of pending timers.
    nodes: Vec<Option<Node<T>>>,
    /// Generation of each arena slot (same length as `nodes`), bumped
    /// (wrapping) whenever the slot is freed, so stale keys never match a
    /// reused slot. The authority for key validity.
    generations: Vec<u32>,
    /// Vacant arena slots with their current generation, used LIFO.
    ///
    /// A dense stack instead of a free list threaded through the vacant
    /// slots: `insert` learns its slot and the key's generation without
    /// reading the (at scale, cold) slot, so it only *writes* that slot, and
    /// consecutive inserts do not wait on each other's cache misses.
    free: Vec<(u32, u32)>,
    /// Number of pending timers (occupied arena slots).
    len: usize,
    /// The six levels, boxed to keep the handle small (they are ~4.6 KiB).
    ///
    /// With 1 tick = 1 ms (see `TickSource`):
    ///
    /// | level | slot covers            | level covers              |
    /// |-------|------------------------|---------------------------|
    /// | 0     | 1 tick (1 ms)          | 64 ticks (64 ms)          |
    /// | 1     | 64 ticks (64 ms)       | 2^12 ticks (~4 s)         |
    /// | 2     | 2^12 ticks (~4 s)      | 2^18 ticks (~4.4 min)     |
    /// | 3     | 2^18 ticks (~4.4 min)  | 2^24 ticks (~4.7 h)       |
    /// | 4     | 2^24 ticks (~4.7 h)    | 2^30 ticks (~12.4 days)   |
    /// | 5     | 2^30 ticks (~12.4 days)| 2^36 ticks (~2.2 years)   |
    ///
    /// Deadlines in a later 2^36-tick epoch go to the overflow list.
    levels: Box<[Level; LEVELS]>,
    /// Head of the overflow list (deadlines in a later epoch), or `NIL`.
    overflow_head: u32,
    /// Smallest overflow deadline (lower bound when `overflow_stale`);
    /// meaningless when the overflow list is empty.
    overflow_min: u64,
    /// Whether `overflow_min` may be below the true overflow minimum.
    overflow_stale: bool,
}

// ===== impl TimerWheel =====

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose current tick is 0.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let wheel: TimerWheel<()> = TimerWheel::new();
    /// assert_eq!(wheel.now(), 0);
    /// ```
    pub fn new() -> Self {
        Self::with_now(0)
    }

    /// Creates an empty wheel whose current tick is `now`.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let wheel: TimerWheel<()> = TimerWheel::with_now(u64::MAX - 1);
    /// assert_eq!(wheel.now(), u64::MAX - 1);
    /// ```
    pub fn with_now(now: u64) -> Self {
        Self {
            now,
            nodes: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
            levels: Box::new([Level::EMPTY; LEVELS]),
            overflow_head: NIL,
            overflow_min: 0,
            overflow_stale: false,
        }
    }

    /// Returns the current tick: the last `now` passed to
    /// [`advance`](Self::advance), or the starting tick.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel: TimerWheel<()> = TimerWheel::new();
    /// wheel.advance(42, &mut Vec::new());
    /// assert_eq!(wheel.now(), 42);
    /// ```
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Returns the number of pending timers.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// wheel.insert(u64::MAX, ()).unwrap();
    /// assert_eq!(wheel.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns `true` if no timer is pending.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let wheel: TimerWheel<()> = TimerWheel::new();
    /// assert!(wheel.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `value` to fire at tick `deadline`.
    ///
    /// Any `deadline > now` is accepted, up to and including `u64::MAX`.
    /// Deadlines beyond the wheel's 2^36-tick range saturate into an overflow
    /// bucket but keep their exact value: they fire neither early nor late,
    /// and never hide shorter timers from [`next_deadline`](Self::next_deadline).
    ///
    /// # Errors
    ///
    /// Returns [`Elapsed`] with the value if `deadline <= now`.
    ///
    /// # Panics
    ///
    /// Panics if `u32::MAX` timers are already pending (keys use `u32`
    /// indices).
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// let key = wheel.insert(u64::MAX, "forever").unwrap();
    /// assert_eq!(wheel.deadline(key), Some(u64::MAX));
    /// assert!(wheel.insert(0, "now").is_err());
    /// ```
    #[inline]
    pub fn insert(&mut self, deadline: u64, value: T) -> Result<TimerKey, Elapsed<T>> {
        if deadline <= self.now {
            return Err(Elapsed(value));
        }
        let (index, generation) = match self.free.pop() {
            Some(vacant) => vacant,
            None => self.grow(),
        };
        let (bucket, next) = self.push_head(index, deadline);
        // Only written, never read: the slot is vacant (`free` said so).
        self.nodes[index as usize] = Some(Node {
            value,
            deadline,
            prev: NIL,
            next,
            bucket,
        });
        self.len += 1;
        Ok(TimerKey { index, generation })
    }

    /// Cancels the timer, returning its value, or `None` if the key is stale
    /// (already fired or cancelled). O(1).
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// let key = wheel.insert(3, 'a').unwrap();
    /// assert_eq!(wheel.cancel(key), Some('a'));
    /// assert!(wheel.is_empty());
    /// ```
    #[inline]
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let index = self.resolve(key)?;
        self.unlink(index);
        Some(self.free(index))
    }

    /// Returns a reference to the timer's value, or `None` if the key is
    /// stale.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// let key = wheel.insert(3, 'a').unwrap();
    /// assert_eq!(wheel.get(key), Some(&'a'));
    /// ```
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        let index = self.resolve(key)?;
        Some(&self.node(index).value)
    }

    /// Returns the timer's exact deadline, or `None` if the key is stale.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// let key = wheel.insert(1 << 40, ()).unwrap();
    /// assert_eq!(wheel.deadline(key), Some(1 << 40));
    /// ```
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        let index = self.resolve(key)?;
        Some(self.node(index).deadline)
    }

    /// Moves a pending timer to a new deadline, keeping its key. O(1).
    ///
    /// # Errors
    ///
    /// [`RescheduleError::Stale`] if the key is stale (nothing changes);
    /// [`RescheduleError::Elapsed`] with the value if `deadline <= now`, in
    /// which case the timer is removed, as [`insert`](Self::insert) would
    /// refuse it.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// let key = wheel.insert(10, ()).unwrap();
    /// wheel.reschedule(key, 5000).unwrap();
    /// assert_eq!(wheel.next_deadline(), Some(5000));
    /// ```
    pub fn reschedule(&mut self, key: TimerKey, deadline: u64) -> Result<(), RescheduleError<T>> {
        let index = self.resolve(key).ok_or(RescheduleError::Stale)?;
        self.unlink(index);
        if deadline <= self.now {
            return Err(RescheduleError::Elapsed(self.free(index)));
        }
        self.node_mut(index).deadline = deadline;
        self.link(index);
        Ok(())
    }

    /// Moves time forward to `now` and appends every timer with
    /// `deadline <= now` to `expired`, each exactly once, in no particular
    /// order; their keys become stale. Timers with a later deadline stay.
    ///
    /// Time never goes backwards: if `now <= self.now()` this does nothing.
    /// Any jump, even to `u64::MAX`, costs only the occupied slots it passes.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// let key = wheel.insert(1 << 36, "late").unwrap();
    /// let mut expired = Vec::new();
    /// wheel.advance((1 << 36) - 1, &mut expired);
    /// assert!(expired.is_empty());
    /// wheel.advance(1 << 36, &mut expired);
    /// assert_eq!(expired, vec![(key, "late")]);
    /// ```
    pub fn advance(&mut self, now: u64, expired: &mut Vec<(TimerKey, T)>) {
        if now <= self.now {
            return;
        }
        let old_epoch = self.now >> EPOCH_SHIFT;
        // Visit occupied slots in time order (invariant 1), jumping straight
        // from one to the next. Each drained node fires or moves to a lower
        // level, so the loop ends after O(slots + cascades) steps.
        while let Some((level, slot)) = self.first_occupied() {
            let start = slot_start(self.now, level, slot);
            if start > now {
                break;
            }
            // Entering the slot's range: `e = start` is the only position at
            // which its nodes can be re-sorted against `e` without any of
            // them being in the past, except those due exactly at `start`.
            self.now = start;
            self.drain_bucket((level * SLOTS + slot) as u16, expired);
        }
        // No slot starts in `(e, now]`, so setting `e = now` keeps invariant
        // 1 (see the module doc): each occupied slot still lies after `now`.
        self.now = now;
        if now >> EPOCH_SHIFT != old_epoch && self.overflow_head != NIL {
            // A new epoch: the wheel proper is empty (all of it lay in the old
            // epoch, before `now`), and overflow nodes due in this epoch must
            // move into the wheel, or fire if already due.
            self.drain_bucket(OVERFLOW, expired);
        }
    }

    /// Returns the exact earliest deadline among pending timers, or `None`
    /// if there are none. The result is always `> now()`, and
    /// `advance(next_deadline)` fires at least that timer, so a driver loop
    /// `sleep_until(next_deadline); advance(..)` fires every timer exactly at
    /// its deadline and never spins.
    ///
    /// Cost: O(1), unless the earliest timer of the earliest bucket was
    /// cancelled or rescheduled since that bucket was filled; then one scan
    /// of that bucket (typically a few entries) finds the new minimum.
    ///
    /// A timer at `u64::MAX` is reported as `Some(u64::MAX)` once it is the
    /// only one left; it fires only if time reaches `u64::MAX`.
    ///
    /// # Examples
    ///
    /// ```rust
    /// use terraphim_agent_messaging::TimerWheel;
    /// let mut wheel = TimerWheel::new();
    /// wheel.insert(u64::MAX, ()).unwrap();
    /// wheel.insert(1 << 30, ()).unwrap();
    /// assert_eq!(wheel.next_deadline(), Some(1 << 30));
    /// ```
    pub fn next_deadline(&self) -> Option<u64> {
        if let Some((level, slot)) = self.first_occupied() {
            let lvl = &self.levels[level];
            if lvl.stale & (1 << slot) == 0 {
                return Some(lvl.min[slot]);
            }
            return Some(self.scan_min(lvl.heads[slot]));
        }
        if self.overflow_head == NIL {
            None
        } else if !self.overflow_stale {
            Some(self.overflow_min)
        } else {
            Some(self.scan_min(self.overflow_head))
        }
    }

    // ----- internals -----

    /// Appends a vacant slot to the arena (the free stack is empty) and
    /// returns its index and generation.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> (u32, u32) {
        // Index `NIL` is the list sentinel, so it can never name a node.
        let index = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("TimerWheel: too many pending timers (limit is u32::MAX - 1)");
        self.nodes.push(None);
        self.generations.push(0);
        (index, 0)
    }

    /// The occupied node at `index`.
    #[inline]
    fn node(&self, index: u32) -> &Node<T> {
        match &self.nodes[index as usize] {
            Some(node) => node,
            None => unreachable!("TimerWheel: vacant slot linked"),
        }
    }

    /// The occupied node at `index`, mutably.
    #[inline]
    fn node_mut(&mut self, index: u32) -> &mut Node<T> {
        match &mut self.nodes[index as usize] {
            Some(node) => node,
            None => unreachable!("TimerWheel: vacant slot linked"),
        }
    }

    /// Maps a key to its arena index if the key is live.
    #[inline]
    fn resolve(&self, key: TimerKey) -> Option<u32> {
        let generation = *self.generations.get(key.index as usize)?;
        (generation == key.generation && self.nodes[key.index as usize].is_some())
            .then_some(key.index)
    }

    /// Vacates an unlinked node's slot, invalidates its keys and pushes the
    /// slot, with its new generation, onto the free stack.
    #[inline]
    fn free(&mut self, index: u32) -> T {
        let Some(node) = self.nodes[index as usize].take() else {
            unreachable!("TimerWheel: freeing a vacant slot");
        };
        let generation = &mut self.generations[index as usize];
        *generation = generation.wrapping_add(1);
        self.free.push((index, *generation));
        self.len -= 1;
        node.value
    }

    /// The lowest occupied slot of the lowest non-empty level: by invariant
    /// 1 it holds the earliest deadline of the wheel proper.
    fn first_occupied(&self) -> Option<(usize, usize)> {
        self.levels
            .iter()
            .position(|l| l.occupied != 0)
            .map(|level| {
                let slot = self.levels[level].occupied.trailing_zeros() as usize;
                (level, slot)
            })
    }

    /// Smallest deadline in the list starting at `head` (O(list length)).
    fn scan_min(&self, mut cur: u32) -> u64 {
        let mut min = u64::MAX;
        while cur != NIL {
            let node = self.node(cur);
            min = min.min(node.deadline);
            cur = node.next;
        }
        min
    }

    /// Pushes node `index` onto the front of the bucket its deadline belongs
    /// to relative to `self.now` (which must be before the deadline).
    fn link(&mut self, index: u32) {
        let deadline = self.node(index).deadline;
        let (bucket, next) = self.push_head(index, deadline);
        let node = self.node_mut(index);
        node.prev = NIL;
        node.next = next;
        node.bucket = bucket;
    }

    /// Makes `index` the head of the bucket for `deadline` (relative to
    /// `self.now`, which must be before it), updating the bucket's occupancy
    /// and minimum and the old head's `prev`; returns the bucket's tag and
    /// the old head, which the caller stores in the node (with `prev: NIL`).
    /// Node `index` itself is not touched, so `insert` can write it whole.
    #[inline]
    fn push_head(&mut self, index: u32, deadline: u64) -> (NonZeroU16, u32) {
        debug_assert!(deadline > self.now, "linking a due timer");
        let (bucket, head) = match level_for(self.now, deadline) {
            Some(level) => {
                let slot = ((deadline >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize;
                let lvl = &mut self.levels[level];
                let bit = 1u64 << slot;
                if lvl.occupied & bit == 0 || deadline <= lvl.min[slot] {
                    // Empty bucket, or a new minimum: the cached min is exact.
                    lvl.min[slot] = deadline;
                    lvl.stale &= !bit;
                }
                lvl.occupied |= bit;
                ((level * SLOTS + slot) as u16, &mut lvl.heads[slot])
            }
            None => {
                if self.overflow_head == NIL || deadline <= self.overflow_min {
                    self.overflow_min = deadline;
                    self.overflow_stale = false;
                }
                (OVERFLOW, &mut self.overflow_head)
            }
        };
        let old_head = mem::replace(head, index);
        if old_head != NIL {
            self.node_mut(old_head).prev = index;
        }
        (tag(bucket), old_head)
    }

    /// Detaches node `index` from its bucket list in O(1), keeping the
    /// occupancy bit and the cached minimum's staleness flag correct.
    #[inline]
    fn unlink(&mut self, index: u32) {
        let node = self.node(index);
        let (prev, next, deadline) = (node.prev, node.next, node.deadline);
        let bucket = untag(node.bucket);
        if next != NIL {
            self.node_mut(next).prev = prev;
        }
        if prev != NIL {
            self.node_mut(prev).next = next;
        }
        if bucket == OVERFLOW {
            if prev == NIL {
                self.overflow_head = next;
            }
            if deadline == self.overflow_min {
                self.overflow_stale = true;
            }
            return;
        }
        let (level, slot) = (bucket as usize / SLOTS, bucket as usize % SLOTS);
        let lvl = &mut self.levels[level];
        if prev == NIL {
            lvl.heads[slot] = next;
        }
        if lvl.heads[slot] == NIL {
            lvl.occupied &= !(1 << slot);
        } else if deadline == lvl.min[slot] {
            // Another node may share this deadline, but finding out costs a
            // scan; defer it to `next_deadline`, keeping cancel O(1).
            lvl.stale |= 1 << slot;
        }
    }

    /// Empties a bucket at the current `self.now`: nodes due (`deadline <=
    /// now`) are freed into `expired`, the others are re-linked, which puts
    /// them in strictly lower levels (or the wheel, for overflow nodes).
    fn drain_bucket(&mut self, bucket: u16, expired: &mut Vec<(TimerKey, T)>) {
        // Take the whole list before re-linking anything. Re-linking pushes
        // onto bucket heads; were a node to land back in the list being
        // walked (as a far deadline that wraps around to the same slot does
        // in wheels without an overflow list, and as overflow nodes still in
        // a later epoch do here), walking the live list would meet it again
        // and loop forever. A detached list is visited exactly once.
        let mut cur = if bucket == OVERFLOW {
            self.overflow_stale = false;
            mem::replace(&mut self.overflow_head, NIL)
        } else {
            let (level, slot) = (bucket as usize / SLOTS, bucket as usize % SLOTS);
            let lvl = &mut self.levels[level];
            lvl.occupied &= !(1 << slot);
            lvl.stale &= !(1 << slot);
            mem::replace(&mut lvl.heads[slot], NIL)
        };
        while cur != NIL {
            let node = self.node(cur);
            let next = node.next;
            if node.deadline <= self.now {
                let generation = self.generations[cur as usize];
                let value = self.free(cur);
                expired.push((
                    TimerKey {
                        index: cur,
                        generation,
                    },
                    value,
                ));
            } else {
                self.link(cur);
            }
            cur = next;
        }
    }
}

impl<T> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now", &self.now)
            .field("len", &self.len())
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

// ===== free functions =====

/// Level at which a timer due at `deadline` is stored while the wheel is at
/// `now` (`deadline > now`): the highest 6-bit group in which the two ticks
/// differ. `None` means a later 2^36-tick epoch, i.e. the overflow list.
fn level_for(now: u64, deadline: u64) -> Option<usize> {
    // `| SLOT_MASK` maps "differ only in group 0" (or not at all) to level 0.
    let masked = (now ^ deadline) | SLOT_MASK;
    if masked >= WHEEL_RANGE {
        return None;
    }
    let significant = u64::BITS - 1 - masked.leading_zeros();
    Some((significant / SLOT_BITS) as usize)
}

/// First tick covered by slot `slot` of `level` in the level rotation that
/// contains `now`. Never overflows: the result shares `now`'s higher bits.
fn slot_start(now: u64, level: usize, slot: usize) -> u64 {
    let shift = level as u32 * SLOT_BITS;
    let level_span_mask = (1u64 << (shift + SLOT_BITS)) - 1;
    (now & !level_span_mask) | ((slot as u64) << shift)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    const R: u64 = WHEEL_RANGE;

    fn fire(wheel: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut expired = Vec::new();
        wheel.advance(now, &mut expired);
        let mut ids: Vec<u32> = expired.into_iter().map(|(_, v)| v).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn smoke() {
        let mut wheel = TimerWheel::new();
        let key = wheel.insert(3, 1u32).unwrap();
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.get(key), Some(&1));
        assert_eq!(wheel.deadline(key), Some(3));
        assert!(fire(&mut wheel, 2).is_empty());
        assert_eq!(fire(&mut wheel, 3), vec![1]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert_eq!(wheel.get(key), None);
    }

    #[test]
    fn insert_elapsed() {
        let mut wheel = TimerWheel::with_now(10);
        assert_eq!(wheel.insert(10, 1u32).unwrap_err().into_inner(), 1);
        assert_eq!(wheel.insert(0, 2u32).unwrap_err().0, 2);
        assert!(wheel.is_empty());
        assert_eq!(format!("{:?}", Elapsed(())), "Elapsed(..)");
    }

    #[test]
    fn cancel_and_stale_keys() {
        let mut wheel = TimerWheel::new();
        let a = wheel.insert(100, 1u32).unwrap();
        assert_eq!(wheel.cancel(a), Some(1));
        assert_eq!(wheel.cancel(a), None);
        // The slab slot is reused; the old key must not see the new timer.
        let b = wheel.insert(100, 2u32).unwrap();
        assert_eq!(a.index, b.index);
        assert_ne!(a, b);
        assert_eq!(wheel.get(a), None);
        assert_eq!(wheel.deadline(a), None);
        assert_eq!(wheel.reschedule(a, 5), Err(RescheduleError::Stale));
        assert_eq!(fire(&mut wheel, 100), vec![2]);
        // Stale after fire, and after the slot is reused again.
        assert_eq!(wheel.cancel(b), None);
        let c = wheel.insert(200, 3u32).unwrap();
        assert_eq!(wheel.get(b), None);
        assert_eq!(wheel.cancel(c), Some(3));
        assert!(fire(&mut wheel, 1000).is_empty());
        // A key that was never issued.
        let bogus = TimerKey {
            index: 77,
            generation: 0,
        };
        assert_eq!(wheel.cancel(bogus), None);
    }

    #[test]
    fn slot_is_compact() {
        // The `bucket` niche keeps a slot at 32 bytes for an 8-byte value,
        // so slots never straddle a 64-byte cache line.
        assert_eq!(mem::size_of::<Option<Node<u64>>>(), 32);
        assert_eq!(untag(tag(0)), 0);
        assert_eq!(untag(tag(OVERFLOW)), OVERFLOW);
    }

    #[test]
    fn arena_is_bounded_by_peak() {
        // Freed slots are reused (LIFO), so churn never grows the arena past
        // the peak pending count, and every reuse issues a fresh key.
        let mut wheel = TimerWheel::new();
        let mut keys: Vec<TimerKey> = (0..100u32)
            .map(|i| wheel.insert(1000 + u64::from(i), i).unwrap())
            .collect();
        let mut seen: std::collections::HashSet<TimerKey> = keys.iter().copied().collect();
        for round in 0..50u32 {
            for (i, key) in keys.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
                assert_eq!(wheel.cancel(*key), Some(i as u32));
                *key = wheel.insert(2000 + u64::from(round), i as u32).unwrap();
                assert!(seen.insert(*key), "key reissued");
            }
            assert_eq!(wheel.len(), 100);
            assert_eq!(wheel.nodes.len(), 100);
            assert!(wheel.free.is_empty());
        }
        for key in &keys[..40] {
            wheel.cancel(*key).unwrap();
        }
        assert_eq!((wheel.len(), wheel.free.len()), (60, 40));
        assert_eq!(fire(&mut wheel, u64::MAX).len(), 60);
        assert_eq!((wheel.nodes.len(), wheel.free.len()), (100, 100));
    }

    #[test]
    fn generation_wraps() {
        let mut wheel = TimerWheel::new();
        let k = wheel.insert(5, 0u32).unwrap();
        wheel.generations[k.index as usize] = u32::MAX;
        let k = TimerKey {
            index: k.index,
            generation: u32::MAX,
        };
        assert_eq!(wheel.cancel(k), Some(0));
        let k2 = wheel.insert(5, 1u32).unwrap();
        assert_eq!(k2.generation, 0);
        assert_eq!(wheel.cancel(k), None);
        assert_eq!(wheel.cancel(k2), Some(1));
    }

    #[test]
    fn level_for_boundaries() {
        let cases: &[(u64, Option<usize>)] = &[
            (0, Some(0)),
            (1, Some(0)),
            (63, Some(0)),
            (64, Some(1)),
            (65, Some(1)),
            (4095, Some(1)),
            (4096, Some(2)),
            ((1 << 18) - 1, Some(2)),
            (1 << 18, Some(3)),
            ((1 << 24) - 1, Some(3)),
            (1 << 24, Some(4)),
            ((1 << 30) - 1, Some(4)),
            (1 << 30, Some(5)),
            ((1 << 30) + 1, Some(5)),
            (R - 1, Some(5)),
            (R, None),
            (R + 1, None),
            (u64::MAX, None),
        ];
        for &(when, level) in cases {
            assert_eq!(level_for(0, when), level, "level_for(0, {when})");
        }
        // Exhaustive over every power-of-two boundary: level = bit / 6.
        for bit in 0..64u32 {
            let when = 1u64 << bit;
            let want = (bit < 36).then_some((bit / SLOT_BITS) as usize);
            assert_eq!(level_for(0, when), want, "bit {bit}");
            if bit >= 1 {
                let below = (bit - 1 < 36).then_some(((bit - 1) / SLOT_BITS) as usize);
                assert_eq!(level_for(0, when - 1), below, "bit {bit} - 1");
                assert_eq!(level_for(0, when + 1), want, "bit {bit} + 1");
            }
        }
        // Relative to a non-zero `now`, only the differing groups matter.
        assert_eq!(level_for(63, 64), Some(1));
        assert_eq!(level_for(64, 127), Some(0));
        assert_eq!(level_for(R - 1, R), None);
        assert_eq!(level_for(R, 2 * R - 1), Some(5));
        assert_eq!(level_for(u64::MAX - 1, u64::MAX), Some(0));
        assert_eq!(level_for(u64::MAX - R, u64::MAX), None);
    }

    #[test]
    fn fires_at_every_level_never_early() {
        for start in [0, 5, (1 << 30) - 3, R - 2, u64::MAX - (3 * R)] {
            for delay in [
                1,
                63,
                64,
                65,
                4095,
                4096,
                (1 << 30) - 1,
                1 << 30,
                R - 1,
                R,
                R + 1,
            ] {
                let mut wheel = TimerWheel::with_now(start);
                let deadline = start + delay;
                wheel.insert(deadline, 7u32).unwrap();
                assert_eq!(wheel.next_deadline(), Some(deadline));
                assert!(fire(&mut wheel, deadline - 1).is_empty(), "{start}+{delay}");
                assert_eq!(wheel.next_deadline(), Some(deadline));
                assert_eq!(fire(&mut wheel, deadline), vec![7], "{start}+{delay}");
            }
        }
    }

    #[test]
    fn huge_jumps_are_fast() {
        let mut wheel = TimerWheel::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for id in 0..10_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            wheel.insert(1 + x % (1 << 40), id).unwrap();
        }
        wheel.insert(u64::MAX, 10_000).unwrap();
        assert_eq!(fire(&mut wheel, 1 << 40).len(), 10_000);
        // Jump epoch by epoch: each step is a handful of operations.
        let mut now = 1u64 << 40;
        for _ in 0..100_000 {
            now += R;
            assert!(fire(&mut wheel, now).is_empty());
        }
        assert_eq!(wheel.next_deadline(), Some(u64::MAX));
        assert!(fire(&mut wheel, u64::MAX - 1).is_empty());
        assert_eq!(fire(&mut wheel, u64::MAX), vec![10_000]);
        assert!(fire(&mut wheel, u64::MAX).is_empty());
    }

    #[test]
    fn max_deadline_does_not_hide_short_timers() {
        // tokio #8334: after 2^30 ticks a far timer in the top level hid short ones.
        let mut wheel = TimerWheel::with_now((1 << 30) + 5);
        wheel.insert(u64::MAX, 0u32).unwrap();
        wheel.insert((1 << 30) + 6 + R, 1).unwrap();
        for i in 0..100u64 {
            let now = wheel.now();
            let key = wheel.insert(now + 1 + (i % 3) * 1000, 2).unwrap();
            let d = wheel.next_deadline().unwrap();
            assert_eq!(Some(d), wheel.deadline(key));
            assert_eq!(fire(&mut wheel, d), vec![2]);
        }
        assert_eq!(wheel.len(), 2);
    }

    #[test]
    fn now_near_max() {
        let mut wheel = TimerWheel::with_now(u64::MAX - 70);
        for d in 1..=70 {
            wheel.insert(u64::MAX - 70 + d, d as u32).unwrap();
        }
        assert!(wheel.insert(u64::MAX - 70, 0).is_err());
        assert_eq!(fire(&mut wheel, u64::MAX - 1).len(), 69);
        assert_eq!(fire(&mut wheel, u64::MAX), vec![70]);
        assert!(wheel.insert(u64::MAX, 0).is_err());
        assert_eq!(wheel.now(), u64::MAX);
    }

    #[test]
    fn advance_backwards_is_noop() {
        let mut wheel = TimerWheel::with_now(100);
        wheel.insert(150, 1u32).unwrap();
        assert!(fire(&mut wheel, 50).is_empty());
        assert_eq!(wheel.now(), 100);
        assert_eq!(fire(&mut wheel, 150), vec![1]);
    }

    #[test]
    fn next_deadline_after_cancels() {
        let mut wheel = TimerWheel::new();
        // Several timers in one level-2 slot; cancel the minimum repeatedly.
        let keys: Vec<_> = (0..10)
            .map(|i| wheel.insert(8192 + i * 10, i as u32).unwrap())
            .collect();
        wheel.insert(8192 + 5, 99).unwrap();
        assert_eq!(wheel.next_deadline(), Some(8192));
        wheel.cancel(keys[0]).unwrap();
        assert_eq!(wheel.next_deadline(), Some(8197));
        wheel.reschedule(keys[1], 8193).unwrap();
        assert_eq!(wheel.next_deadline(), Some(8193));
        wheel.reschedule(keys[1], 1 << 50).unwrap();
        assert_eq!(wheel.next_deadline(), Some(8197));
        // Same in the overflow list.
        let mut wheel = TimerWheel::new();
        let a = wheel.insert(R + 1, 0u32).unwrap();
        wheel.insert(R + 2, 1).unwrap();
        assert_eq!(wheel.next_deadline(), Some(R + 1));
        wheel.cancel(a).unwrap();
        assert_eq!(wheel.next_deadline(), Some(R + 2));
        assert_eq!(wheel.reschedule(a, 9), Err(RescheduleError::Stale));
    }

    #[test]
    fn reschedule_elapsed_removes() {
        let mut wheel = TimerWheel::with_now(10);
        let k = wheel.insert(20, 1u32).unwrap();
        assert_eq!(wheel.reschedule(k, 10), Err(RescheduleError::Elapsed(1)));
        assert!(wheel.is_empty());
        assert_eq!(wheel.get(k), None);
        assert!(format!("{wheel:?}").starts_with("TimerWheel"));
    }

    // ----- model-based property test -----

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        Cancel { pick: usize, stale: bool },
        Reschedule { pick: usize, delay: u64 },
        Advance(u64),
    }

    fn delay() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                63,
                64,
                65,
                4095,
                4096,
                (1 << 30) - 1,
                1 << 30,
                (1 << 30) + 1,
                R - 1,
                R,
                R + 1,
                u64::MAX,
            ]),
            0..200u64,
            0..100_000u64,
        ]
    }

    fn advance_by() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![1, 64, 1 << 30, R]),
            1..200u64,
            1..100_000u64,
        ]
    }

    fn ops(cancels: bool) -> impl Strategy<Value = Vec<Op>> {
        let insert = delay().prop_map(Op::Insert);
        let advance = advance_by().prop_map(Op::Advance);
        let cancel =
            (any::<usize>(), any::<bool>()).prop_map(|(pick, stale)| Op::Cancel { pick, stale });
        let resched =
            (any::<usize>(), delay()).prop_map(|(pick, delay)| Op::Reschedule { pick, delay });
        let op = if cancels {
            prop_oneof![4 => insert, 2 => cancel, 1 => resched, 3 => advance].boxed()
        } else {
            prop_oneof![4 => insert, 3 => advance].boxed()
        };
        prop::collection::vec(op, 1..60)
    }

    fn start() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..8u64,
            (1u64 << 30) - 8..(1u64 << 30) + 8,
            R - 8..R + 8,
            u64::MAX - R - 8..u64::MAX - R + 8,
            u64::MAX - 100..=u64::MAX,
        ]
    }

    /// Runs `ops` against the wheel and a `BTreeMap` model, checking after
    /// every op that `len` and `next_deadline` (exact) match the model, and
    /// that each advance fires exactly the model's due set, each id once.
    /// Finally drives the wheel by `next_deadline` until it is empty.
    fn check(start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut wheel = TimerWheel::with_now(start);
        let mut model: BTreeMap<(u64, u32), TimerKey> = BTreeMap::new();
        let mut deadline_of: HashMap<u32, u64> = HashMap::new();
        let mut stale: Vec<TimerKey> = Vec::new();
        let mut fired: BTreeSet<u32> = BTreeSet::new();
        let mut next_id = 0u32;
        for op in ops {
            let now = wheel.now();
            match op {
                Op::Insert(delay) => {
                    let id = next_id;
                    next_id += 1;
                    let deadline = now.saturating_add(delay);
                    match wheel.insert(deadline, id) {
                        Ok(key) => {
                            prop_assert!(deadline > now);
                            model.insert((deadline, id), key);
                            deadline_of.insert(id, deadline);
                        }
                        Err(Elapsed(v)) => {
                            prop_assert!(deadline <= now);
                            prop_assert_eq!(v, id);
                        }
                    }
                }
                Op::Cancel { pick, stale: true } if !stale.is_empty() => {
                    let key = stale[pick % stale.len()];
                    prop_assert_eq!(wheel.cancel(key), None);
                    prop_assert_eq!(wheel.get(key), None);
                }
                Op::Cancel { pick, .. } => {
                    if model.is_empty() {
                        continue;
                    }
                    let (&(d, id), &key) = model.iter().nth(pick % model.len()).unwrap();
                    prop_assert_eq!(wheel.cancel(key), Some(id));
                    model.remove(&(d, id));
                    stale.push(key);
                }
                Op::Reschedule { pick, delay } => {
                    if model.is_empty() {
                        continue;
                    }
                    let (&(d, id), &key) = model.iter().nth(pick % model.len()).unwrap();
                    let deadline = now.saturating_add(delay);
                    model.remove(&(d, id));
                    match wheel.reschedule(key, deadline) {
                        Ok(()) => {
                            model.insert((deadline, id), key);
                            deadline_of.insert(id, deadline);
                        }
                        Err(e) => {
                            prop_assert!(deadline <= now);
                            prop_assert_eq!(e, RescheduleError::Elapsed(id));
                            stale.push(key);
                        }
                    }
                }
                Op::Advance(by) => {
                    let target = now.saturating_add(by);
                    let mut expired = Vec::new();
                    wheel.advance(target, &mut expired);
                    let due = match target.checked_add(1) {
                        Some(after) => {
                            let later = model.split_off(&(after, 0));
                            std::mem::replace(&mut model, later)
                        }
                        None => std::mem::take(&mut model), // everything is due
                    };
                    let mut got: Vec<u32> = Vec::new();
                    for (key, id) in expired {
                        let d = deadline_of[&id];
                        prop_assert!(d > now && d <= target, "fired early/late");
                        prop_assert!(fired.insert(id), "fired twice");
                        prop_assert_eq!(wheel.get(key), None);
                        stale.push(key);
                        got.push(id);
                    }
                    got.sort_unstable();
                    let mut want: Vec<u32> = due.keys().map(|&(_, id)| id).collect();
                    want.sort_unstable();
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(wheel.len(), model.len());
            let want_next = model.keys().next().map(|&(d, _)| d);
            prop_assert_eq!(wheel.next_deadline(), want_next);
        }
        // Driving by `next_deadline` fires each remaining timer exactly at
        // its deadline, and never spins.
        while let Some(d) = wheel.next_deadline() {
            prop_assert!(d > wheel.now());
            let mut expired = Vec::new();
            wheel.advance(d, &mut expired);
            prop_assert!(!expired.is_empty(), "no progress at {}", d);
            for (_, id) in expired {
                prop_assert_eq!(deadline_of[&id], d);
                prop_assert!(model.remove(&(d, id)).is_some());
            }
        }
        prop_assert!(model.is_empty());
        Ok(())
    }

    proptest! {
        #[test]
        fn model(start in start(), ops in ops(true)) {
            check(start, ops)?;
        }

        #[test]
        fn model_insert_advance_only(start in start(), ops in ops(false)) {
            check(start, ops)?;
        }
    }
}
