//! "Who can call what": the endpoint × role matrix of a catalog under a policy, the claims
//! that grant each role, and which endpoints are tenant-scoped or cross-tenant.

use std::fmt::Write;

use super::policy::AccessPolicy;
use crate::catalog::Catalog;

/// The report as text.
pub fn access_report(catalog: &Catalog, policy: &AccessPolicy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Endpoints");
    for endpoint in catalog.endpoints() {
        let methods: Vec<&str> = endpoint.methods().iter().map(|m| m.as_str()).collect();
        let scope = if endpoint.caller_params().contains(&"caller_tenant") {
            "tenant-scoped: filtered by the caller's tenant".to_owned()
        } else {
            let reads: Vec<&str> = policy
                .tenant_scoped_tables()
                .iter()
                .filter(|table| crate::catalog::sql::scan(endpoint.sql()).identifiers.contains(*table))
                .map(String::as_str)
                .collect();
            if reads.is_empty() {
                "no tenant data".to_owned()
            } else {
                format!("CROSS-TENANT: reads {} across tenants", reads.join(", "))
            }
        };
        let path = format!("/{}/{}", catalog.route_prefix(), endpoint.route());
        let _ = writeln!(
            out,
            "  {:<18} {:<9} {:<26} roles: {:<12} {}",
            endpoint.name(),
            methods.join(","),
            path,
            endpoint.roles().join(", "),
            scope
        );
    }
    let _ = writeln!(out, "\nRoles");
    for role in policy.roles() {
        let grants: Vec<String> = policy
            .grants()
            .iter()
            .filter(|grant| grant.role == role.name)
            .map(|grant| format!("{} has any of [{}]", grant.claim, grant.any_of.join(", ")))
            .collect();
        let callable: Vec<&str> = catalog
            .endpoints()
            .iter()
            .filter(|endpoint| endpoint.roles().contains(&role.name))
            .map(|endpoint| endpoint.name())
            .collect();
        let _ = writeln!(
            out,
            "  {}{}",
            role.name,
            if role.cross_tenant { " (cross-tenant)" } else { "" }
        );
        let _ = writeln!(
            out,
            "    granted when: {}",
            if grants.is_empty() {
                "never (no grant rule)".to_owned()
            } else {
                grants.join(" or ")
            }
        );
        let _ = writeln!(
            out,
            "    may call: {}",
            if callable.is_empty() {
                "nothing".to_owned()
            } else {
                callable.join(", ")
            }
        );
    }
    let _ = writeln!(
        out,
        "\nTenant: claim {}; tenant-scoped tables: {}",
        policy.tenant_claim(),
        policy.tenant_scoped_tables().join(", ")
    );
    let _ = writeln!(out, "Issuers:");
    for issuer in policy.issuers() {
        let _ = writeln!(
            out,
            "  {} {}{} audiences: {}",
            issuer.name,
            issuer.url,
            if issuer.dev { " (development)" } else { "" },
            issuer.audiences.join(", ")
        );
    }
    out
}
