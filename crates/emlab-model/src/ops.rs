//! Fused CPU kernels with hand-written backward passes, for the training path.
//!
//! candle's fast fused ops (`softmax_last_dim`, `rms_norm`, `rope`) record no backward, and its
//! matmul backward always computes the gradient of *both* operands, even for a frozen weight.
//! These custom ops compute the same values and return exactly the gradients training needs:
//!
//! - [`frozen_matmul`]: `x W^T` for a frozen `W`; the backward returns only `dX` (for LoRA the
//!   base weight gradient, 2·N·in·out FLOPs per projection, is pure waste).
//! - [`rms_norm`]: `x / sqrt(mean(x²) + eps) * w` (frozen `w`).
//! - [`softmax_last_dim`]: softmax over the last axis (`-inf` entries give 0: causal masks).
//! - [`rope`]: half-rotation rotary embedding (`[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]`).
//! - [`cross_entropy`]: per-row `logsumexp(logits) - logits[target]` without materialising
//!   log-probabilities (the composed form keeps several `[N, V]` temporaries alive).
//!
//! Which implementation runs is chosen per call, from the input's device, dtype and whether it
//! tracks gradients ([`path_for`]), inside the op itself, so the model has one forward pass:
//!
//! - [`OpPath::Fused`]: the custom CPU kernel above (f32 on the CPU, tracking gradients);
//! - [`OpPath::Composed`]: plain candle ops, all differentiable. Training on a GPU (or in bf16)
//!   runs this; half-precision inputs are computed in f32 and cast back, as PyTorch does;
//! - [`OpPath::Kernel`]: candle's own fused kernels (CUDA on a GPU), which record no backward:
//!   only for inputs that do not track gradients on a non-CPU device (generation, capture).
//!
//! With the `cuda` feature, training on a CUDA device takes neither of the last two: each op
//! branches first to emlab's fused CUDA kernel with a hand-written backward (`crate::cuda_ops`;
//! `EMLAB_CUDA_FUSED=0` falls back to [`OpPath::Composed`]), as do [`causal_softmax`] and
//! [`silu_mul`].
//!
//! CPU inference keeps the composed form (its numbers are the CPU reference). [`with_portable`]
//! (or `EMLAB_PORTABLE_OPS=1`) makes a CPU run take the paths a GPU would take, so the GPU path
//! is tested on machines without one: tests check values and gradients of both paths against
//! each other and against hand-written composed forms.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use emlab_model::ops;
//! let x = Var::from_tensor(&Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu)?)?;
//! let w = Tensor::new(&[[1f32, 0., 0.], [0., 1., 1.]], &Device::Cpu)?; // frozen [out=2, in=3]
//! let y = ops::frozen_matmul(x.as_tensor(), &w)?;                      // [1, 2]
//! assert_eq!(y.to_vec2::<f32>()?, vec![vec![1., 5.]]);
//! let g = y.sum_all()?.backward()?;
//! assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![1., 1., 1.]]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! This file uses nothing but candle, candle-nn and rayon, so it can be compiled into another crate too.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{op}: expected f32 input"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: expected a contiguous input"),
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

// ---------------------------------------------------------------------------------------------
// Path selection

/// The implementation an op runs for a given input (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpPath {
    /// emlab's CPU kernel with a hand-written backward.
    Fused,
    /// Differentiable candle ops (any device, any float dtype).
    Composed,
    /// candle's fused kernels, no backward (non-CPU inference).
    Kernel,
}

thread_local! {
    static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn portable_from_env() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| matches!(std::env::var("EMLAB_PORTABLE_OPS").as_deref(), Ok("1") | Ok("true")))
}

/// True while CPU-only kernels are switched off on this thread ([`with_portable`]) or for the
/// whole process (`EMLAB_PORTABLE_OPS=1`).
pub fn portable_forced() -> bool {
    PORTABLE.with(|p| p.get()) || portable_from_env()
}

/// Runs `f` with the CPU-only kernels of this crate (this module, [`crate::int8`], the cached
/// attention) replaced by the paths a GPU takes, on this thread. Nests; restores on unwind.
pub fn with_portable<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE.with(|p| p.replace(true)));
    f()
}

/// The path an op takes for input `x`.
pub fn path_for(x: &Tensor) -> OpPath {
    let gpu_like = !x.device().is_cpu() || portable_forced();
    match (x.track_op(), gpu_like) {
        (true, false) if x.dtype() == DType::F32 => OpPath::Fused,
        (false, true) => OpPath::Kernel,
        _ => OpPath::Composed,
    }
}

fn trains_on_cpu(x: &Tensor) -> bool {
    path_for(x) == OpPath::Fused
}

/// The dtype composed ops compute in: f32 for half-precision inputs (their sums and
/// exponentials lose too much in 8 mantissa bits), the input's own dtype otherwise.
fn compute_dtype(d: DType) -> DType {
    match d {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

// ---------------------------------------------------------------------------------------------
// Frozen matmul

struct FrozenMatmul;

/// `x Wᵀ` on any backend's storage: the same strided GEMM `x.matmul(&w.t())` runs, so values
/// match the plain op bit for bit.
fn frozen_fwd<S: BackendStorage>(s1: &S, l1: &Layout, s2: &S, l2: &Layout) -> Result<(S, Shape)> {
    let (m, k) = match l1.dims() {
        [m, k] => (*m, *k),
        d => bail!("frozen-matmul: x must be [M, K], got {d:?}"),
    };
    let (n, k2) = match l2.dims() {
        [n, k2] => (*n, *k2),
        d => bail!("frozen-matmul: w must be [N, K], got {d:?}"),
    };
    if k != k2 {
        bail!("frozen-matmul: x is [{m}, {k}] but w is [{n}, {k2}]");
    }
    let wt = l2.transpose(0, 1)?;
    let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        frozen_fwd(s1, l1, s2, l2)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        frozen_fwd(s1, l1, s2, l2)
    }
    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dX = dY W; no dW: the weight is frozen.
        Ok((Some(grad.contiguous()?.matmul(w)?), None))
    }
}

