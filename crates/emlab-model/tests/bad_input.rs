//! Bad input found by the second CLI audit: shard paths that leave the model folder, rows the
//! chat template cannot place, sampling settings checked before any output exists.
use emlab_model::chat::{ChatTemplate, Message};
use emlab_model::generate::SamplingParams;
use emlab_model::testing::{tiny_config, write_tiny_hf, TINY_CHAT_TEMPLATE};
use emlab_model::{Arch, LoadOptions, Model};

/// Points the first shard of a sharded tiny folder at `shard` (the file it names exists, outside
/// the folder, so only the path check can refuse it).
fn index_with_shard(dir: &std::path::Path, shard: &str) -> std::path::PathBuf {
    let model = dir.join("m");
    write_tiny_hf(&model, &tiny_config(Arch::Llama), 2, true).unwrap();
    let outside = dir.join("x.safetensors");
    std::fs::copy(model.join("model-00001-of-00002.safetensors"), &outside).unwrap();
    let index = model.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace("model-00001-of-00002.safetensors", shard);
    std::fs::write(&index, text).unwrap();
    model
}

#[test]
fn shards_outside_the_model_folder_are_refused_naming_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("x.safetensors").display().to_string();
    for (i, shard) in ["../x.safetensors", "sub/../../x.safetensors", abs.as_str()].into_iter().enumerate() {
        let d = dir.path().join(format!("case{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(dir.path().join("x.safetensors"), d.join("x.safetensors")).ok();
        let model = index_with_shard(&d, shard);
        let e = Model::load(&model, &LoadOptions::default()).expect_err("refused").to_string();
        assert!(e.contains("model.safetensors.index.json"), "{e}");
        assert!(e.contains("outside the model folder") && e.contains(shard), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // A plain name (and `./name`) in the folder still loads.
    let d = dir.path().join("ok");
    std::fs::create_dir_all(&d).unwrap();
    let model = index_with_shard(&d, "./model-00001-of-00002.safetensors");
    std::fs::rename(d.join("x.safetensors"), model.join("model-00001-of-00002.safetensors")).unwrap();
    Model::load(&model, &LoadOptions::default()).unwrap();
    // A non-string entry is named too, rather than silently dropped (then "missing tensor").
    let d = dir.path().join("num");
    std::fs::create_dir_all(&d).unwrap();
    let model = index_with_shard(&d, "model-00001-of-00002.safetensors");
    let index = model.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let first = v["weight_map"].as_object().unwrap().keys().next().unwrap().clone();
    v["weight_map"][&first] = serde_json::json!(7);
    std::fs::write(&index, v.to_string()).unwrap();
    let e = Model::load(&model, &LoadOptions::default()).expect_err("refused").to_string();
    assert!(e.contains("model.safetensors.index.json") && e.contains(&format!("`{first}`")) && e.contains("not a shard file name"), "{e}");
}

#[test]
fn a_reply_before_any_user_turn_is_named_as_such() {
    // The tiny template (like SmolLM2's) adds a default system prompt when the first message is
    // not a system message, so an assistant-first row is not prefix-stable; the error used to
    // blame the template.
    let t = ChatTemplate::new(TINY_CHAT_TEMPLATE, None, Some("<|im_end|>"), "tiny").unwrap();
    let e = t.render_with_spans(&[Message::assistant("a"), Message::user("q")]).unwrap_err().to_string();
    assert!(e.contains("message 0 is an assistant turn with no user turn before it"), "{e}");
    let e = t.render_with_spans(&[Message::system("s"), Message::assistant("a"), Message::user("q")]).err().map(|e| e.to_string());
    // With a leading system message the template is prefix-stable: spans are found (the row
    // is refused by the data loader instead, see emlab-data).
    assert!(e.is_none(), "{e:?}");
    // A conversation ending on a user turn still has its earlier reply located.
    let (text, spans) = t.render_with_spans(&[Message::user("q"), Message::assistant("a"), Message::user("q2")]).unwrap();
    assert_eq!(&text[spans[0].content.clone()], "a");
}

#[test]
fn sampling_settings_can_be_checked_before_anything_is_written() {
    assert!(SamplingParams::default().validate().is_ok());
    let e = SamplingParams { temperature: -1.0, ..Default::default() }.validate().unwrap_err().to_string();
    assert!(e.contains("temperature must be >= 0, got -1"), "{e}");
    let e = SamplingParams { top_p: 0.0, ..Default::default() }.validate().unwrap_err().to_string();
    assert!(e.contains("top_p must be in (0, 1]"), "{e}");
    assert!(SamplingParams { batch_size: 0, ..Default::default() }.validate().is_err());
}
