//! Thinking end to end: `reasoning_effort`, `chat_template_kwargs.enable_thinking` and routed
//! thinking give budgeted `reasoning_content` and `usage.completion_tokens_details.reasoning_tokens`,
//! the same streamed and not, on a prompted-thinking model (tiny Llama) and on one whose template
//! has the switch (tiny Qwen3).

use std::time::Duration;

use serde_json::{json, Value};
use server_common::*;
use switchyard_engine::{DeltaKind, Event, GenerationParams, GenerationRequest, Prompt, Thinking};
use switchyard_models::text::ChatMessage;
use switchyard_server::serve::ServeArgs;
use switchyard_tests::fixtures;

mod server_common;

/// The shipped routing config with tiny budgets (low 6, medium 8, high 10), in a fresh directory.
fn config_with_small_budgets() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(write_config_with_small_budgets).clone()
}

fn write_config_with_small_budgets() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("router/config/default.yaml")).unwrap();
    let start = shipped.find("reasoning_budgets:").unwrap();
    let end = start + shipped[start..].find("default_reasoning_effort").unwrap();
    let yaml = format!(
        "{}reasoning_budgets:\n  low: 6\n  medium: 8\n  high: 10\n{}",
        &shipped[..start],
        &shipped[end..]
    )
    .replace(
        "model_dir: router/models/default",
        &format!(
            "model_dir: {}",
            root.join("router/models/default").display()
        ),
    );
    // Cargo's scratch directory for integration tests (under `target/`), not the system's.
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-reasoning-routing.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn serving(fixture: &str) -> ServeArgs {
    ServeArgs {
        models: vec![fixtures()
            .join("hf")
            .join(fixture)
            .to_string_lossy()
            .into_owned()],
        config: Some(config_with_small_budgets()),
        ..args()
    }
}

fn body(model: &str, text: &str, extra: Value) -> Value {
    let mut b = chat(model, text, 24);
    b["ignore_eos"] = json!(true);
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Reasoning text, answer text, reasoning tokens and the reasoning header, non-streamed and
/// streamed; asserts both agree.
async fn both_ways(base: &str, body: &Value) -> (String, String, u64, String) {
    let r = post(base, "/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let header = r.headers()["x-switchyard-reasoning"]
        .to_str()
        .unwrap()
        .to_string();
    let v: Value = r.json().await.unwrap();
    let message = &v["choices"][0]["message"];
    let reasoning = message["reasoning_content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let content = message["content"].as_str().unwrap().to_string();
    let tokens = v["usage"]["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 24);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(base, "/v1/chat/completions", &streamed).await;
    assert_eq!(r.headers()["x-switchyard-reasoning"], header.as_str());
    let (s_content, s_reasoning, _, usage) = assemble(&sse_data(&r.text().await.unwrap()));
    assert_eq!(s_content, content);
    assert_eq!(s_reasoning, reasoning);
    assert_eq!(
        usage.unwrap()["completion_tokens_details"]["reasoning_tokens"],
        tokens
    );
    // The end-of-thinking marker (forced or generated) separates the two; it is in neither.
    // (The random-weight model may well write other special tokens as text.)
    assert!(!reasoning.contains("</think>"), "{reasoning:?}");
    assert!(!content.trim_start().starts_with("</think>"), "{content:?}");
    (reasoning, content, tokens, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_effort_enable_thinking_and_the_router_set_the_budget() {
    // The Llama fixture thinks by the prompted `<think>` convention: the engine opens the section,
    // so every budget is spent in full before the forced end and the answer.
    let (s, base) = server(serving("tiny-llama")).await;
    let q = "Why is the sky blue?";
    let algebra = "Solve for x: 3x + 7 = 22";
    for (model, text, extra, want) in [
        ("tiny-llama", q, json!({"reasoning_effort": "low"}), Some(6)),
        (
            "tiny-llama",
            q,
            json!({"reasoning_effort": "high"}),
            Some(10),
        ),
        ("tiny-llama", q, json!({"reasoning_effort": "none"}), None),
        ("tiny-llama", q, json!({}), None),
        // On without an effort: the medium budget.
        (
            "tiny-llama",
            q,
            json!({"chat_template_kwargs": {"enable_thinking": true}}),
            Some(8),
        ),
        // The router thinks about algebra (medium in the shipped config)...
        ("auto", algebra, json!({}), Some(8)),
        // ... unless the request says otherwise.
        (
            "auto",
            algebra,
            json!({"chat_template_kwargs": {"enable_thinking": false}}),
            None,
        ),
        ("auto", algebra, json!({"reasoning_effort": "low"}), Some(6)),
    ] {
        let case = format!("{model} {extra}");
        let (reasoning, content, tokens, header) =
            both_ways(&base, &body(model, text, extra)).await;
        match want {
            Some(budget) => {
                assert_eq!((header.as_str(), tokens), ("on", budget), "{case}");
                assert!(!reasoning.is_empty() && !content.is_empty(), "{case}");
            }
            None => {
                assert_eq!((header.as_str(), tokens), ("off", 0), "{case}");
                assert!(reasoning.is_empty() && !content.is_empty(), "{case}");
            }
        }
    }
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_a_thinking_switch_gets_it() {
    // Qwen3's template reads `enable_thinking` (the model opens `<think>` itself): the server's
    // answers are the engine's own for the same switch and budget, and the switch changes them.
    let (s, base) = server(serving("tiny-qwen3")).await;
    let engine = &s.state.engines["tiny-qwen3"];
    let direct = |thinking| {
        let events = engine
            .submit(GenerationRequest {
                prompt: Prompt::Chat(vec![ChatMessage::new("user", "Why is the sky blue?")]),
                params: GenerationParams {
                    max_tokens: Some(24),
                    ignore_eos: true,
                    thinking,
                    ..GenerationParams::default()
                },
            })
            .unwrap()
            .collect();
        let (mut reasoning, mut content) = (String::new(), String::new());
        for e in events {
            match e {
                Event::Delta {
                    kind: DeltaKind::Reasoning,
                    text,
                } => reasoning.push_str(&text),
                Event::Delta {
                    kind: DeltaKind::Content,
                    text,
                } => content.push_str(&text),
                _ => {}
            }
        }
        (reasoning, content)
    };
    let mut answers = Vec::new();
    for (enable, thinking) in [
        (true, Thinking::On { budget: Some(8) }),
        (false, Thinking::Off),
    ] {
        let b = body(
            "tiny-qwen3",
            "Why is the sky blue?",
            json!({"chat_template_kwargs": {"enable_thinking": enable}}),
        );
        let (reasoning, content, _, header) = both_ways(&base, &b).await;
        assert_eq!(header, if enable { "on" } else { "off" });
        assert_eq!(
            (reasoning.clone(), content.clone()),
            direct(thinking),
            "{enable}"
        );
        answers.push(content);
    }
    assert_ne!(answers[0], answers[1]);
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}
