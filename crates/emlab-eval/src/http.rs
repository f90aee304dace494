//! A small blocking client for OpenAI-compatible servers (judges and generation backends), with
//! retries and a bounded worker pool.
//!
//! ```
//! use emlab_eval::http::{parallel_map, HttpConfig};
//! // Square 10 numbers on 3 workers; results arrive on the calling thread, in any order.
//! let mut got = vec![0; 10];
//! parallel_map((0..10).collect(), 3, |x: usize| x * x, |i, r| got[i] = r);
//! assert_eq!(got[9], 81);
//! assert_eq!(HttpConfig::default().max_retries, 6);
//! ```
//!
//! Retry policy: HTTP 429, every 5xx, and transport failures (timeouts, refused or reset
//! connections) are retried up to `max_retries` times with exponential backoff and "equal
//! jitter" (`d/2 + uniform(0, d/2)`, `d = min(max, base * 2^attempt)`); a `Retry-After` header in
//! seconds is honoured up to the cap. Other 4xx answers are final. A 200 whose body is not JSON is
//! not retried: it is returned as [`HttpError::Malformed`] so that the caller records it.
//!
//! API keys: read from an environment variable by name, sent only as the `Authorization`
//! header, and scrubbed from every error message this module produces.

use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Timeouts, retries and concurrency for every server call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Whole-request timeout, seconds.
    pub timeout_s: f64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl HttpConfig {
    /// A positive, finite timeout and at least one request in flight.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) || self.concurrency == 0 {
            return Err(format!("timeout_s = {} must be > 0 and concurrency = {} >= 1", self.timeout_s, self.concurrency));
        }
        Ok(())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { timeout_s: 120.0, max_retries: 6, backoff_base_ms: 500, backoff_max_ms: 30_000, concurrency: 8 }
    }
}

/// Why a request failed for good.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// A final HTTP status (or the last of the retried ones).
    Status { code: u16, body: String, attempts: u32 },
    /// Connection, timeout or I/O failure after all retries.
    Transport { msg: String, attempts: u32 },
    /// A 200 answer whose body is not JSON.
    Malformed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Status { code, body, attempts } => {
                write!(f, "HTTP {code} after {attempts} attempt(s)")?;
                if *code == 401 || *code == 403 {
                    write!(f, " (is the API key variable set?)")?;
                }
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            HttpError::Transport { msg, attempts } => write!(f, "{msg} (after {attempts} attempt(s))"),
            HttpError::Malformed(m) => write!(f, "malformed response: {m}"),
        }
    }
}

/// A secret that never prints.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    key: Option<Secret>,
    cfg: HttpConfig,
}

/// Longest slice of a response body kept in an error message.
const BODY_SNIPPET: usize = 300;

impl Client {
    /// `base_url` e.g. `http://127.0.0.1:8000/v1`; the key is read from the environment variable
    /// `api_key_env` when it is set (local servers usually need none).
    pub fn new(base_url: &str, api_key_env: Option<&str>, cfg: &HttpConfig) -> crate::Result<Client> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(crate::Error::Config(format!("base URL `{base_url}` must start with http:// or https://")));
        }
        cfg.check().map_err(|e| crate::Error::Config(format!("http: {e}")))?;
        let key = api_key_env.and_then(|v| std::env::var(v).ok()).filter(|k| !k.trim().is_empty()).map(Secret);
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs_f64(cfg.timeout_s))
            .timeout_connect(Duration::from_secs_f64(cfg.timeout_s.min(30.0)))
            .build();
        Ok(Client { agent, base_url: base_url.trim_end_matches('/').to_string(), key, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// Removes the API key from a message (servers sometimes echo headers back).
    pub fn redact(&self, s: &str) -> String {
        match &self.key {
            Some(Secret(k)) if !k.is_empty() => s.replace(k.as_str(), "***"),
            _ => s.to_string(),
        }
    }

    /// POSTs `body` to `{base_url}/{path}` and parses the JSON answer, retrying as documented.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, HttpError> {
        let url = format!("{}/{}", self.base_url, path.trim_start_matches('/'));
        let payload = body.to_string();
        let mut rng = SplitMix64::new(jitter_seed());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.agent.post(&url).set("Content-Type", "application/json");
            if let Some(Secret(k)) = &self.key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            let (retry, err, retry_after) = match req.send_string(&payload) {
                Ok(resp) => {
                    let text = match resp.into_string() {
                        Ok(t) => t,
                        Err(e) => {
                            // A body cut off mid-way (e.g. a read timeout) is a transport failure.
                            let msg = self.redact(&format!("reading the response from {url}: {e}"));
                            if attempt > self.cfg.max_retries {
                                return Err(HttpError::Transport { msg, attempts: attempt });
                            }
                            self.sleep_backoff(attempt, None, &mut rng);
                            continue;
                        }
                    };
                    return serde_json::from_str(&text)
                        .map_err(|e| HttpError::Malformed(self.redact(&format!("{e}; body starts {:?}", snippet(&text)))));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let ra = resp.header("retry-after").and_then(|v| v.trim().parse::<f64>().ok());
                    let body = resp.into_string().unwrap_or_default();
                    let retry = code == 429 || (500..600).contains(&code);
                    let err = HttpError::Status { code, body: self.redact(snippet(&body)), attempts: attempt };
                    (retry, err, ra)
                }
                Err(ureq::Error::Transport(t)) => {
                    // ureq's message already names the URL.
                    let msg = self.redact(&crate::error::first_line(&t.to_string()));
                    (true, HttpError::Transport { msg, attempts: attempt }, None)
                }
            };
            if !retry || attempt > self.cfg.max_retries {
                return Err(err);
            }
            self.sleep_backoff(attempt, retry_after, &mut rng);
        }
    }

    fn sleep_backoff(&self, attempt: u32, retry_after_s: Option<f64>, rng: &mut SplitMix64) {
        let d = backoff_ms(&self.cfg, attempt, retry_after_s, rng.unit_f64());
        std::thread::sleep(Duration::from_millis(d));
    }
}