/// `x W^T` for `x` `[..., in]` and a frozen `W` `[out, in]`; gradients flow to `x` only.
///
/// While `x` tracks gradients this is one graph node whose backward is the single GEMM `dY W`:
/// candle's own matmul node would also compute `dW = xᵀ dY` for the frozen weight (a GEMM as
/// large as the forward's, then a zero-filled weight-sized buffer and an add) and throw it away.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let x = if !trains_on_cpu(x) || w.dtype() != DType::F32 {
        // cuBLAS / gemm in the weight's dtype (bf16 base on a GPU); the result keeps it.
        let x = if x.dtype() != w.dtype() { x.to_dtype(w.dtype())? } else { x.clone() };
        if !x.track_op() || x.rank() < 2 {
            return x.broadcast_matmul(&w.detach().t()?);
        }
        x
    } else {
        x.clone()
    };
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let m: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.contiguous()?.reshape((m, k))?;
    let y = x2.apply_op2(&w.detach(), FrozenMatmul)?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNormOp {
    w: Arc<Vec<f32>>,
    eps: f32,
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rms-norm")?;
        let d = self.w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + self.eps).sqrt();
            for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(self.w.iter()) {
                *o = v * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (xv, gv) = (to_vec(x)?, to_vec(grad)?);
        let d = self.w.len();
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(d).zip(xv.par_chunks(d)).zip(gv.par_chunks(d)).for_each(|((dr, xr), gr)| {
            let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + self.eps).sqrt();
            // d/dx of x r w: r (g w) - x r^3 <g w, x> / d
            let dot: f32 = xr.iter().zip(gr).zip(self.w.iter()).map(|((x, g), w)| x * g * w).sum();
            let c = r * r * r * dot / d as f32;
            for (((o, &xv), &g), &w) in dr.iter_mut().zip(xr).zip(gr).zip(self.w.iter()) {
                *o = r * g * w - xv * c;
            }
        });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// RMSNorm over the last axis with a frozen weight `w` `[d]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] {
        bail!("rms-norm: weight {:?} does not match the last axis {d}", w.dims());
    }
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::wanted(x) && !w.track_op() {
        return crate::cuda_ops::rms_norm(x, w, eps);
    }
    match path_for(x) {
        OpPath::Fused if !w.track_op() => {}
        OpPath::Kernel if !w.track_op() => {
            // candle's kernel accumulates in f32 whatever the input dtype.
            let w = if w.dtype() != x.dtype() { w.to_dtype(x.dtype())? } else { w.clone() };
            return candle_nn::ops::rms_norm(&x.contiguous()?, &w, eps as f32);
        }
        _ => {
            // As HF computes it: normalise in f32, cast back, then scale by the weight.
            let (dt, xc) = (x.dtype(), x.to_dtype(compute_dtype(x.dtype()))?);
            let ms = xc.sqr()?.mean_keepdim(D::Minus1)?;
            let inv = (ms + eps)?.sqrt()?.recip()?;
            let w = if w.dtype() != dt { w.to_dtype(dt)? } else { w.clone() };
            return xc.broadcast_mul(&inv)?.to_dtype(dt)?.broadcast_mul(&w);
        }
    }
    x.contiguous()?.apply_op1(RmsNormOp { w: Arc::new(to_vec(w)?), eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// Softmax

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let d = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            let mx = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - mx).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            yr.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (yv, gv) = (to_vec(res)?, to_vec(grad)?);
        let d = res.dim(D::Minus1)?;
        let mut dx = vec![0f32; yv.len()];
        dx.par_chunks_mut(d).zip(yv.par_chunks(d)).zip(gv.par_chunks(d)).for_each(|((dr, yr), gr)| {
            let dot: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            for ((o, &y), &g) in dr.iter_mut().zip(yr).zip(gr) {
                *o = y * (g - dot);
            }
        });
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// Softmax over the last axis (differentiable; `-inf` inputs give exactly 0).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match path_for(x) {
        OpPath::Fused => x.contiguous()?.apply_op1(SoftmaxOp),
        OpPath::Kernel => candle_nn::ops::softmax_last_dim(&x.contiguous()?),
        OpPath::Composed => {
            // Half precision: in f32 and back, as PyTorch's attention does.
            let dt = x.dtype();
            candle_core_softmax(&x.to_dtype(compute_dtype(dt))?)?.to_dtype(dt)
        }
    }
}

/// `softmax(scale * x + causal mask)` over square `[.., n, n]` score blocks, with `mask` the
/// additive causal mask `[n, n]` (0 on and below the diagonal, `-inf` above) broadcast over the
/// last two axes: row `q` of each block attends to columns `0..=q`. One fused kernel forward and
/// backward for CUDA training ([`crate::cuda_ops::causal_softmax`]); elsewhere the scale, the
/// mask and [`softmax_last_dim`] as separate ops.
pub fn causal_softmax(x: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if x.rank() < 2 || x.dim(x.rank() - 2)? != n || mask.dims() != [n, n] {
        bail!("causal-softmax: scores {:?} and mask {:?} are not square [.., n, n] / [n, n]", x.dims(), mask.dims());
    }
    // The fused kernel builds the causal mask itself: `mask` must be that mask (the only kind
    // this function takes; other masks go through `softmax_last_dim`).
    // Also without gradients (a prefill, the attention node's forward): one launch, not three.
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::available(x) {
        return crate::cuda_ops::causal_softmax(x, scale);
    }
    softmax_last_dim(&(x * scale)?.broadcast_add(mask)?)
}

/// `silu(gate) * up`: the SwiGLU activation (one fused kernel forward and backward for CUDA
/// training, candle's `silu` and a product elsewhere).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    // The fused kernel also serves inference (one launch instead of two): its forward is the
    // same, and an op on inputs that track no gradient records no backward.
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::available(gate) && gate.dtype() == up.dtype() && gate.dims() == up.dims() {
        return crate::cuda_ops::silu_mul(gate, up);
    }
    gate.silu()? * up
}

fn candle_core_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

// ---------------------------------------------------------------------------------------------
// RoPE (half rotation)

struct RopeOp {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    /// Rows of the tables: 1 (shared) or B.
    tb: usize,
    /// Sign of the rotation: the backward rotates by the opposite angle.
    sign: f32,
}

