//! The routing policy's configuration: a YAML file, validated at load.
//!
//! Two layers:
//!
//! * [`ConfigFile`] is the YAML schema, field for field (every field documented). It accepts Switchyard's
//!   own ("native") fields and the classic vLLM Semantic Router fields (`categories[].model_scores`,
//!   `default_model`, `model_config`, `reasoning_families`, `prompt_guard`, `classifier.category_model`,
//!   `keyword_rules`, ...) where they mean the same thing. Unknown fields are rejected with their path.
//! * [`RouterConfig`] is what [`crate::decision::decide`] reads: the file resolved (classic fields mapped
//!   onto native ones, defaults filled in, regexes compiled) and validated. Every validation error names
//!   the field it is about, e.g. `categories[3].jailbreak_threshold: must be in [0, 1], got 1.5`.
//!
//! Load with [`RouterConfig::from_yaml_str`] or [`RouterConfig::from_path`]; the configuration the project
//! ships is [`DEFAULT_CONFIG_YAML`] (`router/config/default.yaml`), loaded by [`RouterConfig::shipped_default`].
//! `router/README.md` documents the format with examples.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The routing configuration the project ships (`router/config/default.yaml`).
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../config/default.yaml");

/// The name a keyword rule uses to send a request to the default route.
pub const DEFAULT_ROUTE_NAME: &str = "default";

// ---------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------

/// One problem in a configuration file, with the path of the field it concerns
/// (`categories[3].model_scores[0].score`, `jailbreak.threshold`, `(root)` for the document itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, in the file's own key names.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading router config {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, a field has the wrong type, or a field is unknown.
    #[error("router config: {0}")]
    Parse(FieldError),
    /// The YAML parsed, but values are invalid (all problems found, one per line).
    #[error("router config is invalid:\n{}", display_list(.0))]
    Invalid(Vec<FieldError>),
}

fn display_list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The field errors (empty for an I/O error).
    pub fn errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Parse(e) => std::slice::from_ref(e),
            ConfigError::Invalid(list) => list,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Shared enums (used by the file schema and the resolved config)
// ---------------------------------------------------------------------------------------------------------

/// How much thinking a request deserves; mapped to a token budget by [`ReasoningBudgets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningEffort {
    /// A short think.
    Low,
    /// A medium think.
    Medium,
    /// A long think.
    High,
}

impl fmt::Display for ReasoningEffort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        })
    }
}

/// How a category's system prompt combines with one the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemPromptMode {
    /// Replace the client's system message (vLLM SR's default).
    #[default]
    Replace,
    /// Put this prompt before the client's system message.
    Insert,
}

/// How a model family switches thinking on (vLLM SR `reasoning_families.<name>`): what a router-only
/// proxy (`serve --upstream`) writes into the request it forwards for a model of the family. In
/// process the engine switches thinking its own way, per model family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasoningFamily {
    /// `chat_template_kwargs` (a chat-template variable such as Qwen3's `enable_thinking`) or
    /// `reasoning_effort` (a `reasoning_effort` request parameter, as gpt-oss).
    #[serde(rename = "type")]
    pub kind: ReasoningFamilyKind,
    /// The variable or parameter name, e.g. `enable_thinking`, `thinking`, `reasoning_effort`.
    pub parameter: String,
}

/// See [`ReasoningFamily::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningFamilyKind {
    /// A boolean chat-template variable.
    ChatTemplateKwargs,
    /// A `reasoning_effort`-style request parameter (low / medium / high).
    ReasoningEffort,
}

/// How keyword-rule terms combine (vLLM SR `keyword_rules[].operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeywordOperator {
    /// Any term matches.
    #[default]
    #[serde(rename = "OR", alias = "or")]
    Or,
    /// Every term matches.
    #[serde(rename = "AND", alias = "and")]
    And,
    /// No term matches.
    #[serde(rename = "NOR", alias = "nor")]
    Nor,
}

/// What to do with a detected jailbreak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JailbreakAction {
    /// Refuse the request with the configured message.
    #[default]
    Block,
    /// Let it through, but mark the decision (and log it).
    Flag,
}

/// What to do with one kind of personal information, for one target model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiAction {
    /// Pass the text through unchanged.
    Allow,
    /// Replace the entity's span with `[ENTITY_TYPE]`.
    Mask,
    /// Refuse the request (or, with `pii.reroute`, send it to a model that may see it).
    Block,
}

/// How the reasoning-need classifier combines with the route's `use_reasoning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningClassifierMode {
    /// A confident prediction switches thinking on (positive label) or off (any other label).
    #[default]
    Override,
    /// A confident positive prediction switches thinking on; it never switches it off.
    Upgrade,
}

// ---------------------------------------------------------------------------------------------------------
// The YAML schema
// ---------------------------------------------------------------------------------------------------------

/// The routing configuration file, as written in YAML. See `router/README.md` for the format.
///
/// Native fields come first; the classic vLLM Semantic Router fields follow. Where both spell the same
/// setting (`confidence_threshold` / `classifier.category_model.threshold`, `jailbreak.threshold` /
/// `prompt_guard.threshold`, ...) either may be used; both with different values is an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The route taken when no keyword rule matches and the domain classifier is absent, unsure
    /// (below `confidence_threshold`), or predicts a label no category claims.
    pub default_route: Option<RouteSpec>,
    /// The categories: each maps classifier labels to a route (target model, reasoning, system prompt).
    #[serde(default)]
    pub categories: Vec<CategorySpec>,
    /// Minimum probability of the domain classifier's top label for its category to be used; below it
    /// the default route is taken. In [0, 1]; default 0.6 (vLLM SR's classic default).
    pub confidence_threshold: Option<f32>,
    /// The entropy rule on the domain distribution (switches thinking on for uncertain requests).
    pub entropy: Option<EntropySpec>,
    /// How the reasoning-need classifier (labels `reasoning` / `no_reasoning`) overrides `use_reasoning`.
    pub reasoning_classifier: Option<ReasoningClassifierSpec>,
    /// Keyword / regex rules, tried in order before the classifier; the first match wins.
    #[serde(default)]
    pub keyword_rules: Vec<KeywordRuleSpec>,
    /// Jailbreak detection policy (threshold, block or flag, refusal message).
    pub jailbreak: Option<JailbreakSpec>,
    /// Personal-information policy: detection threshold and the default per-entity actions.
    pub pii: Option<PiiSpec>,
    /// The target models, by the name the engine serves them under, with their PII policy and reasoning
    /// family. When any model is declared here or in `model_config`, every model a route names must be.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// Thinking-token budgets for each reasoning effort.
    pub reasoning_budgets: Option<ReasoningBudgetsSpec>,
    /// The effort used when thinking is on and neither the route nor a rule sets a budget or an effort.
    /// Default `medium`. (Same key as vLLM SR.)
    pub default_reasoning_effort: Option<ReasoningEffort>,
    /// How each model family switches thinking on, by family name (same key and meaning as vLLM SR), e.g.
    /// `qwen3: {type: chat_template_kwargs, parameter: enable_thinking}`.
    #[serde(default)]
    pub reasoning_families: BTreeMap<String, ReasoningFamily>,
    /// Where the classifiers come from (used by the code that loads the classifier, not by the policy).
    pub classifier: Option<ClassifierSpec>,

    // ---- classic vLLM Semantic Router fields ----
    /// vLLM SR: the model used when no category matches. Equivalent to `default_route.model`.
    pub default_model: Option<String>,
    /// vLLM SR: per-model parameters (`reasoning_family`, `pii_policy`); endpoint, pricing and LoRA fields
    /// are accepted and ignored.
    #[serde(default)]
    pub model_config: BTreeMap<String, ClassicModelParams>,
    /// vLLM SR: jailbreak classifier and threshold. Maps to `jailbreak` (action `block`).
    pub prompt_guard: Option<PromptGuardSpec>,
    /// vLLM SR: embedding-similarity rules. Not supported (there is no embedding signal): an error if
    /// non-empty.
    pub embedding_rules: Option<Vec<IgnoredAny>>,
    /// vLLM SR v0.1+ decision-based format: not supported (an error if present).
    pub decisions: Option<IgnoredAny>,
    /// vLLM SR v0.1+ decision-based format: not supported (an error if present).
    pub strategy: Option<IgnoredAny>,
    /// vLLM SR v0.1+ decision-based format: not supported (an error if present).
    pub signals: Option<IgnoredAny>,
    /// vLLM SR: similarity model for the semantic cache. Accepted and ignored.
    pub bert_model: Option<IgnoredAny>,
    /// vLLM SR: semantic cache. Accepted and ignored.
    pub semantic_cache: Option<IgnoredAny>,
    /// vLLM SR: automatic tool selection. Accepted and ignored.
    pub tools: Option<IgnoredAny>,
    /// vLLM SR: backend endpoints (Switchyard serves its models in-process). Accepted and ignored.
    pub vllm_endpoints: Option<IgnoredAny>,
    /// vLLM SR: LoRA/traditional path-selection tuning. Accepted and ignored.
    pub router: Option<IgnoredAny>,
    /// vLLM SR: batch classification API settings. Accepted and ignored.
    pub api: Option<IgnoredAny>,
    /// vLLM SR: long-context embedding models. Accepted and ignored.
    pub embedding_models: Option<IgnoredAny>,
    /// vLLM SR: tracing settings. Accepted and ignored.
    pub observability: Option<IgnoredAny>,
    /// vLLM SR: the virtual model name that triggers routing (the server decides this). Accepted and ignored.
    pub auto_model_name: Option<IgnoredAny>,
    /// vLLM SR: `/v1/models` listing option. Accepted and ignored.
    pub include_config_models_in_list: Option<IgnoredAny>,
    /// vLLM SR: Envoy route-cache option. Accepted and ignored.
    pub clear_route_cache: Option<IgnoredAny>,
}

/// A route as written for `default_route` (categories carry the same fields).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Target model (a name the engine serves). For `default_route`, may come from `default_model`.
    pub model: Option<String>,
    /// Think before answering. Default false.
    pub use_reasoning: Option<bool>,
    /// Effort when thinking (budget from `reasoning_budgets`); ignored if `thinking_budget` is set.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Explicit thinking budget in tokens (> 0) when thinking; takes precedence over `reasoning_effort`.
    pub thinking_budget: Option<usize>,
    /// System prompt to inject.
    pub system_prompt: Option<String>,
    /// `replace` (default) or `insert` the system prompt.
    pub system_prompt_mode: Option<SystemPromptMode>,
}

