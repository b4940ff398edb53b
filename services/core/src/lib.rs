//! Role contracts of InferenceGuard Mesh.
//!
//! Plain batch types and the traits each role's model implements. This crate
//! knows neither gRPC nor candle: `ig-models` implements the traits on candle,
//! `ig-serve` and the role binaries put them behind tonic.
//!
//! - [`policy`]: the causal LM role (chunk extension, top-k, text codec).
//! - [`scorer`]: the score model role (cost or reward of (prompt, response)).
//! - [`critic`]: the critic role (a value `V(h, z)` of a latent and the safety state).
//! - [`error`]: [`RoleError`], the one error type a role reports.

pub mod critic;
pub mod error;
pub mod policy;
pub mod scorer;

pub use error::RoleError;
