//! `switchyard serve`: the OpenAI-compatible HTTP server with in-process routing.
//!
//! One process: the generation engine(s) own the device thread; on a GPU the router's batches run on
//! the same thread between decode steps (through the engine's executor), so routing costs no network
//! hop and never races the generator for the device. On the CPU they run on a thread of the router's
//! own by default (`--router-executor`): waiting for a CPU decode step (tens of ms under load) costs
//! a routed request far more than sharing the cores does (measured by `device_bench --busy-router`).
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/route`,
//! `POST /tokenize`, `POST /detokenize`, `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`,
//! `GET /ready`, `GET /metrics`.

mod api;
mod completions;
mod error;
mod generation;
mod handlers;
mod listen;
mod logprobs;
mod metrics;
mod proxy;
mod tokenize;
mod tool_calls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::routing::{get, post};
use clap::Args;
use switchyard_engine::memory::GPU_HEADROOM_BYTES;
use switchyard_engine::{Engine, EngineConfig, KvBudget, MemoryPlan, ModelFootprint};
use switchyard_models::device::DeviceSpec;
use switchyard_models::executor::LateExecutor;
use switchyard_router::{Router, RouterConfig, RouterOptions};
use tokio::sync::{oneshot, watch, Semaphore};

pub use error::ApiError;
use metrics::Metrics;

/// Options of `serve` (every flag has an environment-variable twin).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to bind (loopback unless told otherwise).
    #[arg(long, env = "SWITCHYARD_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port).
    #[arg(long, env = "SWITCHYARD_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Generation model(s): GGUF files or HF directories, optionally `name=path`. Default: the
    /// default model (fetched if missing), served as `SmolLM2-135M-Instruct`.
    #[arg(long = "model", env = "SWITCHYARD_MODEL", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Routing configuration (YAML). Default: router/config/default.yaml as it was when the binary
    /// was built (a copy is compiled in; pass the file to use an edited one).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve without a router: `model: auto` is then an unknown model (404), or, on a proxy,
    /// forwarded upstream as it came.
    #[arg(long, env = "SWITCHYARD_NO_ROUTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_router: bool,
    /// The model name that asks for routing.
    #[arg(long, env = "SWITCHYARD_AUTO_MODEL", default_value = "auto")]
    pub auto_model: String,
    /// Device: `cpu`, `cuda:N` (with the `cuda` feature) or `auto`.
    #[arg(long, env = "SWITCHYARD_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Require `Authorization: Bearer <key>` on /v1 endpoints, /tokenize and /detokenize
    /// (repeatable or comma-separated: any of the keys is accepted).
    #[arg(
        long = "api-key",
        env = "SWITCHYARD_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Largest request body, bytes.
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Longest prompt, tokens (default: the model's context minus one).
    #[arg(long, env = "SWITCHYARD_MAX_PROMPT_TOKENS")]
    pub max_prompt_tokens: Option<usize>,
    /// Ceiling on `max_tokens` / `max_completion_tokens` (a request asking for more is a 400), and
    /// their default.
    #[arg(long, env = "SWITCHYARD_MAX_TOKENS", default_value_t = 1024)]
    pub max_tokens: usize,
    /// Requests waiting for admission before new ones get 429.
    #[arg(long, env = "SWITCHYARD_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,
    /// Sequences decoded together.
    #[arg(long, env = "SWITCHYARD_MAX_NUM_SEQS", default_value_t = 16)]
    pub max_num_seqs: usize,
    /// Most tokens in one forward step (prefill chunks + decode tokens); at least --max-num-seqs.
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// KV-cache budget of all models together, MiB (replaces --gpu-memory-fraction; shared in
    /// proportion to what each model wants).
    #[arg(long, env = "SWITCHYARD_KV_CACHE_MIB")]
    pub kv_cache_mib: Option<usize>,
    /// Fraction of the device's memory the process may use: weights, activations and the KV caches,
    /// which get what is left (capped at every sequence at the full context). On the CPU, of the
    /// host's memory.
    #[arg(
        long,
        alias = "memory-fraction",
        env = "SWITCHYARD_GPU_MEMORY_FRACTION",
        default_value_t = 0.9
    )]
    pub gpu_memory_fraction: f64,
    /// Streams open at once before new ones get 429.
    #[arg(long, env = "SWITCHYARD_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,
    /// Most choices (`n`) one chat or text completion request may ask for (per prompt); each is a
    /// sequence of its own.
    #[arg(long, env = "SWITCHYARD_MAX_CHOICES", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_choices: u16,
    /// Router-only proxy mode: route chat and text completions here and forward them, with
    /// `/tokenize`, `/detokenize` and the model list, to this OpenAI-compatible inference server
    /// (the vLLM Semantic Router's deployment; the baseline of `bench overhead`). No model is loaded.
    #[arg(long, env = "SWITCHYARD_UPSTREAM")]
    pub upstream: Option<String>,
    /// Proxy mode: the key sent upstream as `Authorization: Bearer KEY` in place of the client's
    /// header, which then only has to pass this server's own `--api-key`. Without it the client's
    /// `Authorization` header is passed on as sent.
    #[arg(
        long,
        env = "SWITCHYARD_UPSTREAM_API_KEY",
        requires = "upstream",
        hide_env_values = true
    )]
    pub upstream_api_key: Option<String>,
    /// Proxy mode: seconds the upstream gets to start its answer (its response head; a slower
    /// upstream gets the client a 504), and then between any two chunks of its body (a stream that
    /// falls silent that long ends with an error event).
    #[arg(long, env = "SWITCHYARD_UPSTREAM_TIMEOUT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout: u64,
    /// Where the router's batches run: `engine` (on the engine's worker, between decode steps: one
    /// owner of the device), `thread` (a thread of its own, beside the engine), or `auto` (`engine` on
    /// a GPU, `thread` on the CPU, where waiting for a decode step costs far more than sharing the cores).
    #[arg(long, env = "SWITCHYARD_ROUTER_EXECUTOR", value_enum, default_value_t = RouterExecutor::Auto)]
    pub router_executor: RouterExecutor,
    /// Seconds in-flight requests get to finish after SIGTERM / Ctrl-C.
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Seconds a streaming client may leave its answer unread (the server cannot send, its buffers
    /// full) before its generation is cancelled and its stream's place freed.
    #[arg(long, env = "SWITCHYARD_STREAM_STALL_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_stall_timeout: u64,
    /// Seconds a client gets to send a request's head, and again its body; a slower client's
    /// connection is closed (head) or answered 408 (body).
    #[arg(long, env = "SWITCHYARD_READ_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout: u64,
    /// Element type of the KV caches: `f16` (half the memory, and faster decoding at long
    /// contexts; the CPU only), `f32` (exact), or `auto` (`f16` on the CPU, `f32` on a GPU).
    #[arg(long, env = "SWITCHYARD_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDtype::Auto)]
    pub kv_cache_dtype: KvCacheDtype,
    /// Compute every prompt in full: no reuse of the cached keys and values of a prefix that an
    /// earlier or concurrent request already computed (a shared system prompt, the earlier turns
    /// of a conversation, the other choices of an `n` request).
    #[arg(long, env = "SWITCHYARD_NO_PREFIX_CACHING", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_prefix_caching: bool,
}

/// The KV caches' element type as chosen on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    /// f16 on the CPU, f32 on a GPU.
    #[default]
    Auto,
    /// 32-bit floats.
    F32,
    /// 16-bit floats (host caches only).
    F16,
}

impl KvCacheDtype {
    /// The element type on `device`.
    pub fn resolve(self, device: &candle_core::Device) -> switchyard_models::decoder::KvDtype {
        use switchyard_models::decoder::KvDtype;
        match self {
            Self::Auto if device.is_cpu() => KvDtype::F16,
            Self::Auto | Self::F32 => KvDtype::F32,
            Self::F16 => KvDtype::F16,
        }
    }
}

/// Where the router's classification batches run (see `ServeArgs::router_executor`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RouterExecutor {
    /// The engine's worker on a GPU, a thread of its own on the CPU.
    #[default]
    Auto,
    /// The engine's worker thread, between decode steps.
    Engine,
    /// A thread of the router's own.
    Thread,
}

impl RouterExecutor {
    /// Whether batches go to the engine's worker on `device`.
    pub fn on_engine(self, device: &candle_core::Device) -> bool {
        match self {
            Self::Auto => !device.is_cpu(),
            Self::Engine => true,
            Self::Thread => false,
        }
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            host: "127.0.0.1".into(),
            port: 8080,
            models: Vec::new(),
            config: None,
            no_router: false,
            auto_model: "auto".into(),
            device: DeviceSpec::Cpu,
            api_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            max_prompt_tokens: None,
            max_tokens: 1024,
            max_queue: 256,
            max_num_seqs: 16,
            max_batch_tokens: 512,
            kv_cache_mib: None,
            gpu_memory_fraction: 0.9,
            max_streams: 64,
            max_choices: 8,
            upstream: None,
            upstream_api_key: None,
            upstream_timeout: 600,
            router_executor: RouterExecutor::Auto,
            shutdown_grace: 10,
            read_timeout: 30,
            stream_stall_timeout: 60,
            kv_cache_dtype: KvCacheDtype::Auto,
            no_prefix_caching: false,
        }
    }
}

/// Enforced limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Body bytes.
    pub body_bytes: usize,
    /// Prompt tokens (per model: the smaller of this and the context).
    pub prompt_tokens: Option<usize>,
    /// `max_tokens` ceiling.
    pub max_tokens: usize,
    /// Open streams.
    pub streams: usize,
    /// Time to receive a request body.
    pub read_timeout: Duration,
    /// Time a streaming client may leave its answer unread.
    pub stream_stall: Duration,
    /// Choices (`n`) per request.
    pub choices: usize,
}

/// Everything the handlers share.
pub struct State {
    /// Served models by id.
    pub engines: BTreeMap<String, Engine>,
    /// How the device's memory was shared out at start-up (`None` in proxy mode).
    pub memory_plan: Option<MemoryPlan>,
    /// The router, if routing is on.
    pub router: Option<Arc<Router>>,
    /// The model id that asks for routing.
    pub auto_model: String,
    /// Router target names mapped to served ids.
    pub aliases: BTreeMap<String, String>,
    /// Limits.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Metrics,
    /// Accepted API keys (none: no key needed).
    pub api_keys: Vec<String>,
    /// Open-stream permits.
    pub streams: Arc<Semaphore>,
    /// False once shutdown starts.
    pub accepting: AtomicBool,
    /// True once the shutdown grace period is over: open generations end with an error.
    pub hard_stop: watch::Sender<bool>,
    /// Start time (`created` of the models).
    pub started: u64,
    /// Proxy mode: the upstream inference server.
    pub upstream: Option<String>,
    /// Proxy mode: the `Authorization` header sent upstream in place of the client's.
    pub upstream_auth: Option<axum::http::HeaderValue>,
    /// Proxy mode: how long the upstream gets to start its answer.
    pub upstream_timeout: Duration,
    /// HTTP client for the upstream.
    pub http: reqwest::Client,
}

impl State {
    /// A served model whose engine worker no longer runs, if any.
    pub fn stopped_engine(&self) -> Option<&str> {
        self.engines
            .iter()
            .find(|(_, e)| !e.worker_alive())
            .map(|(id, _)| id.as_str())
    }

    /// Served ids, sorted.
    pub fn served(&self) -> Vec<String> {
        self.engines.keys().cloned().collect()
    }
}

/// A running server.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state (for tests and metrics).
    pub state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting and lets in-flight requests finish within `grace`; generations still
    /// running then end with an error (`server_shutdown`: a last SSE event, or a 503), and their
    /// sequences are cancelled.
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        self.state.accepting.store(false, Ordering::SeqCst);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Ok(r) = tokio::time::timeout(grace, &mut self.task).await {
            return r.context("server task");
        }
        tracing::warn!("shutdown grace of {grace:?} passed; ending the requests still running");
        self.state.hard_stop.send_replace(true);
        match tokio::time::timeout(Duration::from_secs(2), &mut self.task).await {
            Ok(r) => r.context("server task"),
            Err(_) => {
                tracing::warn!("connections still open; closing them");
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// The served id of a model file: a packaged model's official name, else the name it loaded with.
fn model_id(path: &std::path::Path, loaded_name: &str) -> String {
    let file = path.file_name().and_then(|f| f.to_str());
    if file == Some(crate::fetch::DEFAULT_MODEL.file_name) {
        crate::fetch::DEFAULT_MODEL_ID.to_string()
    } else if file == Some(crate::fetch::THINKING_MODEL.file_name) {
        crate::fetch::THINKING_MODEL_ID.to_string()
    } else {
        loaded_name.to_string()
    }
}

/// Loads the models and the router and starts serving (the caller's tokio runtime).
pub async fn start(args: ServeArgs) -> Result<Server> {
    // What costs nothing to check is checked before the models are fetched and loaded, and the
    // port is taken first: a busy one, or a bad flag, is said at once, not minutes later.
    let upstream_auth = proxy::upstream_authorization(args.upstream_api_key.as_deref())?;
    if args.upstream.is_some() && !args.models.is_empty() {
        bail!(
            "--upstream serves no model of its own (it forwards to the upstream's); drop --model"
        );
    }
    if args.max_batch_tokens < args.max_num_seqs {
        bail!(
            "--max-batch-tokens ({}) must be at least --max-num-seqs ({}): every running sequence decodes in each step",
            args.max_batch_tokens,
            args.max_num_seqs
        );
    }
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let device = args.device.open()?;
    let mut specs: Vec<(Option<String>, PathBuf)> = args
        .models
        .iter()
        .map(|m| match m.split_once('=') {
            Some((name, path)) => (Some(name.to_string()), PathBuf::from(path)),
            None => (None, PathBuf::from(m)),
        })
        .collect();
    if specs.is_empty() && args.upstream.is_none() {
        let path = tokio::task::spawn_blocking(|| {
            crate::fetch::DEFAULT_MODEL.ensure(&crate::fetch::cache_dir())
        })
        .await??;
        specs.push((None, path));
    }
    let engine_config = EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_batch_tokens: args.max_batch_tokens,
        max_waiting: args.max_queue,
        kv_cache_dtype: args.kv_cache_dtype.resolve(&device),
        prefix_caching: !args.no_prefix_caching,
        ..EngineConfig::default()
    };
    let mut models = BTreeMap::new();
    for (name, path) in specs {
        let device = device.clone();
        let (id, model) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut model = switchyard_models::load_generation_model(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            model.decoder = model.decoder.to_device(&device)?;
            let id = name.unwrap_or_else(|| model_id(&path, &model.name));
            Ok((id, model))
        })
        .await??;
        if models.insert(id.clone(), model).is_some() {
            bail!("two models are served as `{id}`; name them with --model name=path");
        }
    }
    if models.contains_key(&args.auto_model) {
        bail!(
            "a served model is named `{}`, the auto model's name",
            args.auto_model
        );
    }

    // The router goes on the device before the memory plan is made, so the plan sees its weights;
    // it is bound to the device owner (the engines' one worker) once the engines run.
    let router_executor = Arc::new(LateExecutor::new());
    let (router, aliases) = if args.no_router {
        (None, BTreeMap::new())
    } else {
        let mut options = match &args.config {
            Some(path) => RouterOptions::from_config_file(path)?,
            None => RouterOptions::new(RouterConfig::shipped_default()?),
        };
        // The embedding signal's encoder, from the model cache (fetched on first use like the default
        // model) unless the configuration names a directory of its own.
        let config = options.config.clone();
        tokio::task::spawn_blocking(move || crate::fetch::ensure_router_encoder(&config)).await??;
        if !models.is_empty() && args.router_executor.on_engine(&device) {
            options.executor = Some(router_executor.clone());
        }
        options.device = device.clone();
        options.dtype = switchyard_models::device::encoder_dtype(&device);
        // The guards read all of a request's unread user text, up to what the longest context
        // served could hold (twice its tokens: the router's small vocabulary splits text finer);
        // a longer request is a 400 before any window is classified, not seconds of router time.
        if let Some(context) = models
            .values()
            .map(|m| m.decoder.config().max_position_embeddings)
            .chain(args.max_prompt_tokens)
            .max()
        {
            let per_window = switchyard_router::DEFAULT_MAX_INPUT_TOKENS
                - 10
                - switchyard_router::classifier::GUARD_WINDOW_OVERLAP;
            options.max_guard_windows = (2 * context).div_ceil(per_window) + 8;
        }
        let router = tokio::task::spawn_blocking(move || Router::load(options)).await??;
        let mut aliases = BTreeMap::new();
        for target in router.config().referenced_models() {
            if models.contains_key(&target) || args.upstream.is_some() {
                continue;
            }
            if models.len() == 1 {
                let only = models.keys().next().expect("one model").clone();
                tracing::warn!(
                    "router target `{target}` is not served; routing it to `{only}`, the one model served"
                );
                aliases.insert(target, only);
            } else {
                bail!(
                    "the routing config sends requests to `{target}`, which is not served (serving: {})",
                    models.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        (Some(Arc::new(router)), aliases)
    };

    let memory_plan = if models.is_empty() {
        None
    } else {
        Some(plan_memory(&args, &device, &models, &engine_config)?)
    };
    // One worker owns the device and every model on it (the router's batches too, when bound to it).
    let mut ids = Vec::with_capacity(models.len());
    let mut shared = Vec::with_capacity(models.len());
    for (id, model) in models {
        let config = EngineConfig {
            kv_cache_bytes: memory_plan
                .as_ref()
                .and_then(|p| p.kv_bytes(&id))
                .map(|b| b as usize),
            ..engine_config.clone()
        };
        ids.push(id);
        shared.push((model, config));
    }
    let mut engines = BTreeMap::new();
    if !shared.is_empty() {
        let started = tokio::task::spawn_blocking(move || Engine::start_shared(shared)).await??;
        for (id, engine) in ids.into_iter().zip(started) {
            tracing::info!(
                model = %id,
                weights_mib = engine.weight_bytes() >> 20,
                kv_cache_mib = engine.kv_cache_bytes() >> 20,
                "model loaded"
            );
            engines.insert(id, engine);
        }
    }
    if let Some(first) = engines.values().next() {
        router_executor.bind(Arc::new(first.executor()));
    }

    let state = Arc::new(State {
        engines,
        memory_plan,
        router,
        auto_model: args.auto_model.clone(),
        aliases,
        limits: Limits {
            body_bytes: args.max_body_bytes,
            prompt_tokens: args.max_prompt_tokens,
            max_tokens: args.max_tokens,
            streams: args.max_streams,
            read_timeout: Duration::from_secs(args.read_timeout),
            stream_stall: Duration::from_secs(args.stream_stall_timeout),
            choices: usize::from(args.max_choices),
        },
        metrics: Metrics::new()?,
        api_keys: args
            .api_keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect(),
        streams: Arc::new(Semaphore::new(args.max_streams)),
        accepting: AtomicBool::new(true),
        hard_stop: watch::Sender::new(false),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        upstream: args
            .upstream
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        upstream_auth,
        upstream_timeout: Duration::from_secs(args.upstream_timeout),
        http: reqwest::Client::new(),
    });

    let endpoints = if state.upstream.is_some() {
        proxy::routes()
    } else {
        axum::Router::new()
            .route("/v1/chat/completions", post(handlers::chat_completions))
            .route("/v1/completions", post(completions::completions))
            .route("/v1/route", post(handlers::route))
            .route("/tokenize", post(tokenize::tokenize))
            .route("/detokenize", post(tokenize::detokenize))
            .route("/v1/models", get(handlers::models))
            .route("/v1/models/{id}", get(handlers::model))
            .route("/health", get(handlers::health))
            .route("/ready", get(handlers::ready))
            .route("/metrics", get(handlers::metrics))
    };
    let app = endpoints
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        // `read_body` enforces the body limit (and its deadline) for every route.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::reject_oversized,
        ))
        .layer(axum::middleware::from_fn(handlers::log_request))
        .with_state(state.clone());

    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let read_timeout = Duration::from_secs(args.read_timeout);
    let task = tokio::spawn(listen::serve(listener, app, read_timeout, async move {
        let _ = rx.await;
    }));
    Ok(Server {
        addr,
        state,
        shutdown: Some(tx),
        task,
    })
}

/// The memory plan of the loaded models (weights and router already on `device`).
fn plan_memory(
    args: &ServeArgs,
    device: &candle_core::Device,
    models: &BTreeMap<String, switchyard_models::GenerationModel>,
    engine: &EngineConfig,
) -> Result<MemoryPlan> {
    let memory = switchyard_models::device::memory(device)
        .map_err(|e| anyhow::anyhow!("cannot plan the KV cache: {e}"))?;
    let budget = match args.kv_cache_mib {
        Some(mib) => KvBudget::Bytes((mib as u64) << 20),
        None => KvBudget::Fraction(args.gpu_memory_fraction),
    };
    let headroom = if device.is_cpu() {
        0
    } else {
        GPU_HEADROOM_BYTES
    };
    let footprints = models
        .iter()
        .map(|(id, m)| {
            ModelFootprint::new(id, m.decoder.config(), m.decoder.weight_bytes(), engine)
        })
        .collect();
    Ok(MemoryPlan::new(memory, budget, headroom, footprints)?)
}

/// Runs `serve` until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let grace = Duration::from_secs(args.shutdown_grace);
        let server = start(args).await?;
        println!("Switchyard listening on http://{}", server.addr);
        if let Some(plan) = &server.state.memory_plan {
            print!("{plan}");
        }
        for (id, engine) in &server.state.engines {
            println!(
                "  model {id}: context {} tokens, up to {} sequences at once, prefix caching {}",
                engine.max_model_len(),
                engine.config().max_num_seqs,
                if engine.config().prefix_caching {
                    "on"
                } else {
                    "off"
                }
            );
        }
        match &server.state.router {
            Some(r) => println!(
                "  model {}: routed by the semantic router ({} categories; heads {:?})",
                server.state.auto_model,
                r.config().categories.len(),
                r.model().roles()
            ),
            None => println!("  routing off"),
        }
        if let Some(rss) = resident_bytes() {
            println!(
                "  process resident memory: {:.1} MiB",
                rss as f64 / (1 << 20) as f64
            );
        }
        println!("ready");
        shutdown_signal().await;
        println!("shutting down: finishing in-flight requests (up to {grace:?}; a second signal stops now)");
        tokio::select! {
            r = server.shutdown(grace) => r,
            _ = shutdown_signal() => {
                println!("second signal: stopping now");
                Ok(())
            }
        }
    })
}

/// The process's resident memory (Linux), bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::ServeArgs;
    use clap::{Args, Command, FromArgMatches};

    fn command() -> Command {
        ServeArgs::augment_args(Command::new("serve"))
    }

    #[test]
    fn the_router_runs_on_the_engine_on_a_gpu_and_beside_it_on_the_cpu() {
        use super::RouterExecutor;
        let cpu = candle_core::Device::Cpu;
        assert!(!RouterExecutor::Auto.on_engine(&cpu));
        assert!(RouterExecutor::Engine.on_engine(&cpu));
        assert!(!RouterExecutor::Thread.on_engine(&cpu));
        let parsed = ServeArgs::from_arg_matches(&command().get_matches_from([
            "serve",
            "--router-executor",
            "engine",
            "--memory-fraction",
            "0.5",
        ]))
        .expect("parses");
        assert_eq!(parsed.router_executor, RouterExecutor::Engine);
        assert_eq!(parsed.gpu_memory_fraction, 0.5);
    }

    #[test]
    fn every_flag_has_an_environment_twin() {
        let cmd = command();
        for arg in cmd.get_arguments() {
            let env = arg.get_env().and_then(|e| e.to_str());
            let long = arg.get_long().expect("a long flag");
            assert_eq!(
                env,
                Some(format!("SWITCHYARD_{}", long.replace('-', "_").to_uppercase()).as_str()),
                "--{long}"
            );
            // `--help` must not print a key that the environment holds.
            if long.contains("key") {
                assert!(
                    arg.is_hide_env_values_set(),
                    "--{long} shows its key in --help"
                );
            }
            // A switch's twin takes what shells write for yes (`=1`, `=yes`, `=on`), not only
            // `true`.
            if !arg.get_action().takes_values() {
                let takes = |word: &str| {
                    arg.get_value_parser()
                        .possible_values()
                        .into_iter()
                        .flatten()
                        .any(|p| p.matches(word, true))
                };
                for yes in ["1", "yes", "on", "true"] {
                    assert!(takes(yes), "--{long}: {env:?}={yes}");
                }
            }
        }
    }

    #[test]
    fn every_flag_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        for arg in command().get_arguments() {
            let long = arg.get_long().expect("a long flag");
            // Written alone (`--port`) or with its value (`--upstream URL`).
            assert!(
                readme.contains(&format!("`--{long}`")) || readme.contains(&format!("`--{long} ")),
                "README.md does not document `--{long}`"
            );
        }
    }

    #[test]
    fn defaults_match_the_default_args_and_lists_split_on_commas() {
        let parsed =
            ServeArgs::from_arg_matches(&command().get_matches_from(["serve"])).expect("parses");
        let d = ServeArgs::default();
        assert_eq!(
            (
                &parsed.host,
                parsed.port,
                parsed.max_tokens,
                parsed.max_queue,
                parsed.max_streams
            ),
            (&d.host, d.port, d.max_tokens, d.max_queue, d.max_streams)
        );
        assert_eq!(
            (
                parsed.max_body_bytes,
                parsed.shutdown_grace,
                parsed.no_router,
                parsed.read_timeout,
                parsed.upstream_timeout,
                parsed.stream_stall_timeout
            ),
            (
                d.max_body_bytes,
                d.shutdown_grace,
                d.no_router,
                d.read_timeout,
                d.upstream_timeout,
                d.stream_stall_timeout
            )
        );
        assert_eq!(
            (
                parsed.max_batch_tokens,
                parsed.gpu_memory_fraction,
                parsed.kv_cache_mib,
                parsed.router_executor
            ),
            (
                d.max_batch_tokens,
                d.gpu_memory_fraction,
                d.kv_cache_mib,
                d.router_executor
            )
        );
        assert_eq!(parsed.host, "127.0.0.1");
        let parsed = ServeArgs::from_arg_matches(&command().get_matches_from([
            "serve",
            "--api-key",
            "a,b",
            "--api-key",
            "c",
            "--model",
            "x=one.gguf,two",
            "--no-router",
        ]))
        .expect("parses");
        assert_eq!(parsed.api_keys, ["a", "b", "c"]);
        assert_eq!(parsed.models, ["x=one.gguf", "two"]);
        assert!(parsed.no_router);
    }
}