impl RopeOp {
    fn run(&self, x: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        let (b, t, h, d) = match dims {
            [b, t, h, d] => (*b, *t, *h, *d),
            _ => bail!("rope: expected [B, T, heads, D], got {dims:?}"),
        };
        let half = d / 2;
        if self.cos.len() != self.tb * t * half || !(self.tb == 1 || self.tb == b) {
            bail!("rope: tables do not match an input of shape {dims:?}");
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * d).zip(x.par_chunks(h * d)).enumerate().for_each(|(bt, (yr, xr))| {
            let (bi, ti) = (bt / t, bt % t);
            let row = ((if self.tb == 1 { 0 } else { bi }) * t + ti) * half;
            let (c, s) = (&self.cos[row..row + half], &self.sin[row..row + half]);
            for hi in 0..h {
                let o = hi * d;
                for i in 0..half {
                    let (x1, x2) = (xr[o + i], xr[o + half + i]);
                    let si = self.sign * s[i];
                    yr[o + i] = x1 * c[i] - x2 * si;
                    yr[o + half + i] = x2 * c[i] + x1 * si;
                }
            }
        });
        Ok(y)
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-half"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rope")?;
        Ok((CpuStorage::F32(self.run(x, l.dims())?), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // A rotation's transpose is the rotation by the opposite angle.
        let back = RopeOp { cos: self.cos.clone(), sin: self.sin.clone(), tb: self.tb, sign: -self.sign };
        let g = back.run(&to_vec(grad)?, res.dims())?;
        Ok(Some(Tensor::from_vec(g, res.shape(), res.device())?))
    }
}

/// Half-rotation RoPE of `x` `[B, T, heads, D]` with `cos`/`sin` `[1 or B, T, 1, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::wanted(x) && !cos.track_op() && !sin.track_op() {
        return crate::cuda_ops::rope(x, cos, sin);
    }
    let path = path_for(x);
    if path == OpPath::Kernel && !cos.track_op() && !sin.track_op() {
        // candle's kernel for the [B, T, heads, D] layout wants tables [T, D/2] or [B, T, D/2].
        let (tb, t, _, half) = cos.dims4()?;
        let (cos, sin) = if tb == 1 {
            (cos.reshape((t, half))?, sin.reshape((t, half))?)
        } else {
            (cos.reshape((tb, t, half))?, sin.reshape((tb, t, half))?)
        };
        let dt = x.dtype();
        return candle_nn::rotary_emb::rope_thd(&x.contiguous()?, &cos.to_dtype(dt)?.contiguous()?, &sin.to_dtype(dt)?.contiguous()?);
    }
    if path != OpPath::Fused || cos.track_op() || sin.track_op() {
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let (cos, sin) = (&cos, &sin);
        let d = x.dim(3)?;
        let x1 = x.narrow(3, 0, d / 2)?;
        let x2 = x.narrow(3, d / 2, d / 2)?;
        let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        return Tensor::cat(&[r1, r2], 3);
    }
    let tb = cos.dim(0)?;
    x.contiguous()?.apply_op1(RopeOp { cos: Arc::new(to_vec(cos)?), sin: Arc::new(to_vec(sin)?), tb, sign: 1.0 })
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

struct CrossEntropyOp;

fn ce_targets(s: &CpuStorage, l: &Layout) -> Result<Vec<usize>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("cross-entropy: targets must be contiguous".into()))?;
    Ok(match s {
        CpuStorage::U32(v) => v[a..b].iter().map(|&x| x as usize).collect(),
        CpuStorage::I64(v) => v[a..b].iter().map(|&x| x.max(0) as usize).collect(),
        _ => bail!("cross-entropy: targets must be u32 or i64"),
    })
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "cross-entropy")?;
        let (n, v) = match l1.dims() {
            [n, v] => (*n, *v),
            d => bail!("cross-entropy: logits must be [N, V], got {d:?}"),
        };
        let tg = ce_targets(s2, l2)?;
        if tg.len() != n {
            bail!("cross-entropy: {} targets for {n} rows", tg.len());
        }
        if let Some(bad) = tg.iter().find(|&&t| t >= v) {
            bail!("cross-entropy: target {bad} is outside the vocabulary of {v}");
        }
        let mut out = vec![0f32; n];
        out.par_iter_mut().zip(x.par_chunks(v)).zip(tg.par_iter()).for_each(|((o, xr), &t)| {
            let mx = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = xr.iter().map(|&z| (z - mx).exp()).sum();
            *o = mx + sum.ln() - xr[t];
        });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let xv = to_vec(logits)?;
        let gv = to_vec(grad)?;
        let tg: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_mut(v).zip(xv.par_chunks(v)).enumerate().for_each(|(i, (dr, xr))| {
            let g = gv[i];
            if g == 0.0 {
                return; // rows outside the loss mask: zero gradient, skip the exp
            }
            let mx = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &z) in dr.iter_mut().zip(xr) {
                *o = (z - mx).exp();
                sum += *o;
            }
            let k = g / sum;
            dr.iter_mut().for_each(|o| *o *= k);
            dr[tg[i] as usize] -= g;
        });
        Ok((Some(Tensor::from_vec(dx, (n, v), logits.device())?), None))
    }
}

/// Per-row cross-entropy `logsumexp(logits[i]) - logits[i, targets[i]]`: logits `[N, V]` f32,
/// targets `[N]` u32; returns `[N]`.
///
/// Half-precision logits are upcast to f32 first (the loss is always f32), as HF's loss does.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::wanted(logits) {
        return crate::cuda_ops::cross_entropy(logits, targets);
    }
    if !trains_on_cpu(logits) {
        let logits = &logits.to_dtype(compute_dtype(logits.dtype()))?;
        let lse = {
            let max = logits.max_keepdim(D::Minus1)?;
            (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?
        };
        let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
        return (lse - picked)?.squeeze(1);
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropyOp)
}

// ---------------------------------------------------------------------------------------------
// LoRA delta

struct LoraDelta {
    scale: f64,
}

