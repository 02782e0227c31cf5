//! ClickHouse credentials: where they come from, and keeping them current.
//!
//! Two sources behind one store: app settings (`CLICKHOUSE_PASSWORD` and the settings a role
//! names, which may themselves be `@Microsoft.KeyVault(...)` references the platform
//! resolves), and Azure Key Vault read directly, re-read on a schedule and whenever ClickHouse
//! rejects a login, so a rotated password takes effect without a restart.

pub mod key_vault;
mod plan;
mod secret;
mod store;

pub use key_vault::{CredentialChoice, VaultError, VaultSettings};
pub use plan::{LoginPlan, PlanError, VaultNames};
pub use secret::Secret;
pub use store::{Freshness, Login, Logins, SecretSource, SecretStore};
