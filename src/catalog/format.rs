//! The result formats an endpoint can answer in, each backed by a ClickHouse output format
//! so that result bytes pass through without being decoded.

use std::fmt;
use std::str::FromStr;

/// A result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// ClickHouse's `JSON`: `meta`, `data`, `rows`, `statistics`.
    Json,
    /// One JSON object per line (`JSONEachRow`).
    Ndjson,
    /// CSV with a header row (`CSVWithNames`).
    Csv,
    /// Apache Parquet, columnar and typed.
    Parquet,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 4] = [Self::Json, Self::Ndjson, Self::Csv, Self::Parquet];

    /// The name callers use in `?format=` and endpoint.toml.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }

    /// The ClickHouse format that produces it.
    pub fn clickhouse_format(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Ndjson => "JSONEachRow",
            Self::Csv => "CSVWithNames",
            Self::Parquet => "Parquet",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8; header=present",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// Whether the body is text (it can travel inside a JSON string).
    pub fn is_text(self) -> bool {
        !matches!(self, Self::Parquet)
    }

    /// The format a media type from an `Accept` header names, if any.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type.trim().to_ascii_lowercase().as_str() {
            "application/json" => Some(Self::Json),
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => Some(Self::Ndjson),
            "text/csv" => Some(Self::Csv),
            "application/vnd.apache.parquet" | "application/parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|format| format.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {name:?}; the formats are {}", names.join(", "))
            })
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