/// `scale · x Aᵀ Bᵀ` on any backend's storage: `x` cast to f32 once, two GEMMs, the scale, and
/// the cast back to `x`'s dtype.
fn lora_fwd<S: BackendStorage>(scale: f64, x: &S, lx: &Layout, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<(S, Shape)> {
    let (n, din) = match lx.dims() {
        [n, d] => (*n, *d),
        d => bail!("lora: x must be [N, in], got {d:?}"),
    };
    let (r, dout) = match (la.dims(), lb.dims()) {
        ([r, d1], [o, r2]) if *d1 == din && r2 == r => (*r, *o),
        (da, db) => bail!("lora: A {da:?} / B {db:?} do not fit an input of width {din}"),
    };
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        bail!("lora: adapters must be f32");
    }
    let cast;
    let (xf, lxf) = if x.dtype() == DType::F32 {
        (x, lx.clone())
    } else {
        cast = x.to_dtype(lx, DType::F32)?;
        (&cast, Layout::contiguous(lx.shape()))
    };
    let low = xf.matmul(a, (1, n, r, din), &lxf, &la.transpose(0, 1)?)?; // [N, r]
    let up = low.matmul(b, (1, n, dout, r), &Layout::contiguous((n, r)), &lb.transpose(0, 1)?)?; // [N, out]
    let lo = Layout::contiguous((n, dout));
    let up = up.affine(&lo, scale, 0.0)?;
    let out = if x.dtype() == DType::F32 { up } else { up.to_dtype(&lo, x.dtype())? };
    Ok((out, Shape::from((n, dout))))
}

impl candle_core::CustomOp3 for LoraDelta {
    fn name(&self) -> &'static str {
        "lora-delta"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        lora_fwd(self.scale, x, lx, a, la, b, lb)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        lora_fwd(self.scale, x, lx, a, la, b, lb)
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // No dx for an input that needs none (block 0's normed embeddings): candle would still
        // zero-fill and add it.
        let (dx, da, db) = lora_grads(&x.detach().to_dtype(DType::F32)?, a, b, grad, self.scale, x.track_op())?;
        Ok((dx.map(|d| d.to_dtype(x.dtype())).transpose()?, Some(da), Some(db)))
    }
}

/// Gradients of `y = s · xf Aᵀ Bᵀ` for the f32 input `xf` `[N, in]`: `dB = s gᵀ (xf Aᵀ)`,
/// `dA = s (g B)ᵀ xf`, and (when `want_dx`) `dxf = s (g B) A` in f32. Detached operands: the
/// backward builds no graph of its own.
fn lora_grads(xf: &Tensor, a: &Tensor, b: &Tensor, grad: &Tensor, scale: f64, want_dx: bool) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let (a, b) = (a.detach(), b.detach());
    let gs = (grad.detach().to_dtype(DType::F32)? * scale)?;
    let low = xf.matmul(&a.t()?)?; // recomputed [N, r]
    let gb = gs.matmul(&b)?; // [N, r]
    let db = gs.t()?.matmul(&low)?; // [out, r]
    let da = gb.t()?.matmul(xf)?; // [r, in]
    let dx = if want_dx { Some(gb.matmul(&a)?) } else { None }; // [N, in]
    Ok((dx, da, db))
}

// ---------------------------------------------------------------------------------------------
// A LoRA-adapted frozen linear layer as one graph node

/// `y = x Wᵀ + bias + s · (x ⊙ mask) Aᵀ Bᵀ` with `W`, `bias` and the dropout `mask` held by the
/// op (no gradients) and `x`, `A`, `B` its inputs.
struct LoraLinear {
    w: Tensor,
    bias: Option<Tensor>,
    scale: f64,
    /// Inverted-dropout mask for the adapter's input, f32 `[N, in]`.
    mask: Option<Tensor>,
}

impl LoraLinear {
    fn fwd<S: BackendStorage>(
        &self,
        w: (&S, &Layout),
        bias: Option<(&S, &Layout)>,
        mask: Option<(&S, &Layout)>,
        (x, lx): (&S, &Layout),
        a: (&S, &Layout),
        b: (&S, &Layout),
    ) -> Result<(S, Shape)> {
        use candle_core::op::{Add, Mul};
        let (y, shape) = frozen_fwd(x, lx, w.0, w.1)?;
        let ly = Layout::contiguous(&shape);
        let y = match bias {
            Some((bs, bl)) => y.binary_impl::<Add>(bs, &ly, &bl.broadcast_as(&shape)?)?,
            None => y,
        };
        let (delta, _) = match mask {
            Some((ms, ml)) => {
                let xf = if x.dtype() == DType::F32 {
                    x.binary_impl::<Mul>(ms, lx, ml)?
                } else {
                    x.to_dtype(lx, DType::F32)?.binary_impl::<Mul>(ms, &Layout::contiguous(lx.shape()), ml)?
                };
                lora_fwd(self.scale, &xf, &Layout::contiguous(lx.shape()), a.0, a.1, b.0, b.1)?
            }
            None => lora_fwd(self.scale, x, lx, a.0, a.1, b.0, b.1)?,
        };
        // The delta comes back in the input's dtype: cast to the output's (the weight's).
        let delta = if delta.dtype() != y.dtype() { delta.to_dtype(&ly, y.dtype())? } else { delta };
        Ok((y.binary_impl::<Add>(&delta, &ly, &ly)?, shape))
    }
}

