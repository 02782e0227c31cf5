//! The query runner: one `clickhouse::Client` for the process, one request per query, with
//! the endpoint's limits as ClickHouse settings and the values as server-side parameters.

use bytes::Bytes;
use clickhouse::Client;
use clickhouse::query::BytesCursor;

use std::collections::HashMap;

use serde_json::json;

use super::bind::BoundParams;
use super::error::QueryError;
use crate::access::caller::subject_hash;
use crate::access::{AccessPolicy, Grant};
use crate::catalog::format::OutputFormat;
use crate::settings::ClickHouseSettings;

/// Runs endpoint queries on ClickHouse.
#[derive(Clone)]
pub struct QueryRunner {
    client: Client,
    /// Clients of roles that have a ClickHouse user of their own, so ClickHouse's grants apply.
    role_clients: HashMap<String, Client>,
    /// The custom setting that carries the tenant for a ClickHouse row policy, if configured.
    tenant_setting: Option<String>,
}

impl std::fmt::Debug for QueryRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRunner").finish_non_exhaustive()
    }
}

/// A running query's result, as ClickHouse streams it.
pub struct ResultStream {
    cursor: BytesCursor,
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream").finish_non_exhaustive()
    }
}

impl ResultStream {
    /// The next piece of the result; `None` at its end. An exception ClickHouse raises after
    /// sending part of the result arrives here as an error, never as a clean end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, QueryError> {
        Ok(self.cursor.next().await?)
    }
}

impl QueryRunner {
    pub fn new(settings: &ClickHouseSettings, policy: &AccessPolicy) -> Self {
        let client = |user: &str, password: &str| {
            Client::default()
                .with_url(&settings.url)
                .with_user(user)
                .with_password(password)
                .with_database(&settings.database)
        };
        let role_clients = policy
            .roles()
            .filter_map(|role| {
                let (user, password) = role.clickhouse_user.as_ref()?;
                Some((role.name.clone(), client(user, password)))
            })
            .collect();
        Self {
            client: client(&settings.user, &settings.password),
            role_clients,
            tenant_setting: policy.tenant_setting().map(str::to_owned),
        }
    }

    /// Sends the granted endpoint's query. `query_id` names it in ClickHouse's logs and
    /// processes; `log_comment` and `quota_key` carry who ran it (never a token).
    pub fn start(
        &self,
        grant: &Grant<'_>,
        params: &BoundParams,
        format: OutputFormat,
        query_id: &str,
    ) -> Result<ResultStream, QueryError> {
        let endpoint = grant.endpoint();
        let role = grant.role();
        let limits = endpoint.limits();
        // The role's limits tighten the endpoint's, never loosen them.
        let tighter = |own: u64, role: Option<u64>| role.map_or(own, |r| r.min(own));
        let max_execution_time = tighter(
            limits.max_execution_time.as_secs(),
            role.max_execution_time.map(|t| t.as_secs()),
        );
        let log_comment = json!({
            "endpoint": endpoint.name(),
            "role": role.name,
            "tenant": grant.tenant(),
            "subject": subject_hash(grant.subject()),
        });
        let client = self.role_clients.get(&role.name).unwrap_or(&self.client);
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
        Ok(ResultStream { cursor })
    }
}
