//! The YAML schema of the routing configuration, field for field ([`ConfigFile`]).

use super::*;

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