/// Runs `f` with the storages of the tensors the op holds on one backend (`get` picks it from a
/// [`candle_core::Storage`]), their read guards alive for the call.
macro_rules! with_held {
    ($op:expr, $get:expr, |$w:ident, $bias:ident, $mask:ident| $body:expr) => {{
        let (wg, lw) = $op.w.storage_and_layout();
        let bg = $op.bias.as_ref().map(|t| t.storage_and_layout());
        let mg = $op.mask.as_ref().map(|t| t.storage_and_layout());
        let $w = ($get(&wg)?, lw);
        let $bias = match &bg {
            Some((g, l)) => Some(($get(g)?, *l)),
            None => None,
        };
        let $mask = match &mg {
            Some((g, l)) => Some(($get(g)?, *l)),
            None => None,
        };
        $body
    }};
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn get(s: &candle_core::Storage) -> Result<&CpuStorage> {
            match s {
                candle_core::Storage::Cpu(c) => Ok(c),
                _ => bail!("lora-linear: weight, bias and mask must be on the input's device"),
            }
        }
        with_held!(self, get, |w, bias, mask| self.fwd(w, bias, mask, (x, lx), (a, la), (b, lb)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        fn get(s: &candle_core::Storage) -> Result<&candle_core::CudaStorage> {
            match s {
                candle_core::Storage::Cuda(c) => Ok(c),
                _ => bail!("lora-linear: weight, bias and mask must be on the input's device"),
            }
        }
        with_held!(self, get, |w, bias, mask| self.fwd(w, bias, mask, (x, lx), (a, la), (b, lb)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach();
        let xf = x.detach().to_dtype(DType::F32)?;
        let xin = match &self.mask {
            Some(m) => (xf * m)?,
            None => xf,
        };
        let (dxl, da, db) = lora_grads(&xin, a, b, &grad, self.scale, x.track_op())?;
        let dx = match dxl {
            Some(dxl) => {
                // dX = dY W (the frozen weight: no dW) + the adapter's part through the mask.
                let dxl = match &self.mask {
                    Some(m) => (dxl * m)?,
                    None => dxl,
                };
                let base = grad.contiguous()?.matmul(&self.w)?;
                Some((base + dxl.to_dtype(self.w.dtype())?)?.to_dtype(x.dtype())?)
            }
            None => None,
        };
        Ok((dx, Some(da), Some(db)))
    }
}

/// A LoRA-adapted frozen linear layer for training, as one graph node:
/// `y = x Wᵀ + bias + s · (x ⊙ mask) Aᵀ Bᵀ` for `x` `[N, in]` in `W`'s dtype, `W` `[out, in]`,
/// `bias` `[out]` (frozen), `A` `[r, in]`, `B` `[out, r]` (f32), `mask` an f32 inverted-dropout
/// mask `[N, in]` for the adapter's input. Its backward is `dX = dY W + s ((dY B) A) ⊙ mask` and
/// the adapter's two gradients: composed (frozen matmul, bias add, [`lora_delta`], add) candle's
/// autograd added a zero-filled buffer and an add per edge, one of them output-sized for the
/// constant bias.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use emlab_model::ops::lora_linear;
/// let dev = Device::Cpu;
/// let x = Var::new(&[[1f32, 2.]], &dev)?;                  // [N=1, in=2]
/// let w = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev)?;     // identity
/// let a = Var::new(&[[1f32, 1.]], &dev)?;                  // [r=1, in]
/// let b = Var::new(&[[2f32], [3.]], &dev)?;                // [out=2, r]
/// let y = lora_linear(x.as_tensor(), &w, None, a.as_tensor(), b.as_tensor(), 0.5, None)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![4., 6.5]]);   // [1, 2] + 0.5 * 3 * [2, 3]
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![3.5, 3.5]]); // 1 + 0.5 * 5
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, din) = x.dims2()?;
    if w.dims() != [w.dim(0)?, din]
        || x.dtype() != w.dtype()
        || bias.is_some_and(|t| t.dims() != [w.dim(0).unwrap_or(0)] || t.dtype() != w.dtype())
    {
        bail!(
            "lora-linear: x {:?} {:?}, weight {:?} {:?}, bias {:?}",
            x.dims(),
            x.dtype(),
            w.dims(),
            w.dtype(),
            bias.map(|t| t.dims().to_vec())
        );
    }
    if let Some(m) = mask {
        if m.dims() != [n, din] || m.dtype() != DType::F32 {
            bail!("lora-linear: mask {:?} {:?} for an input [{n}, {din}]", m.dims(), m.dtype());
        }
    }
    let op = LoraLinear { w: w.detach(), bias: bias.map(|t| t.detach()), scale, mask: mask.map(|m| m.detach().contiguous()).transpose()? };
    x.contiguous()?.apply_op3(a, b, op)
}

/// True when a training step's LoRA layer takes [`lora_linear`]: off the CPU's fused f32
/// kernels (a GPU, a half-precision base, or [`with_portable`]), what [`wanted_lora`] asks, `x`
/// in the weight's dtype, unless `EMLAB_LINEAR_OP=0` (the frozen matmul, bias add,
/// [`lora_delta`] and add as separate nodes, for A/B runs). The CPU keeps the separate nodes:
/// there the per-edge work is memory traffic, not launches, and the one node measured no faster
/// (`bench_train`, docs/benchmarks.md).
pub fn wanted_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| crate::device::env_switch("EMLAB_LINEAR_OP", &["1", "0"], "1") == "1");
    let off_cpu_kernels = !x.device().is_cpu() || portable_forced() || x.dtype() != DType::F32;
    on && off_cpu_kernels && wanted_lora(x, a, b) && x.dtype() == w.dtype()
}

/// True when the adapter of a projection with input `x` takes [`lora_delta`]: f32 adapters, `x`
/// `[N, in]` in f32 or bf16, on any device, unless switched off (`EMLAB_CUDA_FUSED=0` on a GPU,
/// `EMLAB_LORA_OP=0` anywhere: the composed form, for A/B runs).
pub fn wanted_lora(x: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| crate::device::env_switch("EMLAB_LORA_OP", &["1", "0"], "1") == "1");
    on && (x.device().is_cpu() || crate::device::cuda_fused())
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && x.rank() == 2
}

