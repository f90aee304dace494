//! The rotation monitor in the training loop (`metrics.jsonl`'s `rotation`), on tiny models the
//! tests write: values against an independent computation from the saved checkpoints (plain
//! loops), the schedule, null where B was zero, resume behaviour, and the config key.
use emlab_data::chat::{Conversation, Message, Role};
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::Arch;
use emlab_train::data::{tokenize, Example};
use emlab_train::{load_bundle, train_examples, Bundle, Control, LoraConfig, TrainConfig, TrainOptions};
use serde_json::Value;
use std::path::Path;

fn bundle(dir: &Path) -> Bundle {
    let p = dir.join("tiny.gguf");
    if !p.exists() {
        write_tiny_gguf(&p, &tiny_config(Arch::Llama), 5).unwrap();
    }
    load_bundle(&p).unwrap()
}

fn examples(b: &Bundle) -> Vec<Example> {
    let qa = [("hi", "hello there"), ("tea?", "tea, always"), ("count", "one two three"), ("colour", "teal")];
    let rows: Vec<Conversation> = qa
        .iter()
        .enumerate()
        .map(|(i, &(q, a))| Conversation {
            messages: vec![Message { role: Role::User, content: q.into() }, Message { role: Role::Assistant, content: a.into() }],
            line: i + 1,
        })
        .collect();
    tokenize(&rows, "mem.jsonl", &b.tokenizer, &b.template, 256, false, false).unwrap().0
}

/// 4 rows, batch 2, no accumulation: 2 steps per epoch.
fn cfg(r: usize, targets: &[&str], steps: usize) -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        warmup_steps: 0,
        batch_size: 2,
        grad_accum: 1,
        max_steps: Some(steps),
        checkpoint_every: 1,
        lora: LoraConfig { r, alpha: 8.0, targets: targets.iter().map(|t| t.to_string()).collect(), ..Default::default() },
        ..Default::default()
    }
}

fn run(dir: &Path, cfg: &TrainConfig, out: &Path, opts: TrainOptions<'_>) -> emlab_train::TrainSummary {
    let mut b = bundle(dir);
    let ex = examples(&b);
    train_examples(cfg, &mut b.model, &ex, &[], b.tokenizer.pad_id(), out, opts).unwrap()
}

fn lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A metrics line without its wall-clock fields.
fn timeless(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("tokens_per_s");
    o.remove("elapsed_s");
    v
}

/// Module name -> (A [r, in], B [out, r]) of a checkpoint, as f64.
type Ad = Vec<(String, Vec<f64>, Vec<f64>)>;

fn checkpoint_adapters(out: &Path, step: usize) -> Ad {
    let file = out.join(format!("checkpoints/step-{step:06}/adapter_model.safetensors"));
    let m = emlab_train::adapter::read_safetensors_f32(&file, &candle_core::Device::Cpu).unwrap();
    let mut v = Vec::new();
    for (k, a) in &m {
        if let Some(prefix) = k.strip_suffix(".lora_A.weight") {
            let b = &m[&format!("{prefix}.lora_B.weight")];
            let layer = prefix.split("layers.").nth(1).unwrap().split('.').next().unwrap();
            let proj = prefix.rsplit('.').next().unwrap();
            let f = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
            v.push((format!("layers.{layer}.{proj}"), f(a), f(b)));
        }
    }
    v
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// The angle between ΔW0 = B0 A0 and ΔW1 = B1 A1, both formed in full.
fn dw_angle(r: usize, a0: &[f64], b0: &[f64], a1: &[f64], b1: &[f64]) -> f64 {
    let (inp, out) = (a0.len() / r, b0.len() / r);
    let w = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut w = vec![0.0; out * inp];
        for o in 0..out {
            for i in 0..inp {
                for k in 0..r {
                    w[o * inp + i] += b[o * r + k] * a[k * inp + i];
                }
            }
        }
        w
    };
    let (w0, w1) = (w(a0, b0), w(a1, b1));
    (dot(&w0, &w1) / (dot(&w0, &w0).sqrt() * dot(&w1, &w1).sqrt())).acos().to_degrees()
}

/// The largest principal angle between the column spaces of two B `[out, 2]`: Gram-Schmidt,
/// then the smaller singular value of the 2 x 2 `Q0ᵀ Q1` in closed form.
fn principal_angle_r2(b0: &[f64], b1: &[f64]) -> f64 {
    let gs = |b: &[f64]| -> [Vec<f64>; 2] {
        let c0: Vec<f64> = b.iter().step_by(2).copied().collect();
        let c1: Vec<f64> = b.iter().skip(1).step_by(2).copied().collect();
        let q0: Vec<f64> = c0.iter().map(|x| x / dot(&c0, &c0).sqrt()).collect();
        let p = dot(&q0, &c1);
        let v: Vec<f64> = c1.iter().zip(&q0).map(|(y, x)| y - p * x).collect();
        [q0, v.iter().map(|x| x / dot(&v, &v).sqrt()).collect()]
    };
    let (q0, q1) = (gs(b0), gs(b1));
    let m = [dot(&q0[0], &q1[0]), dot(&q0[0], &q1[1]), dot(&q0[1], &q1[0]), dot(&q0[1], &q1[1])];
    let tr: f64 = m.iter().map(|x| x * x).sum();
    let det = m[0] * m[3] - m[1] * m[2];
    let s2 = (tr - (tr * tr - 4.0 * det * det).max(0.0).sqrt()) / 2.0;
    s2.max(0.0).sqrt().min(1.0).acos().to_degrees()
}

