//! `POST /v1/completions`: OpenAI's text completions, the legacy API that lm-evaluation-harness,
//! vLLM's serving benchmark and many tools still speak. A raw prompt (text or token ids, one or
//! several) is continued as it is: no chat template, no thinking section, the output exactly as
//! the model wrote it. `echo` with `logprobs` scores the prompt itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_engine::{
    DeltaKind, Event, GenerationParams, GenerationRequest, GenerationStream, Prompt, Thinking,
    TokenLogprob, MAX_TOP_LOGPROBS,
};
use switchyard_models::text::ChatMessage;
use switchyard_router::Decision;

use super::api::{refuse_unimplemented, SamplingFields, Stop, StreamOptions, Usage};
use super::error::ApiError;
use super::generation::{
    add_server_timing, answer, check_accepting, check_choices, collect_all, known_stream, refusal,
    request_usage, sse_response, stream_permit, submit, usage_chunk, ChoiceItem, Outcome, Pending,
    StreamMeta,
};
use super::handlers::{
    body_bytes, decision_headers, now, parse_json, route_messages, Plan, Shared,
};
use super::logprobs::{echo_offsets, TextLogprobs};
use super::State;

/// `logit_bias` as (token id, bias) pairs.
type LogitBias = Vec<(u32, f32)>;

/// OpenAI's default `max_tokens` for text completions.
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// `prompt`: a string, several strings, token ids, or several lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One text.
    Text(String),
    /// Several texts, each completed on its own.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

impl PromptField {
    /// The prompts, each as the engine takes it; an empty prompt (or none) is a 400.
    fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let prompts: Vec<Prompt> = match self {
            Self::Text(t) => vec![Prompt::Text(t.clone())],
            Self::Texts(v) => v.iter().cloned().map(Prompt::Text).collect(),
            Self::Tokens(t) => vec![Prompt::Tokens(t.clone())],
            Self::TokenLists(v) => v.iter().cloned().map(Prompt::Tokens).collect(),
        };
        let empty = |p: &Prompt| match p {
            Prompt::Text(t) => t.is_empty(),
            Prompt::Tokens(t) => t.is_empty(),
            Prompt::Chat(m) => m.is_empty(),
        };
        if prompts.is_empty() || prompts.iter().any(empty) {
            return Err(ApiError::invalid("prompt", "prompts must not be empty"));
        }
        Ok(prompts)
    }
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// A served model id, or the auto model (routed on the prompt's text).
    pub model: String,
    /// What to continue.
    pub prompt: PromptField,
    /// Most tokens to generate per choice (OpenAI's default: 16); 0 with `echo` scores the prompt.
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Choices per prompt.
    pub n: Option<usize>,
    /// Candidates per choice to pick the best of: only `n` itself (no reranking) is supported.
    pub best_of: Option<usize>,
    /// Stream the completion as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Return the log-probability of each token with this many most likely alternatives (0-20).
    pub logprobs: Option<usize>,
    /// Put the prompt before the completion in `text`; with `logprobs`, also the prompt tokens'.
    pub echo: Option<bool>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Presence penalty in [-2, 2].
    pub presence_penalty: Option<f32>,
    /// Frequency penalty in [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Sampling seed (any 64-bit integer).
    pub seed: Option<i64>,
    /// Token id (as a string) -> bias in [-100, 100] added to its logit.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Text after the completion (insertion): not supported.
    pub suffix: Option<String>,
    /// vLLM's extension: keep the k most likely tokens (0 or -1: off).
    pub top_k: Option<i64>,
    /// vLLM's extension: drop tokens below `min_p` times the top probability.
    pub min_p: Option<f32>,
    /// vLLM's extension: penalise tokens already in the prompt or output (1: off).
    pub repetition_penalty: Option<f32>,
    /// vLLM's extension: keep generating past the end-of-sequence token.
    pub ignore_eos: Option<bool>,
    /// vLLM's extension: token ids that end the generation.
    pub stop_token_ids: Option<Vec<u32>>,
    /// llama.cpp's extension: start from the cached prefix of the prompt (default true).
    pub cache_prompt: Option<bool>,
    /// Other fields: accepted, except the ones this server would silently ignore (see
    /// [`refuse_unimplemented`]).
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl CompletionRequest {
    fn sampling(&self) -> SamplingFields<'_> {
        SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            logit_bias: self.logit_bias.as_ref(),
        }
    }

    fn echo(&self) -> bool {
        self.echo.unwrap_or(false)
    }

    /// Checks what the types cannot; returns the prompts and the parsed `logit_bias`.
    pub(super) fn validate(&self) -> Result<(Vec<Prompt>, LogitBias), ApiError> {
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                "`suffix` (insertion) is not supported by this server",
            ));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 {
            return Err(ApiError::invalid("n", "`n` must be at least 1"));
        }
        StreamOptions::check(self.stream_options.as_ref(), self.stream)?;
        refuse_unimplemented(&self.other)?;
        if self.best_of.is_some_and(|b| b != n) {
            return Err(ApiError::invalid(
                "best_of",
                "only `best_of` equal to `n` is supported (no server-side reranking)",
            ));
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(
                "logprobs",
                format!("must be in [0, {MAX_TOP_LOGPROBS}]"),
            ));
        }
        if self.max_tokens == Some(0) && !self.echo() {
            return Err(ApiError::invalid(
                "max_tokens",
                "must be at least 1 (0 only with `echo`, to score the prompt)",
            ));
        }
        let sampling = self.sampling();
        sampling.check_ranges()?;
        let logit_bias = sampling.logit_bias()?;
        Ok((self.prompt.prompts()?, logit_bias))
    }

    fn streamed(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true))
    }
}

