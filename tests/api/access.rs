//! Identity and access: only a verified caller runs a query, only with a role the endpoint
//! allows, and only over its own tenant's rows. Tokens come from the development issuer (our
//! own, started per test) and, for interop, from the `oidc-provider` package the test command
//! runs.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use xtask::dev_issuer::{self, DevKey};
use xtask::sample::{Event, Generator};

use crate::helpers::{TestApp, fixture_policy, problem, spawn_app, spawn_app_with, use_shipped_catalog};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of a good token from `issuer` (a reader of tenant acme).
fn good_claims(issuer: &str) -> Value {
    dev_issuer::claims(issuer, "mallory", json!({"roles": ["Test.Read"], "tid": "acme"}))
}

/// Asserts a 401 `invalid_token` whose detail says `why`.
async fn refused(app: &TestApp, token: &str, why: &str) {
    let response = app.get_as(token, "echo", &[]).await;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = problem(response, 401).await;
    assert_eq!(body["code"], "invalid_token", "{why}: {body}");
    // Refused for the reason under test, not for some other one.
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(why),
        "expected a refusal saying {why:?}, got {detail:?}"
    );
    let challenge = challenge.unwrap_or_else(|| panic!("{why}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{why}: {challenge}"
    );
}

#[tokio::test]
async fn a_request_without_a_token_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .get(format!("{}/api/echo", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"chgate\"");
    assert_eq!(problem(response, 401).await["code"], "unauthenticated");
    // A token in the query string is never looked at.
    let response = reqwest::Client::new()
        .get(format!("{}/api/echo?access_token={}", app.address, app.token))
        .send()
        .await
        .expect("get");
    assert_eq!(problem(response, 401).await["code"], "unauthenticated");
}

#[tokio::test]
async fn a_good_token_is_accepted() {
    let app = spawn_app().await;
    let token = app.issuer.key().sign(&good_claims(app.issuer.url())).expect("sign");
    assert_eq!(app.get_as(&token, "echo", &[]).await.status(), 200);
}

#[tokio::test]
async fn the_attack_corpus_is_refused() {
    let app = spawn_app().await;
    let issuer = app.issuer.url().to_owned();
    let key = app.issuer.key();
    let kid = key.kid().to_owned();
    let header = |extra: Value| {
        let mut header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        if let (Some(target), Value::Object(extra)) = (header.as_object_mut(), extra) {
            target.extend(extra);
        }
        header
    };
    let claims_with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good_claims(&issuer);
        change(&mut claims);
        claims
    };
    let b64 = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"));

    // alg none: no signature at all.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good_claims(&issuer))
    );
    refused(&app, &none, "algorithm none is never accepted").await;

    // HS256 with the issuer's public key as the secret (the classic key-confusion attack).
    let public = serde_json::to_vec(&key.jwks()["keys"][0]).expect("jwk");
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &good_claims(&issuer),
        &jsonwebtoken::EncodingKey::from_secret(&public).expect("hmac key"),
    )
    .expect("hs256");
    refused(&app, &hs256, "algorithm HS256 is never accepted").await;

    // A valid signature from a key the issuer does not publish, claiming the trusted kid.
    let stranger = DevKey::generate().expect("key");
    let forged = stranger
        .sign_with_header(&header(json!({})), &good_claims(&issuer))
        .expect("sign");
    refused(&app, &forged, "signature is invalid").await;

    let sign = |claims: Value| key.sign_with_header(&header(json!({})), &claims).expect("sign");
    refused(
        &app,
        &sign(claims_with(&|c| c["iss"] = json!("https://evil.example"))),
        "issuer is not trusted",
    )
    .await;
    refused(
        &app,
        &sign(claims_with(&|c| c["aud"] = json!("api://another-api"))),
        "not meant for this API",
    )
    .await;
    refused(
        &app,
        &sign(claims_with(&|c| c["exp"] = json!(now() - 3600))),
        "is expired",
    )
    .await;
    refused(
        &app,
        &sign(claims_with(&|c| c["nbf"] = json!(now() + 3600))),
        "not valid yet",
    )
    .await;
    refused(
        &app,
        &sign(claims_with(&|c| c["iat"] = json!(now() + 3600))),
        "iat is in the future",
    )
    .await;
    refused(
        &app,
        &sign(claims_with(&|c| {
            c.as_object_mut().map(|o| o.remove("exp"));
        })),
        "lacks the exp claim",
    )
    .await;

    // An unknown kid, even validly signed by a stranger: refused after one refresh.
    let unknown_kid = stranger
        .sign_with_header(&header(json!({"kid": "rotated-away"})), &good_claims(&issuer))
        .expect("sign");
    refused(&app, &unknown_kid, "does not publish").await;

    // Key material in the header pointing at attacker keys is never used.
    let attacker_jwk = stranger.jwks()["keys"][0].clone();
    for (field, value) in [
        ("jku", json!("https://attacker.example/jwks")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", attacker_jwk),
    ] {
        let token = stranger
            .sign_with_header(&header(json!({ field: value })), &good_claims(&issuer))
            .expect("sign");
        refused(&app, &token, field).await;
        // Even signed by the trusted key, a token carrying them is refused.
        let token = key
            .sign_with_header(&header(json!({ field: value })), &good_claims(&issuer))
            .expect("sign");
        refused(&app, &token, field).await;
    }
    let crit = key
        .sign_with_header(
            &header(json!({"crit": ["urn:example:ext"], "urn:example:ext": 1})),
            &good_claims(&issuer),
        )
        .expect("sign");
    refused(&app, &crit, "crit names extensions").await;

    // Oversize, and malformed.
    let huge = claims_with(&|c| c["padding"] = json!("x".repeat(20_000)));
    refused(&app, &sign(huge), "longer than").await;
    for malformed in [
        "abc",
        "a.b.c",
        "a.b",
        &format!("{}.{}.sig", b64(&json!("not an object")), b64(&json!({}))),
    ] {
        refused(&app, malformed, "malformed").await;
    }
    let not_base64 = format!("{}.%%%.{}", b64(&header(json!({}))), "c2ln");
    refused(&app, &not_base64, "malformed").await;

    // After all that, a good token still works.
    assert_eq!(app.get_as(&sign(good_claims(&issuer)), "echo", &[]).await.status(), 200);
}

