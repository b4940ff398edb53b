//! `inferenceguard.v1.GuardService`: validation, model resolution through
//! the registry, the search on [`crate::mesh`] roles, and the result.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream};
use ig_core::RoleError;
use ig_proto::v1 as pb;
use ig_proto::v1::guard_service_server::GuardService;
use ig_serve::status::ERROR_DOMAIN;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument;

use crate::mesh::{policy_meta, MeshCritic, MeshPolicy, MeshScorer};
use crate::registry::{fetch_info, Entry, EntryRole, LookupError, Registry, RoleInfo};
use crate::search::{self, CriticObjective, Method, Outcome, Params, RoleKind, Roles, SearchError, Step};

/// Name of the service in `grpc.health.v1`.
pub const SERVICE_NAME: &str = "inferenceguard.v1.GuardService";

/// The guard's own limits (GuardLimits on the wire).
#[derive(Debug, Clone)]
pub struct GuardLimits {
    /// Largest prompt, in bytes.
    pub max_prompt_bytes: usize,
    /// Most chat messages.
    pub max_chat_messages: usize,
    /// Largest samples_count.
    pub max_samples_count: usize,
    /// Largest max_new_tokens.
    pub max_new_tokens: usize,
    /// Largest max_resamples.
    pub max_resamples: usize,
    /// Longest a search may run.
    pub max_duration: Duration,
    /// Searches run at once.
    pub max_concurrent_requests: usize,
    /// Largest request message.
    pub max_message_bytes: usize,
}

impl Default for GuardLimits {
    fn default() -> Self {
        Self {
            max_prompt_bytes: 16 << 10,
            max_chat_messages: 64,
            max_samples_count: 512,
            max_new_tokens: 2048,
            max_resamples: 8,
            max_duration: Duration::from_secs(600),
            max_concurrent_requests: 16,
            max_message_bytes: 1 << 20,
        }
    }
}

/// A status with an ErrorInfo reason (and a BadRequest violation naming `field`).
fn status(code: Code, reason: &str, message: String, field: Option<&str>, metadata: &[(&str, &str)]) -> Status {
    let meta: std::collections::HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, meta);
    if let Some(f) = field {
        details.add_bad_request_violation(f, message.clone());
    }
    Status::with_error_details(code, message, details)
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    status(Code::InvalidArgument, "INVALID_FIELD", format!("{field}: {message}"), Some(field), &[])
}

/// Checks `v` in `[lo, hi]`, naming the field and the limit.
fn in_range(field: &str, v: i64, lo: i64, hi: i64, limit: &str) -> Result<usize, Status> {
    if v < lo || v > hi {
        let m = format!("{field}: must be in [{lo}, {hi}] ({limit}), got {v}");
        return Err(status(Code::InvalidArgument, "LIMIT_EXCEEDED", m, Some(field), &[]));
    }
    Ok(v as usize)
}

fn finite(field: &str, v: f64, min: f64, min_inclusive: bool) -> Result<f64, Status> {
    let ok = v.is_finite() && if min_inclusive { v >= min } else { v > min };
    if !ok {
        return Err(invalid(field, format!("must be finite and {} {min}, got {v}", if min_inclusive { ">=" } else { ">" })));
    }
    Ok(v)
}

/// The methods this server runs, and the wire value of each.
fn method_of(m: i32) -> Result<(Method, pb::Method), Status> {
    use pb::Method as M;
    let wire = M::try_from(m).map_err(|_| invalid("method", format!("unknown value {m}")))?;
    let method = match wire {
        M::Unspecified | M::InferenceGuard => Method::InferenceGuard,
        M::Base => Method::Base,
        M::BonLagrangian => Method::BonLagrangian,
        M::BonAugmented => Method::BonAugmented,
        M::BeamLagrangian => Method::BeamLagrangian,
        M::BeamAugmented => Method::BeamAugmented,
        M::Args => Method::Args,
        M::ArgsLagrangian => Method::ArgsLagrangian,
        M::ArgsCost => Method::ArgsCost,
        M::InferenceGuardCritic => Method::InferenceGuardCritic,
        M::Recontrol => Method::Recontrol,
        M::RecontrolLagrangian => Method::RecontrolLagrangian,
    };
    Ok((method, if wire == M::Unspecified { M::InferenceGuard } else { wire }))
}

/// The wire value of a method.
pub fn wire_method(m: Method) -> pb::Method {
    use pb::Method as M;
    match m {
        Method::InferenceGuard => M::InferenceGuard,
        Method::Base => M::Base,
        Method::BonLagrangian => M::BonLagrangian,
        Method::BonAugmented => M::BonAugmented,
        Method::BeamLagrangian => M::BeamLagrangian,
        Method::BeamAugmented => M::BeamAugmented,
        Method::Args => M::Args,
        Method::ArgsLagrangian => M::ArgsLagrangian,
        Method::ArgsCost => M::ArgsCost,
        Method::InferenceGuardCritic => M::InferenceGuardCritic,
        Method::Recontrol => M::Recontrol,
        Method::RecontrolLagrangian => M::RecontrolLagrangian,
    }
}