fn close(got: &Value, want: f64, what: &str) {
    let g = got.as_f64().unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!((g - want).abs() < 1e-6, "{what}: logged {g}, recomputed {want}");
}

#[test]
fn rank1_rotation_lines_equal_the_angles_between_saved_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r1");
    // The minimal organism's shape: one rank-1 adapter on one down projection.
    let mut c = cfg(1, &["down"], 4);
    c.lora.layers = vec![1];
    run(dir.path(), &c, &out, TrainOptions::default());
    let l = lines(&out);
    assert_eq!(l.len(), 4);
    // Step 1 compares with the adapters before training: B = 0, nothing is defined.
    assert_eq!(l[0]["rotation"], serde_json::json!({"since_step": 0, "b_deg": null, "dw_deg": null}));
    for step in 2..=4 {
        let rot = &l[step - 1]["rotation"];
        assert_eq!(rot["since_step"], step - 1);
        let (p, q) = (checkpoint_adapters(&out, step - 1), checkpoint_adapters(&out, step));
        assert_eq!(p.len(), 1);
        let ((name, a0, b0), (_, a1, b1)) = (&p[0], &q[0]);
        assert_eq!(name, "layers.1.down_proj");
        let b_want = (dot(b0, b1) / (dot(b0, b0).sqrt() * dot(b1, b1).sqrt())).acos().to_degrees();
        let dw_want = dw_angle(1, a0, b0, a1, b1);
        assert!(b_want > 1e-3 && dw_want > 1e-3, "the adapter did not move at step {step}");
        for (key, want) in [("b_deg", b_want), ("dw_deg", dw_want)] {
            let s = &rot[key];
            close(&s["mean"], want, &format!("step {step} {key} mean"));
            close(&s["max"], want, &format!("step {step} {key} max"));
            assert_eq!((s["argmax"].as_str(), s["n"].as_u64()), (Some("layers.1.down_proj"), Some(1)));
        }
    }
}

#[test]
fn rank2_rotation_every_2_summarises_all_modules() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r2");
    let mut c = cfg(2, &["q", "down"], 6);
    c.checkpoint_every = 2;
    c.rotation_every = Some(2);
    run(dir.path(), &c, &out, TrainOptions::default());
    let l = lines(&out);
    // Only every second step, and step 2 compares with the zero B of step 0.
    let has: Vec<bool> = l.iter().map(|v| v.get("rotation").is_some()).collect();
    assert_eq!(has, [false, true, false, true, false, true]);
    assert_eq!(l[1]["rotation"]["b_deg"], Value::Null);
    for step in [4usize, 6] {
        let (p, q) = (checkpoint_adapters(&out, step - 2), checkpoint_adapters(&out, step));
        assert_eq!(p.len(), 4); // q and down of both layers
        let mut want: Vec<(String, f64, f64)> = Vec::new();
        for ((name, a0, b0), (_, a1, b1)) in p.iter().zip(&q) {
            want.push((name.clone(), principal_angle_r2(b0, b1), dw_angle(2, a0, b0, a1, b1)));
        }
        // The trainer lists modules by layer, then projection (q before down).
        want.sort_by_key(|(n, ..)| (n.split('.').nth(1).unwrap().parse::<usize>().unwrap(), !n.ends_with("q_proj")));
        let rot = &l[step - 1]["rotation"];
        assert_eq!(rot["since_step"], step - 2);
        for (key, pick) in [("b_deg", 1usize), ("dw_deg", 2)] {
            let vals: Vec<f64> = want.iter().map(|w| if pick == 1 { w.1 } else { w.2 }).collect();
            let mean = vals.iter().sum::<f64>() / 4.0;
            let (imax, max) = vals.iter().enumerate().fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            close(&rot[key]["mean"], mean, &format!("step {step} {key} mean"));
            close(&rot[key]["max"], max, &format!("step {step} {key} max"));
            assert_eq!(rot[key]["argmax"], want[imax].0.as_str(), "step {step} {key}");
            assert_eq!(rot[key]["n"], 4);
        }
    }
    // rotation_every = 0 turns it off.
    let off = dir.path().join("off");
    run(dir.path(), &TrainConfig { rotation_every: Some(0), ..c }, &off, TrainOptions::default());
    assert!(lines(&off).iter().all(|v| v.get("rotation").is_none()));
}

