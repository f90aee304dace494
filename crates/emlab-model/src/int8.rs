//! Int8 weights with one f32 scale per 32 values (the Q8_0 layout), and a matrix-vector kernel
//! for low-batch decoding.
//!
//! Single-stream decoding is bound by memory bandwidth: every token reads every weight once. f32
//! weights cost 4 bytes each, int8 ~1.1. candle's quantized CPU matmul was measured here at ~25x
//! slower than its f32 GEMM for a 1 x 576 x 1536 product, so we own this small kernel instead.
//! It is inference-only (no autograd) and used only when the user asks for it (`--q8`).
//!
//! On CPUs with AVX-512 VNNI the weights are repacked at load for the int8 x int8 kernel of
//! [`crate::int8_gemm`] (inputs quantized per block of 32 as well, as llama.cpp's Q8_0 does),
//! which serves every call from one row (decoding) to a batch of 64 (compute-bound there: 4x the
//! multiply-adds per instruction of f32). Elsewhere the row kernel below runs (f32 inputs).
//!
//! The kernel is CPU code: for an input on another device (or under
//! [`crate::ops::with_portable`]) [`Int8Matrix::matmul`] runs the same product with candle ops
//! on the dequantized weight instead, on the input's device. (A GPU model never builds these
//! copies: [`crate::Model::quantize_for_inference`] keeps bf16 weights there.)
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use emlab_model::int8::Int8Matrix;
//! let w = Tensor::new(&[[0.5f32; 32], [-1.0; 32]], &Device::Cpu)?;  // [out=2, in=32]
//! let q = Int8Matrix::quantize(&w)?.expect("in is a multiple of 32");
//! let y = q.matmul(&Tensor::ones((1, 32), candle_core::DType::F32, &Device::Cpu)?)?;
//! assert_eq!(y.to_vec2::<f32>()?, vec![vec![16.0, -32.0]]);
//! # Ok::<(), emlab_model::Error>(())
//! ```

use crate::int8_gemm::{vnni_available, Panels};
use crate::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

const BLOCK: usize = 32;

/// A `[out, in]` matrix as int8 blocks of 32 with an f32 scale each.
#[derive(Debug, Clone)]
pub struct Int8Matrix {
    out: usize,
    inp: usize,
    store: Store,
}

/// Which kernel the blocks are laid out for.
#[derive(Debug, Clone)]
enum Store {
    /// Row-major blocks, f32 inputs: the AVX2 / scalar row kernel.
    Rows { q: Vec<i8>, scales: Vec<f32> },
    /// Repacked for the VNNI kernel (int8 inputs).
    Panels(Panels),
}

/// Which kernel an [`Int8Matrix`] serves: the VNNI panels where the CPU has them, unless
/// `EMLAB_INT8_KERNEL=rows` asks for the row kernel (for A/B benchmarks).
fn use_panels() -> bool {
    vnni_available() && crate::device::env_switch("EMLAB_INT8_KERNEL", &["gemm", "rows"], "gemm") == "gemm"
}

impl Int8Matrix {
    /// Quantizes `w` `[out, in]` (`in` a multiple of 32): scale = max|x| / 127 per block.
    pub fn quantize(w: &Tensor) -> Result<Option<Self>> {
        Self::quantize_for(w, use_panels())
    }

    /// [`Int8Matrix::quantize`] for the VNNI kernel (`panels`, only where the CPU has it) or the
    /// row kernel.
    fn quantize_for(w: &Tensor, panels: bool) -> Result<Option<Self>> {
        let (out, inp) = w.dims2()?;
        if inp % BLOCK != 0 {
            return Ok(None);
        }
        let v = w.flatten_all()?.to_vec1::<f32>()?;
        let nb = v.len() / BLOCK;
        let mut q = vec![0i8; v.len()];
        let mut scales = vec![0f32; nb];
        q.par_chunks_mut(BLOCK).zip(scales.par_iter_mut()).zip(v.par_chunks(BLOCK)).for_each(|((qb, s), xb)| {
            let m = xb.iter().fold(0f32, |m, x| m.max(x.abs()));
            let sc = if m > 0.0 { m / 127.0 } else { 1.0 };
            *s = sc;
            for (o, x) in qb.iter_mut().zip(xb) {
                *o = (x / sc).round().clamp(-127.0, 127.0) as i8;
            }
        });
        let store = if panels && vnni_available() { Store::Panels(Panels::new(&q, &scales, out, inp)) } else { Store::Rows { q, scales } };
        Ok(Some(Int8Matrix { out, inp, store }))
    }

