//! Plain configuration data, read from the environment only: Azure app settings reach the
//! custom handler as environment variables, and so do the Functions host's own.

use std::env;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::secrets::key_vault::{CredentialChoice, VaultSettings};
use crate::secrets::{Secret, VaultNames};

/// Everything the handler needs to know at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`: the port the Functions host probes and forwards to
    /// (7071 when unset; 0 picks a free port, as the tests do).
    pub port: u16,
    /// `CLICKHOUSE_URL`, `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `CLICKHOUSE_DATABASE`
    /// (the user and password can come from Key Vault instead: see [`SecretsSettings`]).
    pub clickhouse: ClickHouseSettings,
    /// `CHGATE_FUNCTIONS_DIR`: the folder of function folders. Default: `functions/` when it
    /// exists (a source checkout), else the working directory (a packaged app root, where
    /// the host wants functions as immediate subfolders).
    pub functions_dir: PathBuf,
    /// `CHGATE_HOST_JSON`: the host.json to read the route prefix from (default `host.json`).
    pub host_json: PathBuf,
    /// `CHGATE_RESPONSE_BUFFER_BYTES`: result bytes held back before the status is committed,
    /// so that errors within them still get an error status (default 1 MiB).
    pub response_buffer_bytes: usize,
    /// `CHGATE_ACCESS_POLICY`: the access policy file (default `access.toml`).
    pub access_policy: PathBuf,
    /// Where the handler runs: `WEBSITE_SITE_NAME` set means Azure (plain-http and development
    /// issuers refused); `CHGATE_ALLOW_DEV_ISSUERS=1` trusts development issuers elsewhere.
    pub place: crate::access::Place,
    /// `CHGATE_TOKEN_SKEW_SECONDS` (default 60) and `CHGATE_JWKS_MIN_REFRESH_SECONDS` (default
    /// 30): clock skew allowed on token times; least time between key refreshes on unknown kids.
    pub token: crate::access::VerifyOptions,
    /// Deadlines, the result cache and the circuit breaker.
    pub serving: ServingSettings,
    /// Where ClickHouse credentials come from: app settings, or Key Vault.
    pub secrets: SecretsSettings,
    /// Where ingest batches wait when ClickHouse cannot take them (unset: no spool, 503).
    pub spool: Option<crate::ingest::spool::SpoolSettings>,
}

/// Where ClickHouse credentials come from and how often they are re-read.
#[derive(Debug, Clone)]
pub struct SecretsSettings {
    /// `CHGATE_KEYVAULT_URL` (with `CHGATE_KEYVAULT_CREDENTIAL`, `AZURE_CLIENT_ID`,
    /// `CHGATE_KEYVAULT_CA_FILE`): read passwords from this vault. Unset: app settings only.
    pub vault: Option<VaultSettings>,
    /// The vault secrets of the service login.
    pub names: VaultNames,
    /// `CHGATE_SECRETS_REFRESH_SECONDS` (default 300, at least 10): how often the vault is
    /// re-read besides the reads a rejected login triggers.
    pub refresh_every: Duration,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            vault: None,
            names: VaultNames {
                user_secret: None,
                password_secret: DEFAULT_PASSWORD_SECRET.to_owned(),
            },
            refresh_every: Duration::from_secs(300),
        }
    }
}

/// The vault secret holding the service login's password unless named otherwise.
pub const DEFAULT_PASSWORD_SECRET: &str = "clickhouse-password";

/// How requests are served under load.
#[derive(Debug, Clone, Copy)]
pub struct ServingSettings {
    /// `CHGATE_REQUEST_TIMEOUT_SECONDS` (default 60, at most 230, the Functions HTTP limit):
    /// each request's deadline; a caller's `X-Request-Timeout` can only shorten it.
    pub request_timeout: Duration,
    /// `CHGATE_CACHE_MAX_BYTES` (default 128 MiB): the result cache's size.
    pub cache_max_bytes: u64,
    /// `CHGATE_CACHE_MAX_ENTRY_BYTES` (default 4 MiB): larger results are not cached.
    pub cache_max_entry_bytes: usize,
    /// `CHGATE_BREAKER_FAILURES` (default 5): consecutive failures to reach ClickHouse that
    /// open the circuit.
    pub breaker_failures: u32,
    /// `CHGATE_BREAKER_COOLDOWN_SECONDS` (default 5): how long it stays open before a probe.
    pub breaker_cooldown: Duration,
}

