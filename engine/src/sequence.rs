//! One request inside the worker: its tokens, cache blocks and output pipeline
//! (sampling → detokenizing → thinking split → stop strings → events).

use crate::detokenize::Detokenizer;
use crate::grammar::{GrammarConstraint, PendingCall};
use crate::request::{DeltaKind, Event, FinishReason, TokenLogprob, Usage};
use crate::sampling::Sampler;
use crate::stop::{StopMatcher, StopOutcome};
use crate::thinking::ThinkingSplitter;
use std::time::Instant;
use switchyard_models::decoder::{BlockTable, LogitRows};
use switchyard_models::text::TextTokenizer;

/// Per-request state owned by the worker.
#[derive(Debug)]
pub(crate) struct Sequence {
    pub(crate) events: flume::Sender<Event>,
    pub(crate) tokens: Vec<u32>,
    pub(crate) prompt_len: usize,
    /// Positions already written to the KV cache.
    pub(crate) computed: usize,
    /// Prompt positions found in the cache when the sequence was first admitted.
    pub(crate) cached_tokens: Option<usize>,
    /// Whether admission may start from cached prefix blocks ([`crate::GenerationParams::use_prefix_cache`]).
    pub(crate) use_prefix_cache: bool,
    /// Steps in a row that left this prefilling sequence out ([`crate::schedule`]).
    pub(crate) passed_over: u32,
    pub(crate) blocks: BlockTable,
    pub(crate) sampler: Sampler,
    pub(crate) detok: Detokenizer,
    pub(crate) splitter: ThinkingSplitter,
    pub(crate) stop: StopMatcher,
    /// Most new tokens this sequence may produce.
    pub(crate) max_new: usize,
    /// Ids that end generation: the request's `stop_token_ids`, then the model's end-of-sequence
    /// ids (unless `ignore_eos`).
    pub(crate) stop_ids: Vec<u32>,
    /// How many of [`Self::stop_ids`] are the request's own: those end a thinking section too,
    /// where an end-of-sequence id closes the section instead.
    pub(crate) requested_stops: usize,
    /// Thinking tokens allowed before the end marker is forced.
    pub(crate) budget: Option<usize>,
    /// Tokens of the end-of-thinking marker, forced when the budget runs out.
    pub(crate) forced_end: Vec<u32>,
    pub(crate) reasoning_tokens: usize,
    /// Alternatives per [`Event::Logprob`]; `None`: no log-probabilities.
    pub(crate) logprobs: Option<usize>,
    /// Alternatives per [`Event::PromptLogprob`]; `None`: the prompt is not scored.
    pub(crate) prompt_logprobs: Option<usize>,
    /// The next prompt position whose token's log-probability is to be sent (from 1: the first
    /// token has nothing before it). A recomputed prompt (after preemption) sends nothing twice.
    pub(crate) prompt_scored: usize,
    /// What the answer must be (`None`: any text).
    pub(crate) constraint: Option<GrammarConstraint>,
    /// With tools left to the model's choice: the constraint that becomes [`Self::constraint`]
    /// once the answer opens a call block.
    pub(crate) pending_call: Option<PendingCall>,
    pub(crate) submitted: Instant,
    pub(crate) first_token: Option<Instant>,
    pub(crate) finished: Option<FinishReason>,
    /// The closing event, held back until the worker has counted the step's tokens, so that a
    /// client that reads the engine's statistics after its answer sees its own tokens in them.
    pub(crate) held_finish: Option<Event>,
}

impl Sequence {
    /// New tokens generated so far (forced ones included).
    pub(crate) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether the client has gone away.
    pub(crate) fn cancelled(&self) -> bool {
        self.events.is_disconnected()
    }

    /// Which rows of a step's chunk `start..start + len` this sequence needs logits for: every
    /// row while its prompt is scored, else the last one once the chunk reaches the end.
    pub(crate) fn logit_rows(&self, start: usize, len: usize) -> LogitRows {
        if self.prompt_logprobs.is_some() && start + 1 < self.prompt_len {
            LogitRows::All
        } else if start + len == self.tokens.len() {
            LogitRows::Last
        } else {
            LogitRows::None
        }
    }

