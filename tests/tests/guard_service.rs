//! The orchestrator end to end: real policy, cost and reward servers with the
//! demo models, an orchestrator over a registry file, real gRPC between all.

mod common;

use std::time::{Duration, Instant};

use common::{dead_endpoint, in_process_roles, registry_toml, shared_roles, GuardUnderTest};
use futures::StreamExt;
use ig_orchestrator::guard::{search_params, wire_method};
use ig_orchestrator::search::{Method, Params};
use ig_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const HARMLESS: &str = "Give me one tip for sleeping well.";

fn small(method: pb::Method, seed: i64) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText(HARMLESS.into())),
        method: method as i32,
        params: Some(pb::SearchParams {
            samples_count: Some(4),
            beam_width: Some(2),
            chunk_tokens: Some(6),
            max_new_tokens: Some(12),
            args_top_k: Some(4),
            seed: Some(seed),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn stream_req(r: pb::GenerateRequest) -> pb::GenerateStreamRequest {
    // The two messages share field numbers and meaning: one encodes as the other.
    use prost::Message;
    pb::GenerateStreamRequest::decode(r.encode_to_vec().as_slice()).unwrap()
}

#[tokio::test]
async fn every_method_answers_and_streams_its_steps() {
    let roles = shared_roles();
    let g = GuardUnderTest::start(&registry_toml(roles, &["minilm-cost"], &[])).await;
    let mut client = g.client.clone();
    let info = client.info(pb::GuardInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.methods.len(), 12);
    let methods = [
        pb::Method::InferenceGuard,
        pb::Method::Base,
        pb::Method::BonLagrangian,
        pb::Method::BonAugmented,
        pb::Method::BeamLagrangian,
        pb::Method::BeamAugmented,
        pb::Method::Args,
        pb::Method::ArgsLagrangian,
        pb::Method::ArgsCost,
    ];
    for method in methods {
        let r = client.generate(small(method, 3)).await.unwrap_or_else(|e| panic!("{method:?}: {e:?}")).into_inner().result.unwrap();
        assert_eq!(r.method, method as i32);
        assert!(!r.token_ids.is_empty() && r.token_ids.len() <= 12, "{method:?}: {} tokens", r.token_ids.len());
        assert_eq!(r.safe, r.cost <= 0.0, "{method:?}");
        assert!((r.z - (0.0 - r.cost)).abs() < 1e-9 && r.min_z <= r.z + 1e-9, "{method:?}");
        assert!(r.step_count >= 1 && r.generated_token_count >= r.token_ids.len() as i64, "{method:?}");
        let t = r.timings.unwrap();
        assert!(t.policy_ns > 0 && t.cost_ns > 0 && t.reward_ns > 0 && t.total_ns >= t.policy_ns, "{method:?}: {t:?}");
        let m = r.models.unwrap();
        assert_eq!((m.policy.unwrap().name, m.cost.unwrap().name, m.reward.unwrap().name), ("smollm2".into(), "minilm-cost".into(), "minilm-reward".into()));
    }
    // The same seed gives the same search; the stream carries one event per step, then the result.
    let a = client.generate(small(pb::Method::InferenceGuard, 11)).await.unwrap().into_inner().result.unwrap();
    let mut stream = client.generate_stream(stream_req(small(pb::Method::InferenceGuard, 11))).await.unwrap().into_inner();
    let mut steps = Vec::new();
    let mut result = None;
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            pb::generate_stream_response::Event::Step(s) => {
                assert!(result.is_none(), "steps come before the result");
                steps.push(s);
            }
            pb::generate_stream_response::Event::Result(r) => result = Some(r),
        }
    }
    let b = result.expect("a result");
    assert_eq!(a.token_ids, b.token_ids);
    assert_eq!(a.params.unwrap().seed, Some(11));
    assert_eq!(steps.len(), b.step_count as usize);
    assert!(steps.iter().enumerate().all(|(i, s)| s.step_index == i as i32 && s.safe_fraction.is_some()));
    assert_eq!(steps[0].candidate_count, 4 * (1 + steps[0].resample_round_count));
    g.stop().await;
}

