//! Adapter configs that disagree with their tensors (found by the CLI audit): refused with the
//! config file and module named, instead of merging infinities or a silently wrong scale.
use emlab_model::load::Weights;
use emlab_model::testing::{random_weights, tiny_config};
use emlab_model::{Arch, Model};
use emlab_train::{adapter, LoraConfig};

fn tiny() -> Model {
    let cfg = tiny_config(Arch::Llama);
    let w = Weights { tensors: random_weights(&cfg, 1).into_iter().collect(), origin: "mem".into() };
    Model::from_weights(cfg, w, &Default::default()).unwrap()
}

#[test]
fn a_config_rank_other_than_the_tensors_rank_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let lora = LoraConfig { r: 2, alpha: 4.0, rslora: true, targets: vec!["q".into()], layers: vec![0], ..Default::default() };
    adapter::attach(&mut m, &lora, 0).unwrap();
    adapter::save_peft(&m, dir.path(), &adapter::PeftConfig::from_lora(&lora, 2, "tiny")).unwrap();
    let cfg_path = dir.path().join("adapter_config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    // As saved, it loads.
    let mut fresh = tiny();
    adapter::load_peft(&mut fresh, dir.path()).unwrap();
    let edit = |k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(&original).unwrap();
        j[k] = v;
        std::fs::write(&cfg_path, j.to_string()).unwrap();
        adapter::load_peft(&mut tiny(), dir.path()).err().map(|e| e.to_string())
    };
    // r = 0: the rsLoRA scale alpha / sqrt(0) merged infinities into the weights.
    let e = edit("r", serde_json::json!(0)).expect("r 0 refused");
    assert!(e.contains("adapter_config.json") && e.contains("`r` is 0"), "{e}");
    // r = 4 for rank-2 tensors: the adapter merged at sqrt(2/4) of its trained strength.
    let e = edit("r", serde_json::json!(4)).expect("r 4 refused");
    assert!(
        e.contains("adapter_config.json") && e.contains("layers.0.self_attn.q_proj") && e.contains("r 4") && e.contains("rank 2"),
        "{e}"
    );
    // A rank_pattern entry is the module's rank too.
    let e = edit("rank_pattern", serde_json::json!({"q_proj": 8})).expect("rank_pattern 8 refused");
    assert!(e.contains("r 8") && e.contains("rank 2"), "{e}");
    assert!(edit("rank_pattern", serde_json::json!({"q_proj": 2})).is_none());
}

/// Tensors for modules the config does not target (an edited config, or tensors from another
/// adapter): PEFT would not load them there, so emlab refuses instead of applying them.
#[test]
fn tensors_outside_target_modules_or_layers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let lora =
        LoraConfig { r: 2, alpha: 4.0, rslora: true, targets: vec!["q".into(), "down".into()], layers: vec![1], ..Default::default() };
    adapter::attach(&mut m, &lora, 0).unwrap();
    adapter::save_peft(&m, dir.path(), &adapter::PeftConfig::from_lora(&lora, 2, "tiny")).unwrap();
    let cfg_path = dir.path().join("adapter_config.json");
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(original["layers_to_transform"], serde_json::json!([1]));
    let load = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut j = original.clone();
        edit(&mut j);
        std::fs::write(&cfg_path, j.to_string()).unwrap();
        adapter::load_peft(&mut tiny(), dir.path()).err().map(|e| e.to_string())
    };
    // As saved, and in PEFT's other spellings of the same targets, it loads.
    assert_eq!(load(&|_| {}), None);
    assert_eq!(load(&|j| j["target_modules"] = serde_json::json!(["self_attn.q_proj", "mlp.down_proj"])), None);
    assert_eq!(load(&|j| j["target_modules"] = serde_json::json!("all-linear")), None);
    assert_eq!(load(&|j| j["layers_to_transform"] = serde_json::Value::Null), None);
    // A target the tensors exceed.
    let e = load(&|j| j["target_modules"] = serde_json::json!(["q_proj"])).expect("down_proj not targeted");
    assert!(e.contains("adapter_config.json") && e.contains("layers.1.mlp.down_proj") && e.contains("target_modules [\"q_proj\"]"), "{e}");
    // A name that only ends like one (`own_proj` is not `down_proj`).
    assert!(load(&|j| j["target_modules"] = serde_json::json!(["q_proj", "own_proj"])).is_some());
    // Layers the config leaves out.
    let e = load(&|j| j["layers_to_transform"] = serde_json::json!([0])).expect("layer 1 not transformed");
    assert!(e.contains("layers.1.") && e.contains("layers_to_transform [0] leaves out layer 1"), "{e}");
}
