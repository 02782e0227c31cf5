//! A request body becomes a batch: JSON (an array of objects, or one object) or NDJSON (one
//! object per line), every row checked against the endpoint's fields, the caller's tenant
//! stamped, and the rows written out as JSONEachRow for ClickHouse. All or nothing: one bad
//! row and the whole batch is refused, with the first bad rows listed.

use serde_json::Value;

use crate::catalog::IngestEndpoint;
use crate::catalog::param::RawValue;

/// How many bad rows a refusal lists (the count says how many there were in all).
pub const LISTED_PROBLEMS: usize = 20;

/// A checked batch, ready to insert.
#[derive(Debug, Clone)]
pub struct Batch {
    pub rows: usize,
    /// JSONEachRow: one JSON object per line, the tenant column stamped.
    pub body: bytes::Bytes,
}

/// What is wrong with one row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowProblem {
    /// The row's position in the request, from 1.
    pub row: usize,
    /// The field at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    pub problem: String,
}

/// Why a body is not a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the body is not {0}")]
    NotJson(String),
    #[error("the batch has no rows")]
    Empty,
    #[error("the batch has more than {limit} rows; split it")]
    TooManyRows { limit: usize },
    #[error("{total} row(s) are invalid; nothing was written")]
    InvalidRows { total: usize, listed: Vec<RowProblem> },
    #[error("row {row} names tenant {claimed:?}, but the caller's tenant is {tenant:?}; nothing was written")]
    TenantMismatch {
        row: usize,
        claimed: String,
        tenant: String,
    },
}

/// How the rows are laid out in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A JSON array of objects, or one object.
    Json,
    /// One JSON object per line.
    NdJson,
}

impl Layout {
    /// From the `Content-Type` (media type only); without one, from the first byte.
    pub fn of(content_type: Option<&str>, body: &[u8]) -> Layout {
        let media = content_type
            .and_then(|value| value.split(';').next())
            .map(|media| media.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some("application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines") => {
                Layout::NdJson
            }
            Some("application/json") => Layout::Json,
            _ if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') => Layout::Json,
            _ => Layout::NdJson,
        }
    }
}

/// Checks every row of `body` and builds the batch; `tenant` is stamped into the endpoint's
/// tenant column (the caller has one whenever the endpoint has such a column).
pub fn parse(
    endpoint: &IngestEndpoint,
    tenant: Option<&str>,
    layout: Layout,
    body: &[u8],
) -> Result<Batch, BatchError> {
    let rows = split_rows(layout, body, endpoint.max_rows())?;
    if rows.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut out = Vec::with_capacity(body.len() + rows.len() * 32);
    let mut listed = Vec::new();
    let mut total = 0;
    for (index, row) in rows.iter().enumerate() {
        // Once a row has failed, the batch will be refused: the rest is only checked.
        let sink = (total == 0).then_some(&mut out);
        match check_row(endpoint, tenant, index + 1, row, sink) {
            Ok(()) => {}
            Err(RowFailure::Tenant(mismatch)) => return Err(mismatch),
            Err(RowFailure::Problems(problems)) => {
                total += 1;
                let room = LISTED_PROBLEMS.saturating_sub(listed.len());
                listed.extend(problems.into_iter().take(room));
            }
        }
    }
    if total > 0 {
        return Err(BatchError::InvalidRows { total, listed });
    }
    Ok(Batch {
        rows: rows.len(),
        body: out.into(),
    })
}

/// The body's rows, as JSON values, refusing more than `max_rows`.
fn split_rows(layout: Layout, body: &[u8], max_rows: usize) -> Result<Vec<Value>, BatchError> {
    let rows = match layout {
        Layout::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(rows)) => rows,
            Ok(object @ Value::Object(_)) => vec![object],
            Ok(_) => return Err(BatchError::NotJson("a JSON array of objects".into())),
            Err(error) => return Err(BatchError::NotJson(format!("valid JSON ({error})"))),
        },
        Layout::NdJson => {
            let mut rows = Vec::new();
            for (number, line) in body.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if rows.len() == max_rows {
                    return Err(BatchError::TooManyRows { limit: max_rows });
                }
                let row = serde_json::from_slice::<Value>(line).map_err(|error| {
                    BatchError::NotJson(format!("NDJSON: line {} is not JSON ({error})", number + 1))
                })?;
                rows.push(row);
            }
            rows
        }
    };
    if rows.len() > max_rows {
        return Err(BatchError::TooManyRows { limit: max_rows });
    }
    Ok(rows)
}

