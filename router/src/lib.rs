//! The semantic router: turns a chat request into a routing decision (target model, fast or thinking
//! with a budget, system prompt, block or mask), in-process.
//!
//! * [`config`]: the routing YAML, validated at load.
//! * [`input`]: the text the classifiers read (last user turns) and how decisions are applied back.
//! * [`classifier`]: ModernBERT backbones and heads -> [`Signals`].
//! * [`pii`]: the PII token head's BIO logits -> entities with character spans.
//! * [`lexical`]: a TF-IDF + linear signal fused with the domain head.
//! * [`embedding`]: a pretrained sentence encoder (all-MiniLM-L6-v2) + linear signal fused after it.
//! * [`decision`]: the policy that turns signals into a [`Decision`].
//! * [`Router`]: all of it behind `route()`, with micro-batching of concurrent calls.
//!
//! ```no_run
//! use switchyard_router::Router;
//! use switchyard_models::text::ChatMessage;
//! let router = Router::load_default().unwrap();
//! let decision = router.route(&[ChatMessage::new("user", "What is 17 * 23?")]).unwrap();
//! println!("{} thinking={}", decision.category, decision.reasoning.is_thinking());
//! ```

mod batcher;
pub mod classifier;
pub mod config;
pub mod decision;
pub mod embedding;
pub mod input;
pub mod lexical;
pub mod pii;
pub mod signals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use switchyard_models::executor::{DeviceExecutor, ThreadExecutor};
use switchyard_models::text::ChatMessage;
use switchyard_models::ModelError;

use config::normalize_entity_type;

pub use batcher::{BatchStats, BatchingOptions};
pub use classifier::{HeadRole, RouterModel};
pub use config::{ConfigError, RouterConfig};
pub use decision::{decide, decide_input, Action, BlockReason, Decision, Reasoning};
pub use input::RouteInput;
pub use signals::{ClassifierOutput, EmbeddingUse, PiiEntity, Signals};

use batcher::Batcher;

/// The router this repository ships: `router/models/default`.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default");

/// The repository root, against which the shipped configuration's paths are written.
const REPOSITORY_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Characters a guard window reaches back into what the routed pass read, on each side of its cut
/// (about 16 tokens of English), so that an entity or phrase across the cut is read whole.
const GUARD_MARGIN_CHARS: usize = 64;

/// Default token budget per classified text (the default router was trained on 128-token inputs).
pub const DEFAULT_MAX_INPUT_TOKENS: usize = 128;

/// Why routing failed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The routing configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A classifier checkpoint could not be loaded or run.
    #[error("router model: {0}")]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("router tensor op: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The tokenizer failed.
    #[error("router tokenizer: {0}")]
    Tokenizer(String),
    /// The classifiers are unusable as configured, or a batch failed.
    #[error("router classifier: {0}")]
    Classifier(String),
    /// The device worker has stopped.
    #[error("the router's device worker has stopped")]
    Stopped,
    /// A thread could not be started.
    #[error("starting the router: {0}")]
    Io(#[from] std::io::Error),
    /// The user text the guards would have to read exceeds [`RouterOptions::max_guard_windows`].
    #[error(
        "the user messages are too long for the router's guards: about {windows} windows of text \
         to read, at most {limit} (about {tokens} tokens)"
    )]
    TooLong {
        /// About how many windows the request would need.
        windows: usize,
        /// The limit.
        limit: usize,
        /// About how many tokens the limit reads.
        tokens: usize,
    },
}

