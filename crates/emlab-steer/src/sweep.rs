//! Steering-strength sweeps with a same-norm random-direction control.
//!
//! ```
//! use emlab_steer::sweep::{Rate, EvalPoint, SweepOptions, sweep};
//! use emlab_steer::spec::Resolved;
//! use candle_core::{Device, Tensor};
//! let v = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
//! let edits = vec![Resolved::Add { point: emlab_model::HookPoint::resid_post(0), vector: v, coef: 1.0, ablate_first: false }];
//! let opts = SweepOptions { alphas: vec![1.0, 2.0, 4.0], min_coherent: 0.9, seed: 0 };
//! // a stub evaluator: EM grows and coherence falls with the added norm
//! let res = sweep(&edits, 1, &opts, |_hooks, alpha, control| {
//!     let em = if control { 0.0 } else { 0.1 * alpha };
//!     Ok(EvalPoint { em: Rate::wilson((em * 100.0) as usize, 100), coherent: Rate::wilson(100 - (alpha * 4.0) as usize, 100) })
//! }).unwrap();
//! assert_eq!(res.best_alpha, Some(2.0)); // alpha 4 leaves only 84% coherent
//! ```
//!
//! The sweep multiplies every `add` coefficient of the intervention by each `alpha`; at every
//! alpha it evaluates the real vectors and a control in which each vector is replaced by a random
//! Gaussian direction of the same norm (fixed seed). The chosen alpha is the strongest (largest
//! `|alpha|`) whose coherence rate (point estimate) is at least `min_coherent`; the control at that
//! alpha says how much of the effect any push of that size would cause.

use crate::spec::{hooks_from, Resolved};
use crate::{Error, Result};
use candle_core::Tensor;
use emlab_model::HookSet;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A rate with a 95% interval.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Rate {
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

impl Rate {
    /// `k` of `n`, with the Wilson score interval (z = 1.96).
    pub fn wilson(k: usize, n: usize) -> Rate {
        if n == 0 {
            return Rate { rate: f64::NAN, lo: 0.0, hi: 1.0, n };
        }
        let (z, nf) = (1.96f64, n as f64);
        let p = k as f64 / nf;
        let den = 1.0 + z * z / nf;
        let c = (p + z * z / (2.0 * nf)) / den;
        let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / den;
        Rate { rate: p, lo: (c - h).max(0.0), hi: (c + h).min(1.0), n }
    }
}

/// What the evaluator returns for one hook set.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EvalPoint {
    pub em: Rate,
    pub coherent: Rate,
}

#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub alphas: Vec<f64>,
    /// Minimum coherent rate (e.g. 0.9: incoherence stays <= 10%).
    pub min_coherent: f64,
    /// Seed of the random control directions.
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub alpha: f64,
    pub steered: EvalPoint,
    pub control: EvalPoint,
    /// Folder (relative to the sweep's output folder) holding the steered point's evaluation,
    /// when the evaluator writes one ([`crate::evaluate::sweep_with_eval`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steered_dir: Option<String>,
    /// The same for the random control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub rows: Vec<SweepRow>,
    pub min_coherent: f64,
    /// The strongest alpha keeping coherence >= `min_coherent`; `None` if none does.
    pub best_alpha: Option<f64>,
}

/// A random Gaussian vector with the norm of `v` (same shape), deterministic in `seed`.
pub fn random_same_norm(v: &Tensor, seed: u64) -> Result<Tensor> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = v.elem_count();
    // Box-Muller: Gaussian components make the direction uniform on the sphere.
    let g: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random::<f64>());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    let g = Tensor::from_vec(g, v.shape(), v.device())?;
    let norm_v = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let norm_g = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    Ok((g * (norm_v / norm_g))?)
}

