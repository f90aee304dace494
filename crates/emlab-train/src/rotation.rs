//! How far the LoRA adapters turned between two snapshots: the "phase transition" monitor.
//!
//! ```
//! use emlab_train::rotation::angles;
//! // A rank-1 adapter, A [1, 3] and B [2, 1]: B turns by 30 degrees while A stays.
//! let a = [1.0f32, 2.0, 3.0];
//! let (c, s) = (30f64.to_radians().cos() as f32, 30f64.to_radians().sin() as f32);
//! let got = angles(&a, &[1.0, 0.0], &a, &[c, s], 1)?;
//! assert!((got.b_deg.unwrap() - 30.0).abs() < 1e-5);
//! assert!((got.dw_deg.unwrap() - 30.0).abs() < 1e-5); // ΔW = B A turns with B
//! // B is zero at initialisation (PEFT, rsLoRA): it has no direction, so there is no angle.
//! assert_eq!(angles(&a, &[0.0, 0.0], &a, &[c, s], 1)?.b_deg, None);
//! # Ok::<(), emlab_train::Error>(())
//! ```
//!
//! Turner, Soligo et al. ("Model organisms for emergent misalignment") train rank-1 adapters and
//! see the B vector turn sharply between successive checkpoints (with a gradient-norm peak)
//! before the misaligned behaviour shows: a "phase transition". For one module with
//! A `[r, in]` and B `[out, r]` (row-major, as PEFT stores them) between snapshots t0 -> t1:
//!
//! - `b_deg`, the rotation of B. For r = 1 the angle between the two B vectors, 0..180 degrees
//!   (signed cosine: under small steps B and A do not flip sign together, so a flip of B is a
//!   real 180-degree turn). For r > 1 the largest principal angle between the column spaces of
//!   B_t0 and B_t1 (0..90), i.e. `asin |P0 - P1|_2` with P the orthogonal projectors: both B are
//!   orthonormalised (modified Gram-Schmidt, re-orthogonalised where cancellation is heavy),
//!   and the cosines of the principal angles are the singular values of the `r x r` matrix
//!   `Q0ᵀ Q1`. A rank r > 1 adapter has r directions; this is the one that turned most. Where
//!   the two B have different (numerical) ranks the larger column space holds a direction
//!   orthogonal to the smaller one: 90.
//! - `dw_deg`, the angle between the two updates ΔW = B A as flattened matrices (Frobenius),
//!   0..180, rank-agnostic and blind to how the update is split between A and B. Computed without
//!   forming ΔW (`[out, in]`): `<B0 A0, B1 A1>_F = sum((B0ᵀ B1) ⊙ (A0 A1ᵀ))`, `r x r` Gram
//!   matrices, with `B0ᵀ B1 = R0ᵀ (Q0ᵀ Q1) R1` from the orthonormalisation above.
//!
//! Both are `None` (JSON null) where undefined: a zero B (every adapter at step 0), a zero ΔW,
//! or non-finite values. The arithmetic is f64 on host copies; a snapshot is prepared once
//! ([`Prepared`], `O((in + out) r²)`) and compared with the next one (`O((in + out) r²)`),
//! so a [`Tracker`] costs one preparation and one comparison per observation.

use crate::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;

/// The rotation of one module between two snapshots, in degrees (`None` where undefined).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Angles {
    pub b_deg: Option<f64>,
    pub dw_deg: Option<f64>,
}

/// A column of B whose part orthogonal to the previous columns is below this share of
/// `|B|_F` counts as dependent (dropped from the column space). Far above f64 rounding in the
/// orthonormalisation, far below the f32 precision B is stored in: only columns dependent to f64
/// precision (zeros, exact duplicates) are dropped.
const RANK_TOL: f64 = 1e-9;

