//! AdamW with explicit f32 moments (so they can be checkpointed and restored bit for bit), the
//! learning-rate schedules, and global gradient-norm clipping.
//!
//! ```
//! use emlab_train::optim::{lr_at, AdamW};
//! use emlab_train::Schedule;
//! // HF's schedule: step k (0-based) of a 5-step warm-up uses lr * k / 5, then decays linearly.
//! assert_eq!(lr_at(1.0, Schedule::Linear, 5, 15, 0), 0.0);
//! assert_eq!(lr_at(1.0, Schedule::Linear, 5, 15, 5), 1.0);
//! assert_eq!(lr_at(1.0, Schedule::Linear, 5, 15, 10), 0.5);
//! let mut opt = AdamW::new(&[2], 0.9, 0.999, 1e-8, 0.0);
//! let mut p = vec![vec![1.0f32, -1.0]];
//! opt.step(&mut p, &[vec![0.5, -2.0]], 0.1);
//! // First Adam step moves each coordinate by lr * sign(g) (bias-corrected m / sqrt(v) = ±1).
//! assert!((p[0][0] - 0.9).abs() < 1e-6 && (p[0][1] + 0.9).abs() < 1e-6);
//! ```

use crate::config::Schedule;
use rayon::prelude::*;

/// Learning rate of optimizer step `step` (0-based) of `total`, as transformers'
/// `get_{linear,cosine,constant}_schedule_with_warmup` compute it.
pub fn lr_at(base: f64, schedule: Schedule, warmup: usize, total: usize, step: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * ((total as f64 - step as f64) / span).max(0.0),
        Schedule::Cosine => base * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

/// AdamW as torch.optim.AdamW computes it (decoupled weight decay `p -= lr * wd * p`, then the
/// bias-corrected Adam update), on host f32 buffers.
/// Not `Clone`: a clone would share the device moments, which [`AdamW::step_cuda`] updates in
/// place.
#[derive(Debug)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates done so far (bias correction uses `t + 1` for the next one).
    pub t: u64,
    /// First moments, one buffer per parameter.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
    /// Device-side moments `(m, v)`, each flat `[N]`, once [`AdamW::step_flat`] has run; while
    /// set, they (not `m` / `v`) are the current state.
    dev: Option<(candle_core::Tensor, candle_core::Tensor)>,
}

