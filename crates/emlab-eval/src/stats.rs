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

/// Two-sided p-value of Fisher's exact test of `k1/n1` against `k2/n2`: the probability, with
/// both margins fixed (hypergeometric), of a table at most as likely as the observed one. Valid
/// at any count, where the z-test of [`two_proportion_p_value`] is not (4 of 240 against 0 of
/// 240: z-test 0.045, exact 0.12). `None` when a sample is empty.
pub fn fisher_exact_p_value(k1: usize, n1: usize, k2: usize, n2: usize) -> Option<f64> {
    if n1 == 0 || n2 == 0 || k1 > n1 || k2 > n2 {
        return None;
    }
    let (k, n) = (k1 + k2, n1 + n2);
    let ln_choose = |n: usize, r: usize| ln_gamma(n as f64 + 1.0) - ln_gamma(r as f64 + 1.0) - ln_gamma((n - r) as f64 + 1.0);
    let ln_p = |x: usize| ln_choose(n1, x) + ln_choose(n2, k - x) - ln_choose(n, k);
    let observed = ln_p(k1);
    // Tables as likely as the observed one count too; the relative slack absorbs rounding in
    // the log-gamma sums (R's fisher.test uses 1e-7 the same way).
    let cut = observed + 1e-7;
    let p: f64 = (k.saturating_sub(n2)..=k.min(n1)).map(ln_p).filter(|&l| l <= cut).map(f64::exp).sum();
    Some(p.min(1.0))
}

/// `ln Γ(x)` for `x > 0`: Lanczos' series (g = 7, nine terms), ~1e-15 relative; the reflection
/// formula is not needed (the t distribution only asks for `x >= 0.5`).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    // The published coefficients, to more digits than an f64 holds.
    #[allow(clippy::excessive_precision)]
    const C: [f64; 9] = [
        0.999_999_999_999_809_93,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_13,
        -176.615_029_162_140_59,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_571_6e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + G + 0.5;
    let sum = C[1..].iter().enumerate().fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularized incomplete beta function `I_x(a, b)`, `a, b > 0`, `x` in [0, 1]: its
/// continued fraction, evaluated by the modified Lentz method on whichever of `x` and `1 - x`
/// converges fast (`x < (a + 1) / (a + b + 2)`), the other through `I_x(a, b) = 1 - I_{1-x}(b, a)`.
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(b, a, 1.0 - x);
    }
    let front = (a * x.ln() + b * (1.0 - x).ln() - (ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b))).exp() / a;
    // f = 1 / (1 + d1 / (1 + d2 / (1 + ...))) with d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1))
    // and d_{2m} = m(b-m)x / ((a+2m-1)(a+2m)), by modified Lentz: f is the fraction
    // b0 + a1 / (b1 + a2 / (b2 + ...)) with b0 = 0, every b_j = 1, a1 = 1 and a_j = d_{j-1}.
    const TINY: f64 = 1e-300;
    let (mut c, mut d, mut f) = (TINY, 0.0, TINY);
    for j in 1..=400 {
        let num = if j == 1 {
            1.0
        } else {
            let k = j - 1;
            let m = (k / 2) as f64;
            if k % 2 == 0 {
                m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
            } else {
                -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
            }
        };
        d = 1.0 + num * d;
        d = 1.0 / if d.abs() < TINY { TINY } else { d };
        c = 1.0 + num / c;
        c = if c.abs() < TINY { TINY } else { c };
        let delta = c * d;
        f *= delta;
        if j > 1 && (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f
}

/// Student's t distribution function with `df > 0` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile of Student's t with `df` degrees of freedom (bisection on [`student_t_cdf`]:
/// 200 halvings of a bracket that doubles until it holds the answer; exact to f64 rounding).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    if !(0.0 < p && p < 1.0) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (-1.0, 1.0);
    while student_t_cdf(lo, df) > p {
        lo *= 2.0;
    }
    while student_t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A mean with its sample standard deviation and two-sided 95% t interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanCi {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); `None` for one value.
    pub sd: Option<f64>,
    /// 95% t interval on n - 1 degrees of freedom; `None` for one value.
    pub ci: Option<(f64, f64)>,
}

/// Mean, SD and 95% t interval of `values` (`None` when empty).
pub fn mean_t_interval(values: &[f64]) -> Option<MeanCi> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some(MeanCi { n, mean, sd: None, ci: None });
    }
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let half = student_t_quantile(0.975, (n - 1) as f64) * sd / (n as f64).sqrt();
    Some(MeanCi { n, mean, sd: Some(sd), ci: Some((mean - half, mean + half)) })
}

/// Welch's two-sample t test of `mean(a) - mean(b)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Welch {
    pub difference: f64,
    /// Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    pub ci: (f64, f64),
    /// Two-sided.
    pub p_value: f64,
}

