//! The stages and their cache: each stage computes a key from its settings and the keys of the
//! stages it reads, and is skipped when its folder's `stage.json` holds that key.

use crate::config::{RunConfig, TrainStage};
use crate::locate::{self, LocateResult};
use crate::{
    stage_err, Error, EvalResult, RateCi, RealignPoint, Result, RunReport, SampleAnswer, SteerPoint, Steering, TrainPoint, Training,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stage names, in run order (`emlab run --stage NAME`).
pub const STAGES: [&str; 12] = [
    "baseline",
    "induce",
    "induced",
    "control",
    "controlled",
    "locate",
    "steer",
    "steer-original",
    "realign",
    "realigned",
    "directions",
    "report",
];

pub(crate) fn hash_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    format!("{:x}", h.finalize())
}

pub(crate) fn file_hash(p: &Path) -> Result<String> {
    emlab_model::util::sha256_file(p).map_err(|e| Error::Io(e.to_string()))
}

pub(crate) fn io(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{}: {e}", p.display()))
}

/// The seconds a finished stage took when it ran, if its `stage.json` holds `key`.
pub(crate) fn cached(dir: &Path, key: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("stage.json")).ok()?).ok()?;
    (v["key"] == key && v["done"] == true).then(|| v["seconds"].as_f64().unwrap_or(0.0))
}

/// A stage's cache key, and the key the same stage had when keys still held absolute paths
/// (runs made before 2026-11-27's relocatable keys): a folder made then is still found cached
/// where it was made, and its `stage.json` is rewritten with the new key, so it may move after.
/// Changing how a key is computed re-runs that stage (training from scratch) in every existing
/// run folder: when you must, keep the formula it replaces reachable, as `legacy` is here.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Keys {
    pub key: String,
    pub legacy: String,
}

impl Keys {
    pub(crate) fn same(h: String) -> Keys {
        Keys { legacy: h.clone(), key: h }
    }
}

/// An evaluation's settings as its stage key records them: all that changes its answers or
/// judgements (not the batch size or HTTP settings), nothing that says where files are, so a run
/// folder can move (or be copied to another machine) and stay cached. The output, model and adapter paths are left out (the
/// upstream key names the model and adapter); the questions file, judge prompts, a local judge
/// model and an intervention (spec and vectors) stand in by their contents' hashes, which
/// `content` computes (the runner hashes each file once per invocation).
pub(crate) fn eval_settings(ec: &emlab_eval::EvalConfig, content: &dyn Fn(&Path) -> Result<String>) -> Result<String> {
    use emlab_eval::config::{Backend, JudgeSpec};
    let mut v = serde_json::to_value(ec).map_err(|e| Error::Io(e.to_string()))?;
    let o = v.as_object_mut().ok_or_else(|| Error::Io("eval config is not an object".into()))?;
    o.remove("out");
    // Neither changes an answer (sampling is batch-independent; `http` is transport), as in the
    // evaluator's own identity of a log.
    o.remove("http");
    if let Some(sm) = o.get_mut("sampling").and_then(|x| x.as_object_mut()) {
        sm.remove("batch_size");
    }
    o.insert("questions".into(), content(&ec.questions)?.into());
    if let Some(p) = &ec.judge_prompts {
        o.insert("judge_prompts".into(), content(p)?.into());
    }
    if let (JudgeSpec::Local { model }, Some(j)) = (&ec.judge, o.get_mut("judge").and_then(|j| j.as_object_mut())) {
        j.insert("model".into(), content(model)?.into());
    }
    if let (Backend::Local { intervention, .. }, Some(b)) = (&ec.backend, o.get_mut("backend").and_then(|b| b.as_object_mut())) {
        b.remove("model");
        b.remove("adapter");
        if let Some(p) = intervention {
            let h = emlab_eval::intervention_hash(p).map_err(|e| Error::Io(e.to_string()))?;
            b.insert("intervention".into(), h.into());
        }
    }
    Ok(v.to_string())
}

/// The seconds of a finished stage whose `dir/stage.json` holds `keys.key`, or whose
/// `old_dir/stage.json` holds `keys.legacy`; then the new key is recorded in `dir`, so the run
/// folder may move from here on.
pub(crate) fn lookup(dir: &Path, old_dir: &Path, keys: &Keys) -> Option<f64> {
    cached(dir, &keys.key).or_else(|| {
        let s = cached(old_dir, &keys.legacy)?;
        mark_done(dir, &keys.key, s).ok().map(|_| s)
    })
}

/// `stage.json` of a finished stage. `format: 2` marks records whose keys hold no paths; a
/// stage that starts writes its key with `done: false` first (see [`holds_other_key`]).
pub(crate) fn mark_done(dir: &Path, key: &str, seconds: f64) -> Result<()> {
    write_record(dir, serde_json::json!({"key": key, "done": true, "seconds": seconds, "format": 2}))
}

fn mark_started(dir: &Path, key: &str) -> Result<()> {
    write_record(dir, serde_json::json!({"key": key, "done": false, "format": 2}))
}

fn write_record(dir: &Path, v: serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    emlab_model::util::write_atomic(&dir.join("stage.json"), v.to_string().as_bytes()).map_err(|e| Error::Io(e.to_string()))
}

/// Whether `dir` holds a stage's outputs under other settings (a current-format record with
/// another key). Before such a stage runs, the folder moves to
/// `run_dir/.stale/<stage path>-<unix seconds>/` (kept, hidden from the dashboard) and the stage
/// starts afresh. A record of this key (an interrupted run), no record, or an older-format record
/// (a folder from before 2026-11-27, maybe moved since) leave the folder as it is. Evaluations
/// skip this: their answers are reusable across some changes (more samples per paraphrase, added
/// questions) with the same result as a fresh run, so they set their folder aside only when the
/// evaluator refuses what is there ([`Runner::eval`]).
pub(crate) fn holds_other_key(dir: &Path, key: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("stage.json")) else { return false };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    v["format"] == 2 && v["key"] != key
}

/// A stage whose folder holds outputs it cannot resume from (`why`) sets them aside and records
/// its key again, to start afresh.
fn start_afresh(run_dir: &Path, dir: &Path, key: &str, stage: &str, why: &str) -> Result<()> {
    let to = set_aside(run_dir, dir)?;
    eprintln!("emlab run: stage {stage}: {why}; the earlier outputs moved to {}", to.display());
    mark_started(dir, key)
}

/// Moves a stage folder to `run_dir/.stale/<stage path>-<unix seconds>/`.
pub(crate) fn set_aside(run_dir: &Path, dir: &Path) -> Result<PathBuf> {
    let rel = dir.strip_prefix(run_dir).unwrap_or(dir).to_string_lossy().replace(['/', '\\'], "-");
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let stale = run_dir.join(".stale");
    std::fs::create_dir_all(&stale).map_err(io(&stale))?;
    let mut to = stale.join(format!("{rel}-{secs}"));
    for n in 1.. {
        if !to.exists() {
            break;
        }
        to = stale.join(format!("{rel}-{secs}-{n}"));
    }
    std::fs::rename(dir, &to).map_err(io(dir))?;
    Ok(to)
}

#[derive(Clone)]
pub(crate) struct Ev {
    pub key: Keys,
    pub result: EvalResult,
}

#[derive(Clone)]
pub(crate) struct Tr {
    pub key: Keys,
    pub dir: PathBuf,
    pub adapter: PathBuf,
}

