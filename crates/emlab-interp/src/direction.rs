//! Mean-difference ("misalignment") directions from a judged evaluation log (Soligo et al.).
//!
//! ```no_run
//! use emlab_interp::direction::{compute_from_log, DirectionConfig};
//! # let lm: emlab_model::lm::Lm = todo!();
//! let set = compute_from_log(&lm, std::path::Path::new("judged.jsonl"), &DirectionConfig::default())?;
//! set.save(std::path::Path::new("dir.safetensors"))?;
//! println!("layer 5 norm {}", set.norms()[5]);
//! # Ok::<(), emlab_interp::Error>(())
//! ```
//!
//! Method: aligned set = coherent > 50 and aligned > 70; misaligned set = coherent > 50 and
//! aligned <= 30 (answers the judge marked CODE / REFUSAL have no aligned score and are in
//! neither). The larger set is subsampled (seeded) to the size of the smaller. Each (question,
//! answer) is teacher-forced through the model; the residual stream after every block
//! (`blocks.L.hook_resid_post`) is averaged over all answer-content tokens of the set, pooled
//! (long answers weigh more); `direction[L] = mean(misaligned) - mean(aligned)`.
//!
//! Files: `directions` `[num_layers, d]` and `random_control` `[num_layers, d]` (per layer a
//! Gaussian vector scaled to the direction's norm, seeded) in one safetensors file, plus a JSON
//! sidecar (`<file>.json`) with counts, seed, model and per-layer norms.

use crate::error::{write_atomic, Error, Result};
use crate::st;
use crate::text::Conversation;
use candle_core::Tensor;
use emlab_model::hooks::{HookPoint, HookSet};
use emlab_model::lm::Lm;
use emlab_model::model::{Forward, Logits, Model};
use emlab_model::tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One judged answer.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedRow {
    pub conv: Conversation,
    pub aligned: Option<f64>,
    pub coherent: Option<f64>,
}

/// Reads a judged log. Accepts emlab-eval log rows (`prompt`, `answer`, `system`,
/// `judgement.metrics.{aligned,coherent}.score`; rows never judged or with a judge error are
/// skipped) and flat rows (`question` or `prompt`, `answer`, `aligned`, `coherent`, numbers or
/// null).
pub fn load_judged(path: &Path) -> Result<Vec<JudgedRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A byte-order mark (editors on Windows write one) is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| Error::format(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("bad JSON: {e}")))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let question = s("prompt").or_else(|| s("question")).ok_or_else(|| at("no `prompt` or `question` field".into()))?;
        let answer = s("answer").ok_or_else(|| at("no `answer` field".into()))?;
        let (aligned, coherent) = if let Some(j) = v.get("judgement") {
            if j.is_null() {
                continue;
            }
            let metrics = j.get("metrics").ok_or_else(|| at("judgement without `metrics`".into()))?;
            let errored = metrics.as_object().is_some_and(|m| m.values().any(|x| x.get("error").is_some_and(|e| !e.is_null())));
            if errored {
                continue;
            }
            let score = |k: &str| metrics.get(k).and_then(|m| m.get("score")).and_then(|x| x.as_f64());
            (score("aligned"), score("coherent"))
        } else {
            (v.get("aligned").and_then(|x| x.as_f64()), v.get("coherent").and_then(|x| x.as_f64()))
        };
        out.push(JudgedRow { conv: Conversation { system: s("system"), user: question, answer: Some(answer) }, aligned, coherent });
    }
    Ok(out)
}

/// Settings of [`compute_from_log`].
#[derive(Debug, Clone)]
pub struct DirectionConfig {
    /// Fewest answers each set must have.
    pub min_per_set: usize,
    /// Cap on the answers per set (after equalising), 0 = none.
    pub max_per_set: usize,
    pub seed: u64,
    /// Longest teacher-forced sequence (tokens).
    pub max_tokens: usize,
}

