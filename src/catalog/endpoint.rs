//! One query endpoint, loaded from its folder and cross-checked: the SQL's placeholders
//! against the declared parameters, the function.json against what the Functions host
//! accepts, the limits against the host's HTTP time limit.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AccessRules;
use super::files::{BindingJson, BuiltinToml, EndpointToml, FunctionJson, KindToml};
use super::format::OutputFormat;
use super::param::ParamSpec;
use super::route::Route;
use super::sql;
use super::types::ParamType;

/// Parameters bound from the verified caller identity, never from the request.
pub const RESERVED_CALLER_PARAMS: [&str; 3] = ["caller_tenant", "caller_subject", "caller_role"];

/// Request keys with a meaning of their own, which no endpoint parameter may take.
pub const RESERVED_REQUEST_KEYS: [&str; 1] = ["format"];

/// Settings the handler sets for every query (limits, identity, output behaviour): an endpoint's
/// SQL may not override them with a SETTINGS clause.
pub const PROTECTED_SETTINGS: [&str; 14] = [
    "readonly",
    "max_execution_time",
    "timeout_overflow_mode",
    "max_result_rows",
    "max_result_bytes",
    "result_overflow_mode",
    "max_memory_usage",
    "priority",
    "quota_key",
    "log_comment",
    "query_id",
    "output_format_json_quote_64bit_integers",
    "http_write_exception_in_output_format",
    "cancel_http_readonly_queries_on_client_close",
];

/// Any HTTP answer must come within 230 s (the Azure load balancer's idle limit); a query gets
/// at most this much of it, leaving time to send the result.
pub const MAX_EXECUTION_TIME_CAP: Duration = Duration::from_secs(220);

/// An endpoint's result caching (`[cache]` in endpoint.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long a result is fresh.
    pub ttl: Duration,
    /// How long after that it may be served while one refresh runs.
    pub stale: Duration,
}

/// Limits applied when endpoint.toml's `[limits]` leaves one out.
pub const DEFAULT_MAX_EXECUTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_ROWS: u64 = 100_000;
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// The HTTP methods a query endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// How the Functions host guards the function (keys are checked by the host, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLevel {
    Anonymous,
    Function,
    Admin,
}

/// Bounds ClickHouse enforces on every run of the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: u64,
    pub max_bytes: u64,
    pub max_execution_time: Duration,
}

/// A problem found while loading the catalog: where (file relative to the catalog folder,
/// line when known) and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A validated query endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    name: String,
    route: Route,
    methods: Vec<Method>,
    auth_level: AuthLevel,
    description: String,
    sql: String,
    params: Vec<ParamSpec>,
    caller_params: Vec<&'static str>,
    limits: Limits,
    formats: Vec<OutputFormat>,
    cache: Option<CachePolicy>,
    roles: Vec<String>,
}

impl Endpoint {
    /// The function name (its folder's name).
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn route(&self) -> &Route {
        &self.route
    }
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }
    pub fn auth_level(&self) -> AuthLevel {
        self.auth_level
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn sql(&self) -> &str {
        &self.sql
    }
    /// Declared parameters, in name order.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name() == name)
    }
    /// Reserved caller parameters the SQL uses.
    pub fn caller_params(&self) -> &[&'static str] {
        &self.caller_params
    }
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    pub fn formats(&self) -> &[OutputFormat] {
        &self.formats
    }
    pub fn cache(&self) -> Option<CachePolicy> {
        self.cache
    }
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
}

/// A function the handler answers itself, declared by `kind` in endpoint.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinKind {
    /// `kind = "health"`: the unauthenticated health report.
    Health,
}

/// A built-in function: its route and methods come from function.json like any other.
#[derive(Debug)]
pub struct Builtin {
    pub name: String,
    pub kind: BuiltinKind,
    pub route: Route,
    pub methods: Vec<Method>,
    pub description: String,
}

/// A queue-triggered function that replays spooled ingest batches (`kind = "spool_replay"`):
/// the host invokes it with each message of the spool queue.
#[derive(Debug, Clone)]
pub struct ReplayFunction {
    pub name: String,
    /// The queueTrigger binding's name: the key of the message in the payload's `Data`.
    pub binding: String,
    /// The queue it reads (as function.json names it; an app setting reference stays as is).
    pub queue: String,
}

