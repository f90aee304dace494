//! Int8 x int8 matrix products with AVX-512 VNNI: the kernel behind [`crate::int8::Int8Matrix`]
//! on CPUs that have it.
//!
//! Both operands are Q8_0-style: blocks of 32 values along the reduction dimension, each block an
//! int8 vector and one f32 scale. The weight's blocks are made once (at load); an input row's
//! blocks are made on every call (`d = max|x| / 127`, `q = round_ties_even(x / d)`), as
//! llama.cpp does for its Q8_0 dot products. Per block the 32 products are summed exactly in
//! int32, then `y += d_x * (d_w * sum)` in f32, so a row's output depends on that row alone and
//! never on how many rows share the call (a sample's text does not depend on its batch).
//!
//! Why a kernel of our own: batched decoding (64 rows) is compute-bound, and `vpdpbusd` does 64
//! int8 multiply-adds per instruction where an f32 FMA does 16. `vpdpbusd` multiplies *unsigned*
//! by signed bytes, so inputs are stored as `q + 128` (u8) and each weight block carries
//! `-128 * sum(w)` as the starting value of its int32 accumulator, which cancels the offset
//! exactly.
//!
//! Weight layout ([`Panels`]): outputs in panels of 32 (two 16-lane registers); within a panel,
//! per block, 8 groups of `[32 outputs][4 consecutive inputs]` bytes, so one 64-byte load holds
//! 4 inputs x 16 outputs, exactly what one `vpdpbusd` consumes against a broadcast of 4 input
//! bytes. A tile is up to 6 input rows x 32 outputs: 12 int32 and 12 f32 accumulators.
//!
//! [`reference_matmul`] is the same arithmetic in plain Rust (the test oracle, bit for bit, and
//! the documentation of what the kernel computes).
//!
//! ```
//! use emlab_model::int8_gemm::{Panels, reference_matmul};
//! // A [2 outputs, 32 inputs] weight: row 0 all 1, row 1 all -2 (scale 1, exact in int8).
//! let q: Vec<i8> = [vec![1i8; 32], vec![-2i8; 32]].concat();
//! let p = Panels::new(&q, &[1.0, 1.0], 2, 32);
//! let x = vec![0.5f32; 32];                              // one input row
//! let y = reference_matmul(&p, &x, 1);
//! // 0.5 is quantized with d = 0.5/127 to 127 exactly, so the products are exact.
//! assert!((y[0] - 16.0).abs() < 1e-5 && (y[1] + 32.0).abs() < 1e-5);
//! if let Some(fast) = p.matmul(&x, 1) { assert_eq!(fast, y); } // bit for bit where VNNI exists
//! ```

use rayon::prelude::*;

/// Values per quantization block (along the reduction dimension).
pub const BLOCK: usize = 32;
/// Outputs per panel: two 16-lane int32 registers.
const NR: usize = 32;
/// Input rows per tile (6 x 2 int32 + 6 x 2 f32 accumulators = 24 of 32 zmm registers).
const MR: usize = 6;
/// Bytes of one block of one panel: 32 inputs x 32 outputs.
const PANEL_BLOCK: usize = BLOCK * NR;

/// A `[n, k]` int8 weight repacked for the VNNI kernel (see the module docs).
#[derive(Debug, Clone)]
pub struct Panels {
    n: usize,
    k: usize,
    /// `[panel][block][group 8][32 outputs][4]` int8; outputs past `n` are zero.
    w: Vec<i8>,
    /// `[panel][block][32]` weight block scales.
    dw: Vec<f32>,
    /// `[panel][block][32]`: `-128 * sum of the block's weights`, the accumulator's start value.
    comp: Vec<i32>,
}

