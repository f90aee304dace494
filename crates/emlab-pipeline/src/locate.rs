//! The `locate` and `steer` stages: where in the residual stream the fine-tune changed the
//! model, and whether pushing along that direction changes behaviour.
//!
//! `locate` (all on `blocks.{layer}.hook_resid_post`):
//! 1. **Direction.** The published mean difference (misaligned minus aligned answers of the
//!    induced model, teacher-forced, pooled over answer tokens) when the judge found at least 5
//!    of each; otherwise the *model-diff* direction: the induced model's mean stream minus the
//!    original model's on the same texts (the induced model's answers). The method used is
//!    stated in `locate.json` and in the report: at small scale there are usually too few
//!    misaligned answers for the first.
//! 2. **Persona score** along that direction: of the original model (step 0) and of every probe
//!    snapshot the trainer recorded during `induce` / `control` (`persona-means.safetensors`).
//! 3. **SAE diff.** A TopK SAE trained on the original model's activations over both models'
//!    answers; latents ranked by the increase of their mean activation from the original to the
//!    induced model on the induced model's answers, with feature pages over the same answers
//!    (`locate/features/index.html`).
//!
//! `steer`: on the induced model, add `alpha * direction` at the layer for each alpha, ablate the
//! direction at every layer, and the unsteered reference, each evaluated by sampling + judging;
//! every edit has a same-norm random-vector control.
//!
//! `steer-original` (with `original_alphas`): the same on the original model (does the direction
//! alone induce EM?), and with `latents = N` the causal test of the SAE diff: each of the top N
//! latents' decoder rows, scaled to the direction's norm at the layer, added to the original
//! model at those alphas (folders `steer-original/{none, add, latent-N}`). A stage of its own, so
//! either sweep's settings can change without re-running the other's evaluations.

