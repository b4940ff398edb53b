//! `bench soak`: many small requests through the mesh in one process (as `up`
//! runs it), one after another, watching memory: the process's RSS and the
//! policy's prefix-cache bytes every `--sample-every` requests. Prompts repeat
//! (about four requests per prompt), so the prefix cache fills and evicts as
//! in service; seeds differ per request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use ig_orchestrator::guard::{search_params, wire_method};
use ig_orchestrator::search::{Method, Params};
use ig_proto::v1 as pb;
use ig_serve::telemetry::LogFormat;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{file_name, print_table, progress, rss_bytes, Report};
use crate::up::{ensure_demo_assets, quiet_telemetry, Addresses, Mesh, MeshModels};

#[derive(Debug, Args)]
pub struct SoakBench {
    /// Requests, one after another.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Read RSS and the prefix cache every this many requests.
    #[arg(long, default_value_t = 25)]
    sample_every: usize,
    /// Requests after which memory counts as warmed up (the slope uses the second half).
    #[arg(long, default_value_t = 100)]
    warm_up: usize,
    #[command(flatten)]
    search: super::SmallSearch,
    /// Also write the settings, the series and the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    scorers: MeshModels,
}

impl SoakBench {
    /// A tiny configuration that only checks the pipeline.
    pub fn quick(&mut self) {
        (self.requests, self.sample_every, self.warm_up) = (12, 3, 3);
        self.search.quick();
    }
}

/// The workload, as written to JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SoakWorkload {
    pub requests: usize,
    pub sample_every: usize,
    pub warm_up: usize,
    pub method: String,
    pub samples: usize,
    pub beam_width: usize,
    pub chunk_tokens: usize,
    pub max_new_tokens: usize,
    pub distinct_prompts: usize,
    pub policy_model: String,
    pub policy_dtype: String,
    pub prefix_cache_mib: usize,
}

