//! The ingest spool against Azurite (the local Azure Storage emulator, run by `cargo xtask
//! test`) and the real local ClickHouse. The Functions host cannot run here: the tests act as
//! the host's queue trigger, taking each message and posting the invocation payload the host
//! would send, and moving a message to the poison queue after `maxDequeueCount` failures as
//! the host does.

use std::time::Duration;

use base64::Engine;
use chgate::ingest::spool::{Spool, SpoolSettings};
use chgate::secrets::CredentialChoice;
use serde_json::{Value, json};

use crate::helpers::{TcpProxy, TestApp, connection, create_clicks, problem, spawn_app_with};

/// An account SAS for Azurite's well-known account (version 2025-11-05 signs an empty
/// encryption-scope line too).
fn account_sas() -> String {
    let (sv, ss, srt, sp, se) = ("2025-11-05", "bq", "sco", "rwdlacup", "2099-01-01T00:00:00Z");
    let to_sign = format!("{}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n\n{sv}\n\n", xtask::azurite::ACCOUNT);
    let key = base64::engine::general_purpose::STANDARD
        .decode(xtask::azurite::account_key())
        .expect("key");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let signature = base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("sv", sv),
            ("ss", ss),
            ("srt", srt),
            ("sp", sp),
            ("se", se),
            ("sig", &signature),
        ])
        .finish()
}

/// The spool's signing key in these tests.
const SIGNING_KEY: &str = "spool-key-for-the-tests-0123456789abcdef";

/// A spool of the test's own (its own queue and container) on Azurite; `None` when the suite
/// runs without Azurite.
fn spool_settings() -> Option<SpoolSettings> {
    let endpoints = std::env::var("CHGATE_TEST_AZURITE_QUEUE")
        .ok()
        .zip(std::env::var("CHGATE_TEST_AZURITE_BLOB").ok());
    let Some((queue_service, blob_service)) = endpoints else {
        eprintln!("skipped: no Azurite (run with cargo xtask test)");
        return None;
    };
    Some(SpoolSettings {
        queue_service,
        blob_service,
        name: format!("spool-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        sas: Some(account_sas().into()),
        credential: CredentialChoice::DeveloperTools,
        signing_key: SIGNING_KEY.into(),
    })
}

/// An app with `settings`' spool, reaching ClickHouse through a proxy the test can cut, with
/// the clicks table created.
async fn app_behind_proxy(settings: &SpoolSettings) -> (TestApp, TcpProxy) {
    let proxy = TcpProxy::start(connection().url.trim_start_matches("http://")).await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let spool = settings.clone();
    let app = spawn_app_with(move |s| {
        s.clickhouse.url = proxy_url;
        s.spool = Some(spool);
        // The breaker would send batches straight to the spool while open; keep it out of the
        // way so that inserts meet the outage itself.
        s.serving.breaker_failures = 1000;
    })
    .await;
    create_clicks(&app).await;
    (app, proxy)
}

async fn count(app: &TestApp) -> u64 {
    app.database
        .client()
        .query("SELECT count() FROM clicks")
        .fetch_one()
        .await
        .expect("count")
}

fn batch(prefix: &str, rows: usize, padding: usize) -> Value {
    json!(
        (0..rows)
            .map(|i| json!({"ts": "2026-12-01T10:00:00Z", "path": format!("/{prefix}/{i}/{}", "p".repeat(padding))}))
            .collect::<Vec<_>>()
    )
}

async fn post(app: &TestApp, body: &Value, key: &str) -> reqwest::Response {
    app.api_client
        .post(format!("{}/api/ingest/clicks", app.address))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("post")
}

/// Acting as the host's queue trigger: takes each message, invokes the replay function, and
/// deletes the message on 200; after `max_dequeue` failures of one message it moves it to the
/// poison queue. Returns the number of successful invocations.
async fn act_as_queue_trigger(app: &TestApp, spool: &Spool, settings: &SpoolSettings, max_dequeue: i64) -> usize {
    let mut replayed = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let taken = spool.take(32, Duration::from_secs(1)).await.expect("receive");
        if taken.is_empty() {
            let (depth, _) = spool.depth().await.expect("depth");
            if depth == 0 {
                break;
            }
            // Messages that failed come back once their visibility timeout ends.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            continue;
        }
        for message in taken {
            let batch = message.batch.as_ref().expect("a spooled batch");
            // The host hands the message text over JSON-encoded once more.
            let text = serde_json::to_string(batch).expect("json");
            let payload = json!({
                "Data": { "batch": serde_json::to_string(&text).expect("json") },
                "Metadata": { "DequeueCount": message.dequeue_count, "Id": message.id, "sys": { "MethodName": "ingest_replay" } },
            });
            let response = reqwest::Client::new()
                .post(format!("{}/ingest_replay", app.address))
                .json(&payload)
                .send()
                .await
                .expect("invoke");
            if response.status() == 200 {
                spool.delete(&message).await.expect("delete");
                replayed += 1;
            } else if message.dequeue_count >= max_dequeue {
                move_to_poison(settings, &text).await;
                spool.delete(&message).await.expect("delete");
            }
        }
    }
    replayed
}

