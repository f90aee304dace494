//! TopK SAE training on any candle [`Device`] (CUDA GPU, or the CPU through the
//! same tensor code): the model, loss, initialisation, AuxK, decoder handling and
//! Adam of [`Trainer`] for [`Architecture::TopK`], with a hand-written backward
//! pass that keeps the decoder side sparse.
//!
//! ```
//! use candle_core::Device;
//! use emlab_sae::{device::DeviceTrainer, Architecture, TrainConfig, Trainer};
//! let cfg = TrainConfig::new(8, 32, Architecture::TopK { k: 2 });
//! let x: Vec<f32> = (0..64 * 8).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
//! // Same init as the CPU trainer (built from it), run through candle tensors.
//! let mut dev = DeviceTrainer::new(cfg.clone(), &Device::Cpu).unwrap();
//! let mut cpu = Trainer::new(cfg).unwrap();
//! let a = dev.step(&x).unwrap().fetch().unwrap();  // stats come back only on fetch()
//! let b = cpu.step(&x).unwrap();
//! assert!((a.mse - b.mse).abs() < 1e-4 * b.mse);
//! let sae = dev.to_sae().unwrap();                  // normalisation folded in
//! assert_eq!(sae.forward(&x).unwrap().len(), x.len());
//! ```
//!
//! # One step (n rows, d = d_in, m = d_sae; all f32 unless noted)
//! | tensor | shape | how |
//! |---|---|---|
//! | `xs = s·x`, `xc = xs - b_dec` | [n, d] | input scale from the first batch |
//! | `pre = xc @ W_enc + b_enc` | [n, m] | the one dense forward GEMM (`W_enc` stored [d, m]) |
//! | `vals, ids` | [n, k], ids u32 | exact top-k via group maxima + one small sort ([`top_k_rows`]) |
//! | `z = relu(vals)` | [n, k] | |
//! | `rows = W_dec[ids]` | [n, k, d] | `index_select` of the flattened ids |
//! | `x_hat = z·rows + b_dec` | [n, d] | batched `[n,1,k]x[n,k,d]` matmul |
//! | `gx = 2/n (x_hat - xs)` | [n, d] | dL/dx_hat |
//! | `dpre = (rows·gx) ⊙ 1[vals > 0]` | [n, k] | batched `[n,k,d]x[n,d,1]` matmul |
//! | `dW_dec = Zᵀ gx`, `dW_encᵀ = Gᵀ xc` | [m, d] | sparse accumulations over the n·k (latent, value) pairs ([`crate::sparse`]) |
//! | `db_enc = Σ_rows G`, firings per latent | [m] | the same accumulation over a column of ones |
//! | `db_dec = Σ_rows gx - W_enc db_enc` | [d] | |
//!
//! (`Z`, `G`: the [n, m] matrices holding z and dpre at the top-k ids, never built.)
//! So the step costs one dense GEMM of n·d·m, the encoder (the dense PyTorch loop
//! does five: encoder, dense decode, its two gradients and the encoder gradient);
//! decode, `dL/dz` and the weight gradients touch only the k active decoder rows.
//! candle's CUDA `index_add` runs one thread per output column looping over all ids
//! (no atomics), far too slow here: [`crate::sparse`] is emlab's own kernel (atomic
//! adds on CUDA; until 2026-11-27 a dense scatter + two GEMMs, 13.2 ms a step on an
//! H100, now 8.7 ms on an H200).
//!
//! Top-k: candle's CUDA `arg_sort_last_dim` is a bitonic sort of one row per
//! block with the row's indices in shared memory (<= 8192 columns) and the values
//! read from global memory at every compare, so sorting all n·m pre-activations
//! would dominate the step. [`TopKMethod::Grouped`] sorts only the per-group
//! maxima (m/32 columns) and the k·32 members of the winning groups.
//!
//! AuxK (when latents are dead) adds, with `ê = Σ_{top k_aux dead} relu(pre_j) W_dec[j]`,
//! `ga = 2 c_aux min(n_dead/k_aux, 1)/n · (ê + x_hat - xs)`, its `dpre` into `G` and
//! `Zauxᵀ ga` into `dW_dec`, exactly as [`Trainer`].
//!
//! Then, as [`Trainer::step`]: the radial part of each decoder-row gradient is
//! removed, PyTorch Adam (bias-corrected, f32 state) updates all four tensors, and
//! decoder rows are renormalised. Dead-latent clocks and firing counts live on
//! the device (f64). Nothing is copied to the host during a step except the
//! dead-latent count once latents can be dead (a scalar, to size the AuxK top-k);
//! the step's statistics are scalar tensors read by [`PendingStats::fetch`].
//!
//! # Differences from [`Trainer`]
//! - TopK only (BatchTopK / ReLU stay on the CPU trainer: [`DeviceTrainer::new`] refuses them).
//! - A non-finite loss is reported by [`PendingStats::fetch`] (after the update,
//!   since checking inside the step would force a host sync); [`Trainer`] refuses
//!   the update. Inputs given as tensors are not checked for NaN / inf.
//! - Reductions run in f32 on the device (the CPU trainer sums some in f64), and
//!   top-k ties may be broken differently: results agree to float rounding.

