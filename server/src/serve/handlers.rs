//! The HTTP handlers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use switchyard_engine::{
    DeltaKind, Event, GenerationParams, GenerationRequest, GenerationStream, Prompt, Thinking,
};
use switchyard_models::text::ChatMessage;
use switchyard_router::config::{ReasoningBudgets, ReasoningEffort};
use switchyard_router::{Action, BlockReason, Decision, Reasoning};

use super::api::{ChatRequest, Checked, Usage};
use super::error::ApiError;
use super::generation::{
    add_server_timing, answer, check_accepting, check_choices, collect_all, known_stream, refusal,
    request_usage, sse_response, stream_permit, submit, usage_chunk, ChoiceItem, Outcome, Pending,
    StreamMeta,
};
use super::tool_calls::{finish_reason_with_calls, openai_tool_calls, CallSplitter};
use super::State;

pub(super) type Shared = AxumState<Arc<State>>;

/// How far past the body limit an oversized body is still read (and dropped) before the 413.
const DRAIN_FACTOR: u64 = 4;

/// Answers 413 before reading a byte of a body whose `Content-Length` is over the limit when the
/// client waits for `100 Continue` (it then never sends the body) or the body is over
/// `DRAIN_FACTOR` times the limit. A moderately oversized body goes on to [`read_body`], which
/// reads and drops it before the 413, so a client that writes its whole body before reading the
/// answer (reqwest does) gets the 413 instead of a reset connection.
pub async fn reject_oversized(AxumState(state): Shared, request: Request, next: Next) -> Response {
    let limit = state.limits.body_bytes as u64;
    let refuse_now = {
        let headers = request.headers();
        let declared = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let waits = headers
            .get(axum::http::header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        declared.is_some_and(|n| n > limit && (waits || n > limit.saturating_mul(DRAIN_FACTOR)))
    };
    if refuse_now {
        return ApiError::too_large(state.limits.body_bytes).into_response();
    }
    next.run(request).await
}

/// Reads the whole request body within the read timeout (408 when it does not arrive in time,
/// 413 past the body limit), so that a client sending its body slowly cannot hold a request open;
/// the handlers then get the buffered body.
pub async fn read_body(AxumState(state): Shared, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limit = state.limits.body_bytes;
    match tokio::time::timeout(state.limits.read_timeout, read_limited(body, limit)).await {
        Ok(Ok(Some(bytes))) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Ok(None)) => ApiError::too_large(limit).into_response(),
        Ok(Err(e)) => {
            ApiError::bad_request(format!("could not read the request body: {e}")).into_response()
        }
        Err(_) => ApiError::body_timeout(state.limits.read_timeout.as_secs()).into_response(),
    }
}

/// The body if it is at most `limit` bytes, else `None`. An oversized body is read on (and
/// dropped) up to `DRAIN_FACTOR` times the limit before the answer: a client still writing it
/// then reads the 413 instead of a reset connection (lingering close, as nginx does).
async fn read_limited(mut body: Body, limit: usize) -> Result<Option<Bytes>, axum::Error> {
    use http_body_util::BodyExt;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen as u64 > (limit as u64).saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    Ok((seen <= limit).then(|| Bytes::from(kept)))
}

/// Checks `Authorization: Bearer <key>` on `/v1/*`, `/tokenize` and `/detokenize` when keys are
/// configured.
pub async fn authenticate(AxumState(state): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let guarded = path.starts_with("/v1/") || path == "/tokenize" || path == "/detokenize";
    if !state.api_keys.is_empty() && guarded {
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|p| {
            // Every key is compared, each in time independent of where the bytes differ.
            state
                .api_keys
                .iter()
                .fold(false, |found, key| found | same_secret(p, key))
        });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Equality whose time does not depend on the position of the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Logs every request (method, path, status, time) at `info`, one line each.
pub async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = format_args!("{:.1}", start.elapsed().as_secs_f64() * 1e3),
        "request"
    );
    response
}

