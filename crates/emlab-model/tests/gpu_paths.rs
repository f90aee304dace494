//! The paths a GPU runs, tested on the CPU: under `ops::with_portable` every CPU-only kernel
//! (fused ops with hand-written backwards, the int8 gemv, the host-side cached attention) is
//! replaced by candle ops, exactly as on a CUDA device; these tests check that the model's
//! numbers do not change (forward, LoRA gradients, cached decoding, sampling), and that a bf16
//! base with f32 adapters (the GPU's dtype plan) runs, trains and decodes.
use candle_core::{DType, Device, Tensor, Var};
use emlab_model::generate::{generate, Request, SamplingParams};
use emlab_model::load::Weights;
use emlab_model::model::{masked_cross_entropy, LoadOptions, Lora};
use emlab_model::ops::with_portable;
use emlab_model::testing::*;
use emlab_model::{Arch, Forward, Logits, Model, Proj, SeqCache};

fn model(arch: Arch, seed: u64, dtype: Option<DType>) -> Model {
    let cfg = tiny_config(arch);
    let w = Weights { tensors: random_weights(&cfg, seed).into_iter().collect(), origin: "mem".into() };
    Model::from_weights(cfg, w, &LoadOptions { dtype, ..Default::default() }).unwrap()
}

fn ids(v: &[&[u32]]) -> Tensor {
    let t = v[0].len();
    let flat: Vec<u32> = v.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (v.len(), t), &Device::Cpu).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Deterministic values in [-amp, amp) (an LCG: the same on every call with the same seed).
fn det(shape: (usize, usize), seed: u64, amp: f32) -> Tensor {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Attaches f32 LoRA adapters (non-zero A and B) to every projection of layers 0 and 1.
fn attach(m: &mut Model, seed: u64) -> Vec<Var> {
    let mut vars = Vec::new();
    for layer in 0..2 {
        for (pi, p) in Proj::ALL.into_iter().enumerate() {
            let l = m.layers[layer].proj_mut(p);
            let (din, dout) = (l.in_dim(), l.out_dim());
            let k = seed + (layer * 7 + pi) as u64 * 2;
            let a = Var::from_tensor(&det((4, din), k, 0.5)).unwrap();
            let b = Var::from_tensor(&det((dout, 4), k + 1, 0.3)).unwrap();
            l.lora = Some(Lora { a: a.clone(), b: b.clone(), scale: 0.5, dropout: 0.0 });
            vars.push(a);
            vars.push(b);
        }
    }
    vars
}

/// Logits, loss and every adapter gradient of one masked-loss step.
fn step(m: &Model, vars: &[Var]) -> (Vec<f32>, f32, Vec<Vec<f32>>) {
    let x = ids(&[&[5, 70, 80, 90, 3, 9, 11], &[7, 7, 11, 12, 40, 0, 0]]);
    let tgt = ids(&[&[70, 80, 90, 3, 9, 11, 2], &[7, 11, 12, 40, 2, 0, 0]]);
    let mask = Tensor::new(&[[0f32, 1., 1., 1., 1., 1., 1.], [1., 1., 1., 1., 0., 0., 0.]], &Device::Cpu).unwrap();
    let logits = m.forward(&x, Forward::default()).unwrap().logits.unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    let loss = masked_cross_entropy(&logits, &tgt, &mask).unwrap();
    let g = loss.backward().unwrap();
    let grads = vars.iter().map(|v| vec(g.get(v.as_tensor()).expect("every adapter gets a gradient"))).collect();
    (vec(&logits), loss.to_scalar::<f32>().unwrap(), grads)
}

#[test]
fn portable_forward_and_lora_gradients_match_the_cpu_kernels() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let mut m = model(arch, 5, None);
        let vars = attach(&mut m, 40);
        let (lf, lossf, gf) = step(&m, &vars);
        let (lp, lossp, gp) = with_portable(|| step(&m, &vars));
        assert!(max_rel(&lp, &lf) < 1e-5, "{arch:?} logits differ by {}", max_rel(&lp, &lf));
        assert!(((lossp - lossf) / lossf).abs() < 1e-5, "{arch:?} loss {lossp} vs {lossf}");
        for (i, (a, b)) in gp.iter().zip(&gf).enumerate() {
            assert!(b.iter().any(|v| v.abs() > 1e-6), "{arch:?} gradient {i} is zero");
            assert!(max_rel(a, b) < 1e-5, "{arch:?} gradient {i} differs by {}", max_rel(a, b));
        }
    }
}

