//! The model runtime on tiny random models the tests write themselves: loading from both
//! formats, the KV cache, batch invariance of sampling, hooks, gradients, bad input.
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var, D};
use emlab_model::generate::{generate, Request, SamplingParams};
use emlab_model::hooks::{HookKind, HookPoint, HookSet};
use emlab_model::load::Weights;
use emlab_model::model::{masked_cross_entropy, Lora};
use emlab_model::testing::*;
use emlab_model::{Arch, Forward, Logits, Model, Proj, SeqCache};
use std::path::Path;

fn direct(arch: Arch, seed: u64) -> Model {
    let cfg = tiny_config(arch);
    let w = Weights { tensors: random_weights(&cfg, seed).into_iter().collect(), origin: "mem".into() };
    Model::from_weights(cfg, w, &Default::default()).unwrap()
}

fn ids(v: &[&[u32]]) -> Tensor {
    let t = v[0].len();
    let flat: Vec<u32> = v.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (v.len(), t), &Device::Cpu).unwrap()
}

fn logits(m: &Model, x: &Tensor) -> Vec<f32> {
    m.forward(x, Forward::default()).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn gguf_and_hf_sources_give_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen2] {
        let cfg = tiny_config(arch);
        let reference = direct(arch, 3);
        let x = ids(&[&[5, 70, 80, 90, 100, 7]]);
        let want = logits(&reference, &x);
        // GGUF (llama: q/k rows are permuted on disk and must be un-permuted at load).
        let g = dir.path().join(format!("{arch:?}.gguf"));
        write_tiny_gguf(&g, &cfg, 3).unwrap();
        let m = Model::load(&g, &Default::default()).unwrap();
        assert_eq!(m.config, cfg);
        assert!(max_rel(&logits(&m, &x), &want) < 1e-6, "{arch:?} gguf");
        // HF folder, single file and sharded.
        for sharded in [false, true] {
            let d = dir.path().join(format!("{arch:?}-{sharded}"));
            write_tiny_hf(&d, &cfg, 3, sharded).unwrap();
            let m = Model::load(&d, &Default::default()).unwrap();
            assert_eq!(m.config, cfg);
            assert!(max_rel(&logits(&m, &x), &want) < 1e-6, "{arch:?} hf sharded={sharded}");
        }
    }
}

#[test]
fn quantized_gguf_weights_load_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Qwen2);
    let w = random_weights(&cfg, 9);
    let x = ids(&[&[5, 70, 80, 90]]);
    let want = logits(&direct(Arch::Qwen2, 9), &x);
    for (dt, tol) in [(GgmlDType::Q8_0, 0.02), (GgmlDType::F16, 0.002)] {
        let p = dir.path().join(format!("{dt:?}.gguf"));
        write_gguf_model(&p, &cfg, &w, dt).unwrap();
        let m = Model::load(&p, &Default::default()).unwrap();
        let e = max_rel(&logits(&m, &x), &want);
        assert!(e < tol && e > 0.0, "{dt:?}: rel err {e}");
    }
}

#[test]
fn kv_cache_matches_full_forward() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = direct(arch, 4);
        let seq: Vec<u32> = vec![3, 50, 60, 61, 62, 200, 7, 8];
        let full = m.forward(&ids(&[&seq]), Forward::default()).unwrap().logits.unwrap();
        let mut cache = vec![SeqCache::new(2)];
        // prefill 5, then 1, then 2 at once (a continued conversation).
        let mut got = Vec::new();
        for (s, e) in [(0, 5), (5, 6), (6, 8)] {
            let out = m.forward(&ids(&[&seq[s..e]]), Forward { cache: Some(&mut cache), ..Default::default() }).unwrap();
            got.push(out.logits.unwrap());
        }
        let got = Tensor::cat(&got, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = full.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_rel(&got, &want) < 1e-5, "{arch:?}: {}", max_rel(&got, &want));
        assert_eq!(cache[0].len, 8);
    }
}

#[test]
fn samples_do_not_depend_on_batch_composition() {
    let m = direct(Arch::Llama, 5);
    let prompts: Vec<Vec<u32>> = (0..10).map(|i| (0..(2 + i * 3) as u32).map(|j| 3 + (j * 7 + i as u32) % 250).collect()).collect();
    let reqs: Vec<Request> = prompts.iter().enumerate().map(|(i, p)| Request { prompt: p.clone(), seed: 100 + i as u64 }).collect();
    let mut params = SamplingParams { temperature: 1.0, top_p: 0.95, top_k: 40, max_new_tokens: 12, batch_size: 1 };
    let alone = generate(&m, &reqs, &params, &[2], None, &mut |_, _| {}).unwrap();
    params.batch_size = 4;
    let batched = generate(&m, &reqs, &params, &[2], None, &mut |_, _| {}).unwrap();
    // A different neighbour set: the same request 7 among others.
    let mixed = generate(&m, &[reqs[7].clone(), reqs[1].clone(), reqs[3].clone()], &params, &[2], None, &mut |_, _| {}).unwrap();
    for i in 0..reqs.len() {
        assert_eq!(alone[i].tokens, batched[i].tokens, "request {i}");
    }
    assert_eq!(mixed[0].tokens, alone[7].tokens);
    // Different seeds give different samples (the draw really is random).
    let distinct: std::collections::HashSet<_> = alone.iter().map(|g| g.tokens.clone()).collect();
    assert!(distinct.len() > 5);
}

