//! Interventions as data: a list of edits on the residual stream, read from JSON or TOML and
//! built into an [`emlab_model::HookSet`].
//!
//! ```
//! use emlab_steer::Intervention;
//! let spec: Intervention = toml::from_str(r#"
//!     [[edits]]
//!     kind = "add"                      # x <- x + coef_L * v_L at blocks.L.hook_resid_post
//!     layers = [6, 8]
//!     coefs = [8.0, 4.0]                # one per layer (or `coef = 8.0` for all)
//!     vector = { type = "direction_file", path = "directions.safetensors" }  # row L per layer
//!
//!     [[edits]]
//!     kind = "ablate"                   # x <- x - (x.r) r everywhere (embedding, attn and MLP outputs)
//!     vector = { type = "direction_file", path = "directions.safetensors", layer = 7 }
//! "#).unwrap();
//! assert_eq!(spec.edits.len(), 2);
//! ```
//!
//! Kinds:
//! * `add`: at `blocks.{L}.hook_resid_post` for each listed `L`, `x <- x + coef_L * v_L`. With a
//!   per-layer source (a direction file or a control vector with no fixed `layer`), `v_L` is that
//!   source's vector for layer `L`; otherwise one vector for all layers.
//! * `ablate`: directional ablation at all layers ([`emlab_model::HookSet::ablate_everywhere`]):
//!   the unit direction `r` is removed from the embedding output and from every attention and MLP
//!   output, so no position of the stream ever carries it (the activation-level twin of
//!   [`crate::repair`]). `layers` and coefficients are not allowed; the source must give one vector.
//! * `ablate_then_add`: at each listed `blocks.{L}.hook_resid_post`,
//!   `x <- x - (x.r) r + coef_L * v` with `r = v/|v|`: the component along the direction is *set*
//!   to `coef_L * |v|` at that point rather than shifted.
//!
//! Relative paths are resolved against the spec file's folder.

use crate::vectors::VectorSource;
use crate::{Error, Result};
use candle_core::Tensor;
use emlab_model::{HookPoint, HookSet, Model};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditKind {
    Add,
    Ablate,
    AblateThenAdd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    pub kind: EditKind,
    /// Layers `L` whose `blocks.{L}.hook_resid_post` is edited (`add`, `ablate_then_add`).
    #[serde(default)]
    pub layers: Vec<usize>,
    /// One coefficient for every layer.
    #[serde(default)]
    pub coef: Option<f64>,
    /// One coefficient per entry of `layers`.
    #[serde(default)]
    pub coefs: Option<Vec<f64>>,
    pub vector: VectorSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Intervention {
    pub edits: Vec<EditSpec>,
}

/// One concrete edit at one hook point, vectors loaded.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// Ablate `dir` everywhere.
    AblateEverywhere { dir: Tensor },
    /// At `point`: optionally ablate `unit(v)`, then add `coef * v`.
    Add { point: HookPoint, vector: Tensor, coef: f64, ablate_first: bool },
}

