//! What a caller asks the engine for, and the events it gets back.

use crate::sampling::SamplingParams;
use crate::tools::ToolUse;
use switchyard_models::text::ChatMessage;

/// The prompt of a generation request.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Raw text, tokenized as is (special tokens written in it are recognised).
    Text(String),
    /// Token ids, used as is.
    Tokens(Vec<u32>),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// Whether and how much the model may think before answering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Thinking {
    /// Answer directly (templates that know `enable_thinking` get `false`).
    #[default]
    Off,
    /// Think first; after `budget` thinking tokens (if set) the end-of-thinking marker is forced.
    On { budget: Option<usize> },
}

/// Everything about a generation except its prompt.
#[derive(Clone, Debug)]
pub struct GenerationParams {
    /// How to pick each token.
    pub sampling: SamplingParams,
    /// At most this many new tokens (thinking included); `None` means up to the context limit.
    /// `Some(0)` computes the prompt (scoring it, or filling the prefix cache) and ends with
    /// [`FinishReason::Length`] before sampling anything.
    pub max_tokens: Option<usize>,
    /// Stop when the answer text contains one of these (not included in the output).
    pub stop: Vec<String>,
    /// Stop when one of these ids is generated (in addition to the model's end-of-sequence ids).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's end-of-sequence ids.
    pub ignore_eos: bool,
    /// Thinking mode and budget.
    pub thinking: Thinking,
    /// Send each sampled token's log-probability ([`Event::Logprob`]) with this many most likely
    /// alternatives (at most [`MAX_TOP_LOGPROBS`]); `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// Also send the log-probability of every prompt token after the first under the model
    /// ([`Event::PromptLogprob`], before any generated token), with this many most likely
    /// alternatives at each position (at most [`MAX_TOP_LOGPROBS`]): scoring a text, as OpenAI's
    /// text completions do with `echo` and `logprobs`. The prompt is then computed in full (a
    /// cached prefix has no logits to give); `max_tokens: Some(0)` scores without generating.
    pub prompt_logprobs: Option<usize>,
    /// Split the `<think>` section out of the output as [`DeltaKind::Reasoning`] (chat). Off,
    /// every generated token is [`DeltaKind::Content`] exactly as the model wrote it, markers and
    /// leading whitespace included (text completions); thinking must then be off.
    pub split_thinking: bool,
    /// What the answer must be.
    pub response_format: ResponseFormat,
    /// Functions the model may (or must) call ([`crate::tools`]).
    pub tools: Option<ToolUse>,
    /// Start from the cached keys and values of the prompt's prefix when the engine has them
    /// (`EngineConfig::prefix_caching`). Off, the prompt is computed in full, in one step shape,
    /// as it would be on an empty cache: a repeated seeded request then samples exactly what it
    /// sampled before, which the reused prefix does not guarantee on a quantized model (its last
    /// positions are computed in a step of another shape). The blocks computed are offered to
    /// later requests either way.
    pub use_prefix_cache: bool,
    /// More variables for the chat template (vLLM's `chat_template_kwargs` beside
    /// `enable_thinking`), e.g. a flag a fine-tune's template reads.
    pub template_vars: serde_json::Map<String, serde_json::Value>,
}

/// What the answer (the text after any thinking) must be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResponseFormat {
    /// Any text.
    #[default]
    Text,
    /// One JSON object and nothing else (OpenAI's `json_object`): every answer token is checked
    /// against the JSON schema `{"type": "object"}` before it is sampled ([`crate::grammar`]),
    /// and the sequence ends once the object is closed. A length limit can still cut it short.
    JsonObject,
    /// JSON that matches this JSON schema (OpenAI's `json_schema`), enforced token by token
    /// ([`crate::grammar`]); a schema that cannot be enforced is refused at submission. A
    /// length limit can still cut the answer short.
    JsonSchema(std::sync::Arc<serde_json::Value>),
}

/// The most alternatives [`GenerationParams::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The most stop strings a request may give: each is searched for in every text delta, on the
/// device thread, so their number is bounded (OpenAI allows 4).
pub const MAX_STOP_STRINGS: usize = 64;

/// The most distinct stop token ids a request may give: each token sampled, and each vocabulary
/// entry of a constrained answer, is checked against them on the device thread.
pub const MAX_STOP_TOKEN_IDS: usize = 256;

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: Some(256),
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            thinking: Thinking::Off,
            logprobs: None,
            prompt_logprobs: None,
            split_thinking: true,
            response_format: ResponseFormat::Text,
            tools: None,
            use_prefix_cache: true,
            template_vars: serde_json::Map::new(),
        }
    }
}

/// A prompt and its parameters.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub params: GenerationParams,
}

/// Which part of the output a text delta belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    /// Chain-of-thought text (inside the thinking section, markers removed).
    Reasoning,
    /// The answer.
    Content,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token, stop token or stop string.
    Stop,
    /// `max_tokens` or the context limit was reached.
    Length,
}

impl FinishReason {
    /// The OpenAI name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Token counts and timings of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache (a shared prefix), not computed.
    pub cached_tokens: usize,
    /// Every generated token, thinking included.
    pub completion_tokens: usize,
    /// Generated tokens that were inside the thinking section.
    pub reasoning_tokens: usize,
    /// Seconds from submission to the first generated token.
    pub time_to_first_token: f64,
    /// Seconds from submission to the end.
    pub total_time: f64,
}

/// A sampled token's log-probability under the model: the log-softmax of its raw logits (before
/// temperature, penalties and truncation), as vLLM reports by default.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// What a request's stream carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New text.
    Delta { kind: DeltaKind, text: String },
    /// A sampled token's log-probability (when the request asked for them), sent before the text
    /// the token adds. Tokens forced by a thinking budget and a final end-of-sequence token have
    /// none.
    Logprob(TokenLogprob),
    /// A prompt token's log-probability given the tokens before it (when the request asked for
    /// [`GenerationParams::prompt_logprobs`]): one per prompt token after the first, in order,
    /// before any generated token's event.
    PromptLogprob(TokenLogprob),
    /// The end, with the reason, the usage and every generated token id (forced end-of-thinking
    /// markers and a final end-of-sequence token included). Always the last event of a served request.
    Finished {
        reason: FinishReason,
        usage: Usage,
        output_ids: Vec<u32>,
    },
    /// The request failed inside the engine; no more events follow.
    Error(String),
}
