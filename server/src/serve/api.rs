//! The OpenAI chat-completions request and response shapes, as the official clients send and read them.

use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::Value;
use switchyard_engine::tools::{Function, ToolChoice, ToolUse};
use switchyard_engine::{ResponseFormat, SamplingParams};
use switchyard_models::text::ChatMessage;

use super::error::ApiError;

/// `messages[].content`: a string, or a list of parts of which only text parts are supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<Value>),
}

/// One message of a request.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (absent or null for an assistant turn that only called tools).
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls (`[{"id", "type": "function", "function": {"name", "arguments"}}]`).
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
    /// A `tool` message's call id.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Earlier thinking of an assistant turn (as this server returns it).
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// Participant name (accepted, not used).
    #[serde(default)]
    #[allow(dead_code)]
    pub name: Option<String>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    pub include_usage: Option<bool>,
}

impl StreamOptions {
    /// Refuses `stream_options` on a request that is not streamed, as OpenAI and vLLM do: the
    /// client asked for something (a usage chunk) that an unstreamed answer cannot give.
    pub fn check(options: Option<&Self>, stream: Option<bool>) -> Result<(), ApiError> {
        if options.is_some() && stream != Some(true) {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed with `stream: true`",
            ));
        }
        Ok(())
    }
}

/// `chat_template_kwargs` (vLLM's extension; `enable_thinking` is what Qwen3 templates read).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChatTemplateKwargs {
    /// Think (true) or answer directly (false).
    pub enable_thinking: Option<bool>,
    /// Every other variable, given to the chat template as it is (a flag a fine-tune's template
    /// reads); the template's own variables (`messages`, `tools`, ...) may not be replaced.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl ChatTemplateKwargs {
    /// Refuses a variable the renderer sets itself.
    pub fn check(&self) -> Result<(), ApiError> {
        match self
            .other
            .keys()
            .find(|k| switchyard_models::text::RESERVED_TEMPLATE_VARS.contains(&k.as_str()))
        {
            Some(k) => Err(ApiError::invalid(
                &format!("chat_template_kwargs.{k}"),
                format!("`{k}` is set by the server and cannot be given as a template variable"),
            )),
            None => Ok(()),
        }
    }
}

