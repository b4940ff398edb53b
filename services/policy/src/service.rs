//! `inferenceguard.v1.PolicyService` over a [`PolicyBackend`]: each RPC
//! validates, hands the work to the model thread, and converts the answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::Stream;
use std::time::Duration;

use ig_core::policy::{
    Candidate, ChatMessage, DecodedToken, ExtendStats, FinishReason, PolicyBackend, PolicyInfo, PolicyLimits, TextCodec,
    WorkControl,
};
use ig_core::RoleError;
use ig_proto::v1 as pb;
use ig_proto::v1::policy_service_server::PolicyService;
use ig_serve::{deadline_of, role_status, within_deadline, Engine};
use prost::Message;
use tokio::sync::{mpsc, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::batcher::{Batcher, ExtendJob, ExtendSink};
use crate::validate;

/// Name of the service in `grpc.health.v1`.
pub const SERVICE_NAME: &str = "inferenceguard.v1.PolicyService";

/// Messages buffered per stream for a client that reads slowly. One more slot stays free
/// for the stream's last message, so the model thread never waits for a client: a stream
/// whose buffer is full is dropped with RESOURCE_EXHAUSTED and its run stops.
pub const STREAM_BUFFER: usize = 16;

type ExtendMessage = Result<pb::ExtendChunkResponse, Status>;

/// Streams one extension's candidates, then its stats or error, to the client. Runs on
/// the model thread, so it only ever `try_send`s.
struct StreamSink {
    tx: mpsc::Sender<ExtendMessage>,
    seed: u64,
    /// The client stopped reading: the run is dropped and nothing more is sent.
    stalled: bool,
    /// The last message went out (or the client left).
    finished: bool,
}

impl StreamSink {
    fn new(seed: u64) -> (Self, mpsc::Receiver<ExtendMessage>) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER + 1);
        (Self { tx, seed, stalled: false, finished: false }, rx)
    }
}

impl ExtendSink for StreamSink {
    fn candidates(&mut self, batch: Vec<Candidate>) {
        if self.stalled {
            return;
        }
        if self.tx.capacity() <= 1 {
            // The last free slot carries the error; `gone` now stops the run.
            self.stalled = true;
            metrics::counter!("ig_policy_stalled_streams_total").increment(1);
            tracing::warn!(buffered = STREAM_BUFFER, "a client stopped reading its extension; the extension is dropped");
            let m = format!(
                "the client did not read its stream: {STREAM_BUFFER} messages were waiting (the stream buffer), so the extension was dropped"
            );
            let _ = self.tx.try_send(Err(Status::resource_exhausted(m)));
            return;
        }
        let msg = pb::ExtendChunkResponse { candidates: batch.into_iter().map(candidate_to_proto).collect(), stats: None };
        // A failed send means the client left; the batcher sees `gone` and stops the run.
        let _ = self.tx.try_send(Ok(msg));
    }

    fn done(mut self: Box<Self>, result: Result<(ExtendStats, Duration), RoleError>) {
        self.finished = true;
        if self.stalled {
            return;
        }
        let last = match result {
            Ok((stats, queued)) => {
                metrics::counter!("ig_policy_generated_tokens_total").increment(stats.generated_tokens);
                metrics::counter!("ig_policy_prefill_tokens_total").increment(stats.prefill_tokens);
                metrics::counter!("ig_policy_cached_prefix_tokens_total").increment(stats.cached_prefix_tokens);
                metrics::histogram!("ig_policy_extend_seconds").record(stats.compute.as_secs_f64());
                metrics::histogram!("ig_policy_queue_seconds").record(queued.as_secs_f64());
                Ok(pb::ExtendChunkResponse {
                    candidates: vec![],
                    stats: Some(pb::ExtendChunkStats {
                        prefill_tokens: stats.prefill_tokens as i64,
                        cached_prefix_tokens: stats.cached_prefix_tokens as i64,
                        generated_tokens: stats.generated_tokens as i64,
                        forward_passes: stats.forward_passes as i64,
                        compute_ns: stats.compute.as_nanos() as i64,
                        queue_ns: queued.as_nanos() as i64,
                        seed: self.seed as i64,
                    }),
                })
            }
            Err(RoleError::Cancelled) => {
                tracing::info!("extension cancelled by the client");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "extension failed");
                Err(role_status(e))
            }
        };
        // The slot kept free by `candidates` takes it.
        let _ = self.tx.try_send(last);
    }

    fn gone(&self) -> bool {
        self.stalled || self.tx.is_closed()
    }
}

impl Drop for StreamSink {
    /// A run dropped without `done` (the model thread panicked mid-batch) still ends its
    /// stream with an error rather than a silent end the client could take for success.
    fn drop(&mut self) {
        if !self.finished && !self.stalled {
            let _ = self.tx.try_send(Err(role_status(RoleError::Internal(
                "the extension ended without a result: the model thread failed while running it".into(),
            ))));
        }
    }
}

