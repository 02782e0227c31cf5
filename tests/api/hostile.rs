//! Malformed and oversized requests against the real `handler` binary, as a hostile or broken
//! client would send them: each one gets a 4xx (or, when actix-http's HTTP/1 parser refuses it
//! before our code runs, a 4xx without a problem document or a closed connection), never a 5xx,
//! a panic or a hang, and the process's memory stays bounded while the whole corpus is sent
//! again and again.
//!
//! The requests travel over raw TCP so that nothing between the test and the handler fixes
//! them up. Every request must fail before any query runs: ClickHouse is `CLICKHOUSE_URL` when
//! set and a dead port otherwise, so a request that reached a query would answer 503 and fail.
//!
//! What actix-http 3 does before our code (each case says which applies):
//! - a request head (request line and headers) over its 128 KiB read buffer, or with more than
//!   96 headers, is answered 431 with an empty body and the connection closed;
//! - a head that does not parse (not HTTP; bytes a URI or a header cannot hold; a request
//!   target over the `http` crate's 65534-byte URI limit) is answered 400 with an empty body
//!   and the connection closed;
//! - a head that does not arrive within the client request timeout (5 s) is answered 408.
//!
//! Everything else reaches `run_query` and must leave as our `application/problem+json`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use xtask::dev_issuer::{DevIssuer, DevKey};

/// Used only to fail a hung handler: nothing here asserts speed.
const HANG_LIMIT: Duration = Duration::from_secs(10);

/// A real endpoint of the shipped catalog (GET and POST; role analyst).
const ROUTE: &str = "/api/v1/top-pages";

/// Parameters the endpoint accepts, for requests whose hostile part is elsewhere.
const VALID_QUERY: &str = "from=2026-11-01%2000:00:00&to=2026-12-01%2000:00:00";

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Times the memory test sends the whole corpus.
const ROUNDS: usize = 20;

/// How much the handler's peak resident memory (VmHWM) may grow over its idle figure while
/// the corpus is sent [`ROUNDS`] times, one request at a time.
///
/// What one request may make the handler hold: `MAX_BODY_BYTES` (2 MiB) of body, never a
/// whole 10 MiB one; the parsed JSON of a body that size (the 100000-key object is 1.1 MB of
/// text, some MiB as a map); actix-http's 128 KiB head buffer. The allocator keeps some freed
/// memory per thread; `MALLOC_ARENA_MAX=2` (below) bounds that by two arenas instead of one
/// per worker, so the figure does not depend on the machine's core count. Measured with one
/// and two workers: the first round raises VmHWM by 16-20 MiB, the next nineteen by 0-4 MiB
/// more. 64 MiB leaves room for that several times over, yet a leak of 2 MiB a round (50 KiB
/// a request, less than one of the 100 KiB heads or 2 MiB bodies sent several times a round)
/// passes it, and so do the 10 MiB bodies read whole (a body limit raised to 64 MiB: +67 MiB).
const HWM_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

// --- the handler process ------------------------------------------------------------------

/// The `handler` binary on a free port, trusting a development issuer of its own.
struct Handler {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    /// The handler's stdout and stderr, searched for panics.
    log: PathBuf,
    _issuer: DevIssuer,
    /// A token of an analyst of tenant acme: enough to get past access on `ROUTE`.
    token: String,
}

