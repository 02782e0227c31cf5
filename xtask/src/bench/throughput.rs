//! Direct, miss and hit side by side at each concurrency level, and the handler's own cost per
//! request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::drive::{self, Role, Tally, drive, drive_kinds, interleaved};
use super::handler::Handler;
use super::table::{Table, Target, marked, ms, rps, us};
use super::{Bench, Options};

/// One query, as an endpoint and as the SQL it runs.
pub(super) struct Case {
    pub(super) label: &'static str,
    pub(super) endpoint: &'static str,
    pub(super) route: &'static str,
    /// The caller's tenant (from the token; the direct query gets it as caller_tenant).
    pub(super) tenant: &'static str,
    pub(super) params: &'static [(&'static str, &'static str)],
}

pub(super) const CASES: &[Case] = &[
    Case {
        label: "kpi, small tenant",
        endpoint: "kpi",
        route: "/api/v1/kpi",
        tenant: "piedpiper",
        params: &[("from", "2026-11-01 00:00:00"), ("to", "2026-12-01 00:00:00")],
    },
    Case {
        label: "top pages, largest tenant",
        endpoint: "top_pages",
        route: "/api/v1/top-pages",
        tenant: "acme",
        params: &[
            ("from", "2026-09-01 00:00:00"),
            ("to", "2026-12-01 00:00:00"),
            ("limit", "10"),
        ],
    },
];

impl Case {
    pub(super) fn url(&self, handler: &Handler) -> anyhow::Result<Arc<str>> {
        Ok(drive::url(&handler.base, self.route, self.params)?.into())
    }

