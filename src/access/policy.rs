//! The access policy (`access.toml`, versioned with the app): which issuers are trusted, how
//! claims grant roles, which claim names the tenant, what each role may do in ClickHouse, and
//! which tables hold tenant data. Unknown keys are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::limits::{InstanceLimits, InstanceLimitsToml, RoleLimits, RoleLimitsToml};

/// Where the policy is used, which decides the issuers it may trust.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    /// Running in Azure (`WEBSITE_SITE_NAME` is set): only https issuers, never dev ones.
    pub in_azure: bool,
    /// Development issuers (`dev = true`) are trusted only when this is set
    /// (`CHGATE_ALLOW_DEV_ISSUERS=1`, which `cargo xtask dev` sets), and never in Azure.
    pub allow_dev_issuers: bool,
}

impl Place {
    /// From the environment: `WEBSITE_SITE_NAME` and `CHGATE_ALLOW_DEV_ISSUERS`.
    pub fn from_env() -> Self {
        Self {
            in_azure: std::env::var_os("WEBSITE_SITE_NAME").is_some_and(|name| !name.is_empty()),
            allow_dev_issuers: std::env::var("CHGATE_ALLOW_DEV_ISSUERS").is_ok_and(|v| v == "1"),
        }
    }

    /// For commands that read the policy without verifying tokens (`handler check`, the spool
    /// drain): development issuers count as trusted outside Azure, so that checking a source
    /// checkout does not depend on how its shell is set up.
    pub fn for_checks() -> Self {
        Self {
            allow_dev_issuers: true,
            ..Self::from_env()
        }
    }
}

/// `access.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessToml {
    pub version: u32,
    #[serde(default)]
    pub issuers: Vec<IssuerToml>,
    pub tenant: TenantToml,
    #[serde(default)]
    pub tables: TablesToml,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleToml>,
    #[serde(default)]
    pub grants: Vec<GrantToml>,
    #[serde(default)]
    pub limits: InstanceLimitsToml,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerToml {
    /// Names the issuer in app settings overrides (`CHGATE_ISSUER__<NAME>__URL`).
    pub name: String,
    /// The issuer URL: `iss` must equal it, and discovery starts from it.
    pub url: String,
    /// Other `iss` values signed with the same keys (Entra's v1 form `https://sts.windows.net/<tid>/`).
    #[serde(default)]
    pub also_accept: Vec<String>,
    /// `aud` must be one of these.
    pub audiences: Vec<String>,
    /// A development issuer: refused when running in Azure.
    #[serde(default)]
    pub dev: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantToml {
    /// The claim holding the tenant (`tid` for Entra, or a custom claim such as `org_id`).
    pub claim: String,
    /// Optional mapping of claim values to tenant ids; when present, unmapped values give no
    /// tenant.
    pub values: Option<BTreeMap<String, String>>,
    /// A ClickHouse custom setting (`SQL_…`) the handler sets to the caller's tenant on every
    /// tenant-scoped query, for a row policy to filter by (docs/security.md).
    pub clickhouse_setting: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesToml {
    /// Tables whose rows belong to tenants: every endpoint reading them must filter by
    /// `{caller_tenant:String}`.
    #[serde(default)]
    pub tenant_scoped: Vec<String>,
    /// The column holding the tenant in those tables (default `tenant_id`).
    pub tenant_column: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleToml {
    #[serde(default)]
    pub description: String,
    /// May call endpoints that read tenant-scoped tables without the tenant filter.
    #[serde(default)]
    pub cross_tenant: bool,
    #[serde(default)]
    pub clickhouse: RoleSettingsToml,
    #[serde(default)]
    pub limits: RoleLimitsToml,
}

/// Per-role ClickHouse limits; each tightens the endpoint's own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettingsToml {
    pub max_execution_time: Option<u64>,
    pub max_memory_usage: Option<u64>,
    pub max_result_rows: Option<u64>,
    pub max_result_bytes: Option<u64>,
    pub priority: Option<u64>,
    /// A ClickHouse user for this role, so ClickHouse's own grants apply too.
    pub user: Option<String>,
    /// The app setting holding that user's password (used when no vault is configured, or
    /// when the role names no vault secret).
    pub password_setting: Option<String>,
    /// The Key Vault secret holding that user's password (used when a vault is configured).
    pub password_secret: Option<String>,
}

/// A role's own ClickHouse user, and where its password comes from (resolved by the secret
/// store, not here: the policy never holds a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleLogin {
    pub user: String,
    pub password_setting: Option<String>,
    pub password_secret: Option<String>,
}

/// A rule: callers whose `claim` holds any of `any_of` get `role`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantToml {
    pub role: String,
    pub claim: String,
    pub any_of: Vec<String>,
}

