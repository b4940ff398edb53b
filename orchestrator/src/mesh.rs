//! The role traits of [`crate::search`] over gRPC, on registry entries:
//! each call carries the time left to the request's deadline, goes to a
//! ready replica (rotating), fails over to the next one on UNAVAILABLE or
//! RESOURCE_EXHAUSTED, and spreads batches over the ready replicas.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use ig_core::RoleError;
use ig_proto::v1 as pb;
use ig_proto::v1::critic_service_client::CriticServiceClient;
use ig_proto::v1::policy_service_client::PolicyServiceClient;
use ig_proto::v1::scorer_service_client::ScorerServiceClient;
use tonic::{Code, Status};

use crate::registry::{Entry, Replica};
use crate::reply_check::{self, BadReply, ExtendCheck};
use crate::search::{Chunk, ChunkStream, CriticPoint, CriticRole, Decoded, ExtendCall, Finish, LatentStep, NextToken, PolicyRole, ScorerRole};

/// Largest message the orchestrator reads from a role.
const MAX_DECODING_BYTES: usize = 256 << 20;

/// A role's gRPC status as a [`RoleError`] for the search. A role refusing
/// the orchestrator's own request is a precondition of the deployment (for
/// example a scorer whose token limit is below the responses asked for).
pub fn role_error(what: &str, s: &Status) -> RoleError {
    let m = format!("{what}: {}", s.message());
    match s.code() {
        Code::Unavailable => RoleError::Unavailable(m),
        Code::ResourceExhausted => RoleError::Overloaded(m),
        Code::DeadlineExceeded => RoleError::DeadlineExceeded(m),
        Code::Cancelled => RoleError::Cancelled,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => RoleError::FailedPrecondition(m),
        _ => RoleError::Internal(format!("{m} ({})", s.code())),
    }
}

/// Whether another replica may succeed where this one failed: it was down, full, or
/// answered something [`reply_check`] refused ([`bad_reply`]).
fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::ResourceExhausted | Code::DataLoss)
}

/// A reply that failed its check, as the status of the call that got it.
fn bad_reply(m: BadReply) -> Status {
    Status::data_loss(format!("bad reply: {m}"))
}

/// Runs `call` on the entry's replicas in turn until one answers; the error
/// of the last one when none does.
pub async fn with_failover<T, F, Fut>(entry: &Entry, replicas: Vec<Arc<Replica>>, call: F) -> Result<T, RoleError>
where
    F: Fn(Arc<Replica>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut last = None;
    let tried = replicas.len();
    for r in replicas {
        match call(r.clone()).await {
            Ok(v) => {
                r.record_success();
                return Ok(v);
            }
            Err(s) if retryable(&s) => {
                tracing::warn!(model = %entry.name, endpoint = %r.endpoint, code = ?s.code(), error = %s.message(), "replica failed; trying the next");
                r.record_failure();
                if s.code() == Code::Unavailable {
                    r.mark_unready();
                }
                last = Some(s);
            }
            Err(s) => {
                // Too slow for the request's deadline: a replica that keeps doing so is ejected.
                if s.code() == Code::DeadlineExceeded {
                    r.record_failure();
                }
                return Err(role_error(&format!("{} model {:?} at {}", entry.role.as_str(), entry.name, r.endpoint), &s));
            }
        }
    }
    let last = last.map_or_else(|| "no endpoint".to_string(), |s| format!("{:?}: {}", s.code(), s.message()));
    Err(RoleError::Unavailable(format!(
        "{} model {:?}: none of its {tried} endpoint(s) answered (last: {last})",
        entry.role.as_str(),
        entry.name
    )))
}

/// A request with the time left to `deadline` as its gRPC timeout.
fn timed<T>(msg: T, deadline: Instant) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    req
}

