//! SAE training on CPU: TopK, BatchTopK and ReLU + L1, with a hand-written,
//! sparsity-exploiting backward pass and Adam (f32 state).
//!
//! ```
//! use emlab_sae::{Architecture, TrainConfig, Trainer};
//! let cfg = TrainConfig::new(8, 32, Architecture::TopK { k: 2 });
//! let mut tr = Trainer::new(cfg).unwrap();
//! let x: Vec<f32> = (0..64 * 8).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
//! let stats = tr.step(&x).unwrap();           // one Adam step on 64 rows
//! assert!(stats.l0 <= 2.0 && stats.mse.is_finite());
//! let sae = tr.to_sae().unwrap();              // normalisation folded in
//! assert_eq!(sae.forward(&x).unwrap().len(), x.len());
//! ```
//!
//! # What one step does
//! On a batch `x` [n, d] (already scaled by the normalisation factor `s`):
//! 1. `xc = x - b_dec`; the encoder GEMM runs over row blocks and each block's
//!    pre-activations are reduced at once to the active set (top-k, batch
//!    top-k candidates, or positives) plus, for AuxK, the top-`k_aux` *dead*
//!    latents: the [n, d_sae] matrix is never stored.
//! 2. Per row: `x_hat = b_dec + Σ z_j W_dec[j]` touching only the active rows of
//!    `W_dec`; the residual; and `dL/dz_j = g·W_dec[j]` for the active latents only.
//! 3. The active entries are transposed to per-latent lists and, per latent
//!    (in parallel), the encoder/decoder gradient rows are accumulated, the
//!    decoder gradient's component along the (unit) decoder row is projected
//!    out, Adam updates the rows and the decoder row is renormalised. No dense
//!    gradient matrix is ever materialised.
//!
//! Loss (on normalised inputs): `mean_i ||x_hat_i - x_i||²`
//! `+ λ_t mean_i Σ_j z_ij` (ReLU only; λ_t ramps linearly from 0 over the warm-up)
//! `+ c_aux · min(n_dead / k_aux, 1) · mean_i ||ê_i - e_i||²` (TopK / BatchTopK AuxK,
//! `e = x - x_hat` detached, `ê = Σ_{top k_aux dead} relu(pre_j) W_dec[j]`, no bias).
//! Decoder rows stay unit-norm, so the L1 term needs no decoder-norm weighting.

use crate::error::{Result, SaeError};
use crate::kernels::{axpy, dot, encoder_pre, top_k, top_k_among, SendPtr};
use crate::sae::{map_pre_chunks, Activation, Sae, SaeMeta};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Training-time architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Architecture {
    /// k active latents per row (OpenAI / SAELens "topk").
    TopK { k: usize },
    /// k·n active latents per batch of n rows (Bussmann et al. 2024). Saved as
    /// JumpReLU with the threshold estimated during training: an exponential
    /// moving average (rate `threshold_lr`, SAELens default 0.01) of the
    /// smallest selected activation per batch, the same value for every latent.
    BatchTopK { k: usize, threshold_lr: f64 },
    /// ReLU with an L1 penalty whose coefficient ramps linearly from 0 to
    /// `l1_coefficient` over `l1_warmup_steps` steps (SAELens "standard").
    ReLU { l1_coefficient: f32, l1_warmup_steps: u64 },
}

/// Hyper-parameters of one SAE. [`TrainConfig::new`] gives published defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub d_in: usize,
    pub d_sae: usize,
    pub arch: Architecture,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// AuxK: number of dead latents used to model the residual (default d_in / 2,
    /// OpenAI appendix B.1 heuristic as in SAELens). 0 disables AuxK.
    pub aux_k: usize,
    /// AuxK coefficient (OpenAI: 1/32).
    pub aux_coefficient: f32,
    /// A latent is dead when it has not fired in this many training tokens.
    pub dead_after_tokens: u64,
    /// Scale inputs by `s = sqrt(d_in / E||x||²)` (estimated on the first batch)
    /// so that E||s·x||² = d_in; folded into the weights by [`Trainer::to_sae`].
    pub normalize: bool,
    /// Initialise b_dec to the mean of the first (normalised) batch instead of 0.
    pub b_dec_init_mean: bool,
    pub seed: u64,
}

impl TrainConfig {
    pub fn new(d_in: usize, d_sae: usize, arch: Architecture) -> Self {
        TrainConfig {
            d_in,
            d_sae,
            arch,
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            aux_k: d_in / 2,
            aux_coefficient: 1.0 / 32.0,
            dead_after_tokens: 1_000_000,
            normalize: true,
            b_dec_init_mean: true,
            seed: 0,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.d_in == 0 || self.d_sae == 0 {
            return Err(SaeError::Config(format!("d_in ({}) and d_sae ({}) must be > 0", self.d_in, self.d_sae)));
        }
        // The trainer holds the weights and two Adam moments (3 x (2 d_in d_sae + d_sae + d_in)
        // f32). An absurd width (a typo in --latents) must be an error, not an abort inside the
        // allocator: the size is checked for overflow and the allocation tried fallibly once.
        let floats = self
            .d_in
            .checked_mul(self.d_sae)
            .and_then(|n| n.checked_mul(2))
            .and_then(|n| n.checked_add(self.d_in + self.d_sae))
            .and_then(|n| n.checked_mul(3 * std::mem::size_of::<f32>()));
        let too_big = |what: String| {
            SaeError::Config(format!("d_in {} x d_sae {}: weights and Adam state need {what}; use fewer latents", self.d_in, self.d_sae))
        };
        match floats {
            None => return Err(too_big("more memory than can be addressed".into())),
            Some(bytes) => {
                if Vec::<u8>::new().try_reserve_exact(bytes).is_err() {
                    return Err(too_big(format!("{:.1} GB, more than can be allocated here", bytes as f64 / 1e9)));
                }
            }
        }
        match self.arch {
            Architecture::TopK { k } | Architecture::BatchTopK { k, .. } if k == 0 || k > self.d_sae => {
                return Err(SaeError::Config(format!("k = {k} must be in 1..={}", self.d_sae)))
            }
            Architecture::BatchTopK { threshold_lr, .. } if !(threshold_lr > 0.0 && threshold_lr <= 1.0) => {
                return Err(SaeError::Config(format!("threshold_lr = {threshold_lr} must be in (0, 1]")))
            }
            Architecture::ReLU { l1_coefficient, .. } if !(l1_coefficient >= 0.0 && l1_coefficient.is_finite()) => {
                return Err(SaeError::Config(format!("l1_coefficient = {l1_coefficient} must be finite and >= 0")))
            }
            _ => {}
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(SaeError::Config(format!("lr = {} must be finite and > 0", self.lr)));
        }
        if !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
            || self.eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(SaeError::Config("Adam needs 0 <= beta1, beta2 < 1 and eps > 0".into()));
        }
        Ok(())
    }
}

