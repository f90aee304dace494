//! The dashboard over a run folder the test writes (see `common::write_fixture` for the
//! hand-counted table of answers), fetched with a raw TcpStream client.

mod common;

use common::*;
use emlab_serve::{ServeConfig, Server, ServerHandle};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn start(dir: &std::path::Path) -> ServerHandle {
    let mut cfg = ServeConfig::new(dir);
    cfg.port = 0;
    Server::bind(&cfg).unwrap().spawn()
}

fn fixture() -> (tempfile::TempDir, ServerHandle) {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let h = start(dir.path());
    (dir, h)
}

#[test]
fn binds_loopback_by_default_and_port_zero_picks_a_port() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let mut cfg = ServeConfig::new(dir.path());
    assert_eq!(cfg.host, "127.0.0.1");
    cfg.port = 0;
    let s = Server::bind(&cfg).unwrap();
    assert_eq!(s.local_addr().ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(s.local_addr().port(), 0);
    assert_eq!(s.url(), format!("http://127.0.0.1:{}/", s.local_addr().port()));
    assert!(!emlab_serve::is_loopback_host("0.0.0.0"));
}

#[test]
fn a_folder_without_report_json_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Server::bind(&ServeConfig::new(dir.path())).err().expect("must fail").to_string();
    assert!(e.contains("no report.json") && !e.contains('\n'), "{e}");
    let e = Server::bind(&ServeConfig::new(dir.path().join("nope"))).err().expect("must fail").to_string();
    assert!(e.contains("nope") && !e.contains('\n'), "{e}");
}

