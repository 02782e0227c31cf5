//! The local ClickHouse answers like a ClickHouse server: these tests hold for any server
//! (set CLICKHOUSE_URL) and prove the local front faithful to the protocol the official crate
//! and curl use.

use std::time::{Duration, Instant};

use clickhouse::{Compression, Row};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;
use xtask::connection::Connection;

use crate::helpers::{TestDatabase, connection, error_code};

/// Sends `value` as the typed parameter `{v:<ty>}` and returns what the server made of it,
/// with the type the server gave the parameter.
async fn round_trip<T>(db: &TestDatabase, ty: &str, value: impl Serialize) -> (T, String)
where
    (T, String): clickhouse::RowOwned + clickhouse::RowRead,
{
    db.client()
        .query(&format!("SELECT {{v:{ty}}} AS v, toTypeName(v) AS t"))
        .param("v", value)
        .fetch_one::<(T, String)>()
        .await
        .unwrap_or_else(|e| panic!("round trip of {ty} failed: {e}"))
}

#[tokio::test]
async fn string_parameters_arrive_byte_for_byte() {
    let db = TestDatabase::create().await;
    let cases = [
        "plain",
        "it's",
        "back\\slash",
        "tab\tnew\nline\r",
        "' OR 1=1 --",
        "'; DROP TABLE events; --",
        "unicode: Grüße, 東京, 🚀",
        "nul\0byte",
        "{v:String}",
        "",
    ];
    for case in cases {
        let (value, ty): (String, String) = round_trip(&db, "String", case).await;
        assert_eq!(value, case);
        assert_eq!(ty, "String");
    }
    let large = "x'\\".repeat(350_000);
    let (value, _): (String, String) = round_trip(&db, "String", large.as_str()).await;
    assert_eq!(value, large, "a 1 MB string parameter must survive");
}

#[tokio::test]
async fn integer_parameters_keep_their_bounds_and_types() {
    let db = TestDatabase::create().await;
    assert_eq!(round_trip::<i8>(&db, "Int8", i8::MIN).await, (i8::MIN, "Int8".into()));
    assert_eq!(round_trip::<i8>(&db, "Int8", i8::MAX).await, (i8::MAX, "Int8".into()));
    assert_eq!(
        round_trip::<i16>(&db, "Int16", i16::MIN).await,
        (i16::MIN, "Int16".into())
    );
    assert_eq!(
        round_trip::<i32>(&db, "Int32", i32::MIN).await,
        (i32::MIN, "Int32".into())
    );
    assert_eq!(
        round_trip::<i64>(&db, "Int64", i64::MIN).await,
        (i64::MIN, "Int64".into())
    );
    assert_eq!(
        round_trip::<i64>(&db, "Int64", i64::MAX).await,
        (i64::MAX, "Int64".into())
    );
    assert_eq!(round_trip::<u8>(&db, "UInt8", u8::MAX).await, (u8::MAX, "UInt8".into()));
    assert_eq!(
        round_trip::<u16>(&db, "UInt16", u16::MAX).await,
        (u16::MAX, "UInt16".into())
    );
    assert_eq!(
        round_trip::<u32>(&db, "UInt32", u32::MAX).await,
        (u32::MAX, "UInt32".into())
    );
    assert_eq!(
        round_trip::<u64>(&db, "UInt64", u64::MAX).await,
        (u64::MAX, "UInt64".into())
    );
    assert_eq!(round_trip::<u64>(&db, "UInt64", 0u64).await, (0, "UInt64".into()));
}

#[tokio::test]
async fn float_and_bool_parameters_round_trip() {
    let db = TestDatabase::create().await;
    assert_eq!(
        round_trip::<f64>(&db, "Float64", -1.5e-300).await,
        (-1.5e-300, "Float64".into())
    );
    assert_eq!(round_trip::<f64>(&db, "Float64", 0.1).await, (0.1, "Float64".into()));
    assert_eq!(round_trip::<bool>(&db, "Bool", true).await, (true, "Bool".into()));
    assert_eq!(round_trip::<bool>(&db, "Bool", false).await, (false, "Bool".into()));
}

#[derive(Debug, Row, Deserialize)]
struct Temporal {
    #[serde(with = "clickhouse::serde::time::date")]
    d: time::Date,
    #[serde(with = "clickhouse::serde::time::datetime")]
    dt: OffsetDateTime,
    #[serde(with = "clickhouse::serde::time::datetime64::millis")]
    dt64: OffsetDateTime,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    types: String,
}

