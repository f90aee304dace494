//! Vector `exp` for the CPU hot loops (attention's softmax, the sampler), AVX2 + FMA.
//!
//! `f32::exp` / `f64::exp` are scalar libm calls whatever the target CPU; batched sampling
//! computes 64 x 49,152 of them per decoding step (a tenth of the step in `perf`). These are Cephes' polynomials (`expf`: within 2 ulp; `exp`: a Padé form, within
//! 2 ulp), evaluated 8 (f32) or 4 (f64) lanes at a time where the CPU has AVX2 + FMA.
//!
//! ```
//! let mut v = vec![0.0f64, -1.0, -20.5, 3.0, -800.0];
//! emlab_model::vmath::exp_f64_in_place(&mut v);
//! assert!((v[1] - (-1.0f64).exp()).abs() < 1e-15 && v[4] < 1e-300);
//! ```

/// Whether this CPU runs the AVX2 + FMA kernels (checked once).
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x[i] = exp(x[i])` for every element: the vector polynomial where AVX2 + FMA exist (tail
/// lanes included, so every element has one formula), libm elsewhere. Arguments below -708
/// give ~1e-308 instead of a denormal or 0.
pub fn exp_f64_in_place(x: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 + FMA detected; the loop stays inside the slice.
        unsafe { exp_f64_avx2(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = v.exp());
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_f64_avx2(x: &mut [f64]) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 4 <= x.len() {
        let p = x.as_mut_ptr().add(i);
        _mm256_storeu_pd(p, exp_pd(_mm256_loadu_pd(p)));
        i += 4;
    }
    if i < x.len() {
        let mut tail = [0f64; 4];
        tail[..x.len() - i].copy_from_slice(&x[i..]);
        let e = exp_pd(_mm256_loadu_pd(tail.as_ptr()));
        _mm256_storeu_pd(tail.as_mut_ptr(), e);
        let n = x.len() - i;
        x[i..].copy_from_slice(&tail[..n]);
    }
}

/// `exp` of 4 f64 lanes: `x = n ln2 + r`, `exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_pd(x: std::arch::x86_64::__m256d) -> std::arch::x86_64::__m256d {
    use std::arch::x86_64::*;
    let x = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(-708.0)), _mm256_set1_pd(709.0));
    let n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(std::f64::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.931_457_519_531_25e-1), x);
    let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.428_606_820_309_417_3e-6), r);
    let rr = _mm256_mul_pd(r, r);
    let mut p = _mm256_set1_pd(1.261_771_930_748_105_8e-4);
    p = _mm256_fmadd_pd(p, rr, _mm256_set1_pd(3.029_944_077_074_419_5e-2));
    p = _mm256_fmadd_pd(p, rr, _mm256_set1_pd(1.0));
    let px = _mm256_mul_pd(p, r);
    let mut q = _mm256_set1_pd(3.001_985_051_386_644_6e-6);
    q = _mm256_fmadd_pd(q, rr, _mm256_set1_pd(2.524_483_403_496_841e-3));
    q = _mm256_fmadd_pd(q, rr, _mm256_set1_pd(2.272_655_482_081_550_3e-1));
    q = _mm256_fmadd_pd(q, rr, _mm256_set1_pd(2.0));
    let e = _mm256_fmadd_pd(_mm256_set1_pd(2.0), _mm256_div_pd(px, _mm256_sub_pd(q, px)), _mm256_set1_pd(1.0));
    // 2^n: n (integral, |n| <= 1022) into the exponent field via the 1.5 * 2^52 rounding trick.
    let bits = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(6_755_399_441_055_744.0)));
    let pow2 = _mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52);
    _mm256_mul_pd(e, _mm256_castsi256_pd(pow2))
}

/// `exp` of 8 f32 lanes: `2^n * p(r)` with `x = n ln2 + r`, `|r| <= ln2 / 2` (Cephes `expf`
/// coefficients). Arguments below -87.3 give ~1e-38 (their softmax weight is below f32's range).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_ps(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
    let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_2e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
}

/// Sum of 8 f32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum_ps(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both polynomials against libm over the range softmax uses (and a little above 0).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_close_to_libm() {
        if !avx2_fma() {
            eprintln!("no AVX2 + FMA: vector exp not exercised");
            return;
        }
        for i in 0..4000 {
            let x = -90.0 + i as f32 * 0.0228;
            // SAFETY: AVX2 + FMA detected above.
            let got = unsafe { std::arch::x86_64::_mm256_cvtss_f32(exp_ps(std::arch::x86_64::_mm256_set1_ps(x))) };
            let want = x.exp();
            assert!((got - want).abs() <= 2.0 * f32::EPSILON * want + 1e-37, "expf({x}) = {got}, libm {want}");
        }
        let mut xs: Vec<f64> = (0..40_001).map(|i| -700.0 + i as f64 * 0.0176).collect();
        let want: Vec<f64> = xs.iter().map(|x| x.exp()).collect();
        exp_f64_in_place(&mut xs);
        for (i, (g, w)) in xs.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 2.0 * f64::EPSILON * w, "exp(x_{i}) = {g}, libm {w}");
        }
    }
}
