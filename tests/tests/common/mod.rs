//! Starting real role servers on 127.0.0.1:0 for end-to-end tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
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
    /// Starts the demo policy (f32) with extra flags; does not wait for readiness.
    pub async fn start(extra: &[&str]) -> Self {
        let mut argv = vec!["ig-policy", "--dtype", "f32"];
        argv.extend_from_slice(extra);
        let args = Wrap::parse_from(argv).policy;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ig_policy::run(args, listener, async move {
            let _ = stopped.await;
        }));
        let client = PolicyClient::connect_lazy(&format!("http://{addr}")).unwrap();
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

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}
