//! `inferenceguard train-critic`: rolls the base policy out through the mesh
//! on training prompts, then trains critics on the policy's latents with
//! Monte Carlo targets (`docs/models.md`).
//!
//! Rollouts go to `<out>/rollouts.jsonl`, one line per finished prompt,
//! written as soon as the prompt is done: an interrupted run resumes where
//! it stopped, and a later run with other training flags reuses them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ig_orchestrator::mesh::{policy_meta, scorer_info, MeshPolicy, MeshScorer, PolicyMeta};
use ig_orchestrator::registry::{Entry, EntryRole, Registry};
use ig_orchestrator::rollout::{roll_out, Rollout, RolloutParams};
use ig_core::critic::CriticObjective;
use ig_models::critic::CriticMeta;
use ig_orchestrator::search::{self, Roles};
use futures::StreamExt;
use ig_training::critic::{split_by_group, train_critic, CriticSample, CriticTrainOptions, TrainedCritic};
use ig_training::datasets::CriticPrompt;
use ig_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::up::{ensure_demo_assets, quiet_telemetry, Addresses, Mesh, MeshModels};

#[derive(Debug, Args)]
pub struct TrainCriticArgs {
    /// Registry of a running mesh (as `inferenceguard up` writes it). Default:
    /// start the demo mesh on loopback for the run.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// With --registry: the policy's registry name (default: the registry's default).
    #[arg(long, default_value = "", requires = "registry")]
    policy_name: String,
    /// With --registry: the cost model's registry name.
    #[arg(long, default_value = "", requires = "registry")]
    cost_name: String,
    /// With --registry: the reward model's registry name.
    #[arg(long, default_value = "", requires = "registry")]
    reward_name: String,
    /// Rollouts, critics and loss plots go here.
    #[arg(long, default_value = "target/critic")]
    out: PathBuf,
    /// Training prompts (PyRIT's refusal-file requests, half harmful, half benign).
    #[arg(long, default_value_t = 48)]
    prompts: usize,
    /// Rollouts per prompt.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Tokens per chunk [d]: one training point per chunk.
    #[arg(long, default_value_t = 16)]
    chunk_tokens: usize,
    /// Most response tokens [D].
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Prompts rolled out at once (their rows share the policy's forward passes).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Deadline of one prompt's rollouts, in seconds: every call they make carries the
    /// time left to it, so a role that stops answering fails the run instead of hanging it.
    #[arg(long, default_value_t = 600.0)]
    prompt_timeout_seconds: f64,
    /// Softmax temperature of the rollouts (the search's).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the prompt choice and the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Budget B: `z = B - C`, safe when `C <= B`.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    safety_budget: f64,
    /// Critics to train: augmented (InferenceGuard with critic), reward (RECONTROL), lagrangian (RECONTROL-Lagrangian).
    #[arg(long, value_delimiter = ',', default_value = "augmented,reward,lagrangian")]
    objectives: Vec<CriticObjective>,
    /// η': the augmented return of an unsafe response is -η'.
    #[arg(long, default_value_t = 5.0)]
    training_penalty: f64,
    /// λ of the Lagrangian return `R - λC`.
    #[arg(long, default_value_t = 5.0)]
    lagrange_lambda: f64,
    /// γ of the Monte Carlo targets `γ^(T-t) G`.
    #[arg(long, default_value_t = 0.999)]
    discount: f64,
    /// Width of both hidden layers of the critic.
    #[arg(long, default_value_t = 256)]
    hidden_width: usize,
    /// Adam's learning rate (paper: 1e-5).
    #[arg(long, default_value_t = 1e-5)]
    learning_rate: f64,
    /// Samples per step (paper: 8).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Passes over the training split (paper: 50).
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Share of the prompts held out for validation.
    #[arg(long, default_value_t = 0.2)]
    validation_fraction: f64,
    /// The critic reads `z * z_scale`.
    #[arg(long, default_value_t = 1.0)]
    z_scale: f64,
    /// Only collect the rollouts.
    #[arg(long)]
    no_train: bool,
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    scorers: MeshModels,
}

/// How the rollouts in a directory were drawn; a resumed run must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RolloutHeader {
    policy_model_id: String,
    cost_model_id: String,
    reward_model_id: String,
    latent_dim: usize,
    samples: usize,
    chunk_tokens: usize,
    max_new_tokens: usize,
    temperature: f32,
    seed: u64,
    safety_budget: f64,
}

/// One line of `rollouts.jsonl`: a prompt and its rollouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptRollouts {
    pub prompt_id: u64,
    pub prompt: String,
    pub harmful: bool,
    pub rollouts: Vec<Rollout>,
}

