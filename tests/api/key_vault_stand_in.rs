//! A local HTTPS stand-in for Azure Key Vault's secrets REST API.
//!
//! Azure Key Vault is a hosted service with nothing to run locally, so the tests talk to this
//! stand-in instead. It speaks the part of the protocol the official SDK
//! (`azure_security_keyvault_secrets`) uses to read a secret, the way the real service answers:
//!
//! - `GET /secrets/{name}/?api-version=..` reads the latest version (the SDK sends the trailing
//!   slash when no version is asked for), `GET /secrets/{name}/{version}?api-version=..` a given
//!   one.
//! - Without a valid bearer token: 401 with the `WWW-Authenticate` bearer challenge the SDK needs
//!   to learn its token scope (`https://vault.azure.net/.default`). Every fresh client sends its
//!   first request without a token, so a first read costs two requests.
//! - With [`VAULT_TOKEN`]: 200 and the secret bundle, or 404 `SecretNotFound`.
//!
//! It serves HTTPS because the SDK refuses to send a token over plain HTTP. The certificate is
//! issued by a test CA made for each stand-in ([`KeyVaultStandIn::ca_file`]); the client has to
//! trust that CA, and, since 127.0.0.1 is not a subdomain of the challenge resource
//! `vault.azure.net`, has to run with `verify_challenge_resource: Some(false)`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::stand_in::{json_reply, lock};
use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The bearer token the stand-in accepts.
pub const VAULT_TOKEN: &str = "key-vault-stand-in-token";

/// The tenant named in the bearer challenge. The SDK only takes the resource from the challenge,
/// but a real vault always names its tenant, so the stand-in does too.
const TENANT_ID: &str = "72f988bf-0000-4000-8000-00000000cafe";

/// A running stand-in vault; see the module documentation.
#[derive(Debug)]
pub struct KeyVaultStandIn {
    port: u16,
    ca_file: PathBuf,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    /// `None` while the vault is down.
    server: Mutex<Option<Server>>,
}

#[derive(Debug)]
struct State {
    /// `https://127.0.0.1:<port>/`, the base of every secret's `id`.
    url: String,
    /// Versions of each secret, oldest first.
    secrets: Mutex<HashMap<String, Vec<SecretVersion>>>,
    reads: Mutex<HashMap<String, usize>>,
}

#[derive(Debug)]
struct SecretVersion {
    version: String,
    value: String,
    created: u64,
}

#[derive(Debug)]
struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl KeyVaultStandIn {
    /// Starts on https://127.0.0.1:<free port>/ with a fresh test CA and a leaf cert (SANs localhost, 127.0.0.1).
    pub async fn start() -> Self {
        let (ca_pem, tls) = test_pki();
        let ca_file = std::env::temp_dir().join(format!("chgate-test-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&ca_file, ca_pem).expect("writing the test CA");
        let listener = listen(0);
        let port = listener.local_addr().expect("stand-in address").port();
        let state = Arc::new(State {
            url: format!("https://127.0.0.1:{port}/"),
            secrets: Mutex::default(),
            reads: Mutex::default(),
        });
        let server = Server::spawn(listener, TlsAcceptor::from(tls.clone()), state.clone());
        Self {
            port,
            ca_file,
            tls,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    /// `https://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    /// PEM of the test CA, written to a unique temp file (removed when the stand-in is dropped).
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    /// Adds a new version of `name` (the latest from now on).
    pub fn set_secret(&self, name: &str, value: &str) {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        lock(&self.state.secrets)
            .entry(name.to_owned())
            .or_default()
            .push(SecretVersion {
                // Key Vault's versions are 32 hex digits, not ordered; a random UUID is the same.
                version: uuid::Uuid::new_v4().simple().to_string(),
                value: value.to_owned(),
                created,
            });
    }

    /// Vault outage: stops listening and drops open keep-alive connections, so from then on
    /// every request fails with connection refused. Returns once both are closed.
    pub async fn down(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            let _ = server.stop.send(());
            let _ = server.task.await;
        }
    }

    /// Ends an outage: listens again on the same port, with the same certificate and secrets.
    pub async fn up(&self) {
        let mut server = lock(&self.server);
        if server.is_none() {
            *server = Some(Server::spawn(
                listen(self.port),
                TlsAcceptor::from(self.tls.clone()),
                self.state.clone(),
            ));
        }
    }

    /// How many authorized reads of `name` (latest or any version) succeeded or 404'd.
    pub fn reads(&self, name: &str) -> usize {
        lock(&self.state.reads).get(name).copied().unwrap_or(0)
    }
}

impl Drop for KeyVaultStandIn {
    fn drop(&mut self) {
        // Aborting the accept loop drops its listener and its set of connections.
        if let Some(server) = lock(&self.server).take() {
            server.task.abort();
        }
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// A credential that hands out [`VAULT_TOKEN`]. It stands in for the managed identity the
/// product uses in Azure, which needs the Azure platform's identity endpoint.
#[derive(Debug)]
pub struct StandInCredential;

impl StandInCredential {
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
}

#[async_trait]
impl TokenCredential for StandInCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken {
            token: Secret::new(VAULT_TOKEN),
            expires_on: OffsetDateTime::now_utc() + Duration::hours(1),
        })
    }
}

/// The test CA as PEM, and a TLS set-up presenting a leaf certificate that CA signed.
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chgate test CA (Key Vault stand-in)");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA certificate");

    // rcgen makes an IP SAN of "127.0.0.1", which is what a client checks for an IP URL.
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf parameters")
        .signed_by(&leaf_key, &ca)
        .expect("leaf certificate");

    // The provider is named rather than taken from the process default, which is ambiguous (and
    // panics) when more than one rustls provider is compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("TLS server configuration");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), Arc::new(config))
}

