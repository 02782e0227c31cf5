//! The current ClickHouse logins, kept fresh.
//!
//! Values from app settings are fixed for the process's life (the platform restarts the app
//! when a setting changes). Values from Key Vault are re-read on a schedule and at once when
//! ClickHouse rejects a login: rotating a password means writing the new one to the vault,
//! then changing it in ClickHouse, and the first rejected request brings the new one in.
//!
//! Invariants: a failed read never replaces good logins (the last good ones keep serving,
//! and health says "stale"); refreshes are single-flight; a rejection that the vault cannot
//! explain (the vault still holds the rejected password) does not make every following
//! request read the vault again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use super::Secret;
use super::key_vault::{VaultError, VaultReader};
use super::plan::{LoginPlan, LoginRecipe, Value};

/// One ClickHouse login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: Secret,
}

/// Every login, as of one refresh.
#[derive(Debug, PartialEq, Eq)]
pub struct Logins {
    /// Grows by one whenever a refresh brings different values.
    pub generation: u64,
    pub service: Login,
    pub roles: BTreeMap<String, Login>,
}

/// What the health endpoint shows about the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// App settings only: nothing to refresh.
    Fixed,
    /// The last read of the vault succeeded.
    Fresh,
    /// The last read failed; the last good values keep serving.
    Stale { error: &'static str },
    /// No read has succeeded yet: queries cannot run.
    Missing { error: &'static str },
}

/// The least time between two rejection-driven reads that did not bring new values.
const REJECTION_GAP: Duration = Duration::from_secs(2);

/// The first retry after a failed read, doubling up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// How long the start waits for the first read before serving without it (the host wants
/// the port open within 30 s; the read goes on in the background).
const FIRST_READ_PATIENCE: Duration = Duration::from_secs(3);

/// Where vault secrets come from: Key Vault in production.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The latest enabled value of secret `name`.
    async fn read(&self, name: &str) -> Result<Secret, VaultError>;
}

#[async_trait::async_trait]
impl SecretSource for VaultReader {
    async fn read(&self, name: &str) -> Result<Secret, VaultError> {
        VaultReader::read(self, name).await
    }
}

#[derive(Debug, Default)]
struct RefreshState {
    /// When a rejection-driven read last ended without bringing new values (failed, or the
    /// vault held the refused password).
    fruitless_rejection_read: Option<Instant>,
}

/// The logins and how to refresh them.
#[derive(Debug)]
pub struct SecretStore {
    plan: LoginPlan,
    source: Option<Box<dyn SecretSource>>,
    refresh_every: Duration,
    current: RwLock<Option<Arc<Logins>>>,
    /// Held by the one read in progress.
    refreshing: tokio::sync::Mutex<RefreshState>,
    /// Reads finished, successful or not: a waiter that sees it move knows a read happened
    /// while it waited.
    reads_done: AtomicU64,
    last_error: Mutex<Option<&'static str>>,
}

impl SecretStore {
    /// A store whose values all come from app settings: resolved at once.
    pub fn fixed(plan: LoginPlan) -> Arc<Self> {
        let store = Self::empty(plan, None, Duration::MAX);
        let logins = store.plan.resolve_known(1);
        *store.current.write().unwrap_or_else(|e| e.into_inner()) = logins.map(Arc::new);
        Arc::new(store)
    }