/// The roles of one registry: policy, cost and reward models by name.
struct MeshRoles {
    policy: Arc<Entry>,
    meta: PolicyMeta,
    cost: (Arc<Entry>, pb::ScorerInfoResponse),
    reward: (Arc<Entry>, pb::ScorerInfoResponse),
    header: RolloutHeader,
    max_sequence_tokens: usize,
    max_logit_biases: usize,
}

impl MeshRoles {
    /// The roles for work that must end by `deadline` (each call carries the time left).
    fn until(&self, deadline: Instant) -> (MeshPolicy, Roles) {
        let policy = || MeshPolicy::new(self.policy.clone(), self.meta.clone(), deadline);
        let roles = Roles::new(
            Arc::new(policy()),
            Arc::new(MeshScorer::with_info(self.cost.0.clone(), &self.cost.1, deadline)),
            Arc::new(MeshScorer::with_info(self.reward.0.clone(), &self.reward.1, deadline)),
        );
        (policy(), roles)
    }
}

/// How long the set-up calls (Info of each role) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

async fn mesh_roles(registry: &Registry, args: &TrainCriticArgs) -> anyhow::Result<MeshRoles> {
    let snapshot = registry.snapshot();
    let resolve = |role, name: &str| snapshot.resolve(role, name).map_err(|e| anyhow::anyhow!("{}: {e}", role.as_str()));
    let (policy_entry, cost_entry, reward_entry) = (
        resolve(EntryRole::Policy, &args.policy_name)?,
        resolve(EntryRole::Cost, &args.cost_name)?,
        resolve(EntryRole::Reward, &args.reward_name)?,
    );
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let meta = policy_meta(&policy_entry, deadline).await?;
    let info = meta.info.clone();
    let limits = info.limits.unwrap_or_default();
    let (cost_info, reward_info) = tokio::try_join!(scorer_info(&cost_entry, deadline), scorer_info(&reward_entry, deadline))?;
    let header = RolloutHeader {
        policy_model_id: info.model_id.clone(),
        cost_model_id: cost_info.model_id.clone(),
        reward_model_id: reward_info.model_id.clone(),
        latent_dim: info.latent_dim as usize,
        samples: args.samples,
        chunk_tokens: args.chunk_tokens,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        seed: args.seed,
        safety_budget: args.safety_budget,
    };
    Ok(MeshRoles {
        policy: policy_entry,
        meta,
        cost: (cost_entry, cost_info),
        reward: (reward_entry, reward_info),
        header,
        max_sequence_tokens: limits.max_sequence_tokens.max(2) as usize,
        max_logit_biases: limits.max_logit_biases.max(0) as usize,
    })
}

