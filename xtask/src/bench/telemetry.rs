//! What exporting telemetry costs: the same requests to a handler exporting to Application
//! Insights and to one that does not, each alone at the same concurrency, in alternating windows.
//! The ingestion endpoint cannot run here; a local receiver stands in for it (it answers 200
//! and counts what it receives), so the export's whole cost (building the items, JSON, gzip,
//! the upload) is in the handler's figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;

use super::drive::{self, Role, Tally, drive};
use super::handler::Handler;
use super::table::{Table, ms, rps};
use super::throughput::CASES;
use super::{Bench, Report, catalog};
use crate::bench::catalog::CacheRule;
use crate::bench::machine::{self, Machine};
use crate::connection::Connection;

/// What `cargo xtask bench --telemetry` does.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    pub duration: Duration,
    pub levels: Vec<usize>,
}

/// The stand-in ingestion endpoint's counters.
#[derive(Default)]
struct Received {
    uploads: AtomicU64,
    bytes: AtomicU64,
}

pub async fn run(connection: &Connection, options: &TelemetryOptions) -> anyhow::Result<()> {
    let bench = Bench::prepare(connection).await?;
    let outcome = run_with(&bench, options).await;
    bench.finish().await;
    outcome
}

async fn run_with(bench: &Bench, options: &TelemetryOptions) -> anyhow::Result<()> {
    let machine = Machine::describe(&bench.root, &bench.connection);
    let mut report = Report::default();
    println!("\n## Machine\n\n{}", machine.markdown());
    let received = Arc::new(Received::default());
    let counters = web::Data::from(Arc::clone(&received));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new().app_data(counters.clone()).route(
            "/v2/track",
            web::post().to(|body: web::Bytes, counters: web::Data<Received>| async move {
                counters.uploads.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                HttpResponse::Ok().json(serde_json::json!({"itemsReceived": 0, "itemsAccepted": 0, "errors": []}))
            }),
        )
    })
    .workers(1)
    .listen(listener)?
    .run();
    let receiver = server.handle();
    tokio::spawn(server);
    let connection_string =
        format!("InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint=http://127.0.0.1:{port}/");

    let policy = bench.work.join("access-without-limits.toml");
    catalog::policy_without_limits(&bench.root.join("access.toml"), &policy)?;
    let (shipped, _) = bench.catalog("catalog-shipped", &policy, &|_| None)?;
    let (cached, _) = bench.catalog("catalog-cached", &policy, &|_| {
        Some(CacheRule { ttl: 600, stale: None })
    })?;
    report.add(&format!(
        "## Setup\n\n\
         - Two release handlers per mode: export off, and export on to a local receiver standing \
           in for the ingestion endpoint (`APPLICATIONINSIGHTS_CONNECTION_STRING` with an http \
           loopback `IngestionEndpoint`; spans sent every 5 s, metrics every 60 s, as in \
           production). At each concurrency level each handler runs alone for {} s (its \
           throughput), in two halves in the order off, on, off, on, so that a drift of the \
           machine touches both alike.\n\
         - hit: every endpoint cached and warmed, so a request is the handler alone (one server \
           span): the worst case for the ratio. miss: the catalog as shipped, every request runs \
           its query (a server span and a ClickHouse client span).\n\
         - CPU is the handler process's user+system time over the window (the export thread \
           included), per answered request.\n",
        options.duration.as_secs_f64()
    ));
    let case = &CASES[0];
    let mut table = Table::new(&[
        "mode",
        "conc",
        "off p50 / p99",
        "on p50 / p99",
        "off rps",
        "on rps",
        "on/off rps",
        "off CPU µs/req",
        "on CPU µs/req",
        "uploads / KiB received",
    ]);
    for (mode, catalog_dir) in [("hit", &cached), ("miss", &shipped)] {
        let env = vec![("CHGATE_MAX_INFLIGHT_QUERIES", "256".to_owned())];
        let off = bench
            .start(&bench.spec(&format!("telemetry-off-{mode}"), catalog_dir, &policy, env.clone()))
            .await?;
        let mut env_on = env;
        env_on.push(("APPLICATIONINSIGHTS_CONNECTION_STRING", connection_string.clone()));
        let on = bench
            .start(&bench.spec(&format!("telemetry-on-{mode}"), catalog_dir, &policy, env_on))
            .await?;
        let urls = [case.url(&off)?, case.url(&on)?];
        let token: Arc<str> = bench.signer.token("bench", Role::Analyst, case.tenant)?.into();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        for url in &urls {
            drive::get(&http, url, Some(&token)).await;
        }
        for &level in &options.levels {
            println!("telemetry: {mode} at concurrency {level}");
            let handlers = [&off, &on];
            let mut tallies = [Tally::default(), Tally::default()];
            let mut cpu = [0.0_f64; 2];
            let (uploads, bytes) = (
                received.uploads.load(Ordering::Relaxed),
                received.bytes.load(Ordering::Relaxed),
            );
            // Off, on, off, on: each handler alone at the level (its throughput), in two halves
            // so that a drift of the machine touches both alike.
            for _round in 0..2 {
                for kind in 0..2 {
                    let before = cpu_seconds(handlers[kind]);
                    let (http, url, token) = (http.clone(), Arc::clone(&urls[kind]), Arc::clone(&token));
                    let tally = drive(level, options.duration / 2, move |_, _| {
                        let (http, url, token) = (http.clone(), Arc::clone(&url), Arc::clone(&token));
                        async move { drive::get(&http, &url, Some(&token)).await }
                    })
                    .await?;
                    if let (Some(before), Some(after)) = (before, cpu_seconds(handlers[kind])) {
                        cpu[kind] += after - before;
                    }
                    tallies[kind].merge(tally);
                }
            }
            let [mut tally_off, mut tally_on] = tallies;
            tally_off.finish(options.duration);
            tally_on.finish(options.duration);
            let cpu_us = |kind: usize, tally: &Tally| {
                if tally.successes() == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.0}", cpu[kind] * 1e6 / tally.successes() as f64)
                }
            };
            table.row(vec![
                mode.to_owned(),
                level.to_string(),
                format!(
                    "{} / {}",
                    ms(tally_off.percentile_ms(0.5)),
                    ms(tally_off.percentile_ms(0.99))
                ),
                format!(
                    "{} / {}",
                    ms(tally_on.percentile_ms(0.5)),
                    ms(tally_on.percentile_ms(0.99))
                ),
                rps(tally_off.rps()),
                rps(tally_on.rps()),
                format!("{:.2}", tally_on.rps() / tally_off.rps()),
                cpu_us(0, &tally_off),
                cpu_us(1, &tally_on),
                format!(
                    "{} / {:.0}",
                    received.uploads.load(Ordering::Relaxed) - uploads,
                    (received.bytes.load(Ordering::Relaxed) - bytes) as f64 / 1024.0
                ),
            ]);
            if tally_off.unsuccessful() + tally_on.unsuccessful() > 0 {
                anyhow::bail!(
                    "telemetry bench: unsuccessful answers (off: {}, on: {})",
                    tally_off.status_summary(),
                    tally_on.status_summary()
                );
            }
        }
        let _ = off.stop(Duration::from_secs(10)).await;
        let _ = on.stop(Duration::from_secs(10)).await;
    }
    receiver.stop(true).await;
    report.add(&format!(
        "## Telemetry export: on vs off ({})\n\nLatencies in ms; CPU per request in µs.\n\n{}",
        case.label,
        table.render()
    ));
    report.add(&format!(
        "Load average (1, 5, 15 min) at the end: {}.\n",
        machine::load_average().0
    ));
    let path = machine
        .write_results(&bench.root, "-telemetry", "chgate bench --telemetry", &report.text)
        .context("writing the results")?;
    println!("Written to {}", path.display());
    Ok(())
}

/// The handler's user+system CPU time so far, from /proc/<pid>/stat (clock ticks of 1/100 s).
fn cpu_seconds(handler: &Handler) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", handler.pid())).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
