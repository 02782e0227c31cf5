//! The application: settings in, a bound HTTP server out.

use std::net::TcpListener;
use std::path::Path;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::access::{AccessPolicy, TokenVerifier};
use crate::catalog::Catalog;
use crate::http::{self, AppState};
use crate::query::QueryRunner;
use crate::settings::Settings;

/// A server bound to its port and ready to run.
pub struct Application {
    port: u16,
    server: Server,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Loads the catalog (refusing to start on any problem in it) and binds 127.0.0.1 on the
    /// configured port: the Functions host calls the handler on loopback only.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let route_prefix = route_prefix(&settings.host_json)?;
        // Forwarded requests live under the prefix and invocation payloads at /<FunctionName>:
        // without a prefix the two could not be told apart.
        anyhow::ensure!(
            !route_prefix.is_empty(),
            "{}: extensions.http.routePrefix is empty; keep a prefix such as \"api\"",
            settings.host_json.display()
        );
        let policy = AccessPolicy::load(
            &settings.access_policy,
            &|name| std::env::var(name).ok(),
            settings.place,
        )
        .with_context(|| format!("loading the access policy {}", settings.access_policy.display()))?;
        let catalog = Catalog::load(&settings.functions_dir, &route_prefix, &policy.catalog_rules())
            .with_context(|| format!("loading the endpoint catalog from {}", settings.functions_dir.display()))?;
        tracing::info!(endpoints = catalog.endpoints().len(), route_prefix = %route_prefix, "catalog loaded");
        let verifier = TokenVerifier::new(policy.issuers(), settings.token.clone());
        let state = web::Data::new(AppState {
            catalog,
            runner: QueryRunner::new(&settings.clickhouse, &policy),
            response_buffer_bytes: settings.response_buffer_bytes,
            verifier,
            policy,
        });
        // Keys are fetched in the background: readiness must not wait on the issuer, and an
        // unreachable issuer means 503s until it answers, not a handler that will not start.
        let prefetch = state.clone();
        tokio::spawn(async move { prefetch.verifier.prefetch().await });
        let listener = TcpListener::bind(("127.0.0.1", settings.port))
            .with_context(|| format!("binding 127.0.0.1:{}", settings.port))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
            .listen(listener)?
            .run();
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// host.json's `extensions.http.routePrefix` ("api" when absent, as the host defaults).
pub fn route_prefix(host_json: &Path) -> anyhow::Result<String> {
    let text = match std::fs::read_to_string(host_json) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok("api".to_owned()),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", host_json.display()));
        }
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", host_json.display()))?;
    Ok(value["extensions"]["http"]["routePrefix"]
        .as_str()
        .unwrap_or("api")
        .trim_matches('/')
        .to_owned())
}
