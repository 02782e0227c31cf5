//! Instructions per request: the release handler under valgrind's callgrind, counting every
//! instruction it runs (all threads). Three runs do the same start, warm-up and shutdown; two
//! of them also answer a fixed set of cache hits. The differences in total instructions,
//! divided by the requests, are what a request costs, free of timing noise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Bench;
use super::drive::{self, Role, Tally};
use super::handler::{Handler, Spec};
use super::table::Table;
use super::throughput::Case;

/// Requests per kind in the measured runs.
const REQUESTS: u64 = 500;

/// Where valgrind is, if on PATH.
pub(super) fn valgrind() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("valgrind"))
        .find(|candidate| candidate.is_file())
}

/// One run: how many hits with the same token and with new tokens it sends after the warm-up.
struct RunPlan {
    name: &'static str,
    same_token: u64,
    new_tokens: u64,
}

const RUNS: [RunPlan; 3] = [
    RunPlan {
        name: "baseline",
        same_token: 0,
        new_tokens: 0,
    },
    RunPlan {
        name: "same-token",
        same_token: REQUESTS,
        new_tokens: 0,
    },
    RunPlan {
        name: "mixed",
        same_token: REQUESTS,
        new_tokens: REQUESTS,
    },
];

pub(super) async fn instructions(bench: &Bench, hit: &Spec, case: &Case) -> anyhow::Result<String> {
    let Some(valgrind) = valgrind() else {
        println!("valgrind is not on PATH: no instruction counts");
        return Ok("## Instructions per request\n\nvalgrind is not on PATH; not measured.\n".to_owned());
    };
    println!("Instruction counts under callgrind (three runs)");
    let began = Instant::now();
    let dir = bench.work.join("callgrind");
    std::fs::create_dir_all(&dir)?;
    let mut totals = Vec::new();
    let mut tallies = Vec::new();
    for plan in &RUNS {
        let out = dir.join(format!("{}.out", plan.name));
        let _ = std::fs::remove_file(&out);
        let spec = Spec {
            name: format!("callgrind-{}", plan.name),
            wrapper: vec![
                valgrind.display().to_string(),
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}", out.display()),
            ],
            ..hit.clone()
        };
        let (total, tally) = one_run(bench, &spec, case, plan, &out)
            .await
            .with_context(|| format!("the {} run under callgrind", plan.name))?;
        println!("  {}: {total} instructions", plan.name);
        totals.push(total);
        tallies.push(tally);
    }
    let per = |from: usize, to: usize, requests: u64| (totals[to] as f64 - totals[from] as f64) / requests as f64;
    let mut table = Table::new(&["requests", "instructions per request"]);
    table.row(vec![
        format!("{REQUESTS} cache hits, same token"),
        format!("{:.0}", per(0, 1, REQUESTS)),
    ]);
    table.row(vec![
        format!("{REQUESTS} cache hits, a new token each"),
        format!("{:.0}", per(1, 2, REQUESTS)),
    ]);
    table.row(vec![
        format!("the mix of {}", 2 * REQUESTS),
        format!("{:.0}", per(0, 2, 2 * REQUESTS)),
    ]);
    let mut runs = Table::new(&["run", "total instructions (Ir)", "answers", "X-Cache"]);
    for ((plan, total), tally) in RUNS.iter().zip(&totals).zip(&tallies) {
        runs.row(vec![
            plan.name.to_owned(),
            total.to_string(),
            tally.status_summary(),
            tally.cache_summary(),
        ]);
    }
    Ok(format!(
        "## Instructions per request\n\nThe release handler under `valgrind --tool=callgrind`, \
         serving the cached catalog, client requests one at a time on one keep-alive \
         connection to {}. Each run starts the handler, waits for `GET /` (polled every 50 ms), \
         warms it (two requests with one token, one with a new token), sends its requests and \
         stops it with SIGTERM; the baseline sends none. Instructions per request are the \
         differences of the runs' totals (the `totals:` line of callgrind's output) divided by \
         the requests. The runs took {:.0} s.\n\n{}\n{}",
        case.route,
        began.elapsed().as_secs_f64(),
        table.render(),
        runs.render()
    ))
}

async fn one_run(bench: &Bench, spec: &Spec, case: &Case, plan: &RunPlan, out: &Path) -> anyhow::Result<(u64, Tally)> {
    let mut handler = Handler::spawn(&bench.root, &bench.work, spec, &bench.connection)?;
    let outcome = async {
        handler
            .wait_ready(Duration::from_millis(50), Duration::from_secs(180))
            .await?;
        let http = reqwest::Client::new();
        let url = case.url(&handler)?;
        let token = bench.signer.token("bench", Role::Analyst, case.tenant)?;
        drive::get_expecting(&http, &url, Some(&token), 200).await?;
        drive::get_expecting(&http, &url, Some(&token), 200).await?;
        let other = bench.signer.token("bench", Role::Analyst, case.tenant)?;
        drive::get_expecting(&http, &url, Some(&other), 200).await?;
        let mut tally = Tally::default();
        let began = Instant::now();
        for _ in 0..plan.same_token {
            let start = Instant::now();
            tally.record(drive::get(&http, &url, Some(&token)).await, start.elapsed());
        }
        for _ in 0..plan.new_tokens {
            let new = bench.signer.token("bench", Role::Analyst, case.tenant)?;
            let start = Instant::now();
            tally.record(drive::get(&http, &url, Some(&new)).await, start.elapsed());
        }
        tally.finish(began.elapsed());
        // The client goes first, so no idle connection holds up the handler's shutdown.
        drop(http);
        anyhow::Ok(tally)
    }
    .await;
    let tail = handler.log_tail();
    let stopped = handler.stop(Duration::from_secs(120)).await;
    let tally = outcome.map_err(|e| e.context(tail.clone()))?;
    let status = stopped?;
    anyhow::ensure!(
        status.success(),
        "the handler under callgrind exited with {status}:\n{tail}"
    );
    let text = std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    Ok((total_instructions(&text).context("no totals: or summary: line")?, tally))
}

/// The total of the first event (Ir) from a callgrind output file.
fn total_instructions(text: &str) -> Option<u64> {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    line("totals:").or_else(|| line("summary:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_line() {
        let text = "version: 1\nevents: Ir\nsummary: 53474302\nfn=(1) main\n1 5\ntotals: 53474503\n";
        assert_eq!(total_instructions(text), Some(53_474_503));
        assert_eq!(total_instructions("events: Ir\nsummary: 12 3\n"), Some(12));
        assert_eq!(total_instructions("events: Ir\n"), None);
    }
}
