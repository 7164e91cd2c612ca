//! What every generating endpoint shares: collecting a choice's events, merging streamed
//! choices into one SSE stream, usage, and counting each request's outcome exactly once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;
use switchyard_engine::{DeltaKind, Event, GenerationRequest, GenerationStream, TokenLogprob};
use tokio::sync::OwnedSemaphorePermit;

use super::api::Usage;
use super::error::ApiError;
use super::State;

/// A generating endpoint's response: its own, or its error, counted in
/// `switchyard_requests_total` under the error's status.
pub(super) fn answer(
    state: &State,
    endpoint: &'static str,
    result: Result<Response, ApiError>,
) -> Response {
    result.unwrap_or_else(|e| {
        state
            .metrics
            .requests
            .with_label_values(&[endpoint, "", "", "", e.status.as_str()])
            .inc();
        e.into_response()
    })
}

/// A 503 once shutdown has begun: new generation requests are refused while those in flight finish.
pub(super) fn check_accepting(state: &State) -> Result<(), ApiError> {
    if state.accepting.load(std::sync::atomic::Ordering::SeqCst) {
        Ok(())
    } else {
        Err(ApiError::unavailable("the server is shutting down"))
    }
}

/// A 400 naming `n` when a request asks for more choices than this server allows.
pub(super) fn check_choices(state: &State, n: usize) -> Result<(), ApiError> {
    if n > state.limits.choices {
        return Err(ApiError::invalid(
            "n",
            format!(
                "at most {} choices per request on this server",
                state.limits.choices
            ),
        ));
    }
    Ok(())
}

/// The refusal of a request the router blocked (`None`: not blocked), counted in
/// `switchyard_requests_total` as `blocked`.
pub(super) fn refusal<'a>(
    state: &State,
    endpoint: &'static str,
    plan: &'a super::handlers::Plan,
) -> Option<&'a str> {
    let decision = plan.decision.as_ref()?;
    let switchyard_router::Action::Block { message, .. } = &decision.action else {
        return None;
    };
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, &plan.model, &decision.category, "off", "blocked"])
        .inc();
    Some(message)
}

/// A place among the open streams for a streamed request (`None` when it is not streamed), or a
/// 429 when all `--max-streams` are taken.
pub(super) fn stream_permit(
    state: &Arc<State>,
    streamed: bool,
) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    if !streamed {
        return Ok(None);
    }
    state
        .streams
        .clone()
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| {
            ApiError::overloaded(format!(
                "too many open streams (limit {})",
                state.limits.streams
            ))
        })
}

/// Adds the `Server-Timing` header ([`super::handlers::server_timing`]) of a request that
/// arrived at `arrived` and is queued now.
pub(super) fn add_server_timing(
    headers: &mut HeaderMap,
    route: Option<Duration>,
    arrived: Instant,
) {
    let value = super::handlers::server_timing(route, arrived.elapsed());
    if let Ok(timing) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("server-timing"), timing);
    }
}

/// What a streamed response's chunks carry besides each choice's own.
pub(super) struct StreamMeta {
    pub(super) id: String,
    /// The chunks' `object` (`chat.completion.chunk`, `text_completion`).
    pub(super) object: &'static str,
    pub(super) created: u64,
    /// End with a usage chunk (`stream_options.include_usage`).
    pub(super) include_usage: bool,
    /// Choices per prompt (`n`): choices `i * n ..` continue prompt `i` ([`request_usage`]).
    pub(super) choices_per_prompt: usize,
}

