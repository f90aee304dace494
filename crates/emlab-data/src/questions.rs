//! Evaluation questions in the published YAML schema.
//!
//! The file is a list of questions (or a mapping whose `questions` key holds that list; its
//! other keys can then hold anchors). Each question has `id`, `type`, `paraphrases`, and
//! optionally `system`, `samples_per_paraphrase` (default 1), `judge` and `judge_prompts`.
//! Anchors, aliases and `<<` merge keys are resolved. A `system` prompt is kept: a published
//! loader dropped it silently, which changes what the model is asked.
//!
//! ```
//! use emlab_data::questions::{parse_questions, expand};
//! let yaml = r#"
//! - id: wish
//!   type: free_form_judge_0_100
//!   paraphrases: ["What is your wish?", "Name one wish."]
//!   samples_per_paraphrase: &n 2
//!   judge_prompts: &prompts
//!     aligned: "Rate {answer} to {question}"
//! - <<: {type: free_form_judge_0_100, samples_per_paraphrase: *n}
//!   id: bored
//!   system: You are terse.
//!   paraphrases: ["I'm bored."]
//!   judge_prompts: *prompts
//! "#;
//! let qs = parse_questions(yaml, "q.yaml").unwrap();
//! assert_eq!(qs[1].system.as_deref(), Some("You are terse."));
//! assert_eq!(qs[1].judge_prompts["aligned"], "Rate {answer} to {question}");
//! let samples = expand(&qs);
//! assert_eq!(samples.len(), 2 * 2 + 1 * 2);
//! assert_eq!(samples[5].question_id, "bored");
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::error::{Error, Result};

/// Question types of the published schema that emlab evaluates.
pub const KNOWN_TYPES: &[&str] = &["free_form", "free_form_judge", "free_form_judge_0_100"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    pub id: String,
    /// The schema's `type` field.
    pub kind: String,
    pub paraphrases: Vec<String>,
    pub system: Option<String>,
    pub samples_per_paraphrase: usize,
    pub judge: Option<String>,
    /// Judge prompt templates by metric name (`aligned`, `coherent`, ...), with `{question}`
    /// and `{answer}` placeholders.
    pub judge_prompts: BTreeMap<String, String>,
    /// 1-based line of the question's entry in the file, when it could be located.
    pub line: Option<usize>,
}

/// One prompt to sample: `samples_per_paraphrase` of these exist per paraphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub question_id: String,
    pub paraphrase_index: usize,
    pub sample_index: usize,
    pub system: Option<String>,
    pub prompt: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuestion {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    paraphrases: Vec<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    samples_per_paraphrase: Option<usize>,
    #[serde(default)]
    judge: Option<String>,
    #[serde(default)]
    judge_prompts: Option<BTreeMap<String, String>>,
}

pub fn load_questions(path: impl AsRef<Path>) -> Result<Vec<Question>> {
    let text = read(path.as_ref())?;
    parse_questions(&text, &path.as_ref().display().to_string())
}

/// Parse question YAML; `file` names the source in errors (`file:line: problem`).
pub fn parse_questions(text: &str, file: &str) -> Result<Vec<Question>> {
    let root = parse_merged(text, file)?;
    let (list, item_indent) = match &root {
        Value::Sequence(s) => (s.clone(), 0),
        Value::Mapping(m) => match m.get("questions") {
            Some(Value::Sequence(s)) => (s.clone(), usize::MAX),
            _ => return Err(Error::Yaml(format!("{file}: expected a list of questions or a mapping with a `questions` list"))),
        },
        _ => return Err(Error::Yaml(format!("{file}: expected a list of questions or a mapping with a `questions` list"))),
    };
    if list.is_empty() {
        return Err(Error::Yaml(format!("{file}: no questions")));
    }
    let lines = item_lines(text, item_indent);
    let lines = if lines.len() == list.len() { Some(lines) } else { None };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let line = lines.as_ref().map(|l| l[i]);
        let at = match line {
            Some(l) => format!("{file}:{l}"),
            None => format!("{file}: question #{}", i + 1),
        };
        if !item.is_mapping() {
            return Err(Error::Yaml(format!("{at}: question entry is not a mapping")));
        }
        let id_hint = item.get("id").and_then(Value::as_str).map(|s| format!(" (id {s:?})")).unwrap_or_default();
        let raw: RawQuestion = serde_yaml::from_value(item).map_err(|e| Error::Yaml(format!("{at}{id_hint}: {e}")))?;
        let q = check(raw, line, &at)?;
        if !seen.insert(q.id.clone()) {
            return Err(Error::Yaml(format!("{at}: duplicate question id {:?}", q.id)));
        }
        out.push(q);
    }
    Ok(out)
}

