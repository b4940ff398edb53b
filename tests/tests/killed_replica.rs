//! A policy replica killed while searches are in flight: every search still completes, on
//! the survivor. The killed replica is a TCP proxy in front of the demo policy that drops
//! every connection at once and stops listening, as a killed pod looks from the network.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{registry_toml, shared_roles, GuardUnderTest};
use ig_proto::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A proxy to `target` that can be killed: its listener and every connection through it
/// are dropped at once.
struct KillableProxy {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
    open: Arc<AtomicUsize>,
}

impl KillableProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (set, count) = (tasks.clone(), open.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let count = count.clone();
                set.lock().unwrap().spawn(async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, tasks, open }
    }

    /// Drops the listener and every connection; returns how many were open.
    fn kill(&self) -> usize {
        let open = self.open.load(Ordering::SeqCst);
        self.tasks.lock().unwrap().abort_all();
        open
    }
}

fn search(seed: i64) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText("Describe how bread is made, step by step.".into())),
        method: pb::Method::InferenceGuard as i32,
        params: Some(pb::SearchParams {
            samples_count: Some(8),
            chunk_tokens: Some(8),
            max_new_tokens: Some(48),
            seed: Some(seed),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_policy_replica_killed_mid_search_hands_its_work_to_the_survivor() {
    let roles = shared_roles();
    let proxy = KillableProxy::start(roles.policy).await;
    let live = format!("endpoints = [\"http://{}\"]", roles.policy);
    let registry = registry_toml(roles, &["minilm-cost"], &[]);
    assert!(registry.contains(&live), "{registry}");
    let registry = registry.replacen(&live, &format!("endpoints = [\"http://{}\", \"http://{}\"]", proxy.addr, roles.policy), 1);
    let g = GuardUnderTest::start(&registry).await;

    // Three searches at once; each step's extension is split over both replicas.
    let searches: Vec<_> = (0..3)
        .map(|seed| {
            let mut client = g.client.clone();
            tokio::spawn(async move { client.generate(search(seed)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = proxy.kill();
    assert!(cut > 0, "the kill must cut live connections to test anything");
    for (i, s) in searches.into_iter().enumerate() {
        let r = s.await.unwrap().unwrap_or_else(|e| panic!("search {i} failed with its replica: {e:?}")).into_inner().result.unwrap();
        assert!(!r.token_ids.is_empty(), "search {i}");
    }
    // And a search after the kill runs on the survivor alone.
    g.client.clone().generate(search(9)).await.expect("the survivor serves the next search");
    g.stop().await;
}