use crate::config::{LocateStage, SteerStage};
use crate::stages::{io, run_eval};
use crate::{stage_err, Error, RateCi, Result, SteerPoint, Steering};
use candle_core::{Device, Tensor};
use emlab_interp::direction::{self, DirectionConfig, DirectionInfo, DirectionSet};
use emlab_model::hooks::HookPoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `locate` found (written as `locate/locate.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocateResult {
    pub layer: usize,
    pub hook: String,
    /// How the direction was computed, in words.
    pub method: String,
    /// `locate/direction.safetensors` (emlab-interp format: `directions` `[num_layers, d]`).
    pub direction_file: PathBuf,
    pub n_aligned: usize,
    pub n_misaligned: usize,
    /// Norm of the direction at every layer.
    pub norms: Vec<f64>,
    /// Persona score of the original model.
    pub persona_step0: Option<f64>,
    /// Per training stage: (step, persona score) of the recorded snapshots.
    pub persona: BTreeMap<String, Vec<(usize, f64)>>,
    pub sae: SaeSummary,
    /// The top latents of the SAE diff, largest increase first.
    pub latents: Vec<LatentReport>,
    /// `locate/features/index.html`.
    pub feature_pages: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeSummary {
    pub latents: usize,
    pub k: usize,
    pub training_tokens: usize,
    pub epochs: usize,
    /// On the training tokens (1 = perfect reconstruction, about the mean).
    pub explained_variance: f64,
    pub l0: f64,
    pub dead_share: f64,
}

/// One latent of the SAE diff with its strongest contexts (model text: escape when shown).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatentReport {
    pub latent: usize,
    /// Increase of the mean activation, induced minus original.
    pub score: f64,
    pub base_mean: f64,
    pub tuned_mean: f64,
    pub contexts: Vec<LatentContext>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatentContext {
    /// `before` + `token` + `after`.
    pub text: String,
    /// The token the activation is read at: `text[at..at + token.len()]`.
    pub token: String,
    /// Byte offset of `token` in `text`.
    #[serde(default)]
    pub at: usize,
    pub activation: f64,
}

/// What `locate` reads.
pub(crate) struct Inputs {
    pub model: PathBuf,
    pub induce_adapter: PathBuf,
    pub baseline_log: PathBuf,
    pub induced_log: PathBuf,
    /// (stage, training folder) whose persona snapshots are scored.
    pub train_dirs: Vec<(String, PathBuf)>,
    pub seed: u64,
}

/// Tokenized probe prompts (emlab-steer's fixed, answer-free probes) for `model`'s tokenizer and
/// chat template, without loading its weights.
pub(crate) fn probe_ids(model: &Path) -> std::result::Result<Vec<Vec<u32>>, String> {
    emlab_steer::persona::probe_prompts_for(model, &emlab_steer::persona::default_probes()).map_err(|e| e.to_string())
}

pub(crate) fn load(dir: &Path) -> Result<LocateResult> {
    let p = dir.join("locate.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    serde_json::from_str(&text).map_err(|e| Error::Io(format!("{}: {e}", p.display())))
}

fn direction_tensor(set: &DirectionSet, layer: usize) -> Result<Tensor> {
    Tensor::from_slice(set.layer(layer), set.d, &Device::Cpu).map_err(|e| Error::Io(e.to_string()))
}

pub(crate) fn run(lc: &LocateStage, inp: &Inputs, dir: &Path) -> Result<LocateResult> {
    let err = stage_err("locate");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let base = emlab_interp::load_lm(&inp.model, None).map_err(|e| err(e.to_string()))?;
    let tuned = emlab_interp::load_lm(&inp.model, Some(&inp.induce_adapter)).map_err(|e| err(e.to_string()))?;
    let (nl, d) = (base.model.config.num_layers, base.model.config.hidden_size);
    let layer = lc.layer_of(nl);
    if layer >= nl {
        return Err(Error::Config(format!("locate.layer = {layer} but the model has {nl} layers")));
    }
    let hook = HookPoint::resid_post(layer);

    // 1. Direction.
    let induced_rows = direction::load_judged(&inp.induced_log).map_err(|e| err(e.to_string()))?;
    let baseline_rows = direction::load_judged(&inp.baseline_log).map_err(|e| err(e.to_string()))?;
    let dcfg = DirectionConfig { seed: inp.seed, ..Default::default() };
    // Both models read the induced model's own answers once (teacher-forced, up to 512 tokens):
    // the diff and the feature pages below use these readings at the hook, and the model-diff
    // direction their per-layer sums, instead of three passes per model over the same texts.
    let induced_convs: Vec<_> = induced_rows.iter().map(|r| r.conv.clone()).collect();
    let selection = direction::select(&induced_rows, &dcfg);
    let all_layers = selection.is_err();
    let t0 = std::time::Instant::now();
    let say = |what: &str| eprintln!("  locate: {what} ({:.0} s)", t0.elapsed().as_secs_f64());
    say(&format!("reading the induced model's {} answers with both models", induced_convs.len()));
    let tuned_read = emlab_interp::diff::read(&tuned, &induced_convs, hook, dcfg.max_tokens, all_layers).map_err(|e| err(e.to_string()))?;
    let base_read = emlab_interp::diff::read(&base, &induced_convs, hook, dcfg.max_tokens, all_layers).map_err(|e| err(e.to_string()))?;
    let set = match selection {
        Ok(sel) => direction::compute_from_selection(&tuned, &sel, &dcfg).map_err(|e| err(e.to_string()))?,
        Err(why) => {
            let (mt, nt) = tuned_read.layer_means().map_err(|e| err(e.to_string()))?;
            let (mb, nb) = base_read.layer_means().map_err(|e| err(e.to_string()))?;
            let info = DirectionInfo {
                method: format!(
                    "model diff: mean resid_post of the induced model minus the original model over the same texts (the induced model's {} answers), because the published aligned-vs-misaligned split was not possible ({why})",
                    induced_convs.len()
                ),
                model: inp.model.display().to_string(),
                tokens_misaligned: nt,
                tokens_aligned: nb,
                ..Default::default()
            };
            DirectionSet::from_means(&mt, &mb, nl, d, inp.seed, info).map_err(|e| err(e.to_string()))?
        }
    };
    let dfile = dir.join("direction.safetensors");
    set.save(&dfile).map_err(|e| err(e.to_string()))?;
    let v = direction_tensor(&set, layer)?;

    // 2. Persona scores.
    say("persona scores");
    let probes = probe_ids(&inp.model).map_err(&err)?;
    let persona_step0 =
        emlab_steer::persona::persona_score(&base.model, &probes, &v, layer, Default::default()).map_err(|e| err(e.to_string()))?.mean;
    let mut persona = BTreeMap::new();
    for (stage, tdir) in &inp.train_dirs {
        let p = tdir.join("persona-means.safetensors");
        if p.is_file() {
            let s = emlab_steer::persona::scores_from_means(&p, &v, layer).map_err(|e| err(e.to_string()))?;
            persona.insert(stage.clone(), s);
        }
    }

    // 3. SAE on the original model's activations over both models' answers, then the diff.
    let corpus: Vec<_> = baseline_rows.iter().chain(&induced_rows).map(|r| r.conv.clone()).collect();
    let acts = dir.join("acts");
    if acts.exists() {
        // A half-written store from an interrupted run: start it again.
        std::fs::remove_dir_all(&acts).map_err(io(&acts))?;
    }
    let ccfg = emlab_interp::acts::CaptureConfig { shard_rows: 1 << 20, max_tokens: 512 };
    say(&format!("capturing {hook} of the original model over {} answers", corpus.len()));
    emlab_interp::acts::capture(&base, &corpus, &[hook], &acts, &ccfg).map_err(|e| err(e.to_string()))?;
    let store = emlab_interp::acts::ActsReader::open(&acts).map_err(|e| err(e.to_string()))?;
    let (x, _) = store.read_all(&hook.to_string()).map_err(|e| err(e.to_string()))?;
    let rows = x.len() / d;
    let scfg = emlab_interp::splice::SaeTrainConfig {
        k: lc.sae_k,
        latents: lc.sae_latents,
        arch: "topk".into(),
        lr: 1e-3,
        batch: 256.min(rows.max(1)),
        epochs: lc.sae_epochs,
        seed: inp.seed,
    };
    say(&format!("training the SAE ({} latents, k {}) on {rows} activations, {} epochs", lc.sae_latents, lc.sae_k, lc.sae_epochs));
    let steps = lc.sae_epochs * rows.div_ceil(scfg.batch);
    let mut last = std::time::Instant::now();
    let mut on_step = |st: &emlab_sae::train::StepStats| {
        if last.elapsed().as_secs() >= 30 {
            say(&format!("SAE step {}/{steps}, explained variance {:.3}, l0 {:.1}", st.step, st.explained_variance, st.l0));
            last = std::time::Instant::now();
        }
    };
    let sae = emlab_interp::splice::train_from_store(&store, &hook.to_string(), &scfg, &mut on_step).map_err(|e| err(e.to_string()))?;
    emlab_sae::save_sae(dir.join("sae"), &sae, None).map_err(|e| err(e.to_string()))?;
    let ev = emlab_sae::metrics::evaluate(&sae, &x, 1024).map_err(|e| err(e.to_string()))?;
    drop(x);
    std::fs::remove_dir_all(&acts).map_err(io(&acts))?; // the SAE is what is kept; the store is cheap to rebuild
                                                        // The diff and the feature pages read the induced model's own answers (the readings above).
    say("latent diff and feature pages");
    let rep = emlab_interp::diff::diff_readings(&base_read, &tuned_read, &sae).map_err(|e| err(e.to_string()))?;
    let pcfg = emlab_interp::diff::PageConfig { top: lc.top_latents, max_tokens: dcfg.max_tokens, ..Default::default() };
    let pages = emlab_interp::diff::write_feature_pages_of(&tuned, &sae, &tuned_read, &rep, &dir.join("features"), &pcfg)
        .map_err(|e| err(e.to_string()))?;
    let latents = pages
        .iter()
        .map(|p| LatentReport {
            latent: p.latent,
            score: p.diff.increase,
            base_mean: p.diff.base_mean,
            tuned_mean: p.diff.tuned_mean,
            contexts: p
                .contexts
                .iter()
                .map(|c| LatentContext {
                    text: format!("{}{}{}", c.before, c.token, c.after),
                    token: c.token.clone(),
                    at: c.before.len(),
                    activation: c.activation as f64,
                })
                .collect(),
        })
        .collect();

    let res = LocateResult {
        layer,
        hook: hook.to_string(),
        method: set.info.method.clone(),
        direction_file: PathBuf::from("locate/direction.safetensors"),
        n_aligned: set.info.n_aligned,
        n_misaligned: set.info.n_misaligned,
        norms: set.info.norms.clone(),
        persona_step0: Some(persona_step0),
        persona,
        sae: SaeSummary {
            latents: lc.sae_latents,
            k: lc.sae_k,
            training_tokens: rows,
            epochs: lc.sae_epochs,
            explained_variance: ev.explained_variance,
            l0: ev.l0,
            dead_share: ev.dead_share,
        },
        latents,
        feature_pages: PathBuf::from("locate/features/index.html"),
    };
    let json = serde_json::to_string_pretty(&res).map_err(|e| Error::Io(e.to_string()))?;
    emlab_model::util::write_atomic(&dir.join("locate.json"), json.as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
    Ok(res)
}

fn rate_of(r: &emlab_steer::sweep::Rate) -> Option<RateCi> {
    r.rate.is_finite().then(|| RateCi { rate: r.rate, lo: r.lo, hi: r.hi, k: (r.rate * r.n as f64).round() as usize, n: r.n })
}

/// The `steer` stage: see the module docs. `ec` is the evaluation of the induced model (its
/// `out` is replaced per point); point folders are under `dir`, logs recorded relative to
/// `run_dir`.
pub(crate) fn steer_sweep(
    sc: &SteerStage,
    loc: &LocateResult,
    ec: &emlab_eval::EvalConfig,
    dir: &Path,
    run_dir: &Path,
) -> Result<Steering> {
    use emlab_steer::spec::Resolved;
    let sw = Sweeper::new("steer", loc, run_dir)?;
    let mut points = vec![sw.reference("none", ec, &dir.join("none"))?];
    // The seed the induced model's sweeps always had: a run re-made with new settings draws the
    // same control vectors as before.
    let seed = sw.control_seed();
    let sweeps = vec![
        Sweep { kind: "add".into(), dir: dir.join("add"), edits: sw.add_at_layer(&sw.v), alphas: sc.alphas.clone(), seed },
        Sweep {
            kind: "ablate".into(),
            dir: dir.join("ablate"),
            edits: vec![Resolved::AblateEverywhere { dir: sw.v.clone() }],
            alphas: vec![1.0],
            seed,
        },
    ];
    let (more, mut best) = sw.run(sweeps, ec, sc.min_coherent)?;
    points.extend(more);
    let best_alpha = best.remove("add");
    best.remove("ablate");
    Ok(Steering { layer: loc.layer, points, min_coherent: sc.min_coherent, best_alpha, best })
}

/// The `steer-original` stage: on the original model (`ec`, no adapter), the unsteered
/// reference, `+ alpha * v` for each of `original_alphas`, and the top `latents` SAE-diff
/// latents' decoder rows scaled to `|v|` at the same alphas, each with its own random control.
/// Its `best_alpha` is `None`; `best` holds every kind's.
pub(crate) fn steer_original_sweep(
    sc: &SteerStage,
    loc: &LocateResult,
    ec: &emlab_eval::EvalConfig,
    dir: &Path,
    run_dir: &Path,
) -> Result<Steering> {
    let err = stage_err("steer-original");
    let sw = Sweeper::new("steer-original", loc, run_dir)?;
    let mut points = vec![sw.reference("none-original", ec, &dir.join("none"))?];
    let seed = sw.control_seed();
    let mut sweeps = vec![Sweep {
        kind: "add-original".into(),
        dir: dir.join("add"),
        edits: sw.add_at_layer(&sw.v),
        alphas: sc.original_alphas.clone(),
        seed,
    }];
    let norm = |t: &Tensor| -> Result<f64> {
        let n = t.sqr().and_then(|x| x.sum_all()).and_then(|x| x.to_scalar::<f32>()).map_err(|e| err(e.to_string()))?;
        Ok((n as f64).sqrt())
    };
    let v_norm = norm(&sw.v)?;
    let sae = run_dir.join("locate/sae");
    for lat in loc.latents.iter().take(sc.latents) {
        let row = emlab_steer::vectors::VectorSource::SaeDecoder { path: sae.clone(), latent: lat.latent }
            .load(Some(loc.layer), sw.d, &Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
        let r_norm = norm(&row)?;
        if r_norm == 0.0 {
            return Err(err(format!("{}: W_dec[{}] is zero; it has no direction to steer along", sae.display(), lat.latent)));
        }
        // Scaled to the direction's norm, so an alpha pushes as far as it does for the
        // direction; each latent's control is a random vector of its own.
        let u = (row * (v_norm / r_norm)).map_err(|e| err(e.to_string()))?;
        let kind = format!("latent-{}", lat.latent);
        sweeps.push(Sweep {
            dir: dir.join(&kind),
            kind,
            edits: sw.add_at_layer(&u),
            alphas: sc.original_alphas.clone(),
            seed: seed + 1 + lat.latent as u64,
        });
    }
    let (more, best) = sw.run(sweeps, ec, sc.min_coherent)?;
    points.extend(more);
    Ok(Steering { layer: loc.layer, points, min_coherent: sc.min_coherent, best_alpha: None, best })
}

/// One eval-backed sweep: its kind (`add`, `latent-N`, ...), folder, edits, alphas and the seed
/// of its random control.
struct Sweep {
    kind: String,
    dir: PathBuf,
    edits: Vec<emlab_steer::spec::Resolved>,
    alphas: Vec<f64>,
    seed: u64,
}

/// What both steering stages share: the located direction `v` (`[d]`) at the layer and how a
/// sweep's evaluations become report points.
struct Sweeper<'a> {
    stage: &'static str,
    loc: &'a LocateResult,
    run_dir: &'a Path,
    v: Tensor,
    d: usize,
    num_layers: usize,
}

impl<'a> Sweeper<'a> {
    fn new(stage: &'static str, loc: &'a LocateResult, run_dir: &'a Path) -> Result<Self> {
        let set = DirectionSet::load(&run_dir.join(&loc.direction_file)).map_err(|e| stage_err(stage)(e.to_string()))?;
        let v = direction_tensor(&set, loc.layer)?;
        Ok(Sweeper { stage, loc, run_dir, v, d: set.d, num_layers: set.num_layers })
    }

    fn control_seed(&self) -> u64 {
        self.loc.layer as u64 + 17
    }

    fn rel(&self, p: &Path) -> PathBuf {
        p.strip_prefix(self.run_dir).unwrap_or(p).to_path_buf()
    }

    fn add_at_layer(&self, vector: &Tensor) -> Vec<emlab_steer::spec::Resolved> {
        vec![emlab_steer::spec::Resolved::Add {
            point: HookPoint::resid_post(self.loc.layer),
            vector: vector.clone(),
            coef: 1.0,
            ablate_first: false,
        }]
    }

    /// The unsteered reference of a model at the sweep's own sample size.
    fn reference(&self, kind: &str, ec: &emlab_eval::EvalConfig, at: &Path) -> Result<SteerPoint> {
        let mut ec0 = ec.clone();
        ec0.out = at.join("answers.jsonl");
        std::fs::create_dir_all(at).map_err(io(at))?;
        run_eval(&self.rel(at).display().to_string(), &ec0)?;
        let r0 = emlab_eval::report::report(&ec0.out, &Default::default()).map_err(|e| stage_err(self.stage)(e.to_string()))?;
        Ok(SteerPoint {
            kind: kind.into(),
            controls: None,
            alpha: 0.0,
            em: RateCi::of(&r0.metrics.em_model_organisms),
            coherent: RateCi::of(&r0.metrics.coherence),
            log: self.rel(&ec0.out),
        })
    }

    /// Every sweep on the model `ec` evaluates: each point and its random control, in order;
    /// and per kind the strongest alpha keeping coherence at or above `min_coherent`.
    fn run(&self, sweeps: Vec<Sweep>, ec: &emlab_eval::EvalConfig, min_coherent: f64) -> Result<(Vec<SteerPoint>, BTreeMap<String, f64>)> {
        use emlab_steer::evaluate::{sweep_with_eval, SweepEval};
        use emlab_steer::sweep::SweepOptions;
        let mut progress = |s: &str| eprintln!("  {}: {s}", self.stage);
        let (mut points, mut best) = (Vec::new(), BTreeMap::new());
        for sw in sweeps {
            if sw.alphas.is_empty() {
                continue;
            }
            let opts = SweepOptions { alphas: sw.alphas, min_coherent, seed: sw.seed };
            let sev = SweepEval { base: ec.clone(), dir: sw.dir.clone() };
            let res = sweep_with_eval(&sw.edits, self.num_layers, &opts, &sev, &mut progress)
                .map_err(|e| stage_err(self.stage)(e.to_string()))?;
            if let Some(b) = res.best_alpha {
                best.insert(sw.kind.clone(), b);
            }
            for row in &res.rows {
                let log = |d: &Option<String>| self.rel(&sw.dir.join(d.as_deref().unwrap_or("")).join("answers.jsonl"));
                points.push(SteerPoint {
                    kind: sw.kind.clone(),
                    controls: None,
                    alpha: row.alpha,
                    em: rate_of(&row.steered.em),
                    coherent: rate_of(&row.steered.coherent),
                    log: log(&row.steered_dir),
                });
                points.push(SteerPoint {
                    kind: "random".into(),
                    controls: Some(sw.kind.clone()),
                    alpha: row.alpha,
                    em: rate_of(&row.control.em),
                    coherent: rate_of(&row.control.coherent),
                    log: log(&row.control_dir),
                });
            }
        }
        Ok((points, best))
    }
}
