//! A SentencePiece-vocabulary llama GGUF (`fixtures/spm-llama/`, made by
//! `fixtures/make_spm_gguf.py`) against llama.cpp through llama-cpp-python: token ids of tricky
//! strings, detokenized text (whole and streamed), and the tiny decoder's greedy continuations.

use switchyard_engine::{
    Detokenizer, Engine, EngineConfig, Event, GenerationParams, GenerationRequest, Prompt,
};
use switchyard_models::decoder::KvDtype;
use switchyard_models::text::ChatMessage;
use switchyard_models::{load_generation_model, GenerationModel};
use switchyard_tests::{fixtures, ids, read_json, teacher_forced};

fn dir() -> std::path::PathBuf {
    fixtures().join("spm-llama")
}

fn model() -> GenerationModel {
    load_generation_model(&dir().join("model.gguf")).expect("the SPM GGUF loads")
}

/// The hand-written tricky strings.
fn cases() -> Vec<serde_json::Value> {
    read_json(&dir().join("tokenize.json"))["cases"]
        .as_array()
        .expect("cases")
        .clone()
}

/// The hand-written strings plus random ones glued from vocabulary pieces and odd characters.
fn all_cases() -> Vec<serde_json::Value> {
    let mut all = cases();
    all.extend(
        read_json(&dir().join("tokenize.json"))["random_cases"]
            .as_array()
            .expect("random_cases")
            .iter()
            .cloned(),
    );
    all
}

#[test]
fn token_ids_match_llama_cpp() {
    let model = model();
    let tok = &model.tokenizer;
    let mut mismatches = Vec::new();
    let all = all_cases();
    for case in &all {
        let text = case["text"].as_str().unwrap();
        let ours = tok.encode(text).unwrap();
        let theirs = ids(&case["ids_special"]);
        if ours != theirs {
            let pieces: Vec<String> = ours.iter().filter_map(|&i| tok.token(i)).collect();
            mismatches.push(format!(
                "{text:?}: ours {ours:?} {pieces:?}, llama.cpp {theirs:?} {}",
                case["pieces"]
            ));
        }
        if let Some(bos) = case.get("ids_bos_special") {
            let with_bos = tok.encode_with_bos(text).unwrap();
            if with_bos != ids(bos) {
                mismatches.push(format!("{text:?} with BOS: ours {with_bos:?}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ:\n{}",
        mismatches.len(),
        all.len(),
        mismatches.join("\n")
    );
}

#[test]
fn special_ids_and_flags_come_from_the_gguf() {
    let model = model();
    let tok = &model.tokenizer;
    let reference = read_json(&dir().join("tokenize.json"));
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), &[2]);
    assert_eq!(tok.add_bos(), reference["add_bos"].as_bool().unwrap());
    assert_eq!(tok.token(0).as_deref(), Some("<unk>"));
    assert_eq!(tok.token_id("<0x0A>"), Some(14));
}

#[test]
fn detokenized_text_matches_llama_cpp() {
    let model = model();
    let tok = &model.tokenizer;
    for case in all_cases() {
        let ids = ids(&case["ids_special"]);
        let theirs = case["detokenized"].as_str().unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), theirs, "{:?}", case["text"]);
    }
}

#[test]
fn streamed_text_adds_up_to_the_whole_decode() {
    let model = model();
    let tok = &model.tokenizer;
    for case in all_cases() {
        let ids = ids(&case["ids_special"]);
        let mut detok = Detokenizer::default();
        let mut streamed = String::new();
        for &id in &ids {
            let delta = detok.push(tok, id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "{:?}: {delta:?}", case["text"]);
            streamed.push_str(&delta);
        }
        assert_eq!(streamed, tok.decode(&ids).unwrap(), "{:?}", case["text"]);
    }
}

#[test]
fn chat_template_renders_one_bos_that_tokenizes_as_bos() {
    let model = model();
    let template = model.chat_template.as_ref().expect("a chat template");
    let rendered = template
        .render(&[ChatMessage::new("user", "Hi there")], true, None)
        .unwrap();
    assert_eq!(rendered, "<s>[INST] Hi there [/INST]");
    let ids = model.tokenizer.encode(&rendered).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 1);
    // The GGUF asks for BOS (add_bos_token), but the template wrote it already: no second one.
    assert!(model.tokenizer.add_bos());
    assert_eq!(model.tokenizer.encode_prompt(&rendered).unwrap(), ids);
}

#[test]
fn plain_text_prompts_get_the_bos_the_gguf_asks_for() {
    let model = model();
    let tok = &model.tokenizer;
    let text = "How many apples are left?";
    let mut want = vec![1];
    want.extend(tok.encode(text).unwrap());
    assert_eq!(tok.encode_prompt(text).unwrap(), want);
    assert_eq!(tok.encode_prompt(&format!("<s>{text}")).unwrap(), want);
}

#[test]
fn greedy_continuations_match_llama_cpp() {
    teacher_forced_matches_llama_cpp(&model(), "reference.json");
}

