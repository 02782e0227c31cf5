//! `cargo xtask bench`: the same endpoint queries, in the same run, straight to ClickHouse with
//! the `clickhouse` crate and through the handler over HTTP, at several concurrency levels.
//! It prints figures; it asserts nothing (speed is shown, never tested by timing).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::connection::Connection;
use crate::dev_issuer::{self, DevIssuer, DevKey};
use crate::repo_root;

/// One query, as an endpoint and as the SQL it runs.
struct Case {
    label: &'static str,
    endpoint: &'static str,
    route: &'static str,
    /// The caller's tenant (from the token; the direct query gets it as caller_tenant).
    tenant: &'static str,
    params: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        label: "kpi, small tenant",
        endpoint: "kpi",
        route: "v1/kpi",
        tenant: "piedpiper",
        params: &[("from", "2026-11-01 00:00:00"), ("to", "2026-12-01 00:00:00")],
    },
    Case {
        label: "top pages, largest tenant",
        endpoint: "top_pages",
        route: "v1/top-pages",
        tenant: "acme",
        params: &[
            ("from", "2026-09-01 00:00:00"),
            ("to", "2026-12-01 00:00:00"),
            ("limit", "10"),
        ],
    },
];

/// Latency samples and the wall time they took.
struct Run {
    latencies_ms: Vec<f64>,
    wall: Duration,
}

