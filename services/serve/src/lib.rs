//! Server plumbing shared by every role of InferenceGuard Mesh.
//!
//! - [`engine`]: the model thread. One OS thread owns the model and its
//!   caches; async handlers send it jobs and await replies, so a forward pass
//!   never blocks a tokio worker.
//! - [`admission`]: request bodies draw on one byte budget per server.
//! - [`batcher`]: merges concurrent callers' score requests into one model
//!   call of a score model.
//! - [`server`]: `serve(listener, routes, ...)`: the role's tonic routes plus
//!   `grpc.health.v1` (NOT_SERVING until the model is warm) and server
//!   reflection, with graceful shutdown.
//! - [`message_limit`]: the transport's size refusal as the `INVALID_ARGUMENT`
//!   every other limit gives.
//! - [`status`]: the one mapping from [`ig_core::RoleError`] to gRPC status,
//!   and deadline parsing.
//! - [`process`]: the flags and set-up every role binary shares.
//! - [`tls`]: TLS and mTLS for servers and clients (rustls, ring), re-read on change.
//! - [`telemetry`]: structured logs, OpenTelemetry traces and metrics,
//!   Prometheus scraping.

pub mod admission;
pub mod batcher;
pub mod engine;
pub mod message_limit;
pub mod process;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use engine::{Engine, WatchdogArgs};
pub use server::{serve, DrainArgs, ServeOptions};
pub use status::{deadline_of, role_status, within_deadline};
