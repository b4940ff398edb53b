//! Model code on candle for InferenceGuard Mesh. Knows nothing of gRPC.
//!
//! - [`causal_lm`]: the decoder-only causal LM of the Llama, Mistral, Qwen2 and
//!   Qwen3 families (GGUF and safetensors) with an external KV cache and
//!   segment-batched forward passes.
//! - [`tiny_checkpoint`]: small random checkpoints of every family, both
//!   formats, for reference and contract tests.
//! - [`kv_cache`]: the cache, with fork / expand / row selection for beams.
//! - [`tokenizer`]: tokenizers (from `tokenizer.json` or GGUF metadata) and
//!   chat templates.
//! - [`sampling`]: temperature, top-k, top-p, seeded per-child streams.
//! - [`prefix_cache`]: byte-bounded reuse of computed prefixes.
//! - [`policy`]: the [`ig_core::policy::PolicyBackend`] built from them.
//! - [`encoder`]: a BERT-family sentence encoder (MiniLM) with mean/CLS pooling.
//! - [`score_head`]: our score head file: a linear head over sentence
//!   embeddings, safetensors plus metadata.
//! - [`two_factor_head`]: the two-factor cost head `harm(prompt) · comply(response)`
//!   in the same file family.
//! - [`cross_head`]: the cross-encoder cost head: `harm(prompt)` times a comply factor
//!   that reads the pair through a fine-tuned top layer (the default demo cost model).
//! - [`scorer`]: the [`ig_core::scorer::ScorerBackend`]: one module per
//!   score-model format behind one trait (our head files, BERT and causal
//!   classifiers, guard LMs such as Llama Guard 3 and Qwen3Guard).
//! - [`critic`]: the critic MLP `V(h, z)` and its file format, with the
//!   gradients RECONTROL ascends ([`ig_core::critic::CriticBackend`]).

pub mod bert;
pub mod critic;
pub mod device_sampling;
pub mod cross_head;
pub mod encoder;
pub mod kv_cache;
pub mod causal_lm;
pub mod policy;
pub mod prefix_cache;
pub mod sampling;
pub mod score_head;
pub mod scorer;
pub mod scoring_passes;
pub mod shaped_checkpoint;
pub mod tiny_checkpoint;
pub mod tokenizer;
pub mod two_factor_head;

use ig_core::RoleError;

pub use candle_core::Device;

/// Threads candle's CPU kernels use.
pub fn num_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// What can go wrong in model code.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
    /// A checkpoint is malformed or lacks something required.
    #[error("{0}")]
    Format(String),
    /// A valid checkpoint or setting this code does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Inputs of the wrong shape reached the model (a caller's bug).
    #[error("shape: {0}")]
    Shape(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A role-level outcome (cancellation, deadline, bad text) passed through.
    #[error(transparent)]
    Role(#[from] RoleError),
}

/// Result of model code.
pub type Result<T> = std::result::Result<T, ModelError>;

impl From<ModelError> for RoleError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Unsupported(m) => RoleError::FailedPrecondition(m),
            ModelError::Role(r) => r,
            other => RoleError::Internal(other.to_string()),
        }
    }
}