use crate::error::{Result, SaeError};
use crate::sae::{transpose, Sae};
use crate::sparse::sparse_rows_acc;
use crate::train::{Architecture, Params, StepStats, TrainConfig, Trainer};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Widest row one `arg_sort_last_dim` call sorts. candle's CUDA kernel keeps the
/// whole (power-of-two padded) row of indices in shared memory, 4 bytes per
/// column; 8192 columns = 32 KB stays under the 48 KB default limit.
pub const MAX_SORT_COLS: usize = 8192;

/// Rows up to this width are sorted in one go; wider ones go through chunks.
const SINGLE_SORT_COLS: usize = 2048;

fn ce(what: &str) -> impl Fn(candle_core::Error) -> SaeError + '_ {
    move |e| SaeError::Candle(format!("device SAE {what}: {e}"))
}

/// Small constant index tensors (chunk offsets, group aranges), cached per shape
/// so a step uploads nothing from the host.
#[derive(Default)]
pub struct TopKCache {
    offsets: HashMap<(usize, usize), Tensor>,
    groups: HashMap<usize, (Tensor, Tensor)>,
}

/// How [`top_k_rows_with`] narrows a wide row down before the final sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopKMethod {
    /// Group maxima (default): the row is cut into groups of `g` <= 32 adjacent
    /// columns; the top k groups by their maximum hold the row's top k (each of
    /// the k largest values lies in a group whose max is at least the k-th
    /// largest value, and at most k groups reach it), so only the `k·g`
    /// columns of those groups are sorted. One fast max-reduction pass plus
    /// sorts of `cols/g` and `k·g` columns per row.
    #[default]
    Grouped,
    /// Chunks of c = max(1024, 2k) columns each sorted whole, keeping k per
    /// chunk, then the candidates again: sorts every column (slower; kept as a
    /// reference and fallback).
    Chunked,
}

/// Top-`k` of each row of `x` [n, cols] (f32, contiguous or not): returns
/// (values [n, k] f32, column ids [n, k] u32), in descending order per row.
/// Exact; ties may come in any order. Rows up to 2048 columns are sorted in one
/// `arg_sort_last_dim`; wider rows are narrowed first ([`TopKMethod::Grouped`]).
/// Errors (one line) when `k` is 0 or larger than `cols`, the input is not a
/// 2-D f32 tensor, or k > 2048 on rows wider than one sort holds (8192).
pub fn top_k_rows(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    top_k_rows_with(x, k, TopKMethod::Grouped, &mut TopKCache::default())
}

/// [`top_k_rows`] with an explicit method, reusing the constants in `cache`.
pub fn top_k_rows_with(x: &Tensor, k: usize, method: TopKMethod, cache: &mut TopKCache) -> Result<(Tensor, Tensor)> {
    let (n, cols) = x.dims2().map_err(|_| SaeError::Shape(format!("top-k input must be 2-D [rows, cols], got {:?}", x.dims())))?;
    if k == 0 || k > cols {
        return Err(SaeError::Shape(format!("top-k: k = {k} must be in 1..={cols} (the row width of {:?})", x.dims())));
    }
    if x.dtype() != DType::F32 {
        return Err(SaeError::Shape(format!("top-k input must be f32, got {:?}", x.dtype())));
    }
    if n == 0 {
        return Err(SaeError::Shape("top-k input has no rows".into()));
    }
    let x = x.contiguous().map_err(ce("top-k input"))?;
    match method {
        TopKMethod::Grouped => top_k_grouped(&x, k, cache),
        TopKMethod::Chunked => top_k_level(&x, None, k, cache),
    }
}

fn too_large(k: usize, cols: usize) -> SaeError {
    SaeError::Shape(format!(
        "top-k: k = {k} is too large for rows of {cols} columns (one sort holds at most {MAX_SORT_COLS} columns; wider rows need k <= {})",
        MAX_SORT_COLS / 4
    ))
}

/// One `arg_sort_last_dim` of the whole row, first k kept.
fn top_k_sorted(vals: &Tensor, ids: Option<&Tensor>, k: usize) -> Result<(Tensor, Tensor)> {
    let cols = vals.dim(1).map_err(ce("top-k shape"))?;
    if cols > MAX_SORT_COLS {
        return Err(too_large(k, cols));
    }
    let order = vals.arg_sort_last_dim(false).and_then(|o| o.narrow(1, 0, k)?.contiguous()).map_err(ce("top-k sort"))?;
    let v = vals.gather(&order, 1).map_err(ce("top-k gather"))?;
    let i = match ids {
        Some(ids) => ids.gather(&order, 1).map_err(ce("top-k gather ids"))?,
        None => order,
    };
    Ok((v, i))
}

