//! Steering, ablation, control vectors, persona score and sweeps on tiny random models.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use emlab_model::model::Lora;
use emlab_model::testing::{random_weights, tiny_config, write_tiny_gguf};
use emlab_model::{Arch, Forward, HookPoint, HookSet, Logits, Model, ModelConfig};
use emlab_steer::cvec::ControlVector;
use emlab_steer::spec::{hooks_from, Intervention, Resolved};
use emlab_steer::sweep::{random_same_norm, sweep, EvalPoint, Rate, SweepOptions};

fn model(cfg: ModelConfig, seed: u64) -> Model {
    let w = emlab_model::load::Weights { tensors: random_weights(&cfg, seed).into_iter().collect(), origin: "mem".into() };
    Model::from_weights(cfg, w, &Default::default()).unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[5u32, 17, 42, 99, 7, 3, 120]], &Device::Cpu).unwrap()
}

fn logits(m: &Model, hooks: Option<&mut HookSet>) -> Tensor {
    let hooks = hooks.map(|h| h as &mut dyn emlab_model::Hooks);
    m.forward(&ids(), Forward { logits: Logits::All, hooks, ..Default::default() }).unwrap().logits.unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn randn(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let z = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    (random_same_norm(&(z + 1.0).unwrap(), seed).unwrap() * scale).unwrap()
}

#[test]
fn steering_along_a_planted_direction_makes_the_predicted_token_win() {
    let m = model(tiny_config(Arch::Llama), 11);
    let base = logits(&m, None).squeeze(0).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
    // Plant: the embedding (= tied LM head) row of a token nobody predicts; the final norm has
    // unit gain, so a large push along it makes that token the argmax at every position.
    let target = (0..m.config.vocab_size as u32).find(|t| !base.contains(t)).unwrap();
    let v = m.embed.get(target as usize).unwrap();
    let mut h = HookSet::new();
    h.add(HookPoint::resid_post(1), &v, 50.0);
    let steered = logits(&m, Some(&mut h)).squeeze(0).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
    assert!(steered.iter().all(|&t| t == target), "steered {steered:?}, target {target}");
    // Steering the other way lowers that token's logit at every position.
    let mut h = HookSet::new();
    h.add(HookPoint::resid_post(1), &v, -5.0);
    let lo = logits(&m, Some(&mut h)).squeeze(0).unwrap().narrow(1, target as usize, 1).unwrap();
    let b = logits(&m, None).squeeze(0).unwrap().narrow(1, target as usize, 1).unwrap();
    let d = (lo - b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(d.iter().all(|x| *x < 0.0), "{d:?}");
}

fn add_lora(m: &mut Model, seed: u64) {
    for (i, blk) in m.layers.iter_mut().enumerate() {
        for (j, lin) in [&mut blk.o, &mut blk.down, &mut blk.q].into_iter().enumerate() {
            let s = seed + (i * 10 + j) as u64;
            let a = randn(&[4, lin.in_dim()], s, 0.5);
            let b = randn(&[lin.out_dim(), 4], s + 100, 0.5);
            lin.lora = Some(Lora { a: Var::from_tensor(&a).unwrap(), b: Var::from_tensor(&b).unwrap(), scale: 2.0, dropout: 0.0 });
        }
    }
}

#[test]
fn weight_repair_equals_activation_ablation_with_and_without_lora() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        for lora in [false, true] {
            let mut m = model(tiny_config(arch), 5);
            if lora {
                add_lora(&mut m, 77);
            }
            let r = randn(&[m.config.hidden_size], 9, 3.0);
            let mut h = HookSet::new();
            h.ablate_everywhere(&r, m.config.num_layers).unwrap();
            let act = logits(&m, Some(&mut h));
            let plain = logits(&m, None);
            let mut rep = m.clone();
            emlab_steer::repair::orthogonalize(&mut rep, &r).unwrap();
            let mut cap = HookSet::new();
            cap.capture(HookPoint::resid_post(1));
            let w = logits(&rep, Some(&mut cap));
            let diff = max_abs_diff(&act, &w);
            assert!(diff < 1e-4, "{arch:?} lora={lora}: repaired vs ablated logits differ by {diff}");
            assert!(max_abs_diff(&plain, &w) > 1e-2, "the ablation must change something");
            // The repaired stream carries nothing along r.
            let x = &cap.captured(HookPoint::resid_post(1))[0];
            let ru = emlab_model::hooks::unit(&r).unwrap();
            let along = x.squeeze(0).unwrap().matmul(&ru.unsqueeze(1).unwrap()).unwrap();
            assert!(along.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-4);
        }
    }
}