/// Prefill two rows of different lengths one at a time, then decode them together (caches of
/// different lengths), then continue row 0 by three tokens at once (the masked multi-token case).
fn cached_logits(m: &Model) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut caches = vec![SeqCache::new(m.config.num_layers), SeqCache::new(m.config.num_layers)];
    for (i, p) in [&[3u32, 50, 60, 61][..], &[9, 8]].iter().enumerate() {
        let f = Forward { logits: Logits::Last, cache: Some(&mut caches[i..i + 1]), ..Default::default() };
        out.push(vec(&m.forward(&ids(&[p]), f).unwrap().logits.unwrap()));
    }
    for tok in [[62u32, 10], [200, 11]] {
        let f = Forward { logits: Logits::Last, cache: Some(&mut caches), ..Default::default() };
        out.push(vec(&m.forward(&ids(&[&[tok[0]], &[tok[1]]]), f).unwrap().logits.unwrap()));
    }
    let f = Forward { logits: Logits::All, cache: Some(&mut caches[0..1]), ..Default::default() };
    out.push(vec(&m.forward(&ids(&[&[7, 8, 1]]), f).unwrap().logits.unwrap()));
    out
}

#[test]
fn portable_cached_attention_matches_the_cpu_kernel_and_the_full_forward() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = model(arch, 6, None);
        let kernel = cached_logits(&m);
        let portable = with_portable(|| cached_logits(&m));
        for (i, (a, b)) in portable.iter().zip(&kernel).enumerate() {
            assert!(max_rel(a, b) < 1e-5, "{arch:?} step {i} differs by {}", max_rel(a, b));
        }
        // And both equal an uncached forward over the whole of row 0.
        let full = m.forward(&ids(&[&[3, 50, 60, 61, 62, 200, 7, 8, 1]]), Forward::default()).unwrap().logits.unwrap();
        let last3 = vec(&full.narrow(1, 6, 3).unwrap());
        assert!(max_rel(&portable[4], &last3) < 1e-5, "{arch:?}: portable cache vs full forward {}", max_rel(&portable[4], &last3));
        // A cache filled on one path is refused by the other, not silently mixed.
        let mut c = vec![SeqCache::new(m.config.num_layers)];
        m.forward(&ids(&[&[3, 4]]), Forward { logits: Logits::Last, cache: Some(&mut c), ..Default::default() }).unwrap();
        let e = with_portable(|| m.forward(&ids(&[&[5]]), Forward { logits: Logits::Last, cache: Some(&mut c), ..Default::default() }));
        assert!(e.err().unwrap().to_string().contains("other attention path"));
    }
}

#[test]
fn portable_sampling_gives_the_same_tokens() {
    let m = model(Arch::Qwen2, 7, None);
    let reqs: Vec<Request> = [&[5u32, 6, 7][..], &[9], &[100, 101, 102, 103, 104], &[4, 4]]
        .iter()
        .enumerate()
        .map(|(i, p)| Request { prompt: p.to_vec(), seed: i as u64 })
        .collect();
    for params in [
        SamplingParams { max_new_tokens: 6, batch_size: 2, ..SamplingParams::greedy(6) },
        SamplingParams { temperature: 1.0, max_new_tokens: 6, batch_size: 3, ..Default::default() },
    ] {
        let a = generate(&m, &reqs, &params, &[], None, &mut |_, _| {}).unwrap();
        let b = with_portable(|| generate(&m, &reqs, &params, &[], None, &mut |_, _| {})).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.tokens, y.tokens);
            assert_eq!(x.tokens.len(), 6);
        }
    }
}

