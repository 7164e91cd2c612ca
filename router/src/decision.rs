//! The routing policy: [`decide`] turns a request's text and its [`Signals`] into a [`Decision`].
//!
//! The rules, in order:
//!
//! 1. **Route.** The first keyword rule that matches the newest user message picks the route (if it
//!    names one) and may force reasoning. Otherwise the domain head's top label picks the category
//!    that claims it, if its probability reaches `confidence_threshold`; else the default route is
//!    taken.
//! 2. **Reasoning.** A keyword rule's reasoning override is final. Otherwise start from the route's
//!    `use_reasoning`; then, when the domain head picked the route, the entropy rule on the domain
//!    distribution (normalised entropy `H`: `H >= high` switches thinking on, `medium <= H < high`
//!    takes the probability-weighted vote of the top-2 labels' categories); then a confident
//!    reasoning-need prediction (`override`: on or off, `upgrade`: only on), on the routes
//!    `reasoning_classifier.routes` lists (all if absent). The budget is the rule's (its
//!    `thinking_budget`, else its effort's), else the route's `thinking_budget`, else the budget of
//!    the route's effort, else of `default_reasoning_effort`.
//! 3. **Jailbreak.** A non-benign label scoring at least the threshold (the route's override, else the
//!    policy's) blocks the request with the refusal message, or only flags it (`action: flag`).
//! 4. **PII.** Entities scoring at least the threshold (and, for the types with a fixed form, having
//!    it: see [`has_its_form`]) are looked up in the target model's policy: `mask` entities are
//!    replaced by `[TYPE]` before generation; a `block` entity refuses the request, unless
//!    `pii.reroute` finds another model of the route (then the default model) whose policy blocks
//!    none of the entities found. A rerouted request takes the reasoning that model's `model_scores`
//!    entry sets, when it sets one.
//!
//! Every step appends a human-readable line to [`Decision::reasons`].

use std::time::Duration;

use serde::{Serialize, Serializer};
use switchyard_models::text::ChatMessage;

use crate::config::{
    normalize_entity_type, normalize_label, JailbreakAction, PiiAction, ReasoningClassifierMode,
    ReasoningEffort, Route, RouteRef, RouterConfig, SystemPrompt,
};
use crate::input::{apply_system_prompt, RouteInput};
use crate::signals::{ClassifierOutput, EmbeddingUse, PiiEntity, Signals};

/// Fast answer or thinking first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Reasoning {
    /// Answer directly.
    Fast,
    /// Think first, for at most `budget` tokens.
    Thinking {
        /// Thinking-token budget.
        budget: usize,
        /// The effort the budget came from, if it came from one.
        #[serde(skip_serializing_if = "Option::is_none")]
        effort: Option<ReasoningEffort>,
    },
}

impl Reasoning {
    /// Whether thinking is on.
    pub fn is_thinking(&self) -> bool {
        matches!(self, Reasoning::Thinking { .. })
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// The jailbreak head fired and the policy blocks.
    Jailbreak,
    /// Personal information the target model's policy blocks.
    Pii,
}

/// What happens to the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Generate as usual (possibly with masked PII: see [`Decision::masked`]).
    Allow,
    /// Do not generate; answer with `message`.
    Block {
        /// Why.
        reason: BlockReason,
        /// The refusal to send back.
        message: String,
    },
}

/// One head's output as reported in a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalReport {
    /// Top label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Time the head took, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub latency: Duration,
    /// The most probable labels, best first (at most five).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<(String, f32)>,
}

impl SignalReport {
    fn from_output(o: &ClassifierOutput) -> Self {
        let mut top = o.probabilities.clone();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(5);
        SignalReport {
            label: o.label.clone(),
            score: o.score,
            latency: o.latency,
            top,
        }
    }
}

/// Every signal the decision saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SignalsReport {
    /// Domain head.
    pub domain: Option<SignalReport>,
    /// Reasoning-need head.
    pub reasoning: Option<SignalReport>,
    /// Jailbreak head.
    pub jailbreak: Option<SignalReport>,
    /// PII entities found (all of them, before the threshold), with their time.
    pub pii: Vec<PiiEntity>,
    /// Time the PII head took, in milliseconds.
    #[serde(serialize_with = "opt_millis")]
    pub pii_latency: Option<Duration>,
    /// Whether the sentence-embedding signal took part (`off`, `fused`, or `skipped` when the fast
    /// signals were confident enough).
    pub embedding: EmbeddingUse,
}