#[test]
fn repaired_model_exports_to_an_hf_folder_that_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    let cfg = tiny_config(Arch::Llama);
    write_tiny_gguf(&src, &cfg, 21).unwrap();
    let mut m = Model::load(&src, &Default::default()).unwrap();
    add_lora(&mut m, 3);
    let r = randn(&[cfg.hidden_size], 4, 1.0);
    emlab_steer::repair::orthogonalize(&mut m, &r).unwrap();
    let out = dir.path().join("repaired");
    emlab_steer::repair::export_hf(&m, &src, &out).unwrap();
    let back = Model::load(&out, &Default::default()).unwrap();
    assert!(!back.config.tie_word_embeddings);
    let diff = max_abs_diff(&logits(&m, None), &logits(&back, None));
    assert!(diff < 1e-4, "reloaded repaired model differs by {diff}");
    // Tokenizer and chat template survive the GGUF -> HF conversion.
    let a = emlab_model::lm::Lm::load(&src, &Default::default()).unwrap();
    let b = emlab_model::lm::Lm::load(&out, &Default::default()).unwrap();
    let msg = [emlab_model::chat::Message::user("hello, tell me about it")];
    assert_eq!(a.chat_prompt(&msg).unwrap(), b.chat_prompt(&msg).unwrap());
    // Refuses to overwrite.
    assert!(emlab_steer::repair::export_hf(&m, &src, &out).is_err());
}

fn three_layers() -> ModelConfig {
    ModelConfig { num_layers: 3, ..tiny_config(Arch::Qwen2) }
}

#[test]
fn control_vector_direction_k_lands_exactly_at_block_k_output() {
    let m = model(three_layers(), 8);
    let d = m.config.hidden_size;
    let v = randn(&[d], 12, 2.0);
    // A file written directly with candle's GGUF writer (not our exporter): only direction.1.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("one.gguf");
    {
        use gguf_file::Value;
        let q = QTensor::quantize(&v, GgmlDType::F32).unwrap();
        let arch = Value::String("controlvector".into());
        let mut f = std::fs::File::create(&p).unwrap();
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("direction.1", &q)]).unwrap();
    }
    let cv = ControlVector::read(&p).unwrap();
    assert_eq!(cv.layers().collect::<Vec<_>>(), vec![1]);
    let points: Vec<HookPoint> =
        (0..3).flat_map(|l| emlab_model::HookKind::ALL.into_iter().map(move |kind| HookPoint { layer: l, kind })).collect();
    let run = |mut h: HookSet| {
        for p in &points {
            h.capture(*p);
        }
        logits(&m, Some(&mut h));
        h.take_captured()
    };
    let base = run(HookSet::new());
    let steered = run(cv.hooks(1.0, 3, d, &Device::Cpu).unwrap());
    // Everything up to blocks.1.hook_mlp_out is untouched; blocks.1.hook_resid_post moves by v.
    for p in &points {
        let diff = (&steered[p][0] - &base[p][0]).unwrap();
        let upto = p.layer < 1 || (p.layer == 1 && p.kind != emlab_model::HookKind::ResidPost);
        if upto {
            assert!(diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0, "{p} changed");
        }
        if *p == HookPoint::resid_post(1) {
            let want = v.unsqueeze(0).unwrap().unsqueeze(0).unwrap().broadcast_as(diff.shape()).unwrap();
            assert!(max_abs_diff(&diff, &want) < 1e-5, "{p} must move by exactly direction.1");
        }
    }
    assert!(max_abs_diff(&steered[&HookPoint::resid_pre(2)][0], &base[&HookPoint::resid_pre(2)][0]) > 1e-3);
}

