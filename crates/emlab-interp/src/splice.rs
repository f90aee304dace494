//! SAE training from an activation store, and cross-entropy loss recovered with the SAE
//! spliced into the forward pass.
//!
//! ```no_run
//! use emlab_interp::splice::{ce_loss_recovered, SaeSplice};
//! # let lm: emlab_model::lm::Lm = todo!(); let sae: emlab_sae::Sae = todo!();
//! let point = "blocks.3.hook_resid_post".parse()?;
//! let seqs = vec![vec![1u32, 2, 3, 4]];
//! let ce = ce_loss_recovered(&lm.model, &sae, point, &seqs)?;
//! println!("recovered {:.3} (clean {:.3}, spliced {:.3}, zero {:.3})", ce.recovered, ce.clean, ce.spliced, ce.zero_ablated);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! CE is the mean next-token cross-entropy over every position of every sequence (targets = the
//! sequence shifted by one). "Recovered" is `(L_zero - L_sae) / (L_zero - L_clean)` where
//! `L_zero` replaces the stream at the hook by zeros.

use crate::acts::ActsReader;
use crate::error::{Error, Result};
use candle_core::Tensor;
use emlab_model::hooks::{HookPoint, Hooks};
use emlab_model::model::{masked_cross_entropy, Forward, Logits, Model};
use emlab_sae::train::{Architecture, StepStats, TrainConfig};
use emlab_sae::Sae;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Replaces the stream at `point` by the SAE's reconstruction `sae.forward(x)`.
pub struct SaeSplice<'a> {
    pub point: HookPoint,
    pub sae: &'a Sae,
}

impl Hooks for SaeSplice<'_> {
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }
    fn apply(&mut self, _point: HookPoint, x: Tensor) -> emlab_model::Result<Tensor> {
        self.sae.forward_tensor(&x).map_err(|e| emlab_model::Error::Invalid(format!("SAE splice at {}: {e}", self.point)))
    }
}

/// Replaces the stream at `point` by zeros (the ablation baseline).
pub struct ZeroAblate {
    pub point: HookPoint,
}

impl Hooks for ZeroAblate {
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }
    fn apply(&mut self, _point: HookPoint, x: Tensor) -> emlab_model::Result<Tensor> {
        Ok(x.zeros_like()?)
    }
}

/// Mean next-token CE over `seqs`; `make_hooks` builds the hooks of each forward call (`None`:
/// the clean model).
pub fn mean_ce<'h>(model: &Model, seqs: &[Vec<u32>], make_hooks: &dyn Fn() -> Option<Box<dyn Hooks + 'h>>) -> Result<f64> {
    let mut total = 0.0f64;
    let mut n = 0usize;
    for s in seqs {
        if s.len() < 2 {
            continue;
        }
        let t = s.len() - 1;
        let dev = model.device();
        let ids = Tensor::from_slice(&s[..t], (1, t), dev)?;
        let tgt = Tensor::from_slice(&s[1..], (1, t), dev)?;
        let mask = Tensor::ones((1, t), candle_core::DType::F32, dev)?;
        let mut hk = make_hooks();
        let out = model
            .forward(&ids, Forward { logits: Logits::All, hooks: hk.as_deref_mut().map(|h| h as &mut dyn Hooks), ..Default::default() })?;
        let logits = out.logits.ok_or_else(|| Error::Invalid("forward returned no logits".into()))?;
        let ce = masked_cross_entropy(&logits.to_dtype(candle_core::DType::F32)?, &tgt, &mask)?.to_scalar::<f32>()? as f64;
        total += ce * t as f64;
        n += t;
    }
    if n == 0 {
        return Err(Error::Invalid("no sequence of 2+ tokens to evaluate CE on".into()));
    }
    Ok(total / n as f64)
}

/// CE clean / spliced / zero-ablated and the fraction recovered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CeReport {
    pub clean: f64,
    pub spliced: f64,
    pub zero_ablated: f64,
    pub recovered: f64,
    pub tokens: usize,
}

pub fn ce_loss_recovered(model: &Model, sae: &Sae, point: HookPoint, seqs: &[Vec<u32>]) -> Result<CeReport> {
    if sae.d_in != model.config.hidden_size {
        return Err(Error::Invalid(format!("SAE d_in {} != model d_model {}", sae.d_in, model.config.hidden_size)));
    }
    let clean = mean_ce(model, seqs, &|| None)?;
    let spliced = mean_ce(model, seqs, &|| Some(Box::new(SaeSplice { point, sae })))?;
    let zero_ablated = mean_ce(model, seqs, &|| Some(Box::new(ZeroAblate { point })))?;
    let recovered = emlab_sae::metrics::ce_loss_recovered(clean, zero_ablated, spliced)?;
    let tokens = seqs.iter().map(|s| s.len().saturating_sub(1)).sum();
    Ok(CeReport { clean, spliced, zero_ablated, recovered, tokens })
}

/// SAE training settings for [`train_from_store`].
#[derive(Debug, Clone)]
pub struct SaeTrainConfig {
    pub k: usize,
    pub latents: usize,
    /// `topk` or `batchtopk`.
    pub arch: String,
    pub lr: f32,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
}

impl Default for SaeTrainConfig {
    fn default() -> Self {
        SaeTrainConfig { k: 32, latents: 4096, arch: "topk".into(), lr: 3e-4, batch: 1024, epochs: 1, seed: 0 }
    }
}

/// Trains an SAE on every row of `hook` in the store (rows shuffled within each shard, seeded),
/// and sets its hook and model names. `on_step` sees each step's statistics.
pub fn train_from_store(store: &ActsReader, hook: &str, cfg: &SaeTrainConfig, on_step: &mut dyn FnMut(&StepStats)) -> Result<Sae> {
    let d = store.index.d_model;
    let arch = match cfg.arch.as_str() {
        "topk" => Architecture::TopK { k: cfg.k },
        "batchtopk" => Architecture::BatchTopK { k: cfg.k, threshold_lr: 0.01 },
        a => return Err(Error::Invalid(format!("unknown SAE architecture `{a}` (topk or batchtopk)"))),
    };
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(Error::Invalid("batch and epochs must be > 0".into()));
    }
    // An SAE "trained" on nothing is saved like a real one; refuse instead.
    if store.index.rows == 0 {
        return Err(Error::io(&store.dir, "the activation store holds no rows: nothing to train an SAE on"));
    }
    let mut tc = TrainConfig::new(d, cfg.latents, arch);
    tc.lr = cfg.lr;
    tc.seed = cfg.seed;
    // Dead = silent for ~the whole store (at least one epoch's worth of tokens).
    tc.dead_after_tokens = (store.index.rows as u64).clamp(1, 1_000_000);
    // TopK SAEs train on the device EMLAB_DEVICE names (GPU: emlab_sae::device), others on the CPU.
    let mut tr = emlab_sae::AnyTrainer::from_env(tc)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    for _ in 0..cfg.epochs {
        store.for_each_shard(hook, &mut |rows, _| {
            let n = rows.len() / d;
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            let mut batch = Vec::with_capacity(cfg.batch.min(n) * d);
            for chunk in order.chunks(cfg.batch) {
                batch.clear();
                for &i in chunk {
                    batch.extend_from_slice(&rows[i * d..(i + 1) * d]);
                }
                let s = tr.step(&batch)?;
                on_step(&s);
            }
            Ok(())
        })?;
    }
    let mut sae = tr.to_sae()?;
    sae.meta.hook_name = Some(hook.to_string());
    sae.meta.model_name = Some(store.index.model.clone());
    Ok(sae)
}
