//! Serving under load: the result cache (tenant isolation, single-flight, failed flights,
//! stale-while-revalidate, validators), request limits, deadlines, cancellation on disconnect
//! and the circuit breaker, against the real engine through the local ClickHouse front.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{TcpProxy, TestApp, clickhouse_address, problem, spawn_app_with};

/// Requests the handler sent to ClickHouse through `proxy` that ran `marker`'s query.
fn queries_seen(proxy: &TcpProxy, marker: &str) -> usize {
    let sent = proxy.sent.lock().expect("capture lock");
    String::from_utf8_lossy(&sent).matches(marker).count()
}

/// The app with ClickHouse behind a proxy that counts queries.
async fn app_behind_proxy(customise: impl FnOnce(&mut chgate::settings::Settings)) -> (TestApp, TcpProxy) {
    let proxy = TcpProxy::start(&clickhouse_address()).await;
    let port = proxy.port;
    let app = spawn_app_with(|settings| {
        settings.clickhouse.url = format!("http://127.0.0.1:{port}");
        customise(settings);
    })
    .await;
    (app, proxy)
}

/// Appends TOML to the app's access policy.
fn add_to_policy(settings: &chgate::settings::Settings, toml: &str) {
    let policy = std::fs::read_to_string(&settings.access_policy).expect("policy");
    std::fs::write(&settings.access_policy, format!("{policy}\n{toml}\n")).expect("policy");
}

fn reader_of(app: &TestApp, subject: &str, tenant: &str) -> String {
    app.token_for(subject, json!({"roles": ["Test.Read"], "tid": tenant}))
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("ascii header").to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn two_tenants_never_share_an_entry_and_each_gets_its_own_hits() {
    let (app, proxy) = app_behind_proxy(|_| {}).await;
    let acme = reader_of(&app, "a@acme", "acme");
    let globex = reader_of(&app, "g@globex", "globex");
    let query = [("n", "7")];
    let first_acme = app.get_as(&acme, "cached", &query).await;
    assert_eq!(header(&first_acme, "x-cache"), "miss");
    let first_acme: Value = first_acme.json().await.expect("json");
    let first_globex = app.get_as(&globex, "cached", &query).await;
    assert_eq!(
        header(&first_globex, "x-cache"),
        "miss",
        "same parameters, other tenant: no hit"
    );
    let first_globex: Value = first_globex.json().await.expect("json");
    assert_eq!(first_acme["data"][0]["tenant"], "acme");
    assert_eq!(first_globex["data"][0]["tenant"], "globex");
    for (token, first, tenant) in [(&acme, &first_acme, "acme"), (&globex, &first_globex, "globex")] {
        let again = app.get_as(token, "cached", &query).await;
        assert_eq!(header(&again, "x-cache"), "hit");
        let again: Value = again.json().await.expect("json");
        assert_eq!(&again, first, "the hit is the tenant's own entry");
        assert_eq!(again["data"][0]["tenant"], tenant);
    }
    // Another subject of the same tenant and role would see the same bytes: it shares.
    let colleague = reader_of(&app, "b@acme", "acme");
    assert_eq!(
        header(&app.get_as(&colleague, "cached", &query).await, "x-cache"),
        "hit"
    );
    assert_eq!(queries_seen(&proxy, "generateUUIDv4"), 2, "one query per tenant");
}

#[tokio::test]
async fn sixty_four_identical_concurrent_misses_run_one_query() {
    let (app, proxy) = app_behind_proxy(|_| {}).await;
    let query = [("n", "64"), ("delay", "0.5")];
    let responses = join_all((0..64).map(|_| app.get("cached", &query))).await;
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), "miss");
        bodies.push(response.text().await.expect("body"));
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "every waiter got the flight's result"
    );
    assert_eq!(queries_seen(&proxy, "generateUUIDv4"), 1);
}

