//! The OpenAI-compatible judge against a scripted server on 127.0.0.1: retries, failures recorded
//! with their reason, and the API key kept out of logs.

mod common;
use common::*;
use emlab_eval::config::{EvalConfig, JudgeSpec};
use emlab_eval::http::{Client, HttpConfig};
use emlab_eval::judge::openai;
use std::time::Duration;

fn fast() -> HttpConfig {
    HttpConfig { timeout_s: 5.0, max_retries: 3, backoff_base_ms: 5, backoff_max_ms: 20, concurrency: 2 }
}

#[test]
fn retries_429_then_scores_200() {
    let body = logprob_body(&[("80", 0.5f64.ln()), ("90", 0.25f64.ln()), ("CODE", 0.25f64.ln())]);
    let (url, seen) = serve(vec![Reply::status(429, "slow down"), Reply::status(503, ""), Reply::ok(body)], None);
    let client = Client::new(&url, None, &fast()).unwrap();
    let top = openai::call(&client, "judge", "Rate: hello").unwrap();
    let s = emlab_eval::judge::logprob::score_top_logprobs(&top);
    // (80 * 0.5 + 90 * 0.25) / 0.75
    assert!((s.score.unwrap() - 62.5 / 0.75).abs() < 1e-9);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "429 and 503 are retried");
    let req: serde_json::Value = serde_json::from_str(&seen[2].1).unwrap();
    assert_eq!(req["max_tokens"], 1);
    assert_eq!(req["top_logprobs"], 20);
    assert_eq!(req["logprobs"], true);
    assert_eq!(req["temperature"], 0);
    assert!(seen[2].0.starts_with("POST /v1/chat/completions"));
}