#[test]
fn a_gguf_rope_scaling_tensor_is_applied_as_llama_cpp_applies_it() {
    // The same model with Llama 3.1-style scaling stored as llama.cpp's converter stores it:
    // per-pair divisors in `rope_freqs.weight` (make_rope_freqs_gguf.py).
    let model = load_generation_model(&dir().join("rope-freqs.gguf")).expect("the GGUF loads");
    let reference = read_json(&dir().join("rope-freqs-reference.json"));
    let want: Vec<f32> = reference["freq_factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        model.decoder.config().rope_scaling,
        Some(switchyard_models::decoder::RopeScaling::FreqFactors(want))
    );
    teacher_forced_matches_llama_cpp(&model, "rope-freqs-reference.json");
}

/// Teacher-forced on llama.cpp's greedy continuations (`reference` in the fixture folder): the
/// argmax at every position, and the top logits within 1e-3.
fn teacher_forced_matches_llama_cpp(model: &GenerationModel, reference: &str) {
    let vocab = model.decoder.config().vocab_size;
    let reference = read_json(&dir().join(reference));
    let mut worst = 0f64;
    for p in reference["prompts"].as_array().unwrap() {
        let prompt = ids(&p["prompt_ids"]);
        assert_eq!(
            model
                .tokenizer
                .encode_prompt(p["prompt"].as_str().unwrap())
                .unwrap(),
            prompt,
            "{:?} (llama.cpp add_bos {})",
            p["prompt"],
            p["add_bos"]
        );
        let continuation = ids(&p["continuation_ids"]);
        let mut tokens = prompt.clone();
        tokens.extend(&continuation);
        // The reference ran with an f32 KV cache (see make_spm_gguf.py).
        let logits = teacher_forced(model, &tokens, KvDtype::F32);
        for (k, (&next, top)) in continuation
            .iter()
            .zip(p["top"].as_array().unwrap())
            .enumerate()
        {
            let pos = prompt.len() - 1 + k;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            assert_eq!(
                switchyard_engine::sampling::argmax(row),
                next,
                "{:?} step {k}",
                p["prompt"]
            );
            for pair in top.as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                worst = worst.max((row[id] as f64 - pair[1].as_f64().unwrap()).abs());
            }
        }
    }
    eprintln!("largest top-logit difference from llama.cpp: {worst:.2e}");
    assert!(worst < 1e-3, "largest top-logit difference {worst}");
}

#[test]
fn the_engine_streams_llama_cpp_greedy_text() {
    let model = model();
    let tokenizer = model.tokenizer.clone();
    let engine = Engine::start(model, EngineConfig::default()).unwrap();
    let reference = read_json(&dir().join("reference.json"));
    for p in reference["prompts"].as_array().unwrap() {
        let want = ids(&p["continuation_ids"]);
        let stream = engine
            .submit(GenerationRequest {
                prompt: Prompt::Text(p["prompt"].as_str().unwrap().to_string()),
                params: GenerationParams {
                    max_tokens: Some(want.len()),
                    ignore_eos: true,
                    ..Default::default()
                },
            })
            .unwrap();
        let (mut text, mut got) = (String::new(), None);
        for event in stream.collect() {
            match event {
                Event::Delta { text: t, .. } => text.push_str(&t),
                Event::Finished { output_ids, .. } => got = Some(output_ids),
                Event::Logprob(_) | Event::PromptLogprob(_) => {
                    panic!("log-probabilities were not asked for")
                }
                Event::Error(e) => panic!("engine error: {e}"),
            }
        }
        assert_eq!(got.as_ref(), Some(&want), "{:?}", p["prompt"]);
        let theirs = p["continuation_text"].as_str().unwrap();
        assert_eq!(
            tokenizer.decode(&want).unwrap(),
            theirs,
            "{:?}",
            p["prompt"]
        );
        assert_eq!(text, theirs, "{:?} streamed", p["prompt"]);
    }
}

#[test]
fn a_continuation_reads_as_it_does_after_its_prompt() {
    // "▁wor" forced after "Hello": decoded alone, SentencePiece strips its space ("wor"); after
    // the prompt it is " wor", and prompt + continuation read as the whole sequence does.
    let model = model();
    let tokenizer = model.tokenizer.clone();
    let engine = Engine::start(model, EngineConfig::default()).unwrap();
    let wor = tokenizer.token_id("▁wor").expect("the piece");
    assert_eq!(tokenizer.decode(&[wor]).unwrap(), "wor", "the premise");
    let stream = engine
        .submit(GenerationRequest {
            prompt: Prompt::Text("Hello".into()),
            params: GenerationParams {
                max_tokens: Some(3),
                ignore_eos: true,
                // As text completions generate: raw text, nothing trimmed.
                split_thinking: false,
                sampling: switchyard_engine::SamplingParams {
                    logit_bias: vec![(wor, 100.0)],
                    ..Default::default()
                },
                ..Default::default()
            },
        })
        .unwrap();
    let (mut text, mut output) = (String::new(), Vec::new());
    for event in stream.collect() {
        match event {
            Event::Delta { text: t, .. } => text.push_str(&t),
            Event::Finished { output_ids, .. } => output = output_ids,
            Event::Error(e) => panic!("engine error: {e}"),
            _ => {}
        }
    }
    assert_eq!(output, [wor; 3]);
    assert_eq!(text, " wor wor wor");
    let mut whole = tokenizer.encode_prompt("Hello").unwrap();
    whole.extend(&output);
    assert!(
        tokenizer
            .decode(&whole)
            .unwrap()
            .ends_with(&format!("Hello{text}")),
        "{text:?}"
    );
}
