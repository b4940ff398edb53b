//! The `train-head` command without the rest of the CLI:
//! `cargo run --release -p ig-training --example train_head -- cost` is
//! `inferenceguard train-head cost`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ig_training::cli::TrainHeadArgs,
}

fn main() -> anyhow::Result<()> {
    ig_training::cli::run(Cli::parse().args)
}