/// The LoRA update `scale · x Aᵀ Bᵀ` for `x` `[N, in]` (f32 or bf16), `A` `[r, in]`, `B`
/// `[out, r]` (f32), computed in f32 and returned in `x`'s dtype: one graph node whose backward
/// is five GEMMs. Composed (cast, two matmuls, scale, cast), candle's autograd spent ~30 launches
/// per projection on a GPU, most of them a zero fill and an add per graph edge.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use emlab_model::ops::lora_delta;
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[1f32, 2.]], &dev)?;              // [N=1, in=2]
/// let a = Var::new(&[[1f32, 1.]], &dev)?;                  // [r=1, in]
/// let b = Var::new(&[[2f32], [3.]], &dev)?;                // [out=2, r]
/// let y = lora_delta(&x, a.as_tensor(), b.as_tensor(), 0.5)?;
/// assert_eq!(y.to_vec2::<f32>()?, vec![vec![3., 4.5]]);   // 0.5 * (1 + 2) * [2, 3]
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(b.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![1.5], vec![1.5]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lora_delta(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(a, b, LoraDelta { scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A small LCG: deterministic values in [-1, 1) without another dependency.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (to_vec(a).unwrap(), to_vec(b).unwrap());
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Value and input-gradient of `f` (fused) against `g` (composed) under a random linear loss.
    fn check(shape: &[usize], f: impl Fn(&Tensor) -> Tensor, g: impl Fn(&Tensor) -> Tensor, tol: f32) {
        let x = Var::from_tensor(&rand(shape, 11)).unwrap();
        let yf = f(x.as_tensor());
        let yg = g(x.as_tensor());
        assert!(max_diff(&yf, &yg) < tol, "values differ by {}", max_diff(&yf, &yg));
        let r = rand(yf.dims(), 12);
        let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (yg * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (gf.get(x.as_tensor()).unwrap(), gg.get(x.as_tensor()).unwrap());
        assert!(max_diff(a, b) < tol, "gradients differ by {}", max_diff(a, b));
        assert!(to_vec(a).unwrap().iter().any(|v| v.abs() > 1e-3), "gradient is zero");
    }

    /// Largest difference relative to the largest magnitude of the reference.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (av, bv) = (to_vec(&a.to_dtype(DType::F32).unwrap()).unwrap(), to_vec(&b.to_dtype(DType::F32).unwrap()).unwrap());
        assert_eq!(av.len(), bv.len());
        let scale = bv.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        av.iter().zip(&bv).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The GPU path, run here: `op` on a tracked f32 input, once on the fused CPU kernels and once
    /// under [`with_portable`] (composed ops); values and input gradients agree to 1e-5 relative,
    /// and the paths really differ (the op records "fused" on one and not the other). Then on an
    /// untracked input: CPU inference (composed) against candle's kernels, values only.
    fn check_paths(shape: &[usize], op: impl Fn(&Tensor) -> Tensor) {
        let x = Var::from_tensor(&rand(shape, 21)).unwrap();
        assert_eq!(path_for(x.as_tensor()), OpPath::Fused);
        let yf = op(x.as_tensor());
        let (yp, path) = with_portable(|| (op(x.as_tensor()), path_for(x.as_tensor())));
        assert_eq!(path, OpPath::Composed);
        assert!(rel_diff(&yp, &yf) < 1e-5, "forward: portable vs fused differ by {} (rel)", rel_diff(&yp, &yf));
        let r = rand(yf.dims(), 22);
        let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (yp * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (gp.get(x.as_tensor()).expect("portable gradient"), gf.get(x.as_tensor()).expect("fused gradient"));
        assert!(rel_diff(a, b) < 1e-5, "backward: portable vs fused differ by {} (rel)", rel_diff(a, b));
        assert!(to_vec(b).unwrap().iter().any(|v| v.abs() > 1e-3), "gradient is zero");
        // Inference: candle's kernels (what CUDA runs) against the CPU's composed form.
        let xi = rand(shape, 23);
        assert_eq!(with_portable(|| path_for(&xi)), OpPath::Kernel);
        let (yc, yk) = (op(&xi), with_portable(|| op(&xi)));
        assert!(rel_diff(&yk, &yc) < 1e-5, "inference: kernel vs composed differ by {} (rel)", rel_diff(&yk, &yc));
    }

    #[test]
    fn portable_paths_match_fused_rms_norm() {
        let w = (rand(&[16], 4) + 1.5).unwrap();
        check_paths(&[3, 5, 16], |x| rms_norm(x, &w, 1e-5).unwrap());
    }

    #[test]
    fn portable_paths_match_fused_softmax() {
        let mask: Vec<f32> = (0..6).flat_map(|i| (0..6).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (6, 6), &Device::Cpu).unwrap();
        check_paths(&[2, 3, 6, 6], |x| softmax_last_dim(&(x * 4.0).unwrap().broadcast_add(&mask).unwrap()).unwrap());
    }

    #[test]
    fn portable_paths_match_fused_rope_shared_and_per_row() {
        for tb in [1usize, 2] {
            let cos = rand(&[tb, 5, 1, 4], 7);
            let sin = rand(&[tb, 5, 1, 4], 8);
            check_paths(&[2, 5, 3, 8], |x| rope(x, &cos, &sin).unwrap());
        }
    }

    #[test]
    fn portable_paths_match_fused_frozen_matmul_and_cross_entropy() {
        let w = rand(&[9, 12], 3);
        check_paths(&[2, 4, 12], |x| frozen_matmul(x, &w).unwrap());
        let targets = Tensor::new(&[3u32, 0, 9, 4, 11, 2], &Device::Cpu).unwrap();
        check_paths(&[6, 12], |x| cross_entropy(&(x * 3.0).unwrap(), &targets).unwrap());
    }

    /// bf16 inputs (the GPU's frozen base) take the composed path computed in f32: values within
    /// bf16 rounding of the f32 result, gradients reach an f32 leaf through the casts, and the
    /// loss comes out f32.
    #[test]
    fn bf16_inputs_compute_in_f32_and_keep_gradients() {
        let x = Var::from_tensor(&rand(&[4, 16], 31)).unwrap();
        let w = (rand(&[16], 4) + 1.5).unwrap();
        let wb = w.to_dtype(DType::BF16).unwrap();
        let xb = x.as_tensor().to_dtype(DType::BF16).unwrap();
        assert_eq!(path_for(&xb), OpPath::Composed);
        let yb = rms_norm(&xb, &wb, 1e-5).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        let yf = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        assert!(rel_diff(&yb, &yf) < 2e-2, "bf16 rms_norm off by {}", rel_diff(&yb, &yf));
        let sb = softmax_last_dim(&yb).unwrap();
        assert_eq!(sb.dtype(), DType::BF16);
        let targets = Tensor::new(&[1u32, 5, 0, 15], &Device::Cpu).unwrap();
        let lb = cross_entropy(&yb, &targets).unwrap();
        assert_eq!(lb.dtype(), DType::F32);
        let lf = cross_entropy(&yf, &targets).unwrap();
        assert!(rel_diff(&lb, &lf) < 2e-2);
        let g = (lb.sum_all().unwrap() + sb.to_dtype(DType::F32).unwrap().sum_all().unwrap()).unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).expect("gradient through the bf16 casts");
        assert_eq!(gx.dtype(), DType::F32);
        assert!(to_vec(gx).unwrap().iter().any(|v| v.abs() > 1e-3));
    }

    #[test]
    fn with_portable_restores_and_nests() {
        let x = Var::from_tensor(&rand(&[2, 3], 1)).unwrap();
        with_portable(|| {
            with_portable(|| assert!(portable_forced()));
            assert!(portable_forced());
        });
        assert_eq!(path_for(x.as_tensor()), if portable_from_env() { OpPath::Composed } else { OpPath::Fused });
        let r = std::panic::catch_unwind(|| with_portable(|| panic!("inside")));
        assert!(r.is_err());
        assert!(!PORTABLE.with(|p| p.get()));
    }

    #[test]
    fn module_doc_example() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu)?)?;
        let w = Tensor::new(&[[1f32, 0., 0.], [0., 1., 1.]], &Device::Cpu)?;
        let y = frozen_matmul(x.as_tensor(), &w)?;
        assert_eq!(y.to_vec2::<f32>()?, vec![vec![1., 5.]]);
        let g = y.sum_all()?.backward()?;
        assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![1., 1., 1.]]);
        Ok(())
    }

    #[test]
    fn frozen_matmul_matches_matmul_and_gives_no_weight_gradient() {
        let w = rand(&[7, 5], 3);
        check(&[2, 3, 5], |x| frozen_matmul(x, &w).unwrap(), |x| x.broadcast_matmul(&w.t().unwrap()).unwrap(), 1e-6);
        // Bit-identical forward to the plain GEMM (eval and training see the same numbers).
        let x = Var::from_tensor(&rand(&[4, 5], 5)).unwrap();
        let a = frozen_matmul(x.as_tensor(), &w).unwrap();
        let b = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(to_vec(&a).unwrap(), to_vec(&b).unwrap());
        // A weight that is a Var still gets no gradient through this op: it is frozen by contract.
        let wv = Var::from_tensor(&w).unwrap();
        let g = frozen_matmul(x.as_tensor(), wv.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(wv.as_tensor()).is_none());
    }

    #[test]
    fn rms_norm_matches_composed() {
        let w = (rand(&[6], 4) + 1.5).unwrap();
        let composed = |x: &Tensor| {
            let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let inv = (ms + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
            x.broadcast_mul(&inv).unwrap().broadcast_mul(&w).unwrap()
        };
        check(&[3, 4, 6], |x| rms_norm(x, &w, 1e-5).unwrap(), composed, 1e-5);
    }

    #[test]
    fn softmax_matches_composed_with_causal_mask() {
        let mask: Vec<f32> = (0..5).flat_map(|i| (0..5).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (5, 5), &Device::Cpu).unwrap();
        let f = |x: &Tensor| softmax_last_dim(&x.broadcast_add(&mask).unwrap()).unwrap();
        let g = |x: &Tensor| candle_core_softmax(&x.broadcast_add(&mask).unwrap()).unwrap();
        check(&[2, 3, 5, 5], f, g, 1e-6);
        let x = Var::from_tensor(&rand(&[1, 5, 5], 2)).unwrap();
        let y = to_vec(&f(x.as_tensor())).unwrap();
        assert_eq!(y[1], 0.0); // row 0 attends only to itself
        assert!((y[0] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn rope_matches_composed_for_shared_and_per_row_tables() {
        for tb in [1usize, 2] {
            let cos = rand(&[tb, 3, 1, 4], 7);
            let sin = rand(&[tb, 3, 1, 4], 8);
            let composed = |x: &Tensor| {
                let x1 = x.narrow(3, 0, 4).unwrap();
                let x2 = x.narrow(3, 4, 4).unwrap();
                let r1 = (x1.broadcast_mul(&cos).unwrap() - x2.broadcast_mul(&sin).unwrap()).unwrap();
                let r2 = (x2.broadcast_mul(&cos).unwrap() + x1.broadcast_mul(&sin).unwrap()).unwrap();
                Tensor::cat(&[r1, r2], 3).unwrap()
            };
            check(&[2, 3, 2, 8], |x| rope(x, &cos, &sin).unwrap(), composed, 1e-6);
        }
    }

    #[test]
    fn cross_entropy_matches_log_softmax_gather() {
        let targets = Tensor::new(&[3u32, 0, 9, 4], &Device::Cpu).unwrap();
        let composed = |x: &Tensor| {
            let max = x.max_keepdim(D::Minus1).unwrap();
            let lse = (x.broadcast_sub(&max).unwrap().exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap() + max).unwrap();
            let lp = x.broadcast_sub(&lse).unwrap();
            lp.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap()
        };
        check(&[4, 10], |x| cross_entropy(&(x * 3.0).unwrap(), &targets).unwrap(), |x| composed(&(x * 3.0).unwrap()), 1e-5);
        // Hand-computed: uniform logits over V=10 give ln(10) for any target.
        let z = Var::zeros((4, 10), DType::F32, &Device::Cpu).unwrap();
        let l = to_vec(&cross_entropy(z.as_tensor(), &targets).unwrap()).unwrap();
        assert!(l.iter().all(|v| (v - 10f32.ln()).abs() < 1e-6));
        // A target outside the vocabulary is an error, not a panic.
        let bad = Tensor::new(&[10u32, 0, 0, 0], &Device::Cpu).unwrap();
        assert!(cross_entropy(z.as_tensor(), &bad).is_err());
    }

    /// The one-node LoRA layer against its parts as separate nodes (frozen matmul, bias add,
    /// dropout mask on the adapter's f32 input, `lora_delta`, add): values and the gradients of
    /// x, A and B, f32 and a bf16 base, with and without bias and mask, on the CPU kernels and on
    /// the GPU's branches.
    #[test]
    fn lora_linear_matches_its_composed_parts() {
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 2e-2)] {
            for (with_bias, with_mask, portable) in [(false, false, false), (true, true, false), (true, false, true), (false, true, true)] {
                let run = || {
                    let w = rand(&[6, 8], 11).to_dtype(dt).unwrap();
                    let bias = rand(&[6], 12).to_dtype(dt).unwrap();
                    let mask = rand(&[5, 8], 13).ge(-0.4).unwrap().to_dtype(DType::F32).unwrap().affine(1.0 / 0.7, 0.0).unwrap();
                    let xv = Var::from_tensor(&rand(&[5, 8], 1).to_dtype(dt).unwrap()).unwrap();
                    let a = Var::from_tensor(&rand(&[3, 8], 2)).unwrap();
                    let b = Var::from_tensor(&rand(&[6, 3], 3)).unwrap();
                    let (bias, mask) = (with_bias.then_some(&bias), with_mask.then_some(&mask));
                    let up = rand(&[5, 6], 4);
                    let y = lora_linear(xv.as_tensor(), &w, bias, a.as_tensor(), b.as_tensor(), 0.7, mask).unwrap();
                    let mut yc = frozen_matmul(xv.as_tensor(), &w).unwrap();
                    if let Some(bias) = bias {
                        yc = yc.broadcast_add(bias).unwrap();
                    }
                    let xin = match mask {
                        Some(m) => (xv.as_tensor().to_dtype(DType::F32).unwrap() * m).unwrap(),
                        None => xv.as_tensor().clone(),
                    };
                    let d = lora_delta(&xin, a.as_tensor(), b.as_tensor(), 0.7).unwrap().to_dtype(dt).unwrap();
                    let yc = (yc + d).unwrap();
                    assert_eq!(y.dtype(), dt);
                    let f32v = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                    assert!(max_diff(&f32v(&y), &f32v(&yc)) < tol, "{dt:?} value: {}", max_diff(&f32v(&y), &f32v(&yc)));
                    let g1 = (f32v(&y) * &up).unwrap().sum_all().unwrap().backward().unwrap();
                    let g2 = (f32v(&yc) * &up).unwrap().sum_all().unwrap().backward().unwrap();
                    for (name, t) in [("x", xv.as_tensor()), ("A", a.as_tensor()), ("B", b.as_tensor())] {
                        let (p, q) = (f32v(g1.get(t).unwrap()), f32v(g2.get(t).unwrap()));
                        let scale = to_vec(&q).unwrap().iter().fold(1f32, |m, v| m.max(v.abs()));
                        assert!(
                            max_diff(&p, &q) < tol * scale,
                            "{dt:?} bias {with_bias} mask {with_mask}: d{name} differs by {}",
                            max_diff(&p, &q)
                        );
                    }
                };
                if portable {
                    with_portable(run)
                } else {
                    run()
                }
            }
        }
        // Bad shapes are an error.
        let a = rand(&[3, 8], 2);
        let b = rand(&[6, 3], 3);
        assert!(lora_linear(&rand(&[5, 7], 1), &rand(&[6, 8], 1), None, &a, &b, 1.0, None).is_err());
        assert!(lora_linear(&rand(&[5, 8], 1), &rand(&[6, 8], 1), None, &a, &b, 1.0, Some(&rand(&[4, 8], 1))).is_err());
    }

    #[test]
    fn lora_delta_matches_the_composed_update_and_its_gradients() {
        for dt in [DType::F32, DType::BF16] {
            let x0 = rand(&[5, 8], 1).to_dtype(dt).unwrap();
            let xv = Var::from_tensor(&x0).unwrap();
            let a = Var::from_tensor(&rand(&[3, 8], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[6, 3], 3)).unwrap();
            let w = rand(&[5, 6], 4); // weights of the summed output, so every entry matters
            let y = lora_delta(xv.as_tensor(), a.as_tensor(), b.as_tensor(), 0.7).unwrap();
            assert_eq!(y.dtype(), dt);
            let xf = xv.as_tensor().to_dtype(DType::F32).unwrap();
            let yc = (xf.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap() * 0.7).unwrap();
            let tol = if dt == DType::F32 { 1e-6 } else { 2e-2 };
            assert!(max_diff(&y.to_dtype(DType::F32).unwrap(), &yc) < tol);
            let g1 = (y.to_dtype(DType::F32).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (yc * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [a.as_tensor(), b.as_tensor(), xv.as_tensor()] {
                let (p, q) = (g1.get(t).unwrap().to_dtype(DType::F32).unwrap(), g2.get(t).unwrap().to_dtype(DType::F32).unwrap());
                assert!(max_diff(&p, &q) < tol * 10.0, "{dt:?}: gradient differs by {}", max_diff(&p, &q));
            }
        }
        // An input that needs no gradient gets none (only A and B do).
        let a = Var::from_tensor(&rand(&[3, 8], 2)).unwrap();
        let b = Var::from_tensor(&rand(&[6, 3], 3)).unwrap();
        let x = rand(&[5, 8], 1);
        let g = lora_delta(&x, a.as_tensor(), b.as_tensor(), 1.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none() && g.get(a.as_tensor()).is_some() && g.get(b.as_tensor()).is_some());
        // Shapes that do not fit are an error, not a panic.
        assert!(lora_delta(&rand(&[5, 7], 1), a.as_tensor(), b.as_tensor(), 1.0).is_err());
    }

    #[test]
    fn causal_softmax_is_the_masked_softmax_and_checks_its_mask() {
        let x = rand(&[2, 3, 4, 4], 5);
        let mask = Tensor::from_vec(
            (0..4).flat_map(|i| (0..4).map(move |j| if j <= i { 0f32 } else { f32::NEG_INFINITY })).collect::<Vec<_>>(),
            (4, 4),
            &Device::Cpu,
        )
        .unwrap();
        let p = causal_softmax(&x, 0.5, &mask).unwrap();
        let q = softmax_last_dim(&(&x * 0.5).unwrap().broadcast_add(&mask).unwrap()).unwrap();
        assert!(max_diff(&p, &q) < 1e-7);
        let e = causal_softmax(&x, 0.5, &mask.narrow(0, 0, 3).unwrap()).unwrap_err().to_string();
        assert!(e.contains("not square"), "{e}");
    }
}
