//! Fused CUDA versions of the training ops of [`crate::ops`], each one kernel forward and one
//! kernel backward (`emlab_kernels::TRAIN`), with the backward written by hand.
//!
//! Why: composed candle ops cost one launch each, and candle's autograd adds, for every edge of
//! the graph, a zero-filled buffer and an add, and computes gradients for constant operands too
//! (the RoPE tables, the causal mask). An RMSNorm composed from nine ops took ~40 launches forward
//! and backward; fused it takes two (plus candle's accumulation of the result). Training on a
//! GPU is launch-bound at the model sizes emlab targets (docs/benchmarks.md, "GPU").
//!
//! Used only for CUDA tensors that track gradients, in f32 or bf16 ([`wanted`]);
//! `EMLAB_CUDA_FUSED=0` turns them off (the composed ops run instead: the A/B, and the fallback if
//! a kernel is ever wrong). Arithmetic is f32 inside the kernels whatever the input dtype. There
//! is no CPU implementation: on the CPU the fused kernels of [`crate::ops`] run, and the GPU
//! benchmark (`bench/gpu/run.sh`) checks this path against the CPU's loss and gradient norm.
//!
//! Shapes: [`rms_norm`] `x [.., d]`, `w [d]`; [`causal_softmax`] `[.., n, n]` (row `q` of each
//! square block sees columns `0..=q`); [`rope`] `x [B, T, H, D]`, tables `[1 or B, T, 1, D/2]`;
//! [`silu_mul`] any shape; [`cross_entropy`] logits `[N, V]`, targets `[N]` -> `[N]` f32. The
//! LoRA update, one node for every device, is [`crate::ops::lora_delta`].

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use emlab_kernels::launch;
use half::bf16;

const MODULE: &str = "emlab-train";

/// True when `x` should take the fused CUDA path: a CUDA tensor in f32 or bf16 that tracks
/// gradients, unless `EMLAB_CUDA_FUSED=0`.
pub fn wanted(x: &Tensor) -> bool {
    available(x) && x.track_op()
}

/// True when the fused kernels can run on `x` at all (a CUDA tensor in f32 or bf16, unless
/// `EMLAB_CUDA_FUSED=0`), whether or not it tracks gradients.
pub fn available(x: &Tensor) -> bool {
    crate::device::cuda_fused() && x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::BF16)
}

/// The element types the kernels are built for, with their kernel-name suffixes.
trait Elem: DeviceRepr + CudaDType + Copy + 'static {
    const SUFFIX: &'static str;
    fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, Self>>;
    fn view_mut<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<CudaViewMut<'a, Self>>;
}

fn offsets(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous input")))
}

/// `Elem` for a type stored in the `$variant` slice of a [`CudaStorage`].
macro_rules! elem {
    ($t:ty, $variant:ident, $suffix:literal) => {
        impl Elem for $t {
            const SUFFIX: &'static str = $suffix;
            fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, $t>> {
                let (a, b) = offsets(l, what)?;
                match &s.slice {
                    CudaStorageSlice::$variant(x) => Ok(x.slice(a..b)),
                    _ => bail!("{what}: expected {}, got {:?}", $suffix, s.dtype()),
                }
            }
            fn view_mut<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<CudaViewMut<'a, $t>> {
                let (a, b) = offsets(l, what)?;
                let dt = s.dtype();
                match &mut s.slice {
                    CudaStorageSlice::$variant(x) => Ok(x.slice_mut(a..b)),
                    _ => bail!("{what}: expected {}, got {dt:?}", $suffix),
                }
            }
        }
    };
}

elem!(f32, F32, "f32");
elem!(bf16, BF16, "bf16");
// Index and metadata tensors (cross-entropy targets, the decode ops' `meta`); no kernel is
// instantiated for u32 elements.
elem!(u32, U32, "u32");

fn u32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, u32>> {
    <u32 as Elem>::view(s, l, what)
}

fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    <f32 as Elem>::view(s, l, what)
}

