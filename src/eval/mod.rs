//! `inferenceguard eval`: the paper's evaluation (Table 2, Figures 2 and 3)
//! on the offline prompt sets, through the mesh (`docs/evaluation.md`).
//!
//! - `eval prompts`: draw a prompt set from the assets;
//! - `eval --prompts SET ...`: run every method over it, resumably;
//! - `eval report`: rewrite the report from a run's results.
//!
//! Every report judges safety twice: by the cost model that guided the
//! search, and by judges it never consulted (`judge.rs`, `--judge`).

pub(crate) mod judge;
mod metrics;
mod prompts;
mod report;
mod run;
mod settings;

use clap::{Args, Subcommand};
use ig_orchestrator::search::Method;

/// A run's flags, or a subcommand (they conflict, see `main.rs`).
#[derive(Debug, Args)]
pub struct EvalCommand {
    #[command(subcommand)]
    command: Option<EvalSubcommand>,
    #[command(flatten)]
    run: run::EvalArgs,
}

#[derive(Debug, Subcommand)]
enum EvalSubcommand {
    /// Draw a prompt set (harmful and benign) from the offline assets into a JSONL file.
    Prompts(prompts::PromptsArgs),
    /// Rewrite the report (tables, CSV, JSON, plots) from a run's results.jsonl.
    Report(report::ReportArgs),
}

pub async fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd.command {
        Some(EvalSubcommand::Prompts(args)) => prompts::run(args),
        Some(EvalSubcommand::Report(args)) => report::run(args),
        None => run::run(cmd.run).await,
    }
}

/// A method by its snake-case name.
pub fn method_by_name(name: &str) -> Option<Method> {
    Method::ALL.into_iter().find(|m| m.name() == name)
}
