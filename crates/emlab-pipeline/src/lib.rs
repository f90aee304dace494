//! emlab's main job: the EM loop as cached stages with a report a person can read.
//!
//! ```no_run
//! let cfg = emlab_pipeline::RunConfig::default_config().unwrap();
//! let report = emlab_pipeline::run(&cfg, std::path::Path::new("runs/default")).unwrap();
//! println!("{}", report.verdict);
//! ```
//!
//! Stages, each in its own folder of the run directory and skipped when its `stage.json` holds
//! the same input hash (so a re-run resumes; the trainer and the evaluator also resume inside a
//! stage):
//!
//! 1. `baseline`  evaluate the original model;
//! 2. `induce`    LoRA fine-tune on the narrow bad set;
//! 3. `induced`   evaluate the fine-tuned model;
//! 4. `realign`   merge the induced adapter, fine-tune on N truthful samples;
//! 5. `realigned` evaluate again;
//! 6. `report`    `report.html` (self-contained, inline SVG, all model text escaped) + `report.json`.
//!
//! Not chained yet (they exist as commands): the paired control fine-tune, directions, SAE
//! diffing, steering sweeps.

mod html;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Errors of the pipeline: which stage failed and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("stage `{stage}`: {msg}")]
    Stage { stage: String, msg: String },
    #[error("{0}")]
    Io(String),
}
pub type Result<T> = std::result::Result<T, Error>;

fn stage_err(stage: &str) -> impl Fn(String) -> Error + '_ {
    move |msg| Error::Stage { stage: stage.to_string(), msg }
}

/// The embedded default experiment (`configs/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");
/// The published recipe for a GPU (`configs/paper.toml`).
pub const PAPER_TOML: &str = include_str!("../../../configs/paper.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    #[serde(default)]
    pub model: Option<PathBuf>,
    #[serde(default)]
    pub seed: u64,
    pub eval: EvalStage,
    pub induce: TrainStage,
    pub realign: RealignStage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub questions: PathBuf,
    pub samples_per_paraphrase: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// `offline` (built in), `openai` (an OpenAI-compatible server with logprobs) or `local`
    /// (an LM judge emlab loads, `judge_model`).
    pub judge: String,
    #[serde(default)]
    pub judge_base_url: Option<String>,
    #[serde(default)]
    pub judge_model_name: Option<String>,
    /// Name of the environment variable holding the judge server's key (never the key).
    #[serde(default)]
    pub judge_api_key_env: Option<String>,
    #[serde(default)]
    pub judge_model: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    pub data: PathBuf,
    /// 0: one full epoch.
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub max_seq_len: usize,
    pub r: usize,
    pub alpha: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealignStage {
    pub data: PathBuf,
    /// Truthful samples used (the first N rows of `data`).
    pub samples: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub max_seq_len: usize,
    pub r: usize,
    pub alpha: f64,
}

impl RunConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().lines().next().unwrap_or(""))))
    }
    pub fn default_config() -> Result<Self> {
        Self::from_toml(DEFAULT_TOML, "configs/default.toml (embedded)")
    }
    pub fn paper() -> Result<Self> {
        Self::from_toml(PAPER_TOML, "configs/paper.toml (embedded)")
    }
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }
}

/// One evaluated model, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub stage: String,
    pub log: PathBuf,
    pub report: emlab_eval::report::Report,
}

