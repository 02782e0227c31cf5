//! Checking an ingest endpoint against its table as ClickHouse has it: every field and the
//! tenant column must be columns, and the table must deduplicate inserts (a Replicated engine,
//! or `non_replicated_deduplication_window` on a plain MergeTree), or idempotency keys would
//! be silently ignored.

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::catalog::IngestEndpoint;
use crate::query::QueryError;

#[derive(Debug, Row, Deserialize)]
struct Column {
    name: String,
}

#[derive(Debug, Row, Deserialize)]
struct Table {
    engine: String,
    create_table_query: String,
}

/// The problems of `endpoint` against the live table; empty when it fits. Errors only when
/// ClickHouse cannot be asked.
pub async fn check(client: &Client, endpoint: &IngestEndpoint) -> Result<Vec<String>, QueryError> {
    let (database, table) = match endpoint.table().split_once('.') {
        Some((database, table)) => (Some(database), table),
        None => (None, endpoint.table()),
    };
    let database_filter = if database.is_some() {
        "database = {db:String}"
    } else {
        "database = currentDatabase()"
    };
    let mut tables = client.query(&format!(
        "SELECT engine, create_table_query FROM system.tables WHERE {database_filter} AND name = {{t:String}}"
    ));
    let mut columns = client.query(&format!(
        "SELECT name FROM system.columns WHERE {database_filter} AND table = {{t:String}}"
    ));
    if let Some(database) = database {
        tables = tables.param("db", database);
        columns = columns.param("db", database);
    }
    let found: Vec<Table> = tables.param("t", table).fetch_all().await?;
    let Some(found) = found.first() else {
        return Ok(vec![format!(
            "{}: table {} does not exist in ClickHouse",
            endpoint.name(),
            endpoint.table()
        )]);
    };
    let columns: Vec<Column> = columns.param("t", table).fetch_all().await?;
    let mut problems = Vec::new();
    let wanted = endpoint
        .fields()
        .keys()
        .map(String::as_str)
        .chain(endpoint.tenant_column());
    for name in wanted {
        if !columns.iter().any(|column| column.name == name) {
            problems.push(format!(
                "{}: table {} has no column {name}",
                endpoint.name(),
                endpoint.table()
            ));
        }
    }
    let deduplicates = found.engine.starts_with("Replicated") || dedup_window(&found.create_table_query) > 0;
    if !deduplicates {
        problems.push(format!(
            "{}: table {} ({}) does not deduplicate inserts, so Idempotency-Key would be ignored; \
             ALTER TABLE {} MODIFY SETTING non_replicated_deduplication_window = 1000",
            endpoint.name(),
            endpoint.table(),
            found.engine,
            endpoint.table()
        ));
    }
    Ok(problems)
}

/// The `non_replicated_deduplication_window` a CREATE TABLE statement sets (0 when none).
fn dedup_window(create: &str) -> u64 {
    const SETTING: &str = "non_replicated_deduplication_window";
    let Some(at) = create.find(SETTING) else {
        return 0;
    };
    let rest = create[at + SETTING.len()..].trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return 0;
    };
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::dedup_window;

    #[test]
    fn the_window_is_read_from_the_create_statement() {
        let create = "CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000";
        assert_eq!(dedup_window(create), 1000);
        assert_eq!(dedup_window("... SETTINGS non_replicated_deduplication_window = 0"), 0);
        assert_eq!(
            dedup_window("CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a"),
            0
        );
    }
}
