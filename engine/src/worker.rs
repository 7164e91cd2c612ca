//! The device worker: the one thread that owns the device's models and their KV caches, and runs
//! the continuous-batching loop for all of them.
//!
//! Each iteration: take new requests (and run queued device jobs such as router batches), then,
//! for every model, drop cancelled sequences, admit waiting ones while the sequence limit and free
//! cache blocks allow (each starting after the cached blocks of its prompt's prefix, when prefix
//! caching is on), and give every running sequence its cache for the next step (preempting the
//! newest sequence, to be recomputed later, when blocks run out). Then *one* model takes a step:
//! one batch under its token budget ([`crate::schedule`]: decode tokens first, then prefill chunks), run, and each
//! sequence's logits fed to its output pipeline. The model with work that has had the least device
//! time goes next ([`crate::turns`]), so models share the device evenly, and a device job waits for
//! at most one step of one model.

use crate::config::EngineConfig;
use crate::schedule::{self, Pending, Slice};
use crate::sequence::Sequence;
use crate::stats::EngineStats;
use crate::turns::Turns;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use switchyard_models::decoder::{Decoder, KvCache, LogitRows, SequenceInput};
use switchyard_models::text::TextTokenizer;

/// Messages to the worker.
pub(crate) enum Command {
    /// A new sequence for the model at this index of the worker's models.
    Submit(usize, Box<Sequence>),
    /// Device work from another component (router classification batches), run between steps.
    Run(switchyard_models::executor::DeviceJob),
    Shutdown,
}

/// One model the worker serves, with its cache and its sequences.
pub(crate) struct ModelSlot {
    pub(crate) decoder: Decoder,
    pub(crate) tokenizer: Arc<TextTokenizer>,
    pub(crate) cache: KvCache,
    pub(crate) config: EngineConfig,
    pub(crate) stats: Arc<EngineStats>,
    pub(crate) waiting: VecDeque<Sequence>,
    pub(crate) running: Vec<Sequence>,
    /// The model's [`schedule::attention_span`].
    pub(crate) attention_span: f64,
}

/// The worker thread's state: the models it owns, its command queue, and whose step is next.
pub(crate) struct Worker {
    pub(crate) models: Vec<ModelSlot>,
    pub(crate) rx: flume::Receiver<Command>,
    /// Which model steps next.
    pub(crate) turns: Turns,
}

/// Runs `f`, turning a panic into an error with its message: the worker contains a panic to the
/// requests it concerns and keeps serving everyone else.
fn contained<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| switchyard_models::executor::panic_message(&*p))
}

impl Worker {
    pub(crate) fn run(mut self) {
        loop {
            if !self.intake() {
                break;
            }
            // A panic in one step fails the sequences it concerns (see `step`); one anywhere
            // else in the bookkeeping leaves its state unknown, so every sequence of every model
            // fails and the caches start over, and the worker keeps serving new requests.
            let iteration = contained(|| {
                for model in &mut self.models {
                    model.drop_cancelled();
                    model.admit();
                    model.ensure_cache();
                }
                let models = &self.models;
                if let Some(i) = self.turns.next(|i| !models[i].running.is_empty()) {
                    let took = self.models[i].step();
                    self.turns.charge(i, took);
                }
            });
            if let Err(message) = iteration {
                tracing::error!("engine worker panicked, failing every sequence: {message}");
                for model in &mut self.models {
                    model.fail_all(&format!("internal error in the engine: {message}"));
                }
            }
            for model in &self.models {
                model.publish_stats();
            }
        }
        for model in &mut self.models {
            for seq in model.running.iter_mut().chain(model.waiting.iter_mut()) {
                seq.fail("the engine shut down".into());
            }
        }
        tracing::debug!("engine worker stopped");
    }

    fn idle(&self) -> bool {
        self.models.iter().all(ModelSlot::idle)
    }

