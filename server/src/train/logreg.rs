//! Multinomial logistic regression on dense features: full-batch gradient descent with Adam on the mean
//! (optionally per-row weighted) cross-entropy plus an L2 penalty on the weights (not the biases), as
//! scikit-learn's `LogisticRegression(C)` with `l2 = 1 / (C · n)` and `sample_weight`. Deterministic
//! (no sampling); rows run in parallel.

use rayon::prelude::*;

/// Training options.
#[derive(Debug, Clone, Copy)]
pub struct LogRegOptions {
    /// L2 penalty on the weights, per example.
    pub l2: f32,
    /// Full-batch steps.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f32,
}

/// Dot product with eight partial sums (vectorises; plain `sum()` over floats does not).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Class scores of one row (`w`: `[classes][dim + 1]`, bias last).
pub fn logits(w: &[Vec<f32>], x: &[f32]) -> Vec<f32> {
    w.iter()
        .map(|c| dot(&c[..x.len()], x) + c[x.len()])
        .collect()
}

/// Fits `[classes][dim + 1]` weights (bias last) to rows `x` with labels `y` (< `classes`), each row's
/// loss scaled by its weight in `row_weights` (all 1 if `None`). Returns the weights and the final mean
/// weighted cross-entropy.
pub fn fit(
    x: &[Vec<f32>],
    y: &[usize],
    row_weights: Option<&[f32]>,
    classes: usize,
    opts: LogRegOptions,
) -> (Vec<Vec<f32>>, f32) {
    let ones = vec![1.0f32; x.len()];
    let rw = row_weights.unwrap_or(&ones);
    let n = x.len().max(1);
    let dim = x.first().map_or(0, Vec::len);
    let mut w = vec![vec![0.0f32; dim + 1]; classes];
    let (mut m, mut v) = (w.clone(), w.clone());
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut loss = 0.0;
    for step in 1..=opts.steps {
        // Gradient of the mean loss, summed over chunks of rows in parallel.
        let (grad, total) = x
            .par_chunks(256)
            .zip(y.par_chunks(256))
            .zip(rw.par_chunks(256))
            .map(|((xs, ys), ws)| {
                let mut g = vec![vec![0.0f32; dim + 1]; classes];
                let mut l = 0.0f32;
                for ((row, &label), &weight) in xs.iter().zip(ys).zip(ws) {
                    let p = switchyard_router::classifier::softmax(&logits(&w, row));
                    l -= weight * p[label].max(1e-12).ln();
                    for (c, gc) in g.iter_mut().enumerate() {
                        let r = weight * (p[c] - f32::from(u8::from(c == label)));
                        gc[..dim].iter_mut().zip(row).for_each(|(g, x)| *g += r * x);
                        gc[dim] += r;
                    }
                }
                (g, l)
            })
            .reduce(
                || (vec![vec![0.0f32; dim + 1]; classes], 0.0),
                |(mut a, la), (b, lb)| {
                    a.iter_mut()
                        .flatten()
                        .zip(b.iter().flatten())
                        .for_each(|(a, b)| *a += b);
                    (a, la + lb)
                },
            );
        loss = total / n as f32;
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for c in 0..classes {
            for j in 0..=dim {
                let penalty = if j < dim { opts.l2 * w[c][j] } else { 0.0 };
                let g = grad[c][j] / n as f32 + penalty;
                m[c][j] = b1 * m[c][j] + (1.0 - b1) * g;
                v[c][j] = b2 * v[c][j] + (1.0 - b2) * g * g;
                w[c][j] -= opts.lr * (m[c][j] / c1) / ((v[c][j] / c2).sqrt() + eps);
            }
        }
    }
    (w, loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_three_clusters() {
        let centres = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..90 {
            let c = i % 3;
            let jitter = (i as f32 * 0.37).sin() * 0.2;
            let mut row = centres[c].to_vec();
            row[(c + 1) % 3] += jitter;
            x.push(row);
            y.push(c);
        }
        let opts = LogRegOptions {
            l2: 1e-4,
            steps: 200,
            lr: 0.1,
        };
        let (w, loss) = fit(&x, &y, None, 3, opts);
        assert!(loss < 0.1, "loss {loss}");
        // Weighting class 0's rows up moves the boundary towards the other classes.
        let weights: Vec<f32> = y.iter().map(|&c| if c == 0 { 10.0 } else { 1.0 }).collect();
        let (w2, _) = fit(&x, &y, Some(&weights), 3, opts);
        let mid = [0.5, 0.5, 0.0];
        let (z, z2) = (logits(&w, &mid), logits(&w2, &mid));
        assert!(z2[0] - z2[1] > z[0] - z[1], "{z:?} {z2:?}");
        for (row, &label) in x.iter().zip(&y) {
            let z = logits(&w, row);
            let best = (0..3).max_by(|a, b| z[*a].total_cmp(&z[*b])).unwrap();
            assert_eq!(best, label);
        }
        assert_eq!(dot(&[1.0; 11], &[2.0; 11]), 22.0);
    }
}