impl Handler {
    async fn start() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // The shipped policy's dev issuer, moved to a free port through its app setting, so
        // that a valid token reaches the body and parameter checks behind access.
        let issuer = DevIssuer::start(0, DevKey::generate().expect("key"))
            .await
            .expect("starting the issuer");
        let token = issuer
            .token("hostile@acme", json!({"roles": ["Analytics.Read"], "tid": "acme"}))
            .expect("signing");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let log = std::env::temp_dir().join(format!("chgate-hostile-{}.log", uuid::Uuid::new_v4().simple()));
        let stdout = std::fs::File::create(&log).expect("log file");
        let stderr = stdout.try_clone().expect("log file");
        let clickhouse = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:9".to_owned());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
            .env("CHGATE_FUNCTIONS_DIR", root.join("functions"))
            .env("CHGATE_HOST_JSON", root.join("host.json"))
            .env("CHGATE_ACCESS_POLICY", root.join("access.toml"))
            .env("CHGATE_ISSUER__DEV__URL", issuer.url())
            .env("CLICKHOUSE_URL", clickhouse)
            // See HWM_GROWTH_LIMIT_KIB: the allocator's per-thread caches, bounded.
            .env("MALLOC_ARENA_MAX", "2")
            .env_remove("WEBSITE_SITE_NAME")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("starting the handler");
        let pid = child.id().expect("handler pid");
        let mut handler = Self {
            child,
            pid,
            port,
            log,
            _issuer: issuer,
            token,
        };
        handler.wait_until_ready().await;
        handler
    }

    /// Polls `GET /` as the Functions host does, then waits until the token is accepted (the
    /// issuer's keys are fetched in the background at start-up).
    async fn wait_until_ready(&mut self) {
        let started = Instant::now();
        while self.get_root().await != Some(200) {
            assert!(
                self.child.try_wait().expect("child status").is_none(),
                "the handler exited at start-up:\n{}",
                self.log_text()
            );
            assert!(started.elapsed() < Duration::from_secs(30), "no GET / 200 within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let probe = self.authorised_probe();
        while check(&probe, &exchange(self.port, &probe, Duration::ZERO).await.0).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the handler did not accept the test token within 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request that passes access and fails on its parameters (400 `unknown_param`), before
    /// any query: proof that the endpoint route answers.
    fn authorised_probe(&self) -> Case {
        let body = Body::Empty;
        Case {
            name: "authorised probe".into(),
            head: head(
                "GET",
                format!("{ROUTE}?{VALID_QUERY}&probe=1").as_bytes(),
                Some(format!("Bearer {}", self.token).as_bytes()),
                &[],
                &body,
            ),
            body,
            expect: handler_error(&[400], &["unknown_param"]),
        }
    }

    async fn get_root(&self) -> Option<u16> {
        let client = reqwest::Client::builder().timeout(HANG_LIMIT).build().expect("client");
        let response = client
            .get(format!("http://127.0.0.1:{}/", self.port))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    /// `(VmRSS, VmHWM)` in KiB, from /proc/<pid>/status.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("reading /proc/<pid>/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The handler is alive, answers `GET /` with 200, and never panicked.
    async fn assert_healthy(&mut self) {
        assert!(
            self.child.try_wait().expect("child status").is_none(),
            "the handler exited:\n{}",
            self.log_text()
        );
        assert_eq!(self.get_root().await, Some(200), "GET / after the hostile requests");
        let log = self.log_text();
        assert!(!log.contains("panicked"), "the handler panicked:\n{log}");
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

// --- requests over raw TCP ----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Body {
    Empty,
    /// After a `Content-Length` head.
    Whole(Arc<[u8]>),
    /// With `Transfer-Encoding: chunked`, 64 KiB a chunk.
    Chunked(Arc<[u8]>),
}

/// What a case accepts.
#[derive(Debug, Clone, Copy)]
struct Expect {
    statuses: &'static [u16],
    /// The problem `code`s the handler may answer with (any code when empty).
    codes: &'static [&'static str],
    /// Refused by actix-http's parser before our code: the answer may also be a closed
    /// connection, and a response need not be a problem document. When false the answer must
    /// be our problem+json.
    parser: bool,
}

/// Our own error: problem+json with one of `codes`.
fn handler_error(statuses: &'static [u16], codes: &'static [&'static str]) -> Expect {
    Expect {
        statuses,
        codes,
        parser: false,
    }
}

/// Refused by actix-http: one of `statuses` without a problem document, or a closed connection.
fn parser_refusal(statuses: &'static [u16]) -> Expect {
    Expect {
        statuses,
        codes: &[],
        parser: true,
    }
}

#[derive(Debug)]
struct Case {
    name: String,
    /// The request head, or for the not-HTTP cases the raw bytes.
    head: Arc<[u8]>,
    body: Body,
    expect: Expect,
}

#[derive(Debug)]
enum Outcome {
    Response {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// The connection ended (`"closed"` or `"reset"`) before any byte of a response.
    Closed(&'static str),
    /// The connection ended after part of a response head.
    CutHead(String),
    /// Nothing within [`HANG_LIMIT`].
    NoAnswer,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Response {
                status,
                content_type,
                body,
            } => {
                let code = problem_code(body).unwrap_or_default();
                let content_type = content_type.as_deref().unwrap_or("(no content type)");
                write!(f, "{status} {content_type} {code}")
            }
            Outcome::Closed(how) => write!(f, "connection {how} without a response"),
            Outcome::CutHead(head) => write!(f, "connection ended within the response head {head:?}"),
            Outcome::NoAnswer => write!(f, "no answer within {HANG_LIMIT:?}"),
        }
    }
}

fn problem_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["code"].as_str().map(str::to_owned)
}

/// A request head: request line, `Host`, `Authorization` when given, `extra` headers, and the
/// framing headers of `body`.
fn head(method: &str, target: &[u8], authorization: Option<&[u8]>, extra: &[(&str, &[u8])], body: &Body) -> Arc<[u8]> {
    let mut head = Vec::with_capacity(target.len() + 256);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(value) = authorization {
        head.extend_from_slice(b"Authorization: ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in extra {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    match body {
        Body::Empty => {}
        Body::Whole(bytes) => head.extend_from_slice(
            format!("Content-Type: application/json\r\nContent-Length: {}\r\n", bytes.len()).as_bytes(),
        ),
        Body::Chunked(_) => head.extend_from_slice(b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    head.into()
}

/// Sends a case on a new connection while reading the answer (the handler may answer before
/// it has read the body), and returns the first response or how the connection ended, and how
/// long that took. Then reads for `linger` more, returning whatever else the handler sent
/// unasked (nothing, for a handler that answers one request once).
async fn exchange(port: u16, case: &Case, linger: Duration) -> (Outcome, Duration, Vec<u8>) {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to the handler");
    let (mut reader, mut writer) = stream.into_split();
    let (head, body) = (case.head.clone(), case.body.clone());
    // The write half is handed back, not dropped: dropping it would half-close the connection,
    // which actix-http takes for a client that went away.
    let sending = tokio::spawn(async move {
        let result = async {
            writer.write_all(&head).await?;
            match &body {
                Body::Empty => {}
                Body::Whole(bytes) => writer.write_all(bytes).await?,
                Body::Chunked(bytes) => {
                    for chunk in bytes.chunks(64 * KIB) {
                        writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                        writer.write_all(chunk).await?;
                        writer.write_all(b"\r\n").await?;
                    }
                    writer.write_all(b"0\r\n\r\n").await?;
                }
            }
            writer.flush().await
        }
        .await;
        (writer, result)
    });
    let outcome = tokio::time::timeout(HANG_LIMIT, read_response(&mut reader))
        .await
        .unwrap_or(Outcome::NoAnswer);
    let elapsed = started.elapsed();
    let mut unasked = Vec::new();
    if matches!(outcome, Outcome::Response { .. }) && !linger.is_zero() {
        let _ = tokio::time::timeout(linger, reader.read_to_end(&mut unasked)).await;
    }
    sending.abort();
    (outcome, elapsed, unasked)
}

/// Reads one HTTP/1.1 response (its body by `Content-Length`, else to the end of the stream).
async fn read_response(reader: &mut OwnedReadHalf) -> Outcome {
    let mut buffer = Vec::new();
    let mut chunk = vec![0; 64 * KIB];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        match reader.read(&mut chunk).await {
            Ok(n) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ if !buffer.is_empty() => return Outcome::CutHead(String::from_utf8_lossy(&buffer).into_owned()),
            Ok(_) => return Outcome::Closed("closed"),
            Err(_) => return Outcome::Closed("reset"),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head:?}"));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let content_type = header("content-type");
    let length: Option<usize> = header("content-length").and_then(|value| value.parse().ok());
    let mut body = buffer.split_off(head_end);
    // Error answers are small; the bound keeps a misbehaving stream from filling the test.
    let wanted = length.unwrap_or(MIB).min(MIB);
    while body.len() < wanted {
        match reader.read(&mut chunk).await {
            Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    Outcome::Response {
        status,
        content_type,
        body,
    }
}

/// Checks an outcome against the case; `Err` says what is wrong.
fn check(case: &Case, outcome: &Outcome) -> Result<(), String> {
    let Case { name, expect, .. } = case;
    let (status, content_type, body) = match outcome {
        Outcome::Response {
            status,
            content_type,
            body,
        } => (*status, content_type, body),
        Outcome::Closed(_) if expect.parser => return Ok(()),
        other => return Err(format!("{name}: {other}; expected {:?}", expect.statuses)),
    };
    let is_problem = content_type.as_deref() == Some("application/problem+json");
    // A per-caller or per-tenant rate limit may throttle the repeated corpus: a 4xx too, when
    // it is ours.
    let throttled = status == 429 && is_problem;
    if !expect.statuses.contains(&status) && !throttled {
        let shown = String::from_utf8_lossy(&body[..body.len().min(500)]);
        return Err(format!(
            "{name}: {status} (expected one of {:?}), content type {content_type:?}, body {shown:?}",
            expect.statuses
        ));
    }
    if !is_problem {
        return if expect.parser {
            Ok(())
        } else {
            Err(format!(
                "{name}: {status} as {content_type:?}, not application/problem+json"
            ))
        };
    }
    let problem: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| format!("{name}: the problem is not JSON ({error})"))?;
    let code = problem["code"]
        .as_str()
        .ok_or_else(|| format!("{name}: a problem without a code: {problem}"))?;
    if problem["status"] != status {
        return Err(format!(
            "{name}: problem status {} under HTTP {status}",
            problem["status"]
        ));
    }
    if !throttled && !expect.codes.is_empty() && !expect.codes.contains(&code) {
        return Err(format!("{name}: code {code:?}, expected one of {:?}", expect.codes));
    }
    Ok(())
}

// --- the corpus ---------------------------------------------------------------------------

/// A small seeded generator (xorshift64*), so that every run sends the same bytes.
struct Noise(u64);

impl Noise {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes()[0]
    }

    fn take(&mut self, len: usize, keep: impl Fn(u8) -> bool) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let byte = self.byte();
            if keep(byte) {
                bytes.push(byte);
            }
        }
        bytes
    }
}

/// Every hostile request, on `ROUTE` (GET and POST where both fit), without an
/// `Authorization` header and with a valid token (which gets past access, so that the body
/// and parameter checks behind it run too).
fn corpus(token: &str) -> Vec<Case> {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut cases = Vec::new();
    let mut add = |name: String, head: Arc<[u8]>, body: Body, expect: Expect| {
        cases.push(Case {
            name,
            head,
            body,
            expect,
        });
    };

    let long_query = format!("{ROUTE}?{VALID_QUERY}&pad={}", "a".repeat(MIB));
    let long_path = format!("{ROUTE}/{}", "a".repeat(100 * KIB));
    let big_body: Arc<[u8]> = format!(r#"{{"pad":"{}"}}"#, "a".repeat(10 * MIB)).into_bytes().into();
    let nested: Arc<[u8]> = vec![b'['; 100_000].into();
    let many_keys = (0..100_000)
        .map(|key| format!(r#""k{key}":0"#))
        .collect::<Vec<_>>()
        .join(",");
    let many_keys: Arc<[u8]> = format!("{{{many_keys}}}").into_bytes().into();
    let bad_utf8_body: Arc<[u8]> = b"{\"from\":\"\xff\xfe\",\"to\":\"2026-12-01 00:00:00\"}"
        .as_slice()
        .into();
    let flood: Vec<(String, &[u8])> = (0..500).map(|n| (format!("X-Flood-{n}"), b"x".as_slice())).collect();
    let flood: Vec<(&str, &[u8])> = flood.iter().map(|(name, value)| (name.as_str(), *value)).collect();
    let huge_header = vec![b'a'; MIB];
    let mut raw_target = format!("{ROUTE}?from=").into_bytes();
    raw_target.extend_from_slice(b"\xff\xfe");

    let bearer = format!("Bearer {token}").into_bytes();
    for (auth_name, auth) in [("no auth", None), ("token", Some(bearer.as_slice()))] {
        let empty = Body::Empty;
        for method in ["GET", "POST"] {
            // 1 MiB query string: the head is over the parser's 128 KiB buffer: 431, no body.
            add(
                format!("{method} 1 MiB query string, {auth_name}"),
                head(method, long_query.as_bytes(), auth, &[], &empty),
                empty.clone(),
                parser_refusal(&[431]),
            );
            // 100 KiB path: fits the head buffer but not the `http` crate's URI: 400, no body.
            add(
                format!("{method} 100 KiB path, {auth_name}"),
                head(method, long_path.as_bytes(), auth, &[], &empty),
                empty.clone(),
                parser_refusal(&[400]),
            );
            // A 60 KiB path, under that limit, reaches routing: our 404, before access.
            add(
                format!("{method} 60 KiB path, {auth_name}"),
                head(
                    method,
                    &long_path.as_bytes()[..ROUTE.len() + 60 * KIB],
                    auth,
                    &[],
                    &empty,
                ),
                empty.clone(),
                handler_error(&[404], &["not_found"]),
            );
        }

        // A 60 KiB query string reaches our code: 401 without a token; with one, the unknown
        // key is named (GET), or the query string refused (POST takes a JSON body).
        let mid_query = &long_query.as_bytes()[..ROUTE.len() + 60 * KIB];
        for (method, with_token) in [
            ("GET", handler_error(&[400], &["unknown_param"])),
            ("POST", handler_error(&[400], &["invalid_body"])),
        ] {
            add(
                format!("{method} 60 KiB query string, {auth_name}"),
                head(method, mid_query, auth, &[], &empty),
                empty.clone(),
                if auth.is_some() {
                    with_token
                } else {
                    handler_error(&[401], &["unauthenticated"])
                },
            );
        }

        // 10 MiB bodies: the handler reads at most MAX_BODY_BYTES (2 MiB), before access, and
        // answers 413 whether the size was announced or not.
        for (framing, body) in [
            ("Content-Length", Body::Whole(big_body.clone())),
            ("chunked", Body::Chunked(big_body.clone())),
        ] {
            add(
                format!("POST 10 MiB body ({framing}), {auth_name}"),
                head("POST", ROUTE.as_bytes(), auth, &[], &body),
                body,
                handler_error(&[413], &["body_too_large"]),
            );
        }

        // JSON bodies are parsed only after access: without a token 401; with one, serde_json's
        // recursion limit, the parameter specs and UTF-8 checking refuse them.
        for (what, body, with_token) in [
            ("100000 nested [", &nested, handler_error(&[400], &["invalid_body"])),
            (
                "a JSON object of 100000 keys",
                &many_keys,
                handler_error(&[400], &["unknown_param"]),
            ),
            (
                "invalid UTF-8 in a JSON string",
                &bad_utf8_body,
                handler_error(&[400], &["invalid_body"]),
            ),
        ] {
            let body = Body::Whole(body.clone());
            add(
                format!("POST {what}, {auth_name}"),
                head("POST", ROUTE.as_bytes(), auth, &[], &body),
                body,
                if auth.is_some() {
                    with_token
                } else {
                    handler_error(&[401], &["unauthenticated"])
                },
            );
        }

        // Percent-encoded bytes that are not UTF-8: refused by our query-string decoding,
        // which runs before access: 400 with or without a token.
        add(
            format!("GET %ff%fe in the query string, {auth_name}"),
            head(
                "GET",
                format!("{ROUTE}?from=%ff%fe&to=2026-12-01%2000:00:00").as_bytes(),
                auth,
                &[],
                &empty,
            ),
            empty.clone(),
            handler_error(&[400], &["invalid_encoding"]),
        );
        // Raw bytes 0xff 0xfe in the request target: not a URI: the parser's 400, no body.
        add(
            format!("GET raw 0xff 0xfe in the request target, {auth_name}"),
            head("GET", &raw_target, auth, &[], &empty),
            empty.clone(),
            parser_refusal(&[400]),
        );
        // 500 headers: over the parser's 96: 431, no body.
        add(
            format!("GET 500 headers, {auth_name}"),
            head("GET", format!("{ROUTE}?{VALID_QUERY}").as_bytes(), auth, &flood, &empty),
            empty.clone(),
            parser_refusal(&[431]),
        );
        // One 1 MiB header: over the 128 KiB head buffer: 431, no body.
        add(
            format!("GET one 1 MiB header, {auth_name}"),
            head(
                "GET",
                format!("{ROUTE}?{VALID_QUERY}").as_bytes(),
                auth,
                &[("X-Huge", &huge_header)],
                &empty,
            ),
            empty.clone(),
            parser_refusal(&[431]),
        );
    }

    // Authorization headers that hold no usable bearer token.
    let bearer_of = |token: &[u8]| [b"Bearer ".as_slice(), token].concat();
    // Any byte but CR and LF (which would end the header): its control bytes make the header
    // unparseable: the parser's 400, no body.
    let random_token = bearer_of(&noise.take(100 * KIB, |byte| byte != b'\r' && byte != b'\n'));
    // Bytes 0x80-0xff only: obs-text the parser lets through, but not text our code can read,
    // so no token at all: our 401.
    let high_token = bearer_of(&noise.take(100 * KIB, |byte| byte >= 0x80));
    // Shaped like a JWT (three base64url parts) but 100 KiB: over the verifier's 16 KiB limit.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut jwt_like: Vec<u8> = noise
        .take(100 * KIB, |_| true)
        .into_iter()
        .map(|byte| alphabet[usize::from(byte) % alphabet.len()])
        .collect();
    jwt_like[10] = b'.';
    jwt_like[50 * KIB] = b'.';
    let jwt_like = bearer_of(&jwt_like);
    let authorizations: [(&str, &[u8], Expect); 6] = [
        (
            "random bytes 100 KiB bearer token",
            &random_token,
            parser_refusal(&[400]),
        ),
        (
            "bytes 0x80-0xff 100 KiB bearer token",
            &high_token,
            handler_error(&[401], &["unauthenticated"]),
        ),
        (
            "JWT-shaped 100 KiB bearer token",
            &jwt_like,
            handler_error(&[401], &["invalid_token"]),
        ),
        (
            "bearer token abc.def.ghi",
            b"Bearer abc.def.ghi",
            handler_error(&[401], &["invalid_token"]),
        ),
        // A valid token without its scheme; a scheme without a token.
        (
            "Authorization without a scheme",
            token.as_bytes(),
            handler_error(&[401], &["unauthenticated"]),
        ),
        (
            "Authorization: Bearer and nothing",
            b"Bearer",
            handler_error(&[401], &["unauthenticated"]),
        ),
    ];
    for (what, value, expect) in authorizations {
        let body = Body::Empty;
        add(
            format!("GET {what}"),
            head(
                "GET",
                format!("{ROUTE}?{VALID_QUERY}").as_bytes(),
                Some(value),
                &[],
                &body,
            ),
            body,
            expect,
        );
    }

    // Not HTTP at all: the parser's 400, no body.
    let tls_client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
        0x07, 0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00,
    ];
    for (what, bytes) in [
        ("4 KiB of random bytes", noise.take(4 * KIB, |_| true)),
        ("a TLS ClientHello", tls_client_hello.to_vec()),
        ("an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ("a line that is not a request line", b"HELLO\r\n\r\n".to_vec()),
    ] {
        add(
            format!("raw TCP: {what}"),
            bytes.into(),
            Body::Empty,
            parser_refusal(&[400]),
        );
    }
    cases
}

/// Sends every case once, in turn, and returns each outcome with the time it took to arrive,
/// and what failed.
async fn send_corpus(handler: &Handler, cases: &[Case], linger: Duration) -> (Vec<(Outcome, Duration)>, Vec<String>) {
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let (outcome, elapsed, unasked) = exchange(handler.port, case, linger).await;
        if let Err(failure) = check(case, &outcome) {
            failures.push(failure);
        }
        if !unasked.is_empty() {
            let shown = String::from_utf8_lossy(&unasked[..unasked.len().min(200)]).into_owned();
            failures.push(format!("{}: after its answer the handler sent {shown:?}", case.name));
        }
        outcomes.push((outcome, elapsed));
    }
    (outcomes, failures)
}

// --- the tests ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_a_4xx_or_a_clean_close() {
    let mut handler = Handler::start().await;
    let cases = corpus(&handler.token);
    // Each connection is watched a little after its answer, for a second, unasked response
    // (as a dispatcher could send on finding body bytes it did not expect).
    let (outcomes, failures) = send_corpus(&handler, &cases, Duration::from_millis(150)).await;
    for (case, (outcome, elapsed)) in cases.iter().zip(&outcomes) {
        eprintln!("{}: {outcome} ({} ms)", case.name, elapsed.as_millis());
    }
    handler.assert_healthy().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_up_other_requests() {
    let mut handler = Handler::start().await;
    // Slowloris: connections that send part of a request head, then nothing.
    let mut stalled = Vec::new();
    for n in 0..50 {
        let mut stream = TcpStream::connect(("127.0.0.1", handler.port))
            .await
            .expect("connecting");
        stream
            .write_all(format!("GET {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{n}: a").as_bytes())
            .await
            .expect("partial head");
        stalled.push(stream);
    }
    // And one that sends a whole head and part of the body it announced: nobody else waits
    // for it, and the handler gives up on the body after its read timeout (408).
    let mut stalled_body = TcpStream::connect(("127.0.0.1", handler.port))
        .await
        .expect("connecting");
    stalled_body
        .write_all(
            format!(
                "POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"from\":",
                handler.token
            )
            .as_bytes(),
        )
        .await
        .expect("partial body");
    let opened = Instant::now();

    // Meanwhile others are served: the readiness probe, and the endpoint up to its parameters.
    assert_eq!(handler.get_root().await, Some(200), "GET / while clients stall");
    let probe = handler.authorised_probe();
    let (outcome, _, _) = exchange(handler.port, &probe, Duration::ZERO).await;
    check(&probe, &outcome).unwrap_or_else(|failure| panic!("while clients stall: {failure}"));
    eprintln!(
        "with {} stalled clients: GET / 200, endpoint {outcome}, {} ms after they stalled",
        stalled.len() + 1,
        opened.elapsed().as_millis()
    );

    // Stalled heads are not kept: actix-http's client request timeout (5 s) answers 408 and
    // closes. A close without a response is a clean end too.
    let (mut answered_408, mut closed) = (0, 0);
    for stream in &mut stalled {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(HANG_LIMIT, stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("a stalled head was kept over {HANG_LIMIT:?}"));
        if answer.starts_with(b"HTTP/1.1 408") {
            answered_408 += 1;
        } else if answer.is_empty() || read.is_err() {
            closed += 1;
        } else {
            panic!("a stalled head got {:?}", String::from_utf8_lossy(&answer));
        }
    }
    eprintln!(
        "stalled heads: {answered_408} answered 408, {closed} closed, all within {} ms",
        opened.elapsed().as_millis()
    );
    let mut answer = Vec::new();
    let limit = chgate::http::BODY_READ_TIMEOUT + HANG_LIMIT;
    let _ = tokio::time::timeout(limit, stalled_body.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("a stalled body was kept over {limit:?}"));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body got {answer:?}");
    assert!(answer.contains("body_timeout"), "{answer}");
    eprintln!("stalled body: 408 after {} ms", opened.elapsed().as_millis());
    handler.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_over_twenty_rounds_of_the_corpus() {
    let mut handler = Handler::start().await;
    let cases = corpus(&handler.token);
    let (idle_rss, idle_hwm) = handler.memory();
    eprintln!("idle: VmRSS {idle_rss} KiB, VmHWM {idle_hwm} KiB");
    let (mut failures, mut throttled) = (Vec::new(), 0);
    for round in 1..=ROUNDS {
        // A stalled client for the length of each round, as a slowloris keeps.
        let mut stalled = TcpStream::connect(("127.0.0.1", handler.port))
            .await
            .expect("connecting");
        stalled
            .write_all(format!("POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes())
            .await
            .expect("partial head");
        let (outcomes, round_failures) = send_corpus(&handler, &cases, Duration::ZERO).await;
        throttled += outcomes
            .iter()
            .filter(|(outcome, _)| matches!(outcome, Outcome::Response { status: 429, .. }))
            .count();
        failures.extend(
            round_failures
                .into_iter()
                .map(|failure| format!("round {round}: {failure}")),
        );
        drop(stalled);
        if round == 1 || round % 5 == 0 {
            let (rss, hwm) = handler.memory();
            eprintln!("after round {round}: VmRSS {rss} KiB, VmHWM {hwm} KiB");
        }
    }
    let (rss, hwm) = handler.memory();
    let growth = hwm.saturating_sub(idle_hwm);
    eprintln!(
        "after {ROUNDS} rounds of {} requests: VmRSS {rss} KiB, VmHWM {hwm} KiB; VmHWM grew {growth} KiB \
         (limit {HWM_GROWTH_LIMIT_KIB} KiB); {throttled} answers were 429",
        cases.len()
    );
    handler.assert_healthy().await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        growth < HWM_GROWTH_LIMIT_KIB,
        "VmHWM grew from {idle_hwm} KiB to {hwm} KiB over {ROUNDS} rounds"
    );
}
