//! `inferenceguard up` and `inferenceguard demo`: the mesh on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ig_orchestrator::{PolicyClient, ScorerClient};
use ig_serve::telemetry::LogFormat;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::extend_cmd::{extend_and_print, SampleArgs};

/// The score models the mesh runs beside the policy.
#[derive(Debug, Clone, Args)]
pub struct ScorerModels {
    /// The cost model (a head file or checkpoint directory).
    #[arg(long, default_value = "models/heads/cost-minilm-l6.safetensors")]
    pub cost_model: PathBuf,
    /// The reward model (a head file or checkpoint directory).
    #[arg(long, default_value = "models/heads/reward-minilm-l6.safetensors")]
    pub reward_model: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    pub scorers: ScorerModels,
    /// Address of the cost scorer.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub cost_listen: SocketAddr,
    /// Address of the reward scorer.
    #[arg(long, default_value = "127.0.0.1:50053")]
    pub reward_listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The user's message.
    #[arg(default_value = "Give me three tips for staying focused while studying.")]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SampleArgs,
    #[command(flatten)]
    pub policy: ig_policy::PolicyArgs,
    #[command(flatten)]
    pub scorers: ScorerModels,
}

/// The roles running in this process, each on its own listener (real gRPC
/// between them).
struct Mesh {
    policy: SocketAddr,
    cost: SocketAddr,
    reward: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Where each role listens.
struct Addresses {
    policy: SocketAddr,
    cost: SocketAddr,
    reward: SocketAddr,
}

async fn bind(role: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{role} listen address {addr}: {e}"))
}

impl Mesh {
    async fn start(policy: ig_policy::PolicyArgs, scorers: &ScorerModels, at: Addresses) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let signal = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let (pl, cl, rl) = (bind("policy", at.policy).await?, bind("cost", at.cost).await?, bind("reward", at.reward).await?);
        let (policy_addr, cost_addr, reward_addr) = (pl.local_addr()?, cl.local_addr()?, rl.local_addr()?);
        let cost = ig_scorer::ScorerArgs::with_model(&scorers.cost_model, cost_addr);
        let reward = ig_scorer::ScorerArgs::with_model(&scorers.reward_model, reward_addr);
        let tasks = vec![
            tokio::spawn(ig_policy::run(policy, pl, signal(stopped.clone()))),
            tokio::spawn(ig_scorer::run(cost, cl, signal(stopped.clone()))),
            tokio::spawn(ig_scorer::run(reward, rl, signal(stopped))),
        ];
        Ok(Self { policy: policy_addr, cost: cost_addr, reward: reward_addr, stop, tasks })
    }

    async fn wait_ready(&self) -> anyhow::Result<(PolicyClient, ScorerClient, ScorerClient)> {
        let bar = ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message("loading and warming up the models");
        let policy = PolicyClient::connect_lazy(&format!("http://{}", self.policy))?;
        let cost = ScorerClient::connect_lazy(&format!("http://{}", self.cost))?;
        let reward = ScorerClient::connect_lazy(&format!("http://{}", self.reward))?;
        let limit = Duration::from_secs(600);
        let ready = tokio::try_join!(policy.wait_ready(limit), cost.wait_ready(limit), reward.wait_ready(limit));
        bar.finish_and_clear();
        ready?;
        Ok((policy, cost, reward))
    }

    fn print_endpoints(&self) {
        println!("policy  grpc://{}  (inferenceguard.v1.PolicyService)", self.policy);
        println!("cost    grpc://{}  (inferenceguard.v1.ScorerService)", self.cost);
        println!("reward  grpc://{}  (inferenceguard.v1.ScorerService)", self.reward);
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// Fetches the demo assets the mesh will load (the policy model unless one is
/// given, and the MiniLM trunk under the demo heads).
fn ensure_demo_assets(policy: &ig_policy::PolicyArgs) -> anyhow::Result<()> {
    let cache = ig_assets::AssetCache::from_env()?;
    let mut ids = vec![ig_assets::MINILM.to_string()];
    if policy.model.is_none() {
        ids.push(ig_assets::SMOLLM2.to_string());
    }
    crate::assets_cmd::fetch(&cache, &ids)
}

pub async fn up(args: UpArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let _telemetry = ig_serve::telemetry::init("inferenceguard", log_format, None)?;
    ensure_demo_assets(&args.policy)?;
    let at = Addresses { policy: args.policy.listen, cost: args.cost_listen, reward: args.reward_listen };
    let mesh = Mesh::start(args.policy, &args.scorers, at).await?;
    mesh.wait_ready().await?;
    mesh.print_endpoints();
    println!("mesh is up; Ctrl-C to stop");
    ig_serve::server::shutdown_signal().await;
    mesh.stop().await
}

pub async fn demo(args: DemoArgs, log_format: LogFormat) -> anyhow::Result<()> {
    // The demo's output is for people: only warnings from the servers, unless asked.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let _telemetry = ig_serve::telemetry::init("inferenceguard", log_format, None)?;
    ensure_demo_assets(&args.policy)?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mesh = Mesh::start(args.policy, &args.scorers, Addresses { policy: any, cost: any, reward: any }).await?;
    let (policy, cost, reward) = mesh.wait_ready().await?;
    mesh.print_endpoints();
    let result = extend_and_print(&policy, &args.prompt, &args.sampling, Some((&cost, &reward))).await;
    mesh.stop().await?;
    result
}