fn wrap<T: Elem>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// cudarc's form of a launch geometry from [`emlab_kernels::launch`] (which the emulator tests
/// run the kernels with too).
fn cfg(l: launch::Dims) -> LaunchConfig {
    LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: l.shared_mem_bytes }
}

macro_rules! by_dtype {
    ($s:expr, $what:expr, $f:ident ( $($arg:expr),* )) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            d => bail!("{}: unsupported dtype {d:?}", $what),
        }
    };
}

/// `cpu_fwd` of an op that exists only on CUDA (the CPU runs `crate::ops`' own kernels).
macro_rules! cuda_only {
    (1, $name:literal) => {
        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
            bail!(concat!($name, ": CUDA only"))
        }
    };
    (2, $name:literal) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            bail!(concat!($name, ": CUDA only"))
        }
    };
    (3, $name:literal) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            bail!(concat!($name, ": CUDA only"))
        }
    };
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

fn rms_fwd<T: Elem>(eps: f32, x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let d = lw.shape().elem_count();
    let n = lx.shape().elem_count();
    let (xv, wv) = (T::view(x, lx, "rms-norm")?, T::view(w, lw, "rms-norm weight")?);
    let y = unsafe { dev.alloc::<T>(n)? };
    let f = dev.get_or_load_custom_func(&format!("rmsnorm_fwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    let (di, e) = (d as i32, eps);
    b.arg(&xv).arg(&wv).arg(&y).arg(&di).arg(&e);
    unsafe { b.launch(cfg(launch::rms_norm(n / d, d))) }.w()?;
    Ok((wrap(y, dev), lx.shape().clone()))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cuda-rms-norm"
    }
    cuda_only!(2, "cuda-rms-norm");
    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x, "rms-norm", rms_fwd(self.eps, x, lx, w, lw))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        Ok((Some(dx), None))
    }
}

struct RmsNormBwd {
    eps: f32,
}

fn rms_bwd<T: Elem>(
    eps: f32,
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let d = lw.shape().elem_count();
    let n = lx.shape().elem_count();
    let (xv, wv, gv) = (T::view(x, lx, "rms-norm bwd")?, T::view(w, lw, "rms-norm bwd")?, T::view(g, lg, "rms-norm bwd")?);
    let dx = unsafe { dev.alloc::<T>(n)? };
    let f = dev.get_or_load_custom_func(&format!("rmsnorm_bwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    let (di, e) = (d as i32, eps);
    b.arg(&xv).arg(&wv).arg(&gv).arg(&dx).arg(&di).arg(&e);
    unsafe { b.launch(cfg(launch::rms_norm(n / d, d))) }.w()?;
    Ok((wrap(dx, dev), lx.shape().clone()))
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "cuda-rms-norm-bwd"
    }
    cuda_only!(3, "cuda-rms-norm-bwd");
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        g: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x, "rms-norm bwd", rms_bwd(self.eps, x, lx, w, lw, g, lg))
    }
}

/// RMSNorm over the last axis, frozen weight `w` `[d]` (cast to `x`'s dtype).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone()); // a zero-block grid is a launch error
    }
    let w = if w.dtype() != x.dtype() { w.to_dtype(x.dtype())? } else { w.clone() };
    x.contiguous()?.apply_op2(&w.detach().contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// Scaled causal softmax

struct CausalSoftmax {
    scale: f32,
}

fn softmax_fwd<T: Elem>(scale: f32, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let dims = lx.dims();
    let nd = dims.len();
    if nd < 2 || dims[nd - 1] != dims[nd - 2] {
        bail!("causal-softmax: expected [.., n, n] scores, got {dims:?}");
    }
    let (n, el) = (dims[nd - 1], lx.shape().elem_count());
    let xv = T::view(x, lx, "causal-softmax")?;
    let y = unsafe { dev.alloc::<T>(el)? };
    let f = dev.get_or_load_custom_func(&format!("causal_softmax_fwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    let (ni, sc) = (n as i32, scale);
    b.arg(&xv).arg(&y).arg(&ni).arg(&sc);
    unsafe { b.launch(cfg(launch::softmax(el / n, n))) }.w()?;
    Ok((wrap(y, dev), lx.shape().clone()))
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "cuda-causal-softmax"
    }
    cuda_only!(1, "cuda-causal-softmax");
    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x, "causal-softmax", softmax_fwd(self.scale, x, lx))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd { scale: self.scale })?))
    }
}

