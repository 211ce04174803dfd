//! The four priority lanes of a mailbox and the order the receiver drains them.
//!
//! `Normal` lives inline; `Low`, `High` and `Critical` are allocated together on the
//! first message that needs one, so an idle mailbox costs one lane plus two pointers
//! (the extra lanes' pointer and the producers' copy of it).
//!
//! # Memory
//!
//! The extra lanes, once allocated, stay until the mailbox is dropped (512 bytes:
//! three padded tails and one line of heads): producers reach them through a pointer
//! they load without a reference count, so there is no moment at which the receiver
//! could know that none still uses them, short of an extra read-modify-write per send.
//! Their blocks, like the `Normal` lane's, are given back whenever the receiver is
//! about to sleep and the lane is empty ([`Lanes::trim`], called from `shared`).
//!
//! # Drain order
//!
//! Strict (`budget == 0`): the receiver takes the head of the highest lane holding a
//! message whose send has returned. A message whose send has returned before a receive
//! starts is therefore never overtaken by a lower priority in it; one sent while the
//! receive scans the lanes may be (as in any multi-queue select).
//!
//! A lane whose head is claimed but still being written (its producer may have been
//! descheduled mid-send) is looked at in two cases:
//!
//! - Nothing past the head is claimed (`Pop::Writing`): the lane's only message is that
//!   one, and its send has not returned. The receive orders itself before that send,
//!   just as before a send not yet started, and takes a lower lane's message if there is
//!   one. Per-sender FIFO holds: FIFO is per lane, and that sender's earlier messages
//!   in other lanes were sent before it.
//! - More is claimed behind the head (`Pop::Busy`), or the lane's first block is not yet
//!   published: a message behind may come from a send that has returned, so no lower
//!   lane may go first. Within a lane the head is never skipped (FIFO), so the receiver
//!   has nothing to take: `try_receive` reports nothing for now, a blocking or async
//!   receive sleeps until the head's producer writes it and wakes it.
//!
//! With a starvation budget `b > 0`, a lane whose head has been passed over `b`
//! times by higher priorities is served next (the highest such lane first), so every
//! waiting message is reached after at most `b + 4` receives (`b` passes, then up to three
//! other overdue lanes served first, highest first).
//!
//! # Closing
//!
//! `close` marks the extra lanes first (or, if they were never allocated, swaps in a
//! sentinel so they never will be), then `Normal`. A producer racing the close either
//! claims a slot before its lane's mark, and the message is drained, or gets its
//! message back. A non-`Normal` send that finds the sentinel is refused without
//! allocating the extra lanes; one that loaded null just before the close allocates
//! them, loses the install to the sentinel, frees them and is refused.
#![allow(unsafe_code)]

use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release, SeqCst};

use crossbeam_utils::CachePadded;

use super::lane::{drop_queued, Head, LaneRef, Pop, Reserved, Tail};
use crate::message::MessagePriority;
use crate::sync::{AtomicPtr, UnsafeCell};
use crate::wait::Look;

/// The lanes allocated on demand, and the receiver's starvation bookkeeping.
///
/// Each tail has its own cache line (producers of different priorities do not share
/// one); the three heads, which only the receiver touches, share one. That keeps the
/// receiver's pops off the producers' lines at 512 bytes rather than 896 (a padded
/// head per lane), which an agent keeps for good once it has seen a non-`Normal`
/// message.
struct Extra<T> {
    low: CachePadded<Tail<T>>,
    high: CachePadded<Tail<T>>,
    critical: CachePadded<Tail<T>>,
    rx: CachePadded<ExtraRx<T>>,
}

/// The receiver's side of the extra lanes.
struct ExtraRx<T> {
    low: Head<T>,
    high: Head<T>,
    critical: Head<T>,
    /// Per lane (by priority index), how often its head was passed over since it was
    /// last served. Touched only by the receiver-claim holder.
    bypassed: UnsafeCell<[u32; 4]>,
}

impl<T> Extra<T> {
    fn new() -> Self {
        Extra {
            low: CachePadded::new(Tail::new()),
            high: CachePadded::new(Tail::new()),
            critical: CachePadded::new(Tail::new()),
            rx: CachePadded::new(ExtraRx {
                low: Head::new(),
                high: Head::new(),
                critical: Head::new(),
                bypassed: UnsafeCell::new([0; 4]),
            }),
        }
    }

    fn low(&self) -> LaneRef<'_, T> {
        LaneRef::new(&self.low, &self.rx.low)
    }

    fn high(&self) -> LaneRef<'_, T> {
        LaneRef::new(&self.high, &self.rx.high)
    }

    fn critical(&self) -> LaneRef<'_, T> {
        LaneRef::new(&self.critical, &self.rx.critical)
    }
}

