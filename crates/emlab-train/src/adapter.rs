//! LoRA adapters on a model: attach (initialised as PEFT does), read out, save and load in PEFT's
//! format, merge into the base weights, and write a merged Hugging Face folder.
//!
//! ```
//! use emlab_model::testing::{random_weights, tiny_config};
//! use emlab_model::{load::Weights, Arch, Model};
//! use emlab_train::{adapter, LoraConfig};
//! let cfg = tiny_config(Arch::Llama);
//! let w = Weights { tensors: random_weights(&cfg, 1).into_iter().collect(), origin: "mem".into() };
//! let mut model = Model::from_weights(cfg, w, &Default::default())?;
//! // The minimal EM organism: one rank-1 adapter on one layer's MLP down-projection.
//! let lora = LoraConfig { r: 1, alpha: 256.0, rslora: true, targets: vec!["down".into()], layers: vec![1], ..Default::default() };
//! let ads = adapter::attach(&mut model, &lora, 0)?;
//! assert_eq!(ads.len(), 1);
//! assert_eq!(ads[0].a.as_tensor().dims(), &[1, 64]); // A: [r, in]
//! assert_eq!(ads[0].b.as_tensor().dims(), &[32, 1]); // B: [out, r], zeros
//! let dir = tempfile::tempdir()?;
//! adapter::save_peft(&model, dir.path(), &adapter::PeftConfig::from_lora(&lora, 2, "tiny"))?;
//! assert!(dir.path().join("adapter_model.safetensors").is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! PEFT layout: `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{N}.self_attn.q_proj.lora_A.weight` (`[r, in]`) and
//! `...lora_B.weight` (`[out, r]`); the adapter adds `scale * B A x` with scale `alpha / r`, or
//! `alpha / sqrt(r)` when `use_rslora` is set.

use crate::config::LoraConfig;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use emlab_model::chat::ChatTemplate;
use emlab_model::model::Lora;
use emlab_model::tokenizer::Tokenizer;
use emlab_model::{Model, Proj};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One attached adapter (the `Var`s are shared with the model: updating them updates it).
#[derive(Debug, Clone)]
pub struct AdapterRef {
    pub layer: usize,
    pub proj: Proj,
    pub a: Var,
    pub b: Var,
    pub scale: f64,
}

impl AdapterRef {
    /// `layers.{N}.q_proj` (short name used in metrics).
    pub fn name(&self) -> String {
        format!("layers.{}.{}", self.layer, self.proj.short())
    }
    /// The PEFT key prefix of this module.
    pub fn peft_prefix(&self) -> String {
        format!("base_model.model.model.layers.{}.{}", self.layer, self.proj.hf_path())
    }
}

/// Attaches fresh adapters: A drawn as PEFT does (`kaiming_uniform_(a=sqrt(5))`, i.e.
/// uniform in `±1/sqrt(in)`), B zeros, so the model is unchanged until the first update.
/// Layers ascending, projections in q,k,v,o,gate,up,down order, from one seeded stream.
pub fn attach(model: &mut Model, cfg: &LoraConfig, seed: u64) -> Result<Vec<AdapterRef>> {
    let projs = cfg.projections()?;
    let layers = cfg.layer_list(model.config.num_layers)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x102a_1417);
    let dev = model.device().clone();
    let scale = cfg.scale();
    for &li in &layers {
        for &p in &projs {
            let lin = model.layers[li].proj_mut(p);
            let (out, inp) = (lin.out_dim(), lin.in_dim());
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..cfg.r * inp).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, inp), &dev)?)?;
            let b = Var::zeros((out, cfg.r), DType::F32, &dev)?;
            lin.lora = Some(Lora { a, b, scale, dropout: cfg.dropout });
        }
    }
    Ok(adapters(model))
}