/// Numbers from one training step (losses on normalised inputs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: u64,
    /// Total loss that was differentiated.
    pub loss: f64,
    /// mean_i ||x_hat_i - x_i||² (normalised space).
    pub mse: f64,
    pub l1_loss: f64,
    pub aux_loss: f64,
    /// Mean active latents per row.
    pub l0: f64,
    /// 1 - SSE / Σ||x - mean(x)||² over this batch.
    pub explained_variance: f64,
    pub dead_latents: usize,
    /// BatchTopK: current inference threshold estimate.
    pub threshold: Option<f64>,
}

/// Dense gradients (for checks; training never builds these).
#[derive(Debug, Clone)]
pub struct Gradients {
    pub loss: f64,
    /// [d_sae, d_in] (transposed encoder, like the internal layout).
    pub w_enc_t: Vec<f32>,
    /// [d_sae, d_in], raw (before the unit-norm projection).
    pub w_dec: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub b_dec: Vec<f32>,
}

#[derive(Clone)]
pub(crate) struct Params {
    pub(crate) w_enc_t: Vec<f32>,
    pub(crate) w_dec: Vec<f32>,
    pub(crate) b_enc: Vec<f32>,
    pub(crate) b_dec: Vec<f32>,
}

impl Params {
    fn zeros_like(&self) -> Params {
        Params {
            w_enc_t: vec![0.0; self.w_enc_t.len()],
            w_dec: vec![0.0; self.w_dec.len()],
            b_enc: vec![0.0; self.b_enc.len()],
            b_dec: vec![0.0; self.b_dec.len()],
        }
    }
}

/// Trains one SAE. Feed it batches with [`Trainer::step`]; get the inference
/// SAE (normalisation folded in) with [`Trainer::to_sae`].
pub struct Trainer {
    // pub(crate): the device trainer (crate::device) copies this state to and from a GPU.
    pub(crate) cfg: TrainConfig,
    pub(crate) p: Params,
    pub(crate) m: Params,
    pub(crate) v: Params,
    pub(crate) steps: u64,
    pub(crate) scale: Option<f32>,
    pub(crate) tokens_since_fired: Vec<u64>,
    pub(crate) fire_count: Vec<u64>,
    pub(crate) tokens_seen: u64,
    pub(crate) threshold: Option<f64>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("cfg", &self.cfg)
            .field("steps", &self.steps)
            .field("scale", &self.scale)
            .field("tokens_seen", &self.tokens_seen)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

/// A CSR list of active entries per row plus their gradient w.r.t. the pre-activation.
#[derive(Default)]
struct Entries {
    indptr: Vec<usize>,
    idx: Vec<u32>,
    z: Vec<f32>,
    dpre: Vec<f32>,
}

/// The same entries grouped by latent.
struct ByLatent {
    ptr: Vec<usize>,
    row: Vec<u32>,
    z: Vec<f32>,
    dpre: Vec<f32>,
}

impl Entries {
    fn from_rows(rows: Vec<(Vec<u32>, Vec<f32>)>) -> Entries {
        let mut e = Entries { indptr: vec![0], ..Default::default() };
        for (idx, val) in rows {
            for (j, v) in idx.into_iter().zip(val) {
                if v > 0.0 {
                    e.idx.push(j);
                    e.z.push(v);
                }
            }
            e.indptr.push(e.idx.len());
        }
        e.dpre = vec![0.0; e.idx.len()];
        e
    }