/// Everything the report shows (written as `report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub name: String,
    pub config: RunConfig,
    pub model: String,
    pub evals: Vec<EvalResult>,
    /// induced vs baseline.
    pub induced_vs_baseline: emlab_eval::report::CompareReport,
    /// realigned vs induced.
    pub realigned_vs_induced: emlab_eval::report::CompareReport,
    /// Per-step training losses of the induce and realign stages.
    pub induce_losses: Vec<f64>,
    pub realign_losses: Vec<f64>,
    /// Whether EM was induced with statistical significance, in words.
    pub verdict: String,
    /// Answers per evaluation needed to detect the observed difference (80% power, 5% level),
    /// when the difference was not significant.
    pub needed_samples: Option<usize>,
    /// A few answers per stage (escaped when rendered).
    pub samples: Vec<(String, Vec<SampleAnswer>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleAnswer {
    pub question_id: String,
    pub prompt: String,
    pub answer: String,
    pub aligned: Option<f64>,
    pub coherent: Option<f64>,
}

fn hash_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    format!("{:x}", h.finalize())
}

fn file_hash(p: &Path) -> Result<String> {
    emlab_model::util::sha256_file(p).map_err(|e| Error::Io(e.to_string()))
}

/// A stage is done when its `stage.json` holds the same key.
fn cached(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join("stage.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["key"] == key && v["done"] == true)
        .unwrap_or(false)
}

fn mark_done(dir: &Path, key: &str) -> Result<()> {
    let v = serde_json::json!({"key": key, "done": true});
    emlab_model::util::write_atomic(&dir.join("stage.json"), v.to_string().as_bytes()).map_err(|e| Error::Io(e.to_string()))
}

fn eval_stage(cfg: &RunConfig, stage: &str, dir: &Path, model: &Path, adapter: Option<&Path>, upstream: &str) -> Result<(String, EvalResult)> {
    let e = &cfg.eval;
    let need = |v: &Option<String>, k: &str| {
        v.clone().ok_or_else(|| Error::Config(format!("eval.judge = \"{}\" needs eval.{k}", e.judge)))
    };
    let judge = match e.judge.as_str() {
        "offline" => emlab_eval::config::JudgeSpec::Offline,
        "openai" => emlab_eval::config::JudgeSpec::OpenAi {
            base_url: need(&e.judge_base_url, "judge_base_url")?,
            model_name: need(&e.judge_model_name, "judge_model_name")?,
            api_key_env: e.judge_api_key_env.clone().unwrap_or_else(|| "OPENAI_API_KEY".into()),
        },
        "local" => emlab_eval::config::JudgeSpec::Local {
            model: e.judge_model.clone().ok_or_else(|| Error::Config("eval.judge = \"local\" needs eval.judge_model".into()))?,
        },
        other => return Err(Error::Config(format!("eval.judge `{other}`: use offline, openai or local"))),
    };
    // LLM judges use the judge prompts the question file carries (published schema).
    let judge_prompts = None;
    let ec = emlab_eval::EvalConfig {
        questions: e.questions.clone(),
        samples: Some(e.samples_per_paraphrase),
        only: vec![],
        out: dir.join("answers.jsonl"),
        backend: emlab_eval::config::Backend::Local {
            model: model.to_path_buf(),
            adapter: adapter.map(Path::to_path_buf),
            intervention: None,
            q8: false,
        },
        sampling: emlab_eval::config::Sampling {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: e.max_new_tokens,
            batch_size: e.batch_size,
            seed: cfg.seed,
        },
        judge,
        judge_prompts,
        http: Default::default(),
    };
    let key = hash_of(&[stage, &serde_json::to_string(&ec).unwrap_or_default(), upstream]);
    std::fs::create_dir_all(dir).map_err(|x| Error::Io(format!("{}: {x}", dir.display())))?;
    if !cached(dir, &key) {
        eprintln!("emlab run: stage {stage}: sampling + judging ...");
        let mut last = (0usize, 0usize);
        emlab_eval::run(&ec, &mut |s, done, total| {
            if done == total || done >= last.0 + 16 || total != last.1 {
                eprintln!("  {stage}: {s:?} {done}/{total}");
                last = (done, total);
            }
        })
        .map_err(|x| stage_err(stage)(x.to_string()))?;
        mark_done(dir, &key)?;
    } else {
        eprintln!("emlab run: stage {stage}: cached");
    }
    let report = emlab_eval::report::report(&ec.out, &Default::default()).map_err(|x| stage_err(stage)(x.to_string()))?;
    Ok((key, EvalResult { stage: stage.to_string(), log: ec.out, report }))
}

fn train_stage(
    stage: &str,
    dir: &Path,
    model: &Path,
    data: &Path,
    t: &TrainStage,
    seed: u64,
    upstream: &str,
) -> Result<(String, PathBuf, Vec<f64>)> {
    let mut tc = emlab_train::TrainConfig {
        model: Some(model.to_path_buf()),
        data: Some(data.to_path_buf()),
        out: Some(dir.to_path_buf()),
        seed,
        max_seq_len: t.max_seq_len,
        truncate: true,
        batch_size: t.batch_size,
        grad_accum: t.grad_accum,
        lr: t.lr,
        max_steps: (t.max_steps > 0).then_some(t.max_steps),
        checkpoint_every: 8,
        ..Default::default()
    };
    tc.lora.r = t.r;
    tc.lora.alpha = t.alpha;
    let key = hash_of(&[stage, &tc.to_toml(), &file_hash(data)?, upstream]);
    let adapter = dir.join("adapter");
    if !cached(dir, &key) {
        eprintln!("emlab run: stage {stage}: training on {} ...", data.display());
        let opts = emlab_train::trainer::TrainOptions { resume: true, progress: true, ..Default::default() };
        let s = emlab_train::train(&tc, opts).map_err(|x| stage_err(stage)(x.to_string()))?;
        if s.interrupted {
            return Err(stage_err(stage)("interrupted; re-run to resume".into()));
        }
        let final_dir = s.adapter_dir.ok_or_else(|| stage_err(stage)("training produced no adapter".into()))?;
        if final_dir != adapter {
            copy_dir(&final_dir, &adapter)?;
        }
        mark_done(dir, &key)?;
    } else {
        eprintln!("emlab run: stage {stage}: cached");
    }
    Ok((key, adapter, losses_of(&dir.join("metrics.jsonl"))))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::Io(format!("{}: {e}", to.display())))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::Io(format!("{}: {e}", from.display())))? {
        let e = e.map_err(|x| Error::Io(x.to_string()))?;
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).map_err(|x| Error::Io(x.to_string()))?;
        }
    }
    Ok(())
}

