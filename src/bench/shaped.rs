//! `bench shaped-models`: random-weight checkpoints of real model shapes, for `bench
//! search`, `bench policy` and `bench scorer` on a GPU ([`ig_models::shaped_checkpoint`]):
//! by default a Llama-3-8B-shaped policy and 7B-shaped `LlamaForScore` cost and reward
//! models (the paper's sizes).

use std::path::PathBuf;

use clap::Args;
use ig_models::shaped_checkpoint::{write_shaped_checkpoint, write_shaped_config, ModelShape, ShapedDtype, ShapedHead};

use super::progress;

#[derive(Debug, Args)]
pub struct ShapedModelsArgs {
    /// Directory to write `policy/`, `cost/` and `reward/` into (created).
    #[arg(long)]
    out: PathBuf,
    /// The policy's shape: llama-3-8b (the paper's size) or smollm2-135m (the demo policy's).
    #[arg(long, default_value = "llama-3-8b")]
    policy_shape: ModelShape,
    /// The cost and reward models' shape: llama-7b (the paper's beaver-7b scorers), or
    /// none to write the policy alone.
    #[arg(long, default_value = "llama-7b")]
    scorer_shape: String,
    /// Weight dtype written: bf16 (as the paper's checkpoints ship), f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: ShapedDtype,
    /// Blocks of each model (default: the real count, 32); fewer make a quick, smaller check.
    #[arg(long)]
    layers: Option<usize>,
    /// Write the reward model's own weights instead of hard-linking the cost model's (its
    /// config says reward either way; a forward pass costs the same whatever the weights,
    /// and the link saves 13 GB of disk).
    #[arg(long)]
    separate_reward_weights: bool,
    /// Seed of the weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: ShapedModelsArgs) -> anyhow::Result<()> {
    if args.layers == Some(0) {
        anyhow::bail!("--layers 0: a model needs at least one block");
    }
    let with_layers = |shape: &ModelShape| ModelShape { num_layers: args.layers.unwrap_or(shape.num_layers), ..shape.clone() };
    let policy = with_layers(&args.policy_shape);
    let scorer = match args.scorer_shape.as_str() {
        "none" => None,
        name => Some(name.parse::<ModelShape>().map_err(|e| anyhow::anyhow!("--scorer-shape {e}, or none"))?),
    };
    let Some(scorer) = scorer.as_ref().map(with_layers) else {
        let bar = progress(3 + 9 * policy.num_layers as u64)?;
        let dir = write_shaped_checkpoint(&policy, ShapedHead::CausalLm, args.dtype, &args.out.join("policy"), args.seed, &|n, _| bar.set_position(n))?;
        bar.finish_and_clear();
        println!("policy: {}", dir.display());
        return Ok(());
    };
    let bytes = |shape: &ModelShape, head| shape.parameters(&head) as f64 * if args.dtype == ShapedDtype::F32 { 4.0 } else { 2.0 };
    let reward_copies = if args.separate_reward_weights { 2.0 } else { 1.0 };
    let total = bytes(&policy, ShapedHead::CausalLm) + reward_copies * bytes(&scorer, ShapedHead::Score("cost"));
    eprintln!(
        "writing a {}-shaped policy and {}-shaped cost and reward models ({} layers, {:?}): {:.1} GB into {}",
        policy.name,
        scorer.name,
        policy.num_layers,
        args.dtype,
        total / 1e9,
        args.out.display()
    );
    let tensors = 3 + 9 * policy.num_layers as u64;
    let bar = progress(tensors * if args.separate_reward_weights { 3 } else { 2 })?;
    let written = std::sync::atomic::AtomicU64::new(0);
    let tick = |_: u64, _: u64| bar.set_position(written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
    bar.set_message("policy");
    let policy_dir = write_shaped_checkpoint(&policy, ShapedHead::CausalLm, args.dtype, &args.out.join("policy"), args.seed, &tick)?;
    bar.set_message("cost");
    let cost_dir = write_shaped_checkpoint(&scorer, ShapedHead::Score("cost"), args.dtype, &args.out.join("cost"), args.seed + 1, &tick)?;
    bar.set_message("reward");
    let reward_dir = if args.separate_reward_weights {
        write_shaped_checkpoint(&scorer, ShapedHead::Score("reward"), args.dtype, &args.out.join("reward"), args.seed + 2, &tick)?
    } else {
        // The cost model's weights under the reward model's config.
        let dir = args.out.join("reward");
        write_shaped_config(&scorer, ShapedHead::Score("reward"), args.dtype, &dir)?;
        let weights = dir.join("model.safetensors");
        if weights.exists() {
            std::fs::remove_file(&weights)?;
        }
        std::fs::hard_link(cost_dir.join("model.safetensors"), &weights)?;
        dir
    };
    bar.finish_and_clear();
    println!("policy: {}", policy_dir.display());
    println!("cost:   {}", cost_dir.display());
    println!("reward: {}", reward_dir.display());
    println!(
        "run: inferenceguard bench search --model {} --cost-model {} --reward-model {} --policy-dtype native --scorer-dtype native --no-critics --no-extra-cost-models",
        policy_dir.display(),
        cost_dir.display(),
        reward_dir.display()
    );
    Ok(())
}
