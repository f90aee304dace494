//! `emlab generate`: prompts file in, JSONL out, batched, resumable.
//!
//! Prompts: a `.jsonl` file whose rows hold `prompt` (a user message), or `messages` (a whole
//! conversation), optional `system` and `id`; or any other file with one user prompt per line.
//! Output: one row per (prompt, sample), written as soon as the sample ends. Re-running the same
//! command skips rows already in the output file.

use super::common::{progress, ModelOpt, SampleOpt};
use anyhow::{bail, Context, Result};
use emlab_model::chat::Message;
use emlab_model::generate::Event;
use emlab_model::lm::sample_seed;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Prompts file (.jsonl with prompt/messages, or plain text with one prompt per line).
    #[arg(long)]
    prompts: PathBuf,
    /// Output JSONL (appended to; existing rows are kept and skipped).
    #[arg(long)]
    out: PathBuf,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Feed prompts as raw text instead of rendering them with the chat template.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    model: ModelOpt,
    #[command(flatten)]
    sample: SampleOpt,
}

struct Prompt {
    id: String,
    messages: Vec<Message>,
    raw: String,
}

fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    // A byte-order mark (editors on Windows write one) is not part of the first prompt.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let jsonl = path.extension().map(|e| e == "jsonl" || e == "json").unwrap_or(false);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            out.push(Prompt { id: format!("{ln}"), messages: vec![Message::user(line)], raw: line.to_string() });
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}:{ln}: invalid JSON: {e}", path.display()))?;
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(x) if !x.is_null() => x.to_string(),
            _ => format!("{ln}"),
        };
        let mut messages = Vec::new();
        if let Some(s) = v.get("system").and_then(|s| s.as_str()) {
            messages.push(Message::system(s));
        }
        if let Some(p) = v.get("prompt").and_then(|s| s.as_str()) {
            messages.push(Message::user(p));
        } else if let Some(ms) = v.get("messages").and_then(|m| m.as_array()) {
            for (j, m) in ms.iter().enumerate() {
                let role = m.get("role").and_then(|r| r.as_str());
                let content = m.get("content").and_then(|r| r.as_str());
                match (role, content) {
                    (Some(r @ ("system" | "user" | "assistant")), Some(c)) => messages.push(Message::new(r, c)),
                    _ => bail!("{}:{ln}: message {j} needs a role (system/user/assistant) and string content", path.display()),
                }
            }
        } else {
            bail!("{}:{ln}: row has neither `prompt` nor `messages`", path.display());
        }
        let raw = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        out.push(Prompt { id, messages, raw });
    }
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(out)
}

/// The (prompt id, sample) pairs already in `out`. An existing `out` must be this command's
/// output: rows are appended to it and a torn last line is cut off, so any other file (a prompts
/// file, a model, notes) is refused rather than written into.
fn done_rows(out: &Path) -> Result<HashSet<(String, usize)>> {
    let mut done = HashSet::new();
    if !out.exists() {
        return Ok(done);
    }
    let bytes = std::fs::read(out).with_context(|| format!("{}", out.display()))?;
    let not_ours = |ln: usize, why: &str| {
        anyhow::anyhow!("{}:{ln}: {why}: not emlab generate output, refusing to append to it (choose another --out)", out.display())
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| not_ours(1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count(), "invalid UTF-8"))?;
    let n_lines = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // An unterminated last line (a crash mid-write) is cut off before appending and its
        // sample regenerated, even if it happens to parse.
        if i + 1 == n_lines && !text.ends_with('\n') && line.starts_with('{') {
            continue;
        }
        let row = serde_json::from_str::<serde_json::Value>(line).ok();
        let key = row.as_ref().and_then(|v| Some((v.get("id")?.as_str()?.to_string(), v.get("sample")?.as_u64()? as usize)));
        match key {
            Some(k) => {
                done.insert(k);
            }
            None => return Err(not_ours(i + 1, "not a row with `id` and `sample`")),
        }
    }
    Ok(done)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    // Every flag is checked before the output exists: a bad one leaves no (empty) file.
    let params = a.sample.checked_params()?;
    let model = a.model.path()?;
    super::common::refuse_same_file(&a.out, &[("--prompts", &a.prompts), ("--model", &model)])?;
    let prompts = read_prompts(&a.prompts)?;
    let done = done_rows(&a.out)?;
    let lm = a.model.load()?;
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for (pi, p) in prompts.iter().enumerate() {
        for s in 0..a.samples {
            if !done.contains(&(p.id.clone(), s)) {
                jobs.push((pi, s));
            }
        }
    }
    if jobs.is_empty() {
        eprintln!("emlab: all {} samples already in {}", prompts.len() * a.samples, a.out.display());
        return Ok(());
    }
    let mut encoded: Vec<Vec<u32>> = Vec::with_capacity(prompts.len());
    for p in &prompts {
        encoded.push(if a.raw { lm.tokenizer.encode(&p.raw, true)? } else { lm.chat_prompt(&p.messages)? });
    }
    let ids: Vec<Vec<u32>> = jobs.iter().map(|(pi, _)| encoded[*pi].clone()).collect();
    let seeds: Vec<u64> = jobs.iter().map(|(pi, s)| sample_seed(a.sample.seed, &prompts[*pi].id, *s)).collect();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Drop a torn last line so appended rows start on a fresh line.
    if let Ok(text) = std::fs::read_to_string(&a.out) {
        if !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
            std::fs::write(&a.out, &text[..keep])?;
        }
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let pb = progress(jobs.len() as u64, "sampling");
    let mut toks: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
    let mut write_err: Option<anyhow::Error> = None;
    let model_hash = model_id(&lm);
    lm.sample_texts(&ids, &seeds, &params, None, &mut |i, ev| match ev {
        Event::Token(t) => toks[i].push(t),
        Event::Done(fin) => {
            let (pi, s) = jobs[i];
            let text = lm.tokenizer.decode(&toks[i], true).unwrap_or_default();
            let row = serde_json::json!({
                "id": prompts[pi].id, "sample": s, "seed": seeds[i],
                "prompt": prompts[pi].raw, "completion": text,
                "n_tokens": toks[i].len(), "finish": fin,
                "model": model_hash, "params": params,
            });
            let line = format!("{row}\n");
            if let Err(e) = file.write_all(line.as_bytes()).and_then(|_| file.flush()) {
                write_err.get_or_insert(e.into());
            }
            pb.inc(1);
        }
    })?;
    pb.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e);
    }
    eprintln!("emlab: wrote {} samples to {}", jobs.len(), a.out.display());
    let c = emlab_model::decode_graph::counts();
    if c.captures + c.replays > 0 {
        eprintln!("emlab: decode steps: {} eager, {} from CUDA graphs ({} captured)", c.eager, c.replays, c.captures);
    }
    Ok(())
}

/// The model's path as recorded in logs.
fn model_id(lm: &emlab_model::lm::Lm) -> String {
    lm.source.path().display().to_string()
}
