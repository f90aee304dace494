//! Evidence that the SAE engine is right: feature recovery on planted sparse
//! data, hand-written backward vs finite differences of an independent f64
//! loss, SAELens save/load round trips, normalisation folding, multi-SAE training.

use emlab_sae::{metrics, Activation, Architecture, MultiTrainer, Sae, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `n_feat` random unit features in `d` dims; each sample is a nonnegative
/// combination of `active` of them (coefficients in [0.5, 1.5]) plus N(0, noise²)
/// noise, plus a constant offset (so the data has a non-zero mean, as residual
/// streams do).
fn planted(d: usize, n_feat: usize, active: usize, n: usize, noise: f64, seed: u64) -> (Vec<Vec<f64>>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let feats: Vec<Vec<f64>> = (0..n_feat)
        .map(|_| {
            let v: Vec<f64> = (0..d).map(|_| gauss(&mut rng)).collect();
            let nrm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.into_iter().map(|a| a / nrm).collect()
        })
        .collect();
    let offset: Vec<f64> = (0..d).map(|_| 0.3 * gauss(&mut rng)).collect();
    let mut x = vec![0f32; n * d];
    for i in 0..n {
        let row = &mut x[i * d..(i + 1) * d];
        let mut acc = offset.clone();
        for _ in 0..active {
            let f = rng.random_range(0..n_feat);
            let c = 0.5 + rng.random::<f64>();
            for t in 0..d {
                acc[t] += c * feats[f][t];
            }
        }
        for t in 0..d {
            row[t] = (acc[t] + noise * gauss(&mut rng)) as f32;
        }
    }
    (feats, x)
}

/// For each planted feature, the best cosine with any decoder row.
fn recovery(sae: &Sae, feats: &[Vec<f64>]) -> Vec<f64> {
    feats
        .iter()
        .map(|f| {
            (0..sae.d_sae)
                .map(|j| {
                    let w = sae.decoder_row(j);
                    let dotp: f64 = w.iter().zip(f).map(|(a, b)| *a as f64 * b).sum();
                    let nw = w.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                    dotp / nw.max(1e-12)
                })
                .fold(f64::MIN, f64::max)
        })
        .collect()
}

fn train_planted(arch: Architecture, steps: usize, seed: u64) -> (Sae, Vec<Vec<f64>>, Vec<f32>, emlab_sae::StepStats) {
    let (d, n_feat, batch) = (64, 256, 512);
    let (feats, x) = planted(d, n_feat, 3, batch * 64, 0.01, seed);
    let mut cfg = TrainConfig::new(d, 512, arch);
    cfg.lr = 4e-3;
    cfg.dead_after_tokens = 20 * batch as u64;
    cfg.seed = seed;
    let mut tr = Trainer::new(cfg).unwrap();
    let mut last = None;
    for s in 0..steps {
        let b = s % 64;
        last = Some(tr.step(&x[b * batch * d..(b + 1) * batch * d]).unwrap());
    }
    (tr.to_sae().unwrap(), feats, x, last.unwrap())
}

#[test]
fn topk_recovers_planted_features() {
    let (sae, feats, x, last) = train_planted(Architecture::TopK { k: 3 }, 1000, 1);
    let cos = recovery(&sae, &feats);
    let ok = cos.iter().filter(|&&c| c >= 0.9).count() as f64 / cos.len() as f64;
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let rep = metrics::evaluate(&sae, &x[..8192 * 64], 1024).unwrap();
    eprintln!(
        "TopK recovery: {:.1}% of 256 features with cos >= 0.9 (mean best cos {mean:.3}); EV {:.4}, L0 {:.2}, dead {:.3}; last step {last:?}",
        100.0 * ok,
        rep.explained_variance,
        rep.l0,
        rep.dead_share
    );
    assert!(ok >= 0.9, "only {:.1}% of planted features recovered", 100.0 * ok);
    assert!(rep.explained_variance > 0.9, "EV {}", rep.explained_variance);
    assert!(rep.l0 <= 3.0 + 1e-9);
}

#[test]
fn batch_topk_recovers_and_stores_jumprelu() {
    let (sae, feats, x, last) = train_planted(Architecture::BatchTopK { k: 3, threshold_lr: 0.01 }, 1000, 2);
    let cos = recovery(&sae, &feats);
    let ok = cos.iter().filter(|&&c| c >= 0.9).count() as f64 / cos.len() as f64;
    let th = match &sae.activation {
        Activation::JumpReLU { threshold } => threshold[0],
        a => panic!("BatchTopK must ship as JumpReLU, got {a:?}"),
    };
    let rep = metrics::evaluate(&sae, &x[..8192 * 64], 1024).unwrap();
    eprintln!(
        "BatchTopK recovery: {:.1}% (cos >= 0.9); threshold {th:.4}; inference L0 {:.2} (train target 3), EV {:.4}; last {last:?}",
        100.0 * ok,
        rep.l0,
        rep.explained_variance
    );
    assert!(ok >= 0.9, "only {:.1}% recovered", 100.0 * ok);
    assert!(th > 0.0);
    // The JumpReLU threshold estimated in training must reproduce the trained sparsity.
    assert!(rep.l0 > 2.0 && rep.l0 < 4.5, "inference L0 {} far from the trained k = 3", rep.l0);
}

#[test]
fn relu_l1_learns_sparse_code() {
    let (sae0, _, x, _) = train_planted(Architecture::ReLU { l1_coefficient: 0.0, l1_warmup_steps: 0 }, 300, 3);
    let (sae, feats, _, last) = train_planted(Architecture::ReLU { l1_coefficient: 0.5, l1_warmup_steps: 50 }, 300, 3);
    let cos = recovery(&sae, &feats);
    let ok = cos.iter().filter(|&&c| c >= 0.9).count() as f64 / cos.len() as f64;
    let rep0 = metrics::evaluate(&sae0, &x[..4096 * 64], 1024).unwrap();
    let rep = metrics::evaluate(&sae, &x[..4096 * 64], 1024).unwrap();
    eprintln!(
        "ReLU+L1: {:.1}% recovered, EV {:.4}, L0 {:.1} (no L1: EV {:.4}, L0 {:.1}); last {last:?}",
        100.0 * ok,
        rep.explained_variance,
        rep.l0,
        rep0.explained_variance,
        rep0.l0
    );
    assert!(rep.explained_variance > 0.8);
    assert!(rep.l0 < 0.5 * rep0.l0, "L1 should make the code much sparser: L0 {} vs {} without", rep.l0, rep0.l0);
    assert!(ok >= 0.9, "only {:.1}% recovered", 100.0 * ok);
    assert!(last.l1_loss > 0.0);
}

// ---------- gradient check against an independent f64 implementation ----------

struct RefCfg<'a> {
    arch: &'a Architecture,
    lambda: f64,
    dead: &'a [u32],
    aux_k: usize,
    aux_c: f64,
}

