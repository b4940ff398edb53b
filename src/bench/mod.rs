//! `inferenceguard bench`: the project's benchmark suite (measurements, not tests).
//!
//! Every sub-benchmark runs one warm-up, then `--runs` measured runs of each
//! cell, and reports the median. It prints a markdown table headed by the
//! machine and the exact parameters, and `--json PATH` writes the same
//! (machine and parameters included) for `bench plot`.
//!
//! - `policy`: prefill and batched decode tokens/s of the policy model
//!   in-process, per weight dtype and batch size; `--peer` also runs llama.cpp
//!   on the same GGUF and workload and prints the ratios.
//! - `scorer`: items/s of the default cost model in-process, per batch size.
//! - `search`: seconds per prompt of a search through the mesh on loopback,
//!   over a grid of N (samples per step) and D (most new tokens);
//!   `--in-process` runs the same search with the roles called directly,
//!   `--compare` runs both, interleaved, and prints the mesh's overhead.
//! - `load`: C concurrent clients for T seconds through the mesh: throughput,
//!   p50/p99 latency, errors by code, RSS before and after.
//! - `soak`: many small requests through the mesh; the process's RSS and the
//!   policy's prefix-cache bytes along the way.
//! - `plot`: SVG and PNG charts from the JSON files of the others.
//! - `all`: every benchmark with its defaults into one directory (the soak
//!   first, so that its RSS is the mesh's alone), then the charts (the
//!   command `docs/benchmarks.md` cites).

mod llamacpp;
mod load;
mod plot;
mod policy;
mod scorer;
mod search;
mod shaped;
mod soak;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use ig_serve::telemetry::LogFormat;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Prefill and batched decode tokens/s of the policy model per dtype and batch (--peer: and llama.cpp's).
    Policy(policy::PolicyBench),
    /// Items/s of the default cost model per batch size, in-process.
    Scorer(scorer::ScorerBench),
    /// Seconds per prompt of a search through the mesh over an N x D grid (--in-process, --compare).
    Search(search::SearchBench),
    /// Many small requests through the mesh: RSS and prefix-cache bytes over time.
    Soak(soak::SoakBench),
    /// C concurrent clients for T seconds through the mesh: throughput, p50/p99, errors, RSS.
    Load(load::LoadBench),
    /// SVG and PNG charts from the JSON files the other benchmarks wrote.
    Plot(plot::PlotArgs),
    /// Random-weight checkpoints of the paper's shapes (a Llama-3-8B policy, 7B cost and reward models) for the GPU benchmarks.
    ShapedModels(shaped::ShapedModelsArgs),
    /// Every benchmark with its defaults, JSON files and charts into one directory.
    All(AllArgs),
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Directory for the JSON files and the charts (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Tiny configurations that check the whole pipeline in minutes (not measurements).
    #[arg(long)]
    quick: bool,
}

pub async fn run(target: BenchTarget, log_format: LogFormat) -> anyhow::Result<()> {
    match target {
        BenchTarget::Policy(args) => policy::run(args),
        BenchTarget::Scorer(args) => scorer::run(args),
        BenchTarget::Search(args) => search::run(args, log_format).await,
        BenchTarget::Soak(args) => soak::run(args, log_format).await,
        BenchTarget::Load(args) => load::run(args, log_format).await,
        BenchTarget::Plot(args) => plot::run(args),
        BenchTarget::ShapedModels(args) => shaped::run(args),
        BenchTarget::All(args) => all(args, log_format).await,
    }
}

/// A benchmark's flags as if given none (clap's definitions stay the one
/// source of defaults).
fn defaults<T: Args>() -> T {
    let matches = T::augment_args(clap::Command::new("bench")).get_matches_from(["bench"]);
    T::from_arg_matches(&matches).expect("every flag of a benchmark has a default")
}

async fn all(args: AllArgs, log_format: LogFormat) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("--out {}: {e}", args.out.display()))?;
    let json = |name: &str| Some(args.out.join(format!("{name}.json")));

    let mut policy: policy::PolicyBench = defaults();
    let mut scorer: scorer::ScorerBench = defaults();
    let mut search: search::SearchBench = defaults();
    let mut soak: soak::SoakBench = defaults();
    let mut load: load::LoadBench = defaults();
    if args.quick {
        policy.quick();
        scorer.quick();
        search.quick();
        soak.quick();
        load.quick();
    }
    (policy.peer, policy.json) = (true, json("policy"));
    scorer.json = json("scorer");
    (search.compare, search.json) = (true, json("search"));
    soak.json = json("soak");
    load.json = json("load");

    // The soak first: its RSS is the whole process's, so nothing else may have run yet.
    soak::run(soak, log_format).await?;
    println!();
    load::run(load, log_format).await?;
    println!();
    policy::run(policy)?;
    println!();
    scorer::run(scorer)?;
    println!();
    search::run(search, log_format).await?;
    println!();
    plot::run(plot::PlotArgs { input: args.out.clone(), output: args.out })
}