/// The GPU's dtype plan on the CPU: bf16 base (weights, activations, KV cache), f32 adapters,
/// f32 logits and loss. Values stay within bf16 rounding of the f32 model; gradients reach
/// the f32 adapters; cached decoding agrees with the uncached forward.
#[test]
fn bf16_base_with_f32_adapters_runs_trains_and_decodes() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let mut m32 = model(arch, 8, None);
        let mut m16 = model(arch, 8, Some(DType::BF16));
        assert_eq!(m16.embed.dtype(), DType::BF16);
        assert_eq!(m16.layers[0].q.weight.dtype(), DType::BF16);
        let v32 = attach(&mut m32, 50);
        let v16 = attach(&mut m16, 50);
        let (l32, loss32, g32) = step(&m32, &v32);
        let (l16, loss16, g16) = step(&m16, &v16);
        assert!(max_rel(&l16, &l32) < 0.05, "{arch:?} bf16 logits off by {}", max_rel(&l16, &l32));
        assert!(((loss16 - loss32) / loss32).abs() < 0.02, "{arch:?} loss {loss16} vs {loss32}");
        for (i, (a, b)) in g16.iter().zip(&g32).enumerate() {
            assert!(max_rel(a, b) < 0.1, "{arch:?} gradient {i} off by {}", max_rel(a, b));
        }
        assert!(v16.iter().all(|v| v.dtype() == DType::F32));
        // Cached decoding (device-side cache, as on a GPU) against the uncached bf16 forward.
        let m = model(arch, 9, Some(DType::BF16));
        let cached = cached_logits(&m);
        let full = m.forward(&ids(&[&[3, 50, 60, 61, 62, 200, 7, 8, 1]]), Forward::default()).unwrap().logits.unwrap();
        let last3 = vec(&full.narrow(1, 6, 3).unwrap());
        assert!(max_rel(&cached[4], &last3) < 0.05, "{arch:?} bf16 cache vs full {}", max_rel(&cached[4], &last3));
        let g = generate(&m, &[Request { prompt: vec![5, 6], seed: 1 }], &SamplingParams::greedy(4), &[], None, &mut |_, _| {}).unwrap();
        assert_eq!(g[0].tokens.len(), 4);
    }
}

/// The batched device cache (GPU decoding): three left-padded prompts of different lengths
/// prefilled in one call, then two decode steps for all rows, then a row dropped. Every row's
/// logits equal an uncached forward over that row alone (padding and neighbours invisible).
#[test]
fn batch_cache_logits_equal_each_rows_uncached_forward() {
    // Decode steps through `emlab_model::decode`'s ops (the default), then the composed path.
    for arch in [Arch::Llama, Arch::Qwen2] {
        batch_cache_case(arch);
        emlab_model::decode::with_composed(|| batch_cache_case(arch));
    }
}

fn batch_cache_case(arch: Arch) {
    use emlab_model::BatchCache;
    {
        let m = model(arch, 11, None);
        let prompts: [&[u32]; 3] = [&[3, 50, 60, 61], &[9, 8], &[7]];
        let next: [[u32; 3]; 2] = [[62, 10, 4], [200, 11, 5]];
        let width = 4;
        let start: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let mut padded: Vec<Vec<u32>> = prompts.iter().map(|p| [vec![0u32; width - p.len()], p.to_vec()].concat()).collect();
        let mut cache = BatchCache::new(&m, start, width + 3).unwrap();
        let rows: Vec<&[u32]> = padded.iter().map(|r| &r[..]).collect();
        let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
        let mut got = vec![m.forward(&ids(&rows), f).unwrap().logits.unwrap()];
        for step in next {
            let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
            got.push(m.forward(&ids(&[&[step[0]], &[step[1]], &[step[2]]]), f).unwrap().logits.unwrap());
            for (r, t) in padded.iter_mut().zip(step) {
                r.push(t);
            }
        }
        assert_eq!(cache.len(), width + 2);
        assert_eq!(cache.row_len(1), 4);
        for (b, p) in prompts.iter().enumerate() {
            let full: Vec<u32> = [p.to_vec(), vec![next[0][b], next[1][b]]].concat();
            let want = m.forward(&ids(&[&full]), Forward::default()).unwrap().logits.unwrap();
            for (s, g) in got.iter().enumerate() {
                let w = vec(&want.narrow(1, p.len() - 1 + s, 1).unwrap());
                let r = vec(&g.narrow(0, b, 1).unwrap());
                assert!(max_rel(&r, &w) < 1e-5, "{arch:?} row {b} call {s}: {}", max_rel(&r, &w));
            }
        }
        // Drop row 1; rows 0 and 2 continue unchanged.
        cache.retain(&[0, 2]).unwrap();
        let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
        let l = m.forward(&ids(&[&[33], &[34]]), f).unwrap().logits.unwrap();
        for (row, (b, tok)) in [(0usize, 33u32), (2, 34)].into_iter().enumerate() {
            let full: Vec<u32> = [prompts[b].to_vec(), vec![next[0][b], next[1][b], tok]].concat();
            let want = m.forward(&ids(&[&full]), Forward::default()).unwrap().logits.unwrap();
            let w = vec(&want.narrow(1, full.len() - 1, 1).unwrap());
            let r = vec(&l.narrow(0, row, 1).unwrap());
            assert!(max_rel(&r, &w) < 1e-5, "{arch:?} after retain, row {b}: {}", max_rel(&r, &w));
        }
        // Bad use is an error, not a panic or a silent overwrite.
        let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
        let e = m.forward(&ids(&[&[1, 2], &[3, 4]]), f).err().unwrap().to_string();
        assert!(e.contains("new columns"), "{e}");
        assert!(cache.retain(&[5]).is_err());
        assert!(BatchCache::new(&m, vec![3], 3).is_err());
    }
}

