//! The inference-side SAE: weights, `encode` / `decode` / `forward` on row-major
//! f32 batches, and folding an input-normalisation factor into the weights.
//!
//! ```
//! use emlab_sae::{Activation, Sae};
//! // A 2-latent TopK(k=1) SAE on d_in = 2 whose latents are the two axes.
//! let sae = Sae::from_parts(
//!     2, 2, Activation::TopK { k: 1 },
//!     vec![1.0, 0.0, 0.0, 1.0], // W_enc [d_in, d_sae] (SAELens layout)
//!     vec![1.0, 0.0, 0.0, 1.0], // W_dec [d_sae, d_in]
//!     vec![0.0; 2], vec![0.0; 2],
//! ).unwrap();
//! let x = [3.0, 1.0, 0.5, 2.0]; // two rows
//! assert_eq!(sae.forward(&x).unwrap(), vec![3.0, 0.0, 0.0, 2.0]);
//! ```
//!
//! Maths (SAELens conventions): `pre = (x - b_dec) @ W_enc + b_enc` (the `- b_dec`
//! only when `apply_b_dec_to_input`), `z = act(pre)`, `x_hat = z @ W_dec + b_dec`.
//! Activations: TopK keeps the k largest pre-activations per row then applies
//! ReLU; JumpReLU keeps `pre` where `pre > max(threshold, 0)`; ReLU is `max(pre, 0)`.

use crate::error::{Result, SaeError};
use crate::kernels::{axpy, encoder_pre, top_k};
use rayon::prelude::*;

/// The activation function of an inference SAE (what SAELens calls the architecture).
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    /// SAELens "topk": per row, the k largest pre-activations, then ReLU.
    TopK { k: usize },
    /// SAELens "jumprelu": `pre * 1[pre > max(threshold_j, 0)]`, per-latent threshold.
    /// BatchTopK SAEs are stored this way for inference.
    JumpReLU { threshold: Vec<f32> },
    /// SAELens "standard": ReLU (trained with an L1 penalty).
    ReLU,
}

impl Activation {
    /// SAELens `architecture` string.
    pub fn architecture(&self) -> &'static str {
        match self {
            Activation::TopK { .. } => "topk",
            Activation::JumpReLU { .. } => "jumprelu",
            Activation::ReLU => "standard",
        }
    }
}

/// Where an SAE reads and what it was trained on (SAELens `metadata`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaeMeta {
    /// TransformerLens hook name, e.g. `blocks.15.hook_resid_post`.
    pub hook_name: Option<String>,
    pub model_name: Option<String>,
    /// Any other metadata keys, preserved through load -> save.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A sparse autoencoder ready for inference on raw activations.
#[derive(Debug, Clone, PartialEq)]
pub struct Sae {
    pub d_in: usize,
    pub d_sae: usize,
    pub activation: Activation,
    /// SAELens `apply_b_dec_to_input` (true for every SAE emlab trains).
    pub apply_b_dec_to_input: bool,
    /// Encoder stored transposed, [d_sae, d_in]: row j is latent j's encoder vector.
    pub(crate) w_enc_t: Vec<f32>,
    /// Decoder [d_sae, d_in]: row j is latent j's direction in activation space.
    pub w_dec: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub b_dec: Vec<f32>,
    pub meta: SaeMeta,
}

/// Sparse codes in CSR form: row i's active latents are
/// `indices[indptr[i]..indptr[i+1]]` with activations `values[..]` (all > 0).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseCodes {
    pub n: usize,
    pub d_sae: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseCodes {
    /// Row i as (latent indices, activations).
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }
    /// Mean number of active latents per row (L0).
    pub fn l0(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.indices.len() as f64 / self.n as f64
        }
    }
    /// Dense [n, d_sae] matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.d_sae];
        for i in 0..self.n {
            let (idx, val) = self.row(i);
            for (j, v) in idx.iter().zip(val) {
                out[i * self.d_sae + *j as usize] = *v;
            }
        }
        out
    }
    /// Build from per-row (indices, values) lists, dropping non-positive values.
    pub(crate) fn from_rows(d_sae: usize, rows: Vec<(Vec<u32>, Vec<f32>)>) -> Self {
        let mut c = SparseCodes { n: rows.len(), d_sae, indptr: vec![0], ..Default::default() };
        for (idx, val) in rows {
            for (j, v) in idx.into_iter().zip(val) {
                if v > 0.0 {
                    c.indices.push(j);
                    c.values.push(v);
                }
            }
            c.indptr.push(c.indices.len());
        }
        c
    }
}