fn completion_id() -> String {
    format!("cmpl-{:032x}", rand::random::<u128>())
}

/// `POST /v1/completions`.
pub async fn completions(
    AxumState(state): Shared,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let pending = Pending::new(&state, "completions");
    let result = complete(state.clone(), body, &pending).await;
    pending.settle();
    answer(&state, "completions", result)
}

/// The model a request names, or the router's choice for its one text prompt (masked as the
/// route says). A route's system prompt and thinking do not apply to a raw prompt.
async fn plan(
    state: &State,
    request: &CompletionRequest,
    prompts: &mut [Prompt],
) -> Result<Plan, ApiError> {
    let served = |model: &str| {
        state
            .engines
            .contains_key(model)
            .then(|| model.to_string())
            .or_else(|| state.aliases.get(model).cloned())
    };
    if request.model != state.auto_model {
        let model = served(&request.model)
            .ok_or_else(|| ApiError::unknown_model(&request.model, &state.served()))?;
        return Ok(Plan {
            model,
            messages: Vec::new(),
            thinking: Thinking::Off,
            decision: None,
        });
    }
    let decision = route_prompt(state, &request.model, prompts).await?;
    let model = served(&decision.model).ok_or_else(|| {
        ApiError::internal(format!(
            "the router chose `{}`, which is not served",
            decision.model
        ))
    })?;
    Ok(Plan {
        model,
        messages: Vec::new(),
        thinking: Thinking::Off,
        decision: Some(decision),
    })
}

/// The router's decision for a request to the auto model (`model`), which must hold one text
/// prompt; the prompt is masked in place as the decision says. Shared with the router-only proxy.
pub(super) async fn route_prompt(
    state: &State,
    model: &str,
    prompts: &mut [Prompt],
) -> Result<Decision, ApiError> {
    let router = state
        .router
        .as_ref()
        .ok_or_else(|| ApiError::unknown_model(model, &state.served()))?;
    let [Prompt::Text(text)] = prompts else {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "`{}` routes one text prompt per request; name a model to send token ids or several prompts",
                state.auto_model
            ),
        ));
    };
    let mut messages = vec![ChatMessage::new("user", text.as_str())];
    let decision: Decision = route_messages(state, router, &messages).await?;
    if !decision.masked.is_empty() {
        decision.apply(&mut messages);
        if let Some(user) = messages.iter().find(|m| m.role == "user") {
            *text = user.content.clone();
        }
    }
    Ok(decision)
}

