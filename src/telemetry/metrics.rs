//! The handler's metrics (customMetrics in Application Insights, one aggregate per series and
//! interval). Attributes stay low-cardinality: endpoint, status, code; never a tenant or caller.
//!
//! The instruments are made on first use from the global meter provider, which
//! [`super::init`] installs before the server starts; without export they are no-ops.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

struct Instruments {
    request_duration: Histogram<f64>,
    query_duration: Histogram<f64>,
    cache_lookups: Counter<u64>,
    problems: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("chgate");
        Instruments {
            request_duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Requests: count and duration by endpoint and status")
                .build(),
            query_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_description("ClickHouse queries: duration by endpoint and outcome")
                .build(),
            cache_lookups: meter
                .u64_counter("chgate.cache.lookups")
                .with_description("Result cache answers by endpoint and result (hit, stale, miss)")
                .build(),
            problems: meter
                .u64_counter("chgate.problems")
                .with_description("Error responses by code (rate_limited, busy, ... are the limit rejections)")
                .build(),
        }
    })
}

/// A request has been answered.
pub fn request_done(endpoint: &str, status: u16, seconds: f64) {
    instruments().request_duration.record(
        seconds,
        &[
            KeyValue::new("endpoint", endpoint.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ],
    );
}

/// A ClickHouse query has ended (`outcome`: ok, error or cancelled).
pub fn query_done(endpoint: &str, outcome: &'static str, seconds: f64) {
    instruments().query_duration.record(
        seconds,
        &[
            KeyValue::new("endpoint", endpoint.to_owned()),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// A cached endpoint answered (`result`: hit, stale or miss).
pub fn cache_lookup(endpoint: &str, result: &'static str) {
    instruments().cache_lookups.add(
        1,
        &[
            KeyValue::new("endpoint", endpoint.to_owned()),
            KeyValue::new("result", result),
        ],
    );
}

/// An error response with this stable code.
pub fn problem(code: &'static str) {
    instruments().problems.add(1, &[KeyValue::new("code", code)]);
}
