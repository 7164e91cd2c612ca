//! Splitting a kernel call across CPU threads.
//!
//! # Why not rayon
//!
//! One decode step of a small model calls `matmul` a few hundred times (SmolLM2-135M: 30 layers x 7
//! linears + the head), each on a matrix that takes a few to a few tens of microseconds, so the
//! per-call cost of waking helpers and waiting for them is on the critical path of every token.
//! rayon's global pool parks idle workers quickly and wakes them through its sleep/notify machinery:
//! measured here (`benches/benches/qmatmul.rs`, `parallel_overhead` group) an empty two-task call
//! costs 10-20 µs on rayon and 0.3 µs on this pool, and a decode-sized Q4_1 576x576 product takes
//! 20 µs on rayon, 7.6 µs on one thread and 4.9 µs on this pool. At 211 calls per token rayon's
//! dispatch alone would cost more than all of SmolLM2's matmul work (1.8 ms per token).
//!
//! The pool is the llama.cpp design, kept small:
//! - `threads - 1` persistent workers; the calling thread takes part in every job, so with 2 cores
//!   one worker plus the caller share the rows;
//! - a job is published by bumping a generation counter; tasks (row chunks) are claimed with a
//!   compare-and-swap on one word holding `(generation, task count, next task)`, so a late worker
//!   can never claim a task of a newer job, and a worker that is slow to wake simply finds its
//!   chunk already taken by the caller;
//! - [`parallel_rows`] gives each thread one contiguous chunk of rows. Measured on the SmolLM2
//!   decode step (211 calls, 96 MB of weights streamed from DRAM): 1, 2, 4, 8, 16 chunks per thread
//!   took 1.85, 2.27, 2.29, 2.96, 2.94 ms per token — long uninterrupted streams keep the
//!   prefetchers (hardware and ours) ahead, and fewer tasks mean less synchronisation;
//! - idle workers spin (with `spin_loop` hints) for [`SPIN`] after their last task, so back-to-back
//!   calls of a decode step find them awake, then park on a condition variable (no CPU burnt while
//!   the server is idle);
//! - one job at a time: a call made while the pool is busy (another thread's matmul, or a nested
//!   call from inside a task) runs on its caller alone instead of waiting.
//!
//! `SWITCHYARD_THREADS` sets the number of threads (default: available parallelism);
//! [`set_backend`] switches to rayon or to single-threaded execution (for comparisons).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
pub const SPIN: Duration = Duration::from_micros(500);

/// Which executor [`parallel_rows`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// This module's spinning pool (the default).
    Pool,
    /// rayon's global pool.
    Rayon,
    /// The calling thread only.
    Single,
}

static BACKEND: AtomicU8 = AtomicU8::new(0);

/// Selects the executor for all later kernel calls (process-wide).
pub fn set_backend(b: Backend) {
    BACKEND.store(b as u8, Ordering::Relaxed);
}

/// The executor in use.
pub fn backend() -> Backend {
    match BACKEND.load(Ordering::Relaxed) {
        0 => Backend::Pool,
        1 => Backend::Rayon,
        _ => Backend::Single,
    }
}

/// Number of threads (caller included) that kernel calls use.
pub fn threads() -> usize {
    pool().map_or(1, |p| p.workers + 1)
}

/// Below this many multiply-adds a call is not worth splitting (a few microseconds).
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Runs `f(r0, r1)` over chunks covering `0..rows`, in parallel when the work is big enough.
///
/// `grain` is the row multiple the kernel prefers per chunk (its register tile height);
/// `work_per_row` is the kernel's cost of one row in multiply-adds, used to size chunks.
pub fn parallel_rows(
    rows: usize,
    grain: usize,
    work_per_row: usize,
    f: &(dyn Fn(usize, usize) + Sync),
) {
    /// Smallest chunk worth a task.
    const MIN_TASK_WORK: usize = 1 << 15;

    let grain = grain.max(1);
    let threads = match backend() {
        Backend::Single => 1,
        Backend::Rayon => rayon::current_num_threads(),
        Backend::Pool => threads(),
    };
    let total = rows.saturating_mul(work_per_row);
    if threads <= 1 || total < MIN_PARALLEL_WORK || rows <= grain {
        f(0, rows);
        return;
    }
    let by_count = rows.div_ceil(threads);
    let by_work = MIN_TASK_WORK.div_ceil(work_per_row.max(1));
    let chunk = by_count.max(by_work).div_ceil(grain) * grain;
    let ntasks = rows.div_ceil(chunk);
    if ntasks <= 1 {
        f(0, rows);
        return;
    }
    let task = |t: usize| f(t * chunk, ((t + 1) * chunk).min(rows));
    match backend() {
        Backend::Rayon => {
            use rayon::prelude::*;
            (0..ntasks).into_par_iter().for_each(task);
        }
        _ => run(ntasks, &task),
    }
}

