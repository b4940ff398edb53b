//! `ig-scorer`: the scorer role's server binary.

use clap::Parser;

/// Serves a cost or reward model over inferenceguard.v1.ScorerService.
#[derive(Debug, Parser)]
#[command(name = "ig-scorer", version, about)]
struct Cli {
    #[command(flatten)]
    scorer: ig_scorer::ScorerArgs,
    #[command(flatten)]
    process: ig_serve::process::ProcessArgs,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("ig-scorer: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = cli.process.init("ig-scorer")?;
    let listener = ig_serve::process::bind(cli.scorer.listen).await?;
    ig_scorer::run(cli.scorer, listener, ig_serve::server::shutdown_signal()).await
}
