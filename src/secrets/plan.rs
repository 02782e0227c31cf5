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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessPolicy, Place};

    const POLICY: &str = r#"
version = 1
[[issuers]]
name = "entra"
url = "https://login.microsoftonline.com/t1/v2.0"
audiences = ["api://chgate"]

[tenant]
claim = "tid"

[roles.reader]
description = "reads"

[roles.analyst]
description = "its own ClickHouse user"
[roles.analyst.clickhouse]
user = "chgate_analyst"
password_setting = "CH_ANALYST_PASSWORD"
password_secret = "ch-analyst-password"

[[grants]]
role = "analyst"
claim = "roles"
any_of = ["Analytics.Read"]
"#;

    fn policy(text: &str) -> AccessPolicy {
        let place = Place {
            in_azure: false,
            allow_dev_issuers: false,
        };
        AccessPolicy::from_toml(toml::from_str(text).expect("toml"), &|_| None, place).expect("policy")
    }

    fn clickhouse() -> ClickHouseSettings {
        ClickHouseSettings {
            url: "http://127.0.0.1:8123".into(),
            user: "chgate".into(),
            password: Secret::new("from-settings"),
            database: "default".into(),
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "CH_ANALYST_PASSWORD").then(|| "analyst-from-settings".to_owned())
    }

    #[test]
    fn without_a_vault_every_value_comes_from_app_settings() {
        let plan = LoginPlan::new(&clickhouse(), None, &policy(POLICY), &env).expect("plan");
        assert!(!plan.uses_vault());
        assert_eq!(plan.service.password, Value::Known(Secret::new("from-settings")));
        assert_eq!(
            plan.roles["analyst"].password,
            Value::Known(Secret::new("analyst-from-settings"))
        );
        assert!(
            !plan.roles.contains_key("reader"),
            "a role without a user of its own has no login"
        );
    }

    #[test]
    fn with_a_vault_the_passwords_are_vault_secrets() {
        let names = VaultNames {
            user_secret: Some("clickhouse-user".into()),
            password_secret: "clickhouse-password".into(),
        };
        let plan = LoginPlan::new(&clickhouse(), Some(&names), &policy(POLICY), &env).expect("plan");
        assert!(plan.uses_vault());
        assert_eq!(plan.service.user, Value::Vault("clickhouse-user".into()));
        assert_eq!(plan.service.password, Value::Vault("clickhouse-password".into()));
        assert_eq!(
            plan.roles["analyst"].password,
            Value::Vault("ch-analyst-password".into())
        );
        assert_eq!(plan.roles["analyst"].user, Value::Known(Secret::new("chgate_analyst")));
    }

    #[test]
    fn a_missing_setting_or_a_secret_without_a_vault_stops_the_start() {
        let error = LoginPlan::new(&clickhouse(), None, &policy(POLICY), &|_| None).expect_err("refused");
        assert!(error.to_string().contains("CH_ANALYST_PASSWORD"), "{error}");
        let secret_only = POLICY.replace("password_setting = \"CH_ANALYST_PASSWORD\"\n", "");
        let error = LoginPlan::new(&clickhouse(), None, &policy(&secret_only), &env).expect_err("refused");
        assert!(error.to_string().contains("CHGATE_KEYVAULT_URL"), "{error}");
    }
}
