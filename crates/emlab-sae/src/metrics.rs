//! SAE quality metrics: L0, explained variance (about the MEAN), dead-latent
//! share, and cross-entropy loss recovered from caller-supplied losses.
//!
//! ```
//! use emlab_sae::metrics::{explained_variance, ce_loss_recovered};
//! let x = [1.0, 0.0, 3.0, 0.0];     // two rows, d = 2; mean (2, 0)
//! let x_hat = [1.5, 0.0, 2.5, 0.0]; // SSE = 0.5; variance about the mean = 2
//! assert!((explained_variance(&x, &x_hat, 2).unwrap() - 0.75).abs() < 1e-12);
//! // clean 2.0, zero-ablated 6.0, with the SAE spliced in 3.0 -> 75% recovered
//! assert!((ce_loss_recovered(2.0, 6.0, 3.0).unwrap() - 0.75).abs() < 1e-12);
//! ```
//!
//! Explained variance is `1 - Σ||x - x̂||² / Σ||x - mean(x)||²`: the denominator
//! is the variance about the per-dimension mean, not `Σ||x||²` (using the raw
//! second moment inflates the score for residual streams with a large mean).

use crate::error::{Result, SaeError};
use crate::sae::Sae;
use serde::{Deserialize, Serialize};

/// `1 - Σ||x - x̂||² / Σ||x - mean(x)||²` over a batch of rows of width `d`.
pub fn explained_variance(x: &[f32], x_hat: &[f32], d: usize) -> Result<f64> {
    let mut acc = EvalAccumulator::new(d, 0);
    acc.add_reconstruction(x, x_hat)?;
    Ok(acc.explained_variance())
}

/// Fraction of the loss gap closed by the SAE:
/// `(L_ablated - L_spliced) / (L_ablated - L_clean)`; 1 = as good as the clean
/// model, 0 = as bad as ablating the site (zero- or mean-ablation, the caller's choice).
pub fn ce_loss_recovered(clean: f64, ablated: f64, spliced: f64) -> Result<f64> {
    if !(clean.is_finite() && ablated.is_finite() && spliced.is_finite()) {
        return Err(SaeError::Numeric(format!("CE losses must be finite (clean {clean}, ablated {ablated}, spliced {spliced})")));
    }
    let gap = ablated - clean;
    if gap.abs() < 1e-12 {
        return Err(SaeError::Numeric(format!("ablated loss ({ablated}) equals the clean loss ({clean}): loss recovered is undefined")));
    }
    Ok((ablated - spliced) / gap)
}

/// Summary of an SAE on an evaluation set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub tokens: u64,
    /// Mean active latents per token.
    pub l0: f64,
    pub explained_variance: f64,
    /// Mean squared reconstruction error per token, Σ_d (x - x̂)².
    pub mse: f64,
    /// Fraction of latents that never fired on the evaluation set.
    pub dead_share: f64,
}

/// Streams batches and accumulates the sums the metrics need (in f64).
#[derive(Debug, Clone)]
pub struct EvalAccumulator {
    d: usize,
    n: u64,
    sse: f64,
    sum: Vec<f64>,
    sumsq: f64,
    active: u64,
    fired: Vec<bool>,
}

impl EvalAccumulator {
    /// `d_sae` may be 0 when only reconstructions are added.
    pub fn new(d: usize, d_sae: usize) -> Self {
        EvalAccumulator { d, n: 0, sse: 0.0, sum: vec![0.0; d], sumsq: 0.0, active: 0, fired: vec![false; d_sae] }
    }