#[tokio::test]
async fn a_role_the_endpoint_does_not_allow_is_403() {
    let app = spawn_app().await;
    let analyst = app.token_for("ann", json!({"roles": ["Analytics.Read"], "tid": "acme"}));
    let body = problem(app.get_as(&analyst, "echo", &[]).await, 403).await;
    assert_eq!(body["code"], "forbidden");
    let nobody = app.token_for("nobody", json!({"tid": "acme"}));
    problem(app.get_as(&nobody, "echo", &[]).await, 403).await;
    // Scopes grant roles too (space-separated `scp`).
    let scoped = app.token_for("svc", json!({"scp": "openid analytics.read", "tid": "acme"}));
    let examples_like = app.get_as(&scoped, "echo", &[]).await;
    assert_eq!(examples_like.status(), 403, "analytics.read grants analyst, not reader");
}

#[tokio::test]
async fn a_tenant_scoped_endpoint_without_a_tenant_claim_is_403() {
    let app = spawn_app().await;
    let no_tenant = app.token_for("ops", json!({"roles": ["Test.Read"]}));
    let body = problem(app.get_as(&no_tenant, "whoami", &[]).await, 403).await;
    assert_eq!(body["code"], "tenant_required");
    // An endpoint without tenant data needs no tenant.
    assert_eq!(app.get_as(&no_tenant, "echo", &[]).await.status(), 200);
}

#[tokio::test]
async fn an_unreachable_issuer_is_503_and_the_handler_still_starts() {
    let app = spawn_app_with(|settings| settings.access_policy = fixture_policy("http://127.0.0.1:9")).await;
    let ready = reqwest::get(format!("{}/", app.address)).await.expect("readiness");
    assert_eq!(ready.status(), 200);
    let token = DevKey::generate()
        .expect("key")
        .sign(&good_claims("http://127.0.0.1:9"))
        .expect("sign");
    let response = app.get_as(&token, "echo", &[]).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(problem(response, 503).await["code"], "issuer_unavailable");
}

/// Events of tenant globex with values no other tenant has.
async fn seed_globex_markers(app: &TestApp) {
    let mut insert = app.database.client().insert::<Event>("events").await.expect("insert");
    for mut event in Generator::new(99).take(500) {
        event.tenant_id = "globex";
        event.path = "/globex-secret-page".to_owned();
        event.country = "ZZ";
        event.device = "globex-device";
        event.revenue_cents = 123_456_789;
        insert.write(&event).await.expect("write");
    }
    insert.end().await.expect("end");
}

