//! Router-only proxy mode (`serve --upstream URL`): the deployment the vLLM Semantic Router uses, kept
//! as the baseline that `bench overhead` compares in-process routing with, and usable on its own in
//! front of any OpenAI-compatible server. A chat or text completion for the auto model is routed
//! here, its body re-serialised with the chosen model (and, for chat, the thinking switch) and
//! forwarded over HTTP to the upstream inference server; the upstream's answer (streamed or not) is
//! passed through with the routing headers added. Requests for other models, `/tokenize` and
//! `/detokenize` are forwarded unchanged; `/v1/models` lists the upstream's models and the auto one
//! (none of its own without a router: `auto` then goes upstream as it came).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};
use switchyard_models::text::ChatMessage;
use switchyard_router::config::{ReasoningFamily, ReasoningFamilyKind};
use switchyard_router::input::{apply_system_prompt, SystemTurn};
use switchyard_router::{Action, Decision, Reasoning};

use super::completions::{self, CompletionRequest};
use super::error::ApiError;
use super::generation::{answer, check_accepting, check_choices, cut_off};
use super::handlers::{self, blocked_label, body_bytes, parse_json, route_messages, Shared};
use super::State;

/// The proxy's endpoints: the generation and token endpoints go upstream; routing, health and
/// metrics are answered here.
pub fn routes() -> axum::Router<Arc<State>> {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(text_completions))
        .route("/v1/route", post(handlers::route))
        .route("/tokenize", post(unchanged))
        .route("/detokenize", post(unchanged))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
}

/// `POST /v1/chat/completions`, routed and forwarded.
async fn chat_completions(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = forward_chat(state.clone(), credentials(&state, &headers), body).await;
    answer(&state, "chat", result)
}

/// `POST /v1/completions`, routed and forwarded.
async fn text_completions(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = forward_completion(state.clone(), credentials(&state, &headers), body).await;
    answer(&state, "completions", result)
}

/// `POST /tokenize` and `POST /detokenize`, forwarded unchanged to the same path upstream.
async fn unchanged(
    axum::extract::State(state): Shared,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&state, body)?;
    relay(&state, uri.path(), credentials(&state, &headers), body).await
}