/// How to build a [`Router`].
#[derive(Clone)]
pub struct RouterOptions {
    /// The routing policy.
    pub config: RouterConfig,
    /// A classifier directory that replaces the configuration's `classifier` section.
    pub model_dir: Option<PathBuf>,
    /// Directories against which relative paths in the configuration are resolved, in order.
    pub search_dirs: Vec<PathBuf>,
    /// Where the classifiers run.
    pub device: Device,
    /// Their dtype (f32 on the CPU; bf16 / f16 on a GPU).
    pub dtype: DType,
    /// The device owner to run batches on; `None` starts a thread of the router's own.
    pub executor: Option<Arc<dyn DeviceExecutor>>,
    /// Micro-batching.
    pub batching: BatchingOptions,
    /// Token budget per classified text (longer inputs keep their head and tail).
    pub max_input_tokens: usize,
    /// Batches of up to this many texts run the embedding signal's encoder beside the backbone
    /// (see [`classifier::EMBED_ALONGSIDE_MAX_BATCH`], the default; 0: never).
    pub embed_alongside_max_batch: usize,
    /// Most guard windows one request may need (each about 100 tokens of user text that routing
    /// leaves unread, at the default budget); a request needing more is refused with
    /// [`RouterError::TooLong`] before any is classified. A server sets it from the longest
    /// context it serves; the default, [`DEFAULT_MAX_GUARD_WINDOWS`], reads about 100k tokens.
    pub max_guard_windows: usize,
}

/// See [`RouterOptions::max_guard_windows`].
pub const DEFAULT_MAX_GUARD_WINDOWS: usize = 1024;

impl RouterOptions {
    /// CPU, f32, own executor, default batching; relative paths resolved against the current directory
    /// and then the repository root.
    pub fn new(config: RouterConfig) -> RouterOptions {
        RouterOptions {
            config,
            model_dir: None,
            search_dirs: vec![PathBuf::from("."), PathBuf::from(REPOSITORY_ROOT)],
            device: Device::Cpu,
            dtype: DType::F32,
            executor: None,
            batching: BatchingOptions::default(),
            max_input_tokens: DEFAULT_MAX_INPUT_TOKENS,
            embed_alongside_max_batch: classifier::EMBED_ALONGSIDE_MAX_BATCH,
            max_guard_windows: DEFAULT_MAX_GUARD_WINDOWS,
        }
    }

    /// Reads the configuration from a YAML file; its directory is searched first for relative paths.
    pub fn from_config_file(path: &Path) -> Result<RouterOptions, RouterError> {
        let mut options = RouterOptions::new(RouterConfig::from_path(path)?);
        if let Some(dir) = path.parent() {
            options.search_dirs.insert(0, dir.to_path_buf());
        }
        Ok(options)
    }
}

/// The router: classifiers, policy and micro-batching queue. Cheap to share (`Arc`); `route` may be
/// called from many threads or tasks at once.
pub struct Router {
    config: RouterConfig,
    model: Arc<RouterModel>,
    batcher: Batcher,
    max_guard_windows: usize,
}

/// A route [`Router::begin_route`] began: the request read, its texts with the batcher.
pub struct PendingRoute {
    input: RouteInput,
    #[allow(clippy::type_complexity)]
    pending: Vec<Option<flume::Receiver<Result<Signals, RouterError>>>>,
    start: Instant,
}