enum RowFailure {
    Tenant(BatchError),
    Problems(Vec<RowProblem>),
}

/// One row, checked and typed; written to `out` as a JSONEachRow line, with the tenant
/// stamped, when it is good and `out` is given.
fn check_row(
    endpoint: &IngestEndpoint,
    tenant: Option<&str>,
    number: usize,
    row: &Value,
    mut out: Option<&mut Vec<u8>>,
) -> Result<(), RowFailure> {
    let problem = |field: Option<&str>, expected: Option<&str>, problem: String| RowProblem {
        row: number,
        field: field.map(str::to_owned),
        expected: expected.map(str::to_owned),
        problem,
    };
    let Value::Object(object) = row else {
        return Err(RowFailure::Problems(vec![problem(
            None,
            None,
            "a row must be a JSON object of field names and values".into(),
        )]));
    };
    let mut problems = Vec::new();
    let tenant_column = endpoint.tenant_column();
    for (key, value) in object {
        if Some(key.as_str()) == tenant_column {
            // The tenant comes from the token; a payload may repeat it, never change it.
            let claimed = value.as_str().unwrap_or_default();
            if Some(claimed) != tenant {
                return Err(RowFailure::Tenant(BatchError::TenantMismatch {
                    row: number,
                    claimed: crate::text::shorten(&value.to_string()),
                    tenant: tenant.unwrap_or_default().to_owned(),
                }));
            }
        } else if !endpoint.fields().contains_key(key) {
            problems.push(problem(
                Some(&crate::text::shorten(key)),
                None,
                "unknown field; the endpoint takes only its declared fields".into(),
            ));
        }
    }
    let start = out.as_ref().map_or(0, |out| out.len());
    if let Some(out) = out.as_deref_mut() {
        out.push(b'{');
    }
    for (index, (name, spec)) in endpoint.fields().iter().enumerate() {
        let parsed = match object.get(name) {
            Some(value) => spec.parse(RawValue::Json(value)),
            None => spec.missing(),
        };
        match parsed {
            Ok(value) => {
                if let Some(out) = out.as_deref_mut() {
                    if index > 0 {
                        out.push(b',');
                    }
                    // Names are checked identifiers and values serialise infallibly into a Vec.
                    let _ = serde_json::to_writer(&mut *out, name);
                    out.push(b':');
                    let _ = serde_json::to_writer(&mut *out, &value);
                }
            }
            Err(error) => problems.push(problem(Some(name), Some(error.expected()), error.problem().to_owned())),
        }
    }
    if !problems.is_empty() {
        if let Some(out) = out {
            out.truncate(start);
        }
        return Err(RowFailure::Problems(problems));
    }
    if let Some(out) = out {
        if let (Some(column), Some(tenant)) = (tenant_column, tenant) {
            if !endpoint.fields().is_empty() {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut *out, column);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, tenant);
        }
        out.extend_from_slice(b"}\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests_support {
    use crate::catalog::{AccessRules, Catalog};

    pub fn clicks() -> Catalog {
        let rules = AccessRules {
            roles: ["reader", "analyst", "internal", "collector"].map(str::to_owned).into(),
            cross_tenant_roles: ["internal"].map(str::to_owned).into(),
            tenant_column: "tenant_id".into(),
            tenant_scoped_tables: vec!["events".into()],
            ..AccessRules::default()
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/endpoints");
        Catalog::load(&dir, "api", &rules).expect("fixture catalog")
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::clicks;
    use super::*;
    use crate::catalog::Catalog;

    fn parse_with(catalog: &Catalog, layout: Layout, body: &str) -> Result<Batch, BatchError> {
        let endpoint = &catalog.ingest_endpoints()[0];
        parse(endpoint, Some("acme"), layout, body.as_bytes())
    }

    #[test]
    fn rows_become_json_each_row_with_the_tenant_stamped_and_text_escaped() {
        let catalog = clicks();
        let batch = parse_with(
            &catalog,
            Layout::Json,
            r#"[{"ts":"2026-12-01T10:00:00Z","path":"/a\"b\n","tags":["x"]}]"#,
        )
        .expect("batch");
        assert_eq!(batch.rows, 1);
        let line: Value = serde_json::from_slice(batch.body.strip_suffix(b"\n").expect("one line")).expect("json");
        assert_eq!(line["tenant_id"], "acme");
        assert_eq!(line["path"], "/a\"b\n");
        assert_eq!(line["duration_ms"], 0);
        assert_eq!(line["tags"], serde_json::json!(["x"]));
    }

    #[test]
    fn ndjson_lines_are_rows_and_blank_lines_are_skipped() {
        let catalog = clicks();
        let body = "{\"ts\":\"2026-12-01T10:00:00Z\",\"path\":\"/1\"}\n\n  \n{\"ts\":\"2026-12-01T10:00:00Z\",\"path\":\"/2\"}";
        assert_eq!(parse_with(&catalog, Layout::NdJson, body).expect("batch").rows, 2);
        assert!(matches!(
            parse_with(&catalog, Layout::NdJson, "{\"path\":\"/x\"}\nnot json\n"),
            Err(BatchError::NotJson(_))
        ));
    }

    #[test]
    fn another_tenant_refuses_the_whole_batch_and_the_callers_own_is_fine() {
        let catalog = clicks();
        let spoof = r#"[{"ts":"2026-12-01T10:00:00Z","path":"/a","tenant_id":"globex"}]"#;
        assert!(matches!(
            parse_with(&catalog, Layout::Json, spoof),
            Err(BatchError::TenantMismatch { row: 1, .. })
        ));
        let number = r#"[{"ts":"2026-12-01T10:00:00Z","path":"/a","tenant_id":7}]"#;
        assert!(matches!(
            parse_with(&catalog, Layout::Json, number),
            Err(BatchError::TenantMismatch { .. })
        ));
        let own = r#"[{"ts":"2026-12-01T10:00:00Z","path":"/a","tenant_id":"acme"}]"#;
        assert!(parse_with(&catalog, Layout::Json, own).is_ok());
    }

    #[test]
    fn limits_and_empty_batches() {
        let catalog = clicks();
        let row = "{\"ts\":\"2026-12-01T10:00:00Z\",\"path\":\"/x\"}\n";
        assert!(matches!(
            parse_with(&catalog, Layout::NdJson, &row.repeat(1001)),
            Err(BatchError::TooManyRows { limit: 1000 })
        ));
        assert_eq!(parse_with(&catalog, Layout::Json, "[]").err(), Some(BatchError::Empty));
        assert_eq!(
            parse_with(&catalog, Layout::NdJson, "\n\n").err(),
            Some(BatchError::Empty)
        );
    }

    #[test]
    fn the_layout_comes_from_the_content_type_or_the_first_byte() {
        assert_eq!(
            Layout::of(Some("application/x-ndjson; charset=utf-8"), b"["),
            Layout::NdJson
        );
        assert_eq!(Layout::of(Some("application/json"), b"{}"), Layout::Json);
        assert_eq!(Layout::of(None, b"  [{}]"), Layout::Json);
        assert_eq!(Layout::of(None, b"{}\n{}"), Layout::NdJson);
    }
}

#[cfg(test)]
mod round_trip {
    use super::tests_support::clicks;
    use super::*;

    #[test]
    fn a_written_batch_parses_again_as_ndjson() {
        let catalog = clicks();
        let endpoint = &catalog.ingest_endpoints()[0];
        let first = parse(
            endpoint,
            Some("acme"),
            Layout::Json,
            br#"[{"ts":"2026-12-01T10:00:00.250Z","path":"/a","tags":["x"]}]"#,
        )
        .expect("first");
        let again = parse(endpoint, Some("acme"), Layout::NdJson, &first.body);
        assert_eq!(
            again.map(|b| b.body),
            Ok(first.body.clone()),
            "{:?}",
            String::from_utf8_lossy(&first.body)
        );
    }
}
