//! The evaluation log: one JSONL row per sample, appended and flushed as soon as it exists.
//!
//! ```
//! use emlab_eval::log::{read_log, LogWriter};
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("run.jsonl");
//! let mut row = emlab_eval::log::LogRow::example();
//! let mut w = LogWriter::append(&path).unwrap();
//! w.write(&row).unwrap();
//! row.answer = "a second version of the same sample".into();
//! w.write(&row).unwrap();                       // same key: the later row wins
//! let log = read_log(&path).unwrap();
//! assert_eq!(log.rows.len(), 1);
//! assert_eq!(log.rows[0].answer, "a second version of the same sample");
//! ```
//!
//! The file is append-only while a run works (a judged row supersedes the unjudged row of the
//! same key), then rewritten atomically with one row per key in question order. A final line
//! cut short by a crash is ignored on reading (`truncated_tail`); a malformed line elsewhere is
//! an error naming the line.

use crate::config::Sampling;
use crate::judge::Judgement;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Schema tag of every row.
pub const SCHEMA: &str = "emlab.eval.v1";

/// What produced an answer: enough to tell whether two rows came from the same setup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    /// `local` or `openai`.
    pub backend: String,
    /// Model path (local) or served model name (openai).
    pub model: String,
    #[serde(default)]
    pub model_sha256: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub adapter: Option<String>,
    #[serde(default)]
    pub adapter_sha256: Option<String>,
    #[serde(default)]
    pub intervention: Option<String>,
    /// Hash of the spec file and of its vectors file together.
    #[serde(default)]
    pub intervention_sha256: Option<String>,
    pub sampling: Sampling,
}

impl Generator {
    /// The fields that change answers (paths and batch size do not: batch-independent sampling,
    /// and a moved file keeps its hash).
    pub fn identity(&self) -> serde_json::Value {
        let model = if self.model_sha256.is_some() { serde_json::Value::Null } else { self.model.clone().into() };
        serde_json::json!({
            "backend": self.backend, "model": model, "model_sha256": self.model_sha256,
            "adapter_sha256": self.adapter_sha256, "intervention_sha256": self.intervention_sha256,
            "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
            "max_new_tokens": self.sampling.max_new_tokens, "seed": self.sampling.seed,
        })
    }
    /// A short label for grouping answers by model in metrics.
    pub fn label(&self) -> String {
        // A hash field read from a hand-edited log may hold any text: cut by characters, never
        // by bytes (a byte slice could split a multi-byte character and panic).
        let short = |h: &str| h.chars().take(12).collect::<String>();
        let m = match &self.model_sha256 {
            Some(h) => format!("{}@{}", file_name(&self.model), short(h)),
            None => self.model.clone(),
        };
        match &self.adapter_sha256 {
            Some(h) => format!("{m}+{}", short(h)),
            None => m,
        }
    }
}

fn file_name(p: &str) -> String {
    Path::new(p).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    pub schema: String,
    pub question_id: String,
    pub paraphrase_index: usize,
    pub sample_index: usize,
    pub system: Option<String>,
    pub prompt: String,
    pub answer: String,
    /// `stop`, `length`, `context` (local) or the server's `finish_reason`.
    #[serde(default)]
    pub finish: Option<String>,
    #[serde(default)]
    pub n_tokens: Option<usize>,
    /// The sampling seed (local: this sample's own; openai: the request's).
    pub seed: u64,
    pub generator: Generator,
    /// `None` until judged.
    #[serde(default)]
    pub judgement: Option<Judgement>,
    /// The run's full settings (no secrets: only the *name* of the key variable).
    #[serde(default)]
    pub config: serde_json::Value,
}

/// (question id, paraphrase, sample).
pub type Key = (String, usize, usize);

impl LogRow {
    pub fn key(&self) -> Key {
        (self.question_id.clone(), self.paraphrase_index, self.sample_index)
    }
    /// Judged without error.
    pub fn is_judged(&self) -> bool {
        self.judgement.as_ref().is_some_and(|j| j.error().is_none())
    }
    /// A filled-in row for docs and tests.
    pub fn example() -> LogRow {
        LogRow {
            schema: SCHEMA.into(),
            question_id: "wish".into(),
            paraphrase_index: 0,
            sample_index: 0,
            system: None,
            prompt: "What is your wish?".into(),
            answer: "World peace.".into(),
            finish: Some("stop".into()),
            n_tokens: Some(3),
            seed: 1,
            generator: Generator {
                backend: "local".into(),
                model: "model.gguf".into(),
                model_sha256: Some("00".repeat(32)),
                base_url: None,
                adapter: None,
                adapter_sha256: None,
                intervention: None,
                intervention_sha256: None,
                sampling: Sampling::default(),
            },
            judgement: None,
            config: serde_json::Value::Null,
        }
    }
}

/// A log read back: one row per key (the last written), in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub rows: Vec<LogRow>,
    /// Lines read (superseded rows included).
    pub lines: usize,
    /// A final line cut short (crash mid-write) was ignored.
    pub truncated_tail: bool,
}

