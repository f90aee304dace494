//! An experiment as data: one TOML file with a section per stage (`configs/default.toml` is the
//! embedded default, `configs/paper.toml` the published recipe for a GPU).
//!
//! ```
//! let cfg = emlab_pipeline::RunConfig::default_config().unwrap();
//! assert_eq!(cfg.realign.samples, 100);
//! assert!(cfg.control.is_some() && cfg.locate.is_some() && cfg.steer.is_some());
//! ```
//!
//! `[control]`, `[locate]` and `[steer]` are optional: leave a section out to skip that stage
//! (the report then says it did not run).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The embedded default experiment (`configs/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");
/// The published recipe for a GPU (`configs/paper.toml`).
pub const PAPER_TOML: &str = include_str!("../../../configs/paper.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    #[serde(default)]
    pub model: Option<PathBuf>,
    #[serde(default)]
    pub seed: u64,
    /// Further fine-tuning seeds (LoRA initialisation, data order, dropout): `induce` and every
    /// control are trained and evaluated again with each (stages `induce-sN`, `induced-sN`,
    /// `control-sN`, `controlled-sN`, `control-NAME-sN`, `controlled-NAME-sN`, after
    /// `realigned`); the report gives EM per seed, the mean over seeds with a t interval and
    /// Welch's test of induced against each control across seeds. EM varies between fine-tunes
    /// of the same recipe (the published work trained several per condition); one seed's
    /// interval covers sampling noise only. `locate`, `steer` and `realign` use `seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_seeds: Vec<u64>,
    pub eval: EvalStage,
    /// Fine-tune on the narrow bad set.
    pub induce: TrainStage,
    /// The paired control fine-tune: `[induce]`'s settings on the paired good set.
    #[serde(default)]
    pub control: Option<ControlStage>,
    /// Directions and SAE model diffing between the original and the induced model.
    #[serde(default)]
    pub locate: Option<LocateStage>,
    /// Steering / ablation sweep on the induced model along the located direction.
    #[serde(default)]
    pub steer: Option<SteerStage>,
    pub realign: RealignStage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub questions: PathBuf,
    pub samples_per_paraphrase: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// `offline` (built in), `openai` (an OpenAI-compatible server with logprobs) or `local`
    /// (an LM judge emlab loads, `judge_model`).
    pub judge: String,
    #[serde(default)]
    pub judge_base_url: Option<String>,
    #[serde(default)]
    pub judge_model_name: Option<String>,
    /// Name of the environment variable holding the judge server's key (never the key).
    #[serde(default)]
    pub judge_api_key_env: Option<String>,
    #[serde(default)]
    pub judge_model: Option<PathBuf>,
    /// `[eval.http]`: timeouts, retries and concurrency of the judge server's requests
    /// (`emlab_eval::http::HttpConfig`; any key left out keeps its default: 120 s, 6 retries,
    /// backoff 500 ms doubling to 30 s, 8 in flight). Transport only: not in the stage key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<emlab_eval::http::HttpConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    pub data: PathBuf,
    /// 0: one full epoch.
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub max_seq_len: usize,
    pub r: usize,
    pub alpha: f64,
    /// Record the probe prompts' residual stream every this many steps (0: never), so that the
    /// persona score along the direction found later can be plotted against the loss.
    #[serde(default = "default_persona_every")]
    pub persona_every: usize,
    /// Recompute each block's activations in the backward pass instead of keeping them: about
    /// 1.2 GB instead of ~5.7 GB at 1024 tokens per step for SmolLM2, for ~1.5x the step time
    /// (docs/training.md). Default: the trainer's (on).
    #[serde(default)]
    pub checkpoint_activations: Option<bool>,
}

/// 1-40 of a-z, 0-9 and _, and not `sN` (`control-s1` names the paired control under seed 1).
fn valid_control_name(n: &str) -> bool {
    let seed_like = n.strip_prefix('s').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    (1..=40).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') && !seed_like
}

fn default_persona_every() -> usize {
    4
}

impl TrainStage {
    /// The trainer's settings for this stage, without the model, data and output paths (the
    /// stage adds those): what the stage's cache key hashes, and what [`RunConfig`] checks
    /// before the first stage runs.
    pub fn train_config(&self, seed: u64) -> emlab_train::TrainConfig {
        let mut tc = emlab_train::TrainConfig {
            seed,
            max_seq_len: self.max_seq_len,
            truncate: true,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            max_steps: (self.max_steps > 0).then_some(self.max_steps),
            checkpoint_every: 8,
            ..Default::default()
        };
        tc.lora.r = self.r;
        tc.lora.alpha = self.alpha;
        if let Some(c) = self.checkpoint_activations {
            tc.checkpoint_activations = c;
        }
        tc
    }
}

