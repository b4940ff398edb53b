//! The policy service over real gRPC on 127.0.0.1:0, with the real demo
//! model (SmolLM2-135M-Instruct, fetched into the asset cache if missing).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::PolicyUnderTest;
use futures::StreamExt;
use ig_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const CHAT: &str = "<|im_start|>user\nWhat should I pack for a weekend hike?<|im_end|>\n<|im_start|>assistant\n";

async fn prompt_ids(s: &PolicyUnderTest, text: &str) -> Vec<i32> {
    let mut raw = ig_proto::v1::policy_service_client::PolicyServiceClient::connect(format!("http://{}", s.addr)).await.unwrap();
    raw.tokenize(pb::TokenizeRequest { text: text.into(), add_special_tokens: false }).await.unwrap().into_inner().token_ids
}

fn extend_req(prefixes: Vec<(Vec<i32>, i32)>, chunk: i32, seed: i64) -> pb::ExtendChunkRequest {
    pb::ExtendChunkRequest {
        prefixes: prefixes
            .into_iter()
            .map(|(ids, n)| pb::PrefixToExtend { token_ids: ids, children_count: n, logit_biases: vec![], seed: None })
            .collect(),
        chunk_tokens: chunk,
        sampling: Some(pb::SamplingParams { temperature: Some(1.0), top_p: Some(0.95), top_k: None, seed: Some(seed) }),
        ..Default::default()
    }
}

/// Collects a whole extension: candidates sorted by (prefix, child), and the stats.
async fn collect(s: &PolicyUnderTest, req: pb::ExtendChunkRequest) -> Result<(Vec<pb::Candidate>, pb::ExtendChunkStats), tonic::Status> {
    let mut stream = s.client.extend_chunk(req).await.map_err(status)?;
    let mut cands = Vec::new();
    let mut stats = None;
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        assert!(stats.is_none(), "stats must come on the last message only");
        cands.extend(msg.candidates);
        stats = msg.stats;
    }
    cands.sort_by_key(|c| (c.prefix_index, c.child_index));
    Ok((cands, stats.expect("a final stats message")))
}

fn status(e: ig_orchestrator::policy_client::ClientError) -> tonic::Status {
    match e {
        ig_orchestrator::policy_client::ClientError::Status(s) => s,
        other => tonic::Status::unavailable(other.to_string()),
    }
}

