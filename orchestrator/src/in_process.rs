//! The role traits of [`crate::search`] called in-process, straight on the
//! role models' engines ([`ig_serve::Engine`]): no gRPC, no registry.
//!
//! Each adapter does what the gRPC path does, so a search with the same
//! parameters and seed does the same work and gives the same answer through
//! either path (`inferenceguard bench search --compare` measures the mesh's
//! overhead with it):
//!
//! - [`EnginePolicy`]: per-prefix seeds, no latents, a stopped candidate's
//!   text without its stop token's text, as [`crate::mesh::MeshPolicy`] asks
//!   the policy server; the prompt rendered with the chat template and the
//!   answer detokenized as the guard does.
//! - [`EngineScorer`]: calls of at most `max_items` items, as
//!   [`crate::mesh::MeshScorer`] sends them, through the same [`Batcher`] the
//!   scorer server puts in front of its model.
//!
//! The caller builds the backends: this crate knows no model code.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use ig_core::policy::{
    Candidate, ChatMessage, ExtendRequest, FinishReason, LatentDecodeRequest, LatentItem, PolicyBackend, PolicyInfo, PolicyLimits,
    PrefixSpec, Sampling, TextCodec, TopKRequest, WorkControl,
};
use ig_core::scorer::{ScoreInput, ScorerBackend, ScorerLimits};
use ig_core::RoleError;
use ig_serve::batcher::Batcher;
use ig_serve::Engine;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::mesh::{spread, without_stop_text};
use crate::search::{
    self, Chunk, ChunkStream, Decoded, ExtendCall, Finish, LatentStep, Method, NextToken, Outcome, Params, PolicyRole, RoleKind, RoleTimes,
    Roles, ScorerRole, SearchError, Step,
};

/// Candidate batches buffered before the model thread waits for the search
/// (what the policy server buffers per stream).
const STREAM_BUFFER: usize = 16;

fn to_u32(ids: &[i32]) -> Vec<u32> {
    ids.iter().map(|&t| t as u32).collect()
}

fn to_i32(ids: &[u32]) -> Vec<i32> {
    ids.iter().map(|&t| t as i32).collect()
}

/// The policy model behind an engine.
pub struct EnginePolicy<B: PolicyBackend> {
    engine: Engine<B>,
    info: PolicyInfo,
    codec: Arc<dyn TextCodec>,
    limits: PolicyLimits,
    stop_texts: Arc<HashMap<i32, String>>,
}

impl<B: PolicyBackend> EnginePolicy<B> {
    /// The policy behind `engine` within `limits` (the policy server's);
    /// waits until the model is ready.
    pub async fn new(engine: Engine<B>, limits: PolicyLimits) -> Result<Self, RoleError> {
        engine.ready().await?;
        let (info, codec) = engine.call(|b, _| (b.info(), b.codec())).await?;
        let stop_texts = info
            .eos_token_ids
            .iter()
            .map(|&id| Ok((id as i32, codec.detokenize(&[id], false)?)))
            .collect::<Result<HashMap<_, _>, RoleError>>()?;
        Ok(Self { engine, info, codec, limits, stop_texts: Arc::new(stop_texts) })
    }

    /// A user's message as the guard prepares it: rendered with the model's
    /// chat template when it has one, else tokenized verbatim.
    pub fn prompt(&self, text: &str) -> Result<search::Prompt, RoleError> {
        let token_ids = if self.info.chat_template.is_empty() {
            self.codec.tokenize(text, true)?
        } else {
            let user = ChatMessage { role: "user".into(), content: text.into() };
            self.codec.tokenize(&self.codec.render_chat(&[user], true)?, false)?
        };
        // The context the policy server advertises: its limit capped by the model's.
        let context = self.limits.max_sequence_tokens.min(self.info.max_position_embeddings).max(2);
        if token_ids.len() + 1 >= context {
            let m = format!("renders to {} tokens; the policy's context is {context} (max_sequence_tokens)", token_ids.len());
            return Err(RoleError::invalid("prompt_text", m));
        }
        Ok(search::Prompt {
            text: text.to_string(),
            token_ids: to_i32(&token_ids),
            max_sequence_tokens: context,
            max_logit_biases: self.limits.max_logit_biases,
        })
    }