/// Listens on 127.0.0.1:`port` (0 for a free one).
fn listen(port: u16) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    // Coming back up after an outage binds the old port again while the closed connections are
    // still in TIME_WAIT.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(([127, 0, 0, 1], port).into())
        .unwrap_or_else(|e| panic!("binding the Key Vault stand-in to 127.0.0.1:{port}: {e}"));
    socket.listen(64).expect("listening")
}

impl Server {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, acceptor, state, stopped));
        Self { stop, task }
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    // The connections are tasks of this set, so an outage can close the keep-alive ones too: a
    // client would otherwise go on reading secrets over its pooled connection.
    let mut connections = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let state = state.clone();
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
    drop(listener);
    connections.shutdown().await;
}

fn handle(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let has_api_version = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.starts_with("api-version="));
    if !has_api_version {
        return error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request URI contains an invalid or missing api-version.",
        );
    }

    let authorization = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match authorization {
        None => return challenge("AKV10000: Request is missing a Bearer or PoP token."),
        Some(value) if value != format!("Bearer {VAULT_TOKEN}") => {
            return challenge("AKV10022: Invalid audience or token.");
        }
        Some(_) => {}
    }

    // `/secrets/{name}/` and `/secrets/{name}` both mean the latest version, as on the real service.
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let (name, version) = match (request.method(), segments.as_slice()) {
        (&Method::GET, ["secrets", name]) => (*name, None),
        (&Method::GET, ["secrets", name, version]) => (*name, Some(*version)),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The Key Vault stand-in serves only secret reads.",
            );
        }
    };
    *lock(&state.reads).entry(name.to_owned()).or_default() += 1;

    let secrets = lock(&state.secrets);
    let found = secrets.get(name).and_then(|versions| match version {
        None => versions.last(),
        Some(version) => versions.iter().find(|v| v.version == version),
    });
    let Some(secret) = found else {
        let id = version.map_or_else(|| name.to_owned(), |version| format!("{name}/{version}"));
        return error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            &format!("A secret with (name/id) {id} was not found in this key vault."),
        );
    };
    json_reply(
        StatusCode::OK,
        &json!({
            "value": secret.value,
            "id": format!("{}secrets/{name}/{}", state.url, secret.version),
            "attributes": {
                "enabled": true,
                "created": secret.created,
                "updated": secret.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90
            },
            "tags": {}
        }),
    )
}