/// Splits `0..n` into at most `parts` contiguous, near-equal ranges.
pub(crate) fn spread(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..parts {
        let len = n / parts + usize::from(i < n % parts);
        if len > 0 {
            out.push(start..start + len);
        }
        start += len;
    }
    out
}

/// What the orchestrator needs to know of a policy model.
#[derive(Debug, Clone)]
pub struct PolicyMeta {
    /// Its Info.
    pub info: pb::PolicyInfoResponse,
    /// Text of each stop token, removed from a candidate's text.
    pub stop_texts: HashMap<i32, String>,
}

/// Fetches a policy's Info and the texts of its stop tokens.
pub async fn policy_meta(entry: &Entry, deadline: Instant) -> Result<PolicyMeta, RoleError> {
    let info = with_failover(entry, entry.replicas_to_try(), |r| async move {
        let mut c = PolicyServiceClient::new(r.channel.clone());
        Ok(c.info(timed(pb::PolicyInfoRequest {}, deadline)).await?.into_inner())
    })
    .await?;
    let mut stop_texts = HashMap::new();
    for &id in &info.eos_token_ids {
        let text = with_failover(entry, entry.replicas_to_try(), |r| async move {
            let mut c = PolicyServiceClient::new(r.channel.clone());
            let req = pb::DetokenizeRequest { token_ids: vec![id], skip_special_tokens: false };
            Ok(c.detokenize(timed(req, deadline)).await?.into_inner().text)
        })
        .await?;
        stop_texts.insert(id, text);
    }
    Ok(PolicyMeta { info, stop_texts })
}

/// A policy entry serving one request.
pub struct MeshPolicy {
    entry: Arc<Entry>,
    meta: PolicyMeta,
    deadline: Instant,
}

impl MeshPolicy {
    /// The policy of `entry` until `deadline`.
    pub fn new(entry: Arc<Entry>, meta: PolicyMeta, deadline: Instant) -> Self {
        Self { entry, meta, deadline }
    }

    /// Token ids the policy's replies may carry: `0..vocab`.
    fn vocab(&self) -> usize {
        self.meta.info.vocab_size.max(0) as usize
    }

    /// Values in each of its latents.
    fn latent_dim(&self) -> usize {
        self.meta.info.latent_dim.max(0) as usize
    }

    /// Renders a conversation with the policy's chat template.
    pub async fn render_chat(&self, messages: Vec<pb::ChatMessage>) -> Result<pb::RenderChatResponse, RoleError> {
        let deadline = self.deadline;
        with_failover(&self.entry, self.entry.replicas_to_try(), |r| {
            let req = pb::RenderChatRequest { messages: messages.clone(), add_generation_prompt: true };
            async move { Ok(PolicyServiceClient::new(r.channel.clone()).render_chat(timed(req, deadline)).await?.into_inner()) }
        })
        .await
    }

    /// Tokenizes `text` verbatim (for a policy without a chat template).
    pub async fn tokenize(&self, text: &str) -> Result<Vec<i32>, RoleError> {
        let deadline = self.deadline;
        with_failover(&self.entry, self.entry.replicas_to_try(), |r| {
            let req = pb::TokenizeRequest { text: text.to_string(), add_special_tokens: true };
            async move { Ok(PolicyServiceClient::new(r.channel.clone()).tokenize(timed(req, deadline)).await?.into_inner().token_ids) }
        })
        .await
    }

    /// Decodes the final response without special tokens.
    pub async fn detokenize(&self, token_ids: Vec<i32>) -> Result<String, RoleError> {
        let deadline = self.deadline;
        with_failover(&self.entry, self.entry.replicas_to_try(), |r| {
            let req = pb::DetokenizeRequest { token_ids: token_ids.clone(), skip_special_tokens: true };
            async move { Ok(PolicyServiceClient::new(r.channel.clone()).detokenize(timed(req, deadline)).await?.into_inner().text) }
        })
        .await
    }

}