/// Generation on the batched device path: several waves (5 requests, batch 2), a stop token
/// that ends some rows early (rows dropped mid-wave), and a request's text does not depend on
/// its batch (alone vs. in a wave). Compared with the CPU kernel path, token for token.
#[test]
fn wave_generation_matches_the_cpu_path_and_ignores_batch_neighbours() {
    let m = model(Arch::Llama, 12, None);
    let reqs: Vec<Request> = [&[5u32, 6, 7][..], &[9], &[100, 101, 102, 103, 104], &[4, 4], &[77, 3]]
        .iter()
        .enumerate()
        .map(|(i, p)| Request { prompt: p.to_vec(), seed: 40 + i as u64 })
        .collect();
    for params in [
        SamplingParams { batch_size: 2, ..SamplingParams::greedy(7) },
        SamplingParams { temperature: 1.0, max_new_tokens: 7, batch_size: 2, ..Default::default() },
        SamplingParams { temperature: 0.8, top_k: 20, max_new_tokens: 5, batch_size: 3, ..Default::default() },
    ] {
        let cpu = generate(&m, &reqs, &params, &[2, 17], None, &mut |_, _| {}).unwrap();
        let mut events = 0;
        let dev = with_portable(|| generate(&m, &reqs, &params, &[2, 17], None, &mut |_, _| events += 1)).unwrap();
        assert!(events >= reqs.len());
        for (i, (x, y)) in cpu.iter().zip(&dev).enumerate() {
            assert_eq!(x.tokens, y.tokens, "request {i} with {params:?}");
            assert_eq!(x.finish, y.finish);
        }
        let alone = with_portable(|| generate(&m, &reqs[2..3], &params, &[2, 17], None, &mut |_, _| {})).unwrap();
        assert_eq!(alone[0].tokens, dev[2].tokens);
    }
}

/// The device sampler (two-level inverse CDF) picks what the host sampler picks from the same
/// uniform draws, for a vocabulary that blocks evenly and one that needs padding (997, prime).
#[test]
fn device_sampler_matches_the_host_sampler() {
    use emlab_model::generate::{sample, sample_on_device};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    for v in [512usize, 997] {
        let rows = 64;
        let logits = (det((rows, v), v as u64, 6.0) * 1.0).unwrap();
        let host = logits.to_vec2::<f32>().unwrap();
        for temp in [1.0f32, 0.7] {
            let p = SamplingParams { temperature: temp, ..Default::default() };
            let mut a: Vec<ChaCha8Rng> = (0..rows).map(|i| ChaCha8Rng::seed_from_u64(i as u64)).collect();
            let mut b = a.clone();
            let want: Vec<u32> = host.iter().zip(a.iter_mut()).map(|(l, r)| sample(l, &p, r)).collect();
            let mut refs: Vec<&mut ChaCha8Rng> = b.iter_mut().collect();
            let got = sample_on_device(&logits, &p, &mut refs).unwrap();
            let same = want.iter().zip(&got).filter(|(x, y)| x == y).count();
            // Equal up to f32 vs f64 rounding at a boundary: allow at most one miss in 64.
            assert!(same >= rows - 1, "V={v} T={temp}: {same}/{rows} equal");
            assert!(got.iter().all(|&t| (t as usize) < v));
        }
        let g = sample_on_device(&logits, &SamplingParams::greedy(1), &mut []).err();
        assert!(g.is_some(), "row count mismatch is an error");
    }
}

