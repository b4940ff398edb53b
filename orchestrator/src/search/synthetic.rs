//! Small synthetic roles for unit tests of the search algorithms (they test
//! the algorithm, not a model).
//!
//! Token `t` reads " w{t}". The policy draws ids from a hash of (seed, child,
//! position) and moves off any token with a negative bias; id 0 is the stop
//! token. The cost model counts "bad" tokens (ids in `bad`) and subtracts
//! 0.5, so a response is safe at budget 0 exactly when it has none. The
//! reward model is the mean id of the response's tokens. A sequence's latent
//! is `[last id, length]`; the LM head applied to an edited latent draws the
//! id its first component rounds to. The critic prefers latents that read
//! `target`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use ig_core::RoleError;

use super::mix;
use super::roles::{
    Chunk, ChunkStream, CriticPoint, CriticRole, Decoded, ExtendCall, Finish, LatentStep, NextToken, PolicyRole, Roles, ScorerRole,
};

/// Ids of tokens drawn: `1..=VOCAB`.
pub const VOCAB: u64 = 20;

pub struct SyntheticPolicy {
    /// The stop token is drawn when `hash % stop_every == 0` (0: never).
    pub stop_every: u64,
    /// A token drawn every time unless it carries a negative bias...
    pub favourite: Option<i32>,
    /// ...or even then (a policy that resampling cannot fix).
    pub stubborn: bool,
    /// Every call made, to check what the search asked.
    pub calls: Mutex<Vec<ExtendCall>>,
}

impl SyntheticPolicy {
    pub fn new() -> Self {
        Self { stop_every: 0, favourite: None, stubborn: false, calls: Mutex::new(Vec::new()) }
    }

    fn draw(&self, seed: u64, child: usize, pos: usize, biases: &[(i32, f32)]) -> i32 {
        let h = mix(&[seed, child as u64, pos as u64]);
        if self.stop_every > 0 && h.is_multiple_of(self.stop_every) {
            return 0;
        }
        let biased = |t: i32| biases.iter().any(|&(id, b)| id == t && b < 0.0);
        if let Some(f) = self.favourite {
            if self.stubborn || !biased(f) {
                return f;
            }
        }
        let mut t = (h % VOCAB) as i32 + 1;
        // Move off biased tokens: the next unbiased id.
        for _ in 0..VOCAB {
            if biased(t) {
                t = t % VOCAB as i32 + 1;
            } else {
                break;
            }
        }
        t
    }
}

/// The synthetic latent of a sequence: `[last id, length]`.
pub fn latent_of(sequence: &[i32]) -> Vec<f32> {
    vec![sequence.last().copied().unwrap_or(0) as f32, sequence.len() as f32]
}

pub fn text_of(ids: &[i32]) -> String {
    ids.iter().filter(|&&t| t != 0).map(|t| format!(" w{t}")).collect()
}

pub fn ids_of(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|w| w.strip_prefix('w')?.parse().ok()).collect()
}

#[async_trait]
impl PolicyRole for SyntheticPolicy {
    fn extend(&self, call: ExtendCall) -> ChunkStream {
        self.calls.lock().unwrap().push(call.clone());
        let mut chunks = Vec::new();
        for (i, p) in call.prefixes.iter().enumerate() {
            for c in 0..p.children {
                let mut ids = Vec::new();
                let mut finish = Finish::Open;
                while ids.len() < call.chunk_tokens {
                    let t = self.draw(p.seed, c, p.token_ids.len() + ids.len(), &p.biases);
                    ids.push(t);
                    if t == 0 {
                        finish = Finish::Stop;
                        break;
                    }
                    if p.token_ids.len() + ids.len() >= call.max_sequence_tokens {
                        finish = Finish::Length;
                        break;
                    }
                }
                let latent = call.with_latents.then(|| latent_of(&[p.token_ids.as_slice(), &ids].concat()));
                chunks.push(Chunk { prefix: i, child: c, text: text_of(&ids), token_ids: ids, finish, latent });
            }
        }
        // Two batches, in reverse order, as a real stream may deliver them.
        let (a, b) = chunks.split_at(chunks.len() / 2);
        let batches: Vec<Result<Vec<Chunk>, RoleError>> = vec![Ok(b.to_vec()), Ok(a.to_vec())];
        futures::stream::iter(batches.into_iter().filter(|b| b.as_ref().map_or(true, |v| !v.is_empty()))).boxed()
    }

    async fn top_k_next(&self, sequences: Vec<Vec<i32>>, k: usize) -> Result<Vec<Vec<NextToken>>, RoleError> {
        // Logits favour low ids: id t has logit -t / 10.
        Ok(sequences
            .iter()
            .map(|_| {
                (0..k as i32)
                    .map(|t| NextToken { token_id: t, logit: -(t as f32) / 10.0, text: text_of(&[t]) })
                    .collect()
            })
            .collect())
    }

