//! A counting global allocator for tests that measure memory: it forwards every call to
//! the system allocator and counts, per thread, the bytes the thread holds (allocated
//! minus freed on it) and the allocations it made. Per thread, so that tests running in
//! parallel in one binary do not see each other's allocations; a measurement is then
//! exact only for memory allocated and freed on the measuring thread.
//!
//! A test binary that wants it declares it as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: common::counting::Counting = common::counting::Counting;
//! ```
//!
//! In a binary that does not, [`held`] and [`allocations`] stay at 0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting per thread.
pub struct Counting;

thread_local! {
    static HELD: Cell<i64> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Bytes allocated minus bytes freed on this thread so far (requested sizes).
pub fn held() -> i64 {
    HELD.with(Cell::get)
}

/// Allocations (and reallocations) made on this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn count(bytes: i64, allocation: bool) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = HELD.try_with(|h| h.set(h.get() + bytes));
    if allocation {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards every call to the system allocator with the caller's arguments and
// returns its result; the counters are const-initialised thread-locals (touching them
// allocates nothing) and never affect the pointers.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64, true);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64, true);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64), false);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64, true);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
