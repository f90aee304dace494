//! The dashboard in a real browser: headless Chromium driven through chromedriver over the W3C
//! WebDriver protocol (raw JSON over HTTP). Opens the overview, takes a screenshot, clicks
//! through to the answers, applies filters and checks the visible row counts, and checks that the
//! hostile answers raised no alert and created no element.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`;
//! override with `EMLAB_CHROMIUM` / `EMLAB_CHROMEDRIVER`). Without them the test fails, unless
//! `EMLAB_SKIP_BROWSER=1`. `EMLAB_DASHBOARD_SCREENSHOT=PATH` also copies the overview's
//! screenshot to PATH.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(env: &str, name: &str, fallback: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let in_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file())).unwrap_or(None);
    in_path.or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.is_file()))
}

/// chromedriver, killed when the test ends (pass or fail).
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver command: (HTTP status, JSON body's `value`).
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let text = read_response(&mut s);
    let r = parse(&text);
    let payload =
        if r.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) { dechunk(&r.body) } else { r.body.clone() };
    let v: Value = serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {payload}"));
    (r.status, v.get("value").cloned().unwrap_or(Value::Null))
}

/// Reads one response: up to the end of the head, then Content-Length bytes (chromedriver may
/// keep the connection open despite `Connection: close`, so reading to EOF could wait).
fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..i]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
            if let Some(len) = len {
                if out.len() >= i + 4 + len {
                    break;
                }
            } else if head.contains("transfer-encoding: chunked") && out.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn ok(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let (st, v) = wd(port, method, path, body);
    assert_eq!(st, 200, "{method} {path}: {v}");
    v
}

struct Session {
    port: u16,
    id: String,
}

impl Drop for Session {
    /// Ends the session even when an assertion failed, so that chromedriver closes Chromium
    /// (killing chromedriver alone would leave the browser running).
    fn drop(&mut self) {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.id, self.port
            );
            if c.write_all(req.as_bytes()).is_ok() {
                let _ = read_response(&mut c);
            }
        }
    }
}

