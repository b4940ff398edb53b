//! The policy role: a frozen causal LM that extends token prefixes in chunks.
//!
//! Requests here are already validated (see the policy server's `validate`
//! module): every index is in range and every limit holds, so a backend never
//! re-checks them.

use std::time::{Duration, Instant};

use crate::RoleError;

/// Limits a policy server enforces. All are inclusive maxima.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Longest sequence (prefix plus generated tokens), in tokens.
    pub max_sequence_tokens: usize,
    /// Most prefixes per ExtendChunk call (sequences per TopKNext call, items
    /// per DecodeFromLatent call).
    pub max_prefixes: usize,
    /// Most children of one prefix.
    pub max_children_per_prefix: usize,
    /// Most candidates (sum of children) per ExtendChunk call.
    pub max_candidates: usize,
    /// Largest chunk, in tokens.
    pub max_chunk_tokens: usize,
    /// Largest k of TopKNext.
    pub max_top_k: usize,
    /// Most logit biases on one prefix.
    pub max_logit_biases: usize,
    /// Largest text for Tokenize / RenderChat, in UTF-8 bytes.
    pub max_text_bytes: usize,
    /// Largest encoded request, in bytes.
    pub max_message_bytes: usize,
    /// Most rows (live candidates) in one shared forward pass; requests
    /// that would exceed it wait for the next pass (one larger request runs alone).
    pub max_batch_rows: usize,
    /// Byte budget of the KV cache of all extensions in flight together. A
    /// request whose own KV cache exceeds it is refused; others wait.
    pub max_kv_cache_bytes: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            max_sequence_tokens: 2048,
            max_prefixes: 256,
            max_children_per_prefix: 256,
            max_candidates: 512,
            max_chunk_tokens: 256,
            max_top_k: 256,
            max_logit_biases: 4096,
            max_text_bytes: 64 * 1024,
            max_message_bytes: 16 * 1024 * 1024,
            max_batch_rows: 256,
            max_kv_cache_bytes: 4 << 30,
        }
    }
}

/// What a policy serves.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInfo {
    /// Stable identifier of the checkpoint (file or directory name).
    pub model_id: String,
    /// Architecture, e.g. "llama".
    pub architecture: String,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Hidden size: the length of every latent.
    pub latent_dim: usize,
    /// Ids that end a sequence.
    pub eos_token_ids: Vec<u32>,
    /// Id prepended by `tokenize(add_special_tokens = true)`, if any.
    pub bos_token_id: Option<u32>,
    /// Jinja chat template from the checkpoint, empty if none.
    pub chat_template: String,
    /// Weight format in memory, e.g. "q8_0".
    pub weight_dtype: String,
    /// Device, e.g. "cpu".
    pub device: String,
    /// Context length of the model (positions it was built for).
    pub max_position_embeddings: usize,
    /// KV cache bytes one position of one sequence takes (all layers).
    pub kv_bytes_per_position: usize,
}

/// One message of a conversation, before templating.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant", ...
    pub role: String,
    /// The text.
    pub content: String,
}

/// Text in, ids out, and back; thread-safe so servers can call it off the
/// model thread.
pub trait TextCodec: Send + Sync {
    /// Token ids of `text`; `add_special_tokens` adds e.g. a BOS token.
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, RoleError>;
    /// Text of `ids`.
    fn detokenize(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, RoleError>;
    /// The conversation rendered with the model's chat template.
    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, RoleError>;
}

/// How tokens are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps everything.
    pub top_p: f32,
    /// Keep only the k most likely tokens, if set.
    pub top_k: Option<usize>,
    /// Root seed; each child derives its own stream from it.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: None, seed: 0 }
    }
}

/// A prefix to extend.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixSpec {
    /// Prompt plus response so far; never empty.
    pub token_ids: Vec<u32>,
    /// Children to draw, at least one.
    pub children: usize,
    /// `(token id, bias)` pairs added to the logits at every step.
    pub logit_biases: Vec<(u32, f32)>,
    /// This prefix's own seed: its children draw from `(seed, 0, child)`
    /// instead of `(sampling seed, prefix index, child)`.
    pub seed: Option<u64>,
}

/// A validated chunk-extension request.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendRequest {
    /// The prefixes, each with its number of children.
    pub prefixes: Vec<PrefixSpec>,
    /// Tokens to generate per child.
    pub chunk_tokens: usize,
    /// How tokens are drawn.
    pub sampling: Sampling,
    /// Ids that end a sequence besides the model's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// A sequence stops with [`FinishReason::Length`] at this many tokens.
    pub max_sequence_tokens: usize,
    /// Whether to return latents.
    pub with_latents: bool,
}