/// Writes a message straight to the spool queue, as anyone with access to it could.
async fn move_to_spool(settings: &SpoolSettings, text: &str) {
    send_raw(settings, &settings.name, text).await;
}

async fn move_to_poison(settings: &SpoolSettings, text: &str) {
    send_raw(settings, &format!("{}-poison", settings.name), text).await;
}

async fn send_raw(settings: &SpoolSettings, queue: &str, text: &str) {
    let url = format!(
        "{}/{queue}/messages?{}",
        settings.queue_service,
        settings.sas.as_ref().map(|sas| sas.expose()).unwrap_or_default()
    );
    let body = format!(
        "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
        base64::engine::general_purpose::STANDARD.encode(text)
    );
    let response = reqwest::Client::new()
        .post(url)
        .header("x-ms-version", "2025-11-05")
        .body(body)
        .send()
        .await
        .expect("poison");
    assert!(response.status().is_success(), "{}", response.status());
}

#[tokio::test]
async fn with_clickhouse_down_batches_are_spooled_and_replayed_exactly_once() {
    let Some(settings) = spool_settings() else {
        return;
    };
    let (app, mut proxy) = app_behind_proxy(&settings).await;
    proxy.cut().await;

    let small = batch("small", 3, 0);
    // Over a queue message's size: goes to a blob, the message points to it.
    let large = batch("large", 400, 150);
    for (body, key) in [(&small, "small-1"), (&large, "large-1")] {
        let response = post(&app, body, key).await;
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
    }
    let spooled: Value = post(&app, &small, "small-2").await.json().await.expect("json");
    assert_eq!(spooled["spooled"], true);
    assert_eq!(spooled["accepted"], 3);
    let spool = Spool::new(&settings).expect("spool");
    assert_eq!(spool.depth().await.expect("depth").0, 3);

    // A replay while ClickHouse is still down: the batch goes back to the spool (never to the
    // host's poison queue, whose messages expire), and the host may delete the original.
    let taken = spool.take(1, Duration::from_secs(30)).await.expect("take");
    let text = serde_json::to_string(taken[0].batch.as_ref().expect("batch")).expect("json");
    let payload =
        json!({"Data": {"batch": serde_json::to_string(&text).expect("json")}, "Metadata": {"DequeueCount": 1}});
    let response = reqwest::Client::new()
        .post(format!("{}/ingest_replay", app.address))
        .json(&payload)
        .send()
        .await
        .expect("invoke");
    assert_eq!(response.status(), 200);
    spool.delete(&taken[0]).await.expect("delete");
    assert_eq!(spool.depth().await.expect("depth").0, 3, "requeued, not lost");

    proxy.restore().await;
    let replayed = act_as_queue_trigger(&app, &spool, &settings, 5).await;
    assert_eq!(replayed, 3);
    assert_eq!(count(&app).await, 3 + 400 + 3);
    assert_eq!(spool.depth().await.expect("depth"), (0, 0));

    // A batch the caller sends again after it was spooled (its retry) is not stored twice.
    assert_eq!(post(&app, &small, "small-1").await.status(), 202);
    assert_eq!(count(&app).await, 406);
}

#[tokio::test]
async fn a_message_that_keeps_failing_ends_in_the_poison_queue() {
    let Some(settings) = spool_settings() else {
        return;
    };
    let spool_for_app = settings.clone();
    let app = spawn_app_with(move |s| s.spool = Some(spool_for_app)).await;
    let spool = Spool::new(&settings).expect("spool");
    let orphan = chgate::ingest::spool::SpooledBatch {
        v: 1,
        endpoint: "no_such_endpoint".into(),
        batch_id: "b".into(),
        token: "t".into(),
        rows: 1,
        tenant: Some("acme".into()),
        attempt: 0,
        body_sha256: String::new(),
        signature: String::new(),
        body: None,
        blob: None,
    };
    spool
        .put(orphan, &bytes::Bytes::from_static(b"{}\n"))
        .await
        .expect("put");
    // A message written by someone else with access to the queue: a real endpoint, rows for
    // another tenant, no valid signature.
    create_clicks(&app).await;
    let forged = chgate::ingest::spool::SpooledBatch {
        v: 1,
        endpoint: "ingest_clicks".into(),
        batch_id: "forged".into(),
        token: chgate::ingest::dedup_token("ingest_clicks", Some("globex"), "forged"),
        rows: 1,
        tenant: Some("globex".into()),
        attempt: 0,
        body_sha256: String::new(),
        signature: "00".repeat(32),
        body: Some(
            r#"{"ts":"1764583200","path":"/forged","duration_ms":0,"tags":[],"tenant_id":"globex"}"#.to_owned() + "\n",
        ),
        blob: None,
    };
    move_to_spool(&settings, &serde_json::to_string(&forged).expect("json")).await;
    let replayed = act_as_queue_trigger(&app, &spool, &settings, 3).await;
    assert_eq!(
        replayed, 2,
        "both invocations answered: each moved its batch to the poison queue"
    );
    assert_eq!(spool.depth().await.expect("depth"), (0, 2), "both in the poison queue");
    assert_eq!(count(&app).await, 0, "nothing of the forged batch was written");
}