#[tokio::test]
async fn date_time_and_uuid_parameters_round_trip() {
    let db = TestDatabase::create().await;
    let id = Uuid::new_v4();
    let row = db
        .client()
        .query(
            "SELECT {d:Date} AS d, {dt:DateTime('UTC')} AS dt, {dt64:DateTime64(3, 'UTC')} AS dt64,
                    {id:UUID} AS id,
                    concat(toTypeName(d), ',', toTypeName(dt), ',', toTypeName(dt64), ',',
                           toTypeName(id)) AS types",
        )
        .param("d", "2026-12-04")
        .param("dt", "2026-12-04 10:11:12")
        .param("dt64", "2026-12-04 10:11:12.345")
        .param("id", id.to_string())
        .fetch_one::<Temporal>()
        .await
        .expect("temporal parameters");
    assert_eq!(row.d, date!(2026 - 12 - 04));
    assert_eq!(row.dt, datetime!(2026-12-04 10:11:12 UTC));
    assert_eq!(row.dt64, datetime!(2026-12-04 10:11:12.345 UTC));
    assert_eq!(row.id, id);
    assert_eq!(row.types, "Date,DateTime('UTC'),DateTime64(3, 'UTC'),UUID");
}

#[tokio::test]
async fn array_and_nullable_parameters_round_trip() {
    let db = TestDatabase::create().await;
    let items = vec!["a'b".to_owned(), "c\\d".to_owned(), "e,f]".to_owned(), String::new()];
    let (value, ty): (Vec<String>, String) = round_trip(&db, "Array(String)", &items).await;
    assert_eq!((value, ty.as_str()), (items, "Array(String)"));

    let (value, ty): (Option<String>, String) = round_trip(&db, "Nullable(String)", None::<String>).await;
    assert_eq!((value, ty.as_str()), (None, "Nullable(String)"));
    let (value, _): (Option<String>, String) = round_trip(&db, "Nullable(String)", Some("x")).await;
    assert_eq!(value.as_deref(), Some("x"));
    let (value, _): (Option<i64>, String) = round_trip(&db, "Nullable(Int64)", Some(-7i64)).await;
    assert_eq!(value, Some(-7));
}

#[tokio::test]
async fn a_bad_parameter_value_is_error_457() {
    let db = TestDatabase::create().await;
    let error = db
        .client()
        .query("SELECT {v:UInt8}")
        .param("v", "not a number")
        .fetch_one::<u8>()
        .await
        .expect_err("a non-number for UInt8 must fail");
    assert_eq!(error_code(&error), Some(457), "{error}");
}

#[tokio::test]
async fn an_unknown_table_is_error_60_with_status_404() {
    let db = TestDatabase::create().await;
    let error = db
        .client()
        .query("SELECT count() FROM no_such_table")
        .fetch_one::<u64>()
        .await
        .expect_err("unknown table");
    assert_eq!(error_code(&error), Some(60), "{error}");

    let connection = db.connection();
    let response = reqwest::Client::new()
        .post(format!("{}/?database={}", connection.url, db.name))
        .header("X-ClickHouse-User", &connection.user)
        .header("X-ClickHouse-Key", &connection.password)
        .body("SELECT count() FROM no_such_table")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["X-ClickHouse-Exception-Code"], "60");
    let body = response.text().await.expect("body");
    assert!(body.starts_with("Code: 60. DB::Exception: "), "{body}");
    assert!(body.contains("(UNKNOWN_TABLE)"), "{body}");
}

#[tokio::test]
async fn a_query_past_max_execution_time_fails_with_timeout_exceeded() {
    let db = TestDatabase::create().await;
    let error = db
        .client()
        .query("SELECT sum(cityHash64(number)) FROM numbers(1000000000000)")
        .with_setting("max_execution_time", "1")
        .fetch_one::<u64>()
        .await
        .expect_err("the query cannot finish within one second");
    assert_eq!(error_code(&error), Some(159), "{error}");
    assert!(error.to_string().contains("TIMEOUT_EXCEEDED"), "{error}");
    // The setting lasted for its own query only.
    let value: String = db
        .client()
        .query("SELECT toString(getSetting('max_execution_time'))")
        .fetch_one()
        .await
        .expect("reading the setting");
    assert_ne!(value, "1");
}

