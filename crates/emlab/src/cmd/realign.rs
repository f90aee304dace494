//! `emlab realign`: continue training the misaligned model on the first N truthful rows and
//! evaluate it again, for one N or a sweep of them (glue over `emlab_steer::realign`).
//!
//! ```text
//! emlab realign --model smollm2.gguf --adapter runs/default/induce/adapter \
//!     --data data/realign/general_helpful.jsonl --n 100 --samples 3 --out runs/realign
//! emlab realign --model smollm2.gguf --adapter A --data D --sweep 0,25,50,100,200 --out runs/realign --json
//! ```
//! Every N has its own folder (`n_{N}/`: data, adapter, answers), so an interrupted run resumes.

use super::steer::{parse_list, EvalOpts};
use anyhow::{bail, Result};
use emlab_steer::realign::{format_realign, realign_sweep, RealignConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RealignArgs {
    /// The base model (GGUF or HF folder; default: SmolLM2-135M-Instruct).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// The misaligning PEFT adapter, merged into the weights before realignment.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Truthful chat JSONL; its first N rows are trained on.
    #[arg(long)]
    pub data: PathBuf,
    /// One N (default 100, "about 100 samples")...
    #[arg(long, conflicts_with = "sweep")]
    pub n: Option<usize>,
    /// ...or several, comma-separated (0 = the misaligned model itself), e.g. 0,25,50,100,200.
    #[arg(long)]
    pub sweep: Option<String>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 4)]
    pub train_batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 384)]
    pub max_seq_len: usize,
    /// LoRA rank and alpha of the realigning adapter.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Training seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub eval: EvalOpts,
    /// Output folder: misaligned/, n_{N}/, realign.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RealignArgs) -> Result<()> {
    a.eval.check_flags()?;
    let sizes: Vec<usize> = match (&a.sweep, a.n) {
        (Some(s), _) => parse_list("--sweep", s)?,
        (None, Some(n)) => vec![n],
        (None, None) => vec![100],
    };
    if !a.data.is_file() {
        bail!("{}: truthful data file not found (--data)", a.data.display());
    }
    let model = match &a.model {
        Some(m) => m.clone(),
        None => emlab_model::fetch::ensure_default_model()?,
    };
    let mut cfg = RealignConfig::new(&model, &a.data, &a.eval.questions, &a.out);
    cfg.adapter = a.adapter.clone();
    cfg.sizes = sizes;
    cfg.train.lr = a.lr;
    cfg.train.batch_size = a.train_batch_size;
    cfg.train.epochs = a.epochs;
    cfg.train.max_seq_len = a.max_seq_len;
    cfg.train.lora.r = a.rank;
    cfg.train.lora.alpha = a.alpha;
    cfg.train.seed = a.seed;
    cfg.train.validate()?;
    cfg.eval = a.eval.config(&model, None)?;
    let res = realign_sweep(&cfg, &mut |m| eprintln!("  {m}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        print!("{}", format_realign(&res));
        eprintln!("wrote {}", a.out.join("realign.json").display());
    }
    Ok(())
}
