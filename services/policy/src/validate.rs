//! Parse, don't validate: wire requests become the validated types of
//! `ig_core::policy`, or an error naming the field, the limit and the value.

use ig_core::policy::{
    ExtendRequest, LatentDecodeRequest, LatentItem, PolicyInfo, PolicyLimits, PrefixSpec, Sampling, TopKRequest,
};
use ig_core::RoleError;
use ig_proto::v1 as pb;

/// Most extra stop ids per request.
pub const MAX_STOP_TOKEN_IDS: usize = 16;
/// Largest accepted temperature.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// The longest sequence this server accepts: its limit, capped by the model's
/// context.
pub fn sequence_limit(info: &PolicyInfo, limits: &PolicyLimits) -> usize {
    limits.max_sequence_tokens.min(info.max_position_embeddings)
}

fn parse_ids(field: &str, ids: &[i32], vocab: usize) -> Result<Vec<u32>, RoleError> {
    ids.iter()
        .enumerate()
        .map(|(j, &id)| {
            if id < 0 || id as usize >= vocab {
                Err(RoleError::invalid(
                    format!("{field}[{j}]"),
                    format!("token id must be in [0, {vocab}) (the vocabulary size), got {id}"),
                ))
            } else {
                Ok(id as u32)
            }
        })
        .collect()
}

fn in_range(field: &str, value: i64, lo: i64, hi: i64, what: &str) -> Result<usize, RoleError> {
    if value < lo || value > hi {
        return Err(RoleError::invalid(field, format!("must be in [{lo}, {hi}] ({what}), got {value}")));
    }
    Ok(value as usize)
}

/// Checks the encoded size of a request against the documented limit.
pub fn message_size(encoded: usize, limits: &PolicyLimits) -> Result<(), RoleError> {
    if encoded > limits.max_message_bytes {
        return Err(RoleError::invalid(
            "request",
            format!("encoded size must be at most {} bytes (max_message_bytes), got {encoded}", limits.max_message_bytes),
        ));
    }
    Ok(())
}

/// Validates text for Tokenize / RenderChat.
pub fn text(field: &str, len: usize, limits: &PolicyLimits) -> Result<(), RoleError> {
    if len > limits.max_text_bytes {
        return Err(RoleError::invalid(
            field,
            format!("must be at most {} UTF-8 bytes (max_text_bytes), got {len}", limits.max_text_bytes),
        ));
    }
    Ok(())
}

/// Validates a Detokenize request's ids.
pub fn detokenize(req: &pb::DetokenizeRequest, info: &PolicyInfo, limits: &PolicyLimits) -> Result<Vec<u32>, RoleError> {
    let max = sequence_limit(info, limits);
    if req.token_ids.len() > max {
        return Err(RoleError::invalid(
            "token_ids",
            format!("at most {max} ids (max_sequence_tokens), got {}", req.token_ids.len()),
        ));
    }
    parse_ids("token_ids", &req.token_ids, info.vocab_size)
}

