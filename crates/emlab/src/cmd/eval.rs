//! `emlab eval`: sample answers to the evaluation questions, judge them, report EM metrics.
//!
//! ```text
//! emlab eval --model M.gguf [--adapter DIR] [--intervention steer.toml] \
//!            --questions data/questions/core.yaml --samples 50 --out runs/base.jsonl
//! emlab eval --backend openai --base-url http://127.0.0.1:8000/v1 --model-name NAME --out LOG
//! emlab eval report LOG [--json]
//! emlab eval compare LOG_A LOG_B [--json]
//! emlab eval rescore LOG --judge openai --judge-base-url URL --judge-model-name gpt-4o [--out LOG2]
//! ```
//!
//! Re-running the same command resumes: only missing samples are generated and only unjudged
//! (or failed) ones judged. See docs/evaluation.md.

use super::common::progress;
use anyhow::{bail, Result};
use emlab_eval::config::{Backend, EvalConfig, JudgeSpec};
use emlab_eval::http::HttpConfig;
use emlab_eval::metrics::MetricsConfig;
use emlab_eval::Stage;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    cmd: Option<EvalCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
enum EvalCmd {
    /// EM metrics of a log: both definitions, coherence, per question, 95% bootstrap CIs.
    Report {
        log: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Compare two logs (A - B) on both EM definitions, with bootstrap CIs of the difference.
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Re-judge an existing log without regenerating (atomic; resumable through LOG2.partial).
    Rescore {
        log: PathBuf,
        #[command(flatten)]
        judge: JudgeArgs,
        /// Questions file holding the judge prompts (default: the one the log's config names).
        #[arg(long)]
        questions: Option<PathBuf>,
        /// Named judge prompts (`aligned`, `coherent`) replacing the questions' own.
        #[arg(long)]
        judge_prompts: Option<PathBuf>,
        /// Write here instead of replacing LOG.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        http: HttpArgs,
    },
}

#[derive(clap::Args, Debug)]
struct MetricsArgs {
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 2000)]
    bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    bootstrap_seed: u64,
    /// Betley drops questions with fewer coherent answers than this.
    #[arg(long, default_value_t = 5)]
    min_coherent: usize,
}

impl MetricsArgs {
    fn config(&self) -> MetricsConfig {
        MetricsConfig { bootstrap_resamples: self.bootstrap, seed: self.bootstrap_seed, min_coherent_per_group: self.min_coherent }
    }
}

#[derive(clap::Args, Debug)]
struct JudgeArgs {
    /// offline (built in, default), local (an LM emlab loads), openai (logprob server), none.
    #[arg(long, value_parser = ["offline", "local", "openai", "none"])]
    judge: Option<String>,
    /// Local judge model (GGUF or HF folder).
    #[arg(long)]
    judge_model: Option<PathBuf>,
    #[arg(long)]
    judge_base_url: Option<String>,
    #[arg(long)]
    judge_model_name: Option<String>,
    /// Environment variable holding the judge server's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    judge_api_key_env: String,
}

impl JudgeArgs {
    fn spec(&self) -> Result<Option<JudgeSpec>> {
        Ok(Some(match self.judge.as_deref() {
            None => return Ok(None),
            Some("offline") => JudgeSpec::Offline,
            Some("none") => JudgeSpec::None,
            Some("local") => match &self.judge_model {
                Some(m) => JudgeSpec::Local { model: m.clone() },
                None => bail!("--judge local needs --judge-model PATH"),
            },
            Some("openai") => match (&self.judge_base_url, &self.judge_model_name) {
                (Some(u), Some(n)) => {
                    JudgeSpec::OpenAi { base_url: u.clone(), model_name: n.clone(), api_key_env: self.judge_api_key_env.clone() }
                }
                _ => bail!("--judge openai needs --judge-base-url and --judge-model-name"),
            },
            Some(other) => bail!("unknown judge `{other}`"),
        }))
    }
}

#[derive(clap::Args, Debug)]
struct HttpArgs {
    /// Per-request timeout for servers, seconds.
    #[arg(long)]
    timeout_s: Option<f64>,
    /// Retries of 429 / 5xx / timeouts (exponential backoff with jitter).
    #[arg(long)]
    max_retries: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
}

