//! The stateless orchestrator of InferenceGuard Mesh.
//!
//! - [`search`]: InferenceGuard and the paper's baselines, plain async Rust
//!   over small role traits (no gRPC, no candle).
//! - [`policy_client`], [`scorer_client`], [`channel`]: typed gRPC clients of
//!   the roles.

pub mod channel;
pub mod policy_client;
pub mod scorer_client;
pub mod search;

pub use channel::ClientError;
pub use policy_client::PolicyClient;
pub use scorer_client::ScorerClient;
