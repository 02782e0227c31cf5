//! Health: the readiness probe the Functions host polls (`GET /`, answered at once and
//! depending on nothing), and the health report (`GET /api/health`, a built-in function):
//! cheap, unauthenticated, and free of data. It shows whether each part the handler needs is
//! in order, by stable names only: no URLs, hosts, messages or secrets.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::json;

use super::AppState;
use crate::query::Reachability;
use crate::secrets::Freshness;

pub async fn health_check() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ready", "service": "chgate" }))
}

/// How bad a check's state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    /// Serving, but something needs attention (stale secrets or keys).
    Degraded,
    /// Queries cannot be served.
    Unavailable,
}

/// The health report: 200 when queries can be served (`ok` or `degraded`), 503 when not.
pub async fn report(state: &AppState) -> HttpResponse {
    let clickhouse = state.executor.reachability().await;
    let (clickhouse_status, clickhouse_level) = match clickhouse {
        Reachability::Reachable => ("ok", Level::Ok),
        Reachability::Unreachable => ("unreachable", Level::Unavailable),
        Reachability::CircuitOpen => ("circuit_open", Level::Unavailable),
        Reachability::LoginRejected => ("login_rejected", Level::Unavailable),
        Reachability::NoCredentials => ("no_credentials", Level::Unavailable),
    };
    let keys = state.verifier.keys_status().await;
    let (keys_status, keys_level) = if keys.with_keys == 0 && keys.issuers > 0 {
        ("missing", Level::Unavailable)
    } else if keys.with_keys < keys.issuers || keys.last_fetch_failed {
        ("stale", Level::Degraded)
    } else {
        ("ok", Level::Ok)
    };
    let (secrets, secrets_level) = match state.secrets.freshness() {
        Freshness::Fixed => (json!({ "status": "ok", "source": "app_settings" }), Level::Ok),
        Freshness::Fresh => (json!({ "status": "ok", "source": "key_vault" }), Level::Ok),
        Freshness::Stale { error } => (
            json!({ "status": "stale", "source": "key_vault", "reason": error }),
            Level::Degraded,
        ),
        Freshness::Missing { error } => (
            json!({ "status": "missing", "source": "key_vault", "reason": error }),
            Level::Unavailable,
        ),
    };
    let level = clickhouse_level.max(keys_level).max(secrets_level);
    let (status, code) = match level {
        Level::Ok => ("ok", StatusCode::OK),
        Level::Degraded => ("degraded", StatusCode::OK),
        Level::Unavailable => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
    };
    HttpResponse::build(code)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "status": status,
            "checks": {
                "catalog": { "status": "ok", "endpoints": state.catalog.endpoints().len() },
                "clickhouse": { "status": clickhouse_status },
                "keys": { "status": keys_status, "issuers": keys.issuers, "with_keys": keys.with_keys },
                "secrets": secrets,
            },
        }))
}
