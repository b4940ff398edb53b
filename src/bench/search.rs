//! `bench search`: seconds per prompt of one search method over a grid of N
//! (samples per step) and D (most new tokens), end to end.
//!
//! Through the mesh (default): the roles and the orchestrator run in this
//! process on loopback as `up` starts them, and each generation is one
//! GuardService Generate call. `--in-process`: the very same search
//! (`ig_orchestrator::search::run`, same parameters and seeds) with the roles
//! called directly on the models ([`ig_orchestrator::in_process`]).
//! `--compare`: both on the same models, interleaved generation by generation,
//! and the mesh's overhead; both paths must give the same answers, which the
//! report counts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use ig_models::policy::CausalLmPolicy;
use ig_orchestrator::guard::{search_params, wire_method};
use ig_orchestrator::in_process::InProcessRoles;
use ig_orchestrator::search::{Method, Params};
use ig_orchestrator::GuardClient;
use ig_proto::v1 as pb;
use ig_serve::telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use super::{file_name, list, median, print_table, progress, Report};
use crate::generate_cmd::method_parser;
use crate::up::{ensure_demo_assets, quiet_telemetry, Addresses, Mesh, RoleEngines, MeshModels, BENIGN_PROMPT, HARMFUL_PROMPT};

#[derive(Debug, Args)]
pub struct SearchBench {
    /// The search strategy.
    #[arg(long, value_parser = method_parser(), default_value = "inference_guard")]
    method: Method,
    /// Candidates per step [N]: one cell per value.
    #[arg(long = "n", value_delimiter = ',', default_value = "8,16,32")]
    pub samples: Vec<usize>,
    /// Most response tokens [D]: one cell per value.
    #[arg(long = "d", value_delimiter = ',', default_value = "32,64,128")]
    max_new_tokens: Vec<usize>,
    /// Tokens per chunk [d].
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// Beams kept per step [K] (default N/4, as the guard).
    #[arg(long)]
    beam_width: Option<usize>,
    /// Measured runs per cell (median reported); every run answers every prompt.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seed of the warm-up run; measured run r (from 1) uses seed + r.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A prompt of every run (repeat the flag; default: the demo's harmful and benign prompts).
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// Call the roles in-process (no gRPC) instead of through the mesh.
    #[arg(long, conflicts_with = "compare")]
    in_process: bool,
    /// Run through the mesh and in-process, interleaved, and print the mesh's overhead.
    #[arg(long)]
    pub compare: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    scorers: MeshModels,
}

impl SearchBench {
    /// A tiny configuration that only checks the pipeline.
    pub fn quick(&mut self) {
        (self.samples, self.max_new_tokens, self.chunk, self.runs) = (vec![4], vec![8], 4, 1);
    }

    fn prompts(&self) -> Vec<String> {
        if self.prompts.is_empty() {
            vec![HARMFUL_PROMPT.to_string(), BENIGN_PROMPT.to_string()]
        } else {
            self.prompts.clone()
        }
    }

    fn beam_width(&self, samples: usize) -> usize {
        self.beam_width.unwrap_or(samples / 4).clamp(1, samples.max(1))
    }
}

/// How the search reaches the roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Via {
    /// gRPC: the guard, then the role servers.
    Mesh,
    /// The role models called directly.
    InProcess,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Mesh => "mesh",
            Via::InProcess => "in-process",
        }
    }
}

/// The workload, as written to JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SearchWorkload {
    pub method: String,
    pub samples: Vec<usize>,
    pub max_new_tokens: Vec<usize>,
    pub chunk_tokens: usize,
    /// `None`: N/4.
    pub beam_width: Option<usize>,
    pub runs: usize,
    pub seeds: Vec<u64>,
    pub prompts: Vec<String>,
    pub policy_model: String,
    pub policy_dtype: String,
    pub cost_model: String,
    pub reward_model: String,
    pub paths: Vec<Via>,
    /// Where each role ran, its dtypes, and where tokens were drawn (absent in older files).
    #[serde(default)]
    pub placement: String,
}

