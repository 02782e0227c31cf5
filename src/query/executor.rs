//! Running a granted, bound query under the instance's protections: the result cache with
//! single-flight and stale-while-revalidate, the bound on in-flight ClickHouse queries, the
//! circuit breaker, and the request's deadline. The HTTP edge calls [`Executor::execute`] and
//! gets either a cached entry or a live result to stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::bind::BoundParams;
use super::breaker::{Breaker, Open, Pass};
use super::cache::{CacheKey, CachedResult, FOLLOW_ATTEMPTS, Join, Lookup, Outcome, ResultCache};
use super::error::QueryError;
use super::limits::{Admission, Limiter, QuerySlot, Refusal};
use super::runner::{QueryRunner, ResultStream};
use crate::access::{Grant, Who};
use crate::catalog::CachePolicy;
use crate::catalog::format::OutputFormat;

/// How long the half-open probe waits for `SELECT 1`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a background refresh may take beyond the endpoint's own time limit.
const REFRESH_MARGIN: Duration = Duration::from_secs(5);

/// Where a cached answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache, fresh.
    Hit,
    /// From the cache, past its TTL; a refresh is running.
    Stale,
    /// Queried for this request (or for the flight it joined) and stored.
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss => "miss",
        }
    }
}

/// The answer to a query request.
#[derive(Debug)]
pub enum Answer {
    /// A whole result from the cache (or just stored in it).
    Cached {
        entry: Arc<CachedResult>,
        status: CacheStatus,
        policy: CachePolicy,
    },
    /// A result read from ClickHouse: `head` whole, then `rest` if it did not fit.
    Live { head: Vec<Bytes>, rest: Option<LiveRest> },
}

/// The unread part of a live result, holding its ClickHouse query slot until it is dropped.
#[derive(Debug)]
pub struct LiveRest {
    stream: Box<ResultStream>,
    _slot: QuerySlot,
}

impl LiveRest {
    pub async fn next(&mut self) -> Result<Option<Bytes>, QueryError> {
        self.stream.next().await
    }
}

/// Why a query did not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("refused by a limit: {0:?}")]
    Refused(Refusal),
    #[error("circuit open for {:?}", .0.retry_after)]
    CircuitOpen(Open),
}

/// The query side of the handler: runner, limits, breaker, cache.
#[derive(Debug)]
pub struct Executor {
    runner: QueryRunner,
    limiter: Limiter,
    breaker: Breaker,
    cache: ResultCache,
    /// The deployment's catalog and policy, as part of every cache key.
    version: Arc<str>,
    /// The health report's last probe of ClickHouse; locked while probing, so concurrent
    /// reports share one probe.
    health_probe: tokio::sync::Mutex<Option<HealthProbe>>,
}

/// How long the health report reuses a probe's answer: health checks from many places (the
/// platform, APIM, monitors) never add up to more than one `SELECT 1` per this period.
const HEALTH_PROBE_TTL: Duration = Duration::from_secs(10);

/// A health probe's answer, for the logins it was made with.
#[derive(Debug, Clone, Copy)]
struct HealthProbe {
    at: Instant,
    login_generation: u64,
    reachability: Reachability,
}

/// Whether ClickHouse answers, as the health report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Reachable,
    Unreachable,
    /// The circuit breaker has stopped sending queries for now.
    CircuitOpen,
    /// ClickHouse answers but refuses the service's login.
    LoginRejected,
    /// No credentials to log in with yet.
    NoCredentials,
}

/// One request's query: what to run, for whom, and by when.
#[derive(Debug, Clone, Copy)]
pub struct QueryCall<'a> {
    pub grant: &'a Grant<'a>,
    pub params: &'a BoundParams,
    pub format: OutputFormat,
    /// ClickHouse's query id (the request id).
    pub query_id: &'a str,
    /// The request's W3C trace id, for `system.query_log` to join Application Insights.
    pub trace_id: Option<&'a str>,
    pub deadline: Instant,
}

/// A started query's first part.
struct Head {
    chunks: Vec<Bytes>,
    bytes: usize,
    rest: Option<ResultStream>,
}

