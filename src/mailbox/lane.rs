//! One priority lane: an unbounded, lock-free, multi-producer single-consumer queue.
//!
//! The lane is a linked list of blocks of `BLOCK_CAP` slots, the design of crossbeam's
//! `list` flavour narrowed to a single consumer.
//!
//! # Ground rules
//!
//! - **Producers** claim a slot by advancing `tail.index` with a CAS, write the value,
//!   then set the slot's `ready` flag (a swap: see below). The producer that claims the last
//!   slot of a block installs the next block *before* it writes its own value, so a
//!   consumer that has read that value always finds `block.next` set.
//! - A producer always loads `tail.block` *after* `tail.index`: a block is stored before
//!   the index enters its lap, and the next block only once the index has left it, so a
//!   successful CAS on the index proves the block loaded after it is the index's block.
//! - **The consumer** (exactly one at a time; the mailbox's receiver claim enforces it)
//!   owns `head`. It reads a slot only after seeing `ready` with `Acquire`, and frees a
//!   block once it has read every slot of it: by then every producer that wrote into the
//!   block has finished with it, and no producer dereferences a block it has not claimed
//!   a slot in.
//! - **Close** sets [`CLOSED`] in `tail.index`. Claims and the mark are ordered by the
//!   same atomic, so every message whose claim came before the mark is in the lane and
//!   every later `push` fails and hands its value back: a send is never `Ok` and stranded.
//! - **Recycling.** The consumer resets a block it has finished and parks it in
//!   `head.spare` (one at most); the producer that needs the next block takes it from
//!   there before it allocates. A steady stream then allocates and frees no block at all
//!   (the allocator's lock, taken across threads, was a visible cost). Reuse is as safe as
//!   freeing, for the same reason: no producer touches a block it holds no claim in.
//!   So a lane that has crossed a block boundary holds two blocks (its current one and
//!   the spare), ~3 KiB each for `AgentMessage`, until it is trimmed (below).
//! - **No block.** A lane may have no block: a new one (so an idle lane costs five
//!   words), or one the consumer trimmed. [`NO_BLOCK`] in `tail.index` says so. The
//!   producer that claims such a position first installs a block (CAS of `tail.block`
//!   from null), publishes it in `head.block`, then claims, which clears the flag.
//!   Another producer that sees the flag with a block already there waits, as at a lap
//!   marker: that block is either being installed by a producer about to claim, or
//!   being taken away by the consumer, and the two cannot be told apart. Once the
//!   installer has installed, nobody else claims that position, so the index stays put
//!   until the installer claims (or the lane closes).
//! - **Giving memory back (trim).** The consumer, when the lane is empty, may free its
//!   block and its spare ([`LaneRef::trim`]): it sets `NO_BLOCK` with a CAS from the
//!   exact index it found, equal to its head (so nothing is claimed past the head), then
//!   clears `head.block`, then `tail.block`, then frees the block. Every slot before the
//!   head has been read, so no producer that wrote into the block still touches it;
//!   a producer that loaded the block before the CAS claims only with the index it read
//!   before that, which the CAS replaced for good (index values never repeat: positions
//!   only grow, and one position goes from plain to `NO_BLOCK` at most once), so its
//!   claim fails; producers that come after the CAS wait until `tail.block` is null and
//!   install a fresh block. The mailbox decides when to trim: when its receiver is about
//!   to sleep (`shared`). Nothing is added to the send path but the flag test, which
//!   replaces the old test for a null block, and one `and` in the claim. A trimmed
//!   block goes to the trimming thread's one-block cache (`block_cache`), from which
//!   the next block that thread allocates is taken: a thread that both receives and
//!   sends does not pay the allocator on every wake.
//! - **Busy vs empty.** With no value ready at the head, `pop` reports `Empty` only if no
//!   position past the head was claimed; otherwise `Writing` (only the head is claimed:
//!   its send has not returned) or `Busy` (more is claimed behind it, or the lane had no
//!   block when the consumer looked). So a send that returned is never reported as
//!   absent; the receiver decides how long to wait for the head (`shared`, `priority`).
//! - **Waking a sleeping receiver.** A producer publishes with read-modify-writes only
//!   (the claim CAS, the `ready` swap, a new block's swap into `head.block`), and the
//!   receiver's last look before sleeping uses read-modify-writes on the same words
//!   (`Look::BeforeSleep`): see the `wait` module for why no wake is lost. A trim after
//!   that look writes those words with read-modify-writes too, so a producer's later
//!   one still reads from the look's release sequence.
//!
//! Indices count in steps of `1 << SHIFT`; the two low bits are the [`FLAGS`]. Within a
//! lap of `LAP` positions, offsets `0..BLOCK_CAP` are slots and offset `BLOCK_CAP` means
//! "the next block is being installed", during which producers wait.
#![allow(unsafe_code)]

