//! `emlab data stats|validate`.

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(clap::Subcommand, Debug)]
enum DataCmd {
    /// Counts, exact and near duplicates, length histograms, distinct-n-gram ratios.
    Stats {
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check every row of chat JSONL files; lists each bad row as file:line: problem.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also flag conversations longer than this many tokens (default model's tokenizer and
        /// chat template, or --model).
        #[arg(long)]
        max_tokens: Option<usize>,
        #[command(flatten)]
        model: super::common::ModelOpt,
    },
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.cmd {
        DataCmd::Stats { files, json } => {
            if files.is_empty() {
                bail!("give at least one JSONL file");
            }
            let mut all = Vec::new();
            for f in &files {
                let s = emlab_data::stats::stats_file(f)?;
                if !json {
                    println!("{}", s.render_text());
                }
                all.push(s);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            Ok(())
        }
        DataCmd::Validate { files, max_tokens, model } => {
            // The tokenizer is loaded once, and only when lengths are checked.
            let loaded = match max_tokens {
                None => None,
                Some(_) => Some(emlab_model::lm::tokenizer_and_template(&model.path()?)?),
            };
            let count = |c: &emlab_data::chat::Conversation| -> usize {
                let Some((tok, tpl)) = &loaded else { return 0 };
                let msgs: Vec<emlab_model::chat::Message> =
                    c.messages.iter().map(|m| emlab_model::chat::Message::new(m.role.as_str(), m.content.clone())).collect();
                tpl.render(&msgs, false).ok().and_then(|t| tok.encode(&t, false).ok()).map(|ids| ids.len()).unwrap_or(usize::MAX)
            };
            let mut bad = 0;
            for file in &files {
                let opts = match max_tokens {
                    None => emlab_data::chat::LoadOptions::default(),
                    Some(max) => emlab_data::chat::LoadOptions::default().max_tokens(max, &count),
                };
                let report = emlab_data::chat::validate_file(file, &opts)?;
                for e in &report.errors {
                    println!("{e}");
                }
                eprintln!("{}: {} rows, {} bad", report.file, report.rows, report.errors.len());
                bad += report.errors.len();
            }
            if bad > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