/// A stopped candidate's text without its stop token's text (the scorers
/// read the response as the user will).
pub(crate) fn without_stop_text(stops: &HashMap<i32, String>, ids: &[i32], text: String, finish: Finish) -> String {
    match (finish, ids.last().and_then(|id| stops.get(id))) {
        (Finish::Stop, Some(stop)) => text.strip_suffix(stop.as_str()).map(str::to_string).unwrap_or(text),
        _ => text,
    }
}

fn finish_of(f: i32) -> Finish {
    match pb::FinishReason::try_from(f) {
        Ok(pb::FinishReason::Chunk) => Finish::Open,
        Ok(pb::FinishReason::Length) => Finish::Length,
        // Unknown values count as a stop (proto/README.md).
        _ => Finish::Stop,
    }
}

/// Whether an error ending a policy's stream is that replica's fault, so that another
/// replica should take the work over: it went away (a killed pod resets its streams), is
/// full, failed inside, or answered something [`reply_check`] refused.
fn replica_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::DataLoss | Code::Unknown | Code::Internal | Code::Aborted | Code::Cancelled
    )
}

/// One part of an extension (some of its prefixes) on the policy's replicas in turn. A
/// replica that fails mid-stream (killed, a bad reply, a stream cut short) hands the part
/// to the next one, which draws the same candidates (each prefix carries its seed); the
/// candidates already passed on are not passed on again.
struct PartExtension {
    entry: Arc<Entry>,
    replicas: std::collections::VecDeque<Arc<Replica>>,
    request: pb::ExtendChunkRequest,
    deadline: Instant,
    check: ExtendCheck,
    delivered: std::collections::HashSet<(i32, i32)>,
    current: Option<(Arc<Replica>, tonic::Streaming<pb::ExtendChunkResponse>, ExtendCheck)>,
    tried: usize,
    last: Option<String>,
}

impl PartExtension {
    fn new(entry: Arc<Entry>, replicas: Vec<Arc<Replica>>, request: pb::ExtendChunkRequest, deadline: Instant, check: ExtendCheck) -> Self {
        Self { entry, replicas: replicas.into(), request, deadline, check, delivered: Default::default(), current: None, tried: 0, last: None }
    }

    /// A replica failed the part: note it, and let the next one try.
    fn failed(&mut self, r: &Replica, why: String, code: Code) {
        tracing::warn!(model = %self.entry.name, endpoint = %r.endpoint, error = %why, "policy replica failed mid-extension; the next one takes it over");
        r.record_failure();
        if code == Code::Unavailable {
            r.mark_unready();
        }
        self.current = None;
        self.last = Some(why);
    }

    /// An error that no other replica would avoid (the deadline, a refused request).
    fn fatal(&self, r: &Replica, s: &Status) -> RoleError {
        if s.code() == Code::DeadlineExceeded {
            r.record_failure();
        }
        role_error(&format!("policy model {:?} at {}", self.entry.name, r.endpoint), s)
    }