#[tokio::test]
async fn a_failed_flight_is_not_cached_and_its_waiters_get_a_fresh_result() {
    let (app, mut proxy) = app_behind_proxy(|_| {}).await;
    let query = [("n", "1"), ("delay", "0.6")];
    let requests = join_all((0..8).map(|_| app.get("cached", &query)));
    let cut_mid_flight = async {
        // The leader's query is running; cutting the connection fails it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        proxy.cut().await;
        proxy.restore().await;
    };
    let (responses, ()) = tokio::join!(requests, cut_mid_flight);
    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for response in responses {
        statuses.push(response.status().as_u16());
        if response.status() == 200 {
            bodies.push(response.text().await.expect("body"));
        } else {
            assert_eq!(problem(response, 503).await["code"], "clickhouse_unavailable");
        }
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 200, 503],
        "only the leader sees its own failure"
    );
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "the waiters shared the retried flight"
    );
    // The failure was not cached: the next request is a hit on the retried flight's entry.
    let next = app.get("cached", &query).await;
    assert_eq!(header(&next, "x-cache"), "hit");
    assert_eq!(next.text().await.expect("body"), bodies[0]);
}

#[tokio::test]
async fn a_leader_whose_client_hangs_up_does_not_fail_its_waiters() {
    let (app, _proxy) = app_behind_proxy(|_| {}).await;
    let url = format!("{}/api/cached?n=5&delay=0.5", app.address);
    let client = reqwest::Client::new();
    let leader = client
        .get(&url)
        .bearer_auth(&app.token)
        .timeout(Duration::from_millis(150))
        .send();
    let waiters = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        join_all((0..4).map(|_| app.get("cached", &[("n", "5"), ("delay", "0.5")]))).await
    };
    let (leader, waiters) = tokio::join!(leader, waiters);
    assert!(leader.is_err(), "the leader's client gave up");
    for response in waiters {
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn stale_entries_are_served_while_one_refresh_runs() {
    let (app, proxy) = app_behind_proxy(|_| {}).await;
    // ttl = 1 s, stale = 30 s (tests/fixtures/endpoints/cached).
    let query = [("n", "3"), ("delay", "0.5")];
    let first = app.get("cached", &query).await;
    assert_eq!(header(&first, "x-cache"), "miss");
    let first = first.text().await.expect("body");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let stale = join_all((0..5).map(|_| app.get("cached", &query))).await;
    let served_in = started.elapsed();
    for response in stale {
        assert_eq!(header(&response, "x-cache"), "stale");
        assert_eq!(response.text().await.expect("body"), first, "the old entry, at once");
    }
    eprintln!("five stale answers in {served_in:?} while the refresh sleeps 0.5 s");
    let mut refreshed = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = app.get("cached", &query).await;
        if header(&response, "x-cache") == "hit" {
            refreshed = Some(response.text().await.expect("body"));
            break;
        }
    }
    let refreshed = refreshed.expect("the refresh stored a new entry");
    assert_ne!(refreshed, first, "a new run of the query");
    assert_eq!(
        queries_seen(&proxy, "generateUUIDv4"),
        2,
        "five stale requests, one refresh"
    );
}

