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
//! Each falls back to the composed candle ops when its input does not track gradients on the
//! CPU path it was written for (same kernels, so results are identical) or lives on another
//! device. Tests check values and gradients against the composed forms.
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
//! This file uses nothing but candle and rayon, so it can be compiled into another crate too.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
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

fn trains_on_cpu(x: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32
}

// ---------------------------------------------------------------------------------------------
// Frozen matmul

struct FrozenMatmul;

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
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
        // The same strided GEMM `x.matmul(&w.t())` runs, so values match the plain op bit for bit.
        let wt = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
        Ok((out, Shape::from((m, n))))
    }
    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dX = dY W; no dW: the weight is frozen.
        Ok((Some(grad.contiguous()?.matmul(w)?), None))
    }
}

/// `x W^T` for `x` `[..., in]` and a frozen `W` `[out, in]`; gradients flow to `x` only.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !trains_on_cpu(x) || w.dtype() != DType::F32 {
        return x.broadcast_matmul(&w.t()?);
    }
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
    if !trains_on_cpu(x) || w.track_op() {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + eps)?.sqrt()?.recip()?;
        return x.broadcast_mul(&inv)?.broadcast_mul(w);
    }
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] {
        bail!("rms-norm: weight {:?} does not match the last axis {d}", w.dims());
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
    if !trains_on_cpu(x) {
        return candle_core_softmax(x);
    }
    x.contiguous()?.apply_op1(SoftmaxOp)
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
    if !trains_on_cpu(x) || cos.track_op() || sin.track_op() {
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
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !trains_on_cpu(logits) {
        let lse = {
            let max = logits.max_keepdim(D::Minus1)?;
            (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?
        };
        let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
        return (lse - picked)?.squeeze(1);
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropyOp)
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
}