/// What a function folder turned out to be.
#[derive(Debug)]
pub enum Loaded {
    Query(Box<Endpoint>),
    Builtin(Builtin),
    Ingest(Box<super::ingest::IngestEndpoint>),
    Replay(ReplayFunction),
    /// A function the host serves without this catalog (not an HTTP query endpoint).
    Other,
}

/// Collects problems for one folder, with paths relative to the catalog root.
pub(super) struct Problems<'a> {
    folder: &'a str,
    found: Vec<Problem>,
}

impl Problems<'_> {
    pub(super) fn add(&mut self, file: &str, line: Option<usize>, message: impl Into<String>) {
        self.found.push(Problem {
            file: Path::new(self.folder).join(file),
            line,
            message: message.into(),
        });
    }
}

/// Loads `root/<name>/`, returning every problem found rather than the first.
pub fn load(root: &Path, name: &str, route_prefix: &str, rules: &AccessRules) -> Result<Loaded, Vec<Problem>> {
    let dir = root.join(name);
    let mut problems = Problems {
        folder: name,
        found: Vec::new(),
    };
    let has_sql = dir.join("query.sql").exists();
    let has_toml = dir.join("endpoint.toml").exists();

    if !is_function_name(name) {
        problems.add(
            "",
            None,
            "function folder names may hold only letters, digits, '_' and '-'",
        );
    } else if name.eq_ignore_ascii_case(route_prefix) {
        problems.add(
            "",
            None,
            format!("a function may not be named like the route prefix {route_prefix:?}"),
        );
    }
    let function_json = match read(&dir.join("function.json")) {
        Ok(text) => match serde_json::from_str::<FunctionJson>(&text) {
            Ok(function_json) => Some(function_json),
            Err(error) => {
                problems.add(
                    "function.json",
                    Some(error.line()),
                    format!("not valid function.json: {error}"),
                );
                None
            }
        },
        Err(message) => {
            problems.add("function.json", None, message);
            None
        }
    };
    let Some(function_json) = function_json else {
        return Err(problems.found);
    };
    if let Some(queue) = function_json
        .bindings
        .iter()
        .find(|binding| binding.kind.eq_ignore_ascii_case("queueTrigger"))
        && has_toml
        && !has_sql
    {
        let text = read(&dir.join("endpoint.toml")).unwrap_or_default();
        if let Ok(KindToml { kind: Some(kind) }) = toml::from_str::<KindToml>(&text)
            && kind == "spool_replay"
        {
            return if queue.name.is_empty() {
                problems.add("function.json", None, "the queueTrigger binding needs a \"name\"");
                Err(problems.found)
            } else {
                Ok(Loaded::Replay(ReplayFunction {
                    name: name.to_owned(),
                    binding: queue.name.clone(),
                    queue: queue.queue_name.clone().unwrap_or_default(),
                }))
            };
        }
    }
    let trigger = check_bindings(&function_json.bindings, has_sql || has_toml, &mut problems);
    let Some(trigger) = trigger else {
        return if problems.found.is_empty() {
            Ok(Loaded::Other)
        } else {
            Err(problems.found)
        };
    };
    if function_json.disabled && problems.found.is_empty() {
        return Ok(Loaded::Other);
    }
    if has_toml && !has_sql {
        let text = read(&dir.join("endpoint.toml")).unwrap_or_default();
        if let Ok(KindToml { kind: Some(kind) }) = toml::from_str::<KindToml>(&text)
            && kind != "query"
        {
            if kind == "ingest" {
                let ingest = super::ingest::load_ingest(name, &text, trigger, rules, &mut problems);
                return match ingest {
                    Some(ingest) if problems.found.is_empty() => Ok(Loaded::Ingest(Box::new(ingest))),
                    _ => Err(problems.found),
                };
            }
            return load_builtin(name, &text, trigger, problems);
        }
    }
    for (exists, file) in [(has_sql, "query.sql"), (has_toml, "endpoint.toml")] {
        if !exists {
            problems.add(
                file,
                None,
                format!("missing: an HTTP function here is a query endpoint and needs {file}"),
            );
        }
    }
    let route = route(trigger, name, &mut problems);
    let methods = methods(trigger, &mut problems);
    let auth_level = auth_level(trigger, &mut problems);
    if !has_sql || !has_toml {
        return Err(problems.found);
    }

    let (sql_text, toml_text) = match (read(&dir.join("query.sql")), read(&dir.join("endpoint.toml"))) {
        (Ok(sql), Ok(toml)) => (sql, toml),
        (sql, toml) => {
            for (result, file) in [(sql, "query.sql"), (toml, "endpoint.toml")] {
                if let Err(message) = result {
                    problems.add(file, None, message);
                }
            }
            return Err(problems.found);
        }
    };
    let endpoint_toml = match toml::from_str::<EndpointToml>(&toml_text) {
        Ok(endpoint_toml) => endpoint_toml,
        Err(error) => {
            let line = error.span().map(|span| line_of(&toml_text, span.start));
            problems.add("endpoint.toml", line, error.message().trim().to_owned());
            return Err(problems.found);
        }
    };
    if let Some(kind) = endpoint_toml.kind.as_deref().filter(|kind| *kind != "query") {
        problems.add(
            "endpoint.toml",
            line_of_key(&toml_text, "kind"),
            format!("kind {kind:?} takes no query.sql; remove query.sql, or set kind = \"query\" (the default)"),
        );
    }
    let params = build_params(&endpoint_toml, &toml_text, &mut problems);
    // Read once; both checks look at the same reading of the SQL.
    let scan = sql::scan(&sql_text);
    let caller_params = check_sql(&scan, &params, &endpoint_toml, &toml_text, &mut problems);
    check_access(&scan, &caller_params, &endpoint_toml, &toml_text, rules, &mut problems);
    if let Some(route) = &route {
        for route_param in route.param_names() {
            if !params.contains_key(route_param) {
                problems.add(
                    "function.json",
                    None,
                    format!(
                        "route parameter {{{route_param}}} is not declared; add [params.{route_param}] to endpoint.toml"
                    ),
                );
            }
        }
    }
    let limits = limits(&endpoint_toml, &toml_text, &mut problems);
    let cache = cache_policy(&endpoint_toml, &toml_text, &mut problems);
    let formats = formats(&endpoint_toml, &toml_text, &mut problems);
    if endpoint_toml.description.trim().is_empty() {
        problems.add(
            "endpoint.toml",
            None,
            "description is empty; say what the endpoint returns",
        );
    }

    match (route, problems.found.is_empty()) {
        (Some(route), true) => Ok(Loaded::Query(Box::new(Endpoint {
            name: name.to_owned(),
            route,
            methods,
            auth_level,
            description: endpoint_toml.description.trim().to_owned(),
            sql: sql_text,
            params: params.into_values().collect(),
            caller_params,
            limits,
            formats,
            cache,
            roles: endpoint_toml.roles,
        }))),
        _ => Err(problems.found),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))
}

