//! The decoder against `transformers` on tiny random checkpoints (Llama with llama3 rope scaling,
//! Qwen2 with biases and tied embeddings, Qwen3 with q/k norms): tokenizer ids, chat templates,
//! logits at every position through both the prefill and the decode path, greedy continuations.

use switchyard_models::decoder::{BlockTable, KvCache, LogitRows, SequenceInput};
use switchyard_models::load_generation_model;
use switchyard_models::text::ChatMessage;
use switchyard_tests::{fixtures, ids, max_abs_diff, read_json, read_tensor};

const MODELS: [&str; 3] = ["tiny-llama", "tiny-qwen2", "tiny-qwen3"];
const TOLERANCE: f32 = 1e-4;

fn argmax(v: &[f32]) -> u32 {
    switchyard_engine::sampling::argmax(v)
}

#[test]
fn tokenizer_ids_match_transformers() {
    for name in MODELS {
        let dir = fixtures().join("hf").join(name);
        let model = load_generation_model(&dir).unwrap();
        let reference = read_json(&dir.join("reference.json"));
        for p in reference["prompts"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            assert_eq!(
                model.tokenizer.encode(text).unwrap(),
                ids(&p["ids"]),
                "{name}: {text:?}"
            );
        }
    }
}

#[test]
fn chat_templates_render_like_transformers() {
    for name in MODELS {
        let dir = fixtures().join("hf").join(name);
        let model = load_generation_model(&dir).unwrap();
        let template = model
            .chat_template
            .as_ref()
            .expect("fixture has a template");
        let reference = read_json(&dir.join("reference.json"));
        for case in reference["chat"].as_array().unwrap() {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).unwrap();
            let rendered = template
                .render(
                    &messages,
                    case["add_generation_prompt"].as_bool().unwrap(),
                    case["enable_thinking"].as_bool(),
                )
                .unwrap();
            assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{name}");
            assert_eq!(
                model.tokenizer.encode(&rendered).unwrap(),
                ids(&case["rendered_ids"]),
                "{name}"
            );
        }
    }
}

#[test]
fn prefill_logits_match_transformers_at_every_position() {
    for name in MODELS {
        let dir = fixtures().join("hf").join(name);
        let model = load_generation_model(&dir).unwrap();
        let reference = read_json(&dir.join("reference.json"));
        let vocab = model.decoder.config().vocab_size;
        for (i, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&p["ids"]);
            let (shape, want) =
                read_tensor(&dir.join("reference.safetensors"), &format!("logits.{i}"));
            assert_eq!(shape, vec![prompt.len(), vocab]);
            let mut cache = KvCache::new(model.decoder.config(), 16, 8).unwrap();
            let mut table = BlockTable::default();
            assert!(cache.reserve(&mut table, prompt.len()));
            let got = model
                .decoder
                .forward_all(
                    &[SequenceInput {
                        tokens: &prompt,
                        start_position: 0,
                        blocks: &table,
                        logits: LogitRows::Last,
                    }],
                    &mut cache,
                )
                .unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < TOLERANCE, "{name} prompt {i}: max |Δlogit| {diff}");
        }
    }
}

#[test]
fn decode_path_logits_and_greedy_tokens_match_transformers() {
    for name in MODELS {
        let dir = fixtures().join("hf").join(name);
        let model = load_generation_model(&dir).unwrap();
        let reference = read_json(&dir.join("reference.json"));
        let vocab = model.decoder.config().vocab_size;
        let file = dir.join("reference.safetensors");
        for (i, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
            let prompt = ids(&p["ids"]);
            let greedy = ids(&p["greedy"]);
            let (_, prompt_logits) = read_tensor(&file, &format!("logits.{i}"));
            let (_, greedy_logits) = read_tensor(&file, &format!("greedy_logits.{i}"));
            let mut cache = KvCache::new(model.decoder.config(), 4, 32).unwrap();
            let mut table = BlockTable::default();
            // Feed the prompt one token at a time (decode path), then continue greedily.
            let mut generated = Vec::new();
            let mut next = prompt[0];
            for pos in 0..prompt.len() + greedy.len() - 1 {
                assert!(cache.reserve(&mut table, pos + 1));
                let logits = model
                    .decoder
                    .forward(
                        &[SequenceInput {
                            tokens: &[next],
                            start_position: pos,
                            blocks: &table,
                            logits: LogitRows::Last,
                        }],
                        &mut cache,
                    )
                    .unwrap();
                let want = if pos < prompt.len() - 1 {
                    &prompt_logits[pos * vocab..(pos + 1) * vocab]
                } else {
                    let g = pos + 1 - prompt.len();
                    &greedy_logits[g * vocab..(g + 1) * vocab]
                };
                let diff = max_abs_diff(&logits, want);
                assert!(
                    diff < TOLERANCE,
                    "{name} prompt {i} position {pos}: max |Δlogit| {diff}"
                );
                next = if pos + 1 < prompt.len() {
                    prompt[pos + 1]
                } else {
                    let t = argmax(&logits);
                    generated.push(t);
                    t
                };
            }
            assert_eq!(generated, greedy, "{name} prompt {i}");
        }
    }
}

#[test]
fn tokenizer_config_add_bos_token_starts_prompts_with_bos() {
    let src = fixtures().join("hf").join("tiny-llama");
    let dir = std::env::temp_dir().join(format!("switchyard-add-bos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    let mut config = read_json(&src.join("tokenizer_config.json"));
    config["add_bos_token"] = true.into();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let with_bos = load_generation_model(&dir).unwrap().tokenizer;
    let without = load_generation_model(&src).unwrap().tokenizer;
    std::fs::remove_dir_all(&dir).unwrap();

    let text = "Hello there, how are you?";
    let plain = without.encode(text).unwrap();
    assert_eq!(without.encode_prompt(text).unwrap(), plain);
    let bos = with_bos.bos().expect("the fixture names a bos_token");
    assert_eq!(with_bos.encode_prompt(text).unwrap()[0], bos);
    assert_eq!(with_bos.encode_prompt(text).unwrap()[1..], plain[..]);
}

#[test]
fn an_output_head_of_the_wrong_shape_is_refused_at_load() {
    // tiny-llama's untied head with its last row cut: an error naming the tensor, not a model
    // that fails every request later.
    let source = fixtures().join("hf/tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    let head = tensors
        .iter_mut()
        .find(|t| t.0 == "lm_head.weight")
        .expect("an untied head");
    let row_bytes = head.3.len() / head.2[0];
    head.2[0] -= 1;
    head.3.truncate(head.3.len() - row_bytes);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let err = load_generation_model(dir.path())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("lm_head.weight") && err.contains("expected"),
        "{err}"
    );
}
