//! The critic methods end to end: the demo policy, cost and reward servers,
//! the committed demo critics (models/critics) on critic servers, an
//! orchestrator over a registry file, real gRPC between all.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ig_models::Device;
use common::{registry_toml, shared_roles, GuardUnderTest};
use ig_models::critic::{Critic, CriticMeta, CriticObjective};
use ig_proto::v1 as pb;
use tokio::net::TcpListener;
use tonic::Code;
use tonic_types::StatusExt;

const HARMLESS: &str = "Give me one tip for sleeping well.";

fn demo_critic(objective: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(format!("models/critics/critic-{objective}.safetensors"))
}

/// Serves the critic file at `path` on a free port (for the life of the test binary).
async fn serve_critic(path: &Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = ig_critic::CriticArgs::with_model(path, addr);
    tokio::spawn(ig_critic::run(args, listener, std::future::pending()));
    let endpoint = format!("http://{addr}");
    let channel = ig_orchestrator::channel::connect_lazy(&endpoint, None).unwrap();
    ig_orchestrator::channel::wait_serving(&channel, &endpoint, ig_critic::SERVICE_NAME, std::time::Duration::from_secs(60)).await.unwrap();
    addr
}

fn critic_entry(name: &str, objective: &str, addr: SocketAddr) -> String {
    format!("\n[[critic]]\nname = \"{name}\"\nobjective = \"{objective}\"\nendpoints = [\"http://{addr}\"]\n")
}

fn request(method: pb::Method, seed: i64, critic: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText(HARMLESS.into())),
        method: method as i32,
        params: Some(pb::SearchParams {
            samples_count: Some(4),
            beam_width: Some(2),
            chunk_tokens: Some(6),
            max_new_tokens: Some(12),
            seed: Some(seed),
            recontrol_steps: Some(3),
            ..Default::default()
        }),
        critic: critic.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn critic_methods_answer_and_recontrol_without_ascent_is_base_sampling() {
    let roles = shared_roles();
    let mut registry = registry_toml(roles, &["minilm-cost"], &[]);
    for objective in ["augmented", "reward", "lagrangian"] {
        registry += &critic_entry(&format!("demo-{objective}"), objective, serve_critic(&demo_critic(objective)).await);
    }
    let g = GuardUnderTest::start(&registry).await;
    let mut client = g.client.clone();
    for (method, critic) in [
        (pb::Method::InferenceGuardCritic, "demo-augmented"),
        (pb::Method::Recontrol, "demo-reward"),
        (pb::Method::RecontrolLagrangian, "demo-lagrangian"),
    ] {
        // Once by name, once by the registry's default for the method's objective.
        for name in [critic, ""] {
            let r = client.generate(request(method, 5, name)).await.unwrap_or_else(|e| panic!("{method:?}: {e:?}")).into_inner().result.unwrap();
            assert!(!r.token_ids.is_empty() && r.token_ids.len() <= 12, "{method:?}");
            assert_eq!(r.safe, r.cost <= 0.0);
            assert!(r.timings.unwrap().critic_ns > 0, "{method:?} called the critic");
            assert_eq!(r.models.unwrap().critic.unwrap().name, critic);
        }
    }
    // With no ascent step, RECONTROL draws what base sampling draws for the same seed.
    for seed in [1, 2] {
        let mut recontrol = request(pb::Method::Recontrol, seed, "");
        recontrol.params.as_mut().unwrap().recontrol_steps = Some(0);
        let base = client.generate(request(pb::Method::Base, seed, "")).await.unwrap().into_inner().result.unwrap();
        let plain = client.generate(recontrol).await.unwrap().into_inner().result.unwrap();
        assert_eq!(plain.token_ids, base.token_ids, "seed {seed}");
        assert_eq!(plain.text, base.text);
    }
    g.stop().await;
}

#[tokio::test]
async fn a_critic_of_another_objective_policy_or_size_is_refused_naming_it() {
    let roles = shared_roles();
    let dir = tempfile::tempdir().unwrap();
    let reward = serve_critic(&demo_critic("reward")).await;
    // Critics built for another policy, and for another latent size.
    let demo = CriticMeta::read(&demo_critic("reward")).unwrap();
    let other_policy = dir.path().join("other-policy.safetensors");
    Critic::random(CriticMeta { policy_model_id: "some-7b".into(), ..demo.clone() }, 1, &Device::Cpu).unwrap().save(&other_policy).unwrap();
    let other_size = dir.path().join("other-size.safetensors");
    let lagrangian_64 = CriticMeta { latent_dim: 64, objective: CriticObjective::Lagrangian, ..demo.clone() };
    Critic::random(lagrangian_64, 1, &Device::Cpu).unwrap().save(&other_size).unwrap();
    let mut registry = registry_toml(roles, &["minilm-cost"], &[]);
    registry += &critic_entry("mislabelled", "augmented", reward);
    registry += &critic_entry("for-7b", "reward", serve_critic(&other_policy).await);
    registry += &critic_entry("for-64d", "lagrangian", serve_critic(&other_size).await);
    let g = GuardUnderTest::start(&registry).await;
    let mut client = g.client.clone();
    let cases = [
        (pb::Method::InferenceGuardCritic, "mislabelled", Code::FailedPrecondition, "CRITIC_OBJECTIVE_MISMATCH"),
        (pb::Method::Recontrol, "for-7b", Code::FailedPrecondition, "POLICY_MISMATCH"),
        (pb::Method::RecontrolLagrangian, "", Code::FailedPrecondition, "LATENT_DIM_MISMATCH"),
        (pb::Method::Recontrol, "nope", Code::NotFound, "MODEL_NOT_FOUND"),
        (pb::Method::Recontrol, "smollm2", Code::FailedPrecondition, "MODEL_ROLE_MISMATCH"),
    ];
    for (method, critic, code, reason) in cases {
        let err = client.generate(request(method, 1, critic)).await.expect_err(critic);
        assert_eq!(err.code(), code, "{critic}: {err:?}");
        assert!(err.message().starts_with("critic: "), "{:?} should name the critic field", err.message());
        assert_eq!(err.get_details_error_info().map(|i| i.reason), Some(reason.to_string()), "{critic}: {err:?}");
    }
    g.stop().await;
}
