//! Every app setting the handler reads is either set by the Bicep or documented in
//! docs/operations.md; the ones a deployment cannot work without are set by the Bicep; and
//! the development switch is never set.

use std::collections::BTreeSet;

use super::{files, read, root};

/// What a deployment in Azure needs: ClickHouse, the vault holding its password, the token
/// issuer, telemetry and the ingest spool.
const REQUIRED: [&str; 11] = [
    "CLICKHOUSE_URL",
    "CLICKHOUSE_USER",
    "CLICKHOUSE_DATABASE",
    "CHGATE_KEYVAULT_URL",
    "CHGATE_CLICKHOUSE_PASSWORD_SECRET",
    "CHGATE_ISSUER__ENTRA__URL",
    "CHGATE_ISSUER__ENTRA__AUDIENCES",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "CHGATE_SPOOL__queueServiceUri",
    "CHGATE_SPOOL__blobServiceUri",
    "CHGATE_SPOOL_KEY",
];

/// Settings the handler reads from its environment (string literals naming them in src/).
fn read_by_the_handler() -> BTreeSet<String> {
    let name = regex::Regex::new(
        r#""((?:CHGATE|CLICKHOUSE)_[A-Za-z0-9_]+|APPLICATIONINSIGHTS_CONNECTION_STRING|AZURE_CLIENT_ID|RUST_LOG)""#,
    )
    .expect("regex");
    let mut names = BTreeSet::new();
    for path in files(&root().join("src"), ".rs") {
        let text = read(&path);
        names.extend(name.captures_iter(&text).map(|found| found[1].to_owned()));
    }
    names
}

fn bicep_text() -> String {
    files(&root().join("infra"), ".bicep")
        .iter()
        .map(|path| read(path))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names of the app settings the Bicep sets: `{ name: 'X', value: ... }` entries.
fn app_settings(bicep: &str) -> BTreeSet<String> {
    let entry = regex::Regex::new(r"\{\s*name:\s*'([A-Za-z0-9_]+)',\s*value:").expect("regex");
    entry.captures_iter(bicep).map(|found| found[1].to_owned()).collect()
}

/// Whether the Bicep mentions `name` as a whole word.
fn mentions(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

#[test]
fn the_handlers_settings_are_set_by_the_bicep_or_documented() {
    let read_names = read_by_the_handler();
    assert!(
        read_names.contains("CLICKHOUSE_URL") && read_names.contains("CHGATE_SPOOL_KEY"),
        "{read_names:?}"
    );
    let bicep = bicep_text();
    let operations = read(&root().join("docs/operations.md"));
    let missing: Vec<&String> = read_names
        .iter()
        .filter(|name| !mentions(&bicep, name) && !mentions(&operations, name))
        .collect();
    assert!(
        missing.is_empty(),
        "neither set by infra/ nor in docs/operations.md: {missing:?}"
    );
    // Required ones as settings, not merely named in a comment or a description.
    let set = app_settings(&bicep);
    let unset: Vec<&str> = REQUIRED.iter().copied().filter(|name| !set.contains(*name)).collect();
    assert!(unset.is_empty(), "infra/ does not set: {unset:?} (it sets {set:?})");
    let key = regex::Regex::new(
        r"name: 'CHGATE_SPOOL_KEY', value: '@Microsoft\.KeyVault\(SecretUri=\$\{keyVaultUri\}secrets/",
    )
    .expect("regex");
    assert!(key.is_match(&bicep), "CHGATE_SPOOL_KEY is a Key Vault reference");
    assert!(
        !bicep.contains("name: 'CHGATE_ALLOW_DEV_ISSUERS'"),
        "the development switch is never set in Azure"
    );
}
