//! Ingest endpoints: a function folder whose endpoint.toml says `kind = "ingest"` names a
//! table, the fields a row may carry (typed and constrained like query parameters), the column
//! that receives the caller's tenant, the roles allowed and the batch limits. No query.sql:
//! the handler writes the rows itself, as JSONEachRow, and never builds SQL from a request.

use std::collections::BTreeMap;

use super::AccessRules;
use super::endpoint::{Method, Problems, check_roles_defined, methods, route};
use super::files::{BindingJson, IngestToml};
use super::param::ParamSpec;
use super::route::Route;

/// The most rows one request may carry, whatever endpoint.toml says.
pub const MAX_ROWS: usize = 100_000;
/// The largest body one request may carry, whatever endpoint.toml says.
pub const MAX_BYTES: usize = 32 << 20;

/// A checked ingest endpoint.
#[derive(Debug, Clone)]
pub struct IngestEndpoint {
    name: String,
    route: Route,
    description: String,
    roles: Vec<String>,
    table: String,
    tenant_column: Option<String>,
    fields: BTreeMap<String, ParamSpec>,
    max_rows: usize,
    max_bytes: usize,
}

impl IngestEndpoint {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn route(&self) -> &Route {
        &self.route
    }
    /// Ingest endpoints take POST only.
    pub fn methods(&self) -> &'static [Method] {
        &[Method::Post]
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
    /// The table, as written (`name` or `database.name`; checked to be plain identifiers).
    pub fn table(&self) -> &str {
        &self.table
    }
    pub fn tenant_column(&self) -> Option<&str> {
        self.tenant_column.as_deref()
    }
    pub fn fields(&self) -> &BTreeMap<String, ParamSpec> {
        &self.fields
    }
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// Reads an ingest endpoint from its endpoint.toml and HTTP trigger.
pub(super) fn load_ingest(
    name: &str,
    text: &str,
    trigger: &BindingJson,
    rules: &AccessRules,
    problems: &mut Problems<'_>,
) -> Option<IngestEndpoint> {
    let toml = match toml::from_str::<IngestToml>(text) {
        Ok(toml) => toml,
        Err(error) => {
            let line = error.span().map(|span| super::endpoint::line_of(text, span.start));
            problems.add("endpoint.toml", line, error.message().trim().to_owned());
            return None;
        }
    };
    let route = route(trigger, name, problems);
    let methods = methods(trigger, problems);
    if methods != [Method::Post] {
        problems.add(
            "function.json",
            None,
            "an ingest endpoint takes POST only; set \"methods\": [\"post\"]",
        );
    }
    if toml.description.trim().is_empty() {
        problems.add("endpoint.toml", None, "description is empty; say what the events are");
    }
    if toml.roles.is_empty() {
        problems.add(
            "endpoint.toml",
            None,
            "roles is empty; name the roles that may send events",
        );
    }
    check_roles_defined(&toml.roles, rules, None, problems);
    if !is_table_name(&toml.table) {
        problems.add(
            "endpoint.toml",
            None,
            format!(
                "table {:?} must be a name or database.name of letters, digits and _",
                toml.table
            ),
        );
    }
    let bare_table = toml.table.rsplit('.').next().unwrap_or_default();
    let tenant_scoped = rules
        .tenant_scoped_tables
        .iter()
        .any(|t| t == bare_table || *t == toml.table);
    let tenant_column = match (toml.tenant_column, tenant_scoped) {
        (Some(column), true) if column != rules.tenant_column => {
            problems.add(
                "endpoint.toml",
                None,
                format!(
                    "tenant_column {column:?}: table {} is tenant-scoped by {:?} in the access policy",
                    toml.table, rules.tenant_column
                ),
            );
            None
        }
        (Some(column), _) => Some(column),
        (None, true) => Some(rules.tenant_column.clone()),
        (None, false) => None,
    };
    let mut fields = BTreeMap::new();
    if toml.fields.is_empty() {
        problems.add("endpoint.toml", None, "no [fields.<name>]; declare what a row may hold");
    }
    for (field, spec) in toml.fields {
        if !is_identifier(&field) {
            problems.add(
                "endpoint.toml",
                None,
                format!("[fields.{field}]: a field is a column name of letters, digits and _"),
            );
            continue;
        }
        // Any spelling of a tenant column: ClickHouse may match JSON keys to columns without
        // regard to case, so a field "Tenant_ID" must not exist beside "tenant_id" either.
        let is_tenant = |column: &str| column.eq_ignore_ascii_case(&field);
        if tenant_column.as_deref().is_some_and(is_tenant) || is_tenant(&rules.tenant_column) {
            problems.add(
                "endpoint.toml",
                None,
                format!(
                    "[fields.{field}]: {field} is the tenant column, stamped from the caller's token; remove the field"
                ),
            );
            continue;
        }
        match ParamSpec::from_toml(&field, spec) {
            Ok(spec) => {
                fields.insert(field, spec);
            }
            Err(messages) => {
                for message in messages {
                    problems.add("endpoint.toml", None, format!("[fields.{field}]: {message}"));
                }
            }
        }
    }
    let max_rows = toml.limits.max_rows.unwrap_or(10_000);
    let max_bytes = toml.limits.max_bytes.unwrap_or(4 << 20);
    if !(1..=MAX_ROWS).contains(&max_rows) {
        problems.add(
            "endpoint.toml",
            None,
            format!("limits.max_rows must be 1 to {MAX_ROWS}"),
        );
    }
    if !(1024..=MAX_BYTES).contains(&max_bytes) {
        problems.add(
            "endpoint.toml",
            None,
            format!("limits.max_bytes must be 1024 to {MAX_BYTES}"),
        );
    }
    Some(IngestEndpoint {
        name: name.to_owned(),
        route: route?,
        description: toml.description.trim().to_owned(),
        roles: toml.roles,
        table: toml.table,
        tenant_column,
        fields,
        max_rows,
        max_bytes,
    })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|part| is_identifier(part))
}