    /// Sends the log-probabilities of the prompt tokens that the rows of positions
    /// `start..start + rows.len() / vocab` predict (each row, the token after it).
    pub(crate) fn score_prompt(&mut self, start: usize, rows: &[f32], vocab: usize) {
        let Some(top) = self.prompt_logprobs else {
            return;
        };
        for (r, logits) in rows.chunks_exact(vocab).enumerate() {
            let next = start + r + 1;
            if next < self.prompt_scored || next >= self.prompt_len {
                continue;
            }
            let id = self.tokens[next];
            let (logprob, top) = crate::sampling::log_probs(logits, id, top);
            self.send(Event::PromptLogprob(TokenLogprob { id, logprob, top }));
            self.prompt_scored = next + 1;
        }
    }

    /// Takes the next token(s) given this step's logits for the sequence's last position.
    pub(crate) fn advance(&mut self, tokenizer: &TextTokenizer, logits: &mut [f32]) {
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        if self.generated() >= self.max_new {
            // Nothing to generate (a prompt scored with `max_tokens: 0`).
            return self.finish(tokenizer, FinishReason::Length);
        }
        let over_budget =
            self.splitter.in_thinking() && self.budget.is_some_and(|b| self.reasoning_tokens >= b);
        if over_budget {
            self.close_thinking(tokenizer);
            if self.finished.is_some() {
                return;
            }
        } else {
            // Log-probabilities are of the raw logits, which sampling may change in place.
            let raw = self.logprobs.map(|top| (top, logits.to_vec()));
            let mut constraint = self
                .constraint
                .as_mut()
                .filter(|_| !self.splitter.in_thinking());
            if let Some(c) = constraint.as_mut() {
                match c.mask(logits, &self.stop_ids) {
                    Ok(true) => {}
                    // The answer is complete and no end-of-sequence id may end it (`ignore_eos`).
                    Ok(false) => return self.finish(tokenizer, FinishReason::Stop),
                    Err(e) => return self.fail(format!("constrained decoding: {e}")),
                }
            }
            let token = self.sampler.sample(logits);
            if let Some(c) = constraint.filter(|_| !self.stop_ids.contains(&token)) {
                if let Err(e) = c.push(token) {
                    return self.fail(format!("constrained decoding: {e}"));
                }
            }
            if let Some((top, raw)) = raw {
                if !self.stop_ids.contains(&token) {
                    let (logprob, top) = crate::sampling::log_probs(&raw, token, top);
                    self.send(Event::Logprob(TokenLogprob {
                        id: token,
                        logprob,
                        top,
                    }));
                }
            }
            let requested_stop = self.stop_ids[..self.requested_stops].contains(&token);
            if self.stop_ids.contains(&token)
                && !requested_stop
                && self.splitter.in_thinking()
                && !self.forced_end.is_empty()
            {
                // Ending while still thinking leaves no answer: close the thinking section instead
                // and let the model answer.
                self.close_thinking(tokenizer);
                if self.finished.is_some() {
                    return;
                }
            } else if self.stop_ids.contains(&token) {
                self.tokens.push(token);
                self.finish(tokenizer, FinishReason::Stop);
                return;
            } else {
                self.push_token(tokenizer, token, true);
            }
        }
        if self.finished.is_none() && self.generated() >= self.max_new {
            self.finish(tokenizer, FinishReason::Length);
        }
    }

    /// Closes the thinking section with the end-of-thinking marker when the whole marker fits in
    /// what is left of `max_tokens`; otherwise the sequence ends here (`length`), its thinking cut
    /// as `max_tokens` cuts any, never past `max_tokens` nor inside the marker.
    fn close_thinking(&mut self, tokenizer: &TextTokenizer) {
        if self.generated() + self.forced_end.len() > self.max_new {
            return self.finish(tokenizer, FinishReason::Length);
        }
        for t in self.forced_end.clone() {
            self.push_token(tokenizer, t, false);
            if self.finished.is_some() {
                return;
            }
        }
    }

    fn push_token(&mut self, tokenizer: &TextTokenizer, token: u32, sampled: bool) {
        self.tokens.push(token);
        self.sampler.record(token);
        if sampled && self.splitter.in_thinking() {
            self.reasoning_tokens += 1;
        }
        if crate::thinking::silent_token(tokenizer, token) {
            // No `<|im_end|>` in the answer, as vLLM skips special tokens' text.
            return;
        }
        let text = match self.detok.push(tokenizer, token) {
            Ok(t) => t,
            Err(e) => {
                self.fail(format!("detokenizing: {e}"));
                return;
            }
        };
        for (kind, delta) in self.splitter.push(&text) {
            if kind == DeltaKind::Content {
                self.watch_for_call(tokenizer, &delta);
            }
            self.emit(kind, delta);
            if self.finished.is_some() {
                return;
            }
        }
    }

