//! `cargo xtask bench`: chgate's speed, shown and never asserted. In one run, on one machine:
//!
//! - the same endpoint queries straight to ClickHouse with the `clickhouse` crate, through the
//!   handler with every request a cache miss, and through the handler answering from its cache,
//!   at several concurrency levels, with the ratios that matter against their targets (direct
//!   and miss requests interleave in one window, so both see the same ClickHouse queue);
//! - cold start (spawn to the first `GET /` 200, and to the first endpoint answer);
//! - the handler's resident memory, idle and after the load;
//! - the handler's own cost per request (a cache hit less a bare `GET /`), with a token it has
//!   seen and with a new token every time;
//! - with `--callgrind`, instructions per request under valgrind.
//!
//! The tables are printed and written with a description of the machine to
//! `bench/results/<date>-<host>.md`. `--load` instead runs many callers against one handler for
//! a while and reports statuses, latency and resident memory over time (see `load.rs`).

mod callgrind;
mod catalog;
mod drive;
mod handler;
mod ingest;
mod load;
mod machine;
mod signatures;
mod startup;
mod table;
mod telemetry;
mod throughput;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use self::catalog::CacheRule;
use self::drive::Signer;
use self::handler::{Handler, Memory, Spec};
use self::machine::Machine;
use self::table::{Table, Target, marked, mib};
use crate::connection::Connection;
use crate::dev_issuer::{self, DevIssuer, DevKey};
use crate::repo_root;

pub use self::ingest::{IngestOptions, run as ingest};
pub use self::load::run as load;
pub use self::telemetry::{TelemetryOptions, run as telemetry};

/// What `cargo xtask bench` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Each measurement's length.
    pub duration: Duration,
    /// Concurrency levels of the throughput table.
    pub levels: Vec<usize>,
    /// Whether to count instructions per request under valgrind's callgrind.
    pub callgrind: Callgrind,
}

/// Instruction counts: they take seconds, so they are part of every run where valgrind is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callgrind {
    /// When valgrind is on PATH; a failure is reported in the results, not fatal.
    Auto,
    /// valgrind must be on PATH and the counts must succeed.
    Required,
    Off,
}

/// What `cargo xtask bench --load` does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub duration: Duration,
    /// Concurrent callers.
    pub callers: usize,
}

/// The handler's in-flight query bound for the bench's handlers: high enough that the figures
/// are of speed, not of back-pressure.
const MAX_INFLIGHT_QUERIES: &str = "256";

/// Cold starts measured (their median is reported).
const COLD_STARTS: usize = 10;

/// What every mode shares: the release handler, a work folder, the development issuer the
/// handler trusts, and the key that signs callers' tokens.
struct Bench {
    root: PathBuf,
    /// `target/bench/`: catalogs, the policy copy, handler logs, callgrind files.
    work: PathBuf,
    binary: PathBuf,
    connection: Connection,
    issuer: DevIssuer,
    signer: Arc<Signer>,
}