impl Router {
    /// Loads the classifiers the options name and starts the batching queue.
    pub fn load(options: RouterOptions) -> Result<Router, RouterError> {
        let RouterOptions {
            config,
            model_dir,
            search_dirs,
            device,
            dtype,
            executor,
            batching,
            max_input_tokens,
            embed_alongside_max_batch,
            max_guard_windows,
        } = options;
        // The model, and the multi-head directory it came from (where an embedding head would be).
        let (model, dir) = match (&model_dir, &config.classifier) {
            (Some(dir), _) => (
                RouterModel::load_dir(dir, &device, dtype, max_input_tokens)?,
                Some(dir.clone()),
            ),
            (None, sources)
                if sources.model_dir.is_some()
                    || sources.category_model.is_some()
                    || sources.pii_model.is_some()
                    || sources.jailbreak_model.is_some() =>
            {
                let base = resolve_base(sources, &search_dirs)?;
                (
                    RouterModel::load_sources(sources, &base, &device, dtype, max_input_tokens)?,
                    sources.model_dir.as_ref().map(|d| base.join(d)),
                )
            }
            (None, _) => (
                RouterModel::load_dir(
                    Path::new(DEFAULT_MODEL_DIR),
                    &device,
                    dtype,
                    max_input_tokens,
                )?,
                Some(PathBuf::from(DEFAULT_MODEL_DIR)),
            ),
        };
        let model = match config.classifier.cpu_weights {
            config::CpuWeights::F32 => model,
            config::CpuWeights::Q8_0 => model.quantize_backbones_q8_0()?,
        };
        let model = match (&config.classifier.embedding, dir) {
            (None, _) => model,
            (Some(e), Some(dir)) => {
                let encoder_dir = match &e.encoder_dir {
                    Some(d) => search_dirs
                        .iter()
                        .map(|s| s.join(d))
                        .find(|p| p.is_dir())
                        .unwrap_or_else(|| PathBuf::from(d)),
                    None => embedding::default_encoder_dir(),
                };
                model
                    .with_embedding(embedding::EmbeddingSignal::load(&dir, &encoder_dir)?)?
                    .skip_embedding_when_confident(e.skip_when_confident)
                    .embed_alongside_up_to(embed_alongside_max_batch)
            }
            (Some(_), None) => return Err(RouterError::Classifier(
                "classifier.embedding needs a multi-head router directory (classifier.model_dir)"
                    .into(),
            )),
        };
        if model.lexical_lacks_embedding() {
            tracing::warn!(
                "a lexical model of the router was trained with sentence-embedding features, but the \
                 embedding signal is disabled (classifier.embedding): it scores on its text features \
                 alone, which is less accurate (see the model card)"
            );
        }
        let model = Arc::new(model);
        let executor = match executor {
            Some(e) => e,
            None => Arc::new(ThreadExecutor::start("switchyard-router")?),
        };
        let batcher = Batcher::start(model.clone(), executor, batching)?;
        Ok(Router {
            config,
            model,
            batcher,
            max_guard_windows,
        })
    }

    /// The shipped router: `router/models/default` with `router/config/default.yaml`, on the CPU.
    pub fn load_default() -> Result<Router, RouterError> {
        Router::load(RouterOptions::new(RouterConfig::shipped_default()?))
    }

    /// The routing policy.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The classifiers.
    pub fn model(&self) -> &RouterModel {
        &self.model
    }

    /// How many texts were classified in how many backbone batches.
    pub fn stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// Routes a chat request (blocking; batched with concurrent callers).
    pub fn route(&self, messages: &[ChatMessage]) -> Result<Decision, RouterError> {
        let start = Instant::now();
        let (input, pending) = self.start_route(messages)?;
        let mut signals = Vec::with_capacity(pending.len());
        for rx in pending {
            signals.push(match rx {
                Some(rx) => rx.recv().map_err(|_| RouterError::Stopped)??,
                None => Signals::default(),
            });
        }
        Ok(self.finish_route(input, signals, start))
    }

    /// Routes a chat request without blocking the async runtime while it waits for the backbone
    /// (tokenizing a long request still runs on the caller's thread: see [`Self::begin_route`]).
    pub async fn route_async(&self, messages: &[ChatMessage]) -> Result<Decision, RouterError> {
        let begun = self.begin_route(messages)?;
        self.complete_route(begun).await
    }

    /// The first half of [`Self::route_async`]: reads and tokenizes the request and submits its
    /// texts to the batcher (CPU work of up to milliseconds on a long request, for a blocking
    /// thread); [`Self::complete_route`] waits for their signals without holding a thread.
    pub fn begin_route(&self, messages: &[ChatMessage]) -> Result<PendingRoute, RouterError> {
        let start = Instant::now();
        let (input, pending) = self.start_route(messages)?;
        Ok(PendingRoute {
            input,
            pending,
            start,
        })
    }

