//! Rollouts of the base policy for training a critic: the policy's chunked
//! samples, with the latent and the safety state `z = B - C(x, y≤t)` at every
//! chunk boundary, and the terminal reward and cost.
//!
//! They are drawn exactly as the search draws its candidates (same chunking,
//! temperature and template), so the critic sees the states it will value.

use serde::{Deserialize, Serialize};

use crate::search::roles::{ExtendCall, ExtendPrefix, Finish, RoleKind, Roles, SearchError};
use crate::search::{mix, Prompt};

/// How rollouts are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutParams {
    /// Rollouts per prompt.
    pub samples: usize,
    /// Tokens per chunk [d]: one training point per chunk.
    pub chunk_tokens: usize,
    /// Most response tokens [D].
    pub max_new_tokens: usize,
    /// Softmax temperature.
    pub temperature: f32,
    /// Nucleus threshold.
    pub top_p: f32,
    /// Root of the draws.
    pub seed: u64,
    /// Budget B of `z = B - C`.
    pub safety_budget: f64,
}

/// The state after one chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPoint {
    /// Response tokens so far.
    pub tokens: usize,
    /// The policy's latent at the last of them.
    pub latent: Vec<f32>,
    /// `B - C(x, y≤t)`.
    pub z: f64,
}

/// One sampled response with its states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Which prompt (the caller's numbering): the train/validation split is by prompt.
    pub prompt_id: u64,
    /// Index among the prompt's rollouts.
    pub sample: usize,
    /// The response text as the scorers read it.
    pub text: String,
    /// One point per chunk, in order.
    pub points: Vec<RolloutPoint>,
    /// `R(x, y)`.
    pub reward: f64,
    /// `C(x, y)`.
    pub cost: f64,
}

struct Open {
    token_ids: Vec<i32>,
    text: String,
    points: Vec<RolloutPoint>,
    finish: Finish,
}

/// Draws `p.samples` rollouts of `prompt`: the first chunk of each from the
/// prompt, then each continued alone, chunk by chunk.
pub async fn roll_out(roles: &Roles, prompt: &Prompt, prompt_id: u64, p: &RolloutParams) -> Result<Vec<Rollout>, SearchError> {
    let cap = (prompt.token_ids.len() + p.max_new_tokens).min(prompt.max_sequence_tokens);
    let mut rollouts: Vec<Open> =
        (0..p.samples).map(|_| Open { token_ids: Vec::new(), text: String::new(), points: Vec::new(), finish: Finish::Open }).collect();
    let mut step = 0u64;
    let mut response_len = 0;
    while response_len < p.max_new_tokens && rollouts.iter().any(|r| r.finish == Finish::Open) {
        let open: Vec<usize> = (0..rollouts.len()).filter(|&i| rollouts[i].finish == Finish::Open).collect();
        // Step 0 draws every sample from the prompt; later steps continue each one.
        let prefixes: Vec<ExtendPrefix> = if step == 0 {
            vec![ExtendPrefix { token_ids: prompt.token_ids.clone(), children: p.samples, biases: Vec::new(), seed: mix(&[p.seed, prompt_id, 0]) }]
        } else {
            open.iter()
                .map(|&i| ExtendPrefix {
                    token_ids: [prompt.token_ids.as_slice(), &rollouts[i].token_ids].concat(),
                    children: 1,
                    biases: Vec::new(),
                    seed: mix(&[p.seed, prompt_id, step, i as u64]),
                })
                .collect()
        };
        let call = ExtendCall {
            prefixes,
            chunk_tokens: p.chunk_tokens.min(p.max_new_tokens - response_len),
            temperature: p.temperature,
            top_p: p.top_p,
            max_sequence_tokens: cap,
            with_latents: true,
        };
        let mut chunks = Vec::new();
        let mut stream = roles.extend(call);
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            chunks.extend(batch?);
        }
        let mut grown = Vec::with_capacity(chunks.len());
        for c in chunks {
            let i = if step == 0 { c.child } else { open[c.prefix] };
            let Some(latent) = c.latent else {
                let error = ig_core::RoleError::Internal("the policy sent a chunk without its latent".into());
                return Err(SearchError { role: RoleKind::Policy, error });
            };
            let r = &mut rollouts[i];
            r.token_ids.extend_from_slice(&c.token_ids);
            r.text.push_str(&c.text);
            r.finish = c.finish;
            r.points.push(RolloutPoint { tokens: r.token_ids.len(), latent, z: f64::NAN });
            grown.push(i);
        }
        let texts: Vec<String> = grown.iter().map(|&i| rollouts[i].text.clone()).collect();
        let costs = roles.score(RoleKind::Cost, &prompt.text, texts).await?;
        for (&i, c) in grown.iter().zip(costs) {
            if let Some(point) = rollouts[i].points.last_mut() {
                point.z = p.safety_budget - c;
            }
        }
        response_len += p.chunk_tokens;
        step += 1;
    }
    let texts: Vec<String> = rollouts.iter().map(|r| r.text.clone()).collect();
    let rewards = roles.score(RoleKind::Reward, &prompt.text, texts).await?;
    Ok(rollouts
        .into_iter()
        .zip(rewards)
        .enumerate()
        .map(|(sample, (r, reward))| {
            // The last chunk's cost is the response's cost.
            let cost = r.points.last().map_or(0.0, |pt| p.safety_budget - pt.z);
            Rollout { prompt_id, sample, text: r.text, points: r.points, reward, cost }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::search::synthetic::{self, latent_of, SyntheticPolicy};

    #[tokio::test]
    async fn every_chunk_gives_a_point_with_its_latent_and_z() {
        let policy = Arc::new(SyntheticPolicy::new());
        let roles = synthetic::roles(policy.clone(), &[4]);
        let p = RolloutParams { samples: 3, chunk_tokens: 2, max_new_tokens: 5, temperature: 1.0, top_p: 1.0, seed: 9, safety_budget: 0.0 };
        let prompt = synthetic::prompt();
        let rollouts = roll_out(&roles, &prompt, 4, &p).await.unwrap();
        assert_eq!(rollouts.len(), 3);
        for r in &rollouts {
            assert_eq!(r.points.iter().map(|pt| pt.tokens).collect::<Vec<_>>(), vec![2, 4, 5]);
            let ids: Vec<i32> = synthetic::ids_of(&r.text);
            for pt in &r.points {
                let seq = [prompt.token_ids.as_slice(), &ids[..pt.tokens]].concat();
                assert_eq!(pt.latent, latent_of(&seq));
                // The synthetic cost: bad tokens (4) so far minus 0.5.
                let bad = ids[..pt.tokens].iter().filter(|&&t| t == 4).count() as f64;
                assert_eq!(pt.z, 0.5 - bad);
            }
            assert_eq!(r.cost, -r.points.last().unwrap().z);
            assert_eq!(r.reward, synthetic::mean_id(&r.text));
        }
        let calls = policy.calls.lock().unwrap();
        assert_eq!((calls[0].prefixes.len(), calls[0].prefixes[0].children), (1, 3), "the samples start from the prompt together");
        assert!(calls[1..].iter().all(|c| c.prefixes.len() == 3 && c.with_latents));
    }
}
