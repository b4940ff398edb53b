//! What a search needs from the roles, as small traits over plain types.
//!
//! The gRPC implementations live in [`crate::mesh`]; unit tests implement the
//! traits with synthetic roles. [`Roles`] wraps the three role objects of one
//! request: it tags failures with the role and measures the time each role
//! was busy with this request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use ig_core::RoleError;

/// A role of the mesh, as failures and timings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleKind {
    /// The policy LM.
    Policy,
    /// The cost model.
    Cost,
    /// The reward model.
    Reward,
    /// The critic V(h, z).
    Critic,
}

impl RoleKind {
    /// Lower-case name: `policy`, `cost`, `reward`, `critic`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Policy => "policy",
            RoleKind::Cost => "cost",
            RoleKind::Reward => "reward",
            RoleKind::Critic => "critic",
        }
    }
}

/// A role call failed; the search stops with it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{} model: {error}", role.as_str())]
pub struct SearchError {
    /// The role that failed.
    pub role: RoleKind,
    /// What it reported.
    pub error: RoleError,
}

/// Why a sequence stopped growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It may be extended again.
    Open,
    /// A stop token ended it (the token is the last id).
    Stop,
    /// It reached `max_new_tokens` or the policy's context.
    Length,
}

/// One prefix of an extension call.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendPrefix {
    /// Prompt plus response so far.
    pub token_ids: Vec<i32>,
    /// Children to draw.
    pub children: usize,
    /// `(token id, bias)` added to the logits at every step.
    pub biases: Vec<(i32, f32)>,
    /// Seed of this prefix's children: draws do not depend on batching.
    pub seed: u64,
}

/// One chunk extension of several prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendCall {
    /// The prefixes.
    pub prefixes: Vec<ExtendPrefix>,
    /// Tokens per child.
    pub chunk_tokens: usize,
    /// Softmax temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus threshold.
    pub top_p: f32,
    /// A sequence stops with [`Finish::Length`] at this many tokens.
    pub max_sequence_tokens: usize,
    /// Whether each chunk comes with its latent (for the critic).
    pub with_latents: bool,
}

/// One child drawn by the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Index of its prefix in [`ExtendCall::prefixes`].
    pub prefix: usize,
    /// Index among the prefix's children.
    pub child: usize,
    /// The new token ids (a final stop token included).
    pub token_ids: Vec<i32>,
    /// Text of the new tokens, without a final stop token's text.
    pub text: String,
    /// Whether it can be extended again.
    pub finish: Finish,
    /// The policy's latent at its last token, when the call asked for it.
    pub latent: Option<Vec<f32>>,
}

/// One sequence to extend by a token drawn from the LM head applied to a
/// (critic-edited) latent: RECONTROL's decoding step.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentStep {
    /// Prompt plus response so far.
    pub token_ids: Vec<i32>,
    /// The latent at its last position, edited.
    pub latent: Vec<f32>,
    /// Seed of the draw; with `draw_index`, the draw equals the one an
    /// extension with this per-prefix seed makes for child 0 at that token
    /// of the chunk, so an unedited latent reproduces chunked sampling.
    pub seed: u64,
    /// Position of the draw in the seed's random stream.
    pub draw_index: usize,
}

/// The token drawn for one [`LatentStep`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Its id.
    pub token_id: i32,
    /// Its text (empty for a stop token).
    pub text: String,
    /// [`Finish::Open`] unless it is a stop token or fills the context.
    pub finish: Finish,
    /// The latent of the extended sequence (none once it finished).
    pub next_latent: Option<Vec<f32>>,
}

/// A critic's input: a latent and the safety state `z` (unscaled).
pub type CriticPoint = (Vec<f32>, f64);

/// One of the top next tokens of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct NextToken {
    /// Its id.
    pub token_id: i32,
    /// Its logit.
    pub logit: f32,
    /// Its text (empty for a stop token).
    pub text: String,
}

impl NextToken {
    /// Pairs a policy's top-k answer for one sequence (ids, logits, texts;
    /// texts may be missing), blanking the text of stop tokens.
    pub fn zip_answer(ids: impl IntoIterator<Item = i32>, logits: &[f32], texts: &[String], is_stop: impl Fn(i32) -> bool) -> Vec<Self> {
        ids.into_iter()
            .zip(logits)
            .zip(texts.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|((token_id, &logit), text)| {
                let text = if is_stop(token_id) { String::new() } else { text.cloned().unwrap_or_default() };
                NextToken { token_id, logit, text }
            })
            .collect()
    }
}