/// Loss in f64, written from the formulas (dense, no sparsity tricks).
fn ref_loss(p: &[Vec<f64>; 4], x: &[f32], d: usize, m: usize, c: &RefCfg) -> f64 {
    let [we, wd, be, bd] = p; // we: [m, d] (transposed encoder)
    let n = x.len() / d;
    let pre: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..m).map(|j| be[j] + (0..d).map(|t| (x[i * d + t] as f64 - bd[t]) * we[j * d + t]).sum::<f64>()).collect())
        .collect();
    let mut z = vec![vec![0f64; m]; n];
    match c.arch {
        Architecture::TopK { k } => {
            for i in 0..n {
                let mut o: Vec<usize> = (0..m).collect();
                o.sort_by(|a, b| pre[i][*b].partial_cmp(&pre[i][*a]).unwrap());
                for &j in &o[..*k] {
                    z[i][j] = pre[i][j].max(0.0);
                }
            }
        }
        Architecture::BatchTopK { k, .. } => {
            let mut all: Vec<f64> = pre.iter().flatten().map(|v| v.max(0.0)).filter(|v| *v > 0.0).collect();
            all.sort_by(|a, b| b.partial_cmp(a).unwrap());
            let thr = if all.len() > k * n { all[k * n - 1] } else { f64::MIN_POSITIVE };
            for i in 0..n {
                for j in 0..m {
                    if pre[i][j] >= thr && pre[i][j] > 0.0 {
                        z[i][j] = pre[i][j];
                    }
                }
            }
        }
        Architecture::ReLU { .. } => {
            for i in 0..n {
                for j in 0..m {
                    z[i][j] = pre[i][j].max(0.0);
                }
            }
        }
    }
    let mut loss = 0.0;
    for i in 0..n {
        let xhat: Vec<f64> = (0..d).map(|t| bd[t] + (0..m).map(|j| z[i][j] * wd[j * d + t]).sum::<f64>()).collect();
        let r: Vec<f64> = (0..d).map(|t| xhat[t] - x[i * d + t] as f64).collect();
        loss += r.iter().map(|v| v * v).sum::<f64>() / n as f64;
        loss += c.lambda * z[i].iter().sum::<f64>() / n as f64;
        if !c.dead.is_empty() && c.aux_k > 0 {
            let ka = c.aux_k.min(c.dead.len());
            let scale = (c.dead.len() as f64 / c.aux_k as f64).min(1.0);
            let mut o: Vec<u32> = c.dead.to_vec();
            o.sort_by(|a, b| pre[i][*b as usize].partial_cmp(&pre[i][*a as usize]).unwrap());
            // e = x - x_hat (constant); ê = Σ relu(pre) W_dec
            let mut diff: Vec<f64> = r.clone(); // ê - e = ê + r
            for &j in &o[..ka] {
                let a = pre[i][j as usize].max(0.0);
                for t in 0..d {
                    diff[t] += a * wd[j as usize * d + t];
                }
            }
            // r is treated as a constant in the aux term: handled by the caller
            // perturbing only through `diff`'s dependence... see aux_const below.
            loss += c.aux_c * scale * diff.iter().map(|v| v * v).sum::<f64>() / n as f64;
        }
    }
    loss
}