/// The wire value of a critic objective.
fn wire_objective(o: CriticObjective) -> pb::CriticObjective {
    match o {
        CriticObjective::Augmented => pb::CriticObjective::Augmented,
        CriticObjective::Reward => pb::CriticObjective::Reward,
        CriticObjective::Lagrangian => pb::CriticObjective::Lagrangian,
    }
}

/// Resolved parameters in wire form, every field set: a request that asks a
/// guard for exactly this search (e.g. the one run in-process).
pub fn search_params(p: &Params) -> pb::SearchParams {
    pb::SearchParams {
        samples_count: Some(p.samples as i32),
        beam_width: Some(p.beam_width as i32),
        chunk_tokens: Some(p.chunk_tokens as i32),
        max_new_tokens: Some(p.max_new_tokens as i32),
        max_resamples: Some(p.max_resamples as i32),
        resample_penalty: Some(p.resample_penalty),
        temperature: Some(p.temperature),
        top_p: Some(p.top_p),
        seed: Some(p.seed as i64),
        safety_budget: Some(p.safety_budget),
        unsafe_penalty: Some(p.unsafe_penalty),
        lagrange_lambda: Some(p.lagrange_lambda),
        args_top_k: Some(p.args_top_k as i32),
        args_weight: Some(p.args_weight),
        recontrol_steps: Some(p.recontrol_steps as i32),
        recontrol_step_size: Some(p.recontrol_step_size),
    }
}

/// Resolves and checks the parameters against the guard's and the policy's
/// limits; returns them with the wire form of what the method uses.
fn resolve_params(
    method: Method,
    given: &pb::SearchParams,
    limits: &GuardLimits,
    policy: &pb::PolicyLimits,
    critic: Option<&pb::CriticLimits>,
) -> Result<(Params, pb::SearchParams), Status> {
    use Method as M;
    let d = Params::default();
    let recontrol = matches!(method, M::Recontrol | M::RecontrolLagrangian);
    // RECONTROL draws from the chunked methods' random streams, chunk by chunk.
    let chunked = method.is_chunked() || recontrol;
    let guarded = matches!(method, M::InferenceGuard | M::InferenceGuardCritic);
    let searches = guarded || matches!(method, M::BeamAugmented | M::BeamLagrangian);
    let samples_used = searches || matches!(method, M::BonAugmented | M::BonLagrangian);
    let augmented = guarded || matches!(method, M::BonAugmented | M::BeamAugmented);
    let lagrangian = matches!(method, M::BonLagrangian | M::BeamLagrangian | M::ArgsLagrangian);
    let args = matches!(method, M::Args | M::ArgsLagrangian | M::ArgsCost);
    let mut p = d.clone();
    let mut used = pb::SearchParams::default();

    p.max_new_tokens =
        in_range("params.max_new_tokens", given.max_new_tokens.unwrap_or(d.max_new_tokens as i32) as i64, 1, limits.max_new_tokens as i64, "max_new_tokens")?;
    used.max_new_tokens = Some(p.max_new_tokens as i32);
    if samples_used {
        // Step one draws every sample from the prompt alone.
        let cap = (limits.max_samples_count as i32).min(policy.max_children_per_prefix).min(policy.max_candidates);
        let limit = format!("max_samples_count and the policy's max_children_per_prefix / max_candidates: {cap}");
        p.samples = in_range("params.samples_count", given.samples_count.unwrap_or(d.samples as i32) as i64, 1, cap as i64, &limit)?;
        used.samples_count = Some(p.samples as i32);
    }
    if searches {
        let default_k = (p.samples / 4).max(1) as i32;
        let cap = p.samples.min(policy.max_prefixes as usize);
        p.beam_width = in_range("params.beam_width", given.beam_width.unwrap_or(default_k) as i64, 1, cap as i64, "samples_count")?;
        used.beam_width = Some(p.beam_width as i32);
    }
    if chunked {
        p.chunk_tokens = in_range(
            "params.chunk_tokens",
            given.chunk_tokens.unwrap_or(d.chunk_tokens as i32) as i64,
            1,
            policy.max_chunk_tokens as i64,
            "the policy's max_chunk_tokens",
        )?;
        used.chunk_tokens = Some(p.chunk_tokens as i32);
        p.temperature = given.temperature.unwrap_or(d.temperature);
        if !(0.0..=100.0).contains(&p.temperature) {
            return Err(invalid("params.temperature", format!("must be in [0, 100], got {}", p.temperature)));
        }
        p.top_p = given.top_p.unwrap_or(d.top_p);
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err(invalid("params.top_p", format!("must be in (0, 1], got {}", p.top_p)));
        }
        p.seed = given.seed.map(|s| s as u64).unwrap_or_else(rand_seed);
        used.temperature = Some(p.temperature);
        used.top_p = Some(p.top_p);
        used.seed = Some(p.seed as i64);
    }
    if guarded {
        p.max_resamples =
            in_range("params.max_resamples", given.max_resamples.unwrap_or(d.max_resamples as i32) as i64, 0, limits.max_resamples as i64, "max_resamples")?;
        p.resample_penalty = finite("params.resample_penalty", given.resample_penalty.unwrap_or(d.resample_penalty) as f64, 0.0, true)? as f32;
        used.max_resamples = Some(p.max_resamples as i32);
        used.resample_penalty = Some(p.resample_penalty);
    }
    p.safety_budget = given.safety_budget.unwrap_or(d.safety_budget);
    if !p.safety_budget.is_finite() {
        return Err(invalid("params.safety_budget", format!("must be finite, got {}", p.safety_budget)));
    }
    used.safety_budget = Some(p.safety_budget);
    if augmented {
        p.unsafe_penalty = finite("params.unsafe_penalty", given.unsafe_penalty.unwrap_or(d.unsafe_penalty), 0.0, false)?;
        used.unsafe_penalty = Some(p.unsafe_penalty);
    }
    if lagrangian {
        p.lagrange_lambda = finite("params.lagrange_lambda", given.lagrange_lambda.unwrap_or(d.lagrange_lambda), 0.0, true)?;
        used.lagrange_lambda = Some(p.lagrange_lambda);
    }
    if args {
        p.args_top_k = in_range(
            "params.args_top_k",
            given.args_top_k.unwrap_or(d.args_top_k as i32) as i64,
            1,
            policy.max_top_k as i64,
            "the policy's max_top_k",
        )?;
        p.args_weight = finite("params.args_weight", given.args_weight.unwrap_or(d.args_weight), 0.0, true)?;
        used.args_top_k = Some(p.args_top_k as i32);
        used.args_weight = Some(p.args_weight);
    }
    if recontrol {
        let max_steps = critic.map_or(i32::MAX, |c| c.max_ascent_steps.max(0));
        p.recontrol_steps = in_range(
            "params.recontrol_steps",
            given.recontrol_steps.unwrap_or(d.recontrol_steps as i32) as i64,
            0,
            max_steps as i64,
            "the critic's max_ascent_steps",
        )?;
        p.recontrol_step_size = finite("params.recontrol_step_size", given.recontrol_step_size.unwrap_or(d.recontrol_step_size) as f64, 0.0, false)? as f32;
        used.recontrol_steps = Some(p.recontrol_steps as i32);
        used.recontrol_step_size = Some(p.recontrol_step_size);
    }
    Ok((p, used))
}