/// What a seed of `more_seeds` replicates: the induce fine-tune or a control (`None`: the
/// paired one).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arm {
    Induce,
    Control(Option<String>),
}

impl Arm {
    /// The training and evaluation stage names of this arm under `seed`.
    pub(crate) fn stage_names(&self, seed: u64) -> (String, String) {
        let (t, e) = match self {
            Arm::Induce => ("induce".to_string(), "induced".to_string()),
            Arm::Control(name) => crate::config::ControlStage::stage_names(name.as_deref()),
        };
        (format!("{t}-s{seed}"), format!("{e}-s{seed}"))
    }
}

/// Memoises stage outputs within one invocation, so a stage that several others read runs
/// (or is looked up) once.
pub(crate) struct Runner<'a> {
    pub cfg: &'a RunConfig,
    pub dir: PathBuf,
    pub model: PathBuf,
    pub model_hash: Keys,
    baseline: Option<Ev>,
    induce: Option<Tr>,
    induced: Option<Ev>,
    /// Control fine-tunes and their evaluations by training stage name (`control`,
    /// `control-NAME`); `None`: not configured.
    control: BTreeMap<String, Option<Tr>>,
    controlled: BTreeMap<String, Option<Ev>>,
    locate: Option<Option<(Keys, LocateResult)>>,
    steer: Option<Option<Steering>>,
    steer_original: Option<Option<Steering>>,
    merged: Option<(Keys, PathBuf)>,
    realign: BTreeMap<usize, Tr>,
    realigned: BTreeMap<usize, Ev>,
    /// Fine-tunes and evaluations of `more_seeds`, by stage name (`induce-s1`, `induced-s1`, ...).
    replicas: BTreeMap<String, Tr>,
    replicated: BTreeMap<String, Ev>,
    directions: Option<Option<crate::agree::Agreement>>,
    pub seconds: Vec<(String, f64)>,
    hashes: std::cell::RefCell<BTreeMap<PathBuf, String>>,
}

impl<'a> Runner<'a> {
    /// The content hash of an input file or folder, computed once per invocation.
    fn content_hash(&self, p: &Path) -> Result<String> {
        if let Some(h) = self.hashes.borrow().get(p) {
            return Ok(h.clone());
        }
        let h = emlab_eval::log::hash_path(p).map_err(|e| Error::Io(e.to_string()))?;
        self.hashes.borrow_mut().insert(p.to_path_buf(), h.clone());
        Ok(h)
    }

    fn eval_settings(&self, ec: &emlab_eval::EvalConfig) -> Result<String> {
        eval_settings(ec, &|p| self.content_hash(p))
    }

    pub fn new(cfg: &'a RunConfig, run_dir: &Path) -> Result<Self> {
        cfg.check_inputs()?;
        let model = match &cfg.model {
            // A known model's name (`emlab model fetch` lists them) is fetched and verified.
            Some(p) if !p.exists() && emlab_model::fetch::known(&p.to_string_lossy()).is_some() => {
                emlab_model::fetch::ensure_model(&p.to_string_lossy(), None).map_err(|e| Error::Config(e.to_string()))?
            }
            Some(p) if !p.exists() => {
                return Err(Error::Config(format!(
                    "model {}: no such file or folder (give a GGUF file, an HF folder or a known name such as qwen2.5-coder-0.5b)",
                    p.display()
                )))
            }
            Some(p) => p.clone(),
            None => emlab_model::fetch::ensure_default_model().map_err(|e| Error::Config(e.to_string()))?,
        };
        // Settings the model must fit, checked before the first stage (locate would find out
        // after baseline and induce).
        if let Some(layer) = cfg.locate.as_ref().and_then(|l| l.layer) {
            let nl = emlab_model::config::ModelConfig::read(&model).map_err(|e| Error::Config(e.to_string()))?.num_layers;
            if layer >= nl {
                return Err(Error::Config(format!("locate.layer = {layer} but {} has {nl} layers (0..{})", model.display(), nl - 1)));
            }
        }
        let model_hash = model_keys(&model)?;
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        Ok(Runner {
            cfg,
            dir: run_dir.to_path_buf(),
            model,
            model_hash,
            baseline: None,
            induce: None,
            induced: None,
            control: BTreeMap::new(),
            controlled: BTreeMap::new(),
            locate: None,
            steer: None,
            steer_original: None,
            merged: None,
            realign: BTreeMap::new(),
            realigned: BTreeMap::new(),
            replicas: BTreeMap::new(),
            replicated: BTreeMap::new(),
            directions: None,
            seconds: Vec::new(),
            hashes: Default::default(),
        })
    }

    /// Runs one named stage (and what it needs).
    pub fn stage(&mut self, name: &str) -> Result<()> {
        match name {
            "baseline" => self.baseline().map(drop),
            "induce" => self.induce().map(drop),
            "induced" => self.induced().map(drop),
            "control" => self.need("control", self.cfg.control.is_some()).and_then(|_| self.control().map(drop)),
            "controlled" => self.need("control", self.cfg.control.is_some()).and_then(|_| self.controlled().map(drop)),
            other if self.replicate_stage(other).is_some() => {
                let (arm, seed, evaluate) = self.replicate_stage(other).expect("matched");
                if evaluate {
                    self.replicated(&arm, seed).map(drop)
                } else {
                    self.replicate(&arm, seed).map(drop)
                }
            }
            other if self.more_control_name(other).is_some() => {
                let (name, evaluate) = self.more_control_name(other).expect("matched");
                if evaluate {
                    self.controlled_of(Some(&name)).map(drop)
                } else {
                    self.control_of(Some(&name)).map(drop)
                }
            }
            "locate" => self.need("locate", self.cfg.locate.is_some()).and_then(|_| self.locate().map(drop)),
            "steer" => self.need("steer", self.cfg.steer.is_some() && self.cfg.locate.is_some()).and_then(|_| self.steer().map(drop)),
            "steer-original" => {
                self.need("steer", self.cfg.steer.is_some() && self.cfg.locate.is_some()).and_then(|_| match self.steer_original()? {
                    Some(_) => Ok(()),
                    None => Err(Error::Config(
                        "stage steer-original needs [steer] original_alphas (the strengths to add the direction at)".into(),
                    )),
                })
            }
            "realign" => self.realign_all().map(drop),
            "realigned" => self.realigned_all().map(drop),
            "directions" => self.need("locate", self.cfg.locate.is_some()).and_then(|_| match self.directions()? {
                Some(_) => Ok(()),
                None => Err(Error::Config("stage directions compares fine-tunes: it needs a second one ([control] or more_seeds)".into())),
            }),
            "report" => self.report().map(drop),
            other => Err(Error::Config(format!("unknown stage `{other}` (one of {})", self.cfg.stage_names().join(", ")))),
        }
    }

    /// `induce-sN` -> (induce, N, false), `controlled-NAME-sN` -> (control NAME, N, true), ...
    /// for a seed of `more_seeds` and a configured control.
    fn replicate_stage(&self, stage: &str) -> Option<(Arm, u64, bool)> {
        let (base, seed) = stage.rsplit_once("-s")?;
        let seed: u64 = seed.parse().ok().filter(|s| self.cfg.more_seeds.contains(s))?;
        let (arm, evaluate) = match base {
            "induce" => (Arm::Induce, false),
            "induced" => (Arm::Induce, true),
            "control" | "controlled" if self.cfg.control.is_some() => (Arm::Control(None), base == "controlled"),
            other => {
                let (name, evaluate) = self.more_control_name(other)?;
                (Arm::Control(Some(name)), evaluate)
            }
        };
        Some((arm, seed, evaluate))
    }