struct SoftmaxBwd {
    scale: f32,
}

fn softmax_bwd<T: Elem>(scale: f32, y: &CudaStorage, ly: &Layout, g: &CudaStorage, lg: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = y.device();
    let n = *ly.dims().last().unwrap_or(&1);
    let el = ly.shape().elem_count();
    let (yv, gv) = (T::view(y, ly, "softmax bwd")?, T::view(g, lg, "softmax bwd")?);
    let dx = unsafe { dev.alloc::<T>(el)? };
    let f = dev.get_or_load_custom_func(&format!("softmax_bwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    let (ni, sc) = (n as i32, scale);
    b.arg(&yv).arg(&gv).arg(&dx).arg(&ni).arg(&sc);
    unsafe { b.launch(cfg(launch::softmax(el / n, n))) }.w()?;
    Ok((wrap(dx, dev), ly.shape().clone()))
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "cuda-softmax-bwd"
    }
    cuda_only!(2, "cuda-softmax-bwd");
    fn cuda_fwd(&self, y: &CudaStorage, ly: &Layout, g: &CudaStorage, lg: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(y, "softmax bwd", softmax_bwd(self.scale, y, ly, g, lg))
    }
}

/// `softmax(scale * x + causal mask)` over the last axis of square `[.., n, n]` score blocks:
/// row `q` of a block sees columns `0..=q`, the rest come out 0. The scale and mask live in the
/// kernel (composed, they cost two more ops and, in candle's backward, a reduction over the mask).
/// The gradient of the scores given `p = softmax(scale * x)` and `dp` (same shape, contiguous
/// rows over the last axis): `scale * p * (dp - sum(p * dp))`, one kernel, f32 inside.
pub(crate) fn softmax_grad(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    p.contiguous()?.apply_op2_no_bwd(&dp.contiguous()?, &SoftmaxBwd { scale: scale as f32 })
}

pub fn causal_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32 })
}

// ---------------------------------------------------------------------------------------------
// RoPE

struct Rope {
    sign: f32,
}

fn rope_run<T: Elem>(
    sign: f32,
    x: &CudaStorage,
    lx: &Layout,
    c: &CudaStorage,
    lc: &Layout,
    s: &CudaStorage,
    ls: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let (b, t, h, d) = match lx.dims() {
        [b, t, h, d] => (*b, *t, *h, *d),
        dims => bail!("rope: expected [B, T, heads, D], got {dims:?}"),
    };
    // An odd head dimension or tables of another size: refused (the kernel would skip or read
    // past values; emlab_kernels::launch states the contract the emulator tests check).
    let tb = launch::rope_table_rows(b, t, d, lc.shape().elem_count(), ls.shape().elem_count()).map_err(candle_core::Error::Msg)?;
    let (xv, cv, sv) = (T::view(x, lx, "rope")?, T::view(c, lc, "rope cos")?, T::view(s, ls, "rope sin")?);
    let el = lx.shape().elem_count();
    let y = unsafe { dev.alloc::<T>(el)? };
    let f = dev.get_or_load_custom_func(&format!("rope_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut bld = f.builder();
    let (bi, ti, hi, di, tbi, sg) = (b as i32, t as i32, h as i32, d as i32, tb as i32, sign);
    bld.arg(&xv).arg(&cv).arg(&sv).arg(&y).arg(&bi).arg(&ti).arg(&hi).arg(&di).arg(&tbi).arg(&sg);
    unsafe { bld.launch(cfg(launch::rope(el))) }.w()?;
    Ok((wrap(y, dev), lx.shape().clone()))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "cuda-rope"
    }
    cuda_only!(3, "cuda-rope");
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        c: &CudaStorage,
        lc: &Layout,
        s: &CudaStorage,
        ls: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x, "rope", rope_run(self.sign, x, lx, c, lc, s, ls))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        c: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // A rotation's transpose is the rotation by the opposite angle.
        let dx = grad.contiguous()?.apply_op3_no_bwd(c, s, &Rope { sign: -self.sign })?;
        Ok((Some(dx), None, None))
    }
}

