//! emlab's model runtime.
//!
//! Loads Llama-family (SmolLM2) and Qwen2-family (Qwen2.5) instruct models from a GGUF file or a
//! Hugging Face folder into one model type, tokenizes and renders chat templates, and runs one
//! differentiable, hookable forward pass that serves generation, training, activation capture and
//! steering.
//!
//! ```
//! use emlab_model::{lm::Lm, testing, Arch, Forward, HookPoint, HookSet, Logits};
//! // A tiny model written by the test helpers (any GGUF file or HF folder loads the same way).
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tiny.gguf");
//! testing::write_tiny_gguf(&path, &testing::tiny_config(Arch::Llama), 7)?;
//! let lm = Lm::load(&path, &Default::default())?;
//! let ids = candle_core::Tensor::new(&[[1u32, 2, 3]], lm.model.device())?; // [B, T]
//! // One forward pass: last-position logits, and the residual stream after block 1 recorded.
//! let mut hooks = HookSet::new();
//! let point: HookPoint = "blocks.1.hook_resid_post".parse()?;
//! hooks.capture(point);
//! let out = lm.model.forward(&ids, Forward { logits: Logits::Last, hooks: Some(&mut hooks), ..Default::default() })?;
//! assert_eq!(out.logits.unwrap().dims(), &[1, lm.model.config.vocab_size]);
//! assert_eq!(hooks.captured(point)[0].dims(), &[1, 3, lm.model.config.hidden_size]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod attention;
pub mod chat;
pub mod error;
pub mod tokenizer;

pub use error::{Error, Result};
pub mod config;
pub mod cpu_attention;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod decode;
pub mod decode_graph;
pub mod device;
pub mod fetch;
pub mod generate;
pub mod hooks;
pub mod int8;
pub mod int8_gemm;
pub mod lm;
pub mod load;
pub mod model;
pub mod ops;
pub mod testing;
pub mod util;
pub mod vmath;

pub use config::{Arch, ModelConfig};
pub use hooks::{HookKind, HookPoint, HookSet, Hooks};
pub use model::{BatchCache, Forward, ForwardOut, LoadOptions, Logits, Model, Proj, SeqCache};