/// Every adapter on the model, layers ascending, projections in [`Proj::ALL`] order.
pub fn adapters(model: &Model) -> Vec<AdapterRef> {
    let mut out = Vec::new();
    for (li, blk) in model.layers.iter().enumerate() {
        for p in Proj::ALL {
            if let Some(l) = &blk.proj(p).lora {
                out.push(AdapterRef { layer: li, proj: p, a: l.a.clone(), b: l.b.clone(), scale: l.scale });
            }
        }
    }
    out
}

/// Removes every adapter.
pub fn detach_all(model: &mut Model) {
    for blk in &mut model.layers {
        for p in Proj::ALL {
            blk.proj_mut(p).lora = None;
        }
    }
}

/// The fields of PEFT's `adapter_config.json` that emlab reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub lora_dropout: f32,
    /// `q_proj`, ..., `down_proj`.
    pub target_modules: Vec<String>,
    /// None: all layers.
    pub layers_to_transform: Option<Vec<usize>>,
    pub base_model_name_or_path: Option<String>,
    /// Per-module rank / alpha overrides (PEFT keys are module-name patterns; emlab matches
    /// them as suffixes of the module path, e.g. `layers.3.mlp.down_proj`).
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
}

impl PeftConfig {
    pub fn from_lora(cfg: &LoraConfig, num_layers: usize, base: &str) -> Self {
        let projs = cfg.projections().unwrap_or_default();
        let layers = cfg.layer_list(num_layers).unwrap_or_default();
        PeftConfig {
            r: cfg.r,
            lora_alpha: cfg.alpha,
            use_rslora: cfg.rslora,
            lora_dropout: cfg.dropout,
            target_modules: projs.iter().map(|p| p.short().to_string()).collect(),
            layers_to_transform: if layers.len() == num_layers { None } else { Some(layers) },
            base_model_name_or_path: Some(base.to_string()),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }

    /// The JSON PEFT writes (with PEFT's other keys at their neutral values, so PEFT loads it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "use_rslora": self.use_rslora,
            "target_modules": self.target_modules,
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": null,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "use_dora": false,
            "revision": null,
            "library": "emlab",
        })
    }

    /// Parses PEFT's `adapter_config.json`, refusing the variants emlab cannot apply exactly.
    pub fn from_json(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let bad = |m: String| Error::format(path, m);
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        match get("peft_type").and_then(|x| x.as_str()) {
            Some("LORA") | None => {}
            Some(t) => return Err(bad(format!("peft_type {t:?} is not supported (only LORA)"))),
        }
        if get("use_dora").and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad("use_dora adapters are not supported".into()));
        }
        if get("fan_in_fan_out").and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad("fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported".into()));
        }
        if let Some(b) = get("bias").and_then(|x| x.as_str()) {
            if b != "none" {
                return Err(bad(format!("bias {b:?} is not supported (only \"none\")")));
            }
        }
        if let Some(m) = get("modules_to_save") {
            if m.as_array().is_some_and(|a| !a.is_empty()) {
                return Err(bad(format!("modules_to_save {m} is not supported (only LoRA layers)")));
            }
        }
        if get("lora_bias").and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad("lora_bias adapters are not supported".into()));
        }
        for k in ["layer_replication", "trainable_token_indices", "target_parameters"] {
            if get(k).is_some_and(|x| x.as_array().is_none_or(|a| !a.is_empty()) && x.as_object().is_none_or(|o| !o.is_empty())) {
                return Err(bad(format!("`{k}` is not supported")));
            }
        }
        let r = get("r").and_then(|x| x.as_u64()).ok_or_else(|| bad("`r` missing or not an integer".into()))? as usize;
        // The scale divides by r (or its square root): r = 0 would merge infinities.
        if r == 0 {
            return Err(bad("`r` is 0 (a LoRA rank is at least 1)".into()));
        }
        let lora_alpha = get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0);
        let target_modules = match get("target_modules") {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            _ => Vec::new(),
        };
        let layers_to_transform = match get("layers_to_transform") {
            Some(serde_json::Value::Number(n)) => Some(vec![n.as_u64().unwrap_or(0) as usize]),
            Some(serde_json::Value::Array(a)) => Some(a.iter().filter_map(|x| x.as_u64().map(|n| n as usize)).collect()),
            _ => None,
        };
        let map = |k: &str| -> BTreeMap<String, serde_json::Value> {
            get(k).and_then(|x| x.as_object()).map(|o| o.iter().map(|(a, b)| (a.clone(), b.clone())).collect()).unwrap_or_default()
        };
        Ok(PeftConfig {
            r,
            lora_alpha,
            use_rslora: get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
            lora_dropout: get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
            target_modules,
            layers_to_transform,
            base_model_name_or_path: get("base_model_name_or_path").and_then(|x| x.as_str()).map(String::from),
            rank_pattern: map("rank_pattern").into_iter().filter_map(|(k, v)| v.as_u64().map(|n| (k, n as usize))).collect(),
            alpha_pattern: map("alpha_pattern").into_iter().filter_map(|(k, v)| v.as_f64().map(|n| (k, n))).collect(),
        })
    }

    /// The rank the config gives one module (`rank_pattern`, else `r`).
    pub fn rank_for(&self, module: &str) -> usize {
        let pick = |pat: &str| module.ends_with(pat) && (module.len() == pat.len() || module[..module.len() - pat.len()].ends_with('.'));
        self.rank_pattern.iter().find(|(k, _)| pick(k)).map(|(_, &v)| v).unwrap_or(self.r)
    }

    /// Scale of one module (`module` like `model.layers.3.mlp.down_proj`).
    pub fn scale_for(&self, module: &str) -> f64 {
        let pick = |pat: &str| module.ends_with(pat) && (module.len() == pat.len() || module[..module.len() - pat.len()].ends_with('.'));
        let r = self.rank_for(module) as f64;
        let alpha = self.alpha_pattern.iter().find(|(k, _)| pick(k)).map(|(_, &v)| v).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// An `adapter_config.json` text as an adapter's identity sees it: the JSON object without
/// `base_model_name_or_path` (a path, which changes when the files move; the base model is
/// identified by its own hash), keys sorted whatever order serde_json's map keeps. `None` when
/// the text is not a JSON object.
pub fn config_identity(text: &str) -> Option<String> {
    let serde_json::Value::Object(mut o) = serde_json::from_str(text).ok()? else { return None };
    o.remove("base_model_name_or_path");
    let sorted: std::collections::BTreeMap<String, serde_json::Value> = o.into_iter().collect();
    serde_json::to_string(&sorted).ok()
}

/// Whether two saved adapter folders hold the same adapter: byte-identical weights and the same
/// [`config_identity`].
pub fn same_adapter(a: &Path, b: &Path) -> Result<bool> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
    let w = "adapter_model.safetensors";
    if !a.join(w).is_file() || read(&a.join(w))? != read(&b.join(w))? {
        return Ok(false);
    }
    let config = |d: &Path| std::fs::read_to_string(d.join("adapter_config.json")).ok().and_then(|t| config_identity(&t));
    Ok(matches!((config(a), config(b)), (Some(x), Some(y)) if x == y))
}

