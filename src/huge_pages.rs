//! The process's memory allocator, and a model's weights on transparent huge pages.
//!
//! Why: decoding one token reads every weight once, so empty-cache decode is bound by
//! how fast the two cores stream memory. With 4 KiB pages a stream crosses a page (a
//! TLB miss, and the hardware prefetcher starting over) every 4 KiB; with 2 MiB pages
//! every 2 MiB. Measured on this project's 2-core machine: a C loop streaming 1 GiB read
//! 29-32 GB/s on 4 KiB pages and 33-36 GB/s on 2 MiB pages (one thread: 23 vs 34 GB/s).
//! The system's `malloc` uses huge pages only when asked at process start
//! (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), which a program cannot set for itself.
//!
//! Only the weights: while [`for_weights`] runs (the loading of a model), every
//! allocation of at least [`LARGE`] bytes gets a mapping of its own, 2 MiB-aligned and
//! marked `MADV_HUGEPAGE`, and the smaller ones (scales, fifth bits, small matrices)
//! come from the main heap, whose pages are collapsed into huge pages afterwards. Other
//! large allocations (the Trace, KV caches, prefill scratch) get plain mappings: on this
//! virtual machine a fresh huge page is slow to touch the first time (a first prefill of
//! 512 tokens on the 1B shape went 170 -> 144 t/s with everything on huge pages), and
//! they are written about as often as they are read. Each mapping's length is the
//! request rounded up to the 4 KiB page, so resident memory stays what is used (the
//! kernel backs a mapping's last, partial 2 MiB with small pages). Where transparent
//! huge pages are off (`never`) the hints are ignored.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Allocations of at least this many bytes are mapped on their own (a smaller one could
/// not hold a whole huge page).
pub const LARGE: usize = 2 << 20;
/// The huge page size this aligns to (x86-64 and 4 KiB-page aarch64).
const HUGE: usize = 2 << 20;

/// The system allocator, with large allocations mapped on their own (on huge pages
/// while [`for_weights`] runs on the allocating thread; see the module's text).
pub struct HugePageAlloc;

thread_local! {
    /// Whether this thread is loading a model's weights (inside [`for_weights`]).
    static WEIGHTS: Cell<bool> = const { Cell::new(false) };
}

fn loading_weights() -> bool {
    WEIGHTS.try_with(Cell::get).unwrap_or(false)
}

fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE && align <= HUGE
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_next_multiple_of(to)
}

/// A fresh zero-filled mapping of at least `size` bytes whose start is `HUGE`-aligned,
/// marked for huge pages when `huge`; null when the kernel refuses.
///
/// Aligned on purpose: the kernel backs an address range with a huge page when the
/// range's first write faults and the whole aligned 2 MiB lies inside one mapping. An
/// unaligned mapping loses a partial 2 MiB at each end (and a neighbour that comes
/// later cannot help: its border pages were already faulted in small); an aligned one
/// only at its end. Measured on the 1B shape: 575 of 667 MB of weights on huge pages
/// aligned, 475 MB unaligned.
fn map(size: usize, huge: bool) -> *mut u8 {
    let page = page_size();
    let (Some(len), Some(reserve)) = (round_up(size, page), size.checked_add(HUGE)) else {
        return std::ptr::null_mut();
    };
    let Some(reserve) = round_up(reserve, page) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing
    // touches no existing memory; the trims below unmap only parts of this mapping.
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE);
        // Over-reserved by HUGE to find an aligned start: give back the head and the
        // tail (whole pages, since `start`, `aligned` and `len` are page multiples).
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let end = aligned + len;
        if start + reserve > end {
            libc::munmap(end as *mut libc::c_void, start + reserve - end);
        }
        // A hint: where it fails (THP off, old kernel) the memory is ordinary.
        if huge {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        aligned as *mut u8
    }
}

/// Unmaps a mapping made by [`map`] for `size` bytes.
///
/// # Safety
/// `ptr` must come from `map(size)` and not have been unmapped.
unsafe fn unmap(ptr: *mut u8, size: usize) {
    // The kernel rounds the length up to whole pages, as `map` did.
    libc::munmap(ptr as *mut libc::c_void, size);
}

// SAFETY: every block handed out is either the system allocator's (small requests,
// returned to it) or a mapping of at least the requested size, aligned for its layout
// (fresh ones start HUGE-aligned; one moved by mremap is page-aligned, used only for
// `align <= page`), unmapped exactly once in `dealloc` / `realloc`; the size decides
// which, and Rust passes the same layout back.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            map(layout.size(), loading_weights())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            // Fresh anonymous mappings read as zero.
            map(layout.size(), loading_weights())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size(), layout.align()) {
            unmap(ptr, layout.size())
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (is_large(layout.size(), align), is_large(new_size, align)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            // Let the kernel move the pages instead of copying them (a growing Vec);
            // the huge-page mark travels with the mapping. mremap keeps only page
            // alignment, so a larger alignment takes the copying path below.
            (true, true) if align <= page_size() => {
                let page = page_size();
                let (Some(old), Some(new)) =
                    (round_up(layout.size(), page), round_up(new_size, page))
                else {
                    return std::ptr::null_mut();
                };
                let p = libc::mremap(ptr as *mut libc::c_void, old, new, libc::MREMAP_MAYMOVE);
                if p == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    p as *mut u8
                }
            }
            _ => {
                // Between the system heap and a mapping of its own, or an alignment
                // mremap cannot keep: copy.
                let Ok(new_layout) = Layout::from_size_align(new_size, align) else {
                    return std::ptr::null_mut();
                };
                let p = self.alloc(new_layout);
                if !p.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                p
            }
        }
    }
}

