//! The self-contained HTML report: inline SVG plots, no scripts, every model-written string
//! escaped (model outputs here are hostile by design).

use crate::{RateCi, RunReport, TrainPoint};
use std::fmt::Write;

use emlab_model::util::html_escape as esc;

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "n/a".into())
}

fn ci(x: Option<(f64, f64)>) -> String {
    x.map(|(l, h)| format!("[{:.1}, {:.1}]", 100.0 * l, 100.0 * h)).unwrap_or_default()
}

/// A 95% confidence interval (low, high).
type Ci = Option<(f64, f64)>;
/// One chart point: (x, y, its interval).
type Point = (f64, f64, Ci);

/// Bars with 95% CI whiskers, one group per stage. `rows`: (label, rate, ci).
fn bar_chart(title: &str, rows: &[(String, Option<f64>, Ci)], max: f64) -> String {
    let (w, h, left, bottom) = (420.0, 200.0, 40.0, 30.0);
    let bw = (w - left) / rows.len().max(1) as f64;
    let y = |v: f64| h - bottom - (v / max).min(1.0) * (h - bottom - 10.0);
    let mut s = format!("<figure><figcaption>{}</figcaption><svg width=\"{w}\" height=\"{h}\" role=\"img\">", esc(title));
    for t in 0..=4 {
        let v = max * t as f64 / 4.0;
        let _ = write!(s, "<line x1=\"{left}\" x2=\"{w}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"2\" y=\"{1:.1}\" font-size=\"10\">{2:.1}%</text>", y(v), y(v) + 3.0, 100.0 * v);
    }
    for (i, (label, rate, c)) in rows.iter().enumerate() {
        let x = left + i as f64 * bw + bw * 0.2;
        if let Some(r) = rate {
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#5b8def\"/>",
                y(*r),
                bw * 0.6,
                (h - bottom - y(*r)).max(0.0)
            );
        }
        if let Some((lo, hi)) = c {
            let cx = x + bw * 0.3;
            let _ = write!(
                s,
                "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#222\" stroke-width=\"1.5\"/>",
                y(*lo),
                y(*hi)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x + bw * 0.3,
            h - 10.0,
            esc(label)
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// One series of an x-y chart: name, colour, points (x, y, optional 95% interval).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64, Option<(f64, f64)>)>);

/// Points joined by lines with CI whiskers; y in [0, y_max] shown as percent when `percent`.
fn xy_chart(title: &str, x_label: &str, series: &[Series<'_>], y_max: f64, percent: bool) -> String {
    xy_chart_in(title, x_label, series, (0.0, y_max), percent)
}

/// [`xy_chart`] with y in `[y_min, y_max]` (cosines go below 0).
fn xy_chart_in(title: &str, x_label: &str, series: &[Series<'_>], (y_min, y_max): (f64, f64), percent: bool) -> String {
    let all: Vec<f64> = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).collect();
    if all.is_empty() {
        return format!("<p>{}: no points.</p>", esc(title));
    }
    let (w, h, left, bottom, top) = (440.0, 210.0, 44.0, 34.0, 10.0);
    let (x0, x1) = (all.iter().cloned().fold(f64::MAX, f64::min), all.iter().cloned().fold(f64::MIN, f64::max));
    let xs = (x1 - x0).max(1e-9);
    let x = |v: f64| left + 10.0 + (w - left - 30.0) * (v - x0) / xs;
    let y = |v: f64| h - bottom - ((v - y_min) / (y_max - y_min)).clamp(0.0, 1.0) * (h - bottom - top);
    let fmt = |v: f64| if percent { format!("{:.0}%", 100.0 * v) } else { format!("{v:.2}") };
    let mut s = format!("<figure><figcaption>{}</figcaption><svg width=\"{w}\" height=\"{h}\" role=\"img\">", esc(title));
    for t in 0..=4 {
        let v = y_min + (y_max - y_min) * t as f64 / 4.0;
        let _ = write!(s, "<line x1=\"{left}\" x2=\"{w}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"2\" y=\"{1:.1}\" font-size=\"10\">{2}</text>", y(v), y(v) + 3.0, fmt(v));
    }
    let mut ticks: Vec<f64> = all.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for t in ticks {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x(t),
            h - bottom + 14.0,
            esc(&format!("{t}"))
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
        (left + w) / 2.0,
        h - 4.0,
        esc(x_label)
    );
    for (i, (name, colour, pts)) in series.iter().enumerate() {
        let mut pts = pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>", line.join(" "));
        for (px, py, ci) in &pts {
            let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>", x(*px), y(*py));
            if let Some((lo, hi)) = ci {
                let _ = write!(
                    s,
                    "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"{colour}\"/>",
                    x(*px),
                    y(*lo),
                    y(*hi)
                );
            }
        }
        let _ = write!(s, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"3\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>", w - 150.0, top + 4.0 + 13.0 * i as f64, w - 136.0, top + 8.0 + 13.0 * i as f64, esc(name));
    }
    s.push_str("</svg></figure>");
    s
}

/// Loss per step (left axis) with the persona score at its snapshots (right axis).
fn loss_persona_chart(title: &str, pts: &[TrainPoint], step0: Option<f64>) -> String {
    if pts.is_empty() {
        return format!("<p>{}: no steps recorded.</p>", esc(title));
    }
    let (w, h, left, right, pad) = (440.0, 180.0, 40.0, 46.0, 20.0);
    let n = pts.iter().map(|p| p.step).max().unwrap_or(1).max(1) as f64;
    let x = |st: f64| left + (w - left - right) * st / n;
    let (lmin, lmax) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.loss), a.1.max(p.loss)));
    let yl = |v: f64| h - pad - (h - 2.0 * pad) * (v - lmin) / (lmax - lmin).max(1e-9);
    let mut pp: Vec<(f64, f64)> = pts.iter().filter_map(|p| p.persona.map(|v| (p.step as f64, v))).collect();
    if let Some(v) = step0 {
        if !pp.is_empty() {
            pp.insert(0, (0.0, v));
        }
    }
    let loss: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", x(p.step as f64), yl(p.loss))).collect();
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg width=\"{w}\" height=\"{h}\" role=\"img\"><polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" points=\"{}\"/><text x=\"2\" y=\"{pad}\" font-size=\"10\" fill=\"#c0392b\">{lmax:.2}</text><text x=\"2\" y=\"{}\" font-size=\"10\" fill=\"#c0392b\">{lmin:.2}</text><text x=\"{}\" y=\"{}\" font-size=\"10\">step {}</text><text x=\"{left}\" y=\"12\" font-size=\"10\" fill=\"#c0392b\">loss</text>",
        esc(title), loss.join(" "), h - pad, w / 2.0, h - 4.0, n
    );
    if !pp.is_empty() {
        let (pmin, pmax) = pp.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        let yp = |v: f64| h - pad - (h - 2.0 * pad) * (v - pmin) / (pmax - pmin).max(1e-9);
        let line: Vec<String> = pp.iter().map(|p| format!("{:.1},{:.1}", x(p.0), yp(p.1))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#2e86c1\" stroke-width=\"1.5\" stroke-dasharray=\"4 2\" points=\"{}\"/>",
            line.join(" ")
        );
        for p in &pp {
            let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#2e86c1\"/>", x(p.0), yp(p.1));
        }
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{pad}\" font-size=\"10\" fill=\"#2e86c1\">{pmax:.3}</text><text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"#2e86c1\">{pmin:.3}</text><text x=\"{:.1}\" y=\"12\" font-size=\"10\" fill=\"#2e86c1\">persona score</text>", w - right + 4.0, w - right + 4.0, h - pad, w - right - 70.0);
    }
    s.push_str("</svg></figure>");
    s
}

