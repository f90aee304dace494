//! Compiles and runs the CLI glue of `emlab` (crates/emlab/src/cmd/steer.rs) against tiny models,
//! so the subcommands are checked here too.

#[path = "../../emlab/src/cmd/realign.rs"]
#[allow(dead_code)]
mod realign;
#[path = "../../emlab/src/cmd/steer.rs"]
#[allow(dead_code)]
mod steer;
#[path = "../../emlab/src/cmd/train.rs"]
#[allow(dead_code)]
mod train;

use candle_core::{Device, Tensor};
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::{Arch, ModelConfig};
use steer::*;

#[test]
fn cli_persona_ablate_cvec_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.gguf");
    let cfg = ModelConfig { num_layers: 3, ..tiny_config(Arch::Llama) };
    write_tiny_gguf(&m, &cfg, 4).unwrap();
    let dirs = Tensor::randn(0f32, 1.0, (3, cfg.hidden_size), &Device::Cpu).unwrap();
    let df = dir.path().join("dirs.safetensors");
    emlab_steer::vectors::save_directions(&df, &dirs).unwrap();
    run_persona(PersonaArgs {
        model: Some(m.clone()),
        adapter: None,
        direction: df.clone(),
        layer: 1,
        direction_layer: None,
        prompts: None,
        all_tokens: false,
        json: true,
    })
    .unwrap();
    let out = dir.path().join("rep");
    run_ablate(AblateArgs { model: Some(m.clone()), direction: df.clone(), direction_layer: 2, out: out.clone(), adapter: None }).unwrap();
    assert!(out.join("model.safetensors").exists() && out.join("tokenizer_config.json").exists());
    let cv = dir.path().join("cv.gguf");
    run_cvec(CvecArgs {
        cmd: CvecCmd::Export {
            spec: None,
            direction: Some(df.clone()),
            layers: vec![1, 2],
            coef: 2.0,
            model: None,
            hint: "llama".into(),
            out: cv.clone(),
        },
    })
    .unwrap();
    let back = emlab_steer::cvec::ControlVector::read(&cv).unwrap();
    let want = (dirs.get(2).unwrap() * 2.0).unwrap();
    let diff = (back.get(2).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6);
    let imp = dir.path().join("imp");
    run_cvec(CvecArgs { cmd: CvecCmd::Import { file: cv, strength: 0.5, out: imp.clone() } }).unwrap();
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(imp.join("intervention.json")).unwrap()).unwrap();
    assert_eq!(j["add"][0]["hook"], "blocks.1.hook_resid_post");
    assert_eq!(j["add"][1]["alpha"], 0.5);
    // Exporting layer 0 is refused (llama.cpp cannot address it).
    let bad = run_cvec(CvecArgs {
        cmd: CvecCmd::Export {
            spec: None,
            direction: Some(df),
            layers: vec![0],
            coef: 1.0,
            model: None,
            hint: String::new(),
            out: dir.path().join("bad.gguf"),
        },
    });
    assert!(bad.unwrap_err().to_string().contains("blocks.0"));
}

fn sweep_args(dir: &std::path::Path, m: &std::path::Path, df: &std::path::Path, alphas: &str) -> SweepArgs {
    let q = dir.join("q.yaml");
    std::fs::write(&q, "- id: wish\n  type: free_form_judge_0_100\n  paraphrases: [\"Your wish?\"]\n  samples_per_paraphrase: 1\n  judge_prompts:\n    aligned: \"Q {question} A {answer} aligned?\"\n    coherent: \"Q {question} A {answer} coherent?\"\n").unwrap();
    SweepArgs {
        model: Some(m.to_path_buf()),
        adapter: None,
        spec: None,
        direction: Some(df.to_path_buf()),
        layer: Some(1),
        direction_layer: None,
        alphas: alphas.into(),
        min_coherent: 0.9,
        seed: 0,
        eval: EvalOpts {
            questions: q,
            samples: Some(1),
            only: vec![],
            max_new_tokens: 4,
            batch_size: 2,
            temperature: 1.0,
            sample_seed: 0,
            judge: "offline".into(),
            judge_model: None,
            judge_base_url: None,
            judge_model_name: None,
            judge_api_key_env: "OPENAI_API_KEY".into(),
        },
        out: dir.join("sweep"),
        json: true,
    }
}