#[tokio::test]
async fn the_in_process_roles_give_the_answer_of_the_mesh() {
    let roles = shared_roles();
    let g = GuardUnderTest::start(&registry_toml(roles, &["minilm-cost"], &[])).await;
    let local = in_process_roles().await;
    let params = Params { samples: 4, beam_width: 2, chunk_tokens: 6, max_new_tokens: 12, args_top_k: 4, seed: 3, ..Params::default() };
    for method in [Method::InferenceGuard, Method::BonLagrangian, Method::Args] {
        let req = pb::GenerateRequest {
            prompt: Some(pb::generate_request::Prompt::PromptText(HARMLESS.into())),
            method: wire_method(method) as i32,
            params: Some(search_params(&params)),
            ..Default::default()
        };
        let mesh = g.client.clone().generate(req).await.unwrap_or_else(|e| panic!("{method:?} through the mesh: {e:?}")).into_inner().result.unwrap();
        let here = local.generate(method, &params, HARMLESS, &|_| {}).await.unwrap_or_else(|e| panic!("{method:?} in-process: {e}"));
        let o = &here.outcome;
        assert_eq!((&o.token_ids, &here.text), (&mesh.token_ids, &mesh.text), "{method:?}");
        assert_eq!((o.cost, o.reward, o.z, o.min_z, o.safe), (mesh.cost, mesh.reward, mesh.z, mesh.min_z, mesh.safe), "{method:?}");
        assert_eq!(
            (o.steps as i32, o.candidates as i64, o.resample_rounds as i32, o.generated_tokens as i64),
            (mesh.step_count, mesh.candidate_count, mesh.resample_round_count, mesh.generated_token_count),
            "{method:?}"
        );
        assert!(here.times.policy > Duration::ZERO && here.times.cost > Duration::ZERO, "{method:?}: {:?}", here.times);
    }
    g.stop().await;
}

