//! Tiny random models that tests (ours and other crates') write themselves, in both formats.
//!
//! ```
//! use emlab_model::testing::{tiny_config, write_tiny_gguf};
//! use emlab_model::{Arch, Model};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tiny.gguf");
//! write_tiny_gguf(&path, &tiny_config(Arch::Llama), 7).unwrap();
//! let m = Model::load(&path, &Default::default()).unwrap();
//! assert_eq!(m.config.num_layers, 2);
//! ```
//!
//! The vocabulary is GPT-2 byte-level: the 256 byte symbols, a handful of merges, and the ChatML
//! special tokens, so the tiny models tokenize and render chat templates like the real ones.

use crate::config::{Arch, ModelConfig};
use crate::load::{permute_rows, save_safetensors};
use crate::{Error, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// The ChatML template our tiny models carry (same shape as SmolLM2's).
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Merges of the tiny vocabulary (beyond the 256 byte symbols).
const TINY_MERGES: &[(&str, &str)] = &[("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "t"), ("o", "u"), ("i", "n")];

/// A 2-layer model small enough for finite differences. `vocab_size` matches [`tiny_vocab`].
pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: tiny_vocab().len(),
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: if arch == Arch::Qwen2 { 1_000_000.0 } else { 10_000.0 },
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: arch == Arch::Qwen2,
    }
}

/// GPT-2's byte -> printable-char map.
pub fn byte_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = ('!' as u32..='~' as u32).chain('¡' as u32..='¬' as u32).chain('®' as u32..='ÿ' as u32).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        map[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    map
}

/// Tokens of the tiny vocabulary with their GGUF token types (1 normal, 3 control).
pub fn tiny_vocab() -> Vec<(String, i32)> {
    let mut v: Vec<(String, i32)> = vec![("<|endoftext|>".into(), 3), ("<|im_start|>".into(), 3), ("<|im_end|>".into(), 3)];
    for c in byte_to_unicode() {
        v.push((c.to_string(), 1));
    }
    for (a, b) in TINY_MERGES {
        v.push((format!("{a}{b}"), 1));
    }
    v
}

/// Random HF-named f32 weights for `cfg`, deterministic in `seed`, scaled like an initialised
/// transformer (so activations stay O(1) through the layers).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = |shape: &[usize], std: f32| -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.732).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
    };
    let (d, h, g, hd, ff) = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size);
    let s = 1.0 / (d as f32).sqrt();
    let mut w = BTreeMap::new();
    w.insert("model.embed_tokens.weight".to_string(), t(&[cfg.vocab_size, d], 1.0));
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        w.insert(format!("{p}.self_attn.q_proj.weight"), t(&[h * hd, d], s));
        w.insert(format!("{p}.self_attn.k_proj.weight"), t(&[g * hd, d], s));
        w.insert(format!("{p}.self_attn.v_proj.weight"), t(&[g * hd, d], s));
        w.insert(format!("{p}.self_attn.o_proj.weight"), t(&[d, h * hd], s));
        if cfg.attention_bias {
            w.insert(format!("{p}.self_attn.q_proj.bias"), t(&[h * hd], 0.1));
            w.insert(format!("{p}.self_attn.k_proj.bias"), t(&[g * hd], 0.1));
            w.insert(format!("{p}.self_attn.v_proj.bias"), t(&[g * hd], 0.1));
        }
        w.insert(format!("{p}.mlp.gate_proj.weight"), t(&[ff, d], s));
        w.insert(format!("{p}.mlp.up_proj.weight"), t(&[ff, d], s));
        w.insert(format!("{p}.mlp.down_proj.weight"), t(&[d, ff], 1.0 / (ff as f32).sqrt()));
        let ones: Vec<f32> = (0..d).map(|j| 1.0 + 0.05 * ((j % 7) as f32 - 3.0)).collect();
        w.insert(format!("{p}.input_layernorm.weight"), Tensor::from_vec(ones.clone(), d, &Device::Cpu).expect("d"));
        w.insert(format!("{p}.post_attention_layernorm.weight"), Tensor::from_vec(ones, d, &Device::Cpu).expect("d"));
    }
    w.insert("model.norm.weight".to_string(), Tensor::ones(d, candle_core::DType::F32, &Device::Cpu).expect("d"));
    if !cfg.tie_word_embeddings {
        w.insert("lm_head.weight".to_string(), t(&[cfg.vocab_size, d], s));
    }
    w
}

fn hf_to_gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").unwrap_or(name);
    let (i, f) = rest.split_once('.').unwrap_or((rest, ""));
    let g = match f {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => other,
    };
    format!("blk.{i}.{g}")
}