async fn complete(
    state: Arc<State>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    pending: &Pending,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let arrived = Instant::now();
    let request: CompletionRequest = parse_json(&body_bytes(&state, body)?)?;
    let (mut prompts, logit_bias) = request.validate()?;
    let limit = state.limits.max_tokens;
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS.min(limit));
    if max_tokens > limit {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("{max_tokens} is more than this server's limit of {limit}"),
        ));
    }
    let n = request.n.unwrap_or(1);
    check_choices(&state, n)?;
    let plan = plan(&state, &request, &mut prompts).await?;
    let mut headers = decision_headers(&plan);
    let (id, created) = (completion_id(), now());
    let choices = prompts.len() * n;

    if let Some(message) = refusal(&state, "completions", &plan) {
        let mut response = blocked(&request, &plan.model, &id, created, message, choices);
        response.headers_mut().extend(headers);
        return Ok(response);
    }
    let stream_permit = stream_permit(&state, request.streamed())?;
    let echo = request.echo();
    let params = GenerationParams {
        sampling: request.sampling().params(logit_bias),
        max_tokens: Some(max_tokens),
        stop: Stop::strings(request.stop.as_ref()),
        stop_token_ids: request.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: request.ignore_eos.unwrap_or(false),
        thinking: Thinking::Off,
        logprobs: request.logprobs,
        prompt_logprobs: request.logprobs.filter(|_| echo),
        split_thinking: false,
        response_format: Default::default(),
        tools: None,
        use_prefix_cache: request.cache_prompt.unwrap_or(true),
        template_vars: Default::default(),
    };
    let echoed = if echo {
        echoed_prompts(&state, &plan.model, &prompts, request.logprobs.is_some()).await?
    } else {
        Vec::new()
    };
    let requests = prompts
        .into_iter()
        .map(|prompt| GenerationRequest {
            prompt,
            params: params.clone(),
        })
        .collect();
    let streams = submit(&state, &plan.model, requests, n, "prompt").await?;
    add_server_timing(
        &mut headers,
        plan.decision.as_ref().map(|d| d.route_time),
        arrived,
    );
    let mut outcome = Outcome::new(&state, "completions", &plan, "off");
    pending.settle();
    // Choice i continues prompt i / n.
    let echo_of = |i: usize| echoed.get(i / n).cloned();

    if request.streamed() {
        // Choice 0 of each prompt scores it and passes the scores on to the prompt's other choices.
        let mut give = None;
        let per_choice = streams
            .into_iter()
            .enumerate()
            .map(|(index, stream)| {
                let scores = if params.prompt_logprobs.is_none() {
                    SharedScores::None
                } else if index % n == 0 {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    give = Some(rx);
                    SharedScores::Give(tx)
                } else {
                    give.clone().map_or(SharedScores::None, SharedScores::Take)
                };
                text_choice_events(TextChoice {
                    index,
                    stream,
                    state: state.clone(),
                    model: plan.model.clone(),
                    id: id.clone(),
                    created,
                    echo: echo_of(index),
                    logprobs: request.logprobs.map(|_| Vec::new()),
                    prompt_logprobs: Vec::new(),
                    scores,
                    offsets: None,
                    last_token: None,
                    done: false,
                })
                .boxed()
            })
            .collect();
        let meta = StreamMeta {
            id,
            object: "text_completion",
            created,
            include_usage: request.include_usage(),
            choices_per_prompt: n,
        };
        return Ok(sse_response(
            &state,
            per_choice,
            meta,
            outcome,
            stream_permit,
            headers,
        ));
    }

    let wants_logprobs = request.logprobs.is_some();
    let mut done = match collect_all(&state, &streams, wants_logprobs, &mut outcome).await {
        Ok(done) => done,
        Err(response) => return Ok(response),
    };
    // Choice 0 of each prompt scored it for all its choices.
    for i in (0..done.len()).filter(|i| i % n != 0) {
        done[i].prompt_logprobs = done[i - i % n].prompt_logprobs.clone();
    }
    let usages: Vec<_> = done.iter().map(|c| c.usage).collect();
    let usage = request_usage(&usages, n);
    outcome.finished(&usage);
    let engine = &state.engines[&plan.model];
    let choices: Vec<Value> = done
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let echo = echo_of(index);
            let logprobs = c.logprobs.as_ref().map(|generated| {
                let mut offsets = TextLogprobs::new(0);
                let mut parts = Vec::new();
                if let Some(echo) = &echo {
                    parts.push(offsets.echoed(
                        engine,
                        prompt_entries(&echo.tokens, &c.prompt_logprobs),
                        &echo.offsets,
                        echo.text.chars().count(),
                    ));
                }
                parts.push(offsets.object(engine, generated.iter().map(|lp| (lp.id, Some(lp)))));
                super::logprobs::joined(parts)
            });
            let text = match echo {
                Some(echo) => echo.text + &c.content,
                None => c.content,
            };
            json!({"text": text, "index": index, "logprobs": logprobs,
                   "finish_reason": c.finish})
        })
        .collect();
    let body = json!({
        "id": id, "object": "text_completion", "created": created, "model": plan.model,
        "choices": choices, "usage": Usage::from_engine(&usage),
    });
    let mut response = Json(body).into_response();
    response.headers_mut().extend(headers);
    Ok(response)
}