/// The Functions host's limit on an HTTP-triggered response (the load balancer's idle timeout).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(230);

/// The longest the circuit may stay open before it probes.
pub const MAX_BREAKER_COOLDOWN: Duration = Duration::from_secs(3600);

impl Default for ServingSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            cache_max_bytes: 128 << 20,
            cache_max_entry_bytes: 4 << 20,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

/// Where ClickHouse is and who to connect as.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub user: String,
    /// Printed as `[redacted]`, like every [`Secret`].
    pub password: Secret,
    pub database: String,
}

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("{name} must be a port number (0-65535), got {value:?}")]
    InvalidPort { name: &'static str, value: String },
    #[error("{name} must be a whole number, got {value:?}")]
    InvalidNumber { name: &'static str, value: String },
    #[error("{name} must be one of {allowed}, got {value:?}")]
    InvalidChoice {
        name: &'static str,
        allowed: &'static str,
        value: String,
    },
}

/// The spool, from the same app settings the Functions host's queue trigger reads for the
/// connection `CHGATE_SPOOL`: identity-based (`CHGATE_SPOOL__queueServiceUri`,
/// `CHGATE_SPOOL__blobServiceUri`, `CHGATE_SPOOL__clientId`), or a connection string in
/// `CHGATE_SPOOL` with `QueueEndpoint`, `BlobEndpoint` and `SharedAccessSignature` (the Rust
/// SDK has no account-key authentication). `CHGATE_SPOOL_QUEUE` names the queue
/// (`chgate-spool`, as functions/ingest_replay/function.json says).
fn spool_from_env() -> Result<Option<crate::ingest::spool::SpoolSettings>, SettingsError> {
    let set = |name: &str| env::var(name).ok().filter(|value| !value.trim().is_empty());
    let name = set("CHGATE_SPOOL_QUEUE").unwrap_or_else(|| "chgate-spool".to_owned());
    let in_azure = set("WEBSITE_SITE_NAME").is_some() || set("IDENTITY_ENDPOINT").is_some();
    let credential = if in_azure {
        CredentialChoice::ManagedIdentity {
            client_id: set("CHGATE_SPOOL__clientId").or_else(|| set("AZURE_CLIENT_ID")),
        }
    } else {
        CredentialChoice::DeveloperTools
    };
    let signing_key = || {
        set("CHGATE_SPOOL_KEY")
            .map(Secret::new)
            .ok_or(SettingsError::InvalidChoice {
                name: "CHGATE_SPOOL_KEY",
                allowed: "a random secret of at least 32 characters, the same on every instance",
                value: "unset".to_owned(),
            })
    };
    if let Some(queue_service) = set("CHGATE_SPOOL__queueServiceUri") {
        return Ok(Some(crate::ingest::spool::SpoolSettings {
            blob_service: set("CHGATE_SPOOL__blobServiceUri")
                .unwrap_or_else(|| queue_service.replace(".queue.", ".blob.")),
            queue_service,
            name,
            sas: None,
            credential,
            signing_key: signing_key()?,
        }));
    }
    let Some(connection) = set("CHGATE_SPOOL") else {
        return Ok(None);
    };
    let field = |key: &str| {
        connection.split(';').find_map(|part| {
            let (k, v) = part.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim().to_owned())
        })
    };
    let invalid = |why: &str| SettingsError::InvalidChoice {
        name: "CHGATE_SPOOL",
        allowed: "a connection string with QueueEndpoint, BlobEndpoint and SharedAccessSignature",
        value: why.to_owned(),
    };
    let (Some(queue_service), Some(blob_service)) = (field("QueueEndpoint"), field("BlobEndpoint")) else {
        return Err(invalid("no QueueEndpoint and BlobEndpoint"));
    };
    let Some(sas) = field("SharedAccessSignature") else {
        return Err(invalid("no SharedAccessSignature (account keys are not supported)"));
    };
    Ok(Some(crate::ingest::spool::SpoolSettings {
        queue_service,
        blob_service,
        name,
        sas: Some(Secret::new(sas)),
        credential,
        signing_key: signing_key()?,
    }))
}

