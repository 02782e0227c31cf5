//! The query runner: one `clickhouse::Client` per login, one request per query, with the
//! endpoint's limits as ClickHouse settings and the values as server-side parameters. The
//! clients are rebuilt whenever the secret store's logins change (a rotated password).

use bytes::{Bytes, BytesMut};
use clickhouse::Client;
use clickhouse::query::BytesCursor;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::json;

use super::error::QueryError;
use super::executor::QueryCall;
use crate::access::AccessPolicy;
use crate::access::caller::subject_hash;
use crate::secrets::{Logins, SecretStore};
use crate::settings::ClickHouseSettings;
use crate::telemetry::metrics;
use tracing::field::Empty;

/// Runs endpoint queries on ClickHouse.
pub struct QueryRunner {
    url: String,
    /// host:port of the URL, for the dependency's target.
    host: String,
    database: String,
    secrets: Arc<SecretStore>,
    /// The clients of the store's current logins (rebuilt when they change).
    clients: RwLock<Option<Arc<Clients>>>,
    /// The custom setting that carries the tenant for a ClickHouse row policy, if configured.
    tenant_setting: Option<String>,
}

/// One client per login, built from one generation of the logins.
struct Clients {
    generation: u64,
    service: Client,
    /// Clients of roles that have a ClickHouse user of their own, so ClickHouse's grants apply.
    roles: HashMap<String, Client>,
}

impl std::fmt::Debug for QueryRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRunner").finish_non_exhaustive()
    }
}

/// A running query's result, as ClickHouse streams it.
pub struct ResultStream {
    /// The generation of the logins the query was sent with.
    pub login_generation: u64,
    cursor: BytesCursor,
    /// The query's dependency span, ended when the stream is dropped.
    span: tracing::Span,
    endpoint: String,
    sent: std::time::Instant,
    /// How the query ended, once it has.
    outcome: Option<&'static str>,
    /// The last bytes read, held back until the next chunk or the end: an exception written
    /// after rows (the server's `__exception__` trailer) must never reach the caller as data.
    tail: BytesMut,
    done: bool,
}

/// How many bytes of the result are held back (an exception message is well under this).
const HELD_TAIL_BYTES: usize = 64 * 1024;

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream").finish_non_exhaustive()
    }
}

impl ResultStream {
    fn new(cursor: BytesCursor, login_generation: u64, span: tracing::Span, endpoint: &str) -> Self {
        Self {
            login_generation,
            cursor,
            span,
            endpoint: endpoint.to_owned(),
            sent: std::time::Instant::now(),
            outcome: None,
            tail: BytesMut::new(),
            done: false,
        }
    }

    /// The next piece of the result; `None` at its end. An exception ClickHouse raises after
    /// sending part of the result arrives here as an error, never as a clean end: the crate
    /// detects it when the trailer arrives in one piece, and the held-back tail catches it
    /// when the trailer is split across pieces.
    pub async fn next(&mut self) -> Result<Option<Bytes>, QueryError> {
        let next = self.read().await;
        match &next {
            Ok(Some(_)) => {}
            Ok(None) => self.ended("ok", None),
            Err(error) => self.ended("error", Some(error)),
        }
        next
    }

    /// The rest of the result will not be read, for a reason other than the caller leaving
    /// (`too_large`: a refresh whose result cannot be cached).
    pub fn abandon(&mut self, reason: &'static str) {
        if self.outcome.is_none() {
            self.span.record("error.type", reason);
            self.ended(reason, None);
        }
    }

    fn ended(&mut self, outcome: &'static str, error: Option<&QueryError>) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(outcome);
        if let Some(summary) = self.cursor.summary() {
            if let Some(rows) = summary.read_rows() {
                self.span.record("clickhouse.read_rows", rows);
            }
            if let Some(bytes) = summary.read_bytes() {
                self.span.record("clickhouse.read_bytes", bytes);
            }
            if let Some(rows) = summary.result_rows() {
                self.span.record("db.response.returned_rows", rows);
            }
        }
        match error {
            None => self.span.record("otel.status_code", "ok"),
            Some(error) => {
                self.span.record("error.type", error.kind());
                self.span.record("otel.status_code", "error")
            }
        };
        metrics::query_done(&self.endpoint, outcome, self.sent.elapsed().as_secs_f64());
    }

    async fn read(&mut self) -> Result<Option<Bytes>, QueryError> {
        loop {
            if self.done {
                return Ok(None);
            }
            match self.cursor.next().await? {
                Some(chunk) => {
                    self.tail.extend_from_slice(&chunk);
                    if self.tail.len() > HELD_TAIL_BYTES {
                        let ready = self.tail.len() - HELD_TAIL_BYTES;
                        return Ok(Some(self.tail.split_to(ready).freeze()));
                    }
                }
                None => {
                    self.done = true;
                    if let Some(error) = trailing_exception(&self.tail) {
                        return Err(error);
                    }
                    return Ok((!self.tail.is_empty()).then(|| self.tail.split().freeze()));
                }
            }
        }
    }
}

