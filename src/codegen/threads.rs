//! How many threads a kernel call may use, and how work is handed to them.
//!
//! A kernel call on `n` threads is a list of independent tasks. The calling
//! thread publishes the list to `n - 1` pool workers and runs tasks itself;
//! a worker that is not there in time (asleep, descheduled) finds the list
//! emptied by the others and takes nothing, so the caller never waits for a
//! worker to wake up, only for tasks already started. That is what keeps two
//! threads no slower than one on small work.
//!
//! Hand-off cost: between calls a worker spins (on this KVM guest a parked
//! thread takes tens of microseconds to wake, as long as a whole small
//! GEMM), then parks after [`SPIN_TIME`] without work. `Threads::wake`
//! (the executor calls it when a run starts) gets parked workers spinning
//! again while the run's first steps execute.
//!
//! Affinity: task `i` of `t` threads' worth of ranges belongs first to the
//! thread whose contiguous share holds it; a thread that runs out steals
//! from the back of the others' shares. So the same thread keeps reading
//! the same part of a weight matrix from call to call (its own L2), unless
//! the machine is busy, when balance wins.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::CodegenError;

/// How long an idle worker spins for the next call before parking.
pub const SPIN_TIME: Duration = Duration::from_micros(200);

/// The threads a kernel call may use: the calling thread alone, lamina's
/// own pool (the caller plus `count - 1` workers), or a caller-owned rayon
/// pool. Kernels split work only along independent output elements (rows,
/// M/N blocks, batch entries), never along a reduction, so results are
/// bitwise identical for every thread count.
#[derive(Clone, Debug, Default)]
pub struct Threads {
    kind: Kind,
}

#[derive(Clone, Debug, Default)]
enum Kind {
    #[default]
    Single,
    Pool(Arc<Pool>),
    Rayon(Arc<rayon::ThreadPool>),
}

impl Threads {
    /// Run everything on the calling thread.
    pub fn single() -> Threads {
        Threads { kind: Kind::Single }
    }

    /// The calling thread plus `count - 1` dedicated workers (`count == 1`
    /// is `single()`).
    pub fn new(count: usize) -> Result<Threads, CodegenError> {
        match count {
            0 => Err(CodegenError::Unsupported("a thread count of 0".into())),
            1 => Ok(Threads::single()),
            _ => Ok(Threads {
                kind: Kind::Pool(Arc::new(Pool::start(count)?)),
            }),
        }
    }

    /// Share an existing rayon pool (e.g. an application's): calls run as
    /// `pool.install` + a parallel iterator, rayon's own hand-off.
    pub fn from_pool(pool: Arc<rayon::ThreadPool>) -> Threads {
        if pool.current_num_threads() <= 1 {
            Threads::single()
        } else {
            Threads {
                kind: Kind::Rayon(pool),
            }
        }
    }

    pub fn count(&self) -> usize {
        match &self.kind {
            Kind::Single => 1,
            Kind::Pool(pool) => pool.shared.threads,
            Kind::Rayon(pool) => pool.current_num_threads(),
        }
    }

    /// Gets parked workers spinning again, so that the next calls are
    /// handed off at once: call it when a burst of kernel calls (a run)
    /// starts. Cheap when the workers are awake.
    pub fn wake(&self) {
        if let Kind::Pool(pool) = &self.kind {
            pool.unpark_parked();
        }
    }

    /// Calls `f` on every task, spread over the threads when there are
    /// more than one of each, else in order on the calling thread.
    pub(crate) fn for_each<T: Sync>(&self, tasks: &[T], f: impl Fn(&T) + Sync + Send) {
        self.for_each_index(tasks.len(), |i| f(&tasks[i]));
    }

    /// Calls `f(i)` for every `i` in `0..tasks`, like [`Threads::for_each`].
    /// Thread `t` of `count` first runs the `t`-th contiguous share of the
    /// indices, in order (so the split of a call, and its memory, stays
    /// with the same threads from call to call).
    pub(crate) fn for_each_index(&self, tasks: usize, f: impl Fn(usize) + Sync + Send) {
        match &self.kind {
            Kind::Pool(pool) if tasks > 1 => pool.run(tasks, &f),
            Kind::Rayon(pool) if tasks > 1 => {
                pool.install(|| (0..tasks).into_par_iter().for_each(f))
            }
            _ => (0..tasks).for_each(f),
        }
    }
}

