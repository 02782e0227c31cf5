//! The Functions host contract, with the tests acting as the host (its binary cannot be
//! installed here): forwarded requests under the route prefix, and invocation payloads for
//! hosts that do not forward.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// Posts an invocation payload as the host does and returns the envelope (always a 200).
async fn invoke(app: &TestApp, function: &str, payload: &Value) -> Value {
    let response = app
        .api_client
        .post(format!("{}/{function}", app.address))
        .json(payload)
        .send()
        .await
        .expect("invocation");
    assert_eq!(
        response.status(),
        200,
        "the host fails any invocation that is not a 200"
    );
    response.json().await.expect("envelope")
}

/// The host forwards the caller's headers, Authorization included.
fn with_token(token: &str, headers: Value) -> Value {
    let mut headers = headers.as_object().cloned().unwrap_or_default();
    headers
        .entry("Authorization")
        .or_insert_with(|| json!([format!("Bearer {token}")]));
    Value::Object(headers)
}

fn invocation(token: &str, method: &str, query: Value, headers: Value, body: Option<&str>) -> Value {
    json!({
        "Data": { "req": {
            "Url": "https://example.azurewebsites.net/api/echo",
            "Method": method,
            "Query": query,
            "Headers": with_token(token, headers),
            "Params": {},
            "Identities": [],
            "Body": body,
        }},
        "Metadata": { "sys": { "MethodName": "echo", "UtcNow": "2026-12-04T10:00:00Z", "RandGuid": "7d4c" } },
    })
}

#[tokio::test]
async fn an_invocation_payload_gets_the_result_inside_a_200_envelope() {
    let app = spawn_app().await;
    let response = app
        .api_client
        .post(format!("{}/echo", app.address))
        .header("X-Azure-Functions-InvocationId", "inv-1")
        .json(&invocation(
            &app.token,
            "GET",
            json!({"n": "5", "tags": "red,blue"}),
            json!({"Accept": ["application/json"]}),
            None,
        ))
        .send()
        .await
        .expect("invocation");
    assert_eq!(response.status(), 200);
    let envelope: Value = response.json().await.expect("envelope");
    let res = &envelope["Outputs"]["res"];
    assert_eq!(res["statusCode"], "200");
    assert_eq!(res["headers"]["Content-Type"], "application/json");
    assert_eq!(res["headers"]["X-Request-Id"], "inv-1");
    assert!(envelope["Logs"].is_array());
    let body: Value = serde_json::from_str(res["body"].as_str().expect("body string")).expect("json body");
    assert_eq!(body["data"][0]["n"], 5);
    assert_eq!(body["data"][0]["tags"], json!(["red", "blue"]));
}

#[tokio::test]
async fn an_invocation_with_a_json_body_binds_it() {
    let app = spawn_app().await;
    let payload = invocation(
        &app.token,
        "POST",
        json!({}),
        json!({"Content-Type": ["application/json"], "X-Request-Id": ["caller-9"]}),
        Some(r#"{"n": -3, "s": "x"}"#),
    );
    let envelope: Value = invoke(&app, "echo", &payload).await;
    let res = &envelope["Outputs"]["res"];
    assert_eq!(res["statusCode"], "200");
    assert_eq!(res["headers"]["X-Request-Id"], "caller-9");
    let body: Value = serde_json::from_str(res["body"].as_str().expect("body")).expect("json");
    assert_eq!(
        (body["data"][0]["n"].clone(), body["data"][0]["s"].clone()),
        (json!(-3), json!("x"))
    );
}

#[tokio::test]
async fn an_invocation_error_is_a_problem_inside_a_200_envelope() {
    let app = spawn_app().await;
    // `invoke` checks the envelope is a 200: a non-2xx would fail the invocation in the host.
    let envelope = invoke(
        &app,
        "echo",
        &invocation(&app.token, "GET", json!({"n": "99999"}), json!({}), None),
    )
    .await;
    let res = &envelope["Outputs"]["res"];
    assert_eq!(res["statusCode"], "400");
    assert_eq!(res["headers"]["Content-Type"], "application/problem+json");
    let problem: Value = serde_json::from_str(res["body"].as_str().expect("body")).expect("problem");
    assert_eq!(problem["code"], "invalid_param");
    assert_eq!(problem["param"], "n");
}

#[tokio::test]
async fn binary_formats_are_refused_in_invocation_mode() {
    let app = spawn_app().await;
    let envelope: Value = invoke(
        &app,
        "numbers",
        &invocation(
            &app.token,
            "GET",
            json!({"rows": "3", "format": "parquet"}),
            json!({}),
            None,
        ),
    )
    .await;
    assert_eq!(envelope["Outputs"]["res"]["statusCode"], "406");
}

#[tokio::test]
async fn forwarded_requests_use_the_route_prefix_from_host_json() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let app = spawn_app_with(|settings| settings.host_json = fixtures.join("host-data-prefix.json")).await;
    let inside = app
        .api_client
        .get(format!("{}/data/echo", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(inside.status(), 200, "routes live under the prefix host.json names");
    let default_prefix = app
        .api_client
        .get(format!("{}/api/echo", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(default_prefix.status(), 404);
}

#[tokio::test]
async fn a_malformed_invocation_still_gets_a_200_envelope() {
    let app = spawn_app().await;
    for payload in ["{not json", "{\"Data\": {}}", "{\"Data\": {\"req\": 5}}"] {
        let response = app
            .api_client
            .post(format!("{}/echo", app.address))
            .header("content-type", "application/json")
            .body(payload)
            .send()
            .await
            .expect("invocation");
        assert_eq!(response.status(), 200, "{payload}");
        let envelope: Value = response.json().await.expect("json");
        assert_eq!(envelope["Outputs"]["res"]["statusCode"], "400", "{payload}");
    }
}

#[tokio::test]
async fn invocation_errors_keep_their_headers_and_params_cannot_smuggle_values() {
    let app = spawn_app().await;
    let envelope: Value = invoke(
        &app,
        "numbers",
        &invocation(&app.token, "POST", json!({}), json!({}), None),
    )
    .await;
    assert_eq!(envelope["Outputs"]["res"]["statusCode"], "405");
    assert_eq!(envelope["Outputs"]["res"]["headers"]["Allow"], "GET");

    let mut payload = invocation(&app.token, "GET", json!({}), json!({}), None);
    payload["Data"]["req"]["Params"] = json!({"n": "7"});
    let envelope = invoke(&app, "echo", &payload).await;
    let body: Value = serde_json::from_str(envelope["Outputs"]["res"]["body"].as_str().expect("body")).expect("json");
    assert_eq!(body["data"][0]["n"], 0, "Params binds route parameters only");
}