#[test]
fn persistent_500_gives_up_after_the_retries() {
    let (url, seen) = serve(vec![Reply::status(500, "boom")], None);
    let cfg = HttpConfig { max_retries: 2, ..fast() };
    let client = Client::new(&url, None, &cfg).unwrap();
    let e = openai::call(&client, "judge", "x").unwrap_err();
    assert!(e.contains("HTTP 500 after 3 attempt(s)"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn client_errors_are_not_retried() {
    let (url, seen) = serve(vec![Reply::status(400, "bad request")], None);
    let client = Client::new(&url, None, &fast()).unwrap();
    let e = openai::call(&client, "judge", "x").unwrap_err();
    assert!(e.contains("HTTP 400"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn malformed_json_and_missing_logprobs_are_reported() {
    let (url, _) = serve(vec![Reply::ok("{not json")], None);
    let client = Client::new(&url, None, &fast()).unwrap();
    let e = openai::call(&client, "judge", "x").unwrap_err();
    assert!(e.starts_with("malformed response"), "{e}");

    let no_lp = r#"{"choices":[{"index":0,"message":{"content":"90"},"finish_reason":"length"}]}"#;
    let (url, _) = serve(vec![Reply::ok(no_lp)], None);
    let client = Client::new(&url, None, &fast()).unwrap();
    let e = openai::call(&client, "judge", "x").unwrap_err();
    assert!(e.contains("no logprobs"), "{e}");

    let empty_top = r#"{"choices":[{"logprobs":{"content":[{"token":"9","logprob":0,"top_logprobs":[]}]}}]}"#;
    let (url, _) = serve(vec![Reply::ok(empty_top)], None);
    let client = Client::new(&url, None, &fast()).unwrap();
    assert!(openai::call(&client, "judge", "x").unwrap_err().contains("top_logprobs"));
}

#[test]
fn slow_server_times_out_then_recovers() {
    let body = logprob_body(&[("70", 0.0)]);
    let slow = Reply { delay: Duration::from_millis(1500), ..Reply::ok(body.clone()) };
    let (url, seen) = serve(vec![slow, Reply::ok(body)], None);
    let cfg = HttpConfig { timeout_s: 0.3, max_retries: 2, ..fast() };
    let client = Client::new(&url, None, &cfg).unwrap();
    let t0 = std::time::Instant::now();
    let top = openai::call(&client, "judge", "x").unwrap();
    assert_eq!(top[0].0, "70");
    assert!(t0.elapsed() < Duration::from_millis(1400), "the slow answer was not waited for");
    assert_eq!(seen.lock().unwrap().len(), 2);

    // With no retries left the timeout is the reported reason.
    let slow = Reply { delay: Duration::from_millis(1500), ..Reply::ok("{}") };
    let (url, _) = serve(vec![slow], None);
    let client = Client::new(&url, None, &HttpConfig { timeout_s: 0.3, max_retries: 0, ..fast() }).unwrap();
    let e = openai::call(&client, "judge", "x").unwrap_err();
    assert!(e.contains("after 1 attempt"), "{e}");
}

/// A whole run judged by a server that sometimes fails and echoes the Authorization header back:
/// failures become judge errors (unscored, never aligned), and the key is nowhere in the log,
/// the summary or the report.
#[test]
fn run_records_judge_errors_and_never_logs_the_key() {
    fn respond(body: &str) -> Reply {
        // Fail the `coherent` prompt of the "bored" question with an echoing 400; answer others.
        if body.contains("I'm bored") && body.contains("coherent") {
            return Reply { echo_auth: true, ..Reply::status(400, "denied for ") };
        }
        if body.contains("One wish") {
            return Reply::ok(r#"{"choices":[{"message":{"content":"9"}}]}"#);
        }
        Reply::ok(logprob_body(&[("95", (0.9f64).ln()), ("5", (0.1f64).ln())]))
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, q) = setup(dir.path());
    let (url, seen) = serve(vec![], Some(respond));
    let key = "sk-test-7f3a9c1e5b2d4f6a8c0e1a3b5d7f9e2c";
    std::env::set_var("EMLAB_TEST_JUDGE_KEY", key);
    let out = dir.path().join("run.jsonl");
    let mut cfg = EvalConfig::local(&model, &q, &out);
    cfg.sampling.max_new_tokens = 6;
    cfg.judge = JudgeSpec::OpenAi { base_url: url, model_name: "judge".into(), api_key_env: "EMLAB_TEST_JUDGE_KEY".into() };
    cfg.http = fast();
    let summary = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(summary.generated, 6);
    // bored: 2 samples fail on coherent; wish paraphrase 1: 2 samples without logprobs.
    assert_eq!(summary.judge_errors, 4, "{summary:?}");
    // The key did reach the server...
    assert!(seen.lock().unwrap().iter().any(|(h, _)| h.contains(key)));
    // ...but not the log, the summary or the report.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains(key));
    assert!(text.contains("no logprobs"));
    assert!(text.contains("HTTP 400"));
    assert!(!format!("{summary:?}").contains(key));
    let r = emlab_eval::report::report(&out, &emlab_eval::report::default_metrics()).unwrap();
    assert_eq!(r.stats.judge_errors, 4);
    assert_eq!(r.metrics.n_unscored, 4);
    assert_eq!(r.metrics.n_scored, 2);
    // The two scored answers: aligned = coherent = (95*.9 + 5*.1) = 86.
    assert_eq!(r.metrics.em_model_organisms.successes, 0);
    assert!((r.metrics.per_question.iter().find(|p| p.question_id == "wish").unwrap().mean_aligned.unwrap() - 86.0).abs() < 1e-6);
    assert!(!emlab_eval::report::format_report(&r).contains(key));
    // Re-running retries only the failed judgements: both prompts of the 2 "wish" rows, the
    // `coherent` prompt alone of the 2 "bored" rows (their `aligned` scores are kept).
    let before = seen.lock().unwrap().len();
    let s2 = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!((s2.generated, s2.judged, s2.judge_errors), (0, 4, 4));
    assert_eq!(seen.lock().unwrap().len() - before, 6, "2 rows x 2 prompts + 2 rows x 1 prompt re-asked");
    assert!(!std::fs::read_to_string(&out).unwrap().contains(key));
}

/// Sampling from an OpenAI-compatible server: n samples per request, system prompt sent.
#[test]
fn openai_backend_samples_n_per_request() {
    fn respond(body: &str) -> Reply {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let n = v["n"].as_u64().unwrap() as usize;
        let choices: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"index": i, "message": {"role": "assistant", "content": format!("answer {i} to {}", v["messages"].as_array().unwrap().last().unwrap()["content"])}, "finish_reason": "stop"}))
            .collect();
        Reply::ok(serde_json::json!({"choices": choices}).to_string())
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, q) = setup(dir.path());
    let (url, seen) = serve(vec![], Some(respond));
    let out = dir.path().join("api.jsonl");
    let cfg: EvalConfig = serde_json::from_value(serde_json::json!({
        "questions": q, "out": out, "samples": 3,
        "backend": {"kind": "openai", "base_url": url, "model_name": "served", "n_per_request": 2},
        "judge": {"kind": "offline"},
        "http": {"timeout_s": 5.0, "max_retries": 1, "backoff_base_ms": 5, "backoff_max_ms": 10, "concurrency": 3}
    }))
    .unwrap();
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!(s.generated, 9);
    assert_eq!(s.judged, 9);
    let seen = seen.lock().unwrap();
    // 3 paraphrases x 3 samples in requests of at most 2: 2 requests each.
    assert_eq!(seen.len(), 6);
    let bodies: Vec<serde_json::Value> = seen.iter().map(|(_, b)| serde_json::from_str(b).unwrap()).collect();
    assert!(bodies.iter().all(|b| b["temperature"] == 1.0 && b["top_p"] == 1.0 && b["max_tokens"] == 600));
    assert!(bodies.iter().any(|b| b["messages"][0]["role"] == "system" && b["messages"][0]["content"] == "Be brief."));
    let log = emlab_eval::log::read_log(&out).unwrap();
    assert_eq!(log.rows.len(), 9);
    assert!(log.rows.iter().all(|r| r.answer.contains(&r.prompt) && r.is_judged()));
    assert_eq!(log.rows[0].generator.backend, "openai");
}