fn top_k_grouped(x: &Tensor, k: usize, cache: &mut TopKCache) -> Result<(Tensor, Tensor)> {
    let (n, cols) = x.dims2().map_err(ce("top-k shape"))?;
    // g: at most 32, k·g <= 4096 candidates (a cheap final sort), and at least k groups.
    let mut g = 32usize;
    while g >= 2 && (k * g > MAX_SORT_COLS / 2 || cols / g < k) {
        g /= 2;
    }
    if cols <= SINGLE_SORT_COLS || g < 2 {
        return top_k_sorted(x, None, k);
    }
    let ng = cols.div_ceil(g);
    let pad = ng * g - cols;
    let dev = x.device();
    // -inf padding never wins: every row has >= k real (finite) columns.
    let xp = if pad > 0 {
        Tensor::full(f32::NEG_INFINITY, (n, pad), dev).and_then(|p| Tensor::cat(&[x, &p], 1)).map_err(ce("top-k pad"))?
    } else {
        x.clone()
    };
    let gmax = xp.reshape((n, ng, g)).and_then(|t| t.max(2)).map_err(ce("top-k group max"))?;
    let (_, gid) = top_k_grouped(&gmax, k, cache)?;
    let (gconst, arange) = match cache.groups.get(&g) {
        Some((c, a)) if c.device().same_device(dev) => (c.clone(), a.clone()),
        _ => {
            let c = Tensor::full(g as u32, (1, 1, 1), dev).map_err(ce("top-k constants"))?;
            let a = Tensor::from_vec((0..g as u32).collect::<Vec<u32>>(), (1, 1, g), dev).map_err(ce("top-k constants"))?;
            cache.groups.insert(g, (c.clone(), a.clone()));
            (c, a)
        }
    };
    // Column ids of every member of the selected groups, [n, k·g].
    let cand_i = gid
        .reshape((n, k, 1))
        .and_then(|t| t.broadcast_mul(&gconst)?.broadcast_add(&arange)?.reshape((n, k * g)))
        .map_err(ce("top-k candidate ids"))?;
    let cand_v = xp.gather(&cand_i, 1).map_err(ce("top-k candidate gather"))?;
    top_k_sorted(&cand_v, Some(&cand_i), k)
}

fn chunk_cols(k: usize) -> usize {
    (2 * k).next_power_of_two().max(1024)
}

fn top_k_level(vals: &Tensor, ids: Option<&Tensor>, k: usize, cache: &mut TopKCache) -> Result<(Tensor, Tensor)> {
    let (n, cols) = vals.dims2().map_err(ce("top-k shape"))?;
    let c = chunk_cols(k);
    if cols <= SINGLE_SORT_COLS || cols <= c {
        return top_k_sorted(vals, ids, k);
    }
    if c > MAX_SORT_COLS {
        return Err(too_large(k, cols));
    }
    let nc = cols.div_ceil(c);
    let pad = nc * c - cols;
    let dev = vals.device();
    // Padding with -inf: a real value always beats it, and there are >= k real
    // columns per row, so padded columns are never selected in the end.
    let (vals_p, ids_p) = if pad > 0 {
        let vp = Tensor::full(f32::NEG_INFINITY, (n, pad), dev).and_then(|p| Tensor::cat(&[vals, &p], 1)).map_err(ce("top-k pad"))?;
        let ip = match ids {
            Some(ids) => {
                Some(Tensor::zeros((n, pad), DType::U32, dev).and_then(|p| Tensor::cat(&[ids, &p], 1)).map_err(ce("top-k pad ids"))?)
            }
            None => None,
        };
        (vp, ip)
    } else {
        (vals.clone(), ids.cloned())
    };
    let v2 = vals_p.reshape((n * nc, c)).map_err(ce("top-k chunk reshape"))?;
    let order = v2.arg_sort_last_dim(false).and_then(|o| o.narrow(1, 0, k)?.contiguous()).map_err(ce("top-k chunk sort"))?;
    let cand_v = v2.gather(&order, 1).and_then(|t| t.reshape((n, nc * k))).map_err(ce("top-k chunk gather"))?;
    let cand_i = match ids_p {
        Some(ids) => ids
            .reshape((n * nc, c))
            .and_then(|t| t.gather(&order, 1))
            .and_then(|t| t.reshape((n, nc * k)))
            .map_err(ce("top-k chunk gather ids"))?,
        None => {
            let off = match cache.offsets.get(&(nc, c)) {
                Some(t) if t.device().same_device(dev) => t.clone(),
                _ => {
                    let v: Vec<u32> = (0..nc).map(|i| (i * c) as u32).collect();
                    let t = Tensor::from_vec(v, (1, nc, 1), dev).map_err(ce("top-k offsets"))?;
                    cache.offsets.insert((nc, c), t.clone());
                    t
                }
            };
            order
                .reshape((n, nc, k))
                .and_then(|t| t.broadcast_add(&off))
                .and_then(|t| t.reshape((n, nc * k)))
                .map_err(ce("top-k global ids"))?
        }
    };
    top_k_level(&cand_v, Some(&cand_i), k, cache)
}

/// Column sums of a contiguous [n, c] f32 tensor as `ones[1, n] @ t` ([c]): one
/// coalesced GEMV, where candle's CUDA reduction over dim 0 reads with stride c.
fn col_sum(t: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c) = t.dims2()?;
    Tensor::ones((1, n), t.dtype(), t.device())?.matmul(t)?.reshape(c)
}

/// Statistics of one device step, still on the device. [`PendingStats::fetch`]
/// copies the scalars back (one synchronisation).
#[derive(Debug)]
pub struct PendingStats {
    step: u64,
    n: usize,
    sse: Tensor,
    aux_sse: Option<Tensor>,
    aux_factor: f64,
    active: Tensor,
    sum_sq: Tensor,
    col_sum: Tensor,
    dead: usize,
}