/// Runs `f(0)`, ..., `f(tasks - 1)`, in parallel when `total_work` (multiply-adds, all tasks
/// together) is worth it. Threads claim tasks one at a time, so tasks of uneven cost balance out:
/// give a few times more tasks than threads.
pub fn parallel_tasks(tasks: usize, total_work: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks <= 1 || total_work < MIN_PARALLEL_WORK {
        (0..tasks).for_each(f);
        return;
    }
    match backend() {
        Backend::Single => (0..tasks).for_each(f),
        Backend::Rayon => {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(f);
        }
        Backend::Pool => run(tasks, f),
    }
}

/// Runs `f(k, chunk)` over `data` cut into chunks of `chunk` items (the last one shorter), `k` the
/// chunk's index, in parallel (as [`parallel_tasks`]) when `data.len() · work_per_item` is worth it.
pub fn parallel_chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    work_per_item: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    /// The base of `data`, shared by the tasks.
    struct Base<T>(*mut T);
    // SAFETY: the tasks only form disjoint sub-slices of `data` from it (below), and `T: Send`.
    unsafe impl<T: Send> Sync for Base<T> {}
    let (len, chunk) = (data.len(), chunk.max(1));
    let base = Base(data.as_mut_ptr());
    parallel_tasks(
        len.div_ceil(chunk),
        len.saturating_mul(work_per_item),
        &|k| {
            let start = k * chunk;
            let end = (start + chunk).min(len);
            let base = &base;
            // SAFETY: each task index runs once, and the tasks' ranges are disjoint and inside `data`,
            // which is borrowed mutably for the whole call.
            let part = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
            f(k, part);
        },
    );
}

/// Runs `f(0)`, ..., `f(n - 1)` on the pool (the caller included), returning when all are done.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    match pool() {
        Some(p) if n > 1 => p.run(n, f),
        _ => (0..n).for_each(f),
    }
}

/// Runs `a` and `b` at the same time, one on the caller and one on a pool worker, and returns both
/// results. Kernel calls inside them run single-threaded (they are nested in a pool job), so this is
/// for two independent pieces of work too small to split well, such as two small encoders over one
/// short text. One after the other, on the caller, when the pool has a single thread, is busy, or
/// another backend is selected.
pub fn join<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if backend() != Backend::Pool || threads() < 2 {
        return (a(), b());
    }
    let (a, b) = (Mutex::new(Some(a)), Mutex::new(Some(b)));
    let (ra, rb) = (Mutex::new(None), Mutex::new(None));
    run(2, &|k| {
        if k == 0 {
            let f = a.lock().unwrap_or_else(|e| e.into_inner()).take();
            *ra.lock().unwrap_or_else(|e| e.into_inner()) = f.map(|f| f());
        } else {
            let f = b.lock().unwrap_or_else(|e| e.into_inner()).take();
            *rb.lock().unwrap_or_else(|e| e.into_inner()) = f.map(|f| f());
        }
    });
    fn taken<T>(r: Mutex<Option<T>>) -> T {
        r.into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("join: both tasks ran")
    }
    (taken(ra), taken(rb))
}

type Job = *const (dyn Fn(usize) + Sync + 'static);

struct Pool {
    workers: usize,
    /// `generation << 32 | ntasks << 16 | next_task`.
    state: AtomicU64,
    /// The current job's closure; written only while no task of the previous job is running.
    job: std::cell::UnsafeCell<Option<Job>>,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    /// A task panicked.
    panicked: AtomicBool,
    /// A job is in flight (one submitter at a time).
    busy: AtomicBool,
    /// Workers parked (or about to park) on `cv`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

// SAFETY: `job` is only written by the single submitter holding `busy` while no task reads it, and
// only read by a thread that has claimed a task of the job it belongs to (see `claim_and_run`).
unsafe impl Sync for Pool {}
// SAFETY: as above; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Pool {}

const MAX_TASKS: usize = (1 << 16) - 1;

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let threads = std::env::var("SWITCHYARD_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads <= 1 {
            return None;
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: threads - 1,
            state: AtomicU64::new(0),
            job: std::cell::UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }));
        for k in 0..threads - 1 {
            let spawned = std::thread::Builder::new()
                .name(format!("switchyard-kernel-{k}"))
                .spawn(move || pool.worker());
            if spawned.is_err() {
                return None;
            }
        }
        Some(pool)
    })
}

fn generation(state: u64) -> u64 {
    state >> 32
}