    /// The answer's text without special tokens, as the guard returns it.
    pub fn detokenize(&self, token_ids: &[i32]) -> Result<String, RoleError> {
        self.codec.detokenize(&to_u32(token_ids), true)
    }
}

fn finish_of(reason: FinishReason) -> Finish {
    match reason {
        FinishReason::Chunk => Finish::Open,
        FinishReason::Stop => Finish::Stop,
        FinishReason::Length => Finish::Length,
    }
}

/// A policy candidate as the search sees it.
fn chunk_of(stop_texts: &HashMap<i32, String>, c: Candidate) -> Chunk {
    let finish = finish_of(c.finish_reason);
    let token_ids = to_i32(&c.token_ids);
    let text = without_stop_text(stop_texts, &token_ids, c.text, finish);
    Chunk { prefix: c.prefix_index, child: c.child_index, token_ids, text, finish, latent: c.latent }
}

#[async_trait]
impl<B: PolicyBackend> PolicyRole for EnginePolicy<B> {
    fn extend(&self, call: ExtendCall) -> ChunkStream {
        let request = ExtendRequest {
            prefixes: call
                .prefixes
                .iter()
                .map(|p| PrefixSpec {
                    token_ids: to_u32(&p.token_ids),
                    children: p.children,
                    logit_biases: p.biases.iter().map(|&(t, b)| (t as u32, b)).collect(),
                    seed: Some(p.seed),
                })
                .collect(),
            chunk_tokens: call.chunk_tokens,
            // Every prefix carries its own seed, so the request's is never used.
            sampling: Sampling { temperature: call.temperature, top_p: call.top_p, top_k: None, seed: 0 },
            stop_token_ids: Vec::new(),
            max_sequence_tokens: call.max_sequence_tokens,
            with_latents: call.with_latents,
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stop_texts = self.stop_texts.clone();
        let submitted = self.engine.submit(move |backend, _queued| {
            // A dropped stream (the search ended or was cancelled) stops the work.
            let gone = || tx.is_closed();
            let control = WorkControl::new(None, &gone);
            let mut emit = |batch: Vec<Candidate>| {
                let chunks: Vec<Chunk> = batch.into_iter().map(|c| chunk_of(&stop_texts, c)).collect();
                if !chunks.is_empty() {
                    let _ = tx.blocking_send(Ok(chunks));
                }
            };
            match backend.extend(&request, &control, &mut emit) {
                Ok(_) | Err(RoleError::Cancelled) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        match submitted {
            Ok(()) => ReceiverStream::new(rx).boxed(),
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        }
    }

    async fn top_k_next(&self, sequences: Vec<Vec<i32>>, k: usize) -> Result<Vec<Vec<NextToken>>, RoleError> {
        let request = TopKRequest { sequences: sequences.iter().map(|s| to_u32(s)).collect(), k, with_latents: false };
        let results = self.engine.call(move |b, _| b.top_k_next(&request, &WorkControl::new(None, &|| false))).await??;
        Ok(results
            .into_iter()
            .map(|n| NextToken::zip_answer(n.token_ids.iter().map(|&id| id as i32), &n.logits, &n.texts, |id| self.is_stop(id)))
            .collect())
    }

    fn is_stop(&self, token_id: i32) -> bool {
        self.info.eos_token_ids.iter().any(|&id| id as i32 == token_id)
    }

    async fn latents(&self, sequences: Vec<Vec<i32>>) -> Result<Vec<Vec<f32>>, RoleError> {
        let request = TopKRequest { sequences: sequences.iter().map(|s| to_u32(s)).collect(), k: 1, with_latents: true };
        let results = self.engine.call(move |b, _| b.top_k_next(&request, &WorkControl::new(None, &|| false))).await??;
        results.into_iter().map(|n| n.latent.ok_or_else(|| RoleError::Internal("top_k_next returned no latent".into()))).collect()
    }

    async fn decode_from_latents(&self, steps: Vec<LatentStep>, temperature: f32, top_p: f32) -> Result<Vec<Decoded>, RoleError> {
        let request = LatentDecodeRequest {
            items: steps
                .into_iter()
                .map(|s| LatentItem { token_ids: to_u32(&s.token_ids), latent: s.latent, seed: s.seed, draw_index: s.draw_index as u64 })
                .collect(),
            sampling: Sampling { temperature, top_p, top_k: None, seed: 0 },
            stop_token_ids: Vec::new(),
            max_sequence_tokens: self.limits.max_sequence_tokens.min(self.info.max_position_embeddings),
            with_next_latents: true,
        };
        let (tokens, _) = self.engine.call(move |b, _| b.decode_from_latents(&request, &WorkControl::new(None, &|| false))).await??;
        Ok(tokens
            .into_iter()
            .map(|t| {
                let finish = finish_of(t.finish_reason);
                let text = if finish == Finish::Stop { String::new() } else { t.text };
                Decoded { token_id: t.token_id as i32, text, finish, next_latent: t.next_latent }
            })
            .collect())
    }
}

/// A score model behind an engine, batched as the scorer server batches.
pub struct EngineScorer {
    batcher: Batcher,
    max_items: usize,
}

impl EngineScorer {
    /// The model behind `engine` with the scorer server's settings: at most
    /// `limits.max_items` items per call, `max_batch_items` per model call,
    /// `queue_depth` calls waiting; waits until the model is ready.
    pub fn new<B: ScorerBackend>(
        engine: Engine<B>,
        limits: &ScorerLimits,
        max_batch_items: usize,
        queue_depth: usize,
    ) -> impl Future<Output = Result<Self, RoleError>> + Send + 'static {
        let max_items = limits.max_items.max(1);
        async move {
            engine.ready().await?;
            Ok(Self { batcher: Batcher::start(engine, max_batch_items, queue_depth), max_items })
        }
    }
}

#[async_trait]
impl ScorerRole for EngineScorer {
    async fn score(&self, prompt: &str, responses: Vec<String>) -> Result<Vec<f64>, RoleError> {
        let n = responses.len();
        let mut responses = responses.into_iter();
        let calls: Vec<_> = spread(n, n.div_ceil(self.max_items))
            .into_iter()
            .map(|range| {
                let inputs = responses
                    .by_ref()
                    .take(range.len())
                    .map(|response| ScoreInput { prompt: prompt.to_string(), response, token_scores: false, truncate: true })
                    .collect();
                self.batcher.score(inputs, None)
            })
            .collect();
        let answers = futures::future::try_join_all(calls).await?;
        Ok(answers.into_iter().flat_map(|(outputs, _)| outputs).map(|o| o.score as f64).collect())
    }
}

/// The roles of a search, in-process.
pub struct InProcessRoles<B: PolicyBackend> {
    policy: Arc<EnginePolicy<B>>,
    cost: Arc<EngineScorer>,
    reward: Arc<EngineScorer>,
}

/// What one in-process generation gives, as the guard would report it.
#[derive(Debug, Clone)]
pub struct InProcessResult {
    /// The search's answer and counts.
    pub outcome: Outcome,
    /// The answer's text without special tokens (the guard's `text`).
    pub text: String,
    /// Time each role was busy.
    pub times: RoleTimes,
    /// Wall time, prompt rendering and detokenizing included.
    pub total: Duration,
}

impl<B: PolicyBackend> InProcessRoles<B> {
    /// The roles of one search.
    pub fn new(policy: EnginePolicy<B>, cost: EngineScorer, reward: EngineScorer) -> Self {
        Self { policy: Arc::new(policy), cost: Arc::new(cost), reward: Arc::new(reward) }
    }

    /// Runs `method` for a user's message as the guard's Generate does: the
    /// prompt rendered, the search run, the answer detokenized.
    pub async fn generate(
        &self,
        method: Method,
        params: &Params,
        prompt_text: &str,
        progress: &(dyn Fn(Step) + Send + Sync),
    ) -> Result<InProcessResult, SearchError> {
        let started = Instant::now();
        let policy_error = |error| SearchError { role: RoleKind::Policy, error };
        let prompt = self.policy.prompt(prompt_text).map_err(policy_error)?;
        let roles = Roles::new(self.policy.clone(), self.cost.clone(), self.reward.clone());
        let outcome = search::run(method, params, &prompt, &roles, progress).await?;
        let text = self.policy.detokenize(&outcome.token_ids).map_err(policy_error)?;
        Ok(InProcessResult { outcome, text, times: roles.times(), total: started.elapsed() })
    }
}
