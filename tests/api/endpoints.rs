//! Query endpoints end to end: request → typed parameters → ClickHouse → response, against
//! the real engine, with the fixture catalog (tests/fixtures/endpoints).

use serde_json::{Value, json};

use crate::helpers::{TcpProxy, clickhouse_address, problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn typed_parameters_from_the_query_string_come_back_as_clickhouse_json() {
    let app = spawn_app().await;
    let response = app
        .get(
            "echo",
            &[
                ("s", "it's \\ \"x\""),
                ("short", "abc"),
                ("n", "-42"),
                ("d", "2026-12-04"),
                ("tags", "red"),
                ("tags", "blue"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("json");
    // ClickHouse's own JSON shape: meta, data, rows, statistics.
    assert_eq!(body["meta"][0]["name"], "s");
    assert_eq!(body["meta"][1]["type"], "Nullable(String)");
    assert_eq!(body["rows"], 1);
    assert!(body["statistics"]["elapsed"].is_number());
    assert_eq!(
        body["data"][0],
        json!({"s": "it's \\ \"x\"", "short": "abc", "n": -42, "d": "2026-12-04", "tags": ["red", "blue"]})
    );
}

#[tokio::test]
async fn a_json_body_binds_like_the_query_string_and_defaults_fill_the_rest() {
    let app = spawn_app().await;
    let response = app
        .post_json("echo", &json!({"n": 7, "tags": ["green"], "short": null}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["data"][0],
        json!({"s": "", "short": null, "n": 7, "d": "2026-01-01", "tags": ["green"]})
    );
}

#[tokio::test]
async fn repeated_keys_joined_with_commas_by_the_host_still_make_an_array() {
    let app = spawn_app().await;
    let body: Value = app
        .get("echo", &[("tags", "red,green")])
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["data"][0]["tags"], json!(["red", "green"]));
}

#[tokio::test]
async fn bad_parameters_get_a_400_problem_naming_the_parameter() {
    let app = spawn_app().await;
    let body = problem(app.get("echo", &[("n", "5000")]).await, 400).await;
    assert_eq!(body["code"], "invalid_param");
    assert_eq!(body["param"], "n");
    assert!(body["problem"].as_str().expect("problem").contains("1000"), "{body}");

    let body = problem(app.get("echo", &[("nope", "1")]).await, 400).await;
    assert_eq!(body["code"], "unknown_param");
    assert!(body["detail"].as_str().expect("detail").contains("nope"));

    let body = problem(app.get("v1/page-views", &[]).await, 400).await;
    assert_eq!(body["code"], "missing_param");
    assert_eq!(body["param"], "path");

    let body = problem(app.get("echo", &[("tags", "purple")]).await, 400).await;
    assert_eq!(body["param"], "tags");

    let body = problem(app.get("echo", &[("d", "2026-02-30")]).await, 400).await;
    assert_eq!(body["param"], "d");

    let body = problem(app.post_json("echo", &json!({"n": "lots"})).await, 400).await;
    assert_eq!(body["param"], "n");

    let response = app
        .api_client
        .post(format!("{}/api/echo", app.address))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("post");
    assert_eq!(problem(response, 400).await["code"], "invalid_body");
}

#[tokio::test]
async fn huge_values_are_judged_without_being_echoed() {
    let app = spawn_app().await;
    let huge = "x".repeat(1_000_000);
    let body = problem(app.post_json("echo", &json!({"short": huge})).await, 400).await;
    assert_eq!(body["param"], "short");
    assert!(body.to_string().len() < 2_000, "the error must not echo a 1 MB value");
    // Without a length limit the same value is plain data.
    let response = app.post_json("echo", &json!({"s": huge})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"][0]["s"].as_str().map(str::len), Some(1_000_000));
}

#[tokio::test]
async fn injection_strings_are_data_and_every_event_survives() {
    let app = spawn_app().await;
    app.seed_events(5_000).await;
    let count = || async {
        app.database
            .client()
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .expect("count")
    };
    assert_eq!(count().await, 5_000);
    let corpus = [
        "' OR 1=1 --",
        "'; DROP TABLE events; --",
        "/\\'; SELECT 1; --",
        "\\",
        "\\' OR ''='",
        "{path:String}",
        "/pricing' UNION ALL SELECT count() FROM system.tables --",
        "ünïcödé 🚀 /",
        "\u{0}",
    ];
    for attack in corpus {
        for response in [
            app.get("v1/page-views", &[("path", attack)]).await,
            app.post_json("v1/page-views", &json!({"path": attack})).await,
        ] {
            assert_eq!(response.status(), 200, "{attack:?}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["data"][0]["views"], 0, "{attack:?} must match no path");
        }
    }
    let pricing: Value = app
        .get("v1/page-views", &[("path", "/pricing")])
        .await
        .json()
        .await
        .expect("json");
    assert!(
        pricing["data"][0]["views"].as_u64() > Some(0),
        "a real path still matches"
    );
    assert_eq!(count().await, 5_000, "every event survives");
}

#[tokio::test]
async fn reserved_caller_parameters_cannot_be_sent_and_come_from_the_token() {
    let app = spawn_app().await;
    let body = problem(app.get("echo", &[("caller_tenant", "other")]).await, 400).await;
    assert_eq!(body["code"], "reserved_param");
    let body = problem(app.post_json("echo", &json!({"caller_role": "admin"})).await, 400).await;
    assert_eq!(body["code"], "reserved_param");
    // The caller parameters come from the verified token only.
    let body: Value = app.get("whoami", &[]).await.json().await.expect("json");
    assert_eq!(body["data"][0]["tenant"], "acme");
    let globex = app.token_for("someone", json!({"roles": ["Test.Read"], "tid": "globex"}));
    let body: Value = app.get_as(&globex, "whoami", &[]).await.json().await.expect("json");
    assert_eq!(body["data"][0]["tenant"], "globex");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let app = spawn_app().await;
    let body = problem(app.get("no/such/endpoint", &[]).await, 404).await;
    assert_eq!(body["code"], "not_found");
    let response = app
        .api_client
        .post(format!("{}/api/numbers", app.address))
        .send()
        .await
        .expect("post");
    assert_eq!(response.headers()["allow"], "GET");
    assert_eq!(problem(response, 405).await["code"], "method_not_allowed");
    let response = app
        .api_client
        .delete(format!("{}/api/echo", app.address))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.headers()["allow"], "GET, POST");
    problem(response, 405).await;
}

#[tokio::test]
async fn route_parameters_bind_from_the_path() {
    let app = spawn_app().await;
    let body: Value = app.get("items/21", &[]).await.json().await.expect("json");
    assert_eq!(body["data"][0], json!({"id": 21, "double": 42}));
    assert_eq!(problem(app.get("items/5000", &[]).await, 400).await["param"], "id");
    assert_eq!(
        problem(app.get("items/7", &[("id", "8")]).await, 400).await["param"],
        "id"
    );
}

#[tokio::test]
async fn formats_are_chosen_by_query_parameter_or_accept_header() {
    let app = spawn_app().await;
    let response = app.get("numbers", &[("rows", "3"), ("format", "ndjson")]).await;
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.expect("text");
    assert_eq!(text.lines().count(), 3);
    assert_eq!(
        serde_json::from_str::<Value>(text.lines().next().expect("line")).expect("json line")["number"],
        0
    );

    let response = app.get("numbers", &[("rows", "2"), ("format", "csv")]).await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );
    assert_eq!(
        response.text().await.expect("text"),
        "\"number\",\"failed\"\n0,0\n1,0\n"
    );

    let response = app.get("numbers", &[("rows", "100"), ("format", "parquet")]).await;
    assert_eq!(response.headers()["content-type"], "application/vnd.apache.parquet");
    let bytes = response.bytes().await.expect("bytes");
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"), "a Parquet file");

    let response = app
        .api_client
        .get(format!("{}/api/numbers?rows=1", app.address))
        .header("accept", "text/html;q=1, application/x-ndjson;q=0.9")
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
}

#[tokio::test]
async fn an_unavailable_format_is_406_listing_the_offered_ones() {
    let app = spawn_app().await;
    let body = problem(app.get("items/1", &[("format", "parquet")]).await, 406).await;
    assert_eq!(body["code"], "not_acceptable");
    assert!(body["detail"].as_str().expect("detail").contains("json, csv"), "{body}");
    let response = app
        .api_client
        .get(format!("{}/api/items/1", app.address))
        .header("accept", "application/xml")
        .send()
        .await
        .expect("get");
    problem(response, 406).await;
}

#[tokio::test]
async fn an_error_before_the_first_byte_is_an_error_status_without_internals() {
    let app = spawn_app().await;
    let body = problem(app.get("numbers", &[("rows", "1000"), ("fail_at", "100")]).await, 500).await;
    assert_eq!(body["code"], "query_failed");
    let text = body.to_string();
    assert!(
        !text.contains("throwIf") && !text.contains("SELECT") && !text.contains("planned failure"),
        "{text}"
    );
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains(body["request_id"].as_str().expect("id"))
    );
}

#[tokio::test]
async fn an_error_after_the_response_started_breaks_the_body_instead_of_ending_it_cleanly() {
    // A small buffer so that the status is committed early; the exception comes later.
    let app = spawn_app_with(|settings| settings.response_buffer_bytes = 64 * 1024).await;
    for format in ["ndjson", "csv"] {
        let response = app
            .get(
                "numbers",
                &[("rows", "300000"), ("fail_at", "250000"), ("format", format)],
            )
            .await;
        assert_eq!(
            response.status(),
            200,
            "{format}: the status was committed before the failure"
        );
        let outcome = response.bytes().await;
        assert!(
            outcome.is_err(),
            "{format}: the body must fail, not end as if complete (got {} bytes)",
            outcome.map(|b| b.len()).unwrap_or(0)
        );
    }

    // The same query without the failure streams to the end.
    let response = app.get("numbers", &[("rows", "300000"), ("format", "ndjson")]).await;
    let text = response.text().await.expect("complete body");
    assert_eq!(text.lines().count(), 300_000);
}

#[tokio::test]
async fn a_query_past_its_time_limit_is_504() {
    let app = spawn_app().await;
    let body = problem(app.get("slow", &[]).await, 504).await;
    assert_eq!(body["code"], "query_timeout");
}

#[tokio::test]
async fn a_result_over_the_row_limit_is_422_not_a_cut() {
    let app = spawn_app().await;
    let body: Value = app.get("capped", &[("n", "10")]).await.json().await.expect("json");
    assert_eq!(body["rows"], 10);
    let body = problem(app.get("capped", &[("n", "11")]).await, 422).await;
    assert_eq!(body["code"], "result_too_large");
}

#[tokio::test]
async fn clickhouse_down_is_503_with_retry_after_and_service_resumes_when_it_returns() {
    let mut proxy = TcpProxy::start(&clickhouse_address()).await;
    let port = proxy.port;
    let app = spawn_app_with(|settings| settings.clickhouse.url = format!("http://127.0.0.1:{port}")).await;
    assert_eq!(app.get("echo", &[("n", "1")]).await.status(), 200);

    proxy.cut().await;
    let response = app.get("echo", &[("n", "2")]).await;
    assert_eq!(response.headers()["retry-after"], "5");
    let body = problem(response, 503).await;
    assert_eq!(body["code"], "clickhouse_unavailable");

    proxy.restore().await;
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("echo", &[("n", "3")]).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "requests succeed again once ClickHouse is back");
}

#[tokio::test]
async fn clickhouse_receives_the_request_id_limits_and_typed_parameters_not_sql_values() {
    let proxy = TcpProxy::start(&clickhouse_address()).await;
    let port = proxy.port;
    let app = spawn_app_with(|settings| {
        settings.clickhouse.url = format!("http://127.0.0.1:{port}");
        // With the row-policy backstop on: the tenant also travels as a custom setting.
        let policy = std::fs::read_to_string(&settings.access_policy).expect("policy");
        let policy = policy.replace(
            "claim = \"tid\"",
            "claim = \"tid\"\nclickhouse_setting = \"SQL_chgate_tenant\"",
        );
        // A cross-tenant role then needs a ClickHouse user of its own (outside the row policy).
        let internal_user = format!(
            "cross_tenant = true\n[roles.internal.clickhouse]\nuser = \"{}\"\npassword_setting = \"CLICKHOUSE_PASSWORD\"",
            settings.clickhouse.user
        );
        let policy = policy.replace("cross_tenant = true", &internal_user);
        std::fs::write(&settings.access_policy, policy).expect("policy");
    })
    .await;
    app.seed_events(100).await;
    let response = app
        .api_client
        .get(format!("{}/api/v1/page-views?path=%27%20OR%201%3D1", app.address))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let sent = String::from_utf8_lossy(&proxy.sent.lock().expect("capture")).into_owned();
    assert!(sent.contains("query_id=req-abc-123"), "the request id is the query_id");
    for setting in [
        "readonly=2",
        "max_execution_time=30",
        "timeout_overflow_mode=throw",
        "max_result_rows=100000",
        "max_result_bytes=104857600",
        "result_overflow_mode=throw",
        "output_format_json_quote_64bit_integers=0",
        "http_write_exception_in_output_format=0",
        "cancel_http_readonly_queries_on_client_close=1",
        "quota_key=acme",
        "SQL_chgate_tenant=acme",
        "log_comment=",
    ] {
        assert!(sent.contains(setting), "{setting} is sent");
    }
    assert!(!sent.contains(&app.token), "the token never reaches ClickHouse");
    assert!(sent.contains("WHERE path = {path:String}"), "the SQL goes as written");
    assert!(
        sent.contains("name=\"param_path\""),
        "the value travels as a typed parameter"
    );
    assert!(!sent.contains("WHERE path = '"), "no value is spliced into the SQL");
}

#[tokio::test]
async fn the_request_id_is_taken_from_the_caller_and_returned() {
    let app = spawn_app().await;
    let response = app
        .api_client
        .get(format!("{}/api/echo", app.address))
        .header("x-request-id", "apim-7f3a")
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["x-request-id"], "apim-7f3a");
    let response = app
        .api_client
        .get(format!("{}/api/nothing", app.address))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .expect("get");
    assert_eq!(
        response.headers()["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
    );
}

#[tokio::test]
async fn a_data_error_inside_the_query_is_a_server_failure_not_the_callers() {
    let app = spawn_app().await;
    let body = problem(app.get("bad-data", &[]).await, 500).await;
    assert_eq!(body["code"], "query_failed");
}

#[tokio::test]
async fn query_strings_that_are_not_utf8_are_refused_not_mangled() {
    let app = spawn_app().await;
    let response = app
        .api_client
        .get(format!("{}/api/echo?s=%FF%FE", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(problem(response, 400).await["code"], "invalid_encoding");
}

#[tokio::test]
async fn an_oversized_body_is_a_413_problem() {
    let app = spawn_app().await;
    let response = app
        .api_client
        .post(format!("{}/api/echo", app.address))
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .expect("post");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(problem(response, 413).await["code"], "body_too_large");
}

#[tokio::test]
async fn credentials_clickhouse_refuses_are_a_503_not_a_failed_query() {
    // As during a password rotation: ClickHouse answers 516 until the new secret is in use.
    let app = spawn_app_with(|settings| settings.clickhouse.password = "not-the-password".into()).await;
    let response = app.get("echo", &[]).await;
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(problem(response, 503).await["code"], "credentials_rejected");
}

#[tokio::test]
async fn a_request_id_already_running_is_409_not_a_second_query() {
    let app = spawn_app().await;
    let request = |app: &crate::helpers::TestApp| {
        app.api_client
            .get(format!("{}/api/slow", app.address))
            .header("x-request-id", "same-id-twice")
            .send()
    };
    let first = request(&app);
    let second = async {
        // Sent while the first still runs (it runs for a second before timing out).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        request(&app).await
    };
    let (first, second) = tokio::join!(first, second);
    // Whichever reaches ClickHouse first runs (and times out); the other is refused.
    let mut codes = Vec::new();
    for response in [first.expect("first"), second.expect("second")] {
        let status = response.status().as_u16();
        codes.push((
            status,
            problem(response, status).await["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    codes.sort();
    assert_eq!(
        codes,
        [
            (409, "duplicate_request_id".to_owned()),
            (504, "query_timeout".to_owned())
        ]
    );
}