/// Rows per encoder-GEMM block: big enough that the GEMM streams W_enc
/// efficiently, small enough that a block's pre-activations (rows x d_sae f32)
/// stay a few MB per thread instead of materialising [n, d_sae].
pub(crate) fn chunk_rows(n: usize, m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // cap the per-thread block at ~8 MB of pre-activations
    let cap = ((8usize << 20) / 4 / m.max(1)).clamp(8, 256);
    let even = n.div_ceil(threads * 2).max(8);
    cap.min(even)
}

/// Runs the encoder GEMM over row blocks of `xc` [n, d] in parallel and hands each
/// block's pre-activations [rows, m] to `f(row0, rows, pre)`. Results in row order.
pub(crate) fn map_pre_chunks<R, F>(xc: &[f32], n: usize, d: usize, w_enc_t: &[f32], b_enc: &[f32], f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, usize, &[f32]) -> R + Sync,
{
    let m = b_enc.len();
    let cr = chunk_rows(n, m);
    let n_chunks = n.div_ceil(cr);
    let single = n_chunks <= 1;
    (0..n_chunks)
        .into_par_iter()
        .map_init(Vec::<f32>::new, |buf, c| {
            let r0 = c * cr;
            let rows = cr.min(n - r0);
            buf.resize(rows * m, 0.0);
            encoder_pre(&xc[r0 * d..(r0 + rows) * d], rows, d, w_enc_t, m, b_enc, buf, single);
            f(r0, rows, buf)
        })
        .collect()
}

impl Sae {
    /// Builds an SAE from SAELens-layout weights: `w_enc` [d_in, d_sae],
    /// `w_dec` [d_sae, d_in], `b_enc` [d_sae], `b_dec` [d_in].
    pub fn from_parts(
        d_in: usize,
        d_sae: usize,
        activation: Activation,
        w_enc: Vec<f32>,
        w_dec: Vec<f32>,
        b_enc: Vec<f32>,
        b_dec: Vec<f32>,
    ) -> Result<Self> {
        let chk = |name: &str, got: usize, want: usize, shape: String| {
            if got != want {
                Err(SaeError::Shape(format!("{name}: expected {shape} = {want} values, got {got}")))
            } else {
                Ok(())
            }
        };
        if d_in == 0 || d_sae == 0 {
            return Err(SaeError::Config(format!("d_in ({d_in}) and d_sae ({d_sae}) must be > 0")));
        }
        chk("W_enc", w_enc.len(), d_in * d_sae, format!("[{d_in}, {d_sae}]"))?;
        chk("W_dec", w_dec.len(), d_sae * d_in, format!("[{d_sae}, {d_in}]"))?;
        chk("b_enc", b_enc.len(), d_sae, format!("[{d_sae}]"))?;
        chk("b_dec", b_dec.len(), d_in, format!("[{d_in}]"))?;
        match &activation {
            Activation::TopK { k } if *k == 0 || *k > d_sae => return Err(SaeError::Config(format!("k = {k} must be in 1..={d_sae}"))),
            Activation::JumpReLU { threshold } => chk("threshold", threshold.len(), d_sae, format!("[{d_sae}]"))?,
            _ => {}
        }
        Ok(Sae {
            d_in,
            d_sae,
            activation,
            apply_b_dec_to_input: true,
            w_enc_t: transpose(&w_enc, d_in, d_sae),
            w_dec,
            b_enc,
            b_dec,
            meta: SaeMeta::default(),
        })
    }

    /// `W_enc` in the SAELens layout [d_in, d_sae].
    pub fn w_enc(&self) -> Vec<f32> {
        transpose(&self.w_enc_t, self.d_sae, self.d_in)
    }

