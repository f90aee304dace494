//! Options shared by several subcommands.

use anyhow::Result;
use emlab_model::generate::SamplingParams;
use emlab_model::lm::Lm;
use emlab_model::model::LoadOptions;
use std::path::{Path, PathBuf};

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
        let opts = LoadOptions { int8_inference: self.q8, ..Default::default() };
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

    /// [`Self::params`], checked, the error naming the flag: commands call it before they
    /// create any output, so a bad flag leaves nothing behind.
    pub fn checked_params(&self) -> Result<SamplingParams> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("--temperature {} must be a number >= 0 (0 = greedy)", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("--top-p {} must be in (0, 1]", self.top_p);
        }
        if self.batch_size == 0 || self.max_new_tokens == 0 {
            anyhow::bail!("--batch-size and --max-new-tokens must be at least 1");
        }
        let p = self.params();
        // The library's own check, should it learn more than the flags above.
        p.validate()?;
        Ok(p)
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

/// The one line `emlab` prints for an error: each cause's first line (candle appends a backtrace
/// to its messages when RUST_BACKTRACE is set), joined with ": ", leaving out a cause whose text
/// the line already holds (error types that print their source, then are chained to it, would
/// otherwise say everything twice).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim_end();
        if first.is_empty() || out.contains(first) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(first);
    }
    out
}

/// Refuses an output file that is one of the command's inputs (the same file through any path,
/// link or `./`): writing it would destroy the input before, or while, it is read. `inputs` pairs
/// each input with the flag that named it, for the error.
pub fn refuse_same_file(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    match emlab_model::util::output_is_input(out, inputs) {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_drops_repeated_causes_and_backtraces() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "adir: {}", self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::other("Is a directory (os error 21)");
        let e = anyhow::Error::new(Wrap(io)).context("training failed");
        assert_eq!(one_line(&e), "training failed: adir: Is a directory (os error 21)");
        let e = anyhow::anyhow!("compute: shape mismatch\nStack backtrace:\n   0: candle::foo");
        assert_eq!(one_line(&e), "compute: shape mismatch");
    }

    #[test]
    fn same_file_sees_through_other_spellings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("in.jsonl");
        std::fs::write(&f, "x").unwrap();
        let dotted = dir.path().join(".").join("in.jsonl");
        let e = refuse_same_file(&dotted, &[("--prompts", &f)]).unwrap_err().to_string();
        assert!(e.contains("--prompts") && e.contains("in.jsonl"), "{e}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jsonl");
            std::os::unix::fs::symlink(&f, &link).unwrap();
            assert!(refuse_same_file(&link, &[("--log", &f)]).is_err());
        }
        // Another file, or an output that does not exist yet, is fine.
        let other = dir.path().join("other.jsonl");
        assert!(refuse_same_file(&other, &[("--prompts", &f)]).is_ok());
        std::fs::write(&other, "y").unwrap();
        assert!(refuse_same_file(&other, &[("--prompts", &f)]).is_ok());
    }
}
