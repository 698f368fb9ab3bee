//! A per-thread counting global allocator for the hostile-input tests: each test binary that declares
//! `mod alloc_meter;` measures the heap its test threads hold with [`peak_during`].
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts live heap bytes and their high-water mark per thread, so tests running in parallel threads do
/// not see each other's allocations. The counters are `const`-initialised thread locals holding plain
/// `Cell`s (no destructor, no lazy init): touching them never allocates, so the allocator cannot recurse.
struct CountingAlloc;

thread_local! {
    pub static LIVE: Cell<isize> = const { Cell::new(0) };
    pub static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count_alloc(n: usize) {
    // try_with: a thread being torn down may still allocate or free after its locals are gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add_unsigned(n);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn count_free(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub_unsigned(n)));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the bookkeeping around it only touches thread-local `Cell`s and can neither allocate nor panic.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract, which is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) };
        count_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is checked by our caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as if the old and the new block coexisted for a moment: an upper bound on the peak.
            count_alloc(new_size);
            count_free(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f`; returns its result and the most heap this thread held during it above what it held before.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak - start).unwrap_or(0))
}