impl Pool {
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n > MAX_TASKS
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            (0..n).for_each(f);
            return;
        }
        // SAFETY: erasing the lifetime is sound because this function does not return before every
        // claimed task has finished (`done == n`), and no task can be claimed after that (the
        // state's task index is exhausted and only a new generation reopens it).
        let job: Job = unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f) };
        // SAFETY: we hold `busy` and every task of the previous job has finished.
        unsafe { *self.job.get() = Some(job) };
        self.done.store(0, Ordering::Relaxed);
        let gen = generation(self.state.load(Ordering::Relaxed)).wrapping_add(1) & 0xffff_ffff;
        self.state
            .store(gen << 32 | (n as u64) << 16, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
        self.claim_and_run(gen);
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let panicked = self.panicked.swap(false, Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
        if panicked {
            panic!("a kernel task panicked on a pool worker");
        }
    }

    /// Claims and runs tasks of generation `gen` until none are left.
    fn claim_and_run(&self, gen: u64) {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if generation(cur) != gen {
                return;
            }
            let n = (cur >> 16) & 0xffff;
            let idx = cur & 0xffff;
            if idx >= n {
                return;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: we claimed task `idx` of generation `gen`, so that job is still in
                    // flight and its submitter is waiting for us; `job` holds its closure.
                    let f = unsafe { (*self.job.get()).unwrap_unchecked() };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        // SAFETY: the closure outlives the job (see `run`).
                        unsafe { (*f)(idx as usize) }
                    }));
                    if r.is_err() {
                        self.panicked.store(true, Ordering::Relaxed);
                    }
                    self.done.fetch_add(1, Ordering::Release);
                    cur = self.state.load(Ordering::Acquire);
                }
                Err(now) => cur = now,
            }
        }
    }

    fn worker(&self) {
        let mut seen = generation(self.state.load(Ordering::Acquire));
        loop {
            // Wait for a new generation: spin, then park.
            let mut start: Option<Instant> = None;
            let mut spins = 0u32;
            let gen = loop {
                let g = generation(self.state.load(Ordering::Acquire));
                if g != seen {
                    break g;
                }
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(256) {
                    std::hint::spin_loop();
                    continue;
                }
                let t0 = *start.get_or_insert_with(Instant::now);
                if t0.elapsed() < SPIN {
                    continue;
                }
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                while generation(self.state.load(Ordering::SeqCst)) == seen {
                    guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                start = None;
            };
            seen = gen;
            self.claim_and_run(gen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn join_returns_both_results_and_nested_kernel_calls_still_cover_their_rows() {
        let rows_covered = |rows: usize| {
            let seen = Mutex::new(vec![0u32; rows]);
            parallel_rows(rows, 4, 1 << 16, &|r0, r1| {
                seen.lock().unwrap()[r0..r1]
                    .iter_mut()
                    .for_each(|c| *c += 1);
            });
            seen.into_inner().unwrap()
        };
        let (a, b) = join(|| rows_covered(64), || (rows_covered(40), "b"));
        assert_eq!(a, vec![1; 64]);
        assert_eq!(b, (vec![1; 40], "b"));
        // The pool is free again afterwards: a job may split across threads as before.
        assert_eq!(rows_covered(128), vec![1; 128]);
    }

    /// The `(start, end, thread)` of every chunk `parallel_rows` runs.
    fn chunks(
        rows: usize,
        grain: usize,
        work_per_row: usize,
    ) -> Vec<(usize, usize, std::thread::ThreadId)> {
        let seen = Mutex::new(Vec::new());
        parallel_rows(rows, grain, work_per_row, &|r0, r1| {
            seen.lock()
                .unwrap()
                .push((r0, r1, std::thread::current().id()));
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|c| c.0);
        seen
    }

    #[test]
    fn parallel_rows_covers_every_row_once_in_grain_multiples() {
        for (rows, grain) in [(1, 1), (7, 4), (96, 6), (1000, 8), (4864, 6)] {
            let seen = chunks(rows, grain, 1 << 12);
            let mut next = 0;
            for &(r0, r1, _) in &seen {
                assert_eq!(r0, next, "rows {rows}: chunks must tile 0..rows");
                assert!(r1 > r0);
                next = r1;
            }
            assert_eq!(next, rows);
            for &(r0, _, _) in &seen {
                assert_eq!(
                    r0 % grain,
                    0,
                    "rows {rows}: chunk starts are grain multiples"
                );
            }
        }
        // Enough work is split into one chunk per thread; too little is not split.
        assert_eq!(chunks(4864, 6, 1 << 12).len(), threads());
        assert_eq!(chunks(4864, 6, 1).len(), 1);
    }

    #[test]
    fn run_runs_every_task_once() {
        let counts: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        run(counts.len(), &|t| {
            counts[t].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn parallel_chunks_mut_hands_each_chunk_out_once_with_its_index() {
        for (len, chunk, work) in [(100_003, 1000, 16), (10, 3, 16), (0, 4, 16), (5000, 64, 1)] {
            let mut data = vec![0usize; len];
            let calls = AtomicUsize::new(0);
            parallel_chunks_mut(&mut data, chunk, work, &|k, part| {
                calls.fetch_add(1, Ordering::Relaxed);
                assert!(
                    part.len() == chunk || (k + 1) * chunk >= len,
                    "chunk {k} short"
                );
                for (i, x) in part.iter_mut().enumerate() {
                    *x += k * chunk + i + 1;
                }
            });
            assert_eq!(calls.load(Ordering::Relaxed), len.div_ceil(chunk));
            assert!(
                data.iter().enumerate().all(|(i, &x)| x == i + 1),
                "{len}/{chunk}"
            );
        }
    }
}