/// The least time between scheduled vault reads.
pub const MIN_SECRETS_REFRESH: Duration = Duration::from_secs(10);

fn secrets_from_env(refresh_every: Duration) -> Result<SecretsSettings, SettingsError> {
    let set = |name: &str| env::var(name).ok().filter(|value| !value.trim().is_empty());
    if refresh_every < MIN_SECRETS_REFRESH {
        return Err(SettingsError::InvalidNumber {
            name: "CHGATE_SECRETS_REFRESH_SECONDS",
            value: format!(
                "{} (at least {})",
                refresh_every.as_secs(),
                MIN_SECRETS_REFRESH.as_secs()
            ),
        });
    }
    let vault = match set("CHGATE_KEYVAULT_URL") {
        None => None,
        Some(url) => {
            let client_id = set("AZURE_CLIENT_ID");
            // In Azure the app's managed identity; on a workstation the developer's login.
            let in_azure = set("WEBSITE_SITE_NAME").is_some() || set("IDENTITY_ENDPOINT").is_some();
            let credential = match set("CHGATE_KEYVAULT_CREDENTIAL").as_deref() {
                Some("managed-identity") => CredentialChoice::ManagedIdentity { client_id },
                Some("workload-identity") => CredentialChoice::WorkloadIdentity,
                Some("developer-tools") => CredentialChoice::DeveloperTools,
                None if in_azure => CredentialChoice::ManagedIdentity { client_id },
                None => CredentialChoice::DeveloperTools,
                Some(other) => {
                    return Err(SettingsError::InvalidChoice {
                        name: "CHGATE_KEYVAULT_CREDENTIAL",
                        allowed: "managed-identity, workload-identity, developer-tools",
                        value: other.to_owned(),
                    });
                }
            };
            Some(VaultSettings {
                url: url.trim().to_owned(),
                credential,
                ca_file: set("CHGATE_KEYVAULT_CA_FILE").map(PathBuf::from),
            })
        }
    };
    Ok(SecretsSettings {
        vault,
        names: VaultNames {
            user_secret: set("CHGATE_CLICKHOUSE_USER_SECRET"),
            password_secret: set("CHGATE_CLICKHOUSE_PASSWORD_SECRET")
                .unwrap_or_else(|| DEFAULT_PASSWORD_SECRET.to_owned()),
        },
        refresh_every,
    })
}

/// The port used when the host sets none, as `func start` serves on 7071.
pub const DEFAULT_PORT: u16 = 7071;

