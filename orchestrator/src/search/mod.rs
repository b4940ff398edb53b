//! The search strategies: InferenceGuard and the paper's baselines.
//!
//! Plain async Rust over the role traits of [`roles`]: no gRPC, no candle.
//! [`run`] takes a method, resolved parameters, the rendered prompt and the
//! roles of one request, reports each step through a callback and returns the
//! chosen response with its scores. The definitions follow the project's
//! algorithm notes (`docs/search.md`).

mod args;
mod chunked;
mod recontrol;
pub mod roles;

pub use ig_core::critic::CriticObjective;
pub use roles::{
    Chunk, ChunkStream, CriticPoint, CriticRole, Decoded, ExtendCall, ExtendPrefix, Finish, LatentStep, NextToken, PolicyRole,
    RoleKind, RoleTimes, Roles, ScorerRole, SearchError,
};

/// A search strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Chunked beam search on the augmented objective with resampling; safe
    /// candidates ranked by the reward model.
    InferenceGuard,
    /// InferenceGuard with safe candidates ranked by the critic `V(h, z)`.
    InferenceGuardCritic,
    /// One sample.
    Base,
    /// Best-of-N by `R - λC`.
    BonLagrangian,
    /// Best-of-N by the augmented objective.
    BonAugmented,
    /// Chunked beam search by `R - λC`.
    BeamLagrangian,
    /// Chunked beam search by the augmented objective, no resampling.
    BeamAugmented,
    /// Per token: top-k by `logit + ω·R`, greedy.
    Args,
    /// Per token: `logit + ω·(R - λC)`.
    ArgsLagrangian,
    /// Per token: `logit - ω·C`.
    ArgsCost,
    /// Per token: the latent moved uphill on a reward critic, then sampled.
    Recontrol,
    /// RECONTROL on a critic of `R - λC`.
    RecontrolLagrangian,
}

impl Method {
    /// Every method this module runs.
    pub const ALL: [Method; 12] = [
        Method::InferenceGuard,
        Method::InferenceGuardCritic,
        Method::Base,
        Method::BonLagrangian,
        Method::BonAugmented,
        Method::BeamLagrangian,
        Method::BeamAugmented,
        Method::Args,
        Method::ArgsLagrangian,
        Method::ArgsCost,
        Method::Recontrol,
        Method::RecontrolLagrangian,
    ];

    /// The snake-case name used on the command line and in docs.
    pub fn name(self) -> &'static str {
        match self {
            Method::InferenceGuard => "inference_guard",
            Method::InferenceGuardCritic => "inference_guard_critic",
            Method::Base => "base",
            Method::BonLagrangian => "bon_lagrangian",
            Method::BonAugmented => "bon_augmented",
            Method::BeamLagrangian => "beam_lagrangian",
            Method::BeamAugmented => "beam_augmented",
            Method::Args => "args",
            Method::ArgsLagrangian => "args_lagrangian",
            Method::ArgsCost => "args_cost",
            Method::Recontrol => "recontrol",
            Method::RecontrolLagrangian => "recontrol_lagrangian",
        }
    }

    /// Whether the method generates in chunks (else token by token: ARGS, RECONTROL).
    pub fn is_chunked(self) -> bool {
        !matches!(self, Method::Args | Method::ArgsLagrangian | Method::ArgsCost | Method::Recontrol | Method::RecontrolLagrangian)
    }

    /// What the critic the method needs was trained to predict, if it needs one.
    pub fn critic_objective(self) -> Option<CriticObjective> {
        match self {
            Method::InferenceGuardCritic => Some(CriticObjective::Augmented),
            Method::Recontrol => Some(CriticObjective::Reward),
            Method::RecontrolLagrangian => Some(CriticObjective::Lagrangian),
            _ => None,
        }
    }
}



