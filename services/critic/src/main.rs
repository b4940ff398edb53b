//! `ig-critic`: the critic role's server binary.

use clap::Parser;

/// Serves a critic V(h, z) over inferenceguard.v1.CriticService.
#[derive(Debug, Parser)]
#[command(name = "ig-critic", version, about)]
struct Cli {
    #[command(flatten)]
    critic: ig_critic::CriticArgs,
    #[command(flatten)]
    process: ig_serve::process::ProcessArgs,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("ig-critic: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = cli.process.init("ig-critic")?;
    let listener = ig_serve::process::bind(cli.critic.listen).await?;
    ig_critic::run(cli.critic, listener, ig_serve::server::shutdown_signal()).await
}