/// Half-rotation RoPE of `x` `[B, T, heads, D]` with tables `[1 or B, T, 1, D/2]` (constants).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    let dt = x.dtype();
    let (c, s) = (cos.detach().to_dtype(dt)?.contiguous()?, sin.detach().to_dtype(dt)?.contiguous()?);
    x.contiguous()?.apply_op3(&c, &s, Rope { sign: 1.0 })
}

// ---------------------------------------------------------------------------------------------
// SiLU(gate) * up

struct SiluMul;

fn silu_fwd<T: Elem>(g: &CudaStorage, lg: &Layout, u: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = g.device();
    let n = lg.shape().elem_count();
    if lu.shape().elem_count() != n {
        bail!("silu-mul: gate {:?} and up {:?} differ", lg.dims(), lu.dims());
    }
    let (gv, uv) = (T::view(g, lg, "silu-mul")?, T::view(u, lu, "silu-mul")?);
    let y = unsafe { dev.alloc::<T>(n)? };
    let f = dev.get_or_load_custom_func(&format!("silu_mul_fwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    b.arg(&gv).arg(&uv).arg(&y).arg(&n);
    unsafe { b.launch(cfg(launch::silu_mul(n))) }.w()?;
    Ok((wrap(y, dev), lg.shape().clone()))
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "cuda-silu-mul"
    }
    cuda_only!(2, "cuda-silu-mul");
    fn cuda_fwd(&self, g: &CudaStorage, lg: &Layout, u: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(g, "silu-mul", silu_fwd(g, lg, u, lu))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One kernel writes both gradients, one after the other: [2 * n]. An operand that needs
        // no gradient gets None (candle would zero-fill and add it).
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SiluMulBwd)?;
        let n = g.elem_count();
        let dg = if g.track_op() { Some(both.narrow(0, 0, n)?.reshape(g.shape())?) } else { None };
        let du = if u.track_op() { Some(both.narrow(0, n, n)?.reshape(u.shape())?) } else { None };
        Ok((dg, du))
    }
}

struct SiluMulBwd;

fn silu_bwd<T: Elem>(
    g: &CudaStorage,
    lg: &Layout,
    u: &CudaStorage,
    lu: &Layout,
    d: &CudaStorage,
    ld: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = g.device();
    let n = lg.shape().elem_count();
    let (gv, uv, dv) = (T::view(g, lg, "silu-mul bwd")?, T::view(u, lu, "silu-mul bwd")?, T::view(d, ld, "silu-mul bwd")?);
    let out = unsafe { dev.alloc::<T>(2 * n)? };
    let f = dev.get_or_load_custom_func(&format!("silu_mul_bwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    b.arg(&gv).arg(&uv).arg(&dv).arg(&out).arg(&n);
    unsafe { b.launch(cfg(launch::silu_mul(n))) }.w()?;
    Ok((wrap(out, dev), Shape::from(2 * n)))
}

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "cuda-silu-mul-bwd"
    }
    cuda_only!(3, "cuda-silu-mul-bwd");
    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        lg: &Layout,
        u: &CudaStorage,
        lu: &Layout,
        d: &CudaStorage,
        ld: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(g, "silu-mul bwd", silu_bwd(g, lg, u, lu, d, ld))
    }
}

/// `silu(gate) * up` (same shapes and dtype).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.elem_count() == 0 {
        return Ok(gate.clone());
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

struct CrossEntropy;

