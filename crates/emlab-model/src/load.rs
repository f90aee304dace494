//! Weight loading from a GGUF file or a Hugging Face folder into one naming scheme.
//!
//! Whatever the source, [`load_weights`] returns f32 tensors under HF names
//! (`model.layers.{i}.self_attn.q_proj.weight`, shape `[out, in]`) in the *half-rotation* RoPE
//! layout. Llama-architecture GGUF files store the q/k rows permuted for interleaved rotary (the
//! llama.cpp converter does this); we undo that permutation here so the forward pass has one RoPE
//! form. qwen2 GGUF files and all safetensors already use the half-rotation layout.
//!
//! Quantized GGUF tensors (Q4_0 ... Q6_K) are dequantized to f32 at load: on CPU candle's
//! quantized kernels for several of these types are scalar and much slower than an f32 GEMM, and
//! training needs float weights anyway. Every tensor is checked for non-finite values in f32,
//! then cast to the requested dtype (f32 on the CPU, bf16 for a GPU's frozen base) on the CPU,
//! so only the final bytes travel to the device.

use crate::config::{Arch, ModelConfig};
use crate::{Error, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A single `.gguf` file.
    Gguf { path: PathBuf },
    /// An HF folder with `config.json`, safetensors weights and `tokenizer.json`.
    Hf { dir: PathBuf },
}

impl Source {
    /// A GGUF file or an HF folder; anything else is an error naming the path.
    pub fn detect(path: &Path) -> Result<Source> {
        if path.is_dir() {
            if !path.join("config.json").is_file() {
                return Err(Error::format(path, "folder has no config.json (expected an HF model folder)"));
            }
            return Ok(Source::Hf { dir: path.to_path_buf() });
        }
        if !path.exists() {
            return Err(Error::io(path, "no such file or folder"));
        }
        Ok(Source::Gguf { path: path.to_path_buf() })
    }
    pub fn path(&self) -> &Path {
        match self {
            Source::Gguf { path } => path,
            Source::Hf { dir } => dir,
        }
    }
}

/// Opens and parses the header of a GGUF file (checked as [`read_gguf_content`] does).
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::new(f);
    let content = read_gguf_content(&mut r, path)?;
    Ok((content, r))
}

/// Parses a GGUF header from the start of `r`, refusing what would make candle's parser or a
/// later tensor read panic, abort or allocate from a header field: a zero `general.alignment`
/// (a division by zero in the parser), and tensors with a zero dimension, an element count or
/// byte size that overflows, or more bytes than the whole file holds. `path` names the file in
/// errors.
pub fn read_gguf_content<R: Read + Seek>(r: &mut R, path: &Path) -> Result<gguf_file::Content> {
    let bad = |e: std::io::Error| Error::io(path, e);
    let file_len = r.seek(SeekFrom::End(0)).map_err(bad)?;
    r.seek(SeekFrom::Start(0)).map_err(bad)?;
    if gguf_alignment_is_zero(r) {
        return Err(Error::format(path, "not a readable GGUF file: general.alignment is 0"));
    }
    r.seek(SeekFrom::Start(0)).map_err(bad)?;
    let content = gguf_file::Content::read(r).map_err(|e| Error::format(path, format!("not a readable GGUF file: {e}")))?;
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let t = |m: String| Error::tensor(path, name.as_str(), m);
        if dims.contains(&0) {
            return Err(t(format!("shape {dims:?} has a zero dimension")));
        }
        let bytes = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .map(|n| n / info.ggml_dtype.block_size())
            .and_then(|blocks| blocks.checked_mul(info.ggml_dtype.type_size()));
        match bytes {
            None => return Err(t(format!("shape {dims:?} is too large (its size overflows)"))),
            Some(b) if b as u64 > file_len => return Err(t(format!("shape {dims:?} needs {b} bytes, the whole file has {file_len}"))),
            Some(_) => {}
        }
    }
    Ok(content)
}

