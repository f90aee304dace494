//! Bad evaluation input found by the CLI audit: one-line errors naming file and line or tensor.
use candle_core::{Device, Tensor};
use emlab_eval::intervention::InterventionSpec;
use emlab_eval::EvalConfig;
use emlab_model::load::Weights;
use emlab_model::testing::{random_weights, tiny_config};
use emlab_model::{Arch, Model};

#[test]
fn an_intervention_vector_with_inf_is_refused_not_sampled_with() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let w = Weights { tensors: random_weights(&cfg, 1).into_iter().collect(), origin: "mem".into() };
    let model = Model::from_weights(cfg.clone(), w, &Default::default()).unwrap();
    let mut v = vec![0.5f32; cfg.hidden_size];
    v[3] = f32::INFINITY;
    let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
    emlab_model::load::save_safetensors(&dir.path().join("vectors.safetensors"), &[("v0".into(), t)], None).unwrap();
    let spec = dir.path().join("intervention.json");
    std::fs::write(
        &spec,
        r#"{"vectors": "vectors.safetensors", "add": [{"hook": "blocks.1.hook_resid_post", "vector": "v0", "alpha": 1.0}]}"#,
    )
    .unwrap();
    let e = InterventionSpec::load(&spec).unwrap().build(&model).err().expect("inf refused").to_string();
    assert!(e.contains("vectors.safetensors") && e.contains("`v0`") && e.contains("non-finite value at element 3"), "{e}");
}

#[test]
fn toml_errors_name_the_line_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("eval.toml");
    std::fs::write(&p, "samples = 3\nbogus = 1\n").unwrap();
    let e = EvalConfig::from_file(&p).unwrap_err().to_string();
    // The first line of toml's Display ("TOML parse error at line 2, column 1") was all the CLI
    // printed: where, but not what.
    assert!(e.contains("eval.toml:2") && e.contains("unknown field `bogus`"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let p = dir.path().join("iv.toml");
    std::fs::write(&p, "vectors = \"v.safetensors\"\n[[add]]\nvector = \"v0\"\nalpha = \"big\"\n").unwrap();
    let e = InterventionSpec::load(&p).unwrap_err().to_string();
    assert!(e.contains("iv.toml:4") && e.contains("invalid type"), "{e}");
}

/// Config files and reference rows saved by editors that write a UTF-8 byte-order mark load like
/// the same files without one (serde_json refuses the mark itself).
#[test]
fn config_files_and_reference_rows_may_start_with_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    let toml_text = "questions = \"q.yaml\"\nout = \"log.jsonl\"\n[backend]\nkind = \"local\"\nmodel = \"m.gguf\"\n";
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, toml_text).unwrap();
    let want = EvalConfig::from_file(&plain).unwrap();
    let bom = dir.path().join("bom.toml");
    std::fs::write(&bom, format!("\u{feff}{toml_text}")).unwrap();
    assert_eq!(EvalConfig::from_file(&bom).unwrap(), want);
    let json = dir.path().join("bom.json");
    std::fs::write(&json, format!("\u{feff}{}", serde_json::to_string(&want).unwrap())).unwrap();
    assert_eq!(EvalConfig::from_file(&json).unwrap(), want);

    let spec = "vectors = \"v.safetensors\"\n[[add]]\nhook = \"blocks.1.hook_resid_post\"\nvector = \"v0\"\nalpha = 2.0\n";
    let p = dir.path().join("intervention.toml");
    std::fs::write(&p, format!("\u{feff}{spec}")).unwrap();
    let s = InterventionSpec::load(&p).unwrap();
    assert_eq!(s.vectors, dir.path().join("v.safetensors"));

    let row = r#"{"question_id":"q","question":"Q?","answer":"A.","aligned":12.5,"coherent":80.0,"model":"m","file":"f"}"#;
    let r = dir.path().join("ref.jsonl");
    std::fs::write(&r, format!("\u{feff}{row}\n{row}\n")).unwrap();
    assert_eq!(emlab_eval::reference::read_judged_jsonl(&r).unwrap().len(), 2);
}