    /// A store reading `source`: the first read now (waiting at most a few seconds for it:
    /// its failure is not fatal, queries answer 503 until a read succeeds), then a read every
    /// `refresh_every` in the background, and sooner after a failure.
    pub async fn with_source(plan: LoginPlan, source: Box<dyn SecretSource>, refresh_every: Duration) -> Arc<Self> {
        let store = Arc::new(Self::empty(plan, Some(source), refresh_every));
        let first = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.refresh().await })
        };
        let backoff = match tokio::time::timeout(FIRST_READ_PATIENCE, first).await {
            Ok(Ok(Ok(_))) => None,
            Ok(Ok(Err(error))) => {
                tracing::error!(error = %error, "reading ClickHouse credentials from Key Vault failed; retrying in the background");
                next_backoff(false, None, refresh_every)
            }
            // Still reading (it goes on, and the schedule's read waits for it), or it panicked.
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("Key Vault has not answered yet; serving without ClickHouse credentials until it does");
                next_backoff(false, None, refresh_every)
            }
        };
        tokio::spawn(keep_fresh(Arc::downgrade(&store), backoff));
        store
    }

    fn empty(plan: LoginPlan, source: Option<Box<dyn SecretSource>>, refresh_every: Duration) -> Self {
        Self {
            plan,
            source,
            refresh_every,
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(RefreshState::default()),
            reads_done: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The current logins; `None` until the first successful read.
    pub fn current(&self) -> Option<Arc<Logins>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn freshness(&self) -> Freshness {
        if self.source.is_none() {
            return Freshness::Fixed;
        }
        let error = *self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match (self.current().is_some(), error) {
            (true, None) => Freshness::Fresh,
            (true, Some(error)) => Freshness::Stale { error },
            (false, error) => Freshness::Missing {
                error: error.unwrap_or("not_read_yet"),
            },
        }
    }

    /// ClickHouse rejected a login of generation `seen`. Returns whether newer logins are
    /// now in place (read by this call or by a concurrent one), so the request may retry.
    ///
    /// Concurrent callers share one read. The read runs in a task of its own, so a caller
    /// that gives up (its deadline, its client gone) does not cancel it for the others.
    pub async fn rejected(self: &Arc<Self>, seen: u64) -> bool {
        if self.source.is_none() {
            return false;
        }
        let reads_before = self.reads_done.load(Ordering::SeqCst);
        let store = Arc::clone(self);
        tokio::spawn(async move { store.read_after_rejection(seen, reads_before).await })
            .await
            .unwrap_or(false)
    }

    async fn read_after_rejection(&self, seen: u64, reads_before: u64) -> bool {
        let mut state = self.refreshing.lock().await;
        if self.generation() > seen {
            return true;
        }
        // A read ended while this caller waited, and brought nothing newer: another now
        // would most likely find the same.
        if self.reads_done.load(Ordering::SeqCst) != reads_before {
            return false;
        }
        if state
            .fruitless_rejection_read
            .is_some_and(|at| at.elapsed() < REJECTION_GAP)
        {
            return false;
        }
        match self.read_locked().await {
            Ok(true) => true,
            outcome => {
                if let Ok(false) = outcome {
                    tracing::warn!("ClickHouse rejected a login, but the vault holds the same credentials");
                }
                state.fruitless_rejection_read = Some(Instant::now());
                false
            }
        }
    }

    fn generation(&self) -> u64 {
        self.current().map_or(0, |logins| logins.generation)
    }

    /// Reads the vault now. `Ok(true)` when the values changed.
    async fn refresh(&self) -> Result<bool, VaultError> {
        let _state = self.refreshing.lock().await;
        self.read_locked().await
    }

    /// One read of every vault value, with the refresh lock held.
    async fn read_locked(&self) -> Result<bool, VaultError> {
        let Some(source) = &self.source else {
            return Ok(false);
        };
        let read = self.plan.resolve(source.as_ref(), self.generation() + 1).await;
        self.reads_done.fetch_add(1, Ordering::SeqCst);
        match read {
            Ok(fresh) => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
                let changed = current
                    .as_ref()
                    .is_none_or(|old| old.service != fresh.service || old.roles != fresh.roles);
                if changed {
                    tracing::info!(
                        generation = fresh.generation,
                        "ClickHouse credentials read from Key Vault"
                    );
                    *current = Some(Arc::new(fresh));
                }
                Ok(changed)
            }
            Err(error) => {
                tracing::warn!(error = %error, kind = error.kind(), "reading ClickHouse credentials from Key Vault failed; the last good ones stay in use");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.kind());
                Err(error)
            }
        }
    }
}

/// Re-reads the vault every `refresh_every`; after a failure sooner (from a second, doubling
/// up to the refresh interval and staying there), so a store that has never read its secrets
/// gets them soon after the vault answers, and a long outage costs one read per interval.
/// `backoff` is the current back-off while reads fail, `None` while they succeed.
async fn keep_fresh(store: Weak<SecretStore>, mut backoff: Option<Duration>) {
    loop {
        let Some(every) = store.upgrade().map(|store| store.refresh_every) else {
            return;
        };
        tokio::time::sleep(backoff.unwrap_or(every)).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        backoff = next_backoff(store.refresh().await.is_ok(), backoff, every);
    }
}

/// The back-off after a read: none after a success; a second after the first failure, then
/// doubling up to `every`.
fn next_backoff(succeeded: bool, backoff: Option<Duration>, every: Duration) -> Option<Duration> {
    if succeeded {
        return None;
    }
    Some(backoff.map_or(FIRST_RETRY, |last| last * 2).min(every))
}

impl LoginPlan {
    /// The logins when every value is known without the vault.
    fn resolve_known(&self, generation: u64) -> Option<Logins> {
        let known = |value: &Value| match value {
            Value::Known(secret) => Some(secret.clone()),
            Value::Vault(_) => None,
        };
        let login = |recipe: &LoginRecipe| {
            Some(Login {
                user: known(&recipe.user)?.expose().to_owned(),
                password: known(&recipe.password)?,
            })
        };
        let roles = self
            .roles
            .iter()
            .map(|(name, recipe)| Some((name.clone(), login(recipe)?)))
            .collect::<Option<_>>()?;
        Some(Logins {
            generation,
            service: login(&self.service)?,
            roles,
        })
    }