impl ExtendRequest {
    /// Total number of candidates the request asks for.
    pub fn candidate_count(&self) -> usize {
        self.prefixes.iter().map(|p| p.children).sum()
    }

    /// KV cache bytes the request holds at the end of its chunk.
    pub fn kv_cache_bytes(&self, kv_bytes_per_position: usize) -> usize {
        self.prefixes.iter().map(|p| p.children * (p.token_ids.len() + self.chunk_tokens) * kv_bytes_per_position).sum()
    }
}

/// Why a sequence stopped growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The chunk is complete; the sequence may be extended again.
    Chunk,
    /// A stop token was produced (it is the last generated id).
    Stop,
    /// The length limit was reached.
    Length,
}

/// One child of one prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index of the prefix in the request.
    pub prefix_index: usize,
    /// Index of the child among its prefix's children.
    pub child_index: usize,
    /// The generated ids only.
    pub token_ids: Vec<u32>,
    /// Text of the generated ids, decoded in the context of the prefix.
    pub text: String,
    /// Log-probability of each generated id under the untempered model.
    pub token_logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Post-norm hidden state at the last token, if requested.
    pub latent: Option<Vec<f32>>,
    /// Prefix plus generated length.
    pub sequence_tokens: usize,
}

/// Work done for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendStats {
    /// Prefix tokens run through the model.
    pub prefill_tokens: u64,
    /// Prefix tokens served from the prefix cache.
    pub cached_prefix_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Forward passes run.
    pub forward_passes: u64,
    /// Time spent computing.
    pub compute: Duration,
}

/// A validated top-k request.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKRequest {
    /// Sequences whose next token is asked for; none empty.
    pub sequences: Vec<Vec<u32>>,
    /// Tokens to return per sequence.
    pub k: usize,
    /// Whether to return latents.
    pub with_latents: bool,
}

impl TopKRequest {
    /// KV cache bytes its sequences hold while they are run.
    pub fn kv_cache_bytes(&self, kv_bytes_per_position: usize) -> usize {
        self.sequences.iter().map(|s| s.len() * kv_bytes_per_position).sum()
    }
}

/// The most likely next tokens of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct NextTokens {
    /// Ids, most likely first.
    pub token_ids: Vec<u32>,
    /// Raw logits, same order.
    pub logits: Vec<f32>,
    /// Log-softmax at temperature 1, same order.
    pub logprobs: Vec<f32>,
    /// Each token's text on its own, same order.
    pub texts: Vec<String>,
    /// Post-norm hidden state at the last token, if requested.
    pub latent: Option<Vec<f32>>,
}

/// One sequence to extend by a token drawn from a given latent (RECONTROL's
/// decoding step: the latent was moved by a critic).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentItem {
    /// Prompt plus response so far; never empty.
    pub token_ids: Vec<u32>,
    /// Stands for the post-norm hidden state at the last token: `latent_dim`
    /// finite values.
    pub latent: Vec<f32>,
    /// Seed of the draw's stream: the stream of child 0 of a prefix whose
    /// [`PrefixSpec::seed`] is this seed.
    pub seed: u64,
    /// Position of the draw in that stream: the draw an extension makes for
    /// the token at this index of its chunk.
    pub draw_index: u64,
}

/// A validated request to draw one token from each item's latent.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentDecodeRequest {
    /// The items, at least one.
    pub items: Vec<LatentItem>,
    /// How tokens are drawn; `seed` is not used (each item has its own).
    pub sampling: Sampling,
    /// Ids that end a sequence besides the model's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// A sequence stops with [`FinishReason::Length`] at this many tokens.
    pub max_sequence_tokens: usize,
    /// Whether to compute the latent of each extended sequence.
    pub with_next_latents: bool,
}

impl LatentDecodeRequest {
    /// KV cache bytes the request holds while its next latents are computed.
    pub fn kv_cache_bytes(&self, kv_bytes_per_position: usize) -> usize {
        self.items.iter().map(|i| (i.token_ids.len() + 1) * kv_bytes_per_position).sum()
    }
}

