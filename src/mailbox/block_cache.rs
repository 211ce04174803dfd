//! One freed lane block per thread, kept for the next block that thread allocates.
//!
//! A receiver about to sleep frees its empty lanes' blocks (`lane`, "Giving memory
//! back"), and the next send into such a lane allocates a block again. A block
//! (~3 KiB for `AgentMessage`) is too large for glibc's per-thread cache, so each such
//! free and allocation goes through its bins: ~400 instructions per wake, 6% of an
//! async call's round trip when the caller and the agent are tasks of one runtime
//! thread. This cache keeps the last block a thread frees and hands it to the next
//! block that thread allocates, so a thread that both receives and sends (tasks on one
//! runtime thread, an agent that sends to itself) reuses one block across its wakes.
//!
//! # Bound
//!
//! At most one block per thread, whatever the number of agents; freed when the thread
//! exits (or never taken, if a later block has another layout, which is then freed as
//! usual). So an idle agent still holds no block: the memory that stays is per thread.
//!
//! Only raw memory passes through here: the lane writes a whole new block into what it
//! takes. Not under loom, where blocks must be loom objects created and dropped as
//! such (and this is single-threaded code with nothing for loom to check): there a
//! block is always allocated and freed.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

/// The cached allocation, if any, and its layout.
struct Cache(Cell<Option<(NonNull<u8>, Layout)>>);

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some((ptr, layout)) = self.0.take() {
            // SAFETY: `keep` stores only allocations of the global allocator with the
            // layout stored beside them, and the cache owns what it stores.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static CACHE: Cache = const { Cache(Cell::new(None)) };
}

/// Takes this thread's cached allocation if it has `layout`.
pub(super) fn take(layout: Layout) -> Option<NonNull<u8>> {
    CACHE
        .try_with(|cache| match cache.0.take() {
            Some((ptr, cached)) if cached == layout => Some(ptr),
            other => {
                cache.0.set(other);
                None
            }
        })
        .ok()
        .flatten()
}

/// Keeps `ptr`, an allocation of the global allocator with `layout` whose contents are
/// no longer needed, for this thread's next [`take`]. Hands it back if the cache is
/// full, or gone (the thread is exiting): the caller frees it.
pub(super) fn keep(ptr: NonNull<u8>, layout: Layout) -> Option<NonNull<u8>> {
    CACHE
        .try_with(|cache| match cache.0.take() {
            None => {
                cache.0.set(Some((ptr, layout)));
                None
            }
            full => {
                cache.0.set(full);
                Some(ptr)
            }
        })
        .unwrap_or(Some(ptr))
}
