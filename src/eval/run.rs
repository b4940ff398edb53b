//! `inferenceguard eval`: every method over a prompt set, through the mesh.
//!
//! Each finished (prompt, method) is appended to `<out>/results.jsonl` at
//! once; a rerun skips what is there, so a crash loses at most the requests
//! in flight. After the run (or with `eval report`) the report is written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use ig_orchestrator::mesh::{policy_meta, scorer_info, MeshPolicy, MeshScorer};
use ig_orchestrator::registry::{EntryRole, Registry};
use ig_orchestrator::search::{Method, ScorerRole};
use ig_orchestrator::GuardClient;
use ig_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::prompts::{self, EvalPrompt, PromptKind};
use super::settings::{self, Setting, Settings};
use crate::generate_cmd::method_parser;
use crate::up::{ensure_demo_assets, Addresses, Mesh, MeshModels};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The prompt set (JSONL, from `inferenceguard eval prompts`).
    #[arg(long = "prompts", id = "prompt_set", value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// The methods to run, in this order for each prompt (default: all twelve).
    #[arg(long, value_delimiter = ',', value_parser = method_parser())]
    pub methods: Vec<Method>,
    /// A request field for every method (`samples_count=16`) or for one (`bon_lagrangian.samples_count=64`); repeat the flag. Fields: guard.proto's SearchParams, and cost_model, reward_model, critic. Unset fields take the guard's defaults.
    #[arg(long = "set", value_parser = settings::parse_setting)]
    pub settings: Vec<Setting>,
    /// Seed of the draws: prompt p runs with seed `(seed + id(p)) mod 2^63`, the same for every method.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Results, report and plots go here.
    #[arg(long, default_value = "target/eval")]
    pub out: PathBuf,
    /// Orchestrator of a running mesh (with --registry). Default: start the demo mesh on loopback.
    #[arg(long, requires = "registry")]
    pub guard: Option<String>,
    /// Registry of that mesh (as `inferenceguard up` writes it): the eval reads the response's cost along the way from its policy and cost model.
    #[arg(long, requires = "guard")]
    pub registry: Option<PathBuf>,
    /// Requests in flight at once (1: time per prompt is one request's alone).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Deadline of each request, in seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub timeout_seconds: f64,
    /// The cost along a response is read every this many tokens (and at its end), the same for every method.
    #[arg(long, default_value_t = 16)]
    pub audit_every: usize,
    #[command(flatten)]
    pub policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    pub models: MeshModels,
}

/// One line of `results.jsonl`: a method's answer to a prompt, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub prompt_id: u64,
    pub kind: PromptKind,
    pub source: String,
    pub method: String,
    /// The `--set` fields this method was asked with.
    pub settings: Settings,
    pub seed: i64,
    /// `B` as the guard resolved it.
    pub budget: f64,
    pub reward: f64,
    pub cost: f64,
    /// The guard's own `min_z`: along its search for chunked methods, `z` for
    /// methods that score only the final response.
    pub guard_min_z: f64,
    /// `C(x, y≤t)` at every `audit_every` tokens and at the end, as (tokens, cost).
    pub prefix_costs: Vec<(usize, f64)>,
    /// The largest of `prefix_costs` (the paper's maximum cumulative cost).
    pub max_cost: f64,
    /// Wall time of the request as the client saw it, seconds.
    pub seconds: f64,
    /// Time per role as the guard measured it, seconds.
    pub role_seconds: BTreeMap<String, f64>,
    pub response_tokens: usize,
    pub generated_tokens: i64,
    pub steps: i32,
    pub candidates: i64,
    pub resample_rounds: i32,
    /// The model id of each role that answered.
    pub models: BTreeMap<String, String>,
    /// The response (kept out of the report: it may be harmful).
    pub text: String,
}

impl EvalRecord {
    pub fn outcome(&self) -> super::metrics::Outcome {
        super::metrics::Outcome {
            reward: self.reward,
            cost: self.cost,
            max_cost: self.max_cost,
            budget: self.budget,
            seconds: self.seconds,
            response_tokens: self.response_tokens as f64,
            generated_tokens: self.generated_tokens as f64,
        }
    }
}

/// Reads a response's cost along the way through the mesh's policy (to decode
/// prefixes) and cost model, the same for every method.
struct Auditor {
    registry: Arc<Registry>,
    every: usize,
    deadline: Instant,
    policies: Mutex<HashMap<String, Arc<MeshPolicy>>>,
    scorers: Mutex<HashMap<String, Arc<MeshScorer>>>,
}

