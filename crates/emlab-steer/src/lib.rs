//! Steering, ablation, interop and detection on the residual stream.
//!
//! * [`vectors`]: where a steering vector comes from (a per-layer direction file, an SAELens
//!   decoder row, a llama.cpp control vector, any safetensors tensor).
//! * [`spec`]: an [`Intervention`] (add / ablate / ablate-then-add, per-layer coefficients) as data
//!   (JSON or TOML), built into an [`emlab_model::HookSet`].
//! * [`repair`]: directional ablation baked into the weights (every matrix that writes to the
//!   residual stream is orthogonalised against `r`), exported as an HF folder.
//! * [`cvec`]: llama.cpp control-vector GGUF files, read and written.
//! * [`persona`]: the persona score, a generation-free detector.
//! * [`sweep`]: steering-strength sweeps with a same-norm random control.
//! * [`evaluate`]: those sweeps with every point a real sampled + judged evaluation.
//! * [`realign`]: further training on N truthful rows and re-evaluation, for several N.
//!
//! ```
//! use emlab_model::testing::{random_weights, tiny_config};
//! use emlab_model::{Arch, Model};
//! use emlab_steer::spec::Intervention;
//! let cfg = tiny_config(Arch::Llama);
//! let w = emlab_model::load::Weights {
//!     tensors: random_weights(&cfg, 1).into_iter().collect(),
//!     origin: "mem".into(),
//! };
//! let model = Model::from_weights(cfg, w, &Default::default()).unwrap();
//! let spec: Intervention = serde_json::from_str(r#"{"edits": [
//!     {"kind": "add", "layers": [1], "coef": 4.0,
//!      "vector": {"type": "inline", "values": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
//!        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
//!        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}}]}"#).unwrap();
//! let hooks = spec.build(&model, None).unwrap();
//! assert_eq!(hooks.edits("blocks.1.hook_resid_post".parse().unwrap()).len(), 1);
//! ```
//!
//! Errors are [`emlab_model::Error`]: one line naming the file or tensor at fault.

pub mod cvec;
pub mod evaluate;
pub mod persona;
pub mod realign;
pub mod repair;
pub mod spec;
pub mod sweep;
pub mod vectors;

pub use emlab_model::{Error, Result};
pub use spec::{EditKind, EditSpec, Intervention};
pub use vectors::VectorSource;