/// The parameters of a search, every default resolved. Names in brackets
/// are the paper's.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Candidates per step [N]; Best-of-N's sample count.
    pub samples: usize,
    /// Beams kept per step [K].
    pub beam_width: usize,
    /// Tokens per chunk [d].
    pub chunk_tokens: usize,
    /// Most response tokens [D].
    pub max_new_tokens: usize,
    /// Most resampling rounds per step [M].
    pub max_resamples: usize,
    /// Logit bias β per resampling round.
    pub resample_penalty: f32,
    /// Softmax temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus threshold.
    pub top_p: f32,
    /// Root of every random draw.
    pub seed: u64,
    /// Budget B: safe when `C <= B`; `z = B - C`.
    pub safety_budget: f64,
    /// η: an unsafe candidate scores `-η + z`.
    pub unsafe_penalty: f64,
    /// λ of `R - λC`.
    pub lagrange_lambda: f64,
    /// Tokens ARGS considers per step.
    pub args_top_k: usize,
    /// ω of ARGS.
    pub args_weight: f64,
    /// Gradient-ascent steps on the latent per token (RECONTROL).
    pub recontrol_steps: usize,
    /// Step size of RECONTROL's ascent.
    pub recontrol_step_size: f32,
}

impl Default for Params {
    /// The defaults of the algorithm notes (the paper's Table 1 where it has them).
    fn default() -> Self {
        Self {
            samples: 128,
            beam_width: 32,
            chunk_tokens: 32,
            max_new_tokens: 128,
            max_resamples: 2,
            resample_penalty: 10.0,
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
            safety_budget: 0.0,
            unsafe_penalty: 1e4,
            lagrange_lambda: 5.0,
            args_top_k: 20,
            args_weight: 2.5,
            recontrol_steps: 30,
            recontrol_step_size: 0.5,
        }
    }
}

/// The prompt of one request, as the roles need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// What the score models read as the prompt.
    pub text: String,
    /// The rendered prompt in the policy's vocabulary.
    pub token_ids: Vec<i32>,
    /// The policy's context: sequences stop at this many tokens.
    pub max_sequence_tokens: usize,
    /// Most logit biases the policy takes per prefix (resampling keeps the
    /// strongest).
    pub max_logit_biases: usize,
}

/// Progress after one search step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// From 0.
    pub index: usize,
    /// Candidates generated in this step, resampled ones included.
    pub candidates: usize,
    /// Safe fraction of the last round's candidates, when their cost was scored.
    pub safe_fraction: Option<f64>,
    /// Best score among the kept beams, when the step ranked anything.
    pub best_score: Option<f64>,
    /// `z` of the best beam, when known.
    pub best_z: Option<f64>,
    /// Resampling rounds in this step.
    pub resample_rounds: usize,
    /// Tokens of the best beam.
    pub response_tokens: usize,
    /// Tokens generated so far over the whole search.
    pub generated_tokens: u64,
    /// Beams still open.
    pub live_beams: usize,
    /// Beams finished and kept.
    pub finished_beams: usize,
}

/// The chosen response and what the search did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Response token ids (a final stop token included).
    pub token_ids: Vec<i32>,
    /// Response text as the scorers read it.
    pub text: String,
    /// [`Finish::Stop`] or [`Finish::Length`].
    pub finish: Finish,
    /// `R(x, y)`.
    pub reward: f64,
    /// `C(x, y)`.
    pub cost: f64,
    /// `B - C(x, y)`.
    pub z: f64,
    /// Smallest `z` along the response's steps (`z` when only the end was scored).
    pub min_z: f64,
    /// `C <= B`.
    pub safe: bool,
    /// Steps run.
    pub steps: usize,
    /// Candidates generated.
    pub candidates: u64,
    /// Resampling rounds.
    pub resample_rounds: usize,
    /// Tokens generated over all candidates.
    pub generated_tokens: u64,
}

/// Runs `method` for `prompt` on `roles`, calling `progress` after each step.
pub async fn run(
    method: Method,
    params: &Params,
    prompt: &Prompt,
    roles: &Roles,
    progress: &(dyn Fn(Step) + Send + Sync),
) -> Result<Outcome, SearchError> {
    match method {
        Method::Recontrol | Method::RecontrolLagrangian => recontrol::run(params, prompt, roles, progress).await,
        Method::Args | Method::ArgsLagrangian | Method::ArgsCost => args::run(method, params, prompt, roles, progress).await,
        _ => chunked::run(method, params, prompt, roles, progress).await,
    }
}

/// A well-mixed 64-bit value of the inputs (SplitMix64 steps), for seeds
/// derived from the request's seed.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        x ^= p;
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

#[cfg(test)]
pub(crate) mod synthetic;
