//! The HTTP/1.1 subset the dashboard needs: one GET or HEAD request per connection, bounded in
//! size, answered with `Connection: close`.
//!
//! ```
//! use emlab_serve::http::{read_request, Method};
//! let raw = b"GET /answers?stage=baseline&text=a+b%21 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
//! let req = read_request(&mut &raw[..]).unwrap();
//! assert_eq!(req.method, Method::Get);
//! assert_eq!(req.path, "/answers");
//! assert_eq!(req.query, vec![("stage".into(), "baseline".into()), ("text".into(), "a b!".into())]);
//! ```
//!
//! Why so small: a dashboard over local files needs neither keep-alive nor request bodies, and
//! every feature left out is an attack surface left out. Parsing never panics: whatever the
//! client sends becomes either a [`Request`] or a [`HttpError`] with the status to answer.

use std::io::{Read, Write};

/// The most bytes of request line plus headers read before answering 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines accepted.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// A parsed request. `path` is percent-decoded; the query is decoded as a form.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The `Host` header, if any.
    pub host: Option<String>,
}

impl Request {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be parsed, with the status to answer (`None`: the client went away
/// before sending a request; answer nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub status: Option<u16>,
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError { status: Some(status), message: message.into() }
    }
}

/// Reads and parses one request head (the body, if any, is never read: GET and HEAD have none,
/// and the connection closes after the answer).
pub fn read_request(r: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::new(431, format!("request head longer than {MAX_HEAD} bytes")));
        }
        let want = chunk.len().min(MAX_HEAD + 4 - buf.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) if buf.is_empty() => return Err(HttpError { status: None, message: "connection closed".into() }),
            Ok(0) => return Err(HttpError::new(400, "request head cut short")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(HttpError::new(408, "request head not received in time"))
            }
            Err(e) => return Err(HttpError { status: None, message: e.to_string() }),
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::new(400, "request head is not UTF-8"))?;
    parse_head(head)
}