    /// The second half of [`Self::route_async`]: the decision once the begun route's signals are
    /// in.
    pub async fn complete_route(&self, begun: PendingRoute) -> Result<Decision, RouterError> {
        let PendingRoute {
            input,
            pending,
            start,
        } = begun;
        let mut signals = Vec::with_capacity(pending.len());
        for rx in pending {
            signals.push(match rx {
                Some(rx) => rx.recv_async().await.map_err(|_| RouterError::Stopped)??,
                None => Signals::default(),
            });
        }
        Ok(self.finish_route(input, signals, start))
    }

    /// Routes a plain text as one user message.
    pub fn route_text(&self, text: &str) -> Result<Decision, RouterError> {
        self.route(&[ChatMessage::new("user", text)])
    }

    /// Submits the routed text and, where the jailbreak or PII policy may act, guard windows over
    /// the user text the routed text leaves out (older turns, the middle of a long one): a request
    /// cannot slip an attack or an e-mail address past the guards by padding. Returns the input and
    /// one pending reply per text: the routed text's first (`None` when it is blank, so nothing
    /// was routed), then one per window.
    #[allow(clippy::type_complexity)]
    fn start_route(
        &self,
        messages: &[ChatMessage],
    ) -> Result<
        (
            RouteInput,
            Vec<Option<flume::Receiver<Result<Signals, RouterError>>>>,
        ),
        RouterError,
    > {
        let mut input = RouteInput::from_messages(messages);
        // Every text is encoded before any is submitted, each counted as arriving meanwhile, so
        // that the batcher takes the windows in one batch (one guard pass for all of them).
        let mut routed = None;
        let mut unread = None;
        if !input.text.trim().is_empty() {
            let arrival = self.batcher.arrival();
            let encoded = self.model.encode(input.routed_text())?;
            unread = self.model.unread(&encoded);
            routed = Some((encoded, arrival));
        }
        let mut windows = Vec::new();
        if self.model.has_guards() && self.config.guards_enabled() {
            // First where the windows go (refused at once past the limit), then their encodings.
            let mut planned: Vec<(usize, usize, String)> = Vec::new();
            for (i, message) in messages.iter().enumerate() {
                if message.role != "user" || message.content.trim().is_empty() {
                    continue;
                }
                let chars = message.content.chars().count();
                // What of this message the routed pass did not read, in its own characters.
                let gap = match (input.segments.iter().find(|s| s.message == i), &unread) {
                    (None, _) => 0..chars,
                    // Read whole.
                    (Some(_), None) if routed.is_some() => continue,
                    // Nothing was routed (the routed turns are blank): read it here.
                    (Some(_), None) => 0..chars,
                    (Some(seg), Some(u)) => {
                        let (a, b) = (u.start.max(seg.start), u.end.min(seg.start + seg.len));
                        if a >= b {
                            continue;
                        }
                        // Widened so that what straddles the cut is read whole.
                        (a - seg.start).saturating_sub(GUARD_MARGIN_CHARS)
                            ..(b - seg.start + GUARD_MARGIN_CHARS).min(chars)
                    }
                };
                let part = CharIndex::new(&message.content).slice(gap.clone());
                let part_chars = CharIndex::new(part);
                for range in self.model.guard_windows(part)? {
                    if planned.len() == self.max_guard_windows {
                        return Err(self.too_long(messages));
                    }
                    let text = part_chars.slice(range.clone()).to_string();
                    planned.push((i, gap.start + range.start, text));
                }
            }
            for (message, from, text) in planned {
                let arrival = self.batcher.arrival();
                windows.push((self.model.encode_guard(&text)?, arrival));
                input.push_window(message, from, &text);
            }
        }
        let mut pending = Vec::with_capacity(windows.len() + 1);
        pending.push(match routed {
            Some((encoded, arrival)) => Some(self.batcher.submit(encoded, arrival)?),
            None => None,
        });
        for (encoded, arrival) in windows {
            pending.push(Some(self.batcher.submit(encoded, arrival)?));
        }
        Ok((input, pending))
    }