impl Bench {
    async fn prepare(connection: &Connection) -> anyhow::Result<Self> {
        let root = repo_root();
        println!("Building the handler (release)");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "--bin", "handler"])
            .status()
            .await?;
        if !status.success() {
            bail!("building the handler failed");
        }
        let work = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        // access.toml trusts the development issuer at its fixed port.
        let issuer = DevIssuer::start(
            dev_issuer::DEFAULT_PORT,
            DevKey::load_or_create(&root.join(".local/dev-issuer"))?,
        )
        .await
        .context("the bench serves the development issuer itself (is `cargo xtask dev` running?)")?;
        let signer = Arc::new(Signer::load(&root, issuer.url())?);
        Ok(Self {
            binary: root.join("target/release/handler"),
            root,
            work,
            connection: connection.clone(),
            issuer,
            signer,
        })
    }

    fn spec(&self, name: &str, functions_dir: &Path, access_policy: &Path, env: Vec<(&'static str, String)>) -> Spec {
        Spec {
            name: name.to_owned(),
            binary: self.binary.clone(),
            functions_dir: functions_dir.to_owned(),
            access_policy: access_policy.to_owned(),
            env,
            wrapper: Vec::new(),
        }
    }

    async fn start(&self, spec: &Spec) -> anyhow::Result<Handler> {
        Handler::start(&self.root, &self.work, spec, &self.connection).await
    }

    /// Copies the shipped catalog with `rule` per endpoint to `target/bench/<name>`, and checks
    /// that this build accepts it. If it does not (a build without caching refuses `[cache]`),
    /// the shipped catalog stands in, and the note says so.
    fn catalog(
        &self,
        name: &str,
        policy: &Path,
        rule: &dyn Fn(&str) -> Option<CacheRule>,
    ) -> anyhow::Result<(PathBuf, Option<String>)> {
        let dir = self.work.join(name);
        catalog::copy_catalog(&self.root.join("functions"), &dir, rule)?;
        match catalog::check(&self.root, &self.binary, &dir, policy)? {
            Ok(()) => Ok((dir, None)),
            Err(refusal) => {
                let shipped = self.work.join("catalog-shipped-fallback");
                catalog::copy_catalog(&self.root.join("functions"), &shipped, &|_| None)?;
                let mut why: String = refusal.lines().collect::<Vec<_>>().join(" ");
                if why.chars().count() > 300 {
                    why = format!("{}…", why.chars().take(300).collect::<String>());
                }
                Ok((
                    shipped,
                    Some(format!(
                        "This build of the handler refuses the `{name}` catalog ({why}); its \
                         handler serves the catalog without caching instead, so its \"hit\" \
                         figures are misses."
                    )),
                ))
            }
        }
    }

    async fn finish(self) {
        self.issuer.stop().await;
    }
}

/// Sections of Markdown, printed as they are done and kept for the results file.
#[derive(Default)]
struct Report {
    text: String,
}

impl Report {
    fn add(&mut self, section: &str) {
        println!("\n{section}");
        self.text.push_str(section);
        self.text.push('\n');
    }
}

/// Runs the benchmark against ClickHouse at `connection`.
pub async fn run(connection: &Connection, options: &Options) -> anyhow::Result<()> {
    let bench = Bench::prepare(connection).await?;
    let outcome = run_with(&bench, options).await;
    bench.finish().await;
    outcome
}