/// Chunks as the policy finishes them, in batches.
pub type ChunkStream = BoxStream<'static, Result<Vec<Chunk>, RoleError>>;

/// The policy LM.
#[async_trait]
pub trait PolicyRole: Send + Sync {
    /// Extends every prefix by one chunk; chunks stream back as they finish.
    fn extend(&self, call: ExtendCall) -> ChunkStream;
    /// The `k` next tokens of highest logit of each sequence, best first.
    async fn top_k_next(&self, sequences: Vec<Vec<i32>>, k: usize) -> Result<Vec<Vec<NextToken>>, RoleError>;
    /// Whether `token_id` ends a sequence.
    fn is_stop(&self, token_id: i32) -> bool;
    /// The latent at the last position of each sequence.
    async fn latents(&self, sequences: Vec<Vec<i32>>) -> Result<Vec<Vec<f32>>, RoleError>;
    /// One token per step from the LM head applied to the step's latent,
    /// sampled with `temperature` and `top_p`, and the next latent.
    async fn decode_from_latents(&self, steps: Vec<LatentStep>, temperature: f32, top_p: f32) -> Result<Vec<Decoded>, RoleError>;
}

/// A critic `V(h, z)`.
#[async_trait]
pub trait CriticRole: Send + Sync {
    /// `V` at each point, in order.
    async fn evaluate(&self, points: Vec<CriticPoint>) -> Result<Vec<f64>, RoleError>;
    /// Each latent moved `steps` times by `step_size · dV/dh` (z fixed).
    async fn ascend(&self, points: Vec<CriticPoint>, steps: usize, step_size: f32) -> Result<Vec<Vec<f32>>, RoleError>;
}

/// A cost or reward model.
#[async_trait]
pub trait ScorerRole: Send + Sync {
    /// The score of each (prompt, response), in order.
    async fn score(&self, prompt: &str, responses: Vec<String>) -> Result<Vec<f64>, RoleError>;
}

/// Wall time during which at least one call to a role was in flight.
#[derive(Debug, Default)]
struct BusyClock {
    state: Mutex<(usize, Option<Instant>, Duration)>,
}

impl BusyClock {
    fn enter(self: &Arc<Self>) -> BusyToken {
        let mut s = self.state.lock().expect("clock lock");
        if s.0 == 0 {
            s.1 = Some(Instant::now());
        }
        s.0 += 1;
        BusyToken(self.clone())
    }

    fn total(&self) -> Duration {
        let s = self.state.lock().expect("clock lock");
        s.2 + s.1.filter(|_| s.0 > 0).map_or(Duration::ZERO, |t| t.elapsed())
    }
}

struct BusyToken(Arc<BusyClock>);

impl Drop for BusyToken {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("clock lock");
        s.0 -= 1;
        if s.0 == 0 {
            if let Some(t) = s.1.take() {
                s.2 += t.elapsed();
            }
        }
    }
}

/// Time each role spent on one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoleTimes {
    /// In policy calls.
    pub policy: Duration,
    /// In cost model calls.
    pub cost: Duration,
    /// In reward model calls.
    pub reward: Duration,
    /// In critic calls.
    pub critic: Duration,
}

/// The roles serving one request.
pub struct Roles {
    policy: Arc<dyn PolicyRole>,
    cost: Arc<dyn ScorerRole>,
    reward: Arc<dyn ScorerRole>,
    critic: Option<Arc<dyn CriticRole>>,
    clocks: [Arc<BusyClock>; 4],
}

impl Roles {
    /// The roles of one request.
    pub fn new(policy: Arc<dyn PolicyRole>, cost: Arc<dyn ScorerRole>, reward: Arc<dyn ScorerRole>) -> Self {
        Self { policy, cost, reward, critic: None, clocks: Default::default() }
    }

    /// Adds the critic the request's method needs.
    pub fn with_critic(mut self, critic: Arc<dyn CriticRole>) -> Self {
        self.critic = Some(critic);
        self
    }

    /// Time spent in each role so far.
    pub fn times(&self) -> RoleTimes {
        let [policy, cost, reward, critic] = self.clocks.each_ref().map(|c| c.total());
        RoleTimes { policy, cost, reward, critic }
    }

