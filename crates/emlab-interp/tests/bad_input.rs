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
    let e = train_from_store(&reader, "blocks.1.hook_resid_post", &cfg, &mut |_| {}).expect_err("refused").to_string();
    assert!(e.contains("store") && e.contains("no rows"), "{e}");
}

/// A file saved with a UTF-8 byte-order mark reads like one without: JSONL used to fail with
/// "line 1: bad JSON", and a plain prompts file kept the mark inside its first prompt.
#[test]
fn a_leading_byte_order_mark_is_not_part_of_the_first_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.jsonl");
    std::fs::write(&p, "\u{feff}{\"prompt\":\"hi\",\"answer\":\"yo\"}\n").unwrap();
    let c = emlab_interp::text::load_conversations(&p).unwrap();
    assert_eq!((c[0].user.as_str(), c[0].answer.as_deref()), ("hi", Some("yo")));
    let t = dir.path().join("p.txt");
    std::fs::write(&t, "\u{feff}first prompt\nsecond\n").unwrap();
    let c = emlab_interp::text::load_conversations(&t).unwrap();
    assert_eq!(c[0].user, "first prompt");
    let j = dir.path().join("judged.jsonl");
    std::fs::write(&j, "\u{feff}{\"question\":\"q\",\"answer\":\"a\",\"aligned\":10,\"coherent\":90}\n").unwrap();
    let rows = emlab_interp::direction::load_judged(&j).unwrap();
    assert_eq!((rows[0].aligned, rows[0].coherent), (Some(10.0), Some(90.0)));
}