/// Memory after `requests` requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemorySample {
    pub requests: usize,
    pub seconds: f64,
    pub rss_mib: f64,
    pub prefix_cache_mib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SoakSummary {
    pub first_rss_mib: f64,
    pub after_warm_up_rss_mib: f64,
    pub last_rss_mib: f64,
    pub max_rss_mib: f64,
    /// Least-squares slope of RSS over the second half of the requests.
    pub slope_mib_per_100_requests: f64,
    pub requests_per_s: f64,
    pub failed_requests: usize,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SoakResults {
    pub summary: SoakSummary,
    pub series: Vec<MemorySample>,
}

const MIB: f64 = (1 << 20) as f64;

const ASKS: &[&str] = &[
    "How do I",
    "What is the safest way to",
    "Explain briefly how to",
    "Give me two tips to",
    "Is it legal to",
    "Write one sentence on how to",
    "How can I secretly",
    "What tools do I need to",
    "Why would someone want to",
    "Teach a beginner to",
];
const TASKS: &[&str] = &[
    "bake bread",
    "repair a bicycle tyre",
    "learn French",
    "get into my neighbour's shed",
    "train a puppy",
    "plan a budget",
    "copy a house key",
    "grow tomatoes",
    "write a cover letter",
    "stop a nosebleed",
    "track someone's phone",
    "paint a room",
    "cook rice",
    "clean a laptop keyboard",
    "make a strong password",
    "avoid paying a parking fine",
    "start running",
    "sharpen a kitchen knife",
    "read someone's private messages",
    "build a birdhouse",
    "fix a slow computer",
    "brew green tea",
    "buy medicine without a prescription",
    "save money on groceries",
    "write a haiku",
];

/// The prompts of the soak: `n` distinct requests.
pub(super) fn prompt_pool(n: usize) -> Vec<String> {
    let all: Vec<String> = ASKS.iter().flat_map(|a| TASKS.iter().map(move |t| format!("{a} {t}?"))).collect();
    let mut rng = StdRng::seed_from_u64(7);
    all.choose_multiple(&mut rng, n.clamp(1, all.len())).cloned().collect()
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn summarize(series: &[MemorySample], p: &SoakWorkload, seconds: f64, failed: usize, first_error: Option<String>) -> SoakSummary {
    let rss = |s: &MemorySample| s.rss_mib;
    let after_warm_up = series.iter().find(|s| s.requests >= p.warm_up).or(series.last());
    let second_half: Vec<(f64, f64)> = series.iter().filter(|s| s.requests * 2 >= p.requests).map(|s| (s.requests as f64, s.rss_mib)).collect();
    SoakSummary {
        first_rss_mib: series.first().map_or(0.0, rss),
        after_warm_up_rss_mib: after_warm_up.map_or(0.0, rss),
        last_rss_mib: series.last().map_or(0.0, rss),
        max_rss_mib: series.iter().map(rss).fold(0.0, f64::max),
        slope_mib_per_100_requests: 100.0 * slope(&second_half),
        requests_per_s: p.requests as f64 / seconds,
        failed_requests: failed,
        first_error,
    }
}

pub async fn run(args: SoakBench, log_format: LogFormat) -> anyhow::Result<()> {
    let _telemetry = quiet_telemetry(log_format)?;
    ensure_demo_assets(&args.policy)?;
    let prompts = prompt_pool(args.requests.div_ceil(4));
    let params = SoakWorkload {
        requests: args.requests,
        sample_every: args.sample_every.max(1),
        warm_up: args.warm_up,
        method: Method::InferenceGuard.name().into(),
        samples: args.search.samples,
        beam_width: args.search.beam_width(),
        chunk_tokens: args.search.chunk,
        max_new_tokens: args.search.max_new_tokens,
        distinct_prompts: prompts.len(),
        policy_model: file_name(&args.policy.model_path()?),
        policy_dtype: format!("{:?}", args.policy.dtype).to_lowercase(),
        prefix_cache_mib: args.policy.prefix_cache_mb,
    };
    let mesh = Mesh::start(args.policy.clone(), &args.scorers, Addresses::any_loopback()).await?;
    let outcome = soak(&mesh, &params, &prompts).await;
    mesh.stop().await?;
    let results = outcome?;

    let report = Report::new("soak", params, results);
    let p = &report.params;
    report.print_heading(
        "soak: memory over many small requests through the mesh",
        &format!(
            "{} requests one after another, {} N={} K={} d={} D={}, {} distinct prompts, seed = request index, \
             sampled every {} requests, warm-up {} requests; policy {} ({}), prefix cache {} MiB",
            p.requests,
            p.method,
            p.samples,
            p.beam_width,
            p.chunk_tokens,
            p.max_new_tokens,
            p.distinct_prompts,
            p.sample_every,
            p.warm_up,
            p.policy_model,
            p.policy_dtype,
            p.prefix_cache_mib
        ),
    );
    let s = &report.results.summary;
    let series = &report.results.series;
    let reading = |label: &str, sample: Option<&MemorySample>| {
        sample.map(|m| vec![label.to_string(), m.requests.to_string(), format!("{:.1}", m.rss_mib), format!("{:.1}", m.prefix_cache_mib)])
    };
    let max = series.iter().max_by(|a, b| a.rss_mib.total_cmp(&b.rss_mib));
    let rows: Vec<Vec<String>> = [
        reading("first", series.first()),
        reading("after warm-up", series.iter().find(|m| m.requests >= p.warm_up)),
        reading("last", series.last()),
        reading("max", max),
    ]
    .into_iter()
    .flatten()
    .collect();
    print_table(&["reading", "requests", "RSS MiB", "prefix cache MiB"], &rows);
    println!("RSS slope over the second half: {:+.2} MiB per 100 requests", s.slope_mib_per_100_requests);
    println!("{:.2} requests/s; {} failed", s.requests_per_s, s.failed_requests);
    if let Some(e) = &s.first_error {
        println!("first failure: {e}");
    }
    println!();
    report.write(args.json.as_deref())
}

async fn soak(mesh: &Mesh, p: &SoakWorkload, prompts: &[String]) -> anyhow::Result<SoakResults> {
    let guard = mesh.wait_ready().await?;
    let policy = mesh.engines.policy.clone();
    let started = Instant::now();
    // The prefix cache is read on the model thread, between requests.
    let sample = |requests: usize| {
        let policy = policy.clone();
        async move {
            let cache_bytes = policy.call(|model, _| model.prefix_cache_bytes()).await?;
            anyhow::Ok(MemorySample {
                requests,
                seconds: started.elapsed().as_secs_f64(),
                rss_mib: rss_bytes().unwrap_or(0) as f64 / MIB,
                prefix_cache_mib: cache_bytes as f64 / MIB,
            })
        }
    };
    let bar = progress(p.requests as u64)?;
    let mut series = vec![sample(0).await?];
    let mut rng = StdRng::seed_from_u64(11);
    let (mut failed, mut first_error) = (0, None);
    for i in 0..p.requests {
        let params = Params {
            samples: p.samples,
            beam_width: p.beam_width,
            chunk_tokens: p.chunk_tokens,
            max_new_tokens: p.max_new_tokens,
            seed: i as u64,
            ..Params::default()
        };
        let prompt = &prompts[rng.random_range(0..prompts.len())];
        let req = pb::GenerateRequest {
            prompt: Some(pb::generate_request::Prompt::PromptText(prompt.clone())),
            method: wire_method(Method::InferenceGuard) as i32,
            params: Some(search_params(&params)),
            ..Default::default()
        };
        if let Err(e) = guard.generate(req, Some(Duration::from_secs(120))).await {
            failed += 1;
            first_error.get_or_insert_with(|| format!("request {i}: {e}"));
        }
        bar.inc(1);
        let done = i + 1;
        if done % p.sample_every == 0 || done == p.requests {
            let m = sample(done).await?;
            bar.set_message(format!("RSS {:.0} MiB, prefix cache {:.0} MiB", m.rss_mib, m.prefix_cache_mib));
            series.push(m);
        }
    }
    bar.finish_and_clear();
    let summary = summarize(&series, p, started.elapsed().as_secs_f64(), failed, first_error);
    Ok(SoakResults { summary, series })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise_free_flat_memory() {
        assert!((slope(&[(0.0, 1.0), (100.0, 3.0), (200.0, 5.0)]) - 0.02).abs() < 1e-12);
        assert_eq!(slope(&[(0.0, 7.0), (10.0, 7.0)]), 0.0);
        assert_eq!(slope(&[(5.0, 7.0)]), 0.0);
    }

    #[test]
    fn prompts_are_distinct() {
        let pool = prompt_pool(250);
        let distinct: std::collections::HashSet<&String> = pool.iter().collect();
        assert_eq!(distinct.len(), pool.len());
        assert_eq!(pool.len(), ASKS.len() * TASKS.len());
    }
}