async fn run_with(bench: &Bench, options: &Options) -> anyhow::Result<()> {
    if options.callgrind == Callgrind::Required && callgrind::valgrind().is_none() {
        bail!("--callgrind: valgrind is not on PATH");
    }
    let machine = Machine::describe(&bench.root, &bench.connection);
    let mut report = Report::default();
    println!("\n## Machine\n\n{}", machine.markdown());

    let policy = bench.work.join("access-without-limits.toml");
    let removed = catalog::policy_without_limits(&bench.root.join("access.toml"), &policy)?;
    let (shipped, _) = bench.catalog("catalog-shipped", &policy, &|_| None)?;
    let (cached, refused) = bench.catalog("catalog-cached", &policy, &|_| {
        Some(CacheRule { ttl: 600, stale: None })
    })?;
    let env = vec![("CHGATE_MAX_INFLIGHT_QUERIES", MAX_INFLIGHT_QUERIES.to_owned())];
    let miss_spec = bench.spec("handler-miss", &shipped, &policy, env.clone());
    let hit_spec = bench.spec("handler-hit", &cached, &policy, env);

    let mut setup = format!(
        "## Setup\n\n\
         - Each measurement runs {} s; concurrency levels {:?}.\n\
         - direct: the endpoint's SQL with the `clickhouse` crate, with the same typed \
           parameters and the settings the handler sends (readonly, limits, overflow modes, \
           output options, quota key, log comment, query id). miss: the release handler serving \
           the catalog as shipped, no endpoint cached, so every request runs the query. hit: a \
           second handler whose catalog gives every endpoint `[cache] ttl = 600`, warmed once per \
           case.\n\
         - Direct and miss requests interleave in one window so both see the same ClickHouse \
           queue: at concurrency N, N loops each send both kinds in turn (every two consecutive \
           requests of a loop hold one of each, in an order fixed by a seed), and each kind's \
           p50, p99 and rps come from that window. Hit has a window of its own after it.\n\
         - Both handlers: the access policy without its `limits` ({removed} removed), \
           `CHGATE_MAX_INFLIGHT_QUERIES={MAX_INFLIGHT_QUERIES}`, `RUST_LOG=warn`. One HTTP/1.1 \
           keep-alive client (reqwest) on the same machine drives them.\n\
         - Latencies are of 2xx answers, in ms unless marked; rps is 2xx answers per second.\n",
        options.duration.as_secs_f64(),
        options.levels,
    );
    if let Some(note) = &refused {
        setup.push_str(&format!("- {note}\n"));
    }
    if let Some(warning) = machine::busy_warning().await {
        setup.push_str(&format!("- {warning}\n"));
    }
    report.add(&setup);

    println!("Cold start: {COLD_STARTS} starts of the handler");
    report.add(&startup::cold_start(bench, &miss_spec, COLD_STARTS).await?);

    let miss = bench.start(&miss_spec).await?;
    let hit = bench.start(&hit_spec).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = [miss.memory(), hit.memory()];
    let outcome = measure(bench, options, &miss, &hit, &mut report).await;
    let loaded = [miss.memory(), hit.memory()];
    let logs = [miss.log_tail(), hit.log_tail()];
    let _ = miss.stop(Duration::from_secs(10)).await;
    let _ = hit.stop(Duration::from_secs(10)).await;
    if let Err(error) = outcome {
        bail!(
            "{error:#}\nmiss handler log:\n{}\nhit handler log:\n{}",
            logs[0],
            logs[1]
        );
    }
    report.add(&memory_section(idle, loaded));

    match options.callgrind {
        Callgrind::Off => {}
        mode => match callgrind::instructions(bench, &hit_spec, &throughput::CASES[0]).await {
            Ok(section) => report.add(&section),
            Err(error) if mode == Callgrind::Auto => {
                report.add(&format!("## Instructions per request\n\nNot measured: {error:#}\n"));
            }
            Err(error) => return Err(error),
        },
    }

    report.add(&format!(
        "Load average (1, 5, 15 min) at the end: {}.\n",
        machine::load_average().0
    ));
    let path = machine.write_results(&bench.root, "", "chgate bench", &report.text)?;
    println!("Written to {}", path.display());
    Ok(())
}

async fn measure(
    bench: &Bench,
    options: &Options,
    miss: &Handler,
    hit: &Handler,
    report: &mut Report,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    report.add(&throughput::throughput(bench, &http, miss, hit, options).await?);
    report.add(&throughput::handler_cost(bench, &http, hit, options.duration).await?);
    // Signing and verifying are CPU work: off the async threads.
    let duration = options.duration;
    report.add(&tokio::task::spawn_blocking(move || signatures::section(duration)).await??);
    Ok(())
}

fn memory_section(idle: [Option<Memory>; 2], loaded: [Option<Memory>; 2]) -> String {
    let target = Target::AtMost(64.0);
    let mut table = Table::new(&[
        "handler",
        &format!("idle VmRSS MiB ({})", target.label()),
        "VmRSS after the load, MiB",
        "VmHWM (peak), MiB",
    ]);
    for (i, name) in ["miss (catalog as shipped)", "hit (every endpoint cached)"]
        .iter()
        .enumerate()
    {
        let idle_kib = idle[i].map(|m| m.rss_kib);
        table.row(vec![
            (*name).to_owned(),
            marked(mib(idle_kib), idle_kib.map_or(f64::NAN, |k| k as f64 / 1024.0), target),
            mib(loaded[i].map(|m| m.rss_kib)),
            mib(loaded[i].map(|m| m.hwm_kib)),
        ]);
    }
    format!(
        "## Memory\n\nFrom /proc/<pid>/status: idle is 0.5 s after the handler answered `GET /`, \
         before any endpoint request; after the load is once the throughput and per-request \
         measurements are done.\n\n{}",
        table.render()
    )
}
