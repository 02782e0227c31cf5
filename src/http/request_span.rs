//! One server span per request (a Request item in Application Insights), continuing the
//! caller's `traceparent`, and the request metrics. The handlers fill in what only they know:
//! the endpoint (the operation name), the caller's role and tenant, the cache's answer and
//! the problem code.
//!
//! Recorded on purpose: the endpoint's route template, never the path (route parameters are
//! caller values) or the query string; no header, so no token.

use std::borrow::Cow;
use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use tracing::Instrument;
use tracing::field::Empty;

use actix_web::web::Data;

use super::AppState;
use crate::catalog::{Method, RouteMatch};
use crate::telemetry::{metrics, trace};

/// The trace a request belongs to (32 hex digits), for ClickHouse's `log_comment`.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// The status the caller gets when it differs from the HTTP response's: an invocation
/// payload's envelope is always 200, whatever `Outputs.res.statusCode` says.
#[derive(Debug, Clone, Copy)]
pub struct CallerStatus(pub u16);

/// What the request turned out to be (the endpoint's name, or a built-in's), for metrics.
#[derive(Debug, Clone)]
pub struct Operation(pub String);

pub async fn request_span(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // The span's name is fixed when it is first entered, so the endpoint is looked up here,
    // ahead of the handler (a walk over a handful of compiled routes).
    let operation = request
        .app_data::<Data<AppState>>()
        .map_or(Cow::Borrowed("unmatched"), |state| operation_of(state, &request));
    let span = tracing::info_span!(
        "request",
        otel.name = %operation,
        otel.kind = "server",
        otel.status_code = Empty,
        ai.operation.name = %operation,
        http.request.method_original = known_method(request.method()),
        http.route = Empty,
        http.response.status_code = Empty,
        request.id = Empty,
        endpoint = Empty,
        caller.role = Empty,
        caller.tenant = Empty,
        cache = Empty,
        error.code = Empty,
    );
    if let Some(trace_id) = trace::continue_trace(&span, request.headers()) {
        request.extensions_mut().insert(TraceId(trace_id));
    }
    let result = next.call(request).instrument(span.clone()).await;
    let status = match &result {
        Ok(response) => response
            .response()
            .extensions()
            .get::<CallerStatus>()
            .map_or(response.status().as_u16(), |status| status.0),
        Err(error) => error.as_response_error().status_code().as_u16(),
    };
    span.record("http.response.status_code", status);
    // The exporter reports success from the span status alone; 4xx are the caller's, not ours.
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    let operation = result
        .as_ref()
        .ok()
        .and_then(|response| response.request().extensions().get::<Operation>().map(|o| o.0.clone()));
    metrics::request_done(
        operation.as_deref().unwrap_or(operation_default(status)),
        status,
        started.elapsed().as_secs_f64(),
    );
    result
}

/// The method, when it is a standard one; any other text a caller sends is not recorded.
fn known_method(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

fn operation_default(status: u16) -> &'static str {
    if status == 404 { "unmatched" } else { "other" }
}

/// What a request will reach, by name: an endpoint, a built-in function, the readiness
/// probe, or "unmatched". Never the path itself (route parameters are caller values).
fn operation_of(state: &AppState, request: &ServiceRequest) -> Cow<'static, str> {
    let path = request.path().trim_start_matches('/');
    if path.is_empty() {
        return Cow::Borrowed("readiness");
    }
    let method = match *request.method() {
        actix_web::http::Method::GET => Method::Get,
        actix_web::http::Method::POST => Method::Post,
        _ => return Cow::Borrowed("unmatched"),
    };
    let prefix = state.catalog.route_prefix();
    match path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/')) {
        Some(route_path) => {
            if let Some(builtin) = state.catalog.match_builtin(route_path, method) {
                return Cow::Owned(builtin.name.clone());
            }
            match state.catalog.match_route(route_path, method) {
                RouteMatch::Found { endpoint, .. } => Cow::Owned(endpoint.name().to_owned()),
                _ => Cow::Borrowed("unmatched"),
            }
        }
        // An invocation payload: POST /<FunctionName>.
        None => match state.catalog.by_function_name(path) {
            Some(endpoint) if method == Method::Post => Cow::Owned(endpoint.name().to_owned()),
            _ => Cow::Borrowed("unmatched"),
        },
    }
}

/// Records on the current request's span and metrics what the request turned out to be.
pub fn name_request(request: &actix_web::HttpRequest, name: &str, route: Option<&str>) {
    let span = tracing::Span::current();
    span.record("endpoint", name);
    if let Some(route) = route {
        span.record("http.route", route);
    }
    request.extensions_mut().insert(Operation(name.to_owned()));
}
