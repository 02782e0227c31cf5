//! Serde mirrors of an endpoint folder's files, exactly as written on disk: `function.json`
//! (Azure's format, read leniently: the host owns it and may add keys) and `endpoint.toml`
//! (ours, read strictly: an unknown key is a typo to report, never to ignore).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::param::ParamToml;

/// `function.json`: the bindings of one function.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionJson {
    #[serde(default)]
    pub bindings: Vec<BindingJson>,
    /// A disabled function is not served (the host honours the same flag).
    #[serde(default)]
    pub disabled: bool,
}

/// One binding of a function.json.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingJson {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub direction: String,
    #[serde(default)]
    pub name: String,
    /// `anonymous`, `function` or `admin`; the host's default is `function`.
    pub auth_level: Option<String>,
    /// HTTP methods; the host's default is every method.
    pub methods: Option<Vec<String>>,
    /// Route template; the host's default is the function name.
    pub route: Option<String>,
    /// A queue trigger's queue.
    pub queue_name: Option<String>,
}

/// `endpoint.toml`: what the endpoint is and the rules for its parameters and results.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointToml {
    /// `"query"` (the default): an endpoint running query.sql. Other kinds are built in.
    pub kind: Option<String>,
    /// One or two sentences for the API's documentation.
    pub description: String,
    /// Roles that may call the endpoint (enforced by access control).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Result formats callers may ask for; all supported formats when absent.
    pub formats: Option<Vec<String>>,
    /// Result caching; absent means never cached.
    pub cache: Option<CacheToml>,
    #[serde(default)]
    pub limits: LimitsToml,
    #[serde(default)]
    pub params: BTreeMap<String, ParamToml>,
}

/// `[cache]`: how long a result may be served without running the query again.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheToml {
    /// Seconds a result is fresh.
    pub ttl: u64,
    /// Seconds after that an entry may still be served while one refresh runs.
    #[serde(default)]
    pub stale: u64,
}

/// `[limits]`: bounds ClickHouse enforces for each run of the query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsToml {
    /// Rows a result may have (`max_result_rows`); more is an error, never a cut.
    pub max_rows: Option<u64>,
    /// Uncompressed bytes a result may have (`max_result_bytes`).
    pub max_bytes: Option<u64>,
    /// Seconds the query may run (`max_execution_time`).
    pub max_execution_time: Option<u64>,
}

/// A first look at endpoint.toml: which kind of function the folder holds.
#[derive(Debug, Deserialize)]
pub struct KindToml {
    pub kind: Option<String>,
}

/// endpoint.toml of a built-in function (`kind = "health"`): nothing to configure but its
/// documentation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinToml {
    pub kind: String,
    pub description: String,
}

/// endpoint.toml of an ingest endpoint (`kind = "ingest"`): where events go and what they
/// may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestToml {
    pub kind: String,
    /// One or two sentences for the API's documentation.
    pub description: String,
    /// Roles that may send events.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The ClickHouse table (`name` or `database.name`) that receives the rows.
    pub table: String,
    /// The column stamped with the caller's tenant. Tenant-scoped tables get the policy's
    /// tenant column when this is absent.
    pub tenant_column: Option<String>,
    #[serde(default)]
    pub limits: IngestLimitsToml,
    /// The accepted fields, each like a query parameter: type, constraints, default.
    #[serde(default)]
    pub fields: BTreeMap<String, ParamToml>,
}

/// `[limits]` of an ingest endpoint: the largest batch one request may carry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestLimitsToml {
    pub max_rows: Option<usize>,
    pub max_bytes: Option<usize>,
}
