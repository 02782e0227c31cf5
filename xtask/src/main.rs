//! `cargo xtask <task>`: run chgate locally, run its tests, manage the local ClickHouse,
//! package it for deployment.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::process::Command;
use xtask::connection::Connection;
use xtask::dev_issuer::{self, DevIssuer, DevKey};
use xtask::local_clickhouse::LocalClickHouse;
use xtask::oidc_provider::{self, OidcProvider};
use xtask::{repo_root, sample};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for chgate")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the service locally: ClickHouse (local engine unless CLICKHOUSE_URL is set), sample
    /// data if the events table is empty, and the handler on :7071. Ctrl-C stops it all.
    Dev {
        /// Rows of sample data to load when the events table is empty.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// Run every test with the services they need, then stop what was started.
    Test {
        /// Passed to `cargo test` (for example a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Manage the local ClickHouse (the real engine behind ClickHouse's HTTP interface).
    Clickhouse {
        #[command(subcommand)]
        action: ClickhouseAction,
    },
    /// Measure the handler (release build) and write the figures with a description of the
    /// machine to bench/results/<date>-<host>.md: the same endpoint queries straight to
    /// ClickHouse, through the handler as cache misses and as cache hits (p50/p99, requests/s
    /// and their ratios at each concurrency level), cold start, resident memory and the
    /// handler's own cost per request. Figures only: nothing is asserted about timing.
    Bench {
        /// Seconds per measurement (default 5); with --load, of the whole run (default 60).
        #[arg(long)]
        seconds: Option<u64>,
        /// Concurrency levels; with --load, the number of concurrent callers (the largest).
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        concurrency: Vec<usize>,
        /// Require the instruction counts (valgrind's callgrind; a few seconds). Without it
        /// they are taken when valgrind is on PATH.
        #[arg(long, conflicts_with_all = ["load", "no_callgrind"])]
        callgrind: bool,
        /// Skip the instruction counts.
        #[arg(long)]
        no_callgrind: bool,
        /// Instead, run many callers (several tenants and subjects, cached and uncached
        /// endpoints) against one handler under the shipped access policy, and report answers
        /// by status, latency and resident memory sampled every second. Fails if any answer
        /// is other than a 2xx or a 429.
        #[arg(long)]
        load: bool,
        /// Instead, measure what exporting telemetry costs: requests to a handler exporting to
        /// Application Insights (a local receiver stands in for the ingestion endpoint) and to
        /// one that does not, interleaved, for cache hits and misses.
        #[arg(long, conflicts_with_all = ["load", "callgrind"])]
        telemetry: bool,
        /// Instead, measure ingest throughput (rows/s) through the handler's ingest endpoint
        /// and straight to ClickHouse with the clickhouse crate, for batches of 10 and 10,000
        /// rows.
        #[arg(long, conflicts_with_all = ["load", "callgrind", "telemetry"])]
        ingest: bool,
    },
    /// Print an access token from the development issuer, for curl: roles are granted the way
    /// access.toml says (the first grant rule of the role).
    Token {
        #[arg(long, default_value = "analyst")]
        role: String,
        #[arg(long, default_value = "acme")]
        tenant: String,
        #[arg(long, default_value = "dev-user")]
        subject: String,
    },
    /// Build the handler static for Linux (x86_64-unknown-linux-musl, release) and lay out the
    /// deployable app root in dist/ (host.json, handler, access.toml, the function folders),
    /// zipped into target/package/chgate.zip. Installs the musl target and musl-gcc if missing.
    Package,
    /// Load deterministic sample analytics data into the events table (replacing its rows).
    Seed {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = sample::DEFAULT_SEED)]
        seed: u64,
        #[arg(long, default_value = "events")]
        table: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClickhouseAction {
    /// Start it (idempotent) and print its URL.
    Start,
    /// Stop it.
    Stop,
    /// Say whether it runs.
    Status,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().task).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs this very command again from an optimised build of the xtask.
fn rerun_optimized() -> anyhow::Result<ExitCode> {
    println!("bench: building an optimised xtask first, so the direct client runs at full speed");
    let status = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .current_dir(repo_root())
        .status()
        .context("running the optimised xtask")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run(task: Task) -> anyhow::Result<ExitCode> {
    let local = LocalClickHouse::new(&repo_root());
    match task {
        Task::Clickhouse {
            action: ClickhouseAction::Start,
        } => {
            let started = local.start().await?;
            let connection = local.connection()?;
            println!(
                "ClickHouse {} at {} (user {}, password in {})",
                if started { "started" } else { "already running" },
                connection.url,
                connection.user,
                local.users_file().display()
            );
        }
        Task::Clickhouse {
            action: ClickhouseAction::Stop,
        } => {
            local.stop().await?;
            println!("ClickHouse stopped");
        }
        Task::Clickhouse {
            action: ClickhouseAction::Status,
        } => {
            if let Some(pid) = local.running_pid()
                && local.answers().await
            {
                println!("ClickHouse running at {} (pid {pid})", LocalClickHouse::url()?);
                if let Some(rss) = resident_memory_kib(pid.as_raw()) {
                    println!("  resident memory: {} MiB", rss / 1024);
                }
                let client = local.connection()?.client();
                for (label, sql) in [
                    ("SELECT toUInt64(1)", "SELECT toUInt64(1)"),
                    ("SELECT {n:UInt64} + 1 (typed parameter)", "SELECT {n:UInt64} + 1"),
                ] {
                    let timings = latency_sample(&client, sql, 200).await?;
                    println!(
                        "  {label}: median {:.2} ms, p99 {:.2} ms over {} queries",
                        percentile(&timings, 0.50),
                        percentile(&timings, 0.99),
                        timings.len()
                    );
                }
            } else {
                println!("ClickHouse not running");
                return Ok(ExitCode::from(3));
            }
        }
        Task::Package => {
            let package = xtask::package::package(&repo_root())?;
            println!(
                "Packaged in {} (release build {:.0} s):\n  {} ({:.1} MiB, static {})\n  {} ({} files)",
                package.dist.display(),
                package.build_time.as_secs_f64(),
                package.binary.display(),
                package.binary_bytes as f64 / (1024.0 * 1024.0),
                xtask::package::TARGET,
                package.zip.display(),
                package.entries.len()
            );
        }
        Task::Seed { rows, seed, table } => {
            let (connection, _) = clickhouse(&local).await?;
            seed_events(&connection, &table, rows, seed).await?;
        }
        Task::Test { args } => {
            let (connection, started) = clickhouse(&local).await?;
            let outcome = run_tests(&connection, &args).await;
            if started {
                local.stop().await?;
            }
            return outcome;
        }
        Task::Token { role, tenant, subject } => {
            let key = DevKey::load_or_create(&dev_key_dir())?;
            let extra = role_claims(&role, &tenant)?;
            let issuer = format!("http://127.0.0.1:{}", dev_issuer::DEFAULT_PORT);
            println!("{}", key.sign(&dev_issuer::claims(&issuer, &subject, extra))?);
        }
        Task::Bench { .. } if cfg!(debug_assertions) => {
            // The direct side of every comparison is this process's own clickhouse client: a
            // debug build of it would make ClickHouse look slower than it is.
            return rerun_optimized();
        }
        Task::Bench {
            seconds,
            concurrency,
            callgrind,
            no_callgrind,
            load,
            telemetry,
            ingest,
        } => {
            anyhow::ensure!(
                !concurrency.is_empty() && !concurrency.contains(&0),
                "--concurrency needs levels of at least 1"
            );
            let (connection, started) = clickhouse(&local).await?;
            let outcome = match ensure_sample_data(&connection, 1_000_000).await {
                Ok(()) if load => {
                    let options = xtask::bench::LoadOptions {
                        duration: std::time::Duration::from_secs(seconds.unwrap_or(60)),
                        callers: concurrency.iter().copied().max().unwrap_or(64),
                    };
                    xtask::bench::load(&connection, &options).await
                }
                Ok(()) if ingest => {
                    let options = xtask::bench::IngestOptions {
                        duration: std::time::Duration::from_secs(seconds.unwrap_or(5)),
                        levels: concurrency,
                    };
                    xtask::bench::ingest(&connection, &options).await
                }
                Ok(()) if telemetry => {
                    let options = xtask::bench::TelemetryOptions {
                        duration: std::time::Duration::from_secs(seconds.unwrap_or(5)),
                        levels: concurrency,
                    };
                    xtask::bench::telemetry(&connection, &options).await
                }
                Ok(()) => {
                    let options = xtask::bench::Options {
                        duration: std::time::Duration::from_secs(seconds.unwrap_or(5)),
                        levels: concurrency,
                        callgrind: match (callgrind, no_callgrind) {
                            (true, _) => xtask::bench::Callgrind::Required,
                            (false, true) => xtask::bench::Callgrind::Off,
                            (false, false) => xtask::bench::Callgrind::Auto,
                        },
                    };
                    xtask::bench::run(&connection, &options).await
                }
                Err(error) => Err(error),
            };
            if started {
                local.stop().await?;
            }
            outcome?;
        }
        Task::Dev { rows } => {
            let (connection, started) = clickhouse(&local).await?;
            let outcome = run_dev(&connection, rows).await;
            if started {
                local.stop().await?;
                println!("ClickHouse stopped");
            }
            return outcome;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The ClickHouse to use: `CLICKHOUSE_URL`'s, or the local one (started if needed; the flag
/// says whether this call started it, so the caller can stop it again).
async fn clickhouse(local: &LocalClickHouse) -> anyhow::Result<(Connection, bool)> {
    if let Some(connection) = Connection::from_env() {
        println!("Using ClickHouse at {} (CLICKHOUSE_URL)", connection.url);
        return Ok((connection, false));
    }
    let started = local.start().await?;
    let connection = local.connection()?;
    println!("Local ClickHouse at {}", connection.url);
    Ok((connection, started))
}

/// The resident set size of a process, from /proc.
fn resident_memory_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Round-trip times in milliseconds of `count` sequential queries over one keep-alive client.
async fn latency_sample(client: &clickhouse::Client, sql: &str, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut timings = Vec::with_capacity(count);
    for i in 0..count {
        let began = Instant::now();
        let query = client.query(sql);
        let query = if sql.contains("{n:") {
            query.param("n", i as u64)
        } else {
            query
        };
        query.fetch_one::<u64>().await?;
        timings.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    timings.sort_by(f64::total_cmp);
    Ok(timings)
}

/// The value at quantile `q` of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn seed_events(connection: &Connection, table: &str, rows: u64, seed: u64) -> anyhow::Result<()> {
    let began = Instant::now();
    sample::load(&connection.client(), table, rows, seed).await?;
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "Loaded {rows} sample events into {table} in {seconds:.1} s ({:.0} rows/s)",
        rows as f64 / seconds
    );
    Ok(())
}

async fn run_tests(connection: &Connection, args: &[String]) -> anyhow::Result<ExitCode> {
    // A certified OpenID provider for the interop tests.
    let provider = OidcProvider::start(&oidc_provider::test_clients()).await?;
    println!("OpenID provider at {}", provider.issuer());
    // Azure Storage for the ingest spool.
    let azurite = match xtask::azurite::Azurite::start().await {
        Ok(azurite) => azurite,
        Err(error) => {
            provider.stop().await?;
            return Err(error);
        }
    };
    println!(
        "Azurite at {} (blob), {} (queue)",
        azurite.blob_endpoint(),
        azurite.queue_endpoint()
    );
    let status = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args(["test", "--workspace"])
        .args(args)
        .envs(connection.env())
        .envs(provider.env())
        .envs(azurite.env())
        .status()
        .await
        .context("running cargo test");
    provider.stop().await?;
    azurite.stop().await?;
    Ok(if status?.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Seeds the events table when it is missing or empty.
async fn ensure_sample_data(connection: &Connection, rows: u64) -> anyhow::Result<()> {
    let count = connection
        .client()
        .query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0);
    if count == 0 {
        seed_events(connection, "events", rows, sample::DEFAULT_SEED).await
    } else {
        println!("Sample data present ({count} events)");
        Ok(())
    }
}

/// Where the development issuer keeps its key (git-ignored).
fn dev_key_dir() -> std::path::PathBuf {
    repo_root().join(".local/dev-issuer")
}

/// Claims that grant `role` under access.toml (its first grant rule), with the tenant claim.
fn role_claims(role: &str, tenant: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(repo_root().join("access.toml")).context("reading access.toml")?;
    let policy: toml::Value = toml::from_str(&text).context("parsing access.toml")?;
    let grant = policy
        .get("grants")
        .and_then(|grants| grants.as_array())
        .and_then(|grants| {
            grants
                .iter()
                .find(|grant| grant.get("role").and_then(|r| r.as_str()) == Some(role))
        })
        .with_context(|| format!("access.toml grants role {role:?} by no claim"))?;
    let claim = grant
        .get("claim")
        .and_then(|c| c.as_str())
        .context("grant without claim")?;
    let value = grant
        .get("any_of")
        .and_then(|values| values.as_array())
        .and_then(|values| values.first())
        .and_then(|v| v.as_str())
        .context("grant without any_of")?;
    let tenant_claim = policy
        .get("tenant")
        .and_then(|t| t.get("claim"))
        .and_then(|c| c.as_str())
        .unwrap_or("tid");
    let mut claims = serde_json::Map::new();
    // Scopes travel as one space-separated string, other claims as arrays.
    let granted = if claim == "scp" || claim == "scope" {
        serde_json::json!(value)
    } else {
        serde_json::json!([value])
    };
    claims.insert(claim.to_owned(), granted);
    claims.insert(tenant_claim.to_owned(), serde_json::json!(tenant));
    Ok(serde_json::Value::Object(claims))
}

async fn run_dev(connection: &Connection, rows: u64) -> anyhow::Result<ExitCode> {
    ensure_sample_data(connection, rows).await?;
    let issuer = DevIssuer::start(dev_issuer::DEFAULT_PORT, DevKey::load_or_create(&dev_key_dir())?).await?;
    println!(
        "Development token issuer at {} (an analyst of acme: cargo xtask token)",
        issuer.url()
    );
    println!(
        "Try: curl -H \"Authorization: Bearer $(cargo xtask token)\" \\\n  \
         'http://127.0.0.1:7071/api/v1/kpi?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z'"
    );

    let port = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT").unwrap_or_else(|_| "7071".to_owned());
    println!("Starting the handler on http://127.0.0.1:{port} (Ctrl-C stops everything)");
    let mut handler = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args(["run", "--quiet", "--bin", "handler"])
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", &port)
        // access.toml's development issuer is trusted only with this (never in Azure).
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        .envs(connection.env())
        .kill_on_drop(true)
        .spawn()
        .context("starting the handler")?;
    // SIGTERM (a supervisor, `timeout`) ends the run like Ctrl-C, so that what was started
    // is stopped either way.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        status = handler.wait() => {
            let status = status?;
            println!("The handler exited ({status})");
            return Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    // A terminal's Ctrl-C reaches the handler as well; a signal sent to this task alone does
    // not, so pass it on, then give the handler a moment to drain.
    if let Some(pid) = handler.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handler.wait()).await;
    Ok(ExitCode::SUCCESS)
}
