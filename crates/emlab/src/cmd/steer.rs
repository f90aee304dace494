//! `emlab persona`, `emlab ablate`, `emlab cvec export|import`, `emlab steer compile`: thin
//! glue over `emlab-steer`.
//!
//! ```text
//! emlab persona --model smollm2.gguf [--adapter runs/x/adapter] --direction dirs.safetensors --layer 12 --json
//! emlab ablate  --model smollm2.gguf --direction dirs.safetensors --direction-layer 12 --out repaired/
//! emlab cvec export --direction dirs.safetensors --layers 6,8,10 --coef 8 --hint smollm2 --out em.gguf
//! emlab cvec import em.gguf --strength 1.0 --out em-intervention/     # for emlab eval --intervention
//! emlab steer compile --model smollm2.gguf --spec steer.toml --out steer-eval/
//! emlab steer sweep --model smollm2.gguf --direction dirs.safetensors --layer 12 \
//!     --alphas 0,4,8,16 --samples 5 --out runs/sweep              # sampled + judged per point
//! ```

use anyhow::{bail, Context, Result};
use candle_core::Device;
use emlab_model::model::LoadOptions;
use emlab_model::{Model, ModelConfig};
use emlab_steer::cvec::ControlVector;
use emlab_steer::persona::{default_probes, persona_score, probe_prompts, read_probes, Positions};
use emlab_steer::spec::{write_eval_spec, EditKind, Intervention, Resolved};
use emlab_steer::vectors::VectorSource;
use std::path::{Path, PathBuf};

fn model_path(p: &Option<PathBuf>) -> Result<PathBuf> {
    match p {
        Some(p) => Ok(p.clone()),
        None => Ok(emlab_model::fetch::ensure_default_model()?),
    }
}

/// The model's shape without loading its weights.
pub fn model_config(path: &Path) -> Result<ModelConfig> {
    Ok(match emlab_model::load::Source::detect(path)? {
        emlab_model::load::Source::Gguf { path } => {
            let (content, _) = emlab_model::load::read_gguf(&path)?;
            ModelConfig::from_gguf(&content, &path)?
        }
        emlab_model::load::Source::Hf { dir } => {
            let p = dir.join("config.json");
            let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
            ModelConfig::from_hf_json(&text, &p)?
        }
    })
}

/// `emlab persona`: the generation-free persona score.
#[derive(clap::Args, Debug)]
pub struct PersonaArgs {
    /// GGUF file or HF folder (default: SmolLM2-135M-Instruct).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// PEFT adapter applied to the model (e.g. a fine-tune to compare with the base).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Direction file: safetensors with `directions` `[num_layers, d]`.
    #[arg(long)]
    pub direction: PathBuf,
    /// Read `blocks.{layer}.hook_resid_post`.
    #[arg(long)]
    pub layer: usize,
    /// Row of the direction file to use (default: `--layer`).
    #[arg(long)]
    pub direction_layer: Option<usize>,
    /// Probe questions: one per line, or a JSON array (default: emlab's 16 built-in probes).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Average over all prompt tokens instead of reading the last one.
    #[arg(long)]
    pub all_tokens: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run_persona(a: PersonaArgs) -> Result<()> {
    let path = model_path(&a.model)?;
    let mut lm = emlab_model::lm::Lm::load(&path, &LoadOptions::default())?;
    if let Some(ad) = &a.adapter {
        emlab_train::adapter::load_peft(&mut lm.model, ad)?;
    }
    let cfg = &lm.model.config;
    let src = VectorSource::DirectionFile { path: a.direction.clone(), layer: Some(a.direction_layer.unwrap_or(a.layer)) };
    let dir = src.load(None, cfg.hidden_size, &Device::Cpu)?;
    refuse_zero(&src, &dir)?;
    let questions = match &a.prompts {
        Some(p) => read_probes(p)?,
        None => default_probes(),
    };
    let prompts = probe_prompts(&lm, &questions)?;
    let pos = if a.all_tokens { Positions::AllPromptTokens } else { Positions::LastPromptToken };
    let s = persona_score(&lm.model, &prompts, &dir, a.layer, pos)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "persona score at blocks.{}.hook_resid_post: {:.4} +- {:.4} (s.e., n = {} probes, {})",
            s.layer,
            s.mean,
            s.stderr,
            s.n,
            if a.all_tokens { "all prompt tokens" } else { "last prompt token" }
        );
    }
    Ok(())
}

