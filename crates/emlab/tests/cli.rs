//! The `emlab` binary end to end on tiny models the test writes itself.
use emlab_model::testing::{tiny_config, write_tiny_gguf, write_tiny_hf};
use emlab_model::Arch;
use std::process::Command;

fn emlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_emlab"))
}

#[test]
fn generate_writes_one_row_per_sample_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(&model, &tiny_config(Arch::Qwen2), 3).unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"id\":\"a\",\"prompt\":\"hello there\"}\n{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"in out\"}]}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let run = || {
        emlab()
            .args(["generate", "--max-new-tokens", "5", "--samples", "3", "--batch-size", "4", "--model"])
            .arg(&model)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["n_tokens"].as_u64().unwrap() <= 5));
    // Resume: cut the last row in half, rerun: exactly the missing row is regenerated, identical.
    let keep = text.len() - text.lines().last().unwrap().len() / 2 - 1;
    std::fs::write(&out, &text[..keep]).unwrap();
    let o = run();
    assert!(o.status.success());
    let text2 = std::fs::read_to_string(&out).unwrap();
    let mut a: Vec<&str> = text.lines().collect();
    let mut b: Vec<&str> = text2.lines().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn model_info_reads_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, &tiny_config(Arch::Llama), 1).unwrap();
    let h = dir.path().join("hf");
    write_tiny_hf(&h, &tiny_config(Arch::Qwen2), 1, true).unwrap();
    for (p, arch) in [(g, "llama"), (h, "qwen2")] {
        let o = emlab().args(["model", "info", "--json", "--model"]).arg(&p).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["config"]["arch"], arch);
        assert_eq!(v["config"]["num_layers"], 2);
        // The stored tensor types of a GGUF file (this one: all f32); none for an HF folder.
        if arch == "llama" {
            let types = v["weights"]["tensor_types"].as_object().unwrap();
            assert_eq!(types.keys().collect::<Vec<_>>(), ["F32"]);
            assert_eq!(types["F32"], 2 * 9 + 2, "2 layers of 9 tensors, embeddings and final norm");
        } else {
            assert!(v["weights"].is_null());
        }
    }
}

#[test]
fn bad_input_exits_nonzero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let o = emlab().args(["model", "info", "--model"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("broken.gguf"), "{err}");
    // A prompts file with a broken row names file and line.
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(&model, &tiny_config(Arch::Llama), 1).unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\":\"ok\"}\n{not json\n").unwrap();
    let o = emlab()
        .args(["generate", "--model"])
        .arg(&model)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("o.jsonl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("p.jsonl:2"), "{err}");
    assert!(!dir.path().join("o.jsonl").exists(), "no half-written output");
}

