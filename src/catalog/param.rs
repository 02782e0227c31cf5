//! Request parameters: the `[params.<name>]` spec from `endpoint.toml`, and the parsing of request
//! values through it into typed, constraint-checked [`ParamValue`]s. Values are bound server-side
//! with the `clickhouse` crate's `.param()`, so a value never becomes SQL text.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value as Json;
use time::macros::{date, datetime};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

use super::types::ParamType;

/// The serde mirror of one `[params.<name>]` table in `endpoint.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamToml {
    /// The ClickHouse type, in ClickHouse syntax.
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether a request must send the parameter.
    #[serde(default)]
    pub required: bool,
    /// The value when a request omits the parameter.
    pub default: Option<toml::Value>,
    /// The smallest value accepted (numbers, dates and times). Times without an offset, in
    /// requests or here, compare as if they were UTC.
    pub min: Option<toml::Value>,
    /// The largest value accepted (numbers, dates and times).
    pub max: Option<toml::Value>,
    /// Strings: at most this many characters; arrays: at most this many items.
    pub max_len: Option<usize>,
    /// Strings (or the items of an array of strings): a regex that must match the whole value.
    pub pattern: Option<String>,
    /// The value (or each array item) must be one of these.
    pub allowed: Option<Vec<toml::Value>>,
    /// What the parameter means, for the endpoint's documentation.
    #[serde(default)]
    pub description: String,
    /// An example value, for the endpoint's documentation.
    pub example: Option<toml::Value>,
}

/// A checked parameter declaration: its type, constraints, default and documentation.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    name: String,
    ty: ParamType,
    required: bool,
    default: Option<ParamValue>,
    description: String,
    example: Option<String>,
    rules: Rules,
}

/// A request value before parsing.
#[derive(Debug, Clone, Copy)]
pub enum RawValue<'a> {
    /// From a query string (or the route): one value per occurrence of the key. For an `Array`
    /// parameter each occurrence is an item, and every occurrence is also split on `,`, because
    /// the Azure Functions host may join repeated keys with commas; items that contain commas
    /// must therefore be sent in a JSON body. For a `Nullable` parameter an empty value is NULL.
    Query(&'a [String]),
    /// From a JSON request body.
    Json(&'a Json),
    /// A JSON string from a request body, already unescaped: the same as `Json` of that
    /// string, without building the JSON value first.
    JsonString(&'a str),
}

/// A parsed, constraint-checked value, ready for the `clickhouse` crate's `.param()`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// NULL, for `Nullable` types only.
    Null,
    /// `Bool`.
    Bool(bool),
    /// `Int8`..`Int64`.
    Int(i64),
    /// `UInt8`..`UInt64`.
    UInt(u64),
    /// `Float32` and `Float64`; always finite.
    Float(f64),
    /// Every other scalar, in the text form ClickHouse reads for the type.
    Text(String),
    /// `Array(..)`.
    Array(Vec<ParamValue>),
}

impl Serialize for ParamValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ParamValue::Null => serializer.serialize_none(),
            ParamValue::Bool(value) => serializer.serialize_bool(*value),
            ParamValue::Int(value) => serializer.serialize_i64(*value),
            ParamValue::UInt(value) => serializer.serialize_u64(*value),
            ParamValue::Float(value) => serializer.serialize_f64(*value),
            ParamValue::Text(value) => serializer.serialize_str(value),
            ParamValue::Array(items) => serializer.collect_seq(items),
        }
    }
}

/// A request value that was refused. The value is shown shortened, so a huge one never ends up
/// in a response or a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`: expected {expected}, got {got}: {problem}")]
pub struct ParamError {
    param: String,
    expected: String,
    got: String,
    problem: String,
}

impl ParamError {
    /// The parameter's name.
    pub fn param(&self) -> &str {
        &self.param
    }

    /// What the parameter takes: its type and, where it helps, the text forms accepted.
    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// What was wrong with the value.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl ParamSpec {
    /// Builds and checks a spec; returns every problem found, each naming the key and the fix.
    pub fn from_toml(name: &str, table: ParamToml) -> Result<ParamSpec, Vec<String>> {
        let mut problems = Vec::new();
        let ty = checked_type(&table.ty, &mut problems);
        let rules = build_rules(ty.as_ref(), &table, &mut problems);
        if table.required && table.default.is_some() {
            problems.push(
                "`required = true` contradicts `default` (a required parameter is always sent); \
                 remove one of them"
                    .to_owned(),
            );
        }
        let mut default = None;
        let mut example = None;
        if let Some(ty) = &ty {
            if !table.required && table.default.is_none() && !ty.is_nullable() {
                problems.push(format!(
                    "optional parameter `{name}` needs a default or a Nullable type"
                ));
            }
            if let Some(value) = &table.default {
                default = own_default(ty, &rules, value, &mut problems);
            }
            if let Some(value) = &table.example {
                example = own_example(ty, &rules, value, &mut problems);
            }
        }
        match ty {
            Some(ty) if problems.is_empty() => Ok(ParamSpec {
                name: name.to_owned(),
                ty,
                required: table.required,
                default,
                description: table.description,
                example,
                rules,
            }),
            _ => Err(problems),
        }
    }

    /// The parameter's name, as in `{name:Type}` in the SQL.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parameter's ClickHouse type.
    pub fn ty(&self) -> &ParamType {
        &self.ty
    }

    /// Whether a request must send the parameter.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// The value used when a request omits the parameter, if one is declared.
    pub fn default(&self) -> Option<&ParamValue> {
        self.default.as_ref()
    }

    /// What the parameter means.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// An example, as the text a query string would carry.
    pub fn example(&self) -> Option<&str> {
        self.example.as_deref()
    }

    /// Parses one request value through the type and checks the constraints. An empty query
    /// value list means the parameter was omitted, and gives [`ParamSpec::missing`].
    pub fn parse(&self, raw: RawValue<'_>) -> Result<ParamValue, ParamError> {
        let parsed = match raw {
            RawValue::Query([]) => return self.missing(),
            RawValue::Query(values) => self.rules.query(&self.ty, values),
            RawValue::Json(value) => self.rules.json(&self.ty, value),
            RawValue::JsonString(text) => self.rules.json_string(&self.ty, text).map_err(|problem| Failure {
                got: show_text(text),
                problem,
            }),
        };
        parsed.map_err(|failure| self.error(failure))
    }

    /// The value when a request omits the parameter: the default, or NULL for a `Nullable`
    /// parameter without one; an error when the parameter is required.
    pub fn missing(&self) -> Result<ParamValue, ParamError> {
        if !self.required {
            if let Some(default) = &self.default {
                return Ok(default.clone());
            }
            if self.ty.is_nullable() {
                return Ok(ParamValue::Null);
            }
        }
        Err(self.error(Failure {
            got: "nothing".to_owned(),
            problem: Problem::Invalid("the parameter is required".to_owned()),
        }))
    }

    /// The parameter as JSON Schema (draft 2020-12, as OpenAPI 3.1 uses it): its JSON type,
    /// its constraints, its default and its description. Constraints JSON Schema cannot say
    /// (bounds on dates and times) are in the description.
    pub fn json_schema(&self) -> Json {
        let mut schema = type_schema(&self.ty, &self.rules);
        let mut notes = Vec::new();
        if !self.ty.scalar_is_numeric() {
            if let Some(min) = &self.rules.min {
                notes.push(format!("at least {}", min.shown));
            }
            if let Some(max) = &self.rules.max {
                notes.push(format!("at most {}", max.shown));
            }
        }
        let forms = describe(&self.ty);
        let mut parts = vec![self.description.trim_end_matches('.').to_owned()];
        if forms != self.ty.to_string() {
            parts.push(format!("Format: {forms}"));
        }
        if !notes.is_empty() {
            parts.push(format!("Range: {}", notes.join(", ")));
        }
        let description = parts
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(|part| format!("{part}."))
            .collect::<Vec<_>>()
            .join(" ");
        if let Json::Object(map) = &mut schema {
            map.insert("x-clickhouse-type".into(), Json::String(self.ty.to_string()));
            if !description.is_empty() {
                map.insert("description".into(), Json::String(description));
            }
            if let Some(default) = &self.default {
                map.insert("default".into(), serde_json::to_value(default).unwrap_or(Json::Null));
            }
        }
        schema
    }