#[test]
fn greedy_generation_equals_argmax_of_full_forward() {
    let m = direct(Arch::Qwen2, 6);
    let prompt = vec![5u32, 17, 99, 4];
    let g = generate(&m, &[Request { prompt: prompt.clone(), seed: 0 }], &SamplingParams::greedy(6), &[], None, &mut |_, _| {}).unwrap();
    let mut seq = prompt.clone();
    for _ in 0..6 {
        let l = m.forward(&ids(&[&seq]), Forward { logits: Logits::Last, ..Default::default() }).unwrap().logits.unwrap();
        let next = l.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0];
        seq.push(next);
    }
    assert_eq!(g[0].tokens, seq[prompt.len()..]);
}

#[test]
fn stop_tokens_and_max_tokens_end_sequences() {
    let m = direct(Arch::Llama, 6);
    let prompt = vec![5u32, 17, 99, 4];
    let free = generate(&m, &[Request { prompt: prompt.clone(), seed: 0 }], &SamplingParams::greedy(5), &[], None, &mut |_, _| {}).unwrap();
    assert_eq!(free[0].tokens.len(), 5);
    assert_eq!(free[0].finish, emlab_model::generate::Finish::Length);
    // Make the third greedy token a stop token: generation ends before it.
    let stop = free[0].tokens[2];
    let first = free[0].tokens.iter().position(|&t| t == stop).unwrap();
    let s = generate(&m, &[Request { prompt, seed: 0 }], &SamplingParams::greedy(5), &[stop], None, &mut |_, _| {}).unwrap();
    assert_eq!(s[0].tokens, free[0].tokens[..first]);
    assert_eq!(s[0].finish, emlab_model::generate::Finish::Stop);
}

