//! Serving a query endpoint: one handler for every endpoint in the catalog. Both ways the
//! Functions host can reach us (a forwarded HTTP request, or an invocation payload) end up in
//! [`start_query`], which checks the request, runs the query and holds back the first part of
//! the result so that a failure early in the result still gets an honest status.

use std::task::Poll;
use std::time::{Duration, Instant};

use actix_web::HttpMessage;
use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut, Data, Payload};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use futures_util::stream;

use super::disconnect::{ClientSocket, Watch};
use super::negotiate::choose_format;
use super::problem::{ApiError, rate_limit_headers};
use super::request_id::request_id;
use super::request_span::{TraceId, name_request};
use crate::access::{AccessPolicy, Caller, TokenError, TokenVerifier};
use crate::catalog::format::OutputFormat;
use crate::catalog::{BuiltinKind, Catalog, Endpoint, Method, RouteMatch};
use crate::query::limits::Admission;
use crate::query::{Answer, ExecError, Executor, LiveRest, QueryCall, RequestValues, bind};
use crate::telemetry::metrics;
use crate::text::shorten;

/// How long a request body may take to arrive (it is at most 2 MiB).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    pub catalog: Catalog,
    pub policy: AccessPolicy,
    pub verifier: TokenVerifier,
    pub executor: Executor,
    /// Where ingest batches wait when ClickHouse cannot take them.
    pub spool: Option<crate::ingest::spool::Spool>,
    /// The ClickHouse credentials (for the health report; the executor's runner holds them too).
    pub secrets: std::sync::Arc<crate::secrets::SecretStore>,
    /// Result bytes held back before the status is committed (see ARCHITECTURE.md, "No error
    /// behind a 200").
    pub response_buffer_bytes: usize,
    /// Each request's deadline, unless the caller asks for less.
    pub request_timeout: Duration,
}

/// One query request, however it arrived.
#[derive(Debug)]
pub struct QueryRequest<'a> {
    pub endpoint: &'a Endpoint,
    pub method: Method,
    pub route_params: Vec<(String, String)>,
    pub query_pairs: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub accept: Option<String>,
    /// The `Authorization` header (only a Bearer token there counts; never the query string).
    pub authorization: Option<String>,
    /// `X-Request-Timeout`: the caller's own time budget in seconds, if shorter than ours.
    pub timeout: Option<String>,
    /// When the request arrived: its deadline counts from here, body reading included.
    pub received: Instant,
    /// The W3C trace the request belongs to, carried into ClickHouse's `log_comment`.
    pub trace_id: Option<String>,
}

/// A query that has started answering.
#[derive(Debug)]
pub struct Started {
    pub format: OutputFormat,
    pub answer: Answer,
    /// The caller's share of its limits, held until the response is sent.
    pub admission: Admission,
}

/// Checks the request, then answers it from the cache or runs the query and reads its result
/// up to `buffer_limit` bytes, all within the request's deadline.
pub async fn start_query(
    state: &AppState,
    mut request: QueryRequest<'_>,
    request_id: &str,
    buffer_limit: usize,
    text_only: bool,
) -> Result<Started, ApiError> {
    let endpoint = request.endpoint;
    let timeout = request_timeout(request.timeout.as_deref(), state.request_timeout)?;
    let deadline = request.received + timeout;
    // Who is calling comes first: a caller without a valid token learns nothing else.
    let token = bearer_token(request.authorization.as_deref()).ok_or(TokenError::Missing)?;
    let claims = state.verifier.verify(token).await?;
    let caller = Caller::from_claims(&claims, &state.policy);
    let grant = caller.grant(endpoint)?;
    let span = tracing::Span::current();
    span.record("caller.role", grant.role().name.as_str());
    span.record("caller.tenant", grant.tenant().unwrap_or(""));
    span.record("request.id", request_id);
    let admission = state.executor.admit(grant.who()).map_err(ApiError::Limited)?;
    let format_param = take_format(&mut request.query_pairs)?;
    let format =
        choose_format(endpoint, format_param.as_deref(), request.accept.as_deref()).map_err(ApiError::NotAcceptable)?;
    if text_only && !format.is_text() {
        let text: Vec<&str> = endpoint
            .formats()
            .iter()
            .filter(|f| f.is_text())
            .map(|f| f.name())
            .collect();
        return Err(ApiError::NotAcceptable(format!(
            "{format} is binary and cannot travel in an invocation payload; choose one of: {}",
            text.join(", ")
        )));
    }
    let values = request_values(&request)?;
    let params = bind(endpoint, &request.route_params, &values)?;
    tracing::info!(
        endpoint.name = endpoint.name(),
        request.id = request_id,
        caller.role = %grant.role().name,
        caller.tenant = grant.tenant().unwrap_or(""),
        caller.subject_hash = %crate::access::caller::subject_hash(grant.subject()),
        "running query"
    );
    // Dropping the run at the deadline drops its ClickHouse response, which cancels the query.
    let call = QueryCall {
        grant: &grant,
        params: &params,
        format,
        query_id: request_id,
        trace_id: request.trace_id.as_deref(),
        deadline,
    };
    let run = state.executor.execute(call, buffer_limit);
    let answer = match tokio::time::timeout_at(deadline.into(), run).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return Err(query_failure(&error, endpoint, request_id)),
        Err(_) => {
            tracing::warn!(
                endpoint.name = endpoint.name(),
                request.id = request_id,
                "deadline exceeded"
            );
            return Err(ApiError::DeadlineExceeded(timeout));
        }
    };
    Ok(Started {
        format,
        answer,
        admission,
    })
}

