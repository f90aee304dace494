//! Options shared by several subcommands.

use anyhow::Result;
use emlab_model::generate::SamplingParams;
use emlab_model::lm::Lm;
use emlab_model::model::LoadOptions;
use std::path::PathBuf;

/// Which model to load.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelOpt {
    /// A GGUF file or an HF folder (llama or qwen2 family). Default: SmolLM2-135M-Instruct,
    /// fetched on first use.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Int8 (Q8_0-style) copies of the projections and LM head and an f16 KV cache for faster
    /// generation; on CPUs with AVX-512 VNNI inputs are quantized per 32 values too (int8 x int8
    /// products, ~3x faster batched sampling). f32 is the reference.
    #[arg(long)]
    pub q8: bool,
}

impl ModelOpt {
    pub fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => Ok(emlab_model::fetch::ensure_default_model()?),
        }
    }
    pub fn load(&self) -> Result<Lm> {
        let p = self.path()?;
        let opts = LoadOptions {
            int8_inference: self.q8,
            ..Default::default()
        };
        Ok(Lm::load(&p, &opts)?)
    }
}

/// Sampling options.
#[derive(clap::Args, Debug, Clone)]
pub struct SampleOpt {
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 600)]
    pub max_new_tokens: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SampleOpt {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
        }
    }
}

/// Progress bar for `n` items (hidden when stderr is not a terminal).
pub fn progress(n: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(n);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
