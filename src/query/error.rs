//! What can go wrong running a query, in terms the HTTP edge can map to a status.

/// A failed query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// ClickHouse answered with an exception.
    #[error("clickhouse exception {code} ({name}): {message}")]
    Exception { code: u32, name: String, message: String },
    /// ClickHouse could not be reached, or the connection broke.
    #[error("clickhouse unreachable: {0}")]
    Unavailable(String),
    /// No ClickHouse credentials yet (the vault has not answered since the start).
    #[error("no ClickHouse credentials yet")]
    NoCredentials,
    /// Anything else (a client-side failure).
    #[error("query failed: {0}")]
    Other(String),
}

impl From<clickhouse::error::Error> for QueryError {
    fn from(error: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error;
        match error {
            Error::BadResponse(text) => parse_exception(&text).unwrap_or_else(|| {
                // No exception: an HTTP status from something in front of ClickHouse. A
                // gateway error or an overloaded proxy is unavailability, not a failed query.
                if ["502", "503", "504"].iter().any(|status| text.starts_with(status)) {
                    Self::Unavailable(text)
                } else {
                    Self::Other(text)
                }
            }),
            Error::Network(source) => Self::Unavailable(source.to_string()),
            Error::TimedOut => Self::Unavailable("timed out".into()),
            other => Self::Other(other.to_string()),
        }
    }
}

/// ClickHouse's codes for a login it does not accept: AUTHENTICATION_FAILED, UNKNOWN_USER,
/// REQUIRED_PASSWORD, WRONG_PASSWORD.
const LOGIN_REJECTED: [u32; 4] = [516, 192, 194, 193];

impl QueryError {
    /// A short stable name of the failure, for telemetry.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exception { .. } => "clickhouse_exception",
            Self::Unavailable(_) => "unavailable",
            Self::NoCredentials => "no_credentials",
            Self::Other(_) => "other",
        }
    }

    /// Whether ClickHouse (or a proxy in front of it) refused the login itself, as it does
    /// right after a password rotation until the new password is in use.
    pub fn is_login_rejected(&self) -> bool {
        match self {
            Self::Exception { code, .. } => LOGIN_REJECTED.contains(code),
            Self::Other(text) => text.starts_with("401") || text.starts_with("403"),
            Self::Unavailable(_) | Self::NoCredentials => false,
        }
    }

    /// Itself when it is a ClickHouse exception, otherwise `fallback()`.
    pub fn into_exception_or(self, fallback: impl FnOnce() -> QueryError) -> QueryError {
        match self {
            exception @ Self::Exception { .. } => exception,
            _ => fallback(),
        }
    }
}

/// Reads `Code: N. DB::Exception: message (NAME) (version ...)`.
fn parse_exception(text: &str) -> Option<QueryError> {
    let start = text.find("Code: ")? + "Code: ".len();
    let rest = &text[start..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let code = digits.parse().ok()?;
    let message = rest.split_once("DB::Exception: ").map_or(rest, |(_, message)| message);
    let message = message.split(" (version ").next().unwrap_or(message).trim();
    let (message, name) = match message.rfind(" (") {
        Some(open) if message.ends_with(')') => {
            let name = &message[open + 2..message.len() - 1];
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                (&message[..open], name.to_owned())
            } else {
                (message, String::new())
            }
        }
        _ => (message, String::new()),
    };
    Some(QueryError::Exception {
        code,
        name,
        message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_exception_text_is_parsed_into_code_name_and_message() {
        let error = parse_exception(
            "Code: 60. DB::Exception: Unknown table expression identifier 'x'. (UNKNOWN_TABLE) (version 26.9.2.1 (official build))",
        )
        .expect("parsed");
        match error {
            QueryError::Exception { code, name, message } => {
                assert_eq!(code, 60);
                assert_eq!(name, "UNKNOWN_TABLE");
                assert_eq!(message, "Unknown table expression identifier 'x'.");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn only_refused_logins_count_as_rejected() {
        let refused = parse_exception("Code: 516. DB::Exception: u: Authentication failed. (AUTHENTICATION_FAILED)");
        assert!(refused.expect("parsed").is_login_rejected());
        let other = parse_exception("Code: 60. DB::Exception: Unknown table. (UNKNOWN_TABLE)");
        assert!(!other.expect("parsed").is_login_rejected());
        assert!(QueryError::Other("401 Unauthorized".into()).is_login_rejected());
        assert!(!QueryError::Unavailable("refused".into()).is_login_rejected());
        assert!(!QueryError::NoCredentials.is_login_rejected());
    }

    #[test]
    fn text_without_a_code_is_not_an_exception() {
        assert!(parse_exception("bad gateway").is_none());
    }
}
