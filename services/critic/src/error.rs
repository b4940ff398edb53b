//! What the critic server refuses, and the one place where its errors
//! become gRPC statuses (codes, `ErrorInfo` reasons and metadata, and
//! `BadRequest` field violations as `proto/README.md`, "Errors", lists them).

use ig_core::RoleError;
use ig_serve::status::{role_status, ERROR_DOMAIN};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a critic call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CriticError {
    /// A required field or list is unset or empty (`MISSING_FIELD`).
    #[error("{field}: {message}")]
    Missing {
        /// Path of the field in the request.
        field: String,
        /// What is expected there.
        message: String,
    },
    /// A latent whose length is not the critic's `latent_dim` (`LATENT_DIM_MISMATCH`).
    #[error("{field}: {actual} values, expected latent_dim {expected}")]
    LatentDim {
        /// Path of the latent's values in the request.
        field: String,
        /// The critic's latent_dim.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// A count over a limit the server advertises (`LIMIT_EXCEEDED`).
    #[error("{field}: {message}")]
    Limit {
        /// Path of the field in the request.
        field: String,
        /// Name of the limit in `CriticLimits`.
        limit: &'static str,
        /// The value given.
        value: i64,
        /// The limit and the value, for humans.
        message: String,
    },
    /// The request's latents come from another policy than the critic's
    /// (`POLICY_MISMATCH`).
    #[error("policy_model_id: this critic was trained on the latents of policy {expected:?}, the request's come from {actual:?}")]
    PolicyMismatch {
        /// The critic's policy_model_id.
        expected: String,
        /// The request's policy_model_id.
        actual: String,
    },
    /// Anything else a role reports (bad values, overload, deadlines, model failures).
    #[error(transparent)]
    Role(#[from] RoleError),
}

fn status(code: Code, reason: &str, message: String, field: Option<&str>, metadata: Vec<(&str, String)>) -> Status {
    let meta: std::collections::HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, meta);
    if let Some(f) = field {
        details.add_bad_request_violation(f, message.clone());
    }
    Status::with_error_details(code, message, details)
}

impl From<CriticError> for Status {
    fn from(e: CriticError) -> Self {
        let message = e.to_string();
        match e {
            CriticError::Missing { field, .. } => {
                status(Code::InvalidArgument, "MISSING_FIELD", message, Some(&field), vec![("field", field.clone())])
            }
            CriticError::LatentDim { field, expected, actual } => status(
                Code::InvalidArgument,
                "LATENT_DIM_MISMATCH",
                message,
                Some(&field),
                vec![("field", field.clone()), ("expected", expected.to_string()), ("actual", actual.to_string())],
            ),
            CriticError::Limit { field, limit, value, .. } => status(
                Code::InvalidArgument,
                "LIMIT_EXCEEDED",
                message,
                Some(&field),
                vec![("field", field.clone()), ("limit", limit.to_string()), ("value", value.to_string())],
            ),
            CriticError::PolicyMismatch { expected, actual } => {
                status(Code::FailedPrecondition, "POLICY_MISMATCH", message, None, vec![("expected", expected), ("actual", actual)])
            }
            CriticError::Role(RoleError::InvalidArgument { field, .. }) => {
                status(Code::InvalidArgument, "INVALID_FIELD", message, Some(&field), vec![("field", field.clone())])
            }
            CriticError::Role(RoleError::Internal(_)) => {
                tracing::error!(error = %message, "critic model error");
                status(Code::Internal, "MODEL_ERROR", message, None, vec![])
            }
            CriticError::Role(other) => role_status(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_metadata_follow_the_error_table() {
        let s = Status::from(CriticError::LatentDim { field: "items[3].latent.values".into(), expected: 576, actual: 575 });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "items[3].latent.values: 575 values, expected latent_dim 576");
        let d = s.get_error_details();
        let info = d.error_info().expect("error info");
        assert_eq!(info.reason, "LATENT_DIM_MISMATCH");
        assert_eq!(info.metadata["expected"], "576");
        assert_eq!(d.bad_request().expect("bad request").field_violations[0].field, "items[3].latent.values");

        let s = Status::from(CriticError::PolicyMismatch { expected: "a".into(), actual: "b".into() });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().starts_with("policy_model_id: ") && s.message().contains("\"a\"") && s.message().contains("\"b\""));
        assert_eq!(s.get_error_details().error_info().unwrap().reason, "POLICY_MISMATCH");

        let s = Status::from(CriticError::Role(RoleError::Internal("nan".into())));
        assert_eq!((s.code(), s.get_error_details().error_info().unwrap().reason.as_str()), (Code::Internal, "MODEL_ERROR"));
        let s = Status::from(CriticError::Role(RoleError::Overloaded("full".into())));
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
}
