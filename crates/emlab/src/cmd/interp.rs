//! `emlab acts`, `emlab direction`, `emlab sae`, `emlab diff`: the interpretability stage
//! (library: emlab-interp; see docs/interp.md).

use anyhow::{bail, Context, Result};
use emlab_interp::acts::{capture_with_progress, ActsReader, CaptureConfig};
use emlab_interp::corpus::{collect_prompts, sample_corpus};
use emlab_interp::diff::{diff_models, write_feature_pages, PageConfig};
use emlab_interp::direction::{compare, compute_from_log, logit_lens_report, DirectionConfig, DirectionSet};
use emlab_interp::splice::{ce_loss_recovered, train_from_store, SaeTrainConfig};
use emlab_interp::text::{load_conversations, save_conversations};
use emlab_model::hooks::HookPoint;
use std::path::{Path, PathBuf};

fn model_path(m: &Option<PathBuf>) -> Result<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => Ok(emlab_model::fetch::ensure_default_model()?),
    }
}

// ---------------------------------------------------------------- acts

#[derive(clap::Args, Debug)]
pub struct ActsArgs {
    #[command(subcommand)]
    pub cmd: ActsCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ActsCmd {
    /// Capture residual-stream activations into a sharded store.
    Capture(CaptureArgs),
    /// Build a small corpus: prompts from question YAML / chat JSONL files, answers sampled
    /// from the model itself.
    Corpus(CorpusArgs),
}

#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// PEFT adapter folder applied to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Conversations: JSONL (`messages`, or `prompt`/`question` + `answer`) or one prompt per line.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Hook points, e.g. blocks.15.hook_resid_post (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', required = true)]
    pub hook: Vec<String>,
    /// New output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 65536)]
    pub shard_rows: usize,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
}

#[derive(clap::Args, Debug)]
pub struct CorpusArgs {
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Question YAML files (every paraphrase becomes a prompt).
    #[arg(long, default_values = ["data/questions/core.yaml", "data/questions/broad.yaml"])]
    pub questions: Vec<PathBuf>,
    /// Chat JSONL files whose user turns become prompts.
    #[arg(long, default_values = ["data/realign/general_helpful.jsonl", "data/realign/medical_truthful.jsonl"])]
    pub chats: Vec<PathBuf>,
    /// Output JSONL (chat format).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many prompts (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
}

