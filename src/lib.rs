//! chgate: ClickHouse analytics behind an identity-aware API, as an Azure Functions custom
//! handler.
//!
//! Codemap (see ARCHITECTURE.md for the whole picture):
//! - [`settings`]: plain configuration data read from the environment (Azure app settings).
//! - [`startup`]: turns settings into a running HTTP server bound to the host's port.
//! - [`http`]: routes, including the Functions host's readiness probe.
//! - [`ingest`]: events into ClickHouse: checked batches, deduplicated inserts.
//! - [`secrets`]: ClickHouse credentials from app settings or Key Vault, kept fresh.
//! - [`telemetry`]: logs, traces and metrics (Application Insights when configured).

pub mod access;
pub mod catalog;
pub mod http;
pub mod ingest;
pub mod openapi;
pub mod query;
pub mod secrets;
pub mod settings;
pub mod startup;
pub mod telemetry;
pub mod text;