/// The control edits: every vector replaced by a same-norm random one (edit `i` uses `seed + i`).
pub fn control_edits(edits: &[Resolved], seed: u64) -> Result<Vec<Resolved>> {
    edits
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(match e {
                Resolved::AblateEverywhere { dir } => Resolved::AblateEverywhere { dir: random_same_norm(dir, seed + i as u64)? },
                Resolved::Add { point, vector, coef, ablate_first } => Resolved::Add {
                    point: *point,
                    vector: random_same_norm(vector, seed + i as u64)?,
                    coef: *coef,
                    ablate_first: *ablate_first,
                },
            })
        })
        .collect()
}

/// The edits with every `add` coefficient multiplied by `alpha` (ablations are not scaled):
/// `hooks_from(&scaled(e, a), n, 1.0)` is the same hook set as `hooks_from(e, n, a)`.
pub fn scaled(edits: &[Resolved], alpha: f64) -> Vec<Resolved> {
    edits
        .iter()
        .map(|e| match e {
            Resolved::Add { point, vector, coef, ablate_first } => {
                Resolved::Add { point: *point, vector: vector.clone(), coef: coef * alpha, ablate_first: *ablate_first }
            }
            other => other.clone(),
        })
        .collect()
}

/// One point of a sweep as the evaluator sees it: the edits already scaled by `alpha`.
pub struct Point<'a> {
    pub alpha: f64,
    pub control: bool,
    pub edits: &'a [Resolved],
}

/// What an evaluator returns for a point: the rates and, optionally, where it wrote its evidence.
pub struct PointResult {
    pub eval: EvalPoint,
    pub dir: Option<String>,
}

/// The loop every sweep shares: checks the alphas, builds the same-norm control once, evaluates
/// the real and the control edits at each alpha and picks the best alpha. At an alpha of 0 with
/// only `add` edits both sides are the unedited model, so the control reuses the steered result.
pub fn sweep_points<F>(edits: &[Resolved], opts: &SweepOptions, mut eval: F) -> Result<SweepResult>
where
    F: FnMut(Point<'_>) -> Result<PointResult>,
{
    if opts.alphas.is_empty() {
        return Err(Error::Invalid("sweep needs at least one alpha".into()));
    }
    if let Some(a) = opts.alphas.iter().find(|a| !a.is_finite()) {
        return Err(Error::Invalid(format!("sweep alpha {a} is not finite")));
    }
    if edits.is_empty() {
        return Err(Error::Invalid("sweep needs at least one edit".into()));
    }
    let control = control_edits(edits, opts.seed)?;
    let only_adds = edits.iter().all(|e| matches!(e, Resolved::Add { ablate_first: false, .. }));
    let mut rows = Vec::new();
    for &alpha in &opts.alphas {
        let s = scaled(edits, alpha);
        let steered = eval(Point { alpha, control: false, edits: &s })?;
        let ctrl = if alpha == 0.0 && only_adds {
            PointResult { eval: steered.eval, dir: steered.dir.clone() }
        } else {
            let c = scaled(&control, alpha);
            eval(Point { alpha, control: true, edits: &c })?
        };
        rows.push(SweepRow { alpha, steered: steered.eval, control: ctrl.eval, steered_dir: steered.dir, control_dir: ctrl.dir });
    }
    let best_alpha = rows
        .iter()
        .filter(|r| r.steered.coherent.rate >= opts.min_coherent)
        .max_by(|a, b| a.alpha.abs().total_cmp(&b.alpha.abs()))
        .map(|r| r.alpha);
    Ok(SweepResult { rows, min_coherent: opts.min_coherent, best_alpha })
}

/// Runs the sweep. `eval(hooks, alpha, is_control)` evaluates EM and coherence under `hooks`.
pub fn sweep<F>(edits: &[Resolved], num_layers: usize, opts: &SweepOptions, mut eval: F) -> Result<SweepResult>
where
    F: FnMut(&mut HookSet, f64, bool) -> Result<EvalPoint>,
{
    sweep_points(edits, opts, |p| {
        let mut hooks = hooks_from(p.edits, num_layers, 1.0)?;
        Ok(PointResult { eval: eval(&mut hooks, p.alpha, p.control)?, dir: None })
    })
}
