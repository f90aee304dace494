//! Decode steps replayed from a captured CUDA graph.
//!
//! A decode step of a wave is ~14 small launches per layer (norms, seven projections, the two
//! [`crate::decode`] ops, the SiLU product, two residual adds); at the model sizes emlab targets
//! each costs more time on the host (candle's per-op work, ~10 us) than on the card, so the step
//! is bound by the host (docs/benchmarks.md, "GPU"). Captured into a CUDA graph, the whole step
//! is one launch.
//!
//! [`DecodeStepper::step`] runs one decode step of a [`BatchCache`]. On CUDA (no hooks, or hooks
//! that say they are [`Hooks::graph_safe`], like steering edits; `EMLAB_CUDA_GRAPH` not `0`):
//! the first decode step at each batch size runs eagerly (it loads every kernel and fills
//! candle's cache of the small uploads that a capture must not make); the next is captured and
//! launched; each later step of the same cache writes the new tokens into a fixed device buffer,
//! brings the cache's `meta` up to date ([`BatchCache::sync_meta`]) and launches the graph. A
//! cache whose buffers changed ([`BatchCache::retain`], a new wave) is captured again. The graph
//! computes exactly the eager forward pass ([`crate::Model::forward`]): this module adds no model
//! code. Everywhere else (the CPU, other hooks, `EMLAB_CUDA_GRAPH=0`, after a capture that
//! failed, which is warned about once), every step is that eager pass.
//!
//! ```
//! # use emlab_model::{testing::*, Arch, Model};
//! use emlab_model::{decode_graph::DecodeStepper, BatchCache};
//! # let m = Model::from_weights(tiny_config(Arch::Llama), emlab_model::load::Weights {
//! #     tensors: random_weights(&tiny_config(Arch::Llama), 1).into_iter().collect(), origin: "t".into() },
//! #     &Default::default())?;
//! let mut cache = BatchCache::new(&m, vec![0, 0], 8)?;
//! let mut stepper = DecodeStepper::new(&m);
//! let logits = stepper.step(&m, &mut cache, &[1, 2], None)?; // [B, V] f32, eager on the CPU
//! assert_eq!(logits.dims(), &[2, m.config.vocab_size]);
//! assert_eq!(cache.len(), 1);
//! # Ok::<(), emlab_model::Error>(())
//! ```

use candle_core::{DType, Tensor};

use crate::hooks::Hooks;
use crate::model::{BatchCache, Forward, Logits, Model};
use crate::Result;

/// How the steps of this process ran (all steppers together): for benchmarks and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepCounts {
    /// Steps run as the eager forward pass.
    pub eager: u64,
    /// Graphs captured.
    pub captures: u64,
    /// Steps run by launching a captured graph (including the launch right after a capture).
    pub replays: u64,
}

static EAGER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CAPTURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static REPLAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The process's [`StepCounts`] so far.
pub fn counts() -> StepCounts {
    use std::sync::atomic::Ordering::Relaxed;
    StepCounts { eager: EAGER.load(Relaxed), captures: CAPTURES.load(Relaxed), replays: REPLAYS.load(Relaxed) }
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// True unless `EMLAB_CUDA_GRAPH=0`.
pub fn graphs_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::device::env_switch("EMLAB_CUDA_GRAPH", &["1", "0"], "1") == "1")
}

/// Runs the decode steps of one generation call (see the module docs).
pub struct DecodeStepper {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    graphs: bool,
    #[cfg(feature = "cuda")]
    cuda: cuda::State,
}

impl DecodeStepper {
    /// A stepper for `model`: graphs when the model is on a CUDA device, its decode steps take
    /// the position-independent ops ([`crate::decode::wanted`]) and `EMLAB_CUDA_GRAPH` allows.
    pub fn new(model: &Model) -> Self {
        let dev = model.device();
        let graphs = dev.is_cuda() && cfg!(feature = "cuda") && graphs_on() && crate::decode::wanted(dev, model.embed.dtype());
        DecodeStepper {
            graphs,
            #[cfg(feature = "cuda")]
            cuda: cuda::State::default(),
        }
    }

    /// One decode step: `tokens[b]` is row `b`'s next input token. Returns the logits `[B, V]`
    /// (f32) at the new column; the cache grows by one column. Logits of a replayed graph live
    /// in the graph's output buffer: read them before the next step.
    pub fn step(
        &mut self,
        model: &Model,
        cache: &mut BatchCache,
        tokens: &[u32],
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))] mut hooks: Option<&mut dyn Hooks>,
    ) -> Result<Tensor> {
        if tokens.len() != cache.rows() {
            return Err(crate::Error::Invalid(format!("{} tokens for a batch cache of {} rows", tokens.len(), cache.rows())));
        }
        #[cfg(feature = "cuda")]
        if self.graphs && hooks.as_ref().is_none_or(|h| h.graph_safe()) {
            match self.cuda.step(model, cache, tokens, crate::generate::reborrow(&mut hooks)) {
                Ok(l) => return Ok(l),
                Err(cuda::Step::Error(e)) => return Err(e),
                Err(cuda::Step::Fallback(e)) => {
                    eprintln!("emlab: warning: CUDA graph capture failed ({e}); decoding without graphs from here on");
                    self.graphs = false;
                    self.cuda = cuda::State::default();
                }
            }
        }
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), model.device())?;
        bump(&EAGER);
        eager(model, cache, &ids, hooks)
    }
}

