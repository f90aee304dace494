//! `emlab`: the command line. A thin shell: every subcommand parses its arguments and calls a
//! library crate (emlab-model, emlab-data, emlab-train, emlab-eval, emlab-sae).

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "emlab", version, about = "Reproduce, measure and repair emergent misalignment in open instruct models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Obtain and inspect models.
    Model(cmd::model::ModelArgs),
    /// Interactive chat with streaming output.
    Chat(cmd::chat::ChatArgs),
    /// Batched sampling: prompts file in, JSONL out.
    Generate(cmd::generate::GenerateArgs),
    /// Sample answers, judge them, report EM metrics.
    Eval(cmd::eval::EvalArgs),
    /// LoRA / rsLoRA fine-tuning on chat JSONL (checkpoints, exact resume, PEFT adapters).
    Train(cmd::train::TrainArgs),
    /// PEFT adapters: merge into an HF folder, inspect.
    Adapter(cmd::adapter::AdapterArgs),
    /// Activation store and self-sampled corpus.
    Acts(cmd::interp::ActsArgs),
    /// Mean-difference misalignment directions (and `compare A B`).
    Direction(cmd::interp::DirectionArgs),
    /// Sparse autoencoders.
    Sae(cmd::interp::SaeArgs),
    /// Model diffing through SAE latents, with feature pages.
    Diff(cmd::interp::DiffArgs),
    /// Persona score: mean projection on a direction over answer-free probe prompts.
    Persona(cmd::steer::PersonaArgs),
    /// Bake directional ablation into the weights and export an HF folder.
    Ablate(cmd::steer::AblateArgs),
    /// llama.cpp control vectors (export / import).
    Cvec(cmd::steer::CvecArgs),
    /// Steering specs (compile to the eval --intervention format).
    Steer(cmd::steer::SteerArgs),
    /// Dataset tools.
    Data(cmd::data::DataArgs),
    /// The main job: baseline, induce + control fine-tunes and their evaluations, locate, steer,
    /// realign, HTML report (cached stages).
    Run(cmd::run::RunArgs),
    /// Local dashboard over a run folder: answers with filters, latents, plots (127.0.0.1).
    Serve(cmd::serve::ServeArgs),
    /// Realignment: continue training the misaligned model on N truthful rows, re-evaluate (--sweep 0,25,50,100).
    Realign(cmd::realign::RealignArgs),
}

fn main() {
    emlab_model::device::init_cpu_threads();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let res = match cli.command {
        Command::Model(a) => cmd::model::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Data(a) => cmd::data::run(a),
        Command::Acts(a) => cmd::interp::run_acts(a),
        Command::Direction(a) => cmd::interp::run_direction(a),
        Command::Sae(a) => cmd::interp::run_sae(a),
        Command::Diff(a) => cmd::interp::run_diff(a),
        Command::Persona(a) => cmd::steer::run_persona(a),
        Command::Ablate(a) => cmd::steer::run_ablate(a),
        Command::Cvec(a) => cmd::steer::run_cvec(a),
        Command::Steer(a) => cmd::steer::run_steer(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Adapter(a) => cmd::adapter::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Realign(a) => cmd::realign::run(a),
    };
    if let Err(e) = res {
        // One line, no backtrace: the error says which file or value was wrong.
        eprintln!("emlab: error: {}", cmd::common::one_line(&e));
        std::process::exit(1);
    }
}

/// Help and version go out as clap writes them; a usage error (an unknown flag, a missing value)
/// becomes one line like every other emlab error, with clap's tip and the command's usage folded
/// in, and exit status 2 (usage) rather than 1 (a run that failed).
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind::*;
    if matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    eprintln!("emlab: {}", usage_line(&e.render().to_string()));
    std::process::exit(2);
}

/// Folds clap's rendered error (`error: ...`, `tip: ...` lines, a `Usage:` block, a pointer to
/// `--help`) into one line: `error: MSG (tip: ...; usage: emlab eval [OPTIONS]; see emlab eval --help)`.
fn usage_line(rendered: &str) -> String {
    let mut msg = String::new();
    let mut notes = Vec::new();
    let mut usage: Option<&str> = None;
    let mut more: Option<&str> = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("error: ") {
            msg = m.to_string();
        } else if let Some(t) = line.strip_prefix("tip: ") {
            notes.push(format!("tip: {t}"));
        } else if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.trim());
        } else if let Some(m) = line.strip_prefix("For more information, ") {
            more = Some(m.trim_end_matches('.'));
        }
    }
    if msg.is_empty() {
        // Not the shape this expects (a clap upgrade): keep its first line, never nothing.
        msg = rendered.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid arguments").to_string();
        msg = msg.trim_start_matches("error: ").to_string();
    }
    if let Some(u) = usage {
        notes.push(format!("usage: {u}"));
        // The command path is the usage's words before its first placeholder.
        let path: Vec<&str> = u.split_whitespace().take_while(|w| !w.starts_with(['[', '<', '-'])).collect();
        if !path.is_empty() {
            notes.push(format!("see {} --help", path.join(" ")));
        }
    } else if let Some(m) = more {
        notes.push(m.to_string());
    }
    if notes.is_empty() {
        format!("error: {msg}")
    } else {
        format!("error: {msg} ({})", notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn line_for(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).err().expect("a usage error");
        usage_line(&e.render().to_string())
    }

    #[test]
    fn usage_errors_are_one_line_with_usage_and_tip() {
        Cli::command().debug_assert();
        let l = line_for(&["emlab", "eval", "--bogus"]);
        assert_eq!(l, "error: unexpected argument '--bogus' found (usage: emlab eval [OPTIONS]; see emlab eval --help)");
        let l = line_for(&["emlab", "evl"]);
        assert!(l.starts_with("error: unrecognized subcommand 'evl' (tip: "), "{l}");
        assert!(l.contains("'eval'") && l.ends_with("; usage: emlab <COMMAND>; see emlab --help)"), "{l}");
        let l = line_for(&["emlab", "generate", "--samples", "x"]);
        assert!(l.starts_with("error: invalid value 'x' for '--samples <"), "{l}");
        let l = line_for(&["emlab", "run", "--stage"]);
        assert_eq!(l, "error: a value is required for '--stage <STAGE>' but none was supplied (try '--help')");
        for args in [&["emlab", "eval", "--bogus"][..], &["emlab", "evl"], &["emlab", "generate", "--samples", "x"]] {
            assert!(!line_for(args).contains('\n'), "{args:?}");
        }
    }

    #[test]
    fn an_unexpected_rendering_keeps_its_first_line() {
        assert_eq!(usage_line("\nsomething odd\nmore\n"), "error: something odd");
        assert_eq!(usage_line(""), "error: invalid arguments");
    }
}