/// One category: the classifier labels it claims and the route they take.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySpec {
    /// Category name; also the name keyword rules use. Unique (case-, `_`/`-`/space-insensitively);
    /// `default` is reserved.
    pub name: String,
    /// Free text for humans.
    pub description: Option<String>,
    /// Domain-classifier labels that select this category (vLLM SR `mmlu_categories`). Default: the
    /// category's own name. Matching ignores case and treats `_`, `-` and space alike, so
    /// `computer_science` matches the label `computer science`.
    #[serde(alias = "mmlu_categories")]
    pub labels: Option<Vec<String>>,
    /// Target model. Set this or the classic `model_scores`, not both.
    pub model: Option<String>,
    /// Think before answering. With `model_scores`, the best entry's `use_reasoning` wins over this
    /// (vLLM SR's older category-level field). Default false.
    pub use_reasoning: Option<bool>,
    /// Effort when thinking (also vLLM SR's category-level `reasoning_effort`).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Explicit thinking budget in tokens (> 0); takes precedence over `reasoning_effort`. It also applies
    /// when thinking is switched on for this category by the entropy rule or the reasoning classifier.
    pub thinking_budget: Option<usize>,
    /// System prompt to inject for this category.
    pub system_prompt: Option<String>,
    /// vLLM SR: `false` drops `system_prompt`. Default true.
    pub system_prompt_enabled: Option<bool>,
    /// `replace` (default) or `insert` (vLLM SR names and values).
    pub system_prompt_mode: Option<SystemPromptMode>,
    /// Override `jailbreak.enabled` for requests routed here (vLLM SR name).
    pub jailbreak_enabled: Option<bool>,
    /// Override `jailbreak.threshold` for requests routed here, in [0, 1] (vLLM SR name).
    pub jailbreak_threshold: Option<f32>,
    /// Override `pii.enabled` for requests routed here (vLLM SR name).
    pub pii_enabled: Option<bool>,
    /// Override `pii.threshold` for requests routed here, in [0, 1] (vLLM SR name).
    pub pii_threshold: Option<f32>,
    /// vLLM SR: candidate models with scores; the highest score is the target (the first on ties),
    /// and its `use_reasoning` / `reasoning_effort` apply. The others are PII fallbacks.
    pub model_scores: Option<Vec<ModelScoreSpec>>,
    /// vLLM SR: free text. Accepted and ignored.
    pub reasoning_description: Option<String>,
    /// vLLM SR: per-category semantic cache switch. Accepted and ignored.
    pub semantic_cache_enabled: Option<IgnoredAny>,
    /// vLLM SR: per-category semantic cache threshold. Accepted and ignored.
    pub semantic_cache_similarity_threshold: Option<IgnoredAny>,
}

/// vLLM SR `categories[].model_scores[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelScoreSpec {
    /// Model name.
    pub model: String,
    /// Preference for this model in this category (non-negative); the highest wins.
    pub score: f64,
    /// Think when this model is chosen.
    pub use_reasoning: Option<bool>,
    /// Effort when thinking.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Free text. Accepted and ignored.
    pub reasoning_description: Option<String>,
    /// LoRA adapter name: not supported (an error if set).
    pub lora_name: Option<String>,
}

/// The entropy rule. With `H` the normalised entropy (in [0, 1]) of the domain classifier's probabilities:
/// `H >= high` switches thinking on; `medium <= H < high` takes a probability-weighted vote of the top-2
/// labels' categories' `use_reasoning` (on if the "yes" weight is more than half).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropySpec {
    /// Default true.
    pub enabled: Option<bool>,
    /// Lower bound of the vote band, in [0, 1]; default 0.6 (vLLM SR's "high uncertainty").
    pub medium: Option<f32>,
    /// Above this, thinking is on; in [0, 1], >= `medium`; default 0.8 (vLLM SR's "very high").
    pub high: Option<f32>,
}

/// The reasoning-need classifier's say (see the `decision` module for the order of rules).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasoningClassifierSpec {
    /// Default true.
    pub enabled: Option<bool>,
    /// The classifier's top score must reach this to change anything; in [0, 1]; default 0.8.
    pub threshold: Option<f32>,
    /// The label meaning "needs reasoning"; default `reasoning`. Any other label means "does not".
    pub positive_label: Option<String>,
    /// `override` (default: a confident prediction switches thinking on or off) or `upgrade` (only on).
    pub mode: Option<ReasoningClassifierMode>,
    /// The routes (category names, or `default`) on which the classifier has a say; absent: every route
    /// (and without the whole section: the default route only).
    /// `[default, other]` lets categories whose `use_reasoning` is deliberate keep it, and the classifier
    /// decide only for requests no specific category claims.
    pub routes: Option<Vec<String>>,
}

/// A keyword / regex rule. Rules are tried in order, before the classifier; the first match wins. A rule
/// names a route, overrides reasoning, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordRuleSpec {
    /// Identifier reported in decisions; default `keyword_rules[<index>]`. Unique.
    pub id: Option<String>,
    /// Literal terms. A term is matched as a whole word where it begins/ends with a letter, digit or `_`
    /// (`\b` there), so `proof` does not match `waterproof` and `C++` still matches `C++ code`.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Regular expressions (Rust `regex` syntax), combined with `keywords` by `operator`.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// `OR` (default, any term), `AND` (every term) or `NOR` (no term) over keywords and patterns.
    pub operator: Option<KeywordOperator>,
    /// Default false: matching ignores case (Unicode case folding).
    pub case_sensitive: Option<bool>,
    /// The route to take: a category name or `default` (vLLM SR spells this `category`).
    #[serde(alias = "category")]
    pub route: Option<String>,
    /// Force thinking on or off.
    pub use_reasoning: Option<bool>,
    /// Force this effort (implies thinking on).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Force this budget in tokens (> 0; implies thinking on).
    pub thinking_budget: Option<usize>,
}

/// Jailbreak policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailbreakSpec {
    /// Default true (or `prompt_guard.enabled`).
    pub enabled: Option<bool>,
    /// A non-benign label with at least this score is a jailbreak; in [0, 1]; default 0.7.
    pub threshold: Option<f32>,
    /// `block` (default) or `flag`.
    pub action: Option<JailbreakAction>,
    /// Refusal text returned when blocking.
    pub message: Option<String>,
    /// Labels that mean "not a jailbreak"; default `[benign]`. Compared case-insensitively.
    pub benign_labels: Option<Vec<String>>,
}

/// Personal-information settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSpec {
    /// Default true.
    pub enabled: Option<bool>,
    /// Entities scoring below this are ignored; in [0, 1]; default 0.5 (or `classifier.pii_model.threshold`).
    pub threshold: Option<f32>,
    /// Policy for models that declare none. Default: allow everything.
    pub default_policy: Option<PiiPolicySpec>,
    /// When the target model's policy blocks an entity, try the category's other `model_scores` models
    /// (best score first) and then the default route's model before refusing. Default true (as vLLM SR).
    pub reroute: Option<bool>,
    /// Refusal text when PII blocks a request; `{entity_types}` is replaced by the blocked types.
    pub block_message: Option<String>,
}

/// A PII policy: an action per entity type, and one for the rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiPolicySpec {
    /// Action for entity types not listed in `entities`. Default `allow`.
    pub default: Option<PiiAction>,
    /// Action per entity type (e.g. `US_SSN: block`, `EMAIL_ADDRESS: mask`); case-insensitive.
    #[serde(default)]
    pub entities: BTreeMap<String, PiiAction>,
}

/// A target model (native `models.<name>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Free text for humans.
    pub description: Option<String>,
    /// A key of `reasoning_families`: how this model switches thinking on. Absent: the engine's default.
    pub reasoning_family: Option<String>,
    /// This model's PII policy; default `pii.default_policy`.
    pub pii: Option<PiiPolicySpec>,
}

/// vLLM SR `model_config.<name>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassicModelParams {
    /// A key of `reasoning_families`.
    pub reasoning_family: Option<String>,
    /// PII policy. As in vLLM SR, a model listed here without `pii_policy` (or with
    /// `allow_by_default: false` and no `pii_types_allowed`) refuses every PII type.
    pub pii_policy: Option<ClassicPiiPolicy>,
    /// Accepted and ignored.
    pub preferred_endpoints: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub pricing: Option<IgnoredAny>,
    /// Accepted and ignored (LoRA routing is not supported).
    pub loras: Option<IgnoredAny>,
}

/// vLLM SR `model_config.<name>.pii_policy`: `allow_by_default: true` allows everything; otherwise only
/// `pii_types_allowed` are allowed and every other type blocks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassicPiiPolicy {
    /// Default false.
    pub allow_by_default: Option<bool>,
    /// Entity types allowed when `allow_by_default` is false.
    #[serde(default)]
    pub pii_types_allowed: Vec<String>,
}

/// Thinking budgets (tokens) per effort.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasoningBudgetsSpec {
    /// Default 512.
    pub low: Option<usize>,
    /// Default 2048.
    pub medium: Option<usize>,
    /// Default 8192.
    pub high: Option<usize>,
}

/// Where the classifiers come from (read by the classifier loader; the policy ignores it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Native: a multi-head router directory (one ModernBERT backbone, several heads), e.g.
    /// `router/models/default`.
    pub model_dir: Option<String>,
    /// vLLM SR: the domain classifier. Its `threshold` is `confidence_threshold`.
    pub category_model: Option<CategoryModelSpec>,
    /// vLLM SR: the PII token classifier. Its `threshold` is `pii.threshold`.
    pub pii_model: Option<PiiModelSpec>,
    /// vLLM SR: an out-of-tree classifier over MCP. Accepted and ignored.
    pub mcp_category_model: Option<IgnoredAny>,
    /// Native: the sentence-embedding signal fused with the domain head (`embedding.json` in
    /// `model_dir`, on a pretrained encoder the binary fetches; see `router/README.md`).
    pub embedding: Option<EmbeddingSpec>,
    /// Native: how the ModernBERT backbones' linear layers run on the CPU (`f32` or `q8_0`;
    /// default `f32`). Ignored on other devices.
    pub cpu_weights: Option<CpuWeights>,
}

/// How the router's backbones keep their linear weights on the CPU (`classifier.cpu_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CpuWeights {
    /// As the checkpoint stores them, in f32 (matches `transformers` to 1e-4).
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// 8-bit weights and activations, one scale per 32 values (GGML Q8_0), on the integer kernels:
    /// about 1.5x faster products at router sizes, outputs within 8-bit rounding of f32.
    #[serde(rename = "q8_0")]
    Q8_0,
}

/// `classifier.embedding`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    /// Whether the signal is used; default true when the section is present.
    pub enabled: Option<bool>,
    /// The encoder's directory (Hugging Face BERT layout with `tokenizer.json`). Default: the model
    /// cache's `models/all-MiniLM-L6-v2`, where `switchyard fetch-model` puts it.
    pub encoder_dir: Option<String>,
    /// Skip the sentence encoder for a request when the fast signals (the domain head fused with the
    /// text-only lexical model) already give the top domain this probability or more; in [0, 1].
    /// Absent: the encoder runs on every request.
    pub skip_when_confident: Option<f32>,
}