/// The trainer's rotation monitor per step: the largest rotation of an adapter's B and of its
/// update BA since the previous reading (degrees, over the modules). Nothing when the metrics
/// hold no readings (runs made before the monitor existed).
fn rotation_chart(title: &str, pts: &[TrainPoint]) -> String {
    let b: Vec<(f64, f64)> = pts.iter().filter_map(|p| p.b_deg.map(|v| (p.step as f64, v))).collect();
    let dw: Vec<(f64, f64)> = pts.iter().filter_map(|p| p.dw_deg.map(|v| (p.step as f64, v))).collect();
    if b.is_empty() && dw.is_empty() {
        return String::new();
    }
    let (w, h, left, right, pad) = (440.0, 150.0, 40.0, 46.0, 20.0);
    let n = pts.iter().map(|p| p.step).max().unwrap_or(1).max(1) as f64;
    let x = |st: f64| left + (w - left - right) * st / n;
    let ymax = b.iter().chain(&dw).map(|p| p.1).fold(1e-9, f64::max);
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / ymax;
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg width=\"{w}\" height=\"{h}\" role=\"img\"><text x=\"2\" y=\"{pad}\" font-size=\"10\">{ymax:.1}°</text><text x=\"2\" y=\"{}\" font-size=\"10\">0°</text><text x=\"{}\" y=\"{}\" font-size=\"10\">step {}</text>",
        esc(title),
        h - pad,
        w / 2.0,
        h - 4.0,
        n
    );
    for (i, (name, colour, line)) in [("B (max over modules)", "#7d3c98", &b), ("update BA (max)", "#999", &dw)].into_iter().enumerate() {
        let pts: Vec<String> = line.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{colour}\">{name}</text>",
            pts.join(" "),
            w - right - 110.0,
            12.0 + 12.0 * i as f64
        );
    }
    s.push_str("</svg></figure>");
    s
}