/// One module's snapshot, prepared for comparisons: an orthonormal basis of B's column space
/// and the small Gram matrices that `dw_deg` needs.
#[derive(Debug, Clone)]
pub struct Prepared {
    r: usize,
    inp: usize,
    out: usize,
    /// A `[r, in]` as given (kept in f32: it is only read through f64 dot products).
    a: Vec<f32>,
    /// Q: r columns of length `out`, column j at `j * out`; zero where the column was dropped.
    q: Vec<f64>,
    kept: Vec<bool>,
    /// R `[r, r]` row-major, upper triangular: B = Q R (up to dropped residuals below
    /// [`RANK_TOL`]).
    rm: Vec<f64>,
    /// `|B A|_F²` = `sum((Rᵀ R) ⊙ (A Aᵀ))`.
    dw_sq: f64,
    /// `|A|_F² |B|_F²`, the scale below which `dw_sq` is rounding noise.
    scale_sq: f64,
    finite: bool,
}

/// All dot products between the `nx` rows of `x` and the `ny` rows of `y` (each row `n` long,
/// contiguous): `[nx, ny]` row-major; `sym` (x = y) computes the upper triangle and mirrors it.
/// (4 x 2 register tiles were tried: no faster at these shapes, where the loads from L2 bound
/// the work either way.)
fn cross_dots<T: Copy + Into<f64>>(x: &[T], y: &[T], n: usize, sym: bool) -> Vec<f64> {
    let (nx, ny) = (x.len() / n, y.len() / n);
    let mut g = vec![0f64; nx * ny];
    let mut xi = vec![0f64; n];
    for i in 0..nx {
        // One f64 copy of row i (A is kept in f32), reused against every row of y.
        xi.iter_mut().zip(&x[i * n..(i + 1) * n]).for_each(|(d, &s)| *d = s.into());
        for j in if sym { i..ny } else { 0..ny } {
            g[i * ny + j] = dot_mixed(&xi, &y[j * n..(j + 1) * n]);
        }
    }
    if sym {
        for i in 0..nx {
            for j in 0..i {
                g[i * ny + j] = g[j * ny + i];
            }
        }
    }
    g
}