/// What `echo` puts before a prompt's choices.
#[derive(Clone, Debug)]
struct EchoedPrompt {
    /// The prompt's text.
    text: String,
    /// Its tokens, for their log-probabilities.
    tokens: Vec<u32>,
    /// Where each token starts in the text, in characters (`text_offset`); only computed when
    /// log-probabilities are asked for.
    offsets: Vec<usize>,
}

/// What `echo` puts before each prompt's choices (the tokens' offsets `with_offsets`, for
/// log-probabilities). Tokenizing is CPU work: it runs off the threads that move other requests'
/// bytes.
async fn echoed_prompts(
    state: &Arc<State>,
    model: &str,
    prompts: &[Prompt],
    with_offsets: bool,
) -> Result<Vec<EchoedPrompt>, ApiError> {
    let (state, model, prompts) = (state.clone(), model.to_string(), prompts.to_vec());
    tokio::task::spawn_blocking(move || {
        let engine = &state.engines[&model];
        prompts
            .iter()
            .map(|p| {
                let (tokens, _) = engine.prompt_tokens(p, &GenerationParams::default())?;
                let text = match p {
                    Prompt::Text(t) => t.clone(),
                    _ => engine.tokenizer().decode(&tokens)?,
                };
                let offsets = if with_offsets {
                    echo_offsets(engine, &text, &tokens)
                } else {
                    Vec::new()
                };
                Ok(EchoedPrompt {
                    text,
                    tokens,
                    offsets,
                })
            })
            .collect::<Result<_, switchyard_engine::EngineError>>()
            .map_err(|e| ApiError::from_engine(e, "prompt"))
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?
}

/// The prompt's tokens with their log-probabilities: none for the first, then the engine's.
fn prompt_entries<'a>(
    prompt: &'a [u32],
    scored: &'a [TokenLogprob],
) -> impl Iterator<Item = (u32, Option<&'a TokenLogprob>)> + 'a {
    prompt
        .iter()
        .enumerate()
        .map(move |(i, &id)| (id, i.checked_sub(1).and_then(|j| scored.get(j))))
}

/// The answer to a blocked request: every choice is the refusal, `finish_reason:
/// "content_filter"`.
pub(super) fn blocked(
    request: &CompletionRequest,
    model: &str,
    id: &str,
    created: u64,
    message: &str,
    choices: usize,
) -> Response {
    let usage = Usage::from_engine(&switchyard_engine::Usage::default());
    let choice = |index: usize| json!({"text": message, "index": index, "logprobs": null, "finish_reason": "content_filter"});
    if request.streamed() {
        let mut events: Vec<SseEvent> = (0..choices)
            .map(|index| {
                SseEvent::default().data(
                    json!({"id": id, "object": "text_completion", "created": created,
                           "model": model, "choices": [choice(index)]})
                    .to_string(),
                )
            })
            .collect();
        if request.include_usage() {
            events.push(usage_chunk(id, "text_completion", created, model, &usage));
        }
        known_stream(events)
    } else {
        Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": (0..choices).map(choice).collect::<Vec<_>>(), "usage": usage,
        }))
        .into_response()
    }
}