    pub fn add_reconstruction(&mut self, x: &[f32], x_hat: &[f32]) -> Result<()> {
        if self.d == 0 || !x.len().is_multiple_of(self.d) || x.len() != x_hat.len() {
            return Err(SaeError::Shape(format!(
                "x has {} values and x_hat {} (d = {}): need equal lengths, a multiple of d",
                x.len(),
                x_hat.len(),
                self.d
            )));
        }
        for (r, rh) in x.chunks(self.d).zip(x_hat.chunks(self.d)) {
            for ((s, &a), &b) in self.sum.iter_mut().zip(r).zip(rh) {
                let (a, b) = (a as f64, b as f64);
                *s += a;
                self.sumsq += a * a;
                self.sse += (a - b) * (a - b);
            }
            self.n += 1;
        }
        Ok(())
    }

    /// Encodes and reconstructs `x` with `sae` and accumulates everything.
    pub fn add_batch(&mut self, sae: &Sae, x: &[f32]) -> Result<()> {
        if self.fired.len() != sae.d_sae || self.d != sae.d_in {
            return Err(SaeError::Shape(format!(
                "accumulator built for d_in {} / d_sae {}, SAE has {} / {}",
                self.d,
                self.fired.len(),
                sae.d_in,
                sae.d_sae
            )));
        }
        let codes = sae.encode_sparse(x)?;
        let x_hat = sae.decode_sparse(&codes)?;
        for &j in &codes.indices {
            self.fired[j as usize] = true;
        }
        self.active += codes.indices.len() as u64;
        self.add_reconstruction(x, &x_hat)
    }

    pub fn explained_variance(&self) -> f64 {
        let n = self.n as f64;
        // Σ||x - μ||² = Σ||x||² - n||μ||²
        let sst = self.sumsq - self.sum.iter().map(|s| s * s).sum::<f64>() / n;
        if self.n == 0 || sst <= 0.0 {
            return f64::NAN;
        }
        1.0 - self.sse / sst
    }

    pub fn report(&self) -> EvalReport {
        let n = self.n.max(1) as f64;
        EvalReport {
            tokens: self.n,
            l0: self.active as f64 / n,
            explained_variance: self.explained_variance(),
            mse: self.sse / n,
            dead_share: if self.fired.is_empty() {
                f64::NAN
            } else {
                self.fired.iter().filter(|f| !**f).count() as f64 / self.fired.len() as f64
            },
        }
    }
}

/// Evaluates `sae` on `x` [n, d_in] in batches of `batch` rows.
pub fn evaluate(sae: &Sae, x: &[f32], batch: usize) -> Result<EvalReport> {
    let mut acc = EvalAccumulator::new(sae.d_in, sae.d_sae);
    sae.rows_of(x)?;
    for chunk in x.chunks(batch.max(1) * sae.d_in) {
        acc.add_batch(sae, chunk)?;
    }
    Ok(acc.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explained_variance_by_hand() {
        // rows (1,2), (3,4), (5,0): mean (3,2); Σ||x-μ||² = 4+0+4 + 0+4+4 = 16... compute:
        // dim0: (1-3)²+(3-3)²+(5-3)² = 8 ; dim1: (2-2)²+(4-2)²+(0-2)² = 8 -> 16
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 0.0];
        let xh = [1.0, 3.0, 3.0, 4.0, 4.0, 0.0]; // SSE = 1 + 1 = 2
        let ev = explained_variance(&x, &xh, 2).unwrap();
        assert!((ev - (1.0 - 2.0 / 16.0)).abs() < 1e-12, "{ev}");
        // Shifting everything by a constant leaves it unchanged (about the MEAN);
        // the raw-second-moment version would not.
        let xs: Vec<f32> = x.iter().map(|v| v + 100.0).collect();
        let xhs: Vec<f32> = xh.iter().map(|v| v + 100.0).collect();
        assert!((explained_variance(&xs, &xhs, 2).unwrap() - ev).abs() < 1e-9);
    }

    #[test]
    fn ce_recovered_errors() {
        assert!(ce_loss_recovered(2.0, 2.0, 2.5).is_err());
        assert!(ce_loss_recovered(2.0, f64::NAN, 2.5).is_err());
        assert_eq!(ce_loss_recovered(2.0, 4.0, 2.0).unwrap(), 1.0);
    }
}
