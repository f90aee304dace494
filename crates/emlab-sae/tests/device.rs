//! The candle-tensor TopK trainer (`emlab_sae::device`) on `Device::Cpu` against
//! the hand-written CPU trainer, brute-force top-k and finite differences. The
//! CUDA build runs exactly these tensor ops on the GPU.

use candle_core::{Device, Tensor};
use emlab_sae::device::{top_k_rows, top_k_rows_with, DeviceTrainer, TopKCache, TopKMethod};
use emlab_sae::{Architecture, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};

fn gauss(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A Gaussian mixture (16 centres + noise), offset so b_dec matters.
fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..16 * d).map(|_| 2.0 * gauss(&mut rng)).collect();
    let mut x = vec![0f32; n * d];
    for row in x.chunks_mut(d) {
        let c = rng.random_range(0..16);
        for (t, v) in row.iter_mut().enumerate() {
            *v = centres[c * d + t] + 0.5 * gauss(&mut rng) + 1.0;
        }
    }
    x
}

fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max).max(1e-12);
    num / den
}

#[test]
fn top_k_matches_brute_force() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // widths: one sort; chunked with a padded last chunk; chunked with k needing 2048-wide chunks.
    // widths: one sort; padded last group / chunk; k needing smaller groups or 2048-wide
    // chunks; recursion on the group maxima (40000 / 32 > 1024); k = cols / 2 (one sort).
    let cases = [(5usize, 37usize, 4usize), (4, 3000, 32), (3, 4096, 1), (2, 5000, 600), (3, 2049, 7), (2, 70001, 32), (2, 6000, 3000)];
    for (&(n, cols, k), method) in cases.iter().flat_map(|c| [(c, TopKMethod::Grouped), (c, TopKMethod::Chunked)]) {
        if method == TopKMethod::Chunked && k * 2 > 4096 {
            continue; // chunked needs k <= 4096 / 2 on wide rows
        }
        let v: Vec<f32> = (0..n * cols).map(|_| gauss(&mut rng)).collect();
        let t = Tensor::from_slice(&v, (n, cols), &Device::Cpu).unwrap();
        let (vals, ids) = top_k_rows_with(&t, k, method, &mut TopKCache::default()).unwrap();
        assert_eq!(vals.dims(), &[n, k]);
        let vals = vals.to_vec2::<f32>().unwrap();
        let ids = ids.to_vec2::<u32>().unwrap();
        for r in 0..n {
            let row = &v[r * cols..(r + 1) * cols];
            let mut want: Vec<(f32, u32)> = row.iter().enumerate().map(|(j, &x)| (x, j as u32)).collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            want.truncate(k);
            let got: Vec<(f32, u32)> = vals[r].iter().copied().zip(ids[r].iter().copied()).collect();
            assert_eq!(got, want, "{method:?} n {n} cols {cols} k {k} row {r}");
        }
    }
}