/// The AuxK residual is detached (stop-gradient), so finite differences must
/// hold it fixed: compute it at the base point and reuse it.
fn ref_loss_detached(p: &[Vec<f64>; 4], base: &[Vec<f64>; 4], x: &[f32], d: usize, m: usize, c: &RefCfg) -> f64 {
    // loss(p) with the aux residual evaluated at `base`:
    //   main(p) + aux(p, r(base)) = [ref(p) - aux(p, r(p))] + aux(p, r(base))
    // Implemented by evaluating the two pieces separately.
    let no_aux = RefCfg { dead: &[], ..*c };
    let main = ref_loss(p, x, d, m, &no_aux);
    if c.dead.is_empty() || c.aux_k == 0 {
        return main;
    }
    main + aux_term(p, base, x, d, m, c)
}

fn aux_term(p: &[Vec<f64>; 4], base: &[Vec<f64>; 4], x: &[f32], d: usize, m: usize, c: &RefCfg) -> f64 {
    let n = x.len() / d;
    // residual r = x_hat(base) - x, from the main path at the base point
    let recon = |q: &[Vec<f64>; 4]| -> Vec<Vec<f64>> {
        let no_aux = RefCfg { dead: &[], lambda: 0.0, ..*c };
        let _ = ref_loss(q, x, d, m, &no_aux);
        let [we, wd, be, bd] = q;
        let pre: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..m).map(|j| be[j] + (0..d).map(|t| (x[i * d + t] as f64 - bd[t]) * we[j * d + t]).sum::<f64>()).collect())
            .collect();
        let k = match c.arch {
            Architecture::TopK { k } => *k,
            _ => unreachable!("aux check uses TopK"),
        };
        (0..n)
            .map(|i| {
                let mut o: Vec<usize> = (0..m).collect();
                o.sort_by(|a, b| pre[i][*b].partial_cmp(&pre[i][*a]).unwrap());
                (0..d)
                    .map(|t| bd[t] + o[..k].iter().map(|&j| pre[i][j].max(0.0) * wd[j * d + t]).sum::<f64>() - x[i * d + t] as f64)
                    .collect()
            })
            .collect()
    };
    let r = recon(base);
    let [we, wd, be, bd] = p;
    let ka = c.aux_k.min(c.dead.len());
    let scale = (c.dead.len() as f64 / c.aux_k as f64).min(1.0);
    let mut loss = 0.0;
    for i in 0..n {
        let pre: Vec<f64> = (0..m).map(|j| be[j] + (0..d).map(|t| (x[i * d + t] as f64 - bd[t]) * we[j * d + t]).sum::<f64>()).collect();
        let mut o: Vec<u32> = c.dead.to_vec();
        o.sort_by(|a, b| pre[*b as usize].partial_cmp(&pre[*a as usize]).unwrap());
        let mut diff = r[i].clone();
        for &j in &o[..ka] {
            let a = pre[j as usize].max(0.0);
            for t in 0..d {
                diff[t] += a * wd[j as usize * d + t];
            }
        }
        loss += c.aux_c * scale * diff.iter().map(|v| v * v).sum::<f64>() / n as f64;
    }
    loss
}