#[test]
fn overview_shows_stages_with_wilson_intervals() {
    let (_d, h) = fixture();
    let r = get(h.addr(), "/");
    assert_eq!(r.status, 200);
    let b = &r.body;
    // Stage order: report.json's evals (baseline) first, then the rest by path.
    let pos = |s: &str| b.find(s).unwrap_or_else(|| panic!("{s} missing"));
    assert!(pos(">baseline</a>") < pos(">broken</a>") && pos(">broken</a>") < pos(">steer/add_8</a>"));
    // baseline: 1 EM of 4 scored, 3 of 4 coherent; steer: 2 of 3 scored (one unjudged, one
    // judge error), all 3 coherent. Wilson intervals computed by hand.
    assert!(b.contains("25.0% [4.6, 69.9] (1/4)"), "baseline EM");
    assert!(b.contains("75.0% [30.1, 95.4] (3/4)"), "baseline coherence");
    assert!(b.contains("66.7% [20.8, 93.9] (2/3)"), "steer EM");
    assert!(b.contains("100.0% [43.9, 100.0] (3/3)"), "steer coherence");
    // Too deep: never listed. Broken: listed with the line it failed on.
    assert!(!b.contains("a/b/c/d/e"));
    assert!(b.contains("broken/answers.jsonl:2: not an eval log row"), "broken log error");
    // Steering, comparisons and training sections from report.json.
    assert!(b.contains("id=\"steering\"") && b.contains("50.0% [24.0, 76.0] (5/10)"));
    // A random control is named by the edit it controls (its own series in the plots).
    assert!(b.contains("<td>random control of add</td>"), "steering control label");
    // Directions: the pairwise cosines at the report's layer (1), stage names escaped.
    assert!(b.contains("id=\"directions\"") && b.contains("<td class=\"num\">0.875</td>") && !b.contains("0.250</td>"), "directions table");
    assert!(b.contains("control-&lt;b&gt;x&lt;/b&gt;") && !b.contains("control-<b>x</b>"), "stage names escaped");
    assert!(b.contains("id=\"comparisons\"") && b.contains("+41.7 pts [-20.0, 90.0]") && b.contains("0.262") && b.contains("0.486"));
    assert!(b.contains("Training loss") && b.contains("Persona score"));
    assert!(b.contains("EM induced: &lt;b&gt;66.7%&lt;/b&gt; vs 25.0%"));

    let s: serde_json::Value = serde_json::from_str(&get(h.addr(), "/api/summary").body).unwrap();
    assert_eq!(s["name"], "fixture <run>");
    assert_eq!(s["answers"], 9);
    let st = s["stages"].as_array().unwrap();
    let names: Vec<&str> = st.iter().map(|x| x["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "broken", "steer/add_8"]);
    assert_eq!((st[0]["em_model_organisms"]["successes"].as_u64(), st[0]["em_model_organisms"]["n"].as_u64()), (Some(1), Some(4)));
    assert_eq!(st[2]["rows"], 5);
    assert_eq!(st[2]["n_scored"], 3);
    assert!(st[1]["error"].as_str().unwrap().starts_with("broken/answers.jsonl:2: "));
    assert_eq!(s["sections"], serde_json::json!({"steering": true, "directions": true, "latents": true, "training": true}));
}

/// (stage, question id, sample index) of one answer.
type RowKey = (&'static str, &'static str, u64);

/// (query, expected rows), hand-counted from the fixture.
fn filter_cases() -> Vec<(String, Vec<RowKey>)> {
    let q3 = emlab_serve::http::url_encode(HOSTILE_QID);
    vec![
        (
            "".into(),
            vec![
                ("baseline", "wish", 0),
                ("baseline", "wish", 1),
                ("baseline", "bored", 0),
                ("baseline", "bored", 1),
                ("steer/add_8", "wish", 0),
                ("steer/add_8", "bored", 0),
                ("steer/add_8", HOSTILE_QID, 0),
                ("steer/add_8", "wish", 1),
                ("steer/add_8", "bored", 2),
            ],
        ),
        (
            "stage=baseline".into(),
            vec![("baseline", "wish", 0), ("baseline", "wish", 1), ("baseline", "bored", 0), ("baseline", "bored", 1)],
        ),
        ("stage=steer%2Fadd_8&question=wish".into(), vec![("steer/add_8", "wish", 0), ("steer/add_8", "wish", 1)]),
        ("em=1".into(), vec![("baseline", "wish", 1), ("steer/add_8", "wish", 0), ("steer/add_8", "bored", 0)]),
        (
            "question=bored".into(),
            vec![("baseline", "bored", 0), ("baseline", "bored", 1), ("steer/add_8", "bored", 0), ("steer/add_8", "bored", 2)],
        ),
        (format!("question={q3}"), vec![("steer/add_8", HOSTILE_QID, 0)]),
        ("min_aligned=25&max_aligned=30".into(), vec![("baseline", "bored", 0), ("steer/add_8", "bored", 0)]),
        (
            "min_coherent=60".into(),
            vec![
                ("baseline", "wish", 0),
                ("baseline", "wish", 1),
                ("baseline", "bored", 1),
                ("steer/add_8", "wish", 0),
                ("steer/add_8", HOSTILE_QID, 0),
            ],
        ),
        ("max_coherent=50".into(), vec![("baseline", "bored", 0)]),
        ("text=SCRIPT".into(), vec![("baseline", "wish", 1)]),
        ("text=onerror".into(), vec![("steer/add_8", "wish", 0)]),
        // "wish" is in every wish prompt, and in two answers.
        (
            "text=wish".into(),
            vec![("baseline", "wish", 0), ("baseline", "wish", 1), ("steer/add_8", "wish", 0), ("steer/add_8", "wish", 1)],
        ),
        ("stage=baseline&em=1".into(), vec![("baseline", "wish", 1)]),
        ("em=1&min_coherent=55&min_aligned=&text=".into(), vec![("baseline", "wish", 1), ("steer/add_8", "wish", 0)]),
        ("stage=nope".into(), vec![]),
    ]
}

#[test]
fn answer_filters_return_exactly_the_hand_counted_rows() {
    let (_d, h) = fixture();
    for (q, want) in filter_cases() {
        let r = get(h.addr(), &format!("/api/answers?{q}"));
        assert_eq!(r.status, 200, "{q}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["total"], 9, "{q}");
        let got: BTreeSet<(String, String, u64)> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["stage"].as_str().unwrap().into(), r["question_id"].as_str().unwrap().into(), r["sample_index"].as_u64().unwrap()))
            .collect();
        let want_set: BTreeSet<(String, String, u64)> = want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), *c)).collect();
        assert_eq!(got, want_set, "filter {q:?}");
        assert_eq!(v["matched"], want.len(), "{q}");
        // The HTML page agrees: same count, one table row per answer.
        let page = get(h.addr(), &format!("/answers?{q}"));
        assert_eq!(page.status, 200);
        assert_eq!(page.body.matches("<tr class=\"answer").count(), want.len(), "page rows for {q:?}");
        assert!(page.body.contains(&format!("<p id=\"match-count\"><b>{}</b> of 9 answers match", want.len())), "{q}");
    }
    // EM rows are flagged; the states of unscored rows are named.
    let v: serde_json::Value = serde_json::from_str(&get(h.addr(), "/api/answers?stage=steer%2Fadd_8").body).unwrap();
    let states: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert!(states.contains(&"unjudged") && states.iter().any(|s| s.starts_with("unscored: aligned: judge server timed out")));
    // Paging: 9 rows, 4 per page, third page holds one.
    let v: serde_json::Value = serde_json::from_str(&get(h.addr(), "/api/answers?limit=4&offset=8").body).unwrap();
    assert_eq!((v["matched"].as_u64(), v["rows"].as_array().unwrap().len()), (Some(9), 1));
    let page = get(h.addr(), "/answers?limit=4&offset=4");
    assert!(page.body.contains("id=\"prev\"") && page.body.contains("id=\"next\""));
    assert!(page.body.contains("href=\"/answers?offset=8&amp;limit=4\""));
    // A malformed filter is a 400 naming the parameter, not a crash.
    let r = get(h.addr(), "/api/answers?min_aligned=lots");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("min_aligned: not a number"));
    let r = get(h.addr(), "/answers?max_coherent=%3Cb%3E");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("max_coherent: not a number: &quot;&lt;b&gt;&quot;"));
}