#[tokio::test]
async fn max_result_rows_is_honoured() {
    let db = TestDatabase::create().await;
    let error = db
        .client()
        .query("SELECT number FROM numbers(1000)")
        .with_setting("max_result_rows", "10")
        .with_setting("result_overflow_mode", "throw")
        .fetch_all::<u64>()
        .await
        .expect_err("1000 rows exceed max_result_rows = 10");
    assert_eq!(error_code(&error), Some(396), "{error}");
}

#[tokio::test]
async fn readonly_refuses_writes_but_allows_reads() {
    let db = TestDatabase::create().await;
    let client = db.client().with_setting("readonly", "2");
    let error = client
        .query("CREATE TABLE t (x UInt8) ENGINE = Memory")
        .execute()
        .await
        .expect_err("readonly refuses DDL");
    assert_eq!(error_code(&error), Some(164), "{error}");
    let n: u8 = client
        .query("SELECT 1")
        .fetch_one()
        .await
        .expect("readonly allows SELECT");
    assert_eq!(n, 1);
    // readonly = 1 also forbids changing settings.
    let error = db
        .client()
        .with_setting("readonly", "1")
        .with_setting("max_threads", "1")
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .expect_err("readonly = 1 refuses setting changes");
    assert_eq!(error_code(&error), Some(164), "{error}");
}

#[tokio::test]
async fn only_one_statement_per_request() {
    let db = TestDatabase::create().await;
    let error = db
        .client()
        .query("SELECT 1; SELECT 2")
        .execute()
        .await
        .expect_err("multi-statements are refused");
    assert_eq!(error_code(&error), Some(62), "{error}");
    // A semicolon inside a string or a trailing one is not a second statement.
    let value: String = db
        .client()
        .query("SELECT 'a;b';")
        .fetch_one()
        .await
        .expect("one statement");
    assert_eq!(value, "a;b");
}

#[tokio::test]
async fn wrong_credentials_are_error_516() {
    let db = TestDatabase::create().await;
    let error = db
        .client()
        .with_password("not-the-password")
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(error_code(&error), Some(516), "{error}");
    let error = db
        .client()
        .with_user("nobody")
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .expect_err("an unknown user is refused");
    assert_eq!(error_code(&error), Some(516), "{error}");
}

#[tokio::test]
async fn a_rotated_password_takes_effect_without_a_restart() {
    let connection = connection();
    let Some(users_file) = connection.users_file.clone() else {
        eprintln!("skipped: rotation needs the local ClickHouse's users file (not a remote server)");
        return;
    };
    let original = std::fs::read_to_string(&users_file).expect("users file");
    let mut users: serde_json::Value = serde_json::from_str(&original).expect("users json");
    users["users"]["rotation_probe"] = serde_json::json!({ "password": "first" });
    std::fs::write(&users_file, users.to_string()).expect("writing users");
    let probe = connection.client().with_user("rotation_probe");
    let ok: u8 = probe
        .clone()
        .with_password("first")
        .query("SELECT 1")
        .fetch_one()
        .await
        .expect("first password");
    assert_eq!(ok, 1);

    users["users"]["rotation_probe"] = serde_json::json!({ "password": "second" });
    std::fs::write(&users_file, users.to_string()).expect("rotating");
    let old = probe
        .clone()
        .with_password("first")
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await;
    let new = probe.with_password("second").query("SELECT 1").fetch_one::<u8>().await;

    // Put the file back before asserting, so a failure leaves no stray user behind.
    let mut restored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&users_file).expect("users file")).expect("json");
    restored["users"]
        .as_object_mut()
        .expect("users object")
        .remove("rotation_probe");
    std::fs::write(&users_file, restored.to_string()).expect("restoring users");

    assert_eq!(error_code(&old.expect_err("the old password is refused")), Some(516));
    assert_eq!(new.expect("the new password works"), 1);
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Payload {
    id: u64,
    name: String,
    tags: Vec<String>,
    note: Option<String>,
    score: f64,
}

fn payloads(count: u64) -> Vec<Payload> {
    (0..count)
        .map(|id| Payload {
            id,
            name: format!(
                "row {id}: it's a \"name\" with \\ and \t and {}",
                "é".repeat((id % 40) as usize)
            ),
            tags: (0..id % 4).map(|t| format!("tag{t}")).collect(),
            note: (id % 3 == 0).then(|| "x".repeat((id % 97) as usize)),
            score: id as f64 / 7.0,
        })
        .collect()
}

