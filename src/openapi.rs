//! The catalog as an OpenAPI 3.1 document: one operation per endpoint and method, with the
//! route, the typed parameters (types, constraints, defaults, examples and descriptions from
//! endpoint.toml), the response formats, problem+json errors and the bearer scheme with the
//! roles each operation needs. API Management imports it (infra/openapi.json), and
//! `handler openapi` prints it.
//!
//! Every operation carries `x-chgate-endpoint` (the function folder's name), so a check can
//! match operations to the catalog both ways.

use serde_json::{Map, Value, json};

use crate::access::AccessPolicy;
use crate::catalog::param::{ParamSpec, ParamValue, RawValue};
use crate::catalog::{Builtin, BuiltinKind, Catalog, Endpoint, IngestEndpoint, Method};

/// The OpenAPI document of `catalog` under `policy` (which says how each role is granted).
pub fn document(catalog: &Catalog, policy: &AccessPolicy) -> Value {
    let mut paths = Map::new();
    let mut add = |route: &str, method: Method, operation: Value| {
        let path = paths
            .entry(format!("/{route}"))
            .or_insert_with(|| Value::Object(Map::new()));
        path[method.as_str().to_ascii_lowercase()] = operation;
    };
    for endpoint in catalog.endpoints() {
        let both = endpoint.methods().len() > 1;
        for &method in endpoint.methods() {
            add(
                endpoint.route().template(),
                method,
                query_operation(endpoint, method, both, policy),
            );
        }
    }
    for endpoint in catalog.ingest_endpoints() {
        add(
            endpoint.route().template(),
            Method::Post,
            ingest_operation(endpoint, policy),
        );
    }
    for builtin in catalog.builtins() {
        add(builtin.route.template(), Method::Get, builtin_operation(builtin));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "chgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "ClickHouse analytics endpoints. Every call but the health check needs \
                an OAuth 2.0 access token (Entra ID) whose roles grant the operation's role; \
                tenant-scoped endpoints answer with the caller's tenant's data only. Errors are \
                RFC 9457 problem+json with a stable `code`.",
        },
        "servers": [{"url": format!("/{}", catalog.route_prefix())}],
        "paths": paths,
        "components": components(policy),
    })
}

fn query_operation(endpoint: &Endpoint, method: Method, both: bool, policy: &AccessPolicy) -> Value {
    let route_params: Vec<&str> = endpoint.route().param_names().collect();
    let mut parameters: Vec<Value> = endpoint
        .params()
        .iter()
        .filter(|spec| method == Method::Get || route_params.contains(&spec.name()))
        .map(|spec| parameter(spec, route_params.contains(&spec.name())))
        .collect();
    let formats: Vec<&str> = endpoint.formats().iter().map(|format| format.name()).collect();
    if formats.len() > 1 {
        parameters.push(json!({
            "name": "format",
            "in": "query",
            "required": false,
            "description": "The response format (an Accept header works too).",
            "schema": {"type": "string", "enum": formats, "default": formats[0]},
        }));
    }
    let mut operation = json!({
        "operationId": operation_id(endpoint.name(), method, both),
        "summary": summary(endpoint.description()),
        "description": with_roles(endpoint.description(), endpoint.roles(), policy),
        "tags": ["query"],
        "x-chgate-endpoint": endpoint.name(),
        "security": [{"bearer": endpoint.roles()}],
        "parameters": parameters,
        "responses": query_responses(endpoint),
    });
    if method == Method::Post {
        let body_params: Vec<&ParamSpec> = endpoint
            .params()
            .iter()
            .filter(|spec| !route_params.contains(&spec.name()))
            .collect();
        operation["requestBody"] = json!({
            "required": body_params.iter().any(|spec| spec.is_required()),
            "description": "The parameters as one JSON object (arrays and values with commas go here).",
            "content": {"application/json": {"schema": object_schema(&body_params, None)}},
        });
    }
    operation
}

