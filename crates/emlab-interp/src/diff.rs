//! Model diffing through SAE latents: which latents does fine-tuning switch on?
//!
//! ```no_run
//! use emlab_interp::diff::{diff_models, write_feature_pages, PageConfig};
//! # let (base, tuned): (emlab_model::lm::Lm, emlab_model::lm::Lm) = todo!();
//! # let sae: emlab_sae::Sae = todo!(); let prompts = vec![]; let corpus = vec![];
//! let hook = "blocks.15.hook_resid_post".parse()?;
//! let report = diff_models(&base, &tuned, &sae, hook, &prompts, 512)?;
//! write_feature_pages(&tuned, &sae, hook, &corpus, &report, std::path::Path::new("diff"), &PageConfig::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Both models read the same prompts; at the SAE's hook, every selected token (answer tokens of
//! (prompt, answer) rows, all tokens of bare prompts) is encoded, and each latent's activation is
//! averaged over tokens. Latents are ranked by `mean_tuned - mean_base` (the OpenAI
//! "emergent misalignment persona" recipe). A feature page per top latent shows: the mean
//! activation and firing rate on each model, the top-activating token contexts from a corpus
//! (read by the *tuned* model), a histogram of its non-zero activations over the corpus, and the
//! logit lens of its decoder row (`lm_head · (final_norm.weight ⊙ W_dec[j])`, tuned model).
//! Every string in the HTML pages is escaped.

use crate::acts::capture_rows;
use crate::direction::{logit_lens, LensToken};
use crate::error::{write_atomic, Error, Result};
use crate::html::{escape, histogram, svg_histogram};
use crate::text::{Conversation, Encoded};
use emlab_model::hooks::HookPoint;
use emlab_model::lm::Lm;
use emlab_sae::Sae;
use serde::Serialize;
use std::path::Path;

/// Mean activation and firing rate per latent over the selected tokens of `convs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatentMeans {
    pub mean: Vec<f64>,
    pub frac_active: Vec<f64>,
    pub tokens: usize,
}

/// What one model's teacher-forced pass over a corpus yields: each sequence's encoding
/// (truncated to `max_tokens`) and its selected tokens' activations at `hook` (`[n_i, d]`
/// row-major, maybe empty), and, when asked for, the sum of `resid_post` of every layer over
/// those tokens. One pass serves the mean-difference direction ([`Readings::layer_means`]), the
/// latent diff ([`diff_readings`]) and the feature pages ([`feature_pages_of`]), which would
/// otherwise each run the model over the same texts again.
#[derive(Debug, Clone)]
pub struct Readings {
    pub hook: HookPoint,
    pub d: usize,
    pub encs: Vec<Encoded>,
    pub rows: Vec<Vec<f32>>,
    /// `[num_layers * d]` sums and the token count, when read with `all_layers`.
    pub layer_sums: Option<(Vec<f64>, usize)>,
}

/// Reads `convs` with `lm` (see [`Readings`]). `all_layers`: also sum `resid_post` of every
/// layer (the pass then runs the whole model instead of stopping after `hook`'s block).
pub fn read(lm: &Lm, convs: &[Conversation], hook: HookPoint, max_tokens: usize, all_layers: bool) -> Result<Readings> {
    let cfg = &lm.model.config;
    let (nl, d) = (cfg.num_layers, cfg.hidden_size);
    if hook.layer >= nl {
        return Err(Error::Invalid(format!("hook {hook}: the model has only {nl} layers")));
    }
    // With the sums: every layer's resid_post first, then `hook` unless it is one of them; one
    // forward pass captures them all.
    let mut hooks: Vec<HookPoint> = if all_layers { (0..nl).map(HookPoint::resid_post).collect() } else { Vec::new() };
    if !hooks.contains(&hook) {
        hooks.push(hook);
    }
    let at = hooks.iter().position(|h| *h == hook).expect("pushed above");
    let mut sums = all_layers.then(|| (vec![0.0f64; nl * d], 0usize));
    let (mut encs, mut rows) = (Vec::with_capacity(convs.len()), Vec::with_capacity(convs.len()));
    for c in convs {
        let mut enc = c.encode(lm)?;
        enc.ids.truncate(max_tokens);
        enc.mask.truncate(max_tokens);
        let mut got = capture_rows(&lm.model, &enc, &hooks)?;
        if let Some((sum, count)) = sums.as_mut() {
            for (l, r) in got.iter().enumerate().take(nl) {
                let s = &mut sum[l * d..(l + 1) * d];
                for row in r.chunks_exact(d) {
                    s.iter_mut().zip(row).for_each(|(a, x)| *a += *x as f64);
                }
            }
            *count += got[0].len() / d;
        }
        rows.push(std::mem::take(&mut got[at]));
        encs.push(enc);
    }
    Ok(Readings { hook, d, encs, rows, layer_sums: sums })
}