/// A value alone on its cache line(s), so threads polling one do not slow
/// the others' writes to their neighbours.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// `state`: the call's epoch in the high 32 bits, [`CLOSED`], and the number
/// of workers inside the call in the low 31 bits.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;
const EPOCH: u64 = 1 << 32;

/// The task function of the current call, its lifetime erased: valid from
/// the publishing store of `state` until the caller has closed the call and
/// seen no worker inside it.
type TaskFn = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Caller plus workers.
    threads: usize,
    /// Held by the thread whose call the pool is running; a call that finds
    /// it held (another thread's call, or a task calling in) runs alone.
    busy: Padded<AtomicBool>,
    state: Padded<AtomicU64>,
    /// Written only by the `busy` holder before it publishes a new epoch.
    job: UnsafeCell<Option<TaskFn>>,
    /// Per thread (caller = 0): the indices it has not yet started,
    /// `start << 32 | end`. The owner takes from the front, others from the
    /// back.
    shares: Box<[Padded<AtomicU64>]>,
    /// Per worker (index 0 unused): set while it is parked or about to be.
    parked: Box<[Padded<AtomicBool>]>,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written only by the holder of `busy`, while no worker is
// inside a call (the previous call was closed with no worker active), and
// read only by workers that joined the current call (an Acquire CAS on
// `state` after the publishing Release store); the function it points to
// is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Pool {
    shared: Arc<Shared>,
    /// Worker `w` (1-based) is `handles[w - 1]`.
    handles: Vec<JoinHandle<()>>,
    threads: Vec<Thread>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.shared.threads)
    }
}

impl Pool {
    fn start(count: usize) -> Result<Pool, CodegenError> {
        if count > ACTIVE as usize {
            return Err(CodegenError::Unsupported(format!(
                "a thread count of {count}"
            )));
        }
        let shared = Arc::new(Shared {
            threads: count,
            busy: Padded::default(),
            state: Padded::default(),
            job: UnsafeCell::new(None),
            shares: (0..count).map(|_| Padded::default()).collect(),
            parked: (0..count).map(|_| Padded::default()).collect(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let mut pool = Pool {
            shared: shared.clone(),
            handles: Vec::with_capacity(count - 1),
            threads: Vec::with_capacity(count - 1),
        };
        for index in 1..count {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("lamina-kernel-{index}"))
                .spawn(move || worker(&shared, index))
                .map_err(|e| CodegenError::ThreadPool(e.to_string()))?;
            pool.threads.push(handle.thread().clone());
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    fn unpark_parked(&self) {
        for (i, thread) in self.threads.iter().enumerate() {
            if self.shared.parked[i + 1].0.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let shared = &*self.shared;
        let concurrent = shared
            .busy
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err();
        if concurrent || tasks > u32::MAX as usize {
            (0..tasks).for_each(f);
            return;
        }
        let t = shared.threads;
        for (i, share) in shared.shares.iter().enumerate() {
            let (start, end) = (tasks * i / t, tasks * (i + 1) / t);
            share
                .0
                .store(((start as u64) << 32) | end as u64, Ordering::Relaxed);
        }
        // SAFETY: only changes the lifetime; see `TaskFn`.
        let erased: TaskFn =
            unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), TaskFn>(f) };
        // SAFETY: we hold `busy` and no worker is inside a call (see `Shared`).
        unsafe { *shared.job.get() = Some(erased) };
        let epoch = (shared.state.0.load(Ordering::Relaxed) >> 32).wrapping_add(1);
        shared.state.0.store(epoch << 32, Ordering::SeqCst);
        self.unpark_parked();
        // Closes the call even if a task panics here: workers may still be
        // running tasks that borrow `f`.
        let close = Close(shared);
        run_shares(shared, 0, f);
        drop(close);
    }
}

/// Closes the current call: no worker joins it any more, and it returns
/// when none is still inside.
struct Close<'a>(&'a Shared);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        let mut state = shared.state.0.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while state & ACTIVE != 0 {
            spins = spins.saturating_add(1);
            if spins > 1 << 12 {
                // A worker was descheduled mid-task: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            state = shared.state.0.load(Ordering::Acquire);
        }
        // SAFETY: we hold `busy` and no worker is inside the call.
        unsafe { *shared.job.get() = None };
        let worker_panicked = shared.panicked.swap(false, Ordering::Relaxed);
        shared.busy.0.store(false, Ordering::Release);
        if worker_panicked && !std::thread::panicking() {
            panic!("a kernel task panicked on a pool thread");
        }
    }
}

/// Runs thread `me`'s share from the front, then steals the others' from
/// the back until every task has been started.
fn run_shares(shared: &Shared, me: usize, f: &(dyn Fn(usize) + Sync)) {
    while let Some(i) = take(&shared.shares[me].0, true) {
        f(i);
    }
    let t = shared.threads;
    for other in (1..t).map(|d| (me + d) % t) {
        while let Some(i) = take(&shared.shares[other].0, false) {
            f(i);
        }
    }
}

/// Takes the first (`front`) or last index of a share, if any is left.
fn take(share: &AtomicU64, front: bool) -> Option<usize> {
    let mut current = share.load(Ordering::Relaxed);
    loop {
        let (start, end) = (current >> 32, current & u32::MAX as u64);
        if start >= end {
            return None;
        }
        let (next, index) = if front {
            (((start + 1) << 32) | end, start)
        } else {
            ((start << 32) | (end - 1), end - 1)
        };
        match share.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(index as usize),
            Err(now) => current = now,
        }
    }
}

