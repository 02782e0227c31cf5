//! The readiness probe: the Functions host polls `GET /` until anything answers, so this
//! answers at once and depends on nothing else (ClickHouse being down is a per-request
//! error, not a reason to keep the host waiting).

use actix_web::HttpResponse;
use serde_json::json;

pub async fn health_check() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ready", "service": "chgate" }))
}