    fn by_latent(&self, m: usize) -> ByLatent {
        let mut ptr = vec![0usize; m + 1];
        for &j in &self.idx {
            ptr[j as usize + 1] += 1;
        }
        for j in 0..m {
            ptr[j + 1] += ptr[j];
        }
        let nnz = self.idx.len();
        let (mut row, mut z, mut dpre) = (vec![0u32; nnz], vec![0f32; nnz], vec![0f32; nnz]);
        let mut fill = ptr.clone();
        for i in 0..self.indptr.len() - 1 {
            for e in self.indptr[i]..self.indptr[i + 1] {
                let j = self.idx[e] as usize;
                let p = fill[j];
                fill[j] += 1;
                row[p] = i as u32;
                z[p] = self.z[e];
                dpre[p] = self.dpre[e];
            }
        }
        ByLatent { ptr, row, z, dpre }
    }
}

/// Everything the per-latent pass needs from the forward / per-row backward.
struct Work {
    xc: Vec<f32>,
    gx: Vec<f32>,
    ga: Vec<f32>,
    main: ByLatent,
    aux: Option<ByLatent>,
    gb_dec_direct: Vec<f64>,
    mse: f64,
    l1: f64,
    aux_loss: f64,
    l0: f64,
    sst: f64,
    fired: Vec<bool>,
    min_selected: Option<f32>,
}

impl Trainer {
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let (d, m) = (cfg.d_in, cfg.d_sae);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        // Decoder rows: random directions (Gaussian, normalised). Encoder = W_dec^T
        // (OpenAI / SAELens initialisation), which starts each latent as a matched filter.
        let mut w_dec = vec![0f32; m * d];
        for row in w_dec.chunks_mut(d) {
            for v in row.iter_mut() {
                *v = gaussian(&mut rng);
            }
            normalize_row(row);
        }
        let p = Params { w_enc_t: w_dec.clone(), w_dec, b_enc: vec![0.0; m], b_dec: vec![0.0; d] };
        Ok(Trainer {
            m: p.zeros_like(),
            v: p.zeros_like(),
            p,
            steps: 0,
            scale: None,
            tokens_since_fired: vec![0; m],
            fire_count: vec![0; m],
            tokens_seen: 0,
            threshold: None,
            cfg,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    pub fn steps(&self) -> u64 {
        self.steps
    }
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }
    /// The input normalisation factor (None before the first step).
    pub fn scale(&self) -> Option<f32> {
        self.scale
    }
    /// Sets the normalisation factor explicitly (e.g. estimated on more data
    /// than one batch). Only allowed before the first step.
    pub fn set_scale(&mut self, s: f32) -> Result<()> {
        if self.steps > 0 {
            return Err(SaeError::Config("the normalisation scale can only be set before the first step".into()));
        }
        if !(s.is_finite() && s > 0.0) {
            return Err(SaeError::Config(format!("normalisation scale must be finite and > 0, got {s}")));
        }
        self.scale = Some(s);
        Ok(())
    }
    /// Latents that have not fired in the last `dead_after_tokens` tokens.
    pub fn dead_latents(&self) -> Vec<u32> {
        (0..self.cfg.d_sae as u32).filter(|&j| self.tokens_since_fired[j as usize] >= self.cfg.dead_after_tokens).collect()
    }
    /// Marks latents as dead / alive (testing and resuming tools).
    pub fn set_tokens_since_fired(&mut self, t: Vec<u64>) -> Result<()> {
        if t.len() != self.cfg.d_sae {
            return Err(SaeError::Shape(format!("expected {} counters, got {}", self.cfg.d_sae, t.len())));
        }
        self.tokens_since_fired = t;
        Ok(())
    }
    /// log10 of each latent's firing frequency over all training tokens
    /// (SAELens `sparsity.safetensors` convention; 1e-10 floor).
    pub fn log_feature_density(&self) -> Vec<f32> {
        let t = self.tokens_seen.max(1) as f64;
        self.fire_count.iter().map(|&c| ((c as f64 / t) + 1e-10).log10() as f32).collect()
    }
    /// Current (unfolded) parameters: (W_enc transposed [d_sae, d_in], W_dec
    /// [d_sae, d_in], b_enc, b_dec), in normalised-input space.
    pub fn params(&self) -> (&[f32], &[f32], &[f32], &[f32]) {
        (&self.p.w_enc_t, &self.p.w_dec, &self.p.b_enc, &self.p.b_dec)
    }
    /// BatchTopK threshold estimate.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// The current (unfolded) weights as an inference SAE on *normalised* inputs.
    pub fn to_sae_unfolded(&self) -> Result<Sae> {
        let act = match self.cfg.arch {
            Architecture::TopK { k } => Activation::TopK { k },
            Architecture::BatchTopK { .. } => {
                Activation::JumpReLU { threshold: vec![self.threshold.unwrap_or(0.0) as f32; self.cfg.d_sae] }
            }
            Architecture::ReLU { .. } => Activation::ReLU,
        };
        Ok(Sae {
            d_in: self.cfg.d_in,
            d_sae: self.cfg.d_sae,
            activation: act,
            apply_b_dec_to_input: true,
            w_enc_t: self.p.w_enc_t.clone(),
            w_dec: self.p.w_dec.clone(),
            b_enc: self.p.b_enc.clone(),
            b_dec: self.p.b_dec.clone(),
            meta: SaeMeta::default(),
        })
    }

    /// The inference SAE for *raw* activations: the normalisation factor is folded
    /// into W_enc, W_dec and b_dec (SAELens convention; `normalize_activations: "none"`).
    pub fn to_sae(&self) -> Result<Sae> {
        let mut sae = self.to_sae_unfolded()?;
        sae.fold_input_scale(self.scale.unwrap_or(1.0))?;
        Ok(sae)
    }

    pub(crate) fn check_batch(&self, x: &[f32]) -> Result<usize> {
        let d = self.cfg.d_in;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(SaeError::Shape(format!("batch has {} values, not a non-zero multiple of d_in = {d}", x.len())));
        }
        if let Some(p) = x.iter().position(|v| !v.is_finite()) {
            return Err(SaeError::Numeric(format!("non-finite input at row {}, column {}", p / d, p % d)));
        }
        Ok(x.len() / d)
    }

    fn normalised(&self, x: &[f32]) -> Vec<f32> {
        let s = self.scale.unwrap_or(1.0);
        if s == 1.0 {
            x.to_vec()
        } else {
            x.par_iter().map(|v| v * s).collect()
        }
    }

    fn l1_now(&self) -> f32 {
        match self.cfg.arch {
            Architecture::ReLU { l1_coefficient, l1_warmup_steps } => {
                if l1_warmup_steps == 0 {
                    l1_coefficient
                } else {
                    l1_coefficient * ((self.steps + 1) as f32 / l1_warmup_steps as f32).min(1.0)
                }
            }
            _ => 0.0,
        }
    }