/// Result bytes held back before a response's status is committed.
pub const DEFAULT_RESPONSE_BUFFER_BYTES: usize = 1024 * 1024;
pub const MIN_RESPONSE_BUFFER_BYTES: usize = 16 * 1024;

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let port = match env::var("FUNCTIONS_CUSTOMHANDLER_PORT") {
            Ok(value) => value.trim().parse().map_err(|_| SettingsError::InvalidPort {
                name: "FUNCTIONS_CUSTOMHANDLER_PORT",
                value,
            })?,
            Err(_) => DEFAULT_PORT,
        };
        let var = |name: &str, default: &str| env::var(name).unwrap_or_else(|_| default.to_owned());
        let functions_dir = match env::var_os("CHGATE_FUNCTIONS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None if PathBuf::from("functions").is_dir() => PathBuf::from("functions"),
            None => PathBuf::from("."),
        };
        let response_buffer_bytes = match env::var("CHGATE_RESPONSE_BUFFER_BYTES") {
            Ok(value) => value.trim().parse().map_err(|_| SettingsError::InvalidNumber {
                name: "CHGATE_RESPONSE_BUFFER_BYTES",
                value,
            })?,
            Err(_) => DEFAULT_RESPONSE_BUFFER_BYTES,
        };
        // A buffer too small would commit nearly every status before the query could fail.
        if response_buffer_bytes < MIN_RESPONSE_BUFFER_BYTES {
            return Err(SettingsError::InvalidNumber {
                name: "CHGATE_RESPONSE_BUFFER_BYTES",
                value: format!("{response_buffer_bytes} (at least {MIN_RESPONSE_BUFFER_BYTES})"),
            });
        }
        let seconds = |name: &'static str, default: u64| -> Result<std::time::Duration, SettingsError> {
            match env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse()
                    .map(std::time::Duration::from_secs)
                    .map_err(|_| SettingsError::InvalidNumber { name, value }),
                Err(_) => Ok(std::time::Duration::from_secs(default)),
            }
        };
        let token = crate::access::VerifyOptions {
            skew: seconds("CHGATE_TOKEN_SKEW_SECONDS", 60)?,
            // At least a second: an attacker's unknown kids must not make us hammer the issuer.
            min_refresh_gap: seconds("CHGATE_JWKS_MIN_REFRESH_SECONDS", 30)?.max(std::time::Duration::from_secs(1)),
            ..crate::access::VerifyOptions::default()
        };
        let number = |name: &'static str, default: u64| -> Result<u64, SettingsError> {
            match env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse()
                    .map_err(|_| SettingsError::InvalidNumber { name, value }),
                Err(_) => Ok(default),
            }
        };
        let defaults = ServingSettings::default();
        let request_timeout = seconds("CHGATE_REQUEST_TIMEOUT_SECONDS", defaults.request_timeout.as_secs())?;
        if request_timeout.is_zero() || request_timeout > MAX_REQUEST_TIMEOUT {
            return Err(SettingsError::InvalidNumber {
                name: "CHGATE_REQUEST_TIMEOUT_SECONDS",
                value: format!(
                    "{} (1 to 230: the Functions host cuts HTTP responses at 230 s)",
                    request_timeout.as_secs()
                ),
            });
        }
        let serving = ServingSettings {
            request_timeout,
            cache_max_bytes: number("CHGATE_CACHE_MAX_BYTES", defaults.cache_max_bytes)?,
            cache_max_entry_bytes: usize::try_from(number(
                "CHGATE_CACHE_MAX_ENTRY_BYTES",
                defaults.cache_max_entry_bytes as u64,
            )?)
            .unwrap_or(usize::MAX),
            breaker_failures: u32::try_from(number("CHGATE_BREAKER_FAILURES", u64::from(defaults.breaker_failures))?)
                .unwrap_or(u32::MAX)
                .max(1),
            breaker_cooldown: seconds("CHGATE_BREAKER_COOLDOWN_SECONDS", defaults.breaker_cooldown.as_secs())?,
        };
        if serving.breaker_cooldown > MAX_BREAKER_COOLDOWN {
            return Err(SettingsError::InvalidNumber {
                name: "CHGATE_BREAKER_COOLDOWN_SECONDS",
                value: format!(
                    "{} (at most {})",
                    serving.breaker_cooldown.as_secs(),
                    MAX_BREAKER_COOLDOWN.as_secs()
                ),
            });
        }
        Ok(Self {
            serving,
            port,
            access_policy: PathBuf::from(var("CHGATE_ACCESS_POLICY", "access.toml")),
            place: crate::access::Place::from_env(),
            token,
            functions_dir,
            host_json: PathBuf::from(var("CHGATE_HOST_JSON", "host.json")),
            response_buffer_bytes,
            clickhouse: ClickHouseSettings {
                url: var("CLICKHOUSE_URL", "http://127.0.0.1:8123"),
                user: var("CLICKHOUSE_USER", "default"),
                password: Secret::new(var("CLICKHOUSE_PASSWORD", "")),
                database: var("CLICKHOUSE_DATABASE", "default"),
            },
            secrets: secrets_from_env(seconds("CHGATE_SECRETS_REFRESH_SECONDS", 300)?)?,
            spool: spool_from_env()?,
        })
    }
}
