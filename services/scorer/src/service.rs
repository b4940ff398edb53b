//! `inferenceguard.v1.ScorerService` over a [`ScorerBackend`]: validation,
//! then the [`Batcher`], then conversion.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use ig_core::scorer::{ScoreOutput, ScoreRole, ScorerBackend, ScorerInfo, ScorerLimits};
use ig_core::RoleError;
use ig_proto::v1 as pb;
use ig_proto::v1::scorer_service_server::ScorerService;
use ig_serve::{deadline_of, role_status, within_deadline, Engine};
use prost::Message;
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use ig_serve::batcher::{BatchTiming, Batcher};
use crate::validate;

/// Name of the service in `grpc.health.v1`.
pub const SERVICE_NAME: &str = "inferenceguard.v1.ScorerService";

/// The scorer's gRPC face.
pub struct ScorerServer<B: ScorerBackend> {
    engine: Engine<B>,
    batcher: Batcher,
    limits: ScorerLimits,
    info: OnceCell<ScorerInfo>,
}

impl<B: ScorerBackend> ScorerServer<B> {
    /// Serves the model behind `engine` within `limits`; at most
    /// `max_batch_items` items go to the model at once.
    pub fn new(engine: Engine<B>, limits: ScorerLimits, max_batch_items: usize, queue_depth: usize) -> Self {
        let batcher = Batcher::start(engine.clone(), max_batch_items, queue_depth);
        Self { engine, batcher, limits, info: OnceCell::new() }
    }

    async fn info(&self) -> Result<&ScorerInfo, Status> {
        self.info
            .get_or_try_init(|| async {
                self.engine.ready().await?;
                self.engine.call(|b, _| b.info()).await
            })
            .await
            .map_err(role_status)
    }
}

fn scored(item_id: i64, o: ScoreOutput) -> pb::ScoredItem {
    pb::ScoredItem {
        item_id,
        score: o.score,
        token_end_bytes: o.token_scores.iter().map(|&(_, end)| end as i32).collect(),
        token_scores: o.token_scores.into_iter().map(|(s, _)| s).collect(),
        token_count: o.token_count as i32,
        truncated_token_count: o.truncated_token_count as i32,
    }
}

fn stats(outputs: &[pb::ScoredItem], t: BatchTiming) -> pb::ScoreStats {
    pb::ScoreStats {
        computed_token_count: outputs.iter().map(|o| o.token_count as i64).sum(),
        cached_token_count: 0,
        compute_ns: t.compute.as_nanos() as i64,
        queue_ns: t.queue.as_nanos() as i64,
    }
}

fn item_error(item_id: i64, e: RoleError) -> pb::ScoreItemError {
    let status = role_status(e.clone());
    let (field, reason) = match &e {
        RoleError::InvalidArgument { field, .. } => (field.clone(), "INVALID_FIELD"),
        RoleError::FailedPrecondition(_) => (String::new(), "TOKEN_SCORES_UNAVAILABLE"),
        _ => (String::new(), "ROLE_ERROR"),
    };
    pb::ScoreItemError { item_id, code: status.code() as i32, reason: reason.into(), field, message: status.message().into() }
}

