//! The tracing subscriber: JSON lines on stdout, where the Functions host collects a custom
//! handler's output. `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call (as in tests) leaves the first in place.
pub fn init_subscriber() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
}
