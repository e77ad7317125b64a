//! OpenTelemetry trace export over OTLP/HTTP (protobuf), built with the `otel` feature and
//! switched on by `[tracing] otlp_endpoint`. Spans (the HTTPS `request` span, `ingest_batch`,
//! `command_dispatch`) are batched and sent by the SDK's own thread with a blocking HTTP
//! client, so export works before and after the async runtime and never runs on it.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracingConfig;

/// Longest time one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace exporter: {0}")]
pub struct OtelError(#[from] opentelemetry_otlp::ExporterBuildError);

/// A tracer provider exporting to `cfg.otlp_endpoint`. Shut it down on exit: that flushes
/// the spans still queued.
pub fn provider(cfg: &TracingConfig) -> Result<SdkTracerProvider, OtelError> {
    // The exporter's HTTP client builds its TLS from the process-wide rustls provider: make
    // it the one provider every TLS config here uses (an error means one is already set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.otlp_endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + use<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("pifleet-controller"))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::mpsc as std_mpsc;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A tiny OTLP/HTTP collector on 127.0.0.1: answers every POST with 200 and reports
    /// `(path, body)`. Runs on its own thread and runtime, like a separate process would.
    fn collector() -> (SocketAddr, std_mpsc::Receiver<(String, Vec<u8>)>) {
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let (sock, _) = listener.accept().await.unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut conn = BufReader::new(sock);
                        // One connection may carry several requests (keep-alive).
                        loop {
                            let mut line = String::new();
                            if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                            let mut len = 0usize;
                            loop {
                                let mut h = String::new();
                                conn.read_line(&mut h).await.unwrap();
                                let h = h.trim_end();
                                if h.is_empty() {
                                    break;
                                }
                                if let Some((k, v)) = h.split_once(':')
                                    && k.eq_ignore_ascii_case("content-length")
                                {
                                    len = v.trim().parse().unwrap();
                                }
                            }
                            let mut body = vec![0u8; len];
                            conn.read_exact(&mut body).await.unwrap();
                            conn.get_mut()
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await
                                .unwrap();
                            let _ = tx.send((path, body));
                        }
                    });
                }
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        (addr, rx)
    }

    #[test]
    fn otel_exports_request_span_over_otlp_http() {
        let (addr, bodies) = collector();
        let cfg = TracingConfig {
            otlp_endpoint: format!("http://{addr}/v1/traces"),
            service_name: "pifleet-otel-test".to_owned(),
        };
        let provider = provider(&cfg).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "0123456789abcdef",
                method = "GET",
                path = "/healthz"
            );
            span.in_scope(|| tracing::info!(status = 200, "request done"));
        });
        provider.force_flush().unwrap();

        let (path, body) = bodies.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(path, "/v1/traces");
        assert!(!body.is_empty());
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"request"), "span name missing from the export");
        assert!(
            has(b"pifleet-otel-test"),
            "service name missing from the export"
        );
        assert!(
            has(b"0123456789abcdef"),
            "span attribute missing from the export"
        );
        provider.shutdown().unwrap();
    }
}
