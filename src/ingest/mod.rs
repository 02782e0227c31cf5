//! Moving events into ClickHouse: a request's rows are checked against the ingest endpoint's
//! fields ([`batch`]), stamped with the caller's tenant, and written in one deduplicated
//! insert ([`writer`]).

pub mod batch;
pub mod replay;
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
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
