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
//! The schema lives in `file.rs`, the resolution and its checks in `validate.rs`, the resolved types
//! here.
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
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../config/default.yaml");

/// The name a keyword rule uses to send a request to the default route.
pub const DEFAULT_ROUTE_NAME: &str = "default";

mod file;
#[cfg(test)]
mod tests;
mod validate;

pub use file::*;
use validate::{resolve, Errors};

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
