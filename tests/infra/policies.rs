//! The APIM policy files: well-formed XML, and the order rules that keep the pipeline safe.
//! validate-jwt comes first in inbound, so nothing reads the token before it is checked;
//! every section inherits its parent scope (`<base />`); no secret is written in a policy
//! (named values only); and the caller's Authorization header reaches the backend untouched,
//! because the handler checks the token again and maps its claims.

use super::{files, read, root};

const SECTIONS: [&str; 4] = ["inbound", "backend", "outbound", "on-error"];
const VALIDATORS: [&str; 2] = ["validate-jwt", "validate-azure-ad-token"];

/// What is wrong with a policy document.
fn problems(xml: &str) -> Vec<String> {
    let document = match roxmltree::Document::parse(xml) {
        Ok(document) => document,
        Err(error) => return vec![format!("not well-formed XML: {error}")],
    };
    let mut problems = Vec::new();
    let policies = document.root_element();
    if policies.tag_name().name() != "policies" {
        problems.push(format!("the root is <{}>, not <policies>", policies.tag_name().name()));
    }
    for section in SECTIONS {
        let Some(element) = policies.children().find(|node| node.has_tag_name(section)) else {
            problems.push(format!("no <{section}> section"));
            continue;
        };
        if !element.children().any(|node| node.has_tag_name("base")) {
            problems.push(format!(
                "<{section}> has no <base />, so it drops the parent scope's policies"
            ));
        }
    }
    let inbound = policies.children().find(|node| node.has_tag_name("inbound"));
    if let Some(first) = inbound.and_then(|inbound| inbound.children().find(roxmltree::Node::is_element))
        && !VALIDATORS.contains(&first.tag_name().name())
    {
        problems.push(format!(
            "the first inbound policy is <{}>; validate the token first",
            first.tag_name().name()
        ));
    }
    for node in document.descendants().filter(roxmltree::Node::is_element) {
        let name = node.tag_name().name();
        let section = node
            .ancestors()
            .find(|ancestor| SECTIONS.iter().any(|section| ancestor.has_tag_name(*section)))
            .map(|section| section.tag_name().name());
        let before_backend = matches!(section, Some("inbound" | "backend"));
        if before_backend
            && name == "set-header"
            && node
                .attribute("name")
                .is_some_and(|header| header.eq_ignore_ascii_case("authorization"))
        {
            problems.push("a set-header touches Authorization before the backend".to_owned());
        }
        if before_backend && matches!(name, "authentication-managed-identity" | "authentication-basic") {
            problems.push(format!("<{name}> overwrites the caller's Authorization header"));
        }
        let texts = node
            .attributes()
            .map(|attribute| attribute.value().to_owned())
            .chain(node.text().map(str::to_owned));
        for text in texts {
            if let Some(secret) = secret_literal(&text) {
                problems.push(format!(
                    "<{name}> holds what looks like a secret ({secret}); use a named value"
                ));
            }
        }
    }
    problems
}

/// A secret-looking literal in `text`, outside `{{named value}}` references.
fn secret_literal(text: &str) -> Option<String> {
    let mut outside = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        outside.push_str(&rest[..start]);
        rest = rest[start..].find("}}").map_or("", |end| &rest[start + end + 2..]);
    }
    outside.push_str(rest);
    let lower = outside.to_ascii_lowercase();
    for marker in [
        "sig=",
        "accountkey=",
        "sharedaccesssignature",
        "password=",
        "client_secret=",
    ] {
        if lower.contains(marker) {
            return Some(marker.to_owned());
        }
    }
    // Long unbroken base64 runs: keys and tokens.
    let mut run = 0;
    for c in outside.chars() {
        if c.is_ascii_alphanumeric() || c == '+' || c == '/' {
            run += 1;
            if run >= 40 {
                return Some("a long base64 run".to_owned());
            }
        } else {
            run = 0;
        }
    }
    None
}

#[test]
fn every_policy_file_keeps_the_rules() {
    let found = files(&root().join("infra/policies"), ".xml");
    assert!(!found.is_empty(), "infra/policies/ has policy files");
    let mut all = Vec::new();
    for path in &found {
        for problem in problems(&read(path)) {
            all.push(format!("{}: {problem}", path.display()));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let good = r#"<policies>
        <inbound><validate-jwt header-name="Authorization"><openid-config url="https://x/{{tenant-id}}" /></validate-jwt><base />
          <set-backend-service backend-id="b" /></inbound>
        <backend><base /></backend><outbound><base /></outbound><on-error><base /></on-error></policies>"#;
    assert_eq!(problems(good), Vec::<String>::new());
    let cases = [
        (
            good.replace(
                "<validate-jwt",
                "<set-header name=\"X\"><value>1</value></set-header><validate-jwt",
            ),
            "validate the token first",
        ),
        (
            good.replace("<backend><base /></backend>", "<backend></backend>"),
            "<backend> has no <base />",
        ),
        (
            good.replace(
                "<set-backend-service",
                "<set-header name=\"authorization\" exists-action=\"delete\" /><set-backend-service",
            ),
            "touches Authorization",
        ),
        (
            good.replace(
                "<set-backend-service",
                "<authentication-managed-identity resource=\"api://x\" /><set-backend-service",
            ),
            "overwrites the caller's Authorization",
        ),
        (good.replace("{{tenant-id}}", "t?sig=abc"), "looks like a secret"),
        (
            good.replace(
                "{{tenant-id}}",
                "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w",
            ),
            "looks like a secret",
        ),
        (good.replace("</policies>", ""), "not well-formed"),
        (
            good.replace("url=\"https://x/{{tenant-id}}\"", "url=\"@(context.Variables[\"a\"])\""),
            "not well-formed",
        ),
    ];
    for (xml, expected) in cases {
        let found = problems(&xml);
        assert!(
            found.iter().any(|problem| problem.contains(expected)),
            "{expected}: {found:?}"
        );
    }
}