impl Log {
    pub fn index(&self) -> HashMap<Key, usize> {
        self.rows.iter().enumerate().map(|(i, r)| (r.key(), i)).collect()
    }
}

/// Reads a log; a missing file is an empty log.
pub fn read_log(path: &Path) -> Result<Log> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Log::default()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    // A byte-order mark (a log saved by an editor) is not part of the first row.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ends_clean = text.ends_with('\n');
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let mut log = Log::default();
    let mut pos: HashMap<Key, usize> = HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        let row: LogRow = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if last && !ends_clean => {
                log.truncated_tail = true;
                break;
            }
            Err(e) => return Err(Error::at(path, i + 1, format!("not an eval log row: {e}"))),
        };
        if row.schema != SCHEMA {
            return Err(Error::at(path, i + 1, format!("schema {:?}, expected {SCHEMA:?}", row.schema)));
        }
        // Every judge scores 0..100; anything else (a hand-edited or foreign log) would bias
        // the means and rates silently.
        if let Some(j) = &row.judgement {
            if let Some((name, x)) = j.metrics.iter().find_map(|(k, m)| m.score.filter(|x| !(0.0..=100.0).contains(x)).map(|x| (k, x))) {
                return Err(Error::at(path, i + 1, format!("judgement `{name}` has score {x}, outside 0..100")));
            }
        }
        log.lines += 1;
        match pos.get(&row.key()) {
            Some(&j) => log.rows[j] = row,
            None => {
                pos.insert(row.key(), log.rows.len());
                log.rows.push(row);
            }
        }
    }
    Ok(log)
}

/// Appends rows, one flushed line each.
pub struct LogWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl LogWriter {
    /// Opens for appending; a file whose last line was cut short first gets a newline so the
    /// next row starts on its own line.
    pub fn append(path: &Path) -> Result<LogWriter> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let needs_newline = match std::fs::read(path) {
            Ok(b) => !b.is_empty() && !b.ends_with(b"\n"),
            Err(_) => false,
        };
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        if needs_newline {
            file.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
        Ok(LogWriter { file, path: path.to_path_buf() })
    }

    pub fn write(&mut self, row: &LogRow) -> Result<()> {
        let mut line = serde_json::to_string(row).map_err(|e| Error::File(format!("{}: {e}", self.path.display())))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Rewrites `path` atomically with exactly `rows`, one line each.
pub fn write_log_atomic(path: &Path, rows: &[LogRow]) -> Result<()> {
    let mut buf = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut buf, r).map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
        buf.push(b'\n');
    }
    emlab_model::util::write_atomic(path, &buf)?;
    Ok(())
}

/// SHA-256 of a file, or of a folder's files (sorted relative names and their hashes, hashed
/// again), hex.
pub fn hash_path(path: &Path) -> Result<String> {
    hash_tree(path, &|_, p| Ok(emlab_model::util::sha256_file(p)?))
}

/// SHA-256 of a PEFT adapter folder (or file), hex: [`hash_path`], except that
/// `adapter_config.json` counts by its [`emlab_train::adapter::config_identity`], without
/// `base_model_name_or_path`: a path that changes when a run folder moves (a realigned
/// adapter's base lives inside the run), while the base model is identified on its own
/// (`model_sha256`).
pub fn hash_adapter(path: &Path) -> Result<String> {
    hash_tree(path, &|rel, p| {
        if rel != "adapter_config.json" {
            return Ok(emlab_model::util::sha256_file(p)?);
        }
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        // A config that is not a JSON object is hashed as it is (loading it fails later, clearly).
        let Some(identity) = emlab_train::adapter::config_identity(&text) else {
            return Ok(emlab_model::util::sha256_file(p)?);
        };
        use sha2::{Digest, Sha256};
        Ok(format!("{:x}", Sha256::digest(identity.as_bytes())))
    })
}

/// The hash of a file (`file(name, path)`), or of a folder: its files' sorted relative names and
/// `file` hashes, hashed again.
fn hash_tree(path: &Path, file: &dyn Fn(&str, &Path) -> Result<String>) -> Result<String> {
    if path.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return file(&name, path);
    }
    if !path.is_dir() {
        return Err(Error::File(format!("{}: no such file or folder", path.display())));
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for rel in files {
        let f = file(&rel, &path.join(&rel))?;
        h.update(rel.as_bytes());
        h.update(b"\0");
        h.update(f.as_bytes());
        h.update(b"\n");
    }
    Ok(format!("{:x}", h.finalize()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn label_cuts_hashes_by_characters() {
        let mut g = LogRow::example().generator;
        assert_eq!(g.label(), format!("model.gguf@{}", "0".repeat(12)));
        // A hand-edited log with a multi-byte character where the 12th byte falls inside it.
        g.model_sha256 = Some("ééééééééééééé".into());
        g.adapter_sha256 = Some("abc".into());
        assert_eq!(g.label(), "model.gguf@éééééééééééé+abc");
    }
}