    /// Encoder row of latent `j` (= column j of SAELens' `W_enc`), length d_in.
    pub fn encoder_row(&self, j: usize) -> &[f32] {
        &self.w_enc_t[j * self.d_in..(j + 1) * self.d_in]
    }

    /// Decoder row of latent `j` (its direction in activation space), length d_in.
    pub fn decoder_row(&self, j: usize) -> &[f32] {
        &self.w_dec[j * self.d_in..(j + 1) * self.d_in]
    }

    pub(crate) fn rows_of(&self, x: &[f32]) -> Result<usize> {
        if !x.len().is_multiple_of(self.d_in) {
            return Err(SaeError::Shape(format!("input has {} values, not a multiple of d_in = {}", x.len(), self.d_in)));
        }
        Ok(x.len() / self.d_in)
    }

    fn centered(&self, x: &[f32]) -> Vec<f32> {
        let mut xc = x.to_vec();
        if self.apply_b_dec_to_input {
            xc.par_chunks_mut(self.d_in).for_each(|r| {
                for (v, b) in r.iter_mut().zip(&self.b_dec) {
                    *v -= b;
                }
            });
        }
        xc
    }

    /// Pre-activations `(x - b_dec) @ W_enc + b_enc`, dense [n, d_sae].
    pub fn pre_activations(&self, x: &[f32]) -> Result<Vec<f32>> {
        let n = self.rows_of(x)?;
        let xc = self.centered(x);
        let blocks = map_pre_chunks(&xc, n, self.d_in, &self.w_enc_t, &self.b_enc, |_, _, pre| pre.to_vec());
        Ok(blocks.concat())
    }

    /// Sparse latent activations of a row-major batch `x` [n, d_in].
    pub fn encode_sparse(&self, x: &[f32]) -> Result<SparseCodes> {
        let n = self.rows_of(x)?;
        let xc = self.centered(x);
        let m = self.d_sae;
        let blocks = map_pre_chunks(&xc, n, self.d_in, &self.w_enc_t, &self.b_enc, |_, rows, pre| {
            (0..rows).map(|r| select_row(&self.activation, &pre[r * m..(r + 1) * m])).collect::<Vec<_>>()
        });
        Ok(SparseCodes::from_rows(m, blocks.into_iter().flatten().collect()))
    }

    /// Dense latent activations [n, d_sae].
    pub fn encode(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self.encode_sparse(x)?.to_dense())
    }

    /// Reconstruction from sparse codes, [n, d_in].
    pub fn decode_sparse(&self, codes: &SparseCodes) -> Result<Vec<f32>> {
        if codes.d_sae != self.d_sae {
            return Err(SaeError::Shape(format!("codes have d_sae = {}, SAE has {}", codes.d_sae, self.d_sae)));
        }
        if let Some(&j) = codes.indices.iter().find(|&&j| j as usize >= self.d_sae) {
            return Err(SaeError::Shape(format!("latent index {j} out of range (d_sae = {})", self.d_sae)));
        }
        let d = self.d_in;
        let mut out = vec![0f32; codes.n * d];
        out.par_chunks_mut(d).enumerate().for_each(|(i, o)| {
            o.copy_from_slice(&self.b_dec);
            let (idx, val) = codes.row(i);
            for (j, v) in idx.iter().zip(val) {
                axpy(*v, self.decoder_row(*j as usize), o);
            }
        });
        Ok(out)
    }

    /// Reconstruction from dense codes [n, d_sae]; only non-zero entries cost work.
    pub fn decode(&self, z: &[f32]) -> Result<Vec<f32>> {
        if !z.len().is_multiple_of(self.d_sae) {
            return Err(SaeError::Shape(format!("codes have {} values, not a multiple of d_sae = {}", z.len(), self.d_sae)));
        }
        let d = self.d_in;
        let m = self.d_sae;
        let mut out = vec![0f32; z.len() / m * d];
        out.par_chunks_mut(d).zip(z.par_chunks(m)).for_each(|(o, zr)| {
            o.copy_from_slice(&self.b_dec);
            for (j, &v) in zr.iter().enumerate() {
                if v != 0.0 {
                    axpy(v, self.decoder_row(j), o);
                }
            }
        });
        Ok(out)
    }

    /// `decode(encode(x))`, [n, d_in].
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let c = self.encode_sparse(x)?;
        self.decode_sparse(&c)
    }

    /// Folds an input scale into the weights: if this SAE was trained on `s * x`,
    /// the returned SAE on raw `x` yields the same latents and `x_hat / s`
    /// (SAELens `fold_activation_norm_scaling_factor`: W_enc *= s, W_dec /= s, b_dec /= s;
    /// b_enc and JumpReLU thresholds are unchanged because pre-activations are).
    pub fn fold_input_scale(&mut self, s: f32) -> Result<()> {
        if !(s.is_finite() && s > 0.0) {
            return Err(SaeError::Config(format!("normalisation scale must be finite and > 0, got {s}")));
        }
        self.w_enc_t.par_iter_mut().for_each(|w| *w *= s);
        self.w_dec.par_iter_mut().for_each(|w| *w /= s);
        self.b_dec.iter_mut().for_each(|w| *w /= s);
        Ok(())
    }
}

