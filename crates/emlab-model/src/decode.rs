//! One decode step's attention over a [`crate::BatchCache`] in two ops whose launches do not
//! change from step to step, so that a CUDA graph captured once replays every decode step
//! ([`crate::decode_graph`]).
//!
//! The composed path (RoPE tables gathered from host positions, two in-place copies at a column
//! given as an argument, a mask built on the host, two batched matmuls, a softmax and three
//! layout copies: ~11 launches per layer) bakes the step's column into its arguments and uploads
//! host data. Here the column being written and each row's first column live in a small device
//! tensor, `meta` `[B + 1]` u32 (`meta[b]` = row `b`'s first real column, `meta[B]` = the
//! column written now; [`crate::BatchCache`] keeps it current):
//!
//! - [`write_kv`]: rotates each row's new key (at position `col - first`) and writes keys and
//!   values at column `col` of the cache, in place. `kv` `[2, B, G, cap, D]`, `k`/`v` `[B, G*D]`.
//! - [`attend`]: rotates the queries and attends over columns `first..=col` of each row
//!   (online softmax). `q` `[B, H*D]` -> `[B, H*D]`.
//!
//! Arithmetic is f32 and the rotated key and query are rounded once to the cache's dtype; the
//! composed path rounds after each bf16 operation, so in bf16 the two agree to about one unit
//! in the last place (exactly in f32, up to summation order).
//!
//! The CPU implementations below (f32, bf16, f16; arithmetic in f32) are the reference the tests
//! check against the composed path; the CUDA kernels (`emlab_kernels::DECODE`, f32 and bf16)
//! are the same loops. Generation only: no gradients.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use emlab_model::decode;
//! let dev = Device::Cpu;
//! let (b, g, h, cap, d) = (1, 1, 2, 4, 2);
//! let kv = Tensor::zeros((2, b, g, cap, d), DType::F32, &dev)?;
//! let meta = Tensor::new(&[0u32, 0], &dev)?;              // row 0 starts at column 0; write column 0
//! let (cos, sin) = (Tensor::ones((8, d / 2), DType::F32, &dev)?, Tensor::zeros((8, d / 2), DType::F32, &dev)?);
//! decode::write_kv(&kv, &Tensor::new(&[[1f32, 0.]], &dev)?, &Tensor::new(&[[5f32, 7.]], &dev)?, &meta, &cos, &sin)?;
//! let out = decode::attend(&Tensor::new(&[[1f32, 0., 0., 1.]], &dev)?, &kv, &meta, &cos, &sin, h)?;
//! assert_eq!(out.to_vec2::<f32>()?, vec![vec![5., 7., 5., 7.]]); // one key: both heads read its value
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, InplaceOp3, Layout, Result, Shape, Tensor, WithDType};
use half::{bf16, f16};

thread_local! {
    static COMPOSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the composed decode attention on this thread (the A/B, and what the tests
/// compare these ops against). Nests; restores on unwind.
pub fn with_composed<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(COMPOSED.with(|p| p.replace(true)));
    f()
}

/// True when a decode step over a batch cache of `dtype` on `device` uses these ops:
/// `EMLAB_DECODE_KERNEL` is not `0`, [`with_composed`] is not active, and the device has them
/// (the CPU: f32 / bf16 / f16; CUDA builds: f32 / bf16).
pub fn wanted(device: &candle_core::Device, dtype: DType) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| crate::device::env_switch("EMLAB_DECODE_KERNEL", &["1", "0"], "1") == "1");
    if !on || COMPOSED.with(|c| c.get()) {
        return false;
    }
    match device {
        candle_core::Device::Cpu => matches!(dtype, DType::F32 | DType::BF16 | DType::F16),
        candle_core::Device::Cuda(_) => cfg!(feature = "cuda") && matches!(dtype, DType::F32 | DType::BF16),
        _ => false,
    }
}

/// Sizes shared by both ops, checked once from the tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub g: usize,
    pub h: usize,
    pub cap: usize,
    pub d: usize,
    /// Rows of the RoPE tables (positions they cover).
    pub p: usize,
}