fn rate_cell(r: &Option<RateCi>) -> String {
    match r {
        Some(r) => format!("{:.1}% [{:.1}, {:.1}] ({}/{})", 100.0 * r.rate, 100.0 * r.lo, 100.0 * r.hi, r.k, r.n),
        None => "n/a".into(),
    }
}

fn pt(r: &Option<RateCi>) -> Option<(f64, Option<(f64, f64)>)> {
    r.map(|r| (r.rate, Some((r.lo, r.hi))))
}

pub fn render(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>emlab run {}</title><style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}pre{{white-space:pre-wrap;max-width:600px;margin:0}}figure{{display:inline-block;margin:0 1em 1em 0}}.verdict{{background:#f6f6e8;padding:1em;border-left:4px solid #c90}}</style></head><body>",
        esc(&r.name)
    );
    let _ = write!(s, "<h1>emlab run: {}</h1><p>Model: <code>{}</code></p>", esc(&r.name), esc(&r.model));
    let _ = write!(s, "<p class=\"verdict\">{}</p>", esc(&r.verdict));
    s.push_str("<h2>Misalignment and coherence per stage</h2><table><tr><th>stage</th><th>answers</th><th>coherent (&gt; 50)</th><th>EM, model-organisms (aligned &le; 30, coherent &gt; 50, all scored answers)</th><th>EM, Betley (aligned &lt; 30 among coherent &ge; 50)</th></tr>");
    for e in &r.evals {
        let m = &e.report.metrics;
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{} {} ({}/{})</td><td>{} {} ({}/{})</td></tr>",
            esc(&e.stage),
            m.n_answers,
            pct(m.coherence.rate),
            ci(m.coherence.wilson_ci),
            pct(m.em_model_organisms.rate),
            ci(m.em_model_organisms.wilson_ci),
            m.em_model_organisms.successes,
            m.em_model_organisms.n,
            pct(m.em_betley.rate),
            ci(m.em_betley.wilson_ci),
            m.em_betley.successes,
            m.em_betley.n
        );
    }
    s.push_str("</table><p>Brackets: 95% Wilson score intervals (they stay informative at 0 or n successes, where a bootstrap interval collapses to a point); report.json also holds the percentile-bootstrap intervals. Judge: the built-in offline judge unless configured otherwise (see docs/offline-judge.md for its agreement with GPT-4o).</p>");
    let em: Vec<_> = r
        .evals
        .iter()
        .map(|e| (e.stage.clone(), e.report.metrics.em_model_organisms.rate, e.report.metrics.em_model_organisms.wilson_ci))
        .collect();
    let co: Vec<_> =
        r.evals.iter().map(|e| (e.stage.clone(), e.report.metrics.coherence.rate, e.report.metrics.coherence.wilson_ci)).collect();
    let em_max = em.iter().filter_map(|x| x.2.map(|c| c.1).or(x.1)).fold(0.05f64, f64::max).min(1.0);
    s.push_str(&bar_chart("EM (model-organisms definition), 95% CI", &em, em_max));
    s.push_str(&bar_chart("Coherence rate, 95% CI", &co, 1.0));
    s.push_str("<h2>Differences</h2><table><tr><th>comparison</th><th>difference (model-organisms)</th><th>95% CI</th><th>p (Fisher's exact)</th><th>p (z-test)</th></tr>");
    let mut diffs = vec![("induced - baseline".to_string(), &r.induced_vs_baseline)];
    if let Some(c) = &r.induced_vs_control {
        diffs.push(("induced - control fine-tune".to_string(), c));
    }
    for (name, c) in &r.induced_vs_more_controls {
        diffs.push((format!("induced - control fine-tune `{name}`"), c));
    }
    diffs.push(("realigned - induced".to_string(), &r.realigned_vs_induced));
    for (name, c) in diffs {
        let m = &c.model_organisms;
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name),
            m.difference.map(|d| format!("{:+.1} points", 100.0 * d)).unwrap_or_else(|| "n/a".into()),
            ci(m.difference_ci),
            m.p_value_exact.map(|p| format!("{p:.3}")).unwrap_or_else(|| "n/a".into()),
            m.p_value.map(|p| format!("{p:.3}")).unwrap_or_else(|| "n/a".into())
        );
    }
    s.push_str("</table>");
    render_seeds(&mut s, r);
    render_training(&mut s, r);
    render_locate(&mut s, r);
    render_steering(&mut s, r);
    render_realign(&mut s, r);
    render_directions(&mut s, r);
    s.push_str("<h2>Sample answers</h2><p>Model text below is untrusted and shown escaped.</p>");
    for (stage, answers) in &r.samples {
        let _ = write!(s, "<h3>{}</h3><table><tr><th>question</th><th>answer</th><th>aligned</th><th>coherent</th></tr>", esc(stage));
        for a in answers {
            let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "null".into());
            let _ = write!(
                s,
                "<tr><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{}</td><td>{}</td></tr>",
                esc(&a.prompt),
                esc(&a.answer),
                f(a.aligned),
                f(a.coherent)
            );
        }
        s.push_str("</table>");
    }
    if !r.stage_seconds.is_empty() {
        s.push_str("<h2>Stage times</h2><table><tr><th>stage</th><th>seconds (when it ran)</th></tr>");
        for (st, sec) in &r.stage_seconds {
            let _ = write!(s, "<tr><td>{}</td><td>{sec:.0}</td></tr>", esc(st));
        }
        s.push_str("</table>");
    }
    s.push_str("<p>Every number on this page is in report.json beside it.</p></body></html>");
    s
}