impl Auditor {
    fn new(registry: Arc<Registry>, every: usize) -> Self {
        // Each call carries its own deadline; this one only bounds the run.
        let deadline = Instant::now() + Duration::from_secs(30 * 24 * 3600);
        Self { registry, every: every.max(1), deadline, policies: Mutex::default(), scorers: Mutex::default() }
    }

    async fn policy(&self, name: &str) -> anyhow::Result<Arc<MeshPolicy>> {
        let mut cache = self.policies.lock().await;
        if let Some(p) = cache.get(name) {
            return Ok(p.clone());
        }
        let entry = self.registry.snapshot().resolve(EntryRole::Policy, name).map_err(|e| anyhow::anyhow!("policy {name:?}: {e}"))?;
        let meta = policy_meta(&entry, self.deadline).await?;
        let p = Arc::new(MeshPolicy::new(entry, meta, self.deadline));
        cache.insert(name.to_string(), p.clone());
        Ok(p)
    }

    async fn cost(&self, name: &str) -> anyhow::Result<Arc<MeshScorer>> {
        let mut cache = self.scorers.lock().await;
        if let Some(s) = cache.get(name) {
            return Ok(s.clone());
        }
        let entry = self.registry.snapshot().resolve(EntryRole::Cost, name).map_err(|e| anyhow::anyhow!("cost model {name:?}: {e}"))?;
        let info = scorer_info(&entry, self.deadline).await?;
        let s = Arc::new(MeshScorer::with_info(entry, &info, self.deadline));
        cache.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// `C(x, y≤t)` every `every` tokens and at the end of the response.
    async fn prefix_costs(&self, prompt: &str, r: &pb::GenerationResult) -> anyhow::Result<Vec<(usize, f64)>> {
        let models = r.models.clone().unwrap_or_default();
        let (policy, cost) = (models.policy.unwrap_or_default().name, models.cost.unwrap_or_default().name);
        let policy = self.policy(&policy).await?;
        let n = r.token_ids.len();
        let mut ends: Vec<usize> = (self.every..n).step_by(self.every).collect();
        let mut texts = Vec::with_capacity(ends.len() + 1);
        for &k in &ends {
            texts.push(policy.detokenize(r.token_ids[..k].to_vec()).await?);
        }
        // The whole response as the guard scored it.
        ends.push(n);
        texts.push(r.text.clone());
        let costs = self.cost(&cost).await?.score(prompt, texts).await?;
        Ok(ends.into_iter().zip(costs).collect())
    }
}

/// The seed of a prompt's requests.
fn prompt_seed(seed: u64, prompt_id: u64) -> i64 {
    (seed.wrapping_add(prompt_id) & (i64::MAX as u64)) as i64
}

/// Runs and scores one (prompt, method).
async fn evaluate_one(
    guard: &GuardClient,
    auditor: &Auditor,
    prompt: &EvalPrompt,
    method: Method,
    settings: &Settings,
    seed: i64,
    timeout: Duration,
) -> anyhow::Result<EvalRecord> {
    let started = Instant::now();
    let r = guard.generate(settings::request(method, &prompt.text, settings, seed), Some(timeout)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let prefix_costs = auditor.prefix_costs(&prompt.text, &r).await.context("reading the cost along the response")?;
    let max_cost = prefix_costs.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let t = r.timings.unwrap_or_default();
    let s = |ns: i64| ns as f64 / 1e9;
    let role_seconds = [("total", t.total_ns), ("policy", t.policy_ns), ("cost", t.cost_ns), ("reward", t.reward_ns), ("critic", t.critic_ns)]
        .into_iter()
        .map(|(k, ns)| (k.to_string(), s(ns)))
        .collect();
    let m = r.models.clone().unwrap_or_default();
    let models = [("policy", m.policy), ("cost", m.cost), ("reward", m.reward), ("critic", m.critic)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.model_id)))
        .collect();
    Ok(EvalRecord {
        prompt_id: prompt.id,
        kind: prompt.kind,
        source: prompt.source.clone(),
        method: method.name().to_string(),
        settings: settings.clone(),
        seed,
        budget: r.params.as_ref().and_then(|p| p.safety_budget).unwrap_or(0.0),
        reward: r.reward,
        cost: r.cost,
        guard_min_z: r.min_z,
        prefix_costs,
        max_cost,
        seconds,
        role_seconds,
        response_tokens: r.token_ids.len(),
        generated_tokens: r.generated_token_count,
        steps: r.step_count,
        candidates: r.candidate_count,
        resample_rounds: r.resample_round_count,
        models,
        text: r.text,
    })
}