async fn insert_and_read_back(db: &TestDatabase, compression: Compression, rows: u64) {
    let client = db.client().with_compression(compression);
    client
        .query(
            "CREATE TABLE payloads (id UInt64, name String, tags Array(String),
                                    note Nullable(String), score Float64)
             ENGINE = MergeTree ORDER BY id",
        )
        .execute()
        .await
        .expect("creating the table");
    let sent = payloads(rows);
    let mut insert = client.insert::<Payload>("payloads").await.expect("insert");
    for row in &sent {
        insert.write(row).await.expect("writing a row");
    }
    insert.end().await.expect("finishing the insert");
    let received = client
        .query("SELECT ?fields FROM payloads ORDER BY id")
        .fetch_all::<Payload>()
        .await
        .expect("reading");
    assert_eq!(received.len(), sent.len(), "every row arrives");
    assert!(received == sent, "every row arrives intact");
}

#[tokio::test]
async fn a_5_mb_insert_arrives_whole_with_lz4_compression() {
    let db = TestDatabase::create().await;
    insert_and_read_back(&db, Compression::Lz4, 60_000).await;
    let bytes: u64 = db
        .client()
        .query("SELECT sum(length(name) + length(ifNull(note, '')) + 8) FROM payloads")
        .fetch_one()
        .await
        .expect("size");
    assert!(bytes > 5_000_000, "the batch must be at least 5 MB, was {bytes}");
}

#[tokio::test]
async fn a_5_mb_insert_arrives_whole_without_compression() {
    let db = TestDatabase::create().await;
    insert_and_read_back(&db, Compression::None, 60_000).await;
}

#[tokio::test]
async fn large_results_stream_intact_with_and_without_compression() {
    let db = TestDatabase::create().await;
    for compression in [Compression::Lz4, Compression::None] {
        let mut cursor = db
            .client()
            .with_compression(compression)
            .query("SELECT number FROM numbers(2000000)")
            .fetch::<u64>()
            .expect("query");
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(n) = cursor.next().await.expect("row") {
            assert_eq!(n, count, "rows arrive in order");
            count += 1;
            sum += n;
        }
        assert_eq!((count, sum), (2_000_000, 1_999_999_000_000));
    }
}

#[tokio::test]
async fn an_error_after_rows_have_streamed_is_not_a_clean_end() {
    let db = TestDatabase::create().await;
    // Late enough that a server has already sent rows when the exception is thrown.
    let mut cursor = db
        .client()
        .query("SELECT number, throwIf(number = 1500000) FROM numbers(3000000)")
        .with_setting("max_block_size", "10000")
        .fetch_bytes("RowBinary")
        .expect("query");
    let mut body = Vec::new();
    let outcome = loop {
        match cursor.next().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    assert!(!body.is_empty(), "rows were streamed before the exception");
    assert!(
        body.len() < 1_500_000 * 9,
        "rows past the failure must not arrive ({} bytes)",
        body.len()
    );
    match outcome {
        // The crate saw the exception trailer in one piece.
        Err(error) => assert!(
            error.to_string().contains("FUNCTION_THROW_IF_VALUE_IS_NON_ZERO") || error_code(&error) == Some(395),
            "{error}"
        ),
        // The trailer reached the crate split across pieces: it is at the end of the body, as a
        // server writes it (the handler holds back the tail and finds it there).
        Ok(()) => {
            let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(4096)..]).into_owned();
            assert!(
                tail.ends_with("__exception__\r\n"),
                "the body ends cleanly without the exception"
            );
            assert!(tail.contains("FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"), "{tail}");
        }
    }
}

#[tokio::test]
async fn sixteen_concurrent_clients_all_get_their_own_answers() {
    let db = TestDatabase::create().await;
    let queries = (0..16u64).map(|i| {
        let client = db.client();
        async move {
            let n = 10_000 + i * 1_000;
            let (echo, sum): (u64, u64) = client
                .query("SELECT {n:UInt64}, sum(number) FROM numbers({n:UInt64})")
                .param("n", n)
                .with_setting("max_threads", (1 + i % 2).to_string())
                .fetch_one()
                .await
                .expect("concurrent query");
            assert_eq!(echo, n);
            assert_eq!(sum, n * (n - 1) / 2);
        }
    });
    join_all(queries).await;
}