type ScoreStreamOut = Pin<Box<dyn Stream<Item = Result<pb::ScoreStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: ScorerBackend> ScorerService for ScorerServer<B> {
    async fn info(&self, _req: Request<pb::ScorerInfoRequest>) -> Result<Response<pb::ScorerInfoResponse>, Status> {
        let info = self.info().await?;
        let l = &self.limits;
        Ok(Response::new(pb::ScorerInfoResponse {
            role: match info.role {
                ScoreRole::Cost => pb::ScorerRole::Cost,
                ScoreRole::Reward => pb::ScorerRole::Reward,
            } as i32,
            model_id: info.model_id.clone(),
            score_description: info.score_description.clone(),
            architecture: info.architecture.clone(),
            head_format: info.head_format.clone(),
            text_template: info.text_template.clone(),
            token_scores_available: info.token_scores_available,
            weight_dtype: info.weight_dtype.clone(),
            device: info.device.clone(),
            limits: Some(pb::ScorerLimits {
                max_items: l.max_items as i32,
                max_prompt_bytes: l.max_prompt_bytes as i32,
                max_response_bytes: l.max_response_bytes as i32,
                max_tokens: l.max_tokens.min(info.max_model_tokens) as i32,
                max_message_bytes: l.max_message_bytes as i32,
                max_inflight_items: l.max_inflight_items as i32,
            }),
            server_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn score(&self, req: Request<pb::ScoreRequest>) -> Result<Response<pb::ScoreResponse>, Status> {
        validate::message_size(req.get_ref().encoded_len(), &self.limits).map_err(role_status)?;
        let deadline = deadline_of(req.metadata());
        let info = self.info().await?;
        let req = req.into_inner();
        validate::item_count(req.items.len(), &self.limits).map_err(role_status)?;
        let inputs = req
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| validate::item(i, it, &self.limits, info.token_scores_available))
            .collect::<Result<Vec<_>, _>>()
            .map_err(role_status)?;
        let (outputs, timing) =
            within_deadline(deadline, async { self.batcher.score(inputs, deadline).await.map_err(role_status) }).await?;
        let results: Vec<pb::ScoredItem> = req.items.iter().zip(outputs).map(|(it, o)| scored(it.item_id, o)).collect();
        let stats = stats(&results, timing);
        metrics::counter!("ig_scorer_items_total").increment(results.len() as u64);
        Ok(Response::new(pb::ScoreResponse { results, stats: Some(stats) }))
    }

    type ScoreStreamStream = ScoreStreamOut;

    async fn score_stream(&self, req: Request<Streaming<pb::ScoreStreamRequest>>) -> Result<Response<ScoreStreamOut>, Status> {
        let deadline = deadline_of(req.metadata());
        let info = self.info().await?.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::ScoreStreamResponse, Status>>(64);
        let limits = self.limits.clone();
        let batcher = self.batcher.clone();
        // Back-pressure: at most max_inflight_items items are being scored per
        // stream; beyond that the server stops reading the client's messages.
        let inflight = Arc::new(Semaphore::new(limits.max_inflight_items));
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(status) => {
                        let status = ig_serve::message_limit::invalid_size(&status).unwrap_or(status);
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let mut errors = Vec::new();
                let mut ids = Vec::new();
                let mut inputs = Vec::new();
                let size = validate::message_size(msg.encoded_len(), &limits).and(validate::item_count(msg.items.len(), &limits));
                for (i, it) in msg.items.iter().enumerate() {
                    match size.clone().and_then(|_| validate::item(i, it, &limits, info.token_scores_available)) {
                        Ok(input) => {
                            ids.push(it.item_id);
                            inputs.push(input);
                        }
                        Err(e) => errors.push(item_error(it.item_id, e)),
                    }
                }
                if !errors.is_empty() {
                    let reply = pb::ScoreStreamResponse { results: vec![], errors, stats: None };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                if inputs.is_empty() {
                    continue;
                }
                let permits = (inputs.len() as u32).min(limits.max_inflight_items as u32);
                let Ok(permit) = inflight.clone().acquire_many_owned(permits).await else { return };
                let (batcher, tx) = (batcher.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply = match batcher.score(inputs, deadline).await {
                        Ok((outputs, timing)) => {
                            let results: Vec<pb::ScoredItem> = ids.into_iter().zip(outputs).map(|(id, o)| scored(id, o)).collect();
                            metrics::counter!("ig_scorer_items_total").increment(results.len() as u64);
                            let stats = stats(&results, timing);
                            pb::ScoreStreamResponse { results, errors: vec![], stats: Some(stats) }
                        }
                        Err(e) => pb::ScoreStreamResponse {
                            results: vec![],
                            errors: ids.into_iter().map(|id| item_error(id, e.clone())).collect(),
                            stats: None,
                        },
                    };
                    let _ = tx.send(Ok(reply)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