    /// Receives commands; blocks when there is nothing to do. Returns false on shutdown.
    fn intake(&mut self) -> bool {
        if self.idle() {
            match self.rx.recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                Err(flume::TryRecvError::Empty) => return true,
                Err(flume::TryRecvError::Disconnected) => {
                    // Every handle is gone: finish what is in flight, then stop.
                    return !self.idle();
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(model, seq) => {
                self.models[model].waiting.push_back(*seq);
                true
            }
            Command::Run(job) => {
                if let Err(message) = contained(job) {
                    tracing::error!("a device job panicked: {message}");
                }
                true
            }
            Command::Shutdown => false,
        }
    }
}

impl ModelSlot {
    fn idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Fails every sequence, running or waiting, and empties the cache of their blocks (after a
    /// panic left the bookkeeping in a state nothing vouches for).
    fn fail_all(&mut self, message: &str) {
        for mut seq in self.running.drain(..) {
            if seq.finished.is_none() {
                seq.fail(message.to_string());
            } else {
                seq.deliver_finish();
            }
        }
        for mut seq in self.waiting.drain(..) {
            seq.fail(message.to_string());
            self.stats.leave_queue();
        }
        self.cache.clear();
    }

    fn drop_cancelled(&mut self) {
        let cache = &mut self.cache;
        let stats = &self.stats;
        self.running.retain_mut(|s| {
            if s.cancelled() {
                cache.release(&mut s.blocks);
                stats.record_cancelled();
                false
            } else {
                true
            }
        });
        self.waiting.retain(|s| {
            let keep = !s.cancelled();
            if !keep {
                stats.record_cancelled();
                stats.leave_queue();
            }
            keep
        });
    }

    /// Moves waiting sequences into the running batch, in order, while the sequence limit and the
    /// cache allow. A sequence starts with the cached blocks of its prompt's prefix, if any. One
    /// whose prefix a running sequence is computing right now stays waiting for those blocks rather
    /// than computing them a second time; the sequences behind it go ahead.
    fn admit(&mut self) {
        let mut i = 0;
        while self.running.len() < self.config.max_num_seqs && i < self.waiting.len() {
            let seq = &mut self.waiting[i];
            let shared = if seq.use_prefix_cache {
                let block = self.cache.block_size();
                let in_flight = prefix_in_flight(&self.running, &seq.tokens, block);
                // Deferred without taking its cached blocks, so waiting leaves their order alone.
                if in_flight > 0 && self.cache.cached_prefix(&seq.tokens) < in_flight {
                    i += 1;
                    continue;
                }
                self.cache.share_prefix(&mut seq.blocks, &seq.tokens)
            } else {
                0
            };
            // Reserve the whole prompt (+1 for the first new token) so a prefill never stalls halfway.
            let need = seq.tokens.len() + 1;
            if !self.cache.reserve(&mut seq.blocks, need) {
                self.cache.release(&mut seq.blocks);
                if self.running.is_empty() {
                    // Even an empty cache cannot hold it: the limits are inconsistent.
                    let mut seq = self.waiting.remove(i).expect("index in range");
                    self.stats.leave_queue();
                    seq.fail(format!(
                        "the KV cache ({} positions) cannot hold this {}-token sequence",
                        self.cache.num_blocks() * self.cache.block_size(),
                        need
                    ));
                    continue;
                }
                break;
            }
            seq.computed = shared;
            seq.cached_tokens.get_or_insert(shared);
            let seq = self.waiting.remove(i).expect("index in range");
            self.stats.leave_queue();
            self.stats.record_admitted(seq.tokens.len(), shared);
            self.running.push(seq);
        }
    }

    /// Makes sure every running sequence has blocks for its next step, preempting if needed.
    fn ensure_cache(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let need = self.running[i].tokens.len() + 1;
            let seq = &mut self.running[i];
            if self.cache.reserve(&mut seq.blocks, need) {
                i += 1;
                continue;
            }
            // Preempt the most recently admitted other sequence (or this one if it is the newest).
            let victim = self.running.len() - 1;
            let mut v = self.running.remove(victim);
            self.cache.release(&mut v.blocks);
            v.computed = 0;
            v.passed_over = 0;
            self.stats.enter_queue();
            self.stats.record_preempted();
            tracing::debug!("preempted a sequence of {} tokens", v.tokens.len());
            self.waiting.push_front(v);
            if victim == i {
                break;
            }
        }
    }