#[test]
fn ablation_removes_exactly_the_projection_everywhere() {
    let m = direct(Arch::Llama, 7);
    let d = m.config.hidden_size;
    let dir = Tensor::from_vec((0..d).map(|i| (i as f32 * 0.3).cos()).collect::<Vec<_>>(), d, &Device::Cpu).unwrap();
    let unit = emlab_model::hooks::unit(&dir).unwrap();
    let mut hs = HookSet::new();
    hs.ablate_everywhere(&dir, m.config.num_layers).unwrap();
    for l in 0..m.config.num_layers {
        hs.capture(HookPoint::resid_post(l));
        hs.capture(HookPoint { layer: l, kind: HookKind::ResidMid });
    }
    let x = ids(&[&[5, 70, 80, 90, 3]]);
    m.forward(&x, Forward { hooks: Some(&mut hs), ..Default::default() }).unwrap();
    let mut checked = 0;
    for (_, caps) in hs.take_captured() {
        for c in caps {
            let p = c.broadcast_mul(&unit).unwrap().sum(D::Minus1).unwrap().abs().unwrap().max_all().unwrap();
            let norm = c.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(p.to_scalar::<f32>().unwrap() < 1e-5 * norm.max(1.0));
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * m.config.num_layers);
    // Without the ablation the stream does carry a component along the direction.
    let mut plain = HookSet::new();
    plain.capture(HookPoint::resid_post(1));
    m.forward(&x, Forward { hooks: Some(&mut plain), ..Default::default() }).unwrap();
    let c = &plain.captured(HookPoint::resid_post(1))[0];
    let p = c.broadcast_mul(&unit).unwrap().sum(D::Minus1).unwrap().abs().unwrap().max_all().unwrap();
    assert!(p.to_scalar::<f32>().unwrap() > 1e-2);
}

#[test]
fn steering_adds_the_vector_with_its_coefficient() {
    let m = direct(Arch::Qwen2, 8);
    let d = m.config.hidden_size;
    let v = Tensor::from_vec((0..d).map(|i| if i == 3 { 1.0f32 } else { 0.0 }).collect::<Vec<_>>(), d, &Device::Cpu).unwrap();
    let x = ids(&[&[5, 70, 80]]);
    let p = HookPoint::resid_post(0);
    let mut base = HookSet::new();
    base.capture(p);
    m.forward(&x, Forward { hooks: Some(&mut base), ..Default::default() }).unwrap();
    let mut hs = HookSet::new();
    hs.add(p, &v, 2.5);
    // Edits alone may be replayed from a CUDA graph; a set that also captures may not.
    assert!(emlab_model::Hooks::graph_safe(&hs));
    hs.capture(p);
    assert!(!emlab_model::Hooks::graph_safe(&hs));
    m.forward(&x, Forward { hooks: Some(&mut hs), ..Default::default() }).unwrap();
    let diff = (&hs.captured(p)[0] - &base.captured(p)[0]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, x) in diff.iter().enumerate() {
        let want = if i % d == 3 { 2.5 } else { 0.0 };
        assert!((x - want).abs() < 1e-5, "element {i}: {x}");
    }
    // Steering changes the output; the layer-1 capture sees the change propagate.
    let l0 = logits(&m, &x);
    let mut hs2 = HookSet::new();
    hs2.add(p, &v, 2.5);
    let l1 = m.forward(&x, Forward { hooks: Some(&mut hs2), ..Default::default() }).unwrap().logits.unwrap();
    assert!(max_rel(&l1.flatten_all().unwrap().to_vec1().unwrap(), &l0) > 1e-3);
}

/// Finite differences on the tiny model: the gradient of the masked loss with respect to a
/// LoRA matrix and to a norm weight agrees with central differences.
#[test]
fn gradients_match_finite_differences() {
    let mut m = direct(Arch::Qwen2, 10);
    let (r, din, dout) = (2, m.config.hidden_size, m.config.intermediate_size);
    let a = Var::from_tensor(&Tensor::randn(0f32, 0.3, (r, din), &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, (dout, r), &Device::Cpu).unwrap()).unwrap();
    m.layers[1].proj_mut(Proj::Up).lora = Some(Lora { a: a.clone(), b: b.clone(), scale: 2.0, dropout: 0.0 });
    let x = ids(&[&[5, 70, 80, 90, 3, 9], &[7, 7, 11, 12, 0, 0]]);
    let tgt = ids(&[&[70, 80, 90, 3, 9, 1], &[7, 11, 12, 40, 0, 0]]);
    let mask = Tensor::new(&[[0f32, 1., 1., 1., 1., 1.], [1., 1., 1., 0., 0., 0.]], &Device::Cpu).unwrap();
    let loss = |m: &Model| -> Tensor {
        let l = m.forward(&x, Forward::default()).unwrap().logits.unwrap();
        masked_cross_entropy(&l, &tgt, &mask).unwrap()
    };
    let grads = loss(&m).backward().unwrap();
    for (name, var) in [("lora_a", &a), ("lora_b", &b)] {
        let g = grads.get(var.as_tensor()).expect("gradient present").flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().any(|x| x.abs() > 1e-6), "{name} has a non-zero gradient");
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for idx in [0usize, 3, base.len() - 1] {
            let eps = 1e-2f32;
            let mut plus = base.clone();
            plus[idx] += eps;
            var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu).unwrap()).unwrap();
            let lp = loss(&m).to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            let mut minus = base.clone();
            minus[idx] -= eps;
            var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu).unwrap()).unwrap();
            let lm = loss(&m).to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let fd = (lp - lm) / (2.0 * eps as f64);
            let an = g[idx] as f64;
            assert!((fd - an).abs() < 2e-3 + 0.02 * an.abs(), "{name}[{idx}]: analytic {an} vs finite diff {fd}");
        }
    }
}