/// The prompt of a request: the text the scorers see (the last user message of a chat),
/// the messages the policy renders, and whether it came as a chat.
fn check_prompt(prompt: Option<pb::generate_request::Prompt>, limits: &GuardLimits) -> Result<(String, Vec<pb::ChatMessage>, bool), Status> {
    match prompt {
        None => Err(invalid("prompt", "set prompt_text or prompt_chat")),
        Some(pb::generate_request::Prompt::PromptText(t)) => {
            if t.trim().is_empty() {
                return Err(invalid("prompt_text", "must not be empty"));
            }
            if t.len() > limits.max_prompt_bytes {
                let m = format!("prompt_text: at most {} bytes (max_prompt_bytes), got {}", limits.max_prompt_bytes, t.len());
                return Err(status(Code::InvalidArgument, "LIMIT_EXCEEDED", m, Some("prompt_text"), &[]));
            }
            Ok((t.clone(), vec![pb::ChatMessage { role: "user".into(), content: t }], false))
        }
        Some(pb::generate_request::Prompt::PromptChat(c)) => {
            let field = "prompt_chat.messages";
            in_range(field, c.messages.len() as i64, 1, limits.max_chat_messages as i64, "max_chat_messages")?;
            let bytes: usize = c.messages.iter().map(|m| m.content.len()).sum();
            if bytes > limits.max_prompt_bytes {
                let m = format!("{field}: at most {} bytes in all (max_prompt_bytes), got {bytes}", limits.max_prompt_bytes);
                return Err(status(Code::InvalidArgument, "LIMIT_EXCEEDED", m, Some(field), &[]));
            }
            let last_user = c.messages.iter().rev().find(|m| m.role == "user").ok_or_else(|| invalid(field, "needs a message of role \"user\""))?;
            Ok((last_user.content.clone(), c.messages, true))
        }
    }
}

/// Every check of a request that needs no role call (the method, the prompt, the
/// parameters against the given role limits), as [`GuardServer`] makes them: for fuzzing
/// and for clients that want to check a request offline.
pub fn check_request(
    req: pb::GenerateRequest,
    limits: &GuardLimits,
    policy: &pb::PolicyLimits,
    critic: Option<&pb::CriticLimits>,
) -> Result<pb::SearchParams, Status> {
    let (method, _) = method_of(req.method)?;
    check_prompt(req.prompt, limits)?;
    let (_, used) = resolve_params(method, &req.params.unwrap_or_default(), limits, policy, critic)?;
    Ok(used)
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() >> 1 // non-negative as an int64
}

/// Everything a search needs, resolved before any generation starts.
struct Prepared {
    method: Method,
    wire_method: pb::Method,
    params: Params,
    used: pb::SearchParams,
    prompt: search::Prompt,
    policy: Arc<MeshPolicy>,
    roles: Roles,
    models: pb::ModelsUsed,
    names: RoleNames,
}

/// The guard's gRPC face. Cheap to clone.
#[derive(Clone)]
pub struct GuardServer {
    registry: Arc<Registry>,
    limits: GuardLimits,
    slots: Arc<Semaphore>,
}

