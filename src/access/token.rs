//! Verifying bearer access tokens against the trusted issuers: OIDC discovery for each issuer's
//! JWKS, keys cached and refreshed (on a schedule, and once on an unknown `kid`, at most once
//! per interval, keeping the last good keys through an outage), and every check an access
//! token needs. The header is inspected before anything else so that no key material a token
//! carries (`jwk`, `jku`, `x5u`, `x5c`) is ever fetched or trusted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use super::policy::Issuer;
use super::verified::VerifiedTokens;

/// Verified claims.
pub type Claims = Map<String, Value>;

/// Tunables of verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub skew: Duration,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_bytes: usize,
    /// Keys older than this are fetched again.
    pub refresh_every: Duration,
    /// An unknown `kid` triggers a refresh at most this often.
    pub min_refresh_gap: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(60),
            max_token_bytes: 16 * 1024,
            refresh_every: Duration::from_secs(3600),
            min_refresh_gap: Duration::from_secs(30),
        }
    }
}

/// Why a token was refused. The Display text is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send Authorization: Bearer <access token>")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token is longer than {0} bytes")]
    TooLarge(usize),
    #[error("the token header is not acceptable: {0}")]
    Header(String),
    #[error("the token's issuer is not trusted")]
    UntrustedIssuer,
    #[error("the token is signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token is expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this API (audience)")]
    WrongAudience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the token claims are invalid: {0}")]
    InvalidClaims(String),
    /// The issuer's keys could not be fetched, so no token can be judged: a server problem.
    #[error("the token issuer's keys are unavailable")]
    KeysUnavailable,
}

/// What the verifier knows of its issuers' keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysStatus {
    pub issuers: usize,
    pub with_keys: usize,
    pub last_fetch_failed: bool,
}

/// The keys of one issuer and when they were fetched.
#[derive(Debug, Default)]
struct KeyState {
    keys: Option<Arc<JwkSet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_failed: bool,
}

/// One issuer's key source: discovery, the JWKS, and the cached keys.
#[derive(Debug)]
struct IssuerKeys {
    issuer: Issuer,
    state: RwLock<KeyState>,
    /// Held while fetching, so concurrent misses make one request.
    refreshing: Mutex<()>,
    http: reqwest::Client,
    min_refresh_gap: Duration,
}

/// Verifies access tokens for the configured issuers.
#[derive(Debug)]
pub struct TokenVerifier {
    issuers: Vec<Arc<IssuerKeys>>,
    options: VerifyOptions,
    verified: VerifiedTokens,
}