impl Panels {
    /// Repacks row-major int8 blocks `q` `[n, k]` with one scale per 32 (`scales` `[n, k/32]`).
    pub fn new(q: &[i8], scales: &[f32], n: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(BLOCK) && q.len() == n * k && scales.len() == n * (k / BLOCK), "Panels::new: shapes");
        let nb = k / BLOCK;
        let panels = n.div_ceil(NR);
        let mut w = vec![0i8; panels * nb * PANEL_BLOCK];
        let mut dw = vec![0f32; panels * nb * NR];
        let mut comp = vec![0i32; panels * nb * NR];
        w.par_chunks_mut(nb * PANEL_BLOCK).zip(dw.par_chunks_mut(nb * NR)).zip(comp.par_chunks_mut(nb * NR)).enumerate().for_each(
            |(p, ((w, dw), comp))| {
                for o in 0..NR.min(n - p * NR) {
                    let j = p * NR + o;
                    for b in 0..nb {
                        let row = &q[j * k + b * BLOCK..j * k + (b + 1) * BLOCK];
                        dw[b * NR + o] = scales[j * nb + b];
                        comp[b * NR + o] = -128 * row.iter().map(|&v| v as i32).sum::<i32>();
                        for (i, &v) in row.iter().enumerate() {
                            let (g, e) = (i / 4, i % 4);
                            w[b * PANEL_BLOCK + g * NR * 4 + o * 4 + e] = v;
                        }
                    }
                }
            },
        );
        Panels { n, k, w, dw, comp }
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Weight `(j, i)` as int8 and its block's scale.
    pub fn get(&self, j: usize, i: usize) -> (i8, f32) {
        let nb = self.k / BLOCK;
        let (p, o, b, r) = (j / NR, j % NR, i / BLOCK, i % BLOCK);
        let base = (p * nb + b) * PANEL_BLOCK;
        (self.w[base + (r / 4) * NR * 4 + o * 4 + r % 4], self.dw[(p * nb + b) * NR + o])
    }

    /// Bytes held (weights, scales, compensation).
    pub fn bytes(&self) -> usize {
        self.w.len() + 4 * (self.dw.len() + self.comp.len())
    }