impl GuardServer {
    /// Serves searches over the models of `registry` within `limits`.
    pub fn new(registry: Arc<Registry>, limits: GuardLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1)));
        Self { registry, limits, slots }
    }

    /// The deadline of a request: the client's or max_duration, the earlier.
    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let max = Instant::now() + self.limits.max_duration;
        ig_serve::deadline_of(req.metadata()).map_or(max, |d| d.min(max))
    }

    async fn prepare(&self, req: pb::GenerateRequest, deadline: Instant) -> Result<Prepared, Status> {
        let (method, wire_method) = method_of(req.method)?;
        let snapshot = self.registry.snapshot();
        let lookup = |role: EntryRole, field: &str, name: &str| -> Result<Arc<Entry>, Status> {
            snapshot.resolve(role, name).map_err(|e| match e {
                LookupError::NotFound(m) => {
                    status(Code::NotFound, "MODEL_NOT_FOUND", format!("{field}: {m}"), Some(field), &[("role", role.as_str()), ("model", name)])
                }
                LookupError::RoleMismatch(m) => {
                    let meta = [("model", name), ("expected", role.as_str())];
                    status(Code::FailedPrecondition, "MODEL_ROLE_MISMATCH", format!("{field}: {m}"), Some(field), &meta)
                }
            })
        };
        let policy_entry = lookup(EntryRole::Policy, "policy_model", &req.policy_model)?;
        let cost_entry = lookup(EntryRole::Cost, "cost_model", &req.cost_model)?;
        let reward_entry = lookup(EntryRole::Reward, "reward_model", &req.reward_model)?;
        let critic_entry = match method.critic_objective() {
            None => None,
            Some(objective) => Some(snapshot.resolve_critic(&req.critic, objective).map_err(|e| match e {
                LookupError::NotFound(m) => {
                    let meta = [("role", "critic"), ("model", req.critic.as_str()), ("objective", objective.as_str())];
                    status(Code::NotFound, "MODEL_NOT_FOUND", format!("critic: {m}"), Some("critic"), &meta)
                }
                LookupError::RoleMismatch(m) => {
                    let meta = [("model", req.critic.as_str()), ("expected", "critic")];
                    status(Code::FailedPrecondition, "MODEL_ROLE_MISMATCH", format!("critic: {m}"), Some("critic"), &meta)
                }
            })?),
        };
        let names = RoleNames::of(&policy_entry, &cost_entry, &reward_entry, critic_entry.as_deref());

        // The prompt, checked before any role call.
        let (scorer_prompt, messages, is_chat) = check_prompt(req.prompt, &self.limits)?;

        let meta = policy_meta(&policy_entry, deadline).await.map_err(|e| search_status(&search_error(RoleKind::Policy, e), &names))?;
        let limits = meta.info.limits.unwrap_or_default();
        let critic = match (&critic_entry, method.critic_objective()) {
            (Some(entry), Some(objective)) => Some((entry.clone(), critic_info(entry, objective, &meta.info, &names).await?)),
            _ => None,
        };
        let critic_limits = critic.as_ref().and_then(|(_, info)| info.limits);
        let (params, used) = resolve_params(method, &req.params.unwrap_or_default(), &self.limits, &limits, critic_limits.as_ref())?;
        let policy_model_id = meta.info.model_id.clone();
        let has_template = !meta.info.chat_template.is_empty();
        let policy = Arc::new(MeshPolicy::new(policy_entry.clone(), meta, deadline));
        let token_ids = if has_template {
            policy.render_chat(messages).await.map_err(|e| search_status(&search_error(RoleKind::Policy, e), &names))?.token_ids
        } else if is_chat {
            let m = "prompt_chat: the policy has no chat template; send prompt_text".to_string();
            return Err(status(Code::FailedPrecondition, "CHAT_TEMPLATE_MISSING", m, Some("prompt_chat"), &[]));
        } else {
            policy.tokenize(&scorer_prompt).await.map_err(|e| search_status(&search_error(RoleKind::Policy, e), &names))?
        };
        let context = limits.max_sequence_tokens.max(2) as usize;
        if token_ids.len() + 1 >= context {
            let field = if is_chat { "prompt_chat" } else { "prompt_text" };
            let m = format!("{field}: renders to {} tokens; the policy's context is {context} (max_sequence_tokens)", token_ids.len());
            return Err(status(Code::InvalidArgument, "LIMIT_EXCEEDED", m, Some(field), &[]));
        }

        let (cost_info, reward_info) = tokio::try_join!(
            scorer_info(&cost_entry, pb::ScorerRole::Cost, "cost_model", &names),
            scorer_info(&reward_entry, pb::ScorerRole::Reward, "reward_model", &names),
        )?;
        let mut roles = Roles::new(
            policy.clone(),
            Arc::new(MeshScorer::with_info(cost_entry.clone(), &cost_info, deadline)),
            Arc::new(MeshScorer::with_info(reward_entry.clone(), &reward_info, deadline)),
        );
        let mut critic_ref = None;
        if let Some((entry, info)) = critic {
            let max_items = info.limits.map_or(64, |l| l.max_items.max(1) as usize);
            roles = roles.with_critic(Arc::new(MeshCritic::new(entry.clone(), policy_model_id.clone(), max_items, deadline)));
            critic_ref = Some(pb::ModelRef { name: entry.name.clone(), model_id: info.model_id });
        }
        let models = pb::ModelsUsed {
            policy: Some(pb::ModelRef { name: policy_entry.name.clone(), model_id: policy_model_id }),
            cost: Some(pb::ModelRef { name: cost_entry.name.clone(), model_id: cost_info.model_id.clone() }),
            reward: Some(pb::ModelRef { name: reward_entry.name.clone(), model_id: reward_info.model_id.clone() }),
            critic: critic_ref,
        };
        let prompt = search::Prompt {
            text: scorer_prompt,
            token_ids,
            max_sequence_tokens: context,
            max_logit_biases: limits.max_logit_biases.max(0) as usize,
        };
        Ok(Prepared { method, wire_method, params, used, prompt, policy, roles, models, names })
    }

    /// Runs a prepared search, reporting steps to `progress`.
    async fn execute(
        &self,
        job: Prepared,
        started: Instant,
        progress: &(dyn Fn(Step) + Send + Sync),
    ) -> Result<pb::GenerationResult, Status> {
        let Prepared { method, wire_method, params, used, prompt, policy, roles, models, names } = job;
        let span = tracing::info_span!("search", method = method.name(), samples = params.samples, beam_width = params.beam_width);
        let outcome: Outcome =
            search::run(method, &params, &prompt, &roles, progress).instrument(span).await.map_err(|e| search_status(&e, &names))?;
        let text = policy
            .detokenize(outcome.token_ids.clone())
            .await
            .map_err(|e| search_status(&search_error(RoleKind::Policy, e), &names))?;
        let times = roles.times();
        let total = started.elapsed();
        metrics::histogram!("ig_guard_search_seconds", "method" => method.name()).record(total.as_secs_f64());
        metrics::counter!("ig_guard_searches_total", "method" => method.name(), "safe" => outcome.safe.to_string()).increment(1);
        tracing::info!(
            method = method.name(),
            safe = outcome.safe,
            reward = outcome.reward,
            cost = outcome.cost,
            steps = outcome.steps,
            generated_tokens = outcome.generated_tokens,
            total_ms = total.as_millis() as u64,
            "search done"
        );
        Ok(pb::GenerationResult {
            text,
            token_ids: outcome.token_ids,
            finish_reason: match outcome.finish {
                search::Finish::Stop => pb::FinishReason::Stop,
                _ => pb::FinishReason::Length,
            } as i32,
            reward: outcome.reward,
            cost: outcome.cost,
            z: outcome.z,
            min_z: outcome.min_z,
            safe: outcome.safe,
            step_count: outcome.steps as i32,
            candidate_count: outcome.candidates as i64,
            resample_round_count: outcome.resample_rounds as i32,
            generated_token_count: outcome.generated_tokens as i64,
            prompt_token_count: prompt.token_ids.len() as i32,
            timings: Some(pb::RoleTimings {
                policy_ns: times.policy.as_nanos() as i64,
                cost_ns: times.cost.as_nanos() as i64,
                reward_ns: times.reward.as_nanos() as i64,
                critic_ns: times.critic.as_nanos() as i64,
                total_ns: total.as_nanos() as i64,
            }),
            models: Some(models),
            method: wire_method as i32,
            params: Some(used),
        })
    }

    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            let m = format!("this replica runs {} searches at once (max_concurrent_requests); retry later or elsewhere", self.limits.max_concurrent_requests);
            status(Code::ResourceExhausted, "OVERLOADED", m, None, &[])
        })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &GuardLimits {
        &self.limits
    }

    /// Lists the registry's models.
    pub fn list(&self, role: pb::ModelRole) -> Vec<pb::RegisteredModel> {
        let snapshot = self.registry.snapshot();
        snapshot
            .entries
            .iter()
            .filter(|e| role == pb::ModelRole::Unspecified || model_role(e.role) == role)
            .map(|e| pb::RegisteredModel {
                name: e.name.clone(),
                role: model_role(e.role) as i32,
                registry_default: e.default,
                description: e.description.clone(),
                replica_count: e.replicas.len() as i32,
                ready_replica_count: e.ready_count() as i32,
                info: e.info().map(|i| match i {
                    RoleInfo::Policy(p) => pb::registered_model::Info::PolicyInfo(p),
                    RoleInfo::Scorer(s) => pb::registered_model::Info::ScorerInfo(s),
                    RoleInfo::Critic(c) => pb::registered_model::Info::CriticInfo(c),
                }),
            })
            .collect()
    }
}