    /// Loss and dense gradients on a batch of raw activations, without updating
    /// anything (for gradient checks). `dead` overrides the dead-latent set.
    pub fn gradients(&self, x: &[f32], dead: Option<&[u32]>) -> Result<Gradients> {
        let n = self.check_batch(x)?;
        let xs = self.normalised(x);
        let dead_v = match dead {
            Some(d) => d.to_vec(),
            None => self.dead_latents(),
        };
        let w = self.forward_backward(&xs, n, &dead_v, &mut PhaseTimer::new())?;
        let (d, m) = (self.cfg.d_in, self.cfg.d_sae);
        let mut g = self.p.zeros_like();
        let mut gb_dec = w.gb_dec_direct.clone();
        for j in 0..m {
            let mut genc = vec![0f32; d];
            let mut gdec = vec![0f32; d];
            let gb = latent_grad(&w, j, d, &mut genc, &mut gdec);
            g.w_enc_t[j * d..(j + 1) * d].copy_from_slice(&genc);
            g.w_dec[j * d..(j + 1) * d].copy_from_slice(&gdec);
            g.b_enc[j] = gb as f32;
            for (a, &w) in gb_dec.iter_mut().zip(&self.p.w_enc_t[j * d..(j + 1) * d]) {
                *a -= gb * w as f64;
            }
        }
        g.b_dec = gb_dec.iter().map(|&v| v as f32).collect();
        Ok(Gradients { loss: w.mse + w.l1 + w.aux_loss, w_enc_t: g.w_enc_t, w_dec: g.w_dec, b_enc: g.b_enc, b_dec: g.b_dec })
    }

    /// One optimisation step on a batch of raw activations `x` [n, d_in].
    pub fn step(&mut self, x: &[f32]) -> Result<StepStats> {
        let n = self.check_batch(x)?;
        let (d, m) = (self.cfg.d_in, self.cfg.d_sae);
        if self.steps == 0 {
            self.init_from_first_batch(x, n)?;
        }
        let mut timer = PhaseTimer::new();
        let xs = self.normalised(x);
        let dead = self.dead_latents();
        let w = self.forward_backward(&xs, n, &dead, &mut timer)?;
        let loss = w.mse + w.l1 + w.aux_loss;
        if !loss.is_finite() {
            return Err(SaeError::Numeric(format!("loss became {loss} at step {}", self.steps)));
        }

        // Adam constants for this step (bias corrections).
        self.steps += 1;
        let t = self.steps as i32;
        let h = Adam {
            lr: self.cfg.lr,
            b1: self.cfg.beta1,
            b2: self.cfg.beta2,
            eps: self.cfg.eps,
            bc1: 1.0 - self.cfg.beta1.powi(t),
            bc2_sqrt: (1.0 - self.cfg.beta2.powi(t)).sqrt(),
        };

        // Per-latent pass: gradients, projection, Adam, renormalisation, fused.
        const LC: usize = 16;
        let ptrs = [
            SendPtr(self.p.w_enc_t.as_mut_ptr()),
            SendPtr(self.m.w_enc_t.as_mut_ptr()),
            SendPtr(self.v.w_enc_t.as_mut_ptr()),
            SendPtr(self.p.w_dec.as_mut_ptr()),
            SendPtr(self.m.w_dec.as_mut_ptr()),
            SendPtr(self.v.w_dec.as_mut_ptr()),
            SendPtr(self.p.b_enc.as_mut_ptr()),
            SendPtr(self.m.b_enc.as_mut_ptr()),
            SendPtr(self.v.b_enc.as_mut_ptr()),
        ];
        let wr = &w;
        let bdec_from_enc: Vec<f64> = (0..m.div_ceil(LC))
            .into_par_iter()
            .fold(
                || (vec![0f64; d], vec![0f32; d], vec![0f32; d]),
                |(mut acc, mut genc, mut gdec), c| {
                    for j in c * LC..((c + 1) * LC).min(m) {
                        genc.iter_mut().for_each(|v| *v = 0.0);
                        gdec.iter_mut().for_each(|v| *v = 0.0);
                        let gb = latent_grad(wr, j, d, &mut genc, &mut gdec);
                        // SAFETY: latent j's rows [j*d, (j+1)*d) and scalar j are
                        // touched by this iteration only (chunks partition 0..m).
                        unsafe {
                            let pe = ptrs[0].slice(j * d, d);
                            // b_dec's gradient through `x - b_dec` uses the pre-update encoder row.
                            for (a, &wv) in acc.iter_mut().zip(pe.iter()) {
                                *a -= gb * wv as f64;
                            }
                            h.update(pe, ptrs[1].slice(j * d, d), ptrs[2].slice(j * d, d), &genc);
                            let pd = ptrs[3].slice(j * d, d);
                            // Keep ||W_dec[j]|| = 1: remove the gradient's radial part...
                            let par = dot(&gdec, pd);
                            axpy(-par, pd, &mut gdec);
                            h.update(pd, ptrs[4].slice(j * d, d), ptrs[5].slice(j * d, d), &gdec);
                            // ...and undo Adam's residual drift off the sphere.
                            normalize_row(pd);
                            h.update(ptrs[6].slice(j, 1), ptrs[7].slice(j, 1), ptrs[8].slice(j, 1), &[gb as f32]);
                        }
                    }
                    (acc, genc, gdec)
                },
            )
            .map(|(acc, _, _)| acc)
            .reduce(
                || vec![0f64; d],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    a
                },
            );
        timer.mark("latents+adam");
        let gb_dec: Vec<f32> = w.gb_dec_direct.iter().zip(&bdec_from_enc).map(|(a, b)| (a + b) as f32).collect();
        h.update(&mut self.p.b_dec, &mut self.m.b_dec, &mut self.v.b_dec, &gb_dec);

