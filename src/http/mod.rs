//! The HTTP edge: every route the handler serves.

mod health;

use actix_web::web;

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/", web::get().to(health::health_check));
}
