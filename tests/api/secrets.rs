//! ClickHouse credentials from Key Vault, and their rotation without a restart.
//!
//! Key Vault cannot run here: these tests use the local HTTPS stand-in
//! ([`crate::key_vault_stand_in`]), read through the official SDK exactly as in Azure, and a
//! stand-in credential in place of the managed identity (which needs the Azure platform).
//! ClickHouse is the real local engine; its front's users file holds a login of each test's
//! own, whose password the tests rotate.

use std::path::PathBuf;
use std::time::Duration;

use chgate::secrets::{CredentialChoice, VaultSettings};
use serde_json::{Value, json};

use crate::helpers::{TestApp, connection, problem, spawn_app_with};
use crate::key_vault_stand_in::{KeyVaultStandIn, StandInCredential};

/// A ClickHouse user of one test's own in the local front's users file, removed on drop.
struct RotatingUser {
    name: String,
    users_file: PathBuf,
}

impl RotatingUser {
    /// `None` against a remote server, where the suite cannot create users.
    fn create(password: &str) -> Option<Self> {
        let users_file = connection().users_file?;
        let user = Self {
            name: format!("rotating_{}", uuid::Uuid::new_v4().simple()),
            users_file,
        };
        user.set_password(password);
        Some(user)
    }

    /// Changes the password in ClickHouse (the front re-reads its users file per request).
    fn set_password(&self, password: &str) {
        self.edit(|users| users[&self.name] = json!({ "password": password }));
    }

    fn edit(&self, change: impl FnOnce(&mut Value)) {
        // Other tests edit the same file: read, change and write in one go, under a lock file.
        let _lock = FileLock::take(&self.users_file);
        let text = std::fs::read_to_string(&self.users_file).expect("users file");
        let mut users: Value = serde_json::from_str(&text).expect("users json");
        change(&mut users["users"]);
        let temporary = self.users_file.with_extension(format!("{}.tmp", self.name));
        std::fs::write(&temporary, users.to_string()).expect("writing users");
        std::fs::rename(&temporary, &self.users_file).expect("replacing users");
    }

    /// How many logins of this user ClickHouse has refused.
    async fn login_failures(&self) -> u64 {
        let connection = connection();
        let response = reqwest::Client::new()
            .get(format!("{}/_front/login_failures", connection.url))
            .basic_auth(&connection.user, Some(&connection.password))
            .send()
            .await
            .expect("login failures");
        let body: Value = response.json().await.expect("json");
        body["login_failures"][&self.name].as_u64().unwrap_or(0)
    }
}

impl Drop for RotatingUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        self.edit(|users| {
            users.as_object_mut().map(|users| users.remove(&name));
        });
    }
}

/// An exclusive lock file next to the users file (created atomically; removed on drop).
struct FileLock(PathBuf);