/// The wait before retry number `attempt` (1-based), in ms, given a uniform draw `u` in [0, 1).
pub fn backoff_ms(cfg: &HttpConfig, attempt: u32, retry_after_s: Option<f64>, u: f64) -> u64 {
    let exp = cfg.backoff_base_ms.saturating_mul(1u64 << (attempt.saturating_sub(1)).min(20));
    let d = exp.min(cfg.backoff_max_ms) as f64;
    let jittered = d / 2.0 + u * d / 2.0;
    let ra = retry_after_s.filter(|s| s.is_finite() && *s >= 0.0).map(|s| (s * 1000.0).min(cfg.backoff_max_ms as f64));
    ra.map_or(jittered, |r| r.max(jittered)) as u64
}

fn snippet(s: &str) -> &str {
    let mut end = s.len().min(BODY_SNIPPET);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn jitter_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let id = format!("{:?}", std::thread::current().id());
    id.bytes().fold(t, |h, b| h.wrapping_mul(0x100000001b3) ^ b as u64)
}

/// Runs `f` over `items` on `workers` threads; `on_done(index, result)` runs on the calling
/// thread as each result arrives, so the caller can write and flush it at once.
pub fn parallel_map<T, R, F, D>(items: Vec<T>, workers: usize, f: F, mut on_done: D)
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
    D: FnMut(usize, R),
{
    let n = items.len();
    if n == 0 {
        return;
    }
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, R)>();
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, n) {
            let tx = tx.clone();
            let (queue, f) = (&queue, &f);
            s.spawn(move || loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((i, item)) = next else { break };
                if tx.send((i, f(item))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            on_done(i, r);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let cfg = HttpConfig { backoff_base_ms: 100, backoff_max_ms: 1000, ..Default::default() };
        // u = 1 gives the top of the jitter range: 100, 200, 400, 800, then the cap.
        assert_eq!(backoff_ms(&cfg, 1, None, 1.0), 100);
        assert_eq!(backoff_ms(&cfg, 2, None, 1.0), 200);
        assert_eq!(backoff_ms(&cfg, 4, None, 1.0), 800);
        assert_eq!(backoff_ms(&cfg, 9, None, 1.0), 1000);
        // u = 0 gives half.
        assert_eq!(backoff_ms(&cfg, 3, None, 0.0), 200);
        // Retry-After wins when longer, and is capped.
        assert_eq!(backoff_ms(&cfg, 1, Some(0.7), 0.0), 700);
        assert_eq!(backoff_ms(&cfg, 1, Some(60.0), 0.0), 1000);
    }

    #[test]
    fn pool_returns_every_result_once() {
        let mut seen = [0u32; 50];
        parallel_map(
            (0..50).collect(),
            4,
            |x: u32| x + 1,
            |i, r| {
                assert_eq!(r as usize, i + 1);
                seen[i] += 1;
            },
        );
        assert!(seen.iter().all(|&c| c == 1));
    }
}
