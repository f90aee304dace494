//! The training loop: assistant-only masked loss, gradient accumulation, AdamW, schedule,
//! clipping, metrics, checkpoints, exact resume, a per-step callback and a stop flag.
//!
//! Resuming is exact: the data order is a pure function of `(seed, epoch)`, the dropout RNG's
//! position, the adapter, the optimizer moments and the step are all in the checkpoint, so a
//! run killed at any point and resumed produces the same per-step losses as one that never
//! stopped (tested bit for bit).

use crate::adapter::{self, AdapterRef, PeftConfig};
use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::data::{fingerprint, make_batch, plan_epoch, Example};
use crate::kernels;
use crate::optim::{clip_factor, clip_grad_norm, lr_at, AdamW};
use crate::rotation;
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use emlab_model::{Forward, Logits, Model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What one optimizer step did (also the core of a `metrics.jsonl` line).
#[derive(Debug, Clone, Serialize)]
pub struct StepInfo {
    /// Optimizer steps completed, counting this one (1-based).
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean cross-entropy over this step's assistant tokens (all micro-batches).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Input tokens (no padding) in this step.
    pub tokens: usize,
    /// Tokens the loss was computed on.
    pub trained_tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// What the per-step callback asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Write a checkpoint now and stop (resumable).
    Stop,
    /// Stop at once without writing anything, as if the process had been killed (tests use it
    /// to check that resume recovers from the last checkpoint).
    Abort,
}

/// Called after every optimizer step with the step's numbers and the model (adapters as
/// updated), e.g. to generate and score a few answers every K steps.
pub type StepCallback<'a> = Box<dyn FnMut(&StepInfo, &Model) -> Control + Send + 'a>;

/// How to run (as opposed to what to train, which is [`TrainConfig`]).
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// Continue from the newest checkpoint in the output folder.
    pub resume: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// When set (e.g. by a Ctrl-C handler), the run checkpoints after the current step and stops.
    pub stop: Option<Arc<AtomicBool>>,
    pub on_step: Option<StepCallback<'a>>,
    /// `base_model_name_or_path` written into adapter configs.
    pub base_model_name: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Optimizer steps completed in total (including before a resume).
    pub steps: usize,
    pub total_steps: usize,
    /// Stopped early (Ctrl-C, a callback's Stop/Abort); resumable from the last checkpoint.
    pub interrupted: bool,
    pub resumed_from: Option<usize>,
    /// Per-step losses of the steps run in this call.
    pub losses: Vec<f64>,
    pub final_eval_loss: Option<f64>,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    /// The final adapter (PEFT format), when the run completed.
    pub adapter_dir: Option<PathBuf>,
    pub last_checkpoint: Option<PathBuf>,
}

const DROPOUT_STREAM: u64 = 0xd40f_0075_eed5_0001;

/// `EMLAB_PROFILE=1`: each step's `metrics.jsonl` line gets `profile_s` (forward, backward,
/// device-side gradient gathering + norm (off the CPU), optimizer with clipping), the device synchronised at each boundary. Off by
/// default: the synchronisations cost overlap between host and device.
mod profile {
    use std::sync::Mutex;
    use std::time::Instant;
    static T: Mutex<(Option<Instant>, [f64; 4])> = Mutex::new((None, [0.0; 4]));
    pub fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("EMLAB_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
    }
    /// Starts timing phase boundaries (call at the start of a step).
    pub fn start() {
        if enabled() {
            *T.lock().unwrap_or_else(|e| e.into_inner()) = (Some(Instant::now()), [0.0; 4]);
        }
    }
    /// Ends phase `i` (0 forward, 1 backward, 2 gradient gathering + norm, 3 optimizer).
    pub fn mark(dev: &candle_core::Device, i: usize) {
        if !enabled() {
            return;
        }
        let _ = dev.synchronize();
        let mut t = T.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t0) = t.0 {
            t.1[i] += t0.elapsed().as_secs_f64();
        }
        t.0 = Some(Instant::now());
    }
    pub fn take() -> Option<[f64; 4]> {
        enabled().then(|| T.lock().unwrap_or_else(|e| e.into_inner()).1)
    }
}
const STACK: usize = 512 << 20;

/// Runs `f` on a thread with a large stack: candle's backward walks the graph recursively.
pub fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    // The caller's `ops::with_portable` is thread-local: carry it over to the training thread.
    let portable = emlab_model::ops::portable_forced();
    let f = move || if portable { emlab_model::ops::with_portable(f) } else { f() };
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("emlab-train".into())
            .stack_size(STACK)
            .spawn_scoped(s, f)
            .map_err(|e| Error::Invalid(format!("cannot start the training thread: {e}")))?;
        h.join().map_err(|p| {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Error::Invalid(format!("training thread panicked: {msg}"))
        })
    })
}

/// Trains adapters on tokenized examples. `out` receives `metrics.jsonl`, `checkpoints/` and
/// (when the run completes) `adapter/`. The model must not carry adapters yet: fresh ones are
/// attached from `cfg.lora` (or restored from the checkpoint when resuming).
pub fn train_examples(
    cfg: &TrainConfig,
    model: &mut Model,
    train: &[Example],
    eval: &[Example],
    pad: u32,
    out: &Path,
    opts: TrainOptions<'_>,
) -> Result<TrainSummary> {
    with_big_stack(move || run(cfg, model, train, eval, pad, out, opts))?
}