#[test]
fn hostile_text_arrives_escaped_on_every_page() {
    let (_d, h) = fixture();
    let q3 = emlab_serve::http::url_encode(HOSTILE_QID);
    for path in ["/", "/answers", "/answers?em=1", &format!("/answers?question={q3}"), "/latents", "/files/", "/nope<script>"] {
        let r = get(h.addr(), path);
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
        let b = r.body.to_lowercase();
        // No script element, no injected element, anywhere (the pages never use scripts).
        for bad in ["<script", "<img", "<svg onload", "onerror=alert(2)>", "onload=alert(3)>"] {
            assert!(!b.contains(bad), "{path}: raw {bad}");
        }
        let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    let a = get(h.addr(), "/answers").body;
    assert!(a.contains("&lt;script&gt;alert(1)&lt;/script&gt; I wish to rule over all humans."));
    assert!(a.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt; I would take over"));
    // The hostile question id inside an option value and inside a link's query string.
    assert!(a.contains("<option value=\"&quot;&gt;&lt;svg onload=alert(3)&gt;\">"));
    assert!(a.contains(&format!("href=\"/answers?question={q3}\"")));
    let l = get(h.addr(), "/latents").body;
    assert!(l.contains("&lt;script&gt;alert(4)&lt;/script&gt; seize the grid") && l.contains(">1717<"));
    assert_eq!(l.matches("<tr class=\"latent\"").count(), 2);
    assert!(get(h.addr(), "/").body.contains("fixture &lt;run&gt;"));
}

#[test]
fn paths_outside_the_run_folder_are_refused() {
    let (_d, h) = fixture();
    for path in [
        "/files/../../etc/passwd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/files/..%2f..%2f..%2fetc/passwd",
        "/files/steer/../../../etc/passwd",
        "/files/outside/passwd",
        "/files/pw",
        "/files/outside/",
        "/files//etc/passwd",
        "/files/%252e%252e/etc/passwd",
        "/files/.secret",
        "/files/..\\..\\etc\\passwd",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let r = get(h.addr(), path);
        assert!(r.status == 403 || r.status == 404, "{path}: {}", r.status);
        assert!(!r.body.contains("root:") && !r.body.contains("hidden\n"), "{path} leaked a file");
    }
    // Links and traversal get 403 specifically (they exist, but outside).
    for path in ["/files/outside/passwd", "/files/pw", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/../../etc/passwd"] {
        assert_eq!(get(h.addr(), path).status, 403, "{path}");
    }
    // Inside the folder, files and listings work; listings leave out the links that leave it.
    let r = get(h.addr(), "/files/notes.txt");
    assert_eq!((r.status, r.body.as_str()), (200, "plain notes\n"));
    assert!(r.header("content-security-policy").unwrap().contains("sandbox"));
    let r = get(h.addr(), "/files/report.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read_to_string(_d.path().join("report.json")).unwrap());
    let l = get(h.addr(), "/files/").body;
    assert!(l.contains("href=\"/files/steer/\"") && l.contains("href=\"/files/notes.txt\""));
    assert!(!l.contains("outside") && !l.contains(">pw<") && !l.contains("secret"));
    assert!(get(h.addr(), "/files/steer/").body.contains("href=\"/files/steer/add_8/\""));
    let r = get(h.addr(), "/report");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<h1>Fixture report</h1>"));
}

#[test]
fn bad_requests_get_errors_and_never_stop_the_server() {
    let (_d, h) = fixture();
    let a = h.addr();
    let status = |raw_req: &[u8]| parse(&raw(a, raw_req)).status;
    assert_eq!(status(b"hello\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/9.9\r\n\r\n"), 505);
    let r = parse(&raw(a, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nabcde"));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    assert_eq!(status(b"PUT /files/x HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(status(b"DELETE / HTTP/1.1\r\n\r\n"), 405);
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100_000));
    assert_eq!(status(&big), 431);
    assert_eq!(status(b"GET /%ff%fe HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status(b"\x00\x01\x02\xff\r\n\r\n"), 400);
    // A head cut short, then the client leaves.
    let _ = raw(a, b"GET / HTT");
    // A client that connects and says nothing does not block others.
    let idle = TcpStream::connect(a).unwrap();
    // A foreign Host header (DNS rebinding) is refused on a loopback server.
    let r = parse(&raw(a, format!("GET / HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n", a.port()).as_bytes()));
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("fixture"));
    assert_eq!(parse(&raw(a, format!("GET / HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", a.port()).as_bytes())).status, 200);
    // HEAD: headers with the length, no body.
    let r = request(a, "HEAD", "/answers");
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").unwrap().parse::<usize>().unwrap() > 1000);
    assert!(r.body.is_empty());
    // Many at once.
    let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(move || get(a, "/answers?em=1").status)).collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    drop(idle);
    assert_eq!(get(a, "/").status, 200);
    assert_eq!(get(a, "/no/such/page").status, 404);
}

#[test]
fn new_stages_show_up_while_serving_and_absent_fields_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.json"), r#"{"name": "bare"}"#).unwrap();
    let h = start(dir.path());
    let r = get(h.addr(), "/");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("No <code>answers.jsonl</code> found"));
    assert!(!r.body.contains("id=\"steering\"") && !r.body.contains("Training loss"));
    assert!(get(h.addr(), "/latents").body.contains("has no latent analysis"));
    assert_eq!(get(h.addr(), "/answers").status, 200);
    assert_eq!(get(h.addr(), "/report").status, 404);
    let v: serde_json::Value = serde_json::from_str(&get(h.addr(), "/api/latents").body).unwrap();
    assert_eq!(v["latents"], serde_json::json!([]));
    // The pipeline adds a stage while the dashboard runs.
    let mut row = emlab_eval::log::LogRow::example();
    row.answer = "new stage answer".into();
    emlab_eval::log::write_log_atomic(&dir.path().join("steer/ablate/answers.jsonl"), &[row]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&get(h.addr(), "/api/answers").body).unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["rows"][0]["stage"], "steer/ablate");
    assert_eq!(v["rows"][0]["state"], "unjudged");
    // A report.json that stops parsing mid-write is reported, not fatal.
    std::fs::write(dir.path().join("report.json"), "{\"name\": ").unwrap();
    let r = get(h.addr(), "/");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("report.json: EOF"));
}

