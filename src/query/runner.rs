//! The query runner: one `clickhouse::Client` for the process, one request per query, with
//! the endpoint's limits as ClickHouse settings and the values as server-side parameters.

use bytes::Bytes;
use clickhouse::Client;
use clickhouse::query::BytesCursor;

use super::bind::BoundParams;
use super::error::QueryError;
use crate::catalog::Endpoint;
use crate::catalog::format::OutputFormat;
use crate::settings::ClickHouseSettings;

/// Runs endpoint queries on ClickHouse.
#[derive(Clone)]
pub struct QueryRunner {
    client: Client,
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
    pub fn new(settings: &ClickHouseSettings) -> Self {
        let client = Client::default()
            .with_url(&settings.url)
            .with_user(&settings.user)
            .with_password(&settings.password)
            .with_database(&settings.database);
        Self { client }
    }

    /// Sends the endpoint's query. `query_id` names it in ClickHouse's logs and processes.
    pub fn start(
        &self,
        endpoint: &Endpoint,
        params: &BoundParams,
        format: OutputFormat,
        query_id: &str,
    ) -> Result<ResultStream, QueryError> {
        let limits = endpoint.limits();
        // query_raw: the SQL is sent as written (no client-side `?` binding); values travel
        // only as typed parameters.
        let mut query = self
            .client
            .query_raw(endpoint.sql())
            .with_setting("query_id", query_id)
            // 2, not 1: read-only, while still letting this request carry its own limits.
            .with_setting("readonly", "2")
            .with_setting(
                "max_execution_time",
                limits.max_execution_time.as_secs().to_string(),
            )
            .with_setting("timeout_overflow_mode", "throw")
            .with_setting("max_result_rows", limits.max_rows.to_string())
            .with_setting("max_result_bytes", limits.max_bytes.to_string())
            .with_setting("result_overflow_mode", "throw")
            // The API's JSON must not change with the server's version: 64-bit integers are
            // numbers (ClickHouse's default from 25.x on; older servers quoted them).
            .with_setting("output_format_json_quote_64bit_integers", "0");
        for (name, value) in params.iter() {
            query = query.param(name, value);
        }
        let cursor = query.fetch_bytes(format.clickhouse_format())?;
        Ok(ResultStream { cursor })
    }
}
