//! The APIM policy files: well-formed XML, and the order rules that keep the pipeline safe.
//! validate-jwt comes first in inbound, so nothing reads the token before it is checked;
//! every section inherits its parent scope (`<base />`); no secret is written in a policy
//! (named values only); and the caller's Authorization header reaches the backend untouched,
//! because the handler checks the token again and maps its claims.

use super::{files, read, root};

const SECTIONS: [&str; 4] = ["inbound", "backend", "outbound", "on-error"];
const VALIDATORS: [&str; 2] = ["validate-jwt", "validate-azure-ad-token"];
/// apim.bicep cuts what lies between these out of the policy for the v2 tiers.
const CLASSIC_ONLY_BEGIN: &str = "<!-- classic-tiers-only:begin -->";
const CLASSIC_ONLY_END: &str = "<!-- classic-tiers-only:end -->";

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
    // The token is validated first; only cors may come before it, because it reads no token
    // and a browser's preflight (which has none) must reach it.
    let inbound = policies.children().find(|node| node.has_tag_name("inbound"));
    let first = inbound
        .into_iter()
        .flat_map(|inbound| inbound.children().filter(roxmltree::Node::is_element))
        .find(|node| !node.has_tag_name("cors"));
    if let Some(first) = first
        && !VALIDATORS.contains(&first.tag_name().name())
    {
        problems.push(format!(
            "the first inbound policy after cors is <{}>; validate the token first",
            first.tag_name().name()
        ));
    }
    let begin = xml.find(CLASSIC_ONLY_BEGIN);
    let end = xml.find(CLASSIC_ONLY_END);
    if begin.is_some() != end.is_some() || begin > end {
        problems.push(
            "the classic-tiers-only markers must come as a pair, begin before end (apim.bicep cuts between them)"
                .to_owned(),
        );
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
        let xml = read(path);
        // As deployed on the classic tiers, and on the v2 tiers with the classic-only part cut.
        let mut deployed = vec![xml.clone()];
        if let (Some(begin), Some(end)) = (xml.find(CLASSIC_ONLY_BEGIN), xml.find(CLASSIC_ONLY_END))
            && begin < end
        {
            deployed.push(format!("{}{}", &xml[..begin], &xml[end + CLASSIC_ONLY_END.len()..]));
        }
        for form in deployed {
            for problem in problems(&form) {
                all.push(format!("{}: {problem}", path.display()));
            }
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
                "<cors><allowed-origins><origin>*</origin></allowed-origins></cors><rate-limit-by-key calls=\"1\" renewal-period=\"1\" counter-key=\"k\" /><validate-jwt",
            ),
            "validate the token first",
        ),
        (
            good.replace("<base /></backend>", "<base /><!-- classic-tiers-only:end --></backend>"),
            "markers must come as a pair",
        ),
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
