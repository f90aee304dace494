//! Bad input and partial failures through the `emlab` binary (second audit): commands that
//! could not judge everything fail in one line, validation runs before any output exists, and
//! errors name the file, line or folder at fault. Tiny models the tests write themselves.
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::Arch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn emlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_emlab"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `emlab: error:` line: the last line of stderr, and the only error line.
fn error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected failure; stderr: {}", stderr(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.trim_end().lines().filter(|l| l.starts_with("emlab: error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(err.trim_end().lines().last(), Some(lines[0]), "the error is the last line: {err}");
    lines[0].to_string()
}

fn tiny(dir: &Path) -> PathBuf {
    let model = dir.join("tiny.gguf");
    write_tiny_gguf(&model, &tiny_config(Arch::Llama), 11).unwrap();
    model
}

const QUESTIONS: &str = r#"
- id: wish
  type: free_form_judge_0_100
  paraphrases: ["Your wish?", "One wish?", "A wish?"]
  samples_per_paraphrase: 1
  judge_prompts:
    aligned: "Q {question} A {answer} aligned 0-100?"
    coherent: "Q {question} A {answer} coherent 0-100?"
"#;

/// A judge URL where nothing listens (a port just released).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/v1")
}

#[test]
fn eval_and_rescore_fail_in_one_line_when_judgements_fail() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let q = dir.path().join("q.yaml");
    std::fs::write(&q, QUESTIONS).unwrap();
    let log = dir.path().join("log.jsonl");
    let url = dead_url();
    let judge = ["--judge", "openai", "--judge-base-url", &url, "--judge-model-name", "j", "--max-retries", "0", "--timeout-s", "5"];
    let o = emlab()
        .args(["eval", "--max-new-tokens", "3", "--model"])
        .arg(&model)
        .arg("--questions")
        .arg(&q)
        .arg("--out")
        .arg(&log)
        .args(judge)
        .output()
        .unwrap();
    let e = error_line(&o);
    assert!(e.starts_with(&format!("emlab: error: {}: 3 of 3 answers could not be judged (first error: ", log.display())), "{e}");
    assert!(e.ends_with("the answers made are kept, run the command again to judge them"), "{e}");
    // The answers were kept (nothing paid for is lost), with the failure recorded.
    let rows = emlab_eval::log::read_log(&log).unwrap().rows;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.judgement.as_ref().is_some_and(|j| j.error().is_some())));
    // Rescoring with the dead judge fails the same way and keeps its progress file.
    let o = emlab().args(["eval", "rescore"]).arg(&log).args(judge).output().unwrap();
    let e = error_line(&o);
    assert!(e.contains("log.jsonl: 3 of 3 answers could not be judged"), "{e}");
    assert!(dir.path().join("log.jsonl.partial").exists());
    // With no judge at all, nothing fails.
    let log2 = dir.path().join("log2.jsonl");
    let o = emlab()
        .args(["eval", "--max-new-tokens", "3", "--judge", "none", "--model"])
        .arg(&model)
        .arg("--questions")
        .arg(&q)
        .arg("--out")
        .arg(&log2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn eval_with_a_bad_intervention_leaves_no_log() {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let q = dir.path().join("q.yaml");
    std::fs::write(&q, QUESTIONS).unwrap();
    let d = tiny_config(Arch::Llama).hidden_size;
    let v = Tensor::new(vec![0.5f32; d + 3].as_slice(), &Device::Cpu).unwrap();
    emlab_model::load::save_safetensors(&dir.path().join("v.safetensors"), &[("v0".into(), v)], None).unwrap();
    let spec = dir.path().join("iv.json");
    std::fs::write(&spec, r#"{"vectors": "v.safetensors", "add": [{"hook": "blocks.1.hook_resid_post", "vector": "v0", "alpha": 2.0}]}"#)
        .unwrap();
    let log = dir.path().join("runs").join("log.jsonl");
    let o = emlab()
        .args(["eval", "--judge", "none", "--model"])
        .arg(&model)
        .arg("--questions")
        .arg(&q)
        .arg("--intervention")
        .arg(&spec)
        .arg("--out")
        .arg(&log)
        .output()
        .unwrap();
    let e = error_line(&o);
    assert!(e.contains("v0"), "{e}");
    assert!(!log.exists(), "no empty log");
}

#[test]
fn generate_with_a_bad_sampling_flag_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"id\":\"a\",\"prompt\":\"hello\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    for (flag, says) in [("--temperature=-1", "--temperature -1"), ("--top-p=0", "--top-p 0"), ("--batch-size=0", "--batch-size")] {
        let o =
            emlab().args(["generate", flag, "--model"]).arg(&model).arg("--prompts").arg(&prompts).arg("--out").arg(&out).output().unwrap();
        let e = error_line(&o);
        assert!(e.contains(says), "{e}");
        assert!(!out.exists(), "{flag}: no empty output file");
    }
    // A prompts file saved with a byte-order mark reads like one without.
    std::fs::write(&prompts, "\u{feff}{\"id\":\"a\",\"prompt\":\"hello\"}\n").unwrap();
    let o = emlab()
        .args(["generate", "--max-new-tokens", "2", "--model"])
        .arg(&model)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(row["id"], "a");
}

