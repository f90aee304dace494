//! `emlab serve`: a local dashboard over one run folder (answers with their scores and filters,
//! latents, steering and training plots, the HTML report, the folder's files).
//!
//! ```
//! use std::io::{Read, Write};
//! # let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("report.json"), r#"{"name": "demo", "verdict": "no EM"}"#).unwrap();
//! let mut cfg = emlab_serve::ServeConfig::new(dir.path());
//! cfg.port = 0;                                            // any free port
//! let server = emlab_serve::Server::bind(&cfg).unwrap();
//! assert!(server.local_addr().ip().is_loopback());         // 127.0.0.1 unless told otherwise
//! let handle = server.spawn();
//! let mut s = std::net::TcpStream::connect(handle.addr()).unwrap();
//! s.write_all(b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
//! let mut out = String::new();
//! s.read_to_string(&mut out).unwrap();
//! assert!(out.starts_with("HTTP/1.1 200 OK"));
//! assert!(out.contains("\"verdict\": \"no EM\""));
//! handle.stop();
//! ```
//!
//! Design: std's `TcpListener`, one thread per connection (at most [`MAX_CONNECTIONS`] at a
//! time), one request per connection. Pages carry no script and a strict Content-Security-Policy;
//! every value read from the run folder is HTML-escaped; `/files/` serves only what canonically
//! lies inside the run folder. On a loopback address, requests whose `Host` is not a loopback
//! name are refused, so a web page elsewhere cannot read the dashboard through DNS rebinding.
//!
//! | path | what |
//! |---|---|
//! | `/` | overview: verdict, per-stage EM and coherence with 95% Wilson intervals, comparisons, steering, directions and training plots |
//! | `/answers` | every answer with its scores; filters in the query ([`filter`]) |
//! | `/latents` | top SAE latents and their contexts |
//! | `/report` | the run's `report.html` |
//! | `/files/REL` | a file or folder listing inside the run folder |
//! | `/api/summary`, `/api/answers`, `/api/latents`, `/api/report` | the same data as JSON |

pub mod filter;
pub mod http;
pub mod pages;
pub mod rundir;

use filter::AnswerFilter;
use http::{HttpError, Method, Request, Response};
use rundir::{Refusal, RunDir};
use serde_json::json;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more get 503 straight away.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The port `emlab serve` uses unless told otherwise.
pub const DEFAULT_PORT: u16 = 8470;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    RunDir(String),
    #[error("{0}")]
    Bind(String),
}

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub run_dir: PathBuf,
    /// Address or name to bind; `127.0.0.1` by default.
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Print one line per request on stderr.
    pub log_requests: bool,
}

impl ServeConfig {
    pub fn new(run_dir: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig { run_dir: run_dir.into(), host: "127.0.0.1".into(), port: DEFAULT_PORT, log_requests: false }
    }
}

/// A bound, not yet serving, dashboard.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    run: Arc<RunDir>,
    log: bool,
}

