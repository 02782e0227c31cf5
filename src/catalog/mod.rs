//! The endpoint catalog: `functions/<name>/` folders read from disk once at start-up,
//! cross-checked, and held immutable for the life of the process. Nothing downstream
//! re-validates what the catalog accepted.

pub mod endpoint;
pub mod files;
pub mod format;
pub mod ingest;
pub mod param;
pub mod route;
pub mod sql;
pub mod types;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

pub use endpoint::{Builtin, BuiltinKind, CachePolicy, Endpoint, Method, Problem, ReplayFunction};
pub use ingest::IngestEndpoint;

use endpoint::Loaded;

/// What the access policy requires of every endpoint.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    /// The roles that exist; an endpoint must name at least one, and only these.
    pub roles: BTreeSet<String>,
    /// Roles allowed to read tenant-scoped tables without the tenant filter.
    pub cross_tenant_roles: BTreeSet<String>,
    /// Tables whose rows belong to tenants.
    pub tenant_scoped_tables: Vec<String>,
    /// The column of those tables holding the tenant (`tenant_id`).
    pub tenant_column: String,
    /// Settings the policy has the handler set (the tenant's custom setting), beyond the
    /// handler's own: query.sql may not mention them.
    pub protected_settings: Vec<String>,
}

/// Every query endpoint of the app.
#[derive(Debug)]
pub struct Catalog {
    endpoints: Vec<Endpoint>,
    /// Functions the handler answers itself (the health report).
    builtins: Vec<Builtin>,
    /// Endpoints that write events into ClickHouse.
    ingest: Vec<IngestEndpoint>,
    /// Queue-triggered functions replaying spooled batches.
    replays: Vec<ReplayFunction>,
    route_prefix: String,
}

/// The catalog could not be loaded: every problem found, each naming its file and the fix.
#[derive(Debug, thiserror::Error)]
pub struct CatalogError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the endpoint catalog has {} problem(s):", self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// What a request path and method lead to.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found {
        endpoint: &'a Endpoint,
        route_params: Vec<(String, String)>,
    },
    /// The path exists, but not for this method: these are the methods it has.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