        // Bookkeeping: dead-latent clocks, firing counts, BatchTopK threshold.
        for j in 0..m {
            if w.fired[j] {
                self.tokens_since_fired[j] = 0;
            } else {
                self.tokens_since_fired[j] = self.tokens_since_fired[j].saturating_add(n as u64);
            }
        }
        for j in w.main.ptr.windows(2).enumerate() {
            self.fire_count[j.0] += (j.1[1] - j.1[0]) as u64;
        }
        self.tokens_seen += n as u64;
        if let (Architecture::BatchTopK { threshold_lr, .. }, Some(min_sel)) = (&self.cfg.arch, w.min_selected) {
            // EMA of the smallest selected activation (SAELens); the first batch
            // seeds it instead of 0 so short runs are not biased low.
            self.threshold = Some(match self.threshold {
                None => min_sel as f64,
                Some(t) => (1.0 - threshold_lr) * t + threshold_lr * min_sel as f64,
            });
        }
        timer.mark("bookkeeping");
        timer.report();
        Ok(StepStats {
            step: self.steps,
            loss,
            mse: w.mse,
            l1_loss: w.l1,
            aux_loss: w.aux_loss,
            l0: w.l0,
            explained_variance: if w.sst > 0.0 { 1.0 - w.mse * n as f64 / w.sst } else { f64::NAN },
            dead_latents: dead.len(),
            threshold: self.threshold,
        })
    }

    fn init_from_first_batch(&mut self, x: &[f32], n: usize) -> Result<()> {
        let d = self.cfg.d_in;
        if self.scale.is_none() {
            let s =
                if self.cfg.normalize { normalisation_scale(x.par_iter().map(|&v| v as f64 * v as f64).sum::<f64>(), n, d)? } else { 1.0 };
            self.scale = Some(s);
        }
        if self.cfg.b_dec_init_mean {
            let s = self.scale.unwrap_or(1.0) as f64;
            let mut mean = vec![0f64; d];
            for r in x.chunks(d) {
                for (a, &v) in mean.iter_mut().zip(r) {
                    *a += v as f64;
                }
            }
            self.p.b_dec = mean.iter().map(|&a| (a * s / n as f64) as f32).collect();
        }
        Ok(())
    }

