//! `inferenceguard bench`: throughput measurements (not tests).
//!
//! `bench policy` runs the policy model in-process: for each weight dtype and
//! batch size B, prefill of B prompts of P tokens in one pass, then D decode
//! steps of B rows. Each number is the median of `--runs` runs after one
//! warm-up run.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use ig_models::kv_cache::KvCache;
use ig_models::llama::{Llama, Positions, WeightDtype};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Prefill and batched decode tokens/s of the policy model, per dtype and batch.
    Policy(PolicyBench),
}

#[derive(Debug, Args)]
pub struct PolicyBench {
    /// Model file or directory (default: the demo SmolLM2 GGUF).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Weight dtypes to compare.
    #[arg(long, value_delimiter = ',', default_value = "native,q8_0,f32")]
    dtypes: Vec<WeightDtype>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    batches: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Decode steps per run.
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Measured runs per cell (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(target: BenchTarget) -> anyhow::Result<()> {
    match target {
        BenchTarget::Policy(args) => policy(args),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

struct Cell {
    dtype: String,
    batch: usize,
    prefill_tps: f64,
    decode_tps: f64,
    step_ms: f64,
}

/// One run: prefill `batch` prompts, then `steps` decode steps; returns
/// (prefill seconds, decode seconds).
fn one_run(model: &Llama, batch: usize, prompt: &[u32], steps: usize) -> anyhow::Result<(f64, f64)> {
    let mut cache: KvCache = model.new_cache();
    let tokens: Vec<u32> = (0..batch).flat_map(|_| prompt.iter().copied()).collect();
    let t0 = Instant::now();
    model.forward(&tokens, batch, &mut cache, Positions::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..steps {
        // Token ids vary per row and step so no path can short-cut them.
        let next: Vec<u32> = (0..batch).map(|r| (100 + r * 7 + step * 13) as u32 % 10_000 + 100).collect();
        model.forward(&next, batch, &mut cache, Positions::Last)?;
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

fn policy(args: PolicyBench) -> anyhow::Result<()> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => ig_assets::smollm2_gguf()?,
    };
    let runs = args.runs.max(1);
    let total = (args.dtypes.len() * args.batches.len() * (runs + 1)) as u64;
    let bar = ProgressBar::new(total).with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} / ~{eta}]")?);
    let mut cells = Vec::new();
    for &dtype in &args.dtypes {
        bar.set_message(format!("loading {dtype:?}"));
        let model = if path.is_dir() {
            Llama::from_safetensors_dir(&path, dtype, &candle_cpu())?
        } else {
            Llama::from_gguf(&path, dtype, &candle_cpu())?.0
        };
        let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| 200 + (i * 37) % 5000).collect();
        for &batch in &args.batches {
            bar.set_message(format!("{} batch {batch}", model.weight_dtype()));
            let (mut pre, mut dec) = (Vec::new(), Vec::new());
            for run in 0..=runs {
                let (p, d) = one_run(&model, batch, &prompt, args.decode_steps)?;
                if run > 0 {
                    pre.push(p);
                    dec.push(d);
                }
                bar.inc(1);
            }
            let (p, d) = (median(pre), median(dec));
            cells.push(Cell {
                dtype: model.weight_dtype().to_string(),
                batch,
                prefill_tps: (batch * args.prompt_tokens) as f64 / p,
                decode_tps: (batch * args.decode_steps) as f64 / d,
                step_ms: d * 1e3 / args.decode_steps as f64,
            });
        }
    }
    bar.finish_and_clear();
    println!(
        "policy bench: {} | prompt {} tokens, {} decode steps, median of {} runs, {} threads",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        args.prompt_tokens,
        args.decode_steps,
        runs,
        candle_core_threads()
    );
    println!("| dtype | batch | prefill tok/s | decode tok/s | ms/step |");
    println!("|---|---:|---:|---:|---:|");
    for c in &cells {
        println!("| {} | {} | {:.0} | {:.1} | {:.1} |", c.dtype, c.batch, c.prefill_tps, c.decode_tps, c.step_ms);
    }
    if let Some(out) = args.json {
        let rows: Vec<serde_json::Value> = cells
            .iter()
            .map(|c| serde_json::json!({"dtype": c.dtype, "batch": c.batch, "prefill_tokens_per_s": c.prefill_tps,
                "decode_tokens_per_s": c.decode_tps, "ms_per_step": c.step_ms}))
            .collect();
        std::fs::write(&out, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

fn candle_cpu() -> ig_models::Device {
    ig_models::Device::Cpu
}

fn candle_core_threads() -> usize {
    ig_models::num_threads()
}
