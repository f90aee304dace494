//! The CPU attention kernel of cached decoding: one query position (all heads) against that
//! sequence's cached keys and values.
//!
//! Shapes: `q` and `out` are `[H, D]`; the caches are `[len, G, D]` row-major (`G` key/value
//! heads, query head `h` reads kv head `h / (H / G)`, grouped-query attention), of f32 (the
//! reference) or f16 (what `--q8` stores: half the bytes to stream, as llama.cpp's default cache;
//! the arithmetic stays f32).
//!
//! Why a kernel: the build targets x86-64-v3 (AVX2 + FMA), but LLVM keeps a float sum in source
//! order (it may not reassociate it), so the plain dot product compiled to scalar adds, and each
//! softmax weight was a scalar libm `expf` call; batched decoding spent more time here than in its
//! matrix products. Here (AVX2 + FMA checked at run time, so a baseline build still works) the
//! caches are read in their storage order, one whole `[G, D]` row per key for every head (the
//! caches of 64 sequences do not stay in cache between steps: this is a memory stream, and
//! reading one group at a time with a stride halved its speed), and the softmax uses a vector
//! `exp` ([`crate::vmath`]).
//!
//! ```
//! // One head (G 1), D 8, two cached keys: the output is the softmax-weighted value mix.
//! let q = [1.0f32; 8];
//! let k = [[0.0f32; 8], [1.0; 8]].concat();
//! let v = [[1.0f32; 8], [3.0; 8]].concat();
//! let mut out = [0f32; 8];
//! emlab_model::cpu_attention::attend(&q, &k, &v, 1, 2, 8, 1.0, &mut out, &mut Vec::new());
//! let w1 = 1.0 / (1.0 + (-8.0f32).exp()); // weight of key 1 (score 8 vs 0)
//! assert!((out[0] - (1.0 + 2.0 * w1)).abs() < 1e-5);
//! ```

/// An element of a KV cache: f32 or f16, widened to f32 on load.
pub trait KvElem: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
    /// Eight consecutive elements as f32 lanes.
    ///
    /// # Safety
    /// `p..p+8` must be readable, and the CPU must have AVX2 + F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl KvElem for half::f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Attends `q` `[H, D]` over the first `n` keys/values of caches `[len, g, D]`; writes `out`
/// `[H, D]`. `scratch` is reused between calls (scores, `H * n`).
#[allow(clippy::too_many_arguments)]
pub fn attend<T: KvElem>(
    q: &[f32],
    kc: &[T],
    vc: &[T],
    g: usize,
    n: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let h = q.len() / hd;
    assert!(q.len() == h * hd && out.len() == q.len() && n >= 1 && g >= 1 && h.is_multiple_of(g), "attend: shapes");
    assert!(n * g * hd <= kc.len().min(vc.len()), "attend: cache shorter than n keys");
    scratch.clear();
    scratch.resize(h * n, 0.0);
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && avx2_available() {
        // SAFETY: AVX2 + FMA + F16C were detected; the asserts above bound every access.
        unsafe { attend_avx2(q, kc, vc, g, n, hd, scale, out, scratch) };
        return;
    }
    attend_scalar(q, kc, vc, g, n, hd, scale, out, scratch);
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| crate::vmath::avx2_fma() && std::arch::is_x86_feature_detected!("f16c"))
}

