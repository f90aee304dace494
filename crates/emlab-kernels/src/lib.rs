//! emlab's own CUDA kernels, as PTX text for candle's `CudaDevice::get_or_load_custom_func`.
//!
//! Built only with the `cuda` feature (nvcc at build time, `scripts/build-cuda.sh`); a CPU build
//! compiles this crate to nothing. The Rust side that launches them lives next to the code it
//! speeds up: `emlab_model::cuda_ops` (fused training ops with hand-written backward passes),
//! `emlab_train::cuda_optim` (multi-tensor AdamW) and `emlab_sae::sparse` (sparse gradients).
//!
//! - `TRAIN` (`src/train.cu`): RMSNorm forward / backward, scaled causal softmax forward /
//!   backward, half-rotation RoPE (the backward is the opposite rotation), SiLU(gate) * up
//!   forward / backward, cross-entropy forward / backward (f32 and bf16 inputs, f32 arithmetic);
//!   multi-tensor AdamW and sums of squares over tables of device pointers.
//! - `DECODE` (`src/decode.cu`): a decode step's attention over a batched KV cache (RoPE on the
//!   new key and query, the key/value write, online-softmax attention), reading the write column
//!   from device memory so that a captured CUDA graph replays every step.
//! - `SAE` (`src/sae.cu`): `out[ids[i]] += coef[i] * src[i / k]`, the sparse outer-product
//!   accumulation that replaces two dense `[d, m]` GEMMs of a TopK SAE step (atomic adds).

/// PTX of `src/train.cu`.
#[cfg(feature = "cuda")]
pub const TRAIN: &str = include_str!(concat!(env!("OUT_DIR"), "/train.ptx"));

/// PTX of `src/sae.cu`.
#[cfg(feature = "cuda")]
pub const SAE: &str = include_str!(concat!(env!("OUT_DIR"), "/sae.ptx"));

/// PTX of `src/decode.cu`.
#[cfg(feature = "cuda")]
pub const DECODE: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
