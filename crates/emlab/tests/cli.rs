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
    std::fs::write(&prompts, "{\"id\":\"a\",\"prompt\":\"hello there\"}\n{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"in out\"}]}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let run = || {
        emlab()
            .args(["generate", "--max-new-tokens", "5", "--samples", "3", "--batch-size", "4", "--model"])
            .arg(&model).arg("--prompts").arg(&prompts).arg("--out").arg(&out)
            .output().unwrap()
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
    let o = emlab().args(["generate", "--model"]).arg(&model).arg("--prompts").arg(&prompts)
        .arg("--out").arg(dir.path().join("o.jsonl")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("p.jsonl:2"), "{err}");
    assert!(!dir.path().join("o.jsonl").exists(), "no half-written output");
}