/// The forward pass of one decode step.
fn eager(model: &Model, cache: &mut BatchCache, ids: &Tensor, mut hooks: Option<&mut dyn Hooks>) -> Result<Tensor> {
    let f = Forward { logits: Logits::Last, hooks: crate::generate::reborrow(&mut hooks), batch_cache: Some(cache), ..Default::default() };
    let l = model.forward(ids, f)?.logits.expect("Last logits");
    debug_assert_eq!(l.dtype(), DType::F32);
    Ok(l)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::Device;

    struct Captured {
        /// The graph's output (declared first: dropped before the graph).
        logits: Tensor,
        graph: CudaGraph,
        cache_id: u64,
    }

    #[derive(Default)]
    pub(super) struct State {
        captured: Option<Captured>,
        /// `[B, 1]` u32: the token buffer every captured graph reads.
        ids: Option<Tensor>,
        /// Batch sizes that already ran one eager step under candle's upload cache: the cached
        /// kernel parameters (an embedding lookup's, a broadcast bias add's) and cuBLAS's
        /// kernels depend on the batch size, and a capture must find them all.
        warm: std::collections::BTreeSet<usize>,
    }

    impl State {
        pub(super) fn step(
            &mut self,
            model: &Model,
            cache: &mut BatchCache,
            tokens: &[u32],
            mut hooks: Option<&mut dyn Hooks>,
        ) -> std::result::Result<Tensor, Step> {
            let Device::Cuda(cd) = model.device() else {
                return Err(Step::Fallback(crate::Error::Invalid("CUDA graphs need a CUDA device".into())));
            };
            let b = cache.rows();
            if self.captured.as_ref().is_some_and(|c| c.cache_id != cache.id()) {
                self.captured = None;
            }
            let fresh_ids = match &self.ids {
                Some(t) => t.dim(0).map_err(Step::err)? != b,
                None => true,
            };
            if fresh_ids {
                self.captured = None; // it reads the old buffer
                self.ids = Some(Tensor::zeros((b, 1), DType::U32, model.device()).map_err(Step::err)?);
            }
            let ids = self.ids.clone().expect("set above");
            // Inputs first, outside the capture: plain uploads.
            let src = Tensor::from_vec(tokens.to_vec(), (b, 1), model.device()).map_err(Step::err)?;
            ids.slice_set(&src, 0, 0).map_err(Step::err)?;
            cache.check_step(1, model.max_positions()).map_err(Step::Error)?;
            cache.sync_meta().map_err(Step::Error)?;
            if let Some(c) = &self.captured {
                c.graph.launch().w().map_err(Step::err)?;
                cache.advance(1);
                bump(&REPLAYS);
                return Ok(c.logits.clone());
            }
            let _uploads = cd.enable_cuda_graph_htod_cache();
            if !self.warm.contains(&b) {
                let l = eager(model, cache, &ids, crate::generate::reborrow(&mut hooks)).map_err(Step::Error)?;
                self.warm.insert(b);
                bump(&EAGER);
                return Ok(l);
            }
            model.device().synchronize().map_err(Step::err)?;
            let stream = cd.cuda_stream();
            let len = cache.len();
            stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).w().map_err(Step::fallback)?;
            let out = eager(model, cache, &ids, crate::generate::reborrow(&mut hooks));
            // A capture that went wrong makes the frees of the tensors dropped inside it fail,
            // and cudarc keeps such an error for the next call, which would then return it
            // without ending the capture: clear it first, and end the capture for certain.
            let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
            let _ = stream.context().check_err();
            let mut end = stream.end_capture(flags);
            if end.is_err() && stream.capture_status().is_ok_and(|s| s != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE) {
                let _ = stream.context().check_err();
                end = stream.end_capture(flags);
            }
            match (out, end) {
                (Ok(logits), Ok(Some(graph))) => {
                    bump(&CAPTURES);
                    if let Err(e) = graph.upload().and_then(|_| graph.launch()) {
                        cache.rewind(len);
                        std::mem::forget(logits); // graph memory that was never allocated
                        return Err(Step::Fallback(crate::Error::Invalid(format!("launching the captured graph: {e}"))));
                    }
                    bump(&REPLAYS);
                    self.captured = Some(Captured { logits: logits.clone(), graph, cache_id: cache.id() });
                    Ok(logits)
                }
                (out, end) => {
                    // Nothing ran: put the column back. Memory allocated while capturing
                    // belongs to a graph that no longer exists: never free it.
                    cache.rewind(len);
                    let why = match (&out, end) {
                        (Err(e), _) => e.to_string(),
                        (_, Err(e)) => e.to_string(),
                        _ => "the capture recorded no graph".into(),
                    };
                    if let Ok(l) = out {
                        std::mem::forget(l);
                    }
                    Err(Step::Fallback(crate::Error::Invalid(why)))
                }
            }
        }
    }

    pub(super) enum Step {
        /// The capture failed: the caller warns and decodes eagerly from then on.
        Fallback(crate::Error),
        /// An error of the step itself (a full cache, say): returned as it is.
        Error(crate::Error),
    }

    impl Step {
        fn err(e: candle_core::Error) -> Step {
            Step::Error(e.into())
        }
        fn fallback(e: candle_core::Error) -> Step {
            Step::Fallback(e.into())
        }
    }
}
