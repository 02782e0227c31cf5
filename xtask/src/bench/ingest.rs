//! Ingest throughput: the same batches of page views into the same table, through the
//! handler's ingest endpoint and straight to ClickHouse with the `clickhouse` crate (its
//! JSONEachRow insert with the settings the handler uses, so both ask ClickHouse for the same
//! work), each alone in alternating windows.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clickhouse::Client;
use serde_json::{Value, json};

use super::drive::{Outcome, Tally, drive};
use super::table::{Table, ms};
use super::{Bench, Report, catalog};
use crate::bench::machine::{self, Machine};
use crate::connection::Connection;
use crate::sample::events_ddl;

/// What `cargo xtask bench --ingest` does.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub duration: Duration,
    pub levels: Vec<usize>,
}

/// The database the bench writes to (created and dropped by the run).
const DATABASE: &str = "chgate_bench_ingest";

pub async fn run(connection: &Connection, options: &IngestOptions) -> anyhow::Result<()> {
    let bench = Bench::prepare(connection).await?;
    let outcome = run_with(&bench, options).await;
    let _ = connection
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .execute()
        .await;
    bench.finish().await;
    outcome
}

const COUNTRIES: [&str; 5] = ["US", "DE", "GB", "FR", "JP"];
const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];

/// `rows` page views as the ingest endpoint takes them (a JSON array).
fn payload(rows: usize, salt: u64) -> Value {
    json!(
        (0..rows)
            .map(|i| json!({
                "ts": format!("2026-12-03T{:02}:{:02}:{:02}.{:03}Z", (i / 3600) % 24, (i / 60) % 60, i % 60, i % 1000),
                "user_id": (salt * 7919 + i as u64) % 100_000,
                "session_id": format!("00000000-0000-4000-8000-{:012x}", salt * 100_000 + i as u64),
                "path": format!("/docs/page-{}", i % 500),
                "referrer": if i % 3 == 0 { "https://www.google.com/" } else { "" },
                "country": COUNTRIES[i % COUNTRIES.len()],
                "device": DEVICES[i % DEVICES.len()],
                "duration_ms": (i * 37) % 60_000,
                "revenue": format!("{}.{:02}", i % 20, i % 100),
            }))
            .collect::<Vec<_>>()
    )
}

/// 2026-12-03T00:00:00Z, the day of every generated page view, in Unix seconds.
const BENCH_DAY: u64 = 1_796_256_000;

/// The same rows as the handler writes them: JSONEachRow with the tenant stamped and the
/// time as Unix seconds (the handler turns a time with an offset into the instant, which
/// ClickHouse reads faster than RFC 3339 text), so that ClickHouse does the same work for
/// both and the ratio is the handler's own cost.
fn json_each_row(payload: &Value, tenant: &str) -> Bytes {
    let mut out = Vec::new();
    for row in payload.as_array().into_iter().flatten() {
        let mut row = row.clone();
        row["tenant_id"] = json!(tenant);
        if let Some(unix) = row["ts"].as_str().and_then(unix_text) {
            row["ts"] = json!(unix);
        }
        let _ = serde_json::to_writer(&mut out, &row);
        out.push(b'\n');
    }
    out.into()
}

/// `2026-12-03Thh:mm:ss.fffZ` as `seconds.fff`.
fn unix_text(ts: &str) -> Option<String> {
    let field = |range: std::ops::Range<usize>| ts.get(range).and_then(|text| text.parse::<u64>().ok());
    let seconds = BENCH_DAY + field(11..13)? * 3600 + field(14..16)? * 60 + field(17..19)?;
    Some(format!("{seconds}.{}", ts.get(20..23)?))
}

