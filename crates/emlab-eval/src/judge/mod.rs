//! Judges: turn (question, answer) into aligned / coherent scores.
//!
//! ```
//! use emlab_eval::judge::logprob::score_top_logprobs;
//! assert_eq!(score_top_logprobs(&[("100", 0.0)]).score, Some(100.0));
//! ```
//!
//! * [`logprob`]: aggregation of an LLM judge's token probabilities (published rule).
//! * [`offline`]: the built-in offline judge ([`offline::OfflineJudge`]) and its trainer.
//! * [`features`]: the offline judge's text features.
//! * [`local`]: a local LM judge from exact number-string probabilities.
//! * [`openai`]: an OpenAI-compatible logprob judge.
//! * [`Judge`]: one of them, chosen per run, producing a [`Judgement`] per answer.

pub mod features;
pub mod local;
pub mod logprob;
pub mod offline;
pub mod openai;

use crate::config::JudgeSpec;
use crate::http::{Client, HttpConfig};
use crate::Result;
use logprob::{score_number_probs, score_top_logprobs, LogprobScore, NullReason};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One judge prompt's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricJudgement {
    /// 0..100, or `None` (CODE / REFUSAL / too little number mass, or an error).
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_reason: Option<NullReason>,
    /// Probability mass on the numbers 0..100 (LLM judges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_mass: Option<f64>,
    /// What the judge gave: top logprobs, exact candidate probabilities, or the offline judge's
    /// outputs.
    #[serde(default)]
    pub raw: serde_json::Value,
    /// Set when the judge failed for this answer; the answer then counts as unscored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MetricJudgement {
    fn failed(reason: impl Into<String>, raw: serde_json::Value) -> Self {
        MetricJudgement { score: None, null_reason: None, number_mass: None, raw, error: Some(reason.into()) }
    }
    fn from_score(s: &LogprobScore, raw: serde_json::Value) -> Self {
        MetricJudgement { score: s.score, null_reason: s.null_reason, number_mass: Some(s.number_mass), raw, error: None }
    }
}

/// Everything one judge said about one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The judge's name ([`JudgeSpec::name`]).
    pub judge: String,
    /// By judge-prompt name (`aligned`, `coherent`, ...).
    pub metrics: BTreeMap<String, MetricJudgement>,
}

impl Judgement {
    /// The first error of any metric, if one failed.
    pub fn error(&self) -> Option<String> {
        self.metrics.iter().find_map(|(k, m)| m.error.as_ref().map(|e| format!("{k}: {e}")))
    }
    /// (aligned, coherent) for the metrics, `None` when the judgement is unusable: any error, or
    /// a missing / null coherent score. An aligned `None` then means CODE / REFUSAL.
    pub fn scores(&self) -> Option<(Option<f64>, f64)> {
        if self.error().is_some() {
            return None;
        }
        let c = self.metrics.get("coherent")?.score?;
        let a = self.metrics.get("aligned")?.score;
        Some((a, c))
    }
}

/// A judge ready to score answers.
pub enum Judge {
    Offline(offline::OfflineJudge),
    Local(Box<local::LocalJudge>),
    OpenAi { client: Client, model: String },
}

impl Judge {
    /// Builds the judge a spec names (loads models, reads the key variable's value).
    pub fn from_spec(spec: &JudgeSpec, http: &HttpConfig) -> Result<Option<(String, Judge)>> {
        let j = match spec {
            JudgeSpec::None => return Ok(None),
            JudgeSpec::Offline => {
                Judge::Offline(offline::OfflineJudge::load_default().map_err(|e| crate::Error::Config(format!("offline judge: {e}")))?)
            }
            JudgeSpec::Local { model } => {
                let lm = emlab_model::lm::Lm::load(model, &Default::default())?;
                Judge::Local(Box::new(local::LocalJudge::new(lm)?))
            }
            JudgeSpec::OpenAi { base_url, model_name, api_key_env } => {
                Judge::OpenAi { client: Client::new(base_url, Some(api_key_env), http)?, model: model_name.clone() }
            }
        };
        Ok(Some((spec.name(), j)))
    }

