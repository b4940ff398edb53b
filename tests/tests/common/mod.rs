//! Starting real role servers on 127.0.0.1:0 for end-to-end tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ig_models::policy::CausalLmPolicy;
use ig_orchestrator::in_process::{EnginePolicy, EngineScorer, InProcessRoles};
use ig_orchestrator::PolicyClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
}

/// A policy server running in this process.
pub struct PolicyUnderTest {
    pub addr: SocketAddr,
    pub client: PolicyClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl PolicyUnderTest {
    /// Starts the demo policy (f32, no drain delay) with extra flags; does not wait for readiness.
    pub async fn start(extra: &[&str]) -> Self {
        let mut argv = vec!["ig-policy", "--dtype", "f32"];
        if !extra.contains(&"--drain-delay-seconds") {
            argv.extend_from_slice(&["--drain-delay-seconds", "0"]);
        }
        argv.extend_from_slice(extra);
        let args = Wrap::parse_from(argv).policy;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ig_policy::run(args, listener, async move {
            let _ = stopped.await;
        }));
        let client = PolicyClient::connect_lazy(&format!("http://{addr}"), None).unwrap();
        Self { addr, client, stop: Some(stop), task: Some(task) }
    }

    /// Starts and waits until health says SERVING.
    pub async fn ready(extra: &[&str]) -> Self {
        let s = Self::start(extra).await;
        s.client.wait_ready(Duration::from_secs(300)).await.unwrap();
        s
    }

    /// Waits for the server task to end on its own and returns its result.
    pub async fn finished(mut self) -> anyhow::Result<()> {
        self.task.take().unwrap().await.unwrap()
    }

    /// Sends the shutdown signal without waiting (see [`PolicyUnderTest::finished`]).
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// The demo roles (policy, cost and reward scorers), started once per test
/// binary on a runtime of their own so that every test of the binary shares
/// them (loading the models once).
pub struct SharedRoles {
    pub policy: SocketAddr,
    pub cost: SocketAddr,
    pub reward: SocketAddr,
}

/// A demo score head committed under `models/heads` (`cost` or `reward`).
pub fn demo_head(role: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    root.join(format!("models/heads/{role}-minilm-l6.safetensors"))
}

/// The models of [`shared_roles`], loaded again and called in-process (no
/// servers, no gRPC), with the servers' default settings.
pub async fn in_process_roles() -> InProcessRoles<CausalLmPolicy> {
    let policy = Wrap::parse_from(["ig-policy", "--dtype", "f32"]).policy;
    let scorer = |role: &str| {
        let args = ig_scorer::ScorerArgs::with_model(&demo_head(role), "127.0.0.1:0".parse().unwrap());
        let engine = ig_scorer::start_engine(&args).unwrap();
        async move { EngineScorer::new(engine, &args.limits(), args.max_batch_items, args.queue_depth).await }
    };
    let (policy, cost, reward) =
        tokio::try_join!(EnginePolicy::new(ig_policy::start_engine(&policy).unwrap(), policy.limits()), scorer("cost"), scorer("reward")).unwrap();
    InProcessRoles::new(policy, cost, reward)
}

/// Starts the shared roles on first use and waits until they serve.
pub fn shared_roles() -> &'static SharedRoles {
    static ROLES: std::sync::OnceLock<SharedRoles> = std::sync::OnceLock::new();
    ROLES.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
                let (pl, cl, rl) = (bind().await, bind().await, bind().await);
                let roles = SharedRoles { policy: pl.local_addr().unwrap(), cost: cl.local_addr().unwrap(), reward: rl.local_addr().unwrap() };
                let policy = Wrap::parse_from(["ig-policy", "--dtype", "f32"]).policy;
                let cost = ig_scorer::ScorerArgs::with_model(&demo_head("cost"), roles.cost);
                let reward = ig_scorer::ScorerArgs::with_model(&demo_head("reward"), roles.reward);
                let forever = std::future::pending::<()>;
                tokio::spawn(ig_policy::run(policy, pl, forever()));
                tokio::spawn(ig_scorer::run(cost, cl, forever()));
                tokio::spawn(ig_scorer::run(reward, rl, forever()));
                let p = PolicyClient::connect_lazy(&format!("http://{}", roles.policy), None).unwrap();
                let c = ig_orchestrator::ScorerClient::connect_lazy(&format!("http://{}", roles.cost), None).unwrap();
                let r = ig_orchestrator::ScorerClient::connect_lazy(&format!("http://{}", roles.reward), None).unwrap();
                let wait = Duration::from_secs(300);
                tokio::try_join!(p.wait_ready(wait), c.wait_ready(wait), r.wait_ready(wait)).unwrap();
                tx.send(roles).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("the shared roles failed to start")
    })
}

