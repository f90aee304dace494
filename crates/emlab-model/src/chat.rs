//! Chat templates: the model's own Jinja template (from GGUF metadata or `tokenizer_config.json`)
//! rendered the way Hugging Face transformers renders it.
//!
//! ```
//! use emlab_model::chat::{ChatTemplate, Message};
//! let tpl = ChatTemplate::new(
//!     "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
//!      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
//!     None, Some("<|im_end|>"), "example",
//! )?;
//! let msgs = [Message::user("hi"), Message::assistant("hello")];
//! assert_eq!(tpl.render(&msgs[..1], true)?, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
//! // Where each assistant reply sits in the rendered text (for assistant-only loss masks).
//! let (text, spans) = tpl.render_with_spans(&msgs)?;
//! assert_eq!(&text[spans[0].content.clone()], "hello");
//! assert_eq!(&text[spans[0].turn.clone()], "hello<|im_end|>");
//! # Ok::<(), emlab_model::Error>(())
//! ```
//!
//! # Compatibility with transformers
//! transformers renders with Jinja2 using `trim_blocks` and `lstrip_blocks`, a `raise_exception`
//! function, a `tojson` filter that does not HTML-escape (`json.dumps(ensure_ascii=False)`), and a
//! `strftime_now` function; the context holds `messages`, `add_generation_prompt`, `tools` (None)
//! and the special tokens (`bos_token`, `eos_token`). The same is set up here on minijinja, with
//! minijinja-contrib's `pycompat` for Python string/dict methods (`.strip()`, `.items()`, ...).
//! transformers' `{% generation %}` block (it marks assistant text for masks) is accepted and
//! rendered as a plain block. `strftime_now` uses UTC, not the local time zone.
//!
//! # Assistant spans
//! A template is arbitrary code, so the location of each assistant reply is found by rendering,
//! not by parsing: for assistant message `i`, render `messages[..i]` with the generation prompt
//! (`before`) and `messages[..=i]` without it (`through`). `through[before.len()..]` is what the
//! template emits for that reply; the content is found in it, and the turn extends to the end of
//! the first end-of-turn marker (the eos token, e.g. `<|im_end|>`) after the content. The method
//! requires the template to be *prefix-stable* (`before` is a prefix of `through`, which is a
//! prefix of the full rendering), as ChatML templates are; otherwise it returns an error instead
//! of a wrong mask.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Where one assistant message sits in a rendered conversation (byte offsets into the text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssistantSpan {
    /// Index of the message in the conversation.
    pub message: usize,
    /// The message's content.
    pub content: Range<usize>,
    /// The content through the end-of-turn marker that closes it (what a model must learn to
    /// produce, stop token included); equal to `content` when the template emits no marker.
    pub turn: Range<usize>,
}

