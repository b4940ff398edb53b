//! Wire items become validated [`ScoreInput`]s, or errors naming the field
//! and the limit.

use ig_core::scorer::{ScoreInput, ScorerLimits};
use ig_core::RoleError;
use ig_proto::v1 as pb;

/// Checks the encoded size of a request message against the documented limit.
pub fn message_size(encoded: usize, limits: &ScorerLimits) -> Result<(), RoleError> {
    if encoded > limits.max_message_bytes {
        return Err(RoleError::invalid(
            "request",
            format!("encoded size must be at most {} bytes (max_message_bytes), got {encoded}", limits.max_message_bytes),
        ));
    }
    Ok(())
}

/// Checks the number of items in one message.
pub fn item_count(n: usize, limits: &ScorerLimits) -> Result<(), RoleError> {
    if n == 0 {
        return Err(RoleError::invalid("items", "at least one item is required, got none"));
    }
    if n > limits.max_items {
        return Err(RoleError::invalid("items", format!("at most {} items (max_items), got {n}", limits.max_items)));
    }
    Ok(())
}

/// Validates one item (`index` is its position in the message, for the
/// field path).
pub fn item(index: usize, it: &pb::ScoreItem, limits: &ScorerLimits, token_scores_available: bool) -> Result<ScoreInput, RoleError> {
    let field = |f: &str| format!("items[{index}].{f}");
    if it.prompt.len() > limits.max_prompt_bytes {
        return Err(RoleError::invalid(
            field("prompt"),
            format!("at most {} UTF-8 bytes (max_prompt_bytes), got {}", limits.max_prompt_bytes, it.prompt.len()),
        ));
    }
    if it.response.len() > limits.max_response_bytes {
        return Err(RoleError::invalid(
            field("response"),
            format!("at most {} UTF-8 bytes (max_response_bytes), got {}", limits.max_response_bytes, it.response.len()),
        ));
    }
    if it.return_token_scores && !token_scores_available {
        return Err(RoleError::FailedPrecondition(format!(
            "{}: this model gives no per-token scores (encoder trunks score whole texts)",
            field("return_token_scores")
        )));
    }
    Ok(ScoreInput {
        prompt: it.prompt.clone(),
        response: it.response.clone(),
        token_scores: it.return_token_scores,
        truncate: it.truncate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(prompt: &str, response: &str) -> pb::ScoreItem {
        pb::ScoreItem { item_id: 1, prompt: prompt.into(), response: response.into(), ..Default::default() }
    }

    #[test]
    fn names_fields_and_limits() {
        let limits = ScorerLimits { max_items: 2, max_prompt_bytes: 5, max_response_bytes: 3, ..Default::default() };
        let field_msg = |e: RoleError| match e {
            RoleError::InvalidArgument { field, message } => (field, message),
            other => panic!("{other:?}"),
        };
        let (f, m) = field_msg(item(1, &it("123456", "x"), &limits, false).unwrap_err());
        assert_eq!(f, "items[1].prompt");
        assert!(m.contains("max_prompt_bytes") && m.contains("got 6"));
        let (f, _) = field_msg(item(0, &it("1", "1234"), &limits, false).unwrap_err());
        assert_eq!(f, "items[0].response");
        let (f, m) = field_msg(item_count(3, &limits).unwrap_err());
        assert_eq!(f, "items");
        assert!(m.contains("max_items"));
        assert!(item_count(0, &limits).is_err());
        let mut t = it("a", "b");
        t.return_token_scores = true;
        assert!(matches!(item(0, &t, &limits, false), Err(RoleError::FailedPrecondition(_))));
        assert!(item(0, &t, &limits, true).unwrap().token_scores);
    }
}
