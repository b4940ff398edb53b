//! The scorer role: a score model (cost or reward) over (prompt, response)
//! texts. One implementation serves both roles; the role is configuration.
//!
//! Requests here are validated by the scorer server (sizes, counts).

use crate::policy::WorkControl;
use crate::RoleError;

/// What a scorer's number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreRole {
    /// Higher is more harmful; > 0 is unsafe (PKU-Alignment convention).
    Cost,
    /// Higher is more helpful.
    Reward,
}

impl std::str::FromStr for ScoreRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cost" => Ok(Self::Cost),
            "reward" => Ok(Self::Reward),
            other => Err(format!("score role {other:?}: expected cost or reward")),
        }
    }
}

/// Limits a scorer server enforces. All are inclusive maxima.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScorerLimits {
    /// Items per Score call (and per stream message).
    pub max_items: usize,
    /// Prompt text per item, UTF-8 bytes.
    pub max_prompt_bytes: usize,
    /// Response text per item, UTF-8 bytes.
    pub max_response_bytes: usize,
    /// Tokens the model reads per item (longer items fail unless truncation is asked for).
    pub max_tokens: usize,
    /// Encoded request message, bytes.
    pub max_message_bytes: usize,
    /// Items in flight per stream before the server stops reading it.
    pub max_inflight_items: usize,
}

impl Default for ScorerLimits {
    fn default() -> Self {
        Self {
            max_items: 512,
            max_prompt_bytes: 32 * 1024,
            max_response_bytes: 32 * 1024,
            max_tokens: 512,
            max_message_bytes: 16 * 1024 * 1024,
            max_inflight_items: 2048,
        }
    }
}

/// What a scorer serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerInfo {
    /// Cost or reward.
    pub role: ScoreRole,
    /// Stable identifier of the model (head file or checkpoint name).
    pub model_id: String,
    /// One sentence on what the score means, for humans.
    pub score_description: String,
    /// Trunk architecture, e.g. "bert" or "llama".
    pub architecture: String,
    /// Head format, e.g. "inferenceguard.score_head.v1", "LlamaForScore",
    /// "LlamaForSequenceClassification", "BertForSequenceClassification".
    pub head_format: String,
    /// How (prompt, response) become the model's input text, with `{prompt}`
    /// and `{response}` placeholders; describes each input for multi-input heads.
    pub text_template: String,
    /// Whether per-token scores can be asked for (causal trunks only).
    pub token_scores_available: bool,
    /// Weight format in memory.
    pub weight_dtype: String,
    /// Device, e.g. "cpu".
    pub device: String,
    /// Longest input the model itself accepts, in tokens.
    pub max_model_tokens: usize,
}

/// One (prompt, response) pair to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreInput {
    /// The user's prompt, raw text (no chat markup).
    pub prompt: String,
    /// The response so far, raw text.
    pub response: String,
    /// Whether to return a score per response token (causal trunks only).
    pub token_scores: bool,
    /// Whether to truncate an over-long input instead of failing.
    pub truncate: bool,
}

/// The score of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutput {
    /// The end score (for a causal trunk: at the last token).
    pub score: f32,
    /// Per response token: (score, byte offset in `response` where the token ends).
    /// Empty unless asked for.
    pub token_scores: Vec<(f32, usize)>,
    /// Tokens the model read.
    pub token_count: usize,
    /// Tokens cut off by truncation.
    pub truncated_token_count: usize,
}

/// A loaded score model that the scorer server drives from one thread.
pub trait ScorerBackend: Send + 'static {
    /// What is served.
    fn info(&self) -> ScorerInfo;
    /// Runs a few inputs through the model so the first request is not slow.
    fn warm_up(&mut self) -> Result<(), RoleError>;
    /// Scores a batch; the output has one entry per input, in order. An
    /// input that is too long without `truncate` fails the whole call with
    /// `InvalidArgument` naming `items[i]` (the server checks sizes first).
    fn score(&mut self, inputs: &[ScoreInput], control: &WorkControl<'_>) -> Result<Vec<ScoreOutput>, RoleError>;
}