    fn is_stop(&self, token_id: i32) -> bool {
        token_id == 0
    }

    async fn latents(&self, sequences: Vec<Vec<i32>>) -> Result<Vec<Vec<f32>>, RoleError> {
        Ok(sequences.iter().map(|s| latent_of(s)).collect())
    }

    async fn decode_from_latents(&self, steps: Vec<LatentStep>, _temperature: f32, _top_p: f32) -> Result<Vec<Decoded>, RoleError> {
        Ok(steps
            .into_iter()
            .map(|s| {
                // Unedited: the draw chunked sampling makes for child 0 here.
                let t = if s.latent == latent_of(&s.token_ids) {
                    self.draw(s.seed, 0, s.token_ids.len(), &[])
                } else {
                    (s.latent[0].round() as i32).clamp(1, VOCAB as i32)
                };
                let next = [s.token_ids.as_slice(), &[t]].concat();
                let finish = if t == 0 { Finish::Stop } else { Finish::Open };
                Decoded { token_id: t, text: text_of(&[t]), finish, next_latent: (t != 0).then(|| latent_of(&next)) }
            })
            .collect())
    }
}

/// `V(h, z) = z - (h[0] - target)²`.
pub struct SyntheticCritic {
    pub target: f32,
}

#[async_trait]
impl CriticRole for SyntheticCritic {
    async fn evaluate(&self, points: Vec<CriticPoint>) -> Result<Vec<f64>, RoleError> {
        Ok(points.iter().map(|(h, z)| z - ((h[0] - self.target) as f64).powi(2)).collect())
    }

    async fn ascend(&self, points: Vec<CriticPoint>, steps: usize, step_size: f32) -> Result<Vec<Vec<f32>>, RoleError> {
        Ok(points
            .into_iter()
            .map(|(mut h, _)| {
                for _ in 0..steps {
                    h[0] += step_size * -2.0 * (h[0] - self.target);
                }
                h
            })
            .collect())
    }
}

pub struct SyntheticCost {
    pub bad: Vec<i32>,
    /// Tokens that lower the cost by one each.
    pub good: Vec<i32>,
}

#[async_trait]
impl ScorerRole for SyntheticCost {
    async fn score(&self, _prompt: &str, responses: Vec<String>) -> Result<Vec<f64>, RoleError> {
        let count = |ids: &[i32], set: &[i32]| ids.iter().filter(|t| set.contains(t)).count() as f64;
        Ok(responses.iter().map(|r| ids_of(r)).map(|ids| count(&ids, &self.bad) - count(&ids, &self.good) - 0.5).collect())
    }
}

pub struct SyntheticReward;

#[async_trait]
impl ScorerRole for SyntheticReward {
    async fn score(&self, _prompt: &str, responses: Vec<String>) -> Result<Vec<f64>, RoleError> {
        Ok(responses
            .iter()
            .map(|r| {
                let ids = ids_of(r);
                if ids.is_empty() {
                    0.0
                } else {
                    ids.iter().map(|&t| t as f64).sum::<f64>() / ids.len() as f64
                }
            })
            .collect())
    }
}

/// Roles over `policy`, a cost model with `bad` tokens and the mean-id reward.
pub fn roles(policy: Arc<SyntheticPolicy>, bad: &[i32]) -> Roles {
    roles_with(policy, SyntheticCost { bad: bad.to_vec(), good: Vec::new() })
}

pub fn roles_with(policy: Arc<SyntheticPolicy>, cost: SyntheticCost) -> Roles {
    Roles::new(policy, Arc::new(cost), Arc::new(SyntheticReward))
}

/// What the synthetic policy draws for `call`, flattened in (prefix, child) order.
pub fn replay(policy: &SyntheticPolicy, call: &ExtendCall) -> Vec<Chunk> {
    let quiet = SyntheticPolicy { calls: Mutex::new(Vec::new()), ..*policy };
    let chunks: Vec<Vec<Chunk>> = futures::executor::block_on(quiet.extend(call.clone()).map(|b| b.unwrap()).collect());
    let mut all: Vec<Chunk> = chunks.concat();
    all.sort_by_key(|c| (c.prefix, c.child));
    all
}

pub fn mean_id(text: &str) -> f64 {
    let ids = ids_of(text);
    ids.iter().map(|&t| t as f64).sum::<f64>() / ids.len().max(1) as f64
}

pub fn prompt() -> super::Prompt {
    super::Prompt { text: "a prompt".into(), token_ids: vec![7, 7, 7], max_sequence_tokens: 4096, max_logit_biases: 1024 }
}