impl Drop for ResultStream {
    fn drop(&mut self) {
        // Dropped before its end: the caller hung up, the deadline passed, or the result was
        // too large to cache. ClickHouse cancels the query when its response is dropped.
        if self.outcome.is_none() {
            self.span.record("error.type", "cancelled");
            self.span.record("otel.status_code", "error");
            self.outcome = Some("cancelled");
            metrics::query_done(&self.endpoint, "cancelled", self.sent.elapsed().as_secs_f64());
        }
    }
}

/// The exception a result ends with, if it ends with one: ClickHouse 25.11+'s tagged trailer
/// (`…\r\n__exception__\r\n`), or the older `Code: N. DB::Exception: …` last line.
fn trailing_exception(tail: &[u8]) -> Option<QueryError> {
    const MARKER: &[u8] = b"__exception__\r\n";
    let text = if tail.ends_with(MARKER) {
        let body = &tail[..tail.len() - MARKER.len()];
        let start = body
            .windows(MARKER.len())
            .position(|window| window == MARKER)
            .map_or(0, |at| at + MARKER.len());
        String::from_utf8_lossy(&body[start..]).into_owned()
    } else {
        let trimmed = tail.strip_suffix(b"\n")?;
        let line_start = trimmed.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
        let line = String::from_utf8_lossy(&trimmed[line_start..]).into_owned();
        if !(line.starts_with("Code: ") && line.contains("DB::Exception:")) {
            return None;
        }
        line
    };
    Some(
        QueryError::from(clickhouse::error::Error::BadResponse(text.clone()))
            .into_exception_or(|| QueryError::Other(format!("exception after the result started: {text}"))),
    )
}

impl QueryRunner {
    pub fn new(settings: &ClickHouseSettings, policy: &AccessPolicy, secrets: Arc<SecretStore>) -> Self {
        Self {
            host: settings
                .url
                .split("://")
                .nth(1)
                .unwrap_or(&settings.url)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            url: settings.url.clone(),
            database: settings.database.clone(),
            secrets,
            clients: RwLock::new(None),
            tenant_setting: policy.tenant_setting().map(str::to_owned),
        }
    }

    /// The clients of the current logins: the cached ones, or new ones when the logins have
    /// changed since they were built.
    fn clients(&self) -> Result<Arc<Clients>, QueryError> {
        let logins = self.secrets.current().ok_or(QueryError::NoCredentials)?;
        if let Some(clients) = self.clients.read().unwrap_or_else(|e| e.into_inner()).as_ref()
            && clients.generation == logins.generation
        {
            return Ok(Arc::clone(clients));
        }
        let clients = Arc::new(self.build_clients(&logins));
        let mut cached = self.clients.write().unwrap_or_else(|e| e.into_inner());
        // Never over newer ones a concurrent caller has just built.
        if cached.as_ref().is_none_or(|old| old.generation < clients.generation) {
            *cached = Some(Arc::clone(&clients));
        }
        Ok(clients)
    }

    fn build_clients(&self, logins: &Logins) -> Clients {
        let client = |login: &crate::secrets::Login| {
            Client::default()
                .with_url(&self.url)
                .with_user(&login.user)
                .with_password(login.password.expose())
                .with_database(&self.database)
        };
        Clients {
            generation: logins.generation,
            service: client(&logins.service),
            roles: logins
                .roles
                .iter()
                .map(|(role, login)| (role.clone(), client(login)))
                .collect(),
        }
    }

    /// The generation of the current logins (0 before there are any).
    pub fn login_generation(&self) -> u64 {
        self.secrets.current().map_or(0, |logins| logins.generation)
    }

    /// ClickHouse rejected the logins of `generation`: whether newer ones are now in place
    /// (read from the vault by this call or a concurrent one), so the query may be retried.
    pub async fn login_rejected(&self, generation: u64) -> bool {
        self.secrets.rejected(generation).await
    }

    /// The client of the service's own login.
    pub fn service_client(&self) -> Result<Client, QueryError> {
        Ok(self.clients()?.service.clone())
    }

    /// The client of `role`'s login (the service login when the role has none of its own),
    /// and the logins' generation, for writers that send their own statements.
    pub fn client_for(&self, role: &crate::access::policy::Role) -> Result<(Client, u64), QueryError> {
        let clients = self.clients()?;
        let client = clients.roles.get(&role.name).unwrap_or(&clients.service).clone();
        Ok((client, clients.generation))
    }

    /// A trivial query: is ClickHouse answering at all?
    pub async fn ping(&self) -> Result<(), QueryError> {
        let clients = self.clients()?;
        clients
            .service
            .query("SELECT 1")
            .execute()
            .await
            .map_err(QueryError::from)
    }

