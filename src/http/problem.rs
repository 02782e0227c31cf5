//! The one error type of the HTTP edge and its table of statuses and stable codes. Every
//! error leaves as RFC 9457 `application/problem+json`; a 5xx never carries SQL, credentials
//! or ClickHouse's text, only the request id to find the log line.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder};
use serde_json::json;

use crate::access::limits::Rate;
use crate::access::{AccessError, TokenError};
use crate::catalog::Method;
use crate::query::limits::{Refusal, Scope};
use crate::query::{BindError, ExecError, QueryError};

/// The RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers): the
/// bucket as a quota of `burst` requests per the time it takes to refill, and what is left.
pub fn rate_limit_headers(scope: Scope, rate: Rate, remaining: u32, reset: Duration) -> [(&'static str, String); 2] {
    let window = whole_seconds(rate.interval * rate.burst.get());
    [
        (
            "RateLimit-Policy",
            format!("\"{}\";q={};w={window}", scope.name(), rate.burst.get()),
        ),
        (
            "RateLimit",
            format!(
                "\"{}\";r={remaining};t={}",
                scope.name(),
                reset.as_secs() + u64::from(reset.subsec_nanos() > 0)
            ),
        ),
    ]
}

/// Seconds a caller should wait before retrying when ClickHouse is unavailable.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Param(#[from] BindError),
    #[error("{0}")]
    InvalidBody(String),
    #[error("the query string is not valid UTF-8 after percent-decoding (near {0:?}); encode text as UTF-8")]
    InvalidEncoding(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("no endpoint at {0}")]
    NotFound(String),
    #[error("{method} is not allowed here; allowed: {}", allowed_list(.allowed))]
    MethodNotAllowed { method: String, allowed: Vec<Method> },
    #[error("{0}")]
    NotAcceptable(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("another request with id {0} is running; send a unique X-Request-Id")]
    DuplicateRequestId(String),
    #[error("the result is larger than this endpoint allows ({0}); narrow the request")]
    ResultTooLarge(String),
    #[error("ClickHouse rejected a parameter value ({0}); check the values against the endpoint's documentation")]
    ParamRejected(String),
    #[error("the query did not finish within the endpoint's time limit")]
    Timeout,
    #[error("your tenant's ClickHouse quota is used up for now; retry later")]
    QuotaExceeded,
    #[error("ClickHouse is unavailable; retry later")]
    Unavailable,
    #[error("the service has no ClickHouse credentials yet (its secret store has not answered); retry later")]
    CredentialsUnavailable,
    #[error("ClickHouse rejected the service's credentials; retry later (operators: see the rotation runbook)")]
    CredentialsRejected,
    #[error("ClickHouse is unavailable (it failed repeatedly just now); retry after {} s", whole_seconds(*.0))]
    CircuitOpen(Duration),
    #[error("{}", refusal_text(.0))]
    Limited(Refusal),
    #[error("the request did not finish within its deadline of {0:?}; narrow it or allow more time")]
    DeadlineExceeded(Duration),
    #[error("X-Request-Timeout must be a number of seconds, at least 0.001, such as 2.5; got {0:?}")]
    InvalidTimeout(String),
    #[error("the query failed")]
    QueryFailed,
    #[error("{total} row(s) are invalid (the first are listed in `errors`); nothing was written")]
    InvalidRows {
        total: usize,
        listed: Vec<crate::ingest::batch::RowProblem>,
    },
    #[error("the batch has no rows")]
    EmptyBatch,
    #[error("{0}; split the batch")]
    BatchTooLarge(String),
    #[error(
        "row {row} names another tenant than the caller's; the tenant comes from the token, so leave the field out"
    )]
    TenantMismatch { row: usize },
    #[error("Idempotency-Key must be 1 to 128 visible ASCII characters; got {0:?}")]
    InvalidIdempotencyKey(String),
    #[error("ClickHouse refused rows the endpoint accepted; the endpoint and its table disagree")]
    IngestFailed,
    #[error("neither ClickHouse nor the spool could take the batch; nothing was accepted, send it again later")]
    IngestUnavailable,
    #[error("unexpected error")]
    Internal,
}

/// Seconds for Retry-After: whole, rounded up, at least 1.
fn whole_seconds(duration: Duration) -> u64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)).max(1)
}

fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Rate {
            scope,
            rate,
            retry_after,
        } => format!(
            "this {} is over its rate of {} requests per second; retry after {} s",
            scope.name(),
            rate.per_second(),
            whole_seconds(*retry_after)
        ),
        Refusal::Concurrency { scope, limit } => format!(
            "this {} already has {limit} requests in progress; wait for one to finish",
            scope.name()
        ),
        Refusal::Busy { retry_after } => format!(
            "the service is at its limit of queries in progress; retry after {} s",
            whole_seconds(*retry_after)
        ),
    }
}

fn allowed_list(methods: &[Method]) -> String {
    methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
}

impl ApiError {
    /// The status and the stable `code` of each error: the table ARCHITECTURE.md mirrors.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Param(BindError::Unknown { .. }) => (StatusCode::BAD_REQUEST, "unknown_param"),
            Self::Param(BindError::Reserved(_)) => (StatusCode::BAD_REQUEST, "reserved_param"),
            Self::Param(BindError::InPath(_)) => (StatusCode::BAD_REQUEST, "invalid_param"),
            Self::Param(BindError::Missing(_)) => (StatusCode::BAD_REQUEST, "missing_param"),
            Self::Param(BindError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid_param"),
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            Self::InvalidEncoding(_) => (StatusCode::BAD_REQUEST, "invalid_encoding"),
            Self::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            Self::Token(TokenError::Missing) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Token(TokenError::KeysUnavailable) => (StatusCode::SERVICE_UNAVAILABLE, "issuer_unavailable"),
            Self::Token(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::Access(AccessError::RoleNotAllowed { .. }) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Access(AccessError::NoTenant) => (StatusCode::FORBIDDEN, "tenant_required"),
            Self::DuplicateRequestId(_) => (StatusCode::CONFLICT, "duplicate_request_id"),
            Self::ResultTooLarge(_) => (StatusCode::UNPROCESSABLE_ENTITY, "result_too_large"),
            Self::ParamRejected(_) => (StatusCode::BAD_REQUEST, "param_rejected"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "query_timeout"),
            Self::QuotaExceeded => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            Self::Unavailable | Self::CircuitOpen(_) => (StatusCode::SERVICE_UNAVAILABLE, "clickhouse_unavailable"),
            Self::CredentialsUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "credentials_unavailable"),
            Self::CredentialsRejected => (StatusCode::SERVICE_UNAVAILABLE, "credentials_rejected"),
            Self::Limited(Refusal::Rate { .. }) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Limited(Refusal::Concurrency { .. }) => (StatusCode::TOO_MANY_REQUESTS, "too_many_in_progress"),
            Self::Limited(Refusal::Busy { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Self::InvalidTimeout(_) => (StatusCode::BAD_REQUEST, "invalid_timeout"),
            Self::QueryFailed => (StatusCode::INTERNAL_SERVER_ERROR, "query_failed"),
            Self::InvalidRows { .. } => (StatusCode::BAD_REQUEST, "invalid_rows"),
            Self::EmptyBatch => (StatusCode::BAD_REQUEST, "empty_batch"),
            Self::BatchTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            Self::TenantMismatch { .. } => (StatusCode::FORBIDDEN, "tenant_mismatch"),
            Self::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            Self::IngestFailed => (StatusCode::INTERNAL_SERVER_ERROR, "ingest_failed"),
            Self::IngestUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "ingest_unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Maps a query failure by ClickHouse's exception code.
    pub fn from_query(error: &QueryError, request_id: &str) -> Self {
        match error {
            QueryError::Exception { code, name, message } => match code {
                // TIMEOUT_EXCEEDED, and TOO_SLOW (the estimate says it would exceed the limit).
                159 | 160 => Self::Timeout,
                201 => Self::QuotaExceeded,
                // TOO_MANY_ROWS_OR_BYTES and the read-side TOO_MANY_ROWS / TOO_MANY_BYTES.
                396 | 158 | 307 => Self::ResultTooLarge(name.clone()),
                457 => Self::ParamRejected(name.clone()),
                // A parse failure is the caller's only when it concerns a query parameter; the
                // same codes also come from table data or the SQL itself.
                6 | 27 | 38 | 41 | 69 | 70 | 72 | 321 | 376 if message.contains("query parameter") => {
                    Self::ParamRejected(name.clone())
                }
                216 => Self::DuplicateRequestId(request_id.to_owned()),
                // Overload: transient.
                202 | 203 | 209 | 210 | 241 | 242 | 439 => Self::Unavailable,
                // The login itself, still refused after the retry with fresh credentials.
                _ if error.is_login_rejected() => Self::CredentialsRejected,
                _ => Self::QueryFailed,
            },
            QueryError::Unavailable(_) => Self::Unavailable,
            QueryError::NoCredentials => Self::CredentialsUnavailable,
            QueryError::Other(_) if error.is_login_rejected() => Self::CredentialsRejected,
            QueryError::Other(_) => Self::QueryFailed,
        }
    }

    /// Headers the error's status calls for: `Allow` on 405, `WWW-Authenticate` on 401 (RFC
    /// 6750, with why the token failed when one was sent), `Retry-After` on 503.
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        let status = self.status_and_code().0;
        if let Self::MethodNotAllowed { allowed, .. } = self {
            headers.push(("Allow", allowed_list(allowed)));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.push((
                "WWW-Authenticate",
                match self {
                    Self::Token(TokenError::Missing) => r#"Bearer realm="chgate""#.to_owned(),
                    other => format!(
                        r#"Bearer realm="chgate", error="invalid_token", error_description="{}""#,
                        other.to_string().replace(['"', '\\'], "'")
                    ),
                },
            ));
        }
        let retry_after = match self {
            Self::CircuitOpen(wait) | Self::Limited(Refusal::Busy { retry_after: wait }) => Some(whole_seconds(*wait)),
            Self::Limited(Refusal::Rate { retry_after, .. }) => Some(whole_seconds(*retry_after)),
            // Concurrency frees as soon as one of the caller's own requests ends.
            Self::Limited(Refusal::Concurrency { .. }) => Some(1),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(u64::from(RETRY_AFTER_SECONDS)),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.push(("Retry-After", seconds.to_string()));
        }
        if let Self::Limited(Refusal::Rate {
            scope,
            rate,
            retry_after,
        }) = self
        {
            headers.extend(rate_limit_headers(*scope, *rate, 0, *retry_after));
        }
        headers
    }

    /// A refused or failed run of the query side.
    pub fn from_exec(error: &ExecError, request_id: &str) -> Self {
        match error {
            ExecError::Query(error) => Self::from_query(error, request_id),
            ExecError::Refused(refusal) => Self::Limited(refusal.clone()),
            ExecError::CircuitOpen(open) => Self::CircuitOpen(open.retry_after),
        }
    }

    /// Counts the error by code and marks the request's span with it.
    pub fn observe(&self) {
        let code = self.status_and_code().1;
        crate::telemetry::metrics::problem(code);
        tracing::Span::current().record("error.code", code);
    }

    /// The problem+json response, carrying the request id.
    pub fn to_response(&self, request_id: &str) -> HttpResponse {
        self.observe();
        let mut response = HttpResponseBuilder::new(self.status_and_code().0);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        response.insert_header(("X-Request-Id", request_id));
        for (name, value) in self.extra_headers() {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.insert_header((name, value));
            }
        }
        response.body(self.body(request_id).to_string())
    }

    /// The problem document.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let (status, code) = self.status_and_code();
        let detail = if status.is_server_error() {
            format!("{} (request id {request_id})", self)
        } else {
            self.to_string()
        };
        let mut body = json!({
            "type": format!("https://chgate.dev/problems/{}", code.replace('_', "-")),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
            "code": code,
            "request_id": request_id,
        });
        if let Self::InvalidRows { listed, .. } = self {
            body["errors"] = json!(listed);
        }
        if let Self::Param(error) = self {
            body["param"] = json!(error.param());
            if let BindError::Invalid(error) = error {
                body["expected"] = json!(error.expected());
                body["problem"] = json!(error.problem());
            }
        }
        body
    }
}

impl From<crate::ingest::batch::BatchError> for ApiError {
    fn from(error: crate::ingest::batch::BatchError) -> Self {
        use crate::ingest::batch::BatchError;
        match error {
            BatchError::NotJson(what) => Self::InvalidBody(format!("the body is not {what}")),
            BatchError::Empty => Self::EmptyBatch,
            BatchError::TooManyRows { limit } => Self::BatchTooLarge(format!("more than {limit} rows")),
            BatchError::InvalidRows { total, listed } => Self::InvalidRows { total, listed },
            BatchError::TenantMismatch { row, .. } => Self::TenantMismatch { row },
        }
    }
}
