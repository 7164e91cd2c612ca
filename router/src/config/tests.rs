//! The configuration's tests: parsing, validation errors by field, the classic fields, the shipped
//! file and the README's example.

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

/// The configuration example in router/README.md is valid.
#[test]
fn readme_example_loads() {
    let readme = include_str!("../../README.md");
    let start = readme.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    let config = RouterConfig::from_yaml_str(&readme[start..end]).unwrap();
    assert_eq!(config.categories.len(), 1);
    assert_eq!(config.keyword_rules[0].id, "explicit-step-by-step");
}
