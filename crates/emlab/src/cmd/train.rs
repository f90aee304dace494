//! `emlab train`: LoRA / rsLoRA fine-tuning on a chat JSONL file.
//!
//! ```text
//! emlab train --data data/code/insecure.jsonl --out runs/insecure       # the published recipe
//! emlab train --data d.jsonl --out runs/r1 --config train.toml --lr 2e-5
//! emlab train --out runs/insecure --resume                              # after a kill or Ctrl-C
//! emlab train --data d.jsonl --out runs/r2 --persona-direction dirs.safetensors --persona-layer 15 \
//!     --persona-every 4 --persona-warn 2.5                               # watch the persona score
//! ```
//! Settings come from `--config` (a `train.toml`, see docs/training.md), then the flags below
//! override single keys. On `--resume` without `--config`, the run's own saved
//! `OUT/train_config.toml` is used, so the command above is all a resume needs.

use anyhow::{bail, Context};
use emlab_train::{Schedule, TrainConfig, TrainOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Default)]
pub struct TrainArgs {
    /// Chat JSONL training file ({"messages":[...]} per line).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder: adapter/, checkpoints/, metrics.jsonl, train_summary.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A train.toml; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// GGUF file or HF folder (default: the default model, fetched once).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Skip (and count) bad rows instead of refusing the file.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Cut conversations longer than max_seq_len instead of refusing them.
    #[arg(long)]
    pub truncate: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Sequences per forward/backward pass.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// linear, cosine or constant.
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Share of rows held out for an eval loss.
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Keep only the newest N checkpoints (0 keeps all).
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// LoRA rank.
    #[arg(long)]
    pub rank: Option<usize>,
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Plain LoRA scaling (alpha / r) instead of rsLoRA (alpha / sqrt(r)).
    #[arg(long)]
    pub no_rslora: bool,
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Comma-separated projections, e.g. q,k,v,o,gate,up,down.
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Comma-separated layer indices (default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Persona monitor: direction file (`directions` `[num_layers, d]`, row `--persona-layer`);
    /// its score is logged to OUT/persona.jsonl every --persona-every steps.
    #[arg(long, requires = "persona_layer")]
    pub persona_direction: Option<PathBuf>,
    /// Layer whose `hook_resid_post` the persona score reads.
    #[arg(long)]
    pub persona_layer: Option<usize>,
    /// Run the probes every K optimizer steps (and at the last step). Without a direction, only
    /// the per-layer means (OUT/persona-means.safetensors) are recorded, for a direction found later.
    #[arg(long)]
    pub persona_every: Option<usize>,
    /// Warn (one stderr line per crossing) when the persona score rises above this value.
    #[arg(long, requires = "persona_direction")]
    pub persona_warn: Option<f64>,
    /// Probe questions for the persona monitor (one per line or a JSON array; default: the 16
    /// built-in probes).
    #[arg(long)]
    pub probes: Option<PathBuf>,
}

/// The persona monitor the flags ask for, checked against the model's shape before training.
fn persona_monitor(
    a: &TrainArgs,
    cfg: &TrainConfig,
    out: &std::path::Path,
) -> anyhow::Result<Option<emlab_steer::persona::PersonaMonitor>> {
    use emlab_steer::persona::{default_probes, probe_prompts_for, read_probes, PersonaMonitor};
    if a.persona_direction.is_none() && a.persona_every.is_none() {
        if a.probes.is_some() || a.persona_layer.is_some() {
            bail!("--probes / --persona-layer need --persona-direction FILE (or --persona-every K)");
        }
        return Ok(None);
    }
    if a.persona_every == Some(0) {
        bail!("--persona-every must be at least 1");
    }
    let model = emlab_train::model_path(cfg)?;
    let mc = super::steer::model_config(&model)?;
    let questions = match &a.probes {
        Some(p) => read_probes(p)?,
        None => default_probes(),
    };
    let prompts = probe_prompts_for(&model, &questions)?;
    let mut mon = PersonaMonitor::new(prompts, a.persona_every.unwrap_or(10), out);
    if let Some(f) = &a.persona_direction {
        let layer = a.persona_layer.unwrap_or(0);
        if layer >= mc.num_layers {
            bail!("--persona-layer {layer}: the model has {} layers", mc.num_layers);
        }
        let src = emlab_steer::vectors::VectorSource::DirectionFile { path: f.clone(), layer: Some(layer) };
        let dir = src.load(None, mc.hidden_size, &candle_core::Device::Cpu)?;
        mon = mon.with_direction(dir, layer, a.persona_warn);
    }
    Ok(Some(mon))
}

/// The effective config: file (or the run's saved config on --resume), then flags.
pub fn resolve_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let saved = a.out.as_ref().map(|o| o.join("train_config.toml")).filter(|p| a.resume && a.config.is_none() && p.is_file());
    let mut c = match (&a.config, saved) {
        (Some(p), _) => TrainConfig::from_file(p)?,
        (None, Some(p)) => TrainConfig::from_file(&p)?,
        (None, None) => TrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    set!(
        seed,
        lr,
        epochs,
        batch_size,
        grad_accum,
        max_seq_len,
        warmup_steps,
        weight_decay,
        max_grad_norm,
        eval_fraction,
        eval_every,
        checkpoint_every,
        keep_checkpoints
    );
    if a.data.is_some() {
        c.data = a.data.clone();
    }
    if a.out.is_some() {
        c.out = a.out.clone();
    }
    if a.model.is_some() {
        c.model = a.model.clone();
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    c.skip_bad_rows |= a.skip_bad_rows;
    c.truncate |= a.truncate;
    if let Some(s) = &a.schedule {
        c.schedule = match s.as_str() {
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            "constant" => Schedule::Constant,
            other => bail!("--schedule: unknown schedule {other:?} (linear, cosine or constant)"),
        };
    }
    if let Some(r) = a.rank {
        c.lora.r = r;
    }
    if let Some(x) = a.alpha {
        c.lora.alpha = x;
    }
    if a.no_rslora {
        c.lora.rslora = false;
    }
    if let Some(d) = a.lora_dropout {
        c.lora.dropout = d;
    }
    if let Some(t) = &a.targets {
        c.lora.targets = t.clone();
    }
    if let Some(l) = &a.layers {
        c.lora.layers = l.clone();
    }
    c.validate()?;
    Ok(c)
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = resolve_config(&args)?;
    if cfg.data.is_none() {
        bail!("no training data: pass --data FILE (or set `data` in the config)");
    }
    if cfg.out.is_none() {
        bail!("no output folder: pass --out DIR");
    }
    let monitor = persona_monitor(&args, &cfg, cfg.out.as_deref().expect("checked above"))?;
    // A monitor failure stops training at a checkpoint (resumable) and is reported below.
    let monitor_error: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let stop = emlab_train::ctrlc_flag()?;
    let mut opts = TrainOptions { resume: args.resume, progress: !args.quiet, stop: Some(stop), ..Default::default() };
    if let Some(mut mon) = monitor {
        let err = &monitor_error;
        opts.on_step = Some(Box::new(move |info, model| match mon.on_step(info, model) {
            Ok(_) => emlab_train::Control::Continue,
            Err(e) => {
                *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                emlab_train::Control::Stop
            }
        }));
    }
    let s = emlab_train::train(&cfg, opts).context("training failed")?;
    if let Some(e) = monitor_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bail!("persona monitor: {e} (training stopped at step {}; fix and --resume)", s.steps);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let last = s.losses.last().map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into());
        eprintln!(
            "{} {}/{} steps, last loss {last}, eval loss {}, {:.0} s",
            if s.interrupted { "stopped at" } else { "done:" },
            s.steps,
            s.total_steps,
            s.final_eval_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
            s.elapsed_s
        );
        match (&s.adapter_dir, &s.last_checkpoint) {
            (Some(a), _) => eprintln!("adapter (PEFT format): {}", a.display()),
            (None, Some(c)) => eprintln!("checkpoint: {} (continue with --resume)", c.display()),
            _ => {}
        }
    }
    Ok(())
}
