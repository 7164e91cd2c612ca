//! The bag-of-words floor the design names, on the router's own split: TF-IDF over word 1–2-grams
//! (lowercased alphanumeric words, terms in at least 2 training texts, sublinear tf, smooth idf,
//! L2-normalised) and a one-vs-rest linear SVM (squared hinge, C = 1, as scikit-learn's
//! `LinearSVC`), trained by dual coordinate descent.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub use switchyard_router::lexical::{Sparse, Tfidf};

/// One-vs-rest linear SVM; the last weight of each class is its bias (a constant feature of 1).
pub struct LinearSvm {
    w: Vec<Vec<f32>>,
}

/// Most passes over the data per class (scikit-learn's `LinearSVC` default `max_iter`).
const MAX_PASSES: usize = 1000;

/// Stop when the projected gradient's spread over a pass, `max PG − min PG`, is at most this
/// (liblinear's rule; scikit-learn's `tol` is 1e-4, looser here for f32 sums).
const TOLERANCE: f32 = 1e-3;

impl LinearSvm {
    pub fn train(x: &[Sparse], y: &[usize], classes: usize, dim: usize, seed: u64) -> Self {
        let c = 1.0f32;
        let d = 1.0 / (2.0 * c);
        let mut rng = StdRng::seed_from_u64(seed);
        let qii: Vec<f32> = x
            .iter()
            .map(|v| v.iter().map(|e| e.1 * e.1).sum::<f32>() + 1.0 + d)
            .collect();
        let w = (0..classes)
            .map(|k| {
                let mut w = vec![0f32; dim + 1];
                let mut alpha = vec![0f32; x.len()];
                let mut order: Vec<usize> = (0..x.len()).collect();
                let mut gap = f32::INFINITY;
                let mut passes = 0;
                while passes < MAX_PASSES && gap > TOLERANCE {
                    passes += 1;
                    order.shuffle(&mut rng);
                    let (mut max_pg, mut min_pg) = (f32::NEG_INFINITY, f32::INFINITY);
                    for &i in &order {
                        let yi = if y[i] == k { 1.0 } else { -1.0 };
                        let wx: f32 =
                            x[i].iter().map(|(j, v)| w[*j as usize] * v).sum::<f32>() + w[dim];
                        let g = yi * wx - 1.0 + d * alpha[i];
                        let pg = if alpha[i] == 0.0 { g.min(0.0) } else { g };
                        max_pg = max_pg.max(pg);
                        min_pg = min_pg.min(pg);
                        if pg != 0.0 {
                            let old = alpha[i];
                            alpha[i] = (old - g / qii[i]).max(0.0);
                            let delta = (alpha[i] - old) * yi;
                            for (j, v) in &x[i] {
                                w[*j as usize] += delta * v;
                            }
                            w[dim] += delta;
                        }
                    }
                    gap = max_pg - min_pg;
                }
                if gap > TOLERANCE {
                    tracing::warn!(
                        class = k,
                        passes,
                        gap,
                        "the linear SVM stopped at its pass limit before converging"
                    );
                } else {
                    tracing::debug!(class = k, passes, gap, "linear SVM converged");
                }
                w
            })
            .collect();
        Self { w }
    }

    /// Per class, the weights with the bias last.
    pub fn into_weights(self) -> Vec<Vec<f32>> {
        self.w
    }

    pub fn predict(&self, v: &Sparse) -> usize {
        let dim = self.w[0].len() - 1;
        self.w
            .iter()
            .map(|w| v.iter().map(|(j, x)| w[*j as usize] * x).sum::<f32>() + w[dim])
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, s)| if s > b.1 { (i, s) } else { b },
            )
            .0
    }
}

/// Fits on `(text, label)` training pairs; returns a predictor over texts.
pub fn fit(train: &[(&str, usize)], classes: usize, seed: u64) -> impl Fn(&str) -> usize {
    let tfidf = Tfidf::fit(train.iter().map(|t| t.0));
    let x: Vec<Sparse> = train.iter().map(|t| tfidf.transform(t.0)).collect();
    let y: Vec<usize> = train.iter().map(|t| t.1).collect();
    let svm = LinearSvm::train(&x, &y, classes, tfidf.dim(), seed);
    move |text: &str| svm.predict(&tfidf.transform(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_two_topics() {
        let mut train = Vec::new();
        for i in 0..50 {
            train.push((format!("the cell membrane protein {i} in biology"), 0));
            train.push((
                format!("the court ruled the contract {i} void under law"),
                1,
            ));
        }
        let refs: Vec<(&str, usize)> = train.iter().map(|(t, l)| (t.as_str(), *l)).collect();
        let f = fit(&refs, 2, 0);
        assert_eq!(f("a protein in the cell membrane"), 0);
        assert_eq!(f("the court and the contract"), 1);
    }
}
