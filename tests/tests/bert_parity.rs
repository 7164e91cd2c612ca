//! The BERT sentence encoder (the router's embedding signal) against Hugging Face `transformers`
//! (fixtures made by `tests/fixtures/make_bert_fixtures.py`): hidden states and mean-pooled,
//! L2-normalised embeddings within 1e-4 in f32, for a batch of texts of different lengths; and the real
//! all-MiniLM-L6-v2 (tokenizer ids and embeddings; with Q8_0 layers, cosine > 0.995) when it is in the
//! model cache (skipped otherwise, unless `$SWITCHYARD_REQUIRE_MODEL` is set).

use switchyard_models::encoder::BertEncoder;
use switchyard_tests::{fixtures, ids, max_abs_diff, minilm_dir, read_json, read_tensor};

const TOLERANCE: f32 = 1e-4;

#[test]
fn tiny_bert_matches_transformers() {
    let dir = fixtures().join("bert/tiny");
    let model = BertEncoder::load(&dir).unwrap();
    let json = read_json(&dir.join("reference.json"));
    let batch: Vec<Vec<u32>> = json["ids"].as_array().unwrap().iter().map(ids).collect();
    let refs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
    let reference = dir.join("reference.safetensors");

    let hidden = model.hidden_states(&refs).unwrap();
    for (i, h) in hidden.iter().enumerate() {
        let (shape, want) = read_tensor(&reference, &format!("hidden_{i}"));
        assert_eq!(shape, vec![batch[i].len(), model.dim()]);
        let d = max_abs_diff(h, &want);
        assert!(d < TOLERANCE, "text {i}: max |Δ hidden| = {d}");
    }
    // Alone or in a batch: the same.
    let alone = model.hidden_states(&refs[2..]).unwrap();
    assert_eq!(alone[0], hidden[2]);

    let (_, want) = read_tensor(&reference, "embeddings");
    let got: Vec<f32> = model.embed(&refs).unwrap().concat();
    let d = max_abs_diff(&got, &want);
    assert!(d < TOLERANCE, "max |Δ embedding| = {d}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let model = BertEncoder::load(&fixtures().join("bert/tiny")).unwrap();
    assert!(
        model.embed(&[&[1, 500, 2]]).is_err(),
        "id outside the vocabulary"
    );
    let long = vec![5u32; model.max_positions() + 1];
    assert!(model.embed(&[&long]).is_err(), "longer than the positions");
    assert!(model.embed(&[]).unwrap().is_empty());
    assert!(BertEncoder::load(&fixtures().join("bert/missing")).is_err());
}

#[test]
fn minilm_matches_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let model = BertEncoder::load(&dir).unwrap();
    let quantized = BertEncoder::load(&dir).unwrap().quantize_q8_0().unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    // The shipped tokenizer.json pads every text to 128 tokens; the encoder takes them unpadded.
    tokenizer.with_padding(None);
    let rows = read_json(&fixtures().join("bert/minilm-reference.json"));
    for row in rows.as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let enc = tokenizer.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), ids(&row["ids"]).as_slice(), "{text}");
        let want: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = model.embed(&[enc.get_ids()]).unwrap().remove(0);
        let d = max_abs_diff(&got, &want);
        assert!(d < TOLERANCE, "{text}: max |Δ embedding| = {d}");
        // Q8_0 layers (how the router runs it): the same direction, to within 8-bit rounding.
        let q = quantized.embed(&[enc.get_ids()]).unwrap().remove(0);
        let cos: f32 = q.iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!(cos > 0.995, "{text}: cosine {cos} with Q8_0 layers");
    }
}