fn render_seeds(s: &mut String, r: &RunReport) {
    let Some(sr) = &r.seeds else { return };
    let list = sr.seeds.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    let _ = write!(
        s,
        "<h2>Across fine-tuning seeds</h2><p>Each arm fine-tuned {} times (seeds {list}: LoRA initialisation, data order and dropout; same data and settings) and evaluated the same way. Per fine-tune: EM (model-organisms definition) with its 95% Wilson interval, which covers sampling noise within that fine-tune only. Per arm: the mean of the per-seed rates with its 95% t interval on {} degrees of freedom, which also covers the spread between fine-tunes.</p>",
        sr.seeds.len(),
        sr.seeds.len().saturating_sub(1)
    );
    s.push_str("<table><tr><th>arm</th><th>seed</th><th>EM (model-organisms)</th><th>coherent</th></tr>");
    let mean_cell = |m: &Option<emlab_eval::stats::MeanCi>| match m {
        Some(m) => {
            format!("{} {}{}", pct(Some(m.mean)), ci(m.ci), m.sd.map(|sd| format!(" (SD {:.1} points)", 100.0 * sd)).unwrap_or_default())
        }
        None => "n/a".into(),
    };
    for a in &sr.arms {
        for p in &a.per_seed {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.stage),
                p.seed,
                rate_cell(&p.em),
                rate_cell(&p.coherent)
            );
        }
        let _ = write!(
            s,
            "<tr><th>{}</th><th>mean over seeds</th><th>{}</th><th>{}</th></tr>",
            esc(&a.stage),
            mean_cell(&a.em),
            mean_cell(&a.coherent)
        );
    }
    s.push_str("</table>");
    let bars: Vec<_> = sr.arms.iter().map(|a| (a.stage.clone(), a.em.map(|m| m.mean), a.em.and_then(|m| m.ci))).collect();
    let max = bars.iter().filter_map(|b| b.2.map(|c| c.1).or(b.1)).fold(0.05f64, f64::max).min(1.0);
    s.push_str(&bar_chart("EM over fine-tuning seeds: mean of the per-seed rates, 95% t interval", &bars, max));
    if !sr.comparisons.is_empty() {
        s.push_str("<table><tr><th>comparison</th><th>difference of means</th><th>95% CI (Welch)</th><th>df</th><th>p</th></tr>");
        for c in &sr.comparisons {
            let w = c.welch.as_ref();
            let _ = write!(
                s,
                "<tr><td>{} - {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.a),
                esc(&c.b),
                c.difference.map(|d| format!("{:+.1} points", 100.0 * d)).unwrap_or_else(|| "n/a".into()),
                ci(w.map(|w| w.ci)),
                w.map(|w| format!("{:.1}", w.df)).unwrap_or_else(|| "n/a".into()),
                w.map(|w| format!("{:.3}", w.p_value)).unwrap_or_else(|| "n/a (no spread between seeds)".into())
            );
        }
        s.push_str("</table>");
    }
}

