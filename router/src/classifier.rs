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
//! The guards read the rest: [`RouterModel::guard_windows`] splits a text into windows that fit the
//! budget, and [`RouterModel::encode_guard`] marks each for the jailbreak and PII heads only.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use switchyard_models::encoder::{mapping_file_labels, HeadTask, MultiHeadClassifier};
use tokenizers::Tokenizer;

use crate::config::{normalize_label, ClassifierSources};
use crate::embedding::EmbeddingSignal;
use crate::lexical::LexicalModel;
use crate::signals::{ClassifierOutput, EmbeddingUse, Signals};
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
/// character span in the text (`(0, 0)` for special tokens). Empty for a backbone a guard window
/// does not run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Character offsets per token.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each token is a special token.
    pub special: Vec<bool>,
    /// Whether each token begins a word (`false` for a word's later pieces, e.g. `##yy` in `heyy`).
    /// The token head's tags are read per word (see [`crate::pii`]).
    pub word_start: Vec<bool>,
    /// Where a text too long for the budget was cut (its head kept, then its tail): the index of
    /// the first tail token. A word or an entity never spans the cut.
    pub cut: Option<usize>,
}

/// One text ready for [`RouterModel::classify`]: every backbone's encoding, the lexical model's
/// scores and the embedding encoder's token ids when the router has them.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    /// One encoding per backbone.
    pub backbones: Vec<Encoded>,
    /// [`LexicalModel::text_scores`] of the text, one per lexical model the router uses (a joint
    /// model's embedding share is added by [`RouterModel::classify`]).
    pub lexical: Vec<Vec<f32>>,
    /// The embedding signal's token ids, if the router has one.
    pub embedding: Option<Vec<u32>>,
    /// The text-only lexical model's [`LexicalModel::text_scores`] for the head the embedding signal
    /// fuses with, when the router may skip the encoder (see
    /// [`RouterModel::skip_embedding_when_confident`]) and that model is not already in `lexical`.
    pub fast_lexical: Option<Vec<f32>>,
    /// A guard window ([`RouterModel::encode_guard`]): only the jailbreak and PII signals are
    /// computed for it.
    pub guard_only: bool,
}

