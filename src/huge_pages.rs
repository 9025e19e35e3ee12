//! The process's memory allocator: the system's, except that every allocation of at
//! least [`LARGE`] bytes gets its own mapping, 2 MiB-aligned and marked for transparent
//! huge pages (`madvise(MADV_HUGEPAGE)`).
//!
//! Why: decoding one token reads every weight once, so empty-cache decode is bound by
//! how fast the two cores stream memory. With 4 KiB pages a stream crosses a page (a
//! TLB miss, and the hardware prefetcher starting over) every 4 KiB; with 2 MiB pages
//! it crosses one every 2 MiB. Measured on this project's 2-core machine: a C loop
//! streaming 1 GiB read 29-32 GB/s on 4 KiB pages and 35 GB/s on 2 MiB pages (one
//! thread: 23 vs 34 GB/s), and the 1B shape's empty-cache decode went from ~40 to ~43
//! t/s. The system's `malloc` does this only when asked at process start
//! (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), which a program cannot set for itself.
//!
//! The allocator changes only the large allocations: weight matrices, the Trace's
//! arrays, KV caches, prefill scratch. A model's small weight arrays (scales, fifth
//! bits, matrices under 2 MiB) live in the main heap, which [`heap_for_weights`] and
//! [`settle_heap`] put on huge pages around the loading of a model (the heap of the
//! thread that loads it: the main thread in `run`, `bench` and the other commands). Each mapping's length is the request rounded up to the 4 KiB page,
//! so resident memory stays what is used (the kernel backs a mapping's last, partial
//! 2 MiB with small pages). Where transparent huge pages are off (`never`) the hint is
//! ignored and the mapping behaves as any other.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are mapped on their own (a smaller one could
/// not hold a whole huge page).
pub const LARGE: usize = 2 << 20;
/// The huge page size this aligns to (x86-64 and 4 KiB-page aarch64).
const HUGE: usize = 2 << 20;

/// The system allocator with large allocations on huge pages (see the module's text).
pub struct HugePageAlloc;

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
/// marked for huge pages; null when the kernel refuses.
///
/// Aligned on purpose: the kernel backs an address range with a huge page when the
/// range's first write faults and the whole aligned 2 MiB lies inside one mapping. An
/// unaligned mapping loses a partial 2 MiB at each end (and a neighbour that comes
/// later cannot help: its border pages were already faulted in small); an aligned one
/// only at its end. Measured on the 1B shape: 575 of 667 MB of weights on huge pages
/// aligned, 475 MB unaligned.
fn map(size: usize) -> *mut u8 {
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
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
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
// returned to it) or a fresh mapping of at least the requested size whose start is
// HUGE-aligned (so aligned for any `align <= HUGE`), unmapped exactly once in
// `dealloc` / `realloc`; the size decides which, and Rust passes the same layout back.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            // Fresh anonymous mappings read as zero.
            map(layout.size())
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
            (true, true) => {
                // Let the kernel move the pages instead of copying them (a growing
                // Vec); the huge-page mark travels with the mapping.
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
                // Between the system heap and a mapping of its own: copy.
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

/// Before a model's weights load: allocations below [`LARGE`] come from the main heap
/// from now on (glibc would give those of 128 KiB-2 MiB mappings of their own, none of
/// which can hold a huge page), so that [`settle_heap`] can put them on huge pages.
/// The scales, fifth bits and small matrices of a model whose hidden size is not a
/// multiple of 256 (the 0.5B shape: 896) are ~20% of its weight bytes.
pub fn heap_for_weights() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a glibc threshold.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int);
    }
}

/// After a model's weights loaded: the main heap's pages become huge pages where a whole
/// aligned 2 MiB of it is in use (`MADV_COLLAPSE`, Linux 6.1 on; elsewhere the
/// `MADV_HUGEPAGE` mark lets the kernel's background collapser do it later). What
/// glibc's `glibc.malloc.hugetlb=1` does for the heap, which a program cannot set for
/// itself. The 0.5B shape: 393 -> 479 MB of its 485 MB of weights on huge pages, decode
/// 66.2 -> 69.2 t/s (alternating rounds), resident memory +1.6 MB.
pub fn settle_heap() {
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