    /// `x` `[m, k]` row-major -> `x W^T` `[m, n]` with the VNNI kernel, parallel over panels;
    /// `None` where this CPU lacks AVX-512 VNNI (callers fall back to another kernel).
    pub fn matmul(&self, x: &[f32], m: usize) -> Option<Vec<f32>> {
        if !vnni_available() {
            return None;
        }
        assert_eq!(x.len(), m * self.k, "Panels::matmul: input length");
        let (xu, dx) = quantize_rows(x, m, self.k);
        let mut y = vec![0f32; m * self.n];
        let nb = self.k / BLOCK;
        let panels = self.n.div_ceil(NR);
        let yp = SendPtr(y.as_mut_ptr());
        // Few panels per task for small outputs (k/v projections have 6), more for the LM head.
        (0..panels).into_par_iter().with_min_len((panels / 64).max(1)).for_each(|p| {
            let yp = &yp;
            let cols = NR.min(self.n - p * NR);
            let pw = &self.w[p * nb * PANEL_BLOCK..(p + 1) * nb * PANEL_BLOCK];
            let pdw = &self.dw[p * nb * NR..(p + 1) * nb * NR];
            let pc = &self.comp[p * nb * NR..(p + 1) * nb * NR];
            let mut r0 = 0;
            while r0 < m {
                let rows = MR.min(m - r0);
                // SAFETY: VNNI was detected; every pointer below stays inside its slice: rows
                // r0..r0+rows of `xu` / `dx`, panel p's weights, and outputs (r, p*NR + c) for
                // c < cols, which no other task writes.
                unsafe {
                    let xr = xu.as_ptr().add(r0 * self.k);
                    let dr = dx.as_ptr().add(r0 * nb);
                    let yr = yp.0.add(r0 * self.n + p * NR);
                    let t = TileArgs {
                        x: xr,
                        k: self.k,
                        dx: dr,
                        nb,
                        w: pw.as_ptr(),
                        dw: pdw.as_ptr(),
                        comp: pc.as_ptr(),
                        y: yr,
                        ldy: self.n,
                        cols,
                    };
                    match rows {
                        6 => tile::<6>(&t),
                        5 => tile::<5>(&t),
                        4 => tile::<4>(&t),
                        3 => tile::<3>(&t),
                        2 => tile::<2>(&t),
                        _ => tile::<1>(&t),
                    }
                }
                r0 += rows;
            }
        });
        Some(y)
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint (row, column) ranges of the output (one panel each).
unsafe impl Sync for SendPtr {}

/// Whether this CPU runs the VNNI kernel (AVX-512 F + BW + VNNI), checked once.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Quantizes rows of `x` `[m, k]` into blocks of 32: `(q + 128 as u8 [m, k], scales [m, k/32])`.
pub fn quantize_rows(x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if vnni_available() {
        // SAFETY: AVX-512 F + BW were detected; every block holds exactly 32 values.
        return quantize_rows_by(x, m, k, |xb, qb| unsafe { quantize_block_avx512(xb, qb) });
    }
    quantize_rows_by(x, m, k, quantize_block)
}

/// [`quantize_rows`] with the given block quantizer (the reference uses the scalar one).
fn quantize_rows_by(x: &[f32], m: usize, k: usize, block: impl Fn(&[f32], &mut [u8]) -> f32) -> (Vec<u8>, Vec<f32>) {
    let mut xu = vec![0u8; m * k];
    let mut dx = vec![0f32; m * (k / BLOCK)];
    for ((xb, qb), d) in x.chunks_exact(BLOCK).zip(xu.chunks_exact_mut(BLOCK)).zip(dx.iter_mut()) {
        *d = block(xb, qb);
    }
    (xu, dx)
}

/// One block: `d = max|x| / 127`, `q = round_ties_even(x * (1/d)) + 128`; returns `d`.
/// A block holding a NaN or an infinity returns `d = NaN`, so the outputs it feeds are NaN as
/// the f32 matmul's would be (a cast would turn NaN into a quiet, finite code).
fn quantize_block(x: &[f32], q: &mut [u8]) -> f32 {
    if !x.iter().all(|v| v.is_finite()) {
        q.fill(128);
        return f32::NAN;
    }
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in q.iter_mut().zip(x) {
        *o = ((v * inv).round_ties_even().clamp(-127.0, 127.0) as i32 + 128) as u8;
    }
    d
}

/// [`quantize_block`] with AVX-512 (`vcvtps2dq` rounds to nearest even, as `round_ties_even`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_block_avx512(x: &[f32], q: &mut [u8]) -> f32 {
    use std::arch::x86_64::*;
    let v0 = _mm512_loadu_ps(x.as_ptr());
    let v1 = _mm512_loadu_ps(x.as_ptr().add(16));
    // `max_ps` drops a NaN operand: look for one (unordered with itself) first; an infinity
    // shows in the maximum. Either gives `d = NaN`, as the scalar form.
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v0, v0) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v1, v1);
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    if nan != 0 || !amax.is_finite() {
        q[..BLOCK].fill(128);
        return f32::NAN;
    }
    let d = amax / 127.0;
    let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let lim = _mm512_set1_ps(127.0);
    let neg = _mm512_set1_ps(-127.0);
    let i0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, inv), neg), lim));
    let i1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, inv), neg), lim));
    let off = _mm512_set1_epi32(128);
    let b0 = _mm512_cvtepi32_epi8(_mm512_add_epi32(i0, off));
    let b1 = _mm512_cvtepi32_epi8(_mm512_add_epi32(i1, off));
    _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, b0);
    _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, b1);
    d
}

/// Pointers for one tile (rows of `x` from the tile's first row, one panel's weights).
struct TileArgs {
    x: *const u8,
    k: usize,
    dx: *const f32,
    nb: usize,
    w: *const i8,
    dw: *const f32,
    comp: *const i32,
    y: *mut f32,
    ldy: usize,
    cols: usize,
}