/// Seconds each role was busy.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct RoleSeconds {
    pub policy: f64,
    pub cost: f64,
    pub reward: f64,
}

/// One (path, N, D) cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SearchRow {
    pub via: Via,
    pub samples: usize,
    pub max_new_tokens: usize,
    pub beam_width: usize,
    pub seconds_per_prompt: f64,
    /// Tokens the policy generated over all candidates, per second of wall time.
    pub policy_tokens_per_s: f64,
    /// Per prompt (a role's calls that overlap count once).
    pub busy_seconds_per_prompt: RoleSeconds,
}

/// The mesh against in-process, one (N, D) cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Overhead {
    pub samples: usize,
    pub max_new_tokens: usize,
    pub mesh_seconds_per_prompt: f64,
    pub in_process_seconds_per_prompt: f64,
    /// (mesh − in-process) / mesh.
    pub overhead_percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SearchResults {
    pub rows: Vec<SearchRow>,
    /// With `--compare`.
    pub overhead: Vec<Overhead>,
    /// With `--compare`: how many generations gave the same answer on both paths.
    pub same_answers: Option<SameAnswers>,
}

/// Generations whose answer (token ids) was the same on both paths, of all compared.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct SameAnswers {
    pub same: usize,
    pub compared: usize,
}

/// One generation, measured.
struct Generation {
    seconds: f64,
    tokens: u64,
    busy: RoleSeconds,
    answer: Vec<i32>,
}

/// The sums over one run's prompts.
#[derive(Default)]
struct RunTotals {
    seconds: f64,
    tokens: u64,
    busy: RoleSeconds,
}

impl RunTotals {
    fn add(&mut self, g: &Generation) {
        self.seconds += g.seconds;
        self.tokens += g.tokens;
        self.busy.policy += g.busy.policy;
        self.busy.cost += g.busy.cost;
        self.busy.reward += g.busy.reward;
    }
}

/// The ways to the roles this benchmark uses.
struct Paths {
    guard: Option<GuardClient>,
    local: Option<InProcessRoles<CausalLmPolicy>>,
}

impl Paths {
    async fn generate(&self, via: Via, method: Method, params: &Params, prompt: &str) -> anyhow::Result<Generation> {
        let started = Instant::now();
        match via {
            Via::Mesh => {
                let guard = self.guard.as_ref().expect("the mesh is up");
                let req = pb::GenerateRequest {
                    prompt: Some(pb::generate_request::Prompt::PromptText(prompt.to_string())),
                    method: wire_method(method) as i32,
                    params: Some(search_params(params)),
                    ..Default::default()
                };
                let r = guard.generate(req, Some(Duration::from_secs(600))).await?;
                let t = r.timings.unwrap_or_default();
                let s = |ns: i64| ns as f64 / 1e9;
                Ok(Generation {
                    seconds: started.elapsed().as_secs_f64(),
                    tokens: r.generated_token_count as u64,
                    busy: RoleSeconds { policy: s(t.policy_ns), cost: s(t.cost_ns), reward: s(t.reward_ns) },
                    answer: r.token_ids,
                })
            }
            Via::InProcess => {
                let local = self.local.as_ref().expect("the in-process roles are built");
                let r = local.generate(method, params, prompt, &|_| {}).await?;
                Ok(Generation {
                    seconds: started.elapsed().as_secs_f64(),
                    tokens: r.outcome.generated_tokens,
                    busy: RoleSeconds { policy: r.times.policy.as_secs_f64(), cost: r.times.cost.as_secs_f64(), reward: r.times.reward.as_secs_f64() },
                    answer: r.outcome.token_ids,
                })
            }
        }
    }
}