/// Index just past the blank line ending the head (`\r\n\r\n`, or a bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_head(head: &str) -> Result<Request, HttpError> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 {
        return Err(HttpError::new(400, "malformed request line"));
    }
    let (method, target, version) = (parts[0], parts[1], parts[2]);
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::new(505, format!("unsupported protocol version {version:?}")));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(HttpError::new(405, "only GET and HEAD are allowed"))
        }
        _ => return Err(HttpError::new(400, "malformed method")),
    };
    if !target.starts_with('/') {
        // Absolute-form and authority-form targets are for proxies; this is not one.
        return Err(HttpError::new(400, "request target must be a path"));
    }
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let raw_path = raw_path.split('#').next().unwrap_or("");
    let path_bytes = percent_decode(raw_path, false);
    let path = String::from_utf8(path_bytes).map_err(|_| HttpError::new(400, "path is not UTF-8 once decoded"))?;
    if path.contains('\0') {
        return Err(HttpError::new(400, "path contains a NUL byte"));
    }
    let query = parse_query(raw_query);
    let mut host = None;
    let mut n = 0;
    for l in lines {
        if l.is_empty() {
            continue;
        }
        n += 1;
        if n > MAX_HEADERS {
            return Err(HttpError::new(431, format!("more than {MAX_HEADERS} header lines")));
        }
        let (name, value) = l.split_once(':').ok_or_else(|| HttpError::new(400, "malformed header line"))?;
        if name.is_empty() || name.contains(' ') {
            return Err(HttpError::new(400, "malformed header name"));
        }
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HttpError::new(400, "two Host headers"));
            }
            host = Some(value.trim().to_string());
        }
    }
    Ok(Request { method, path, query, host })
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set, as in forms). A `%` not
/// followed by two hex digits stays literal.
pub fn percent_decode(s: &str, plus: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses `a=1&b=x+y` (form encoding); invalid UTF-8 is replaced, never an error.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (String::from_utf8_lossy(&percent_decode(k, true)).into_owned(), String::from_utf8_lossy(&percent_decode(v, true)).into_owned())
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters (for query values and path segments
/// in links the pages build).
pub fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Like [`url_encode`] but keeps `/` (for relative file paths).
pub fn url_encode_path(s: &str) -> String {
    s.split('/').map(url_encode).collect::<Vec<_>>().join("/")
}

/// The body of a response: bytes in memory, or a file streamed from disk.
pub enum Body {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

/// A response ready to write.
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// Content-Security-Policy of every page: no script at all, no plugin, no frame, no form posting
/// elsewhere. Model text is escaped anyway; this is the second wall if an escape were missed.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";
/// Files served from the run folder also get a sandbox (an HTML or SVG file there is treated as
/// an opaque-origin document that cannot script, even if the file holds a script).
pub const CSP_FILES: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'none'; \
                             frame-ancestors 'none'; base-uri 'none'; sandbox";

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type: content_type.into(), headers: Vec::new(), body: Body::Bytes(body.into()) }
    }
    pub fn html(status: u16, body: String) -> Response {
        Response::new(status, "text/html; charset=utf-8", body)
    }
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
        s.push('\n');
        Response::new(status, "application/json", s)
    }
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Writes status line, headers and (unless `head_only`) the body.
    pub fn write_to(self, w: &mut impl Write, head_only: bool) -> std::io::Result<()> {
        let len = match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File(_, n) => *n,
        };
        let mut h = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        h.push_str(&format!("Content-Type: {}\r\nContent-Length: {len}\r\n", self.content_type));
        let has_csp = self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-security-policy"));
        if !has_csp {
            h.push_str(&format!("Content-Security-Policy: {CSP}\r\n"));
        }
        for (k, v) in &self.headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str(
            "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n\
             Cross-Origin-Resource-Policy: same-origin\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        );
        // Head and an in-memory body go out in one write: two small writes would meet Nagle's
        // algorithm and the client's delayed ACK (a 40 ms stall per page).
        let mut out = h.into_bytes();
        match self.body {
            Body::Bytes(b) => {
                if !head_only {
                    out.extend_from_slice(&b);
                }
                w.write_all(&out)?;
            }
            Body::File(f, n) => {
                w.write_all(&out)?;
                if !head_only {
                    // Never more than the announced length, even if the file grew meanwhile.
                    std::io::copy(&mut f.take(n), w)?;
                }
            }
        }
        w.flush()
    }
}

/// The reason phrase of the statuses this server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2e%2E/a%2Fb", false), b"../a/b");
        assert_eq!(percent_decode("a+b", true), b"a b");
        assert_eq!(percent_decode("a+b", false), b"a+b");
        // Broken escapes stay literal, including at the very end.
        assert_eq!(percent_decode("100%", false), b"100%");
        assert_eq!(percent_decode("%4", false), b"%4");
        assert_eq!(percent_decode("%zz%41", false), b"%zzA");
        assert_eq!(percent_decode("%41", false), b"A");
    }

    #[test]
    fn url_encoding_round_trips() {
        let s = "\"><svg onload=x> &?=/é";
        assert_eq!(String::from_utf8(percent_decode(&url_encode(s), true)).unwrap(), s);
        assert_eq!(url_encode_path("steer/add 8"), "steer/add%208");
    }

    #[test]
    fn rejects_bad_heads() {
        let st = |raw: &[u8]| read_request(&mut &raw[..]).unwrap_err().status;
        assert_eq!(st(b"POST / HTTP/1.1\r\n\r\n"), Some(405));
        assert_eq!(st(b"get / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(st(b"GET http://x/ HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(st(b"GET / HTTP/2\r\n\r\n"), Some(505));
        assert_eq!(st(b"GET /%00 HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(st(b"GET /%ff HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(st(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), Some(400));
        assert_eq!(st(b"GET / HTTP/1.1\r\n"), Some(400));
        assert_eq!(st(b""), None);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(st(&big), Some(431));
    }
}