#[tokio::test]
async fn health_is_not_serving_until_the_model_is_warm() {
    let s = PolicyUnderTest::start(&[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr)).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let ask = |mut h: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| async move {
        h.check(tonic_health::pb::HealthCheckRequest { service: "inferenceguard.v1.PolicyService".into() })
            .await
            .map(|r| r.into_inner().status())
    };
    // Loading the model takes over a second; the server answers at once.
    let first = loop {
        match ask(health.clone()).await {
            Ok(st) => break st,
            Err(e) if e.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(first, ServingStatus::NotServing, "SERVING before warm-up");
    s.client.wait_ready(Duration::from_secs(300)).await.unwrap();
    assert_eq!(ask(health.clone()).await.unwrap(), ServingStatus::Serving);
    // Liveness (the empty name) is served too.
    let live = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(live.into_inner().status(), ServingStatus::Serving);
    s.stop().await;
}

#[tokio::test]
async fn info_tokenize_render_detokenize() {
    let s = PolicyUnderTest::ready(&[]).await;
    let info = s.client.info().await.unwrap();
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.latent_dim, 576);
    assert_eq!(info.eos_token_ids, vec![2]);
    assert!(info.chat_template.contains("<|im_start|>"));
    let limits = info.limits.unwrap();
    assert!(limits.max_chunk_tokens > 0 && limits.max_message_bytes > 0);

    let rendered = s
        .client
        .render_chat(vec![pb::ChatMessage { role: "user".into(), content: "Hello!".into() }])
        .await
        .unwrap();
    assert!(rendered.text.ends_with("<|im_start|>assistant\n"));
    assert_eq!(rendered.token_ids[0], 1, "starts with <|im_start|>");
    let ids = prompt_ids(&s, &rendered.text).await;
    assert_eq!(ids, rendered.token_ids);
    assert_eq!(s.client.detokenize(ids, false).await.unwrap(), rendered.text);
    s.stop().await;
}

#[tokio::test]
async fn extends_several_prefixes_with_several_children_reproducibly() {
    let s = PolicyUnderTest::ready(&[]).await;
    let a = prompt_ids(&s, CHAT).await;
    let b = prompt_ids(&s, "<|im_start|>user\nName three rivers.<|im_end|>\n<|im_start|>assistant\n").await;
    let req = extend_req(vec![(a.clone(), 3), (b.clone(), 2)], 8, 5);
    let (cands, stats) = collect(&s, req.clone()).await.unwrap();
    let seen: BTreeSet<(i32, i32)> = cands.iter().map(|c| (c.prefix_index, c.child_index)).collect();
    assert_eq!(seen, BTreeSet::from([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]), "each candidate exactly once");
    assert_eq!(cands.len(), 5);
    for c in &cands {
        assert!(!c.token_ids.is_empty() && c.token_ids.len() <= 8);
        assert_eq!(c.token_logprobs.len(), c.token_ids.len());
        assert!(c.token_logprobs.iter().all(|&l| l <= 0.0));
        assert!((c.logprob_sum - c.token_logprobs.iter().map(|&l| l as f64).sum::<f64>()).abs() < 1e-3);
        assert_eq!(c.latent.as_ref().unwrap().values.len(), 576);
        let prefix = if c.prefix_index == 0 { &a } else { &b };
        assert_eq!(c.sequence_tokens as usize, prefix.len() + c.token_ids.len());
        let finish = pb::FinishReason::try_from(c.finish_reason).unwrap();
        if c.token_ids.len() < 8 {
            assert_eq!(finish, pb::FinishReason::Stop);
        }
        // The text is the new tokens' text in context.
        let mut all = prefix.clone();
        all.extend(&c.token_ids);
        let full = s.client.detokenize(all, false).await.unwrap();
        let before = s.client.detokenize(prefix.clone(), false).await.unwrap();
        assert_eq!(format!("{before}{}", c.text), full);
    }
    assert!(stats.generated_tokens >= 5);
    assert_eq!(stats.seed, 5);

    // Same seed, same candidates (now served partly from the prefix cache).
    let (again, stats2) = collect(&s, req).await.unwrap();
    assert_eq!(
        again.iter().map(|c| c.token_ids.clone()).collect::<Vec<_>>(),
        cands.iter().map(|c| c.token_ids.clone()).collect::<Vec<_>>()
    );
    assert!(stats2.cached_prefix_tokens > 0, "the prompts should hit the prefix cache");
    s.stop().await;
}

#[tokio::test]
async fn a_stop_token_ends_its_row_while_the_rest_of_the_batch_goes_on() {
    let s = PolicyUnderTest::ready(&[]).await;
    let eos = s.client.info().await.unwrap().eos_token_ids[0];
    let a = prompt_ids(&s, CHAT).await;
    // One prefix is pushed onto the stop token at its first step, the other kept off it.
    let mut req = extend_req(vec![(a.clone(), 2), (a.clone(), 2)], 6, 9);
    req.prefixes[0].logit_biases = vec![pb::LogitBias { token_id: eos, bias: 100.0 }];
    req.prefixes[1].logit_biases = vec![pb::LogitBias { token_id: eos, bias: -100.0 }];
    let (cands, _) = collect(&s, req).await.unwrap();
    assert_eq!(cands.len(), 4);
    for c in &cands {
        let finish = pb::FinishReason::try_from(c.finish_reason).unwrap();
        if c.prefix_index == 0 {
            assert_eq!((c.token_ids.clone(), finish), (vec![eos], pb::FinishReason::Stop));
        } else {
            assert_eq!((c.token_ids.len(), finish), (6, pb::FinishReason::Chunk), "{:?}", c.token_ids);
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn top_k_is_sorted_with_logprobs_texts_and_latents() {
    let s = PolicyUnderTest::ready(&[]).await;
    let a = prompt_ids(&s, CHAT).await;
    let resp = s
        .client
        .top_k_next(pb::TopKNextRequest {
            sequences: vec![pb::SequenceToScore { token_ids: a.clone() }, pb::SequenceToScore { token_ids: a[..5].to_vec() }],
            k: 20,
            omit_latents: false,
        })
        .await
        .unwrap();
    assert_eq!(resp.results.len(), 2);
    for r in &resp.results {
        assert_eq!(r.token_ids.len(), 20);
        assert_eq!(r.texts.len(), 20);
        assert!(r.logits.windows(2).all(|w| w[0] >= w[1]), "most likely first");
        assert!(r.logprobs.iter().all(|&l| l <= 0.0));
        assert_eq!(r.latent.as_ref().unwrap().values.len(), 576);
    }
    // Greedy extension by one token picks the top-1 token.
    let mut req = extend_req(vec![(a, 1)], 1, 0);
    req.sampling = Some(pb::SamplingParams { temperature: Some(0.0), ..Default::default() });
    let (cands, _) = collect(&s, req).await.unwrap();
    assert_eq!(cands[0].token_ids[0], resp.results[0].token_ids[0]);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_field_and_limit() {
    let s = PolicyUnderTest::ready(&["--max-children-per-prefix", "8", "--max-chunk-tokens", "64", "--max-message-bytes", "4096"]).await;
    let ok = prompt_ids(&s, CHAT).await;
    let cases: Vec<(pb::ExtendChunkRequest, &str, &str)> = vec![
        (extend_req(vec![], 8, 0), "prefixes", "at least one"),
        (extend_req(vec![(vec![], 1)], 8, 0), "prefixes[0].token_ids", "at least one token"),
        (extend_req(vec![(vec![1, 49152], 1)], 8, 0), "prefixes[0].token_ids[1]", "[0, 49152)"),
        (extend_req(vec![(ok.clone(), 0)], 8, 0), "prefixes[0].children_count", "max_children_per_prefix"),
        (extend_req(vec![(ok.clone(), 9)], 8, 0), "prefixes[0].children_count", "[1, 8]"),
        (extend_req(vec![(ok.clone(), 1)], 0, 0), "chunk_tokens", "max_chunk_tokens"),
        (extend_req(vec![(ok.clone(), 1)], 65, 0), "chunk_tokens", "[1, 64]"),
        (extend_req(vec![(vec![40_000; 1500], 1)], 8, 0), "request", "max_message_bytes"),
        // Over 4x the limit: refused by the transport from the frame header, before decoding.
        (extend_req(vec![(vec![40_000; 6000], 1)], 8, 0), "request", "at most 4096 bytes (max_message_bytes)"),
    ];
    for (req, field, needle) in cases {
        let err = collect(&s, req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}: ")), "message {:?} should name {field}", err.message());
        assert!(err.message().contains(needle), "message {:?} should mention {needle:?}", err.message());
    }
    let err = s
        .client
        .top_k_next(pb::TopKNextRequest { sequences: vec![pb::SequenceToScore { token_ids: ok }], k: 0, omit_latents: true })
        .await
        .expect_err("k = 0");
    assert_eq!(err.code(), Code::InvalidArgument);
    s.stop().await;
}

fn decode_req(token_ids: Vec<i32>, values: Vec<f32>, seed: i64, draw_index: i32) -> pb::DecodeFromLatentRequest {
    pb::DecodeFromLatentRequest {
        items: vec![pb::LatentToDecode { token_ids, latent: Some(pb::Latent { values }), seed, draw_index }],
        // As extend_req (its seed is ignored here).
        sampling: Some(pb::SamplingParams { temperature: Some(1.0), top_p: Some(0.95), top_k: None, seed: Some(12345) }),
        ..Default::default()
    }
}

#[tokio::test]
async fn decoding_from_unedited_latents_redraws_the_extension_and_bad_latents_are_named() {
    let s = PolicyUnderTest::ready(&[]).await;
    let prompt = prompt_ids(&s, CHAT).await;
    let mut raw = ig_proto::v1::policy_service_client::PolicyServiceClient::connect(format!("http://{}", s.addr)).await.unwrap();
    let top = raw
        .top_k_next(pb::TopKNextRequest { sequences: vec![pb::SequenceToScore { token_ids: prompt.clone() }], k: 1, omit_latents: false })
        .await
        .unwrap()
        .into_inner();
    let mut latent = top.results[0].latent.clone().unwrap().values;
    let (seed, n) = (-77i64, 6);
    let mut sequence = prompt.clone();
    let (mut tokens, mut logprobs, mut text) = (Vec::new(), Vec::new(), String::new());
    for j in 0..n {
        let resp = raw.decode_from_latent(decode_req(sequence.clone(), latent.clone(), seed, j)).await.unwrap().into_inner();
        assert_eq!(resp.results.len(), 1);
        let stats = resp.stats.unwrap();
        let d = resp.results.into_iter().next().unwrap();
        sequence.push(d.token_id);
        tokens.push(d.token_id);
        logprobs.push(d.logprob);
        text.push_str(&d.text);
        assert_eq!(d.sequence_tokens as usize, sequence.len());
        if pb::FinishReason::try_from(d.finish_reason).unwrap() == pb::FinishReason::Stop {
            assert!(d.next_latent.is_none());
            break;
        }
        assert_eq!(pb::FinishReason::try_from(d.finish_reason).unwrap(), pb::FinishReason::Chunk);
        assert!(stats.prefill_tokens <= 1, "the sequence so far comes from the prefix cache: {stats:?}");
        latent = d.next_latent.unwrap().values;
        assert_eq!(latent.len(), 576);
    }
    let mut req = extend_req(vec![(prompt.clone(), 1)], n, 0);
    req.prefixes[0].seed = Some(seed);
    let (cands, _) = collect(&s, req).await.unwrap();
    assert_eq!(tokens, cands[0].token_ids, "token by token from the latents = the extension's chunk");
    assert_eq!(logprobs, cands[0].token_logprobs);
    assert_eq!(text, cands[0].text);

    let mut nan = latent.clone();
    nan[7] = f32::NAN;
    let cases: Vec<(pb::DecodeFromLatentRequest, &str, &str)> = vec![
        (decode_req(prompt.clone(), latent[..575].to_vec(), 0, 0), "items[0].latent.values", "exactly 576 values (latent_dim), got 575"),
        (decode_req(prompt.clone(), nan, 0, 0), "items[0].latent.values[7]", "finite"),
        (decode_req(vec![1, 49152], latent.clone(), 0, 0), "items[0].token_ids[1]", "[0, 49152)"),
        (decode_req(vec![], latent.clone(), 0, 0), "items[0].token_ids", "at least one token"),
        (decode_req(prompt.clone(), latent.clone(), 0, -1), "items[0].draw_index", "got -1"),
        (pb::DecodeFromLatentRequest::default(), "items", "at least one"),
    ];
    for (req, field, needle) in cases {
        let err = raw.decode_from_latent(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}: ")), "message {:?} should name {field}", err.message());
        assert!(err.message().contains(needle), "message {:?} should mention {needle:?}", err.message());
    }
    s.stop().await;
}

/// A long extension: 8 children of 250 tokens (tens of seconds on 2 cores).
fn long_request(prompt: Vec<i32>) -> pb::ExtendChunkRequest {
    long_request_of(prompt, 250)
}

fn long_request_of(prompt: Vec<i32>, tokens: i32) -> pb::ExtendChunkRequest {
    let mut req = extend_req(vec![(prompt, 8)], tokens, 1);
    // Never stop early: push the end-of-sequence token far down.
    req.prefixes[0].logit_biases = vec![pb::LogitBias { token_id: 2, bias: -100.0 }];
    req
}

/// What [`long_request`] costs in full on this machine now, from a tenth of
/// it, so that timing assertions compare ratios within one run.
async fn full_cost_of_a_long_request(s: &PolicyUnderTest, prompt: Vec<i32>) -> Duration {
    let (_, stats) = collect(s, long_request_of(prompt, 25)).await.unwrap();
    Duration::from_nanos(stats.compute_ns as u64) * 10
}

/// Time the model thread made a tiny request wait: small when nothing else runs.
async fn queue_wait_of_a_tiny_request(s: &PolicyUnderTest, prompt: Vec<i32>) -> Duration {
    let (_, stats) = collect(s, extend_req(vec![(prompt, 1)], 1, 0)).await.unwrap();
    Duration::from_nanos(stats.queue_ns as u64)
}

#[tokio::test]
async fn a_cancelled_stream_stops_generation() {
    let s = PolicyUnderTest::ready(&[]).await;
    let prompt = prompt_ids(&s, CHAT).await;
    let full = full_cost_of_a_long_request(&s, prompt.clone()).await;
    let stream = s.client.extend_chunk(long_request(prompt.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream); // the client goes away
    let waited = queue_wait_of_a_tiny_request(&s, prompt).await;
    // Had the long request run on, the tiny one would have queued for its
    // whole remaining duration.
    assert!(waited < full / 2, "queued {waited:?} behind a cancelled request that takes {full:?} in full");
    s.stop().await;
}

#[tokio::test]
async fn an_exceeded_deadline_is_deadline_exceeded_and_stops_work() {
    let s = PolicyUnderTest::ready(&[]).await;
    let prompt = prompt_ids(&s, CHAT).await;
    let full = full_cost_of_a_long_request(&s, prompt.clone()).await;
    let mut raw = ig_proto::v1::policy_service_client::PolicyServiceClient::connect(format!("http://{}", s.addr)).await.unwrap();
    let mut req = tonic::Request::new(long_request(prompt.clone()));
    req.set_timeout(Duration::from_millis(700));
    let outcome = async {
        let mut stream = raw.extend_chunk(req).await?.into_inner();
        while let Some(msg) = stream.next().await {
            msg?;
        }
        Ok::<(), tonic::Status>(())
    }
    .await;
    let err = outcome.expect_err("the deadline must cut the extension short");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let waited = queue_wait_of_a_tiny_request(&s, prompt).await;
    assert!(waited < full / 2, "the expired request kept the model busy for {waited:?} of its {full:?}");
    s.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_policy_service() {
    let s = PolicyUnderTest::ready(&[]).await;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr)).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut resp = client.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"inferenceguard.v1.PolicyService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    // Only what this server serves: not the other roles' services.
    assert!(!names.iter().any(|n| n.ends_with("GuardService") || n.ends_with("ScorerService") || n.ends_with("CriticService")), "{names:?}");
    // And it describes only its own API: another role's symbols are not found.
    let describe = |symbol: &str| tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_string())),
    };
    let mut found = Vec::new();
    for symbol in ["inferenceguard.v1.PolicyService", "inferenceguard.v1.ScorerService", "inferenceguard.v1.ScoreRequest"] {
        let mut answers = client.server_reflection_info(futures::stream::iter(vec![describe(symbol)])).await.unwrap().into_inner();
        found.push(match answers.next().await {
            Some(Ok(a)) => matches!(a.message_response, Some(MessageResponse::FileDescriptorResponse(_))),
            Some(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::NotFound, "{symbol}: {status:?}");
                false
            }
            None => false,
        });
    }
    assert_eq!(found, [true, false, false], "the policy's own service, then the scorer's service and message");
    s.stop().await;
}

#[tokio::test]
async fn a_model_that_fails_to_load_ends_the_server_with_the_reason() {
    let s = PolicyUnderTest::start(&["--model", "/nonexistent/model.gguf"]).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), s.finished()).await.expect("the server should stop");
    let err = ended.expect_err("a server without a model must not run on");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

