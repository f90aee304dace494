//! llama.cpp control vectors (GGUF), read and written.
//!
//! ```
//! use emlab_steer::cvec::ControlVector;
//! use candle_core::{Device, Tensor};
//! let mut cv = ControlVector::new("smollm2");
//! cv.insert(3, Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("cv.gguf");
//! cv.write(&p).unwrap();
//! let back = ControlVector::read(&p).unwrap();
//! assert_eq!(back.get(3).unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
//! ```
//!
//! # Layer numbering
//! llama.cpp (`common_control_vector_load_one` in `common/common.cpp`, `llama_adapter_cvec` in
//! `src/llama-adapter.cpp`, the `build_cvec(cur, il)` call at the end of every block of the model
//! graphs) reads the F32 1-D tensor `direction.N` into the slot of layer `N` and adds it to the
//! output of block `N`, counted from 0, right after the block's second residual add, at every
//! position. So
//!
//! > `direction.N`  ==  added at `blocks.N.hook_resid_post`
//!
//! and `N = 0` is rejected by llama.cpp: the output of block 0 cannot be steered through a control
//! vector. llama.cpp sums tensors named twice (and several files); it does not read the metadata
//! (`controlvector.model_hint`, `controlvector.layer_count`), which we write for people. The
//! vectors are added as they are (times llama.cpp's `--control-vector-scaled` strength), so an
//! export of `coef * v` reproduces our `add` edit exactly.

use crate::{Error, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// A control vector: one `[d]` vector per block output, keyed by the block index `N`
/// (`direction.N` == `blocks.N.hook_resid_post`).
#[derive(Debug, Clone)]
pub struct ControlVector {
    pub model_hint: String,
    directions: BTreeMap<usize, Tensor>,
}

impl ControlVector {
    pub fn new(model_hint: &str) -> Self {
        ControlVector { model_hint: model_hint.to_string(), directions: BTreeMap::new() }
    }

    /// Sets the vector added at `blocks.{layer}.hook_resid_post`. Layer 0 cannot be expressed in
    /// the format (llama.cpp rejects `direction.0`); vectors must all have the same width.
    pub fn insert(&mut self, layer: usize, v: Tensor) -> Result<()> {
        if layer == 0 {
            return Err(Error::Invalid("control vectors cannot steer blocks.0.hook_resid_post (llama.cpp rejects direction.0)".into()));
        }
        let v = v.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?;
        if let Some(d) = self.dim() {
            if v.dim(0)? != d {
                return Err(Error::Invalid(format!("control vector: layer {layer} has {} elements, others {d}", v.dim(0)?)));
            }
        }
        self.directions.insert(layer, v);
        Ok(())
    }

    pub fn get(&self, layer: usize) -> Option<&Tensor> {
        self.directions.get(&layer)
    }
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.directions.keys().copied()
    }
    pub fn dim(&self) -> Option<usize> {
        self.directions.values().next().map(|t| t.dims()[0])
    }
    pub fn is_empty(&self) -> bool {
        self.directions.is_empty()
    }

    /// Reads a control-vector GGUF. Accepts exactly what llama.cpp accepts: tensors named
    /// `direction.N` with `N >= 1`, F32, one-dimensional, all of one width (a repeated name is
    /// summed, as llama.cpp does).
    pub fn read(path: &Path) -> Result<Self> {
        // The checked header reader: a crafted header is an error, not a panic or an abort.
        let (content, mut f) = emlab_model::load::read_gguf(path)?;
        if let Some(a) = content.metadata.get("general.architecture") {
            if let Ok(a) = a.to_string() {
                if a != "controlvector" {
                    return Err(Error::format(path, format!("general.architecture is `{a}`, not `controlvector`")));
                }
            }
        }
        let hint = content.metadata.get("controlvector.model_hint").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
        let mut cv = ControlVector::new(&hint);
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let info = &content.tensor_infos[name];
            let n: usize = name
                .strip_prefix("direction.")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::tensor(path, name.as_str(), "not a `direction.N` tensor"))?;
            if n == 0 {
                return Err(Error::tensor(path, name.as_str(), "layer index 0 is invalid (llama.cpp rejects it)"));
            }
            if info.ggml_dtype != GgmlDType::F32 {
                return Err(Error::tensor(path, name.as_str(), format!("type {:?}, expected F32", info.ggml_dtype)));
            }
            if info.shape.rank() != 1 {
                return Err(Error::tensor(path, name.as_str(), format!("shape {:?}, expected 1-D", info.shape.dims())));
            }
            let t = content
                .tensor(&mut f, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .map_err(|e| Error::tensor(path, name.as_str(), e.to_string()))?;
            if let Some(i) = t.to_vec1::<f32>()?.iter().position(|x| !x.is_finite()) {
                return Err(Error::tensor(path, name.as_str(), format!("non-finite value at element {i}")));
            }
            let t = match cv.directions.get(&n) {
                Some(prev) => (prev + t)?,
                None => t,
            };
            cv.insert(n, t).map_err(|e| Error::tensor(path, name.as_str(), e.to_string()))?;
        }
        if cv.is_empty() {
            return Err(Error::format(path, "no direction tensors"));
        }
        Ok(cv)
    }

    /// Writes the GGUF llama.cpp loads with `--control-vector` (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        use gguf_file::Value;
        if self.is_empty() {
            return Err(Error::Invalid(format!("{}: refusing to write an empty control vector", path.display())));
        }
        let md: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("controlvector".into())),
            ("controlvector.model_hint", Value::String(self.model_hint.clone())),
            ("controlvector.layer_count", Value::U32(self.directions.len() as u32)),
        ];
        let mut qts = Vec::new();
        for (n, t) in &self.directions {
            // A NaN coefficient or vector would otherwise be written as a file that loads fine
            // and steers every answer into garbage.
            if let Some(i) = t.flatten_all()?.to_vec1::<f32>()?.iter().position(|x| !x.is_finite()) {
                return Err(Error::tensor(
                    path,
                    format!("direction.{n}"),
                    format!("non-finite value at element {i}; refusing to write it"),
                ));
            }
            let q = QTensor::quantize(t, GgmlDType::F32).map_err(|e| Error::tensor(path, format!("direction.{n}"), e.to_string()))?;
            qts.push((format!("direction.{n}"), q));
        }
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut buf, &md_refs, &t_refs).map_err(|e| Error::format(path, e.to_string()))?;
        emlab_model::util::write_atomic(path, &buf.into_inner())
    }

    /// The hook set adding `strength * direction.N` at `blocks.N.hook_resid_post`, as llama.cpp
    /// does with `--control-vector-scaled FILE strength`.
    pub fn hooks(&self, strength: f64, num_layers: usize, hidden: usize, device: &Device) -> Result<emlab_model::HookSet> {
        let mut h = emlab_model::HookSet::new();
        for (n, v) in &self.directions {
            if *n >= num_layers {
                return Err(Error::Invalid(format!("control vector: direction.{n} but the model has {num_layers} blocks")));
            }
            if v.dim(0)? != hidden {
                return Err(Error::Invalid(format!("control vector: width {} but the model's stream is {hidden}", v.dim(0)?)));
            }
            h.add(emlab_model::HookPoint::resid_post(*n), &v.to_device(device)?, strength);
        }
        Ok(h)
    }
}