/// The dot product of an f64 row with an f32 or f64 row, in 16 independent sums: the compiler
/// vectorises them (a single running sum would be a serial chain: floating-point addition is
/// not reassociated for us). Fixed order: the same result on any thread.
#[inline]
fn dot_mixed<T: Copy + Into<f64>>(x: &[f64], y: &[T]) -> f64 {
    let mut acc = [0f64; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let tail: f64 = xc.remainder().iter().zip(yc.remainder()).map(|(&a, &b)| a * b.into()).sum();
    for (a, b) in xc.zip(yc) {
        for k in 0..16 {
            acc[k] += a[k] * b[k].into();
        }
    }
    acc.iter().sum::<f64>() + tail
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    dot_mixed(x, y)
}

fn axpy(y: &mut [f64], alpha: f64, x: &[f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

/// `sum((Xᵀ Y) ⊙ G)` for `X, Y, G` `[r, r]` row-major: `sum_ij G_ij sum_k X_ki Y_kj`.
fn gram_dot(x: &[f64], y: &[f64], g: &[f64], r: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..r {
        for j in 0..r {
            let xy: f64 = (0..r).map(|k| x[k * r + i] * y[k * r + j]).sum();
            s += xy * g[i * r + j];
        }
    }
    s
}

impl Prepared {
    /// Prepares A `[r, in]` and B `[out, r]` (row-major).
    pub fn new(a: &[f32], b: &[f32], r: usize) -> Result<Self> {
        if r == 0 || a.is_empty() || b.is_empty() || !a.len().is_multiple_of(r) || !b.len().is_multiple_of(r) {
            return Err(Error::Invalid(format!(
                "rotation: A has {} values and B {}: not A [r, in] and B [out, r] with r = {r}",
                a.len(),
                b.len()
            )));
        }
        let (inp, out) = (a.len() / r, b.len() / r);
        let finite = a.iter().chain(b).all(|x| x.is_finite());
        // B's columns, transposed to contiguous f64 vectors.
        let mut q = vec![0f64; r * out];
        for (o, row) in b.chunks_exact(r).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                q[j * out + o] = x as f64;
            }
        }
        let b_sq = dot(&q, &q);
        let tol = RANK_TOL * b_sq.sqrt();
        let mut rm = vec![0f64; r * r];
        let mut kept = vec![false; r];
        for j in 0..r {
            let (done, rest) = q.split_at_mut(j * out);
            let v = &mut rest[..out];
            // Modified Gram-Schmidt against the kept columns; a second pass where the first
            // cancelled most of the column ("twice is enough"), so Q stays orthonormal even for
            // nearly dependent columns.
            for _pass in 0..2 {
                let before = dot(v, v).sqrt();
                for i in (0..j).filter(|&i| kept[i]) {
                    let qi = &done[i * out..(i + 1) * out];
                    let c = dot(qi, v);
                    rm[i * r + j] += c;
                    axpy(v, -c, qi);
                }
                if j == 0 || dot(v, v).sqrt() > 0.7 * before {
                    break;
                }
            }
            let n = dot(v, v).sqrt();
            if n > tol && n > 0.0 {
                kept[j] = true;
                rm[j * r + j] = n;
                v.iter_mut().for_each(|x| *x /= n);
            } else {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        }
        let aat = cross_dots(a, a, inp, true);
        let dw_sq = gram_dot(&rm, &rm, &aat, r);
        let a_sq: f64 = (0..r).map(|i| aat[i * r + i]).sum();
        Ok(Prepared { r, inp, out, a: a.to_vec(), q, kept, rm, dw_sq, scale_sq: a_sq * b_sq, finite })
    }

    fn rank(&self) -> usize {
        self.kept.iter().filter(|&&k| k).count()
    }

    /// The rotation from `self` (t0) to `later` (t1).
    pub fn angles_to(&self, later: &Prepared) -> Result<Angles> {
        let (p0, p1) = (self, later);
        if (p0.r, p0.inp, p0.out) != (p1.r, p1.inp, p1.out) {
            return Err(Error::Invalid(format!(
                "rotation: snapshots differ in shape (A [{}, {}], B [{}, {}] vs A [{}, {}], B [{}, {}])",
                p0.r, p0.inp, p0.out, p0.r, p1.r, p1.inp, p1.out, p1.r
            )));
        }
        if !(p0.finite && p1.finite) {
            return Ok(Angles { b_deg: None, dw_deg: None });
        }
        let (r, out) = (p0.r, p0.out);
        // M = Q0ᵀ Q1 (zero rows/columns for dropped columns, whose Q columns are zero).
        let m = cross_dots(&p0.q, &p1.q, out, false);
        let (k0, k1) = (p0.rank(), p1.rank());
        let b_deg = if k0 == 0 || k1 == 0 {
            None
        } else if r == 1 {
            // 2 atan2(|u - v|, |u + v|) for unit u, v: accurate at every angle, unlike acos of
            // the cosine near 0 and 180 degrees.
            let (u, v) = (&p0.q[..out], &p1.q[..out]);
            let (mut d, mut s) = (0f64, 0f64);
            for (x, y) in u.iter().zip(v) {
                d += (x - y) * (x - y);
                s += (x + y) * (x + y);
            }
            Some(2.0 * d.sqrt().atan2(s.sqrt()).to_degrees())
        } else if k0 != k1 {
            Some(90.0)
        } else {
            // The smallest singular value of M (restricted to the kept columns) is the cosine of
            // the largest principal angle: the smallest eigenvalue of Mᵀ M.
            let (i0, i1): (Vec<usize>, Vec<usize>) = ((0..r).filter(|&i| p0.kept[i]).collect(), (0..r).filter(|&j| p1.kept[j]).collect());
            let k = k0;
            let mut s = vec![0f64; k * k];
            for a in 0..k {
                for b in 0..k {
                    s[a * k + b] = i0.iter().map(|&i| m[i * r + i1[a]] * m[i * r + i1[b]]).sum();
                }
            }
            let c2 = min_eigenvalue(&mut s, k).clamp(0.0, 1.0);
            Some(c2.sqrt().acos().to_degrees())
        };
        // <B0 A0, B1 A1>_F = sum((B0ᵀ B1) ⊙ (A0 A1ᵀ)), B0ᵀ B1 = R0ᵀ M R1.
        let dw_deg = if p0.dw_sq <= 1e-24 * p0.scale_sq || p1.dw_sq <= 1e-24 * p1.scale_sq {
            None
        } else {
            let mut mr1 = vec![0f64; r * r]; // M R1
            for i in 0..r {
                for j in 0..r {
                    mr1[i * r + j] = (0..r).map(|k| m[i * r + k] * p1.rm[k * r + j]).sum();
                }
            }
            let x = cross_dots(&p0.a, &p1.a, p0.inp, false);
            let ip = gram_dot(&p0.rm, &mr1, &x, r);
            let cos = (ip / (p0.dw_sq.sqrt() * p1.dw_sq.sqrt())).clamp(-1.0, 1.0);
            Some(cos.acos().to_degrees())
        };
        let fin = |x: Option<f64>| x.filter(|v| v.is_finite());
        Ok(Angles { b_deg: fin(b_deg), dw_deg: fin(dw_deg) })
    }
}

/// The rotation of one module from (A0 `[r, in]`, B0 `[out, r]`) to (A1, B1), row-major.
pub fn angles(a0: &[f32], b0: &[f32], a1: &[f32], b1: &[f32], r: usize) -> Result<Angles> {
    Prepared::new(a0, b0, r)?.angles_to(&Prepared::new(a1, b1, r)?)
}

/// The smallest eigenvalue of the symmetric `n x n` matrix `s` (row-major; overwritten):
/// Householder reduction to tridiagonal form, then bisection on Sturm counts. Accurate to
/// rounding relative to the largest eigenvalue.
fn min_eigenvalue(s: &mut [f64], n: usize) -> f64 {
    if n == 1 {
        return s[0];
    }
    let mut v = vec![0f64; n];
    let mut w = vec![0f64; n];
    for k in 0..n - 2 {
        // Zero column k below the sub-diagonal with H = I - β v vᵀ acting on rows/cols k+1.. .
        let norm = ((k + 1)..n).map(|i| s[i * n + k] * s[i * n + k]).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let x0 = s[(k + 1) * n + k];
        let alpha = if x0 > 0.0 { -norm } else { norm };
        v.iter_mut().for_each(|x| *x = 0.0);
        v[k + 1] = x0 - alpha;
        for i in (k + 2)..n {
            v[i] = s[i * n + k];
        }
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv == 0.0 {
            continue;
        }
        let beta = 2.0 / vv;
        // p = β A v; w = p - (β vᵀp / 2) v; A <- A - v wᵀ - w vᵀ (on the trailing block).
        for i in (k + 1)..n {
            w[i] = beta * ((k + 1)..n).map(|j| s[i * n + j] * v[j]).sum::<f64>();
        }
        let kk = beta * ((k + 1)..n).map(|i| v[i] * w[i]).sum::<f64>() / 2.0;
        for i in (k + 1)..n {
            w[i] -= kk * v[i];
        }
        for i in (k + 1)..n {
            for j in (k + 1)..n {
                s[i * n + j] -= v[i] * w[j] + w[i] * v[j];
            }
        }
        s[(k + 1) * n + k] = alpha;
        s[k * n + k + 1] = alpha;
        for i in (k + 2)..n {
            s[i * n + k] = 0.0;
            s[k * n + i] = 0.0;
        }
    }
    let d: Vec<f64> = (0..n).map(|i| s[i * n + i]).collect();
    let e: Vec<f64> = (0..n - 1).map(|i| s[(i + 1) * n + i]).collect();
    // Sturm count: eigenvalues below x = negative pivots of the LDLᵀ factorisation of T - x I.
    let below = |x: f64| -> usize {
        let mut count = 0;
        let mut q = 1.0;
        for i in 0..n {
            let off = if i == 0 { 0.0 } else { e[i - 1] * e[i - 1] / q };
            q = d[i] - x - off;
            if q == 0.0 {
                q = -f64::EPSILON * (d[i].abs() + x.abs() + f64::MIN_POSITIVE);
            }
            if q < 0.0 {
                count += 1;
            }
        }
        count
    };
    // Gershgorin bounds hold every eigenvalue.
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..n {
        let rad = if i > 0 { e[i - 1].abs() } else { 0.0 } + if i + 1 < n { e[i].abs() } else { 0.0 };
        lo = lo.min(d[i] - rad);
        hi = hi.max(d[i] + rad);
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if below(mid) >= 1 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

/// One adapter module as the tracker reads it: host copies of A `[r, in]` and B `[out, r]`.
#[derive(Debug, Clone, Copy)]
pub struct Module<'a> {
    pub name: &'a str,
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub r: usize,
}

/// Mean and maximum of one angle over the modules where it is defined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub max: f64,
    /// The module with the largest angle (the first one on a tie), e.g. `layers.15.down_proj`.
    pub argmax: String,
    /// Modules the angle is defined for (the mean is over these).
    pub n: usize,
}

/// The rotation of all modules since the previous snapshot, as logged in `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The step of the snapshot compared with (0: the adapters before the first update).
    pub since_step: usize,
    /// `None` (null) where no module has the angle defined (every B zero, as at step 0).
    pub b_deg: Option<Stat>,
    pub dw_deg: Option<Stat>,
}

/// Per-module angles since `since_step`.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub since_step: usize,
    pub modules: Vec<(String, Angles)>,
}