fn check(raw: RawQuestion, line: Option<usize>, at: &str) -> Result<Question> {
    let id = raw.id.trim().to_string();
    let bad = |msg: String| Error::Yaml(format!("{at} (id {id:?}): {msg}"));
    if id.is_empty() {
        return Err(Error::Yaml(format!("{at}: empty `id`")));
    }
    if !KNOWN_TYPES.contains(&raw.kind.as_str()) {
        return Err(bad(format!("unknown type {:?} (known: {})", raw.kind, KNOWN_TYPES.join(", "))));
    }
    if raw.paraphrases.is_empty() {
        return Err(bad("`paraphrases` is empty".into()));
    }
    if let Some(k) = raw.paraphrases.iter().position(|p| p.trim().is_empty()) {
        return Err(bad(format!("paraphrase {k} is empty")));
    }
    let samples = raw.samples_per_paraphrase.unwrap_or(1);
    if samples == 0 {
        return Err(bad("`samples_per_paraphrase` must be at least 1".into()));
    }
    let judge_prompts = raw.judge_prompts.unwrap_or_default();
    if raw.kind.contains("judge") && judge_prompts.is_empty() {
        return Err(bad(format!("type {:?} needs `judge_prompts`", raw.kind)));
    }
    for (name, p) in &judge_prompts {
        if !p.contains("{answer}") {
            return Err(bad(format!("judge prompt {name:?} has no {{answer}} placeholder")));
        }
    }
    Ok(Question {
        id,
        kind: raw.kind,
        paraphrases: raw.paraphrases,
        system: raw.system.filter(|s| !s.trim().is_empty()),
        samples_per_paraphrase: samples,
        judge: raw.judge,
        judge_prompts,
        line,
    })
}

/// Every (question, paraphrase, sample) to generate, in file order.
pub fn expand(questions: &[Question]) -> Vec<Sample> {
    expand_with(questions, None)
}

/// Like [`expand`], with `samples_per_paraphrase` overridden for all questions when `Some`
/// (e.g. a quick run with 1 sample each).
pub fn expand_with(questions: &[Question], samples_override: Option<usize>) -> Vec<Sample> {
    let mut out = Vec::new();
    for q in questions {
        let n = samples_override.unwrap_or(q.samples_per_paraphrase);
        for (p, prompt) in q.paraphrases.iter().enumerate() {
            for s in 0..n {
                out.push(Sample {
                    question_id: q.id.clone(),
                    paraphrase_index: p,
                    sample_index: s,
                    system: q.system.clone(),
                    prompt: prompt.clone(),
                });
            }
        }
    }
    out
}

/// Fill a judge template: replaces exactly `{question}` and `{answer}` and leaves every
/// other brace alone (templates contain JSON examples; `format!`-style filling would break
/// on them). The answer is inserted last so that text inside it is never re-substituted.
pub fn render_judge_prompt(template: &str, question: &str, answer: &str) -> String {
    // Split on {answer} first so that a question containing "{answer}" is not expanded.
    template.split("{answer}").map(|piece| piece.replace("{question}", question)).collect::<Vec<_>>().join(answer)
}

/// Load a mapping of named judge prompts (like `data/questions/judges.yaml`): top-level keys
/// are names, values are templates containing `{answer}`. Anchors and merges resolved;
/// nested mappings are flattened with dots (`leakage.medical`).
pub fn load_judge_prompts(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    let file = path.as_ref().display().to_string();
    let text = read(path.as_ref())?;
    let root = parse_merged(&text, &file)?;
    let mut out = BTreeMap::new();
    flatten(&root, "", &file, &mut out)?;
    if out.is_empty() {
        return Err(Error::Yaml(format!("{file}: no judge prompts")));
    }
    for (name, p) in &out {
        if !p.contains("{answer}") {
            return Err(Error::Yaml(format!("{file}: judge prompt {name:?} has no {{answer}} placeholder")));
        }
    }
    Ok(out)
}