/// The router's classifiers.
pub struct RouterModel {
    backbones: Vec<Backbone>,
    max_tokens: usize,
    /// Lexical models and the role of the head each fuses with.
    lexical: Vec<(HeadRole, LexicalModel)>,
    /// The embedding signal and the role of the head it fuses with (after the lexical model).
    embedding: Option<(HeadRole, EmbeddingSignal)>,
    /// Top probability of the fast signals (head + text-only lexical model) at or above which a
    /// text's embedding is not computed.
    skip_embedding_above: Option<f32>,
    /// Batches up to this size run the sentence encoder beside the backbone (see
    /// [`RouterModel::embed_alongside_up_to`]).
    embed_alongside_max_batch: usize,
    /// Recent share of texts that skipped the encoder (an exponential average, f32 bits).
    recent_skip_share: AtomicU32,
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
            let mut model = MultiHeadClassifier::load(&dir, device, dtype)?;
            if let Some(file) = &source.mapping_path {
                let file = base.join(file);
                let labels = mapping_file_labels(&file)?;
                model
                    .relabel(labels)
                    .map_err(|e| RouterError::Classifier(format!("{}: {e}", file.display())))?;
            }
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
            embedding: None,
            skip_embedding_above: None,
            embed_alongside_max_batch: EMBED_ALONGSIDE_MAX_BATCH,
            recent_skip_share: AtomicU32::new(0f32.to_bits()),
        })
    }

    /// Runs every backbone's linear layers in Q8_0 on the CPU (`classifier.cpu_weights: q8_0`; see
    /// `MultiHeadClassifier::quantize_q8_0`). A backbone on another device or dtype runs as loaded,
    /// which is logged.
    pub fn quantize_backbones_q8_0(mut self) -> Result<RouterModel, RouterError> {
        for b in &mut self.backbones {
            if !b.model.quantize_q8_0()? {
                tracing::info!(
                    "classifier.cpu_weights: q8_0 applies to the CPU's f32 path only; this backbone runs as loaded"
                );
            }
        }
        Ok(self)
    }

    /// Adds an embedding signal, fused with the sequence head its `head` names (after that head's
    /// lexical model, if any).
    pub fn with_embedding(mut self, signal: EmbeddingSignal) -> Result<RouterModel, RouterError> {
        let role = HeadRole::from_head_name(&signal.head.head)
            .filter(|r| *r != HeadRole::Pii && self.roles().contains(r))
            .ok_or_else(|| {
                RouterError::Classifier(format!(
                    "the embedding signal fuses with `{}`, which is not a sequence head of this router",
                    signal.head.head
                ))
            })?;
        for (_, lexical) in &self.lexical {
            if let Some(e) = lexical.embedding_features() {
                let h = &signal.head;
                let runs = (signal.embedder.dim(), h.max_tokens, h.quantized, h.layers);
                if (e.dim, e.max_tokens, e.quantized, e.layers) != runs {
                    return Err(RouterError::Classifier(format!(
                        "the `{}` lexical model reads {}-wide embeddings of {} tokens (Q8_0 {}, layers {:?}) \
                         but the embedding signal's encoder gives {}-wide ones of {} tokens (Q8_0 {}, layers {:?}): \
                         retrain one of them (`switchyard train-lexical`, `switchyard train-embedding`)",
                        lexical.head, e.dim, e.max_tokens, e.quantized, e.layers,
                        runs.0, runs.1, runs.2, runs.3
                    )));
                }
            }
        }
        self.embedding = Some((role, signal));
        Ok(self)
    }

    /// Skips the embedding signal for a text when the fast signals of its head (the head fused with
    /// the text-only lexical model, as a router without the signal runs) already give the top label a
    /// probability of at least `threshold`: that text's signal is the fast one, and the sentence
    /// encoder runs only on the texts the fast signals are unsure of. `None` runs it on every text.
    pub fn skip_embedding_when_confident(mut self, threshold: Option<f32>) -> RouterModel {
        self.skip_embedding_above = threshold;
        self
    }

    /// Batches of up to `max_batch` texts run the sentence encoder at the same time as the backbone
    /// (default [`EMBED_ALONGSIDE_MAX_BATCH`]; 0: never), while few recent texts skipped it (see
    /// [`MAX_SKIP_SHARE_ALONGSIDE`]). Decisions are the same either way.
    pub fn embed_alongside_up_to(mut self, max_batch: usize) -> RouterModel {
        self.embed_alongside_max_batch = max_batch;
        self
    }

    /// Whether a batch of `len` texts would run the sentence encoder beside the backbone now.
    pub fn embeds_alongside(&self, len: usize) -> bool {
        self.embedding.is_some()
            && len <= self.embed_alongside_max_batch
            && (self.embedding_skip_threshold().is_none()
                || self.recent_skip_share() < MAX_SKIP_SHARE_ALONGSIDE)
    }

    /// Share of recent texts (an exponential average over about the last 32) whose fast signals
    /// were confident enough to skip the sentence encoder.
    pub fn recent_skip_share(&self) -> f32 {
        f32::from_bits(self.recent_skip_share.load(Ordering::Relaxed))
    }

    fn note_skips(&self, confident: &[Option<Vec<f32>>]) {
        let mut share = self.recent_skip_share();
        for c in confident {
            share += (f32::from(u8::from(c.is_some())) - share) / 32.0;
        }
        self.recent_skip_share
            .store(share.to_bits(), Ordering::Relaxed);
    }

    /// The threshold set by [`RouterModel::skip_embedding_when_confident`].
    pub fn embedding_skip_threshold(&self) -> Option<f32> {
        self.skip_embedding_above
            .filter(|_| self.embedding.is_some())
    }

    /// The lexical model of the embedding's head a text skipping the embedding is scored with
    /// (index into `self.lexical`) and, when it is not one of the `active` models, that it needs its
    /// own scores.
    fn fast_lexical(&self, active: &[usize]) -> Option<(usize, bool)> {
        self.embedding_skip_threshold()?;
        let (role, _) = self.embedding.as_ref()?;
        let k = self.lexical_index(*role, false)?;
        Some((k, !active.contains(&k)))
    }

    /// Whether a lexical model in use reads sentence embeddings that this router does not compute (no
    /// embedding signal, and no text-only model for its head): it then scores on its text features
    /// alone.
    pub fn lexical_lacks_embedding(&self) -> bool {
        self.embedding.is_none()
            && self
                .active_lexical()
                .iter()
                .any(|&k| self.lexical[k].1.embedding_features().is_some())
    }

    /// The lexical models in use, as indices into `self.lexical`, one per head: a head may have a
    /// text-only model and a joint one (text + sentence embedding); the joint one serves when the
    /// router has the embedding signal, the text-only one otherwise.
    fn active_lexical(&self) -> Vec<usize> {
        let mut active: Vec<usize> = Vec::new();
        for (k, (role, _)) in self.lexical.iter().enumerate() {
            if active.iter().any(|&a| self.lexical[a].0 == *role) {
                continue;
            }
            let pick = self
                .lexical_index(*role, self.embedding.is_some())
                .unwrap_or(k);
            active.push(pick);
        }
        active
    }

    /// The lexical model of `role` to use with (`joint`) or without the embedding signal: the
    /// preferred kind when there is one, else the other.
    fn lexical_index(&self, role: HeadRole, joint: bool) -> Option<usize> {
        let of_role = || self.lexical.iter().enumerate().filter(|l| l.1 .0 == role);
        of_role()
            .find(|l| l.1 .1.embedding_features().is_some() == joint)
            .or_else(|| of_role().next())
            .map(|l| l.0)
    }

    /// The embedding signal, if the router has one.
    pub fn embedding(&self) -> Option<&EmbeddingSignal> {
        self.embedding.as_ref().map(|e| &e.1)
    }

    /// The lexical model fused with the head of `role` as this router runs it (the joint one when it
    /// has the embedding signal), if the router directory has one.
    pub fn lexical(&self, role: HeadRole) -> Option<&LexicalModel> {
        self.lexical_for(role, self.embedding.is_some())
    }

    /// The lexical model of `role` a router with (`with_embedding`) or without the embedding signal
    /// runs, if the router directory has one.
    pub fn lexical_for(&self, role: HeadRole, with_embedding: bool) -> Option<&LexicalModel> {
        self.lexical_index(role, with_embedding)
            .map(|k| &self.lexical[k].1)
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
        let start = Instant::now();
        let backbones = self
            .backbones
            .iter()
            .map(|b| encode_for(&b.tokenizer, text, self.max_tokens))
            .collect::<Result<Vec<_>, RouterError>>()?;
        let tokenized = Instant::now();
        let active = self.active_lexical();
        let lexical: Vec<Vec<f32>> = active
            .iter()
            .map(|&k| self.lexical[k].1.text_scores(text))
            .collect();
        let fast_lexical = self
            .fast_lexical(&active)
            .filter(|&(_, own)| own)
            .map(|(k, _)| self.lexical[k].1.text_scores(text));
        let scored = Instant::now();
        let embedding = self
            .embedding
            .as_ref()
            .map(|e| e.1.embedder.encode(text))
            .transpose()?;
        tracing::debug!(
            tokenize_us = (tokenized - start).as_micros() + scored.elapsed().as_micros(),
            lexical_us = (scored - tokenized).as_micros(),
            "router encode"
        );
        Ok(EncodedText {
            backbones,
            lexical,
            embedding,
            fast_lexical,
            guard_only: false,
        })
    }

    /// Whether any backbone has a jailbreak or PII head: the signals that guard windows compute.
    pub fn has_guards(&self) -> bool {
        self.guard_backbones().next().is_some()
    }

    /// The characters of a text encoded by [`RouterModel::encode`] that a guard backbone did not
    /// read: the middle its head + tail cut left out, over every guard backbone (their tokenizers
    /// may cut in different places; `None`: they read all of it).
    pub fn unread(&self, encoded: &EncodedText) -> Option<std::ops::Range<usize>> {
        self.guard_backbones()
            .filter_map(|b| {
                let e = encoded.backbones.get(b)?;
                let cut = e.cut.filter(|&c| c > 0 && c < e.offsets.len())?;
                Some(e.offsets[cut - 1].1..e.offsets[cut].0)
            })
            .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
    }

    /// The backbones with a jailbreak or PII head.
    fn guard_backbones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.backbones.len()).filter(|&b| self.backbones[b].roles.iter().any(|r| is_guard(r.1)))
    }

    /// Character ranges of `text` that together cover all of it, each short enough for the guard
    /// backbones' token budget, neighbours overlapping by [`GUARD_WINDOW_OVERLAP`] tokens (so an
    /// entity or a phrase at one window's edge is whole in the next). One range when it fits.
    pub fn guard_windows(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, RouterError> {
        // Placed by the guard tokenizer that makes the most tokens of the text, so that a window
        // fits every guard backbone's budget (within the slack, where tokenizers differ locally).
        let mut enc = None;
        for b in self.guard_backbones() {
            let e = self.backbones[b]
                .tokenizer
                .encode_char_offsets(text, false)
                .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
            if enc
                .as_ref()
                .is_none_or(|k: &tokenizers::Encoding| e.len() > k.len())
            {
                enc = Some(e);
            }
        }
        let Some(enc) = enc else {
            return Ok(Vec::new());
        };
        let offsets = enc.get_offsets();
        let chars = text.chars().count();
        // Room for `[CLS]`/`[SEP]` and for a window tokenizing a little longer on its own.
        let size = self
            .max_tokens
            .saturating_sub(2 + GUARD_WINDOW_SLACK)
            .max(1);
        if offsets.len() <= size {
            #[allow(clippy::single_range_in_vec_init)]
            return Ok(vec![0..chars]);
        }
        let stride = size
            .saturating_sub(GUARD_WINDOW_OVERLAP.min(size / 2))
            .max(1);
        let mut windows = Vec::new();
        let mut first = 0;
        loop {
            let last = (first + size).min(offsets.len()) - 1;
            let start = if first == 0 { 0 } else { offsets[first].0 };
            let end = if last + 1 == offsets.len() {
                chars
            } else {
                offsets[last].1
            };
            windows.push(start..end);
            if last + 1 == offsets.len() {
                return Ok(windows);
            }
            first += stride;
        }
    }

    /// [`RouterModel::encode`] for a guard window: the guard backbones' encodings and the
    /// jailbreak lexical model's scores only (no sentence embedding).
    pub fn encode_guard(&self, text: &str) -> Result<EncodedText, RouterError> {
        let backbones = self
            .backbones
            .iter()
            .map(|b| {
                if b.roles.iter().any(|r| is_guard(r.1)) {
                    encode_for(&b.tokenizer, text, self.max_tokens)
                } else {
                    Ok(Encoded::default())
                }
            })
            .collect::<Result<Vec<_>, RouterError>>()?;
        let lexical = self
            .active_lexical()
            .iter()
            .map(|&k| match self.lexical[k].0 {
                HeadRole::Jailbreak => self.lexical[k].1.text_scores(text),
                _ => Vec::new(),
            })
            .collect();
        Ok(EncodedText {
            backbones,
            lexical,
            embedding: None,
            fast_lexical: None,
            guard_only: true,
        })
    }

    /// Runs every backbone once over the batch and turns its heads' outputs into signals, one per
    /// text. `latency` of each signal is its backbone's batch time (the domain signal adds the
    /// embedding encoder's time for the texts it ran on).
    pub fn classify(&self, batch: &[&EncodedText]) -> Result<Vec<Signals>, RouterError> {
        if batch.iter().any(|t| t.guard_only) {
            // Guard windows get a pass of their own, without the routing signals.
            let (guards, routed): (Vec<usize>, Vec<usize>) =
                (0..batch.len()).partition(|&i| batch[i].guard_only);
            let mut out = vec![Signals::default(); batch.len()];
            let pick = |idx: &[usize]| idx.iter().map(|&i| batch[i]).collect::<Vec<_>>();
            for (i, s) in routed.iter().zip(self.classify_routed(&pick(&routed))?) {
                out[*i] = s;
            }
            for (i, s) in guards.iter().zip(self.classify_guards(&pick(&guards))?) {
                out[*i] = s;
            }
            return Ok(out);
        }
        self.classify_routed(batch)
    }

    /// The jailbreak and PII signals of guard windows: the guard backbones' passes, the jailbreak
    /// head fused with its lexical model (no sentence embedding, no routing signals).
    fn classify_guards(&self, batch: &[&EncodedText]) -> Result<Vec<Signals>, RouterError> {
        let mut out = vec![Signals::default(); batch.len()];
        if batch.is_empty() {
            return Ok(out);
        }
        let active = self.active_lexical();
        for b in self.guard_backbones() {
            let pass = self.run_backbone(b, batch)?;
            self.read_pass(&pass, batch, None, &active, is_guard, &mut out)?;
        }
        Ok(out)
    }

    /// Every signal of routed texts: the backbone passes, the sentence encoder where needed.
    fn classify_routed(&self, batch: &[&EncodedText]) -> Result<Vec<Signals>, RouterError> {
        let mut out = vec![Signals::default(); batch.len()];
        if batch.is_empty() {
            return Ok(out);
        }
        let active = self.active_lexical();
        let (passes, confident, alongside) = match self.embedding.as_ref() {
            Some((_, signal)) if self.embeds_alongside(batch.len()) => {
                self.backbones_with_embedding(batch, &active, signal)?
            }
            _ => {
                let passes = self.run_backbones(batch)?;
                let confident = self.confident_fast(batch, &passes, &active);
                (passes, confident, None)
            }
        };
        let embedded = self.embed(batch, &passes, confident, alongside)?;
        for pass in &passes {
            self.read_pass(pass, batch, embedded.as_ref(), &active, |_| true, &mut out)?;
        }
        Ok(out)
    }

    /// Turns one backbone pass into signals in `out` (one per text of `batch`), for the heads whose
    /// role `wanted` takes: PII entities from the token head, the sequence heads' probabilities
    /// fused with what follows them ([`Self::fuse_signals`]; with `embedded`, the embedding
    /// signal's too).
    fn read_pass(
        &self,
        pass: &BackbonePass,
        batch: &[&EncodedText],
        embedded: Option<&Embedded>,
        active: &[usize],
        wanted: impl Fn(HeadRole) -> bool,
        out: &mut [Signals],
    ) -> Result<(), RouterError> {
        let b = pass.backbone;
        let heads = self.backbones[b].model.heads();
        for (role, h, values) in pass.logits.iter().filter(|l| wanted(l.0)) {
            let labels = heads[*h].labels();
            for (i, signals) in out.iter_mut().enumerate() {
                match (role, values) {
                    (HeadRole::Pii, HostLogits::Tokens(rows)) => {
                        signals.pii =
                            crate::pii::bio_entities(&rows[i], labels, &batch[i].backbones[b]);
                        signals.pii_latency = Some(pass.latency);
                    }
                    (_, HostLogits::Sequences(rows)) => {
                        let text_embedding = embedded.map(|e| &e.texts[i]);
                        let (probs, used) = self.fuse_signals(
                            *role,
                            labels,
                            softmax(&rows[i]),
                            batch[i],
                            text_embedding,
                            active,
                        );
                        let mut latency = pass.latency;
                        if used == EmbeddingUse::Fused {
                            latency += embedded.map_or(Duration::ZERO, |e| e.took);
                        }
                        if used != EmbeddingUse::Off {
                            signals.embedding = used;
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
                            heads[*h].name()
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// A sequence head's probabilities for one text fused with the signals that follow it: its
    /// lexical model (reading the text's sentence embedding, when one was computed) and, for the
    /// embedding signal's head, the embedding head; the fast signals instead when the text skipped
    /// the encoder. Also says whether the embedding signal took part in this head.
    fn fuse_signals(
        &self,
        role: HeadRole,
        labels: &[String],
        head_probs: Vec<f32>,
        text: &EncodedText,
        text_embedding: Option<&TextEmbedding>,
        active: &[usize],
    ) -> (Vec<f32>, EmbeddingUse) {
        let signal = self
            .embedding
            .as_ref()
            .filter(|e| e.0 == role)
            .map(|e| &e.1);
        let computed = match text_embedding {
            Some(TextEmbedding::Skipped { fast }) if signal.is_some() => {
                return (fast.clone(), EmbeddingUse::Skipped)
            }
            Some(TextEmbedding::Computed { embedding, probs }) => Some((embedding, probs)),
            _ => None,
        };
        let mut probs = head_probs;
        if let Some(a) = active.iter().position(|&k| self.lexical[k].0 == role) {
            let lex = &self.lexical[active[a]].1;
            let mut scores = text.lexical[a].clone();
            if let Some((embedding, _)) = computed {
                lex.add_embedding(&mut scores, embedding);
            }
            probs = lex.fuse(labels, &probs, &lex.probabilities(&scores));
        }
        match (signal, computed) {
            (Some(signal), Some((_, embedding_probs))) => {
                let h = &signal.head;
                let fused = fuse_by_label(labels, &probs, &h.labels, embedding_probs, h.weight);
                (fused, EmbeddingUse::Fused)
            }
            _ => (probs, EmbeddingUse::Off),
        }
    }

    /// Every backbone that has a head in use, once over the batch.
    fn run_backbones(&self, batch: &[&EncodedText]) -> Result<Vec<BackbonePass>, RouterError> {
        let mut passes = Vec::with_capacity(self.backbones.len());
        for (b, backbone) in self.backbones.iter().enumerate() {
            if !backbone.roles.is_empty() {
                passes.push(self.run_backbone(b, batch)?);
            }
        }
        Ok(passes)
    }

    /// The backbone passes and, at the same time on the other CPU thread, the sentence embeddings
    /// of every text of the batch (see [`EMBED_ALONGSIDE_MAX_BATCH`]). When the passes show that
    /// every text skips the encoder, the encoder stops at its next layer and gives `None`. Also
    /// returns [`confident_fast`](Self::confident_fast) of the passes.
    fn backbones_with_embedding(
        &self,
        batch: &[&EncodedText],
        active: &[usize],
        signal: &EmbeddingSignal,
    ) -> Result<(Vec<BackbonePass>, Confident, Option<Alongside>), RouterError> {
        let ids = embedding_ids(batch.iter().copied())?;
        let stop = AtomicBool::new(false);
        let (passes, embeddings) = switchyard_models::executor::join(
            || {
                let passes = self.run_backbones(batch)?;
                let confident = self.confident_fast(batch, &passes, active);
                if confident.iter().all(Option::is_some) {
                    stop.store(true, Ordering::Relaxed);
                }
                Ok::<_, RouterError>((passes, confident))
            },
            || {
                let start = Instant::now();
                let embeddings = signal.embedder.embed_unless(&ids, &stop)?;
                Ok::<_, RouterError>(embeddings.map(|all| Alongside {
                    all,
                    took: start.elapsed(),
                }))
            },
        );
        let (passes, confident) = passes?;
        let embeddings = embeddings?;
        tracing::debug!(
            backbone_us = passes.iter().map(|p| p.latency.as_micros()).sum::<u128>(),
            embedding_us = embeddings.as_ref().map(|e| e.took.as_micros()),
            "router passes beside the sentence encoder"
        );
        Ok((passes, confident, embeddings))
    }

    /// One backbone's forward over the batch, its heads' logits pulled to the host (so the latency
    /// includes the device work).
    fn run_backbone(&self, b: usize, batch: &[&EncodedText]) -> Result<BackbonePass, RouterError> {
        let backbone = &self.backbones[b];
        let start = Instant::now();
        let ids: Vec<Vec<u32>> = batch.iter().map(|e| e.backbones[b].ids.clone()).collect();
        let (input, mask) = backbone.model.batch_inputs(&ids)?;
        let logits = backbone.model.forward(&input, &mask)?;
        let mut host = Vec::with_capacity(backbone.roles.len());
        for &(h, role) in &backbone.roles {
            host.push((role, h, HostLogits::from_tensor(&logits[h].logits)?));
        }
        Ok(BackbonePass {
            backbone: b,
            latency: start.elapsed(),
            logits: host,
        })
    }

    /// The fast signals of a sequence head for one text: its probabilities fused with the text-only
    /// lexical model of the embedding's head (the head alone if there is none).
    fn fast_probs(
        &self,
        labels: &[String],
        head_probs: &[f32],
        text: &EncodedText,
        active: &[usize],
    ) -> Vec<f32> {
        let Some((k, own)) = self.fast_lexical(active) else {
            return head_probs.to_vec();
        };
        let scores = if own {
            text.fast_lexical.as_ref()
        } else {
            active
                .iter()
                .position(|&a| a == k)
                .and_then(|a| text.lexical.get(a))
        };
        match scores {
            Some(scores) => {
                let lex = &self.lexical[k].1;
                lex.fuse(labels, head_probs, &lex.probabilities(scores))
            }
            None => head_probs.to_vec(),
        }
    }
}

/// One backbone's pass over a batch: which backbone, its time, and each used head's logits.
struct BackbonePass {
    backbone: usize,
    latency: Duration,
    /// (role, head index, logits).
    logits: Vec<(HeadRole, usize, HostLogits)>,
}

/// The embedding signal's result for one text.
enum TextEmbedding {
    /// The sentence embedding and the embedding head's probabilities.
    Computed {
        embedding: Vec<f32>,
        probs: Vec<f32>,
    },
    /// The fast signals were confident enough: their distribution, which the head keeps.
    Skipped { fast: Vec<f32> },
}

/// Batches of up to this many texts run the sentence encoder at the same time as the backbone,
/// each on one CPU thread, instead of after it with each matrix product split across the threads:
/// products of a few hundred rows still split poorly. The encoder then runs before the backbone's
/// heads say whether a text may skip it; it stops early when every text may, and the embeddings of
/// the texts that skip are dropped, so decisions are the same either way. Measured on a 2-core
/// Intel Xeon (AVX-512, `bench router`, two runs each): classification p50 at batch 8 26.6 / 29.6 ms
/// beside vs 35.0 / 31.8 ms after, at batch 32 103 / 118 vs 126 / 129 ms, and 16 concurrent
/// callers with micro-batching 280 / 279 vs 232 / 228 routes/s; so every micro-batch the router
/// forms runs beside (a limit of 1 was measured only at batch 1, on an AVX2 Zen 3).
pub const EMBED_ALONGSIDE_MAX_BATCH: usize = 64;

/// Above this recent share of texts skipping the encoder, it runs after the backbone again: a text
/// that skips pays for a backbone pass on one thread (plus the encoder layer under way when the
/// backbone finishes) instead of two. Measured on the AVX2 machine (`bench router`, batch 1, paired
/// `route()` calls): on chat-style requests (6 % skip) beside saves 0.3-0.9 ms at the median, on
/// MMLU-Pro questions (62 % skip) it cost 2.6 ms; break-even is near a fifth.
pub const MAX_SKIP_SHARE_ALONGSIDE: f32 = 0.2;

/// Per text, the fast signals' distribution when they are confident enough to skip the sentence
/// encoder (`None`: the text needs it).
type Confident = Vec<Option<Vec<f32>>>;

/// Sentence embeddings of every text of a batch, computed beside the backbone pass.
struct Alongside {
    /// One per text.
    all: Vec<Vec<f32>>,
    /// The encoder's time for the batch.
    took: Duration,
}

/// The embedding signal's token ids of `texts`.
fn embedding_ids<'a>(
    texts: impl Iterator<Item = &'a EncodedText>,
) -> Result<Vec<&'a [u32]>, RouterError> {
    texts
        .map(|e| {
            e.embedding.as_deref().ok_or_else(|| {
                RouterError::Classifier("a text was encoded without the embedding signal".into())
            })
        })
        .collect()
}

/// The embedding signal's results for a batch.
struct Embedded {
    /// One per text.
    texts: Vec<TextEmbedding>,
    /// The encoder's time for the batch (zero if every text skipped it).
    took: Duration,
}

impl RouterModel {
    /// Per text, the fast signals' distribution of the embedding's head when they are confident
    /// enough to skip the sentence encoder (`None`: the text needs it).
    fn confident_fast(
        &self,
        batch: &[&EncodedText],
        passes: &[BackbonePass],
        active: &[usize],
    ) -> Confident {
        let mut confident: Confident = vec![None; batch.len()];
        let Some((role, _)) = &self.embedding else {
            return confident;
        };
        let head = passes.iter().find_map(|p| {
            p.logits
                .iter()
                .find(|l| l.0 == *role)
                .map(|l| (p.backbone, l.1, &l.2))
        });
        if let (Some(threshold), Some((b, h, HostLogits::Sequences(rows)))) =
            (self.embedding_skip_threshold(), head)
        {
            let labels = self.backbones[b].model.heads()[h].labels();
            for ((slot, row), text) in confident.iter_mut().zip(rows).zip(batch) {
                let fast = self.fast_probs(labels, &softmax(row), text, active);
                if fast.iter().copied().fold(0.0, f32::max) >= threshold {
                    *slot = Some(fast);
                }
            }
        }
        confident
    }

    /// The sentence embeddings and the embedding head's probabilities of the texts that need them
    /// (all of them unless [`RouterModel::skip_embedding_when_confident`] is set), in one encoder
    /// batch, or taken from the embeddings computed `alongside` the backbone.
    fn embed(
        &self,
        batch: &[&EncodedText],
        passes: &[BackbonePass],
        confident: Confident,
        alongside: Option<Alongside>,
    ) -> Result<Option<Embedded>, RouterError> {
        let Some((role, signal)) = &self.embedding else {
            return Ok(None);
        };
        if self.embedding_skip_threshold().is_some() {
            self.note_skips(&confident);
        }
        let needed = batch
            .iter()
            .zip(&confident)
            .filter(|(_, fast)| fast.is_none())
            .map(|(e, _)| *e);
        let (embeddings, took) = match alongside {
            Some(Alongside { all, took }) => {
                // The encoder ran beside the backbone: it added only the time it took beyond it.
                let backbone = passes
                    .iter()
                    .find(|p| p.logits.iter().any(|l| l.0 == *role))
                    .map_or(Duration::ZERO, |p| p.latency);
                let kept = all
                    .into_iter()
                    .zip(&confident)
                    .filter(|(_, fast)| fast.is_none())
                    .map(|(e, _)| e)
                    .collect::<Vec<_>>();
                (kept, took.saturating_sub(backbone))
            }
            None => {
                let ids = embedding_ids(needed.clone())?;
                let start = Instant::now();
                if ids.is_empty() {
                    (Vec::new(), Duration::ZERO)
                } else {
                    (signal.embedder.embed(&ids)?, start.elapsed())
                }
            }
        };
        let wanted = needed.count();
        let took = if wanted == 0 { Duration::ZERO } else { took };
        let got = embeddings.len();
        let shortage = || {
            RouterError::Classifier(format!(
                "the sentence encoder gave {got} embeddings for {wanted} texts"
            ))
        };
        let mut computed = embeddings.into_iter();
        let mut texts = Vec::with_capacity(batch.len());
        for fast in confident {
            texts.push(match fast {
                Some(fast) => TextEmbedding::Skipped { fast },
                None => {
                    let embedding = computed.next().ok_or_else(shortage)?;
                    TextEmbedding::Computed {
                        probs: signal.head.probabilities(&embedding),
                        embedding,
                    }
                }
            });
        }
        Ok(Some(Embedded { texts, took }))
    }
}

/// `(1 − weight) · head + weight · other`, matched by label name: labels `other` lacks keep the head's
/// share only.
pub fn fuse_by_label(
    head_labels: &[String],
    head_probs: &[f32],
    labels: &[String],
    probs: &[f32],
    weight: f32,
) -> Vec<f32> {
    head_labels
        .iter()
        .zip(head_probs)
        .map(|(label, p)| {
            let other = labels
                .iter()
                .position(|l| l == label)
                .and_then(|i| probs.get(i))
                .copied()
                .unwrap_or(0.0);
            (1.0 - weight) * p + weight * other
        })
        .collect()
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

/// Tokens of a guard window beyond the budget's `[CLS]`/`[SEP]` left free, for a window whose text
/// tokenizes a little longer on its own than inside the whole text.
const GUARD_WINDOW_SLACK: usize = 8;

/// Tokens that neighbouring guard windows share.
pub const GUARD_WINDOW_OVERLAP: usize = 16;

/// The roles guard windows compute.
fn is_guard(role: HeadRole) -> bool {
    matches!(role, HeadRole::Jailbreak | HeadRole::Pii)
}

/// `text` tokenized for one backbone, head + tail cut to `budget` tokens.
fn encode_for(tokenizer: &Tokenizer, text: &str, budget: usize) -> Result<Encoded, RouterError> {
    let enc = tokenizer
        .encode_char_offsets(text, true)
        .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
    let keep = head_tail(enc.get_ids().len(), budget);
    let words = enc.get_word_ids();
    let cut = head_tail_cut(enc.get_ids().len(), budget);
    // The first tail token's predecessor in the text is gone: it starts a word.
    let tail_start = cut.map(|(_, in_text)| in_text);
    Ok(Encoded {
        ids: keep.clone().map(|i| enc.get_ids()[i]).collect(),
        offsets: keep.clone().map(|i| enc.get_offsets()[i]).collect(),
        special: keep
            .clone()
            .map(|i| enc.get_special_tokens_mask()[i] == 1)
            .collect(),
        word_start: keep
            .map(|i| {
                i == 0 || Some(i) == tail_start || words[i].is_none() || words[i] != words[i - 1]
            })
            .collect(),
        cut: cut.map(|(kept, _)| kept),
    })
}

/// Indices kept from a sequence of `len` tokens within `budget`: all of them, or the first 3/4 and the
/// last 1/4 of the budget (so `[CLS]` and `[SEP]` stay).
fn head_tail(
    len: usize,
    budget: usize,
) -> std::iter::Chain<std::ops::Range<usize>, std::ops::Range<usize>> {
    match head_tail_cut(len, budget) {
        None => (0..len).chain(0..0),
        Some((head, tail_start)) => (0..head).chain(tail_start..len),
    }
}

/// Where [`head_tail`] cuts a text of `len` tokens: the first tail token's index among the kept
/// tokens and in the text (`None`: it fits).
fn head_tail_cut(len: usize, budget: usize) -> Option<(usize, usize)> {
    let head = budget * 3 / 4;
    (len > budget).then(|| (head, len - (budget - head)))
}

/// Softmax in f32 (max-subtracted).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
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
        assert_eq!(head_tail_cut(5, 8), None);
        assert_eq!(head_tail_cut(20, 8), Some((6, 18)));
    }

    #[test]
    fn softmax_is_a_distribution() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        // Large logits do not overflow.
        assert!(softmax(&[1000.0, 0.0])[0] > 0.999);
    }
}
