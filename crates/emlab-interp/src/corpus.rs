//! A small corpus sampled from the model itself, for SAE training and feature pages.
//!
//! ```no_run
//! use emlab_interp::corpus::{collect_prompts, sample_corpus};
//! use std::path::PathBuf;
//! # let lm: emlab_model::lm::Lm = todo!();
//! let prompts = collect_prompts(&[PathBuf::from("data/questions/core.yaml")], &[PathBuf::from("data/realign/general_helpful.jsonl")])?;
//! let corpus = sample_corpus(&lm, &prompts, 96, 0.7, 0)?;
//! # Ok::<(), emlab_interp::Error>(())
//! ```
//!
//! Prompts: every paraphrase of every question in the question YAML files (with the question's
//! system prompt, if any), then the user turns of the chat JSONL files (e.g. the realignment
//! sets); duplicates are dropped, order is kept. Answers are sampled from the model (one per
//! prompt, seed = `emlab_model::lm::sample_seed(seed, "corpus-<i>", 0)`), so the corpus is
//! text that model actually produces, which is what an SAE on its residual stream should see.

use crate::error::{Error, Result};
use crate::text::{conversation_from_json, Conversation};
use emlab_model::generate::SamplingParams;
use emlab_model::lm::{sample_seed, Lm};
use std::path::{Path, PathBuf};

/// Bare prompts from question YAML files and chat JSONL files.
pub fn collect_prompts(question_files: &[PathBuf], chat_files: &[PathBuf]) -> Result<Vec<Conversation>> {
    let mut out: Vec<Conversation> = Vec::new();
    let mut push = |c: Conversation| {
        if !out.iter().any(|o| o.user == c.user && o.system == c.system) {
            out.push(c);
        }
    };
    for q in question_files {
        let qs = emlab_data::questions::load_questions(q).map_err(|e| Error::format(q, e.to_string()))?;
        for question in qs {
            for p in &question.paraphrases {
                push(Conversation { system: question.system.clone(), user: p.clone(), answer: None });
            }
        }
    }
    for f in chat_files {
        for c in read_chat_jsonl(f)? {
            push(Conversation { answer: None, ..c });
        }
    }
    Ok(out)
}

fn read_chat_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A byte-order mark (editors on Windows write one) is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::format(path, format!("line {}: bad JSON: {e}", i + 1)))?;
        out.push(conversation_from_json(&v).map_err(|m| Error::format(path, format!("line {}: {m}", i + 1)))?);
    }
    Ok(out)
}

/// Samples one answer per prompt (temperature `temperature`, up to `max_new_tokens`).
pub fn sample_corpus(lm: &Lm, prompts: &[Conversation], max_new_tokens: usize, temperature: f32, seed: u64) -> Result<Vec<Conversation>> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|c| lm.chat_prompt(&c.messages())).collect::<emlab_model::Result<_>>()?;
    let seeds: Vec<u64> = (0..prompts.len()).map(|i| sample_seed(seed, &format!("corpus-{i}"), 0)).collect();
    let params = SamplingParams { temperature, max_new_tokens, batch_size: 16, ..Default::default() };
    let samples = lm.sample_texts(&ids, &seeds, &params, None, &mut |_, _| {})?;
    Ok(prompts
        .iter()
        .zip(samples)
        .filter(|(_, s)| !s.text.trim().is_empty())
        .map(|(p, s)| Conversation { answer: Some(s.text), ..p.clone() })
        .collect())
}
