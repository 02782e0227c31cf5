//! Requests and their tallies: concurrent loops of one request for a while, every latency kept,
//! answers counted by status and by `X-Cache`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::dev_issuer::{self, DevKey};

/// What one request came to.
pub(super) enum Outcome {
    /// An HTTP answer, its body read whole (a direct ClickHouse query that succeeds is a 200).
    Answered {
        status: u16,
        /// The `X-Cache` header, if any.
        cache: Option<String>,
        /// `Retry-After`, in seconds, if any.
        retry_after: Option<u64>,
        /// For an answer other than 2xx: the problem's `code`, or the start of the body.
        problem: Option<String>,
    },
    /// No answer: refused or reset connection, a body cut short, a ClickHouse error.
    Failed(String),
}

impl Outcome {
    pub(super) fn ok() -> Self {
        Self::Answered {
            status: 200,
            cache: None,
            retry_after: None,
            problem: None,
        }
    }
}

/// Everything a set of requests came to.
#[derive(Clone, Default)]
pub(super) struct Tally {
    /// Latencies of 2xx answers, in ms (sorted once the run is over).
    latencies_ms: Vec<f64>,
    /// Answers by status.
    pub(super) statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, and the first reason.
    pub(super) failures: u64,
    pub(super) first_failure: Option<String>,
    /// 2xx answers by `X-Cache` ("none" without the header).
    pub(super) cache: BTreeMap<String, u64>,
    /// Other answers by status and problem code: "503 clickhouse_unavailable".
    pub(super) problems: BTreeMap<String, u64>,
    pub(super) wall: Duration,
}

impl Tally {
    pub(super) fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Answered {
                status, cache, problem, ..
            } => {
                *self.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    self.latencies_ms.push(latency.as_secs_f64() * 1000.0);
                    *self
                        .cache
                        .entry(cache.unwrap_or_else(|| "none".to_owned()))
                        .or_default() += 1;
                } else {
                    let key = format!("{status} {}", problem.unwrap_or_default());
                    *self.problems.entry(key.trim_end().to_owned()).or_default() += 1;
                }
            }
            Outcome::Failed(reason) => {
                self.failures += 1;
                self.first_failure.get_or_insert(reason);
            }
        }
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.latencies_ms.extend(other.latencies_ms);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (value, n) in other.cache {
            *self.cache.entry(value).or_default() += n;
        }
        for (problem, n) in other.problems {
            *self.problems.entry(problem).or_default() += n;
        }
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    /// Sorts the latencies and sets the wall time the requests took.
    pub(super) fn finish(&mut self, wall: Duration) {
        self.latencies_ms.sort_by(f64::total_cmp);
        self.wall = wall;
    }

    pub(super) fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.failures
    }

    pub(super) fn successes(&self) -> u64 {
        self.latencies_ms.len() as u64
    }

    /// Requests that got no 2xx answer.
    pub(super) fn unsuccessful(&self) -> u64 {
        self.requests() - self.successes()
    }

    /// 2xx answers whose `X-Cache` was not `hit`.
    pub(super) fn not_hit(&self) -> u64 {
        self.successes() - self.cache.get("hit").copied().unwrap_or(0)
    }

    /// The latency at quantile `q` of the 2xx answers, in ms (NaN without any).
    pub(super) fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_ms.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ms[index.min(self.latencies_ms.len() - 1)]
    }

    /// 2xx answers per second of wall time.
    pub(super) fn rps(&self) -> f64 {
        self.successes() as f64 / self.wall.as_secs_f64()
    }

    /// `X-Cache` values seen, as "hit 120, miss 1".
    pub(super) fn cache_summary(&self) -> String {
        let parts: Vec<String> = self.cache.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Answers by status, as "200: 120, 429 rate_limited: 3".
    pub(super) fn status_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(s, n)| format!("{s}: {n}"))
            .chain(self.problems.iter().map(|(p, n)| format!("{p}: {n}")))
            .collect();
        if self.failures > 0 {
            parts.push(format!("no answer: {}", self.failures));
        }
        parts.join(", ")
    }
}

/// Runs `concurrency` loops of `request` for `duration`. `request(worker, sequence)` does its
/// preparation (such as signing a token) before it returns the future; only the future is timed.
pub(super) async fn drive<F, Fut>(concurrency: usize, duration: Duration, request: F) -> anyhow::Result<Tally>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let [total] = drive_kinds(concurrency, duration, move |worker, sequence| {
        (0, request(worker, sequence))
    })
    .await?;
    Ok(total)
}

