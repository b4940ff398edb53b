//! `inferenceguard eval`: every method over a prompt set, through the mesh.
//!
//! Each finished (prompt, method) is appended to `<out>/results.jsonl` at
//! once; a rerun skips what is there, so a crash loses at most the requests
//! in flight. After the run (or with `eval report`) the report is written.
//!
//! `--judge` cost models score every final response beside the guiding one;
//! stored answers that lack a judge's cost are judged on the next run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use ig_orchestrator::mesh::{policy_meta, scorer_info, MeshPolicy, MeshScorer};
use ig_orchestrator::registry::{EntryRole, Registry, Snapshot};
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
    /// Token and TLS towards that mesh (its CA also verifies the registry's https:// roles).
    #[command(flatten)]
    pub access: crate::generate_cmd::GuardAccess,
    /// Requests in flight at once (1: time per prompt is one request's alone).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Deadline of each request, in seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub timeout_seconds: f64,
    /// A cost model of the registry that no method's search uses, to score every final response as an independent judge (> 0: unsafe); repeat the flag or comma-separate. The loopback mesh serves its extra cost models (--extra-cost-model) for this. The refusal-phrase judge always runs.
    #[arg(long = "judge", value_name = "NAME", value_delimiter = ',')]
    pub judges: Vec<String>,
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
    /// Each `--judge`'s cost of the final response, by registry name (> 0: unsafe by it).
    #[serde(default)]
    pub judge_costs: BTreeMap<String, f64>,
    /// The model id each `--judge` answered with, by registry name.
    #[serde(default)]
    pub judge_models: BTreeMap<String, String>,
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
            harmful: self.kind == PromptKind::Harmful,
            refused: super::judge::refused(&self.text),
            judge_costs: self.judge_costs.clone(),
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
    /// Cost models by name, with the model id their Info gave.
    scorers: Mutex<HashMap<String, (Arc<MeshScorer>, String)>>,
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

    /// The cost model `name` and its model id.
    async fn cost(&self, name: &str) -> anyhow::Result<(Arc<MeshScorer>, String)> {
        let mut cache = self.scorers.lock().await;
        if let Some(s) = cache.get(name) {
            return Ok(s.clone());
        }
        let entry = self.registry.snapshot().resolve(EntryRole::Cost, name).map_err(|e| anyhow::anyhow!("cost model {name:?}: {e}"))?;
        let info = scorer_info(&entry, self.deadline).await?;
        let s = (Arc::new(MeshScorer::with_info(entry, &info, self.deadline)), info.model_id);
        cache.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// Each judge's cost of `response` to `prompt`, and its model id. An
    /// error names the judge that failed.
    async fn judge(&self, prompt: &str, response: &str, judges: &[String]) -> anyhow::Result<Judged> {
        let mut judged = Judged::default();
        for name in judges {
            let scored = async {
                let (scorer, model_id) = self.cost(name).await?;
                let cost = scorer.score(prompt, vec![response.to_string()]).await?;
                anyhow::Ok((cost.first().copied().context("the scorer returned no score")?, model_id))
            };
            let (cost, model_id) = scored.await.with_context(|| format!("--judge {name}"))?;
            judged.costs.insert(name.clone(), cost);
            judged.models.insert(name.clone(), model_id);
        }
        Ok(judged)
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
        let costs = self.cost(&cost).await?.0.score(prompt, texts).await?;
        Ok(ends.into_iter().zip(costs).collect())
    }
}

/// What the judges said of one response.
#[derive(Debug, Default)]
struct Judged {
    costs: BTreeMap<String, f64>,
    models: BTreeMap<String, String>,
}

/// The cost model that guides each method's search: its `cost_model`
/// setting, else the registry's default.
fn guiding_cost_models(plan: &[(Method, Settings)], registry: &Snapshot) -> Vec<(Method, String)> {
    let default = registry.resolve(EntryRole::Cost, "").map(|e| e.name.clone()).ok();
    plan.iter().filter_map(|(m, s)| s.get("cost_model").cloned().or_else(|| default.clone()).map(|name| (*m, name))).collect()
}

