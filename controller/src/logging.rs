//! Log set-up: readable text on a terminal, JSON lines otherwise; `RUST_LOG` overrides the
//! default filter. Lines logged while serving an HTTPS request carry its span (request id,
//! method, path). The gateway logs every connection event with the device id. With the `otel` feature and `[tracing]
//! otlp_endpoint` set, spans are also exported over OTLP (see [`crate::otel`]).

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

type Subscriber = tracing_subscriber::layer::Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Subscriber> + Send + Sync>;

/// Keeps trace export running; dropping it flushes the queued spans and stops the exporter.
/// Hold it until the process exits.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug, Default)]
pub struct LogGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing traces on exit failed: {e}");
        }
    }
}

/// Installs the global subscriber. Safe to call once per process. `serve_data_dir` is the
/// data directory when the process serves: its `[tracing]` section decides trace export (a
/// config that does not load is ignored here; `serve` reports it and stops).
pub fn init(serve_data_dir: Option<&Path>) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<BoxedLayer> = vec![if std::io::stderr().is_terminal() {
        fmt.boxed()
    } else {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    }];
    let (guard, otel_error) = otel(serve_data_dir, &mut layers);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
    if let Some(e) = otel_error {
        tracing::error!(error = %e, "trace export is off");
    }
    guard
}

/// Adds the OTLP export layer when `[tracing] otlp_endpoint` is set.
#[cfg(feature = "otel")]
fn otel(serve_data_dir: Option<&Path>, layers: &mut Vec<BoxedLayer>) -> (LogGuard, Option<String>) {
    let Some(cfg) = serve_data_dir
        .and_then(|dir| {
            crate::config::Config::load(&crate::datadir::DataDir::new(dir).config()).ok()
        })
        .filter(|cfg| !cfg.tracing.otlp_endpoint.is_empty())
    else {
        return (LogGuard::default(), None);
    };
    match crate::otel::provider(&cfg.tracing) {
        Ok(p) => {
            layers.push(crate::otel::layer(&p).boxed());
            (LogGuard { provider: Some(p) }, None)
        }
        Err(e) => (LogGuard::default(), Some(e.to_string())),
    }
}

/// Without the `otel` feature a configured endpoint is refused by the config check.
#[cfg(not(feature = "otel"))]
fn otel(_: Option<&Path>, _: &mut Vec<BoxedLayer>) -> (LogGuard, Option<String>) {
    (LogGuard::default(), None)
}