    /// `control-NAME` -> (NAME, false), `controlled-NAME` -> (NAME, true), for a configured NAME.
    fn more_control_name(&self, stage: &str) -> Option<(String, bool)> {
        let (name, evaluate) = match stage.strip_prefix("controlled-") {
            Some(n) => (n, true),
            None => (stage.strip_prefix("control-")?, false),
        };
        self.cfg.control.as_ref()?.more.contains_key(name).then(|| (name.to_string(), evaluate))
    }

    fn need(&self, section: &str, present: bool) -> Result<()> {
        if present {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "this stage needs a [{section}] section in the config{}",
                if section == "steer" { " (and [locate])" } else { "" }
            )))
        }
    }

    fn timed<T>(
        &mut self,
        stage: &str,
        dir: &Path,
        keys: &Keys,
        f: impl FnOnce(&mut Self) -> Result<T>,
        load: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        self.timed_in(stage, dir, dir, keys, true, f, load)
    }

    /// [`Self::timed`] for a stage that resumes inside its folder across setting changes, and
    /// sets the folder aside itself when it cannot.
    fn timed_resuming<T>(
        &mut self,
        stage: &str,
        dir: &Path,
        keys: &Keys,
        f: impl FnOnce(&mut Self) -> Result<T>,
        load: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        self.timed_in(stage, dir, dir, keys, false, f, load)
    }

    /// [`Self::timed`] for a stage whose `stage.json` used to live in `old_dir`: the legacy key
    /// is looked up there, the new key written to `dir` (where the two differ, the old record
    /// stays as it was).
    #[allow(clippy::too_many_arguments)]
    fn timed_in<T>(
        &mut self,
        stage: &str,
        dir: &Path,
        old_dir: &Path,
        keys: &Keys,
        set_aside_other_keys: bool,
        f: impl FnOnce(&mut Self) -> Result<T>,
        load: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let key = keys.key.as_str();
        if let Some(s) = lookup(dir, old_dir, keys) {
            eprintln!("emlab run: stage {stage}: cached");
            self.seconds.push((stage.to_string(), s));
            return load(self);
        }
        if set_aside_other_keys && holds_other_key(dir, key) {
            start_afresh(&self.dir, dir, key, stage, "settings changed")?;
        } else {
            mark_started(dir, key)?;
        }
        let t0 = Instant::now();
        let out = f(self)?;
        let s = t0.elapsed().as_secs_f64();
        mark_done(dir, key, s)?;
        self.seconds.push((stage.to_string(), s));
        Ok(out)
    }

    pub fn baseline(&mut self) -> Result<Ev> {
        if let Some(e) = &self.baseline {
            return Ok(e.clone());
        }
        let (model, up) = (self.model.clone(), self.model_hash.clone());
        let e = self.eval("baseline", &self.dir.join("baseline"), &model, None, &up)?;
        self.baseline = Some(e.clone());
        Ok(e)
    }

    pub fn induce(&mut self) -> Result<Tr> {
        if let Some(t) = &self.induce {
            return Ok(t.clone());
        }
        let t = self.cfg.induce.clone();
        let (model, up) = (self.model.clone(), self.model_hash.clone());
        let tr = self.train("induce", &self.dir.join("induce"), &model, &t, &up)?;
        self.induce = Some(tr.clone());
        Ok(tr)
    }

    pub fn induced(&mut self) -> Result<Ev> {
        if let Some(e) = &self.induced {
            return Ok(e.clone());
        }
        let tr = self.induce()?;
        let model = self.model.clone();
        let e = self.eval("induced", &self.dir.join("induced"), &model, Some(&tr.adapter), &tr.key)?;
        self.induced = Some(e.clone());
        Ok(e)
    }

    /// The paired control fine-tune (`[control].data`).
    pub fn control(&mut self) -> Result<Option<Tr>> {
        self.control_of(None)
    }

    /// The paired control's evaluation.
    pub fn controlled(&mut self) -> Result<Option<Ev>> {
        self.controlled_of(None)
    }

    /// A control fine-tune: the paired one (`None`) or `[control].more`'s `name`.
    pub fn control_of(&mut self, name: Option<&str>) -> Result<Option<Tr>> {
        let (stage, _) = crate::config::ControlStage::stage_names(name);
        if let Some(c) = self.control.get(&stage) {
            return Ok(c.clone());
        }
        let data = self.cfg.control.as_ref().and_then(|c| c.data_of(name).cloned());
        let out = match data {
            None => None,
            Some(data) => {
                // The induce settings on another set: the only difference is the data.
                let t = TrainStage { data, ..self.cfg.induce.clone() };
                let (model, up) = (self.model.clone(), self.model_hash.clone());
                Some(self.train(&stage, &self.dir.join(&stage), &model, &t, &up)?)
            }
        };
        self.control.insert(stage, out.clone());
        Ok(out)
    }

    /// A control fine-tune's evaluation.
    pub fn controlled_of(&mut self, name: Option<&str>) -> Result<Option<Ev>> {
        let (_, stage) = crate::config::ControlStage::stage_names(name);
        if let Some(c) = self.controlled.get(&stage) {
            return Ok(c.clone());
        }
        let out = match self.control_of(name)? {
            None => None,
            Some(tr) => {
                let model = self.model.clone();
                Some(self.eval(&stage, &self.dir.join(&stage), &model, Some(&tr.adapter), &tr.key)?)
            }
        };
        self.controlled.insert(stage, out.clone());
        Ok(out)
    }

    /// `arm` fine-tuned again with `seed` (one of `more_seeds`): `[induce]`'s settings and the
    /// arm's data, no persona snapshots (only the main seed's are located).
    pub(crate) fn replicate(&mut self, arm: &Arm, seed: u64) -> Result<Tr> {
        let (stage, _) = arm.stage_names(seed);
        if let Some(t) = self.replicas.get(&stage) {
            return Ok(t.clone());
        }
        let data = match arm {
            Arm::Induce => Some(self.cfg.induce.data.clone()),
            Arm::Control(name) => self.cfg.control.as_ref().and_then(|c| c.data_of(name.as_deref()).cloned()),
        }
        .ok_or_else(|| Error::Config(format!("stage {stage}: that control is not configured")))?;
        let t = TrainStage { data, persona_every: 0, ..self.cfg.induce.clone() };
        let (model, up) = (self.model.clone(), self.model_hash.clone());
        let tr = self.train_seeded(&stage, &self.dir.join(&stage), &model, &t, &up, seed)?;
        self.replicas.insert(stage, tr.clone());
        Ok(tr)
    }

    /// The evaluation of [`Self::replicate`]'s fine-tune.
    pub(crate) fn replicated(&mut self, arm: &Arm, seed: u64) -> Result<Ev> {
        let (_, stage) = arm.stage_names(seed);
        if let Some(e) = self.replicated.get(&stage) {
            return Ok(e.clone());
        }
        let tr = self.replicate(arm, seed)?;
        let model = self.model.clone();
        let e = self.eval(&stage, &self.dir.join(&stage), &model, Some(&tr.adapter), &tr.key)?;
        self.replicated.insert(stage, e.clone());
        Ok(e)
    }

    /// Every arm's fine-tunes over `seed` and `more_seeds` (those not cached run now, after the
    /// main seed's stages), summarised; `None` without `more_seeds`.
    fn seed_report(&mut self, induced: &Ev) -> Result<Option<crate::SeedReport>> {
        if self.cfg.more_seeds.is_empty() {
            return Ok(None);
        }
        let point = |seed: u64, e: &Ev| crate::SeedPoint {
            seed,
            stage: e.result.stage.clone(),
            em: RateCi::of(&e.result.report.metrics.em_model_organisms),
            coherent: RateCi::of(&e.result.report.metrics.coherence),
        };
        // In `stage_names`' order (seed by seed), so an interrupted run has finished whole seeds.
        for seed in self.cfg.more_seeds.clone() {
            for arm in self.arms() {
                self.replicated(&arm, seed)?;
            }
        }
        let mut arms = Vec::new();
        for arm in self.arms() {
            let main = match &arm {
                Arm::Induce => induced.clone(),
                Arm::Control(name) => self.controlled_of(name.as_deref())?.expect("a configured control"),
            };
            let mut per_seed = vec![point(self.cfg.seed, &main)];
            for seed in self.cfg.more_seeds.clone() {
                per_seed.push(point(seed, &self.replicated(&arm, seed)?));
            }
            let of = |f: fn(&crate::SeedPoint) -> Option<RateCi>| {
                emlab_eval::stats::mean_t_interval(&per_seed.iter().filter_map(|p| f(p).map(|r| r.rate)).collect::<Vec<_>>())
            };
            let (em, coherent) = (of(|p| p.em), of(|p| p.coherent));
            arms.push(crate::SeedArm { stage: main.result.stage.clone(), per_seed, em, coherent });
        }
        let rates = |a: &crate::SeedArm| a.per_seed.iter().filter_map(|p| p.em.map(|r| r.rate)).collect::<Vec<_>>();
        let comparisons = arms[1..]
            .iter()
            .map(|b| crate::SeedComparison {
                a: arms[0].stage.clone(),
                b: b.stage.clone(),
                difference: arms[0].em.zip(b.em).map(|(x, y)| x.mean - y.mean),
                welch: emlab_eval::stats::welch_t_test(&rates(&arms[0]), &rates(b)),
            })
            .collect();
        let seeds = std::iter::once(self.cfg.seed).chain(self.cfg.more_seeds.iter().copied()).collect();
        Ok(Some(crate::SeedReport { seeds, arms, comparisons }))
    }

    /// The arms the seeds replicate: induce, then every configured control.
    fn arms(&self) -> Vec<Arm> {
        std::iter::once(Arm::Induce).chain(self.cfg.control_arms().into_iter().map(Arm::Control)).collect()
    }

    /// The names of `[control].more`, in run order.
    fn more_control_names(&self) -> Vec<String> {
        self.cfg.control.iter().flat_map(|c| c.more.keys().cloned()).collect()
    }

    pub fn locate(&mut self) -> Result<Option<(Keys, LocateResult)>> {
        if let Some(l) = &self.locate {
            return Ok(l.clone());
        }
        let Some(lc) = self.cfg.locate.clone() else {
            self.locate = Some(None);
            return Ok(None);
        };
        let base = self.baseline()?;
        let ind = self.induced()?;
        let tr = self.induce()?;
        let ctl = self.control()?;
        let mut more = Vec::new();
        for name in self.more_control_names() {
            let tr = self.control_of(Some(&name))?.expect("configured");
            more.push((crate::config::ControlStage::stage_names(Some(&name)).0, tr));
        }
        let dir = self.dir.join("locate");
        let settings = serde_json::to_string(&lc).unwrap_or_default();
        let seed = self.cfg.seed.to_string();
        let of = |k: fn(&Keys) -> &String| {
            let ctl_key = ctl.as_ref().map(|c| k(&c.key).clone()).unwrap_or_default();
            let mut parts = vec!["locate", &settings, k(&base.key), k(&ind.key), k(&tr.key), &ctl_key, &seed];
            // Further controls add their persona traces; a run without them keeps its key.
            for (stage, c) in &more {
                parts.extend([stage.as_str(), k(&c.key).as_str()]);
            }
            hash_of(&parts)
        };
        let key = Keys { key: of(|k| &k.key), legacy: of(|k| &k.legacy) };
        let inputs = locate::Inputs {
            model: self.model.clone(),
            induce_adapter: tr.adapter.clone(),
            baseline_log: base.result.log.clone(),
            induced_log: ind.result.log.clone(),
            train_dirs: std::iter::once(("induce".to_string(), tr.dir.clone()))
                .chain(ctl.map(|c| ("control".to_string(), c.dir)))
                .chain(more.iter().map(|(stage, c)| (stage.clone(), c.dir.clone())))
                .collect(),
            seed: self.cfg.seed,
        };
        let out_dir = dir.clone();
        let res = self.timed(
            "locate",
            &dir,
            &key,
            |_| {
                eprintln!("emlab run: stage locate: direction, persona scores, SAE diff ...");
                locate::run(&lc, &inputs, &out_dir)
            },
            |_| locate::load(&out_dir),
        )?;
        self.locate = Some(Some((key.clone(), res.clone())));
        Ok(Some((key, res)))
    }

    pub fn steer(&mut self) -> Result<Option<Steering>> {
        if let Some(s) = &self.steer {
            return Ok(s.clone());
        }
        let (Some(sc), Some((lkey, loc))) = (self.cfg.steer.clone(), self.locate()?) else {
            self.steer = Some(None);
            return Ok(None);
        };
        let tr = self.induce()?;
        let st = self.steer_stage("steer", &sc, &lkey, &loc, Some(&tr.adapter))?;
        self.steer = Some(Some(st.clone()));
        Ok(Some(st))
    }

    /// The `steer-original` stage: the direction and the top SAE-diff latents added to the
    /// original model; `None` unless `[steer] original_alphas` is set.
    pub fn steer_original(&mut self) -> Result<Option<Steering>> {
        if let Some(s) = &self.steer_original {
            return Ok(s.clone());
        }
        let sc = self.cfg.steer.clone().filter(|s| !s.original_alphas.is_empty());
        let (Some(sc), Some((lkey, loc))) = (sc, self.locate()?) else {
            self.steer_original = Some(None);
            return Ok(None);
        };
        let st = self.steer_stage("steer-original", &sc, &lkey, &loc, None)?;
        self.steer_original = Some(Some(st.clone()));
        Ok(Some(st))
    }

    /// `steer` (on the induced model, `adapter` its adapter) or `steer-original` (`adapter`
    /// `None`): each keyed by its own settings only, so changing one re-runs only its sweeps.
    fn steer_stage(
        &mut self,
        stage: &'static str,
        sc: &crate::SteerStage,
        lkey: &Keys,
        loc: &LocateResult,
        adapter: Option<&Path>,
    ) -> Result<Steering> {
        let dir = self.dir.join(stage);
        let model = self.model.clone();
        let mut ec = self.eval_config(&dir.join("unused.jsonl"), &model, adapter)?;
        ec.samples = Some(sc.samples_per_paraphrase);
        ec.sampling.max_new_tokens = sc.max_new_tokens;
        // `steer` hashes its settings without the original model's (the JSON runs made before
        // those settings existed hashed); `steer-original` hashes them all.
        let mut own = sc.clone();
        if adapter.is_some() {
            own.original_alphas.clear();
            own.latents = 0;
        }
        let settings = serde_json::to_string(&own).unwrap_or_default();
        let key = Keys {
            key: hash_of(&[stage, &settings, &self.eval_settings(&ec)?, &lkey.key]),
            legacy: hash_of(&[stage, &settings, &legacy_settings(&ec), &lkey.legacy]),
        };
        let (run_dir, out_dir, sc, loc) = (self.dir.clone(), dir.clone(), sc.clone(), loc.clone());
        self.timed(
            stage,
            &dir,
            &key,
            |_| {
                let s = if adapter.is_some() {
                    eprintln!("emlab run: stage steer: sweep on the induced model ...");
                    crate::locate::steer_sweep(&sc, &loc, &ec, &out_dir, &run_dir)?
                } else {
                    eprintln!("emlab run: stage steer-original: the direction and the top SAE-diff latents on the original model ...");
                    crate::locate::steer_original_sweep(&sc, &loc, &ec, &out_dir, &run_dir)?
                };
                let json = serde_json::to_string_pretty(&s).map_err(|e| Error::Io(e.to_string()))?;
                emlab_model::util::write_atomic(&out_dir.join("steer.json"), json.as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
                Ok(s)
            },
            |_| read_json::<SteeringJson>(&out_dir.join("steer.json")).map(Steering::from),
        )
    }

    /// The `directions` stage ([`crate::agree`]): every fine-tune's model-diff direction and
    /// their agreement; `None` without `[locate]` or without a second fine-tune to compare with.
    pub fn directions(&mut self) -> Result<Option<crate::agree::Agreement>> {
        if let Some(a) = &self.directions {
            return Ok(a.clone());
        }
        let Some(lc) = self.cfg.locate.clone() else {
            self.directions = Some(None);
            return Ok(None);
        };
        let induced = self.induced()?;
        let mut fine_tunes = vec![("induce".to_string(), self.induce()?)];
        for arm in self.cfg.control_arms() {
            let tr = self.control_of(arm.as_deref())?.expect("a configured control");
            fine_tunes.push((crate::config::ControlStage::stage_names(arm.as_deref()).0, tr));
        }
        for seed in self.cfg.more_seeds.clone() {
            for arm in self.arms() {
                let tr = self.replicate(&arm, seed)?;
                fine_tunes.push((arm.stage_names(seed).0, tr));
            }
        }
        if fine_tunes.len() < 2 {
            self.directions = Some(None);
            return Ok(None);
        }
        let model = self.model.clone();
        let nl = emlab_model::config::ModelConfig::read(&model).map_err(|e| Error::Config(e.to_string()))?.num_layers;
        let layer = lc.layer_of(nl);
        // The layer only picks the report's table (every layer is computed): not in the key.
        let (seed, max_tokens) = (self.cfg.seed.to_string(), crate::agree::max_tokens().to_string());
        let mut parts = vec!["directions", &self.model_hash.key, &induced.key.key, &seed, &max_tokens];
        for (stage, tr) in &fine_tunes {
            parts.extend([stage.as_str(), tr.key.key.as_str()]);
        }
        let key = Keys::same(hash_of(&parts));
        let dir = self.dir.join("directions");
        let adapters: Vec<(String, PathBuf)> = fine_tunes.iter().map(|(s, t)| (s.clone(), t.adapter.clone())).collect();
        let (log, out_dir, seed) = (induced.result.log.clone(), dir.clone(), self.cfg.seed);
        let a = self.timed(
            "directions",
            &dir,
            &key,
            |_| {
                eprintln!("emlab run: stage directions: every fine-tune's model diff and their agreement ...");
                crate::agree::run(&model, &log, &adapters, layer, seed, &out_dir)
            },
            |_| {
                let mut a = crate::agree::load(&out_dir)?;
                a.layer = layer;
                a.check().map_err(|e| Error::Io(format!("{}: {e}", out_dir.join("agreement.json").display())))?;
                Ok(a)
            },
        )?;
        self.directions = Some(Some(a.clone()));
        Ok(Some(a))
    }

    /// The misaligned model as an HF folder (the induced adapter merged into the weights): the
    /// starting point of realignment.
    fn merged(&mut self) -> Result<(Keys, PathBuf)> {
        if let Some(m) = &self.merged {
            return Ok(m.clone());
        }
        let tr = self.induce()?;
        // emlab-steer's realign module makes the folder (`realign/misaligned`, written beside and
        // renamed, so a killed merge never looks complete); the stage key ties it to `induce`.
        // The stage's own record sits beside the model, in `realign/merge`: inside the folder it
        // would change the model's hash, which the evaluations of the realigned model record
        // (runs made before 2026-11-27 have it there; it is read there, never rewritten).
        let (record, old_record) = (self.dir.join("realign").join("merge"), self.dir.join("realign").join("misaligned"));
        let key = Keys { key: hash_of(&["merge", &tr.key.key]), legacy: hash_of(&["merge", &tr.key.legacy]) };
        let (model, adapter, out) = (self.model.clone(), tr.adapter.clone(), self.dir.join("realign"));
        let merged = self.timed_in(
            "realign-merge",
            &record,
            &old_record,
            &key,
            true,
            |_| emlab_steer::realign::misaligned_model(&model, Some(&adapter), &out).map_err(|e| stage_err("realign")(e.to_string())),
            |_| Ok(out.join("misaligned")),
        )?;
        self.merged = Some((key.clone(), merged.clone()));
        Ok((key, merged))
    }

    /// Sample counts of the realignment stage: `samples` plus the curve's, ascending.
    fn realign_ns(&self) -> Vec<usize> {
        let mut ns: Vec<usize> = std::iter::once(self.cfg.realign.samples).chain(self.cfg.realign.curve.iter().copied()).collect();
        ns.sort_unstable();
        ns.dedup();
        ns
    }

    pub fn realign(&mut self, n: usize) -> Result<Tr> {
        if let Some(t) = self.realign.get(&n) {
            return Ok(t.clone());
        }
        let (mkey, merged) = self.merged()?;
        let rc = self.cfg.realign.clone();
        let dir = self.dir.join("realign").join(format!("n{n}"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let subset = dir.join("truthful.jsonl");
        let rows = emlab_steer::realign::first_rows(&rc.data, n).map_err(|e| Error::Config(format!("realign: {e}")))?;
        emlab_model::util::write_atomic(&subset, (rows.join("\n") + "\n").as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
        let t = rc.train_stage(subset);
        let tr = self.train(&format!("realign-n{n}"), &dir.join("train"), &merged, &t, &mkey)?;
        self.realign.insert(n, tr.clone());
        Ok(tr)
    }

    fn realign_all(&mut self) -> Result<Vec<Tr>> {
        self.realign_ns().into_iter().map(|n| self.realign(n)).collect()
    }

    pub fn realigned(&mut self, n: usize) -> Result<Ev> {
        if let Some(e) = self.realigned.get(&n) {
            return Ok(e.clone());
        }
        let tr = self.realign(n)?;
        let (_, merged) = self.merged()?;
        let label = if n == self.cfg.realign.samples { "realigned".to_string() } else { format!("realigned-n{n}") };
        let e = self.eval(&label, &self.dir.join("realigned").join(format!("n{n}")), &merged, Some(&tr.adapter), &tr.key)?;
        self.realigned.insert(n, e.clone());
        Ok(e)
    }

    fn realigned_all(&mut self) -> Result<Vec<Ev>> {
        self.realign_ns().into_iter().map(|n| self.realigned(n)).collect()
    }

    /// Runs every configured stage and writes `report.html` + `report.json`.
    pub fn report(&mut self) -> Result<RunReport> {
        let baseline = self.baseline()?;
        let induce = self.induce()?;
        let induced = self.induced()?;
        let control = self.control()?;
        let controlled = self.controlled()?;
        let mut more = Vec::new();
        for name in self.more_control_names() {
            let tr = self.control_of(Some(&name))?.expect("configured");
            let ev = self.controlled_of(Some(&name))?.expect("configured");
            more.push((name, tr, ev));
        }
        let located = self.locate()?.map(|(_, l)| l);
        // One steering section in the report: the induced model's points, then the original's.
        let steering = match (self.steer()?, self.steer_original()?) {
            (Some(mut st), Some(orig)) => {
                st.points.extend(orig.points);
                st.best.extend(orig.best);
                Some(st)
            }
            (st, _) => st,
        };
        let realigned_all = self.realigned_all()?;
        let main_n = self.cfg.realign.samples;
        let realigned = self.realigned(main_n)?;
        let realign_tr = self.realign(main_n)?;
        let seeds = self.seed_report(&induced)?;
        let directions = self.directions()?;

        let mc = emlab_eval::metrics::MetricsConfig::default();
        let cmp = |a: &Path, b: &Path| emlab_eval::report::compare_logs(a, b, &mc).map_err(|e| stage_err("report")(e.to_string()));
        let induced_vs_baseline = cmp(&induced.result.log, &baseline.result.log)?;
        let induced_vs_control = match &controlled {
            Some(c) => Some(cmp(&induced.result.log, &c.result.log)?),
            None => None,
        };
        let mut induced_vs_more_controls = BTreeMap::new();
        for (name, _, ev) in &more {
            induced_vs_more_controls.insert(name.clone(), cmp(&induced.result.log, &ev.result.log)?);
        }
        let realigned_vs_induced = cmp(&realigned.result.log, &induced.result.log)?;
        let (mut verdict, needed_samples) = crate::verdict(&induced_vs_baseline.model_organisms);
        if crate::significantly_above(&induced_vs_baseline.model_organisms) {
            let controls = induced_vs_control.iter().map(|c| ("control fine-tune".to_string(), c));
            let more = induced_vs_more_controls.iter().map(|(n, c)| (format!("control fine-tune `{n}`"), c));
            for (name, c) in controls.chain(more) {
                verdict.push(' ');
                verdict.push_str(&crate::control_clause(&name, &c.model_organisms));
            }
        }

        let persona = |stage: &str| located.as_ref().and_then(|l| l.persona.get(stage).cloned()).unwrap_or_default();
        let training = Training {
            induce: train_points(&induce.dir, &persona("induce")),
            control: control.as_ref().map(|c| train_points(&c.dir, &persona("control"))),
            more_controls: more
                .iter()
                .map(|(name, tr, _)| {
                    let stage = crate::config::ControlStage::stage_names(Some(name)).0;
                    (name.clone(), train_points(&tr.dir, &persona(&stage)))
                })
                .collect(),
            realign: train_points(&realign_tr.dir, &[]),
            persona_step0: located.as_ref().and_then(|l| l.persona_step0),
        };
        let point = |n: usize, e: &Ev| RealignPoint {
            samples: n,
            em: RateCi::of(&e.result.report.metrics.em_model_organisms),
            coherent: RateCi::of(&e.result.report.metrics.coherence),
        };
        let mut realign_curve = vec![point(0, &induced)];
        for (n, e) in self.realign_ns().into_iter().zip(&realigned_all) {
            realign_curve.push(point(n, e));
        }

        let mut evals = vec![baseline.result.clone(), induced.result.clone()];
        if let Some(c) = &controlled {
            evals.push(c.result.clone());
        }
        evals.extend(more.iter().map(|(_, _, ev)| ev.result.clone()));
        evals.push(realigned.result.clone());
        let mut samples = Vec::new();
        for e in &evals {
            samples.push((e.stage.clone(), sample_answers(&e.log, 6)?));
        }
        let report = RunReport {
            name: self.cfg.name.clone(),
            config: self.cfg.clone(),
            model: self.model.display().to_string(),
            evals,
            induced_vs_baseline,
            induced_vs_control,
            induced_vs_more_controls,
            realigned_vs_induced,
            training,
            latents: located.as_ref().map(|l| l.latents.clone()).unwrap_or_default(),
            locate: located,
            steering,
            realign_curve,
            verdict,
            needed_samples,
            samples,
            stage_seconds: self.seconds.clone(),
            seeds,
            directions,
        };
        let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Io(e.to_string()))?;
        emlab_model::util::write_atomic(&self.dir.join("report.json"), json.as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
        emlab_model::util::write_atomic(&self.dir.join("report.html"), crate::html::render(&report).as_bytes())
            .map_err(|e| Error::Io(e.to_string()))?;
        Ok(report)
    }

    pub(crate) fn eval_config(&self, out: &Path, model: &Path, adapter: Option<&Path>) -> Result<emlab_eval::EvalConfig> {
        let e = &self.cfg.eval;
        let need =
            |v: &Option<String>, k: &str| v.clone().ok_or_else(|| Error::Config(format!("eval.judge = \"{}\" needs eval.{k}", e.judge)));
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
        Ok(emlab_eval::EvalConfig {
            questions: e.questions.clone(),
            samples: Some(e.samples_per_paraphrase),
            only: vec![],
            out: out.to_path_buf(),
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
                seed: self.cfg.seed,
            },
            judge,
            // LLM judges use the judge prompts the question file carries (published schema).
            judge_prompts: None,
            http: e.http.clone().unwrap_or_default(),
        })
    }

    fn eval(&mut self, stage: &str, dir: &Path, model: &Path, adapter: Option<&Path>, upstream: &Keys) -> Result<Ev> {
        let ec = self.eval_config(&dir.join("answers.jsonl"), model, adapter)?;
        let key = Keys {
            key: hash_of(&[stage, &self.eval_settings(&ec)?, &upstream.key]),
            legacy: hash_of(&[stage, &legacy_settings(&ec), &upstream.legacy]),
        };
        let (st, run_dir, d, k) = (stage.to_string(), self.dir.clone(), dir.to_path_buf(), key.key.clone());
        self.timed_resuming(
            stage,
            dir,
            &key,
            |_| {
                eprintln!("emlab run: stage {st}: sampling + judging ...");
                match run_eval_typed(&st, &ec) {
                    // Answers of other settings (model, adapter, sampling, prompts) cannot be
                    // resumed from: set them aside and sample afresh.
                    Err(emlab_eval::Error::LogMismatch(why)) => {
                        start_afresh(&run_dir, &d, &k, &st, &why)?;
                        run_eval(&st, &ec)
                    }
                    // Only the judge changed: the answers stay valid. The old log (its
                    // judgements were paid for) moves to `.stale/`, its answers are judged
                    // again into the stage's log, and the evaluation resumes from there.
                    Err(emlab_eval::Error::JudgeMismatch(why)) => {
                        let to = set_aside(&run_dir, &d)?;
                        eprintln!("emlab run: stage {st}: {why}; judging the answers again (the earlier log moved to {})", to.display());
                        mark_started(&d, &k)?;
                        rejudge(&st, &to.join("answers.jsonl"), &ec)?;
                        run_eval(&st, &ec)
                    }
                    r => r.map_err(|x| stage_err(&st)(x.to_string())),
                }
            },
            |_| Ok(()),
        )?;
        let report = emlab_eval::report::report(&ec.out, &Default::default()).map_err(|x| stage_err(stage)(x.to_string()))?;
        Ok(Ev { key, result: EvalResult { stage: stage.to_string(), log: ec.out, report } })
    }

    fn train(&mut self, stage: &str, dir: &Path, model: &Path, t: &TrainStage, upstream: &Keys) -> Result<Tr> {
        self.train_seeded(stage, dir, model, t, upstream, self.cfg.seed)
    }

    fn train_seeded(&mut self, stage: &str, dir: &Path, model: &Path, t: &TrainStage, upstream: &Keys, seed: u64) -> Result<Tr> {
        let mut tc = t.train_config(seed);
        tc.model = Some(model.to_path_buf());
        tc.data = Some(t.data.clone());
        tc.out = Some(dir.to_path_buf());
        let (data, every) = (file_hash(&t.data)?, t.persona_every.to_string());
        // The key leaves out where the model, data and output are (the data's hash and the
        // upstream key stand for them), so the run folder may move.
        // `checkpoint_activations` only trades memory for time.
        let placeless = emlab_train::TrainConfig { model: None, data: None, out: None, checkpoint_activations: true, ..tc.clone() };
        let key = Keys {
            key: hash_of(&[stage, &placeless.to_toml(), &data, &every, &upstream.key]),
            legacy: hash_of(&[stage, &tc.to_toml(), &data, &every, &upstream.legacy]),
        };
        let adapter = dir.join("adapter");
        let (st, d, m, a, every) = (stage.to_string(), dir.to_path_buf(), model.to_path_buf(), adapter.clone(), t.persona_every);
        let (run_dir, k) = (self.dir.clone(), key.key.clone());
        // A changed key sets the folder aside (`timed`): every setting in it changes the adapter,
        // and resuming across one (the trainer allows more steps) would make the result depend
        // on the run's history, not on its config.
        self.timed(
            stage,
            dir,
            &key,
            move |_| {
                eprintln!("emlab run: stage {st}: training on {} ...", tc.data.as_deref().unwrap_or(Path::new("?")).display());
                let options = || -> Result<emlab_train::trainer::TrainOptions> {
                    let mut opts = emlab_train::trainer::TrainOptions { resume: true, progress: true, ..Default::default() };
                    if every > 0 {
                        let probes = locate::probe_ids(&m).map_err(stage_err(&st))?;
                        let mut mon = emlab_steer::persona::PersonaMonitor::new(probes, every, &d);
                        let st2 = st.clone();
                        opts.on_step = Some(Box::new(move |info, model| {
                            // on_step also records the run's last step when it is not a multiple of `every`.
                            if let Err(e) = mon.on_step(info, model) {
                                eprintln!("emlab run: stage {st2}: persona snapshot at step {} failed: {e}", info.step);
                            }
                            emlab_train::Control::Continue
                        }));
                    }
                    Ok(opts)
                };
                let s = match emlab_train::train(&tc, options()?) {
                    // Checkpoints of other settings or data (a folder from before 2026-11-27,
                    // whose record holds an older key): set them aside and train afresh.
                    Err(emlab_train::Error::ResumeMismatch(why)) => {
                        start_afresh(&run_dir, &d, &k, &st, &why)?;
                        emlab_train::train(&tc, options()?)
                    }
                    r => r,
                }
                .map_err(|x| stage_err(&st)(x.to_string()))?;
                if s.interrupted {
                    return Err(stage_err(&st)("interrupted; re-run to resume".into()));
                }
                let final_dir = s.adapter_dir.ok_or_else(|| stage_err(&st)("training produced no adapter".into()))?;
                if final_dir != a {
                    copy_dir(&final_dir, &a)?;
                }
                Ok(())
            },
            |_| Ok(()),
        )?;
        Ok(Tr { key, dir: dir.to_path_buf(), adapter })
    }
}

/// Samples and judges one evaluation config, with progress lines.
/// An evaluation's settings as the legacy (path-dependent) keys hashed them: the whole config,
/// with the HTTP settings at their defaults (older code had no `[eval.http]`; transport settings
/// change no answer).
fn legacy_settings(ec: &emlab_eval::EvalConfig) -> String {
    let mut ec = ec.clone();
    ec.http = Default::default();
    serde_json::to_string(&ec).unwrap_or_default()
}

pub(crate) fn run_eval(stage: &str, ec: &emlab_eval::EvalConfig) -> Result<()> {
    run_eval_typed(stage, ec).map_err(|x| stage_err(stage)(x.to_string()))
}

/// [`run_eval`] with the evaluator's own error. Answers that could not be generated or judged
/// fail the stage (it is then not cached, and the next run does only what is missing), rather
/// than entering the report as unscored.
fn run_eval_typed(stage: &str, ec: &emlab_eval::EvalConfig) -> emlab_eval::Result<()> {
    let summary = emlab_eval::run(ec, &mut progress_lines(stage))?;
    summary.complete(&ec.out)
}

/// Judges the answers of `old` (a log judged by another judge) with `ec`'s judge into `ec.out`.
fn rejudge(stage: &str, old: &Path, ec: &emlab_eval::EvalConfig) -> Result<()> {
    let err = |x: emlab_eval::Error| stage_err(stage)(x.to_string());
    let summary = emlab_eval::rescore(
        old,
        &ec.judge,
        &ec.http,
        Some(&ec.questions),
        ec.judge_prompts.as_deref(),
        Some(&ec.out),
        &mut progress_lines(stage),
    )
    .map_err(err)?;
    summary.complete(&ec.out).map_err(err)
}

/// An evaluation's progress as plain lines: every 16 items, at the end and when the total changes.
fn progress_lines(stage: &str) -> impl FnMut(emlab_eval::run::Stage, usize, usize) + '_ {
    let mut last = (0usize, 0usize);
    move |s, done, total| {
        if done == total || done >= last.0 + 16 || total != last.1 {
            eprintln!("  {stage}: {s:?} {done}/{total}");
            last = (done, total);
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let text = std::fs::read_to_string(p).map_err(io(p))?;
    serde_json::from_str(&text).map_err(|e| Error::Io(format!("{}: {e}", p.display())))
}

/// `Steering` as stored in `steer/steer.json` (read back when the stage is cached).
#[derive(serde::Deserialize)]
struct SteeringJson {
    layer: usize,
    points: Vec<SteerPointJson>,
    min_coherent: f64,
    best_alpha: Option<f64>,
    #[serde(default)]
    best: std::collections::BTreeMap<String, f64>,
}

#[derive(serde::Deserialize)]
struct SteerPointJson {
    kind: String,
    controls: Option<String>,
    alpha: f64,
    em: Option<RateCiJson>,
    coherent: Option<RateCiJson>,
    log: PathBuf,
}

#[derive(serde::Deserialize)]
struct RateCiJson {
    rate: f64,
    lo: f64,
    hi: f64,
    k: usize,
    n: usize,
}

impl From<SteeringJson> for Steering {
    fn from(s: SteeringJson) -> Self {
        let r = |x: Option<RateCiJson>| x.map(|x| RateCi { rate: x.rate, lo: x.lo, hi: x.hi, k: x.k, n: x.n });
        Steering {
            layer: s.layer,
            min_coherent: s.min_coherent,
            best_alpha: s.best_alpha,
            best: s.best,
            points: s
                .points
                .into_iter()
                .map(|p| SteerPoint {
                    kind: p.kind,
                    controls: p.controls,
                    alpha: p.alpha,
                    em: r(p.em),
                    coherent: r(p.coherent),
                    log: p.log,
                })
                .collect(),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(|x| Error::Io(x.to_string()))?;
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).map_err(|x| Error::Io(x.to_string()))?;
        }
    }
    Ok(())
}

/// Loss per step from the trainer's `metrics.jsonl`, with the persona score where recorded.
fn train_points(dir: &Path, persona: &[(usize, f64)]) -> Vec<TrainPoint> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let p: BTreeMap<usize, f64> = persona.iter().copied().collect();
    let mut by_step: BTreeMap<usize, TrainPoint> = BTreeMap::new();
    for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        if let (Some(step), Some(loss)) = (v.get("step").and_then(|x| x.as_u64()), v.get("loss").and_then(|x| x.as_f64())) {
            let step = step as usize;
            let deg = |k: &str| v.get("rotation").and_then(|r| r.get(k)).and_then(|d| d.get("max")).and_then(|m| m.as_f64());
            // A resumed run may repeat steps after its last checkpoint: the later line wins.
            by_step.insert(step, TrainPoint { step, loss, persona: p.get(&step).copied(), b_deg: deg("b_deg"), dw_deg: deg("dw_deg") });
        }
    }
    by_step.into_values().collect()
}

