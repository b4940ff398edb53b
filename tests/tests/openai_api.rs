//! The OpenAI-compatible HTTP API of the orchestrator, over the shared roles: the official
//! `openai` Python SDK (`tests/python/openai_client.py`), the same answer through HTTP and
//! gRPC, and every error code at the HTTP level (raw HTTP/1.1, as curl sends it).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ig_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        r += &format!("{k}: {v}\r\n");
    }
    r += "\r\n";
    r += body;
    r.into_bytes()
}

/// One HTTP/1.1 exchange; the status and the body parsed as JSON (Null when not JSON).
async fn exchange(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request_bytes(method, path, headers, body)).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn chat(extra: &str) -> String {
    format!(r#"{{"model": "smollm2", "messages": [{{"role": "user", "content": "Name a colour."}}]{extra}}}"#)
}

#[tokio::test]
async fn the_openai_python_sdk_gets_guarded_answers_and_grpc_gives_the_same() {
    let roles = common::shared_roles();
    let g = common::GuardUnderTest::start_with_http(&common::registry_toml(roles, &["minilm-cost"], &[]), |_| {}).await;
    let http = g.http.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let prompt = "Give me one tip for sleeping well.";
    let output = tokio::process::Command::new(std::env::var("IG_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(root.join("tests/python/openai_client.py"))
        .args(["--base-url", &format!("http://{http}/v1"), "--model", "smollm2", "--prompt", prompt])
        .output()
        .await
        .expect("python3 must be installed");
    assert!(output.status.success(), "openai_client.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let s: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = s["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(s["object"], "chat.completion");
    assert_eq!(s["again_text"], s["text"], "same seed, same answer");
    assert_eq!(s["streamed_text"], s["text"], "streamed: the same answer, in chunks");
    assert!(s["streamed_finish"].is_string());
    assert!(s["usage"]["prompt"].as_u64().unwrap() > 5 && s["usage"]["completion"].as_u64().unwrap() >= 1);
    assert_eq!(s["usage"]["total"].as_u64().unwrap(), s["usage"]["prompt"].as_u64().unwrap() + s["usage"]["completion"].as_u64().unwrap());
    assert_eq!(s["guard"]["method"], "inference_guard");
    assert!(s["guard"]["cost"].is_number() && s["guard"]["safe"].is_boolean());
    assert_eq!(s["guard"]["params"]["samples_count"], 4);
    assert_eq!(s["base_method"], "base");
    assert_eq!(s["completion_object"], "text_completion");
    assert_eq!(s["models"], serde_json::json!(["smollm2"]));
    // The same request through gRPC Generate: the same answer.
    let guard = ig_orchestrator::GuardClient::connect_lazy(&format!("http://{}", g.addr), None).unwrap();
    let request = pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptChat(pb::ChatPrompt { messages: vec![pb::ChatMessage { role: "user".into(), content: prompt.into() }] })),
        method: pb::Method::InferenceGuard as i32,
        params: Some(pb::SearchParams { samples_count: Some(4), beam_width: Some(2), chunk_tokens: Some(8), max_new_tokens: Some(16), seed: Some(5), ..Default::default() }),
        policy_model: "smollm2".into(),
        ..Default::default()
    };
    let grpc = guard.generate(request, Some(Duration::from_secs(300))).await.unwrap();
    assert_eq!(grpc.text, text);
    g.stop().await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors_with_the_http_codes_clients_expect() {
    let roles = common::shared_roles();
    let g = common::GuardUnderTest::start_with_http(&common::registry_toml(roles, &["minilm-cost"], &[]), |a| a.max_message_bytes = 64 << 10).await;
    let http = g.http.unwrap();
    let post = |body: String| async move { http_post(http, &body, &[]).await };
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        (chat(r#", "temperature": "hot""#), 400, Some("temperature")),
        (chat(r#", "inferenceguard": {"sample_count": 4}"#), 400, Some("inferenceguard.sample_count")),
        (chat(r#", "inferenceguard": {"samples_count": 100000}"#), 400, Some("inferenceguard.samples_count")),
        (chat(r#", "inferenceguard": {"method": "magic"}"#), 400, Some("inferenceguard.method")),
        (chat(r#", "n": 2"#), 400, Some("n")),
        (chat(r#", "stop": ["\n"]"#), 400, Some("stop")),
        (chat(r#", "max_tokens": 0"#), 400, Some("max_tokens")),
        (r#"{"model": "smollm2", "messages": []}"#.into(), 400, Some("messages")),
        (r#"{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}"#.into(), 404, Some("model")),
        (chat(&format!(r#", "user": "{}""#, "x".repeat(70 << 10))), 413, None),
    ];
    for (body, code, param) in cases {
        let (status, json) = post(body.clone()).await;
        let shown = &body[..body.len().min(120)];
        assert_eq!(status, code, "{shown}: {json}");
        let error = &json["error"];
        assert!(error["message"].is_string() && error["type"].is_string(), "{shown}: {json}");
        assert_eq!(error["param"].as_str(), param, "{shown}: {json}");
        if let Some(p) = param {
            assert!(error["message"].as_str().unwrap().starts_with(&format!("{p}: ")), "{json}");
        }
    }
    let (status, json) = exchange(http, "GET", "/health", &[], "").await;
    assert_eq!((status, json["status"].as_str()), (200, Some("ok")));
    let (status, json) = exchange(http, "GET", "/v1/models", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(json["inferenceguard"]["limits"]["max_body_bytes"], 64 << 10);
    assert_eq!(json["inferenceguard"]["cost_models"][0]["name"], "minilm-cost");
    g.stop().await;
}

async fn http_post(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    exchange(addr, "POST", "/v1/chat/completions", headers, body).await
}

#[tokio::test]
async fn tokens_admission_unavailable_roles_and_deadlines_map_to_401_429_503_504() {
    let roles = common::shared_roles();
    let registry = common::registry_toml(roles, &["minilm-cost"], &[]);
    // 401 without a known token, when tokens are configured (the gRPC API's token store).
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, "[[token]]\nname = \"app\"\ntoken = \"http-token-0123456789\"\n").unwrap();
    let g = common::GuardUnderTest::start_with_http(&registry, |a| a.auth_tokens = Some(tokens.clone())).await;
    let http = g.http.unwrap();
    let (status, json) = http_post(http, &chat(""), &[]).await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(json["error"]["code"], "invalid_api_key");
    let (status, _) = exchange(http, "GET", "/v1/models", &[("authorization", "Bearer wrong-token-0123456789")], "").await;
    assert_eq!(status, 401);
    let (status, _) = exchange(http, "GET", "/v1/models", &[("authorization", "Bearer http-token-0123456789")], "").await;
    assert_eq!(status, 200);
    g.stop().await;

    // 429 while the one admission slot is taken; a client that disconnects mid-stream frees it
    // (its search is cancelled long before it would have ended).
    let g = common::GuardUnderTest::start_with_http(&registry, |a| a.max_concurrent_requests = 1).await;
    let http = g.http.unwrap();
    let long = chat(r#", "stream": true, "max_tokens": 1024, "inferenceguard": {"samples_count": 8, "chunk_tokens": 4}"#);
    let mut stream = TcpStream::connect(http).await.unwrap();
    stream.write_all(&request_bytes("POST", "/v1/chat/completions", &[], &long)).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(": step") {
        let n = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf)).await.expect("a progress comment").unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("text/event-stream"));
    let (status, json) = http_post(http, &chat(r#", "max_tokens": 2"#), &[]).await;
    assert_eq!(status, 429, "{json}");
    drop(stream);
    let freed = Instant::now();
    loop {
        let (status, json) = http_post(http, &chat(r#", "max_tokens": 2, "inferenceguard": {"method": "base"}"#), &[]).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{json}");
        assert!(freed.elapsed() < Duration::from_secs(20), "the disconnected client's search kept its slot");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.stop().await;

    // 504 at the guard's deadline.
    let g = common::GuardUnderTest::start_with_http(&registry, |a| a.max_duration_seconds = 0.3).await;
    let (status, json) = http_post(g.http.unwrap(), &chat(r#", "max_tokens": 1024, "inferenceguard": {"samples_count": 8}"#), &[]).await;
    assert_eq!(status, 504, "{json}");
    g.stop().await;

    // 503 when the policy cannot be reached.
    let dead = common::dead_endpoint().await;
    let registry = registry.replacen(&format!("http://{}", roles.policy), &dead, 1);
    let g = common::GuardUnderTest::start_with_http(&registry, |_| {}).await;
    let (status, json) = http_post(g.http.unwrap(), &chat(""), &[]).await;
    assert_eq!(status, 503, "{json}");
    let (status, _) = exchange(g.http.unwrap(), "GET", "/health", &[], "").await;
    assert_eq!(status, 503);
    g.stop().await;
}

/// SIGTERM with an HTTP request in flight: the HTTP API drains as the gRPC port does. The
/// orchestrator stops only once the request has its answer (it waits up to the drain timeout;
/// it used to return, and its process exit, as soon as the gRPC port had drained), and after
/// the drain delay new connections are refused.
#[tokio::test]
async fn an_http_request_in_flight_at_shutdown_completes_during_the_drain() {
    let roles = common::shared_roles();
    let delay = Duration::from_millis(300);
    let g = common::GuardUnderTest::start_with_http(&common::registry_toml(roles, &["minilm-cost"], &[]), |a| {
        a.drain = ig_serve::DrainArgs { drain_delay_seconds: delay.as_secs_f64(), drain_timeout_seconds: 120.0 };
    })
    .await;
    let http = g.http.unwrap();
    let slow = chat(r#", "max_tokens": 192, "seed": 3, "inferenceguard": {"samples_count": 12, "chunk_tokens": 16}"#);
    let request = tokio::spawn(async move {
        let started = Instant::now();
        let answer = exchange(http, "POST", "/v1/chat/completions", &[], &slow).await;
        (answer, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    g.stop().await; // the shutdown signal, then the drain; returns when the orchestrator has stopped
    // A stopped orchestrator has answered: its process would exit now and cut the rest.
    let ((status, json), took) = tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .expect("the orchestrator stopped while an HTTP request was still in flight")
        .unwrap();
    assert!(took > Duration::from_millis(200) + delay, "the request ended within the drain delay ({took:?}): nothing was shown");
    assert_eq!(status, 200, "the request in flight was cut: {json}");
    assert!(json["choices"][0]["message"]["content"].is_string(), "{json}");
    assert!(TcpStream::connect(http).await.is_err(), "the HTTP API still accepts after it stopped");
}
