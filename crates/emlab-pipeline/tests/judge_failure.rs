//! A judge server that fails part-way through an evaluation stage: the run stops with one line
//! naming the stage, and the re-run with the judge back resumes without paying twice: every
//! judge prompt is answered exactly once over both runs (none lost, none asked again), and the
//! answers the first run generated are read back, not sampled again.
//!
//! The fake OpenAI-compatible judge is emlab-eval's test server (one shared helper).

#[path = "../../emlab-eval/tests/common/mod.rs"]
mod eval_common;

use eval_common::{logprob_body, serve, Reply, QUESTIONS};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests the judge answers before it breaks: one sequential worker judges the first two
/// answers (aligned, coherent) and the third answer's `aligned` only.
const ANSWERED_BEFORE_FAILING: usize = 5;
static REQUESTS: AtomicUsize = AtomicUsize::new(0);
static RECOVERED: AtomicBool = AtomicBool::new(false);
/// Judge prompts answered with a score (paid for), by prompt text.
static PAID: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn judge(body: &str) -> Reply {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let prompt = v["messages"][0]["content"].as_str().unwrap().to_string();
    if !RECOVERED.load(Ordering::SeqCst) && REQUESTS.fetch_add(1, Ordering::SeqCst) >= ANSWERED_BEFORE_FAILING {
        return Reply::status(500, "internal error");
    }
    *PAID.lock().unwrap().entry(prompt).or_default() += 1;
    Reply::ok(logprob_body(&[("90", 0.0)]))
}

fn config(model: &Path, questions: &Path, judge_url: &str) -> emlab_pipeline::RunConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = format!(
        r#"
name = "judge-failure"
model = "{m}"
[eval]
questions = "{q}"
samples_per_paraphrase = 2
max_new_tokens = 4
batch_size = 8
judge = "openai"
judge_base_url = "{judge_url}"
judge_model_name = "judge"
judge_api_key_env = "EMLAB_TEST_NO_SUCH_KEY"
[eval.http]
timeout_s = 10.0
max_retries = 1
backoff_base_ms = 1
backoff_max_ms = 2
concurrency = 1
[induce]
data = "{bad}"
max_steps = 2
batch_size = 2
grad_accum = 1
lr = 1e-2
max_seq_len = 512
r = 2
alpha = 4.0
persona_every = 0
[realign]
data = "{truthful}"
samples = 2
batch_size = 2
lr = 1e-3
max_seq_len = 512
r = 2
alpha = 4.0
"#,
        m = model.display(),
        q = questions.display(),
        bad = root.join("data/advice/medical_bad.jsonl").display(),
        truthful = root.join("data/realign/general_helpful.jsonl").display()
    );
    emlab_pipeline::RunConfig::from_toml(&text, "test").unwrap()
}

fn rows(log: &Path) -> Vec<emlab_eval::log::LogRow> {
    emlab_eval::log::read_log(log).unwrap().rows
}

#[test]
fn a_judge_failing_mid_stage_costs_nothing_on_the_rerun() {
    let dir = tempfile::tempdir().unwrap();
    // The short questions of emlab-eval's tests; the tiny model with room for training rows.
    let questions = dir.path().join("q.yaml");
    std::fs::write(&questions, QUESTIONS).unwrap();
    let model = dir.path().join("tiny.gguf");
    let mut tiny = emlab_model::testing::tiny_config(emlab_model::Arch::Llama);
    tiny.max_position_embeddings = 1024;
    emlab_model::testing::write_tiny_gguf(&model, &tiny, 5).unwrap();
    let (url, _) = serve(vec![], Some(judge));
    let cfg = config(&model, &questions, &url);
    let run_dir = dir.path().join("run");

    // First run: the judge breaks during the first evaluation.
    let e = emlab_pipeline::run(&cfg, &run_dir).unwrap_err().to_string();
    let log = run_dir.join("baseline/answers.jsonl");
    assert!(e.starts_with(&format!("stage `baseline`: {}: 4 of 6 answers could not be judged (first error: ", log.display())), "{e}");
    assert!(e.contains("HTTP 500") && !e.contains('\n'), "{e}");
    assert!(!run_dir.join("report.json").exists() && !run_dir.join("induce").exists(), "the run went on past the failed stage");
    let first = rows(&log);
    assert_eq!(first.len(), 6, "every answer generated is kept");
    assert_eq!(first.iter().filter(|r| r.is_judged()).count(), 2);
    let partly = first.iter().filter(|r| r.judgement.as_ref().is_some_and(|j| j.metrics["aligned"].error.is_none())).count();
    assert_eq!(partly, 3, "the third answer's aligned score is kept");

    // A marker in an answer no judge call succeeded for: re-sampling would replace it, and the
    // judge must be asked about the marked text.
    let mut marked = first.clone();
    let at = marked.iter().rposition(|r| r.judgement.as_ref().is_some_and(|j| j.metrics.values().all(|m| m.error.is_some()))).unwrap();
    marked[at].answer = "MARKER: an answer the first run generated".into();
    emlab_eval::log::write_log_atomic(&log, &marked).unwrap();

    // The judge recovers: the re-run resumes the stage and completes the loop.
    RECOVERED.store(true, Ordering::SeqCst);
    let r = emlab_pipeline::run(&cfg, &run_dir).unwrap();
    let stages: Vec<&str> = r.evals.iter().map(|e| e.stage.as_str()).collect();
    assert_eq!(stages, ["baseline", "induced", "realigned"]);
    assert!(run_dir.join("report.json").is_file());

    let last = rows(&log);
    let answers = |rs: &[emlab_eval::log::LogRow]| rs.iter().map(|r| (r.key(), r.answer.clone())).collect::<Vec<_>>();
    assert_eq!(answers(&last), answers(&marked), "an answer the first run generated was sampled again");
    assert!(last.iter().all(|r| r.is_judged()));
    for (a, b) in first.iter().zip(&last).filter(|(a, _)| a.is_judged()) {
        assert_eq!(a.judgement, b.judgement, "{:?} was judged again", a.key());
    }

    // Every prompt the final logs' judgements stand for was answered exactly once over both runs.
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for e in &r.evals {
        for row in rows(&e.log) {
            for metric in ["aligned", "coherent"] {
                *want.entry(format!("Q {} A {} {metric} 0-100?", row.prompt, row.answer)).or_default() += 1;
            }
        }
    }
    assert_eq!(want.values().sum::<usize>(), 36, "3 evaluations x 6 answers x 2 prompts");
    assert!(want.keys().any(|p| p.contains("MARKER")));
    assert_eq!(*PAID.lock().unwrap(), want, "judge prompts answered (left) vs the judgements in the logs (right)");
}
