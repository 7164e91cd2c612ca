//! Micro-batching: concurrent `route()` calls share one backbone forward.
//!
//! Callers tokenize on their own threads and queue the ids here. A batcher thread takes what is queued,
//! waits a bounded time (`max_wait`) for callers that are still tokenizing, runs the batch on the
//! device executor and waits for it; requests arriving meanwhile form the next batch. A lone request is
//! never held back: the batcher waits only while another caller is known to be on its way.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_models::executor::DeviceExecutor;

use crate::classifier::{EncodedText, RouterModel};
use crate::signals::Signals;
use crate::RouterError;

/// How requests are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingOptions {
    /// Most texts in one forward (1 turns micro-batching off).
    pub max_batch_size: usize,
    /// Longest a batch waits for callers still tokenizing.
    pub max_wait: Duration,
}

impl Default for BatchingOptions {
    fn default() -> Self {
        BatchingOptions {
            max_batch_size: 32,
            max_wait: Duration::from_millis(2),
        }
    }
}

/// Counters of the batching queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Texts classified: one per routed request, plus its guard windows.
    pub texts: u64,
    /// Backbone batches run.
    pub batches: u64,
}

#[derive(Default)]
struct Counters {
    texts: AtomicU64,
    batches: AtomicU64,
}

type Reply = flume::Sender<Result<Signals, RouterError>>;

struct Job {
    input: EncodedText,
    reply: Reply,
    /// Its caller's arrival mark, released by the batcher when it takes the job (released by the
    /// caller before sending, a job could reach a batch in formation with nobody counted; released
    /// after, the batcher could see the job's own caller as still arriving and wait for it).
    arrival: Option<Arrival>,
    /// When its caller queued it.
    queued_at: Instant,
}

impl Job {
    /// The job as the batcher takes it: its caller no longer counts as arriving.
    fn taken(mut self) -> Job {
        self.arrival = None;
        self
    }
}

/// The queue in front of the device.
pub(crate) struct Batcher {
    tx: flume::Sender<Job>,
    /// Callers between entering `route()` and queueing their job.
    arriving: Arc<AtomicUsize>,
    counters: Arc<Counters>,
}

/// Marks a caller as arriving until it queues (or gives up).
pub(crate) struct Arrival {
    arriving: Arc<AtomicUsize>,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arriving.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Batcher {
    pub(crate) fn start(
        model: Arc<RouterModel>,
        executor: Arc<dyn DeviceExecutor>,
        options: BatchingOptions,
    ) -> std::io::Result<Batcher> {
        let (tx, rx) = flume::unbounded::<Job>();
        let arriving = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(Counters::default());
        let (waiting_for, counted) = (arriving.clone(), counters.clone());
        std::thread::Builder::new()
            .name("switchyard-router-batcher".into())
            .spawn(move || run(rx, model, executor, options, waiting_for, counted))?;
        Ok(Batcher {
            tx,
            arriving,
            counters,
        })
    }

    /// Texts and batches so far.
    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            texts: self.counters.texts.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
        }
    }

    /// Call before tokenizing: lets the batcher know a request is on its way.
    pub(crate) fn arrival(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        Arrival {
            arriving: self.arriving.clone(),
        }
    }

    /// Queues a tokenized request; the signals come back on the returned channel.
    pub(crate) fn submit(
        &self,
        input: EncodedText,
        arrival: Arrival,
    ) -> Result<flume::Receiver<Result<Signals, RouterError>>, RouterError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send(Job {
                input,
                reply,
                arrival: Some(arrival),
                queued_at: Instant::now(),
            })
            .map_err(|_| RouterError::Stopped)?;
        Ok(rx)
    }
}

fn run(
    rx: flume::Receiver<Job>,
    model: Arc<RouterModel>,
    executor: Arc<dyn DeviceExecutor>,
    options: BatchingOptions,
    arriving: Arc<AtomicUsize>,
    counters: Arc<Counters>,
) {
    let max = options.max_batch_size.max(1);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first.taken()];
        let deadline = Instant::now() + options.max_wait;
        while batch.len() < max {
            if let Ok(job) = rx.try_recv() {
                batch.push(job.taken());
                continue;
            }
            if arriving.load(Ordering::SeqCst) == 0 {
                break;
            }
            match rx.recv_deadline(deadline) {
                Ok(job) => batch.push(job.taken()),
                Err(_) => break,
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .texts
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (done_tx, done_rx) = flume::bounded::<()>(1);
        let job_model = model.clone();
        let dispatched = Instant::now();
        let job = Box::new(move || {
            let started = Instant::now();
            let inputs: Vec<&EncodedText> = batch.iter().map(|j| &j.input).collect();
            let result = caught(|| job_model.classify(&inputs));
            tracing::debug!(
                texts = batch.len(),
                queued_us = batch
                    .iter()
                    .map(|j| (dispatched - j.queued_at).as_micros())
                    .max(),
                dispatch_us = (started - dispatched).as_micros(),
                classify_us = started.elapsed().as_micros(),
                "router batch"
            );
            match result {
                Ok(signals) => {
                    for (j, s) in batch.iter().zip(signals) {
                        let _ = j.reply.send(Ok(s));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for j in &batch {
                        let _ = j.reply.send(Err(RouterError::Classifier(message.clone())));
                    }
                }
            }
            let _ = done_tx.send(());
        });
        if executor.execute(job).is_err() {
            // The device owner is gone: the job (and its reply senders) is dropped, so every caller
            // sees `Stopped`; later requests find the channel closed too.
            tracing::error!("router: the device executor has stopped");
            return;
        }
        // Wait for the batch, so requests arriving meanwhile form the next one.
        let _ = done_rx.recv();
    }
}

/// `f`'s result, or an error for a panic in it: a batch that panics fails its own callers, and
/// the thread it ran on (the router's, or the engine's device worker) goes on.
fn caught<T>(f: impl FnOnce() -> Result<T, RouterError>) -> Result<T, RouterError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = switchyard_models::executor::panic_message(&*panic);
        tracing::error!(%message, "router batch panicked");
        Err(RouterError::Classifier(format!(
            "the batch failed: {message}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_batch_is_an_error_for_its_callers() {
        let e = caught::<()>(|| panic!("index out of bounds")).unwrap_err();
        assert!(e.to_string().contains("index out of bounds"), "{e}");
        assert_eq!(caught(|| Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_caller_counts_as_arriving_until_the_batcher_takes_its_job() {
        let arriving = Arc::new(AtomicUsize::new(1));
        let (reply, _rx) = flume::bounded(1);
        let job = Job {
            input: EncodedText {
                backbones: Vec::new(),
                lexical: Vec::new(),
                embedding: None,
                fast_lexical: None,
                guard_only: false,
            },
            reply,
            arrival: Some(Arrival {
                arriving: arriving.clone(),
            }),
            queued_at: Instant::now(),
        };
        // Queued but not taken: still counted, so a batch in formation waits for it.
        assert_eq!(arriving.load(Ordering::SeqCst), 1);
        // Taken: no longer counted, so the batcher does not wait for the caller it already has.
        let job = job.taken();
        assert_eq!(arriving.load(Ordering::SeqCst), 0);
        drop(job);
        assert_eq!(arriving.load(Ordering::SeqCst), 0);
    }
}