/// Welch's t test (unequal variances) of `a` against `b`. `None` when a side has fewer than two
/// values, or when both sides have zero variance (every replicate gave the same rate: no spread
/// to test against; the difference itself is still `mean(a) - mean(b)`).
pub fn welch_t_test(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (ma, mb) = (mean_t_interval(a)?, mean_t_interval(b)?);
    let (sa, sb) = (ma.sd?, mb.sd?);
    let (va, vb) = (sa * sa / a.len() as f64, sb * sb / b.len() as f64);
    let se2 = va + vb;
    if se2 <= 0.0 {
        return None;
    }
    let df = se2 * se2 / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    let d = ma.mean - mb.mean;
    let se = se2.sqrt();
    let half = student_t_quantile(0.975, df) * se;
    let p = (2.0 * student_t_cdf(-(d / se).abs(), df)).clamp(0.0, 1.0);
    Some(Welch { difference: d, df, ci: (d - half, d + half), p_value: p })
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

    #[test]
    fn student_t_against_closed_forms_and_tables() {
        // df = 1 is the Cauchy distribution, df = 2 has a closed form: independent references.
        for t in [-30.0, -3.0, -0.5, 0.0, 0.7, 2.0, 12.706_204_736] {
            let cauchy = 0.5 + f64::atan(t) / std::f64::consts::PI;
            assert!((student_t_cdf(t, 1.0) - cauchy).abs() < 1e-12, "df 1, t {t}");
            let two = 0.5 + t / (2.0 * (2.0 + t * t).sqrt());
            assert!((student_t_cdf(t, 2.0) - two).abs() < 1e-12, "df 2, t {t}");
        }
        // Printed tables' two-sided 95% critical values (to their 4-5 decimals).
        for (df, q) in [(1.0, 12.7062), (2.0, 4.3027), (3.0, 3.1824), (4.0, 2.7764), (9.0, 2.2622), (30.0, 2.0423)] {
            assert!((student_t_quantile(0.975, df) - q).abs() < 1e-4, "df {df}: {}", student_t_quantile(0.975, df));
        }
        // Large df tends to the normal.
        assert!((student_t_cdf(1.959_964, 1e7) - 0.975).abs() < 1e-6);
        // ln Γ: Γ(0.5) = sqrt(pi), Γ(5) = 24, Γ(10.5) = 1133278.3889487856.
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(10.5) - 1_133_278.388_948_785_6f64.ln()).abs() < 1e-12);
        // I_x(1, 1) = x, I_x(a, 1) = x^a.
        assert!((incomplete_beta(1.0, 1.0, 0.3) - 0.3).abs() < 1e-14);
        assert!((incomplete_beta(3.0, 1.0, 0.6) - 0.216).abs() < 1e-14);
    }

    #[test]
    fn t_interval_and_welch_by_hand() {
        // 0.1, 0.2, 0.3: mean 0.2, sd 0.1, half = 4.302653 * 0.1 / sqrt(3) = 0.248414.
        let m = mean_t_interval(&[0.1, 0.2, 0.3]).unwrap();
        assert!((m.mean - 0.2).abs() < 1e-12 && (m.sd.unwrap() - 0.1).abs() < 1e-12);
        let (lo, hi) = m.ci.unwrap();
        assert!((lo - (0.2 - 0.248_414)).abs() < 1e-5 && (hi - (0.2 + 0.248_414)).abs() < 1e-5, "{lo} {hi}");
        assert_eq!(mean_t_interval(&[0.4]).unwrap().ci, None);
        assert!(mean_t_interval(&[]).is_none());
        // Welch: a = [1, 2, 3] (var 1), b = [4, 6, 8] (var 4): se^2 = 1/3 + 4/3 = 5/3,
        // df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.777.. / (1/18 + 16/18) = 2.941176;
        // difference 2 - 6 = -4, t = -4 / 1.290994 = -3.098387; p = 2 * cdf_t(-3.098387, 2.941176).
        let w = welch_t_test(&[1.0, 2.0, 3.0], &[4.0, 6.0, 8.0]).unwrap();
        assert!((w.difference + 4.0).abs() < 1e-12);
        assert!((w.df - 2.941_176_470_588).abs() < 1e-9, "{}", w.df);
        let p = 2.0 * student_t_cdf(-3.098_386_677, w.df);
        assert!((w.p_value - p).abs() < 1e-8, "{}", w.p_value);
        // The same p by numerical integration of the t density (Python, midpoint rule over the
        // tail mapped onto [0, 1), 4e5 points): 0.05478676604.
        assert!((w.p_value - 0.054_786_766).abs() < 1e-8, "{}", w.p_value);
        let half = student_t_quantile(0.975, w.df) * (5.0f64 / 3.0).sqrt();
        assert!((w.ci.0 - (-4.0 - half)).abs() < 1e-9 && (w.ci.1 - (-4.0 + half)).abs() < 1e-9);
        // No spread on either side: no test.
        assert!(welch_t_test(&[0.0, 0.0], &[0.0, 0.0]).is_none());
        assert!(welch_t_test(&[0.1], &[0.0, 0.2]).is_none());
    }

    #[test]
    fn fisher_exact_against_exact_fractions() {
        // References: the same sums in exact integer arithmetic (Python's math.comb / fractions).
        for (k1, n1, k2, n2, want) in [
            (4, 240, 0, 240, 0.123_435_879_255_787_08),
            (7, 240, 0, 240, 0.014_947_144_518_640_912),
            (4, 240, 2, 240, 0.685_530_444_854_010_8),
            (3, 10, 7, 10, 0.178_895_407_997_575_17),
            (0, 72, 0, 72, 1.0),
        ] {
            let p = fisher_exact_p_value(k1, n1, k2, n2).unwrap();
            assert!((p - want).abs() < 1e-9 * want.max(1e-3), "{k1}/{n1} vs {k2}/{n2}: {p} vs {want}");
        }
        assert_eq!(fisher_exact_p_value(1, 0, 0, 5), None);
        assert_eq!(fisher_exact_p_value(6, 5, 0, 5), None);
        // Symmetric in the two samples.
        assert_eq!(fisher_exact_p_value(3, 10, 7, 10), fisher_exact_p_value(7, 10, 3, 10));
    }
}