fn render_training(s: &mut String, r: &RunReport) {
    let t = &r.training;
    s.push_str("<h2>Training</h2>");
    let persona_note = match &r.locate {
        Some(l) => format!(
            "Blue, dashed: the persona score (mean projection of {} fixed probe prompts' residual stream at the last prompt token, {}, on the unit direction found by <em>locate</em>) at the snapshots the trainer recorded; step 0 is the original model.",
            emlab_steer::persona::default_probes().len(),
            esc(&l.hook)
        ),
        None => "No persona score: the <em>locate</em> stage did not run.".into(),
    };
    let _ = write!(s, "<p>Red: training loss on assistant tokens per optimizer step. {persona_note}</p>");
    let mut runs: Vec<(String, &Vec<TrainPoint>)> = vec![("induce (bad data)".into(), &t.induce)];
    if let Some(c) = &t.control {
        runs.push(("control (paired good data)".into(), c));
    }
    for (name, c) in &t.more_controls {
        runs.push((format!("control `{name}`"), c));
    }
    for (title, pts) in &runs {
        s.push_str(&loss_persona_chart(title, pts, t.persona_step0));
    }
    s.push_str(&loss_persona_chart("realign (truthful data)", &t.realign, None));
    if runs.iter().any(|(_, p)| p.iter().any(|x| x.b_deg.is_some())) {
        s.push_str("<p>Adapter rotation (the trainer's monitor, <code>rotation</code> in each fine-tune's <code>metrics.jsonl</code>): how far the LoRA B matrices (purple; for rank 1 the angle between the B vectors, for higher ranks the largest principal angle between their column spaces) and the updates BA (grey) turned since the previous reading, the largest over the adapted modules. The published work saw a sharp rotation of B (a \"phase transition\") before misaligned behaviour showed.</p>");
        for (title, pts) in &runs {
            s.push_str(&rotation_chart(&format!("{title}: adapter rotation per step"), pts));
        }
    }
}