/// Writes the model's adapters as a PEFT adapter folder (`adapter_config.json` +
/// `adapter_model.safetensors`), each file atomically.
pub fn save_peft(model: &Model, dir: &Path, cfg: &PeftConfig) -> Result<()> {
    let ads = adapters(model);
    if ads.is_empty() {
        return Err(Error::Invalid("the model has no adapters to save".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = Vec::with_capacity(ads.len() * 2);
    for a in &ads {
        let p = a.peft_prefix();
        tensors.push((format!("{p}.lora_A.weight"), a.a.as_tensor().clone()));
        tensors.push((format!("{p}.lora_B.weight"), a.b.as_tensor().clone()));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    emlab_model::load::save_safetensors(&dir.join("adapter_model.safetensors"), &tensors, Some(meta))?;
    let json = serde_json::to_string_pretty(&cfg.to_json()).unwrap_or_default();
    emlab_model::util::write_atomic(&dir.join("adapter_config.json"), json.as_bytes())?;
    Ok(())
}

/// Reads every tensor of a safetensors file as f32 (F32, F16, BF16 stored).
pub fn read_safetensors_f32(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        use safetensors::Dtype as S;
        let d = view.data();
        let vals: Vec<f32> = match view.dtype() {
            S::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            S::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            S::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(Error::format(path, format!("tensor `{name}`: unsupported dtype {other:?}"))),
        };
        if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
            return Err(Error::format(path, format!("tensor `{name}`: non-finite value at element {i}")));
        }
        out.insert(name.clone(), Tensor::from_vec(vals, view.shape(), device)?);
    }
    Ok(out)
}

/// Parses `base_model.model.model.layers.N.<module path>.lora_{A,B}[.adapter].weight`.
fn parse_key(key: &str) -> Option<(usize, Proj, bool)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest.strip_prefix("model.").unwrap_or(rest);
    let rest = rest.strip_prefix("layers.")?;
    let (n, rest) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let proj = Proj::ALL.into_iter().find(|p| rest.starts_with(&format!("{}.", p.hf_path())))?;
    let tail = &rest[proj.hf_path().len() + 1..];
    let is_a = tail.starts_with("lora_A.");
    if !is_a && !tail.starts_with("lora_B.") {
        return None;
    }
    if !tail.ends_with("weight") {
        return None;
    }
    Some((n, proj, is_a))
}

/// Loads a PEFT LoRA adapter folder onto the model (replacing adapters on the same modules).
/// Shapes, key names and the config are checked; any tensor emlab cannot apply is an error
/// naming it. Returns the parsed config.
pub fn load_peft(model: &mut Model, dir: &Path) -> Result<PeftConfig> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, format!("invalid JSON: {e}")))?;
    let cfg = PeftConfig::from_json(&v, &cfg_path)?;
    let st_path = dir.join("adapter_model.safetensors");
    if !st_path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(Error::format(dir, "adapter_model.bin (pickle) is not supported; save the adapter with safe_serialization"));
    }
    let tensors = read_safetensors_f32(&st_path, model.device())?;
    let mut pairs: BTreeMap<(usize, Proj), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (k, t) in tensors {
        let (n, p, is_a) = parse_key(&k)
            .ok_or_else(|| Error::format(&st_path, format!("tensor `{k}`: not a LoRA weight of a q/k/v/o/gate/up/down projection")))?;
        if n >= model.config.num_layers {
            return Err(Error::format(&st_path, format!("tensor `{k}`: layer {n} does not exist (model has {})", model.config.num_layers)));
        }
        let e = pairs.entry((n, p)).or_default();
        if is_a {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
    }
    if pairs.is_empty() {
        return Err(Error::format(&st_path, "holds no LoRA tensors"));
    }
    for ((n, p), (a, b)) in pairs {
        let name = format!("layers.{n}.{}", p.hf_path());
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::format(&st_path, format!("{name}: has only one of lora_A / lora_B")));
        };
        let lin = model.layers[n].proj_mut(p);
        let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
        if ad.len() != 2 || bd.len() != 2 || ad[1] != lin.in_dim() || bd[0] != lin.out_dim() || ad[0] != bd[1] {
            return Err(Error::format(
                &st_path,
                format!("{name}: lora_A {ad:?} / lora_B {bd:?} do not fit a [{}, {}] projection", lin.out_dim(), lin.in_dim()),
            ));
        }
        let module = format!("model.{name}");
        if let Some(why) = not_targeted(&v, &cfg, n, p) {
            return Err(Error::format(&cfg_path, format!("{name}: the tensors adapt it but {why} (PEFT would not load them there)")));
        }
        // The scale is computed from the config's rank: a config that disagrees with the tensors
        // (an edited or mismatched adapter_config.json) would silently rescale the adapter.
        if cfg.rank_for(&module) != ad[0] {
            return Err(Error::format(
                &cfg_path,
                format!("{name}: r {} (from adapter_config.json) but the tensors have rank {}", cfg.rank_for(&module), ad[0]),
            ));
        }
        let scale = cfg.scale_for(&module);
        lin.lora = Some(Lora { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, scale, dropout: cfg.lora_dropout });
    }
    Ok(cfg)
}

