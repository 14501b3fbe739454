//! The global allocator: mimalloc, asked the way Rust's own `System` allocator asks `malloc`.
//!
//! glibc's malloc and free were 10% of the proxy's CPU per request (perf, wrk -c64), spent on
//! the small, short-lived allocations of every request; mimalloc's thread-local free lists fit
//! that pattern. The `mimalloc` crate's `GlobalAlloc`, though, passes every allocation to
//! `mi_malloc_aligned`, and mimalloc 3 serves an aligned request above 1 KiB whose size class is
//! not a power of two by over-allocating and aligning inside the block (its
//! `mi_theap_malloc_zero_aligned_at_overalloc`), even for the 8-byte alignment every block
//! has anyway: a request's header map, boxed phases and response fields took that path, about
//! 1,350 instructions of the 27,800 a proxied keep-alive request cost (callgrind). Alignments a
//! plain `mi_malloc` block already has (a word: block sizes are multiples of one) go to the
//! plain calls; larger ones still to the aligned calls.

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
};

use libmimalloc_sys as mi;

/// Every `mi_malloc` block is aligned to a machine word: block sizes are word multiples and
/// pages start aligned (mimalloc's `_mi_wsize_from_size` size classes).
const WORD: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

// SAFETY: each method forwards to the mimalloc call with the same contract (a null pointer on
// failure, a block of at least `size` bytes aligned to `layout.align()`), and every block,
// however it was allocated, is freed by `mi_free`, which takes aligned blocks too.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; `layout` has a non-zero size (GlobalAlloc's contract).
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the block keeps its alignment.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class up to a few pages, at every alignment up to a page: the address has the
    /// alignment asked for, the bytes can be written, realloc keeps them, zeroed is zero.
    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in (1..=9000)
                .step_by(97)
                .chain([1, 7, 8, 24, 1025, 1500, 4097])
            {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; every block is freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = a.realloc(p, layout, size * 2);
                    assert_eq!(q as usize % align, 0, "realloc {size} align {align}");
                    assert!(
                        std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|&b| b == 0xa5)
                    );
                    a.dealloc(q, Layout::from_size_align(size * 2, align).expect("layout"));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