    fn error(&self, failure: Failure) -> ParamError {
        ParamError {
            param: self.name.clone(),
            expected: describe(&self.ty),
            got: failure.got,
            problem: failure.problem.into_message(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building a spec from endpoint.toml

/// Parses the declared type, refusing the types that parse but cannot be bound.
fn checked_type(text: &str, problems: &mut Vec<String>) -> Option<ParamType> {
    match text.parse::<ParamType>() {
        Err(error) => {
            problems.push(format!("`type`: {error}"));
            None
        }
        Ok(ty) => match unsupported(&ty) {
            Some(why) => {
                problems.push(format!("`type` = \"{ty}\": {why}"));
                None
            }
            None => Some(ty),
        },
    }
}

fn unsupported(ty: &ParamType) -> Option<&'static str> {
    match ty.element().map(ParamType::inner) {
        Some(ParamType::Array(_)) => Some("arrays of arrays are not supported as parameters; use a flat Array"),
        // The crate sends array items of text quoted (['1.5']), and ClickHouse reads Decimal
        // items only unquoted, so such a value would fail on every request.
        Some(ParamType::Decimal { .. }) => Some(
            "arrays of Decimal cannot be bound (array items are sent quoted and ClickHouse does \
             not read quoted decimals); use Array(String) with a `pattern` and convert in SQL, \
             for example arrayMap(x -> toDecimal64(x, 2), {name:Array(String)})",
        ),
        _ => None,
    }
}

/// The constraints, each checked against the type as far as the type is known.
fn build_rules(ty: Option<&ParamType>, table: &ParamToml, problems: &mut Vec<String>) -> Rules {
    let mut rules = Rules {
        pattern: table
            .pattern
            .as_deref()
            .and_then(|source| pattern(ty, source, problems)),
        ..Rules::default()
    };
    if let Some(max_len) = table.max_len {
        if max_len == 0 {
            problems.push("`max_len` = 0 refuses every non-empty value; make it at least 1".into());
        }
        match ty {
            Some(ParamType::Array(_)) => rules.max_items = Some(max_len),
            Some(ty) if *ty.inner() == ParamType::String => rules.max_chars = Some(max_len),
            Some(ty) => problems.push(format!(
                "`max_len` applies only to String (characters) and Array (items) parameters, \
                 and the type is {ty}; remove it"
            )),
            None => {}
        }
    }
    if let Some(ty) = ty {
        rules.min = bound("min", ty, table.min.as_ref(), problems);
        rules.max = bound("max", ty, table.max.as_ref(), problems);
        if let (Some(min), Some(max)) = (&rules.min, &rules.max)
            && min.key > max.key
        {
            problems.push(format!(
                "`min` {} is greater than `max` {}, so no value could pass; swap or fix them",
                min.shown, max.shown
            ));
        }
        rules.allowed = allowed(ty, table.allowed.as_deref(), problems);
    }
    rules
}

fn pattern(ty: Option<&ParamType>, source: &str, problems: &mut Vec<String>) -> Option<Pattern> {
    if let Some(ty) = ty
        && *ty.scalar() != ParamType::String
    {
        problems.push(format!(
            "`pattern` applies only to String values, and the type is {ty}; remove it"
        ));
    }
    // Anchored on both ends: the pattern describes the whole value, never a part of it.
    match Regex::new(&format!("^(?:{source})$")) {
        Ok(regex) => Some(Pattern {
            regex,
            source: source.to_owned(),
        }),
        Err(error) => {
            problems.push(format!(
                "`pattern` {source:?} is not a valid regular expression: {}; fix it",
                regex_problem(&error)
            ));
            None
        }
    }
}

/// The one-line cause of a regex error (its syntax errors span several lines, with a caret
/// under the anchored form of the pattern, which the author never wrote).
fn regex_problem(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .last()
            .map(|line| line.trim_start_matches("error: ").to_owned())
            .unwrap_or_default(),
        other => other.to_string(),
    }
}

fn bound(key: &str, ty: &ParamType, value: Option<&toml::Value>, problems: &mut Vec<String>) -> Option<Bound> {
    let value = value?;
    let scalar = ty.scalar();
    if !is_ordered(scalar) {
        problems.push(format!(
            "`{key}` applies only to numbers, dates and times, and the type is {ty}; remove it"
        ));
        return None;
    }
    let json = match toml_to_json(value) {
        Ok(json) => json,
        Err(why) => {
            problems.push(format!("`{key}` {why}"));
            return None;
        }
    };
    match json_scalar(scalar, &json) {
        Ok(Scalar { key: Some(key), .. }) => Some(Bound {
            key,
            shown: plain(&json),
        }),
        Ok(_) => None,
        Err(why) => {
            problems.push(format!(
                "`{key}` {} is not a valid {scalar}: {why}",
                config_shown(&json)
            ));
            None
        }
    }
}

fn allowed(ty: &ParamType, values: Option<&[toml::Value]>, problems: &mut Vec<String>) -> Option<Allowed> {
    let values = values?;
    if values.is_empty() {
        problems.push("`allowed` is empty, so no value could pass; list the accepted values or remove it".to_owned());
        return None;
    }
    let scalar = ty.scalar();
    let mut parsed = Vec::with_capacity(values.len());
    let mut shown = Vec::with_capacity(values.len());
    for value in values {
        let checked = toml_to_json(value).and_then(|json| {
            json_scalar(scalar, &json)
                .map(|scalar| (scalar.value, plain(&json)))
                .map_err(|why| format!("{} is not a valid {scalar}: {why}", config_shown(&json)))
        });
        match checked {
            Ok((value, text)) => {
                parsed.push(value);
                shown.push(text);
            }
            Err(why) => problems.push(format!("`allowed` value {why}")),
        }
    }
    (parsed.len() == values.len()).then(|| Allowed {
        values: parsed,
        shown: shown.join(", "),
    })
}

/// Checks the default like a JSON request value, so a TOML string, number or array means
/// what it would mean in a request body.
fn own_default(ty: &ParamType, rules: &Rules, value: &toml::Value, problems: &mut Vec<String>) -> Option<ParamValue> {
    let json = match toml_to_json(value) {
        Ok(json) => json,
        Err(why) => {
            problems.push(format!("`default` {why}"));
            return None;
        }
    };
    match rules.json(ty, &json) {
        Ok(value) => Some(value),
        Err(failure) => {
            problems.push(own_value_problem("default", &config_shown(&json), ty, failure));
            None
        }
    }
}

/// Checks the example as the query-string text it documents.
fn own_example(ty: &ParamType, rules: &Rules, value: &toml::Value, problems: &mut Vec<String>) -> Option<String> {
    let text = match request_text(value) {
        Ok(text) => text,
        Err(why) => {
            problems.push(format!("`example` {why}"));
            return None;
        }
    };
    match rules.query(ty, std::slice::from_ref(&text)) {
        Ok(_) => Some(text),
        Err(failure) => {
            problems.push(own_value_problem("example", &show_text(&text), ty, failure));
            None
        }
    }
}

fn own_value_problem(key: &str, shown: &str, ty: &ParamType, failure: Failure) -> String {
    match failure.problem {
        Problem::Violates(why) => format!("{key} {shown} violates its own constraint: {why}"),
        Problem::Invalid(why) => format!("{key} {shown} is not a valid {ty}: {why}"),
    }
}

/// A TOML value as JSON, so that defaults and bounds go through the JSON request path.
fn toml_to_json(value: &toml::Value) -> Result<Json, String> {
    Ok(match value {
        toml::Value::String(text) => Json::String(text.clone()),
        toml::Value::Integer(number) => Json::from(*number),
        toml::Value::Float(number) => serde_json::Number::from_f64(*number)
            .map(Json::Number)
            .ok_or("must be a finite number, not nan or inf")?,
        toml::Value::Boolean(flag) => Json::Bool(*flag),
        toml::Value::Datetime(datetime) => Json::String(datetime.to_string()),
        toml::Value::Array(items) => Json::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(_) => return Err(not_a_value()),
    })
}

/// A TOML value as the text a query string would carry: strings verbatim, arrays
/// comma-joined.
fn request_text(value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::Boolean(flag) => flag.to_string(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        toml::Value::Array(items) => items.iter().map(request_text).collect::<Result<Vec<_>, _>>()?.join(","),
        toml::Value::Table(_) => return Err(not_a_value()),
    })
}

fn not_a_value() -> String {
    "must be a string, number, boolean, date or array, not a table".to_owned()
}

/// A JSON value as written in messages about its spec: strings verbatim.
fn plain(json: &Json) -> String {
    match json {
        Json::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A JSON value from endpoint.toml as shown in catalog problems: JSON syntax, shortened.
fn config_shown(json: &Json) -> String {
    let text = json.to_string();
    let (head, more) = shorten(&text);
    format!("{head}{more}")
}

// ---------------------------------------------------------------------------------------------
// Constraints and the request paths

/// The constraints of one parameter. For arrays and `Nullable` types, everything except
/// `max_items` applies to each item or to the inner value.
#[derive(Debug, Clone, Default)]
struct Rules {
    min: Option<Bound>,
    max: Option<Bound>,
    max_chars: Option<usize>,
    max_items: Option<usize>,
    pattern: Option<Pattern>,
    allowed: Option<Allowed>,
}

#[derive(Debug, Clone)]
struct Bound {
    key: Key,
    /// As written in endpoint.toml, for messages.
    shown: String,
}

#[derive(Debug, Clone)]
struct Pattern {
    regex: Regex,
    /// As written in endpoint.toml, for messages.
    source: String,
}

#[derive(Debug, Clone)]
struct Allowed {
    values: Vec<ParamValue>,
    /// The values as written in endpoint.toml, comma-separated, for messages.
    shown: String,
}

/// Why one value was refused: it is not a value of the type, or it breaks a constraint.
#[derive(Debug)]
enum Problem {
    Invalid(String),
    Violates(String),
}

impl Problem {
    fn into_message(self) -> String {
        match self {
            Problem::Invalid(message) | Problem::Violates(message) => message,
        }
    }

    /// Names the array item the problem is about.
    fn at(self, index: usize) -> Problem {
        match self {
            Problem::Invalid(message) => Problem::Invalid(format!("at index {index}: {message}")),
            Problem::Violates(message) => Problem::Violates(format!("at index {index}: {message}")),
        }
    }
}

/// A refused value, before the parameter's name and type are added.
#[derive(Debug)]
struct Failure {
    /// The value, shortened for messages.
    got: String,
    problem: Problem,
}

impl Rules {
    fn query(&self, ty: &ParamType, values: &[String]) -> Result<ParamValue, Failure> {
        if let ParamType::Array(element) = ty {
            let items = query_items(values);
            self.check_items(items.len())?;
            return items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    self.text_item(element, item).map_err(|problem| Failure {
                        got: show_text(item),
                        problem: problem.at(index),
                    })
                })
                .collect::<Result<_, _>>()
                .map(ParamValue::Array);
        }
        match values {
            [text] => self.text_item(ty, text).map_err(|problem| Failure {
                got: show_text(text),
                problem,
            }),
            _ => Err(Failure {
                got: format!("{} values", values.len()),
                problem: Problem::Invalid("given more than once; send it once".to_owned()),
            }),
        }
    }

    fn text_item(&self, ty: &ParamType, text: &str) -> Result<ParamValue, Problem> {
        match ty {
            // A query string cannot carry NULL, so the empty value stands for it.
            ParamType::Nullable(_) if text.is_empty() => Ok(ParamValue::Null),
            ParamType::Array(_) => Err(nested_array()),
            ty => self.check(parse_scalar(ty.inner(), text).map_err(Problem::Invalid)?),
        }
    }

    fn json(&self, ty: &ParamType, value: &Json) -> Result<ParamValue, Failure> {
        match (ty, value) {
            (ParamType::Array(element), Json::Array(items)) => {
                self.check_items(items.len())?;
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        self.json_item(element, item).map_err(|problem| Failure {
                            got: show_json(item),
                            problem: problem.at(index),
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map(ParamValue::Array)
            }
            _ => self.json_item(ty, value).map_err(|problem| Failure {
                got: show_json(value),
                problem,
            }),
        }
    }

    fn json_item(&self, ty: &ParamType, value: &Json) -> Result<ParamValue, Problem> {
        match (ty, value) {
            (ty, Json::String(text)) => self.json_string(ty, text),
            (ParamType::Nullable(_), Json::Null) => Ok(ParamValue::Null),
            (_, Json::Null) => Err(Problem::Invalid(format!(
                "null is not accepted, because {ty} is not Nullable"
            ))),
            (ParamType::Array(_), Json::Array(_)) => Err(nested_array()),
            (ParamType::Array(_), other) => Err(Problem::Invalid(format!(
                "a JSON {} is not accepted for {ty}; send a JSON array",
                json_kind(other)
            ))),
            (ty, value) => self.check(json_scalar(ty.inner(), value).map_err(Problem::Invalid)?),
        }
    }

    /// A JSON string: the text form of any scalar type, never an array.
    fn json_string(&self, ty: &ParamType, text: &str) -> Result<ParamValue, Problem> {
        match ty {
            ParamType::Array(_) => Err(Problem::Invalid(format!(
                "a JSON string is not accepted for {ty}; send a JSON array"
            ))),
            ty => self.check(parse_scalar(ty.inner(), text).map_err(Problem::Invalid)?),
        }
    }

    fn check_items(&self, count: usize) -> Result<(), Failure> {
        match self.max_items {
            Some(max) if count > max => Err(Failure {
                got: format!("{count} items"),
                problem: Problem::Violates(format!("more than {max} items")),
            }),
            _ => Ok(()),
        }
    }

    /// Checks one scalar against the constraints and hands back its value.
    fn check(&self, scalar: Scalar) -> Result<ParamValue, Problem> {
        if let (Some(min), Some(key)) = (&self.min, scalar.key)
            && key < min.key
        {
            return Err(Problem::Violates(format!("must be at least {}", min.shown)));
        }
        if let (Some(max), Some(key)) = (&self.max, scalar.key)
            && key > max.key
        {
            return Err(Problem::Violates(format!("must be at most {}", max.shown)));
        }
        if let ParamValue::Text(text) = &scalar.value {
            // Byte length bounds the character count, so most values skip the count.
            if let Some(max) = self.max_chars
                && text.len() > max
                && text.chars().count() > max
            {
                return Err(Problem::Violates(format!("longer than {max} characters")));
            }
            if let Some(pattern) = &self.pattern
                && !pattern.regex.is_match(text)
            {
                return Err(Problem::Violates(format!("must match pattern {}", pattern.source)));
            }
        }
        if let Some(allowed) = &self.allowed
            && !allowed.values.contains(&scalar.value)
        {
            return Err(Problem::Violates(format!("must be one of: {}", allowed.shown)));
        }
        Ok(scalar.value)
    }
}

/// The JSON Schema of a type with the constraints that apply to it (to the items of an array,
/// and inside `Nullable`).
fn type_schema(ty: &ParamType, rules: &Rules) -> Json {
    use serde_json::json;
    match ty {
        ParamType::Array(element) => {
            let mut schema = json!({"type": "array", "items": type_schema(element, rules)});
            if let (Some(max), Json::Object(map)) = (rules.max_items, &mut schema) {
                map.insert("maxItems".into(), json!(max));
            }
            schema
        }
        ParamType::Nullable(inner) => {
            let mut schema = type_schema(inner, rules);
            if let Some(Json::String(kind)) = schema.get("type").cloned() {
                schema["type"] = json!([kind, "null"]);
            }
            schema
        }
        scalar => {
            let mut schema = match scalar {
                ParamType::String => json!({"type": "string"}),
                ParamType::Int { bits, signed } => {
                    let (min, max) = int_range(*bits, *signed);
                    // i128 bounds of 64-bit types fit JSON numbers as i64/u64.
                    let number = |value: i128| {
                        i64::try_from(value)
                            .map(Json::from)
                            .or_else(|_| u64::try_from(value).map(Json::from))
                            .unwrap_or(Json::Null)
                    };
                    json!({"type": "integer", "minimum": number(min), "maximum": number(max)})
                }
                ParamType::Float32 | ParamType::Float64 => json!({"type": "number"}),
                ParamType::Decimal { scale, .. } => json!({
                    "type": ["string", "number"],
                    "pattern": format!("^-?[0-9]+(\\.[0-9]{{1,{}}})?$", (*scale).max(1)),
                }),
                ParamType::Bool => json!({"type": "boolean"}),
                ParamType::Date => json!({"type": "string", "format": "date"}),
                ParamType::DateTime { .. } | ParamType::DateTime64 { .. } => json!({"type": ["string", "number"]}),
                ParamType::Uuid => json!({"type": "string", "format": "uuid"}),
                ParamType::Ipv4 => json!({"type": "string", "format": "ipv4"}),
                ParamType::Ipv6 => json!({"type": "string", "format": "ipv6"}),
                ParamType::Array(_) | ParamType::Nullable(_) => json!({}),
            };
            if let Json::Object(map) = &mut schema {
                if scalar.scalar_is_numeric() {
                    for (key, bound) in [("minimum", &rules.min), ("maximum", &rules.max)] {
                        if let Some(number) = bound
                            .as_ref()
                            .and_then(|bound| serde_json::from_str::<serde_json::Number>(&bound.shown).ok())
                        {
                            map.insert(key.into(), Json::Number(number));
                        }
                    }
                }
                if let Some(max) = rules.max_chars {
                    map.insert("maxLength".into(), json!(max));
                }
                if let Some(pattern) = &rules.pattern {
                    map.insert("pattern".into(), json!(format!("^(?:{})$", pattern.source)));
                }
                if let Some(allowed) = &rules.allowed {
                    map.insert(
                        "enum".into(),
                        serde_json::to_value(&allowed.values).unwrap_or(Json::Null),
                    );
                }
            }
            schema
        }
    }
}

/// The items of an array sent in a query string: every occurrence, each split on commas; a
/// single empty occurrence (`ids=`) is the empty array.
fn query_items(values: &[String]) -> Vec<&str> {
    match values {
        [only] if only.is_empty() => Vec::new(),
        _ => values.iter().flat_map(|value| value.split(',')).collect(),
    }
}

fn nested_array() -> Problem {
    Problem::Invalid("arrays of arrays are not supported".to_owned())
}

/// A scalar from JSON: strings hold the text form of every type; numbers are taken through
/// their text for the types that have a numeric form.
fn json_scalar(ty: &ParamType, value: &Json) -> Result<Scalar, String> {
    match value {
        Json::String(text) => parse_scalar(ty, text),
        Json::Bool(flag) if *ty == ParamType::Bool => Ok(Scalar {
            value: ParamValue::Bool(*flag),
            key: None,
        }),
        Json::Number(number) if takes_number(ty) => parse_scalar(ty, &number.to_string()),
        other => Err(format!(
            "a JSON {} is not accepted for {ty}; send {}",
            json_kind(other),
            wanted(ty)
        )),
    }
}

fn takes_number(ty: &ParamType) -> bool {
    matches!(
        ty,
        ParamType::Int { .. }
            | ParamType::Float32
            | ParamType::Float64
            | ParamType::Decimal { .. }
            | ParamType::DateTime { .. }
            | ParamType::DateTime64 { .. }
    )
}

fn is_ordered(ty: &ParamType) -> bool {
    takes_number(ty) || *ty == ParamType::Date
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn wanted(ty: &ParamType) -> &'static str {
    match ty {
        ParamType::Int { .. } | ParamType::Float32 | ParamType::Float64 => "a JSON number (or a string holding one)",
        ParamType::Decimal { .. } => "a JSON string (or a number)",
        ParamType::DateTime { .. } | ParamType::DateTime64 { .. } => "a JSON string (or a number of Unix seconds)",
        ParamType::Bool => "true or false",
        _ => "a JSON string",
    }
}

/// The type as shown in errors, with the text forms it takes where they are not obvious.
fn describe(ty: &ParamType) -> String {
    let forms = match ty.scalar() {
        ParamType::Date => "'YYYY-MM-DD'",
        ParamType::DateTime { .. } => "'YYYY-MM-DD hh:mm:ss' or RFC 3339",
        ParamType::DateTime64 { .. } => "'YYYY-MM-DD hh:mm:ss[.fff]' or RFC 3339",
        ParamType::Bool => "true, false, 1 or 0",
        ParamType::Uuid => "'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'",
        _ => return ty.to_string(),
    };
    format!("{ty} ({forms})")
}

/// How many characters of a value errors show.
const SHOWN_CHARS: usize = 40;

/// The first [`SHOWN_CHARS`] characters, and `…` when there were more.
fn shorten(text: &str) -> (&str, &'static str) {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => (&text[..cut], "…"),
        None => (text, ""),
    }
}

/// Request text as shown in errors: quoted with escapes (no raw control characters reach a
/// log), shortened.
fn show_text(text: &str) -> String {
    let (head, more) = shorten(text);
    format!("{head:?}{more}")
}

fn show_json(value: &Json) -> String {
    match value {
        Json::String(text) => show_text(text),
        Json::Array(items) => format!("an array of {} items", items.len()),
        Json::Object(_) => "an object".to_owned(),
        // null, booleans and numbers are short.
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars

/// A parsed scalar: its value, and for ordered types the key that min and max compare.
#[derive(Debug)]
struct Scalar {
    value: ParamValue,
    key: Option<Key>,
}

/// Sort keys: integers, scaled decimals, days and nanoseconds compare exactly; floats as
/// floats. One type always gives one variant.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Key {
    Exact(i128),
    Float(f64),
}

fn unordered(value: ParamValue) -> Scalar {
    Scalar { value, key: None }
}

/// Parses the text of a scalar type (not `Array` or `Nullable`).
fn parse_scalar(ty: &ParamType, text: &str) -> Result<Scalar, String> {
    match ty {
        ParamType::String => Ok(unordered(ParamValue::Text(text.to_owned()))),
        ParamType::Int { bits, signed } => parse_int(text, *bits, *signed),
        ParamType::Float32 => parse_float(text, true),
        ParamType::Float64 => parse_float(text, false),
        ParamType::Decimal { precision, scale } => parse_decimal(text, *precision, *scale),
        ParamType::Bool => parse_bool(text),
        ParamType::Date => parse_date(text),
        ParamType::DateTime { .. } => parse_datetime(text, None),
        ParamType::DateTime64 { precision, .. } => parse_datetime(text, Some(*precision)),
        ParamType::Uuid => parse_uuid(text),
        ParamType::Ipv4 => parse_ipv4(text),
        ParamType::Ipv6 => parse_ipv6(text),
        ParamType::Array(_) | ParamType::Nullable(_) => Err(format!("{ty} is not a scalar type")),
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// The smallest and largest value of `Int<bits>` (`signed`) or `UInt<bits>`.
fn int_range(bits: u8, signed: bool) -> (i128, i128) {
    if signed {
        let max = (1_i128 << (bits - 1)) - 1;
        (-max - 1, max)
    } else {
        (0, (1_i128 << bits) - 1)
    }
}

fn parse_int(text: &str, bits: u8, signed: bool) -> Result<Scalar, String> {
    if !is_digits(text.strip_prefix('-').unwrap_or(text)) {
        return Err("not an integer (decimal digits with an optional leading '-')".to_owned());
    }
    let (min, max) = int_range(bits, signed);
    let ty = ParamType::Int { bits, signed };
    let out_of_range = || format!("out of range for {ty} ({min}..={max})");
    // Too many digits for i128 is out of range too.
    let number: i128 = text.parse().map_err(|_| out_of_range())?;
    if !(min..=max).contains(&number) {
        return Err(out_of_range());
    }
    let value = if signed {
        ParamValue::Int(i64::try_from(number).map_err(|_| out_of_range())?)
    } else {
        ParamValue::UInt(u64::try_from(number).map_err(|_| out_of_range())?)
    };
    Ok(Scalar {
        value,
        key: Some(Key::Exact(number)),
    })
}

fn parse_float(text: &str, single: bool) -> Result<Scalar, String> {
    let ty = if single { "Float32" } else { "Float64" };
    let number: f64 = text.parse().map_err(|_| "not a number".to_owned())?;
    if number.is_nan() || (number.is_infinite() && text.to_ascii_lowercase().contains("inf")) {
        return Err("must be a finite number".to_owned());
    }
    if number.is_infinite() || (single && number.abs() > f64::from(f32::MAX)) {
        return Err(format!("out of range for {ty}"));
    }
    Ok(Scalar {
        value: ParamValue::Float(number),
        key: Some(Key::Float(number)),
    })
}

fn parse_bool(text: &str) -> Result<Scalar, String> {
    let value = if text == "1" || text.eq_ignore_ascii_case("true") {
        true
    } else if text == "0" || text.eq_ignore_ascii_case("false") {
        false
    } else {
        return Err("not a boolean (true, false, 1 or 0)".to_owned());
    };
    Ok(unordered(ParamValue::Bool(value)))
}

/// `-?digits[.digits]`, refused rather than rounded when it has more digits than the type.
fn parse_decimal(text: &str, precision: u8, scale: u8) -> Result<Scalar, String> {
    let ty = ParamType::Decimal { precision, scale };
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    if !is_digits(whole) || !is_digits(fraction) {
        return Err("not a decimal number (digits, an optional leading '-' and '.')".to_owned());
    }
    // Leading zeros of the whole part and trailing zeros of the fraction carry no digits.
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let whole_digits = usize::from(precision - scale);
    if whole.len() > whole_digits {
        return Err(format!(
            "out of range for {ty} (at most {whole_digits} digits before the point)"
        ));
    }
    if fraction.len() > usize::from(scale) {
        return Err(format!(
            "more than {scale} digits after the point for {ty} (it is not rounded)"
        ));
    }
    // At most 38 digits, so the scaled value fits an i128.
    let scaled = format!("{whole}{fraction:0<width$}", width = usize::from(scale));
    let magnitude: i128 = if scaled.is_empty() {
        0
    } else {
        scaled.parse().map_err(|_| format!("out of range for {ty}"))?
    };
    let key = if negative { -magnitude } else { magnitude };
    let sign = if key < 0 { "-" } else { "" };
    let whole = if whole.is_empty() { "0" } else { whole };
    let canonical = if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    };
    Ok(Scalar {
        value: ParamValue::Text(canonical),
        key: Some(Key::Exact(key)),
    })
}

fn parse_uuid(text: &str) -> Result<Scalar, String> {
    let hint = || "not a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".to_owned();
    // The uuid crate also takes the simple, braced and URN forms; only the hyphenated one is
    // 36 characters long.
    if text.len() != 36 {
        return Err(hint());
    }
    let uuid = uuid::Uuid::try_parse(text).map_err(|_| hint())?;
    Ok(unordered(ParamValue::Text(uuid.hyphenated().to_string())))
}

fn parse_ipv4(text: &str) -> Result<Scalar, String> {
    let address: Ipv4Addr = text
        .parse()
        .map_err(|_| "not an IPv4 address (like 192.0.2.1)".to_owned())?;
    Ok(unordered(ParamValue::Text(address.to_string())))
}

/// IPv6, or IPv4 as its IPv4-mapped IPv6 address, as ClickHouse reads it into IPv6.
fn parse_ipv6(text: &str) -> Result<Scalar, String> {
    let address: IpAddr = text
        .parse()
        .map_err(|_| "not an IPv6 address (like 2001:db8::1)".to_owned())?;
    let address = match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Ok(unordered(ParamValue::Text(address.to_string())))
}

// ---------------------------------------------------------------------------------------------
// Dates and times

static DATE: LazyLock<Regex> = LazyLock::new(|| anchored(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"));

static DATETIME: LazyLock<Regex> = LazyLock::new(|| {
    anchored(
        r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?",
    )
});

static UNIX_TIME: LazyLock<Regex> = LazyLock::new(|| anchored(r"(-?)([0-9]+)(?:\.([0-9]+))?"));

/// A constant regex, anchored. ASCII digit classes are spelled out, since `\d` would take
/// every Unicode digit.
fn anchored(source: &str) -> Regex {
    Regex::new(&format!("^(?:{source})$")).expect("constant regex")
}

const DATE_MIN: Date = date!(1970 - 01 - 01);
const DATE_MAX: Date = date!(2149 - 06 - 06);

/// The instants a time type holds, in Unix nanoseconds. ClickHouse clamps values outside them
/// silently instead of refusing them, so they are refused here.
struct TimeRange {
    min: i128,
    max: i128,
    message: &'static str,
}

const DATETIME_RANGE: TimeRange = TimeRange {
    min: datetime!(1970-01-01 0:00 UTC).unix_timestamp_nanos(),
    max: datetime!(2106-02-07 6:28:15 UTC).unix_timestamp_nanos(),
    message: "out of range for DateTime (1970-01-01 00:00:00 to 2106-02-07 06:28:15 UTC)",
};

const DATETIME64_RANGE: TimeRange = TimeRange {
    min: datetime!(1900-01-01 0:00 UTC).unix_timestamp_nanos(),
    max: datetime!(2299-12-31 23:59:59.999_999_999 UTC).unix_timestamp_nanos(),
    message: "out of range for DateTime64 (1900-01-01 00:00:00 to 2299-12-31 23:59:59.999999999 UTC)",
};

const NANOS_PER_SECOND: i128 = 1_000_000_000;

fn time_range(precision: Option<u8>) -> &'static TimeRange {
    match precision {
        None => &DATETIME_RANGE,
        Some(_) => &DATETIME64_RANGE,
    }
}

fn check_range(nanos: i128, precision: Option<u8>) -> Result<(), String> {
    let range = time_range(precision);
    if (range.min..=range.max).contains(&nanos) {
        Ok(())
    } else {
        Err(range.message.to_owned())
    }
}

fn out_of_range(problem: time::error::ComponentRange) -> String {
    format!("{} out of range", problem.name())
}

fn number<T: std::str::FromStr>(digits: &str) -> Result<T, String> {
    digits.parse().map_err(|_| format!("{digits} is too large"))
}

fn parse_date(text: &str) -> Result<Scalar, String> {
    let captures = DATE
        .captures(text)
        .ok_or_else(|| "not a date in the form YYYY-MM-DD".to_owned())?;
    let date = calendar_date(&captures[1], &captures[2], &captures[3])?;
    if !(DATE_MIN..=DATE_MAX).contains(&date) {
        return Err("out of range for Date (1970-01-01 to 2149-06-06)".to_owned());
    }
    Ok(Scalar {
        value: ParamValue::Text(text.to_owned()),
        key: Some(Key::Exact(i128::from(date.to_julian_day()))),
    })
}

fn calendar_date(year: &str, month: &str, day: &str) -> Result<Date, String> {
    let month = Month::try_from(number::<u8>(month)?).map_err(out_of_range)?;
    Date::from_calendar_date(number(year)?, month, number(day)?).map_err(out_of_range)
}

/// `DateTime` (`precision` None) and `DateTime64(precision)`.
///
/// Text without an offset is passed on as `YYYY-MM-DD hh:mm:ss[.f]`, which the server reads in
/// the column type's time zone; its range and min/max are checked as if that zone were UTC.
/// Text with an offset names an instant, which is passed on as Unix seconds: the server reads
/// an all-digits DateTime parameter as a Unix timestamp, whatever the type's time zone.
fn parse_datetime(text: &str, precision: Option<u8>) -> Result<Scalar, String> {
    // Most values are dates; the captures are only worth running on what could be a number.
    let could_be_unix = text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    if let Some(captures) = could_be_unix.then(|| UNIX_TIME.captures(text)).flatten() {
        let negative = !captures[1].is_empty();
        let fraction = captures.get(3).map_or("", |found| found.as_str());
        return unix_time(negative, &captures[2], fraction, precision);
    }
    let Some(captures) = DATETIME.captures(text) else {
        return Err(datetime_form_problem(text, precision));
    };
    let part = |index: usize| captures.get(index).map_or("", |found| found.as_str());
    let (hour, minute, second) = match captures.get(4) {
        Some(_) => (part(4), part(5), part(6)),
        None => ("00", "00", "00"),
    };
    let fraction = part(7);
    let nanos = fraction_nanos(fraction, precision)?;
    let date = calendar_date(part(1), part(2), part(3))?;
    let time = Time::from_hms_nano(number(hour)?, number(minute)?, number(second)?, nanos).map_err(out_of_range)?;
    let local = PrimitiveDateTime::new(date, time);
    if let Some(offset) = captures.get(8) {
        let instant = local.assume_offset(utc_offset(offset.as_str())?).unix_timestamp_nanos();
        check_range(instant, precision)?;
        return Ok(Scalar {
            value: ParamValue::Text(unix_text(instant, fraction.len())?),
            key: Some(Key::Exact(instant)),
        });
    }
    let as_utc = local.assume_utc().unix_timestamp_nanos();
    check_range(as_utc, precision)?;
    let mut canonical = format!("{}-{}-{} {hour}:{minute}:{second}", part(1), part(2), part(3));
    if !fraction.is_empty() {
        canonical = format!("{canonical}.{fraction}");
    }
    Ok(Scalar {
        value: ParamValue::Text(canonical),
        key: Some(Key::Exact(as_utc)),
    })
}

fn datetime_form_problem(text: &str, precision: Option<u8>) -> String {
    let forms = match precision {
        None => "not in the form 'YYYY-MM-DD hh:mm:ss', RFC 3339 or Unix seconds",
        Some(_) => "not in the form 'YYYY-MM-DD hh:mm:ss[.fff]', RFC 3339 or Unix seconds",
    };
    // Query strings decode `+` as a space, which turns `+01:00` into ` 01:00`.
    let lost_plus = text
        .rsplit_once(' ')
        .is_some_and(|(head, offset)| DATETIME.is_match(&format!("{head}+{offset}")));
    if lost_plus {
        format!("{forms} (in a query string, send the '+' of an offset as %2B)")
    } else {
        forms.to_owned()
    }
}

/// Unix seconds, with a fraction for DateTime64 and a sign for instants before 1970.
fn unix_time(negative: bool, seconds: &str, fraction: &str, precision: Option<u8>) -> Result<Scalar, String> {
    let range = time_range(precision);
    let nanos = fraction_nanos(fraction, precision)?;
    let magnitude = seconds
        .parse::<i128>()
        .ok()
        .and_then(|seconds| seconds.checked_mul(NANOS_PER_SECOND))
        .and_then(|whole| whole.checked_add(i128::from(nanos)))
        .ok_or_else(|| range.message.to_owned())?;
    let instant = if negative { -magnitude } else { magnitude };
    check_range(instant, precision)?;
    Ok(Scalar {
        value: ParamValue::Text(unix_text(instant, fraction.len())?),
        key: Some(Key::Exact(instant)),
    })
}

/// The nanoseconds of a fraction of a second, refusing more digits than the type keeps
/// (ClickHouse would drop them silently).
fn fraction_nanos(fraction: &str, precision: Option<u8>) -> Result<u32, String> {
    match precision {
        _ if fraction.is_empty() => return Ok(0),
        None => {
            return Err("DateTime has no fractional seconds (DateTime64 has)".to_owned());
        }
        Some(precision) if fraction.len() > usize::from(precision) => {
            return Err(format!(
                "more than {precision} fractional digits for DateTime64({precision})"
            ));
        }
        Some(_) => {}
    }
    // At most 9 digits (the largest precision), so the scaled value fits a u32.
    let digits: u32 = number(fraction)?;
    let width = u32::try_from(fraction.len()).unwrap_or(9);
    Ok(digits * 10u32.pow(9u32.saturating_sub(width)))
}

fn utc_offset(text: &str) -> Result<UtcOffset, String> {
    let Some((hours, minutes)) = text.get(1..).and_then(|rest| rest.split_once(':')) else {
        // The regex leaves only `Z` or `z` without a colon.
        return Ok(UtcOffset::UTC);
    };
    let (hours, minutes) = (number::<i8>(hours)?, number::<i8>(minutes)?);
    // RFC 3339 offsets stay within a day; the time crate would take up to 25 hours.
    if hours > 23 {
        return Err("offset hours out of range".to_owned());
    }
    if minutes > 59 {
        return Err("offset minutes out of range".to_owned());
    }
    let sign = if text.starts_with('-') { -1 } else { 1 };
    UtcOffset::from_hms(sign * hours, sign * minutes, 0).map_err(|problem| format!("offset {}", out_of_range(problem)))
}

/// An instant as the Unix seconds text ClickHouse reads for DateTime and DateTime64
/// parameters, keeping `digits` fractional digits.
///
/// Seconds are zero-padded to ten digits because ClickHouse does not take an all-digits value
/// of fewer than five digits as a timestamp (`1234` fails to parse, `0000001234` works).
fn unix_text(nanos: i128, digits: usize) -> Result<String, String> {
    let magnitude = nanos.unsigned_abs();
    let seconds = magnitude / NANOS_PER_SECOND.unsigned_abs();
    let sub = magnitude % NANOS_PER_SECOND.unsigned_abs();
    if nanos < 0 && seconds == 0 {
        // ClickHouse drops the sign of `-0.5`, reading it as half a second after 1970.
        return Err("an instant within the second before 1970-01-01 00:00:00 UTC cannot be \
             sent as a Unix time (ClickHouse misreads it); send it without an offset"
            .to_owned());
    }
    let mut text = String::with_capacity(32);
    if nanos < 0 {
        text.push('-');
    }
    let mut buffer = itoa::Buffer::new();
    let whole = buffer.format(seconds);
    text.extend(std::iter::repeat_n('0', 10usize.saturating_sub(whole.len())));
    text.push_str(whole);
    if digits > 0 {
        // The first `digits` of the nanoseconds written with nine digits: leading zeros, then
        // the number's own digits.
        let own = buffer.format(sub);
        let zeros = 9usize.saturating_sub(own.len()).min(digits);
        text.push('.');
        text.extend(std::iter::repeat_n('0', zeros));
        text.push_str(own.get(..digits - zeros).unwrap_or(own));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_text_pads_seconds_and_keeps_the_fraction_digits_sent() {
        let nanos = |seconds: i128, sub: i128| seconds * NANOS_PER_SECOND + sub;
        assert_eq!(unix_text(nanos(1, 50_000_000), 3).as_deref(), Ok("0000000001.050"));
        assert_eq!(
            unix_text(nanos(1_796_256_000, 250_000_000), 3).as_deref(),
            Ok("1796256000.250")
        );
        assert_eq!(unix_text(nanos(7, 1), 9).as_deref(), Ok("0000000007.000000001"));
        assert_eq!(unix_text(nanos(7, 0), 2).as_deref(), Ok("0000000007.00"));
        assert_eq!(unix_text(nanos(12_345_678_901, 0), 0).as_deref(), Ok("12345678901"));
        assert_eq!(
            unix_text(-nanos(86_400, 500_000_000), 1).as_deref(),
            Ok("-0000086400.5")
        );
        assert_eq!(fraction_nanos("05", Some(3)), Ok(50_000_000));
        assert_eq!(fraction_nanos("123456789", Some(9)), Ok(123_456_789));
        assert_eq!(fraction_nanos("", None), Ok(0));
    }

    use serde_json::json;

    use super::*;

    fn table(text: &str) -> ParamToml {
        toml::from_str(text).unwrap_or_else(|e| panic!("{text:?} should deserialize: {e}"))
    }

    fn declare(text: &str) -> ParamSpec {
        ParamSpec::from_toml("p", table(text))
            .unwrap_or_else(|problems| panic!("{text:?} should be accepted: {problems:?}"))
    }

    fn problems(text: &str) -> Vec<String> {
        match ParamSpec::from_toml("p", table(text)) {
            Ok(spec) => panic!("{text:?} should be refused, got {spec:?}"),
            Err(problems) => problems,
        }
    }

    /// The one problem of a refused spec.
    fn problem(text: &str) -> String {
        let mut found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    #[test]
    fn json_schema_carries_the_type_and_the_constraints() {
        let limit = declare("type = \"UInt16\"\ndefault = 10\nmin = 1\nmax = 1000\ndescription = \"How many.\"");
        assert_eq!(
            limit.json_schema(),
            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 10,
                   "description": "How many.", "x-clickhouse-type": "UInt16"})
        );
        let country = declare("type = \"Nullable(String)\"\npattern = \"[A-Z]{2}\"\nmax_len = 2");
        let schema = country.json_schema();
        assert_eq!(schema["type"], json!(["string", "null"]));
        assert_eq!(schema["pattern"], "^(?:[A-Z]{2})$");
        assert_eq!(schema["maxLength"], 2);
        let ids = declare("type = \"Array(UInt8)\"\nrequired = true\nmax_len = 3\nallowed = [1, 2, 3]");
        let schema = ids.json_schema();
        assert_eq!(schema["maxItems"], 3);
        assert_eq!(schema["items"]["type"], "integer");
        assert_eq!(schema["items"]["maximum"], 255);
        assert_eq!(schema["items"]["enum"], json!([1, 2, 3]));
        let day = declare("type = \"Date\"\nrequired = true\nmin = \"2020-01-01\"\ndescription = \"The day\"");
        let schema = day.json_schema();
        assert_eq!(schema["format"], "date");
        assert_eq!(
            schema["description"],
            "The day. Format: Date ('YYYY-MM-DD'). Range: at least 2020-01-01."
        );
        assert!(schema.get("minimum").is_none());
    }

    fn required(ty: &str) -> ParamSpec {
        declare(&format!("type = \"{ty}\"\nrequired = true"))
    }

    fn query(spec: &ParamSpec, values: &[&str]) -> Result<ParamValue, ParamError> {
        let values: Vec<String> = values.iter().map(|value| (*value).to_owned()).collect();
        spec.parse(RawValue::Query(&values))
    }

    fn ok(spec: &ParamSpec, value: &str) -> ParamValue {
        query(spec, &[value]).unwrap_or_else(|e| panic!("{value:?} should parse as {}: {e}", spec.ty()))
    }

    fn refused(spec: &ParamSpec, value: &str) -> ParamError {
        match query(spec, &[value]) {
            Ok(parsed) => panic!("{value:?} should be refused as {}, got {parsed:?}", spec.ty()),
            Err(error) => error,
        }
    }

    fn json_ok(spec: &ParamSpec, value: Json) -> ParamValue {
        spec.parse(RawValue::Json(&value))
            .unwrap_or_else(|e| panic!("{value} should parse as {}: {e}", spec.ty()))
    }

    fn json_refused(spec: &ParamSpec, value: Json) -> ParamError {
        match spec.parse(RawValue::Json(&value)) {
            Ok(parsed) => panic!("{value} should be refused as {}, got {parsed:?}", spec.ty()),
            Err(error) => error,
        }
    }

    fn text(value: &str) -> ParamValue {
        ParamValue::Text(value.to_owned())
    }

    // --- integers

    #[test]
    fn uint8_takes_its_whole_range() {
        let spec = required("UInt8");
        assert_eq!(ok(&spec, "0"), ParamValue::UInt(0));
        assert_eq!(ok(&spec, "255"), ParamValue::UInt(255));
        assert_eq!(ok(&spec, "007"), ParamValue::UInt(7));
        assert_eq!(ok(&spec, "-0"), ParamValue::UInt(0));
    }

    #[test]
    fn uint8_rejects_256_with_the_range_in_the_message() {
        let error = refused(&required("UInt8"), "256");
        assert_eq!(error.problem(), "out of range for UInt8 (0..=255)");
        assert!(refused(&required("UInt8"), "-1").problem().contains("(0..=255)"));
    }

    #[test]
    fn signed_integers_take_their_bounds_and_no_further() {
        let int8 = required("Int8");
        assert_eq!(ok(&int8, "-128"), ParamValue::Int(-128));
        assert_eq!(ok(&int8, "127"), ParamValue::Int(127));
        assert_eq!(refused(&int8, "128").problem(), "out of range for Int8 (-128..=127)");
        assert!(refused(&int8, "-129").problem().contains("out of range"));
        let int64 = required("Int64");
        assert_eq!(ok(&int64, "-9223372036854775808"), ParamValue::Int(i64::MIN));
        assert_eq!(ok(&int64, "9223372036854775807"), ParamValue::Int(i64::MAX));
        assert!(
            refused(&int64, "9223372036854775808")
                .problem()
                .contains("out of range for Int64")
        );
        let int16 = required("Int16");
        assert_eq!(ok(&int16, "-32768"), ParamValue::Int(-32768));
        assert!(refused(&int16, "32768").problem().contains("-32768..=32767"));
        let int32 = required("Int32");
        assert_eq!(ok(&int32, "2147483647"), ParamValue::Int(2147483647));
        assert!(refused(&int32, "2147483648").problem().contains("out of range"));
    }

    #[test]
    fn uint64_takes_its_maximum_and_refuses_more_digits_than_any_integer() {
        let spec = required("UInt64");
        assert_eq!(ok(&spec, "18446744073709551615"), ParamValue::UInt(u64::MAX));
        assert!(
            refused(&spec, "18446744073709551616")
                .problem()
                .contains("out of range")
        );
        let huge = "9".repeat(100);
        assert!(refused(&spec, &huge).problem().contains("out of range for UInt64"));
        assert_eq!(ok(&required("UInt16"), "65535"), ParamValue::UInt(65535));
        assert_eq!(ok(&required("UInt32"), "4294967295"), ParamValue::UInt(4294967295));
    }

    #[test]
    fn integers_are_decimal_digits_only() {
        let spec = required("Int32");
        for bad in ["", "+5", "1.0", " 5", "5 ", "0x10", "1e3", "--1", "-", "٣", "five"] {
            assert!(refused(&spec, bad).problem().starts_with("not an integer"), "{bad:?}");
        }
    }

    #[test]
    fn integers_come_from_json_numbers_and_quoted_numbers() {
        let spec = required("UInt64");
        assert_eq!(json_ok(&spec, json!(42)), ParamValue::UInt(42));
        assert_eq!(
            json_ok(&spec, json!("18446744073709551615")),
            ParamValue::UInt(u64::MAX)
        );
        assert!(json_refused(&spec, json!(1.5)).problem().starts_with("not an integer"));
        assert!(
            json_refused(&spec, json!(true))
                .problem()
                .contains("a JSON boolean is not accepted for UInt64; send a JSON number")
        );
        assert!(json_refused(&spec, json!(-1)).problem().contains("out of range"));
    }

    // --- floats and booleans

    #[test]
    fn floats_parse_finite_numbers() {
        let spec = required("Float64");
        assert_eq!(ok(&spec, "1.5"), ParamValue::Float(1.5));
        assert_eq!(ok(&spec, "-2e3"), ParamValue::Float(-2000.0));
        assert_eq!(ok(&spec, "0"), ParamValue::Float(0.0));
        assert_eq!(json_ok(&spec, json!(0.25)), ParamValue::Float(0.25));
        assert_eq!(json_ok(&spec, json!("0.25")), ParamValue::Float(0.25));
        assert_eq!(refused(&spec, "abc").problem(), "not a number");
    }

    #[test]
    fn floats_refuse_nan_and_infinity() {
        let spec = required("Float64");
        for bad in ["nan", "NaN", "inf", "-inf", "infinity", "-Infinity"] {
            assert_eq!(refused(&spec, bad).problem(), "must be a finite number", "{bad}");
        }
        assert_eq!(refused(&spec, "1e400").problem(), "out of range for Float64");
    }

    #[test]
    fn float32_refuses_values_beyond_its_range() {
        let spec = required("Float32");
        assert_eq!(ok(&spec, "3.4e38"), ParamValue::Float(3.4e38));
        assert_eq!(refused(&spec, "3.5e38").problem(), "out of range for Float32");
        assert_eq!(refused(&spec, "-1e39").problem(), "out of range for Float32");
    }

    #[test]
    fn bool_takes_true_false_one_and_zero_in_any_case() {
        let spec = required("Bool");
        for (input, expected) in [
            ("true", true),
            ("TRUE", true),
            ("True", true),
            ("1", true),
            ("false", false),
            ("FaLsE", false),
            ("0", false),
        ] {
            assert_eq!(ok(&spec, input), ParamValue::Bool(expected), "{input}");
        }
        for bad in ["yes", "no", "t", "", "2", "on"] {
            assert_eq!(refused(&spec, bad).problem(), "not a boolean (true, false, 1 or 0)");
        }
        assert_eq!(json_ok(&spec, json!(false)), ParamValue::Bool(false));
        assert_eq!(json_ok(&spec, json!("true")), ParamValue::Bool(true));
        assert!(json_refused(&spec, json!(1)).problem().contains("send true or false"));
        assert!(spec.ty() == &ParamType::Bool);
        assert!(refused(&spec, "x").expected().contains("true, false, 1 or 0"));
    }

    // --- decimals

    #[test]
    fn decimal_takes_digits_within_precision_and_scale() {
        let spec = required("Decimal(5, 2)");
        assert_eq!(ok(&spec, "123.45"), text("123.45"));
        assert_eq!(ok(&spec, "-999.99"), text("-999.99"));
        assert_eq!(ok(&spec, "0"), text("0"));
        assert_eq!(ok(&spec, "007.50"), text("7.5"));
        assert_eq!(ok(&spec, "1.230"), text("1.23"));
        assert_eq!(ok(&spec, "-0.00"), text("0"));
        assert_eq!(ok(&spec, "12"), text("12"));
    }

    #[test]
    fn decimal_refuses_rather_than_rounds() {
        let spec = required("Decimal(5, 2)");
        assert_eq!(
            refused(&spec, "1.234").problem(),
            "more than 2 digits after the point for Decimal(5, 2) (it is not rounded)"
        );
        assert_eq!(
            refused(&spec, "1234.5").problem(),
            "out of range for Decimal(5, 2) (at most 3 digits before the point)"
        );
    }

    #[test]
    fn decimal_refuses_other_spellings() {
        let spec = required("Decimal(9, 2)");
        for bad in [".5", "1.", "+1", "1e2", "1,5", "", "-", "1.2.3", " 1"] {
            assert!(
                refused(&spec, bad).problem().starts_with("not a decimal number"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decimal_of_38_digits_keeps_every_digit() {
        let whole = "9".repeat(38);
        assert_eq!(ok(&required("Decimal(38, 0)"), &whole), text(&whole));
        let fraction = format!("-0.{}", "1".repeat(38));
        assert_eq!(ok(&required("Decimal(38, 38)"), &fraction), text(&fraction));
        assert!(
            refused(&required("Decimal(38, 0)"), &"9".repeat(39))
                .problem()
                .contains("out of range")
        );
    }

    #[test]
    fn decimal_comes_from_json_numbers_through_their_text() {
        let spec = required("Decimal(9, 2)");
        assert_eq!(json_ok(&spec, json!(12.5)), text("12.5"));
        assert_eq!(json_ok(&spec, json!(-3)), text("-3"));
        assert_eq!(json_ok(&spec, json!("0.10")), text("0.1"));
    }

    // --- dates and times

    #[test]
    fn date_takes_its_range_and_keeps_the_text() {
        let spec = required("Date");
        assert_eq!(ok(&spec, "2026-12-04"), text("2026-12-04"));
        assert_eq!(ok(&spec, "1970-01-01"), text("1970-01-01"));
        assert_eq!(ok(&spec, "2149-06-06"), text("2149-06-06"));
        assert_eq!(ok(&spec, "2024-02-29"), text("2024-02-29"));
        for outside in ["1969-12-31", "2149-06-07", "0001-01-01", "9999-12-31"] {
            assert_eq!(
                refused(&spec, outside).problem(),
                "out of range for Date (1970-01-01 to 2149-06-06)"
            );
        }
    }

    #[test]
    fn date_names_the_component_out_of_range() {
        let spec = required("Date");
        assert_eq!(refused(&spec, "2026-13-01").problem(), "month out of range");
        assert_eq!(refused(&spec, "2026-00-01").problem(), "month out of range");
        assert_eq!(refused(&spec, "2026-02-29").problem(), "day out of range");
        assert_eq!(refused(&spec, "2026-04-31").problem(), "day out of range");
    }

    #[test]
    fn date_takes_only_the_iso_form_in_ascii_digits() {
        let spec = required("Date");
        for bad in [
            "2026-1-01",
            "26-01-01",
            "2026/01/01",
            "2026-01-01 00:00:00",
            "20260101",
            "٢٠٢٦-٠١-٠١",
            "",
        ] {
            assert_eq!(
                refused(&spec, bad).problem(),
                "not a date in the form YYYY-MM-DD",
                "{bad:?}"
            );
        }
        assert!(refused(&spec, "x").expected().contains("'YYYY-MM-DD'"));
    }

    #[test]
    fn datetime_without_an_offset_is_kept_as_local_text() {
        let spec = required("DateTime('UTC')");
        assert_eq!(ok(&spec, "2026-12-04 10:11:12"), text("2026-12-04 10:11:12"));
        assert_eq!(ok(&spec, "2026-12-04T10:11:12"), text("2026-12-04 10:11:12"));
        assert_eq!(ok(&spec, "2026-12-04t10:11:12"), text("2026-12-04 10:11:12"));
        assert_eq!(ok(&spec, "2026-12-04"), text("2026-12-04 00:00:00"));
        assert_eq!(
            json_ok(&spec, json!("2026-12-04 10:11:12")),
            text("2026-12-04 10:11:12")
        );
    }

    #[test]
    fn datetime_with_an_offset_becomes_unix_seconds() {
        let spec = required("DateTime");
        assert_eq!(ok(&spec, "2024-12-04T08:13:20Z"), text("1733300000"));
        assert_eq!(ok(&spec, "2024-12-04T08:13:20z"), text("1733300000"));
        assert_eq!(ok(&spec, "2024-12-04T09:13:20+01:00"), text("1733300000"));
        assert_eq!(ok(&spec, "2024-12-04 03:13:20-05:00"), text("1733300000"));
        assert_eq!(ok(&spec, "2024-12-04T13:43:20+05:30"), text("1733300000"));
    }

    #[test]
    fn datetime_unix_seconds_are_zero_padded_because_clickhouse_refuses_short_ones() {
        let spec = required("DateTime");
        assert_eq!(ok(&spec, "1733300000"), text("1733300000"));
        assert_eq!(ok(&spec, "12"), text("0000000012"));
        assert_eq!(ok(&spec, "1970-01-01T00:00:00Z"), text("0000000000"));
        assert_eq!(json_ok(&spec, json!(1733300000)), text("1733300000"));
    }

    #[test]
    fn datetime_takes_its_range_and_no_further() {
        let spec = required("DateTime");
        let range = "out of range for DateTime (1970-01-01 00:00:00 to 2106-02-07 06:28:15 UTC)";
        assert_eq!(ok(&spec, "2106-02-07 06:28:15"), text("2106-02-07 06:28:15"));
        assert_eq!(ok(&spec, "1970-01-01 00:00:00"), text("1970-01-01 00:00:00"));
        assert_eq!(ok(&spec, "4294967295"), text("4294967295"));
        assert_eq!(refused(&spec, "2106-02-07 06:28:16").problem(), range);
        assert_eq!(refused(&spec, "1969-12-31 23:59:59").problem(), range);
        assert_eq!(refused(&spec, "4294967296").problem(), range);
        assert_eq!(refused(&spec, "-1").problem(), range);
        assert_eq!(refused(&spec, &"9".repeat(60)).problem(), range);
        assert_eq!(refused(&spec, "1970-01-01T00:59:59+01:00").problem(), range);
    }

    #[test]
    fn datetime_refuses_fractions_and_bad_components() {
        let spec = required("DateTime");
        assert_eq!(
            refused(&spec, "2026-12-04 10:11:12.5").problem(),
            "DateTime has no fractional seconds (DateTime64 has)"
        );
        assert_eq!(
            refused(&spec, "1733300000.5").problem(),
            "DateTime has no fractional seconds (DateTime64 has)"
        );
        assert_eq!(refused(&spec, "2026-12-04 24:00:00").problem(), "hour out of range");
        assert_eq!(refused(&spec, "2026-12-04 10:60:00").problem(), "minute out of range");
        assert_eq!(refused(&spec, "2026-12-31 23:59:60").problem(), "second out of range");
        assert_eq!(
            refused(&spec, "2026-12-04T10:00:00+24:00").problem(),
            "offset hours out of range"
        );
        assert_eq!(
            refused(&spec, "2026-12-04T10:00:00+01:60").problem(),
            "offset minutes out of range"
        );
        for bad in [
            "2026-12-04 10:11",
            "2026-12-04 1:02:03",
            "yesterday",
            "2026-12-04T10:11:12 Z",
            "",
        ] {
            assert!(refused(&spec, bad).problem().starts_with("not in the form"), "{bad:?}");
        }
    }

    #[test]
    fn datetime_with_a_plus_lost_to_query_decoding_gets_a_hint() {
        let spec = required("DateTime64(3)");
        for mangled in ["2024-12-04T09:13:20 01:00", "2024-12-04 09:13:20.5 01:00"] {
            assert!(
                refused(&spec, mangled)
                    .problem()
                    .ends_with("send the '+' of an offset as %2B)"),
                "{mangled}"
            );
        }
        assert!(!refused(&spec, "2024-12-04 09").problem().contains("%2B"));
    }

    #[test]
    fn datetime_error_reads_as_documented() {
        let spec = ParamSpec::from_toml("from", table("type = 'DateTime'\nrequired = true")).expect("valid spec");
        let error = refused(&spec, "2026-13-01");
        assert_eq!(
            error.to_string(),
            "parameter `from`: expected DateTime ('YYYY-MM-DD hh:mm:ss' or RFC 3339), \
             got \"2026-13-01\": month out of range"
        );
        assert_eq!(error.param(), "from");
        assert_eq!(error.expected(), "DateTime ('YYYY-MM-DD hh:mm:ss' or RFC 3339)");
        assert_eq!(error.problem(), "month out of range");
    }

    #[test]
    fn datetime64_keeps_up_to_its_precision_of_fraction() {
        let spec = required("DateTime64(3, 'UTC')");
        assert_eq!(ok(&spec, "2026-12-04 10:11:12"), text("2026-12-04 10:11:12"));
        assert_eq!(ok(&spec, "2026-12-04 10:11:12.5"), text("2026-12-04 10:11:12.5"));
        assert_eq!(ok(&spec, "2026-12-04T10:11:12.123"), text("2026-12-04 10:11:12.123"));
        assert_eq!(
            refused(&spec, "2026-12-04 10:11:12.1234").problem(),
            "more than 3 fractional digits for DateTime64(3)"
        );
        assert_eq!(
            refused(&required("DateTime64(0)"), "2026-12-04 10:11:12.1").problem(),
            "more than 0 fractional digits for DateTime64(0)"
        );
        let nanos = required("DateTime64(9)");
        assert_eq!(
            ok(&nanos, "2026-12-04 10:11:12.123456789"),
            text("2026-12-04 10:11:12.123456789")
        );
    }

    #[test]
    fn datetime64_with_an_offset_becomes_unix_seconds_with_the_fraction() {
        let spec = required("DateTime64(3, 'UTC')");
        assert_eq!(ok(&spec, "2024-12-04T08:13:20.5Z"), text("1733300000.5"));
        assert_eq!(ok(&spec, "2024-12-04T09:13:20.123+01:00"), text("1733300000.123"));
        assert_eq!(ok(&spec, "2024-12-04T08:13:20Z"), text("1733300000"));
        assert_eq!(ok(&spec, "1969-12-31T23:59:58.5Z"), text("-0000000001.5"));
        assert_eq!(ok(&spec, "1900-01-01T00:00:00Z"), text("-2208988800"));
        assert_eq!(ok(&spec, "1970-01-01T00:00:00.250Z"), text("0000000000.250"));
    }

    #[test]
    fn datetime64_takes_signed_unix_seconds_with_a_fraction() {
        let spec = required("DateTime64(3)");
        assert_eq!(ok(&spec, "1733300000.123"), text("1733300000.123"));
        assert_eq!(ok(&spec, "-1.25"), text("-0000000001.25"));
        assert_eq!(ok(&spec, "0"), text("0000000000"));
        assert_eq!(json_ok(&spec, json!(1733300000.5)), text("1733300000.5"));
        assert_eq!(
            refused(&spec, "1.1234").problem(),
            "more than 3 fractional digits for DateTime64(3)"
        );
    }

    #[test]
    fn datetime64_refuses_the_second_before_1970_as_unix_time_since_clickhouse_loses_its_sign() {
        let spec = required("DateTime64(3, 'UTC')");
        for instant in ["1969-12-31T23:59:59.5Z", "-0.5", "-0.001"] {
            assert!(
                refused(&spec, instant).problem().contains("ClickHouse misreads it"),
                "{instant}"
            );
        }
        // Without an offset the text goes as it is, which ClickHouse reads correctly.
        assert_eq!(ok(&spec, "1969-12-31 23:59:59.5"), text("1969-12-31 23:59:59.5"));
    }

    #[test]
    fn datetime64_takes_its_range_and_no_further() {
        let spec = required("DateTime64(9)");
        let range = "out of range for DateTime64 (1900-01-01 00:00:00 to 2299-12-31 23:59:59.999999999 UTC)";
        assert_eq!(ok(&spec, "1900-01-01 00:00:00"), text("1900-01-01 00:00:00"));
        assert_eq!(
            ok(&spec, "2299-12-31 23:59:59.999999999"),
            text("2299-12-31 23:59:59.999999999")
        );
        assert_eq!(refused(&spec, "1899-12-31 23:59:59.999999999").problem(), range);
        assert_eq!(refused(&spec, "2300-01-01 00:00:00").problem(), range);
        assert_eq!(refused(&spec, "10413792000").problem(), range);
        assert_eq!(refused(&spec, "-2208988800.000000001").problem(), range);
        assert!(refused(&spec, "x").expected().contains("[.fff]"));
    }

    // --- UUID and IP addresses

    #[test]
    fn uuid_is_lowercased_and_must_be_hyphenated() {
        let spec = required("UUID");
        assert_eq!(
            ok(&spec, "7C9E6679-7425-40DE-944B-E07FC1F90AE7"),
            text("7c9e6679-7425-40de-944b-e07fc1f90ae7")
        );
        for bad in [
            "7c9e6679742540de944be07fc1f90ae7",
            "{7c9e6679-7425-40de-944b-e07fc1f90ae7}",
            "urn:uuid:7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "7c9e6679-7425-40de-944b-e07fc1f90aeg",
            "7c9e6679-7425-40de-944be-07fc1f90ae7",
            "",
        ] {
            assert!(refused(&spec, bad).problem().starts_with("not a UUID"), "{bad:?}");
        }
    }

    #[test]
    fn ip_addresses_are_canonicalised_by_std() {
        let v4 = required("IPv4");
        assert_eq!(ok(&v4, "192.0.2.1"), text("192.0.2.1"));
        for bad in ["256.0.0.1", "192.0.2", "::1", "1.2.3.4 "] {
            assert!(refused(&v4, bad).problem().starts_with("not an IPv4"), "{bad:?}");
        }
        let v6 = required("IPv6");
        assert_eq!(ok(&v6, "2001:DB8:0:0:0:0:0:1"), text("2001:db8::1"));
        assert_eq!(ok(&v6, "::1"), text("::1"));
        assert_eq!(ok(&v6, "192.0.2.1"), text("::ffff:192.0.2.1"));
        for bad in ["fe80::1%eth0", "2001:db8::g", ""] {
            assert!(refused(&v6, bad).problem().starts_with("not an IPv6"), "{bad:?}");
        }
    }

    // --- strings

    #[test]
    fn strings_that_look_like_sql_are_plain_data() {
        let spec = required("String");
        for value in [
            "' OR 1=1 --",
            "'; DROP TABLE events; --",
            "\\'; SELECT 1; --",
            "back\\slash \\N \\0",
            "{p:String}",
            "`tick` \"quote\"",
            "ünïcödé 🚀 €",
            "nul\0byte\ttab\nnewline",
            "",
        ] {
            assert_eq!(ok(&spec, value), text(value));
            assert_eq!(json_ok(&spec, json!(value)), text(value));
        }
    }

    #[test]
    fn strings_refuse_json_numbers() {
        let spec = required("String");
        assert_eq!(
            json_refused(&spec, json!(5)).problem(),
            "a JSON number is not accepted for String; send a JSON string"
        );
        assert!(
            json_refused(&spec, json!({"a": 1}))
                .to_string()
                .contains("got an object")
        );
    }

    #[test]
    fn max_len_counts_characters_not_bytes() {
        let spec = declare("type = 'String'\nrequired = true\nmax_len = 3");
        assert_eq!(ok(&spec, "ééé"), text("ééé"));
        assert_eq!(ok(&spec, "🚀🚀🚀"), text("🚀🚀🚀"));
        assert_eq!(refused(&spec, "abcd").problem(), "longer than 3 characters");
        assert_eq!(refused(&spec, "éééé").problem(), "longer than 3 characters");
    }

    #[test]
    fn pattern_must_match_the_whole_value() {
        let spec = declare("type = 'String'\nrequired = true\npattern = '[a-z]+'");
        assert_eq!(ok(&spec, "abc"), text("abc"));
        for bad in ["abc1", "1abc", "", "abc\n", "ab c"] {
            assert_eq!(refused(&spec, bad).problem(), "must match pattern [a-z]+", "{bad:?}");
        }
        let alternation = spec_with_pattern("a|b");
        assert_eq!(ok(&alternation, "a"), text("a"));
        assert!(
            query(&alternation, &["ab"]).is_err(),
            "alternation is anchored as a whole"
        );
    }

    fn spec_with_pattern(pattern: &str) -> ParamSpec {
        declare(&format!("type = 'String'\nrequired = true\npattern = '{pattern}'"))
    }

    #[test]
    fn pattern_message_shows_the_pattern_as_written() {
        let spec = spec_with_pattern("^[a-z]+$");
        assert_eq!(refused(&spec, "A").problem(), "must match pattern ^[a-z]+$");
    }

    #[test]
    fn allowed_values_form_an_enum() {
        let spec = declare("type = 'String'\ndefault = 'day'\nallowed = ['hour', 'day', 'week']");
        assert_eq!(ok(&spec, "week"), text("week"));
        assert_eq!(refused(&spec, "month").problem(), "must be one of: hour, day, week");
        assert!(query(&spec, &["Day"]).is_err(), "membership is exact");
    }

    #[test]
    fn allowed_compares_parsed_values() {
        let spec = declare("type = 'UInt8'\nrequired = true\nallowed = [1, 5, '10']");
        assert_eq!(ok(&spec, "05"), ParamValue::UInt(5));
        assert_eq!(ok(&spec, "10"), ParamValue::UInt(10));
        assert_eq!(refused(&spec, "2").problem(), "must be one of: 1, 5, 10");
        let uuid = declare("type = 'UUID'\nrequired = true\nallowed = ['7C9E6679-7425-40DE-944B-E07FC1F90AE7']");
        assert_eq!(
            ok(&uuid, "7c9e6679-7425-40de-944b-e07fc1f90ae7"),
            text("7c9e6679-7425-40de-944b-e07fc1f90ae7")
        );
    }

    // --- min and max

    #[test]
    fn min_and_max_bound_integers() {
        let spec = declare("type = 'UInt32'\ndefault = 100\nmin = 1\nmax = 1000");
        assert_eq!(ok(&spec, "1"), ParamValue::UInt(1));
        assert_eq!(ok(&spec, "1000"), ParamValue::UInt(1000));
        assert_eq!(refused(&spec, "0").problem(), "must be at least 1");
        assert_eq!(refused(&spec, "1001").problem(), "must be at most 1000");
        let error = json_refused(&spec, json!(5000));
        assert_eq!(
            error.to_string(),
            "parameter `p`: expected UInt32, got 5000: must be at most 1000"
        );
    }

    #[test]
    fn min_and_max_bound_floats_and_decimals() {
        let float = declare("type = 'Float64'\nrequired = true\nmin = 0\nmax = 1.5");
        assert_eq!(ok(&float, "1.5"), ParamValue::Float(1.5));
        assert_eq!(refused(&float, "-0.1").problem(), "must be at least 0");
        assert_eq!(refused(&float, "1.51").problem(), "must be at most 1.5");
        let decimal = declare("type = 'Decimal(9, 2)'\nrequired = true\nmin = '-1.5'\nmax = 100");
        assert_eq!(ok(&decimal, "-1.50"), text("-1.5"));
        assert_eq!(ok(&decimal, "100.00"), text("100"));
        assert_eq!(refused(&decimal, "-1.51").problem(), "must be at least -1.5");
        assert_eq!(refused(&decimal, "100.01").problem(), "must be at most 100");
    }

    #[test]
    fn min_and_max_bound_dates_given_as_toml_dates_or_strings() {
        let spec = declare("type = 'Date'\nrequired = true\nmin = 2020-01-01\nmax = '2020-12-31'");
        assert_eq!(ok(&spec, "2020-01-01"), text("2020-01-01"));
        assert_eq!(refused(&spec, "2019-12-31").problem(), "must be at least 2020-01-01");
        assert_eq!(refused(&spec, "2021-01-01").problem(), "must be at most 2020-12-31");
    }

    #[test]
    fn min_and_max_bound_datetimes_as_instants_for_offsets() {
        let spec = declare(
            "type = \"DateTime('UTC')\"\nrequired = true\nmin = '2020-01-01 00:00:00'\n\
             max = 2020-12-31T00:00:00Z",
        );
        assert_eq!(ok(&spec, "2020-01-01 00:00:00"), text("2020-01-01 00:00:00"));
        // 23:00 the day before at -05:00 is 04:00 UTC on the first: inside.
        assert_eq!(ok(&spec, "2019-12-31T23:00:00-05:00"), text("1577851200"));
        assert_eq!(
            refused(&spec, "2020-01-01T00:30:00+01:00").problem(),
            "must be at least 2020-01-01 00:00:00"
        );
        assert_eq!(
            refused(&spec, "1609372801").problem(),
            "must be at most 2020-12-31T00:00:00Z"
        );
        let precise = declare("type = 'DateTime64(3)'\nrequired = true\nmax = '2020-01-01 00:00:00.5'");
        assert_eq!(ok(&precise, "2020-01-01 00:00:00.5"), text("2020-01-01 00:00:00.5"));
        assert!(query(&precise, &["2020-01-01 00:00:00.501"]).is_err());
    }

    // --- Nullable

    #[test]
    fn empty_query_value_is_null_for_nullable_types() {
        let spec = declare("type = 'Nullable(Int32)'\nmax = 10");
        assert_eq!(ok(&spec, ""), ParamValue::Null);
        assert_eq!(ok(&spec, "5"), ParamValue::Int(5));
        assert_eq!(refused(&spec, "11").problem(), "must be at most 10");
        let strings = declare("type = 'Nullable(String)'\npattern = '[a-z]+'");
        assert_eq!(ok(&strings, ""), ParamValue::Null);
        assert_eq!(ok(&strings, "x"), text("x"));
    }

    #[test]
    fn json_null_is_null_only_for_nullable_types() {
        let nullable = declare("type = 'Nullable(Date)'");
        assert_eq!(json_ok(&nullable, Json::Null), ParamValue::Null);
        assert_eq!(json_ok(&nullable, json!("2026-01-01")), text("2026-01-01"));
        // In JSON an empty string is a string, not NULL.
        assert!(nullable.parse(RawValue::Json(&json!(""))).is_err());
        let error = json_refused(&required("Date"), Json::Null);
        assert_eq!(error.problem(), "null is not accepted, because Date is not Nullable");
        assert!(error.to_string().contains("got null"));
    }

    // --- arrays

    #[test]
    fn array_items_come_from_repeated_keys_and_commas() {
        let spec = declare("type = 'Array(UInt8)'\ndefault = []");
        let items = |values: &[u64]| ParamValue::Array(values.iter().map(|v| ParamValue::UInt(*v)).collect());
        assert_eq!(query(&spec, &["1", "2", "3"]).expect("repeated"), items(&[1, 2, 3]));
        assert_eq!(query(&spec, &["1,2,3"]).expect("joined"), items(&[1, 2, 3]));
        assert_eq!(query(&spec, &["1,2", "3"]).expect("both"), items(&[1, 2, 3]));
        assert_eq!(query(&spec, &["7"]).expect("single"), items(&[7]));
        assert_eq!(query(&spec, &[""]).expect("empty"), items(&[]));
    }

    #[test]
    fn array_of_strings_splits_on_commas_so_commas_need_json() {
        let spec = declare("type = 'Array(String)'\ndefault = []");
        assert_eq!(
            query(&spec, &["a,b"]).expect("split"),
            ParamValue::Array(vec![text("a"), text("b")])
        );
        assert_eq!(
            json_ok(&spec, json!(["a,b", "' OR 1=1 --"])),
            ParamValue::Array(vec![text("a,b"), text("' OR 1=1 --")])
        );
        assert_eq!(
            query(&spec, &["a,", "b"]).expect("empty item"),
            ParamValue::Array(vec![text("a"), text(""), text("b")])
        );
    }

    #[test]
    fn array_item_errors_name_the_index_and_show_the_item() {
        let spec = declare("type = 'Array(Date)'\ndefault = []");
        let error = query(&spec, &["2026-01-01,2026-13-01"]).expect_err("bad item");
        assert_eq!(error.problem(), "at index 1: month out of range");
        assert_eq!(
            error.to_string(),
            "parameter `p`: expected Array(Date) ('YYYY-MM-DD'), got \"2026-13-01\": \
             at index 1: month out of range"
        );
        let error = json_refused(&spec, json!(["2026-01-01", 5]));
        assert!(error.problem().starts_with("at index 1: a JSON number is not accepted"));
    }

    #[test]
    fn array_constraints_apply_to_each_item_and_max_len_to_the_count() {
        let spec = declare(
            "type = 'Array(String)'\ndefault = []\nmax_len = 2\npattern = '[A-Z]{2}'\n\
             allowed = ['US', 'DE', 'FR']",
        );
        assert_eq!(
            query(&spec, &["US", "DE"]).expect("fine"),
            ParamValue::Array(vec![text("US"), text("DE")])
        );
        let error = query(&spec, &["US,DE,FR"]).expect_err("too many");
        assert_eq!(error.problem(), "more than 2 items");
        assert!(error.to_string().contains("got 3 items"));
        assert_eq!(
            query(&spec, &["US,de"]).expect_err("pattern").problem(),
            "at index 1: must match pattern [A-Z]{2}"
        );
        assert_eq!(
            query(&spec, &["GB"]).expect_err("allowed").problem(),
            "at index 0: must be one of: US, DE, FR"
        );
        let error = json_refused(&spec, json!(["US", "DE", "FR"]));
        assert!(error.to_string().contains("got 3 items: more than 2 items"));
        let numbers = declare("type = 'Array(Int32)'\ndefault = []\nmin = -1\nmax = 1");
        assert_eq!(
            query(&numbers, &["0", "2"]).expect_err("max").problem(),
            "at index 1: must be at most 1"
        );
    }

    #[test]
    fn array_of_nullable_takes_nulls_from_empty_items_and_json_null() {
        let spec = declare("type = 'Array(Nullable(Int32))'\ndefault = []");
        assert_eq!(
            query(&spec, &["1,,-3"]).expect("query"),
            ParamValue::Array(vec![ParamValue::Int(1), ParamValue::Null, ParamValue::Int(-3)])
        );
        assert_eq!(
            json_ok(&spec, json!([null, 2])),
            ParamValue::Array(vec![ParamValue::Null, ParamValue::Int(2)])
        );
        let plain = declare("type = 'Array(Int32)'\ndefault = []");
        assert_eq!(
            json_refused(&plain, json!([1, null])).problem(),
            "at index 1: null is not accepted, because Int32 is not Nullable"
        );
        assert!(query(&plain, &["1,,3"]).is_err());
    }

    #[test]
    fn array_refuses_json_scalars_and_nested_arrays() {
        let spec = declare("type = 'Array(String)'\ndefault = []");
        assert_eq!(
            json_refused(&spec, json!("a,b")).problem(),
            "a JSON string is not accepted for Array(String); send a JSON array"
        );
        assert_eq!(
            json_refused(&spec, json!([["a"]])).problem(),
            "at index 0: a JSON array is not accepted for String; send a JSON string"
        );
    }

    // --- repeated keys, missing values

    #[test]
    fn scalar_given_more_than_once_is_refused() {
        let spec = required("UInt8");
        let error = query(&spec, &["1", "2"]).expect_err("twice");
        assert_eq!(error.problem(), "given more than once; send it once");
        assert!(error.to_string().contains("got 2 values"));
    }

    #[test]
    fn missing_gives_the_default_null_or_an_error() {
        let with_default = declare("type = 'UInt32'\ndefault = 10");
        assert_eq!(with_default.missing().expect("default"), ParamValue::UInt(10));
        assert_eq!(query(&with_default, &[]).expect("empty list"), ParamValue::UInt(10));
        let nullable = declare("type = 'Nullable(UInt32)'");
        assert_eq!(nullable.missing().expect("null"), ParamValue::Null);
        let nullable_default = declare("type = 'Nullable(UInt32)'\ndefault = 3");
        assert_eq!(nullable_default.missing().expect("default"), ParamValue::UInt(3));
        let error = required("UInt32").missing().expect_err("required");
        assert_eq!(
            error.to_string(),
            "parameter `p`: expected UInt32, got nothing: the parameter is required"
        );
        let required_nullable = required("Nullable(UInt32)");
        assert!(required_nullable.missing().is_err());
        assert_eq!(ok(&required_nullable, ""), ParamValue::Null);
    }

    // --- what errors show

    #[test]
    fn a_huge_value_never_appears_whole_in_an_error() {
        let spec = declare("type = 'String'\nrequired = true\nmax_len = 64");
        let huge = "x".repeat(1 << 20);
        let error = refused(&spec, &huge);
        let message = error.to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains(&format!("\"{}\"…", "x".repeat(40))), "{message}");
        assert_eq!(error.problem(), "longer than 64 characters");
        let error = json_refused(&required("UInt8"), json!(huge));
        assert!(error.to_string().len() < 300);
        let items = vec![json!(1); 100_000];
        let error = json_refused(&required("UInt8"), Json::Array(items));
        assert!(error.to_string().contains("got an array of 100000 items"));
    }

    #[test]
    fn shortening_counts_characters_and_escapes_control_characters() {
        let long = "é".repeat(50);
        let error = refused(&required("Int8"), &long);
        assert!(error.to_string().contains(&format!("\"{}\"…", "é".repeat(40))));
        let error = refused(&required("Int8"), "a\nb\u{1b}[31m");
        assert!(error.to_string().contains(r#"got "a\nb\u{1b}[31m""#), "{error}");
        assert!(!error.to_string().contains('\n'));
    }

    // --- serialisation for .param()

    #[test]
    fn param_values_serialize_to_their_plain_form() {
        let cases = [
            (ParamValue::Null, json!(null)),
            (ParamValue::Bool(true), json!(true)),
            (ParamValue::Int(-5), json!(-5)),
            (ParamValue::UInt(u64::MAX), json!(u64::MAX)),
            (ParamValue::Float(1.5), json!(1.5)),
            (text("' OR 1=1 --"), json!("' OR 1=1 --")),
            (
                ParamValue::Array(vec![text("a"), ParamValue::Null, ParamValue::Int(1)]),
                json!(["a", null, 1]),
            ),
            (ParamValue::Array(vec![]), json!([])),
        ];
        for (value, expected) in cases {
            assert_eq!(serde_json::to_value(&value).expect("serialize"), expected);
        }
    }

    // --- building specs

    #[test]
    fn a_full_spec_keeps_its_documentation() {
        let spec = declare(
            "type = 'UInt32'\ndefault = 10000\nmin = 1\nmax = 100000\n\
             description = 'At most this many events.'\nexample = 1000",
        );
        assert_eq!(spec.name(), "p");
        assert_eq!(
            spec.ty(),
            &ParamType::Int {
                bits: 32,
                signed: false
            }
        );
        assert!(!spec.is_required());
        assert_eq!(spec.default(), Some(&ParamValue::UInt(10000)));
        assert_eq!(spec.description(), "At most this many events.");
        assert_eq!(spec.example(), Some("1000"));
    }

    #[test]
    fn examples_are_kept_as_request_text() {
        let list = declare("type = 'Array(String)'\ndefault = []\nexample = ['US', 'DE']");
        assert_eq!(list.example(), Some("US,DE"));
        let flag = declare("type = 'Bool'\ndefault = false\nexample = true");
        assert_eq!(flag.example(), Some("true"));
        let float = declare("type = 'Float64'\ndefault = 0\nexample = 2.5");
        assert_eq!(float.example(), Some("2.5"));
        let when = declare("type = 'DateTime'\nrequired = true\nexample = 2026-11-01T00:00:00Z");
        assert_eq!(when.example(), Some("2026-11-01T00:00:00Z"));
        let text = declare("type = 'String'\nrequired = true\nexample = 'acme'");
        assert_eq!(text.example(), Some("acme"));
        assert_eq!(required("String").example(), None);
    }

    #[test]
    fn defaults_parse_like_json_values() {
        let date = declare("type = 'Date'\ndefault = 2026-01-01");
        assert_eq!(date.default(), Some(&text("2026-01-01")));
        let when = declare("type = \"DateTime('UTC')\"\ndefault = '2026-01-01 00:00:00'");
        assert_eq!(when.default(), Some(&text("2026-01-01 00:00:00")));
        let list = declare("type = 'Array(String)'\ndefault = ['a,b', 'c']");
        assert_eq!(list.default(), Some(&ParamValue::Array(vec![text("a,b"), text("c")])));
        let big = declare("type = 'UInt64'\ndefault = '18446744073709551615'");
        assert_eq!(big.default(), Some(&ParamValue::UInt(u64::MAX)));
    }

    #[test]
    fn unknown_keys_in_the_toml_table_are_refused() {
        let result: Result<ParamToml, _> = toml::from_str("type = 'String'\nrequird = true");
        let error = result.expect_err("unknown key");
        assert!(error.to_string().contains("requird"), "{error}");
    }

    #[test]
    fn from_toml_refuses_an_unknown_type_with_the_supported_list() {
        let message = problem("type = 'Int128'\nrequired = true");
        assert!(message.starts_with("`type`: invalid type `Int128`"), "{message}");
        assert!(message.contains("supported types are String"), "{message}");
    }

    #[test]
    fn from_toml_refuses_arrays_of_arrays_and_of_decimals() {
        let message = problem("type = 'Array(Array(Int8))'\nrequired = true");
        assert!(message.contains("arrays of arrays are not supported"), "{message}");
        let message = problem("type = 'Array(Nullable(Decimal(9, 2)))'\nrequired = true");
        assert!(
            message.starts_with("`type` = \"Array(Nullable(Decimal(9, 2)))\": arrays of Decimal cannot be bound"),
            "{message}"
        );
        assert!(message.contains("Array(String)"), "{message}");
    }

    #[test]
    fn from_toml_refuses_pattern_on_non_strings() {
        let message = problem("type = 'UInt8'\nrequired = true\npattern = '[0-9]+'");
        assert_eq!(
            message,
            "`pattern` applies only to String values, and the type is UInt8; remove it"
        );
        declare("type = 'Array(Nullable(String))'\ndefault = []\npattern = '[a-z]+'");
    }

    #[test]
    fn from_toml_refuses_an_invalid_regex_in_one_line() {
        let message = problem("type = 'String'\nrequired = true\npattern = '[a-z'");
        assert_eq!(
            message,
            "`pattern` \"[a-z\" is not a valid regular expression: unclosed character class; fix it"
        );
        let message = problem("type = 'String'\nrequired = true\npattern = '(a'");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn from_toml_refuses_max_len_on_other_types_and_zero() {
        assert_eq!(
            problem("type = 'Int32'\nrequired = true\nmax_len = 5"),
            "`max_len` applies only to String (characters) and Array (items) parameters, \
             and the type is Int32; remove it"
        );
        assert!(problem("type = 'String'\nrequired = true\nmax_len = 0").contains("at least 1"));
        declare("type = 'Nullable(String)'\nmax_len = 5");
        declare("type = 'Array(UInt8)'\ndefault = []\nmax_len = 5");
    }

    #[test]
    fn from_toml_refuses_min_and_max_on_types_without_an_order() {
        for ty in ["String", "Bool", "UUID", "IPv4", "IPv6", "Array(String)"] {
            let message = problem(&format!("type = '{ty}'\nrequired = true\nmin = 1"));
            assert_eq!(
                message,
                format!("`min` applies only to numbers, dates and times, and the type is {ty}; remove it")
            );
        }
        let message = problem("type = 'String'\nrequired = true\nmax = 'z'");
        assert!(message.starts_with("`max` applies only"), "{message}");
    }

    #[test]
    fn from_toml_refuses_bounds_that_do_not_parse_as_the_type() {
        assert_eq!(
            problem("type = 'UInt8'\nrequired = true\nmin = 'abc'"),
            "`min` \"abc\" is not a valid UInt8: not an integer (decimal digits with an optional leading '-')"
        );
        assert_eq!(
            problem("type = 'UInt8'\nrequired = true\nmax = 300"),
            "`max` 300 is not a valid UInt8: out of range for UInt8 (0..=255)"
        );
        assert!(problem("type = 'Date'\nrequired = true\nmin = '2026-13-01'").contains("month out of range"));
        assert!(problem("type = 'Int32'\nrequired = true\nmin = 1.5").contains("not an integer"));
        assert!(problem("type = 'Int32'\nrequired = true\nmin = { a = 1 }").contains("not a table"));
        assert!(problem("type = 'Float64'\nrequired = true\nmax = nan").contains("finite"));
    }

    #[test]
    fn from_toml_refuses_min_greater_than_max() {
        assert_eq!(
            problem("type = 'Int32'\nrequired = true\nmin = 10\nmax = 5"),
            "`min` 10 is greater than `max` 5, so no value could pass; swap or fix them"
        );
        declare("type = 'Int32'\nrequired = true\nmin = 5\nmax = 5");
    }

    #[test]
    fn from_toml_refuses_allowed_values_that_are_not_of_the_type() {
        assert_eq!(
            problem("type = 'UInt8'\nrequired = true\nallowed = [1, 'two', 3]"),
            "`allowed` value \"two\" is not a valid UInt8: not an integer (decimal digits with an optional leading '-')"
        );
        assert!(problem("type = 'Array(Date)'\ndefault = []\nallowed = ['2026-02-30']").contains("day out of range"));
        assert!(problem("type = 'String'\nrequired = true\nallowed = []").contains("is empty"));
        assert_eq!(
            problems("type = 'Int8'\nrequired = true\nallowed = [1000, 'x']").len(),
            2
        );
    }

    #[test]
    fn from_toml_refuses_required_with_a_default() {
        assert_eq!(
            problem("type = 'Int32'\nrequired = true\ndefault = 5"),
            "`required = true` contradicts `default` (a required parameter is always sent); \
             remove one of them"
        );
    }

    #[test]
    fn from_toml_refuses_an_optional_non_nullable_param_without_default() {
        let problems = ParamSpec::from_toml("limit", table("type = 'UInt32'")).expect_err("needs a default");
        assert_eq!(
            problems,
            ["optional parameter `limit` needs a default or a Nullable type"]
        );
    }

    #[test]
    fn from_toml_refuses_a_default_that_violates_its_own_constraint() {
        assert_eq!(
            problem("type = 'UInt16'\ndefault = 5000\nmax = 1000"),
            "default 5000 violates its own constraint: must be at most 1000"
        );
        assert_eq!(
            problem("type = 'String'\ndefault = 'month'\nallowed = ['day', 'week']"),
            "default \"month\" violates its own constraint: must be one of: day, week"
        );
        assert_eq!(
            problem("type = 'Array(String)'\ndefault = ['US', 'de']\npattern = '[A-Z]{2}'"),
            "default [\"US\",\"de\"] violates its own constraint: at index 1: must match pattern [A-Z]{2}"
        );
    }

    #[test]
    fn from_toml_refuses_a_default_that_does_not_parse() {
        assert_eq!(
            problem("type = 'UInt8'\ndefault = -1"),
            "default -1 is not a valid UInt8: out of range for UInt8 (0..=255)"
        );
        assert!(problem("type = 'Date'\ndefault = 'tomorrow'").starts_with("default \"tomorrow\" is not a valid Date"));
        assert!(problem("type = 'Array(UInt8)'\ndefault = 'a'").contains("send a JSON array"));
        assert!(problem("type = 'UInt8'\ndefault = { a = 1 }").contains("`default` must be a string"));
    }

    #[test]
    fn from_toml_refuses_an_example_that_does_not_parse_or_violates_a_constraint() {
        assert_eq!(
            problem("type = 'UInt32'\ndefault = 1\nmax = 10\nexample = 11"),
            "example \"11\" violates its own constraint: must be at most 10"
        );
        assert_eq!(
            problem("type = 'Date'\nrequired = true\nexample = 'soon'"),
            "example \"soon\" is not a valid Date: not a date in the form YYYY-MM-DD"
        );
        assert!(
            problem("type = 'Array(String)'\ndefault = []\nmax_len = 1\nexample = ['a', 'b']")
                .contains("more than 1 items")
        );
        assert!(problem("type = 'String'\nrequired = true\nexample = { a = 1 }").contains("`example` must be"));
    }

    #[test]
    fn from_toml_returns_every_problem_at_once() {
        let found = problems(
            "type = 'UInt8'\nrequired = true\ndefault = 1\npattern = '[a-z'\nmax_len = 3\n\
             min = 'x'\nallowed = ['y']",
        );
        assert_eq!(found.len(), 6, "{found:#?}");
        let found = problems("type = 'Nope'\nrequired = true\ndefault = 1\npattern = '('");
        assert_eq!(found.len(), 3, "{found:#?}");
    }
}