/// The SSE response of a streamed request: its choices' items merged as they come, then the
/// usage chunk if asked for and `[DONE]` ([`sse_events`]), with its headers.
pub(super) fn sse_response(
    state: &State,
    choices: Vec<stream::BoxStream<'static, ChoiceItem>>,
    meta: StreamMeta,
    outcome: Outcome,
    permit: Option<OwnedSemaphorePermit>,
    headers: HeaderMap,
) -> Response {
    let events = sse_events(SseState {
        stop: state.hard_stop.subscribe(),
        remaining: choices.len(),
        choices: stream::select_all(choices),
        usages: Vec::new(),
        meta,
        outcome,
        done: false,
        _permit: permit,
    });
    let events = relay(
        events,
        SSE_BUFFER,
        state.limits.stream_stall,
        state.hard_stop.subscribe(),
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response.headers_mut().extend(headers);
    response
}

/// Events a stream's relay holds for a client that reads slower than the model writes (beside what
/// the connection's own buffers hold).
const SSE_BUFFER: usize = 64;

/// `events` relayed through a task of their own and a buffer of `buffer` items: the task owns the
/// generation (and its stream's place among `--max-streams`) and ends, dropping it, when the
/// generation ends, when the client goes away, or when the client has read nothing for `stall`
/// while the buffer is full (the connection's buffers full too: a client that stopped reading), or
/// when `stop` turns true (the end of the shutdown grace) while it waits for such a client.
/// Without it, such a client held its generation and its place until the connection closed.
pub(super) fn relay<T: Send + 'static>(
    events: impl Stream<Item = T> + Send + 'static,
    buffer: usize,
    stall: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = T> {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                // The client went away: stop at once, not at the next event.
                _ = tx.closed() => return,
            };
            let Some(event) = event else { return };
            // Biased: a send with room goes first, so the events that end a stream at shutdown
            // (an error event, `[DONE]`) still reach a client that reads; one whose buffer is
            // full when the grace ends is let go.
            let sent = tokio::select! {
                biased;
                sent = tokio::time::timeout(stall, tx.send(event)) => sent,
                Ok(_) = stop.wait_for(|stop| *stop) => return,
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        "a streaming client read nothing for {} s: its generation is cancelled",
                        stall.as_secs()
                    );
                    return;
                }
            }
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}

/// Every choice's whole generation, or the response for the first that failed (counted under its
/// status).
pub(super) async fn collect_all(
    state: &State,
    streams: &[GenerationStream],
    wants_logprobs: bool,
    outcome: &mut Outcome,
) -> Result<Vec<Collected>, Response> {
    futures::future::join_all(streams.iter().map(|s| collect(state, s, wants_logprobs)))
        .await
        .into_iter()
        .collect::<Result<Vec<Collected>, (&'static str, ApiError)>>()
        .map_err(|(status, e)| {
            outcome.record(status);
            e.into_response()
        })
}

/// Queues `choices` sequences of each request on `model`'s engine, in order (choice k of a
/// request samples from `seed + k`, so the choices differ and the same request gives the same
/// choices). A prompt's log-probabilities are the same for all its choices, so only the first
/// computes them; the caller hands them to the others. Each prompt is first held to this
/// server's `--max-prompt-tokens` (a 400 `context_length_exceeded` naming `field`, the field
/// the engine's own refusals of a prompt name too), so an over-long one costs no prefill; a
/// request of more sequences than the engine's queue holds (`--max-queue`) is a 400, not a 429
/// it could never get past. Tokenizing and rendering templates is CPU work: it runs off the
/// threads that move other requests' bytes.
pub(super) async fn submit(
    state: &Arc<State>,
    model: &str,
    requests: Vec<GenerationRequest>,
    choices: usize,
    field: &'static str,
) -> Result<Vec<GenerationStream>, ApiError> {
    let state = state.clone();
    let model = model.to_string();
    tokio::task::spawn_blocking(move || -> Result<Vec<GenerationStream>, ApiError> {
        let engine = &state.engines[&model];
        let sequences = requests.len() * choices;
        let queue = engine.config().max_waiting;
        // (A queue of none refuses every request of one sequence with a 429, as configured.)
        if sequences > queue.max(1) {
            let field = if requests.len() > 1 { field } else { "n" };
            return Err(ApiError::invalid(
                field,
                format!(
                    "{sequences} sequences ({} prompts, {choices} choices each): more than the {queue} this server queues at once",
                    requests.len()
                ),
            ));
        }
        // The engine refuses prompts longer than its context itself.
        let context_limit = engine.max_model_len() - 1;
        let limit = state.limits.prompt_tokens.filter(|&l| l < context_limit);
        // Each prompt rendered and tokenized once, for the limit and for every choice, and all
        // of them before the first is queued.
        let mut rendered = Vec::with_capacity(requests.len());
        for r in &requests {
            let prompt = engine
                .prompt_tokens(&r.prompt, &r.params)
                .map_err(|e| ApiError::from_engine(e, field))?;
            if let Some(limit) = limit.filter(|&l| prompt.0.len() > l) {
                let mut e = ApiError::invalid(
                    field,
                    format!(
                        "The prompt has {} tokens, more than the {limit} this server accepts for `{model}`.",
                        prompt.0.len()
                    ),
                );
                e.code = Some("context_length_exceeded");
                return Err(e);
            }
            rendered.push(prompt);
        }
        let mut streams = Vec::with_capacity(sequences);
        for (r, rendered) in requests.iter().zip(rendered) {
            for k in 0..choices {
                let mut params = r.params.clone();
                params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(k as u64));
                if k > 0 {
                    params.prompt_logprobs = None;
                }
                streams.push(
                    engine
                        .submit_rendered(rendered.clone(), params)
                        .map_err(|e| ApiError::from_engine(e, field))?,
                );
            }
        }
        Ok(streams)
    })
    .await
    .map_err(|e| ApiError::internal(format!("submitting: {e}")))?
}