/// A compiled chat template plus the special-token strings it may reference.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`. `origin` names where it came from (a file) in error messages.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>, origin: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| Error::Template(format!("{origin}: {e}")))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| Error::Template(format!("{origin}: does not compile: {}", one_line(&e))))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            origin: origin.to_string(),
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template stored in a GGUF file (`tokenizer.chat_template`).
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (content, _) = crate::load::read_gguf(path)?;
        Self::from_gguf_metadata(&content.metadata, path)
    }

    /// The template in already-read GGUF metadata; `source` names the file in errors.
    pub fn from_gguf_metadata(md: &HashMap<String, gguf_file::Value>, source: &Path) -> Result<Self> {
        let origin = source.display().to_string();
        let tpl = md
            .get("tokenizer.chat_template")
            .ok_or_else(|| Error::Template(format!("{origin}: no chat template (tokenizer.chat_template missing)")))?
            .to_string()
            .map_err(|_| Error::Template(format!("{origin}: tokenizer.chat_template is not a string")))?;
        let token = |key: &str| -> Option<String> {
            let id = match md.get(key)? {
                gguf_file::Value::U32(x) => *x,
                gguf_file::Value::I32(x) => u32::try_from(*x).ok()?,
                gguf_file::Value::U64(x) => u32::try_from(*x).ok()?,
                gguf_file::Value::I64(x) => u32::try_from(*x).ok()?,
                _ => return None,
            };
            let tokens = md.get("tokenizer.ggml.tokens")?.to_vec().ok()?;
            tokens.get(id as usize)?.to_string().ok().cloned()
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        Self::new(tpl, bos.as_deref(), eos.as_deref(), &format!("{origin}: tokenizer.chat_template"))
    }

    /// The default template of a `tokenizer_config.json` (`chat_template` as a string, or a list
    /// of `{name, template}` of which "default" is taken), or of `chat_template.jinja` beside it.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_tokenizer_config_named(path, None)
    }

    /// Like [`from_tokenizer_config`](Self::from_tokenizer_config), choosing a named template.
    pub fn from_tokenizer_config_named(path: impl AsRef<Path>, name: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Template(format!("{origin}: {e}")))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Template(format!("{origin}: invalid JSON: {e}")))?;
        let tok = |key: &str| cfg.get(key).and_then(crate::tokenizer::token_content).map(str::to_string);
        let (bos, eos) = (tok("bos_token"), tok("eos_token"));
        let want = name.unwrap_or("default");
        let (tpl, where_) = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) if name.is_none() => (s.clone(), format!("{origin}: chat_template")),
            Some(serde_json::Value::String(_)) => {
                return Err(Error::Template(format!("{origin}: has a single chat template, not one named {want:?}")))
            }
            Some(serde_json::Value::Array(list)) => {
                let found = list.iter().find(|t| t.get("name").and_then(|n| n.as_str()) == Some(want));
                let names: Vec<&str> = list.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str())).collect();
                let t = found
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| Error::Template(format!("{origin}: no chat template named {want:?} (have {names:?})")))?;
                (t.to_string(), format!("{origin}: chat_template[{want}]"))
            }
            Some(_) => return Err(Error::Template(format!("{origin}: chat_template is neither a string nor a list"))),
            None => {
                // Newer transformers save the template next to the config.
                let jinja = path.with_file_name("chat_template.jinja");
                match std::fs::read_to_string(&jinja) {
                    Ok(t) if name.is_none() => (t, jinja.display().to_string()),
                    _ => return Err(Error::Template(format!("{origin}: no chat template (no chat_template key, no chat_template.jinja)"))),
                }
            }
        };
        Self::new(&tpl, bos.as_deref(), eos.as_deref(), &where_)
    }

    /// The template of a Hugging Face model folder (`tokenizer_config.json`).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_tokenizer_config(dir.as_ref().join("tokenizer_config.json"))
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders a conversation. With `add_generation_prompt` the text ends where the assistant's
    /// reply begins (`<|im_start|>assistant\n` for ChatML).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| Error::Template(format!("{}: {}", self.origin, one_line(&e))))?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        tpl.render(ctx).map_err(|e| Error::Template(format!("{}: cannot render: {}", self.origin, one_line(&e))))
    }

    /// Renders a conversation (no generation prompt) and locates every assistant message in it;
    /// see the module docs for the method.
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<(String, Vec<AssistantSpan>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                // The usual cause in data, not the template: a reply with no user turn before
                // it (templates that add a default system prompt render an empty history
                // differently from one holding the reply). Say that, since the row is what the
                // user can fix.
                if !messages[..i].iter().any(|m| m.role == "user") {
                    return Err(Error::Template(format!(
                        "message {i} is an assistant turn with no user turn before it, so the template cannot place it \
                         (a conversation starts with a user turn, after an optional system message)"
                    )));
                }
                return Err(Error::Template(format!(
                    "{}: template is not prefix-stable at message {i}, cannot locate assistant text",
                    self.origin
                )));
            }
            let added = &through[before.len()..];
            let (pos, len) = match added.find(m.content.as_str()) {
                Some(p) => (p, m.content.len()),
                // Templates that strip the content (e.g. `content.strip()`) emit the trimmed text.
                None => match added.find(m.content.trim()) {
                    Some(p) => (p, m.content.trim().len()),
                    None => {
                        return Err(Error::Template(format!(
                            "{}: the content of message {i} does not appear in the rendered text",
                            self.origin
                        )))
                    }
                },
            };
            let start = before.len() + pos;
            let end = start + len;
            let turn_end = self
                .eos_token
                .as_deref()
                .filter(|e| !e.is_empty())
                .and_then(|eot| through[end..].find(eot).map(|p| end + p + eot.len()))
                .unwrap_or(end);
            spans.push(AssistantSpan { message: i, content: start..end, turn: start..turn_end });
        }
        Ok((full, spans))
    }

    /// Token ids of the rendered conversation and a mask that is true on the tokens of assistant
    /// turns (content and end-of-turn token): the positions an assistant-only loss trains on.
    /// A token is in the mask when its text overlaps a turn.
    pub fn encode_with_assistant_mask(&self, tok: &Tokenizer, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        let (text, spans) = self.render_with_spans(messages)?;
        let (ids, offsets) = tok.encode_with_offsets(&text, false)?;
        let mask = offsets.iter().map(|&(s, e)| e > s && spans.iter().any(|sp| s < sp.turn.end && e > sp.turn.start)).collect();
        Ok((ids, mask))
    }
}

