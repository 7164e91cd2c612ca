//! Constrained answers: JSON that matches a schema (OpenAI `response_format: {"type":
//! "json_schema", ...}`; JSON mode, `{"type": "json_object"}`, is the schema `{"type": "object"}`),
//! or the call blocks of a required tool call (a Lark grammar, [`crate::tools`]).
//!
//! The grammar is compiled by [llguidance] (the constrained-decoding library behind the structured
//! outputs of vLLM, SGLang and llama.cpp) over the model's own tokens. Before each answer token,
//! [`GrammarConstraint::mask`] sets the logit of every token that cannot continue a matching
//! answer to −∞ and allows the end-of-sequence ids only where the answer may end.
//!
//! - A schema llguidance cannot enforce (an unsupported keyword, a contradiction, a dangling
//!   `$ref`) is refused when the request is submitted ([`GrammarCompiler::compile`]), never relaxed
//!   in silence. `oneOf` is enforced as `anyOf` (Pydantic writes discriminated unions as `oneOf`).
//! - Whitespace outside strings is at most [`MAX_WHITESPACE_RUN`] characters between two JSON
//!   tokens, so a small model cannot wander into endless newlines; a schema's own `x-guidance`
//!   options take precedence.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use switchyard_models::text::TextTokenizer;

use crate::error::{EngineError, Result};
use crate::token_bytes::TokenBytes;
use crate::tools::TOOL_CALL_START;

/// Most whitespace characters in a row outside strings.
pub const MAX_WHITESPACE_RUN: usize = 16;

/// The llguidance options every schema gets unless it sets its own `x-guidance`: bounded
/// whitespace, and `oneOf` enforced as `anyOf`.
pub(crate) fn guidance_options() -> Value {
    serde_json::json!({
        "whitespace_pattern": format!("[ \\t\\n\\r]{{0,{MAX_WHITESPACE_RUN}}}"),
        "coerce_one_of": true,
    })
}

/// The model's vocabulary as byte strings, for llguidance: its token trie, and the model's own
/// tokenizer for the text llguidance tokenizes itself.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: TextTokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Bytes that are not whole UTF-8 text (or that the tokenizer refuses) get the trie's
        // greedy tokenization: valid, if not the canonical one.
        std::str::from_utf8(s)
            .ok()
            .and_then(|text| self.tokenizer.encode(text).ok())
            .unwrap_or_else(|| self.trie.greedy_tokenize(s))
    }
}

/// Compiles JSON schemas and grammars into per-request constraints for one model's vocabulary.
/// Building it indexes the vocabulary (0.16 s for SmolLM2's 49k tokens on a 2-core Xeon), so an
/// engine builds one, on the first request that needs it, and shares it.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field(
                "vocab_size",
                &self.factory.tok_env().tok_trie().vocab_size(),
            )
            .finish()
    }
}

