//! Cold start: from spawning the release handler to its first `GET /` 200 (what the Functions
//! host waits for) and to its first successful endpoint answer (which also needs the issuer's
//! keys and a ClickHouse connection).

use std::time::{Duration, Instant};

use super::Bench;
use super::drive::{self, Role};
use super::handler::{Handler, Spec};
use super::table::{Table, Target, marked, ms};
use super::throughput::CASES;

const READY: Target = Target::AtMost(50.0);

pub(super) async fn cold_start(bench: &Bench, spec: &Spec, starts: usize) -> anyhow::Result<String> {
    let case = &CASES[0];
    let token = bench.signer.token("bench", Role::Analyst, case.tenant)?;
    let (mut ready_ms, mut answer_ms, mut attempts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..starts {
        let began = Instant::now();
        let mut handler = Handler::spawn(&bench.root, &bench.work, spec, &bench.connection)?;
        let outcome = async {
            handler
                .wait_ready(Duration::from_millis(1), Duration::from_secs(20))
                .await?;
            let ready = began.elapsed();
            let http = reqwest::Client::new();
            let url = case.url(&handler)?;
            let mut tries = 0;
            loop {
                tries += 1;
                let outcome = drive::get(&http, &url, Some(&token)).await;
                if matches!(outcome, drive::Outcome::Answered { status: 200, .. }) {
                    break;
                }
                anyhow::ensure!(
                    began.elapsed() < Duration::from_secs(20),
                    "no successful answer from {url} within 20 s of the start"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok((ready, began.elapsed(), tries))
        }
        .await;
        let tail = handler.log_tail();
        let _ = handler.stop(Duration::from_secs(10)).await;
        let (ready, answered, tries) = outcome.map_err(|e| e.context(tail))?;
        ready_ms.push(ready.as_secs_f64() * 1000.0);
        answer_ms.push(answered.as_secs_f64() * 1000.0);
        attempts.push(tries);
    }
    let mut table = Table::new(&["from spawn to", "median ms", "min ms", "max ms", "target"]);
    for (label, samples, target) in [
        ("first `GET /` 200 (ready)", &mut ready_ms, Some(READY)),
        (&*format!("first 200 from {}", case.route), &mut answer_ms, None),
    ] {
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        table.row(vec![
            label.to_owned(),
            ms(median),
            ms(samples[0]),
            ms(samples[samples.len() - 1]),
            target.map_or_else(String::new, |t| marked(t.label(), median, t)),
        ]);
    }
    let retried = attempts.iter().filter(|&&n| n > 1).count();
    Ok(format!(
        "## Cold start\n\n{starts} starts of the release handler (catalog as shipped), `GET /` \
         polled every 1 ms from the spawn; then the endpoint requested (again every 1 ms until \
         a 200) with a token it has not seen. The median is the upper middle value. {retried} \
         of the {starts} first endpoint requests needed more than one try.\n\n{}",
        table.render()
    ))
}
