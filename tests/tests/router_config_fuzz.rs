//! Routing configurations edited at random are load errors that name a field, or load and then
//! decide any request (any labels and scores, PII spans anywhere) and apply the decision, never
//! panic: the shipped `default.yaml` and a classic vLLM Semantic Router config, each with values
//! replaced, keys dropped and unknown keys added (seeded; see `switchyard_tests::fuzz`).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;
use switchyard_models::text::ChatMessage;
use switchyard_router::config::DEFAULT_CONFIG_YAML;
use switchyard_router::{
    decide_input, ClassifierOutput, PiiEntity, RouteInput, RouterConfig, Signals,
};
use switchyard_tests::fuzz::{mutate, outcome, seeded_rng};

/// Edited configurations tried per starting document.
const ROUNDS: usize = 400;

/// A vLLM Semantic Router config in its classic shape.
const CLASSIC: &str = r#"
default_model: SmolLM2-135M-Instruct
default_reasoning_effort: high
reasoning_families:
  qwen3: {type: chat_template_kwargs, parameter: enable_thinking}
model_config:
  SmolLM2-135M-Instruct:
    reasoning_family: qwen3
    pii_policy: {allow_by_default: false, pii_types_allowed: [PERSON]}
prompt_guard: {enabled: true, threshold: 0.7}
classifier:
  category_model: {threshold: 0.6}
  pii_model: {threshold: 0.8}
keyword_rules:
  - {category: math, operator: AND, keywords: [solve, equation]}
categories:
  - name: math
    system_prompt: "Be careful."
    model_scores:
      - {model: SmolLM2-135M-Instruct, score: 1.0, use_reasoning: true, reasoning_effort: low}
  - name: other
    jailbreak_threshold: 0.5
    model_scores:
      - {model: SmolLM2-135M-Instruct, score: 0.7, use_reasoning: false}
"#;

/// Signals of any shape: labels the config knows or not, scores at the edges, PII spans inside,
/// across and past the text.
fn signals(rng: &mut StdRng, text_chars: usize) -> Signals {
    let labels = [
        "math",
        "other",
        "health",
        "nope",
        "",
        "reasoning",
        "jailbreak",
        "benign",
    ];
    let head = |rng: &mut StdRng| {
        let scores = [0.0f32, 0.3, 0.5, 0.99, 1.0, f32::NAN, -1.0, 2.0];
        let probabilities: Vec<(String, f32)> = (0..rng.random_range(0..4))
            .map(|_| {
                (
                    labels[rng.random_range(0..labels.len())].to_string(),
                    scores[rng.random_range(0..scores.len())],
                )
            })
            .collect();
        rng.random::<bool>().then(|| ClassifierOutput {
            label: labels[rng.random_range(0..labels.len())].to_string(),
            score: scores[rng.random_range(0..scores.len())],
            probabilities,
            latency: Duration::from_micros(10),
        })
    };
    let domain = head(rng);
    let reasoning = head(rng);
    let jailbreak = head(rng);
    let pii = (0..rng.random_range(0..3))
        .map(|_| {
            let start = rng.random_range(0..text_chars + 3);
            PiiEntity {
                entity_type: ["EMAIL_ADDRESS", "B-PERSON", "I-US_SSN", "", "weird"]
                    [rng.random_range(0..5)]
                .to_string(),
                start,
                end: start + rng.random_range(0..8),
                score: rng.random(),
            }
        })
        .collect();
    Signals {
        domain,
        reasoning,
        jailbreak,
        pii,
        ..Signals::default()
    }
}

fn fuzz(document: &str, default_seed: u64) {
    let (seed, mut rng) = seeded_rng(default_seed);
    let original: Value = yaml_serde::from_str(document).expect("the document parses");
    let messages = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Solve the equation 3x + 7 = 22, mail me at a@b.co"),
    ];
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let edited = mutate(&original, &mut rng);
        // JSON is YAML.
        let yaml = edited.to_string();
        let what = format!("seed {seed}, round {round}: {yaml}");
        let decided = outcome(|| match RouterConfig::from_yaml_str(&yaml) {
            Err(e) => Err(e.to_string()),
            Ok(config) => {
                let input = RouteInput::from_messages(&messages);
                let mut rng = StdRng::clone(&rng);
                for _ in 0..4 {
                    let signals = signals(&mut rng, input.text.chars().count());
                    // As `Router::route` does: the decision remembers where its text came from.
                    let decision = decide_input(&config, input.clone(), &signals);
                    let mut routed = messages.clone();
                    decision.apply(&mut routed);
                    serde_json::to_string(&decision).expect("a decision serialises");
                }
                Ok(())
            }
        });
        match decided {
            Some(true) => loaded += 1,
            Some(false) => refused += 1,
            None => panic!("{what}: panicked"),
        }
    }
    eprintln!("seed {seed}: {loaded} loaded and decided, {refused} refused");
    assert!(
        loaded >= ROUNDS / 10 && refused >= ROUNDS / 10,
        "{loaded} / {refused}"
    );
}

#[test]
fn edited_shipped_configs_load_and_decide_or_are_errors() {
    fuzz(DEFAULT_CONFIG_YAML, 0xc0f1);
}

#[test]
fn edited_classic_configs_load_and_decide_or_are_errors() {
    fuzz(CLASSIC, 0xc1a5);
}

/// Rounds of the damaged router directory test (each loads a router: tenths of a second).
const DIRECTORY_ROUNDS: usize = 60;

#[test]
fn damaged_router_directories_are_errors_or_route() {
    use switchyard_router::{Router, RouterOptions};
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../router/models/default");
    // The shipped configuration's embedding signal needs the cached encoder (skips without it,
    // unless $SWITCHYARD_REQUIRE_MODEL makes that a failure).
    if switchyard_tests::minilm_dir().is_none() {
        return;
    }
    let (seed, mut rng) = seeded_rng(0xd1e5);
    // The JSON side files a router directory is read from; the weights are linked, not copied.
    let editable = [
        "config.json",
        "heads.json",
        "embedding.json",
        "lexical.json",
        "lexical-joint.json",
    ];
    let (mut routed, mut refused) = (0, 0);
    for round in 0..DIRECTORY_ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&shipped).unwrap() {
            let from = entry.unwrap().path();
            let name = from.file_name().unwrap();
            if editable.iter().all(|e| name != *e) {
                std::os::unix::fs::symlink(&from, dir.path().join(name)).unwrap();
            }
        }
        let damaged = editable[rng.random_range(0..editable.len())];
        for file in editable {
            let original: Value =
                serde_json::from_slice(&std::fs::read(shipped.join(file)).unwrap()).unwrap();
            let text = if file == damaged {
                mutate(&original, &mut rng)
            } else {
                original
            };
            std::fs::write(dir.path().join(file), text.to_string()).unwrap();
        }
        let what = format!("seed {seed}, round {round}: {damaged}");
        let result = outcome(|| {
            let options = RouterOptions {
                model_dir: Some(dir.path().to_path_buf()),
                ..RouterOptions::new(RouterConfig::shipped_default().unwrap())
            };
            let router = Router::load(options).map_err(|e| e.to_string())?;
            router
                .route_text("Solve 3x + 7 = 22 and mail it to a@b.co")
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        match result {
            Some(true) => routed += 1,
            Some(false) => refused += 1,
            None => panic!("{what}: panicked"),
        }
    }
    eprintln!("seed {seed}: {routed} routed, {refused} refused");
    assert!(refused > 0 && routed > 0, "{routed} / {refused}");
}
