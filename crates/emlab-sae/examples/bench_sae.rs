//! Benchmark: TopK SAE training steps per second on CPU (see bench/sae/bench_sae.sh),
//! or on a GPU with `--device cuda[:N]` (bench/gpu/run.sh; needs `--features cuda`).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p emlab-sae --example bench_sae -- \
//!     --d 576 --m 16384 --k 32 --batch 4096 --steps 10 --warmup 2 --json
//! cargo run --release -p emlab-sae --features cuda --example bench_sae -- \
//!     --device cuda --d 576 --m 16384 --k 32 --batch 4096 --steps 20 --warmup 2 --json
//! ```
//!
//! `--device cpu` (default) runs the hand-written CPU trainer (`Trainer`); any other
//! device runs `emlab_sae::device::DeviceTrainer` (candle tensors), with the batch
//! pool already on the device, the stats of every step read back (one sync per
//! step, like the PyTorch loop's `loss.item()`), and the clock read after a device
//! synchronize. `--tf32` lets cuBLAS use TF32 for f32 GEMMs (off by default, as in
//! PyTorch). `--device cpu-tensors` runs the device trainer on the CPU (testing).
//!
//! On a device the run starts with a self-check (skip with `--no-check`): a small
//! SAE (chunked top-k, AuxK active) trained 4 steps by the device trainer and by
//! the CPU trainer from the same init, plus a full-width top-k against a CPU sort;
//! the JSON gets `check_ok` and the measured differences. `topk_ms` times both
//! top-k methods on a random [batch, m] matrix; `--topk chunked` trains with the
//! chunked one instead of the default grouped one.
//!
//! Data: a Gaussian mixture (256 random centres of norm ~sqrt(d) plus unit noise),
//! a pool of 4 batches cycled. Also measures this machine's f32 GEMM rate with the
//! same `gemm` kernels, on the encoder's own shape and on 2048³, for the compute bound.

use candle_core::{Device, Tensor};
use emlab_sae::{
    device::{top_k_rows_with, DeviceTrainer, TopKCache, TopKMethod},
    kernels::matmul,
    Architecture, TrainConfig, Trainer,
};
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

/// f32 GEMM rate of candle's matmul on `dev` for [m, k] x [k, n], in GFLOP/s.
fn device_gemm_rate(dev: &Device, m: usize, k: usize, n: usize, reps: usize) -> candle_core::Result<f64> {
    let a = Tensor::ones((m, k), candle_core::DType::F32, dev)?.affine(0.01, 0.0)?;
    let b = Tensor::ones((k, n), candle_core::DType::F32, dev)?.affine(0.02, 0.0)?;
    let _ = a.matmul(&b)?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(a.matmul(&b)?);
    }
    dev.synchronize()?;
    Ok(2.0 * (m * k * n) as f64 / (t.elapsed().as_secs_f64() / reps as f64) / 1e9)
}