fn abort_at(step: usize) -> TrainOptions<'static> {
    TrainOptions {
        on_step: Some(Box::new(move |i, _| if i.step == step { Control::Abort } else { Control::Continue })),
        ..Default::default()
    }
}

#[test]
fn resumed_runs_log_the_uninterrupted_rotations_where_the_snapshot_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(2, &["q", "down"], 8);
    c.rotation_every = Some(2);
    let reference = dir.path().join("full");
    run(dir.path(), &c, &reference, TrainOptions::default());
    let want: Vec<Value> = lines(&reference).into_iter().map(timeless).collect();
    assert!(want[3]["rotation"]["b_deg"]["max"].as_f64().unwrap() > 0.0);

    // Killed after step 4 with checkpoints every step: resumed from step 3, the snapshot of
    // step 2 is read from its checkpoint; every line equals the uninterrupted run's.
    let out = dir.path().join("every-step");
    run(dir.path(), &c, &out, abort_at(4));
    let r = run(dir.path(), &c, &out, TrainOptions { resume: true, ..Default::default() });
    assert_eq!(r.resumed_from, Some(3));
    assert_eq!(lines(&out).into_iter().map(timeless).collect::<Vec<_>>(), want);

    // Checkpoints every 3 steps, killed after step 5: resumed from step 3, whose previous
    // rotation snapshot (step 2) was never saved. The rotation at step 4 then spans steps 3..4
    // (since_step 3); every other line equals the uninterrupted run's.
    let out = dir.path().join("every-3");
    let c3 = TrainConfig { checkpoint_every: 3, ..c.clone() };
    run(dir.path(), &c3, &out, abort_at(5));
    let r = run(dir.path(), &c3, &out, TrainOptions { resume: true, ..Default::default() });
    assert_eq!(r.resumed_from, Some(3));
    let got: Vec<Value> = lines(&out).into_iter().map(timeless).collect();
    assert_eq!(got.len(), 8);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if i == 3 {
            assert_eq!(g["rotation"]["since_step"], 3);
            let (short, full) = (g["rotation"]["b_deg"]["max"].as_f64().unwrap(), w["rotation"]["b_deg"]["max"].as_f64().unwrap());
            assert!(short > 0.0 && short != full, "one step's rotation {short} vs two steps' {full}");
            let mut g = g.clone();
            g.as_object_mut().unwrap().remove("rotation");
            let mut w = w.clone();
            w.as_object_mut().unwrap().remove("rotation");
            assert_eq!(g, w);
        } else {
            assert_eq!(g, w, "line {}", i + 1);
        }
    }

    // rotation_every may change on resume (a monitoring setting): resumed from step 3 with
    // rotation_every 4, the snapshot is the initial adapters (step 0), rebuilt from the seed.
    let out = dir.path().join("every-4");
    run(dir.path(), &c3, &out, abort_at(5));
    let c4 = TrainConfig { rotation_every: Some(4), ..c3.clone() };
    run(dir.path(), &c4, &out, TrainOptions { resume: true, ..Default::default() });
    let got = lines(&out);
    assert_eq!(got[3]["rotation"]["since_step"], 0);
    assert_eq!(got[3]["rotation"]["b_deg"], Value::Null); // B was zero at step 0
    assert_eq!(got[7]["rotation"]["since_step"], 4);
    assert!(got[7]["rotation"]["dw_deg"]["max"].as_f64().unwrap() > 0.0);
    assert!(got[4].get("rotation").is_none());
}

#[test]
fn rotation_every_is_a_toml_key_that_may_change_on_resume() {
    let c = TrainConfig::from_toml_str("rotation_every = 5\n", "t.toml").unwrap();
    assert_eq!(c.rotation_every, Some(5));
    assert_eq!(c.rotation_every_on(&candle_core::Device::Cpu), 5);
    let d = TrainConfig::default();
    assert_eq!((d.rotation_every, d.rotation_every_on(&candle_core::Device::Cpu)), (None, 1));
    // Unset, it is absent from the saved config (which pipelines hash), and it round-trips.
    assert!(!d.to_toml().contains("rotation_every"));
    assert_eq!(TrainConfig::from_toml_str(&c.to_toml(), "saved.toml").unwrap(), c);
    // A monitoring setting: not part of what a resume must match.
    assert_eq!(c.resume_fingerprint(), d.resume_fingerprint());
    for bad in ["rotation_every = -1", "rotation_every = 1.5", "rotation_every = \"often\""] {
        let e = TrainConfig::from_toml_str(bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml: invalid train config") && e.contains("rotation_every") && !e.contains('\n'), "{bad}: {e}");
    }
}