    /// Whether this matrix runs the int8 x int8 VNNI kernel.
    pub fn uses_vnni(&self) -> bool {
        matches!(self.store, Store::Panels(_))
    }

    /// `x` `[n, in]` -> `x W^T` `[n, out]`. Parallel over output rows; each weight block is read
    /// once for all `n` input rows.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (n, inp) = x.dims2()?;
        if inp != self.inp {
            return Err(crate::Error::Invalid(format!("int8 matmul: input has {inp} columns, the weight {}", self.inp)));
        }
        if !x.device().is_cpu() || crate::ops::portable_forced() {
            // Same product with candle ops on the input's device (no AVX2 there).
            let w = self.dequantized(x.device())?.to_dtype(x.dtype())?;
            return Ok(x.matmul(&w.t()?)?);
        }
        let xv = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (q, scales) = match &self.store {
            Store::Panels(p) => {
                let y = p.matmul(&xv, n).expect("panels are only built where VNNI runs");
                return Ok(Tensor::from_vec(y, (n, self.out), x.device())?.to_dtype(x.dtype())?);
            }
            Store::Rows { q, scales } => (q, scales),
        };
        let nb = self.inp / BLOCK;
        let mut out_t = vec![0f32; self.out * n]; // [out, n], transposed at the end
        out_t.par_chunks_mut(n * 16).enumerate().for_each(|(chunk, o)| {
            let j0 = chunk * 16;
            for (jj, oj) in o.chunks_mut(n).enumerate() {
                let j = j0 + jj;
                let wq = &q[j * self.inp..(j + 1) * self.inp];
                let ws = &scales[j * nb..(j + 1) * nb];
                for (r, acc) in oj.iter_mut().enumerate() {
                    *acc = row_dot(wq, ws, &xv[r * inp..(r + 1) * inp]);
                }
            }
        });
        let mut out = vec![0f32; n * self.out];
        for j in 0..self.out {
            for r in 0..n {
                out[r * self.out + j] = out_t[j * n + r];
            }
        }
        Ok(Tensor::from_vec(out, (n, self.out), x.device())?.to_dtype(x.dtype())?)
    }

    /// The f32 weight these blocks stand for, `[out, in]`, built with candle ops on `device`.
    pub fn dequantized(&self, device: &candle_core::Device) -> Result<Tensor> {
        let nb = self.inp / BLOCK;
        let (q, scales): (Vec<f32>, Vec<f32>) = match &self.store {
            Store::Rows { q, scales } => (q.iter().map(|&v| v as f32).collect(), scales.clone()),
            Store::Panels(p) => {
                let q = (0..self.out * self.inp).map(|i| p.get(i / self.inp, i % self.inp).0 as f32).collect();
                let s = (0..self.out * nb).map(|i| p.get(i / nb, (i % nb) * BLOCK).1).collect();
                (q, s)
            }
        };
        let q = Tensor::from_vec(q, (self.out, nb, BLOCK), device)?;
        let s = Tensor::from_vec(scales, (self.out, nb, 1), device)?;
        Ok(q.broadcast_mul(&s)?.reshape((self.out, self.inp))?)
    }
}

/// Dot product of a row of int8 blocks with f32 `x`, each block times its scale.
fn row_dot(wq: &[i8], ws: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time; slices have matching lengths.
            return unsafe { row_dot_avx2(wq, ws, x) };
        }
    }
    row_dot_scalar(wq, ws, x)
}

/// The portable form of [`row_dot`] (machines without AVX2 + FMA).
fn row_dot_scalar(wq: &[i8], ws: &[f32], x: &[f32]) -> f32 {
    let mut total = 0f32;
    for ((wb, xb), s) in wq.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(ws) {
        let d: f32 = wb.iter().zip(xb).map(|(w, x)| *w as f32 * x).sum();
        total += s * d;
    }
    total
}