#[cfg(not(loom))]
use std::alloc::Layout;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;
#[cfg(not(loom))]
use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, SpinWait, UnsafeCell};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

use crate::wait::Look;

/// Positions per lap: `BLOCK_CAP` slots plus one "installing the next block" marker.
/// Tiny under loom so that models cross block boundaries with a handful of messages.
#[cfg(not(loom))]
const LAP: usize = 32;
#[cfg(loom)]
const LAP: usize = 3;

/// Slots per block.
pub(crate) const BLOCK_CAP: usize = LAP - 1;

/// Indices move in steps of `1 << SHIFT`, leaving the low bits for [`CLOSED`] and
/// [`NO_BLOCK`].
const SHIFT: usize = 2;

/// Set in `tail.index` once the lane is closed: no claim succeeds after it.
const CLOSED: usize = 1;

/// Set in `tail.index` while the lane has no block for the position it holds: a new
/// lane, or one whose receiver gave its block back ([`LaneRef::trim`]). The producer
/// that claims that position installs a block first; the claim clears the flag.
const NO_BLOCK: usize = 2;

/// The flag bits of `tail.index`.
const FLAGS: usize = CLOSED | NO_BLOCK;

/// One message slot.
struct Slot<T> {
    /// The value; initialised exactly when `ready` is true and the consumer has not yet
    /// taken it.
    value: UnsafeCell<MaybeUninit<T>>,
    /// Set with `Release` by the producer once `value` is written.
    ready: AtomicBool,
}

/// A block of slots and the link to the next block.
struct Block<T> {
    /// The next block, stored by the producer that claims this block's last slot
    /// before that producer writes its value.
    next: AtomicPtr<Block<T>>,
    /// The slots; slot `i` holds the message at offset `i` of this block's lap.
    slots: [Slot<T>; BLOCK_CAP],
}

impl<T> Block<T> {
    /// A block for the next lap: the consumer's spare if there is one, else a new one.
    fn take_spare_or_new(spare: &AtomicPtr<Block<T>>) -> Box<Self> {
        let p = spare.swap(ptr::null_mut(), Acquire);
        if p.is_null() {
            Block::new()
        } else {
            // SAFETY: a non-null spare was parked from a `Box` by `park` and the swap
            // made this thread its only owner.
            unsafe { Box::from_raw(p) }
        }
    }

    /// Parks `block`, reset, as the spare, or frees it if a spare is already parked.
    fn park(spare: &AtomicPtr<Block<T>>, block: Box<Self>) {
        block.next.store(ptr::null_mut(), Relaxed);
        for slot in &block.slots {
            slot.ready.store(false, Relaxed);
        }
        let p = Box::into_raw(block);
        // Release: whoever takes the spare sees it reset.
        if spare
            .compare_exchange(ptr::null_mut(), p, Release, Relaxed)
            .is_err()
        {
            // SAFETY: `p` came from `Box::into_raw` just now and was not published.
            drop(unsafe { Box::from_raw(p) });
        }
    }

    fn new() -> Box<Self> {
        #[cfg(loom)]
        LIVE_BLOCKS.with(|n| n.set(n.get() + 1));
        let fresh = || Block {
            next: AtomicPtr::new(ptr::null_mut()),
            slots: std::array::from_fn(|_| Slot {
                value: UnsafeCell::new(MaybeUninit::uninit()),
                ready: AtomicBool::new(false),
            }),
        };
        #[cfg(not(loom))]
        if let Some(memory) = super::block_cache::take(Layout::new::<Self>()) {
            let block = memory.cast::<Self>().as_ptr();
            // SAFETY: the cache hands out an allocation of the global allocator with
            // this type's layout, owned by no one else; writing a whole block makes
            // it a valid `Box<Self>`.
            return unsafe {
                block.write(fresh());
                Box::from_raw(block)
            };
        }
        Box::new(fresh())
    }

    /// Frees a block given back by [`LaneRef::trim`]: into this thread's block cache,
    /// for the next block this thread allocates, or to the allocator if the cache
    /// holds one already.
    fn free(block: Box<Self>) {
        #[cfg(not(loom))]
        {
            let layout = Layout::new::<Self>();
            let block = Box::into_raw(block);
            // SAFETY: `block` came from a `Box` just now; a block owns no value (its
            // slots are `MaybeUninit`, and the lane drops what they hold), so this
            // drops nothing but is the right way to end its life before reusing the
            // memory.
            unsafe { ptr::drop_in_place(block) };
            // SAFETY: `block` is non-null (from a `Box`).
            let memory = unsafe { NonNull::new_unchecked(block.cast::<u8>()) };
            if let Some(memory) = super::block_cache::keep(memory, layout) {
                // SAFETY: a `Box<Self>`'s allocation, whose contents ended above.
                unsafe { std::alloc::dealloc(memory.as_ptr(), layout) };
            }
        }
        #[cfg(loom)]
        drop(block);
    }
}