    /// Sends the granted endpoint's query. `query_id` names it in ClickHouse's logs and
    /// processes; `log_comment` and `quota_key` carry who ran it (never a token). `budget` is
    /// what is left of the request's deadline: ClickHouse stops the query when it runs out.
    pub fn start(&self, call: QueryCall<'_>, budget: Duration) -> Result<ResultStream, QueryError> {
        let QueryCall {
            grant,
            params,
            format,
            query_id,
            trace_id,
            ..
        } = call;
        let endpoint = grant.endpoint();
        let role = grant.role();
        let limits = endpoint.limits();
        // The role's limits tighten the endpoint's, never loosen them.
        let tighter = |own: u64, role: Option<u64>| role.map_or(own, |r| r.min(own));
        // Whole seconds (what every server version accepts), rounded up: the handler's own
        // deadline cuts the request at the exact time.
        let budget_seconds = budget.as_secs().saturating_add(u64::from(budget.subsec_nanos() > 0));
        let max_execution_time = tighter(
            limits.max_execution_time.as_secs(),
            role.max_execution_time.map(|t| t.as_secs()),
        )
        .min(budget_seconds.max(1));
        let log_comment = json!({
            "endpoint": endpoint.name(),
            "role": role.name,
            "tenant": grant.tenant(),
            "subject": subject_hash(grant.subject()),
            "trace_id": trace_id,
        });
        let clients = self.clients()?;
        let client = clients.roles.get(&role.name).unwrap_or(&clients.service);
        // query_raw: the SQL is sent as written (no client-side `?` binding); values travel
        // only as typed parameters.
        let mut query = client
            .query_raw(endpoint.sql())
            .with_setting("query_id", query_id)
            .with_setting("log_comment", log_comment.to_string())
            // 2, not 1: read-only, while still letting this request carry its own limits.
            .with_setting("readonly", "2")
            .with_setting("max_execution_time", max_execution_time.to_string())
            .with_setting("timeout_overflow_mode", "throw")
            .with_setting(
                "max_result_rows",
                tighter(limits.max_rows, role.max_result_rows).to_string(),
            )
            .with_setting(
                "max_result_bytes",
                tighter(limits.max_bytes, role.max_result_bytes).to_string(),
            )
            .with_setting("result_overflow_mode", "throw")
            // The API's JSON must not change with the server's version: 64-bit integers are
            // numbers (ClickHouse's default from 25.x on; older servers quoted them).
            .with_setting("output_format_json_quote_64bit_integers", "0")
            // A failure after the first bytes must stay detectable: never written as a valid
            // part of the output format (a JSON "exception" key would look like a result).
            .with_setting("http_write_exception_in_output_format", "0")
            // A caller who hangs up must not leave the query running.
            .with_setting("cancel_http_readonly_queries_on_client_close", "1");
        if let Some(tenant) = grant.tenant() {
            query = query.with_setting("quota_key", tenant);
            if let Some(setting) = &self.tenant_setting {
                query = query.with_setting(setting.clone(), tenant);
            }
        }
        if let Some(memory) = role.max_memory_usage {
            query = query.with_setting("max_memory_usage", memory.to_string());
        }
        if let Some(priority) = role.priority {
            query = query.with_setting("priority", priority.to_string());
        }
        for (name, value) in params.iter() {
            query = query.param(name, value);
        }
        for (name, value) in grant.caller_params() {
            query = query.param(name, value);
        }
        let cursor = query.fetch_bytes(format.clickhouse_format())?;
        // The dependency: from sending the query until its result has been read (or dropped).
        // Named by the endpoint, whose SQL the deployment fixes: the text itself would add a
        // kilobyte or two to every item (and every attribute is copied into customDimensions)
        // for nothing the endpoint's name and the query log do not already say.
        let span = tracing::info_span!(
            "clickhouse",
            otel.name = endpoint.name(),
            otel.kind = "client",
            otel.status_code = Empty,
            ai.operation.name = endpoint.name(),
            db.system.name = "clickhouse",
            db.namespace = %self.database,
            server.address = %self.host,
            clickhouse.query_id = query_id,
            clickhouse.format = format.clickhouse_format(),
            clickhouse.read_rows = Empty,
            clickhouse.read_bytes = Empty,
            db.response.returned_rows = Empty,
            error.type = Empty,
        );
        Ok(ResultStream::new(cursor, clients.generation, span, endpoint.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_trailer_is_an_exception_wherever_the_pieces_split() {
        let tail = b"{\"n\":1}\n\r\n__exception__\r\nTAG\r\nCode: 395. DB::Exception: boom. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO) (version 26.9)\n80 TAG\r\n__exception__\r\n";
        match trailing_exception(tail) {
            Some(QueryError::Exception { code, .. }) => assert_eq!(code, 395),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_style_last_line_is_an_exception() {
        let tail = b"1\n2\nCode: 159. DB::Exception: Timeout exceeded. (TIMEOUT_EXCEEDED) (version 24.8)\n";
        assert!(matches!(
            trailing_exception(tail),
            Some(QueryError::Exception { code: 159, .. })
        ));
    }

    #[test]
    fn ordinary_results_are_not_exceptions() {
        assert!(trailing_exception(b"").is_none());
        assert!(trailing_exception(b"{\"a\":\"x))\"}\n").is_none());
        assert!(trailing_exception(b"\"path\",\"views\"\n\"/\",3\n").is_none());
    }
}