/// minijinja errors print the template name and line on one line with `Display`; the source
/// context (`{:#}`) would span several lines.
fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Replaces transformers' `{% generation %}` / `{% endgeneration %}` (a Jinja2 extension that
/// records assistant text) with an always-true `if` block, keeping whitespace-control markers.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("%}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &after[..close];
        let body = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']).trim();
        let lead = &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()];
        let trail = &inner[inner.trim_end_matches(['-', '+']).len()..];
        match body {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("template raised an exception: {msg}")))
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime codes.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(&format, secs)
}

/// Formats a Unix time (UTC). Supports %Y %y %m %d %e %H %I %M %S %p %j %A %a %B %b %%.
fn strftime(format: &str, unix: i64) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix.div_euclid(86400);
    let sod = unix.rem_euclid(86400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3).
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('A') => out.push_str(DAYS[wday]),
            Some('a') => out.push_str(&DAYS[wday][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported code %{}", other.map(String::from).unwrap_or_default()),
                ))
            }
        }
    }
    Ok(out)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, which is
/// what transformers installs as `tojson`: no HTML escaping (minijinja's built-in escapes `<`,
/// `>`, `&` and `'`, which would change the prompt text).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(" ".repeat(n as usize)),
            _ => match v.as_str() {
                Some(s) => Some(s.to_string()),
                None => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: bad indent")),
            },
        },
    };
    // Python's defaults: (", ", ": ") without indent, (",", ": ") with one.
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v.try_iter()?.map(|x| x.to_string()).collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let w = JsonWriter { indent, item_sep, key_sep, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    w.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonWriter {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonWriter {
    fn write(&self, out: &mut String, v: &Value, depth: usize) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    out.push_str(&v.to_string());
                } else {
                    let f = f64::try_from(v.clone())?;
                    if f.is_nan() {
                        out.push_str("NaN");
                    } else if f.is_infinite() {
                        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                    } else {
                        let s = f.to_string();
                        out.push_str(&s);
                        if !s.contains(['.', 'e', 'E']) {
                            out.push_str(".0"); // Python prints floats with a decimal point.
                        }
                    }
                }
            }
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, '[', ']', depth, items.len(), |out, i| self.write(out, &items[i], depth + 1))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                self.container(out, '{', '}', depth, keys.len(), |out, i| {
                    let k = &keys[i];
                    self.string(out, &k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string()));
                    out.push_str(&self.key_sep);
                    self.write(out, &v.get_item(k)?, depth + 1)
                })?;
            }
            _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialize a {} value", v.kind()))),
        }
        Ok(())
    }

    fn container(
        &self,
        out: &mut String,
        open: char,
        close: char,
        depth: usize,
        n: usize,
        mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(ind) = &self.indent {
                out.push('\n');
                out.push_str(&ind.repeat(depth + 1));
            }
            item(out, i)?;
        }
        if let Some(ind) = &self.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.ensure_ascii && (c as u32) > 0x7e => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC (a Thursday, leap day, day 60 of the year).
        let t = 1709211909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t).unwrap(), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y, %A %j %I%p %%", t).unwrap(), "29 Feb 2024, Thursday 060 01PM %");
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert!(strftime("%Q", 0).is_err());
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
    }
}
