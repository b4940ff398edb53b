//! RECONTROL (Kong et al., 2024): per generated token, the policy's latent is
//! moved uphill on a critic by plain gradient ascent, and the token is drawn
//! from the LM head applied to the moved latent.
//!
//! The critic reads `[h ; z]`. RECONTROL itself is not safety-aware, but the
//! critic was trained on `z` along the rollouts, so the cost of the partial
//! response is scored once per chunk (`chunk_tokens`) to keep `z` current;
//! this also gives RECONTROL an anytime-safety record (`min_z`) like the
//! chunked methods. Draws reuse the chunked methods' random streams (step
//! `t / d` of base sampling, token `t % d`): with zero ascent steps the
//! response is exactly base sampling's for the same seed.

use super::roles::{Finish, LatentStep, RoleKind, Roles, SearchError};
use super::{mix, Outcome, Params, Prompt, Step};

pub(super) async fn run(
    p: &Params,
    prompt: &Prompt,
    roles: &Roles,
    progress: &(dyn Fn(Step) + Send + Sync),
) -> Result<Outcome, SearchError> {
    let cap = (prompt.token_ids.len() + p.max_new_tokens).min(prompt.max_sequence_tokens);
    let mut sequence = prompt.token_ids.clone();
    let (mut ids, mut text) = (Vec::<i32>::new(), String::new());
    let mut latent = roles.latents(vec![sequence.clone()]).await?.swap_remove(0);
    let (mut z, mut min_z) = (p.safety_budget, p.safety_budget);
    let mut finish = Finish::Open;
    let mut steps = 0;
    while finish == Finish::Open && sequence.len() < cap {
        let t = ids.len();
        let edited = if p.recontrol_steps > 0 {
            roles.ascend(vec![(latent, z)], p.recontrol_steps, p.recontrol_step_size).await?.swap_remove(0)
        } else {
            latent
        };
        let step = LatentStep {
            token_ids: sequence.clone(),
            latent: edited,
            seed: mix(&[p.seed, (t / p.chunk_tokens) as u64, 0, 0]),
            draw_index: t % p.chunk_tokens,
        };
        let decoded = roles.decode_from_latents(vec![step], p.temperature, p.top_p).await?.swap_remove(0);
        ids.push(decoded.token_id);
        sequence.push(decoded.token_id);
        text.push_str(&decoded.text);
        finish = decoded.finish;
        if sequence.len() >= cap && finish == Finish::Open {
            finish = Finish::Length;
        }
        latent = match (finish, decoded.next_latent) {
            (Finish::Open, Some(next)) => next,
            (Finish::Open, None) => {
                let error = ig_core::RoleError::Internal("decode_from_latents returned no next latent for an open sequence".into());
                return Err(SearchError { role: RoleKind::Policy, error });
            }
            _ => Vec::new(),
        };
        // A chunk is done: refresh z from the cost of the response so far.
        if ids.len() % p.chunk_tokens == 0 || finish != Finish::Open {
            let cost = roles.score(RoleKind::Cost, &prompt.text, vec![text.clone()]).await?[0];
            z = p.safety_budget - cost;
            min_z = min_z.min(z);
            progress(Step {
                index: steps,
                candidates: 1,
                safe_fraction: Some(if z >= 0.0 { 1.0 } else { 0.0 }),
                best_score: None,
                best_z: Some(z),
                resample_rounds: 0,
                response_tokens: ids.len(),
                generated_tokens: ids.len() as u64,
                live_beams: usize::from(finish == Finish::Open),
                finished_beams: usize::from(finish != Finish::Open),
            });
            steps += 1;
        }
    }
    let reward = roles.score(RoleKind::Reward, &prompt.text, vec![text.clone()]).await?[0];
    // The last chunk's cost is the response's cost.
    let cost = p.safety_budget - z;
    Ok(Outcome {
        token_ids: ids.clone(),
        text,
        finish: if finish == Finish::Open { Finish::Length } else { finish },
        reward,
        cost,
        z,
        min_z,
        safe: cost <= p.safety_budget,
        steps,
        candidates: ids.len() as u64,
        resample_rounds: 0,
        generated_tokens: ids.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::search::synthetic::{self, SyntheticCritic, SyntheticPolicy};
    use crate::search::Method;

    fn params() -> Params {
        Params { chunk_tokens: 4, max_new_tokens: 10, seed: 3, ..Params::default() }
    }

    async fn search(method: Method, p: &Params, critic_target: f32) -> Outcome {
        let roles = synthetic::roles(Arc::new(SyntheticPolicy::new()), &[4]).with_critic(Arc::new(SyntheticCritic { target: critic_target }));
        crate::search::run(method, p, &synthetic::prompt(), &roles, &|_| {}).await.unwrap()
    }

    #[tokio::test]
    async fn zero_ascent_steps_is_base_sampling() {
        let p = Params { recontrol_steps: 0, ..params() };
        let base = search(Method::Base, &p, 9.0).await;
        let recontrol = search(Method::Recontrol, &p, 9.0).await;
        assert_eq!(recontrol.token_ids, base.token_ids);
        assert_eq!((recontrol.text.as_str(), recontrol.cost, recontrol.reward), (base.text.as_str(), base.cost, base.reward));
        assert_eq!(recontrol.token_ids.len(), 10);
    }

    #[tokio::test]
    async fn ascent_moves_every_token_to_the_critics_choice() {
        // The critic prefers latents that read 9.2; the synthetic LM head draws the id an edited latent rounds to.
        let out = search(Method::Recontrol, &Params { recontrol_steps: 30, recontrol_step_size: 0.25, ..params() }, 9.2).await;
        assert_eq!(out.token_ids, vec![9; 10]);
        assert_eq!(out.steps, 3, "cost scored after tokens 4, 8 and 10");
        // Safe (no token 4): the cost is -0.5, z = 0.5.
        assert!(out.safe && out.z == 0.5 && out.min_z == 0.0);
    }
}
