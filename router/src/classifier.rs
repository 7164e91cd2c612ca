//! The classifiers behind the signals: one or more ModernBERT backbones, each with its heads, turned
//! into [`Signals`] for a batch of texts.
//!
//! A multi-head router directory (`heads.json`: one backbone, heads named `domain`, `reasoning`,
//! `jailbreak`, `pii`) runs one backbone pass per batch for every signal. vLLM Semantic Router
//! checkpoints (one model per task, `classifier.category_model`, `classifier.pii_model`,
//! `prompt_guard`) are loaded as one backbone each, with the role the configuration gives them.
//!
//! Tokenization runs on the caller's thread ([`RouterModel::encode`]); only [`RouterModel::classify`]
//! needs the device. Long inputs are cut deliberately: the first 3/4 and the last 1/4 of the token
//! budget are kept (the classes of a request usually show in its opening and its closing question).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use switchyard_models::encoder::{HeadTask, MultiHeadClassifier};
use tokenizers::Tokenizer;

use crate::config::{normalize_label, ClassifierSources};
use crate::lexical::LexicalModel;
use crate::signals::{ClassifierOutput, PiiEntity, Signals};
use crate::RouterError;

/// What a head's output means to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRole {
    /// Domain / category (sequence head).
    Domain,
    /// Reasoning need (sequence head).
    Reasoning,
    /// Jailbreak / prompt injection (sequence head).
    Jailbreak,
    /// Personal information (token head, BIO tags).
    Pii,
}

impl HeadRole {
    /// The role a head name stands for in a multi-head directory.
    pub fn from_head_name(name: &str) -> Option<HeadRole> {
        match normalize_label(name).as_str() {
            "domain" | "category" | "intent" => Some(HeadRole::Domain),
            "reasoning" | "reasoning need" => Some(HeadRole::Reasoning),
            "jailbreak" | "prompt guard" | "security" => Some(HeadRole::Jailbreak),
            "pii" => Some(HeadRole::Pii),
            _ => None,
        }
    }
}

/// One backbone with its tokenizer and the heads the router uses.
struct Backbone {
    model: MultiHeadClassifier,
    tokenizer: Tokenizer,
    /// (head index in `model.heads()`, role).
    roles: Vec<(usize, HeadRole)>,
}

/// A text tokenized for one backbone: ids with `[CLS]`/`[SEP]`, head+tail truncated, and each token's
/// character span in the text (`(0, 0)` for special tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Character offsets per token.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each token is a special token.
    pub special: Vec<bool>,
    /// Whether each token begins a word (`false` for a word's later pieces, e.g. `##yy` in `heyy`).
    /// The token head's tags are read per word from its first piece, as the trainer labels and
    /// scores them.
    pub word_start: Vec<bool>,
}

/// One text ready for [`RouterModel::classify`]: every backbone's encoding, and the lexical model's
/// scores when the router has one.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    /// One encoding per backbone.
    pub backbones: Vec<Encoded>,
    /// [`LexicalModel::scores`] of the text, one per lexical model of the router.
    pub lexical: Vec<Vec<f32>>,
}

/// The router's classifiers.
pub struct RouterModel {
    backbones: Vec<Backbone>,
    max_tokens: usize,
    /// Lexical models and the role of the head each fuses with.
    lexical: Vec<(HeadRole, LexicalModel)>,
}

