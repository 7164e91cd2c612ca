//! Which tokens of which running sequences the next step computes.
//!
//! Every decoding sequence gets its one token first: their users are watching tokens arrive. The
//! rest of the step's budget goes to prompts still being prefilled, shortest remaining prompt
//! first, so a short request that arrives behind a long one gets its first token after one step
//! instead of after the whole long prefill. A prompt passed over for [`STARVED_AFTER`] steps in a
//! row goes first, so a stream of short prompts cannot hold a long one back forever.
//!
//! While sequences decode, the budget bounds the step's *cost*, not just its token count: a
//! prompt token at position `p` attends to `p` earlier positions, which costs as many
//! multiply-adds as `p / attention_span` tokens' weight products ([`attention_span`]). So the
//! chunks of a prompt near the end of a long context get shorter, and the decoding sequences'
//! time between tokens stays near that of a step at the start of the context. A step with no
//! decoding sequence spends the plain token budget: nobody is waiting on its length.

use switchyard_models::decoder::DecoderConfig;

/// Consecutive steps a prefilling sequence may be passed over before it goes first.
pub(crate) const STARVED_AFTER: u32 = 4;

/// One running sequence as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    /// Positions already in the KV cache.
    pub(crate) computed: usize,
    /// Tokens of the sequence so far (prompt and generated).
    pub(crate) len: usize,
    /// Steps in a row that gave this prefilling sequence nothing.
    pub(crate) passed_over: u32,
}

impl Pending {
    fn todo(&self) -> usize {
        self.len - self.computed
    }
}

/// One sequence's part of a step: tokens `start..start + len` of sequence `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) index: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// The context length at which one token's attention costs as many multiply-adds as its weight
/// products, per layer: `2 · heads · head_dim` per attended position (scores and values) against
/// `hidden · (2 q + 2 kv) + 3 · hidden · intermediate` for the projections and the MLP.
pub(crate) fn attention_span(c: &DecoderConfig) -> f64 {
    let projections =
        c.hidden_size * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * c.hidden_size * c.intermediate_size;
    let attention_per_position = 2 * c.num_heads * c.head_dim;
    (projections as f64 / attention_per_position.max(1) as f64).max(1.0)
}

/// Plans one step over `seqs` (in admission order) with `max_batch_tokens` tokens of budget.
/// Returns the slices in index order.
pub(crate) fn plan(seqs: &[Pending], max_batch_tokens: usize, attention_span: f64) -> Vec<Slice> {
    let mut budget = max_batch_tokens.max(1) as f64;
    let mut slices = Vec::new();
    for (index, s) in seqs.iter().enumerate() {
        if s.todo() == 1 && budget >= 1.0 {
            slices.push(Slice {
                index,
                start: s.computed,
                len: 1,
            });
            budget -= 1.0;
        }
    }
    let costed = !slices.is_empty();
    let mut prefills: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].todo() > 1).collect();
    prefills.sort_by_key(|&i| (seqs[i].passed_over < STARVED_AFTER, seqs[i].todo(), i));
    for i in prefills {
        let s = &seqs[i];
        let len = if costed {
            affordable(s.computed, budget, attention_span)
        } else {
            budget as usize
        }
        .min(s.todo());
        if len == 0 {
            break;
        }
        slices.push(Slice {
            index: i,
            start: s.computed,
            len,
        });
        budget -= if costed {
            cost(s.computed, len, attention_span)
        } else {
            len as f64
        };
    }
    slices.sort_by_key(|s| s.index);
    slices
}

/// Cost, in tokens at position 0, of computing positions `start..start + len`:
/// `Σ (1 + p / span)`.
fn cost(start: usize, len: usize, span: f64) -> f64 {
    let (s, l) = (start as f64, len as f64);
    l + (l * s + l * (l - 1.0) / 2.0) / span
}

/// The most positions from `start` on whose [`cost`] fits in `budget`.
fn affordable(start: usize, budget: f64, span: f64) -> usize {
    if budget < 1.0 {
        return 0;
    }
    // Largest l with a·l² + b·l ≤ budget: the positive root of the quadratic, written without
    // the cancellation of (−b + √(b² + 4a·budget)) / 2a (and exact for an infinite span, a = 0).
    let a = 0.5 / span;
    let b = 1.0 + (start as f64 - 0.5) / span;
    let mut len = (2.0 * budget / (b + (b * b + 4.0 * a * budget).sqrt())).floor() as usize;
    // Guard the float rounding at the boundary.
    while len > 0 && cost(start, len, span) > budget + 1e-9 {
        len -= 1;
    }
    len.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefill(len: usize) -> Pending {
        Pending {
            computed: 0,
            len,
            passed_over: 0,
        }
    }

    fn decoding(len: usize) -> Pending {
        Pending {
            computed: len - 1,
            len,
            passed_over: 0,
        }
    }

    #[test]
    fn decoding_sequences_go_first_then_the_shortest_prompt() {
        let seqs = [prefill(1000), decoding(40), prefill(30), decoding(7)];
        let plan = plan(&seqs, 64, f64::INFINITY);
        let by = |i| plan.iter().find(|s| s.index == i).map(|s| s.len);
        assert_eq!(by(1), Some(1));
        assert_eq!(by(3), Some(1));
        assert_eq!(by(2), Some(30), "the short prompt is done in one step");
        assert_eq!(by(0), Some(64 - 2 - 30), "the long one takes what is left");
        assert!(plan.windows(2).all(|w| w[0].index < w[1].index));
    }

    #[test]
    fn a_prompt_passed_over_long_enough_goes_first() {
        let mut long = prefill(1000);
        let shorts = [prefill(40), prefill(40)];
        let seqs = [long, shorts[0], shorts[1]];
        assert!(plan(&seqs, 64, f64::INFINITY).iter().all(|s| s.index != 0));
        long.passed_over = STARVED_AFTER;
        let seqs = [long, shorts[0], shorts[1]];
        let plan = plan(&seqs, 64, f64::INFINITY);
        assert_eq!(
            plan[0],
            Slice {
                index: 0,
                start: 0,
                len: 64
            }
        );
    }

    #[test]
    fn with_decoding_sequences_a_chunk_deep_in_the_context_is_shorter() {
        let span = 1000.0;
        let early = Pending {
            computed: 0,
            len: 4000,
            passed_over: 0,
        };
        let late = Pending {
            computed: 3000,
            ..early
        };
        let chunk = |p: Pending| plan(&[p, decoding(10)], 513, span)[0].len;
        assert!(chunk(early) < 512 && chunk(early) > 400, "{}", chunk(early));
        // Each token at 3000 costs about 4: a quarter of the tokens.
        assert!((110..=130).contains(&chunk(late)), "{}", chunk(late));
        assert!(cost(3000, chunk(late), span) <= 512.0);
        assert!(cost(3000, chunk(late) + 1, span) > 512.0);
        // Alone, it takes the whole token budget.
        assert_eq!(plan(&[late], 513, span)[0].len, 513);
    }

    #[test]
    fn the_span_of_a_small_llama_matches_its_shape() {
        let c = crate::memory::tests::smollm2_135m();
        // (576·(2·576 + 2·192) + 3·576·1536) / (2·9·64) = 3072.
        assert_eq!(attention_span(&c), 3072.0);
    }
}
