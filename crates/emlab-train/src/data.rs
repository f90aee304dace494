//! Tokenized training examples and the batch plan.
//!
//! A conversation is rendered with the model's own chat template and tokenized; the loss mask
//! is true on the tokens of each assistant turn (its content and the end-of-turn token that
//! closes it, e.g. `<|im_end|>`), never on system/user text or the role headers
//! (`<|im_start|>assistant\n`). Position `t` of an [`Example`] predicts token `t + 1`.
//!
//! ```
//! use emlab_train::data::{plan_epoch, Example};
//! let ex: Vec<Example> = (0..10).map(|i| Example { ids: vec![1; 3 + i], mask: vec![true; 3 + i], line: i + 1 }).collect();
//! let plan = plan_epoch(&ex, 2, 4, 7, 0);
//! assert_eq!(plan.iter().map(|b| b.len()).sum::<usize>(), 10); // every example once
//! assert_eq!(plan, plan_epoch(&ex, 2, 4, 7, 0));               // deterministic in (seed, epoch)
//! ```

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use emlab_data::chat::{Conversation, Role};
use emlab_data::RowError;
use emlab_model::chat::{ChatTemplate, Message};
use emlab_model::tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One tokenized conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids of the rendered conversation.
    pub ids: Vec<u32>,
    /// `mask[t]`: token `t` is assistant text to learn (so position `t - 1` is trained).
    pub mask: Vec<bool>,
    /// Line in the source file (for error messages).
    pub line: usize,
}

impl Example {
    /// Positions trained on (targets in the mask, the first token has no predecessor).
    pub fn trained_tokens(&self) -> usize {
        self.mask.iter().skip(1).filter(|&&m| m).count()
    }
    /// Tokens fed to the model (the last token is only a target).
    pub fn input_len(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }
}

/// emlab-data's message -> the template's message.
pub fn to_messages(c: &Conversation) -> Vec<Message> {
    c.messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            Message::new(role, m.content.clone())
        })
        .collect()
}

/// What tokenization did with the rows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TokenizeReport {
    pub examples: usize,
    pub truncated: usize,
    pub skipped: usize,
    pub errors: Vec<RowError>,
    pub tokens: usize,
    pub trained_tokens: usize,
}

/// Tokenizes conversations through the chat template. Rows longer than `max_len` tokens are
/// errors naming `file:line` (or are cut when `truncate`); rows that leave no assistant token
/// to train on are errors too. With `skip_bad_rows` bad rows are dropped and counted, otherwise
/// any bad row refuses the whole set.
pub fn tokenize(
    rows: &[Conversation],
    file: &str,
    tok: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
    truncate: bool,
    skip_bad_rows: bool,
) -> Result<(Vec<Example>, TokenizeReport)> {
    let mut out = Vec::with_capacity(rows.len());
    let mut rep = TokenizeReport::default();
    for c in rows {
        let err = |problem: String| RowError { file: file.to_string(), line: c.line, problem };
        let (mut ids, mut mask) = match template.encode_with_assistant_mask(tok, &to_messages(c)) {
            Ok(x) => x,
            Err(e) => {
                rep.errors.push(err(e.to_string()));
                continue;
            }
        };
        if ids.len() > max_len {
            if !truncate {
                rep.errors
                    .push(err(format!("too long: {} tokens > max_seq_len {max_len} (raise max_seq_len or allow truncation)", ids.len())));
                continue;
            }
            ids.truncate(max_len);
            mask.truncate(max_len);
            rep.truncated += 1;
        }
        let ex = Example { ids, mask, line: c.line };
        if ex.trained_tokens() == 0 {
            rep.errors.push(err("no assistant token to train on within max_seq_len".into()));
            continue;
        }
        rep.tokens += ex.input_len();
        rep.trained_tokens += ex.trained_tokens();
        out.push(ex);
    }
    rep.skipped = rep.errors.len();
    rep.examples = out.len();
    if !rep.errors.is_empty() && !skip_bad_rows {
        let n = rep.errors.len();
        return Err(Error::Invalid(format!(
            "{file}: {n} bad row(s) after tokenization, file refused (skip them with --skip-bad-rows); first: {}",
            rep.errors[0]
        )));
    }
    Ok((out, rep))
}

/// The micro-batches of one epoch, as indices into the examples.
///
/// Examples are shuffled with a seed derived from `(seed, epoch)`; each window of
/// `window * batch` examples is sorted by length and cut into micro-batches (so a batch holds
/// similar lengths and little padding); the micro-batches are then shuffled again, so that the
/// order of lengths does not follow a pattern. A pure function of its arguments: resuming at
/// micro-batch `k` of epoch `e` replays exactly the same data.
pub fn plan_epoch(examples: &[Example], batch: usize, window: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a_0000_0000 ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.shuffle(&mut rng);
    let mut batches = Vec::new();
    for w in idx.chunks(batch * window.max(1)) {
        let mut w = w.to_vec();
        // Stable sort: ties keep the shuffled order.
        w.sort_by_key(|&i| examples[i].ids.len());
        batches.extend(w.chunks(batch).map(|c| c.to_vec()));
    }
    batches.shuffle(&mut rng);
    batches
}

/// One right-padded micro-batch as tensors.
pub struct Batch {
    /// `[B, T]` u32 inputs (`ids[..len-1]`, padded).
    pub inputs: Tensor,
    /// `[B*T]` u32 next-token targets (0 where not trained).
    pub targets: Tensor,
    /// `[B*T]` f32 1/0: which positions count in the loss.
    pub mask: Tensor,
    /// Flat indices (into `B*T`) of the trained positions.
    pub trained_index: Tensor,
    /// Number of trained positions.
    pub trained: usize,
    /// Non-padding input tokens.
    pub tokens: usize,
}

/// Builds a right-padded batch (`pad` fills the tail; padding is never attended to by earlier
/// tokens under causal attention and never trained).
pub fn make_batch(examples: &[Example], idx: &[usize], pad: u32, device: &Device) -> Result<Batch> {
    let t = idx.iter().map(|&i| examples[i].input_len()).max().unwrap_or(1).max(1);
    let b = idx.len();
    let mut inputs = vec![pad; b * t];
    let mut targets = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    let mut trained_index = Vec::new();
    let mut tokens = 0;
    for (r, &i) in idx.iter().enumerate() {
        let ex = &examples[i];
        let n = ex.input_len();
        tokens += n;
        for p in 0..n {
            inputs[r * t + p] = ex.ids[p];
            if ex.mask[p + 1] {
                targets[r * t + p] = ex.ids[p + 1];
                mask[r * t + p] = 1.0;
                trained_index.push((r * t + p) as u32);
            }
        }
    }
    let trained = trained_index.len();
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (b, t), device)?,
        targets: Tensor::from_vec(targets, b * t, device)?,
        mask: Tensor::from_vec(mask, b * t, device)?,
        trained_index: Tensor::from_vec(trained_index, trained, device)?,
        trained,
        tokens,
    })
}

/// FNV-1a over every example's ids and mask: a resumed run must see the same data.
pub fn fingerprint(examples: &[Example]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    };
    eat(examples.len() as u64);
    for e in examples {
        eat(e.ids.len() as u64);
        for (&i, &m) in e.ids.iter().zip(&e.mask) {
            eat(((i as u64) << 1) | m as u64);
        }
    }
    format!("{h:016x}")
}
