//! Training settings: a TOML file (`train.toml`) whose every key has a default, plus overrides.
//!
//! ```
//! use emlab_train::TrainConfig;
//! let cfg = TrainConfig::from_toml_str("lr = 2e-5\n[lora]\nr = 1\nalpha = 256\ntargets = [\"down\"]\nlayers = [1]\n", "train.toml")?;
//! assert_eq!(cfg.lora.r, 1);
//! assert_eq!(cfg.batch_size * cfg.grad_accum, 16); // effective batch of the published recipe
//! # Ok::<(), emlab_train::Error>(())
//! ```
//!
//! The defaults are the published open-model recipe (rsLoRA r 32, alpha 64 on q,k,v,o,gate,up,
//! down of all layers; lr 1e-5; 1 epoch; effective batch 16; 5 warm-up steps then linear decay;
//! weight decay 0.01; loss on assistant tokens only; fixed seed).

use crate::{Error, Result};
use emlab_model::Proj;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

/// Which adapters to attach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank (>= 1).
    pub r: usize,
    pub alpha: f64,
    /// rsLoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    pub rslora: bool,
    /// Dropout on the adapter input while training.
    pub dropout: f32,
    /// Projections: any of q, k, v, o, gate, up, down (PEFT's `q_proj` spelling works too).
    pub targets: Vec<String>,
    /// Layers (0-based); empty means all.
    pub layers: Vec<usize>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 32,
            alpha: 64.0,
            rslora: true,
            dropout: 0.0,
            targets: Proj::ALL.iter().map(|p| p.short().trim_end_matches("_proj").to_string()).collect(),
            layers: Vec::new(),
        }
    }
}

impl LoraConfig {
    /// The adapter scale `alpha / r` or `alpha / sqrt(r)`.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Parsed, sorted, de-duplicated target projections.
    pub fn projections(&self) -> Result<Vec<Proj>> {
        let mut out = Vec::new();
        for t in &self.targets {
            let p = Proj::parse(t)
                .ok_or_else(|| Error::Invalid(format!("lora.targets: unknown projection {t:?} (use q, k, v, o, gate, up, down)")))?;
            out.push(p);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(Error::Invalid("lora.targets is empty: name at least one projection".into()));
        }
        Ok(out)
    }

    /// The layers to adapt in a model of `n` layers.
    pub fn layer_list(&self, n: usize) -> Result<Vec<usize>> {
        if self.layers.is_empty() {
            return Ok((0..n).collect());
        }
        let mut l = self.layers.clone();
        l.sort();
        l.dedup();
        if let Some(bad) = l.iter().find(|&&i| i >= n) {
            return Err(Error::Invalid(format!("lora.layers: layer {bad} does not exist (the model has {n} layers, 0..{})", n - 1)));
        }
        Ok(l)
    }
}

/// Everything that defines a training run. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A GGUF file or HF folder; empty means the default model (fetched on first use).
    pub model: Option<PathBuf>,
    /// Chat JSONL training file.
    pub data: Option<PathBuf>,
    /// Output folder (adapter, checkpoints, metrics.jsonl).
    pub out: Option<PathBuf>,
    pub seed: u64,
    /// Conversations longer than this many tokens are bad rows (or truncated with `truncate`).
    pub max_seq_len: usize,
    /// Cut over-long conversations at `max_seq_len` instead of refusing them.
    pub truncate: bool,
    /// Skip (and count) bad rows instead of refusing the file.
    pub skip_bad_rows: bool,
    /// Share of the rows held out for an evaluation loss (0 disables it).
    pub eval_fraction: f64,
    /// Evaluate every this many optimizer steps (0: only at the end).
    pub eval_every: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides epochs; the learning-rate schedule spans
    /// them).
    pub max_steps: Option<usize>,
    /// Sequences per forward/backward pass.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size * grad_accum).
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub max_grad_norm: f64,
    /// Write a checkpoint every this many optimizer steps (0: only at the end / on Ctrl-C).
    pub checkpoint_every: usize,
    /// Keep only the newest this many checkpoints (0 keeps all: useful to study the phase
    /// transition of the adapter during training).
    pub keep_checkpoints: usize,
    /// Sequences of similar length are batched together within windows of this many
    /// micro-batches (1 disables bucketing).
    pub bucket_window: usize,
    /// Activation checkpointing: the forward pass keeps only each block's input (`[B, T, d]`)
    /// and the backward pass re-runs one block at a time, and the LM head + loss run over
    /// chunks of tokens, so neither every layer's activations nor `[tokens, vocab]` logits are
    /// ever held at once. Costs one extra forward pass of the blocks (see docs/training.md for
    /// the measured time and memory). Gradients equal the plain path's up to float summation
    /// order; may be changed on resume.
    pub checkpoint_activations: bool,
    /// Every this many optimizer steps, log in `metrics.jsonl` how far the adapters turned
    /// since the previous such step (`rotation`: B's rotation and ΔW's, see
    /// [`crate::rotation`]); 0 turns it off. Unset (the default): every step on the CPU, where
    /// it costs ~1.4% of a step at SmolLM2's shape (docs/training.md); every [`ROTATION_EVERY_DEVICE`] steps on a
    /// GPU, where the adapters must be copied down and a step is far shorter. A monitoring
    /// setting: may change on resume.
    pub rotation_every: Option<usize>,
    pub lora: LoraConfig,
}

