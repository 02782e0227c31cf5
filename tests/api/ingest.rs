//! Ingest endpoints against the real local ClickHouse: rows land with the caller's tenant,
//! bad batches write nothing, repeated batches are stored once.

use serde_json::{Value, json};

use crate::helpers::{TestApp, create_clicks, problem, spawn_app, spawn_app_with, use_shipped_catalog};

async fn post(app: &TestApp, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut request = app
        .api_client
        .post(format!("{}/api/ingest/clicks", app.address))
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("post")
}

#[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
struct Click {
    tenant_id: String,
    path: String,
    duration_ms: u32,
    tags: Vec<String>,
}

async fn rows(app: &TestApp) -> Vec<(String, String, u32, Vec<String>)> {
    let clicks: Vec<Click> = app
        .database
        .client()
        .query("SELECT tenant_id, path, duration_ms, tags FROM clicks ORDER BY path")
        .fetch_all()
        .await
        .expect("reading clicks");
    clicks
        .into_iter()
        .map(|c| (c.tenant_id, c.path, c.duration_ms, c.tags))
        .collect()
}

#[tokio::test]
async fn a_valid_batch_is_written_with_the_callers_tenant() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let batch = json!([
        {"ts": "2026-12-01T10:00:00.250Z", "path": "/a", "duration_ms": 1200, "tags": ["red"]},
        {"ts": "2026-12-01T10:00:01Z", "path": "/b"},
    ]);
    let response = post(&app, &batch, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["spooled"], false);
    assert!(body["batch_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(
        rows(&app).await,
        [
            ("acme".to_owned(), "/a".to_owned(), 1200, vec!["red".to_owned()]),
            ("acme".to_owned(), "/b".to_owned(), 0, vec![]),
        ]
    );
    let ts: String = app
        .database
        .client()
        .query("SELECT toString(ts) FROM clicks WHERE path = '/a'")
        .fetch_one()
        .await
        .expect("ts");
    assert_eq!(ts, "2026-12-01 10:00:00.250");
}

#[tokio::test]
async fn ndjson_is_accepted_too() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let response = app
        .api_client
        .post(format!("{}/api/ingest/clicks", app.address))
        .header("content-type", "application/x-ndjson")
        .body("{\"ts\":\"2026-12-01T10:00:00Z\",\"path\":\"/n1\"}\n\n{\"ts\":\"2026-12-01T10:00:02Z\",\"path\":\"/n2\"}\n")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    assert_eq!(rows(&app).await.len(), 2);
}

#[tokio::test]
async fn a_spoofed_tenant_is_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let batch = json!([
        {"ts": "2026-12-01T10:00:00Z", "path": "/ok"},
        {"ts": "2026-12-01T10:00:00Z", "path": "/spoof", "tenant_id": "globex"},
    ]);
    let body = problem(post(&app, &batch, None).await, 403).await;
    assert_eq!(body["code"], "tenant_mismatch");
    assert!(
        !body.to_string().contains("globex"),
        "another tenant's name is not echoed: {body}"
    );
    // The caller's own tenant may be repeated.
    let own = json!([{"ts": "2026-12-01T10:00:00Z", "path": "/own", "tenant_id": "acme"}]);
    assert_eq!(post(&app, &own, None).await.status(), 202);
    assert_eq!(rows(&app).await.len(), 1);
}

#[tokio::test]
async fn one_invalid_row_writes_nothing_and_the_bad_rows_are_listed() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let batch = json!([
        {"ts": "2026-12-01T10:00:00Z", "path": "/fine"},
        {"ts": "yesterday", "path": "/bad-time"},
        {"ts": "2026-12-01T10:00:00Z", "path": "/fine-too", "duration_ms": -5},
        {"ts": "2026-12-01T10:00:00Z", "path": "/typo", "durration_ms": 5},
        {"path": "/no-time"},
        "not an object",
    ]);
    let body = problem(post(&app, &batch, None).await, 400).await;
    assert_eq!(body["code"], "invalid_rows");
    let errors = body["errors"].as_array().expect("errors");
    let at = |row: u64| errors.iter().filter(|e| e["row"] == row).collect::<Vec<_>>();
    assert!(at(1).is_empty());
    assert_eq!(at(2)[0]["field"], "ts");
    assert_eq!(at(3)[0]["field"], "duration_ms");
    assert_eq!(at(4)[0]["field"], "durration_ms");
    assert_eq!(at(5)[0]["field"], "ts");
    assert!(at(6)[0].get("field").is_none());
    assert!(
        body["detail"].as_str().unwrap_or_default().starts_with("5 row(s)"),
        "{body}"
    );
    assert!(rows(&app).await.is_empty(), "nothing of a refused batch is written");
}

#[tokio::test]
async fn the_same_idempotency_key_twice_stores_one_copy() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let batch = json!([
        {"ts": "2026-12-01T10:00:00Z", "path": "/once"},
        {"ts": "2026-12-01T10:00:01Z", "path": "/once-too"},
    ]);
    for _ in 0..3 {
        let response = post(&app, &batch, Some("batch-2026-12-01-0001")).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["batch_id"], "batch-2026-12-01-0001");
    }
    assert_eq!(rows(&app).await.len(), 2, "stored once");
    // Another key is another batch.
    assert_eq!(post(&app, &batch, Some("batch-2026-12-01-0002")).await.status(), 202);
    assert_eq!(rows(&app).await.len(), 4);
}