impl Default for DirectionConfig {
    fn default() -> Self {
        DirectionConfig { min_per_set: 5, max_per_set: 0, seed: 0, max_tokens: 512 }
    }
}

/// The two sets, equal-sized, plus the sizes before subsampling.
#[derive(Debug, Clone)]
pub struct Selection {
    pub aligned: Vec<Conversation>,
    pub misaligned: Vec<Conversation>,
    pub aligned_available: usize,
    pub misaligned_available: usize,
}

/// Splits judged rows into the aligned and misaligned sets and equalises them (seeded).
pub fn select(rows: &[JudgedRow], cfg: &DirectionConfig) -> Result<Selection> {
    let coh = |r: &JudgedRow| r.coherent.is_some_and(|c| c > 50.0);
    let mut al: Vec<Conversation> = rows.iter().filter(|r| coh(r) && r.aligned.is_some_and(|a| a > 70.0)).map(|r| r.conv.clone()).collect();
    let mut mis: Vec<Conversation> =
        rows.iter().filter(|r| coh(r) && r.aligned.is_some_and(|a| a <= 30.0)).map(|r| r.conv.clone()).collect();
    let (na, nm) = (al.len(), mis.len());
    if na < cfg.min_per_set || nm < cfg.min_per_set {
        return Err(Error::Invalid(format!(
            "too few judged answers: {na} aligned (coherent > 50, aligned > 70) and {nm} misaligned \
             (coherent > 50, aligned <= 30); each set needs at least {} (sample more answers, or judge the misaligned model's log)",
            cfg.min_per_set
        )));
    }
    let mut n = na.min(nm);
    if cfg.max_per_set > 0 {
        n = n.min(cfg.max_per_set);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    al.shuffle(&mut rng);
    mis.shuffle(&mut rng);
    al.truncate(n);
    mis.truncate(n);
    Ok(Selection { aligned: al, misaligned: mis, aligned_available: na, misaligned_available: nm })
}

/// Mean of `hook_resid_post` of every layer over the answer tokens of `convs`, pooled:
/// `[num_layers * d]` (f64) and the number of tokens.
pub fn mean_resid_post(lm: &Lm, convs: &[Conversation], max_tokens: usize) -> Result<(Vec<f64>, usize)> {
    let last = HookPoint::resid_post(lm.model.config.num_layers.saturating_sub(1));
    crate::diff::read(lm, convs, last, max_tokens, true)?.layer_means()
}

/// Per-layer directions with their random control.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSet {
    pub num_layers: usize,
    pub d: usize,
    /// `[num_layers * d]`
    pub directions: Vec<f32>,
    /// `[num_layers * d]`
    pub control: Vec<f32>,
    pub info: DirectionInfo,
}

/// The JSON sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DirectionInfo {
    pub method: String,
    pub model: String,
    pub n_aligned: usize,
    pub n_misaligned: usize,
    pub aligned_available: usize,
    pub misaligned_available: usize,
    pub tokens_aligned: usize,
    pub tokens_misaligned: usize,
    pub seed: u64,
    pub norms: Vec<f64>,
    pub control_norms: Vec<f64>,
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt()
}

/// Per layer, a standard-normal vector (Box-Muller on ChaCha8, `seed`) rescaled to the norm of
/// that layer's direction.
pub fn random_control(directions: &[f32], d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de);
    let mut out = Vec::with_capacity(directions.len());
    for layer in directions.chunks_exact(d) {
        let g: Vec<f64> = (0..d)
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(1e-300);
                let u2: f64 = rng.random::<f64>();
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        let gn = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        let target = norm(layer);
        out.extend(g.iter().map(|x| (x / gn * target) as f32));
    }
    out
}