fn is_function_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks the bindings as the host would, returning the HTTP trigger of a query endpoint.
/// A folder whose endpoint.toml names a built-in kind instead of a query.
fn load_builtin(
    name: &str,
    text: &str,
    trigger: &BindingJson,
    mut problems: Problems<'_>,
) -> Result<Loaded, Vec<Problem>> {
    let builtin = match toml::from_str::<BuiltinToml>(text) {
        Ok(builtin) => builtin,
        Err(error) => {
            let line = error.span().map(|span| line_of(text, span.start));
            problems.add("endpoint.toml", line, error.message().trim().to_owned());
            return Err(problems.found);
        }
    };
    let kind = match builtin.kind.as_str() {
        "health" => BuiltinKind::Health,
        other => {
            problems.add(
                "endpoint.toml",
                Some(1),
                format!("kind {other:?} is not known; use \"query\" (with query.sql), \"ingest\" or \"health\""),
            );
            return Err(problems.found);
        }
    };
    let route = route(trigger, name, &mut problems);
    let methods = methods(trigger, &mut problems);
    if methods.iter().any(|method| *method != Method::Get) {
        problems.add(
            "function.json",
            None,
            "the health function answers GET only; set \"methods\": [\"get\"]",
        );
    }
    match route {
        Some(route) if problems.found.is_empty() => Ok(Loaded::Builtin(Builtin {
            name: name.to_owned(),
            kind,
            route,
            methods,
            description: builtin.description.trim().to_owned(),
        })),
        _ => Err(problems.found),
    }
}

