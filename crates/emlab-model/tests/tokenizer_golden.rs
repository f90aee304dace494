//! Golden token ids for SmolLM2 and Qwen2.5, built from their GGUF files, against ids produced by
//! an independent reference (Python `tokenizers` running each model's published tokenizer.json
//! pipeline; cross-checked with transformers' GGUF tokenizer). The fixtures are written by
//! `tools/reference/make_token_fixtures.py`; see `tools/reference/README.md`.
//!
//! The GGUF files are looked up in `$EMLAB_MODELS` or `<repo>/models` and fetched when absent
//! (see `model_file`).

mod common;
use std::path::Path;

use emlab_model::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

use common::model_file;

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every fixture string: ids, token strings, decoding, streaming decoding.
fn check_golden(tok: &Tokenizer, fx: &Value) {
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 24, "fixture has only {} cases", cases.len());
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text, false).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
            continue;
        }
        let want_tokens: Vec<&str> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let got_tokens: Vec<String> = got.iter().map(|&i| tok.token_str(i).unwrap()).collect();
        assert_eq!(got_tokens, want_tokens, "{text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), case["decoded"].as_str().unwrap(), "decode {text:?}");
        assert_eq!(tok.decode(&got, true).unwrap(), case["decoded_skip_special"].as_str().unwrap(), "decode(skip_special) {text:?}");
        // Streaming yields the same text, and never a partial UTF-8 character.
        let mut stream = tok.stream(false);
        let mut streamed = String::new();
        for &id in &got {
            if let Some(piece) = stream.step(id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{text:?}: streamed a broken character");
                streamed.push_str(&piece);
            }
        }
        streamed.push_str(&stream.finish().unwrap());
        assert_eq!(streamed, case["decoded"].as_str().unwrap(), "stream {text:?}");
    }
    assert!(failures.is_empty(), "{} token-id mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// tokenizer.json written from the GGUF-built tokenizer reloads to the same ids and special ids.
fn check_json_roundtrip(tok: &Tokenizer, fx: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = Tokenizer::from_file(&path).unwrap();
    assert_eq!(back.vocab_size(), tok.vocab_size());
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(back.encode(text, false).unwrap(), ids_of(&case["ids"]), "reloaded {text:?}");
    }
    // Without a tokenizer_config.json the end tokens are still found by name.
    assert_eq!(back.chat_end_id(), tok.chat_end_id());
    assert!(back.eos_ids().contains(&tok.chat_end_id().unwrap()));
}

#[test]
fn smollm2_golden_ids() {
    let fx = fixture("tokens_smollm2.json");
    let Some(path) = model_file(&fx) else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    check_golden(&tok, &fx);
    check_json_roundtrip(&tok, &fx);

    // Special ids from the GGUF metadata (bos 1, eos 2, pad 2, no BOS added).
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), 2);
    assert_eq!(tok.pad_id(), 2);
    assert_eq!(tok.chat_end_id(), Some(2));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.eos_ids(), &[0, 2]); // <|endoftext|>, <|im_end|>
    assert!(!tok.adds_bos());
    assert_eq!(tok.encode("hi", true).unwrap(), tok.encode("hi", false).unwrap());
    assert_eq!(tok.vocab_size(), 49152);
    // The trap candle's builder falls into: no prefix space.
    assert_eq!(tok.token_str(tok.encode("hi", false).unwrap()[0]).unwrap(), "hi");
    assert!(tok.is_special(2) && !tok.is_special(100));
}

#[test]
fn qwen2_golden_ids() {
    let fx = fixture("tokens_qwen2.json");
    let Some(path) = model_file(&fx) else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    check_golden(&tok, &fx);
    check_json_roundtrip(&tok, &fx);

    assert_eq!(tok.vocab_size(), 151936);
    assert_eq!(tok.eos_id(), 151645);
    assert_eq!(tok.pad_id(), 151643);
    assert_eq!(tok.chat_end_id(), Some(151645));
    assert_eq!(tok.eos_ids(), &[151643, 151645]); // <|endoftext|>, <|im_end|>
                                                  // <tool_call> is a user-defined (not special) token: one id, kept by skip_special decoding.
    let ids = tok.encode("<tool_call>x", false).unwrap();
    assert_eq!(ids[0], 151657);
    assert!(!tok.is_special(151657));
    assert_eq!(tok.decode(&ids, true).unwrap(), "<tool_call>x");
}

#[test]
fn streaming_holds_back_partial_utf8() {
    let fx = fixture("tokens_smollm2.json");
    let Some(path) = model_file(&fx) else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    // "🙂" is four bytes, which byte-level BPE may split over several tokens.
    let ids = tok.encode("🙂", false).unwrap();
    assert!(ids.len() > 1, "expected a multi-token emoji, got {ids:?}");
    let mut stream = tok.stream(true);
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(stream.step(id).unwrap(), None, "emitted text before the character was complete");
    }
    assert_eq!(stream.step(*ids.last().unwrap()).unwrap().as_deref(), Some("🙂"));
    assert_eq!(stream.finish().unwrap(), "");
    // A stream cut inside a character flushes a replacement character, not a panic.
    let mut cut = tok.stream(true);
    assert_eq!(cut.step(ids[0]).unwrap(), None);
    assert_eq!(cut.finish().unwrap(), "\u{FFFD}");
    // Ids outside the vocabulary are an error, not a panic.
    assert!(tok.decode(&[u32::MAX], false).is_err());
    assert!(tok.stream(false).step(49152).is_err());
}

