//! Reading secrets from Azure Key Vault with the official SDK: a managed identity in Azure
//! (system- or user-assigned), workload identity where configured, the developer's `az`/`azd`
//! login on a workstation.
//!
//! The SDK gets our own HTTP client through its transport option, for three reasons: short
//! connect and read timeouts (the SDK's own client waits 20 s to connect and 60 s to read),
//! a short retry budget (its default retries for about 80 s, far too long for a refresh that
//! runs while requests wait), and an optional extra CA for a vault behind a private CA.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode, Transport};
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};

use super::Secret;

/// Where the vault is and how to sign in to it.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// `CHGATE_KEYVAULT_URL`, e.g. `https://contoso-chgate.vault.azure.net/`.
    pub url: String,
    pub credential: CredentialChoice,
    /// `CHGATE_KEYVAULT_CA_FILE`: a PEM CA trusted for the vault besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Which identity reads the vault (`CHGATE_KEYVAULT_CREDENTIAL`).
#[derive(Debug, Clone)]
pub enum CredentialChoice {
    /// `managed-identity`: the app's managed identity; `AZURE_CLIENT_ID` picks a
    /// user-assigned one. The default in Azure.
    ManagedIdentity { client_id: Option<String> },
    /// `workload-identity`: a federated token file (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`), as on Kubernetes.
    WorkloadIdentity,
    /// `developer-tools`: `az login`, then `azd auth login`. The default elsewhere.
    DeveloperTools,
    /// A credential supplied by the embedding program (not reachable from app settings).
    Provided(Arc<dyn TokenCredential>),
}

/// Why a secret could not be read. The kind is all that health and logs show.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("secret {0} does not exist in the vault (or has no enabled version)")]
    NotFound(String),
    #[error("the vault refused access (HTTP {status}): grant the identity \"Key Vault Secrets User\"")]
    Denied { status: u16 },
    #[error("the vault is unreachable: {0}")]
    Unreachable(String),
    #[error("no token for the vault: {0}")]
    Credential(String),
    #[error("reading the vault failed: {0}")]
    Other(String),
}

impl VaultError {
    /// A short stable name of what went wrong, safe to show on the health endpoint.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "secret_not_found",
            Self::Denied { .. } => "access_denied",
            Self::Unreachable(_) => "vault_unreachable",
            Self::Credential(_) => "no_token",
            Self::Other(_) => "vault_error",
        }
    }
}

/// Connect and read timeouts of the vault's HTTP client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most one read may take, retries included.
const READ_DEADLINE: Duration = Duration::from_secs(15);

/// Reads secrets from one vault.
pub struct VaultReader {
    client: SecretClient,
}

impl std::fmt::Debug for VaultReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultReader").finish_non_exhaustive()
    }
}

impl VaultReader {
    /// Builds the client; nothing is fetched until the first read.
    pub fn new(settings: &VaultSettings) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&settings.url)
            .with_context(|| format!("CHGATE_KEYVAULT_URL {:?} is not a URL", settings.url))?;
        anyhow::ensure!(
            url.scheme() == "https",
            "CHGATE_KEYVAULT_URL must be https (the SDK sends tokens over TLS only), got {}",
            settings.url
        );
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca_file) = &settings.ca_file {
            let pem = std::fs::read(ca_file)
                .with_context(|| format!("reading CHGATE_KEYVAULT_CA_FILE {}", ca_file.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("CHGATE_KEYVAULT_CA_FILE {} is not PEM certificates", ca_file.display()))?;
            http = http.tls_certs_merge(certificates);
        }
        let http = http.build().context("building the vault's HTTP client")?;
        let credential = credential(&settings.credential)?;
        // The SDK checks that the vault's auth challenge names a resource the vault's host
        // belongs to (*.vault.azure.net). A vault on loopback can only be a local stand-in,
        // whose host never matches; everywhere else the check stays on.
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        let options = SecretClientOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(http))),
                retry: RetryOptions::exponential(ExponentialRetryOptions {
                    initial_delay: azure_core::time::Duration::milliseconds(200),
                    max_retries: 2,
                    max_delay: azure_core::time::Duration::seconds(2),
                    max_total_elapsed: azure_core::time::Duration::seconds(10),
                }),
                ..Default::default()
            },
            verify_challenge_resource: Some(!loopback),
            ..Default::default()
        };
        let client =
            SecretClient::new(url.as_str(), credential, Some(options)).context("building the Key Vault client")?;
        Ok(Self { client })
    }

    /// The latest enabled version of secret `name`.
    pub async fn read(&self, name: &str) -> Result<Secret, VaultError> {
        let call = async {
            let response = self
                .client
                .get_secret(name, None)
                .await
                .map_err(|e| classify(name, &e))?;
            let secret = response.into_model().map_err(|e| classify(name, &e))?;
            secret
                .value
                .map(Secret::from)
                .ok_or_else(|| VaultError::NotFound(name.to_owned()))
        };
        tokio::time::timeout(READ_DEADLINE, call)
            .await
            .unwrap_or_else(|_| Err(VaultError::Unreachable(format!("no answer within {READ_DEADLINE:?}"))))
    }
}

pub(crate) fn credential(choice: &CredentialChoice) -> anyhow::Result<Arc<dyn TokenCredential>> {
    Ok(match choice {
        CredentialChoice::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                ..Default::default()
            };
            ManagedIdentityCredential::new(Some(options)).context("setting up the managed identity credential")?
        }
        CredentialChoice::WorkloadIdentity => {
            WorkloadIdentityCredential::new(None).context("setting up the workload identity credential")?
        }
        CredentialChoice::DeveloperTools => {
            DeveloperToolsCredential::new(None).context("setting up the developer tools credential")?
        }
        CredentialChoice::Provided(credential) => Arc::clone(credential),
    })
}

/// Sorts an SDK error into what an operator can act on. The SDK's own message shows only the
/// outermost context, so the whole chain goes into the text.
fn classify(name: &str, error: &azure_core::Error) -> VaultError {
    let chain = error_chain(error);
    match error.kind() {
        ErrorKind::HttpResponse {
            status: StatusCode::NotFound,
            ..
        } => VaultError::NotFound(name.to_owned()),
        ErrorKind::HttpResponse { status, .. }
            if *status == StatusCode::Unauthorized || *status == StatusCode::Forbidden =>
        {
            VaultError::Denied {
                status: u16::from(*status),
            }
        }
        ErrorKind::HttpResponse { .. } | ErrorKind::Connection | ErrorKind::Io => VaultError::Unreachable(chain),
        ErrorKind::Credential => VaultError::Credential(chain),
        _ => VaultError::Other(chain),
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