#[tokio::test]
async fn the_same_key_from_two_tenants_is_two_batches() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let batch = json!([{"ts": "2026-12-01T10:00:00Z", "path": "/shared-key"}]);
    assert_eq!(post(&app, &batch, Some("k-1")).await.status(), 202);
    let other = app.token_for("someone@globex", json!({"roles": ["Test.Read"], "tid": "globex"}));
    let response = app
        .api_client
        .post(format!("{}/api/ingest/clicks", app.address))
        .bearer_auth(&other)
        .header("idempotency-key", "k-1")
        .json(&batch)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    let mut tenants: Vec<String> = rows(&app).await.into_iter().map(|r| r.0).collect();
    tenants.sort();
    assert_eq!(tenants, ["acme", "globex"]);
}

#[tokio::test]
async fn limits_and_bad_bodies_are_clear_errors() {
    let app = spawn_app().await;
    create_clicks(&app).await;
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"ts": "2026-12-01T10:00:00Z", "path": format!("/{i}")}))
        .collect();
    assert_eq!(
        problem(post(&app, &json!(many), None).await, 413).await["code"],
        "batch_too_large"
    );
    let huge = json!([{"ts": "2026-12-01T10:00:00Z", "path": "x".repeat(300_000)}]);
    assert_eq!(
        problem(post(&app, &huge, None).await, 413).await["code"],
        "batch_too_large"
    );
    assert_eq!(
        problem(post(&app, &json!([]), None).await, 400).await["code"],
        "empty_batch"
    );
    let response = app
        .api_client
        .post(format!("{}/api/ingest/clicks", app.address))
        .header("content-type", "application/json")
        .body("[{\"ts\": ")
        .send()
        .await
        .expect("post");
    assert_eq!(problem(response, 400).await["code"], "invalid_body");
    assert_eq!(
        problem(
            post(&app, &json!([{"path": "/x"}]), Some("bad key with spaces")).await,
            400
        )
        .await["code"],
        "invalid_idempotency_key"
    );
    let get = app.get("ingest/clicks", &[]).await;
    assert_eq!(get.status(), 405);
    let anonymous = reqwest::Client::new()
        .post(format!("{}/api/ingest/clicks", app.address))
        .json(&json!([]))
        .send()
        .await
        .expect("post");
    assert_eq!(problem(anonymous, 401).await["code"], "unauthenticated");
    assert!(rows(&app).await.is_empty());
}

#[tokio::test]
async fn the_shipped_events_endpoint_stores_page_views_the_query_endpoints_then_read() {
    let app = spawn_app_with(use_shipped_catalog).await;
    app.seed_events(0).await;
    let collector = app.token_for("sdk@acme", json!({"roles": ["Events.Write"], "tid": "acme"}));
    let session = uuid::Uuid::new_v4().to_string();
    let views: Vec<Value> = (0..10)
        .map(|i| {
            json!({"ts": format!("2026-12-02T08:00:{i:02}Z"), "user_id": 7, "session_id": session,
                   "path": "/ingested", "country": "DE", "device": "mobile", "revenue": "1.50"})
        })
        .collect();
    let response = app
        .api_client
        .post(format!("{}/api/v1/events", app.address))
        .bearer_auth(&collector)
        .header("idempotency-key", "sdk-batch-1")
        .json(&views)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
    let (count, revenue): (u64, String) = app
        .database
        .client()
        .query("SELECT count(), toString(sum(revenue)) FROM events WHERE tenant_id = 'acme' AND path = '/ingested'")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!((count, revenue.as_str()), (10, "15"));
    // A reader role cannot write, and a collector cannot read.
    let reader = app.analyst_of("acme");
    let refused = app
        .api_client
        .post(format!("{}/api/v1/events", app.address))
        .bearer_auth(&reader)
        .json(&views)
        .send()
        .await
        .expect("post");
    assert_eq!(problem(refused, 403).await["code"], "forbidden");
    let read = app
        .get_as(
            &collector,
            "v1/kpi",
            &[("from", "2026-12-01T00:00:00Z"), ("to", "2026-12-03T00:00:00Z")],
        )
        .await;
    assert_eq!(problem(read, 403).await["code"], "forbidden");
}

#[tokio::test]
async fn handler_check_against_clickhouse_fails_on_a_table_that_does_not_fit() {
    let app = spawn_app().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let policy = crate::helpers::fixture_policy(app.issuer.url());
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
            .args(["check", "--against-clickhouse", "--host-json"])
            .arg(fixtures.join("host.json"))
            .arg("--access-policy")
            .arg(&policy)
            .arg(fixtures.join("endpoints"))
            .envs(app.database.connection().env())
            .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
            .output()
            .expect("running handler check")
    };
    let missing = check();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("table clicks does not exist"));
    // Without the deduplication window, idempotency keys would be ignored: refused.
    app.database
        .client()
        .query("CREATE TABLE clicks (ts DateTime64(3), tenant_id String, path String, duration_ms UInt32, tags Array(String)) ENGINE = MergeTree ORDER BY ts")
        .execute()
        .await
        .expect("create");
    let no_dedup = check();
    assert!(!no_dedup.status.success());
    assert!(String::from_utf8_lossy(&no_dedup.stderr).contains("non_replicated_deduplication_window"));
    app.database
        .client()
        .query("ALTER TABLE clicks MODIFY SETTING non_replicated_deduplication_window = 100")
        .execute()
        .await
        .expect("alter");
    let fits = check();
    assert!(fits.status.success(), "{}", String::from_utf8_lossy(&fits.stderr));
}
