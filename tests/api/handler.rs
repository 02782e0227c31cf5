//! The handler as the Functions host sees it at start-up.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::spawn_app;

#[tokio::test]
async fn get_root_says_the_handler_is_ready() {
    let app = spawn_app().await;
    let response = app
        .api_client
        .get(format!("{}/", app.address))
        .send()
        .await
        .expect("GET /");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json body");
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn the_handler_binary_answers_the_readiness_probe_on_its_port() {
    // Acting as the Functions host: start the binary with FUNCTIONS_CUSTOMHANDLER_PORT and
    // poll GET / the way the host does (it polls every 25 ms; this polls more often to
    // report the start-up time precisely).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        // Nothing listens here: readiness must not depend on ClickHouse.
        .env("CLICKHOUSE_URL", "http://127.0.0.1:9")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the handler");
    let client = reqwest::Client::new();
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(response) = client.get(format!("http://127.0.0.1:{port}/")).send().await {
            ready = Some((started.elapsed(), response.status()));
            break;
        }
        assert!(child.try_wait().expect("child status").is_none(), "the handler exited");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (elapsed, status) = ready.expect("the handler never answered GET /");
    assert_eq!(status, 200);
    eprintln!("handler answered GET / {} ms after process start", elapsed.as_millis());
    child.start_kill().expect("stopping the handler");
}

#[tokio::test]
async fn a_bad_port_setting_stops_the_handler_with_a_clear_message() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "seventy")
        .output()
        .await
        .expect("running the handler");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FUNCTIONS_CUSTOMHANDLER_PORT must be a port number"),
        "{stderr}"
    );
}