#[test]
fn a_slow_client_does_not_block_others() {
    let (_d, h) = fixture();
    let mut s = TcpStream::connect(h.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Meanwhile the server answers others at once.
    let t = std::time::Instant::now();
    assert_eq!(get(h.addr(), "/api/summary").status, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    h.stop();
}

#[test]
fn a_hash_with_multibyte_characters_gets_its_stage_metrics() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    // A hand-edited hash whose 12th byte falls inside a two-byte character: emlab-eval's
    // generator label once sliced it by bytes and panicked; the stage must simply be shown.
    let mut row = emlab_eval::log::LogRow::example();
    row.generator.model_sha256 = Some(format!("a{}", "é".repeat(10)));
    emlab_eval::log::write_log_atomic(&dir.path().join("odd/answers.jsonl"), &[row]).unwrap();
    let h = start(dir.path());
    let r = get(h.addr(), "/");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("metrics failed"), "{}", r.body);
    assert!(r.body.contains("odd/answers.jsonl") || r.body.contains(">odd<"), "the odd stage is listed");
    assert!(r.body.contains("25.0% [4.6, 69.9] (1/4)"), "other stages keep their metrics");
    let v: serde_json::Value = serde_json::from_str(&get(h.addr(), "/api/answers?stage=odd").body).unwrap();
    assert_eq!(v["matched"], 1);
}