fn fail(msg: String) -> ! {
    eprintln!("bench_sae: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device_name = args
        .iter()
        .position(|a| a == "--device")
        .map(|i| args.get(i + 1).cloned().unwrap_or_else(|| fail("--device needs a value (cpu, cuda, cuda:N)".into())))
        .unwrap_or_else(|| "cpu".into());
    let tf32 = args.iter().any(|a| a == "--tf32");
    // `cpu-tensors`: the device trainer on Device::Cpu (exercises the GPU code path anywhere).
    let device = if device_name == "cpu-tensors" {
        Some(Device::Cpu)
    } else {
        match emlab_sae::device::parse_device(&device_name) {
            Ok(Device::Cpu) => None,
            Ok(d) => Some(d),
            Err(e) => fail(e.to_string()),
        }
    };
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

    let mut cfg = TrainConfig::new(d, m, Architecture::TopK { k });
    cfg.lr = 2e-4;
    if let Some(dev) = device {
        run_device(&dev, &device_name, tf32, cfg, &data, pool, batch, steps, warmup, json);
        return;
    }

    let gemm_enc = gemm_rate(batch.min(1024), d, m, 3);
    let gemm_sq = gemm_rate(2048, 2048, 2048, 3);

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
                "impl": "emlab", "device": "cpu", "d": d, "m": m, "k": k, "batch": batch, "steps": steps, "threads": threads,
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

/// The device trainer's benchmark: same data, config and JSON fields as the CPU run.
#[allow(clippy::too_many_arguments)]
fn run_device(
    dev: &Device,
    name: &str,
    tf32: bool,
    cfg: TrainConfig,
    data: &[f32],
    pool: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    json: bool,
) {
    let (d, m) = (cfg.d_in, cfg.d_sae);
    let k = match cfg.arch {
        Architecture::TopK { k } => k,
        _ => unreachable!("bench_sae trains TopK"),
    };
    // The self-check compares against the f32 CPU trainer: strict f32 GEMMs for it.
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    let ce = |e: candle_core::Error| -> ! { fail(format!("device {name}: {e}")) };
    let batches: Vec<Tensor> = (0..pool)
        .map(|i| Tensor::from_slice(&data[i * batch * d..(i + 1) * batch * d], (batch, d), dev).unwrap_or_else(|e| ce(e)))
        .collect();
    let check = if std::env::args().any(|a| a == "--no-check") { serde_json::Value::Null } else { self_check(dev, m) };
    if !json {
        println!("self-check: {check}");
    }
    candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    let gemm_enc = device_gemm_rate(dev, batch, d, m, 5).unwrap_or_else(|e| ce(e));
    let gemm_sq = device_gemm_rate(dev, 2048, 2048, 2048, 5).unwrap_or_else(|e| ce(e));
    let method = match args_value("--topk").as_deref() {
        None | Some("grouped") => TopKMethod::Grouped,
        Some("chunked") => TopKMethod::Chunked,
        Some(o) => fail(format!("--topk {o}: expected grouped or chunked")),
    };
    let topk_ms = topk_timings(dev, batch, m, k).unwrap_or_else(|e| serde_json::json!({"error": e}));
    let mut tr = DeviceTrainer::new(cfg, dev).unwrap_or_else(|e| fail(e.to_string()));
    tr.set_top_k_method(method);
    let mut last = None;
    for s in 0..warmup {
        last = Some(tr.step_tensor(&batches[s % pool]).and_then(|p| p.fetch()).unwrap_or_else(|e| fail(e.to_string())));
    }
    dev.synchronize().unwrap_or_else(|e| ce(e));
    let t = Instant::now();
    for s in 0..steps {
        last = Some(tr.step_tensor(&batches[(s + warmup) % pool]).and_then(|p| p.fetch()).unwrap_or_else(|e| fail(e.to_string())));
    }
    dev.synchronize().unwrap_or_else(|e| ce(e));
    let secs = t.elapsed().as_secs_f64();
    let tok_s = (steps * batch) as f64 / secs;
    // Dense GEMMs per token: encoder, dW_enc, dW_dec (2·d·m each), plus the sparse
    // k-row passes and Adam amortised over the batch.
    let flops_tok = 6.0 * (d * m) as f64 + 8.0 * (k * d) as f64 + 10.0 * (2 * d * m) as f64 / batch as f64;
    let last = last.unwrap_or_else(|| fail("no steps ran (--steps 0 and --warmup 0)".into()));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "impl": "emlab", "device": name, "tf32": tf32, "d": d, "m": m, "k": k, "batch": batch, "steps": steps,
                "threads": rayon::current_num_threads(),
                "seconds": secs, "tokens_per_s": tok_s, "step_s": secs / steps.max(1) as f64,
                "flops_per_token": flops_tok, "achieved_gflops": tok_s * flops_tok / 1e9,
                "gemm_gflops_encoder_shape": gemm_enc, "gemm_gflops_2048": gemm_sq,
                "final_mse": last.mse, "final_ev": last.explained_variance, "l0": last.l0,
                "check_ok": check.get("ok"), "check": check,
                "topk_method": format!("{method:?}").to_lowercase(), "topk_ms": topk_ms,
            })
        );
    } else {
        println!("top-k timings (ms): {topk_ms}");
        println!(
            "emlab TopK SAE on {name} d={d} m={m} k={k} batch={batch}: {tok_s:.0} tokens/s ({:.2} ms/step), \
             {:.1} GFLOP/s; device GEMM {gemm_enc:.0} GFLOP/s (encoder shape), {gemm_sq:.0} (2048^3); \
             last step mse {:.4} EV {:.4} L0 {:.1}",
            secs / steps.max(1) as f64 * 1e3,
            tok_s * flops_tok / 1e9,
            last.mse,
            last.explained_variance,
            last.l0
        );
    }
}

