//! Activation store: residual-stream activations at chosen hook points, streamed to sharded
//! safetensors with running statistics.
//!
//! ```no_run
//! use emlab_interp::acts::{capture, ActsReader, CaptureConfig};
//! use emlab_interp::text::Conversation;
//! # let lm: emlab_model::lm::Lm = todo!();
//! let convs = vec![Conversation::new(None, "Hi", Some("Hello there."))];
//! let hooks = vec!["blocks.1.hook_resid_post".parse()?];
//! let dir = std::path::Path::new("acts");
//! capture(&lm, &convs, &hooks, dir, &CaptureConfig::default())?;
//! let r = ActsReader::open(dir)?;
//! let (rows, d) = r.read_all("blocks.1.hook_resid_post")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout of a store folder:
//! - `acts-00000.safetensors`, ...: one `[n, d]` f32 tensor per hook (named by the hook), plus
//!   `token_ids` and `sequence` (`[n]`, stored as f32: exact for ids below 2^24) saying which
//!   token and which conversation each row comes from;
//! - `index.json`: format, model path and SHA-256, hook names, `d_model`, shards with their row
//!   counts, total rows, and per hook the running mean and (population) variance per dimension,
//!   accumulated with Welford/Chan updates in f64;
//! - `sequences.jsonl`: the captured conversations (chat JSONL), so later stages (CE loss with
//!   a spliced SAE, feature contexts) can re-run exactly the same text.
//!
//! Rows are the answer tokens of (prompt, answer) pairs, or every token of bare prompts (see
//! [`crate::text`]). Memory stays bounded: a shard is written every `shard_rows` rows.

use crate::error::{write_atomic, Error, Result};
use crate::st;
use crate::text::{save_conversations, Conversation, Encoded};
use candle_core::Tensor;
use emlab_model::hooks::{HookPoint, HookSet};
use emlab_model::lm::Lm;
use emlab_model::load::Source;
use emlab_model::model::{Forward, Logits, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "emlab-acts-v1";

/// Running mean and variance per dimension (Chan et al.'s parallel Welford update, in f64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    pub count: u64,
    pub mean: Vec<f64>,
    /// Sum of squared deviations from the mean.
    pub m2: Vec<f64>,
}

impl RunningStats {
    pub fn new(d: usize) -> Self {
        RunningStats { count: 0, mean: vec![0.0; d], m2: vec![0.0; d] }
    }
    /// Adds `rows` (`[n, d]` row-major).
    pub fn update(&mut self, rows: &[f32]) {
        let d = self.mean.len();
        let n = rows.len() / d;
        if n == 0 {
            return;
        }
        let mut bm = vec![0.0f64; d];
        for r in rows.chunks_exact(d) {
            for (m, x) in bm.iter_mut().zip(r) {
                *m += *x as f64;
            }
        }
        bm.iter_mut().for_each(|m| *m /= n as f64);
        let mut bm2 = vec![0.0f64; d];
        for r in rows.chunks_exact(d) {
            for ((s, x), m) in bm2.iter_mut().zip(r).zip(&bm) {
                let dx = *x as f64 - m;
                *s += dx * dx;
            }
        }
        let (na, nb) = (self.count as f64, n as f64);
        let nt = na + nb;
        for j in 0..d {
            let delta = bm[j] - self.mean[j];
            self.mean[j] += delta * nb / nt;
            self.m2[j] += bm2[j] + delta * delta * na * nb / nt;
        }
        self.count += n as u64;
    }
    /// Population variance (`m2 / count`).
    pub fn variance(&self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.m2.iter().map(|m| m / n).collect()
    }
}

/// Summary statistics of one hook as stored in `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookStats {
    pub count: u64,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub rows: usize,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub model: String,
    pub model_sha256: String,
    pub hooks: Vec<String>,
    pub d_model: usize,
    pub rows: usize,
    pub sequences: usize,
    pub shards: Vec<ShardInfo>,
    pub stats: BTreeMap<String, HookStats>,
}

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Rows per shard (memory bound: hooks x shard_rows x d floats are buffered).
    pub shard_rows: usize,
    /// Longest sequence fed to the model; longer conversations are cut (answers keep their
    /// first tokens).
    pub max_tokens: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig { shard_rows: 65536, max_tokens: 512 }
    }
}

