//! A request body becomes a batch: JSON (an array of objects, or one object) or NDJSON (one
//! object per line), every row checked against the endpoint's fields, the caller's tenant
//! stamped, and the rows written out as JSONEachRow for ClickHouse. All or nothing: one bad
//! row and the whole batch is refused, with the first bad rows listed.

use std::borrow::Cow;

use super::rows::{self, FieldValue, Row, RowSink};
use crate::catalog::IngestEndpoint;
use crate::catalog::param::ParamSpec;

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
///
/// Rows are checked as they are read, each dropped once written: no tree of the whole body is
/// built, and a batch over the row limit stops at the first row too many.
pub fn parse(
    endpoint: &IngestEndpoint,
    tenant: Option<&str>,
    layout: Layout,
    body: &[u8],
) -> Result<Batch, BatchError> {
    let plan = Plan::new(endpoint, tenant);
    let mut checker = Checker::new(&plan, body.len() + body.len() / 8);
    rows::read(layout, body, &mut checker)?;
    checker.finish()
}

/// What every row is checked against and written with, worked out once per batch.
struct Plan<'e> {
    endpoint: &'e IngestEndpoint,
    tenant: Option<&'e str>,
    /// The declared fields, in the order they are written.
    fields: Vec<(&'e str, &'e ParamSpec)>,
    /// Each field's `"name":` as written, with the separating comma after the first.
    prefixes: Vec<Vec<u8>>,
    /// The stamped tenant column, `,"column":"tenant"`, closing every row.
    tenant_suffix: Vec<u8>,
}

impl<'e> Plan<'e> {
    fn new(endpoint: &'e IngestEndpoint, tenant: Option<&'e str>) -> Self {
        let fields: Vec<_> = endpoint
            .fields()
            .iter()
            .map(|(name, spec)| (name.as_str(), spec))
            .collect();
        let prefixes = fields
            .iter()
            .enumerate()
            .map(|(index, (name, _))| {
                let mut prefix = if index > 0 { vec![b','] } else { Vec::new() };
                // Names are checked identifiers; writing into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut prefix, name);
                prefix.push(b':');
                prefix
            })
            .collect();
        let mut tenant_suffix = Vec::new();
        if let (Some(column), Some(tenant)) = (endpoint.tenant_column(), tenant) {
            if !fields.is_empty() {
                tenant_suffix.push(b',');
            }
            let _ = serde_json::to_writer(&mut tenant_suffix, column);
            tenant_suffix.push(b':');
            let _ = serde_json::to_writer(&mut tenant_suffix, tenant);
        }
        Plan {
            endpoint,
            tenant,
            fields,
            prefixes,
            tenant_suffix,
        }
    }
}

/// Checks rows one by one and writes the good ones out, until the first bad row; after that,
/// rows are only checked, to list their problems.
struct Checker<'p, 'e> {
    plan: &'p Plan<'e>,
    /// Per row: where each declared field is among the row's fields.
    slots: Vec<Option<usize>>,
    out: Vec<u8>,
    rows: usize,
    invalid: usize,
    listed: Vec<RowProblem>,
}

impl<'de> RowSink<'de> for Checker<'_, '_> {
    fn take(&mut self, row: Row<'de>) -> Result<(), BatchError> {
        self.check(&row)
    }
}

impl<'p, 'e> Checker<'p, 'e> {
    fn new(plan: &'p Plan<'e>, room: usize) -> Self {
        Checker {
            plan,
            slots: vec![None; plan.fields.len()],
            out: Vec::with_capacity(room),
            rows: 0,
            invalid: 0,
            listed: Vec::new(),
        }
    }

    /// Checks the next row: a problem is recorded, a row over the limit or of another tenant
    /// refuses the batch at once.
    fn finish(self) -> Result<Batch, BatchError> {
        if self.rows == 0 {
            return Err(BatchError::Empty);
        }
        if self.invalid > 0 {
            return Err(BatchError::InvalidRows {
                total: self.invalid,
                listed: self.listed,
            });
        }
        Ok(Batch {
            rows: self.rows,
            body: self.out.into(),
        })
    }

    fn check(&mut self, row: &Row<'_>) -> Result<(), BatchError> {
        self.rows += 1;
        let number = self.rows;
        let limit = self.plan.endpoint.max_rows();
        if number > limit {
            return Err(BatchError::TooManyRows { limit });
        }
        let problems = match row {
            Row::NotObject => vec![RowProblem {
                row: number,
                field: None,
                expected: None,
                problem: "a row must be a JSON object of field names and values".into(),
            }],
            Row::Object(fields) => self.check_object(number, fields)?,
        };
        if !problems.is_empty() {
            self.invalid += 1;
            let room = LISTED_PROBLEMS.saturating_sub(self.listed.len());
            self.listed.extend(problems.into_iter().take(room));
        }
        Ok(())
    }