impl GrammarCompiler {
    /// Indexes `tokenizer`'s vocabulary from its byte strings (`bytes`, [`TokenBytes`]); special
    /// tokens are never allowed inside an answer.
    /// The error is why the vocabulary cannot be indexed.
    pub fn new(
        tokenizer: &TextTokenizer,
        bytes: std::result::Result<&TokenBytes, &str>,
    ) -> std::result::Result<Self, String> {
        let setup = |e: String| {
            format!("structured outputs are not available for this model's tokenizer: {e}")
        };
        let words = bytes.map_err(|e| setup(e.to_string()))?.words();
        let eos = tokenizer.eos().first().copied().unwrap_or(0);
        let info = TokRxInfo::new(words.len() as u32, eos);
        let env: TokEnv = Arc::new(Vocabulary {
            trie: TokTrie::from(&info, words),
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| setup(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A constraint for one answer that must match `schema`; a schema that cannot be enforced is
    /// an [`EngineError::InvalidParameter`] of `response_format` that says why.
    pub fn compile(&self, schema: &Value) -> Result<GrammarConstraint> {
        let invalid = |message: String| EngineError::InvalidParameter {
            param: "response_format",
            message,
        };
        if !schema.is_object() && !schema.is_boolean() {
            return Err(invalid("the JSON schema must be an object".into()));
        }
        let mut schema = schema.clone();
        if let Value::Object(map) = &mut schema {
            map.entry("x-guidance").or_insert_with(guidance_options);
        }
        self.compile_grammar(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| invalid(format!("the JSON schema cannot be enforced: {e}")))
    }

    /// A constraint for one answer that must follow `grammar` (llguidance's Lark dialect, where
    /// `%json {...}` embeds a JSON schema); one that cannot be compiled is an
    /// [`EngineError::InvalidParameter`] of `param` that says why.
    pub fn compile_lark(&self, grammar: &str, param: &'static str) -> Result<GrammarConstraint> {
        self.compile_grammar(TopLevelGrammar::from_lark(grammar.to_string()))
            .map_err(|e| EngineError::InvalidParameter {
                param,
                message: format!("cannot be enforced: {e}"),
            })
    }

    /// The constraint of `grammar`, or why it cannot be compiled.
    fn compile_grammar(
        &self,
        grammar: TopLevelGrammar,
    ) -> std::result::Result<GrammarConstraint, String> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        let eos = self.factory.tok_env().tok_trie().eos_token();
        Ok(GrammarConstraint { matcher, eos })
    }
}

/// One answer's constraint: which tokens may come next, given the tokens so far.
pub struct GrammarConstraint {
    matcher: Matcher,
    /// The trie's end token: allowed only as one of the caller's end ids.
    eos: TokenId,
}

impl std::fmt::Debug for GrammarConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarConstraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl GrammarConstraint {
    /// Sets the logits of tokens that cannot come next to −∞; `end_ids` (end of sequence) are
    /// allowed exactly where the answer may end. Returns whether any token is left, or the
    /// grammar engine's error (an internal failure: a sampled token is always one it allowed).
    pub fn mask(
        &mut self,
        logits: &mut [f32],
        end_ids: &[u32],
    ) -> std::result::Result<bool, String> {
        let may_end = self.matcher.is_accepting().map_err(|e| e.to_string())?;
        let allowed = if self.matcher.is_stopped() {
            None
        } else {
            Some(self.matcher.compute_mask().map_err(|e| e.to_string())?)
        };
        // The end ids' own logits, set back where the answer may end: one pass over the
        // vocabulary and one over the end ids, however many a request gave.
        let ends: Vec<(usize, f32)> = end_ids
            .iter()
            .filter_map(|&id| logits.get(id as usize).map(|&l| (id as usize, l)))
            .collect();
        for (id, logit) in logits.iter_mut().enumerate() {
            let ok = id as u32 != self.eos
                && allowed
                    .as_ref()
                    .is_some_and(|a| id < a.len() && a.is_allowed(id as u32));
            if !ok {
                *logit = f32::NEG_INFINITY;
            }
        }
        for &(id, logit) in &ends {
            logits[id] = if may_end { logit } else { f32::NEG_INFINITY };
        }
        let any = logits.iter().any(|l| l.is_finite());
        Ok(any)
    }

    /// Records a token of the answer (one that [`mask`](Self::mask) allowed, not an end id).
    pub fn push(&mut self, id: u32) -> std::result::Result<(), String> {
        self.matcher.consume_token(id).map_err(|e| e.to_string())
    }
}

/// A call constraint waiting for the answer to open a call block (with tools left to the model's
/// choice, [`crate::tools::ToolUse::grammar_after_start`]): it watches the answer text for
/// [`TOOL_CALL_START`] and then takes over.
#[derive(Debug)]
pub(crate) struct PendingCall {
    /// Boxed: a matcher is over a kilobyte, and this moves in and out of the sequence.
    constraint: Box<GrammarConstraint>,
    /// The end of the answer text so far: what may still become the tag.
    tail: String,
}

impl PendingCall {
    pub(crate) fn new(constraint: GrammarConstraint) -> Self {
        Self {
            constraint: Box::new(constraint),
            tail: String::new(),
        }
    }

    /// Takes more answer text. Once the tag has appeared, the constraint and the text that followed
    /// the tag in the same delta (a newline its last token carried, say); until then, itself.
    pub(crate) fn watch(
        mut self,
        text: &str,
    ) -> std::result::Result<(GrammarConstraint, String), Self> {
        self.tail.push_str(text);
        let Some(at) = self.tail.find(TOOL_CALL_START) else {
            // Keep only what may still become the tag.
            let mut cut = self.tail.len().saturating_sub(TOOL_CALL_START.len());
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.tail.drain(..cut);
            return Err(self);
        };
        let rest = self.tail.split_off(at + TOOL_CALL_START.len());
        Ok((*self.constraint, rest))
    }
}