impl PendingStats {
    /// The step's [`StepStats`] (same definitions as [`Trainer::step`]). Errors
    /// when the loss was not finite.
    pub fn fetch(&self) -> Result<StepStats> {
        let sc = |t: &Tensor, what: &str| -> Result<f64> { t.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()).map_err(ce(what)) };
        let n = self.n as f64;
        let mse = sc(&self.sse, "mse")? / n;
        let aux_loss = match &self.aux_sse {
            Some(t) => self.aux_factor * sc(t, "aux loss")? / n,
            None => 0.0,
        };
        let loss = mse + aux_loss;
        if !loss.is_finite() {
            return Err(SaeError::Numeric(format!("loss became {loss} at step {}", self.step)));
        }
        let l0 = sc(&self.active, "l0")? / n;
        let col: Vec<f32> = self.col_sum.to_vec1::<f32>().map_err(ce("column sums"))?;
        let sst = sc(&self.sum_sq, "sum of squares")? - col.iter().map(|&a| a as f64 * a as f64).sum::<f64>() / n;
        Ok(StepStats {
            step: self.step,
            loss,
            mse,
            l1_loss: 0.0,
            aux_loss,
            l0,
            explained_variance: if sst > 0.0 { 1.0 - mse * n / sst } else { f64::NAN },
            dead_latents: self.dead,
            threshold: None,
        })
    }
}

/// One parameter tensor set (same roles as the CPU trainer's), device-resident.
/// `w_enc` is [d, m] (SAELens layout) so the forward GEMM needs no transpose.
#[derive(Clone)]
struct DParams {
    w_enc: Tensor,
    w_dec: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
}

impl DParams {
    fn upload(p: &Params, d: usize, m: usize, dev: &Device) -> Result<Self> {
        let up = |v: Vec<f32>, shape: &[usize], what: &str| Tensor::from_vec(v, shape, dev).map_err(ce(what));
        Ok(DParams {
            w_enc: up(transpose(&p.w_enc_t, m, d), &[d, m], "W_enc upload")?,
            w_dec: up(p.w_dec.clone(), &[m, d], "W_dec upload")?,
            b_enc: up(p.b_enc.clone(), &[m], "b_enc upload")?,
            b_dec: up(p.b_dec.clone(), &[d], "b_dec upload")?,
        })
    }
    fn download(&self, d: usize, m: usize) -> Result<Params> {
        let v2 = |t: &Tensor, what: &str| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(ce(what));
        Ok(Params {
            w_enc_t: transpose(&v2(&self.w_enc, "W_enc download")?, d, m),
            w_dec: v2(&self.w_dec, "W_dec download")?,
            b_enc: v2(&self.b_enc, "b_enc download")?,
            b_dec: v2(&self.b_dec, "b_dec download")?,
        })
    }
}

/// Trains one TopK SAE with tensors on `device`. See the module docs.
pub struct DeviceTrainer {
    cfg: TrainConfig,
    k: usize,
    device: Device,
    p: DParams,
    m: DParams,
    v: DParams,
    steps: u64,
    scale: Option<f32>,
    /// [m] f64: tokens since each latent last fired.
    tokens_since_fired: Tensor,
    /// [m] f64: total firings.
    fire_count: Tensor,
    tokens_seen: u64,
    /// Upper bound of `tokens_since_fired` known on the host: while it is below
    /// `dead_after_tokens` no latent can be dead and the step needs no sync.
    tsf_bound: u64,
    topk: TopKCache,
    topk_method: TopKMethod,
}

impl std::fmt::Debug for DeviceTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTrainer")
            .field("cfg", &self.cfg)
            .field("device", &self.device)
            .field("steps", &self.steps)
            .field("scale", &self.scale)
            .field("tokens_seen", &self.tokens_seen)
            .finish_non_exhaustive()
    }
}

struct Adam {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    bc1: f64,
    bc2_sqrt: f64,
}

impl Adam {
    /// PyTorch Adam, as the CPU trainer: `p -= lr/bc1 · m / (sqrt(v)/bc2_sqrt + eps)`.
    fn update(&self, p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let m2 = (m.affine(self.b1, 0.0)? + g.affine(1.0 - self.b1, 0.0)?)?;
        let v2 = (v.affine(self.b2, 0.0)? + g.sqr()?.affine(1.0 - self.b2, 0.0)?)?;
        let denom = v2.sqrt()?.affine(1.0 / self.bc2_sqrt, self.eps)?;
        let p2 = (p - (m2.affine(self.lr / self.bc1, 0.0)? / denom)?)?;
        Ok((p2, m2, v2))
    }
}

