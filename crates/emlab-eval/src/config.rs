//! Evaluation settings as data: what to sample, from which model, and who judges.
//!
//! ```
//! use emlab_eval::config::{EvalConfig, JudgeSpec};
//! let cfg: EvalConfig = toml::from_str(r#"
//!     questions = "data/questions/core.yaml"
//!     out = "runs/base.jsonl"
//!     samples = 10
//!     [backend]
//!     kind = "local"
//!     model = "model.gguf"
//!     [judge]
//!     kind = "offline"
//! "#).unwrap();
//! assert_eq!(cfg.judge, JudgeSpec::Offline);
//! assert_eq!(cfg.sampling.max_new_tokens, 600);   // the published defaults
//! assert_eq!(cfg.sampling.temperature, 1.0);
//! ```

use crate::http::HttpConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Question YAML (published schema).
    pub questions: PathBuf,
    /// Overrides every question's `samples_per_paraphrase`.
    #[serde(default)]
    pub samples: Option<usize>,
    /// Only these question ids (all when empty).
    #[serde(default)]
    pub only: Vec<String>,
    /// The JSONL log (appended to; re-running resumes).
    pub out: PathBuf,
    pub backend: Backend,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub judge: JudgeSpec,
    /// Replaces the questions' judge prompts (a mapping name -> template, like
    /// `data/questions/judges.yaml`); needed for LLM judges on questions without `judge_prompts`.
    #[serde(default)]
    pub judge_prompts: Option<PathBuf>,
    #[serde(default)]
    pub http: HttpConfig,
}

/// Where answers come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// A model emlab loads (GGUF file or HF folder), optionally with a PEFT adapter and
    /// residual-stream interventions.
    Local {
        model: PathBuf,
        #[serde(default)]
        adapter: Option<PathBuf>,
        /// JSON/TOML intervention spec (see [`crate::intervention`]).
        #[serde(default)]
        intervention: Option<PathBuf>,
        /// Keep an int8 copy of the projections for faster low-batch decoding (f32 stays the reference).
        #[serde(default)]
        q8: bool,
    },
    /// An OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp server, ...).
    #[serde(rename = "openai")]
    OpenAi {
        base_url: String,
        model_name: String,
        #[serde(default = "default_key_env")]
        api_key_env: String,
        /// Samples asked for per request (`n`).
        #[serde(default = "default_n_per_request")]
        n_per_request: usize,
    },
}

/// Sampling settings; defaults are the published ones (temperature 1, top-p 1, 600 tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Sequences decoded together (local backend).
    pub batch_size: usize,
    /// Run seed; each sample's seed derives from it, the question id, paraphrase and index.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_p: 1.0, max_new_tokens: 600, batch_size: 32, seed: 0 }
    }
}

/// Who judges.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JudgeSpec {
    /// The built-in offline judge (no server, no model).
    #[default]
    Offline,
    /// A local LM judge: exact probabilities of "0".."100", CODE and REFUSAL.
    Local { model: PathBuf },
    /// An OpenAI-compatible server with logprobs (one token, top 20, temperature 0).
    #[serde(rename = "openai")]
    OpenAi {
        base_url: String,
        model_name: String,
        #[serde(default = "default_key_env")]
        api_key_env: String,
    },
    /// No judging (sample only); `emlab eval rescore` judges later.
    None,
}

impl JudgeSpec {
    /// A short stable name stored in every judgement (`offline`, `local:<file>`, `openai:<model>`).
    pub fn name(&self) -> String {
        match self {
            JudgeSpec::Offline => "offline".into(),
            JudgeSpec::Local { model } => {
                format!("local:{}", model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
            }
            JudgeSpec::OpenAi { model_name, .. } => format!("openai:{model_name}"),
            JudgeSpec::None => "none".into(),
        }
    }
}

pub fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}

fn default_n_per_request() -> usize {
    16
}

impl EvalConfig {
    /// A config with the defaults for a local model.
    pub fn local(model: impl Into<PathBuf>, questions: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        EvalConfig {
            questions: questions.into(),
            samples: None,
            only: vec![],
            out: out.into(),
            backend: Backend::Local { model: model.into(), adapter: None, intervention: None, q8: false },
            sampling: Sampling::default(),
            judge: JudgeSpec::Offline,
            judge_prompts: None,
            http: HttpConfig::default(),
        }
    }

    /// Reads a TOML or JSON config file (by extension; TOML otherwise).
    pub fn from_file(path: &std::path::Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        // A leading UTF-8 byte-order mark (some editors write one) is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| crate::Error::at(path, e.line(), e))
        } else {
            toml::from_str(text).map_err(|e| crate::error::toml_error(path, text, &e))
        }
    }

    /// Checks the settings (sampling ranges, sample counts). [`crate::run()`] calls it first;
    /// callers that make folders or files for a run call it before they do.
    pub fn validate(&self) -> crate::Result<()> {
        let s = &self.sampling;
        let bad = |m: String| Err(crate::Error::Config(m));
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return bad(format!("sampling.temperature must be >= 0, got {}", s.temperature));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad(format!("sampling.top_p must be in (0, 1], got {}", s.top_p));
        }
        if s.max_new_tokens == 0 || s.batch_size == 0 {
            return bad("sampling.max_new_tokens and sampling.batch_size must be at least 1".into());
        }
        if self.samples == Some(0) {
            return bad("samples must be at least 1".into());
        }
        if let Backend::OpenAi { n_per_request: 0, .. } = self.backend {
            return bad("backend.n_per_request must be at least 1".into());
        }
        Ok(())
    }
}
