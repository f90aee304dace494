//! Small statistics used by the metrics and by the offline judge's agreement report.
//!
//! ```
//! use emlab_eval::stats::{auroc, pearson, wilson_interval};
//! // Perfectly separated scores give AUROC 1.
//! assert_eq!(auroc(&[0.9, 0.8, 0.1], &[true, true, false]), Some(1.0));
//! assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
//! let (lo, hi) = wilson_interval(5, 10);
//! assert!(lo < 0.5 && hi > 0.5);
//! ```

/// The 97.5% quantile of the standard normal (two-sided 95% intervals).
pub const Z_95: f64 = 1.959_963_984_540_054;

/// Wilson score interval (95%) for `k` successes out of `n`; `(0, 1)` when `n == 0`.
pub fn wilson_interval(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = Z_95 * Z_95;
    let denom = 1.0 + z2 / n_f;
    let center = (p + z2 / (2.0 * n_f)) / denom;
    let half = Z_95 / denom * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Complementary error function, Numerical Recipes' Chebyshev fit (relative error < 1.2e-7),
/// plenty for p-values.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Percentile of a sample by linear interpolation between order statistics (numpy's default).
/// `q` in [0, 1]; `None` on an empty slice. Sorts a copy.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Area under the ROC curve of `scores` for the binary `labels` (higher score = more positive),
/// ties counted as one half (Mann-Whitney U). `None` if either class is empty or lengths differ.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let ranks = average_ranks(scores);
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let rank_sum: f64 = ranks.iter().zip(labels).filter(|(_, &l)| l).map(|(r, _)| r).sum();
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// 1-based ranks with ties replaced by their average rank.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

/// Pearson correlation; `None` for fewer than 2 points, unequal lengths or zero variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Spearman rank correlation (Pearson on average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Two-sided p-value of the pooled two-proportion z-test of `k1/n1` against `k2/n2`.
/// Returns 1 when the pooled variance is zero (both proportions 0 or both 1), and `None` when a
/// sample is empty.
pub fn two_proportion_p_value(k1: usize, n1: usize, k2: usize, n2: usize) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let pool = (k1 + k2) as f64 / (n1 + n2) as f64;
    let se = (pool * (1.0 - pool) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    let z = (p1 - p2) / se;
    Some((2.0 * (1.0 - normal_cdf(z.abs()))).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_hand_values() {
        // k=0, n=10: center = (0 + 1.92073/10)/1.38415 = 0.138768; half = 1.95996/1.38415 *
        // sqrt(0 + 3.84146/400) = 1.416 * 0.0979982 = 0.138768 -> (0, 0.277533)
        let (lo, hi) = wilson_interval(0, 10);
        assert!(lo.abs() < 1e-12);
        assert!((hi - 0.277_533).abs() < 1e-5, "{hi}");
        // k=5, n=10 symmetric around 0.5: (0.236593, 0.763407)
        let (lo, hi) = wilson_interval(5, 10);
        assert!((lo - 0.236_593).abs() < 1e-5, "{lo}");
        assert!((hi - 0.763_407).abs() < 1e-5, "{hi}");
    }

    #[test]
    fn normal_cdf_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
    }

    #[test]
    fn auroc_with_ties() {
        // pos scores {0.8, 0.4}, neg {0.4, 0.1}: pairs (0.8>0.4)=1,(0.8>0.1)=1,(0.4=0.4)=0.5,(0.4>0.1)=1
        // -> 3.5/4
        let a = auroc(&[0.8, 0.4, 0.4, 0.1], &[true, true, false, false]).unwrap();
        assert!((a - 0.875).abs() < 1e-12);
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn correlations() {
        // y = x^3 is monotone: Spearman 1, Pearson < 1
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [1.0, 8.0, 27.0, 64.0];
        assert!((spearman(&x, &y).unwrap() - 1.0).abs() < 1e-12);
        // hand: mx=2.5, my=25; sxy=(-1.5*-24)+(-0.5*-17)+(0.5*2)+(1.5*39)=36+8.5+1+58.5=104
        // sxx=5, syy=576+289+4+1521=2390 -> 104/sqrt(11950)=0.951369
        assert!((pearson(&x, &y).unwrap() - 0.951_369).abs() < 1e-5);
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), None);
    }

    #[test]
    fn two_proportion_test() {
        // 30/100 vs 15/100: pool 0.225, se = sqrt(.225*.775*.02)=0.059054, z=2.54000,
        // p = 2*(1-Phi(2.54000)) = 0.011085
        let p = two_proportion_p_value(30, 100, 15, 100).unwrap();
        assert!((p - 0.011_085).abs() < 1e-5, "{p}");
        assert_eq!(two_proportion_p_value(0, 10, 0, 20), Some(1.0));
        assert_eq!(two_proportion_p_value(0, 0, 0, 20), None);
    }

    #[test]
    fn percentile_interpolates() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert!((percentile(&v, 0.5).unwrap() - 2.5).abs() < 1e-12);
        assert_eq!(percentile(&[], 0.5), None);
    }
}
