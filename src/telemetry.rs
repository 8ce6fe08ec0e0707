//! Logging and tracing setup: `tracing` to stderr, as text or JSON lines,
//! the level from `RUST_LOG` (default `info`); with an OTLP endpoint, the
//! same spans (one `rpc` span per call with its method, and everything
//! inside it) are also exported as OpenTelemetry traces over gRPC.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps trace export running; flushes what is buffered when dropped.
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl TelemetryGuard {
    /// Sends every finished span now (tests, shutdown).
    pub fn flush(&self) {
        if let Some(p) = &self.0
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber once (later calls change nothing).
/// `otlp_endpoint` (`http://collector:4317`) turns on trace export; it must
/// be called inside a Tokio runtime then (the exporter is a tonic client).
pub fn init(format: &str, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard, String> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    init_with_filter(format, otlp_endpoint, &filter)
}

/// [`init`] with an explicit filter (`RUST_LOG` syntax) instead of the
/// environment's. Per-step `dispatch` and `datastore.query` spans are at
/// `trace` level: `RUST_LOG=info,kinbar::engine=trace` exports them.
pub fn init_with_filter(
    format: &str,
    otlp_endpoint: Option<&str>,
    filter: &str,
) -> Result<TelemetryGuard, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter `{filter}`: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (otel, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("kinbar")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("kinbar");
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    Ok(TelemetryGuard(provider))
}

/// Logging only (no trace export).
pub fn init_logging(format: &str) {
    let _ = init(format, None);
}