/// The portable form (and the tests' reference): scores, max-subtracted softmax, weighted sum.
#[allow(clippy::too_many_arguments)]
pub fn attend_scalar<T: KvElem>(
    q: &[f32],
    kc: &[T],
    vc: &[T],
    g: usize,
    n: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let h = q.len() / hd;
    let rep = h / g;
    let stride = g * hd;
    for hi in 0..h {
        let off = (hi / rep) * hd;
        let qh = &q[hi * hd..(hi + 1) * hd];
        let s = &mut scratch[hi * n..(hi + 1) * n];
        let mut mx = f32::NEG_INFINITY;
        for (j, sj) in s.iter_mut().enumerate() {
            let k = &kc[j * stride + off..j * stride + off + hd];
            *sj = qh.iter().zip(k).map(|(a, b)| a * b.widen()).sum::<f32>() * scale;
            mx = mx.max(*sj);
        }
        let mut sum = 0f32;
        for sj in s.iter_mut() {
            *sj = (*sj - mx).exp();
            sum += *sj;
        }
        let oh = &mut out[hi * hd..(hi + 1) * hd];
        oh.iter_mut().for_each(|o| *o = 0.0);
        for (j, p) in s.iter().enumerate() {
            let w = p / sum;
            for (o, x) in oh.iter_mut().zip(&vc[j * stride + off..j * stride + off + hd]) {
                *o += w * x.widen();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2<T: KvElem>(q: &[f32], kc: &[T], vc: &[T], g: usize, n: usize, hd: usize, scale: f32, out: &mut [f32], s: &mut [f32]) {
    use crate::vmath::{exp_ps, hsum_ps};
    use std::arch::x86_64::*;
    let h = q.len() / hd;
    let rep = h / g;
    let c8 = hd / 8;
    let row = g * hd;
    // Scores, key rows in storage order: row j holds the keys of all g groups.
    for j in 0..n {
        let kr = kc.as_ptr().add(j * row);
        for hi in 0..h {
            let kp = kr.add((hi / rep) * hd);
            let qp = q.as_ptr().add(hi * hd);
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut c = 0;
            while c + 2 <= c8 {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c * 8)), T::load8(kp.add(c * 8)), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c * 8 + 8)), T::load8(kp.add(c * 8 + 8)), a1);
                c += 2;
            }
            if c < c8 {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c * 8)), T::load8(kp.add(c * 8)), a0);
            }
            *s.get_unchecked_mut(hi * n + j) = hsum_ps(_mm256_add_ps(a0, a1)) * scale;
        }
    }
    // Softmax per head; the scores become weights (already divided by their sum).
    for hi in 0..h {
        let sh = &mut s[hi * n..(hi + 1) * n];
        let mx = sh.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mxv = _mm256_set1_ps(mx);
        let mut sumv = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= n {
            let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sh.as_ptr().add(j)), mxv));
            _mm256_storeu_ps(sh.as_mut_ptr().add(j), e);
            sumv = _mm256_add_ps(sumv, e);
            j += 8;
        }
        let mut sum = hsum_ps(sumv);
        while j < n {
            // The tail through the same polynomial (lane 0), so every weight has one formula.
            let e = _mm256_cvtss_f32(exp_ps(_mm256_set1_ps(sh[j] - mx)));
            sh[j] = e;
            sum += e;
            j += 1;
        }
        let inv = 1.0 / sum;
        sh.iter_mut().for_each(|p| *p *= inv);
    }
    // Weighted values, value rows in storage order; `out` ([H, D], a few KB) stays in L1.
    out.iter_mut().for_each(|o| *o = 0.0);
    for j in 0..n {
        let vr = vc.as_ptr().add(j * row);
        for hi in 0..h {
            let w = _mm256_set1_ps(*s.get_unchecked(hi * n + j));
            let vp = vr.add((hi / rep) * hd);
            let op = out.as_mut_ptr().add(hi * hd);
            for c in 0..c8 {
                let o = op.add(c * 8);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(w, T::load8(vp.add(c * 8)), _mm256_loadu_ps(o)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The vector kernel against the scalar reference: grouped heads (1, 3, 7 per kv head), sizes
    /// with and without a pair of 8-lane chunks, key counts below, at and past 8, large scores.
    #[test]
    fn simd_matches_scalar() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(rep, hd, g, n, mag) in
            &[(1, 8, 1, 1, 1.0), (3, 64, 3, 7, 1.0), (3, 64, 3, 130, 3.0), (7, 64, 2, 9, 1.0), (2, 24, 2, 17, 8.0), (1, 6, 1, 5, 1.0)]
        {
            let h = rep * g;
            // One spare key row: attention must stop at n.
            let kc: Vec<f32> = (0..(n + 1) * g * hd).map(|_| rng.random_range(-mag..mag)).collect();
            let vc: Vec<f32> = (0..(n + 1) * g * hd).map(|_| rng.random_range(-1f32..1.0)).collect();
            let q: Vec<f32> = (0..h * hd).map(|_| rng.random_range(-mag..mag)).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let mut a = vec![0f32; h * hd];
            let mut b = vec![1f32; h * hd]; // stale values must be overwritten
            attend(&q, &kc, &vc, g, n, hd, scale, &mut b, &mut Vec::new());
            attend_scalar(&q, &kc, &vc, g, n, hd, scale, &mut a, &mut vec![0.0; h * n]);
            // The f16 cache: the vector kernel against the scalar one on the same f16 values.
            let (k16, v16): (Vec<half::f16>, Vec<half::f16>) =
                (kc.iter().map(|&x| half::f16::from_f32(x)).collect(), vc.iter().map(|&x| half::f16::from_f32(x)).collect());
            let mut a16 = vec![0f32; h * hd];
            let mut b16 = vec![1f32; h * hd];
            attend(&q, &k16, &v16, g, n, hd, scale, &mut b16, &mut Vec::new());
            attend_scalar(&q, &k16, &v16, g, n, hd, scale, &mut a16, &mut vec![0.0; h * n]);
            assert!(rel(&b16, &a16) < 2e-6, "f16: rep {rep} hd {hd} n {n}: {}", rel(&b16, &a16));
            // And f16 storage stays near the f32 result (values below 8 keep ~3 decimal digits).
            assert!(rel(&a16, &a) < 2e-2, "f16 vs f32: rep {rep} hd {hd} n {n}: {}", rel(&a16, &a));
            assert!(rel(&b, &a) < 2e-6, "rep {rep} hd {hd} n {n}: {}", rel(&b, &a));
        }
    }
}
