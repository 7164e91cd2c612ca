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
//! - one top-level job at a time: a call made while the pool is busy with another thread's call
//!   runs on its caller alone instead of waiting;
//! - one nested job beside it: a call made from inside a task (the two halves of a [`join`], say)
//!   is published in a second slot, where any thread with nothing to do takes part: an idle
//!   worker, or the top-level caller once its own tasks are done. So when one half of a join
//!   finishes first, its thread helps the other half's products instead of spinning. A call made
//!   from inside a nested task runs on its caller alone.
//!
//! `SWITCHYARD_THREADS` sets the number of threads (default: available parallelism);
//! [`set_backend`] switches to rayon or to single-threaded execution, [`set_nested_jobs`] runs nested
//! calls on their caller alone (both for comparisons).

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

static NESTED_JOBS: AtomicBool = AtomicBool::new(true);

/// Whether calls made inside a task are published for idle threads to help with (the default) or
/// run on their caller alone (process-wide; for comparisons).
pub fn set_nested_jobs(on: bool) {
    NESTED_JOBS.store(on, Ordering::Relaxed);
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
/// results. Kernel calls inside them are nested jobs: each runs on the thread that makes it, helped
/// by any thread that has nothing else to do (with two threads: the one whose half finished
/// first). So this is for two independent pieces of work too small to split well, such as two
/// small encoders over one short text. One after the other, on the caller, when the pool has a
/// single thread, is busy, or another backend is selected.
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

/// Where a job is published: the top-level slot, or the nested one (a call made inside a task of
/// the top-level job).
const TOP: usize = 0;
const NESTED: usize = 1;

std::thread_local! {
    /// The slot of the task this thread is running (`TOP` or `NESTED`), `None` outside tasks.
    static IN_TASK: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// One job slot.
struct Slot {
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
}

impl Slot {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            job: std::cell::UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
        }
    }

    fn generation(&self) -> u64 {
        generation(self.state.load(Ordering::Acquire))
    }
}