/// A stable id of a prompt (FNV-1a of its text): it seeds the prompt's draws
/// and groups its rollouts for the train/validation split.
pub(crate) fn prompt_id(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Rolls out every training prompt not yet in `<out>/rollouts.jsonl`.
async fn collect(registry: &Registry, args: &TrainCriticArgs) -> anyhow::Result<(RolloutHeader, Vec<PromptRollouts>)> {
    let mesh = mesh_roles(registry, args).await?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let header_path = args.out.join("rollouts.header.json");
    let rollouts_path = args.out.join("rollouts.jsonl");
    if header_path.exists() {
        let found: RolloutHeader = serde_json::from_slice(&std::fs::read(&header_path)?)?;
        if found != mesh.header {
            bail!(
                "--out {} holds rollouts drawn with other settings or models ({}); use another --out or delete it\n found:    {found:?}\n wanted:   {:?}",
                args.out.display(),
                header_path.display(),
                mesh.header
            );
        }
    } else {
        std::fs::write(&header_path, serde_json::to_vec_pretty(&mesh.header)?)?;
    }
    let mut done: Vec<PromptRollouts> = crate::jsonl::read_resumable(&rollouts_path)?;
    let data = ig_training::data::AllData::load()?;
    let prompts = ig_training::datasets::critic_prompts(&data.pyrit, args.prompts, args.seed);
    if prompts.len() < args.prompts {
        tracing::warn!(available = prompts.len(), asked = args.prompts, "fewer training prompts than asked");
    }
    let params = RolloutParams {
        samples: args.samples,
        chunk_tokens: args.chunk_tokens,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: 1.0,
        seed: args.seed,
        safety_budget: args.safety_budget,
    };
    let bar = ProgressBar::new(prompts.len() as u64).with_style(ProgressStyle::with_template(
        "rollouts {bar:30} {pos}/{len} prompts  {msg}  {elapsed} (eta {eta})",
    )?);
    let mut file = crate::jsonl::open_append(&rollouts_path)?;
    // A prompt is known by its text: a rerun with more prompts keeps what is done.
    let todo: Vec<(u64, &CriticPrompt)> =
        prompts.iter().filter(|p| !done.iter().any(|d| d.prompt == p.text)).map(|p| (prompt_id(&p.text), p)).collect();
    bar.set_position((prompts.len() - todo.len()) as u64);
    let prompt_timeout = Duration::try_from_secs_f64(args.prompt_timeout_seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--prompt-timeout-seconds: must be > 0, got {}", args.prompt_timeout_seconds))?;
    // Several prompts at once: their rows share the policy's forward passes.
    let mut running = futures::stream::iter(todo)
        .map(|(id, p)| {
            let (mesh, params) = (&mesh, &params);
            async move {
                let (policy, roles) = mesh.until(Instant::now() + prompt_timeout);
                let messages = vec![pb::ChatMessage { role: "user".into(), content: p.text.clone() }];
                let token_ids = policy.render_chat(messages).await?.token_ids;
                let prompt = search::Prompt {
                    text: p.text.clone(),
                    token_ids,
                    max_sequence_tokens: mesh.max_sequence_tokens,
                    max_logit_biases: mesh.max_logit_biases,
                };
                let rollouts = roll_out(&roles, &prompt, id, params).await?;
                anyhow::Ok(PromptRollouts { prompt_id: id, prompt: p.text.clone(), harmful: p.harmful, rollouts })
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(line) = running.next().await {
        let line = line?;
        let safe = line.rollouts.iter().filter(|r| r.cost <= args.safety_budget).count();
        crate::jsonl::append(&mut file, &line)?;
        bar.set_message(format!("last: {safe}/{} safe", line.rollouts.len()));
        done.push(line);
        bar.inc(1);
    }
    drop(running);
    bar.finish();
    done.sort_by_key(|d| d.prompt_id);
    Ok((mesh.header, done))
}

/// The rollouts of `<out>`, completed through the mesh of `--registry`, or
/// of a loopback mesh started for the purpose.
async fn rollouts(args: &TrainCriticArgs) -> anyhow::Result<(RolloutHeader, Vec<PromptRollouts>)> {
    if args.samples == 0 || args.chunk_tokens == 0 || args.max_new_tokens == 0 || args.prompts == 0 {
        bail!("--prompts, --samples, --chunk-tokens and --max-new-tokens must be at least 1");
    }
    match &args.registry {
        Some(path) => collect(&*Registry::load(path, None)?, args).await,
        None => {
            ensure_demo_assets(&args.policy)?;
            let mesh = Mesh::start(args.policy.clone(), &args.scorers, Addresses::any_loopback()).await?;
            let collected = async {
                mesh.wait_ready().await?;
                collect(&*Registry::load(mesh.registry(), mesh.client_tls()?)?, args).await
            }
            .await;
            mesh.stop().await?;
            collected
        }
    }
}

pub async fn run(args: TrainCriticArgs, log_format: ig_serve::telemetry::LogFormat) -> anyhow::Result<()> {
    let _telemetry = quiet_telemetry(log_format)?;
    let (header, rollouts) = rollouts(&args).await?;
    let points: usize = rollouts.iter().flat_map(|p| &p.rollouts).map(|r| r.points.len()).sum();
    println!("{} prompts, {points} training points in {}", rollouts.len(), args.out.join("rollouts.jsonl").display());
    if args.no_train {
        return Ok(());
    }
    for &objective in &args.objectives {
        train_one(&args, &header, &rollouts, objective)?;
    }
    Ok(())
}

/// The terminal return `G` of a rollout for `objective`.
fn terminal_return(args: &TrainCriticArgs, objective: CriticObjective, r: &Rollout) -> f64 {
    match objective {
        CriticObjective::Augmented if r.cost <= args.safety_budget => r.reward,
        CriticObjective::Augmented => -args.training_penalty,
        CriticObjective::Reward => r.reward,
        CriticObjective::Lagrangian => r.reward - args.lagrange_lambda * r.cost,
    }
}

/// One sample per chunk boundary, with the Monte Carlo target `γ^(T-t) G`.
fn samples(args: &TrainCriticArgs, objective: CriticObjective, prompts: &[PromptRollouts]) -> Vec<CriticSample> {
    let mut out = Vec::new();
    for p in prompts {
        for r in &p.rollouts {
            let g = terminal_return(args, objective, r);
            let steps = r.points.len();
            for (t, point) in r.points.iter().enumerate() {
                out.push(CriticSample {
                    group: p.prompt_id,
                    latent: point.latent.clone(),
                    z: point.z,
                    target: args.discount.powi((steps - 1 - t) as i32) * g,
                });
            }
        }
    }
    out
}

/// Trains, saves and plots the critic of `objective`; returns it with its losses.
fn train_one(args: &TrainCriticArgs, header: &RolloutHeader, prompts: &[PromptRollouts], objective: CriticObjective) -> anyhow::Result<TrainedCritic> {
    let opts = CriticTrainOptions {
        hidden_width: args.hidden_width,
        learning_rate: args.learning_rate,
        batch_size: args.batch_size,
        epochs: args.epochs,
        validation_fraction: args.validation_fraction,
        seed: args.seed,
        z_scale: args.z_scale,
    };
    let (train, val) = split_by_group(samples(args, objective, prompts), opts.validation_fraction, opts.seed);
    let meta = CriticMeta {
        model_id: format!("critic-{}-{objective}", header.policy_model_id),
        policy_model_id: header.policy_model_id.clone(),
        latent_dim: header.latent_dim,
        hidden_width: opts.hidden_width,
        z_scale: opts.z_scale,
        objective,
        safety_budget: args.safety_budget,
        training_penalty: if objective == CriticObjective::Augmented { args.training_penalty } else { 0.0 },
        lagrange_lambda: if objective == CriticObjective::Lagrangian { args.lagrange_lambda } else { 0.0 },
        discount: args.discount,
        provenance: serde_json::json!({
            "rollouts": header,
            "prompts": prompts.len(),
            "prompt_source": "PyRIT refusal-file requests (pyrit 1.1.0), half harmful, half benign; none of the evaluation sets",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        }),
    };
    let bar = ProgressBar::new(opts.epochs as u64).with_style(ProgressStyle::with_template(&format!(
        "critic {objective:<10} {{bar:30}} epoch {{pos}}/{{len}}  {{elapsed}} (eta {{eta}})"
    ))?);
    let trained = train_critic(&train, &val, &opts, meta, &bar)?;
    bar.finish();
    let weights = args.out.join(format!("critic-{objective}.safetensors"));
    let (svg, _) = trained.write(&weights)?;
    let last = trained.history.last().context("no epoch ran")?;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "critic {objective}: {} train / {} validation points; validation MSE {} vs {} predicting the mean (train {:.4}); {} ({})",
        trained.train_count,
        trained.val_count,
        fmt(last.val_mse),
        fmt(trained.mean_predictor_val_mse),
        last.train_mse,
        weights.display(),
        svg.display()
    );
    Ok(trained)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: TrainCriticArgs,
    }

    fn args(out: &Path, prompts: usize) -> TrainCriticArgs {
        let (out, prompts) = (out.to_string_lossy().into_owned(), prompts.to_string());
        let flags = [
            "train-critic", "--out", &out, "--prompts", &prompts, "--samples", "4", "--max-new-tokens", "24", "--chunk-tokens", "8",
            "--no-critics", "--objectives", "augmented", "--epochs", "40", "--learning-rate", "1e-3", "--seed", "3",
        ];
        Wrap::parse_from(flags).args
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_rollouts_resume_and_train_a_critic_that_beats_the_mean() {
        let dir = tempfile::tempdir().unwrap();
        let (header, first) = rollouts(&args(dir.path(), 8)).await.unwrap();
        assert_eq!(first.len(), 8);
        assert!(first.iter().all(|p| p.rollouts.len() == 4 && p.rollouts.iter().all(|r| r.points.len() <= 3)));
        // A crash mid-write leaves a torn line; the rerun drops it, keeps what was done and draws only the new prompts.
        let file = dir.path().join("rollouts.jsonl");
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"{\"prompt_id\": 1, \"prom").unwrap();
        let (again, all) = rollouts(&args(dir.path(), 16)).await.unwrap();
        assert_eq!(again, header);
        assert_eq!(all.len(), 16);
        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 16, "each prompt once, the torn line gone");
        for p in &first {
            let kept = all.iter().find(|q| q.prompt == p.prompt).expect("a done prompt is kept");
            for (k, r) in kept.rollouts.iter().zip(&p.rollouts) {
                assert_eq!((k.prompt_id, k.sample, &k.text, k.reward, k.cost), (r.prompt_id, r.sample, &r.text, r.reward, r.cost));
                for (a, b) in k.points.iter().zip(&r.points) {
                    assert_eq!((a.tokens, a.z), (b.tokens, b.z));
                    assert!(a.latent == b.latent, "latent differs at {} tokens", a.tokens);
                }
            }
            assert_eq!(kept.rollouts.len(), p.rollouts.len());
        }
        // Other rollout settings in the same directory are refused.
        let mut other = args(dir.path(), 16);
        other.samples = 5;
        assert!(rollouts(&other).await.unwrap_err().to_string().contains("other settings"));
        // Real rollouts: the critic predicts held-out prompts' returns better than their mean does.
        let trained = train_one(&args(dir.path(), 16), &header, &all, CriticObjective::Augmented).unwrap();
        let (val, mean) = (trained.history.last().unwrap().val_mse.unwrap(), trained.mean_predictor_val_mse.unwrap());
        assert!(val < mean, "validation MSE {val} should beat the mean predictor's {mean}");
        assert!(dir.path().join("critic-augmented.safetensors").exists() && dir.path().join("critic-augmented.loss.svg").exists());
    }
}
