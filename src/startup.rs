//! The application: settings in, a bound HTTP server out.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::access::{AccessPolicy, TokenVerifier};
use crate::catalog::Catalog;
use crate::http::{self, AppState};
use crate::query::QueryRunner;
use crate::query::breaker::Breaker;
use crate::query::cache::ResultCache;
use crate::query::executor::Executor;
use crate::query::limits::Limiter;
use crate::secrets::key_vault::VaultReader;
use crate::secrets::{LoginPlan, SecretStore};
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
        for reason in policy.left_out() {
            tracing::info!(reason = %reason, "token issuer left out");
        }
        let catalog = Catalog::load(&settings.functions_dir, &route_prefix, &policy.catalog_rules())
            .with_context(|| format!("loading the endpoint catalog from {}", settings.functions_dir.display()))?;
        tracing::info!(endpoints = catalog.endpoints().len(), route_prefix = %route_prefix, "catalog loaded");
        let verifier = TokenVerifier::new(policy.issuers(), settings.token.clone());
        let secrets = secret_store(&settings, &policy).await?;
        let serving = settings.serving;
        let executor = Executor::new(
            QueryRunner::new(&settings.clickhouse, &policy, Arc::clone(&secrets)),
            Limiter::new(&policy),
            Breaker::new(serving.breaker_failures, serving.breaker_cooldown),
            ResultCache::new(serving.cache_max_bytes, serving.cache_max_entry_bytes),
            deployment_version(&settings.functions_dir, &settings.access_policy),
        );
        if let Some(spool) = &settings.spool {
            for replay in catalog.replay_functions() {
                if !replay.queue.is_empty() && replay.queue != spool.name {
                    tracing::error!(function = %replay.name, queue = %replay.queue, spool = %spool.name, "the replay function reads another queue than the spool writes: spooled batches would wait unread");
                }
            }
        }
        let spool = match &settings.spool {
            Some(spool) => Some(crate::ingest::spool::Spool::new(spool).context("setting up the ingest spool")?),
            None => None,
        };
        let state = web::Data::new(AppState {
            spool,
            catalog,
            executor,
            response_buffer_bytes: settings.response_buffer_bytes,
            request_timeout: serving.request_timeout,
            verifier,
            policy,
            secrets,
        });
        // Keys are fetched in the background: readiness must not wait on the issuer, and an
        // unreachable issuer means 503s until it answers, not a handler that will not start.
        let prefetch = state.clone();
        tokio::spawn(async move { prefetch.verifier.prefetch().await });
        // Likewise the ingest tables: checked in the background, logged.
        let checking = state.clone();
        tokio::spawn(async move { check_ingest_tables(&checking.catalog, &checking.executor).await });
        let listener = TcpListener::bind(("127.0.0.1", settings.port))
            .with_context(|| format!("binding 127.0.0.1:{}", settings.port))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(http::request_span::request_span))
                .configure(http::routes)
        })
        .on_connect(http::disconnect::remember_socket)
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

/// Checks each ingest endpoint against its table, if ClickHouse answers within a few seconds.
/// A mismatch is logged, not fatal: the table may be created or migrated after the deploy;
/// `handler check --against-clickhouse` is the gate that fails.
async fn check_ingest_tables(catalog: &Catalog, executor: &Executor) {
    let Ok(client) = executor.service_client() else {
        return;
    };
    for endpoint in catalog.ingest_endpoints() {
        let check = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::ingest::schema::check(&client, endpoint),
        );
        match check.await {
            Ok(Ok(problems)) => {
                for problem in problems {
                    tracing::error!(endpoint.name = endpoint.name(), problem = %problem, "ingest endpoint does not fit its table");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(endpoint.name = endpoint.name(), error = %error, "could not check the ingest table");
            }
            Err(_) => tracing::warn!(
                endpoint.name = endpoint.name(),
                "could not check the ingest table in time"
            ),
        }
    }
}

/// The ClickHouse logins: from app settings, or read from Key Vault now and kept fresh. A
/// configuration mistake stops the start; an unreachable vault does not (queries answer 503
/// until it answers, and the health report says why).
async fn secret_store(settings: &Settings, policy: &AccessPolicy) -> anyhow::Result<Arc<SecretStore>> {
    let secrets = &settings.secrets;
    let names = secrets.vault.as_ref().map(|_| &secrets.names);
    let plan = LoginPlan::new(&settings.clickhouse, names, policy, &|name| std::env::var(name).ok())
        .context("resolving the ClickHouse logins")?;
    Ok(match &secrets.vault {
        None => SecretStore::fixed(plan),
        Some(vault) => {
            let reader = VaultReader::new(vault)?;
            tracing::info!(vault = %vault.url, "ClickHouse credentials come from Key Vault");
            SecretStore::with_source(plan, Box::new(reader), secrets.refresh_every).await
        }
    })
}

/// A digest of the catalog's files and the access policy: part of every cache key, so that a
/// cache shared across deployments could never serve one version's results to another.
fn deployment_version(functions_dir: &Path, access_policy: &Path) -> Arc<str> {
    // The files the catalog reads: <dir>/<function>/{function.json,query.sql,endpoint.toml}.
    // Symbolic links are not followed, so a link cycle cannot hold up the start.
    let mut files = Vec::new();
    for function in std::fs::read_dir(functions_dir).into_iter().flatten().flatten() {
        if !function.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        for name in ["function.json", "query.sql", "endpoint.toml"] {
            let path = function.path().join(name);
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files.push(access_policy.to_path_buf());
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in files {
        digest.update(file.to_string_lossy().as_bytes());
        digest.update(&std::fs::read(&file).unwrap_or_default());
    }
    let hash = digest.finish();
    Arc::from(crate::text::hex(&hash.as_ref()[..12]))
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
