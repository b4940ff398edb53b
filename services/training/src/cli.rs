//! The `inferenceguard train-head cost|reward` command: trains a demo score head on frozen MiniLM
//! features (see `docs/models.md`), writes it with its provenance and loss curve, prints the
//! held-out metrics.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ig_models::encoder::{EmbedOptions, Pooling};
use ig_models::score_head::{format_layout, parse_layout, Segment};
use crate::data::AllData;
use crate::features::EncoderEmbedder;
use crate::pipeline::{train_cost, train_reward, RunOptions, TRUNK};
use crate::train::TrainConfig;

/// Which head to train.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(missing_docs)]
pub enum Role {
    /// Cost, linear (the weaker baseline): label 1 = unsafe response; calibrated so that
    /// score > 0 means unsafe.
    Cost,
    /// Cost, two-factor on frozen features: harm(prompt) · comply(prompt, response),
    /// calibrated so that score > 0 means unsafe.
    CostPair,
    /// Cost, cross-encoder (the default cost model): the two-factor cost whose comply
    /// factor reads the pair through MiniLM with its last layer fine-tuned.
    CostCross,
    /// Reward: Bradley–Terry on helpful ≻ unhelpful pairs.
    Reward,
}

/// Train a demo cost or reward head on frozen all-MiniLM-L6-v2 features.
#[derive(Debug, Args)]
pub struct TrainHeadArgs {
    /// The head to train.
    role: Role,
    /// Output head file; the loss curve goes next to it (`<stem>.loss.svg`, `.png`).
    /// Default: models/heads/{cost,reward}-minilm-l6.safetensors.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 60)]
    epochs: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// L2 penalty on the weights (added to the mean loss).
    #[arg(long, default_value_t = 1e-3)]
    l2: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Input layout(s) to try, `;`-separated, each comma-separated segments (response,
    /// prompt, prompt_response); the best on held-out data is kept. Default: cost
    /// "response;response,prompt", reward "response;response,prompt;prompt_response".
    #[arg(long)]
    layout: Option<String>,
    /// Seed of everything random (pair construction, batch order).
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Do not read or write the embedding cache (<asset cache>/embeddings).
    #[arg(long)]
    no_embed_cache: bool,
}

/// Runs the command.
pub fn run(args: TrainHeadArgs) -> Result<()> {
    let (role_name, default_layouts) = match args.role {
        Role::Cost => ("cost", "response;response,prompt"),
        Role::CostPair => return run_two_factor(&args),
        Role::CostCross => return run_cross(&args),
        Role::Reward => ("reward", "response;response,prompt;prompt_response"),
    };
    let layouts: Vec<Vec<Segment>> = args
        .layout
        .as_deref()
        .unwrap_or(default_layouts)
        .split(';')
        .map(|l| parse_layout(l).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let layout_names = layouts.iter().map(|l| format_layout(l)).collect::<Vec<_>>().join(";");
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("models/heads/{role_name}-minilm-l6.safetensors")));
    let cache = ig_assets::AssetCache::from_env()?;
    let embed_cache = (!args.no_embed_cache).then(|| cache.root().join("embeddings"));
    let minilm = ig_assets::minilm_dir()?;
    let opts = RunOptions {
        train: TrainConfig { epochs: args.epochs, lr: args.lr, l2: args.l2, batch_size: args.batch_size, seed: args.seed },
        layouts,
        embed: EmbedOptions { pooling: Pooling::Mean, normalize: true, max_tokens: 256 },
        embed_cache,
        command: command_line(&args, role_name, &layout_names, &out),
        git_commit: git_commit(),
    };
    eprintln!("loading data and {TRUNK} ...");
    let data = AllData::load()?;
    let embedder = EncoderEmbedder::load(&minilm, TRUNK, opts.embed)?;
    let trained = match args.role {
        Role::Cost => train_cost(&data, &embedder, &opts)?,
        Role::Reward => train_reward(&data, &embedder, &opts)?,
        Role::CostPair | Role::CostCross => unreachable!("handled above"),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    trained.head.save(&out).with_context(|| format!("writing {}", out.display()))?;
    let svg = out.with_extension("loss.svg");
    let png = out.with_extension("loss.png");
    let title = format!("{role_name} head ({}): loss per epoch", format_layout(&trained.head.meta.input_layout));
    let text = crate::plot::loss_curve(&trained.curve, &title, &svg, &png)?;
    if !text {
        eprintln!("note: no TrueType font found (set IG_PLOT_FONT); the plots have no text");
    }
    println!("{}", serde_json::to_string_pretty(&trained.head.meta.provenance["result"])?);
    for (layout, report) in &trained.per_layout {
        let m = &report["metrics"];
        match args.role {
            Role::Cost => println!(
                "layout {layout:>22}: held-out AUC {}, FPR {}, TPR {}, prompt-level AUC {}, threshold {}",
                m["held_out"]["auc"], m["held_out"]["false_positive_rate"], m["held_out"]["true_positive_rate"],
                m["prompt_level"]["auc"], report["threshold"]
            ),
            Role::Reward => println!(
                "layout {layout:>22}: held-out pairwise accuracy {} on {} pairs",
                m["pairwise_accuracy"], m["n_pairs"]
            ),
            Role::CostPair | Role::CostCross => {}
        }
    }
    println!(
        "wrote {} (layout {}, threshold {}) and {}, {}",
        out.display(),
        format_layout(&trained.head.meta.input_layout),
        trained.head.meta.threshold,
        svg.display(),
        png.display()
    );
    Ok(())
}

/// Default output of the linear cost head, measured side by side with the two-factor one.
const LINEAR_COST_HEAD: &str = "models/heads/cost-minilm-l6.safetensors";

/// `train-head cost-pair`: the two-factor cost head, its loss curves, and its held-out
/// metrics next to the linear head's.
fn run_two_factor(args: &TrainHeadArgs) -> Result<()> {
    if args.layout.is_some() {
        anyhow::bail!("--layout: the two-factor head's layouts are fixed (harm: prompt; comply: response,prompt*response)");
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("models/heads/cost-pair-minilm-l6.safetensors"));
    let cache = ig_assets::AssetCache::from_env()?;
    let opts = RunOptions {
        train: TrainConfig { epochs: args.epochs, lr: args.lr, l2: args.l2, batch_size: args.batch_size, seed: args.seed },
        layouts: Vec::new(),
        embed: EmbedOptions { pooling: Pooling::Mean, normalize: true, max_tokens: 256 },
        embed_cache: (!args.no_embed_cache).then(|| cache.root().join("embeddings")),
        command: command_line(args, "cost-pair", "", &out).replace(" --layout ''", ""),
        git_commit: git_commit(),
    };
    eprintln!("loading data and {TRUNK} ...");
    let data = AllData::load()?;
    let embedder = EncoderEmbedder::load(&ig_assets::minilm_dir()?, TRUNK, opts.embed)?;
    let baseline = std::path::Path::new(LINEAR_COST_HEAD);
    let baseline = if baseline.exists() { Some(ig_models::score_head::ScoreHead::load(baseline)?) } else { None };
    let trained = crate::two_factor::train_two_factor(&data, &embedder, &opts, baseline.as_ref())?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    trained.head.save(&out).with_context(|| format!("writing {}", out.display()))?;
    for (factor, curve) in [("harm", &trained.curves.0), ("comply", &trained.curves.1)] {
        let (svg, png) = (out.with_extension(format!("{factor}.loss.svg")), out.with_extension(format!("{factor}.loss.png")));
        crate::plot::loss_curve(curve, &format!("two-factor cost head, {factor} factor: loss per epoch"), &svg, &png)?;
        eprintln!("wrote {} and {}", svg.display(), png.display());
    }
    let r = &trained.report;
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({
        "harm": {"train_auc": r["harm"]["train_auc"], "held_out": r["harm"]["held_out"]},
        "comply": {"train_auc": r["comply"]["train_auc"], "held_out": r["comply"]["held_out"]},
        "threshold": r["threshold"],
        "calibration": r["calibration"],
        "two_factor": r["metrics"],
        "linear_baseline": r["baseline_linear_head"],
    }))?);
    println!("wrote {} (threshold tau {})", out.display(), trained.head.meta.threshold);
    Ok(())
}

