//! `switchyard train-lexical`: fits a lexical signal (TF-IDF word 1–2-grams + one-vs-rest linear SVM,
//! the design's bag-of-words floor; optionally character n-grams beside the words and the embedding
//! signal's sentence embedding as more features of the same SVM) on the router's training split of one
//! head (domain or jailbreak),
//! chooses how to fuse it with that head (`weight`, `scale`) on the router's own validation split,
//! reports every variant on the held-out sets, and writes it beside the router (`lexical.json` for the
//! domain head, `lexical-jailbreak.json` for the jailbreak head, each with its `.safetensors`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use switchyard_router::classifier::softmax;
use switchyard_router::embedding::{Embedder, EmbeddingHead};
use switchyard_router::lexical::{EmbeddingFeatures, LexicalModel, Sparse, TextFeatures};
use switchyard_router::{HeadRole, RouterModel, DEFAULT_MAX_INPUT_TOKENS};

use super::baseline::LinearSvm;
use super::data;
use super::dilution::{diluted_validation, with_diluted_training, DilutionOptions};
use super::eval::{argmax, binary_prf};

/// Options of `train-lexical`.
#[derive(Args, Debug)]
pub struct LexicalArgs {
    /// The data folders.
    #[command(flatten)]
    pub sets: data::DataArgs,
    /// The router directory to fuse with (and write into).
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// The head to fuse with: `domain` or `jailbreak`.
    #[arg(long, default_value = "domain")]
    pub head: String,
    /// Seed of the SVM's coordinate order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Character n-grams within words (scikit-learn's `char_wb`) beside the word features, as
    /// `MIN-MAX` characters, e.g. `2-5`.
    #[arg(long, value_parser = parse_range)]
    pub char_ngrams: Option<(usize, usize)>,
    /// Also read the embedding signal's sentence embedding (the encoder as the router directory's
    /// `embedding.json` sets it up, from the model cache), times this factor, as features of the same
    /// SVM: a joint lexical + embedding model. The router then computes the embedding before the
    /// lexical score.
    #[arg(long)]
    pub embedding_features: Option<f32>,
    /// Keep the embeddings `--embedding-features` computes in this folder and reuse them when the
    /// texts and the encoder set-up are the same (for trying recipes; a few minutes saved per run).
    #[arg(long)]
    pub embedding_cache: Option<PathBuf>,
    /// Only write the head's train / validation splits with the shipped router's probabilities into
    /// this folder (see `train::dump`), then stop: nothing is fitted or written beside the router.
    #[arg(long)]
    pub dump_splits: Option<PathBuf>,
    /// The jailbreak head's block threshold (the routing config's `jailbreak.threshold`; 0.7 in
    /// router/config/default.yaml): the fusion weight and scale are chosen for F1 at this threshold,
    /// the decision the server makes. The domain head ignores it.
    #[arg(long, default_value_t = 0.7)]
    pub block_threshold: f64,
    /// Jailbreak head: diluted attacks (an attack piece among benign text, `train::dilution`) per
    /// training attack added to the training split, and as many padded benign texts (0: none).
    /// The diluted validation set is measured either way.
    #[arg(long, default_value_t = 0)]
    pub dilution: usize,
    /// The diluted training texts' padding, as a multiple of the attack piece, `MIN-MAX`.
    #[arg(long, value_parser = super::dilution::parse_ratio_range, default_value = "0.5-1.5")]
    pub padding_ratio: (f64, f64),
    /// How the domain head's fusion weight and scale are chosen on the validation split
    #[arg(long, value_enum, default_value_t = FusionCriterion::Accuracy)]
    pub fusion_criterion: FusionCriterion,
}

/// The name of the jailbreak head's diluted validation set in the metrics.
const DILUTED_VALIDATION: &str =
    "diluted validation (attacks among benign text, benign padded alike)";

/// What the domain head's fusion is chosen for (the jailbreak head's: F1 at `--block-threshold`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionCriterion {
    /// Accuracy of the fused argmax (the shipped router's lexical models were chosen so).
    Accuracy,
    /// Log-loss of the fused distribution, which the routing policy reads (confidence threshold,
    /// entropy rule, skipping the sentence encoder): by accuracy alone, a near-uniform lexical
    /// share (a small scale) can win by a few rows and leave most requests under the confidence
    /// threshold, as it did for the distilled backbones (model card, "Distillation").
    LogLoss,
}