/// `POST /v1/chat/completions` (and `/v1/route`) body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// A served model id, or the auto model (routed).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Legacy limit on generated tokens.
    pub max_tokens: Option<usize>,
    /// Limit on generated tokens, thinking included.
    pub max_completion_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Sampling seed: any 64-bit integer, negative ones included (as OpenAI and vLLM take them).
    pub seed: Option<i64>,
    /// Presence penalty in [-2, 2].
    pub presence_penalty: Option<f32>,
    /// Frequency penalty in [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Stream the answer as server-sent events (`null` means no).
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// `low` / `medium` / `high`: think with that effort's budget (`none` / `minimal`: do not think).
    pub reasoning_effort: Option<String>,
    /// Template variables; `enable_thinking` switches thinking on or off.
    pub chat_template_kwargs: Option<ChatTemplateKwargs>,
    /// Number of choices: only 1 is supported.
    pub n: Option<usize>,
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
    /// llama.cpp's extension: start from the cached prefix of the prompt when there is one
    /// (default true); `false` computes the whole prompt, so that a repeated seeded request
    /// samples what it sampled before.
    pub cache_prompt: Option<bool>,
    /// Return each output token's log-probability.
    pub logprobs: Option<bool>,
    /// With `logprobs`: also this many most likely tokens at each position (0-20).
    pub top_logprobs: Option<usize>,
    /// Token id (as a string) -> bias in [-100, 100] added to its logit.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Functions the model may call (`[{"type": "function", "function": {"name", "description",
    /// "parameters"}}]`).
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto` (the default with tools), `required`, or `{"type": "function", "function":
    /// {"name": ...}}`.
    pub tool_choice: Option<Value>,
    /// Whether one answer may make several calls (default: whether the model makes parallel
    /// calls, `Engine::parallel_tool_calls_by_default`; the chat handler decides it once the model
    /// is known).
    pub parallel_tool_calls: Option<bool>,
    /// Fields that change the semantics and are not supported: their presence is a 400.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Fields whose meaning this server does not implement (a request using them gets a 400).
const UNSUPPORTED: [&str; 4] = ["functions", "function_call", "audio", "prediction"];

/// A field this server does not implement: its name, whether a value asks for nothing (then it is
/// accepted, as is `null`), and the 400's message for any other value.
type DefaultOnly = (&'static str, fn(&Value) -> bool, &'static str);

/// OpenAI's `modalities` (text only) and vLLM's `min_tokens`, `include_stop_str_in_output` and
/// `skip_special_tokens`: refused rather than silently ignored when they ask for something.
const DEFAULT_ONLY: [DefaultOnly; 4] = [
    (
        "modalities",
        |v| v.as_array().is_some_and(|a| a.len() == 1 && a[0] == "text"),
        "only text output is supported: `modalities` must be [\"text\"]",
    ),
    (
        "min_tokens",
        |v| v.as_u64() == Some(0),
        "`min_tokens` is not supported by this server",
    ),
    (
        "include_stop_str_in_output",
        |v| v == &Value::Bool(false),
        "`include_stop_str_in_output` is not supported by this server",
    ),
    (
        "skip_special_tokens",
        |v| v == &Value::Bool(true),
        "special tokens' text is always skipped: `skip_special_tokens` must be true",
    ),
];

/// A 400 naming the first field of [`DEFAULT_ONLY`] in `other` that asks for something.
pub(super) fn refuse_unimplemented(other: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    for (field, asks_nothing, message) in DEFAULT_ONLY {
        if other
            .get(field)
            .is_some_and(|v| !v.is_null() && !asks_nothing(v))
        {
            return Err(ApiError::invalid(field, message));
        }
    }
    Ok(())
}

/// OpenAI's rule for schema and function names: 1-64 letters, digits, `_` or `-`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An earlier call as templates print it: the OpenAI shape with `arguments` parsed from its JSON
/// string into an object (templates write `arguments | tojson`); an empty string, as several
/// servers write a call without arguments, is no arguments.
fn template_call(call: &Value, at: &str) -> Result<Value, ApiError> {
    let f = call
        .get("function")
        .filter(|f| f.get("name").is_some_and(Value::is_string))
        .ok_or_else(|| ApiError::invalid(at, "a tool call needs `function.name`"))?;
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            ApiError::invalid(
                &format!("{at}.function.arguments"),
                format!("not valid JSON: {e}"),
            )
        })?,
        Some(v @ Value::Object(_)) => v.clone(),
        None | Some(Value::Null) => json!({}),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.function.arguments"),
                "must be a JSON string (or an object)",
            ))
        }
    };
    let mut call = call.clone();
    call["function"]["arguments"] = arguments;
    Ok(call)
}

/// One `tools[]` entry (at `at`) as a function the model may call; a function without
/// `parameters` takes none.
fn function_of(tool: &Value, at: &str) -> Result<Function, ApiError> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid(at, "only `function` tools are supported"));
    }
    let f = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| ApiError::invalid(at, "a function tool needs a `function` object"))?;
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    if !valid_name(name) {
        return Err(ApiError::invalid(
            &format!("{at}.function.name"),
            "must be 1-64 letters, digits, `_` or `-`",
        ));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => {
            json!({"type": "object", "properties": {}, "additionalProperties": false})
        }
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.function.parameters"),
                "must be a JSON schema object",
            ))
        }
    };
    Ok(Function {
        name: name.to_string(),
        description: f
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        parameters,
    })
}

/// A `tool_choice` other than `none`: `auto`, `required`, or `{"type": "function", "function":
/// {"name": ...}}` naming one of `functions`.
fn tool_choice_of(choice: &Value, functions: &[Function]) -> Result<ToolChoice, ApiError> {
    let invalid = |message: String| ApiError::invalid("tool_choice", message);
    match choice.as_str() {
        Some("auto") => return Ok(ToolChoice::Auto),
        Some("required") => return Ok(ToolChoice::Required),
        Some(_) => {
            return Err(invalid(
                "must be `none`, `auto`, `required` or a function".into(),
            ))
        }
        None => {}
    }
    let name = choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .filter(|_| choice.get("type").and_then(Value::as_str) == Some("function"))
        .ok_or_else(|| {
            invalid(
                "a named choice is `{\"type\": \"function\", \"function\": {\"name\": ...}}`"
                    .into(),
            )
        })?;
    if !functions.iter().any(|f| f.name == name) {
        return Err(invalid(format!("`{name}` is not one of the given tools")));
    }
    Ok(ToolChoice::Function(name.to_string()))
}