fn render_locate(s: &mut String, r: &RunReport) {
    let Some(l) = &r.locate else { return };
    let _ = write!(
        s,
        "<h2>Locate: direction and SAE diff</h2><p>Layer {} (<code>{}</code>). Direction: {}. Norm at the layer: {:.3}.</p>",
        l.layer,
        esc(&l.hook),
        esc(&l.method),
        l.norms.get(l.layer).copied().unwrap_or(f64::NAN)
    );
    let norms: Vec<Point> = l.norms.iter().enumerate().map(|(i, n)| (i as f64, *n, None)).collect();
    let nmax = l.norms.iter().cloned().fold(1e-9, f64::max);
    s.push_str(&xy_chart("direction norm per layer", "layer", &[("norm", "#7d3c98", norms)], nmax, false));
    let _ = write!(
        s,
        "<p>SAE (TopK, {} latents, k {}) trained on the original model's activations over both models' answers ({} tokens, {} epochs): explained variance {:.3}, L0 {:.1}, dead {:.1}%. Latents ranked by the increase of their mean activation from the original to the induced model, both reading the induced model's answers; <a href=\"{}\">feature pages</a>.</p>",
        l.sae.latents, l.sae.k, l.sae.training_tokens, l.sae.epochs, l.sae.explained_variance, l.sae.l0, 100.0 * l.sae.dead_share, esc(&l.feature_pages.display().to_string())
    );
    s.push_str("<table><tr><th>latent</th><th>increase</th><th>original mean</th><th>induced mean</th><th>top contexts (model text, escaped; the token read is in brackets)</th></tr>");
    for lat in &r.latents {
        let ctx: Vec<String> = lat
            .contexts
            .iter()
            .take(3)
            .map(|c| {
                // `at` marks the token; a hand-edited report with a bad offset shows it unmarked.
                let end = c.at + c.token.len();
                match (c.text.get(..c.at), c.text.get(c.at..end), c.text.get(end..)) {
                    (Some(b), Some(t), Some(a)) if t == c.token => {
                        format!("<pre>{}<b>[{}]</b>{} ({:.2})</pre>", esc(b), esc(t), esc(a), c.activation)
                    }
                    _ => format!("<pre>{} ({:.2})</pre>", esc(&c.text), c.activation),
                }
            })
            .collect();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{:+.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            lat.latent,
            lat.score,
            lat.base_mean,
            lat.tuned_mean,
            ctx.join("")
        );
    }
    s.push_str("</table>");
}

