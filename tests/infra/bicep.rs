//! Every Bicep file parses (tree-sitter-bicep: syntax only; `az bicep build` is not available
//! here).

use std::path::Path;

use super::{files, read, root};

/// The syntax errors of a Bicep text, with line and column.
fn syntax_errors(text: &str) -> Vec<String> {
    let mut parser = tree_sitter::Parser::new();
    parser
        .set_language(&tree_sitter_bicep::LANGUAGE.into())
        .expect("the Bicep grammar loads");
    let tree = parser.parse(text, None).expect("a tree");
    let mut errors = Vec::new();
    let mut pending = vec![tree.root_node()];
    while let Some(node) = pending.pop() {
        if node.is_error() || node.is_missing() {
            let at = node.start_position();
            let near: String = text[node.byte_range()].chars().take(40).collect();
            errors.push(format!(
                "{}:{}: {} near {near:?}",
                at.row + 1,
                at.column + 1,
                if node.is_missing() { "missing" } else { "error" }
            ));
        } else if node.has_error() {
            let mut cursor = node.walk();
            pending.extend(node.children(&mut cursor));
        }
    }
    errors
}

#[test]
fn every_bicep_file_parses() {
    let found = files(&root().join("infra"), ".bicep");
    assert!(
        found.iter().any(|path| path.ends_with(Path::new("infra/main.bicep"))),
        "infra/main.bicep exists: {found:?}"
    );
    let mut problems = Vec::new();
    for path in &found {
        for error in syntax_errors(&read(path)) {
            problems.push(format!("{}:{error}", path.display()));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_check_finds_broken_bicep() {
    assert!(syntax_errors("param location string = resourceGroup().location\n").is_empty());
    assert!(!syntax_errors("resource st 'Microsoft.Storage/storageAccounts@2025-01-01' = {\n  name: 'x'\n").is_empty());
    assert!(!syntax_errors("var x = (1 + \n").is_empty());
}
