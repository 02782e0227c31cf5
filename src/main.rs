//! The `handler` binary that the Azure Functions host starts as its custom handler.
//! `handler` serves; `handler check [DIR]` validates an endpoint catalog and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chgate::catalog::Catalog;
use chgate::settings::Settings;
use chgate::startup::{Application, route_prefix};
use chgate::telemetry;
use clap::{Parser, Subcommand};

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
    Check {
        /// The folder of function folders (default: as when serving).
        dir: Option<PathBuf>,
        /// The host.json giving the route prefix.
        #[arg(long, default_value = "host.json")]
        host_json: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Check { dir, host_json }) => check(dir, &host_json),
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

fn check(dir: Option<PathBuf>, host_json: &std::path::Path) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => dir,
        None => Settings::from_env()?.functions_dir,
    };
    let prefix = route_prefix(host_json)?;
    match Catalog::load(&dir, &prefix) {
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
            println!("{} endpoint(s), no problems", catalog.endpoints().len());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprint!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[actix_web::main]
async fn serve() -> anyhow::Result<ExitCode> {
    telemetry::init_subscriber();
    let settings = Settings::from_env().context("reading settings from the environment")?;
    let application = Application::build(settings)
        .await
        .context("building the application")?;
    tracing::info!(port = application.port(), "handler ready");
    application
        .run_until_stopped()
        .await
        .context("serving HTTP")?;
    Ok(ExitCode::SUCCESS)
}