    /// The part's messages: candidates as they finish, each once, then the stats.
    fn stream(self) -> impl futures::Stream<Item = Result<pb::ExtendChunkResponse, RoleError>> {
        futures::stream::unfold(Some(self), |part| async move {
            let mut part = part?;
            loop {
                if part.current.is_none() {
                    let Some(r) = part.replicas.pop_front() else {
                        let last = part.last.take().unwrap_or_else(|| "no endpoint".into());
                        let m = format!("policy model {:?}: none of its {} endpoint(s) finished the extension (last: {last})", part.entry.name, part.tried);
                        return Some((Err(RoleError::Unavailable(m)), None));
                    };
                    part.tried += 1;
                    let mut c = PolicyServiceClient::new(r.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
                    match c.extend_chunk(timed(part.request.clone(), part.deadline)).await {
                        Ok(resp) => part.current = Some((r, resp.into_inner(), part.check.clone())),
                        Err(s) if replica_fault(s.code()) => part.failed(&r, format!("{:?}: {}", s.code(), s.message()), s.code()),
                        Err(s) => return Some((Err(part.fatal(&r, &s)), None)),
                    }
                    continue;
                }
                let (r, stream, check) = part.current.as_mut().expect("a current replica");
                let r = r.clone();
                match stream.next().await {
                    Some(Ok(mut msg)) => {
                        if let Err(m) = check.message(&msg) {
                            part.failed(&r, format!("bad reply to ExtendChunk: {m}"), Code::DataLoss);
                            continue;
                        }
                        let done = msg.stats.is_some();
                        let delivered = &mut part.delivered;
                        msg.candidates.retain(|c| delivered.insert((c.prefix_index, c.child_index)));
                        if done {
                            r.record_success();
                            return Some((Ok(msg), None));
                        }
                        if !msg.candidates.is_empty() {
                            return Some((Ok(msg), Some(part)));
                        }
                    }
                    Some(Err(s)) if replica_fault(s.code()) => part.failed(&r, format!("{:?}: {}", s.code(), s.message()), s.code()),
                    Some(Err(s)) => return Some((Err(part.fatal(&r, &s)), None)),
                    None => {
                        let m = check.end().err().unwrap_or_else(|| "the stream ended early".into());
                        part.failed(&r, format!("bad reply to ExtendChunk: {m}"), Code::DataLoss);
                    }
                }
            }
        })
    }
}

#[async_trait]
impl PolicyRole for MeshPolicy {
    fn extend(&self, call: ExtendCall) -> ChunkStream {
        let replicas = self.entry.replicas_to_try();
        let ready = self.entry.ready_count().max(1);
        let parts = spread(call.prefixes.len(), ready);
        let mut streams = Vec::new();
        for (k, range) in parts.into_iter().enumerate() {
            let req = pb::ExtendChunkRequest {
                prefixes: call.prefixes[range.clone()]
                    .iter()
                    .map(|p| pb::PrefixToExtend {
                        token_ids: p.token_ids.clone(),
                        children_count: p.children as i32,
                        logit_biases: p.biases.iter().map(|&(token_id, bias)| pb::LogitBias { token_id, bias }).collect(),
                        seed: Some(p.seed as i64),
                    })
                    .collect(),
                chunk_tokens: call.chunk_tokens as i32,
                sampling: Some(pb::SamplingParams {
                    temperature: Some(call.temperature),
                    top_p: Some(call.top_p),
                    top_k: None,
                    seed: None,
                }),
                stop_token_ids: vec![],
                max_sequence_tokens: call.max_sequence_tokens as i32,
                omit_latents: !call.with_latents,
            };
            // Part k starts on the k-th replica to try; the others are its fallbacks.
            let mut order = replicas.clone();
            let turn = k % order.len().max(1);
            order.rotate_left(turn);
            let offset = range.start;
            let stops = self.meta.stop_texts.clone();
            let check = ExtendCheck::new(
                call.prefixes[range.clone()].iter().map(|p| p.children).collect(),
                call.chunk_tokens,
                self.vocab(),
                call.with_latents.then_some(self.latent_dim()),
            );
            let part = PartExtension::new(self.entry.clone(), order, req, self.deadline, check);
            let stream = part
                .stream()
                .map_ok(move |msg: pb::ExtendChunkResponse| {
                    msg.candidates
                        .into_iter()
                        .map(|c| {
                            let finish = finish_of(c.finish_reason);
                            let text = without_stop_text(&stops, &c.token_ids, c.text, finish);
                            Chunk {
                                prefix: offset + c.prefix_index as usize,
                                child: c.child_index as usize,
                                token_ids: c.token_ids,
                                text,
                                finish,
                                latent: c.latent.map(|l| l.values),
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .try_filter(|v| futures::future::ready(!v.is_empty()));
            streams.push(stream.boxed());
        }
        futures::stream::select_all(streams).boxed()
    }

    async fn top_k_next(&self, sequences: Vec<Vec<i32>>, k: usize) -> Result<Vec<Vec<NextToken>>, RoleError> {
        let deadline = self.deadline;
        let req = pb::TopKNextRequest {
            sequences: sequences.into_iter().map(|token_ids| pb::SequenceToScore { token_ids }).collect(),
            k: k as i32,
            omit_latents: true,
        };
        let vocab = self.vocab();
        let resp = with_failover(&self.entry, self.entry.replicas_to_try(), |r| {
            let req = req.clone();
            async move {
                let resp = PolicyServiceClient::new(r.channel.clone()).top_k_next(timed(req.clone(), deadline)).await?.into_inner();
                reply_check::count("results", req.sequences.len(), resp.results.len()).map_err(bad_reply)?;
                for (i, n) in resp.results.iter().enumerate() {
                    reply_check::next_tokens(i, n, k, vocab).map_err(bad_reply)?;
                }
                Ok(resp)
            }
        })
        .await?;
        Ok(resp
            .results
            .into_iter()
            .map(|n| NextToken::zip_answer(n.token_ids.iter().copied(), &n.logits, &n.texts, |id| self.is_stop(id)))
            .collect())
    }

    fn is_stop(&self, token_id: i32) -> bool {
        self.meta.info.eos_token_ids.contains(&token_id)
    }

    async fn latents(&self, sequences: Vec<Vec<i32>>) -> Result<Vec<Vec<f32>>, RoleError> {
        let deadline = self.deadline;
        let req = pb::TopKNextRequest {
            sequences: sequences.into_iter().map(|token_ids| pb::SequenceToScore { token_ids }).collect(),
            k: 1,
            omit_latents: false,
        };
        let dim = self.latent_dim();
        let resp = with_failover(&self.entry, self.entry.replicas_to_try(), |r| {
            let req = req.clone();
            async move {
                let mut c = PolicyServiceClient::new(r.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
                let resp = c.top_k_next(timed(req.clone(), deadline)).await?.into_inner();
                reply_check::count("results", req.sequences.len(), resp.results.len()).map_err(bad_reply)?;
                for (i, n) in resp.results.iter().enumerate() {
                    reply_check::latent(&format!("results[{i}].latent"), n.latent.as_ref(), dim).map_err(bad_reply)?;
                }
                Ok(resp)
            }
        })
        .await?;
        Ok(resp.results.into_iter().map(|n| n.latent.map(|l| l.values).unwrap_or_default()).collect())
    }

    async fn decode_from_latents(&self, steps: Vec<LatentStep>, temperature: f32, top_p: f32) -> Result<Vec<Decoded>, RoleError> {
        let deadline = self.deadline;
        let req = pb::DecodeFromLatentRequest {
            items: steps
                .into_iter()
                .map(|s| pb::LatentToDecode {
                    token_ids: s.token_ids,
                    latent: Some(pb::Latent { values: s.latent }),
                    seed: s.seed as i64,
                    draw_index: s.draw_index as i32,
                })
                .collect(),
            sampling: Some(pb::SamplingParams { temperature: Some(temperature), top_p: Some(top_p), top_k: None, seed: None }),
            stop_token_ids: vec![],
            max_sequence_tokens: 0,
            omit_next_latents: false,
        };
        let (vocab, dim) = (self.vocab(), self.latent_dim());
        let resp = with_failover(&self.entry, self.entry.replicas_to_try(), |r| {
            let req = req.clone();
            async move {
                let mut c = PolicyServiceClient::new(r.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
                let resp = c.decode_from_latent(timed(req.clone(), deadline)).await?.into_inner();
                reply_check::count("results", req.items.len(), resp.results.len()).map_err(bad_reply)?;
                for (i, t) in resp.results.iter().enumerate() {
                    reply_check::token(&format!("results[{i}].token_id"), t.token_id, vocab).map_err(bad_reply)?;
                    reply_check::latent(&format!("results[{i}].next_latent"), t.next_latent.as_ref(), dim).map_err(bad_reply)?;
                }
                Ok(resp)
            }
        })
        .await?;
        Ok(resp
            .results
            .into_iter()
            .map(|t| {
                let finish = finish_of(t.finish_reason);
                let text = if finish == Finish::Stop { String::new() } else { t.text };
                Decoded { token_id: t.token_id, text, finish, next_latent: t.next_latent.map(|l| l.values) }
            })
            .collect())
    }
}

/// Splits `n` items into calls of at most `max_items`, spread over the
/// entry's ready replicas (each call failing over to the others), and
/// concatenates the answers in item order.
async fn in_parts<R, F, Fut>(entry: &Entry, n: usize, max_items: usize, call: F) -> Result<Vec<R>, RoleError>
where
    F: Fn(std::ops::Range<usize>, Arc<Replica>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, Status>>,
{
    let ready = entry.ready_count().max(1);
    let parts = spread(n, ready.max(n.div_ceil(max_items.max(1))));
    let replicas = entry.replicas_to_try();
    let calls = parts.into_iter().enumerate().map(|(k, range)| {
        let mut order = replicas.clone();
        let turn = k % order.len().max(1);
        order.rotate_left(turn);
        let call = &call;
        async move {
            let answer = with_failover(entry, order, |r| call(range.clone(), r)).await?;
            if answer.len() != range.len() {
                return Err(RoleError::Internal(format!("{} model {:?}: asked for {} results, got {}", entry.role.as_str(), entry.name, range.len(), answer.len())));
            }
            Ok(answer)
        }
    });
    Ok(futures::future::try_join_all(calls).await?.into_iter().flatten().collect())
}

/// A critic entry serving one request.
pub struct MeshCritic {
    entry: Arc<Entry>,
    policy_model_id: String,
    max_items: usize,
    deadline: Instant,
}

impl MeshCritic {
    /// The critic of `entry` for latents of `policy_model_id`, sending at
    /// most `max_items` per call, until `deadline`.
    pub fn new(entry: Arc<Entry>, policy_model_id: String, max_items: usize, deadline: Instant) -> Self {
        Self { entry, policy_model_id, max_items, deadline }
    }

    fn items(points: &[CriticPoint]) -> Vec<pb::CriticItem> {
        points.iter().map(|(h, z)| pb::CriticItem { latent: Some(pb::Latent { values: h.clone() }), z: *z }).collect()
    }
}

#[async_trait]
impl CriticRole for MeshCritic {
    async fn evaluate(&self, points: Vec<CriticPoint>) -> Result<Vec<f64>, RoleError> {
        let items = Self::items(&points);
        let deadline = self.deadline;
        in_parts(&self.entry, items.len(), self.max_items, |range, r| {
            let req = pb::EvaluateRequest { policy_model_id: self.policy_model_id.clone(), items: items[range].to_vec() };
            async move {
                let values: Vec<f64> = CriticServiceClient::new(r.channel.clone()).evaluate(timed(req, deadline)).await?.into_inner().values.into_iter().map(f64::from).collect();
                reply_check::finite("values", values.iter().copied()).map_err(bad_reply)?;
                Ok(values)
            }
        })
        .await
    }

    async fn ascend(&self, points: Vec<CriticPoint>, steps: usize, step_size: f32) -> Result<Vec<Vec<f32>>, RoleError> {
        let items = Self::items(&points);
        let deadline = self.deadline;
        in_parts(&self.entry, items.len(), self.max_items, |range, r| {
            let dims: Vec<usize> = points[range.clone()].iter().map(|(h, _)| h.len()).collect();
            let req = pb::AscendRequest { policy_model_id: self.policy_model_id.clone(), items: items[range].to_vec(), steps: steps as i32, step_size };
            async move {
                let mut c = CriticServiceClient::new(r.channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
                let results = c.ascend(timed(req, deadline)).await?.into_inner().results;
                reply_check::count("results", dims.len(), results.len()).map_err(bad_reply)?;
                for (i, (a, &dim)) in results.iter().zip(&dims).enumerate() {
                    reply_check::latent(&format!("results[{i}].latent"), a.latent.as_ref(), dim).map_err(bad_reply)?;
                }
                Ok(results.into_iter().map(|a| a.latent.map(|l| l.values).unwrap_or_default()).collect())
            }
        })
        .await
    }
}

/// A scorer entry serving one request.
pub struct MeshScorer {
    entry: Arc<Entry>,
    max_items: usize,
    deadline: Instant,
}

impl MeshScorer {
    /// The scorer of `entry`, sending at most `max_items` per call, until `deadline`.
    pub fn new(entry: Arc<Entry>, max_items: usize, deadline: Instant) -> Self {
        Self { entry, max_items: max_items.max(1), deadline }
    }

    /// The scorer of `entry` as its Info describes it: at most the
    /// `max_items` it reports per call (64 when it reports no limits).
    pub fn with_info(entry: Arc<Entry>, info: &pb::ScorerInfoResponse, deadline: Instant) -> Self {
        Self::new(entry, info.limits.as_ref().map_or(64, |l| l.max_items as usize), deadline)
    }
}

/// A scorer entry's Info, from the first replica that answers.
pub async fn scorer_info(entry: &Entry, deadline: Instant) -> Result<pb::ScorerInfoResponse, RoleError> {
    with_failover(entry, entry.replicas_to_try(), |r| async move {
        let mut c = ScorerServiceClient::new(r.channel.clone());
        Ok(c.info(timed(pb::ScorerInfoRequest {}, deadline)).await?.into_inner())
    })
    .await
}

#[async_trait]
impl ScorerRole for MeshScorer {
    async fn score(&self, prompt: &str, responses: Vec<String>) -> Result<Vec<f64>, RoleError> {
        let deadline = self.deadline;
        in_parts(&self.entry, responses.len(), self.max_items, |range, r| {
            let items: Vec<pb::ScoreItem> = range
                .clone()
                .map(|i| pb::ScoreItem {
                    item_id: i as i64,
                    prompt: prompt.to_string(),
                    response: responses[i].clone(),
                    return_token_scores: false,
                    // A response longer than the model reads is scored on its end rather than failing the search.
                    truncate: true,
                })
                .collect();
            async move {
                let results = ScorerServiceClient::new(r.channel.clone()).score(timed(pb::ScoreRequest { items }, deadline)).await?.into_inner().results;
                // Results carry their item's id: place each by it, once.
                reply_check::count("scores", range.len(), results.len()).map_err(bad_reply)?;
                let mut scores: Vec<Option<f64>> = vec![None; range.len()];
                for s in results {
                    let slot = usize::try_from(s.item_id)
                        .ok()
                        .and_then(|id| id.checked_sub(range.start))
                        .and_then(|k| scores.get_mut(k))
                        .ok_or_else(|| bad_reply(format!("item_id {} was not asked for (asked {:?})", s.item_id, range)))?;
                    if slot.replace(f64::from(s.score)).is_some() {
                        return Err(bad_reply(format!("item_id {} was scored twice", s.item_id)));
                    }
                }
                let scores: Vec<f64> = scores.into_iter().map(|s| s.unwrap_or(f64::NAN)).collect();
                reply_check::finite("scores", scores.iter().copied()).map_err(bad_reply)?;
                Ok(scores)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_splits_evenly_and_never_empty() {
        assert_eq!(spread(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(spread(2, 5), vec![0..1, 1..2]);
        assert_eq!(spread(0, 2), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(spread(5, 1), vec![0..5]);
    }
}
