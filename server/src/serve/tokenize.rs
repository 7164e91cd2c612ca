//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): a served model's tokens for a text or
//! a conversation (rendered with its chat template, exactly as a chat request would be), and the
//! text of token ids, so that a client can count a prompt against the context before sending it.

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_engine::{Engine, GenerationParams, Prompt, Thinking};

use super::api::{chat_messages, tool_use_of, ChatTemplateKwargs, Message};
use super::error::ApiError;
use super::handlers::{body_bytes, parse_json, Shared};
use super::State;

/// `POST /tokenize` body: a `prompt` or `messages`.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    /// A served model id.
    pub model: String,
    /// Text, tokenized as `/v1/completions` takes it.
    pub prompt: Option<String>,
    /// A conversation, rendered with the model's chat template as `/v1/chat/completions` would.
    pub messages: Option<Vec<Message>>,
    /// Whether the model's special tokens (BOS) are added to a `prompt` (default true; a chat
    /// template writes its own).
    pub add_special_tokens: Option<bool>,
    /// Whether the template opens the assistant's turn: only `true` (the default) is supported.
    pub add_generation_prompt: Option<bool>,
    /// `enable_thinking` renders the template as a thinking request would be.
    pub chat_template_kwargs: Option<ChatTemplateKwargs>,
    /// Tools, rendered into the prompt as a chat request's are (its `tools` and `tool_choice`).
    pub tools: Option<Vec<Value>>,
    /// As a chat request's `tool_choice` (`none` leaves the tools out).
    pub tool_choice: Option<Value>,
    /// Also return each token's text.
    pub return_token_strs: Option<bool>,
}

/// `POST /detokenize` body.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    /// A served model id.
    pub model: String,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// The engine of a served model (an alias of one included); the auto model has no tokenizer of
/// its own.
fn engine<'a>(state: &'a State, model: &str) -> Result<&'a Engine, ApiError> {
    let id = state.aliases.get(model).map_or(model, String::as_str);
    state.engines.get(id).ok_or_else(|| {
        if model == state.auto_model {
            ApiError::invalid(
                "model",
                format!("`{model}` is routed; name a served model to tokenize for"),
            )
        } else {
            ApiError::unknown_model(model, &state.served())
        }
    })
}

/// The tokens of a request's prompt or conversation.
fn tokens_of(engine: &Engine, request: &TokenizeRequest) -> Result<Vec<u32>, ApiError> {
    match (&request.prompt, &request.messages) {
        (Some(text), None) => {
            let tokenizer = engine.tokenizer();
            let tokens = if request.add_special_tokens.unwrap_or(true) {
                tokenizer.encode_prompt(text)
            } else {
                tokenizer.encode(text)
            };
            Ok(tokens.map_err(switchyard_engine::EngineError::from)?)
        }
        (None, Some(messages)) => {
            if request.add_generation_prompt == Some(false) {
                return Err(ApiError::invalid(
                    "add_generation_prompt",
                    "only `true` is supported: the rendering a chat request gets",
                ));
            }
            let thinking = match request
                .chat_template_kwargs
                .as_ref()
                .and_then(|k| k.enable_thinking)
            {
                Some(true) => Thinking::On { budget: None },
                _ => Thinking::Off,
            };
            let template_vars = match &request.chat_template_kwargs {
                Some(kwargs) => {
                    kwargs.check()?;
                    kwargs.other.clone()
                }
                None => Default::default(),
            };
            let params = GenerationParams {
                thinking,
                tools: tool_use_of(request.tools.as_deref(), request.tool_choice.as_ref(), None)?,
                template_vars,
                ..Default::default()
            };
            let prompt = Prompt::Chat(chat_messages(messages)?);
            Ok(engine.prompt_tokens(&prompt, &params)?.0)
        }
        _ => Err(ApiError::invalid(
            "prompt",
            "give exactly one of `prompt` and `messages`",
        )),
    }
}

/// `POST /tokenize`.
pub async fn tokenize(
    AxumState(state): Shared,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: TokenizeRequest = parse_json(&body_bytes(&state, body)?)?;
    let state = state.clone();
    // Rendering and tokenizing is CPU work: off the threads that move other requests' bytes.
    tokio::task::spawn_blocking(move || {
        let engine = engine(&state, &request.model)?;
        let tokens = tokens_of(engine, &request)?;
        let token_strs = if request.return_token_strs.unwrap_or(false) {
            let texts: Result<Vec<String>, _> = tokens
                .iter()
                .map(|&t| engine.tokenizer().decode(&[t]))
                .collect();
            Some(texts.map_err(switchyard_engine::EngineError::from)?)
        } else {
            None
        };
        Ok(Json(json!({
            "count": tokens.len(), "max_model_len": engine.max_model_len(),
            "tokens": tokens, "token_strs": token_strs,
        })))
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?
}

/// `POST /detokenize`.
pub async fn detokenize(
    AxumState(state): Shared,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: DetokenizeRequest = parse_json(&body_bytes(&state, body)?)?;
    let engine = engine(&state, &request.model)?;
    let vocab = engine.tokenizer().vocab_size();
    if let Some(bad) = request.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let text = engine
        .tokenizer()
        .decode(&request.tokens)
        .map_err(switchyard_engine::EngineError::from)?;
    Ok(Json(json!({ "prompt": text })))
}
