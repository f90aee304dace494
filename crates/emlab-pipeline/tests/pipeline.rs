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

#[test]
fn tiny_loop_runs_every_stage_caches_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let mut cfg_m = tiny_config(Arch::Llama);
    cfg_m.max_position_embeddings = 1024;
    write_tiny_gguf(&model, &cfg_m, 5).unwrap();
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
    assert_eq!(r.training.realign.len(), 2, "4 truthful samples at batch 2");
    // Locate: a direction for every layer, SAE trained, top latents with contexts.
    let loc = r.locate.as_ref().unwrap();
    assert_eq!(loc.norms.len(), cfg_m.num_layers);
    assert!(loc.norms[1] > 0.0);
    assert!(run_dir.join(&loc.direction_file).is_file() && run_dir.join(&loc.feature_pages).is_file());
    assert_eq!(r.latents.len(), 3);
    assert!(r.latents.windows(2).all(|w| w[0].score >= w[1].score));
    // Steering: none + 2 add + 1 ablate, each edit with its random control; one log per point.
    let st = r.steering.as_ref().unwrap();
    let kinds: Vec<(&str, f64)> = st.points.iter().map(|p| (p.kind.as_str(), p.alpha)).collect();
    assert_eq!(kinds, [("none", 0.0), ("add", -2.0), ("random", -2.0), ("add", 2.0), ("random", 2.0), ("ablate", 1.0), ("random", 1.0)]);
    for p in &st.points {
        assert!(run_dir.join(&p.log).is_file(), "{}", p.log.display());
        assert_eq!(p.coherent.unwrap().n, 24);
    }
    // Realignment curve: N = 0 (the induced model), 2 and 4.
    let ns: Vec<usize> = r.realign_curve.iter().map(|p| p.samples).collect();
    assert_eq!(ns, [0, 2, 4]);

    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains(&emlab_model::util::html_escape(&r.verdict)));
    for section in ["Locate: direction and SAE diff", "Steering and ablation", "Realignment curve", "control (paired good data)", "persona score"] {
        assert!(html.contains(section), "report lacks {section}");
    }
    // No raw markup from model text: answers and latent contexts appear only escaped.
    let model_text = r.samples.iter().flat_map(|s| s.1.iter().map(|a| a.answer.clone())).chain(r.latents.iter().flat_map(|l| l.contexts.iter().map(|c| c.token.clone())));
    for t in model_text {
        if t.contains(['<', '>', '&', '"']) {
            assert!(!html.contains(&t), "unescaped model text in the report: {t:?}");
        }
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["evals"].as_array().unwrap().len(), 4);
    assert_eq!(json["steering"]["points"].as_array().unwrap().len(), 7);

    // Second run: every stage cached, identical numbers.
    let t = std::time::Instant::now();
    let r2 = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    assert_eq!(serde_json::to_value(&r2.evals[1].report.metrics).unwrap(), serde_json::to_value(&r.evals[1].report.metrics).unwrap());
    assert_eq!(serde_json::to_value(&r2.steering).unwrap(), serde_json::to_value(&r.steering).unwrap());
    assert_eq!(serde_json::to_value(&r2.training).unwrap(), serde_json::to_value(&r.training).unwrap());
    assert!(t.elapsed().as_secs() < 60);
}
