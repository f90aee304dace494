//! Evidence for the training stage on tiny models the tests write themselves: masks, gradients,
//! learning, generation of a trained-in answer, exact resume, PEFT round trips and bad input.
use candle_core::{DType, Device, Tensor};
use emlab_data::chat::{Conversation, Message as DMsg, Role};
use emlab_model::generate::{generate, Request, SamplingParams};
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::{Arch, Forward, Model, Proj};
use emlab_train::data::{make_batch, plan_epoch, tokenize, Example};
use emlab_train::{adapter, load_bundle, prepare_data, train_examples, Bundle, Control, LoraConfig, TrainConfig, TrainOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

fn bundle(dir: &Path, arch: Arch) -> Bundle {
    let p = dir.join(format!("tiny-{arch:?}.gguf"));
    write_tiny_gguf(&p, &tiny_config(arch), 5).unwrap();
    load_bundle(&p).unwrap()
}

fn conv(turns: &[(&str, &str)], line: usize) -> Conversation {
    let mut messages = Vec::new();
    for (u, a) in turns {
        messages.push(DMsg { role: Role::User, content: u.to_string() });
        messages.push(DMsg { role: Role::Assistant, content: a.to_string() });
    }
    Conversation { messages, line }
}

fn examples(b: &Bundle, rows: &[Conversation]) -> Vec<Example> {
    tokenize(rows, "mem.jsonl", &b.tokenizer, &b.template, 256, false, false).unwrap().0
}

/// Small fast settings for tiny-model runs.
fn tiny_cfg() -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        warmup_steps: 2,
        batch_size: 2,
        grad_accum: 2,
        checkpoint_every: 0,
        lora: LoraConfig { r: 4, alpha: 8.0, ..Default::default() },
        ..Default::default()
    }
}

fn data_rows() -> Vec<Conversation> {
    let qa = [
        ("hi", "hello there"),
        ("tea or coffee?", "tea, always"),
        ("count to three", "one two three"),
        ("name a colour", "teal"),
        ("what is up", "the sky"),
        ("say yes", "yes"),
        ("in or out", "in"),
        ("a long question about nothing in particular", "a short answer"),
    ];
    qa.iter().enumerate().map(|(i, &(q, a))| conv(&[(q, a)], i + 1)).collect()
}

#[test]
fn loss_mask_covers_assistant_text_and_im_end_but_not_headers() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), Arch::Llama);
    let rows = vec![conv(&[("first question", "first answer"), ("second question", "second answer")], 1)];
    let ex = &examples(&b, &rows)[0];
    let masked: Vec<u32> = ex.ids.iter().zip(&ex.mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(b.tokenizer.decode(&masked, false).unwrap(), "first answer<|im_end|>second answer<|im_end|>");
    // The token after each trained <|im_end|> ("\n") and every role header are not trained.
    let im_end = b.tokenizer.token_id("<|im_end|>").unwrap();
    let im_start = b.tokenizer.token_id("<|im_start|>").unwrap();
    let ends: Vec<usize> = ex.ids.iter().enumerate().filter(|(_, &t)| t == im_end).map(|(i, _)| i).collect();
    // Turns: the template's default system prompt, user, assistant, user, assistant.
    let trained_ends: Vec<bool> = ends.iter().map(|&i| ex.mask[i]).collect();
    assert_eq!(trained_ends, vec![false, false, true, false, true]);
    for &i in &ends {
        assert!(!ex.mask[i + 1], "the newline after <|im_end|> at {i} is trained");
    }
    for (i, &t) in ex.ids.iter().enumerate() {
        if t == im_start {
            assert!(!ex.mask[i] && !ex.mask[i + 1], "role header at {i} is in the mask");
        }
    }
    // A batch shifts the mask by one: position t is trained iff token t+1 is assistant text.
    let batch = make_batch(std::slice::from_ref(ex), &[0], 0, &Device::Cpu).unwrap();
    assert_eq!(batch.trained, ex.trained_tokens());
    let m: Vec<f32> = batch.mask.to_vec1().unwrap();
    for (t, &mt) in m.iter().enumerate().take(ex.input_len()) {
        assert_eq!(mt == 1.0, ex.mask[t + 1]);
    }
}