impl DeviceTrainer {
    /// A fresh trainer with exactly [`Trainer::new`]'s initialisation (same seed,
    /// same weights), moved to `device`.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self> {
        Self::from_trainer(&Trainer::new(cfg)?, device)
    }

    /// Copies a CPU trainer's complete state (weights, Adam moments, step count,
    /// scale, dead-latent clocks, firing counts) to `device`.
    pub fn from_trainer(t: &Trainer, device: &Device) -> Result<Self> {
        let cfg = t.cfg.clone();
        cfg.validate()?;
        let k = match cfg.arch {
            Architecture::TopK { k } => k,
            ref a => {
                return Err(SaeError::Config(format!(
                    "the device trainer supports TopK only, got {a:?} (train BatchTopK / ReLU SAEs with the CPU Trainer)"
                )))
            }
        };
        let (d, m) = (cfg.d_in, cfg.d_sae);
        let f64s = |v: &[u64], what: &str| Tensor::from_vec(v.iter().map(|&x| x as f64).collect::<Vec<f64>>(), m, device).map_err(ce(what));
        Ok(DeviceTrainer {
            k,
            device: device.clone(),
            p: DParams::upload(&t.p, d, m, device)?,
            m: DParams::upload(&t.m, d, m, device)?,
            v: DParams::upload(&t.v, d, m, device)?,
            steps: t.steps,
            scale: t.scale,
            tokens_since_fired: f64s(&t.tokens_since_fired, "dead-latent clocks")?,
            fire_count: f64s(&t.fire_count, "firing counts")?,
            tokens_seen: t.tokens_seen,
            tsf_bound: t.tokens_since_fired.iter().copied().max().unwrap_or(0),
            topk: TopKCache::default(),
            topk_method: TopKMethod::default(),
            cfg,
        })
    }

    /// Copies the state back into a CPU [`Trainer`] (for checkpoints with
    /// [`Trainer::save_checkpoint`], or to continue on the CPU).
    pub fn to_trainer(&self) -> Result<Trainer> {
        let (d, m) = (self.cfg.d_in, self.cfg.d_sae);
        let u64s = |t: &Tensor, what: &str| -> Result<Vec<u64>> {
            Ok(t.to_vec1::<f64>().map_err(ce(what))?.into_iter().map(|x| x.round().max(0.0) as u64).collect())
        };
        Ok(Trainer {
            cfg: self.cfg.clone(),
            p: self.p.download(d, m)?,
            m: self.m.download(d, m)?,
            v: self.v.download(d, m)?,
            steps: self.steps,
            scale: self.scale,
            tokens_since_fired: u64s(&self.tokens_since_fired, "dead-latent clocks")?,
            fire_count: u64s(&self.fire_count, "firing counts")?,
            tokens_seen: self.tokens_seen,
            threshold: None,
        })
    }

    /// The inference SAE for raw activations (normalisation folded in), as [`Trainer::to_sae`].
    pub fn to_sae(&self) -> Result<Sae> {
        self.to_trainer()?.to_sae()
    }

    /// [`Trainer::save_checkpoint`] of the downloaded state ([`Trainer::load_checkpoint`]
    /// + [`DeviceTrainer::from_trainer`] resumes on a device).
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.to_trainer()?.save_checkpoint(path)
    }

    /// [`Trainer::log_feature_density`] (downloads the firing counts).
    pub fn log_feature_density(&self) -> Result<Vec<f32>> {
        Ok(self.to_trainer()?.log_feature_density())
    }

    /// Chooses the top-k narrowing ([`TopKMethod::Grouped`] by default); both are exact.
    pub fn set_top_k_method(&mut self, m: TopKMethod) {
        self.topk_method = m;
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn steps(&self) -> u64 {
        self.steps
    }
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }
    pub fn scale(&self) -> Option<f32> {
        self.scale
    }

    /// One step on a row-major host batch `x` [n, d_in] (checked for shape and
    /// non-finite values like [`Trainer::step`], then uploaded).
    pub fn step(&mut self, x: &[f32]) -> Result<PendingStats> {
        let d = self.cfg.d_in;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(SaeError::Shape(format!("batch has {} values, not a non-zero multiple of d_in = {d}", x.len())));
        }
        if let Some(p) = x.iter().position(|v| !v.is_finite()) {
            return Err(SaeError::Numeric(format!("non-finite input at row {}, column {}", p / d, p % d)));
        }
        let t = Tensor::from_slice(x, (x.len() / d, d), &self.device).map_err(ce("batch upload"))?;
        self.step_tensor(&t)
    }

    /// One step on a batch tensor [n, d_in] (any float dtype; moved to the
    /// trainer's device if needed — keep batches on the device to avoid copies).
    pub fn step_tensor(&mut self, x: &Tensor) -> Result<PendingStats> {
        let d = self.cfg.d_in;
        let (n, dx) = x.dims2().map_err(|_| SaeError::Shape(format!("batch tensor must be 2-D [n, d_in = {d}], got {:?}", x.dims())))?;
        if dx != d || n == 0 {
            return Err(SaeError::Shape(format!("batch tensor is {:?}, expected [n > 0, d_in = {d}]", x.dims())));
        }
        let x =
            x.to_device(&self.device).and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.contiguous()).map_err(ce("batch to device"))?;
        if self.steps == 0 {
            self.init_from_first_batch(&x, n)?;
        }
        self.step_inner(&x, n)
    }

    fn init_from_first_batch(&mut self, x: &Tensor, n: usize) -> Result<()> {
        let d = self.cfg.d_in;
        if self.scale.is_none() {
            let s = if self.cfg.normalize {
                let ss = x.to_dtype(DType::F64).and_then(|t| t.sqr()?.sum_all()?.to_scalar::<f64>()).map_err(ce("first-batch norm"))?;
                crate::train::normalisation_scale(ss, n, d)?
            } else {
                1.0
            };
            self.scale = Some(s);
        }
        if self.cfg.b_dec_init_mean {
            let s = self.scale.unwrap_or(1.0) as f64;
            self.p.b_dec =
                x.to_dtype(DType::F64).and_then(|t| t.sum(0)?.affine(s / n as f64, 0.0)?.to_dtype(DType::F32)).map_err(ce("b_dec init"))?;
        }
        Ok(())
    }

    /// u8 [m]: 1 where the latent has not fired for `dead_after_tokens` tokens.
    fn dead_mask(&self) -> candle_core::Result<Tensor> {
        // A device-side constant (const fill) rather than a scalar operand, which
        // candle would upload from the host.
        let thr = Tensor::full(self.cfg.dead_after_tokens as f64, self.cfg.d_sae, &self.device)?;
        self.tokens_since_fired.ge(&thr)
    }

    fn n_dead(&self) -> Result<usize> {
        if self.tsf_bound < self.cfg.dead_after_tokens {
            return Ok(0);
        }
        let c = self.dead_mask().and_then(|t| t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()).map_err(ce("dead-latent count"))?;
        Ok(c.round() as usize)
    }

    fn forward_backward(&mut self, xs_raw: &Tensor, n: usize) -> Result<FwdBwd> {
        let (d, m, k) = (self.cfg.d_in, self.cfg.d_sae, self.k);
        let dead = self.n_dead()?;
        let use_aux = self.cfg.aux_k > 0 && dead > 0;
        let k_aux = if use_aux { self.cfg.aux_k.min(dead) } else { 0 };
        let aux_scale = if use_aux { (dead as f64 / self.cfg.aux_k as f64).min(1.0) } else { 0.0 };
        let aux_factor = self.cfg.aux_coefficient as f64 * aux_scale;
        let s = self.scale.unwrap_or(1.0) as f64;
        let p = self.p.clone();
        let e = ce("step");

        // Forward.
        let xs = if s == 1.0 { xs_raw.clone() } else { xs_raw.affine(s, 0.0).map_err(&e)? };
        let xc = xs.broadcast_sub(&p.b_dec).map_err(&e)?;
        let pre = xc.matmul(&p.w_enc).and_then(|t| t.broadcast_add(&p.b_enc)).map_err(ce("encoder GEMM"))?;
        let (vals, ids) = top_k_rows_with(&pre, k, self.topk_method, &mut self.topk)?;
        let zeros_k = vals.zeros_like().map_err(&e)?;
        // ReLU after the selection; entries with vals <= 0 carry no gradient (the
        // CPU trainer drops them).
        let pos = vals.gt(&zeros_k).and_then(|t| t.to_dtype(DType::F32)).map_err(&e)?;
        let z = vals.relu().map_err(&e)?;
        let rows = p
            .w_dec
            .index_select(&ids.flatten_all().map_err(&e)?, 0)
            .and_then(|t| t.reshape((n, k, d)))
            .map_err(ce("decoder row gather"))?;
        let x_hat = z
            .reshape((n, 1, k))
            .and_then(|t| t.matmul(&rows))
            .and_then(|t| t.reshape((n, d)))
            .and_then(|t| t.broadcast_add(&p.b_dec))
            .map_err(ce("sparse decode"))?;
        let r = (&x_hat - &xs).map_err(&e)?;
        let sse = r.sqr().and_then(|t| t.sum_all()).map_err(&e)?;
        let gx = r.affine(2.0 / n as f64, 0.0).map_err(&e)?;
        let dpre =
            rows.matmul(&gx.reshape((n, d, 1)).map_err(&e)?).and_then(|t| t.reshape((n, k))).and_then(|t| t * &pos).map_err(ce("dL/dz"))?;

        // Weight gradients as sparse accumulations over the k active latents of each row
        // (`Zᵀ gx` without building the [n, m] code matrix): see `crate::sparse`.
        let mut g_wdec = sparse_rows_acc(&ids, &z, &gx, m).map_err(ce("dW_dec"))?;
        // Pairs (latent, dL/dpre) feeding the encoder gradients; AuxK appends its own.
        let mut enc_ids = vec![ids.clone()];
        let mut enc_coef = vec![dpre.clone()];

        // AuxK on the dead latents.
        let mut aux_sse = None;
        if k_aux > 0 {
            // Alive latents get a huge negative offset (finite, so no inf - inf).
            let dead_f = self.dead_mask().and_then(|t| t.to_dtype(DType::F32)).map_err(&e)?;
            let penalty = dead_f.affine(1e30, -1e30).map_err(&e)?;
            let aux_pre = pre.broadcast_add(&penalty).map_err(&e)?;
            let (av, ai) = top_k_rows_with(&aux_pre, k_aux, self.topk_method, &mut self.topk)?;
            let apos = av.gt(&av.zeros_like().map_err(&e)?).and_then(|t| t.to_dtype(DType::F32)).map_err(&e)?;
            let az = av.relu().map_err(&e)?;
            let arows = p
                .w_dec
                .index_select(&ai.flatten_all().map_err(&e)?, 0)
                .and_then(|t| t.reshape((n, k_aux, d)))
                .map_err(ce("aux decoder gather"))?;
            let ae = az
                .reshape((n, 1, k_aux))
                .and_then(|t| t.matmul(&arows))
                .and_then(|t| t.reshape((n, d)))
                .and_then(|t| t + &r)
                .map_err(ce("aux decode"))?;
            aux_sse = Some(ae.sqr().and_then(|t| t.sum_all()).map_err(&e)?);
            let ga = ae.affine(2.0 * aux_factor / n as f64, 0.0).map_err(&e)?;
            let adpre = arows
                .matmul(&ga.reshape((n, d, 1)).map_err(&e)?)
                .and_then(|t| t.reshape((n, k_aux)))
                .and_then(|t| t * &apos)
                .map_err(ce("aux dL/dz"))?;
            enc_ids.push(ai.clone());
            enc_coef.push(adpre);
            g_wdec = sparse_rows_acc(&ai, &az, &ga, m).and_then(|t| t + &g_wdec).map_err(ce("aux dW_dec"))?;
        }

        let (eids, ecoef) = (Tensor::cat(&enc_ids, 1).map_err(&e)?, Tensor::cat(&enc_coef, 1).map_err(&e)?);
        // dW_enc [d, m] = xcᵀ G, accumulated as its transpose [m, d] (whole rows per pair).
        let g_wenc = sparse_rows_acc(&eids, &ecoef, &xc, m).and_then(|t| t.t()?.contiguous()).map_err(ce("dW_enc"))?;
        let ones = Tensor::ones((n, 1), DType::F32, &self.device).map_err(&e)?;
        let g_benc = sparse_rows_acc(&eids, &ecoef, &ones, m).and_then(|t| t.reshape(m)).map_err(ce("db_enc"))?;
        // Firings per latent: the active entries of the top-k (a latent appears once per row).
        let fired = sparse_rows_acc(&ids, &pos, &ones, m).and_then(|t| t.reshape(m)).map_err(ce("firing counts"))?;
        // b_dec: directly through x_hat, and through `x - b_dec` with the pre-update encoder.
        let g_bdec = p
            .w_enc
            .matmul(&g_benc.reshape((m, 1)).map_err(&e)?)
            .and_then(|t| t.reshape(d))
            .and_then(|t| col_sum(&gx)? - t)
            .map_err(ce("db_dec"))?;
        Ok(FwdBwd { g_wenc, g_wdec, g_benc, g_bdec, fired, pos, sse, aux_sse, aux_factor, xs, dead, n })
    }

    /// Loss and raw gradients (decoder gradient before the unit-norm projection)
    /// on a host batch, without updating anything: for gradient checks. Uses the
    /// current scale (the first batch's if no step ran yet, without initialising b_dec).
    pub fn gradients(&mut self, x: &[f32]) -> Result<crate::train::Gradients> {
        let d = self.cfg.d_in;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(SaeError::Shape(format!("batch has {} values, not a non-zero multiple of d_in = {d}", x.len())));
        }
        let n = x.len() / d;
        let t = Tensor::from_slice(x, (n, d), &self.device).map_err(ce("batch upload"))?;
        let fb = self.forward_backward(&t, n)?;
        let st = fb.stats(self.steps)?.fetch()?;
        let (m, e) = (self.cfg.d_sae, ce("gradient download"));
        let v = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(&e);
        Ok(crate::train::Gradients {
            loss: st.loss,
            w_enc_t: transpose(&v(&fb.g_wenc)?, d, m),
            w_dec: v(&fb.g_wdec)?,
            b_enc: v(&fb.g_benc)?,
            b_dec: v(&fb.g_bdec)?,
        })
    }

    fn step_inner(&mut self, xs_raw: &Tensor, n: usize) -> Result<PendingStats> {
        let fb = self.forward_backward(xs_raw, n)?;
        let (e, p) = (ce("step"), self.p.clone());
        // Unit-norm decoder rows: drop the radial gradient component.
        let par = (&fb.g_wdec * &p.w_dec).and_then(|t| t.sum_keepdim(1)).map_err(&e)?;
        let g_wdec = (&fb.g_wdec - par.broadcast_mul(&p.w_dec).map_err(&e)?).map_err(&e)?;
        let (g_wenc, g_benc, g_bdec) = (&fb.g_wenc, &fb.g_benc, &fb.g_bdec);
        // Adam.
        self.steps += 1;
        let t = self.steps as i32;
        let h = Adam {
            lr: self.cfg.lr as f64,
            b1: self.cfg.beta1 as f64,
            b2: self.cfg.beta2 as f64,
            eps: self.cfg.eps as f64,
            bc1: 1.0 - (self.cfg.beta1 as f64).powi(t),
            bc2_sqrt: (1.0 - (self.cfg.beta2 as f64).powi(t)).sqrt(),
        };
        let ea = ce("Adam");
        let (w_enc, m_we, v_we) = h.update(&p.w_enc, &self.m.w_enc, &self.v.w_enc, g_wenc).map_err(&ea)?;
        let (w_dec, m_wd, v_wd) = h.update(&p.w_dec, &self.m.w_dec, &self.v.w_dec, &g_wdec).map_err(&ea)?;
        let (b_enc, m_be, v_be) = h.update(&p.b_enc, &self.m.b_enc, &self.v.b_enc, g_benc).map_err(&ea)?;
        let (b_dec, m_bd, v_bd) = h.update(&p.b_dec, &self.m.b_dec, &self.v.b_dec, g_bdec).map_err(&ea)?;
        // Renormalise decoder rows (a zero row stays zero, as on the CPU).
        let norm = w_dec
            .sqr()
            .and_then(|t| t.sum_keepdim(1)?.sqrt())
            .and_then(|t| t.broadcast_maximum(&Tensor::full(f32::MIN_POSITIVE, (1, 1), &self.device)?))
            .map_err(ce("decoder norm"))?;
        let w_dec = w_dec.broadcast_div(&norm).map_err(ce("decoder norm"))?;
        self.p = DParams { w_enc, w_dec, b_enc, b_dec };
        self.m = DParams { w_enc: m_we, w_dec: m_wd, b_enc: m_be, b_dec: m_bd };
        self.v = DParams { w_enc: v_we, w_dec: v_wd, b_enc: v_be, b_dec: v_bd };

        // Bookkeeping: firings per latent.
        let eb = ce("firing counters");
        let fired = fb.fired.to_dtype(DType::F64).map_err(&eb)?;
        let not_fired = fired.eq(&fired.zeros_like().map_err(&eb)?).and_then(|t| t.to_dtype(DType::F64)).map_err(&eb)?;
        self.tokens_since_fired = self.tokens_since_fired.affine(1.0, n as f64).and_then(|t| t * not_fired).map_err(&eb)?;
        self.fire_count = (&self.fire_count + &fired).map_err(&eb)?;
        self.tokens_seen += n as u64;
        self.tsf_bound = self.tsf_bound.saturating_add(n as u64);

        fb.stats(self.steps)
    }
}