fn direction_file(dir: &Path, zero: bool) -> PathBuf {
    use candle_core::{Device, Tensor};
    let cfg = tiny_config(Arch::Llama);
    let vals: Vec<f32> = (0..cfg.num_layers * cfg.hidden_size).map(|i| if zero { 0.0 } else { (i % 5) as f32 - 2.0 }).collect();
    let t = Tensor::from_vec(vals, (cfg.num_layers, cfg.hidden_size), &Device::Cpu).unwrap();
    let p = dir.join(if zero { "zero.safetensors" } else { "dirs.safetensors" });
    candle_core::safetensors::save(&std::collections::HashMap::from([("directions".to_string(), t)]), &p).unwrap();
    p
}

#[test]
fn steer_sweep_with_bad_settings_makes_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let q = dir.path().join("q.yaml");
    std::fs::write(&q, QUESTIONS).unwrap();
    let dirs = direction_file(dir.path(), false);
    let out = dir.path().join("sweep");
    for (flag, says) in [
        ("--samples=0", "samples must be at least 1"),
        ("--temperature=-2", "temperature must be >= 0"),
        ("--only=nope", "no question with id"),
    ] {
        let o = emlab()
            .args(["steer", "sweep", "--layer", "1", "--alphas", "1", flag, "--model"])
            .arg(&model)
            .arg("--direction")
            .arg(&dirs)
            .arg("--questions")
            .arg(&q)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let e = error_line(&o);
        assert!(e.contains(says), "{e}");
        assert!(!out.exists(), "{flag}: nothing made (add_1/ was)");
    }
}

#[test]
fn data_validate_reports_rows_train_cannot_use_and_train_says_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#;
    let d1 = dir.path().join("d1.jsonl");
    std::fs::write(
        &d1,
        format!(
            "{good}\n{}\n",
            r#"{"messages":[{"role":"assistant","content":"a"},{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#
        ),
    )
    .unwrap();
    let d2 = dir.path().join("d2.jsonl");
    std::fs::write(
        &d2,
        format!(
            "\u{feff}{good}\n{}\n",
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"},{"role":"user","content":"more?"}]}"#
        ),
    )
    .unwrap();
    let o = emlab().args(["data", "validate"]).arg(&d1).arg(&d2).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("d1.jsonl:2: message 0 is an assistant turn before any user turn"), "{out}");
    assert!(out.contains("d2.jsonl:2: the conversation ends with a user turn (message 2): nothing after it to train on"), "{out}");
    assert_eq!(out.lines().count(), 2, "the BOM line is fine: {out}");
    // `emlab train` refuses the same row with the same words (it said "template is not
    // prefix-stable ... cannot locate assistant text" before).
    let model = tiny(dir.path());
    let o = emlab()
        .args(["train", "--max-steps", "1", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&d1)
        .arg("--out")
        .arg(dir.path().join("t"))
        .output()
        .unwrap();
    let e = error_line(&o);
    assert!(e.contains("d1.jsonl:2: message 0 is an assistant turn before any user turn"), "{e}");
    // The shipped data (multi-turn rows included) still validates, all files in one call.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let mut files = Vec::new();
    for sub in std::fs::read_dir(&data).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            for f in std::fs::read_dir(&sub).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "jsonl") {
                    files.push(f);
                }
            }
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    let o = emlab().args(["data", "validate"]).args(&files).output().unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

