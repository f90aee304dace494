//! Chat templates rendered by emlab against renderings by Hugging Face transformers (Jinja2) of the
//! same GGUF templates, stored in `tests/fixtures/chat_*.json` by
//! `tools/reference/make_token_fixtures.py`; plus template loading, error and span tests on
//! templates the tests write themselves.

mod common;
use std::path::Path;

use emlab_model::chat::{ChatTemplate, Message};
use emlab_model::tokenizer::Tokenizer;
use emlab_model::Error;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

use common::model_file;

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Every fixture conversation renders byte-for-byte as transformers renders it.
fn check_against_reference(fixture_name: &str, default_system: &str) {
    let fx = fixture(fixture_name);
    // The template text itself is in the fixture, so parity is checked even without the model.
    let tpl =
        ChatTemplate::new(fx["chat_template"].as_str().unwrap(), fx["bos_token"].as_str(), fx["eos_token"].as_str(), fixture_name).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let mut seen = std::collections::HashSet::new();
    for case in cases {
        let msgs = messages(&case["messages"]);
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let want = case["rendered"].as_str().unwrap();
        assert_eq!(tpl.render(&msgs, gen).unwrap(), want, "{} gen={gen}", case["name"]);
        seen.insert(case["name"].as_str().unwrap().to_string());
        // Without a system message the template injects the model's default one.
        if msgs[0].role != "system" {
            assert!(want.starts_with(&format!("<|im_start|>system\n{default_system}<|im_end|>\n")), "{want}");
        }
        assert_eq!(want.ends_with("<|im_start|>assistant\n"), gen);
    }
    for name in ["system_given", "no_system", "multi_turn", "multi_turn_no_system"] {
        assert!(seen.contains(name), "fixture lacks {name}");
    }
    // The template read from the GGUF is the one the reference rendered.
    if let Some(path) = model_file(&fx) {
        let from_gguf = ChatTemplate::from_gguf(&path).unwrap();
        assert_eq!(from_gguf.source(), tpl.source());
        assert_eq!(from_gguf.eos_token(), Some("<|im_end|>"));
        for case in cases {
            let msgs = messages(&case["messages"]);
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(from_gguf.render(&msgs, gen).unwrap(), case["rendered"].as_str().unwrap());
        }
    }
}

#[test]
fn smollm2_matches_transformers() {
    check_against_reference("chat_smollm2.json", "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

#[test]
fn qwen2_matches_transformers() {
    check_against_reference("chat_qwen2.json", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
}

#[test]
fn assistant_spans_and_mask_on_real_template() {
    let fx = fixture("chat_smollm2.json");
    let tpl = ChatTemplate::new(fx["chat_template"].as_str().unwrap(), None, Some("<|im_end|>"), "smollm2").unwrap();
    let msgs = vec![
        Message::system("Be brief."),
        Message::user("Double 2?"),
        Message::assistant("4"),
        Message::user("Say hi in French, with an accent: é"),
        Message::assistant("Salut, ça va ?"),
    ];
    let (text, spans) = tpl.render_with_spans(&msgs).unwrap();
    assert_eq!(text, tpl.render(&msgs, false).unwrap());
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].message, 2);
    assert_eq!(spans[1].message, 4);
    assert_eq!(&text[spans[0].content.clone()], "4");
    assert_eq!(&text[spans[0].turn.clone()], "4<|im_end|>");
    assert_eq!(&text[spans[1].content.clone()], "Salut, ça va ?");
    assert_eq!(&text[spans[1].turn.clone()], "Salut, ça va ?<|im_end|>");
    // Each content is preceded by the assistant header.
    assert!(text[..spans[1].content.start].ends_with("<|im_start|>assistant\n"));

    let fxt = fixture("tokens_smollm2.json");
    let Some(path) = model_file(&fxt) else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    let (ids, mask) = tpl.encode_with_assistant_mask(&tok, &msgs).unwrap();
    assert_eq!(ids, tok.encode(&text, false).unwrap());
    assert_eq!(ids.len(), mask.len());
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&masked, false).unwrap(), "4<|im_end|>Salut, ça va ?<|im_end|>");
    // Two turns => exactly two <|im_end|> tokens are trained on, the other ones are not.
    let im_end = tok.chat_end_id().unwrap();
    assert_eq!(masked.iter().filter(|&&i| i == im_end).count(), 2);
    assert_eq!(ids.iter().filter(|&&i| i == im_end).count(), 5);
}