#[tokio::test]
async fn validators_let_callers_revalidate_with_304() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.get("cached", &[("n", "9")]).await;
    let etag = header(&first, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(header(&first, "cache-control").starts_with("private, max-age="));
    assert_eq!(header(&first, "age"), "0");
    let body = first.text().await.expect("body");
    let revalidated = app
        .api_client
        .get(format!("{}/api/cached?n=9", app.address))
        .header("If-None-Match", format!("W/\"other\", {etag}"))
        .send()
        .await
        .expect("get");
    assert_eq!(revalidated.status(), 304);
    assert_eq!(header(&revalidated, "etag"), etag);
    assert_eq!(header(&revalidated, "x-cache"), "hit");
    assert!(revalidated.bytes().await.expect("body").is_empty());
    let changed = app
        .api_client
        .get(format!("{}/api/cached?n=9", app.address))
        .header("If-None-Match", "\"not-it\"")
        .send()
        .await
        .expect("get");
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.text().await.expect("body"), body);
    // Endpoints without [cache] are never stored by anyone.
    assert_eq!(header(&app.get("whoami", &[]).await, "cache-control"), "no-store");
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_retry_after_and_ratelimit_fields() {
    let app = spawn_app_with(|settings| {
        add_to_policy(settings, "[roles.reader.limits]\ncaller = { rate = 0.5, burst = 2 }");
    })
    .await;
    let first = app.get("whoami", &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit"), "\"caller\";r=1;t=2");
    assert_eq!(header(&first, "ratelimit-policy"), "\"caller\";q=2;w=4");
    assert_eq!(app.get("whoami", &[]).await.status(), 200);
    let refused = app.get("whoami", &[]).await;
    let retry_after: u64 = header(&refused, "retry-after").parse().expect("Retry-After seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&refused, "ratelimit"), format!("\"caller\";r=0;t={retry_after}"));
    assert_eq!(problem(refused, 429).await["code"], "rate_limited");
    // Another caller of the same tenant has a bucket of its own.
    let other = reader_of(&app, "someone-else", "acme");
    assert_eq!(app.get_as(&other, "whoami", &[]).await.status(), 200);
}

#[tokio::test]
async fn a_tenant_at_its_concurrency_limit_gets_429_and_others_are_unaffected() {
    let app = spawn_app_with(|settings| {
        add_to_policy(settings, "[roles.reader.limits]\ntenant = { concurrency = 1 }");
    })
    .await;
    let one = reader_of(&app, "one", "acme");
    let busy = app.get_as(&one, "sleepy", &[("rows", "4")]);
    let blocked = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let same_tenant = app.get_as(&reader_of(&app, "two", "acme"), "whoami", &[]).await;
        let other_tenant = app.get_as(&reader_of(&app, "three", "globex"), "whoami", &[]).await;
        (same_tenant, other_tenant)
    };
    let (busy, (same_tenant, other_tenant)) = tokio::join!(busy, blocked);
    assert_eq!(busy.status(), 200);
    assert_eq!(header(&same_tenant, "retry-after"), "1");
    assert_eq!(problem(same_tenant, 429).await["code"], "too_many_in_progress");
    assert_eq!(other_tenant.status(), 200);
    // The slot is freed when the response ends.
    assert_eq!(
        app.get_as(&reader_of(&app, "two", "acme"), "whoami", &[])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn beyond_the_instance_query_bound_and_its_queue_requests_get_503_busy() {
    let app = spawn_app_with(|settings| {
        add_to_policy(
            settings,
            "[limits]\nmax_inflight_queries = 1\nqueue = 1\nqueue_timeout = 0.2",
        );
    })
    .await;
    let slow = |subject: &'static str| {
        let token = reader_of(&app, subject, "acme");
        let app = &app;
        async move { app.get_as(&token, "sleepy", &[("rows", "3")]).await }
    };
    let (first, second, third) = tokio::join!(slow("a"), slow("b"), slow("c"));
    let mut statuses = vec![
        first.status().as_u16(),
        second.status().as_u16(),
        third.status().as_u16(),
    ];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 503, 503],
        "one runs; one queues and times out; one finds the queue full"
    );
    for response in [first, second, third] {
        if response.status() == 503 {
            assert_eq!(header(&response, "retry-after"), "1");
            assert_eq!(problem(response, 503).await["code"], "busy");
        }
    }
}

