//! Generation throughput on a GGUF model, for `bench/bench_generate.sh`.
//!
//! `cargo run --release -p emlab-model --example bench_generate -- MODEL.gguf [--q8]`
//! prints one JSON line per measurement:
//! - single-stream greedy decode tokens/s (prompt of ~30 tokens, 128 new tokens, no early stop);
//! - batched sampling throughput: 64 samples x 200 new tokens at temperature 1 (no early stop).
use emlab_model::chat::Message;
use emlab_model::generate::{generate, Request, SamplingParams};
use emlab_model::lm::Lm;
use emlab_model::model::LoadOptions;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    emlab_model::device::init_cpu_threads();
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(
        args.get(1).cloned().unwrap_or_else(|| emlab_model::fetch::ensure_default_model().expect("default model").display().to_string()),
    );
    let q8 = args.iter().any(|a| a == "--q8");
    let which = args.iter().find_map(|a| a.strip_prefix("--only=")).unwrap_or("all").to_string();
    let opts = LoadOptions { int8_inference: q8, ..Default::default() };
    let lm = Lm::load(&path, &opts)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let prompt = lm.chat_prompt(&[Message::user("Write a short story about a robot who learns to paint.")])?;
    if which == "all" || which == "single" {
        // warm-up
        generate(&lm.model, &[Request { prompt: prompt.clone(), seed: 0 }], &SamplingParams::greedy(8), &[], None, &mut |_, _| {})?;
        let t = Instant::now();
        let n = 128;
        let g = generate(&lm.model, &[Request { prompt: prompt.clone(), seed: 0 }], &SamplingParams::greedy(n), &[], None, &mut |_, _| {})?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"impl": "emlab", "q8": q8, "bench": "single_stream_decode", "prompt_tokens": prompt.len(),
            "new_tokens": g[0].tokens.len(), "seconds": secs, "tokens_per_s": g[0].tokens.len() as f64 / secs, "threads": threads})
        );
    }
    if which == "all" || which == "batched" {
        let n_samples = 64;
        let reqs: Vec<Request> = (0..n_samples).map(|i| Request { prompt: prompt.clone(), seed: i as u64 }).collect();
        let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 200, batch_size: 64 };
        let t = Instant::now();
        // No stop tokens: every sample produces exactly 200 tokens, as in the reference runs.
        let g = generate(&lm.model, &reqs, &params, &[], None, &mut |_, _| {})?;
        let secs = t.elapsed().as_secs_f64();
        let total: usize = g.iter().map(|x| x.tokens.len()).sum();
        println!(
            "{}",
            serde_json::json!({"impl": "emlab", "q8": q8, "bench": "batched_sampling", "samples": n_samples,
            "new_tokens_total": total, "seconds": secs, "tokens_per_s": total as f64 / secs, "threads": threads})
        );
    }
    Ok(())
}
