//! The shipped example endpoints (functions/) over sample data, called as analysts of one
//! tenant, checked against the same figures computed directly in ClickHouse.

use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with, use_shipped_catalog};

async fn examples_app() -> TestApp {
    let app = spawn_app_with(use_shipped_catalog).await;
    app.seed_events(30_000).await;
    app
}

const WINDOW: [(&str, &str); 2] = [("from", "2026-09-01 00:00:00"), ("to", "2026-10-01 00:00:00")];

fn with_window<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut query = WINDOW.to_vec();
    query.extend_from_slice(extra);
    query
}

async fn json(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test]
async fn top_pages_matches_a_direct_count() {
    let app = examples_app().await;
    let body = json(
        app.get_as(
            &app.analyst_of("globex"),
            "v1/top-pages",
            &with_window(&[("limit", "3")]),
        )
        .await,
    )
    .await;
    assert_eq!(body["rows"], 3);
    let direct: Vec<(String, u64)> = app
        .database
        .client()
        .query(
            "SELECT path, count() AS c FROM events
             WHERE tenant_id = 'globex' AND ts >= '2026-09-01 00:00:00' AND ts < '2026-10-01 00:00:00'
             GROUP BY path ORDER BY c DESC, path LIMIT 3",
        )
        .fetch_all()
        .await
        .expect("direct");
    for (row, (path, views)) in body["data"].as_array().expect("rows").iter().zip(direct) {
        assert_eq!(row["path"], path.as_str());
        assert_eq!(row["views"], views);
    }
}

#[tokio::test]
async fn traffic_buckets_by_the_chosen_granularity() {
    let app = examples_app().await;
    let acme = app.analyst_of("acme");
    let daily = json(app.get_as(&acme, "v1/traffic", &with_window(&[])).await).await;
    let hourly = json(
        app.get_as(&acme, "v1/traffic", &with_window(&[("granularity", "hour")]))
            .await,
    )
    .await;
    let weekly = json(
        app.get_as(&acme, "v1/traffic", &with_window(&[("granularity", "week")]))
            .await,
    )
    .await;
    let rows = |v: &Value| v["rows"].as_u64().expect("rows");
    assert!(rows(&hourly) > rows(&daily) && rows(&daily) > rows(&weekly));
    let total = |v: &Value| -> u64 {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|r| r["views"].as_u64().expect("views"))
            .sum()
    };
    assert_eq!(total(&hourly), total(&daily));
    assert_eq!(total(&daily), total(&weekly));
    let bad = app
        .get_as(&acme, "v1/traffic", &with_window(&[("granularity", "minute")]))
        .await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn breakdown_filters_by_an_array_of_countries() {
    let app = examples_app().await;
    let acme = app.analyst_of("acme");
    let body = json(
        app.get_as(
            &acme,
            "v1/breakdown",
            &with_window(&[("countries", "US"), ("countries", "DE")]),
        )
        .await,
    )
    .await;
    let values: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["value"].as_str().expect("value"))
        .collect();
    assert_eq!(values, ["US", "DE"]);
    let devices = json(
        app.get_as(&acme, "v1/breakdown", &with_window(&[("dimension", "device")]))
            .await,
    )
    .await;
    assert_eq!(devices["rows"], 3);
    assert_eq!(
        app.get_as(&acme, "v1/breakdown", &with_window(&[("countries", "usa")]))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn kpi_is_one_row_of_headline_numbers() {
    let app = examples_app().await;
    let body = json(
        app.get_as(&app.analyst_of("initech"), "v1/kpi", &with_window(&[]))
            .await,
    )
    .await;
    assert_eq!(body["rows"], 1);
    let direct: u64 = app
        .database
        .client()
        .query(
            "SELECT count() FROM events
             WHERE tenant_id = 'initech' AND ts >= '2026-09-01 00:00:00' AND ts < '2026-10-01 00:00:00'",
        )
        .fetch_one()
        .await
        .expect("direct");
    assert_eq!(body["data"][0]["views"], direct);
    let bounce = body["data"][0]["bounce_rate"].as_f64().expect("bounce rate");
    assert!((0.0..=1.0).contains(&bounce));
}

#[tokio::test]
async fn export_events_streams_ndjson_and_parquet() {
    let app = examples_app().await;
    let acme = app.analyst_of("acme");
    let query = [
        ("from", "2026-09-01 00:00:00.000"),
        ("to", "2026-12-31 00:00:00.000"),
        ("limit", "5000"),
    ];
    let mut ndjson = query.to_vec();
    ndjson.push(("format", "ndjson"));
    let text = app
        .get_as(&acme, "v1/events/export", &ndjson)
        .await
        .text()
        .await
        .expect("text");
    assert_eq!(text.lines().count(), 5000);
    let first: Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
    assert!(first["session_id"].is_string() && first["ts"].is_string());
    let mut parquet = query.to_vec();
    parquet.push(("format", "parquet"));
    let bytes = app
        .get_as(&acme, "v1/events/export", &parquet)
        .await
        .bytes()
        .await
        .expect("bytes");
    assert!(bytes.starts_with(b"PAR1"));
}

#[tokio::test]
async fn the_cross_tenant_overview_answers_only_the_internal_role() {
    let app = examples_app().await;
    let body = json(app.get("v1/internal/tenants", &with_window(&[])).await).await;
    assert_eq!(body["rows"], 6, "every tenant, for the internal role");
    let response = app
        .get_as(&app.analyst_of("acme"), "v1/internal/tenants", &with_window(&[]))
        .await;
    assert_eq!(response.status(), 403);
}
