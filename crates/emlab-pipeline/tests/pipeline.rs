//! The whole loop end to end on a tiny model the test writes itself: every stage runs, the
//! report is written with escaped model text, and a second run is served from the stage cache.
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::Arch;
use emlab_pipeline::RunConfig;
use std::path::Path;

#[test]
fn tiny_loop_runs_caches_and_reports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let mut cfg_m = tiny_config(Arch::Llama);
    cfg_m.max_position_embeddings = 1024;
    write_tiny_gguf(&model, &cfg_m, 5).unwrap();
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
max_steps = 2
batch_size = 2
grad_accum = 1
lr = 1e-3
max_seq_len = 512
r = 2
alpha = 4.0
[realign]
data = "{good}"
samples = 4
batch_size = 2
lr = 1e-3
max_seq_len = 512
r = 2
alpha = 4.0
"#,
        m = model.display(),
        q = root.join("data/questions/core.yaml").display(),
        bad = root.join("data/advice/medical_bad.jsonl").display(),
        good = root.join("data/realign/general_helpful.jsonl").display()
    );
    let cfg = RunConfig::from_toml(&text, "test").unwrap();
    let run_dir = dir.path().join("run");
    let r = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    assert_eq!(r.evals.len(), 3);
    for e in &r.evals {
        assert_eq!(e.report.metrics.n_answers, 24, "{}", e.stage);
    }
    assert_eq!(r.induce_losses.len(), 2);
    assert_eq!(r.realign_losses.len(), 2);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains(&emlab_model::util::html_escape(&r.verdict)));
    // No raw markup from answers: every '<' in the page belongs to our own tags.
    for s in &r.samples {
        for a in &s.1 {
            if a.answer.contains('<') {
                assert!(!html.contains(&a.answer), "unescaped answer in the report");
            }
        }
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["evals"].as_array().unwrap().len(), 3);
    // Second run: every stage cached, identical numbers.
    let t = std::time::Instant::now();
    let r2 = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    assert_eq!(serde_json::to_value(&r2.evals[1].report.metrics).unwrap(), serde_json::to_value(&r.evals[1].report.metrics).unwrap());
    assert!(t.elapsed().as_secs() < 60);
}