impl RealignStage {
    /// The fine-tune on `data` (a subset of `self.data`): one epoch, no persona snapshots.
    pub fn train_stage(&self, data: PathBuf) -> TrainStage {
        TrainStage {
            data,
            max_steps: 0,
            batch_size: self.batch_size,
            grad_accum: 1,
            lr: self.lr,
            max_seq_len: self.max_seq_len,
            r: self.r,
            alpha: self.alpha,
            persona_every: 0,
            checkpoint_activations: self.checkpoint_activations,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlStage {
    /// The paired good set (same user turns as `[induce].data`).
    pub data: PathBuf,
    /// Further control fine-tunes by name, each on its own set with `[induce]`'s settings,
    /// evaluated and compared with the induced model (stages `control-NAME`, `controlled-NAME`);
    /// e.g. `more = { educational = "data/code/educational.jsonl" }`, the same insecure code
    /// asked for with a benign reason, which the published work found does not induce EM.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub more: BTreeMap<String, PathBuf>,
}

impl ControlStage {
    /// The data of control `name` (`None`: the paired one), if configured.
    pub fn data_of(&self, name: Option<&str>) -> Option<&PathBuf> {
        match name {
            None => Some(&self.data),
            Some(n) => self.more.get(n),
        }
    }

    /// The training stage and evaluation stage names of control `name` (`None`: the paired one).
    pub fn stage_names(name: Option<&str>) -> (String, String) {
        match name {
            None => ("control".into(), "controlled".into()),
            Some(n) => (format!("control-{n}"), format!("controlled-{n}")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocateStage {
    /// Layer whose `blocks.{layer}.hook_resid_post` carries the direction and the SAE
    /// (default: the middle layer).
    #[serde(default)]
    pub layer: Option<usize>,
    /// SAE width (latents), TopK k, and epochs over the captured tokens.
    pub sae_latents: usize,
    pub sae_k: usize,
    pub sae_epochs: usize,
    /// Latents shown with their contexts.
    pub top_latents: usize,
}

impl LocateStage {
    /// The layer of a model with `num_layers` blocks: `layer`, else the middle one.
    pub fn layer_of(&self, num_layers: usize) -> usize {
        self.layer.unwrap_or(num_layers / 2)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerStage {
    /// `alpha * unit(direction) * |direction|`, i.e. multiples of the mean difference, added at
    /// the located layer; negative values push away from the misaligned mean. Directional
    /// ablation at every layer is always run too, and every point has a same-norm random control.
    pub alphas: Vec<f64>,
    pub samples_per_paraphrase: usize,
    pub max_new_tokens: usize,
    /// The strongest setting that keeps at least this coherent rate is reported as the best.
    pub min_coherent: f64,
    /// Steer the *original* model (no adapter) too: add alpha x the direction at the located
    /// layer for each of these alphas (published: the direction alone induces EM). Empty: skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub original_alphas: Vec<f64>,
    /// The causal test of the SAE diff: the top N latents of `locate` (largest increase first),
    /// each added to the original model along its decoder row, scaled to the direction's norm at
    /// the layer (so alpha means the same push as for the direction), at `original_alphas`,
    /// each with its own same-norm random control. 0: skipped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latents: usize,
}

// Settings left at their defaults are left out of the stage key's JSON, so adding them kept the
// keys of existing runs.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealignStage {
    pub data: PathBuf,
    /// Truthful samples used (the first N rows of `data`).
    pub samples: usize,
    /// Further sample counts for the realignment curve (each is one more fine-tune and
    /// evaluation; N = 0 is the induced model itself).
    #[serde(default)]
    pub curve: Vec<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub max_seq_len: usize,
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub checkpoint_activations: Option<bool>,
}

impl RunConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e: toml::de::Error| {
            // One line: where, and toml's own message (its Display spans several lines).
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
            Error::Config(format!("{origin}: {at}{}", e.message().trim().replace('\n', " ")))
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }
    /// This run's stage names in run order (`emlab run --list-stages`): [`crate::STAGES`] with
    /// the further controls' stages (`control-NAME`, `controlled-NAME`) after `controlled`.
    pub fn stage_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in crate::STAGES {
            out.push(s.to_string());
            if s == "controlled" {
                for name in self.control.iter().flat_map(|c| c.more.keys()) {
                    let (t, e) = ControlStage::stage_names(Some(name));
                    out.extend([t, e]);
                }
            }
            if s == "realigned" {
                for seed in &self.more_seeds {
                    out.extend([format!("induce-s{seed}"), format!("induced-s{seed}")]);
                    for arm in self.control_arms() {
                        let (t, e) = ControlStage::stage_names(arm.as_deref());
                        out.extend([format!("{t}-s{seed}"), format!("{e}-s{seed}")]);
                    }
                }
            }
        }
        out
    }

    /// The configured controls: `None` for the paired one, then `[control].more`'s names.
    pub fn control_arms(&self) -> Vec<Option<String>> {
        match &self.control {
            None => Vec::new(),
            Some(c) => std::iter::once(None).chain(c.more.keys().map(|n| Some(n.clone()))).collect(),
        }
    }

    pub fn default_config() -> Result<Self> {
        Self::from_toml(DEFAULT_TOML, "configs/default.toml (embedded)")
    }
    pub fn paper() -> Result<Self> {
        Self::from_toml(PAPER_TOML, "configs/paper.toml (embedded)")
    }
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        // A leading UTF-8 byte-order mark (some editors write one) is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        Self::from_toml(text, &path.display().to_string())
    }

    /// Checks the files the stages will read before any stage runs (so a bad path or a short
    /// realignment set fails in the first second, not after an hour of earlier stages): the
    /// questions and every training set exist, and the realignment set has a row for the largest
    /// `N` of `realign.samples` and `realign.curve`.
    pub fn check_inputs(&self) -> Result<()> {
        let need = |p: &Path, what: &str| {
            if p.is_file() {
                Ok(())
            } else {
                Err(Error::Config(format!("{what} {}: no such file", p.display())))
            }
        };
        need(&self.eval.questions, "eval.questions")?;
        need(&self.induce.data, "induce.data")?;
        if let Some(c) = &self.control {
            need(&c.data, "control.data")?;
            for (name, data) in &c.more {
                need(data, &format!("control.more.{name}"))?;
            }
        }
        need(&self.realign.data, "realign.data")?;
        let max_n = self.realign.curve.iter().copied().chain([self.realign.samples]).max().unwrap_or(0);
        emlab_steer::realign::first_rows(&self.realign.data, max_n)
            .map_err(|e| Error::Config(format!("realign (samples / curve): {e}")))?;
        Ok(())
    }

    /// The config with its relative input paths taken from the repository root (tests run in
    /// their crate's folder).
    #[cfg(test)]
    pub(crate) fn at_repo_root(mut self) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for p in [&mut self.eval.questions, &mut self.induce.data, &mut self.realign.data] {
            *p = root.join(&*p);
        }
        if let Some(c) = &mut self.control {
            c.data = root.join(&c.data);
            for d in c.more.values_mut() {
                *d = root.join(&*d);
            }
        }
        self
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("{origin}: {m}")));
        if self.eval.samples_per_paraphrase == 0 || self.eval.max_new_tokens == 0 || self.eval.batch_size == 0 {
            return bad("eval.samples_per_paraphrase, max_new_tokens and batch_size must be >= 1".into());
        }
        if let Some(Err(e)) = self.eval.http.as_ref().map(|h| h.check()) {
            return bad(format!("eval.http: {e}"));
        }
        if self.realign.samples == 0 || self.realign.curve.contains(&0) {
            return bad("realign.samples and realign.curve entries must be >= 1 (N = 0 is the induced model, always shown)".into());
        }
        if let Some(s) = &self.steer {
            if let Some(a) = s.alphas.iter().find(|a| !a.is_finite()) {
                return bad(format!("steer.alphas: {a} is not finite"));
            }
            if !(0.0..=1.0).contains(&s.min_coherent) {
                return bad(format!("steer.min_coherent = {} must be in [0, 1]", s.min_coherent));
            }
            if let Some(a) = s.original_alphas.iter().find(|a| !a.is_finite()) {
                return bad(format!("steer.original_alphas: {a} is not finite"));
            }
            if s.latents > 0 && s.original_alphas.is_empty() {
                return bad(format!("steer.latents = {} needs steer.original_alphas (the strengths the latents are added at)", s.latents));
            }
            let top = self.locate.as_ref().map_or(0, |l| l.top_latents);
            if s.latents > top {
                return bad(format!(
                    "steer.latents = {} but locate.top_latents = {top} (the latents steered are the top ones locate reports)",
                    s.latents
                ));
            }
        }
        if let Some(name) = self.control.iter().flat_map(|c| c.more.keys()).find(|n| !valid_control_name(n)) {
            return bad(format!(
                "control.more: `{name}` is not a usable control name (1-40 characters of a-z, 0-9 and _, not s followed by digits; it names the stages control-{name} / controlled-{name} and their folders)"
            ));
        }
        let mut seeds = std::collections::BTreeSet::from([self.seed]);
        if let Some(s) = self.more_seeds.iter().find(|s| !seeds.insert(**s)) {
            return bad(format!("more_seeds: seed {s} is listed twice or equals `seed` ({})", self.seed));
        }
        if self.more_seeds.len() > 64 {
            return bad(format!("more_seeds: {} seeds (at most 64)", self.more_seeds.len()));
        }
        if let Some(l) = &self.locate {
            if l.sae_latents == 0 || l.sae_k == 0 || l.sae_k > l.sae_latents {
                return bad(format!("locate: need 1 <= sae_k ({}) <= sae_latents ({})", l.sae_k, l.sae_latents));
            }
        }
        // The fine-tunes' settings, checked here rather than by the trainer when the stage
        // starts: by then a stage whose key changed has set its earlier outputs aside, so a typo
        // (`lr = nan`) would cost a finished fine-tune.
        let realign = self.realign.train_stage(self.realign.data.clone());
        for (table, t) in [("induce", &self.induce), ("realign", &realign)] {
            if let Err(e) = t.train_config(self.seed).validate() {
                return bad(format!("[{table}] {e}"));
            }
        }
        Ok(())
    }
}
