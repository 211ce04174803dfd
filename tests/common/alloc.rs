//! A counting global allocator for tests that measure allocations: per thread, so that
//! the other tests libtest runs at the same time do not show up in the counts. A test
//! binary installs it with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: common::alloc::Counting = common::alloc::Counting;
//! ```
//!
//! and reads [`counts`] on the thread that does the work.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting what each thread allocates and frees.
pub struct Counting;

/// What this thread has allocated so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls to `alloc` (and `realloc`, which may move the block).
    pub allocations: u64,
    /// Bytes asked for by those calls (a `realloc` counts its growth).
    pub allocated_bytes: u64,
    /// Bytes allocated minus bytes freed by this thread (a block freed by another
    /// thread than its allocator's shows up in both threads' counts).
    pub held_bytes: i64,
}

thread_local! {
    // Const-initialised: reading it never allocates, so the allocator may use it.
    static COUNTS: Cell<Counts> = const {
        Cell::new(Counts { allocations: 0, allocated_bytes: 0, held_bytes: 0 })
    };
}

/// This thread's counts so far.
pub fn counts() -> Counts {
    COUNTS.with(Cell::get)
}

fn record(f: impl FnOnce(&mut Counts)) {
    // `try_with`: the thread's storage may already be gone while it exits.
    let _ = COUNTS.try_with(|c| {
        let mut n = c.get();
        f(&mut n);
        c.set(n);
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes in
// a thread-local that needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(|n| {
            n.allocations += 1;
            n.allocated_bytes += layout.size() as u64;
            n.held_bytes += layout.size() as i64;
        });
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(|n| n.held_bytes -= layout.size() as i64);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(|n| {
            n.allocations += 1;
            n.allocated_bytes += new_size.saturating_sub(layout.size()) as u64;
            n.held_bytes += new_size as i64 - layout.size() as i64;
        });
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