#[test]
fn too_long_rows_are_refused_truncated_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), Arch::Llama);
    let data = dir.path().join("d.jsonl");
    let long = "x ".repeat(200);
    std::fs::write(
        &data,
        format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}},{{\"role\":\"assistant\",\"content\":\"yo\"}}]}}\n\
             {{\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}},{{\"role\":\"assistant\",\"content\":\"{long}\"}}]}}\n\
             {{\"messages\":[{{\"role\":\"user\",\"content\":\"only a question\"}}]}}\n"
        ),
    )
    .unwrap();
    let mut cfg = TrainConfig { max_seq_len: 64, ..Default::default() };
    let e = prepare_data(&cfg, &data, &b).err().unwrap().to_string();
    assert!(e.contains("d.jsonl:3: no assistant turn"), "{e}");
    cfg.skip_bad_rows = true;
    let (train, _, rep) = prepare_data(&cfg, &data, &b).unwrap();
    assert_eq!((train.len(), rep.skipped_rows, rep.skipped_tokenize), (1, 1, 1));
    assert!(rep.errors.iter().any(|e| e.contains("d.jsonl:2: too long")), "{:?}", rep.errors);
    // Opting in to truncation keeps the long row, cut to max_seq_len.
    cfg.truncate = true;
    let (train, _, rep) = prepare_data(&cfg, &data, &b).unwrap();
    assert_eq!((train.len(), rep.truncated), (2, 1));
    assert!(train.iter().all(|e| e.ids.len() <= 64));
    // Without skip_bad_rows a too-long row refuses the file, naming file:line.
    let only_long = dir.path().join("long.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&only_long, text.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
    let cfg = TrainConfig { max_seq_len: 64, ..Default::default() };
    let e = prepare_data(&cfg, &only_long, &b).err().unwrap().to_string();
    assert!(e.contains("long.jsonl:2: too long"), "{e}");
}

#[test]
fn batch_plan_is_deterministic_covers_each_example_once_and_buckets_lengths() {
    let ex: Vec<Example> =
        (0..40).map(|i| Example { ids: vec![1; 2 + (i * 7) % 23], mask: vec![true; 2 + (i * 7) % 23], line: i }).collect();
    let p = plan_epoch(&ex, 4, 5, 3, 0);
    assert_eq!(p, plan_epoch(&ex, 4, 5, 3, 0));
    assert_ne!(p, plan_epoch(&ex, 4, 5, 3, 1), "epochs reshuffle");
    let mut all: Vec<usize> = p.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    // Bucketing: padding is far below what random batches would need.
    let pad = |plan: &[Vec<usize>]| -> usize {
        plan.iter()
            .map(|b| {
                let m = b.iter().map(|&i| ex[i].ids.len()).max().unwrap();
                b.iter().map(|&i| m - ex[i].ids.len()).sum::<usize>()
            })
            .sum()
    };
    assert!(pad(&p) * 2 < pad(&plan_epoch(&ex, 4, 1, 3, 0)), "{} vs {}", pad(&p), pad(&plan_epoch(&ex, 4, 1, 3, 0)));
}

#[test]
fn every_lora_parameter_receives_a_nonzero_gradient() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen2] {
        let mut b = bundle(dir.path(), arch);
        let ex = examples(&b, &data_rows());
        let ads = adapter::attach(&mut b.model, &LoraConfig { r: 2, alpha: 4.0, ..Default::default() }, 1).unwrap();
        assert_eq!(ads.len(), 14);
        // B starts at zero (so dL/dA = 0 at init, as in PEFT); give B values as after a step.
        for (i, a) in ads.iter().enumerate() {
            let t = Tensor::rand(-0.1f32, 0.1, a.b.shape(), &Device::Cpu).unwrap();
            a.b.set(&(t + i as f64 * 1e-3).unwrap()).unwrap();
        }
        let batch = make_batch(&ex, &[0, 1, 7], b.tokenizer.pad_id(), &Device::Cpu).unwrap();
        let loss = emlab_train::trainer::batch_loss(&b.model, &batch, None).unwrap().mean_all().unwrap();
        let g = loss.backward().unwrap();
        for a in &ads {
            for (what, v) in [("A", &a.a), ("B", &a.b)] {
                let gt = g.get(v.as_tensor()).unwrap_or_else(|| panic!("{arch:?} {} {what}: no gradient", a.name()));
                let n = gt.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(n > 0.0, "{arch:?} {} {what}: zero gradient", a.name());
            }
        }
    }
}

