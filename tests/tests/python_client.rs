//! Clients in another language: the Python grpcio clients of
//! `tests/python/`, generated from `proto/` at run time,
//! against a real policy server. Needs `python3 -m pip install grpcio grpcio-tools`
//! (`.ci/run` installs them).

mod common;

use std::path::Path;

use common::PolicyUnderTest;

/// Runs `tests/python/<script>` with `args` and parses the JSON line it prints.
async fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let output = tokio::process::Command::new(std::env::var("IG_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(root.join("tests/python").join(script))
        .args(args)
        .current_dir(&root)
        .output()
        .await
        .expect("python3 must be installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Python client {script} failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

#[tokio::test]
async fn python_grpcio_client_calls_info_and_extends_a_prompt() {
    let s = PolicyUnderTest::ready(&[]).await;
    let summary = run_python("policy_client.py", &["--target", &s.addr.to_string(), "--children", "3", "--chunk-tokens", "6"]).await;
    assert_eq!(summary["vocab_size"], 49152);
    assert_eq!(summary["latent_dim"], 576);
    let cands = summary["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 3);
    for c in cands {
        assert_eq!(c["latent_dim"], 576);
        assert!(c["tokens"].as_u64().unwrap() >= 1);
    }
    assert_eq!(summary["invalid_request"]["code"], "INVALID_ARGUMENT");
    assert!(summary["invalid_request"]["details"].as_str().unwrap().starts_with("prefixes:"));
    s.stop().await;
}

#[tokio::test]
async fn python_grpcio_client_calls_generate_and_reads_stream_events() {
    let roles = common::shared_roles();
    let g = common::GuardUnderTest::start(&common::registry_toml(roles, &["minilm-cost"], &[])).await;
    let summary = run_python("guard_client.py", &["--target", &g.addr.to_string()]).await;
    assert_eq!(summary["methods"], 12);
    assert_eq!(summary["unary"]["method"], "METHOD_INFERENCE_GUARD");
    let steps = summary["stream_steps"].as_array().unwrap();
    assert_eq!(steps.len() as u64, summary["stream_result"]["step_count"].as_u64().unwrap());
    assert!(!steps.is_empty());
    // Same seed through both RPCs: the same response.
    assert_eq!(summary["stream_result"]["token_ids"], summary["unary_token_ids"]);
    assert_eq!(summary["invalid_request"]["code"], "INVALID_ARGUMENT");
    assert!(summary["invalid_request"]["details"].as_str().unwrap().starts_with("params.chunk_tokens:"));
    g.stop().await;
}

#[tokio::test]
async fn python_grpcio_reflection_v1alpha_lists_the_services_of_every_server() {
    use ig_models::critic::{Critic, CriticMeta};
    let roles = common::shared_roles();
    let g = common::GuardUnderTest::start(&common::registry_toml(roles, &["minilm-cost"], &[])).await;
    // A critic of random weights: reflection does not depend on the model.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("critic.safetensors");
    let meta = CriticMeta {
        model_id: "critic".into(),
        policy_model_id: "policy".into(),
        latent_dim: 8,
        hidden_width: 8,
        z_scale: 1.0,
        objective: ig_core::critic::CriticObjective::Augmented,
        safety_budget: 0.0,
        training_penalty: 1.0,
        lagrange_lambda: 0.0,
        discount: 1.0,
        provenance: serde_json::json!({}),
    };
    Critic::random(meta, 1, &ig_models::Device::Cpu).unwrap().save(&model).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let critic = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ig_critic::run(ig_critic::CriticArgs::with_model(&model, critic), listener, async move {
        let _ = stopped.await;
    }));
    let channel = ig_orchestrator::channel::connect_lazy(&format!("http://{critic}"), None).unwrap();
    ig_orchestrator::channel::wait_serving(&channel, "critic", ig_critic::SERVICE_NAME, std::time::Duration::from_secs(60)).await.unwrap();
    let targets: Vec<(String, &str)> = vec![
        (roles.policy.to_string(), ig_policy::SERVICE_NAME),
        (roles.cost.to_string(), ig_scorer::SERVICE_NAME),
        (critic.to_string(), ig_critic::SERVICE_NAME),
        (g.addr.to_string(), "inferenceguard.v1.GuardService"),
    ];
    let args: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
    let listed = run_python("reflection_list.py", &args).await;
    for (target, service) in &targets {
        let names: Vec<&str> = listed[target].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(names.contains(service) && names.contains(&"grpc.health.v1.Health"), "{target}: {names:?}");
    }
    let _ = stop.send(());
    g.stop().await;
}
