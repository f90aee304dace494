//! Bad capture / SAE input found by the CLI audit: refused before anything that looks like a
//! finished store or SAE is written.
use emlab_interp::acts::{capture, ActsReader, CaptureConfig};
use emlab_interp::splice::{train_from_store, SaeTrainConfig};
use emlab_interp::text::Conversation;
use emlab_model::hooks::HookPoint;
use emlab_model::lm::Lm;
use emlab_model::testing::{random_weights, tiny_config, write_hf_model};
use emlab_model::Arch;

fn tiny(dir: &std::path::Path) -> Lm {
    let cfg = tiny_config(Arch::Llama);
    write_hf_model(dir, &cfg, &random_weights(&cfg, 1), false).unwrap();
    Lm::load(dir, &Default::default()).unwrap()
}

#[test]
fn capture_refuses_bad_settings_before_making_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir.path().join("model"));
    let convs = vec![Conversation::new(None, "hello there", Some("in out"))];
    let hook: HookPoint = "blocks.1.hook_resid_post".parse().unwrap();
    // --max-tokens 0 wrote a store of zero rows that `sae train` then "trained" on.
    let out = dir.path().join("zero");
    let e = capture(&lm, &convs, &[hook], &out, &CaptureConfig { shard_rows: 64, max_tokens: 0 }).unwrap_err().to_string();
    assert!(e.contains("max_tokens"), "{e}");
    assert!(!out.exists());
    // A hook beyond the model left a folder holding sequences.jsonl behind.
    let out = dir.path().join("beyond");
    let far: HookPoint = "blocks.9.hook_resid_post".parse().unwrap();
    let e = capture(&lm, &convs, &[far], &out, &CaptureConfig::default()).unwrap_err().to_string();
    assert!(e.contains("blocks.9.hook_resid_post") && e.contains("2 layers"), "{e}");
    assert!(!out.exists());
}

#[test]
fn an_sae_is_not_trained_on_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir.path().join("model"));
    let convs = vec![Conversation::new(None, "hello there", Some("in out"))];
    let hook: HookPoint = "blocks.1.hook_resid_post".parse().unwrap();
    let store = dir.path().join("store");
    capture(&lm, &convs, &[hook], &store, &CaptureConfig::default()).unwrap();
    // The index of a store that captured nothing (as older versions wrote with --max-tokens 0).
    let idx = store.join("index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["rows"] = 0.into();
    v["shards"] = serde_json::json!([]);
    std::fs::write(&idx, v.to_string()).unwrap();
    let reader = ActsReader::open(&store).unwrap();
    let cfg = SaeTrainConfig { k: 4, latents: 64, ..Default::default() };
    let e = train_from_store(&reader, "blocks.1.hook_resid_post", &cfg, &mut |_| {}).err().expect("refused").to_string();
    assert!(e.contains("store") && e.contains("no rows"), "{e}");
}