/// `R` rows x one panel. Per block: int32 accumulators start at the compensation, 8 groups of
/// one broadcast + two `vpdpbusd` per row, then `y = fma(float(acc) * d_w, d_x, y)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize>(t: &TileArgs) {
    use std::arch::x86_64::*;
    let mut yacc = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..t.nb {
        let c0 = _mm512_loadu_si512(t.comp.add(b * NR) as *const _);
        let c1 = _mm512_loadu_si512(t.comp.add(b * NR + 16) as *const _);
        let mut acc = [[c0, c1]; R];
        let wb = t.w.add(b * PANEL_BLOCK);
        for g in 0..BLOCK / 4 {
            let w0 = _mm512_loadu_si512(wb.add(g * NR * 4) as *const _);
            let w1 = _mm512_loadu_si512(wb.add(g * NR * 4 + 64) as *const _);
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32((t.x.add(r * t.k + b * BLOCK + g * 4) as *const i32).read_unaligned());
                a[0] = _mm512_dpbusd_epi32(a[0], xv, w0);
                a[1] = _mm512_dpbusd_epi32(a[1], xv, w1);
            }
        }
        let d0 = _mm512_loadu_ps(t.dw.add(b * NR));
        let d1 = _mm512_loadu_ps(t.dw.add(b * NR + 16));
        for (r, (a, y)) in acc.iter().zip(yacc.iter_mut()).enumerate() {
            let s = _mm512_set1_ps(*t.dx.add(r * t.nb + b));
            y[0] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a[0]), d0), s, y[0]);
            y[1] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a[1]), d1), s, y[1]);
        }
    }
    for (r, y) in yacc.iter().enumerate() {
        let out = t.y.add(r * t.ldy);
        if t.cols == NR {
            _mm512_storeu_ps(out, y[0]);
            _mm512_storeu_ps(out.add(16), y[1]);
        } else {
            // The last panel of an output count that is not a multiple of 32.
            let m0 = if t.cols >= 16 { 0xffffu16 } else { ((1u32 << t.cols) - 1) as u16 };
            let m1 = if t.cols > 16 { ((1u32 << (t.cols - 16)) - 1) as u16 } else { 0 };
            _mm512_mask_storeu_ps(out, m0, y[0]);
            _mm512_mask_storeu_ps(out.add(16), m1, y[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const R: usize>(_t: &TileArgs) {
    unreachable!("the VNNI kernel only runs where vnni_available()")
}

/// What [`Panels::matmul`] computes, in plain Rust and the same order of f32 operations (the
/// kernel matches it bit for bit). `x` `[m, k]` -> `[m, n]`.
pub fn reference_matmul(p: &Panels, x: &[f32], m: usize) -> Vec<f32> {
    let (n, k, nb) = (p.n, p.k, p.k / BLOCK);
    let (xu, dx) = quantize_rows_by(x, m, k, quantize_block);
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            let (pi, o) = (j / NR, j % NR);
            let mut acc_f = 0f32;
            for b in 0..nb {
                let at = (pi * nb + b) * NR + o;
                let mut acc = p.comp[at];
                for i in 0..BLOCK {
                    acc += xu[r * k + b * BLOCK + i] as i32 * p.get(j, b * BLOCK + i).0 as i32;
                }
                acc_f = (acc as f32 * p.dw[at]).mul_add(dx[r * nb + b], acc_f);
            }
            y[r * n + j] = acc_f;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_weight(n: usize, k: usize, seed: u64) -> (Vec<i8>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127i32..=127) as i8).collect();
        let s: Vec<f32> = (0..n * k / BLOCK).map(|_| rng.random_range(0.001f32..0.02)).collect();
        (q, s)
    }

    fn random_input(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Mixed magnitudes per block, one all-zero block, and exact ties for the rounding.
        let mut x: Vec<f32> = (0..m * k).map(|i| rng.random_range(-1f32..1.0) * if (i / 32) % 3 == 0 { 50.0 } else { 0.5 }).collect();
        if m * k >= 64 {
            x[32..64].iter_mut().for_each(|v| *v = 0.0);
        }
        x
    }

    /// The kernel equals the reference bit for bit for every tile height (1..6 and remainders),
    /// full and partial panels, one and many blocks.
    #[test]
    fn vnni_kernel_matches_reference_bit_for_bit() {
        if !vnni_available() {
            eprintln!("no AVX-512 VNNI on this CPU: kernel not exercised");
            return;
        }
        for &(m, n, k) in &[(1, 32, 32), (5, 40, 64), (6, 64, 96), (7, 96, 128), (13, 70, 64), (64, 192, 576), (3, 16, 32)] {
            let (q, s) = random_weight(n, k, (m * 1000 + n) as u64);
            let p = Panels::new(&q, &s, n, k);
            let x = random_input(m, k, k as u64);
            let want = reference_matmul(&p, &x, m);
            let got = p.matmul(&x, m).unwrap();
            assert_eq!(got.len(), m * n);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a.to_bits() == b.to_bits(), "m {m} n {n} k {k}: element {i}: {a} vs {b}");
            }
        }
    }

    /// The reference is the product of the dequantized operands (up to f32 rounding), and a row
    /// gives the same numbers whatever other rows share the call.
    #[test]
    fn reference_is_the_dequantized_product_and_rows_are_independent() {
        let (m, n, k) = (9, 48, 96);
        let (q, s) = random_weight(n, k, 7);
        let p = Panels::new(&q, &s, n, k);
        let x = random_input(m, k, 3);
        let y = reference_matmul(&p, &x, m);
        let (xu, dx) = quantize_rows(&x, m, k);
        for r in 0..m {
            for j in 0..n {
                let mut want = 0f64;
                for i in 0..k {
                    let (wq, ws) = p.get(j, i);
                    assert_eq!(wq, q[j * k + i]);
                    assert_eq!(ws, s[j * (k / BLOCK) + i / BLOCK]);
                    let xv = (xu[r * k + i] as i32 - 128) as f64 * dx[r * (k / BLOCK) + i / BLOCK] as f64;
                    want += xv * wq as f64 * ws as f64;
                }
                let got = y[r * n + j] as f64;
                assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "({r},{j}): {got} vs {want}");
            }
        }
        // Row 4 alone equals row 4 inside the batch, on whichever kernel this CPU runs.
        let alone = p.matmul(&x[4 * k..5 * k], 1).unwrap_or_else(|| reference_matmul(&p, &x[4 * k..5 * k], 1));
        let batch = p.matmul(&x, m).unwrap_or_else(|| y.clone());
        assert_eq!(alone, batch[4 * n..5 * n].to_vec());
    }

    /// Activation quantization: the SIMD and scalar forms agree; values are within d/2.
    #[test]
    fn quantize_rows_matches_scalar_and_bounds_error() {
        let (m, k) = (4, 96);
        let x = random_input(m, k, 11);
        let (xu, dx) = quantize_rows(&x, m, k);
        let mut q2 = vec![0u8; m * k];
        for (bi, (xb, qb)) in x.chunks_exact(BLOCK).zip(q2.chunks_exact_mut(BLOCK)).enumerate() {
            assert_eq!(quantize_block(xb, qb).to_bits(), dx[bi].to_bits());
        }
        assert_eq!(xu, q2);
        for (i, v) in x.iter().enumerate() {
            let d = dx[i / BLOCK];
            let back = (xu[i] as i32 - 128) as f32 * d;
            assert!((back - v).abs() <= d * 0.5 + 1e-6, "{i}: {v} -> {back}");
        }
        assert!(dx[1] == 0.0 && xu[32..64].iter().all(|&v| v == 128), "an all-zero block");
    }

    /// A NaN or an infinity in an activation block reaches the outputs as NaN (as in f32),
    /// on the SIMD and scalar forms alike; other blocks and rows are unaffected.
    #[test]
    fn non_finite_activations_propagate() {
        let (m, k) = (3, 64);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 5, 17, 31] {
                let mut x = random_input(m, k, 12);
                x[k + at] = bad; // row 1, block 0
                let (xu, dx) = quantize_rows(&x, m, k);
                let mut q2 = vec![0u8; m * k];
                for (bi, (xb, qb)) in x.chunks_exact(BLOCK).zip(q2.chunks_exact_mut(BLOCK)).enumerate() {
                    assert_eq!(quantize_block(xb, qb).to_bits(), dx[bi].to_bits(), "{bad} at {at}, block {bi}");
                }
                assert_eq!(xu, q2);
                assert!(dx[2].is_nan(), "{bad} at {at}");
                assert!(dx.iter().enumerate().all(|(i, d)| i == 2 || d.is_finite()));
                let n = 32;
                let (q, sc) = random_weight(n, k, 13);
                let p = Panels::new(&q, &sc, n, k);
                let y = p.matmul(&x, m).unwrap_or_else(|| reference_matmul(&p, &x, m));
                assert!(y[n..2 * n].iter().all(|v| v.is_nan()), "{bad} at {at}: row 1 should be NaN");
                assert!(y[..n].iter().chain(&y[2 * n..]).all(|v| v.is_finite()), "{bad}: other rows stay finite");
            }
        }
    }
}