struct Params {
    ads: Vec<AdapterRef>,
    vars: Vec<Var>,
    keys: Vec<String>,
    host: Vec<Vec<f32>>,
    /// Indices into `vars` of each layer's adapter tensors.
    by_layer: Vec<Vec<usize>>,
    /// Off the CPU: gradients summed on the device until [`Params::flush`], so a step costs one
    /// device-to-host copy instead of one blocking copy per tensor and block (which stalls the
    /// GPU's queue every time).
    pending: std::cell::RefCell<Vec<Option<Tensor>>>,
    /// Per-tensor sums of squares of the adapters as the CUDA optimizer left them, when the host
    /// mirror `host` is not kept current ([`Params::norms`] reads these instead).
    sq: Option<Vec<f64>>,
}

impl Params {
    fn new(ads: Vec<AdapterRef>) -> Result<Self> {
        let mut vars = Vec::new();
        let mut keys = Vec::new();
        for a in &ads {
            vars.push(a.a.clone());
            keys.push(format!("{}.lora_A.weight", a.peft_prefix()));
            vars.push(a.b.clone());
            keys.push(format!("{}.lora_B.weight", a.peft_prefix()));
        }
        let host = vars.iter().map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<_>>()?;
        let n_layers = ads.iter().map(|a| a.layer + 1).max().unwrap_or(0);
        let mut by_layer = vec![Vec::new(); n_layers];
        for (i, a) in ads.iter().enumerate() {
            by_layer[a.layer].extend([2 * i, 2 * i + 1]);
        }
        let pending = std::cell::RefCell::new(vec![None; vars.len()]);
        Ok(Params { ads, vars, keys, host, by_layer, pending, sq: None })
    }
    /// Adds the gradients in `g` of the variables `which` into `grads` (on the CPU), or into
    /// device-side sums that [`Params::flush`] moves into `grads` (elsewhere).
    fn accumulate(&self, g: &candle_core::backprop::GradStore, which: impl Iterator<Item = usize>, grads: &mut [Vec<f32>]) -> Result<()> {
        let mut pending = self.pending.borrow_mut();
        for i in which {
            if let Some(gt) = g.get(self.vars[i].as_tensor()) {
                // (Forced portable ops take the device branch on the CPU: that is how it is tested.)
                if gt.device().is_cpu() && !emlab_model::ops::portable_forced() {
                    let gv = gt.flatten_all()?.to_vec1::<f32>()?;
                    grads[i].iter_mut().zip(gv).for_each(|(a, b)| *a += b);
                } else {
                    let gt = gt.flatten_all()?.to_dtype(candle_core::DType::F32)?;
                    pending[i] = Some(match pending[i].take() {
                        Some(acc) => (acc + gt)?,
                        None => gt,
                    });
                }
            }
        }
        Ok(())
    }
    /// The device-side gradient sums of every variable as one flat f32 tensor `[N]` (zeros for a
    /// variable that received none), in `vars` order; the sums are reset.
    fn take_flat_grads(&self, dev: &candle_core::Device) -> Result<Tensor> {
        let mut pending = self.pending.borrow_mut();
        let parts = pending
            .iter_mut()
            .zip(&self.host)
            .map(|(p, h)| match p.take() {
                Some(t) => Ok(t),
                None => Tensor::zeros(h.len(), candle_core::DType::F32, dev),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
    /// The device-side gradient sums, one contiguous f32 tensor per variable (zeros for a
    /// variable that received none); the sums are reset.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn take_grads(&self, dev: &candle_core::Device) -> Result<Vec<Tensor>> {
        let mut pending = self.pending.borrow_mut();
        let mut out = Vec::with_capacity(pending.len());
        for (p, v) in pending.iter_mut().zip(&self.vars) {
            out.push(match p.take() {
                Some(t) => t.reshape(v.shape())?.contiguous()?,
                None => Tensor::zeros(v.shape(), candle_core::DType::F32, dev)?,
            });
        }
        Ok(out)
    }
    /// Sets every variable from the flat parameters `p` `[N]` (device-side copies into each).
    fn set_vars_from_flat(&self, p: &Tensor) -> Result<()> {
        let mut off = 0;
        for (v, h) in self.vars.iter().zip(&self.host) {
            v.set(&p.narrow(0, off, h.len())?.reshape(v.shape())?)?;
            off += h.len();
        }
        Ok(())
    }
    /// [`Params::set_vars_from_flat`], then the host mirror refreshed with one download (it feeds
    /// the per-step norms and checkpoints).
    fn set_from_flat(&mut self, p: &Tensor) -> Result<()> {
        self.set_vars_from_flat(p)?;
        Ok(crate::optim::split_flat(p, &mut self.host)?)
    }
    /// Moves the device-side gradient sums into `grads` with one copy.
    fn flush(&self, grads: &mut [Vec<f32>]) -> Result<()> {
        let mut pending = self.pending.borrow_mut();
        let has: Vec<bool> = pending.iter().map(Option::is_some).collect();
        let parts: Vec<Tensor> = pending.iter_mut().filter_map(Option::take).collect();
        if parts.is_empty() {
            return Ok(());
        }
        let flat = Tensor::cat(&parts, 0)?.to_vec1::<f32>()?;
        // The sums were concatenated in tensor order: hand out consecutive slices.
        let mut rest = &flat[..];
        let mut work: Vec<(&mut Vec<f32>, &[f32])> = Vec::with_capacity(parts.len());
        for (g, _) in grads.iter_mut().zip(&has).filter(|(_, &h)| h) {
            let (head, tail) = rest.split_at(g.len());
            work.push((g, head));
            rest = tail;
        }
        work.into_par_iter().for_each(|(dst, src)| dst.iter_mut().zip(src).for_each(|(a, b)| *a += b));
        Ok(())
    }
    fn push_to_model(&self) -> Result<()> {
        let dev = match self.vars.first() {
            Some(v) => v.device().clone(),
            None => return Ok(()),
        };
        if dev.is_cpu() && !emlab_model::ops::portable_forced() {
            for (v, h) in self.vars.iter().zip(&self.host) {
                v.set(&Tensor::from_vec(h.clone(), v.shape(), v.device())?)?;
            }
            return Ok(());
        }
        // Off the CPU: one upload of all adapters, then device-side copies into each variable
        // (one host-to-device transfer per tensor blocked the host hundreds of times a step).
        self.set_vars_from_flat(&crate::optim::flat_tensor(&self.host, &dev)?)
    }
    /// Refreshes the host mirror from the variables with one device-to-host copy (the CUDA
    /// optimizer updates the variables in place and leaves `host` stale).
    fn download_host(&mut self) -> Result<()> {
        let parts = self
            .vars
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(crate::optim::split_flat(&Tensor::cat(&parts, 0)?, &mut self.host)?)
    }
    /// Host adapters as the rotation monitor reads them, from `bufs` (`host`'s layout: A then B
    /// per adapter).
    fn modules<'a>(&self, names: &'a [String], bufs: &'a [Vec<f32>]) -> Vec<rotation::Module<'a>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| rotation::Module { name, a: &bufs[2 * i], b: &bufs[2 * i + 1], r: self.vars[2 * i].dims()[0] })
            .collect()
    }
    /// Frobenius norms of A and B per module (one tensor per task: the same sums on any
    /// number of threads).
    fn norms(&self) -> serde_json::Map<String, serde_json::Value> {
        let fro = |v: &Vec<f32>| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        let n: Vec<f64> = match &self.sq {
            Some(sq) => sq.iter().map(|s| s.sqrt()).collect(),
            None => self.host.par_iter().map(fro).collect(),
        };
        self.ads.iter().enumerate().map(|(i, a)| (a.name(), serde_json::json!({"a": n[2 * i], "b": n[2 * i + 1]}))).collect()
    }
}