#[tokio::test]
async fn a_callers_shorter_deadline_is_honoured_with_504() {
    let app = spawn_app_with(|_| {}).await;
    let started = Instant::now();
    let response = app
        .api_client
        .get(format!("{}/api/sleepy?rows=20", app.address))
        .header("X-Request-Timeout", "0.5")
        .send()
        .await
        .expect("get");
    let elapsed = started.elapsed();
    let body = problem(response, 504).await;
    assert_eq!(body["code"], "deadline_exceeded");
    assert!(
        elapsed < Duration::from_secs(3),
        "answered at the deadline, not after the query ({elapsed:?})"
    );
    let response = app
        .api_client
        .get(format!("{}/api/whoami", app.address))
        .header("X-Request-Timeout", "soon")
        .send()
        .await
        .expect("get");
    assert_eq!(problem(response, 400).await["code"], "invalid_timeout");
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_closes_after_a_good_probe() {
    let (app, mut proxy) = app_behind_proxy(|settings| {
        settings.serving.breaker_failures = 2;
        settings.serving.breaker_cooldown = Duration::from_secs(1);
    })
    .await;
    assert_eq!(app.get("whoami", &[]).await.status(), 200);
    proxy.cut().await;
    for _ in 0..2 {
        assert_eq!(
            problem(app.get("whoami", &[]).await, 503).await["code"],
            "clickhouse_unavailable"
        );
    }
    // ClickHouse is back, but the circuit is open: requests fail at once without trying.
    proxy.restore().await;
    let before = queries_seen(&proxy, "SELECT");
    let refused = app.get("whoami", &[]).await;
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(problem(refused, 503).await["code"], "clickhouse_unavailable");
    assert_eq!(queries_seen(&proxy, "SELECT"), before, "an open circuit sends nothing");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.get("whoami", &[]).await.status(),
        200,
        "the probe succeeds and closes it"
    );
    assert_eq!(app.get("whoami", &[]).await.status(), 200);
}

#[tokio::test]
async fn a_client_that_hangs_up_has_its_clickhouse_query_cancelled() {
    let app = spawn_app_with(|_| {}).await;
    let connection = crate::helpers::connection();
    let request_id = format!("hangup-{}", uuid::Uuid::new_v4().simple());
    // 50 rows at 0.2 s each: ten seconds unless cancelled. The request id is the query id.
    let request = app
        .api_client
        .get(format!("{}/api/sleepy?rows=50", app.address))
        .header("X-Request-Id", &request_id)
        .send();
    let client = tokio::spawn(request);
    crate::clickhouse_front::wait_for_state(&connection, &request_id, Some("running"), Duration::from_secs(5)).await;
    // The caller goes away.
    client.abort();
    let _ = client.await;
    let gone_in = crate::clickhouse_front::wait_for_state(&connection, &request_id, None, Duration::from_secs(1)).await;
    eprintln!("the query left ClickHouse's process list {gone_in:?} after its client hung up");
}

#[tokio::test]
async fn results_over_the_entry_limit_are_streamed_and_not_cached() {
    let (app, proxy) = app_behind_proxy(|settings| settings.serving.cache_max_entry_bytes = 16).await;
    for _ in 0..2 {
        let response = app.get("cached", &[("n", "2")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-cache"), "", "not a cache answer");
        assert_eq!(header(&response, "cache-control"), "no-store");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["data"][0]["tenant"], "acme");
    }
    assert_eq!(
        queries_seen(&proxy, "generateUUIDv4"),
        2,
        "each request ran its own query"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_has_its_query_cancelled_before_the_next_row() {
    // Rows of 1.2 MB, past ClickHouse's (the front's) output buffer and ours: the result
    // streams after its first row, and the next row comes two seconds later, long after the
    // client has gone.
    let app = spawn_app_with(|settings| settings.response_buffer_bytes = 16 * 1024).await;
    let connection = crate::helpers::connection();
    let request_id = format!("midstream-{}", uuid::Uuid::new_v4().simple());
    let response = app
        .api_client
        .get(format!(
            "{}/api/sleepy?rows=5&each=2&pad=600000&format=ndjson",
            app.address
        ))
        .header("X-Request-Id", &request_id)
        .send()
        .await
        .expect("the response started");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-length").is_none(), "a streamed answer");
    drop(response);
    // The engine notices a kill between one-second slices of a sleep, so allow 1.5 s: without
    // the handler's watch the hang-up would be seen only at the next row, two seconds on.
    let gone_in =
        crate::clickhouse_front::wait_for_state(&connection, &request_id, None, Duration::from_millis(1500)).await;
    eprintln!("the query left the process list {gone_in:?} after its client hung up mid-stream");
}
