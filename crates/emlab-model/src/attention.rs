//! A training step's causal self-attention as one graph node (off the CPU's fused kernels).
//!
//! Composed, a layer's attention is ~16 candle nodes (three reshapes, two RoPEs, the layout
//! copies that stack the query heads sharing a kv head, two batched matmuls, the softmax and the
//! copy back), and candle's backward adds a zero-filled buffer and an add for each of their ~20
//! edges: ~55 launches per layer, on a GPU where each launch costs more host time than device
//! time. [`causal_attention`] computes the same forward with the same ops (no graph recorded),
//! keeps what its backward needs, and differentiates by hand: 14 launches, three edges.
//!
//! Shapes: `q` `[B*T, H*D]`, `k`/`v` `[B*T, G*D]` (the projections' outputs, before RoPE), RoPE
//! tables `[1 or B, T, 1, D/2]`, `mask` the causal mask `[T, T]`; returns `[B*T, H*D]`. Rows start
//! at position 0 (a training batch; no cache).
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use emlab_model::attention::causal_attention;
//! let dev = Device::Cpu;
//! let (b, t, h, g, d) = (1, 3, 2, 1, 4);
//! let q = Var::from_tensor(&Tensor::ones((b * t, h * d), DType::F32, &dev)?)?;
//! let k = Var::from_tensor(&Tensor::ones((b * t, g * d), DType::F32, &dev)?)?;
//! let v = Var::from_tensor(&Tensor::arange(0f32, (b * t * g * d) as f32, &dev)?.reshape((b * t, g * d))?)?;
//! let (cos, sin) = (Tensor::ones((1, t, 1, d / 2), DType::F32, &dev)?, Tensor::zeros((1, t, 1, d / 2), DType::F32, &dev)?);
//! let mask = Tensor::new(&[[0f32, f32::NEG_INFINITY, f32::NEG_INFINITY], [0., 0., f32::NEG_INFINITY], [0., 0., 0.]], &dev)?;
//! let o = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), (b, t), h, g, &cos, &sin, &mask)?;
//! // Equal scores: token i averages the values of tokens 0..=i; both heads read the one kv head.
//! let last = &o.to_vec2::<f32>()?[2];
//! assert!(last.iter().zip([4., 5., 6., 7., 4., 5., 6., 7.]).all(|(x, y)| (x - y).abs() < 1e-5));
//! let grads = o.sum_all()?.backward()?;
//! assert!(grads.get(v.as_tensor()).is_some() && grads.get(q.as_tensor()).is_some());
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

/// True when a training step's attention over `q` takes [`causal_attention`]: `q` tracks
/// gradients, off the CPU's fused f32 kernels (a GPU, a half-precision base, or
/// [`crate::ops::with_portable`]), unless `EMLAB_ATTN_OP=0` (the composed nodes, for A/B runs).
pub fn wanted(q: &Tensor) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| crate::device::env_switch("EMLAB_ATTN_OP", &["1", "0"], "1") == "1");
    on && q.track_op() && crate::ops::path_for(q) != crate::ops::OpPath::Fused && matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// Causal attention of `q`, `k`, `v` as one graph node (see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (b, t): (usize, usize),
    heads: usize,
    kv_heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let (h, g) = (heads, kv_heads);
    if g == 0 || h % g != 0 || q.dim(0)? != b * t || q.dim(1)? % h != 0 {
        bail!("attention: q {:?} for {h} heads / {g} kv heads over [{b}, {t}]", q.dims());
    }
    let hd = q.dim(1)? / h;
    if k.dims() != [b * t, g * hd] || v.dims() != [b * t, g * hd] || hd % 2 != 0 {
        bail!("attention: q {:?}, k {:?}, v {:?} for {h} heads / {g} kv heads", q.dims(), k.dims(), v.dims());
    }
    let rep = h / g;
    let scale = 1.0 / (hd as f64).sqrt();
    // The forward of `Model::attention` after RoPE, on detached operands: no graph is recorded.
    let qr = rotate(&q.detach().reshape((b, t, h, hd))?, cos, sin)?;
    let kr = rotate(&k.detach().reshape((b, t, g, hd))?, cos, sin)?;
    let qg = qr.reshape((b, t, g, rep, hd))?.permute((0, 2, 3, 1, 4))?.contiguous()?.reshape((b, g, rep * t, hd))?;
    let kg = kr.transpose(1, 2)?.contiguous()?; // [B, G, T, D]
    let vg = v.detach().reshape((b, t, g, hd))?.transpose(1, 2)?.contiguous()?;
    let raw = qg.matmul(&kg.t()?)?; // [B, G, rep*T, T]
    let p = crate::ops::causal_softmax(&raw.reshape((b, g, rep, t, t))?, scale, mask)?.reshape((b, g, rep * t, t))?;
    let o = p.matmul(&vg)?; // [B, G, rep*T, D]
    let node = AttentionNode { o, qg, kg, vg, p, cos: cos.detach(), sin: sin.detach(), b, t, h, g, hd, scale };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, node)
}

