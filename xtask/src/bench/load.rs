//! `cargo xtask bench --load`: many callers against one handler for a while, as production
//! would see it: several tenants and subjects, cached and uncached endpoints, the access policy
//! as shipped (its limits included, so 429s are expected and callers honour `Retry-After`).
//! It reports requests, answers by status, latency, and the handler's resident memory sampled
//! every second. Anything other than a 2xx or a 429 is an error, and makes the task fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::catalog::CacheRule;
use super::drive::{self, Outcome, Role, Tally};
use super::handler::{self, Handler, Memory};
use super::machine::{self, Machine};
use super::table::{Table, mib, ms, rps};
use super::{Bench, LoadOptions, Report};
use crate::connection::Connection;
use crate::sample::TENANTS;

/// The endpoints that cache in the load run; the others do not.
const CACHED: &[&str] = &["kpi", "top_pages"];

/// Short enough that entries expire and refresh (and go stale) during a run.
const CACHE_RULE: CacheRule = CacheRule {
    ttl: 10,
    stale: Some(5),
};

/// The time windows callers ask about (one month each).
const WINDOWS: &[(&str, &str)] = &[
    ("2026-09-01 00:00:00", "2026-10-01 00:00:00"),
    ("2026-10-01 00:00:00", "2026-11-01 00:00:00"),
    ("2026-11-01 00:00:00", "2026-12-01 00:00:00"),
];

/// The longest a caller waits on a 429's `Retry-After`, and its wait when there is none.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Cached,
    Uncached,
}

/// One caller: who it is (one token, reused, as clients do) and what it asks, in turn.
struct Caller {
    token: Arc<str>,
    requests: Vec<(Class, Arc<str>)>,
}

/// Runs the load against ClickHouse at `connection`.
pub async fn run(connection: &Connection, options: &LoadOptions) -> anyhow::Result<()> {
    let bench = Bench::prepare(connection).await?;
    let outcome = run_with(&bench, options).await;
    bench.finish().await;
    outcome
}

fn callers(bench: &Bench, handler: &Handler, count: usize) -> anyhow::Result<(Vec<Caller>, usize)> {
    let base = &handler.base;
    let mut callers = Vec::with_capacity(count);
    let mut subjects = std::collections::BTreeSet::new();
    for c in 0..count {
        let mut requests = Vec::new();
        let tenant = TENANTS[c % TENANTS.len()].0;
        let (subject, token) = match c % 8 {
            // Staff: every tenant's aggregates (not cached).
            7 => {
                let subject = format!("staff-{}", c % 3);
                let token = bench.signer.token(&subject, Role::Internal, "staff")?;
                for (from, to) in WINDOWS {
                    let window = [("from", *from), ("to", *to)];
                    requests.push((Class::Uncached, drive::url(base, "/api/v1/internal/tenants", &window)?));
                }
                (subject, token)
            }
            // Reports: breakdowns and traffic series (not cached), and the headline numbers.
            3 => {
                let subject = format!("{tenant}-analyst-{}", c % 2);
                let token = bench.signer.token(&subject, Role::Analyst, tenant)?;
                for (from, to) in WINDOWS {
                    let with = |extra| [("from", *from), ("to", *to), extra];
                    requests.push((
                        Class::Uncached,
                        drive::url(base, "/api/v1/breakdown", &with(("dimension", "device")))?,
                    ));
                    requests.push((
                        Class::Uncached,
                        drive::url(base, "/api/v1/traffic", &with(("granularity", "day")))?,
                    ));
                    requests.push((
                        Class::Cached,
                        drive::url(base, "/api/v1/kpi", &[("from", *from), ("to", *to)])?,
                    ));
                }
                (subject, token)
            }
            // Dashboards: headline numbers and top pages (cached).
            _ => {
                let subject = format!("{tenant}-user-{}", (c / TENANTS.len()) % 4);
                let token = bench.signer.token(&subject, Role::Analyst, tenant)?;
                for (from, to) in WINDOWS {
                    let with = |extra| [("from", *from), ("to", *to), extra];
                    requests.push((
                        Class::Cached,
                        drive::url(base, "/api/v1/kpi", &[("from", *from), ("to", *to)])?,
                    ));
                    requests.push((
                        Class::Cached,
                        drive::url(base, "/api/v1/top-pages", &with(("limit", "10")))?,
                    ));
                    requests.push((
                        Class::Cached,
                        drive::url(base, "/api/v1/top-pages", &with(("limit", "20")))?,
                    ));
                }
                (subject, token)
            }
        };
        subjects.insert(subject);
        callers.push(Caller {
            token: token.into(),
            requests: requests.into_iter().map(|(class, url)| (class, url.into())).collect(),
        });
    }
    Ok((callers, subjects.len()))
}