impl Executor {
    pub fn new(runner: QueryRunner, limiter: Limiter, breaker: Breaker, cache: ResultCache, version: Arc<str>) -> Self {
        Self {
            runner,
            limiter,
            breaker,
            cache,
            version,
            health_probe: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether ClickHouse answers: the open circuit's verdict, or a `SELECT 1` at most every
    /// [`HEALTH_PROBE_TTL`].
    pub async fn reachability(&self) -> Reachability {
        if self.breaker.open_for().is_some() {
            return Reachability::CircuitOpen;
        }
        let mut last = self.health_probe.lock().await;
        // New logins (a rotation) make the last answer moot.
        let login_generation = self.runner.login_generation();
        if let Some(probe) = *last
            && probe.at.elapsed() < HEALTH_PROBE_TTL
            && probe.login_generation == login_generation
        {
            return probe.reachability;
        }
        let mut reachability = self.probe_reachability().await;
        // A refused login on an idle instance after a rotation: what a query would do (read
        // the vault, retry once) so the report says how queries will fare. The vault read is
        // shared and spaced like any rejection's, so health checks cannot drive vault reads.
        if reachability == Reachability::LoginRejected && self.runner.login_rejected(login_generation).await {
            reachability = self.probe_reachability().await;
        }
        let login_generation = self.runner.login_generation();
        *last = Some(HealthProbe {
            at: Instant::now(),
            login_generation,
            reachability,
        });
        reachability
    }

    /// ClickHouse refused logins of `generation`: whether newer ones are now in place.
    pub async fn login_rejected(&self, generation: u64) -> bool {
        self.runner.login_rejected(generation).await
    }

    /// Whether the circuit breaker is refusing queries now.
    pub fn circuit_open(&self) -> bool {
        self.breaker.open_for().is_some()
    }

    /// The ClickHouse client of the service's login.
    pub fn service_client(&self) -> Result<clickhouse::Client, QueryError> {
        self.runner.service_client()
    }

    /// The ClickHouse client of a role's login, for the ingest writer.
    pub fn client_for(&self, role: &crate::access::policy::Role) -> Result<(clickhouse::Client, u64), QueryError> {
        self.runner.client_for(role)
    }

    /// Admits a request under its caller's and tenant's limits.
    pub fn admit(&self, who: &Who<'_>) -> Result<Admission, Refusal> {
        self.limiter.admit(who)
    }

    /// Answers from the cache when the endpoint caches, else runs the query and reads up to
    /// `head_bytes` of its result. The caller bounds the whole call by `deadline` too.
    pub async fn execute(&self, call: QueryCall<'_>, head_bytes: usize) -> Result<Answer, ExecError> {
        let Some(policy) = call.grant.endpoint().cache() else {
            return self.live(call, head_bytes).await;
        };
        let key = Arc::new(CacheKey::new(&self.version, call.grant, call.params, call.format));
        let cached = |entry, status| Answer::Cached { entry, status, policy };
        let mut failed_flights = 0;
        loop {
            match self.cache.lookup(&key) {
                Lookup::Fresh(entry) => return Ok(cached(entry, CacheStatus::Hit)),
                Lookup::Stale(entry) => {
                    self.refresh(&key, call, policy);
                    return Ok(cached(entry, CacheStatus::Stale));
                }
                Lookup::Miss => {}
            }
            if failed_flights >= FOLLOW_ATTEMPTS || self.cache.is_too_large(&key) {
                // Flights keep failing, or the result is too big to share: this caller's own
                // query gives it its own answer.
                return self.live(call, head_bytes).await;
            }
            let lead = match self.cache.join(&key) {
                // The entry may have been stored between the lookup and the join.
                Join::Lead(lead) => match self.cache.lookup(&key) {
                    Lookup::Fresh(entry) => {
                        lead.finish(Outcome::Stored(Arc::clone(&entry)));
                        return Ok(cached(entry, CacheStatus::Hit));
                    }
                    _ => lead,
                },
                Join::Follow(wait) => match wait.outcome().await {
                    Outcome::Stored(entry) => return Ok(cached(entry, CacheStatus::Miss)),
                    Outcome::TooLarge => {
                        return self.live(call, head_bytes).await;
                    }
                    Outcome::Failed => {
                        failed_flights += 1;
                        continue;
                    }
                },
            };
            // Leading: read up to the entry limit; a result that ends within it is stored.
            let limit = self.cache.max_entry_bytes().max(head_bytes);
            let (head, slot) = match self.start(call, limit).await {
                Ok(started) => started,
                Err(error) => {
                    lead.finish(Outcome::Failed);
                    return Err(error);
                }
            };
            return Ok(match head.rest {
                None if head.bytes <= self.cache.max_entry_bytes() => {
                    let entry = self
                        .cache
                        .store(key, concat(head.chunks, head.bytes), policy.ttl, policy.stale);
                    lead.finish(Outcome::Stored(Arc::clone(&entry)));
                    cached(entry, CacheStatus::Miss)
                }
                rest => {
                    self.cache.mark_too_large(Arc::clone(&key), policy.ttl);
                    lead.finish(Outcome::TooLarge);
                    Answer::Live {
                        head: head.chunks,
                        rest: rest.map(|stream| LiveRest {
                            stream: Box::new(stream),
                            _slot: slot,
                        }),
                    }
                }
            });
        }
    }

    /// Runs the query for this request alone.
    async fn live(&self, call: QueryCall<'_>, head_bytes: usize) -> Result<Answer, ExecError> {
        let (head, slot) = self.start(call, head_bytes).await?;
        Ok(Answer::Live {
            head: head.chunks,
            rest: head.rest.map(|stream| LiveRest {
                stream: Box::new(stream),
                _slot: slot,
            }),
        })
    }

    /// Takes a query slot and a breaker pass, sends the query and reads up to `limit` bytes.
    async fn start(&self, call: QueryCall<'_>, limit: usize) -> Result<(Head, QuerySlot), ExecError> {
        // An open circuit refuses before the request queues for a slot.
        if let Some(open) = self.breaker.open_for() {
            return Err(ExecError::CircuitOpen(open));
        }
        let slot = self
            .limiter
            .query_slot(call.deadline)
            .await
            .map_err(ExecError::Refused)?;
        let mut pass = self.breaker.pass().map_err(ExecError::CircuitOpen)?;
        if pass.is_probe() {
            pass = self.probe(pass).await?;
        }
        let mut retried = false;
        loop {
            let budget = call.deadline.saturating_duration_since(Instant::now());
            let stream = match self.runner.start(call, budget) {
                Ok(stream) => stream,
                Err(error) => {
                    report(pass, &error);
                    return Err(error.into());
                }
            };
            let generation = stream.login_generation;
            match read_head(stream, limit, Some(pass)).await {
                // A rotated password: ClickHouse has the new one and the vault had it first,
                // so one retry with what the vault holds now succeeds. Nothing of the result
                // has been read (ClickHouse checks the login before running anything).
                Err(ExecError::Query(error))
                    if !retried && error.is_login_rejected() && self.runner.login_rejected(generation).await =>
                {
                    tracing::info!(query.id = %call.query_id, "ClickHouse rejected the login; retrying once with the credentials just read");
                    retried = true;
                    pass = self.breaker.pass().map_err(ExecError::CircuitOpen)?;
                    if pass.is_probe() {
                        pass = self.probe(pass).await?;
                    }
                }
                result => return result.map(|head| (head, slot)),
            }
        }
    }

    /// The half-open probe: `SELECT 1` within [`PROBE_TIMEOUT`]. Its answer closes the circuit
    /// (and the caller's query goes on with an ordinary pass); no answer opens it again.
    async fn probe(&self, probe: Pass) -> Result<Pass, ExecError> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.runner.ping()).await {
            Ok(Ok(())) => {
                probe.succeeded();
                self.breaker.pass().map_err(ExecError::CircuitOpen)
            }
            Ok(Err(QueryError::Exception { .. })) => {
                // An exception is an answer: the server is up.
                probe.succeeded();
                self.breaker.pass().map_err(ExecError::CircuitOpen)
            }
            Ok(Err(error)) => {
                probe.failed();
                Err(error.into())
            }
            Err(_) => {
                probe.failed();
                Err(QueryError::Unavailable("no answer to the probe".into()).into())
            }
        }
    }

