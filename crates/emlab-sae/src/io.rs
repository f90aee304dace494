//! Save / load SAEs in the SAELens directory layout.
//!
//! ```no_run
//! # fn main() -> emlab_sae::Result<()> {
//! let sae = emlab_sae::load_sae("runs/sae/blocks.15.hook_resid_post")?;
//! emlab_sae::save_sae("/tmp/copy", &sae, None)?;
//! # Ok(()) }
//! ```
//!
//! A directory holds:
//! - `cfg.json`: SAELens 6.x inference config (`architecture` "topk" / "jumprelu" /
//!   "standard", `d_in`, `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`,
//!   `normalize_activations` = "none" (emlab folds the normalisation into the
//!   weights), `reshape_activations`, `k` + `rescale_acts_by_decoder_norm` for
//!   topk, and `metadata` {`sae_lens_version`, `hook_name`, `model_name`, ...}).
//!   Pre-6.0 keys (`hook_name`, `model_name`, `activation_fn_str`,
//!   `activation_fn_kwargs`) are written too so older readers find them; SAELens
//!   6 ignores unknown top-level keys.
//! - `sae_weights.safetensors`: `W_enc` [d_in, d_sae], `W_dec` [d_sae, d_in],
//!   `b_enc` [d_sae], `b_dec` [d_in], plus `threshold` [d_sae] for jumprelu.
//! - optionally `sparsity.safetensors`: `sparsity` [d_sae], log10 firing density.
//!
//! Matched against SAELens 6.52.0 (`sae_lens/saes/{sae,topk_sae,jumprelu_sae,
//! batchtopk_sae}.py` and `loading/pretrained_sae_loaders.py`). The loader also
//! reads pre-6.0 configs (TopK as `activation_fn_str: "topk"` with
//! `activation_fn_kwargs.k`), F16 / BF16 / F64 weights, `log_threshold`, and
//! topk SAEs saved with `rescale_acts_by_decoder_norm` (folded at load).

use crate::error::{Result, SaeError};
use crate::sae::{transpose, Activation, Sae, SaeMeta};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
pub const SPARSITY_FILE: &str = "sparsity.safetensors";
/// The SAELens release whose format this module writes.
pub const SAELENS_FORMAT_VERSION: &str = "6.52.0";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Metadata key (in `cfg.json`'s `metadata` and in each safetensors header) shared by the files
/// of one [`save_sae`]: a reader that finds different ids holds files of two saves.
pub const WRITE_ID_KEY: &str = "emlab_write_id";

/// The temporary name a file is written under before it is renamed into place.
fn staged(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp-partial");
    PathBuf::from(s)
}

/// Writes `bytes` to the staged name of `path` and syncs it; [`publish`] renames it into place.
fn stage(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    let tmp = staged(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| SaeError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| SaeError::io(&tmp, e))?;
    Ok(tmp)
}

fn publish(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| SaeError::io(path, e))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SaeError::io(path, e)),
        _ => Ok(()),
    }
}

