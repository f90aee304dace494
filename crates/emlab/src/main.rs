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
    let cli = Cli::parse();
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
