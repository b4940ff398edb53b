//! The error a role reports. Each variant maps to one gRPC status code, and
//! that mapping lives in one place (`ig-serve`).

/// Why a role could not answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RoleError {
    /// The request broke a documented rule. `field` is the request field's
    /// path (e.g. `prefixes[2].children_count`); the message names the limit.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// Path of the offending field in the request.
        field: String,
        /// What is wrong, with the limit and the value given.
        message: String,
    },
    /// The request is well formed but the server cannot serve it in its
    /// current configuration (e.g. no chat template in the checkpoint).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The server is at capacity; the caller may retry on another replica.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The model is not loaded yet or its thread stopped.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request's deadline passed before the work finished.
    #[error("deadline exceeded after {0}")]
    DeadlineExceeded(String),
    /// The caller went away; the work was stopped.
    #[error("cancelled by the client")]
    Cancelled,
    /// A bug or a model failure: nothing the caller can fix.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RoleError {
    /// Shorthand for [`RoleError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), message: message.into() }
    }
}
