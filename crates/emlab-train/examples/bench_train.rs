//! Training throughput benchmark (not a test): rsLoRA r32 on all 7 projections, fixed-length
//! batches, loss on every position, the real training loop (`train_examples`: forward,
//! masked loss, backward, AdamW, metrics). Run by `bench/train/bench_train.sh`.
//!
//! ```text
//! cargo run --release -p emlab-train --example bench_train -- MODEL [--batch 8] [--seq 128] [--steps 6] [--warmup 1]
//! ```
//! Prints one JSON line: tokens/s over the timed steps (the first `--warmup` steps are excluded),
//! seconds per step, this process's peak RSS (VmHWM) and its RSS after loading the model.
//! `--no-checkpoint` turns activation checkpointing off (the plain autograd path).

use emlab_train::data::Example;
use emlab_train::{train_examples, Control, LoraConfig, TrainConfig, TrainOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A `/proc/self/status` memory line (`VmHWM:` peak RSS, `VmRSS:` current) in MB.
fn rss_mb(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    emlab_model::device::init_cpu_threads();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--gemm") {
        // candle's f32 GEMM rate, same shape as the PyTorch probe (matmul_gflops.py).
        let n = arg(&args, "--n", 2048);
        let a = candle_core::Tensor::randn(0f32, 1.0, (n, n), &candle_core::Device::Cpu)?;
        let b = candle_core::Tensor::randn(0f32, 1.0, (n, n), &candle_core::Device::Cpu)?;
        a.matmul(&b)?;
        let mut best = 0f64;
        for _ in 0..5 {
            let t = Instant::now();
            a.matmul(&b)?;
            best = best.max(2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64() / 1e9);
        }
        println!("{}", serde_json::json!({"impl": "candle", "n": n, "gflops": best}));
        return Ok(());
    }
    let model_path = PathBuf::from(args.get(1).ok_or("usage: bench_train MODEL [--batch B] [--seq T] [--steps N] [--warmup W]")?);
    let (batch, seq, steps, warm) =
        (arg(&args, "--batch", 8), arg(&args, "--seq", 128), arg(&args, "--steps", 6), arg(&args, "--warmup", 1));
    let mut bundle = emlab_train::load_bundle(&model_path)?;
    let rss_after_load = rss_mb("VmRSS:");
    let hwm_after_load = rss_mb("VmHWM:");
    let vocab = bundle.model.config.vocab_size as u64;
    // Deterministic pseudo-text ids (no padding: every row has exactly `seq` inputs).
    let mut s: u64 = 12345;
    let examples: Vec<Example> = (0..batch * (steps + warm))
        .map(|i| {
            let ids: Vec<u32> = (0..=seq)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 33) % vocab) as u32
                })
                .collect();
            Example { mask: vec![true; ids.len()], ids, line: i + 1 }
        })
        .collect();
    let cfg = TrainConfig {
        batch_size: batch,
        grad_accum: 1,
        max_steps: Some(steps + warm),
        lr: 1e-5,
        warmup_steps: 0,
        checkpoint_every: 0,
        bucket_window: 1,
        max_seq_len: seq + 1,
        lora: LoraConfig { r: 32, alpha: 64.0, rslora: true, ..Default::default() },
        checkpoint_activations: !args.iter().any(|a| a == "--no-checkpoint"),
        ..Default::default()
    };
    let out = std::env::temp_dir().join(format!("emlab-bench-train-{}", std::process::id()));
    let times = Arc::new(Mutex::new(Vec::<(usize, f64, usize, f64)>::new()));
    let t2 = times.clone();
    let mut last = Instant::now();
    let opts = TrainOptions {
        on_step: Some(Box::new(move |info, _| {
            let now = Instant::now();
            t2.lock().unwrap().push((info.step, (now - last).as_secs_f64(), info.tokens, rss_mb("VmRSS:")));
            last = now;
            Control::Continue
        })),
        ..Default::default()
    };
    let start = Instant::now();
    let pad = bundle.tokenizer.pad_id();
    let summary = train_examples(&cfg, &mut bundle.model, &examples, &[], pad, &out, opts)?;
    let total = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out);
    let t = times.lock().unwrap();
    let timed: Vec<&(usize, f64, usize, f64)> = t.iter().filter(|x| x.0 > warm).collect();
    let secs: f64 = timed.iter().map(|x| x.1).sum();
    let toks: usize = timed.iter().map(|x| x.2).sum();
    println!(
        "{}",
        serde_json::json!({
            "impl": "emlab",
            "model": model_path.display().to_string(),
            "batch": batch, "seq": seq, "timed_steps": timed.len(),
            "tokens_per_s": toks as f64 / secs,
            "s_per_step": secs / timed.len().max(1) as f64,
            "peak_rss_mb": rss_mb("VmHWM:"),
            "rss_after_load_mb": rss_after_load,
            "peak_rss_after_load_mb": hwm_after_load,
            "rss_end_mb": rss_mb("VmRSS:"),
            "rss_after_each_step_mb": t.iter().map(|x| x.3).collect::<Vec<_>>(),
            "checkpoint_activations": cfg.checkpoint_activations,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            "losses": summary.losses,
            "total_s": total,
        })
    );
    Ok(())
}