    async fn probe_reachability(&self) -> Reachability {
        match tokio::time::timeout(PROBE_TIMEOUT, self.runner.ping()).await {
            Ok(Ok(())) => Reachability::Reachable,
            Ok(Err(QueryError::NoCredentials)) => Reachability::NoCredentials,
            Ok(Err(error)) if error.is_login_rejected() => Reachability::LoginRejected,
            Ok(Err(QueryError::Exception { .. })) => Reachability::Reachable,
            Ok(Err(_)) | Err(_) => Reachability::Unreachable,
        }
    }

    /// Refreshes a stale entry in the background, unless a flight for it is running, fewer
    /// than a quarter of the query slots are free, or the circuit is not closed: then the
    /// stale entry keeps serving until its window ends. A refresh gets the endpoint's time
    /// limit and a margin, and no more.
    fn refresh(&self, key: &Arc<CacheKey>, call: QueryCall<'_>, policy: CachePolicy) {
        let grant = call.grant;
        let Some(lead) = self.cache.try_lead(key) else {
            return;
        };
        let Some(slot) = self.limiter.spare_query_slot() else {
            return;
        };
        let Some(pass) = self.breaker.pass_if_closed() else {
            return;
        };
        let time_limit = grant.endpoint().limits().max_execution_time + REFRESH_MARGIN;
        let query_id = uuid::Uuid::new_v4().to_string();
        // The endpoint's and role's own time limits bound a refresh; no caller waits for it.
        // Its own query id: the caller's request has long been answered.
        let stream = match self.runner.start(
            QueryCall {
                query_id: &query_id,
                ..call
            },
            Duration::MAX,
        ) {
            Ok(stream) => stream,
            Err(error) => {
                report(pass, &error);
                return;
            }
        };
        let cache = self.cache.clone();
        let key = Arc::clone(key);
        let endpoint = grant.endpoint().name().to_owned();
        tokio::spawn(async move {
            let _slot = slot;
            let read = tokio::time::timeout(time_limit, read_head(stream, cache.max_entry_bytes(), Some(pass)));
            let outcome = match read.await.unwrap_or_else(|_| {
                Err(QueryError::Unavailable("no answer within the endpoint's time limit".into()).into())
            }) {
                Ok(head) if head.rest.is_none() => {
                    Outcome::Stored(cache.store(key, concat(head.chunks, head.bytes), policy.ttl, policy.stale))
                }
                Ok(head) => {
                    if let Some(mut rest) = head.rest {
                        rest.abandon("too_large");
                    }
                    Outcome::TooLarge
                }
                Err(error) => {
                    tracing::warn!(endpoint.name = %endpoint, query.id = %query_id, error = %error, "cache refresh failed; the stale entry keeps serving");
                    Outcome::Failed
                }
            };
            lead.finish(outcome);
        });
    }
}

