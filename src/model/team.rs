//! A team of threads that run one decode step together, in lockstep.
//!
//! A decoded token is ~150 small dependent pieces of work (matrix-vector products, the
//! attention of each layer). Handing each piece to a thread pool costs a futex wake-up
//! and a sleep per piece (perf showed ~15% of decode time in the kernel doing exactly
//! that). Instead every thread of the team runs the whole step, takes its share of each
//! piece, and waits for the others at a spinning barrier before the next dependent piece
//! (the way llama.cpp's graph executor works). Small element-wise work (norms, RoPE,
//! quantising activations) is simply repeated by every thread, which is cheaper than a
//! barrier.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// What one thread of a running team knows about the team.
pub struct Member<'t> {
    /// 0 for the calling thread, 1.. for the helpers.
    pub index: usize,
    pub size: usize,
    barrier: &'t SpinBarrier,
    counters: &'t [AtomicUsize],
    /// Index of the next work-sharing counter this member will use; every member goes
    /// through the same sequence of shared loops, so the indices agree.
    next_counter: UnsafeCell<usize>,
}

impl Member<'_> {
    /// Waits until every member has reached this point (and sees their writes).
    pub fn sync(&self) {
        self.barrier.wait();
    }

    /// Runs `f(i)` for every `i < n` exactly once across the team: members take the
    /// next index from a shared counter, so a slow or pre-empted thread does less.
    pub fn share(&self, n: usize, mut f: impl FnMut(usize)) {
        // SAFETY: `next_counter` is only touched by this member's own thread.
        let c = unsafe {
            let slot = &mut *self.next_counter.get();
            *slot += 1;
            *slot - 1
        };
        let counter = self
            .counters
            .get(c)
            .expect("team ran more shared loops than it reserved counters for");
        loop {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        }
    }
}

/// Runs `f` on `threads` threads (the caller is member 0) and returns when all are
/// done. `shared_loops` bounds how many [`Member::share`] calls `f` makes. Fails, without
/// running `f`, when the operating system refuses a thread.
pub fn run<F>(threads: usize, shared_loops: usize, f: F) -> std::io::Result<()>
where
    F: Fn(&Member) + Sync,
{
    let size = threads.max(1);
    let barrier = SpinBarrier::new(size);
    let counters: Vec<AtomicUsize> = (0..shared_loops).map(|_| AtomicUsize::new(0)).collect();
    let member = |index| Member {
        index,
        size,
        barrier: &barrier,
        counters: &counters,
        next_counter: UnsafeCell::new(0),
    };
    if size == 1 {
        f(&member(0));
        return Ok(());
    }
    // A member that panics would leave the others spinning at the next barrier forever:
    // it poisons the barrier first, so they panic too and the panic reaches the caller.
    let guarded = |i: usize| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&member(i))));
        if let Err(e) = r {
            barrier.poison();
            std::panic::resume_unwind(e);
        }
    };
    // Helpers start only once all of them exist: if one cannot be spawned, the others
    // leave without running `f` (they would wait at its first barrier for good).
    const PENDING: u8 = 0;
    const GO: u8 = 1;
    const ABORT: u8 = 2;
    let start = AtomicU8::new(PENDING);
    std::thread::scope(|s| {
        let mut spawned = Ok(());
        for i in 1..size {
            let (guarded, start) = (&guarded, &start);
            let r = std::thread::Builder::new().spawn_scoped(s, move || {
                let mut spins = 0u32;
                loop {
                    match start.load(Ordering::Acquire) {
                        GO => return guarded(i),
                        ABORT => return,
                        _ => backoff(&mut spins),
                    }
                }
            });
            if let Err(e) = r {
                spawned = Err(e);
                break;
            }
        }
        match spawned {
            Ok(()) => {
                start.store(GO, Ordering::Release);
                guarded(0);
                Ok(())
            }
            Err(e) => {
                start.store(ABORT, Ordering::Release);
                Err(e)
            }
        }
    })
}

/// Spin a while, then give the core away (a peer may be descheduled on a busy machine).
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 20_000 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A reusable barrier that spins (then yields) instead of sleeping: the waits between
/// pieces of a decode step are microseconds, far below a futex round trip.
pub struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    pub fn new(n: usize) -> Self {
        SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    pub fn wait(&self) {
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // Last to arrive: reset for the next use, then release the others. Nobody
            // can arrive again before the generation moves, so the reset is safe.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == gen {
            if self.poisoned.load(Ordering::Acquire) {
                panic!("another thread of the decode team panicked");
            }
            backoff(&mut spins);
        }
    }
}

/// A buffer that the members of a team write in disjoint parts between barriers.
pub struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through the unsafe methods below, whose callers promise that
// concurrent writers touch disjoint ranges and that reads happen after a barrier.
unsafe impl<T: Send + Sync> Sync for Shared<'_, T> {}
unsafe impl<T: Send> Send for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    pub fn new(buf: &'a mut [T]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _borrow: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// # Safety
    /// No other member may read or write `[a, b)` until the next barrier.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, a: usize, b: usize) -> &mut [T] {
        assert!(
            a <= b && b <= self.len,
            "shared part {a}..{b} of {}",
            self.len
        );
        std::slice::from_raw_parts_mut(self.ptr.add(a), b - a)
    }

    /// # Safety
    /// No member may write the buffer until the next barrier.
    pub unsafe fn read(&self) -> &[T] {
        std::slice::from_raw_parts(self.ptr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_loop_visits_every_index_once_and_barriers_order_phases() {
        for threads in [1, 2, 3] {
            let mut buf = vec![0u32; 1000];
            let shared = Shared::new(&mut buf);
            let mut sums = vec![0u64; threads];
            let sums_sh = Shared::new(&mut sums);
            let r = run(threads, 2, |m| {
                m.share(1000, |i| unsafe {
                    shared.part(i, i + 1)[0] += i as u32 + 1
                });
                m.sync();
                // Every write of the first loop is visible after the barrier.
                let total: u64 = unsafe { shared.read() }.iter().map(|&v| v as u64).sum();
                unsafe { sums_sh.part(m.index, m.index + 1)[0] = total };
                m.sync();
                m.share(1000, |i| unsafe { shared.part(i, i + 1)[0] *= 2 });
            });
            r.expect("team ran");
            assert!(sums.iter().all(|&s| s == 500_500), "{threads}: {sums:?}");
            assert!(buf
                .iter()
                .enumerate()
                .all(|(i, &v)| v == 2 * (i as u32 + 1)));
        }
    }

    #[test]
    fn a_panicking_member_does_not_leave_the_others_waiting() {
        let r = std::panic::catch_unwind(|| {
            run(2, 0, |m| {
                if m.index == 1 {
                    panic!("boom");
                }
                m.sync();
            })
            .ok()
        });
        assert!(r.is_err());
    }
}
