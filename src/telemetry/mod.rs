//! Logs, traces and metrics. JSON log lines always go to stdout, where the Functions host
//! collects a custom handler's output (`RUST_LOG` filters, default `info`). When
//! `APPLICATIONINSIGHTS_CONNECTION_STRING` is set, the handler's own spans also go to
//! Application Insights: one server span per request (the Requests table) and one client
//! span per ClickHouse query (Dependencies), continuing the caller's W3C `traceparent`, plus
//! a few metrics (customMetrics).
//!
//! What never leaves the process: tokens, subjects in clear, parameter values, route values,
//! query strings and headers. Spans carry the endpoint, route template, role, tenant and status.

mod ingestion;
pub mod metrics;
pub mod trace;

use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_application_insights::Exporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use ingestion::IngestionClient;

/// Spans of these targets are exported; library spans and log events stay in the log only
/// (a log event inside an exported span would otherwise become a Message item each).
const EXPORTED_TARGET: &str = "chgate";

/// The cloud role name: the node's name on the application map.
const SERVICE_NAME: &str = "chgate";

/// How telemetry is exported.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `APPLICATIONINSIGHTS_CONNECTION_STRING`; unset turns export off.
    pub connection_string: Option<String>,
    /// `CHGATE_TELEMETRY_SPAN_DELAY_MS` (default 5000, at least 10): how often spans are sent.
    pub span_delay: Duration,
    /// `CHGATE_TELEMETRY_METRIC_INTERVAL_SECONDS` (default 60, at least 1): how often
    /// metrics are sent.
    pub metric_interval: Duration,
}

impl TelemetrySettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let number = |name: &str, default: u64, least: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(text) => match text.trim().parse::<u64>() {
                    Ok(value) if value >= least => Ok(value),
                    _ => anyhow::bail!("{name} must be a whole number of at least {least}, got {text:?}"),
                },
            }
        };
        Ok(Self {
            connection_string: std::env::var("APPLICATIONINSIGHTS_CONNECTION_STRING")
                .ok()
                .filter(|value| !value.trim().is_empty()),
            span_delay: Duration::from_millis(number("CHGATE_TELEMETRY_SPAN_DELAY_MS", 5000, 10)?),
            metric_interval: Duration::from_secs(number("CHGATE_TELEMETRY_METRIC_INTERVAL_SECONDS", 60, 1)?),
        })
    }
}

/// The export pipeline, flushed by [`Telemetry::shutdown`] once the server has stopped.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Sends what is buffered and stops the export threads; waits up to 5 s per pipeline (an
    /// unreachable ingestion endpoint loses the last batch, which is logged, not fatal).
    /// Blocking: call after the HTTP server has stopped.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(error) = tracer.shutdown()
        {
            tracing::warn!(error = %error, "flushing traces at shutdown failed");
        }
        if let Some(meter) = self.meter
            && let Err(error) = meter.shutdown()
        {
            tracing::warn!(error = %error, "flushing metrics at shutdown failed");
        }
    }
}

/// Installs the global subscriber (JSON logs, plus export when configured) and the W3C
/// propagator. A second call (as in tests) leaves the first subscriber in place.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<Telemetry> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    // RUST_LOG filters the log only: export takes the handler's spans whatever the log level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Events carry their own fields (request.id, endpoint.name, ...); the request span's
    // fields would repeat them on every line.
    let log = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_filter(filter);
    let Some(connection_string) = &settings.connection_string else {
        let _ = tracing_subscriber::registry().with(log).try_init();
        return Ok(Telemetry::default());
    };
    let exporter = exporter(connection_string)?;
    let resource = Resource::builder().with_service_name(SERVICE_NAME).build();
    let spans = BatchSpanProcessor::builder(exporter.clone())
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(settings.span_delay)
                .build(),
        )
        .build();
    let tracer = SdkTracerProvider::builder()
        .with_span_processor(spans)
        // Every request is recorded, whatever the caller's sampled flag says: a `-00`
        // traceparent from a client must not hide requests from operators. Sampling, if
        // wanted, belongs to the App Insights resource (ingestion sampling).
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.clone())
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(settings.metric_interval)
                .build(),
        )
        .with_resource(resource)
        .build();
    global::set_meter_provider(meter.clone());
    let export = tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer(SERVICE_NAME))
        // Without these every item carries code.*, thread.*, target and busy/idle times.
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with(EXPORTED_TARGET)
        }));
    let _ = tracing_subscriber::registry().with(log).with(export).try_init();
    tracing::info!("telemetry export to Application Insights is on");
    Ok(Telemetry {
        tracer: Some(tracer),
        meter: Some(meter),
    })
}

fn exporter(connection_string: &str) -> anyhow::Result<Exporter<IngestionClient>> {
    let client = IngestionClient::new(connection_string)?;
    let exporter = Exporter::new_from_connection_string(connection_string, client)
        .map_err(|error| anyhow::anyhow!("APPLICATIONINSIGHTS_CONNECTION_STRING is not usable: {error}"))?
        .with_retry_notify(|error, retry_in| {
            tracing::warn!(error = %error, retry_in = ?retry_in, "telemetry upload failed; retrying");
        });
    Ok(exporter)
}