/// Validates a chunk-extension request. `drawn_seed` is used when the request
/// has none.
pub fn extend(
    req: pb::ExtendChunkRequest,
    info: &PolicyInfo,
    limits: &PolicyLimits,
    drawn_seed: u64,
) -> Result<ExtendRequest, RoleError> {
    let vocab = info.vocab_size;
    let limit = sequence_limit(info, limits);
    if req.prefixes.is_empty() {
        return Err(RoleError::invalid("prefixes", "at least one prefix is required, got none"));
    }
    in_range("prefixes", req.prefixes.len() as i64, 1, limits.max_prefixes as i64, "max_prefixes")?;
    let chunk_tokens =
        in_range("chunk_tokens", req.chunk_tokens as i64, 1, limits.max_chunk_tokens as i64, "max_chunk_tokens")?;
    let max_sequence_tokens = match req.max_sequence_tokens {
        0 => limit,
        n => in_range("max_sequence_tokens", n as i64, 2, limit as i64, "the server's max_sequence_tokens")?,
    };
    let mut prefixes = Vec::with_capacity(req.prefixes.len());
    let mut total = 0usize;
    for (i, p) in req.prefixes.into_iter().enumerate() {
        let field = format!("prefixes[{i}]");
        if p.token_ids.is_empty() {
            return Err(RoleError::invalid(format!("{field}.token_ids"), "must hold at least one token, got none"));
        }
        if p.token_ids.len() >= max_sequence_tokens {
            return Err(RoleError::invalid(
                format!("{field}.token_ids"),
                format!(
                    "at most {} tokens (max_sequence_tokens - 1) so that one can be generated, got {}",
                    max_sequence_tokens - 1,
                    p.token_ids.len()
                ),
            ));
        }
        let token_ids = parse_ids(&format!("{field}.token_ids"), &p.token_ids, vocab)?;
        let children = in_range(
            &format!("{field}.children_count"),
            p.children_count as i64,
            1,
            limits.max_children_per_prefix as i64,
            "max_children_per_prefix",
        )?;
        total += children;
        if p.logit_biases.len() > limits.max_logit_biases {
            return Err(RoleError::invalid(
                format!("{field}.logit_biases"),
                format!("at most {} entries (max_logit_biases), got {}", limits.max_logit_biases, p.logit_biases.len()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut logit_biases = Vec::with_capacity(p.logit_biases.len());
        for (j, b) in p.logit_biases.iter().enumerate() {
            let bf = format!("{field}.logit_biases[{j}]");
            let id = parse_ids(&format!("{bf}.token_id"), &[b.token_id], vocab)?[0];
            if !b.bias.is_finite() {
                return Err(RoleError::invalid(format!("{bf}.bias"), format!("must be finite, got {}", b.bias)));
            }
            if !seen.insert(id) {
                return Err(RoleError::invalid(format!("{bf}.token_id"), format!("token id {id} appears more than once")));
            }
            logit_biases.push((id, b.bias));
        }
        prefixes.push(PrefixSpec { token_ids, children, logit_biases, seed: p.seed.map(|s| s as u64) });
    }
    if total > limits.max_candidates {
        return Err(RoleError::invalid(
            "prefixes",
            format!("the sum of children_count must be at most {} (max_candidates), got {total}", limits.max_candidates),
        ));
    }
    let sampling = sampling(req.sampling.unwrap_or_default(), vocab, drawn_seed)?;
    if req.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(RoleError::invalid(
            "stop_token_ids",
            format!("at most {MAX_STOP_TOKEN_IDS} ids, got {}", req.stop_token_ids.len()),
        ));
    }
    let stop_token_ids = parse_ids("stop_token_ids", &req.stop_token_ids, vocab)?;
    let request =
        ExtendRequest { prefixes, chunk_tokens, sampling, stop_token_ids, max_sequence_tokens, with_latents: !req.omit_latents };
    kv_budget("prefixes", "the candidates' KV cache (children x (prefix tokens + chunk_tokens)", request.kv_cache_bytes(info.kv_bytes_per_position), info, limits)?;
    Ok(request)
}

fn sampling(s: pb::SamplingParams, vocab: usize, drawn_seed: u64) -> Result<Sampling, RoleError> {
    let temperature = s.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(RoleError::invalid(
            "sampling.temperature",
            format!("must be in [0, {MAX_TEMPERATURE}] (0 = greedy), got {temperature}"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(RoleError::invalid("sampling.top_p", format!("must be in (0, 1], got {top_p}")));
    }
    let top_k = match s.top_k {
        None => None,
        Some(k) => Some(in_range("sampling.top_k", k as i64, 1, vocab as i64, "the vocabulary size")?),
    };
    Ok(Sampling { temperature, top_p, top_k, seed: s.seed.map(|s| s as u64).unwrap_or(drawn_seed) })
}

/// Validates a top-k request.
pub fn top_k(req: pb::TopKNextRequest, info: &PolicyInfo, limits: &PolicyLimits) -> Result<TopKRequest, RoleError> {
    if req.sequences.is_empty() {
        return Err(RoleError::invalid("sequences", "at least one sequence is required, got none"));
    }
    in_range("sequences", req.sequences.len() as i64, 1, limits.max_prefixes as i64, "max_prefixes")?;
    let k = in_range("k", req.k as i64, 1, limits.max_top_k.min(info.vocab_size) as i64, "max_top_k")?;
    let limit = sequence_limit(info, limits);
    let sequences = req
        .sequences
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("sequences[{i}].token_ids");
            if s.token_ids.is_empty() {
                return Err(RoleError::invalid(field, "must hold at least one token, got none"));
            }
            if s.token_ids.len() > limit {
                return Err(RoleError::invalid(
                    field,
                    format!("at most {limit} tokens (max_sequence_tokens), got {}", s.token_ids.len()),
                ));
            }
            parse_ids(&field, &s.token_ids, info.vocab_size)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = TopKRequest { sequences, k, with_latents: !req.omit_latents };
    kv_budget("sequences", "the sequences' KV cache (tokens", request.kv_cache_bytes(info.kv_bytes_per_position), info, limits)?;
    Ok(request)
}

/// Refuses a request whose own KV cache (`what` … `x bytes per position`) is over the
/// server's budget: memory is bounded by configuration on every RPC, not by luck.
fn kv_budget(field: &str, what: &str, kv_bytes: usize, info: &PolicyInfo, limits: &PolicyLimits) -> Result<(), RoleError> {
    if kv_bytes <= limits.max_kv_cache_bytes {
        return Ok(());
    }
    Err(RoleError::invalid(
        field,
        format!(
            "{what} x {} bytes) would take {} MiB, over the server's max_kv_cache_bytes of {} MiB",
            info.kv_bytes_per_position,
            kv_bytes >> 20,
            limits.max_kv_cache_bytes >> 20
        ),
    ))
}

/// Validates a DecodeFromLatent request.
pub fn decode_from_latent(
    req: pb::DecodeFromLatentRequest,
    info: &PolicyInfo,
    limits: &PolicyLimits,
) -> Result<LatentDecodeRequest, RoleError> {
    if req.items.is_empty() {
        return Err(RoleError::invalid("items", "at least one item is required, got none"));
    }
    in_range("items", req.items.len() as i64, 1, limits.max_prefixes as i64, "max_prefixes")?;
    let limit = sequence_limit(info, limits);
    let max_sequence_tokens = match req.max_sequence_tokens {
        0 => limit,
        n => in_range("max_sequence_tokens", n as i64, 2, limit as i64, "the server's max_sequence_tokens")?,
    };
    let dim = info.latent_dim;
    let mut items = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.into_iter().enumerate() {
        let field = format!("items[{i}]");
        if item.token_ids.is_empty() {
            return Err(RoleError::invalid(format!("{field}.token_ids"), "must hold at least one token, got none"));
        }
        if item.token_ids.len() >= max_sequence_tokens {
            return Err(RoleError::invalid(
                format!("{field}.token_ids"),
                format!(
                    "at most {} tokens (max_sequence_tokens - 1) so that one can be added, got {}",
                    max_sequence_tokens - 1,
                    item.token_ids.len()
                ),
            ));
        }
        let token_ids = parse_ids(&format!("{field}.token_ids"), &item.token_ids, info.vocab_size)?;
        let Some(latent) = item.latent else {
            return Err(RoleError::invalid(format!("{field}.latent"), format!("is required ({dim} values, latent_dim), got none")));
        };
        if latent.values.len() != dim {
            return Err(RoleError::invalid(
                format!("{field}.latent.values"),
                format!("must hold exactly {dim} values (latent_dim), got {}", latent.values.len()),
            ));
        }
        if let Some((j, v)) = latent.values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(RoleError::invalid(format!("{field}.latent.values[{j}]"), format!("must be finite, got {v}")));
        }
        let draw_index = in_range(&format!("{field}.draw_index"), item.draw_index as i64, 0, i32::MAX as i64, "non-negative")?;
        items.push(LatentItem { token_ids, latent: latent.values, seed: item.seed as u64, draw_index: draw_index as u64 });
    }
    // Each item has its own seed: the request's is not used.
    let sampling = sampling(req.sampling.unwrap_or_default(), info.vocab_size, 0)?;
    if req.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(RoleError::invalid(
            "stop_token_ids",
            format!("at most {MAX_STOP_TOKEN_IDS} ids, got {}", req.stop_token_ids.len()),
        ));
    }
    let stop_token_ids = parse_ids("stop_token_ids", &req.stop_token_ids, info.vocab_size)?;
    let request =
        LatentDecodeRequest { items, sampling, stop_token_ids, max_sequence_tokens, with_next_latents: !req.omit_next_latents };
    kv_budget("items", "the items' KV cache ((tokens + 1)", request.kv_cache_bytes(info.kv_bytes_per_position), info, limits)?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PolicyInfo {
        PolicyInfo {
            model_id: "m".into(),
            architecture: "llama".into(),
            vocab_size: 100,
            latent_dim: 8,
            eos_token_ids: vec![2],
            bos_token_id: None,
            chat_template: String::new(),
            weight_dtype: "f32".into(),
            device: "cpu".into(),
            max_position_embeddings: 64,
            kv_bytes_per_position: 1024,
        }
    }

    fn req(prefixes: Vec<pb::PrefixToExtend>, chunk: i32) -> pb::ExtendChunkRequest {
        pb::ExtendChunkRequest { prefixes, chunk_tokens: chunk, ..Default::default() }
    }

    fn prefix(ids: Vec<i32>, children: i32) -> pb::PrefixToExtend {
        pb::PrefixToExtend { token_ids: ids, children_count: children, logit_biases: vec![], seed: None }
    }

    fn field_of(e: RoleError) -> (String, String) {
        match e {
            RoleError::InvalidArgument { field, message } => (field, message),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_good_request_and_resolves_defaults() {
        let limits = PolicyLimits::default();
        let r = extend(req(vec![prefix(vec![1, 5], 3)], 4), &info(), &limits, 42).unwrap();
        assert_eq!(r.candidate_count(), 3);
        assert_eq!(r.max_sequence_tokens, 64); // capped by the model's context
        assert_eq!(r.sampling.seed, 42);
        assert_eq!(r.sampling.temperature, 1.0);
        assert!(r.with_latents);
    }

    #[test]
    fn names_the_field_and_the_limit() {
        let limits = PolicyLimits { max_children_per_prefix: 4, max_chunk_tokens: 8, ..Default::default() };
        let cases: Vec<(pb::ExtendChunkRequest, &str, &str)> = vec![
            (req(vec![], 4), "prefixes", "at least one"),
            (req(vec![prefix(vec![], 1)], 4), "prefixes[0].token_ids", "at least one token"),
            (req(vec![prefix(vec![1, 100], 1)], 4), "prefixes[0].token_ids[1]", "[0, 100)"),
            (req(vec![prefix(vec![1, -1], 1)], 4), "prefixes[0].token_ids[1]", "got -1"),
            (req(vec![prefix(vec![1], 0)], 4), "prefixes[0].children_count", "max_children_per_prefix"),
            (req(vec![prefix(vec![1], 5)], 4), "prefixes[0].children_count", "[1, 4]"),
            (req(vec![prefix(vec![1], 1)], 0), "chunk_tokens", "max_chunk_tokens"),
            (req(vec![prefix(vec![1], 1)], 9), "chunk_tokens", "[1, 8]"),
            (req(vec![prefix(vec![1; 64], 1)], 4), "prefixes[0].token_ids", "at most 63"),
        ];
        for (r, field, needle) in cases {
            let (f, m) = field_of(extend(r, &info(), &limits, 0).unwrap_err());
            assert_eq!(f, field);
            assert!(m.contains(needle), "{f}: {m:?} lacks {needle:?}");
        }
    }

    #[test]
    fn checks_the_total_candidates_biases_and_sampling() {
        let over_kv = PolicyLimits { max_kv_cache_bytes: 10 * 1024, ..Default::default() };
        // 3 children x (2 prefix + 2 chunk) positions x 1 KiB = 12 KiB.
        let (f, m) = field_of(extend(req(vec![prefix(vec![1, 2], 3)], 2), &info(), &over_kv, 0).unwrap_err());
        assert_eq!(f, "prefixes");
        assert!(m.contains("max_kv_cache_bytes"), "{m}");
        let limits = PolicyLimits { max_candidates: 5, ..Default::default() };
        let (f, m) = field_of(extend(req(vec![prefix(vec![1], 3), prefix(vec![1], 3)], 4), &info(), &limits, 0).unwrap_err());
        assert_eq!(f, "prefixes");
        assert!(m.contains("max_candidates"));

        let mut p = prefix(vec![1], 1);
        p.logit_biases = vec![pb::LogitBias { token_id: 3, bias: -5.0 }, pb::LogitBias { token_id: 3, bias: 1.0 }];
        let (f, _) = field_of(extend(req(vec![p], 4), &info(), &PolicyLimits::default(), 0).unwrap_err());
        assert_eq!(f, "prefixes[0].logit_biases[1].token_id");

        let mut p = prefix(vec![1], 1);
        p.logit_biases = vec![pb::LogitBias { token_id: 3, bias: f32::NEG_INFINITY }];
        let (f, _) = field_of(extend(req(vec![p], 4), &info(), &PolicyLimits::default(), 0).unwrap_err());
        assert_eq!(f, "prefixes[0].logit_biases[0].bias");

        let mut r = req(vec![prefix(vec![1], 1)], 4);
        r.sampling = Some(pb::SamplingParams { top_p: Some(0.0), ..Default::default() });
        assert_eq!(field_of(extend(r, &info(), &PolicyLimits::default(), 0).unwrap_err()).0, "sampling.top_p");
        let mut r = req(vec![prefix(vec![1], 1)], 4);
        r.sampling = Some(pb::SamplingParams { temperature: Some(f32::NAN), ..Default::default() });
        assert_eq!(field_of(extend(r, &info(), &PolicyLimits::default(), 0).unwrap_err()).0, "sampling.temperature");
    }

    #[test]
    fn message_size_names_the_limit() {
        let limits = PolicyLimits { max_message_bytes: 10, ..Default::default() };
        let (f, m) = field_of(message_size(11, &limits).unwrap_err());
        assert_eq!(f, "request");
        assert!(m.contains("max_message_bytes") && m.contains("11"));
        assert!(message_size(10, &limits).is_ok());
    }

    fn latent_item(ids: Vec<i32>, values: Vec<f32>) -> pb::LatentToDecode {
        pb::LatentToDecode { token_ids: ids, latent: Some(pb::Latent { values }), seed: -3, draw_index: 2 }
    }

    fn decode_req(items: Vec<pb::LatentToDecode>) -> pb::DecodeFromLatentRequest {
        pb::DecodeFromLatentRequest { items, ..Default::default() }
    }

    #[test]
    fn decode_from_latent_resolves_defaults_and_keeps_the_seed_bits() {
        let r = decode_from_latent(decode_req(vec![latent_item(vec![1, 5], vec![0.5; 8])]), &info(), &PolicyLimits::default()).unwrap();
        assert_eq!(r.max_sequence_tokens, 64);
        assert_eq!((r.items[0].seed, r.items[0].draw_index), (-3i64 as u64, 2));
        assert_eq!(r.sampling.temperature, 1.0);
        assert!(r.with_next_latents);
    }

    #[test]
    fn decode_from_latent_names_the_field_and_the_limit() {
        let limits = PolicyLimits { max_prefixes: 2, ..Default::default() };
        let good = || latent_item(vec![1, 5], vec![0.5; 8]);
        let mut nan = vec![0.5; 8];
        nan[3] = f32::NAN;
        let no_latent = pb::LatentToDecode { latent: None, ..good() };
        let negative = pb::LatentToDecode { draw_index: -1, ..good() };
        let mut greedy_k0 = decode_req(vec![good()]);
        greedy_k0.sampling = Some(pb::SamplingParams { top_k: Some(0), ..Default::default() });
        let cases: Vec<(pb::DecodeFromLatentRequest, &str, &str)> = vec![
            (decode_req(vec![]), "items", "at least one"),
            (decode_req(vec![good(), good(), good()]), "items", "max_prefixes"),
            (decode_req(vec![good(), latent_item(vec![], vec![0.5; 8])]), "items[1].token_ids", "at least one token"),
            (decode_req(vec![latent_item(vec![1, 100], vec![0.5; 8])]), "items[0].token_ids[1]", "[0, 100)"),
            (decode_req(vec![latent_item(vec![1; 64], vec![0.5; 8])]), "items[0].token_ids", "at most 63"),
            (decode_req(vec![latent_item(vec![1], vec![0.5; 7])]), "items[0].latent.values", "exactly 8 values (latent_dim), got 7"),
            (decode_req(vec![latent_item(vec![1], nan)]), "items[0].latent.values[3]", "finite"),
            (decode_req(vec![no_latent]), "items[0].latent", "required"),
            (decode_req(vec![negative]), "items[0].draw_index", "got -1"),
            (greedy_k0, "sampling.top_k", "[1, 100]"),
        ];
        for (r, field, needle) in cases {
            let (f, m) = field_of(decode_from_latent(r, &info(), &limits).unwrap_err());
            assert_eq!(f, field);
            assert!(m.contains(needle), "{f}: {m:?} lacks {needle:?}");
        }
        let over_kv = PolicyLimits { max_kv_cache_bytes: 2 * 1024, ..Default::default() };
        // (2 tokens + 1) x 1 KiB = 3 KiB.
        let (f, m) = field_of(decode_from_latent(decode_req(vec![good()]), &info(), &over_kv).unwrap_err());
        assert_eq!(f, "items");
        assert!(m.contains("max_kv_cache_bytes"), "{m}");
    }

    #[test]
    fn top_k_bounds() {
        let limits = PolicyLimits { max_top_k: 10, ..Default::default() };
        let r = pb::TopKNextRequest { sequences: vec![pb::SequenceToScore { token_ids: vec![1] }], k: 11, omit_latents: false };
        assert_eq!(field_of(top_k(r, &info(), &limits).unwrap_err()).0, "k");
        let r = pb::TopKNextRequest { sequences: vec![], k: 1, omit_latents: false };
        assert_eq!(field_of(top_k(r, &info(), &limits).unwrap_err()).0, "sequences");
        // The KV budget holds here as on every RPC: 4 sequences x 3 tokens x 1 KiB > 10 KiB.
        let over_kv = PolicyLimits { max_kv_cache_bytes: 10 * 1024, ..Default::default() };
        let seq = || pb::SequenceToScore { token_ids: vec![1, 2, 3] };
        let r = pb::TopKNextRequest { sequences: vec![seq(), seq(), seq(), seq()], k: 1, omit_latents: false };
        let (f, m) = field_of(top_k(r.clone(), &info(), &over_kv).unwrap_err());
        assert_eq!(f, "sequences");
        assert!(m.contains("max_kv_cache_bytes"), "{m}");
        let r = pb::TopKNextRequest { sequences: r.sequences[..3].to_vec(), ..r };
        top_k(r, &info(), &over_kv).unwrap();
    }
}
