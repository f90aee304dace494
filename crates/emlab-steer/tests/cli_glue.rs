//! Compiles and runs the CLI glue of `emlab` (crates/emlab/src/cmd/steer.rs) against tiny models,
//! so the subcommands are checked here too.

#[path = "../../emlab/src/cmd/steer.rs"]
#[allow(dead_code)]
mod steer;

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
        direction: df.clone(),
        layer: 1,
        direction_layer: None,
        prompts: None,
        all_tokens: false,
        json: true,
    })
    .unwrap();
    let out = dir.path().join("rep");
    run_ablate(AblateArgs { model: Some(m.clone()), direction: df.clone(), direction_layer: 2, out: out.clone() }).unwrap();
    assert!(out.join("model.safetensors").exists() && out.join("tokenizer_config.json").exists());
    let cv = dir.path().join("cv.gguf");
    run_cvec(CvecArgs {
        cmd: CvecCmd::Export { spec: None, direction: Some(df.clone()), layers: vec![1, 2], coef: 2.0, model: None, hint: "llama".into(), out: cv.clone() },
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
        cmd: CvecCmd::Export { spec: None, direction: Some(df), layers: vec![0], coef: 1.0, model: None, hint: String::new(), out: dir.path().join("bad.gguf") },
    });
    assert!(bad.unwrap_err().to_string().contains("blocks.0"));
}