/// The small `inference_guard` search each request of `soak` and `load` runs.
#[derive(Debug, Clone, Args)]
pub struct SmallSearch {
    /// Candidates per step [N] of each request (inference_guard; K = N/4).
    #[arg(long = "n", default_value_t = 4)]
    samples: usize,
    /// Tokens per chunk [d].
    #[arg(long, default_value_t = 8)]
    chunk: usize,
    /// Most response tokens [D].
    #[arg(long = "d", default_value_t = 16)]
    max_new_tokens: usize,
}

impl SmallSearch {
    /// A tiny one that only checks a pipeline.
    fn quick(&mut self) {
        (self.max_new_tokens, self.chunk) = (8, 4);
    }

    fn beam_width(&self) -> usize {
        (self.samples / 4).max(1)
    }
}

/// The median (the mean of the two middle values for an even count).
fn median(xs: &[f64]) -> f64 {
    assert!(!xs.is_empty(), "the median of nothing");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// What the numbers were measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    /// CPU model name (`/proc/cpuinfo`).
    cpu: String,
    /// Cores this process may use.
    cores: usize,
    /// Threads candle's CPU kernels use (`--threads`).
    candle_threads: usize,
    /// Physical memory, GiB (`/proc/meminfo`).
    memory_gib: f64,
}

impl Machine {
    fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(kib).unwrap_or(0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            candle_threads: ig_models::num_threads(),
            memory_gib: memory_kib as f64 / (1 << 20) as f64,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {} cores, {} candle threads, {:.0} GiB", self.cpu, self.cores, self.candle_threads, self.memory_gib)
    }
}

/// A `/proc` size field such as `  12345 kB`, in KiB.
fn kib(field: &str) -> Option<u64> {
    field.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// This process's resident set size in bytes (`VmRSS`).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(kib).map(|k| k * 1024)
}

/// What one benchmark writes with `--json` (and `bench plot` reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report<P, R> {
    /// Which benchmark: `policy`, `scorer`, `search` or `soak`.
    bench: String,
    machine: Machine,
    params: P,
    results: R,
}

impl<P: Serialize, R: Serialize> Report<P, R> {
    fn new(bench: &str, params: P, results: R) -> Self {
        Self { bench: bench.into(), machine: Machine::detect(), params, results }
    }

    /// Prints the heading every table starts with.
    fn print_heading(&self, title: &str, parameters: &str) {
        println!("## {title}");
        println!();
        println!("machine: {}", self.machine);
        println!("parameters: {parameters}");
        println!();
    }

    /// Writes the report to `path` when one is given.
    fn write(&self, path: Option<&Path>) -> anyhow::Result<()> {
        if let Some(path) = path {
            std::fs::write(path, serde_json::to_string_pretty(self)?).map_err(|e| anyhow::anyhow!("--json {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// A markdown table: the first column left-aligned, the others (numbers) right.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    let rule: Vec<&str> = (0..header.len()).map(|i| if i == 0 { "---" } else { "---:" }).collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

/// A progress bar of `len` steps (on stderr, cleared when done).
fn progress(len: u64) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(len).with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} / ~{eta}]")?);
    bar.enable_steady_tick(Duration::from_millis(250));
    Ok(bar)
}

/// Runs `measure` once to warm up and then `runs` times, ticking `bar` each
/// time; the measured values. `measure` gets the run's index (0: the warm-up).
fn warm_then_measure<T>(runs: usize, bar: &ProgressBar, mut measure: impl FnMut(usize) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    let mut measured = Vec::with_capacity(runs);
    for run in 0..=runs {
        let value = measure(run)?;
        if run > 0 {
            measured.push(value);
        }
        bar.inc(1);
    }
    Ok(measured)
}

/// A list as the command line takes it: `1,8,32`.
fn list<T: ToString>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// The file name of a model path, for headings.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn proc_sizes_parse() {
        assert_eq!(kib("   123456 kB"), Some(123456));
        assert_eq!(kib("12"), None);
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn every_benchmark_has_defaults() {
        let search: search::SearchBench = defaults();
        assert_eq!(search.samples, vec![8, 16, 32]);
        let _: policy::PolicyBench = defaults();
        let _: scorer::ScorerBench = defaults();
        let _: soak::SoakBench = defaults();
        let _: load::LoadBench = defaults();
    }
}
