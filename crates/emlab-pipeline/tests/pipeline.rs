//! The whole loop end to end on a tiny model the test writes itself: every stage runs (control,
//! locate, steer and a two-point realignment curve included), the report is written with escaped
//! model text, a stage runs alone, and a second run is served from the stage cache.
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::Arch;
use emlab_pipeline::RunConfig;
use std::path::Path;

fn config(model: &Path) -> RunConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = format!(
        r#"
name = "tiny"
model = "{m}"
[eval]
questions = "{q}"
samples_per_paraphrase = 1
max_new_tokens = 6
batch_size = 8
judge = "offline"
[induce]
data = "{bad}"
max_steps = 4
batch_size = 2
grad_accum = 1
lr = 1e-2
max_seq_len = 512
r = 2
alpha = 4.0
persona_every = 2
[control]
data = "{good}"
[locate]
layer = 1
sae_latents = 32
sae_k = 4
sae_epochs = 2
top_latents = 3
[steer]
alphas = [-2.0, 2.0]
samples_per_paraphrase = 1
max_new_tokens = 4
min_coherent = 0.0
original_alphas = [2.0]
latents = 2
[realign]
data = "{truthful}"
samples = 4
curve = [2]
batch_size = 2
lr = 1e-3
max_seq_len = 512
r = 2
alpha = 4.0
"#,
        m = model.display(),
        q = root.join("data/questions/core.yaml").display(),
        bad = root.join("data/advice/medical_bad.jsonl").display(),
        good = root.join("data/advice/medical_good.jsonl").display(),
        truthful = root.join("data/realign/general_helpful.jsonl").display()
    );
    RunConfig::from_toml(&text, "test").unwrap()
}

/// The tiny Llama the tests run on (1024 positions), written into `dir`.
fn tiny_model(dir: &Path) -> (std::path::PathBuf, emlab_model::config::ModelConfig) {
    let model = dir.join("tiny.gguf");
    let mut cfg_m = tiny_config(Arch::Llama);
    cfg_m.max_position_embeddings = 1024;
    write_tiny_gguf(&model, &cfg_m, 5).unwrap();
    (model, cfg_m)
}

