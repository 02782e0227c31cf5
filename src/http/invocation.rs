//! The Functions host's invocation payloads: without `enableForwardingHttpRequest` the host
//! POSTs `{Data: {req: {...}}, Metadata}` to `/<FunctionName>` and expects 200 with
//! `{Outputs: {res: {statusCode, body, headers}}, Logs, ReturnValue}`. The real status goes
//! inside: a non-2xx answer would make the host fail the invocation.

use std::collections::HashMap;

use actix_web::web::{Bytes, Data, Json, Path};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Value, json};

use super::problem::ApiError;
use super::query::{AppState, QueryRequest, start_query};
use crate::catalog::Method;
use crate::catalog::format::OutputFormat;

/// The host's invocation request (only what an HTTP trigger sends is read).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationRequest {
    #[serde(default)]
    data: HashMap<String, Value>,
}

/// `Data.req`: the HTTP request the host received.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HostHttpRequest {
    #[serde(default)]
    method: String,
    #[serde(default)]
    query: HashMap<String, Value>,
    #[serde(default)]
    headers: HashMap<String, Value>,
    #[serde(default)]
    params: HashMap<String, Value>,
    #[serde(default)]
    body: Option<Value>,
}

impl HostHttpRequest {
    /// A header's first value (the host sends each as a list; header names are case-blind).
    fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name))?.1;
        match value {
            Value::Array(values) => values.first().and_then(Value::as_str).map(str::to_owned),
            Value::String(text) => Some(text.clone()),
            _ => None,
        }
    }
}

/// `POST /<FunctionName>` from the host.
pub async fn invoke_function(
    function: Path<String>,
    request: HttpRequest,
    payload: Json<InvocationRequest>,
    state: Data<AppState>,
) -> HttpResponse {
    let Some(endpoint) = state.catalog.by_function_name(&function) else {
        return HttpResponse::NotFound().json(json!({"error": format!("no function named {:?}", function.as_str())}));
    };
    let host_request: HostHttpRequest = payload
        .into_inner()
        .data
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("req"))
        .and_then(|(_, value)| serde_json::from_value(value).ok())
        .unwrap_or_default();
    let request_id = invocation_request_id(&request, &host_request);
    let method = match host_request.method.to_ascii_uppercase().as_str() {
        "GET" => Some(Method::Get),
        "POST" => Some(Method::Post),
        _ => None,
    };
    let outcome = match method.filter(|m| endpoint.methods().contains(m)) {
        None => Err(ApiError::MethodNotAllowed {
            method: host_request.method.clone(),
            allowed: endpoint.methods().to_vec(),
        }),
        Some(method) => {
            let query_request = QueryRequest {
                endpoint,
                method,
                route_params: string_map(&host_request.params),
                query_pairs: string_map(&host_request.query),
                content_type: host_request.header("content-type"),
                body: body_bytes(host_request.body.as_ref()),
                accept: host_request.header("accept"),
                authorization: host_request.header("authorization"),
            };
            run_whole(&state, query_request, &request_id).await
        }
    };
    let (status, content_type, body) = match outcome {
        Ok((format, body)) => (200, format.content_type().to_owned(), body),
        Err(error) => {
            let status = error.status_and_code().0.as_u16();
            (
                status,
                "application/problem+json".to_owned(),
                error.body(&request_id).to_string(),
            )
        }
    };
    HttpResponse::Ok().json(json!({
        "Outputs": { "res": {
            "statusCode": status.to_string(),
            "body": body,
            "headers": { "Content-Type": content_type, "X-Request-Id": request_id },
        }},
        "Logs": [],
        "ReturnValue": Value::Null,
    }))
}

/// Runs the query and reads the whole result: the payload carries the body as one string.
async fn run_whole(
    state: &AppState,
    request: QueryRequest<'_>,
    request_id: &str,
) -> Result<(OutputFormat, String), ApiError> {
    let max_bytes = usize::try_from(request.endpoint.limits().max_bytes).unwrap_or(usize::MAX);
    let endpoint = request.endpoint;
    let started = start_query(state, request, request_id, max_bytes.saturating_add(1)).await?;
    if started.rest.is_some() {
        return Err(ApiError::ResultTooLarge(format!("more than {max_bytes} bytes")));
    }
    if !started.format.is_text() {
        return Err(ApiError::NotAcceptable(format!(
            "{} is binary and cannot travel in an invocation payload; choose one of: {}",
            started.format,
            endpoint
                .formats()
                .iter()
                .filter(|f| f.is_text())
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let body = String::from_utf8(started.head.concat()).map_err(|_| ApiError::Internal)?;
    Ok((started.format, body))
}

fn invocation_request_id(request: &HttpRequest, host_request: &HostHttpRequest) -> String {
    // The caller's id (among the forwarded request's headers) wins; then the host's
    // invocation id; then a new one.
    let invocation_id = request
        .headers()
        .get("x-azure-functions-invocationid")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    super::request_id::from_headers(|name| {
        host_request.header(name).or_else(|| {
            if name == "x-request-id" {
                invocation_id.clone()
            } else {
                None
            }
        })
    })
}

/// `{k: "v"}` (or `{k: ["v1", "v2"]}`) → pairs; the host joins repeated query keys with commas.
fn string_map(map: &HashMap<String, Value>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (key, value) in map {
        match value {
            Value::String(text) => pairs.push((key.clone(), text.clone())),
            Value::Array(values) => {
                pairs.extend(
                    values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|text| (key.clone(), text.to_owned())),
                );
            }
            Value::Null => {}
            other => pairs.push((key.clone(), other.to_string())),
        }
    }
    pairs.sort();
    pairs
}

/// The host sends a text body as a string, and JSON bodies sometimes already parsed.
fn body_bytes(body: Option<&Value>) -> Bytes {
    match body {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(other) => Bytes::from(other.to_string()),
    }
}