/// `emlab ablate --adapter`: the exported model is the base with the adapter merged, then the
/// direction projected out; computed here in-process for comparison, and different from the
/// ablated base without the adapter.
#[test]
fn ablate_merges_the_adapter_before_removing_the_direction() {
    use candle_core::{Device, Tensor};
    use emlab_model::{LoadOptions, Model};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("hf");
    let cfg = tiny_config(Arch::Llama);
    write_tiny_hf(&base, &cfg, 4, true).unwrap();
    // A PEFT adapter with non-zero B, so merging changes the weights.
    let mut m = Model::load(&base, &LoadOptions::default()).unwrap();
    let lora = emlab_train::LoraConfig { r: 2, alpha: 4.0, ..Default::default() };
    for (i, a) in emlab_train::adapter::attach(&mut m, &lora, 5).unwrap().iter().enumerate() {
        a.b.set(&(Tensor::rand(-0.3f32, 0.3, a.b.shape(), &Device::Cpu).unwrap() + i as f64 * 1e-3).unwrap()).unwrap();
    }
    let adapter = dir.path().join("adapter");
    let peft = emlab_train::adapter::PeftConfig::from_lora(&lora, cfg.num_layers, "tiny");
    emlab_train::adapter::save_peft(&m, &adapter, &peft).unwrap();
    // A direction file: one row per layer.
    let d = cfg.hidden_size;
    let rows: Vec<f32> = (0..cfg.num_layers * d).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
    let dirs = Tensor::from_vec(rows, (cfg.num_layers, d), &Device::Cpu).unwrap();
    let dfile = dir.path().join("directions.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("directions".to_string(), dirs.clone())]), &dfile).unwrap();
    let run = |out: &std::path::Path, with_adapter: bool| {
        let mut c = emlab();
        c.args(["ablate", "--direction-layer", "1", "--model"]).arg(&base).arg("--direction").arg(&dfile).arg("--out").arg(out);
        if with_adapter {
            c.arg("--adapter").arg(&adapter);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Model::load(out, &LoadOptions::default()).unwrap()
    };
    let with = run(&dir.path().join("out-a"), true);
    let without = run(&dir.path().join("out-b"), false);
    // In-process reference: load, merge, ablate.
    let mut want = Model::load(&base, &LoadOptions::default()).unwrap();
    emlab_train::adapter::load_peft(&mut want, &adapter).unwrap();
    emlab_train::adapter::merge(&mut want).unwrap();
    let v = dirs.narrow(0, 1, 1).unwrap().reshape(d).unwrap();
    emlab_steer::repair::orthogonalize(&mut want, &v).unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = |a: &Tensor, b: &Tensor| flat(a).iter().zip(flat(b)).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    for l in 0..cfg.num_layers {
        assert!(diff(&with.layers[l].down.weight, &want.layers[l].down.weight) < 1e-5, "layer {l} down_proj");
        assert!(diff(&with.layers[l].o.weight, &want.layers[l].o.weight) < 1e-5, "layer {l} o_proj");
        assert!(diff(&with.layers[l].q.weight, &want.layers[l].q.weight) < 1e-5, "layer {l} q_proj (merged, not ablated)");
    }
    assert!(diff(&with.layers[0].q.weight, &without.layers[0].q.weight) > 1e-3, "the adapter changed nothing");
}

/// Outputs that would destroy an input, or an existing file that is not this command's output,
/// are refused before anything is written (found by the CLI audit: `generate --out` appended to
/// its own prompts file, and cut the "torn" last line off any file it was pointed at).
#[test]
fn outputs_never_overwrite_inputs_or_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(&model, &tiny_config(Arch::Llama), 1).unwrap();
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "hello there\nin out\n").unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes, no final newline").unwrap();
    for (out, what) in [(&prompts, "--prompts input"), (&model, "--model input"), (&notes, "not emlab generate output")] {
        let before = std::fs::read(out).unwrap();
        let o = emlab()
            .args(["generate", "--max-new-tokens", "2", "--model"])
            .arg(&model)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(what) && err.trim_end().lines().count() == 1, "{err}");
        assert_eq!(std::fs::read(out).unwrap(), before, "{} was modified", out.display());
    }
    let o = emlab()
        .args(["generate", "--samples", "0", "--model"])
        .arg(&model)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("g.jsonl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--samples"));
    // `direction --out` on the judged log it reads (the log is checked before any model work).
    let log = dir.path().join("judged.jsonl");
    std::fs::write(&log, "{}\n").unwrap();
    let o = emlab().args(["direction", "--model"]).arg(&model).arg("--log").arg(&log).arg("--out").arg(&log).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--log input"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "{}\n");
}

/// Error lines keep toml's message (its Display is several lines and only the first, "TOML parse
/// error at line 5, column 1", used to be printed) and do not repeat a cause twice.
#[test]
fn error_lines_say_what_and_say_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(&model, &tiny_config(Arch::Llama), 1).unwrap();
    let spec = dir.path().join("steer.toml");
    std::fs::write(
        &spec,
        "[[edits]]\nkind = \"add\"\nlayers = [1]\ncoef = 4.0\ncolour = \"red\"\nvector = { type = \"inline\", values = [1.0] }\n",
    )
    .unwrap();
    let o = emlab()
        .args(["steer", "compile", "--model"])
        .arg(&model)
        .arg("--spec")
        .arg(&spec)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("steer.toml") && err.contains("line 5") && err.contains("unknown field `colour`"), "{err}");
    // A folder given as a data file: "Is a directory" once, not "...: Is a directory (os error
    // 21): Is a directory (os error 21)".
    let o = emlab().args(["data", "stats"]).arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.matches("Is a directory").count(), 1, "{err}");
}

/// Negative steering strengths need no `=`: `--alphas -8,-4,4,8` reaches the command (which then
/// names the missing direction file) instead of clap's "unexpected argument '-8'".
#[test]
fn negative_alphas_parse_without_an_equals_sign() {
    let dir = tempfile::tempdir().unwrap();
    let o = emlab()
        .args(["steer", "sweep", "--layer", "1", "--alphas", "-8,-4,4,8", "--direction"])
        .arg(dir.path().join("missing.safetensors"))
        .arg("--out")
        .arg(dir.path().join("sweep"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!err.contains("unexpected argument"), "{err}");
    assert!(err.contains("missing.safetensors"), "{err}");
}
