//! The real SmolLM2-135M-Instruct Q4_1 GGUF against llama.cpp (references made with
//! llama-cpp-python by `fixtures/make_llamacpp_reference.py`): tokenizer ids, chat rendering,
//! the first layer op by op (`fixtures/make_llamacpp_layer0.py`), teacher-forced argmax agreement
//! and logit correlation, and free-running greedy output.
//!
//! Needs the GGUF (`cargo run --release -- fetch-model`); CI sets `SWITCHYARD_REQUIRE_MODEL` so a
//! missing model fails there instead of skipping.

use switchyard_models::decoder::{BlockTable, KvCache, KvDtype, LogitRows, SequenceInput};
use switchyard_models::text::ChatMessage;
use switchyard_models::{load_generation_model, GenerationModel};
use switchyard_tests::{fixtures, ids, read_json, read_tensor, smollm2_gguf, teacher_forced};

fn reference() -> serde_json::Value {
    read_json(&fixtures().join("smollm2-llamacpp/reference.json"))
}

fn model() -> Option<GenerationModel> {
    smollm2_gguf().map(|p| load_generation_model(&p).expect("the GGUF loads"))
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn gguf_tokenizer_matches_llama_cpp_ids() {
    let Some(model) = model() else { return };
    let cases = read_json(&fixtures().join("smollm2-llamacpp/tokenize.json"));
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(text).unwrap(),
            ids(&case["ids_special"]),
            "{text:?}"
        );
    }
}

