//! Replicas that answer garbage: real gRPC servers in front of the real demo roles that
//! corrupt one kind of reply (an index out of range, a stream cut short, a token id
//! outside the vocabulary, a NaN, a wrong count). The guard must answer an error naming
//! the role, never panic, and use another replica when there is one.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;

use common::{registry_toml, shared_roles, GuardUnderTest};
use futures::{Stream, StreamExt};
use ig_proto::v1 as pb;
use ig_proto::v1::policy_service_client::PolicyServiceClient;
use ig_proto::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use ig_proto::v1::scorer_service_client::ScorerServiceClient;
use ig_proto::v1::scorer_service_server::{ScorerService, ScorerServiceServer};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::StatusExt;

#[derive(Clone, Copy, Debug)]
enum PolicyFault {
    /// A candidate of a prefix that was never asked for.
    PrefixOutOfRange,
    /// The stream ends without its stats message (as when a policy job dies).
    NoStats,
    /// A token id outside the vocabulary.
    BadToken,
}

/// Forwards to the real policy, corrupting ExtendChunk's replies.
struct CorruptPolicy {
    inner: PolicyServiceClient<Channel>,
    fault: PolicyFault,
}

type ExtendStream = Pin<Box<dyn Stream<Item = Result<pb::ExtendChunkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for CorruptPolicy {
    async fn info(&self, r: Request<pb::PolicyInfoRequest>) -> Result<Response<pb::PolicyInfoResponse>, Status> {
        self.inner.clone().info(r.into_inner()).await
    }
    async fn tokenize(&self, r: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeResponse>, Status> {
        self.inner.clone().tokenize(r.into_inner()).await
    }
    async fn detokenize(&self, r: Request<pb::DetokenizeRequest>) -> Result<Response<pb::DetokenizeResponse>, Status> {
        self.inner.clone().detokenize(r.into_inner()).await
    }
    async fn render_chat(&self, r: Request<pb::RenderChatRequest>) -> Result<Response<pb::RenderChatResponse>, Status> {
        self.inner.clone().render_chat(r.into_inner()).await
    }
    type ExtendChunkStream = ExtendStream;
    async fn extend_chunk(&self, r: Request<pb::ExtendChunkRequest>) -> Result<Response<ExtendStream>, Status> {
        let fault = self.fault;
        let stream = self.inner.clone().extend_chunk(r.into_inner()).await?.into_inner();
        let corrupted = stream.filter_map(move |msg| async move {
            let mut msg = match msg {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            match fault {
                PolicyFault::PrefixOutOfRange => msg.candidates.iter_mut().for_each(|c| c.prefix_index = 1_000),
                PolicyFault::NoStats if msg.stats.is_some() => return None,
                PolicyFault::NoStats => {}
                PolicyFault::BadToken => msg.candidates.iter_mut().for_each(|c| c.token_ids[0] = -5),
            }
            Some(Ok(msg))
        });
        Ok(Response::new(Box::pin(corrupted)))
    }
    async fn top_k_next(&self, r: Request<pb::TopKNextRequest>) -> Result<Response<pb::TopKNextResponse>, Status> {
        self.inner.clone().top_k_next(r.into_inner()).await
    }
    async fn decode_from_latent(&self, r: Request<pb::DecodeFromLatentRequest>) -> Result<Response<pb::DecodeFromLatentResponse>, Status> {
        self.inner.clone().decode_from_latent(r.into_inner()).await
    }
}

#[derive(Clone, Copy, Debug)]
enum ScorerFault {
    Nan,
    /// One score fewer than asked for.
    Short,
    /// Item ids no one asked for.
    WrongIds,
}

/// Forwards to the real cost scorer, corrupting Score's replies.
struct CorruptScorer {
    inner: ScorerServiceClient<Channel>,
    fault: ScorerFault,
}

#[tonic::async_trait]
impl ScorerService for CorruptScorer {
    async fn info(&self, r: Request<pb::ScorerInfoRequest>) -> Result<Response<pb::ScorerInfoResponse>, Status> {
        self.inner.clone().info(r.into_inner()).await
    }
    async fn score(&self, r: Request<pb::ScoreRequest>) -> Result<Response<pb::ScoreResponse>, Status> {
        let mut resp = self.inner.clone().score(r.into_inner()).await?.into_inner();
        match self.fault {
            ScorerFault::Nan => resp.results.iter_mut().for_each(|s| s.score = f32::NAN),
            ScorerFault::Short => drop(resp.results.pop()),
            ScorerFault::WrongIds => resp.results.iter_mut().for_each(|s| s.item_id = -7),
        }
        Ok(Response::new(resp))
    }
    type ScoreStreamStream = Pin<Box<dyn Stream<Item = Result<pb::ScoreStreamResponse, Status>> + Send>>;
    async fn score_stream(&self, _: Request<Streaming<pb::ScoreStreamRequest>>) -> Result<Response<Self::ScoreStreamStream>, Status> {
        Err(Status::unimplemented("not used by the orchestrator"))
    }
}

/// Serves `routes` plus health (SERVING under `name`) on 127.0.0.1:0 in this test's runtime.
async fn serve(routes: tonic::service::Routes, name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    tokio::spawn(async move {
        // The reporter lives as long as the server.
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_routes(routes.add_service(health))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    addr
}

async fn corrupt_policy(fault: PolicyFault) -> SocketAddr {
    let inner = PolicyServiceClient::new(ig_orchestrator::channel::connect_lazy(&format!("http://{}", shared_roles().policy), None).unwrap());
    serve(tonic::service::Routes::new(PolicyServiceServer::new(CorruptPolicy { inner, fault })), "inferenceguard.v1.PolicyService").await
}

async fn corrupt_scorer(fault: ScorerFault) -> SocketAddr {
    let inner = ScorerServiceClient::new(ig_orchestrator::channel::connect_lazy(&format!("http://{}", shared_roles().cost), None).unwrap());
    serve(tonic::service::Routes::new(ScorerServiceServer::new(CorruptScorer { inner, fault })), "inferenceguard.v1.ScorerService").await
}

fn request(method: pb::Method) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText("Give me one tip for sleeping well.".into())),
        method: method as i32,
        params: Some(pb::SearchParams {
            samples_count: Some(4),
            chunk_tokens: Some(4),
            max_new_tokens: Some(8),
            seed: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The role the guard's error status names in its ErrorInfo.
fn named_role(e: &Status) -> Option<String> {
    e.get_details_error_info().and_then(|i| i.metadata.get("role").cloned())
}

/// A registry whose only policy replica is `policy`.
fn registry_with_policy(policy: SocketAddr) -> String {
    let roles = shared_roles();
    registry_toml(roles, &["minilm-cost"], &[]).replace(&format!("http://{}", roles.policy), &format!("http://{policy}"))
}

#[tokio::test]
async fn a_policy_replica_that_answers_garbage_is_skipped_and_alone_it_is_named() {
    let roles = shared_roles();
    for fault in [PolicyFault::PrefixOutOfRange, PolicyFault::NoStats, PolicyFault::BadToken] {
        let addr = corrupt_policy(fault).await;
        // Beside a healthy replica: the part of each extension it was given is taken over.
        let both = registry_with_policy(addr).replacen(&format!("\"http://{addr}\"]"), &format!("\"http://{addr}\", \"http://{}\"]", roles.policy), 1);
        let g = GuardUnderTest::start(&both).await;
        let mut client = g.client.clone();
        for seed in 0..2 {
            let mut req = request(pb::Method::InferenceGuard);
            req.params.as_mut().unwrap().seed = Some(seed);
            client.generate(req).await.unwrap_or_else(|e| panic!("{fault:?}: {e:?}"));
        }
        g.stop().await;

        // Alone: the error names the policy and the bad reply.
        let g = GuardUnderTest::start(&registry_with_policy(addr)).await;
        let mut client = g.client.clone();
        let err = client.generate(request(pb::Method::InferenceGuard)).await.expect_err("a corrupt policy must fail the request");
        assert_eq!(err.code(), Code::Unavailable, "{fault:?}: {err:?}");
        assert_eq!(named_role(&err).as_deref(), Some("policy"), "{fault:?}: {err:?}");
        assert!(err.message().contains("bad reply to ExtendChunk"), "{fault:?}: {err:?}");
        // The guard is still there and still answers.
        client.info(pb::GuardInfoRequest {}).await.unwrap();
        g.stop().await;
    }
}

#[tokio::test]
async fn a_scorer_replica_that_answers_garbage_is_skipped_and_alone_it_is_named() {
    let roles = shared_roles();
    for fault in [ScorerFault::Nan, ScorerFault::Short, ScorerFault::WrongIds] {
        let bad = corrupt_scorer(fault).await;
        // Beside a healthy replica: every request is answered, by the healthy one.
        let g = GuardUnderTest::start(&registry_toml(roles, &["minilm-cost"], &[format!("http://{bad}")])).await;
        let mut client = g.client.clone();
        for seed in 0..3 {
            let mut req = request(pb::Method::InferenceGuard);
            req.params.as_mut().unwrap().seed = Some(seed);
            let r = client.generate(req).await.unwrap_or_else(|e| panic!("{fault:?}: {e:?}")).into_inner().result.unwrap();
            assert!(r.cost.is_finite(), "{fault:?}");
        }
        g.stop().await;

        // Alone: the error names the cost role and the bad reply.
        let alone = registry_toml(roles, &["minilm-cost"], &[format!("http://{bad}")])
            .replacen(&format!(", \"http://{}\"]\ndefault", roles.cost), "]\ndefault", 1);
        assert!(!alone.contains(&format!("\"http://{}\"]\ndefault", roles.cost)), "{alone}");
        let g = GuardUnderTest::start(&alone).await;
        let mut client = g.client.clone();
        let err = client.generate(request(pb::Method::InferenceGuard)).await.expect_err("a corrupt scorer alone must fail the request");
        assert_eq!(err.code(), Code::Unavailable, "{fault:?}: {err:?}");
        assert_eq!(named_role(&err).as_deref(), Some("cost"), "{fault:?}: {err:?}");
        assert!(err.message().contains("bad reply"), "{fault:?}: {err:?}");
        g.stop().await;
    }
}