impl ChatRequest {
    /// Alternatives per token when log-probabilities were asked for (`None`: not asked).
    pub fn logprobs_wanted(&self) -> Option<usize> {
        (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0))
    }

    /// The sampling fields, as chat and text completions share them.
    pub fn sampling(&self) -> SamplingFields<'_> {
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

    /// `response_format`: absent, `null` or `{"type": "text"}` is text; `{"type": "json_object"}`
    /// asks for one JSON object; `{"type": "json_schema", "json_schema": {"name", "schema",
    /// "strict"}}` for JSON that matches the schema (always enforced, whatever `strict` says; no
    /// `schema`: any JSON value). Anything else is a 400; so is a schema the engine cannot enforce,
    /// when it is submitted.
    pub fn response_format(&self) -> Result<ResponseFormat, ApiError> {
        let Some(v) = self.other.get("response_format").filter(|v| !v.is_null()) else {
            return Ok(ResponseFormat::Text);
        };
        match v.get("type").and_then(Value::as_str) {
            Some("text") => Ok(ResponseFormat::Text),
            Some("json_object") => Ok(ResponseFormat::JsonObject),
            Some("json_schema") => {
                let spec = v
                    .get("json_schema")
                    .filter(|s| s.is_object())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "response_format",
                            "`json_schema` must be an object with a `name` and a `schema`",
                        )
                    })?;
                let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
                if !valid_name(name) {
                    return Err(ApiError::invalid(
                        "response_format",
                        "`json_schema.name` must be 1-64 letters, digits, `_` or `-`",
                    ));
                }
                let schema = spec
                    .get("schema")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                Ok(ResponseFormat::JsonSchema(std::sync::Arc::new(schema)))
            }
            _ => Err(ApiError::invalid(
                "response_format",
                "`type` must be `text`, `json_object` or `json_schema`",
            )),
        }
    }

    /// Checks what the types cannot (unsupported fields, `n`, ranges), and returns the fields that
    /// take parsing beyond the types, parsed once.
    pub fn validate(&self) -> Result<Checked, ApiError> {
        for field in UNSUPPORTED {
            if let Some(v) = self.other.get(field) {
                let harmless = v.is_null() || v == &Value::Bool(false);
                if !harmless {
                    return Err(ApiError::invalid(
                        field,
                        format!("`{field}` is not supported by this server"),
                    ));
                }
            }
        }
        refuse_unimplemented(&self.other)?;
        if let Some(k) = self.top_logprobs {
            if self.logprobs != Some(true) {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            if k > switchyard_engine::MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("must be in [0, {}]", switchyard_engine::MAX_TOP_LOGPROBS),
                ));
            }
        }
        let checked = Checked {
            logit_bias: self.sampling().logit_bias()?,
            response_format: self.response_format()?,
            tool_use: self.tool_use()?,
        };
        if self.n == Some(0) {
            return Err(ApiError::invalid("n", "`n` must be at least 1"));
        }
        StreamOptions::check(self.stream_options.as_ref(), self.stream)?;
        if let Some(kwargs) = &self.chat_template_kwargs {
            kwargs.check()?;
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        self.sampling().check_ranges()?;
        if let Some(e) = &self.reasoning_effort {
            if !["none", "minimal", "low", "medium", "high"].contains(&e.as_str()) {
                return Err(ApiError::invalid(
                    "reasoning_effort",
                    "must be one of none, minimal, low, medium, high",
                ));
            }
        }
        Ok(checked)
    }

    /// The chat template's extra variables (`chat_template_kwargs` but `enable_thinking`).
    pub fn template_vars(&self) -> serde_json::Map<String, Value> {
        self.chat_template_kwargs
            .as_ref()
            .map(|k| k.other.clone())
            .unwrap_or_default()
    }

    /// The messages as the engine takes them.
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        chat_messages(&self.messages)
    }

    /// The tools the model is offered and whether it must call one (`None`: no tools, or
    /// `tool_choice: "none"`). Malformed tools, a duplicate name, or a `tool_choice` naming no
    /// given function is a 400.
    pub fn tool_use(&self) -> Result<Option<ToolUse>, ApiError> {
        tool_use_of(
            self.tools.as_deref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )
    }

    /// Whether the answer is streamed.
    pub fn streamed(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true))
    }

    /// `max_completion_tokens`, else `max_tokens`.
    pub fn max_new_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The stop strings.
    pub fn stop_strings(&self) -> Vec<String> {
        Stop::strings(self.stop.as_ref())
    }
}