/// Runs `load` (the loading of a model's weights) with its allocations on huge pages:
/// the large ones mapped by the allocator, the small ones from the main heap (glibc's
/// mmap threshold at 2 MiB: it would give those of 128 KiB-2 MiB mappings of their own,
/// none of which can hold a huge page), whose pages [`settle_heap`] then collapses. The
/// scales, fifth bits and small matrices of a model whose hidden size is not a multiple
/// of 256 (the 0.5B shape: 896) are ~20% of its weight bytes.
pub fn for_weights<T>(load: impl FnOnce() -> T) -> T {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a glibc threshold.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int);
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            WEIGHTS.with(|w| w.set(false));
        }
    }
    let was = WEIGHTS.with(|w| w.replace(true));
    let out = {
        let _reset = (!was).then_some(Reset);
        load()
    };
    settle_heap();
    out
}

/// After a model's weights loaded: the main heap's pages become huge pages where a whole
/// aligned 2 MiB of it is in use (`MADV_COLLAPSE`, Linux 6.1 on; elsewhere the
/// `MADV_HUGEPAGE` mark lets the kernel's background collapser do it later). What
/// glibc's `glibc.malloc.hugetlb=1` does for the heap, which a program cannot set for
/// itself. The 0.5B shape: 393 -> 479 MB of its 485 MB of weights on huge pages, decode
/// 66.2 -> 69.2 t/s (alternating rounds), resident memory +1.6 MB.
fn settle_heap() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines().filter(|l| l.ends_with("[heap]")) {
        let range = line.split_whitespace().next().unwrap_or("");
        let mut ends = range.split('-').map(|h| usize::from_str_radix(h, 16));
        let (Some(Ok(start)), Some(Ok(end))) = (ends.next(), ends.next()) else {
            continue;
        };
        let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if b > a {
            // SAFETY: advice on the heap's own pages changes how the kernel backs them,
            // not their contents; a kernel without it refuses (ignored).
            unsafe {
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_COLLAPSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_aligned_zeroed_and_survive_growth_and_shrinking() {
        let a = HugePageAlloc;
        unsafe {
            let l = Layout::from_size_align(LARGE + 12_345, 64).unwrap();
            let p = a.alloc_zeroed(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE, 0, "a large block starts on a huge page");
            let s = std::slice::from_raw_parts_mut(p, l.size());
            assert!(s.iter().all(|&b| b == 0));
            for (i, b) in s.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            // Grow large -> large (mremap), then shrink to small (copy), then grow back.
            let p2 = a.realloc(p, l, 3 * LARGE);
            assert!(!p2.is_null());
            let s2 = std::slice::from_raw_parts(p2, l.size());
            assert!(s2.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            let l2 = Layout::from_size_align(3 * LARGE, 64).unwrap();
            let p3 = a.realloc(p2, l2, 1000);
            assert!(!p3.is_null());
            let s3 = std::slice::from_raw_parts(p3, 1000);
            assert!(s3.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            let l3 = Layout::from_size_align(1000, 64).unwrap();
            let p4 = a.realloc(p3, l3, LARGE);
            assert!(!p4.is_null());
            assert_eq!(p4 as usize % HUGE, 0);
            let s4 = std::slice::from_raw_parts(p4, 1000);
            assert!(s4.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            a.dealloc(p4, Layout::from_size_align(LARGE, 64).unwrap());
        }
    }

    /// The `VmFlags` line of the mapping that holds address `at` (`hg`: MADV_HUGEPAGE).
    fn vm_flags(at: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&at);
                    continue;
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {at:#x}");
    }

    #[test]
    fn only_allocations_made_while_loading_weights_are_marked_for_huge_pages() {
        let weights: Vec<u8> = for_weights(|| vec![1u8; 3 * LARGE]);
        let scratch: Vec<u8> = vec![1u8; 3 * LARGE];
        assert_eq!(weights.as_ptr() as usize % HUGE, 0);
        assert!(
            vm_flags(weights.as_ptr() as usize)
                .split_whitespace()
                .any(|f| f == "hg"),
            "{}",
            vm_flags(weights.as_ptr() as usize)
        );
        assert!(
            !vm_flags(scratch.as_ptr() as usize)
                .split_whitespace()
                .any(|f| f == "hg"),
            "{}",
            vm_flags(scratch.as_ptr() as usize)
        );
        // The flag is this thread's and ends with the load.
        assert!(!loading_weights());
        assert_eq!(
            weights.iter().map(|&b| b as usize).sum::<usize>(),
            3 * LARGE
        );
    }

    #[test]
    fn a_block_aligned_beyond_a_page_keeps_its_alignment_when_it_grows() {
        let a = HugePageAlloc;
        let align = 64 << 10;
        unsafe {
            let l = Layout::from_size_align(LARGE, align).unwrap();
            let p = a.alloc(l);
            assert!(!p.is_null());
            *p = 7;
            let q = a.realloc(p, l, 5 * LARGE);
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0);
            assert_eq!(*q, 7);
            a.dealloc(q, Layout::from_size_align(5 * LARGE, align).unwrap());
        }
    }

    #[test]
    fn small_and_over_aligned_requests_go_to_the_system() {
        assert!(!is_large(LARGE - 1, 8));
        assert!(is_large(LARGE, 8));
        // An alignment beyond a huge page is the system's to honour.
        assert!(!is_large(4 * LARGE, 2 * HUGE));
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
    }
}
