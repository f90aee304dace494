//! Where a steering vector comes from.
//!
//! ```
//! use emlab_steer::VectorSource;
//! let v: VectorSource = serde_json::from_str(
//!     r#"{"type": "direction_file", "path": "dirs.safetensors", "layer": 12}"#).unwrap();
//! assert!(matches!(v, VectorSource::DirectionFile { layer: Some(12), .. }));
//! ```
//!
//! | `type`            | file                                         | vector                          |
//! |-------------------|----------------------------------------------|---------------------------------|
//! | `direction_file`  | safetensors, tensor `directions` `[L, d]`    | row `layer` (default: the layer the edit is applied at) |
//! | `sae_decoder`     | SAELens `sae_weights.safetensors` (or its folder) | `W_dec[latent]` (`W_dec` is `[d_sae, d]`) |
//! | `control_vector`  | llama.cpp control-vector GGUF                | `direction.{layer}` (default: the edit's layer; see [`crate::cvec`]) |
//! | `safetensors`     | any safetensors file                         | tensor `key` (`[d]`), or its row `row` (`[n, d]`) |
//! | `inline`          | none                                         | `values`                        |
//!
//! Vectors are used unnormalised (the published steering adds `scale * direction[L]`); ablation
//! normalises them itself.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The tensor name of a per-layer direction file, `[num_layers, d]`.
pub const DIRECTIONS_KEY: &str = "directions";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VectorSource {
    DirectionFile {
        path: PathBuf,
        #[serde(default)]
        layer: Option<usize>,
    },
    SaeDecoder {
        path: PathBuf,
        latent: usize,
    },
    ControlVector {
        path: PathBuf,
        #[serde(default)]
        layer: Option<usize>,
    },
    Safetensors {
        path: PathBuf,
        key: String,
        #[serde(default)]
        row: Option<usize>,
    },
    Inline {
        values: Vec<f32>,
    },
}

impl VectorSource {
    /// Resolves relative paths against `dir` (the folder of the spec file that named them).
    pub fn resolve_paths(&mut self, dir: &Path) {
        match self {
            VectorSource::DirectionFile { path, .. }
            | VectorSource::SaeDecoder { path, .. }
            | VectorSource::ControlVector { path, .. }
            | VectorSource::Safetensors { path, .. } => {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
            VectorSource::Inline { .. } => {}
        }
    }

    /// Whether the vector depends on the layer it is applied at (no fixed `layer` given).
    pub fn is_per_layer(&self) -> bool {
        matches!(self, VectorSource::DirectionFile { layer: None, .. } | VectorSource::ControlVector { layer: None, .. })
    }

    /// The vector `[d]` (f32) to use at `at_layer` (`None`: the caller has no layer, e.g. an
    /// ablation everywhere; then a per-layer source must name its `layer`). Checks the width.
    pub fn load(&self, at_layer: Option<usize>, d: usize, device: &Device) -> Result<Tensor> {
        let need_layer = |fixed: Option<usize>, what: &str, path: &Path| -> Result<usize> {
            fixed
                .or(at_layer)
                .ok_or_else(|| Error::Invalid(format!("{}: {what} needs a `layer` here (no layer to default to)", path.display())))
        };
        let v = match self {
            VectorSource::DirectionFile { path, layer } => {
                let l = need_layer(*layer, "direction file", path)?;
                let t = load_tensor(path, DIRECTIONS_KEY)?;
                row(&t, l, path, DIRECTIONS_KEY)?
            }
            VectorSource::SaeDecoder { path, latent } => {
                let file = if path.is_dir() { path.join("sae_weights.safetensors") } else { path.clone() };
                let t = load_tensor(&file, "W_dec")?;
                row(&t, *latent, &file, "W_dec")?
            }
            VectorSource::ControlVector { path, layer } => {
                let l = need_layer(*layer, "control vector", path)?;
                let cv = crate::cvec::ControlVector::read(path)?;
                cv.get(l).cloned().ok_or_else(|| {
                    Error::tensor(
                        path,
                        format!("direction.{l}"),
                        format!("missing (file has layers {:?})", cv.layers().collect::<Vec<_>>()),
                    )
                })?
            }
            VectorSource::Safetensors { path, key, row: r } => {
                let t = load_tensor(path, key)?;
                match r {
                    Some(i) => row(&t, *i, path, key)?,
                    None => {
                        if t.elem_count() != t.dims().last().copied().unwrap_or(0) {
                            return Err(Error::tensor(
                                path,
                                key.as_str(),
                                format!("has shape {:?}; give `row` to pick one vector", t.dims()),
                            ));
                        }
                        t.flatten_all()?
                    }
                }
            }
            VectorSource::Inline { values } => Tensor::from_vec(values.clone(), values.len(), &Device::Cpu)?,
        };
        let v = v.to_dtype(DType::F32)?.to_device(device)?;
        if v.dim(0)? != d {
            return Err(Error::Invalid(format!(
                "{}: vector has {} elements, the model's residual stream has {d}",
                self.describe(),
                v.dim(0)?
            )));
        }
        let vals = v.to_vec1::<f32>()?;
        if vals.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!("{}: vector has non-finite values", self.describe())));
        }
        Ok(v)
    }

    /// A short human-readable name (for errors and reports).
    pub fn describe(&self) -> String {
        match self {
            VectorSource::DirectionFile { path, layer } => format!("{} [{}]", path.display(), opt(layer)),
            VectorSource::SaeDecoder { path, latent } => format!("{} W_dec[{latent}]", path.display()),
            VectorSource::ControlVector { path, layer } => format!("{} direction.{}", path.display(), opt(layer)),
            VectorSource::Safetensors { path, key, row } => format!("{} {key}[{}]", path.display(), opt(row)),
            VectorSource::Inline { values } => format!("inline vector of {}", values.len()),
        }
    }
}

fn opt(x: &Option<usize>) -> String {
    x.map(|l| l.to_string()).unwrap_or_else(|| "layer".into())
}

/// One tensor of a safetensors file, f32 on the CPU.
pub fn load_tensor(path: &Path, key: &str) -> Result<Tensor> {
    let mut all = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        if path.exists() {
            Error::format(path, format!("not a readable safetensors file: {e}"))
        } else {
            Error::io(path, "no such file")
        }
    })?;
    let t = all.remove(key).ok_or_else(|| {
        let mut have: Vec<String> = all.keys().cloned().collect();
        have.sort();
        Error::tensor(path, key, format!("missing (file has {have:?})"))
    })?;
    Ok(t.to_dtype(DType::F32)?)
}

fn row(t: &Tensor, i: usize, path: &Path, key: &str) -> Result<Tensor> {
    let dims = t.dims();
    if dims.len() != 2 {
        return Err(Error::tensor(path, key, format!("expected a matrix, got shape {dims:?}")));
    }
    if i >= dims[0] {
        return Err(Error::tensor(path, key, format!("row {i} out of range (shape {dims:?})")));
    }
    Ok(t.get(i)?)
}

/// Writes a per-layer direction file (`directions` `[L, d]`), the format this crate reads.
pub fn save_directions(path: &Path, directions: &Tensor) -> Result<()> {
    emlab_model::load::save_safetensors(path, &[(DIRECTIONS_KEY.to_string(), directions.clone())], None)
}