#[tokio::test]
async fn with_clickhouse_and_the_spool_down_the_caller_gets_503_and_nothing_is_claimed() {
    let Some(mut settings) = spool_settings() else {
        return;
    };
    settings.queue_service = "http://127.0.0.1:9/devstoreaccount1".into();
    settings.blob_service = "http://127.0.0.1:9/devstoreaccount1".into();
    let app = spawn_app_with(move |s| {
        s.clickhouse.url = "http://127.0.0.1:9".into();
        s.spool = Some(settings);
    })
    .await;
    let body = problem(post(&app, &batch("x", 1, 0), "k").await, 503).await;
    assert_eq!(body["code"], "ingest_unavailable");
}

#[tokio::test]
async fn the_operator_command_shows_and_drains_the_spool_without_the_host() {
    let Some(settings) = spool_settings() else {
        return;
    };
    let (app, mut proxy) = app_behind_proxy(&settings).await;
    proxy.cut().await;
    for key in ["cli-1", "cli-2"] {
        let response: Value = post(&app, &batch(key, 5, 0), key).await.json().await.expect("json");
        assert_eq!(response["spooled"], true);
    }
    // The command reads the same settings as the host's queue trigger: here a connection
    // string with a SAS.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let connection_string = format!(
        "QueueEndpoint={};BlobEndpoint={};SharedAccessSignature={}",
        settings.queue_service,
        settings.blob_service,
        settings.sas.as_ref().map(|sas| sas.expose()).unwrap_or_default()
    );
    let policy = crate::helpers::fixture_policy(app.issuer.url());
    let handler = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_handler"));
        command.arg("spool").args(args);
        if args == ["drain"] {
            command
                .arg("--host-json")
                .arg(fixtures.join("host.json"))
                .arg("--access-policy")
                .arg(&policy)
                .arg(fixtures.join("endpoints"));
        }
        command
            .envs(app.database.connection().env())
            .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
            .env("CHGATE_SPOOL", &connection_string)
            .env("CHGATE_SPOOL_QUEUE", &settings.name)
            .env("CHGATE_SPOOL_KEY", SIGNING_KEY)
            .output()
            .expect("running handler spool")
    };
    let status = handler(&["status"]);
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(printed.contains("2 batch(es) waiting"), "{printed}");
    proxy.restore().await;
    let drain = handler(&["drain"]);
    assert!(drain.status.success(), "{}", String::from_utf8_lossy(&drain.stderr));
    assert!(String::from_utf8_lossy(&drain.stdout).contains("2 batch(es) replayed"));
    assert_eq!(count(&app).await, 10);
    let after = handler(&["status"]);
    assert!(String::from_utf8_lossy(&after.stdout).contains("0 batch(es) waiting"));
}

/// The fault test. ClickHouse "stops" for the handler by a cut at a TCP proxy in front of the
/// shared local engine (stopping the engine itself would break the tests running beside this
/// one); the handler sees refused connections and broken inserts exactly as with a stopped
/// server.
#[tokio::test]
async fn under_steady_load_through_an_outage_every_acknowledged_event_is_stored_exactly_once() {
    let Some(settings) = spool_settings() else {
        return;
    };
    let (app, mut proxy) = app_behind_proxy(&settings).await;
    let app = std::sync::Arc::new(app);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..4 {
        let (app, stop) = (app.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let (mut acknowledged, mut spooled, mut refused) = (0u64, 0u64, Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("fault-{sender}-{n}");
                let response = post(&app, &batch(&key, 5, 0), &key).await;
                let status = response.status().as_u16();
                if status == 202 {
                    let body: Value = response.json().await.expect("json");
                    acknowledged += body["accepted"].as_u64().unwrap_or(0);
                    spooled += u64::from(body["spooled"] == true);
                } else {
                    refused.push(status);
                }
            }
            (acknowledged, spooled, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    proxy.restore().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acknowledged, mut spooled, mut refused) = (0, 0, Vec::new());
    for sender in senders {
        let (a, s, r) = sender.await.expect("sender");
        acknowledged += a;
        spooled += s;
        refused.extend(r);
    }
    let spool = Spool::new(&settings).expect("spool");
    act_as_queue_trigger(&app, &spool, &settings, 5).await;
    let stored = count(&app).await;
    eprintln!(
        "fault test: {acknowledged} events acknowledged with 202 ({spooled} batches spooled), {} requests refused, {stored} rows stored",
        refused.len()
    );
    assert!(spooled > 0, "the outage spooled batches");
    assert!(refused.is_empty(), "with the spool up nothing is refused: {refused:?}");
    assert_eq!(stored, acknowledged, "every acknowledged event stored, exactly once");
    let distinct: u64 = app
        .database
        .client()
        .query("SELECT uniqExact(path) FROM clicks")
        .fetch_one()
        .await
        .expect("distinct");
    assert_eq!(distinct, stored, "no event twice (every path is unique)");
}