struct Pool {
    workers: usize,
    /// `[TOP, NESTED]`.
    slots: [Slot; 2],
    /// Workers parked (or about to park) on `cv`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

// SAFETY: a slot's `job` is only written by the single submitter holding its `busy` while no task
// reads it, and only read by a thread that has claimed a task of the job it belongs to (see
// `claim_and_run`).
unsafe impl Sync for Pool {}
// SAFETY: as above; the raw job pointers are only dereferenced under that protocol.
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
            slots: [Slot::new(), Slot::new()],
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
        let s = match IN_TASK.get() {
            None => TOP,
            Some(TOP) if NESTED_JOBS.load(Ordering::Relaxed) => NESTED,
            Some(_) => {
                (0..n).for_each(f);
                return;
            }
        };
        let slot = &self.slots[s];
        if n > MAX_TASKS
            || slot
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
        unsafe { *slot.job.get() = Some(job) };
        slot.done.store(0, Ordering::Relaxed);
        let gen = generation(slot.state.load(Ordering::Relaxed)).wrapping_add(1) & 0xffff_ffff;
        slot.state
            .store(gen << 32 | (n as u64) << 16, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
        self.claim_and_run(s, gen);
        let mut spins = 0u32;
        while slot.done.load(Ordering::Acquire) < n {
            // The top-level caller whose own tasks are done helps the nested job, if any.
            if s == TOP && self.claim_and_run(NESTED, self.slots[NESTED].generation()) {
                spins = 0;
                continue;
            }
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let panicked = slot.panicked.swap(false, Ordering::Relaxed);
        slot.busy.store(false, Ordering::Release);
        if panicked {
            panic!("a kernel task panicked on a pool worker");
        }
    }

    /// Claims and runs tasks of generation `gen` of slot `s` until none are left; returns whether
    /// it ran any.
    fn claim_and_run(&self, s: usize, gen: u64) -> bool {
        let slot = &self.slots[s];
        let mut cur = slot.state.load(Ordering::Acquire);
        let mut ran = false;
        loop {
            if generation(cur) != gen {
                return ran;
            }
            let n = (cur >> 16) & 0xffff;
            let idx = cur & 0xffff;
            if idx >= n {
                return ran;
            }
            match slot.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: we claimed task `idx` of generation `gen`, so that job is still in
                    // flight and its submitter is waiting for us; `job` holds its closure.
                    let f = unsafe { (*slot.job.get()).unwrap_unchecked() };
                    let outer = IN_TASK.replace(Some(s));
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        // SAFETY: the closure outlives the job (see `run`).
                        unsafe { (*f)(idx as usize) }
                    }));
                    IN_TASK.set(outer);
                    if r.is_err() {
                        slot.panicked.store(true, Ordering::Relaxed);
                    }
                    slot.done.fetch_add(1, Ordering::Release);
                    ran = true;
                    cur = slot.state.load(Ordering::Acquire);
                }
                Err(now) => cur = now,
            }
        }
    }

    fn worker(&self) {
        // Generation 0 is the slots' state before their first job: a worker that starts after a
        // job was published still sees it as new.
        let mut seen = [0u64; 2];
        loop {
            // Wait for a new generation in either slot: spin, then park.
            let mut start: Option<Instant> = None;
            let mut spins = 0u32;
            let (s, gen) = loop {
                let now = self.slots.each_ref().map(Slot::generation);
                // A nested job first: its submitter is inside a task of the top-level one.
                if let Some(s) = [NESTED, TOP].into_iter().find(|&s| now[s] != seen[s]) {
                    break (s, now[s]);
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
                while self
                    .slots
                    .iter()
                    .zip(seen)
                    .all(|(slot, g)| generation(slot.state.load(Ordering::SeqCst)) == g)
                {
                    guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                start = None;
            };
            seen[s] = gen;
            self.claim_and_run(s, gen);
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

    /// Runs `attempt` until it reports an outcome (`Some`); it reports `None` when another test's
    /// job held the slot it needed, so that its work ran inline.
    fn with_retries<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
        for _ in 0..2000 {
            if let Some(outcome) = attempt() {
                return outcome;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the pool stayed busy with other tests' jobs");
    }

    #[test]
    fn a_thread_whose_half_of_a_join_is_done_helps_the_other_half() {
        if threads() < 2 {
            eprintln!("one kernel thread: nested jobs run on their caller, nothing to check");
            return;
        }
        // Half `b` publishes a nested job of two tasks whose first waits until the second has
        // started: only another thread can start it, the one whose half `a` (nothing) is done.
        let helped = with_retries(|| {
            let outcome = Mutex::new(None);
            let started = AtomicBool::new(false);
            join(
                || (),
                || {
                    run(2, &|k| {
                        if IN_TASK.get() != Some(NESTED) {
                            return; // the join or its nested job ran inline
                        }
                        if k == 1 {
                            started.store(true, Ordering::Release);
                            return;
                        }
                        let until = Instant::now() + Duration::from_secs(10);
                        while !started.load(Ordering::Acquire) && Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        *outcome.lock().unwrap() = Some(started.load(Ordering::Acquire));
                    })
                },
            );
            outcome.into_inner().unwrap()
        });
        assert!(
            helped,
            "the nested job's second task did not start while its first ran"
        );
    }

    #[test]
    fn a_job_nested_two_deep_runs_on_its_caller() {
        if threads() < 2 {
            eprintln!("one kernel thread: every job runs on its caller, nothing to check");
            return;
        }
        // Every inner task on the thread of the nested task that made it, in order.
        let outer = with_retries(|| {
            let outer = Mutex::new(Vec::new());
            join(
                || {
                    run(2, &|_| {
                        let nested = IN_TASK.get() == Some(NESTED);
                        let inner = Mutex::new(Vec::new());
                        run(3, &|k| {
                            inner.lock().unwrap().push((k, std::thread::current().id()))
                        });
                        let inner = inner.into_inner().unwrap();
                        outer
                            .lock()
                            .unwrap()
                            .push((nested, std::thread::current().id(), inner));
                    })
                },
                || (),
            );
            let outer = outer.into_inner().unwrap();
            outer.iter().all(|o| o.0).then_some(outer)
        });
        assert_eq!(outer.len(), 2);
        for (_, thread, inner) in outer {
            assert_eq!(inner.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
            assert!(inner.iter().all(|p| p.1 == thread));
        }
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