/// `GET /v1/models`: the upstream's models, then the auto model this proxy routes.
async fn models(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let data = model_list(&state, credentials(&state, &headers)).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}`.
async fn model(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let list = model_list(&state, credentials(&state, &headers)).await?;
    let ids: Vec<String> = list
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    list.into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::unknown_model(&id, &ids))
}

/// The upstream's model objects followed by this proxy's own (the auto model), each id once.
async fn model_list(state: &State, auth: Credentials) -> Result<Vec<Value>, ApiError> {
    let upstream = upstream(state)?;
    let response = ask_upstream(
        state,
        with_credentials(state.http.get(format!("{upstream}/v1/models")), auth),
    )
    .await?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(ApiError::unauthorized());
    }
    let response = response
        .error_for_status()
        .map_err(|e| ApiError::unavailable(format!("upstream {upstream}: {e}")))?;
    let listed: Value = response
        .json()
        .await
        .map_err(|e| ApiError::unavailable(format!("upstream {upstream}: {e}")))?;
    let own = handlers::model_objects(state);
    // An upstream that routes too lists its own auto model: the proxy's answers for that name.
    let mut data = listed["data"].as_array().cloned().unwrap_or_default();
    data.retain(|m| !own.iter().any(|o| o["id"] == m["id"]));
    data.extend(own);
    Ok(data)
}

/// The `Authorization` header sent upstream: the proxy's `--upstream-api-key` when it has one,
/// otherwise the client's header as the client sent it (the proxy checks its own `--api-key`s
/// first when it has any; the upstream checks its own).
type Credentials = Option<HeaderValue>;

fn credentials(state: &State, headers: &HeaderMap) -> Credentials {
    state
        .upstream_auth
        .clone()
        .or_else(|| headers.get(axum::http::header::AUTHORIZATION).cloned())
}

/// `Authorization: Bearer KEY` for `--upstream-api-key`, marked sensitive so it is never logged.
pub(super) fn upstream_authorization(key: Option<&str>) -> anyhow::Result<Option<HeaderValue>> {
    let Some(key) = key.map(str::trim) else {
        return Ok(None);
    };
    anyhow::ensure!(!key.is_empty(), "--upstream-api-key is empty");
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
        anyhow::anyhow!("--upstream-api-key holds characters a header cannot carry")
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

fn with_credentials(
    request: reqwest::RequestBuilder,
    auth: Credentials,
) -> reqwest::RequestBuilder {
    match auth {
        Some(value) => request.header(reqwest::header::AUTHORIZATION, value.as_bytes()),
        None => request,
    }
}

/// Sends `request` upstream and waits for its response head: a 503 when the upstream cannot be
/// reached, a 504 when it does not start its answer within `--upstream-timeout`, the shutdown 503
/// (`server_shutdown`) when this server's grace period ends first.
async fn ask_upstream(
    state: &State,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ApiError> {
    let upstream = upstream(state)?;
    let mut stop = state.hard_stop.subscribe();
    let answer = tokio::select! {
        answer = tokio::time::timeout(state.upstream_timeout, request.send()) => answer,
        Ok(_) = stop.wait_for(|stop| *stop) => return Err(cut_off()),
    };
    match answer {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("upstream {upstream}: {e}"))),
        Err(_) => Err(ApiError::upstream_timeout(state.upstream_timeout.as_secs())),
    }
}

/// The upstream server's base URL.
fn upstream(state: &State) -> Result<&str, ApiError> {
    state
        .upstream
        .as_deref()
        .ok_or_else(|| ApiError::internal("proxy route without an upstream"))
}

/// The routing headers every routed answer carries.
fn decision_headers(decision: &Decision) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("x-switchyard-category", decision.category.clone()),
        (
            "x-switchyard-route-ms",
            format!("{:.3}", decision.route_time.as_secs_f64() * 1e3),
        ),
    ];
    if decision.jailbreak_flagged {
        headers.push(("x-switchyard-flagged", "jailbreak".to_string()));
    }
    headers
}

fn header_map(extra: Vec<(&'static str, String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    headers
}

/// The client's messages as the decision rewrites them: PII masked in the texts it was found in
/// and the route's system prompt applied, every other field of every message (tool calls and their
/// ids, names, earlier reasoning) as the client sent it. `messages` are the client's messages as the
/// router read them, one per entry of `original`.
fn routed_messages(
    original: &Value,
    mut messages: Vec<ChatMessage>,
    decision: &Decision,
) -> Result<Value, ApiError> {
    if original.as_array().map_or(0, Vec::len) != messages.len() {
        return Err(ApiError::internal(
            "the routed messages no longer match the request's",
        ));
    }
    let unmasked = messages.clone();
    decision.mask(&mut messages);
    let mut outgoing: Vec<Outgoing> = original
        .as_array()
        .into_iter()
        .flatten()
        .zip(unmasked.iter().zip(messages))
        .map(|(json, (before, after))| {
            let mut json = json.clone();
            if after.content != before.content {
                json["content"] = json!(after.content);
            }
            Outgoing {
                json,
                text: after.content,
            }
        })
        .collect();
    if let Some(prompt) = &decision.system_prompt {
        apply_system_prompt(&mut outgoing, prompt);
    }
    Ok(Value::Array(outgoing.into_iter().map(|m| m.json).collect()))
}

/// A client's message on its way upstream: its JSON, and its text as the router read it.
struct Outgoing {
    json: Value,
    text: String,
}

impl SystemTurn for Outgoing {
    fn system(text: &str) -> Self {
        Outgoing {
            json: json!({"role": "system", "content": text}),
            text: text.to_string(),
        }
    }

    fn is_system(&self) -> bool {
        // `developer` is the system role's newer name.
        matches!(self.json["role"].as_str(), Some("system" | "developer"))
    }

    fn prepend(&mut self, text: &str) {
        let mut turn = ChatMessage::new("system", std::mem::take(&mut self.text));
        turn.prepend(text);
        self.json["content"] = json!(turn.content);
        self.text = turn.content;
    }
}

/// One chat request: routed when it names the auto model, then forwarded.
async fn forward_chat(
    state: Arc<State>,
    auth: Credentials,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let arrived = Instant::now();
    let body = body_bytes(&state, body)?;
    let mut request: Value = parse_json(&body)?;
    let mut extra = Vec::new();
    let mut route_time = None;
    let mut counted = Counted::unrouted("chat", &request);
    // Without a router (`--no-router`) the proxy routes nothing and lists no auto model of its
    // own: every request, `auto` included, goes upstream as it came.
    if let Some(router) = state
        .router
        .as_ref()
        .filter(|_| request["model"] == json!(state.auto_model))
    {
        let parsed: super::api::ChatRequest = parse_json(&body)?;
        parsed.validate()?;
        check_choices(&state, parsed.n.unwrap_or(1))?;
        let messages = parsed.chat_messages()?;
        let decision = route_messages(&state, router, &messages).await?;
        route_time = Some(decision.route_time);
        extra.extend(decision_headers(&decision));
        counted = Counted::routed("chat", &decision);
        if let Action::Block { message, reason } = &decision.action {
            // A refusal thinks about nothing, as the in-process path counts it.
            counted.reasoning = "off";
            counted.record(&state, "blocked");
            // Answered here, as the in-process path answers it (streamed if asked for).
            extra.push(("x-switchyard-blocked", blocked_label(*reason).to_string()));
            return Ok(handlers::blocked_response(
                &parsed,
                &decision.model,
                &handlers::completion_id(),
                handlers::now(),
                message,
                header_map(extra),
            ));
        }
        request["model"] = json!(decision.model);
        request["messages"] = routed_messages(&request["messages"], messages, &decision)?;
        // The client's own switch wins, as on the in-process path: Switchyard's, or the one the
        // target model's reasoning family names.
        let family = router.config().reasoning_family_for(&decision.model);
        match client_thinking_switch(&request, family) {
            // Counted as the switch the upstream gets (the in-process path counts it so too).
            Some(on) => counted.reasoning = if on { "on" } else { "off" },
            None => set_thinking_switch(&mut request, decision.reasoning, family),
        }
    }
    send(
        &state,
        "/v1/chat/completions",
        &request,
        auth,
        Routed {
            route_time,
            arrived,
            headers: extra,
            counted,
        },
    )
    .await
}

/// The thinking switch a client set itself, if any (`Some(on)`): Switchyard's
/// (`chat_template_kwargs.enable_thinking`, `reasoning_effort`), or the one the target model's
/// reasoning family names (DeepSeek's `chat_template_kwargs.thinking`, say).
fn client_thinking_switch(request: &Value, family: Option<&ReasoningFamily>) -> Option<bool> {
    let kwargs = &request["chat_template_kwargs"];
    let family_switch = family.map(|f| match f.kind {
        ReasoningFamilyKind::ChatTemplateKwargs => &kwargs[&f.parameter],
        ReasoningFamilyKind::ReasoningEffort => &request[&f.parameter],
    });
    let effort_off = |v: &Value| matches!(v.as_str(), Some("none" | "minimal"));
    [
        Some(&kwargs["enable_thinking"]),
        Some(&request["reasoning_effort"]),
        family_switch,
    ]
    .into_iter()
    .flatten()
    .find(|v| v.is_boolean() || v.is_string())
    .map(|v| v != &json!(false) && !effort_off(v))
}

/// Writes the route's thinking decision into a forwarded chat request the way the target model's
/// reasoning family switches it (`model_config.<model>.reasoning_family`, as the vLLM Semantic
/// Router does): a chat-template variable (`{"thinking": true}` for DeepSeek,
/// `{"enable_thinking": false}` for Qwen3), or a `reasoning_effort`-style parameter (gpt-oss, whose
/// thinking cannot be turned off: fast is `low`). A model with no family gets what a Switchyard
/// upstream reads: `enable_thinking: false` for fast, `reasoning_effort` (the route's effort) for
/// thinking. The client's other template variables stay.
fn set_thinking_switch(
    request: &mut Value,
    reasoning: Reasoning,
    family: Option<&ReasoningFamily>,
) {
    let thinking = reasoning.is_thinking();
    let effort = match reasoning {
        Reasoning::Thinking {
            effort: Some(e), ..
        } => e.to_string(),
        _ if thinking => "medium".to_string(),
        _ => "low".to_string(),
    };
    match family {
        Some(ReasoningFamily {
            kind: ReasoningFamilyKind::ChatTemplateKwargs,
            parameter,
        }) => {
            request["chat_template_kwargs"][parameter.as_str()] = json!(thinking);
        }
        Some(ReasoningFamily {
            kind: ReasoningFamilyKind::ReasoningEffort,
            parameter,
        }) => request[parameter.as_str()] = json!(effort),
        None if thinking => request["reasoning_effort"] = json!(effort),
        None => request["chat_template_kwargs"]["enable_thinking"] = json!(false),
    }
}

/// One text completion: routed when it names the auto model (one text prompt, masked as the route
/// says; a route's system prompt and thinking do not apply to a raw prompt), then forwarded.
async fn forward_completion(
    state: Arc<State>,
    auth: Credentials,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let arrived = Instant::now();
    let body = body_bytes(&state, body)?;
    let mut request: Value = parse_json(&body)?;
    let mut extra = Vec::new();
    let mut route_time = None;
    let mut counted = Counted::unrouted("completions", &request);
    // Without a router, as for chat: forwarded as it came.
    if state.router.is_some() && request["model"] == json!(state.auto_model) {
        let parsed: CompletionRequest = parse_json(&body)?;
        let (mut prompts, _) = parsed.validate()?;
        check_choices(&state, parsed.n.unwrap_or(1))?;
        let decision = completions::route_prompt(&state, &parsed.model, &mut prompts).await?;
        route_time = Some(decision.route_time);
        extra.extend(decision_headers(&decision));
        counted = Counted::routed("completions", &decision);
        if let Action::Block { message, reason } = &decision.action {
            // A refusal thinks about nothing, as the in-process path counts it.
            counted.reasoning = "off";
            counted.record(&state, "blocked");
            extra.push(("x-switchyard-blocked", blocked_label(*reason).to_string()));
            let choices = prompts.len() * parsed.n.unwrap_or(1);
            let mut response = completions::blocked(
                &parsed,
                &decision.model,
                &handlers::completion_id(),
                handlers::now(),
                message,
                choices,
            );
            response.headers_mut().extend(header_map(extra));
            return Ok(response);
        }
        request["model"] = json!(decision.model);
        if let [switchyard_engine::Prompt::Text(text)] = prompts.as_slice() {
            request["prompt"] = json!(text);
        }
    }
    send(
        &state,
        "/v1/completions",
        &request,
        auth,
        Routed {
            route_time,
            arrived,
            headers: extra,
            counted,
        },
    )
    .await
}

/// What the proxy adds to a forwarded generation request's answer.
struct Routed {
    /// The router's time, when the request was routed.
    route_time: Option<Duration>,
    /// When the request arrived here.
    arrived: Instant,
    /// The routing headers.
    headers: Vec<(&'static str, String)>,
    /// How the request is counted once the upstream answers.
    counted: Counted,
}

/// A proxied request's labels in `switchyard_requests_total`: counted when the upstream's answer
/// starts, under the upstream's status (or `blocked` when the router refused it here).
struct Counted {
    endpoint: &'static str,
    model: String,
    category: String,
    /// The thinking switch the upstream got from the route, or from the client when it set its
    /// own (`on` / `off`); empty for a request not routed here.
    reasoning: &'static str,
}

impl Counted {
    /// A request for a concrete model, passed on as it came.
    fn unrouted(endpoint: &'static str, request: &Value) -> Self {
        Self {
            endpoint,
            model: request["model"].as_str().unwrap_or_default().to_string(),
            category: String::new(),
            reasoning: "",
        }
    }

    /// A request the router decided.
    fn routed(endpoint: &'static str, decision: &Decision) -> Self {
        let thinking = matches!(decision.reasoning, Reasoning::Thinking { .. });
        Self {
            endpoint,
            model: decision.model.clone(),
            category: decision.category.clone(),
            reasoning: if thinking && endpoint == "chat" {
                "on"
            } else {
                "off"
            },
        }
    }

    fn record(&self, state: &State, status: &str) {
        state
            .metrics
            .requests
            .with_label_values(&[
                self.endpoint,
                &self.model,
                &self.category,
                self.reasoning,
                status,
            ])
            .inc();
    }
}

/// Posts `request` to the upstream's `path` and passes its answer through, with the routing
/// headers and the proxy's `Server-Timing`.
async fn send(
    state: &State,
    path: &str,
    request: &Value,
    auth: Credentials,
    routed: Routed,
) -> Result<Response, ApiError> {
    let Routed {
        route_time,
        arrived,
        headers: mut extra,
        mut counted,
    } = routed;
    let upstream = upstream(state)?;
    let upstream_response = ask_upstream(
        state,
        with_credentials(state.http.post(format!("{upstream}{path}")), auth).json(request),
    )
    .await?;
    let status = upstream_response.status();
    if !status.is_success() {
        // A name the upstream refused is the client's to choose: counted, as the in-process path
        // counts an error, under no model, so that no client can grow the label set.
        counted.model.clear();
    }
    counted.record(state, status.as_str());
    extra.push((
        "server-timing",
        server_timing(
            route_time,
            arrived.elapsed(),
            upstream_response.headers().get("server-timing"),
        ),
    ));
    let mut response = pass_through(upstream_response, state)?;
    response.headers_mut().extend(header_map(extra));
    Ok(response)
}

/// Posts a body to the upstream's `path` unchanged and passes its answer through.
async fn relay(
    state: &State,
    path: &str,
    auth: Credentials,
    body: Bytes,
) -> Result<Response, ApiError> {
    let upstream = upstream(state)?;
    let upstream_response = ask_upstream(
        state,
        with_credentials(state.http.post(format!("{upstream}{path}")), auth)
            .header("content-type", "application/json")
            .body(body),
    )
    .await?;
    pass_through(upstream_response, state)
}

/// The upstream's status, content type, `retry-after` and `x-switchyard-*` headers, and its body
/// as it streams ([`relayed`]).
fn pass_through(upstream_response: reqwest::Response, state: &State) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(upstream_response.status().as_u16())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for (name, value) in upstream_response.headers() {
        if name.as_str().starts_with("x-switchyard-")
            || name.as_str() == "content-type"
            || name.as_str() == "retry-after"
        {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    let events = upstream_response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    response
        .body(Body::from_stream(relayed(
            upstream_response.bytes_stream(),
            state.upstream_timeout,
            events,
            state.hard_stop.subscribe(),
        )))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The upstream's body chunk by chunk, each chunk due within `idle` of the one before. An event
/// stream is relayed whole event by whole event (a chunk's bytes after its last event wait for the
/// rest of that event, up to [`MAX_EVENT_BYTES`]). An upstream that falls silent for longer, whose
/// body breaks off or ends inside a line of an event, or sends a longer event, or the end of this
/// server's shutdown grace period (`stop`), ends an event stream with an error event and `[DONE]`
/// (the way this server ends a stream that cannot go on, which the OpenAI clients raise as an
/// error), the unfinished event dropped; any other body is cut short (the client sees an
/// incomplete response). Dropping the upstream's body closes its connection, which cancels its
/// generation.
fn relayed<S>(
    chunks: S,
    idle: Duration,
    events: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>>
where
    S: futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
{
    struct Relay<S> {
        chunks: std::pin::Pin<Box<S>>,
        stop: tokio::sync::watch::Receiver<bool>,
        /// Event stream bytes after the last whole event relayed.
        unfinished: Vec<u8>,
        done: bool,
    }
    let start = Relay {
        chunks: Box::pin(chunks),
        stop,
        unfinished: Vec::new(),
        done: false,
    };
    futures::stream::unfold(start, move |mut relay| async move {
        if relay.done {
            return None;
        }
        let failure = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(idle, futures::StreamExt::next(&mut relay.chunks)) => Some(next),
                Ok(_) = relay.stop.wait_for(|stop| *stop) => None,
            };
            match next {
                None => break cut_off(),
                Some(Ok(None)) if relay.unfinished.is_empty() => return None,
                Some(Ok(None)) if !events => return None,
                Some(Ok(None)) => {
                    // The body ended inside an event. One whose last line is whole lacked only
                    // its blank line, which it gets; one cut inside a line is dropped.
                    if relay.unfinished.ends_with(b"\n") {
                        relay.done = true;
                        let mut rest = std::mem::take(&mut relay.unfinished);
                        rest.push(b'\n');
                        return Some((Ok(Bytes::from(rest)), relay));
                    }
                    break ApiError::unavailable("The upstream's answer ended inside an event");
                }
                Some(Ok(Some(Ok(chunk)))) if !events => return Some((Ok(chunk), relay)),
                Some(Ok(Some(Ok(chunk)))) => {
                    // Only the new bytes (and the three before them) can end an event.
                    let from = relay.unfinished.len().saturating_sub(3);
                    relay.unfinished.extend_from_slice(&chunk);
                    if let Some(end) = whole_events(&relay.unfinished[from..]) {
                        let rest = relay.unfinished.split_off(from + end);
                        let whole = std::mem::replace(&mut relay.unfinished, rest);
                        return Some((Ok(Bytes::from(whole)), relay));
                    }
                    if relay.unfinished.len() > MAX_EVENT_BYTES {
                        break ApiError::unavailable(format!(
                            "The upstream sent an event of more than {MAX_EVENT_BYTES} bytes"
                        ));
                    }
                }
                Some(Ok(Some(Err(e)))) => {
                    break ApiError::unavailable(format!("The upstream's answer broke off: {e}"))
                }
                Some(Err(_)) => break ApiError::upstream_stalled(idle.as_secs()),
            }
        };
        relay.done = true;
        tracing::warn!(
            error = %failure.message,
            unfinished_event_bytes = relay.unfinished.len(),
            "upstream answer cut off"
        );
        if events {
            let last = format!("data: {}\n\ndata: [DONE]\n\n", failure.body());
            Some((Ok(Bytes::from(last)), relay))
        } else {
            Some((Err(std::io::Error::other(failure.message.clone())), relay))
        }
    })
}

/// The longest event the proxy holds while waiting for its end (an upstream that never ends one
/// would otherwise grow the buffer without bound).
const MAX_EVENT_BYTES: usize = 4 << 20;

/// The length of the whole events at the start of `bytes` (up to and including the blank line
/// that ends the last of them), if there is one.
fn whole_events(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    lf.max(crlf)
}

/// The proxy's `Server-Timing`: its `route` (routed requests), its `admit` (from the request's
/// arrival here to the upstream's response head: routing, re-serialising, the hop and the upstream's
/// own admission), and the upstream's metrics renamed `upstream-…`.
fn server_timing(
    route: Option<Duration>,
    admit: Duration,
    upstream: Option<&HeaderValue>,
) -> String {
    let mut v = super::handlers::server_timing(route, admit);
    if let Some(up) = upstream.and_then(|h| h.to_str().ok()) {
        for metric in up.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            v.push_str(&format!(", upstream-{metric}"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_own_thinking_switch_is_found_in_its_familys_syntax_too() {
        let deepseek = ReasoningFamily {
            kind: ReasoningFamilyKind::ChatTemplateKwargs,
            parameter: "thinking".into(),
        };
        let switch = |r: Value, f| client_thinking_switch(&r, f);
        assert_eq!(switch(json!({"model": "m"}), Some(&deepseek)), None);
        assert_eq!(
            switch(
                json!({"chat_template_kwargs": {"thinking": false}}),
                Some(&deepseek)
            ),
            Some(false)
        );
        assert_eq!(
            switch(json!({"chat_template_kwargs": {"thinking": false}}), None),
            None
        );
        assert_eq!(
            switch(
                json!({"chat_template_kwargs": {"enable_thinking": true}}),
                None
            ),
            Some(true)
        );
        assert_eq!(
            switch(json!({"reasoning_effort": "minimal"}), None),
            Some(false)
        );
        assert_eq!(
            switch(json!({"reasoning_effort": "high"}), None),
            Some(true)
        );
    }

    #[test]
    fn the_thinking_switch_follows_the_models_reasoning_family() {
        let family = |kind, parameter: &str| ReasoningFamily {
            kind,
            parameter: parameter.into(),
        };
        let deepseek = family(ReasoningFamilyKind::ChatTemplateKwargs, "thinking");
        let gpt_oss = family(ReasoningFamilyKind::ReasoningEffort, "reasoning_effort");
        let high = Reasoning::Thinking {
            budget: 512,
            effort: Some(switchyard_router::config::ReasoningEffort::High),
        };
        let switched = |reasoning, family: Option<&ReasoningFamily>| {
            let mut request = json!({"model": "m", "chat_template_kwargs": {"custom": 1}});
            set_thinking_switch(&mut request, reasoning, family);
            request.as_object_mut().unwrap().remove("model");
            request
        };
        assert_eq!(
            switched(high, Some(&deepseek)),
            json!({"chat_template_kwargs": {"custom": 1, "thinking": true}})
        );
        assert_eq!(
            switched(Reasoning::Fast, Some(&deepseek)),
            json!({"chat_template_kwargs": {"custom": 1, "thinking": false}})
        );
        assert_eq!(
            switched(high, Some(&gpt_oss)),
            json!({"chat_template_kwargs": {"custom": 1}, "reasoning_effort": "high"})
        );
        assert_eq!(
            switched(Reasoning::Fast, Some(&gpt_oss)),
            json!({"chat_template_kwargs": {"custom": 1}, "reasoning_effort": "low"})
        );
        // No family: what a Switchyard upstream reads.
        assert_eq!(
            switched(high, None),
            json!({"chat_template_kwargs": {"custom": 1}, "reasoning_effort": "high"})
        );
        assert_eq!(
            switched(Reasoning::Fast, None),
            json!({"chat_template_kwargs": {"custom": 1, "enable_thinking": false}})
        );
    }

    /// What `relayed` passes on of an event stream that arrives in `chunks` and then ends.
    async fn relay_events(chunks: Vec<Vec<u8>>) -> String {
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let upstream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, reqwest::Error>(Bytes::from(c))),
        );
        let parts: Vec<std::io::Result<Bytes>> =
            futures::StreamExt::collect(relayed(upstream, Duration::from_secs(5), true, stopped))
                .await;
        let mut text = String::new();
        for part in parts {
            text.push_str(std::str::from_utf8(&part.expect("an event")).unwrap());
        }
        text
    }

    #[tokio::test]
    async fn events_are_relayed_whole_however_the_upstream_cuts_them() {
        let b = |s: &str| s.as_bytes().to_vec();
        // Split inside events and inside their blank lines, LF and CRLF.
        let sent = "data: 1\n\ndata: 2\r\n\r\ndata: [DONE]\n\n";
        for cut in 1..sent.len() {
            let (a, z) = sent.split_at(cut);
            assert_eq!(relay_events(vec![b(a), b(z)]).await, sent, "cut at {cut}");
        }
        // An event whose last line is whole lacks only its blank line at the end of the body.
        assert_eq!(
            relay_events(vec![b("data: 1\n\ndata: 2\n")]).await,
            "data: 1\n\ndata: 2\n\n"
        );
        // One cut inside a line is dropped, and the stream ends in an error event and [DONE].
        let cut = relay_events(vec![b("data: 1\n\ndata: {\"b")]).await;
        assert!(cut.starts_with("data: 1\n\ndata: {\"error\""), "{cut}");
        assert!(
            cut.ends_with("data: [DONE]\n\n") && !cut.contains("{\"b"),
            "{cut}"
        );
        // An event that never ends is given up at the limit, not held without bound.
        let endless = vec![vec![b'x'; 1 << 20]; 6];
        let given_up = relay_events(endless).await;
        assert!(
            given_up.starts_with("data: {\"error\""),
            "{}",
            &given_up[..80]
        );
        assert!(given_up.contains(&MAX_EVENT_BYTES.to_string()));
    }

    #[test]
    fn the_upstream_key_becomes_a_sensitive_bearer_header() {
        let value = upstream_authorization(Some(" k-1 ")).unwrap().unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer k-1");
        assert!(value.is_sensitive());
        assert!(upstream_authorization(None).unwrap().is_none());
        let empty = upstream_authorization(Some("  ")).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        assert!(upstream_authorization(Some("a\nb")).is_err());
    }

    #[test]
    fn the_proxys_server_timing_adds_its_own_metrics_before_the_upstreams() {
        let up = HeaderValue::from_static("admit;dur=0.700");
        assert_eq!(
            server_timing(
                Some(Duration::from_micros(3500)),
                Duration::from_micros(5250),
                Some(&up)
            ),
            "route;dur=3.500, admit;dur=5.250, upstream-admit;dur=0.700"
        );
        assert_eq!(
            server_timing(None, Duration::from_millis(1), None),
            "admit;dur=1.000"
        );
    }
}