/// Writes a GGUF file with the tiny vocabulary and chat template, weights stored as `dtype`
/// where the row width allows it (norms and biases stay F32, like real files).
pub fn write_gguf_model(path: &Path, cfg: &ModelConfig, weights: &BTreeMap<String, Tensor>, dtype: GgmlDType) -> Result<()> {
    use gguf_file::Value;
    let a = cfg.arch.name();
    let vocab = tiny_vocab();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String("emlab tiny test model".into())),
        (format!("{a}.block_count"), Value::U32(cfg.num_layers as u32)),
        (format!("{a}.context_length"), Value::U32(cfg.max_position_embeddings as u32)),
        (format!("{a}.embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(cfg.intermediate_size as u32)),
        (format!("{a}.attention.head_count"), Value::U32(cfg.num_heads as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(cfg.num_kv_heads as u32)),
        (format!("{a}.rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (format!("{a}.rope.dimension_count"), Value::U32(cfg.head_dim as u32)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(if cfg.arch == Arch::Qwen2 { "qwen2" } else { "smollm" }.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(vocab.iter().map(|(t, _)| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(vocab.iter().map(|(_, ty)| Value::I32(*ty)).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(TINY_MERGES.iter().map(|(x, y)| Value::String(format!("{x} {y}"))).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(TINY_CHAT_TEMPLATE.into())),
    ];
    md.sort_by(|x, y| x.0.cmp(&y.0));
    let mut qts: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in weights {
        let mut t = t.clone();
        if cfg.arch == Arch::Llama {
            if name.contains("q_proj") {
                t = permute_rows(&t, cfg.num_heads)?;
            } else if name.contains("k_proj") {
                t = permute_rows(&t, cfg.num_kv_heads)?;
            }
        }
        let is_matrix = t.rank() == 2;
        let dt = if is_matrix && t.dims()[1] % dtype.block_size() == 0 { dtype } else { GgmlDType::F32 };
        let q = QTensor::quantize(&t, dt).map_err(|e| Error::tensor(path, name.as_str(), e.to_string()))?;
        qts.push((hf_to_gguf_name(name), q));
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut buf, &md_refs, &t_refs).map_err(|e| Error::format(path, e.to_string()))?;
    crate::util::write_atomic(path, &buf.into_inner())
}

/// Writes a tiny random model as a GGUF file with F32 weights.
pub fn write_tiny_gguf(path: &Path, cfg: &ModelConfig, seed: u64) -> Result<()> {
    write_gguf_model(path, cfg, &random_weights(cfg, seed), GgmlDType::F32)
}

/// The tokenizer.json of the tiny vocabulary (byte-level BPE, ChatML specials).
pub fn tiny_tokenizer_json(cfg: &ModelConfig) -> serde_json::Value {
    let vocab = tiny_vocab();
    let map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, (t, _))| (t.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = vocab
        .iter()
        .enumerate()
        .filter(|(_, (_, ty))| *ty == 3)
        .map(|(i, (t, _))| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let _ = cfg;
    serde_json::json!({
        "version": "1.0",
        "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": map,
                  "merges": TINY_MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    })
}

/// Writes a tiny random model as an HF folder: config.json, model.safetensors (or two shards and
/// an index when `sharded`), tokenizer.json, tokenizer_config.json.
pub fn write_tiny_hf(dir: &Path, cfg: &ModelConfig, seed: u64, sharded: bool) -> Result<()> {
    write_hf_model(dir, cfg, &random_weights(cfg, seed), sharded)
}

/// Writes HF-named weights as an HF folder with the tiny tokenizer.
pub fn write_hf_model(dir: &Path, cfg: &ModelConfig, weights: &BTreeMap<String, Tensor>, sharded: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let w = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        crate::util::write_atomic(&p, serde_json::to_string_pretty(v).unwrap_or_default().as_bytes())
    };
    w("config.json", &cfg.to_hf_json())?;
    w("tokenizer.json", &tiny_tokenizer_json(cfg))?;
    w(
        "tokenizer_config.json",
        &serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                            "chat_template": TINY_CHAT_TEMPLATE, "add_bos_token": false}),
    )?;
    let all: Vec<(String, Tensor)> = weights.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if !sharded {
        return save_safetensors(&dir.join("model.safetensors"), &all, None);
    }
    let half = all.len() / 2;
    let shards = [("model-00001-of-00002.safetensors", &all[..half]), ("model-00002-of-00002.safetensors", &all[half..])];
    let mut map = serde_json::Map::new();
    for (file, part) in shards {
        save_safetensors(&dir.join(file), part, None)?;
        for (k, _) in part {
            map.insert(k.clone(), serde_json::json!(file));
        }
    }
    w("model.safetensors.index.json", &serde_json::json!({"metadata": {}, "weight_map": map}))
}

/// A tensor of `shape` with values uniform in `[lo, hi)` from a xorshift generator seeded by
/// `seed`, on the CPU: deterministic test inputs without another dependency.
pub fn uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).expect("shape matches the data")
}