/// Checks the `--judge` names against the registry and the run's plan; the
/// judges, each once, in order. A judge must be a cost model, and one that no
/// method's search consults: a judge that guided the search cannot tell when
/// the search found its blind spots.
fn check_judges(judges: &[String], registry: &Snapshot, plan: &[(Method, Settings)]) -> anyhow::Result<Vec<String>> {
    let guides = guiding_cost_models(plan, registry);
    let mut checked: Vec<String> = Vec::new();
    for name in judges.iter().map(|j| j.trim()).filter(|j| !j.is_empty()) {
        if checked.iter().any(|c| c == name) {
            continue;
        }
        if let Err(e) = registry.resolve(EntryRole::Cost, name) {
            if let Some(other) = registry.entries.iter().find(|e| e.name == name) {
                bail!("--judge {name}: is a {} model, a judge must be a cost model (role = \"cost\")", other.role.as_str());
            }
            bail!("--judge {name}: {e}");
        }
        let guided: Vec<&str> = guides.iter().filter(|(_, g)| g == name).map(|(m, _)| m.name()).collect();
        if !guided.is_empty() {
            bail!("--judge {name}: the search uses it (the cost model of {}); a judge must be a model the search never consulted", guided.join(", "));
        }
        checked.push(name.to_string());
    }
    Ok(checked)
}

/// The methods of a run, each with its settings.
fn plan(args: &EvalArgs) -> Vec<(Method, Settings)> {
    let methods = if args.methods.is_empty() { Method::ALL.to_vec() } else { args.methods.clone() };
    methods.into_iter().map(|m| (m, settings::for_method(&args.settings, m))).collect()
}

