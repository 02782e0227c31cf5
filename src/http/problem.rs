//! The one error type of the HTTP edge and its table of statuses and stable codes. Every
//! error leaves as RFC 9457 `application/problem+json`; a 5xx never carries SQL, credentials
//! or ClickHouse's text, only the request id to find the log line.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder};
use serde_json::json;

use crate::access::{AccessError, TokenError};
use crate::catalog::Method;
use crate::query::{BindError, QueryError};

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
    #[error("ClickHouse is unavailable; retry later")]
    Unavailable,
    #[error("the query failed")]
    QueryFailed,
    #[error("unexpected error")]
    Internal,
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
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "clickhouse_unavailable"),
            Self::QueryFailed => (StatusCode::INTERNAL_SERVER_ERROR, "query_failed"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Maps a query failure by ClickHouse's exception code.
    pub fn from_query(error: &QueryError, request_id: &str) -> Self {
        match error {
            QueryError::Exception { code, name, message } => match code {
                159 => Self::Timeout,
                // TOO_MANY_ROWS_OR_BYTES and the read-side TOO_MANY_ROWS / TOO_MANY_BYTES.
                396 | 158 | 307 => Self::ResultTooLarge(name.clone()),
                457 => Self::ParamRejected(name.clone()),
                // A parse failure is the caller's only when it concerns a query parameter; the
                // same codes also come from table data or the SQL itself.
                6 | 27 | 38 | 41 | 69 | 70 | 72 | 321 | 376 if message.contains("query parameter") => {
                    Self::ParamRejected(name.clone())
                }
                216 => Self::DuplicateRequestId(request_id.to_owned()),
                // Overload and credentials (for example during a password rotation): transient.
                202 | 203 | 209 | 210 | 241 | 242 | 439 | 516 => Self::Unavailable,
                _ => Self::QueryFailed,
            },
            QueryError::Unavailable(_) => Self::Unavailable,
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.push(("Retry-After", RETRY_AFTER_SECONDS.to_string()));
        }
        headers
    }

    /// The problem+json response, carrying the request id.
    pub fn to_response(&self, request_id: &str) -> HttpResponse {
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