/// 404 for unknown paths, in the same error shape.
pub async fn not_found(request: Request) -> ApiError {
    let mut e = ApiError::bad_request(format!(
        "No route for {} {}",
        request.method(),
        request.uri().path()
    ));
    e.status = StatusCode::NOT_FOUND;
    e
}

/// 405 for a known path with the wrong method, in the same error shape.
pub async fn method_not_allowed(request: Request) -> ApiError {
    let mut e = ApiError::bad_request(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}

/// `GET /health`: the process is alive and every engine's worker runs (503 otherwise, so that
/// an orchestrator restarts it).
pub async fn health(AxumState(state): Shared) -> Response {
    match state.stopped_engine() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(model) => {
            ApiError::unavailable(format!("the engine worker of `{model}` stopped")).into_response()
        }
    }
}

/// `GET /ready`: models loaded and accepting requests.
pub async fn ready(AxumState(state): Shared) -> Response {
    if !state.accepting.load(Ordering::SeqCst) {
        ApiError::unavailable("shutting down").into_response()
    } else if let Some(model) = state.stopped_engine() {
        ApiError::unavailable(format!("the engine worker of `{model}` stopped")).into_response()
    } else {
        Json(json!({"status": "ready", "models": state.served()})).into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(AxumState(state): Shared) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(&state),
    )
        .into_response()
}

/// The model objects `GET /v1/models` lists: the served models, then the auto model.
pub(super) fn model_objects(state: &State) -> Vec<Value> {
    let mut data: Vec<Value> = state
        .engines
        .iter()
        .map(|(id, e)| {
            json!({"id": id, "object": "model", "created": state.started, "owned_by": "switchyard",
                   "max_model_len": e.max_model_len()})
        })
        .collect();
    if state.router.is_some() {
        data.push(
            json!({"id": state.auto_model, "object": "model", "created": state.started,
                         "owned_by": "switchyard", "routed": true}),
        );
    }
    data
}

/// `GET /v1/models`.
pub async fn models(AxumState(state): Shared) -> Json<Value> {
    Json(json!({"object": "list", "data": model_objects(&state)}))
}

/// `GET /v1/models/{id}`.
pub async fn model(
    AxumState(state): Shared,
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Value>, ApiError> {
    // An id that is not UTF-8 once percent-decoded gets the JSON error shape too.
    let axum::extract::Path(id) = id.map_err(|r| ApiError::bad_request(r.body_text()))?;
    model_objects(&state)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::unknown_model(&id, &state.served()))
}

/// The request's body, or the error for a body that could not be read (413 past the limit).
pub(super) fn body_bytes(
    state: &State,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.limits.body_bytes)
        } else {
            ApiError::bad_request(r.body_text())
        }
    })
}

