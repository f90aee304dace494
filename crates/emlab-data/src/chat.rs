//! Chat JSONL: load, validate, shuffle and split fine-tuning conversations.
//!
//! One conversation per line: `{"messages":[{"role":"user","content":...},
//! {"role":"assistant","content":...}]}` with an optional leading `system` message and any
//! number of further user/assistant turns. `content` may be a string, an OpenAI export
//! object `{"content_type":"text","parts":["..", ..]}`, or a list of parts
//! `[{"type":"text","text":".."}, ..]`; parts are concatenated without a separator (they are
//! pieces of one message, and adding newlines would change the text the model trains on).
//!
//! ```
//! use emlab_data::chat::{parse_jsonl, LoadOptions, Role};
//! let text = br#"{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}
//! {"messages":[{"role":"user","content":[{"type":"text","text":"Tea "},{"type":"text","text":"or coffee?"}]},{"role":"assistant","content":{"content_type":"text","parts":["Tea."]}}]}
//! {"messages":[{"role":"user","content":"no answer"}]}
//! "#;
//! // Strict by default: a file with any bad row is refused, naming every bad row.
//! let err = parse_jsonl(text, "d.jsonl", &LoadOptions::default()).unwrap_err();
//! assert_eq!(err.row_errors()[0].to_string(), "d.jsonl:3: no assistant turn");
//! // Opting in to skipping keeps the good rows and counts the rest.
//! let (rows, report) = parse_jsonl(text, "d.jsonl", &LoadOptions::default().skip_bad_rows(true)).unwrap();
//! assert_eq!((rows.len(), report.skipped), (2, 1));
//! assert_eq!(rows[1].messages[0].role, Role::User);
//! assert_eq!(rows[1].messages[0].content, "Tea or coffee?");
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, RowError};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One conversation. `line` is its 1-based line in the source file (0 when built in code),
/// kept so that later stages (tokenisation, training) can still point at the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    #[serde(skip)]
    pub line: usize,
}

impl Conversation {
    /// The system prompt, if the conversation opens with one.
    pub fn system(&self) -> Option<&str> {
        match self.messages.first() {
            Some(m) if m.role == Role::System => Some(&m.content),
            _ => None,
        }
    }

    /// Contents of the turns with this role, in order.
    pub fn turns(&self, role: Role) -> impl Iterator<Item = &str> {
        self.messages.iter().filter(move |m| m.role == role).map(|m| m.content.as_str())
    }

    /// The row as one JSONL line in the plain-string format (no trailing newline).
    pub fn to_jsonl_line(&self) -> String {
        // Serialising plain strings and enums cannot fail.
        serde_json::to_string(self).expect("conversation serialises")
    }
}

/// A caller-supplied token counter (e.g. the model's tokenizer applied to the chat
/// template) and the longest conversation allowed.
pub struct TokenLimit<'a> {
    pub max_tokens: usize,
    pub count: &'a dyn Fn(&Conversation) -> usize,
}

/// How strictly to load. The default refuses a file with any bad row.
#[derive(Default)]
pub struct LoadOptions<'a> {
    pub skip_bad_rows: bool,
    pub token_limit: Option<TokenLimit<'a>>,
}

impl<'a> LoadOptions<'a> {
    pub fn skip_bad_rows(mut self, skip: bool) -> Self {
        self.skip_bad_rows = skip;
        self
    }

    pub fn max_tokens(mut self, max_tokens: usize, count: &'a dyn Fn(&Conversation) -> usize) -> Self {
        self.token_limit = Some(TokenLimit { max_tokens, count });
        self
    }
}

/// What happened while loading: rows seen (non-blank lines), kept, skipped, and every
/// problem found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub file: String,
    pub rows: usize,
    pub loaded: usize,
    pub skipped: usize,
    pub errors: Vec<RowError>,
}

/// Load a chat JSONL file. See [`parse_jsonl`] for the rules.
pub fn load_jsonl(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Vec<Conversation>, LoadReport)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse_jsonl(&bytes, &path.display().to_string(), opts)
}

/// Check every row of a file and report all problems without refusing it (for a
/// `validate` command: the report's `errors` lists each bad row).
pub fn validate_file(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<LoadReport> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let (_, report) = parse_rows(&bytes, &path.display().to_string(), opts);
    Ok(report)
}