/// AVX2: sign-extend 8 int8 to int32, convert to f32, FMA against x; one scale per 32.
/// (Written with intrinsics: LLVM did not vectorise the int8 -> f32 conversion loop.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_avx2(wq: &[i8], ws: &[f32], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let nb = ws.len();
    let mut total = _mm256_setzero_ps();
    for b in 0..nb {
        let wp = wq.as_ptr().add(b * BLOCK);
        let xp = x.as_ptr().add(b * BLOCK);
        let mut acc = _mm256_setzero_ps();
        for c in 0..4 {
            let w8 = _mm_loadl_epi64(wp.add(c * 8) as *const __m128i);
            let wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w8));
            acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xp.add(c * 8)), acc);
        }
        total = _mm256_fmadd_ps(acc, _mm256_set1_ps(*ws.get_unchecked(b)), total);
    }
    let hi = _mm256_extractf128_ps(total, 1);
    let lo = _mm256_castps256_ps128(total);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn int8_matmul_matches_dequantized_f32() {
        let w = Tensor::randn(0f32, 1.0, (40, 64), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu).unwrap();
        let m = Int8Matrix::quantize_for(&w, false).unwrap().unwrap();
        let Store::Rows { q, scales } = &m.store else { unreachable!() };
        // Reference: dequantize by hand, then an f32 matmul.
        let deq: Vec<f32> = q.iter().enumerate().map(|(i, q)| *q as f32 * scales[i / BLOCK]).collect();
        let wd = Tensor::from_vec(deq, (40, 64), &Device::Cpu).unwrap();
        let want = x.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = m.matmul(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        // And the quantization error itself is small.
        let exact = x.matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = got.iter().zip(&exact).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // Per-weight error <= scale/2 (~0.01 here); over 64 terms its std is ~0.05, outputs ~8.
        assert!(err < 0.35, "{err}");
        assert!(Int8Matrix::quantize(&Tensor::zeros((2, 33), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap().is_none());
    }

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The composed fallback (what a GPU input runs) gives the kernel's numbers, and so does the
    /// scalar row kernel (what a CPU without AVX2 runs).
    #[test]
    fn int8_fallbacks_match_the_kernel() {
        let w = Tensor::randn(0f32, 1.0, (48, 96), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 96), &Device::Cpu).unwrap();
        let m = Int8Matrix::quantize_for(&w, false).unwrap().unwrap();
        let kernel = m.matmul(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let portable = crate::ops::with_portable(|| m.matmul(&x)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(rel(&portable, &kernel) < 1e-5, "{}", rel(&portable, &kernel));
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let nb = 96 / BLOCK;
        for j in 0..48 {
            let Store::Rows { q, scales } = &m.store else { unreachable!() };
            let (wq, ws) = (&q[j * 96..(j + 1) * 96], &scales[j * nb..(j + 1) * nb]);
            let (a, b) = (row_dot(wq, ws, &xv[..96]), row_dot_scalar(wq, ws, &xv[..96]));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "row {j}: {a} vs {b}");
        }
        // bf16 input: the result keeps the input's dtype; a wrong width is an error.
        let y = m.matmul(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        assert!(m.matmul(&Tensor::zeros((1, 64), DType::F32, &Device::Cpu).unwrap()).is_err());
    }

    /// The VNNI layout (where this CPU has it): the same weights as the row layout, its
    /// dequantized form equal, its products within int8 input rounding of the row kernel's, and
    /// the portable path on its dequantized weight agreeing.
    #[test]
    fn vnni_layout_matches_row_layout() {
        if !vnni_available() {
            eprintln!("no AVX-512 VNNI on this CPU: layout not exercised");
            return;
        }
        let w = Tensor::randn(0f32, 1.0, (70, 96), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (9, 96), &Device::Cpu).unwrap();
        let rows = Int8Matrix::quantize_for(&w, false).unwrap().unwrap();
        let panels = Int8Matrix::quantize_for(&w, true).unwrap().unwrap();
        assert!(panels.uses_vnni() && !rows.uses_vnni());
        let (dr, dp) = (rows.dequantized(&Device::Cpu).unwrap(), panels.dequantized(&Device::Cpu).unwrap());
        assert_eq!(dr.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dp.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let yr = rows.matmul(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yp = panels.matmul(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Inputs ~N(0,1) quantized per 32 with d ~ 2.5/127: relative error well under 2%.
        assert!(rel(&yp, &yr) < 0.02, "{}", rel(&yp, &yr));
        let portable = crate::ops::with_portable(|| panels.matmul(&x)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(rel(&portable, &yr) < 1e-5);
    }
}
