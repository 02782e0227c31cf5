//! Writing a checked batch into ClickHouse: one INSERT of JSONEachRow, deduplicated by the
//! batch's token, as an asynchronous insert that ClickHouse acknowledges only once the rows
//! are written (`wait_for_async_insert = 1`): many small requests become few parts, and an
//! acknowledgement always means durable.

use std::time::Duration;

use clickhouse::Client;

use super::batch::Batch;
use crate::query::QueryError;

/// The ClickHouse settings of every ingest insert.
const INSERT_SETTINGS: &[(&str, &str)] = &[
    // Pinned: a user profile that turned deduplication off would silently break idempotency.
    ("insert_deduplicate", "1"),
    ("async_insert", "1"),
    ("wait_for_async_insert", "1"),
    ("async_insert_deduplicate", "1"),
    // Rows are checked before they are sent; anything ClickHouse would skip or guess at is a
    // mismatch between the catalog and the table, and must fail loudly.
    ("input_format_skip_unknown_fields", "0"),
    ("input_format_null_as_default", "0"),
    ("date_time_input_format", "best_effort"),
];

/// Inserts `batch` into `table` (checked identifiers, `name` or `database.name`); a batch
/// sent again with the same `token` is stored once.
pub async fn insert(
    client: &Client,
    table: &str,
    batch: &Batch,
    token: &str,
    timeout: Duration,
) -> Result<(), QueryError> {
    let quoted: Vec<String> = table.split('.').map(|part| format!("`{part}`")).collect();
    let mut insert = client
        .insert_formatted_with(format!("INSERT INTO {} FORMAT JSONEachRow", quoted.join(".")))
        .with_timeouts(Some(timeout), Some(timeout))
        .with_setting("insert_deduplication_token", token);
    for (name, value) in INSERT_SETTINGS {
        insert = insert.with_setting(*name, *value);
    }
    insert.send(batch.body.clone()).await?;
    insert.end().await?;
    Ok(())
}