/// A trusted issuer, after overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub name: String,
    pub url: String,
    pub accepted_iss: Vec<String>,
    pub audiences: Vec<String>,
    pub dev: bool,
}

/// What a role may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub cross_tenant: bool,
    pub max_execution_time: Option<Duration>,
    pub max_memory_usage: Option<u64>,
    pub max_result_rows: Option<u64>,
    pub max_result_bytes: Option<u64>,
    pub priority: Option<u64>,
    pub clickhouse_user: Option<RoleLogin>,
    pub limits: RoleLimits,
}

/// The checked policy.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    issuers: Vec<Issuer>,
    tenant_claim: String,
    tenant_values: Option<BTreeMap<String, String>>,
    tenant_setting: Option<String>,
    tenant_scoped_tables: Vec<String>,
    tenant_column: String,
    roles: BTreeMap<String, Role>,
    grants: Vec<GrantToml>,
    instance_limits: InstanceLimits,
    /// Issuers of the file not trusted here, each with the reason (logged at start).
    left_out: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("access policy {file}: {problems:?}")]
pub struct PolicyError {
    pub file: String,
    pub problems: Vec<String>,
}

impl AccessPolicy {
    /// Reads and checks `path`, applying app-setting overrides from `env`
    /// (`CHGATE_ISSUER__<NAME>__URL`, `CHGATE_ISSUER__<NAME>__AUDIENCES` comma-separated), and
    /// refusing plain-http issuers when `in_azure`.
    ///
    /// One file serves every place: an issuer without a URL (one each deployment names in its
    /// app settings) and a development issuer where development issuers are not allowed are
    /// left out, never trusted; a policy that leaves no issuer trusted is refused.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>, place: Place) -> Result<Self, PolicyError> {
        let fail = |problems: Vec<String>| PolicyError {
            file: path.display().to_string(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
        let toml: AccessToml = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            fail(vec![format!("line {}: {}", line.unwrap_or(0), e.message().trim())])
        })?;
        Self::from_toml(toml, env, place).map_err(fail)
    }

    pub fn from_toml(
        toml: AccessToml,
        env: &dyn Fn(&str) -> Option<String>,
        place: Place,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if toml.version != 1 {
            problems.push(format!(
                "version {} is not supported; this handler reads version 1",
                toml.version
            ));
        }
        let mut issuers = Vec::new();
        let mut left_out = Vec::new();
        for issuer in toml.issuers {
            let key = issuer.name.to_ascii_uppercase().replace('-', "_");
            let url = env(&format!("CHGATE_ISSUER__{key}__URL")).unwrap_or(issuer.url);
            if url.trim().is_empty() {
                left_out.push(format!(
                    "issuer {}: no URL here (set CHGATE_ISSUER__{key}__URL to trust it)",
                    issuer.name
                ));
                continue;
            }
            if issuer.dev && (place.in_azure || !place.allow_dev_issuers) {
                left_out.push(format!(
                    "issuer {}: a development issuer, trusted only locally with CHGATE_ALLOW_DEV_ISSUERS=1 and never in Azure",
                    issuer.name
                ));
                continue;
            }
            let audiences = list_setting(env, &format!("CHGATE_ISSUER__{key}__AUDIENCES")).unwrap_or(issuer.audiences);
            if audiences.is_empty() {
                problems.push(format!(
                    "issuer {}: audiences is empty; list the token audiences this API accepts",
                    issuer.name
                ));
            }
            if place.in_azure && !url.starts_with("https://") {
                problems.push(format!(
                    "issuer {}: {url} is not https, which is refused when running in Azure",
                    issuer.name
                ));
            }
            let also_accept =
                list_setting(env, &format!("CHGATE_ISSUER__{key}__ALSO_ACCEPT")).unwrap_or(issuer.also_accept);
            let mut accepted_iss = vec![url.clone()];
            accepted_iss.extend(also_accept);
            issuers.push(Issuer {
                name: issuer.name,
                url,
                accepted_iss,
                audiences,
                dev: issuer.dev,
            });
        }
        let mut roles = BTreeMap::new();
        for (name, role) in toml.roles {
            let settings = role.clickhouse;
            let clickhouse_user = match settings.user {
                Some(user) => Some(RoleLogin {
                    user,
                    password_setting: settings.password_setting,
                    password_secret: settings.password_secret,
                }),
                None => {
                    if settings.password_setting.is_some() || settings.password_secret.is_some() {
                        problems.push(format!(
                            "role {name}: clickhouse.password_setting and password_secret need clickhouse.user"
                        ));
                    }
                    None
                }
            };
            if settings.max_execution_time == Some(0) {
                problems.push(format!("role {name}: clickhouse.max_execution_time must be at least 1"));
            }
            let limits = RoleLimits::parse(&name, &role.limits, &mut problems);
            roles.insert(
                name.clone(),
                Role {
                    name,
                    description: role.description,
                    cross_tenant: role.cross_tenant,
                    max_execution_time: settings.max_execution_time.map(Duration::from_secs),
                    max_memory_usage: settings.max_memory_usage,
                    max_result_rows: settings.max_result_rows,
                    max_result_bytes: settings.max_result_bytes,
                    priority: settings.priority,
                    clickhouse_user,
                    limits,
                },
            );
        }
        for grant in &toml.grants {
            if !roles.contains_key(&grant.role) {
                problems.push(format!(
                    "a grant names role {:?}, which [roles] does not define",
                    grant.role
                ));
            }
            if grant.any_of.is_empty() {
                problems.push(format!(
                    "the grant of role {} by claim {} has an empty any_of",
                    grant.role, grant.claim
                ));
            }
        }
        if let Some(setting) = &toml.tenant.clickhouse_setting
            && (!setting.starts_with("SQL_") || !setting.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            problems.push(format!(
                "tenant.clickhouse_setting {setting:?} must be a custom setting: SQL_ followed by letters, digits and _"
            ));
        }
        if toml.tenant.clickhouse_setting.is_some() {
            for role in roles
                .values()
                .filter(|role| role.cross_tenant && role.clickhouse_user.is_none())
            {
                problems.push(format!(
                    "role {}: a cross-tenant role needs a ClickHouse user of its own (clickhouse.user) when \
                     tenant.clickhouse_setting feeds a row policy, or the policy would narrow it to one tenant",
                    role.name
                ));
            }
        }
        if toml.tenant.claim.trim().is_empty() {
            problems.push("tenant.claim is empty; name the claim that holds the tenant".into());
        }
        let instance_limits = InstanceLimits::parse(
            &toml.limits,
            env("CHGATE_MAX_INFLIGHT_QUERIES").as_deref(),
            &mut problems,
        );
        if issuers.is_empty() && problems.is_empty() {
            let reasons = if left_out.is_empty() {
                "the file lists none".to_owned()
            } else {
                left_out.join("; ")
            };
            problems.push(format!("no token issuer is trusted here ({reasons})"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            issuers,
            left_out,
            tenant_claim: toml.tenant.claim,
            tenant_values: toml.tenant.values,
            tenant_setting: toml.tenant.clickhouse_setting,
            tenant_scoped_tables: toml.tables.tenant_scoped,
            tenant_column: toml.tables.tenant_column.unwrap_or_else(|| "tenant_id".to_owned()),
            roles,
            grants: toml.grants,
            instance_limits,
        })
    }

    /// Issuers of the file that are not trusted here, and why.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// The instance's bound on in-flight ClickHouse queries.
    pub fn instance_limits(&self) -> InstanceLimits {
        self.instance_limits
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }
    pub fn tenant_scoped_tables(&self) -> &[String] {
        &self.tenant_scoped_tables
    }
    pub fn tenant_claim(&self) -> &str {
        &self.tenant_claim
    }
    /// The custom setting carrying the tenant to ClickHouse, if configured.
    pub fn tenant_setting(&self) -> Option<&str> {
        self.tenant_setting.as_deref()
    }
    pub fn grants(&self) -> &[GrantToml] {
        &self.grants
    }

    /// What the catalog must check every endpoint against.
    pub fn catalog_rules(&self) -> crate::catalog::AccessRules {
        crate::catalog::AccessRules {
            roles: self.roles.keys().cloned().collect(),
            cross_tenant_roles: self
                .roles
                .values()
                .filter(|r| r.cross_tenant)
                .map(|r| r.name.clone())
                .collect(),
            tenant_scoped_tables: self.tenant_scoped_tables.clone(),
            tenant_column: self.tenant_column.clone(),
            protected_settings: self.tenant_setting.iter().cloned().collect(),
        }
    }

    /// The roles a set of verified claims grants, in policy order, without repeats.
    pub fn roles_for(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Vec<&Role> {
        let mut names = BTreeSet::new();
        let mut granted = Vec::new();
        for grant in &self.grants {
            let held = claim_values(claims.get(&grant.claim));
            if grant
                .any_of
                .iter()
                .any(|wanted| held.iter().any(|value| value == wanted))
                && names.insert(grant.role.as_str())
                && let Some(role) = self.roles.get(&grant.role)
            {
                granted.push(role);
            }
        }
        granted
    }

    /// The tenant a set of verified claims names, if any (mapped when the policy maps).
    pub fn tenant_for(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let value = claims.get(&self.tenant_claim)?.as_str()?.trim();
        if value.is_empty() || value.len() > 256 {
            return None;
        }
        match &self.tenant_values {
            Some(map) => map.get(value).cloned(),
            None => Some(value.to_owned()),
        }
    }
}

/// A comma-separated app setting as a list (empty items dropped), if the setting is present.
fn list_setting(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<Vec<String>> {
    env(name).map(|list| {
        list.split(',')
            .map(|item| item.trim().to_owned())
            .filter(|item| !item.is_empty())
            .collect()
    })
}

/// A claim's values: an array's strings, or a string split on spaces (as `scp` and `scope`
/// carry several values in one string).
fn claim_values(claim: Option<&serde_json::Value>) -> Vec<&str> {
    match claim {
        Some(serde_json::Value::String(text)) => text.split(' ').filter(|v| !v.is_empty()).collect(),
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(serde_json::Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: &str = r#"
version = 1
[[issuers]]
name = "entra"
url = "https://login.microsoftonline.com/t1/v2.0"
also_accept = ["https://sts.windows.net/t1/"]
audiences = ["api://chgate"]

[tenant]
claim = "org_id"

[tables]
tenant_scoped = ["events"]

[roles.analyst]
description = "reads its tenant"
[roles.analyst.clickhouse]
max_execution_time = 5

[roles.admin]
cross_tenant = true

[[grants]]
role = "analyst"
claim = "scp"
any_of = ["api.read"]

[[grants]]
role = "admin"
claim = "roles"
any_of = ["Analytics.Admin"]
"#;

    const LOCAL: Place = Place {
        in_azure: false,
        allow_dev_issuers: true,
    };
    const AZURE: Place = Place {
        in_azure: true,
        allow_dev_issuers: true,
    };

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn policy() -> AccessPolicy {
        AccessPolicy::from_toml(toml::from_str(POLICY).expect("toml"), &no_env, LOCAL).expect("policy")
    }

    fn claims(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().expect("object").clone()
    }

    #[test]
    fn roles_come_from_space_separated_scopes_and_arrays() {
        let policy = policy();
        let names = |c| {
            policy
                .roles_for(&claims(c))
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(json!({"scp": "openid api.read"})), ["analyst"]);
        assert_eq!(
            names(json!({"roles": ["x", "Analytics.Admin"], "scp": "api.read"})),
            ["analyst", "admin"]
        );
        assert!(names(json!({"scp": "api.readx"})).is_empty());
        assert!(names(json!({"roles": "Analytics"})).is_empty());
    }

    #[test]
    fn the_tenant_comes_from_the_configured_claim() {
        let policy = policy();
        assert_eq!(
            policy.tenant_for(&claims(json!({"org_id": "acme"}))).as_deref(),
            Some("acme")
        );
        assert_eq!(policy.tenant_for(&claims(json!({"org_id": 7}))), None);
        assert_eq!(policy.tenant_for(&claims(json!({"tid": "acme"}))), None);
    }

    #[test]
    fn app_settings_override_issuer_url_and_audiences() {
        let env = |name: &str| match name {
            "CHGATE_ISSUER__ENTRA__URL" => Some("https://login.microsoftonline.com/t2/v2.0".to_owned()),
            "CHGATE_ISSUER__ENTRA__AUDIENCES" => Some("api://a, api://b".to_owned()),
            _ => None,
        };
        let policy = AccessPolicy::from_toml(toml::from_str(POLICY).expect("toml"), &env, LOCAL).expect("policy");
        assert_eq!(policy.issuers()[0].url, "https://login.microsoftonline.com/t2/v2.0");
        assert_eq!(policy.issuers()[0].audiences, ["api://a", "api://b"]);
        assert_eq!(policy.issuers()[0].accepted_iss[1], "https://sts.windows.net/t1/");
    }

    #[test]
    fn plain_http_issuers_are_refused_in_azure_and_dev_issuers_left_out() {
        let text = POLICY.replace("https://login.microsoftonline.com/t1/v2.0", "http://127.0.0.1:9/");
        let problems =
            AccessPolicy::from_toml(toml::from_str(&text).expect("toml"), &no_env, AZURE).expect_err("refused");
        assert!(problems[0].contains("not https"), "{problems:?}");
        // A development issuer beside a configured one: left out, the other trusted.
        let dev = format!(
            "{POLICY}\n[[issuers]]\nname = \"dev\"\nurl = \"http://127.0.0.1:9\"\naudiences = [\"api://chgate\"]\ndev = true\n"
        );
        let not_allowed = Place {
            in_azure: false,
            allow_dev_issuers: false,
        };
        for place in [AZURE, not_allowed] {
            let policy = AccessPolicy::from_toml(toml::from_str(&dev).expect("toml"), &no_env, place).expect("policy");
            assert_eq!(
                policy.issuers().iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
                ["entra"]
            );
            assert!(
                policy.left_out()[0].contains("CHGATE_ALLOW_DEV_ISSUERS"),
                "{:?}",
                policy.left_out()
            );
        }
        let local = AccessPolicy::from_toml(toml::from_str(&dev).expect("toml"), &no_env, LOCAL).expect("policy");
        assert_eq!(local.issuers().len(), 2);
        // Only a development issuer, where it is not allowed: nothing would be trusted.
        let only_dev = POLICY.replace(
            "audiences = [\"api://chgate\"]",
            "audiences = [\"api://chgate\"]\ndev = true",
        );
        let problems =
            AccessPolicy::from_toml(toml::from_str(&only_dev).expect("toml"), &no_env, AZURE).expect_err("refused");
        assert!(problems[0].contains("no token issuer is trusted here"), "{problems:?}");
        assert!(problems[0].contains("development issuer"), "{problems:?}");
    }

    #[test]
    fn an_issuer_without_a_url_waits_for_its_app_setting() {
        let unset = POLICY.replace("url = \"https://login.microsoftonline.com/t1/v2.0\"", "url = \"\"");
        let problems =
            AccessPolicy::from_toml(toml::from_str(&unset).expect("toml"), &no_env, AZURE).expect_err("refused");
        assert!(problems[0].contains("set CHGATE_ISSUER__ENTRA__URL"), "{problems:?}");
        let env = |name: &str| {
            (name == "CHGATE_ISSUER__ENTRA__URL").then(|| "https://login.microsoftonline.com/t9/v2.0".to_owned())
        };
        let policy = AccessPolicy::from_toml(toml::from_str(&unset).expect("toml"), &env, AZURE).expect("policy");
        assert_eq!(policy.issuers()[0].url, "https://login.microsoftonline.com/t9/v2.0");
        assert!(policy.left_out().is_empty());
    }

    #[test]
    fn unknown_keys_and_undefined_roles_are_refused() {
        assert!(toml::from_str::<AccessToml>(&POLICY.replace("cross_tenant", "cross_tennant")).is_err());
        let text = POLICY.replace("role = \"admin\"", "role = \"root\"");
        let problems =
            AccessPolicy::from_toml(toml::from_str(&text).expect("toml"), &no_env, LOCAL).expect_err("refused");
        assert!(problems[0].contains("\"root\""), "{problems:?}");
    }
}