/// The registry of the shared roles, with the cost model under `cost_names`
/// (the first one the default) and `extra_cost_endpoints` before the live one.
pub fn registry_toml(roles: &SharedRoles, cost_names: &[&str], extra_cost_endpoints: &[String]) -> String {
    let mut s = format!("[[policy]]\nname = \"smollm2\"\nendpoints = [\"http://{}\"]\n\n", roles.policy);
    for (i, name) in cost_names.iter().enumerate() {
        let mut endpoints: Vec<String> = extra_cost_endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        endpoints.push(format!("\"http://{}\"", roles.cost));
        s += &format!("[[scorer]]\nname = \"{name}\"\nrole = \"cost\"\nendpoints = [{}]\ndefault = {}\n\n", endpoints.join(", "), i == 0);
    }
    s += &format!("[[scorer]]\nname = \"minilm-reward\"\nrole = \"reward\"\nendpoints = [\"http://{}\"]\n", roles.reward);
    s
}

/// An address nothing listens on.
pub async fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// An orchestrator running in this test's runtime over a registry file.
pub struct GuardUnderTest {
    pub addr: SocketAddr,
    /// The OpenAI-compatible HTTP API, when started with it.
    pub http: Option<SocketAddr>,
    pub client: ig_proto::v1::guard_service_client::GuardServiceClient<tonic::transport::Channel>,
    pub registry: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl GuardUnderTest {
    /// Starts an orchestrator over `registry` (TOML), re-reading it every 100 ms.
    pub async fn start(registry: &str) -> Self {
        Self::start_with(registry, |_| {}).await
    }

    /// [`GuardUnderTest::start`] with some of the orchestrator's flags changed.
    pub async fn start_with(registry: &str, configure: impl FnOnce(&mut ig_orchestrator::OrchestratorArgs)) -> Self {
        Self::start_full(registry, configure, None, false).await
    }

    /// [`GuardUnderTest::start_with`] serving the OpenAI-compatible HTTP API too.
    pub async fn start_with_http(registry: &str, configure: impl FnOnce(&mut ig_orchestrator::OrchestratorArgs)) -> Self {
        Self::start_full(registry, configure, None, true).await
    }

    /// [`GuardUnderTest::start_with`] for an orchestrator serving TLS (its flags set by
    /// `configure`), reached over `https://localhost` with `tls`.
    pub async fn start_secure(
        registry: &str,
        configure: impl FnOnce(&mut ig_orchestrator::OrchestratorArgs),
        tls: Option<ig_serve::tls::ClientTls>,
    ) -> Self {
        Self::start_full(registry, configure, tls, false).await
    }

    /// [`GuardUnderTest::start_secure`] serving the OpenAI-compatible HTTP API too (with the
    /// same certificate when `configure` sets one).
    pub async fn start_secure_with_http(
        registry: &str,
        configure: impl FnOnce(&mut ig_orchestrator::OrchestratorArgs),
        tls: Option<ig_serve::tls::ClientTls>,
    ) -> Self {
        Self::start_full(registry, configure, tls, true).await
    }

    async fn start_full(
        registry: &str,
        configure: impl FnOnce(&mut ig_orchestrator::OrchestratorArgs),
        tls: Option<ig_serve::tls::ClientTls>,
        with_http: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, registry).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut args = ig_orchestrator::OrchestratorArgs::with_registry(&path, addr);
        args.registry_poll_seconds = 0.1;
        args.health_interval_seconds = 0.2;
        configure(&mut args);
        let (stop, stopped) = oneshot::channel::<()>();
        let http = if with_http { Some(TcpListener::bind("127.0.0.1:0").await.unwrap()) } else { None };
        let http_addr = http.as_ref().map(|h| h.local_addr().unwrap());
        let task = tokio::spawn(ig_orchestrator::serve(args, listener, http, async move {
            let _ = stopped.await;
        }));
        let url = match &tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let guard = ig_orchestrator::GuardClient::connect_lazy(&url, tls.as_ref()).unwrap();
        guard.wait_ready(Duration::from_secs(30)).await.unwrap();
        let channel = ig_orchestrator::channel::connect_lazy(&url, tls.as_ref()).unwrap();
        let client = ig_proto::v1::guard_service_client::GuardServiceClient::new(channel);
        Self { addr, http: http_addr, client, registry: path, _dir: dir, stop: Some(stop), task: Some(task) }
    }

    /// Stops the orchestrator.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}