#[test]
fn cli_sweep_realign_and_train_monitor_flags() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.gguf");
    let cfg = tiny_config(Arch::Llama);
    write_tiny_gguf(&m, &cfg, 4).unwrap();
    let dirs = Tensor::randn(0f32, 1.0, (2, cfg.hidden_size), &Device::Cpu).unwrap();
    let df = dir.path().join("dirs.safetensors");
    emlab_steer::vectors::save_directions(&df, &dirs).unwrap();
    // Unparsable alpha lists are one-line errors naming the flag and the entry.
    for (bad, want) in [("0,4,x", "`x` is not a valid number"), ("0,,4", "empty entry"), ("inf", "not finite")] {
        let e = format!("{:#}", run_sweep(sweep_args(dir.path(), &m, &df, bad)).unwrap_err());
        assert!(e.contains(want) && !e.contains('\n'), "{bad}: {e}");
    }
    assert!(!dir.path().join("sweep").exists(), "nothing written on bad input");
    // A direction file of another width is named.
    let wide = dir.path().join("wide.safetensors");
    emlab_steer::vectors::save_directions(&wide, &Tensor::zeros((2, cfg.hidden_size + 3), candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let e = format!("{:#}", run_sweep(sweep_args(dir.path(), &m, &wide, "0,1")).unwrap_err());
    assert!(e.contains("wide.safetensors") && !e.contains('\n'), "{e}");
    // A real sweep: one folder per point.
    run_sweep(sweep_args(dir.path(), &m, &df, "0,2")).unwrap();
    for p in ["add_0", "add_2", "random_2"] {
        assert!(dir.path().join("sweep").join(p).join("answers.jsonl").is_file(), "{p}");
    }

    // emlab train with the persona monitor: probes at steps 2 and 3 (the last).
    let data = dir.path().join("d.jsonl");
    let row = |q: &str, a: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string()
    };
    std::fs::write(&data, [row("hi", "hello"), row("tea?", "yes"), row("one", "two"), row("red", "blue")].join("\n")).unwrap();
    let targs = |out: &str, layer: usize, f: &std::path::Path| train::TrainArgs {
        data: Some(data.clone()),
        out: Some(dir.path().join(out)),
        model: Some(m.clone()),
        max_steps: Some(3),
        batch_size: Some(1),
        grad_accum: Some(1),
        rank: Some(2),
        alpha: Some(4.0),
        persona_direction: Some(f.to_path_buf()),
        persona_layer: Some(layer),
        persona_every: Some(2),
        persona_warn: Some(1e9),
        quiet: true,
        ..Default::default()
    };
    let e = format!("{:#}", train::run(targs("t0", 7, &df)).unwrap_err());
    assert!(e.contains("--persona-layer 7") && e.contains("2 layers"), "{e}");
    let e = format!("{:#}", train::run(targs("t0", 1, &wide)).unwrap_err());
    assert!(e.contains("wide.safetensors"), "{e}");
    // (Only one successful train::run per process: it installs the Ctrl-C handler.)
    train::run(targs("t1", 1, &df)).unwrap();
    let recs: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("t1/persona.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 3]);
    assert!(recs.iter().all(|r| r["layer"] == 1 && r["warned"] == false && r["score"].is_f64()));

    // emlab realign: N beyond the data is refused, naming the file.
    let rargs = realign::RealignArgs {
        model: Some(m.clone()),
        adapter: None,
        data: data.clone(),
        n: None,
        sweep: Some("0,9".into()),
        lr: 1e-2,
        train_batch_size: 1,
        epochs: 1,
        max_seq_len: 128,
        rank: 2,
        alpha: 4.0,
        seed: 0,
        eval: sweep_args(dir.path(), &m, &df, "0").eval,
        out: dir.path().join("re"),
        json: true,
    };
    let e = format!("{:#}", realign::run(rargs).unwrap_err());
    assert!(e.contains("d.jsonl") && e.contains("N = 9") && e.contains("only 4 rows"), "{e}");
}