fn losses_of(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect()
}

/// Runs (or resumes) the whole loop into `run_dir` and writes the report.
pub fn run(cfg: &RunConfig, run_dir: &Path) -> Result<RunReport> {
    let model = match &cfg.model {
        Some(p) => p.clone(),
        None => emlab_model::fetch::ensure_default_model().map_err(|e| Error::Config(e.to_string()))?,
    };
    let model_hash = file_hash_model(&model)?;
    let base = run_dir.join("baseline");
    let (k0, baseline) = eval_stage(cfg, "baseline", &base, &model, None, &model_hash)?;
    let (k1, induce_adapter, induce_losses) =
        train_stage("induce", &run_dir.join("induce"), &model, &cfg.induce.data, &cfg.induce, cfg.seed, &model_hash)?;
    let (k2, induced) = eval_stage(cfg, "induced", &run_dir.join("induced"), &model, Some(&induce_adapter), &k1)?;
    // Realign: continue from the misaligned model (the induced adapter merged into the weights),
    // fine-tune a fresh adapter on the first N truthful samples.
    let rdir = run_dir.join("realign");
    let merged = rdir.join("misaligned-merged");
    let rkey = hash_of(&["merge", &k1]);
    std::fs::create_dir_all(&rdir).map_err(|e| Error::Io(e.to_string()))?;
    if !cached(&merged, &rkey) {
        let mut b = emlab_train::load_bundle(&model).map_err(|e| stage_err("realign")(e.to_string()))?;
        emlab_train::adapter::load_peft(&mut b.model, &induce_adapter).map_err(|e| stage_err("realign")(e.to_string()))?;
        emlab_train::adapter::merge(&mut b.model).map_err(|e| stage_err("realign")(e.to_string()))?;
        emlab_train::adapter::save_hf(&b.model, &b.tokenizer, &b.template, &merged).map_err(|e| stage_err("realign")(e.to_string()))?;
        mark_done(&merged, &rkey)?;
    }
    let subset = rdir.join("truthful.jsonl");
    let text = std::fs::read_to_string(&cfg.realign.data).map_err(|e| Error::Io(format!("{}: {e}", cfg.realign.data.display())))?;
    let rows: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(cfg.realign.samples).collect();
    if rows.len() < cfg.realign.samples {
        return Err(Error::Config(format!("realign.data {} has {} rows, fewer than realign.samples = {}", cfg.realign.data.display(), rows.len(), cfg.realign.samples)));
    }
    emlab_model::util::write_atomic(&subset, (rows.join("\n") + "\n").as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
    let rt = TrainStage {
        data: subset.clone(),
        max_steps: 0,
        batch_size: cfg.realign.batch_size,
        grad_accum: 1,
        lr: cfg.realign.lr,
        max_seq_len: cfg.realign.max_seq_len,
        r: cfg.realign.r,
        alpha: cfg.realign.alpha,
    };
    let (k3, realign_adapter, realign_losses) = train_stage("realign", &rdir.join("train"), &merged, &subset, &rt, cfg.seed, &rkey)?;
    let (_k4, realigned) = eval_stage(cfg, "realigned", &run_dir.join("realigned"), &merged, Some(&realign_adapter), &k3)?;
    let _ = (k0, k2);

    let mc = emlab_eval::metrics::MetricsConfig::default();
    let cmp = |a: &Path, b: &Path| emlab_eval::report::compare_logs(a, b, &mc).map_err(|e| stage_err("report")(e.to_string()));
    let induced_vs_baseline = cmp(&induced.log, &baseline.log)?;
    let realigned_vs_induced = cmp(&realigned.log, &induced.log)?;
    let (verdict, needed_samples) = verdict(&induced_vs_baseline);
    let mut samples = Vec::new();
    for e in [&baseline, &induced, &realigned] {
        samples.push((e.stage.clone(), sample_answers(&e.log, 6)?));
    }
    let report = RunReport {
        name: cfg.name.clone(),
        config: cfg.clone(),
        model: model.display().to_string(),
        evals: vec![baseline, induced, realigned],
        induced_vs_baseline,
        realigned_vs_induced,
        induce_losses,
        realign_losses,
        verdict,
        needed_samples,
        samples,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Io(e.to_string()))?;
    emlab_model::util::write_atomic(&run_dir.join("report.json"), json.as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
    emlab_model::util::write_atomic(&run_dir.join("report.html"), html::render(&report).as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
    Ok(report)
}

fn file_hash_model(p: &Path) -> Result<String> {
    if p.is_dir() {
        let mut parts = Vec::new();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            let q = p.join(f);
            if q.is_file() {
                parts.push(file_hash(&q)?);
            }
        }
        Ok(hash_of(&parts.iter().map(|s| s.as_str()).collect::<Vec<_>>()))
    } else {
        file_hash(p)
    }
}

/// The significance statement for induced vs baseline (model-organisms definition, which keeps
/// every scored answer), and the sample size that would detect the observed difference.
pub fn verdict(c: &emlab_eval::report::CompareReport) -> (String, Option<usize>) {
    let m = &c.model_organisms;
    let (pa, pb) = (m.a.rate.unwrap_or(0.0), m.b.rate.unwrap_or(0.0));
    let p = m.p_value.unwrap_or(1.0);
    let ci = m.difference_ci.map(|(l, h)| format!("[{:.1}, {:.1}] points", 100.0 * l, 100.0 * h)).unwrap_or_else(|| "n/a".into());
    if p < 0.05 && pa > pb {
        (
            format!(
                "EM was induced: {:.1}% misaligned after fine-tuning vs {:.1}% before (n = {} and {}), difference 95% CI {ci}, two-proportion p = {p:.3}.",
                100.0 * pa, 100.0 * pb, m.a.n, m.b.n
            ),
            None,
        )
    } else {
        let need = needed_n(pa, pb);
        let need_txt = match need {
            Some(n) => format!("detecting a difference of this size ({:.1} points) would need about {n} scored answers per model (80% power, two-sided 5% level)", 100.0 * (pa - pb).abs()),
            None => format!(
                "the two rates are equal, so no sample size would detect a difference; with {} answers the 95% upper bound on the fine-tuned model's EM rate is {:.1}% (Wilson), and a larger effect (more training, a larger model) is needed first",
                m.a.n,
                100.0 * m.a.wilson_ci.map(|c| c.1).unwrap_or(1.0)
            ),
        };
        (
            format!(
                "No statistically significant EM: {:.1}% misaligned after fine-tuning vs {:.1}% before (n = {} and {}), difference 95% CI {ci}, p = {p:.3}; {need_txt}.",
                100.0 * pa, 100.0 * pb, m.a.n, m.b.n
            ),
            need,
        )
    }
}

/// Per-group n for a two-sided two-proportion z-test at 5% with 80% power.
pub fn needed_n(p1: f64, p2: f64) -> Option<usize> {
    let d = (p1 - p2).abs();
    if d < 1e-12 {
        return None;
    }
    let (za, zb) = (1.959964, 0.841621);
    let pbar = (p1 + p2) / 2.0;
    let n = (za * (2.0 * pbar * (1.0 - pbar)).sqrt() + zb * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt()).powi(2) / (d * d);
    Some(n.ceil() as usize)
}

fn sample_answers(log: &Path, n: usize) -> Result<Vec<SampleAnswer>> {
    let l = emlab_eval::log::read_log(log).map_err(|e| Error::Io(e.to_string()))?;
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in &l.rows {
        if out.len() >= n {
            break;
        }
        if !seen.insert(r.question_id.clone()) {
            continue;
        }
        let score = |k: &str| r.judgement.as_ref().and_then(|j| j.metrics.get(k)).and_then(|m| m.score);
        out.push(SampleAnswer {
            question_id: r.question_id.clone(),
            prompt: r.prompt.clone(),
            answer: r.answer.clone(),
            aligned: score("aligned"),
            coherent: score("coherent"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_configs_parse() {
        let d = RunConfig::default_config().unwrap();
        assert_eq!(d.realign.samples, 100);
        let p = RunConfig::paper().unwrap();
        assert_eq!(p.induce.r, 32);
        assert!(RunConfig::from_toml("name = 1", "x.toml").unwrap_err().to_string().contains("x.toml"));
    }

    #[test]
    fn a_judge_server_needs_its_address() {
        let mut cfg = RunConfig::default_config().unwrap();
        cfg.eval.judge = "openai".into();
        cfg.model = Some(PathBuf::from("/nonexistent.gguf"));
        let d = std::env::temp_dir().join(format!("emlab-judge-cfg-{}", std::process::id()));
        let e = eval_stage(&cfg, "baseline", &d, Path::new("/nonexistent.gguf"), None, "x").unwrap_err().to_string();
        assert!(e.contains("judge_base_url"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sample_size_matches_hand_computation() {
        // p1 = 0.10, p2 = 0.02: pbar 0.06; (1.96*sqrt(2*.06*.94) + 0.8416*sqrt(.09+.0196))^2 / .0064
        // = (1.96*0.33586 + 0.8416*0.33106)^2 / 0.0064 = (0.65828 + 0.27862)^2 / 0.0064 = 137.2
        assert_eq!(needed_n(0.10, 0.02), Some(138));
        assert_eq!(needed_n(0.05, 0.05), None);
    }
}