#[tokio::test]
async fn an_analyst_of_one_tenant_never_sees_a_row_of_another() {
    let app = spawn_app_with(use_shipped_catalog).await;
    app.seed_events(10_000).await;
    seed_globex_markers(&app).await;
    let acme = app.analyst_of("acme");
    let window = [("from", "2026-01-01 00:00:00"), ("to", "2027-01-01 00:00:00")];
    let window64 = [("from", "2026-01-01 00:00:00.000"), ("to", "2027-01-01 00:00:00.000")];
    let mut attempts: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for format in ["json", "ndjson", "csv"] {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut query = window.to_vec();
            query.extend_from_slice(extra);
            query.push(("format", format));
            query
        };
        attempts.push(("v1/top-pages", with(&[("limit", "1000")])));
        attempts.push(("v1/traffic", with(&[("granularity", "hour")])));
        attempts.push(("v1/breakdown", with(&[("dimension", "device")])));
        attempts.push(("v1/breakdown", with(&[("countries", "ZZ")])));
        attempts.push(("v1/breakdown", with(&[])));
        let mut export = window64.to_vec();
        export.extend_from_slice(&[("limit", "100000"), ("format", format)]);
        attempts.push(("v1/events/export", export));
    }
    attempts.push(("v1/kpi", window.to_vec()));
    // Trying to name another tenant is refused outright.
    attempts.push(("v1/kpi", [window.as_slice(), &[("tenant", "globex")]].concat()));
    attempts.push(("v1/kpi", [window.as_slice(), &[("caller_tenant", "globex")]].concat()));
    attempts.push(("v1/kpi", [window.as_slice(), &[("tenant_id", "globex")]].concat()));
    for (path, query) in attempts {
        let response = app.get_as(&acme, path, &query).await;
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        let naming_a_tenant = query.iter().any(|(key, _)| key.contains("tenant"));
        let expected = if naming_a_tenant { 400 } else { 200 };
        assert_eq!(status, expected, "{path} {query:?}: {body}");
        for marker in ["globex", "ZZ", "1234567.89", "123456789"] {
            assert!(!body.contains(marker), "{path} {query:?} leaked {marker}");
        }
    }
    // The numbers are acme's own.
    let kpi: Value = app.get_as(&acme, "v1/kpi", &window).await.json().await.expect("json");
    let direct: u64 = app
        .database
        .client()
        .query("SELECT count() FROM events WHERE tenant_id = 'acme'")
        .fetch_one()
        .await
        .expect("direct");
    assert_eq!(kpi["data"][0]["views"], direct);
    // The cross-tenant overview is the internal role's alone.
    assert_eq!(app.get_as(&acme, "v1/internal/tenants", &window).await.status(), 403);
}

/// The interop provider the test command runs.
fn oidc_issuer() -> String {
    std::env::var("CHGATE_TEST_OIDC_ISSUER")
        .expect("CHGATE_TEST_OIDC_ISSUER is not set: run the suite with `cargo xtask test`, which starts oidc-provider")
}

/// A client-credentials access token from oidc-provider.
async fn oidc_token(issuer: &str, client: &str, resource: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth(client, Some(format!("{client}-secret")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&resource={}",
            resource.replace(':', "%3A").replace('/', "%2F")
        ))
        .send()
        .await
        .expect("token request")
}

async fn access_token(issuer: &str, client: &str) -> String {
    let response = oidc_token(issuer, client, xtask::oidc_provider::AUDIENCE).await;
    assert_eq!(response.status(), 200, "token endpoint");
    let body: Value = response.json().await.expect("token json");
    body["access_token"].as_str().expect("access_token").to_owned()
}

