//! emlab's model runtime.
//!
//! Loads Llama-family (SmolLM2) and Qwen2-family (Qwen2.5) instruct models from a GGUF file or a
//! Hugging Face folder into one model type, tokenizes and renders chat templates, and runs one
//! differentiable, hookable forward pass that serves generation, training, activation capture and
//! steering.

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