/// The trigger's route (the function's name when it gives none).
pub(super) fn route(trigger: &BindingJson, name: &str, problems: &mut Problems<'_>) -> Option<Route> {
    match Route::parse(trigger.route.as_deref().unwrap_or(name)) {
        Ok(route) => Some(route),
        Err(message) => {
            problems.add("function.json", None, format!("route: {message}"));
            None
        }
    }
}

fn check_bindings<'a>(
    bindings: &'a [BindingJson],
    is_query: bool,
    problems: &mut Problems<'_>,
) -> Option<&'a BindingJson> {
    let triggers: Vec<&BindingJson> = bindings.iter().filter(|b| b.kind.ends_with("Trigger")).collect();
    let http_trigger = triggers.iter().copied().find(|b| b.kind == "httpTrigger");
    if triggers.len() != 1 {
        problems.add(
            "function.json",
            None,
            format!(
                "a function needs exactly one trigger binding, this one has {}",
                triggers.len()
            ),
        );
        return None;
    }
    let Some(trigger) = http_trigger else {
        if is_query {
            problems.add(
                "function.json",
                None,
                format!(
                    "a query endpoint needs an httpTrigger binding, not {}; use {{\"type\": \"httpTrigger\", \"direction\": \"in\", \"name\": \"req\"}}",
                    triggers[0].kind
                ),
            );
        }
        return None;
    };
    if trigger.direction != "in" {
        problems.add(
            "function.json",
            None,
            "the httpTrigger binding needs \"direction\": \"in\"",
        );
    }
    if trigger.name.is_empty() {
        problems.add(
            "function.json",
            None,
            "the httpTrigger binding needs a \"name\" (for example \"req\")",
        );
    }
    let http_outputs = bindings
        .iter()
        .filter(|b| b.kind == "http" && b.direction == "out")
        .count();
    if http_outputs != 1 {
        problems.add(
            "function.json",
            None,
            "an HTTP function needs one http output binding: {\"type\": \"http\", \"direction\": \"out\", \"name\": \"res\"}",
        );
    }
    let others = bindings
        .iter()
        .filter(|b| !b.kind.ends_with("Trigger") && b.kind != "http")
        .count();
    if others > 0 {
        problems.add(
            "function.json",
            None,
            "a query endpoint has only its httpTrigger and http output: the host forwards requests as-is only to such functions",
        );
    }
    Some(trigger)
}

pub(super) fn methods(trigger: &BindingJson, problems: &mut Problems<'_>) -> Vec<Method> {
    let Some(names) = &trigger.methods else {
        return vec![Method::Get, Method::Post];
    };
    let mut methods = Vec::new();
    for name in names {
        match name.to_ascii_lowercase().as_str() {
            "get" => methods.push(Method::Get),
            "post" => methods.push(Method::Post),
            other => problems.add(
                "function.json",
                None,
                format!(
                    "method {other:?}: query endpoints answer \"get\" (query string) and \"post\" (JSON body) only"
                ),
            ),
        }
    }
    methods.sort();
    methods.dedup();
    if methods.is_empty() && problems.found.is_empty() {
        problems.add(
            "function.json",
            None,
            "\"methods\" is empty; list \"get\" and/or \"post\"",
        );
    }
    methods
}

fn auth_level(trigger: &BindingJson, problems: &mut Problems<'_>) -> AuthLevel {
    match trigger.auth_level.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("function") => AuthLevel::Function,
        Some("anonymous") => AuthLevel::Anonymous,
        Some("admin") => AuthLevel::Admin,
        Some(other) => {
            problems.add(
                "function.json",
                None,
                format!("authLevel {other:?} is not one the host knows: use anonymous, function or admin"),
            );
            AuthLevel::Function
        }
    }
}

/// The line of `[params.<name>]` (or of any mention of the name) in endpoint.toml.
fn param_line(toml_text: &str, name: &str) -> Option<usize> {
    let header = format!("[params.{name}]");
    toml_text
        .lines()
        .position(|line| line.trim() == header)
        .or_else(|| toml_text.lines().position(|line| line.contains(name)))
        .map(|index| index + 1)
}

fn key_line(toml_text: &str, key: &str) -> Option<usize> {
    toml_text
        .lines()
        .position(|line| line.trim_start().starts_with(key) && line.contains('='))
        .map(|index| index + 1)
}