/// A prompt's log-probabilities are computed once, by its first choice (see
/// [`super::generation::submit`]); streamed, that choice passes them on as it sends its echo.
enum SharedScores {
    /// Not asked for.
    None,
    /// This choice computes them and passes them on.
    Give(tokio::sync::watch::Sender<Option<Vec<TokenLogprob>>>),
    /// This choice waits for them before its echo.
    Take(tokio::sync::watch::Receiver<Option<Vec<TokenLogprob>>>),
}

/// One choice of a streamed text completion in progress.
struct TextChoice {
    index: usize,
    stream: GenerationStream,
    state: Arc<State>,
    model: String,
    id: String,
    created: u64,
    /// The prompt, still to be sent first (`echo`).
    echo: Option<EchoedPrompt>,
    /// Generated tokens' log-probabilities whose text has not been sent (`None`: not asked for).
    logprobs: Option<Vec<TokenLogprob>>,
    /// The prompt's, gathered before the echo is sent.
    prompt_logprobs: Vec<TokenLogprob>,
    /// How this choice shares its prompt's log-probabilities with the prompt's other choices.
    scores: SharedScores,
    /// Character offsets of the tokens sent so far (built with the first entries).
    offsets: Option<TextLogprobs>,
    last_token: Option<Instant>,
    done: bool,
}

impl TextChoice {
    fn chunk(&self, text: &str, logprobs: Value, finish: Option<&str>) -> ChoiceItem {
        ChoiceItem::Chunk(
            SseEvent::default().data(
                json!({
                    "id": self.id, "object": "text_completion", "created": self.created,
                    "model": self.model,
                    "choices": [{"text": text, "index": self.index, "logprobs": logprobs,
                                 "finish_reason": finish}],
                })
                .to_string(),
            ),
        )
    }

    /// The `logprobs` of the next chunk: these tokens' entries, or `null` when none were asked for.
    fn logprobs_of(&mut self, tokens: Vec<(u32, Option<&TokenLogprob>)>) -> Value {
        if self.logprobs.is_none() {
            return Value::Null;
        }
        let engine = &self.state.engines[&self.model];
        self.offsets
            .get_or_insert_with(|| TextLogprobs::new(0))
            .object(engine, tokens)
    }

    /// The echoed prompt's chunk, once, before anything generated. The prompt's first choice
    /// passes its scores on here (what it has: all of them, unless its generation failed, which
    /// the response then reports); the prompt's other choices wait for them here. Should the first
    /// choice's stream be dropped without passing them, the echo goes without scores.
    async fn echo_chunk(&mut self) -> Option<ChoiceItem> {
        let echo = self.echo.take()?;
        match &mut self.scores {
            SharedScores::None => {}
            SharedScores::Give(tx) => {
                tx.send_replace(Some(self.prompt_logprobs.clone()));
            }
            SharedScores::Take(rx) => {
                if let Ok(scores) = rx.wait_for(Option::is_some).await {
                    if let Some(scores) = scores.as_ref() {
                        self.prompt_logprobs.clone_from(scores);
                    }
                }
            }
        }
        let scored = std::mem::take(&mut self.prompt_logprobs);
        let logprobs = if self.logprobs.is_some() {
            let engine = &self.state.engines[&self.model];
            self.offsets
                .get_or_insert_with(|| TextLogprobs::new(0))
                .echoed(
                    engine,
                    prompt_entries(&echo.tokens, &scored),
                    &echo.offsets,
                    echo.text.chars().count(),
                )
        } else {
            Value::Null
        };
        Some(self.chunk(&echo.text, logprobs, None))
    }

    /// The generated tokens' log-probabilities gathered since the last chunk.
    fn pending_logprobs(&mut self) -> Value {
        let pending = self.logprobs.as_mut().map(std::mem::take);
        match pending {
            Some(lps) => self.logprobs_of(lps.iter().map(|lp| (lp.id, Some(lp))).collect()),
            None => Value::Null,
        }
    }
}

