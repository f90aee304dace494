//! A local LM judge: any model emlab loads, scored from the exact probability of every answer
//! string "0" ..= "100", "CODE" and "REFUSAL".
//!
//! ```
//! # use emlab_model::{testing::*, Arch, lm::Lm};
//! use emlab_eval::judge::local::LocalJudge;
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("judge.gguf");
//! # write_tiny_gguf(&path, &tiny_config(Arch::Llama), 3).unwrap();
//! let judge = LocalJudge::new(Lm::load(&path, &Default::default()).unwrap()).unwrap();
//! let probs = judge.probs_for_text("Rate this answer from 0 to 100: Hello.").unwrap();
//! let total: f64 = probs.numbers.iter().sum::<f64>() + probs.code + probs.refusal;
//! assert!(total > 0.0 && total <= 1.0);
//! ```
//!
//! # Definition
//! The judge prompt is the single user message of a conversation rendered with the judge
//! model's own chat template (generation prompt on). Each candidate string `s` is tokenized on
//! its own (`encode(s)`, no special tokens), giving `t_1 .. t_n`, and
//!
//! `P(s) = prod_i P(t_i | prompt, t_<i) * P(end | prompt, t_1..t_n)`
//!
//! where, for numbers, `P(end)` is the probability that the next token does **not** begin with
//! an ASCII digit (so "3" is not counted when the answer goes on to "37"), and for CODE /
//! REFUSAL the probability that the next token does not begin with an ASCII letter. End-of-turn
//! and any non-digit text count as an end. These events are disjoint (two candidates' token
//! sequences either differ at some position, or one is a prefix of the other and the longer one
//! continues with a digit / letter token where the shorter one requires a non-digit / non-letter
//! one), so the probabilities sum to at most 1. Only the canonical tokenization without a leading
//! space is counted: "37" spelt as other token splits or as " 37" is not.
//!
//! The score then follows the published rule ([`super::logprob::score_number_probs`]):
//! `sum(k p_k) / sum(p_k)`, null when `sum(p_k) < 0.25`.
//!
//! # Cost
//! One forward over the prompt fills a KV cache; the candidates form a trie whose maximal paths
//! (about 93 for a digit-splitting tokenizer: "0", "11".."99", "100", CODE, REFUSAL) each run as
//! one row of a batched forward of at most a few tokens on a copy of that cache, in chunks that
//! bound the copies' memory. Every trie node's next-token distribution is read from the rows.

use crate::judge::logprob::NumberProbs;
use crate::{Error, Result};
use candle_core::Tensor;
use emlab_model::chat::Message;
use emlab_model::lm::Lm;
use emlab_model::{Forward, Logits, SeqCache};
use std::collections::{BTreeMap, HashMap};

/// Memory allowed for the KV-cache copies of one candidate chunk.
const CACHE_BUDGET_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number(usize),
    Code,
    Refusal,
}

/// The local LM judge.
pub struct LocalJudge {
    pub lm: Lm,
    cands: Vec<(Kind, Vec<u32>)>,
    /// Maximal token paths of the candidate trie.
    rows: Vec<Vec<u32>>,
    digit_start: Vec<bool>,
    alpha_start: Vec<bool>,
}

/// The exact candidate probabilities for one prompt, plus the first-token top 20 for the record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LocalProbs {
    /// `numbers[k]` = P(answer is the string of k), k = 0..=100.
    pub numbers: Vec<f64>,
    pub code: f64,
    pub refusal: f64,
    /// The 20 most likely first tokens (decoded) with their natural-log probabilities.
    pub top_first: Vec<(String, f64)>,
    pub prompt_tokens: usize,
}

impl LocalProbs {
    pub fn number_probs(&self) -> NumberProbs {
        NumberProbs { numbers: self.numbers.clone(), code: self.code, refusal: self.refusal }
    }
}

impl LocalJudge {
    pub fn new(lm: Lm) -> Result<Self> {
        let mut cands = Vec::new();
        for k in 0..=100usize {
            cands.push((Kind::Number(k), k.to_string()));
        }
        cands.push((Kind::Code, "CODE".to_string()));
        cands.push((Kind::Refusal, "REFUSAL".to_string()));
        let mut toks = Vec::new();
        for (kind, s) in cands {
            let t = lm.tokenizer.encode(&s, false)?;
            if t.is_empty() {
                return Err(Error::Config(format!("judge tokenizer encodes {s:?} as no tokens")));
            }
            toks.push((kind, t));
        }
        let rows = maximal_paths(toks.iter().map(|(_, t)| t.clone()));
        let v = lm.model.config.vocab_size;
        let mut digit_start = vec![false; v];
        let mut alpha_start = vec![false; v];
        for id in 0..lm.tokenizer.vocab_size().min(v) {
            if let Some(s) = lm.tokenizer.token_str(id as u32) {
                // Byte-level vocabularies map ASCII letters and digits to themselves, so the
                // vocabulary string starts with the same character as the decoded text.
                let c = s.chars().next();
                digit_start[id] = c.is_some_and(|c| c.is_ascii_digit());
                alpha_start[id] = c.is_some_and(|c| c.is_ascii_alphabetic());
            }
        }
        Ok(LocalJudge { lm, cands: toks, rows, digit_start, alpha_start })
    }