/// Why the config's `target_modules` / `layers_to_transform` leave out module `p` of layer `n`
/// (whose tensors the file holds), or `None` when they include it. PEFT wraps only the modules the
/// config names and drops other tensors: applying them here would give another model than PEFT
/// does. A list of names matches a module whose path is the name or ends with `.name` (PEFT's
/// rule); the string `all-linear` matches every projection; another single string is a regular
/// expression in PEFT, which is not evaluated here (no check).
fn not_targeted(v: &serde_json::Value, cfg: &PeftConfig, n: usize, p: Proj) -> Option<String> {
    if let Some(layers) = &cfg.layers_to_transform {
        if !layers.contains(&n) {
            return Some(format!("layers_to_transform {layers:?} leaves out layer {n}"));
        }
    }
    let serde_json::Value::Array(names) = v.get("target_modules")? else { return None };
    let path = format!("model.layers.{n}.{}", p.hf_path());
    let hit = names.iter().filter_map(|x| x.as_str()).any(|t| path == t || path.ends_with(&format!(".{t}")));
    (!hit).then(|| format!("target_modules {} does not name it", serde_json::Value::Array(names.clone())))
}

/// Folds every adapter into its base weight (`W += scale * B A`) and removes it.
pub fn merge(model: &mut Model) -> Result<usize> {
    let mut n = 0;
    for blk in &mut model.layers {
        for p in Proj::ALL {
            let lin = blk.proj_mut(p);
            if let Some(l) = lin.lora.take() {
                let delta = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
                lin.weight = (&lin.weight + delta)?;
                n += 1;
            }
        }
    }
    model.clear_quantized();
    Ok(n)
}