impl Session {
    fn cmd(&self, method: &str, rest: &str, body: Option<Value>) -> Value {
        ok(self.port, method, &format!("/session/{}{rest}", self.id), body)
    }
    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }
    fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or("").to_string()
    }
    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().unwrap().iter().map(|e| e[ELEMENT].as_str().unwrap().to_string()).collect()
    }
    fn find(&self, css: &str) -> String {
        let all = self.find_all(css);
        assert!(!all.is_empty(), "no element {css} on {}", self.url());
        all[0].clone()
    }
    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    fn text(&self, e: &str) -> String {
        self.cmd("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or("").to_string()
    }
    fn rows(&self) -> usize {
        self.find_all("table#answers tr.answer").len()
    }
    /// Waits (briefly) for a navigation a click started.
    fn wait_url(&self, needle: &str) {
        let t = Instant::now();
        while !self.url().contains(needle) {
            assert!(t.elapsed() < Duration::from_secs(10), "URL never contained {needle:?}: {}", self.url());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// The hostile answers must not have opened a dialog.
    fn assert_no_alert(&self) {
        let (st, v) = wd(self.port, "GET", &format!("/session/{}/alert/text", self.id), None);
        assert_eq!((st, v["error"].as_str()), (404, Some("no such alert")), "an alert is open: {v}");
    }
    /// A screenshot, decoded with a real PNG decoder: (width, height, distinct colours).
    fn screenshot(&self, to: &Path) -> (u32, u32, usize) {
        use base64::Engine;
        let b64 = self.cmd("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).expect("screenshot is base64");
        std::fs::write(to, &bytes).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes)).read_info().expect("screenshot is a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("PNG frame decodes");
        let px = info.color_type.samples();
        let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
        (info.width, info.height, colours.len())
    }
}

#[test]
fn dashboard_in_headless_chromium() {
    if std::env::var("EMLAB_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("dashboard_in_headless_chromium: skipped (EMLAB_SKIP_BROWSER=1)");
        return;
    }
    let missing = "install chromium and chromium-driver (Debian: apt-get install chromium chromium-driver), \
                   or set EMLAB_SKIP_BROWSER=1 to skip this test";
    let driver_bin = find_program("EMLAB_CHROMEDRIVER", "chromedriver", "/usr/bin/chromedriver")
        .unwrap_or_else(|| panic!("chromedriver not found: {missing}"));
    let chromium =
        find_program("EMLAB_CHROMIUM", "chromium", "/usr/bin/chromium").unwrap_or_else(|| panic!("chromium not found: {missing}"));
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    write_fixture(&run);
    let mut cfg = emlab_serve::ServeConfig::new(&run);
    cfg.port = 0;
    let server = emlab_serve::Server::bind(&cfg).unwrap().spawn();
    let base = server.url();

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&driver_bin)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}: {missing}", driver_bin.display()));
    let driver = Driver { child, port };
    let t = Instant::now();
    loop {
        let ready = TcpStream::connect(("127.0.0.1", port)).is_ok() && wd(port, "GET", "/status", None).1["ready"] == true;
        if ready {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "chromedriver did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let profile = dir.path().join("profile");
    // The network here is closed: without these flags Chromium waits on connections at start.
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        // Leave any alert open so that the test sees it (the default would dismiss it).
        "unhandledPromptBehavior": "ignore",
        "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args},
    }}});
    let v = ok(driver.port, "POST", "/session", Some(caps));
    let s = Session { port: driver.port, id: v["sessionId"].as_str().expect("session id").to_string() };
    s.cmd("POST", "/timeouts", Some(json!({"pageLoad": 15000, "implicit": 0})));

    // Overview: three stages (the too-deep log is not one), a screenshot that is a real page.
    s.go(&base);
    let title = s.cmd("GET", "/title", None);
    assert!(title.as_str().unwrap().starts_with("Overview"), "{title}");
    assert_eq!(s.find_all("#stages tr.stage").len(), 3);
    let shot = dir.path().join("overview.png");
    let (w, h, colours) = s.screenshot(&shot);
    assert!(w >= 800 && h >= 600, "screenshot {w}x{h}");
    assert!(colours >= 16, "screenshot looks blank: {colours} colours");
    if let Ok(to) = std::env::var("EMLAB_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, &to).unwrap();
    }
    s.assert_no_alert();

    // Click through to the answers: all nine, the hostile ones shown as text.
    s.click("#nav-answers");
    s.wait_url("/answers");
    assert_eq!(s.rows(), 9);
    s.assert_no_alert();
    let texts: Vec<String> = s.find_all("pre.answer-text").iter().map(|e| s.text(e)).collect();
    assert!(texts.iter().any(|t| t == HOSTILE_SCRIPT), "script answer not shown as text: {texts:?}");
    assert!(texts.iter().any(|t| t == HOSTILE_IMG), "img answer not shown as text");
    assert!(s.find_all("main img").is_empty() && s.find_all("script").is_empty() && s.find_all("table svg").is_empty());
    assert!(s.find_all("option").iter().any(|o| s.text(o) == HOSTILE_QID));

    // Fill the text filter and submit the form.
    let field = s.find("#f-text");
    s.cmd("POST", &format!("/element/{field}/value"), Some(json!({"text": "onerror"})));
    s.click("#apply");
    s.wait_url("text=onerror");
    assert_eq!(s.rows(), 1);
    assert!(s.text(&s.find("#match-count")).starts_with("1 of 9 answers match"));
    s.assert_no_alert();

    // Reset, tick "EM only", submit: the three EM answers.
    s.click("#reset");
    s.wait_url("/answers");
    assert_eq!(s.rows(), 9);
    s.click("#f-em");
    s.click("#apply");
    s.wait_url("em=1");
    assert_eq!(s.rows(), 3);
    // Click the first row's stage link: the EM filter stays, narrowed to that stage.
    s.click("table#answers tr.answer td a");
    s.wait_url("stage=");
    let url = s.url();
    let want = if url.contains("stage=baseline") { 1 } else { 2 };
    assert!(url.contains("em=1"), "{url}");
    assert_eq!(s.rows(), want, "{url}");
    s.screenshot(&dir.path().join("answers.png"));
    s.assert_no_alert();

    drop(s);
    drop(driver);
    server.stop();
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}