    /// Runs one batched step; returns the time it took.
    fn step(&mut self) -> Duration {
        if self.running.is_empty() {
            return Duration::ZERO;
        }
        let pending: Vec<Pending> = self
            .running
            .iter()
            .map(|s| Pending {
                computed: s.computed,
                len: s.tokens.len(),
                passed_over: s.passed_over,
            })
            .collect();
        let plan = schedule::plan(&pending, self.config.max_batch_tokens, self.attention_span);
        let mut planned = plan.iter().map(|p| p.index).peekable();
        for (i, seq) in self.running.iter_mut().enumerate() {
            if planned.next_if_eq(&i).is_some() {
                seq.passed_over = 0;
            } else if seq.tokens.len() - seq.computed > 1 {
                seq.passed_over += 1;
            }
        }
        // Which rows of each slice get logits back, decided once for the step and its results.
        let wanted: Vec<LogitRows> = plan
            .iter()
            .map(|&Slice { index, start, len }| self.running[index].logit_rows(start, len))
            .collect();
        let inputs: Vec<SequenceInput> = plan
            .iter()
            .zip(&wanted)
            .map(|(&Slice { index, start, len }, &logits)| {
                let s = &self.running[index];
                SequenceInput {
                    tokens: &s.tokens[start..start + len],
                    start_position: start,
                    blocks: &s.blocks,
                    logits,
                }
            })
            .collect();
        let batch_tokens: usize = plan.iter().map(|p| p.len).sum();
        let started = std::time::Instant::now();
        let decoder = &self.decoder;
        let cache = &mut self.cache;
        let result = contained(|| decoder.forward(&inputs, cache)).unwrap_or_else(|panic| {
            Err(switchyard_models::ModelError::Forward(format!(
                "panicked: {panic}"
            )))
        });
        drop(inputs);
        let took = started.elapsed();
        self.stats
            .record_step(batch_tokens, plan.len(), took.as_secs_f64());
        let mut logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward failed: {e}");
                for p in &plan {
                    self.running[p.index].fail(format!("forward pass failed: {e}"));
                }
                self.retire();
                return took;
            }
        };
        let vocab = self.decoder.config().vocab_size;
        let mut row = 0;
        for (&Slice { index, start, len }, &wanted) in plan.iter().zip(&wanted) {
            let seq = &mut self.running[index];
            let rows = match wanted {
                LogitRows::None => 0,
                LogitRows::Last => 1,
                LogitRows::All => len,
            };
            let logits = &mut logits[row * vocab..(row + rows) * vocab];
            row += rows;
            seq.computed = start + len;
            self.cache
                .commit(&mut seq.blocks, &seq.tokens, seq.computed);
            if wanted == LogitRows::All {
                seq.score_prompt(start, logits, vocab);
            }
            if seq.computed == seq.tokens.len() {
                let before = seq.generated();
                let last = logits.len() - vocab;
                let tokenizer = &self.tokenizer;
                if let Err(message) = contained(|| seq.advance(tokenizer, &mut logits[last..])) {
                    tracing::error!("sampling panicked: {message}");
                    seq.fail(format!("internal error while sampling: {message}"));
                }
                self.stats
                    .record_generated(seq.generated().saturating_sub(before));
            }
        }
        self.retire();
        took
    }

    /// Removes finished sequences and frees their blocks.
    fn retire(&mut self) {
        let cache = &mut self.cache;
        self.running.retain_mut(|s| {
            if s.finished.is_some() {
                s.deliver_finish();
                cache.release(&mut s.blocks);
                false
            } else {
                true
            }
        });
    }

    fn publish_stats(&self) {
        self.stats.set_occupancy(
            self.running.len(),
            self.cache.num_blocks() - self.cache.free_blocks(),
            self.cache.cached_blocks(),
            self.cache.num_blocks(),
        );
    }
}

/// Positions at the start of `tokens` (whole blocks, short of the last token) that a running
/// sequence still prefilling has in its prompt too: they will be cached once it has computed them.
fn prefix_in_flight(running: &[Sequence], tokens: &[u32], block_size: usize) -> usize {
    let most = tokens.len().saturating_sub(1) / block_size * block_size;
    running
        .iter()
        .filter(|s| s.computed < s.prompt_len)
        .map(|s| {
            let common = tokens
                .iter()
                .zip(&s.tokens[..s.prompt_len])
                .take_while(|(a, b)| a == b)
                .count();
            common / block_size * block_size
        })
        .max()
        .unwrap_or(0)
        .min(most)
}
