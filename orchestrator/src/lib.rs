//! The stateless orchestrator of InferenceGuard Mesh.
//!
//! Today: typed clients of the roles ([`policy_client`], [`scorer_client`])
//! over shared connection code ([`channel`]). The search strategies and the
//! public `GuardService` build on them.

pub mod channel;
pub mod policy_client;
pub mod scorer_client;

pub use channel::ClientError;
pub use policy_client::PolicyClient;
pub use scorer_client::ScorerClient;
