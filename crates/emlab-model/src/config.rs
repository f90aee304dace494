//! Model hyper-parameters, read from GGUF metadata or an HF `config.json`.
//!
//! Both supported families share one shape: pre-norm decoder blocks with RMSNorm, grouped-query
//! attention with rotary embeddings, and a SwiGLU MLP. They differ only in data: Qwen2 has biases on
//! q/k/v, a different rope theta and eps.

use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The model families emlab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama family (SmolLM2, Llama 2/3 shapes): no attention biases.
    Llama,
    /// Qwen2 family (Qwen2.5, Qwen2.5-Coder): biases on q, k and v.
    Qwen2,
}

impl Arch {
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Hyper-parameters of a decoder-only transformer of either family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    /// Residual-stream width `d`.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub attention_bias: bool,
}

impl ModelConfig {
    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::format(source, m));
        if self.num_layers == 0 || self.hidden_size == 0 || self.num_heads == 0 || self.num_kv_heads == 0 {
            return bad("config has a zero dimension (layers, hidden size or heads)".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!("{} heads is not a multiple of {} kv heads", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} is odd: rotary embeddings need an even head dim", self.head_dim));
        }
        // Header fields size allocations and products (`heads * head_dim`, parameter counts):
        // an absurd value must be an error here, not an overflow panic or a terabyte
        // allocation later. The caps are far above any model of these families (vocabularies
        // ~152k, widths ~16k, ~126 layers).
        const MAX_WIDTH: usize = 1 << 20;
        const MAX_LAYERS: usize = 1 << 12;
        let widths = [
            ("vocab size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("head dim", self.head_dim),
            ("heads x head dim", self.num_heads.saturating_mul(self.head_dim)),
        ];
        for (what, v) in widths {
            if v > MAX_WIDTH {
                return bad(format!("{what} {v} is implausibly large (at most {MAX_WIDTH}): corrupt header?"));
            }
        }
        if self.num_layers > MAX_LAYERS {
            return bad(format!("{} layers is implausibly many (at most {MAX_LAYERS}): corrupt header?", self.num_layers));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!("rms norm eps {} must be finite and >= 0", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope theta {} must be finite and > 0", self.rope_theta));
        }
        if self.max_position_embeddings == 0 {
            return bad("context length (max_position_embeddings) is 0".into());
        }
        Ok(())
    }

    /// Parameters of the transformer body (excluding the tied output layer), for FLOP counts.
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        let attn = d * q + 2 * d * kv + q * d + if self.attention_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * d * self.intermediate_size;
        let per_layer = attn + mlp + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * d };
        self.num_layers * per_layer + self.vocab_size * d + d + head
    }

    /// The config of a GGUF file or an HF folder, without reading weights (a header or
    /// `config.json`): for checks that should fail before a model is loaded.
    pub fn read(path: &Path) -> Result<Self> {
        match crate::load::Source::detect(path)? {
            crate::load::Source::Gguf { path } => Self::from_gguf(&crate::load::read_gguf(&path)?.0, &path),
            crate::load::Source::Hf { dir } => {
                let p = dir.join("config.json");
                Self::from_hf_json(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?, &p)
            }
        }
    }

    /// Reads the config from GGUF metadata (`{arch}.block_count`, ...).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let arch_s = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::format(path, "GGUF has no `general.architecture`"))?
            .clone();
        let arch = Arch::parse(&arch_s)
            .ok_or_else(|| Error::format(path, format!("unsupported architecture `{arch_s}` (emlab runs llama and qwen2)")))?;
        let get = |k: &str| -> Result<&gguf_file::Value> {
            md.get(&format!("{arch_s}.{k}")).ok_or_else(|| Error::format(path, format!("GGUF metadata lacks `{arch_s}.{k}`")))
        };
        let as_usize = |k: &str| -> Result<usize> {
            let v = get(k)?;
            let n = match v {
                gguf_file::Value::U8(x) => *x as u64,
                gguf_file::Value::U16(x) => *x as u64,
                gguf_file::Value::U32(x) => *x as u64,
                gguf_file::Value::U64(x) => *x,
                gguf_file::Value::I32(x) if *x >= 0 => *x as u64,
                gguf_file::Value::I64(x) if *x >= 0 => *x as u64,
                _ => return Err(Error::format(path, format!("`{arch_s}.{k}` is not a non-negative integer"))),
            };
            Ok(n as usize)
        };
        let as_f64 = |k: &str, default: f64| -> Result<f64> {
            match md.get(&format!("{arch_s}.{k}")) {
                None => Ok(default),
                // Shortest decimal of the f32, so 1e-5 stored as f32 reads back as 1e-5.
                Some(gguf_file::Value::F32(x)) => Ok(format!("{x}").parse().unwrap_or(*x as f64)),
                Some(gguf_file::Value::F64(x)) => Ok(*x),
                Some(_) => Err(Error::format(path, format!("`{arch_s}.{k}` is not a float"))),
            }
        };
        let hidden = as_usize("embedding_length")?;
        let heads = as_usize("attention.head_count")?;
        let kv_heads = as_usize("attention.head_count_kv").unwrap_or(heads);
        let head_dim = match as_usize("rope.dimension_count") {
            Ok(h) => h,
            Err(_) => hidden / heads.max(1),
        };
        let embd = content.tensor_infos.get("token_embd.weight").ok_or_else(|| Error::tensor(path, "token_embd.weight", "missing"))?;
        let vocab = match as_usize("vocab_size") {
            Ok(v) => v,
            Err(_) => {
                *embd.shape.dims().first().ok_or_else(|| Error::tensor(path, "token_embd.weight", "is a scalar, expected a matrix"))?
            }
        };
        let default_theta = match arch {
            Arch::Llama => 10_000.0,
            Arch::Qwen2 => 1_000_000.0,
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: as_usize("feed_forward_length")?,
            num_layers: as_usize("block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: as_f64("attention.layer_norm_rms_epsilon", 1e-6)?,
            rope_theta: as_f64("rope.freq_base", default_theta)?,
            max_position_embeddings: as_usize("context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads an HF `config.json` (`model_type` "llama" or "qwen2").
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: Option<String>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rms_norm_eps: Option<f64>,
            rope_theta: Option<f64>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
            attention_bias: Option<bool>,
            rope_scaling: Option<serde_json::Value>,
            /// transformers >= 5 writes `rope_parameters: {rope_theta, rope_type}` instead.
            rope_parameters: Option<serde_json::Value>,
        }
        let hf: Hf = serde_json::from_str(text).map_err(|e| Error::format(path, format!("invalid config.json: {e}")))?;
        let mt = hf.model_type.clone().unwrap_or_default();
        let arch =
            Arch::parse(&mt).ok_or_else(|| Error::format(path, format!("unsupported model_type `{mt}` (emlab runs llama and qwen2)")))?;
        if let Some(rs) = &hf.rope_scaling {
            if !rs.is_null() {
                return Err(Error::format(path, "rope_scaling is not supported yet (plain RoPE only)"));
            }
        }
        let mut rope_theta = hf.rope_theta;
        if let Some(rp) = hf.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            let ty = rp.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
            if ty != "default" {
                return Err(Error::format(path, format!("rope_type `{ty}` is not supported yet (plain RoPE only)")));
            }
            if let Some(t) = rp.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = rope_theta.or(Some(t));
            }
        }
        let cfg = ModelConfig {
            arch,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            attention_bias: hf.attention_bias.unwrap_or(arch == Arch::Qwen2),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The `config.json` an HF folder written by emlab carries.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (archs, extra) = match self.arch {
            Arch::Llama => ("LlamaForCausalLM", serde_json::json!({"attention_bias": false, "mlp_bias": false})),
            Arch::Qwen2 => ("Qwen2ForCausalLM", serde_json::json!({"use_sliding_window": false})),
        };
        let mut v = serde_json::json!({
            "architectures": [archs],
            "model_type": self.arch.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }
}
