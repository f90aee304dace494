//! The transformer: one model type for the Llama and Qwen2 families, one forward pass.
//!
//! The same [`Model::forward`] serves training (differentiable end to end: only candle ops that
//! record a backward are used on the autograd path), generation (with a per-sequence KV cache),
//! activation capture and steering (through [`Hooks`]).
//!
//! ```no_run
//! # fn main() -> emlab_model::Result<()> {
//! use emlab_model::model::{Model, Forward, Logits};
//! use candle_core::{Device, Tensor};
//! let model = Model::load(std::path::Path::new("model.gguf"), &Default::default())?;
//! let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;      // [B=1, T=3]
//! let out = model.forward(&ids, Forward { logits: Logits::Last, ..Default::default() })?;
//! let logits = out.logits.unwrap();                            // [1, vocab]
//! # Ok(()) }
//! ```
//!
//! Shapes: `B` batch, `T` new tokens, `d` hidden size, `H`/`G` query/kv heads, `D` head dim.

use crate::config::ModelConfig;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::int8::Int8Matrix;
use crate::load::{load_gguf_weights, load_hf_weights, Source, Weights};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::Path;

/// A low-rank adapter on one linear layer: `y += scale * B (A dropout(x))`.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    /// `alpha / r` (LoRA) or `alpha / sqrt(r)` (rsLoRA).
    pub scale: f64,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f32,
}

/// A linear layer `y = x W^T + b` with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, f32, frozen.
    pub weight: Tensor,
    /// `[out]`
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
    /// An int8 copy for fast low-batch inference (no gradients flow through it).
    quant: Option<std::sync::Arc<Int8Matrix>>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, lora: None, quant: None }
    }
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `x`: `[N, in]` -> `[N, out]`.
    fn forward(&self, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        if let Some(l) = &self.lora {
            let (a, b) = (l.a.as_tensor(), l.b.as_tensor());
            // With gradients in play (training, or adapters that are `Var`s) off the CPU's f32
            // kernels: the whole layer as one graph node (`ops::lora_linear`), the dropout mask
            // (same draws as `dropout`) held by the op.
            if (x.track_op() || a.track_op() || b.track_op())
                && (self.quant.is_none() || x.track_op())
                && crate::ops::wanted_linear(x, &self.weight, a, b)
                && self.bias.as_ref().is_none_or(|t| t.dtype() == self.weight.dtype())
            {
                let mask = match rng {
                    Some(rng) if l.dropout > 0.0 => Some(dropout_mask(x.dims(), l.dropout, rng, x.device())?),
                    _ => None,
                };
                return Ok(crate::ops::lora_linear(x, &self.weight, self.bias.as_ref(), a, b, l.scale, mask.as_ref())?);
            }
        }
        let mut y = match &self.quant {
            Some(q) if !x.track_op() => q.matmul(x)?,
            // Frozen base weight: the backward computes dX only, never dW.
            _ => crate::ops::frozen_matmul(x, &self.weight)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            // One graph node (`ops::lora_delta`): the dropout mask, when there is one, multiplies
            // the adapter's f32 input first, exactly as in the composed form below.
            if crate::ops::wanted_lora(x, l.a.as_tensor(), l.b.as_tensor()) {
                let xin = match rng {
                    Some(rng) if l.dropout > 0.0 => dropout(&x.to_dtype(l.a.dtype())?, l.dropout, rng)?,
                    _ => x.clone(),
                };
                let delta = crate::ops::lora_delta(&xin, l.a.as_tensor(), l.b.as_tensor(), l.scale)?;
                let delta = if delta.dtype() != y.dtype() { delta.to_dtype(y.dtype())? } else { delta };
                return Ok((y + delta)?);
            }
            // The adapter computes in its own dtype (f32 over a bf16 base on a GPU, as PEFT does)
            // and its output is cast back to the stream's; both casts carry gradients.
            let xl = x.to_dtype(l.a.dtype())?;
            let xin = match rng {
                Some(rng) if l.dropout > 0.0 => dropout(&xl, l.dropout, rng)?,
                _ => xl,
            };
            let low = xin.matmul(&l.a.as_tensor().t()?)?;
            let up = low.matmul(&l.b.as_tensor().t()?)?;
            let dt = y.dtype();
            y = (y + (up * l.scale)?.to_dtype(dt)?)?;
        }
        Ok(y)
    }
}

/// Inverted dropout with a caller-owned RNG, so that training is reproducible and resumable.
fn dropout(x: &Tensor, p: f32, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let mask = dropout_mask(x.dims(), p, rng, x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// The f32 mask of [`dropout`] (0 or `1 / (1 - p)`), one draw per element in row-major order.
fn dropout_mask(shape: &[usize], p: f32, rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..n).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(mask, shape, device)?)
}

/// RMSNorm written with differentiable ops (candle's fused `rms_norm` records no backward).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[d]`
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

/// The seven projections LoRA can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];
    /// The HF / PEFT module path inside a layer, e.g. `self_attn.q_proj`.
    pub fn hf_path(&self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }
    /// Short names as PEFT's `target_modules` spell them (`q_proj`, ...) or plain (`q`, `gate`).
    pub fn parse(s: &str) -> Option<Proj> {
        let s = s.trim().trim_end_matches("_proj");
        Some(match s {
            "q" => Proj::Q,
            "k" => Proj::K,
            "v" => Proj::V,
            "o" => Proj::O,
            "gate" => Proj::Gate,
            "up" => Proj::Up,
            "down" => Proj::Down,
            _ => return None,
        })
    }
    pub fn short(&self) -> &'static str {
        let p = self.hf_path();
        p.rsplit('.').next().unwrap_or(p)
    }
}