async fn direct_json(client: &Client, body: Bytes, token: String) -> Outcome {
    let mut insert = client
        .insert_formatted_with("INSERT INTO events FORMAT JSONEachRow")
        .with_setting("insert_deduplication_token", token);
    for (name, value) in [
        ("async_insert", "1"),
        ("wait_for_async_insert", "1"),
        ("async_insert_deduplicate", "1"),
        ("input_format_skip_unknown_fields", "0"),
        ("input_format_null_as_default", "0"),
        ("date_time_input_format", "best_effort"),
    ] {
        insert = insert.with_setting(name, value);
    }
    let sent = async {
        insert.send(body).await?;
        insert.end().await
    };
    match sent.await {
        Ok(()) => Outcome::ok(),
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

async fn through_handler(http: &reqwest::Client, url: &str, token: &str, body: Bytes, key: String) -> Outcome {
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) if response.status() == 202 => {
            let _ = response.bytes().await;
            Outcome::ok()
        }
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            Outcome::Answered {
                status,
                cache: None,
                retry_after: None,
                problem: Some(text.chars().take(200).collect()),
            }
        }
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

async fn run_with(bench: &Bench, options: &IngestOptions) -> anyhow::Result<()> {
    let machine = Machine::describe(&bench.root, &bench.connection);
    let mut report = Report::default();
    println!("\n## Machine\n\n{}", machine.markdown());
    let admin = bench.connection.client();
    admin
        .query(&format!("DROP DATABASE IF EXISTS {DATABASE}"))
        .execute()
        .await?;
    admin.query(&format!("CREATE DATABASE {DATABASE}")).execute().await?;
    let client = bench.connection.client().with_database(DATABASE);
    client
        .query(&events_ddl("events"))
        .execute()
        .await
        .context("creating the events table")?;

    let policy = bench.work.join("access-without-limits.toml");
    catalog::policy_without_limits(&bench.root.join("access.toml"), &policy)?;
    let (shipped, _) = bench.catalog("catalog-shipped", &policy, &|_| None)?;
    let env = vec![
        ("CHGATE_MAX_INFLIGHT_QUERIES", "256".to_owned()),
        ("CLICKHOUSE_DATABASE", DATABASE.to_owned()),
    ];
    let handler = bench
        .start(&bench.spec("handler-ingest", &shipped, &policy, env))
        .await?;
    let url: Arc<str> = format!("{}/api/v1/events", handler.base).into();
    let token: Arc<str> = bench.signer.collector_token("bench-sdk", "acme")?.into();
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    report.add(&format!(
        "## Setup\n\n\
         - The shipped `ingest_events` endpoint (9 fields, the tenant stamped) into a table of \
           the events schema in a database of its own; direct inserts go to the same table.\n\
         - direct: the `clickhouse` crate's JSONEachRow insert of the same rows as the handler \
           writes them (tenant included, the time as Unix seconds) with the settings the handler sends (async insert with wait, a \
           deduplication token, strict input). handler: the same rows as a JSON array POSTed \
           with an Idempotency-Key. Each runs alone for {} s per case, in two halves in the order \
           direct, handler, direct, handler (ClickHouse runs one query at a time here).\n\
         - Every batch has its own key/token, so nothing is deduplicated away.\n",
        options.duration.as_secs_f64()
    ));
    let mut table = Table::new(&[
        "batch rows",
        "conc",
        "direct rows/s",
        "handler rows/s",
        "handler/direct",
        "direct p50 / p99 ms",
        "handler p50 / p99 ms",
        "errors",
    ]);
    for rows in [10usize, 10_000] {
        let bodies: Arc<Vec<(Bytes, Bytes)>> = Arc::new(
            (0..8u64)
                .map(|salt| {
                    let payload = payload(rows, salt);
                    (
                        Bytes::from(serde_json::to_vec(&payload).unwrap_or_default()),
                        json_each_row(&payload, "acme"),
                    )
                })
                .collect(),
        );
        for &level in &options.levels {
            println!("ingest: {rows}-row batches at concurrency {level}");
            let (client, http, url, token, bodies) = (
                client.clone(),
                http.clone(),
                Arc::clone(&url),
                Arc::clone(&token),
                Arc::clone(&bodies),
            );
            let run = uuid::Uuid::new_v4().simple().to_string();
            // Each alone at the level (its own throughput), in the order direct, handler,
            // direct, handler, so that a drift of the machine touches both alike.
            let mut tallies = [Tally::default(), Tally::default()];
            for round in 0..2 {
                for (kind, tally) in tallies.iter_mut().enumerate() {
                    let (client, http, url, token, bodies, run) = (
                        client.clone(),
                        http.clone(),
                        Arc::clone(&url),
                        Arc::clone(&token),
                        Arc::clone(&bodies),
                        run.clone(),
                    );
                    let window = drive(level, options.duration / 2, move |worker, sequence| {
                        let (handler_body, direct_body) = bodies[(sequence as usize) % bodies.len()].clone();
                        let key = format!("{run}-{round}-{kind}-{worker}-{sequence}");
                        let (client, http, url, token) =
                            (client.clone(), http.clone(), Arc::clone(&url), Arc::clone(&token));
                        async move {
                            if kind == 0 {
                                direct_json(&client, direct_body, key).await
                            } else {
                                through_handler(&http, &url, &token, handler_body, key).await
                            }
                        }
                    })
                    .await?;
                    tally.merge(window);
                }
            }
            let [mut direct, mut through] = tallies;
            direct.finish(options.duration);
            through.finish(options.duration);
            let rows_per_second = |tally: &Tally| tally.rps() * rows as f64;
            table.row(vec![
                rows.to_string(),
                level.to_string(),
                format!("{:.0}", rows_per_second(&direct)),
                format!("{:.0}", rows_per_second(&through)),
                format!("{:.2}", rows_per_second(&through) / rows_per_second(&direct)),
                format!("{} / {}", ms(direct.percentile_ms(0.5)), ms(direct.percentile_ms(0.99))),
                format!(
                    "{} / {}",
                    ms(through.percentile_ms(0.5)),
                    ms(through.percentile_ms(0.99))
                ),
                format!("{} / {}", direct.unsuccessful(), through.unsuccessful()),
            ]);
            if direct.unsuccessful() + through.unsuccessful() > 0 {
                anyhow::bail!(
                    "ingest bench: unsuccessful inserts (direct: {}, handler: {})",
                    direct.status_summary(),
                    through.status_summary()
                );
            }
        }
    }
    let stored: u64 = client.query("SELECT count() FROM events").fetch_one().await?;
    let _ = handler.stop(Duration::from_secs(10)).await;
    report.add(&format!(
        "## Ingest: handler vs direct (rows per second)\n\n{}\n{stored} rows stored in all.\n",
        table.render()
    ));
    report.add(&format!(
        "Load average (1, 5, 15 min) at the end: {}.\n",
        machine::load_average().0
    ));
    let path = machine.write_results(&bench.root, "-ingest", "chgate bench --ingest", &report.text)?;
    println!("Written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_rows_carry_the_instant_the_handler_writes() {
        assert_eq!(unix_text("2026-12-03T00:00:00.000Z").as_deref(), Some("1796256000.000"));
        assert_eq!(unix_text("2026-12-03T01:02:03.045Z").as_deref(), Some("1796259723.045"));
        let rows = json_each_row(&payload(2, 0), "acme");
        let first: Value =
            serde_json::from_slice(rows.split(|&b| b == b'\n').next().unwrap_or_default()).unwrap_or_default();
        assert_eq!(first["ts"], "1796256000.000");
        assert_eq!(first["tenant_id"], "acme");
    }
}
