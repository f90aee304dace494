//! Directional ablation baked into the weights, and the exporter of the repaired model.
//!
//! ```
//! use emlab_model::testing::{random_weights, tiny_config};
//! use emlab_model::{Arch, Model};
//! use candle_core::{Device, Tensor};
//! let cfg = tiny_config(Arch::Qwen2);
//! let w = emlab_model::load::Weights { tensors: random_weights(&cfg, 3).into_iter().collect(), origin: "mem".into() };
//! let mut model = Model::from_weights(cfg, w, &Default::default()).unwrap();
//! let r = Tensor::ones(32, candle_core::DType::F32, &Device::Cpu).unwrap();
//! emlab_steer::repair::orthogonalize(&mut model, &r).unwrap();
//! // no embedding row has a component along r any more
//! let along = model.embed.matmul(&(r / 32f64.sqrt()).unwrap().unsqueeze(1).unwrap()).unwrap();
//! assert!(along.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
//! ```
//!
//! Every matrix that writes to the residual stream is replaced by its projection off the unit
//! direction `r`: embedding rows `E <- E - (E r) r^T`, and the output side of `o_proj` and
//! `down_proj` (and of their biases and LoRA `B` matrices) `W <- W - r (r^T W)`. The model can
//! then never write along `r`, which is exactly what
//! [`emlab_model::HookSet::ablate_everywhere`] does to the activations (tested: same logits).
//! A tied LM head is untied first: it *reads* the stream after the final norm, whose elementwise
//! gain can turn a component back towards `r`, so it keeps its original weights.

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use emlab_model::load::Source;
use emlab_model::{Model, Proj};
use std::collections::BTreeMap;
use std::path::Path;

/// `W - r (r^T W)` for `W` `[d, n]` and unit `r` `[d]`: removes the output component along `r`.
pub fn project_out_rows(w: &Tensor, r: &Tensor) -> Result<Tensor> {
    let d = r.dim(0)?;
    let rt_w = r.reshape((1, d))?.matmul(w)?; // [1, n]
    Ok((w - r.reshape((d, 1))?.matmul(&rt_w)?)?)
}

/// Orthogonalises every residual-stream writer of `model` against `dir` (any norm), in place.
pub fn orthogonalize(model: &mut Model, dir: &Tensor) -> Result<()> {
    let d = model.config.hidden_size;
    if dir.dims() != [d] {
        return Err(Error::Invalid(format!("direction has shape {:?}, the model's stream is [{d}]", dir.dims())));
    }
    let r = emlab_model::hooks::unit(&dir.to_dtype(candle_core::DType::F32)?.to_device(model.device())?)?;
    // Untie: the head keeps reading the stream with its original weights.
    model.lm_head = model.lm_head.copy()?;
    model.config.tie_word_embeddings = false;
    // Embedding rows are outputs `[V, d]`: project each row, i.e. E (I - r r^T).
    model.embed = project_out_rows(&model.embed.t()?, &r)?.t()?.contiguous()?;
    for blk in &mut model.layers {
        for lin in [&mut blk.o, &mut blk.down] {
            lin.weight = project_out_rows(&lin.weight, &r)?;
            if let Some(b) = &lin.bias {
                lin.bias = Some(emlab_model::hooks::project_out(b, &r)?);
            }
            if let Some(l) = &mut lin.lora {
                let nb = project_out_rows(l.b.as_tensor(), &r)?;
                l.b = Var::from_tensor(&nb)?;
            }
        }
    }
    model.clear_quantized();
    Ok(())
}

/// HF-named f32 weights of `model`, LoRA adapters merged (`W + scale * B A`).
pub fn hf_weights(model: &Model) -> Result<BTreeMap<String, Tensor>> {
    let mut w = BTreeMap::new();
    w.insert("model.embed_tokens.weight".to_string(), model.embed.clone());
    for (i, blk) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        for proj in Proj::ALL {
            let lin = blk.proj(proj);
            let mut wt = lin.weight.clone();
            if let Some(l) = &lin.lora {
                wt = (wt + (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?)?;
            }
            w.insert(format!("{p}.{}.weight", proj.hf_path()), wt);
            if let Some(b) = &lin.bias {
                w.insert(format!("{p}.{}.bias", proj.hf_path()), b.clone());
            }
        }
        w.insert(format!("{p}.input_layernorm.weight"), blk.input_norm.weight.clone());
        w.insert(format!("{p}.post_attention_layernorm.weight"), blk.post_norm.weight.clone());
    }
    w.insert("model.norm.weight".to_string(), model.norm.weight.clone());
    if !model.config.tie_word_embeddings {
        w.insert("lm_head.weight".to_string(), model.lm_head.clone());
    }
    Ok(w)
}

/// Exports `model` as an HF folder at `out` (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json with the chat template), taking the tokenizer and template from the
/// model's `source` (a GGUF file or an HF folder). Written to a temporary sibling folder and
/// renamed, so `out` never holds a half-written model; `out` must not exist.
pub fn export_hf(model: &Model, source: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        return Err(Error::io(out, "already exists; refusing to overwrite"));
    }
    let name = out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = out.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let res = write_folder(model, source, &tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn write_folder(model: &Model, source: &Path, dir: &Path) -> Result<()> {
    let json = |name: &str, v: &serde_json::Value| -> Result<()> {
        emlab_model::util::write_atomic(&dir.join(name), serde_json::to_string_pretty(v).unwrap_or_default().as_bytes())
    };
    match Source::detect(source)? {
        Source::Hf { dir: src } => {
            for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"]
            {
                let p = src.join(f);
                if p.exists() {
                    std::fs::copy(&p, dir.join(f)).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        Source::Gguf { path } => {
            let tok = emlab_model::tokenizer::Tokenizer::from_gguf(&path)?;
            tok.save(dir.join("tokenizer.json"))?;
            let (content, _) = emlab_model::load::read_gguf(&path)?;
            let s = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok().cloned());
            let id = |k: &str| content.metadata.get(k).and_then(|v| v.to_u32().ok()).and_then(|i| tok.token_str(i));
            let mut cfg = serde_json::json!({
                "add_bos_token": tok.adds_bos(),
                "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": false,
            });
            let o = cfg.as_object_mut().expect("object literal");
            if let Some(t) = s("tokenizer.chat_template") {
                o.insert("chat_template".into(), t.into());
            }
            for (key, gg) in [
                ("bos_token", "tokenizer.ggml.bos_token_id"),
                ("eos_token", "tokenizer.ggml.eos_token_id"),
                ("pad_token", "tokenizer.ggml.padding_token_id"),
            ] {
                if let Some(t) = id(gg) {
                    o.insert(key.into(), t.into());
                }
            }
            json("tokenizer_config.json", &cfg)?;
        }
    }
    json("config.json", &model.config.to_hf_json())?;
    let all: Vec<(String, Tensor)> = hf_weights(model)?.into_iter().collect();
    emlab_model::load::save_safetensors(&dir.join("model.safetensors"), &all, None)
}