/// Mean loss over the assistant tokens of `examples` (no dropout, no update). Runs without an
/// autograd graph (block by block, then the LM head over chunks of tokens), so its memory is
/// that of one block, whatever the batch.
pub fn eval_loss(model: &Model, examples: &[Example], batch: usize, pad: u32) -> Result<f64> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].ids.len());
    let (mut sum, mut n) = (0f64, 0usize);
    for idx in order.chunks(batch.max(1)) {
        let b = make_batch(examples, idx, pad, model.device())?;
        let (hidden, _) = forward_detached(model, &b.inputs, None)?;
        let (rows, targets) = trained_rows(&hidden, &b)?;
        for s in (0..b.trained).step_by(HEAD_CHUNK) {
            let len = HEAD_CHUNK.min(b.trained - s);
            let logits = kernels::frozen_matmul(&rows.narrow(0, s, len)?, &model.lm_head)?;
            let ce = kernels::cross_entropy(&logits, &targets.narrow(0, s, len)?)?;
            sum += ce.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        n += b.trained;
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// Per-token cross-entropy `[trained]` of one batch: the forward pass up to the final norm,
/// then the LM head on the trained positions only (logits elsewhere are never needed). This
/// is the plain path: the autograd graph holds every layer's activations until the backward.
pub fn batch_loss(model: &Model, b: &crate::data::Batch, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let fwd = model.forward(&b.inputs, Forward { logits: Logits::None, dropout_rng: rng, ..Default::default() })?;
    let (rows, targets) = trained_rows(&fwd.hidden, b)?;
    let logits = kernels::frozen_matmul(&rows, &model.lm_head)?;
    Ok(kernels::cross_entropy(&logits, &targets)?)
}

/// Tokens per chunk of the LM head + loss under activation checkpointing: the `[chunk, vocab]`
/// logits and their gradient are the largest temporaries (2 x 50 MB for a 49k vocabulary).
pub const HEAD_CHUNK: usize = 256;

/// The final hidden states `[B, T, d]` at the trained positions (`[trained, d]`) and their
/// targets (`[trained]`).
fn trained_rows(hidden: &Tensor, b: &crate::data::Batch) -> Result<(Tensor, Tensor)> {
    let (bb, t, d) = hidden.dims3()?;
    let rows = hidden.reshape((bb * t, d))?.index_select(&b.trained_index, 0)?;
    Ok((rows, b.targets.index_select(&b.trained_index, 0)?))
}

/// One block of the model's own forward pass (`Model::forward_from`); the last block also
/// applies the final norm. `x`: the block's input `[B, T, d]`.
fn run_block(model: &Model, layer: usize, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let f = Forward { logits: Logits::None, dropout_rng: rng, stop_after: Some(layer + 1), ..Default::default() };
    Ok(model.forward_from(layer, x.clone(), f)?.hidden)
}

/// The forward pass block by block, each block's output detached (its graph is freed as soon
/// as the next block starts). Returns the final normed hidden states and, per block, its input
/// and the dropout RNG as the block found it (what the backward pass needs to re-run it).
/// Per block: its input and the dropout RNG as the block found it.
type SavedBlocks = Vec<(Tensor, Option<ChaCha8Rng>)>;

fn forward_detached(model: &Model, ids: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<(Tensor, SavedBlocks)> {
    let mut x = model.embed_tokens(ids)?;
    let mut saved = Vec::with_capacity(model.layers.len());
    for li in 0..model.layers.len() {
        let r0 = rng.as_deref().cloned();
        let out = run_block(model, li, &x, rng.as_deref_mut())?.detach();
        saved.push((std::mem::replace(&mut x, out), r0));
    }
    Ok((x, saved))
}

/// Loss and gradients of one micro-batch: returns `sum(token losses) / denom` and adds its
/// gradient with respect to every adapter tensor into `grads` (ordered as `params.vars`).
fn micro_batch_grads(
    model: &Model,
    b: &crate::data::Batch,
    rng: Option<&mut ChaCha8Rng>,
    denom: f64,
    params: &Params,
    grads: &mut [Vec<f32>],
    checkpointed: bool,
) -> Result<f64> {
    let dev = model.device();
    if !checkpointed {
        let ce = batch_loss(model, b, rng)?;
        let loss = (ce.sum_all()? / denom)?;
        profile::mark(dev, 0);
        let g = loss.backward()?;
        params.accumulate(&g, 0..params.vars.len(), grads)?;
        profile::mark(dev, 1);
        return Ok(loss.to_scalar::<f32>()? as f64);
    }
    // (Checkpointed: forward and backward interleave per block; the profile books them as one.)
    let loss = checkpointed_grads(model, b, rng, denom, params, grads)?;
    profile::mark(dev, 1);
    Ok(loss)
}

/// Loss of one batch (summed token losses / `denom`) and its gradient with respect to every
/// adapter tensor of `model`, in [`adapter::adapters`] order, A then B per adapter: the
/// computation of one micro-batch of the training loop, with or without activation
/// checkpointing (`rng` drives dropout, as in training).
pub fn loss_and_gradients(
    model: &Model,
    b: &crate::data::Batch,
    rng: Option<&mut ChaCha8Rng>,
    denom: f64,
    checkpointed: bool,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let params = Params::new(adapter::adapters(model))?;
    let mut grads: Vec<Vec<f32>> = params.host.iter().map(|h| vec![0f32; h.len()]).collect();
    let loss = micro_batch_grads(model, b, rng, denom, &params, &mut grads, checkpointed)?;
    params.flush(&mut grads)?;
    Ok((loss, grads))
}

/// Activation checkpointing. Forward without a graph, keeping each block's input; the LM head
/// and cross-entropy in chunks of [`HEAD_CHUNK`] tokens, each chunk backpropagated at once to
/// give `dL/dh` for its rows; then, from the last block to the first, re-run the block on its
/// stored input (made a leaf variable, with the dropout RNG restored so the masks repeat) and
/// backpropagate `sum(out * dL/dout)`, whose gradient is exactly `dL/dout` pushed through the
/// block: the block's adapter gradients, and `dL/din` for the block below.
fn checkpointed_grads(
    model: &Model,
    b: &crate::data::Batch,
    rng: Option<&mut ChaCha8Rng>,
    denom: f64,
    params: &Params,
    grads: &mut [Vec<f32>],
) -> Result<f64> {
    let n_layers = model.layers.len();
    let (hidden, mut saved) = forward_detached(model, &b.inputs, rng)?;
    let (bb, t, d) = hidden.dims3()?;
    let (rows, targets) = trained_rows(&hidden, b)?;
    drop(hidden);
    // Chunk losses stay on the device and are read once (a read per chunk would block).
    let mut losses = Vec::with_capacity(b.trained.div_ceil(HEAD_CHUNK));
    let mut d_rows = Vec::with_capacity(b.trained.div_ceil(HEAD_CHUNK));
    for s in (0..b.trained).step_by(HEAD_CHUNK) {
        let len = HEAD_CHUNK.min(b.trained - s);
        let rv = Var::from_tensor(&rows.narrow(0, s, len)?)?;
        let logits = kernels::frozen_matmul(rv.as_tensor(), &model.lm_head)?;
        let ce = kernels::cross_entropy(&logits, &targets.narrow(0, s, len)?)?;
        let l = (ce.sum_all()? / denom)?;
        losses.push(l.detach().to_dtype(candle_core::DType::F32)?.reshape(1)?);
        let g = l.backward()?;
        d_rows.push(g.get(rv.as_tensor()).cloned().ok_or_else(|| Error::Invalid("LM head: no gradient reached the hidden states".into()))?);
    }
    if d_rows.is_empty() {
        return Ok(0.0);
    }
    let loss = Tensor::cat(&losses, 0)?.to_vec1::<f32>()?.iter().map(|&x| x as f64).sum::<f64>();
    let mut upstream = Tensor::cat(&d_rows, 0)?; // dL/d(rows) [trained, d]
    drop(d_rows);
    for li in (0..n_layers).rev() {
        let (xin, mut r) = saved.pop().ok_or_else(|| Error::Invalid("checkpointing: missing block input".into()))?;
        // Block 0's input (the embeddings) needs no gradient: keep it a constant.
        let xv = if li > 0 { Some(Var::from_tensor(&xin)?) } else { None };
        let x = xv.as_ref().map(|v| v.as_tensor().clone()).unwrap_or(xin);
        let out = run_block(model, li, &x, r.as_mut())?;
        let out = if li + 1 == n_layers { out.reshape((bb * t, d))?.index_select(&b.trained_index, 0)? } else { out };
        let g = (out * &upstream)?.sum_all()?.backward()?;
        params.accumulate(&g, params.by_layer[li].iter().copied(), grads)?;
        if let Some(v) = &xv {
            upstream = g.get(v.as_tensor()).cloned().ok_or_else(|| Error::Invalid(format!("block {li}: no gradient reached its input")))?;
        }
    }
    Ok(loss)
}

fn run(
    cfg: &TrainConfig,
    model: &mut Model,
    train: &[Example],
    eval: &[Example],
    pad: u32,
    out: &Path,
    mut opts: TrainOptions<'_>,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    if !adapter::adapters(model).is_empty() {
        return Err(Error::Invalid("the model already carries adapters: merge them first (emlab adapter merge)".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    checkpoint::clean_temps(out)?;
    let existing = checkpoint::list(out)?;
    let resume_dir = match (opts.resume, existing.last()) {
        (true, Some((_, d))) => Some(d.clone()),
        (false, Some((s, _))) => {
            return Err(Error::Invalid(format!(
                "{}: already holds checkpoints (newest: step {s}); resume it or choose another output folder",
                out.display()
            )))
        }
        _ => None,
    };
    let dev = model.device().clone();
    let mut params = Params::new(adapter::attach(model, &cfg.lora, cfg.seed)?)?;
    let sizes: Vec<usize> = params.host.iter().map(|h| h.len()).collect();
    // The rotation monitor (`rotation`): module names, and the adapters before the first update,
    // which a resumed run may need as its previous snapshot.
    let rot_every = cfg.rotation_every_on(&dev);
    let names: Vec<String> = params.ads.iter().map(|a| a.name()).collect();
    let init_host = (rot_every > 0 && resume_dir.is_some()).then(|| params.host.clone());
    let mut opt = AdamW::new(&sizes, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay);
    let base_name = opts.base_model_name.clone().unwrap_or_else(|| "unknown".into());
    let peft_cfg = PeftConfig::from_lora(&cfg.lora, model.config.num_layers, &base_name);

    let ga = cfg.grad_accum;
    let n_micro = plan_epoch(train, cfg.batch_size, cfg.bucket_window, cfg.seed, 0).len();
    let steps_per_epoch = n_micro.div_ceil(ga);
    let total = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs);
    let data_fp = fingerprint(train);
    let cfg_fp = cfg.resume_fingerprint();

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ DROPOUT_STREAM);
    let (mut step0, mut tokens_seen, mut elapsed0) = (0usize, 0u64, 0f64);
    let metrics_path = out.join("metrics.jsonl");
    if let Some(dir) = &resume_dir {
        let st = checkpoint::read_state(dir)?;
        if st.config_fingerprint != cfg_fp {
            return Err(Error::ResumeMismatch(format!(
                "{}: the checkpoint was made with other settings ({}); resume with the same train config",
                dir.display(),
                diff_keys(&st.config_fingerprint, &cfg_fp)
            )));
        }
        if st.data_fingerprint != data_fp {
            return Err(Error::ResumeMismatch(format!("{}: the checkpoint was made on other data (fingerprint differs)", dir.display())));
        }
        if st.keys != params.keys {
            return Err(Error::format(dir, "adapter tensors differ from the configured adapters"));
        }
        let ad = adapter::read_safetensors_f32(&dir.join("adapter_model.safetensors"), &dev)?;
        let os = adapter::read_safetensors_f32(&dir.join("optimizer.safetensors"), &dev)?;
        for (i, k) in params.keys.iter().enumerate() {
            let get = |m: &std::collections::BTreeMap<String, Tensor>, key: &str, file: &str| -> Result<Vec<f32>> {
                let t = m.get(key).ok_or_else(|| Error::format(dir.join(file), format!("tensor `{key}` missing")))?;
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != sizes[i] {
                    return Err(Error::format(dir.join(file), format!("tensor `{key}` has {} values, expected {}", v.len(), sizes[i])));
                }
                Ok(v)
            };
            params.host[i] = get(&ad, k, "adapter_model.safetensors")?;
            opt.m[i] = get(&os, &format!("m.{k}"), "optimizer.safetensors")?;
            opt.v[i] = get(&os, &format!("v.{k}"), "optimizer.safetensors")?;
        }
        params.push_to_model()?;
        opt.t = st.adam_t;
        let pos: u128 = st.rng_word_pos.parse().map_err(|_| Error::format(dir.join("state.json"), "rng_word_pos is not an integer"))?;
        rng = ChaCha8Rng::seed_from_u64(st.rng_seed);
        rng.set_word_pos(pos);
        step0 = st.step;
        tokens_seen = st.tokens_seen;
        elapsed0 = st.elapsed_s;
        truncate_metrics(&metrics_path, step0)?;
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    }
    let mut rot = match rot_every {
        0 => None,
        e => Some(rotation_start(out, step0, e, &params, &names, init_host)?),
    };
    // The device path keeps the adapters flat on the device as the optimizer's parameters.
    let on_device = !dev.is_cpu() || emlab_model::ops::portable_forced();
    // On a CUDA device the optimizer updates the variables in place (`cuda_optim`); elsewhere off
    // the CPU it runs on flat tensors.
    let cuda_opt = cuda_optimizer(&dev);
    let mut flat_p = if on_device && !cuda_opt { Some(crate::optim::flat_tensor(&params.host, &dev)?) } else { None };
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;

    let bar = if opts.progress { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:28} {pos}/{len} steps  {msg}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(step0 as u64);
    // Without a terminal (a job's log file) the bar is invisible: a plain line at most every
    // 30 s, and at the last step, says the run is alive and how far it got.
    let plain = opts.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();

    let mut summary = TrainSummary {
        steps: step0,
        total_steps: total,
        interrupted: false,
        resumed_from: resume_dir.as_ref().map(|_| step0),
        losses: Vec::new(),
        final_eval_loss: None,
        tokens_seen,
        elapsed_s: elapsed0,
        adapter_dir: None,
        last_checkpoint: resume_dir.clone(),
    };
    let started = Instant::now();
    let mut plan: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut last_ckpt = step0;
    let save =
        |params: &Params, opt: &AdamW, model: &Model, step: usize, rng: &ChaCha8Rng, tokens_seen: u64, elapsed: f64| -> Result<PathBuf> {
            let st = TrainState {
                format: 1,
                step,
                total_steps: total,
                epoch: step / steps_per_epoch,
                micro_batch: (step % steps_per_epoch) * ga,
                rng_seed: cfg.seed ^ DROPOUT_STREAM,
                rng_word_pos: rng.get_word_pos().to_string(),
                adam_t: opt.t,
                tokens_seen,
                elapsed_s: elapsed,
                config_fingerprint: cfg_fp.clone(),
                data_fingerprint: data_fp.clone(),
                keys: params.keys.clone(),
            };
            let p = checkpoint::write(out, step, |tmp| {
                adapter::save_peft(model, tmp, &peft_cfg)?;
                let mut ts = Vec::with_capacity(2 * params.keys.len());
                for (i, k) in params.keys.iter().enumerate() {
                    let shape = params.vars[i].shape().clone();
                    ts.push((format!("m.{k}"), Tensor::from_vec(opt.m[i].clone(), shape.clone(), &dev)?));
                    ts.push((format!("v.{k}"), Tensor::from_vec(opt.v[i].clone(), shape, &dev)?));
                }
                emlab_model::load::save_safetensors(&tmp.join("optimizer.safetensors"), &ts, None)?;
                let js = serde_json::to_string_pretty(&st).unwrap_or_default();
                emlab_model::util::write_atomic(&tmp.join("state.json"), js.as_bytes())?;
                Ok(())
            })?;
            checkpoint::prune(out, cfg.keep_checkpoints)?;
            Ok(p)
        };

    for step in step0..total {
        let t0 = Instant::now();
        let epoch = step / steps_per_epoch;
        if plan.as_ref().map(|p| p.0) != Some(epoch) {
            plan = Some((epoch, plan_epoch(train, cfg.batch_size, cfg.bucket_window, cfg.seed, epoch)));
        }
        let ep_plan = &plan.as_ref().map(|p| &p.1).expect("plan set above");
        let k = step % steps_per_epoch;
        let mbs = &ep_plan[k * ga..((k + 1) * ga).min(ep_plan.len())];
        let batches = mbs.iter().map(|idx| make_batch(train, idx, pad, &dev)).collect::<Result<Vec<_>>>()?;
        let trained: usize = batches.iter().map(|b| b.trained).sum();
        let tokens: usize = batches.iter().map(|b| b.tokens).sum();
        // Off the CPU (or with the GPU's paths forced) gradients stay on the device and are
        // summed there; on the CPU they are summed into these host buffers.
        let mut grads: Vec<Vec<f32>> = if on_device { Vec::new() } else { sizes.iter().map(|&n| vec![0f32; n]).collect() };
        let mut loss_sum = 0f64;
        profile::start();
        for b in &batches {
            // Each micro-batch's summed loss is divided by the step's total trained tokens, so
            // the accumulated gradient is that of the token mean over the whole effective batch.
            // (Not on a rayon worker, unlike a decode step: tensors allocated on the workers
            // land in their own malloc arenas, which doubled the main job's peak RSS to 18.7 GB
            // for a ~6% gain.)
            loss_sum += micro_batch_grads(model, b, Some(&mut rng), trained as f64, &params, &mut grads, cfg.checkpoint_activations)?;
        }
        if !loss_sum.is_finite() {
            return Err(Error::Invalid(format!("loss is not finite at step {} ({loss_sum}); lower the learning rate", step + 1)));
        }
        let lr = lr_at(cfg.lr, cfg.schedule, cfg.warmup_steps, total, step);
        let grad_norm = if cuda_opt {
            cuda_step(&mut params, &mut opt, &dev, cfg.max_grad_norm, lr)?
        } else if let Some(p) = flat_p.take() {
            // Norm, clipping and AdamW on the device: one scalar and the new adapters (for the
            // norms and checkpoints) come back, nothing goes up.
            let g = params.take_flat_grads(&dev)?;
            let norm = g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
            profile::mark(&dev, 2);
            let g = match clip_factor(norm, cfg.max_grad_norm) {
                Some(coef) => (g * coef as f64)?,
                None => g,
            };
            let p = opt.step_flat(&p, &g, lr)?;
            params.set_from_flat(&p)?;
            flat_p = Some(p);
            norm
        } else {
            let norm = clip_grad_norm(&mut grads, cfg.max_grad_norm);
            opt.step(&mut params.host, &grads, lr);
            params.push_to_model()?;
            norm
        };
        profile::mark(&dev, 3);
        let t_rot = Instant::now();
        let rotation = match rot.as_mut() {
            Some(t) if (step + 1) % rot_every == 0 => {
                // The CUDA optimizer leaves the host mirror stale: one copy down, only here.
                if params.sq.is_some() {
                    params.download_host()?;
                }
                Some(t.observe(step + 1, &params.modules(&names, &params.host))?.summary())
            }
            _ => None,
        };
        let rot_s = t_rot.elapsed().as_secs_f64();
        tokens_seen += tokens as u64;
        let done = step + 1;
        let eval_now = !eval.is_empty() && ((cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == total);
        let eval_l = if eval_now { Some(eval_loss(model, eval, cfg.batch_size, pad)?) } else { None };
        let dt = t0.elapsed().as_secs_f64();
        let info = StepInfo {
            step: done,
            total_steps: total,
            epoch,
            loss: loss_sum,
            grad_norm,
            lr,
            tokens,
            trained_tokens: trained,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            elapsed_s: elapsed0 + started.elapsed().as_secs_f64(),
            eval_loss: eval_l,
        };
        let mut line = serde_json::to_value(&info).unwrap_or_default();
        if let Some(o) = line.as_object_mut() {
            o.insert("lora_norms".into(), serde_json::Value::Object(params.norms()));
            if let Some(r) = &rotation {
                o.insert("rotation".into(), serde_json::to_value(r).unwrap_or_default());
            }
            if let Some(p) = profile::take() {
                o.insert(
                    "profile_s".into(),
                    serde_json::json!({"forward": p[0], "backward": p[1], "grad_sum_norm": p[2], "optimizer": p[3], "rotation": rot_s}),
                );
            }
        }
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
        summary.losses.push(loss_sum);
        summary.steps = done;
        summary.tokens_seen = tokens_seen;
        if eval_l.is_some() {
            summary.final_eval_loss = eval_l;
        }
        let avg_tps = (tokens_seen as f64) / (elapsed0 + started.elapsed().as_secs_f64()).max(1e-9);
        bar.set_message(format!("loss {loss_sum:.4}  lr {lr:.2e}  {avg_tps:.0} tok/s"));
        bar.set_position(done as u64);
        if plain && (done == total || last_line.elapsed().as_secs() >= 30) {
            let run_s = started.elapsed().as_secs_f64();
            let eta = run_s / (done - step0).max(1) as f64 * (total - done) as f64;
            eprintln!("  train: step {done}/{total}  loss {loss_sum:.4}  lr {lr:.2e}  {avg_tps:.0} tok/s  {run_s:.0} s, eta {eta:.0} s");
            last_line = std::time::Instant::now();
        }

        let control = match opts.on_step.as_mut() {
            Some(cb) => cb(&info, model),
            None => Control::Continue,
        };
        if control == Control::Abort {
            bar.abandon();
            summary.interrupted = true;
            summary.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
            return Ok(summary);
        }
        let stop = control == Control::Stop || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let periodic = cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0;
        if periodic || stop || done == total {
            opt.pull_moments()?;
            let el = elapsed0 + started.elapsed().as_secs_f64();
            summary.last_checkpoint = Some(save(&params, &opt, model, done, &rng, tokens_seen, el)?);
            last_ckpt = done;
        }
        if stop && done < total {
            summary.interrupted = true;
            break;
        }
    }
    let _ = last_ckpt;
    bar.finish_and_clear();
    summary.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
    if !summary.interrupted {
        if summary.final_eval_loss.is_none() && !eval.is_empty() {
            summary.final_eval_loss = Some(eval_loss(model, eval, cfg.batch_size, pad)?);
        }
        let dir = out.join("adapter");
        let tmp = out.join(format!(".tmp-adapter-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        adapter::save_peft(model, &tmp, &peft_cfg)?;
        if dir.exists() && adapter::same_adapter(&dir, &tmp)? {
            // A finished run resumed (or re-run from its last checkpoint): the adapter there is
            // this one, so it stays as it is and hashes recorded of it (evaluation logs) hold,
            // even where it names its base model by a path that has since moved.
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        } else {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        }
        summary.adapter_dir = Some(dir);
    }
    let js = serde_json::to_string_pretty(&summary).unwrap_or_default();
    emlab_model::util::write_atomic(&out.join("train_summary.json"), js.as_bytes())?;
    Ok(summary)
}

/// The rotation monitor's first snapshot: the adapters at the last multiple of `every` at or
/// before `step0`, which an uninterrupted run would hold. That is the current adapters (a fresh
/// run, or a resume from such a step), the initial ones (`init`, step 0), or that step's
/// checkpoint. Where that checkpoint is gone (pruned, or never written: `checkpoint_every` not a
/// multiple of `rotation_every`, or a Ctrl-C), the resumed adapters: the first rotation after the
/// resume then spans fewer steps, which its `since_step` says.
fn rotation_start(
    out: &Path,
    step0: usize,
    every: usize,
    params: &Params,
    names: &[String],
    init: Option<Vec<Vec<f32>>>,
) -> Result<rotation::Tracker> {
    let prev = step0 / every * every;
    if prev != step0 {
        let bufs = if prev == 0 { init } else { checkpoint_adapters(&checkpoint::step_dir(out, prev), params)? };
        if let Some(b) = bufs {
            return rotation::Tracker::new(prev, &params.modules(names, &b));
        }
    }
    rotation::Tracker::new(step0, &params.modules(names, &params.host))
}

/// The adapter tensors of the checkpoint in `dir` in `params.host`'s layout, or `None` when
/// the checkpoint does not exist.
fn checkpoint_adapters(dir: &Path, params: &Params) -> Result<Option<Vec<Vec<f32>>>> {
    let file = dir.join("adapter_model.safetensors");
    if !file.is_file() {
        return Ok(None);
    }
    let ad = adapter::read_safetensors_f32(&file, &candle_core::Device::Cpu)?;
    let mut bufs = Vec::with_capacity(params.keys.len());
    for (k, h) in params.keys.iter().zip(&params.host) {
        let t = ad.get(k).ok_or_else(|| Error::format(&file, format!("tensor `{k}` missing")))?;
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != h.len() {
            return Err(Error::format(&file, format!("tensor `{k}` has {} values, expected {}", v.len(), h.len())));
        }
        bufs.push(v);
    }
    Ok(Some(bufs))
}

#[cfg(feature = "cuda")]
fn cuda_optimizer(dev: &candle_core::Device) -> bool {
    dev.is_cuda() && crate::cuda_optim::enabled()
}

#[cfg(not(feature = "cuda"))]
fn cuda_optimizer(_dev: &candle_core::Device) -> bool {
    false
}

/// Gradient norm, clipping and AdamW on a CUDA device, in place (`cuda_optim`): the per-tensor
/// sums of squares (gradients, then new parameters) are all that comes back. Returns the norm.
#[cfg(feature = "cuda")]
fn cuda_step(params: &mut Params, opt: &mut AdamW, dev: &candle_core::Device, max_norm: f64, lr: f64) -> Result<f64> {
    let grads = params.take_grads(dev)?;
    let norm = crate::cuda_optim::sumsq(&grads)?.iter().sum::<f64>().sqrt();
    profile::mark(dev, 2);
    let gscale = crate::optim::clip_factor(norm, max_norm).unwrap_or(1.0);
    let vars: Vec<Tensor> = params.vars.iter().map(|v| v.as_tensor().clone()).collect();
    params.sq = Some(opt.step_cuda(&vars, &grads, gscale, lr)?);
    Ok(norm)
}

#[cfg(not(feature = "cuda"))]
fn cuda_step(_: &mut Params, _: &mut AdamW, _: &candle_core::Device, _: f64, _: f64) -> Result<f64> {
    Err(Error::Invalid("the CUDA optimizer needs a build with the `cuda` feature".into()))
}

/// Keeps the metrics lines of steps `<= step` (a resumed run rewrites what came after).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    emlab_model::util::write_atomic(path, body.as_bytes())?;
    Ok(())
}

fn diff_keys(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let mut diffs = Vec::new();
    if let (Some(x), Some(y)) = (a.as_object(), b.as_object()) {
        for (k, v) in x {
            if y.get(k) != Some(v) {
                diffs.push(format!("{k}: {v} -> {}", y.get(k).cloned().unwrap_or_default()));
            }
        }
    }
    if diffs.is_empty() {
        "unknown difference".into()
    } else {
        diffs.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUDA optimizer's path to the rotation monitor (a stale host mirror refreshed with one
    /// copy), run on the CPU: after the variables change behind the mirror's back, the refresh
    /// gives exactly the variables' values, and the modules read A and B of the right adapter.
    #[test]
    fn download_host_refreshes_a_stale_mirror_from_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        emlab_model::testing::write_tiny_gguf(&p, &emlab_model::testing::tiny_config(emlab_model::Arch::Llama), 3).unwrap();
        let mut model = Model::load(&p, &Default::default()).unwrap();
        let lora = crate::LoraConfig { r: 2, targets: vec!["v".into(), "up".into()], ..Default::default() };
        let mut params = Params::new(adapter::attach(&mut model, &lora, 1).unwrap()).unwrap();
        let want: Vec<Vec<f32>> = params.host.iter().enumerate().map(|(i, h)| h.iter().map(|x| x + i as f32 + 0.5).collect()).collect();
        for (v, w) in params.vars.iter().zip(&want) {
            v.set(&Tensor::from_vec(w.clone(), v.shape(), v.device()).unwrap()).unwrap();
        }
        params.download_host().unwrap();
        assert_eq!(params.host, want);
        let names: Vec<String> = params.ads.iter().map(|a| a.name()).collect();
        let mods = params.modules(&names, &params.host);
        assert_eq!(mods.len(), 4);
        assert_eq!((mods[3].name, mods[3].r), ("layers.1.up_proj", 2));
        assert_eq!((mods[3].a, mods[3].b), (&want[6][..], &want[7][..]));
        assert_eq!((mods[3].a.len(), mods[3].b.len()), (2 * 32, 64 * 2)); // A [r, hidden], B [intermediate, r]
    }
}
