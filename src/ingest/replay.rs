//! Replaying a spooled batch: the ingest endpoint's table from the catalog (never from the
//! message), the body from the message or its blob, and the insert with the batch's original
//! deduplication token, so a batch that reached ClickHouse before it was spooled is not stored
//! twice. The blob goes once the rows are in.

use std::time::Duration;

use clickhouse::Client;

use super::spool::{Spool, SpooledBatch};
use super::writer;
use crate::catalog::Catalog;

/// What one replay may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The batch cannot succeed here, however often it is tried: it goes to the poison queue.
    #[error("{0}")]
    Refused(String),
    /// The blob could not be read, or ClickHouse could not take the rows now: try again later.
    #[error(transparent)]
    Spool(#[from] super::spool::SpoolError),
    #[error(transparent)]
    Insert(crate::query::QueryError),
    #[error("no answer from ClickHouse within {0:?}")]
    Timeout(Duration),
}

impl ReplayError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused(_) => false,
            Self::Spool(_) | Self::Timeout(_) => true,
            Self::Insert(error) => super::is_transient(error),
        }
    }
}

/// How long a batch ClickHouse could not take waits before its next replay: doubling from
/// 10 s, at most 5 min.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << attempt.min(5)).min(300))
}

/// Inserts a spooled batch: only what this deployment spooled (its signature), re-checked as
/// the endpoint checks a request, with the token recomputed from the batch's own endpoint,
/// tenant and id, so a forged token cannot stand for another tenant's batch.
pub async fn replay(
    catalog: &Catalog,
    client: &Client,
    spool: &Spool,
    batch: &SpooledBatch,
) -> Result<(), ReplayError> {
    if batch.v != 1 {
        return Err(ReplayError::Refused(format!(
            "message version {} is not known",
            batch.v
        )));
    }
    let endpoint = catalog
        .ingest_endpoints()
        .iter()
        .find(|endpoint| endpoint.name() == batch.endpoint)
        .ok_or_else(|| ReplayError::Refused(format!("no ingest endpoint {}", crate::text::shorten(&batch.endpoint))))?;
    let body = spool.body(batch).await?;
    spool.verify(batch, &body).map_err(ReplayError::Refused)?;
    if super::dedup_token(endpoint.name(), batch.tenant.as_deref(), &batch.batch_id) != batch.token {
        return Err(ReplayError::Refused(
            "the batch's token does not match its endpoint, tenant and id".into(),
        ));
    }
    let rows = super::batch::parse(endpoint, batch.tenant.as_deref(), super::batch::Layout::NdJson, &body)
        .map_err(|error| ReplayError::Refused(format!("the batch no longer fits the endpoint: {error}")))?;
    tokio::time::timeout(
        REPLAY_TIMEOUT,
        writer::insert(client, endpoint.table(), &rows, &batch.token, REPLAY_TIMEOUT),
    )
    .await
    .map_err(|_| ReplayError::Timeout(REPLAY_TIMEOUT))?
    .map_err(ReplayError::Insert)
}

/// The spooled batch in a queue trigger's invocation payload: `Data[<binding>]`, which the
/// Functions host sends JSON-encoded once more (a string holding the message's JSON).
pub fn from_invocation(payload: &serde_json::Value, binding: &str) -> Result<SpooledBatch, String> {
    let data = payload
        .get("Data")
        .and_then(|data| {
            data.as_object()?
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(binding))
                .map(|(_, value)| value)
        })
        .ok_or_else(|| format!("the invocation payload has no Data.{binding}"))?;
    let mut value = data.clone();
    // Unwrap up to two layers of JSON-in-a-string.
    for _ in 0..2 {
        match value {
            serde_json::Value::String(text) => {
                value = serde_json::from_str(&text).map_err(|_| "Data holds no JSON batch".to_owned())?;
            }
            _ => break,
        }
    }
    serde_json::from_value(value).map_err(|error| format!("Data is not a spooled batch: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_double_encoded_message_is_read() {
        let batch = json!({"v": 1, "endpoint": "e", "batch_id": "b", "token": "t", "rows": 1, "body": "{}\n"});
        let once = serde_json::to_string(&batch).expect("json");
        let twice = serde_json::to_string(&once).expect("json");
        for data in [json!(batch), json!(once), json!(twice)] {
            let payload = json!({"Data": {"batch": data}, "Metadata": {"DequeueCount": 1}});
            let read = from_invocation(&payload, "batch").expect("read");
            assert_eq!(read.token, "t");
        }
        assert!(from_invocation(&json!({"Data": {}}), "batch").is_err());
        assert!(from_invocation(&json!({"Data": {"batch": "\"hello\""}}), "batch").is_err());
    }
}
