//! The Functions host's invocation payloads: without `enableForwardingHttpRequest` the host
//! POSTs `{Data: {req: {...}}, Metadata}` to `/<FunctionName>` and expects 200 with
//! `{Outputs: {res: {statusCode, body, headers}}, Logs, ReturnValue}`. The real status goes
//! inside: a non-2xx answer would make the host fail the invocation.

use std::collections::HashMap;

use actix_web::HttpMessage;
use actix_web::web::{Bytes, Data, Path, Payload};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Value, json};

use super::MAX_BODY_BYTES;
use super::problem::ApiError;
use super::query::{AppState, QueryRequest, read_body, start_query};
use crate::catalog::Method;
use crate::catalog::format::OutputFormat;
use crate::query::Answer;
use crate::text::shorten;

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

/// `POST /<FunctionName>` from the host. Whatever happens, the answer is a 200 envelope: the
/// host fails an invocation whose own status is not 2xx.
pub async fn invoke_function(
    function: Path<String>,
    request: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> HttpResponse {
    let received = std::time::Instant::now();
    if let Some(replay) = state.catalog.replay_by_name(&function) {
        return replay_spooled(&state, &replay.binding, payload).await;
    }
    let Some(endpoint) = state.catalog.by_function_name(&function) else {
        return HttpResponse::NotFound().json(json!({"error": format!("no function named {:?}", shorten(&function))}));
    };
    super::request_span::name_request(&request, endpoint.name(), None);
    let host_request = match read_body(payload, MAX_BODY_BYTES)
        .await
        .and_then(|body| parse_invocation(&body))
    {
        Ok(host_request) => host_request,
        Err(error) => {
            let request_id = super::request_id::request_id(&request);
            return envelope(&request_id, Err(error));
        }
    };
    let request_id = invocation_request_id(&request, &host_request);
    let method = match host_request.method.to_ascii_uppercase().as_str() {
        "GET" => Some(Method::Get),
        "POST" => Some(Method::Post),
        _ => None,
    };
    let outcome = match method.filter(|m| endpoint.methods().contains(m)) {
        None => Err(ApiError::MethodNotAllowed {
            method: shorten(&host_request.method),
            allowed: endpoint.methods().to_vec(),
        }),
        Some(method) => {
            // Only the route's own parameters come from `Params`; anything else there is not
            // the caller's to set through a side door.
            let route_names: Vec<&str> = endpoint.route().param_names().collect();
            let route_params = string_map(&host_request.params)
                .into_iter()
                .filter(|(name, _)| route_names.contains(&name.as_str()))
                .collect();
            let query_request = QueryRequest {
                endpoint,
                method,
                route_params,
                query_pairs: string_map(&host_request.query),
                content_type: host_request.header("content-type"),
                body: body_bytes(host_request.body.as_ref()),
                accept: host_request.header("accept"),
                authorization: host_request.header("authorization"),
                timeout: host_request.header("x-request-timeout"),
                received,
                trace_id: request
                    .extensions()
                    .get::<super::request_span::TraceId>()
                    .map(|id| id.0.clone()),
            };
            run_whole(&state, query_request, &request_id).await
        }
    };
    envelope(&request_id, outcome)
}

/// The payload's `Data.req`, or why it cannot be read.
fn parse_invocation(body: &[u8]) -> Result<HostHttpRequest, ApiError> {
    let invocation: InvocationRequest = serde_json::from_slice(body)
        .map_err(|error| ApiError::InvalidBody(format!("the invocation payload is not valid JSON: {error}")))?;
    let req = invocation
        .data
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("req"))
        .ok_or_else(|| ApiError::InvalidBody("the invocation payload has no Data.req".into()))?;
    serde_json::from_value(req.1)
        .map_err(|error| ApiError::InvalidBody(format!("Data.req is not an HTTP request: {error}")))
}

/// The host's response envelope: the result, or the problem with the headers the forwarded
/// response would have had.
fn envelope(request_id: &str, outcome: Result<(OutputFormat, String), ApiError>) -> HttpResponse {
    let (status, mut headers, body) = match outcome {
        Ok((format, body)) => (200, serde_json::Map::new(), (format.content_type().to_owned(), body)),
        Err(error) => {
            error.observe();
            let status = error.status_and_code().0.as_u16();
            let headers = error
                .extra_headers()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Value::String(value)))
                .collect();
            (
                status,
                headers,
                (
                    "application/problem+json".to_owned(),
                    error.body(request_id).to_string(),
                ),
            )
        }
    };
    headers.insert("Content-Type".into(), Value::String(body.0));
    headers.insert("X-Request-Id".into(), Value::String(request_id.to_owned()));
    let mut response = HttpResponse::Ok().json(json!({
        "Outputs": { "res": { "statusCode": status.to_string(), "body": body.1, "headers": headers } },
        "Logs": [],
        "ReturnValue": Value::Null,
    }));
    // The host's envelope is always 200; telemetry reports the caller's status.
    response
        .extensions_mut()
        .insert(super::request_span::CallerStatus(status));
    response
}