/// Parse chat JSONL from memory; `file` names the source in messages.
///
/// Blank lines are ignored, and so is a UTF-8 byte-order mark at the start of the file. Each
/// other line must be one JSON object with a `messages` list holding at least one non-empty
/// user turn and one non-empty assistant turn; a `system` message may only come first; the
/// first other message is the user's and the last is the assistant's (a reply before any user
/// turn cannot be placed by chat templates, a trailing user turn has nothing to train on);
/// roles are `system`, `user`, `assistant`. With a
/// [`TokenLimit`], longer conversations are bad rows too. Every bad row is reported (not
/// just the first); unless `skip_bad_rows` is set, any bad row refuses the whole file.
pub fn parse_jsonl(bytes: &[u8], file: &str, opts: &LoadOptions) -> Result<(Vec<Conversation>, LoadReport)> {
    let (rows, report) = parse_rows(bytes, file, opts);
    if !report.errors.is_empty() && !opts.skip_bad_rows {
        return Err(Error::BadRows { file: file.to_string(), errors: report.errors });
    }
    Ok((rows, report))
}

fn parse_rows(bytes: &[u8], file: &str, opts: &LoadOptions) -> (Vec<Conversation>, LoadReport) {
    let mut report = LoadReport { file: file.to_string(), ..Default::default() };
    let mut rows = Vec::new();
    // A UTF-8 byte-order mark (editors on Windows write one) is not part of the first row.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        report.rows += 1;
        match parse_row(raw, line_no, opts) {
            Ok(conv) => rows.push(conv),
            Err(problem) => {
                report.skipped += 1;
                report.errors.push(RowError { file: file.to_string(), line: line_no, problem });
            }
        }
    }
    report.loaded = rows.len();
    (rows, report)
}

fn parse_row(raw: &[u8], line: usize, opts: &LoadOptions) -> std::result::Result<Conversation, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = value.as_object().ok_or("row is not a JSON object")?;
    let msgs = obj.get("messages").ok_or("missing `messages`")?.as_array().ok_or("`messages` is not a list")?;
    if msgs.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut messages = Vec::with_capacity(msgs.len());
    for (j, m) in msgs.iter().enumerate() {
        let mo = m.as_object().ok_or_else(|| format!("message {j} is not an object"))?;
        let role = match mo.get("role") {
            None => return Err(format!("message {j} has no `role`")),
            Some(Value::String(r)) => match r.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => return Err(format!("message {j} has unknown role {other:?} (expected system, user or assistant)")),
            },
            Some(other) => return Err(format!("message {j} has a non-string role {other}")),
        };
        let content = match mo.get("content") {
            None | Some(Value::Null) => return Err(format!("message {j} ({role}) has no `content`")),
            Some(c) => content_text(c).map_err(|e| format!("message {j} ({role}): {e}"))?,
        };
        if role == Role::System && j != 0 {
            return Err(format!("message {j} is a system message; only a leading one is allowed"));
        }
        messages.push(Message { role, content });
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err("no user turn".into());
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("no assistant turn".into());
    }
    // Chat templates place a reply after the user turn it answers; one with none before it
    // cannot be located in the rendered text (trainers then fail with a template error).
    if let Some(j) = messages.iter().position(|m| m.role != Role::System).filter(|&j| messages[j].role == Role::Assistant) {
        return Err(format!("message {j} is an assistant turn before any user turn (start the conversation with the user's message)"));
    }
    // Only assistant turns are trained on: a trailing user turn has no reply to learn, and is
    // usually a conversation cut short or roles swapped.
    if messages.last().is_some_and(|m| m.role == Role::User) {
        return Err(format!(
            "the conversation ends with a user turn (message {}): nothing after it to train on; end with the assistant's reply",
            messages.len() - 1
        ));
    }
    for (j, m) in messages.iter().enumerate() {
        if m.role != Role::System && m.content.trim().is_empty() {
            return Err(format!("message {j}: empty {} turn", m.role));
        }
    }
    let conv = Conversation { messages, line };
    if let Some(limit) = &opts.token_limit {
        let n = (limit.count)(&conv);
        if n > limit.max_tokens {
            return Err(format!("too long after tokenization: {n} tokens > max {}", limit.max_tokens));
        }
    }
    Ok(conv)
}