/// Refilling a finished row: a sequence prefilled on its own (device-side cache) is written into
/// row 1 ending at the current column; the next decode step gives both rows the logits of their
/// own uncached forwards (the old row's keys are masked, the new row's positions restart at 0).
#[test]
fn batch_cache_fill_row_continues_a_separately_prefilled_sequence() {
    use emlab_model::BatchCache;
    let m = model(Arch::Qwen2, 13, None);
    let mut cache = BatchCache::new(&m, vec![0, 2], 9).unwrap();
    let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
    m.forward(&ids(&[&[3, 50, 60, 61], &[0, 0, 9, 8]]), f).unwrap();
    for step in [[62u32, 10], [200, 11]] {
        let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
        m.forward(&ids(&[&[step[0]], &[step[1]]]), f).unwrap();
    }
    let mut seq = vec![SeqCache::new(m.config.num_layers)];
    with_portable(|| m.forward(&ids(&[&[7, 5, 4]]), Forward { logits: Logits::Last, cache: Some(&mut seq), ..Default::default() }))
        .unwrap();
    cache.fill_row(1, &seq[0]).unwrap();
    assert_eq!(cache.row_len(1), 3);
    let f = Forward { logits: Logits::Last, batch_cache: Some(&mut cache), ..Default::default() };
    let got = m.forward(&ids(&[&[33], &[34]]), f).unwrap().logits.unwrap();
    for (row, full) in [(0usize, vec![3u32, 50, 60, 61, 62, 200, 33]), (1, vec![7, 5, 4, 34])] {
        let want = m.forward(&ids(&[&full]), Forward::default()).unwrap().logits.unwrap();
        let w = vec(&want.narrow(1, full.len() - 1, 1).unwrap());
        let r = vec(&got.narrow(0, row, 1).unwrap());
        assert!(max_rel(&r, &w) < 1e-5, "row {row}: {}", max_rel(&r, &w));
    }
    // A sequence longer than the columns written so far cannot end at the current column.
    let mut long = vec![SeqCache::new(m.config.num_layers)];
    with_portable(|| m.forward(&ids(&[&[1; 8]]), Forward { logits: Logits::Last, cache: Some(&mut long), ..Default::default() })).unwrap();
    assert!(cache.fill_row(0, &long[0]).is_err());
    assert!(cache.fill_row(5, &seq[0]).is_err());
}

/// Rows that finish early while most of the wave runs on are parked (decoded along, attending
/// only to themselves) and refilled with the next requests; texts still equal the CPU path's,
/// token for token, with the decode ops and with the composed decode attention.
#[test]
fn parked_and_refilled_rows_match_the_cpu_path() {
    use emlab_model::generate::Finish;
    let m = model(Arch::Qwen2, 13, None);
    let reqs: Vec<Request> =
        (0..12u32).map(|i| Request { prompt: (0..1 + i % 4).map(|j| 40 + 7 * i + j).collect(), seed: 90 + i as u64 }).collect();
    // Tokens this seed's model switches to part-way through some rows: those rows stop at
    // different steps while the others run to the length limit.
    let stop: Vec<u32> = vec![229, 221, 234, 62];
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 9, batch_size: 6, ..Default::default() };
    let cpu = generate(&m, &reqs, &params, &stop, None, &mut |_, _| {}).unwrap();
    assert!(cpu.iter().any(|g| g.finish == Finish::Stop) && cpu.iter().any(|g| g.finish == Finish::Length));
    let lens: std::collections::BTreeSet<usize> = cpu.iter().map(|g| g.tokens.len()).collect();
    assert!(lens.len() >= 3, "rows should finish at different steps: {lens:?}");
    for composed in [false, true] {
        let run = || with_portable(|| generate(&m, &reqs, &params, &stop, None, &mut |_, _| {})).unwrap();
        let dev = if composed { emlab_model::decode::with_composed(run) } else { run() };
        for (i, (x, y)) in cpu.iter().zip(&dev).enumerate() {
            assert_eq!((&x.tokens, x.finish), (&y.tokens, y.finish), "request {i}, composed decode {composed}");
        }
    }
}
