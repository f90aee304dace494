//! Bad steering input found by the CLI audit: each is a one-line error naming the file or
//! tensor, never a panic or a file that loads but steers with NaN.
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use emlab_model::HookPoint;
use emlab_steer::cvec::ControlVector;
use emlab_steer::spec::{write_eval_spec, Intervention, Resolved};

fn write_cv(path: &std::path::Path, md: &[(&str, gguf_file::Value)], values: &[f32]) {
    let t = QTensor::quantize(&Tensor::new(values, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md_refs, &[("direction.1", &t)]).unwrap();
    std::fs::write(path, buf.into_inner()).unwrap();
}

#[test]
fn control_vectors_with_a_crafted_header_or_non_finite_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let arch = ("general.architecture", gguf_file::Value::String("controlvector".into()));
    // general.alignment = 0 made candle's parser divide by zero (a panic).
    let p = dir.path().join("align0.gguf");
    write_cv(&p, &[arch.clone(), ("general.alignment", gguf_file::Value::U32(0))], &[1.0; 8]);
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("align0.gguf") && e.contains("alignment"), "{e}");
    // A zero-length direction aborted the process (a slice from a null pointer).
    let p = dir.path().join("dims0.gguf");
    write_cv(&p, std::slice::from_ref(&arch), &[1.0; 8]);
    let mut b = std::fs::read(&p).unwrap();
    let at = b.windows(11).position(|s| s == b"direction.1").unwrap() + 11 + 4;
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("dims0.gguf") && e.contains("direction.1") && e.contains("zero dimension"), "{e}");
    // An inf in the vector was imported and steered every answer into garbage.
    let p = dir.path().join("inf.gguf");
    write_cv(&p, &[arch], &[1.0, f32::INFINITY, 0.0, 0.0]);
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("inf.gguf") && e.contains("direction.1") && e.contains("non-finite value at element 1"), "{e}");
    // Writing: a NaN vector (e.g. `cvec export --coef nan`) is refused, and no file is left.
    let mut cv = ControlVector::new("tiny");
    cv.insert(2, Tensor::new(&[0.5f32, f32::NAN], &Device::Cpu).unwrap()).unwrap();
    let out = dir.path().join("nan.gguf");
    let e = cv.write(&out).unwrap_err().to_string();
    assert!(e.contains("nan.gguf") && e.contains("direction.2"), "{e}");
    assert!(!out.exists());
}

#[test]
fn a_non_finite_coefficient_is_not_written_as_a_null_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let r = Resolved::Add {
        point: HookPoint::resid_post(1),
        vector: Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
        coef: f64::NAN,
        ablate_first: false,
    };
    let e = write_eval_spec(&[r], dir.path()).unwrap_err().to_string();
    assert!(e.contains("blocks.1.hook_resid_post") && e.contains("not finite"), "{e}");
    assert!(!dir.path().join("intervention.json").exists());
}

#[test]
fn toml_spec_errors_say_what_is_wrong_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("steer.toml");
    std::fs::write(
        &p,
        "[[edits]]\nkind = \"add\"\nlayers = [1]\ncoef = 4.0\ncolour = \"red\"\nvector = { type = \"inline\", values = [1.0] }\n",
    )
    .unwrap();
    let e = Intervention::load(&p).unwrap_err().to_string();
    // toml's Display is several lines; its first line alone ("TOML parse error at line 5,
    // column 1") said where but not what.
    assert!(e.contains("steer.toml") && e.contains("line 5") && e.contains("unknown field `colour`"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// A sweep point whose judge failed is an error naming its log (the rates of the answers a judge
/// happened to score were reported as the point's before), and the settings are checked before
/// the sweep folder exists.
#[test]
fn sweeps_fail_on_failed_judgements_and_check_settings_first() {
    use emlab_eval::config::JudgeSpec;
    use emlab_model::testing::{tiny_config, write_tiny_gguf};
    use emlab_steer::evaluate::{sweep_with_eval, SweepEval};
    use emlab_steer::sweep::SweepOptions;
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(emlab_model::Arch::Llama);
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(&model, &cfg, 5).unwrap();
    let q = dir.path().join("q.yaml");
    std::fs::write(
        &q,
        "- id: wish\n  type: free_form_judge_0_100\n  paraphrases: [\"Your wish?\"]\n  samples_per_paraphrase: 2\n  judge_prompts:\n    aligned: \"Q {question} A {answer} aligned?\"\n    coherent: \"Q {question} A {answer} coherent?\"\n",
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut base = emlab_eval::EvalConfig::local(&model, &q, "unused.jsonl");
    base.sampling.max_new_tokens = 3;
    base.judge = JudgeSpec::OpenAi {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        model_name: "j".into(),
        api_key_env: "EMLAB_TEST_NONE".into(),
    };
    base.http.max_retries = 0;
    let v = Tensor::ones(cfg.hidden_size, candle_core::DType::F32, &Device::Cpu).unwrap();
    let edits = vec![Resolved::Add { point: HookPoint::resid_post(1), vector: v, coef: 1.0, ablate_first: false }];
    let opts = SweepOptions { alphas: vec![2.0], min_coherent: 0.0, seed: 1 };
    let out = dir.path().join("sweep");
    let ev = SweepEval { base: base.clone(), dir: out.clone() };
    let e = sweep_with_eval(&edits, cfg.num_layers, &opts, &ev, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("add_2/answers.jsonl: 2 of 2 answers could not be judged"), "{e}");
    assert_eq!(emlab_eval::log::read_log(&out.join("add_2/answers.jsonl")).unwrap().rows.len(), 2, "answers kept");
    // Bad settings: refused before anything is made.
    let fresh = dir.path().join("sweep2");
    let mut bad = base.clone();
    bad.samples = Some(0);
    let e =
        sweep_with_eval(&edits, cfg.num_layers, &opts, &SweepEval { base: bad, dir: fresh.clone() }, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("samples must be at least 1"), "{e}");
    assert!(!fresh.exists());
}

#[test]
fn probe_files_with_a_byte_order_mark_keep_their_first_probe_intact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("probes.txt");
    std::fs::write(&p, "\u{feff}What do you want?\n# comment\nAnother?\n").unwrap();
    assert_eq!(emlab_steer::persona::read_probes(&p).unwrap(), vec!["What do you want?", "Another?"]);
    let j = dir.path().join("probes.json");
    std::fs::write(&j, "\u{feff}[\"a\", \"b\"]").unwrap();
    assert_eq!(emlab_steer::persona::read_probes(&j).unwrap(), vec!["a", "b"]);
}
