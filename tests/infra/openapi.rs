//! infra/openapi.json is what `handler openapi` prints for the shipped catalog, and it has
//! exactly one operation per endpoint and method, and none without an endpoint.

use std::collections::BTreeMap;
use std::path::Path;

use chgate::access::{AccessPolicy, Place};
use chgate::catalog::Catalog;
use serde_json::Value;

use super::{read, root};

const REGENERATE: &str = "cargo run --quiet --bin handler -- openapi > infra/openapi.json";

/// The shipped policy and the catalog of `functions`, as `handler openapi` reads them.
fn load(functions: &Path) -> (AccessPolicy, Catalog) {
    let root = root();
    let policy = AccessPolicy::load(&root.join("access.toml"), &|_| None, Place::for_checks()).expect("access.toml");
    let prefix = chgate::startup::route_prefix(&root.join("host.json")).expect("host.json");
    let catalog = Catalog::load(functions, &prefix, &policy.catalog_rules()).expect("catalog");
    (policy, catalog)
}

fn generated(functions: &Path) -> Value {
    let (policy, catalog) = load(functions);
    chgate::openapi::document(&catalog, &policy)
}

fn committed() -> Value {
    serde_json::from_str(&read(&root().join("infra/openapi.json"))).expect("infra/openapi.json is JSON")
}

#[test]
fn the_committed_document_is_the_catalogs() {
    assert!(
        generated(&root().join("functions")) == committed(),
        "infra/openapi.json is not what the catalog gives; regenerate it: {REGENERATE}"
    );
}

#[test]
fn a_changed_endpoint_folder_no_longer_matches_the_committed_document() {
    let copy = std::env::temp_dir().join(format!("chgate-openapi-drift-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    for entry in std::fs::read_dir(root().join("functions"))
        .expect("functions/")
        .flatten()
    {
        if entry.path().is_dir() {
            let target = copy.join(entry.file_name());
            std::fs::create_dir_all(&target).expect("copy");
            for file in std::fs::read_dir(entry.path()).expect("function folder").flatten() {
                std::fs::copy(file.path(), target.join(file.file_name())).expect("copy");
            }
        }
    }
    assert!(generated(&copy) == committed(), "an unchanged copy matches");
    let toml = copy.join("top_pages/endpoint.toml");
    let text = read(&toml).replace("max = 1000", "max = 500");
    std::fs::write(&toml, text).expect("edit");
    let drifted = generated(&copy) != committed();
    let _ = std::fs::remove_dir_all(&copy);
    assert!(drifted, "a changed bound must show as drift");
}

#[test]
fn every_endpoint_and_method_has_exactly_one_operation_and_every_operation_an_endpoint() {
    let (_, catalog) = load(&root().join("functions"));
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    for endpoint in catalog.endpoints() {
        for method in endpoint.methods() {
            expected.insert((endpoint.name().to_owned(), method.as_str().to_ascii_lowercase()), 0);
        }
    }
    for endpoint in catalog.ingest_endpoints() {
        expected.insert((endpoint.name().to_owned(), "post".to_owned()), 0);
    }
    for builtin in catalog.builtins() {
        expected.insert((builtin.name.clone(), "get".to_owned()), 0);
    }
    let document = committed();
    let mut operation_ids = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let name = operation["x-chgate-endpoint"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} names no endpoint"));
            let count = expected
                .get_mut(&(name.to_owned(), method.clone()))
                .unwrap_or_else(|| panic!("{method} {path} is for {name}, which the catalog does not have"));
            *count += 1;
            operation_ids.push(operation["operationId"].as_str().expect("operationId").to_owned());
        }
    }
    for ((name, method), count) in &expected {
        assert_eq!(*count, 1, "{name} {method}: {count} operations");
    }
    let before = operation_ids.len();
    operation_ids.sort();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), before, "operation ids are unique");
}
