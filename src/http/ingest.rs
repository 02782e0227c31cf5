//! Serving an ingest endpoint: who is calling, then the batch (read up to the endpoint's byte
//! limit, every row checked, the tenant stamped), then one deduplicated insert. 202 means
//! ClickHouse has acknowledged the rows (an asynchronous insert waited for); nothing of a
//! refused batch is written.

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::Payload;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use super::problem::ApiError;
use super::query::{AppState, BODY_READ_TIMEOUT, bearer_token, header_text, read_body_sized, request_timeout};
use crate::access::{Caller, TokenError, Who};
use crate::catalog::IngestEndpoint;
use crate::ingest::batch::{self, Batch, Layout};
use crate::ingest::spool::SpooledBatch;
use crate::ingest::{dedup_token, idempotency_key, writer};
use crate::query::QueryError;

pub async fn ingest(
    state: &AppState,
    request: &HttpRequest,
    payload: Payload,
    endpoint: &IngestEndpoint,
    request_id: &str,
    received: Instant,
) -> HttpResponse {
    let mut batch_id = None;
    match accept(state, request, payload, endpoint, request_id, received, &mut batch_id).await {
        Ok(response) => response,
        Err(error) => {
            let mut response = error.to_response(request_id);
            // Once the batch has an id, a failure may still have written it (an insert whose
            // answer was lost): the caller retries with this id as its Idempotency-Key.
            if let Some(id) = batch_id
                && let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id)
            {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::HeaderName::from_static("x-batch-id"), value);
            }
            response
        }
    }
}

async fn accept(
    state: &AppState,
    request: &HttpRequest,
    payload: Payload,
    endpoint: &IngestEndpoint,
    request_id: &str,
    received: Instant,
    batch_id_out: &mut Option<String>,
) -> Result<HttpResponse, ApiError> {
    let timeout = request_timeout(
        header_text(request, "x-request-timeout").as_deref(),
        state.request_timeout,
    )?;
    let deadline = received + timeout;
    // Who is calling comes first: a caller without a valid token learns nothing else.
    let authorization = header_text(request, header::AUTHORIZATION.as_str());
    let token = bearer_token(authorization.as_deref()).ok_or(TokenError::Missing)?;
    let claims = state.verifier.verify(token).await?;
    let caller = Caller::from_claims(&claims, &state.policy);
    let who = caller.authorize(endpoint.roles(), endpoint.tenant_column().is_some())?;
    let span = tracing::Span::current();
    span.record("caller.role", who.role().name.as_str());
    span.record("caller.tenant", who.tenant().unwrap_or(""));
    span.record("request.id", request_id);
    let _admission = state.executor.admit(&who).map_err(ApiError::Limited)?;
    let key =
        idempotency_key(header_text(request, "idempotency-key").as_deref()).map_err(ApiError::InvalidIdempotencyKey)?;
    let announced = header_text(request, header::CONTENT_LENGTH.as_str()).and_then(|length| length.parse().ok());
    let reading = read_body_sized(payload, endpoint.max_bytes(), announced);
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, reading).await {
        Ok(Ok(body)) => body,
        Ok(Err(ApiError::BodyTooLarge(limit))) => {
            return Err(ApiError::BatchTooLarge(format!("the body is over {limit} bytes")));
        }
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(ApiError::BodyTimeout(BODY_READ_TIMEOUT)),
    };
    let layout = Layout::of(header_text(request, header::CONTENT_TYPE.as_str()).as_deref(), &body);
    let batch = check_rows(endpoint, who.tenant(), layout, body).await?;
    // Without the caller's key the batch still gets one, returned, so a retry can reuse it.
    let batch_id = key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let token = dedup_token(endpoint.name(), who.tenant(), &batch_id);
    *batch_id_out = Some(batch_id.clone());
    let written = if state.executor.circuit_open() {
        // ClickHouse failed repeatedly just now: straight to the spool.
        Err(QueryError::Unavailable("circuit open".into()))
    } else {
        write(state, &who, endpoint, &batch, &token, deadline).await
    };
    let spooled = match written {
        Ok(()) => false,
        Err(error) if crate::ingest::is_transient(&error) => {
            let Some(spool) = &state.spool else {
                return Err(query_error(&error));
            };
            tracing::warn!(endpoint.name = endpoint.name(), request.id = request_id, error = %error, "ClickHouse cannot take the batch; spooling it");
            let spooled = SpooledBatch {
                v: 1,
                endpoint: endpoint.name().to_owned(),
                batch_id: batch_id.clone(),
                token: token.clone(),
                rows: batch.rows,
                tenant: who.tenant().map(str::to_owned),
                attempt: 0,
                body_sha256: String::new(),
                signature: String::new(),
                body: None,
                blob: None,
            };
            if let Err(spool_error) = spool.put(spooled, &batch.body).await {
                tracing::error!(endpoint.name = endpoint.name(), request.id = request_id, error = %spool_error, "the spool refused the batch too");
                return Err(ApiError::IngestUnavailable);
            }
            true
        }
        Err(error) => {
            tracing::warn!(endpoint.name = endpoint.name(), request.id = request_id, error = %error, "ingest failed");
            return Err(query_error(&error));
        }
    };
    tracing::info!(
        endpoint.name = endpoint.name(),
        request.id = request_id,
        rows = batch.rows,
        spooled,
        "batch accepted"
    );
    Ok(HttpResponse::Accepted()
        .insert_header(("X-Request-Id", request_id))
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "accepted": batch.rows,
            "batch_id": batch_id,
            "spooled": spooled,
            "request_id": request_id,
        })))
}

