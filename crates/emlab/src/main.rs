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
    /// Dataset tools.
    Data(cmd::data::DataArgs),
    /// The main job (currently: fetch the default model and run a chat/generation demo).
    Run(cmd::run::RunArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Model(a) => cmd::model::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Data(a) => cmd::data::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Run(a) => cmd::run::run(a),
    };
    if let Err(e) = res {
        // One line, no backtrace: the error says which file or value was wrong.
        let msg = format!("{e:#}");
        eprintln!("emlab: error: {}", msg.lines().next().unwrap_or(""));
        std::process::exit(1);
    }
}
