//! Batched sampling with per-sequence KV caches and per-sample seeds.
//!
//! Requests are served by continuous batching: up to `batch_size` sequences decode together; when
//! one stops, the next prompt is prefilled and joins. Each request owns its RNG (seeded from its
//! `seed`) and draws exactly one number per sampled token, and attention reads only the request's
//! own cache, so a sample's text does not depend on which other requests shared its batch.
//!
//! ```
//! # use emlab_model::{testing::*, Arch, Model};
//! use emlab_model::generate::{generate, Request, SamplingParams};
//! # let m = Model::from_weights(tiny_config(Arch::Llama), emlab_model::load::Weights {
//! #     tensors: random_weights(&tiny_config(Arch::Llama), 1).into_iter().collect(), origin: "t".into() },
//! #     &Default::default()).unwrap();
//! let reqs = vec![Request { prompt: vec![5, 6, 7], seed: 1 }, Request { prompt: vec![9], seed: 2 }];
//! let params = SamplingParams { temperature: 1.0, max_new_tokens: 4, ..Default::default() };
//! let out = generate(&m, &reqs, &params, &[2], None, &mut |_, _| {}).unwrap();
//! assert!(out.iter().all(|g| g.tokens.len() <= 4));
//! ```

use crate::decode_graph::DecodeStepper;
use crate::hooks::Hooks;
use crate::model::{BatchCache, Forward, Logits, Model, SeqCache};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 disables it).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 disables it).
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Sequences decoded together.
    pub batch_size: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 600, batch_size: 64 }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() }
    }
    /// Checks the settings; callers that write output files call it before creating them, so a
    /// bad flag leaves nothing behind.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        if self.batch_size == 0 {
            return Err(Error::Invalid("batch_size must be at least 1".into()));
        }
        Ok(())
    }
}

/// One prompt to continue.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub seed: u64,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop token was sampled (it is not included in `tokens`).
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The model's context is full.
    Context,
}

/// The continuation of one request.
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// Events streamed while generating: a token for request `i`, or its end.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Token(u32),
    Done(Finish),
}

struct Active {
    idx: usize,
    rng: ChaCha8Rng,
    last: u32,
    tokens: Vec<u32>,
}