impl<T> Drop for Extra<T> {
    fn drop(&mut self) {
        let rx = &mut *self.rx;
        // SAFETY: `&mut self` owns the three lanes, each made of its tail and head.
        unsafe {
            drop_queued(&mut self.low, &mut rx.low);
            drop_queued(&mut self.high, &mut rx.high);
            drop_queued(&mut self.critical, &mut rx.critical);
        }
    }
}

/// The producers' side of a mailbox's lanes: the `Normal` tail, written on every send.
/// A mailbox keeps it away from [`LanesRx`] (another cache line).
pub(crate) struct LanesTx<T> {
    /// The producers' copy of [`ExtraLanes`]' pointer: null, or the installed lanes
    /// (never the closed sentinel). A cache only: [`ExtraLanes`] stays the truth, and
    /// a producer that finds this null reads it. Producers of non-`Normal` messages
    /// read it here, on their own line, rather than beside the receiver's counters,
    /// which the receiver writes on every receive (that sharing cost a `High` stream
    /// about a third of its throughput).
    extra: AtomicPtr<Extra<T>>,
    normal: Tail<T>,
}

/// The pointer to the extra lanes: written once, read by the receiver on every pop and
/// by producers of non-`Normal` messages until they have cached it in [`LanesTx`]. A
/// mailbox keeps it with its read-mostly fields, off the line producers claim on, so
/// that receiving does not pull that line away.
pub(crate) struct ExtraLanes<T> {
    /// Null until first needed; [`closed_sentinel`] if closed before that.
    ptr: AtomicPtr<Extra<T>>,
}

/// The receiver's side of a mailbox's lanes: the `Normal` head.
pub(crate) struct LanesRx<T> {
    normal: Head<T>,
}

/// All lanes of one mailbox, seen through its three parts.
pub(crate) struct Lanes<'a, T> {
    tx: &'a LanesTx<T>,
    rx: &'a LanesRx<T>,
    extra: &'a ExtraLanes<T>,
}

impl<T> Clone for Lanes<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Lanes<'_, T> {}

// SAFETY: `Extra` is shared by producers (lanes: atomics only) and the receiver-claim
// holder (`bypassed`); lanes carry `T: Send` values between threads.
unsafe impl<T: Send> Send for Extra<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Extra<T> {}

// SAFETY: the pointer leads to an `Extra<T>` that this owns (freed in `drop_lanes`),
// which is `Send` and `Sync` exactly when `T: Send`; without these impls the pointer
// alone would make this `Send` and `Sync` for every `T`.
unsafe impl<T: Send> Send for ExtraLanes<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for ExtraLanes<T> {}

/// Marks "closed before the extra lanes existed". Never dereferenced; no allocation
/// can live at this address (it is in the first page).
fn closed_sentinel<T>() -> *mut Extra<T> {
    NonNull::dangling().as_ptr()
}

impl<T> LanesTx<T> {
    pub(crate) fn new() -> Self {
        LanesTx {
            extra: AtomicPtr::new(ptr::null_mut()),
            normal: Tail::new(),
        }
    }
}

impl<T> ExtraLanes<T> {
    pub(crate) fn new() -> Self {
        ExtraLanes {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl<T> LanesRx<T> {
    pub(crate) fn new() -> Self {
        LanesRx {
            normal: Head::new(),
        }
    }
}

/// Drops every queued message and frees the extra lanes.
///
/// # Safety
///
/// `tx`, `rx` and `extra` belong to the same mailbox, and nothing uses it any more.
pub(crate) unsafe fn drop_lanes<T>(
    tx: &mut LanesTx<T>,
    rx: &mut LanesRx<T>,
    extra: &mut ExtraLanes<T>,
) {
    // SAFETY: the two halves of the normal lane, exclusively ours (the contract).
    unsafe { drop_queued(&mut tx.normal, &mut rx.normal) };
    let p = extra.ptr.load(Acquire);
    if !p.is_null() && p != closed_sentinel() {
        // SAFETY: installed from a `Box`; the only other way to it, the producers' copy
        // in `tx.extra`, is dropped with `tx` under the same exclusive access.
        drop(unsafe { Box::from_raw(p) });
    }
}

impl<'a, T> Lanes<'a, T> {
    pub(crate) fn new(tx: &'a LanesTx<T>, rx: &'a LanesRx<T>, extra: &'a ExtraLanes<T>) -> Self {
        Lanes { tx, rx, extra }
    }

    #[inline]
    fn normal(self) -> LaneRef<'a, T> {
        LaneRef::new(&self.tx.normal, &self.rx.normal)
    }

    /// The allocated extra lanes, if any.
    fn extra(self) -> Option<&'a Extra<T>> {
        self.extra_looked(Look::Plain)
    }

    /// [`Lanes::extra`], for a receiver's look: before sleeping, a null pointer is
    /// written back so that an install the look misses reads from it (`wait`).
    fn extra_looked(self, look: Look) -> Option<&'a Extra<T>> {
        let mut p = self.extra.ptr.load(Acquire);
        if p.is_null() && look == Look::BeforeSleep {
            p = match self.extra.ptr.compare_exchange(
                ptr::null_mut(),
                ptr::null_mut(),
                AcqRel,
                Acquire,
            ) {
                Ok(null) => null,
                Err(installed) => installed,
            };
        }
        if p.is_null() || p == closed_sentinel() {
            None
        } else {
            // SAFETY: a non-null, non-sentinel pointer was installed from a `Box` and is
            // freed only in `Drop`.
            Some(unsafe { &*p })
        }
    }

