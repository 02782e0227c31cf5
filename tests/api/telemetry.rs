//! Telemetry export, with the handler binary started as the Functions host starts it.
//!
//! The Application Insights ingestion service cannot run here: a local receiver stands in for
//! it ([`crate::ingestion_stand_in`]), named by the connection string exactly as the real
//! endpoint would be. ClickHouse is the real local engine, reached through a TCP proxy that
//! records what the handler sends it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xtask::dev_issuer::{DevIssuer, DevKey};

use crate::helpers::{TcpProxy, TestDatabase, fixture_policy};
use crate::ingestion_stand_in::IngestionStandIn;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traceparent(span: u8, flags: &str) -> String {
    format!("00-{TRACE_ID}-00f067aa0ba902{span:02x}-{flags}")
}

fn base_type(item: &Value) -> &str {
    item["data"]["baseType"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn requests_and_queries_reach_application_insights_as_one_operation_and_nothing_private() {
    let receiver = IngestionStandIn::start().await;
    let database = TestDatabase::create().await;
    let connection = database.connection().clone();
    let proxy = TcpProxy::start(connection.url.trim_start_matches("http://")).await;
    let issuer = DevIssuer::start(0, DevKey::generate().expect("key"))
        .await
        .expect("issuer");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let mut handler = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .envs(connection.env())
        .env("CLICKHOUSE_URL", format!("http://127.0.0.1:{}", proxy.port))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("CHGATE_FUNCTIONS_DIR", fixtures.join("endpoints"))
        .env("CHGATE_HOST_JSON", fixtures.join("host.json"))
        .env("CHGATE_ACCESS_POLICY", fixture_policy(issuer.url()))
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        .env("APPLICATIONINSIGHTS_CONNECTION_STRING", receiver.connection_string())
        // Nothing is sent on a timer during the test: what arrives is what shutdown flushed.
        .env("CHGATE_TELEMETRY_SPAN_DELAY_MS", "600000")
        .env("CHGATE_TELEMETRY_METRIC_INTERVAL_SECONDS", "3600")
        // The log level filters the log only, never what is exported.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the handler");
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{address}/")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the handler never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What must never reach telemetry: the token, the subject, a parameter value.
    let subject = format!("subject-{}", uuid::Uuid::new_v4().simple());
    let token = issuer
        .token(&subject, json!({"roles": ["Test.Read"], "tid": "acme"}))
        .expect("token");
    let marker = format!("secret-value-{}", uuid::Uuid::new_v4().simple());
    let get = |path: String, span: u8, flags: &'static str| {
        client
            .get(format!("{address}/api/{path}"))
            .bearer_auth(&token)
            .header("traceparent", traceparent(span, flags))
            .send()
    };
    let echo = get(format!("echo?s={marker}"), 1, "01").await.expect("echo");
    assert_eq!(echo.status(), 200);
    let echo_query_id = echo.headers()["x-request-id"].to_str().expect("id").to_owned();
    assert_eq!(get("cached?n=7".into(), 2, "01").await.expect("miss").status(), 200);
    let hit = get("cached?n=7".into(), 3, "01").await.expect("hit");
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert_eq!(get("echo?n=5000".into(), 4, "01").await.expect("invalid").status(), 400);
    // Not sampled upstream: recorded all the same (the handler samples nothing away).
    assert_eq!(get("echo".into(), 5, "00").await.expect("unsampled").status(), 200);
    // A route value and a value in a POST body (outside the trace: other operations).
    assert_eq!(get("items/977".into(), 6, "01").await.expect("item").status(), 200);
    let body_marker = format!("body-value-{}", uuid::Uuid::new_v4().simple());
    let posted = client
        .post(format!("{address}/api/echo"))
        .bearer_auth(&token)
        .json(&json!({ "s": body_marker }))
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 200);

    // The ClickHouse side of the join: log_comment carries the trace id.
    let sent = String::from_utf8_lossy(&proxy.sent.lock().expect("capture")).into_owned();
    assert!(sent.contains(TRACE_ID), "log_comment carries the trace id");

    // A graceful stop (the host sends SIGTERM) flushes what is buffered.
    let pid = handler.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), handler.wait())
        .await
        .expect("the handler stops after SIGTERM")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let items = receiver
        .wait_for(Duration::from_secs(5), |items| {
            items.iter().any(|item| base_type(item) == "RequestData")
        })
        .await;

    for upload in receiver.uploads() {
        assert_eq!(upload.path_and_query, "/v2/track");
        for secret in [
            token.as_str(),
            subject.as_str(),
            marker.as_str(),
            body_marker.as_str(),
            "items/977",
        ] {
            assert!(!upload.text.contains(secret), "{secret} leaked into {}", upload.text);
            assert!(!upload.headers.iter().any(|(_, value)| value.contains(secret)));
        }
    }
    let in_trace: Vec<&Value> = items
        .iter()
        .filter(|item| item["tags"]["ai.operation.id"] == TRACE_ID)
        .collect();
    let requests: Vec<&Value> = in_trace
        .iter()
        .copied()
        .filter(|i| base_type(i) == "RequestData")
        .collect();
    let dependencies: Vec<&Value> = in_trace
        .iter()
        .copied()
        .filter(|i| base_type(i) == "RemoteDependencyData")
        .collect();
    assert_eq!(requests.len(), 6, "{requests:#?}");
    assert_eq!(
        dependencies.len(),
        4,
        "echo, the cache miss, the unsampled echo and the item: {dependencies:#?}"
    );
    let item = requests
        .iter()
        .find(|r| r["tags"]["ai.operation.parentId"] == "00f067aa0ba90206")
        .expect("the item request");
    assert_eq!(item["data"]["baseData"]["properties"]["http.route"], "/api/items/{id}");

    let echo_request = requests
        .iter()
        .find(|r| r["tags"]["ai.operation.parentId"] == "00f067aa0ba90201")
        .expect("the echo request continues its traceparent");
    let data = &echo_request["data"]["baseData"];
    assert_eq!(data["name"], "echo", "{echo_request:#}");
    assert_eq!(echo_request["tags"]["ai.operation.name"], "echo");
    assert_eq!(data["responseCode"], "200");
    assert_eq!(data["success"], true);
    assert_eq!(data["properties"]["caller.role"], "reader");
    assert_eq!(data["properties"]["caller.tenant"], "acme");
    assert_eq!(data["properties"]["endpoint"], "echo");

    let echo_dependency = dependencies
        .iter()
        .find(|d| d["tags"]["ai.operation.parentId"] == data["id"])
        .expect("the query is a child of its request");
    let dependency = &echo_dependency["data"]["baseData"];
    assert_eq!(dependency["success"], true);
    assert_eq!(dependency["properties"]["clickhouse.query_id"], echo_query_id.as_str());
    assert!(
        dependency["properties"]["clickhouse.read_rows"].is_string(),
        "{dependency}"
    );
    assert_eq!(dependency["name"], "echo");
    assert_eq!(dependency["type"], "clickhouse");

    let hit_request = requests
        .iter()
        .find(|r| r["tags"]["ai.operation.parentId"] == "00f067aa0ba90203")
        .expect("the cache hit");
    assert_eq!(hit_request["data"]["baseData"]["properties"]["cache"], "hit");
    let invalid = requests
        .iter()
        .find(|r| r["tags"]["ai.operation.parentId"] == "00f067aa0ba90204")
        .expect("the invalid request");
    assert_eq!(invalid["data"]["baseData"]["responseCode"], "400");
    assert_eq!(invalid["data"]["baseData"]["properties"]["error.code"], "invalid_param");

    let metrics: Vec<&str> = items
        .iter()
        .filter(|item| base_type(item) == "MetricData")
        .filter_map(|item| item["data"]["baseData"]["metrics"][0]["name"].as_str())
        .collect();
    for name in [
        "http.server.request.duration",
        "db.client.operation.duration",
        "chgate.cache.lookups",
        "chgate.problems",
    ] {
        assert!(metrics.contains(&name), "{name} missing from {metrics:?}");
    }
}