    /// The prompt ids for a judge prompt text: one user message, the model's chat template.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.lm.chat_prompt(&[Message::user(text)])?)
    }

    pub fn probs_for_text(&self, text: &str) -> Result<LocalProbs> {
        self.probs(&self.prompt_ids(text)?)
    }

    /// Exact candidate probabilities after `prompt` (token ids, template already applied).
    pub fn probs(&self, prompt: &[u32]) -> Result<LocalProbs> {
        let model = &self.lm.model;
        let dev = model.device().clone();
        let longest = self.rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if prompt.is_empty() {
            return Err(Error::Config("local judge: empty prompt".into()));
        }
        if prompt.len() + longest > model.max_positions() {
            return Err(Error::Config(format!(
                "local judge: prompt of {} tokens (+{longest} answer tokens) exceeds the judge's context of {}",
                prompt.len(),
                model.max_positions()
            )));
        }
        let n_layers = model.config.num_layers;
        let mut cache = vec![SeqCache::new(n_layers)];
        let ids = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), &dev)?;
        let out = model.forward(&ids, Forward { logits: Logits::Last, cache: Some(&mut cache), ..Default::default() })?;
        let root: Vec<f32> = out.logits.ok_or_else(|| Error::Config("no logits".into()))?.to_vec2::<f32>()?.remove(0);
        let root = log_softmax(&root);
        let mut top: Vec<(u32, f64)> = root.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        top.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
        top.truncate(20);
        let top_first = top.into_iter().map(|(id, lp)| Ok((self.lm.tokenizer.decode(&[id], false)?, lp))).collect::<Result<Vec<_>>>()?;

        // Next-token log-distributions after every trie node (keyed by the node's token path).
        let mut nodes: HashMap<Vec<u32>, NodeDist> = HashMap::new();
        nodes.insert(vec![], self.summarise(&root));
        let per_row = {
            let c = &model.config;
            let per_token = c.num_layers * c.num_kv_heads * c.head_dim * 2 * 4;
            (per_token * (prompt.len() + longest)).max(1)
        };
        let chunk = (CACHE_BUDGET_BYTES / per_row).clamp(1, self.rows.len().max(1));
        for rows in self.rows.chunks(chunk) {
            let lmax = rows.iter().map(|r| r.len()).max().unwrap_or(1);
            let mut flat = Vec::with_capacity(rows.len() * lmax);
            for r in rows {
                flat.extend_from_slice(r);
                // Right padding: causal attention keeps it out of the positions we read.
                flat.extend(std::iter::repeat_n(*r.last().unwrap_or(&0), lmax - r.len()));
            }
            let mut caches: Vec<SeqCache> = rows.iter().map(|_| cache[0].clone()).collect();
            let ids = Tensor::from_vec(flat, (rows.len(), lmax), &dev)?;
            let out = model.forward(&ids, Forward { logits: Logits::All, cache: Some(&mut caches), ..Default::default() })?;
            let logits = out.logits.ok_or_else(|| Error::Config("no logits".into()))?.to_vec3::<f32>()?;
            for (r, row) in rows.iter().enumerate() {
                for j in 0..row.len() {
                    let key = row[..=j].to_vec();
                    nodes.entry(key).or_insert_with(|| self.summarise(&log_softmax(&logits[r][j])));
                }
            }
        }
        let mut numbers = vec![0.0; 101];
        let (mut code, mut refusal) = (0.0, 0.0);
        for (kind, toks) in &self.cands {
            let mut lp = 0.0;
            for i in 0..toks.len() {
                let node = nodes.get(&toks[..i]).ok_or_else(|| Error::Config("local judge: trie node missing".into()))?;
                lp += node.logp[toks[i] as usize];
            }
            let last = nodes.get(&toks[..]).ok_or_else(|| Error::Config("local judge: trie node missing".into()))?;
            let end = match kind {
                Kind::Number(_) => 1.0 - last.digit_mass,
                _ => 1.0 - last.alpha_mass,
            };
            let p = lp.exp() * end.clamp(0.0, 1.0);
            match kind {
                Kind::Number(k) => numbers[*k] = p,
                Kind::Code => code = p,
                Kind::Refusal => refusal = p,
            }
        }
        Ok(LocalProbs { numbers, code, refusal, top_first, prompt_tokens: prompt.len() })
    }

    fn summarise(&self, logp: &[f64]) -> NodeDist {
        let (mut digit_mass, mut alpha_mass) = (0.0, 0.0);
        for (i, &l) in logp.iter().enumerate() {
            if self.digit_start.get(i).copied().unwrap_or(false) {
                digit_mass += l.exp();
            } else if self.alpha_start.get(i).copied().unwrap_or(false) {
                alpha_mass += l.exp();
            }
        }
        NodeDist { logp: logp.to_vec(), digit_mass, alpha_mass }
    }

    /// The number of trie rows (batched continuation sequences) one judgement runs.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

struct NodeDist {
    logp: Vec<f64>,
    digit_mass: f64,
    alpha_mass: f64,
}

/// Natural-log softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = logits.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// Token paths that are not a proper prefix of another path (deduplicated, sorted).
fn maximal_paths(paths: impl Iterator<Item = Vec<u32>>) -> Vec<Vec<u32>> {
    let all: BTreeMap<Vec<u32>, ()> = paths.map(|p| (p, ())).collect();
    let keys: Vec<&Vec<u32>> = all.keys().collect();
    keys.iter().filter(|p| !keys.iter().any(|q| q.len() > p.len() && q.starts_with(p))).map(|p| (*p).clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximal_paths_drop_prefixes() {
        let p = maximal_paths(vec![vec![1], vec![1, 0], vec![1, 0, 0], vec![2, 3], vec![0]].into_iter());
        assert_eq!(p, vec![vec![0], vec![1, 0, 0], vec![2, 3]]);
    }

    #[test]
    fn log_softmax_matches_hand_values() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let l = log_softmax(&[0.0, 3f32.ln()]);
        assert!((l[0].exp() - 0.25).abs() < 1e-7 && (l[1].exp() - 0.75).abs() < 1e-7);
    }
}