/// A TOML error as one line: where (`line N`) and toml's own message (its `Display` spans
/// several lines: a source excerpt, then the message, which a first-line cut would drop).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    format!("{at}{}", e.message().split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Intervention {
    /// Reads JSON (`.json`) or TOML (anything else); relative vector paths are resolved against
    /// the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // A leading UTF-8 byte-order mark (some editors write one) is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut spec: Intervention = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| Error::format(path, format!("line {}: {e}", e.line())))?
        } else {
            toml::from_str(text).map_err(|e: toml::de::Error| Error::format(path, toml_message(text, &e)))?
        };
        if spec.edits.is_empty() {
            return Err(Error::format(path, "intervention has no edits"));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for e in &mut spec.edits {
            e.vector.resolve_paths(dir);
        }
        Ok(spec)
    }

    /// Checks every edit against the model shape (`num_layers` blocks, stream width `hidden`)
    /// and loads the vectors.
    pub fn resolve(&self, num_layers: usize, hidden: usize, device: &candle_core::Device) -> Result<Vec<Resolved>> {
        let mut out = Vec::new();
        for (i, e) in self.edits.iter().enumerate() {
            let ctx = |m: String| Error::Invalid(format!("intervention edit {i} ({:?}): {m}", e.kind));
            match e.kind {
                EditKind::Ablate => {
                    if !e.layers.is_empty() || e.coef.is_some() || e.coefs.is_some() {
                        return Err(ctx("`ablate` acts at all layers: drop `layers`/`coef`/`coefs`".into()));
                    }
                    let dir = e.vector.load(None, hidden, device)?;
                    emlab_model::hooks::unit(&dir).map_err(|x| ctx(x.to_string()))?;
                    out.push(Resolved::AblateEverywhere { dir });
                }
                EditKind::Add | EditKind::AblateThenAdd => {
                    if e.layers.is_empty() {
                        return Err(ctx("needs `layers`".into()));
                    }
                    let coefs: Vec<f64> = match (&e.coef, &e.coefs) {
                        (Some(c), None) => vec![*c; e.layers.len()],
                        (None, Some(cs)) if cs.len() == e.layers.len() => cs.clone(),
                        (None, Some(cs)) => {
                            return Err(ctx(format!("{} coefs for {} layers", cs.len(), e.layers.len())));
                        }
                        _ => return Err(ctx("give exactly one of `coef` or `coefs`".into())),
                    };
                    for (&l, &c) in e.layers.iter().zip(&coefs) {
                        if l >= num_layers {
                            return Err(ctx(format!("layer {l} but the model has {num_layers} layers")));
                        }
                        if !c.is_finite() {
                            return Err(ctx(format!("coefficient {c} at layer {l} is not finite")));
                        }
                        let vector = e.vector.load(Some(l), hidden, device)?;
                        let ablate_first = e.kind == EditKind::AblateThenAdd;
                        if ablate_first {
                            emlab_model::hooks::unit(&vector).map_err(|x| ctx(x.to_string()))?;
                        }
                        out.push(Resolved::Add { point: HookPoint::resid_post(l), vector, coef: c, ablate_first });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The hook set for `model`; `scale` multiplies every `add` coefficient (sweeps).
    pub fn build(&self, model: &Model, scale: Option<f64>) -> Result<HookSet> {
        let cfg = &model.config;
        let resolved = self.resolve(cfg.num_layers, cfg.hidden_size, model.device())?;
        hooks_from(&resolved, cfg.num_layers, scale.unwrap_or(1.0))
    }
}

/// Builds a hook set from resolved edits.
pub fn hooks_from(resolved: &[Resolved], num_layers: usize, scale: f64) -> Result<HookSet> {
    let mut h = HookSet::new();
    for r in resolved {
        match r {
            Resolved::AblateEverywhere { dir } => {
                h.ablate_everywhere(dir, num_layers)?;
            }
            Resolved::Add { point, vector, coef, ablate_first } => {
                if *ablate_first {
                    h.ablate(*point, vector)?;
                }
                h.add(*point, vector, coef * scale);
            }
        }
    }
    Ok(h)
}

/// Writes resolved edits in the format of `emlab eval --intervention` (the eval crate's spec: a
/// vectors safetensors file plus `add` / `ablate` entries by tensor name): `dir/vectors.safetensors`
/// and `dir/intervention.json`. Returns the JSON path.
pub fn write_eval_spec(resolved: &[Resolved], dir: &Path) -> Result<std::path::PathBuf> {
    let mut tensors = Vec::new();
    let mut add = Vec::new();
    let mut ablate = Vec::new();
    for (i, r) in resolved.iter().enumerate() {
        let name = format!("v{i}");
        match r {
            Resolved::AblateEverywhere { dir } => {
                tensors.push((name.clone(), dir.clone()));
                ablate.push(serde_json::json!({"vector": name}));
            }
            Resolved::Add { point, vector, coef, ablate_first } => {
                // JSON has no NaN: serde_json would write `null`, a spec no reader accepts.
                if !coef.is_finite() {
                    return Err(Error::Invalid(format!("{}: coefficient {coef} at {point} is not finite", dir.display())));
                }
                tensors.push((name.clone(), vector.clone()));
                if *ablate_first {
                    ablate.push(serde_json::json!({"vector": name, "hook": point.to_string()}));
                }
                add.push(serde_json::json!({"hook": point.to_string(), "vector": name, "alpha": coef}));
            }
        }
    }
    emlab_model::load::save_safetensors(&dir.join("vectors.safetensors"), &tensors, None)?;
    let json = serde_json::json!({"vectors": "vectors.safetensors", "add": add, "ablate": ablate});
    let p = dir.join("intervention.json");
    emlab_model::util::write_atomic(&p, serde_json::to_string_pretty(&json).unwrap_or_default().as_bytes())?;
    Ok(p)
}