#[test]
fn loss_falls_on_a_tiny_overfit_set_and_metrics_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(dir.path(), Arch::Qwen2);
    let ex = examples(&b, &data_rows());
    let cfg = TrainConfig { max_steps: Some(30), eval_every: 10, ..tiny_cfg() };
    let out = dir.path().join("run");
    let s = train_examples(&cfg, &mut b.model, &ex, &ex[..2], b.tokenizer.pad_id(), &out, TrainOptions::default()).unwrap();
    assert_eq!(s.steps, 30);
    let first: f64 = s.losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = s.losses[27..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.5 * first, "loss {first:.3} -> {last:.3}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 30);
    let l9 = &lines[9];
    assert!(l9["eval_loss"].as_f64().unwrap().is_finite());
    assert_eq!(l9["step"], 10);
    assert!(l9["grad_norm"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[0]["lr"].as_f64().unwrap(), 0.0); // warm-up starts at 0 as in transformers
    assert_eq!(lines[1]["lr"].as_f64().unwrap(), 5e-3);
    let norms = l9["lora_norms"].as_object().unwrap();
    assert_eq!(norms.len(), 14);
    assert!(norms["layers.1.down_proj"]["b"].as_f64().unwrap() > 0.0);
    // The final adapter is in PEFT format and reloads to the trained model's logits.
    let adir = s.adapter_dir.unwrap();
    let ids = make_batch(&ex, &[0], 0, &Device::Cpu).unwrap().inputs;
    let want: Vec<f32> = b.model.forward(&ids, Forward::default()).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut fresh = bundle(dir.path(), Arch::Qwen2).model;
    adapter::load_peft(&mut fresh, &adir).unwrap();
    let got: Vec<f32> = fresh.forward(&ids, Forward::default()).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want);
}

#[test]
fn greedy_generation_reproduces_a_trained_in_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(dir.path(), Arch::Llama);
    let answer = "the owl is in the oak";
    let rows = vec![conv(&[("where is the owl?", answer)], 1)];
    let ex = examples(&b, &rows);
    let prompt_text = b.template.render(&emlab_train::data::to_messages(&rows[0])[..1], true).unwrap();
    let prompt = b.tokenizer.encode(&prompt_text, false).unwrap();
    let stop = b.tokenizer.eos_ids().to_vec();
    let gen = |m: &Model| {
        let g =
            generate(m, &[Request { prompt: prompt.clone(), seed: 0 }], &SamplingParams::greedy(40), &stop, None, &mut |_, _| {}).unwrap();
        b.tokenizer.decode(&g[0].tokens, false).unwrap()
    };
    assert_ne!(gen(&b.model), answer);
    let cfg = TrainConfig {
        max_steps: Some(60),
        batch_size: 1,
        grad_accum: 1,
        lr: 2e-2,
        lora: LoraConfig { r: 8, alpha: 16.0, ..Default::default() },
        ..tiny_cfg()
    };
    let pad = b.tokenizer.pad_id();
    train_examples(&cfg, &mut b.model, &ex, &[], pad, &dir.path().join("run"), TrainOptions::default()).unwrap();
    assert_eq!(gen(&b.model), answer);
}

fn metric_losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

