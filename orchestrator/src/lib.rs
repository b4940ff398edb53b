//! The stateless orchestrator of InferenceGuard Mesh.
//!
//! Today: typed clients of the roles ([`policy_client`]). The search
//! strategies and the public `GuardService` build on them.

pub mod policy_client;

pub use policy_client::PolicyClient;