impl Stop {
    /// The stop strings of a `stop` field.
    pub fn strings(stop: Option<&Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }
}

/// The sampling fields of a request, as chat and text completions share them.
#[derive(Debug, Clone, Copy)]
pub struct SamplingFields<'a> {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub logit_bias: Option<&'a std::collections::BTreeMap<String, f32>>,
}

impl SamplingFields<'_> {
    /// A 400 naming the first field out of its range.
    pub fn check_ranges(&self) -> Result<(), ApiError> {
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid("temperature", "must be in [0, 2]"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid("top_p", "must be in (0, 1]"));
            }
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid(name, "must be in [-2, 2]"));
                }
            }
        }
        if let Some(k) = self.top_k {
            if k < -1 {
                return Err(ApiError::invalid(
                    "top_k",
                    "must be -1, 0 (off) or positive",
                ));
            }
        }
        Ok(())
    }

    /// `logit_bias` as (token id, bias) pairs; a key that is not a token id, or a bias out of
    /// [-100, 100], is a 400 (ids past the vocabulary are the engine's to refuse).
    pub fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(map) = self.logit_bias else {
            return Ok(Vec::new());
        };
        map.iter()
            .map(|(k, &bias)| {
                let id = k.trim().parse::<u32>().map_err(|_| {
                    ApiError::invalid("logit_bias", format!("keys must be token ids, got {k:?}"))
                })?;
                if !(-100.0..=100.0).contains(&bias) {
                    return Err(ApiError::invalid(
                        "logit_bias",
                        format!("the bias of token {id} must be in [-100, 100], got {bias}"),
                    ));
                }
                Ok((id, bias))
            })
            .collect()
    }

    /// `top_k` as the engine takes it (0: off).
    pub fn top_k(&self) -> usize {
        self.top_k.map_or(0, |k| usize::try_from(k).unwrap_or(0))
    }

    /// The engine's sampling parameters, with `logit_bias` as [`Self::logit_bias`] parsed it.
    pub fn params(&self, logit_bias: Vec<(u32, f32)>) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k(),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            // The seed's bits: -1 and u64::MAX name the same generator.
            seed: self.seed.map(|s| s as u64),
            logit_bias,
        }
    }
}

