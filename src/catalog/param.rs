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
    /// The smallest value accepted (numbers, dates and times).
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
        Some(ParamType::Array(_)) => {
            Some("arrays of arrays are not supported as parameters; use a flat Array")
        }
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

fn bound(
    key: &str,
    ty: &ParamType,
    value: Option<&toml::Value>,
    problems: &mut Vec<String>,
) -> Option<Bound> {
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

fn allowed(
    ty: &ParamType,
    values: Option<&[toml::Value]>,
    problems: &mut Vec<String>,
) -> Option<Allowed> {
    let values = values?;
    if values.is_empty() {
        problems.push(
            "`allowed` is empty, so no value could pass; list the accepted values or remove it"
                .to_owned(),
        );
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
fn own_default(
    ty: &ParamType,
    rules: &Rules,
    value: &toml::Value,
    problems: &mut Vec<String>,
) -> Option<ParamValue> {
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
            problems.push(own_value_problem(
                "default",
                &config_shown(&json),
                ty,
                failure,
            ));
            None
        }
    }
}

/// Checks the example as the query-string text it documents.
fn own_example(
    ty: &ParamType,
    rules: &Rules,
    value: &toml::Value,
    problems: &mut Vec<String>,
) -> Option<String> {
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
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
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
        toml::Value::Array(items) => items
            .iter()
            .map(request_text)
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
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
                return Err(Problem::Violates(format!(
                    "must match pattern {}",
                    pattern.source
                )));
            }
        }
        if let Some(allowed) = &self.allowed
            && !allowed.values.contains(&scalar.value)
        {
            return Err(Problem::Violates(format!(
                "must be one of: {}",
                allowed.shown
            )));
        }
        Ok(scalar.value)
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
        ParamType::Int { .. } | ParamType::Float32 | ParamType::Float64 => {
            "a JSON number (or a string holding one)"
        }
        ParamType::Decimal { .. } => "a JSON string (or a number)",
        ParamType::DateTime { .. } | ParamType::DateTime64 { .. } => {
            "a JSON string (or a number of Unix seconds)"
        }
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

fn parse_int(text: &str, bits: u8, signed: bool) -> Result<Scalar, String> {
    if !is_digits(text.strip_prefix('-').unwrap_or(text)) {
        return Err("not an integer (decimal digits with an optional leading '-')".to_owned());
    }
    let (min, max) = if signed {
        let max = (1_i128 << (bits - 1)) - 1;
        (-max - 1, max)
    } else {
        (0, (1_i128 << bits) - 1)
    };
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
        scaled
            .parse()
            .map_err(|_| format!("out of range for {ty}"))?
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
    if let Some(captures) = UNIX_TIME.captures(text) {
        let negative = !captures[1].is_empty();
        let fraction = captures.get(3).map_or("", |found| found.as_str());
        return unix_time(negative, &captures[2], fraction, precision);
    }
    let Some(captures) = DATETIME.captures(text) else {
        return Err(match precision {
            None => "not in the form 'YYYY-MM-DD hh:mm:ss', RFC 3339 or Unix seconds",
            Some(_) => "not in the form 'YYYY-MM-DD hh:mm:ss[.fff]', RFC 3339 or Unix seconds",
        }
        .to_owned());
    };
    let part = |index: usize| captures.get(index).map_or("", |found| found.as_str());
    let (hour, minute, second) = match captures.get(4) {
        Some(_) => (part(4), part(5), part(6)),
        None => ("00", "00", "00"),
    };
    let fraction = part(7);
    let nanos = fraction_nanos(fraction, precision)?;
    let date = calendar_date(part(1), part(2), part(3))?;
    let time = Time::from_hms_nano(number(hour)?, number(minute)?, number(second)?, nanos)
        .map_err(out_of_range)?;
    let local = PrimitiveDateTime::new(date, time);
    if let Some(offset) = captures.get(8) {
        let instant = local
            .assume_offset(utc_offset(offset.as_str())?)
            .unix_timestamp_nanos();
        check_range(instant, precision)?;
        return Ok(Scalar {
            value: ParamValue::Text(unix_text(instant, fraction.len())?),
            key: Some(Key::Exact(instant)),
        });
    }
    let as_utc = local.assume_utc().unix_timestamp_nanos();
    check_range(as_utc, precision)?;
    let mut canonical = format!(
        "{}-{}-{} {hour}:{minute}:{second}",
        part(1),
        part(2),
        part(3)
    );
    if !fraction.is_empty() {
        canonical = format!("{canonical}.{fraction}");
    }
    Ok(Scalar {
        value: ParamValue::Text(canonical),
        key: Some(Key::Exact(as_utc)),
    })
}

/// Unix seconds, with a fraction for DateTime64 and a sign for instants before 1970.
fn unix_time(
    negative: bool,
    seconds: &str,
    fraction: &str,
    precision: Option<u8>,
) -> Result<Scalar, String> {
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
    number(&format!("{fraction:0<9}"))
}

fn utc_offset(text: &str) -> Result<UtcOffset, String> {
    let Some((hours, minutes)) = text.get(1..).and_then(|rest| rest.split_once(':')) else {
        // The regex leaves only `Z` or `z` without a colon.
        return Ok(UtcOffset::UTC);
    };
    let sign = if text.starts_with('-') { -1 } else { 1 };
    UtcOffset::from_hms(
        sign * number::<i8>(hours)?,
        sign * number::<i8>(minutes)?,
        0,
    )
    .map_err(out_of_range)
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
        return Err(
            "an instant within the second before 1970-01-01 00:00:00 UTC cannot be \
             sent as a Unix time (ClickHouse misreads it); send it without an offset"
                .to_owned(),
        );
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let mut text = format!("{sign}{seconds:010}");
    if digits > 0 {
        let sub = format!("{sub:09}");
        text.push('.');
        text.push_str(sub.get(..digits).unwrap_or(&sub));
    }
    Ok(text)
}