#[test]
fn generation_ends_where_llama_cpp_ends_it() {
    let Some(model) = model() else { return };
    // llama.cpp's `llama_vocab_is_eog` set (make_llamacpp_eog.py): the GGUF's eos, and the
    // end-of-turn and FIM tokens it finds by text.
    let reference = read_json(&fixtures().join("smollm2-llamacpp/eog.json"));
    let theirs: Vec<(u32, String)> = reference["eog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_u64().unwrap() as u32,
                e[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ours = model.tokenizer.eos();
    assert!(ours.len() > 1, "more than the GGUF's eos id: {ours:?}");
    for id in ours {
        assert!(
            theirs.iter().any(|(t, _)| t == id),
            "{id} is not llama.cpp's: {theirs:?}"
        );
    }
    // What llama.cpp adds beyond ours is only what it guesses from FIM tokens' names.
    for (id, text) in &theirs {
        let fim = ["fim", "repo", "file_sep"].iter().any(|k| text.contains(k));
        assert!(
            ours.contains(id) || fim,
            "{id} {text:?} missing from {ours:?}"
        );
    }
}

#[test]
fn chat_prompts_render_and_tokenize_like_llama_cpp() {
    let Some(model) = model() else { return };
    let template = model
        .chat_template
        .as_ref()
        .expect("the GGUF has a chat template");
    for conv in reference()["conversations"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(conv["messages"].clone()).unwrap();
        let rendered = template.render(&messages, true, None).unwrap();
        assert_eq!(rendered, conv["rendered"].as_str().unwrap());
        assert_eq!(
            model.tokenizer.encode(&rendered).unwrap(),
            ids(&conv["prompt_ids"])
        );
    }
}

#[test]
fn the_first_layer_computes_what_llama_cpp_computes_op_by_op() {
    let Some(model) = model() else { return };
    // The conversation's last 8 tokens, at their positions (the rotation angles grow with them);
    // the layer-0 results compared are row by row, so the earlier tokens need not be computed.
    let conv = &reference()["conversations"][0];
    let mut tokens = ids(&conv["prompt_ids"]);
    tokens.extend(ids(&conv["continuation_ids"]));
    let start = tokens.len() - 8;
    let mut cache = KvCache::with_dtype(
        model.decoder.config(),
        16,
        tokens.len().div_ceil(16),
        &candle_core::Device::Cpu,
        KvDtype::F16,
    )
    .unwrap();
    let mut table = BlockTable::default();
    assert!(cache.reserve(&mut table, tokens.len()));
    let mut layer0 = std::collections::HashMap::new();
    model
        .decoder
        .forward_traced(
            &[SequenceInput {
                tokens: &tokens[start..],
                start_position: start,
                blocks: &table,
                logits: LogitRows::Last,
            }],
            &mut cache,
            &mut |name, layer, values| {
                if layer == 0 {
                    layer0.insert(name.to_string(), values.to_vec());
                }
            },
        )
        .unwrap();
    let file = fixtures().join("smollm2-llamacpp/layer0.safetensors");
    // The normalised input is bit for bit llama.cpp's (squares summed in f64, as GGML does).
    let (_, theirs) = read_tensor(&file, "attn_norm");
    let differing = layer0["attn_norm"]
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "attn_norm: {differing} values differ");
    // The projections (8-bit activation blocks with f16 scales, as GGML's Q8_1) and the rotation
    // (GGML's angles) agree to the order of summation: with f32 scales Q is 2.5e-4 apart, with
    // Hugging Face's angles the rotated Q 1.7e-6 (fractions of the largest value).
    for name in ["Qcur", "Kcur", "Vcur", "Qrope", "Krope"] {
        let (_, theirs) = read_tensor(&file, name);
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = switchyard_tests::max_abs_diff(&layer0[name], &theirs);
        assert!(
            diff <= 5e-7 * scale,
            "{name}: max difference {diff:e} of values up to {scale}"
        );
    }
}

#[test]
fn teacher_forced_logits_agree_with_llama_cpp() {
    let Some(model) = model() else { return };
    let vocab = model.decoder.config().vocab_size;
    let logits_file = fixtures().join("smollm2-llamacpp/logits.safetensors");
    let (mut positions, mut agree) = (0usize, 0usize);
    let mut widest_disputed_gap = 0f64;
    let mut worst_corr = f64::INFINITY;
    let mut corrs = Vec::new();
    for (c, conv) in reference()["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let mut tokens = ids(&conv["prompt_ids"]);
        tokens.extend(ids(&conv["continuation_ids"]));
        // The reference ran with llama.cpp's default f16 KV cache; ours stores the same.
        let ours = teacher_forced(&model, &tokens, KvDtype::F16);
        for tf in conv["teacher_forced"].as_array().unwrap() {
            let pos = tf["pos"].as_u64().unwrap() as usize;
            let row = &ours[pos * vocab..(pos + 1) * vocab];
            positions += 1;
            let ours_top = switchyard_engine::sampling::argmax(row);
            let theirs_top = tf["argmax"].as_u64().unwrap() as u32;
            agree += usize::from(ours_top == theirs_top);
            if ours_top != theirs_top {
                let top = tf["top"].as_array().unwrap();
                let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
                widest_disputed_gap = widest_disputed_gap.max(gap);
                let ours_theirs = row[theirs_top as usize] as f64;
                eprintln!(
                    "conversation {c} position {pos}: llama.cpp top-2 gap {gap:.3}; ours prefers {ours_top} by {:.3}",
                    row[ours_top as usize] as f64 - ours_theirs
                );
            }
        }
        let (shape, theirs) = read_tensor(&logits_file, &format!("logits.{c}"));
        let (_, at) = read_tensor(&logits_file, &format!("positions.{c}"));
        for (k, &pos) in at.iter().enumerate() {
            let pos = pos as usize;
            let corr = pearson(
                &ours[pos * vocab..(pos + 1) * vocab],
                &theirs[k * shape[1]..(k + 1) * shape[1]],
            );
            worst_corr = worst_corr.min(corr);
            corrs.push(corr);
        }
    }
    let rate = agree as f64 / positions as f64;
    let mean_corr = corrs.iter().sum::<f64>() / corrs.len() as f64;
    eprintln!(
        "argmax agreement {agree}/{positions} = {rate:.4}; logit correlation mean {mean_corr:.5}, worst \
         {worst_corr:.5}; widest llama.cpp top-2 gap where we disagree {widest_disputed_gap:.3}"
    );
    // The yardstick: llama.cpp itself, same build and settings, on another CPU than the reference's
    // (check_llamacpp_reproducibility.py), scored the same way.
    let yardstick = llama_cpp_reproducibility();
    for (path, r) in yardstick.as_object().unwrap() {
        let r_rate = r["argmax_rate"].as_f64().unwrap();
        eprintln!(
            "llama.cpp's {path} path on another CPU: argmax agreement {}/{} = {r_rate:.4}; \
             correlation mean {}, worst {}",
            r["argmax_agree"], r["positions"], r["correlation_mean"], r["correlation_min"]
        );
    }
    assert!(positions >= 256);
    // Every disagreement must be at a llama.cpp near-tie, and the logits as correlated as the issue
    // asks (0.999, mean over the stored rows; no row below 0.998).
    assert!(
        widest_disputed_gap < 0.5,
        "disagreement where llama.cpp's top-2 gap is {widest_disputed_gap:.3}"
    );
    // The count itself is a draw among near-ties: the same code with the kernels of another
    // instruction set (another order of summation) gave 266 (scalar), 271 (AVX2), 269 (AVX-512) and
    // 267 (AMX) of these 277 on one machine, 273 / 265 / 269 / 272 with the SwiGLU on libm's expf,
    // and llama.cpp's own two paths differ at 7-9 of them (tests/fixtures/README.md). So the floor
    // sits below every draw measured; what would catch a real error is the near-tie and
    // correlation checks.
    let floor = 0.95;
    assert!(rate >= floor, "argmax agreement {rate:.4} < {floor:.4}");
    assert!(
        mean_corr >= 0.999,
        "mean logit correlation {mean_corr:.5} < 0.999"
    );
    assert!(
        worst_corr >= 0.998,
        "logit correlation {worst_corr:.5} < 0.998"
    );
}

/// `reproducibility.json`'s two llama.cpp paths (`batch`, `single_token`), each with its argmax
/// agreement and correlations against the reference.
fn llama_cpp_reproducibility() -> serde_json::Value {
    let path = fixtures().join("smollm2-llamacpp/reproducibility.json");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::json!({ "batch": all["batch"], "single_token": all["single_token"] })
}

#[test]
fn free_running_greedy_agrees_up_to_the_first_near_tie() {
    let Some(model) = model() else { return };
    let vocab = model.decoder.config().vocab_size;
    for conv in reference()["conversations"].as_array().unwrap() {
        let prompt = ids(&conv["prompt_ids"]);
        let theirs = ids(&conv["continuation_ids"]);
        let gaps: Vec<f64> = conv["greedy_top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let mut cache = KvCache::with_dtype(
            model.decoder.config(),
            16,
            16,
            &candle_core::Device::Cpu,
            KvDtype::F16,
        )
        .unwrap();
        let mut table = BlockTable::default();
        let mut feed = prompt.clone();
        let mut pos = 0;
        for (step, &want) in theirs.iter().enumerate() {
            assert!(cache.reserve(&mut table, pos + feed.len()));
            let logits = model
                .decoder
                .forward(
                    &[SequenceInput {
                        tokens: &feed,
                        start_position: pos,
                        blocks: &table,
                        logits: LogitRows::Last,
                    }],
                    &mut cache,
                )
                .unwrap();
            pos += feed.len();
            let got = switchyard_engine::sampling::argmax(&logits[..vocab]);
            if got != want {
                // Divergence is acceptable only where llama.cpp itself was close to a tie.
                let mut sorted = logits.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let our_gap = (sorted[0] - sorted[1]) as f64;
                assert!(
                    gaps[step] < 0.5 || our_gap < 0.5,
                    "diverged at step {step} (ours {got}, llama.cpp {want}) where llama.cpp's top-2 gap is {} and ours {our_gap}",
                    gaps[step]
                );
                eprintln!("diverged at a near-tie, step {step} of {}", theirs.len());
                break;
            }
            feed = vec![got];
        }
    }
}