/// The results file of a run.
pub fn results_path(out: &std::path::Path) -> PathBuf {
    out.join("results.jsonl")
}

/// Runs what `<out>/results.jsonl` lacks; returns every record of the file and
/// how many requests failed.
async fn evaluate(args: &EvalArgs, prompts: &[EvalPrompt], guard: &GuardClient, registry: Arc<Registry>) -> anyhow::Result<(Vec<EvalRecord>, usize)> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let path = results_path(&args.out);
    let mut done: Vec<EvalRecord> = crate::jsonl::read_resumable(&path)?;
    let methods = if args.methods.is_empty() { Method::ALL.to_vec() } else { args.methods.clone() };
    let plan: Vec<(Method, Settings)> = methods.into_iter().map(|m| (m, settings::for_method(&args.settings, m))).collect();
    // A rerun must ask what the file's results were asked.
    for (method, wanted) in &plan {
        if let Some(found) = done.iter().find(|r| r.method == method.name() && &r.settings != wanted) {
            bail!(
                "--out {}: {} was run with settings {:?}, this run asks {:?}; use another --out, or delete that method's lines from {}",
                args.out.display(),
                method.name(),
                found.settings,
                wanted,
                path.display()
            );
        }
    }
    if let Some(found) = done.iter().find(|r| r.seed != prompt_seed(args.seed, r.prompt_id)) {
        bail!(
            "--out {}: its results were drawn with another --seed (prompt {} ran with seed {}); use that --seed or another --out",
            args.out.display(),
            found.prompt_id,
            found.seed
        );
    }
    let finished: HashSet<(u64, String)> = done.iter().map(|r| (r.prompt_id, r.method.clone())).collect();
    let todo: Vec<(&EvalPrompt, Method, &Settings)> = prompts
        .iter()
        .flat_map(|p| plan.iter().map(move |(m, s)| (p, *m, s)))
        .filter(|(p, m, _)| !finished.contains(&(p.id, m.name().to_string())))
        .collect();
    let total = (prompts.len() * plan.len()) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} (prompt, method)  {msg}  {elapsed} (eta {eta})")?.progress_chars("=> "),
    );
    bar.set_position(total - todo.len() as u64);
    let auditor = Auditor::new(registry, args.audit_every);
    let timeout = Duration::try_from_secs_f64(args.timeout_seconds).map_err(|_| anyhow::anyhow!("--timeout-seconds: must be >= 0"))?;
    let mut file = crate::jsonl::open_append(&path)?;
    let mut running = futures::stream::iter(todo)
        .map(|(p, m, s)| {
            let auditor = &auditor;
            async move { (p, m, evaluate_one(guard, auditor, p, m, s, prompt_seed(args.seed, p.id), timeout).await) }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut failed = 0;
    while let Some((prompt, method, result)) = running.next().await {
        match result {
            Ok(record) => {
                crate::jsonl::append(&mut file, &record)?;
                bar.set_message(format!(
                    "last: {} on a {} prompt, {} in {:.1}s",
                    record.method,
                    record.kind.as_str(),
                    if record.cost <= record.budget { "safe" } else { "unsafe" },
                    record.seconds
                ));
                done.push(record);
            }
            Err(e) => {
                failed += 1;
                bar.println(format!("{} on prompt {}: {e:#}", method.name(), prompt.id));
            }
        }
        bar.inc(1);
    }
    drop(running);
    bar.finish();
    Ok((done, failed))
}

pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.audit_every == 0 {
        bail!("--audit-every: must be at least 1");
    }
    let Some(prompt_set) = &args.prompts else {
        bail!("--prompts: required, a prompt set file (build one with `inferenceguard eval prompts --out FILE`)");
    };
    let prompts = prompts::read(prompt_set)?;
    let (records, failed) = match (&args.guard, &args.registry) {
        (Some(guard), Some(registry)) => {
            let client = GuardClient::connect_lazy(guard)?;
            client.wait_ready(Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!("--guard {guard}: {e}"))?;
            evaluate(&args, &prompts, &client, Registry::load(registry)?).await?
        }
        _ => {
            ensure_demo_assets(&args.policy)?;
            let mesh = Mesh::start(args.policy.clone(), &args.models, Addresses::any_loopback()).await?;
            let result = async {
                let client = mesh.wait_ready().await?;
                evaluate(&args, &prompts, &client, Registry::load(mesh.registry())?).await
            }
            .await;
            mesh.stop().await?;
            result?
        }
    };
    let written = super::report::write(&args.out, &records)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    if failed > 0 {
        bail!("{failed} (prompt, method) requests failed (see above); rerun the same command to retry them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: EvalArgs,
    }

    fn eval_args(prompts: &std::path::Path, out: &std::path::Path, samples: &str) -> EvalArgs {
        let (prompts, out) = (prompts.to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
        let samples = format!("samples_count={samples}");
        let flags = [
            "eval", "--prompts", &prompts, "--out", &out, "--methods", "base,inference_guard", "--set", &samples, "--set", "max_new_tokens=8",
            "--set", "chunk_tokens=4", "--audit-every", "4", "--no-critics",
        ];
        Wrap::parse_from(flags).args
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path).map(|t| t.lines().map(String::from).collect()).unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_eval_over_the_mesh_resumes_after_a_kill_with_each_pair_once() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("prompts.jsonl");
        let prompts = prompts::build(&ig_training::data::AllData::load().unwrap(), 2, 1, 0).unwrap();
        prompts::write(&set, &prompts).unwrap();
        let out = dir.path().join("run");
        let args = eval_args(&set, &out, "4");
        let mesh = Mesh::start(args.policy.clone(), &args.models, Addresses::any_loopback()).await.unwrap();
        let guard = mesh.wait_ready().await.unwrap();
        let registry = || Registry::load(mesh.registry()).unwrap();
        let results = results_path(&out);

        // Kill the run once two (prompt, method) pairs are on disk, then tear a third line as a crash mid-write would.
        let watch = async {
            while lines(&results).len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            finished = evaluate(&args, &prompts, &guard, registry()) => panic!("the run ended before it was killed: {:?}", finished.map(|r| r.1)),
            () = watch => {}
        }
        let before = lines(&results);
        assert!(before.len() == 2 || before.len() == 3, "{} lines at the kill", before.len());
        let before = before[..2].to_vec();
        std::fs::write(&results, format!("{}\n{}\n{{\"prompt_id\": 12, \"kind\": \"harm", before[0], before[1])).unwrap();

        let (records, failed) = evaluate(&args, &prompts, &guard, registry()).await.unwrap();
        assert_eq!(failed, 0);
        let after = lines(&results);
        assert_eq!(after.len(), 6, "3 prompts x 2 methods");
        assert_eq!(after[..2], before[..], "the finished pairs are kept as they were");
        let mut pairs: Vec<(u64, String)> = records.iter().map(|r| (r.prompt_id, r.method.clone())).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 6, "each (prompt, method) exactly once");

        for r in &records {
            assert!(r.response_tokens <= 8 && r.response_tokens > 0);
            // The audit reads the cost every 4 tokens and at the end; the end is the guard's own C.
            let (last_tokens, last_cost) = *r.prefix_costs.last().unwrap();
            assert_eq!(last_tokens, r.response_tokens);
            assert!((last_cost - r.cost).abs() < 1e-3, "audited {last_cost} vs guard {}", r.cost);
            assert_eq!(r.max_cost, r.prefix_costs.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max));
            assert!(r.prefix_costs.len() >= r.response_tokens.div_ceil(4));
            let prompt = prompts.iter().find(|p| p.id == r.prompt_id).unwrap();
            assert_eq!((r.kind, r.seed), (prompt.kind, prompt_seed(0, prompt.id)));
            if r.method == "inference_guard" {
                assert!(r.generated_tokens >= 4 * r.response_tokens as i64 - 4, "N = 4 candidates per step");
            }
        }
        let written = crate::eval::report::write(&out, &records).unwrap();
        assert!(written.iter().all(|p| p.exists()) && out.join("fig3-max-cost.png").exists());

        // A rerun asking other settings is refused: its results would not be comparable.
        let err = evaluate(&eval_args(&set, &out, "5"), &prompts, &guard, registry()).await.unwrap_err().to_string();
        assert!(err.contains("base was run with settings"), "{err}");
        let mut other_seed = eval_args(&set, &out, "4");
        other_seed.seed = 1;
        let err = evaluate(&other_seed, &prompts, &guard, registry()).await.unwrap_err().to_string();
        assert!(err.contains("another --seed"), "{err}");
        mesh.stop().await.unwrap();
    }
}