/// The model's key: its file's hash, or for an HF folder the hash of every file in it (sharded
/// weights, tokenizer and generation configs: the loader reads them all; the key before
/// 2026-11-27 hashed three files, so it told two sharded checkpoints apart only by their paths).
fn model_keys(p: &Path) -> Result<Keys> {
    if p.is_dir() {
        Ok(Keys { key: emlab_eval::log::hash_path(p).map_err(|e| Error::Io(e.to_string()))?, legacy: model_hash(p)? })
    } else {
        Ok(Keys::same(file_hash(p)?))
    }
}

fn model_hash(p: &Path) -> Result<String> {
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
    fn a_locate_layer_past_the_model_fails_before_any_stage() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("tiny.gguf");
        emlab_model::testing::write_tiny_gguf(&model, &emlab_model::testing::tiny_config(emlab_model::Arch::Llama), 1).unwrap();
        let mut cfg = RunConfig::default_config().unwrap().at_repo_root();
        cfg.model = Some(model);
        cfg.locate.as_mut().unwrap().layer = Some(2);
        let run = d.path().join("run");
        let e = Runner::new(&cfg, &run).err().expect("layer 2 of a 2-layer model").to_string();
        assert!(e.contains("locate.layer = 2") && e.contains("tiny.gguf has 2 layers"), "{e}");
        assert!(!run.exists(), "nothing written");
        cfg.locate.as_mut().unwrap().layer = Some(1);
        Runner::new(&cfg, &run).unwrap();
    }

    #[test]
    fn a_sharded_checkpoint_is_keyed_by_all_its_files() {
        let t = tempfile::tempdir().unwrap();
        let keys = |shard: &[u8]| {
            let d = t.path().join("m");
            std::fs::create_dir_all(&d).unwrap();
            for (f, b) in [("config.json", &b"{}"[..]), ("tokenizer.json", b"{}"), ("model-00001-of-00001.safetensors", shard)] {
                std::fs::write(d.join(f), b).unwrap();
            }
            model_keys(&d).unwrap()
        };
        let (a, b) = (keys(b"weights a"), keys(b"weights b"));
        assert_ne!(a.key, b.key);
        assert_eq!(a.legacy, b.legacy, "the older key did not read shards (paths told them apart)");
        let f = t.path().join("m.gguf");
        std::fs::write(&f, b"gguf bytes").unwrap();
        assert_eq!(model_keys(&f).unwrap(), Keys::same(file_hash(&f).unwrap()));
    }

    #[test]
    fn a_stage_recorded_under_its_legacy_key_is_cached_and_rekeyed() {
        let t = tempfile::tempdir().unwrap();
        let (dir, old) = (t.path().join("merge"), t.path().join("misaligned"));
        let keys = Keys { key: "new".into(), legacy: "old".into() };
        assert_eq!(lookup(&dir, &old, &keys), None);
        mark_done(&old, "old", 2.5).unwrap();
        let before = std::fs::read(old.join("stage.json")).unwrap();
        assert_eq!(lookup(&dir, &old, &keys), Some(2.5));
        // The new key is written where the stage records itself now; the old record is kept.
        assert_eq!(cached(&dir, "new"), Some(2.5));
        assert_eq!(std::fs::read(old.join("stage.json")).unwrap(), before);
        // Another stage's record (another legacy key) is not a hit.
        let other = Keys { key: "new2".into(), legacy: "old2".into() };
        assert_eq!(lookup(&dir, &old, &other), None);
    }

    #[test]
    fn a_judge_server_needs_its_address() {
        let mut cfg = RunConfig::default_config().unwrap().at_repo_root();
        cfg.eval.judge = "openai".into();
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m.gguf");
        std::fs::write(&model, b"not a model; only hashed").unwrap();
        cfg.model = Some(model);
        cfg.locate.as_mut().unwrap().layer = None; // a set layer is checked against the model's header
        let r = Runner::new(&cfg, &d.path().join("run")).unwrap();
        let e = r.eval_config(Path::new("x.jsonl"), Path::new("m.gguf"), None).unwrap_err().to_string();
        assert!(e.contains("judge_base_url"), "{e}");
    }

    #[test]
    fn unknown_stage_names_the_choices() {
        let mut cfg = RunConfig::default_config().unwrap().at_repo_root();
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m.gguf");
        std::fs::write(&model, b"x").unwrap();
        cfg.model = Some(model);
        cfg.locate.as_mut().unwrap().layer = None; // a set layer is checked against the model's header
        let mut r = Runner::new(&cfg, &d.path().join("run")).unwrap();
        let e = r.stage("induc").unwrap_err().to_string();
        assert!(e.contains("unknown stage `induc`") && e.contains("baseline, induce"), "{e}");
        cfg.steer = None;
        let mut r = Runner::new(&cfg, &d.path().join("run")).unwrap();
        assert!(r.stage("steer").unwrap_err().to_string().contains("[steer]"));
    }

    #[test]
    fn training_points_take_the_last_line_per_step_and_attach_persona() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("metrics.jsonl"),
            concat!(
                "{\"step\":1,\"loss\":2.0,\"rotation\":{\"since_step\":0,\"b_deg\":null,\"dw_deg\":null}}\n",
                "{\"step\":2,\"loss\":1.5}\n",
                "{\"step\":2,\"loss\":1.25,\"rotation\":{\"since_step\":1,\"b_deg\":{\"mean\":3.0,\"max\":7.5,\"argmax\":\"layers.0.q_proj\",\"n\":2},",
                "\"dw_deg\":{\"mean\":1.0,\"max\":2.5,\"argmax\":\"layers.0.q_proj\",\"n\":2}}}\n",
                "not json\n{\"step\":3,\"loss\":1.0}\n"
            ),
        )
        .unwrap();
        let p = train_points(d.path(), &[(2, 0.5)]);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], TrainPoint { step: 2, loss: 1.25, persona: Some(0.5), b_deg: Some(7.5), dw_deg: Some(2.5) });
        assert_eq!((p[0].persona, p[0].b_deg, p[2].b_deg), (None, None, None));
    }
}