/// Runs the query and reads the whole result: the payload carries the body as one string, so
/// only text formats, and at most `INVOCATION_RESULT_BYTES`.
async fn run_whole(
    state: &AppState,
    request: QueryRequest<'_>,
    request_id: &str,
) -> Result<(OutputFormat, String), ApiError> {
    let started = start_query(state, request, request_id, INVOCATION_RESULT_BYTES + 1, true).await?;
    let whole = match started.answer {
        Answer::Cached { entry, .. } => Some(entry.body.to_vec()),
        Answer::Live { head, rest: None } => Some(head.concat()),
        Answer::Live { rest: Some(_), .. } => None,
    };
    let body = whole
        .filter(|body| body.len() <= INVOCATION_RESULT_BYTES)
        .ok_or_else(|| {
            ApiError::ResultTooLarge(format!(
                "over {INVOCATION_RESULT_BYTES} bytes, the most an invocation payload carries; use a forwarded request"
            ))
        })?;
    let body = String::from_utf8(body)
        .map_err(|_| ApiError::NotAcceptable("the result is not UTF-8 text; choose json, ndjson or csv".into()))?;
    Ok((started.format, body))
}

/// The largest result carried inside an invocation payload (the whole payload is held in memory).
pub const INVOCATION_RESULT_BYTES: usize = 16 * 1024 * 1024;

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

/// A spool queue message from the host's queue trigger, replayed into ClickHouse. 200 when the
/// rows are in, or when the batch has been sent back to the spool (ClickHouse could not take
/// it) or moved to the poison queue (it cannot succeed): either way the host deletes the
/// original. 500 only when the message cannot be read or storage fails: then the host tries
/// again.
async fn replay_spooled(state: &AppState, binding: &str, payload: Payload) -> HttpResponse {
    let outcome = async {
        let body = read_body(payload, MAX_BODY_BYTES).await.map_err(|error| error.to_string())?;
        let invocation: Value =
            serde_json::from_slice(&body).map_err(|_| "the invocation payload is not JSON".to_owned())?;
        let dequeue_count = invocation["Metadata"]["DequeueCount"].as_u64().unwrap_or(0);
        let batch = crate::ingest::replay::from_invocation(&invocation, binding)?;
        let spool = state
            .spool
            .as_ref()
            .ok_or_else(|| "no spool is configured (CHGATE_SPOOL_QUEUE_SERVICE_URI)".to_owned())?;
        let replayed = match state.executor.service_client() {
            Ok(client) => crate::ingest::replay::replay(&state.catalog, &client, spool, &batch).await,
            Err(error) => Err(crate::ingest::replay::ReplayError::Insert(error)),
        };
        match replayed {
            Ok(()) => {
                tracing::info!(endpoint.name = %batch.endpoint, batch.id = %batch.batch_id, rows = batch.rows, dequeue_count, "spooled batch replayed");
                Ok::<String, String>(format!("replayed batch {} ({} rows)", batch.batch_id, batch.rows))
            }
            // Handled here rather than by the host's retries: the host's poison queue keeps a
            // message seven days at most, and a batch answered 202 must never expire.
            Err(error) if error.is_transient() => {
                let delay = crate::ingest::replay::backoff(batch.attempt);
                tracing::warn!(batch.id = %batch.batch_id, error = %error, retry_in = ?delay, "replay failed; the batch goes back to the spool");
                spool.requeue(batch, delay).await.map_err(|e| e.to_string())?;
                Ok(format!("replay failed ({error}); requeued"))
            }
            Err(error) => {
                tracing::error!(batch.id = %batch.batch_id, error = %error, "replay refused; the batch goes to the poison queue");
                spool.to_poison(&batch).await.map_err(|e| e.to_string())?;
                Ok(format!("replay refused ({error}); moved to the poison queue"))
            }
        }
    }
    .await;
    match outcome {
        Ok(log) => HttpResponse::Ok().json(json!({ "Outputs": {}, "Logs": [log], "ReturnValue": Value::Null })),
        Err(error) => {
            tracing::warn!(error = %error, "replaying a spooled batch failed; the host will retry it");
            HttpResponse::InternalServerError()
                .json(json!({ "Outputs": {}, "Logs": [format!("replay failed: {error}")], "ReturnValue": Value::Null }))
        }
    }
}
