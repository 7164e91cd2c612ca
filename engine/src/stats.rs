//! Counters the worker publishes for metrics and tests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Live engine counters (lock-free; read them from any thread).
#[derive(Debug, Default)]
pub struct EngineStats {
    waiting: AtomicUsize,
    running: AtomicUsize,
    kv_blocks_used: AtomicUsize,
    kv_blocks_cached: AtomicUsize,
    kv_blocks_total: AtomicUsize,
    admitted_prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    steps: AtomicU64,
    step_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cancelled: AtomicU64,
    preempted: AtomicU64,
    busy_micros: AtomicU64,
}

/// A consistent-enough copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    pub waiting: usize,
    pub running: usize,
    /// Blocks held by running sequences.
    pub kv_blocks_used: usize,
    /// Blocks no sequence holds that keep a prefix for later ones to share.
    pub kv_blocks_cached: usize,
    pub kv_blocks_total: usize,
    /// Prompt positions of admitted sequences (a preempted one counts again when readmitted).
    pub admitted_prompt_tokens: u64,
    /// Of those, positions found in the prefix cache instead of computed.
    pub cached_prompt_tokens: u64,
    pub steps: u64,
    pub step_tokens: u64,
    pub generated_tokens: u64,
    pub cancelled: u64,
    pub preempted: u64,
    pub busy_seconds: f64,
}

impl EngineStats {
    pub(crate) fn enter_queue(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }
    /// Takes a place in the queue if fewer than `limit` wait: one atomic step, so concurrent
    /// submissions cannot all pass a check and overshoot the limit together.
    pub(crate) fn try_enter_queue(&self, limit: usize) -> bool {
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
    pub(crate) fn leave_queue(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
    pub(crate) fn record_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_preempted(&self) {
        self.preempted.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_generated(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn record_step(&self, tokens: usize, _seqs: usize, seconds: f64) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.busy_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
    pub(crate) fn record_admitted(&self, prompt: usize, cached: usize) {
        self.admitted_prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
    }
    pub(crate) fn set_occupancy(&self, running: usize, used: usize, cached: usize, total: usize) {
        self.running.store(running, Ordering::Relaxed);
        self.kv_blocks_used.store(used, Ordering::Relaxed);
        self.kv_blocks_cached.store(cached, Ordering::Relaxed);
        self.kv_blocks_total.store(total, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        let r64 = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            waiting: r(&self.waiting),
            running: r(&self.running),
            kv_blocks_used: r(&self.kv_blocks_used),
            kv_blocks_cached: r(&self.kv_blocks_cached),
            kv_blocks_total: r(&self.kv_blocks_total),
            admitted_prompt_tokens: r64(&self.admitted_prompt_tokens),
            cached_prompt_tokens: r64(&self.cached_prompt_tokens),
            steps: r64(&self.steps),
            step_tokens: r64(&self.step_tokens),
            generated_tokens: r64(&self.generated_tokens),
            cancelled: r64(&self.cancelled),
            preempted: r64(&self.preempted),
            busy_seconds: r64(&self.busy_micros) as f64 / 1e6,
        }
    }
}