/// What an insert may take: the request's time left, less what the spool may need, and at
/// most half a minute (a longer wait is better spent spooling).
/// Bodies up to this size are checked on the request's own thread; larger ones (tens of
/// milliseconds of work for thousands of rows) on a blocking thread, so the server's few
/// workers stay free for other requests meanwhile.
const CHECK_INLINE_BYTES: usize = 64 * 1024;

async fn check_rows(
    endpoint: &IngestEndpoint,
    tenant: Option<&str>,
    layout: Layout,
    body: bytes::Bytes,
) -> Result<Batch, ApiError> {
    if body.len() <= CHECK_INLINE_BYTES {
        return Ok(batch::parse(endpoint, tenant, layout, &body)?);
    }
    let endpoint = endpoint.clone();
    let tenant = tenant.map(str::to_owned);
    let checked = tokio::task::spawn_blocking(move || batch::parse(&endpoint, tenant.as_deref(), layout, &body)).await;
    match checked {
        Ok(parsed) => Ok(parsed?),
        Err(error) => {
            tracing::error!(error = %error, "checking an ingest batch failed");
            Err(ApiError::Internal)
        }
    }
}

const SPOOL_RESERVE: Duration = Duration::from_secs(10);
const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

async fn write(
    state: &AppState,
    who: &Who<'_>,
    endpoint: &IngestEndpoint,
    batch: &Batch,
    token: &str,
    deadline: Instant,
) -> Result<(), QueryError> {
    let mut retried = false;
    loop {
        let (client, generation) = state.executor.client_for(who.role())?;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(SPOOL_RESERVE)
            .clamp(Duration::from_secs(1), INSERT_TIMEOUT);
        let result =
            match tokio::time::timeout(budget, writer::insert(&client, endpoint.table(), batch, token, budget)).await {
                Ok(result) => result,
                // The insert may have reached ClickHouse; the spool's replay uses the same token.
                Err(_) => Err(QueryError::Unavailable(format!("no answer within {budget:?}"))),
            };
        // A rotated password, as for queries: one retry with what the vault holds now.
        match result {
            Err(error) if !retried && error.is_login_rejected() && state.executor.login_rejected(generation).await => {
                retried = true;
            }
            result => return result,
        }
    }
}

/// A failed insert: unavailability and refused logins as for queries; anything else means
/// ClickHouse refused rows the endpoint accepted.
fn query_error(error: &QueryError) -> ApiError {
    match error {
        QueryError::Unavailable(_) => ApiError::Unavailable,
        QueryError::NoCredentials => ApiError::CredentialsUnavailable,
        error if error.is_login_rejected() => ApiError::CredentialsRejected,
        QueryError::Exception {
            code: 202 | 203 | 209 | 210 | 225 | 241 | 242 | 252 | 319 | 439 | 999 | 159 | 160,
            ..
        } => ApiError::Unavailable,
        _ => ApiError::IngestFailed,
    }
}