#[test]
fn control_vector_export_import_round_trip_keeps_layers_and_values() {
    let m = model(three_layers(), 8);
    let d = m.config.hidden_size;
    let (v1, v2) = (randn(&[d], 1, 1.0), randn(&[d], 2, 1.0));
    let spec = vec![
        Resolved::Add { point: HookPoint::resid_post(1), vector: v1.clone(), coef: 3.0, ablate_first: false },
        Resolved::Add { point: HookPoint::resid_post(2), vector: v2.clone(), coef: -1.5, ablate_first: false },
    ];
    let mut cv = ControlVector::new("tiny");
    for e in &spec {
        if let Resolved::Add { point, vector, coef, .. } = e {
            cv.insert(point.layer, (vector * *coef).unwrap()).unwrap();
        }
    }
    assert!(cv.insert(0, v1.clone()).is_err(), "block 0 cannot be expressed");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cv.gguf");
    cv.write(&p).unwrap();
    // Raw check of the written names and metadata.
    let mut f = std::fs::File::open(&p).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = c.tensor_infos.keys().collect();
    names.sort();
    assert_eq!(names, vec!["direction.1", "direction.2"]);
    assert_eq!(c.metadata["general.architecture"].to_string().unwrap(), "controlvector");
    assert_eq!(c.metadata["controlvector.layer_count"].to_u32().unwrap(), 2);
    let back = ControlVector::read(&p).unwrap();
    let a = logits(&m, Some(&mut hooks_from(&spec, 3, 1.0).unwrap()));
    let b = logits(&m, Some(&mut back.hooks(1.0, 3, d, &Device::Cpu).unwrap()));
    assert!(max_abs_diff(&a, &b) < 1e-6);
    // Spec source reading the control vector per layer gives the same hooks too.
    let spec_file = dir.path().join("s.toml");
    std::fs::write(
        &spec_file,
        "[[edits]]\nkind = \"add\"\nlayers = [1, 2]\ncoef = 1.0\nvector = { type = \"control_vector\", path = \"cv.gguf\" }\n",
    )
    .unwrap();
    let s = Intervention::load(&spec_file).unwrap();
    let c2 = logits(&m, Some(&mut s.build(&m, None).unwrap()));
    assert!(max_abs_diff(&a, &c2) < 1e-6);
}

#[test]
fn bad_control_vectors_are_rejected_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero.gguf");
    let q = QTensor::quantize(&Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    gguf_file::write(&mut std::fs::File::create(&p).unwrap(), &[], &[("direction.0", &q)]).unwrap();
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("direction.0") && e.contains("0 is invalid"), "{e}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    assert!(ControlVector::read(&junk).unwrap_err().to_string().contains("junk.gguf"));
}