/// An extension whose candidates finish one step apart, so that it streams one message
/// per step: prefix `i` is `i` tokens longer than the prompt and every prefix stops at the
/// same sequence length. Latents are returned, so each message is kilobytes.
fn staggered_request(prompt: &[i32], prefixes: usize) -> pb::ExtendChunkRequest {
    let filler = *prompt.last().unwrap();
    let specs = (0..prefixes).map(|i| (prompt.iter().copied().chain(std::iter::repeat_n(filler, i)).collect(), 2)).collect();
    let mut req = extend_req(specs, prefixes as i32 + 1, 3);
    req.max_sequence_tokens = (prompt.len() + prefixes) as i32;
    for p in &mut req.prefixes {
        p.logit_biases = vec![pb::LogitBias { token_id: 2, bias: -100.0 }];
    }
    req
}

/// An extension opened by a client whose HTTP/2 window holds less than one message and
/// which never reads, returned once the extension has had the time to produce every
/// message; with what the same extension costs when read.
async fn stalled_stream(s: &PolicyUnderTest, prompt: &[i32]) -> (tonic::Streaming<pb::ExtendChunkResponse>, Duration) {
    let prefixes = ig_policy::service::STREAM_BUFFER + 6;
    let (_, stats) = collect(s, staggered_request(prompt, prefixes)).await.unwrap();
    let full = Duration::from_nanos(stats.compute_ns as u64);
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut slow = ig_proto::v1::policy_service_client::PolicyServiceClient::new(slow_channel);
    let stalled = slow.extend_chunk(staggered_request(prompt, prefixes)).await.unwrap().into_inner();
    tokio::time::sleep(full * 2 + Duration::from_secs(1)).await;
    (stalled, full)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_never_stalls_the_replica() {
    let s = PolicyUnderTest::ready(&[]).await;
    let prompt = prompt_ids(&s, CHAT).await;
    let (mut stalled, full) = stalled_stream(&s, &prompt).await;

    // Another client on the same replica: without the fix the model thread is parked on
    // the slow stream and this runs into its deadline.
    let other = async {
        let mut raw = ig_proto::v1::policy_service_client::PolicyServiceClient::connect(format!("http://{}", s.addr)).await?;
        let mut stream = raw.extend_chunk(extend_req(vec![(prompt.clone(), 1)], 4, 0)).await?.into_inner();
        let mut last = None;
        while let Some(msg) = stream.next().await {
            last = Some(msg?);
        }
        Ok::<_, Box<dyn std::error::Error>>(last.and_then(|m| m.stats))
    };
    let stats = tokio::time::timeout(full * 2 + Duration::from_secs(30), other)
        .await
        .expect("the other client's extension waited behind the client that stopped reading")
        .expect("the other client's extension must complete");
    assert!(stats.is_some(), "the other client's extension must end with its stats");

    // The slow client, reading at last, finds its extension dropped with the reason.
    let mut outcome = Ok(0);
    while let Some(msg) = stalled.next().await {
        match msg {
            Ok(_) => outcome = outcome.map(|n| n + 1),
            Err(e) => outcome = Err(e),
        }
    }
    let err = outcome.expect_err("a stream nobody read must be dropped");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("stream buffer"), "{err:?}");
    s.stop().await;
}