#[test]
fn bad_tokenizer_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing tokenizer.json.
    let missing = dir.path().join("nope/tokenizer.json");
    let e = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(e.contains("nope/tokenizer.json"), "{e}");
    // Malformed tokenizer.json.
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{\"model\": 3").unwrap();
    let e = Tokenizer::from_file(&bad).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("not a valid tokenizer.json"), "{e}");
    // A file that is not GGUF.
    let notgguf = dir.path().join("x.gguf");
    std::fs::write(&notgguf, b"definitely not a gguf file").unwrap();
    let e = Tokenizer::from_gguf(&notgguf).unwrap_err().to_string();
    assert!(e.contains("x.gguf"), "{e}");
    // A missing GGUF.
    let e = Tokenizer::from_gguf(dir.path().join("absent.gguf")).unwrap_err().to_string();
    assert!(e.contains("absent.gguf"), "{e}");
}

/// Byte-level metadata for a tiny vocabulary with merges for "hi", " hi" and "12", plus one
/// control token.
fn tiny_metadata(pre: Option<&str>) -> std::collections::HashMap<String, candle_core::quantized::gguf_file::Value> {
    use candle_core::quantized::gguf_file::Value as V;
    let s = |x: &str| V::String(x.to_string());
    let mut md = std::collections::HashMap::new();
    md.insert("tokenizer.ggml.model".to_string(), s("gpt2"));
    if let Some(p) = pre {
        md.insert("tokenizer.ggml.pre".to_string(), s(p));
    }
    let tokens = ["<|im_end|>", "h", "i", "hi", "Ġ", "1", "2", "Ġh", "Ġhi", "12"];
    md.insert("tokenizer.ggml.tokens".to_string(), V::Array(tokens.iter().map(|t| s(t)).collect()));
    md.insert("tokenizer.ggml.token_type".to_string(), V::Array([3, 1, 1, 1, 1, 1, 1, 1, 1, 1].iter().map(|&t| V::I32(t)).collect()));
    md.insert("tokenizer.ggml.merges".to_string(), V::Array(["Ġ h", "h i", "Ġh i", "1 2"].iter().map(|m| s(m)).collect()));
    md.insert("tokenizer.ggml.eos_token_id".to_string(), V::U32(0));
    md
}

#[test]
fn pre_tokenizer_is_chosen_by_name() {
    let src = Path::new("tiny.gguf");
    // No prefix space for any of them ("hi" stays "hi", not "Ġhi"); smollm and qwen2 split
    // digits one by one, GPT-2 lets the "1 2" merge apply.
    for (pre, twelve) in
        [(Some("smollm"), vec![5, 6]), (Some("qwen2"), vec![5, 6]), (Some("gpt2"), vec![9]), (Some("default"), vec![9]), (None, vec![9])]
    {
        let tok = Tokenizer::from_gguf_metadata(&tiny_metadata(pre), src).unwrap();
        assert_eq!(tok.encode("hi hi", false).unwrap(), vec![3, 8], "{pre:?}");
        assert_eq!(tok.encode("12", false).unwrap(), twelve, "{pre:?}");
        assert_eq!(tok.encode("hi<|im_end|>", false).unwrap(), vec![3, 0], "{pre:?}");
        assert_eq!(tok.decode(&[3, 8, 0], true).unwrap(), "hi hi", "{pre:?}");
        assert_eq!(tok.eos_ids(), &[0]);
    }
}

#[test]
fn bad_gguf_tokenizer_metadata_is_an_error() {
    use candle_core::quantized::gguf_file::Value as V;
    let src = Path::new("models/tiny.gguf");
    let err = |md| Tokenizer::from_gguf_metadata(&md, src).unwrap_err().to_string();

    let e = err(tiny_metadata(Some("klingon")));
    assert!(e.contains("models/tiny.gguf") && e.contains("unknown tokenizer.ggml.pre \"klingon\""), "{e}");

    let mut md = tiny_metadata(Some("smollm"));
    md.remove("tokenizer.ggml.model");
    let e = err(md);
    assert!(e.contains("models/tiny.gguf") && e.contains("no tokenizer metadata"), "{e}");

    let mut md = tiny_metadata(Some("smollm"));
    md.insert("tokenizer.ggml.model".into(), V::String("llama".into()));
    assert!(err(md).contains("not supported"));

    let mut md = tiny_metadata(Some("smollm"));
    md.insert("tokenizer.ggml.merges".into(), V::Array(vec![V::String("nospace".into())]));
    assert!(err(md).contains("tokenizer.ggml.merges[0]"));

    let mut md = tiny_metadata(Some("smollm"));
    md.insert("tokenizer.ggml.token_type".into(), V::Array(vec![V::I32(1)]));
    assert!(err(md).contains("token_type has 1 entries"));

    let mut md = tiny_metadata(Some("smollm"));
    md.insert("tokenizer.ggml.eos_token_id".into(), V::U32(999));
    assert!(err(md).contains("eos id 999 is outside the vocabulary"));

    let mut md = tiny_metadata(Some("smollm"));
    md.remove("tokenizer.ggml.tokens");
    assert!(err(md).contains("`tokenizer.ggml.tokens` missing"));
}

#[test]
fn gguf_file_without_tokenizer_is_an_error() {
    use candle_core::quantized::gguf_file::{self, Value as V};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notok.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let arch = V::String("llama".into());
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
    drop(f);
    let e = Tokenizer::from_gguf(&path).unwrap_err().to_string();
    assert!(e.contains("notok.gguf") && e.contains("no tokenizer metadata"), "{e}");
}