/// The tools a request offers the model and whether it must call one (`None`: no tools, or
/// `tool_choice: "none"`), from its `tools`, `tool_choice` and `parallel_tool_calls`. Malformed
/// tools, a duplicate name, or a `tool_choice` naming no given function is a 400.
pub fn tool_use_of(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
) -> Result<Option<ToolUse>, ApiError> {
    let tools = tools.unwrap_or_default();
    let choice = tool_choice.filter(|c| !c.is_null());
    if tools.is_empty() {
        return match choice {
            None => Ok(None),
            Some(c) if c == "none" => Ok(None),
            Some(_) => Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` needs `tools`",
            )),
        };
    }
    let mut functions: Vec<Function> = Vec::with_capacity(tools.len());
    let mut names = std::collections::HashSet::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let f = function_of(tool, &format!("tools[{i}]"))?;
        if !names.insert(f.name.clone()) {
            return Err(ApiError::invalid(
                &format!("tools[{i}].function.name"),
                format!("`{}` is given twice", f.name),
            ));
        }
        functions.push(f);
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(c) if c == "none" => return Ok(None),
        Some(c) => tool_choice_of(c, &functions)?,
    };
    Ok(Some(ToolUse {
        functions: std::sync::Arc::new(functions),
        choice,
        // Absent, the chat handler puts the model's default in its place.
        parallel: parallel_tool_calls.unwrap_or(true),
    }))
}

/// Request messages as the engine takes them: `developer` is `system`, text parts are joined, an
/// assistant turn's calls are parsed; anything else is a 400 naming the message.
pub fn chat_messages(messages: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!(
                            "unsupported role `{other}` (system, developer, user, assistant, tool)"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => {
                                // Parts are joined by a line break, as vLLM joins them: "Summarize
                                // this:" and "The cat sat." must not become one run-on line.
                                if j > 0 {
                                    text.push('\n');
                                }
                                text.push_str(t)
                            }
                            (Some("text"), None) => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}].text"),
                                    "a text part needs a string `text`",
                                ))
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "only text content parts are supported (got {})",
                                        kind.unwrap_or("a part without a type")
                                    ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            let mut message = ChatMessage::new(role, content);
            message.reasoning_content = m.reasoning_content.clone();
            message.tool_call_id = m.tool_call_id.clone();
            if let Some(calls) = &m.tool_calls {
                message.tool_calls = Some(
                    calls
                        .iter()
                        .enumerate()
                        .map(|(j, c)| template_call(c, &format!("messages[{i}].tool_calls[{j}]")))
                        .collect::<Result<_, _>>()?,
                );
            }
            Ok(message)
        })
        .collect()
}

/// The fields of a request that [`ChatRequest::validate`] parsed beyond their JSON types.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `logit_bias` as token ids and biases.
    pub logit_bias: Vec<(u32, f32)>,
    /// `response_format`.
    pub response_format: ResponseFormat,
    /// `tools`, `tool_choice` and `parallel_tool_calls`.
    pub tool_use: Option<ToolUse>,
}

/// `usage`.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens, thinking included.
    pub completion_tokens: usize,
    /// Sum.
    pub total_tokens: usize,
    /// Prompt breakdown.
    pub prompt_tokens_details: PromptDetails,
    /// Completion breakdown.
    pub completion_tokens_details: CompletionDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Serialize)]
pub struct PromptDetails {
    /// Prompt tokens taken from the prefix cache instead of computed.
    pub cached_tokens: usize,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionDetails {
    /// Tokens spent thinking.
    pub reasoning_tokens: usize,
}

impl Usage {
    /// From the engine's usage.
    pub fn from_engine(u: &switchyard_engine::Usage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cached_tokens,
            },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(extra: Value) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    fn rejected_param(extra: Value) -> Option<String> {
        request(extra).validate().err().and_then(|e| e.param)
    }

    #[test]
    fn semantic_fields_it_cannot_honour_are_refused_by_name() {
        for (field, value) in [
            ("tool_choice", json!("auto")),
            ("top_logprobs", json!(2)),
            ("logit_bias", json!({"one": 5})),
            ("logit_bias", json!({"1": 101})),
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "no spaces"}}),
            ),
            ("response_format", json!({"type": "json_schema"})),
            ("response_format", json!({"type": "yaml"})),
            ("n", json!(0)),
            ("top_k", json!(-2)),
            ("temperature", json!(2.5)),
            ("top_p", json!(0)),
            ("presence_penalty", json!(3)),
            ("reasoning_effort", json!("extreme")),
        ] {
            assert_eq!(
                rejected_param(json!({ field: value })).as_deref(),
                Some(field),
                "{field}"
            );
        }
    }

    #[test]
    fn a_json_schema_response_format_carries_its_schema() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let r = request(json!({"response_format": {
            "type": "json_schema",
            "json_schema": {"name": "thing_1", "schema": schema, "strict": true}
        }}));
        assert_eq!(
            r.response_format().unwrap(),
            ResponseFormat::JsonSchema(std::sync::Arc::new(schema))
        );
        // No schema: any JSON value.
        let r = request(json!({"response_format": {
            "type": "json_schema", "json_schema": {"name": "any"}
        }}));
        assert_eq!(
            r.response_format().unwrap(),
            ResponseFormat::JsonSchema(std::sync::Arc::new(json!({})))
        );
    }

    #[test]
    fn top_logprobs_needs_logprobs_and_stays_within_twenty() {
        for extra in [
            json!({"top_logprobs": 2}),
            json!({"logprobs": false, "top_logprobs": 2}),
            json!({"logprobs": true, "top_logprobs": 21}),
        ] {
            assert_eq!(
                rejected_param(extra.clone()).as_deref(),
                Some("top_logprobs"),
                "{extra}"
            );
        }
        let r = request(json!({"logprobs": true, "top_logprobs": 3}));
        assert_eq!(r.logprobs_wanted(), Some(3));
        assert_eq!(
            request(json!({"logprobs": true})).logprobs_wanted(),
            Some(0)
        );
        assert_eq!(request(json!({})).logprobs_wanted(), None);
    }

    #[test]
    fn harmless_values_and_unknown_fields_pass() {
        for extra in [
            json!({"logprobs": false, "tools": null, "response_format": {"type": "text"}}),
            json!({"logprobs": true, "top_logprobs": 20}),
            json!({"n": 1, "user": "u", "metadata": {"a": "b"}, "store": false}),
            json!({"top_k": -1, "stream": null, "stream_options": null}),
            json!({"stream": true, "stream_options": {"include_usage": null}}),
        ] {
            assert_eq!(rejected_param(extra.clone()), None, "{extra}");
        }
        let r = request(json!({"top_k": -1, "stream": null}));
        assert_eq!(
            (r.sampling().top_k(), r.streamed(), r.include_usage()),
            (0, false, false)
        );
        let r = request(json!({"stream": true, "stream_options": {"include_usage": true}}));
        assert!(r.streamed() && r.include_usage());
    }

    #[test]
    fn fields_not_implemented_are_refused_unless_they_ask_for_nothing() {
        for extra in [
            json!({"modalities": ["text", "audio"]}),
            json!({"min_tokens": 3}),
            json!({"include_stop_str_in_output": true}),
            json!({"skip_special_tokens": false}),
        ] {
            let field = extra.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(rejected_param(extra.clone()), Some(field), "{extra}");
        }
        for extra in [
            json!({"modalities": ["text"], "min_tokens": 0}),
            json!({"include_stop_str_in_output": false, "skip_special_tokens": true}),
            json!({"modalities": null, "min_tokens": null}),
        ] {
            assert_eq!(rejected_param(extra.clone()), None, "{extra}");
        }
    }

    #[test]
    fn stream_options_need_a_stream() {
        for extra in [
            json!({"stream_options": {"include_usage": true}}),
            json!({"stream": false, "stream_options": {"include_usage": false}}),
            json!({"stream": null, "stream_options": {}}),
        ] {
            assert_eq!(
                rejected_param(extra.clone()).as_deref(),
                Some("stream_options"),
                "{extra}"
            );
        }
    }

    #[test]
    fn messages_become_chat_messages() {
        let r: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "reasoning_content": "hmm"},
        ]}))
        .unwrap();
        let m = r.chat_messages().unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect::<Vec<_>>(),
            [("system", "be brief"), ("user", "a\nb"), ("assistant", "")]
        );
        assert_eq!(m[2].reasoning_content.as_deref(), Some("hmm"));

        // An earlier call's arguments reach templates as an object; a result keeps its call id.
        let calls: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "2"}]}))
        .unwrap();
        let m = calls.chat_messages().unwrap();
        assert_eq!(
            m[0].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(
            (m[1].role.as_str(), m[1].tool_call_id.as_deref()),
            ("tool", Some("c"))
        );

        let bad_role: ChatRequest = serde_json::from_value(
            json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}),
        )
        .unwrap();
        let e = bad_role.chat_messages().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let image: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}))
        .unwrap();
        let e = image.chat_messages().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        assert!(e.message.contains("image_url"), "{}", e.message);
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens_and_stop_takes_both_shapes() {
        let r = request(json!({"max_tokens": 5, "max_completion_tokens": 7, "stop": "x"}));
        assert_eq!(
            (r.max_new_tokens(), r.stop_strings()),
            (Some(7), vec!["x".to_string()])
        );
        let r = request(json!({"max_tokens": 5, "stop": ["a", "b"]}));
        assert_eq!(r.max_new_tokens(), Some(5));
        assert_eq!(r.stop_strings(), ["a", "b"]);
    }
}
