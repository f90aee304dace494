//! emlab-interp: the interpretability stage. Activation capture into a sharded store
//! ([`acts`]), mean-difference directions with logit lens and controls ([`direction`]), SAE
//! training from a store and CE loss recovered with the SAE spliced in ([`splice`]), model
//! diffing through SAE latents with self-contained feature pages ([`diff`]), and a small
//! self-sampled corpus ([`corpus`]).
//!
//! ```
//! use emlab_interp::acts::RunningStats;
//! let mut s = RunningStats::new(2);
//! s.update(&[1.0, 10.0, 3.0, 10.0]);
//! assert_eq!(s.mean, vec![2.0, 10.0]);
//! assert_eq!(s.variance(), vec![1.0, 0.0]);
//! ```

pub mod acts;
pub mod corpus;
pub mod diff;
pub mod direction;
pub mod error;
pub mod html;
pub mod splice;
pub mod st;
pub mod text;

pub use error::{Error, Result};

/// Loads a model (GGUF file or HF folder) and, when given, applies a PEFT LoRA adapter folder.
pub fn load_lm(path: &std::path::Path, adapter: Option<&std::path::Path>) -> Result<emlab_model::lm::Lm> {
    let mut lm = emlab_model::lm::Lm::load(path, &Default::default())?;
    if let Some(a) = adapter {
        emlab_train::adapter::load_peft(&mut lm.model, a).map_err(|e| Error::Train(format!("{}: {e}", a.display())))?;
    }
    Ok(lm)
}