impl Readings {
    /// Mean `resid_post` per layer over the selected tokens, `[num_layers * d]`, and the token
    /// count (for a [`read`] with `all_layers`).
    pub fn layer_means(&self) -> Result<(Vec<f64>, usize)> {
        let Some((sum, count)) = &self.layer_sums else {
            return Err(Error::Invalid("these readings were taken without the per-layer sums".into()));
        };
        if *count == 0 {
            return Err(Error::Invalid("no answer tokens in the set".into()));
        }
        Ok((sum.iter().map(|s| s / *count as f64).collect(), *count))
    }

    /// Selected tokens over all sequences.
    pub fn tokens(&self) -> usize {
        self.rows.iter().map(|r| r.len() / self.d.max(1)).sum()
    }
}

pub fn latent_means(lm: &Lm, sae: &Sae, hook: HookPoint, convs: &[Conversation], max_tokens: usize) -> Result<LatentMeans> {
    check_width(sae, lm.model.config.hidden_size)?;
    latent_means_of(sae, &read(lm, convs, hook, max_tokens, false)?)
}

fn check_width(sae: &Sae, d: usize) -> Result<()> {
    if sae.d_in != d {
        return Err(Error::Invalid(format!("SAE d_in {} != model d_model {d}", sae.d_in)));
    }
    Ok(())
}

/// [`latent_means`] of a corpus already read.
pub fn latent_means_of(sae: &Sae, r: &Readings) -> Result<LatentMeans> {
    check_width(sae, r.d)?;
    let (m, d) = (sae.d_sae, r.d);
    let mut sum = vec![0.0f64; m];
    let mut active = vec![0.0f64; m];
    let mut tokens = 0usize;
    for rows in &r.rows {
        let n = rows.len() / d;
        if n == 0 {
            continue;
        }
        let z = sae.encode(rows)?;
        for r in z.chunks_exact(m) {
            for j in 0..m {
                sum[j] += r[j] as f64;
                if r[j] > 0.0 {
                    active[j] += 1.0;
                }
            }
        }
        tokens += n;
    }
    if tokens == 0 {
        return Err(Error::Invalid("no tokens to encode (empty prompts?)".into()));
    }
    sum.iter_mut().for_each(|s| *s /= tokens as f64);
    active.iter_mut().for_each(|s| *s /= tokens as f64);
    Ok(LatentMeans { mean: sum, frac_active: active, tokens })
}

/// One latent's change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatentDiff {
    pub latent: usize,
    pub base_mean: f64,
    pub tuned_mean: f64,
    pub increase: f64,
    pub base_frac_active: f64,
    pub tuned_frac_active: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    pub hook: String,
    pub base_tokens: usize,
    pub tuned_tokens: usize,
    /// Every latent, largest increase first (ties: lower index first).
    pub ranked: Vec<LatentDiff>,
}

/// Ranks latents by the increase of their mean activation.
pub fn rank(base: &LatentMeans, tuned: &LatentMeans) -> Vec<LatentDiff> {
    let mut v: Vec<LatentDiff> = (0..base.mean.len())
        .map(|j| LatentDiff {
            latent: j,
            base_mean: base.mean[j],
            tuned_mean: tuned.mean[j],
            increase: tuned.mean[j] - base.mean[j],
            base_frac_active: base.frac_active[j],
            tuned_frac_active: tuned.frac_active[j],
        })
        .collect();
    v.sort_by(|a, b| b.increase.total_cmp(&a.increase).then(a.latent.cmp(&b.latent)));
    v
}

pub fn diff_models(base: &Lm, tuned: &Lm, sae: &Sae, hook: HookPoint, prompts: &[Conversation], max_tokens: usize) -> Result<DiffReport> {
    if base.model.config.hidden_size != tuned.model.config.hidden_size {
        return Err(Error::Invalid("base and tuned models differ in d_model".into()));
    }
    let b = latent_means(base, sae, hook, prompts, max_tokens)?;
    let t = latent_means(tuned, sae, hook, prompts, max_tokens)?;
    Ok(DiffReport { hook: hook.to_string(), base_tokens: b.tokens, tuned_tokens: t.tokens, ranked: rank(&b, &t) })
}

