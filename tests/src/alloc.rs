//! A counting global allocator for "memory ≤ X" assertions (ROBUSTNESS.md §9).
//!
//! The allocator is per test binary: a binary that measures declares
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tests::alloc::Counting = tests::alloc::Counting;
//! ```
//!
//! and runs its measured steps serially, since the counters are process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes currently allocated and their peak.
pub struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every allocation to `System`, only adding counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// Starts a measurement: the peak is reset to the current level, which is returned.
pub fn mark() -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    base
}

/// Peak bytes allocated beyond `base` since [`mark`] returned it.
pub fn peak_since(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// Peak bytes allocated beyond the level at the start, while `f` runs.
pub fn peak_during(f: impl FnOnce()) -> usize {
    let base = mark();
    f();
    peak_since(base)
}