/// vLLM SR `classifier.category_model`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryModelSpec {
    /// Model directory or id.
    pub model_id: Option<String>,
    /// Minimum top-label probability; same as `confidence_threshold`.
    pub threshold: Option<f32>,
    /// The checkpoint is a ModernBERT.
    pub use_modernbert: Option<bool>,
    /// Run on the CPU.
    pub use_cpu: Option<bool>,
    /// `category_mapping.json` (label names).
    pub category_mapping_path: Option<String>,
}

/// vLLM SR `classifier.pii_model`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiModelSpec {
    /// Model directory or id.
    pub model_id: Option<String>,
    /// Minimum entity score; same as `pii.threshold`.
    pub threshold: Option<f32>,
    /// The checkpoint is a ModernBERT.
    pub use_modernbert: Option<bool>,
    /// Run on the CPU.
    pub use_cpu: Option<bool>,
    /// `pii_type_mapping.json` (label names).
    pub pii_mapping_path: Option<String>,
}

/// vLLM SR `prompt_guard`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptGuardSpec {
    /// Same as `jailbreak.enabled`; absent, a `prompt_guard` section leaves detection off (the vLLM
    /// Semantic Router's default).
    pub enabled: Option<bool>,
    /// Same as `jailbreak.threshold`.
    pub threshold: Option<f32>,
    /// The checkpoint is a ModernBERT.
    pub use_modernbert: Option<bool>,
    /// Model directory or id.
    pub model_id: Option<String>,
    /// `jailbreak_type_mapping.json` (label names).
    pub jailbreak_mapping_path: Option<String>,
    /// Run on the CPU.
    pub use_cpu: Option<bool>,
}

// ---------------------------------------------------------------------------------------------------------
// The resolved configuration
// ---------------------------------------------------------------------------------------------------------

/// A validated routing configuration: what [`crate::decision::decide`] reads.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The route taken when nothing more specific applies.
    pub default_route: Route,
    /// Categories, in file order.
    pub categories: Vec<Category>,
    /// Minimum top-label probability of the domain classifier for its category to be used.
    pub confidence_threshold: f32,
    /// The entropy rule.
    pub entropy: EntropyRule,
    /// The reasoning-need classifier rule.
    pub reasoning_classifier: ReasoningClassifierRule,
    /// Keyword / regex rules, in order.
    pub keyword_rules: Vec<KeywordRule>,
    /// Jailbreak policy.
    pub jailbreak: JailbreakPolicy,
    /// PII settings.
    pub pii: PiiSettings,
    /// Declared target models (from `models` and `model_config`). Empty: any model name is accepted.
    pub models: BTreeMap<String, ModelInfo>,
    /// Reasoning families by name.
    pub reasoning_families: BTreeMap<String, ReasoningFamily>,
    /// Thinking budgets per effort.
    pub reasoning_budgets: ReasoningBudgets,
    /// Effort used when nothing else sets one.
    pub default_reasoning_effort: ReasoningEffort,
    /// Where the classifiers come from.
    pub classifier: ClassifierSources,
    /// Classic vLLM SR fields that were present and are ignored (paths), for a start-up warning.
    pub ignored_fields: Vec<String>,
}

/// A route: where a request goes and how it is generated.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The category name, or `default`.
    pub name: String,
    /// Target model.
    pub model: String,
    /// Think before answering (before the entropy rule, the reasoning classifier and keyword rules).
    pub use_reasoning: bool,
    /// Effort when thinking.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Explicit budget when thinking (wins over the effort).
    pub thinking_budget: Option<usize>,
    /// System prompt to inject.
    pub system_prompt: Option<SystemPrompt>,
    /// Override of `jailbreak.enabled`.
    pub jailbreak_enabled: Option<bool>,
    /// Override of `jailbreak.threshold`.
    pub jailbreak_threshold: Option<f32>,
    /// Override of `pii.enabled`.
    pub pii_enabled: Option<bool>,
    /// Override of `pii.threshold`.
    pub pii_threshold: Option<f32>,
    /// Other models for this route, best first (from `model_scores`): PII reroute candidates.
    pub alternatives: Vec<Alternative>,
}

/// Another model a route may send a request to (a `model_scores` entry after the best), with the
/// reasoning its entry sets, which applies when the PII policy reroutes a request to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    /// The model.
    pub model: String,
    /// Its entry's `use_reasoning` (`None`: the entry does not say; the decision keeps its own).
    pub use_reasoning: Option<bool>,
    /// Its entry's `reasoning_effort`, else the category's.
    pub reasoning_effort: Option<ReasoningEffort>,
}

/// A system prompt and how to apply it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemPrompt {
    /// The prompt.
    pub text: String,
    /// Replace or insert.
    pub mode: SystemPromptMode,
}

/// A category: the classifier labels it claims and its route.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// Its route (`route.name` is the category name).
    pub route: Route,
    /// Free text.
    pub description: Option<String>,
    /// Normalised labels (see [`normalize_label`]).
    pub labels: Vec<String>,
}

/// See [`EntropySpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntropyRule {
    /// Whether the rule applies.
    pub enabled: bool,
    /// Lower bound of the vote band.
    pub medium: f32,
    /// Thinking-on bound.
    pub high: f32,
}

/// See [`ReasoningClassifierSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReasoningClassifierRule {
    /// Whether the classifier's output is used.
    pub enabled: bool,
    /// Minimum top score to act on.
    pub threshold: f32,
    /// Normalised positive label.
    pub positive_label: String,
    /// Override or upgrade.
    pub mode: ReasoningClassifierMode,
    /// The routes the classifier applies to; `None`: every route.
    pub routes: Option<Vec<RouteRef>>,
}

impl ReasoningClassifierRule {
    /// Whether the classifier has a say on `route`.
    pub fn applies_to(&self, route: RouteRef) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
    }
}

/// A compiled keyword rule.
#[derive(Debug, Clone)]
pub struct KeywordRule {
    /// Identifier.
    pub id: String,
    /// How terms combine.
    pub operator: KeywordOperator,
    /// Case-sensitive matching.
    pub case_sensitive: bool,
    /// Where the rule sends the request (`None`: the classifier still chooses the route).
    pub route: Option<RouteRef>,
    /// Reasoning override.
    pub reasoning: Option<ReasoningOverride>,
    terms: Vec<(String, Regex)>,
}

/// A reference to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRef {
    /// The default route.
    Default,
    /// `categories[i]`.
    Category(usize),
}

/// A keyword rule's reasoning override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningOverride {
    /// Thinking on or off.
    pub use_reasoning: bool,
    /// Effort, if set.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Budget, if set.
    pub thinking_budget: Option<usize>,
}

impl KeywordRule {
    /// If the rule matches `text`, the terms that matched (empty for a `NOR` rule); else `None`.
    pub fn matches(&self, text: &str) -> Option<Vec<String>> {
        match self.operator {
            KeywordOperator::Or => self
                .terms
                .iter()
                .find(|(_, re)| re.is_match(text))
                .map(|(t, _)| vec![t.clone()]),
            KeywordOperator::And => {
                if self.terms.iter().all(|(_, re)| re.is_match(text)) {
                    Some(self.terms.iter().map(|(t, _)| t.clone()).collect())
                } else {
                    None
                }
            }
            KeywordOperator::Nor => {
                if self.terms.iter().any(|(_, re)| re.is_match(text)) {
                    None
                } else {
                    Some(Vec::new())
                }
            }
        }
    }
}

/// See [`JailbreakSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct JailbreakPolicy {
    /// Whether detection is used.
    pub enabled: bool,
    /// Minimum score of a non-benign label.
    pub threshold: f32,
    /// Block or flag.
    pub action: JailbreakAction,
    /// Refusal text.
    pub message: String,
    /// Normalised benign labels.
    pub benign_labels: Vec<String>,
}

impl JailbreakPolicy {
    /// Whether `label` is one of the benign labels.
    pub fn is_benign(&self, label: &str) -> bool {
        let l = normalize_label(label);
        self.benign_labels.contains(&l)
    }
}

/// See [`PiiSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct PiiSettings {
    /// Whether PII entities are acted on.
    pub enabled: bool,
    /// Minimum entity score.
    pub threshold: f32,
    /// Policy for models without their own.
    pub default_policy: PiiPolicy,
    /// Try other models before refusing.
    pub reroute: bool,
    /// Refusal text (`{entity_types}` is substituted).
    pub block_message: String,
}

/// A resolved PII policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiPolicy {
    /// Action for unlisted types.
    pub default: PiiAction,
    /// Action per normalised entity type (see [`normalize_entity_type`]).
    pub entities: BTreeMap<String, PiiAction>,
}

impl PiiPolicy {
    /// Allow everything.
    pub fn allow_all() -> Self {
        PiiPolicy {
            default: PiiAction::Allow,
            entities: BTreeMap::new(),
        }
    }

    /// The action for one entity type (raw or normalised).
    pub fn action_for(&self, entity_type: &str) -> PiiAction {
        self.entities
            .get(&normalize_entity_type(entity_type))
            .copied()
            .unwrap_or(self.default)
    }
}

/// A declared target model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Reasoning family name (a key of [`RouterConfig::reasoning_families`]).
    pub reasoning_family: Option<String>,
    /// Its own PII policy (else [`PiiSettings::default_policy`]).
    pub pii: Option<PiiPolicy>,
}

/// Thinking budgets per effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningBudgets {
    /// For `low`.
    pub low: usize,
    /// For `medium`.
    pub medium: usize,
    /// For `high`.
    pub high: usize,
}

impl Default for ReasoningBudgets {
    fn default() -> Self {
        ReasoningBudgets {
            low: 512,
            medium: 2048,
            high: 8192,
        }
    }
}

impl ReasoningBudgets {
    /// The budget for an effort.
    pub fn budget(&self, effort: ReasoningEffort) -> usize {
        match effort {
            ReasoningEffort::Low => self.low,
            ReasoningEffort::Medium => self.medium,
            ReasoningEffort::High => self.high,
        }
    }
}

/// Where the classifiers come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassifierSources {
    /// A multi-head router directory (`classifier.model_dir`).
    pub model_dir: Option<String>,
    /// vLLM SR `classifier.category_model`.
    pub category_model: Option<ModelSource>,
    /// vLLM SR `classifier.pii_model`.
    pub pii_model: Option<ModelSource>,
    /// vLLM SR `prompt_guard`.
    pub jailbreak_model: Option<ModelSource>,
    /// The embedding signal (`classifier.embedding`), when enabled.
    pub embedding: Option<EmbeddingSource>,
    /// How the backbones' linear layers run on the CPU (`classifier.cpu_weights`).
    pub cpu_weights: CpuWeights,
}

/// An enabled embedding signal (`classifier.embedding`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingSource {
    /// The encoder's directory; `None`: the model cache's default.
    pub encoder_dir: Option<String>,
    /// `classifier.embedding.skip_when_confident`: the fast signals' top domain probability from
    /// which the encoder is skipped; `None`: it always runs.
    pub skip_when_confident: Option<f32>,
}