/// Reads a result until it ends or `limit` bytes are held, reporting to the breaker once
/// ClickHouse has answered.
async fn read_head(mut stream: ResultStream, limit: usize, mut pass: Option<Pass>) -> Result<Head, ExecError> {
    let mut chunks = Vec::new();
    let mut bytes = 0usize;
    loop {
        if bytes >= limit {
            return Ok(Head {
                chunks,
                bytes,
                rest: Some(stream),
            });
        }
        match stream.next().await {
            Ok(Some(chunk)) => {
                if let Some(pass) = pass.take() {
                    pass.succeeded();
                }
                bytes += chunk.len();
                chunks.push(chunk);
            }
            Ok(None) => {
                if let Some(pass) = pass.take() {
                    pass.succeeded();
                }
                return Ok(Head {
                    chunks,
                    bytes,
                    rest: None,
                });
            }
            Err(error) => {
                if let Some(pass) = pass.take() {
                    report(pass, &error);
                }
                return Err(error.into());
            }
        }
    }
}

/// Tells the breaker whether a failure means ClickHouse is unreachable.
fn report(pass: Pass, error: &QueryError) {
    match error {
        QueryError::Unavailable(_) => pass.failed(),
        // ClickHouse answered: it is up.
        QueryError::Exception { .. } | QueryError::Other(_) => pass.succeeded(),
        // Nothing was sent: the pass says nothing about ClickHouse.
        QueryError::NoCredentials => drop(pass),
    }
}

fn concat(chunks: Vec<Bytes>, bytes: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut body = BytesMut::with_capacity(bytes);
    for chunk in chunks {
        body.extend_from_slice(&chunk);
    }
    body.freeze()
}