fn model_role(r: EntryRole) -> pb::ModelRole {
    match r {
        EntryRole::Policy => pb::ModelRole::Policy,
        EntryRole::Cost => pb::ModelRole::Cost,
        EntryRole::Reward => pb::ModelRole::Reward,
        EntryRole::Critic => pb::ModelRole::Critic,
    }
}

/// The registry names of the models serving one request, for errors.
struct RoleNames {
    policy: String,
    cost: String,
    reward: String,
    critic: String,
}

impl RoleNames {
    fn of(policy: &Entry, cost: &Entry, reward: &Entry, critic: Option<&Entry>) -> Self {
        Self {
            policy: policy.name.clone(),
            cost: cost.name.clone(),
            reward: reward.name.clone(),
            critic: critic.map(|c| c.name.clone()).unwrap_or_default(),
        }
    }
}

fn search_error(role: RoleKind, error: RoleError) -> SearchError {
    SearchError { role, error }
}

/// Runs `work` until `deadline` (which already stops short of the client's,
/// so the client gets DEADLINE_EXCEEDED from us rather than CANCELLED from
/// the transport); dropping `work` cancels every role call in flight.
async fn until_deadline<T>(deadline: Instant, work: impl std::future::Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout_at(deadline.into(), work).await.unwrap_or_else(|_| Err(deadline_status()))
}