/// Active (latent, value) pairs of one row of pre-activations.
pub(crate) fn select_row(act: &Activation, pre: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let (mut idx, mut val) = (Vec::new(), Vec::new());
    match act {
        Activation::TopK { k } => {
            top_k(pre, *k, &mut idx, &mut val);
            // ReLU after the selection (SAELens TopK); zeros are dropped later.
        }
        Activation::JumpReLU { threshold } => {
            for (j, (&p, &t)) in pre.iter().zip(threshold).enumerate() {
                if p > t.max(0.0) {
                    idx.push(j as u32);
                    val.push(p);
                }
            }
        }
        Activation::ReLU => {
            for (j, &p) in pre.iter().enumerate() {
                if p > 0.0 {
                    idx.push(j as u32);
                    val.push(p);
                }
            }
        }
    }
    (idx, val)
}

pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    // blocked so both sides stay in cache for the 576 x 16384 case
    const B: usize = 64;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    t[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Sae {
        // d_in 3, d_sae 4
        let w_enc = vec![1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0, -1.0];
        let w_dec = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.6, 0.8, 0.0];
        Sae::from_parts(3, 4, Activation::ReLU, w_enc, w_dec, vec![0.0, 0.0, -0.5, 0.1], vec![0.1, 0.2, 0.3]).unwrap()
    }

    #[test]
    fn encode_decode_by_hand() {
        let sae = tiny();
        let x = [1.1, 2.2, 0.3];
        // xc = [1, 2, 0]; pre = [1, 2, -0.5, 0.5+1+0+0.1 = 1.6]
        let z = sae.encode(&x).unwrap();
        assert_eq!(z, vec![1.0, 2.0, 0.0, 1.6]);
        let xh = sae.decode(&z).unwrap();
        let want = [0.1 + 1.0 + 1.6 * 0.6, 0.2 + 2.0 + 1.6 * 0.8, 0.3];
        for (a, b) in xh.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        let mut topk = sae.clone();
        topk.activation = Activation::TopK { k: 1 };
        assert_eq!(topk.encode(&x).unwrap(), vec![0.0, 2.0, 0.0, 0.0]);
        let mut jr = sae.clone();
        jr.activation = Activation::JumpReLU { threshold: vec![1.5, 1.5, 0.0, 1.5] };
        assert_eq!(jr.encode(&x).unwrap(), vec![0.0, 2.0, 0.0, 1.6]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let sae = tiny();
        assert!(sae.encode(&[1.0, 2.0]).unwrap_err().to_string().contains("d_in = 3"));
        assert!(Sae::from_parts(3, 4, Activation::ReLU, vec![0.0; 11], vec![0.0; 12], vec![0.0; 4], vec![0.0; 3])
            .unwrap_err()
            .to_string()
            .contains("W_enc"));
    }
}