#[tokio::test]
async fn curl_style_requests_work() {
    let db = TestDatabase::create().await;
    let connection = db.connection();
    let http = reqwest::Client::new();
    let auth = |request: reqwest::RequestBuilder| request.basic_auth(&connection.user, Some(&connection.password));
    // POST body with a URL parameter, as in `curl '...?param_t=acme' --data-binary '...'`.
    let body = auth(http.post(format!("{}/?param_t=acme%20co", connection.url)))
        .body("SELECT {t:String} AS t, toTypeName(t)")
        .send()
        .await
        .expect("post")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "acme co\tString\n");
    // GET with ?query= is read-only.
    let response = auth(http.get(format!("{}/?query=SELECT%201%2B1", connection.url)))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("X-ClickHouse-Query-Id"));
    assert!(response.headers().contains_key("X-ClickHouse-Summary"));
    assert_eq!(response.text().await.expect("body"), "2\n");
    let response = auth(http.get(format!(
        "{}/?database={}&query=CREATE%20TABLE%20t%20(x%20UInt8)%20ENGINE%3DMemory",
        connection.url, db.name
    )))
    .send()
    .await
    .expect("get");
    assert_eq!(
        response.headers()["X-ClickHouse-Exception-Code"],
        "164",
        "GET is read-only"
    );
    // Text inserts in the body, after the query in the URL.
    auth(http.post(format!("{}/?database={}", connection.url, db.name)))
        .body("CREATE TABLE t (x UInt8, s String) ENGINE = Memory")
        .send()
        .await
        .expect("create")
        .error_for_status()
        .expect("created");
    auth(http.post(format!(
        "{}/?database={}&query=INSERT%20INTO%20t%20FORMAT%20TabSeparated",
        connection.url, db.name
    )))
    .body("1\ta\n2\tb\n")
    .send()
    .await
    .expect("insert")
    .error_for_status()
    .expect("inserted");
    let body = auth(http.post(format!(
        "{}/?database={}&default_format=JSONEachRow",
        connection.url, db.name
    )))
    .body("SELECT * FROM t ORDER BY x")
    .send()
    .await
    .expect("select")
    .text()
    .await
    .expect("body");
    assert_eq!(body, "{\"x\":1,\"s\":\"a\"}\n{\"x\":2,\"s\":\"b\"}\n");
    // Health endpoints answer without credentials.
    let ping = http.get(format!("{}/ping", connection.url)).send().await.expect("ping");
    assert_eq!(ping.text().await.expect("body"), "Ok.\n");
}

#[tokio::test]
async fn one_connection_serves_request_after_request() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let connection = connection();
    let address = crate::helpers::clickhouse_address();
    let stream = tokio::net::TcpStream::connect(&address).await.expect("connecting");
    let mut stream = BufReader::new(stream);
    for n in 1..=3u32 {
        let sql = format!("SELECT {n} * 10");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {address}\r\nX-ClickHouse-User: {}\r\nX-ClickHouse-Key: {}\r\n\
             Content-Length: {}\r\n\r\n{sql}",
            connection.user,
            connection.password,
            sql.len()
        );
        stream.get_mut().write_all(request.as_bytes()).await.expect("sending");
        let mut status = String::new();
        stream.read_line(&mut status).await.expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut length = None;
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await.expect("header");
            if header == "\r\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            assert!(
                !lower.starts_with("connection: close"),
                "the server must keep the connection"
            );
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = Some(value.trim().parse::<usize>().expect("length"));
            }
        }
        let mut body = vec![0; length.expect("a sized response")];
        stream.read_exact(&mut body).await.expect("body");
        assert_eq!(String::from_utf8(body).expect("utf8"), format!("{}\n", n * 10));
    }
}

/// Half a second of sleep per row, one row per block: 10 s in all, and a kill is noticed
/// between any two rows.
const SLOW_QUERY: &str = "SELECT sleepEachRow(0.5), number FROM system.numbers LIMIT 20 SETTINGS max_block_size = 1";

/// A query in progress, as the server's process list shows it.
#[derive(Debug, Row, Deserialize)]
struct Process {
    query_id: String,
    user: String,
    elapsed: f64,
    /// `waiting` (queued for the local engine) or `running`.
    state: String,
}

