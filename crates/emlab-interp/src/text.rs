//! Conversations for teacher forcing: render with the model's chat template, tokenize, and mark
//! the answer tokens.
//!
//! ```no_run
//! use emlab_interp::text::Conversation;
//! let c = Conversation::new(None, "What is 2+2?", Some("4."));
//! # let lm: emlab_model::lm::Lm = todo!();
//! let enc = c.encode(&lm)?;            // ids + answer mask
//! assert_eq!(enc.ids.len(), enc.mask.len());
//! # Ok::<(), emlab_interp::Error>(())
//! ```
//!
//! The answer mask covers the tokens whose text overlaps the assistant message's *content*
//! (the end-of-turn marker is excluded: it is the same token for every answer and carries no
//! information about it). A conversation without an answer is a bare prompt: its mask is all
//! tokens of the rendered prompt (generation prompt included).

use crate::error::{Error, Result};
use emlab_model::chat::Message;
use emlab_model::lm::Lm;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A (system?, user, answer?) exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// Token ids and the positions to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Conversation {
    pub fn new(system: Option<&str>, user: &str, answer: Option<&str>) -> Self {
        Conversation { system: system.map(str::to_string), user: user.to_string(), answer: answer.map(str::to_string) }
    }

    pub fn messages(&self) -> Vec<Message> {
        let mut m = Vec::new();
        if let Some(s) = &self.system {
            m.push(Message::system(s.clone()));
        }
        m.push(Message::user(self.user.clone()));
        if let Some(a) = &self.answer {
            m.push(Message::assistant(a.clone()));
        }
        m
    }

    /// Renders and tokenizes; see the module docs for the mask.
    pub fn encode(&self, lm: &Lm) -> Result<Encoded> {
        match &self.answer {
            None => {
                let ids = lm.chat_prompt(&self.messages())?;
                let mask = vec![true; ids.len()];
                Ok(Encoded { ids, mask })
            }
            Some(_) => {
                let (text, spans) = lm.template.render_with_spans(&self.messages())?;
                let span = spans.last().ok_or_else(|| Error::Invalid("rendered conversation has no assistant span".into()))?;
                let (ids, offsets) = lm.tokenizer.encode_with_offsets(&text, false)?;
                let c = &span.content;
                let mask: Vec<bool> = offsets.iter().map(|&(s, e)| e > s && s < c.end && e > c.start).collect();
                Ok(Encoded { ids, mask })
            }
        }
    }
}

/// Reads conversations from a file: JSONL rows with `messages` (chat format: system / user /
/// assistant, the last user turn and the assistant turn after it are used), or with
/// `prompt`/`question` and optional `answer` and `system`; any other file is read as one bare
/// prompt per non-empty line.
pub fn load_conversations(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A byte-order mark (editors on Windows write one) is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !is_jsonl {
            out.push(Conversation::new(None, line.trim(), None));
            continue;
        }
        let at = |m: String| Error::format(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("bad JSON: {e}")))?;
        out.push(conversation_from_json(&v).map_err(at)?);
    }
    if out.is_empty() {
        return Err(Error::format(path, "no conversations in file"));
    }
    Ok(out)
}

/// One row (see [`load_conversations`]).
pub fn conversation_from_json(v: &serde_json::Value) -> std::result::Result<Conversation, String> {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) {
        let mut system = None;
        let mut user = None;
        let mut answer = None;
        for m in msgs {
            let role = m.get("role").and_then(|r| r.as_str()).ok_or("message without a role")?;
            let content = m.get("content").and_then(|r| r.as_str()).ok_or("message without string content")?.to_string();
            match role {
                "system" => system = Some(content),
                "user" => {
                    user = Some(content);
                    answer = None;
                }
                "assistant" => answer = Some(content),
                r => return Err(format!("unknown role `{r}`")),
            }
        }
        let user = user.ok_or("no user message")?;
        return Ok(Conversation { system, user, answer });
    }
    let user = s("prompt").or_else(|| s("question")).ok_or("row has neither `messages` nor `prompt`/`question`")?;
    Ok(Conversation { system: s("system"), user, answer: s("answer") })
}

/// Writes conversations as JSONL in chat format (`{"messages": [...]}`), atomically.
pub fn save_conversations(path: &Path, convs: &[Conversation]) -> Result<()> {
    let mut s = String::new();
    for c in convs {
        let msgs: Vec<serde_json::Value> = c.messages().iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect();
        s.push_str(&serde_json::json!({ "messages": msgs }).to_string());
        s.push('\n');
    }
    crate::error::write_atomic(path, s.as_bytes())
}
