//! ModernBERT encoder and heads against Hugging Face `transformers` (fixtures made by
//! `tests/fixtures/make_modernbert_fixtures.py`): tokenization, hidden states, sequence and token logits
//! within 1e-4 in f32, on a padded batch with one input longer than the local attention window.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use switchyard_models::encoder::MultiHeadClassifier;
use switchyard_tests::{fixtures, ids, max_abs_diff, read_json, read_tensor};

const TOLERANCE: f32 = 1e-4;

struct Reference {
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    long_index: usize,
    json: serde_json::Value,
}

fn reference(dir: &Path) -> Reference {
    let json = read_json(&dir.join("reference.json"));
    Reference {
        texts: json["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect(),
        input_ids: json["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect(),
        mask: json["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect(),
        long_index: json["long_text_index"].as_u64().unwrap() as usize,
        json,
    }
}

fn tensor2(rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

/// Values of a `[B, T, ...]` array at the positions where `mask` is 1.
fn masked(values: &[f32], mask: &[Vec<u32>], width: usize) -> Vec<f32> {
    let t = mask[0].len();
    let mut out = Vec::new();
    for (b, row) in mask.iter().enumerate() {
        for (i, &m) in row.iter().enumerate() {
            if m == 1 {
                let at = (b * t + i) * width;
                out.extend_from_slice(&values[at..at + width]);
            }
        }
    }
    out
}

fn check(name: &str) {
    let dir = fixtures().join("modernbert").join(name);
    let r = reference(&dir);
    let refs = dir.join("reference.safetensors");

    // Tokenization: the same ids as the Python tokenizer.
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    for (i, text) in r.texts.iter().enumerate() {
        let enc = tokenizer.encode(text.as_str(), true).unwrap();
        let n = r.mask[i].iter().filter(|&&m| m == 1).count();
        assert_eq!(
            enc.get_ids(),
            &r.input_ids[i][..n],
            "{name}: ids of text {i}"
        );
    }

    let model = MultiHeadClassifier::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let (input, mask) = (tensor2(&r.input_ids), tensor2(&r.mask));

    // Backbone hidden states, compared where the mask is 1.
    let hidden = model.backbone().forward(&input, &mask).unwrap();
    let (shape, expected) = read_tensor(&refs, "last_hidden_state");
    let expected_hidden = expected.clone();
    assert_eq!(hidden.dims(), shape.as_slice(), "{name}: hidden shape");
    let width = shape[2];
    let got: Vec<f32> = hidden.flatten_all().unwrap().to_vec1().unwrap();
    let diff = max_abs_diff(
        &masked(&got, &r.mask, width),
        &masked(&expected, &r.mask, width),
    );
    assert!(diff < TOLERANCE, "{name}: hidden states differ by {diff}");
    // The Candle-ops path (GPUs, half precision) agrees too.
    let reference = model.backbone().forward_reference(&input, &mask).unwrap();
    let got: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    let diff = max_abs_diff(
        &masked(&got, &r.mask, width),
        &masked(&expected, &r.mask, width),
    );
    assert!(
        diff < TOLERANCE,
        "{name}: Candle-path hidden states differ by {diff}"
    );

    // Q8_0 linear layers (`classifier.cpu_weights: q8_0`): the same states to within 8-bit rounding.
    let mut quantized = MultiHeadClassifier::load(&dir, &Device::Cpu, DType::F32).unwrap();
    assert!(
        quantized.quantize_q8_0().unwrap(),
        "{name}: the CPU f32 path quantizes"
    );
    let q = quantized.backbone().forward(&input, &mask).unwrap();
    let q: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
    let (q, want) = (
        masked(&q, &r.mask, width),
        masked(&expected_hidden, &r.mask, width),
    );
    // Something was quantized (these random tiny models move by up to ~0.3 per value) ...
    let diff = max_abs_diff(&q, &want);
    assert!(
        diff > TOLERANCE,
        "{name}: Q8_0 hidden states differ by only {diff}"
    );
    // ... and every token's state keeps its direction.
    for (row, (a, b)) in q.chunks(width).zip(want.chunks(width)).enumerate() {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(a) * norm(b));
        assert!(cos > 0.99, "{name}: Q8_0 token {row}: cosine {cos}");
    }

    // The long input alone (no padding) gives the same hidden states as transformers on it alone.
    let n = r.mask[r.long_index].iter().filter(|&&m| m == 1).count();
    let alone_ids = tensor2(&[r.input_ids[r.long_index][..n].to_vec()]);
    let alone_mask = tensor2(&[vec![1; n]]);
    let alone = model.backbone().forward(&alone_ids, &alone_mask).unwrap();
    let (_, expected) = read_tensor(&refs, &format!("hidden_state_alone_{}", r.long_index));
    let got: Vec<f32> = alone.flatten_all().unwrap().to_vec1().unwrap();
    let diff = max_abs_diff(&got, &expected);
    assert!(
        diff < TOLERANCE,
        "{name}: long input alone differs by {diff}"
    );

    // Heads: logits, and label names (from id2label or the vLLM SR side file).
    let heads = model.forward(&input, &mask).unwrap();
    let checkpoint =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let multi = heads.len() > 1;
    for (head, out) in model.heads().iter().zip(&heads) {
        let key = if multi {
            format!("logits.{}", head.name())
        } else {
            "logits".to_string()
        };
        let (shape, expected) = read_tensor(&refs, &key);
        assert_eq!(out.logits.dims(), shape.as_slice(), "{name}/{key}: shape");
        let got: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
        let diff = if shape.len() == 3 {
            max_abs_diff(
                &masked(&got, &r.mask, shape[2]),
                &masked(&expected, &r.mask, shape[2]),
            )
        } else {
            max_abs_diff(&got, &expected)
        };
        assert!(diff < TOLERANCE, "{name}/{key}: logits differ by {diff}");

        let id2label = if multi {
            &r.json["heads"][head.name()]["id2label"]
        } else {
            &r.json["id2label"]
        };
        for (i, label) in head.labels().iter().enumerate() {
            assert_eq!(
                id2label[i.to_string()].as_str(),
                Some(label.as_str()),
                "{name}: label {i}"
            );
        }

        // The head's tensors by their checkpoint names, and its logits as classifier(features).
        let weight = head.tensor_name("classifier.weight");
        assert!(checkpoint.contains_key(&weight), "{name}: no {weight}");
        let from_features = head
            .classifier()
            .forward(&head.features(&hidden, &mask).unwrap())
            .unwrap();
        let again: Vec<f32> = from_features.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            again, got,
            "{name}/{key}: classifier(features) is not the logits"
        );
    }
}

#[test]
fn sequence_classifier_v4_config_cls_pooling() {
    check("seq-cls");
}

#[test]
fn sequence_classifier_v5_config_mean_pooling_with_biases() {
    check("seq-cls-v5-mean");
}

#[test]
fn token_classifier() {
    check("token-cls");
}

#[test]
fn multi_head_shares_one_backbone() {
    check("multi-head");
}