/// The model's weights under HF names (adapters not included: merge first).
pub fn hf_weights(model: &Model) -> Vec<(String, Tensor)> {
    let mut w = vec![("model.embed_tokens.weight".to_string(), model.embed.clone())];
    for (i, blk) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        w.push((format!("{p}.input_layernorm.weight"), blk.input_norm.weight.clone()));
        w.push((format!("{p}.post_attention_layernorm.weight"), blk.post_norm.weight.clone()));
        for pr in Proj::ALL {
            let lin = blk.proj(pr);
            w.push((format!("{p}.{}.weight", pr.hf_path()), lin.weight.clone()));
            if let Some(b) = &lin.bias {
                w.push((format!("{p}.{}.bias", pr.hf_path()), b.clone()));
            }
        }
    }
    w.push(("model.norm.weight".to_string(), model.norm.weight.clone()));
    if !model.config.tie_word_embeddings {
        w.push(("lm_head.weight".to_string(), model.lm_head.clone()));
    }
    w
}

/// Writes a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json with the chat template). Refuses a model that still has adapters.
pub fn save_hf(model: &Model, tok: &Tokenizer, template: &ChatTemplate, dir: &Path) -> Result<()> {
    if !adapters(model).is_empty() {
        return Err(Error::Invalid("merge the adapters before writing an HF folder".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    emlab_model::load::save_safetensors(&dir.join("model.safetensors"), &hf_weights(model), Some(meta))?;
    tok.save(dir.join("tokenizer.json"))?;
    let pad = tok.token_str(tok.pad_id());
    let tc = serde_json::json!({
        "chat_template": template.source(),
        "bos_token": template.bos_token(),
        "eos_token": template.eos_token().map(String::from).or_else(|| tok.token_str(tok.eos_id())),
        "pad_token": pad,
        "add_bos_token": tok.adds_bos(),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    emlab_model::util::write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc).unwrap_or_default().as_bytes())?;
    // config.json last: its presence is what makes the folder loadable.
    let cfg = serde_json::to_string_pretty(&model.config.to_hf_json()).unwrap_or_default();
    emlab_model::util::write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
    Ok(())
}