#[tokio::test]
async fn tokens_of_a_certified_openid_provider_work_across_a_key_rotation() {
    let issuer = oidc_issuer();
    let app = spawn_app_with(|settings| {
        use_shipped_catalog(settings);
        settings.access_policy = fixture_policy(&issuer);
    })
    .await;
    app.seed_events(2_000).await;
    let window = [("from", "2026-01-01 00:00:00"), ("to", "2027-01-01 00:00:00")];

    let acme = access_token(&issuer, "analyst-acme").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(acme.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("header json");
    assert_eq!(header["alg"], "RS256", "the provider signs with RSA");
    let response = app.get_as(&acme, "v1/kpi", &window).await;
    assert_eq!(response.status(), 200);

    let admin = access_token(&issuer, "admin").await;
    assert_eq!(
        problem(app.get_as(&admin, "v1/kpi", &window).await, 403).await["code"],
        "forbidden"
    );

    // A token for another API is refused.
    let response = oidc_token(&issuer, "analyst-acme", xtask::oidc_provider::OTHER_AUDIENCE).await;
    let other: Value = response.json().await.expect("json");
    let other = other["access_token"].as_str().expect("token for the other audience");
    let body = problem(app.get_as(other, "v1/kpi", &window).await, 401).await;
    assert!(body["detail"].as_str().expect("detail").contains("audience"), "{body}");

    // The provider rotates its signing key; new tokens verify without restarting the handler.
    let new_kid = xtask::oidc_provider::rotate(&issuer).await.expect("rotation");
    let rotated = access_token(&issuer, "analyst-globex").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(rotated.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header["kid"], new_kid.as_str());
    assert_eq!(app.get_as(&rotated, "v1/kpi", &window).await.status(), 200);
    assert_eq!(
        app.get_as(&acme, "v1/kpi", &window).await.status(),
        200,
        "earlier tokens stay valid"
    );
}

#[tokio::test]
async fn the_dev_issuer_token_endpoint_gives_tokens_the_handler_accepts() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(format!("{}/token", app.issuer.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=dashboard&client_secret={}&roles=Test.Read&tid=acme",
            dev_issuer::DEV_CLIENT_SECRET
        ))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token");
    let whoami: Value = app.get_as(token, "whoami", &[]).await.json().await.expect("json");
    assert_eq!(whoami["data"][0]["tenant"], "acme");
    let wrong_secret = reqwest::Client::new()
        .post(format!("{}/token", app.issuer.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=dashboard&client_secret=guess")
        .send()
        .await
        .expect("token request");
    assert_eq!(wrong_secret.status(), 401);
}

#[tokio::test]
async fn a_second_issuer_form_is_accepted_only_when_the_policy_names_it() {
    // Entra signs v1 tokens (iss https://sts.windows.net/<tid>/) with the v2 issuer's keys.
    let v1 = "https://sts.windows.net/0000-tenant/";
    let app = spawn_app_with(|settings| {
        let policy = std::fs::read_to_string(&settings.access_policy).expect("policy");
        let policy = policy.replace("dev = true", &format!("dev = true\nalso_accept = [\"{v1}\"]"));
        std::fs::write(&settings.access_policy, policy).expect("policy");
    })
    .await;
    let token = app
        .issuer
        .key()
        .sign(&dev_issuer::claims(v1, "svc", json!({"roles": ["Test.Read"]})))
        .expect("sign");
    assert_eq!(app.get_as(&token, "echo", &[]).await.status(), 200);
    let other = app
        .issuer
        .key()
        .sign(&dev_issuer::claims(
            "https://sts.windows.net/another/",
            "svc",
            json!({"roles": ["Test.Read"]}),
        ))
        .expect("sign");
    refused(&app, &other, "issuer is not trusted").await;
}

#[tokio::test]
async fn a_burst_of_unknown_kids_makes_at_most_one_jwks_fetch() {
    // The rate limit as deployed (30 s), not the tests' default of none.
    let app = spawn_app_with(|settings| settings.token.min_refresh_gap = std::time::Duration::from_secs(30)).await;
    // A good request first, so that the keys are in hand.
    assert_eq!(app.get("echo", &[]).await.status(), 200);
    let before = app.issuer.jwks_requests();
    let stranger = DevKey::generate().expect("key");
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "never-published"});
    let forged = stranger
        .sign_with_header(&header, &good_claims(app.issuer.url()))
        .expect("sign");
    let attempts = (0..20).map(|_| app.get_as(&forged, "echo", &[]));
    for response in futures_util::future::join_all(attempts).await {
        assert_eq!(response.status(), 401);
    }
    let fetched = app.issuer.jwks_requests() - before;
    assert!(fetched <= 1, "20 unknown kids made {fetched} JWKS fetches");
}

#[tokio::test]
async fn the_last_good_keys_keep_working_while_the_issuer_is_down() {
    // Keys go stale at once, so every request wants a refresh.
    let app = spawn_app_with(|settings| settings.token.refresh_every = std::time::Duration::ZERO).await;
    assert_eq!(app.get("echo", &[]).await.status(), 200);
    let address = app.address.clone();
    app.issuer_down().await;
    for n in 0..3 {
        // A token never seen before: its signature is checked with the cached keys (a token
        // seen before would not even need them).
        let token = app.token_for(&format!("caller-{n}"), json!({"roles": ["Test.Read"], "tid": "acme"}));
        let response = reqwest::Client::new()
            .get(format!("{address}/api/echo"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "cached keys serve through the outage");
    }
}

#[tokio::test]
async fn a_remembered_token_stops_working_when_it_expires() {
    let app = spawn_app_with(|settings| settings.token.skew = std::time::Duration::ZERO).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let token = app.token_for(
        "short-lived",
        json!({"roles": ["Test.Read"], "tid": "acme", "exp": now + 2}),
    );
    // Verified once, then served from the verified-token cache...
    assert_eq!(app.get_as(&token, "echo", &[]).await.status(), 200);
    assert_eq!(app.get_as(&token, "echo", &[]).await.status(), 200);
    // Whole seconds: exp has passed for certain after three.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    // ...but never past its exp.
    let body = problem(app.get_as(&token, "echo", &[]).await, 401).await;
    assert_eq!(body["code"], "invalid_token");
}