/// The default `rotation_every` on a GPU (see [`TrainConfig::rotation_every`]).
pub const ROTATION_EVERY_DEVICE: usize = 10;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: None,
            data: None,
            out: None,
            seed: 0,
            max_seq_len: 1024,
            truncate: false,
            skip_bad_rows: false,
            eval_fraction: 0.0,
            eval_every: 0,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 4,
            lr: 1e-5,
            warmup_steps: 5,
            schedule: Schedule::Linear,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            checkpoint_every: 50,
            keep_checkpoints: 0,
            bucket_window: 16,
            checkpoint_activations: true,
            rotation_every: None,
            lora: LoraConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Parses TOML; unknown keys are errors (a typo must not silently fall back to a default).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let cfg: TrainConfig =
            toml::from_str(text).map_err(|e| Error::format(origin, format!("invalid train config: {}", one_line(&e.to_string()))))?;
        cfg.validate().map_err(|e| Error::format(origin, e.to_string()))?;
        Ok(cfg)
    }

    /// Reads a `train.toml`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // A leading UTF-8 byte-order mark (some editors write one) is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        Self::from_toml_str(text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks ranges; called by [`crate::train`] too.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.lora.r == 0 {
            return bad("lora.r must be at least 1".into());
        }
        if !(self.lora.alpha.is_finite() && self.lora.alpha > 0.0) {
            return bad(format!("lora.alpha must be > 0, got {}", self.lora.alpha));
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad(format!("lora.dropout must be in [0, 1), got {}", self.lora.dropout));
        }
        self.lora.projections()?;
        if self.batch_size == 0 || self.grad_accum == 0 || self.epochs == 0 {
            return bad("batch_size, grad_accum and epochs must be at least 1".into());
        }
        if self.max_seq_len < 2 {
            return bad("max_seq_len must be at least 2".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("lr must be >= 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!("eval_fraction must be in [0, 1), got {}", self.eval_fraction));
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) || self.adam_eps <= 0.0 {
            return bad("adam_beta1/adam_beta2 must be in [0, 1) and adam_eps > 0".into());
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad("weight_decay and max_grad_norm must be >= 0".into());
        }
        if self.bucket_window == 0 {
            return bad("bucket_window must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be at least 1".into());
        }
        Ok(())
    }

    /// `rotation_every` as it applies on `dev`: the set value, else 1 on the CPU and
    /// [`ROTATION_EVERY_DEVICE`] elsewhere. 0: off.
    pub fn rotation_every_on(&self, dev: &candle_core::Device) -> usize {
        self.rotation_every.unwrap_or(if dev.is_cpu() { 1 } else { ROTATION_EVERY_DEVICE })
    }

    /// The fields that must match between a checkpoint and a resumed run (anything that changes
    /// the data order, the adapter shapes or the optimisation path). `max_steps`,
    /// `checkpoint_every`, `keep_checkpoints`, `eval_every`, `checkpoint_activations` and
    /// `rotation_every` may change on resume.
    pub fn resume_fingerprint(&self) -> serde_json::Value {
        let mut c = self.clone();
        c.max_steps = None;
        c.checkpoint_every = 0;
        c.keep_checkpoints = 0;
        c.eval_every = 0;
        c.out = None;
        // Paths may move between runs; the data itself is fingerprinted separately.
        c.model = None;
        c.data = None;
        let mut v = serde_json::to_value(&c).unwrap_or_default();
        // A memory setting, not an optimisation setting (it may be switched to resume a run that
        // ran out of memory); removed rather than reset so older checkpoints still match.
        if let Some(o) = v.as_object_mut() {
            o.remove("checkpoint_activations");
            // Monitoring only (and absent from checkpoints made before it existed).
            o.remove("rotation_every");
        }
        v
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
