//! The HTTP edge: the host's readiness probe, forwarded endpoint requests, invocation
//! payloads, and the one table that turns errors into problem+json responses.

pub mod disconnect;
mod health;
mod ingest;
mod invocation;
mod negotiate;
pub mod problem;
pub mod query;
mod request_id;
pub mod request_span;

use actix_web::web;

pub use query::{AppState, BODY_READ_TIMEOUT};

/// Largest request body accepted (a JSON object of parameter values).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Registers every route. Forwarded requests arrive under `/<routePrefix>/`; invocation
/// payloads arrive as `POST /<FunctionName>` (function names never contain '/').
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(health::health_check))
        .route("/{function}", web::post().to(invocation::invoke_function))
        .default_service(web::to(query::run_query));
}