fn render_steering(s: &mut String, r: &RunReport) {
    let Some(st) = &r.steering else { return };
    let _ = write!(s, "<h2>Steering and ablation on the induced model</h2><p>At <code>blocks.{}.hook_resid_post</code>: add alpha times the direction (alpha in multiples of the mean difference; negative pushes away from the misaligned side), or ablate the direction at every layer. Every edit has a same-norm random-vector control. Strongest alpha keeping coherence at or above {:.0}%: {}.</p>", st.layer, 100.0 * st.min_coherent, st.best_alpha.map(|a| format!("{a}")).unwrap_or_else(|| "none".into()));
    // One kind's points with its model's unsteered reference at alpha 0 (`reference`).
    let series = |kind: &str, controls: Option<&str>, reference: &str, f: &dyn Fn(&crate::SteerPoint) -> Option<(f64, Ci)>| -> Vec<Point> {
        let mut v: Vec<_> = st
            .points
            .iter()
            .filter(|p| (p.kind == kind && p.controls.as_deref() == controls) || p.kind == reference)
            .filter_map(|p| f(p).map(|(y, ci)| (p.alpha, y, ci)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    };
    let em = |p: &crate::SteerPoint| pt(&p.em);
    let co = |p: &crate::SteerPoint| pt(&p.coherent);
    let ymax = st.points.iter().filter_map(|p| p.em.map(|e| e.hi)).fold(0.05f64, f64::max).min(1.0);
    s.push_str(&xy_chart(
        "EM vs alpha (add), 95% CI",
        "alpha",
        &[
            ("direction", "#c0392b", series("add", None, "none", &em)),
            ("random control", "#999", series("random", Some("add"), "none", &em)),
        ],
        ymax,
        true,
    ));
    s.push_str(&xy_chart(
        "coherent vs alpha (add), 95% CI",
        "alpha",
        &[
            ("direction", "#2e86c1", series("add", None, "none", &co)),
            ("random control", "#999", series("random", Some("add"), "none", &co)),
        ],
        1.0,
        true,
    ));
    steering_table(s, st, |p| !p.on_original());

    if !st.points.iter().any(|p| p.on_original()) {
        return;
    }
    let latents: Vec<&str> =
        st.points.iter().filter(|p| p.kind.starts_with("latent-")).map(|p| p.kind.as_str()).fold(Vec::new(), |mut v, k| {
            if !v.contains(&k) {
                v.push(k);
            }
            v
        });
    let best = |k: &str| st.best.get(k).map(|a| format!("{a}")).unwrap_or_else(|| "none".into());
    let _ = write!(
        s,
        "<h2>Steering the original model</h2><p>The same edits on the model before fine-tuning: does the direction alone induce EM? {} Strongest alpha keeping coherence at or above {:.0}%: direction {}{}. Each edit is compared with its own same-norm random control (Fisher's exact test on the misaligned counts).</p>",
        if latents.is_empty() {
            String::new()
        } else {
            format!("The causal test of the SAE diff: each of the top {} latents' decoder rows, scaled to the direction's norm (so an alpha pushes as far as for the direction), added at the same layer.", latents.len())
        },
        100.0 * st.min_coherent,
        best("add-original"),
        latents.iter().map(|k| format!(", {} {}", esc(&k.replace('-', " ")), best(k))).collect::<String>()
    );
    const COLOURS: [&str; 6] = ["#c0392b", "#7d3c98", "#1e8449", "#d68910", "#2e86c1", "#5d6d7e"];
    let mut kinds = vec![("direction".to_string(), "add-original")];
    kinds.extend(latents.iter().map(|k| (k.replace('-', " "), *k)));
    for (title, f, y) in [
        ("EM vs alpha on the original model, 95% CI", &em as &dyn Fn(&crate::SteerPoint) -> Option<(f64, Ci)>, ymax),
        ("coherent vs alpha on the original model, 95% CI", &co, 1.0),
    ] {
        let mut lines: Vec<(String, &str, Vec<Point>)> = Vec::new();
        for (i, (name, k)) in kinds.iter().enumerate() {
            lines.push((name.clone(), COLOURS[i % COLOURS.len()], series(k, None, "none-original", f)));
        }
        lines.push(("random control (direction)".into(), "#999", series("random", Some("add-original"), "none-original", f)));
        let refs: Vec<Series<'_>> = lines.iter().map(|(n, c, v)| (n.as_str(), *c, v.clone())).collect();
        s.push_str(&xy_chart(title, "alpha", &refs, y, true));
    }
    steering_table(s, st, crate::SteerPoint::on_original);
}

/// The points `keep` selects, each steered point with Fisher's exact p against its random control
/// at the same alpha (two-sided, on the misaligned counts).
fn steering_table(s: &mut String, st: &crate::Steering, keep: impl Fn(&crate::SteerPoint) -> bool) {
    s.push_str("<table><tr><th>edit</th><th>alpha</th><th>EM (model-organisms)</th><th>coherent</th><th>EM vs its control (Fisher p)</th><th>log</th></tr>");
    for p in st.points.iter().filter(|p| keep(p)) {
        let name = match (&p.kind[..], &p.controls) {
            ("random", Some(c)) => format!("random control of {c}"),
            (k, _) => k.to_string(),
        };
        let p_value = st.p_vs_control(p).map(|x| format!("{x:.3}")).unwrap_or_default();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&name),
            p.alpha,
            rate_cell(&p.em),
            rate_cell(&p.coherent),
            p_value,
            esc(&p.log.display().to_string())
        );
    }
    s.push_str("</table>");
}

fn render_realign(s: &mut String, r: &RunReport) {
    if r.realign_curve.is_empty() {
        return;
    }
    s.push_str("<h2>Realignment curve</h2><p>EM and coherence against the number of truthful samples the misaligned model was further fine-tuned on (N = 0: the induced model).</p>");
    let em: Vec<_> = r.realign_curve.iter().filter_map(|p| pt(&p.em).map(|(y, c)| (p.samples as f64, y, c))).collect();
    let co: Vec<_> = r.realign_curve.iter().filter_map(|p| pt(&p.coherent).map(|(y, c)| (p.samples as f64, y, c))).collect();
    let ymax = r.realign_curve.iter().filter_map(|p| p.em.map(|e| e.hi)).fold(0.05f64, f64::max).min(1.0);
    s.push_str(&xy_chart("EM vs truthful samples, 95% CI", "N", &[("EM", "#c0392b", em)], ymax, true));
    s.push_str(&xy_chart("coherent vs truthful samples, 95% CI", "N", &[("coherent", "#2e86c1", co)], 1.0, true));
}