    /// One object, checked and typed; written out, with the tenant stamped, while every row
    /// so far has been good.
    fn check_object(
        &mut self,
        number: usize,
        sent: &[(Cow<'_, str>, FieldValue<'_>)],
    ) -> Result<Vec<RowProblem>, BatchError> {
        let plan = self.plan;
        let problem = |field: &str, expected: Option<&str>, problem: String| RowProblem {
            row: number,
            field: Some(crate::text::shorten(field)),
            expected: expected.map(str::to_owned),
            problem,
        };
        let mut problems = Vec::new();
        self.slots.fill(None);
        let tenant_column = plan.endpoint.tenant_column();
        for (position, (name, value)) in sent.iter().enumerate() {
            if Some(name.as_ref()) == tenant_column {
                // The tenant comes from the token; a payload may repeat it, never change it.
                let claimed = value.as_str().unwrap_or_default();
                if Some(claimed) != plan.tenant {
                    return Err(BatchError::TenantMismatch {
                        row: number,
                        claimed: crate::text::shorten(&value.to_json()),
                        tenant: plan.tenant.unwrap_or_default().to_owned(),
                    });
                }
            } else if let Some(slot) = plan.fields.iter().position(|(declared, _)| declared == name) {
                if self.slots[slot].replace(position).is_some() {
                    problems.push(problem(name, None, "given more than once; send each field once".into()));
                }
            } else {
                problems.push(problem(
                    name,
                    None,
                    "unknown field; the endpoint takes only its declared fields".into(),
                ));
            }
        }
        let writing = self.invalid == 0;
        let start = self.out.len();
        if writing {
            self.out.push(b'{');
        }
        for (slot, (name, spec)) in plan.fields.iter().enumerate() {
            let parsed = match self.slots[slot] {
                Some(position) => spec.parse(sent[position].1.as_raw()),
                None => spec.missing(),
            };
            match parsed {
                Ok(value) if writing && problems.is_empty() => {
                    self.out.extend_from_slice(&plan.prefixes[slot]);
                    // Values serialise infallibly into a Vec.
                    let _ = serde_json::to_writer(&mut self.out, &value);
                }
                Ok(_) => {}
                Err(error) => problems.push(problem(name, Some(error.expected()), error.problem().to_owned())),
            }
        }
        if !problems.is_empty() {
            self.out.truncate(start);
        } else if writing {
            self.out.extend_from_slice(&plan.tenant_suffix);
            self.out.extend_from_slice(b"}\n");
        }
        Ok(problems)
    }
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
    use serde_json::Value;

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
    fn bad_rows_are_listed_by_row_and_field_and_nothing_is_kept() {
        let catalog = clicks();
        let body = r#"[{"ts":"2026-12-01T10:00:00Z","path":"/ok"},
            7,
            {"ts":"2026-12-01T10:00:00Z","path":"/a","path":"/b"},
            {"ts":"2026-12-01T10:00:00Z","p\u0061th":"/escaped name","colour":"red"}]"#;
        let Err(BatchError::InvalidRows { total, listed }) = parse_with(&catalog, Layout::Json, body) else {
            panic!("refused");
        };
        assert_eq!(total, 3);
        let seen: Vec<_> = listed
            .iter()
            .map(|problem| (problem.row, problem.field.as_deref(), problem.problem.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (2, None, "a row must be a JSON object of field names and values"),
                (3, Some("path"), "given more than once; send each field once"),
                (
                    4,
                    Some("colour"),
                    "unknown field; the endpoint takes only its declared fields"
                ),
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_rows_is_refused_as_a_whole() {
        let catalog = clicks();
        for body in ["7", "\"rows\"", "null", "[{\"path\":\"/x\"}] trailing", "[{\"path\":"] {
            assert!(
                matches!(parse_with(&catalog, Layout::Json, body), Err(BatchError::NotJson(_))),
                "{body}"
            );
        }
        assert_eq!(
            parse_with(&catalog, Layout::Json, "true").err(),
            Some(BatchError::NotJson("a JSON array of objects".into()))
        );
        let one = parse_with(&catalog, Layout::Json, r#"{"ts":"2026-12-01T10:00:00Z","path":"/one"}"#);
        assert_eq!(one.map(|batch| batch.rows), Ok(1));
    }

    #[test]
    fn a_json_array_over_the_limit_stops_at_the_first_row_too_many() {
        let catalog = clicks();
        let row = r#"{"ts":"2026-12-01T10:00:00Z","path":"/x"},"#;
        // The body is cut after the 1001st row: reading must stop before it reaches the end.
        let body = format!("[{}", row.repeat(1001));
        assert_eq!(
            parse_with(&catalog, Layout::Json, &body).err(),
            Some(BatchError::TooManyRows { limit: 1000 })
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