impl Catalog {
    /// Loads every function folder under `dir`. `route_prefix` is host.json's
    /// `extensions.http.routePrefix` (forwarded requests arrive under `/<prefix>/<route>`).
    pub fn load(dir: &Path, route_prefix: &str, rules: &AccessRules) -> Result<Self, CatalogError> {
        let mut problems = Vec::new();
        let mut endpoints = Vec::new();
        let mut builtins = Vec::new();
        let mut ingest = Vec::new();
        let mut replays = Vec::new();
        let mut names = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().is_dir())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            Err(error) => {
                problems.push(Problem {
                    file: dir.to_path_buf(),
                    line: None,
                    message: format!("cannot read the functions folder: {error}"),
                });
                Vec::new()
            }
        };
        names.sort();
        for name in names {
            // The host ignores folders without function.json; so do we, unless they look
            // like an endpoint that lost its function.json.
            let folder = dir.join(&name);
            if !folder.join("function.json").exists() {
                if folder.join("query.sql").exists() || folder.join("endpoint.toml").exists() {
                    problems.push(Problem {
                        file: Path::new(&name).join("function.json"),
                        line: None,
                        message: "missing: without it the Functions host does not see this endpoint".into(),
                    });
                }
                continue;
            }
            match endpoint::load(dir, &name, route_prefix, rules) {
                Ok(Loaded::Query(endpoint)) => endpoints.push(*endpoint),
                Ok(Loaded::Builtin(builtin)) => builtins.push(builtin),
                Ok(Loaded::Ingest(endpoint)) => ingest.push(*endpoint),
                Ok(Loaded::Replay(function)) => replays.push(function),
                Ok(Loaded::Other) => {}
                Err(found) => problems.extend(found),
            }
        }
        // Every HTTP function, whatever its kind, in one list: one request must reach one.
        let routed: Vec<Routed<'_>> = endpoints
            .iter()
            .map(|e| Routed {
                name: e.name(),
                route: e.route(),
                methods: e.methods(),
            })
            .chain(builtins.iter().map(|b| Routed {
                name: &b.name,
                route: &b.route,
                methods: &b.methods,
            }))
            .chain(ingest.iter().map(|i| Routed {
                name: i.name(),
                route: i.route(),
                methods: i.methods(),
            }))
            .collect();
        problems.extend(clashes(&routed));
        if problems.is_empty() {
            Ok(Self {
                endpoints,
                builtins,
                ingest,
                replays,
                route_prefix: route_prefix.trim_matches('/').to_owned(),
            })
        } else {
            Err(CatalogError { problems })
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn builtins(&self) -> &[Builtin] {
        &self.builtins
    }

    pub fn replay_functions(&self) -> &[ReplayFunction] {
        &self.replays
    }

    /// The spool replay function of this name, if there is one.
    pub fn replay_by_name(&self, name: &str) -> Option<&ReplayFunction> {
        self.replays.iter().find(|replay| replay.name == name)
    }

    pub fn ingest_endpoints(&self) -> &[IngestEndpoint] {
        &self.ingest
    }

    /// The ingest endpoint at a path below the route prefix, for this method.
    pub fn match_ingest(&self, path: &str, method: Method) -> Option<&IngestEndpoint> {
        self.ingest
            .iter()
            .find(|ingest| ingest.methods().contains(&method) && ingest.route().matches(path).is_some())
    }

    /// The built-in function at a path below the route prefix, for this method.
    pub fn match_builtin(&self, path: &str, method: Method) -> Option<&Builtin> {
        self.builtins
            .iter()
            .find(|builtin| builtin.methods.contains(&method) && builtin.route.matches(path).is_some())
    }

    pub fn route_prefix(&self) -> &str {
        &self.route_prefix
    }

    /// The endpoint of a function name (how the host addresses functions in invocation mode).
    pub fn by_function_name(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|endpoint| endpoint.name() == name)
    }

    /// Finds the endpoint for a path below the route prefix and a method.
    pub fn match_route(&self, path: &str, method: Method) -> RouteMatch<'_> {
        for endpoint in &self.endpoints {
            if endpoint.methods().contains(&method)
                && let Some(route_params) = endpoint.route().matches(path)
            {
                return RouteMatch::Found { endpoint, route_params };
            }
        }
        let allowed = self.methods_at(path);
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }

    /// The methods some endpoint or built-in function answers at this path (none: nothing
    /// lives there).
    pub fn methods_at(&self, path: &str) -> Vec<Method> {
        let builtins = self
            .builtins
            .iter()
            .filter(|builtin| builtin.route.matches(path).is_some())
            .flat_map(|builtin| builtin.methods.iter().copied());
        let ingest = self
            .ingest
            .iter()
            .filter(|ingest| ingest.route().matches(path).is_some())
            .flat_map(|ingest| ingest.methods().iter().copied());
        let mut methods: Vec<Method> = self
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.route().matches(path).is_some())
            .flat_map(|endpoint| endpoint.methods().iter().copied())
            .chain(builtins)
            .chain(ingest)
            .collect();
        methods.sort();
        methods.dedup();
        methods
    }
}

/// An HTTP function's name, route and methods.
struct Routed<'a> {
    name: &'a str,
    route: &'a route::Route,
    methods: &'a [Method],
}

/// Two functions clash when one request (path and method) could reach both.
fn clashes(functions: &[Routed<'_>]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (index, first) in functions.iter().enumerate() {
        for second in &functions[index + 1..] {
            let shared: Vec<&str> = first
                .methods
                .iter()
                .filter(|method| second.methods.contains(method))
                .map(|method| method.as_str())
                .collect();
            if !shared.is_empty() && first.route.overlaps(second.route) {
                problems.push(Problem {
                    file: Path::new(second.name).join("function.json"),
                    line: None,
                    message: format!(
                        "route \"{}\" clashes with \"{}\" of function {} for {}: give one of them another route or other methods",
                        second.route,
                        first.route,
                        first.name,
                        shared.join(", ")
                    ),
                });
            }
        }
    }
    problems
}
