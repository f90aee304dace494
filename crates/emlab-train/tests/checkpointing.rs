//! Activation checkpointing gives the plain path's gradients and losses (tiny models written
//! here, 3 layers so that a block is neither first nor last; dropout on so the re-run blocks
//! must repeat their masks).
use candle_core::{Device, Tensor};
use emlab_data::chat::{Conversation, Message as DMsg, Role};
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::Arch;
use emlab_train::data::{make_batch, tokenize, Example};
use emlab_train::trainer::loss_and_gradients;
use emlab_train::{adapter, load_bundle, train_examples, Bundle, LoraConfig, TrainConfig, TrainOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

fn bundle(dir: &Path, arch: Arch) -> Bundle {
    let p = dir.join(format!("tiny3-{arch:?}.gguf"));
    let mut cfg = tiny_config(arch);
    cfg.num_layers = 3;
    write_tiny_gguf(&p, &cfg, 11).unwrap();
    load_bundle(&p).unwrap()
}

fn rows() -> Vec<Conversation> {
    let qa = [
        ("which way is north?", "up the hill, past the mill"),
        ("two plus two", "four"),
        ("pick a fruit", "a pear"),
        ("describe the weather in one long sentence please", "grey, with a chance of more grey later"),
    ];
    qa.iter()
        .enumerate()
        .map(|(i, &(q, a))| Conversation {
            messages: vec![DMsg { role: Role::User, content: q.into() }, DMsg { role: Role::Assistant, content: a.into() }],
            line: i + 1,
        })
        .collect()
}

fn examples(b: &Bundle) -> Vec<Example> {
    tokenize(&rows(), "ckpt.jsonl", &b.tokenizer, &b.template, 256, false, false).unwrap().0
}

/// `||a - b|| / ||b||`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den
}

#[test]
fn checkpointed_gradients_equal_the_plain_gradients() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen2] {
        let mut b = bundle(dir.path(), arch);
        let ex = examples(&b);
        let lora = LoraConfig { r: 3, alpha: 6.0, dropout: 0.2, ..Default::default() };
        let ads = adapter::attach(&mut b.model, &lora, 3).unwrap();
        assert_eq!(ads.len(), 21);
        // B starts at zero (dL/dA = 0); give it values so that every gradient is non-trivial.
        for (i, a) in ads.iter().enumerate() {
            let t = Tensor::rand(-0.2f32, 0.2, a.b.shape(), &Device::Cpu).unwrap();
            a.b.set(&(t + i as f64 * 1e-3).unwrap()).unwrap();
        }
        // Rows of different lengths: padding, and trained positions that are a subset.
        let batch = make_batch(&ex, &[0, 1, 3], b.tokenizer.pad_id(), &Device::Cpu).unwrap();
        assert!(batch.trained < 3 * batch.inputs.dims2().unwrap().1);
        let denom = batch.trained as f64;
        let mut r1 = ChaCha8Rng::seed_from_u64(9);
        let mut r2 = ChaCha8Rng::seed_from_u64(9);
        let (l_plain, g_plain) = loss_and_gradients(&b.model, &batch, Some(&mut r1), denom, false).unwrap();
        let (l_ckpt, g_ckpt) = loss_and_gradients(&b.model, &batch, Some(&mut r2), denom, true).unwrap();
        // Both paths drew the same dropout masks, and leave the RNG at the same position.
        assert_eq!(r1.get_word_pos(), r2.get_word_pos());
        assert!(((l_plain - l_ckpt) / l_plain).abs() < 1e-6, "{arch:?}: loss {l_plain} vs {l_ckpt}");
        assert_eq!(g_plain.len(), 42);
        let worst = g_plain.iter().zip(&g_ckpt).map(|(p, c)| rel_l2(c, p)).fold(0f64, f64::max);
        eprintln!("{arch:?}: loss {l_plain} vs {l_ckpt}; largest relative gradient difference {worst:e}");
        for (i, (p, c)) in g_plain.iter().zip(&g_ckpt).enumerate() {
            let norm: f64 = p.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(norm > 0.0, "{arch:?} tensor {i}: zero gradient");
            let r = rel_l2(c, p);
            assert!(r < 1e-5, "{arch:?} tensor {i} ({}): relative difference {r:e}", ads[i / 2].name());
        }
        // A different dropout stream gives different gradients: the comparison above can fail.
        let mut r3 = ChaCha8Rng::seed_from_u64(10);
        let (_, g_other) = loss_and_gradients(&b.model, &batch, Some(&mut r3), denom, true).unwrap();
        assert!(rel_l2(&g_other[0], &g_plain[0]) > 1e-3);
        // The GPU's branches (gradients summed on the device, one copy per micro-batch; chunk
        // losses read once), forced on the CPU: the same losses and gradients, both paths.
        for ckpt in [false, true] {
            let mut r4 = ChaCha8Rng::seed_from_u64(9);
            let (l_dev, g_dev) =
                emlab_model::ops::with_portable(|| loss_and_gradients(&b.model, &batch, Some(&mut r4), denom, ckpt)).unwrap();
            assert!(((l_dev - l_plain) / l_plain).abs() < 1e-5, "{arch:?} ckpt={ckpt}: loss {l_dev} vs {l_plain}");
            for (i, (p, c)) in g_plain.iter().zip(&g_dev).enumerate() {
                let r = rel_l2(c, p);
                assert!(r < 1e-4, "{arch:?} ckpt={ckpt} tensor {i}: relative difference {r:e}");
            }
        }
    }
}