impl FusionCriterion {
    /// The name `--fusion-criterion` takes, as the metrics file records it.
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// `MIN-MAX` with `1 <= MIN <= MAX`.
pub(super) fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}`: expected MIN-MAX, e.g. 2-5"))?;
    let parse = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("`{s}`: {e}"));
    let (a, b) = (parse(a)?, parse(b)?);
    if a == 0 || a > b {
        return Err(format!("`{s}`: expected 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

/// The embedding features' encoder, as the router directory's embedding signal runs it.
pub(super) struct FeatureEncoder {
    embedder: Embedder,
    features: EmbeddingFeatures,
    cache: Option<PathBuf>,
}

impl FeatureEncoder {
    pub(super) fn load(router_dir: &std::path::Path, scale: f32) -> Result<FeatureEncoder> {
        let head = EmbeddingHead::load(router_dir).with_context(|| {
            format!(
                "--embedding-features reads the encoder set-up of {}/embedding.json (train-embedding)",
                router_dir.display()
            )
        })?;
        let dir = switchyard_server::fetch::MINILM.ensure(&switchyard_server::fetch::cache_dir())?;
        let embedder = Embedder::load(&dir, head.max_tokens, head.quantized, head.layers)?;
        let features = EmbeddingFeatures {
            scale,
            dim: embedder.dim(),
            encoder: head.encoder.clone(),
            max_tokens: head.max_tokens,
            quantized: head.quantized,
            layers: head.layers,
        };
        Ok(FeatureEncoder {
            embedder,
            features,
            cache: None,
        })
    }

    /// Embeddings of texts, from the cache folder when it has them.
    fn embed(&self, texts: &[&str], what: &str) -> Result<Vec<Vec<f32>>> {
        use std::hash::{Hash, Hasher};
        let Some(dir) = &self.cache else {
            return super::embedding::embed_all(&self.embedder, texts, what);
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let f = &self.features;
        (
            &f.encoder,
            f.dim,
            f.max_tokens,
            f.quantized,
            f.layers,
            texts,
        )
            .hash(&mut h);
        let path = dir.join(format!("embeddings-{:016x}.safetensors", h.finish()));
        if path.exists() {
            let t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)?;
            let e = t
                .get("embeddings")
                .context("a cached file without `embeddings`")?;
            eprintln!("{what}: embeddings from {}", path.display());
            return Ok(e.to_vec2()?);
        }
        let out = super::embedding::embed_all(&self.embedder, texts, what)?;
        std::fs::create_dir_all(dir)?;
        let flat: Vec<f32> = out.iter().flatten().copied().collect();
        let t = candle_core::Tensor::from_vec(flat, (out.len(), f.dim), &candle_core::Device::Cpu)?;
        candle_core::safetensors::save(&[("embeddings", t)].into_iter().collect(), &path)?;
        Ok(out)
    }
}

/// Per text, the scores of every class.
type Scores = Vec<Vec<f32>>;

/// Lexical scores of texts: with their embeddings when the model reads them (`full`), and from the
/// text features alone (what a router without the embedding signal computes).
pub(super) fn score_texts(
    lexical: &LexicalModel,
    encoder: Option<&FeatureEncoder>,
    texts: &[&str],
    what: &str,
) -> Result<(Scores, Scores)> {
    let text_only: Vec<Vec<f32>> = texts.iter().map(|t| lexical.text_scores(t)).collect();
    let full = match encoder {
        Some(enc) => enc
            .embed(texts, what)?
            .iter()
            .zip(&text_only)
            .map(|(e, s)| {
                let mut s = s.clone();
                lexical.add_embedding(&mut s, e);
                s
            })
            .collect(),
        None => text_only.clone(),
    };
    Ok((full, text_only))
}

/// (gold label, router probabilities, lexical scores) of one text.
type Row<'a> = (usize, &'a Vec<f32>, &'a Vec<f32>);

/// The validation rows left when near-copies of training texts are taken out.
const NOVEL_VALIDATION: &str =
    "validation split without near-copies of training texts (80 % of word 4-grams in one)";

/// The router's probabilities for the head of `role` (fused with its lexical model if it has one),
/// in `labels` order.
pub(super) fn router_probs(
    model: &RouterModel,
    role: HeadRole,
    labels: &[String],
    texts: &[&str],
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let encoded = chunk
            .iter()
            .map(|t| model.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = encoded.iter().collect();
        for s in model.classify(&refs)? {
            let o = match role {
                HeadRole::Domain => s.domain,
                HeadRole::Jailbreak => s.jailbreak,
                _ => None,
            }
            .with_context(|| format!("the router has no {role:?} head"))?;
            let probs: BTreeMap<&str, f32> = o
                .probabilities
                .iter()
                .map(|(l, p)| (l.as_str(), *p))
                .collect();
            out.push(
                labels
                    .iter()
                    .map(|l| probs.get(l.as_str()).copied().unwrap_or(0.0))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The fused prediction rule with weight `w` and scale `s`.
fn fused(w: f32, s: f32) -> impl Fn(&[f32], &[f32]) -> usize {
    move |r: &[f32], l: &[f32]| {
        let scaled: Vec<f32> = l.iter().map(|x| x * s).collect();
        let p = softmax(&scaled);
        argmax(
            &r.iter()
                .zip(&p)
                .map(|(a, b)| (1.0 - w) * a + w * b)
                .collect::<Vec<_>>(),
        )
    }
}

/// The fused rule as a block decision: label 1 iff the fused probability of label 1 is at least
/// `threshold` (what the routing config's `jailbreak.threshold` does). `w = 0` is the head alone,
/// `w = 1` the lexical model alone.
fn fused_at(w: f32, s: f32, threshold: f32) -> impl Fn(&[f32], &[f32]) -> usize {
    move |r: &[f32], l: &[f32]| {
        let scaled: Vec<f32> = l.iter().map(|x| x * s).collect();
        let p = softmax(&scaled);
        let p1 =
            (1.0 - w) * r.get(1).copied().unwrap_or(0.0) + w * p.get(1).copied().unwrap_or(0.0);
        usize::from(p1 >= threshold)
    }
}

/// The measure a head is tuned and reported on: accuracy (domain) or F1 of label 1 (jailbreak).
fn measure(role: HeadRole, rows: &[Row], predict: impl Fn(&[f32], &[f32]) -> usize) -> f64 {
    let pred: Vec<usize> = rows.iter().map(|(_, r, l)| predict(r, l)).collect();
    let gold: Vec<usize> = rows.iter().map(|r| r.0).collect();
    match role {
        HeadRole::Jailbreak => binary_prf(&pred, &gold).2,
        _ => {
            pred.iter().zip(&gold).filter(|(p, g)| p == g).count() as f64 / rows.len().max(1) as f64
        }
    }
}

/// Mean negative log-likelihood of the gold labels under the fused distribution.
fn log_loss(w: f32, s: f32, rows: &[Row]) -> f64 {
    let total: f64 = rows
        .iter()
        .map(|(gold, r, l)| {
            let scaled: Vec<f32> = l.iter().map(|x| x * s).collect();
            let p = (1.0 - w) * r[*gold] + w * softmax(&scaled)[*gold];
            -f64::from(p.max(1e-12)).ln()
        })
        .sum();
    total / rows.len().max(1) as f64
}

/// The fusion `(weight, scale, measure)` chosen on `val`, with the head's measure there.
/// - Jailbreak: the best F1 of blocking at `block_threshold`, the decision the server makes.
/// - Domain: the best accuracy of the fused argmax, or the lowest log-loss of the fused
///   distribution (`FusionCriterion`).
///
/// Weights 0.1..1 and scales 0.5..8 are tried; the head alone (`w = 0`) stands unless one is better.
fn choose_fusion(
    role: HeadRole,
    val: &[Row],
    block_threshold: f32,
    domain_criterion: FusionCriterion,
) -> (f32, f32, f64) {
    let measured = |w: f32, s: f32| match role {
        HeadRole::Jailbreak => measure(role, val, fused_at(w, s, block_threshold)),
        _ => measure(role, val, fused(w, s)),
    };
    let criterion = |w: f32, s: f32| match (role, domain_criterion) {
        (HeadRole::Jailbreak, _) | (_, FusionCriterion::Accuracy) => measured(w, s),
        (_, FusionCriterion::LogLoss) => -log_loss(w, s, val),
    };
    let mut best = (0.0f32, 1.0f32, criterion(0.0, 1.0));
    for wi in 1..=10 {
        for s in [0.5f32, 1.0, 2.0, 4.0, 8.0] {
            let w = wi as f32 / 10.0;
            let c = criterion(w, s);
            if c > best.2 + 1e-9 {
                best = (w, s, c);
            }
        }
    }
    let (w, s, _) = best;
    (w, s, measured(w, s))
}

/// Share of rows predicted as label 1 (for sets that are all benign).
fn flagged(rows: &[Row], predict: impl Fn(&[f32], &[f32]) -> usize) -> f64 {
    rows.iter().filter(|(_, r, l)| predict(r, l) == 1).count() as f64 / rows.len().max(1) as f64
}

/// Runs `train-lexical`.
pub fn run(args: LexicalArgs) -> Result<()> {
    let role = match args.head.as_str() {
        "domain" => HeadRole::Domain,
        "jailbreak" => HeadRole::Jailbreak,
        other => bail!("--head {other}: expected domain or jailbreak"),
    };
    if !(args.block_threshold > 0.0 && args.block_threshold < 1.0) {
        bail!(
            "--block-threshold {}: expected a probability strictly between 0 and 1",
            args.block_threshold
        );
    }
    let ds = args.sets.load()?;
    let (task, labels): (&data::SeqTask, Vec<String>) = match role {
        HeadRole::Domain => (
            &ds.domain,
            data::DOMAINS.iter().map(|s| s.to_string()).collect(),
        ),
        _ => (
            &ds.jailbreak,
            data::JAILBREAK.iter().map(|s| s.to_string()).collect(),
        ),
    };
    if let Some(dir) = &args.dump_splits {
        return super::dump::dump_splits(&ds, role, &args.head, &labels, &args.router_dir, dir);
    }
    let encoder = args
        .embedding_features
        .map(|scale| FeatureEncoder::load(&args.router_dir, scale))
        .transpose()?
        .map(|e| FeatureEncoder {
            cache: args.embedding_cache.clone(),
            ..e
        });
    // The jailbreak head's diluted sets, read with the router's own tokenizer.
    let diluted = if role == HeadRole::Jailbreak {
        let path = args.router_dir.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let options = DilutionOptions {
            per_attack: args.dilution,
            seed: args.seed,
            padding_ratio: args.padding_ratio,
            ..DilutionOptions::default()
        };
        Some((
            with_diluted_training(&tok, task, &options)?,
            diluted_validation(&tok, task, &ds.chat_val, &options)?,
        ))
    } else if args.dilution > 0 {
        bail!("--dilution applies to the jailbreak head only");
    } else {
        None
    };
    let train_examples: &[data::Example] = diluted.as_ref().map_or(&task.train, |d| &d.0);
    let train_texts: Vec<&str> = train_examples.iter().map(|e| e.text.as_str()).collect();
    // Vocabulary and idf from the training split as it is: a diluted copy repeats its attack's
    // words, so fitted on the copies too, a word of one attack would pass `min_df = 2`.
    let split_texts: Vec<&str> = task.train.iter().map(|e| e.text.as_str()).collect();
    let features = TextFeatures::fit(&split_texts, args.char_ngrams);
    let text_dim = features.dim();
    let mut x: Vec<Sparse> = train_texts.iter().map(|t| features.transform(t)).collect();
    let mut dim = text_dim;
    if let Some(enc) = &encoder {
        let scale = enc.features.scale;
        for (v, e) in x
            .iter_mut()
            .zip(enc.embed(&train_texts, "the training split")?)
        {
            v.extend(
                e.iter()
                    .enumerate()
                    .map(|(j, value)| ((text_dim + j) as u32, scale * value)),
            );
        }
        dim += enc.features.dim;
    }
    eprintln!(
        "fitting a linear SVM on {} {} texts ({} diluted), {dim} features",
        train_examples.len(),
        args.head,
        train_examples.len() - task.train.len()
    );
    let fit_start = std::time::Instant::now();
    let y: Vec<usize> = train_examples.iter().map(|e| e.label).collect();
    let svm = LinearSvm::train(&x, &y, labels.len(), dim, args.seed);
    let fit_secs = fit_start.elapsed().as_secs_f64();
    drop(x);
    let mut lexical = LexicalModel::joint(
        &args.head,
        labels.clone(),
        features,
        encoder.as_ref().map(|e| e.features.clone()),
        svm.into_weights(),
        0.0,
        1.0,
    )
    // Measured as saved (8-bit weights), so the metrics are the shipped files'.
    .as_stored();

    let router = RouterModel::load_dir(
        &args.router_dir,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        DEFAULT_MAX_INPUT_TOKENS,
    )?
    .without_lexical();
    let val_texts: Vec<&str> = task.val.iter().map(|e| e.text.as_str()).collect();
    // The chat-style set: domain labels for the domain head; all benign for the jailbreak head.
    let chat_rows: Vec<(&str, usize)> = ds
        .chat_val
        .iter()
        .filter_map(|r| match role {
            HeadRole::Domain => r.domain.map(|d| (r.text.as_str(), d)),
            _ => Some((r.text.as_str(), 0)),
        })
        .collect();
    let chat_texts: Vec<&str> = chat_rows.iter().map(|r| r.0).collect();
    eprintln!(
        "scoring {} validation and {} chat-style texts",
        val_texts.len(),
        chat_texts.len()
    );
    let val_router = router_probs(&router, role, &labels, &val_texts)?;
    let chat_router = router_probs(&router, role, &labels, &chat_texts)?;
    let enc = encoder.as_ref();
    let (val_lex, val_text_lex) = score_texts(&lexical, enc, &val_texts, "the validation split")?;
    let (chat_lex, chat_text_lex) = score_texts(&lexical, enc, &chat_texts, "validation.jsonl")?;
    let val: Vec<Row> = task
        .val
        .iter()
        .zip(val_router.iter().zip(&val_lex))
        .map(|(e, (r, l))| (e.label, r, l))
        .collect();
    let chat_eval: Vec<Row> = chat_rows
        .iter()
        .zip(chat_router.iter().zip(&chat_lex))
        .map(|(c, (r, l))| (c.1, r, l))
        .collect();
    // The same rows scored as a router without the embedding signal scores them.
    let val_text: Vec<Row> = val
        .iter()
        .zip(&val_text_lex)
        .map(|(r, l)| (r.0, r.1, l))
        .collect();
    let chat_text: Vec<Row> = chat_eval
        .iter()
        .zip(&chat_text_lex)
        .map(|(r, l)| (r.0, r.1, l))
        .collect();

    // The diluted validation set (jailbreak head): scored, never used to choose the fusion.
    let diluted_texts: Vec<&str> = diluted
        .as_ref()
        .map(|d| d.1.iter().map(|e| e.text.as_str()).collect())
        .unwrap_or_default();
    let diluted_router = router_probs(&router, role, &labels, &diluted_texts)?;
    let diluted_lex = score_texts(&lexical, enc, &diluted_texts, "diluted validation")?.0;
    let diluted_rows: Vec<Row> = diluted
        .as_ref()
        .map(|d| {
            d.1.iter()
                .zip(diluted_router.iter().zip(&diluted_lex))
                .map(|(e, (r, l))| (e.label, r, l))
                .collect()
        })
        .unwrap_or_default();

    // Choose weight and scale on the router's own validation split only.
    let t = args.block_threshold as f32;
    let best = choose_fusion(role, &val, t, args.fusion_criterion);
    lexical.weight = best.0;
    lexical.scale = best.1;

    let sources: Vec<&str> = task.val.iter().map(|e| e.source).collect();
    fn subset<'a>(rows: &[Row<'a>], sources: &[&str], srcs: &[&str]) -> Vec<Row<'a>> {
        rows.iter()
            .zip(sources)
            .filter(|(_, s)| srcs.contains(s))
            .map(|(r, _)| *r)
            .collect()
    }
    let what = if role == HeadRole::Domain {
        "accuracy"
    } else {
        "F1"
    };
    // (name, rows, the same rows without the embedding's share).
    let mut groups: Vec<(&str, Vec<Row>, Vec<Row>)> =
        vec![("validation split (all)", val.clone(), val_text.clone())];
    if role == HeadRole::Domain {
        for (name, srcs) in [
            ("MMLU-Pro questions", &["mmlu_pro"][..]),
            ("exam questions (MMLU-Pro + MMLU)", &["mmlu_pro", "mmlu"]),
            ("chat-style, own split", &["chat_style"]),
        ] {
            groups.push((
                name,
                subset(&val, &sources, srcs),
                subset(&val_text, &sources, srcs),
            ));
        }
        groups.push((
            "chat-style validation.jsonl",
            chat_eval.clone(),
            chat_text.clone(),
        ));
    }
    let joint = lexical.embedding_features().is_some();
    let mut table = format!(
        "| {} {what} on | n | router head | {} | fused |{}\n|---|---|---|---|---|{}\n",
        args.head,
        if joint {
            "joint SVM (text + embedding)"
        } else {
            "TF-IDF + SVM"
        },
        if joint {
            " fused, without the embedding share (text features only) |"
        } else {
            ""
        },
        if joint { "---|" } else { "" },
    );
    let mut metrics = serde_json::Map::new();
    let mut row =
        |table: &mut String, name: &str, n: usize, r: f64, l: f64, f: f64, t: Option<f64>| {
            let extra = t.map_or(String::new(), |t| format!(" {t:.3} |"));
            table.push_str(&format!(
                "| {name} | {n} | {r:.3} | {l:.3} | {f:.3} |{extra}\n"
            ));
            let mut m = json!({"n": n, "router": r, "lexical": l, "fused": f});
            if let Some(t) = t {
                m["fused_text_features_only"] = json!(t);
            }
            metrics.insert(name.to_string(), m);
        };
    for (name, rows, text_rows) in &groups {
        row(
            &mut table,
            name,
            rows.len(),
            measure(role, rows, |r, _| argmax(r)),
            measure(role, rows, |_, l| argmax(l)),
            measure(role, rows, fused(best.0, best.1)),
            joint.then(|| measure(role, text_rows, fused(best.0, best.1))),
        );
    }
    if role == HeadRole::Jailbreak {
        let benign: Vec<Row> = val.iter().filter(|r| r.0 == 0).copied().collect();
        // The held-out benign set (benign_chat/heldout.jsonl), by kind.
        let kind_texts = |kind: &str| -> Vec<&str> {
            ds.benign_heldout
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.text.as_str())
                .collect()
        };
        let held_chat = kind_texts("chat");
        let held_scary = kind_texts("safe_but_scary");
        let hc_router = router_probs(&router, role, &labels, &held_chat)?;
        let hs_router = router_probs(&router, role, &labels, &held_scary)?;
        let hc_lex = score_texts(&lexical, enc, &held_chat, "held-out chat")?.0;
        let hs_lex = score_texts(&lexical, enc, &held_scary, "safe-but-scary")?.0;
        let hc: Vec<Row> = hc_router
            .iter()
            .zip(&hc_lex)
            .map(|(r, l)| (0, r, l))
            .collect();
        let hs: Vec<Row> = hs_router
            .iter()
            .zip(&hs_lex)
            .map(|(r, l)| (0, r, l))
            .collect();
        for (name, rows) in [
            ("benign validation texts flagged (share)", &benign),
            (
                "chat-style validation.jsonl flagged (share, all benign)",
                &chat_eval,
            ),
            ("held-out short chat messages flagged (share)", &hc),
            ("held-out safe-but-scary prompts flagged (share)", &hs),
        ] {
            row(
                &mut table,
                name,
                rows.len(),
                flagged(rows, |r, _| argmax(r)),
                flagged(rows, |_, l| argmax(l)),
                flagged(rows, fused(best.0, best.1)),
                None,
            );
        }
        // Validation attacks that are near-copies of a training text (most of their word 4-grams in
        // one of them: DAN variants, a code fence added) measure memory more than detection; the
        // split keeps them (exact-text deduplication), this row leaves them out.
        let near = super::data::near_copies(&val_texts, &split_texts, 4, 0.8);
        let novel: Vec<Row> = val
            .iter()
            .zip(&near)
            .filter(|(_, near)| !**near)
            .map(|(r, _)| *r)
            .collect();
        eprintln!(
            "{} validation texts ({} attacks) are near-copies of a training text",
            near.iter().filter(|n| **n).count(),
            val.iter()
                .zip(&near)
                .filter(|(r, n)| **n && r.0 == 1)
                .count()
        );
        // The same at the block threshold the fusion was chosen for.
        for (name, rows) in [
            ("validation split", &val),
            (NOVEL_VALIDATION, &novel),
            (DILUTED_VALIDATION, &diluted_rows),
        ] {
            row(
                &mut table,
                &format!("F1 at p(jailbreak) >= {t}, {name}"),
                rows.len(),
                measure(role, rows, fused_at(0.0, best.1, t)),
                measure(role, rows, fused_at(1.0, best.1, t)),
                measure(role, rows, fused_at(best.0, best.1, t)),
                None,
            );
        }
        let diluted_benign: Vec<Row> = diluted_rows.iter().filter(|r| r.0 == 0).copied().collect();
        let diluted_attacks: Vec<Row> = diluted_rows.iter().filter(|r| r.0 == 1).copied().collect();
        for (name, rows) in [
            ("diluted attacks blocked (recall)", &diluted_attacks),
            ("padded benign texts blocked", &diluted_benign),
            ("benign validation texts blocked", &benign),
            ("chat-style validation.jsonl blocked", &chat_eval),
            ("held-out short chat messages blocked", &hc),
            ("held-out safe-but-scary prompts blocked", &hs),
        ] {
            row(
                &mut table,
                &format!("{name} at p >= {t} (share)"),
                rows.len(),
                flagged(rows, fused_at(0.0, best.1, t)),
                flagged(rows, fused_at(1.0, best.1, t)),
                flagged(rows, fused_at(best.0, best.1, t)),
                None,
            );
        }
    }
    println!(
        "fusion chosen on the validation split: weight {} scale {}\n\n{table}",
        best.0, best.1
    );
    lexical.save(&args.router_dir)?;
    let stem = lexical.stem();
    std::fs::write(
        args.router_dir.join(format!("{stem}_metrics.json")),
        serde_json::to_string_pretty(&json!({
            "head": args.head, "weight": best.0, "scale": best.1, "features": lexical.features().dim(),
            "char_ngrams": args.char_ngrams, "embedding_features": lexical.embedding_features(),
            "fit_seconds": fit_secs,
            "block_threshold": (role == HeadRole::Jailbreak).then_some(args.block_threshold),
            "fusion_criterion": (role == HeadRole::Domain).then_some(args.fusion_criterion.name()),
            "train_texts": train_examples.len(), "diluted_train_texts": train_examples.len() - task.train.len(),
            "dilution": args.dilution, "measure": what, "results": metrics,
            "command": format!(
                "switchyard train-lexical --head {} --data ../shared/data --router-dir router/models/default{}{}{}{}{}",
                args.head,
                if args.dilution > 0 {
                    format!(
                        " --dilution {} --padding-ratio {}-{}",
                        args.dilution, args.padding_ratio.0, args.padding_ratio.1
                    )
                } else {
                    String::new()
                },
                args.char_ngrams.map_or(String::new(), |(a, b)| format!(" --char-ngrams {a}-{b}")),
                args.embedding_features.map_or(String::new(), |a| format!(" --embedding-features {a}")),
                if role == HeadRole::Jailbreak { format!(" --block-threshold {t}") } else { String::new() },
                if role == HeadRole::Domain && args.fusion_criterion == FusionCriterion::LogLoss {
                    " --fusion-criterion log-loss"
                } else {
                    ""
                },
            ),
        }))?,
    )?;
    eprintln!(
        "wrote {}/{stem}.json, .safetensors, _metrics.json",
        args.router_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jailbreak rows whose head puts p(jailbreak) at 0.6 for attacks and 0.4 for benign texts (right
    /// at 0.5, blocking nothing at 0.7), while the lexical scores separate them strongly.
    fn rows() -> Vec<(usize, Vec<f32>, Vec<f32>)> {
        (0..20)
            .map(|i| {
                let attack = i % 2 == 0;
                let p = if attack { 0.6 } else { 0.4 };
                let z = if attack { 2.0 } else { -2.0 };
                (usize::from(attack), vec![1.0 - p, p], vec![0.0, z])
            })
            .collect()
    }

    #[test]
    fn the_metrics_record_the_criterion_as_the_flag_spells_it() {
        for criterion in [FusionCriterion::Accuracy, FusionCriterion::LogLoss] {
            let parsed = <FusionCriterion as clap::ValueEnum>::from_str(&criterion.name(), false);
            assert_eq!(parsed, Ok(criterion));
        }
        assert_eq!(FusionCriterion::LogLoss.name(), "log-loss");
    }

    #[test]
    fn fused_at_blends_head_and_lexical_probabilities_against_the_threshold() {
        let (head, lex) = (vec![0.4f32, 0.6], vec![0.0f32, 2.0]);
        assert_eq!(fused_at(0.0, 1.0, 0.5)(&head, &lex), 1);
        assert_eq!(fused_at(0.0, 1.0, 0.7)(&head, &lex), 0);
        // softmax([0, 2]) puts 0.88 on label 1.
        assert_eq!(fused_at(1.0, 1.0, 0.7)(&head, &lex), 1);
        assert_eq!(fused_at(1.0, 1.0, 0.9)(&head, &lex), 0);
    }

    #[test]
    fn the_jailbreak_fusion_is_chosen_for_f1_at_the_block_threshold() {
        let owned = rows();
        let val: Vec<Row> = owned.iter().map(|(g, r, l)| (*g, r, l)).collect();
        // At 0.5 the head alone is already perfect: it stands.
        let (w, _, f1) = choose_fusion(HeadRole::Jailbreak, &val, 0.5, FusionCriterion::Accuracy);
        assert_eq!((w, f1), (0.0, 1.0));
        // At 0.7 the head blocks nothing (F1 0); the lexical share makes it perfect again.
        assert_eq!(
            measure(HeadRole::Jailbreak, &val, fused_at(0.0, 1.0, 0.7)),
            0.0
        );
        let (w, s, f1) = choose_fusion(HeadRole::Jailbreak, &val, 0.7, FusionCriterion::Accuracy);
        assert!(w > 0.0, "w {w} s {s}");
        assert_eq!(f1, 1.0);
        assert_eq!(measure(HeadRole::Jailbreak, &val, fused_at(w, s, 0.7)), 1.0);
    }

    #[test]
    fn by_log_loss_the_domain_fusion_is_the_sharpest_right_one() {
        // Both signals are right on every row, the head with little confidence: every fusion has
        // accuracy 1, and the sharpest lexical share gives the gold label the most probability.
        let owned: Vec<(usize, Vec<f32>, Vec<f32>)> = (0..12)
            .map(|i| {
                let gold = i % 3;
                let mut head = vec![0.3f32; 3];
                head[gold] = 0.4;
                let mut lex = vec![-1.0f32; 3];
                lex[gold] = 1.0;
                (gold, head, lex)
            })
            .collect();
        let val: Vec<Row> = owned.iter().map(|(g, r, l)| (*g, r, l)).collect();
        let (w, s, acc) = choose_fusion(HeadRole::Domain, &val, 0.7, FusionCriterion::LogLoss);
        assert_eq!((w, s, acc), (1.0, 8.0, 1.0));
        // By accuracy every fusion ties with the head alone, which stands.
        let by_accuracy = choose_fusion(HeadRole::Domain, &val, 0.7, FusionCriterion::Accuracy);
        assert_eq!(by_accuracy, (0.0, 1.0, 1.0));
        assert!(log_loss(w, s, &val) < log_loss(1.0, 0.5, &val));
        assert!(log_loss(w, s, &val) < log_loss(0.0, 1.0, &val));
    }

    #[test]
    fn a_lexical_model_that_is_right_outweighs_a_wrong_head() {
        // The head gets every row wrong, the lexical model every row right.
        let owned: Vec<(usize, Vec<f32>, Vec<f32>)> = (0..10)
            .map(|i| {
                let gold = i % 3;
                let mut head = vec![0.2f32; 3];
                head[(gold + 1) % 3] = 0.6;
                let mut lex = vec![-1.0f32; 3];
                lex[gold] = 1.0;
                (gold, head, lex)
            })
            .collect();
        let val: Vec<Row> = owned.iter().map(|(g, r, l)| (*g, r, l)).collect();
        for criterion in [FusionCriterion::Accuracy, FusionCriterion::LogLoss] {
            let (w, _, acc) = choose_fusion(HeadRole::Domain, &val, 0.7, criterion);
            assert!(w > 0.0);
            assert_eq!(acc, 1.0);
        }
    }
}
