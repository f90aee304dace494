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
    let k = k1 + k2;
    let ln_fact = |i: usize| ln_gamma(i as f64 + 1.0);
    let ln_p = |x: usize| ln_hypergeom(&ln_fact, n1, n2, k, x);
    let observed = ln_p(k1);
    // Tables as likely as the observed one count too (see FISHER_TIE_SLACK).
    let cut = observed + FISHER_TIE_SLACK;
    let p: f64 = (k.saturating_sub(n2)..=k.min(n1)).map(ln_p).filter(|&l| l <= cut).map(f64::exp).sum();
    Some(p.min(1.0))
}

/// Slack, in log probability (so relative in probability), under which [`fisher_exact_p_value`]
/// counts a table as likely as the observed one: it absorbs rounding in the log-gamma sums, so
/// that mirror-image tables of equal probability are both counted (R's fisher.test uses 1e-7
/// the same way). [`fisher_exact_power`] decides with the same slack on the same log values.
const FISHER_TIE_SLACK: f64 = 1e-7;

/// `ln P(X = x)` for the hypergeometric law of the first cell of a 2x2 table with row sums `n1`,
/// `n2` and first column sum `k`, from `ln_fact(i) = ln i!`. The one formula both
/// [`fisher_exact_p_value`] and [`fisher_exact_power`] evaluate, so that, given the same
/// `ln i!` values, their log probabilities are equal to the last bit.
fn ln_hypergeom(ln_fact: &impl Fn(usize) -> f64, n1: usize, n2: usize, k: usize, x: usize) -> f64 {
    let ln_choose = |n: usize, r: usize| ln_fact(n) - ln_fact(r) - ln_fact(n - r);
    ln_choose(n1, x) + ln_choose(n2, k - x) - ln_choose(n1 + n2, k)
}

/// Binomial tail mass left out on each side of a group's count distribution by
/// [`fisher_exact_power`]: its power is exact to within 4e-17 plus rounding.
const POWER_TAIL: f64 = 1e-17;

/// Tables with `ln P < ln(alpha) - POWER_NEGLIGIBLE_LN` are beyond the window a power pass looks
/// at: each has probability below `alpha * 2e-22`, so even 40,000 of them (every table of a
/// 20,000-per-group test) sum to less than `alpha * 1e-17`, and every one of them is rejected.
const POWER_NEGLIGIBLE_LN: f64 = 50.0;

/// The exact power of the two-sided Fisher exact test ([`fisher_exact_p_value`], tables at
/// most as likely as the observed one) at level `alpha`, with `n` answers in each of two groups
/// whose true rates are `p1` and `p2`:
///
/// `sum over x1, x2 of Bin(x1; n, p1) Bin(x2; n, p2) [fisher_exact_p_value(x1, n, x2, n) <= alpha]`.
///
/// `None` when `n == 0`, a rate is outside [0, 1] or `alpha` outside (0, 1). The test decides
/// exactly as [`fisher_exact_p_value`] does (same log probabilities, same tie slack; a p-value
/// within 1e-9 relative of `alpha` is decided by calling it). Cost: one pass over the totals
/// `k = x1 + x2` with non-negligible probability, each a walk over the tails of the
/// hypergeometric law of `k` (at most O(n) each, O(n^2) in all): about 0.5 ms at n = 5,000
/// per group and rates near 1% (2-core CPU). The binomial tails dropped (see `POWER_TAIL`)
/// bound the error by 4e-17 plus the rounding of `ln i!` (~1e-10 relative at n = 20,000).
///
/// ```
/// use emlab_eval::stats::fisher_exact_power;
/// // 2% against 0% with 388 answers each (what the z-test formula asks for): 78.9%, not 80%.
/// let power = fisher_exact_power(388, 0.02, 0.0, 0.05).unwrap();
/// assert!(power > 0.7 && power < 0.8);
/// ```
pub fn fisher_exact_power(n: usize, p1: f64, p2: f64, alpha: f64) -> Option<f64> {
    if n == 0 || !power_inputs_valid(p1, p2, alpha) {
        return None;
    }
    let ln_fact = ln_factorials(2 * n);
    Some(power_pass(&ln_fact, n, p1, p2, alpha, true).fisher)
}

