//! Request values → typed parameters, through each parameter's spec only. Unknown keys,
//! reserved keys and values that do not parse are refused here, before any query runs.

use crate::catalog::Endpoint;
use crate::catalog::endpoint::RESERVED_CALLER_PARAMS;
use crate::catalog::param::{ParamError, ParamValue, RawValue};
use crate::text::shorten;

/// The parameter values of one request, as the client sent them.
#[derive(Debug)]
pub enum RequestValues {
    /// Query-string pairs, in order (a key may repeat).
    Query(Vec<(String, String)>),
    /// The members of a JSON object body.
    Json(serde_json::Map<String, serde_json::Value>),
}

/// Every declared parameter with its typed value (defaults filled in), ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundParams {
    values: Vec<(String, ParamValue)>,
}

impl BoundParams {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.values.iter().map(|(name, value)| (name.as_str(), value))
    }
}

/// Why request values could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("unknown parameter `{name}`; this endpoint takes: {known}")]
    Unknown { name: String, known: String },
    #[error("parameter `{0}` is set from the caller's verified identity and cannot be sent")]
    Reserved(String),
    #[error("parameter `{0}` is part of the path and cannot also be sent in the query or body")]
    InPath(String),
    #[error("missing required parameter `{0}`")]
    Missing(String),
    #[error(transparent)]
    Invalid(#[from] ParamError),
}

impl BindError {
    /// The parameter the error is about.
    pub fn param(&self) -> &str {
        match self {
            Self::Unknown { name, .. } | Self::Reserved(name) | Self::InPath(name) | Self::Missing(name) => name,
            Self::Invalid(error) => error.param(),
        }
    }
}

/// Binds route parameters and request values to the endpoint's declared parameters.
pub fn bind(
    endpoint: &Endpoint,
    route_params: &[(String, String)],
    values: &RequestValues,
) -> Result<BoundParams, BindError> {
    let keys: Vec<&str> = match values {
        RequestValues::Query(pairs) => pairs.iter().map(|(key, _)| key.as_str()).collect(),
        RequestValues::Json(object) => object.keys().map(String::as_str).collect(),
    };
    for key in &keys {
        if RESERVED_CALLER_PARAMS.contains(key) {
            return Err(BindError::Reserved((*key).to_owned()));
        }
        if route_params.iter().any(|(name, _)| name == key) {
            return Err(BindError::InPath((*key).to_owned()));
        }
        if endpoint.param(key).is_none() {
            let known: Vec<&str> = endpoint.params().iter().map(|p| p.name()).collect();
            let known = if known.is_empty() {
                "no parameters".to_owned()
            } else {
                known.join(", ")
            };
            return Err(BindError::Unknown {
                name: shorten(key),
                known,
            });
        }
    }
    let mut bound = Vec::with_capacity(endpoint.params().len());
    for spec in endpoint.params() {
        let name = spec.name();
        let from_path: Vec<String> = route_params
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect();
        let value = if !from_path.is_empty() {
            spec.parse(RawValue::Query(&from_path))?
        } else {
            match values {
                RequestValues::Query(pairs) => {
                    let given: Vec<String> = pairs
                        .iter()
                        .filter(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                        .collect();
                    if given.is_empty() {
                        missing(spec)?
                    } else {
                        spec.parse(RawValue::Query(&given))?
                    }
                }
                RequestValues::Json(object) => match object.get(name) {
                    Some(value) => spec.parse(RawValue::Json(value))?,
                    None => missing(spec)?,
                },
            }
        };
        bound.push((name.to_owned(), value));
    }
    Ok(BoundParams { values: bound })
}

fn missing(spec: &crate::catalog::param::ParamSpec) -> Result<ParamValue, BindError> {
    if spec.is_required() {
        return Err(BindError::Missing(spec.name().to_owned()));
    }
    Ok(spec.missing()?)
}
