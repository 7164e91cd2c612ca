//! The engine handle: prepares prompts on the caller's thread and hands sequences to the worker.

use crate::config::EngineConfig;
use crate::detokenize::Detokenizer;
use crate::error::{EngineError, Result};
use crate::grammar::{GrammarCompiler, GrammarConstraint, PendingCall};
use crate::request::{
    Event, GenerationParams, GenerationRequest, Prompt, ResponseFormat, Thinking, MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS,
};
use crate::sampling::Sampler;
use crate::sequence::Sequence;
use crate::stats::EngineStats;
use crate::stop::StopMatcher;
use crate::thinking::{
    Section, ThinkingSplitter, ThinkingStyle, REASONING_INSTRUCTION, THINK_END, THINK_START,
};
use crate::token_bytes::TokenBytes;
use crate::tools::ToolUse;
use crate::turns::Turns;
use crate::worker::{Command, ModelSlot, Worker};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchyard_models::decoder::{BlockTable, Decoder, KvCache, LogitRows, SequenceInput};
use switchyard_models::text::{ChatMessage, ChatTemplate, TextTokenizer};
use switchyard_models::GenerationModel;

/// A running engine: the handle of one model on a device worker thread.
///
/// Engines started together ([`Engine::start_shared`]) share one worker: one thread owns the device
/// and runs one model's step at a time, sharing device time evenly between the models with work;
/// device jobs ([`Engine::executor`]) run between steps.
pub struct Engine {
    worker: Arc<WorkerThread>,
    /// This model's index among the worker's models.
    slot: usize,
    info: ModelInfo,
}