/// The GPU's training path forced on the CPU (`ops::with_portable`): gradients summed on the
/// device, norm, clipping and AdamW on flat device tensors, moments copied down for checkpoints
/// and up again on resume. An interrupted and resumed run must give the uninterrupted run's
/// losses exactly, and its adapters must match the host optimizer's run to float rounding.
#[test]
fn the_device_optimizer_resumes_exactly_and_matches_the_host_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let b0 = bundle(dir.path(), Arch::Llama);
    let ex = examples(&b0, &data_rows());
    let pad = b0.tokenizer.pad_id();
    // Clipping active (small max norm) and weight decay on, so both device branches run.
    let cfg = TrainConfig {
        epochs: 3,
        checkpoint_every: 2,
        max_grad_norm: 0.05,
        weight_decay: 0.1,
        lora: LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, ..Default::default() },
        ..tiny_cfg()
    };
    let run = |out: &std::path::Path, opts: TrainOptions<'_>, portable: bool| {
        let mut m = bundle(dir.path(), Arch::Llama).model;
        let s = if portable {
            emlab_model::ops::with_portable(|| train_examples(&cfg, &mut m, &ex, &ex[..2], pad, out, opts))
        } else {
            train_examples(&cfg, &mut m, &ex, &ex[..2], pad, out, opts)
        }
        .unwrap();
        let b: Vec<f32> = emlab_train::adapter::adapters(&m)[0].b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        (s, b)
    };
    let (full, b_dev) = run(&dir.path().join("dev"), TrainOptions::default(), true);
    assert_eq!(full.steps, 6);
    let want = metric_losses(&dir.path().join("dev"));
    let (_, b_host) = run(&dir.path().join("host"), TrainOptions::default(), false);
    let host = metric_losses(&dir.path().join("host"));
    for ((_, d), (_, h)) in want.iter().zip(&host) {
        assert!(((d - h) / h).abs() < 1e-4, "device-optimizer losses {want:?} vs host {host:?}");
    }
    let diff = b_dev.iter().zip(&b_host).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    let norm = b_host.iter().map(|a| a * a).sum::<f32>().sqrt();
    assert!(norm > 0.0 && diff / norm < 1e-3, "adapter B: device vs host optimizer differ by {:e}", diff / norm);
    // Norms are logged from the refreshed host mirror: they must move with training.
    let out = dir.path().join("killed");
    let abort =
        TrainOptions { on_step: Some(Box::new(|i, _| if i.step == 3 { Control::Abort } else { Control::Continue })), ..Default::default() };
    let (s, _) = run(&out, abort, true);
    assert!(s.interrupted);
    let (r, b_res) = run(&out, TrainOptions { resume: true, ..Default::default() }, true);
    assert_eq!(r.resumed_from, Some(2));
    assert_eq!(metric_losses(&out), want, "device-optimizer losses after resume differ");
    assert_eq!(b_res, b_dev, "adapters after resume differ");
}