/// One decoder block: pre-norm attention and pre-norm SwiGLU MLP.
#[derive(Debug, Clone)]
pub struct Block {
    pub input_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub post_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Block {
    pub fn proj(&self, p: Proj) -> &Linear {
        match p {
            Proj::Q => &self.q,
            Proj::K => &self.k,
            Proj::V => &self.v,
            Proj::O => &self.o,
            Proj::Gate => &self.gate,
            Proj::Up => &self.up,
            Proj::Down => &self.down,
        }
    }
    pub fn proj_mut(&mut self, p: Proj) -> &mut Linear {
        match p {
            Proj::Q => &mut self.q,
            Proj::K => &mut self.k,
            Proj::V => &mut self.v,
            Proj::O => &mut self.o,
            Proj::Gate => &mut self.gate,
            Proj::Up => &mut self.up,
            Proj::Down => &mut self.down,
        }
    }
}

/// Precomputed rotary tables, half-rotation layout (`[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]`).
#[derive(Debug, Clone)]
struct Rope {
    /// `[max_pos, D/2]`
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Angles in f32, tables stored in the model's dtype (as HF casts `cos`/`sin` to the
    /// activations' dtype).
    fn new(cfg: &ModelConfig, max_pos: usize, device: &Device, dtype: DType) -> Result<Self> {
        let half = cfg.head_dim / 2;
        // inv_freq in f32 as the HF reference computes it, angles in f32 too.
        let inv: Vec<f32> = (0..half).map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32)).collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (max_pos, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_pos, half), device)?.to_dtype(dtype)?,
        })
    }

    /// `x`: `[B, T, heads, D]`; `cos`/`sin`: `[B or 1, T, 1, D/2]`.
    fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(crate::ops::rope(x, cos, sin)?)
    }
}

/// The KV cache of one sequence: post-RoPE keys and values per layer, `[len, G, D]` row-major.
/// On the CPU (f32) they live in host vectors read by [`crate::cpu_attention`] (f16 vectors once
/// the model keeps int8 copies, [`Model::quantize_for_inference`]); on other devices (or dtypes,
/// or under [`crate::ops::with_portable`]) in device tensors read by candle ops. One cache uses
/// one of these: whichever its first call chose.
#[derive(Debug, Clone, Default)]
pub struct SeqCache {
    pub len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    k16: Vec<Vec<half::f16>>,
    v16: Vec<Vec<half::f16>>,
    /// Device-side keys/values per layer, `[len, G, D]` (the portable path).
    kt: Vec<Option<Tensor>>,
    vt: Vec<Option<Tensor>>,
}

impl SeqCache {
    pub fn new(num_layers: usize) -> Self {
        SeqCache {
            len: 0,
            k: vec![Vec::new(); num_layers],
            v: vec![Vec::new(); num_layers],
            k16: vec![Vec::new(); num_layers],
            v16: vec![Vec::new(); num_layers],
            kt: vec![None; num_layers],
            vt: vec![None; num_layers],
        }
    }
}

/// A KV cache for a whole batch on the device: per layer, keys and values `[B, G, cap, D]`
/// (post-RoPE), written in place with `slice_set` and attended with two batched matmuls, so a
/// decode step costs a fixed number of kernel launches per layer whatever the batch size (the
/// per-row [`SeqCache`] path costs `O(B)` launches and a concatenation per row and layer).
///
/// Rows share their columns: the forward call that starts at column `len` writes `T` new
/// columns for every row. Prompts of different lengths are left-padded: row `b`'s tokens begin
/// at column `start[b]`; a query attends to the columns `start[b]..=` its own (a padding query
/// only to itself), and the token at column `c` sits at position `c - start[b]`, so a row's
/// logits do not depend on the padding or on the other rows (up to floating-point rounding).
///
/// A decode step (one new column) runs [`crate::decode`]'s two ops, which read the write column
/// and each row's first column from [`BatchCache::meta`] on the device, so that its launches are
/// the same at every step (what [`crate::decode_graph`] captures once and replays).
#[derive(Debug, Clone)]
pub struct BatchCache {
    /// Per layer, keys then values: `[2, B, G, cap, D]`.
    kv: Vec<Tensor>,
    start: Vec<usize>,
    len: usize,
    cap: usize,
    /// `[B + 1]` u32 on the device: each row's first column, then the write column.
    meta: Tensor,
    /// What `meta` holds now (empty: not written yet).
    meta_host: Vec<u32>,
    /// Changes whenever the device buffers are replaced (a new cache, [`BatchCache::retain`]):
    /// a captured decode graph is only valid for the buffers it was captured on.
    id: u64,
}