impl Run {
    fn percentile(&self, q: f64) -> f64 {
        let index = ((self.latencies_ms.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ms[index]
    }
    fn rps(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.wall.as_secs_f64()
    }
}

/// Runs the benchmark against ClickHouse at `connection`, starting a release-built handler.
pub async fn run(connection: &Connection, duration: Duration, levels: &[usize]) -> anyhow::Result<()> {
    let root = repo_root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--quiet", "--release", "--bin", "handler"])
        .status()
        .await?;
    if !status.success() {
        bail!("building the handler failed");
    }
    let port = free_port()?;
    // The handler trusts access.toml's development issuer: serve it, and sign callers' tokens.
    let issuer = DevIssuer::start(
        dev_issuer::DEFAULT_PORT,
        DevKey::load_or_create(&root.join(".local/dev-issuer"))?,
    )
    .await?;
    let mut handler = start_handler(&root, connection, port).await?;
    let outcome = measure(connection, port, duration, levels, &issuer).await;
    let _ = handler.kill().await;
    issuer.stop().await;
    outcome
}

async fn start_handler(root: &Path, connection: &Connection, port: u16) -> anyhow::Result<Child> {
    let mut handler = Command::new(root.join("target/release/handler"))
        .current_dir(root)
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        .envs(connection.env())
        .kill_on_drop(true)
        .spawn()
        .context("starting the handler")?;
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok() {
            return Ok(handler);
        }
        if let Some(status) = handler.try_wait()? {
            bail!("the handler exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the handler did not become ready")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn measure(
    connection: &Connection,
    port: u16,
    duration: Duration,
    levels: &[usize],
    issuer: &DevIssuer,
) -> anyhow::Result<()> {
    let root = repo_root();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let clickhouse = connection.client();
    println!(
        "ClickHouse at {}; each cell runs {} s; latencies in ms",
        connection.url,
        duration.as_secs()
    );
    println!(
        "{:<26} {:>4} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6}",
        "query", "conc", "direct50", "direct99", "rps", "gate50", "gate99", "rps", "p50 ×", "p99 ×", "rps ×"
    );
    for case in CASES {
        let sql = Arc::new(std::fs::read_to_string(
            root.join("functions").join(case.endpoint).join("query.sql"),
        )?);
        let url = Arc::new(format!("http://127.0.0.1:{port}/api/{}", case.route));
        let token = Arc::new(analyst_token(issuer, case.tenant)?);
        // One warm-up request each, which also proves both paths answer.
        direct_once(&clickhouse, &sql, case).await?;
        gateway_once(&http, &url, &token, case.params, 200).await?;
        for &concurrency in levels {
            let direct = drive(concurrency, duration, {
                let (clickhouse, sql) = (clickhouse.clone(), sql.clone());
                move || {
                    let (clickhouse, sql) = (clickhouse.clone(), sql.clone());
                    async move { direct_once(&clickhouse, &sql, case).await }
                }
            })
            .await?;
            let gateway = drive_gateway(concurrency, duration, &http, &url, &token, case.params, 200).await?;
            println!(
                "{:<26} {:>4} | {:>8.2} {:>8.2} {:>8.0} | {:>8.2} {:>8.2} {:>8.0} | {:>6.2} {:>6.2} {:>6.2}",
                case.label,
                concurrency,
                direct.percentile(0.5),
                direct.percentile(0.99),
                direct.rps(),
                gateway.percentile(0.5),
                gateway.percentile(0.99),
                gateway.rps(),
                gateway.percentile(0.5) / direct.percentile(0.5),
                gateway.percentile(0.99) / direct.percentile(0.99),
                gateway.rps() / direct.rps(),
            );
        }
    }
    println!("× columns: through the handler divided by direct (latency: lower is better; rps: higher is better)");
    auth_cost(&http, port, duration, levels, issuer).await
}

/// The cost of verifying a token end to end, without ClickHouse: requests that stop at
/// routing (an unknown path: no token work) against requests that stop after verification
/// and the role check (a valid token for an endpoint its role may not call).
async fn auth_cost(
    http: &reqwest::Client,
    port: u16,
    duration: Duration,
    levels: &[usize],
    issuer: &DevIssuer,
) -> anyhow::Result<()> {
    let token = Arc::new(analyst_token(issuer, "acme")?);
    let unknown = Arc::new(format!("http://127.0.0.1:{port}/api/no/such/endpoint"));
    let refused = Arc::new(format!("http://127.0.0.1:{port}/api/v1/internal/tenants"));
    println!("\nAuth cost (no ClickHouse involved)");
    println!(
        "{:>4} | {:>12} {:>8} | {:>12} {:>8} | {:>14}",
        "conc", "route µs p50", "rps", "verify µs p50", "rps", "auth µs/request"
    );
    for &concurrency in levels {
        let route_only = drive_gateway(concurrency, duration, http, &unknown, &token, &[], 404).await?;
        let verified = drive_gateway(concurrency, duration, http, &refused, &token, &[], 403).await?;
        let (route_us, verify_us) = (route_only.percentile(0.5) * 1000.0, verified.percentile(0.5) * 1000.0);
        println!(
            "{:>4} | {:>12.0} {:>8.0} | {:>12.0} {:>8.0} | {:>14.0}",
            concurrency,
            route_us,
            route_only.rps(),
            verify_us,
            verified.rps(),
            verify_us - route_us
        );
    }
    Ok(())
}

fn analyst_token(issuer: &DevIssuer, tenant: &str) -> anyhow::Result<String> {
    issuer.token("bench", serde_json::json!({"roles": ["Analytics.Read"], "tid": tenant}))
}

/// The endpoint's SQL with the same parameters and settings the handler uses.
async fn direct_once(client: &clickhouse::Client, sql: &str, case: &Case) -> anyhow::Result<()> {
    let mut query = client
        .query_raw(sql)
        .with_setting("readonly", "2")
        .param("caller_tenant", case.tenant);
    for (name, value) in case.params {
        query = query.param(name, value);
    }
    let mut cursor = query.fetch_bytes("JSON")?;
    let mut bytes = 0;
    while let Some(chunk) = cursor.next().await? {
        bytes += chunk.len();
    }
    if bytes == 0 {
        bail!("empty result");
    }
    Ok(())
}

async fn gateway_once(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    params: &[(&str, &str)],
    expected: u16,
) -> anyhow::Result<()> {
    let response = http.get(url).bearer_auth(token).query(params).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status.as_u16() != expected || body.is_empty() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// Runs `concurrency` loops of one handler request, each expecting `expected`.
async fn drive_gateway(
    concurrency: usize,
    duration: Duration,
    http: &reqwest::Client,
    url: &Arc<String>,
    token: &Arc<String>,
    params: &'static [(&'static str, &'static str)],
    expected: u16,
) -> anyhow::Result<Run> {
    let (http, url, token) = (http.clone(), url.clone(), token.clone());
    drive(concurrency, duration, move || {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move { gateway_once(&http, &url, &token, params, expected).await }
    })
    .await
}

/// Runs `concurrency` loops of `request` for `duration`, collecting every latency.
async fn drive<F, Fut>(concurrency: usize, duration: Duration, request: F) -> anyhow::Result<Run>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let began = Instant::now();
    let deadline = began + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let request = request.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                request().await?;
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies_ms = Vec::new();
    while let Some(result) = workers.join_next().await {
        latencies_ms.extend(result??);
    }
    let wall = began.elapsed();
    latencies_ms.sort_by(f64::total_cmp);
    if latencies_ms.is_empty() {
        bail!("no request completed");
    }
    Ok(Run { latencies_ms, wall })
}
