//! The `handler` binary that the Azure Functions host starts as its custom handler.

use anyhow::Context;
use chgate::settings::Settings;
use chgate::startup::Application;
use chgate::telemetry;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_subscriber();
    let settings = Settings::from_env().context("reading settings from the environment")?;
    let application = Application::build(settings)
        .await
        .context("building the application")?;
    tracing::info!(port = application.port(), "handler ready");
    application
        .run_until_stopped()
        .await
        .context("serving HTTP")
}
