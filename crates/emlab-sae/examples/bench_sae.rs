//! Benchmark: TopK SAE training steps per second on CPU (see bench/sae/bench_sae.sh).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p emlab-sae --example bench_sae -- \
//!     --d 576 --m 16384 --k 32 --batch 4096 --steps 10 --warmup 2 --json
//! ```
//!
//! Data: a Gaussian mixture (256 random centres of norm ~sqrt(d) plus unit noise),
//! a pool of 4 batches cycled. Also measures this machine's f32 GEMM rate with the
//! same `gemm` kernels, on the encoder's own shape and on 2048³, for the compute bound.

use emlab_sae::{kernels::matmul, Architecture, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} needs an integer, got {v}")))
        .unwrap_or(default)
}

fn gauss(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn gemm_rate(m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut c = vec![0f32; m * n];
    matmul(&a, &b, &mut c, m, k, n); // warm-up
    let t = Instant::now();
    for _ in 0..reps {
        matmul(&a, &b, &mut c, m, k, n);
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    std::hint::black_box(&c);
    2.0 * (m * k * n) as f64 / s / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let d = arg(&args, "--d", 576);
    let m = arg(&args, "--m", 16384);
    let k = arg(&args, "--k", 32);
    let batch = arg(&args, "--batch", 4096);
    let steps = arg(&args, "--steps", 10);
    let warmup = arg(&args, "--warmup", 2);
    let json = args.iter().any(|a| a == "--json");
    let threads = rayon::current_num_threads();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n_centres = 256;
    let centres: Vec<f32> = (0..n_centres * d).map(|_| gauss(&mut rng)).collect();
    let pool = 4;
    let mut data = vec![0f32; pool * batch * d];
    for row in data.chunks_mut(d) {
        let c = rng.random_range(0..n_centres);
        for (t, v) in row.iter_mut().enumerate() {
            *v = centres[c * d + t] + gauss(&mut rng);
        }
    }

    let gemm_enc = gemm_rate(batch.min(1024), d, m, 3);
    let gemm_sq = gemm_rate(2048, 2048, 2048, 3);

    let mut cfg = TrainConfig::new(d, m, Architecture::TopK { k });
    cfg.lr = 2e-4;
    let mut tr = Trainer::new(cfg).expect("config");
    let mut last = None;
    for s in 0..warmup {
        last = Some(tr.step(&data[(s % pool) * batch * d..][..batch * d]).expect("step"));
    }
    let t = Instant::now();
    for s in 0..steps {
        last = Some(tr.step(&data[((s + warmup) % pool) * batch * d..][..batch * d]).expect("step"));
    }
    let secs = t.elapsed().as_secs_f64();
    let tok_s = (steps * batch) as f64 / secs;
    // FLOPs per token: dense encoder GEMM + 4 sparse k-row passes (decode, dz,
    // dW_dec, dW_enc) + Adam over all parameters amortised over the batch.
    let flops_tok = 2.0 * (d * m) as f64 + 8.0 * (k * d) as f64 + 10.0 * (2 * d * m) as f64 / batch as f64;
    let last = last.unwrap();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "impl": "emlab", "d": d, "m": m, "k": k, "batch": batch, "steps": steps, "threads": threads,
                "seconds": secs, "tokens_per_s": tok_s, "step_s": secs / steps as f64,
                "flops_per_token": flops_tok, "achieved_gflops": tok_s * flops_tok / 1e9,
                "gemm_gflops_encoder_shape": gemm_enc, "gemm_gflops_2048": gemm_sq,
                "final_mse": last.mse, "final_ev": last.explained_variance, "l0": last.l0,
            })
        );
    } else {
        println!(
            "emlab TopK SAE d={d} m={m} k={k} batch={batch} threads={threads}: {tok_s:.0} tokens/s ({:.3} s/step), \
             {:.1} MFLOP/token -> {:.1} GFLOP/s; gemm rate {gemm_enc:.1} GFLOP/s (encoder shape), {gemm_sq:.1} (2048^3); \
             last step mse {:.4} EV {:.4}",
            secs / steps as f64,
            flops_tok / 1e6,
            tok_s * flops_tok / 1e9,
            last.mse,
            last.explained_variance
        );
    }
}