fn next_cache_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl BatchCache {
    /// An empty cache for `start.len()` rows whose first real token is at column `start[b]`,
    /// holding up to `cap` columns, in the model's dtype on the model's device.
    pub fn new(model: &Model, start: Vec<usize>, cap: usize) -> Result<Self> {
        let c = &model.config;
        if start.is_empty() || cap == 0 {
            return Err(Error::Invalid(format!("a batch cache of {} rows and {cap} columns", start.len())));
        }
        if let Some(b) = start.iter().position(|&s| s >= cap) {
            return Err(Error::Invalid(format!("row {b} starts at column {} of a {cap}-column cache", start[b])));
        }
        let shape = (2, start.len(), c.num_kv_heads, cap, c.head_dim);
        let dtype = model.embed.dtype();
        let kv = (0..c.num_layers).map(|_| Tensor::zeros(shape, dtype, model.device())).collect::<candle_core::Result<Vec<_>>>()?;
        // Filled on the device, before any capture: the buffers a captured decode graph reads
        // (`kv`, `meta`) must exist, at fixed addresses, for the cache's whole life.
        let meta = Tensor::zeros(start.len() + 1, DType::U32, model.device())?;
        Ok(BatchCache { kv, start, len: 0, cap, meta, meta_host: Vec::new(), id: next_cache_id() })
    }

    /// Keys (`i = 0`) or values (`i = 1`) of `layer`: a view `[B, G, cap, D]`.
    fn part(&self, layer: usize, i: usize) -> Result<Tensor> {
        Ok(self.kv[layer].get(i)?)
    }

    /// Brings [`BatchCache::meta`] up to date (one small upload when the write column or a
    /// row's first column changed since the last call; nothing otherwise).
    pub fn sync_meta(&mut self) -> Result<()> {
        let want: Vec<u32> = self.start.iter().map(|&s| s as u32).chain([self.len as u32]).collect();
        if want != self.meta_host {
            let src = Tensor::from_vec(want.clone(), want.len(), self.meta.device())?;
            self.meta.slice_set(&src, 0, 0)?;
            self.meta_host = want;
        }
        Ok(())
    }

    /// The device buffers' identity (see the field's docs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records `t` columns written by a replayed decode step (which ran no host code).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Forgets the columns from `len` on (a captured step that never ran).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn rewind(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Errors when `t` more columns do not fit the cache, or would reach past `max_positions`.
    pub(crate) fn check_step(&self, t: usize, max_positions: usize) -> Result<()> {
        if self.len + t > self.cap {
            return Err(Error::Invalid(format!(
                "{t} new columns for a batch cache of {} rows x {} columns holding {}",
                self.rows(),
                self.cap,
                self.len
            )));
        }
        let end = self.positions(t).into_iter().max().map_or(0, |p| p as usize + 1);
        if end > max_positions {
            return Err(Error::Invalid(format!("sequence of {end} tokens exceeds the context of {max_positions} positions")));
        }
        Ok(())
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.start.len()
    }

    /// Columns written so far (shared by all rows).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens row `b` holds (its columns from `start[b]`).
    pub fn row_len(&self, b: usize) -> usize {
        self.len.saturating_sub(self.start[b])
    }

    /// Keeps only the rows `keep` (in that order), e.g. after some sequences finished: one
    /// `index_select` per layer instead of computing dead rows until the batch ends.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if keep.is_empty() || keep.iter().any(|&r| r >= self.rows()) {
            return Err(Error::Invalid(format!("rows {keep:?} of a {}-row batch cache", self.rows())));
        }
        if keep.len() == self.rows() && keep.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let dev = self.kv[0].device().clone();
        let idx = Tensor::from_vec(keep.iter().map(|&r| r as u32).collect::<Vec<_>>(), keep.len(), &dev)?;
        for t in self.kv.iter_mut() {
            *t = t.index_select(&idx, 1)?;
        }
        self.start = keep.iter().map(|&r| self.start[r]).collect();
        self.meta = Tensor::zeros(keep.len() + 1, DType::U32, &dev)?;
        self.meta_host.clear();
        self.id = next_cache_id();
        Ok(())
    }

    /// Puts a sequence prefilled on its own (a device-side [`SeqCache`] of one row) into row
    /// `row`, ending at the current column: its tokens take columns `len - seq.len .. len`, and
    /// whatever the row held before is masked out. This is how a finished row is refilled with
    /// the next request without waiting for the whole batch to finish.
    pub fn fill_row(&mut self, row: usize, seq: &SeqCache) -> Result<()> {
        let l = seq.len;
        if row >= self.rows() || l == 0 || l > self.len {
            return Err(Error::Invalid(format!(
                "a {l}-token sequence into row {row} of a {}-row batch cache at column {}",
                self.rows(),
                self.len
            )));
        }
        let start = self.len - l;
        for layer in 0..self.kv.len() {
            for (i, src) in [(0, seq.kt.get(layer)), (1, seq.vt.get(layer))] {
                let dst = self.part(layer, i)?;
                let Some(Some(src)) = src else {
                    return Err(Error::Invalid(format!("layer {layer} of the sequence has no device-side keys/values")));
                };
                let (_, g, cap, hd) = dst.dims4()?;
                let body = src.transpose(0, 1)?.to_dtype(dst.dtype())?; // [l, G, D] -> [G, l, D]
                let mut parts = Vec::with_capacity(3);
                if start > 0 {
                    parts.push(Tensor::zeros((g, start, hd), dst.dtype(), dst.device())?);
                }
                parts.push(body);
                if cap > self.len {
                    parts.push(Tensor::zeros((g, cap - self.len, hd), dst.dtype(), dst.device())?);
                }
                let full = Tensor::cat(&parts, 1)?.unsqueeze(0)?.contiguous()?; // [1, G, cap, D]
                dst.slice_set(&full, 0, row)?;
            }
        }
        self.start[row] = start;
        Ok(())
    }

    /// Parks row `b` (its request finished; nothing replaces it yet): from the next column on
    /// it attends only to itself at position 0, so it can be decoded along with the others at
    /// no risk (its output is ignored) until [`BatchCache::fill_row`] or [`BatchCache::retain`].
    pub fn park(&mut self, b: usize) -> Result<()> {
        if b >= self.rows() {
            return Err(Error::Invalid(format!("row {b} of a {}-row batch cache", self.rows())));
        }
        self.start[b] = self.cap;
        Ok(())
    }

    /// Free columns left for decoding.
    pub fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Rotary positions of the `t` columns starting at `len`, row-major `[B * t]`.
    fn positions(&self, t: usize) -> Vec<u32> {
        let len = self.len;
        self.start.iter().flat_map(|&s| (len..len + t).map(move |c| c.saturating_sub(s) as u32)).collect()
    }

    /// Additive mask `[B, 1, 1, t, len + t]` for the `t` new columns (see the type's docs).
    fn mask(&self, t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = self.len + t;
        let mut m = Vec::with_capacity(self.rows() * t * n);
        for &s in &self.start {
            for qi in 0..t {
                let c = self.len + qi;
                m.extend((0..n).map(|j| if j == c || (j <= c && j >= s) { 0f32 } else { f32::NEG_INFINITY }));
            }
        }
        Ok(Tensor::from_vec(m, (self.rows(), 1, 1, t, n), device)?.to_dtype(dtype)?)
    }
}

