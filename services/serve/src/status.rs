//! The one place where role errors become gRPC statuses, and where request
//! deadlines are read.

use std::time::{Duration, Instant};

use ig_core::RoleError;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of every `google.rpc.ErrorInfo` this project sends.
pub const ERROR_DOMAIN: &str = "inferenceguard.dev";

/// Converts a role error into the status a client sees: the canonical code,
/// a one-line message, and `ErrorInfo` (plus `BadRequest` for invalid fields)
/// details.
pub fn role_status(err: RoleError) -> Status {
    let (code, reason) = match &err {
        RoleError::InvalidArgument { message, .. } if message.contains("at most") || message.contains("limit") => {
            (Code::InvalidArgument, "LIMIT_EXCEEDED")
        }
        RoleError::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_FIELD"),
        RoleError::FailedPrecondition(_) => (Code::FailedPrecondition, "MODEL_ERROR"),
        RoleError::Overloaded(_) => (Code::ResourceExhausted, "OVERLOADED"),
        RoleError::Unavailable(_) => (Code::Unavailable, "NOT_READY"),
        RoleError::DeadlineExceeded(_) => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        RoleError::Cancelled => (Code::Cancelled, "CANCELLED"),
        RoleError::Internal(_) => (Code::Internal, "ROLE_ERROR"),
    };
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
    if let RoleError::InvalidArgument { field, message } = &err {
        details.add_bad_request_violation(field.clone(), message.clone());
    }
    if code == Code::Internal {
        tracing::error!(error = %err, "internal error");
    }
    Status::with_error_details(code, err.to_string(), details)
}

/// How much earlier than the client's deadline handlers give up: tonic's
/// transport enforces `grpc-timeout` too, measured from the request's
/// arrival, and answers CANCELLED; stopping first lets the server answer the
/// canonical DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

/// Runs a unary handler's work until `deadline`, answering
/// DEADLINE_EXCEEDED when it passes (the work's future is dropped, which
/// tells the model thread the caller is gone).
pub async fn within_deadline<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        None => work.await,
        Some(d) => tokio::time::timeout_at(d.into(), work)
            .await
            .unwrap_or_else(|_| Err(role_status(RoleError::DeadlineExceeded("the request's deadline".into())))),
    }
}

/// The deadline a client set with the `grpc-timeout` header, if any, less a
/// small margin (see [`within_deadline`]).
pub fn deadline_of(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d.saturating_sub(DEADLINE_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_and_carries_bad_request() {
        let s = role_status(RoleError::invalid("prefixes[0].children_count", "must be at most 256, got 300"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("prefixes[0].children_count: "));
        let details = s.get_error_details();
        let br = details.bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "prefixes[0].children_count");
        assert_eq!(details.error_info().expect("error info").reason, "LIMIT_EXCEEDED");
    }

    #[test]
    fn codes_follow_the_error_kind() {
        assert_eq!(role_status(RoleError::Overloaded("q".into())).code(), Code::ResourceExhausted);
        assert_eq!(role_status(RoleError::Unavailable("x".into())).code(), Code::Unavailable);
        assert_eq!(role_status(RoleError::Cancelled).code(), Code::Cancelled);
        assert_eq!(role_status(RoleError::DeadlineExceeded("d".into())).code(), Code::DeadlineExceeded);
    }

    #[test]
    fn parses_grpc_timeout() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        let d = deadline_of(&m).unwrap();
        let left = d.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1400) && left <= Duration::from_millis(1490));
        m.insert("grpc-timeout", "bogus".parse().unwrap());
        assert!(deadline_of(&m).is_none());
    }
}
