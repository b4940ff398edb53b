//! Structured logs, traces and metrics for every role.
//!
//! - Logs: one JSON object per line on stderr (`--log-format text` for
//!   humans), filtered by `RUST_LOG` (default `info`).
//! - Traces: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set; incoming `traceparent` headers continue the caller's trace.
//! - Metrics: exported over OTLP the same way, and served in Prometheus text
//!   format on `--metrics-listen` when given.

use std::net::SocketAddr;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (machines, log pipelines).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("log format {other:?}: expected json or text")),
        }
    }
}

/// Flushes and stops the exporters when dropped.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

/// Installs logging, tracing and metrics for `service` (e.g. "ig-policy").
/// Must run inside a tokio runtime. Calling it twice keeps the first setup.
pub fn init(service: &'static str, format: LogFormat, metrics_listen: Option<SocketAddr>) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder().with_service_name(service).build();
    let otlp = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();

    let (tracer, otel_layer) = if otlp {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.clone()).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        opentelemetry::global::set_tracer_provider(provider.clone());
        (Some(provider), Some(layer))
    } else {
        (None, None)
    };
    let meter = if otlp {
        let exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
        let provider = SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    if let Some(addr) = metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    }

    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed(),
    };
    // A second init (tests start several servers in one process) is harmless.
    let _ = tracing_subscriber::registry().with(fmt).with(otel_layer.map(|l| l.with_filter(filter()))).try_init();
    Ok(TelemetryGuard { tracer, meter })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one gRPC call, continuing the caller's trace when the request
/// carries W3C trace context.
pub fn request_span(req: &http::Request<()>) -> tracing::Span {
    // `caller`: the name of the bearer token the call was authenticated with (never the token).
    let span = tracing::info_span!("grpc", rpc = %req.uri().path(), otel.kind = "server", caller = tracing::field::Empty);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let _ = span.set_parent(parent);
    span
}