/// The router's decision about one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The model to generate with.
    pub model: String,
    /// The route taken: a category name, or `default`.
    pub category: String,
    /// The domain head's probability for its top label (0 when there is no domain head).
    pub confidence: f32,
    /// Fast or thinking, with the budget.
    pub reasoning: Reasoning,
    /// System prompt to apply, if the route has one.
    pub system_prompt: Option<SystemPrompt>,
    /// Generate, or refuse.
    pub action: Action,
    /// The jailbreak head fired but the policy only flags.
    pub jailbreak_flagged: bool,
    /// PII entities (at or above the threshold) that are masked before generation.
    pub masked: Vec<PiiEntity>,
    /// The keyword rule that matched, if any.
    pub keyword_rule: Option<String>,
    /// Why, step by step.
    pub reasons: Vec<String>,
    /// The signals the decision was made from.
    pub signals: SignalsReport,
    /// Time spent routing (classification and policy), in milliseconds; filled in by the router.
    #[serde(serialize_with = "millis")]
    pub route_time: Duration,
    /// The text the classifiers read and where it sits in the request (set by
    /// [`crate::Router::route`]; [`decide`] records its text as one user message at index 0).
    #[serde(skip)]
    pub input: RouteInput,
}

impl Decision {
    /// Whether the request is refused.
    pub fn is_blocked(&self) -> bool {
        matches!(self.action, Action::Block { .. })
    }

    /// Rewrites a request's messages as decided: masks the PII entities in [`Decision::masked`] and
    /// applies the route's system prompt. `messages` must be the request the decision was made for.
    pub fn apply(&self, messages: &mut Vec<ChatMessage>) {
        self.mask(messages);
        if let Some(prompt) = &self.system_prompt {
            apply_system_prompt(messages, prompt);
        }
    }