struct AttentionNode {
    /// The output before its layout copy, `[B, G, rep*T, D]`.
    o: Tensor,
    /// Rotated queries `[B, G, rep*T, D]`, rotated keys and values `[B, G, T, D]`, probabilities
    /// `[B, G, rep*T, T]`: what the backward reads.
    qg: Tensor,
    kg: Tensor,
    vg: Tensor,
    p: Tensor,
    cos: Tensor,
    sin: Tensor,
    b: usize,
    t: usize,
    h: usize,
    g: usize,
    hd: usize,
    scale: f64,
}

impl AttentionNode {
    /// The node's value: `o` copied into `[B*T, H*D]` (the copy `Model::attention` ends with).
    fn out<S>(&self, get: impl Fn(&candle_core::Storage) -> Result<&S>) -> Result<(S, Shape)>
    where
        S: BackendStorage,
        S::Device: BackendDevice<Storage = S>,
    {
        let (b, t, g, hd) = (self.b, self.t, self.g, self.hd);
        let rep = self.h / g;
        let view = self.o.reshape((b, g, rep, t, hd))?.permute((0, 3, 1, 2, 4))?; // [B, T, G, rep, D]
        let (st, _) = self.o.storage_and_layout();
        let src = get(&st)?;
        let shape = Shape::from((b * t, self.h * hd));
        // SAFETY: every element is written by the copy below before the storage is read.
        let mut dst = unsafe { src.device().alloc_uninit(&shape, src.dtype())? };
        src.copy_strided_src(&mut dst, 0, view.layout())?;
        Ok((dst, shape))
    }
}

impl CustomOp3 for AttentionNode {
    fn name(&self) -> &'static str {
        "causal-attention"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out(|s| match s {
            candle_core::Storage::Cpu(c) => Ok(c),
            _ => bail!("attention: saved tensors are not on the inputs' device"),
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out(|s| match s {
            candle_core::Storage::Cuda(c) => Ok(c),
            _ => bail!("attention: saved tensors are not on the inputs' device"),
        })
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, h, g, hd) = (self.b, self.t, self.h, self.g, self.hd);
        let rep = h / g;
        let go = grad.detach().reshape((b, t, g, rep, hd))?.permute((0, 2, 3, 1, 4))?.contiguous()?.reshape((b, g, rep * t, hd))?;
        let dp = go.matmul(&self.vg.t()?)?; // [B, G, rep*T, T]
        let ds = softmax_grad(&self.p, &dp, self.scale)?; // d(raw scores)
                                                          // A rotation's transpose is the rotation by the opposite angle.
        let nsin = self.sin.neg()?;
        let dq = if q.track_op() {
            let dqg = ds.matmul(&self.kg)?; // [B, G, rep*T, D]
            let dq = dqg.reshape((b, g, rep, t, hd))?.permute((0, 3, 1, 2, 4))?.contiguous()?.reshape((b, t, h, hd))?;
            Some(rotate(&dq, &self.cos, &nsin)?.reshape((b * t, h * hd))?)
        } else {
            None
        };
        let dk = if k.track_op() {
            let dkg = ds.t()?.matmul(&self.qg)?; // [B, G, T, D]
            Some(rotate(&dkg.transpose(1, 2)?.contiguous()?, &self.cos, &nsin)?.reshape((b * t, g * hd))?)
        } else {
            None
        };
        let dv = if v.track_op() {
            let dvg = self.p.t()?.matmul(&go)?; // [B, G, T, D]
            Some(dvg.transpose(1, 2)?.contiguous()?.reshape((b * t, g * hd))?)
        } else {
            None
        };
        Ok((dq, dk, dv))
    }
}

/// RoPE of an operand that tracks no gradient: on CUDA emlab's kernel (f32 inside, one rounding,
/// as the composed training path computes it), elsewhere [`crate::ops::rope`].
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::available(x) {
        return crate::cuda_ops::rope(x, cos, sin);
    }
    crate::ops::rope(x, cos, sin)
}