/// Whether a GGUF header sets `general.alignment` to an integer 0. A scan of the metadata only;
/// anything malformed returns false and is left to the real parser to report.
fn gguf_alignment_is_zero<R: Read>(r: &mut R) -> bool {
    fn u32_of<R: Read>(r: &mut R) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn u64_of<R: Read>(r: &mut R) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn skip<R: Read>(r: &mut R, n: u64) -> Option<()> {
        (std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink()).ok()? == n).then_some(())
    }
    // GGUF v1 lengths are u32, v2 and v3 u64.
    fn len_of<R: Read>(r: &mut R, v1: bool) -> Option<u64> {
        if v1 {
            u32_of(r).map(u64::from)
        } else {
            u64_of(r)
        }
    }
    fn fixed_size(ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }
    fn skip_value<R: Read>(r: &mut R, ty: u32, v1: bool, depth: usize) -> Option<()> {
        if let Some(n) = fixed_size(ty) {
            return skip(r, n);
        }
        match ty {
            8 => {
                let n = len_of(r, v1)?;
                skip(r, n)
            }
            9 if depth < 8 => {
                let item = u32_of(r)?;
                let n = len_of(r, v1)?;
                match fixed_size(item) {
                    Some(sz) => skip(r, n.checked_mul(sz)?),
                    None => (0..n).try_for_each(|_| skip_value(r, item, v1, depth + 1)),
                }
            }
            _ => None,
        }
    }
    let scan = |r: &mut R| -> Option<bool> {
        if u32_of(r)? != 0x4655_4747 {
            return None;
        }
        let v1 = u32_of(r)? == 1;
        let _tensors = len_of(r, v1)?;
        let kvs = len_of(r, v1)?;
        for _ in 0..kvs {
            let klen = len_of(r, v1)?;
            let mut key = Vec::new();
            if klen != 17 {
                skip(r, klen)?;
            } else {
                r.by_ref().take(klen).read_to_end(&mut key).ok()?;
            }
            let ty = u32_of(r)?;
            if key == b"general.alignment" {
                let v: i64 = match ty {
                    0 | 1 => {
                        let mut b = [0u8; 1];
                        r.read_exact(&mut b).ok()?;
                        b[0] as i64
                    }
                    2 | 3 => {
                        let mut b = [0u8; 2];
                        r.read_exact(&mut b).ok()?;
                        u16::from_le_bytes(b) as i64
                    }
                    4 | 5 => u32_of(r)? as i64,
                    // Other types are ignored by the parser (default alignment).
                    _ => return Some(false),
                };
                return Some(v == 0);
            }
            skip_value(r, ty, v1, 0)?;
        }
        Some(false)
    };
    scan(r).unwrap_or(false)
}

/// GGUF tensor name -> HF tensor name.
fn gguf_to_hf_name(name: &str) -> Option<String> {
    let direct = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, field) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let hf = match field {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{idx}.{hf}"))
}

/// Undo llama.cpp's q/k row permutation: GGUF rows are ordered (head, pair, half) for
/// interleaved rotary; HF rows are (head, half, pair). Works for weights `[rows, in]` and
/// biases `[rows]`.
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / n_head;
    let x = t.reshape((n_head, hd / 2, 2, rest))?.transpose(1, 2)?.contiguous()?;
    Ok(x.reshape(dims)?)
}

/// The inverse of [`unpermute_rows`], used when writing llama GGUF files.
pub fn permute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / n_head;
    let x = t.reshape((n_head, 2, hd / 2, rest))?.transpose(1, 2)?.contiguous()?;
    Ok(x.reshape(dims)?)
}

/// The GGUF tensor types emlab dequantizes (every type real llama/qwen2 files use).
pub fn supported_gguf_dtype(d: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(d, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K)
}

/// All weights of a model, f32, under HF names, half-rotation RoPE layout.
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    /// The file each tensor came from (for error messages).
    pub origin: PathBuf,
}

impl Weights {
    /// Removes and returns a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| Error::tensor(&self.origin, name, "missing"))?;
        if t.dims() != shape {
            return Err(Error::tensor(&self.origin, name, format!("shape {:?}, expected {:?}", t.dims(), shape)));
        }
        Ok(t)
    }
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Reads a GGUF file once: its config from the header, then all weights (dequantized, checked
/// in f32, stored as `dtype` on `device`).
pub fn load_gguf_weights(path: &Path, device: &Device, dtype: DType) -> Result<(ModelConfig, Weights)> {
    let (content, mut reader) = read_gguf(path)?;
    let cfg = ModelConfig::from_gguf(&content, path)?;
    let cfg = &cfg;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    for name in names {
        let info = &content.tensor_infos[name];
        if !supported_gguf_dtype(info.ggml_dtype) {
            return Err(Error::tensor(path, name.as_str(), format!("unsupported tensor type {:?}", info.ggml_dtype)));
        }
        let Some(hf) = gguf_to_hf_name(name) else {
            // rope_freqs and friends: not used by these families.
            continue;
        };
        let mut t = read_gguf_tensor_f32(&content, &mut reader, path, name)?;
        if cfg.arch == Arch::Llama {
            if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
                t = unpermute_rows(&t, cfg.num_heads)?;
            } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
                t = unpermute_rows(&t, cfg.num_kv_heads)?;
            }
        }
        if !t.is_contiguous() {
            t = t.contiguous()?;
        }
        if let Some(bad) = first_non_finite(&t)? {
            return Err(Error::tensor(path, name.as_str(), format!("non-finite value at element {bad}")));
        }
        tensors.insert(hf, t.to_dtype(dtype)?.to_device(device)?);
    }
    Ok((cfg.clone(), Weights { tensors, origin: path.to_path_buf() }))
}