/// Everything one forward / backward pass leaves for the update and the stats.
struct FwdBwd {
    g_wenc: Tensor,
    g_wdec: Tensor,
    g_benc: Tensor,
    g_bdec: Tensor,
    /// Rows in which each latent fired `[m]` (f32 counts).
    fired: Tensor,
    pos: Tensor,
    sse: Tensor,
    aux_sse: Option<Tensor>,
    aux_factor: f64,
    xs: Tensor,
    dead: usize,
    n: usize,
}

impl FwdBwd {
    /// The step's statistics as device scalars (three small reductions, no sync).
    fn stats(&self, step: u64) -> Result<PendingStats> {
        let e = ce("step statistics");
        Ok(PendingStats {
            step,
            n: self.n,
            sse: self.sse.clone(),
            aux_sse: self.aux_sse.clone(),
            aux_factor: self.aux_factor,
            active: self.pos.sum_all().map_err(&e)?,
            sum_sq: self.xs.sqr().and_then(|t| t.sum_all()).map_err(&e)?,
            col_sum: col_sum(&self.xs).map_err(&e)?,
            dead: self.dead,
        })
    }
}

/// A [`Trainer`] on the CPU or a [`DeviceTrainer`], chosen by device: the one
/// entry point a training loop needs (`step` on host batches, `to_sae`).
pub enum AnyTrainer {
    Cpu(Box<Trainer>),
    Device(Box<DeviceTrainer>),
}

