//! Rotary position embeddings: frequencies (with the configs' scaling rules) and their application.

use crate::decoder::{DecoderConfig, RopeScaling, RopeStyle};

/// Inverse frequencies of one head, after scaling.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
    style: RopeStyle,
    /// GGML's `theta_base^(-2/d)`, when angles are computed as GGML computes them.
    ggml_step: Option<f32>,
    /// GGML's per-pair divisors of those angles (`rope_freqs.weight`; empty: none).
    ggml_divisors: Vec<f32>,
}

impl Rope {
    /// Frequencies for `config` (Hugging Face's `_compute_default/linear/llama3_parameters`).
    pub fn new(config: &DecoderConfig) -> Self {
        let d = config.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        let inv_freq = match &config.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::FreqFactors(divisors)) => base
                .iter()
                .zip(divisors)
                .map(|(f, &d)| f / f64::from(d))
                .collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Self {
            inv_freq,
            style: config.rope_style,
            ggml_step: None,
            ggml_divisors: Vec::new(),
        }
    }

    /// These frequencies with the angles computed as GGML (llama.cpp) computes them: the angle of
    /// pair `i` is `position · step^i` with `step = theta^(-2/d)`, the power taken by repeated f32
    /// multiplication. The angles then equal llama.cpp's to the bit, where Hugging Face's rule
    /// (`position · inv_freq[i]`) differs by up to a few ulps. With per-pair divisors
    /// (`rope_freqs.weight`) each angle is then divided by its pair's, in f32, as GGML does; with
    /// another scaling this is `self` unchanged.
    pub fn with_ggml_angles(mut self, config: &DecoderConfig) -> Self {
        let divisors = match &config.rope_scaling {
            None => Vec::new(),
            Some(RopeScaling::FreqFactors(divisors)) => divisors.clone(),
            Some(_) => return self,
        };
        let d = config.head_dim as f32;
        self.ggml_step = Some((config.rope_theta as f32).powf(-2.0 / d));
        self.ggml_divisors = divisors;
        self
    }

    /// Writes `cos` and `sin` (`head_dim / 2` each) for `position`.
    pub fn cos_sin(&self, position: usize, cos: &mut [f32], sin: &mut [f32]) {
        if let Some(step) = self.ggml_step {
            let mut angle = position as f32;
            for (i, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
                let a = match self.ggml_divisors.get(i) {
                    Some(d) => angle / d,
                    None => angle,
                };
                *c = a.cos();
                *s = a.sin();
                angle *= step;
            }
            return;
        }
        for ((f, c), s) in self.inv_freq.iter().zip(cos.iter_mut()).zip(sin.iter_mut()) {
            // Hugging Face computes the angle in f32; do the same so long contexts agree.
            let angle = position as f32 * (*f as f32);
            *c = angle.cos();
            *s = angle.sin();
        }
    }

    /// Rotates every head of one token's `[heads, head_dim]` row in place.
    pub fn apply(&self, row: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for head in row.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::HalfSplit => {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x1 * cos[i] + x0 * sin[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * cos[i] - x1 * sin[i];
                        pair[1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            }
        }
    }
}