/// Samples a continuation for every request. `stop` holds the ids that end a sequence;
/// `on_event(i, event)` streams tokens of request `i` as they are chosen.
pub fn generate(
    model: &Model,
    requests: &[Request],
    params: &SamplingParams,
    stop: &[u32],
    mut hooks: Option<&mut dyn Hooks>,
    on_event: &mut dyn FnMut(usize, Event),
) -> Result<Vec<Generation>> {
    params.validate()?;
    // Off the CPU f32 kernels (GPUs, bf16, forced portable ops): one batched device cache per
    // wave of requests, sampling on the device (see `generate_waves`).
    if !model.device().is_cpu() || model.embed.dtype() != DType::F32 || crate::ops::portable_forced() {
        return generate_waves(model, requests, params, stop, hooks, on_event);
    }
    let ctx = model.max_positions();
    let mut results: Vec<Option<Generation>> = vec![None; requests.len()];
    let mut next = 0usize;
    let mut active: Vec<Active> = Vec::new();
    let mut caches: Vec<SeqCache> = Vec::new();
    let dev = model.device().clone();
    loop {
        // Fill free slots: prefill each new prompt on its own (no padding, exact positions).
        while active.len() < params.batch_size && next < requests.len() {
            let i = next;
            next += 1;
            let r = &requests[i];
            if !admit(i, r, params, ctx, &mut results, on_event)? {
                continue;
            }
            let Some((a, cache)) = start_alone(model, i, r, params, stop, false, reborrow(&mut hooks), on_event, &mut results)? else {
                continue;
            };
            active.push(a);
            caches.push(cache);
        }
        if active.is_empty() {
            break;
        }
        // One decode step for every active sequence.
        let last: Vec<u32> = active.iter().map(|a| a.last).collect();
        let ids = Tensor::from_vec(last, (active.len(), 1), &dev)?;
        let out = match reborrow(&mut hooks) {
            // Without hooks, the step runs on a rayon worker: the kernels' parallel loops then
            // start from inside the pool instead of each handing work over from this thread and
            // sleeping on a latch (~240 futex round trips per token for a 30-layer model, a
            // third of a single-stream token's time in `perf`).
            None => {
                rayon::scope(|_| model.forward(&ids, Forward { logits: Logits::Last, cache: Some(&mut caches), ..Default::default() }))?
            }
            h => model.forward(&ids, Forward { logits: Logits::Last, hooks: h, cache: Some(&mut caches), ..Default::default() })?,
        };
        let logits = out.logits.expect("Last logits").to_vec2::<f32>()?;
        let toks: Vec<u32> = active.par_iter_mut().zip(logits.par_iter()).map(|(a, l)| sample(l, params, &mut a.rng)).collect();
        // Accept tokens; remove finished rows from the back so indices stay valid.
        let mut finished = Vec::new();
        for (row, tok) in toks.iter().enumerate() {
            let a = &mut active[row];
            let len = caches[row].len;
            match accept(a, *tok, stop, params, len, ctx) {
                None => on_event(a.idx, Event::Token(*tok)),
                Some(fin) => {
                    if fin != Finish::Stop {
                        on_event(a.idx, Event::Token(*tok));
                    }
                    on_event(a.idx, Event::Done(fin));
                    finished.push((row, fin));
                }
            }
        }
        for (row, fin) in finished.into_iter().rev() {
            let a = active.swap_remove(row);
            caches.swap_remove(row);
            results[a.idx] = Some(Generation { tokens: a.tokens, finish: fin });
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every request finishes")).collect())
}

/// Settles request `i` at once when it cannot run: an empty prompt is an error; a prompt that
/// fills the context, or a budget of 0 new tokens, finishes with no tokens. `Ok(true)`: run it.
fn admit(
    i: usize,
    r: &Request,
    params: &SamplingParams,
    ctx: usize,
    results: &mut [Option<Generation>],
    on_event: &mut dyn FnMut(usize, Event),
) -> Result<bool> {
    if r.prompt.is_empty() {
        return Err(Error::Invalid(format!("request {i} has an empty prompt")));
    }
    let finish = if r.prompt.len() >= ctx {
        Finish::Context
    } else if params.max_new_tokens == 0 {
        Finish::Length
    } else {
        return Ok(true);
    };
    results[i] = Some(Generation { tokens: vec![], finish });
    on_event(i, Event::Done(finish));
    Ok(false)
}

/// Prefills request `i` alone (exact positions, no padding) and samples its first token, on the
/// device (`device_sampling`, [`sample_on_device`]) or on the host ([`sample`]). `None` when
/// that token already ends it (result recorded, events sent); else the running sequence and its
/// one-row cache.
#[allow(clippy::too_many_arguments)]
fn start_alone(
    model: &Model,
    i: usize,
    r: &Request,
    params: &SamplingParams,
    stop: &[u32],
    device_sampling: bool,
    mut hooks: Option<&mut dyn Hooks>,
    on_event: &mut dyn FnMut(usize, Event),
    results: &mut [Option<Generation>],
) -> Result<Option<(Active, SeqCache)>> {
    let mut cache = vec![SeqCache::new(model.config.num_layers)];
    let ids = Tensor::from_vec(r.prompt.clone(), (1, r.prompt.len()), model.device())?;
    let f = Forward { logits: Logits::Last, hooks: reborrow(&mut hooks), cache: Some(&mut cache), ..Default::default() };
    let logits = model.forward(&ids, f)?.logits.expect("Last logits");
    let mut a = Active { idx: i, rng: ChaCha8Rng::seed_from_u64(r.seed), last: 0, tokens: vec![] };
    let tok = if device_sampling {
        sample_on_device(&logits, params, &mut [&mut a.rng])?[0]
    } else {
        sample(&logits.to_vec2::<f32>()?[0], params, &mut a.rng)
    };
    let cache = cache.pop().expect("one cache");
    if let Some(fin) = accept(&mut a, tok, stop, params, cache.len, model.max_positions()) {
        if fin != Finish::Stop {
            on_event(i, Event::Token(tok));
        }
        on_event(i, Event::Done(fin));
        results[i] = Some(Generation { tokens: a.tokens, finish: fin });
        return Ok(None);
    }
    on_event(i, Event::Token(tok));
    Ok(Some((a, cache)))
}

/// Device generation: requests run in waves of up to `batch_size`. A wave's prompts are
/// left-padded into one [`BatchCache`] and prefilled in one forward call; every decode step is one
/// forward pass for the whole wave ([`DecodeStepper`]: on CUDA replayed from a captured graph). All rows
/// share the write column, which is what lets keys and values be written in place at one column.
/// A finished row takes the next request (prefilled alone, its keys/values placed to end at the
/// current column) while the cache has room for its whole budget; otherwise it is parked and
/// decoded along, and once a quarter of the rows are idle they are dropped together; the next
/// wave starts when the last row finishes.
/// Per-request seeds and one uniform draw per sampled token, as on the CPU path.
fn generate_waves(
    model: &Model,
    requests: &[Request],
    params: &SamplingParams,
    stop: &[u32],
    mut hooks: Option<&mut dyn Hooks>,
    on_event: &mut dyn FnMut(usize, Event),
) -> Result<Vec<Generation>> {
    let ctx = model.max_positions();
    let dev = model.device().clone();
    let mut results: Vec<Option<Generation>> = vec![None; requests.len()];
    let mut next = 0usize;
    let mut stepper = DecodeStepper::new(model);
    while next < requests.len() {
        let mut wave: Vec<Active> = Vec::new();
        while wave.len() < params.batch_size && next < requests.len() {
            let i = next;
            next += 1;
            let r = &requests[i];
            if !admit(i, r, params, ctx, &mut results, on_event)? {
                continue;
            }
            wave.push(Active { idx: i, rng: ChaCha8Rng::seed_from_u64(r.seed), last: 0, tokens: vec![] });
        }
        if wave.is_empty() {
            continue;
        }
        let width = wave.iter().map(|a| requests[a.idx].prompt.len()).max().unwrap_or(1);
        let start: Vec<usize> = wave.iter().map(|a| width - requests[a.idx].prompt.len()).collect();
        let mut ids = Vec::with_capacity(wave.len() * width);
        for (a, &s) in wave.iter().zip(&start) {
            ids.extend(std::iter::repeat_n(0u32, s));
            ids.extend_from_slice(&requests[a.idx].prompt);
        }
        // Room for a refilled request's whole budget after the first one's (see below); when
        // every request fits in one wave there is nothing to refill.
        let refills = next < requests.len();
        let cap = width + params.max_new_tokens * if refills { 2 } else { 1 };
        let mut cache = BatchCache::new(model, start, cap)?;
        let ids = Tensor::from_vec(ids, (wave.len(), width), &dev)?;
        let f = Forward { logits: Logits::Last, hooks: reborrow(&mut hooks), batch_cache: Some(&mut cache), ..Default::default() };
        let mut logits = model.forward(&ids, f)?.logits.expect("Last logits");
        // Rows whose request finished and that no other request has taken over yet: parked
        // (`BatchCache::park`) and decoded along until a quarter of the rows are idle, then
        // dropped together. Dropping rows costs two copies per layer and a new graph capture.
        let mut live = vec![true; wave.len()];
        loop {
            let mut rngs: Vec<&mut ChaCha8Rng> = wave.iter_mut().map(|a| &mut a.rng).collect();
            let toks = sample_on_device(&logits, params, &mut rngs)?;
            for (row, tok) in toks.into_iter().enumerate() {
                let a = &mut wave[row];
                if !live[row] {
                    continue;
                }
                match accept(a, tok, stop, params, cache.row_len(row), ctx) {
                    None => on_event(a.idx, Event::Token(tok)),
                    Some(fin) => {
                        if fin != Finish::Stop {
                            on_event(a.idx, Event::Token(tok));
                        }
                        on_event(a.idx, Event::Done(fin));
                        results[a.idx] = Some(Generation { tokens: std::mem::take(&mut a.tokens), finish: fin });
                        live[row] = false;
                        cache.park(row)?;
                    }
                }
            }
            // Refill idle rows with the next requests whose prompt fits before the current column
            // and whose budget fits after it: prefilled on their own, then written into the row
            // (`BatchCache::fill_row`).
            for row in 0..wave.len() {
                while !live[row] && next < requests.len() {
                    let r = &requests[next];
                    if !r.prompt.is_empty()
                        && r.prompt.len() < ctx
                        && (r.prompt.len() > cache.len() || cache.room() < params.max_new_tokens)
                    {
                        break;
                    }
                    let i = next;
                    next += 1;
                    if !admit(i, r, params, ctx, &mut results, on_event)? {
                        continue;
                    }
                    let Some((n, seq)) = start_alone(model, i, r, params, stop, true, reborrow(&mut hooks), on_event, &mut results)? else {
                        continue;
                    };
                    cache.fill_row(row, &seq)?;
                    wave[row] = n;
                    live[row] = true;
                }
            }
            let n_live = live.iter().filter(|&&l| l).count();
            if n_live == 0 {
                break;
            }
            if n_live * 4 <= wave.len() * 3 {
                let keep: Vec<usize> = (0..wave.len()).filter(|&r| live[r]).collect();
                cache.retain(&keep)?;
                let mut w = std::mem::take(&mut wave).into_iter().map(Some).collect::<Vec<_>>();
                wave = keep.iter().map(|&r| w[r].take().expect("kept once")).collect();
                live = vec![true; wave.len()];
            }
            let last: Vec<u32> = wave.iter().zip(&live).map(|(a, &l)| if l { a.last } else { 0 }).collect();
            logits = stepper.step(model, &mut cache, &last, reborrow(&mut hooks))?;
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every request finishes")).collect())
}

/// Samples one token per row of `logits` `[B, V]` (f32, on any device), drawing from `rngs[b]`
/// exactly as [`sample`] does, while copying only a few KB to the host. Greedy: a device
/// argmax. Plain temperature sampling (no top-k / top-p): inverse-CDF in two levels: the
/// probabilities are summed in blocks of `S` columns on the device, the host walks the block
/// sums with the row's uniform draw to find the block, and only that block's `S` probabilities
/// are copied back to find the token. Top-k / top-p copy the logits and use [`sample`].
pub fn sample_on_device(logits: &Tensor, p: &SamplingParams, rngs: &mut [&mut ChaCha8Rng]) -> Result<Vec<u32>> {
    let (b, v) = logits.dims2()?;
    if rngs.len() != b {
        return Err(Error::Invalid(format!("{} random generators for {b} rows of logits", rngs.len())));
    }
    if p.temperature <= 0.0 {
        return Ok(logits.argmax(1)?.to_vec1::<u32>()?);
    }
    if p.top_k > 0 || p.top_p < 1.0 {
        let rows = logits.to_vec2::<f32>()?;
        return Ok(rows.iter().zip(rngs.iter_mut()).map(|(l, r)| sample(l, p, r)).collect());
    }
    // Block width: a divisor of V near 256 when there is one, else pad V with zero probability.
    let s_w = (64..=512).rev().find(|w| v % w == 0).unwrap_or(256);
    let nb = v.div_ceil(s_w);
    let probs = crate::ops::softmax_last_dim(&(logits.to_dtype(DType::F32)? * (1.0 / p.temperature as f64))?)?;
    let probs =
        if nb * s_w == v { probs } else { Tensor::cat(&[&probs, &Tensor::zeros((b, nb * s_w - v), DType::F32, logits.device())?], 1)? };
    let sums = probs.reshape((b, nb, s_w))?.sum(2)?.to_vec2::<f32>()?;
    // (block, remaining mass inside it) per row.
    let pick: Vec<(usize, f64)> = sums
        .iter()
        .zip(rngs.iter_mut())
        .map(|(row, rng)| {
            let total: f64 = row.iter().map(|&x| x as f64).sum();
            walk(row, rng.random::<f64>() * total)
        })
        .collect();
    let idx: Vec<u32> = pick.iter().enumerate().map(|(r, &(blk, _))| (r * nb + blk) as u32).collect();
    let idx = Tensor::from_vec(idx, b, logits.device())?;
    let blocks = probs.reshape((b * nb, s_w))?.index_select(&idx, 0)?.to_vec2::<f32>()?;
    Ok(blocks.iter().zip(&pick).map(|(block, &(blk, u))| (blk * s_w + walk(block, u).0) as u32).collect())
}

/// Inverse CDF over unnormalised masses: the first index where `u` falls below the running sum,
/// and what is left of `u` inside it. Rounding can leave `u` past the end: then the last index
/// with mass (never a zero-probability padding column).
fn walk(masses: &[f32], mut u: f64) -> (usize, f64) {
    for (j, &x) in masses.iter().enumerate() {
        if u < x as f64 {
            return (j, u);
        }
        u -= x as f64;
    }
    (masses.iter().rposition(|&x| x > 0.0).unwrap_or(0), u)
}

/// Records `tok`; returns why the sequence ends, if it does.
fn accept(a: &mut Active, tok: u32, stop: &[u32], p: &SamplingParams, cache_len: usize, ctx: usize) -> Option<Finish> {
    if stop.contains(&tok) {
        return Some(Finish::Stop);
    }
    a.tokens.push(tok);
    a.last = tok;
    if a.tokens.len() >= p.max_new_tokens {
        return Some(Finish::Length);
    }
    if cache_len + 1 >= ctx {
        return Some(Finish::Context);
    }
    None
}

/// Picks one token from a row of logits. Greedy when `temperature == 0` (lowest index wins
/// ties); otherwise exactly one uniform draw from `rng`.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    if p.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let inv_t = 1.0 / p.temperature as f64;
    if (p.top_k == 0 || p.top_k >= logits.len()) && p.top_p >= 1.0 {
        return sample_full(logits, inv_t, rng);
    }
    // Candidates: all tokens, or the top k.
    let mut cand: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x as f64 * inv_t)).collect();
    let by_logit_desc = |a: &(u32, f64), b: &(u32, f64)| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
        cand.truncate(p.top_k);
    }
    let mx = cand.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let mut w: Vec<f64> = cand.iter().map(|c| c.1 - mx).collect();
    crate::vmath::exp_f64_in_place(&mut w);
    let mut sum = 0.0;
    for (c, e) in cand.iter_mut().zip(w) {
        c.1 = e;
        sum += e;
    }
    if p.top_p < 1.0 {
        cand.sort_by(by_logit_desc);
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            cum += c.1 / sum;
            if cum >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        sum = cand.iter().map(|c| c.1).sum();
    } else if p.top_k > 0 && p.top_k < logits.len() {
        // A fixed order makes the draw independent of select_nth's internal permutation.
        // (Without top-k the candidates are already in id order: no sort on the hot path.)
        cand.sort_by_key(|c| c.0);
    }
    let i = draw(cand.iter().map(|c| c.1), sum, rng);
    cand.get(i).map_or(0, |c| c.0)
}