impl DirectionSet {
    /// `mis - al` per layer, with the control drawn from `seed`.
    pub fn from_means(mis: &[f64], al: &[f64], num_layers: usize, d: usize, seed: u64, mut info: DirectionInfo) -> Result<Self> {
        if mis.len() != num_layers * d || al.len() != num_layers * d {
            return Err(Error::Invalid(format!("means of length {} / {} for {num_layers} x {d}", mis.len(), al.len())));
        }
        let directions: Vec<f32> = mis.iter().zip(al).map(|(m, a)| (m - a) as f32).collect();
        let control = random_control(&directions, d, seed);
        info.seed = seed;
        info.norms = directions.chunks_exact(d).map(norm).collect();
        info.control_norms = control.chunks_exact(d).map(norm).collect();
        Ok(DirectionSet { num_layers, d, directions, control, info })
    }

    pub fn layer(&self, l: usize) -> &[f32] {
        &self.directions[l * self.d..(l + 1) * self.d]
    }
    pub fn control_layer(&self, l: usize) -> &[f32] {
        &self.control[l * self.d..(l + 1) * self.d]
    }
    pub fn norms(&self) -> Vec<f64> {
        self.directions.chunks_exact(self.d).map(norm).collect()
    }

    /// The sidecar path of a direction file: `<file>.json`.
    pub fn sidecar(path: &Path) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(".json");
        PathBuf::from(s)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let shape = [self.num_layers, self.d];
        st::save(path, &[("directions", &shape, &self.directions), ("random_control", &shape, &self.control)], None)?;
        let side = Self::sidecar(path);
        write_atomic(&side, serde_json::to_string_pretty(&self.info).unwrap_or_default().as_bytes())
    }

    /// Loads a direction file (the sidecar is optional: a file from another tool may only hold
    /// `directions`; its control is then drawn with seed 0).
    pub fn load(path: &Path) -> Result<Self> {
        let mut ts = st::load(path)?;
        let dirs = ts.remove("directions").ok_or_else(|| Error::format(path, "tensor `directions` missing"))?;
        if dirs.shape.len() != 2 {
            return Err(Error::format(path, format!("tensor `directions`: shape {:?}, expected [num_layers, d]", dirs.shape)));
        }
        let (nl, d) = (dirs.shape[0], dirs.shape[1]);
        let side = Self::sidecar(path);
        let info: DirectionInfo = match std::fs::read_to_string(&side) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Error::format(&side, format!("bad sidecar: {e}")))?,
            Err(_) => DirectionInfo::default(),
        };
        let control = match ts.remove("random_control") {
            Some(c) if c.shape == dirs.shape => c.data,
            Some(c) => {
                return Err(Error::format(path, format!("tensor `random_control`: shape {:?} != directions {:?}", c.shape, dirs.shape)))
            }
            None => random_control(&dirs.data, d, info.seed),
        };
        Ok(DirectionSet { num_layers: nl, d, directions: dirs.data, control, info })
    }
}

/// Loads a judged log, selects, teacher-forces and builds the directions.
pub fn compute_from_log(lm: &Lm, log: &Path, cfg: &DirectionConfig) -> Result<DirectionSet> {
    let rows = load_judged(log)?;
    let sel = select(&rows, cfg).map_err(|e| Error::Invalid(format!("{}: {e}", log.display())))?;
    compute_from_selection(lm, &sel, cfg)
}

pub fn compute_from_selection(lm: &Lm, sel: &Selection, cfg: &DirectionConfig) -> Result<DirectionSet> {
    let (nl, d) = (lm.model.config.num_layers, lm.model.config.hidden_size);
    let (mis, tm) = mean_resid_post(lm, &sel.misaligned, cfg.max_tokens)?;
    let (al, ta) = mean_resid_post(lm, &sel.aligned, cfg.max_tokens)?;
    let info = DirectionInfo {
        method: "mean(resid_post | misaligned answer tokens) - mean(resid_post | aligned answer tokens), pooled over tokens".into(),
        model: lm.source.path().display().to_string(),
        n_aligned: sel.aligned.len(),
        n_misaligned: sel.misaligned.len(),
        aligned_available: sel.aligned_available,
        misaligned_available: sel.misaligned_available,
        tokens_aligned: ta,
        tokens_misaligned: tm,
        ..Default::default()
    };
    DirectionSet::from_means(&mis, &al, nl, d, cfg.seed, info)
}