/// A single-task classifier checkpoint (vLLM SR style).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSource {
    /// Model directory or id.
    pub model_id: String,
    /// Label mapping file, if given.
    pub mapping_path: Option<String>,
    /// `use_modernbert`, if given.
    pub use_modernbert: Option<bool>,
    /// `use_cpu`, if given.
    pub use_cpu: Option<bool>,
}

/// Label normalisation used for matching classifier labels to categories and rules: trimmed, lower-case,
/// `_` and `-` read as spaces, runs of whitespace collapsed (`Computer_Science` -> `computer science`).
pub fn normalize_label(label: &str) -> String {
    label
        .to_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Entity-type normalisation: trimmed, a BIO prefix (`B-`, `I-`) removed, upper-case, spaces and `-` read
/// as `_` (`b-person` -> `PERSON`, `email address` -> `EMAIL_ADDRESS`).
pub fn normalize_entity_type(entity_type: &str) -> String {
    let t = entity_type.trim();
    let t = ["B-", "I-", "b-", "i-"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    t.to_uppercase()
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

// ---------------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------------

impl RouterConfig {
    /// Parse and validate a YAML document.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        let file = ConfigFile::from_yaml_str(yaml)?;
        Self::from_file(file)
    }

    /// Read, parse and validate a YAML file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// The configuration the project ships ([`DEFAULT_CONFIG_YAML`]).
    pub fn shipped_default() -> Result<Self, ConfigError> {
        Self::from_yaml_str(DEFAULT_CONFIG_YAML)
    }

    /// Validate and resolve a parsed file. Reports every problem found, each with its field path.
    pub fn from_file(file: ConfigFile) -> Result<Self, ConfigError> {
        let mut errs = Errors::default();
        let cfg = resolve(file, &mut errs);
        if errs.0.is_empty() {
            for path in &cfg.ignored_fields {
                tracing::warn!(field = %path, "router config: vLLM Semantic Router field accepted and ignored");
            }
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(errs.0))
        }
    }

    /// The route a name refers to: a category (matched like labels) or `default`.
    pub fn route_by_name(&self, name: &str) -> Option<&Route> {
        let n = normalize_label(name);
        if n == DEFAULT_ROUTE_NAME {
            return Some(&self.default_route);
        }
        self.categories
            .iter()
            .find(|c| normalize_label(&c.route.name) == n)
            .map(|c| &c.route)
    }

    /// The route behind a [`RouteRef`].
    pub fn route(&self, r: RouteRef) -> &Route {
        match r {
            RouteRef::Default => &self.default_route,
            RouteRef::Category(i) => &self.categories[i].route,
        }
    }

    /// The category that claims a classifier label, if any.
    pub fn category_for_label(&self, label: &str) -> Option<&Category> {
        let l = normalize_label(label);
        self.categories.iter().find(|c| c.labels.contains(&l))
    }

    /// The PII policy that applies to a target model.
    pub fn pii_policy_for(&self, model: &str) -> &PiiPolicy {
        self.models
            .get(model)
            .and_then(|m| m.pii.as_ref())
            .unwrap_or(&self.pii.default_policy)
    }

    /// How a target model switches thinking on, if its family is configured.
    pub fn reasoning_family_for(&self, model: &str) -> Option<&ReasoningFamily> {
        self.models
            .get(model)
            .and_then(|m| m.reasoning_family.as_ref())
            .and_then(|f| self.reasoning_families.get(f))
    }

    /// Whether the jailbreak or the PII policy is on anywhere (globally, or on some route).
    pub fn guards_enabled(&self) -> bool {
        self.jailbreak.enabled
            || self.pii.enabled
            || std::iter::once(&self.default_route)
                .chain(self.categories.iter().map(|c| &c.route))
                .any(|r| r.jailbreak_enabled == Some(true) || r.pii_enabled == Some(true))
    }

    /// Every model a route can send a request to (targets and PII alternatives), so that the server can
    /// check at start-up that it serves them all.
    pub fn referenced_models(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in
            std::iter::once(&self.default_route).chain(self.categories.iter().map(|c| &c.route))
        {
            out.insert(r.model.clone());
            out.extend(r.alternatives.iter().map(|a| a.model.clone()));
        }
        out
    }
}

impl ConfigFile {
    /// Parse YAML into the schema (no validation beyond types and unknown fields). Errors carry the
    /// field path (`categories[2].model_scores[0].score`) and the YAML location.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        let de = yaml_serde::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path.is_empty() || path == "." {
                "(root)".to_string()
            } else {
                path
            };
            ConfigError::Parse(FieldError {
                path,
                message: e.into_inner().to_string(),
            })
        })
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn unit(&mut self, path: impl Into<String>, value: f32) {
        if !(0.0..=1.0).contains(&value) {
            self.push(path, format!("must be in [0, 1], got {value}"));
        }
    }

    fn budget(&mut self, path: impl Into<String>, value: Option<usize>) {
        if value == Some(0) {
            self.push(
                path,
                "must be > 0 (to disable thinking set use_reasoning: false)",
            );
        }
    }

    /// Two spellings of one setting: either, or both if equal.
    fn merge<T: PartialEq + fmt::Debug>(
        &mut self,
        native: Option<T>,
        native_path: &str,
        classic: Option<T>,
        classic_path: &str,
    ) -> Option<T> {
        match (native, classic) {
            (Some(a), Some(b)) => {
                if a != b {
                    self.push(
                        native_path,
                        format!("conflicts with {classic_path} ({a:?} vs {b:?}); set only one"),
                    );
                }
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }
}

fn resolve(f: ConfigFile, errs: &mut Errors) -> RouterConfig {
    let mut ignored = Vec::new();

    // ---- unsupported classic features ----
    if let Some(rules) = &f.embedding_rules {
        if !rules.is_empty() {
            errs.push(
                "embedding_rules",
                "not supported (Switchyard has no embedding-similarity signal); use keyword_rules or remove them",
            );
        }
    }
    for (present, key) in [
        (f.decisions.is_some(), "decisions"),
        (f.strategy.is_some(), "strategy"),
        (f.signals.is_some(), "signals"),
    ] {
        if present {
            errs.push(
                key,
                "the decision-based vLLM Semantic Router format (v0.1+) is not supported; use categories with model or model_scores",
            );
        }
    }
    for (present, key) in [
        (f.bert_model.is_some(), "bert_model"),
        (f.semantic_cache.is_some(), "semantic_cache"),
        (f.tools.is_some(), "tools"),
        (f.vllm_endpoints.is_some(), "vllm_endpoints"),
        (f.router.is_some(), "router"),
        (f.api.is_some(), "api"),
        (f.embedding_models.is_some(), "embedding_models"),
        (f.observability.is_some(), "observability"),
        (f.auto_model_name.is_some(), "auto_model_name"),
        (
            f.include_config_models_in_list.is_some(),
            "include_config_models_in_list",
        ),
        (f.clear_route_cache.is_some(), "clear_route_cache"),
    ] {
        if present {
            ignored.push(key.to_string());
        }
    }

    // ---- reasoning families, budgets ----
    for (name, fam) in &f.reasoning_families {
        if fam.parameter.trim().is_empty() {
            errs.push(
                format!("reasoning_families.{name}.parameter"),
                "must not be empty",
            );
        }
    }
    let b = f.reasoning_budgets.clone().unwrap_or_default();
    let defaults = ReasoningBudgets::default();
    errs.budget("reasoning_budgets.low", b.low);
    errs.budget("reasoning_budgets.medium", b.medium);
    errs.budget("reasoning_budgets.high", b.high);
    let reasoning_budgets = ReasoningBudgets {
        low: b.low.unwrap_or(defaults.low),
        medium: b.medium.unwrap_or(defaults.medium),
        high: b.high.unwrap_or(defaults.high),
    };
    let default_reasoning_effort = f
        .default_reasoning_effort
        .unwrap_or(ReasoningEffort::Medium);

    // ---- models ----
    let mut models = BTreeMap::new();
    for (name, m) in &f.models {
        let path = format!("models.{name}");
        if name.trim().is_empty() {
            errs.push(&path, "model name must not be empty");
        }
        let pii = m
            .pii
            .as_ref()
            .map(|p| resolve_pii_policy(p, &format!("{path}.pii"), errs));
        models.insert(
            name.clone(),
            ModelInfo {
                reasoning_family: m.reasoning_family.clone(),
                pii,
            },
        );
        check_family(
            m.reasoning_family.as_deref(),
            &format!("{path}.reasoning_family"),
            &f.reasoning_families,
            errs,
        );
    }
    for (name, m) in &f.model_config {
        let path = format!("model_config.{name}");
        if models.contains_key(name) {
            errs.push(
                &path,
                format!("model also declared in models.{name}; declare it once"),
            );
            continue;
        }
        if name.trim().is_empty() {
            errs.push(&path, "model name must not be empty");
        }
        check_family(
            m.reasoning_family.as_deref(),
            &format!("{path}.reasoning_family"),
            &f.reasoning_families,
            errs,
        );
        for key in [
            m.preferred_endpoints.map(|_| "preferred_endpoints"),
            m.pricing.map(|_| "pricing"),
            m.loras.map(|_| "loras"),
        ]
        .into_iter()
        .flatten()
        {
            ignored.push(format!("{path}.{key}"));
        }
        // vLLM SR semantics: a listed model without allow_by_default: true refuses every type not listed.
        let classic = m.pii_policy.clone().unwrap_or_default();
        let mut entities = BTreeMap::new();
        for (i, t) in classic.pii_types_allowed.iter().enumerate() {
            let n = normalize_entity_type(t);
            if n.is_empty() {
                errs.push(
                    format!("{path}.pii_policy.pii_types_allowed[{i}]"),
                    "must not be empty",
                );
            }
            entities.insert(n, PiiAction::Allow);
        }
        let default = if classic.allow_by_default.unwrap_or(false) {
            PiiAction::Allow
        } else {
            PiiAction::Block
        };
        models.insert(
            name.clone(),
            ModelInfo {
                reasoning_family: m.reasoning_family.clone(),
                pii: Some(PiiPolicy { default, entities }),
            },
        );
    }
    let declared: Vec<String> = models.keys().cloned().collect();
    let check_model = |errs: &mut Errors, path: &str, model: &str| {
        if model.trim().is_empty() {
            errs.push(path, "must not be empty");
        } else if !declared.is_empty() && !declared.iter().any(|d| d == model) {
            errs.push(
                path,
                format!(
                    "unknown model \"{model}\" (declared in models / model_config: {})",
                    declared.join(", ")
                ),
            );
        }
    };

    // ---- default route ----
    let dr = f.default_route.clone().unwrap_or_default();
    let default_model = errs.merge(
        dr.model.clone(),
        "default_route.model",
        f.default_model.clone(),
        "default_model",
    );
    let default_model = match default_model {
        Some(m) => {
            let path = if dr.model.is_some() {
                "default_route.model"
            } else {
                "default_model"
            };
            check_model(errs, path, &m);
            m
        }
        None => {
            errs.push(
                "default_route.model",
                "required (or the classic default_model)",
            );
            String::new()
        }
    };
    errs.budget("default_route.thinking_budget", dr.thinking_budget);
    let default_route = Route {
        name: DEFAULT_ROUTE_NAME.to_string(),
        model: default_model,
        use_reasoning: dr.use_reasoning.unwrap_or(false),
        reasoning_effort: dr.reasoning_effort,
        thinking_budget: dr.thinking_budget,
        // A blank prompt is none, as for a category.
        system_prompt: dr
            .system_prompt
            .clone()
            .filter(|text| !text.trim().is_empty())
            .map(|text| SystemPrompt {
                text,
                mode: dr.system_prompt_mode.unwrap_or_default(),
            }),
        jailbreak_enabled: None,
        jailbreak_threshold: None,
        pii_enabled: None,
        pii_threshold: None,
        alternatives: Vec::new(),
    };

    // ---- categories ----
    let mut categories = Vec::with_capacity(f.categories.len());
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen_labels: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in f.categories.iter().enumerate() {
        let p = format!("categories[{i}]");
        let norm = normalize_label(&c.name);
        if norm.is_empty() {
            errs.push(format!("{p}.name"), "must not be empty");
        } else if norm == DEFAULT_ROUTE_NAME {
            errs.push(
                format!("{p}.name"),
                "\"default\" is reserved for the default route",
            );
        } else if let Some(j) = seen_names.insert(norm.clone(), i) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate category \"{}\" (also categories[{j}])", c.name),
            );
        }
        let labels: Vec<String> = match &c.labels {
            Some(ls) => {
                if ls.is_empty() {
                    errs.push(
                        format!("{p}.labels"),
                        "must list at least one label (or be omitted: the name is the label)",
                    );
                }
                ls.iter().map(|l| normalize_label(l)).collect()
            }
            None => vec![norm.clone()],
        };
        for (k, l) in labels.iter().enumerate() {
            if l.is_empty() {
                errs.push(format!("{p}.labels[{k}]"), "must not be empty");
            } else if let Some(&j) = seen_labels.get(l) {
                if j != i {
                    errs.push(
                        format!("{p}.labels[{k}]"),
                        format!("label \"{l}\" is already claimed by categories[{j}]"),
                    );
                }
            } else {
                seen_labels.insert(l.clone(), i);
            }
        }

        // target model: native `model` or classic `model_scores`
        let mut use_reasoning = c.use_reasoning;
        let mut reasoning_effort = c.reasoning_effort;
        let mut alternatives = Vec::new();
        let model = match (&c.model, &c.model_scores) {
            (Some(_), Some(_)) => {
                errs.push(
                    format!("{p}.model_scores"),
                    "set either model or model_scores, not both",
                );
                String::new()
            }
            (Some(m), None) => {
                check_model(errs, &format!("{p}.model"), m);
                m.clone()
            }
            (None, Some(scores)) => {
                if scores.is_empty() {
                    errs.push(format!("{p}.model_scores"), "must list at least one model");
                }
                for (j, s) in scores.iter().enumerate() {
                    let sp = format!("{p}.model_scores[{j}]");
                    check_model(errs, &format!("{sp}.model"), &s.model);
                    // Any non-negative preference, as the vLLM SR accepts (it has no upper bound).
                    if !(s.score.is_finite() && s.score >= 0.0) {
                        errs.push(
                            format!("{sp}.score"),
                            format!("must be a non-negative number, got {}", s.score),
                        );
                    }
                    if s.lora_name.is_some() {
                        errs.push(
                            format!("{sp}.lora_name"),
                            "LoRA adapters are not supported by Switchyard; remove lora_name",
                        );
                    }
                }
                // best score wins, first on ties
                let mut order: Vec<usize> = (0..scores.len()).collect();
                order.sort_by(|&a, &b| {
                    scores[b]
                        .score
                        .partial_cmp(&scores[a].score)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.cmp(&b))
                });
                match order.first() {
                    Some(&best) => {
                        let s = &scores[best];
                        use_reasoning = s.use_reasoning.or(use_reasoning);
                        reasoning_effort = s.reasoning_effort.or(reasoning_effort);
                        for &o in &order[1..] {
                            let other = &scores[o];
                            if !alternatives
                                .iter()
                                .any(|a: &Alternative| a.model == other.model)
                                && other.model != s.model
                            {
                                alternatives.push(Alternative {
                                    model: other.model.clone(),
                                    use_reasoning: other.use_reasoning,
                                    reasoning_effort: other.reasoning_effort.or(c.reasoning_effort),
                                });
                            }
                        }
                        s.model.clone()
                    }
                    None => String::new(),
                }
            }
            (None, None) => {
                errs.push(
                    format!("{p}.model"),
                    "required: set model (or the classic model_scores)",
                );
                String::new()
            }
        };
        errs.budget(format!("{p}.thinking_budget"), c.thinking_budget);
        if let Some(t) = c.jailbreak_threshold {
            errs.unit(format!("{p}.jailbreak_threshold"), t);
        }
        if let Some(t) = c.pii_threshold {
            errs.unit(format!("{p}.pii_threshold"), t);
        }
        for (present, key) in [
            (c.semantic_cache_enabled.is_some(), "semantic_cache_enabled"),
            (
                c.semantic_cache_similarity_threshold.is_some(),
                "semantic_cache_similarity_threshold",
            ),
        ] {
            if present {
                ignored.push(format!("{p}.{key}"));
            }
        }
        let system_prompt = match (&c.system_prompt, c.system_prompt_enabled) {
            (Some(text), enabled) if enabled != Some(false) && !text.trim().is_empty() => {
                Some(SystemPrompt {
                    text: text.clone(),
                    mode: c.system_prompt_mode.unwrap_or_default(),
                })
            }
            _ => None,
        };
        categories.push(Category {
            route: Route {
                name: c.name.clone(),
                model,
                use_reasoning: use_reasoning.unwrap_or(false),
                reasoning_effort,
                thinking_budget: c.thinking_budget,
                system_prompt,
                jailbreak_enabled: c.jailbreak_enabled,
                jailbreak_threshold: c.jailbreak_threshold,
                pii_enabled: c.pii_enabled,
                pii_threshold: c.pii_threshold,
                alternatives,
            },
            description: c.description.clone(),
            labels,
        });
    }

    // ---- thresholds ----
    let category_model = f.classifier.as_ref().and_then(|c| c.category_model.clone());
    let pii_model = f.classifier.as_ref().and_then(|c| c.pii_model.clone());
    let confidence_threshold = errs
        .merge(
            f.confidence_threshold,
            "confidence_threshold",
            category_model.as_ref().and_then(|m| m.threshold),
            "classifier.category_model.threshold",
        )
        .unwrap_or(0.6);
    let conf_path = if f.confidence_threshold.is_some()
        || category_model.as_ref().and_then(|m| m.threshold).is_none()
    {
        "confidence_threshold"
    } else {
        "classifier.category_model.threshold"
    };
    errs.unit(conf_path, confidence_threshold);

    let e = f.entropy.clone().unwrap_or_default();
    let entropy = EntropyRule {
        enabled: e.enabled.unwrap_or(true),
        medium: e.medium.unwrap_or(0.6),
        high: e.high.unwrap_or(0.8),
    };
    errs.unit("entropy.medium", entropy.medium);
    errs.unit("entropy.high", entropy.high);
    if entropy.medium > entropy.high {
        errs.push(
            "entropy.medium",
            format!(
                "must be <= entropy.high ({} > {})",
                entropy.medium, entropy.high
            ),
        );
    }

    // Without the section, the head decides only where no category claims the request: a
    // category's `use_reasoning` stays final, as in the vLLM Semantic Router (which has no such
    // head), and on every route the head would make routed = always-think (see default.yaml).
    let section = f.reasoning_classifier.is_some();
    let rc = f.reasoning_classifier.clone().unwrap_or_default();
    let reasoning_classifier = ReasoningClassifierRule {
        enabled: rc.enabled.unwrap_or(true),
        threshold: rc.threshold.unwrap_or(0.8),
        positive_label: normalize_label(rc.positive_label.as_deref().unwrap_or("reasoning")),
        mode: rc.mode.unwrap_or_default(),
        routes: rc.routes.as_ref().map(|names| {
            names
                .iter()
                .enumerate()
                .filter_map(|(k, name)| {
                    route_ref_by_name(&categories, name)
                        .map_err(|e| errs.push(format!("reasoning_classifier.routes[{k}]"), e))
                        .ok()
                })
                .collect()
        }),
    };
    let reasoning_classifier = ReasoningClassifierRule {
        routes: if section {
            reasoning_classifier.routes
        } else {
            Some(vec![RouteRef::Default])
        },
        ..reasoning_classifier
    };
    errs.unit(
        "reasoning_classifier.threshold",
        reasoning_classifier.threshold,
    );
    if reasoning_classifier.positive_label.is_empty() {
        errs.push("reasoning_classifier.positive_label", "must not be empty");
    }

    // ---- jailbreak ----
    let j = f.jailbreak.clone().unwrap_or_default();
    let pg = f.prompt_guard.clone().unwrap_or_default();
    let jb_threshold = errs
        .merge(
            j.threshold,
            "jailbreak.threshold",
            pg.threshold,
            "prompt_guard.threshold",
        )
        .unwrap_or(0.7);
    errs.unit(
        if j.threshold.is_some() || pg.threshold.is_none() {
            "jailbreak.threshold"
        } else {
            "prompt_guard.threshold"
        },
        jb_threshold,
    );
    let jb_enabled = errs
        .merge(
            j.enabled,
            "jailbreak.enabled",
            pg.enabled,
            "prompt_guard.enabled",
        )
        // On by default; a classic `prompt_guard` section without `enabled` is off, as in the vLLM
        // Semantic Router (its `enabled` defaults to false).
        .unwrap_or(f.prompt_guard.is_none());
    let benign_labels: Vec<String> = j
        .benign_labels
        .clone()
        .unwrap_or_else(|| vec!["benign".to_string()])
        .iter()
        .map(|l| normalize_label(l))
        .collect();
    if benign_labels.is_empty() {
        errs.push(
            "jailbreak.benign_labels",
            "must list at least one label (else every prediction is a jailbreak)",
        );
    }
    let jailbreak = JailbreakPolicy {
        enabled: jb_enabled,
        threshold: jb_threshold,
        action: j.action.unwrap_or_default(),
        message: j.message.clone().unwrap_or_else(|| {
            "I can't help with that request: it looks like an attempt to bypass my safety guidelines."
                .to_string()
        }),
        benign_labels,
    };

    // ---- PII ----
    let ps = f.pii.clone().unwrap_or_default();
    let pii_threshold = errs
        .merge(
            ps.threshold,
            "pii.threshold",
            pii_model.as_ref().and_then(|m| m.threshold),
            "classifier.pii_model.threshold",
        )
        .unwrap_or(0.5);
    errs.unit(
        if ps.threshold.is_some() || pii_model.as_ref().and_then(|m| m.threshold).is_none() {
            "pii.threshold"
        } else {
            "classifier.pii_model.threshold"
        },
        pii_threshold,
    );
    let pii = PiiSettings {
        enabled: ps.enabled.unwrap_or(true),
        threshold: pii_threshold,
        default_policy: ps
            .default_policy
            .as_ref()
            .map(|p| resolve_pii_policy(p, "pii.default_policy", errs))
            .unwrap_or_else(PiiPolicy::allow_all),
        reroute: ps.reroute.unwrap_or(true),
        block_message: ps.block_message.clone().unwrap_or_else(|| {
            "The request contains personal information ({entity_types}) that this service may not process."
                .to_string()
        }),
    };

    // ---- keyword rules ----
    let mut keyword_rules = Vec::with_capacity(f.keyword_rules.len());
    let mut seen_ids: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in f.keyword_rules.iter().enumerate() {
        let p = format!("keyword_rules[{i}]");
        let id = r.id.clone().unwrap_or_else(|| p.clone());
        if id.trim().is_empty() {
            errs.push(format!("{p}.id"), "must not be empty");
        } else if let Some(j) = seen_ids.insert(id.clone(), i) {
            errs.push(
                format!("{p}.id"),
                format!("duplicate id \"{id}\" (also keyword_rules[{j}])"),
            );
        }
        let case_sensitive = r.case_sensitive.unwrap_or(false);
        let mut terms = Vec::new();
        if r.keywords.is_empty() && r.patterns.is_empty() {
            errs.push(
                format!("{p}.keywords"),
                "a rule needs at least one keyword or pattern",
            );
        }
        for (k, kw) in r.keywords.iter().enumerate() {
            if kw.trim().is_empty() {
                errs.push(format!("{p}.keywords[{k}]"), "must not be empty");
                continue;
            }
            match build_regex(&keyword_pattern(kw), case_sensitive) {
                Ok(re) => terms.push((kw.clone(), re)),
                Err(e) => errs.push(format!("{p}.keywords[{k}]"), e),
            }
        }
        for (k, pat) in r.patterns.iter().enumerate() {
            if pat.is_empty() {
                errs.push(format!("{p}.patterns[{k}]"), "must not be empty");
                continue;
            }
            match build_regex(pat, case_sensitive) {
                Ok(re) => terms.push((pat.clone(), re)),
                Err(e) => errs.push(format!("{p}.patterns[{k}]"), e),
            }
        }
        let route = r.route.as_ref().and_then(|name| {
            route_ref_by_name(&categories, name)
                .map_err(|e| errs.push(format!("{p}.route"), e))
                .ok()
        });
        errs.budget(format!("{p}.thinking_budget"), r.thinking_budget);
        let reasoning = if r.use_reasoning.is_some()
            || r.reasoning_effort.is_some()
            || r.thinking_budget.is_some()
        {
            if r.use_reasoning == Some(false)
                && (r.reasoning_effort.is_some() || r.thinking_budget.is_some())
            {
                errs.push(
                    format!("{p}.use_reasoning"),
                    "is false, but reasoning_effort / thinking_budget are set",
                );
            }
            Some(ReasoningOverride {
                use_reasoning: r.use_reasoning.unwrap_or(true),
                reasoning_effort: r.reasoning_effort,
                thinking_budget: r.thinking_budget,
            })
        } else {
            None
        };
        if r.route.is_none() && reasoning.is_none() {
            errs.push(
                format!("{p}.route"),
                "a rule must name a route or override reasoning (use_reasoning / reasoning_effort / thinking_budget)",
            );
        }
        keyword_rules.push(KeywordRule {
            id,
            operator: r.operator.unwrap_or_default(),
            case_sensitive,
            route,
            reasoning,
            terms,
        });
    }

    // ---- classifier sources ----
    let classifier = ClassifierSources {
        model_dir: f.classifier.as_ref().and_then(|c| c.model_dir.clone()),
        category_model: category_model.and_then(|m| {
            m.model_id.filter(|s| !s.is_empty()).map(|id| ModelSource {
                model_id: id,
                mapping_path: m.category_mapping_path,
                use_modernbert: m.use_modernbert,
                use_cpu: m.use_cpu,
            })
        }),
        pii_model: pii_model.and_then(|m| {
            m.model_id.filter(|s| !s.is_empty()).map(|id| ModelSource {
                model_id: id,
                mapping_path: m.pii_mapping_path,
                use_modernbert: m.use_modernbert,
                use_cpu: m.use_cpu,
            })
        }),
        jailbreak_model: pg.model_id.filter(|s| !s.is_empty()).map(|id| ModelSource {
            model_id: id,
            mapping_path: pg.jailbreak_mapping_path,
            use_modernbert: pg.use_modernbert,
            use_cpu: pg.use_cpu,
        }),
        embedding: f
            .classifier
            .as_ref()
            .and_then(|c| c.embedding.clone())
            .filter(|e| e.enabled != Some(false))
            .map(|e| EmbeddingSource {
                encoder_dir: e.encoder_dir,
                skip_when_confident: e.skip_when_confident,
            }),
        cpu_weights: f
            .classifier
            .as_ref()
            .and_then(|c| c.cpu_weights)
            .unwrap_or_default(),
    };
    if let Some(t) = classifier
        .embedding
        .as_ref()
        .and_then(|e| e.skip_when_confident)
    {
        errs.unit("classifier.embedding.skip_when_confident", t);
    }
    if f.classifier
        .as_ref()
        .is_some_and(|c| c.mcp_category_model.is_some())
    {
        ignored.push("classifier.mcp_category_model".to_string());
    }
    // The per-task checkpoints' switches: only ModernBERT loads; the router runs every
    // classifier on one device (`use_cpu` is not per model here).
    let classic = [
        ("classifier.category_model", &classifier.category_model),
        ("classifier.pii_model", &classifier.pii_model),
        ("prompt_guard", &classifier.jailbreak_model),
    ];
    for (path, source) in classic {
        let Some(source) = source else { continue };
        if source.use_modernbert == Some(false) {
            errs.push(
                format!("{path}.use_modernbert"),
                "only ModernBERT checkpoints are supported",
            );
        }
        if source.use_cpu.is_some() {
            ignored.push(format!("{path}.use_cpu"));
        }
        if classifier.model_dir.is_some() {
            errs.push(
                format!("{path}.model_id"),
                "set either classifier.model_dir (one multi-head checkpoint) or the per-task models, not both",
            );
        }
    }

    RouterConfig {
        default_route,
        categories,
        confidence_threshold,
        entropy,
        reasoning_classifier,
        keyword_rules,
        jailbreak,
        pii,
        models,
        reasoning_families: f.reasoning_families,
        reasoning_budgets,
        default_reasoning_effort,
        classifier,
        ignored_fields: ignored,
    }
}