#[cfg(loom)]
std::thread_local! {
    /// Blocks alive on this thread's loom model (loom runs a model's threads on the
    /// thread that called it): back to 0 after every iteration, or a block leaked.
    pub(crate) static LIVE_BLOCKS: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

#[cfg(loom)]
impl<T> Drop for Block<T> {
    fn drop(&mut self) {
        LIVE_BLOCKS.with(|n| {
            assert!(n.get() > 0, "a lane block freed twice");
            n.set(n.get() - 1);
        });
    }
}

/// What a consumer's [`LaneRef::pop`] found.
#[derive(Debug)]
pub enum Pop<T> {
    /// The next message of this lane.
    Msg(T),
    /// Nothing is queued: no producer has claimed a position past the head.
    Empty,
    /// A producer has claimed the head position and is still writing it, and a later
    /// position is claimed too (its send may have returned), or the lane had no block when
    /// the consumer looked: the head will be ready within a few instructions, unless its
    /// producer was descheduled. Returning `Empty` here would hide a later message whose
    /// send already returned (tokio #2020), and let a lower priority overtake it.
    Busy,
    /// A producer has claimed the head position and is still writing it, and nothing
    /// past it is claimed: the lane's only message is one whose send has not returned.
    /// A receive may order itself before that send, as before a send that has not
    /// started, and look at lower priorities (see `priority`).
    Writing,
    /// The lane is closed and every message in it has been taken.
    Closed,
}

/// A position claimed by [`LaneRef::claim`] and not yet written.
///
/// Until [`Reserved::write`] the receiver sees the lane as busy at this position (a
/// producer descheduled mid-send). One that is dropped unwritten leaves the lane busy
/// there for good, which is safe: the slot is never read ([`drop_queued`] skips it).
#[must_use = "the receiver waits at an unwritten position until it is written"]
pub(crate) struct Reserved<'a, T> {
    /// The block of the claimed slot: live until the consumer has read that slot.
    block: *mut Block<T>,
    /// The slot's offset in `block`, below `BLOCK_CAP`.
    offset: usize,
    /// Messages pushed into the lane before this one.
    pub(crate) before: usize,
    _lane: PhantomData<&'a Tail<T>>,
}

impl<T> Reserved<'_, T> {
    /// Writes `value` into the claimed slot and publishes it to the receiver.
    #[inline]
    pub(crate) fn write(self, value: T) {
        // SAFETY: `block` is live and slot `offset` is ours alone: the claim CAS gave
        // this reservation that position and no other, and the consumer frees a block
        // only after reading every slot of it, which it cannot do before this write.
        unsafe {
            let slot = (*self.block).slots.get_unchecked(self.offset);
            slot.value.with_mut(|p| p.write(MaybeUninit::new(value)));
            // A read-modify-write, not a store: a receiver that sleeps on this slot
            // looked at it with one after registering, and this must read from that
            // look or be read by it (the `wait` module's protocol).
            slot.ready.swap(true, AcqRel);
        }
    }
}

/// The producers' half of a lane.
pub(crate) struct Tail<T> {
    /// Producers' claim counter (position `<< SHIFT`, plus the [`FLAGS`]).
    index: AtomicUsize,
    /// The block producers currently claim in; null until the first push.
    block: AtomicPtr<Block<T>>,
}

/// The consumer's half of a lane. Kept apart from [`Tail`] (a different cache line)
/// so that receiving does not steal the line producers claim on.
pub(crate) struct Head<T> {
    /// The consumer's position. Written only by the consumer; read by anyone for `len`.
    index: AtomicUsize,
    /// The consumer's block. Stored once by the producer that installs the first block,
    /// afterwards only by the consumer.
    block: AtomicPtr<Block<T>>,
    /// A drained, reset block waiting to be the next one; null if none. Parked by the
    /// consumer, taken by a producer (once per block, so it may share the consumer's line).
    spare: AtomicPtr<Block<T>>,
}

/// One lane, seen through its two halves (which may live apart). See the module docs
/// for the protocol.
pub(crate) struct LaneRef<'a, T> {
    tail: &'a Tail<T>,
    head: &'a Head<T>,
}

impl<T> Clone for LaneRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for LaneRef<'_, T> {}

// Without the four impls below the halves, made of atomics and raw pointers, would be
// `Send` and `Sync` for every `T`, and a lane of `Rc`s could be shared (issue 12, item 5;
// doc-tests on `__private::LaneModel`).
//
// SAFETY: a lane moves values of `T` from producers to the single consumer and never
// shares one (no `&T` is handed out), so `T: Send` is what sending a half, or sharing
// it between threads, needs.
unsafe impl<T: Send> Send for Tail<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Tail<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Head<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Head<T> {}