/// The request's time budget: ours, or the caller's if shorter.
pub(super) fn request_timeout(header: Option<&str>, ours: Duration) -> Result<Duration, ApiError> {
    let Some(text) = header else {
        return Ok(ours);
    };
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| ApiError::InvalidTimeout(shorten(text)))?;
    // Under a millisecond is no budget at all: a mistake, not a request.
    if !(seconds.is_finite() && seconds >= 0.001) {
        return Err(ApiError::InvalidTimeout(shorten(text)));
    }
    Ok(ours.min(Duration::from_secs_f64(seconds.min(ours.as_secs_f64()))))
}

fn query_failure(error: &ExecError, endpoint: &Endpoint, request_id: &str) -> ApiError {
    let api_error = ApiError::from_exec(error, request_id);
    // Logged once, here, with the full cause: the response says only what the caller may see.
    tracing::warn!(endpoint.name = endpoint.name(), request.id = request_id, error = %error, code = api_error.status_and_code().1, "query failed");
    api_error
}

/// Reads a request body up to `limit` bytes; more is refused (and not read further).
pub async fn read_body(payload: Payload, limit: usize) -> Result<Bytes, ApiError> {
    read_body_sized(payload, limit, None).await
}

/// [`read_body`], with room made up front for a body announced as `expected` bytes (at most
/// `limit`), so a large body is not copied each time the buffer grows.
pub async fn read_body_sized(mut payload: Payload, limit: usize, expected: Option<usize>) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::with_capacity(expected.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidBody("the request body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Removes `format` from the query-string pairs.
fn take_format(pairs: &mut Vec<(String, String)>) -> Result<Option<String>, ApiError> {
    let mut found = None;
    let mut repeated = false;
    pairs.retain(|(key, value)| {
        if key == "format" {
            repeated |= found.is_some();
            found = Some(value.clone());
            false
        } else {
            true
        }
    });
    if repeated {
        return Err(ApiError::NotAcceptable("give ?format= once".into()));
    }
    Ok(found)
}

/// GET carries parameters in the query string; POST in a JSON object body.
fn request_values(request: &QueryRequest<'_>) -> Result<RequestValues, ApiError> {
    match request.method {
        Method::Get => {
            if !request.body.is_empty() {
                return Err(ApiError::InvalidBody(
                    "a GET request has no body; send parameters in the query string or use POST".into(),
                ));
            }
            Ok(RequestValues::Query(request.query_pairs.clone()))
        }
        Method::Post => {
            if let Some((key, _)) = request.query_pairs.first() {
                return Err(ApiError::InvalidBody(format!(
                    "with POST, parameters go in the JSON body; move `{}` out of the query string",
                    shorten(key)
                )));
            }
            if request.body.iter().all(u8::is_ascii_whitespace) {
                return Ok(RequestValues::Json(serde_json::Map::new()));
            }
            let is_json = request.content_type.as_deref().is_none_or(|ct| {
                let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                media == "application/json" || media.ends_with("+json")
            });
            if !is_json {
                return Err(ApiError::InvalidBody(
                    "send parameters as a JSON object with Content-Type: application/json".into(),
                ));
            }
            match serde_json::from_slice::<serde_json::Value>(&request.body) {
                Ok(serde_json::Value::Object(object)) => Ok(RequestValues::Json(object)),
                Ok(_) => Err(ApiError::InvalidBody(
                    "the body must be a JSON object of parameter values".into(),
                )),
                Err(error) => Err(ApiError::InvalidBody(format!("the body is not valid JSON: {error}"))),
            }
        }
    }
}

/// The handler for forwarded requests: `/<routePrefix>/<route>`.
pub async fn run_query(request: HttpRequest, payload: Payload, state: Data<AppState>) -> HttpResponse {
    let received = Instant::now();
    let request_id = request_id(&request);
    let prefix = state.catalog.route_prefix();
    let path = request.path().trim_start_matches('/');
    let below_prefix = if prefix.is_empty() {
        Some(path)
    } else {
        path.strip_prefix(prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let Some(route_path) = below_prefix else {
        return ApiError::NotFound(shorten(request.path())).to_response(&request_id);
    };
    let method = match *request.method() {
        actix_web::http::Method::GET => Some(Method::Get),
        actix_web::http::Method::POST => Some(Method::Post),
        _ => None,
    };
    let Some(method) = method else {
        // A method no query endpoint answers: 405 if the path exists, else 404.
        let allowed = state.catalog.methods_at(route_path);
        let error = if allowed.is_empty() {
            ApiError::NotFound(shorten(request.path()))
        } else {
            method_not_allowed(&request, allowed)
        };
        return error.to_response(&request_id);
    };
    if let Some(builtin) = state.catalog.match_builtin(route_path, method) {
        name_request(&request, &builtin.name, None);
        return match builtin.kind {
            BuiltinKind::Health => super::health::report(&state).await,
        };
    }
    if let Some(ingest) = state.catalog.match_ingest(route_path, method) {
        name_request(&request, ingest.name(), Some(&format!("/{prefix}/{}", ingest.route())));
        return super::ingest::ingest(&state, &request, payload, ingest, &request_id, received).await;
    }
    // A client that stops sending mid-body must not hold its connection and buffer forever.
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(payload, super::MAX_BODY_BYTES)).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return error.to_response(&request_id),
        Err(_) => return ApiError::BodyTimeout(BODY_READ_TIMEOUT).to_response(&request_id),
    };
    let (endpoint, route_params) = match state.catalog.match_route(route_path, method) {
        RouteMatch::Found { endpoint, route_params } => (endpoint, route_params),
        RouteMatch::MethodNotAllowed(allowed) => return method_not_allowed(&request, allowed).to_response(&request_id),
        RouteMatch::NotFound => return ApiError::NotFound(shorten(request.path())).to_response(&request_id),
    };
    name_request(
        &request,
        endpoint.name(),
        Some(&format!("/{prefix}/{}", endpoint.route())),
    );
    let query_request = QueryRequest {
        endpoint,
        method,
        trace_id: request.extensions().get::<TraceId>().map(|id| id.0.clone()),
        route_params: decode_route_params(route_params),
        query_pairs: match query_pairs(request.query_string()) {
            Ok(pairs) => pairs,
            Err(error) => return error.to_response(&request_id),
        },
        content_type: header_text(&request, header::CONTENT_TYPE.as_str()),
        body,
        accept: header_text(&request, header::ACCEPT.as_str()),
        authorization: header_text(&request, header::AUTHORIZATION.as_str()),
        timeout: header_text(&request, "x-request-timeout"),
        received,
    };
    let if_none_match = header_text(&request, header::IF_NONE_MATCH.as_str());
    // In a block of its own: the work borrows the request id, which the response then takes.
    let mut watch = None;
    let outcome = {
        let mut work = std::pin::pin!(start_query(
            &state,
            query_request,
            &request_id,
            state.response_buffer_bytes,
            false,
        ));
        // Most answers (cache hits, refusals) are ready at the first poll: only work that has to
        // wait is raced against the client's socket, which costs a descriptor and a registration.
        let first_poll = futures_util::poll!(&mut work);
        if first_poll.is_pending() {
            watch = request.conn_data::<ClientSocket>().and_then(ClientSocket::watch);
        }
        match (first_poll, &watch) {
            (Poll::Ready(outcome), _) => outcome,
            (Poll::Pending, None) => work.await,
            (Poll::Pending, Some(watch)) => tokio::select! {
                outcome = &mut work => outcome,
                () = watch.gone() => {
                    // Dropping the work dropped the ClickHouse response: the query is cancelled.
                    tracing::info!(endpoint.name = endpoint.name(), request.id = %request_id, "client went away; query cancelled");
                    // Never sent: there is nobody to send it to (nginx logs this as 499).
                    return HttpResponse::new(
                        actix_web::http::StatusCode::from_u16(499).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
                    );
                }
            },
        }
    };
    match outcome {
        Ok(started) => respond(
            started,
            request_id,
            endpoint.name().to_owned(),
            if_none_match.as_deref(),
            || watch.or_else(|| request.conn_data::<ClientSocket>().and_then(ClientSocket::watch)),
        ),
        Err(error) => error.to_response(&request_id),
    }
}

fn method_not_allowed(request: &HttpRequest, allowed: Vec<Method>) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        allowed,
    }
}