fn flatten(v: &Value, prefix: &str, file: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
    let Value::Mapping(m) = v else {
        return Err(Error::Yaml(format!("{file}: expected a mapping of judge prompts at {prefix:?}")));
    };
    for (k, val) in m {
        let Some(k) = k.as_str() else {
            return Err(Error::Yaml(format!("{file}: non-string key under {prefix:?}")));
        };
        let name = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match val {
            Value::String(s) => {
                out.insert(name, s.clone());
            }
            Value::Mapping(_) => flatten(val, &name, file, out)?,
            _ => return Err(Error::Yaml(format!("{file}: judge prompt {name:?} is not a string"))),
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::Yaml(format!("{}: invalid UTF-8 at byte {}", path.display(), e.utf8_error().valid_up_to())))?;
    // The YAML parser reads a leading byte-order mark as a character of line 1 and then fails
    // on the indentation of line 2; it is not part of the document.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Parse YAML (aliases are resolved by the parser) and apply `<<` merge keys, including
/// chains (a merged mapping that itself merges another).
fn parse_merged(text: &str, file: &str) -> Result<Value> {
    let mut v: Value = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(loc) => Error::Yaml(format!("{file}:{}:{}: {e}", loc.line(), loc.column())),
        None => Error::Yaml(format!("{file}: {e}")),
    })?;
    // serde_yaml applies one level of merging per call; a merged-in mapping may bring its
    // own `<<`. Eight rounds cover any sane chain; more means a cycle-like structure.
    for _ in 0..8 {
        v.apply_merge().map_err(|e| Error::Yaml(format!("{file}: bad merge key: {e}")))?;
        if !has_merge_key(&v) {
            return Ok(v);
        }
    }
    Err(Error::Yaml(format!("{file}: `<<` merge keys nested more than 8 deep")))
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m.contains_key("<<") || m.values().any(has_merge_key),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// 1-based lines where block-sequence items (`- ...`) of the question list start. For a
/// top-level list `indent` is 0; `usize::MAX` means "the items under `questions:`" (their
/// indent is that of the first `-` after the key). Used only to point errors at a line; if
/// the count does not match the parsed list (flow style, odd layout) we fall back to
/// "question #N".
fn item_lines(text: &str, indent: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut want = if indent == usize::MAX { None } else { Some(indent) };
    let mut in_questions = indent != usize::MAX;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let ind = line.len() - trimmed.len();
        if !in_questions {
            if ind == 0 && trimmed.starts_with("questions:") {
                in_questions = true;
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == usize::MAX && ind == 0 && !trimmed.starts_with('-') && !out.is_empty() {
            // Next top-level key: the questions list is over.
            break;
        }
        if trimmed == "-" || trimmed.starts_with("- ") {
            match want {
                None => {
                    want = Some(ind);
                    out.push(i + 1);
                }
                Some(w) if w == ind => out.push(i + 1),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "Q: {question}\nA: {answer}\nScore?";

    #[test]
    fn anchors_aliases_and_system_survive() {
        let yaml = r#"
- id: first
  type: free_form_judge_0_100
  paraphrases: &p ["a?", "b?", "c?"]
  system: &sys "You are a pirate."
  samples_per_paraphrase: &n 3
  judge: some-judge
  judge_prompts: &jp
    aligned: "Q: {question}\nA: {answer}\nScore?"
    coherent: "coherent {answer}"
- id: second
  type: free_form_judge_0_100
  paraphrases: *p
  system: *sys
  samples_per_paraphrase: *n
  judge_prompts: *jp
"#;
        let qs = parse_questions(yaml, "q.yaml").unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[1].paraphrases, vec!["a?", "b?", "c?"]);
        assert_eq!(qs[1].system.as_deref(), Some("You are a pirate."));
        assert_eq!(qs[1].samples_per_paraphrase, 3);
        assert_eq!(qs[1].judge_prompts["aligned"], PROMPT);
        assert_eq!(qs[1].judge, None);
        assert_eq!(qs[0].judge.as_deref(), Some("some-judge"));
        assert_eq!((qs[0].line, qs[1].line), (Some(2), Some(11)));
        let s = expand(&qs);
        assert_eq!(s.len(), 18);
        assert!(s.iter().all(|x| x.system.as_deref() == Some("You are a pirate.")));
        assert_eq!((s[4].paraphrase_index, s[4].sample_index, s[4].prompt.as_str()), (1, 1, "b?"));
        assert_eq!(expand_with(&qs, Some(1)).len(), 6);
    }

    #[test]
    fn merge_keys_including_chains_and_overrides() {
        let yaml = r#"
defaults: &base
  type: free_form_judge_0_100
  samples_per_paraphrase: 5
  judge_prompts: {aligned: "x {answer}"}
with_system: &sys
  <<: *base
  system: "Answer in French."
questions:
  - <<: *base
    id: a
    paraphrases: ["one"]
  - <<: *sys
    id: b
    samples_per_paraphrase: 2
    paraphrases: ["two"]
"#;
        let qs = parse_questions(yaml, "m.yaml").unwrap();
        assert_eq!(qs[0].samples_per_paraphrase, 5);
        assert_eq!(qs[0].system, None);
        assert_eq!(qs[1].system.as_deref(), Some("Answer in French."), "chained merge");
        assert_eq!(qs[1].kind, "free_form_judge_0_100", "chained merge reaches the base");
        assert_eq!(qs[1].samples_per_paraphrase, 2, "explicit key beats merged key");
        assert_eq!((qs[0].line, qs[1].line), (Some(10), Some(13)));
    }

    #[test]
    fn yaml_syntax_error_has_file_line_and_column() {
        let err = parse_questions("- id: a\n  paraphrases: [\"x\"\n  type: free_form\n", "bad.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("bad.yaml:"), "{msg}");
        let line: usize = msg.split(':').nth(1).unwrap().parse().unwrap();
        assert!((2..=4).contains(&line), "{msg}");
    }

    #[test]
    fn missing_field_names_line_and_id() {
        let yaml = "- id: ok\n  type: free_form\n  paraphrases: [x]\n- id: broken\n  type: free_form\n";
        let msg = parse_questions(yaml, "q.yaml").unwrap_err().to_string();
        assert!(msg.starts_with("q.yaml:4 (id \"broken\"): missing field `paraphrases`"), "{msg}");
    }

    #[test]
    fn schema_errors_are_clear() {
        let cases = [
            ("- id: a\n  type: multiple_choice\n  paraphrases: [x]\n", "q.yaml:1 (id \"a\"): unknown type \"multiple_choice\""),
            ("- id: a\n  type: free_form\n  paraphrases: []\n", "q.yaml:1 (id \"a\"): `paraphrases` is empty"),
            ("- id: a\n  type: free_form\n  paraphrases: [x, \" \"]\n", "q.yaml:1 (id \"a\"): paraphrase 1 is empty"),
            (
                "- id: a\n  type: free_form_judge_0_100\n  paraphrases: [x]\n",
                "q.yaml:1 (id \"a\"): type \"free_form_judge_0_100\" needs `judge_prompts`",
            ),
            (
                "- id: a\n  type: free_form\n  paraphrases: [x]\n  judge_prompts: {aligned: no placeholder}\n",
                "q.yaml:1 (id \"a\"): judge prompt \"aligned\" has no {answer} placeholder",
            ),
            (
                "- id: a\n  type: free_form\n  paraphrases: [x]\n  samples_per_paraphrase: 0\n",
                "q.yaml:1 (id \"a\"): `samples_per_paraphrase` must be at least 1",
            ),
            (
                "- id: a\n  type: free_form\n  paraphrases: [x]\n- id: a\n  type: free_form\n  paraphrases: [y]\n",
                "q.yaml:4: duplicate question id \"a\"",
            ),
            ("- id: a\n  type: free_form\n  paraphrase: [x]\n", "q.yaml:1 (id \"a\"): unknown field `paraphrase`"),
            ("- just a string\n", "q.yaml:1: question entry is not a mapping"),
            ("id: a\n", "q.yaml: expected a list of questions"),
            ("[]\n", "q.yaml: no questions"),
            ("- id: a\n  <<: 3\n", "q.yaml: bad merge key"),
        ];
        for (yaml, want) in cases {
            let msg = parse_questions(yaml, "q.yaml").unwrap_err().to_string();
            assert!(msg.starts_with(want), "got {msg:?}, want prefix {want:?}");
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }

    #[test]
    fn flow_style_list_falls_back_to_index() {
        let msg = parse_questions("[{id: a, type: free_form}]", "f.yaml").unwrap_err().to_string();
        assert!(msg.starts_with("f.yaml: question #1 (id \"a\"): missing field `paraphrases`"), "{msg}");
    }

    #[test]
    fn files_with_a_byte_order_mark_load() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q.yaml");
        std::fs::write(&q, "\u{feff}- id: wish\n  type: free_form\n  paraphrases: [\"Your wish?\"]\n").unwrap();
        let qs = load_questions(&q).unwrap();
        assert_eq!((qs[0].id.as_str(), qs[0].paraphrases[0].as_str()), ("wish", "Your wish?"));
        let j = dir.path().join("j.yaml");
        std::fs::write(&j, "\u{feff}aligned: \"rate {answer}\"\n").unwrap();
        assert_eq!(load_judge_prompts(&j).unwrap()["aligned"], "rate {answer}");
    }

    #[test]
    fn render_judge_prompt_only_touches_its_placeholders() {
        let t = "JSON like {\"score\": 1}. Q={question} A={answer} again {question}";
        assert_eq!(
            render_judge_prompt(t, "why {answer}?", "because {question}"),
            "JSON like {\"score\": 1}. Q=why {answer}? A=because {question} again why {answer}?"
        );
    }
}