/// Runs `concurrency` loops for `duration` in which every request is of one of `K` kinds:
/// `request(worker, sequence)` says which (an index below `K`) and returns the future, which
/// alone is timed. Each kind gets its own tally, all over the same window (the same wall time),
/// so kinds that share the loops see the same load.
pub(super) async fn drive_kinds<const K: usize, F, Fut>(
    concurrency: usize,
    duration: Duration,
    request: F,
) -> anyhow::Result<[Tally; K]>
where
    F: Fn(usize, u64) -> (usize, Fut) + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let began = Instant::now();
    let deadline = began + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let request = request.clone();
        workers.spawn(async move {
            let mut tallies: [Tally; K] = std::array::from_fn(|_| Tally::default());
            let mut sequence = 0;
            while Instant::now() < deadline {
                let (kind, pending) = request(worker, sequence);
                let start = Instant::now();
                let outcome = pending.await;
                tallies[kind].record(outcome, start.elapsed());
                sequence += 1;
            }
            tallies
        });
    }
    let mut totals: [Tally; K] = std::array::from_fn(|_| Tally::default());
    while let Some(tallies) = workers.join_next().await {
        for (total, tally) in totals.iter_mut().zip(tallies.context("a request loop panicked")?) {
            total.merge(tally);
        }
    }
    let wall = began.elapsed();
    for total in &mut totals {
        total.finish(wall);
    }
    Ok(totals)
}

/// Which of two kinds a worker's request `sequence` is, so that the worker's requests interleave
/// both kinds evenly and in no fixed pattern: each pair of requests (0 and 1, 2 and 3, …) holds
/// one of each kind, in an order drawn from `seed`, the worker and the pair (the same every run).
pub(super) fn interleaved(seed: u64, worker: usize, sequence: u64) -> usize {
    let flip = splitmix64(seed ^ splitmix64((worker as u64) << 32 ^ (sequence / 2))) & 1;
    ((sequence % 2) ^ flip) as usize
}

/// SplitMix64's output function: a well-mixed 64-bit value from any 64-bit input.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A GET, its body read whole.
pub(super) async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> Outcome {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::Failed(format!("{url}: {error}")),
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cache = header("x-cache");
    let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
    match response.bytes().await {
        Ok(body) => Outcome::Answered {
            status,
            cache,
            retry_after,
            problem: (!(200..300).contains(&status)).then(|| problem_code(&body)),
        },
        Err(error) => Outcome::Failed(format!("{url}: reading the body: {error}")),
    }
}

/// A problem+json body's `code`, or the start of any other body.
fn problem_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(80)]);
            format!("{:?}", text.trim())
        })
}

/// A GET that must answer `expected`; the error says what came instead.
pub(super) async fn get_expecting(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    expected: u16,
) -> anyhow::Result<Option<String>> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await?;
    anyhow::ensure!(
        status == expected,
        "GET {url}: {status} (expected {expected}): {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    Ok(cache)
}

/// A URL with its query string.
pub(super) fn url(base: &str, path: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
    let url = reqwest::Url::parse_with_params(&format!("{base}{path}"), params)?;
    Ok(url.to_string())
}

/// The endpoint's SQL straight to ClickHouse with the parameters and the settings the handler
/// sends (`settings`), its result read whole, in the same format (JSON).
pub(super) async fn direct(
    client: &clickhouse::Client,
    sql: &str,
    settings: &[(String, String)],
    tenant: &str,
    params: &[(&str, &str)],
) -> Outcome {
    let attempt = async {
        let mut query = client
            .query_raw(sql)
            .with_setting("query_id", uuid::Uuid::new_v4().to_string())
            .param("caller_tenant", tenant);
        for (name, value) in settings {
            query = query.with_setting(name.clone(), value.clone());
        }
        for (name, value) in params {
            query = query.param(name, value);
        }
        let mut cursor = query.fetch_bytes("JSON")?;
        let mut bytes = 0;
        while let Some(chunk) = cursor.next().await? {
            bytes += chunk.len();
        }
        anyhow::ensure!(bytes > 0, "empty result");
        anyhow::Ok(())
    };
    match attempt.await {
        Ok(()) => Outcome::ok(),
        Err(error) => Outcome::Failed(format!("{error:#}")),
    }
}

/// Signs callers' tokens with the development issuer's key, as that issuer would.
pub(super) struct Signer {
    key: DevKey,
    issuer: String,
}

/// Who a token speaks for.
#[derive(Clone, Copy)]
pub(super) enum Role {
    Analyst,
    Internal,
}

