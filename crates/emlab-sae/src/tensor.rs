//! Conversions between candle tensors and the row-major f32 batches this crate
//! works on, so the model code can splice an SAE into a forward pass.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use emlab_sae::tensor::{rows_from_tensor, rows_to_tensor};
//! let t = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((2, 3, 2)).unwrap();
//! let (rows, d) = rows_from_tensor(&t).unwrap();       // [6, 2] flattened
//! assert_eq!((rows.len(), d), (12, 2));
//! let back = rows_to_tensor(&rows, t.dims(), &Device::Cpu).unwrap();
//! assert_eq!(back.dims(), &[2, 3, 2]);
//! ```

use crate::error::{Result, SaeError};
use candle_core::{DType, Device, Tensor};

/// Flattens a tensor [..., d] into row-major f32 rows (any float dtype, any device)
/// and returns them with `d`.
pub fn rows_from_tensor(t: &Tensor) -> Result<(Vec<f32>, usize)> {
    let d = *t.dims().last().ok_or_else(|| SaeError::Candle("scalar tensor has no feature dimension".into()))?;
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| SaeError::Candle(e.to_string()))?;
    Ok((v, d))
}

/// Builds an f32 tensor of shape `dims` from row-major data.
pub fn rows_to_tensor(rows: &[f32], dims: &[usize], device: &Device) -> Result<Tensor> {
    let want: usize = dims.iter().product();
    if want != rows.len() {
        return Err(SaeError::Shape(format!("{} values cannot fill a tensor of shape {dims:?}", rows.len())));
    }
    Tensor::from_slice(rows, dims, device).map_err(|e| SaeError::Candle(e.to_string()))
}

impl crate::Sae {
    /// `forward` on a candle tensor [..., d_in] (same shape, dtype and device back).
    pub fn forward_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let (rows, d) = rows_from_tensor(t)?;
        if d != self.d_in {
            return Err(SaeError::Shape(format!("tensor last dim {d} != SAE d_in {}", self.d_in)));
        }
        let out = self.forward(&rows)?;
        rows_to_tensor(&out, t.dims(), t.device())?.to_dtype(t.dtype()).map_err(|e| SaeError::Candle(e.to_string()))
    }
}