    /// Hands the answer to the pending call constraint once `text` completes the opening tag of a
    /// call block; the text after the tag is fed to the constraint first.
    fn watch_for_call(&mut self, tokenizer: &TextTokenizer, text: &str) {
        let Some(pending) = self.pending_call.take() else {
            return;
        };
        let (mut constraint, rest) = match pending.watch(text) {
            Ok(started) => started,
            Err(pending) => {
                self.pending_call = Some(pending);
                return;
            }
        };
        let fed = tokenizer
            .encode(&rest)
            .map_err(|e| e.to_string())
            .and_then(|ids| ids.into_iter().try_for_each(|id| constraint.push(id)));
        match fed {
            Ok(()) => self.constraint = Some(constraint),
            // The model wrote something after the tag that no call can start with: its block
            // stays unconstrained, and the server returns it as text if it does not parse.
            Err(e) => tracing::debug!("a tool call block left unconstrained: {e}"),
        }
    }

    fn emit(&mut self, kind: DeltaKind, text: String) {
        match kind {
            DeltaKind::Reasoning => self.send(Event::Delta { kind, text }),
            DeltaKind::Content => match self.stop.push(&text) {
                StopOutcome::Continue(t) => self.send(Event::Delta { kind, text: t }),
                StopOutcome::Stopped(t) => {
                    self.send(Event::Delta { kind, text: t });
                    self.finished = Some(FinishReason::Stop);
                    self.send_finished();
                }
            },
        }
    }

    fn send(&self, event: Event) {
        if let Event::Delta { text, .. } = &event {
            if text.is_empty() {
                return;
            }
        }
        // A closed channel means the client left; the worker drops the sequence next step.
        let _ = self.events.send(event);
    }

    /// Ends the sequence: flushes held-back text and sends the final event.
    pub(crate) fn finish(&mut self, tokenizer: &TextTokenizer, reason: FinishReason) {
        if self.finished.is_some() {
            return;
        }
        // The last tokens' text may have been waiting for the rest of a character.
        let tail = match self.detok.flush(tokenizer) {
            Ok(t) => t,
            Err(e) => return self.fail(format!("detokenizing: {e}")),
        };
        for (kind, delta) in self.splitter.push(&tail) {
            self.emit(kind, delta);
            if self.finished.is_some() {
                // A stop string in the tail ended the sequence.
                return;
            }
        }
        // What the thinking splitter held back (a possible start of its markers) may still
        // complete a stop string: then the sequence ends there, for that reason.
        let mut reason = reason;
        let mut stopped = false;
        for (kind, text) in self.splitter.finish() {
            match kind {
                DeltaKind::Reasoning => self.send(Event::Delta { kind, text }),
                DeltaKind::Content => match self.stop.push(&text) {
                    StopOutcome::Continue(t) => self.send(Event::Delta { kind, text: t }),
                    StopOutcome::Stopped(t) => {
                        self.send(Event::Delta { kind, text: t });
                        reason = FinishReason::Stop;
                        stopped = true;
                        break;
                    }
                },
            }
        }
        if !stopped {
            let rest = self.stop.finish();
            self.send(Event::Delta {
                kind: DeltaKind::Content,
                text: rest,
            });
        }
        self.finished = Some(reason);
        self.send_finished();
    }

    /// Sends the closing event that [`Self::finish`] held back, if any.
    pub(crate) fn deliver_finish(&mut self) {
        if let Some(event) = self.held_finish.take() {
            self.send(event);
        }
    }

    fn send_finished(&mut self) {
        let now = Instant::now();
        let usage = Usage {
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens.unwrap_or(0),
            completion_tokens: self.generated(),
            reasoning_tokens: self.reasoning_tokens,
            time_to_first_token: self
                .first_token
                .map(|t| (t - self.submitted).as_secs_f64())
                .unwrap_or_default(),
            total_time: (now - self.submitted).as_secs_f64(),
        };
        self.held_finish = Some(Event::Finished {
            reason: self.finished.unwrap_or(FinishReason::Stop),
            usage,
            output_ids: self.tokens[self.prompt_len..].to_vec(),
        });
    }

    /// Ends the sequence with an error event.
    pub(crate) fn fail(&mut self, message: String) {
        self.finished = Some(FinishReason::Stop);
        self.send(Event::Error(message));
    }
}
