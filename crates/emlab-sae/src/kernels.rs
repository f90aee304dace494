//! Low-level kernels: the dense encoder GEMM, per-row top-k selection, and the
//! small vector helpers the sparse decoder / backward use.
//!
//! ```
//! // [2, 3] @ [3, 2] with the same GEMM the encoder uses
//! let (a, b) = ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
//! let mut c = [0f32; 4];
//! emlab_sae::kernels::matmul(&a, &b, &mut c, 2, 3, 2);
//! assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
//! ```
//!
//! Layout convention (all row-major f32):
//! - `x`, `xc`: [rows, d_in]
//! - `w_enc_t`: [d_sae, d_in] — the encoder stored *transposed* (one contiguous row
//!   per latent) so that the sparse encoder-gradient scatter and the Adam update
//!   touch contiguous memory. SAELens' `W_enc` [d_in, d_sae] is its transpose.
//! - `w_dec`: [d_sae, d_in] — same as SAELens.

/// `out[rows, m] = b_enc (broadcast) + xc[rows, d] @ w_enc_t[m, d]^T`, single-threaded
/// (callers parallelise over row chunks, which keeps each thread's output block private).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encoder_pre(xc: &[f32], rows: usize, d: usize, w_enc_t: &[f32], m: usize, b_enc: &[f32], out: &mut [f32], parallel: bool) {
    debug_assert_eq!(xc.len(), rows * d);
    debug_assert_eq!(w_enc_t.len(), m * d);
    debug_assert_eq!(b_enc.len(), m);
    debug_assert_eq!(out.len(), rows * m);
    for r in 0..rows {
        out[r * m..(r + 1) * m].copy_from_slice(b_enc);
    }
    if rows == 0 || m == 0 {
        return;
    }
    let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: pointers and strides describe exactly the slices checked above:
    // dst [rows, m] row-major (cs 1, rs m); lhs [rows, d] row-major (cs 1, rs d);
    // rhs is [d, m] viewed from w_enc_t [m, d] row-major (cs d, rs 1).
    // gemm computes dst = alpha*dst + beta*lhs*rhs when read_dst is true.
    unsafe {
        gemm::gemm(
            rows,
            m,
            d,
            out.as_mut_ptr(),
            1,
            m as isize,
            true,
            xc.as_ptr(),
            1,
            d as isize,
            w_enc_t.as_ptr(),
            d as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Plain dense `c[m, n] = a[m, k] @ b[k, n]` (row-major), multi-threaded; used by
/// the benchmark to measure the machine's matmul rate with the same GEMM.
pub fn matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    // SAFETY: shapes asserted above; all three matrices are row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Appends the `k` largest entries of `row` (unordered) to `idx`/`val`.
/// O(len + r*k) where r, the number of replacements, is ~k*ln(len/k) for
/// random data: a linear scan with a rarely-taken branch beats a heap or
/// `select_nth_unstable` (which would need a scratch copy of the row).
pub(crate) fn top_k(row: &[f32], k: usize, idx: &mut Vec<u32>, val: &mut Vec<f32>) {
    let k = k.min(row.len());
    if k == 0 {
        return;
    }
    let start = idx.len();
    for (j, &v) in row[..k].iter().enumerate() {
        idx.push(j as u32);
        val.push(v);
    }
    let (mut min_pos, mut min_v) = argmin(&val[start..]);
    for (j, &v) in row.iter().enumerate().skip(k) {
        if v > min_v {
            idx[start + min_pos] = j as u32;
            val[start + min_pos] = v;
            (min_pos, min_v) = argmin(&val[start..]);
        }
    }
}

/// Like [`top_k`] but only over the candidate latents `cands` (e.g. the dead ones).
pub(crate) fn top_k_among(row: &[f32], cands: &[u32], k: usize, idx: &mut Vec<u32>, val: &mut Vec<f32>) {
    let k = k.min(cands.len());
    if k == 0 {
        return;
    }
    let start = idx.len();
    for &j in &cands[..k] {
        idx.push(j);
        val.push(row[j as usize]);
    }
    let (mut min_pos, mut min_v) = argmin(&val[start..]);
    for &j in &cands[k..] {
        let v = row[j as usize];
        if v > min_v {
            idx[start + min_pos] = j;
            val[start + min_pos] = v;
            (min_pos, min_v) = argmin(&val[start..]);
        }
    }
}

#[inline]
fn argmin(v: &[f32]) -> (usize, f32) {
    let mut p = 0;
    let mut m = v[0];
    for (i, &x) in v.iter().enumerate().skip(1) {
        // NaN never becomes the minimum, so a NaN entry is never evicted; the
        // trainer rejects non-finite losses anyway.
        if x < m {
            m = x;
            p = i;
        }
    }
    (p, m)
}

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // 8 independent accumulators let the compiler vectorise without -ffast-math.
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s + acc.iter().sum::<f32>()
}

/// `y += alpha * x`
#[inline]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// A raw pointer that may cross threads. Used where rayon workers write
/// *disjoint* rows of one buffer selected by an index computed at run time
/// (the per-latent parameter update), which safe slicing cannot express cheaply.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// SAFETY: caller guarantees `[off, off+len)` is in bounds and not aliased
    /// by any other live slice.
    #[inline]
    pub(crate) unsafe fn slice<'a>(self, off: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_sort() {
        let row: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1009) as f32 - 500.0).collect();
        for k in [1, 5, 32, 999, 1000] {
            let (mut idx, mut val) = (vec![], vec![]);
            top_k(&row, k, &mut idx, &mut val);
            let mut got: Vec<f32> = val.clone();
            got.sort_by(|a, b| b.partial_cmp(a).unwrap());
            let mut want = row.clone();
            want.sort_by(|a, b| b.partial_cmp(a).unwrap());
            assert_eq!(got, want[..k].to_vec(), "k={k}");
            for (i, v) in idx.iter().zip(&val) {
                assert_eq!(row[*i as usize], *v);
            }
        }
    }

    #[test]
    fn top_k_among_respects_candidates() {
        let row = vec![9.0, 1.0, 8.0, 2.0, 7.0, 3.0];
        let (mut idx, mut val) = (vec![], vec![]);
        top_k_among(&row, &[1, 3, 5], 2, &mut idx, &mut val);
        let mut p: Vec<_> = idx.iter().zip(&val).map(|(a, b)| (*a, *b)).collect();
        p.sort_by_key(|x| x.0);
        assert_eq!(p, vec![(3, 2.0), (5, 3.0)]);
    }

    #[test]
    fn encoder_gemm_matches_naive() {
        let (rows, d, m) = (5, 7, 11);
        let xc: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..m * d).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..m).map(|i| i as f32 * 0.1).collect();
        let mut out = vec![0f32; rows * m];
        encoder_pre(&xc, rows, d, &w, m, &b, &mut out, false);
        for r in 0..rows {
            for j in 0..m {
                let want: f32 = b[j] + (0..d).map(|t| xc[r * d + t] * w[j * d + t]).sum::<f32>();
                assert!((out[r * m + j] - want).abs() < 1e-4, "{r},{j}");
            }
        }
    }
}
