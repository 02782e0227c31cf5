//! Which logins the handler needs and where each value comes from: parsed once at start-up,
//! so that a missing setting or a secret name without a vault stops the start with a clear
//! message instead of failing requests later.

use std::collections::BTreeMap;

use super::Secret;
use crate::access::AccessPolicy;
use crate::settings::ClickHouseSettings;

/// Where one value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Known at start-up (an app setting).
    Known(Secret),
    /// A Key Vault secret of this name, re-read on every refresh.
    Vault(String),
}

/// A login to resolve: the user and the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecipe {
    pub user: Value,
    pub password: Value,
}

/// Every login the handler uses: the service's own and one per role with a ClickHouse user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPlan {
    pub service: LoginRecipe,
    pub roles: BTreeMap<String, LoginRecipe>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct PlanError(Vec<String>);

/// What names the service login's values in the vault.
#[derive(Debug, Clone, Default)]
pub struct VaultNames {
    /// `CHGATE_CLICKHOUSE_USER_SECRET`: the user's name from the vault (else `CLICKHOUSE_USER`).
    pub user_secret: Option<String>,
    /// `CHGATE_CLICKHOUSE_PASSWORD_SECRET` (default `clickhouse-password`).
    pub password_secret: String,
}

impl LoginPlan {
    /// The plan for these settings. `vault` is `None` when no vault is configured; `env` looks
    /// up app settings (the role passwords' settings).
    pub fn new(
        clickhouse: &ClickHouseSettings,
        vault: Option<&VaultNames>,
        policy: &AccessPolicy,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, PlanError> {
        let mut problems = Vec::new();
        let service = match vault {
            Some(names) => LoginRecipe {
                user: names
                    .user_secret
                    .clone()
                    .map_or_else(|| Value::Known(Secret::new(clickhouse.user.as_str())), Value::Vault),
                password: Value::Vault(names.password_secret.clone()),
            },
            None => LoginRecipe {
                user: Value::Known(Secret::new(clickhouse.user.as_str())),
                password: Value::Known(clickhouse.password.clone()),
            },
        };
        let mut roles = BTreeMap::new();
        for role in policy.roles() {
            let Some(login) = &role.clickhouse_user else {
                continue;
            };
            let password = match (&login.password_secret, &login.password_setting, vault) {
                (Some(secret), _, Some(_)) => Value::Vault(secret.clone()),
                (Some(secret), None, None) => {
                    problems.push(format!(
                        "role {}: clickhouse.password_secret {secret:?} needs a vault (set CHGATE_KEYVAULT_URL), \
                         or give clickhouse.password_setting for running without one",
                        role.name
                    ));
                    continue;
                }
                (_, Some(setting), _) => match env(setting) {
                    Some(password) => Value::Known(Secret::new(password)),
                    None => {
                        problems.push(format!(
                            "role {}: app setting {setting} (the ClickHouse password of user {}) is not set",
                            role.name, login.user
                        ));
                        continue;
                    }
                },
                (None, None, _) => Value::Known(Secret::default()),
            };
            roles.insert(
                role.name.clone(),
                LoginRecipe {
                    user: Value::Known(Secret::new(login.user.as_str())),
                    password,
                },
            );
        }
        if problems.is_empty() {
            Ok(Self { service, roles })
        } else {
            Err(PlanError(problems))
        }
    }

    /// Whether any value is read from the vault.
    pub fn uses_vault(&self) -> bool {
        std::iter::once(&self.service)
            .chain(self.roles.values())
            .any(|recipe| matches!(recipe.user, Value::Vault(_)) || matches!(recipe.password, Value::Vault(_)))
    }
}