/// The policy's gRPC face.
pub struct PolicyServer<B: PolicyBackend> {
    engine: Engine<B>,
    batcher: Batcher<B>,
    limits: PolicyLimits,
    model: OnceCell<(PolicyInfo, Arc<dyn TextCodec>)>,
}

impl<B: PolicyBackend> PolicyServer<B> {
    /// Serves the model behind `engine` within `limits`; at most
    /// `queue_depth` extensions wait for a place in the shared forward passes.
    pub fn new(engine: Engine<B>, limits: PolicyLimits, queue_depth: usize) -> Self {
        let batcher = Batcher::new(engine.clone(), queue_depth, limits.max_batch_rows, limits.max_kv_cache_bytes);
        Self { engine, batcher, limits, model: OnceCell::new() }
    }

    async fn model(&self) -> Result<&(PolicyInfo, Arc<dyn TextCodec>), Status> {
        self.model
            .get_or_try_init(|| async {
                self.engine.ready().await?;
                self.engine.call(|b, _| (b.info(), b.codec())).await
            })
            .await
            .map_err(role_status)
    }

    fn check_size<T: Message>(&self, req: &Request<T>) -> Result<(), Status> {
        validate::message_size(req.get_ref().encoded_len(), &self.limits).map_err(role_status)
    }
}

fn to_i32(ids: &[u32]) -> Vec<i32> {
    ids.iter().map(|&i| i as i32).collect()
}

fn latent(values: Option<Vec<f32>>) -> Option<pb::Latent> {
    values.map(|values| pb::Latent { values })
}

fn finish_to_proto(f: FinishReason) -> i32 {
    let f = match f {
        FinishReason::Chunk => pb::FinishReason::Chunk,
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
    };
    f as i32
}

fn decoded_to_proto(d: DecodedToken) -> pb::DecodedToken {
    pb::DecodedToken {
        token_id: d.token_id as i32,
        logprob: d.logprob,
        text: d.text,
        finish_reason: finish_to_proto(d.finish_reason),
        next_latent: latent(d.next_latent),
        sequence_tokens: d.sequence_tokens as i32,
    }
}

/// Sets its flag when dropped: a unary handler's future is dropped when the
/// client cancels or the deadline passes, and the model thread reads the flag
/// to skip the work.
struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn candidate_to_proto(c: Candidate) -> pb::Candidate {
    pb::Candidate {
        prefix_index: c.prefix_index as i32,
        child_index: c.child_index as i32,
        token_ids: to_i32(&c.token_ids),
        text: c.text,
        logprob_sum: c.token_logprobs.iter().map(|&l| l as f64).sum(),
        token_logprobs: c.token_logprobs,
        finish_reason: finish_to_proto(c.finish_reason),
        latent: latent(c.latent),
        sequence_tokens: c.sequence_tokens as i32,
    }
}

