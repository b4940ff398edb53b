//! `ig-orchestrator`: the stateless GuardService over the role endpoints of
//! a registry file.

use clap::Parser;
use ig_orchestrator::OrchestratorArgs;
use ig_serve::process::ProcessArgs;

#[derive(Parser)]
#[command(name = "ig-orchestrator", version, about = "InferenceGuard Mesh orchestrator: guarded generation over the role services")]
struct Cli {
    #[command(flatten)]
    args: OrchestratorArgs,
    #[command(flatten)]
    process: ProcessArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = cli.process.init("ig-orchestrator")?;
    let listener = ig_serve::process::bind(cli.args.listen).await?;
    ig_orchestrator::run(cli.args, listener, ig_serve::server::shutdown_signal()).await
}
