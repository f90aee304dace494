//! `emlab run [CONFIG]`: the main job (see emlab-pipeline): baseline evaluation, induce and
//! control fine-tunes, their evaluations, locate (direction, persona score, SAE diff), steering
//! sweeps (induced and original model), realignment with 100 truthful samples, final
//! evaluation, the fine-tunes' model-diff directions compared, and an HTML report. Cached
//! per stage: re-running resumes; `--stage NAME` runs one stage (and what it needs).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Experiment config (TOML). Default: the embedded configs/default.toml.
    config: Option<PathBuf>,
    /// Use an embedded preset instead: `default` or `paper` (the published recipe, for a GPU).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// Run directory (default: runs/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the config's model (GGUF file or HF folder).
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Print report.json's numbers instead of the summary.
    #[arg(long)]
    json: bool,
    /// Run only this stage (and the stages it needs, unless cached): baseline, induce, induced,
    /// control, controlled, (control-NAME, controlled-NAME for `[control].more`), locate, steer,
    /// steer-original, realign, realigned, (induce-sN, induced-sN, ... for `more_seeds`),
    /// directions, report.
    #[arg(long)]
    stage: Option<String>,
    /// List the stage names in run order.
    #[arg(long)]
    list_stages: bool,
}

pub fn run(a: RunArgs) -> Result<()> {
    let mut cfg = match (&a.config, a.preset.as_deref()) {
        (Some(p), _) => emlab_pipeline::RunConfig::load(p)?,
        (None, None | Some("default")) => emlab_pipeline::RunConfig::default_config()?,
        (None, Some("paper")) => emlab_pipeline::RunConfig::paper()?,
        (None, Some(other)) => anyhow::bail!("unknown preset `{other}` (default, paper)"),
    };
    if let Some(m) = a.model {
        cfg.model = Some(m);
    }
    let dir = a.out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    if a.list_stages {
        for s in cfg.stage_names() {
            println!("{s}");
        }
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    if let Some(st) = &a.stage {
        if st != "report" {
            emlab_pipeline::run_stage(&cfg, &dir, st)?;
            println!("stage {st}: done in {:.1} min ({})", t0.elapsed().as_secs_f64() / 60.0, dir.display());
            return Ok(());
        }
    }
    let report = emlab_pipeline::run(&cfg, &dir)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for e in &report.evals {
        let m = &e.report.metrics;
        let f = |x: Option<f64>| x.map(|v| format!("{:5.1}%", 100.0 * v)).unwrap_or_else(|| "  n/a ".into());
        let c = |x: Option<(f64, f64)>| x.map(|(l, h)| format!("[{:.1}, {:.1}]", 100.0 * l, 100.0 * h)).unwrap_or_default();
        println!(
            "{:<11} n={:<4} coherent {} {:<14} EM(model-organisms) {} {:<14} EM(Betley) {} {}",
            e.stage,
            m.n_answers,
            f(m.coherence.rate),
            c(m.coherence.wilson_ci),
            f(m.em_model_organisms.rate),
            c(m.em_model_organisms.wilson_ci),
            f(m.em_betley.rate),
            c(m.em_betley.wilson_ci)
        );
    }
    println!("(95% Wilson intervals; report.json also has bootstrap intervals)\n\n{}", report.verdict);
    if let Some(sr) = &report.seeds {
        println!("\nAcross {} fine-tuning seeds (mean of the per-seed EM rates, 95% t interval):", sr.seeds.len());
        for a in &sr.arms {
            if let Some(m) = a.em {
                let ci = m.ci.map(|(l, h)| format!(" [{:.1}, {:.1}]", 100.0 * l, 100.0 * h)).unwrap_or_default();
                let per: Vec<String> =
                    a.per_seed.iter().map(|p| p.em.map(|r| format!("{:.1}%", 100.0 * r.rate)).unwrap_or_else(|| "n/a".into())).collect();
                println!("  {:<22} EM {:5.1}%{ci}  (per seed: {})", a.stage, 100.0 * m.mean, per.join(", "));
            }
        }
        for c in &sr.comparisons {
            match &c.welch {
                Some(w) => println!(
                    "  {} - {}: {:+.1} points [{:.1}, {:.1}], Welch p = {:.3}",
                    c.a,
                    c.b,
                    100.0 * w.difference,
                    100.0 * w.ci.0,
                    100.0 * w.ci.1,
                    w.p_value
                ),
                None => println!(
                    "  {} - {}: {} (no spread between seeds to test against)",
                    c.a,
                    c.b,
                    c.difference.map(|d| format!("{:+.1} points", 100.0 * d)).unwrap_or_else(|| "n/a".into())
                ),
            }
        }
    }
    if let Some(st) = &report.steering {
        let on_original: Vec<_> = st.points.iter().filter(|p| p.on_original() && p.kind != "random" && p.kind != "none-original").collect();
        if !on_original.is_empty() {
            println!("\nSteering the original model (EM with the edit vs its same-norm random control):");
        }
        let rate = |r: Option<emlab_pipeline::RateCi>| {
            r.map(|r| format!("{:5.1}% ({}/{})", 100.0 * r.rate, r.k, r.n)).unwrap_or_else(|| "n/a".into())
        };
        for p in on_original {
            let c = st.control_of(p);
            println!(
                "  {:<14} alpha {:<5} EM {} vs {}, Fisher p = {}",
                p.kind,
                p.alpha,
                rate(p.em),
                rate(c.and_then(|c| c.em)),
                st.p_vs_control(p).map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into())
            );
        }
    }
    if let Some(a) = &report.directions {
        let cos: Vec<String> = a.stages[1..]
            .iter()
            .filter_map(|s| a.cosine("induce", s).and_then(|c| c.get(a.layer)).map(|c| format!("{s} {c:.3}")))
            .collect();
        println!("\nModel-diff directions at layer {}, cosine with induce's: {}", a.layer, cos.join(", "));
        let located_is_model_diff = report.locate.as_ref().is_some_and(|l| l.method.starts_with("model diff"));
        if let Some(text) = a.reading(located_is_model_diff) {
            println!("  {text}");
        }
    }
    println!("\nreport: {}  ({:.1} min)", dir.join("report.html").display(), t0.elapsed().as_secs_f64() / 60.0);
    Ok(())
}