impl RouterModel {
    /// Loads a multi-head router directory; heads get their roles from their names (`domain`,
    /// `reasoning`, `jailbreak`, `pii`; a plain single-head checkpoint is a domain classifier).
    pub fn load_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        max_tokens: usize,
    ) -> Result<RouterModel, RouterError> {
        let model = MultiHeadClassifier::load(dir, device, dtype)?;
        let single = model.heads().len() == 1;
        let roles = model
            .heads()
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let role = HeadRole::from_head_name(h.name()).or_else(|| {
                    single.then_some(match h.task() {
                        HeadTask::Token => HeadRole::Pii,
                        HeadTask::Sequence(_) => HeadRole::Domain,
                    })
                });
                if role.is_none() {
                    tracing::warn!(
                        head = h.name(),
                        "router head with an unknown role is not used"
                    );
                }
                role.map(|r| (i, r))
            })
            .collect();
        let backbone = Backbone {
            tokenizer: load_tokenizer(dir)?,
            model,
            roles,
        };
        let mut router = Self::new(vec![backbone], max_tokens)?;
        for l in LexicalModel::load_all(dir)? {
            match HeadRole::from_head_name(&l.head) {
                Some(role @ (HeadRole::Domain | HeadRole::Reasoning | HeadRole::Jailbreak)) => {
                    router.lexical.push((role, l))
                }
                _ => {
                    return Err(RouterError::Classifier(format!(
                        "{}: a lexical model fuses with `{}`, which is not a sequence head",
                        dir.display(),
                        l.head
                    )))
                }
            }
        }
        Ok(router)
    }

    /// Loads what a configuration's `classifier` section names: a multi-head directory, or the classic
    /// vLLM SR per-task checkpoints. Relative paths are resolved against `base`.
    pub fn load_sources(
        sources: &ClassifierSources,
        base: &Path,
        device: &Device,
        dtype: DType,
        max_tokens: usize,
    ) -> Result<RouterModel, RouterError> {
        if let Some(dir) = &sources.model_dir {
            return Self::load_dir(&base.join(dir), device, dtype, max_tokens);
        }
        let mut backbones = Vec::new();
        for (source, role) in [
            (&sources.category_model, HeadRole::Domain),
            (&sources.jailbreak_model, HeadRole::Jailbreak),
            (&sources.pii_model, HeadRole::Pii),
        ] {
            let Some(source) = source else { continue };
            let dir = base.join(&source.model_id);
            let model = MultiHeadClassifier::load(&dir, device, dtype)?;
            let expected = if role == HeadRole::Pii {
                "token"
            } else {
                "sequence"
            };
            let ok = matches!(
                (role, model.heads()[0].task()),
                (HeadRole::Pii, HeadTask::Token)
                    | (
                        HeadRole::Domain | HeadRole::Jailbreak,
                        HeadTask::Sequence(_)
                    )
            );
            if !ok {
                return Err(RouterError::Classifier(format!(
                    "{}: expected a {expected}-classification checkpoint for the {role:?} signal",
                    dir.display()
                )));
            }
            backbones.push(Backbone {
                tokenizer: load_tokenizer(&dir)?,
                model,
                roles: vec![(0, role)],
            });
        }
        Self::new(backbones, max_tokens)
    }

    fn new(backbones: Vec<Backbone>, max_tokens: usize) -> Result<RouterModel, RouterError> {
        if backbones.iter().all(|b| b.roles.is_empty()) {
            return Err(RouterError::Classifier(
                "no classifier head with a known role (domain, reasoning, jailbreak, pii)".into(),
            ));
        }
        if max_tokens < 8 {
            return Err(RouterError::Classifier(format!(
                "max_input_tokens must be at least 8, got {max_tokens}"
            )));
        }
        let max_tokens = backbones.iter().fold(max_tokens, |m, b| {
            m.min(b.model.backbone().config().max_position_embeddings)
        });
        Ok(RouterModel {
            backbones,
            max_tokens,
            lexical: Vec::new(),
        })
    }

    /// The lexical model fused with the head of `role`, if the router directory has one.
    pub fn lexical(&self, role: HeadRole) -> Option<&LexicalModel> {
        self.lexical.iter().find(|l| l.0 == role).map(|l| &l.1)
    }

    /// Drops the lexical models (the heads alone; for evaluation).
    pub fn without_lexical(mut self) -> RouterModel {
        self.lexical.clear();
        self
    }

    /// The token budget per text.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The roles this model provides.
    pub fn roles(&self) -> Vec<HeadRole> {
        self.backbones
            .iter()
            .flat_map(|b| b.roles.iter().map(|r| r.1))
            .collect()
    }

    /// Tokenizes `text` for every backbone (no device work). Never fails on long inputs.
    pub fn encode(&self, text: &str) -> Result<EncodedText, RouterError> {
        let backbones = self
            .backbones
            .iter()
            .map(|b| {
                let enc = b
                    .tokenizer
                    .encode_char_offsets(text, true)
                    .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
                let keep = head_tail(enc.get_ids().len(), self.max_tokens);
                let words = enc.get_word_ids();
                Ok(Encoded {
                    ids: keep.clone().map(|i| enc.get_ids()[i]).collect(),
                    offsets: keep.clone().map(|i| enc.get_offsets()[i]).collect(),
                    special: keep
                        .clone()
                        .map(|i| enc.get_special_tokens_mask()[i] == 1)
                        .collect(),
                    word_start: keep
                        .map(|i| i == 0 || words[i].is_none() || words[i] != words[i - 1])
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, RouterError>>()?;
        Ok(EncodedText {
            backbones,
            lexical: self.lexical.iter().map(|l| l.1.scores(text)).collect(),
        })
    }

    /// Runs every backbone once over the batch and turns its heads' outputs into signals, one per
    /// text. `latency` of each signal is its backbone's batch time.
    pub fn classify(&self, batch: &[&EncodedText]) -> Result<Vec<Signals>, RouterError> {
        let mut out = vec![Signals::default(); batch.len()];
        if batch.is_empty() {
            return Ok(out);
        }
        for (b, backbone) in self.backbones.iter().enumerate() {
            if backbone.roles.is_empty() {
                continue;
            }
            let start = Instant::now();
            let ids: Vec<Vec<u32>> = batch.iter().map(|e| e.backbones[b].ids.clone()).collect();
            let (input, mask) = backbone.model.batch_inputs(&ids)?;
            let logits = backbone.model.forward(&input, &mask)?;
            // Pull what is needed to the host before timing, so the latency includes the device work.
            let mut host: Vec<(HeadRole, usize, HostLogits)> = Vec::new();
            for &(h, role) in &backbone.roles {
                host.push((role, h, HostLogits::from_tensor(&logits[h].logits)?));
            }
            let latency = start.elapsed();
            let heads = backbone.model.heads();
            for (role, h, values) in host {
                let labels = heads[h].labels();
                for (i, signals) in out.iter_mut().enumerate() {
                    match (role, &values) {
                        (HeadRole::Pii, HostLogits::Tokens(rows)) => {
                            signals.pii = bio_entities(&rows[i], labels, &batch[i].backbones[b]);
                            signals.pii_latency = Some(latency);
                        }
                        (_, HostLogits::Sequences(rows)) => {
                            let mut probs = softmax(&rows[i]);
                            if let Some(k) = self.lexical.iter().position(|l| l.0 == role) {
                                let (lex, scores) = (&self.lexical[k].1, &batch[i].lexical[k]);
                                probs = lex.fuse(labels, &probs, &lex.probabilities(scores));
                            }
                            let output = ClassifierOutput::from_probabilities(
                                labels.iter().cloned().zip(probs).collect(),
                                latency,
                            );
                            match role {
                                HeadRole::Domain => signals.domain = output,
                                HeadRole::Reasoning => signals.reasoning = output,
                                HeadRole::Jailbreak => signals.jailbreak = output,
                                HeadRole::Pii => unreachable!("matched above"),
                            }
                        }
                        _ => {
                            return Err(RouterError::Classifier(format!(
                                "head {} has the wrong kind for the {role:?} signal",
                                heads[h].name()
                            )))
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Logits on the host: `[B][labels]` or `[B][T][labels]`.
enum HostLogits {
    Sequences(Vec<Vec<f32>>),
    Tokens(Vec<Vec<Vec<f32>>>),
}

impl HostLogits {
    fn from_tensor(t: &Tensor) -> candle_core::Result<HostLogits> {
        let t = t.to_dtype(DType::F32)?;
        Ok(match t.rank() {
            2 => HostLogits::Sequences(t.to_vec2()?),
            _ => HostLogits::Tokens(t.to_vec3()?),
        })
    }
}

/// Indices kept from a sequence of `len` tokens within `budget`: all of them, or the first 3/4 and the
/// last 1/4 of the budget (so `[CLS]` and `[SEP]` stay).
fn head_tail(
    len: usize,
    budget: usize,
) -> std::iter::Chain<std::ops::Range<usize>, std::ops::Range<usize>> {
    if len <= budget {
        return (0..len).chain(0..0);
    }
    let head = budget * 3 / 4;
    let tail = budget - head;
    (0..head).chain(len - tail..len)
}

/// Softmax in f32 (max-subtracted).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Entities from per-token BIO logits: `B-X` opens an entity, `I-X` continues an open `X` (or opens one,
/// leniently), anything else closes it. A word's tag is its first piece's: later pieces only extend an
/// entity that the word's first piece is in, so an entity never starts or ends inside a word. Spans
/// run from the first token's start to the last token's end, in characters; the score is the mean
/// probability of the word-initial tokens' tags.
fn bio_entities(logits: &[Vec<f32>], labels: &[String], encoded: &Encoded) -> Vec<PiiEntity> {
    let mut out: Vec<PiiEntity> = Vec::new();
    let mut open: Option<(PiiEntity, f32, usize)> = None; // (entity, score sum, tokens)
    let close = |open: &mut Option<(PiiEntity, f32, usize)>, out: &mut Vec<PiiEntity>| {
        if let Some((mut e, sum, n)) = open.take() {
            e.score = sum / n as f32;
            out.push(e);
        }
    };
    for (t, row) in logits.iter().enumerate().take(encoded.ids.len()) {
        if encoded.special[t] {
            close(&mut open, &mut out);
            continue;
        }
        let (start, end) = encoded.offsets[t];
        if !encoded.word_start.get(t).copied().unwrap_or(true) {
            // A later piece of a word: part of the entity its first piece opened or continued.
            if let Some((e, _, _)) = &mut open {
                if e.end == start {
                    e.end = end;
                }
            }
            continue;
        }
        let probs = softmax(row);
        let (best, p) =
            probs.iter().enumerate().fold(
                (0, f32::MIN),
                |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
            );
        let tag = labels.get(best).map_or("O", String::as_str);
        let (prefix, ty) = match tag.split_once('-') {
            Some((pfx, ty)) if pfx == "B" || pfx == "I" => (pfx, ty),
            _ => {
                close(&mut open, &mut out);
                continue;
            }
        };
        // `I-X` continues an open `X`; so does `B-X` glued to it with no character between (an entity
        // never directly follows one of its own type, but the head sometimes restarts mid-word).
        match &mut open {
            Some((e, sum, n)) if e.entity_type == ty && (prefix == "I" || e.end == start) => {
                e.end = end;
                *sum += p;
                *n += 1;
            }
            _ => {
                close(&mut open, &mut out);
                open = Some((
                    PiiEntity {
                        entity_type: ty.to_string(),
                        start,
                        end,
                        score: 0.0,
                    },
                    p,
                    1,
                ));
            }
        }
    }
    close(&mut open, &mut out);
    out
}

fn load_tokenizer(dir: &Path) -> Result<Tokenizer, RouterError> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| RouterError::Tokenizer(format!("{}: {e}", path.display())))?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_tail_keeps_both_ends() {
        assert_eq!(head_tail(5, 8).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            head_tail(20, 8).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 18, 19]
        );
    }

    #[test]
    fn softmax_is_a_distribution() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        // Large logits do not overflow.
        assert!(softmax(&[1000.0, 0.0])[0] > 0.999);
    }

    fn one_hot(i: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| if i == j { 10.0 } else { 0.0 }).collect()
    }

    #[test]
    fn bio_tags_become_character_spans() {
        let labels: Vec<String> = [
            "O",
            "B-PERSON",
            "I-PERSON",
            "B-EMAIL_ADDRESS",
            "I-EMAIL_ADDRESS",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // "[CLS] I am Zoë Hart , bo @ x [SEP]"
        let encoded = Encoded {
            ids: vec![0; 10],
            offsets: vec![
                (0, 0),
                (0, 1),
                (2, 4),
                (5, 8),
                (9, 13),
                (13, 14),
                (15, 17),
                (17, 18),
                (18, 19),
                (0, 0),
            ],
            special: vec![
                true, false, false, false, false, false, false, false, false, true,
            ],
            word_start: vec![true; 10],
        };
        let tags = [0, 0, 0, 1, 2, 0, 3, 3, 4, 2];
        let logits: Vec<Vec<f32>> = tags.iter().map(|&t| one_hot(t, 5)).collect();
        let e = bio_entities(&logits, &labels, &encoded);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            (e[0].entity_type.as_str(), e[0].start, e[0].end),
            ("PERSON", 5, 13)
        );
        assert_eq!(
            (e[1].entity_type.as_str(), e[1].start, e[1].end),
            ("EMAIL_ADDRESS", 15, 19)
        );
        assert!(e[0].score > 0.99);
    }

    #[test]
    fn a_stray_inside_tag_opens_an_entity() {
        let labels: Vec<String> = ["O", "B-X", "I-X", "B-Y", "I-Y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let encoded = Encoded {
            ids: vec![0; 3],
            offsets: vec![(0, 1), (2, 3), (4, 5)],
            special: vec![false; 3],
            word_start: vec![true; 3],
        };
        let logits: Vec<Vec<f32>> = [2, 4, 4].iter().map(|&t| one_hot(t, 5)).collect();
        let e = bio_entities(&logits, &labels, &encoded);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].entity_type.as_str(), e[0].start, e[0].end),
            ("X", 0, 1)
        );
        assert_eq!(
            (e[1].entity_type.as_str(), e[1].start, e[1].end),
            ("Y", 2, 5)
        );
        // A `B-` glued to an open entity of its type continues it; one after a gap starts a new one.
        let encoded = Encoded {
            ids: vec![0; 3],
            offsets: vec![(0, 2), (2, 3), (4, 5)],
            special: vec![false; 3],
            word_start: vec![true; 3],
        };
        let logits: Vec<Vec<f32>> = [1, 1, 1].iter().map(|&t| one_hot(t, 5)).collect();
        let e = bio_entities(&logits, &labels, &encoded);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!((e[0].start, e[0].end, e[1].start, e[1].end), (0, 3, 4, 5));
    }

    #[test]
    fn a_word_takes_its_first_pieces_tag() {
        let labels: Vec<String> = ["O", "B-PERSON", "I-PERSON"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // "heyy Zoëx": he ##yy Zoë ##x.
        let encoded = Encoded {
            ids: vec![0; 4],
            offsets: vec![(0, 2), (2, 4), (5, 8), (8, 9)],
            special: vec![false; 4],
            word_start: vec![true, false, true, false],
        };
        // A later piece tagged as a name does not make a fragment entity ("yy"); a name's later
        // piece tagged O still belongs to it.
        let logits: Vec<Vec<f32>> = [0, 1, 1, 0].iter().map(|&t| one_hot(t, 3)).collect();
        let e = bio_entities(&logits, &labels, &encoded);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].start, e[0].end), (5, 9));
    }
}