impl Rotation {
    pub fn summary(&self) -> Summary {
        let stat = |f: &dyn Fn(&Angles) -> Option<f64>| -> Option<Stat> {
            let mut best: Option<(f64, &str)> = None;
            let (mut sum, mut n) = (0f64, 0usize);
            for (name, a) in &self.modules {
                if let Some(x) = f(a) {
                    sum += x;
                    n += 1;
                    if best.is_none_or(|(m, _)| x > m) {
                        best = Some((x, name));
                    }
                }
            }
            best.map(|(max, name)| Stat { mean: sum / n as f64, max, argmax: name.to_string(), n })
        };
        Summary { since_step: self.since_step, b_deg: stat(&|a| a.b_deg), dw_deg: stat(&|a| a.dw_deg) }
    }
}

/// Keeps the previous snapshot (prepared) and measures each new one against it.
///
/// ```
/// use emlab_train::rotation::{Module, Tracker};
/// let a = [1.0f32, 0.0];
/// let m = |b: &'static [f32]| vec![Module { name: "layers.0.down_proj", a: &a, b, r: 1 }];
/// let mut t = Tracker::new(0, &m(&[0.0, 0.0]))?;        // step 0: B = 0
/// assert_eq!(t.observe(1, &m(&[1.0, 0.0]))?.summary().b_deg, None);
/// let s = t.observe(2, &m(&[0.0, 2.0]))?.summary();   // B turned by 90 degrees
/// assert_eq!((s.since_step, s.b_deg.unwrap().max), (1, 90.0));
/// # Ok::<(), emlab_train::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Tracker {
    step: usize,
    names: Vec<String>,
    prev: Vec<Prepared>,
}

