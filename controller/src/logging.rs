//! Log set-up: readable text on a terminal, JSON lines otherwise; `RUST_LOG` overrides the
//! default filter. Lines logged while serving an HTTPS request carry its span (request id,
//! method, path). The embedded broker's own logs are off by default (the gateway logs every
//! connection event with the device id).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        let _ = builder.try_init();
    } else {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init();
    }
}
