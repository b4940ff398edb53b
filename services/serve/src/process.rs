//! What every role binary does before serving: its process-level flags
//! (logs, metrics, threads), telemetry, and binding its listener.

use std::net::SocketAddr;

use clap::Args;
use tokio::net::TcpListener;

use crate::telemetry::{LogFormat, TelemetryGuard};

/// Process-level flags shared by the role binaries.
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// Log format: json or text.
    #[arg(long, env = "IG_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9000).
    #[arg(long, env = "IG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Compute threads for the model (default: all cores).
    #[arg(long, env = "IG_THREADS")]
    pub threads: Option<usize>,
}

impl ProcessArgs {
    /// Sets the model's thread count and installs telemetry for `service`.
    /// Call first thing in `main`, inside the runtime.
    pub fn init(&self, service: &'static str) -> anyhow::Result<TelemetryGuard> {
        if let Some(n) = self.threads {
            set_threads(n);
        }
        crate::telemetry::init(service, self.log_format, self.metrics_listen)
    }
}

/// Sets the compute threads of candle's CPU kernels (they size their pools
/// from `RAYON_NUM_THREADS`). Call before any model is loaded.
pub fn set_threads(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

/// Binds the role's listener; the error names the flag.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("--listen {listen}: {e}"))
}