    /// Forward pass and the per-row part of the backward pass.
    fn forward_backward(&self, xs: &[f32], n: usize, dead: &[u32], timer: &mut PhaseTimer) -> Result<Work> {
        let (d, m) = (self.cfg.d_in, self.cfg.d_sae);
        let p = &self.p;
        let mut xc = xs.to_vec();
        xc.par_chunks_mut(d).for_each(|r| {
            for (v, b) in r.iter_mut().zip(&p.b_dec) {
                *v -= b;
            }
        });

        let use_aux = !matches!(self.cfg.arch, Architecture::ReLU { .. }) && self.cfg.aux_k > 0 && !dead.is_empty();
        let k_aux = if use_aux { self.cfg.aux_k.min(dead.len()) } else { 0 };
        let aux_scale = if use_aux { (dead.len() as f32 / self.cfg.aux_k as f32).min(1.0) } else { 0.0 };

        // 1. Encoder GEMM per row block, reduced at once to active sets.
        let (sel_k, batch_k) = match self.cfg.arch {
            Architecture::TopK { k } => (Some(k), None),
            Architecture::BatchTopK { k, .. } => (Some((4 * k).min(m)), Some(k)),
            Architecture::ReLU { .. } => (None, None),
        };
        let blocks = map_pre_chunks(&xc, n, d, &p.w_enc_t, &p.b_enc, |_, rows, pre| {
            let mut out = Vec::with_capacity(rows);
            for r in 0..rows {
                let row = &pre[r * m..(r + 1) * m];
                let (mut idx, mut val) = (Vec::new(), Vec::new());
                match sel_k {
                    Some(k) => top_k(row, k, &mut idx, &mut val),
                    None => {
                        for (j, &v) in row.iter().enumerate() {
                            if v > 0.0 {
                                idx.push(j as u32);
                                val.push(v);
                            }
                        }
                    }
                }
                let (mut aidx, mut aval) = (Vec::new(), Vec::new());
                if k_aux > 0 {
                    top_k_among(row, dead, k_aux, &mut aidx, &mut aval);
                }
                out.push(((idx, val), (aidx, aval)));
            }
            out
        });
        let (mut main_rows, aux_rows): (Vec<_>, Vec<_>) = blocks.into_iter().flatten().unzip();
        let mut min_selected = None;
        if let Some(k) = batch_k {
            min_selected = self.batch_top_k(&xc, n, k, sel_k.unwrap(), &mut main_rows);
        }
        timer.mark("encode+select");
        let mut main = Entries::from_rows(main_rows);
        let mut aux = if k_aux > 0 { Some(Entries::from_rows(aux_rows)) } else { None };

        // 2. Per row: reconstruction, residual, dL/dx_hat, dL/dz of the active latents.
        let l1 = self.l1_now();
        let inv_n = 1.0 / n as f32;
        let aux_c = 2.0 * self.cfg.aux_coefficient * aux_scale * inv_n;
        let mut gx = vec![0f32; n * d];
        let mut ga = vec![0f32; if aux.is_some() { n * d } else { 0 }];
        // Split the per-entry dpre buffers into per-row slices for parallel writes.
        let main_dpre = split_rows(&mut main.dpre, &main.indptr);
        let (aux_ref, aux_dpre) = match aux.as_mut() {
            Some(Entries { indptr, idx, z, dpre }) => {
                (Some((&*idx, &*z, &*indptr)), split_rows(dpre, indptr).into_iter().map(Some).collect())
            }
            None => (None, (0..n).map(|_| None).collect::<Vec<_>>()),
        };
        let ga_rows: Vec<Option<&mut [f32]>> =
            if ga.is_empty() { (0..n).map(|_| None).collect() } else { ga.chunks_mut(d).map(Some).collect() };
        let (main_idx, main_z, main_ptr) = (&main.idx, &main.z, &main.indptr);
        let per_row: Vec<(f64, f64, f64)> = gx
            .par_chunks_mut(d)
            .zip(main_dpre)
            .zip(aux_dpre)
            .zip(ga_rows)
            .enumerate()
            .map(|(i, (((g, dmain), daux), ga_row))| {
                let x = &xs[i * d..(i + 1) * d];
                let (a, b) = (main_ptr[i], main_ptr[i + 1]);
                // x_hat into g, then turn g into the residual r = x_hat - x.
                g.copy_from_slice(&p.b_dec);
                for e in a..b {
                    axpy(main_z[e], &p.w_dec[main_idx[e] as usize * d..][..d], g);
                }
                let mut sse = 0f64;
                let mut l1sum = 0f64;
                for (gv, xv) in g.iter_mut().zip(x) {
                    *gv -= xv;
                    sse += (*gv as f64) * (*gv as f64);
                }
                // aux: ê = Σ z W_dec[j]; loss term ||ê - e||² with e = -r.
                let mut aux_sse = 0f64;
                if let (Some((aidx, az, aptr)), Some(gar), Some(dauxr)) = (aux_ref, ga_row, daux) {
                    let (c0, c1) = (aptr[i], aptr[i + 1]);
                    gar.copy_from_slice(g); // r
                    for e in c0..c1 {
                        axpy(az[e], &p.w_dec[aidx[e] as usize * d..][..d], gar);
                    }
                    // gar = ê + r = ê - e
                    for v in gar.iter_mut() {
                        aux_sse += (*v as f64) * (*v as f64);
                        *v *= aux_c;
                    }
                    for (e, dv) in (c0..c1).zip(dauxr.iter_mut()) {
                        *dv = dot(gar, &p.w_dec[aidx[e] as usize * d..][..d]);
                    }
                }
                for v in g.iter_mut() {
                    *v *= 2.0 * inv_n;
                }
                for (e, dv) in (a..b).zip(dmain.iter_mut()) {
                    *dv = dot(g, &p.w_dec[main_idx[e] as usize * d..][..d]) + l1 * inv_n;
                    l1sum += main_z[e] as f64;
                }
                (sse, l1sum, aux_sse)
            })
            .collect();
        timer.mark("rows");
        let mut mse = 0f64;
        let mut l1sum = 0f64;
        let mut aux_sse = 0f64;
        for (a, b, c) in &per_row {
            mse += a;
            l1sum += b;
            aux_sse += c;
        }
        mse /= n as f64;
        let l1_loss = l1 as f64 * l1sum / n as f64;
        let aux_loss = (self.cfg.aux_coefficient * aux_scale) as f64 * aux_sse / n as f64;

        // b_dec receives dL/dx_hat directly (x_hat = ... + b_dec).
        let mut gb_dec_direct = vec![0f64; d];
        for r in gx.chunks(d) {
            for (a, &v) in gb_dec_direct.iter_mut().zip(r) {
                *a += v as f64;
            }
        }
        // Variance about the batch mean, for explained variance.
        let mut mean = vec![0f64; d];
        let mut sq = 0f64;
        for r in xs.chunks(d) {
            for (a, &v) in mean.iter_mut().zip(r) {
                *a += v as f64;
                sq += v as f64 * v as f64;
            }
        }
        let sst = sq - mean.iter().map(|a| a * a).sum::<f64>() / n as f64;

        let mut fired = vec![false; m];
        for &j in &main.idx {
            fired[j as usize] = true;
        }
        let l0 = main.idx.len() as f64 / n as f64;
        let main_t = main.by_latent(m);
        let aux_t = aux.map(|a| a.by_latent(m));
        timer.mark("stats+transpose");
        Ok(Work { xc, gx, ga, main: main_t, aux: aux_t, gb_dec_direct, mse, l1: l1_loss, aux_loss, l0, sst, fired, min_selected })
    }

    /// Batch-level top-k: keep the k·n largest positive pre-activations of the
    /// batch. Rows hold their top `cap` candidates; a row whose candidates all
    /// clear the batch threshold might have more, so it is recomputed with a
    /// larger cap until no row is saturated (exact, and rare after warm-up).
    fn batch_top_k(&self, xc: &[f32], n: usize, k: usize, cap0: usize, rows: &mut [(Vec<u32>, Vec<f32>)]) -> Option<f32> {
        let (d, m) = (self.cfg.d_in, self.cfg.d_sae);
        let target = k * n;
        let mut caps = vec![cap0; n];
        for r in rows.iter_mut() {
            retain_positive(r);
        }
        loop {
            let mut all: Vec<f32> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
            if all.is_empty() {
                return None;
            }
            let thr = if all.len() <= target {
                f32::MIN_POSITIVE
            } else {
                let pos = all.len() - target;
                *all.select_nth_unstable_by(pos, |a, b| a.total_cmp(b)).1
            };
            let saturated: Vec<usize> =
                (0..n).filter(|&i| caps[i] < m && rows[i].1.len() == caps[i] && rows[i].1.iter().all(|&v| v >= thr)).collect();
            if saturated.is_empty() {
                let mut min_sel = f32::INFINITY;
                for r in rows.iter_mut() {
                    let mut keep_i = Vec::new();
                    let mut keep_v = Vec::new();
                    for (&j, &v) in r.0.iter().zip(&r.1) {
                        if v >= thr {
                            keep_i.push(j);
                            keep_v.push(v);
                            min_sel = min_sel.min(v);
                        }
                    }
                    *r = (keep_i, keep_v);
                }
                return if min_sel.is_finite() { Some(min_sel) } else { None };
            }
            let recomputed: Vec<(usize, RowSel)> = saturated
                .par_iter()
                .map(|&i| {
                    let cap = (caps[i] * 4).min(m);
                    let mut pre = vec![0f32; m];
                    encoder_pre(&xc[i * d..(i + 1) * d], 1, d, &self.p.w_enc_t, m, &self.p.b_enc, &mut pre, false);
                    let mut r = (Vec::new(), Vec::new());
                    top_k(&pre, cap, &mut r.0, &mut r.1);
                    retain_positive(&mut r);
                    (i, r)
                })
                .collect();
            for (i, r) in recomputed {
                caps[i] = (caps[i] * 4).min(m);
                rows[i] = r;
            }
        }
    }
}

