//! `ig-scorer`: the scorer role's server binary.

use std::net::SocketAddr;

use clap::Parser;
use ig_serve::telemetry::LogFormat;

/// Serves a cost or reward model over inferenceguard.v1.ScorerService.
#[derive(Debug, Parser)]
#[command(name = "ig-scorer", version, about)]
struct Cli {
    #[command(flatten)]
    scorer: ig_scorer::ScorerArgs,
    /// Log format: json or text.
    #[arg(long, env = "IG_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9000).
    #[arg(long, env = "IG_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Compute threads for the model (default: all cores).
    #[arg(long, env = "IG_THREADS")]
    threads: Option<usize>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("ig-scorer: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        // candle's CPU kernels size their pools from this variable.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let _telemetry = ig_serve::telemetry::init("ig-scorer", cli.log_format, cli.metrics_listen)?;
    let listener = tokio::net::TcpListener::bind(cli.scorer.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", cli.scorer.listen))?;
    ig_scorer::run(cli.scorer, listener, ig_serve::server::shutdown_signal()).await
}