#[tokio::test]
async fn a_registry_edit_switches_the_default_cost_model_while_a_request_completes() {
    let roles = shared_roles();
    let g = GuardUnderTest::start(&registry_toml(roles, &["strict", "lenient"], &[])).await;
    let mut client = g.client.clone();
    let mut long = small(pb::Method::InferenceGuard, 5);
    long.params.as_mut().unwrap().max_new_tokens = Some(96);
    let mut in_flight = client.clone();
    let running = tokio::spawn(async move { in_flight.generate(long).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.is_finished(), "the long request should still be running");
    // Swap the default; the orchestrator re-reads the file within 100 ms.
    std::fs::write(&g.registry, registry_toml(roles, &["lenient", "strict"], &[])).unwrap();
    let started = Instant::now();
    loop {
        let models = client.list_models(pb::ListModelsRequest { role: pb::ModelRole::Cost as i32 }).await.unwrap().into_inner().models;
        if models.iter().any(|m| m.name == "lenient" && m.registry_default) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the registry was not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = client.generate(small(pb::Method::Base, 1)).await.unwrap().into_inner().result.unwrap();
    assert_eq!(next.models.unwrap().cost.unwrap().name, "lenient");
    let done = running.await.unwrap().expect("the in-flight request completes").into_inner().result.unwrap();
    assert_eq!(done.models.unwrap().cost.unwrap().name, "strict", "an in-flight request keeps its registry");
    // A named model overrides the default.
    let mut named = small(pb::Method::Base, 1);
    named.cost_model = "strict".into();
    let r = client.generate(named).await.unwrap().into_inner().result.unwrap();
    assert_eq!(r.models.unwrap().cost.unwrap().name, "strict");
    g.stop().await;
}

#[tokio::test]
async fn a_dead_replica_is_skipped_and_a_dead_role_is_unavailable_naming_it() {
    let roles = shared_roles();
    let dead = dead_endpoint().await;
    let g = GuardUnderTest::start(&registry_toml(roles, &["minilm-cost"], std::slice::from_ref(&dead))).await;
    let mut client = g.client.clone();
    for seed in 0..3 {
        let r = client.generate(small(pb::Method::BonAugmented, seed)).await;
        assert!(r.is_ok(), "one live replica of two must serve: {r:?}");
    }
    g.stop().await;

    // Every endpoint of the cost model dead.
    let mut registry = registry_toml(roles, &["minilm-cost"], &[]);
    registry = registry.replace(&format!("\"http://{}\"", roles.cost), &format!("\"{dead}\""));
    let g = GuardUnderTest::start(&registry).await;
    let mut client = g.client.clone();
    let err = client.generate(small(pb::Method::Base, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("cost model") && err.message().contains("minilm-cost"), "{}", err.message());
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "ROLE_UNAVAILABLE");
    assert_eq!(info.metadata.get("role").map(String::as_str), Some("cost"));
    assert_eq!(info.metadata.get("model").map(String::as_str), Some("minilm-cost"));
    g.stop().await;
}

#[tokio::test]
async fn an_exceeded_deadline_stops_the_search_and_its_roles() {
    let roles = shared_roles();
    let g = GuardUnderTest::start(&registry_toml(roles, &["minilm-cost"], &[])).await;
    let mut client = g.client.clone();
    let policy = ig_orchestrator::PolicyClient::connect_lazy(&format!("http://{}", roles.policy), None).unwrap();
    let prompt = policy.render_chat(vec![pb::ChatMessage { role: "user".into(), content: HARMLESS.into() }]).await.unwrap().token_ids;
    // What one step of the search costs the policy, measured now.
    let step = |children: i32, tokens: i32| pb::ExtendChunkRequest {
        prefixes: vec![pb::PrefixToExtend { token_ids: prompt.clone(), children_count: children, logit_biases: vec![], seed: Some(1) }],
        chunk_tokens: tokens,
        omit_latents: true,
        ..Default::default()
    };
    let stats = |mut s: tonic::Streaming<pb::ExtendChunkResponse>| async move {
        let mut last = None;
        while let Some(m) = s.next().await {
            last = m.unwrap().stats.or(last);
        }
        last.unwrap()
    };
    let one_step = Duration::from_nanos(stats(policy.extend_chunk(step(16, 32)).await.unwrap()).await.compute_ns as u64);

    let mut req = tonic::Request::new(pb::GenerateRequest {
        params: Some(pb::SearchParams {
            samples_count: Some(16),
            chunk_tokens: Some(32),
            max_new_tokens: Some(512),
            ..Default::default()
        }),
        ..small(pb::Method::InferenceGuard, 2)
    });
    req.set_timeout(one_step * 2);
    let err = client.generate(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The policy is free at once: a tiny request does not queue behind the abandoned search.
    let tiny = stats(policy.extend_chunk(step(1, 1)).await.unwrap()).await;
    let queued = Duration::from_nanos(tiny.queue_ns as u64);
    assert!(queued < one_step / 2, "queued {queued:?} behind an abandoned search (one step takes {one_step:?})");
    g.stop().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let roles = shared_roles();
    let g = GuardUnderTest::start(&registry_toml(roles, &["minilm-cost"], &[])).await;
    let mut client = g.client.clone();
    let with = |f: &dyn Fn(&mut pb::GenerateRequest)| {
        let mut r = small(pb::Method::InferenceGuard, 1);
        f(&mut r);
        r
    };
    let cases: Vec<(pb::GenerateRequest, Code, &str)> = vec![
        (with(&|r| r.params.as_mut().unwrap().beam_width = Some(5)), Code::InvalidArgument, "params.beam_width"),
        (with(&|r| r.params.as_mut().unwrap().chunk_tokens = Some(0)), Code::InvalidArgument, "params.chunk_tokens"),
        (with(&|r| r.params.as_mut().unwrap().samples_count = Some(100_000)), Code::InvalidArgument, "params.samples_count"),
        (with(&|r| r.params.as_mut().unwrap().top_p = Some(1.5)), Code::InvalidArgument, "params.top_p"),
        (with(&|r| r.prompt = None), Code::InvalidArgument, "prompt"),
        (with(&|r| r.prompt = Some(pb::generate_request::Prompt::PromptText("x".repeat(20_000)))), Code::InvalidArgument, "prompt_text"),
        (with(&|r| r.method = 99), Code::InvalidArgument, "method"),
        // This registry has no critic.
        (with(&|r| r.method = pb::Method::Recontrol as i32), Code::NotFound, "critic"),
        (with(&|r| r.cost_model = "nope".into()), Code::NotFound, "cost_model"),
        (with(&|r| r.cost_model = "minilm-reward".into()), Code::FailedPrecondition, "cost_model"),
        (with(&|r| r.policy_model = "gpt".into()), Code::NotFound, "policy_model"),
    ];
    for (req, code, field) in cases {
        let err = client.generate(req).await.expect_err(field);
        assert_eq!(err.code(), code, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}: ")), "{:?} should name {field}", err.message());
    }
    g.stop().await;
}

#[tokio::test]
async fn a_stream_nobody_reads_gives_its_admission_slot_back_when_its_search_ends() {
    let roles = shared_roles();
    let g = GuardUnderTest::start_with(&registry_toml(roles, &["minilm-cost"], &[]), |a| a.max_concurrent_requests = 1).await;
    let mut client = g.client.clone();
    // One step event per token: more events than the stream buffers.
    let long = || pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText("Write a long essay on the history of bread.".into())),
        params: Some(pb::SearchParams { samples_count: Some(1), chunk_tokens: Some(1), max_new_tokens: Some(160), seed: Some(5), ..Default::default() }),
        ..small(pb::Method::Base, 5)
    };
    let started = Instant::now();
    let mut events = 0;
    let mut stream = client.generate_stream(stream_req(long())).await.unwrap().into_inner();
    while let Some(msg) = stream.next().await {
        msg.unwrap();
        events += 1;
    }
    let normal = started.elapsed();
    assert!(events > 100, "the search must outrun the stream's buffers to test anything ({events} events)");

    // A client whose HTTP/2 window holds about one event, and which never reads.
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", g.addr))
        .unwrap()
        .initial_stream_window_size(Some(64))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut slow = pb::guard_service_client::GuardServiceClient::new(slow_channel);
    let unread = slow.generate_stream(stream_req(long())).await.unwrap().into_inner();

    // Once that search is over, the one admission slot is free again for everyone else;
    // without the fix the unread result holds it for good.
    let until = Instant::now() + normal * 3 + Duration::from_secs(30);
    loop {
        match client.generate(small(pb::Method::Base, 1)).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < until => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("the slot stayed taken by a stream nobody reads: {e:?}"),
        }
    }
    // A graceful stop waits for open streams (draining is issue 14's item 7).
    drop(unread);
    g.stop().await;
}