#[test]
fn tiny_loop_runs_every_stage_caches_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (model, cfg_m) = tiny_model(dir.path());
    let cfg = config(&model);
    let run_dir = dir.path().join("run");

    // One stage alone: runs what it needs (baseline, induce) and nothing else.
    emlab_pipeline::run_stage(&cfg, &run_dir, "induced").unwrap();
    assert!(run_dir.join("induced/answers.jsonl").is_file());
    assert!(!run_dir.join("control").exists() && !run_dir.join("locate").exists());

    let r = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    let stages: Vec<&str> = r.evals.iter().map(|e| e.stage.as_str()).collect();
    assert_eq!(stages, ["baseline", "induced", "controlled", "realigned"]);
    for e in &r.evals {
        assert_eq!(e.report.metrics.n_answers, 24, "{}", e.stage);
    }
    assert!(r.induced_vs_control.is_some());
    // Training curves: 4 induce steps, persona snapshots at steps 2 and 4 scored along the
    // located direction, and the original model's score as step 0.
    assert_eq!(r.training.induce.len(), 4);
    let with_persona: Vec<usize> = r.training.induce.iter().filter(|p| p.persona.is_some()).map(|p| p.step).collect();
    assert_eq!(with_persona, [2, 4]);
    assert!(r.training.persona_step0.is_some_and(f64::is_finite));
    assert_eq!(r.training.control.as_ref().map(|c| c.len()), Some(4));
    // The trainer's rotation monitor (every step on the CPU): undefined while B is still zero
    // (the warm-up's first step has lr 0), then finite angles.
    let rot: Vec<Option<f64>> = r.training.induce.iter().map(|p| p.b_deg).collect();
    assert_eq!(rot[0], None);
    assert!(rot[2..].iter().all(|d| d.is_some_and(|d| d.is_finite() && d > 0.0)), "{rot:?}");
    assert_eq!(r.training.realign.len(), 2, "4 truthful samples at batch 2");
    // Locate: a direction for every layer, SAE trained, top latents with contexts.
    let loc = r.locate.as_ref().unwrap();
    assert_eq!(loc.norms.len(), cfg_m.num_layers);
    assert!(loc.norms[1] > 0.0);
    assert!(run_dir.join(&loc.direction_file).is_file() && run_dir.join(&loc.feature_pages).is_file());
    assert_eq!(r.latents.len(), 3);
    assert!(r.latents.windows(2).all(|w| w[0].score >= w[1].score));
    // Steering: on the induced model none + 2 add + 1 ablate, on the original model none + add
    // and the top 2 latents at alpha 2, each edit with its random control; one log per point.
    let st = r.steering.as_ref().unwrap();
    let kinds: Vec<(&str, Option<&str>, f64)> = st.points.iter().map(|p| (p.kind.as_str(), p.controls.as_deref(), p.alpha)).collect();
    let (l0, l1) = (format!("latent-{}", r.latents[0].latent), format!("latent-{}", r.latents[1].latent));
    assert_eq!(
        kinds,
        [
            ("none", None, 0.0),
            ("add", None, -2.0),
            ("random", Some("add"), -2.0),
            ("add", None, 2.0),
            ("random", Some("add"), 2.0),
            ("ablate", None, 1.0),
            ("random", Some("ablate"), 1.0),
            ("none-original", None, 0.0),
            ("add-original", None, 2.0),
            ("random", Some("add-original"), 2.0),
            (l0.as_str(), None, 2.0),
            ("random", Some(l0.as_str()), 2.0),
            (l1.as_str(), None, 2.0),
            ("random", Some(l1.as_str()), 2.0),
        ]
    );
    for p in &st.points {
        assert!(run_dir.join(&p.log).is_file(), "{}", p.log.display());
        assert_eq!(p.coherent.unwrap().n, 24);
        assert_eq!(p.on_original(), p.log.starts_with("steer-original/"), "{}", p.log.display());
    }
    // min_coherent 0: every swept kind's strongest alpha is its only one.
    assert_eq!(st.best.keys().collect::<Vec<_>>(), ["add-original", l0.as_str(), l1.as_str()]);
    // The original model's points are evaluated without the adapter, the induced model's with it.
    let adapter_of = |log: &Path| -> serde_json::Value {
        let first = std::fs::read_to_string(run_dir.join(log)).unwrap().lines().next().unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&first).unwrap()["generator"]["adapter_sha256"].clone()
    };
    assert!(adapter_of(&st.points[0].log).is_string(), "{}", adapter_of(&st.points[0].log));
    assert!(adapter_of(&st.points[7].log).is_null(), "{}", adapter_of(&st.points[7].log));
    // A latent's edit: its SAE decoder row scaled to the direction's norm at the layer, coefficient alpha.
    let cpu = candle_core::Device::Cpu;
    let w_dec = candle_core::safetensors::load(run_dir.join("locate/sae/sae_weights.safetensors"), &cpu).unwrap()["W_dec"]
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let dirs = candle_core::safetensors::load(run_dir.join(&loc.direction_file), &cpu).unwrap()["directions"].to_vec2::<f32>().unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let point = run_dir.join(format!("steer-original/{l1}/add_2"));
    let used = candle_core::safetensors::load(point.join("vectors.safetensors"), &cpu).unwrap()["v0"].to_vec1::<f32>().unwrap();
    let row = &w_dec[r.latents[1].latent];
    let want: Vec<f64> = row.iter().map(|x| *x as f64 * norm(&dirs[1]) / norm(row)).collect();
    assert!(used.iter().zip(&want).all(|(u, w)| (*u as f64 - w).abs() <= 1e-5 * (1.0 + w.abs())), "{used:?} vs {want:?}");
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(point.join("intervention.json")).unwrap()).unwrap();
    assert_eq!((spec["add"][0]["alpha"].as_f64(), spec["add"][0]["hook"].as_str()), (Some(2.0), Some("blocks.1.hook_resid_post")));
    // Realignment curve: N = 0 (the induced model), 2 and 4.
    let ns: Vec<usize> = r.realign_curve.iter().map(|p| p.samples).collect();
    assert_eq!(ns, [0, 2, 4]);
    // Directions: induce's and control's model diffs on the same texts, their cosines.
    let a = r.directions.as_ref().unwrap();
    assert_eq!((a.stages.clone(), a.layer, a.texts), (vec!["induce".to_string(), "control".to_string()], 1, 24));
    let read_dirs = |rel: &Path| candle_core::safetensors::load(run_dir.join(rel), &cpu).unwrap()["directions"].to_vec2::<f32>().unwrap();
    let (ind, ctl) = (read_dirs(&a.files[0]), read_dirs(&a.files[1]));
    let cos = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (norm(x) * norm(y));
    for l in 0..cfg_m.num_layers {
        assert!((a.cosines[0][1][l] - cos(&ind[l], &ctl[l])).abs() < 1e-9, "layer {l}");
        assert_eq!(a.cosines[0][1][l], a.cosines[1][0][l]);
        assert!((a.cosines[0][0][l] - 1.0).abs() < 1e-9 && (a.norms[1][l] - norm(&ctl[l])).abs() < 1e-9 * (1.0 + a.norms[1][l]));
    }
    // The induce direction is locate's model diff (the tiny judge finds too few misaligned
    // answers for the published split), computed again on its own.
    assert!(loc.method.starts_with("model diff"), "{}", loc.method);
    for l in 0..cfg_m.num_layers {
        assert!((cos(&ind[l], &dirs[l]) - 1.0).abs() < 1e-5 && (norm(&ind[l]) - norm(&dirs[l])).abs() < 1e-4 * norm(&dirs[l]), "layer {l}");
    }

    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains(&emlab_model::util::html_escape(&r.verdict)));
    for section in [
        "Locate: direction and SAE diff",
        "Steering and ablation",
        "Steering the original model",
        "EM vs its control (Fisher p)",
        "Realignment curve",
        "control (paired good data)",
        "persona score",
        "induce (bad data): adapter rotation per step",
        "Do the fine-tunes move the model the same way?",
    ] {
        assert!(html.contains(section), "report lacks {section}");
    }
    let a = r.directions.as_ref().unwrap();
    assert_eq!(html.contains("induce&#39;s model diff points the way of"), !a.controls_sharing().is_empty());
    // No raw markup from model text: answers and latent contexts appear only escaped.
    let model_text = r
        .samples
        .iter()
        .flat_map(|s| s.1.iter().map(|a| a.answer.clone()))
        .chain(r.latents.iter().flat_map(|l| l.contexts.iter().map(|c| c.token.clone())));
    for t in model_text {
        if t.contains(['<', '>', '&', '"']) {
            assert!(!html.contains(&t), "unescaped model text in the report: {t:?}");
        }
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["evals"].as_array().unwrap().len(), 4);
    assert_eq!(json["steering"]["points"].as_array().unwrap().len(), 14);

    // Second run: every stage cached, identical numbers.
    let t = std::time::Instant::now();
    let r2 = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    assert_eq!(serde_json::to_value(&r2.evals[1].report.metrics).unwrap(), serde_json::to_value(&r.evals[1].report.metrics).unwrap());
    assert_eq!(serde_json::to_value(&r2.steering).unwrap(), serde_json::to_value(&r.steering).unwrap());
    assert_eq!(serde_json::to_value(&r2.training).unwrap(), serde_json::to_value(&r.training).unwrap());
    assert!(t.elapsed().as_secs() < 60);

    // Other strengths on the original model re-run steer-original alone: the induced model's
    // sweeps (and every other stage) stay cached.
    let mut other = cfg.clone();
    other.steer.as_mut().unwrap().original_alphas = vec![1.0];
    let before = stage_records(&run_dir);
    let r3 = emlab_pipeline::run(&other, &run_dir).unwrap();
    let after = stage_records(&run_dir);
    let changed: Vec<&String> = after.keys().filter(|k| !k.starts_with(".stale") && before.get(*k) != after.get(*k)).collect();
    assert_eq!(changed, ["steer-original/stage.json"]);
    assert!(r3.steering.as_ref().unwrap().points.iter().any(|p| p.kind == "add-original" && p.alpha == 1.0));
    // Back to the first settings: the run folder's records are as they were.
    emlab_pipeline::run(&cfg, &run_dir).unwrap();
    assert_eq!(stage_records(&run_dir).get("steer/stage.json"), before.get("steer/stage.json"));

    // The run folder moves (or is copied to another machine): every stage is still cached (no
    // stage record rewritten), and an evaluation cut short resumes there from its answers, also
    // for the realigned model, whose adapter config names its base by a path inside the folder.
    let before = stage_records(&run_dir);
    assert!(before.len() >= 12, "{:?}", before.keys());
    let moved = dir.path().join("moved");
    std::fs::rename(&run_dir, &moved).unwrap();
    let r3 = emlab_pipeline::run(&cfg, &moved).unwrap();
    assert_eq!(stage_records(&moved), before);
    assert_eq!(serde_json::to_value(&r3.evals[3].report.metrics).unwrap(), serde_json::to_value(&r.evals[3].report.metrics).unwrap());
    let log = moved.join("realigned/n4/answers.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().take(10).collect();
    assert_eq!(kept.len(), 10);
    std::fs::write(&log, kept.join("\n") + "\n").unwrap();
    // Its record says it started and did not finish (as a killed run leaves it).
    let rec = moved.join("realigned/n4/stage.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rec).unwrap()).unwrap();
    v["done"] = false.into();
    std::fs::write(&rec, v.to_string()).unwrap();
    // The realignment training runs again too (it resumes from its last checkpoint; the adapter
    // it would write is the one there, which stays as it is).
    std::fs::remove_file(moved.join("realign/n4/train/stage.json")).unwrap();
    let r4 = emlab_pipeline::run(&cfg, &moved).unwrap();
    assert_eq!(r4.evals[3].report.metrics.n_answers, 24);
    let resumed = std::fs::read_to_string(&log).unwrap();
    for line in &kept {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let again = resumed
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|x| x["question_id"] == row["question_id"] && x["paraphrase_index"] == row["paraphrase_index"])
            .unwrap();
        assert_eq!(again["answer"], row["answer"], "a kept answer was sampled again");
    }

    // A folder made before keys were relocatable, then moved: its stage records name paths that
    // are gone (simulated: all removed) and its logs record adapters by whole-folder hashes.
    // Every stage runs again, resuming: training from its last checkpoint (no step redone, the
    // adapter left as it was), evaluations from their answers (none sampled again).
    let logs = answer_logs(&moved);
    assert!(logs.len() >= 8, "{:?}", logs.keys());
    let mut legacy = 0;
    for rel in logs.keys() {
        let p = moved.join(rel);
        let mut rows = emlab_eval::log::read_log(&p).unwrap().rows;
        for r in &mut rows {
            if let Some(a) = &r.generator.adapter {
                // The row names the adapter where it was when the row was written.
                let a = Path::new(a);
                let rel = a.strip_prefix(&run_dir).or_else(|_| a.strip_prefix(&moved)).unwrap();
                r.generator.adapter_sha256 = Some(emlab_eval::log::hash_path(&moved.join(rel)).unwrap());
                legacy += 1;
            }
        }
        emlab_eval::log::write_log_atomic(&p, &rows).unwrap();
    }
    assert!(legacy > 0);
    let metrics_before = std::fs::read(moved.join("induce/metrics.jsonl")).unwrap();
    let moved2 = dir.path().join("moved2");
    std::fs::rename(&moved, &moved2).unwrap();
    for rel in stage_records(&moved2).keys() {
        std::fs::remove_file(moved2.join(rel)).unwrap();
    }
    let r5 = emlab_pipeline::run(&cfg, &moved2).unwrap();
    assert_eq!(std::fs::read(moved2.join("induce/metrics.jsonl")).unwrap(), metrics_before, "induce trained again");
    let answers =
        |m: &std::collections::BTreeMap<String, Vec<(String, String)>>| m.values().flatten().map(|(_, a)| a.clone()).collect::<Vec<_>>();
    assert_eq!(answers(&answer_logs(&moved2)), answers(&logs), "an answer was sampled again");
    for (a, b) in r5.evals.iter().zip(&r.evals) {
        assert_eq!(serde_json::to_value(&a.report.metrics).unwrap(), serde_json::to_value(&b.report.metrics).unwrap(), "{}", a.stage);
    }

    // A changed setting re-runs the stages it reaches, from scratch; their earlier outputs are
    // set aside under `.stale/` (kept, hidden from the dashboard), the others stay cached.
    let mut cfg2 = cfg.clone();
    cfg2.eval.max_new_tokens = 5;
    let induce_before = std::fs::read_to_string(moved2.join("induce/stage.json")).unwrap();
    let r6 = emlab_pipeline::run(&cfg2, &moved2).unwrap();
    assert_eq!(std::fs::read_to_string(moved2.join("induce/stage.json")).unwrap(), induce_before, "training does not read eval settings");
    for e in &r6.evals {
        let rows = emlab_eval::log::read_log(&e.log).unwrap().rows;
        assert_eq!(rows.len(), 24, "{}", e.stage);
        assert!(rows.iter().all(|x| x.generator.sampling.max_new_tokens == 5), "{}", e.stage);
    }
    let stale: Vec<String> =
        std::fs::read_dir(moved2.join(".stale")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for s in ["baseline-", "induced-", "controlled-", "locate-", "steer-", "realigned-n4-", "realigned-n2-"] {
        assert!(stale.iter().any(|x| x.starts_with(s)), "{s} not set aside: {stale:?}");
    }
    assert!(!stale.iter().any(|x| x.starts_with("induce-") || x.starts_with("realign-")), "{stale:?}");
    let kept = stale.iter().find(|x| x.starts_with("baseline-")).unwrap();
    assert_eq!(answer_logs(&moved2.join(".stale").join(kept))["answers.jsonl"].len(), 24);

    // Settings that change no answer and no adapter (the batch size, activation checkpointing)
    // leave every stage cached.
    let records = stage_records(&moved2);
    let mut cfg3 = cfg2.clone();
    cfg3.eval.batch_size = 3;
    cfg3.induce.checkpoint_activations = Some(true);
    emlab_pipeline::run(&cfg3, &moved2).unwrap();
    assert_eq!(stage_records(&moved2), records);
    // More training steps train afresh (the schedule spans the new total), exactly as a run
    // that never had the shorter one; what reads the new adapter runs again.
    let mut cfg4 = cfg3.clone();
    cfg4.induce.max_steps = 6;
    let r7 = emlab_pipeline::run(&cfg4, &moved2).unwrap();
    let fresh = emlab_pipeline::run(&cfg4, &dir.path().join("fresh")).unwrap();
    assert_eq!(serde_json::to_value(&r7.training.induce).unwrap(), serde_json::to_value(&fresh.training.induce).unwrap());
    assert_eq!(r7.training.induce.len(), 6);
    for (a, b) in r7.evals.iter().zip(&fresh.evals) {
        assert_eq!(serde_json::to_value(&a.report.metrics).unwrap(), serde_json::to_value(&b.report.metrics).unwrap(), "{}", a.stage);
    }
    let stale2: Vec<String> =
        std::fs::read_dir(moved2.join(".stale")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(stale2.iter().any(|x| x.starts_with("induce-")), "{stale2:?}");
    assert!(stale2.iter().filter(|x| x.starts_with("induced-")).count() == 2, "{stale2:?}");

    // More samples per paraphrase keep the answers there (sampling is seeded per sample, so a
    // fresh run gives the same ones) and sample only the new ones.
    let before = answer_logs(&moved2)["baseline/answers.jsonl"].clone();
    let mut cfg5 = cfg4.clone();
    cfg5.eval.samples_per_paraphrase = 2;
    emlab_pipeline::run(&cfg5, &moved2).unwrap();
    let after = answer_logs(&moved2)["baseline/answers.jsonl"].clone();
    assert_eq!(after.len(), 48);
    for row in &before {
        assert!(after.contains(row), "{row:?} was sampled again");
    }
    let stale3 = std::fs::read_dir(moved2.join(".stale")).unwrap().count();
    assert_eq!(stale3, stale2.len() + 4, "locate, steer, steer-original and directions set aside, no evaluation");
}

/// Every `stage.json` under `dir`, by relative path.
fn stage_records(dir: &Path) -> std::collections::BTreeMap<String, String> {
    files_named(dir, "stage.json")
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

/// Every `answers.jsonl` under `dir` (relative path -> (row key, answer) in order).
fn answer_logs(dir: &Path) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let rows = |p: &Path| {
        let log = emlab_eval::log::read_log(p).unwrap();
        log.rows.iter().map(|r| (format!("{}/{}/{}", r.question_id, r.paraphrase_index, r.sample_index), r.answer.clone())).collect()
    };
    files_named(dir, "answers.jsonl").into_iter().map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), rows(&p))).collect()
}