/// The usage of a request's choices together, given in choice order, `n` per prompt (choices
/// `i * n ..` continue prompt `i`): each prompt once (its choices share it; what was cached
/// before the request is the least any of them found, the later ones finding the first's prompt),
/// the generated tokens of all; the first token of any choice and the end of the last.
pub(super) fn request_usage(
    usages: &[switchyard_engine::Usage],
    n: usize,
) -> switchyard_engine::Usage {
    let mut total = switchyard_engine::Usage::default();
    for (i, prompt) in usages.chunks(n.max(1)).enumerate() {
        total.prompt_tokens += prompt[0].prompt_tokens;
        total.cached_tokens += prompt.iter().map(|u| u.cached_tokens).min().unwrap_or(0);
        for (j, u) in prompt.iter().enumerate() {
            total.completion_tokens += u.completion_tokens;
            total.reasoning_tokens += u.reasoning_tokens;
            total.time_to_first_token = if i == 0 && j == 0 {
                u.time_to_first_token
            } else {
                total.time_to_first_token.min(u.time_to_first_token)
            };
            total.total_time = total.total_time.max(u.total_time);
        }
    }
    total
}

pub(super) struct RequestLabels {
    /// `chat` or `completions`.
    pub(super) endpoint: &'static str,
    pub(super) model: String,
    pub(super) category: String,
    pub(super) reasoning: &'static str,
}

/// Counts a generation in `switchyard_requests_total` exactly once: as it ends, or, if it is
/// dropped first (the client went away), as `cancelled`.
pub(super) struct Outcome {
    pub(super) state: Arc<State>,
    pub(super) labels: RequestLabels,
    pub(super) recorded: bool,
}

impl Outcome {
    /// A generation of `endpoint` as `plan` decided it, not counted yet.
    pub(super) fn new(
        state: &Arc<State>,
        endpoint: &'static str,
        plan: &super::handlers::Plan,
        reasoning: &'static str,
    ) -> Self {
        Self {
            state: state.clone(),
            labels: RequestLabels {
                endpoint,
                model: plan.model.clone(),
                category: plan
                    .decision
                    .as_ref()
                    .map_or_else(String::new, |d| d.category.clone()),
                reasoning,
            },
            recorded: false,
        }
    }

    pub(super) fn record(&mut self, status: &str) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let l = &self.labels;
        self.state
            .metrics
            .requests
            .with_label_values(&[l.endpoint, &l.model, &l.category, l.reasoning, status])
            .inc();
    }

    /// A served generation: its status and its tokens and timings.
    pub(super) fn finished(&mut self, usage: &switchyard_engine::Usage) {
        self.record("200");
        let (m, model) = (&self.state.metrics, self.labels.model.as_str());
        m.ttft_seconds
            .with_label_values(&[model])
            .observe(usage.time_to_first_token);
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("cached_prompt", usage.cached_tokens),
            ("completion", usage.completion_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            m.tokens.with_label_values(&[model, kind]).inc_by(n as u64);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.record("cancelled");
    }
}

/// A request not yet counted by anything else: it counts itself as `cancelled` (under its endpoint
/// alone) if its handler is dropped first, which happens when the client goes away while the
/// request is routed or its prompt tokenized, before it has an [`Outcome`]. Settled once the
/// request has an `Outcome`, or an answer `answer` counts.
pub(super) struct Pending {
    state: Arc<State>,
    endpoint: &'static str,
    settled: std::sync::atomic::AtomicBool,
}

