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

pub mod features;
pub mod logprob;
pub mod offline;