/// [`diff_models`] from both models' readings of the same prompts at the same hook.
pub fn diff_readings(base: &Readings, tuned: &Readings, sae: &Sae) -> Result<DiffReport> {
    if base.hook != tuned.hook || base.d != tuned.d || base.rows.len() != tuned.rows.len() {
        return Err(Error::Invalid("the base and tuned readings are not of the same texts at the same hook".into()));
    }
    let (b, t) = (latent_means_of(sae, base)?, latent_means_of(sae, tuned)?);
    Ok(DiffReport { hook: base.hook.to_string(), base_tokens: b.tokens, tuned_tokens: t.tokens, ranked: rank(&b, &t) })
}

/// Feature-page settings.
#[derive(Debug, Clone)]
pub struct PageConfig {
    /// Pages for this many top latents.
    pub top: usize,
    /// Top-activating contexts per page.
    pub contexts: usize,
    /// Tokens shown before / after the activating token.
    pub before: usize,
    pub after: usize,
    pub lens_k: usize,
    pub max_tokens: usize,
}

impl Default for PageConfig {
    fn default() -> Self {
        PageConfig { top: 10, contexts: 12, before: 12, after: 4, lens_k: 10, max_tokens: 512 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Context {
    pub activation: f32,
    pub sequence: usize,
    pub position: usize,
    pub before: String,
    pub token: String,
    pub after: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeaturePage {
    pub latent: usize,
    pub hook: String,
    pub diff: LatentDiff,
    pub contexts: Vec<Context>,
    pub corpus_tokens: usize,
    pub corpus_active: usize,
    pub histogram_edges: Vec<f32>,
    pub histogram_counts: Vec<usize>,
    pub promoted: Vec<LensToken>,
    pub suppressed: Vec<LensToken>,
}

/// Builds the pages of the `cfg.top` highest-ranked latents from `corpus` read by `lm`.
pub fn feature_pages(
    lm: &Lm,
    sae: &Sae,
    hook: HookPoint,
    corpus: &[Conversation],
    report: &DiffReport,
    cfg: &PageConfig,
) -> Result<Vec<FeaturePage>> {
    feature_pages_of(lm, sae, &read(lm, corpus, hook, cfg.max_tokens, false)?, report, cfg)
}

/// [`feature_pages`] of a corpus `lm` already read (`corpus`; its `max_tokens` is the one used).
pub fn feature_pages_of(lm: &Lm, sae: &Sae, corpus: &Readings, report: &DiffReport, cfg: &PageConfig) -> Result<Vec<FeaturePage>> {
    let d = corpus.d;
    let m = sae.d_sae;
    let chosen: Vec<&LatentDiff> = report.ranked.iter().take(cfg.top).collect();
    // Per chosen latent: (activation, sequence, position) of every active token.
    let mut hits: Vec<Vec<(f32, usize, usize)>> = vec![Vec::new(); chosen.len()];
    let encs = &corpus.encs;
    let mut total = 0usize;
    for (si, (enc, rows)) in encs.iter().zip(&corpus.rows).enumerate() {
        let positions: Vec<usize> = enc.mask.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i).collect();
        if !rows.is_empty() {
            let z = sae.encode(rows)?;
            for (r, &pos) in z.chunks_exact(m).zip(&positions) {
                for (ci, l) in chosen.iter().enumerate() {
                    let a = r[l.latent];
                    if a > 0.0 {
                        hits[ci].push((a, si, pos));
                    }
                }
            }
            total += rows.len() / d;
        }
    }
    let dec = |ids: &[u32]| lm.tokenizer.decode(ids, false).unwrap_or_default();
    let mut pages = Vec::new();
    for (ci, l) in chosen.iter().enumerate() {
        let acts: Vec<f32> = hits[ci].iter().map(|h| h.0).collect();
        let (edges, counts) = histogram(&acts, 20);
        let mut top = hits[ci].clone();
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        let contexts = top
            .iter()
            .take(cfg.contexts)
            .map(|&(a, s, p)| {
                let ids = &encs[s].ids;
                Context {
                    activation: a,
                    sequence: s,
                    position: p,
                    before: dec(&ids[p.saturating_sub(cfg.before)..p]),
                    token: dec(&ids[p..p + 1]),
                    after: dec(&ids[p + 1..(p + 1 + cfg.after).min(ids.len())]),
                }
            })
            .collect();
        let (promoted, suppressed) = logit_lens(&lm.model, &lm.tokenizer, sae.decoder_row(l.latent), cfg.lens_k)?;
        pages.push(FeaturePage {
            latent: l.latent,
            hook: report.hook.clone(),
            diff: (*l).clone(),
            contexts,
            corpus_tokens: total,
            corpus_active: acts.len(),
            histogram_edges: edges,
            histogram_counts: counts,
            promoted,
            suppressed,
        });
    }
    Ok(pages)
}

const STYLE: &str = "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.ctx{font-family:monospace;white-space:pre-wrap}.hit{background:#fd8;font-weight:bold}";

/// A self-contained HTML page (no scripts, no external resources; all text escaped).
pub fn page_html(p: &FeaturePage) -> String {
    let mut h =
        format!("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>latent {}</title><style>{STYLE}</style></head><body>", p.latent);
    h.push_str(&format!("<h1>Latent {} at {}</h1>", p.latent, escape(&p.hook)));
    h.push_str("<table><tr><th></th><th>base</th><th>tuned</th></tr>");
    h.push_str(&format!("<tr><td>mean activation</td><td>{:.4}</td><td>{:.4}</td></tr>", p.diff.base_mean, p.diff.tuned_mean));
    h.push_str(&format!(
        "<tr><td>fraction of tokens active</td><td>{:.4}</td><td>{:.4}</td></tr></table>",
        p.diff.base_frac_active, p.diff.tuned_frac_active
    ));
    h.push_str(&format!(
        "<h2>Activation histogram (corpus, tuned model)</h2><p>{} of {} tokens active</p>{}",
        p.corpus_active,
        p.corpus_tokens,
        svg_histogram(&p.histogram_edges, &p.histogram_counts)
    ));
    h.push_str("<h2>Top-activating contexts</h2><table><tr><th>act</th><th>context</th></tr>");
    for c in &p.contexts {
        h.push_str(&format!(
            "<tr><td>{:.3}</td><td class=\"ctx\">{}<span class=\"hit\">{}</span>{}</td></tr>",
            c.activation,
            escape(&c.before),
            escape(&c.token),
            escape(&c.after)
        ));
    }
    h.push_str(
        "</table><h2>Logit lens of the decoder row</h2><table><tr><th>promoted</th><th>logit</th><th>suppressed</th><th>logit</th></tr>",
    );
    for i in 0..p.promoted.len().max(p.suppressed.len()) {
        let cell = |v: Option<&LensToken>| match v {
            Some(t) => format!("<td class=\"ctx\">{}</td><td>{:.3}</td>", escape(&format!("{:?}", t.token)), t.logit),
            None => "<td></td><td></td>".into(),
        };
        h.push_str(&format!("<tr>{}{}</tr>", cell(p.promoted.get(i)), cell(p.suppressed.get(i))));
    }
    h.push_str("</table></body></html>\n");
    h
}

/// Writes `report.json`, `index.html` and, per top latent, `feature-<j>.json` and
/// `feature-<j>.html` into `out`.
pub fn write_feature_pages(
    lm: &Lm,
    sae: &Sae,
    hook: HookPoint,
    corpus: &[Conversation],
    report: &DiffReport,
    out: &Path,
    cfg: &PageConfig,
) -> Result<Vec<FeaturePage>> {
    write_feature_pages_of(lm, sae, &read(lm, corpus, hook, cfg.max_tokens, false)?, report, out, cfg)
}

/// [`write_feature_pages`] for a corpus `lm` already read.
pub fn write_feature_pages_of(
    lm: &Lm,
    sae: &Sae,
    corpus: &Readings,
    report: &DiffReport,
    out: &Path,
    cfg: &PageConfig,
) -> Result<Vec<FeaturePage>> {
    let pages = feature_pages_of(lm, sae, corpus, report, cfg)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = |v: &dyn erased::Ser| v.to_json();
    for p in &pages {
        write_atomic(&out.join(format!("feature-{}.json", p.latent)), json(p).as_bytes())?;
        write_atomic(&out.join(format!("feature-{}.html", p.latent)), page_html(p).as_bytes())?;
    }
    let mut idx = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>model diff</title><style>{STYLE}</style></head><body><h1>Latents ranked by mean-activation increase at {}</h1><table><tr><th>rank</th><th>latent</th><th>base</th><th>tuned</th><th>increase</th></tr>",
        escape(&report.hook)
    );
    for (i, l) in report.ranked.iter().take(cfg.top).enumerate() {
        idx.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"feature-{}.html\">{}</a></td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            i + 1,
            l.latent,
            l.latent,
            l.base_mean,
            l.tuned_mean,
            l.increase
        ));
    }
    idx.push_str("</table></body></html>\n");
    write_atomic(&out.join("index.html"), idx.as_bytes())?;
    write_atomic(&out.join("report.json"), json(report).as_bytes())?;
    Ok(pages)
}

mod erased {
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
}