pub async fn run(args: SearchBench, log_format: LogFormat) -> anyhow::Result<()> {
    let _telemetry = quiet_telemetry(log_format)?;
    ensure_demo_assets(&args.policy)?;
    let paths: Vec<Via> = match (args.compare, args.in_process) {
        (true, _) => vec![Via::Mesh, Via::InProcess],
        (false, true) => vec![Via::InProcess],
        (false, false) => vec![Via::Mesh],
    };
    let params = SearchWorkload {
        method: args.method.name().into(),
        samples: args.samples.clone(),
        max_new_tokens: args.max_new_tokens.clone(),
        chunk_tokens: args.chunk,
        beam_width: args.beam_width,
        runs: args.runs.max(1),
        seeds: (0..=args.runs.max(1) as u64).map(|r| args.seed + r).collect(),
        prompts: args.prompts(),
        policy_model: file_name(&args.policy.model_path()?),
        policy_dtype: format!("{:?}", args.policy.dtype).to_lowercase(),
        cost_model: file_name(&args.scorers.cost_model),
        reward_model: file_name(&args.scorers.reward_model),
        paths: paths.clone(),
        placement: format!(
            "policy on {} (sampling on {:?}), scorers {} on {}",
            args.policy.device,
            args.policy.sampling_on,
            format!("{:?}", args.scorers.scorer_dtype).to_lowercase(),
            args.scorers.scorer_device.as_deref().unwrap_or(&args.policy.device)
        )
        .to_lowercase(),
    };

    // The mesh's models serve the in-process path too: both run on the same weights and caches.
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mesh, standalone) = if paths.contains(&Via::Mesh) {
        (Some(Mesh::start(args.policy.clone(), &args.scorers, Addresses::any_loopback()).await?), None)
    } else {
        (None, Some(RoleEngines::start(args.policy.clone(), &args.scorers, any_port, any_port)?))
    };
    let outcome = async {
        let guard = match &mesh {
            Some(m) => Some(m.wait_ready().await?),
            None => None,
        };
        let engines = mesh.as_ref().map(|m| &m.engines).or(standalone.as_ref()).expect("a mesh or its models");
        let local = if paths.contains(&Via::InProcess) { Some(engines.in_process().await?) } else { None };
        measure(&args, &params, &Paths { guard, local }).await
    }
    .await;
    if let Some(mesh) = mesh {
        mesh.stop().await?;
    }
    let report = Report::new("search", params, outcome?);
    print_report(&report);
    report.write(args.json.as_deref())
}

/// Runs every cell on every path; the medians.
async fn measure(args: &SearchBench, p: &SearchWorkload, paths: &Paths) -> anyhow::Result<SearchResults> {
    let cells = p.samples.len() * p.max_new_tokens.len();
    let bar = progress((cells * (p.runs + 1) * p.prompts.len() * p.paths.len()) as u64)?;
    let (mut rows, mut overhead) = (Vec::new(), Vec::new());
    let (mut same, mut compared) = (0, 0);
    for &max_new_tokens in &p.max_new_tokens {
        for &samples in &p.samples {
            let beam_width = args.beam_width(samples);
            let mut params = Params { samples, beam_width, chunk_tokens: p.chunk_tokens, max_new_tokens, ..Params::default() };
            let mut runs: Vec<Vec<RunTotals>> = p.paths.iter().map(|_| Vec::new()).collect();
            for (run, &seed) in p.seeds.iter().enumerate() {
                params.seed = seed;
                let mut totals: Vec<RunTotals> = p.paths.iter().map(|_| RunTotals::default()).collect();
                for prompt in &p.prompts {
                    // Interleaved: each path answers the same prompt with the same seed in turn.
                    let mut answers = Vec::new();
                    for (i, &via) in p.paths.iter().enumerate() {
                        let phase = if run == 0 { "warm-up".to_string() } else { format!("run {run}") };
                        bar.set_message(format!("{} N={samples} D={max_new_tokens} {phase}", via.name()));
                        let g = paths.generate(via, args.method, &params, prompt).await?;
                        totals[i].add(&g);
                        answers.push(g.answer);
                        bar.inc(1);
                    }
                    if answers.len() == 2 {
                        compared += 1;
                        same += usize::from(answers[0] == answers[1]);
                    }
                }
                if run > 0 {
                    for (kept, t) in runs.iter_mut().zip(totals) {
                        kept.push(t);
                    }
                }
            }
            let prompts = p.prompts.len() as f64;
            for (&via, measured) in p.paths.iter().zip(&runs) {
                let per_prompt = |f: fn(&RunTotals) -> f64| median(&measured.iter().map(f).collect::<Vec<_>>()) / prompts;
                rows.push(SearchRow {
                    via,
                    samples,
                    max_new_tokens,
                    beam_width,
                    seconds_per_prompt: per_prompt(|t| t.seconds),
                    policy_tokens_per_s: median(&measured.iter().map(|t| t.tokens as f64 / t.seconds).collect::<Vec<_>>()),
                    busy_seconds_per_prompt: RoleSeconds {
                        policy: per_prompt(|t| t.busy.policy),
                        cost: per_prompt(|t| t.busy.cost),
                        reward: per_prompt(|t| t.busy.reward),
                    },
                });
            }
            if let [mesh, local] = &rows[rows.len() - p.paths.len()..] {
                overhead.push(Overhead {
                    samples,
                    max_new_tokens,
                    mesh_seconds_per_prompt: mesh.seconds_per_prompt,
                    in_process_seconds_per_prompt: local.seconds_per_prompt,
                    overhead_percent: 100.0 * (mesh.seconds_per_prompt - local.seconds_per_prompt) / mesh.seconds_per_prompt,
                });
            }
        }
    }
    bar.finish_and_clear();
    Ok(SearchResults { rows, overhead, same_answers: (compared > 0).then_some(SameAnswers { same, compared }) })
}

