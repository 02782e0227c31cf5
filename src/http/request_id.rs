//! The request id: taken from APIM's `X-Request-Id` or W3C `traceparent` when they are sane,
//! otherwise made up. It names the ClickHouse query (query_id), the log lines and the
//! `X-Request-Id` response header, so one id joins all three.

use actix_web::HttpRequest;

/// Ids longer than this, or with other characters, are replaced rather than trusted.
const MAX_LEN: usize = 128;

pub fn request_id(request: &HttpRequest) -> String {
    from_headers(|name| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    })
}

/// The request id from a header lookup (case-insensitive names), for requests that arrive
/// inside an invocation payload.
pub fn from_headers(header: impl Fn(&str) -> Option<String>) -> String {
    if let Some(id) = header("x-request-id").filter(|id| is_sane(id)) {
        return id;
    }
    if let Some(id) = header("traceparent").as_deref().and_then(from_traceparent) {
        return id;
    }
    uuid::Uuid::new_v4().to_string()
}

fn is_sane(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// `00-<trace id>-<parent id>-<flags>` → `<trace id>-<parent id>`: unique per hop, while the
/// trace id still joins it to the caller's trace.
fn from_traceparent(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [_, trace, parent, _] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(trace, 32) && hex(parent, 16) && trace.bytes().any(|b| b != b'0')).then(|| format!("{trace}-{parent}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_sane_incoming_request_id_is_kept() {
        let request = TestRequest::default()
            .insert_header(("X-Request-Id", "apim-123.abc"))
            .to_http_request();
        assert_eq!(request_id(&request), "apim-123.abc");
    }

    #[test]
    fn an_unsafe_request_id_is_replaced() {
        let request = TestRequest::default()
            .insert_header(("X-Request-Id", "a b'; DROP"))
            .to_http_request();
        let id = request_id(&request);
        assert_ne!(id, "a b'; DROP");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
    }

    #[test]
    fn traceparent_gives_trace_and_parent_ids() {
        let request = TestRequest::default()
            .insert_header(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
            .to_http_request();
        assert_eq!(
            request_id(&request),
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        );
    }
}