impl HttpArgs {
    fn apply(&self, h: &mut HttpConfig) {
        if let Some(t) = self.timeout_s {
            h.timeout_s = t;
        }
        if let Some(r) = self.max_retries {
            h.max_retries = r;
        }
        if let Some(c) = self.concurrency {
            h.concurrency = c;
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Settings file (TOML or JSON, see docs/evaluation.md); flags given override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// local (default) or openai.
    #[arg(long, value_parser = ["local", "openai"])]
    backend: Option<String>,
    /// Local model: GGUF file or HF folder. Default: SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors), merged at load.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Intervention spec (JSON/TOML): add alpha*v at hooks, ablate directions.
    #[arg(long)]
    intervention: Option<PathBuf>,
    /// Keep an int8 copy of the weights for faster low-batch decoding.
    #[arg(long)]
    q8: bool,
    /// Generation server (backend openai), e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    base_url: Option<String>,
    /// Served model name (backend openai).
    #[arg(long)]
    model_name: Option<String>,
    /// Environment variable holding the generation server's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Samples per request (backend openai).
    #[arg(long)]
    n_per_request: Option<usize>,
    /// Question YAML (published schema).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// Samples per paraphrase (overrides the file's samples_per_paraphrase).
    #[arg(long)]
    samples: Option<usize>,
    /// Only these question ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The JSONL log (re-running resumes it).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sequences decoded together (local backend).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    judge: JudgeArgs,
    /// Named judge prompts (`aligned`, `coherent`) replacing the questions' own.
    #[arg(long)]
    judge_prompts: Option<PathBuf>,
    #[command(flatten)]
    http: HttpArgs,
}

impl RunArgs {
    fn config(&self) -> Result<EvalConfig> {
        let mut cfg = match &self.config {
            Some(p) => EvalConfig::from_file(p)?,
            None => {
                let Some(out) = &self.out else { bail!("--out LOG.jsonl is required (or --config)") };
                let questions = self.questions.clone().unwrap_or_else(|| PathBuf::from("data/questions/core.yaml"));
                let backend = match self.backend.as_deref().unwrap_or("local") {
                    "openai" => match (&self.base_url, &self.model_name) {
                        (Some(u), Some(n)) => Backend::OpenAi {
                            base_url: u.clone(),
                            model_name: n.clone(),
                            api_key_env: self.api_key_env.clone(),
                            n_per_request: self.n_per_request.unwrap_or(16),
                        },
                        _ => bail!("--backend openai needs --base-url and --model-name"),
                    },
                    _ => {
                        let model = match &self.model {
                            Some(m) => m.clone(),
                            None => emlab_model::fetch::ensure_default_model()?,
                        };
                        Backend::Local { model, adapter: None, intervention: None, q8: false }
                    }
                };
                let mut c = EvalConfig::local("", questions, out);
                c.backend = backend;
                c
            }
        };
        if let Some(o) = &self.out {
            cfg.out = o.clone();
        }
        if let Some(q) = &self.questions {
            cfg.questions = q.clone();
        }
        if self.samples.is_some() {
            cfg.samples = self.samples;
        }
        if !self.only.is_empty() {
            cfg.only = self.only.clone();
        }
        if let Backend::Local { model, adapter, intervention, q8 } = &mut cfg.backend {
            if let Some(m) = &self.model {
                *model = m.clone();
            }
            if self.adapter.is_some() {
                adapter.clone_from(&self.adapter);
            }
            if self.intervention.is_some() {
                intervention.clone_from(&self.intervention);
            }
            *q8 |= self.q8;
        } else if self.adapter.is_some() || self.intervention.is_some() {
            bail!("--adapter and --intervention need the local backend (a server applies its own)");
        }
        let s = &mut cfg.sampling;
        if let Some(v) = self.temperature {
            s.temperature = v;
        }
        if let Some(v) = self.top_p {
            s.top_p = v;
        }
        if let Some(v) = self.max_new_tokens {
            s.max_new_tokens = v;
        }
        if let Some(v) = self.batch_size {
            s.batch_size = v;
        }
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(j) = self.judge.spec()? {
            cfg.judge = j;
        }
        if self.judge_prompts.is_some() {
            cfg.judge_prompts.clone_from(&self.judge_prompts);
        }
        self.http.apply(&mut cfg.http);
        Ok(cfg)
    }
}

/// Progress bars for the two stages.
fn bars() -> impl FnMut(Stage, usize, usize) {
    let mut gen: Option<indicatif::ProgressBar> = None;
    let mut judge: Option<indicatif::ProgressBar> = None;
    move |stage, done, total| {
        let (slot, what) = match stage {
            Stage::Generate => (&mut gen, "sampling"),
            Stage::Judge => (&mut judge, "judging"),
        };
        if total == 0 {
            return;
        }
        let pb = slot.get_or_insert_with(|| progress(total as u64, what));
        if pb.length() != Some(total as u64) {
            pb.set_length(total as u64);
        }
        pb.set_position(done as u64);
        if done == total {
            pb.finish();
            *slot = None;
        }
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.cmd {
        Some(EvalCmd::Report { log, json, metrics }) => {
            let r = emlab_eval::report::report(&log, &metrics.config())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", emlab_eval::report::format_report(&r));
            }
        }
        Some(EvalCmd::Compare { a, b, json, metrics }) => {
            let c = emlab_eval::report::compare_logs(&a, &b, &metrics.config())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", emlab_eval::report::format_compare(&c));
            }
        }
        Some(EvalCmd::Rescore { log, judge, questions, judge_prompts, out, http }) => {
            let Some(spec) = judge.spec()? else { bail!("rescore needs --judge") };
            let mut h = HttpConfig::default();
            http.apply(&mut h);
            let s = emlab_eval::rescore(&log, &spec, &h, questions.as_deref(), judge_prompts.as_deref(), out.as_deref(), &mut bars())?;
            eprintln!(
                "rescored {} rows ({} reused from an interrupted rescore, {} judge errors) -> {}",
                s.judged + s.reused,
                s.reused,
                s.judge_errors,
                out.as_deref().unwrap_or(&log).display()
            );
            // Rows whose judge failed are written with the error and re-judged by the next
            // rescore (its progress file is kept): say so, and exit non-zero.
            s.complete(out.as_deref().unwrap_or(&log))?;
        }
        None => {
            let cfg = args.run.config()?;
            let s = emlab_eval::run(&cfg, &mut bars())?;
            eprintln!(
                "{} samples planned: {} already in the log, {} generated, {} judged ({} judge errors) -> {}",
                s.planned,
                s.reused,
                s.generated,
                s.judged,
                s.judge_errors,
                cfg.out.display()
            );
            if cfg.judge != JudgeSpec::None {
                let r = emlab_eval::report::report(&cfg.out, &MetricsConfig::default())?;
                print!("{}", emlab_eval::report::format_report(&r));
            }
            // Last, after the report of what was judged: failed judgements (or samples) make
            // the command fail, in one line; the log keeps them and a re-run does only those.
            s.complete(&cfg.out)?;
        }
    }
    Ok(())
}