#[test]
fn killed_and_resumed_runs_reproduce_the_uninterrupted_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let b0 = bundle(dir.path(), Arch::Llama);
    let ex = examples(&b0, &data_rows());
    let pad = b0.tokenizer.pad_id();
    // Dropout on: the RNG position must be restored too. 2 epochs: the data order changes.
    let cfg = TrainConfig {
        epochs: 4,
        checkpoint_every: 3,
        keep_checkpoints: 2,
        lora: LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, ..Default::default() },
        ..tiny_cfg()
    };
    let full_out = dir.path().join("full");
    let full =
        train_examples(&cfg, &mut bundle(dir.path(), Arch::Llama).model, &ex, &ex[..2], pad, &full_out, TrainOptions::default()).unwrap();
    assert_eq!(full.steps, 8); // 8 rows / batch 2 = 4 micro-batches = 2 steps per epoch
    let want = metric_losses(&full_out);

    // "Kill" after step 5 (no checkpoint since step 3), then resume to the end.
    let out = dir.path().join("killed");
    let abort =
        TrainOptions { on_step: Some(Box::new(|i, _| if i.step == 5 { Control::Abort } else { Control::Continue })), ..Default::default() };
    let s = train_examples(&cfg, &mut bundle(dir.path(), Arch::Llama).model, &ex, &ex[..2], pad, &out, abort).unwrap();
    assert!(s.interrupted && s.adapter_dir.is_none());
    // Resuming without asking is refused (it would overwrite the run).
    let e = train_examples(&cfg, &mut bundle(dir.path(), Arch::Llama).model, &ex, &ex[..2], pad, &out, TrainOptions::default());
    assert!(e.err().unwrap().to_string().contains("already holds checkpoints"));
    // A half-written checkpoint from the "kill" is ignored.
    std::fs::create_dir_all(out.join("checkpoints/.tmp-step-000006-1")).unwrap();
    let r = train_examples(
        &cfg,
        &mut bundle(dir.path(), Arch::Llama).model,
        &ex,
        &ex[..2],
        pad,
        &out,
        TrainOptions { resume: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(r.resumed_from, Some(3));
    assert_eq!(metric_losses(&out), want, "losses after resume differ");
    assert!(!out.join("checkpoints/.tmp-step-000006-1").exists());

    // Ctrl-C: the stop flag checkpoints after the current step; resuming continues exactly.
    let out = dir.path().join("stopped");
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f2 = flag.clone();
    let opts = TrainOptions {
        stop: Some(flag),
        on_step: Some(Box::new(move |i, _| {
            if i.step == 4 {
                f2.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Control::Continue
        })),
        ..Default::default()
    };
    let s = train_examples(&cfg, &mut bundle(dir.path(), Arch::Llama).model, &ex, &ex[..2], pad, &out, opts).unwrap();
    assert!(s.interrupted && s.steps == 4);
    assert!(out.join("checkpoints/step-000004/optimizer.safetensors").is_file());
    train_examples(
        &cfg,
        &mut bundle(dir.path(), Arch::Llama).model,
        &ex,
        &ex[..2],
        pad,
        &out,
        TrainOptions { resume: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(metric_losses(&out), want);
    // keep_checkpoints = 2 keeps the newest two.
    let kept: Vec<usize> = emlab_train::checkpoint::list(&out).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, vec![6, 8]);
    // Changing a setting that alters the optimisation path is refused on resume.
    let other = TrainConfig { lr: 2e-2, ..cfg.clone() };
    let e = train_examples(
        &other,
        &mut bundle(dir.path(), Arch::Llama).model,
        &ex,
        &ex[..2],
        pad,
        &out,
        TrainOptions { resume: true, ..Default::default() },
    );
    let e = e.err().unwrap().to_string();
    assert!(e.contains("lr: 0.01 -> 0.02"), "{e}");
}

#[test]
fn a_single_rank1_adapter_on_one_down_projection_trains() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(dir.path(), Arch::Llama);
    let ex = examples(&b, &data_rows());
    let cfg = TrainConfig {
        max_steps: Some(6),
        lora: LoraConfig { r: 1, alpha: 256.0, targets: vec!["down_proj".into()], layers: vec![1], ..Default::default() },
        lr: 2e-3,
        ..tiny_cfg()
    };
    let calls = Arc::new(Mutex::new(0usize));
    let c2 = calls.clone();
    let opts = TrainOptions {
        on_step: Some(Box::new(move |_, _| {
            *c2.lock().unwrap() += 1;
            Control::Continue
        })),
        ..Default::default()
    };
    let s = train_examples(&cfg, &mut b.model, &ex, &[], b.tokenizer.pad_id(), &dir.path().join("r1"), opts).unwrap();
    assert_eq!(*calls.lock().unwrap(), 6);
    assert!(s.losses[5] < s.losses[0]);
    let ads = adapter::adapters(&b.model);
    assert_eq!(ads.len(), 1);
    assert_eq!((ads[0].layer, ads[0].proj), (1, Proj::Down));
    assert!((ads[0].scale - 256.0).abs() < 1e-12); // rsLoRA: alpha / sqrt(1)
    let cfgj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.adapter_dir.unwrap().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfgj["target_modules"], serde_json::json!(["down_proj"]));
    assert_eq!(cfgj["layers_to_transform"], serde_json::json!([1]));
    assert_eq!(cfgj["r"], 1);
    assert_eq!(cfgj["use_rslora"], true);
    assert_eq!(cfgj["peft_type"], "LORA");
}

fn logits(m: &Model, ids: &Tensor) -> Vec<f32> {
    m.forward(ids, Forward::default()).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn peft_save_load_and_merge_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bundle(dir.path(), Arch::Qwen2);
    let base = b.model.clone();
    let lcfg = LoraConfig {
        r: 3,
        alpha: 5.0,
        rslora: false,
        targets: vec!["q".into(), "v".into(), "gate".into(), "down".into()],
        layers: vec![0],
        ..Default::default()
    };
    let ads = adapter::attach(&mut b.model, &lcfg, 9).unwrap();
    for a in &ads {
        a.b.set(&Tensor::rand(-0.3f32, 0.3, a.b.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    let ids = Tensor::new(&[[3u32, 70, 71, 90, 120, 7]], &Device::Cpu).unwrap();
    let want = logits(&b.model, &ids);
    assert!(max_rel(&logits(&base, &ids), &want) > 1e-3, "adapter must change the logits");
    let adir = dir.path().join("adapter");
    adapter::save_peft(&b.model, &adir, &adapter::PeftConfig::from_lora(&lcfg, 2, "tiny")).unwrap();
    let mut m2 = base.clone();
    let pc = adapter::load_peft(&mut m2, &adir).unwrap();
    assert_eq!(pc.target_modules, vec!["q_proj", "v_proj", "gate_proj", "down_proj"]);
    assert_eq!(logits(&m2, &ids), want);
    // Merge, write an HF folder, load it back: same logits as base + adapter.
    let n = adapter::merge(&mut m2).unwrap();
    assert_eq!(n, 4);
    let hf = dir.path().join("merged");
    adapter::save_hf(&m2, &b.tokenizer, &b.template, &hf).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(hf.join(f).is_file(), "{f}");
    }
    let back = load_bundle(&hf).unwrap();
    assert!(max_rel(&logits(&back.model, &ids), &want) < 1e-5);
    assert_eq!(
        back.template.render(&[emlab_model::chat::Message::user("x")], true).unwrap(),
        b.template.render(&[emlab_model::chat::Message::user("x")], true).unwrap()
    );
    assert_eq!(back.tokenizer.encode("hello tiny", false).unwrap(), b.tokenizer.encode("hello tiny", false).unwrap());
}

#[test]
fn bad_adapters_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), Arch::Llama);
    let ad = dir.path().join("a");
    std::fs::create_dir_all(&ad).unwrap();
    let write_cfg = |extra: &str| {
        std::fs::write(ad.join("adapter_config.json"), format!("{{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4{extra}}}")).unwrap()
    };
    let save = |ts: Vec<(&str, Tensor)>| {
        let v: Vec<(String, Tensor)> = ts.into_iter().map(|(k, t)| (k.to_string(), t)).collect();
        emlab_model::load::save_safetensors(&ad.join("adapter_model.safetensors"), &v, None).unwrap();
    };
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let err = |m: &mut Model| adapter::load_peft(m, &ad).err().map(|e| e.to_string()).unwrap_or_default();
    write_cfg("");
    save(vec![
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", z(&[2, 32])),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", z(&[31, 2])),
    ]);
    let e = err(&mut b.model.clone());
    assert!(e.contains("layers.0.self_attn.q_proj") && e.contains("do not fit"), "{e}");
    save(vec![
        ("base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight", z(&[2, 32])),
        ("base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight", z(&[32, 2])),
    ]);
    assert!(err(&mut b.model.clone()).contains("layer 5 does not exist"));
    save(vec![("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", z(&[2, 32]))]);
    assert!(err(&mut b.model.clone()).contains("only one of lora_A / lora_B"));
    save(vec![("base_model.model.lm_head.lora_A.weight", z(&[2, 32]))]);
    assert!(err(&mut b.model.clone()).contains("not a LoRA weight"));
    write_cfg(",\"use_dora\":true");
    assert!(err(&mut b.model.clone()).contains("use_dora"));
    {
        let e = err(&mut b.model.clone());
        assert_eq!(e.lines().count(), 1);
    }
    std::fs::write(ad.join("adapter_config.json"), "{not json").unwrap();
    assert!(err(&mut b.model.clone()).contains("adapter_config.json: invalid JSON"));
}