#[test]
fn loads_tokenizer_config_variants() {
    let dir = tempfile::tempdir().unwrap();
    let tpl = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}";
    // String template; bos/eos given as AddedToken objects.
    let cfg = serde_json::json!({
        "chat_template": tpl,
        "bos_token": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
        "eos_token": "</s>",
    });
    let path = dir.path().join("tokenizer_config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap();
    assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "<s>[user]x</s>");

    // A list of named templates: "default" is used unless a name is asked for.
    let cfg = serde_json::json!({
        "chat_template": [
            {"name": "default", "template": "D{{ messages[0].content }}"},
            {"name": "tool_use", "template": "T{{ messages[0].content }}"},
        ],
        "eos_token": "</s>",
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    assert_eq!(ChatTemplate::from_tokenizer_config(&path).unwrap().render(&[Message::user("x")], false).unwrap(), "Dx");
    let t = ChatTemplate::from_tokenizer_config_named(&path, Some("tool_use")).unwrap();
    assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "Tx");
    let e = ChatTemplate::from_tokenizer_config_named(&path, Some("nope")).unwrap_err().to_string();
    assert!(e.contains("no chat template named \"nope\"") && e.contains("tool_use"), "{e}");

    // No chat_template key: chat_template.jinja beside it.
    std::fs::write(&path, r#"{"eos_token": "</s>"}"#).unwrap();
    let e = ChatTemplate::from_tokenizer_config(&path).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("no chat template"), "{e}");
    std::fs::write(dir.path().join("chat_template.jinja"), "J{{ messages[0].content }}{{ eos_token }}").unwrap();
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "Jx</s>");

    // Malformed JSON and a missing file name the file.
    std::fs::write(&path, "{not json").unwrap();
    let e = ChatTemplate::from_tokenizer_config(&path).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("invalid JSON"), "{e}");
    let e = ChatTemplate::from_hf_dir(dir.path().join("absent")).unwrap_err().to_string();
    assert!(e.contains("absent/tokenizer_config.json"), "{e}");
}

#[test]
fn bad_templates_are_errors_not_panics() {
    // Does not compile.
    let e = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None, "bad.jinja").unwrap_err();
    assert!(matches!(e, Error::Template(_)));
    let e = e.to_string();
    assert!(e.contains("bad.jinja") && e.contains("does not compile") && !e.contains('\n'), "{e}");

    // raise_exception, as templates use it for unsupported roles.
    let tpl = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
               {{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{{ m.content }}{% endfor %}";
    let t = ChatTemplate::new(tpl, None, None, "strict.jinja").unwrap();
    assert_eq!(t.render(&[Message::user("ok")], false).unwrap(), "ok");
    let e = t.render(&[Message::new("tool", "x")], false).unwrap_err();
    assert!(matches!(e, Error::Template(_)));
    let e = e.to_string();
    assert!(e.contains("strict.jinja") && e.contains("Only user and assistant roles are supported!"), "{e}");

    // A runtime failure (calling an undefined function) is an error too.
    let t = ChatTemplate::new("{{ no_such_function() }}", None, None, "undef.jinja").unwrap();
    assert!(t.render(&[], false).unwrap_err().to_string().contains("undef.jinja"));

    // A template that is not prefix-stable cannot give spans, and says so.
    let t =
        ChatTemplate::new("{% for m in messages %}{{ m.content }}|{% endfor %}{{ messages|length }}", None, Some("|"), "unstable.jinja")
            .unwrap();
    let e = t.render_with_spans(&[Message::user("a"), Message::assistant("b")]).unwrap_err().to_string();
    assert!(e.contains("not prefix-stable"), "{e}");
}

#[test]
fn python_compatible_helpers() {
    let msgs = [Message::user("  <b>Tom & 'Jerry'</b> café\n  ")];
    // tojson does not HTML-escape and matches json.dumps(ensure_ascii=False) spacing.
    let t = ChatTemplate::new("{{ messages|tojson }}", None, None, "t").unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), r#"[{"role": "user", "content": "  <b>Tom & 'Jerry'</b> café\n  "}]"#);
    let t = ChatTemplate::new("{{ messages[0]|tojson(indent=2) }}", None, None, "t").unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), "{\n  \"role\": \"user\",\n  \"content\": \"  <b>Tom & 'Jerry'</b> café\\n  \"\n}");
    let t = ChatTemplate::new("{{ messages[0]|tojson(sort_keys=true, ensure_ascii=true) }}", None, None, "t").unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), r#"{"content": "  <b>Tom & 'Jerry'</b> caf\u00e9\n  ", "role": "user"}"#);
    // Python string methods via pycompat; trim_blocks/lstrip_blocks remove block-line whitespace.
    let t = ChatTemplate::new(
        "{% for m in messages %}\n    {% if m.content.strip().startswith('<b>') %}\n{{ m.content.strip().upper() }}\n    {% endif %}\n{% endfor %}",
        None,
        None,
        "t",
    )
    .unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), "<B>TOM & 'JERRY'</B> CAFÉ\n");
    // strftime_now gives a four-digit year; {% generation %} is accepted.
    let t = ChatTemplate::new("{% generation %}{{ strftime_now('%Y') }}{% endgeneration %}", None, None, "t").unwrap();
    let year: i32 = t.render(&[], false).unwrap().parse().unwrap();
    assert!(year >= 2024);
}