/// The line where a top-level `key = ...` is written, if it is.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn build_params(
    endpoint_toml: &EndpointToml,
    toml_text: &str,
    problems: &mut Problems<'_>,
) -> BTreeMap<String, ParamSpec> {
    let mut params = BTreeMap::new();
    for (name, param_toml) in &endpoint_toml.params {
        let line = param_line(toml_text, name);
        if RESERVED_CALLER_PARAMS.contains(&name.as_str()) {
            problems.add(
                "endpoint.toml",
                line,
                format!("[params.{name}]: {name} is a reserved caller parameter, bound from the caller's verified identity; remove it from endpoint.toml and use {{{name}:String}} in query.sql"),
            );
            continue;
        }
        if RESERVED_REQUEST_KEYS.contains(&name.as_str()) {
            problems.add(
                "endpoint.toml",
                line,
                format!("[params.{name}]: `{name}` is reserved for choosing the result format; rename the parameter"),
            );
            continue;
        }
        match ParamSpec::from_toml(name, param_toml.clone()) {
            Ok(spec) => {
                params.insert(name.clone(), spec);
            }
            Err(messages) => {
                for message in messages {
                    problems.add("endpoint.toml", line, format!("[params.{name}]: {message}"));
                }
            }
        }
    }
    params
}

/// Cross-checks query.sql with the declared parameters; returns the caller parameters used.
fn check_sql(
    scan: &sql::SqlScan,
    params: &BTreeMap<String, ParamSpec>,
    endpoint_toml: &EndpointToml,
    toml_text: &str,
    problems: &mut Problems<'_>,
) -> Vec<&'static str> {
    if scan.first_keyword.is_empty() {
        problems.add("query.sql", None, "the query is empty");
    } else if !matches!(scan.first_keyword.as_str(), "SELECT" | "WITH" | "(") {
        problems.add(
            "query.sql",
            Some(1),
            format!(
                "query endpoints run one read-only SELECT; this query starts with {}",
                scan.first_keyword
            ),
        );
    }
    for line in &scan.extra_statements {
        problems.add(
            "query.sql",
            Some(*line),
            "a second SQL statement: an endpoint runs exactly one; remove everything after the first ';'",
        );
    }
    let has_settings_clause = scan
        .identifiers
        .iter()
        .any(|word| word.eq_ignore_ascii_case("SETTINGS"));
    for setting in PROTECTED_SETTINGS.iter().filter(|_| has_settings_clause) {
        if scan.identifiers.contains(*setting) {
            problems.add(
                "query.sql",
                None,
                format!(
                    "{setting} is set by the handler (from [limits] and the access policy); remove it from the query"
                ),
            );
        }
    }
    if let Some((line, clause)) = &scan.output_clause {
        problems.add(
            "query.sql",
            Some(*line),
            format!("remove the {clause} clause: the caller chooses the result format (?format=), and results go only to the caller"),
        );
    }
    let mut used: HashMap<&str, ParamType> = HashMap::new();
    let mut caller_params = Vec::new();
    for placeholder in &scan.placeholders {
        let shown = format!("{{{}:{}}}", placeholder.name, placeholder.type_text);
        let line = Some(placeholder.line);
        let parsed = match placeholder.type_text.parse::<ParamType>() {
            Ok(parsed) => parsed,
            Err(error) => {
                problems.add("query.sql", line, format!("placeholder {shown}: {error}"));
                continue;
            }
        };
        if let Some(reserved) = RESERVED_CALLER_PARAMS.iter().find(|r| **r == placeholder.name) {
            if parsed != ParamType::String {
                problems.add(
                    "query.sql",
                    line,
                    format!("placeholder {shown}: {reserved} is a String; write {{{reserved}:String}}"),
                );
            }
            if !caller_params.contains(reserved) {
                caller_params.push(*reserved);
            }
            continue;
        }
        if let Some(earlier) = used.get(placeholder.name.as_str())
            && *earlier != parsed
        {
            problems.add(
                "query.sql",
                line,
                format!("placeholder {shown} uses type {parsed} where an earlier one uses {earlier}; a parameter has one type"),
            );
        }
        used.insert(&placeholder.name, parsed.clone());
        match params.get(&placeholder.name) {
            Some(spec) if *spec.ty() != parsed => problems.add(
                "query.sql",
                line,
                format!(
                    "placeholder {shown} does not match its declaration: endpoint.toml says type = \"{}\"; make them the same",
                    spec.ty()
                ),
            ),
            Some(_) => {}
            None if endpoint_toml.params.contains_key(&placeholder.name) => {} // declared, but broken: reported already
            None => problems.add(
                "query.sql",
                line,
                format!(
                    "placeholder {shown} is not declared; add [params.{}] with type = \"{parsed}\" to endpoint.toml",
                    placeholder.name
                ),
            ),
        }
    }
    for name in endpoint_toml.params.keys() {
        if !used.contains_key(name.as_str()) && !RESERVED_CALLER_PARAMS.contains(&name.as_str()) {
            problems.add(
                "endpoint.toml",
                param_line(toml_text, name),
                format!("[params.{name}] is declared but query.sql never uses {{{name}:...}}; use it or remove it"),
            );
        }
    }
    caller_params
}