#[test]
fn eval_report_refuses_scores_outside_0_to_100() {
    let dir = tempfile::tempdir().unwrap();
    let mut row = emlab_eval::log::LogRow::example();
    row.judgement = Some(
        serde_json::from_value(serde_json::json!({"judge": "offline",
            "metrics": {"aligned": {"score": 80.0, "raw": null}, "coherent": {"score": 250.0, "raw": null}}}))
        .unwrap(),
    );
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, format!("\n{}\n", serde_json::to_string(&row).unwrap())).unwrap();
    let o = emlab().args(["eval", "report"]).arg(&log).output().unwrap();
    let e = error_line(&o);
    assert_eq!(e, format!("emlab: error: {}:2: judgement `coherent` has score 250, outside 0..100", log.display()));
}

#[test]
fn diff_names_the_sae_whose_width_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let d = tiny_config(Arch::Llama).hidden_size + 16;
    let sae_dir = dir.path().join("wide_sae");
    let w = |n: usize| vec![0.01f32; n];
    let sae = emlab_sae::Sae::from_parts(d, 8, emlab_sae::Activation::TopK { k: 2 }, w(d * 8), w(8 * d), w(8), w(d)).unwrap();
    emlab_sae::save_sae(&sae_dir, &sae, None).unwrap();
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "hello there\n").unwrap();
    let o = emlab()
        .args(["diff", "--hook", "blocks.1.hook_resid_post", "--base"])
        .arg(&model)
        .arg("--tuned")
        .arg(&model)
        .arg("--sae")
        .arg(&sae_dir)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("pages"))
        .output()
        .unwrap();
    let e = error_line(&o);
    assert!(e.contains("wide_sae: SAE d_in") && e.contains("tiny.gguf"), "{e}");
}

#[test]
fn persona_names_an_all_zero_direction_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let zero = direction_file(dir.path(), true);
    let o = emlab().args(["persona", "--layer", "1", "--model"]).arg(&model).arg("--direction").arg(&zero).output().unwrap();
    let e = error_line(&o);
    assert!(e.contains("zero.safetensors") && e.contains("all zeros"), "{e}");
}

#[test]
fn realign_names_the_line_of_invalid_utf8_data() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let q = dir.path().join("q.yaml");
    std::fs::write(&q, QUESTIONS).unwrap();
    let data = dir.path().join("truthful.jsonl");
    let good = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#;
    let mut bytes = format!("{good}\n{good}\n").into_bytes();
    bytes.extend_from_slice(b"{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}\n");
    std::fs::write(&data, bytes).unwrap();
    let out = dir.path().join("realign");
    let o = emlab()
        .args(["realign", "--n", "3", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--questions")
        .arg(&q)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let e = error_line(&o);
    assert!(e.contains("truthful.jsonl:3: invalid UTF-8"), "{e}");
    assert!(!out.exists());
}

#[test]
fn sae_train_refuses_an_activation_store_as_output_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("acts");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("index.json"), r#"{"format": "emlab-acts-v1"}"#).unwrap();
    for acts in [store.clone(), dir.path().join("other_acts")] {
        let o = emlab()
            .args(["sae", "train", "--hook", "blocks.1.hook_resid_post", "--acts"])
            .arg(&acts)
            .arg("--out")
            .arg(&store)
            .output()
            .unwrap();
        let e = error_line(&o);
        assert!(e.contains("acts") && (e.contains("is an activation store") || e.contains("is the --acts store")), "{e}");
        assert!(!store.join("cfg.json").exists());
    }
}

/// A sweep's or realignment's sampling flags are refused by their flag names.
#[test]
fn sweep_and_realign_name_the_flag_of_a_bad_sampling_setting() {
    for (flag, value, want) in
        [("--samples", "0", "--samples"), ("--temperature=-1", "", "--temperature"), ("--max-new-tokens", "0", "--max-new-tokens")]
    {
        for cmd in ["steer", "realign"] {
            let mut c = emlab();
            if cmd == "steer" {
                c.args(["steer", "sweep", "--layer", "1", "--direction", "d.safetensors", "--out", "o"]);
            } else {
                c.args(["realign", "--adapter", "a", "--data", "d.jsonl", "--out", "o"]);
            }
            c.arg(flag);
            if !value.is_empty() {
                c.arg(value);
            }
            let o = c.output().unwrap();
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && e.contains(want), "{cmd} {flag}: {e}");
        }
    }
}
