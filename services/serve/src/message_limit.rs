//! The transport's message-size refusal, in the project's words.
//!
//! Each role's decoder is capped at exactly its advertised `max_message_bytes`, so an
//! oversized request is refused from its 5-byte gRPC frame header, before a byte of it is
//! buffered or decoded. tonic reports that as `OUT_OF_RANGE` ("decoded message length too
//! large"); this layer rewrites it into the `INVALID_ARGUMENT` every other limit gives,
//! naming the limit, so clients see one error shape whatever the size.

use ig_core::RoleError;
use tonic::{Code, Status};

use crate::status::role_status;

const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Rewrites a trailers-only response that carries tonic's decode-size refusal (a unary or
/// server-streaming request's single message); every other response passes unchanged.
pub fn rewrite<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let Some(ours) = invalid_size(&status) else {
        return response;
    };
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if ours.add_header(headers).is_err() {
        // Cannot happen for the ASCII statuses built here; keep tonic's own answer then.
        let _ = status.add_header(headers);
    }
    response
}

/// The `INVALID_ARGUMENT` status for tonic's decode-size refusal, if `status` is one (also
/// used by client-streaming handlers, which see it as a stream error).
pub fn invalid_size(status: &Status) -> Option<Status> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(TONIC_TOO_LARGE)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (found, limit): (usize, usize) = (found.parse().ok()?, limit.parse().ok()?);
    Some(role_status(RoleError::invalid(
        "request",
        format!("encoded size must be at most {limit} bytes (max_message_bytes), got {found}"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn tonic_refusal_becomes_invalid_argument_naming_the_limit() {
        let tonic = Status::out_of_range("Error, decoded message length too large: found 2000 bytes, the limit is: 1024 bytes");
        let response = rewrite(tonic.into_http::<()>());
        let seen = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(seen.code(), Code::InvalidArgument);
        assert_eq!(seen.message(), "request: encoded size must be at most 1024 bytes (max_message_bytes), got 2000");
        let violations = seen.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "request");
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        for status in [Status::out_of_range("seek past the end"), Status::invalid_argument("x"), Status::ok("")] {
            let before = (status.code(), status.message().to_string());
            let response = rewrite(status.into_http::<()>());
            let seen = Status::from_header_map(response.headers()).unwrap();
            assert_eq!((seen.code(), seen.message().to_string()), before);
        }
        let plain = http::Response::new(());
        assert!(rewrite(plain).headers().is_empty());
    }
}