/// `h`: query heads (`None`: the cache's own kv heads, for [`write_kv`]).
fn dims(kv: &Tensor, meta: &Tensor, cos: &Tensor, sin: &Tensor, h: Option<usize>) -> Result<Dims> {
    let (two, b, g, cap, d) = kv.dims5()?;
    let h = h.unwrap_or(g);
    if two != 2 || d % 2 != 0 || d > 256 || g == 0 || h == 0 || !h.is_multiple_of(g) {
        bail!("decode: cache {:?} with {h} query heads (want [2, B, G, cap, D], D even and <= 256, heads a multiple of G)", kv.dims());
    }
    if meta.dtype() != DType::U32 || meta.dims() != [b + 1] {
        bail!("decode: meta must be u32 [{}], got {:?} {:?}", b + 1, meta.dtype(), meta.dims());
    }
    let (p, half) = cos.dims2()?;
    if half != d / 2 || sin.dims() != cos.dims() || cos.dtype() != kv.dtype() || sin.dtype() != kv.dtype() {
        bail!("decode: RoPE tables {:?} / {:?} ({:?}) for head dim {d} in {:?}", cos.dims(), sin.dims(), cos.dtype(), kv.dtype());
    }
    if !kv.is_contiguous() || !meta.is_contiguous() || !cos.is_contiguous() || !sin.is_contiguous() {
        bail!("decode: cache, meta and RoPE tables must be contiguous");
    }
    Ok(Dims { b, g, h, cap, d, p })
}

/// Writes the step's keys (rotated) and values into `kv` at column `meta[B]` of every row.
/// `kv` `[2, B, G, cap, D]` (modified in place), `k`/`v` `[B, G*D]` in `kv`'s dtype, `meta`
/// `[B + 1]` u32, `cos`/`sin` `[P, D/2]` in `kv`'s dtype.
pub fn write_kv(kv: &Tensor, k: &Tensor, v: &Tensor, meta: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<()> {
    let dm = dims(kv, meta, cos, sin, None)?;
    let n = dm.b * dm.g * dm.d;
    for (name, t) in [("keys", k), ("values", v)] {
        if t.elem_count() != n || t.dtype() != kv.dtype() {
            bail!("decode: new {name} {:?} {:?} for a cache {:?} {:?}", t.dims(), t.dtype(), kv.dims(), kv.dtype());
        }
    }
    let op = WriteKv { meta: meta.clone(), cos: cos.clone(), sin: sin.clone(), dims: dm };
    kv.inplace_op3(&k.contiguous()?, &v.contiguous()?, &op)
}

/// Attention of the step's queries `q` `[B, H*D]` (before RoPE) over each row's columns
/// `meta[b]..=meta[B]` of `kv`, after [`write_kv`] wrote this step's column. Returns `[B, H*D]`
/// in `q`'s dtype.
pub fn attend(q: &Tensor, kv: &Tensor, meta: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let dm = dims(kv, meta, cos, sin, Some(heads))?;
    if q.elem_count() != dm.b * heads * dm.d || q.dtype() != kv.dtype() {
        bail!("decode: queries {:?} {:?} for {heads} heads over a cache {:?} {:?}", q.dims(), q.dtype(), kv.dims(), kv.dtype());
    }
    q.contiguous()?.apply_op3_no_bwd(kv, meta, &Attend { cos: cos.clone(), sin: sin.clone(), dims: dm })
}

// ---------------------------------------------------------------------------------------------
// CPU reference

/// Each row's (first column, position) and the write column, checked against the cache.
fn rows_of(meta: &[u32], dm: &Dims) -> Result<(Vec<(usize, usize)>, usize)> {
    let col = meta[dm.b] as usize;
    if col >= dm.cap {
        bail!("decode: write column {col} of a {}-column cache", dm.cap);
    }
    let rows: Vec<(usize, usize)> = meta[..dm.b]
        .iter()
        .map(|&f| {
            let f = f as usize;
            (f.min(col), col.saturating_sub(f))
        })
        .collect();
    if let Some(&(_, p)) = rows.iter().find(|&&(_, p)| p >= dm.p) {
        bail!("decode: position {p} past the RoPE tables' {} rows", dm.p);
    }
    Ok((rows, col))
}

/// `cos`/`sin` rows at each row's position, f32, `[B][D/2]` flattened.
fn table_rows(t: &Tensor, rows: &[(usize, usize)]) -> Result<Vec<f32>> {
    let idx = Tensor::from_vec(rows.iter().map(|&(_, p)| p as u32).collect::<Vec<_>>(), rows.len(), t.device())?;
    t.index_select(&idx, 0)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let all = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => bail!("decode: {what} must be contiguous"),
    }
}

