//! Residual-stream interventions applied while sampling: add `alpha * v` at chosen hook points,
//! or ablate a direction everywhere, with vectors read from a safetensors file.
//!
//! ```
//! use emlab_eval::intervention::InterventionSpec;
//! let spec: InterventionSpec = serde_json::from_str(r#"{
//!     "vectors": "directions.safetensors",
//!     "add": [{"hook": "blocks.12.hook_resid_post", "vector": "em", "alpha": 8.0},
//!             {"layers": [3, 4], "vector": "em", "alpha": -2.0}],
//!     "ablate": [{"vector": "em"}]
//! }"#).unwrap();
//! assert_eq!(spec.add.len(), 2);
//! assert!(spec.ablate[0].hook.is_none()); // no hook: ablated everywhere
//! ```
//!
//! The file may be JSON (`.json`) or TOML (anything else, `[[add]]` / `[[ablate]]` tables). The
//! `vectors` path is relative to the spec file. `layers` is shorthand for
//! `blocks.{L}.hook_resid_post` at each layer. An ablation without `hook` removes the direction
//! from the embedding output and from every attention and MLP output
//! ([`emlab_model::HookSet::ablate_everywhere`]), so no position of the stream carries it.

use crate::{Error, Result};
use candle_core::Tensor;
use emlab_model::{HookPoint, HookSet, Model};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionSpec {
    /// Safetensors file holding the vectors (shape `[d]` or `[1, d]`), relative to the spec.
    pub vectors: PathBuf,
    #[serde(default)]
    pub add: Vec<AddEdit>,
    #[serde(default)]
    pub ablate: Vec<AblateEdit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddEdit {
    /// A hook name such as `blocks.12.hook_resid_post`.
    #[serde(default)]
    pub hook: Option<String>,
    /// Shorthand: `blocks.{L}.hook_resid_post` for each L.
    #[serde(default)]
    pub layers: Vec<usize>,
    /// Tensor name in the vectors file.
    pub vector: String,
    pub alpha: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblateEdit {
    pub vector: String,
    /// One hook point; absent means everywhere.
    #[serde(default)]
    pub hook: Option<String>,
}

impl InterventionSpec {
    /// Reads a spec; relative `vectors` paths are resolved against the spec's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // A leading UTF-8 byte-order mark (some editors write one) is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut spec: InterventionSpec = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| Error::at(path, e.line(), e))?
        } else {
            toml::from_str(text).map_err(|e| crate::error::toml_error(path, text, &e))?
        };
        if spec.vectors.is_relative() {
            if let Some(dir) = path.parent() {
                spec.vectors = dir.join(&spec.vectors);
            }
        }
        if spec.add.is_empty() && spec.ablate.is_empty() {
            return Err(Error::Config(format!("{}: intervention has no `add` or `ablate` entries", path.display())));
        }
        Ok(spec)
    }

    /// Builds the hook set for `model`, checking hook names, layers and vector shapes.
    pub fn build(&self, model: &Model) -> Result<HookSet> {
        let path = &self.vectors;
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(path, model.device())
            .map_err(|e| Error::File(format!("{}: {}", path.display(), crate::error::first_line(&e.to_string()))))?;
        let d = model.config.hidden_size;
        let n_layers = model.config.num_layers;
        let vector = |name: &str| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| {
                let mut have: Vec<&String> = tensors.keys().collect();
                have.sort();
                Error::File(format!("{}: no tensor `{name}` (has: {have:?})", path.display()))
            })?;
            let t = t.to_dtype(candle_core::DType::F32)?.flatten_all()?;
            if t.dim(0)? != d {
                return Err(Error::File(format!(
                    "{}: tensor `{name}` has {} elements, the model's residual stream has {d}",
                    path.display(),
                    t.dim(0)?
                )));
            }
            // An inf or NaN vector would run and log garbage answers as if they were a result.
            if let Some(i) = t.to_vec1::<f32>()?.iter().position(|x| !x.is_finite()) {
                return Err(Error::File(format!("{}: tensor `{name}`: non-finite value at element {i}", path.display())));
            }
            Ok(t)
        };
        let point = |s: &str| -> Result<HookPoint> {
            let p: HookPoint = s.parse().map_err(|e: emlab_model::Error| Error::Config(format!("intervention: {e}")))?;
            if p.layer >= n_layers {
                return Err(Error::Config(format!("intervention: hook `{s}`: the model has {n_layers} layers")));
            }
            Ok(p)
        };
        let mut hooks = HookSet::new();
        for a in &self.ablate {
            let v = vector(&a.vector)?;
            match &a.hook {
                Some(h) => hooks.ablate(point(h)?, &v)?,
                None => hooks.ablate_everywhere(&v, n_layers)?,
            };
        }
        for a in &self.add {
            if !a.alpha.is_finite() {
                return Err(Error::Config(format!("intervention: alpha of `{}` is not finite", a.vector)));
            }
            let v = vector(&a.vector)?;
            let mut points = Vec::new();
            if let Some(h) = &a.hook {
                points.push(point(h)?);
            }
            for &l in &a.layers {
                points.push(point(&format!("blocks.{l}.hook_resid_post"))?);
            }
            if points.is_empty() {
                return Err(Error::Config(format!("intervention: add `{}` needs `hook` or `layers`", a.vector)));
            }
            for p in points {
                hooks.add(p, &v, a.alpha);
            }
        }
        Ok(hooks)
    }
}