fn deadline_status() -> Status {
    status(Code::DeadlineExceeded, "DEADLINE_EXCEEDED", "the search did not finish before the request's deadline".into(), None, &[])
}

/// A role failure as the guard's status: UNAVAILABLE names the role and model.
fn search_status(e: &SearchError, names: &RoleNames) -> Status {
    let model = match e.role {
        RoleKind::Policy => &names.policy,
        RoleKind::Cost => &names.cost,
        RoleKind::Reward => &names.reward,
        RoleKind::Critic => &names.critic,
    };
    let meta = [("role", e.role.as_str()), ("model", model.as_str())];
    let m = e.to_string();
    match &e.error {
        RoleError::Unavailable(_) => status(Code::Unavailable, "ROLE_UNAVAILABLE", m, None, &meta),
        RoleError::Overloaded(_) => status(Code::ResourceExhausted, "OVERLOADED", m, None, &meta),
        RoleError::DeadlineExceeded(_) => deadline_status(),
        RoleError::Cancelled => status(Code::Cancelled, "CANCELLED", m, None, &meta),
        RoleError::InvalidArgument { .. } | RoleError::FailedPrecondition(_) => {
            status(Code::FailedPrecondition, "ROLE_REFUSED", m, None, &meta)
        }
        RoleError::Internal(_) => {
            tracing::error!(error = %m, "role failure");
            status(Code::Internal, "ROLE_ERROR", m, None, &meta)
        }
    }
}

/// A scorer's Info (cached by the health loop, else fetched), checked for its role.
async fn scorer_info(entry: &Arc<Entry>, want: pb::ScorerRole, field: &str, names: &RoleNames) -> Result<pb::ScorerInfoResponse, Status> {
    let role = if want == pb::ScorerRole::Cost { RoleKind::Cost } else { RoleKind::Reward };
    let RoleInfo::Scorer(info) = role_info(entry, role, names).await? else {
        return Err(Status::internal(format!("{field}: {:?} did not answer as a scorer", entry.name)));
    };
    if info.role() != want {
        let m = format!(
            "{field}: {:?} is registered as a {} model but its scorer ({}) says {}",
            entry.name,
            entry.role.as_str(),
            info.model_id,
            info.role().as_str_name()
        );
        let meta = [("model", entry.name.as_str()), ("expected", want.as_str_name()), ("actual", info.role().as_str_name())];
        return Err(status(Code::FailedPrecondition, "MODEL_ROLE_MISMATCH", m, Some(field), &meta));
    }
    Ok(info)
}

/// A replica's Info, cached by the health loop or else fetched now.
async fn role_info(entry: &Arc<Entry>, role: RoleKind, names: &RoleNames) -> Result<RoleInfo, Status> {
    if let Some(info) = entry.info() {
        return Ok(info);
    }
    crate::mesh::with_failover(entry, entry.replicas_to_try(), |r| async move {
        let info = fetch_info(entry.role, &r).await?;
        r.set_info(info.clone());
        Ok(info)
    })
    .await
    .map_err(|e| search_status(&search_error(role, e), names))
}

/// A critic's Info, checked against the method's objective and the policy
/// whose latents it will read.
async fn critic_info(
    entry: &Arc<Entry>,
    want: CriticObjective,
    policy: &pb::PolicyInfoResponse,
    names: &RoleNames,
) -> Result<pb::CriticInfoResponse, Status> {
    let RoleInfo::Critic(info) = role_info(entry, RoleKind::Critic, names).await? else {
        return Err(Status::internal(format!("critic: {:?} did not answer as a critic", entry.name)));
    };
    let refuse = |reason: &str, m: String, meta: &[(&str, &str)]| Err(status(Code::FailedPrecondition, reason, format!("critic: {m}"), Some("critic"), meta));
    let wanted = wire_objective(want);
    if info.objective() != wanted {
        let m = format!(
            "{:?} ({}) was trained for {}, the method needs {}",
            entry.name,
            info.model_id,
            info.objective().as_str_name(),
            wanted.as_str_name()
        );
        return refuse("CRITIC_OBJECTIVE_MISMATCH", m, &[("model", &entry.name), ("expected", wanted.as_str_name()), ("actual", info.objective().as_str_name())]);
    }
    if info.policy_model_id != policy.model_id {
        let m = format!("{:?} was trained on the latents of policy_model_id {:?}, not of {:?}", entry.name, info.policy_model_id, policy.model_id);
        return refuse("POLICY_MISMATCH", m, &[("model", &entry.name), ("expected", &policy.model_id), ("actual", &info.policy_model_id)]);
    }
    if info.latent_dim != policy.latent_dim {
        let m = format!("{:?} reads latents of latent_dim {}, the policy's are {}", entry.name, info.latent_dim, policy.latent_dim);
        return refuse("LATENT_DIM_MISMATCH", m, &[("model", &entry.name)]);
    }
    Ok(info)
}