fn err_of(path: &Path) -> String {
    match Model::load(path, &Default::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let good = dir.path().join("good.gguf");
    write_tiny_gguf(&good, &cfg, 1).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // Truncated: header intact, tensor data cut.
    let trunc = dir.path().join("trunc.gguf");
    std::fs::write(&trunc, &bytes[..bytes.len() - 1000]).unwrap();
    let e = err_of(&trunc);
    assert!(e.contains("trunc.gguf") && e.contains("tensor"), "{e}");
    // Truncated inside the header.
    let hdr = dir.path().join("hdr.gguf");
    std::fs::write(&hdr, &bytes[..200]).unwrap();
    assert!(err_of(&hdr).contains("hdr.gguf"));
    // Not a GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let e = err_of(&junk);
    assert!(e.contains("junk.gguf") && e.contains("GGUF"), "{e}");
    // Unknown architecture.
    let mut c2 = cfg.clone();
    c2.arch = Arch::Qwen2;
    let w = random_weights(&cfg, 1);
    let gp = dir.path().join("arch.gguf");
    write_gguf_model(&gp, &c2, &w, GgmlDType::F32).unwrap();
    let mut b = std::fs::read(&gp).unwrap();
    let pos = b.windows(5).position(|s| s == b"qwen2").unwrap();
    b[pos..pos + 5].copy_from_slice(b"gpt9x");
    std::fs::write(&gp, &b).unwrap();
    let e = err_of(&gp);
    assert!(e.contains("unsupported architecture `gpt9x`"), "{e}");
    // Missing file.
    assert!(err_of(&dir.path().join("nope.gguf")).contains("no such file"));
    // HF folder problems: no config, bad config, corrupt safetensors, missing tensor.
    let hf = dir.path().join("hf");
    write_tiny_hf(&hf, &cfg, 1, false).unwrap();
    std::fs::write(hf.join("model.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}").unwrap();
    let e = err_of(&hf);
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");
    std::fs::write(hf.join("config.json"), b"{\"model_type\": \"bert\"}").unwrap();
    assert!(err_of(&hf).contains("config.json"));
    std::fs::remove_file(hf.join("config.json")).unwrap();
    assert!(err_of(&hf).contains("no config.json"));
    let hf2 = dir.path().join("hf2");
    let mut w2 = random_weights(&cfg, 1);
    w2.remove("model.layers.1.mlp.up_proj.weight");
    write_hf_model(&hf2, &cfg, &w2, false).unwrap();
    let e = err_of(&hf2);
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"), "{e}");
    // An unknown tensor type id in the header (e.g. a type newer than emlab knows).
    let mut b = bytes.clone();
    let name = b"blk.0.ffn_up.weight";
    let at = b.windows(name.len()).position(|s| s == name).unwrap() + name.len();
    // after the name: n_dims (u32) + 2 dims (u64 each), then the type (u32)
    let ty = at + 4 + 16;
    b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    let unk = dir.path().join("unktype.gguf");
    std::fs::write(&unk, &b).unwrap();
    let e = err_of(&unk);
    assert!(e.contains("unktype.gguf") && e.contains("99"), "{e}");
    // A GGUF without tokenizer metadata: the model loads, the tokenizer does not.
    let notok = dir.path().join("notok.gguf");
    let mut nb = bytes.clone();
    let key = b"tokenizer.ggml.tokens";
    let kp = nb.windows(key.len()).position(|s| s == key).unwrap();
    nb[kp..kp + 9].copy_from_slice(b"xokenizer");
    std::fs::write(&notok, &nb).unwrap();
    assert!(Model::load(&notok, &Default::default()).is_ok());
    let e = emlab_model::lm::Lm::load(&notok, &Default::default()).err().expect("no tokenizer").to_string();
    assert!(e.contains("notok.gguf") && e.contains("tokenizer"), "{e}");
    // An HF folder whose tokenizer is missing, or larger than the model's vocabulary.
    let hf3 = dir.path().join("hf3");
    write_tiny_hf(&hf3, &cfg, 1, false).unwrap();
    std::fs::remove_file(hf3.join("tokenizer.json")).unwrap();
    let e = emlab_model::lm::Lm::load(&hf3, &Default::default()).err().expect("no tokenizer.json").to_string();
    assert!(e.contains("tokenizer"), "{e}");
    let hf4 = dir.path().join("hf4");
    let mut small = cfg.clone();
    small.vocab_size = 100;
    let mut w4 = random_weights(&small, 1);
    w4.insert("model.embed_tokens.weight".into(), Tensor::zeros((100, small.hidden_size), DType::F32, &Device::Cpu).unwrap());
    write_hf_model(&hf4, &small, &w4, false).unwrap();
    let e = emlab_model::lm::Lm::load(&hf4, &Default::default()).err().expect("vocab mismatch").to_string();
    assert!(e.contains("100 rows"), "{e}");
    for e in [err_of(&trunc), err_of(&junk), err_of(&hf2), err_of(&unk)] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn masked_capture_keeps_only_selected_positions() {
    let m = direct(Arch::Llama, 11);
    let x = ids(&[&[5, 70, 80, 90], &[6, 71, 81, 91]]);
    let p = HookPoint::resid_post(1);
    let mut full = HookSet::new();
    full.capture(p);
    m.forward(&x, Forward { hooks: Some(&mut full), ..Default::default() }).unwrap();
    let mut masked = HookSet::new();
    masked.capture(p);
    let mask = Tensor::new(&[[0f32, 0., 1., 1.], [0., 1., 0., 0.]], &Device::Cpu).unwrap();
    masked.set_token_mask(Some(&mask)).unwrap();
    m.forward(&x, Forward { hooks: Some(&mut masked), ..Default::default() }).unwrap();
    let f = full.captured(p)[0].to_vec3::<f32>().unwrap();
    let g = masked.captured(p)[0].to_vec2::<f32>().unwrap();
    assert_eq!(g.len(), 3);
    assert_eq!(g[0], f[0][2]);
    assert_eq!(g[1], f[0][3]);
    assert_eq!(g[2], f[1][1]);
}