    /// Reads every vault value (each name once) and builds the logins.
    async fn resolve(&self, vault: &dyn SecretSource, generation: u64) -> Result<Logins, VaultError> {
        let mut read: HashMap<&str, Secret> = HashMap::new();
        let recipes = std::iter::once(&self.service).chain(self.roles.values());
        for value in recipes.flat_map(|recipe| [&recipe.user, &recipe.password]) {
            if let Value::Vault(name) = value
                && !read.contains_key(name.as_str())
            {
                read.insert(name, vault.read(name).await?);
            }
        }
        let value = |value: &Value| match value {
            Value::Known(secret) => secret.clone(),
            Value::Vault(name) => read.get(name.as_str()).cloned().unwrap_or_default(),
        };
        let login = |recipe: &LoginRecipe| Login {
            user: value(&recipe.user).expose().to_owned(),
            password: value(&recipe.password),
        };
        Ok(Logins {
            generation,
            service: login(&self.service),
            roles: self
                .roles
                .iter()
                .map(|(name, recipe)| (name.clone(), login(recipe)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A vault in memory: one value, a switch to make it fail, a delay, and a read counter.
    #[derive(Debug, Default)]
    struct MemoryVault {
        value: Mutex<String>,
        failing: AtomicBool,
        delay_ms: AtomicU64,
        reads: AtomicU64,
    }

    #[async_trait::async_trait]
    impl SecretSource for Arc<MemoryVault> {
        async fn read(&self, _name: &str) -> Result<Secret, VaultError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(VaultError::Unreachable("down".into()));
            }
            Ok(Secret::new(self.value.lock().expect("value").as_str()))
        }
    }

    fn plan() -> LoginPlan {
        LoginPlan {
            service: LoginRecipe {
                user: Value::Known(Secret::new("chgate")),
                password: Value::Vault("clickhouse-password".into()),
            },
            roles: BTreeMap::new(),
        }
    }

    async fn store_over(vault: &Arc<MemoryVault>) -> Arc<SecretStore> {
        SecretStore::with_source(plan(), Box::new(Arc::clone(vault)), Duration::from_secs(300)).await
    }

    fn vault(value: &str) -> Arc<MemoryVault> {
        let vault = Arc::new(MemoryVault::default());
        *vault.value.lock().expect("value") = value.to_owned();
        vault
    }

    fn password(store: &SecretStore) -> String {
        store.current().expect("logins").service.password.expose().to_owned()
    }

    #[tokio::test]
    async fn concurrent_rejections_share_one_read_and_all_retry_with_the_new_password() {
        let vault = vault("old");
        let store = store_over(&vault).await;
        *vault.value.lock().expect("value") = "new".into();
        vault.delay_ms.store(50, Ordering::SeqCst);
        let outcomes = futures_util::future::join_all((0..16).map(|_| store.rejected(1))).await;
        assert!(outcomes.iter().all(|retry| *retry), "{outcomes:?}");
        assert_eq!(
            vault.reads.load(Ordering::SeqCst),
            2,
            "one at start, one for all sixteen"
        );
        assert_eq!(password(&store), "new");
    }

    #[tokio::test]
    async fn rejections_while_the_vault_fails_share_one_read_and_do_not_retry() {
        let vault = vault("old");
        let store = store_over(&vault).await;
        vault.failing.store(true, Ordering::SeqCst);
        vault.delay_ms.store(50, Ordering::SeqCst);
        let outcomes = futures_util::future::join_all((0..16).map(|_| store.rejected(1))).await;
        assert!(outcomes.iter().all(|retry| !*retry));
        assert_eq!(vault.reads.load(Ordering::SeqCst), 2, "a failed read is shared too");
        // And the gap holds after a failure: an immediate rejection does not read again.
        assert!(!store.rejected(1).await);
        assert_eq!(vault.reads.load(Ordering::SeqCst), 2);
        assert_eq!(password(&store), "old", "the last good password stays");
        assert_eq!(
            store.freshness(),
            Freshness::Stale {
                error: "vault_unreachable"
            }
        );
    }

    #[tokio::test]
    async fn a_rejection_the_vault_cannot_explain_does_not_make_every_request_read() {
        let vault = vault("same");
        let store = store_over(&vault).await;
        for _ in 0..10 {
            assert!(!store.rejected(1).await);
        }
        assert_eq!(vault.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_giving_up_does_not_cancel_the_read_for_the_others() {
        let vault = vault("old");
        let store = store_over(&vault).await;
        *vault.value.lock().expect("value") = "new".into();
        vault.delay_ms.store(200, Ordering::SeqCst);
        let impatient = tokio::time::timeout(Duration::from_millis(20), store.rejected(1)).await;
        assert!(impatient.is_err(), "gave up");
        assert!(store.rejected(1).await, "the read went on and brought the new password");
        assert_eq!(vault.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_vault_slower_than_the_start_allows_is_read_in_the_background() {
        let vault = vault("late");
        vault.delay_ms.store(4000, Ordering::SeqCst);
        let started = Instant::now();
        let store = store_over(&vault).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the start does not wait for it"
        );
        assert!(store.current().is_none());
        assert_eq!(store.freshness(), Freshness::Missing { error: "not_read_yet" });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(password(&store), "late");
    }

    #[test]
    fn the_back_off_doubles_from_a_second_and_settles_at_the_interval() {
        let every = Duration::from_secs(300);
        let mut backoff = None;
        let mut waits = Vec::new();
        for _ in 0..12 {
            backoff = next_backoff(false, backoff, every);
            waits.push(backoff.expect("backing off").as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(next_backoff(true, backoff, every), None);
        assert_eq!(
            next_backoff(false, None, Duration::from_millis(200)),
            Some(Duration::from_millis(200))
        );
    }
}
