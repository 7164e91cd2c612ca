//! Order statistics for the benchmarks: quantiles, and the median with a distribution-free
//! confidence interval (for paired differences, which need no assumption about their shape).

/// The `q`-quantile (nearest rank) of `v`; `v` must not be empty.
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * q).round() as usize]
}

/// The median (upper middle value for an even count); `v` must not be empty.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A median with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct MedianCi {
    /// The sample median.
    pub median: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

/// The median of `v` with the distribution-free 95 % interval `[v(k), v(n + 1 - k)]` of the sorted
/// values (the sign-test interval: `k` is the largest rank with `P(Binomial(n, 1/2) < k) <= 0.025`).
/// `None` below 6 values, where no such interval exists.
pub(crate) fn median_ci(v: &[f64]) -> Option<MedianCi> {
    let n = v.len();
    if n < 6 {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    // P(B <= j) for B ~ Binomial(n, 1/2), summed in logs (n may be large).
    let ln_choose =
        |j: usize| -> f64 { (1..=j).map(|i| ((n + 1 - i) as f64 / i as f64).ln()).sum() };
    let mut cdf = 0.0;
    let mut k = 0;
    for j in 0..n {
        cdf += (ln_choose(j) - n as f64 * std::f64::consts::LN_2).exp();
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
    }
    (k >= 1).then(|| MedianCi {
        median: median(s.clone()),
        low: s[k - 1],
        high: s[n - k],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_ranks() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
    }

    #[test]
    fn median_interval_uses_the_sign_test_ranks() {
        // Tabulated ranks (e.g. Conover, Practical Nonparametric Statistics): n = 6 -> 1st and 6th,
        // n = 10 -> 2nd and 9th, n = 20 -> 6th and 15th, n = 40 -> 14th and 27th.
        for (n, k) in [(6, 1), (10, 2), (20, 6), (40, 14)] {
            let v: Vec<f64> = (1..=n).rev().map(f64::from).collect();
            let ci = median_ci(&v).unwrap();
            assert_eq!((ci.low, ci.high), (k as f64, (n + 1 - k) as f64), "n = {n}");
            assert_eq!(ci.median, (n / 2 + 1) as f64);
        }
        assert!(median_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]).is_none());
        // Large n stays finite and narrows around the middle.
        let v: Vec<f64> = (0..2000).map(f64::from).collect();
        let ci = median_ci(&v).unwrap();
        assert!(ci.low > 940.0 && ci.high < 1060.0 && ci.low < 1000.0 && ci.high > 1000.0);
    }
}