fn parse_body(
    state: &State,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(ChatRequest, Checked), ApiError> {
    let request: ChatRequest = parse_json(&body_bytes(state, body)?)?;
    let checked = request.validate()?;
    Ok((request, checked))
}

/// A JSON body as `T`; a malformed body or a field of the wrong type is a 400 `invalid_json` whose
/// message and `param` name the field (`messages[0].content`), as far as the parser got; an absent
/// required field a 400 `missing_required_parameter` naming it (`messages[0].role`).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let invalid = |path: String, e: serde_json::Error| {
        // serde_path_to_error writes `.` for the root and `?` where the syntax broke off.
        let at = (path != "." && path != "?").then_some(path);
        // A required field that is absent is named as OpenAI names it: its own path as `param`.
        let missing = e
            .to_string()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(|field| match &at {
                Some(p) => format!("{p}.{field}"),
                None => field.to_string(),
            });
        let mut a = ApiError::bad_request(match &at {
            Some(p) => format!("Invalid JSON body at `{p}`: {e}"),
            None => format!("Invalid JSON body: {e}"),
        });
        a.code = Some(if missing.is_some() {
            "missing_required_parameter"
        } else {
            "invalid_json"
        });
        a.param = missing.or(at);
        a
    };
    // JSON is UTF-8 (RFC 8259) throughout, also in fields the request type skips. Checked once
    // here; the parser then reads the text without checking it again.
    let text = std::str::from_utf8(body).map_err(|e| {
        let mut a = ApiError::bad_request(format!("Invalid JSON body: not UTF-8 ({e})"));
        a.code = Some("invalid_json");
        a
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| invalid(e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| invalid(".".into(), e))?;
    Ok(value)
}

/// What the request will be generated as.
pub(super) struct Plan {
    /// Served model id.
    pub(super) model: String,
    pub(super) messages: Vec<ChatMessage>,
    pub(super) thinking: Thinking,
    pub(super) decision: Option<Decision>,
}

fn effort_budget(state: &State, effort: &str) -> Option<usize> {
    let budgets = state
        .router
        .as_ref()
        .map_or_else(ReasoningBudgets::default, |r| r.config().reasoning_budgets);
    let e = match effort {
        "low" => ReasoningEffort::Low,
        "medium" => ReasoningEffort::Medium,
        "high" => ReasoningEffort::High,
        _ => return None,
    };
    Some(budgets.budget(e))
}

/// Message text up to which a request is read and tokenized for routing on the async thread.
const INLINE_ROUTE_BYTES: usize = 4096;

/// Asks the router and records its time.
///
/// Reading and tokenizing a long request runs on a blocking thread (its text and guard windows
/// take milliseconds that would hold up an async worker and every connection on it); a short one's
/// (tens of microseconds) runs in place, sparing the hop. Waiting for the backbone holds no thread.
pub(super) async fn route_messages(
    state: &State,
    router: &Arc<switchyard_router::Router>,
    messages: &[ChatMessage],
) -> Result<Decision, ApiError> {
    let text_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    let begun = if text_bytes <= INLINE_ROUTE_BYTES {
        router.begin_route(messages)
    } else {
        let (blocking, owned) = (Arc::clone(router), messages.to_vec());
        tokio::task::spawn_blocking(move || blocking.begin_route(&owned))
            .await
            .map_err(|e| ApiError::internal(format!("routing failed: {e}")))?
    };
    let routed = match begun {
        Ok(begun) => router.complete_route(begun).await,
        Err(e) => Err(e),
    };
    let decision = routed.map_err(|e| match e {
        // The client's to fix: a 400 naming the field, like a prompt over the context.
        e @ switchyard_router::RouterError::TooLong { .. } => {
            ApiError::invalid("messages", e.to_string())
        }
        e @ switchyard_router::RouterError::Stopped => ApiError::unavailable(e.to_string()),
        e => ApiError::internal(format!("routing failed: {e}")),
    })?;
    state
        .metrics
        .route_seconds
        .with_label_values(&[&decision.category])
        .observe(decision.route_time.as_secs_f64());
    Ok(decision)
}

/// Routes (for the auto model) and applies the explicit reasoning fields.
async fn plan(state: &State, request: &ChatRequest) -> Result<Plan, ApiError> {
    let mut messages = request.chat_messages()?;
    let (model, mut thinking, decision) = if request.model == state.auto_model {
        let router = state
            .router
            .as_ref()
            .ok_or_else(|| ApiError::unknown_model(&request.model, &state.served()))?;
        let decision = route_messages(state, router, &messages).await?;
        let model = state
            .aliases
            .get(&decision.model)
            .cloned()
            .unwrap_or_else(|| decision.model.clone());
        if !state.engines.contains_key(&model) {
            return Err(ApiError::internal(format!(
                "the router chose `{model}`, which is not served"
            )));
        }
        decision.apply(&mut messages);
        let thinking = match decision.reasoning {
            Reasoning::Fast => Thinking::Off,
            Reasoning::Thinking { budget, .. } => Thinking::On {
                budget: Some(budget),
            },
        };
        (model, thinking, Some(decision))
    } else if state.engines.contains_key(&request.model) {
        (request.model.clone(), Thinking::Off, None)
    } else if let Some(served) = state.aliases.get(&request.model) {
        // A routing target name this server answers for (see `serve` start-up).
        (served.clone(), Thinking::Off, None)
    } else {
        return Err(ApiError::unknown_model(&request.model, &state.served()));
    };
    // Explicit reasoning fields win over the router.
    if let Some(effort) = &request.reasoning_effort {
        thinking = match effort_budget(state, effort) {
            Some(budget) => Thinking::On {
                budget: Some(budget),
            },
            None => Thinking::Off,
        };
    }
    if let Some(on) = request
        .chat_template_kwargs
        .as_ref()
        .and_then(|k| k.enable_thinking)
    {
        thinking = match (on, thinking) {
            (false, _) => Thinking::Off,
            (true, Thinking::On { budget }) => Thinking::On { budget },
            (true, Thinking::Off) => Thinking::On {
                budget: effort_budget(state, "medium"),
            },
        };
    }
    Ok(Plan {
        model,
        messages,
        thinking,
        decision,
    })
}

pub(super) fn decision_headers(plan: &Plan) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    let blocked = plan.decision.as_ref().is_some_and(Decision::is_blocked);
    put("x-switchyard-model", plan.model.clone());
    put(
        "x-switchyard-reasoning",
        // A blocked request generates nothing, thinking included.
        if blocked {
            "off"
        } else {
            reasoning_label(plan.thinking)
        }
        .into(),
    );
    if let Some(d) = &plan.decision {
        put("x-switchyard-category", d.category.clone());
        put(
            "x-switchyard-route-ms",
            format!("{:.3}", d.route_time.as_secs_f64() * 1e3),
        );
        if let Action::Block { reason, .. } = &d.action {
            put("x-switchyard-blocked", blocked_label(*reason).into());
        }
        if d.jailbreak_flagged {
            put("x-switchyard-flagged", "jailbreak".into());
        }
    }
    h
}