fn print_report(report: &Report<SearchWorkload, SearchResults>) {
    let p = &report.params;
    let k = p.beam_width.map_or_else(|| "N/4".to_string(), |k| k.to_string());
    report.print_heading(
        &format!("search: seconds per prompt, {}", p.method),
        &format!(
            "N {}, D {}, chunk d {}, K {k}, {} prompt(s), seeds {} (the first warms up), median of {} runs, paths {}; \
             policy {} ({}), cost {}, reward {}; {}",
            list(&p.samples),
            list(&p.max_new_tokens),
            p.chunk_tokens,
            p.prompts.len(),
            list(&p.seeds),
            p.runs,
            p.paths.iter().map(|v| v.name()).collect::<Vec<_>>().join(" and "),
            p.policy_model,
            p.policy_dtype,
            p.cost_model,
            p.reward_model,
            p.placement
        ),
    );
    let r = &report.results;
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            let b = row.busy_seconds_per_prompt;
            vec![
                row.via.name().to_string(),
                row.samples.to_string(),
                row.max_new_tokens.to_string(),
                row.beam_width.to_string(),
                format!("{:.2}", row.seconds_per_prompt),
                format!("{:.0}", row.policy_tokens_per_s),
                format!("{:.2}", b.policy),
                format!("{:.2}", b.cost),
                format!("{:.2}", b.reward),
            ]
        })
        .collect();
    print_table(&["path", "N", "D", "K", "s/prompt", "policy tok/s", "policy busy s", "cost busy s", "reward busy s"], &rows);
    if !r.overhead.is_empty() {
        let rows: Vec<Vec<String>> = r
            .overhead
            .iter()
            .map(|o| {
                vec![
                    o.samples.to_string(),
                    o.max_new_tokens.to_string(),
                    format!("{:.3}", o.mesh_seconds_per_prompt),
                    format!("{:.3}", o.in_process_seconds_per_prompt),
                    format!("{:+.1}%", o.overhead_percent),
                ]
            })
            .collect();
        println!("the mesh's overhead, (mesh − in-process) / mesh:");
        println!();
        print_table(&["N", "D", "mesh s/prompt", "in-process s/prompt", "overhead"], &rows);
    }
    if let Some(SameAnswers { same, compared }) = r.same_answers {
        println!("same answer on both paths: {same} of {compared} generations");
        println!();
    }
}
