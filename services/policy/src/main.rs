//! `ig-policy`: the policy role's server binary.

use clap::Parser;

/// Serves a causal LM over inferenceguard.v1.PolicyService.
#[derive(Debug, Parser)]
#[command(name = "ig-policy", version, about)]
struct Cli {
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    process: ig_serve::process::ProcessArgs,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("ig-policy: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = cli.process.init("ig-policy")?;
    let listener = ig_serve::process::bind(cli.policy.listen).await?;
    ig_policy::run(cli.policy, listener, ig_serve::server::shutdown_signal()).await
}