/// Reads one GGUF tensor and dequantizes it to f32 (shape as candle reports it: GGUF's
/// dimension order reversed, i.e. `[rows, cols]` for a matrix).
pub fn read_gguf_tensor_f32(content: &gguf_file::Content, reader: &mut BufReader<File>, path: &Path, name: &str) -> Result<Tensor> {
    let info = content.tensor_infos.get(name).ok_or_else(|| Error::tensor(path, name, "missing"))?;
    if !supported_gguf_dtype(info.ggml_dtype) {
        return Err(Error::tensor(path, name, format!("unsupported tensor type {:?}", info.ggml_dtype)));
    }
    let q = info.read(reader, content.tensor_data_offset, &Device::Cpu).map_err(|e| Error::tensor(path, name, e.to_string()))?;
    q.dequantize(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32)).map_err(|e| Error::tensor(path, name, format!("dequantize: {e}")))
}

fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().position(|x| !x.is_finite()))
}

/// The safetensors files of an HF folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::format(dir, "no model.safetensors nor model.safetensors.index.json"));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
    let mut files: Vec<String> = Vec::with_capacity(map.len());
    for (tensor, f) in map {
        let Some(f) = f.as_str() else {
            return Err(Error::format(&index, format!("weight_map entry of `{tensor}` is {f}, not a shard file name")));
        };
        // A shard is a file of this folder: an absolute path or `..` would read (and, through
        // hashing and exports, copy) files from anywhere on the machine.
        let p = Path::new(f);
        let inside = !f.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if !inside {
            return Err(Error::format(
                &index,
                format!("weight_map entry of `{tensor}` names shard {f:?}, which is outside the model folder (shards must be plain file names in it)"),
            ));
        }
        files.push(f.to_string());
    }
    files.sort();
    files.dedup();
    let out: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    for f in &out {
        if !f.is_file() {
            return Err(Error::io(f, "shard listed in model.safetensors.index.json is missing"));
        }
    }
    Ok(out)
}

/// Loads all weights of an HF folder (any float dtype; checked in f32, stored as `dtype`).
pub fn load_hf_weights(dir: &Path, device: &Device, dtype: DType) -> Result<Weights> {
    let mut tensors = HashMap::new();
    for file in hf_weight_files(dir)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(&file, format!("not a readable safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let t = safetensor_to_f32(&view).map_err(|m| Error::tensor(&file, name.as_str(), m))?;
            if let Some(bad) = first_non_finite(&t)? {
                return Err(Error::tensor(&file, name.as_str(), format!("non-finite value at element {bad}")));
            }
            tensors.insert(name, t.to_dtype(dtype)?.to_device(device)?);
        }
    }
    Ok(Weights { tensors, origin: dir.to_path_buf() })
}

fn safetensor_to_f32(view: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Tensor, String> {
    use safetensors::Dtype as S;
    let shape = view.shape().to_vec();
    let data = view.data();
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = match view.dtype() {
        S::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        S::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        S::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        S::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
        d => return Err(format!("unsupported dtype {d:?} (expected F32, F16, BF16 or F64)")),
    };
    if vals.len() != n {
        return Err(format!("holds {} values, shape {:?} needs {}", vals.len(), shape, n));
    }
    Tensor::from_vec(vals, shape, &Device::Cpu).map_err(|e| e.to_string())
}

/// Writes f32 tensors to a safetensors file atomically (temp file + rename).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        owned.push((name.clone(), bytes, t.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::tensor(path, n.as_str(), e.to_string()))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::format(path, e.to_string()))?;
    crate::util::write_atomic(path, &bytes)
}
