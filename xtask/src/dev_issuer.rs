//! The development token issuer: an OpenID provider for loopback use only, so chgate runs
//! locally without a cloud identity provider. It serves discovery, a JWKS and a
//! client-credentials token endpoint, and signs ES256 access tokens with a key generated on
//! first use into `.local/dev-issuer/` (never committed). The handler refuses it in Azure.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};

/// The port `cargo xtask dev` serves the issuer on (the one access.toml's dev issuer names).
pub const DEFAULT_PORT: u16 = 18125;

/// The audience of chgate's tokens.
pub const AUDIENCE: &str = "api://chgate";

/// The client secret the development token endpoint accepts, for any client id.
pub const DEV_CLIENT_SECRET: &str = "dev-secret";

/// An ES256 signing key and its public JWK.
pub struct DevKey {
    encoding: EncodingKey,
    jwk: Value,
    kid: String,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl DevKey {
    /// A new key, in memory.
    pub fn generate() -> anyhow::Result<Self> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a P-256 key failed"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// The key in `dir/key.p8`, created on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("key.p8");
        if let Ok(der) = std::fs::read(&path) {
            return Self::from_pkcs8(&der).with_context(|| format!("reading {}", path.display()));
        }
        std::fs::create_dir_all(dir)?;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a P-256 key failed"))?;
        std::fs::write(&path, pkcs8.as_ref())?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| anyhow::anyhow!("not a P-256 PKCS#8 key"))?;
        // An uncompressed point: 0x04, then 32 bytes of x and 32 of y.
        let point = pair.public_key().as_ref();
        anyhow::ensure!(point.len() == 65 && point[0] == 4, "unexpected public key encoding");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point);
        let kid = format!("dev-{}", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..9]));
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der),
            jwk,
            kid,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// Signs `claims` as an access token (`typ: at+jwt`, ES256, this key's kid).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Signs `claims` under any header JSON (ES256), for tests of what verification refuses:
    /// the signature is valid, so a refusal is the verifier's judgement of the header.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> anyhow::Result<String> {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, Algorithm::ES256)?;
        Ok(format!("{message}.{signature}"))
    }
}

/// The standard claims of a token from `issuer` for `subject`, valid for an hour, plus `extra`.
pub fn claims(issuer: &str, subject: &str, extra: Value) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = json!({
        "iss": issuer, "aud": AUDIENCE, "sub": subject,
        "iat": now, "nbf": now, "exp": now + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Some(target), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        target.extend(extra);
    }
    claims
}

/// A running development issuer.
pub struct DevIssuer {
    url: String,
    key: Arc<DevKey>,
    server: actix_web::dev::ServerHandle,
    jwks_requests: Arc<AtomicUsize>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Development extension: the app roles to put in the token (comma-separated).
    roles: Option<String>,
    /// Development extension: the tenant claim.
    tid: Option<String>,
    scope: Option<String>,
}

impl DevIssuer {
    /// Serves on `127.0.0.1:port` (0 picks a free port).
    pub async fn start(port: u16, key: DevKey) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the dev issuer to 127.0.0.1:{port}"))?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let key = Arc::new(key);
        let state = web::Data::new((url.clone(), key.clone()));
        let jwks_requests = Arc::new(AtomicUsize::new(0));
        let counter = web::Data::from(jwks_requests.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(counter.clone())
                .route("/.well-known/openid-configuration", web::get().to(discovery))
                .route("/jwks", web::get().to(jwks))
                .route("/token", web::post().to(token))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            url,
            key,
            server: handle,
            jwks_requests,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A signed token from this issuer for `subject` with extra claims.
    pub fn token(&self, subject: &str, extra: Value) -> anyhow::Result<String> {
        self.key.sign(&claims(&self.url, subject, extra))
    }

    pub fn key(&self) -> &DevKey {
        &self.key
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_requests(&self) -> usize {
        self.jwks_requests.load(Ordering::SeqCst)
    }

    pub async fn stop(self) {
        self.server.stop(true).await;
    }

    /// Stops serving (an outage), keeping the key for signing.
    pub async fn pause(&self) {
        self.server.stop(false).await;
    }
}

type IssuerState = web::Data<(String, Arc<DevKey>)>;

async fn discovery(state: IssuerState) -> HttpResponse {
    let url = &state.0;
    HttpResponse::Ok().json(json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "token_endpoint": format!("{url}/token"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
}

async fn jwks(state: IssuerState, requests: web::Data<AtomicUsize>) -> HttpResponse {
    requests.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(state.1.jwks())
}

async fn token(state: IssuerState, form: web::Form<TokenRequest>) -> HttpResponse {
    let form = form.into_inner();
    if form.grant_type != "client_credentials" {
        return HttpResponse::BadRequest().json(json!({"error": "unsupported_grant_type"}));
    }
    let Some(client_id) = form
        .client_id
        .filter(|_| form.client_secret.as_deref() == Some(DEV_CLIENT_SECRET))
    else {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
    };
    let mut extra = serde_json::Map::new();
    if let Some(roles) = form.roles {
        extra.insert(
            "roles".into(),
            json!(roles.split(',').map(str::trim).collect::<Vec<_>>()),
        );
    }
    if let Some(tid) = form.tid {
        extra.insert("tid".into(), json!(tid));
    }
    if let Some(scope) = form.scope {
        extra.insert("scp".into(), json!(scope));
    }
    match state.1.sign(&claims(&state.0, &client_id, Value::Object(extra))) {
        Ok(access_token) => HttpResponse::Ok().json(json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": 3600,
        })),
        Err(_) => HttpResponse::InternalServerError().json(json!({"error": "server_error"})),
    }
}