/// An id unique to one save (time, process and a counter): nothing secret, only distinct.
fn new_write_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{t:x}-{:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether `dir` is an emlab activation store (`index.json` of format `emlab-acts-*`, or its
/// shards): an SAE written into it would mix two kinds of file in one folder.
fn is_activation_store(dir: &Path) -> bool {
    if dir.join("acts-00000.safetensors").exists() {
        return true;
    }
    let Ok(text) = std::fs::read(dir.join("index.json")) else { return false };
    serde_json::from_slice::<Value>(&text)
        .ok()
        .and_then(|v| v.get("format").and_then(Value::as_str).map(|f| f.starts_with("emlab-acts")))
        .unwrap_or(false)
}

/// Checks that an SAE may be written into `dir` (missing, or a folder that is not an
/// activation store). Commands call it before training, [`save_sae`] again before writing.
pub fn check_sae_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    if dir.exists() && !dir.is_dir() {
        return Err(SaeError::format(dir, "exists and is not a folder (an SAE is a folder: cfg.json + sae_weights.safetensors)"));
    }
    if is_activation_store(dir) {
        return Err(SaeError::format(
            dir,
            "is an activation store (index.json, acts-*.safetensors); writing an SAE into it would mix the two: choose another output folder",
        ));
    }
    Ok(())
}

fn serialize(path: &Path, tensors: Vec<(&str, Vec<usize>, Vec<u8>)>, write_id: &str) -> Result<Vec<u8>> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (*n, v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| SaeError::format(path, format!("cannot build tensor: {e}")))?;
    let meta = std::collections::HashMap::from([(WRITE_ID_KEY.to_string(), write_id.to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| SaeError::format(path, format!("cannot serialise: {e}")))
}

/// The write id in a safetensors header, if any.
fn file_write_id(bytes: &[u8]) -> Option<String> {
    let (_, m) = SafeTensors::read_metadata(bytes).ok()?;
    m.metadata().as_ref()?.get(WRITE_ID_KEY).cloned()
}

/// Refuses a file whose write id differs from `cfg.json`'s (files of two emlab saves, e.g. a
/// read racing a save). A file or config without an id was written by another tool (or an
/// older emlab, or edited by hand) and is taken as it is.
fn check_write_id(cfg_id: Option<&str>, bytes: &[u8], path: &Path, cpath: &Path) -> Result<()> {
    let (Some(want), Some(got)) = (cfg_id, file_write_id(bytes)) else { return Ok(()) };
    if got != want {
        return Err(SaeError::format(
            path,
            format!("was not written together with {} (files of two different saves): save or train the SAE again", cpath.display()),
        ));
    }
    Ok(())
}

/// The cfg.json document for `sae`.
pub fn config_json(sae: &Sae) -> Value {
    let mut meta = Map::new();
    meta.insert("sae_lens_version".into(), json!(SAELENS_FORMAT_VERSION));
    meta.insert("sae_lens_training_version".into(), Value::Null);
    meta.insert("emlab_version".into(), json!(env!("CARGO_PKG_VERSION")));
    meta.insert("hook_name".into(), json!(sae.meta.hook_name));
    meta.insert("model_name".into(), json!(sae.meta.model_name));
    meta.insert("hook_head_index".into(), Value::Null);
    for (k, v) in &sae.meta.extra {
        meta.entry(k.clone()).or_insert(v.clone());
    }
    let mut cfg = json!({
        "architecture": sae.activation.architecture(),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": Value::Object(meta),
        // pre-6.0 readers
        "hook_name": sae.meta.hook_name,
        "model_name": sae.meta.model_name,
        "activation_fn_str": if matches!(sae.activation, Activation::TopK{..}) { "topk" } else { "relu" },
        "activation_fn_kwargs": {},
    });
    if let Activation::TopK { k } = sae.activation {
        cfg["k"] = json!(k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
        cfg["activation_fn_kwargs"] = json!({ "k": k });
    }
    cfg
}

/// Saves `sae` (and optionally per-latent log10 densities) into directory `dir` (created if
/// missing; an activation store is refused, see [`check_sae_dir`]).
///
/// Replacing an SAE is safe against a kill at any point: every file is first written in full
/// under a temporary name (the old SAE stays loadable meanwhile), then `cfg.json` is removed,
/// the weights (and sparsity) renamed into place and the new `cfg.json` renamed in last. A
/// folder whose `cfg.json` exists therefore has that save's weights; every file carries the
/// save's id ([`WRITE_ID_KEY`]) and [`load_sae`] refuses files of two saves. A sparsity file
/// of an earlier save is removed when `sparsity` is `None`.
pub fn save_sae(dir: impl AsRef<Path>, sae: &Sae, sparsity: Option<&[f32]>) -> Result<()> {
    let dir = dir.as_ref();
    check_sae_dir(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| SaeError::io(dir, e))?;
    let id = new_write_id();
    let (d, m) = (sae.d_in, sae.d_sae);
    let wpath = dir.join(WEIGHTS_FILE);
    let spath = dir.join(SPARSITY_FILE);
    let cpath = dir.join(CFG_FILE);
    let mut tensors = vec![
        ("W_enc", vec![d, m], f32_bytes(&sae.w_enc())),
        ("W_dec", vec![m, d], f32_bytes(&sae.w_dec)),
        ("b_enc", vec![m], f32_bytes(&sae.b_enc)),
        ("b_dec", vec![d], f32_bytes(&sae.b_dec)),
    ];
    if let Activation::JumpReLU { threshold } = &sae.activation {
        tensors.push(("threshold", vec![m], f32_bytes(threshold)));
    }
    let sparsity_tmp = match sparsity {
        Some(s) => {
            if s.len() != m {
                return Err(SaeError::format(&spath, format!("tensor `sparsity` needs {m} values, got {}", s.len())));
            }
            Some(stage(&spath, &serialize(&spath, vec![("sparsity", vec![m], f32_bytes(s))], &id)?)?)
        }
        None => None,
    };
    let weights_tmp = stage(&wpath, &serialize(&wpath, tensors, &id)?)?;
    let mut cfg = config_json(sae);
    cfg["metadata"][WRITE_ID_KEY] = json!(id);
    let cfg_tmp = stage(&cpath, serde_json::to_string_pretty(&cfg).expect("json values serialise").as_bytes())?;
    // Everything is on disk; from here on only renames. Without cfg.json the folder is not
    // an SAE, so no reader pairs the old config with the new weights.
    remove_if_present(&cpath)?;
    publish(&weights_tmp, &wpath)?;
    match &sparsity_tmp {
        Some(t) => publish(t, &spath)?,
        None => remove_if_present(&spath)?,
    }
    publish(&cfg_tmp, &cpath)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| SaeError::io(path, e))
}

/// Reads one tensor as f32, checking its shape. Errors name the file and tensor.
fn tensor_f32(st: &SafeTensors, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|_| {
        let mut names = st.names();
        names.sort();
        SaeError::format(path, format!("missing tensor `{name}` (file has {names:?})"))
    })?;
    if t.shape() != shape {
        return Err(SaeError::format(path, format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape())));
    }
    to_f32(t.dtype(), t.data()).map_err(|msg| SaeError::format(path, format!("tensor `{name}`: {msg}")))
}