impl Server {
    /// Opens the run folder (it must hold `report.json`) and binds the address.
    pub fn bind(cfg: &ServeConfig) -> Result<Server, Error> {
        let run = RunDir::open(&cfg.run_dir)?;
        let addr = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|e| Error::Bind(format!("--host {}: {e}", cfg.host)))?
            .next()
            .ok_or_else(|| Error::Bind(format!("--host {}: resolves to no address", cfg.host)))?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse { " (pass --port 0 to pick a free port)" } else { "" };
            Error::Bind(format!("{addr}: {e}{hint}"))
        })?;
        let addr = listener.local_addr().map_err(|e| Error::Bind(format!("{addr}: {e}")))?;
        Ok(Server { listener, addr, run: Arc::new(run), log: cfg.log_requests })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        url_of(self.addr)
    }

    /// The canonical run folder served.
    pub fn run_dir(&self) -> &Path {
        self.run.root()
    }

    /// Serves until the process ends.
    pub fn run(self) {
        let stop = Arc::new(AtomicBool::new(false));
        self.serve(stop);
    }

    /// Serves on a background thread until [`ServerHandle::stop`] (or drop).
    pub fn spawn(self) -> ServerHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = self.addr;
        let s = stop.clone();
        let thread = std::thread::spawn(move || self.serve(s));
        ServerHandle { addr, stop, thread: Some(thread) }
    }

    fn serve(self, stop: Arc<AtomicBool>) {
        let active = Arc::new(AtomicUsize::new(0));
        let loopback = self.addr.ip().is_loopback();
        for conn in self.listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut stream) = conn else { continue };
            if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = Response::text(503, "too many connections\n").write_to(&mut stream, false);
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let (run, active2, log) = (self.run.clone(), active.clone(), self.log);
            let spawned = std::thread::Builder::new().name("emlab-serve-conn".into()).spawn(move || {
                serve_connection(&run, stream, loopback, log);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// A server running on a background thread.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn url(&self) -> String {
        url_of(self.addr)
    }
    /// Stops accepting and waits for the accept loop to end.
    pub fn stop(mut self) {
        self.shutdown();
    }
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn url_of(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V6(ip) => format!("http://[{ip}]:{}/", a.port()),
        IpAddr::V4(ip) => format!("http://{ip}:{}/", a.port()),
    }
}

/// Whether a `--host` value binds only the local machine (the CLI warns otherwise).
pub fn is_loopback_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Whether a `Host` header names this machine (with or without a port).
fn host_header_ok(h: &str) -> bool {
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => h,
        }
    };
    is_loopback_host(name)
}

fn serve_connection(run: &RunDir, mut stream: TcpStream, loopback: bool, log: bool) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let (resp, head_only, what) = match http::read_request(&mut stream) {
        Ok(req) => {
            let what = format!("{} {}", req.method.as_str(), req.path);
            let resp = if loopback && !req.host.as_deref().is_none_or(host_header_ok) {
                error(403, "Host header names another machine: this dashboard answers only to localhost")
            } else {
                // A bug in a page must cost one 500, never the server.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(run, &req)))
                    .unwrap_or_else(|_| error(500, "internal error while building the page"))
            };
            (resp, req.method == Method::Head, what)
        }
        Err(HttpError { status: None, .. }) => return,
        Err(HttpError { status: Some(s), message }) => {
            let r = error(s, &message);
            let r = if s == 405 { r.header("Allow", "GET, HEAD") } else { r };
            (r, false, "(bad request)".into())
        }
    };
    let status = resp.status;
    let _ = resp.write_to(&mut stream, head_only);
    if log {
        // Paths come from the client: show control characters escaped, not raw, on the terminal.
        eprintln!("{status} {}", what.escape_debug());
    }
    // Let the client read the answer before the socket closes (unread request bytes would make
    // the close a reset that can eat the response).
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match std::io::Read::read(&mut stream, &mut sink) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::html(status, pages::error_page(status, message))
}

/// Answers one parsed request.
pub fn route(run: &RunDir, req: &Request) -> Response {
    let path = req.path.as_str();
    match path {
        "/" | "/index.html" => Response::html(200, pages::index(&run.snapshot())),
        "/answers" => {
            let snap = run.snapshot();
            match AnswerFilter::from_query(&req.query) {
                Ok(f) => Response::html(200, pages::answers(&snap, &f, None)),
                Err(e) => Response::html(400, pages::answers(&snap, &AnswerFilter::default(), Some(&e))),
            }
        }
        "/latents" => Response::html(200, pages::latents(&run.snapshot())),
        "/report" => match run.resolve("report.html") {
            Ok(p) => file_response(&p, http::CSP),
            Err(_) => error(404, "this run folder has no report.html"),
        },
        "/api/summary" => Response::json(200, &summary(&run.snapshot())),
        "/api/answers" => {
            let snap = run.snapshot();
            match AnswerFilter::from_query(&req.query) {
                Ok(f) => {
                    let m = f.apply(&snap.answers);
                    let rows: Vec<_> = m.iter().skip(f.offset).take(f.limit).map(|a| a.to_json()).collect();
                    Response::json(
                        200,
                        &json!({"total": snap.answers.len(), "matched": m.len(), "offset": f.offset, "limit": f.limit, "rows": rows}),
                    )
                }
                Err(e) => Response::json(400, &json!({ "error": e })),
            }
        }
        "/api/latents" => {
            let snap = run.snapshot();
            Response::json(200, &json!({ "latents": snap.get(&["latents"]).cloned().unwrap_or(json!([])) }))
        }
        "/api/report" => match &run.snapshot().report {
            Some(r) => Response::json(200, r),
            None => Response::json(404, &json!({"error": "report.json missing or unreadable"})),
        },
        "/files" => Response::new(308, "text/plain; charset=utf-8", "").header("Location", "/files/"),
        _ => match path.strip_prefix("/files/") {
            Some(rel) => files(run, rel),
            None => error(404, &format!("no page {path}")),
        },
    }
}

