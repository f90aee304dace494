//! emlab-train: LoRA / rsLoRA supervised fine-tuning on chat JSONL.
//!
//! ```no_run
//! use emlab_train::{train, TrainConfig, TrainOptions};
//! let mut cfg = TrainConfig::default();           // the published EM recipe (rsLoRA r32, ...)
//! cfg.data = Some("data/code/insecure.jsonl".into());
//! cfg.out = Some("runs/insecure".into());
//! let summary = train(&cfg, TrainOptions { progress: true, ..Default::default() })?;
//! println!("{} steps, adapter in {:?}", summary.steps, summary.adapter_dir);
//! # Ok::<(), emlab_train::Error>(())
//! ```
//!
//! Modules, in the order data flows through them:
//! - [`config`]: `train.toml` settings with the recipe's defaults;
//! - [`data`]: chat-template tokenization with assistant-only loss masks, the length-bucketed
//!   batch plan, right-padded batches;
//! - [`adapter`]: attaching adapters (PEFT's initialisation), PEFT-format save/load, merging;
//! - [`optim`]: AdamW with checkpointable f32 moments, schedules, clipping;
//! - [`trainer`]: the loop, `metrics.jsonl`, the per-step callback, checkpoints and resume;
//! - [`rotation`]: how far the adapters turned between snapshots (the "phase transition"
//!   monitor logged in `metrics.jsonl`);
//! - [`checkpoint`]: the atomic checkpoint layout.

pub mod adapter;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda_optim;
pub mod data;
mod error;
pub mod optim;
pub mod rotation;
pub mod trainer;

/// The fused training kernels (rms_norm, rope, softmax, frozen matmul, cross-entropy with
/// hand-written backward passes) live beside the forward pass in `emlab_model::ops`.
pub use emlab_model::ops as kernels;

pub use config::{LoraConfig, Schedule, TrainConfig};
pub use error::{Error, Result};
pub use trainer::{eval_loss, train_examples, Control, StepCallback, StepInfo, TrainOptions, TrainSummary};

use emlab_model::chat::ChatTemplate;
use emlab_model::tokenizer::Tokenizer;
use emlab_model::Model;
use std::path::{Path, PathBuf};

/// A model with the tokenizer and chat template that came with it.
pub struct Bundle {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub path: PathBuf,
}

/// Loads a GGUF file or an HF folder with its tokenizer and chat template, checking that the
/// tokenizer's vocabulary fits the model's embedding.
pub fn load_bundle(path: &Path) -> Result<Bundle> {
    // One loader for the whole project: `Lm::load` checks the tokenizer against the embedding.
    let lm = emlab_model::lm::Lm::load(path, &Default::default())?;
    Ok(Bundle { model: lm.model, tokenizer: lm.tokenizer, template: lm.template, path: path.to_path_buf() })
}

/// The model a config names, or the default model (fetched once into the models folder).
pub fn model_path(cfg: &TrainConfig) -> Result<PathBuf> {
    match &cfg.model {
        Some(p) => Ok(p.clone()),
        None => Ok(emlab_model::fetch::ensure_default_model()?),
    }
}

/// What loading and tokenizing the data did (kept in `OUT/data_report.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataReport {
    pub file: String,
    pub rows: usize,
    /// Rows refused by the loader (bad JSON, roles, empty turns), skipped with `skip_bad_rows`.
    pub skipped_rows: usize,
    /// Rows refused at tokenization (too long, no assistant token), skipped with `skip_bad_rows`.
    pub skipped_tokenize: usize,
    pub truncated: usize,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub train_tokens: usize,
    pub train_trained_tokens: usize,
    /// Every bad row as `file:line: problem`.
    pub errors: Vec<String>,
}

/// Loads, validates, tokenizes and splits a chat JSONL file for `bundle`'s model.
pub fn prepare_data(cfg: &TrainConfig, data: &Path, bundle: &Bundle) -> Result<(Vec<data::Example>, Vec<data::Example>, DataReport)> {
    use emlab_data::chat::{load_jsonl, split_holdout, LoadOptions};
    let file = data.display().to_string();
    let (rows, load_rep) = load_jsonl(data, &LoadOptions::default().skip_bad_rows(cfg.skip_bad_rows))?;
    let (train_rows, eval_rows) = split_holdout(rows, cfg.eval_fraction, cfg.seed)?;
    let tok = |rows: &[emlab_data::chat::Conversation]| {
        data::tokenize(rows, &file, &bundle.tokenizer, &bundle.template, cfg.max_seq_len, cfg.truncate, cfg.skip_bad_rows)
    };
    let (train, tr) = tok(&train_rows)?;
    let (eval, er) = tok(&eval_rows)?;
    if train.is_empty() {
        return Err(Error::Invalid(format!("{file}: no usable training rows")));
    }
    let mut errors: Vec<String> = load_rep.errors.iter().map(|e| e.to_string()).collect();
    errors.extend(tr.errors.iter().chain(&er.errors).map(|e| e.to_string()));
    let rep = DataReport {
        file,
        rows: load_rep.rows,
        skipped_rows: load_rep.skipped,
        skipped_tokenize: tr.skipped + er.skipped,
        truncated: tr.truncated + er.truncated,
        train_examples: train.len(),
        eval_examples: eval.len(),
        train_tokens: tr.tokens,
        train_trained_tokens: tr.trained_tokens,
        errors,
    };
    Ok((train, eval, rep))
}

/// Runs a whole training job from a config: loads the model (`cfg.model` or the default),
/// the data (`cfg.data`), trains into `cfg.out`. See [`trainer`] for what lands in `out`.
pub fn train(cfg: &TrainConfig, mut opts: TrainOptions<'_>) -> Result<TrainSummary> {
    cfg.validate()?;
    let data = cfg.data.clone().ok_or_else(|| Error::Invalid("no training data: set `data` (or --data)".into()))?;
    let out = cfg.out.clone().ok_or_else(|| Error::Invalid("no output folder: set `out` (or --out)".into()))?;
    let path = model_path(cfg)?;
    let mut bundle = load_bundle(&path)?;
    let (train, eval, rep) = prepare_data(cfg, &data, &bundle)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let write = |name: &str, text: String| emlab_model::util::write_atomic(&out.join(name), text.as_bytes());
    write("data_report.json", serde_json::to_string_pretty(&rep).unwrap_or_default())?;
    write("train_config.toml", cfg.to_toml())?;
    if opts.base_model_name.is_none() {
        opts.base_model_name = Some(path.display().to_string());
    }
    let pad = bundle.tokenizer.pad_id();
    train_examples(cfg, &mut bundle.model, &train, &eval, pad, &out, opts)
}

/// A stop flag set by Ctrl-C (SIGINT): pass it as [`TrainOptions::stop`] so an interrupted run
/// checkpoints after the current step and exits cleanly. A second Ctrl-C exits at once.
pub fn ctrlc_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
    })
    .map_err(|e| Error::Invalid(format!("cannot install the Ctrl-C handler: {e}")))?;
    Ok(flag)
}