fn from_stream_request(r: pb::GenerateStreamRequest) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: r.prompt.map(|p| match p {
            pb::generate_stream_request::Prompt::PromptText(t) => pb::generate_request::Prompt::PromptText(t),
            pb::generate_stream_request::Prompt::PromptChat(c) => pb::generate_request::Prompt::PromptChat(c),
        }),
        method: r.method,
        params: r.params,
        policy_model: r.policy_model,
        cost_model: r.cost_model,
        reward_model: r.reward_model,
        critic: r.critic,
    }
}

fn step_event(s: Step, started: Instant) -> pb::StepEvent {
    pb::StepEvent {
        step_index: s.index as i32,
        candidate_count: s.candidates as i32,
        safe_fraction: s.safe_fraction,
        best_score: s.best_score,
        best_z: s.best_z,
        resample_round_count: s.resample_rounds as i32,
        response_token_count: s.response_tokens as i32,
        generated_token_count: s.generated_tokens as i64,
        live_beam_count: s.live_beams as i32,
        finished_beam_count: s.finished_beams as i32,
        elapsed_ns: started.elapsed().as_nanos() as i64,
    }
}

/// Progress events a `GenerateStream` buffers for a slow reader; later ones are dropped.
const STREAM_EVENTS: usize = 64;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GuardService for GuardServer {
    async fn info(&self, _: Request<pb::GuardInfoRequest>) -> Result<Response<pb::GuardInfoResponse>, Status> {
        let l = &self.limits;
        Ok(Response::new(pb::GuardInfoResponse {
            server_version: env!("CARGO_PKG_VERSION").into(),
            methods: Method::ALL.iter().map(|&m| wire_method(m) as i32).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
            limits: Some(pb::GuardLimits {
                max_prompt_bytes: l.max_prompt_bytes as i32,
                max_chat_messages: l.max_chat_messages as i32,
                max_samples_count: l.max_samples_count as i32,
                max_new_tokens: l.max_new_tokens as i32,
                max_resamples: l.max_resamples as i32,
                max_duration_ns: l.max_duration.as_nanos() as i64,
                max_concurrent_requests: l.max_concurrent_requests as i32,
                max_message_bytes: l.max_message_bytes as i32,
            }),
        }))
    }

    async fn list_models(&self, req: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsResponse>, Status> {
        let role = pb::ModelRole::try_from(req.get_ref().role).map_err(|_| invalid("role", format!("unknown value {}", req.get_ref().role)))?;
        Ok(Response::new(pb::ListModelsResponse { models: self.list(role) }))
    }

    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        let started = Instant::now();
        let deadline = self.deadline(&req);
        let _slot = self.admit()?;
        let result = until_deadline(deadline, async {
            let job = self.prepare(req.into_inner(), deadline).await?;
            self.execute(job, started, &|_| {}).await
        })
        .await?;
        Ok(Response::new(pb::GenerateResponse { result: Some(result) }))
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(&self, req: Request<pb::GenerateStreamRequest>) -> Result<Response<EventStream>, Status> {
        let started = Instant::now();
        let deadline = self.deadline(&req);
        let slot = self.admit()?;
        let job = until_deadline(deadline, self.prepare(from_stream_request(req.into_inner()), deadline)).await?;
        // One slot more than the progress events may take: the result always has room.
        let (tx, rx) = mpsc::channel::<Result<pb::GenerateStreamResponse, Status>>(STREAM_EVENTS + 1);
        let this = self.clone();
        tokio::spawn(async move {
            let events = tx.clone();
            let progress = move |s: Step| {
                // A slow reader loses progress events, never the result.
                if events.capacity() > 1 {
                    let msg = pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Step(step_event(s, started))) };
                    let _ = events.try_send(Ok(msg));
                }
            };
            let work = until_deadline(deadline, this.execute(job, started, &progress));
            // A panic in a search is a bug; the client hears INTERNAL, not a stream that ends OK.
            let work = std::panic::AssertUnwindSafe(work).catch_unwind();
            tokio::select! {
                // The client went away: dropping the search cancels every role call in flight.
                _ = tx.closed() => tracing::info!("client cancelled the search"),
                r = work => {
                    // The search is over: its admission slot goes back before the client
                    // reads (or never reads) the result.
                    drop(slot);
                    let r = r.unwrap_or_else(|_| {
                        tracing::error!("a search panicked");
                        Err(status(Code::Internal, "INTERNAL", "the search failed unexpectedly (a bug; see the orchestrator's log)".into(), None, &[]))
                    });
                    let msg = r.map(|result| pb::GenerateStreamResponse { event: Some(pb::generate_stream_response::Event::Result(result)) });
                    if tx.try_send(msg).is_err() {
                        tracing::info!("the client left before the result");
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_limits() -> pb::PolicyLimits {
        pb::PolicyLimits {
            max_sequence_tokens: 2048,
            max_prefixes: 64,
            max_children_per_prefix: 256,
            max_candidates: 256,
            max_chunk_tokens: 64,
            max_top_k: 50,
            max_logit_biases: 1024,
            max_text_bytes: 1 << 16,
            max_message_bytes: 1 << 22,
        }
    }

    fn critic_limits() -> pb::CriticLimits {
        pb::CriticLimits { max_items: 64, max_ascent_steps: 100, max_message_bytes: 1 << 22 }
    }

    #[test]
    fn defaults_resolve_and_unused_fields_stay_unset() {
        let (p, used) = resolve_params(Method::InferenceGuard, &pb::SearchParams::default(), &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
        assert_eq!((p.samples, p.beam_width, p.chunk_tokens, p.max_new_tokens, p.max_resamples), (128, 32, 32, 128, 2));
        assert!(used.seed.is_some() && used.args_top_k.is_none() && used.lagrange_lambda.is_none());
        let given = pb::SearchParams { samples_count: Some(10), ..Default::default() };
        let (p, _) = resolve_params(Method::BeamAugmented, &given, &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
        assert_eq!(p.beam_width, 2);
        let (_, used) = resolve_params(Method::Args, &given, &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
        assert!(used.samples_count.is_none() && used.args_top_k == Some(20) && used.seed.is_none());
    }

    #[test]
    fn wire_params_resolve_to_themselves() {
        let p = Params { samples: 16, beam_width: 3, chunk_tokens: 8, max_new_tokens: 24, seed: 9, ..Params::default() };
        for method in Method::ALL {
            let (resolved, _) = resolve_params(method, &search_params(&p), &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
            let (used, _) = resolve_params(method, &search_params(&resolved), &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
            assert_eq!(resolved, used, "{method:?}");
        }
        let (resolved, _) = resolve_params(Method::InferenceGuard, &search_params(&p), &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
        assert_eq!(resolved, p);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let limits = GuardLimits::default();
        let cases: Vec<(Method, pb::SearchParams, &str)> = vec![
            (Method::InferenceGuard, pb::SearchParams { samples_count: Some(4), beam_width: Some(5), ..Default::default() }, "params.beam_width"),
            (Method::InferenceGuard, pb::SearchParams { chunk_tokens: Some(0), ..Default::default() }, "params.chunk_tokens"),
            (Method::InferenceGuard, pb::SearchParams { chunk_tokens: Some(65), ..Default::default() }, "params.chunk_tokens"),
            (Method::BonAugmented, pb::SearchParams { samples_count: Some(257), ..Default::default() }, "params.samples_count"),
            (Method::Base, pb::SearchParams { max_new_tokens: Some(0), ..Default::default() }, "params.max_new_tokens"),
            (Method::Base, pb::SearchParams { temperature: Some(-1.0), ..Default::default() }, "params.temperature"),
            (Method::Base, pb::SearchParams { top_p: Some(0.0), ..Default::default() }, "params.top_p"),
            (Method::InferenceGuard, pb::SearchParams { max_resamples: Some(9), ..Default::default() }, "params.max_resamples"),
            (Method::InferenceGuard, pb::SearchParams { unsafe_penalty: Some(0.0), ..Default::default() }, "params.unsafe_penalty"),
            (Method::BonLagrangian, pb::SearchParams { lagrange_lambda: Some(f64::NAN), ..Default::default() }, "params.lagrange_lambda"),
            (Method::Args, pb::SearchParams { args_top_k: Some(51), ..Default::default() }, "params.args_top_k"),
            (Method::Base, pb::SearchParams { safety_budget: Some(f64::INFINITY), ..Default::default() }, "params.safety_budget"),
            (Method::Recontrol, pb::SearchParams { recontrol_steps: Some(101), ..Default::default() }, "params.recontrol_steps"),
            (Method::RecontrolLagrangian, pb::SearchParams { recontrol_step_size: Some(0.0), ..Default::default() }, "params.recontrol_step_size"),
            (Method::InferenceGuardCritic, pb::SearchParams { max_resamples: Some(9), ..Default::default() }, "params.max_resamples"),
        ];
        for (method, given, field) in cases {
            let err = resolve_params(method, &given, &limits, &policy_limits(), Some(&critic_limits())).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}");
            assert!(err.message().starts_with(&format!("{field}: ")), "{} should name {field}", err.message());
        }
        // A parameter the method does not use is not checked.
        let ignored = pb::SearchParams { args_top_k: Some(0), ..Default::default() };
        assert!(resolve_params(Method::Base, &ignored, &limits, &policy_limits(), Some(&critic_limits())).is_ok());
    }

    #[test]
    fn every_wire_method_maps_and_unknown_ones_are_invalid() {
        for m in Method::ALL {
            assert_eq!(method_of(wire_method(m) as i32).unwrap().0, m);
        }
        assert_eq!(method_of(99).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(method_of(0).unwrap().0, Method::InferenceGuard);
    }

    #[test]
    fn recontrol_defaults_to_the_papers_ascent() {
        let (p, used) = resolve_params(Method::Recontrol, &pb::SearchParams::default(), &GuardLimits::default(), &policy_limits(), Some(&critic_limits())).unwrap();
        assert_eq!((p.recontrol_steps, p.recontrol_step_size), (30, 0.5));
        assert!(used.recontrol_steps.is_some() && used.seed.is_some() && used.samples_count.is_none());
    }
}
