//! `emlab adapter`: inspect a PEFT LoRA adapter, or merge it into its base model.
//!
//! ```text
//! emlab adapter merge --model SmolLM2.gguf --adapter runs/insecure/adapter --out merged/
//! emlab adapter info --adapter runs/insecure/adapter --json
//! ```
//! `merge` writes an HF folder (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json with the chat template) that emlab, transformers and llama.cpp's
//! converter can load; it is written to a temp folder and renamed into place when complete.

use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct AdapterArgs {
    #[command(subcommand)]
    pub cmd: AdapterCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdapterCmd {
    /// Fold an adapter into the base weights and write a merged HF folder.
    Merge {
        /// Base model: GGUF file or HF folder (default: the default model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Output folder (must not exist yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show an adapter's settings and per-module norms.
    Info {
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: AdapterArgs) -> anyhow::Result<()> {
    match args.cmd {
        AdapterCmd::Merge { model, adapter, out } => merge(model, adapter, out),
        AdapterCmd::Info { adapter, json } => info(adapter, json),
    }
}

fn merge(model: Option<PathBuf>, adapter: PathBuf, out: PathBuf) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{}: already exists; choose a new output folder", out.display());
    }
    let path = match model {
        Some(p) => p,
        None => emlab_model::fetch::ensure_default_model()?,
    };
    let mut b = emlab_train::load_bundle(&path)?;
    let cfg = emlab_train::adapter::load_peft(&mut b.model, &adapter)?;
    let n = emlab_train::adapter::merge(&mut b.model)?;
    let name = out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    emlab_train::adapter::save_hf(&b.model, &b.tokenizer, &b.template, &tmp)?;
    std::fs::rename(&tmp, &out).with_context(|| format!("{}: cannot move the merged folder into place", out.display()))?;
    eprintln!(
        "merged {n} LoRA modules (r {}, alpha {}, {}) into {} -> {}",
        cfg.r,
        cfg.lora_alpha,
        if cfg.use_rslora { "rsLoRA" } else { "LoRA" },
        path.display(),
        out.display()
    );
    Ok(())
}

fn info(adapter: PathBuf, json: bool) -> anyhow::Result<()> {
    let cfg_path = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
    let cfg = emlab_train::adapter::PeftConfig::from_json(&v, &cfg_path)?;
    let tensors = emlab_train::adapter::read_safetensors_f32(&adapter.join("adapter_model.safetensors"), &candle_core::Device::Cpu)?;
    let mut modules = serde_json::Map::new();
    for (k, t) in &tensors {
        let norm = t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        modules.insert(k.clone(), serde_json::json!({"shape": t.dims(), "frobenius": norm}));
    }
    let report = serde_json::json!({"config": cfg, "tensors": modules});
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "r {}  alpha {}  {}  targets {:?}  layers {}",
            cfg.r,
            cfg.lora_alpha,
            if cfg.use_rslora { "rsLoRA" } else { "LoRA" },
            cfg.target_modules,
            cfg.layers_to_transform.as_ref().map(|l| format!("{l:?}")).unwrap_or_else(|| "all".into())
        );
        for (k, m) in &modules {
            println!("  {k}  {}  |W|_F {:.4}", m["shape"], m["frobenius"].as_f64().unwrap_or(0.0));
        }
    }
    Ok(())
}