/// The worker thread behind one or more engines; stopped when the last of them is dropped.
struct WorkerThread {
    tx: flume::Sender<Command>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WorkerThread {
    /// Asks the worker to stop and waits for it (a no-op once stopped).
    fn stop(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The events of one request. Dropping it cancels the request.
pub struct GenerationStream {
    rx: flume::Receiver<Event>,
    prompt_tokens: usize,
}

impl GenerationStream {
    /// Tokens in the rendered prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Waits for the next event; `None` after the last one.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// Waits for the next event asynchronously; `None` after the last one.
    pub async fn recv_async(&self) -> Option<Event> {
        self.rx.recv_async().await.ok()
    }

    /// Blocks until the end and collects every event.
    pub fn collect(self) -> Vec<Event> {
        self.rx.iter().collect()
    }
}

impl Engine {
    /// Starts a worker thread for `model` alone.
    pub fn start(model: GenerationModel, config: EngineConfig) -> Result<Self> {
        let mut engines = Self::start_shared(vec![(model, config)])?;
        Ok(engines.pop().expect("one engine per model"))
    }

    /// Starts one worker thread for several models on the same device, one engine handle per
    /// model in the given order. The worker owns every model and its KV cache and steps the models
    /// with work one batched step at a time, giving each an equal share of device time, so they
    /// share the device instead of racing for it.
    pub fn start_shared(models: Vec<(GenerationModel, EngineConfig)>) -> Result<Vec<Self>> {
        if models.is_empty() {
            return Err(EngineError::InvalidParameter {
                param: "models",
                message: "an engine needs at least one model".into(),
            });
        }
        let prepared = models
            .into_iter()
            .map(|(model, config)| prepare(model, config))
            .collect::<Result<Vec<_>>>()?;
        let (slots, infos): (Vec<ModelSlot>, Vec<ModelInfo>) = prepared.into_iter().unzip();
        let (tx, rx) = flume::unbounded();
        let worker = Worker {
            turns: Turns::new(slots.len()),
            models: slots,
            rx,
        };
        let thread = std::thread::Builder::new()
            .name("switchyard-engine".into())
            .spawn(move || worker.run())
            .map_err(|_| EngineError::Stopped)?;
        let worker = Arc::new(WorkerThread {
            tx,
            handle: Mutex::new(Some(thread)),
        });
        Ok(infos
            .into_iter()
            .enumerate()
            .map(|(slot, info)| Engine {
                worker: Arc::clone(&worker),
                slot,
                info,
            })
            .collect())
    }

    /// Whether the worker thread still runs (it stops on shutdown, or if a failure it could not
    /// contain ended it; then every request is refused with [`EngineError::Stopped`]).
    pub fn worker_alive(&self) -> bool {
        self.worker
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Whether this engine and `other` run on the same worker thread.
    pub fn shares_worker_with(&self, other: &Engine) -> bool {
        Arc::ptr_eq(&self.worker, &other.worker)
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        &self.info.name
    }

    /// Longest sequence (prompt + output) served.
    pub fn max_model_len(&self) -> usize {
        self.info.max_model_len
    }

    /// Bytes of model weights (memory-mapped).
    pub fn weight_bytes(&self) -> usize {
        self.info.weight_bytes
    }

    /// Bytes reserved for the KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.info.kv_cache_bytes
    }

    /// The limits this engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.info.config
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.info.tokenizer
    }

    /// The byte strings of the model's tokens (read at the first call), or why the tokenizer's
    /// description does not give them (said once in the log, with what goes without them).
    pub fn token_bytes(&self) -> std::result::Result<&TokenBytes, &str> {
        self.info
            .token_bytes
            .get_or_init(|| {
                TokenBytes::new(&self.info.tokenizer).inspect_err(|e| {
                    tracing::warn!(
                        model = %self.info.name,
                        "the tokens' byte strings cannot be read ({e}): log-probabilities spell \
                         each token by decoding it alone, and structured outputs are refused"
                    )
                })
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Whether a generated `id` adds no text to the output ([`crate::thinking::silent_token`]).
    pub fn silent_token(&self, id: u32) -> bool {
        crate::thinking::silent_token(&self.info.tokenizer, id)
    }

    /// How this model is put into thinking mode.
    pub fn thinking_style(&self) -> ThinkingStyle {
        self.info.style
    }

    /// Live counters.
    pub fn stats(&self) -> &EngineStats {
        &self.info.stats
    }

    /// Whether a request that does not say gets parallel tool calls: only for a model whose chat
    /// template renders several calls in one turn ([`ChatTemplate::renders_parallel_tool_calls`]), as
    /// llama.cpp decides. A model that was not trained for them (SmolLM2 knows no tools at all) tends
    /// to repeat its call until the length limit when more are allowed.
    pub fn parallel_tool_calls_by_default(&self) -> bool {
        self.info
            .template
            .as_ref()
            .is_some_and(ChatTemplate::renders_parallel_tool_calls)
    }

    /// Renders a conversation for `thinking` the way this model family wants it.
    pub fn render_chat(&self, messages: &[ChatMessage], thinking: Thinking) -> Result<String> {
        self.render_chat_with_tools(messages, thinking, None)
    }

    /// [`render_chat`](Self::render_chat) offering `tools`: a template that knows tools renders
    /// them (and earlier calls and results) itself; for one that does not, they are described in
    /// the system message and the history is written out in the `<tool_call>` convention
    /// ([`crate::tools`]).
    pub fn render_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        thinking: Thinking,
        tools: Option<&ToolUse>,
    ) -> Result<String> {
        self.render_chat_with_vars(messages, thinking, tools, &serde_json::Map::new())
    }

    /// [`render_chat_with_tools`](Self::render_chat_with_tools) with more variables for the
    /// template ([`GenerationParams::template_vars`]).
    pub fn render_chat_with_vars(
        &self,
        messages: &[ChatMessage],
        thinking: Thinking,
        tools: Option<&ToolUse>,
        template_vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template =
            self.info
                .template
                .as_ref()
                .ok_or_else(|| EngineError::InvalidParameter {
                    param: "messages",
                    message: format!(
                        "model `{}` has no chat template; send a text prompt",
                        self.info.name
                    ),
                })?;
        let mut msgs = std::borrow::Cow::Borrowed(messages);
        let mut template_tools = Vec::new();
        if template.renders_tools(tools.is_some()) {
            template_tools = tools.map(ToolUse::template_tools).unwrap_or_default();
        } else if tools.is_some() || crate::tools::has_tool_history(messages) {
            let mut owned = crate::tools::written_out(messages);
            if let Some(tools) = tools {
                with_system_text(&mut owned, &tools.instructions());
            }
            msgs = std::borrow::Cow::Owned(owned);
        }
        let on = matches!(thinking, Thinking::On { .. });
        let render = |m: &[ChatMessage], flag| {
            template.render_with_vars(m, true, flag, &template_tools, template_vars)
        };
        match self.info.style {
            ThinkingStyle::TemplateFlag => Ok(render(&msgs, Some(on))?),
            // The template opened the block: thinking on is the prompt as it is (no instruction,
            // no second `<think>`); off closes the block empty, as Qwen3's template renders it.
            ThinkingStyle::TemplateOpens if on => Ok(render(&msgs, None)?),
            ThinkingStyle::TemplateOpens => {
                let mut text = render(&msgs, None)?;
                if text.trim_end().ends_with(THINK_START) {
                    text.push_str(&format!("\n{THINK_END}\n\n"));
                }
                Ok(text)
            }
            ThinkingStyle::Prompted if on => {
                let mut msgs = msgs.into_owned();
                with_system_text(&mut msgs, REASONING_INSTRUCTION);
                let mut text = render(&msgs, None)?;
                text.push_str(THINK_START);
                text.push('\n');
                Ok(text)
            }
            ThinkingStyle::Prompted => Ok(render(&msgs, None)?),
        }
    }

    /// Tokenizes a request's prompt (rendering chats with the request's thinking mode and tools)
    /// as the worker will see it.
    pub fn prompt_tokens(
        &self,
        prompt: &Prompt,
        params: &GenerationParams,
    ) -> Result<(Vec<u32>, Section)> {
        let (mut tokens, text) = match prompt {
            Prompt::Tokens(t) => (t.clone(), self.info.tokenizer.decode(t)?),
            Prompt::Text(t) => (self.info.tokenizer.encode_prompt(t)?, t.clone()),
            Prompt::Chat(m) => {
                let text = self.render_chat_with_vars(
                    m,
                    params.thinking,
                    params.tools.as_ref(),
                    &params.template_vars,
                )?;
                (self.info.tokenizer.encode_prompt(&text)?, text)
            }
        };
        let section = if text.trim_end().ends_with(THINK_START) {
            Section::Thinking
        } else if params.thinking != Thinking::Off && constrained_from_the_start(params) {
            // The answer's constraint would forbid the model's own `<think>` (a template such as
            // Qwen3's leaves it to the model): the section is opened after the prompt, as a
            // prompted model's turn opens it.
            tokens.extend(self.info.tokenizer.encode(&format!("{THINK_START}\n"))?);
            Section::Thinking
        } else {
            Section::Start
        };
        Ok((tokens, section))
    }

    /// The per-token check of an answer (`None`: any text): its response format (JSON mode is the
    /// schema `{"type": "object"}`), or the call blocks of a required tool call. Compiled here, on
    /// the caller's thread, so that a schema that cannot be enforced is refused at once.
    fn answer_constraint(&self, params: &GenerationParams) -> Result<Option<GrammarConstraint>> {
        enum Wanted<'a> {
            Schema(&'a serde_json::Value),
            Calls(String),
        }
        let object = serde_json::json!({"type": "object"});
        let calls = params.tools.as_ref().and_then(ToolUse::grammar);
        let wanted = match (calls, &params.response_format) {
            (None, ResponseFormat::Text) => return Ok(None),
            (Some(lark), ResponseFormat::Text) => Wanted::Calls(lark),
            (Some(_), _) => {
                return Err(EngineError::InvalidParameter {
                    param: "response_format",
                    message: "a required tool call and a response format cannot be combined".into(),
                })
            }
            (None, ResponseFormat::JsonObject) => Wanted::Schema(&object),
            (None, ResponseFormat::JsonSchema(schema)) => Wanted::Schema(schema.as_ref()),
        };
        let compiler = self.grammar_compiler()?;
        Ok(Some(match wanted {
            Wanted::Schema(schema) => compiler.compile(schema)?,
            Wanted::Calls(lark) => compiler.compile_lark(&lark, "tools")?,
        }))
    }

    /// With tools offered and the choice left to the model: the constraint that takes over once
    /// the model has opened a call block itself ([`ToolUse::grammar_after_start`]).
    fn call_constraint(&self, params: &GenerationParams) -> Result<Option<GrammarConstraint>> {
        match params.tools.as_ref().and_then(ToolUse::grammar_after_start) {
            Some(lark) => Ok(Some(self.grammar_compiler()?.compile_lark(&lark, "tools")?)),
            None => Ok(None),
        }
    }

    /// The vocabulary indexed for constrained answers, built at the first request that needs it.
    fn grammar_compiler(&self) -> Result<&GrammarCompiler> {
        self.info
            .grammars
            .get_or_init(|| GrammarCompiler::new(&self.info.tokenizer, self.token_bytes()))
            .as_ref()
            .map_err(|message| EngineError::InvalidParameter {
                param: "response_format",
                message: message.clone(),
            })
    }

    /// Queues a request; its events arrive on the returned stream.
    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream> {
        let submitted = Instant::now();
        let params = Self::checked(request.params)?;
        let rendered = self.prompt_tokens(&request.prompt, &params)?;
        self.enqueue(rendered, params, submitted)
    }

    /// Queues a prompt already rendered and tokenized by [`Engine::prompt_tokens`], so that
    /// several sequences of one prompt (a request's `n` choices) render its template once.
    /// `params` must render the prompt as those it was rendered with did (the same thinking mode,
    /// tools, template variables and response format); the sampling, limits and log-probabilities
    /// may differ. Everything [`Engine::submit`] checks is checked here too.
    pub fn submit_rendered(
        &self,
        rendered: (Vec<u32>, Section),
        params: GenerationParams,
    ) -> Result<GenerationStream> {
        let submitted = Instant::now();
        let params = Self::checked(params)?;
        self.enqueue(rendered, params, submitted)
    }

    /// The request's parameters checked against the engine's fixed bounds (stop token ids
    /// de-duplicated).
    fn checked(mut params: GenerationParams) -> Result<GenerationParams> {
        params.sampling.validate()?;
        if params.stop.len() > MAX_STOP_STRINGS {
            return Err(EngineError::InvalidParameter {
                param: "stop",
                message: format!(
                    "{} stop strings given; at most {MAX_STOP_STRINGS}",
                    params.stop.len()
                ),
            });
        }
        // Repeats change nothing; distinct ids are bounded.
        let mut seen = std::collections::HashSet::new();
        params.stop_token_ids.retain(|&id| seen.insert(id));
        if params.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(EngineError::InvalidParameter {
                param: "stop_token_ids",
                message: format!(
                    "{} distinct stop token ids given; at most {MAX_STOP_TOKEN_IDS}",
                    params.stop_token_ids.len()
                ),
            });
        }
        if params.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(EngineError::InvalidParameter {
                param: "top_logprobs",
                message: format!("at most {MAX_TOP_LOGPROBS} alternatives"),
            });
        }
        if params.prompt_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(EngineError::InvalidParameter {
                param: "prompt_logprobs",
                message: format!("at most {MAX_TOP_LOGPROBS} alternatives"),
            });
        }
        if !params.split_thinking && params.thinking != Thinking::Off {
            return Err(EngineError::InvalidParameter {
                param: "thinking",
                message: "thinking needs its section split out of the output".into(),
            });
        }
        Ok(params)
    }

    /// Checks a rendered prompt against the vocabulary and the context, and hands its sequence
    /// to the worker.
    fn enqueue(
        &self,
        (tokens, section): (Vec<u32>, Section),
        params: GenerationParams,
        submitted: Instant,
    ) -> Result<GenerationStream> {
        let section = if params.split_thinking {
            section
        } else {
            Section::Raw
        };
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.info.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParameter {
                param: "prompt",
                message: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        if let Some(&bad) = params.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParameter {
                param: "stop_token_ids",
                message: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        if let Some(&(bad, _)) = params
            .sampling
            .logit_bias
            .iter()
            .find(|&&(t, _)| t as usize >= vocab)
        {
            return Err(EngineError::InvalidParameter {
                param: "logit_bias",
                message: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        let limit = self.info.max_model_len - 1;
        if tokens.len() > limit {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: tokens.len(),
                limit,
                max_model_len: self.info.max_model_len,
            });
        }
        // A cheap early refusal; the place itself is taken atomically below.
        if self.info.stats.waiting() >= self.info.config.max_waiting {
            return Err(EngineError::QueueFull(self.info.config.max_waiting));
        }
        let room = self.info.max_model_len - tokens.len();
        let max_new = params.max_tokens.map_or(room, |m| m.min(room));
        let mut stop_ids = params.stop_token_ids.clone();
        let requested_stops = stop_ids.len();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(self.info.tokenizer.eos());
        }
        let budget = match params.thinking {
            Thinking::On { budget } => budget,
            Thinking::Off => None,
        };
        let constraint = self.answer_constraint(&params)?;
        // A response format already constrains the whole answer.
        let pending_call = match constraint {
            None => self.call_constraint(&params)?.map(PendingCall::new),
            Some(_) => None,
        };
        let (events, rx) = flume::unbounded();
        let prompt_len = tokens.len();
        let detok = Detokenizer::after(&self.info.tokenizer, &tokens);
        let seq = Sequence {
            events,
            sampler: Sampler::new(params.sampling.clone(), &tokens),
            tokens,
            prompt_len,
            computed: 0,
            cached_tokens: None,
            // A cached prefix has no logits to score; with caching off there is none to wait for.
            use_prefix_cache: params.use_prefix_cache
                && params.prompt_logprobs.is_none()
                && self.info.config.prefix_caching,
            passed_over: 0,
            blocks: BlockTable::default(),
            detok,
            splitter: ThinkingSplitter::new(section),
            stop: StopMatcher::new(&params.stop),
            max_new,
            stop_ids,
            requested_stops,
            budget,
            forced_end: self.info.forced_end.clone(),
            reasoning_tokens: 0,
            logprobs: params.logprobs,
            prompt_logprobs: params.prompt_logprobs,
            prompt_scored: 1,
            constraint,
            pending_call,
            submitted,
            first_token: None,
            finished: None,
            held_finish: None,
        };
        if !self
            .info
            .stats
            .try_enter_queue(self.info.config.max_waiting)
        {
            return Err(EngineError::QueueFull(self.info.config.max_waiting));
        }
        if self
            .worker
            .tx
            .send(Command::Submit(self.slot, Box::new(seq)))
            .is_err()
        {
            self.info.stats.leave_queue();
            return Err(EngineError::Stopped);
        }
        Ok(GenerationStream {
            rx,
            prompt_tokens: prompt_len,
        })
    }

    /// An executor that runs jobs on this engine's worker thread, between decode steps (the
    /// router's classification batches go through it, so one thread owns the device).
    pub fn executor(&self) -> EngineExecutor {
        EngineExecutor {
            tx: self.worker.tx.clone(),
        }
    }

    /// Stops the worker, and so every engine that shares it: in-flight requests end with an error
    /// event. Dropping the last engine of a worker does the same.
    pub fn shutdown(&mut self) {
        self.worker.stop();
    }
}

/// What an engine handle keeps of its model (the worker owns the rest): tokenizer, template, thinking
/// style, limits and counters.
struct ModelInfo {
    tokenizer: Arc<TextTokenizer>,
    /// Ids a prompt may hold: those both the tokenizer and the model's embedding know (a tokenizer
    /// with added tokens past the embedding's rows would otherwise fail a whole batch's step).
    vocab_size: usize,
    template: Option<ChatTemplate>,
    style: ThinkingStyle,
    forced_end: Vec<u32>,
    name: String,
    config: EngineConfig,
    max_model_len: usize,
    weight_bytes: usize,
    kv_cache_bytes: usize,
    stats: Arc<EngineStats>,
    /// The vocabulary indexed for constrained answers (or why it cannot be), built on first use.
    grammars: std::sync::OnceLock<std::result::Result<GrammarCompiler, String>>,
    /// The tokens' byte strings (or why they cannot be read), built on first use.
    token_bytes: std::sync::OnceLock<std::result::Result<TokenBytes, String>>,
}

/// Checks `config` against `model`, sizes and allocates the KV cache (warming a GPU up), and splits
/// the model into what the worker owns and what the caller's handle keeps.
fn prepare(model: GenerationModel, config: EngineConfig) -> Result<(ModelSlot, ModelInfo)> {
    let GenerationModel {
        name,
        decoder,
        tokenizer,
        chat_template,
    } = model;
    let mc = decoder.config().clone();
    let max_model_len = config
        .max_model_len
        .map_or(mc.max_position_embeddings, |l| {
            l.min(mc.max_position_embeddings)
        });
    let invalid = |param, message: String| EngineError::InvalidParameter { param, message };
    if config.max_num_seqs == 0 {
        return Err(invalid("max_num_seqs", "must be at least 1".into()));
    }
    if config.block_size == 0 {
        return Err(invalid("block_size", "must be at least 1".into()));
    }
    // Every running sequence's decode token must fit in one step, or the last ones would never
    // be scheduled while the first run.
    if config.max_batch_tokens < config.max_num_seqs {
        return Err(invalid(
            "max_batch_tokens",
            format!(
                "must be at least max_num_seqs ({}), so that every running sequence decodes in each step; got {}",
                config.max_num_seqs, config.max_batch_tokens
            ),
        ));
    }
    let per_position = KvCache::bytes_per_position(&mc, config.kv_cache_dtype);
    let per_block = per_position * config.block_size;
    let bytes = config
        .kv_cache_bytes
        .unwrap_or_else(|| (max_model_len * config.max_num_seqs * per_position).min(2 << 30));
    let num_blocks = bytes / per_block;
    if num_blocks * config.block_size < max_model_len.min(config.max_batch_tokens) {
        return Err(invalid(
            "kv_cache_bytes",
            format!(
                "{bytes} bytes hold only {num_blocks} blocks of {} positions",
                config.block_size
            ),
        ));
    }
    let capacity = num_blocks * config.block_size;
    if capacity < max_model_len {
        tracing::warn!(
            model = %name,
            "the KV cache holds {capacity} positions: context shortened from {max_model_len}"
        );
    }
    // No sequence may outgrow the whole cache, so every admitted request can finish.
    let max_model_len = max_model_len.min(capacity);
    if max_model_len < 2 {
        return Err(invalid(
            "max_model_len",
            format!("must leave room for a prompt token and a new one; got {max_model_len}"),
        ));
    }
    let mut cache = KvCache::with_dtype(
        &mc,
        config.block_size,
        num_blocks,
        &decoder.device(),
        config.kv_cache_dtype,
    )?;
    cache.set_prefix_caching(config.prefix_caching);
    if !decoder.device().is_cpu() {
        warm_up(
            &decoder,
            &mut cache,
            max_model_len.min(config.max_batch_tokens),
        )?;
    }
    let tokenizer = Arc::new(tokenizer);
    let style = ThinkingStyle::of_template(chat_template.as_ref());
    let forced_end = tokenizer.encode("\n</think>\n\n")?;
    let stats = Arc::new(EngineStats::default());
    let weight_bytes = decoder.weight_bytes();
    tracing::info!(
        model = %name,
        weights_mib = weight_bytes >> 20,
        kv_cache_mib = (num_blocks * per_block) >> 20,
        max_model_len,
        "engine started"
    );
    let slot = ModelSlot {
        attention_span: crate::schedule::attention_span(decoder.config()),
        decoder,
        tokenizer: Arc::clone(&tokenizer),
        cache,
        config: config.clone(),
        stats: Arc::clone(&stats),
        waiting: VecDeque::new(),
        running: Vec::new(),
    };
    Ok((
        slot,
        ModelInfo {
            vocab_size: tokenizer.vocab_size().min(mc.vocab_size),
            tokenizer,
            template: chat_template,
            style,
            forced_end,
            name,
            config,
            max_model_len,
            weight_bytes,
            kv_cache_bytes: num_blocks * per_block,
            stats,
            grammars: std::sync::OnceLock::new(),
            token_bytes: std::sync::OnceLock::new(),
        },
    ))
}

/// Runs one forward step of `tokens` positions on a GPU before serving, with logits at every
/// position (as a scored prompt has them): it loads the kernels and proves the memory plan's
/// activation reserve holds the largest step (an out-of-memory here is a start-up error naming the
/// remedies, not a crash under load).
fn warm_up(decoder: &Decoder, cache: &mut KvCache, tokens: usize) -> Result<()> {
    let mut blocks = BlockTable::default();
    if !cache.reserve(&mut blocks, tokens) {
        return Ok(());
    }
    let ids = vec![0u32; tokens];
    let input = SequenceInput {
        tokens: &ids,
        start_position: 0,
        blocks: &blocks,
        logits: LogitRows::All,
    };
    let result = decoder.forward(&[input], cache);
    cache.release(&mut blocks);
    result.map(drop).map_err(|e| EngineError::InvalidParameter {
        param: "kv_cache_bytes",
        message: format!(
            "a warm-up step of {tokens} tokens failed ({e}); leave more device memory for \
             activations: lower --gpu-memory-fraction / --kv-cache-mib or --max-batch-tokens"
        ),
    })
}

/// Runs device jobs on an engine's worker thread (see [`Engine::executor`]).
#[derive(Clone)]
pub struct EngineExecutor {
    tx: flume::Sender<Command>,
}

impl switchyard_models::executor::DeviceExecutor for EngineExecutor {
    fn execute(
        &self,
        job: switchyard_models::executor::DeviceJob,
    ) -> std::result::Result<(), switchyard_models::executor::DeviceJob> {
        self.tx
            .send(Command::Run(job))
            .map_err(|e| match e.into_inner() {
                Command::Run(job) => job,
                _ => unreachable!("sent a Run command"),
            })
    }
}

/// Adds `text` to the conversation's system message (a new one first if it has none).
fn with_system_text(messages: &mut Vec<ChatMessage>, text: &str) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
        _ => messages.insert(0, ChatMessage::new("system", text)),
    }
}

/// Whether an answer is constrained from its first token: a response format or a required tool
/// call (what `Engine::answer_constraint` compiles); tools the model may call are checked only
/// once it opens a call.
fn constrained_from_the_start(params: &GenerationParams) -> bool {
    !matches!(params.response_format, ResponseFormat::Text)
        || params.tools.as_ref().and_then(ToolUse::grammar).is_some()
}