    /// The error for a request over [`RouterOptions::max_guard_windows`], with about how many
    /// windows all its user text would take.
    fn too_long(&self, messages: &[ChatMessage]) -> RouterError {
        let per_window = self
            .model
            .max_tokens()
            .saturating_sub(10 + classifier::GUARD_WINDOW_OVERLAP)
            .max(1);
        let chars: usize = messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.chars().count())
            .sum();
        RouterError::TooLong {
            // About 4 characters a token (English).
            windows: (chars / 4)
                .div_ceil(per_window)
                .max(self.max_guard_windows + 1),
            limit: self.max_guard_windows,
            tokens: self.max_guard_windows * per_window,
        }
    }

    /// Decides from the routed text's signals with the guard windows' jailbreak and PII signals
    /// merged in: the most alarming jailbreak reading, every PII entity (placed in the input's
    /// text, each span once).
    fn finish_route(&self, input: RouteInput, signals: Vec<Signals>, start: Instant) -> Decision {
        let empty = input.text.trim().is_empty();
        let mut signals = signals.into_iter();
        let mut merged = signals.next().unwrap_or_default();
        let windows = input.windows().len();
        for (window, w) in input.windows().iter().zip(signals) {
            if let Some(j) = w.jailbreak {
                let fires = |o: &ClassifierOutput| !self.config.jailbreak.is_benign(&o.label);
                let worse = match &merged.jailbreak {
                    None => true,
                    Some(now) => fires(&j) && (!fires(now) || j.score > now.score),
                };
                if worse {
                    merged.jailbreak = Some(j);
                }
            }
            for mut e in w.pii {
                e.start += window.start;
                e.end += window.start;
                merged.pii.push(e);
            }
        }
        pii::complete_spans(&mut merged.pii, &input.text);
        if windows > 0 {
            // An entity read by the routed pass and by a window (or by two overlapping windows)
            // once, where it sits in its message.
            let mut seen = std::collections::HashSet::new();
            merged.pii.retain(|e| {
                seen.insert((
                    input.message_spans(e),
                    normalize_entity_type(&e.entity_type),
                ))
            });
        }
        let mut decision = decide_input(&self.config, input, &merged);
        if empty {
            decision
                .reasons
                .insert(0, "no user text to classify".to_string());
        }
        if windows > 0 {
            decision.reasons.push(format!(
                "guards: jailbreak and PII also read {windows} window(s) of user text that routing leaves out"
            ));
        }
        decision.route_time = start.elapsed();
        decision
    }
}

/// A text's character boundaries, found once, so that slicing it by characters costs no scan.
struct CharIndex<'a> {
    text: &'a str,
    /// Byte offset of each character, then the text's length.
    bytes: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bytes.push(text.len());
        CharIndex { text, bytes }
    }

    /// The characters in `range` (clamped to the text).
    fn slice(&self, range: std::ops::Range<usize>) -> &'a str {
        let last = self.bytes.len() - 1;
        let (a, b) = (range.start.min(last), range.end.min(last));
        &self.text[self.bytes[a]..self.bytes[b.max(a)]]
    }
}

/// The first search directory under which the configuration's classifier paths exist.
fn resolve_base(
    sources: &config::ClassifierSources,
    search_dirs: &[PathBuf],
) -> Result<PathBuf, RouterError> {
    let paths: Vec<&str> = sources
        .model_dir
        .iter()
        .map(String::as_str)
        .chain(
            [
                &sources.category_model,
                &sources.pii_model,
                &sources.jailbreak_model,
            ]
            .into_iter()
            .flatten()
            .map(|s| s.model_id.as_str()),
        )
        .collect();
    search_dirs
        .iter()
        .find(|d| paths.iter().all(|p| d.join(p).is_dir()))
        .cloned()
        .ok_or_else(|| {
            RouterError::Classifier(format!(
                "classifier directories {paths:?} not found under any of {search_dirs:?} (relative paths are resolved against the config file's directory, the current directory, then the repository)"
            ))
        })
}