pub(super) fn header_text(request: &HttpRequest, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Query-string pairs, percent-decoded (`+` as space), keys repeated as often as sent. Bytes
/// that are not UTF-8 are refused: silently replacing them would change the caller's value.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |part: &str| -> Result<String, ApiError> {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| ApiError::InvalidEncoding(shorten(part)))
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

fn decode_route_params(params: Vec<(String, String)>) -> Vec<(String, String)> {
    params
        .into_iter()
        .map(|(name, value)| {
            (
                name,
                percent_encoding::percent_decode_str(&value)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

/// The HTTP response: a cached entry (or 304 when the caller has it), a result that fit in
/// the buffer, or a streamed one.
fn respond(
    started: Started,
    request_id: String,
    endpoint_name: String,
    if_none_match: Option<&str>,
    watch: impl FnOnce() -> Option<Watch>,
) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_TYPE, started.format.content_type()))
        .insert_header(("X-Request-Id", request_id.clone()));
    if let Some(remaining) = started.admission.remaining {
        let reset = remaining.until_full();
        for header in rate_limit_headers(remaining.scope, remaining.rate, remaining.remaining, reset) {
            response.insert_header(header);
        }
    }
    let (head, rest) = match started.answer {
        Answer::Cached { entry, status, policy } => {
            tracing::Span::current().record("cache", status.as_str());
            metrics::cache_lookup(&endpoint_name, status.as_str());
            response
                .insert_header(("X-Cache", status.as_str()))
                .insert_header((header::ETAG, entry.etag.clone()))
                .insert_header((header::AGE, entry.age().as_secs().to_string()))
                // Private: entries are per tenant and role, so only the caller's own cache may
                // keep them (APIM's cache-lookup needs allow-private-response-caching).
                .insert_header((
                    header::CACHE_CONTROL,
                    format!(
                        "private, max-age={}, stale-while-revalidate={}",
                        entry.fresh_left().as_secs(),
                        policy.stale.as_secs()
                    ),
                ));
            if if_none_match.is_some_and(|tags| etag_matches(tags, &entry.etag)) {
                response.status(actix_web::http::StatusCode::NOT_MODIFIED);
                return response.finish();
            }
            return response.body(entry.body.clone());
        }
        Answer::Live { head, rest } => (head, rest),
    };
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    let Some(rest) = rest else {
        let body: Vec<u8> = head.concat();
        return response.body(body);
    };
    // A streamed result holds a query slot and the caller's shares until it ends: a client
    // that leaves mid-stream ends it at once, not at the next chunk (which may never come).
    let streaming = Streaming {
        rest,
        _admission: started.admission,
        watch: watch(),
    };
    let head = stream::iter(head.into_iter().map(Ok::<Bytes, actix_web::Error>));
    let tail = stream::unfold(Some(streaming), move |state| {
        let request_id = request_id.clone();
        let endpoint_name = endpoint_name.clone();
        async move {
            let mut streaming = state?;
            let next = match &streaming.watch {
                Some(watch) => tokio::select! {
                    next = streaming.rest.next() => next,
                    () = watch.gone() => {
                        tracing::info!(endpoint.name = %endpoint_name, request.id = %request_id, "client went away mid-stream; query cancelled");
                        return Some((Err(actix_web::error::ErrorBadRequest("client went away")), None));
                    }
                },
                None => streaming.rest.next().await,
            };
            match next {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(streaming))),
                Ok(None) => None,
                Err(error) => {
                    // The status is already sent: ending the body abnormally (no final chunk)
                    // is the signal every HTTP client reports as a failed transfer.
                    tracing::error!(endpoint.name = %endpoint_name, request.id = %request_id, error = %error, "query failed after the response started; aborting the body");
                    Some((
                        Err(actix_web::error::ErrorInternalServerError("result stream failed")),
                        None,
                    ))
                }
            }
        }
    });
    response.streaming(futures_util::StreamExt::chain(head, tail))
}

/// The live part of a streamed response.
struct Streaming {
    rest: LiveRest,
    /// Held for its drop: the caller's and tenant's concurrency shares.
    _admission: Admission,
    watch: Option<Watch>,
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, as RFC 9110 asks for it).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    if_none_match.trim() == "*" || if_none_match.split(',').any(|tag| bare(tag) == bare(etag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_can_shorten_the_deadline_but_never_lengthen_it() {
        let ours = Duration::from_secs(60);
        assert_eq!(request_timeout(None, ours).ok(), Some(ours));
        assert_eq!(
            request_timeout(Some(" 2.5 "), ours).ok(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(request_timeout(Some("600"), ours).ok(), Some(ours));
        for bad in ["0", "-1", "soon", "NaN", "inf", "", "1e-10"] {
            assert!(
                matches!(request_timeout(Some(bad), ours), Err(ApiError::InvalidTimeout(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_a_list_or_a_star() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("W/\"abc\"", etag));
        assert!(etag_matches("\"x\", \"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("\"abcd\"", etag));
        assert!(!etag_matches("", etag));
    }
}
