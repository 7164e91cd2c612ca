//! Validation: a parsed [`ConfigFile`] resolved into a [`RouterConfig`], every problem reported
//! with the path of its field.

use super::*;

#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

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

pub(super) fn resolve(f: ConfigFile, errs: &mut Errors) -> RouterConfig {
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