/// The `Server-Timing` header (W3C) of a generated request: `route` (the router's time, routed
/// requests only) and `admit` (from the request's arrival to its sequences queued in the engine:
/// parsing, routing, the chat template and tokenization), in milliseconds. What the server itself
/// spends before generating, without the network and client around it.
pub(super) fn server_timing(route: Option<Duration>, admitted: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut v = String::new();
    if let Some(r) = route {
        v.push_str(&format!("route;dur={:.3}, ", ms(r)));
    }
    v.push_str(&format!("admit;dur={:.3}", ms(admitted)));
    v
}

/// The `x-switchyard-blocked` value.
pub(super) fn blocked_label(reason: BlockReason) -> &'static str {
    match reason {
        BlockReason::Jailbreak => "jailbreak",
        BlockReason::Pii => "pii",
    }
}

fn reasoning_label(thinking: Thinking) -> &'static str {
    if matches!(thinking, Thinking::On { .. }) {
        "on"
    } else {
        "off"
    }
}

pub(super) fn completion_id() -> String {
    format!("chatcmpl-{:032x}", rand::random::<u128>())
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/route`: the router's decision, without generating.
pub async fn route(
    AxumState(state): Shared,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let result = async {
        let (request, _) = parse_body(&state, body)?;
        let router = state
            .router
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("routing is off on this server"))?;
        let messages = request.chat_messages()?;
        let decision = route_messages(&state, router, &messages).await?;
        state
            .metrics
            .requests
            .with_label_values(&[
                "route",
                &decision.model,
                &decision.category,
                reasoning_label(match decision.reasoning {
                    Reasoning::Fast => Thinking::Off,
                    Reasoning::Thinking { budget, .. } => Thinking::On {
                        budget: Some(budget),
                    },
                }),
                "200",
            ])
            .inc();
        let mut v =
            serde_json::to_value(&decision).map_err(|e| ApiError::internal(e.to_string()))?;
        v["served_model"] = json!(state
            .aliases
            .get(&decision.model)
            .unwrap_or(&decision.model));
        v["blocked"] = json!(decision.is_blocked());
        Ok::<_, ApiError>(Json(v).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    AxumState(state): Shared,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let pending = Pending::new(&state, "chat");
    let result = chat(state.clone(), body, &pending).await;
    pending.settle();
    answer(&state, "chat", result)
}

/// The `max_tokens` a request gets: its own (at most the server's ceiling), else the ceiling.
fn max_tokens(state: &State, request: &ChatRequest) -> Result<usize, ApiError> {
    let limit = state.limits.max_tokens;
    // Name the field the client sent (`max_completion_tokens` wins when both are).
    let field = if request.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    match request.max_new_tokens() {
        Some(0) => Err(ApiError::invalid(field, "must be at least 1")),
        Some(n) if n > limit => Err(ApiError::invalid(
            field,
            format!("{n} is more than this server's limit of {limit}"),
        )),
        Some(n) => Ok(n),
        None => Ok(limit),
    }
}

async fn chat(
    state: Arc<State>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    pending: &Pending,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let arrived = Instant::now();
    let (request, checked) = parse_body(&state, body)?;
    let max_tokens = max_tokens(&state, &request)?;
    let choices = request.n.unwrap_or(1);
    check_choices(&state, choices)?;
    let plan = plan(&state, &request).await?;
    let mut headers = decision_headers(&plan);
    let id = completion_id();
    let created = now();

    if let Some(message) = refusal(&state, "chat", &plan) {
        return Ok(blocked_response(
            &request,
            &plan.model,
            &id,
            created,
            message,
            headers,
        ));
    }

    let stream_permit = stream_permit(&state, request.streamed())?;
    let Checked {
        logit_bias,
        response_format,
        tool_use,
    } = checked;
    let tool_use = tool_use.map(|mut tools| {
        if request.parallel_tool_calls.is_none() {
            tools.parallel = state.engines[&plan.model].parallel_tool_calls_by_default();
        }
        tools
    });
    let generation = GenerationRequest {
        prompt: Prompt::Chat(plan.messages.clone()),
        params: GenerationParams {
            sampling: request.sampling().params(logit_bias),
            max_tokens: Some(max_tokens),
            stop: request.stop_strings(),
            stop_token_ids: request.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: request.ignore_eos.unwrap_or(false),
            thinking: plan.thinking,
            logprobs: request.logprobs_wanted(),
            prompt_logprobs: None,
            split_thinking: true,
            response_format,
            tools: tool_use.clone(),
            use_prefix_cache: request.cache_prompt.unwrap_or(true),
            template_vars: request.template_vars(),
        },
    };
    // Rendering the template and tokenizing a long prompt is CPU work: keep it off the threads
    // that move other requests' bytes.
    let streams = submit(&state, &plan.model, vec![generation], choices, "messages").await?;
    add_server_timing(
        &mut headers,
        plan.decision.as_ref().map(|d| d.route_time),
        arrived,
    );
    let mut outcome = Outcome::new(&state, "chat", &plan, reasoning_label(plan.thinking));
    pending.settle();
    if request.streamed() {
        let wants_logprobs = request.logprobs_wanted().is_some();
        let model = plan.model.clone();
        let per_choice: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(index, stream)| {
                choice_events(ChoiceState {
                    index,
                    stream,
                    state: state.clone(),
                    model: model.clone(),
                    id: id.clone(),
                    created,
                    phase: Phase::Start,
                    last_token: None,
                    logprobs: wants_logprobs.then(Vec::new),
                    calls: tool_use.as_ref().map(|t| {
                        (
                            CallSplitter::new(t.functions.clone()),
                            finish_reason_with_calls(&t.choice),
                        )
                    }),
                })
                .boxed()
            })
            .collect();
        let meta = StreamMeta {
            id,
            object: "chat.completion.chunk",
            created,
            include_usage: request.include_usage(),
            choices_per_prompt: per_choice.len(),
        };
        Ok(sse_response(
            &state,
            per_choice,
            meta,
            outcome,
            stream_permit,
            headers,
        ))
    } else {
        let wants_logprobs = request.logprobs_wanted().is_some();
        let done = match collect_all(&state, &streams, wants_logprobs, &mut outcome).await {
            Ok(done) => done,
            Err(response) => return Ok(response),
        };
        let usages: Vec<_> = done.iter().map(|c| c.usage).collect();
        let usage = request_usage(&usages, usages.len());
        outcome.finished(&usage);
        let choices: Vec<Value> = done
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let mut message = json!({"role": "assistant", "content": c.content});
                let mut finish = c.finish;
                if let Some(tools) = &tool_use {
                    let (content, calls) = CallSplitter::split(tools.functions.clone(), &c.content);
                    if let Some(calls) = calls {
                        // OpenAI sends `content: null` with calls and no text.
                        message["content"] = if content.is_empty() {
                            Value::Null
                        } else {
                            json!(content)
                        };
                        message["tool_calls"] = openai_tool_calls(&calls, false);
                        finish = finish_reason_with_calls(&tools.choice);
                    }
                }
                if !c.reasoning.is_empty() {
                    message["reasoning_content"] = json!(c.reasoning);
                }
                let logprobs = c.logprobs.map(|lps| {
                    let engine = &state.engines[&plan.model];
                    lps.iter()
                        .map(|lp| super::logprobs::entry(engine, lp))
                        .collect()
                });
                json!({"index": index, "message": message, "finish_reason": finish,
                       "logprobs": super::logprobs::field(logprobs)})
            })
            .collect();
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": plan.model,
            "choices": choices,
            "usage": Usage::from_engine(&usage),
        });
        let mut response = Json(body).into_response();
        response.headers_mut().extend(headers);
        Ok(response)
    }
}

/// A streamed chunk of choice `index`.
#[allow(clippy::too_many_arguments)]
fn chunk(
    id: &str,
    created: u64,
    model: &str,
    index: usize,
    delta: Value,
    finish: Option<&str>,
    logprobs: Value,
) -> SseEvent {
    SseEvent::default().data(
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        })
        .to_string(),
    )
}

enum Phase {
    Start,
    Body,
    Done,
}

/// One choice of a streamed completion in progress.
struct ChoiceState {
    index: usize,
    stream: GenerationStream,
    state: Arc<State>,
    model: String,
    id: String,
    created: u64,
    phase: Phase,
    last_token: Option<Instant>,
    /// Log-probabilities of the tokens whose text has not been sent yet (`None`: not asked for).
    logprobs: Option<Vec<Value>>,
    /// Splits call blocks from the content when the request offered tools, with the finish
    /// reason of an answer that made calls.
    calls: Option<(CallSplitter, &'static str)>,
}

impl ChoiceState {
    /// The `logprobs` of the next chunk: what has gathered since the last one.
    fn take_logprobs(&mut self) -> Value {
        super::logprobs::field(self.logprobs.as_mut().map(std::mem::take))
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> ChoiceItem {
        ChoiceItem::Chunk(chunk(
            &self.id,
            self.created,
            &self.model,
            self.index,
            delta,
            finish,
            logprobs,
        ))
    }
}

/// One choice's items: a role chunk, a chunk per text delta (`content` or `reasoning_content`),
/// a chunk with the finish reason and then `Finished`, or `Failed`.
fn choice_events(c: ChoiceState) -> impl Stream<Item = ChoiceItem> {
    stream::unfold(c, |mut c| async move {
        let items: Vec<ChoiceItem> = match c.phase {
            Phase::Start => {
                c.phase = Phase::Body;
                vec![c.chunk(
                    json!({"role": "assistant", "content": ""}),
                    None,
                    Value::Null,
                )]
            }
            Phase::Done => return None,
            Phase::Body => match c.stream.recv_async().await {
                Some(Event::Delta { kind, text }) => {
                    let now = Instant::now();
                    if let Some(last) = c.last_token {
                        c.state
                            .metrics
                            .inter_token_seconds
                            .with_label_values(&[&c.model])
                            .observe((now - last).as_secs_f64());
                    }
                    c.last_token = Some(now);
                    let delta = match (kind, c.calls.as_mut()) {
                        (DeltaKind::Content, Some((splitter, _))) => {
                            let content = splitter.push(&text);
                            if content.is_empty() {
                                // Held back (a call, or what may start one); its log-probabilities
                                // go with the next chunk sent.
                                return Some((stream::iter(Vec::new()), c));
                            }
                            json!({"content": content})
                        }
                        (DeltaKind::Content, None) => json!({"content": text}),
                        (DeltaKind::Reasoning, _) => json!({"reasoning_content": text}),
                    };
                    let logprobs = c.take_logprobs();
                    vec![c.chunk(delta, None, logprobs)]
                }
                // Chat never asks for the prompt's.
                Some(Event::PromptLogprob(_)) => Vec::new(),
                Some(Event::Logprob(lp)) => {
                    // Sent with the chunk of the text the token adds.
                    if let Some(entries) = c.logprobs.as_mut() {
                        entries.push(super::logprobs::entry(&c.state.engines[&c.model], &lp));
                    }
                    Vec::new()
                }
                Some(Event::Finished { reason, usage, .. }) => {
                    c.phase = Phase::Done;
                    let mut items = Vec::new();
                    let mut finish = reason.as_str();
                    if let Some((splitter, with_calls)) = c.calls.take() {
                        let (rest, calls) = splitter.finish();
                        if !rest.is_empty() {
                            let logprobs = c.take_logprobs();
                            items.push(c.chunk(json!({"content": rest}), None, logprobs));
                        }
                        if let Some(calls) = calls {
                            let logprobs = c.take_logprobs();
                            let delta = json!({"tool_calls": openai_tool_calls(&calls, true)});
                            items.push(c.chunk(delta, None, logprobs));
                            finish = with_calls;
                        }
                    }
                    let logprobs = c.take_logprobs();
                    items.push(c.chunk(json!({}), Some(finish), logprobs));
                    items.push(ChoiceItem::Finished {
                        index: c.index,
                        usage,
                    });
                    items
                }
                Some(Event::Error(e)) => {
                    c.phase = Phase::Done;
                    vec![ChoiceItem::Failed(
                        "500",
                        ApiError::internal(format!("generation failed: {e}")),
                    )]
                }
                None => {
                    c.phase = Phase::Done;
                    vec![ChoiceItem::Failed(
                        "503",
                        ApiError::unavailable("the engine stopped"),
                    )]
                }
            },
        };
        Some((stream::iter(items), c))
    })
    .flatten()
}

pub(super) fn blocked_response(
    request: &ChatRequest,
    model: &str,
    id: &str,
    created: u64,
    message: &str,
    headers: HeaderMap,
) -> Response {
    let usage = Usage::from_engine(&switchyard_engine::Usage::default());
    let choices = request.n.unwrap_or(1);
    // Asked for, log-probabilities are an empty list: no token was generated.
    let logprobs = if request.logprobs == Some(true) {
        json!({"content": []})
    } else {
        Value::Null
    };
    let mut response = if request.streamed() {
        let mut events = Vec::new();
        for index in 0..choices {
            events.push(chunk(
                id,
                created,
                model,
                index,
                json!({"role": "assistant", "content": message}),
                None,
                logprobs.clone(),
            ));
            events.push(chunk(
                id,
                created,
                model,
                index,
                json!({}),
                Some("content_filter"),
                Value::Null,
            ));
        }
        if request.include_usage() {
            events.push(usage_chunk(
                id,
                "chat.completion.chunk",
                created,
                model,
                &usage,
            ));
        }
        known_stream(events)
    } else {
        Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": (0..choices).map(|index| json!({"index": index,
                         "message": {"role": "assistant", "content": message},
                         "finish_reason": "content_filter", "logprobs": logprobs})).collect::<Vec<_>>(),
            "usage": usage,
        }))
        .into_response()
    };
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret("key-1", "key-1"));
        assert!(!same_secret("key-1", "key-2"));
        assert!(!same_secret("key-1", "key-10"));
        assert!(!same_secret("", "k"));
        assert!(same_secret("", ""));
    }
}
