//! W3C trace context: continuing the caller's `traceparent` (APIM sends one), and the trace id
//! that joins the request's items in Application Insights with its query in ClickHouse's
//! `system.query_log` (through `log_comment`).

use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads `traceparent`/`tracestate` from actix-web's own header map type.
struct HeaderExtractor<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Makes `span` a child of the request's `traceparent` (a new trace without one), and returns
/// the trace id the request belongs to: the exported span's, or when nothing is exported,
/// the incoming one. Must run before the span is first entered.
pub fn continue_trace(span: &tracing::Span, headers: &actix_web::http::header::HeaderMap) -> Option<String> {
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    let incoming = parent.span().span_context().trace_id();
    // Fails only when nothing is exported (no layer) or the span is filtered out.
    let _ = span.set_parent(parent);
    let exported = span.context().span().span_context().trace_id();
    [exported, incoming]
        .into_iter()
        .find(|id| *id != TraceId::INVALID)
        .map(|id| id.to_string())
}