/// The smallest number of answers per group at which the two-sided Fisher exact test at level
/// `alpha` reaches `power` ([`fisher_exact_power`]) for rates `p1` and `p2`; `None` when no `n`
/// up to `max_n` does (equal rates never do), or on a rate outside [0, 1], `alpha` outside
/// (0, 1) or `power` outside (0, 1).
///
/// The power of an exact test is not monotone in `n` (a saw-tooth: one more answer per group can
/// lower it, for 25% against 0% by 13 points from 24 to 25 per group), so this is the *first*
/// `n` that reaches `power`, and some larger `n` just past it may fall short again. The search is exact for that definition: no `n`
/// below the answer reaches `power`. It does not evaluate every `n` from 1: it first finds, by
/// bisection, the smallest `n` at which a monotone upper bound reaches `power`, then scans
/// upward from there. The bound is the power of the randomized conditional test with `alpha/2`
/// in each tail (Tocher's test): with equal groups the null distribution given the total is
/// symmetric, so Fisher's two-sided test rejects only where that test rejects with probability
/// one, and that test is uniformly most powerful unbiased, hence at least as powerful with
/// `n + 1` answers per group as with `n` (it could ignore the last pair).
///
/// Cost: a few dozen power passes plus the scan (2-core CPU: 1% against 0.5%, 4,923 per
/// group, about 0.2 s; 5% against 4%, 6,928 per group, about 0.7 s).
///
/// ```
/// use emlab_eval::stats::fisher_exact_sample_size;
/// // The z-test formula says 388 per group for 2% against 0%; the exact test needs more.
/// let n = fisher_exact_sample_size(0.02, 0.0, 0.05, 0.8, 20_000).unwrap();
/// assert!(n > 388);
/// assert_eq!(fisher_exact_sample_size(0.02, 0.02, 0.05, 0.8, 20_000), None);
/// ```
pub fn fisher_exact_sample_size(p1: f64, p2: f64, alpha: f64, power: f64, max_n: usize) -> Option<usize> {
    if max_n == 0 || !power_inputs_valid(p1, p2, alpha) || !in_open_unit(power) {
        return None;
    }
    if p1 == p2 && power > alpha {
        // Fisher's test has size at most alpha: no n reaches a power above it.
        return None;
    }
    let ln_fact = ln_factorials(2 * max_n);
    let bound = |n: usize| power_pass(&ln_fact, n, p1, p2, alpha, false).bound;
    // The bound is computed to ~1e-10 (rounding of ln i! and the binomial pmfs); asking it for a
    // little less than `power` keeps it an upper bound after rounding.
    let wanted = power - 1e-9;
    if bound(max_n) < wanted {
        return None;
    }
    // Smallest n with bound(n) >= wanted: gallop up from 1 (cheap small passes), then bisect.
    // Invariant: bound(lo) < wanted (lo = 0: no answers, no power), bound(hi) >= wanted.
    let (mut lo, mut hi) = (0, 1);
    while hi < max_n && bound(hi) < wanted {
        lo = hi;
        hi = (2 * hi).min(max_n);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if bound(mid) >= wanted {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    (hi..=max_n).find(|&n| power_pass(&ln_fact, n, p1, p2, alpha, true).fisher >= power)
}

/// Rates in [0, 1] and a level in (0, 1) (NaN fails both).
fn power_inputs_valid(p1: f64, p2: f64, alpha: f64) -> bool {
    (0.0..=1.0).contains(&p1) && (0.0..=1.0).contains(&p2) && in_open_unit(alpha)
}

fn in_open_unit(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

/// `ln i!` for `i` in `0..=m`, as `ln_gamma(i + 1)`: the values [`fisher_exact_p_value`] computes.
fn ln_factorials(m: usize) -> Vec<f64> {
    (0..=m).map(|i| ln_gamma(i as f64 + 1.0)).collect()
}

/// `Bin(x; n, p)` for `x` in `0..=n`.
fn binomial_pmf(ln_fact: &[f64], n: usize, p: f64) -> Vec<f64> {
    let mut pmf = vec![0.0; n + 1];
    if p == 0.0 {
        pmf[0] = 1.0;
    } else if p == 1.0 {
        pmf[n] = 1.0;
    } else {
        let (lp, lq) = (p.ln(), (-p).ln_1p());
        for (x, v) in pmf.iter_mut().enumerate() {
            *v = (ln_fact[n] - ln_fact[x] - ln_fact[n - x] + x as f64 * lp + (n - x) as f64 * lq).exp();
        }
    }
    pmf
}

/// The inclusive range of `pmf` left after dropping at most `POWER_TAIL` of mass from each end.
fn bulk(pmf: &[f64]) -> (usize, usize) {
    let (mut a, mut e) = (0, pmf.len() - 1);
    let mut dropped = 0.0;
    while a < e && dropped + pmf[a] <= POWER_TAIL {
        dropped += pmf[a];
        a += 1;
    }
    dropped = 0.0;
    while e > a && dropped + pmf[e] <= POWER_TAIL {
        dropped += pmf[e];
        e -= 1;
    }
    (a, e)
}

/// What one pass over the outcomes with `n` answers per group gives.
struct PowerPass {
    /// Power of the two-sided Fisher exact test (when asked for).
    fisher: f64,
    /// Power of the conditional randomized test with `alpha/2` in each tail: an upper bound on
    /// `fisher` that never decreases with `n` (see [`fisher_exact_sample_size`]).
    bound: f64,
}

/// The core of [`fisher_exact_power`]: conditions on the total `k = x1 + x2`. Given `k`, the
/// null law of `x1` is hypergeometric, and a table's p-value is the mass of the tables within
/// `FISHER_TIE_SLACK` of its probability or below, so it grows with the table's probability:
/// the rejection set is the least likely tables, taken in increasing probability while their
/// p-value stays at most `alpha`. The law is unimodal, so that order is a merge of its two
/// tails walked inward from both ends; the walk stops at the first table not rejected, and
/// visits (and exponentiates) only the tails. `ln_fact` must reach `2n`.
fn power_pass(ln_fact: &[f64], n: usize, p1: f64, p2: f64, alpha: f64, want_fisher: bool) -> PowerPass {
    let lf = |i: usize| ln_fact[i];
    let (b1, b2) = (binomial_pmf(ln_fact, n, p1), binomial_pmf(ln_fact, n, p2));
    let ((a1, e1), (a2, e2)) = (bulk(&b1), bulk(&b2));
    let floor = alpha.ln() - POWER_NEGLIGIBLE_LN;
    let half = alpha / 2.0;
    let (mut fisher, mut bound) = (0.0, 0.0);
    for k in a1 + a2..=e1 + e2 {
        // The x1 values this total can come from within both groups' bulk.
        let (xa, xb) = (a1.max(k.saturating_sub(e2)), e1.min(k - a2));
        if xa > xb {
            continue;
        }
        let (lo, hi) = (k.saturating_sub(n), k.min(n));
        let ln_p = |x: usize| ln_hypergeom(&lf, n, n, k, x);
        // Equal groups: the null law is symmetric about k/2, with its mode at ceil(k/2). The
        // window [wl, wr] is every x with ln P(x) >= floor; outside it every table is rejected
        // (POWER_NEGLIGIBLE_LN). ln P rises up to the mode and falls after it, so each end is
        // found by bisection.
        let mode = k.div_ceil(2).clamp(lo, hi);
        let wl = if ln_p(lo) >= floor {
            lo
        } else {
            let (mut a, mut b) = (lo, mode); // ln_p(a) < floor <= ln_p(b)
            while b - a > 1 {
                let m = a + (b - a) / 2;
                if ln_p(m) >= floor {
                    b = m;
                } else {
                    a = m;
                }
            }
            b
        };
        let wr = if ln_p(hi) >= floor {
            hi
        } else {
            let (mut a, mut b) = (mode, hi); // ln_p(a) >= floor > ln_p(b)
            while b - a > 1 {
                let m = a + (b - a) / 2;
                if ln_p(m) >= floor {
                    a = m;
                } else {
                    b = m;
                }
            }
            a
        };
        // Rejected: x < li or x > ri (and everything outside the window).
        let (mut li, mut ri) = (wl, wr);
        let mut all_rejected = false;
        if want_fisher {
            // The tables not yet decided, [li, ri], and those whose probability is not yet in
            // `mass`, [lj, rj], are intervals holding the mode, so the least likely of them is
            // at one of their ends (the left one on a tie); `mass` runs ahead of the decisions
            // to take in every table within the slack of the one being decided. The ends' log
            // probabilities are kept (`vli` ...) rather than recomputed.
            let (mut vli, mut vri) = (ln_p(li), ln_p(ri));
            let (mut lj, mut rj, mut vlj, mut vrj) = (li, ri, vli, vri);
            let (mut mass, mut open) = (0.0, true);
            loop {
                let (x, v) = if li == ri || vli <= vri { (li, vli) } else { (ri, vri) };
                let cut = v + FISHER_TIE_SLACK;
                while open {
                    let take_left = lj == rj || vlj <= vrj;
                    let u = if take_left { vlj } else { vrj };
                    if u > cut {
                        break;
                    }
                    mass += u.exp();
                    if lj == rj {
                        open = false;
                    } else if take_left {
                        lj += 1;
                        vlj = ln_p(lj);
                    } else {
                        rj -= 1;
                        vrj = ln_p(rj);
                    }
                }
                let reject = if (mass - alpha).abs() <= 1e-9 * alpha {
                    // Too close to call from sums in another order: ask the test itself.
                    fisher_exact_p_value(x, n, k - x, n).is_some_and(|p| p <= alpha)
                } else {
                    mass <= alpha
                };
                if !reject {
                    break;
                }
                if li == ri {
                    all_rejected = true;
                    break;
                } else if x == li {
                    li += 1;
                    vli = ln_p(li);
                } else {
                    ri -= 1;
                    vri = ln_p(ri);
                }
            }
        }
        // The randomized test: reject above c, with probability gamma at c, and the mirror
        // image below k - c; c the largest x whose upper tail P(Y >= x) exceeds alpha/2 (the
        // tail beyond the window left out: the test's size is then a hair above alpha, which
        // keeps the bound an upper bound).
        let (mut c, mut tail) = (wr, 0.0);
        let mut hc = ln_p(c).exp();
        while c > wl && tail + hc <= half {
            tail += hc;
            c -= 1;
            hc = ln_p(c).exp();
        }
        let gamma = ((half - tail) / hc).clamp(0.0, 1.0);
        let phi = |x: usize| {
            let up = if x > c {
                1.0
            } else if x == c {
                gamma
            } else {
                0.0
            };
            let down = if x + c < k {
                1.0
            } else if x + c == k {
                gamma
            } else {
                0.0
            };
            f64::min(up + down, 1.0)
        };
        for x in xa..=xb {
            let weight = b1[x] * b2[k - x];
            bound += weight * phi(x);
            if want_fisher && (all_rejected || x < li || x > ri) {
                fisher += weight;
            }
        }
    }
    PowerPass { fisher, bound }
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

    /// `Bin(x; n, p)` by direct products, independent of the log-space pmf the power uses.
    fn binomial_direct(n: usize, x: usize, p: f64) -> f64 {
        let choose = (0..x).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64);
        choose * p.powi(x as i32) * (1.0 - p).powi((n - x) as i32)
    }

    /// The definition, summed over every outcome, calling the test itself.
    fn power_brute_force(n: usize, p1: f64, p2: f64, alpha: f64) -> f64 {
        let mut power = 0.0;
        for x1 in 0..=n {
            for x2 in 0..=n {
                if fisher_exact_p_value(x1, n, x2, n).unwrap() <= alpha {
                    power += binomial_direct(n, x1, p1) * binomial_direct(n, x2, p2);
                }
            }
        }
        power
    }

    #[test]
    fn fisher_power_equals_the_double_sum() {
        for (n, p1, p2, alpha) in [
            (1, 0.5, 0.2, 0.05),
            (3, 0.9, 0.1, 0.2),
            (5, 0.5, 0.1, 0.05),
            (8, 0.7, 0.2, 0.05),
            (12, 0.3, 0.05, 0.05),
            (12, 0.05, 0.3, 0.01),
            (20, 0.02, 0.0, 0.05),
            (20, 1.0, 0.4, 0.05),
            (25, 0.3, 0.05, 0.05),
            (30, 0.5, 0.5, 0.05),
            (40, 0.2, 0.02, 0.05),
            (40, 0.15, 0.1, 0.1),
        ] {
            let want = power_brute_force(n, p1, p2, alpha);
            let got = fisher_exact_power(n, p1, p2, alpha).unwrap();
            assert!((got - want).abs() < 1e-12, "n {n}, {p1} vs {p2}, alpha {alpha}: {got} vs {want}");
        }
        // A level equal to a p-value the test attains: those tables are rejected (p <= alpha).
        // For 1/7 against 6/7 the sum in increasing order of probability (the power's) comes
        // out one ulp above the test's own: such ties are decided by calling the test.
        for (n, x1, x2, p1, p2) in
            [(5, 5, 0, 0.7, 0.2), (10, 8, 2, 0.6, 0.3), (30, 9, 2, 0.3, 0.1), (7, 1, 6, 0.2, 0.7), (6, 1, 5, 0.3, 0.8)]
        {
            let alpha = fisher_exact_p_value(x1, n, x2, n).unwrap();
            let want = power_brute_force(n, p1, p2, alpha);
            let got = fisher_exact_power(n, p1, p2, alpha).unwrap();
            assert!((got - want).abs() < 1e-12, "n {n}, alpha = p({x1}, {x2}) = {alpha}: {got} vs {want}");
        }
        assert_eq!(fisher_exact_power(0, 0.1, 0.2, 0.05), None);
        assert_eq!(fisher_exact_power(10, 1.1, 0.2, 0.05), None);
        assert_eq!(fisher_exact_power(10, 0.1, 0.2, 0.0), None);
    }

    /// Independent references: scipy 1.17.1, by enumeration (`fisher_exact`'s own tie rule is
    /// a relative 1e-14, ours 1e-7; no table here falls between):
    ///
    /// ```python
    /// from scipy.stats import fisher_exact, binom
    /// def power(n, p1, p2, alpha=0.05):
    ///     b1 = binom.pmf(range(n + 1), n, p1); b2 = binom.pmf(range(n + 1), n, p2)
    ///     return sum(b1[x1] * b2[x2] for x1 in range(n + 1) for x2 in range(n + 1)
    ///                if b1[x1] * b2[x2] > 0 and fisher_exact([[x1, n - x1], [x2, n - x2]])[1] <= alpha)
    /// def first_n(p1, p2):  # every n from 1 up
    ///     n = 1
    ///     while power(n, p1, p2) < 0.8: n += 1
    ///     return n
    /// ```
    #[test]
    fn fisher_power_against_scipy() {
        for (n, p1, p2, want) in [
            (10, 0.5, 0.1, 0.295_055_047_702_343_6),
            (25, 0.3, 0.05, 0.549_242_833_475_408_4),
            (40, 0.2, 0.02, 0.644_152_278_362_523_8),
            (60, 0.1, 0.0, 0.562_834_129_262_873),
            (388, 0.02, 0.0, 0.788_561_607_835_422_1),
            (393, 0.02, 0.0, 0.798_382_725_088_819_6),
            (394, 0.02, 0.0, 0.800_303_983_048_478_9),
            (38, 0.3, 0.05, 0.792_009_519_632_917_4),
            (39, 0.3, 0.05, 0.806_845_737_342_954_6),
        ] {
            let got = fisher_exact_power(n, p1, p2, 0.05).unwrap();
            assert!((got - want).abs() < 1e-12, "n {n}, {p1} vs {p2}: {got} vs scipy {want}");
        }
        // first_n(0.02, 0.0) = 394, first_n(0.3, 0.05) = 39 (the z-test formula: 388 and 36).
        assert_eq!(fisher_exact_sample_size(0.02, 0.0, 0.05, 0.8, 20_000), Some(394));
        assert_eq!(fisher_exact_sample_size(0.3, 0.05, 0.05, 0.8, 20_000), Some(39));
    }

    /// With equal rates the power is the test's size, which Fisher's test keeps at or below
    /// alpha at every n and rate (it is conservative).
    #[test]
    fn fisher_power_with_equal_rates_is_at_most_alpha() {
        for n in [1, 2, 7, 30, 100, 500] {
            for p in [0.0, 0.01, 0.05, 0.3, 0.5, 0.9, 1.0] {
                for alpha in [0.01, 0.05, 0.2] {
                    let size = fisher_exact_power(n, p, p, alpha).unwrap();
                    assert!(size <= alpha + 1e-12, "n {n}, p {p}, alpha {alpha}: size {size}");
                }
            }
        }
        // Not vacuous: at a moderate n and rate the size is a good part of alpha.
        assert!(fisher_exact_power(100, 0.3, 0.3, 0.05).unwrap() > 0.02);
    }

    /// The search's upper bound really bounds the power and never decreases with n; and the
    /// search finds the first n a scan of every n from 1 finds.
    #[test]
    fn sample_size_search_is_the_first_crossing() {
        let mut falls = 0;
        for (p1, p2) in [(0.5, 0.1), (0.3, 0.05), (0.6, 0.3), (0.25, 0.0)] {
            let lf = ln_factorials(2 * 200);
            let (mut last, mut last_fisher) = (0.0, 0.0);
            let mut scan = None;
            for n in 1..=200 {
                let pass = power_pass(&lf, n, p1, p2, 0.05, true);
                // The saw-tooth that makes the search necessary.
                if pass.fisher < last_fisher - 1e-12 {
                    falls += 1;
                }
                last_fisher = pass.fisher;
                assert!(pass.fisher <= pass.bound + 1e-12, "{p1} vs {p2}, n {n}: {} > bound {}", pass.fisher, pass.bound);
                assert!(pass.bound >= last - 1e-12, "{p1} vs {p2}: bound falls at n {n}: {} < {last}", pass.bound);
                last = pass.bound;
                if scan.is_none() && pass.fisher >= 0.8 {
                    scan = Some(n);
                }
            }
            assert!(scan.is_some(), "{p1} vs {p2}: no crossing below 200");
            assert_eq!(fisher_exact_sample_size(p1, p2, 0.05, 0.8, 200), scan, "{p1} vs {p2}");
        }
        assert!(falls > 10, "the exact power rose with every n ({falls} falls)");
        // 25% against 0%: 24 answers per group reject on 5 of 24 or more, 25 need 6 of 25.
        let (p24, p25) = (fisher_exact_power(24, 0.25, 0.0, 0.05).unwrap(), fisher_exact_power(25, 0.25, 0.0, 0.05).unwrap());
        assert!(p24 - p25 > 0.13, "{p24} -> {p25}");
        // A cap below the answer, equal rates, bad input: none.
        assert_eq!(fisher_exact_sample_size(0.3, 0.05, 0.05, 0.8, 20), None);
        assert_eq!(fisher_exact_sample_size(0.01, 0.01, 0.05, 0.8, 20_000), None);
        assert_eq!(fisher_exact_sample_size(0.3, -0.1, 0.05, 0.8, 100), None);
        assert_eq!(fisher_exact_sample_size(0.3, 0.1, 0.05, 1.0, 100), None);
    }

    /// The normal-approximation (z-test) formula the advice used before underestimates what
    /// Fisher's test needs at small rates: 2% against 0% asks for 388 per group, where the
    /// exact power is 78.9% (scipy above), short of 80%.
    #[test]
    fn the_z_formula_undersizes_fishers_test() {
        let (p1, p2) = (0.02, 0.0);
        let (za, zb) = (1.959_964, 0.841_621);
        let pbar = (p1 + p2) / 2.0;
        let d: f64 = p1 - p2;
        let z_n =
            ((za * (2.0 * pbar * (1.0 - pbar)).sqrt() + zb * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt()).powi(2) / (d * d)).ceil() as usize;
        assert_eq!(z_n, 388);
        assert!(fisher_exact_power(z_n, p1, p2, 0.05).unwrap() < 0.79);
        let exact = fisher_exact_sample_size(p1, p2, 0.05, 0.8, 20_000).unwrap();
        assert!(exact > z_n, "{exact}");
        assert!(fisher_exact_power(exact, p1, p2, 0.05).unwrap() >= 0.8);
    }
}