fn grad_check(arch: Architecture, dead: Vec<u32>, l1_warmup: u64) {
    let (d, m, n) = (6, 10, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let x: Vec<f32> = (0..n * d).map(|_| (gauss(&mut rng) + 0.5) as f32).collect();
    let mut cfg = TrainConfig::new(d, m, arch.clone());
    cfg.normalize = false;
    cfg.aux_k = 3;
    cfg.lr = 0.05;
    cfg.seed = 7;
    let mut tr = Trainer::new(cfg.clone()).unwrap();
    // Move off the symmetric init so every parameter block is generic.
    tr.step(&x).unwrap();
    tr.step(&x).unwrap();
    let g = tr.gradients(&x, Some(&dead)).unwrap();
    let (we, wd, be, bd) = tr.params();
    let base: [Vec<f64>; 4] = [we, wd, be, bd].map(|v| v.iter().map(|&a| a as f64).collect());
    let lambda = match arch {
        // step index 2 of a linear warm-up: coefficient * (2 + 1) / warmup
        Architecture::ReLU { l1_coefficient, l1_warmup_steps } => l1_coefficient as f64 * (3.0 / l1_warmup_steps as f64).min(1.0),
        _ => 0.0,
    };
    assert_eq!(l1_warmup, if lambda > 0.0 { 6 } else { 0 });
    let c = RefCfg { arch: &arch, lambda, dead: &dead, aux_k: 3, aux_c: 1.0 / 32.0 };
    let l0 = ref_loss_detached(&base, &base, &x, d, m, &c);
    assert!((l0 - g.loss).abs() < 1e-4 * (1.0 + l0.abs()), "forward loss {} vs reference {l0}", g.loss);
    let grads = [&g.w_enc_t, &g.w_dec, &g.b_enc, &g.b_dec];
    let names = ["W_enc^T", "W_dec", "b_enc", "b_dec"];
    let h = 1e-6;
    let mut checked = 0;
    let mut nonzero = 0;
    for b in 0..4 {
        for e in 0..base[b].len() {
            let mut plus = base.clone();
            plus[b][e] += h;
            let mut minus = base.clone();
            minus[b][e] -= h;
            let fd = (ref_loss_detached(&plus, &base, &x, d, m, &c) - ref_loss_detached(&minus, &base, &x, d, m, &c)) / (2.0 * h);
            let an = grads[b][e] as f64;
            assert!(
                (fd - an).abs() <= 2e-3 * fd.abs().max(an.abs()) + 2e-5,
                "{:?}: d loss / d {}[{e}]: finite difference {fd:.6e}, backward {an:.6e}",
                arch,
                names[b]
            );
            checked += 1;
            if fd.abs() > 1e-6 {
                nonzero += 1;
            }
        }
    }
    assert!(nonzero > checked / 4, "too few non-zero gradients ({nonzero}/{checked}) for a meaningful check");
}

#[test]
fn gradient_check_topk_with_auxk() {
    grad_check(Architecture::TopK { k: 3 }, vec![1, 4, 6, 8, 9], 0);
}

#[test]
fn gradient_check_topk_no_dead() {
    grad_check(Architecture::TopK { k: 2 }, vec![], 0);
}

#[test]
fn gradient_check_batch_topk() {
    grad_check(Architecture::BatchTopK { k: 3, threshold_lr: 0.01 }, vec![], 0);
}

#[test]
fn gradient_check_relu_l1_warmup() {
    grad_check(Architecture::ReLU { l1_coefficient: 0.3, l1_warmup_steps: 6 }, vec![], 6);
}

// ---------- invariants, folding, save/load ----------

#[test]
fn decoder_rows_stay_unit_norm() {
    let (_, x) = planted(16, 32, 2, 2048, 0.01, 5);
    let mut cfg = TrainConfig::new(16, 64, Architecture::TopK { k: 2 });
    cfg.lr = 1e-2;
    let mut tr = Trainer::new(cfg).unwrap();
    for b in x.chunks(256 * 16) {
        tr.step(b).unwrap();
    }
    let (_, wd, _, _) = tr.params();
    for (j, r) in wd.chunks(16).enumerate() {
        let nrm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((nrm - 1.0).abs() < 1e-5, "decoder row {j} has norm {nrm}");
    }
}

#[test]
fn normalisation_folding_matches_unfolded() {
    let d = 16;
    let (_, x0) = planted(d, 32, 2, 1024, 0.01, 6);
    // raw activations with a large scale, like a real residual stream
    let x: Vec<f32> = x0.iter().map(|v| v * 37.0 + 3.0).collect();
    for arch in [
        Architecture::TopK { k: 2 },
        Architecture::BatchTopK { k: 2, threshold_lr: 0.1 },
        Architecture::ReLU { l1_coefficient: 1e-3, l1_warmup_steps: 0 },
    ] {
        let mut cfg = TrainConfig::new(d, 48, arch.clone());
        cfg.lr = 5e-3;
        let mut tr = Trainer::new(cfg).unwrap();
        for b in x.chunks(256 * d) {
            tr.step(b).unwrap();
        }
        let s = tr.scale().unwrap();
        let ms: f64 = x.iter().map(|v| (*v as f64 * s as f64).powi(2)).sum::<f64>() / (x.len() / d) as f64;
        assert!((ms / d as f64 - 1.0).abs() < 0.1, "E||s x||^2 / d = {}", ms / d as f64);
        let unfolded = tr.to_sae_unfolded().unwrap();
        let folded = tr.to_sae().unwrap();
        let xs: Vec<f32> = x.iter().map(|v| v * s).collect();
        let (zu, zf) = (unfolded.encode(&xs).unwrap(), folded.encode(&x).unwrap());
        let rec_u: Vec<f32> = unfolded.forward(&xs).unwrap().iter().map(|v| v / s).collect();
        let rec_f = folded.forward(&x).unwrap();
        let max_rel = rec_u.iter().zip(&rec_f).map(|(a, b)| (a - b).abs() / (1.0 + a.abs())).fold(0f32, f32::max);
        assert!(max_rel < 1e-4, "{arch:?}: folded vs unfolded reconstruction differ by {max_rel}");
        let zd = zu.iter().zip(&zf).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(zd < 1e-3, "{arch:?}: latents differ by {zd}");
    }
}

#[test]
fn save_load_round_trip_all_architectures() {
    let d = 12;
    let (_, x) = planted(d, 24, 2, 512, 0.01, 8);
    let dir = tempfile::tempdir().unwrap();
    for (i, arch) in [
        Architecture::TopK { k: 3 },
        Architecture::BatchTopK { k: 3, threshold_lr: 0.05 },
        Architecture::ReLU { l1_coefficient: 1e-3, l1_warmup_steps: 10 },
    ]
    .into_iter()
    .enumerate()
    {
        let mut tr = Trainer::new(TrainConfig::new(d, 40, arch)).unwrap();
        for b in x.chunks(128 * d) {
            tr.step(b).unwrap();
        }
        let mut sae = tr.to_sae().unwrap();
        sae.meta.hook_name = Some("blocks.15.hook_resid_post".into());
        sae.meta.model_name = Some("SmolLM2-135M-Instruct".into());
        sae.meta.extra.insert("context_size".into(), serde_json::json!(128));
        let p = dir.path().join(format!("sae{i}"));
        let dens = tr.log_feature_density();
        emlab_sae::save_sae(&p, &sae, Some(&dens)).unwrap();
        let back = emlab_sae::load_sae(&p).unwrap();
        assert_eq!(back, sae, "round trip changed the SAE");
        assert_eq!(back.forward(&x).unwrap(), sae.forward(&x).unwrap());
        assert_eq!(emlab_sae::load_sparsity(&p, 40).unwrap().unwrap(), dens);
        // SAELens layout: keys, shapes, config fields
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("cfg.json")).unwrap()).unwrap();
        assert_eq!(cfg["d_in"], 12);
        assert_eq!(cfg["d_sae"], 40);
        assert_eq!(cfg["normalize_activations"], "none");
        assert_eq!(cfg["metadata"]["hook_name"], "blocks.15.hook_resid_post");
        assert_eq!(cfg["architecture"], ["topk", "jumprelu", "standard"][i]);
        if i == 0 {
            assert_eq!(cfg["k"], 3);
            assert_eq!(cfg["activation_fn_kwargs"]["k"], 3);
        }
        let bytes = std::fs::read(p.join("sae_weights.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<_> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let mut want = vec!["W_dec", "W_enc", "b_dec", "b_enc"];
        if i == 1 {
            want.push("threshold");
        }
        want.sort();
        assert_eq!(names, want);
        assert_eq!(st.tensor("W_enc").unwrap().shape(), &[12, 40]);
        assert_eq!(st.tensor("W_dec").unwrap().shape(), &[40, 12]);
        assert!(!std::fs::read_dir(&p).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("tmp")));
    }
}