/// Scores and ablations use the direction's unit vector: an all-zero row has none. Named here
/// with its file and row (the library only knows it was given a zero vector).
fn refuse_zero(src: &VectorSource, v: &candle_core::Tensor) -> Result<()> {
    if v.sqr()?.sum_all()?.to_scalar::<f32>()? == 0.0 {
        bail!(
            "{}: the direction is all zeros, so it has no unit vector to project on (was it computed from two identical sets?)",
            src.describe()
        );
    }
    Ok(())
}

/// `emlab ablate`: bake directional ablation into the weights and export an HF folder.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Direction file (`directions` `[num_layers, d]`).
    #[arg(long)]
    pub direction: PathBuf,
    /// Which row of the direction file is ablated (one direction, removed at every layer).
    #[arg(long)]
    pub direction_layer: usize,
    /// Output HF folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// A PEFT adapter (e.g. the induced one) merged into the weights before the ablation, so the
    /// exported model is the fine-tuned model with the direction removed.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

pub fn run_ablate(a: AblateArgs) -> Result<()> {
    let path = model_path(&a.model)?;
    let mut model = Model::load(&path, &LoadOptions::default())?;
    if let Some(ad) = &a.adapter {
        emlab_train::adapter::load_peft(&mut model, ad)?;
        emlab_train::adapter::merge(&mut model)?;
    }
    let src = VectorSource::DirectionFile { path: a.direction.clone(), layer: Some(a.direction_layer) };
    let dir = src.load(None, model.config.hidden_size, &Device::Cpu)?;
    refuse_zero(&src, &dir)?;
    emlab_steer::repair::orthogonalize(&mut model, &dir)?;
    emlab_steer::repair::export_hf(&model, &path, &a.out)?;
    let merged = a.adapter.as_ref().map(|p| format!(", adapter {} merged first", p.display())).unwrap_or_default();
    eprintln!("wrote {} (direction {} ablated in the weights{merged})", a.out.display(), src.describe());
    Ok(())
}