impl AnyTrainer {
    /// The CPU trainer on [`Device::Cpu`] or for non-TopK architectures (the
    /// device trainer is TopK only); the device trainer otherwise.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Self> {
        if device.is_cpu() || !matches!(cfg.arch, Architecture::TopK { .. }) {
            Ok(AnyTrainer::Cpu(Box::new(Trainer::new(cfg)?)))
        } else {
            Ok(AnyTrainer::Device(Box::new(DeviceTrainer::new(cfg, device)?)))
        }
    }

    /// [`AnyTrainer::new`] on the device named by `EMLAB_DEVICE` (`cpu`, `cuda`,
    /// `cuda:N`; unset = cpu), the workspace-wide device switch.
    pub fn from_env(cfg: TrainConfig) -> Result<Self> {
        let dev = device_from_env()?;
        Self::new(cfg, &dev)
    }

    /// One step; on a device this waits for the step's statistics.
    pub fn step(&mut self, x: &[f32]) -> Result<StepStats> {
        match self {
            AnyTrainer::Cpu(t) => t.step(x),
            AnyTrainer::Device(t) => t.step(x)?.fetch(),
        }
    }

    pub fn to_sae(&self) -> Result<Sae> {
        match self {
            AnyTrainer::Cpu(t) => t.to_sae(),
            AnyTrainer::Device(t) => t.to_sae(),
        }
    }

    /// The state as a CPU trainer (checkpoints, log-feature density).
    pub fn to_trainer(&self) -> Result<Trainer> {
        match self {
            AnyTrainer::Cpu(t) => Ok(Trainer {
                cfg: t.cfg.clone(),
                p: t.p.clone(),
                m: t.m.clone(),
                v: t.v.clone(),
                steps: t.steps,
                scale: t.scale,
                tokens_since_fired: t.tokens_since_fired.clone(),
                fire_count: t.fire_count.clone(),
                tokens_seen: t.tokens_seen,
                threshold: t.threshold,
            }),
            AnyTrainer::Device(t) => t.to_trainer(),
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N` (case and spaces ignored) and opens it. CUDA
/// in a build without the `cuda` feature is a one-line error.
pub fn parse_device(s: &str) -> Result<Device> {
    let t = s.trim().to_ascii_lowercase();
    let ordinal = match t.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(SaeError::Config(format!("device `{s}`: expected cpu, cuda or cuda:N"))),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(SaeError::Config(format!("device `{s}`: this binary was built without CUDA support (rebuild with `--features cuda`)")));
    }
    Device::new_cuda(ordinal).map_err(|e| SaeError::Config(format!("device `{s}`: cannot open CUDA device {ordinal}: {e}")))
}

/// The device named by `EMLAB_DEVICE` (unset or empty = cpu).
pub fn device_from_env() -> Result<Device> {
    match std::env::var("EMLAB_DEVICE") {
        Ok(s) if !s.trim().is_empty() => parse_device(&s),
        _ => Ok(Device::Cpu),
    }
}