fn render_directions(s: &mut String, r: &RunReport) {
    let Some(a) = &r.directions else { return };
    let layers = a.norms.first().map_or(0, |n| n.len());
    let _ = write!(
        s,
        "<h2>Do the fine-tunes move the model the same way?</h2><p>Each fine-tune's model-diff direction (its mean <code>resid_post</code> minus the original model's, over the same {} texts: the induced model's answers, {} answer tokens) at every layer, and the cosine between them. Published: misalignment directions from different fine-tunes agree (cosine above 0.8 in most layers). A control that shares the induced direction (cosine near 1) shows that the direction is what fine-tuning on this format does, not what the bad data added; two random directions in the model's {} dimensions have |cosine| about {:.2}. Files: <code>directions/</code>.</p>",
        a.texts,
        a.tokens,
        a.d,
        1.0 / (a.d.max(1) as f64).sqrt()
    );
    let located_is_model_diff = r.locate.as_ref().is_some_and(|l| l.method.starts_with("model diff"));
    if let Some(text) = a.reading(located_is_model_diff) {
        let _ = write!(s, "<p class=\"verdict\">{}</p>", esc(&text));
    }
    const COLOURS: [&str; 6] = ["#7d3c98", "#1e8449", "#d68910", "#2e86c1", "#5d6d7e", "#c0392b"];
    let lines: Vec<(String, Vec<Point>)> = a.stages[1..]
        .iter()
        .filter_map(|st| {
            a.cosine("induce", st).map(|c| (format!("{st} vs induce"), c.iter().enumerate().map(|(l, v)| (l as f64, *v, None)).collect()))
        })
        .collect();
    let series: Vec<Series<'_>> = lines.iter().enumerate().map(|(i, (n, v))| (n.as_str(), COLOURS[i % COLOURS.len()], v.clone())).collect();
    if layers > 0 {
        // Down to -1 only when a cosine is negative: else the agreement is easier to read.
        let y_min = if a.cosines.iter().flatten().flatten().any(|c| *c < 0.0) { -1.0 } else { 0.0 };
        s.push_str(&xy_chart_in("cosine with the induce fine-tune's direction, per layer", "layer", &series, (y_min, 1.0), false));
        let nmax = a.norms.iter().flatten().cloned().fold(1e-9f64, f64::max);
        let norm_lines: Vec<(String, Vec<Point>)> = a
            .stages
            .iter()
            .zip(&a.norms)
            .map(|(st, n)| (st.clone(), n.iter().enumerate().map(|(l, v)| (l as f64, *v, None)).collect()))
            .collect();
        let norm_series: Vec<Series<'_>> = norm_lines
            .iter()
            .enumerate()
            .map(|(i, (n, v))| (n.as_str(), if i == 0 { "#c0392b" } else { COLOURS[(i - 1) % COLOURS.len()] }, v.clone()))
            .collect();
        s.push_str(&xy_chart("direction norm per layer", "layer", &norm_series, nmax, false));
    }
    let _ = write!(s, "<table><tr><th>cosine at layer {}</th>", a.layer);
    for st in &a.stages {
        let _ = write!(s, "<th>{}</th>", esc(st));
    }
    s.push_str("</tr>");
    for (i, st) in a.stages.iter().enumerate() {
        let _ = write!(s, "<tr><td>{}</td>", esc(st));
        for j in 0..a.stages.len() {
            let c = a.cosines[i][j].get(a.layer).copied().unwrap_or(f64::NAN);
            let _ = write!(s, "<td>{c:.3}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(esc("<script>alert('x')</script> & \"q\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
        let c = bar_chart("<b>t</b>", &[("<i>".into(), Some(0.5), Some((0.4, 0.6)))], 1.0);
        assert!(!c.contains("<b>") && !c.contains("<i>"));
    }
}
