//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded draws.
//!
//! Order (as vLLM's V1 sampler applies them): repetition penalty (prompt + output), frequency and
//! presence penalties (output only, OpenAI semantics), then greedy argmax at temperature 0, else
//! temperature, top-k (tokens tied with the k-th are kept), min-p, top-p over what min-p kept, and a
//! draw from the request's own seeded generator, so a seed gives the same tokens whatever else is in
//! the batch.

use crate::error::{EngineError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Sampling settings of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Drop tokens below `min_p ×` the top probability; 0 disables.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of seen tokens; 1 disables.
    pub repetition_penalty: f32,
    /// Subtract `count ×` this from logits of generated tokens (OpenAI `frequency_penalty`).
    pub frequency_penalty: f32,
    /// Subtract this from logits of tokens generated at least once (OpenAI `presence_penalty`).
    pub presence_penalty: f32,
    /// Seed of the request's generator; `None` draws one.
    pub seed: Option<u64>,
    /// Added to these tokens' logits before anything else (OpenAI `logit_bias`: -100 bans a
    /// token, 100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |param, message: &str| {
            Err(EngineError::InvalidParameter {
                param,
                message: message.to_string(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", "must be in [-2, 2]");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", "must be in [-2, 2]");
        }
        if self
            .logit_bias
            .iter()
            .any(|&(_, b)| !(-100.0..=100.0).contains(&b))
        {
            return bad("logit_bias", "biases must be in [-100, 100]");
        }
        Ok(())
    }
}