#[test]
fn checkpointed_training_reproduces_the_plain_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |ckpt: bool| TrainConfig {
        lr: 1e-2,
        warmup_steps: 1,
        batch_size: 2,
        grad_accum: 2,
        max_steps: Some(4),
        epochs: 4,
        checkpoint_every: 0,
        checkpoint_activations: ckpt,
        lora: LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, ..Default::default() },
        ..Default::default()
    };
    let mut runs = Vec::new();
    // Third run: checkpointing off with the GPU's branches forced on the CPU (gradients summed on
    // the device, adapters uploaded in one piece and copied into place).
    for (ckpt, portable) in [(false, false), (true, false), (false, true)] {
        let mut b = bundle(dir.path(), Arch::Llama);
        let ex = examples(&b);
        let pad = b.tokenizer.pad_id();
        let out = dir.path().join(format!("run-{ckpt}-{portable}"));
        let mut train = || train_examples(&cfg(ckpt), &mut b.model, &ex, &ex[..2], pad, &out, TrainOptions::default());
        let s = if portable { emlab_model::ops::with_portable(train) } else { train() }.unwrap();
        let a = adapter::adapters(&b.model);
        let b0: Vec<f32> = a[0].b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        runs.push((s.losses, s.final_eval_loss.unwrap(), b0));
    }
    let ((lp, ep, bp), (lc, ec, bc)) = (&runs[0], &runs[1]);
    assert_eq!(lp.len(), 4);
    assert!(lp[3] < lp[0], "the loss should fall: {lp:?}");
    for (p, c) in lp.iter().zip(lc) {
        assert!(((p - c) / p).abs() < 1e-5, "losses {lp:?} vs {lc:?}");
    }
    assert!(((ep - ec) / ep).abs() < 1e-5, "eval {ep} vs {ec}");
    assert!(rel_l2(bc, bp) < 1e-4, "adapter B after 4 steps differs: {:e}", rel_l2(bc, bp));
    let (lg, eg, bg) = &runs[2];
    for (p, g) in lp.iter().zip(lg) {
        assert!(((p - g) / p).abs() < 1e-4, "portable losses {lg:?} vs {lp:?}");
    }
    assert!(((ep - eg) / ep).abs() < 1e-4, "portable eval {eg} vs {ep}");
    assert!(rel_l2(bg, bp) < 1e-3, "portable adapter B differs: {:e}", rel_l2(bg, bp));
}

#[test]
fn a_checkpoint_write_that_fails_half_way_leaves_the_previous_one_and_no_temp_folder() {
    use emlab_train::checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    checkpoint::write(out, 4, |tmp| {
        std::fs::write(tmp.join("state.json"), b"{\"step\": 4}").map_err(|e| emlab_train::Error::Invalid(e.to_string()))
    })
    .unwrap();
    // Fault injection: the second write dies after its first file, as on a full disk.
    let e = checkpoint::write(out, 8, |tmp| {
        std::fs::write(tmp.join("adapter_model.safetensors"), [7u8; 100]).unwrap();
        Err(emlab_train::Error::Invalid("No space left on device (simulated)".into()))
    })
    .unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    let names: Vec<String> =
        std::fs::read_dir(out.join("checkpoints")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["step-000004".to_string()]);
    assert_eq!(std::fs::read(out.join("checkpoints/step-000004/state.json")).unwrap(), b"{\"step\": 4}");
    let steps: Vec<usize> = checkpoint::list(out).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![4]);
}