#[test]
fn top_k_bad_shapes_are_errors() {
    let t = Tensor::zeros((2, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(top_k_rows(&t, 0).unwrap_err().to_string().contains("k = 0"));
    assert!(top_k_rows(&t, 11).unwrap_err().to_string().contains("1..=10"));
    let wide = Tensor::zeros((1, 20000), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = top_k_rows(&wide, 5000).unwrap_err().to_string();
    assert!(e.contains("too large") && e.contains("k <= 2048"), "{e}");
    let v = Tensor::zeros(10, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(top_k_rows(&v, 1).unwrap_err().to_string().contains("2-D"));
    // trainer: wrong width, non-TopK architecture
    let mut tr = DeviceTrainer::new(TrainConfig::new(4, 8, Architecture::TopK { k: 2 }), &Device::Cpu).unwrap();
    assert!(tr.step(&[1.0; 6]).unwrap_err().to_string().contains("d_in = 4"));
    let bad = Tensor::zeros((3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(tr.step_tensor(&bad).unwrap_err().to_string().contains("d_in = 4"));
    let relu = TrainConfig::new(4, 8, Architecture::ReLU { l1_coefficient: 1.0, l1_warmup_steps: 0 });
    assert!(DeviceTrainer::new(relu, &Device::Cpu).unwrap_err().to_string().contains("TopK only"));
}

/// Runs both trainers from the same init on the same batches and compares every
/// step's stats and the final weights. `dead_after` small makes latents die
/// after the first batch, so AuxK is exercised from step 2 on.
fn compare(d: usize, m: usize, k: usize, n: usize, steps: usize, dead_after: u64) {
    let mut cfg = TrainConfig::new(d, m, Architecture::TopK { k });
    cfg.lr = 3e-3; // large enough that the weights move visibly in a few steps
    cfg.dead_after_tokens = dead_after;
    let x = data(n * steps, d, 11);
    let mut cpu = Trainer::new(cfg.clone()).unwrap();
    let mut dev = DeviceTrainer::new(cfg, &Device::Cpu).unwrap();
    let mut saw_aux = false;
    for s in 0..steps {
        let b = &x[s * n * d..(s + 1) * n * d];
        let a = cpu.step(b).unwrap();
        let g = dev.step(b).unwrap().fetch().unwrap();
        let close = |p: f64, q: f64| (p - q).abs() <= 1e-4 * q.abs().max(1e-6);
        assert!(close(g.mse, a.mse), "step {s}: mse device {} cpu {}", g.mse, a.mse);
        assert!(close(g.aux_loss, a.aux_loss), "step {s}: aux device {} cpu {}", g.aux_loss, a.aux_loss);
        assert!(close(g.explained_variance, a.explained_variance), "step {s}: ev {} vs {}", g.explained_variance, a.explained_variance);
        assert_eq!(g.l0, a.l0, "step {s}");
        assert_eq!(g.dead_latents, a.dead_latents, "step {s}");
        saw_aux |= a.aux_loss > 0.0;
    }
    if dead_after < (n * steps) as u64 {
        assert!(saw_aux, "the AuxK path was never exercised");
    }
    let back = dev.to_trainer().unwrap();
    let (pa, pb) = (cpu.params(), back.params());
    for (name, a, b) in [("W_enc", pa.0, pb.0), ("W_dec", pa.1, pb.1), ("b_enc", pa.2, pb.2), ("b_dec", pa.3, pb.3)] {
        let r = rel_diff(b, a);
        assert!(r < 1e-4, "{name}: relative difference {r}");
    }
    // the weights did move, so the comparison is not vacuous
    let fresh = Trainer::new(cpu.config().clone()).unwrap();
    assert!(rel_diff(pa.0, fresh.params().0) > 1e-3);
    assert_eq!(back.dead_latents(), cpu.dead_latents());
    assert_eq!(back.log_feature_density(), cpu.log_feature_density());
    // inference SAE (scale folded) agrees
    let (sa, sb) = (cpu.to_sae().unwrap(), dev.to_sae().unwrap());
    let (ya, yb) = (sa.forward(&x[..n * d]).unwrap(), sb.forward(&x[..n * d]).unwrap());
    assert!(rel_diff(&yb, &ya) < 1e-3);
    // checkpoint written from the device state resumes (on the device) in step with the CPU run
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.safetensors");
    dev.save_checkpoint(&ck).unwrap();
    let mut resumed = DeviceTrainer::from_trainer(&Trainer::load_checkpoint(&ck).unwrap(), &Device::Cpu).unwrap();
    let b = &x[..n * d];
    let (a, g) = (cpu.step(b).unwrap(), resumed.step(b).unwrap().fetch().unwrap());
    assert!((a.mse - g.mse).abs() <= 1e-4 * a.mse, "after resume: {} vs {}", g.mse, a.mse);
    assert_eq!(resumed.steps(), cpu.steps());
}

#[test]
fn device_trainer_matches_cpu_trainer_chunked_topk_with_auxk() {
    // m = 2500: chunked top-k with a padded chunk; latents die after one batch.
    compare(12, 2500, 6, 48, 5, 48);
}

#[test]
fn device_trainer_matches_cpu_trainer_small() {
    compare(8, 64, 3, 40, 6, 1_000_000);
}

/// Loss of an SAE in f64 straight from the definition (independent of both trainers).
#[allow(clippy::too_many_arguments)]
fn loss_f64(x: &[f32], d: usize, m: usize, k: usize, we_t: &[f32], wd: &[f32], be: &[f32], bd: &[f32]) -> f64 {
    let n = x.len() / d;
    let mut total = 0.0;
    for i in 0..n {
        let xr = &x[i * d..(i + 1) * d];
        let pre: Vec<f64> =
            (0..m).map(|j| be[j] as f64 + (0..d).map(|t| (xr[t] as f64 - bd[t] as f64) * we_t[j * d + t] as f64).sum::<f64>()).collect();
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| pre[b].total_cmp(&pre[a]));
        let mut xh: Vec<f64> = bd.iter().map(|&b| b as f64).collect();
        for &j in &order[..k] {
            let z = pre[j].max(0.0);
            for t in 0..d {
                xh[t] += z * wd[j * d + t] as f64;
            }
        }
        total += (0..d).map(|t| (xh[t] - xr[t] as f64).powi(2)).sum::<f64>();
    }
    total / n as f64
}

#[test]
fn device_gradients_match_finite_differences_and_cpu() {
    let (d, m, k, n) = (5usize, 12usize, 3usize, 6usize);
    let mut cfg = TrainConfig::new(d, m, Architecture::TopK { k });
    cfg.normalize = false;
    cfg.b_dec_init_mean = false;
    let x = data(n, d, 5);
    let cpu = Trainer::new(cfg.clone()).unwrap();
    let mut dev = DeviceTrainer::from_trainer(&cpu, &Device::Cpu).unwrap();
    let g = dev.gradients(&x).unwrap();
    let gc = cpu.gradients(&x, None).unwrap();
    for (name, a, b) in
        [("W_enc", &g.w_enc_t, &gc.w_enc_t), ("W_dec", &g.w_dec, &gc.w_dec), ("b_enc", &g.b_enc, &gc.b_enc), ("b_dec", &g.b_dec, &gc.b_dec)]
    {
        assert!(rel_diff(a, b) < 1e-4, "{name} vs CPU trainer: {}", rel_diff(a, b));
    }
    let (we, wd, be, bd) = cpu.params();
    let base = loss_f64(&x, d, m, k, we, wd, be, bd);
    assert!((g.loss - base).abs() < 1e-4 * base);
    // central differences in f64 on every parameter of every tensor (tiny SAE).
    let h = 1e-3f32;
    let mut checked = 0;
    for (ti, grad) in [&g.w_enc_t, &g.w_dec, &g.b_enc, &g.b_dec].into_iter().enumerate() {
        for i in 0..grad.len() {
            let mut p = [we.to_vec(), wd.to_vec(), be.to_vec(), bd.to_vec()];
            p[ti][i] += h;
            let up = loss_f64(&x, d, m, k, &p[0], &p[1], &p[2], &p[3]);
            p[ti][i] -= 2.0 * h;
            let dn = loss_f64(&x, d, m, k, &p[0], &p[1], &p[2], &p[3]);
            let fd = (up - dn) / (2.0 * h as f64);
            assert!((fd - grad[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()), "tensor {ti} entry {i}: fd {fd} analytic {}", grad[i]);
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * m * d + m + d);
}