/// The local front's `/_front/processes`, its stand-in for system.processes (answered while
/// the engine is busy); `None` from a server, which has no such handle.
async fn front_processes(connection: &Connection) -> Option<Vec<Process>> {
    #[derive(Deserialize)]
    struct List {
        processes: Vec<Process>,
    }
    let response = reqwest::Client::new()
        .get(format!("{}/_front/processes", connection.url))
        .header("X-ClickHouse-User", &connection.user)
        .header("X-ClickHouse-Key", &connection.password)
        .send()
        .await
        .expect("asking for the process list");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    Some(response.json::<List>().await.expect("process list").processes)
}

/// The queries in progress: the front's list, or a server's system.processes.
async fn processes(connection: &Connection) -> Vec<Process> {
    match front_processes(connection).await {
        Some(list) => list,
        None => connection
            .client()
            .query("SELECT query_id, user, elapsed, 'running' AS state FROM system.processes")
            .fetch_all()
            .await
            .expect("system.processes"),
    }
}

/// Polls the process list until `query_id` is in `state` (`None`: gone), and says how long
/// that took; fails after `limit`.
pub(crate) async fn wait_for_state(
    connection: &Connection,
    query_id: &str,
    state: Option<&str>,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let list = processes(connection).await;
        let current = list
            .iter()
            .find(|process| process.query_id == query_id)
            .map(|process| process.state.as_str());
        if current == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{query_id} not {state:?} within {limit:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A read-only query with the settings the handler sends (cancel it if the client hangs up).
fn read_only_request(connection: &Connection, query_id: &str, sql: &str) -> String {
    format!(
        "POST /?query_id={query_id}&readonly=2&cancel_http_readonly_queries_on_client_close=1 HTTP/1.1\r\n\
         Host: {}\r\nX-ClickHouse-User: {}\r\nX-ClickHouse-Key: {}\r\nContent-Length: {}\r\n\r\n{sql}",
        crate::helpers::clickhouse_address(),
        connection.user,
        connection.password,
        sql.len()
    )
}

/// Sends a read-only query from a connection of its own, leaving the answer unread.
async fn send_read_only(connection: &Connection, query_id: &str, sql: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(crate::helpers::clickhouse_address())
        .await
        .expect("connecting");
    let request = read_only_request(connection, query_id, sql);
    stream.write_all(request.as_bytes()).await.expect("sending");
    BufReader::new(stream)
}

/// Reads one response with a Content-Length (the front sizes results it has held back):
/// its status and body.
async fn read_response(stream: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status = String::new();
    stream.read_line(&mut status).await.expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status:?}"));
    let mut length = None;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.expect("header");
        if header == "\r\n" {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = Some(value.trim().parse::<usize>().expect("length"));
        }
    }
    let mut body = vec![0; length.expect("a sized response")];
    stream.read_exact(&mut body).await.expect("body");
    (code, String::from_utf8(body).expect("utf8"))
}