impl AdamW {
    pub fn new(sizes: &[usize], beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            t: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            dev: None,
        }
    }

    /// One update of every parameter with its gradient.
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        self.t += 1;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = self.eps as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        // Element-wise and independent: parallel over chunks gives the sequential loop's bits
        // (a LoRA of 8.7M parameters took ~30 ms on one core; it runs between GPU steps).
        const CHUNK: usize = 1 << 14;
        // (param, grad, m, v) chunks.
        type Chunk<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);
        let work: Vec<Chunk> = params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
            .flat_map(|(((p, g), m), v)| {
                p.chunks_mut(CHUNK)
                    .zip(g.chunks(CHUNK))
                    .zip(m.chunks_mut(CHUNK))
                    .zip(v.chunks_mut(CHUNK))
                    .map(|(((p, g), m), v)| (p, g, m, v))
            })
            .collect();
        work.into_par_iter().for_each(|(p, g, m, v)| {
            for i in 0..p.len() {
                let gi = g[i];
                p[i] *= decay;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
    }
}

/// The same AdamW update run on the device, over all parameters flattened into one f32 tensor
/// (moments likewise): about a dozen element-wise kernels a step, whatever the number of adapter
/// tensors. On a GPU this replaces the host round trip (gradients down, optimizer on the CPU,
/// adapters up: 195 of 544 ms of a SmolLM2 step on an H100).
///
/// The moments live on the device; [`AdamW::pull_moments`] copies them into the host buffers
/// (for a checkpoint) and [`AdamW::push_moments`] sends host buffers (after a resume).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use emlab_train::optim::AdamW;
/// let dev = Device::Cpu;
/// let (mut host, mut on_dev) = (AdamW::new(&[2], 0.9, 0.999, 1e-8, 0.01), AdamW::new(&[2], 0.9, 0.999, 1e-8, 0.01));
/// let mut p = vec![vec![1.0f32, -1.0]];
/// let g = vec![vec![0.5f32, -2.0]];
/// host.step(&mut p, &g, 0.1);
/// let pd = Tensor::new(&[1.0f32, -1.0], &dev)?;
/// let pd = on_dev.step_flat(&pd, &Tensor::new(&[0.5f32, -2.0], &dev)?, 0.1)?;
/// assert_eq!(pd.to_vec1::<f32>()?, p[0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
impl AdamW {
    /// One update of the flat parameter tensor `p` `[N]` with gradient `g` `[N]` (f32, same
    /// device); returns the new parameters. Same arithmetic as [`AdamW::step`], in the same order.
    pub fn step_flat(&mut self, p: &candle_core::Tensor, g: &candle_core::Tensor, lr: f64) -> candle_core::Result<candle_core::Tensor> {
        if self.dev.is_none() {
            self.push_moments(p.device())?;
        }
        let Consts { b1, b2, step_size, bc2_sqrt, eps, decay } = self.next_consts(lr);
        let (m, v) = self.dev.take().expect("moments pushed above");
        // Scalar multiplies are exact as `affine`; divisions go through a true division (candle's
        // `tensor / f64` multiplies by the reciprocal, which rounds differently).
        let p = (p * decay as f64)?;
        let m = ((m * b1 as f64)? + (g * (1.0 - b1) as f64)?)?;
        let v = ((v * b2 as f64)? + ((g * (1.0 - b2) as f64)? * g)?)?;
        let bc2_sqrt = candle_core::Tensor::new(bc2_sqrt, p.device())?;
        let denom = (v.sqrt()?.broadcast_div(&bc2_sqrt)? + eps as f64)?;
        let p = (p - ((&m * step_size as f64)? / denom)?)?;
        self.dev = Some((m, v));
        Ok(p)
    }

    /// Counts the update and returns its constants, rounded to f32 as the host loop rounds them.
    fn next_consts(&mut self, lr: f64) -> Consts {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        Consts {
            b1: self.beta1 as f32,
            b2: self.beta2 as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: self.eps as f32,
            decay: (1.0 - lr * self.weight_decay) as f32,
        }
    }

    /// One update of CUDA tensors in place ([`crate::cuda_optim`]): `params` and `grads` in
    /// parameter order (contiguous f32), gradients scaled by `gscale` first (clipping). Returns
    /// the sum of squares of each updated tensor. The formula and constants are the host loop's;
    /// the last bits are not (nvcc fuses multiply-adds, and the sums use float atomics).
    #[cfg(feature = "cuda")]
    pub fn step_cuda(
        &mut self,
        params: &[candle_core::Tensor],
        grads: &[candle_core::Tensor],
        gscale: f32,
        lr: f64,
    ) -> candle_core::Result<Vec<f64>> {
        let Some(first) = params.first() else { return Ok(Vec::new()) };
        if self.dev.is_none() {
            self.push_moments(first.device())?;
        }
        let c = self.next_consts(lr);
        let (m, v) = self.dev.as_ref().expect("moments pushed above");
        crate::cuda_optim::adamw(params, grads, m, v, gscale, &c)
    }

    /// Sends the host moments to `dev` (flattened in parameter order): the state
    /// [`AdamW::step_flat`] continues from.
    pub fn push_moments(&mut self, dev: &candle_core::Device) -> candle_core::Result<()> {
        self.dev = Some((flat_tensor(&self.m, dev)?, flat_tensor(&self.v, dev)?));
        Ok(())
    }

    /// Copies the device moments (if any) into the host buffers `m` and `v`.
    pub fn pull_moments(&mut self) -> candle_core::Result<()> {
        let Some((m, v)) = &self.dev else { return Ok(()) };
        split_flat(m, &mut self.m)?;
        split_flat(v, &mut self.v)
    }
}

/// The constants of one update (see [`AdamW::step`]).
pub(crate) struct Consts {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) step_size: f32,
    pub(crate) bc2_sqrt: f32,
    pub(crate) eps: f32,
    pub(crate) decay: f32,
}

/// Global L2 norm of all gradients (f64 accumulation). Per-tensor sums run in parallel and are
/// added in tensor order, so the result does not depend on the thread count.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    let parts: Vec<f64> = grads.par_iter().map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect();
    parts.iter().sum::<f64>().sqrt()
}

/// Scales gradients so their global norm is at most `max_norm` (torch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if let Some(coef) = clip_factor(norm, max_norm) {
        grads.par_iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    }
    norm
}

/// The factor torch's `clip_grad_norm_` scales gradients of global norm `norm` by, when it
/// clips (`max_norm > 0` and the factor below 1), rounded to f32 as every path applies it.
pub fn clip_factor(norm: f64, max_norm: f64) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (max_norm > 0.0 && coef < 1.0).then_some(coef as f32)
}

/// `bufs` concatenated into one f32 tensor `[sum of lengths]` on `dev` (one upload).
pub(crate) fn flat_tensor(bufs: &[Vec<f32>], dev: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
    let v: Vec<f32> = bufs.iter().flat_map(|x| x.iter().copied()).collect();
    let n = v.len();
    candle_core::Tensor::from_vec(v, n, dev)
}

/// The inverse of [`flat_tensor`]: one download of `flat`, split into `bufs` by their lengths.
pub(crate) fn split_flat(flat: &candle_core::Tensor, bufs: &mut [Vec<f32>]) -> candle_core::Result<()> {
    let flat = flat.to_vec1::<f32>()?;
    let mut rest = &flat[..];
    for b in bufs.iter_mut() {
        let (head, tail) = rest.split_at(b.len());
        b.copy_from_slice(head);
        rest = tail;
    }
    Ok(())
}