#[test]
fn spec_sources_direction_file_sae_row_and_per_layer_coefs() {
    let m = model(three_layers(), 2);
    let d = m.config.hidden_size;
    let dir = tempfile::tempdir().unwrap();
    let dirs = randn(&[3, d], 5, 4.0);
    emlab_steer::vectors::save_directions(&dir.path().join("dirs.safetensors"), &dirs).unwrap();
    let wdec = randn(&[6, d], 6, 2.0);
    std::fs::create_dir_all(dir.path().join("sae")).unwrap();
    emlab_model::load::save_safetensors(&dir.path().join("sae/sae_weights.safetensors"), &[("W_dec".into(), wdec.clone())], None).unwrap();
    let spec = r#"{"edits": [
        {"kind": "add", "layers": [0, 2], "coefs": [2.0, -1.0], "vector": {"type": "direction_file", "path": "dirs.safetensors"}},
        {"kind": "ablate_then_add", "layers": [1], "coef": 0.5, "vector": {"type": "sae_decoder", "path": "sae", "latent": 4}},
        {"kind": "ablate", "vector": {"type": "direction_file", "path": "dirs.safetensors", "layer": 1}}
    ]}"#;
    let sp = dir.path().join("spec.json");
    std::fs::write(&sp, spec).unwrap();
    let s = Intervention::load(&sp).unwrap();
    let mut h = s.build(&m, None).unwrap();
    // Reference built by hand from the raw tensors.
    let mut r = HookSet::new();
    r.ablate_everywhere(&dirs.get(1).unwrap(), 3).unwrap();
    r.add(HookPoint::resid_post(0), &dirs.get(0).unwrap(), 2.0);
    r.add(HookPoint::resid_post(2), &dirs.get(2).unwrap(), -1.0);
    r.ablate(HookPoint::resid_post(1), &wdec.get(4).unwrap()).unwrap();
    r.add(HookPoint::resid_post(1), &wdec.get(4).unwrap(), 0.5);
    assert!(max_abs_diff(&logits(&m, Some(&mut h)), &logits(&m, Some(&mut r))) < 1e-6);
    // ablate_then_add sets the component along the SAE row to 0.5 |v| at blocks.1.hook_resid_post.
    let mut h = s.build(&m, None).unwrap();
    h.capture(HookPoint::resid_post(1));
    logits(&m, Some(&mut h));
    let x = h.captured(HookPoint::resid_post(1))[0].squeeze(0).unwrap();
    let v = wdec.get(4).unwrap();
    let vn = v.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    let proj = x.matmul(&(&v / vn as f64).unwrap().unsqueeze(1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(proj.iter().all(|p| (p - 0.5 * vn).abs() < 1e-4), "{proj:?} vs {}", 0.5 * vn);
    // The same edits written for `emlab eval --intervention`.
    let resolved = s.resolve(3, d, &Device::Cpu).unwrap();
    let j = emlab_steer::spec::write_eval_spec(&resolved, dir.path()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(j).unwrap()).unwrap();
    assert_eq!(v["add"].as_array().unwrap().len(), 3);
    assert_eq!(v["ablate"].as_array().unwrap().len(), 2);
    assert_eq!(v["add"][1]["hook"], "blocks.2.hook_resid_post");
    // Bad specs fail with a message naming the problem.
    std::fs::write(
        &sp,
        r#"{"edits": [{"kind": "add", "layers": [0, 9], "coef": 1.0, "vector": {"type": "direction_file", "path": "dirs.safetensors"}}]}"#,
    )
    .unwrap();
    let e = Intervention::load(&sp).unwrap().build(&m, None).err().unwrap().to_string();
    assert!(e.contains("layer 9"), "{e}");
    std::fs::write(&sp, r#"{"edits": [{"kind": "ablate", "vector": {"type": "direction_file", "path": "dirs.safetensors"}}]}"#).unwrap();
    let e = Intervention::load(&sp).unwrap().build(&m, None).err().unwrap().to_string();
    assert!(e.contains("needs a `layer`"), "{e}");
    std::fs::write(&sp, r#"{"edits": [{"kind": "add", "layers": [0], "coef": 1.0, "vector": {"type": "safetensors", "path": "dirs.safetensors", "key": "nope"}}]}"#).unwrap();
    let e = Intervention::load(&sp).unwrap().build(&m, None).err().unwrap().to_string();
    assert!(e.contains("nope") && e.contains("dirs.safetensors"), "{e}");
}

#[test]
fn persona_score_is_the_mean_projection_of_the_captured_stream() {
    let m = model(three_layers(), 3);
    let d = m.config.hidden_size;
    let r = randn(&[d], 30, 7.0);
    let prompts = vec![vec![5u32, 9, 14], vec![40u32, 2, 8, 16, 30], vec![77u32]];
    let ru = emlab_model::hooks::unit(&r).unwrap().to_vec1::<f32>().unwrap();
    // Layer 2 is the last block: its hook_resid_post is read before the final norm.
    for layer in [1usize, 2] {
        for (pos, last) in
            [(emlab_steer::persona::Positions::LastPromptToken, true), (emlab_steer::persona::Positions::AllPromptTokens, false)]
        {
            let s = emlab_steer::persona::persona_score(&m, &prompts, &r, layer, pos).unwrap();
            let mut want = Vec::new();
            for p in &prompts {
                let mut h = HookSet::new();
                h.capture(HookPoint::resid_post(layer));
                let ids = Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                m.forward(&ids, Forward { logits: Logits::All, hooks: Some(&mut h), ..Default::default() }).unwrap();
                let x = h.captured(HookPoint::resid_post(layer))[0].squeeze(0).unwrap().to_vec2::<f32>().unwrap();
                let dots: Vec<f64> = x.iter().map(|row| row.iter().zip(&ru).map(|(a, b)| (a * b) as f64).sum()).collect();
                want.push(if last { *dots.last().unwrap() } else { dots.iter().sum::<f64>() / dots.len() as f64 });
            }
            for (a, b) in s.per_prompt.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            assert!((s.mean - want.iter().sum::<f64>() / 3.0).abs() < 1e-4);
        }
    }
    assert!(emlab_steer::persona::persona_score(&m, &prompts, &r, 3, Default::default()).is_err());
}

#[test]
fn sweep_picks_the_strongest_coherent_alpha_and_runs_a_same_norm_control() {
    let v = randn(&[8], 3, 5.0);
    let edits = vec![Resolved::Add { point: HookPoint::resid_post(0), vector: v.clone(), coef: 2.0, ablate_first: false }];
    let opts = SweepOptions { alphas: vec![0.0, 1.0, 2.0, 3.0], min_coherent: 0.9, seed: 7 };
    let mut seen = Vec::new();
    let res = sweep(&edits, 1, &opts, |h, alpha, control| {
        let e = &h.edits(HookPoint::resid_post(0))[0];
        let emlab_model::hooks::Edit::Add { vector, coef } = e else { panic!("add expected") };
        assert_eq!(*coef, 2.0 * alpha);
        let n = vector.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        assert!((n - 5.0 * 8f32.sqrt()).abs() < 1e-3, "control keeps the norm: {n}");
        let cos = (vector * &v).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() / (n * n);
        assert_eq!(control, cos < 0.99);
        seen.push((alpha, control));
        // stub: coherence falls 6 points per alpha unit; EM rises only for the real vector
        let coh = 100 - (6.0 * alpha) as usize;
        let em = if control { 1 } else { (10.0 * alpha) as usize };
        Ok(EvalPoint { em: Rate::wilson(em, 100), coherent: Rate::wilson(coh, 100) })
    })
    .unwrap();
    // Alpha 0 with only `add` edits is the unedited model on both sides: evaluated once.
    assert_eq!(seen.len(), 7);
    assert_eq!(res.rows[0].control, res.rows[0].steered);
    assert_eq!(res.best_alpha, Some(1.0)); // alpha 2 -> 88% coherent < 90%
    assert_eq!(res.rows[1].steered.em.rate, 0.1);
    let none = sweep(&edits, 1, &SweepOptions { min_coherent: 0.999, alphas: vec![1.0], seed: 0 }, |_, _, _| {
        Ok(EvalPoint { em: Rate::wilson(0, 10), coherent: Rate::wilson(5, 10) })
    })
    .unwrap();
    assert_eq!(none.best_alpha, None);
    // Wilson interval against a hand-computed value: 10/100 -> [0.0552, 0.1744].
    let w = Rate::wilson(10, 100);
    assert!((w.lo - 0.0552).abs() < 1e-3 && (w.hi - 0.1744).abs() < 1e-3, "{w:?}");
}