/// The gradient of the scores `x` of `p = softmax(scale * x)` given `dp`: `scale * p * (dp -
/// sum(p * dp))` over the last axis, in f32, returned in `p`'s dtype (one fused kernel on CUDA).
fn softmax_grad(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda_ops::available(p) && dp.dtype() == p.dtype() {
        return crate::cuda_ops::softmax_grad(p, dp, scale);
    }
    let (pf, dpf) = (p.to_dtype(DType::F32)?, dp.to_dtype(DType::F32)?);
    let dot = (&pf * &dpf)?.sum_keepdim(D::Minus1)?;
    ((pf * dpf.broadcast_sub(&dot)?)? * scale)?.to_dtype(p.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::uniform(shape, seed, -1.0, 1.0)
    }

    /// The node against the composed attention of the GPU's branches (RoPE, the stacked query
    /// heads, masked softmax, two matmuls, each a graph node): values and the gradients of q, k
    /// and v, f32 and bf16, grouped-query heads, per-row RoPE tables.
    #[test]
    fn node_matches_the_composed_attention_and_its_gradients() {
        let (b, t, h, g, hd) = (2, 5, 4, 2, 6);
        let rep = h / g;
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 3e-2)] {
            for per_row in [false, true] {
                crate::ops::with_portable(|| {
                    let tb = if per_row { b } else { 1 };
                    let cos = rand(&[tb, t, 1, hd / 2], 7).to_dtype(dt).unwrap();
                    let sin = rand(&[tb, t, 1, hd / 2], 8).to_dtype(dt).unwrap();
                    let mask = Tensor::from_vec(
                        (0..t * t).map(|i| if i % t <= i / t { 0f32 } else { f32::NEG_INFINITY }).collect::<Vec<_>>(),
                        (t, t),
                        &Device::Cpu,
                    )
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                    let q = Var::from_tensor(&rand(&[b * t, h * hd], 1).to_dtype(dt).unwrap()).unwrap();
                    let k = Var::from_tensor(&rand(&[b * t, g * hd], 2).to_dtype(dt).unwrap()).unwrap();
                    let v = Var::from_tensor(&rand(&[b * t, g * hd], 3).to_dtype(dt).unwrap()).unwrap();
                    let up = rand(&[b * t, h * hd], 4);
                    let o = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), (b, t), h, g, &cos, &sin, &mask).unwrap();
                    // Composed, as Model::forward_from + Model::attention build it.
                    let qr = crate::ops::rope(&q.as_tensor().reshape((b, t, h, hd)).unwrap(), &cos, &sin).unwrap();
                    let kr = crate::ops::rope(&k.as_tensor().reshape((b, t, g, hd)).unwrap(), &cos, &sin).unwrap();
                    let qg =
                        qr.reshape((b, t, g, rep, hd)).unwrap().permute((0, 2, 3, 1, 4)).unwrap().reshape((b, g, rep * t, hd)).unwrap();
                    let kg = kr.transpose(1, 2).unwrap().contiguous().unwrap();
                    let vg = v.as_tensor().reshape((b, t, g, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
                    let raw = qg.matmul(&kg.t().unwrap()).unwrap().reshape((b, g, rep, t, t)).unwrap();
                    let p = crate::ops::causal_softmax(&raw, 1.0 / (hd as f64).sqrt(), &mask).unwrap().reshape((b, g, rep * t, t)).unwrap();
                    let oc = p
                        .matmul(&vg)
                        .unwrap()
                        .reshape((b, g, rep, t, hd))
                        .unwrap()
                        .permute((0, 3, 1, 2, 4))
                        .unwrap()
                        .reshape((b * t, h * hd))
                        .unwrap();
                    let f = |x: &Tensor| x.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(diff(&f(&o), &f(&oc)) < tol, "{dt:?} forward: {}", diff(&f(&o), &f(&oc)));
                    let g1 = (o.to_dtype(DType::F32).unwrap() * &up).unwrap().sum_all().unwrap().backward().unwrap();
                    let g2 = (oc.to_dtype(DType::F32).unwrap() * &up).unwrap().sum_all().unwrap().backward().unwrap();
                    for (name, x) in [("q", q.as_tensor()), ("k", k.as_tensor()), ("v", v.as_tensor())] {
                        let (a, c) = (f(g1.get(x).unwrap()), f(g2.get(x).unwrap()));
                        let m = c.iter().fold(1f32, |m, v| m.max(v.abs()));
                        assert!(diff(&a, &c) < tol * m, "{dt:?} per-row {per_row}: d{name} differs by {}", diff(&a, &c));
                    }
                });
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (cos, sin) = (rand(&[1, 3, 1, 2], 1), rand(&[1, 3, 1, 2], 2));
        let mask = rand(&[3, 3], 3);
        let q = rand(&[3, 8], 4);
        assert!(causal_attention(&q, &rand(&[3, 4], 5), &rand(&[3, 4], 6), (1, 3), 3, 1, &cos, &sin, &mask).is_err());
        assert!(causal_attention(&q, &rand(&[3, 5], 5), &rand(&[3, 4], 6), (1, 3), 2, 1, &cos, &sin, &mask).is_err());
        assert!(causal_attention(&q, &rand(&[3, 4], 5), &rand(&[3, 4], 6), (2, 3), 2, 1, &cos, &sin, &mask).is_err());
    }
}