/// The token drawn for one [`LatentItem`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedToken {
    /// The drawn id.
    pub token_id: u32,
    /// Its log-probability under the softmax of the latent's logits at
    /// temperature 1 (no top-p/top-k cut), as an extension reports it.
    pub logprob: f32,
    /// The text it adds to the sequence (special tokens kept).
    pub text: String,
    /// [`FinishReason::Stop`] for a stop id, [`FinishReason::Length`] when
    /// the extended sequence reaches the length limit, otherwise
    /// [`FinishReason::Chunk`] (it may be extended again).
    pub finish_reason: FinishReason,
    /// Post-norm hidden state at the drawn token (the extended sequence's
    /// last position); none when not requested or finished by a stop id.
    pub next_latent: Option<Vec<f32>>,
    /// Length of the extended sequence.
    pub sequence_tokens: usize,
}

/// Tells a long computation whether to go on: the client may have left or
/// the deadline may have passed.
pub struct WorkControl<'a> {
    deadline: Option<Instant>,
    client_gone: &'a dyn Fn() -> bool,
}

impl<'a> WorkControl<'a> {
    /// A control with an optional deadline and a probe for a vanished client.
    pub fn new(deadline: Option<Instant>, client_gone: &'a dyn Fn() -> bool) -> Self {
        Self { deadline, client_gone }
    }

    /// `Ok` to continue; the error to stop with otherwise.
    pub fn check(&self) -> Result<(), RoleError> {
        if (self.client_gone)() {
            return Err(RoleError::Cancelled);
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => {
                Err(RoleError::DeadlineExceeded("the request's deadline".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A chunk extension in progress. It advances one token per
/// [`PolicyBackend::step_extends`], in forward passes it shares with the other
/// runs in flight (continuous batching: candidates of concurrent requests
/// share every matmul).
pub trait ExtendRun: Send {
    /// Whether every candidate has finished.
    fn is_done(&self) -> bool;
    /// The candidates that finished since the last call, in order.
    fn take_finished(&mut self) -> Vec<Candidate>;
    /// Work done so far (`compute` is left to the caller, who sees the
    /// wall time).
    fn stats(&self) -> ExtendStats;
    /// Rows the next step feeds: live candidates, and any rows of ended ones
    /// the backend keeps in its batch until dropping them is worth a copy.
    fn fed_rows(&self) -> usize;
}

/// A loaded causal LM that the policy server drives from one thread.
pub trait PolicyBackend: Send + 'static {
    /// An extension in progress.
    type Run: ExtendRun;
    /// What is served.
    fn info(&self) -> PolicyInfo;
    /// The tokenizer and chat template, shareable with other threads.
    fn codec(&self) -> std::sync::Arc<dyn TextCodec>;
    /// Runs a few tokens through the model so the first request is not slow.
    fn warm_up(&mut self) -> Result<(), RoleError>;
    /// Starts extending every prefix of `request` by one chunk: computes (or
    /// finds cached) the prefixes' states.
    fn begin_extend(&mut self, request: &ExtendRequest) -> Result<Self::Run, RoleError>;
    /// Advances every run by one token in one forward pass. A failure fails
    /// the pass, so every run in it.
    fn step_extends(&mut self, runs: &mut [&mut Self::Run]) -> Result<(), RoleError>;
    /// Extends every prefix by one chunk on its own. Finished candidates are
    /// handed to `emit` as soon as they are known (grouped by step);
    /// `control` is checked between forward passes.
    fn extend(
        &mut self,
        request: &ExtendRequest,
        control: &WorkControl<'_>,
        emit: &mut dyn FnMut(Vec<Candidate>),
    ) -> Result<ExtendStats, RoleError> {
        let started = Instant::now();
        control.check()?;
        let mut run = self.begin_extend(request)?;
        while !run.is_done() {
            control.check()?;
            self.step_extends(&mut [&mut run])?;
            let finished = run.take_finished();
            if !finished.is_empty() {
                emit(finished);
            }
        }
        Ok(ExtendStats { compute: started.elapsed(), ..run.stats() })
    }
    /// The k most likely next tokens of each sequence.
    fn top_k_next(
        &mut self,
        request: &TopKRequest,
        control: &WorkControl<'_>,
    ) -> Result<Vec<NextTokens>, RoleError>;
    /// One token per item, drawn from the LM head applied to the item's
    /// latent with the item's own random stream, and (when asked) the latent
    /// of the sequence extended by it, in item order, with the work done
    /// (`compute` included).
    ///
    /// The draw is that of an extension: with the latent an extension (or
    /// TopKNext) returned for the sequence, the token equals the one
    /// [`PolicyBackend::extend`] draws for child 0 of a prefix seeded with
    /// `seed`, at index `draw_index` of its chunk.
    fn decode_from_latents(
        &mut self,
        request: &LatentDecodeRequest,
        control: &WorkControl<'_>,
    ) -> Result<(Vec<DecodedToken>, ExtendStats), RoleError>;
}