fn ingest_operation(endpoint: &IngestEndpoint, policy: &AccessPolicy) -> Value {
    let fields: Vec<&ParamSpec> = endpoint.fields().values().collect();
    let row = object_schema(&fields, endpoint.tenant_column());
    json!({
        "operationId": endpoint.name(),
        "summary": summary(endpoint.description()),
        "description": with_roles(endpoint.description(), endpoint.roles(), policy),
        "tags": ["ingest"],
        "x-chgate-endpoint": endpoint.name(),
        "security": [{"bearer": endpoint.roles()}],
        "parameters": [{
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "The batch's id: a batch sent again with the same key is stored once. \
                Without one the batch gets an id, returned as batch_id.",
            "schema": {"type": "string", "maxLength": 128},
        }],
        "requestBody": {
            "required": true,
            "description": format!(
                "At most {} rows and {} bytes; all or nothing. The tenant comes from the token.",
                endpoint.max_rows(),
                endpoint.max_bytes()
            ),
            "content": {
                "application/json": {"schema": {
                    "oneOf": [
                        {"type": "array", "items": row, "minItems": 1, "maxItems": endpoint.max_rows()},
                        row,
                    ],
                }},
                "application/x-ndjson": {"schema": {
                    "type": "string",
                    "description": "One row object per line, as in the JSON array.",
                }},
            },
        },
        "responses": {
            "202": {
                "description": "Durable: ClickHouse stored the rows, or the spool holds them (`spooled`).",
                "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
            },
            "400": problem("Invalid rows (listed in `errors`), an empty batch or a bad Idempotency-Key; nothing was written."),
            "401": problem("No token, or the token is not valid."),
            "403": problem("The token's roles do not grant the endpoint, or a row names another tenant."),
            "413": problem("Over the endpoint's row or byte limit; split the batch."),
            "429": problem("The caller's or the tenant's rate limit; retry after Retry-After."),
            "503": problem("Neither ClickHouse nor the spool can take the batch; retry with the same Idempotency-Key."),
        },
    })
}

fn builtin_operation(builtin: &Builtin) -> Value {
    match builtin.kind {
        BuiltinKind::Health => json!({
            "operationId": builtin.name,
            "summary": "Health: the catalog, ClickHouse, the signing keys and the secrets.",
            "description": "The Function App answers it without a token, for platform probes; \
                through the gateway, whose token check covers the whole API, any valid token \
                will do (no role is needed).",
            "tags": ["operations"],
            "x-chgate-endpoint": builtin.name,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "ok or degraded", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "unavailable", "content": {"application/json": {"schema": {"type": "object"}}}},
            },
        }),
    }
}

fn query_responses(endpoint: &Endpoint) -> Value {
    let mut content = Map::new();
    for format in endpoint.formats() {
        let (media, schema) = match format.name() {
            "json" => ("application/json", json!({"$ref": "#/components/schemas/QueryResult"})),
            "ndjson" => (
                "application/x-ndjson",
                json!({"type": "string", "description": "One result row as a JSON object per line."}),
            ),
            "csv" => (
                "text/csv",
                json!({"type": "string", "description": "A header line with the column names, then one line per row."}),
            ),
            _ => (
                "application/vnd.apache.parquet",
                json!({"type": "string", "contentEncoding": "binary"}),
            ),
        };
        content.insert(media.to_owned(), json!({"schema": schema}));
    }
    json!({
        "200": {
            "description": format!("The rows (at most {}).", endpoint.limits().max_rows),
            "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
            "content": content,
        },
        "400": problem("A parameter is missing or not valid (`param`, `expected` and `problem` say which and why)."),
        "401": problem("No token, or the token is not valid."),
        "403": problem("The token's roles do not grant the endpoint, or it carries no tenant."),
        "406": problem("None of the endpoint's formats is acceptable."),
        "422": problem("The result is over the endpoint's row limit; narrow the request."),
        "429": problem("The caller's or the tenant's rate limit; retry after Retry-After."),
        "503": problem("ClickHouse is unavailable or busy; retry after Retry-After."),
        "504": problem("The query ran out of time."),
    })
}

fn parameter(spec: &ParamSpec, in_path: bool) -> Value {
    let mut parameter = json!({
        "name": spec.name(),
        "in": if in_path { "path" } else { "query" },
        "required": in_path || spec.is_required(),
        "schema": spec.json_schema(),
    });
    if let Some(description) = parameter["schema"].get("description").cloned() {
        parameter["description"] = description;
    }
    if let Some(example) = typed_example(spec) {
        parameter["example"] = example;
    }
    if spec.ty().element().is_some() {
        // Repeated keys, or one comma-separated value.
        parameter["style"] = json!("form");
        parameter["explode"] = json!(true);
    }
    parameter
}