    /// Masks the PII entities in [`Decision::masked`] in place: [`Decision::apply`] without the
    /// system prompt. `messages` must be the request the decision was made for.
    pub fn mask(&self, messages: &mut [ChatMessage]) {
        if !self.masked.is_empty() {
            self.input.mask(messages, &self.masked);
        }
    }
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// Applies the policy in `config` to a `text` the classifiers saw as one user message, and its
/// signals: [`decide_input`] of [`RouteInput::from_text`].
pub fn decide(config: &RouterConfig, text: &str, signals: &Signals) -> Decision {
    decide_input(config, RouteInput::from_text(text), signals)
}

/// Applies the policy in `config` to a request's classified input and its signals. Keyword rules
/// read the newest user message ([`RouteInput::newest_turn`]), as the vLLM Semantic Router's do: an
/// earlier turn's words say nothing about what the request asks now.
pub fn decide_input(config: &RouterConfig, input: RouteInput, signals: &Signals) -> Decision {
    let text = input.text.as_str();
    let mut reasons = Vec::new();

    // 1. Route.
    let mut rule_reasoning = None;
    let mut keyword_rule = None;
    let mut route_ref = None;
    let newest = input.newest_turn();
    for rule in &config.keyword_rules {
        if let Some(terms) = rule.matches(newest) {
            reasons.push(if terms.is_empty() {
                format!(
                    "keyword rule {} matched (none of its terms present)",
                    rule.id
                )
            } else {
                format!("keyword rule {} matched {:?}", rule.id, terms)
            });
            keyword_rule = Some(rule.id.clone());
            rule_reasoning = rule.reasoning;
            route_ref = rule.route;
            break;
        }
    }
    let by_rule = route_ref.is_some();
    let route_ref = route_ref.unwrap_or_else(|| classify_route(config, signals, &mut reasons));
    let route = config.route(route_ref);

    // 2. Reasoning.
    let reasoning = match rule_reasoning {
        Some(o) if !o.use_reasoning => {
            reasons.push("reasoning off: forced by the keyword rule".into());
            Reasoning::Fast
        }
        Some(o) => {
            reasons.push("reasoning on: forced by the keyword rule".into());
            thinking(config, route, o.thinking_budget, o.reasoning_effort)
        }
        None => {
            let on = reasoning_from_signals(config, route_ref, by_rule, signals, &mut reasons);
            if on {
                thinking(config, route, None, None)
            } else {
                Reasoning::Fast
            }
        }
    };

    // 3. Jailbreak.
    let mut action = Action::Allow;
    let mut jailbreak_flagged = false;
    let jailbreak_enabled = route.jailbreak_enabled.unwrap_or(config.jailbreak.enabled);
    match (&signals.jailbreak, jailbreak_enabled) {
        (Some(j), true) => {
            let threshold = route
                .jailbreak_threshold
                .unwrap_or(config.jailbreak.threshold);
            if !config.jailbreak.is_benign(&j.label) && j.score >= threshold {
                match config.jailbreak.action {
                    JailbreakAction::Block => {
                        reasons.push(format!(
                            "blocked: jailbreak head says {} ({:.3} >= {threshold})",
                            j.label, j.score
                        ));
                        action = Action::Block {
                            reason: BlockReason::Jailbreak,
                            message: config.jailbreak.message.clone(),
                        };
                    }
                    JailbreakAction::Flag => {
                        reasons.push(format!(
                            "flagged: jailbreak head says {} ({:.3} >= {threshold}); action is flag",
                            j.label, j.score
                        ));
                        jailbreak_flagged = true;
                    }
                }
            }
        }
        (None, true) => reasons.push("jailbreak: no jailbreak head".into()),
        (_, false) => reasons.push("jailbreak detection off for this route".into()),
    }

    // 4. PII.
    let mut reasoning = reasoning;
    let mut model = route.model.clone();
    let mut masked = Vec::new();
    let pii_enabled = route.pii_enabled.unwrap_or(config.pii.enabled);
    if pii_enabled && action == Action::Allow {
        let threshold = route.pii_threshold.unwrap_or(config.pii.threshold);
        // The text's characters and capitalisation, read once for every entity.
        let chars: Vec<char> = text.chars().collect();
        let capitals = writes_capitals(text);
        let found: Vec<&PiiEntity> = signals
            .pii
            .iter()
            .filter(|e| e.score >= threshold && span_has_its_form(e, &chars, capitals))
            .collect();
        let blocked_types = |m: &str| -> Vec<String> {
            let policy = config.pii_policy_for(m);
            let mut types: Vec<String> = found
                .iter()
                .filter(|e| policy.action_for(&e.entity_type) == PiiAction::Block)
                .map(|e| normalize_entity_type(&e.entity_type))
                .collect();
            types.sort();
            types.dedup();
            types
        };
        let blocked = blocked_types(&model);
        if !blocked.is_empty() {
            // The route's other models, with the reasoning their entries set, then the default.
            let candidates = route
                .alternatives
                .iter()
                .map(|a| (&a.model, Some(a)))
                .chain(std::iter::once((&config.default_route.model, None)));
            let reroute = config.pii.reroute.then(|| {
                candidates
                    .filter(|(m, _)| **m != model)
                    .find(|(m, _)| blocked_types(m).is_empty())
            });
            match reroute.flatten() {
                Some((other, alternative)) => {
                    reasons.push(format!(
                        "pii: {} blocks {blocked:?}; rerouted to {other}",
                        model
                    ));
                    model = other.clone();
                    // Rule-forced reasoning stays; otherwise the new model's entry decides.
                    if let Some(a) = alternative.filter(|_| rule_reasoning.is_none()) {
                        let on = a.use_reasoning.unwrap_or(reasoning.is_thinking());
                        let before = reasoning;
                        reasoning = if on {
                            thinking(config, route, None, a.reasoning_effort)
                        } else {
                            Reasoning::Fast
                        };
                        if reasoning != before {
                            reasons.push(format!(
                                "reasoning {} for {other}: its model_scores entry",
                                on_off(on)
                            ));
                        }
                    }
                }
                None => {
                    reasons.push(format!("blocked: pii {blocked:?} not allowed for {model}"));
                    action = Action::Block {
                        reason: BlockReason::Pii,
                        message: config
                            .pii
                            .block_message
                            .replace("{entity_types}", &blocked.join(", ")),
                    };
                }
            }
        }
        if action == Action::Allow {
            let policy = config.pii_policy_for(&model);
            masked = found
                .iter()
                .filter(|e| policy.action_for(&e.entity_type) == PiiAction::Mask)
                .map(|e| (*e).clone())
                .collect();
            if !masked.is_empty() {
                let types: Vec<&str> = masked.iter().map(|e| e.entity_type.as_str()).collect();
                reasons.push(format!("pii: masking {types:?}"));
            }
        }
    }

    Decision {
        model,
        category: route.name.clone(),
        confidence: signals.domain.as_ref().map_or(0.0, |d| d.score),
        reasoning,
        system_prompt: route.system_prompt.clone(),
        action,
        jailbreak_flagged,
        masked,
        keyword_rule,
        reasons,
        signals: SignalsReport {
            domain: signals.domain.as_ref().map(SignalReport::from_output),
            reasoning: signals.reasoning.as_ref().map(SignalReport::from_output),
            jailbreak: signals.jailbreak.as_ref().map(SignalReport::from_output),
            pii: signals.pii.clone(),
            pii_latency: signals.pii_latency,
            embedding: signals.embedding,
        },
        route_time: Duration::ZERO,
        input,
    }
}

/// The route the domain head picks, or the default one.
fn classify_route(config: &RouterConfig, signals: &Signals, reasons: &mut Vec<String>) -> RouteRef {
    let Some(domain) = &signals.domain else {
        reasons.push("default route: no domain head".into());
        return RouteRef::Default;
    };
    if signals.embedding == EmbeddingUse::Skipped {
        reasons.push(format!(
            "domain without the sentence encoder: head + lexical give {} {:.3} (classifier.embedding.skip_when_confident: {})",
            domain.label,
            domain.score,
            config
                .classifier
                .embedding
                .as_ref()
                .and_then(|e| e.skip_when_confident)
                .map_or("-".to_string(), |t| t.to_string())
        ));
    }
    if domain.score < config.confidence_threshold {
        reasons.push(format!(
            "default route: domain {} at {:.3} is below the confidence threshold {}",
            domain.label, domain.score, config.confidence_threshold
        ));
        return RouteRef::Default;
    }
    match category_index(config, &domain.label) {
        Some(i) => {
            reasons.push(format!(
                "category {}: domain head says {} ({:.3})",
                config.categories[i].route.name, domain.label, domain.score
            ));
            RouteRef::Category(i)
        }
        None => {
            reasons.push(format!(
                "default route: no category claims the label {}",
                domain.label
            ));
            RouteRef::Default
        }
    }
}

fn category_index(config: &RouterConfig, label: &str) -> Option<usize> {
    let l = normalize_label(label);
    config.categories.iter().position(|c| c.labels.contains(&l))
}

/// Whether to think, from the route, the entropy rule and the reasoning head.
/// The entropy rule reads the domain distribution, so it applies only where the domain head picked
/// the route (`by_rule`: a keyword rule picked it).
fn reasoning_from_signals(
    config: &RouterConfig,
    route_ref: RouteRef,
    by_rule: bool,
    signals: &Signals,
    reasons: &mut Vec<String>,
) -> bool {
    let route = config.route(route_ref);
    let mut on = route.use_reasoning;
    reasons.push(format!(
        "reasoning {}: route {} default",
        on_off(on),
        route.name
    ));

    let entropy = &config.entropy;
    let domain = signals
        .domain
        .as_ref()
        .filter(|_| entropy.enabled && !by_rule);
    if let Some(domain) = domain {
        if let Some(h) = normalized_entropy(&domain.probabilities) {
            if h >= entropy.high {
                if !on {
                    reasons.push(format!(
                        "reasoning on: domain entropy {h:.3} >= {} (very uncertain)",
                        entropy.high
                    ));
                }
                on = true;
            } else if h >= entropy.medium {
                if let Some(vote) = top2_vote(config, &domain.probabilities) {
                    reasons.push(format!(
                        "reasoning {}: domain entropy {h:.3} in [{}, {}); top-2 vote {vote:.3} for thinking",
                        on_off(vote > 0.5),
                        entropy.medium,
                        entropy.high
                    ));
                    on = vote > 0.5;
                }
            }
        }
    }

    let rule = &config.reasoning_classifier;
    if let Some(r) = signals.reasoning.as_ref().filter(|_| rule.enabled) {
        if !rule.applies_to(route_ref) {
            reasons.push(format!(
                "reasoning head ({} {:.3}) not consulted on route {}",
                r.label, r.score, route.name
            ));
        } else if r.score >= rule.threshold {
            let positive = normalize_label(&r.label) == rule.positive_label;
            let new = match rule.mode {
                ReasoningClassifierMode::Override => positive,
                ReasoningClassifierMode::Upgrade => on || positive,
            };
            if new != on {
                reasons.push(format!(
                    "reasoning {}: reasoning head says {} ({:.3} >= {})",
                    on_off(new),
                    r.label,
                    r.score,
                    rule.threshold
                ));
            }
            on = new;
        }
    }
    on
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// A thinking decision with its budget: explicit budget, else the route's, else the effort's.
fn thinking(
    config: &RouterConfig,
    route: &Route,
    budget: Option<usize>,
    effort: Option<ReasoningEffort>,
) -> Reasoning {
    if let Some(budget) = budget.or(if effort.is_none() {
        route.thinking_budget
    } else {
        None
    }) {
        return Reasoning::Thinking {
            budget,
            effort: None,
        };
    }
    let effort = effort
        .or(route.reasoning_effort)
        .unwrap_or(config.default_reasoning_effort);
    Reasoning::Thinking {
        budget: config.reasoning_budgets.budget(effort),
        effort: Some(effort),
    }
}

/// Shannon entropy of a distribution divided by its maximum (`ln n`); `None` for fewer than 2 labels.
pub fn normalized_entropy(probabilities: &[(String, f32)]) -> Option<f32> {
    let n = probabilities.len();
    if n < 2 {
        return None;
    }
    let total: f32 = probabilities.iter().map(|p| p.1.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let h: f32 = probabilities
        .iter()
        .map(|p| p.1.max(0.0) / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    Some(h / (n as f32).ln())
}

/// The share of the top-2 labels' probability whose categories think (labels no category claims
/// count as the default route).
fn top2_vote(config: &RouterConfig, probabilities: &[(String, f32)]) -> Option<f32> {
    let mut sorted: Vec<&(String, f32)> = probabilities.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<&(String, f32)> = sorted.into_iter().take(2).collect();
    let total: f32 = top.iter().map(|p| p.1).sum();
    if top.len() < 2 || total <= 0.0 {
        return None;
    }
    let yes: f32 = top
        .iter()
        .filter(|(label, _)| {
            category_index(config, label).map_or(config.default_route.use_reasoning, |i| {
                config.categories[i].route.use_reasoning
            })
        })
        .map(|p| p.1)
        .sum();
    // `+ 0.0`: an empty sum is -0.0 in Rust, which would print as "-0.000".
    Some(yes / total + 0.0)
}

/// Whether an entity's text has the form its type requires, for the types that have one: an e-mail
/// address holds `@`; a domain name or URL holds an inner `.`; a number holds as many digits as the
/// shortest of its kind (phone 6, US social security 9, payment card 12; an IBAN 15 letters and
/// digits, a driving licence 5, both with a digit; an IP address is a dotted quad or has two `:`, with
/// a digit); the name of a person, organisation or place holds a capital letter when the text
/// capitalizes words at all (see [`writes_capitals`]; in an all-lower-case text case says nothing).
/// Other types (dates, ...) always pass. A token head trained
/// on synthetic sentences sometimes tags an ordinary word as one of these types ("nutcracker" as an
/// e-mail address, "hope" in "Hi, hope you're well" as a person); masking it would corrupt the request.
pub fn has_its_form(entity: &PiiEntity, text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    span_has_its_form(entity, &chars, writes_capitals(text))
}

/// [`has_its_form`] on a text's characters, with [`writes_capitals`] of it given.
fn span_has_its_form(entity: &PiiEntity, text: &[char], capitals: bool) -> bool {
    let (a, b) = (entity.start.min(text.len()), entity.end.min(text.len()));
    let span: String = text[a..b.max(a)].iter().collect();
    let digits = span.chars().filter(char::is_ascii_digit).count();
    let alphanumerics = span.chars().filter(|c| c.is_alphanumeric()).count();
    match normalize_entity_type(&entity.entity_type).as_str() {
        "EMAIL_ADDRESS" | "EMAIL" => span.contains('@'),
        "DOMAIN_NAME" | "URL" => span.trim_end_matches('.').contains('.'),
        "PHONE_NUMBER" | "PHONE" => digits >= 6,
        "US_SSN" | "SSN" => digits >= 9,
        "CREDIT_CARD" => digits >= 12,
        "IBAN_CODE" | "IBAN" => digits > 0 && alphanumerics >= 15,
        "US_DRIVER_LICENSE" | "DRIVER_LICENSE" => digits > 0 && alphanumerics >= 5,
        "IP_ADDRESS" => {
            digits > 0 && (span.matches('.').count() >= 3 || span.matches(':').count() >= 2)
        }
        "PERSON" | "PER" | "ORGANIZATION" | "ORG" | "LOCATION" | "LOC" | "GPE" => {
            span.chars().any(char::is_uppercase) || !capitals
        }
        _ => true,
    }
}

/// Whether a text capitalizes any word besides the pronoun "I" (`I`, `I'm`, ...): where it does,
/// its writer capitalizes names too.
pub fn writes_capitals(text: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|w| w != "I" && w.chars().any(char::is_uppercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
default_route: {model: small}
confidence_threshold: 0.5
entropy: {enabled: true, medium: 0.6, high: 0.8}
reasoning_classifier: {enabled: true, threshold: 0.8, mode: override}
reasoning_budgets: {low: 10, medium: 20, high: 30}
keyword_rules:
  - id: proof
    keywords: [prove]
    route: math
    reasoning_effort: high
  - id: quick
    keywords: [quickly]
    use_reasoning: false
jailbreak: {threshold: 0.7, action: block, message: "no."}
pii:
  threshold: 0.5
  reroute: true
  default_policy: {default: allow, entities: {EMAIL_ADDRESS: mask}}
models:
  small: {}
  big: {pii: {default: allow}}
  private: {pii: {default: allow, entities: {US_SSN: block}}}
categories:
  - name: math
    model: small
    use_reasoning: true
    reasoning_effort: medium
    system_prompt: "Be exact."
  - name: law
    model_scores:
      - {model: private, score: 0.9}
      - {model: big, score: 0.5}
  - name: history
    model: small
    jailbreak_threshold: 0.95
"#;

    fn config() -> RouterConfig {
        RouterConfig::from_yaml_str(CONFIG).unwrap()
    }

    fn dist(pairs: &[(&str, f32)]) -> ClassifierOutput {
        ClassifierOutput::from_probabilities(
            pairs.iter().map(|(l, p)| (l.to_string(), *p)).collect(),
            Duration::from_millis(1),
        )
        .unwrap()
    }

    /// A confident domain distribution over three labels.
    fn domain(label: &str, p: f32) -> ClassifierOutput {
        let others: Vec<&str> = ["math", "law", "history"]
            .into_iter()
            .filter(|l| *l != label)
            .collect();
        let rest = (1.0 - p) / 2.0;
        dist(&[(label, p), (others[0], rest), (others[1], rest)])
    }

    fn signals(domain: ClassifierOutput) -> Signals {
        Signals {
            domain: Some(domain),
            ..Signals::default()
        }
    }

    #[test]
    fn confident_domain_picks_its_category_and_its_reasoning() {
        let d = decide(&config(), "what is 2+2", &signals(domain("math", 0.95)));
        assert_eq!(d.category, "math");
        assert_eq!(d.model, "small");
        assert_eq!(
            d.reasoning,
            Reasoning::Thinking {
                budget: 20,
                effort: Some(ReasoningEffort::Medium)
            }
        );
        assert_eq!(d.system_prompt.as_ref().unwrap().text, "Be exact.");
        assert_eq!(d.action, Action::Allow);
        assert!((d.confidence - 0.95).abs() < 1e-6);
    }

    #[test]
    fn low_confidence_takes_the_default_route() {
        let d = decide(&config(), "hmm", &signals(domain("math", 0.45)));
        assert_eq!(d.category, "default");
        assert!(
            d.reasons[0].contains("below the confidence threshold"),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn model_scores_pick_the_best_model() {
        let d = decide(&config(), "contract", &signals(domain("law", 0.9)));
        assert_eq!(d.category, "law");
        assert_eq!(d.model, "private");
        assert_eq!(d.reasoning, Reasoning::Fast);
    }

    #[test]
    fn keyword_rules_take_priority_over_the_classifier() {
        let d = decide(
            &config(),
            "Prove the theorem",
            &signals(domain("history", 0.99)),
        );
        assert_eq!(d.category, "math");
        assert_eq!(d.keyword_rule.as_deref(), Some("proof"));
        assert_eq!(
            d.reasoning,
            Reasoning::Thinking {
                budget: 30,
                effort: Some(ReasoningEffort::High)
            }
        );
        // A rule that only overrides reasoning keeps the classifier's route.
        let d = decide(&config(), "quickly: 2+2?", &signals(domain("math", 0.99)));
        assert_eq!(d.category, "math");
        assert_eq!(d.reasoning, Reasoning::Fast);
    }

    #[test]
    fn very_uncertain_domain_switches_thinking_on() {
        let d = decide(
            &config(),
            "x",
            &signals(dist(&[("history", 0.34), ("law", 0.33), ("math", 0.33)])),
        );
        assert_eq!(d.category, "default");
        assert!(d.reasoning.is_thinking(), "{:?}", d.reasons);
    }

    #[test]
    fn uncertain_domain_takes_the_top2_vote() {
        // H ~= 0.7: the top-2 are history (no thinking, 0.55) and math (thinking, 0.4).
        let p = [("history", 0.55), ("math", 0.40), ("law", 0.05)];
        let h = normalized_entropy(
            &p.iter()
                .map(|(l, p)| (l.to_string(), *p))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!((0.6..0.8).contains(&h), "{h}");
        let d = decide(&config(), "x", &signals(dist(&p)));
        assert_eq!(d.category, "history");
        assert_eq!(d.reasoning, Reasoning::Fast);
        let p = [("math", 0.55), ("history", 0.40), ("law", 0.05)];
        let d = decide(&config(), "x", &signals(dist(&p)));
        assert!(d.reasoning.is_thinking());
    }

    #[test]
    fn confident_reasoning_head_overrides_the_route() {
        let mut s = signals(domain("history", 0.95));
        s.reasoning = Some(dist(&[("reasoning", 0.9), ("no_reasoning", 0.1)]));
        let d = decide(&config(), "x", &s);
        assert!(d.reasoning.is_thinking());
        // ... and switches it off for a thinking route.
        let mut s = signals(domain("math", 0.95));
        s.reasoning = Some(dist(&[("reasoning", 0.05), ("no_reasoning", 0.95)]));
        assert_eq!(decide(&config(), "x", &s).reasoning, Reasoning::Fast);
        // Not confident: no change.
        s.reasoning = Some(dist(&[("reasoning", 0.3), ("no_reasoning", 0.7)]));
        assert!(decide(&config(), "x", &s).reasoning.is_thinking());
    }

    #[test]
    fn reasoning_head_is_consulted_only_on_its_routes() {
        let yaml = CONFIG.replace(
            "mode: override}",
            "mode: override, routes: [default, History]}",
        );
        let c = RouterConfig::from_yaml_str(&yaml).unwrap();
        let head = |label| dist(&[(label, 0.95), ("x", 0.05)]);
        // math is not listed: its use_reasoning stands against a confident "no_reasoning".
        let mut s = signals(domain("math", 0.95));
        s.reasoning = Some(head("no_reasoning"));
        let d = decide(&c, "x", &s);
        assert!(d.reasoning.is_thinking());
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("not consulted on route math")),
            "{:?}",
            d.reasons
        );
        // history and the default route are listed: the head switches thinking on there.
        let mut s = signals(domain("history", 0.95));
        s.reasoning = Some(head("reasoning"));
        assert!(decide(&c, "x", &s).reasoning.is_thinking());
        let mut s = signals(domain("math", 0.40));
        s.reasoning = Some(head("reasoning"));
        let d = decide(&c, "x", &s);
        assert_eq!(d.category, "default");
        assert!(d.reasoning.is_thinking());
    }

    #[test]
    fn jailbreak_blocks_above_threshold_with_route_override() {
        let mut s = signals(domain("math", 0.95));
        s.jailbreak = Some(dist(&[("jailbreak", 0.8), ("benign", 0.2)]));
        let d = decide(&config(), "x", &s);
        assert_eq!(
            d.action,
            Action::Block {
                reason: BlockReason::Jailbreak,
                message: "no.".into()
            }
        );
        assert!(d.is_blocked());
        // The history route raises the threshold to 0.95.
        let mut s = signals(domain("history", 0.95));
        s.jailbreak = Some(dist(&[("jailbreak", 0.8), ("benign", 0.2)]));
        assert_eq!(decide(&config(), "x", &s).action, Action::Allow);
    }

    #[test]
    fn jailbreak_flag_action_lets_the_request_through() {
        let yaml = CONFIG.replace("action: block", "action: flag");
        let c = RouterConfig::from_yaml_str(&yaml).unwrap();
        let mut s = signals(domain("math", 0.95));
        s.jailbreak = Some(dist(&[("jailbreak", 0.9), ("benign", 0.1)]));
        let d = decide(&c, "x", &s);
        assert_eq!(d.action, Action::Allow);
        assert!(d.jailbreak_flagged);
    }

    fn entity(t: &str, score: f32) -> PiiEntity {
        PiiEntity {
            entity_type: t.into(),
            start: 0,
            end: 3,
            score,
        }
    }

    #[test]
    fn pii_mask_and_threshold() {
        let mut s = signals(domain("math", 0.95));
        s.pii = vec![
            entity("EMAIL_ADDRESS", 0.9),
            entity("PERSON", 0.9),
            entity("EMAIL_ADDRESS", 0.2),
        ];
        let d = decide(&config(), "a@b", &s);
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.masked, vec![entity("EMAIL_ADDRESS", 0.9)]);
        assert_eq!(d.signals.pii.len(), 3);
    }

    #[test]
    fn pii_of_a_fixed_form_without_that_form_is_not_masked() {
        let mut s = signals(domain("other", 0.95));
        let at = |t: &str, start: usize, end: usize| PiiEntity {
            entity_type: t.into(),
            start,
            end,
            score: 0.9,
        };
        // A word tagged as an e-mail address is left alone; the address is masked (offsets are in
        // characters).
        let text = "crack a nutcracker é a@b.co";
        s.pii = vec![at("EMAIL_ADDRESS", 8, 18), at("EMAIL_ADDRESS", 21, 27)];
        let d = decide(&config(), text, &s);
        assert_eq!(d.masked, vec![at("EMAIL_ADDRESS", 21, 27)]);
        assert!(!has_its_form(&at("PHONE_NUMBER", 0, 5), text));
        // Numbers need the digits of the shortest of their kind: "5 liters" is no phone number.
        assert!(!has_its_form(&at("PHONE_NUMBER", 0, 8), "5 liters"));
        assert!(has_its_form(&at("PHONE_NUMBER", 0, 8), "555-0199"));
        assert!(!has_its_form(&at("US_SSN", 0, 3), "123"));
        assert!(has_its_form(&at("US_SSN", 0, 11), "123-45-6789"));
        assert!(!has_its_form(&at("CREDIT_CARD", 0, 9), "4111 1111"));
        assert!(has_its_form(
            &at("CREDIT_CARD", 0, 19),
            "4111 1111 1111 1111"
        ));
        assert!(has_its_form(
            &at("IBAN_CODE", 0, 22),
            "GB13PLUO53932440748460"
        ));
        assert!(!has_its_form(&at("IBAN_CODE", 0, 6), "GB13PL"));
        assert!(has_its_form(&at("US_DRIVER_LICENSE", 0, 9), "341308170"));
        assert!(has_its_form(&at("IP_ADDRESS", 0, 11), "192.168.0.1"));
        assert!(has_its_form(&at("IP_ADDRESS", 0, 11), "2001:db8::1"));
        assert!(!has_its_form(&at("IP_ADDRESS", 0, 4), "35 ."));
        assert!(!has_its_form(&at("DOMAIN_NAME", 0, 5), "make."));
        assert!(has_its_form(&at("DOMAIN_NAME", 0, 5), "a.com"));
        assert!(has_its_form(&at("B-EMAIL", 0, 3), "a@b"));
        assert!(has_its_form(&at("PERSON", 0, 5), "hello"));
        // Names in a text that capitalizes need a capital; in an all-lower-case text they do not.
        let text = "Hi, hope you met Ann";
        assert!(!has_its_form(&at("PERSON", 4, 8), text));
        assert!(has_its_form(&at("PERSON", 17, 20), text));
        assert!(has_its_form(
            &at("B-LOCATION", 0, 4),
            "hope you met ann, I'm sure"
        ));
        assert!(!has_its_form(&at("ORGANIZATION", 0, 4), "hope you met Ann"));
        assert!(has_its_form(&at("DATE_TIME", 0, 4), "next Monday"));
        assert!(writes_capitals("ok Ann") && writes_capitals("São paulo"));
        assert!(!writes_capitals("i think I'm ok, I'll go") && !writes_capitals(""));
    }

    #[test]
    fn pii_block_reroutes_to_an_allowed_model_or_refuses() {
        let mut s = signals(domain("law", 0.95));
        s.pii = vec![PiiEntity {
            end: 11,
            ..entity("US_SSN", 0.9)
        }];
        let d = decide(&config(), "123-45-6789", &s);
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.model, "big");

        let yaml = CONFIG.replace("reroute: true", "reroute: false");
        let c = RouterConfig::from_yaml_str(&yaml).unwrap();
        let d = decide(&c, "123-45-6789", &s);
        assert!(matches!(
            d.action,
            Action::Block {
                reason: BlockReason::Pii,
                ..
            }
        ));
        assert_eq!(d.model, "private");
    }

    #[test]
    fn a_rerouted_request_takes_the_reasoning_of_its_new_models_entry() {
        // law's best model blocks an SSN; big (its alternative) thinks at high effort, and the
        // default model does not say.
        let yaml = CONFIG.replace(
            "      - {model: big, score: 0.5}",
            "      - {model: big, score: 0.5, use_reasoning: true, reasoning_effort: high}",
        );
        let c = RouterConfig::from_yaml_str(&yaml).unwrap();
        let mut s = signals(domain("law", 0.95));
        s.pii = vec![PiiEntity {
            end: 11,
            ..entity("US_SSN", 0.9)
        }];
        let d = decide(&c, "123-45-6789", &s);
        assert_eq!(d.model, "big");
        assert_eq!(
            d.reasoning,
            Reasoning::Thinking {
                budget: 30,
                effort: Some(ReasoningEffort::High)
            },
            "{:?}",
            d.reasons
        );
        // And the other way: a thinking route rerouted to a model whose entry says no.
        let yaml = CONFIG
            .replace(
                "      - {model: private, score: 0.9}",
                "      - {model: private, score: 0.9, use_reasoning: true}",
            )
            .replace(
                "      - {model: big, score: 0.5}",
                "      - {model: big, score: 0.5, use_reasoning: false}",
            );
        let c = RouterConfig::from_yaml_str(&yaml).unwrap();
        let before = decide(&c, "x", &signals(domain("law", 0.95)));
        assert!(before.reasoning.is_thinking() && before.model == "private");
        let d = decide(&c, "123-45-6789", &s);
        assert_eq!((d.model.as_str(), d.reasoning), ("big", Reasoning::Fast));
    }

    #[test]
    fn keyword_rules_read_the_newest_user_message() {
        let messages = [
            ChatMessage::new("user", "Can you prove the theorem?"),
            ChatMessage::new("assistant", "Here it is."),
            ChatMessage::new("user", "thanks"),
        ];
        let input = RouteInput::from_messages(&messages);
        assert!(input.text.contains("prove"));
        let d = decide_input(&config(), input, &signals(domain("history", 0.9)));
        assert_eq!(d.keyword_rule, None, "{:?}", d.reasons);
        assert_eq!(d.category, "history");
        // The same words in the newest message do match.
        let input = RouteInput::from_messages(&messages[..1]);
        let d = decide_input(&config(), input, &signals(domain("history", 0.9)));
        assert_eq!(d.keyword_rule.as_deref(), Some("proof"));
    }

    #[test]
    fn a_route_a_keyword_rule_picked_skips_the_entropy_rule() {
        // `calc` routes to law without a reasoning override; the domain head is torn between
        // math and history (a medium-entropy vote for math, which thinks).
        let yaml = CONFIG.replace(
            "keyword_rules:\n",
            "keyword_rules:\n  - id: calc\n    keywords: [gizmo]\n    route: law\n",
        );
        let c = RouterConfig::from_yaml_str(&yaml).unwrap();
        let torn = signals(dist(&[("math", 0.45), ("history", 0.35), ("law", 0.2)]));
        let by_domain = decide(&c, "what about it", &torn);
        assert!(
            by_domain.reasons.iter().any(|r| r.contains("entropy")),
            "{:?}",
            by_domain.reasons
        );
        let d = decide(&c, "how does the gizmo work", &torn);
        assert_eq!(d.keyword_rule.as_deref(), Some("calc"));
        assert_eq!(d.category, "law");
        assert_eq!(d.reasoning, Reasoning::Fast, "{:?}", d.reasons);
        assert!(
            !d.reasons.iter().any(|r| r.contains("entropy")),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn no_signals_takes_the_default_route_fast() {
        let d = decide(&config(), "x", &Signals::default());
        assert_eq!(d.category, "default");
        assert_eq!(d.model, "small");
        assert_eq!(d.reasoning, Reasoning::Fast);
        assert_eq!(d.action, Action::Allow);
    }

    #[test]
    fn decisions_serialize_with_milliseconds() {
        let mut d = decide(&config(), "x", &signals(domain("math", 0.95)));
        d.route_time = Duration::from_micros(1500);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["route_time"], 1.5);
        assert_eq!(v["reasoning"]["mode"], "thinking");
        assert_eq!(v["reasoning"]["budget"], 20);
        assert_eq!(v["action"]["kind"], "allow");
        assert_eq!(v["signals"]["domain"]["label"], "math");
    }

    #[test]
    fn shipped_default_routes_math_to_thinking() {
        let c = RouterConfig::shipped_default().unwrap();
        let d = decide(&c, "what is 17*23?", &signals(domain("math", 0.9)));
        assert!(d.reasoning.is_thinking());
        let d = decide(&c, "who was Napoleon?", &signals(domain("history", 0.9)));
        assert_eq!(d.reasoning, Reasoning::Fast);
    }
}