impl FileLock {
    fn take(file: &std::path::Path) -> Self {
        let path = file.with_extension("lock");
        for _ in 0..2000 {
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .is_ok()
            {
                return Self(path);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the users file stayed locked");
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An app reading its ClickHouse password from `vault`, logging in as `user`, refreshing
/// every `refresh`.
async fn app_with_vault(vault: &KeyVaultStandIn, user: &RotatingUser, refresh: Duration) -> TestApp {
    let url = vault.url();
    let ca_file = vault.ca_file();
    let user = user.name.clone();
    spawn_app_with(move |settings| {
        settings.clickhouse.user = user;
        // Not the password: only the vault's may work.
        settings.clickhouse.password = "not-from-app-settings".into();
        settings.secrets.vault = Some(VaultSettings {
            url,
            credential: CredentialChoice::Provided(StandInCredential::new()),
            ca_file: Some(ca_file),
        });
        settings.secrets.refresh_every = refresh;
    })
    .await
}

async fn health(app: &TestApp) -> (u16, Value) {
    let response = reqwest::get(format!("{}/api/health", app.address))
        .await
        .expect("health");
    let status = response.status().as_u16();
    (status, response.json().await.expect("health json"))
}

const SECRET: &str = "clickhouse-password";

#[tokio::test]
async fn the_password_is_read_from_the_vault_at_start() {
    let Some(user) = RotatingUser::create("first-password") else {
        eprintln!("skipped: needs the local ClickHouse's users file");
        return;
    };
    let vault = KeyVaultStandIn::start().await;
    vault.set_secret(SECRET, "first-password");
    let app = app_with_vault(&vault, &user, Duration::from_secs(300)).await;
    assert_eq!(vault.reads(SECRET), 1, "read once at start");
    let response = app.get("echo", &[("s", "hello")]).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["checks"]["secrets"],
        json!({"status": "ok", "source": "key_vault"})
    );
    assert_eq!(user.login_failures().await, 0);
}

#[tokio::test]
async fn a_rotated_password_keeps_requests_succeeding_with_one_retry_and_no_restart() {
    let Some(user) = RotatingUser::create("before-rotation") else {
        eprintln!("skipped: needs the local ClickHouse's users file");
        return;
    };
    let vault = KeyVaultStandIn::start().await;
    vault.set_secret(SECRET, "before-rotation");
    // The schedule is far off: only the rejected login can bring the new password in.
    let app = app_with_vault(&vault, &user, Duration::from_secs(300)).await;
    for _ in 0..3 {
        assert_eq!(app.get("echo", &[]).await.status(), 200);
    }
    // The runbook's order: the vault first, then ClickHouse.
    vault.set_secret(SECRET, "after-rotation");
    user.set_password("after-rotation");
    for round in 0..10 {
        let response = app.get("echo", &[]).await;
        assert_eq!(response.status(), 200, "request {round} after the rotation");
    }
    // One request met the old password, and was retried once with the new one.
    assert_eq!(user.login_failures().await, 1);
    assert_eq!(vault.reads(SECRET), 2, "one read at start, one after the rejection");

    // A second rotation while requests run concurrently: one vault read between them.
    vault.set_secret(SECRET, "second-rotation");
    user.set_password("second-rotation");
    let statuses = futures_util::future::join_all((0..8).map(|_| app.get("echo", &[]))).await;
    assert!(statuses.iter().all(|r| r.status() == 200), "{statuses:?}");
    assert_eq!(vault.reads(SECRET), 3, "concurrent rejections share one read");
    // Each request that met the old password was refused once and retried once: at least
    // one of the burst, at most all eight (plus the earlier one).
    let failures = user.login_failures().await;
    assert!((2..=9).contains(&failures), "{failures} refused logins");
}

#[tokio::test]
async fn with_the_vault_down_the_last_good_password_serves_and_health_says_degraded() {
    let Some(user) = RotatingUser::create("steady") else {
        eprintln!("skipped: needs the local ClickHouse's users file");
        return;
    };
    let vault = KeyVaultStandIn::start().await;
    vault.set_secret(SECRET, "steady");
    let app = app_with_vault(&vault, &user, Duration::from_millis(200)).await;
    vault.down().await;
    let (status, body) = wait_for_health(&app, |body| body["checks"]["secrets"]["status"] == "stale").await;
    assert_eq!(status, 200, "still serving: {body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["secrets"]["reason"], "vault_unreachable");
    // Nothing of where the vault is shows.
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    let response = app.get("echo", &[]).await;
    assert_eq!(response.status(), 200, "the last good password still works");

    vault.up().await;
    let (status, body) = wait_for_health(&app, |body| body["status"] == "ok").await;
    assert_eq!(status, 200);
    assert_eq!(body["checks"]["secrets"]["status"], "ok");
}

#[tokio::test]
async fn a_vault_down_at_start_means_503_until_it_answers_not_a_crash() {
    let Some(user) = RotatingUser::create("late") else {
        eprintln!("skipped: needs the local ClickHouse's users file");
        return;
    };
    let vault = KeyVaultStandIn::start().await;
    vault.set_secret(SECRET, "late");
    vault.down().await;
    let app = app_with_vault(&vault, &user, Duration::from_secs(300)).await;
    let body = problem(app.get("echo", &[]).await, 503).await;
    assert_eq!(body["code"], "credentials_unavailable");
    let (status, body) = health(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["secrets"]["status"], "missing");

    vault.up().await;
    // The background retries start at a second and double: the first ones fail while down.
    let (status, _) = wait_for_health(&app, |body| body["checks"]["secrets"]["status"] == "ok").await;
    assert_eq!(status, 200);
    assert_eq!(app.get("echo", &[]).await.status(), 200);
}

/// Polls the health report until `done` holds (at most 20 s).
async fn wait_for_health(app: &TestApp, done: impl Fn(&Value) -> bool) -> (u16, Value) {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = health(app).await;
        if done(&body) || start.elapsed() > Duration::from_secs(20) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
