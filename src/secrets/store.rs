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

/// The least time between two rejection-driven reads that found nothing new.
const REJECTION_GAP: Duration = Duration::from_secs(2);

/// The first retry after a failed read, doubling up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct RefreshState {
    /// When a rejection-driven read last found the same values as before.
    unexplained_rejection: Option<Instant>,
}

/// The logins and how to refresh them.
#[derive(Debug)]
pub struct SecretStore {
    plan: LoginPlan,
    vault: Option<VaultReader>,
    refresh_every: Duration,
    current: RwLock<Option<Arc<Logins>>>,
    /// Held by the one refresh in progress.
    refreshing: tokio::sync::Mutex<RefreshState>,
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

    /// A store reading the vault: one read now (its failure is not fatal: queries answer 503
    /// until a retry succeeds, and the handler keeps serving health and readiness), then
    /// a read every `refresh_every` in the background.
    pub async fn with_vault(plan: LoginPlan, vault: VaultReader, refresh_every: Duration) -> Arc<Self> {
        let store = Arc::new(Self::empty(plan, Some(vault), refresh_every));
        let first_wait = match store.refresh().await {
            Ok(_) => refresh_every,
            Err(error) => {
                tracing::error!(error = %error, "reading ClickHouse credentials from Key Vault failed; retrying in the background");
                FIRST_RETRY.min(refresh_every)
            }
        };
        tokio::spawn(keep_fresh(Arc::downgrade(&store), first_wait));
        store
    }

    fn empty(plan: LoginPlan, vault: Option<VaultReader>, refresh_every: Duration) -> Self {
        Self {
            plan,
            vault,
            refresh_every,
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(RefreshState::default()),
            last_error: Mutex::new(None),
        }
    }

    /// The current logins; `None` until the first successful read.
    pub fn current(&self) -> Option<Arc<Logins>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn freshness(&self) -> Freshness {
        if self.vault.is_none() {
            return Freshness::Fixed;
        }
        let error = *self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match (self.current.read().unwrap_or_else(|e| e.into_inner()).is_some(), error) {
            (true, None) => Freshness::Fresh,
            (true, Some(error)) => Freshness::Stale { error },
            (false, error) => Freshness::Missing {
                error: error.unwrap_or("not_read_yet"),
            },
        }
    }

    /// ClickHouse rejected a login of generation `seen`. Returns whether newer logins are
    /// now in place (read by this call or by a concurrent one), so the request may retry.
    pub async fn rejected(&self, seen: u64) -> bool {
        if self.vault.is_none() {
            return false;
        }
        let mut state = self.refreshing.lock().await;
        if self.generation() > seen {
            return true;
        }
        if state
            .unexplained_rejection
            .is_some_and(|at| at.elapsed() < REJECTION_GAP)
        {
            return false;
        }
        match self.refresh_locked().await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!("ClickHouse rejected a login, but the vault holds the same credentials");
                state.unexplained_rejection = Some(Instant::now());
                false
            }
            Err(_) => false,
        }
    }

    fn generation(&self) -> u64 {
        self.current().map_or(0, |logins| logins.generation)
    }

    /// Reads the vault now. `Ok(true)` when the values changed.
    async fn refresh(&self) -> Result<bool, VaultError> {
        let _state = self.refreshing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<bool, VaultError> {
        let Some(vault) = &self.vault else {
            return Ok(false);
        };
        let read = self.plan.resolve(vault, self.generation() + 1).await;
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(fresh) => {
                *last_error = None;
                drop(last_error);
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
                *last_error = Some(error.kind());
                Err(error)
            }
        }
    }
}

/// Re-reads the vault every `every`; after a failure, sooner (doubling from a second), so a
/// store that has never read its secrets gets them soon after the vault answers.
async fn keep_fresh(store: Weak<SecretStore>, first_wait: Duration) {
    let mut wait = first_wait;
    loop {
        tokio::time::sleep(wait).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let every = store.refresh_every;
        wait = match store.refresh().await {
            Ok(_) => every,
            Err(_) if wait >= every => FIRST_RETRY.min(every),
            Err(_) => (wait * 2).min(every),
        };
    }
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
    async fn resolve(&self, vault: &VaultReader, generation: u64) -> Result<Logins, VaultError> {
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