async fn run_with(bench: &Bench, options: &LoadOptions) -> anyhow::Result<()> {
    let machine = Machine::describe(&bench.root, &bench.connection);
    println!("\n## Machine\n\n{}", machine.markdown());
    let policy = bench.root.join("access.toml");
    let (catalog, refused) = bench.catalog("catalog-load", &policy, &|name| {
        CACHED.contains(&name).then_some(CACHE_RULE)
    })?;
    let busy = machine::busy_warning().await;
    let spec = bench.spec("handler-load", &catalog, &policy, Vec::new());
    let handler = bench.start(&spec).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = handler.memory();
    let (callers, subjects) = callers(bench, &handler, options.callers)?;

    // Resident memory every second while the callers run.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (running, pid) = (running.clone(), handler.pid());
        async move {
            let mut samples: Vec<Memory> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                samples.extend(handler::memory(pid));
            }
            samples
        }
    });

    println!(
        "Load: {} callers for {} s against one handler",
        options.callers,
        options.duration.as_secs()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    let began = Instant::now();
    let deadline = began + options.duration;
    let mut workers = tokio::task::JoinSet::new();
    for (index, caller) in callers.into_iter().enumerate() {
        let http = http.clone();
        workers.spawn(async move {
            let (mut cached, mut uncached) = (Tally::default(), Tally::default());
            let mut turn = index;
            while Instant::now() < deadline {
                let (class, url) = &caller.requests[turn % caller.requests.len()];
                turn += 1;
                let start = Instant::now();
                let outcome = drive::get(&http, url, Some(&caller.token)).await;
                let latency = start.elapsed();
                let backoff = match &outcome {
                    Outcome::Answered {
                        status: 429,
                        retry_after,
                        ..
                    } => Some(
                        retry_after
                            .map_or(DEFAULT_BACKOFF, Duration::from_secs)
                            .min(MAX_BACKOFF),
                    ),
                    _ => None,
                };
                match class {
                    Class::Cached => cached.record(outcome, latency),
                    Class::Uncached => uncached.record(outcome, latency),
                }
                if let Some(backoff) = backoff {
                    tokio::time::sleep(backoff).await;
                }
            }
            (cached, uncached)
        });
    }
    let (mut cached, mut uncached) = (Tally::default(), Tally::default());
    while let Some(result) = workers.join_next().await {
        let (c, u) = result?;
        cached.merge(c);
        uncached.merge(u);
    }
    let wall = began.elapsed();
    running.store(false, Ordering::Relaxed);
    let samples = sampler.await?;
    let end = handler.memory();
    let _ = handler.stop(Duration::from_secs(10)).await;

    cached.finish(wall);
    uncached.finish(wall);
    let mut all = Tally::default();
    all.merge(cached.clone());
    all.merge(uncached.clone());
    all.finish(wall);

    let mut report = Report::default();
    let unexpected = |t: &Tally| {
        t.failures
            + t.statuses
                .iter()
                .filter(|(s, _)| !(200..300).contains(*s) && **s != 429)
                .map(|(_, n)| n)
                .sum::<u64>()
    };
    let errors = unexpected(&all);
    let mut setup = format!(
        "## Setup\n\n\
         - {} callers for {:.0} s against one release handler, {subjects} subjects over {} \
           tenants, each caller with one token it reuses, as clients do. Of every eight callers, \
           six are dashboards (kpi and top pages: cached, `[cache] ttl = {}`, `stale = {}`), one \
           runs reports (breakdown and traffic: not cached; and kpi) and one is staff (the \
           cross-tenant tenants overview: not cached), each over {} monthly windows in turn.\n\
         - The access policy as shipped (access.toml, its limits included) and the handler's \
           default settings. A caller answered 429 waits for `Retry-After` (at most {} s; {} ms \
           without one) before its next request.\n\
         - Latencies are of 2xx answers. The local ClickHouse runs one query at a time, so \
           uncached requests queue there.\n",
        options.callers,
        options.duration.as_secs_f64(),
        TENANTS.len(),
        CACHE_RULE.ttl,
        CACHE_RULE.stale.unwrap_or(0),
        WINDOWS.len(),
        MAX_BACKOFF.as_secs(),
        DEFAULT_BACKOFF.as_millis(),
    );
    if let Some(note) = refused {
        setup.push_str(&format!("- {note}\n"));
    }
    if let Some(warning) = busy {
        setup.push_str(&format!("- {warning}\n"));
    }
    report.add(&setup);

    let mut table = Table::new(&[
        "requests",
        "count",
        "per s",
        "2xx",
        "429",
        "other non-2xx or no answer",
        "p50 ms",
        "p99 ms",
        "X-Cache of 2xx",
    ]);
    for (name, tally) in [
        ("all", &all),
        ("cached endpoints", &cached),
        ("uncached endpoints", &uncached),
    ] {
        table.row(vec![
            name.to_owned(),
            tally.requests().to_string(),
            rps(tally.requests() as f64 / wall.as_secs_f64()),
            tally.successes().to_string(),
            tally.statuses.get(&429).copied().unwrap_or(0).to_string(),
            unexpected(tally).to_string(),
            ms(tally.percentile_ms(0.5)),
            ms(tally.percentile_ms(0.99)),
            tally.cache_summary(),
        ]);
    }
    let mut statuses = Table::new(&["status", "answers"]);
    for (status, n) in all.statuses.iter().filter(|(s, _)| (200..300).contains(*s)) {
        statuses.row(vec![status.to_string(), n.to_string()]);
    }
    for (problem, n) in &all.problems {
        statuses.row(vec![problem.clone(), n.to_string()]);
    }
    if all.failures > 0 {
        statuses.row(vec!["no answer".to_owned(), all.failures.to_string()]);
    }
    let rss: Vec<u64> = samples.iter().map(|m| m.rss_kib).collect();
    let mut memory = Table::new(&["resident memory", "MiB"]);
    memory.row(vec![
        "idle, before the load (VmRSS)".to_owned(),
        mib(idle.map(|m| m.rss_kib)),
    ]);
    memory.row(vec![
        format!("during the load, min of {} samples (VmRSS)", rss.len()),
        mib(rss.iter().min().copied()),
    ]);
    memory.row(vec![
        "during the load, max (VmRSS)".to_owned(),
        mib(rss.iter().max().copied()),
    ]);
    memory.row(vec!["at the end (VmRSS)".to_owned(), mib(end.map(|m| m.rss_kib))]);
    memory.row(vec!["peak (VmHWM)".to_owned(), mib(end.map(|m| m.hwm_kib))]);
    let verdict = if errors == 0 {
        "No answers other than 2xx and 429.".to_owned()
    } else {
        let mut kinds: Vec<String> = all
            .problems
            .iter()
            .filter(|(problem, _)| !problem.starts_with("429"))
            .map(|(problem, n)| format!("{problem}: {n}"))
            .collect();
        if let Some(first) = &all.first_failure {
            kinds.push(format!("no answer: {} (first: {first})", all.failures));
        }
        format!("{errors} requests got neither a 2xx nor a 429: {}.", kinds.join("; "))
    };
    report.add(&format!(
        "## Load\n\n{}\n### Answers by status\n\n{}\n### Resident memory\n\n{}\n{verdict}\n\n\
         Load average (1, 5, 15 min) at the end: {}.\n",
        table.render(),
        statuses.render(),
        memory.render(),
        machine::load_average().0
    ));
    let path = machine.write_results(&bench.root, "-load", "chgate bench --load", &report.text)?;
    println!("Written to {}", path.display());
    anyhow::ensure!(errors == 0, "{verdict}");
    Ok(())
}