/// Deny by default: an endpoint names the roles that may call it, all defined by the policy;
/// and it filters tenant-scoped tables by the caller's tenant unless only cross-tenant roles
/// may call it.
fn check_access(
    scan: &sql::SqlScan,
    caller_params: &[&'static str],
    endpoint_toml: &EndpointToml,
    toml_text: &str,
    rules: &AccessRules,
    problems: &mut Problems<'_>,
) {
    let line = key_line(toml_text, "roles");
    if endpoint_toml.roles.is_empty() {
        problems.add(
            "endpoint.toml",
            line,
            "roles is missing or empty: list the roles that may call this endpoint (nobody may call an endpoint without roles)",
        );
    }
    check_roles_defined(&endpoint_toml.roles, rules, line, problems);
    for setting in &rules.protected_settings {
        if scan.identifiers.contains(setting) {
            problems.add(
                "query.sql",
                None,
                format!("{setting} carries the caller's tenant and is set by the handler only; remove it"),
            );
        }
    }
    for line in &scan.escaped_identifiers {
        problems.add(
            "query.sql",
            Some(*line),
            "a quoted identifier with backslash escapes: write the name plainly, so the catalog reads it as the server does",
        );
    }
    let all_cross_tenant = !endpoint_toml.roles.is_empty()
        && endpoint_toml
            .roles
            .iter()
            .all(|role| rules.cross_tenant_roles.contains(role));
    if all_cross_tenant || rules.tenant_scoped_tables.is_empty() {
        return;
    }
    // Functions that read tables by name or address can reach tenant data the check cannot see.
    for call in &scan.calls {
        if TABLE_READING_FUNCTIONS
            .iter()
            .any(|f| call == f || (f.ends_with('*') && call.starts_with(&f[..f.len() - 1])))
        {
            problems.add(
                "query.sql",
                None,
                format!(
                    "{call}(…) can read tables the tenant check cannot see; only an endpoint that cross-tenant roles \
                     alone may call can use it"
                ),
            );
        }
    }
    let filters = tenant_filters(&scan.code, &rules.tenant_column);
    for table in &rules.tenant_scoped_tables {
        let reads = scan.identifier_counts.get(table).copied().unwrap_or(0);
        if reads == 0 {
            continue;
        }
        let column = &rules.tenant_column;
        if !caller_params.contains(&"caller_tenant") {
            problems.add(
                "query.sql",
                None,
                format!(
                    "reads the tenant-scoped table {table} without {{caller_tenant:String}}: filter by it \
                     (WHERE {column} = {{caller_tenant:String}}), or let only cross-tenant roles call the endpoint"
                ),
            );
        } else if filters < reads {
            problems.add(
                "query.sql",
                None,
                format!(
                    "reads the tenant-scoped table {table} {reads} time(s) but filters {column} = \
                     {{caller_tenant:String}} {filters} time(s): filter every read of it"
                ),
            );
        }
    }
}

/// Table functions and dictionary lookups (lower-case; `*` ends a prefix).
const TABLE_READING_FUNCTIONS: [&str; 20] = [
    "merge",
    "remote",
    "remotesecure",
    "cluster",
    "clusterallreplicas",
    "view",
    "viewifpermitted",
    "dictget*",
    "joinget*",
    "url",
    "s3",
    "s3cluster",
    "file",
    "hdfs",
    "azureblobstorage",
    "mysql",
    "postgresql",
    "jdbc",
    "odbc",
    "input",
];

/// How many times the code compares the tenant column (optionally qualified) with the
/// caller's tenant, in either order.
fn tenant_filters(code: &str, column: &str) -> usize {
    let column = regex::escape(column);
    let placeholder = r"\{\s*caller_tenant\s*:\s*String\s*\}";
    let pattern = format!(r"(?:\b(?:\w+\.)?{column}\s*=\s*{placeholder})|(?:{placeholder}\s*=\s*(?:\w+\.)?{column}\b)");
    regex::Regex::new(&pattern).map_or(0, |re| re.find_iter(code).count())
}

/// The longest `[cache]` ttl or stale window: a day.
const MAX_CACHE_SECONDS: u64 = 86_400;

fn cache_policy(endpoint_toml: &EndpointToml, toml_text: &str, problems: &mut Problems<'_>) -> Option<CachePolicy> {
    let cache = endpoint_toml.cache.as_ref()?;
    let line = key_line(toml_text, "ttl");
    if !(1..=MAX_CACHE_SECONDS).contains(&cache.ttl) {
        problems.add(
            "endpoint.toml",
            line,
            format!("cache.ttl must be 1 to {MAX_CACHE_SECONDS} seconds; remove [cache] to turn caching off"),
        );
        return None;
    }
    if cache.stale > MAX_CACHE_SECONDS {
        problems.add(
            "endpoint.toml",
            key_line(toml_text, "stale"),
            format!("cache.stale must be 0 to {MAX_CACHE_SECONDS} seconds"),
        );
        return None;
    }
    Some(CachePolicy {
        ttl: Duration::from_secs(cache.ttl),
        stale: Duration::from_secs(cache.stale),
    })
}

fn limits(endpoint_toml: &EndpointToml, toml_text: &str, problems: &mut Problems<'_>) -> Limits {
    let limits = &endpoint_toml.limits;
    let max_execution_time = limits
        .max_execution_time
        .map_or(DEFAULT_MAX_EXECUTION_TIME, Duration::from_secs);
    if max_execution_time.is_zero() || max_execution_time > MAX_EXECUTION_TIME_CAP {
        problems.add(
            "endpoint.toml",
            key_line(toml_text, "max_execution_time"),
            format!(
                "limits.max_execution_time must be 1 to {} seconds: an HTTP-triggered function must answer within 230 s",
                MAX_EXECUTION_TIME_CAP.as_secs()
            ),
        );
    }
    for (value, key) in [(limits.max_rows, "max_rows"), (limits.max_bytes, "max_bytes")] {
        if value == Some(0) {
            problems.add(
                "endpoint.toml",
                key_line(toml_text, key),
                format!("limits.{key} must be at least 1"),
            );
        }
    }
    Limits {
        max_rows: limits.max_rows.unwrap_or(DEFAULT_MAX_ROWS),
        max_bytes: limits.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
        max_execution_time,
    }
}

fn formats(endpoint_toml: &EndpointToml, toml_text: &str, problems: &mut Problems<'_>) -> Vec<OutputFormat> {
    let Some(names) = &endpoint_toml.formats else {
        return OutputFormat::ALL.to_vec();
    };
    let mut formats = Vec::new();
    for name in names {
        match name.parse::<OutputFormat>() {
            Ok(format) if !formats.contains(&format) => formats.push(format),
            Ok(_) => {}
            Err(message) => problems.add(
                "endpoint.toml",
                key_line(toml_text, "formats"),
                format!("formats: {message}"),
            ),
        }
    }
    if formats.is_empty() && names.is_empty() {
        problems.add(
            "endpoint.toml",
            key_line(toml_text, "formats"),
            "formats is empty; list at least one or leave the key out",
        );
    }
    formats
}

/// Every role a function names must be one the access policy defines.
pub(super) fn check_roles_defined(
    roles: &[String],
    rules: &AccessRules,
    line: Option<usize>,
    problems: &mut Problems<'_>,
) {
    for role in roles {
        if !rules.roles.contains(role) {
            let known: Vec<&str> = rules.roles.iter().map(String::as_str).collect();
            problems.add(
                "endpoint.toml",
                line,
                format!(
                    "role {role:?} is not defined in the access policy (defined: {})",
                    known.join(", ")
                ),
            );
        }
    }
}