/// Per-request sampling state: parameters, generator and counts of generated tokens.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    output_counts: HashMap<u32, u32>,
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    /// A sampler for `params`, aware of the prompt for the repetition penalty.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            output_counts: HashMap::new(),
            seen: prompt.iter().copied().collect(),
        }
    }

    /// Records a token that was appended to the output (sampled or forced).
    pub fn record(&mut self, token: u32) {
        *self.output_counts.entry(token).or_default() += 1;
        self.seen.insert(token);
    }

    /// Picks the next token from `logits` (modified in place).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    // Kept finite: an infinite logit would read as masked (a tiny penalty
                    // divides a positive logit past f32's range).
                    *l = if *l > 0.0 {
                        (*l / p.repetition_penalty).min(f32::MAX)
                    } else {
                        (*l * p.repetition_penalty).max(f32::MIN)
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &n) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        // (token, logit or weight) pairs, the larger value first, then the lower token.
        let best_first = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // Candidates (token, weight), most likely first once a filter has ordered them. A token's
        // weight e^((l - max) / T) is its probability times a constant; a token that is not finite
        // (masked) weighs 0. Nothing is sorted unless a filter needs the order.
        let mut cand: Vec<(u32, f32)> = if p.top_k > 0 && p.top_k < logits.len() {
            // The k best logits first: only they get weights.
            let mut top: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(t, &l)| (t as u32, l))
                .collect();
            if top.is_empty() {
                return argmax(logits);
            }
            if p.top_k < top.len() {
                // The k-th best logit, and every token at or above it (ties with it included, as
                // vLLM keeps them).
                top.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
                let kth = top[p.top_k - 1].1;
                top.retain(|c| c.1 >= kth);
            }
            top.sort_unstable_by(best_first);
            let max = top[0].1;
            for c in &mut top {
                c.1 = switchyard_kernels::activation::exp((c.1 - max) * inv_t);
            }
            top
        } else {
            let max = max_finite(logits);
            if max == f32::NEG_INFINITY {
                return argmax(logits);
            }
            // Every token's weight in one vectorised pass.
            let mut weights: Vec<f32> = logits
                .iter()
                .map(|&l| {
                    if l.is_finite() {
                        (l - max) * inv_t
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            switchyard_kernels::activation::exp_in_place(&mut weights);
            if p.top_p >= 1.0 && p.min_p <= 0.0 {
                return draw_from_all(&mut self.rng, &weights).unwrap_or_else(|| argmax(logits));
            }
            weights
                .iter()
                .enumerate()
                .filter(|(_, &w)| w > 0.0)
                .map(|(t, &w)| (t as u32, w))
                .collect()
        };
        if p.min_p > 0.0 {
            // Relative to the most likely token.
            let floor = p.min_p * cand.iter().fold(0f32, |m, c| m.max(c.1));
            cand.retain(|c| c.1 >= floor);
        }
        if p.top_p < 1.0 {
            // The nucleus: the fewest most likely tokens whose mass reaches `top_p`. Found among
            // the top 64, 256, ... candidates, so that a peaked distribution sorts only a few.
            let target = p.top_p * cand.iter().map(|c| c.1).sum::<f32>();
            let mut k = 64.min(cand.len());
            loop {
                if k < cand.len() {
                    cand.select_nth_unstable_by(k - 1, best_first);
                }
                cand[..k].sort_unstable_by(best_first);
                let mut acc = 0.0;
                let cut = cand[..k].iter().position(|c| {
                    acc += c.1;
                    acc >= target
                });
                match cut {
                    Some(i) => {
                        cand.truncate(i + 1);
                        break;
                    }
                    None if k == cand.len() => break,
                    None => k = (k * 4).min(cand.len()),
                }
            }
        }
        let mass: f32 = cand.iter().map(|c| c.1).sum();
        draw(
            &mut self.rng,
            mass,
            cand.iter().map(|&(t, w)| (t as usize, w)),
        )
        .unwrap_or_else(|| argmax(logits))
    }
}

/// The largest finite value (`-inf` when there is none), eight lanes at a time.
fn max_finite(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x.is_finite() && x > *m { x } else { *m };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// Sum of a block of weights, eight lanes at a time.
fn block_sum(block: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = block.chunks_exact(8);
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += x;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// One token drawn from a whole vocabulary's weights, in proportion to them: the uniform draw is
/// located block by block (block sums vectorise, where one running subtraction per token would be a
/// dependency chain as long as the vocabulary), then within its block. `None` when nothing has
/// weight.
fn draw_from_all(rng: &mut StdRng, weights: &[f32]) -> Option<u32> {
    const BLOCK: usize = 256;
    let sums: Vec<f32> = weights.chunks(BLOCK).map(block_sum).collect();
    let total: f32 = sums.iter().sum();
    let mut r = rng.random::<f32>() * total;
    let mut found = None;
    let mut last_block = None;
    for (b, &sum) in sums.iter().enumerate() {
        if sum <= 0.0 {
            continue;
        }
        if r < sum {
            found = Some((b, r));
            break;
        }
        r -= sum;
        last_block = Some(b);
    }
    // Rounding can leave the draw past every block: it then falls on the last token with weight.
    let (b, r) = found.or(last_block.map(|b| (b, f32::INFINITY)))?;
    let start = b * BLOCK;
    let block = &weights[start..(start + BLOCK).min(weights.len())];
    locate(r, block.iter().enumerate().map(|(i, &w)| (start + i, w)))
}

/// One token drawn from `(token, weight)` pairs in proportion to their weights, which sum to
/// `total`. `None` when nothing has weight.
fn draw(rng: &mut StdRng, total: f32, weighted: impl Iterator<Item = (usize, f32)>) -> Option<u32> {
    locate(rng.random::<f32>() * total, weighted)
}

/// The first token whose cumulative weight passes `r` (rounding can leave it unpassed: then the
/// last token with weight); `None` when nothing has weight.
fn locate(mut r: f32, weighted: impl Iterator<Item = (usize, f32)>) -> Option<u32> {
    let mut last = None;
    for (t, w) in weighted {
        if w <= 0.0 {
            continue;
        }
        if r < w {
            return Some(t as u32);
        }
        r -= w;
        last = Some(t as u32);
    }
    last
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The log-softmax of `logits` at `token`, and the `top` most likely tokens with theirs, best first.
pub fn log_probs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let lse = switchyard_kernels::activation::log_sum_exp(logits);
    let best = if top == 0 {
        Vec::new()
    } else {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(idx.len());
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
        }
        idx.truncate(k);
        idx.sort_by(by_logit);
        idx.into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect()
    };
    let own = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |l| l - lse);
    (own, best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            seed: Some(1),
            ..Default::default()
        }
    }

    fn draws(p: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(p, &[]);
        (0..n).map(|_| s.sample(&mut logits.to_vec())).collect()
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 1.9]), 1);
    }

    #[test]
    fn logit_bias_bans_and_favours_tokens() {
        let logits = [1.0, 3.0, 2.0, 0.5];
        let banned = SamplingParams {
            logit_bias: vec![(1, -100.0)],
            ..SamplingParams::default()
        };
        assert_eq!(Sampler::new(banned, &[]).sample(&mut logits.clone()), 2);
        let favoured = SamplingParams {
            temperature: 1.0,
            logit_bias: vec![(3, 100.0)],
            seed: Some(1),
            ..SamplingParams::default()
        };
        assert!(draws(favoured, &logits, 32).iter().all(|&t| t == 3));
        let out_of_range = SamplingParams {
            logit_bias: vec![(0, 100.5)],
            ..SamplingParams::default()
        };
        assert!(out_of_range.validate().is_err());
    }

    #[test]
    fn same_seed_same_tokens_and_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let a = draws(params(), &logits, 64);
        assert_eq!(a, draws(params(), &logits, 64));
        let other = SamplingParams {
            seed: Some(2),
            ..params()
        };
        assert_ne!(a, draws(other, &logits, 64));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_the_support() {
        let logits = [1.0, 3.0, 2.0, 0.5];
        let k1 = SamplingParams {
            top_k: 1,
            ..params()
        };
        assert!(draws(k1, &logits, 50).iter().all(|&t| t == 1));
        let k2 = SamplingParams {
            top_k: 2,
            ..params()
        };
        let d = draws(k2, &logits, 400);
        assert!(d.iter().all(|&t| t == 1 || t == 2));
        assert!(d.contains(&2), "both of the top two are drawn");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = SamplingParams {
            top_p: 0.7,
            ..params()
        };
        let d = draws(p, &logits, 500);
        assert!(d.iter().all(|&t| t <= 1));
        assert!(d.contains(&1));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [3.0, 2.9, 0.0, -1.0];
        let p = SamplingParams {
            min_p: 0.5,
            ..params()
        };
        let d = draws(p, &logits, 500);
        assert!(d.iter().all(|&t| t <= 1));
    }

    #[test]
    fn low_temperature_concentrates_high_temperature_spreads() {
        let logits = [1.0, 0.8, 0.6, 0.4];
        let cold = SamplingParams {
            temperature: 0.05,
            ..params()
        };
        assert!(
            draws(cold, &logits, 200)
                .iter()
                .filter(|&&t| t == 0)
                .count()
                > 190
        );
        let hot = SamplingParams {
            temperature: 5.0,
            ..params()
        };
        let d = draws(hot, &logits, 400);
        assert!((0..4).all(|t| d.contains(&t)));
    }

    #[test]
    fn an_extreme_repetition_penalty_keeps_its_tokens_in_the_draw() {
        // A penalty below 1 favours seen tokens; a tiny one overflows their logits, which must
        // still win, greedy or sampled, not read as masked.
        let logits = [2.0f32, 1.0, 0.5];
        for temperature in [0.0, 1.0] {
            let mut s = Sampler::new(
                SamplingParams {
                    repetition_penalty: 1e-39,
                    temperature,
                    seed: Some(3),
                    ..SamplingParams::default()
                },
                &[1],
            );
            assert_eq!(
                s.sample(&mut logits.to_vec()),
                1,
                "temperature {temperature}"
            );
        }
    }

    #[test]
    fn penalties_push_seen_tokens_down() {
        let logits = [2.0f32, 1.9, 0.0];
        let greedy = SamplingParams::default();
        // Repetition penalty applies to prompt tokens.
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 1.5,
                ..greedy.clone()
            },
            &[0],
        );
        assert_eq!(s.sample(&mut logits.to_vec()), 1);
        // Frequency penalty scales with the count of generated occurrences.
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.06,
                ..greedy.clone()
            },
            &[],
        );
        s.record(0);
        assert_eq!(
            s.sample(&mut logits.to_vec()),
            0,
            "one occurrence: 2.0 - 0.06 > 1.9"
        );
        s.record(0);
        assert_eq!(
            s.sample(&mut logits.to_vec()),
            1,
            "two occurrences: 2.0 - 0.12 < 1.9"
        );
        // Presence penalty is flat.
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 0.2,
                ..greedy
            },
            &[],
        );
        s.record(0);
        assert_eq!(s.sample(&mut logits.to_vec()), 1);
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                frequency_penalty: 3.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
    }

    /// The distribution a sampler should draw from, by the definitions (f64, everything sorted):
    /// softmax at the temperature, then top-k, the top-p nucleus and the min-p floor.
    fn reference(p: &SamplingParams, logits: &[f32]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.top_k > 0 && p.top_k < order.len() {
            let kth = logits[order[p.top_k - 1]];
            order.retain(|&i| logits[i] >= kth);
        }
        let max = logits[order[0]] as f64;
        let w = |i: usize| ((logits[i] as f64 - max) / p.temperature as f64).exp();
        // min-p, then top-p over what it kept.
        let floor = p.min_p as f64 * w(order[0]);
        order.retain(|&i| w(i) >= floor);
        let total: f64 = order.iter().map(|&i| w(i)).sum();
        let mut keep = order.len();
        let mut acc = 0.0;
        for (n, &i) in order.iter().enumerate() {
            acc += w(i) / total;
            if acc >= p.top_p as f64 {
                keep = keep.min(n + 1);
                break;
            }
        }
        let mut probs = vec![0.0; logits.len()];
        let mass: f64 = order[..keep].iter().map(|&i| w(i)).sum();
        for &i in &order[..keep] {
            probs[i] = w(i) / mass;
        }
        probs
    }

    #[test]
    fn draws_follow_the_filtered_softmax() {
        // 300 tokens, a few likely, the rest a long tail, some masked: the empirical frequencies
        // of 60 000 draws are within a small total variation of the definition, for the plain
        // softmax (no sorting on that path) and for each filter.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let logits: Vec<f32> = (0..300)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                match i % 50 {
                    0 => f32::NEG_INFINITY,
                    1..=3 => 4.0 + (state % 1000) as f32 / 500.0,
                    _ => (state % 1000) as f32 / 250.0 - 2.0,
                }
            })
            .collect();
        let cases = [
            (1.0, 0, 1.0, 0.0),
            (0.7, 0, 1.0, 0.0),
            (1.3, 20, 1.0, 0.0),
            (1.0, 0, 0.9, 0.0),
            (1.0, 0, 0.3, 0.0),
            (1.0, 0, 1.0, 0.05),
            (1.0, 50, 0.95, 0.01),
            (1.0, 0, 0.5, 0.2),
        ];
        for (temperature, top_k, top_p, min_p) in cases {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                seed: Some(7),
                ..SamplingParams::default()
            };
            let want = reference(&p, &logits);
            let n = 60_000;
            let mut counts = vec![0usize; logits.len()];
            for t in draws(p.clone(), &logits, n) {
                assert!(
                    want[t as usize] > 0.0,
                    "{p:?} drew {t}, outside the support"
                );
                counts[t as usize] += 1;
            }
            let tv: f64 = counts
                .iter()
                .zip(&want)
                .map(|(&c, &w)| (c as f64 / n as f64 - w).abs())
                .sum::<f64>()
                / 2.0;
            assert!(tv < 0.03, "{p:?}: total variation {tv}");
        }
    }

    #[test]
    fn min_p_cuts_before_the_nucleus_is_measured() {
        // 0.4 / 0.3 / 0.2 / 0.1 with min_p 0.3 (floor 0.12) keeps 0.4 / 0.3 / 0.2, renormalised
        // 0.44 / 0.33 / 0.22; top_p 0.75 then keeps the first two (vLLM's order). Measured on
        // the whole distribution instead, the nucleus would take the third too.
        let logits = [0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.75,
            min_p: 0.3,
            seed: Some(1),
            ..SamplingParams::default()
        };
        assert!(draws(p, &logits, 2000).iter().all(|&t| t <= 1));
    }

    #[test]
    fn top_k_keeps_the_tokens_tied_with_the_kth() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            seed: Some(5),
            ..SamplingParams::default()
        };
        let drawn = draws(p, &[1.0, 1.0, 0.0], 400);
        assert!(drawn.contains(&0) && drawn.contains(&1) && !drawn.contains(&2));
    }

    #[test]
    fn log_probs_are_a_log_softmax_with_the_best_alternatives_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0f32.ln()];
        let lse = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
        let (own, top) = log_probs(&logits, 2, 2);
        assert!((own - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-6);
        // The probabilities sum to one; no alternatives when none are asked for; more than the
        // vocabulary gives all of it.
        let all: f32 = (0..4).map(|t| log_probs(&logits, t, 0).0.exp()).sum();
        assert!((all - 1.0).abs() < 1e-6);
        assert!(log_probs(&logits, 0, 0).1.is_empty());
        assert_eq!(log_probs(&logits, 0, 9).1.len(), 4);
    }
}