#[tokio::test]
async fn a_client_that_hangs_up_has_its_running_query_cancelled() {
    let connection = connection();
    let query_id = format!("hang-up-{}", Uuid::new_v4().simple());
    let stream = send_read_only(&connection, &query_id, SLOW_QUERY).await;
    // Other tests share the engine: the query may queue before it runs.
    wait_for_state(&connection, &query_id, Some("running"), Duration::from_secs(30)).await;
    drop(stream);
    let gone = wait_for_state(&connection, &query_id, None, Duration::from_secs(15)).await;
    assert!(
        gone < Duration::from_secs(1),
        "the query outlived its client by {gone:?}"
    );
    // The engine is free again: had the query run on, this would wait for ~9 s of its sleep.
    let started = Instant::now();
    let one: u8 = connection
        .client()
        .query("SELECT 1")
        .fetch_one()
        .await
        .expect("the next query");
    assert_eq!(one, 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the next query waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_has_its_query_stopped_inside_a_block() {
    let connection = connection();
    if front_processes(&connection).await.is_none() {
        // A server looks at the client when the query reports progress (rows read), and a lone
        // sleep() reads nothing until it ends; the local front watches the socket throughout.
        eprintln!("skipped: a server notices a hang-up only when the query reads rows");
        return;
    }
    let query_id = format!("hang-up-block-{}", Uuid::new_v4().simple());
    // One block of three seconds: nothing to notice between blocks, so the query must be
    // killed inside it. The engine looks at a kill inside sleep() once a second.
    let stream = send_read_only(&connection, &query_id, "SELECT sleep(3)").await;
    wait_for_state(&connection, &query_id, Some("running"), Duration::from_secs(30)).await;
    drop(stream);
    let gone = wait_for_state(&connection, &query_id, None, Duration::from_secs(10)).await;
    assert!(
        gone < Duration::from_secs(2),
        "the sleep went on for {gone:?} after its client left"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_while_its_query_waits_leaves_the_queue() {
    let connection = connection();
    if front_processes(&connection).await.is_none() {
        eprintln!("skipped: only the local engine queues queries (a server runs them at once)");
        return;
    }
    // Two seconds of sleep for a client that stays, holding the engine.
    let blocker_id = format!("blocker-{}", Uuid::new_v4().simple());
    let mut blocker = send_read_only(
        &connection,
        &blocker_id,
        "SELECT sleepEachRow(0.5), number FROM system.numbers LIMIT 4 SETTINGS max_block_size = 1",
    )
    .await;
    wait_for_state(&connection, &blocker_id, Some("running"), Duration::from_secs(30)).await;
    let waiter_id = format!("waiter-{}", Uuid::new_v4().simple());
    let waiter = send_read_only(&connection, &waiter_id, "SELECT 1").await;
    wait_for_state(&connection, &waiter_id, Some("waiting"), Duration::from_secs(5)).await;
    drop(waiter);
    // Behind the blocker it could only run after it, more than a second from now.
    let gone = wait_for_state(&connection, &waiter_id, None, Duration::from_secs(10)).await;
    assert!(
        gone < Duration::from_secs(1),
        "the query waited on for {gone:?} after its client left"
    );
    // The blocker's client stayed: it gets every row.
    let (status, body) = read_response(&mut blocker).await;
    assert_eq!((status, body.as_str()), (200, "0\t0\n0\t1\n0\t2\n0\t3\n"));
}

#[tokio::test]
async fn a_slow_query_of_a_client_that_stays_runs_to_its_end() {
    let connection = connection();
    let query_id = format!("slow-{}", Uuid::new_v4().simple());
    let mut stream = send_read_only(
        &connection,
        &query_id,
        "SELECT sleepEachRow(0.25), number FROM system.numbers LIMIT 6 SETTINGS max_block_size = 1",
    )
    .await;
    wait_for_state(&connection, &query_id, Some("running"), Duration::from_secs(30)).await;
    // Still listed half a second on, by its user, while it sleeps without sending anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = processes(&connection).await;
    let process = list
        .iter()
        .find(|process| process.query_id == query_id)
        .unwrap_or_else(|| panic!("{query_id} is not listed: {list:?}"));
    assert_eq!(
        (process.state.as_str(), process.user.as_str()),
        ("running", connection.user.as_str())
    );
    assert!(process.elapsed >= 0.5, "{process:?}");

    let (status, body) = read_response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "0\t0\n0\t1\n0\t2\n0\t3\n0\t4\n0\t5\n"));
    wait_for_state(&connection, &query_id, None, Duration::from_secs(1)).await;
    // The connection is still good for the next request.
    let request = read_only_request(&connection, &format!("next-{}", Uuid::new_v4().simple()), "SELECT 7");
    stream.get_mut().write_all(request.as_bytes()).await.expect("sending");
    assert_eq!(read_response(&mut stream).await, (200, "7\n".to_owned()));
}

#[tokio::test]
async fn a_sleep_past_max_execution_time_is_stopped_with_timeout_exceeded() {
    let connection = connection();
    let query_id = format!("timeout-{}", Uuid::new_v4().simple());
    let response = tokio::spawn(
        reqwest::Client::new()
            .post(format!(
                "{}/?query_id={query_id}&readonly=2&cancel_http_readonly_queries_on_client_close=1\
                 &max_execution_time=1",
                connection.url
            ))
            .header("X-ClickHouse-User", &connection.user)
            .header("X-ClickHouse-Key", &connection.password)
            .body("SELECT sleep(3)")
            .send(),
    );
    wait_for_state(&connection, &query_id, Some("running"), Duration::from_secs(30)).await;
    let running = Instant::now();
    let response = response.await.expect("request task").expect("response");
    let waited = running.elapsed();
    assert_eq!(response.status(), 408, "TIMEOUT_EXCEEDED's status");
    assert_eq!(response.headers()["X-ClickHouse-Exception-Code"], "159");
    let body = response.text().await.expect("body");
    assert!(body.contains("(TIMEOUT_EXCEEDED)"), "{body}");
    assert!(
        waited < Duration::from_secs(2),
        "the sleep went on for {waited:?} after it was seen running"
    );
}