/// One choice's items: the echoed prompt (if asked for), a chunk per text delta, a last chunk
/// with the finish reason and then `Finished`, or `Failed`.
fn text_choice_events(c: TextChoice) -> impl Stream<Item = ChoiceItem> {
    stream::unfold(c, |mut c| async move {
        if c.done {
            return None;
        }
        let event = c.stream.recv_async().await;
        let mut items: Vec<ChoiceItem> = Vec::new();
        if !matches!(event, Some(Event::PromptLogprob(_))) {
            items.extend(c.echo_chunk().await);
        }
        match event {
            Some(Event::PromptLogprob(lp)) => c.prompt_logprobs.push(lp),
            Some(Event::Logprob(lp)) => {
                // Sent with the chunk of the text the token adds.
                if let Some(pending) = c.logprobs.as_mut() {
                    pending.push(lp);
                }
            }
            Some(Event::Delta { text, kind }) => {
                debug_assert_eq!(kind, DeltaKind::Content, "raw output has no reasoning");
                let now = Instant::now();
                if let Some(last) = c.last_token.replace(now) {
                    c.state
                        .metrics
                        .inter_token_seconds
                        .with_label_values(&[&c.model])
                        .observe((now - last).as_secs_f64());
                }
                let logprobs = c.pending_logprobs();
                items.push(c.chunk(&text, logprobs, None));
            }
            Some(Event::Finished { reason, usage, .. }) => {
                c.done = true;
                let logprobs = c.pending_logprobs();
                items.push(c.chunk("", logprobs, Some(reason.as_str())));
                items.push(ChoiceItem::Finished {
                    index: c.index,
                    usage,
                });
            }
            Some(Event::Error(e)) => {
                c.done = true;
                items.push(ChoiceItem::Failed(
                    "500",
                    ApiError::internal(format!("generation failed: {e}")),
                ));
            }
            None => {
                c.done = true;
                items.push(ChoiceItem::Failed(
                    "503",
                    ApiError::unavailable("the engine stopped"),
                ));
            }
        }
        Some((stream::iter(items), c))
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<CompletionRequest, ApiError> {
        parse_json(body.to_string().as_bytes())
    }

    fn rejected(body: Value) -> Option<String> {
        request(body)
            .and_then(|r| r.validate().map(drop))
            .err()?
            .param
    }

    #[test]
    fn prompts_come_in_four_shapes() {
        for (prompt, expected) in [
            (json!("hi"), 1),
            (json!(["a", "b"]), 2),
            (json!([1, 2, 3]), 1),
            (json!([[1, 2], [3]]), 2),
        ] {
            let r = request(json!({"model": "m", "prompt": prompt})).unwrap();
            let (prompts, _) = r.validate().unwrap();
            assert_eq!(prompts.len(), expected, "{prompt}");
        }
        let r = request(json!({"model": "m", "prompt": [[1, 2], [3]]})).unwrap();
        assert!(matches!(&r.validate().unwrap().0[1], Prompt::Tokens(t) if t == &[3]));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (extra, param) in [
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": []}), "prompt"),
            (json!({"prompt": ["a", ""]}), "prompt"),
            (json!({"suffix": "end"}), "suffix"),
            (json!({"n": 0}), "n"),
            (json!({"n": 2, "best_of": 3}), "best_of"),
            (json!({"logprobs": 21}), "logprobs"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (json!({"min_tokens": 2}), "min_tokens"),
        ] {
            let mut body = json!({"model": "m", "prompt": "hi"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(rejected(body).as_deref(), Some(param), "{extra}");
        }
        // What is harmless passes.
        let ok = json!({"model": "m", "prompt": "hi", "suffix": "", "n": 2, "best_of": 2,
                        "max_tokens": 0, "echo": true, "logprobs": 5, "user": "u",
                        "stream_options": null});
        assert_eq!(rejected(ok), None);
    }

    #[test]
    fn a_wrong_prompt_type_names_the_field() {
        let e = request(json!({"model": "m", "prompt": {"text": "hi"}})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"), "{e:?}");
    }

    #[test]
    fn a_prompt_scored_has_no_entry_for_its_first_token() {
        let lp = |id| TokenLogprob {
            id,
            logprob: -1.0,
            top: Vec::new(),
        };
        let scored = [lp(8), lp(9)];
        let entries: Vec<_> = prompt_entries(&[7, 8, 9], &scored)
            .map(|(id, lp)| (id, lp.map(|l| l.id)))
            .collect();
        assert_eq!(entries, [(7, None), (8, Some(8)), (9, Some(9))]);
    }
}