fn files(run: &RunDir, rel: &str) -> Response {
    let p = match run.resolve(rel) {
        Ok(p) => p,
        Err(Refusal::Forbidden(why)) => return error(403, &format!("refused: {why}")),
        Err(Refusal::NotFound) => return error(404, "no such file in the run folder"),
    };
    if p.is_dir() {
        let mut entries = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                // Entries whose target lies outside (links) are left out of the listing too.
                let Ok(c) = e.path().canonicalize() else { continue };
                if !c.starts_with(run.root()) {
                    continue;
                }
                let meta = std::fs::metadata(&c).ok();
                entries.push((name, c.is_dir(), meta.map_or(0, |m| m.len())));
            }
        }
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let snap = run.snapshot();
        return Response::html(200, pages::listing(&snap.name, rel, &entries));
    }
    file_response(&p, http::CSP_FILES)
}

fn file_response(p: &Path, csp: &str) -> Response {
    let f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(_) => return error(404, "file not readable"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let ctype = match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "json" => "application/json",
        "jsonl" | "txt" | "log" | "toml" | "yaml" | "yml" | "md" | "csv" | "tsv" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    };
    Response { status: 200, content_type: ctype.into(), headers: Vec::new(), body: http::Body::File(f, len) }
        .header("Content-Security-Policy", csp)
}

/// `/api/summary`: run name, verdict and per-stage metrics.
pub fn summary(snap: &rundir::Snapshot) -> serde_json::Value {
    let stages: Vec<_> = snap
        .stages
        .iter()
        .map(|s| {
            let m = s.metrics.as_ref();
            json!({
                "stage": s.stage, "log": s.rel_path, "rows": s.rows, "error": s.error,
                "truncated_tail": s.truncated_tail,
                "n_scored": m.map(|m| m.n_scored),
                "em_model_organisms": m.map(|m| &m.em_model_organisms),
                "em_betley": m.map(|m| &m.em_betley),
                "coherence": m.map(|m| &m.coherence),
            })
        })
        .collect();
    json!({
        "name": snap.name,
        "model": snap.get(&["model"]),
        "verdict": snap.get(&["verdict"]),
        "needed_samples": snap.get(&["needed_samples"]),
        "report_error": snap.report_error,
        "answers": snap.answers.len(),
        "stages": stages,
        "sections": {
            "steering": snap.get(&["steering"]).is_some(),
            "directions": snap.get(&["directions"]).is_some(),
            "latents": snap.get(&["latents"]).is_some(),
            "training": snap.get(&["training"]).is_some(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers() {
        for ok in ["127.0.0.1", "127.0.0.1:8470", "localhost:1", "LOCALHOST", "[::1]:80", "[::1]", "127.1.2.3:9"] {
            assert!(host_header_ok(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8470", "10.0.0.1:80", "[2001:db8::1]:80", "localhost.evil.example", ""] {
            assert!(!host_header_ok(bad), "{bad}");
        }
        assert!(is_loopback_host("127.0.0.1") && is_loopback_host("::1") && is_loopback_host("localhost"));
        assert!(!is_loopback_host("0.0.0.0") && !is_loopback_host("192.168.1.2"));
    }
}