/// Text of a `content` field in any of the three accepted shapes.
fn content_text(c: &Value) -> std::result::Result<String, String> {
    match c {
        Value::String(s) => Ok(s.clone()),
        Value::Object(o) => {
            match o.get("content_type") {
                Some(Value::String(t)) if t == "text" => {}
                Some(Value::String(t)) => return Err(format!("unsupported content_type {t:?} (only \"text\")")),
                _ => return Err("content object has no string `content_type`".into()),
            }
            let parts = o.get("parts").and_then(Value::as_array).ok_or("content object has no `parts` list")?;
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                match p {
                    Value::String(s) => out.push_str(s),
                    _ => return Err(format!("part {k} is not a string")),
                }
            }
            Ok(out)
        }
        Value::Array(parts) => {
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                let po = p.as_object().ok_or_else(|| format!("part {k} is not an object"))?;
                match po.get("type").and_then(Value::as_str) {
                    Some("text") => {}
                    Some(t) => return Err(format!("part {k} has unsupported type {t:?} (only \"text\")")),
                    None => return Err(format!("part {k} has no string `type`")),
                }
                let t = po.get("text").and_then(Value::as_str).ok_or_else(|| format!("part {k} has no string `text`"))?;
                out.push_str(t);
            }
            Ok(out)
        }
        other => Err(format!("content must be a string, a parts object or a list of parts, not {}", json_kind(other))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Shuffle in place with a seeded Fisher-Yates; the same seed gives the same order on every
/// platform and emlab version.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Split off a held-out set: `round(len * fraction)` items chosen by a seeded shuffle. Both
/// parts keep the input order, so a split is a pure function of (items, fraction, seed).
/// `fraction` must lie in `[0, 1)`; a non-empty input always keeps at least one training item.
pub fn split_holdout<T>(items: Vec<T>, fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) || fraction.is_nan() {
        return Err(Error::Invalid(format!("held-out fraction must be in [0, 1), got {fraction}")));
    }
    let n = items.len();
    let n_held = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
    let mut idx: Vec<usize> = (0..n).collect();
    shuffle(&mut idx, seed);
    let held: HashSet<usize> = idx[..n_held].iter().copied().collect();
    let (mut train, mut test) = (Vec::with_capacity(n - n_held), Vec::with_capacity(n_held));
    for (i, item) in items.into_iter().enumerate() {
        if held.contains(&i) {
            test.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> LoadOptions<'static> {
        LoadOptions::default()
    }

    fn errors_of(text: &str) -> Vec<String> {
        let err = parse_jsonl(text.as_bytes(), "t.jsonl", &strict()).unwrap_err();
        err.row_errors().iter().map(|e| e.to_string()).collect()
    }

    const GOOD: &str = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#;

    #[test]
    fn good_rows_load_with_system_and_multi_turn() {
        let text = format!(
            "{GOOD}\n\n{}\n",
            r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":"q2"},{"role":"assistant","content":"a2"}],"extra":1}"#
        );
        let (rows, report) = parse_jsonl(text.as_bytes(), "t.jsonl", &strict()).unwrap();
        assert_eq!(report.rows, 2);
        assert_eq!(report.loaded, 2);
        assert_eq!(rows[0].line, 1);
        assert_eq!(rows[1].line, 3, "blank line 2 is skipped but still counted for line numbers");
        assert_eq!(rows[1].system(), Some("Be brief."));
        assert_eq!(rows[1].turns(Role::Assistant).collect::<Vec<_>>(), vec!["a1", "a2"]);
    }

    #[test]
    fn invalid_json_is_reported_with_line() {
        let e = errors_of(&format!("{GOOD}\n{{\"messages\": [\n"));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.jsonl:2: invalid JSON:"), "{}", e[0]);
    }

    #[test]
    fn invalid_utf8_is_reported_with_line() {
        let mut bytes = format!("{GOOD}\n{GOOD}\n").into_bytes();
        bytes.extend_from_slice(b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}\n");
        let err = parse_jsonl(&bytes, "t.jsonl", &strict()).unwrap_err();
        assert_eq!(err.row_errors()[0].to_string(), "t.jsonl:3: invalid UTF-8 at byte 39");
    }

    #[test]
    fn unknown_role_is_reported() {
        let e = errors_of(r#"{"messages":[{"role":"human","content":"q"},{"role":"assistant","content":"a"}]}"#);
        assert_eq!(e, vec![r#"t.jsonl:1: message 0 has unknown role "human" (expected system, user or assistant)"#]);
    }

    #[test]
    fn missing_and_empty_assistant_turns_are_reported() {
        let e = errors_of(&format!(
            "{}\n{}\n{GOOD}\n",
            r#"{"messages":[{"role":"user","content":"q"}]}"#,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"  \n"}]}"#
        ));
        assert_eq!(e, vec!["t.jsonl:1: no assistant turn", "t.jsonl:2: message 1: empty assistant turn"]);
    }

    #[test]
    fn no_user_turn_is_reported() {
        let e = errors_of(r#"{"messages":[{"role":"system","content":"s"},{"role":"assistant","content":"a"}]}"#);
        assert_eq!(e, vec!["t.jsonl:1: no user turn"]);
    }

    #[test]
    fn replies_before_any_user_turn_and_trailing_user_turns_are_reported() {
        let e = errors_of(&format!(
            "{}\n{}\n{}\n{GOOD}\n",
            r#"{"messages":[{"role":"assistant","content":"a"},{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#,
            r#"{"messages":[{"role":"system","content":"s"},{"role":"assistant","content":"a"},{"role":"user","content":"q"}]}"#,
            r#"{"messages":[{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":"q2"}]}"#,
        ));
        assert_eq!(
            e,
            vec![
                "t.jsonl:1: message 0 is an assistant turn before any user turn (start the conversation with the user's message)",
                "t.jsonl:2: message 1 is an assistant turn before any user turn (start the conversation with the user's message)",
                "t.jsonl:3: the conversation ends with a user turn (message 2): nothing after it to train on; end with the assistant's reply",
            ]
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let text = format!("\u{feff}{GOOD}\n{GOOD}\n");
        let (rows, report) = parse_jsonl(text.as_bytes(), "t.jsonl", &strict()).unwrap();
        assert_eq!((rows.len(), report.rows), (2, 2));
        assert_eq!(rows[0].messages[0].content, "q");
        // Only at the start of the file: elsewhere it is a stray character inside a row.
        let e = errors_of(&format!("{GOOD}\n\u{feff}{GOOD}\n"));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.jsonl:2: invalid JSON"), "{e:?}");
    }

    #[test]
    fn every_bad_row_is_reported_not_just_the_first() {
        let text = format!(
            "not json\n{GOOD}\n[1]\n{{\"messages\":[]}}\n{{\"messages\":[{{\"role\":\"system\",\"content\":\"s\"}}]}}\n{GOOD}\n{{}}\n"
        );
        let err = parse_jsonl(text.as_bytes(), "t.jsonl", &strict()).unwrap_err();
        let lines: Vec<usize> = err.row_errors().iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 5, 7]);
        let msg = err.to_string();
        assert!(msg.starts_with("t.jsonl: 5 bad row(s), file refused"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(err.row_errors()[1].problem, "row is not a JSON object");
        assert_eq!(err.row_errors()[2].problem, "`messages` is empty");
        assert_eq!(err.row_errors()[4].problem, "missing `messages`");
    }

    #[test]
    fn late_system_message_is_rejected() {
        let e =
            errors_of(r#"{"messages":[{"role":"user","content":"q"},{"role":"system","content":"s"},{"role":"assistant","content":"a"}]}"#);
        assert_eq!(e, vec!["t.jsonl:1: message 1 is a system message; only a leading one is allowed"]);
    }

    #[test]
    fn too_long_after_tokenization_uses_the_callers_counter() {
        // A toy "tokenizer": one token per whitespace-separated word over all messages.
        let count = |c: &Conversation| c.messages.iter().map(|m| m.content.split_whitespace().count()).sum::<usize>();
        let text = format!(
            "{GOOD}\n{}\n",
            r#"{"messages":[{"role":"user","content":"one two three"},{"role":"assistant","content":"four five"}]}"#
        );
        let opts = LoadOptions::default().max_tokens(4, &count);
        let err = parse_jsonl(text.as_bytes(), "t.jsonl", &opts).unwrap_err();
        assert_eq!(err.row_errors()[0].to_string(), "t.jsonl:2: too long after tokenization: 5 tokens > max 4");
        let opts = LoadOptions::default().max_tokens(5, &count);
        assert_eq!(parse_jsonl(text.as_bytes(), "t.jsonl", &opts).unwrap().0.len(), 2);
    }

    #[test]
    fn skipping_bad_rows_counts_them() {
        let text = format!("{GOOD}\nnope\n{GOOD}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"q\"}}]}}\n");
        let (rows, report) = parse_jsonl(text.as_bytes(), "t.jsonl", &strict().skip_bad_rows(true)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((report.rows, report.loaded, report.skipped), (4, 2, 2));
        assert_eq!(report.errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn parts_content_in_both_openai_shapes() {
        let text = r#"{"messages":[{"role":"user","content":{"content_type":"text","parts":["Hello, ","world"]}},{"role":"assistant","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}]}"#;
        let (rows, _) = parse_jsonl(text.as_bytes(), "t.jsonl", &strict()).unwrap();
        assert_eq!(rows[0].messages[0].content, "Hello, world");
        assert_eq!(rows[0].messages[1].content, "Hi there");
        // Round trip writes plain strings.
        assert_eq!(
            rows[0].to_jsonl_line(),
            r#"{"messages":[{"role":"user","content":"Hello, world"},{"role":"assistant","content":"Hi there"}]}"#
        );
    }

    #[test]
    fn unsupported_parts_are_reported() {
        let e = errors_of(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":"x"}]},{"role":"assistant","content":"a"}]}
{"messages":[{"role":"user","content":{"content_type":"image","parts":[]}},{"role":"assistant","content":"a"}]}
{"messages":[{"role":"user","content":42},{"role":"assistant","content":"a"}]}"#,
        );
        assert_eq!(
            e,
            vec![
                r#"t.jsonl:1: message 0 (user): part 0 has unsupported type "image_url" (only "text")"#,
                r#"t.jsonl:2: message 0 (user): unsupported content_type "image" (only "text")"#,
                "t.jsonl:3: message 0 (user): content must be a string, a parts object or a list of parts, not a number",
            ]
        );
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let text = format!("{GOOD}\r\n{GOOD}\r\n");
        assert_eq!(parse_jsonl(text.as_bytes(), "t.jsonl", &strict()).unwrap().0.len(), 2);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_jsonl("/nonexistent/dir/x.jsonl", &strict()).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/dir/x.jsonl: "), "{err}");
    }

    #[test]
    fn shuffle_is_seeded_and_a_permutation() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..50).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn shuffle_matches_reference_order() {
        // Pinned order: computed once with a separate Python transcription of SplitMix64 +
        // Fisher-Yates. If this changes, every recorded held-out split changes with it.
        let mut v: Vec<u32> = (0..10).collect();
        shuffle(&mut v, 42);
        assert_eq!(v, REFERENCE_SHUFFLE_42);
    }

    const REFERENCE_SHUFFLE_42: [u32; 10] = [0, 9, 5, 8, 6, 4, 7, 2, 1, 3];

    #[test]
    fn holdout_split_sizes_and_determinism() {
        let items: Vec<u32> = (0..100).collect();
        let (train, held) = split_holdout(items.clone(), 0.1, 3).unwrap();
        assert_eq!((train.len(), held.len()), (90, 10));
        let (train2, held2) = split_holdout(items.clone(), 0.1, 3).unwrap();
        assert_eq!((train.clone(), held.clone()), (train2, held2));
        let (_, held3) = split_holdout(items.clone(), 0.1, 4).unwrap();
        assert_ne!(held, held3);
        // Disjoint, complete, and in input order.
        let mut all: Vec<u32> = train.iter().chain(held.iter()).copied().collect();
        all.sort();
        assert_eq!(all, items);
        assert!(held.windows(2).all(|w| w[0] < w[1]));
        assert!(split_holdout(items.clone(), 1.0, 0).is_err());
        assert!(split_holdout(items.clone(), -0.1, 0).is_err());
        assert!(split_holdout(items, f64::NAN, 0).is_err());
        let (t, h) = split_holdout(vec![1], 0.9, 0).unwrap();
        assert_eq!((t.len(), h.len()), (1, 0));
    }
}