/// The 401 a vault sends a request without a usable token. The SDK reads the resource to pick
/// its token scope, then repeats the request with a token.
fn challenge(message: &str) -> Response<Full<Bytes>> {
    let mut response = error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    let value = format!(
        r#"Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="https://vault.azure.net""#
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, value.parse().expect("challenge header"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_reply(status, &json!({ "error": { "code": code, "message": message } }))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use azure_core::error::ErrorKind;
    use azure_core::http::{ClientOptions, RetryOptions, StatusCode, Transport};
    use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
    use azure_security_keyvault_secrets::{ResourceExt, SecretClient, SecretClientOptions};

    use super::*;

    fn trusting_client(vault: &KeyVaultStandIn) -> reqwest::Client {
        let pem = std::fs::read(vault.ca_file()).expect("reading the test CA");
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("test CA")])
            .build()
            .expect("HTTP client")
    }

    fn secret_client(vault: &KeyVaultStandIn) -> SecretClient {
        let options = SecretClientOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(trusting_client(vault)))),
                // An outage must show as an error at once, not after the SDK's minute of retries.
                retry: RetryOptions::none(),
                ..Default::default()
            },
            // 127.0.0.1 is not under the challenge resource's domain (vault.azure.net).
            verify_challenge_resource: Some(false),
            ..Default::default()
        };
        SecretClient::new(&vault.url(), StandInCredential::new(), Some(options)).expect("secret client")
    }

    /// The value and version of `name`: the latest, or `version`.
    async fn read(
        client: &SecretClient,
        name: &str,
        version: Option<&str>,
    ) -> azure_core::Result<(String, Option<String>)> {
        let options = version.map(|version| SecretClientGetSecretOptions {
            secret_version: Some(version.to_owned()),
            ..Default::default()
        });
        let secret = client.get_secret(name, options).await?.into_model()?;
        let version = secret.resource_id().ok().and_then(|id| id.version);
        Ok((secret.value.expect("a secret value"), version))
    }

    #[tokio::test]
    async fn stand_in_serves_the_official_secret_client() {
        let vault = KeyVaultStandIn::start().await;
        vault.set_secret("db-password", "first");
        let client = secret_client(&vault);

        let (value, first_version) = read(&client, "db-password", None).await.expect("reading the secret");
        assert_eq!(value, "first");
        let first_version = first_version.expect("a version in the secret's id");
        assert_eq!(first_version.len(), 32, "{first_version}");
        // The unauthenticated first try got the challenge; only the authorized one is a read.
        assert_eq!(vault.reads("db-password"), 1);

        vault.set_secret("db-password", "second");
        let (value, version) = read(&client, "db-password", None)
            .await
            .expect("reading the rotated secret");
        assert_eq!(value, "second");
        assert_ne!(version.as_deref(), Some(first_version.as_str()));
        let (value, _) = read(&client, "db-password", Some(&first_version))
            .await
            .expect("reading the old version");
        assert_eq!(value, "first");

        let err = read(&client, "no-such-secret", None)
            .await
            .expect_err("an unknown secret");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::HttpResponse { status: StatusCode::NotFound, error_code: Some(code), .. }
                    if code == "SecretNotFound"
            ),
            "{:?}",
            err.kind()
        );
        assert_eq!(vault.reads("no-such-secret"), 1);
        assert_eq!(vault.reads("db-password"), 3);

        vault.down().await;
        let started = Instant::now();
        let err = read(&client, "db-password", None)
            .await
            .expect_err("reading while down");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err.kind(), ErrorKind::Connection | ErrorKind::Io),
            "{:?}",
            err.kind()
        );
        assert_eq!(vault.reads("db-password"), 3);

        vault.up().await;
        let (value, _) = read(&client, "db-password", None)
            .await
            .expect("reading after the outage");
        assert_eq!(value, "second");
        assert_eq!(vault.reads("db-password"), 4);
    }

    #[tokio::test]
    async fn stand_in_challenges_a_request_without_a_token() {
        let vault = KeyVaultStandIn::start().await;
        vault.set_secret("db-password", "first");
        let http = trusting_client(&vault);
        let url = format!("{}secrets/db-password/?api-version=2025-07-01", vault.url());

        let response = http.get(&url).send().await.expect("request without a token");
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .expect("a challenge")
            .to_owned();
        assert!(challenge.starts_with("Bearer authorization=\"https://login.microsoftonline.com/"));
        assert!(
            challenge.ends_with("resource=\"https://vault.azure.net\""),
            "{challenge}"
        );
        let body: serde_json::Value = response.json().await.expect("error JSON");
        assert_eq!(body["error"]["code"], "Unauthorized");

        let response = http
            .get(&url)
            .bearer_auth("some-other-token")
            .send()
            .await
            .expect("request with a wrong token");
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
        assert_eq!(vault.reads("db-password"), 0);

        let body: serde_json::Value = http
            .get(&url)
            .bearer_auth(VAULT_TOKEN)
            .send()
            .await
            .expect("request with the token")
            .json()
            .await
            .expect("secret JSON");
        assert_eq!(body["value"], "first");
        let id = body["id"].as_str().expect("an id");
        assert!(id.starts_with(&format!("{}secrets/db-password/", vault.url())), "{id}");
        assert_eq!(body["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
        assert_eq!(vault.reads("db-password"), 1);
    }
}