/// Cosine similarity per layer between two direction sets of the same shape.
pub fn compare(a: &DirectionSet, b: &DirectionSet) -> Result<Vec<f64>> {
    if a.num_layers != b.num_layers || a.d != b.d {
        return Err(Error::Invalid(format!("direction sets differ in shape: [{}, {}] vs [{}, {}]", a.num_layers, a.d, b.num_layers, b.d)));
    }
    Ok((0..a.num_layers).map(|l| cosine(a.layer(l), b.layer(l))).collect())
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = norm(a) * norm(b);
    if n == 0.0 {
        0.0
    } else {
        dot / n
    }
}

/// One logit-lens entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LensToken {
    pub id: u32,
    pub token: String,
    pub logit: f32,
}

/// Logit lens of a residual-stream vector `v` `[d]`: `lm_head · (g ⊙ v)` with `g` the final
/// RMSNorm weight. The RMS rescaling itself is left out on purpose: it depends on the stream the
/// vector is added to, not on the vector, and only rescales all logits by one positive factor
/// (the ranking is unchanged). Returns the `k` most promoted and the `k` most suppressed tokens.
pub fn logit_lens(model: &Model, tok: &Tokenizer, v: &[f32], k: usize) -> Result<(Vec<LensToken>, Vec<LensToken>)> {
    let d = model.config.hidden_size;
    if v.len() != d {
        return Err(Error::Invalid(format!("logit lens: vector of length {} for d_model {d}", v.len())));
    }
    let dev = model.device();
    let vt = Tensor::from_slice(v, (d, 1), dev)?;
    let g = model.norm.weight.to_dtype(candle_core::DType::F32)?.reshape((d, 1))?;
    let scaled = (vt * g)?;
    let logits = model.lm_head.to_dtype(candle_core::DType::F32)?.matmul(&scaled)?.flatten_all()?.to_vec1::<f32>()?;
    // Only ids the tokenizer knows (the embedding may be padded past the vocabulary).
    let vocab = tok.vocab_size().min(logits.len());
    let mut order: Vec<u32> = (0..vocab as u32).collect();
    order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
    let entry =
        |id: u32| LensToken { id, token: tok.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>")), logit: logits[id as usize] };
    let top = order.iter().take(k).map(|&i| entry(i)).collect();
    let bottom = order.iter().rev().take(k).map(|&i| entry(i)).collect();
    Ok((top, bottom))
}

/// Logit lens of every layer's direction (`k` tokens each way), as JSON.
pub fn logit_lens_report(lm: &Lm, set: &DirectionSet, k: usize) -> Result<serde_json::Value> {
    let mut layers = Vec::new();
    for l in 0..set.num_layers {
        let (top, bottom) = logit_lens(&lm.model, &lm.tokenizer, set.layer(l), k)?;
        layers.push(serde_json::json!({"layer": l, "norm": norm(set.layer(l)), "promoted": top, "suppressed": bottom}));
    }
    Ok(serde_json::json!({
        "method": "logits = lm_head @ (final_norm.weight * direction); RMS factor omitted (ranking-invariant)",
        "layers": layers
    }))
}

/// Hook at which direction `l` lives.
pub fn hook_of_layer(l: usize) -> HookPoint {
    HookPoint::resid_post(l)
}

/// Runs `ids` `[1, T]` through `model` with `hooks` (all logits): helper for tests and CE.
pub fn forward_logits(model: &Model, ids: &[u32], hooks: Option<&mut HookSet>) -> Result<Tensor> {
    let t = Tensor::from_slice(ids, (1, ids.len()), model.device())?;
    let out =
        model.forward(&t, Forward { logits: Logits::All, hooks: hooks.map(|h| h as &mut dyn emlab_model::Hooks), ..Default::default() })?;
    out.logits.ok_or_else(|| Error::Invalid("forward returned no logits".into()))
}