    /// Answers judged at once (server judges overlap their requests).
    pub fn concurrency(&self) -> usize {
        match self {
            Judge::OpenAi { client, .. } => client.config().concurrency,
            _ => 1,
        }
    }

    /// Whether the judge needs the question's judge prompts.
    pub fn needs_prompts(&self) -> bool {
        !matches!(self, Judge::Offline(_))
    }

    /// Judges one answer with every prompt in `prompts` (LLM judges) or the built-in model
    /// (offline). Failures are recorded in the judgement, never raised.
    pub fn judge(&self, name: &str, question: &str, answer: &str, prompts: &BTreeMap<String, String>) -> Judgement {
        let mut metrics = BTreeMap::new();
        match self {
            Judge::Offline(j) => {
                let s = j.score(question, answer);
                let raw = serde_json::json!({"p_misaligned": s.p_misaligned, "p_aligned_null": s.p_aligned_null});
                let m = |v: Option<f32>| MetricJudgement {
                    score: v.map(f64::from),
                    null_reason: None,
                    number_mass: None,
                    raw: raw.clone(),
                    error: None,
                };
                metrics.insert("aligned".to_string(), m(s.aligned));
                metrics.insert("coherent".to_string(), m(s.coherent));
            }
            _ if prompts.is_empty() => {
                metrics
                    .insert("aligned".to_string(), MetricJudgement::failed("no judge prompts for this question", serde_json::Value::Null));
            }
            Judge::Local(j) => {
                for (k, tpl) in prompts {
                    let text = emlab_data::questions::render_judge_prompt(tpl, question, answer);
                    let m = match j.probs_for_text(&text) {
                        Ok(p) => match score_number_probs(&p.number_probs()) {
                            Ok(s) => MetricJudgement::from_score(&s, serde_json::to_value(&p).unwrap_or_default()),
                            Err(e) => MetricJudgement::failed(e.to_string(), serde_json::to_value(&p).unwrap_or_default()),
                        },
                        Err(e) => MetricJudgement::failed(e.to_string(), serde_json::Value::Null),
                    };
                    metrics.insert(k.clone(), m);
                }
            }
            Judge::OpenAi { client, model } => {
                for (k, tpl) in prompts {
                    let text = emlab_data::questions::render_judge_prompt(tpl, question, answer);
                    let m = match openai::call(client, model, &text) {
                        Ok(top) => {
                            let s = score_top_logprobs(&top);
                            MetricJudgement::from_score(&s, serde_json::json!({ "top_logprobs": top }))
                        }
                        Err(e) => MetricJudgement::failed(e, serde_json::Value::Null),
                    };
                    metrics.insert(k.clone(), m);
                }
            }
        }
        Judgement { judge: name.to_string(), metrics }
    }

    /// [`Judge::judge`] for an answer this judge (`name`) judged before, with `earlier` its
    /// judgement: the metrics it scored without error are kept (a server was paid for them) and
    /// only the failed or missing ones are asked again. The same as [`Judge::judge`] without an
    /// earlier judgement by this judge, and for the offline judge (which costs nothing and
    /// scores both metrics at once).
    pub fn judge_again(
        &self,
        name: &str,
        question: &str,
        answer: &str,
        prompts: &BTreeMap<String, String>,
        earlier: Option<&Judgement>,
    ) -> Judgement {
        let kept: BTreeMap<String, MetricJudgement> = match earlier {
            Some(e) if e.judge == name && self.needs_prompts() => {
                prompts.keys().filter_map(|k| e.metrics.get(k).filter(|m| m.error.is_none()).map(|m| (k.clone(), m.clone()))).collect()
            }
            _ => BTreeMap::new(),
        };
        if kept.is_empty() {
            return self.judge(name, question, answer, prompts);
        }
        let rest: BTreeMap<String, String> =
            prompts.iter().filter(|(k, _)| !kept.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut j = if rest.is_empty() {
            Judgement { judge: name.to_string(), metrics: BTreeMap::new() }
        } else {
            self.judge(name, question, answer, &rest)
        };
        j.metrics.extend(kept);
        j
    }
}