async fn health_status(addr: std::net::SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: ig_policy::SERVICE_NAME.into() };
    health.check(req).await.map(|r| r.into_inner().status()).unwrap_or(ServingStatus::Unknown)
}

#[tokio::test]
async fn a_stopping_server_says_not_serving_takes_calls_for_the_delay_and_finishes_those_in_flight() {
    let mut s = PolicyUnderTest::ready(&["--drain-delay-seconds", "3"]).await;
    let prompt = prompt_ids(&s, CHAT).await;
    let mut in_flight = s.client.extend_chunk(long_request_of(prompt.clone(), 60)).await.unwrap();
    s.begin_stop();
    let started = std::time::Instant::now();
    while health_status(s.addr).await != ServingStatus::NotServing {
        assert!(started.elapsed() < Duration::from_secs(2), "health must say NOT_SERVING as soon as the stop begins");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // During the delay a new connection still gets its call answered (clients and the
    // endpoints controller have not all seen NOT_SERVING yet).
    let ids = prompt_ids(&s, "still here").await;
    assert!(!ids.is_empty());
    assert!(started.elapsed() < Duration::from_secs(3), "the test ran past the drain delay; nothing was shown");
    // The call in flight finishes whole.
    let mut stats = None;
    while let Some(msg) = in_flight.next().await {
        stats = msg.expect("an extension in flight completes during the drain").stats.or(stats);
    }
    assert!(stats.is_some(), "the extension in flight ends with its stats");
    s.finished().await.unwrap();
}

#[tokio::test]
async fn a_stream_nobody_reads_cannot_hold_a_stopping_server_past_its_drain_timeout() {
    let mut s = PolicyUnderTest::ready(&["--drain-timeout-seconds", "2"]).await;
    let prompt = prompt_ids(&s, CHAT).await;
    let (unread, _) = stalled_stream(&s, &prompt).await;
    s.begin_stop();
    // Without the timeout, the graceful stop waits for that stream for ever.
    tokio::time::timeout(Duration::from_secs(30), s.finished())
        .await
        .expect("a stream nobody reads held the server past its drain timeout")
        .unwrap();
    drop(unread);
}