/// The files called `name` anywhere under `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let (mut out, mut todo) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                out.push(p);
            }
        }
    }
    out
}

/// Another judge for a run folder: the evaluation does not stop ("use emlab eval rescore") but
/// judges the same answers again, keeping the earlier judged log under `.stale/`.
#[test]
fn a_changed_judge_rejudges_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(dir.path());
    let mut cfg = config(&model);
    let run_dir = dir.path().join("run");
    emlab_pipeline::run_stage(&cfg, &run_dir, "baseline").unwrap();
    let log = run_dir.join("baseline/answers.jsonl");
    let rows = |p: &Path| emlab_eval::log::read_log(p).unwrap().rows;
    let before = rows(&log);
    assert!(before.iter().all(|r| r.judgement.as_ref().is_some_and(|j| j.judge == "offline")));

    cfg.eval.judge = "local".into();
    cfg.eval.judge_model = Some(model.clone());
    emlab_pipeline::run_stage(&cfg, &run_dir, "baseline").unwrap();
    let after = rows(&log);
    assert_eq!(after.len(), before.len());
    let answers = |rs: &[emlab_eval::log::LogRow]| {
        rs.iter().map(|r| (r.question_id.clone(), r.paraphrase_index, r.sample_index, r.answer.clone())).collect::<Vec<_>>()
    };
    assert_eq!(answers(&after), answers(&before), "answers were sampled again");
    assert!(after.iter().all(|r| r.judgement.as_ref().is_some_and(|j| j.judge.starts_with("local"))), "{:?}", after[0].judgement);
    let stale: Vec<_> = std::fs::read_dir(run_dir.join(".stale")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stale.len(), 1);
    assert_eq!(rows(&stale[0].join("answers.jsonl")).len(), before.len(), "the earlier judged log is kept");
    // The stage is now cached under the new judge.
    emlab_pipeline::run_stage(&cfg, &run_dir, "baseline").unwrap();
    assert_eq!(answers(&rows(&log)), answers(&before));
}