    /// The lane for `priority`, allocating the extra lanes if needed. `None` if the
    /// mailbox closed before they existed.
    #[inline]
    fn lane_for_push(self, priority: MessagePriority) -> Option<LaneRef<'a, T>> {
        let extra = match priority {
            MessagePriority::Normal => return Some(self.normal()),
            _ => self.extra_for_push()?,
        };
        Some(match priority {
            MessagePriority::Low => extra.low(),
            MessagePriority::High => extra.high(),
            _ => extra.critical(),
        })
    }

    /// The extra lanes for a producer: from its cached copy, else from the shared
    /// pointer (installing them if needed), then cached. `None` if the mailbox closed
    /// before they existed.
    #[inline]
    fn extra_for_push(self) -> Option<&'a Extra<T>> {
        // Acquire: pairs with the Release below, so the lanes' initialisation shows.
        let cached = self.tx.extra.load(Acquire);
        if !cached.is_null() {
            // SAFETY: only installed lanes are cached, and they are freed only in `Drop`.
            return Some(unsafe { &*cached });
        }
        let p = self.extra.ptr.load(Acquire);
        let extra = if p.is_null() {
            self.install_extra()?
        } else if p == closed_sentinel() {
            // Closed before they existed: refuse without allocating them. A close that
            // lands after this load makes `install_extra`'s CAS fail instead.
            return None;
        } else {
            // SAFETY: installed from a `Box`; freed only in `Drop`.
            unsafe { &*p }
        };
        // Every producer stores the same installed pointer, so the races are benign.
        self.tx
            .extra
            .store(extra as *const Extra<T> as *mut Extra<T>, Release);
        Some(extra)
    }

    #[cold]
    fn install_extra(self) -> Option<&'a Extra<T>> {
        let new = Box::into_raw(Box::new(Extra::new()));
        match self
            .extra
            .ptr
            .compare_exchange(ptr::null_mut(), new, SeqCst, Acquire)
        {
            // SAFETY: just installed; freed only in `Drop`.
            Ok(_) => Some(unsafe { &*new }),
            Err(current) => {
                // SAFETY: `new` was never published.
                drop(unsafe { Box::from_raw(new) });
                if current == closed_sentinel() {
                    None
                } else {
                    // SAFETY: installed by another producer; freed only in `Drop`.
                    Some(unsafe { &*current })
                }
            }
        }
    }

    /// Appends `value` to its priority's lane; hands it back if closed. On success,
    /// returns how many messages that lane had taken in before this one.
    #[inline]
    pub(crate) fn push(self, priority: MessagePriority, value: T) -> Result<usize, T> {
        match self.lane_for_push(priority) {
            Some(lane) => lane.push(value),
            None => Err(value),
        }
    }

    /// The first half of [`Lanes::push`]: claims a position in `priority`'s lane, or
    /// `None` if closed (see `LaneRef::claim`).
    pub(crate) fn claim(self, priority: MessagePriority) -> Option<Reserved<'a, T>> {
        self.lane_for_push(priority)?.claim()
    }

    /// Closes every lane. Returns `true` if this call closed the mailbox.
    pub(crate) fn close(self) -> bool {
        if self
            .extra
            .ptr
            .compare_exchange(ptr::null_mut(), closed_sentinel(), SeqCst, Acquire)
            .is_err()
        {
            if let Some(extra) = self.extra() {
                extra.critical().close();
                extra.high().close();
                extra.low().close();
            }
        }
        self.normal().close()
    }

    /// Whether `close` has run (the normal lane is marked last).
    pub(crate) fn is_closed(self) -> bool {
        self.normal().is_closed()
    }

    /// Takes the next message in drain order (`look`: see `LaneRef::pop`).
    ///
    /// # Safety
    ///
    /// Only the receiver-claim holder may call this.
    #[inline]
    pub(crate) unsafe fn pop(self, budget: u32, look: Look) -> Pop<T> {
        match self.extra_looked(look) {
            // SAFETY: forwarded receiver-claim contract.
            Some(extra) => unsafe { self.pop_all(extra, budget, look) },
            None => {
                // SAFETY: forwarded receiver-claim contract.
                let popped = unsafe { self.normal().pop(look) };
                if let (Pop::Closed, Some(extra)) = (&popped, self.extra()) {
                    // The extra lanes appeared (and were closed) after our first look.
                    // SAFETY: forwarded receiver-claim contract.
                    return unsafe { self.pop_all(extra, budget, look) };
                }
                popped
            }
        }
    }

    /// # Safety
    ///
    /// Only the receiver-claim holder may call this.
    unsafe fn pop_all(self, extra: &Extra<T>, budget: u32, look: Look) -> Pop<T> {
        // By priority index: Low, Normal, High, Critical.
        let lanes = [extra.low(), self.normal(), extra.high(), extra.critical()];
        // SAFETY: the receiver-claim holder is the only one touching `bypassed`.
        let bypassed = extra.rx.bypassed.with_mut(|p| unsafe { &mut *p });

        if budget > 0 {
            // Serve an overdue lane first, the highest one if several are.
            for i in (0..3).rev() {
                // SAFETY: forwarded receiver-claim contract.
                if bypassed[i] >= budget && unsafe { lanes[i].peek(look) } {
                    // SAFETY: forwarded receiver-claim contract.
                    if let Pop::Msg(m) = unsafe { lanes[i].pop(Look::Plain) } {
                        bypassed[i] = 0;
                        return Pop::Msg(m);
                    }
                }
            }
        }

        let mut all_closed = true;
        let mut writing = false;
        for i in (0..4).rev() {
            // SAFETY: forwarded receiver-claim contract.
            match unsafe { lanes[i].pop(look) } {
                Pop::Msg(m) => {
                    if budget > 0 {
                        bypassed[i] = 0;
                        for (j, lane) in lanes.iter().enumerate().take(i) {
                            // SAFETY: forwarded receiver-claim contract.
                            if unsafe { lane.peek(Look::Plain) } {
                                bypassed[j] = bypassed[j].saturating_add(1);
                            }
                        }
                    }
                    return Pop::Msg(m);
                }
                Pop::Empty => all_closed = false,
                // The lane's only message is still being written: its send has not
                // returned, so this receive orders itself before that send, as before
                // one not yet started, and looks lower (module docs).
                Pop::Writing => {
                    all_closed = false;
                    writing = true;
                }
                // A higher lane's head is being written with more queued behind it
                // (whose sends may have returned): no lower priority may go first.
                Pop::Busy => return Pop::Busy,
                Pop::Closed => {}
            }
        }
        if writing {
            Pop::Writing
        } else if all_closed {
            Pop::Closed
        } else {
            Pop::Empty
        }
    }

    /// Gives back the blocks of every empty lane (`LaneRef::trim`). The extra lanes
    /// themselves stay: producers reach them through a pointer they hold without a
    /// reference count, so they live as long as the mailbox.
    ///
    /// # Safety
    ///
    /// Only the receiver-claim holder may call this.
    pub(crate) unsafe fn trim(self) {
        // SAFETY: forwarded receiver-claim contract.
        unsafe { self.normal().trim() };
        if let Some(extra) = self.extra() {
            for lane in [extra.low(), extra.high(), extra.critical()] {
                // SAFETY: forwarded receiver-claim contract.
                unsafe { lane.trim() };
            }
        }
    }

    /// Whether only the `Normal` lane exists (so the lanes hand out in push order).
    #[cfg(feature = "metrics")]
    pub(crate) fn normal_only(self) -> bool {
        self.extra().is_none()
    }

    /// Messages ever pushed, over all lanes.
    pub(crate) fn pushed(self) -> usize {
        self.normal().pushed()
            + self.extra().map_or(0, |e| {
                e.low().pushed() + e.high().pushed() + e.critical().pushed()
            })
    }

    /// Messages queued now, over all lanes (exact at rest).
    pub(crate) fn len(self) -> usize {
        self.normal().len()
            + self
                .extra()
                .map_or(0, |e| e.low().len() + e.high().len() + e.critical().len())
    }
}