impl Trainer {
    /// Writes the complete training state (weights, Adam moments, step count,
    /// normalisation factor, dead-latent clocks, firing counts, BatchTopK
    /// threshold) to one safetensors file, atomically (temp file + rename), so
    /// an interrupted run resumes exactly with [`Trainer::load_checkpoint`].
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        use safetensors::{tensor::TensorView, Dtype};
        let path = path.as_ref();
        let f = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let u = |v: &[u64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (d, m) = (self.cfg.d_in, self.cfg.d_sae);
        let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (pre, st) in [("param", &self.p), ("adam_m", &self.m), ("adam_v", &self.v)] {
            blobs.push((format!("{pre}.W_enc_T"), Dtype::F32, vec![m, d], f(&st.w_enc_t)));
            blobs.push((format!("{pre}.W_dec"), Dtype::F32, vec![m, d], f(&st.w_dec)));
            blobs.push((format!("{pre}.b_enc"), Dtype::F32, vec![m], f(&st.b_enc)));
            blobs.push((format!("{pre}.b_dec"), Dtype::F32, vec![d], f(&st.b_dec)));
        }
        blobs.push(("tokens_since_fired".into(), Dtype::U64, vec![m], u(&self.tokens_since_fired)));
        blobs.push(("fire_count".into(), Dtype::U64, vec![m], u(&self.fire_count)));
        let views: Vec<(String, TensorView)> = blobs
            .iter()
            .map(|(n, dt, sh, b)| TensorView::new(*dt, sh.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| SaeError::format(path, format!("cannot build checkpoint tensor: {e}")))?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("emlab_sae_trainer".into(), "1".into());
        meta.insert("config".into(), serde_json::to_string(&self.cfg).expect("config serialises"));
        meta.insert(
            "state".into(),
            serde_json::json!({"steps": self.steps, "scale": self.scale, "tokens_seen": self.tokens_seen, "threshold": self.threshold})
                .to_string(),
        );
        let bytes =
            safetensors::serialize(views, Some(meta)).map_err(|e| SaeError::format(path, format!("cannot serialise checkpoint: {e}")))?;
        let tmp = path.with_extension("tmp-partial");
        std::fs::write(&tmp, bytes).map_err(|e| SaeError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| SaeError::io(path, e))
    }

    /// Restores a trainer written by [`Trainer::save_checkpoint`].
    pub fn load_checkpoint(path: impl AsRef<std::path::Path>) -> Result<Trainer> {
        use safetensors::{Dtype, SafeTensors};
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| SaeError::io(path, e))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| SaeError::format(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("emlab_sae_trainer").map(String::as_str) != Some("1") {
            return Err(SaeError::format(path, "not an emlab SAE trainer checkpoint (metadata `emlab_sae_trainer` missing)"));
        }
        let cfg: TrainConfig = serde_json::from_str(meta.get("config").map(String::as_str).unwrap_or(""))
            .map_err(|e| SaeError::format(path, format!("bad `config` metadata: {e}")))?;
        cfg.validate().map_err(|e| SaeError::format(path, e.to_string()))?;
        let state: serde_json::Value = serde_json::from_str(meta.get("state").map(String::as_str).unwrap_or(""))
            .map_err(|e| SaeError::format(path, format!("bad `state` metadata: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| SaeError::format(path, format!("not a safetensors file: {e}")))?;
        let (d, m) = (cfg.d_in, cfg.d_sae);
        let get = |name: &str, dt: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let t = st.tensor(name).map_err(|_| SaeError::format(path, format!("missing tensor `{name}`")))?;
            if t.dtype() != dt || t.shape() != shape {
                return Err(SaeError::format(
                    path,
                    format!("tensor `{name}` is {:?} {:?}, expected {dt:?} {shape:?}", t.dtype(), t.shape()),
                ));
            }
            Ok(t.data().to_vec())
        };
        let f32s = |b: Vec<u8>| -> Vec<f32> { b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() };
        let u64s = |b: Vec<u8>| -> Vec<u64> { b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect() };
        let params = |pre: &str| -> Result<Params> {
            Ok(Params {
                w_enc_t: f32s(get(&format!("{pre}.W_enc_T"), Dtype::F32, &[m, d])?),
                w_dec: f32s(get(&format!("{pre}.W_dec"), Dtype::F32, &[m, d])?),
                b_enc: f32s(get(&format!("{pre}.b_enc"), Dtype::F32, &[m])?),
                b_dec: f32s(get(&format!("{pre}.b_dec"), Dtype::F32, &[d])?),
            })
        };
        Ok(Trainer {
            p: params("param")?,
            m: params("adam_m")?,
            v: params("adam_v")?,
            steps: state["steps"].as_u64().unwrap_or(0),
            scale: state["scale"].as_f64().map(|s| s as f32),
            tokens_since_fired: u64s(get("tokens_since_fired", Dtype::U64, &[m])?),
            fire_count: u64s(get("fire_count", Dtype::U64, &[m])?),
            tokens_seen: state["tokens_seen"].as_u64().unwrap_or(0),
            threshold: state["threshold"].as_f64(),
            cfg,
        })
    }
}

/// Phase timings to stderr when EMLAB_SAE_TIMING is set (profiling aid).
struct PhaseTimer {
    on: bool,
    t: std::time::Instant,
    parts: Vec<(&'static str, f64)>,
}

impl PhaseTimer {
    fn new() -> Self {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var_os("EMLAB_SAE_TIMING").is_some());
        PhaseTimer { on, t: std::time::Instant::now(), parts: Vec::new() }
    }
    fn mark(&mut self, name: &'static str) {
        if self.on {
            self.parts.push((name, self.t.elapsed().as_secs_f64()));
            self.t = std::time::Instant::now();
        }
    }
    fn report(&self) {
        if self.on {
            let s: Vec<String> = self.parts.iter().map(|(n, t)| format!("{n} {:.1}ms", t * 1e3)).collect();
            eprintln!("[emlab-sae step] {}", s.join(", "));
        }
    }
}

/// One row's selected (latent indices, activations).
type RowSel = (Vec<u32>, Vec<f32>);

fn retain_positive(r: &mut RowSel) {
    let mut w = 0;
    for i in 0..r.1.len() {
        if r.1[i] > 0.0 {
            r.0[w] = r.0[i];
            r.1[w] = r.1[i];
            w += 1;
        }
    }
    r.0.truncate(w);
    r.1.truncate(w);
}

/// Gradient rows of latent `j` (accumulated into `genc`, `gdec`, which must be
/// zero) and its b_enc gradient.
fn latent_grad(w: &Work, j: usize, d: usize, genc: &mut [f32], gdec: &mut [f32]) -> f64 {
    let mut gb = 0f64;
    for e in w.main.ptr[j]..w.main.ptr[j + 1] {
        let i = w.main.row[e] as usize;
        let dp = w.main.dpre[e];
        axpy(dp, &w.xc[i * d..(i + 1) * d], genc);
        axpy(w.main.z[e], &w.gx[i * d..(i + 1) * d], gdec);
        gb += dp as f64;
    }
    if let Some(a) = &w.aux {
        for e in a.ptr[j]..a.ptr[j + 1] {
            let i = a.row[e] as usize;
            let dp = a.dpre[e];
            axpy(dp, &w.xc[i * d..(i + 1) * d], genc);
            axpy(a.z[e], &w.ga[i * d..(i + 1) * d], gdec);
            gb += dp as f64;
        }
    }
    gb
}

fn split_rows<'a>(buf: &'a mut [f32], indptr: &[usize]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(indptr.len() - 1);
    let mut rest = buf;
    for w in indptr.windows(2) {
        let (a, b) = rest.split_at_mut(w[1] - w[0]);
        out.push(a);
        rest = b;
    }
    out
}

#[derive(Clone, Copy)]
struct Adam {
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,
    bc2_sqrt: f32,
}

impl Adam {
    /// PyTorch Adam (no weight decay): m̂ / (sqrt(v̂) + eps).
    #[inline]
    fn update(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let step = self.lr / self.bc1;
        let inv_bc2 = 1.0 / self.bc2_sqrt;
        for i in 0..p.len() {
            let gi = g[i];
            let mi = self.b1 * m[i] + (1.0 - self.b1) * gi;
            let vi = self.b2 * v[i] + (1.0 - self.b2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] -= step * mi / (vi.sqrt() * inv_bc2 + self.eps);
        }
    }
}

/// The input scale `sqrt(d / mean_row(|x|^2))` that makes the first batch's rows have squared
/// norm `d` on average, from the batch's total sum of squares over `n` rows (both trainers).
pub(crate) fn normalisation_scale(sum_sq: f64, n: usize, d: usize) -> Result<f32> {
    let ms = sum_sq / n as f64;
    if ms <= 0.0 {
        return Err(SaeError::Numeric("first batch is all zeros: cannot estimate the normalisation scale".into()));
    }
    Ok((d as f64 / ms).sqrt() as f32)
}

fn normalize_row(r: &mut [f32]) {
    let norm = dot(r, r).sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        r.iter_mut().for_each(|v| *v *= inv);
    }
}

pub(crate) fn gaussian<R: Rng>(rng: &mut R) -> f32 {
    // Box-Muller; rand 0.9 has no normal distribution without rand_distr.
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Several SAEs trained from one pass over the activations: every batch is fed
/// to each trainer in turn (each step uses all threads).
pub struct MultiTrainer {
    pub trainers: Vec<Trainer>,
}

impl MultiTrainer {
    pub fn new(configs: Vec<TrainConfig>) -> Result<Self> {
        if configs.is_empty() {
            return Err(SaeError::Config("MultiTrainer needs at least one config".into()));
        }
        let d = configs[0].d_in;
        if let Some(c) = configs.iter().find(|c| c.d_in != d) {
            return Err(SaeError::Config(format!("all SAEs must share d_in: {} vs {d}", c.d_in)));
        }
        Ok(MultiTrainer { trainers: configs.into_iter().map(Trainer::new).collect::<Result<_>>()? })
    }

    /// One step of every SAE on the same batch.
    pub fn step(&mut self, x: &[f32]) -> Result<Vec<StepStats>> {
        self.trainers.iter_mut().map(|t| t.step(x)).collect()
    }

    /// Inference SAEs (normalisation folded in), in config order.
    pub fn to_saes(&self) -> Result<Vec<Sae>> {
        self.trainers.iter().map(|t| t.to_sae()).collect()
    }
}