fn worker(shared: &Shared, me: usize) {
    let mut seen = 0u64;
    loop {
        let state = wait_for_call(shared, me, seen);
        seen = state >> 32;
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !join(shared, state) {
            continue;
        }
        // SAFETY: we joined the call (see `Shared`), so the caller keeps the
        // function alive until we leave it.
        let f = unsafe { (*shared.job.get()).expect("a published call has a task function") };
        let f = unsafe { &*f };
        if catch_unwind(AssertUnwindSafe(|| run_shares(shared, me, f))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.state.0.fetch_sub(1, Ordering::Release);
    }
}

/// Enters the call published as `state`, unless it is closed or over.
fn join(shared: &Shared, mut state: u64) -> bool {
    let epoch = state >> 32;
    loop {
        if state >> 32 != epoch || state & CLOSED != 0 {
            return false;
        }
        match shared.state.0.compare_exchange_weak(
            state,
            state + 1,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return true,
            Err(now) => state = now,
        }
    }
}

/// Waits for an epoch after `seen`: spinning for [`SPIN_TIME`], then parked.
fn wait_for_call(shared: &Shared, me: usize, seen: u64) -> u64 {
    let state = &shared.state.0;
    loop {
        let started = Instant::now();
        loop {
            for _ in 0..64 {
                let s = state.load(Ordering::Acquire);
                if s >> 32 != seen {
                    return s;
                }
                std::hint::spin_loop();
            }
            if started.elapsed() >= SPIN_TIME {
                break;
            }
        }
        let parked = &shared.parked[me].0;
        parked.store(true, Ordering::SeqCst);
        // A call published after this load sees `parked` and unparks us
        // (both SeqCst); one published before it is seen here.
        let s = state.load(Ordering::SeqCst);
        if s >> 32 != seen {
            parked.store(false, Ordering::Relaxed);
            return s;
        }
        std::thread::park();
        parked.store(false, Ordering::Relaxed);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared.shutdown.store(true, Ordering::Release);
        // No call can be running: it would hold a `Threads`, which owns us.
        shared.state.0.fetch_add(EPOCH, Ordering::SeqCst);
        for thread in &self.threads {
            thread.unpark();
        }
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Splits `0..len` into at most `parts` contiguous ranges whose lengths are
/// multiples of `align` (except the last).
pub(crate) fn split_range(len: usize, parts: usize, align: usize) -> Vec<std::ops::Range<usize>> {
    let split = Split::new(len, parts, align);
    (0..split.count()).map(|i| split.get(i)).collect()
}

/// [`split_range`] without the vector: range `i` computed on demand, so a
/// parallel call needs no allocation. The `align`-sized units (the last
/// may be short) are dealt out evenly: parts differ by at most one unit,
/// so 49 GEMM rows in 12-row panels split 24 + 25, not 36 + 13.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Split {
    len: usize,
    align: usize,
    units: usize,
    count: usize,
}

impl Split {
    pub(crate) fn new(len: usize, parts: usize, align: usize) -> Split {
        let align = align.max(1);
        let units = len.div_ceil(align);
        Split {
            len,
            align,
            units,
            count: parts.max(1).min(units),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn get(&self, i: usize) -> std::ops::Range<usize> {
        let unit = |p: usize| (p * self.units / self.count * self.align).min(self.len);
        unit(i)..unit(i + 1)
    }
}

/// A raw output pointer handed to tasks that write disjoint regions of one
/// buffer. Each user states why its regions are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);

impl SharedMut {
    /// The pointer. (A method, so closures capture the `Sync` wrapper and
    /// not its raw-pointer field.)
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only dereferenced inside tasks that write disjoint
// element ranges of a buffer exclusively borrowed for the whole parallel call.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[test]
    fn split_range_covers_everything_with_aligned_chunks() {
        for len in [0usize, 1, 5, 12, 13, 100, 1000] {
            for parts in [1usize, 2, 3, 8] {
                for align in [1usize, 4, 12] {
                    let ranges = split_range(len, parts, align);
                    let mut next = 0;
                    for r in &ranges {
                        assert_eq!(r.start, next);
                        assert!(r.end > r.start);
                        if r.end != len {
                            assert_eq!((r.end - r.start) % align, 0);
                        }
                        next = r.end;
                    }
                    assert_eq!(next, len);
                    assert!(ranges.len() <= parts.max(1) || len == 0);
                    // Balanced: whole units differ by at most one.
                    let units: Vec<usize> = ranges
                        .iter()
                        .map(|r| (r.end - r.start).div_ceil(align))
                        .collect();
                    if let (Some(lo), Some(hi)) = (units.iter().min(), units.iter().max()) {
                        assert!(hi - lo <= 1, "{len} {parts} {align}: {ranges:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn single_runs_tasks_in_order() {
        let seen = Mutex::new(Vec::new());
        Threads::single().for_each(&[1, 2, 3], |&t| seen.lock().unwrap().push(t));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    }

    /// Every index runs exactly once, whatever the task count, across many
    /// calls in a row (workers spinning) and after they have parked.
    #[test]
    fn pool_runs_every_task_once() {
        for count in [2usize, 3, 5] {
            let threads = Threads::new(count).unwrap();
            assert_eq!(threads.count(), count);
            for round in 0..300 {
                let tasks = round % 37;
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                threads.for_each_index(tasks, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                if round % 100 == 99 {
                    std::thread::sleep(SPIN_TIME * 3);
                    threads.wake();
                }
            }
        }
    }

    /// Workers take part: with tasks that wait for each other, a call
    /// finishes only if two threads run them at once.
    #[test]
    fn pool_workers_run_tasks_concurrently() {
        let threads = Threads::new(2).unwrap();
        let arrived = AtomicUsize::new(0);
        threads.for_each_index(2, |_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while arrived.load(Ordering::SeqCst) < 2 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no second thread"
                );
                std::hint::spin_loop();
            }
        });
        // The caller's share is the first half, in order.
        let order = Mutex::new(Vec::new());
        let me = std::thread::current().id();
        threads.for_each_index(8, |i| {
            if std::thread::current().id() == me {
                order.lock().unwrap().push(i);
            }
        });
        let order = order.into_inner().unwrap();
        assert!(order.windows(2).all(|w| w[0] < w[1] || w[1] >= 4));
    }

    /// Calls from several threads at once and calls from inside a task
    /// (which run alone) all complete.
    #[test]
    fn pool_serves_concurrent_and_nested_calls() {
        let threads = Threads::new(2).unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        threads.for_each_index(4, |_| {
                            threads.for_each_index(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.into_inner(), 4 * 200 * 4 * 3);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
        let threads = Threads::new(2).unwrap();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            threads.for_each_index(16, |i| {
                if i % 2 == 1 {
                    panic!("task {i}");
                }
            })
        }));
        assert!(caught.is_err());
        let hits = AtomicUsize::new(0);
        threads.for_each_index(16, |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.into_inner(), 16);
    }
}
