//! The critic service over real gRPC on 127.0.0.1:0, with a small randomly
//! initialised critic written to a temporary file.

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use ig_models::critic::{Critic, CriticMeta, CriticObjective};
use ig_models::Device;
use ig_proto::v1 as pb;
use ig_proto::v1::critic_service_client::CriticServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    critic: ig_critic::CriticArgs,
}

const DIM: usize = 12;
const HIDDEN: usize = 24;
const POLICY: &str = "policy-under-test";

fn meta() -> CriticMeta {
    CriticMeta {
        model_id: "critic-under-test".into(),
        policy_model_id: POLICY.into(),
        latent_dim: DIM,
        hidden_width: HIDDEN,
        z_scale: 0.25,
        objective: CriticObjective::Augmented,
        safety_budget: 0.5,
        training_penalty: 10.0,
        lagrange_lambda: 0.0,
        discount: 0.999,
        provenance: serde_json::json!({"data": "random weights for the service test"}),
    }
}

struct CriticUnderTest {
    client: CriticServiceClient<Channel>,
    channel: Channel,
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[&str]) -> CriticUnderTest {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("critic.safetensors");
    Critic::random(meta(), 17, &Device::Cpu).unwrap().save(&path).unwrap();
    let model = path.to_string_lossy().into_owned();
    let mut argv = vec!["ig-critic", "--model", model.as_str()];
    argv.extend_from_slice(extra);
    let args = Wrap::parse_from(argv).critic;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ig_critic::run(args, listener, async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let s = CriticUnderTest { client: CriticServiceClient::new(channel.clone()), channel, addr, stop, task, _dir: dir };
    s.wait_ready().await;
    s
}

impl CriticUnderTest {
    async fn health(&self) -> Result<ServingStatus, tonic::Status> {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let r = h.check(tonic_health::pb::HealthCheckRequest { service: ig_critic::SERVICE_NAME.into() }).await?;
        Ok(r.into_inner().status())
    }

    async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(ServingStatus::Serving) = self.health().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("critic never became ready");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Deterministic latents in [-1, 1] and z in [-2, 2].
fn items(n: usize) -> Vec<pb::CriticItem> {
    (0..n)
        .map(|i| pb::CriticItem {
            latent: Some(pb::Latent { values: (0..DIM).map(|j| (((i * 31 + j * 17) % 41) as f32 / 20.0) - 1.0).collect() }),
            z: (i as f64 * 0.7) % 4.0 - 2.0,
        })
        .collect()
}

fn latent(it: &pb::CriticItem) -> &[f32] {
    &it.latent.as_ref().unwrap().values
}

async fn evaluate(client: &mut CriticServiceClient<Channel>, items: Vec<pb::CriticItem>) -> Vec<f32> {
    let r = client.evaluate(pb::EvaluateRequest { policy_model_id: POLICY.into(), items }).await.unwrap().into_inner();
    assert_eq!(r.stats.unwrap().pass_count, 1);
    r.values
}

async fn gradient(client: &mut CriticServiceClient<Channel>, items: Vec<pb::CriticItem>) -> Vec<pb::CriticGradient> {
    client.gradient(pb::GradientRequest { policy_model_id: POLICY.into(), items }).await.unwrap().into_inner().gradients
}

#[tokio::test]
async fn health_info_and_batch_equals_one_by_one() {
    let s = start(&[]).await;
    let mut client = s.client.clone();
    let info = client.info(pb::CriticInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.model_id, "critic-under-test");
    assert_eq!(info.policy_model_id, POLICY);
    assert_eq!((info.latent_dim, info.hidden_width), (DIM as i32, HIDDEN as i32));
    assert_eq!(info.objective(), pb::CriticObjective::Augmented);
    assert_eq!((info.z_scale, info.safety_budget, info.training_penalty, info.discount), (0.25, 0.5, 10.0, 0.999));
    assert_eq!((info.weight_dtype.as_str(), info.device.as_str()), ("f32", "cpu"));
    let provenance: serde_json::Value = serde_json::from_str(&info.provenance).unwrap();
    assert_eq!(provenance["data"], "random weights for the service test");
    let limits = info.limits.unwrap();
    assert_eq!((limits.max_items, limits.max_ascent_steps), (256, 100));
    assert!(limits.max_message_bytes as usize >= 256 * 4096 * 4, "room for max_items 4096-d latents");
    assert!(!info.server_version.is_empty());

    let batch = evaluate(&mut client, items(6)).await;
    assert_eq!(batch.len(), 6);
    for (i, it) in items(6).into_iter().enumerate() {
        let one = evaluate(&mut client, vec![it]).await;
        assert!((one[0] - batch[i]).abs() < 1e-5, "item {i}: batch {} vs single {}", batch[i], one[0]);
    }
    // The policy id is optional.
    let r = client.evaluate(pb::EvaluateRequest { policy_model_id: String::new(), items: items(2) }).await.unwrap().into_inner();
    assert_eq!(r.values, batch[..2].to_vec());
    s.stop().await;
}

#[tokio::test]
async fn gradient_matches_finite_differences_of_evaluate() {
    let s = start(&[]).await;
    let mut client = s.client.clone();
    let base = items(3);
    let grads = gradient(&mut client, base.clone()).await;
    let values = evaluate(&mut client, base.clone()).await;
    assert_eq!(grads.len(), 3);
    let eps = 1e-3f32;
    let close = |fd: f64, g: f64| (fd - g).abs() <= 2e-2 * fd.abs().max(g.abs()) + 5e-4;
    for (i, g) in grads.iter().enumerate() {
        assert!((g.value - values[i]).abs() < 1e-6);
        let d = &g.latent_gradient.as_ref().unwrap().values;
        assert_eq!(d.len(), DIM);
        assert!(d.iter().any(|v| v.abs() > 1e-4), "item {i}: a flat critic proves nothing");
        // All perturbations of item i in one Evaluate call.
        let mut probes = Vec::new();
        for j in 0..DIM {
            for sign in [1.0f32, -1.0] {
                let mut it = base[i].clone();
                it.latent.as_mut().unwrap().values[j] += sign * eps;
                probes.push(it);
            }
        }
        for sign in [1.0, -1.0] {
            let mut it = base[i].clone();
            it.z += sign * eps as f64;
            probes.push(it);
        }
        let v = evaluate(&mut client, probes.clone()).await;
        for j in 0..DIM {
            let step = (latent(&probes[2 * j])[j] - latent(&probes[2 * j + 1])[j]) as f64;
            let fd = (v[2 * j] as f64 - v[2 * j + 1] as f64) / step;
            assert!(close(fd, d[j] as f64), "item {i} component {j}: finite difference {fd} vs gradient {}", d[j]);
        }
        let fd = (v[2 * DIM] as f64 - v[2 * DIM + 1] as f64) / (2.0 * eps as f64);
        assert!(close(fd, g.z_gradient), "item {i} z: finite difference {fd} vs gradient {}", g.z_gradient);
    }
    s.stop().await;
}

#[tokio::test]
async fn ascend_equals_client_side_gradient_steps() {
    let s = start(&[]).await;
    let mut client = s.client.clone();
    let base = items(4);
    let values = evaluate(&mut client, base.clone()).await;

    // Zero steps: the latents come back unchanged, with their values.
    let still = client
        .ascend(pb::AscendRequest { policy_model_id: POLICY.into(), items: base.clone(), steps: 0, step_size: 0.0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.stats.unwrap().pass_count, 1);
    for (i, r) in still.results.iter().enumerate() {
        assert_eq!(r.latent.as_ref().unwrap().values, latent(&base[i]));
        assert_eq!((r.initial_value, r.final_value), (values[i], values[i]));
    }

    // k steps in the critic equal k Gradient calls and updates by the client.
    let (k, step_size) = (4, 0.05f32);
    let moved = client
        .ascend(pb::AscendRequest { policy_model_id: POLICY.into(), items: base.clone(), steps: k, step_size })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.stats.unwrap().pass_count, k as i64 + 1);
    let mut cur = base.clone();
    for _ in 0..k {
        let grads = gradient(&mut client, cur.clone()).await;
        for (it, g) in cur.iter_mut().zip(&grads) {
            for (h, d) in it.latent.as_mut().unwrap().values.iter_mut().zip(&g.latent_gradient.as_ref().unwrap().values) {
                *h += step_size * d;
            }
        }
    }
    let finals = evaluate(&mut client, cur.clone()).await;
    for (i, r) in moved.results.iter().enumerate() {
        let got = &r.latent.as_ref().unwrap().values;
        for (a, b) in got.iter().zip(latent(&cur[i])) {
            assert!((a - b).abs() < 1e-5, "item {i}: ascended {a} vs client-side {b}");
        }
        assert_eq!(r.initial_value, values[i]);
        assert!((r.final_value - finals[i]).abs() < 1e-5);
        assert!(r.final_value > r.initial_value, "item {i}: small steps climb ({} -> {})", r.initial_value, r.final_value);
    }
    s.stop().await;
}

fn reason(status: &tonic::Status) -> String {
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

#[tokio::test]
async fn bad_requests_name_the_field_and_the_limit() {
    let s = start(&["--max-items", "4", "--max-ascent-steps", "5"]).await;
    let mut client = s.client.clone();
    let eval = |policy: &str, items: Vec<pb::CriticItem>| pb::EvaluateRequest { policy_model_id: policy.into(), items };

    // A latent of the wrong size.
    let mut short = items(4);
    short[3].latent.as_mut().unwrap().values.pop();
    let err = client.evaluate(eval(POLICY, short.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), format!("items[3].latent.values: {} values, expected latent_dim {DIM}", DIM - 1));
    assert_eq!(reason(&err), "LATENT_DIM_MISMATCH");
    let err = client.gradient(pb::GradientRequest { policy_model_id: POLICY.into(), items: short.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("latent_dim"), "{}", err.message());

    // A critic trained for another policy.
    let err = client.evaluate(eval("another-policy", items(1))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("policy_model_id: "), "{}", err.message());
    assert!(err.message().contains(POLICY) && err.message().contains("another-policy"), "{}", err.message());
    assert_eq!(reason(&err), "POLICY_MISMATCH");
    let err = client
        .ascend(pb::AscendRequest { policy_model_id: "another-policy".into(), items: items(1), steps: 1, step_size: 0.1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Over the limits.
    let err = client.evaluate(eval(POLICY, items(5))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("items: ") && err.message().contains("max_items") && err.message().contains("got 5"), "{}", err.message());
    assert_eq!(reason(&err), "LIMIT_EXCEEDED");
    let ascend = |steps: i32, step_size: f32| pb::AscendRequest { policy_model_id: POLICY.into(), items: items(1), steps, step_size };
    let err = client.ascend(ascend(6, 0.1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("steps: ") && err.message().contains("max_ascent_steps"), "{}", err.message());
    client.ascend(ascend(5, 0.1)).await.unwrap();

    // Malformed values.
    for bad in [ascend(1, 0.0), ascend(1, f32::NAN), ascend(-1, 0.1)] {
        let field = if bad.steps < 0 { "steps: " } else { "step_size: " };
        let err = client.ascend(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let mut nan = items(2);
    nan[1].z = f64::NAN;
    let err = client.evaluate(eval(POLICY, nan)).await.unwrap_err();
    assert!(err.message().starts_with("items[1].z: "), "{}", err.message());
    let mut inf = items(2);
    inf[0].latent.as_mut().unwrap().values[5] = f32::INFINITY;
    let err = client.evaluate(eval(POLICY, inf)).await.unwrap_err();
    assert!(err.message().starts_with("items[0].latent.values[5]: "), "{}", err.message());
    let err = client.evaluate(eval(POLICY, vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("items: "), "{}", err.message());
    let err = client.evaluate(eval(POLICY, vec![pb::CriticItem { latent: None, z: 0.0 }])).await.unwrap_err();
    assert!(err.message().starts_with("items[0].latent: "), "{}", err.message());

    // The server is still fine.
    assert_eq!(evaluate(&mut client, items(4)).await.len(), 4);
    s.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_by_the_transport() {
    let s = start(&["--max-message-bytes", "200"]).await;
    let mut client = s.client.clone();
    let err = client.evaluate(pb::EvaluateRequest { policy_model_id: POLICY.into(), items: items(8) }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("request: ") && err.message().contains("at most 200 bytes (max_message_bytes)"), "{err:?}");
    evaluate(&mut client, items(1)).await;
    s.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_critic_service() {
    let s = start(&[]).await;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr)).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&ig_critic::SERVICE_NAME.to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_critic_that_fails_to_load_ends_the_server_with_the_reason() {
    let args = Wrap::parse_from(["ig-critic", "--model", "/nonexistent/critic.safetensors"]).critic;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), ig_critic::run(args, listener, std::future::pending()))
        .await
        .expect("the server should stop");
    let err = ended.expect_err("a server without a critic must not run on");
    assert!(err.to_string().contains("/nonexistent/critic.safetensors"), "{err}");
}
