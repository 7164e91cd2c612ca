//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded draws.
//!
//! Order (as vLLM and `transformers` apply them): repetition penalty (prompt + output), frequency and
//! presence penalties (output only, OpenAI semantics), then greedy argmax at temperature 0, else
//! temperature, top-k, top-p, min-p and a draw from the request's own seeded generator, so a seed
//! gives the same tokens whatever else is in the batch.

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
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
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
        // Candidates sorted by logit, best first.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let k = if p.top_k > 0 {
            p.top_k.min(cand.len())
        } else {
            cand.len()
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * mass;
        for (c, q) in cand.iter().zip(&probs[..keep]) {
            if r < *q {
                return c.0;
            }
            r -= q;
        }
        cand[keep - 1].0
    }
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
