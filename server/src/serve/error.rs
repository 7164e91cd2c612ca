//! OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_engine::EngineError;

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, `rate_limit_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A machine-readable code, if any.
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (429 / 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400, about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.to_string());
        e
    }

    /// 400 without a specific field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 for an unknown model.
    pub fn unknown_model(model: &str, served: &[String]) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{model}` does not exist. Served models: {}",
                served.join(", ")
            ),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    /// 401, as OpenAI writes it (`invalid_request_error`, code `invalid_api_key`).
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Missing or invalid API key (send `Authorization: Bearer <key>`).",
        );
        e.code = Some("invalid_api_key");
        e
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the {limit}-byte limit."),
        )
    }

    /// 408: the body did not arrive in time.
    pub fn body_timeout(seconds: u64) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("The request body did not arrive within {seconds} s."),
        );
        e.code = Some("request_timeout");
        e
    }

    /// 429 with `Retry-After`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.retry_after = Some(1);
        e
    }

    /// 503 with `Retry-After` (shutting down, or a worker has stopped).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after = Some(5);
        e
    }

    /// 504: the upstream server (proxy mode) did not start its answer in time.
    pub fn upstream_timeout(seconds: u64) -> Self {
        let mut e = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            format!("The upstream server did not answer within {seconds} s."),
        );
        e.code = Some("upstream_timeout");
        e
    }

    /// The error a stream relayed from the upstream server (proxy mode) ends with when the upstream
    /// sends nothing more for `seconds`.
    pub fn upstream_stalled(seconds: u64) -> Self {
        let mut e = Self::upstream_timeout(seconds);
        e.message = format!("The upstream server sent nothing for {seconds} s mid-answer.");
        e
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl ApiError {
    /// The engine's refusal of a request whose prompt came in `prompt_field` (`messages` for a
    /// chat, `prompt` for a text completion).
    pub fn from_engine(e: EngineError, prompt_field: &str) -> Self {
        match &e {
            EngineError::PromptTooLong { .. } => {
                let mut a = ApiError::invalid(prompt_field, e.to_string());
                a.code = Some("context_length_exceeded");
                a
            }
            EngineError::EmptyPrompt => ApiError::invalid(prompt_field, e.to_string()),
            EngineError::InvalidParameter { param, .. } => ApiError::invalid(param, e.to_string()),
            EngineError::QueueFull(_) => ApiError::overloaded(e.to_string()),
            EngineError::Stopped => ApiError::unavailable(e.to_string()),
            EngineError::Model(_) => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self::from_engine(e, "messages")
    }
}
