//! An OpenAI-compatible judge: one token at temperature 0 with the top 20 logprobs, scored by
//! the published rule ([`super::logprob::score_top_logprobs`]).
//!
//! ```
//! use emlab_eval::judge::openai::{judge_request, parse_top_logprobs};
//! let req = judge_request("gpt-4o-2024-08-06", "Rate: ...");
//! assert_eq!(req["max_tokens"], 1);
//! assert_eq!(req["top_logprobs"], 20);
//! let resp = serde_json::json!({"choices": [{"message": {"content": "90"},
//!     "logprobs": {"content": [{"token": "90", "logprob": -0.1,
//!         "top_logprobs": [{"token": "90", "logprob": -0.1}, {"token": "80", "logprob": -2.4}]}]}}]});
//! let top = parse_top_logprobs(&resp).unwrap();
//! assert_eq!(top[1], ("80".to_string(), -2.4));
//! ```

use crate::http::Client;
use serde_json::{json, Value};

/// The chat-completions body of one judge call.
pub fn judge_request(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": true,
        "top_logprobs": 20,
        "seed": 0,
    })
}

/// The first generated token's top logprobs, or the reason the response has none.
pub fn parse_top_logprobs(resp: &Value) -> Result<Vec<(String, f64)>, String> {
    let choice =
        resp.get("choices").and_then(Value::as_array).and_then(|c| c.first()).ok_or_else(|| "response has no choices".to_string())?;
    let lp = match choice.get("logprobs") {
        None | Some(Value::Null) => return Err("response has no logprobs (does the server support logprobs?)".into()),
        Some(v) => v,
    };
    let first = lp
        .get("content")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| "logprobs.content is missing or empty".to_string())?;
    let top = first
        .get("top_logprobs")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "logprobs.content[0].top_logprobs is missing or empty".to_string())?;
    top.iter()
        .enumerate()
        .map(|(i, e)| {
            let tok = e.get("token").and_then(Value::as_str);
            let l = e.get("logprob").and_then(Value::as_f64);
            match (tok, l) {
                (Some(t), Some(l)) if l.is_finite() || l == f64::NEG_INFINITY => Ok((t.to_string(), l)),
                _ => Err(format!("top_logprobs[{i}] lacks a string `token` and a numeric `logprob`")),
            }
        })
        .collect()
}

/// Calls the judge; `Err` carries the reason to record (HTTP failure after retries, malformed
/// JSON, no logprobs). The API key never appears in it.
pub fn call(client: &Client, model: &str, prompt: &str) -> Result<Vec<(String, f64)>, String> {
    let resp = client.post_json("chat/completions", &judge_request(model, prompt)).map_err(|e| e.to_string())?;
    parse_top_logprobs(&resp).map_err(|e| client.redact(&e))
}