/// Which logits the forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// `[B, T, V]`
    #[default]
    All,
    /// `[B, V]` at the last new position (what generation needs; skips most of the LM head).
    Last,
    /// None: stop after the final norm (capture-only passes).
    None,
}

/// Options of one forward call.
#[derive(Default)]
pub struct Forward<'a> {
    pub logits: Logits,
    pub hooks: Option<&'a mut dyn Hooks>,
    /// One cache per batch row; positions continue from each cache's length.
    pub cache: Option<&'a mut [SeqCache]>,
    /// A batched device cache (GPU decoding, see [`BatchCache`]); excludes `cache`.
    pub batch_cache: Option<&'a mut BatchCache>,
    /// Present while training: drives LoRA dropout.
    pub dropout_rng: Option<&'a mut ChaCha8Rng>,
    /// Run only blocks `0..stop_after` (e.g. activation capture at a middle layer).
    pub stop_after: Option<usize>,
}

/// What a forward call returns.
pub struct ForwardOut {
    /// See [`Logits`].
    pub logits: Option<Tensor>,
    /// The stream after the final norm, `[B, T, d]` (or before it when `stop_after` cut early).
    pub hidden: Tensor,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Also keep an int8 (Q8_0-style) copy of every projection and of the LM head for fast
    /// single-stream decoding; f32 stays the reference and the training path.
    pub int8_inference: bool,
    /// Longest context the rotary tables cover (capped by the model's own limit).
    pub max_positions: usize,
    /// Dtype of the frozen weights and activations. `None`: `EMLAB_DTYPE` if set, else f32 on
    /// the CPU and bf16 on a GPU ([`crate::device::default_dtype`]). Adapters stay f32.
    pub dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, int8_inference: false, max_positions: 4096, dtype: None }
    }
}

impl LoadOptions {
    /// These options with the environment applied: `EMLAB_DEVICE` replaces the default CPU
    /// device (an explicitly chosen GPU is kept), and the dtype is made explicit.
    pub fn resolved(&self) -> Result<LoadOptions> {
        let mut o = self.clone();
        if o.device.is_cpu() {
            if let Some(d) = crate::device::device_from_env()? {
                o.device = d;
            }
        }
        if o.dtype.is_none() {
            o.dtype = Some(crate::device::dtype_from_env()?.unwrap_or_else(|| crate::device::default_dtype(&o.device)));
        }
        Ok(o)
    }
}

/// A decoder-only transformer of the Llama or Qwen2 family.
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    /// `[V, d]`
    pub embed: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `[V, d]`; the embedding itself when tied.
    pub lm_head: Tensor,
    lm_head_int8: Option<std::sync::Arc<Int8Matrix>>,
    /// CPU KV caches hold f16 (set with the int8 copies: inference only).
    kv_f16: bool,
    rope: Rope,
    device: Device,
}

