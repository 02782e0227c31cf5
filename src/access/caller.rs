//! The caller a verified token describes, and the permission to run one endpoint. Checking a
//! permission and using it are one step: a [`Grant`] exists only if the check passed, and the
//! query runner takes nothing else.

use aws_lc_rs::digest;
use serde_json::Value;

use super::policy::{AccessPolicy, Role};
use super::token::Claims;
use crate::catalog::Endpoint;

/// A verified caller, with its roles borrowed from the policy (nothing is copied per request).
#[derive(Debug, Clone)]
pub struct Caller<'p> {
    subject: String,
    /// The issuer and the subject together: `sub` is unique only within its issuer.
    caller_key: String,
    roles: Vec<&'p Role>,
    tenant: Option<String>,
}

/// Why a verified caller may not run an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("your roles ({held}) may not call this endpoint; it needs one of: {needed}")]
    RoleNotAllowed { held: String, needed: String },
    #[error("this endpoint reads tenant data and your token names no tenant")]
    NoTenant,
}

impl<'p> Caller<'p> {
    /// Maps verified claims to roles and a tenant through the policy.
    pub fn from_claims(claims: &Claims, policy: &'p AccessPolicy) -> Self {
        if claims
            .get("_claim_names")
            .and_then(|names| names.get("groups"))
            .is_some()
        {
            // Entra left the groups out (too many): grants by group cannot apply to this caller,
            // and nothing is assumed in their place.
            tracing::warn!(caller.subject_hash = %subject_hash(subject_of(claims)), "token has a groups overage; group-based grants do not apply");
        }
        let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        Self {
            caller_key: format!("{issuer}\u{1f}{}", subject_of(claims)),
            subject: subject_of(claims).to_owned(),
            roles: policy.roles_for(claims),
            tenant: policy.tenant_for(claims),
        }
    }

    /// The grant to call `endpoint`: the endpoint's first role the caller holds, and a
    /// tenant when its SQL filters by one.
    pub fn grant<'e>(&self, endpoint: &'e Endpoint) -> Result<Grant<'e>, AccessError>
    where
        'p: 'e,
    {
        let who = self.authorize(endpoint.roles(), endpoint.caller_params().contains(&"caller_tenant"))?;
        Ok(Grant { endpoint, who })
    }

    /// The caller as one of `roles` (the first of them it holds), with a tenant when
    /// `needs_tenant`: what any function that checks roles needs.
    pub fn authorize<'e>(&self, roles: &[String], needs_tenant: bool) -> Result<Who<'e>, AccessError>
    where
        'p: 'e,
    {
        let role = roles
            .iter()
            .find_map(|name| self.roles.iter().copied().find(|held| &held.name == name))
            .ok_or_else(|| AccessError::RoleNotAllowed {
                held: if self.roles.is_empty() {
                    "none".to_owned()
                } else {
                    self.roles
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                needed: roles.join(", "),
            })?;
        if needs_tenant && self.tenant.is_none() {
            return Err(AccessError::NoTenant);
        }
        Ok(Who {
            role,
            tenant: self.tenant.clone(),
            subject: self.subject.clone(),
            caller_key: self.caller_key.clone(),
        })
    }
}

fn subject_of(claims: &Claims) -> &str {
    claims.get("sub").and_then(Value::as_str).unwrap_or("")
}

/// A stable, non-reversible name for a subject, for logs and ClickHouse's query log.
pub fn subject_hash(subject: &str) -> String {
    let digest = digest::digest(&digest::SHA256, subject.as_bytes());
    crate::text::hex(&digest.as_ref()[..8])
}

/// Permission for one caller to run one endpoint, with the identity the query carries.
/// A verified caller acting in one role, for one function.
#[derive(Debug, Clone)]
pub struct Who<'e> {
    role: &'e Role,
    tenant: Option<String>,
    subject: String,
    caller_key: String,
}

impl<'e> Who<'e> {
    pub fn role(&self) -> &'e Role {
        self.role
    }

    /// The caller's tenant, if its token names one.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The token's subject (never logged in clear).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Who the caller is across issuers (issuer and subject), for per-caller limits.
    pub fn caller_key(&self) -> &str {
        &self.caller_key
    }
}

/// Permission for one caller to run one query endpoint: the only way to run a query.
#[derive(Debug, Clone)]
pub struct Grant<'e> {
    endpoint: &'e Endpoint,
    who: Who<'e>,
}

impl<'e> Grant<'e> {
    pub fn endpoint(&self) -> &'e Endpoint {
        self.endpoint
    }

    pub fn who(&self) -> &Who<'e> {
        &self.who
    }

    pub fn role(&self) -> &'e Role {
        self.who.role
    }

    pub fn tenant(&self) -> Option<&str> {
        self.who.tenant()
    }

    pub fn subject(&self) -> &str {
        self.who.subject()
    }

    pub fn caller_key(&self) -> &str {
        self.who.caller_key()
    }

    /// The values of the reserved caller parameters the endpoint's SQL uses.
    pub fn caller_params(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.endpoint.caller_params().iter().map(|name| {
            let value = match *name {
                "caller_tenant" => self.who.tenant.as_deref().unwrap_or_default(),
                "caller_subject" => self.who.subject.as_str(),
                _ => self.who.role.name.as_str(),
            };
            (*name, value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::policy::Place;
    use serde_json::json;

    #[test]
    fn one_subject_at_two_issuers_is_two_callers() {
        let text = "version = 1\n[[issuers]]\nname = \"a\"\nurl = \"https://a.example\"\naudiences = [\"api://x\"]\n[tenant]\nclaim = \"tid\"\n";
        let toml = toml::from_str(text).expect("toml");
        let place = Place {
            in_azure: false,
            allow_dev_issuers: true,
        };
        let policy = AccessPolicy::from_toml(toml, &|_| None, place).expect("policy");
        let caller = |iss: &str| {
            let claims = json!({"iss": iss, "sub": "same", "tid": "acme"});
            Caller::from_claims(claims.as_object().expect("object"), &policy).caller_key
        };
        assert_ne!(caller("https://a.example"), caller("https://b.example"));
        assert_eq!(caller("https://a.example"), caller("https://a.example"));
    }
}