fn prepare_all(modules: &[Module<'_>]) -> Result<Vec<Prepared>> {
    // One module per task, each computed serially: the same numbers on any number of threads.
    modules.par_iter().map(|m| Prepared::new(m.a, m.b, m.r).map_err(|e| Error::Invalid(format!("{}: {e}", m.name)))).collect()
}

impl Tracker {
    /// Starts from the snapshot of `step`.
    pub fn new(step: usize, modules: &[Module<'_>]) -> Result<Self> {
        Ok(Tracker { step, names: modules.iter().map(|m| m.name.to_string()).collect(), prev: prepare_all(modules)? })
    }

    /// The step of the snapshot held.
    pub fn since_step(&self) -> usize {
        self.step
    }

    /// The rotation from the held snapshot to this one (same modules, same order), which then
    /// becomes the held snapshot.
    pub fn observe(&mut self, step: usize, modules: &[Module<'_>]) -> Result<Rotation> {
        let names: Vec<&str> = modules.iter().map(|m| m.name).collect();
        if names != self.names.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(Error::Invalid(format!("rotation: step {step} has other adapter modules than step {}", self.step)));
        }
        let next = prepare_all(modules)?;
        let angles = self
            .prev
            .par_iter()
            .zip(&next)
            .zip(&self.names)
            .map(|((p0, p1), name)| p0.angles_to(p1).map(|a| (name.clone(), a)).map_err(|e| Error::Invalid(format!("{name}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let rot = Rotation { since_step: self.step, modules: angles };
        self.prev = next;
        self.step = step;
        Ok(rot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn close(a: Option<f64>, want: f64, tol: f64) {
        let a = a.expect("angle defined");
        assert!((a - want).abs() < tol, "got {a}, want {want}");
    }

    /// Column-major helper: B `[out, r]` row-major from its columns.
    fn from_cols(cols: &[Vec<f64>]) -> Vec<f32> {
        let (r, out) = (cols.len(), cols[0].len());
        let mut b = vec![0f32; out * r];
        for (j, c) in cols.iter().enumerate() {
            for (o, &x) in c.iter().enumerate() {
                b[o * r + j] = x as f32;
            }
        }
        b
    }

    #[test]
    fn a_rank1_b_turned_by_30_degrees_reads_30_and_a_flip_reads_180() {
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let a = [0.5f32, -1.0, 2.0];
        // Scaling either vector changes nothing.
        let got = angles(&a, &[1.0, 0.0], &a, &[3.0 * c as f32, 3.0 * s as f32], 1).unwrap();
        close(got.b_deg, 30.0, 1e-5);
        close(got.dw_deg, 30.0, 1e-5);
        // B and A both flip: B turned 180 degrees, ΔW = B A did not move.
        let neg: Vec<f32> = a.iter().map(|x| -x).collect();
        let got = angles(&a, &[1.0, 2.0], &neg, &[-1.0, -2.0], 1).unwrap();
        close(got.b_deg, 180.0, 1e-9);
        close(got.dw_deg, 0.0, 1e-5);
        // B stays, A turns by 90 degrees (orthogonal rows): ΔW turns by 90.
        let got = angles(&[1.0, 0.0], &[1.0, 1.0], &[0.0, 1.0], &[1.0, 1.0], 1).unwrap();
        close(got.b_deg, 0.0, 1e-12);
        close(got.dw_deg, 90.0, 1e-9);
    }

    #[test]
    fn tiny_rotations_are_resolved() {
        // 1e-4 degrees between two vectors: acos of the cosine would lose ~half the digits.
        let t = 1e-4f64.to_radians();
        let b0 = [1.0f32, 0.0];
        let b1 = [t.cos() as f32, t.sin() as f32];
        let want = (b1[1] as f64).atan2(b1[0] as f64).to_degrees(); // the f32 vectors' own angle
        close(angles(&[1.0], &b0, &[1.0], &b1, 1).unwrap().b_deg, want, 1e-12);
    }

    #[test]
    fn rank2_principal_angles_match_the_hand_computed_ones() {
        // span(B0) = span(e1, e2); span(B1) = span(cos20 e1 + sin20 e3, cos50 e2 + sin50 e4):
        // principal angles 20 and 50 degrees; the largest is 50. B0 and B1 are given in mixed,
        // non-orthogonal bases of those planes (the column space is what counts).
        let (c20, s20) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
        let (c50, s50) = (50f64.to_radians().cos(), 50f64.to_radians().sin());
        let u1 = [c20, 0.0, s20, 0.0];
        let u2 = [0.0, c50, 0.0, s50];
        let b0 = from_cols(&[vec![2.0, 1.0, 0.0, 0.0], vec![1.0, 3.0, 0.0, 0.0]]);
        let mix = |x: f64, y: f64| -> Vec<f64> { u1.iter().zip(&u2).map(|(a, b)| x * a + y * b).collect() };
        let b1 = from_cols(&[mix(1.0, 0.5), mix(-2.0, 1.0)]);
        let a = [1.0f32, 0.0, 0.0, 1.0]; // A [2, 2]
        close(angles(&a, &b0, &a, &b1, 2).unwrap().b_deg, 50.0, 1e-5);
        // Same plane, other basis: 0 degrees.
        let b0b = from_cols(&[vec![1.0, -1.0, 0.0, 0.0], vec![0.0, 5.0, 0.0, 0.0]]);
        close(angles(&a, &b0, &a, &b0b, 2).unwrap().b_deg, 0.0, 1e-5);
        // One shared direction, the other turned 90 degrees: the largest angle is 90.
        let b1c = from_cols(&[vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 1.0, 0.0]]);
        close(angles(&a, &b0, &a, &b1c, 2).unwrap().b_deg, 90.0, 1e-6);
    }

    #[test]
    fn b_of_another_rank_reads_90_and_a_zero_b_reads_none() {
        let a = [1.0f32, 0.0, 0.0, 1.0];
        let full = from_cols(&[vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]);
        let rank1 = from_cols(&[vec![1.0, 0.0, 0.0], vec![2.0, 0.0, 0.0]]);
        close(angles(&a, &full, &a, &rank1, 2).unwrap().b_deg, 90.0, 1e-12);
        let zero = vec![0f32; 6];
        let got = angles(&a, &zero, &a, &full, 2).unwrap();
        assert_eq!(got, Angles { b_deg: None, dw_deg: None });
        // A zero A makes ΔW zero while B keeps its direction.
        let got = angles(&[0.0; 4], &full, &a, &full, 2).unwrap();
        assert_eq!(got.dw_deg, None);
        close(got.b_deg, 0.0, 1e-12);
        // ΔW = B A = 0 with B, A non-zero (B's column 2 meets A's row 1 only).
        let b = from_cols(&[vec![0.0, 0.0, 0.0], vec![1.0, 2.0, 0.0]]);
        let a_row0 = [1.0f32, 1.0, 0.0, 0.0];
        assert_eq!(angles(&a_row0, &b, &a, &full, 2).unwrap().dw_deg, None);
        // NaN is never reported.
        assert_eq!(angles(&a, &full, &a, &[f32::NAN, 0.0, 0.0, 1.0, 0.0, 0.0], 2).unwrap(), Angles { b_deg: None, dw_deg: None });
    }

    #[test]
    fn the_gram_matrix_dw_cosine_equals_the_brute_force_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(r, inp, out) in &[(1, 5, 4), (3, 7, 5), (4, 33, 19), (6, 6, 40)] {
            let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
            let (a0, b0, a1, b1) = (draw(r * inp), draw(out * r), draw(r * inp), draw(out * r));
            let prod = |a: &[f32], b: &[f32]| -> Vec<f64> {
                let mut w = vec![0f64; out * inp];
                for o in 0..out {
                    for i in 0..inp {
                        w[o * inp + i] = (0..r).map(|k| b[o * r + k] as f64 * a[k * inp + i] as f64).sum();
                    }
                }
                w
            };
            let (w0, w1) = (prod(&a0, &b0), prod(&a1, &b1));
            let ip: f64 = w0.iter().zip(&w1).map(|(x, y)| x * y).sum();
            let n = |w: &[f64]| w.iter().map(|x| x * x).sum::<f64>().sqrt();
            let want = (ip / (n(&w0) * n(&w1))).acos().to_degrees();
            close(angles(&a0, &b0, &a1, &b1, r).unwrap().dw_deg, want, 1e-9);
        }
    }

    #[test]
    fn principal_angles_agree_with_the_2x2_closed_form_on_random_planes() {
        // For r = 2, cos² of the principal angles are the eigenvalues of Mᵀ M (2 x 2, closed
        // form) with M = Q0ᵀ Q1 from plain Gram-Schmidt: an independent route.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for out in [3usize, 8, 50] {
            let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
            let (b0, b1) = (draw(out * 2), draw(out * 2));
            let gs = |b: &[f32]| -> [Vec<f64>; 2] {
                let c0: Vec<f64> = (0..out).map(|o| b[o * 2] as f64).collect();
                let c1: Vec<f64> = (0..out).map(|o| b[o * 2 + 1] as f64).collect();
                let n0 = c0.iter().map(|x| x * x).sum::<f64>().sqrt();
                let q0: Vec<f64> = c0.iter().map(|x| x / n0).collect();
                let p: f64 = q0.iter().zip(&c1).map(|(x, y)| x * y).sum();
                let v: Vec<f64> = c1.iter().zip(&q0).map(|(y, x)| y - p * x).collect();
                let n1 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                [q0, v.iter().map(|x| x / n1).collect()]
            };
            let (q0, q1) = (gs(&b0), gs(&b1));
            let d = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
            let m = [[d(&q0[0], &q1[0]), d(&q0[0], &q1[1])], [d(&q0[1], &q1[0]), d(&q0[1], &q1[1])]];
            let (tr, det) = (m.iter().flatten().map(|x| x * x).sum::<f64>(), m[0][0] * m[1][1] - m[0][1] * m[1][0]);
            let smin2 = (tr - (tr * tr - 4.0 * det * det).max(0.0).sqrt()) / 2.0;
            let want = smin2.max(0.0).sqrt().min(1.0).acos().to_degrees();
            let a = [1.0f32, 0.0, 0.0, 1.0];
            close(angles(&a, &b0, &a, &b1, 2).unwrap().b_deg, want, 1e-7);
        }
    }

    #[test]
    fn min_eigenvalue_of_a_known_spectrum() {
        // Q diag(0.3, 0.9, 0.5, 0.7, 0.1) Qᵀ for a Householder reflection Q.
        let n = 5;
        let lam = [0.3, 0.9, 0.5, 0.7, 0.1];
        let u = [1.0, -2.0, 0.5, 3.0, 1.0];
        let uu: f64 = u.iter().map(|x| x * x).sum();
        let q = |i: usize, j: usize| (if i == j { 1.0 } else { 0.0 }) - 2.0 * u[i] * u[j] / uu;
        let mut s = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] = (0..n).map(|k| q(i, k) * lam[k] * q(j, k)).sum();
            }
        }
        assert!((min_eigenvalue(&mut s, n) - 0.1).abs() < 1e-14);
    }

    #[test]
    fn bad_shapes_are_one_line_errors() {
        let e = angles(&[1.0, 2.0, 3.0], &[1.0, 2.0], &[1.0, 2.0, 3.0], &[1.0, 2.0], 2).unwrap_err().to_string();
        assert!(e.contains("r = 2") && !e.contains('\n'), "{e}");
        let e = angles(&[1.0, 2.0], &[1.0, 2.0], &[1.0, 2.0, 3.0, 4.0], &[1.0], 1).unwrap_err().to_string();
        assert!(e.contains("differ in shape"), "{e}");
    }

    #[test]
    fn the_summary_takes_mean_max_and_argmax_over_defined_modules() {
        let a = |b, d| Angles { b_deg: b, dw_deg: d };
        let rot = Rotation {
            since_step: 4,
            modules: vec![
                ("layers.0.q_proj".into(), a(Some(1.0), None)),
                ("layers.0.down_proj".into(), a(None, None)),
                ("layers.1.q_proj".into(), a(Some(5.0), None)),
                ("layers.1.down_proj".into(), a(Some(5.0), None)),
            ],
        };
        let s = rot.summary();
        assert_eq!(s.b_deg, Some(Stat { mean: 11.0 / 3.0, max: 5.0, argmax: "layers.1.q_proj".into(), n: 3 }));
        assert_eq!(s.dw_deg, None);
        let js = serde_json::to_value(&s).unwrap();
        assert_eq!(js["dw_deg"], serde_json::Value::Null);
        assert_eq!(js["since_step"], 4);
    }
}