impl Pending {
    pub(super) fn new(state: &Arc<State>, endpoint: &'static str) -> Self {
        Self {
            state: state.clone(),
            endpoint,
            settled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Something else counts the request from now on.
    pub(super) fn settle(&self) {
        self.settled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.settled.load(std::sync::atomic::Ordering::Relaxed) {
            self.state
                .metrics
                .requests
                .with_label_values(&[self.endpoint, "", "", "", "cancelled"])
                .inc();
        }
    }
}

/// The error a request gets when the shutdown grace period ends before its generation.
pub(super) fn cut_off() -> ApiError {
    let mut e = ApiError::unavailable(
        "The server is shutting down and its grace period ended before this generation did.",
    );
    e.code = Some("server_shutdown");
    e
}

/// One choice's whole generation.
pub(super) struct Collected {
    pub(super) content: String,
    pub(super) reasoning: String,
    pub(super) finish: &'static str,
    pub(super) usage: switchyard_engine::Usage,
    /// The generated tokens' log-probabilities, when asked for.
    pub(super) logprobs: Option<Vec<TokenLogprob>>,
    /// The prompt tokens' log-probabilities (after the first), when asked for.
    pub(super) prompt_logprobs: Vec<TokenLogprob>,
}

/// The whole generation of one choice, or the status its request is counted under and the error
/// it gets.
pub(super) async fn collect(
    state: &State,
    stream: &GenerationStream,
    wants_logprobs: bool,
) -> Result<Collected, (&'static str, ApiError)> {
    let mut stop = state.hard_stop.subscribe();
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut logprobs = wants_logprobs.then(Vec::new);
    let mut prompt_logprobs = Vec::new();
    loop {
        let event = tokio::select! {
            event = stream.recv_async() => event,
            Ok(_) = stop.wait_for(|stop| *stop) => return Err(("503", cut_off())),
        };
        match event {
            Some(Event::Delta {
                kind: DeltaKind::Content,
                text,
            }) => content.push_str(&text),
            Some(Event::Delta {
                kind: DeltaKind::Reasoning,
                text,
            }) => reasoning.push_str(&text),
            Some(Event::Logprob(lp)) => {
                if let Some(entries) = logprobs.as_mut() {
                    entries.push(lp);
                }
            }
            Some(Event::PromptLogprob(lp)) => prompt_logprobs.push(lp),
            Some(Event::Finished { reason, usage, .. }) => {
                return Ok(Collected {
                    content,
                    reasoning,
                    finish: reason.as_str(),
                    usage,
                    logprobs,
                    prompt_logprobs,
                });
            }
            Some(Event::Error(e)) => {
                return Err(("500", ApiError::internal(format!("generation failed: {e}"))))
            }
            None => return Err(("503", ApiError::unavailable("the engine stopped"))),
        }
    }
}

/// What one choice's stream gives the request's stream.
pub(super) enum ChoiceItem {
    /// A chunk to send.
    Chunk(SseEvent),
    /// Choice `index` finished (its finish chunk was the last `Chunk`).
    Finished {
        index: usize,
        usage: switchyard_engine::Usage,
    },
    /// The choice cannot go on: the status the request is counted under, and its error.
    Failed(&'static str, ApiError),
}

/// A streamed completion in progress: its choices' items, merged as they come.
struct SseState {
    /// Turns true when the shutdown grace period is over.
    stop: tokio::sync::watch::Receiver<bool>,
    choices: stream::SelectAll<stream::BoxStream<'static, ChoiceItem>>,
    /// Choices not finished yet.
    remaining: usize,
    /// The finished choices' usage, by choice index.
    usages: Vec<(usize, switchyard_engine::Usage)>,
    meta: StreamMeta,
    outcome: Outcome,
    done: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The SSE events of a streamed completion: every choice's chunks (role, deltas, finish reason,
/// each with its `index`) as they come, then the usage chunk if asked for and `[DONE]` once all
/// have finished. Dropping the stream (the client went away) drops the [`GenerationStream`]s,
/// which cancels the sequences. An engine error or the end of the shutdown grace period ends it
/// with an error event and `[DONE]`, which the OpenAI clients raise as an error.
fn sse_events(s: SseState) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        let item = tokio::select! {
            item = s.choices.next() => Some(item),
            Ok(_) = s.stop.wait_for(|stop| *stop) => None,
        };
        let events: Vec<SseEvent> = match item {
            Some(Some(ChoiceItem::Chunk(event))) => vec![event],
            Some(Some(ChoiceItem::Finished { index, usage })) => {
                s.usages.push((index, usage));
                s.remaining -= 1;
                if s.remaining > 0 {
                    Vec::new()
                } else {
                    s.usages.sort_by_key(|&(index, _)| index);
                    let in_order: Vec<_> = s.usages.iter().map(|&(_, u)| u).collect();
                    let usage = request_usage(&in_order, s.meta.choices_per_prompt);
                    s.outcome.finished(&usage);
                    s.done = true;
                    let mut out = Vec::new();
                    if s.meta.include_usage {
                        out.push(usage_chunk(
                            &s.meta.id,
                            s.meta.object,
                            s.meta.created,
                            &s.outcome.labels.model,
                            &Usage::from_engine(&usage),
                        ));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    out
                }
            }
            Some(Some(ChoiceItem::Failed(status, e))) => {
                s.outcome.record(status);
                s.done = true;
                error_events(&e)
            }
            Some(None) => {
                s.outcome.record("503");
                s.done = true;
                error_events(&ApiError::unavailable("the engine stopped"))
            }
            None => {
                s.outcome.record("503");
                s.done = true;
                error_events(&cut_off())
            }
        };
        Some((stream::iter(events.into_iter().map(Ok)), s))
    })
    .flatten()
}

/// The last chunk before `[DONE]` when `stream_options.include_usage` asks for it: no choices,
/// the usage.
pub(super) fn usage_chunk(
    id: &str,
    object: &str,
    created: u64,
    model: &str,
    usage: &Usage,
) -> SseEvent {
    SseEvent::default().data(
        json!({"id": id, "object": object, "created": created, "model": model,
               "choices": [], "usage": usage})
        .to_string(),
    )
}

/// A stream whose chunks are all known (a refusal): them, then `[DONE]`.
pub(super) fn known_stream(mut events: Vec<SseEvent>) -> Response {
    events.push(SseEvent::default().data("[DONE]"));
    Sse::new(stream::iter(events.into_iter().map(Ok::<_, Infallible>))).into_response()
}

/// How a stream that cannot go on ends: the error object, then `[DONE]`.
pub(super) fn error_events(e: &ApiError) -> Vec<SseEvent> {
    vec![
        SseEvent::default().data(e.body().to_string()),
        SseEvent::default().data("[DONE]"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_each_prompt_once_and_every_choice() {
        let u = |prompt, cached, completion, ttft: f64| switchyard_engine::Usage {
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
            reasoning_tokens: completion / 2,
            time_to_first_token: ttft,
            total_time: 10.0 * ttft,
        };
        // Two prompts (5 and 7 tokens), two choices each; the second choice of each found the
        // first's prompt cached.
        let total = request_usage(
            &[
                u(5, 0, 1, 0.4),
                u(5, 5, 2, 0.3),
                u(7, 2, 3, 0.9),
                u(7, 7, 4, 0.8),
            ],
            2,
        );
        assert_eq!(
            (
                total.prompt_tokens,
                total.cached_tokens,
                total.completion_tokens
            ),
            (12, 2, 10)
        );
        assert_eq!(total.reasoning_tokens, 4);
        assert_eq!(total.time_to_first_token, 0.3);
        assert_eq!(total.total_time, 9.0);
        // One prompt: counted once whatever `n`.
        assert_eq!(request_usage(&[u(5, 0, 1, 0.1); 3], 3).prompt_tokens, 5);
    }

    /// Sets its flag when dropped: whether the relay let go of its source.
    struct DropFlag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn guarded<S: Stream + Send + 'static>(
        source: S,
    ) -> (
        impl Stream<Item = S::Item> + Send + 'static,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = DropFlag(flag.clone());
        let stream = source.map(move |item| {
            let _ = &guard;
            item
        });
        (stream, flag)
    }

    /// A shutdown signal that never comes (its sender gone, the relay stops watching it).
    fn running() -> tokio::sync::watch::Receiver<bool> {
        tokio::sync::watch::channel(false).1
    }

    async fn released(flag: &std::sync::atomic::AtomicBool) -> bool {
        for _ in 0..100 {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_relay_passes_every_event_and_lets_go_of_a_finished_source() {
        let (source, dropped) = guarded(stream::iter(0..100));
        let out: Vec<i32> = relay(source, 4, Duration::from_secs(5), running())
            .collect()
            .await;
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert!(released(&dropped).await);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_loses_its_generation_after_the_stall_limit() {
        // An endless generation, a client that reads two events and then nothing.
        let (source, dropped) = guarded(stream::iter(0..));
        let mut out = Box::pin(relay(source, 2, Duration::from_millis(100), running()));
        assert_eq!(out.next().await, Some(0));
        assert_eq!(out.next().await, Some(1));
        assert!(released(&dropped).await, "the source was kept");
        // What was buffered still reads, then the stream ends.
        let rest: Vec<i32> = out.collect().await;
        assert!(rest.len() <= 3, "{rest:?}");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_releases_a_silent_generation_at_once() {
        // A generation that has produced nothing yet (a long prefill, a queue).
        let (source, dropped) = guarded(stream::pending::<i32>());
        let out = relay(source, 2, Duration::from_secs(600), running());
        drop(out);
        assert!(released(&dropped).await, "the source was kept");
    }

    #[tokio::test]
    async fn the_end_of_the_shutdown_grace_releases_a_stalled_client_at_once() {
        let (source, dropped) = guarded(stream::iter(0..));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let out = relay(source, 2, Duration::from_secs(600), rx);
        // Nobody reads: the relay waits on a full buffer, far from its stall limit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        stop.send(true).unwrap();
        assert!(released(&dropped).await, "the source was kept");
        drop(out);
    }
}