pub fn run_acts(a: ActsArgs) -> Result<()> {
    match a.cmd {
        ActsCmd::Capture(c) => {
            let hooks: Vec<HookPoint> = c.hook.iter().map(|h| h.parse()).collect::<std::result::Result<_, _>>()?;
            let lm = emlab_interp::load_lm(&model_path(&c.model)?, c.adapter.as_deref())?;
            let convs = load_conversations(&c.prompts)?;
            let cfg = CaptureConfig { shard_rows: c.shard_rows, max_tokens: c.max_tokens };
            let idx = capture_with_progress(&lm, &convs, &hooks, &c.out, &cfg, &mut |i, n| {
                if i % 50 == 0 || i == n {
                    eprintln!("captured {i}/{n} conversations");
                }
            })?;
            println!("{} rows from {} conversations, {} shard(s) -> {}", idx.rows, idx.sequences, idx.shards.len(), c.out.display());
            Ok(())
        }
        ActsCmd::Corpus(c) => {
            let lm = emlab_interp::load_lm(&model_path(&c.model)?, c.adapter.as_deref())?;
            let mut prompts = collect_prompts(&c.questions, &c.chats)?;
            if c.limit > 0 {
                prompts.truncate(c.limit);
            }
            let inputs: Vec<(&str, &Path)> =
                c.questions.iter().map(|q| ("--questions", q.as_path())).chain(c.chats.iter().map(|f| ("--chats", f.as_path()))).collect();
            super::common::refuse_same_file(&c.out, &inputs)?;
            eprintln!("sampling {} answers", prompts.len());
            let corpus = sample_corpus(&lm, &prompts, c.max_new_tokens, c.temperature, c.seed)?;
            if corpus.is_empty() {
                bail!("{}: every sampled answer was empty; no corpus written", c.out.display());
            }
            save_conversations(&c.out, &corpus)?;
            println!("{} conversations -> {}", corpus.len(), c.out.display());
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- direction

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DirectionArgs {
    #[command(subcommand)]
    pub cmd: Option<DirectionCmd>,
    #[command(flatten)]
    pub compute: Option<DirectionCompute>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DirectionCmd {
    /// Cosine similarity per layer between two direction files.
    Compare { a: PathBuf, b: PathBuf },
}

#[derive(clap::Args, Debug)]
pub struct DirectionCompute {
    /// Judged evaluation log (JSONL).
    #[arg(long)]
    pub log: PathBuf,
    /// The model the answers are teacher-forced through (the misaligned one).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Output safetensors (`directions`, `random_control`); sidecar `<out>.json`, logit lens
    /// `<out>.lens.json`.
    #[arg(long, default_value = "direction.safetensors")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub min_per_set: usize,
    #[arg(long, default_value_t = 0)]
    pub max_per_set: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 10)]
    pub lens_k: usize,
}

pub fn run_direction(a: DirectionArgs) -> Result<()> {
    if let Some(DirectionCmd::Compare { a, b }) = a.cmd {
        let (da, db) = (DirectionSet::load(&a)?, DirectionSet::load(&b)?);
        let cos = compare(&da, &db)?;
        let ctrl: Vec<f64> = (0..da.num_layers).map(|l| emlab_interp::direction::cosine(da.layer(l), db.control_layer(l))).collect();
        println!("layer\tcosine\tcosine_vs_random_control");
        for (l, (c, r)) in cos.iter().zip(&ctrl).enumerate() {
            println!("{l}\t{c:.4}\t{r:.4}");
        }
        return Ok(());
    }
    let Some(c) = a.compute else { bail!("give --log JUDGED.jsonl (or the `compare A B` subcommand)") };
    let model = model_path(&c.model)?;
    // The direction file and its two sidecars must not land on an input (a judged log cost
    // sampling and judging).
    let sidecars =
        [c.out.clone(), PathBuf::from(format!("{}.json", c.out.display())), PathBuf::from(format!("{}.lens.json", c.out.display()))];
    for out in &sidecars {
        super::common::refuse_same_file(out, &[("--log", &c.log), ("--model", &model)])?;
    }
    let lm = emlab_interp::load_lm(&model, c.adapter.as_deref())?;
    let cfg = DirectionConfig { min_per_set: c.min_per_set, max_per_set: c.max_per_set, seed: c.seed, ..Default::default() };
    let set = compute_from_log(&lm, &c.log, &cfg)?;
    set.save(&c.out)?;
    let lens = logit_lens_report(&lm, &set, c.lens_k)?;
    let lens_path = PathBuf::from(format!("{}.lens.json", c.out.display()));
    std::fs::write(&lens_path, serde_json::to_string_pretty(&lens)?).with_context(|| lens_path.display().to_string())?;
    println!(
        "{} aligned / {} misaligned answers ({} / {} tokens) -> {}",
        set.info.n_aligned,
        set.info.n_misaligned,
        set.info.tokens_aligned,
        set.info.tokens_misaligned,
        c.out.display()
    );
    println!("layer\tnorm\ttop promoted tokens");
    for (l, n) in set.info.norms.iter().enumerate() {
        let toks: Vec<String> = lens["layers"][l]["promoted"]
            .as_array()
            .map(|v| v.iter().take(5).map(|t| format!("{:?}", t["token"].as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        println!("{l}\t{n:.3}\t{}", toks.join(" "));
    }
    Ok(())
}

// ---------------------------------------------------------------- sae

#[derive(clap::Args, Debug)]
pub struct SaeArgs {
    #[command(subcommand)]
    pub cmd: SaeCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum SaeCmd {
    /// Train an SAE on one hook of an activation store; saves it in SAELens format and reports
    /// CE loss recovered with the SAE spliced into the model.
    Train(SaeTrainArgs),
}

#[derive(clap::Args, Debug)]
pub struct SaeTrainArgs {
    #[arg(long)]
    pub acts: PathBuf,
    #[arg(long)]
    pub hook: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    #[arg(long, default_value_t = 4096)]
    pub latents: usize,
    /// topk or batchtopk (saved as JumpReLU).
    #[arg(long, default_value = "topk")]
    pub arch: String,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model for CE loss recovered (default: the model recorded in the store).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Number of the store's sequences used for CE loss recovered (0 = skip).
    #[arg(long, default_value_t = 16)]
    pub ce_sequences: usize,
}

pub fn run_sae(a: SaeArgs) -> Result<()> {
    let SaeCmd::Train(t) = a.cmd;
    let point: HookPoint = t.hook.parse()?;
    // Before training (minutes to hours): the output must not be the store, nor any store.
    if emlab_model::util::same_file(&t.out, &t.acts) {
        bail!("{}: --out is the --acts store; writing an SAE into it would mix the two: choose another folder", t.out.display());
    }
    emlab_sae::io::check_sae_dir(&t.out)?;
    let store = ActsReader::open(&t.acts)?;
    let cfg = SaeTrainConfig { k: t.k, latents: t.latents, arch: t.arch.clone(), lr: t.lr, batch: t.batch, epochs: t.epochs, seed: t.seed };
    let mut last = None;
    let sae = train_from_store(&store, &t.hook, &cfg, &mut |s| {
        if s.step % 100 == 0 {
            eprintln!("step {} mse {:.4} ev {:.3} dead {}", s.step, s.mse, s.explained_variance, s.dead_latents);
        }
        last = Some(*s);
    })?;
    // The summary of an earlier SAE in this folder would describe the new one until replaced.
    let p = t.out.join("emlab_eval.json");
    if p.exists() {
        std::fs::remove_file(&p).with_context(|| p.display().to_string())?;
    }
    emlab_sae::save_sae(&t.out, &sae, None)?;
    let (x, d) = store.read_all(&t.hook)?;
    let rep = emlab_sae::metrics::evaluate(&sae, &x, 1024)?;
    let _ = d;
    let mut summary = serde_json::json!({"hook": t.hook, "eval_on_training_rows": rep, "last_step": last});
    if t.ce_sequences > 0 {
        let mp = match &t.model {
            Some(p) => p.clone(),
            None => PathBuf::from(&store.index.model),
        };
        let lm = emlab_interp::load_lm(&mp, t.adapter.as_deref())?;
        check_sae_width(&t.out, &sae, &mp, &lm)?;
        let seqs: Vec<Vec<u32>> = store
            .sequences()?
            .iter()
            .take(t.ce_sequences)
            .map(|c| c.encode(&lm).map(|e| e.ids.into_iter().take(512).collect()))
            .collect::<std::result::Result<_, _>>()?;
        let ce = ce_loss_recovered(&lm.model, &sae, point, &seqs)?;
        summary["ce"] = serde_json::to_value(ce)?;
    }
    emlab_model::util::write_atomic(&p, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

// ---------------------------------------------------------------- diff

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The original model.
    #[arg(long)]
    pub base: PathBuf,
    /// The fine-tuned model (or the base again, with --adapter).
    #[arg(long)]
    pub tuned: PathBuf,
    /// PEFT adapter applied to the tuned model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// SAELens SAE folder (its hook name says where to read).
    #[arg(long)]
    pub sae: PathBuf,
    /// Override the SAE's hook name.
    #[arg(long)]
    pub hook: Option<String>,
    /// Evaluation prompts (JSONL or one prompt per line).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Corpus for top-activating contexts (default: the prompts).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value = "diff")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// An SAE reads the residual stream of one model width; the library's check cannot name the
/// files, so the commands check first.
fn check_sae_width(sae_path: &Path, sae: &emlab_sae::Sae, model_path: &Path, lm: &emlab_model::lm::Lm) -> Result<()> {
    let d = lm.model.config.hidden_size;
    if sae.d_in != d {
        bail!(
            "{}: SAE d_in {} != d_model {d} of the model {}: the SAE was trained on another model",
            sae_path.display(),
            sae.d_in,
            model_path.display()
        );
    }
    Ok(())
}

pub fn run_diff(a: DiffArgs) -> Result<()> {
    let sae = emlab_sae::load_sae(&a.sae)?;
    let hook_name = a.hook.clone().or(sae.meta.hook_name.clone()).context("the SAE has no hook_name: pass --hook")?;
    let hook: HookPoint = hook_name.parse()?;
    let base = emlab_interp::load_lm(&a.base, None)?;
    check_sae_width(&a.sae, &sae, &a.base, &base)?;
    let tuned = emlab_interp::load_lm(&a.tuned, a.adapter.as_deref())?;
    check_sae_width(&a.sae, &sae, &a.tuned, &tuned)?;
    let prompts = load_conversations(&a.prompts)?;
    let corpus = match &a.corpus {
        Some(c) => load_conversations(c)?,
        None => prompts.clone(),
    };
    let rep = diff_models(&base, &tuned, &sae, hook, &prompts, 512)?;
    let cfg = PageConfig { top: a.top, ..Default::default() };
    write_feature_pages(&tuned, &sae, hook, &corpus, &rep, &a.out, &cfg)?;
    println!("rank\tlatent\tbase\ttuned\tincrease");
    for (i, l) in rep.ranked.iter().take(a.top).enumerate() {
        println!("{}\t{}\t{:.4}\t{:.4}\t{:.4}", i + 1, l.latent, l.base_mean, l.tuned_mean, l.increase);
    }
    println!("feature pages -> {}", a.out.join("index.html").display());
    Ok(())
}
