//! The `handler` binary that the Azure Functions host starts as its custom handler.
//! `handler` serves; `handler check [DIR]` validates an endpoint catalog and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chgate::access::report::access_report;
use chgate::access::{AccessPolicy, Place};
use chgate::catalog::Catalog;
use chgate::settings::Settings;
use chgate::startup::{Application, route_prefix};
use chgate::telemetry;
use clap::{Parser, Subcommand};

/// mimalloc rather than the C library's allocator: request handling allocates many small,
/// short-lived values (rows, parameters, JSON), and the static Linux build would otherwise
/// get musl's allocator, which is much slower at that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "handler",
    about = "chgate: ClickHouse endpoints as an Azure Functions custom handler"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate an endpoint catalog without serving; exits non-zero on any problem.
    Check(CheckArgs),
    /// Print who can call what: endpoints × roles, the claims granting each role, and which
    /// endpoints are tenant-scoped or cross-tenant.
    AccessReport(CatalogArgs),
    /// Print the catalog as an OpenAPI 3.1 document (JSON); infra/openapi.json is this output,
    /// which API Management imports.
    Openapi(CatalogArgs),
    /// The ingest spool (settings as when serving: CHGATE_SPOOL*, CLICKHOUSE_*).
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
}

#[derive(Debug, Subcommand)]
enum SpoolAction {
    /// Print how many batches wait in the spool and in its poison queue.
    Status,
    /// Replay every waiting batch into ClickHouse now, without the Functions host (each with
    /// its original deduplication token); batches that fail stay.
    Drain {
        /// Drain the poison queue instead (after fixing what made its batches fail).
        #[arg(long)]
        poison: bool,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
}

#[derive(Debug, clap::Args)]
struct CatalogArgs {
    /// The folder of function folders (default: as when serving).
    dir: Option<PathBuf>,
    /// The host.json giving the route prefix.
    #[arg(long, default_value = "host.json")]
    host_json: PathBuf,
    /// The access policy.
    #[arg(long, default_value = "access.toml")]
    access_policy: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Also check every ingest endpoint against its table in ClickHouse (`CLICKHOUSE_URL`,
    /// `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `CLICKHOUSE_DATABASE`): the columns exist and
    /// the table deduplicates inserts.
    #[arg(long)]
    against_clickhouse: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Check(args)) => check(&args.catalog, false, args.against_clickhouse),
        Some(Command::AccessReport(args)) => check(&args, true, false),
        Some(Command::Openapi(args)) => openapi(&args),
        Some(Command::Spool { action }) => spool(&action),
        None => serve(),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn openapi(args: &CatalogArgs) -> anyhow::Result<ExitCode> {
    let (dir, prefix, policy) = catalog_inputs(args)?;
    let catalog = Catalog::load(&dir, &prefix, &policy.catalog_rules()).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&chgate::openapi::document(&catalog, &policy))?
    );
    Ok(ExitCode::SUCCESS)
}

/// What the catalog commands read: the function folders, the route prefix and the access
/// policy (development issuers counted as trusted outside Azure: nothing is served).
fn catalog_inputs(args: &CatalogArgs) -> anyhow::Result<(PathBuf, String, AccessPolicy)> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => Settings::from_env()?.functions_dir,
    };
    let prefix = route_prefix(&args.host_json)?;
    let policy = AccessPolicy::load(
        &args.access_policy,
        &|name| std::env::var(name).ok(),
        Place::for_checks(),
    )
    .with_context(|| format!("loading the access policy {}", args.access_policy.display()))?;
    Ok((dir, prefix, policy))
}