impl Model {
    /// Loads a GGUF file or an HF folder (see [`Source::detect`]).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        let opts = &opts.resolved()?;
        let dtype = opts.dtype.unwrap_or(DType::F32);
        let (cfg, weights) = match Source::detect(path)? {
            Source::Gguf { path } => load_gguf_weights(&path, &opts.device, dtype)?,
            Source::Hf { dir } => (ModelConfig::read(&dir)?, load_hf_weights(&dir, &opts.device, dtype)?),
        };
        let mut m = Model::from_weights(cfg, weights, opts)?;
        if opts.int8_inference {
            m.quantize_for_inference()?;
        }
        Ok(m)
    }

    /// Builds the model from HF-named weights, checking every shape. The weights are moved to
    /// `opts.device` and cast to `opts.dtype` (`None` here: [`crate::device::default_dtype`] of
    /// the device; this function does not read the environment, [`Model::load`] does).
    pub fn from_weights(cfg: ModelConfig, mut w: Weights, opts: &LoadOptions) -> Result<Model> {
        let dtype = opts.dtype.unwrap_or_else(|| crate::device::default_dtype(&opts.device));
        for t in w.tensors.values_mut() {
            if t.dtype() != dtype || !t.device().same_device(&opts.device) {
                *t = t.to_dtype(dtype)?.to_device(&opts.device)?;
            }
        }
        let d = cfg.hidden_size;
        let (h, g, hd, ff) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size);
        let embed = w.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                let wt = w.take(&format!("{p}.{name}.weight"), &[out, inp])?;
                let b = if bias { w.take_opt(&format!("{p}.{name}.bias"), &[out])? } else { None };
                Ok(Linear::new(wt, b))
            };
            let ab = cfg.attention_bias;
            let q = lin("self_attn.q_proj", h * hd, d, ab)?;
            let k = lin("self_attn.k_proj", g * hd, d, ab)?;
            let v = lin("self_attn.v_proj", g * hd, d, ab)?;
            let o = lin("self_attn.o_proj", d, h * hd, false)?;
            let gate = lin("mlp.gate_proj", ff, d, false)?;
            let up = lin("mlp.up_proj", ff, d, false)?;
            let down = lin("mlp.down_proj", d, ff, false)?;
            let input_norm = RmsNorm { weight: w.take(&format!("{p}.input_layernorm.weight"), &[d])?, eps: cfg.rms_norm_eps };
            let post_norm = RmsNorm { weight: w.take(&format!("{p}.post_attention_layernorm.weight"), &[d])?, eps: cfg.rms_norm_eps };
            layers.push(Block { input_norm, q, k, v, o, post_norm, gate, up, down });
        }
        let norm = RmsNorm { weight: w.take("model.norm.weight", &[d])?, eps: cfg.rms_norm_eps };
        let lm_head = match w.take_opt("lm_head.weight", &[cfg.vocab_size, d])? {
            Some(t) if !cfg.tie_word_embeddings => t,
            _ => embed.clone(),
        };
        let max_pos = opts.max_positions.min(cfg.max_position_embeddings.max(1)).max(1);
        let rope = Rope::new(&cfg, max_pos, &opts.device, dtype)?;
        Ok(Model { config: cfg, embed, layers, norm, lm_head, lm_head_int8: None, kv_f16: false, rope, device: opts.device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest sequence (prompt + generation) the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.rope.cos.dims()[0]
    }

    /// Keeps an int8 copy of each projection and of the LM head for inference, and makes new CPU
    /// KV caches store f16 (half the bytes each decoding step streams; the attention arithmetic
    /// stays f32); training and any call that tracks gradients still use the f32 weights.
    /// Projections carrying a LoRA adapter are skipped (the adapter's weights may change).
    pub fn quantize_for_inference(&mut self) -> Result<()> {
        if !self.device.is_cpu() {
            return Ok(());
        }
        for b in &mut self.layers {
            for p in Proj::ALL {
                let l = b.proj_mut(p);
                if l.lora.is_none() {
                    l.quant = Int8Matrix::quantize(&l.weight)?.map(std::sync::Arc::new);
                }
            }
        }
        self.lm_head_int8 = Int8Matrix::quantize(&self.lm_head)?.map(std::sync::Arc::new);
        // `EMLAB_KV_CACHE=f32` keeps f32 caches (for A/B benchmarks and accuracy checks).
        self.kv_f16 = crate::device::env_switch("EMLAB_KV_CACHE", &["f16", "f32"], "f16") == "f16";
        Ok(())
    }

    /// Drops quantized copies (after weights changed, e.g. a merged adapter).
    pub fn clear_quantized(&mut self) {
        for b in &mut self.layers {
            for p in Proj::ALL {
                b.proj_mut(p).quant = None;
            }
        }
        self.lm_head_int8 = None;
        self.kv_f16 = false;
    }

    /// The forward pass. `ids`: `[B, T]` u32.
    ///
    /// Without a cache, every row starts at position 0 and attention is causal over the `T`
    /// tokens: pad batches on the right (padding never influences earlier tokens). With a cache,
    /// row `b` continues at position `cache[b].len` and its new keys/values are appended.
    pub fn forward(&self, ids: &Tensor, f: Forward<'_>) -> Result<ForwardOut> {
        let x = self.embed_tokens(ids)?;
        self.forward_from(0, x, f)
    }

    /// The token embeddings of `ids` `[B, T]`: the residual stream entering block 0, `[B, T, d]`.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.config.hidden_size))?)
    }

    /// The same forward pass as [`Model::forward`], entered at block `first` with the residual
    /// stream `x` `[B, T, d]` that block receives (`forward` is `embed_tokens` + `forward_from(0, ..)`).
    /// With `stop_after: Some(first + 1)` it runs one block: activation checkpointing keeps only
    /// each block's input and re-runs the block during the backward pass (emlab-train). A cache
    /// is only accepted from block 0 (the earlier layers' keys would be missing).
    pub fn forward_from(&self, first: usize, mut x: Tensor, mut f: Forward<'_>) -> Result<ForwardOut> {
        let (b, t, d) = x.dims3()?;
        let cfg = &self.config;
        if d != cfg.hidden_size {
            return Err(Error::Invalid(format!("residual stream of width {d} for a model of width {}", cfg.hidden_size)));
        }
        if first > cfg.num_layers {
            return Err(Error::Invalid(format!("block {first} of a model with {} blocks", cfg.num_layers)));
        }
        if first > 0 && f.cache.is_some() {
            return Err(Error::Invalid(format!("a KV cache needs the forward pass to start at block 0, not {first}")));
        }
        if let Some(c) = &f.cache {
            if c.len() != b {
                return Err(Error::Invalid(format!("{} caches for a batch of {b}", c.len())));
            }
        }
        if let Some(bc) = &f.batch_cache {
            if f.cache.is_some() || first > 0 {
                return Err(Error::Invalid("a batch cache excludes per-row caches and needs the pass to start at block 0".into()));
            }
            if bc.rows() != b {
                return Err(Error::Invalid(format!("a batch of {b} rows for a batch cache of {} rows", bc.rows())));
            }
            bc.check_step(t, self.max_positions())?;
        }
        let starts: Vec<usize> = match &f.cache {
            Some(c) => c.iter().map(|s| s.len).collect(),
            None => vec![0; b],
        };
        let batch_pos = f.batch_cache.as_ref().map(|bc| bc.positions(t));
        let max_end = match &batch_pos {
            Some(pos) => pos.iter().max().map_or(0, |&p| p as usize + 1),
            None => starts.iter().max().copied().unwrap_or(0) + t,
        };
        if max_end > self.max_positions() {
            return Err(Error::Invalid(format!("sequence of {max_end} tokens exceeds the context of {} positions", self.max_positions())));
        }
        // A decode step over a batch cache: `crate::decode`'s ops, no host-built tables or mask.
        let decode = t == 1 && f.batch_cache.is_some() && crate::decode::wanted(&self.device, x.dtype());
        let (cos, sin) = match batch_pos {
            _ if decode => (self.rope.cos.clone(), self.rope.sin.clone()), // unused
            Some(pos) => self.rope_tables_at(pos, b, t)?,
            None => self.rope_tables(&starts, t)?,
        };
        let batch_mask = match f.batch_cache.as_deref_mut() {
            Some(bc) if decode => {
                bc.sync_meta()?;
                None
            }
            Some(bc) => Some(bc.mask(t, x.dtype(), &self.device)?),
            None => None,
        };
        // Rows share one causal mask only when they all start at position 0 with no history.
        let fresh = starts.iter().all(|&s| s == 0);
        let mask = if t > 1 && fresh && batch_mask.is_none() { Some(causal_mask(t, &self.device)?.to_dtype(x.dtype())?) } else { None };
        let n_layers = f.stop_after.unwrap_or(cfg.num_layers).min(cfg.num_layers);
        for (li, blk) in self.layers.iter().enumerate().take(n_layers).skip(first) {
            x = hook(&mut f.hooks, HookPoint { layer: li, kind: HookKind::ResidPre }, x)?;
            let hn = blk.input_norm.forward(&x)?.reshape((b * t, d))?;
            let q = blk.q.forward(&hn, f.dropout_rng.as_deref_mut())?;
            let k = blk.k.forward(&hn, f.dropout_rng.as_deref_mut())?;
            let v = blk.v.forward(&hn, f.dropout_rng.as_deref_mut())?;
            let attn = match (&mut f.cache, fresh) {
                _ if decode => {
                    let bc = f.batch_cache.as_deref_mut().expect("decode has a batch cache");
                    crate::decode::write_kv(&bc.kv[li], &k, &v, &bc.meta, &self.rope.cos, &self.rope.sin)?;
                    crate::decode::attend(&q, &bc.kv[li], &bc.meta, &self.rope.cos, &self.rope.sin, cfg.num_heads)?
                }
                _ if f.batch_cache.is_some() => {
                    let (q, k, v) = self.rotated_qkv(&q, &k, &v, (b, t), &cos, &sin)?;
                    let (Some(bc), Some(m)) = (f.batch_cache.as_deref_mut(), batch_mask.as_ref()) else { unreachable!() };
                    self.batch_cache_attention(li, &q, &k, &v, bc, m)?
                }
                (Some(cache), false) => {
                    let (q, k, v) = self.rotated_qkv(&q, &k, &v, (b, t), &cos, &sin)?;
                    self.cached_attention(li, &q, &k, &v, cache)?
                }
                // Training off the CPU's fused kernels: one graph node (`crate::attention`).
                (None, _) if mask.is_some() && crate::attention::wanted(&q) => {
                    let m = mask.as_ref().expect("checked");
                    crate::attention::causal_attention(&q, &k, &v, (b, t), cfg.num_heads, cfg.num_kv_heads, &cos, &sin, m)?
                }
                (cache, _) => {
                    let (q, k, v) = self.rotated_qkv(&q, &k, &v, (b, t), &cos, &sin)?;
                    let a = self.attention(&q, &k, &v, mask.as_ref())?;
                    if let Some(cache) = cache {
                        append_kv(cache, li, &k, &v, self.kv_f16)?;
                    }
                    a
                }
            }; // [B*T, H*D]
            let attn_out = blk.o.forward(&attn, f.dropout_rng.as_deref_mut())?.reshape((b, t, d))?;
            let attn_out = hook(&mut f.hooks, HookPoint { layer: li, kind: HookKind::AttnOut }, attn_out)?;
            x = (x + attn_out)?;
            x = hook(&mut f.hooks, HookPoint { layer: li, kind: HookKind::ResidMid }, x)?;
            let hn = blk.post_norm.forward(&x)?.reshape((b * t, d))?;
            let gate = blk.gate.forward(&hn, f.dropout_rng.as_deref_mut())?;
            let up = blk.up.forward(&hn, f.dropout_rng.as_deref_mut())?;
            let act = crate::ops::silu_mul(&gate, &up)?;
            let mlp_out = blk.down.forward(&act, f.dropout_rng.as_deref_mut())?.reshape((b, t, d))?;
            let mlp_out = hook(&mut f.hooks, HookPoint { layer: li, kind: HookKind::MlpOut }, mlp_out)?;
            x = (x + mlp_out)?;
            x = hook(&mut f.hooks, HookPoint { layer: li, kind: HookKind::ResidPost }, x)?;
        }
        if let Some(cache) = f.cache {
            for c in cache.iter_mut() {
                c.len += t;
            }
        }
        if let Some(bc) = f.batch_cache {
            bc.len += t;
        }
        if n_layers < cfg.num_layers {
            return Ok(ForwardOut { logits: None, hidden: x });
        }
        let hidden = self.norm.forward(&x)?;
        let logits = match f.logits {
            Logits::None => None,
            Logits::All => {
                let l = crate::ops::frozen_matmul(&hidden.reshape((b * t, d))?, &self.lm_head)?;
                Some(l.reshape((b, t, cfg.vocab_size))?)
            }
            Logits::Last => {
                let last = hidden.narrow(1, t - 1, 1)?.reshape((b, d))?;
                match &self.lm_head_int8 {
                    Some(q) if !last.track_op() => Some(q.matmul(&last)?),
                    _ => Some(crate::ops::frozen_matmul(&last, &self.lm_head)?),
                }
            }
        };
        // Logits are always f32 (sampling and losses read them as f32), as HF upcasts them.
        let logits = match logits {
            Some(l) if l.dtype() != DType::F32 => Some(l.to_dtype(DType::F32)?),
            l => l,
        };
        Ok(ForwardOut { logits, hidden })
    }

    /// Projections `[B*T, heads*D]` -> `[B, T, heads, D]`, queries and keys rotated.
    fn rotated_qkv(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (b, t): (usize, usize),
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let q = q.reshape((b, t, c.num_heads, c.head_dim))?;
        let k = k.reshape((b, t, c.num_kv_heads, c.head_dim))?;
        let v = v.reshape((b, t, c.num_kv_heads, c.head_dim))?;
        Ok((Rope::apply(&q, cos, sin)?, Rope::apply(&k, cos, sin)?, v))
    }

    /// cos/sin for each row's positions: `[1 or B, T, 1, D/2]`.
    fn rope_tables(&self, starts: &[usize], t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.config.head_dim / 2;
        if starts.iter().all(|&s| s == starts[0]) {
            let c = self.rope.cos.narrow(0, starts[0], t)?.reshape((1, t, 1, half))?;
            let s = self.rope.sin.narrow(0, starts[0], t)?.reshape((1, t, 1, half))?;
            return Ok((c, s));
        }
        let pos: Vec<u32> = starts.iter().flat_map(|&s| (s..s + t).map(|p| p as u32)).collect();
        self.rope_tables_at(pos, starts.len(), t)
    }

    /// cos/sin `[B, T, 1, D/2]` for explicit positions, row-major `[B * T]`.
    fn rope_tables_at(&self, pos: Vec<u32>, b: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.config.head_dim / 2;
        let idx = Tensor::from_vec(pos, b * t, &self.device)?;
        let c = self.rope.cos.index_select(&idx, 0)?.reshape((b, t, 1, half))?;
        let s = self.rope.sin.index_select(&idx, 0)?.reshape((b, t, 1, half))?;
        Ok((c, s))
    }

    /// Attention over a [`BatchCache`]: writes the new keys/values at columns `len..len+T` of
    /// every row (in place), then attends over columns `0..len+T` with `mask` `[B,1,1,T,n]`
    /// hiding each row's padding and the future. Two batched matmuls over `[B, G]`; the queries
    /// of the `rep` heads sharing a kv head are stacked as in [`Model::attention`]. Not
    /// differentiable (generation only). Returns `[B*T, H*D]`.
    fn batch_cache_attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bc: &mut BatchCache,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, h, hd) = q.dims4()?;
        let g = self.config.num_kv_heads;
        let rep = h / g;
        // [B, T, G, D] -> [B, G, T, D]: free when T = 1 (size-1 dims do not break contiguity).
        let kt = k.detach().transpose(1, 2)?.contiguous()?;
        let vt = v.detach().transpose(1, 2)?.contiguous()?;
        let (kc, vc) = (bc.part(layer, 0)?, bc.part(layer, 1)?);
        kc.slice_set(&kt, 2, bc.len)?;
        vc.slice_set(&vt, 2, bc.len)?;
        let n = bc.len + t;
        // Narrowed views: uniform batch strides, so cuBLAS reads them without a copy.
        let kc = kc.narrow(2, 0, n)?; // [B, G, n, D]
        let vc = vc.narrow(2, 0, n)?;
        let q = q.reshape((b, t, g, rep, hd))?.permute((0, 2, 3, 1, 4))?.reshape((b, g, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let sc = (q.matmul(&kc.t()?)? * scale)?; // [B, G, rep*T, n]
        let sc = sc.reshape((b, g, rep, t, n))?.broadcast_add(mask)?.reshape((b, g, rep * t, n))?;
        let p = crate::ops::softmax_last_dim(&sc)?;
        let o = p.matmul(&vc)?; // [B, G, rep*T, D]
        Ok(o.reshape((b, g, rep, t, hd))?.permute((0, 3, 1, 2, 4))?.reshape((b * t, h * hd))?)
    }

    /// Differentiable causal attention over the `T` new tokens. Queries of the `H/G` heads that
    /// share a kv head are stacked along the time axis, so keys and values are never copied
    /// `H/G` times (a broadcast copy would be slower and cost memory in the backward pass).
    /// Returns `[B*T, H*D]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t, h, hd) = q.dims4()?;
        let g = cfg.num_kv_heads;
        let rep = h / g;
        // q: [B, T, H, D] -> [B, G, rep*T, D]
        let q = q.reshape((b, t, g, rep, hd))?.permute((0, 2, 3, 1, 4))?.reshape((b, g, rep * t, hd))?;
        let k = k.transpose(1, 2)?.contiguous()?; // [B, G, T, D]
        let v = v.transpose(1, 2)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let raw = q.matmul(&k.t()?)?; // [B, G, rep*T, T]
        let p = match mask {
            // Viewed as [B, G, rep, T, T]: square causal blocks, one per (row, head).
            Some(m) => crate::ops::causal_softmax(&raw.reshape((b, g, rep, t, t))?, scale, m)?.reshape((b, g, rep * t, t))?,
            None => crate::ops::softmax_last_dim(&(raw * scale)?)?,
        };
        let o = p.matmul(&v)?; // [B, G, rep*T, D]
        let o = o.reshape((b, g, rep, t, hd))?.permute((0, 3, 1, 2, 4))?.reshape((b * t, h * hd))?;
        Ok(o)
    }

    /// Attention against per-sequence caches (decoding, or continuing a conversation): appends
    /// the new keys/values, then each (row, head, query) attends over its own history only, so
    /// a row's result never depends on the other rows of the batch. Not differentiable (it is
    /// only used while generating). Returns `[B*T, H*D]`.
    fn cached_attention(&self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, cache: &mut [SeqCache]) -> Result<Tensor> {
        if !host_kv(k) {
            // GPU (or bf16, or forced portable): the same attention with candle ops.
            return self.cached_attention_composed(layer, q, k, v, cache);
        }
        let cfg = &self.config;
        let (b, t, h, hd) = q.dims4()?;
        let g = cfg.num_kv_heads;
        append_kv(cache, layer, k, v, self.kv_f16)?;
        let qv = q.flatten_all()?.to_vec1::<f32>()?; // [B, T, H, D]
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * t * h * hd];
        out.par_chunks_mut(t * h * hd).enumerate().for_each(|(bi, ob)| {
            let c = &cache[bi];
            let start = c.len; // history length before this call
            let mut scratch = Vec::new();
            for ti in 0..t {
                let n_keys = start + ti + 1;
                let (qh, oh) = (&qv[(bi * t + ti) * h * hd..][..h * hd], &mut ob[ti * h * hd..][..h * hd]);
                if self.kv_f16 {
                    crate::cpu_attention::attend(qh, &c.k16[layer], &c.v16[layer], g, n_keys, hd, scale, oh, &mut scratch);
                } else {
                    crate::cpu_attention::attend(qh, &c.k[layer], &c.v[layer], g, n_keys, hd, scale, oh, &mut scratch);
                }
            }
        });
        Ok(Tensor::from_vec(out, (b * t, h * hd), &self.device)?)
    }

    /// [`Model::cached_attention`] with candle ops over device-side caches: per row, the
    /// queries of the `rep` heads sharing a kv head are stacked (as in [`Model::attention`])
    /// and attend over that row's history plus the new keys, causally. Returns `[B*T, H*D]`.
    fn cached_attention_composed(&self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, cache: &mut [SeqCache]) -> Result<Tensor> {
        let (b, t, h, hd) = q.dims4()?;
        let g = self.config.num_kv_heads;
        let rep = h / g;
        append_kv(cache, layer, k, v, false)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut rows = Vec::with_capacity(b);
        for (bi, c) in cache.iter().enumerate() {
            let (Some(kc), Some(vc)) = (&c.kt[layer], &c.vt[layer]) else {
                return Err(Error::Invalid(format!("KV cache of row {bi}, layer {layer} is empty after appending")));
            };
            let n = kc.dim(0)?; // history (c.len, not yet advanced) + t new keys
            let qb = q.narrow(0, bi, 1)?.reshape((t, g, rep, hd))?.permute((1, 2, 0, 3))?.contiguous()?.reshape((g, rep * t, hd))?;
            let kb = kc.transpose(0, 1)?.contiguous()?; // [G, n, D]
            let vb = vc.transpose(0, 1)?.contiguous()?;
            let mut sc = (qb.matmul(&kb.t()?)? * scale)?; // [G, rep*T, n]
            if t > 1 {
                let start = c.len;
                let m: Vec<f32> =
                    (0..t).flat_map(|ti| (0..n).map(move |j| if j <= start + ti { 0.0 } else { f32::NEG_INFINITY })).collect();
                let m = Tensor::from_vec(m, (t, n), q.device())?.to_dtype(sc.dtype())?;
                sc = sc.reshape((g, rep, t, n))?.broadcast_add(&m)?.reshape((g, rep * t, n))?;
            }
            let p = crate::ops::softmax_last_dim(&sc)?;
            let o = p.matmul(&vb)?; // [G, rep*T, D]
            rows.push(o.reshape((g, rep, t, hd))?.permute((2, 0, 1, 3))?.reshape((t, h * hd))?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Number of FLOPs of one forward token, matmuls only (`2 * params` touched).
    pub fn flops_per_token(&self) -> f64 {
        let c = &self.config;
        let body = c.num_params() - c.vocab_size * c.hidden_size;
        2.0 * (body + c.vocab_size * c.hidden_size) as f64
    }
}

/// Whether KV caches for keys like `k` live in host vectors (the CPU f32 attention kernel) or
/// in device tensors (candle ops: GPUs, other dtypes, [`crate::ops::with_portable`]).
fn host_kv(k: &Tensor) -> bool {
    k.device().is_cpu() && k.dtype() == DType::F32 && !crate::ops::portable_forced()
}

/// Appends keys/values `[B, T, G, D]` to each row's cache: host f32 vectors, host f16 vectors
/// (`f16`, CPU only) or device tensors, refusing a cache that an earlier call filled another way.
fn append_kv(cache: &mut [SeqCache], layer: usize, k: &Tensor, v: &Tensor, f16: bool) -> Result<()> {
    let (b, t, g, hd) = k.dims4()?;
    let host = host_kv(k);
    let f16 = f16 && host;
    let filled_other = |c: &SeqCache| {
        let dev = c.kt.get(layer).is_some_and(|x| x.is_some());
        let h32 = c.k.get(layer).is_some_and(|x| !x.is_empty());
        let h16 = c.k16.get(layer).is_some_and(|x| !x.is_empty());
        match (host, f16) {
            (true, false) => dev || h16,
            (true, true) => dev || h32,
            _ => h32 || h16,
        }
    };
    if let Some(bi) = cache.iter().position(filled_other) {
        return Err(Error::Invalid(format!("KV cache of row {bi} was filled on the other attention path (device or dtype changed)")));
    }
    if !host {
        let (k, v) = (k.detach(), v.detach());
        for (bi, c) in cache.iter_mut().enumerate() {
            if c.kt.len() <= layer {
                c.kt.resize(layer + 1, None);
                c.vt.resize(layer + 1, None);
            }
            let kb = k.narrow(0, bi, 1)?.reshape((t, g, hd))?;
            let vb = v.narrow(0, bi, 1)?.reshape((t, g, hd))?;
            c.kt[layer] = Some(match c.kt[layer].take() {
                Some(old) => Tensor::cat(&[&old, &kb], 0)?,
                None => kb.contiguous()?,
            });
            c.vt[layer] = Some(match c.vt[layer].take() {
                Some(old) => Tensor::cat(&[&old, &vb], 0)?,
                None => vb.contiguous()?,
            });
        }
        return Ok(());
    }
    let kv = k.detach().flatten_all()?.to_vec1::<f32>()?;
    let vv = v.detach().flatten_all()?.to_vec1::<f32>()?;
    let row = t * g * hd;
    for bi in 0..b {
        let (kr, vr) = (&kv[bi * row..(bi + 1) * row], &vv[bi * row..(bi + 1) * row]);
        if f16 {
            cache[bi].k16[layer].extend(kr.iter().map(|&x| half::f16::from_f32(x)));
            cache[bi].v16[layer].extend(vr.iter().map(|&x| half::f16::from_f32(x)));
        } else {
            cache[bi].k[layer].extend_from_slice(kr);
            cache[bi].v[layer].extend_from_slice(vr);
        }
    }
    Ok(())
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

fn hook(h: &mut Option<&mut dyn Hooks>, point: HookPoint, x: Tensor) -> Result<Tensor> {
    match h {
        Some(h) if h.wants(point) => h.apply(point, x),
        _ => Ok(x),
    }
}

/// Mean token cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]` u32, counting
/// only positions where `mask` `[B, T]` (f32 0/1) is 1. Differentiable.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let ce = crate::ops::cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)?;
    let m = mask.reshape(b * t)?.to_dtype(DType::F32)?;
    let n = m.sum_all()?;
    Ok((ce.mul(&m)?.sum_all()? / n.to_scalar::<f32>()?.max(1.0) as f64)?)
}
