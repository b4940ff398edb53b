//! Fuzz bodies: arbitrary bytes decoded as each service's request message and run through
//! the validation its server applies before any model work. Shared by the `cargo fuzz`
//! targets (`fuzz/`) and the smoke test that replays the committed corpus in
//! `./scripts/test` (`tests/tests/fuzz_smoke.rs`).
//!
//! A body must never panic whatever the bytes; where validation accepts, the accepted value
//! must respect the limits it was checked against (that is asserted, so a check that lets
//! too much through is a crash too). Errors are turned into the status a client would get
//! and encoded as HTTP headers, as the server does.

use ig_core::policy::{PolicyInfo, PolicyLimits};
use ig_core::scorer::ScorerLimits;
use ig_core::critic::CriticLimits;
use ig_proto::v1 as pb;
use prost::Message;
use tonic::Status;

/// A served policy shaped like the demo's (SmolLM2-135M): what requests are checked against.
pub fn policy_info() -> PolicyInfo {
    PolicyInfo {
        model_id: "fuzz".into(),
        architecture: "llama".into(),
        vocab_size: 49_152,
        latent_dim: 576,
        eos_token_ids: vec![2],
        bos_token_id: None,
        chat_template: String::new(),
        weight_dtype: "f32".into(),
        device: "cpu".into(),
        max_position_embeddings: 2048,
        kv_bytes_per_position: 30 * 3 * 64 * 2 * 4,
    }
}

fn answer(status: Status) {
    // The server sends it as headers: must encode whatever the message holds.
    let _ = status.into_http::<()>();
}

/// `PolicyService.ExtendChunk`.
pub fn policy_extend(data: &[u8]) {
    let Ok(req) = pb::ExtendChunkRequest::decode(data) else { return };
    let (info, limits) = (policy_info(), PolicyLimits::default());
    match ig_policy::validate::extend(req, &info, &limits, 7) {
        Ok(r) => {
            assert!(!r.prefixes.is_empty() && r.prefixes.len() <= limits.max_prefixes);
            assert!(r.candidate_count() <= limits.max_candidates);
            assert!((1..=limits.max_chunk_tokens).contains(&r.chunk_tokens));
            assert!(r.kv_cache_bytes(info.kv_bytes_per_position) <= limits.max_kv_cache_bytes);
            for p in &r.prefixes {
                assert!(!p.token_ids.is_empty() && p.token_ids.len() < ig_policy::validate::sequence_limit(&info, &limits));
                assert!(p.token_ids.iter().all(|&t| (t as usize) < info.vocab_size));
                assert!((1..=limits.max_children_per_prefix).contains(&p.children));
            }
        }
        Err(e) => answer(ig_serve::role_status(e)),
    }
}

/// `PolicyService.TopKNext`.
pub fn policy_top_k(data: &[u8]) {
    let Ok(req) = pb::TopKNextRequest::decode(data) else { return };
    let (info, limits) = (policy_info(), PolicyLimits::default());
    match ig_policy::validate::top_k(req, &info, &limits) {
        Ok(r) => {
            assert!(!r.sequences.is_empty() && r.sequences.len() <= limits.max_prefixes);
            assert!((1..=limits.max_top_k.min(info.vocab_size)).contains(&r.k));
            let tokens: usize = r.sequences.iter().map(Vec::len).sum();
            assert!(tokens * info.kv_bytes_per_position <= limits.max_kv_cache_bytes);
        }
        Err(e) => answer(ig_serve::role_status(e)),
    }
}

/// `PolicyService.DecodeFromLatent`.
pub fn policy_decode(data: &[u8]) {
    let Ok(req) = pb::DecodeFromLatentRequest::decode(data) else { return };
    let (info, limits) = (policy_info(), PolicyLimits::default());
    match ig_policy::validate::decode_from_latent(req, &info, &limits) {
        Ok(r) => {
            assert!(!r.items.is_empty() && r.items.len() <= limits.max_prefixes);
            for it in &r.items {
                assert_eq!(it.latent.len(), info.latent_dim);
                assert!(it.latent.iter().all(|v| v.is_finite()));
                assert!(it.token_ids.iter().all(|&t| (t as usize) < info.vocab_size));
            }
        }
        Err(e) => answer(ig_serve::role_status(e)),
    }
}