#[test]
fn bad_files_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sae = Trainer::new(TrainConfig::new(4, 8, Architecture::TopK { k: 2 })).unwrap().to_sae_unfolded().unwrap();
    let p = dir.path().join("s");
    emlab_sae::save_sae(&p, &sae, None).unwrap();
    // wrong shape for W_dec
    let bytes = std::fs::read(p.join("sae_weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    for (n, v) in tensors.iter_mut() {
        if n == "W_dec" {
            *v = safetensors::tensor::TensorView::new(v.dtype(), vec![4, 8], v.data()).unwrap();
        }
    }
    let bad = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(p.join("sae_weights.safetensors"), bad).unwrap();
    let e = emlab_sae::load_sae(&p).unwrap_err().to_string();
    assert!(e.contains("sae_weights.safetensors") && e.contains("`W_dec`") && e.contains("[8, 4]"), "{e}");
    // missing tensor
    emlab_sae::save_sae(&p, &sae, None).unwrap();
    let bytes = std::fs::read(p.join("sae_weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "b_enc").collect();
    std::fs::write(p.join("sae_weights.safetensors"), safetensors::serialize(kept, None).unwrap()).unwrap();
    let e = emlab_sae::load_sae(&p).unwrap_err().to_string();
    assert!(e.contains("missing tensor `b_enc`"), "{e}");
    // broken JSON, unsupported normalisation, truncated weights
    std::fs::write(p.join("cfg.json"), "{\"d_in\": 4,").unwrap();
    let e = emlab_sae::load_sae(&p).unwrap_err().to_string();
    assert!(e.contains("cfg.json") && e.contains("invalid JSON"), "{e}");
    std::fs::write(
        p.join("cfg.json"),
        r#"{"d_in":4,"d_sae":8,"architecture":"topk","k":2,"normalize_activations":"expected_average_only_in"}"#,
    )
    .unwrap();
    let e = emlab_sae::load_sae(&p).unwrap_err().to_string();
    assert!(e.contains("normalize_activations"), "{e}");
    std::fs::write(p.join("cfg.json"), r#"{"d_in":4,"d_sae":8,"architecture":"topk","k":2}"#).unwrap();
    std::fs::write(p.join("sae_weights.safetensors"), b"\x10\x00\x00").unwrap();
    let e = emlab_sae::load_sae(&p).unwrap_err().to_string();
    assert!(e.contains("sae_weights.safetensors") && e.contains("not a safetensors file"), "{e}");
    assert!(emlab_sae::load_sae(dir.path().join("nope")).unwrap_err().to_string().contains("cfg.json"));
}

#[test]
fn loads_pre_6_topk_config_and_half_weights() {
    // A SAELens 5.x-style config (TopK as activation_fn_str + kwargs) with BF16 weights.
    let dir = tempfile::tempdir().unwrap();
    let (d, m) = (3, 4);
    let w_enc: Vec<f32> = (0..d * m).map(|i| i as f32 * 0.25).collect();
    let w_dec: Vec<f32> = (0..d * m).map(|i| 1.0 - i as f32 * 0.125).collect();
    let bf = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect() };
    let (a, b, c, e) = (bf(&w_enc), bf(&w_dec), bf(&[0.5; 4]), bf(&[0.0, 1.0, 2.0]));
    use safetensors::{tensor::TensorView, Dtype};
    let t = vec![
        ("W_enc", TensorView::new(Dtype::BF16, vec![d, m], &a).unwrap()),
        ("W_dec", TensorView::new(Dtype::BF16, vec![m, d], &b).unwrap()),
        ("b_enc", TensorView::new(Dtype::BF16, vec![m], &c).unwrap()),
        ("b_dec", TensorView::new(Dtype::BF16, vec![d], &e).unwrap()),
    ];
    std::fs::write(dir.path().join("sae_weights.safetensors"), safetensors::serialize(t, None).unwrap()).unwrap();
    std::fs::write(
        dir.path().join("cfg.json"),
        r#"{"architecture":"standard","d_in":3,"d_sae":4,"activation_fn_str":"topk","activation_fn_kwargs":{"k":2},
            "hook_point":"blocks.3.hook_resid_post","model_name":"gpt2","normalize_activations":false}"#,
    )
    .unwrap();
    let sae = emlab_sae::load_sae(dir.path()).unwrap();
    assert_eq!(sae.activation, Activation::TopK { k: 2 });
    assert_eq!(sae.meta.hook_name.as_deref(), Some("blocks.3.hook_resid_post"));
    assert_eq!(sae.w_enc(), w_enc); // all values exact in bf16
    assert_eq!(sae.w_dec, w_dec);
}

#[test]
fn multi_trainer_equals_separate_trainers() {
    let d = 16;
    let (_, x) = planted(d, 32, 2, 1024, 0.01, 9);
    let cfgs = vec![
        TrainConfig::new(d, 32, Architecture::TopK { k: 2 }),
        TrainConfig::new(d, 64, Architecture::TopK { k: 4 }),
        TrainConfig::new(d, 48, Architecture::BatchTopK { k: 2, threshold_lr: 0.01 }),
    ];
    let mut mt = MultiTrainer::new(cfgs.clone()).unwrap();
    let mut single: Vec<Trainer> = cfgs.into_iter().map(|c| Trainer::new(c).unwrap()).collect();
    for b in x.chunks(128 * d) {
        let stats = mt.step(b).unwrap();
        for (t, s) in single.iter_mut().zip(&stats) {
            assert_eq!(t.step(b).unwrap(), *s);
        }
    }
    for (a, b) in mt.to_saes().unwrap().iter().zip(&single) {
        assert_eq!(*a, b.to_sae().unwrap());
    }
}

#[test]
fn step_stats_explained_variance_agrees_with_metrics() {
    let d = 16;
    let (_, x) = planted(d, 32, 2, 512, 0.01, 10);
    let mut tr = Trainer::new(TrainConfig::new(d, 32, Architecture::TopK { k: 2 })).unwrap();
    for _ in 0..5 {
        tr.step(&x).unwrap();
    }
    let s = tr.scale().unwrap();
    let xs: Vec<f32> = x.iter().map(|v| v * s).collect();
    let g = tr.gradients(&x, Some(&[])).unwrap();
    let unf = tr.to_sae_unfolded().unwrap();
    let ev = metrics::explained_variance(&xs, &unf.forward(&xs).unwrap(), d).unwrap();
    let rep = metrics::evaluate(&tr.to_sae().unwrap(), &x, 100).unwrap();
    assert!((ev - rep.explained_variance).abs() < 1e-4, "{ev} vs {}", rep.explained_variance);
    // mse reported by the trainer is in normalised units: mse_raw * s^2
    assert!((g.loss - rep.mse * (s as f64).powi(2)).abs() < 1e-3 * g.loss, "{} vs {}", g.loss, rep.mse * (s as f64).powi(2));
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let mut tr = Trainer::new(TrainConfig::new(4, 8, Architecture::TopK { k: 2 })).unwrap();
    assert!(tr.step(&[1.0, 2.0, 3.0]).unwrap_err().to_string().contains("d_in = 4"));
    assert!(tr.step(&[1.0, f32::NAN, 3.0, 4.0]).unwrap_err().to_string().contains("row 0, column 1"));
    assert!(Trainer::new(TrainConfig::new(4, 8, Architecture::TopK { k: 9 })).is_err());
    assert!(MultiTrainer::new(vec![]).is_err());
}

#[test]
fn checkpoint_resume_is_exact() {
    let d = 16;
    let (_, x) = planted(d, 32, 2, 1024, 0.01, 11);
    let mut cfg = TrainConfig::new(d, 48, Architecture::BatchTopK { k: 2, threshold_lr: 0.05 });
    cfg.dead_after_tokens = 256; // so AuxK and the dead clocks are exercised
    let mut a = Trainer::new(cfg).unwrap();
    let batches: Vec<&[f32]> = x.chunks(128 * d).collect();
    for b in &batches[..4] {
        a.step(b).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trainer.safetensors");
    a.save_checkpoint(&p).unwrap();
    let mut b = Trainer::load_checkpoint(&p).unwrap();
    for bt in &batches[4..] {
        assert_eq!(a.step(bt).unwrap(), b.step(bt).unwrap());
    }
    assert_eq!(a.to_sae().unwrap(), b.to_sae().unwrap());
    assert_eq!(a.log_feature_density(), b.log_feature_density());
    std::fs::write(&p, b"junk").unwrap();
    assert!(Trainer::load_checkpoint(&p).unwrap_err().to_string().contains("trainer.safetensors"));
}