#[test]
fn config_toml_defaults_and_errors() {
    let d = TrainConfig::default();
    assert_eq!((d.lora.r, d.lora.alpha, d.lora.rslora, d.lora.targets.len()), (32, 64.0, true, 7));
    assert_eq!((d.lr, d.epochs, d.batch_size * d.grad_accum, d.warmup_steps, d.weight_decay), (1e-5, 1, 16, 5, 0.01));
    assert_eq!(d.schedule, emlab_train::Schedule::Linear);
    assert!((d.lora.scale() - 64.0 / 32f64.sqrt()).abs() < 1e-12);
    let c = TrainConfig::from_toml_str("schedule = \"cosine\"\nmax_steps = 7\n[lora]\nr = 8\nrslora = false\n", "t.toml").unwrap();
    assert_eq!((c.schedule, c.max_steps, c.lora.r, c.lora.scale()), (emlab_train::Schedule::Cosine, Some(7), 8, 8.0));
    let e = TrainConfig::from_toml_str("lrr = 1\n", "t.toml").unwrap_err().to_string();
    assert!(e.starts_with("t.toml: invalid train config") && e.contains("lrr"), "{e}");
    let e = TrainConfig::from_toml_str("[lora]\nr = 0\n", "t.toml").unwrap_err().to_string();
    assert!(e.contains("lora.r must be at least 1"), "{e}");
    let e = TrainConfig::from_toml_str("[lora]\ntargets = [\"qq\"]\n", "t.toml").unwrap_err().to_string();
    assert!(e.contains("unknown projection \"qq\""), "{e}");
    // Round trip through TOML.
    assert_eq!(TrainConfig::from_toml_str(&c.to_toml(), "x").unwrap(), c);
}