impl Signer {
    /// The key the development issuer serves (`.local/dev-issuer/`), for tokens from `issuer`.
    pub(super) fn load(root: &Path, issuer: &str) -> anyhow::Result<Self> {
        Ok(Self {
            key: DevKey::load_or_create(&root.join(".local/dev-issuer"))?,
            issuer: issuer.to_owned(),
        })
    }

    /// A new token (its own `jti`) for `subject` in `tenant`, granting `role` as access.toml
    /// does (`roles` claim).
    /// A token of the `collector` role (access.toml grants it for `Events.Write`).
    pub(super) fn collector_token(&self, subject: &str, tenant: &str) -> anyhow::Result<String> {
        self.key.sign(&dev_issuer::claims(
            &self.issuer,
            subject,
            json!({"roles": ["Events.Write"], "tid": tenant}),
        ))
    }

    pub(super) fn token(&self, subject: &str, role: Role, tenant: &str) -> anyhow::Result<String> {
        let app_role = match role {
            Role::Analyst => "Analytics.Read",
            Role::Internal => "Analytics.Internal",
        };
        self.key.sign(&dev_issuer::claims(
            &self.issuer,
            subject,
            json!({"roles": [app_role], "tid": tenant}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, cache: Option<&str>) -> Outcome {
        Outcome::Answered {
            status,
            cache: cache.map(str::to_owned),
            retry_after: None,
            problem: (status >= 300).then(|| "rate_limited".to_owned()),
        }
    }

    #[test]
    fn tallies_statuses_cache_and_percentiles() {
        let mut tally = Tally::default();
        for ms in 1..=100 {
            tally.record(answered(200, Some("hit")), Duration::from_millis(ms));
        }
        tally.record(answered(200, Some("miss")), Duration::from_millis(500));
        tally.record(answered(429, None), Duration::from_millis(1));
        tally.record(Outcome::Failed("reset".into()), Duration::from_millis(1));
        tally.finish(Duration::from_secs(1));
        assert_eq!(tally.requests(), 103);
        assert_eq!(tally.successes(), 101);
        assert_eq!(tally.unsuccessful(), 2);
        assert_eq!(tally.not_hit(), 1);
        assert_eq!(tally.percentile_ms(0.5), 51.0);
        assert_eq!(tally.percentile_ms(1.0), 500.0);
        assert_eq!(tally.status_summary(), "200: 101, 429 rate_limited: 1, no answer: 1");
        assert_eq!(tally.cache_summary(), "hit 100, miss 1");
    }

    #[test]
    fn interleaves_two_kinds_evenly_and_in_no_fixed_order() {
        for worker in 0..8 {
            let kinds: Vec<usize> = (0..1000).map(|s| interleaved(7, worker, s)).collect();
            for pair in kinds.chunks(2) {
                assert_eq!(pair.iter().sum::<usize>(), 1, "each pair holds one of each kind");
            }
            let direct_first = kinds.chunks(2).filter(|pair| pair[0] == 0).count();
            assert!(
                (200..300).contains(&direct_first),
                "{direct_first} of 500 pairs start with kind 0"
            );
            assert_eq!(kinds, (0..1000).map(|s| interleaved(7, worker, s)).collect::<Vec<_>>());
        }
        let first: Vec<usize> = (0..64).map(|s| interleaved(7, 0, s)).collect();
        let second: Vec<usize> = (0..64).map(|s| interleaved(7, 1, s)).collect();
        assert_ne!(first, second, "workers have their own orders");
    }

    #[tokio::test]
    async fn tallies_each_kind_over_one_window() {
        let [even, odd] = drive_kinds(2, Duration::from_millis(50), |_, sequence| {
            let kind = (sequence % 2) as usize;
            (kind, async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Outcome::ok()
            })
        })
        .await
        .expect("no loop panics");
        assert!(even.successes() > 0 && odd.successes() > 0);
        assert!(even.successes().abs_diff(odd.successes()) <= 2);
        assert_eq!(even.wall, odd.wall);
    }

    #[test]
    fn reads_problem_codes() {
        assert_eq!(
            problem_code(br#"{"type":"about:blank","code":"rate_limited"}"#),
            "rate_limited"
        );
        assert_eq!(problem_code(b"Bad Gateway\n"), "\"Bad Gateway\"");
    }

    #[test]
    fn an_empty_tally_has_no_percentiles() {
        assert!(Tally::default().percentile_ms(0.5).is_nan());
    }
}