/// Half rotation of `x` `[D]` by the angles whose cos/sin are `c`/`s` `[D/2]`.
fn rotate(x: impl Fn(usize) -> f32, c: &[f32], s: &[f32], out: &mut [f32]) {
    let half = c.len();
    for i in 0..half {
        let (x1, x2) = (x(i), x(i + half));
        out[i] = x1 * c[i] - x2 * s[i];
        out[i + half] = x2 * c[i] + x1 * s[i];
    }
}

struct WriteKv {
    meta: Tensor,
    cos: Tensor,
    sin: Tensor,
    dims: Dims,
}

impl WriteKv {
    fn cpu<T: WithDType>(&self, kv: &mut [T], k: &[T], v: &[T]) -> Result<()> {
        let dm = self.dims;
        let (rows, col) = rows_of(&self.meta.to_vec1::<u32>()?, &dm)?;
        let (cos, sin) = (table_rows(&self.cos, &rows)?, table_rows(&self.sin, &rows)?);
        let (half, d) = (dm.d / 2, dm.d);
        let plane = dm.b * dm.g * dm.cap * d; // keys, then values
        let mut rot = vec![0f32; d];
        for b in 0..dm.b {
            let (c, s) = (&cos[b * half..][..half], &sin[b * half..][..half]);
            for g in 0..dm.g {
                let src = (b * dm.g + g) * d;
                let dst = ((b * dm.g + g) * dm.cap + col) * d;
                rotate(|i| k[src + i].to_f64() as f32, c, s, &mut rot);
                for i in 0..d {
                    kv[dst + i] = T::from_f64(rot[i] as f64);
                    kv[plane + dst + i] = v[src + i];
                }
            }
        }
        Ok(())
    }
}

impl InplaceOp3 for WriteKv {
    fn name(&self) -> &'static str {
        "decode-write-kv"
    }
    fn cpu_fwd(&self, kv: &mut CpuStorage, lkv: &Layout, k: &CpuStorage, lk: &Layout, v: &CpuStorage, lv: &Layout) -> Result<()> {
        let (a, b) = lkv.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("decode: cache must be contiguous".into()))?;
        macro_rules! run {
            ($t:ty, $kv:expr) => {
                self.cpu::<$t>(&mut $kv[a..b], slice::<$t>(k, lk, "keys")?, slice::<$t>(v, lv, "values")?)
            };
        }
        match kv {
            CpuStorage::F32(x) => run!(f32, x),
            CpuStorage::BF16(x) => run!(bf16, x),
            CpuStorage::F16(x) => run!(f16, x),
            s => bail!("decode: unsupported cache dtype {:?}", s.dtype()),
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        kv: &mut candle_core::CudaStorage,
        lkv: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<()> {
        crate::cuda_ops::decode_write_kv(kv, lkv, k, lk, v, lv, &self.meta, &self.cos, &self.sin, &self.dims)
    }
}

struct Attend {
    cos: Tensor,
    sin: Tensor,
    dims: Dims,
}