/// `ScorerService.Score` (each item as the server checks it).
pub fn scorer_score(data: &[u8]) {
    let Ok(req) = pb::ScoreRequest::decode(data) else { return };
    let limits = ScorerLimits::default();
    if let Err(e) = ig_scorer::validate::item_count(req.items.len(), &limits) {
        return answer(ig_serve::role_status(e));
    }
    for (i, it) in req.items.iter().enumerate() {
        match ig_scorer::validate::item(i, it, &limits, true) {
            Ok(input) => {
                assert!(input.prompt.len() <= limits.max_prompt_bytes && input.response.len() <= limits.max_response_bytes);
            }
            Err(e) => answer(ig_serve::role_status(e)),
        }
    }
}

/// `CriticService.Ascend` (which checks everything `Evaluate` and `Gradient` check, and
/// the ascent's parameters).
pub fn critic_ascend(data: &[u8]) {
    let Ok(req) = pb::AscendRequest::decode(data) else { return };
    let limits = CriticLimits::default();
    let checked = ig_critic::validate::policy(&req.policy_model_id, "fuzz")
        .and_then(|_| ig_critic::validate::item_count(req.items.len(), &limits))
        .and_then(|_| ig_critic::validate::ascent(req.steps, req.step_size, &limits))
        .and_then(|steps| ig_critic::validate::items(&req.items, 576, &limits).map(|b| (steps, b)));
    match checked {
        Ok((steps, batch)) => {
            assert!(steps <= limits.max_ascent_steps);
            assert!(!batch.is_empty() && batch.len() <= limits.max_items);
            assert_eq!(batch.latents.len(), batch.len() * 576);
            assert!(batch.latents.iter().all(|v| v.is_finite()) && batch.z.iter().all(|v| v.is_finite()));
        }
        Err(e) => answer(Status::from(e)),
    }
}

/// `GuardService.Generate`: every check made before a role is called.
pub fn guard_generate(data: &[u8]) {
    let Ok(req) = pb::GenerateRequest::decode(data) else { return };
    let limits = ig_orchestrator::GuardLimits::default();
    let policy = PolicyLimits::default();
    let policy = pb::PolicyLimits {
        max_sequence_tokens: 2048,
        max_prefixes: policy.max_prefixes as i32,
        max_children_per_prefix: policy.max_children_per_prefix as i32,
        max_candidates: policy.max_candidates as i32,
        max_chunk_tokens: policy.max_chunk_tokens as i32,
        max_top_k: policy.max_top_k as i32,
        max_logit_biases: policy.max_logit_biases as i32,
        max_text_bytes: policy.max_text_bytes as i32,
        max_message_bytes: policy.max_message_bytes as i32,
    };
    let critic = pb::CriticLimits { max_items: 256, max_ascent_steps: 100, max_message_bytes: 8 << 20 };
    match ig_orchestrator::guard::check_request(req, &limits, &policy, Some(&critic)) {
        Ok(used) => {
            let within = |v: Option<i32>, hi: usize| v.is_none_or(|v| v >= 0 && v as usize <= hi);
            assert!(within(used.max_new_tokens, limits.max_new_tokens));
            assert!(within(used.samples_count, limits.max_samples_count));
            assert!(within(used.chunk_tokens, policy.max_chunk_tokens as usize));
            assert!(used.safety_budget.is_none_or(f64::is_finite));
        }
        Err(status) => answer(status),
    }
}

/// Every target, by the name of its `fuzz/fuzz_targets/*.rs` file and corpus folder.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("policy_extend", policy_extend),
    ("policy_top_k", policy_top_k),
    ("policy_decode", policy_decode),
    ("scorer_score", scorer_score),
    ("critic_ascend", critic_ascend),
    ("guard_generate", guard_generate),
];
