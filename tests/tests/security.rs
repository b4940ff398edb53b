//! TLS, mTLS, certificate rotation and bearer tokens, over real gRPC on 127.0.0.1 with
//! certificates of throw-away CAs ([`ThrowawayPki`]).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ig_orchestrator::ScorerClient;
use ig_proto::v1 as pb;
use ig_serve::tls::{ClientTls, ClientTlsArgs, ServerTlsArgs, ThrowawayPki};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

/// A scorer (the demo cost model) serving TLS with `tls`; its address and a stop switch.
async fn scorer_with(tls: ServerTlsArgs) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args = ig_scorer::ScorerArgs::with_model(&common::demo_head("cost"), addr);
    args.tls = tls;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ig_scorer::run(args, listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn client_tls(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> ClientTls {
    ClientTls::from_args(&ClientTlsArgs {
        tls_ca: Some(ca.to_path_buf()),
        tls_client_cert: identity.map(|i| i.0.clone()),
        tls_client_key: identity.map(|i| i.1.clone()),
    })
    .unwrap()
    .unwrap()
}

/// Whether a client reaches the scorer at `url` (health SERVING within a few seconds).
async fn reaches(url: &str, tls: Option<&ClientTls>) -> Result<(), String> {
    let client = ScorerClient::connect_lazy(url, tls).map_err(|e| e.to_string())?;
    client.wait_ready(Duration::from_secs(4)).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_role_with_a_client_ca_accepts_only_clients_of_that_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = ThrowawayPki::new(dir.path(), "mesh CA").unwrap();
    let server = mesh.server("scorer", &["localhost"]).unwrap();
    let orchestrator = mesh.client("orchestrator").unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = ThrowawayPki::new(other_dir.path(), "another CA").unwrap();
    let stranger = other.client("stranger").unwrap();
    let (addr, stop) = scorer_with(ServerTlsArgs {
        tls_cert: Some(server.0.clone()),
        tls_key: Some(server.1.clone()),
        tls_client_ca: Some(mesh.ca.clone()),
        health_listen: None,
    })
    .await;
    let url = format!("https://localhost:{}", addr.port());
    // The mesh's client is served (once the model is loaded).
    let accepted = ScorerClient::connect_lazy(&url, Some(&client_tls(&mesh.ca, Some(&orchestrator)))).unwrap();
    accepted.wait_ready(Duration::from_secs(300)).await.unwrap();
    let scores = accepted.score(&[("How do I bake bread?", "Mix flour, water, salt and yeast.")]).await.unwrap();
    assert!(scores[0].is_finite());
    // Refused: no certificate, a certificate of another CA, cleartext.
    let no_cert = reaches(&url, Some(&client_tls(&mesh.ca, None))).await;
    assert!(no_cert.is_err(), "a client without a certificate was served");
    let other_ca = reaches(&url, Some(&client_tls(&mesh.ca, Some(&stranger)))).await;
    assert!(other_ca.is_err(), "a client of another CA was served");
    let cleartext = reaches(&format!("http://127.0.0.1:{}", addr.port()), None).await;
    assert!(cleartext.is_err(), "a cleartext client was served");
    // And a client that does not trust the server's CA refuses the server.
    let distrust = reaches(&url, Some(&client_tls(&other.ca, Some(&stranger)))).await;
    assert!(distrust.is_err(), "a server of an unknown CA was trusted");
    let _ = stop.send(());
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections_while_calls_in_flight_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first_dir).unwrap();
    std::fs::create_dir_all(&second_dir).unwrap();
    let first = ThrowawayPki::new(&first_dir, "first CA").unwrap();
    let second = ThrowawayPki::new(&second_dir, "second CA").unwrap();
    let (cert_a, key_a) = first.server("server", &["localhost"]).unwrap();
    let (cert_b, key_b) = second.server("server", &["localhost"]).unwrap();
    // The server reads files in a directory of its own, replaced in place as cert-manager does.
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let (cert, key) = (served.join("tls.crt"), served.join("tls.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let (addr, stop) = scorer_with(ServerTlsArgs { tls_cert: Some(cert.clone()), tls_key: Some(key.clone()), ..Default::default() }).await;
    let url = format!("https://localhost:{}", addr.port());
    let old_client = client_tls(&first.ca, None);
    let channel = ig_orchestrator::channel::connect_lazy(&url, Some(&old_client)).unwrap();
    ScorerClient::connect_lazy(&url, Some(&old_client)).unwrap().wait_ready(Duration::from_secs(300)).await.unwrap();
    // A stream opened before the rotation...
    let mut scorer = pb::scorer_service_client::ScorerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let item = |id| pb::ScoreItem { item_id: id, prompt: "How do I bake bread?".into(), response: "Knead it.".into(), ..Default::default() };
    tx.send(pb::ScoreStreamRequest { items: vec![item(1)], ..Default::default() }).await.unwrap();
    let mut replies = scorer.score_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().results[0].item_id, 1);
    // ...the files are replaced (certificate and key of another CA)...
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    // ...new connections get the new certificate within the reload period...
    let new_client = client_tls(&second.ca, None);
    let deadline = tokio::time::Instant::now() + ig_serve::tls::RELOAD_POLL * 3;
    while reaches(&url, Some(&new_client)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "new connections never got the rotated certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reaches(&url, Some(&old_client)).await.is_err(), "a new connection still got the old certificate");
    // ...and the call in flight on the old connection goes on.
    tx.send(pb::ScoreStreamRequest { items: vec![item(2)], ..Default::default() }).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().results[0].item_id, 2);
    drop(tx);
    let _ = stop.send(());
}

fn with_token(message: impl tonic::IntoRequest<pb::ListModelsRequest>, token: Option<&str>) -> tonic::Request<pb::ListModelsRequest> {
    let mut request = message.into_request();
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
}

/// An orchestrator over the shared roles serving TLS with tokens; what a client needs.
struct SecuredGuard {
    guard: common::GuardUnderTest,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "the-right-token-0123456789";

/// `http`: also the OpenAI-compatible HTTP API, under the same certificate and tokens.
async fn secured_guard(reflection: bool, http: bool) -> SecuredGuard {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::new(dir.path(), "guard CA").unwrap();
    let (cert, key) = pki.server("guard", &["localhost", "127.0.0.1"]).unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("[[token]]\nname = \"test-client\"\ntoken = \"{TOKEN}\"\n")).unwrap();
    let roles = common::shared_roles();
    let configure = |args: &mut ig_orchestrator::OrchestratorArgs| {
        args.tls = ServerTlsArgs { tls_cert: Some(cert), tls_key: Some(key), ..Default::default() };
        args.auth_tokens = Some(tokens);
        args.reflection = reflection;
    };
    let registry = common::registry_toml(roles, &["minilm-cost"], &[]);
    let tls = Some(client_tls(&pki.ca, None));
    let guard = if http {
        common::GuardUnderTest::start_secure_with_http(&registry, configure, tls).await
    } else {
        common::GuardUnderTest::start_secure(&registry, configure, tls).await
    };
    SecuredGuard { guard, ca: pki.ca.clone(), _dir: dir }
}

#[tokio::test]
async fn guard_calls_need_a_known_bearer_token_and_health_stays_open() {
    let s = secured_guard(false, false).await; // started: its health answered without a token
    let mut client = s.guard.client.clone();
    for token in [None, Some("not-the-token-0123456789")] {
        let err = client.list_models(with_token(pb::ListModelsRequest::default(), token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
    }
    let models = client.list_models(with_token(pb::ListModelsRequest::default(), Some(TOKEN))).await.unwrap().into_inner().models;
    assert_eq!(models.len(), 3);
    // A search with the token, through the GuardClient the command line uses.
    let guard = ig_orchestrator::GuardClient::connect_lazy(&format!("https://localhost:{}", s.guard.addr.port()), Some(&client_tls(&s.ca, None)))
        .unwrap()
        .with_token(TOKEN)
        .unwrap();
    let request = pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText("Name a colour.".into())),
        method: pb::Method::Base as i32,
        params: Some(pb::SearchParams { max_new_tokens: Some(4), seed: Some(1), ..Default::default() }),
        ..Default::default()
    };
    let result = guard.generate(request, Some(Duration::from_secs(120))).await.unwrap();
    assert!(!result.token_ids.is_empty());
    // --reflection=false: no reflection service.
    let channel = ig_orchestrator::channel::connect_lazy(&format!("https://localhost:{}", s.guard.addr.port()), Some(&client_tls(&s.ca, None))).unwrap();
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let err = reflection.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    s.guard.stop().await;
}

#[tokio::test]
async fn python_grpcio_client_over_tls_with_tokens_and_reflection_v1alpha() {
    let s = secured_guard(true, false).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let output = tokio::process::Command::new(std::env::var("IG_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(root.join("tests/python/secure_client.py"))
        .args(["--target", &format!("localhost:{}", s.guard.addr.port()), "--ca", &s.ca.display().to_string(), "--token", TOKEN])
        .output()
        .await
        .expect("python3 must be installed");
    assert!(output.status.success(), "secure_client.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["calls"]["none"]["code"], "UNAUTHENTICATED");
    assert_eq!(summary["calls"]["wrong"]["code"], "UNAUTHENTICATED");
    assert_eq!(summary["calls"]["right"]["code"], "OK");
    assert_eq!(summary["calls"]["right"]["models"], 3);
    let services: Vec<&str> = summary["reflection_v1alpha"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(services.contains(&"inferenceguard.v1.GuardService") && services.contains(&"grpc.health.v1.Health"), "{services:?}");
    s.guard.stop().await;
}

/// The OpenAI-compatible HTTP port under the guard's certificate and tokens: the official
/// openai SDK reaches it over https with the CA and the token (a wrong token: 401), while a
/// client that connected and never sent its handshake waits beside it; cleartext HTTP to
/// the port gets no HTTP answer.
#[tokio::test]
async fn the_openai_http_api_speaks_tls_with_the_guards_certificate_and_tokens() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = secured_guard(false, true).await;
    let http = s.guard.http.expect("the HTTP API");
    // Connected, silent: its handshake runs on its own task, bounded in time.
    let _stalled = tokio::net::TcpStream::connect(http).await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let output = tokio::process::Command::new(std::env::var("IG_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(root.join("tests/python/openai_client.py"))
        .args(["--base-url", &format!("https://localhost:{}/v1", http.port()), "--model", "smollm2", "--quick"])
        .args(["--ca", &s.ca.display().to_string(), "--api-key", TOKEN])
        .output()
        .await
        .expect("python3 must be installed");
    assert!(output.status.success(), "openai_client.py over https failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["object"], "chat.completion");
    assert_eq!(summary["wrong_key"], "refused 401");
    let mut plain = tokio::net::TcpStream::connect(http).await.unwrap();
    plain.write_all(b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut raw)).await;
    assert!(!raw.starts_with(b"HTTP/"), "cleartext got an HTTP answer: {}", String::from_utf8_lossy(&raw));
    s.guard.stop().await;
}

/// A TLS role with `--health-listen` also answers `grpc.health.v1`, alone and in plaintext, on
/// that port (what a kubelet `grpc:` probe can check), with the statuses of its TLS port:
/// SERVING once its model is loaded. The role's own API is not served there, and its TLS port
/// still refuses plaintext.
#[tokio::test]
async fn a_tls_role_answers_plaintext_health_alone_on_its_health_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::new(dir.path(), "mesh CA").unwrap();
    let (cert, key) = pki.server("scorer", &["localhost"]).unwrap();
    let health_at = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tls = ServerTlsArgs { tls_cert: Some(cert), tls_key: Some(key), tls_client_ca: None, health_listen: Some(health_at) };
    let (addr, stop) = scorer_with(tls).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_at}")).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest { service: "inferenceguard.v1.ScorerService".into() };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        if let Ok(r) = health.check(check.clone()).await {
            let status = r.into_inner().status;
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == ServingStatus::Serving as i32 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never SERVING on the health port: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut scorer = pb::scorer_service_client::ScorerServiceClient::new(channel);
    let err = scorer.info(pb::ScorerInfoRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "the role's API on the health port: {err:?}");
    assert!(reaches(&format!("http://127.0.0.1:{}", addr.port()), None).await.is_err(), "the TLS port answered plaintext");
    let _ = stop.send(());
}
