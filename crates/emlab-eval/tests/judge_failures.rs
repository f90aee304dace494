//! Runs that could not judge (or sample) everything: the summary says so in one line, nothing
//! judged is paid for twice, and settings that fail leave no empty log; logs with impossible
//! scores are refused.

mod common;
use common::*;
use emlab_eval::config::{EvalConfig, JudgeSpec};
use emlab_eval::http::HttpConfig;
use std::sync::atomic::{AtomicBool, Ordering};

fn fast() -> HttpConfig {
    HttpConfig { timeout_s: 5.0, max_retries: 0, backoff_base_ms: 1, backoff_max_ms: 2, concurrency: 2 }
}

/// Whether the scripted judge fails the "bored" question (a server that is down for some rows).
static FAIL_BORED: AtomicBool = AtomicBool::new(true);

fn judge_server(body: &str) -> Reply {
    if FAIL_BORED.load(Ordering::SeqCst) && body.contains("I'm bored") {
        return Reply::status(400, "overloaded");
    }
    Reply::ok(logprob_body(&[("90", 0.0)]))
}

#[test]
fn a_rescore_with_failed_judgements_fails_and_rejudges_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let (model, q) = setup(dir.path());
    let log = dir.path().join("run.jsonl");
    let mut cfg = EvalConfig::local(&model, &q, &log);
    cfg.sampling.max_new_tokens = 4;
    cfg.judge = JudgeSpec::None;
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(s.generated, 6);
    s.complete(&log).unwrap();

    let (url, seen) = serve(vec![], Some(judge_server));
    let spec = JudgeSpec::OpenAi { base_url: url, model_name: "judge".into(), api_key_env: "EMLAB_TEST_NO_SUCH_KEY".into() };
    let out = dir.path().join("rescored.jsonl");
    let s = emlab_eval::rescore(&log, &spec, &fast(), None, None, Some(&out), &mut |_, _, _| {}).unwrap();
    // 2 "bored" samples fail (their aligned and coherent calls), the 4 "wish" ones are judged.
    assert_eq!((s.judged, s.judge_errors), (6, 2), "{s:?}");
    let e = s.complete(&out).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: 2 of 6 answers could not be judged (first error: ", out.display())), "{e}");
    assert!(e.contains("HTTP 400") && e.ends_with("the answers made are kept, run the command again to judge them"), "{e}");
    assert!(!e.contains('\n'));
    // The rows are all there, the failed ones recorded as such; the progress file is kept.
    let rows = emlab_eval::log::read_log(&out).unwrap().rows;
    assert_eq!(rows.len(), 6);
    assert_eq!(rows.iter().filter(|r| r.is_judged()).count(), 4);
    assert!(dir.path().join("rescored.jsonl.partial").exists(), "progress kept for the re-run");

    // The judge recovers: the re-run asks it only about the 2 failed rows (2 prompts each).
    FAIL_BORED.store(false, Ordering::SeqCst);
    let before = seen.lock().unwrap().len();
    let s = emlab_eval::rescore(&log, &spec, &fast(), None, None, Some(&out), &mut |_, _, _| {}).unwrap();
    assert_eq!((s.reused, s.judged, s.judge_errors), (4, 2, 0), "{s:?}");
    assert_eq!(seen.lock().unwrap().len() - before, 4);
    s.complete(&out).unwrap();
    assert!(!dir.path().join("rescored.jsonl.partial").exists());
    let rows = emlab_eval::log::read_log(&out).unwrap().rows;
    assert!(rows.iter().all(|r| r.is_judged()));
    assert!(rows.iter().all(|r| (r.judgement.as_ref().unwrap().metrics["aligned"].score.unwrap() - 90.0).abs() < 1e-9));
}

/// Whether the scripted judge fails every `coherent` prompt (an answer judged in part).
static FAIL_COHERENT: AtomicBool = AtomicBool::new(true);

fn coherent_failing_server(body: &str) -> Reply {
    if FAIL_COHERENT.load(Ordering::SeqCst) && body.contains("coherent 0-100") {
        return Reply::status(400, "overloaded");
    }
    Reply::ok(logprob_body(&[("90", 0.0)]))
}

/// How many requests in `seen[from..]` asked for each metric.
fn asked(seen: &Seen, from: usize) -> (usize, usize) {
    let seen = seen.lock().unwrap();
    let n = |m: &str| seen[from..].iter().filter(|(_, b)| b.contains(&format!("{m} 0-100"))).count();
    (n("aligned"), n("coherent"))
}