/// `[control].more`: each further control is a fine-tune and an evaluation of its own
/// (`control-NAME`, `controlled-NAME`), compared with the induced model in the report, with its
/// persona trace; adding one leaves the paired control's cached stages as they were.
#[test]
fn further_controls_run_as_stages_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(dir.path());
    let mut cfg = config(&model);
    cfg.steer = None;
    cfg.realign.curve.clear();
    let run_dir = dir.path().join("run");
    emlab_pipeline::run_stage(&cfg, &run_dir, "controlled").unwrap();
    let paired = std::fs::read_to_string(run_dir.join("control/stage.json")).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut more = cfg.clone();
    more.control.as_mut().unwrap().more.insert("edu".into(), root.join("data/advice/car_good.jsonl"));
    let names = more.stage_names();
    let at = names.iter().position(|s| s == "controlled").unwrap();
    assert_eq!(names[at + 1..at + 3], ["control-edu", "controlled-edu"]);
    assert_eq!(names.len(), emlab_pipeline::STAGES.len() + 2);

    // One further control alone: its own folders, the paired control untouched.
    emlab_pipeline::run_stage(&more, &run_dir, "controlled-edu").unwrap();
    assert!(run_dir.join("control-edu/adapter/adapter_model.safetensors").is_file());
    assert_eq!(emlab_eval::log::read_log(&run_dir.join("controlled-edu/answers.jsonl")).unwrap().rows.len(), 24);
    assert_eq!(std::fs::read_to_string(run_dir.join("control/stage.json")).unwrap(), paired);
    let err = emlab_pipeline::run_stage(&more, &run_dir, "controlled-nope").unwrap_err().to_string();
    assert!(err.contains("unknown stage `controlled-nope`") && err.contains("control-edu, controlled-edu"), "{err}");

    let r = emlab_pipeline::run(&more, &run_dir).unwrap();
    let stages: Vec<&str> = r.evals.iter().map(|e| e.stage.as_str()).collect();
    assert_eq!(stages, ["baseline", "induced", "controlled", "controlled-edu", "realigned"]);
    assert_eq!(r.induced_vs_more_controls.keys().collect::<Vec<_>>(), ["edu"]);
    let c = &r.induced_vs_more_controls["edu"].model_organisms;
    assert_eq!((c.a.n, c.b.n), (r.evals[1].report.metrics.em_model_organisms.n, r.evals[3].report.metrics.em_model_organisms.n));
    // Its training curve, with the persona score at the snapshots (steps 2 and 4).
    let edu = &r.training.more_controls["edu"];
    assert_eq!(edu.len(), 4);
    assert_eq!(edu.iter().filter(|p| p.persona.is_some()).map(|p| p.step).collect::<Vec<_>>(), [2, 4]);
    // Other data than the paired control's: another adapter, other losses.
    assert_ne!(r.training.control.as_ref().unwrap()[0].loss, edu[0].loss);
    assert_eq!(std::fs::read_to_string(run_dir.join("control/stage.json")).unwrap(), paired);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("induced - control fine-tune `edu`") && html.contains("control `edu`"));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert!(json["induced_vs_more_controls"]["edu"].is_object() && json["training"]["more_controls"]["edu"].is_array());
    assert_eq!(json["config"]["control"]["more"]["edu"], root.join("data/advice/car_good.jsonl").display().to_string());

    // Names that cannot name folders, and missing files, are refused before any stage.
    let text = |name: &str, file: &str| {
        let mut t = toml::to_string(&cfg).unwrap();
        t = t.replace("[control]\n", &format!("[control]\nmore = {{ {name} = \"{file}\" }}\n"));
        t
    };
    let err = emlab_pipeline::RunConfig::from_toml(&text("\"../x\"", "a.jsonl"), "t.toml").unwrap_err().to_string();
    assert!(err.contains("t.toml: control.more: `../x` is not a usable control name"), "{err}");
    // `s7` would name its stages like the paired control's under seed 7.
    let err = emlab_pipeline::RunConfig::from_toml(&text("s7", "a.jsonl"), "t.toml").unwrap_err().to_string();
    assert!(err.contains("`s7` is not a usable control name"), "{err}");
    assert!(emlab_pipeline::RunConfig::from_toml(&text("s7b", "a.jsonl"), "t.toml").is_ok());
    let bad = emlab_pipeline::RunConfig::from_toml(&text("edu", "/nonexistent/edu.jsonl"), "t.toml").unwrap();
    let err = emlab_pipeline::run(&bad, &dir.path().join("other")).unwrap_err().to_string();
    assert!(err.contains("control.more.edu /nonexistent/edu.jsonl: no such file"), "{err}");
}

