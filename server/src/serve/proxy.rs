//! Router-only proxy mode (`serve --upstream URL`): the deployment the vLLM Semantic Router uses, kept
//! as the baseline that `bench overhead` compares in-process routing with. A request for the auto
//! model is routed here, its body re-serialised with the chosen model and thinking switch, and
//! forwarded over HTTP to the upstream inference server; the upstream's answer (streamed or not) is
//! passed through with the routing headers added. Other models are forwarded unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use switchyard_router::{Action, Reasoning};

use super::handlers::blocked_label;

use super::error::ApiError;
use super::State;

/// Forwards one chat request.
pub async fn forward(state: Arc<State>, upstream: &str, body: Bytes) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let mut request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    let mut extra = Vec::new();
    let mut route_time = None;
    if request["model"] == json!(state.auto_model) {
        let router = state
            .router
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("routing is off on this proxy"))?;
        let parsed: super::api::ChatRequest = serde_json::from_value(request.clone())
            .map_err(|e| ApiError::bad_request(format!("Invalid request: {e}")))?;
        parsed.validate()?;
        let mut messages = parsed.chat_messages()?;
        let decision = router
            .route_async(&messages)
            .await
            .map_err(|e| ApiError::internal(format!("routing failed: {e}")))?;
        route_time = Some(decision.route_time);
        extra.push(("x-switchyard-category", decision.category.clone()));
        extra.push((
            "x-switchyard-route-ms",
            format!("{:.3}", decision.route_time.as_secs_f64() * 1e3),
        ));
        if let Action::Block { message, reason } = &decision.action {
            // Answered here, as the in-process path answers it (streamed if asked for).
            extra.push(("x-switchyard-blocked", blocked_label(*reason).to_string()));
            let mut headers = HeaderMap::new();
            for (name, value) in extra {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            }
            return Ok(super::handlers::blocked_response(
                &parsed,
                &decision.model,
                &super::handlers::completion_id(),
                super::handlers::now(),
                message,
                headers,
            ));
        }
        decision.apply(&mut messages);
        request["model"] = json!(decision.model);
        request["messages"] = serde_json::to_value(
            messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
        // The client's own switch wins, as on the in-process path.
        let explicit = request["chat_template_kwargs"]["enable_thinking"].is_boolean()
            || request["reasoning_effort"].is_string();
        if !explicit {
            match decision.reasoning {
                Reasoning::Fast => {
                    request["chat_template_kwargs"] = json!({"enable_thinking": false});
                }
                Reasoning::Thinking { effort, .. } => {
                    request["reasoning_effort"] =
                        json!(effort.map_or_else(|| "medium".to_string(), |e| e.to_string()));
                }
            }
        }
    }
    let upstream_response = state
        .http
        .post(format!("{upstream}/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("upstream {upstream}: {e}")))?;
    extra.push((
        "server-timing",
        server_timing(
            route_time,
            arrived.elapsed(),
            upstream_response.headers().get("server-timing"),
        ),
    ));
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
    let mut response = response
        .body(Body::from_stream(upstream_response.bytes_stream()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), v);
        }
    }
    Ok(response)
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