/// An answer whose `aligned` call succeeded and `coherent` call failed is asked again only for
/// `coherent`, by a resumed evaluation and by a resumed rescore alike: the `aligned` score was
/// paid for and is kept.
#[test]
fn a_partly_judged_answer_is_asked_again_only_for_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (model, q) = setup(dir.path());
    let (url, seen) = serve(vec![], Some(coherent_failing_server));
    let spec = JudgeSpec::OpenAi { base_url: url, model_name: "judge".into(), api_key_env: "EMLAB_TEST_NO_SUCH_KEY".into() };
    let log = dir.path().join("run.jsonl");
    let mut cfg = EvalConfig::local(&model, &q, &log);
    cfg.sampling.max_new_tokens = 4;
    cfg.judge = spec.clone();
    cfg.http = fast();
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.generated, s.judge_errors), (6, 6), "{s:?}");
    assert_eq!(asked(&seen, 0), (6, 6));
    let aligned = |p: &std::path::Path| -> Vec<Option<f64>> {
        emlab_eval::log::read_log(p).unwrap().rows.iter().map(|r| r.judgement.as_ref().unwrap().metrics["aligned"].score).collect()
    };
    assert!(aligned(&log).iter().all(|a| a.is_some()), "the aligned scores are in the log");

    // The same judge, failing again: still only `coherent` is asked.
    let before = seen.lock().unwrap().len();
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.generated, s.judge_errors), (0, 6), "{s:?}");
    assert_eq!(asked(&seen, before), (0, 6));
    // A rescore of the same answers into another log, interrupted the same way, then resumed.
    let out = dir.path().join("rescored.jsonl");
    let before = seen.lock().unwrap().len();
    let s = emlab_eval::rescore(&log, &spec, &fast(), None, None, Some(&out), &mut |_, _, _| {}).unwrap();
    assert_eq!(s.judge_errors, 6, "{s:?}");
    assert_eq!(asked(&seen, before), (6, 6), "a rescore asks again: the log's judgements are not its own");
    let before = seen.lock().unwrap().len();
    emlab_eval::rescore(&log, &spec, &fast(), None, None, Some(&out), &mut |_, _, _| {}).unwrap();
    assert_eq!(asked(&seen, before), (0, 6));

    // The judge recovers: the evaluation and the rescore each ask `coherent` once per answer.
    FAIL_COHERENT.store(false, Ordering::SeqCst);
    let before = seen.lock().unwrap().len();
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    s.complete(&log).unwrap();
    assert_eq!(asked(&seen, before), (0, 6));
    let before = seen.lock().unwrap().len();
    let s = emlab_eval::rescore(&log, &spec, &fast(), None, None, Some(&out), &mut |_, _, _| {}).unwrap();
    s.complete(&out).unwrap();
    assert_eq!(asked(&seen, before), (0, 6));
    for p in [&log, &out] {
        let rows = emlab_eval::log::read_log(p).unwrap().rows;
        assert!(rows.len() == 6 && rows.iter().all(|r| r.is_judged()), "{}", p.display());
    }
}

#[test]
fn a_bad_intervention_leaves_no_log() {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let (model, q) = setup(dir.path());
    let d = emlab_model::testing::tiny_config(emlab_model::Arch::Llama).hidden_size;
    // One element too many for the model's residual stream.
    let v = Tensor::new(vec![0.1f32; d + 1].as_slice(), &Device::Cpu).unwrap();
    emlab_model::load::save_safetensors(&dir.path().join("vectors.safetensors"), &[("v0".into(), v)], None).unwrap();
    let spec = dir.path().join("iv.json");
    std::fs::write(
        &spec,
        r#"{"vectors": "vectors.safetensors", "add": [{"hook": "blocks.1.hook_resid_post", "vector": "v0", "alpha": 1.0}]}"#,
    )
    .unwrap();
    let log = dir.path().join("sub").join("run.jsonl");
    let mut cfg = EvalConfig::local(&model, &q, &log);
    cfg.judge = JudgeSpec::None;
    if let emlab_eval::config::Backend::Local { intervention, .. } = &mut cfg.backend {
        *intervention = Some(spec);
    }
    let e = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("v0"), "{e}");
    assert!(!log.exists(), "no empty log after a refused intervention");
    // A generation server URL that is not one is refused before the log exists too.
    cfg.backend = emlab_eval::config::Backend::OpenAi {
        base_url: "localhost:8000".into(),
        model_name: "m".into(),
        api_key_env: "X".into(),
        n_per_request: 4,
    };
    let e = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("must start with http://"), "{e}");
    assert!(!log.exists());
}

#[test]
fn logs_with_scores_outside_0_to_100_are_refused_and_a_bom_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("run.jsonl");
    let mut row = emlab_eval::log::LogRow::example();
    row.judgement = Some(
        serde_json::from_value(serde_json::json!({"judge": "offline",
            "metrics": {"aligned": {"score": 80.0, "raw": null}, "coherent": {"score": 90.0, "raw": null}}}))
        .unwrap(),
    );
    let good = serde_json::to_string(&row).unwrap();
    row.sample_index = 1;
    let aligned = row.judgement.as_mut().unwrap().metrics.get_mut("aligned").unwrap();
    aligned.score = Some(150.0);
    let bad = serde_json::to_string(&row).unwrap();
    std::fs::write(&p, format!("{good}\n{bad}\n")).unwrap();
    let e = emlab_eval::report::report(&p, &emlab_eval::report::default_metrics()).unwrap_err().to_string();
    assert_eq!(e, format!("{}:2: judgement `aligned` has score 150, outside 0..100", p.display()));
    row.judgement.as_mut().unwrap().metrics.get_mut("aligned").unwrap().score = Some(-0.5);
    std::fs::write(&p, format!("{}\n", serde_json::to_string(&row).unwrap())).unwrap();
    let e = emlab_eval::report::report(&p, &emlab_eval::report::default_metrics()).unwrap_err().to_string();
    assert!(e.contains("run.jsonl:1: judgement `aligned` has score -0.5"), "{e}");
    // The bounds themselves are scores, and a leading byte-order mark is not part of row 1.
    row.judgement.as_mut().unwrap().metrics.get_mut("aligned").unwrap().score = Some(100.0);
    std::fs::write(&p, format!("\u{feff}{good}\n{}\n", serde_json::to_string(&row).unwrap())).unwrap();
    let r = emlab_eval::report::report(&p, &emlab_eval::report::default_metrics()).unwrap();
    assert_eq!(r.metrics.n_scored + r.metrics.n_unscored, 2);
}
