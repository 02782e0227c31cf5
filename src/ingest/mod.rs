//! Moving events into ClickHouse: a request's rows are checked against the ingest endpoint's
//! fields ([`batch`]), stamped with the caller's tenant, and written in one deduplicated
//! insert ([`writer`]).

pub mod batch;
pub mod replay;
mod rows;
pub mod schema;
pub mod spool;
pub mod writer;

/// The caller's `Idempotency-Key`, checked: 1 to 128 visible ASCII characters.
pub fn idempotency_key(header: Option<&str>) -> Result<Option<String>, String> {
    let Some(key) = header else {
        return Ok(None);
    };
    let key = key.trim();
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::text::shorten(key));
    }
    Ok(Some(key.to_owned()))
}

/// The deduplication token of a batch: the endpoint and the tenant scope the caller's key,
/// so that one tenant's key can never make another tenant's batch look like a repeat.
pub fn dedup_token(endpoint: &str, tenant: Option<&str>, key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{endpoint}\u{1f}{}\u{1f}{key}", tenant.unwrap_or_default()).as_bytes(),
    );
    crate::text::hex(digest.as_ref())
}

/// Failures worth spooling (or replaying later) for: ClickHouse unreachable, out of
/// connections or credentials for now, or an insert whose outcome is unknown. Overload that a
/// batch itself may cause (too many parts or partitions, memory, time) is not: it would fail
/// again on every replay, so the caller gets 503 and sends it again later.
pub fn is_transient(error: &crate::query::QueryError) -> bool {
    use crate::query::QueryError;
    match error {
        QueryError::Unavailable(_) | QueryError::NoCredentials => true,
        // Too many simultaneous queries, no free connection, network, UNKNOWN_STATUS_OF_INSERT,
        // Keeper trouble.
        QueryError::Exception { code, .. } => {
            matches!(code, 202 | 203 | 209 | 210 | 319 | 225 | 999 | 242) || error.is_login_rejected()
        }
        QueryError::Other(_) => error.is_login_rejected(),
    }
}
