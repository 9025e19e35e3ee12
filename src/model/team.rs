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
use std::sync::{Arc, Condvar, Mutex};

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
///
/// The helpers stay alive between calls (one decode step is a few milliseconds, and
/// starting a thread per step cost tens of microseconds on a quiet machine and up to a
/// millisecond on a busy one, where the new thread waits for a core). Only one team
/// runs on them at a time; a call made while they are busy (another thread decoding at
/// the same moment) starts threads of its own for that call.
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
    let mut pool = match POOL.try_lock() {
        Ok(p) => p,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return run_scoped(size, &guarded),
    };
    if pool.as_ref().is_some_and(|p| p.size != size) {
        // Dropping the pool stops and joins its helpers.
        *pool = None;
    }
    if pool.is_none() {
        *pool = Some(Pool::new(size)?);
    }
    let p = pool.as_ref().expect("pool just created");
    p.run(&guarded);
    Ok(())
}

/// [`run`] on helpers started for this call only.
fn run_scoped(size: usize, guarded: &(dyn Fn(usize) + Sync)) -> std::io::Result<()> {
    // Helpers start only once all of them exist: if one cannot be spawned, the others
    // leave without running `f` (they would wait at its first barrier for good).
    const PENDING: u8 = 0;
    const GO: u8 = 1;
    const ABORT: u8 = 2;
    let start = AtomicU8::new(PENDING);
    std::thread::scope(|s| {
        let mut spawned = Ok(());
        for i in 1..size {
            let start = &start;
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

/// The helpers kept between calls of [`run`], for the last team size used.
static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// The job of the current run: member `i` runs `job(i)`. Its lifetime is erased: the
/// caller of [`Pool::run`] does not return (or unwind) before every helper has finished
/// with it.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));
// SAFETY: the pointee is Sync and outlives every use (see `Pool::run`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

struct PoolState {
    /// Bumped once per run; a helper runs the job when it sees a new value.
    epoch: AtomicUsize,
    /// Helpers done with the current run.
    done: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// The first panic of a helper in the current run.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    stop: AtomicBool,
    /// Helpers that found no work for a while sleep here.
    sleep: Mutex<()>,
    wake: Condvar,
}

struct Pool {
    size: usize,
    state: Arc<PoolState>,
    helpers: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    fn new(size: usize) -> std::io::Result<Self> {
        let state = Arc::new(PoolState {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool {
            size,
            state,
            helpers: Vec::new(),
        };
        for i in 1..size {
            let st = Arc::clone(&pool.state);
            let h = std::thread::Builder::new()
                .name(format!("kvscope-decode-{i}"))
                .spawn(move || helper(i, &st))?;
            // On an early return the pool drops and stops the helpers started so far.
            pool.helpers.push(h);
        }
        Ok(pool)
    }

    /// Runs `job(0)` here and `job(i)` on helper `i`; returns when all have finished,
    /// re-raising the first panic.
    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let st = &self.state;
        // SAFETY: only the lifetime changes; this function waits below for every helper
        // to finish with the job before it returns or unwinds.
        let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(job) };
        *lock(&st.job) = Some(Job(erased));
        st.done.store(0, Ordering::Relaxed);
        st.epoch.fetch_add(1, Ordering::Release);
        {
            // Under the lock that sleeping helpers check the epoch under: none misses it.
            let _g = lock(&st.sleep);
            st.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while st.done.load(Ordering::Acquire) < self.size - 1 {
            backoff(&mut spins);
        }
        *lock(&st.job) = None;
        let theirs = lock(&st.panic).take();
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if let Some(e) = theirs {
            std::panic::resume_unwind(e);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        {
            let _g = lock(&self.state.sleep);
            self.state.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A mutex guard even if a panicking thread poisoned the mutex (the data it guards
/// stays consistent: single assignments).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spins (decode steps follow each other within microseconds) that a helper waits for
/// the next run before it sleeps: ~10k x PAUSE, a few hundred microseconds.
const SPINS_BEFORE_SLEEP: u32 = 10_000;

fn helper(i: usize, st: &PoolState) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            if st.stop.load(Ordering::Acquire) {
                return;
            }
            let e = st.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if spins < SPINS_BEFORE_SLEEP {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let g = lock(&st.sleep);
                if st.epoch.load(Ordering::Acquire) == seen && !st.stop.load(Ordering::Acquire) {
                    drop(st.wake.wait(g));
                }
            }
        }
        let job = *lock(&st.job);
        if let Some(Job(f)) = job {
            // SAFETY: the caller of `Pool::run` keeps the job alive until `done` counts
            // this helper.
            let f = unsafe { &*f };
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                lock(&st.panic).get_or_insert(e);
            }
        }
        st.done.fetch_add(1, Ordering::Release);
    }
}

/// Spin a while, then give the core away (a peer may be descheduled on a busy machine).
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    // ~2k x PAUSE (~25 ns each here): waits between the pieces of a step are shorter
    // on a quiet machine; on a busy one the peer may be off its core, and spinning
    // longer only keeps it off.
    if *spins < 2_000 {
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

    /// The kept helpers serve one run after another, a run after a panic, a change of
    /// team size, and two callers at once (one of them on threads of its own).
    #[test]
    fn kept_helpers_serve_successive_and_concurrent_runs() {
        let one_run = |threads: usize| {
            let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
            run(threads, 1, |m| {
                m.share(64, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                m.sync();
            })
            .expect("team ran");
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        };
        for _ in 0..50 {
            one_run(2);
        }
        let r = std::panic::catch_unwind(|| {
            run(2, 0, |m| {
                if m.index == 0 {
                    panic!("boom");
                }
                m.sync();
            })
            .ok()
        });
        assert!(r.is_err());
        one_run(2);
        one_run(3);
        std::thread::scope(|s| {
            let a = s.spawn(|| (0..20).for_each(|_| one_run(2)));
            let b = s.spawn(|| (0..20).for_each(|_| one_run(2)));
            a.join().expect("first caller");
            b.join().expect("second caller");
        });
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