/// SHA-256 of a model's weights: the GGUF file, or the weight files of an HF folder (hash of
/// the per-file hashes, in file-name order).
pub fn model_sha256(path: &Path) -> Result<String> {
    match Source::detect(path)? {
        Source::Gguf { path } => Ok(emlab_model::util::sha256_file(&path)?),
        Source::Hf { dir } => {
            let files = emlab_model::load::hf_weight_files(&dir)?;
            let mut joined = String::new();
            for f in files {
                joined.push_str(&emlab_model::util::sha256_file(&f)?);
            }
            let tmp = std::env::temp_dir().join(format!(".emlab-hash-{}", std::process::id()));
            std::fs::write(&tmp, joined.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
            let h = emlab_model::util::sha256_file(&tmp);
            let _ = std::fs::remove_file(&tmp);
            Ok(h?)
        }
    }
}

/// Runs one encoded sequence and returns, per hook, the `[n, d]` rows at the masked positions
/// (row-major, flattened). Only the blocks up to the deepest hook run.
pub fn capture_rows(model: &Model, enc: &Encoded, hooks: &[HookPoint]) -> Result<Vec<Vec<f32>>> {
    if enc.ids.len() != enc.mask.len() {
        return Err(Error::Invalid(format!("{} ids but {} mask entries", enc.ids.len(), enc.mask.len())));
    }
    let t = enc.ids.len();
    let d = model.config.hidden_size;
    if !enc.mask.iter().any(|m| *m) {
        return Ok(vec![Vec::new(); hooks.len()]);
    }
    for h in hooks {
        if h.layer >= model.config.num_layers {
            return Err(Error::Invalid(format!("hook {h}: the model has only {} layers", model.config.num_layers)));
        }
    }
    let dev = model.device();
    let ids = Tensor::from_slice(&enc.ids, (1, t), dev)?;
    let m: Vec<f32> = enc.mask.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(m, (1, t), dev)?;
    let mut hs = HookSet::new();
    for h in hooks {
        hs.capture(*h);
    }
    hs.set_token_mask(Some(&mask))?;
    let deepest = hooks.iter().map(|h| h.layer).max().unwrap_or(0);
    model.forward(&ids, Forward { logits: Logits::None, hooks: Some(&mut hs), stop_after: Some(deepest + 1), ..Default::default() })?;
    let mut cap = hs.take_captured();
    hooks
        .iter()
        .map(|h| {
            let v = cap.remove(h).and_then(|mut v| v.pop()).ok_or_else(|| Error::Invalid(format!("hook {h} captured nothing")))?;
            let v = v.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            debug_assert_eq!(v.len() % d, 0);
            Ok(v)
        })
        .collect()
}

/// Streams rows into shards; call [`ActsWriter::finish`] to write the index.
pub struct ActsWriter {
    dir: PathBuf,
    hooks: Vec<String>,
    d: usize,
    shard_rows: usize,
    buf: Vec<Vec<f32>>,
    tok: Vec<f32>,
    seq: Vec<f32>,
    shards: Vec<ShardInfo>,
    stats: Vec<RunningStats>,
    rows: usize,
    sequences: usize,
}

impl ActsWriter {
    /// Creates `dir` (it must not already hold a store: no silent mixing of two runs).
    pub fn create(dir: &Path, hooks: &[HookPoint], d: usize, shard_rows: usize) -> Result<Self> {
        if shard_rows == 0 {
            return Err(Error::Invalid("shard_rows must be > 0".into()));
        }
        if hooks.is_empty() {
            return Err(Error::Invalid("no hook points to capture".into()));
        }
        if dir.join("index.json").exists() || dir.join("acts-00000.safetensors").exists() {
            return Err(Error::io(dir, "already holds an activation store; choose an empty folder"));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(ActsWriter {
            dir: dir.to_path_buf(),
            hooks: hooks.iter().map(|h| h.to_string()).collect(),
            d,
            shard_rows,
            buf: vec![Vec::new(); hooks.len()],
            tok: Vec::new(),
            seq: Vec::new(),
            shards: Vec::new(),
            stats: vec![RunningStats::new(d); hooks.len()],
            rows: 0,
            sequences: 0,
        })
    }

    /// Adds the rows of one sequence: `per_hook[i]` is `[n, d]` for hook `i`, `token_ids` `[n]`.
    pub fn push(&mut self, per_hook: &[Vec<f32>], token_ids: &[u32]) -> Result<()> {
        let n = token_ids.len();
        if per_hook.len() != self.hooks.len() {
            return Err(Error::Invalid(format!("{} hook blocks for {} hooks", per_hook.len(), self.hooks.len())));
        }
        for (h, rows) in self.hooks.iter().zip(per_hook) {
            if rows.len() != n * self.d {
                return Err(Error::Invalid(format!("hook {h}: {} values for {n} rows of width {}", rows.len(), self.d)));
            }
        }
        if let Some(bad) = token_ids.iter().find(|&&t| t >= 1 << 24) {
            return Err(Error::Invalid(format!("token id {bad} does not fit the f32 token_ids column")));
        }
        for (i, rows) in per_hook.iter().enumerate() {
            self.stats[i].update(rows);
            self.buf[i].extend_from_slice(rows);
        }
        self.tok.extend(token_ids.iter().map(|&t| t as f32));
        self.seq.extend(std::iter::repeat_n(self.sequences as f32, n));
        self.sequences += 1;
        self.rows += n;
        while self.tok.len() >= self.shard_rows {
            self.flush(self.shard_rows)?;
        }
        Ok(())
    }

    /// Writes the first `n` buffered rows as the next shard.
    fn flush(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let file = format!("acts-{:05}.safetensors", self.shards.len());
        let d = self.d;
        let heads: Vec<Vec<f32>> = self.buf.iter_mut().map(|b| b.drain(..n * d).collect()).collect();
        let tok: Vec<f32> = self.tok.drain(..n).collect();
        let seq: Vec<f32> = self.seq.drain(..n).collect();
        let shape2 = [n, d];
        let shape1 = [n];
        let mut ts: Vec<(&str, &[usize], &[f32])> =
            self.hooks.iter().zip(&heads).map(|(h, v)| (h.as_str(), &shape2[..], v.as_slice())).collect();
        ts.push(("token_ids", &shape1[..], tok.as_slice()));
        ts.push(("sequence", &shape1[..], seq.as_slice()));
        st::save(&self.dir.join(&file), &ts, None)?;
        self.shards.push(ShardInfo { file, rows: n });
        Ok(())
    }

    /// Flushes the last partial shard and writes `index.json` (last, atomically: a store
    /// without an index is incomplete).
    pub fn finish(mut self, model: &str, model_sha256: &str) -> Result<Index> {
        let rest = self.tok.len();
        self.flush(rest)?;
        let stats = self
            .hooks
            .iter()
            .zip(&self.stats)
            .map(|(h, s)| (h.clone(), HookStats { count: s.count, mean: s.mean.clone(), var: s.variance() }))
            .collect();
        let index = Index {
            format: FORMAT.into(),
            model: model.into(),
            model_sha256: model_sha256.into(),
            hooks: self.hooks.clone(),
            d_model: self.d,
            rows: self.rows,
            sequences: self.sequences,
            shards: self.shards.clone(),
            stats,
        };
        let p = self.dir.join("index.json");
        write_atomic(&p, serde_json::to_string_pretty(&index).unwrap_or_default().as_bytes())?;
        Ok(index)
    }
}

/// Captures `convs` at `hooks` into a new store at `dir`. `progress(done, total)` is called after
/// each conversation.
pub fn capture(lm: &Lm, convs: &[Conversation], hooks: &[HookPoint], dir: &Path, cfg: &CaptureConfig) -> Result<Index> {
    capture_with_progress(lm, convs, hooks, dir, cfg, &mut |_, _| {})
}

pub fn capture_with_progress(
    lm: &Lm,
    convs: &[Conversation],
    hooks: &[HookPoint],
    dir: &Path,
    cfg: &CaptureConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Index> {
    let d = lm.model.config.hidden_size;
    // Checked before the folder is made, so a typo leaves nothing half-written behind.
    if cfg.max_tokens == 0 {
        return Err(Error::Invalid("max_tokens must be > 0".into()));
    }
    if let Some(h) = hooks.iter().find(|h| h.layer >= lm.model.config.num_layers) {
        return Err(Error::Invalid(format!("hook {h}: the model has only {} layers", lm.model.config.num_layers)));
    }
    let mut w = ActsWriter::create(dir, hooks, d, cfg.shard_rows)?;
    save_conversations(&dir.join("sequences.jsonl"), convs)?;
    for (i, c) in convs.iter().enumerate() {
        let mut enc = c.encode(lm)?;
        enc.ids.truncate(cfg.max_tokens);
        enc.mask.truncate(cfg.max_tokens);
        let rows = capture_rows(&lm.model, &enc, hooks)?;
        let toks: Vec<u32> = enc.ids.iter().zip(&enc.mask).filter(|(_, m)| **m).map(|(t, _)| *t).collect();
        w.push(&rows, &toks)?;
        progress(i + 1, convs.len());
    }
    // A store of zero rows would look complete (an index, no shards) and train an empty SAE.
    if w.rows == 0 {
        return Err(Error::io(
            dir,
            "captured no token positions (every conversation was empty after encoding); nothing written as a store",
        ));
    }
    let src = lm.source.path().to_path_buf();
    let sha = model_sha256(&src)?;
    w.finish(&src.display().to_string(), &sha)
}

/// Visitor of one shard: `(rows [n, d], token_ids [n])`.
pub type ShardFn<'a> = dyn FnMut(&[f32], &[u32]) -> Result<()> + 'a;

/// Reads a store.
pub struct ActsReader {
    pub dir: PathBuf,
    pub index: Index,
}

impl ActsReader {
    pub fn open(dir: &Path) -> Result<Self> {
        let p = dir.join("index.json");
        let text =
            std::fs::read_to_string(&p).map_err(|e| Error::io(&p, format!("{e} (not an activation store, or capture did not finish)")))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| Error::format(&p, format!("bad index: {e}")))?;
        if index.format != FORMAT {
            return Err(Error::format(&p, format!("format `{}`, expected `{FORMAT}`", index.format)));
        }
        Ok(ActsReader { dir: dir.to_path_buf(), index })
    }

    fn check_hook(&self, hook: &str) -> Result<()> {
        if !self.index.hooks.iter().any(|h| h == hook) {
            return Err(Error::Invalid(format!(
                "{}: no hook `{hook}` in the store (it has {})",
                self.dir.display(),
                self.index.hooks.join(", ")
            )));
        }
        Ok(())
    }

    /// Calls `f(rows, token_ids)` for each shard in order, `rows` `[n, d]`; one shard in memory.
    pub fn for_each_shard(&self, hook: &str, f: &mut ShardFn<'_>) -> Result<()> {
        self.check_hook(hook)?;
        for s in &self.index.shards {
            let p = self.dir.join(&s.file);
            let mut ts = st::load(&p)?;
            let t = ts.remove(hook).ok_or_else(|| Error::format(&p, format!("tensor `{hook}` missing")))?;
            if t.shape != [s.rows, self.index.d_model] {
                return Err(Error::format(
                    &p,
                    format!("tensor `{hook}`: shape {:?}, index says [{}, {}]", t.shape, s.rows, self.index.d_model),
                ));
            }
            let tok = ts.remove("token_ids").ok_or_else(|| Error::format(&p, "tensor `token_ids` missing"))?;
            let tok: Vec<u32> = tok.data.iter().map(|&x| x as u32).collect();
            f(&t.data, &tok)?;
        }
        Ok(())
    }

    /// Every row of `hook`, `[rows, d]` (loads the whole hook: for small stores).
    pub fn read_all(&self, hook: &str) -> Result<(Vec<f32>, usize)> {
        let mut all = Vec::with_capacity(self.index.rows * self.index.d_model);
        self.for_each_shard(hook, &mut |r, _| {
            all.extend_from_slice(r);
            Ok(())
        })?;
        Ok((all, self.index.d_model))
    }

    /// The captured conversations (`sequences.jsonl`).
    pub fn sequences(&self) -> Result<Vec<Conversation>> {
        crate::text::load_conversations(&self.dir.join("sequences.jsonl"))
    }
}
