//! emlab-sae: sparse autoencoders on residual-stream activations, trained on
//! the CPU with a sparsity-exploiting hand-written backward pass.
//!
//! ```
//! use emlab_sae::{Architecture, MultiTrainer, TrainConfig, metrics};
//! let d = 8;
//! let x: Vec<f32> = (0..256 * d).map(|i| ((i * 7919 % 97) as f32 / 48.0) - 1.0).collect();
//! // Two SAEs (k = 2 and k = 4) trained from the same pass over the data.
//! let mut mt = MultiTrainer::new(vec![
//!     TrainConfig::new(d, 32, Architecture::TopK { k: 2 }),
//!     TrainConfig::new(d, 32, Architecture::TopK { k: 4 }),
//! ]).unwrap();
//! for batch in x.chunks(64 * d) {
//!     mt.step(batch).unwrap();
//! }
//! let saes = mt.to_saes().unwrap();
//! let report = metrics::evaluate(&saes[1], &x, 128).unwrap();
//! assert!(report.l0 <= 4.0);
//! ```
//!
//! Modules: [`sae`] (inference SAE: encode / decode / forward, normalisation
//! folding), [`train`] (TopK, BatchTopK, ReLU+L1 trainers, AuxK, Adam, multi-SAE
//! training), [`metrics`] (L0, explained variance about the mean, dead share, CE
//! loss recovered), [`io`] (SAELens directory format), [`tensor`] (candle
//! conversions), [`kernels`] (GEMM and selection kernels), [`device`] (TopK training
//! with candle tensors on a GPU or any candle device), [`sparse`] (its sparse gradient
//! accumulation).

pub mod device;
pub mod error;
pub mod io;
pub mod kernels;
pub mod metrics;
pub mod sae;
pub mod sparse;
pub mod tensor;
pub mod train;

pub use device::{AnyTrainer, DeviceTrainer};
pub use error::{Result, SaeError};
pub use io::{load_sae, load_sparsity, save_sae};
pub use sae::{Activation, Sae, SaeMeta, SparseCodes};
pub use train::{Architecture, Gradients, MultiTrainer, StepStats, TrainConfig, Trainer};
