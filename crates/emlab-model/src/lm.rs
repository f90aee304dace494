//! A loaded language model: weights, tokenizer and chat template from one source, checked to
//! agree, plus the chat-level helpers every stage uses.
//!
//! ```no_run
//! use emlab_model::lm::Lm;
//! use emlab_model::chat::Message;
//! use emlab_model::generate::SamplingParams;
//! let lm = Lm::load(&emlab_model::fetch::ensure_default_model()?, &Default::default())?;
//! let prompt = lm.chat_prompt(&[Message::user("What is the capital of France?")])?;
//! let out = lm.sample_texts(&[prompt], &[0], &SamplingParams::greedy(20), None, &mut |_, _| {})?;
//! println!("{}", out[0].text);
//! # Ok::<(), emlab_model::Error>(())
//! ```

use crate::chat::{ChatTemplate, Message};
use crate::generate::{generate, Event, Finish, Request, SamplingParams};
use crate::hooks::Hooks;
use crate::load::Source;
use crate::model::{LoadOptions, Model};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::Path;

/// Model + tokenizer + chat template.
pub struct Lm {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub source: Source,
}

/// One sampled continuation, decoded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

impl Lm {
    /// Loads everything from a GGUF file or an HF folder, and checks that the tokenizer's
    /// vocabulary fits the model's embedding.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Lm> {
        let source = Source::detect(path)?;
        let (tokenizer, template) = tokenizer_and_template(path)?;
        let model = Model::load(path, opts)?;
        let (tv, mv) = (tokenizer.vocab_size(), model.config.vocab_size);
        if tv > mv {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer has {tv} tokens but the model's embedding has {mv} rows (mismatched tokenizer?)",
                tokenizer.source().display()
            )));
        }
        Ok(Lm { model, tokenizer, template, source })
    }

    /// Renders a conversation with the model's own template (with the generation prompt) and
    /// tokenizes it. The template already holds the special tokens: no BOS is added.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// The ids that end an answer.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.tokenizer.eos_ids().to_vec()
    }

    /// Samples one continuation per prompt, `seeds[i]` for prompt `i`; decoded without special
    /// tokens. `on_event` streams token events.
    pub fn sample_texts(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        params: &SamplingParams,
        hooks: Option<&mut dyn Hooks>,
        on_event: &mut dyn FnMut(usize, Event),
    ) -> Result<Vec<Sample>> {
        if prompts.len() != seeds.len() {
            return Err(Error::Invalid(format!("{} prompts but {} seeds", prompts.len(), seeds.len())));
        }
        let reqs: Vec<Request> = prompts.iter().zip(seeds).map(|(p, s)| Request { prompt: p.clone(), seed: *s }).collect();
        let gens = generate(&self.model, &reqs, params, &self.stop_ids(), hooks, on_event)?;
        gens.into_iter().map(|g| Ok(Sample { text: self.tokenizer.decode(&g.tokens, true)?, tokens: g.tokens, finish: g.finish })).collect()
    }
}

/// The tokenizer and chat template of a GGUF file or HF folder, without loading the weights.
pub fn tokenizer_and_template(path: &Path) -> Result<(Tokenizer, ChatTemplate)> {
    Ok(match Source::detect(path)? {
        Source::Gguf { path } => {
            // One header read (the vocabulary makes it megabytes) for both.
            let (content, _) = crate::load::read_gguf(&path)?;
            (Tokenizer::from_gguf_metadata(&content.metadata, &path)?, ChatTemplate::from_gguf_metadata(&content.metadata, &path)?)
        }
        Source::Hf { dir } => (Tokenizer::from_hf_dir(&dir)?, ChatTemplate::from_hf_dir(&dir)?),
    })
}

/// A per-sample seed that depends only on the run seed, the prompt id and the sample index, so a
/// sample is reproducible whatever batch or order it runs in (SplitMix64 finaliser).
pub fn sample_seed(run_seed: u64, prompt_id: &str, sample: usize) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ run_seed;
    for b in prompt_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut z = h ^ (sample as u64).wrapping_mul(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}
