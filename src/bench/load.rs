//! `bench load`: C concurrent clients for T seconds through the mesh (as `up` runs it), each
//! sending its next request as soon as the last one is answered. Per client count: requests
//! per second, p50/p99 latency of the answered ones, errors by status code, and the
//! process's RSS before and after. Below the guard's admission limit
//! (`max_concurrent_requests`) no request should fail; above it the excess is refused at
//! once with RESOURCE_EXHAUSTED (the client waits a moment and sends again), never queued
//! without bound.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ig_orchestrator::guard::{search_params, wire_method};
use ig_orchestrator::search::{Method, Params};
use ig_orchestrator::{ClientError, GuardClient, GuardLimits};
use ig_proto::v1 as pb;
use ig_serve::telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use super::soak::prompt_pool;
use super::{file_name, list, print_table, rss_bytes, Report};
use crate::up::{ensure_demo_assets, quiet_telemetry, Addresses, Mesh, MeshModels};

#[derive(Debug, Args)]
pub struct LoadBench {
    /// Concurrent clients, one run per count (the guard admits 16 requests at once).
    #[arg(long, value_delimiter = ',', default_values_t = vec![4, 16, 48])]
    clients: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    #[command(flatten)]
    search: super::SmallSearch,
    /// Also write the settings and the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    scorers: MeshModels,
}

impl LoadBench {
    /// A tiny configuration that only checks the pipeline.
    pub fn quick(&mut self) {
        (self.clients, self.seconds) = (vec![2, 20], 5.0);
        self.search.quick();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadWorkload {
    pub clients: Vec<usize>,
    pub seconds: f64,
    pub method: String,
    pub samples: usize,
    pub beam_width: usize,
    pub chunk_tokens: usize,
    pub max_new_tokens: usize,
    pub admission_limit: usize,
    pub policy_model: String,
    pub policy_dtype: String,
}

/// One run: `clients` clients for the run's seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadRun {
    pub clients: usize,
    pub seconds: f64,
    pub answered: usize,
    pub answered_per_s: f64,
    pub p50_s: f64,
    pub p99_s: f64,
    /// Failed calls by gRPC status code name.
    pub errors: BTreeMap<String, usize>,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
}

/// After a refusal, a client waits this long before sending again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

const MIB: f64 = (1 << 20) as f64;

pub async fn run(args: LoadBench, log_format: LogFormat) -> anyhow::Result<()> {
    let _telemetry = quiet_telemetry(log_format)?;
    ensure_demo_assets(&args.policy)?;
    if args.clients.is_empty() || args.clients.contains(&0) {
        anyhow::bail!("--clients: give counts >= 1, e.g. 4,16,48");
    }
    let duration = Duration::try_from_secs_f64(args.seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--seconds: must be > 0, got {}", args.seconds))?;
    let params = LoadWorkload {
        clients: args.clients.clone(),
        seconds: args.seconds,
        method: Method::InferenceGuard.name().into(),
        samples: args.search.samples,
        beam_width: args.search.beam_width(),
        chunk_tokens: args.search.chunk,
        max_new_tokens: args.search.max_new_tokens,
        admission_limit: GuardLimits::default().max_concurrent_requests,
        policy_model: file_name(&args.policy.model_path()?),
        policy_dtype: format!("{:?}", args.policy.dtype).to_lowercase(),
    };
    let mesh = Mesh::start(args.policy.clone(), &args.scorers, Addresses::any_loopback()).await?;
    let outcome = async {
        let guard = mesh.wait_ready().await?;
        let mut runs = Vec::new();
        for &clients in &args.clients {
            runs.push(load(&guard, &params, clients, duration).await);
        }
        anyhow::Ok(runs)
    }
    .await;
    mesh.stop().await?;
    let runs = outcome?;

    let report = Report::new("load", params, runs);
    let p = &report.params;
    report.print_heading(
        "load: concurrent clients through the mesh",
        &format!(
            "clients {} for {} s each, {} N={} K={} d={} D={}, guard admission limit {}; policy {} ({})",
            list(&p.clients),
            p.seconds,
            p.method,
            p.samples,
            p.beam_width,
            p.chunk_tokens,
            p.max_new_tokens,
            p.admission_limit,
            p.policy_model,
            p.policy_dtype
        ),
    );
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            let errors = if r.errors.is_empty() {
                "0".to_string()
            } else {
                r.errors.iter().map(|(code, n)| format!("{n} {code}")).collect::<Vec<_>>().join(", ")
            };
            vec![
                r.clients.to_string(),
                r.answered.to_string(),
                format!("{:.2}", r.answered_per_s),
                format!("{:.2}", r.p50_s),
                format!("{:.2}", r.p99_s),
                errors,
                format!("{:.0} → {:.0}", r.rss_before_mib, r.rss_after_mib),
            ]
        })
        .collect();
    print_table(&["clients", "answered", "answered/s", "p50 s", "p99 s", "errors", "RSS MiB before → after"], &rows);
    report.write(args.json.as_deref())
}

/// `clients` clients sending one request after another until `duration` is over (a request
/// under way then is still waited for and counted).
async fn load(guard: &GuardClient, p: &LoadWorkload, clients: usize, duration: Duration) -> LoadRun {
    let prompts = Arc::new(prompt_pool(256));
    let rss_before = rss_bytes().unwrap_or(0) as f64 / MIB;
    let bar = super::progress(duration.as_secs())
        .unwrap_or_else(|_| indicatif::ProgressBar::hidden())
        .with_message(format!("{clients} clients"));
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (guard, prompts, p) = (guard.clone(), prompts.clone(), p.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), BTreeMap::<String, usize>::new());
                let mut i = c;
                while Instant::now() < end {
                    let params = Params {
                        samples: p.samples,
                        beam_width: p.beam_width,
                        chunk_tokens: p.chunk_tokens,
                        max_new_tokens: p.max_new_tokens,
                        seed: i as u64,
                        ..Params::default()
                    };
                    let req = pb::GenerateRequest {
                        prompt: Some(pb::generate_request::Prompt::PromptText(prompts[i % prompts.len()].clone())),
                        method: wire_method(Method::InferenceGuard) as i32,
                        params: Some(search_params(&params)),
                        ..Default::default()
                    };
                    let sent = Instant::now();
                    match guard.generate(req, Some(Duration::from_secs(300))).await {
                        Ok(_) => latencies.push(sent.elapsed().as_secs_f64()),
                        Err(e) => {
                            let code = match &e {
                                ClientError::Status(s) => format!("{:?}", s.code()),
                                other => other.to_string(),
                            };
                            *errors.entry(code).or_default() += 1;
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                    }
                    i += clients;
                }
                (latencies, errors)
            })
        })
        .collect();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    let (mut latencies, mut errors) = (Vec::new(), BTreeMap::<String, usize>::new());
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            for (code, n) in e {
                *errors.entry(code).or_default() += n;
            }
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    LoadRun {
        clients,
        seconds,
        answered: latencies.len(),
        answered_per_s: latencies.len() as f64 / seconds,
        p50_s: quantile(&latencies, 0.50),
        p99_s: quantile(&latencies, 0.99),
        errors,
        rss_before_mib: rss_before,
        rss_after_mib: rss_bytes().unwrap_or(0) as f64 / MIB,
    }
}

/// The `q` quantile of sorted values (nearest rank; 0 for none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