    pub(crate) fn extend(&self, call: ExtendCall) -> BoxStream<'static, Result<Vec<Chunk>, SearchError>> {
        let busy = self.clocks[0].enter();
        self.policy
            .extend(call)
            .map(move |r| {
                let _busy = &busy;
                r.map_err(|error| SearchError { role: RoleKind::Policy, error })
            })
            .boxed()
    }

    pub(crate) async fn top_k_next(&self, sequences: Vec<Vec<i32>>, k: usize) -> Result<Vec<Vec<NextToken>>, SearchError> {
        let _busy = self.clocks[0].enter();
        self.policy.top_k_next(sequences, k).await.map_err(|error| SearchError { role: RoleKind::Policy, error })
    }

    pub(crate) fn is_stop(&self, token_id: i32) -> bool {
        self.policy.is_stop(token_id)
    }

    pub(crate) async fn latents(&self, sequences: Vec<Vec<i32>>) -> Result<Vec<Vec<f32>>, SearchError> {
        let _busy = self.clocks[0].enter();
        let n = sequences.len();
        let latents = self.policy.latents(sequences).await.map_err(|error| SearchError { role: RoleKind::Policy, error })?;
        expect_len(RoleKind::Policy, n, latents)
    }

    pub(crate) async fn decode_from_latents(&self, steps: Vec<LatentStep>, temperature: f32, top_p: f32) -> Result<Vec<Decoded>, SearchError> {
        let _busy = self.clocks[0].enter();
        let n = steps.len();
        let decoded =
            self.policy.decode_from_latents(steps, temperature, top_p).await.map_err(|error| SearchError { role: RoleKind::Policy, error })?;
        expect_len(RoleKind::Policy, n, decoded)
    }

    fn critic(&self) -> Result<&Arc<dyn CriticRole>, SearchError> {
        self.critic.as_ref().ok_or_else(|| SearchError {
            role: RoleKind::Critic,
            error: RoleError::FailedPrecondition("this method needs a critic and none was given".into()),
        })
    }

    pub(crate) async fn evaluate(&self, points: Vec<CriticPoint>) -> Result<Vec<f64>, SearchError> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let critic = self.critic()?;
        let _busy = self.clocks[3].enter();
        let n = points.len();
        let values = critic.evaluate(points).await.map_err(|error| SearchError { role: RoleKind::Critic, error })?;
        expect_len(RoleKind::Critic, n, values)
    }

    pub(crate) async fn ascend(&self, points: Vec<CriticPoint>, steps: usize, step_size: f32) -> Result<Vec<Vec<f32>>, SearchError> {
        let critic = self.critic()?;
        let _busy = self.clocks[3].enter();
        let n = points.len();
        let moved = critic.ascend(points, steps, step_size).await.map_err(|error| SearchError { role: RoleKind::Critic, error })?;
        expect_len(RoleKind::Critic, n, moved)
    }

    pub(crate) async fn score(&self, role: RoleKind, prompt: &str, responses: Vec<String>) -> Result<Vec<f64>, SearchError> {
        if responses.is_empty() {
            return Ok(Vec::new());
        }
        let (scorer, clock) = match role {
            RoleKind::Cost => (&self.cost, &self.clocks[1]),
            RoleKind::Reward => (&self.reward, &self.clocks[2]),
            RoleKind::Policy | RoleKind::Critic => unreachable!("not a scorer"),
        };
        let _busy = clock.enter();
        let n = responses.len();
        let scores = scorer.score(prompt, responses).await.map_err(|error| SearchError { role, error })?;
        expect_len(role, n, scores)
    }
}

/// A role's answer with one entry per item asked for, or an error saying otherwise.
fn expect_len<T>(role: RoleKind, asked: usize, answer: Vec<T>) -> Result<Vec<T>, SearchError> {
    if answer.len() != asked {
        let error = RoleError::Internal(format!("asked for {asked} results, got {}", answer.len()));
        return Err(SearchError { role, error });
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_overlapping_calls_once() {
        let clock = Arc::new(BusyClock::default());
        let a = clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        let b = clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        drop(b);
        let t = clock.total();
        assert!(t >= Duration::from_millis(40), "{t:?}");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(clock.total(), t, "idle time is not counted");
    }
}