fn ce_fwd<T: Elem>(x: &CudaStorage, lx: &Layout, t: &CudaStorage, lt: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let (n, v) = match lx.dims() {
        [n, v] => (*n, *v),
        d => bail!("cross-entropy: logits must be [N, V], got {d:?}"),
    };
    if lt.shape().elem_count() != n {
        bail!("cross-entropy: {} targets for {n} rows", lt.shape().elem_count());
    }
    let (xv, tv) = (T::view(x, lx, "cross-entropy")?, u32_view(t, lt, "cross-entropy")?);
    let loss = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func(&format!("ce_fwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    let vi = v as i32;
    b.arg(&xv).arg(&tv).arg(&loss).arg(&vi);
    unsafe { b.launch(cfg(launch::cross_entropy(n, v))) }.w()?;
    Ok((wrap(loss, dev), Shape::from(n)))
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cuda-cross-entropy"
    }
    cuda_only!(2, "cuda-cross-entropy");
    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout, t: &CudaStorage, lt: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x, "cross-entropy", ce_fwd(x, lx, t, lt))
    }
    fn bwd(&self, x: &Tensor, t: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.contiguous()?;
        Ok((Some(x.apply_op3_no_bwd(t, &g, &CrossEntropyBwd)?), None))
    }
}

struct CrossEntropyBwd;

fn ce_bwd<T: Elem>(
    x: &CudaStorage,
    lx: &Layout,
    t: &CudaStorage,
    lt: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let (n, v) = match lx.dims() {
        [n, v] => (*n, *v),
        d => bail!("cross-entropy bwd: logits must be [N, V], got {d:?}"),
    };
    let (xv, tv, gv) = (T::view(x, lx, "cross-entropy bwd")?, u32_view(t, lt, "cross-entropy bwd")?, f32_view(g, lg, "cross-entropy bwd")?);
    let dx = unsafe { dev.alloc::<T>(n * v)? };
    let f = dev.get_or_load_custom_func(&format!("ce_bwd_{}", T::SUFFIX), MODULE, emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    let vi = v as i32;
    b.arg(&xv).arg(&tv).arg(&gv).arg(&dx).arg(&vi);
    unsafe { b.launch(cfg(launch::cross_entropy(n, v))) }.w()?;
    Ok((wrap(dx, dev), lx.shape().clone()))
}

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "cuda-cross-entropy-bwd"
    }
    cuda_only!(3, "cuda-cross-entropy-bwd");
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        t: &CudaStorage,
        lt: &Layout,
        g: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x, "cross-entropy bwd", ce_bwd(x, lx, t, lt, g, lg))
    }
}

/// Per-row `logsumexp(logits) - logits[target]`, logits `[N, V]` (f32 or bf16), targets `[N]`
/// (cast to u32); returns `[N]` f32. The backward writes the gradient in the logits' dtype.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // As the CPU op: negative i64 targets count as 0; targets >= V give a NaN loss and no
    // gradient (the kernels check; the CPU op refuses them).
    let t = match targets.dtype() {
        DType::U32 => targets.clone(),
        DType::I64 => targets.maximum(0i64)?.to_dtype(DType::U32)?,
        _ => targets.to_dtype(DType::U32)?,
    };
    if logits.elem_count() == 0 {
        return Tensor::zeros(logits.dim(0)?, DType::F32, logits.device());
    }
    logits.contiguous()?.apply_op2(&t.detach().contiguous()?, CrossEntropy)
}

// ---------------------------------------------------------------------------------------------
// Decode-step attention (`crate::decode`): no backward, generation only.

const DECODE_MODULE: &str = "emlab-decode";

/// A read-only tensor held by a decode op (its RoPE tables, `meta`): the CUDA view of it is
/// taken inside `f`, while its storage is borrowed.
fn with_cuda_view<T: Elem, R>(t: &Tensor, what: &str, f: impl FnOnce(CudaView<'_, T>) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        candle_core::Storage::Cuda(c) => f(T::view(c, l, what)?),
        _ => bail!("{what}: expected a CUDA tensor"),
    }
}