fn check(args: &CatalogArgs, report: bool, against_clickhouse: bool) -> anyhow::Result<ExitCode> {
    let (dir, prefix, policy) = catalog_inputs(args)?;
    match Catalog::load(&dir, &prefix, &policy.catalog_rules()) {
        Ok(catalog) if report => {
            print!("{}", access_report(&catalog, &policy));
            Ok(ExitCode::SUCCESS)
        }
        Ok(catalog) => {
            for endpoint in catalog.endpoints() {
                let methods: Vec<&str> = endpoint.methods().iter().map(|m| m.as_str()).collect();
                println!(
                    "ok  {:<24} {} /{}/{}",
                    endpoint.name(),
                    methods.join(","),
                    prefix,
                    endpoint.route()
                );
            }
            for builtin in catalog.builtins() {
                println!(
                    "ok  {:<24} GET /{}/{} (built in: {:?})",
                    builtin.name, prefix, builtin.route, builtin.kind
                );
            }
            for ingest in catalog.ingest_endpoints() {
                println!(
                    "ok  {:<24} POST /{}/{} (ingest into {})",
                    ingest.name(),
                    prefix,
                    ingest.route(),
                    ingest.table()
                );
            }
            if against_clickhouse && !check_against_clickhouse(&catalog)? {
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{} endpoint(s), no problems",
                catalog.endpoints().len() + catalog.ingest_endpoints().len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprint!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Every ingest endpoint against its live table; prints the problems, true when none.
fn check_against_clickhouse(catalog: &Catalog) -> anyhow::Result<bool> {
    let settings = Settings::from_env()?.clickhouse;
    let client = clickhouse::Client::default()
        .with_url(&settings.url)
        .with_user(&settings.user)
        .with_password(settings.password.expose())
        .with_database(&settings.database);
    let runtime = tokio::runtime::Runtime::new()?;
    let mut fine = true;
    for endpoint in catalog.ingest_endpoints() {
        let problems = runtime
            .block_on(chgate::ingest::schema::check(&client, endpoint))
            .with_context(|| format!("asking ClickHouse at {} about {}", settings.url, endpoint.table()))?;
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        fine &= problems.is_empty();
    }
    Ok(fine)
}

fn spool(action: &SpoolAction) -> anyhow::Result<ExitCode> {
    use chgate::ingest::spool::{Spool, Which};
    let settings = Settings::from_env()?;
    let spool_settings = settings
        .spool
        .clone()
        .context("no spool is configured: set CHGATE_SPOOL, or CHGATE_SPOOL__queueServiceUri")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let spool = Spool::new(&spool_settings)?;
    match action {
        SpoolAction::Status => {
            let (waiting, poisoned) = runtime.block_on(spool.depth())?;
            println!("{}: {waiting} batch(es) waiting", spool_settings.name);
            println!("{}-poison: {poisoned} batch(es)", spool_settings.name);
            Ok(ExitCode::SUCCESS)
        }
        SpoolAction::Drain { poison, catalog: args } => {
            let which = if *poison { Which::Poison } else { Which::Spool };
            let (dir, prefix, policy) = catalog_inputs(args)?;
            let catalog = Catalog::load(&dir, &prefix, &policy.catalog_rules()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let client = clickhouse::Client::default()
                .with_url(&settings.clickhouse.url)
                .with_user(&settings.clickhouse.user)
                .with_password(settings.clickhouse.password.expose())
                .with_database(&settings.clickhouse.database);
            let (mut replayed, mut failed) = (0usize, 0usize);
            runtime.block_on(async {
                loop {
                    // Failures stay hidden for the rest of the run, so each is tried once.
                    let taken = spool.take_from(which, 8, std::time::Duration::from_secs(600)).await?;
                    if taken.is_empty() {
                        return Ok::<(), anyhow::Error>(());
                    }
                    for message in taken {
                        let Ok(batch) = &message.batch else {
                            eprintln!("message {} stays: it holds no spooled batch", message.id);
                            failed += 1;
                            continue;
                        };
                        match chgate::ingest::replay::replay(&catalog, &client, &spool, batch).await {
                            Ok(()) => replayed += 1,
                            Err(error) if error.is_transient() || which == Which::Poison => {
                                eprintln!("batch {} stays: {error}", batch.batch_id);
                                failed += 1;
                                continue;
                            }
                            Err(error) => {
                                eprintln!("batch {} moves to the poison queue: {error}", batch.batch_id);
                                spool.to_poison(batch).await?;
                                failed += 1;
                            }
                        }
                        // A failed delete leaves a replayed batch to come back: harmless, its
                        // token makes the second insert a repeat.
                        if let Err(error) = spool.delete_from(which, &message).await {
                            eprintln!("message {} could not be deleted: {error}", message.id);
                        }
                    }
                }
            })?;
            println!("{replayed} batch(es) replayed, {failed} failed (left in the queue)");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn serve() -> anyhow::Result<ExitCode> {
    let telemetry = telemetry::init(&telemetry::TelemetrySettings::from_env()?)?;
    let served = actix_web::rt::System::new().block_on(async {
        let settings = Settings::from_env().context("reading settings from the environment")?;
        let application = Application::build(settings).await.context("building the application")?;
        tracing::info!(port = application.port(), "handler ready");
        application.run_until_stopped().await.context("serving HTTP")
    });
    // After the server has stopped (SIGTERM from the host drains it first): what is still
    // buffered goes out before the process ends.
    telemetry.shutdown();
    served.map(|()| ExitCode::SUCCESS)
}