impl Attend {
    fn cpu<T: WithDType>(&self, q: &[T], kv: &[T], meta: &[u32]) -> Result<Vec<T>> {
        let dm = self.dims;
        let (rows, col) = rows_of(meta, &dm)?;
        let (cos, sin) = (table_rows(&self.cos, &rows)?, table_rows(&self.sin, &rows)?);
        let (half, d, rep) = (dm.d / 2, dm.d, dm.h / dm.g);
        let plane = dm.b * dm.g * dm.cap * d;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![T::zero(); dm.b * dm.h * d];
        let (mut qr, mut sc, mut acc) = (vec![0f32; d], Vec::new(), vec![0f32; d]);
        for (b, &(first, _)) in rows.iter().enumerate() {
            let (c, s) = (&cos[b * half..][..half], &sin[b * half..][..half]);
            for h in 0..dm.h {
                let base = (b * dm.h + h) * d;
                rotate(|i| q[base + i].to_f64() as f32, c, s, &mut qr);
                // Rounded once to the cache's dtype (the composed path keeps rotated queries in it).
                qr.iter_mut().for_each(|x| *x = T::from_f64(*x as f64).to_f64() as f32);
                let kbase = (b * dm.g + h / rep) * dm.cap * d;
                sc.clear();
                sc.extend((first..=col).map(|j| {
                    let kj = &kv[kbase + j * d..][..d];
                    qr.iter().zip(kj).map(|(a, k)| a * k.to_f64() as f32).sum::<f32>() * scale
                }));
                let mx = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                acc.iter_mut().for_each(|a| *a = 0.0);
                let mut sum = 0f32;
                for (j, &x) in (first..=col).zip(&sc) {
                    let p = (x - mx).exp();
                    sum += p;
                    let vj = &kv[plane + kbase + j * d..][..d];
                    acc.iter_mut().zip(vj).for_each(|(a, v)| *a += p * v.to_f64() as f32);
                }
                for i in 0..d {
                    out[base + i] = T::from_f64((acc[i] / sum) as f64);
                }
            }
        }
        Ok(out)
    }
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "decode-attend"
    }
    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        kv: &CpuStorage,
        lkv: &Layout,
        m: &CpuStorage,
        lm: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let meta = slice::<u32>(m, lm, "meta")?;
        let shape = Shape::from((self.dims.b, self.dims.h * self.dims.d));
        macro_rules! run {
            ($t:ty) => {
                <$t>::to_cpu_storage_owned(self.cpu::<$t>(slice::<$t>(q, lq, "queries")?, slice::<$t>(kv, lkv, "cache")?, meta)?)
            };
        }
        let out = match q {
            CpuStorage::F32(_) => run!(f32),
            CpuStorage::BF16(_) => run!(bf16),
            CpuStorage::F16(_) => run!(f16),
            s => bail!("decode: unsupported query dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        kv: &candle_core::CudaStorage,
        lkv: &Layout,
        m: &candle_core::CudaStorage,
        lm: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda_ops::decode_attend(q, lq, kv, lkv, m, lm, &self.cos, &self.sin, &self.dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::testing::uniform(shape, seed, -0.5, 0.5)
    }

    /// The ops against a direct computation: keys written rotated at the column, values as
    /// they are, and each head's output the softmax-weighted values of its kv head's columns
    /// `first..=col` (a padded row sees fewer keys; a row whose first column is past the write
    /// column sees only its own).
    #[test]
    fn ops_match_a_direct_computation() -> Result<()> {
        let (b, g, h, cap, d, p) = (3, 2, 4, 6, 8, 16);
        let kv = rand(&[2, b, g, cap, d], 1);
        let kv0 = kv.copy()?;
        let (k, v, q) = (rand(&[b, g * d], 2), rand(&[b, g * d], 3), rand(&[b, h * d], 4));
        let (cos, sin) = (rand(&[p, d / 2], 5), rand(&[p, d / 2], 6));
        let col = 4u32;
        let meta = Tensor::new(&[0u32, 2, 5, col], &Device::Cpu)?; // row 2 starts past the column
        write_kv(&kv, &k, &v, &meta, &cos, &sin)?;
        let out = attend(&q, &kv, &meta, &cos, &sin, h)?.to_vec2::<f32>()?;
        let kvv = kv.flatten_all()?.to_vec1::<f32>()?;
        let kv0v = kv0.flatten_all()?.to_vec1::<f32>()?;
        let (kf, vf, qf) = (k.to_vec2::<f32>()?, v.to_vec2::<f32>()?, q.to_vec2::<f32>()?);
        let (cf, sf) = (cos.to_vec2::<f32>()?, sin.to_vec2::<f32>()?);
        let at = |pl: usize, bi: usize, gi: usize, c: usize, i: usize| ((((pl * b + bi) * g + gi) * cap + c) * d) + i;
        let rot = |x: &[f32], pos: usize| -> Vec<f32> {
            let half = d / 2;
            let mut o = vec![0f32; d];
            for i in 0..half {
                o[i] = x[i] * cf[pos][i] - x[i + half] * sf[pos][i];
                o[i + half] = x[i + half] * cf[pos][i] + x[i] * sf[pos][i];
            }
            o
        };
        let firsts = [0usize, 2, 5];
        for bi in 0..b {
            let first = firsts[bi];
            let pos = (col as usize).saturating_sub(first);
            for gi in 0..g {
                let kr = rot(&kf[bi][gi * d..][..d], pos);
                for i in 0..d {
                    assert!((kvv[at(0, bi, gi, col as usize, i)] - kr[i]).abs() < 1e-6);
                    assert_eq!(kvv[at(1, bi, gi, col as usize, i)], vf[bi][gi * d + i]);
                    // other columns untouched
                    assert_eq!(kvv[at(0, bi, gi, 0, i)], kv0v[at(0, bi, gi, 0, i)]);
                }
            }
            let lo = first.min(col as usize);
            for hi in 0..h {
                let gi = hi / (h / g);
                let qr = rot(&qf[bi][hi * d..][..d], pos);
                let sc: Vec<f32> = (lo..=col as usize)
                    .map(|j| (0..d).map(|i| qr[i] * kvv[at(0, bi, gi, j, i)]).sum::<f32>() / (d as f32).sqrt())
                    .collect();
                let mx = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f32> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f32 = w.iter().sum();
                for i in 0..d {
                    let want: f32 = (lo..=col as usize).zip(&w).map(|(j, wj)| wj * kvv[at(1, bi, gi, j, i)]).sum::<f32>() / z;
                    let got = out[bi][hi * d + i];
                    assert!((got - want).abs() < 1e-5, "row {bi} head {hi} dim {i}: {got} vs {want}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_and_columns_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let kv = Tensor::zeros((2, 2, 1, 4, 4), DType::F32, &dev)?;
        let (cos, sin) = (Tensor::ones((8, 2), DType::F32, &dev)?, Tensor::zeros((8, 2), DType::F32, &dev)?);
        let (k, q) = (Tensor::zeros((2, 4), DType::F32, &dev)?, Tensor::zeros((2, 4), DType::F32, &dev)?);
        let meta = Tensor::new(&[0u32, 0, 4], &dev)?; // column 4 of a 4-column cache
        let e = write_kv(&kv, &k, &k, &meta, &cos, &sin).unwrap_err().to_string();
        assert!(e.contains("write column 4 of a 4-column cache"), "{e}");
        let e = attend(&q, &kv, &meta, &cos, &sin, 1).unwrap_err().to_string();
        assert!(e.contains("write column 4"), "{e}");
        let meta = Tensor::new(&[0u32, 3], &dev)?;
        let e = write_kv(&kv, &k, &k, &meta, &cos, &sin).unwrap_err().to_string();
        assert!(e.contains("meta must be u32 [3]"), "{e}");
        let meta = Tensor::new(&[0u32, 0, 3], &dev)?;
        let e = attend(&q, &kv, &meta, &cos, &sin, 3).unwrap_err().to_string();
        assert!(e.contains("multiple of G") || e.contains("queries"), "{e}");
        let e = write_kv(&kv, &Tensor::zeros((2, 3), DType::F32, &dev)?, &k, &meta, &cos, &sin).unwrap_err().to_string();
        assert!(e.contains("new keys"), "{e}");
        let short = (Tensor::ones((2, 2), DType::F32, &dev)?, Tensor::zeros((2, 2), DType::F32, &dev)?);
        let e = write_kv(&kv, &k, &k, &meta, &short.0, &short.1).unwrap_err().to_string();
        assert!(e.contains("past the RoPE tables"), "{e}");
        Ok(())
    }
}