fn i32s(d: &crate::decode::Dims) -> [i32; 6] {
    [d.b as i32, d.g as i32, d.h as i32, d.cap as i32, d.d as i32, d.p as i32]
}

#[allow(clippy::too_many_arguments)]
fn write_kv_t<T: Elem>(
    kv: &mut CudaStorage,
    lkv: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    meta: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    d: &crate::decode::Dims,
) -> Result<()> {
    let dev = kv.device().clone();
    let (kvw, vvw) = (T::view(k, lk, "decode keys")?, T::view(v, lv, "decode values")?);
    let [b, g, _, cap, hd, p] = i32s(d);
    let f = dev.get_or_load_custom_func(&format!("kv_write_{}", T::SUFFIX), DECODE_MODULE, emlab_kernels::DECODE)?;
    let mut dst = T::view_mut(kv, lkv, "decode cache")?;
    with_cuda_view::<u32, _>(meta, "decode meta", |m| {
        with_cuda_view::<T, _>(cos, "rope cos", |c| {
            with_cuda_view::<T, _>(sin, "rope sin", |s| {
                let mut a = f.builder();
                a.arg(&kvw).arg(&vvw).arg(&mut dst).arg(&m).arg(&c).arg(&s).arg(&b).arg(&g).arg(&cap).arg(&hd).arg(&p);
                unsafe { a.launch(cfg(launch::kv_write(d.b, d.g, d.d))) }.w()?;
                Ok(())
            })
        })
    })
}

/// [`crate::decode::write_kv`] on CUDA: one block per (row, kv head).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_write_kv(
    kv: &mut CudaStorage,
    lkv: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    meta: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    d: &crate::decode::Dims,
) -> Result<()> {
    by_dtype!(kv, "decode cache", write_kv_t(kv, lkv, k, lk, v, lv, meta, cos, sin, d))
}

#[allow(clippy::too_many_arguments)]
fn attend_t<T: Elem>(
    q: &CudaStorage,
    lq: &Layout,
    kv: &CudaStorage,
    lkv: &Layout,
    m: &CudaStorage,
    lm: &Layout,
    cos: &Tensor,
    sin: &Tensor,
    d: &crate::decode::Dims,
) -> Result<(CudaStorage, Shape)> {
    let dev = q.device();
    let (qv, kvv, mv) = (T::view(q, lq, "decode queries")?, T::view(kv, lkv, "decode cache")?, u32_view(m, lm, "decode meta")?);
    let n = d.b * d.h * d.d;
    let out = unsafe { dev.alloc::<T>(n)? };
    let [b, g, h, cap, hd, p] = i32s(d);
    let scale = 1.0f32 / (d.d as f32).sqrt();
    let f = dev.get_or_load_custom_func(&format!("decode_attn_{}", T::SUFFIX), DECODE_MODULE, emlab_kernels::DECODE)?;
    with_cuda_view::<T, _>(cos, "rope cos", |c| {
        with_cuda_view::<T, _>(sin, "rope sin", |s| {
            let mut a = f.builder();
            a.arg(&qv).arg(&kvv).arg(&mv).arg(&c).arg(&s).arg(&out).arg(&b).arg(&h).arg(&g).arg(&cap).arg(&hd).arg(&p).arg(&scale);
            // Shared memory: the rotated query, then each warp's max, sum and D partial sums.
            unsafe { a.launch(cfg(launch::decode_attn(d.b, d.h, d.d))) }.w()?;
            Ok(())
        })
    })?;
    Ok((wrap(out, dev), Shape::from((d.b, d.h * d.d))))
}

/// [`crate::decode::attend`] on CUDA: one block of four warps per (row, query head).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_attend(
    q: &CudaStorage,
    lq: &Layout,
    kv: &CudaStorage,
    lkv: &Layout,
    m: &CudaStorage,
    lm: &Layout,
    cos: &Tensor,
    sin: &Tensor,
    d: &crate::decode::Dims,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(q, "decode queries", attend_t(q, lq, kv, lkv, m, lm, cos, sin, d))
}
