//! Checkpoints: everything needed to continue a run as if it had never stopped.
//!
//! Layout of `OUT/checkpoints/step-000040/`:
//! - `adapter_config.json`, `adapter_model.safetensors`: the adapter in PEFT format (loadable on
//!   its own, e.g. to evaluate an intermediate step);
//! - `optimizer.safetensors`: AdamW's f32 moments `m.<key>` and `v.<key>` per adapter tensor;
//! - `state.json`: optimizer steps done, the data position, the dropout RNG position, the
//!   number of Adam updates, and fingerprints of the settings and the tokenized data.
//!
//! A checkpoint is written into `OUT/checkpoints/.tmp-step-000040-<pid>/` and renamed into
//! place once complete, so a folder named `step-*` is always whole: a run killed mid-write
//! leaves only a temp folder, which resume ignores and removes.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The contents of `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// Where the next step's data starts: epoch and micro-batch index in that epoch's plan.
    pub epoch: usize,
    pub micro_batch: usize,
    /// Dropout RNG (ChaCha8): seed and word position (a decimal string: it is a u128).
    pub rng_seed: u64,
    pub rng_word_pos: String,
    /// AdamW updates done (bias correction).
    pub adam_t: u64,
    /// Input tokens processed so far.
    pub tokens_seen: u64,
    /// Wall time spent training before this checkpoint.
    pub elapsed_s: f64,
    pub config_fingerprint: serde_json::Value,
    pub data_fingerprint: String,
    /// Adapter tensor keys in optimizer order.
    pub keys: Vec<String>,
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

pub fn step_dir(out: &Path, step: usize) -> PathBuf {
    checkpoints_dir(out).join(format!("step-{step:06}"))
}

/// Complete checkpoints in `out`, ascending by step.
pub fn list(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = checkpoints_dir(out);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) {
            if e.path().join("state.json").is_file() {
                v.push((n, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Removes temp folders left by a run killed while writing a checkpoint.
pub fn clean_temps(out: &Path) -> Result<()> {
    let dir = checkpoints_dir(out);
    if !dir.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Writes a checkpoint with `fill(tmp_dir)` then renames it into place (replacing an older
/// checkpoint of the same step) and syncs the parent folder.
pub fn write(out: &Path, step: usize, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = checkpoints_dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = dir.join(format!(".tmp-step-{step:06}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        // A failed write (a full disk, a quota) leaves the previous checkpoints as they were;
        // the partial temp folder is removed now if possible (else by the next run).
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let fin = step_dir(out, step);
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    if let Ok(f) = std::fs::File::open(&dir) {
        let _ = f.sync_all();
    }
    Ok(fin)
}

/// Keeps the newest `keep` checkpoints (0 keeps all).
pub fn prune(out: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(out)?;
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(&p, format!("invalid checkpoint state: {e}")))
}
