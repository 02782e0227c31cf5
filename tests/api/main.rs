//! The integration tests: one binary, against the real services `cargo xtask test` starts
//! (the ClickHouse engine behind its HTTP front, or the server named by `CLICKHOUSE_URL`).

mod access;
mod catalog;
mod clickhouse_front;
mod endpoints;
mod examples;
mod handler;
mod health;
mod helpers;
mod host;
mod hostile;
mod ingest;
mod ingestion_stand_in;
mod key_vault_stand_in;
mod sample_data;
mod secrets;
mod serving;
mod spool;
mod stand_in;
mod telemetry;