impl TokenVerifier {
    pub fn new(issuers: &[Issuer], options: VerifyOptions) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let issuers = issuers
            .iter()
            .map(|issuer| {
                Arc::new(IssuerKeys {
                    issuer: issuer.clone(),
                    state: RwLock::default(),
                    refreshing: Mutex::new(()),
                    http: http.clone(),
                    min_refresh_gap: options.min_refresh_gap,
                })
            })
            .collect();
        Self {
            issuers,
            verified: VerifiedTokens::new(options.skew),
            options,
        }
    }

    /// For the health endpoint: how many issuers have keys, and whether any issuer's last
    /// key fetch failed (its last good keys, if any, still verify).
    pub async fn keys_status(&self) -> KeysStatus {
        let mut status = KeysStatus {
            issuers: self.issuers.len(),
            with_keys: 0,
            last_fetch_failed: false,
        };
        for issuer in &self.issuers {
            let state = issuer.state.read().await;
            status.with_keys += usize::from(state.keys.is_some());
            status.last_fetch_failed |= state.last_failed;
        }
        status
    }

    /// Fetches every issuer's keys now (at start-up; failures are logged and retried later).
    pub async fn prefetch(&self) {
        for issuer in &self.issuers {
            if let Err(error) = issuer.refresh(true).await {
                tracing::warn!(issuer = %issuer.issuer.url, error = %error, "issuer keys unavailable at start");
            }
        }
    }

    /// Verifies a token and returns its claims; a token verified before is not verified
    /// again until it expires (see [`VerifiedTokens`]).
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        if token.len() > self.options.max_token_bytes {
            return Err(TokenError::TooLarge(self.options.max_token_bytes));
        }
        let key = VerifiedTokens::key_of(token);
        if let Some(claims) = self.verified.get(&key) {
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_signed(token).await?);
        self.verified.insert(key, token.len(), Arc::clone(&claims));
        Ok(claims)
    }

    /// The full verification: header, issuer, key, signature and claims.
    async fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("a JWT has three dot-separated parts"));
        };
        let header = decode_json(header).ok_or(TokenError::Malformed("the header is not base64url JSON"))?;
        let algorithm = check_header(&header)?;
        // The unverified `iss` only chooses whose keys to try; it is validated again below.
        let unverified = decode_json(payload).ok_or(TokenError::Malformed("the payload is not base64url JSON"))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|candidate| candidate.issuer.accepted_iss.iter().any(|accepted| accepted == iss))
            .ok_or(TokenError::UntrustedIssuer)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let jwk = self.key_for(issuer, kid).await?;
        check_key(&jwk, algorithm)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| TokenError::UnknownKey)?;

        let mut validation = Validation::new(algorithm);
        validation.leeway = self.options.skew.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&issuer.issuer.accepted_iss);
        validation.set_audience(&issuer.issuer.audiences);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::UntrustedIssuer,
            ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
            ErrorKind::InvalidAlgorithm => TokenError::Header("the algorithm does not match the key".into()),
            _ => TokenError::InvalidClaims("claims could not be read".into()),
        })?;
        let claims = data.claims;
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_f64()
                .ok_or(TokenError::InvalidClaims("iat is not a number".into()))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            if iat > now + self.options.skew.as_secs_f64() {
                return Err(TokenError::InvalidClaims("iat is in the future".into()));
            }
        }
        Ok(claims)
    }

    /// The issuer's key with this `kid` (or its only key when the token names none).
    async fn key_for(&self, issuer: &Arc<IssuerKeys>, kid: Option<&str>) -> Result<Jwk, TokenError> {
        let (has_keys, stale) = {
            let state = issuer.state.read().await;
            let stale = state
                .fetched_at
                .is_none_or(|at| at.elapsed() >= self.options.refresh_every);
            (state.keys.is_some(), stale)
        };
        if !has_keys {
            // Nothing to judge with: wait for a fetch (rate-limited, one at a time).
            let _ = issuer.refresh(false).await;
        } else if stale {
            // Old keys keep serving while a background task fetches new ones: no request waits
            // on the identity provider, and an outage keeps the last good keys.
            let background = issuer.clone();
            tokio::spawn(async move {
                let _ = background.refresh(false).await;
            });
        }
        if let Some(jwk) = find_key(issuer, kid).await? {
            return Ok(jwk);
        }
        // An unknown kid may be a freshly rotated key: refresh once (rate-limited), then judge.
        let _ = issuer.refresh(false).await;
        if let Some(jwk) = find_key(issuer, kid).await? {
            return Ok(jwk);
        }
        // If the issuer could not be asked, the token may well be good: a server problem.
        if issuer.state.read().await.last_failed {
            return Err(TokenError::KeysUnavailable);
        }
        Err(TokenError::UnknownKey)
    }
}

impl IssuerKeys {
    /// Fetches the JWKS through discovery, unless another task just did or the last attempt
    /// was too recent (`force` skips the gap, for start-up). A failure keeps the last good keys.
    async fn refresh(&self, force: bool) -> Result<(), String> {
        let _guard = self.refreshing.lock().await;
        {
            let state = self.state.read().await;
            if !force && state.last_attempt.is_some_and(|at| at.elapsed() < self.min_refresh_gap) {
                return Ok(());
            }
        }
        let outcome = self.fetch_keys().await;
        let mut state = self.state.write().await;
        state.last_attempt = Some(Instant::now());
        state.last_failed = outcome.is_err();
        match outcome {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer.url, keys = keys.keys.len(), "issuer keys fetched");
                state.keys = Some(Arc::new(keys));
                state.fetched_at = Some(Instant::now());
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer.url, error = %error, "fetching issuer keys failed; keeping the last good keys");
                Err(error)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<JwkSet, String> {
        let issuer = &self.issuer;
        let discovery_url = format!("{}/.well-known/openid-configuration", issuer.url.trim_end_matches('/'));
        let discovery: Value = self.get_json(&discovery_url).await?;
        let named = discovery.get("issuer").and_then(Value::as_str).unwrap_or_default();
        if named != issuer.url {
            return Err(format!("discovery names issuer {named:?}, not {:?}", issuer.url));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("discovery has no jwks_uri")?;
        if issuer.url.starts_with("https://") && !jwks_uri.starts_with("https://") {
            return Err(format!("jwks_uri {jwks_uri} is not https"));
        }
        let keys: Value = self.get_json(jwks_uri).await?;
        let keys: JwkSet = serde_json::from_value(keys).map_err(|error| format!("the JWKS is not valid: {error}"))?;
        // An empty set would replace good keys with nothing: treat it as a failed fetch.
        if keys.keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        response.json().await.map_err(|error| format!("GET {url}: {error}"))
    }
}

async fn find_key(issuer: &IssuerKeys, kid: Option<&str>) -> Result<Option<Jwk>, TokenError> {
    let state = issuer.state.read().await;
    let Some(keys) = &state.keys else {
        return Err(TokenError::KeysUnavailable);
    };
    Ok(match kid {
        Some(kid) => keys
            .keys
            .iter()
            .find(|key| key.common.key_id.as_deref() == Some(kid))
            .cloned(),
        None if keys.keys.len() == 1 => keys.keys.first().cloned(),
        None => None,
    })
}

/// Header text echoed in an error: short, and printable ASCII only (it ends up in a header).
fn short(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_graphic()).take(24).collect()
}