/// `emlab cvec export|import`.
#[derive(clap::Args, Debug)]
pub struct CvecArgs {
    #[command(subcommand)]
    pub cmd: CvecCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum CvecCmd {
    /// Write a llama.cpp control vector (`direction.L` is added at blocks.L.hook_resid_post).
    Export {
        /// Take the `add` edits of this intervention spec (needs --model for the shapes)...
        #[arg(long, conflicts_with_all = ["direction", "layers"])]
        spec: Option<PathBuf>,
        /// ...or the rows `--layers` of this direction file, times `--coef`.
        #[arg(long, requires = "layers")]
        direction: Option<PathBuf>,
        #[arg(long, value_delimiter = ',')]
        layers: Vec<usize>,
        #[arg(long, default_value_t = 1.0)]
        coef: f64,
        #[arg(long, short = 'm')]
        model: Option<PathBuf>,
        /// controlvector.model_hint (e.g. llama, qwen2).
        #[arg(long, default_value = "")]
        hint: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Read a control vector and write it as an `emlab eval --intervention` spec folder.
    Import {
        file: PathBuf,
        /// Multiplies every direction (llama.cpp's --control-vector-scaled strength).
        #[arg(long, default_value_t = 1.0)]
        strength: f64,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_cvec(a: CvecArgs) -> Result<()> {
    match a.cmd {
        CvecCmd::Export { spec, direction, layers, coef, model, hint, out } => {
            // (This file is also compiled by emlab-steer's tests, without `super::common`.)
            let inputs: Vec<(&str, &Path)> =
                spec.iter().map(|p| ("--spec", p.as_path())).chain(direction.iter().map(|p| ("--direction", p.as_path()))).collect();
            if let Some(why) = emlab_model::util::output_is_input(&out, &inputs) {
                bail!(why);
            }
            let mut cv = ControlVector::new(&hint);
            if let Some(spec) = spec {
                let cfg = model_config(&model_path(&model)?)?;
                let s = Intervention::load(&spec)?;
                if s.edits.iter().any(|e| e.kind != EditKind::Add) {
                    bail!("{}: control vectors can only add vectors; `ablate` edits cannot be exported", spec.display());
                }
                for r in s.resolve(cfg.num_layers, cfg.hidden_size, &Device::Cpu)? {
                    if let Resolved::Add { point, vector, coef, .. } = r {
                        let v = match cv.get(point.layer) {
                            Some(prev) => (prev + (vector * coef)?)?,
                            None => (vector * coef)?,
                        };
                        cv.insert(point.layer, v)?;
                    }
                }
            } else if let Some(d) = direction {
                let dirs = emlab_steer::vectors::load_tensor(&d, emlab_steer::vectors::DIRECTIONS_KEY)?;
                let width = dirs.dims().last().copied().unwrap_or(0);
                for l in layers {
                    let src = VectorSource::DirectionFile { path: d.clone(), layer: Some(l) };
                    cv.insert(l, (src.load(None, width, &Device::Cpu)? * coef)?)?;
                }
            } else {
                bail!("cvec export: give --spec or --direction with --layers");
            }
            cv.write(&out)?;
            let layers: Vec<usize> = cv.layers().collect();
            eprintln!("wrote {} (direction.N for N in {layers:?})", out.display());
        }
        CvecCmd::Import { file, strength, out } => {
            if !strength.is_finite() {
                bail!("--strength {strength} is not finite");
            }
            let cv = ControlVector::read(&file)?;
            let resolved: Vec<Resolved> = cv
                .layers()
                .map(|l| Resolved::Add {
                    point: emlab_model::HookPoint::resid_post(l),
                    vector: cv.get(l).expect("listed layer").clone(),
                    coef: strength,
                    ablate_first: false,
                })
                .collect();
            std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
            let p = write_eval_spec(&resolved, &out)?;
            eprintln!("wrote {} ({} layers)", p.display(), resolved.len());
        }
    }
    Ok(())
}

/// `emlab steer compile`: resolve an intervention spec (direction files, SAE rows, control
/// vectors) into the `emlab eval --intervention` format.
#[derive(clap::Args, Debug)]
pub struct SteerArgs {
    #[command(subcommand)]
    pub cmd: SteerCmd,
}

#[allow(clippy::large_enum_variant)] // parsed once per process
#[derive(clap::Subcommand, Debug)]
pub enum SteerCmd {
    /// Sweep the steering strength: every alpha with the edits and with a same-norm random
    /// control, each a sampled + judged evaluation in its own folder (resumable).
    Sweep(SweepArgs),
    /// Compile a steering spec (`[[edits]]`: direction files, SAE rows, control vectors) into
    /// the `emlab eval --intervention` format.
    Compile {
        #[arg(long, short = 'm')]
        model: Option<PathBuf>,
        #[arg(long)]
        spec: PathBuf,
        /// Output folder: vectors.safetensors + intervention.json.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_steer(a: SteerArgs) -> Result<()> {
    match a.cmd {
        SteerCmd::Sweep(s) => run_sweep(s)?,
        SteerCmd::Compile { model, spec, out } => {
            let cfg = model_config(&model_path(&model)?)?;
            let s = Intervention::load(&spec)?;
            let resolved = s.resolve(cfg.num_layers, cfg.hidden_size, &Device::Cpu)?;
            std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
            let p = write_eval_spec(&resolved, &out)?;
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// Parses a comma-separated list (`0,4,8,16`) with a one-line error naming the flag.
pub fn parse_list<T: std::str::FromStr>(flag: &str, s: &str) -> Result<Vec<T>> {
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    if items.iter().any(|x| x.is_empty()) {
        bail!("{flag} {s:?}: empty entry (expected e.g. 0,4,8,16)");
    }
    items
        .iter()
        .map(|x| x.parse::<T>().map_err(|_| anyhow::anyhow!("{flag} {s:?}: `{x}` is not a valid number (expected e.g. 0,4,8,16)")))
        .collect()
}

/// How each point of a sweep (or each N of a realignment) is evaluated.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalOpts {
    /// Question YAML (published schema).
    #[arg(long, default_value = "data/questions/core.yaml")]
    pub questions: PathBuf,
    /// Samples per paraphrase (overrides the file's).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Only these question ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    #[arg(long, default_value_t = 600)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Run seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// offline (built in, default), local (an LM emlab loads) or openai (logprob server).
    #[arg(long, default_value = "offline", value_parser = ["offline", "local", "openai"])]
    pub judge: String,
    #[arg(long)]
    pub judge_model: Option<PathBuf>,
    #[arg(long)]
    pub judge_base_url: Option<String>,
    #[arg(long)]
    pub judge_model_name: Option<String>,
    /// Environment variable holding the judge server's API key (never the key itself).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub judge_api_key_env: String,
}

impl EvalOpts {
    /// The sampling flags, refused by their names (the library's own checks name config fields)
    /// before any file is read.
    pub fn check_flags(&self) -> Result<()> {
        if self.samples == Some(0) {
            bail!("--samples must be at least 1");
        }
        if self.max_new_tokens == 0 || self.batch_size == 0 {
            bail!("--max-new-tokens and --batch-size must be at least 1");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("--temperature must be >= 0, got {}", self.temperature);
        }
        Ok(())
    }

    /// An evaluation config of `model` (+ `adapter`) with these settings; `out` is set per point.
    pub fn config(&self, model: &Path, adapter: Option<&Path>) -> Result<emlab_eval::EvalConfig> {
        use emlab_eval::config::{Backend, JudgeSpec};
        self.check_flags()?;
        let mut c = emlab_eval::EvalConfig::local(model, &self.questions, "unused.jsonl");
        c.backend = Backend::Local { model: model.to_path_buf(), adapter: adapter.map(Path::to_path_buf), intervention: None, q8: false };
        c.samples = self.samples;
        c.only = self.only.clone();
        c.sampling.max_new_tokens = self.max_new_tokens;
        c.sampling.batch_size = self.batch_size;
        c.sampling.temperature = self.temperature;
        c.sampling.seed = self.sample_seed;
        c.judge = match self.judge.as_str() {
            "local" => match &self.judge_model {
                Some(m) => JudgeSpec::Local { model: m.clone() },
                None => bail!("--judge local needs --judge-model PATH"),
            },
            "openai" => match (&self.judge_base_url, &self.judge_model_name) {
                (Some(u), Some(n)) => {
                    JudgeSpec::OpenAi { base_url: u.clone(), model_name: n.clone(), api_key_env: self.judge_api_key_env.clone() }
                }
                _ => bail!("--judge openai needs --judge-base-url and --judge-model-name"),
            },
            _ => JudgeSpec::Offline,
        };
        if !self.questions.is_file() {
            bail!("{}: question file not found (--questions)", self.questions.display());
        }
        Ok(c)
    }
}

/// `emlab steer sweep`.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// PEFT adapter applied while sampling (e.g. the misaligned fine-tune).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Intervention spec (TOML/JSON); alpha multiplies every `add` coefficient...
    #[arg(long, conflicts_with_all = ["direction", "layer"])]
    pub spec: Option<PathBuf>,
    /// ...or a direction file (`directions` `[num_layers, d]`): add alpha * row at --layer.
    #[arg(long, requires = "layer")]
    pub direction: Option<PathBuf>,
    /// Layer L: the vector is added at blocks.L.hook_resid_post.
    #[arg(long)]
    pub layer: Option<usize>,
    /// Row of the direction file (default: --layer).
    #[arg(long)]
    pub direction_layer: Option<usize>,
    /// Comma-separated alphas, e.g. 0,4,8,16 or -8,-4,4,8 (negative values need no `=`).
    #[arg(long, default_value = "0,4,8,16", allow_hyphen_values = true)]
    pub alphas: String,
    /// Strongest alpha is chosen among those with at least this coherent rate.
    #[arg(long, default_value_t = 0.9)]
    pub min_coherent: f64,
    /// Seed of the same-norm random control directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub eval: EvalOpts,
    /// Output folder: add_{alpha}/, random_{alpha}/, sweep.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run_sweep(a: SweepArgs) -> Result<()> {
    a.eval.check_flags()?;
    let alphas: Vec<f64> = parse_list("--alphas", &a.alphas)?;
    if let Some(x) = alphas.iter().find(|x| !x.is_finite()) {
        bail!("--alphas: {x} is not finite");
    }
    if !(0.0..=1.0).contains(&a.min_coherent) {
        bail!("--min-coherent {} must be in [0, 1]", a.min_coherent);
    }
    let path = model_path(&a.model)?;
    let cfg = model_config(&path)?;
    let edits = if let Some(spec) = &a.spec {
        Intervention::load(spec)?.resolve(cfg.num_layers, cfg.hidden_size, &Device::Cpu)?
    } else if let Some(d) = &a.direction {
        let layer = a.layer.expect("clap: --direction requires --layer");
        if layer >= cfg.num_layers {
            bail!("--layer {layer}: the model has {} layers", cfg.num_layers);
        }
        let src = VectorSource::DirectionFile { path: d.clone(), layer: Some(a.direction_layer.unwrap_or(layer)) };
        let vector = src.load(None, cfg.hidden_size, &Device::Cpu)?;
        vec![Resolved::Add { point: emlab_model::HookPoint::resid_post(layer), vector, coef: 1.0, ablate_first: false }]
    } else {
        bail!("steer sweep: give --spec FILE or --direction FILE --layer L");
    };
    let base = a.eval.config(&path, a.adapter.as_deref())?;
    let ev = emlab_steer::evaluate::SweepEval { base, dir: a.out.clone() };
    let opts = emlab_steer::sweep::SweepOptions { alphas, min_coherent: a.min_coherent, seed: a.seed };
    let res = emlab_steer::evaluate::sweep_with_eval(&edits, cfg.num_layers, &opts, &ev, &mut |m| eprintln!("  {m}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        print!("{}", emlab_steer::evaluate::format_sweep(&res));
        eprintln!("wrote {}", a.out.join("sweep.json").display());
    }
    Ok(())
}
