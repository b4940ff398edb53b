//! ARGS (Khanov et al., 2024) and its cost-aware variants: greedy decoding
//! where each of the top-k next tokens is scored by its logit plus a weighted
//! score of the response it would make.

use super::roles::{Finish, RoleKind, Roles, SearchError};
use super::{Method, Outcome, Params, Prompt, Step};

pub(super) async fn run(
    method: Method,
    p: &Params,
    prompt: &Prompt,
    roles: &Roles,
    progress: &(dyn Fn(Step) + Send + Sync),
) -> Result<Outcome, SearchError> {
    let (mut ids, mut text) = (Vec::<i32>::new(), String::new());
    let mut min_z = p.safety_budget;
    let mut finish = Finish::Length;
    let (mut steps, mut candidates) = (0, 0u64);
    let cap = (prompt.token_ids.len() + p.max_new_tokens).min(prompt.max_sequence_tokens);
    while prompt.token_ids.len() + ids.len() < cap {
        let sequence = [prompt.token_ids.as_slice(), &ids].concat();
        let next = roles.top_k_next(vec![sequence], p.args_top_k).await?.into_iter().next().unwrap_or_default();
        if next.is_empty() {
            return Err(SearchError {
                role: RoleKind::Policy,
                error: ig_core::RoleError::Internal("top_k_next returned no token".into()),
            });
        }
        let texts: Vec<String> = next.iter().map(|t| format!("{text}{}", t.text)).collect();
        let score = |role| roles.score(role, &prompt.text, texts.clone());
        let (rewards, costs) = match method {
            Method::Args => (Some(score(RoleKind::Reward).await?), None),
            Method::ArgsCost => (None, Some(score(RoleKind::Cost).await?)),
            _ => {
                let (r, c) = tokio::try_join!(score(RoleKind::Reward), score(RoleKind::Cost))?;
                (Some(r), Some(c))
            }
        };
        let w = p.args_weight;
        let value = |i: usize| -> f64 {
            let logit = next[i].logit as f64;
            match method {
                Method::Args => logit + w * rewards.as_ref().expect("rewards")[i],
                Method::ArgsCost => logit - w * costs.as_ref().expect("costs")[i],
                _ => logit + w * (rewards.as_ref().expect("rewards")[i] - p.lagrange_lambda * costs.as_ref().expect("costs")[i]),
            }
        };
        // The first of equal values wins: candidates come best logit first.
        let best = (1..next.len()).fold(0, |best, i| if value(i) > value(best) { i } else { best });
        candidates += next.len() as u64;
        let chosen = &next[best];
        ids.push(chosen.token_id);
        text.push_str(&chosen.text);
        let z = costs.as_ref().map(|c| p.safety_budget - c[best]);
        if let Some(z) = z {
            min_z = min_z.min(z);
        }
        progress(Step {
            index: steps,
            candidates: next.len(),
            safe_fraction: None,
            best_score: Some(value(best)),
            best_z: z,
            resample_rounds: 0,
            response_tokens: ids.len(),
            generated_tokens: ids.len() as u64,
            live_beams: 1,
            finished_beams: 0,
        });
        steps += 1;
        if roles.is_stop(chosen.token_id) {
            finish = Finish::Stop;
            break;
        }
    }
    let (reward, cost) = tokio::try_join!(
        roles.score(RoleKind::Reward, &prompt.text, vec![text.clone()]),
        roles.score(RoleKind::Cost, &prompt.text, vec![text.clone()]),
    )?;
    let (reward, cost) = (reward[0], cost[0]);
    let z = p.safety_budget - cost;
    // Per-token costs were known only for the cost-aware variants.
    let min_z = if method == Method::Args { z } else { min_z.min(z) };
    Ok(Outcome {
        token_ids: ids.clone(),
        text,
        finish,
        reward,
        cost,
        z,
        min_z,
        safe: cost <= p.safety_budget,
        steps,
        candidates,
        resample_rounds: 0,
        generated_tokens: ids.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::search::synthetic::{self, SyntheticCost, SyntheticPolicy};

    async fn search(method: Method, p: &Params, cost: SyntheticCost) -> Outcome {
        let roles = synthetic::roles_with(Arc::new(SyntheticPolicy::new()), cost);
        crate::search::run(method, p, &synthetic::prompt(), &roles, &|_| {}).await.unwrap()
    }

    fn cost(bad: &[i32], good: &[i32]) -> SyntheticCost {
        SyntheticCost { bad: bad.to_vec(), good: good.to_vec() }
    }

    #[tokio::test]
    async fn args_trades_logit_for_score() {
        // Logits favour low ids (id t: -t/10; 0 is the stop token); the reward is the mean id.
        let p = Params { args_top_k: 5, max_new_tokens: 3, ..Params::default() };
        let greedy = search(Method::Args, &Params { args_weight: 0.0, ..p.clone() }, cost(&[], &[])).await;
        assert_eq!((greedy.token_ids.clone(), greedy.finish), (vec![0], Finish::Stop));
        // Step 1: " w4" scores -0.4 + 2.5 * 4 best; step 2: stopping keeps the mean at 4 without the -0.4.
        let args = search(Method::Args, &p, cost(&[], &[])).await;
        assert_eq!((args.token_ids.clone(), args.finish), (vec![4, 0], Finish::Stop));
        assert_eq!(args.candidates, 10);
        // The cost term pulls ARGS-cost to the token that lowers the cost, every step.
        let c = search(Method::ArgsCost, &Params { args_weight: 10.0, ..p.clone() }, cost(&[], &[3])).await;
        assert_eq!((c.token_ids.clone(), c.finish), (vec![3, 3, 3], Finish::Length));
        // The cost falls along the response: min_z is the empty response's z, the budget.
        assert!(c.safe && c.z == 3.5 && c.min_z == 0.0);
        // ARGS-Lagrangian avoids the unsafe token 4 that plain ARGS picks.
        let lag = search(Method::ArgsLagrangian, &p, cost(&[4], &[])).await;
        assert_eq!(lag.token_ids, vec![3, 0]);
    }
}