fn to_f32(dtype: Dtype, b: &[u8]) -> std::result::Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => return Err(format!("dtype {other:?} is not a float type (F32, F16, BF16, F64)")),
    })
}

fn get_usize(cfg: &Value, key: &str, path: &Path) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .filter(|&v| v > 0)
        .map(|v| v as usize)
        .ok_or_else(|| SaeError::format(path, format!("`{key}` must be a positive integer, got {}", cfg.get(key).unwrap_or(&Value::Null))))
}

fn get_str<'a>(cfg: &'a Value, keys: &[&str]) -> Option<&'a str> {
    for k in keys {
        if let Some(s) = cfg.get(*k).and_then(Value::as_str) {
            return Some(s);
        }
        if let Some(s) = cfg.get("metadata").and_then(|m| m.get(*k)).and_then(Value::as_str) {
            return Some(s);
        }
    }
    None
}

/// Loads an SAE from a SAELens directory.
pub fn load_sae(dir: impl AsRef<Path>) -> Result<Sae> {
    let dir = dir.as_ref();
    let cpath = dir.join(CFG_FILE);
    if !cpath.exists() && dir.join(WEIGHTS_FILE).exists() {
        return Err(SaeError::format(
            dir,
            format!(
                "has {WEIGHTS_FILE} but no {CFG_FILE} (a save was interrupted, or the folder is incomplete): save or train the SAE again"
            ),
        ));
    }
    let text = read(&cpath)?;
    let cfg: Value =
        serde_json::from_slice(&text).map_err(|e| SaeError::format(&cpath, format!("invalid JSON at line {}: {e}", e.line())))?;
    if !cfg.is_object() {
        return Err(SaeError::format(&cpath, "expected a JSON object"));
    }
    let d_in = get_usize(&cfg, "d_in", &cpath)?;
    let d_sae = get_usize(&cfg, "d_sae", &cpath)?;
    let arch = cfg.get("architecture").and_then(Value::as_str).unwrap_or("standard");
    let act_fn = get_str(&cfg, &["activation_fn", "activation_fn_str"]).unwrap_or("relu");
    let k_of = || -> Result<usize> {
        cfg.get("k")
            .or_else(|| cfg.get("activation_fn_kwargs").and_then(|a| a.get("k")))
            .and_then(Value::as_u64)
            .map(|k| k as usize)
            .filter(|&k| k >= 1 && k <= d_sae)
            .ok_or_else(|| SaeError::format(&cpath, format!("topk SAE needs `k` in 1..={d_sae}")))
    };
    enum Kind {
        TopK(usize),
        Jump,
        Relu,
    }
    let kind = match (arch, act_fn) {
        ("topk", _) | ("standard", "topk") => Kind::TopK(k_of()?),
        ("jumprelu", _) => Kind::Jump,
        ("standard", "relu") => Kind::Relu,
        (a, f) => {
            return Err(SaeError::format(
                &cpath,
                format!("unsupported architecture `{a}` with activation `{f}` (supported: topk, jumprelu, standard/relu)"),
            ))
        }
    };
    match cfg.get("normalize_activations") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(other) => {
            return Err(SaeError::format(
                &cpath,
                format!(
                    "normalize_activations = {other} is not supported: fold the scaling factor into the weights \
                     (SAELens fold_activation_norm_scaling_factor) and save with \"none\""
                ),
            ))
        }
    }
    let apply_b_dec = cfg.get("apply_b_dec_to_input").and_then(Value::as_bool).unwrap_or(true);

    let wpath = dir.join(WEIGHTS_FILE);
    let bytes = read(&wpath)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| SaeError::format(&wpath, format!("not a safetensors file: {e}")))?;
    check_write_id(cfg_write_id(&cfg), &bytes, &wpath, &cpath)?;
    let w_enc = tensor_f32(&st, &wpath, "W_enc", &[d_in, d_sae])?;
    let mut w_dec = tensor_f32(&st, &wpath, "W_dec", &[d_sae, d_in])?;
    let mut b_enc = tensor_f32(&st, &wpath, "b_enc", &[d_sae])?;
    let b_dec = tensor_f32(&st, &wpath, "b_dec", &[d_in])?;
    for name in ["scaling_factor", "finetuning_scaling_factor"] {
        if let Ok(t) = st.tensor(name) {
            let v = to_f32(t.dtype(), t.data()).map_err(|m| SaeError::format(&wpath, format!("tensor `{name}`: {m}")))?;
            if v.iter().any(|&s| (s - 1.0).abs() > 1e-6) {
                return Err(SaeError::format(&wpath, format!("tensor `{name}` (finetuning scaling) is not supported")));
            }
        }
    }
    let activation = match kind {
        Kind::TopK(k) => Activation::TopK { k },
        Kind::Relu => Activation::ReLU,
        Kind::Jump => {
            let threshold = if st.tensor("threshold").is_ok() {
                tensor_f32(&st, &wpath, "threshold", &[d_sae])?
            } else if st.tensor("log_threshold").is_ok() {
                tensor_f32(&st, &wpath, "log_threshold", &[d_sae])?.into_iter().map(f32::exp).collect()
            } else {
                return Err(SaeError::format(&wpath, "jumprelu SAE has no tensor `threshold` (or `log_threshold`)"));
            };
            Activation::JumpReLU { threshold }
        }
    };
    for (name, v) in [("W_enc", &w_enc), ("W_dec", &w_dec), ("b_enc", &b_enc), ("b_dec", &b_dec)] {
        if let Some(p) = v.iter().position(|x| !x.is_finite()) {
            return Err(SaeError::format(&wpath, format!("tensor `{name}` has a non-finite value at flat index {p}")));
        }
    }
    let mut w_enc_t = transpose(&w_enc, d_in, d_sae);
    if matches!(activation, Activation::TopK { .. }) && cfg.get("rescale_acts_by_decoder_norm").and_then(Value::as_bool) == Some(true) {
        // SAELens scales pre-activations by ||W_dec[j]|| and activations by its
        // inverse; folding that (its _fold_norm_topk) gives an equivalent plain SAE.
        for j in 0..d_sae {
            let row = &mut w_dec[j * d_in..(j + 1) * d_in];
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-8);
            row.iter_mut().for_each(|v| *v /= norm);
            w_enc_t[j * d_in..(j + 1) * d_in].iter_mut().for_each(|v| *v *= norm);
            b_enc[j] *= norm;
        }
    }
    let mut meta = SaeMeta {
        hook_name: get_str(&cfg, &["hook_name", "hook_point"]).map(String::from),
        model_name: get_str(&cfg, &["model_name"]).map(String::from),
        extra: Map::new(),
    };
    if let Some(Value::Object(m)) = cfg.get("metadata") {
        for (k, v) in m {
            if !matches!(
                k.as_str(),
                "hook_name"
                    | "model_name"
                    | "sae_lens_version"
                    | "sae_lens_training_version"
                    | "emlab_version"
                    | "hook_head_index"
                    | WRITE_ID_KEY
            ) {
                meta.extra.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(Sae { d_in, d_sae, activation, apply_b_dec_to_input: apply_b_dec, w_enc_t, w_dec, b_enc, b_dec, meta })
}

/// Reads `sparsity.safetensors` if present (log10 firing density per latent).
pub fn load_sparsity(dir: impl AsRef<Path>, d_sae: usize) -> Result<Option<Vec<f32>>> {
    let path: PathBuf = dir.as_ref().join(SPARSITY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read(&path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| SaeError::format(&path, format!("not a safetensors file: {e}")))?;
    let cpath = dir.as_ref().join(CFG_FILE);
    if let Some(cfg) = std::fs::read(&cpath).ok().and_then(|t| serde_json::from_slice::<Value>(&t).ok()) {
        check_write_id(cfg_write_id(&cfg), &bytes, &path, &cpath)?;
    }
    tensor_f32(&st, &path, "sparsity", &[d_sae]).map(Some)
}

fn cfg_write_id(cfg: &Value) -> Option<&str> {
    cfg.get("metadata").and_then(|m| m.get(WRITE_ID_KEY)).and_then(Value::as_str)
}
