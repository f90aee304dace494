//! HTML escaping and the inline SVG histogram of feature pages. Model text is hostile: every
//! string from a model, tokenizer or file goes through [`escape`].
//!
//! ```
//! assert_eq!(emlab_interp::html::escape("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
//! ```

/// Escapes `& < > " '` (safe in text and in quoted attributes); shared with every other page.
pub use emlab_model::util::html_escape as escape;

/// Equal-width histogram of `values` over `[0, max]` with `bins` bins: (edges, counts).
pub fn histogram(values: &[f32], bins: usize) -> (Vec<f32>, Vec<usize>) {
    let bins = bins.max(1);
    let max = values.iter().cloned().fold(0.0f32, f32::max);
    let width = if max > 0.0 { max / bins as f32 } else { 1.0 };
    let mut counts = vec![0usize; bins];
    for v in values {
        let b = ((v / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    ((0..=bins).map(|i| i as f32 * width).collect(), counts)
}

/// A small bar chart as inline SVG (no scripts, no external resources).
pub fn svg_histogram(edges: &[f32], counts: &[usize]) -> String {
    let (w, h) = (400.0f32, 120.0f32);
    let n = counts.len().max(1) as f32;
    let maxc = counts.iter().copied().max().unwrap_or(0).max(1) as f32;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\">", h + 20.0);
    for (i, c) in counts.iter().enumerate() {
        let bh = *c as f32 / maxc * h;
        let x = i as f32 * w / n;
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7\"><title>{:.3}..{:.3}: {c}</title></rect>",
            h - bh,
            (w / n - 1.0).max(1.0),
            edges[i],
            edges[i + 1]
        ));
    }
    s.push_str(&format!(
        "<text x=\"0\" y=\"{}\" font-size=\"11\">0</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.3}</text></svg>",
        h + 15.0,
        w,
        h + 15.0,
        edges.last().copied().unwrap_or(0.0)
    ));
    s
}
