//! `inferenceguard up` and `inferenceguard demo`: the mesh on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use ig_orchestrator::PolicyClient;
use ig_serve::telemetry::LogFormat;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::extend_cmd::{extend_and_print, SampleArgs};

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub policy: ig_policy::PolicyArgs,
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
}

/// The roles running in this process.
struct Mesh {
    policy: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Mesh {
    /// Starts every role on its own listener (real gRPC between them).
    async fn start(policy: ig_policy::PolicyArgs, policy_addr: SocketAddr) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let listener = TcpListener::bind(policy_addr).await.map_err(|e| anyhow::anyhow!("policy --listen {policy_addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let mut rx = stopped.clone();
        let task = tokio::spawn(ig_policy::run(policy, listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        Ok(Self { policy: addr, stop, tasks: vec![task] })
    }

    async fn wait_ready(&self) -> anyhow::Result<PolicyClient> {
        let bar = ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message("policy: loading and warming up the model");
        let client = PolicyClient::connect_lazy(&format!("http://{}", self.policy))?;
        let ready = client.wait_ready(Duration::from_secs(600)).await;
        bar.finish_and_clear();
        ready?;
        Ok(client)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

fn ensure_demo_model(policy: &ig_policy::PolicyArgs) -> anyhow::Result<()> {
    if policy.model.is_none() {
        let cache = ig_assets::AssetCache::from_env()?;
        crate::assets_cmd::fetch(&cache, &[ig_assets::SMOLLM2.to_string()])?;
    }
    Ok(())
}

pub async fn up(args: UpArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let _telemetry = ig_serve::telemetry::init("inferenceguard", log_format, None)?;
    ensure_demo_model(&args.policy)?;
    let addr = args.policy.listen;
    let mesh = Mesh::start(args.policy, addr).await?;
    mesh.wait_ready().await?;
    println!("policy  grpc://{}  (inferenceguard.v1.PolicyService)", mesh.policy);
    println!("mesh is up; Ctrl-C to stop");
    ig_serve::server::shutdown_signal().await;
    mesh.stop().await
}

pub async fn demo(args: DemoArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let _telemetry = ig_serve::telemetry::init("inferenceguard", log_format, None)?;
    ensure_demo_model(&args.policy)?;
    let mesh = Mesh::start(args.policy, "127.0.0.1:0".parse()?).await?;
    let client = mesh.wait_ready().await?;
    println!("policy up at grpc://{}", mesh.policy);
    let result = extend_and_print(&client, &args.prompt, &args.sampling).await;
    mesh.stop().await?;
    result
}