/// An object of `specs` as properties; `tenant_column` is described as the one the token sets.
fn object_schema(specs: &[&ParamSpec], tenant_column: Option<&str>) -> Value {
    let mut properties = Map::new();
    for spec in specs {
        let mut schema = spec.json_schema();
        if let (Some(example), Value::Object(map)) = (typed_example(spec), &mut schema) {
            map.insert("examples".into(), json!([example]));
        }
        properties.insert(spec.name().to_owned(), schema);
    }
    if let Some(column) = tenant_column {
        properties.insert(
            column.to_owned(),
            json!({
                "type": "string",
                "description": "Set from the caller's token; a row may repeat it but never change it.",
            }),
        );
    }
    let required: Vec<&str> = specs
        .iter()
        .filter(|spec| spec.is_required())
        .map(|spec| spec.name())
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The spec's example (written as query-string text) as the JSON value its schema describes:
/// numbers and booleans as such, arrays as arrays of their items; text stays as written.
fn typed_example(spec: &ParamSpec) -> Option<Value> {
    let text = spec.example()?;
    let typed = |value: &ParamValue, written: &str| match value {
        ParamValue::Bool(flag) => json!(flag),
        ParamValue::Int(number) => json!(number),
        ParamValue::UInt(number) => json!(number),
        ParamValue::Float(number) => json!(number),
        ParamValue::Null => Value::Null,
        ParamValue::Text(_) | ParamValue::Array(_) => Value::String(written.to_owned()),
    };
    Some(match spec.parse(RawValue::Query(&[text.to_owned()])).ok()? {
        ParamValue::Array(items) => {
            let written: Vec<&str> = if text.is_empty() {
                Vec::new()
            } else {
                text.split(',').collect()
            };
            Value::Array(
                items
                    .iter()
                    .zip(written)
                    .map(|(item, written)| typed(item, written))
                    .collect(),
            )
        }
        value => typed(&value, text),
    })
}

fn operation_id(name: &str, method: Method, both: bool) -> String {
    match method {
        Method::Post if both => format!("{name}_post"),
        _ => name.to_owned(),
    }
}

/// The first sentence of a description.
fn summary(description: &str) -> String {
    let first = description.split(". ").next().unwrap_or(description);
    first.trim_end_matches('.').to_owned()
}

/// The description with the roles the operation needs and the token claims granting them.
fn with_roles(description: &str, roles: &[String], policy: &AccessPolicy) -> String {
    let granted: Vec<String> = roles
        .iter()
        .map(|role| {
            let claims: Vec<String> = policy
                .grants()
                .iter()
                .filter(|grant| &grant.role == role)
                .map(|grant| format!("{} has any of {}", grant.claim, grant.any_of.join(", ")))
                .collect();
            if claims.is_empty() {
                role.clone()
            } else {
                format!("{role} (granted when {})", claims.join(", or "))
            }
        })
        .collect();
    format!("{description}\n\nRoles: {}.", granted.join("; "))
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    })
}

fn components(policy: &AccessPolicy) -> Value {
    let roles: Vec<String> = policy
        .roles()
        .map(|role| format!("`{}`: {}", role.name, role.description))
        .collect();
    json!({
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": format!(
                    "An access token from the deployment's issuer (Entra ID). An operation's \
                     security lists the roles that may call it. Roles: {}.",
                    roles.join("; ")
                ),
            },
        },
        "headers": {
            "RequestId": {
                "description": "The request's id (APIM's, or the W3C trace id): quote it when reporting a problem.",
                "schema": {"type": "string"},
            },
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details.",
                "required": ["type", "title", "status", "detail", "code"],
                "properties": {
                    "type": {"type": "string", "format": "uri"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string", "description": "What went wrong and what to fix."},
                    "code": {"type": "string", "description": "A stable code, such as invalid_param or rate_limited."},
                    "request_id": {"type": "string"},
                    "param": {"type": "string"},
                    "expected": {"type": "string"},
                    "problem": {"type": "string"},
                    "errors": {"type": "array", "items": {"$ref": "#/components/schemas/RowProblem"}},
                },
            },
            "RowProblem": {
                "type": "object",
                "required": ["row", "problem"],
                "properties": {
                    "row": {"type": "integer", "description": "The row's position in the request, from 1."},
                    "field": {"type": "string"},
                    "expected": {"type": "string"},
                    "problem": {"type": "string"},
                },
            },
            "Accepted": {
                "type": "object",
                "required": ["accepted", "batch_id", "spooled", "request_id"],
                "properties": {
                    "accepted": {"type": "integer", "description": "Rows accepted."},
                    "batch_id": {"type": "string", "description": "The Idempotency-Key, or the id given to the batch."},
                    "spooled": {"type": "boolean", "description": "The batch waits in the spool and will be inserted once ClickHouse takes it."},
                    "request_id": {"type": "string"},
                },
            },
            "QueryResult": {
                "type": "object",
                "description": "ClickHouse's JSON format: the columns, the rows and statistics.",
                "properties": {
                    "meta": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
                    }},
                    "data": {"type": "array", "items": {"type": "object"}},
                    "rows": {"type": "integer"},
                    "statistics": {"type": "object"},
                },
            },
        },
    })
}