type ExtendStream = Pin<Box<dyn Stream<Item = Result<pb::ExtendChunkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: PolicyBackend> PolicyService for PolicyServer<B> {
    async fn info(&self, _req: Request<pb::PolicyInfoRequest>) -> Result<Response<pb::PolicyInfoResponse>, Status> {
        let (info, _) = self.model().await?;
        let l = &self.limits;
        Ok(Response::new(pb::PolicyInfoResponse {
            model_id: info.model_id.clone(),
            architecture: info.architecture.clone(),
            vocab_size: info.vocab_size as i32,
            latent_dim: info.latent_dim as i32,
            eos_token_ids: to_i32(&info.eos_token_ids),
            bos_token_id: info.bos_token_id.map(|b| b as i32),
            chat_template: info.chat_template.clone(),
            weight_dtype: info.weight_dtype.clone(),
            device: info.device.clone(),
            limits: Some(pb::PolicyLimits {
                max_sequence_tokens: validate::sequence_limit(info, l) as i32,
                max_prefixes: l.max_prefixes as i32,
                max_children_per_prefix: l.max_children_per_prefix as i32,
                max_candidates: l.max_candidates as i32,
                max_chunk_tokens: l.max_chunk_tokens as i32,
                max_top_k: l.max_top_k.min(info.vocab_size) as i32,
                max_logit_biases: l.max_logit_biases as i32,
                max_text_bytes: l.max_text_bytes as i32,
                max_message_bytes: l.max_message_bytes as i32,
            }),
            server_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn tokenize(&self, req: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeResponse>, Status> {
        self.check_size(&req)?;
        let (_, codec) = self.model().await?;
        let req = req.into_inner();
        validate::text("text", req.text.len(), &self.limits).map_err(role_status)?;
        let ids = codec.tokenize(&req.text, req.add_special_tokens).map_err(role_status)?;
        Ok(Response::new(pb::TokenizeResponse { token_ids: to_i32(&ids) }))
    }

    async fn detokenize(&self, req: Request<pb::DetokenizeRequest>) -> Result<Response<pb::DetokenizeResponse>, Status> {
        self.check_size(&req)?;
        let (info, codec) = self.model().await?;
        let req = req.into_inner();
        let ids = validate::detokenize(&req, info, &self.limits).map_err(role_status)?;
        let text = codec.detokenize(&ids, req.skip_special_tokens).map_err(role_status)?;
        Ok(Response::new(pb::DetokenizeResponse { text }))
    }

    async fn render_chat(&self, req: Request<pb::RenderChatRequest>) -> Result<Response<pb::RenderChatResponse>, Status> {
        self.check_size(&req)?;
        let (_, codec) = self.model().await?;
        let req = req.into_inner();
        if req.messages.is_empty() {
            return Err(role_status(RoleError::invalid("messages", "at least one message is required, got none")));
        }
        let bytes: usize = req.messages.iter().map(|m| m.content.len() + m.role.len()).sum();
        validate::text("messages", bytes, &self.limits).map_err(role_status)?;
        let messages: Vec<ChatMessage> =
            req.messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect();
        let text = codec.render_chat(&messages, req.add_generation_prompt).map_err(role_status)?;
        let ids = codec.tokenize(&text, false).map_err(role_status)?;
        Ok(Response::new(pb::RenderChatResponse { text, token_ids: to_i32(&ids) }))
    }

    type ExtendChunkStream = ExtendStream;

    async fn extend_chunk(&self, req: Request<pb::ExtendChunkRequest>) -> Result<Response<ExtendStream>, Status> {
        self.check_size(&req)?;
        let deadline = deadline_of(req.metadata());
        let (info, _) = self.model().await?;
        let request = validate::extend(req.into_inner(), info, &self.limits, rand::random()).map_err(role_status)?;
        let candidates = request.candidate_count();
        tracing::debug!(prefixes = request.prefixes.len(), candidates, chunk = request.chunk_tokens, "extend");
        let (sink, rx) = StreamSink::new(request.sampling.seed);
        let kv_bytes = request.kv_cache_bytes(info.kv_bytes_per_position);
        self.batcher
            .submit(ExtendJob { request, kv_bytes, deadline, sink: Box::new(sink) })
            .map_err(role_status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn top_k_next(&self, req: Request<pb::TopKNextRequest>) -> Result<Response<pb::TopKNextResponse>, Status> {
        self.check_size(&req)?;
        let deadline = deadline_of(req.metadata());
        let (info, _) = self.model().await?;
        let request = validate::top_k(req.into_inner(), info, &self.limits).map_err(role_status)?;
        let engine = self.engine.clone();
        let results = within_deadline(deadline, async move {
            engine
                .call(move |backend, _| backend.top_k_next(&request, &WorkControl::new(deadline, &|| false)))
                .await
                .and_then(|r| r)
                .map_err(role_status)
        })
        .await?;
        Ok(Response::new(pb::TopKNextResponse {
            results: results
                .into_iter()
                .map(|n| pb::NextTokens {
                    token_ids: to_i32(&n.token_ids),
                    logits: n.logits,
                    logprobs: n.logprobs,
                    latent: latent(n.latent),
                    texts: n.texts,
                })
                .collect(),
        }))
    }

    async fn decode_from_latent(
        &self,
        req: Request<pb::DecodeFromLatentRequest>,
    ) -> Result<Response<pb::DecodeFromLatentResponse>, Status> {
        self.check_size(&req)?;
        let deadline = deadline_of(req.metadata());
        let (info, _) = self.model().await?;
        let request = validate::decode_from_latent(req.into_inner(), info, &self.limits).map_err(role_status)?;
        tracing::debug!(items = request.items.len(), "decode from latent");
        let gone = Arc::new(AtomicBool::new(false));
        let _gone_on_drop = GoneOnDrop(gone.clone());
        let engine = self.engine.clone();
        let (results, stats, queued) = within_deadline(deadline, async move {
            engine
                .call(move |backend, queued| {
                    let client_gone = || gone.load(Ordering::Relaxed);
                    let (results, stats) = backend.decode_from_latents(&request, &WorkControl::new(deadline, &client_gone))?;
                    Ok::<_, RoleError>((results, stats, queued))
                })
                .await
                .and_then(|r| r)
                .map_err(role_status)
        })
        .await?;
        metrics::counter!("ig_policy_generated_tokens_total").increment(stats.generated_tokens);
        metrics::counter!("ig_policy_prefill_tokens_total").increment(stats.prefill_tokens);
        metrics::counter!("ig_policy_cached_prefix_tokens_total").increment(stats.cached_prefix_tokens);
        Ok(Response::new(pb::DecodeFromLatentResponse {
            results: results.into_iter().map(decoded_to_proto).collect(),
            stats: Some(pb::DecodeFromLatentStats {
                prefill_tokens: stats.prefill_tokens as i64,
                cached_prefix_tokens: stats.cached_prefix_tokens as i64,
                forward_passes: stats.forward_passes as i64,
                compute_ns: stats.compute.as_nanos() as i64,
                queue_ns: queued.as_nanos() as i64,
            }),
        }))
    }
}
