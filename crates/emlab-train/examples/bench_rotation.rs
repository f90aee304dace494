//! Cost of the rotation monitor (not a test): one `Tracker::observe` (prepare the new snapshot,
//! compare it with the held one) on random adapters of SmolLM2-135M's shapes, 30 layers x 7
//! projections, what `metrics.jsonl` pays at every `rotation_every`-th step.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p emlab-train --example bench_rotation -- [--rank 32] [--layers 30] [--reps 5]
//! ```
//! Prints one JSON line: milliseconds per observation (median of `--reps`), and the adapter size.

use emlab_train::rotation::{Module, Tracker};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (r, layers, reps) = (arg(&args, "--rank", 32), arg(&args, "--layers", 30), arg(&args, "--reps", 5).max(1));
    // SmolLM2-135M: hidden 576, 3 KV heads of 64, MLP 1536; (name, in, out) per projection.
    let shapes =
        [("q", 576, 576), ("k", 576, 192), ("v", 576, 192), ("o", 576, 576), ("gate", 576, 1536), ("up", 576, 1536), ("down", 1536, 576)];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect() };
    let mut names = Vec::new();
    let mut snaps: Vec<Vec<(Vec<f32>, Vec<f32>)>> = Vec::new();
    for _ in 0..=reps {
        let mut s = Vec::new();
        for l in 0..layers {
            for &(p, inp, out) in &shapes {
                if snaps.is_empty() {
                    names.push(format!("layers.{l}.{p}_proj"));
                }
                s.push((draw(r * inp), draw(out * r)));
            }
        }
        snaps.push(s);
    }
    fn modules<'a>(s: &'a [(Vec<f32>, Vec<f32>)], names: &'a [String], r: usize) -> Vec<Module<'a>> {
        s.iter().zip(names).map(|((a, b), n)| Module { name: n, a, b, r }).collect()
    }
    let floats: usize = snaps[0].iter().map(|(a, b)| a.len() + b.len()).sum();
    let mut t = Tracker::new(0, &modules(&snaps[0], &names, r))?;
    let mut ms = Vec::new();
    let mut sink = 0.0;
    for (i, s) in snaps.iter().enumerate().skip(1) {
        let t0 = Instant::now();
        let rot = t.observe(i, &modules(s, &names, r))?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        sink += rot.summary().b_deg.map(|s| s.mean).unwrap_or(0.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({
            "rank": r, "modules": names.len(), "adapter_floats": floats,
            "threads": rayon::current_num_threads(),
            "observe_ms_median": ms[ms.len() / 2], "observe_ms_min": ms[0], "observe_ms_max": ms[ms.len() - 1],
            "mean_b_deg": sink / reps as f64,
        })
    );
    Ok(())
}
