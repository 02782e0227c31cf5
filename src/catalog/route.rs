//! Route templates as function.json writes them (`v1/top-pages`, `items/{id}`), matched the
//! way the Functions host's ASP.NET routing does: segment by segment, literals
//! case-insensitively.

use std::fmt;

/// One segment of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`, or `{name?}` (optional; only as the last segment).
    Param {
        name: String,
        optional: bool,
    },
}

/// A parsed route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    template: String,
    segments: Vec<Segment>,
}

impl Route {
    /// Parses a template, or says what is wrong with it.
    pub fn parse(template: &str) -> Result<Self, String> {
        let trimmed = template.trim_matches('/');
        if trimmed.is_empty() {
            return Err("the route is empty; give the endpoint a path such as \"v1/top-pages\"".into());
        }
        let parts: Vec<&str> = trimmed.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = parse_segment(part)?;
            if let Segment::Param { optional: true, name } = &segment
                && index + 1 != parts.len()
            {
                return Err(format!("optional route parameter {{{name}?}} must be the last segment"));
            }
            segments.push(segment);
        }
        Ok(Self {
            template: trimmed.to_owned(),
            segments,
        })
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// Names of the route's parameters.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param { name, .. } => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a request path (already stripped of the route prefix, percent-decoded per
    /// segment by the caller), returning the route parameters' values.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        let mut values = Vec::new();
        let mut parts_iter = parts.iter();
        for segment in &self.segments {
            match (segment, parts_iter.next()) {
                (Segment::Literal(literal), Some(part)) if literal.eq_ignore_ascii_case(part) => {}
                (Segment::Param { name, .. }, Some(part)) => values.push((name.clone(), (*part).to_owned())),
                (Segment::Param { optional: true, .. }, None) => {}
                _ => return None,
            }
        }
        parts_iter.next().is_none().then_some(values)
    }

    /// Whether some path would match both routes.
    pub fn overlaps(&self, other: &Route) -> bool {
        self.shapes()
            .iter()
            .any(|a| other.shapes().iter().any(|b| shapes_overlap(a, b)))
    }

    /// The route's concrete shapes: one, or two when the last parameter is optional.
    fn shapes(&self) -> Vec<&[Segment]> {
        match self.segments.last() {
            Some(Segment::Param { optional: true, .. }) => {
                vec![&self.segments[..], &self.segments[..self.segments.len() - 1]]
            }
            _ => vec![&self.segments[..]],
        }
    }
}

fn shapes_overlap(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x.eq_ignore_ascii_case(y),
            _ => true,
        })
}

fn parse_segment(part: &str) -> Result<Segment, String> {
    if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        let (name, optional) = match inner.strip_suffix('?') {
            Some(name) => (name, true),
            None => (inner, false),
        };
        if name.contains(':') || name.starts_with('*') {
            return Err(format!(
                "route segment {part} uses a constraint or catch-all, which query endpoints do not \
                 support; use {{name}} and declare the parameter's type in endpoint.toml"
            ));
        }
        if !is_identifier(name) {
            return Err(format!("route parameter {part} needs a name of letters, digits and _"));
        }
        return Ok(Segment::Param {
            name: name.to_owned(),
            optional,
        });
    }
    if part.is_empty() || part.contains(['{', '}', '?', '#', '%', '*']) || part.chars().any(char::is_whitespace) {
        return Err(format!(
            "route segment {part:?} has characters a URL path cannot carry plainly"
        ));
    }
    Ok(Segment::Literal(part.to_owned()))
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(template: &str) -> Route {
        Route::parse(template).expect("valid route")
    }

    #[test]
    fn literal_routes_match_case_insensitively() {
        assert_eq!(route("v1/top-pages").matches("V1/Top-Pages"), Some(vec![]));
        assert_eq!(route("v1/top-pages").matches("v1/top-pages/extra"), None);
        assert_eq!(route("v1/top-pages").matches("v1"), None);
    }

    #[test]
    fn parameters_capture_their_segment() {
        let r = route("items/{id}/{part?}");
        assert_eq!(
            r.matches("items/42/body"),
            Some(vec![("id".into(), "42".into()), ("part".into(), "body".into())])
        );
        assert_eq!(r.matches("items/42"), Some(vec![("id".into(), "42".into())]));
        assert_eq!(r.matches("items"), None);
    }

    #[test]
    fn overlapping_routes_are_detected() {
        assert!(route("v1/a").overlaps(&route("V1/A")));
        assert!(route("v1/{x}").overlaps(&route("v1/a")));
        assert!(route("v1/{x?}").overlaps(&route("v1")));
        assert!(!route("v1/a").overlaps(&route("v1/b")));
        assert!(!route("v1/a").overlaps(&route("v1/a/b")));
    }

    #[test]
    fn unsupported_templates_are_refused_with_a_reason() {
        assert!(Route::parse("").is_err());
        assert!(
            Route::parse("items/{id:int}")
                .expect_err("constraint")
                .contains("constraint")
        );
        assert!(
            Route::parse("{x?}/tail")
                .expect_err("optional")
                .contains("last segment")
        );
        assert!(Route::parse("a b").is_err());
    }
}