fn decode_json(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Refuses what no access token of ours may carry, and returns the algorithm.
fn check_header(header: &Map<String, Value>) -> Result<Algorithm, TokenError> {
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Header("no alg".into()))?;
    if alg.eq_ignore_ascii_case("none") || alg.starts_with("HS") {
        return Err(TokenError::Header(format!(
            "algorithm {} is never accepted",
            short(alg)
        )));
    }
    let algorithm: Algorithm = alg
        .parse()
        .map_err(|_| TokenError::Header(format!("unknown algorithm {}", short(alg))))?;
    for field in ["jku", "x5u", "jwk", "x5c"] {
        if header.contains_key(field) {
            return Err(TokenError::Header(format!(
                "{field} is present; keys are taken only from the issuer's published JWKS"
            )));
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::Header(
            "crit names extensions this API does not understand".into(),
        ));
    }
    if let Some(typ) = header.get("typ") {
        let typ = typ.as_str().unwrap_or_default().to_ascii_lowercase();
        if !matches!(
            typ.as_str(),
            "jwt" | "at+jwt" | "application/at+jwt" | "application/jwt"
        ) {
            return Err(TokenError::Header(format!(
                "typ {:?} is not an access token type",
                short(&typ)
            )));
        }
    }
    Ok(algorithm)
}

/// The token's algorithm must suit the key's type (and the key's own `alg`, when it names one).
fn check_key(jwk: &Jwk, algorithm: Algorithm) -> Result<(), TokenError> {
    use Algorithm::*;
    let suits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => algorithm == ES256,
            EllipticCurve::P384 => algorithm == ES384,
            _ => false,
        },
        AlgorithmParameters::OctetKeyPair(_) => algorithm == EdDSA,
        // Symmetric keys are never accepted from a JWKS.
        _ => false,
    };
    let key_alg_matches = jwk
        .common
        .key_algorithm
        .is_none_or(|key_alg| key_alg.to_string() == format!("{algorithm:?}"));
    let for_signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    if suits && key_alg_matches && for_signing {
        Ok(())
    } else {
        Err(TokenError::Header(format!(
            "algorithm {algorithm:?} does not suit the issuer's key"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header(value: Value) -> Map<String, Value> {
        value.as_object().expect("object").clone()
    }

    #[test]
    fn none_and_hmac_algorithms_are_refused() {
        assert!(check_header(&header(json!({"alg": "none"}))).is_err());
        assert!(check_header(&header(json!({"alg": "NONE"}))).is_err());
        assert!(check_header(&header(json!({"alg": "HS256"}))).is_err());
        assert_eq!(
            check_header(&header(json!({"alg": "RS256", "typ": "at+jwt"}))).ok(),
            Some(Algorithm::RS256)
        );
    }

    #[test]
    fn embedded_key_material_and_crit_are_refused() {
        for field in ["jku", "x5u", "jwk", "x5c"] {
            let mut h = header(json!({"alg": "RS256"}));
            h.insert(field.into(), json!("https://attacker.example/keys"));
            assert!(check_header(&h).is_err(), "{field}");
        }
        assert!(check_header(&header(json!({"alg": "RS256", "crit": ["exp"]}))).is_err());
        assert!(check_header(&header(json!({"alg": "RS256", "typ": "JWE"}))).is_err());
    }
}