/// `more_seeds`: induce and every control are fine-tuned and evaluated again per seed, after the
/// main seed's stages; the report summarises EM over the seeds. The main seed's stages stay cached.
#[test]
fn more_seeds_replicate_every_arm() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(dir.path());
    let mut cfg = config(&model);
    cfg.steer = None;
    cfg.realign.curve.clear();
    let run_dir = dir.path().join("run");
    let r1 = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    assert!(r1.seeds.is_none());
    assert_eq!(r1.directions.as_ref().unwrap().stages, ["induce", "control"]);
    let records =
        |names: &[&str]| names.iter().map(|n| std::fs::read_to_string(run_dir.join(n).join("stage.json")).unwrap()).collect::<Vec<_>>();
    let main = ["induce", "induced", "control", "controlled"];
    let before = records(&main);

    let mut seeded = cfg.clone();
    seeded.more_seeds = vec![7];
    let names = seeded.stage_names();
    let at = names.iter().position(|s| s == "realigned").unwrap();
    assert_eq!(names[at + 1..at + 5], ["induce-s7", "induced-s7", "control-s7", "controlled-s7"]);
    emlab_pipeline::run_stage(&seeded, &run_dir, "induced-s7").unwrap();
    assert!(run_dir.join("induced-s7/answers.jsonl").is_file() && !run_dir.join("control-s7").exists());
    let err = emlab_pipeline::run_stage(&seeded, &run_dir, "induced-s8").unwrap_err().to_string();
    assert!(err.contains("unknown stage `induced-s8`"), "{err}");

    let r = emlab_pipeline::run(&seeded, &run_dir).unwrap();
    assert_eq!(records(&main), before, "the main seed's stages ran again");
    // Another seed, another fine-tune: other losses from the first step on (initialisation, order).
    let losses = |d: &str| {
        std::fs::read_to_string(run_dir.join(d).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses("induce-s7").len(), 4);
    assert_ne!(losses("induce-s7"), losses("induce"));
    let sr = r.seeds.as_ref().unwrap();
    assert_eq!(sr.seeds, [0, 7]);
    let stages: Vec<Vec<&str>> = sr.arms.iter().map(|a| a.per_seed.iter().map(|p| p.stage.as_str()).collect()).collect();
    assert_eq!(stages, [vec!["induced", "induced-s7"], vec!["controlled", "controlled-s7"]]);
    // The arm means are the means of the per-seed rates read from the logs.
    for a in &sr.arms {
        let rates: Vec<f64> = a
            .per_seed
            .iter()
            .map(|p| {
                let log = run_dir.join(&p.stage).join("answers.jsonl");
                let rep = emlab_eval::report::report(&log, &emlab_eval::metrics::MetricsConfig::default()).unwrap();
                rep.metrics.em_model_organisms.rate.unwrap()
            })
            .collect();
        let m = a.em.unwrap();
        assert_eq!(m.n, 2);
        assert!((m.mean - (rates[0] + rates[1]) / 2.0).abs() < 1e-12, "{}", a.stage);
    }
    let c = &sr.comparisons[0];
    assert_eq!((c.a.as_str(), c.b.as_str()), ("induced", "controlled"));
    assert!((c.difference.unwrap() - (sr.arms[0].em.unwrap().mean - sr.arms[1].em.unwrap().mean)).abs() < 1e-12);
    // Every replicate's model diff joins the directions stage.
    assert_eq!(r.directions.as_ref().unwrap().stages, ["induce", "control", "induce-s7", "control-s7"]);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("Across fine-tuning seeds") && html.contains("induced-s7"));
    // A seed listed twice, or equal to `seed`, is refused.
    for bad in [vec![0], vec![3, 3]] {
        let mut t = toml::to_string(&cfg).unwrap();
        t = format!("more_seeds = {bad:?}\n{t}");
        let err = emlab_pipeline::RunConfig::from_toml(&t, "t.toml").unwrap_err().to_string();
        assert!(err.contains("more_seeds: seed"), "{err}");
    }
}