/// The device trainer against the CPU trainer on a small problem, and top-k of
/// width `m` against a CPU sort: catches a device kernel that disagrees with the
/// CPU path (what the CPU test suite cannot see).
fn self_check(dev: &Device, m_full: usize) -> serde_json::Value {
    let run = || -> Result<serde_json::Value, String> {
        let (d, m, k, n, steps) = (32usize, 2500usize, 6usize, 96usize, 4usize);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x: Vec<f32> = (0..n * steps * d).map(|i| gauss(&mut rng) + (i % d) as f32 * 0.05).collect();
        let mut cfg = TrainConfig::new(d, m, Architecture::TopK { k });
        cfg.lr = 3e-3;
        cfg.dead_after_tokens = n as u64; // latents die after one batch: AuxK runs from step 2
        let mut cpu = Trainer::new(cfg.clone()).map_err(|e| e.to_string())?;
        let mut gpu = DeviceTrainer::new(cfg, dev).map_err(|e| e.to_string())?;
        let mut worst_loss = 0f64;
        let mut aux_seen = false;
        for s in 0..steps {
            let b = &x[s * n * d..(s + 1) * n * d];
            let a = cpu.step(b).map_err(|e| e.to_string())?;
            let g = gpu.step(b).and_then(|p| p.fetch()).map_err(|e| e.to_string())?;
            worst_loss = worst_loss.max((a.loss - g.loss).abs() / a.loss.abs().max(1e-12));
            if a.l0 != g.l0 {
                return Err(format!("step {s}: l0 device {} cpu {}", g.l0, a.l0));
            }
            aux_seen |= g.aux_loss > 0.0;
        }
        let back = gpu.to_trainer().map_err(|e| e.to_string())?;
        let (pa, pb) = (cpu.params(), back.params());
        let rel = |a: &[f32], b: &[f32]| {
            let num = a.iter().zip(b).map(|(x, y)| (*x - *y).abs()).fold(0f32, f32::max);
            num as f64 / a.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-12) as f64
        };
        let worst_w = [rel(pa.0, pb.0), rel(pa.1, pb.1), rel(pa.2, pb.2), rel(pa.3, pb.3)].into_iter().fold(0f64, f64::max);
        // top-k at the benchmark width, a few rows, against a CPU sort
        let rows = 8;
        let v: Vec<f32> = (0..rows * m_full).map(|_| gauss(&mut rng)).collect();
        let t = Tensor::from_slice(&v, (rows, m_full), dev).map_err(|e| e.to_string())?;
        let (_, ids) = emlab_sae::device::top_k_rows(&t, 32).map_err(|e| e.to_string())?;
        let ids = ids.to_vec2::<u32>().map_err(|e| e.to_string())?;
        let mut topk_ok = true;
        for (r, got) in ids.iter().enumerate() {
            let row = &v[r * m_full..(r + 1) * m_full];
            let mut order: Vec<u32> = (0..m_full as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            topk_ok &= got[..] == order[..32];
        }
        let ok = worst_loss < 1e-4 && worst_w < 1e-4 && aux_seen && topk_ok;
        Ok(serde_json::json!({"ok": ok, "max_rel_loss_diff": worst_loss, "max_rel_weight_diff": worst_w,
                              "auxk_exercised": aux_seen, "topk_exact": topk_ok}))
    };
    run().unwrap_or_else(|e| serde_json::json!({"ok": false, "error": e}))
}

fn args_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// Milliseconds per top-k of a random [n, m] matrix, per method (device synchronised).
fn topk_timings(dev: &Device, n: usize, m: usize, k: usize) -> Result<serde_json::Value, String> {
    let x = Tensor::randn(0f32, 1f32, (n, m), dev).map_err(|e| e.to_string())?;
    let mut out = serde_json::Map::new();
    for method in [TopKMethod::Grouped, TopKMethod::Chunked] {
        let mut cache = TopKCache::default();
        let mut run = || top_k_rows_with(&x, k, method, &mut cache).map_err(|e| e.to_string());
        run()?;
        dev.synchronize().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            std::hint::black_box(run()?);
        }
        dev.synchronize().map_err(|e| e.to_string())?;
        out.insert(format!("{method:?}").to_lowercase(), (t.elapsed().as_secs_f64() * 1e3 / reps as f64).into());
    }
    Ok(out.into())
}