/// One inverse-CDF draw over unnormalised weights in the order given (one uniform per call):
/// the first index whose running sum passes `u * sum`, or the last index when rounding leaves
/// `u` past the end.
fn draw(weights: impl IntoIterator<Item = f64>, sum: f64, rng: &mut ChaCha8Rng) -> usize {
    let u: f64 = rng.random::<f64>() * sum;
    let mut cum = 0.0;
    let mut last = 0;
    for (i, e) in weights.into_iter().enumerate() {
        cum += e;
        if u < cum {
            return i;
        }
        last = i;
    }
    last
}

/// [`sample`] over the whole vocabulary (no top-k, no top-p: the hot path of batched sampling)
/// without building a candidate list: the same weights, sum and draw in token-id order.
fn sample_full(logits: &[f32], inv_t: f64, rng: &mut ChaCha8Rng) -> u32 {
    thread_local! {
        // One vocabulary-sized buffer per thread, reused across steps (was a fresh allocation
        // of 16 bytes per token per row per step).
        static WEIGHTS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    WEIGHTS.with(|w| {
        let mut w = w.borrow_mut();
        w.clear();
        w.extend(logits.iter().map(|&x| x as f64 * inv_t));
        let mx = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        w.iter_mut().for_each(|v| *v -= mx);
        crate::vmath::exp_f64_in_place(&mut w);
        let sum: f64 = w.iter().sum();
        draw(w.iter().copied(), sum, rng) as u32
    })
}

/// Shortens the trait object's lifetime so the hooks can be lent to one forward call at a time.
pub(crate) fn reborrow<'s>(h: &'s mut Option<&mut dyn Hooks>) -> Option<&'s mut dyn Hooks> {
    match h {
        Some(h) => Some(&mut **h),
        None => None,
    }
}
