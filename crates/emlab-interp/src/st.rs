//! Minimal f32 safetensors read/write on plain vectors (what every file of this crate holds).

use crate::error::{write_atomic, Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One named f32 tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes f32 tensors atomically; checks that each shape matches its data.
pub fn save(path: &Path, tensors: &[(&str, &[usize], &[f32])], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        let want: usize = shape.iter().product();
        if want != data.len() {
            return Err(Error::format(path, format!("tensor `{name}`: shape {shape:?} needs {want} values, got {}", data.len())));
        }
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for x in data.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        owned.push((name.to_string(), shape.to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format(path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads every tensor of a file as f32 (F32 only: what this crate writes).
pub fn load(path: &Path) -> Result<BTreeMap<String, F32Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::format(path, format!("tensor `{name}`: dtype {:?}, expected F32", view.dtype())));
        }
        let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, F32Tensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// Reads the string metadata of a safetensors file.
pub fn metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