    /// The settings the handler sends with this query for an analyst (src/query/runner.rs),
    /// so that the direct query asks ClickHouse for the same work: the endpoint's limits
    /// tightened by the role's, the overflow modes, the output options, the quota key and a
    /// log comment. (The local front applies each setting in the engine, so they cost time.)
    fn handler_settings(&self, root: &Path) -> anyhow::Result<Vec<(String, String)>> {
        let read = |path: PathBuf| -> anyhow::Result<toml::Table> {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(toml::from_str(&text)?)
        };
        let endpoint = read(root.join("functions").join(self.endpoint).join("endpoint.toml"))?;
        let policy = read(root.join("access.toml"))?;
        let limit = |name: &str| {
            endpoint
                .get("limits")
                .and_then(|limits| limits.get(name))
                .and_then(toml::Value::as_integer)
        };
        let role = |name: &str| {
            policy
                .get("roles")
                .and_then(|roles| roles.get("analyst"))
                .and_then(|role| role.get("clickhouse"))
                .and_then(|settings| settings.get(name))
                .and_then(toml::Value::as_integer)
        };
        let tighter = |own: Option<i64>, role: Option<i64>, default: i64| {
            own.into_iter().chain(role).min().unwrap_or(default).to_string()
        };
        let log_comment = serde_json::json!({
            "endpoint": self.endpoint, "role": "analyst", "tenant": self.tenant, "subject": "5f0c6a2e9b1d4c73",
        });
        let mut settings = vec![
            ("log_comment", log_comment.to_string()),
            ("readonly", "2".to_owned()),
            (
                "max_execution_time",
                tighter(limit("max_execution_time"), role("max_execution_time"), 60),
            ),
            ("timeout_overflow_mode", "throw".to_owned()),
            (
                "max_result_rows",
                tighter(limit("max_rows"), role("max_result_rows"), 0),
            ),
            (
                "max_result_bytes",
                tighter(limit("max_bytes"), role("max_result_bytes"), 0),
            ),
            ("result_overflow_mode", "throw".to_owned()),
            ("output_format_json_quote_64bit_integers", "0".to_owned()),
            ("http_write_exception_in_output_format", "0".to_owned()),
            ("cancel_http_readonly_queries_on_client_close", "1".to_owned()),
            ("quota_key", self.tenant.to_owned()),
        ];
        if let Some(memory) = role("max_memory_usage") {
            settings.push(("max_memory_usage", memory.to_string()));
        }
        if let Some(priority) = role("priority") {
            settings.push(("priority", priority.to_string()));
        }
        Ok(settings.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

const MISS_P50: Target = Target::AtMost(1.10);
const MISS_P99: Target = Target::AtMost(1.2);
const HIT_RPS: Target = Target::AtLeast(5.0);
const HANDLER_US: Target = Target::AtMost(100.0);

/// Fixes the order in which each loop interleaves direct and miss requests (see
/// `drive::interleaved`), so that every run sends the same sequence.
const INTERLEAVE_SEED: u64 = 0x6368_6761_7465;

/// The direct kind's index in the shared direct and miss window (`drive_kinds`); miss is 1.
const DIRECT: usize = 0;

/// Runs `concurrency` loops of one handler GET with one token.
async fn drive_get(
    concurrency: usize,
    duration: Duration,
    http: &reqwest::Client,
    url: &Arc<str>,
    token: Option<&Arc<str>>,
) -> anyhow::Result<Tally> {
    let (http, url, token) = (http.clone(), url.clone(), token.cloned());
    drive(concurrency, duration, move |_, _| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move { drive::get(&http, &url, token.as_deref()).await }
    })
    .await
}

/// The throughput table.
pub(super) async fn throughput(
    bench: &Bench,
    http: &reqwest::Client,
    miss: &Handler,
    hit: &Handler,
    options: &Options,
) -> anyhow::Result<String> {
    let clickhouse = bench.connection.client();
    let mut table = Table::new(&[
        "case",
        "conc",
        "direct p50",
        "direct p99",
        "direct rps",
        "miss p50",
        "miss p99",
        "miss rps",
        "hit p50",
        "hit p99",
        "hit rps",
        &format!("miss/direct p50 ({})", MISS_P50.label()),
        &format!("miss/direct p99 ({})", MISS_P99.label()),
        &format!("hit/(direct+miss) rps ({})", HIT_RPS.label()),
        "hit: not X-Cache hit",
        "errors d/m/h",
        "requests d/m",
    ]);
    let mut notes = Vec::new();
    for case in CASES {
        let sql: Arc<str> = std::fs::read_to_string(bench.root.join("functions").join(case.endpoint).join("query.sql"))
            .with_context(|| format!("reading {}'s query.sql", case.endpoint))?
            .into();
        let settings = Arc::new(case.handler_settings(&bench.root)?);
        let token: Arc<str> = bench.signer.token("bench", Role::Analyst, case.tenant)?.into();
        let (miss_url, hit_url) = (case.url(miss)?, case.url(hit)?);

        // Both paths answer; the hit handler takes its one miss here, then should say hit.
        if let drive::Outcome::Failed(error) =
            drive::direct(&clickhouse, &sql, &settings, case.tenant, case.params).await
        {
            anyhow::bail!("{}: the direct query failed: {error}", case.label);
        }
        drive::get_expecting(http, &miss_url, Some(&token), 200).await?;
        let first = drive::get_expecting(http, &hit_url, Some(&token), 200).await?;
        let second = drive::get_expecting(http, &hit_url, Some(&token), 200).await?;
        let show =
            |value: Option<String>| value.map_or_else(|| "no X-Cache header".to_owned(), |v| format!("X-Cache: {v}"));
        notes.push(format!(
            "- {}: warm-up answer {}, the next {}",
            case.label,
            show(first),
            show(second)
        ));

        for &concurrency in &options.levels {
            println!("{} at concurrency {concurrency}", case.label);
            // Direct and miss requests interleave in one window, so both see the same queue
            // at ClickHouse and the same load on the machine.
            let [direct, missed] = drive_kinds(concurrency, options.duration, {
                let (clickhouse, sql, settings) = (clickhouse.clone(), sql.clone(), settings.clone());
                let (http, url, token) = (http.clone(), miss_url.clone(), token.clone());
                move |worker, sequence| {
                    let kind = interleaved(INTERLEAVE_SEED, worker, sequence);
                    let (clickhouse, sql, settings) = (clickhouse.clone(), sql.clone(), settings.clone());
                    let (http, url, token) = (http.clone(), url.clone(), token.clone());
                    let pending = async move {
                        match kind {
                            DIRECT => drive::direct(&clickhouse, &sql, &settings, case.tenant, case.params).await,
                            _ => drive::get(&http, &url, Some(&token)).await,
                        }
                    };
                    (kind, pending)
                }
            })
            .await?;
            println!(
                "  direct and miss interleaved: {} direct, {} miss requests",
                direct.requests(),
                missed.requests()
            );
            let hits = drive_get(concurrency, options.duration, http, &hit_url, Some(&token)).await?;
            let p50 = missed.percentile_ms(0.5) / direct.percentile_ms(0.5);
            let p99 = missed.percentile_ms(0.99) / direct.percentile_ms(0.99);
            // What ClickHouse served in the shared window: direct and miss run the same query,
            // and each kind alone gets about half of it.
            let rps_ratio = hits.rps() / (direct.rps() + missed.rps());
            table.row(vec![
                case.label.to_owned(),
                concurrency.to_string(),
                ms(direct.percentile_ms(0.5)),
                ms(direct.percentile_ms(0.99)),
                rps(direct.rps()),
                ms(missed.percentile_ms(0.5)),
                ms(missed.percentile_ms(0.99)),
                rps(missed.rps()),
                ms(hits.percentile_ms(0.5)),
                ms(hits.percentile_ms(0.99)),
                rps(hits.rps()),
                marked(format!("{p50:.2}"), p50, MISS_P50),
                marked(format!("{p99:.2}"), p99, MISS_P99),
                marked(format!("{rps_ratio:.1}"), rps_ratio, HIT_RPS),
                format!("{} of {}", hits.not_hit(), hits.successes()),
                format!(
                    "{}/{}/{}",
                    direct.unsuccessful(),
                    missed.unsuccessful(),
                    hits.unsuccessful()
                ),
                format!("{}/{}", direct.requests(), missed.requests()),
            ]);
            for (name, tally) in [("direct", &direct), ("miss", &missed), ("hit", &hits)] {
                if tally.unsuccessful() > 0 {
                    notes.push(format!(
                        "- {} at {concurrency}, {name}: {} ({})",
                        case.label,
                        tally.status_summary(),
                        tally.first_failure.as_deref().unwrap_or("non-2xx answers")
                    ));
                }
            }
        }
    }
    Ok(format!(
        "## Direct, miss and hit\n\n{}\nDirect and miss requests interleave in one window so \
         both see the same ClickHouse queue; requests d/m counts each kind sent in it, and \
         direct rps and miss rps are each kind's answers per second of that window. Ratios: miss \
         latency over direct (lower is better), and hit throughput over the window's direct and \
         miss throughput together, which is what ClickHouse served (higher is better). The local \
         ClickHouse runs one query at a time, so that is its ceiling, and latency at higher \
         concurrency is mostly queueing at ClickHouse.\n\n{}\n",
        table.render(),
        notes.join("\n")
    ))
}

/// What the handler does per request beyond HTTP (token, routing, parameters, the cache
/// lookup): at concurrency 1 on one keep-alive connection, a cache hit's p50 less `GET /`'s.
/// The three kinds of request take turns in one loop, so that whatever else the machine does
/// weighs on all of them alike.
pub(super) async fn handler_cost(
    bench: &Bench,
    http: &reqwest::Client,
    hit: &Handler,
    duration: Duration,
) -> anyhow::Result<String> {
    println!("Per-request handler cost");
    let root = format!("{}/", hit.base);
    let mut table = Table::new(&[
        "case",
        "GET / p50 µs",
        "hit p50 µs, same token",
        &format!("handler µs, same token ({})", HANDLER_US.label()),
        "hit p50 µs, new token each",
        &format!("handler µs, new token each ({})", HANDLER_US.label()),
        "rounds",
        "not X-Cache hit",
        "errors",
    ]);
    for case in CASES {
        let url = case.url(hit)?;
        let token = bench.signer.token("bench", Role::Analyst, case.tenant)?;
        let (mut bare, mut reused, mut fresh) = (Tally::default(), Tally::default(), Tally::default());
        let began = Instant::now();
        let mut rounds = 0;
        while began.elapsed() < duration {
            let start = Instant::now();
            bare.record(drive::get(http, &root, None).await, start.elapsed());
            let start = Instant::now();
            reused.record(drive::get(http, &url, Some(&token)).await, start.elapsed());
            // Signed before the clock starts: its own jti, new to the handler.
            let new = bench.signer.token("bench", Role::Analyst, case.tenant)?;
            let start = Instant::now();
            fresh.record(drive::get(http, &url, Some(&new)).await, start.elapsed());
            rounds += 1;
        }
        for tally in [&mut bare, &mut reused, &mut fresh] {
            tally.finish(began.elapsed());
        }
        let bare_us = bare.percentile_ms(0.5) * 1000.0;
        let reused_us = reused.percentile_ms(0.5) * 1000.0;
        let fresh_us = fresh.percentile_ms(0.5) * 1000.0;
        table.row(vec![
            case.label.to_owned(),
            us(bare_us),
            us(reused_us),
            marked(us(reused_us - bare_us), reused_us - bare_us, HANDLER_US),
            us(fresh_us),
            marked(us(fresh_us - bare_us), fresh_us - bare_us, HANDLER_US),
            rounds.to_string(),
            format!("{} / {}", reused.not_hit(), fresh.not_hit()),
            format!(
                "{} / {} / {}",
                bare.unsuccessful(),
                reused.unsuccessful(),
                fresh.unsuccessful()
            ),
        ]);
    }
    Ok(format!(
        "## Handler cost per request\n\nConcurrency 1, one keep-alive connection, on the hit \
         handler, {} s per case. Each round sends `GET /`, a cache hit with the same token as \
         always, and a cache hit with a token signed for it alone (its own `jti`, signed before \
         the clock starts). Handler µs is a hit's p50 less `GET /`'s p50, which has the same \
         HTTP work and none of the handler's: token verification, routing, parameter parsing \
         and the cache lookup. Counts are same token / new token each (errors: `GET /` / same / \
         new).\n\n{}",
        duration.as_secs_f64(),
        table.render()
    ))
}