/// Default output of the two-factor head on frozen features, measured side by side.
const TWO_FACTOR_COST_HEAD: &str = "models/heads/cost-pair-minilm-l6.safetensors";

/// `train-head cost-cross`: the cross-encoder cost head, its loss curves, and its held-out
/// metrics next to the frozen-feature heads'.
fn run_cross(args: &TrainHeadArgs) -> Result<()> {
    if args.layout.is_some() {
        anyhow::bail!("--layout: the cross-encoder head reads the pair; its layout is fixed");
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(crate::cross::DEFAULT_HEAD));
    let cache = ig_assets::AssetCache::from_env()?;
    let tune = crate::cross::FineTune { seed: args.seed, ..Default::default() };
    let opts = RunOptions {
        train: TrainConfig { epochs: args.epochs, lr: args.lr, l2: args.l2, batch_size: args.batch_size, seed: args.seed },
        layouts: Vec::new(),
        embed: EmbedOptions { pooling: Pooling::Mean, normalize: true, max_tokens: 256 },
        embed_cache: (!args.no_embed_cache).then(|| cache.root().join("embeddings")),
        command: command_line(args, "cost-cross", "", &out).replace(" --layout ''", ""),
        git_commit: git_commit(),
    };
    eprintln!("loading data and {TRUNK} ...");
    let data = AllData::load()?;
    let minilm = ig_assets::minilm_dir()?;
    let embedder = EncoderEmbedder::load(&minilm, TRUNK, opts.embed)?;
    let mut baselines = Vec::new();
    for (name, path) in [("linear", LINEAR_COST_HEAD), ("two_factor", TWO_FACTOR_COST_HEAD)] {
        let path = std::path::Path::new(path);
        if path.exists() {
            baselines.push((name.to_string(), ig_models::score_head::HeadFile::load(path)?));
        }
    }
    let trained = crate::cross::train_cross(&data, &embedder, &minilm, &opts, &tune, &baselines)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    trained.head.save(&out).with_context(|| format!("writing {}", out.display()))?;
    for (part, curve) in [("harm", &trained.curves.0), ("comply", &trained.curves.1)] {
        let (svg, png) = (out.with_extension(format!("{part}.loss.svg")), out.with_extension(format!("{part}.loss.png")));
        crate::plot::loss_curve(curve, &format!("cross-encoder cost head, {part}: loss per epoch"), &svg, &png)?;
        eprintln!("wrote {} and {}", svg.display(), png.display());
    }
    let r = &trained.report;
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({
        "harm": {"train_auc": r["harm"]["train_auc"], "held_out": r["harm"]["held_out"]},
        "comply": r["comply"],
        "threshold": r["threshold"],
        "calibration": r["calibration"],
        "cross_encoder": r["metrics"],
        "baselines": r["baselines"],
    }))?);
    println!("wrote {} (threshold tau {})", out.display(), trained.head.meta.threshold);
    Ok(())
}

/// The command that reproduces this run, every setting spelled out.
fn command_line(args: &TrainHeadArgs, role: &str, layouts: &str, out: &std::path::Path) -> String {
    format!(
        "inferenceguard train-head {role} --out {} --epochs {} --lr {} --l2 {} --batch-size {} --layout '{layouts}' --seed {}",
        out.display(),
        args.epochs,
        args.lr,
        args.l2,
        args.batch_size,
        args.seed
    )
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