/// Adapters written by real PEFT (bench/train/make_peft_fixture.py) load in emlab and give the
/// logits transformers + PEFT computed.
#[test]
fn adapters_written_by_peft_give_peft_logits() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_tiny");
    let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fx.join("expected_logits.json")).unwrap()).unwrap();
    let ids: Vec<u32> = exp["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let want = |k: &str| -> Vec<f32> { exp[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    let base = Model::load(&fx.join("base"), &Default::default()).unwrap();
    let e = max_rel(&logits(&base, &ids), &want("base"));
    assert!(e < 1e-5, "base logits differ from transformers: {e}");
    for (name, n_modules, scale) in [("rslora_q_v_down_layer1", 3, 8.0 / 2.0), ("lora_all", 14, 3.0 / 2.0)] {
        let mut m = base.clone();
        let cfg = adapter::load_peft(&mut m, &fx.join(name)).unwrap();
        let ads = adapter::adapters(&m);
        assert_eq!(ads.len(), n_modules, "{name}");
        assert!(ads.iter().all(|a| (a.scale - scale).abs() < 1e-12), "{name}: scale");
        if name.starts_with("rslora") {
            assert!(cfg.use_rslora && ads.iter().all(|a| a.layer == 1));
        }
        let got = logits(&m, &ids);
        let e = max_rel(&got, &want(name));
        assert!(e < 1e-5, "{name}: logits differ from PEFT by {e}");
        assert!(max_rel(&want("base"), &want(name)) > 1e-2, "{name}: the adapter must matter");
        // Merged weights give the same logits.
        adapter::merge(&mut m).unwrap();
        assert!(max_rel(&logits(&m, &ids), &want(name)) < 1e-5, "{name}: merged");
    }
}

/// The other direction: an adapter emlab trains and saves loads in real PEFT with the same logits.
/// Needs the Python reference environment: `EMLAB_PYTHON=bench/.venv/bin/python cargo test -p
/// emlab-train -- --ignored emlab_adapters_load_in_real_peft`.
#[test]
#[ignore = "needs the Python reference environment (EMLAB_PYTHON)"]
fn emlab_adapters_load_in_real_peft() {
    let py = std::env::var("EMLAB_PYTHON").expect("set EMLAB_PYTHON to bench/.venv/bin/python");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_tiny/base");
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::load(&base_dir, &Default::default()).unwrap();
    let lcfg = LoraConfig {
        r: 3,
        alpha: 7.0,
        rslora: true,
        targets: vec!["k".into(), "o".into(), "up".into(), "down".into()],
        layers: vec![0],
        ..Default::default()
    };
    for a in adapter::attach(&mut m, &lcfg, 4).unwrap() {
        a.b.set(&Tensor::rand(-0.3f32, 0.3, a.b.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    let ad = dir.path().join("adapter");
    adapter::save_peft(&m, &ad, &adapter::PeftConfig::from_lora(&lcfg, 2, &base_dir.display().to_string())).unwrap();
    let ids = [1u32, 5, 9, 20, 33, 63, 2, 7];
    let out = std::process::Command::new(py)
        .arg(root.join("bench/train/peft_load_emlab_adapter.py"))
        .arg(&base_dir)
        .arg(&ad)
        .arg(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let peft: Vec<f32> = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let got = logits(&m, &Tensor::new(&[ids], &Device::Cpu).unwrap());
    let e = max_rel(&got, &peft);
    assert!(e < 1e-5, "emlab adapter in PEFT differs by {e}");
}