/// Judges the stored answers in `done` that lack a cost of one of `judges`
/// (judging reads the text; the generation is untouched) and rewrites the
/// file at `path` in one piece if any changed. The failures, one line each.
async fn judge_stored(
    path: &std::path::Path,
    done: &mut [EvalRecord],
    prompts: &[EvalPrompt],
    judges: &[String],
    auditor: &Auditor,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let missing: Vec<(usize, Vec<String>)> = done
        .iter()
        .enumerate()
        .map(|(i, r)| (i, judges.iter().filter(|j| !r.judge_costs.contains_key(*j)).cloned().collect::<Vec<_>>()))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    eprintln!("judging {} stored answer(s) in {} with {}", missing.len(), path.display(), judges.join(", "));
    let texts: HashMap<u64, &str> = prompts.iter().map(|p| (p.id, p.text.as_str())).collect();
    let done_ro: &[EvalRecord] = done;
    let results: Vec<(usize, anyhow::Result<Judged>)> = futures::stream::iter(missing)
        .map(|(i, wanted)| {
            let r = &done_ro[i];
            let prompt = texts.get(&r.prompt_id).copied();
            async move {
                let judged = match prompt {
                    Some(prompt) => auditor.judge(prompt, &r.text, &wanted).await,
                    None => Err(anyhow::anyhow!("its prompt is not in --prompts, so its stored answer cannot be judged")),
                };
                (i, judged)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let (mut failures, mut changed) = (Vec::new(), false);
    for (i, judged) in results {
        match judged {
            Ok(j) => {
                done[i].judge_costs.extend(j.costs);
                done[i].judge_models.extend(j.models);
                changed = true;
            }
            Err(e) => failures.push(format!("{} on prompt {} (stored): {e:#}", done[i].method, done[i].prompt_id)),
        }
    }
    if changed {
        crate::jsonl::rewrite(path, done)?;
    }
    Ok(failures)
}

/// The seed of a prompt's requests.
fn prompt_seed(seed: u64, prompt_id: u64) -> i64 {
    (seed.wrapping_add(prompt_id) & (i64::MAX as u64)) as i64
}

/// Runs and scores one (prompt, method).
#[allow(clippy::too_many_arguments)]
async fn evaluate_one(
    guard: &GuardClient,
    auditor: &Auditor,
    prompt: &EvalPrompt,
    method: Method,
    settings: &Settings,
    seed: i64,
    timeout: Duration,
    judges: &[String],
) -> anyhow::Result<EvalRecord> {
    let started = Instant::now();
    let r = guard.generate(settings::request(method, &prompt.text, settings, seed), Some(timeout)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let prefix_costs = auditor.prefix_costs(&prompt.text, &r).await.context("reading the cost along the response")?;
    let max_cost = prefix_costs.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let judged = auditor.judge(&prompt.text, &r.text, judges).await?;
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
        judge_costs: judged.costs,
        judge_models: judged.models,
    })
}

/// The results file of a run.
pub fn results_path(out: &std::path::Path) -> PathBuf {
    out.join("results.jsonl")
}

/// Runs what `<out>/results.jsonl` lacks and judges its stored answers that
/// lack a `--judge`'s cost; returns every record of the file and what
/// failed, one line each.
async fn evaluate(args: &EvalArgs, prompts: &[EvalPrompt], guard: &GuardClient, registry: Arc<Registry>) -> anyhow::Result<(Vec<EvalRecord>, Vec<String>)> {
    let plan = plan(args);
    let judges = check_judges(&args.judges, &registry.snapshot(), &plan)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let path = results_path(&args.out);
    let mut done: Vec<EvalRecord> = crate::jsonl::read_resumable(&path)?;
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
    // Before the file is opened for appending: judging stored answers replaces it.
    let mut failed = judge_stored(&path, &mut done, prompts, &judges, &auditor, args.concurrency).await?;
    for f in &failed {
        crate::progress::note(&bar, f);
    }
    let mut file = crate::jsonl::open_append(&path)?;
    let mut running = futures::stream::iter(todo)
        .map(|(p, m, s)| {
            let (auditor, judges) = (&auditor, &judges);
            async move { (p, m, evaluate_one(guard, auditor, p, m, s, prompt_seed(args.seed, p.id), timeout, judges).await) }
        })
        .buffer_unordered(args.concurrency.max(1));
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
                let line = format!("{} on prompt {}: {e:#}", method.name(), prompt.id);
                crate::progress::note(&bar, &line);
                failed.push(line);
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
            let registry = Registry::load(registry, ig_serve::tls::ClientTls::from_args(&args.access.tls)?)?;
            check_judges(&args.judges, &registry.snapshot(), &plan(&args))?;
            let client = args.access.client(guard)?;
            client.wait_ready(Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!("--guard {guard}: {e}"))?;
            evaluate(&args, &prompts, &client, registry).await?
        }
        _ => {
            ensure_demo_assets(&args.policy)?;
            let mesh = Mesh::start(args.policy.clone(), &args.models, Addresses::any_loopback()).await?;
            let result = async {
                // The registry is written before the models load: a wrong --judge fails at once.
                let registry = Registry::load(mesh.registry(), mesh.client_tls()?)?;
                check_judges(&args.judges, &registry.snapshot(), &plan(&args))?;
                let client = mesh.wait_ready().await?;
                evaluate(&args, &prompts, &client, registry).await
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
    if !failed.is_empty() {
        bail!("{} (prompt, method) requests or judgings failed (see above); rerun the same command to retry them", failed.len());
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

    /// A tiny run's flags: N = `samples`, 8 tokens in chunks of 4, no critics, `extra` flags after.
    fn eval_args(prompts: &std::path::Path, out: &std::path::Path, samples: &str, extra: &[&str]) -> EvalArgs {
        let (prompts, out) = (prompts.to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
        let samples = format!("samples_count={samples}");
        let flags = [
            "eval", "--prompts", &prompts, "--out", &out, "--set", &samples, "--set", "max_new_tokens=8", "--set", "chunk_tokens=4", "--audit-every", "4",
            "--no-critics",
        ];
        Wrap::parse_from(flags.iter().chain(extra)).args
    }

    /// A registry with a policy, two cost models (the first the default), a reward model and a critic.
    const REGISTRY: &str = r#"
[[policy]]
name = "p"
endpoints = ["http://127.0.0.1:1"]

[[scorer]]
name = "guide"
role = "cost"
endpoints = ["http://127.0.0.1:2"]
default = true

[[scorer]]
name = "other-cost"
role = "cost"
endpoints = ["http://127.0.0.1:3"]

[[scorer]]
name = "rew"
role = "reward"
endpoints = ["http://127.0.0.1:4"]

[[critic]]
name = "crit"
objective = "augmented"
endpoints = ["http://127.0.0.1:5"]
"#;

    fn check(judges: &[&str], settings: &[&str]) -> anyhow::Result<Vec<String>> {
        let registry = Registry::from_toml(REGISTRY).unwrap();
        let settings: Vec<Setting> = settings.iter().map(|s| settings::parse_setting(s).unwrap()).collect();
        let plan: Vec<(Method, Settings)> = [Method::Base, Method::InferenceGuard].into_iter().map(|m| (m, settings::for_method(&settings, m))).collect();
        check_judges(&judges.iter().map(|j| j.to_string()).collect::<Vec<_>>(), &registry.snapshot(), &plan)
    }

    #[tokio::test]
    async fn judges_must_be_cost_models_the_search_never_consulted() {
        assert_eq!(check(&["other-cost", "other-cost", ""], &[]).unwrap(), ["other-cost"]);
        assert_eq!(check(&[], &[]).unwrap(), Vec::<String>::new());
        let err = |judges: &[&str], settings: &[&str]| check(judges, settings).unwrap_err().to_string();
        let e = err(&["nope"], &[]);
        assert!(e.starts_with("--judge nope: no cost model named \"nope\"") && e.contains("guide, other-cost"), "{e}");
        assert_eq!(err(&["rew"], &[]), "--judge rew: is a reward model, a judge must be a cost model (role = \"cost\")");
        assert!(err(&["p"], &[]).starts_with("--judge p: is a policy model, a judge must be a cost model"));
        assert!(err(&["crit"], &[]).starts_with("--judge crit: is a critic model, a judge must be a cost model"));
        // The registry's default guides every method that names no cost model.
        assert_eq!(
            err(&["guide"], &[]),
            "--judge guide: the search uses it (the cost model of base, inference_guard); a judge must be a model the search never consulted"
        );
        // A --set cost_model guides the methods it is set for, and frees the default for those.
        let e = err(&["other-cost"], &["inference_guard.cost_model=other-cost"]);
        assert!(e.starts_with("--judge other-cost: the search uses it (the cost model of inference_guard)"), "{e}");
        assert_eq!(check(&["guide"], &["cost_model=other-cost"]).unwrap(), ["guide"]);
        assert!(err(&["guide"], &["base.cost_model=other-cost"]).contains("(the cost model of inference_guard)"));
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
        // The guide is the judge's weights under another name: the mesh serves cost-minilm-l6 as an
        // extra cost model beside it, and the judge's cost of each final response must equal the guard's.
        let guide = dir.path().join("guide-cost.safetensors");
        std::fs::copy(crate::up::DEFAULT_EXTRA_COST_MODELS[0], &guide).unwrap();
        let guide = guide.to_string_lossy().into_owned();
        let both = ["--methods", "base,inference_guard", "--cost-model", &guide];
        let judged = [&both[..], &["--judge", "cost-minilm-l6"]].concat();
        let args = eval_args(&set, &out, "4", &both);
        let mesh = Mesh::start(args.policy.clone(), &args.models, Addresses::any_loopback()).await.unwrap();
        let guard = mesh.wait_ready().await.unwrap();
        let registry = || Registry::load(mesh.registry(), None).unwrap();
        let results = results_path(&out);

        // Kill the run (no judge yet) once two (prompt, method) pairs are on disk, then tear a third line as a crash mid-write would.
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

        // The rerun asks a judge: it judges the two stored answers and runs the rest.
        let (records, failed) = evaluate(&eval_args(&set, &out, "4", &judged), &prompts, &guard, registry()).await.unwrap();
        assert_eq!(failed, Vec::<String>::new());
        let after = lines(&results);
        assert_eq!(after.len(), 6, "3 prompts x 2 methods");
        // The finished pairs are kept as they were, but for the judge's cost.
        let parse = |line: &String| serde_json::from_str::<EvalRecord>(line).unwrap();
        for (b, a) in before.iter().zip(&after) {
            let (b, mut a) = (parse(b), parse(a));
            assert!(b.judge_costs.is_empty() && a.judge_costs.contains_key("cost-minilm-l6"));
            (a.judge_costs, a.judge_models) = (BTreeMap::new(), BTreeMap::new());
            assert_eq!(a, b);
        }
        let mut pairs: Vec<(u64, String)> = records.iter().map(|r| (r.prompt_id, r.method.clone())).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 6, "each (prompt, method) exactly once");
        assert_eq!(records, after.iter().map(parse).collect::<Vec<_>>(), "what the run returns is what the file holds");

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
            let judge = r.judge_costs["cost-minilm-l6"];
            assert!(judge.is_finite() && (judge - r.cost).abs() < 1e-3, "judge {judge} vs guard {} (same weights)", r.cost);
            // Model ids are file stems: two models to the mesh, with the same weights.
            assert_eq!((r.models["cost"].as_str(), r.judge_models["cost-minilm-l6"].as_str()), ("guide-cost", "cost-minilm-l6"));
        }
        let written = crate::eval::report::write(&out, &records).unwrap();
        assert!(written.iter().all(|p| p.exists()) && out.join("fig3-max-cost.png").exists() && out.join("fig2-reward-vs-judge-safety.png").exists());
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        for column in ["Compliance (phrase judge) ↓", "Over-refusal (phrase judge) ↓", "Hacking rate (phrase judge) ↓", "Safe by cost-minilm-l6 ↑", "Hacking rate vs cost-minilm-l6 ↓"] {
            assert!(md.contains(column), "{column} in {md}");
        }
        // A judge with the guide's weights and the guide's threshold (B = 0) agrees with it on every answer.
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        for row in summary["rows"].as_array().unwrap() {
            let judge = &row["judges"]["cost-minilm-l6"];
            assert_eq!((&judge["safety_rate"], judge["hacking_rate"].as_f64()), (&row["safety_rate"], Some(0.0)), "{row}");
        }

        // A rerun asking other settings is refused: its results would not be comparable.
        let err = evaluate(&eval_args(&set, &out, "5", &both), &prompts, &guard, registry()).await.unwrap_err().to_string();
        assert!(err.contains("base was run with settings"), "{err}");
        let mut other_seed = eval_args(&set, &out, "4", &both);
        other_seed.seed = 1;
        let err = evaluate(&other_seed, &prompts, &guard, registry()).await.unwrap_err().to_string();
        assert!(err.contains("another --seed"), "{err}");

        // A judge that cannot be reached: a registry entry at a closed port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let with_dead = dir.path().join("registry-dead-judge.toml");
        let text = std::fs::read_to_string(mesh.registry()).unwrap();
        std::fs::write(&with_dead, format!("{text}\n[[scorer]]\nname = \"dead-judge\"\nrole = \"cost\"\nendpoints = [\"http://{closed}\"]\n")).unwrap();
        let dead_registry = || Registry::load(&with_dead, None).unwrap();
        let dead = [&both[..], &["--judge", "dead-judge"]].concat();
        // Stored answers stay as they were when their judging fails.
        let (_, failed) = evaluate(&eval_args(&set, &out, "4", &dead), &prompts, &guard, dead_registry()).await.unwrap();
        assert_eq!(failed.len(), 6, "{failed:?}");
        assert!(failed.iter().all(|f| f.contains("(stored)") && f.contains("--judge dead-judge")), "{failed:?}");
        assert_eq!(lines(&results), after);
        // New answers: each one fails naming the judge, and none is written.
        let fresh = dir.path().join("run-dead-judge");
        let base_only = |judge: &str| eval_args(&set, &fresh, "4", &["--methods", "base", "--cost-model", &guide, "--judge", judge]);
        let (records, failed) = evaluate(&base_only("dead-judge"), &prompts, &guard, dead_registry()).await.unwrap();
        assert_eq!((records.len(), failed.len()), (0, 3), "{failed:?}");
        assert!(failed.iter().all(|f| f.starts_with("base on prompt") && f.contains("--judge dead-judge")), "{failed:?}");
        assert_eq!(lines(&results_path(&fresh)), Vec::<String>::new());
        // The rerun with a judge that answers completes.
        let (records, failed) = evaluate(&base_only("cost-minilm-l6"), &prompts, &guard, dead_registry()).await.unwrap();
        assert_eq!((records.len(), failed), (3, vec![]));
        assert!(records.iter().all(|r| r.judge_costs["cost-minilm-l6"].is_finite()));
        assert_eq!(lines(&results_path(&fresh)).len(), 3);
        mesh.stop().await.unwrap();
    }
}