fn check_family(
    family: Option<&str>,
    path: &str,
    families: &BTreeMap<String, ReasoningFamily>,
    errs: &mut Errors,
) {
    if let Some(fam) = family {
        if !families.contains_key(fam) {
            let known: Vec<&str> = families.keys().map(String::as_str).collect();
            errs.push(
                path,
                format!(
                    "unknown reasoning family \"{fam}\" (reasoning_families: {})",
                    if known.is_empty() {
                        "none declared".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }
}

fn resolve_pii_policy(p: &PiiPolicySpec, path: &str, errs: &mut Errors) -> PiiPolicy {
    let mut entities = BTreeMap::new();
    for (k, a) in &p.entities {
        let n = normalize_entity_type(k);
        if n.is_empty() {
            errs.push(
                format!("{path}.entities.{k}"),
                "entity type must not be empty",
            );
            continue;
        }
        if entities.insert(n.clone(), *a).is_some() {
            errs.push(
                format!("{path}.entities.{k}"),
                format!("entity type {n} is listed twice"),
            );
        }
    }
    PiiPolicy {
        default: p.default.unwrap_or(PiiAction::Allow),
        entities,
    }
}

/// A literal keyword as a regex: escaped, with `\b` on each end that is a word character.
fn keyword_pattern(keyword: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut p = String::new();
    if keyword.chars().next().is_some_and(is_word) {
        p.push_str(r"\b");
    }
    p.push_str(&regex::escape(keyword));
    if keyword.chars().next_back().is_some_and(is_word) {
        p.push_str(r"\b");
    }
    p
}

fn build_regex(pattern: &str, case_sensitive: bool) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(!case_sensitive)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "default_route: {model: small}\n";

    fn errors_of(yaml: &str) -> Vec<String> {
        match RouterConfig::from_yaml_str(yaml) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
        }
    }

    fn assert_error(yaml: &str, path: &str, needle: &str) {
        let errs = errors_of(yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
            "no error at {path} containing {needle:?}; got {errs:#?}"
        );
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = RouterConfig::from_yaml_str(MINIMAL).unwrap();
        assert_eq!(c.default_route.model, "small");
        assert!(!c.default_route.use_reasoning);
        assert_eq!(c.confidence_threshold, 0.6);
        assert_eq!(
            c.entropy,
            EntropyRule {
                enabled: true,
                medium: 0.6,
                high: 0.8
            }
        );
        assert_eq!(c.jailbreak.threshold, 0.7);
        assert_eq!(c.jailbreak.action, JailbreakAction::Block);
        assert_eq!(c.pii.default_policy, PiiPolicy::allow_all());
        assert_eq!(c.default_reasoning_effort, ReasoningEffort::Medium);
        assert_eq!(c.reasoning_budgets, ReasoningBudgets::default());
        // The defaults router/README.md lists.
        let b = &c.reasoning_budgets;
        assert_eq!((b.low, b.medium, b.high), (512, 2048, 8192));
        let rc = &c.reasoning_classifier;
        assert_eq!(
            (rc.enabled, rc.threshold, rc.positive_label.as_str()),
            (true, 0.8, "reasoning")
        );
        assert!(c.jailbreak.enabled);
        assert_eq!(c.jailbreak.benign_labels, ["benign"]);
        assert!(c.pii.enabled && c.pii.reroute);
        assert_eq!(c.pii.threshold, 0.5);
        assert!(c.ignored_fields.is_empty());
    }

    #[test]
    fn shipped_default_loads() {
        let c = RouterConfig::shipped_default().unwrap();
        assert_eq!(c.categories.len(), 14);
        assert!(c.ignored_fields.is_empty());
        assert_eq!(
            c.classifier.embedding,
            Some(EmbeddingSource {
                encoder_dir: None,
                skip_when_confident: Some(0.9),
            })
        );
        assert_eq!(c.classifier.cpu_weights, CpuWeights::Q8_0);
    }

    #[test]
    fn cpu_weights_default_to_f32_and_name_the_field_when_wrong() {
        let base = "default_route: {model: small}\nclassifier:\n  model_dir: r\n";
        let plain = RouterConfig::from_yaml_str(base).unwrap();
        assert_eq!(plain.classifier.cpu_weights, CpuWeights::F32);
        let q8 = RouterConfig::from_yaml_str(&format!("{base}  cpu_weights: q8_0\n")).unwrap();
        assert_eq!(q8.classifier.cpu_weights, CpuWeights::Q8_0);
        assert_error(
            &format!("{base}  cpu_weights: int4\n"),
            "classifier.cpu_weights",
            "int4",
        );
    }

    #[test]
    fn the_embedding_signal_is_on_when_its_section_is_and_not_disabled() {
        let base = "default_route: {model: small}\nclassifier:\n  model_dir: r\n";
        let on = RouterConfig::from_yaml_str(&format!("{base}  embedding: {{encoder_dir: /e}}\n"));
        assert_eq!(
            on.unwrap()
                .classifier
                .embedding
                .unwrap()
                .encoder_dir
                .as_deref(),
            Some("/e")
        );
        let skip = RouterConfig::from_yaml_str(&format!(
            "{base}  embedding: {{skip_when_confident: 0.9}}\n"
        ));
        assert_eq!(
            skip.unwrap()
                .classifier
                .embedding
                .unwrap()
                .skip_when_confident,
            Some(0.9)
        );
        let e = errors_of(&format!(
            "{base}  embedding: {{skip_when_confident: 1.5}}\n"
        ));
        assert_eq!(
            e,
            vec!["classifier.embedding.skip_when_confident: must be in [0, 1], got 1.5"]
        );
        let off = RouterConfig::from_yaml_str(&format!("{base}  embedding: {{enabled: false}}\n"));
        assert!(off.unwrap().classifier.embedding.is_none());
        assert!(RouterConfig::from_yaml_str(base)
            .unwrap()
            .classifier
            .embedding
            .is_none());
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let e = errors_of("default_route: {model: small}\ncategories:\n  - name: math\n    model: small\n    modle: x\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("categories[0]"), "{e:?}");
        assert!(e[0].contains("unknown field `modle`"), "{e:?}");

        let e = errors_of("default_route: {model: small}\nbogus: 1\n");
        assert!(e[0].contains("unknown field `bogus`"), "{e:?}");

        let e = errors_of("default_route: {model: small}\njailbreak: {treshold: 0.5}\n");
        assert!(e[0].starts_with("jailbreak"), "{e:?}");
        assert!(e[0].contains("unknown field `treshold`"), "{e:?}");
    }

    #[test]
    fn type_errors_name_the_field() {
        assert_error(
            "default_route: {model: small}\ncategories:\n  - name: math\n    model_scores:\n      - {model: small, score: high}\n",
            "categories[0].model_scores[0].score",
            "invalid type",
        );
        assert_error(
            "default_route: {model: small}\njailbreak: {action: shout}\n",
            "jailbreak.action",
            "unknown variant `shout`",
        );
        assert_error(
            "default_route: {model: small}\ncategories:\n  - {name: math, model: small, thinking_budget: -5}\n",
            "categories[0].thinking_budget",
            "",
        );
        assert_error(
            "default_route: {model: small}\nmodels:\n  small:\n    pii: {entities: {PERSON: hide}}\n",
            "models.small.pii.entities.PERSON",
            "unknown variant `hide`",
        );
    }

    #[test]
    fn scores_and_thresholds_out_of_range_name_the_field() {
        let yaml = "\
default_model: small
confidence_threshold: 1.5
entropy: {medium: -0.1, high: 2}
reasoning_classifier: {threshold: 1.01}
jailbreak: {threshold: 7}
pii: {threshold: -1}
categories:
  - name: a
    model: small
  - name: b
    model: small
  - name: c
    model: small
  - name: d
    jailbreak_threshold: 1.2
    pii_threshold: 3
    model_scores:
      - {model: small, score: -0.5, use_reasoning: true}
";
        let errs = errors_of(yaml);
        for (path, needle) in [
            ("confidence_threshold", "must be in [0, 1], got 1.5"),
            ("entropy.medium", "must be in [0, 1]"),
            ("entropy.high", "must be in [0, 1]"),
            ("reasoning_classifier.threshold", "must be in [0, 1]"),
            ("jailbreak.threshold", "must be in [0, 1]"),
            ("pii.threshold", "must be in [0, 1]"),
            (
                "categories[3].model_scores[0].score",
                "must be a non-negative number, got -0.5",
            ),
            ("categories[3].jailbreak_threshold", "must be in [0, 1]"),
            ("categories[3].pii_threshold", "must be in [0, 1]"),
        ] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
                "no error at {path} containing {needle:?}; got {errs:#?}"
            );
        }
        // all problems are reported at once
        assert_eq!(errs.len(), 9, "{errs:#?}");
    }

    #[test]
    fn classic_thresholds_name_their_own_field() {
        assert_error(
            "default_model: small\nclassifier: {category_model: {threshold: 2}}\n",
            "classifier.category_model.threshold",
            "must be in [0, 1]",
        );
        assert_error(
            "default_model: small\nprompt_guard: {threshold: -2}\n",
            "prompt_guard.threshold",
            "must be in [0, 1]",
        );
        assert_error(
            "default_model: small\nclassifier: {pii_model: {threshold: 9}}\n",
            "classifier.pii_model.threshold",
            "must be in [0, 1]",
        );
    }

    #[test]
    fn entropy_bands_must_be_ordered() {
        assert_error(
            "default_model: small\nentropy: {medium: 0.9, high: 0.5}\n",
            "entropy.medium",
            "must be <= entropy.high",
        );
    }

    #[test]
    fn a_prompt_guard_section_is_off_unless_it_says_enabled() {
        let enabled = |yaml: &str| RouterConfig::from_yaml_str(yaml).unwrap().jailbreak.enabled;
        assert!(enabled("default_model: small\n"));
        assert!(!enabled(
            "default_model: small\nprompt_guard: {threshold: 0.7}\n"
        ));
        assert!(enabled(
            "default_model: small\nprompt_guard: {enabled: true, threshold: 0.7}\n"
        ));
        assert!(enabled(
            "default_model: small\njailbreak: {enabled: true}\nprompt_guard: {threshold: 0.7}\n"
        ));
    }

    #[test]
    fn conflicting_spellings_are_errors() {
        assert_error(
            "default_model: small\ndefault_route: {model: big}\n",
            "default_route.model",
            "conflicts with default_model",
        );
        assert_error(
            "default_model: small\nconfidence_threshold: 0.5\nclassifier: {category_model: {threshold: 0.6}}\n",
            "confidence_threshold",
            "conflicts with classifier.category_model.threshold",
        );
        assert_error(
            "default_model: small\njailbreak: {threshold: 0.5}\nprompt_guard: {threshold: 0.6}\n",
            "jailbreak.threshold",
            "conflicts with prompt_guard.threshold",
        );
        assert_error(
            "default_model: small\npii: {threshold: 0.5}\nclassifier: {pii_model: {threshold: 0.6}}\n",
            "pii.threshold",
            "conflicts with classifier.pii_model.threshold",
        );
        // equal values are fine
        RouterConfig::from_yaml_str(
            "default_model: small\ndefault_route: {model: small}\nconfidence_threshold: 0.5\nclassifier: {category_model: {threshold: 0.5}}\n",
        )
        .unwrap();
    }

    #[test]
    fn reasoning_classifier_routes_name_existing_routes() {
        let yaml = "default_route: {model: small}\ncategories:\n  - {name: math, model: small}\n\
                    reasoning_classifier: {routes: [default, Math]}\n";
        let c = RouterConfig::from_yaml_str(yaml).unwrap();
        assert!(c.reasoning_classifier.applies_to(RouteRef::Default));
        assert!(c.reasoning_classifier.applies_to(RouteRef::Category(0)));
        let all = RouterConfig::from_yaml_str(
            "default_route: {model: small}\nreasoning_classifier: {threshold: 0.9}\n",
        )
        .unwrap();
        assert_eq!(all.reasoning_classifier.routes, None);
        assert!(all.reasoning_classifier.applies_to(RouteRef::Category(3)));
        // Without the section the head has a say only where no category claims the request.
        let absent = RouterConfig::from_yaml_str(
            "default_route: {model: small}\ncategories:\n  - {name: math, model: small}\n",
        )
        .unwrap();
        assert!(absent.reasoning_classifier.applies_to(RouteRef::Default));
        assert!(!absent
            .reasoning_classifier
            .applies_to(RouteRef::Category(0)));
        assert_error(
            "default_route: {model: small}\nreasoning_classifier: {routes: [mathz]}\n",
            "reasoning_classifier.routes[0]",
            "unknown route \"mathz\"",
        );
    }

    #[test]
    fn default_route_is_required() {
        assert_error("categories: []\n", "default_route.model", "required");
        assert_error(
            "default_route: {model: ''}\n",
            "default_route.model",
            "must not be empty",
        );
    }

    #[test]
    fn unknown_model_references_are_errors() {
        let yaml = "\
models:
  small: {}
default_route: {model: smal}
categories:
  - {name: math, model: big}
  - name: law
    model_scores: [{model: huge, score: 0.5, use_reasoning: false}]
";
        let errs = errors_of(yaml);
        for path in [
            "default_route.model",
            "categories[0].model",
            "categories[1].model_scores[0].model",
        ] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("{path}: unknown model"))),
                "{path}: {errs:#?}"
            );
        }
        assert_error(
            "default_model: x\nmodel_config: {y: {}}\n",
            "default_model",
            "unknown model \"x\"",
        );
        // with no declared models, any name is accepted
        RouterConfig::from_yaml_str("default_route: {model: anything}\n").unwrap();
    }

    #[test]
    fn model_declared_twice_is_an_error() {
        assert_error(
            "default_model: a\nmodels: {a: {}}\nmodel_config: {a: {}}\n",
            "model_config.a",
            "also declared in models.a",
        );
    }

    #[test]
    fn unknown_reasoning_family_is_an_error() {
        assert_error(
            "default_model: a\nmodel_config: {a: {reasoning_family: qwen4}}\nreasoning_families: {qwen3: {type: chat_template_kwargs, parameter: enable_thinking}}\n",
            "model_config.a.reasoning_family",
            "unknown reasoning family \"qwen4\"",
        );
        assert_error(
            "default_model: a\nmodels: {a: {reasoning_family: qwen3}}\n",
            "models.a.reasoning_family",
            "none declared",
        );
        assert_error(
            "default_model: a\nreasoning_families: {q: {type: magic, parameter: x}}\n",
            "reasoning_families.q.type",
            "unknown variant `magic`",
        );
    }

    #[test]
    fn category_errors_name_the_field() {
        let yaml = "\
default_route: {model: small}
categories:
  - {name: '', model: small}
  - {name: default, model: small}
  - {name: Math, model: small}
  - {name: math, model: small}
  - {name: physics}
  - {name: chem, model: small, model_scores: [{model: small, score: 1}]}
  - {name: bio, model_scores: []}
  - {name: cs, labels: [math], model: small}
  - {name: eng, model: small, thinking_budget: 0}
  - name: lora
    model_scores: [{model: small, score: 0.5, lora_name: adapter}]
";
        let errs = errors_of(yaml);
        for (path, needle) in [
            ("categories[0].name", "must not be empty"),
            ("categories[1].name", "reserved"),
            ("categories[3].name", "duplicate category"),
            ("categories[4].model", "required"),
            ("categories[5].model_scores", "not both"),
            ("categories[6].model_scores", "at least one model"),
            (
                "categories[7].labels[0]",
                "already claimed by categories[2]",
            ),
            ("categories[8].thinking_budget", "must be > 0"),
            ("categories[9].model_scores[0].lora_name", "not supported"),
        ] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
                "no error at {path} containing {needle:?}; got {errs:#?}"
            );
        }
    }

    #[test]
    fn keyword_rule_errors_name_the_field() {
        let yaml = r#"
default_route: {model: small}
categories: [{name: math, model: small}]
keyword_rules:
  - {id: a, keywords: [prove], route: mathz}
  - {id: a, patterns: ['(unclosed'], route: math}
  - {keywords: [x]}
  - {route: math}
  - {keywords: [''], route: math}
  - {keywords: [x], use_reasoning: false, thinking_budget: 100}
  - {keywords: [x], thinking_budget: 0}
"#;
        let errs = errors_of(yaml);
        for (path, needle) in [
            ("keyword_rules[0].route", "unknown route \"mathz\""),
            ("keyword_rules[1].id", "duplicate id"),
            ("keyword_rules[1].patterns[0]", "invalid regex"),
            (
                "keyword_rules[2].route",
                "must name a route or override reasoning",
            ),
            (
                "keyword_rules[3].keywords",
                "at least one keyword or pattern",
            ),
            ("keyword_rules[4].keywords[0]", "must not be empty"),
            ("keyword_rules[5].use_reasoning", "is false"),
            ("keyword_rules[6].thinking_budget", "must be > 0"),
        ] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
                "no error at {path} containing {needle:?}; got {errs:#?}"
            );
        }
    }

    #[test]
    fn keyword_operator_error_names_the_field() {
        assert_error(
            "default_route: {model: s}\nkeyword_rules: [{keywords: [x], operator: XOR, use_reasoning: true}]\n",
            "keyword_rules[0].operator",
            "unknown variant `XOR`",
        );
    }

    #[test]
    fn unsupported_classic_features_are_errors() {
        assert_error(
            "default_model: s\nembedding_rules: [{category: x, keywords: [y], threshold: 0.5}]\n",
            "embedding_rules",
            "not supported",
        );
        assert_error(
            "default_model: s\ndecisions: []\n",
            "decisions",
            "not supported",
        );
    }

    #[test]
    fn ignored_classic_fields_are_listed() {
        let c = RouterConfig::from_yaml_str(
            "default_model: s\nsemantic_cache: {enabled: true}\nvllm_endpoints: [{name: e, address: 1.2.3.4, port: 1}]\nmodel_config: {s: {preferred_endpoints: [e], pii_policy: {allow_by_default: true}}}\n",
        )
        .unwrap();
        assert_eq!(
            c.ignored_fields,
            vec![
                "semantic_cache",
                "vllm_endpoints",
                "model_config.s.preferred_endpoints"
            ]
        );
    }

    #[test]
    fn a_blank_default_system_prompt_is_none() {
        let c = RouterConfig::from_yaml_str(
            "default_route: {model: s, system_prompt: '  ', system_prompt_mode: replace}\n",
        )
        .unwrap();
        assert_eq!(c.default_route.system_prompt, None);
    }

    #[test]
    fn per_task_checkpoints_are_checked_against_model_dir_and_their_switches() {
        let errs = errors_of(
            "\
default_model: s
classifier:
  model_dir: router/models/default
  category_model: {model_id: cat, use_modernbert: false}
prompt_guard: {model_id: guard}
",
        );
        for (path, needle) in [
            ("classifier.category_model.model_id", "not both"),
            ("prompt_guard.model_id", "not both"),
            (
                "classifier.category_model.use_modernbert",
                "only ModernBERT",
            ),
        ] {
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(needle)),
                "no error at {path} containing {needle:?}; got {errs:#?}"
            );
        }
        // `use_cpu` is accepted and said to be ignored: every classifier runs on one device.
        let c = RouterConfig::from_yaml_str(
            "default_model: s\nclassifier: {pii_model: {model_id: pii, use_cpu: true, use_modernbert: true}}\n",
        )
        .unwrap();
        assert_eq!(c.ignored_fields, vec!["classifier.pii_model.use_cpu"]);
    }

    #[test]
    fn model_scores_best_entry_is_the_target() {
        let c = RouterConfig::from_yaml_str(
            "\
default_model: a
categories:
  - name: math
    reasoning_effort: low
    model_scores:
      - {model: a, score: 0.5, use_reasoning: false}
      - {model: b, score: 0.9, use_reasoning: true}
      - {model: c, score: 0.9, use_reasoning: false}
",
        )
        .unwrap();
        let r = &c.categories[0].route;
        assert_eq!(r.model, "b");
        assert!(r.use_reasoning);
        assert_eq!(r.reasoning_effort, Some(ReasoningEffort::Low));
        let alternatives: Vec<(&str, Option<bool>, Option<ReasoningEffort>)> = r
            .alternatives
            .iter()
            .map(|a| (a.model.as_str(), a.use_reasoning, a.reasoning_effort))
            .collect();
        assert_eq!(
            alternatives,
            vec![
                ("c", Some(false), Some(ReasoningEffort::Low)),
                ("a", Some(false), Some(ReasoningEffort::Low))
            ]
        );
        assert_eq!(
            c.referenced_models().into_iter().collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn classic_pii_policy_maps_onto_actions() {
        let c = RouterConfig::from_yaml_str(
            "\
default_model: a
model_config:
  a: {pii_policy: {allow_by_default: true}}
  b: {pii_policy: {allow_by_default: false, pii_types_allowed: [EMAIL_ADDRESS]}}
  c: {}
",
        )
        .unwrap();
        assert_eq!(c.pii_policy_for("a").action_for("US_SSN"), PiiAction::Allow);
        assert_eq!(
            c.pii_policy_for("b").action_for("EMAIL_ADDRESS"),
            PiiAction::Allow
        );
        assert_eq!(
            c.pii_policy_for("b").action_for("B-US_SSN"),
            PiiAction::Block
        );
        assert_eq!(c.pii_policy_for("c").action_for("PERSON"), PiiAction::Block);
        // an undeclared model gets pii.default_policy (allow all)
        assert_eq!(
            c.pii_policy_for("zzz").action_for("PERSON"),
            PiiAction::Allow
        );
    }

    #[test]
    fn labels_match_loosely() {
        let c = RouterConfig::from_yaml_str(
            "default_model: a\ncategories:\n  - {name: computer_science, model: a}\n  - {name: law, labels: [jurisprudence, Legal-Stuff], model: a}\n",
        )
        .unwrap();
        assert_eq!(
            c.category_for_label("computer science").unwrap().route.name,
            "computer_science"
        );
        assert_eq!(
            c.category_for_label("legal_stuff").unwrap().route.name,
            "law"
        );
        assert!(c.category_for_label("law").is_none());
        assert_eq!(
            c.route_by_name("Computer Science").unwrap().name,
            "computer_science"
        );
        assert_eq!(c.route_by_name("default").unwrap().name, "default");
    }

    #[test]
    fn keyword_terms_respect_word_boundaries_and_case() {
        let c = RouterConfig::from_yaml_str(
            r#"
default_model: a
keyword_rules:
  - {keywords: [proof, "C++"], use_reasoning: true}
  - {keywords: [URGENT], case_sensitive: true, use_reasoning: false}
  - {operator: AND, keywords: [alpha, beta], use_reasoning: true}
  - {operator: NOR, keywords: [gamma], patterns: ['\d{3}-\d{2}-\d{4}'], use_reasoning: true}
"#,
        )
        .unwrap();
        let r = &c.keyword_rules;
        assert_eq!(
            r[0].matches("A PROOF please"),
            Some(vec!["proof".to_string()])
        );
        assert_eq!(r[0].matches("waterproof jacket"), None);
        assert_eq!(
            r[0].matches("write C++ code"),
            Some(vec!["C++".to_string()])
        );
        assert_eq!(r[1].matches("urgent"), None);
        assert!(r[1].matches("URGENT").is_some());
        assert!(r[2].matches("alpha and beta").is_some());
        assert!(r[2].matches("alpha only").is_none());
        assert_eq!(r[3].matches("nothing here"), Some(vec![]));
        assert!(r[3].matches("Gamma rays").is_none());
        assert!(r[3].matches("ssn 123-45-6789").is_none());
    }

    #[test]
    fn normalisers() {
        assert_eq!(normalize_label("  Computer_Science "), "computer science");
        assert_eq!(normalize_label("no-reasoning"), "no reasoning");
        assert_eq!(normalize_entity_type("B-PERSON"), "PERSON");
        assert_eq!(normalize_entity_type("i-email address"), "EMAIL_ADDRESS");
        assert_eq!(normalize_entity_type("us-ssn"), "US_SSN");
    }

    #[test]
    fn io_error_names_the_file() {
        let e = RouterConfig::from_path("/nonexistent/router.yaml").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/router.yaml"), "{e}");
        assert!(e.errors().is_empty());
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let e = RouterConfig::from_yaml_str("default_route: {model: [\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)), "{e}");
    }
}

/// The route a name in the config refers to: a category (matched like labels) or `default`.
fn route_ref_by_name(categories: &[Category], name: &str) -> Result<RouteRef, String> {
    let n = normalize_label(name);
    if n == DEFAULT_ROUTE_NAME {
        return Ok(RouteRef::Default);
    }
    categories
        .iter()
        .position(|c| normalize_label(&c.route.name) == n)
        .map(RouteRef::Category)
        .ok_or_else(|| {
            let names: Vec<&str> = categories.iter().map(|c| c.route.name.as_str()).collect();
            format!(
                "unknown route \"{name}\" (categories: {}; or \"default\")",
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod readme_tests {
    use super::*;

    /// The configuration example in router/README.md is valid.
    #[test]
    fn readme_example_loads() {
        let readme = include_str!("../README.md");
        let start = readme.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let end = start + readme[start..].find("```").expect("its end");
        let config = RouterConfig::from_yaml_str(&readme[start..end]).unwrap();
        assert_eq!(config.categories.len(), 1);
        assert_eq!(config.keyword_rules[0].id, "explicit-step-by-step");
    }
}
