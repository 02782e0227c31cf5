//! The catalog refuses every broken endpoint folder with a message naming the file, the line
//! where it can, and the fix; and loads the shipped and fixture catalogs.
//! Set `UPDATE_EXPECTED=1` to rewrite `expected.txt` files after an intended message change.

use std::path::{Path, PathBuf};

use chgate::access::AccessPolicy;
use chgate::catalog::{AccessRules, Catalog};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What the fixture access policy requires of endpoints.
fn rules() -> AccessRules {
    AccessPolicy::load(
        &fixtures().join("access.toml"),
        &|_| None,
        chgate::access::Place {
            in_azure: false,
            allow_dev_issuers: true,
        },
    )
    .expect("fixture policy")
    .catalog_rules()
}

#[test]
fn every_invalid_endpoint_fixture_is_refused_with_its_expected_message() {
    let root = fixtures().join("invalid_endpoints");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "expected the full set of fixtures, found {}",
        cases.len()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let error = match Catalog::load(case, "api", &rules()) {
            Ok(_) => {
                mismatches.push(format!("{}: loaded, but must be refused", case.display()));
                continue;
            }
            Err(error) => error,
        };
        let actual: String = error.problems.iter().map(|p| format!("{p}\n")).collect();
        let expected_file = case.join("expected.txt");
        if std::env::var_os("UPDATE_EXPECTED").is_some() {
            std::fs::write(&expected_file, &actual).expect("writing expected.txt");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if actual != expected {
            mismatches.push(format!(
                "{}:\n  expected: {expected:?}\n  actual:   {actual:?}",
                case.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_shipped_functions_folder_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = chgate::startup::route_prefix(&root.join("host.json")).expect("host.json");
    let policy = AccessPolicy::load(
        &root.join("access.toml"),
        &|_| None,
        chgate::access::Place {
            in_azure: false,
            allow_dev_issuers: true,
        },
    )
    .expect("access.toml");
    let catalog =
        Catalog::load(&root.join("functions"), &prefix, &policy.catalog_rules()).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<&str> = catalog.endpoints().iter().map(|e| e.name()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "breakdown",
            "export_events",
            "kpi",
            "tenants_overview",
            "top_pages",
            "traffic"
        ]
    );
    for endpoint in catalog.endpoints() {
        assert!(!endpoint.description().is_empty());
        for param in endpoint.params() {
            assert!(
                !param.description().is_empty(),
                "{}: {} has no description",
                endpoint.name(),
                param.name()
            );
            assert!(
                param.example().is_some(),
                "{}: {} has no example",
                endpoint.name(),
                param.name()
            );
        }
    }
}

#[test]
fn the_fixture_catalog_loads_and_skips_non_http_functions() {
    let catalog = Catalog::load(&fixtures().join("endpoints"), "api", &rules()).unwrap_or_else(|e| panic!("{e}"));
    assert!(catalog.by_function_name("echo").is_some());
    assert!(
        catalog.by_function_name("queue_worker").is_none(),
        "a queue function is not a query endpoint"
    );
}

#[test]
fn handler_check_exits_non_zero_on_a_broken_catalog_and_zero_on_a_good_one() {
    let handler = env!("CARGO_BIN_EXE_handler");
    let broken = std::process::Command::new(handler)
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        .args(["check"])
        .arg(fixtures().join("invalid_endpoints/two_statements"))
        .arg("--host-json")
        .arg(fixtures().join("host.json"))
        .arg("--access-policy")
        .arg(fixtures().join("access.toml"))
        .output()
        .expect("running handler check");
    assert!(!broken.status.success());
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("ep/query.sql:2: a second SQL statement"), "{stderr}");

    let good = std::process::Command::new(handler)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
        .args(["check", "functions"])
        .output()
        .expect("running handler check");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("7 endpoint(s), no problems"));
}