/// A lane owning both halves, each on its own cache line.
pub(crate) struct Lane<T> {
    tail: CachePadded<Tail<T>>,
    head: CachePadded<Head<T>>,
}

impl<T> Lane<T> {
    pub(crate) fn new() -> Self {
        Lane {
            tail: CachePadded::new(Tail::new()),
            head: CachePadded::new(Head::new()),
        }
    }

    /// The lane's operations.
    #[inline]
    pub(crate) fn get(&self) -> LaneRef<'_, T> {
        LaneRef::new(&self.tail, &self.head)
    }
}

impl<T> Drop for Lane<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self` owns both halves of this one lane.
        unsafe { drop_queued(&mut self.tail, &mut self.head) }
    }
}

/// The number of messages that passed `index`, skipping the lap markers.
#[inline]
fn count(index: usize) -> usize {
    let pos = index >> SHIFT;
    (pos / LAP) * BLOCK_CAP + (pos % LAP).min(BLOCK_CAP)
}

impl<T> Tail<T> {
    pub(crate) fn new() -> Self {
        Tail {
            // No block yet: the first push installs one.
            index: AtomicUsize::new(NO_BLOCK),
            block: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl<T> Head<T> {
    pub(crate) fn new() -> Self {
        Head {
            index: AtomicUsize::new(0),
            block: AtomicPtr::new(ptr::null_mut()),
            spare: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl<'a, T> LaneRef<'a, T> {
    /// The lane made of these two halves (which must belong together).
    #[inline]
    pub(crate) fn new(tail: &'a Tail<T>, head: &'a Head<T>) -> Self {
        LaneRef { tail, head }
    }

    /// Appends `value`, or hands it back if the lane is closed. On success, returns
    /// how many messages were pushed before this one.
    #[inline]
    pub(crate) fn push(&self, value: T) -> Result<usize, T> {
        match self.claim() {
            Some(reserved) => {
                let before = reserved.before;
                reserved.write(value);
                Ok(before)
            }
            None => Err(value),
        }
    }

    /// The first half of a push: claims the next position (installing blocks as needed),
    /// or `None` if the lane is closed. The position stays unwritten, and the receiver
    /// sees the lane as busy at it, until [`Reserved::write`].
    #[inline]
    pub(crate) fn claim(&self) -> Option<Reserved<'a, T>> {
        let mut tail = self.tail.index.load(Acquire);
        let mut block = self.tail.block.load(Acquire);
        // Allocated before claiming the last slot of a block so that other producers
        // wait for the install as briefly as possible.
        let mut next_block: Option<Box<Block<T>>> = None;
        // The block this producer installed for a `NO_BLOCK` position, if any: until it
        // claims that position nobody else can, so the index stays put (module docs).
        let mut installed: *mut Block<T> = ptr::null_mut();
        // Waiting for another producer's block install, or for the receiver taking its
        // block away: spin, then yield, so that a descheduled installer gets the CPU
        // back (one core, or valgrind).
        let install = SpinWait::default();
        // Losing the claim CAS to another producer: back off (crossbeam does the same).
        let contention = SpinWait::default();

        loop {
            if tail & CLOSED != 0 {
                if let Some(unused) = next_block {
                    Block::park(&self.head.spare, unused);
                }
                return None;
            }
            let offset = (tail >> SHIFT) % LAP;

            if offset == BLOCK_CAP {
                // Another producer is installing the next block.
                install.wait();
                tail = self.tail.index.load(Acquire);
                block = self.tail.block.load(Acquire);
                continue;
            }

            if offset + 1 == BLOCK_CAP && next_block.is_none() {
                next_block = Some(Block::take_spare_or_new(&self.head.spare));
            }

            if tail & NO_BLOCK != 0 && (block.is_null() || block != installed) {
                if !block.is_null() {
                    // Either the receiver is still taking its old block away (`trim`),
                    // or another producer installed the new one and is about to claim
                    // with it: the two cannot be told apart, so wait for either.
                    install.wait();
                    tail = self.tail.index.load(Acquire);
                    block = self.tail.block.load(Acquire);
                    continue;
                }
                // Install the block for this position: a new one (a trim freed the
                // spare, and looking for one would touch the receiver's line).
                let new = Box::into_raw(next_block.take().unwrap_or_else(Block::new));
                match self
                    .tail
                    .block
                    .compare_exchange(ptr::null_mut(), new, AcqRel, Acquire)
                {
                    Ok(_) => {
                        // Publish it to the consumer; `head.block` is null until then
                        // (`trim` clears it before `tail.block`). A swap, as the `ready`
                        // flag's (the receiver may sleep on a lane with no block; the
                        // wake comes from this producer's send).
                        let _null = self.head.block.swap(new, AcqRel);
                        debug_assert!(_null.is_null());
                        installed = new;
                    }
                    Err(_) => {
                        // SAFETY: `new` came from `Box::into_raw` above and was never
                        // published, so this thread still owns it.
                        next_block = Some(unsafe { Box::from_raw(new) });
                    }
                }
                // Reload the index *before* the block, as everywhere else: the `tail`
                // we hold may be older than the block we just saw (found by loom model
                // `l1_two_producers`). After our own install the index is still the
                // position we installed for (nobody else claims it), or closed.
                tail = self.tail.index.load(Acquire);
                block = self.tail.block.load(Acquire);
                continue;
            }

            // Claiming clears `NO_BLOCK` (set only when we install for this position).
            let new_tail = (tail & !NO_BLOCK) + (1 << SHIFT);
            match self
                .tail
                .index
                .compare_exchange_weak(tail, new_tail, SeqCst, Acquire)
            {
                Ok(_) => {
                    if offset + 1 == BLOCK_CAP {
                        // We took the last slot: install the next block, then step the
                        // index over the marker position so others may claim again.
                        let next = Box::into_raw(
                            next_block
                                .take()
                                .unwrap_or_else(|| Block::take_spare_or_new(&self.head.spare)),
                        );
                        self.tail.block.store(next, Release);
                        self.tail.index.fetch_add(1 << SHIFT, Release);
                        // SAFETY: `block` is the block our successful claim belongs to
                        // (the index we claimed was read with `Acquire` after the block
                        // that owns it was stored), and the consumer cannot free it
                        // before reading our slot, which we have not written yet.
                        unsafe { (*block).next.store(next, Release) };
                    }
                    if let Some(unused) = next_block {
                        // Another producer took the last slot after we readied a block.
                        Block::park(&self.head.spare, unused);
                    }
                    return Some(Reserved {
                        block,
                        offset,
                        before: count(tail),
                        _lane: PhantomData,
                    });
                }
                Err(current) => {
                    tail = current;
                    block = self.tail.block.load(Acquire);
                    contention.contended();
                }
            }
        }
    }

    /// Takes the next message. `look` is [`Look::BeforeSleep`] for the receiver's last
    /// look before it sleeps: the words it reads are then read with read-modify-writes
    /// (the `wait` module's protocol).
    ///
    /// # Safety
    ///
    /// Only one thread may call `pop` (or [`LaneRef::peek`]) at a time: the caller must hold
    /// the mailbox's receiver claim.
    #[inline]
    pub(crate) unsafe fn pop(&self, look: Look) -> Pop<T> {
        let head = self.head.index.load(Relaxed);
        let block = self.head_block(look);
        if !block.is_null() {
            let offset = (head >> SHIFT) % LAP;
            // SAFETY: `block` is the consumer's current block, which only the consumer
            // frees; `offset < BLOCK_CAP` because the consumer steps over the marker.
            let slot = unsafe { (*block).slots.get_unchecked(offset) };
            if is_ready(slot, look) {
                // SAFETY: `ready` (Acquire) shows the producer's write; the value is read
                // once, as the head then moves past it.
                let value = slot.value.with(|p| unsafe { p.read().assume_init() });
                if offset + 1 == BLOCK_CAP {
                    // SAFETY: we just read the last slot of `block`, the consumer's block.
                    unsafe { self.leave_block(block, head) };
                } else {
                    self.head.index.store(head + (1 << SHIFT), Release);
                }
                return Pop::Msg(value);
            }
        }
        self.nothing_ready(head, !block.is_null(), look)
    }

    /// The consumer's block; null until the first producer publishes it.
    #[inline]
    fn head_block(&self, look: Look) -> *mut Block<T> {
        let block = self.head.block.load(Acquire);
        if block.is_null() && look == Look::BeforeSleep {
            // Writes back null if still null, so that the installer's swap reads from it.
            return match self.head.block.compare_exchange(
                ptr::null_mut(),
                ptr::null_mut(),
                AcqRel,
                Acquire,
            ) {
                Ok(null) => null,
                Err(block) => block,
            };
        }
        block
    }

    /// Moves the head past `block`, whose last slot the consumer has just read, and
    /// parks the block as the spare.
    ///
    /// # Safety
    ///
    /// The caller is the consumer, `block` is its current block and `head` the index of
    /// that block's last slot, which it has read.
    #[inline(never)]
    unsafe fn leave_block(&self, block: *mut Block<T>, head: usize) {
        // SAFETY: the producer of the last slot stored `next` before writing the value
        // the caller just read (Release/Acquire through `ready`).
        let next = unsafe { (*block).next.load(Acquire) };
        debug_assert!(!next.is_null());
        self.head.block.store(next, Release);
        // Step over the slot just read and the lap's marker position.
        self.head.index.store(head + (2 << SHIFT), Release);
        // SAFETY: every slot of `block` has been read by this consumer, so no producer
        // touches it any more (module docs), and nothing else points to it: the tail's
        // block and the head's block have both moved on.
        Block::park(&self.head.spare, unsafe { Box::from_raw(block) });
    }

    /// Nothing is ready at `head`: tells an empty lane from one whose head is claimed but
    /// not yet written (the only message, or with more behind it, or in a first block
    /// not yet published), or a closed one.
    #[inline(never)]
    fn nothing_ready(&self, head: usize, has_block: bool, look: Look) -> Pop<T> {
        let tail = match look {
            Look::Plain => self.tail.index.load(Acquire),
            // So that a claim this look misses sees the registration (`wait`).
            Look::BeforeSleep => self.tail.index.fetch_add(0, AcqRel),
        };
        if tail & !FLAGS != head {
            // Positions are claimed in order from the head, so one claimed position is
            // the head's, unwritten when we looked: its send had not returned.
            if has_block && count(tail).saturating_sub(count(head)) == 1 {
                Pop::Writing
            } else {
                Pop::Busy
            }
        } else if tail & CLOSED == 0 {
            Pop::Empty
        } else {
            Pop::Closed
        }
    }

    /// Whether a message is ready at the head.
    ///
    /// # Safety
    ///
    /// As for [`LaneRef::pop`]: only the receiver-claim holder may call this.
    pub(crate) unsafe fn peek(&self, look: Look) -> bool {
        let block = self.head_block(look);
        if block.is_null() {
            return false;
        }
        let offset = (self.head.index.load(Relaxed) >> SHIFT) % LAP;
        // SAFETY: as in `pop`: the consumer's block is live while we hold the claim.
        is_ready(unsafe { (*block).slots.get_unchecked(offset) }, look)
    }

    /// Gives the lane's memory back if it is empty: frees its block and its spare, so
    /// that it costs what a new lane does, and the next push installs a block again. A
    /// lane with a position claimed past the head keeps both (module docs, "Giving
    /// memory back"). Closed lanes are trimmed too.
    ///
    /// # Safety
    ///
    /// As for [`LaneRef::pop`]: only the receiver-claim holder may call this.
    pub(crate) unsafe fn trim(&self) {
        let head = self.head.index.load(Relaxed);
        let tail = self.tail.index.load(Acquire);
        if tail & !FLAGS != head {
            // A position past the head is claimed: its message needs the block.
            return;
        }
        if tail & NO_BLOCK == 0 {
            // Empty, with a block. Setting `NO_BLOCK` fails every claim based on an
            // index read before (index values never repeat), and makes later producers
            // wait until the block pointers are cleared, then install a new block.
            if self
                .tail
                .index
                .compare_exchange(tail, tail | NO_BLOCK, AcqRel, Relaxed)
                .is_err()
            {
                // A producer claimed the head position meanwhile (or the lane closed:
                // the next trim takes it).
                return;
            }
            // The consumer's block first, then the producers': a producer installs a
            // new block only once `tail.block` is null, and then finds `head.block`
            // null too. A swap, not a store: every write to `head.block` is a
            // read-modify-write (the `wait` protocol).
            let block = self.head.block.swap(ptr::null_mut(), AcqRel);
            debug_assert!(!block.is_null());
            debug_assert_eq!(block, self.tail.block.load(Relaxed));
            self.tail.block.store(ptr::null_mut(), Release);
            // SAFETY: `block` is the lane's only block (the head's and the tail's), owned
            // by the lane. Every slot of it before the head has been read, so every
            // producer that wrote into it is done with it; no slot from the head on is
            // claimed, and none can be now: a producer claims only with the index it
            // read before loading the block, and the CAS above replaced that index by
            // one that never occurs again.
            Block::free(unsafe { Box::from_raw(block) });
        }
        // A load first: a lane trimmed on every wake has no spare, and the swap would
        // be one more read-modify-write per wake.
        if !self.head.spare.load(Relaxed).is_null() {
            let spare = self.head.spare.swap(ptr::null_mut(), Acquire);
            if !spare.is_null() {
                // SAFETY: a parked spare, and the swap made this thread its only owner.
                Block::free(unsafe { Box::from_raw(spare) });
            }
        }
    }

    /// Closes the lane. Returns `true` if this call closed it.
    pub(crate) fn close(&self) -> bool {
        self.tail.index.fetch_or(CLOSED, SeqCst) & CLOSED == 0
    }

    /// Whether the lane is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.tail.index.load(Acquire) & CLOSED != 0
    }

    /// Messages ever pushed into this lane.
    pub(crate) fn pushed(&self) -> usize {
        count(self.tail.index.load(Acquire))
    }

    /// Messages ever taken out of this lane.
    pub(crate) fn popped(&self) -> usize {
        count(self.head.index.load(Acquire))
    }

    /// Messages in the lane: exact at rest, a snapshot under concurrency.
    pub(crate) fn len(&self) -> usize {
        // Read the head first: it never overtakes the tail, so this never underflows.
        let popped = self.popped();
        self.pushed().saturating_sub(popped)
    }
}

/// Whether `slot` is written, looked at as `look` says (see `LaneRef::pop`).
#[inline]
fn is_ready<T>(slot: &Slot<T>, look: Look) -> bool {
    match look {
        Look::Plain => slot.ready.load(Acquire),
        Look::BeforeSleep => slot.ready.fetch_or(false, AcqRel),
    }
}

/// Drops every message still queued in the lane made of `tail` and `head`, and frees
/// its blocks.
///
/// # Safety
///
/// `tail` and `head` are the two halves of one lane, and nothing else uses the lane any
/// more (exclusive access, as in a `Drop`).
pub(crate) unsafe fn drop_queued<T>(tail: &mut Tail<T>, head: &mut Head<T>) {
    let tail = tail.index.with_mut_value() & !FLAGS;
    let mut position = head.index.with_mut_value();
    let mut block = head.block.with_mut_value();
    // Drop every message still queued, freeing each block once passed.
    while position != tail {
        let offset = (position >> SHIFT) % LAP;
        if offset < BLOCK_CAP {
            // SAFETY: no producer or consumer is active (the contract), and `block` is the
            // block of `position`. A claimed position was written iff its `ready` is set
            // (a `Reserved` dropped unwritten leaves it clear), and only then is its value
            // initialised.
            unsafe {
                let slot = (*block).slots.get_unchecked(offset);
                if slot.ready.load(Acquire) {
                    slot.value.with_mut(|p| (*p).assume_init_drop());
                }
            }
        } else {
            // SAFETY: all slots of `block` are done; `next` was set by the producer that
            // claimed its last slot.
            unsafe {
                let next = (*block).next.with_mut_value();
                drop(Box::from_raw(block));
                block = next;
            }
        }
        position += 1 << SHIFT;
    }
    if !block.is_null() {
        // SAFETY: the consumer's current block, owned by the lane and now unreachable.
        drop(unsafe { Box::from_raw(block) });
    }
    let spare = head.spare.with_mut_value();
    if !spare.is_null() {
        // SAFETY: a parked spare, owned by the lane and now unreachable.
        drop(unsafe { Box::from_raw(spare) });
    }
}

/// Reads an atomic through `&mut`, under std and loom alike.
trait WithMutValue<V> {
    fn with_mut_value(&mut self) -> V;
}

impl WithMutValue<usize> for AtomicUsize {
    fn with_mut_value(&mut self) -> usize {
        #[cfg(loom)]
        return self.with_mut(|v| *v);
        #[cfg(not(loom))]
        *self.get_mut()
    }
}

impl<T> WithMutValue<*mut T> for AtomicPtr<T> {
    fn with_mut_value(&mut self) -> *mut T {
        #[cfg(loom)]
        return self.with_mut(|v| *v);
        #[cfg(not(loom))]
        *self.get_mut()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn drain(lane: &Lane<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        // SAFETY: the test thread is the only consumer.
        while let Pop::Msg(v) = unsafe { lane.get().pop(Look::Plain) } {
            out.push(v);
        }
        out
    }

    #[test]
    fn fifo_across_blocks() {
        let lane = Lane::new();
        for i in 0..(BLOCK_CAP as u64 * 3 + 5) {
            lane.get().push(i).unwrap();
        }
        assert_eq!(lane.get().len(), BLOCK_CAP * 3 + 5);
        let got = drain(&lane);
        assert_eq!(got, (0..(BLOCK_CAP as u64 * 3 + 5)).collect::<Vec<_>>());
        assert_eq!(lane.get().len(), 0);
    }

    #[test]
    fn count_skips_markers() {
        for n in 0..200usize {
            let lane = Lane::new();
            for i in 0..n {
                lane.get().push(i).unwrap();
            }
            assert_eq!(lane.get().pushed(), n);
            assert_eq!(lane.get().len(), n, "len at {n}");
            // SAFETY: single consumer.
            assert_eq!(unsafe { lane.get().peek(Look::Plain) }, n > 0);
        }
    }

    #[test]
    fn close_then_drain() {
        let lane = Lane::new();
        lane.get().push(1u64).unwrap();
        assert!(lane.get().close());
        assert!(!lane.get().close());
        assert_eq!(lane.get().push(2), Err(2));
        // SAFETY: single consumer.
        unsafe {
            assert!(matches!(lane.get().pop(Look::Plain), Pop::Msg(1)));
            assert!(matches!(lane.get().pop(Look::Plain), Pop::Closed));
        }
    }

    /// Whether the lane holds no block and no spare.
    fn blockless(lane: &Lane<u64>) -> bool {
        lane.head.block.load(Relaxed).is_null()
            && lane.tail.block.load(Relaxed).is_null()
            && lane.head.spare.load(Relaxed).is_null()
    }

    #[test]
    fn trim_gives_the_blocks_back_and_the_lane_goes_on() {
        let lane = Lane::new();
        assert!(blockless(&lane));
        let n = BLOCK_CAP as u64 * 2 + 5;
        for i in 0..n {
            lane.get().push(i).unwrap();
        }
        assert_eq!(drain(&lane), (0..n).collect::<Vec<_>>());
        assert!(
            !lane.head.spare.load(Relaxed).is_null(),
            "a spare was parked"
        );
        // SAFETY: single consumer.
        unsafe { lane.get().trim() };
        assert!(blockless(&lane));
        // Trimming a blockless lane changes nothing.
        // SAFETY: single consumer.
        unsafe { lane.get().trim() };
        assert!(blockless(&lane));
        // The counts go on from where they were, and so do the messages, at every offset
        // of the new first block and across its boundary.
        assert_eq!(lane.get().pushed(), n as usize);
        assert_eq!(lane.get().len(), 0);
        for round in 0..3u64 {
            for i in 0..BLOCK_CAP as u64 + 3 {
                let before = lane.get().pushed();
                assert_eq!(lane.get().push(100 * round + i), Ok(before));
            }
            assert_eq!(lane.get().len(), BLOCK_CAP + 3);
            let got = drain(&lane);
            assert_eq!(
                got,
                (0..BLOCK_CAP as u64 + 3)
                    .map(|i| 100 * round + i)
                    .collect::<Vec<_>>()
            );
            // SAFETY: single consumer.
            unsafe { lane.get().trim() };
            assert!(blockless(&lane));
        }
        assert_eq!(lane.get().pushed(), n as usize + 3 * (BLOCK_CAP + 3));
    }

    #[test]
    fn trim_keeps_the_block_of_a_queued_or_claimed_message() {
        let lane = Lane::new();
        lane.get().push(1u64).unwrap();
        // SAFETY: single consumer.
        unsafe { lane.get().trim() };
        assert!(!lane.head.block.load(Relaxed).is_null());
        assert_eq!(drain(&lane), [1]);

        // A claimed position, not yet written: the lane is busy there, not empty.
        let reserved = lane.get().claim().unwrap();
        // SAFETY: single consumer.
        unsafe { lane.get().trim() };
        assert!(!lane.head.block.load(Relaxed).is_null());
        reserved.write(2);
        assert_eq!(drain(&lane), [2]);
        // SAFETY: single consumer.
        unsafe { lane.get().trim() };
        assert!(blockless(&lane));
    }

    #[test]
    fn trim_a_closed_lane() {
        let lane = Lane::new();
        lane.get().push(1u64).unwrap();
        assert!(lane.get().close());
        // SAFETY: single consumer.
        unsafe {
            lane.get().trim();
            assert!(matches!(lane.get().pop(Look::Plain), Pop::Msg(1)));
            lane.get().trim();
            assert!(blockless(&lane));
            assert!(matches!(lane.get().pop(Look::Plain), Pop::Closed));
        }
        assert_eq!(lane.get().push(2), Err(2));
        assert!(lane.get().is_closed());
        assert!(blockless(&lane), "a refused push installs nothing");
    }

    #[test]
    fn a_trimmed_block_is_reused_by_the_next_block_this_thread_allocates() {
        let lane = Lane::new();
        lane.get().push(1u64).unwrap();
        let block = lane.head.block.load(Relaxed);
        assert_eq!(drain(&lane), [1]);
        // SAFETY: single consumer.
        unsafe { lane.get().trim() };
        // Another lane's first block, allocated on this thread, is the cached one.
        let other = Lane::new();
        other.get().push(2u64).unwrap();
        assert_eq!(other.head.block.load(Relaxed), block);
        assert_eq!(drain(&other), [2]);
        // And the cache hands it out once.
        lane.get().push(3u64).unwrap();
        assert_ne!(lane.head.block.load(Relaxed), block);
        assert_eq!(drain(&lane), [3]);
    }

    #[test]
    fn drop_frees_queued() {
        let token = std::sync::Arc::new(());
        {
            let lane = Lane::new();
            for _ in 0..(BLOCK_CAP * 2 + 3) {
                lane.get().push(token.clone()).unwrap();
            }
            // SAFETY: single consumer.
            unsafe { lane.get().pop(Look::Plain) };
        }
        assert_eq!(std::sync::Arc::strong_count(&token), 1);
    }
}
