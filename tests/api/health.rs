//! `GET /api/health`: unauthenticated, cheap, free of data and of details.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

async fn health(address: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::get(format!("{address}/api/health")).await.expect("health");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cache, response.json().await.expect("json"))
}

#[tokio::test]
async fn health_needs_no_token_and_reports_each_part() {
    let app = spawn_app().await;
    // The issuer's keys are fetched in the background at start.
    let mut report = health(&app.address).await;
    for _ in 0..50 {
        if report.2["checks"]["keys"]["status"] == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        report = health(&app.address).await;
    }
    let (status, cache, body) = report;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["clickhouse"], json!({"status": "ok"}));
    assert_eq!(body["checks"]["keys"]["status"], "ok");
    assert_eq!(
        body["checks"]["secrets"],
        json!({"status": "ok", "source": "app_settings"})
    );
    assert!(body["checks"]["catalog"]["endpoints"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test]
async fn unreachable_clickhouse_is_503_without_saying_where_it_is() {
    let app = spawn_app_with(|settings| settings.clickhouse.url = "http://127.0.0.1:9".into()).await;
    let (status, _, body) = health(&app.address).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["clickhouse"]["status"], "unreachable");
    let text = body.to_string();
    assert!(!text.contains("127.0.0.1") && !text.contains(":9"), "{text}");
}

#[tokio::test]
async fn rejected_credentials_show_as_login_rejected() {
    let app = spawn_app_with(|settings| settings.clickhouse.password = "wrong".into()).await;
    let (status, _, body) = health(&app.address).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["clickhouse"]["status"], "login_rejected");
    assert!(!body.to_string().contains("wrong"));
}

#[tokio::test]
async fn health_answers_get_only() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/health", app.address))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
}
