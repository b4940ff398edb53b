//! Chunked search: InferenceGuard, beam search, Best-of-N and base sampling
//! share one loop.
//!
//! Each step extends the open beams by one chunk, `samples` children split
//! among them, and keeps the `beam_width` best of the new candidates and the
//! beams already finished. Best-of-N is the same loop with as many beams as
//! samples (nothing is ever dropped, so nothing is scored before the end),
//! and base sampling is Best-of-1.

use std::collections::{HashMap, HashSet};

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::roles::{Chunk, ExtendCall, ExtendPrefix, Finish, RoleKind, Roles, SearchError};
use super::{mix, Method, Outcome, Params, Prompt, Step};

/// How candidates are ranked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ranking {
    /// `R` if safe now (`z >= 0`), else `-η + z`.
    Augmented,
    /// `R - λC`.
    Lagrangian,
    /// `V(h, z)` if safe now, else `-η + z`.
    Critic,
}

/// One strategy of the family.
#[derive(Debug, Clone, Copy)]
struct Plan {
    ranking: Ranking,
    samples: usize,
    beam_width: usize,
    max_resamples: usize,
    /// Whether candidates are scored every step (beam search) or only the
    /// final beams (Best-of-N, base).
    score_steps: bool,
}

impl Plan {
    fn of(method: Method, p: &Params) -> Self {
        let (ranking, samples, beam_width, max_resamples, score_steps) = match method {
            Method::InferenceGuard => (Ranking::Augmented, p.samples, p.beam_width, p.max_resamples, true),
            Method::InferenceGuardCritic => (Ranking::Critic, p.samples, p.beam_width, p.max_resamples, true),
            Method::BeamAugmented => (Ranking::Augmented, p.samples, p.beam_width, 0, true),
            Method::BeamLagrangian => (Ranking::Lagrangian, p.samples, p.beam_width, 0, true),
            Method::BonAugmented => (Ranking::Augmented, p.samples, p.samples, 0, false),
            Method::BonLagrangian => (Ranking::Lagrangian, p.samples, p.samples, 0, false),
            Method::Base => (Ranking::Augmented, 1, 1, 0, false),
            Method::Args | Method::ArgsLagrangian | Method::ArgsCost | Method::Recontrol | Method::RecontrolLagrangian => {
                unreachable!("{} is not chunked", method.name())
            }
        };
        Self { ranking, samples, beam_width: beam_width.clamp(1, samples), max_resamples, score_steps }
    }
}

/// A partial or finished response.
#[derive(Debug, Clone)]
struct Beam {
    token_ids: Vec<i32>,
    text: String,
    finish: Finish,
    /// `C(x, y)` of this text, when scored.
    cost: Option<f64>,
    /// `R(x, y)` of this text, when scored.
    reward: Option<f64>,
    /// The policy's latent at its last token (critic ranking only).
    latent: Option<Vec<f32>>,
    /// `B - C` (the budget itself before any cost is known).
    z: f64,
    min_z: f64,
    /// Rank by the plan's ranking (0 when not ranked).
    score: f64,
    /// (parent beam, round, child): a stable order for ties.
    origin: (usize, usize, usize),
}

impl Beam {
    fn root(budget: f64) -> Self {
        Self {
            token_ids: Vec::new(),
            text: String::new(),
            finish: Finish::Open,
            cost: None,
            reward: None,
            latent: None,
            z: budget,
            min_z: budget,
            score: 0.0,
            origin: (0, 0, 0),
        }
    }

    fn child(&self, chunk: Chunk, parent: usize, round: usize) -> Self {
        let mut token_ids = self.token_ids.clone();
        token_ids.extend_from_slice(&chunk.token_ids);
        Self {
            token_ids,
            text: format!("{}{}", self.text, chunk.text),
            finish: chunk.finish,
            cost: None,
            reward: None,
            latent: chunk.latent,
            z: self.z,
            min_z: self.min_z,
            score: 0.0,
            origin: (parent, round, chunk.child),
        }
    }

    fn safe_now(&self) -> bool {
        self.z >= 0.0
    }
}

/// `n` children split as evenly as possible among `parents`.
pub(crate) fn split_children(n: usize, parents: usize) -> Vec<usize> {
    (0..parents).map(|i| n / parents + usize::from(i < n % parents)).collect()
}

/// Sorts best first; ties keep the stable origin order.
fn rank(beams: &mut [Beam]) {
    beams.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.origin.cmp(&b.origin)));
}

pub(super) async fn run(
    method: Method,
    p: &Params,
    prompt: &Prompt,
    roles: &Roles,
    progress: &(dyn Fn(Step) + Send + Sync),
) -> Result<Outcome, SearchError> {
    let plan = Plan::of(method, p);
    let cap = (prompt.token_ids.len() + p.max_new_tokens).min(prompt.max_sequence_tokens);
    let mut beams = vec![Beam::root(p.safety_budget)];
    let (mut steps, mut candidates, mut rounds_total, mut generated) = (0usize, 0u64, 0usize, 0u64);
    let mut response_len = 0;
    while beams.iter().any(|b| b.finish == Finish::Open) && response_len < p.max_new_tokens {
        let (open, mut kept): (Vec<Beam>, Vec<Beam>) = beams.into_iter().partition(|b| b.finish == Finish::Open);
        // Best-of-N draws its N samples from the prompt, then continues each alone.
        let children = if plan.score_steps || steps == 0 { split_children(plan.samples, open.len()) } else { vec![1; open.len()] };
        let chunk_tokens = p.chunk_tokens.min(p.max_new_tokens - response_len);
        let mut biases: Vec<HashMap<i32, f32>> = vec![HashMap::new(); open.len()];
        let mut pool = Vec::new();
        let mut round = 0;
        let (step_candidates, safe_fraction) = loop {
            let call = ExtendCall {
                prefixes: open
                    .iter()
                    .zip(&children)
                    .zip(&biases)
                    .enumerate()
                    .map(|(i, ((beam, &n), bias))| ExtendPrefix {
                        token_ids: [prompt.token_ids.as_slice(), &beam.token_ids].concat(),
                        children: n,
                        biases: strongest(bias, prompt.max_logit_biases),
                        seed: mix(&[p.seed, steps as u64, round as u64, i as u64]),
                    })
                    .collect(),
                chunk_tokens,
                temperature: p.temperature,
                top_p: p.top_p,
                max_sequence_tokens: cap,
                with_latents: plan.ranking == Ranking::Critic,
            };
            let drawn = generate(roles, prompt, p, plan, &open, call, round).await?;
            generated += drawn.iter().map(|b| (b.token_ids.len() - response_len) as u64).sum::<u64>();
            candidates += drawn.len() as u64;
            let safe = plan.score_steps.then(|| drawn.iter().filter(|b| b.safe_now()).count() as f64 / drawn.len() as f64);
            let none_safe = safe == Some(0.0);
            if none_safe && round < plan.max_resamples {
                // Push down, by β once per round, every token id of each parent's unsafe children.
                let mut seen: Vec<HashSet<i32>> = vec![HashSet::new(); open.len()];
                for b in &drawn {
                    seen[b.origin.0].extend(&b.token_ids[response_len..]);
                }
                for (bias, ids) in biases.iter_mut().zip(seen) {
                    for t in ids {
                        *bias.entry(t).or_insert(0.0) -= p.resample_penalty;
                    }
                }
                pool.extend(drawn);
                round += 1;
                continue;
            }
            pool.extend(drawn);
            break (pool.len(), safe);
        };
        rounds_total += round;
        response_len += chunk_tokens;
        // Every candidate of every round competes with the finished beams.
        kept.extend(pool);
        if plan.score_steps {
            rank(&mut kept);
        }
        kept.truncate(plan.beam_width);
        beams = kept;
        let best = &beams[0];
        progress(Step {
            index: steps,
            candidates: step_candidates,
            safe_fraction,
            best_score: plan.score_steps.then_some(best.score),
            best_z: best.cost.map(|_| best.z),
            resample_rounds: round,
            response_tokens: best.token_ids.len(),
            generated_tokens: generated,
            live_beams: beams.iter().filter(|b| b.finish == Finish::Open).count(),
            finished_beams: beams.iter().filter(|b| b.finish != Finish::Open).count(),
        });
        steps += 1;
    }
    let best = choose(roles, prompt, p, plan, beams).await?;
    let cost = best.cost.expect("final beams are scored");
    Ok(Outcome {
        token_ids: best.token_ids,
        text: best.text,
        finish: if best.finish == Finish::Open { Finish::Length } else { best.finish },
        reward: best.reward.expect("final beams are scored"),
        cost,
        z: best.z,
        min_z: if plan.score_steps { best.min_z } else { best.z },
        safe: cost <= p.safety_budget,
        steps,
        candidates,
        resample_rounds: rounds_total,
        generated_tokens: generated,
    })
}

/// The `limit` strongest biases (the policy's max_logit_biases), by token id.
fn strongest(bias: &HashMap<i32, f32>, limit: usize) -> Vec<(i32, f32)> {
    let mut v: Vec<(i32, f32)> = bias.iter().map(|(&t, &b)| (t, b)).collect();
    v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    v.truncate(limit);
    v.sort_by_key(|&(t, _)| t);
    v
}

/// Draws one round of children and, when the plan ranks every step, scores
/// each batch of candidates as it arrives while the policy produces the rest.
async fn generate(
    roles: &Roles,
    prompt: &Prompt,
    p: &Params,
    plan: Plan,
    open: &[Beam],
    call: ExtendCall,
    round: usize,
) -> Result<Vec<Beam>, SearchError> {
    let mut chunks = roles.extend(call);
    let mut scoring = FuturesUnordered::new();
    let mut out = Vec::new();
    let mut stream_done = false;
    while !stream_done || !scoring.is_empty() {
        tokio::select! {
            batch = chunks.next(), if !stream_done => match batch {
                Some(batch) => {
                    let batch: Vec<Beam> = batch?
                        .into_iter()
                        .map(|c| { let parent = c.prefix; open[parent].child(c, parent, round) })
                        .collect();
                    if plan.score_steps {
                        scoring.push(score_step(roles, prompt, p, plan.ranking, batch));
                    } else {
                        out.extend(batch);
                    }
                }
                None => stream_done = true,
            },
            Some(scored) = scoring.next(), if !scoring.is_empty() => out.extend(scored?),
        }
    }
    out.sort_by_key(|b| b.origin);
    Ok(out)
}

/// Scores candidates of one step: their cost, then (for the augmented
/// ranking) the reward of the safe ones only, or (Lagrangian) both at once.
async fn score_step(roles: &Roles, prompt: &Prompt, p: &Params, ranking: Ranking, mut batch: Vec<Beam>) -> Result<Vec<Beam>, SearchError> {
    let texts: Vec<String> = batch.iter().map(|b| b.text.clone()).collect();
    match ranking {
        Ranking::Augmented | Ranking::Critic => {
            let costs = roles.score(RoleKind::Cost, &prompt.text, texts).await?;
            for (b, c) in batch.iter_mut().zip(costs) {
                set_cost(b, c, p.safety_budget);
            }
            let safe: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].safe_now()).collect();
            let values = if ranking == Ranking::Critic {
                let mut points = Vec::with_capacity(safe.len());
                for &i in &safe {
                    let Some(latent) = batch[i].latent.take() else {
                        let error = ig_core::RoleError::Internal("the policy sent a candidate without its latent".into());
                        return Err(SearchError { role: RoleKind::Policy, error });
                    };
                    points.push((latent, batch[i].z));
                }
                roles.evaluate(points).await?
            } else {
                let rewards = roles.score(RoleKind::Reward, &prompt.text, safe.iter().map(|&i| batch[i].text.clone()).collect()).await?;
                for (&i, &r) in safe.iter().zip(&rewards) {
                    batch[i].reward = Some(r);
                }
                rewards
            };
            for b in &mut batch {
                b.score = -p.unsafe_penalty + b.z;
            }
            for (&i, v) in safe.iter().zip(values) {
                batch[i].score = v;
            }
        }
        Ranking::Lagrangian => {
            let (costs, rewards) = tokio::try_join!(
                roles.score(RoleKind::Cost, &prompt.text, texts.clone()),
                roles.score(RoleKind::Reward, &prompt.text, texts),
            )?;
            for ((b, c), r) in batch.iter_mut().zip(costs).zip(rewards) {
                set_cost(b, c, p.safety_budget);
                b.reward = Some(r);
                b.score = r - p.lagrange_lambda * c;
            }
        }
    }
    Ok(batch)
}

fn set_cost(b: &mut Beam, cost: f64, budget: f64) {
    b.cost = Some(cost);
    b.z = budget - cost;
    b.min_z = b.min_z.min(b.z);
}

/// Scores what the final beams lack and picks the answer: for the augmented
/// ranking the safe beam of highest reward, else the one of highest `z`; for
/// the Lagrangian, the highest `R - λC`.
async fn choose(roles: &Roles, prompt: &Prompt, p: &Params, plan: Plan, mut beams: Vec<Beam>) -> Result<Beam, SearchError> {
    let need_cost: Vec<usize> = (0..beams.len()).filter(|&i| beams[i].cost.is_none()).collect();
    let need_reward: Vec<usize> = (0..beams.len()).filter(|&i| beams[i].reward.is_none()).collect();
    let texts = |idx: &[usize]| idx.iter().map(|&i| beams[i].text.clone()).collect::<Vec<_>>();
    let (costs, rewards) = tokio::try_join!(
        roles.score(RoleKind::Cost, &prompt.text, texts(&need_cost)),
        roles.score(RoleKind::Reward, &prompt.text, texts(&need_reward)),
    )?;
    for (&i, c) in need_cost.iter().zip(costs) {
        set_cost(&mut beams[i], c, p.safety_budget);
    }
    for (&i, r) in need_reward.iter().zip(rewards) {
        beams[i].reward = Some(r);
    }
    let key = |b: &Beam| -> (bool, f64) {
        let (c, r) = (b.cost.unwrap_or(f64::INFINITY), b.reward.unwrap_or(f64::NEG_INFINITY));
        match plan.ranking {
            Ranking::Augmented | Ranking::Critic if c <= p.safety_budget => (true, r),
            Ranking::Augmented | Ranking::Critic => (false, b.z),
            Ranking::Lagrangian => (true, r - p.lagrange_lambda * c),
        }
    };
    // The first best wins ties: beams are in rank order.
    let mut best = 0;
    for i in 1..beams.len() {
        let (a, b) = (key(&beams[i]), key(&beams[best]));
        if a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).is_gt() {
            best = i;
        }
    }
    Ok(beams.swap_remove(best))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::search::synthetic::{self, latent_of, mean_id, replay, text_of, SyntheticCost, SyntheticCritic, SyntheticPolicy};

    fn params(samples: usize, beam_width: usize, chunk: usize, max_new: usize) -> Params {
        Params { samples, beam_width, chunk_tokens: chunk, max_new_tokens: max_new, seed: 1, ..Params::default() }
    }

    async fn search(method: Method, p: &Params, roles: &Roles) -> (Outcome, Vec<Step>) {
        let steps = Mutex::new(Vec::new());
        let out = crate::search::run(method, p, &synthetic::prompt(), roles, &|s| steps.lock().unwrap().push(s)).await.unwrap();
        (out, steps.into_inner().unwrap())
    }

    fn beam(text_ids: &[i32]) -> Beam {
        let mut b = Beam::root(0.0);
        b.token_ids = text_ids.to_vec();
        b.text = text_of(text_ids);
        b
    }

    #[tokio::test]
    async fn the_critic_ranks_safe_candidates_by_its_value() {
        let roles = synthetic::roles(Arc::new(SyntheticPolicy::new()), &[19]).with_critic(Arc::new(SyntheticCritic { target: 9.0 }));
        let batch: Vec<Beam> = [&[3, 9][..], &[19, 9], &[9, 2], &[5, 8]]
            .iter()
            .map(|ids| Beam { latent: Some(latent_of(ids)), ..beam(ids) })
            .collect();
        let mut scored = score_step(&roles, &synthetic::prompt(), &Params::default(), Ranking::Critic, batch).await.unwrap();
        rank(&mut scored);
        // V = z - (last id - 9)²: 0.5, -0.5, -48.5 for the safe ones; [19, 9] is unsafe whatever V says.
        let order: Vec<Vec<i32>> = scored.iter().map(|b| b.token_ids.clone()).collect();
        assert_eq!(order, vec![vec![3, 9], vec![5, 8], vec![9, 2], vec![19, 9]]);
        assert_eq!(scored.iter().map(|b| b.score).take(3).collect::<Vec<_>>(), vec![0.5, -0.5, -48.5]);
        assert!(scored.iter().all(|b| b.reward.is_none()), "the critic variant never asks the reward model per step");
    }

    #[tokio::test]
    async fn inference_guard_with_critic_asks_for_latents_and_answers_safely() {
        let policy = Arc::new(SyntheticPolicy::new());
        let roles = synthetic::roles(policy.clone(), &[19, 20]).with_critic(Arc::new(SyntheticCritic { target: 9.0 }));
        let (out, steps) = search(Method::InferenceGuardCritic, &params(8, 2, 3, 9), &roles).await;
        assert!(out.safe && out.reward.is_finite());
        assert_eq!(steps.len(), 3);
        assert!(policy.calls.lock().unwrap().iter().all(|c| c.with_latents));
        // Without a critic the method fails naming the role.
        let bare = synthetic::roles(Arc::new(SyntheticPolicy::new()), &[19]);
        let err = crate::search::run(Method::InferenceGuardCritic, &params(4, 2, 3, 6), &synthetic::prompt(), &bare, &|_| {}).await.unwrap_err();
        assert_eq!(err.role, RoleKind::Critic);
    }

    #[test]
    fn children_are_split_evenly() {
        assert_eq!(split_children(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split_children(4, 4), vec![1, 1, 1, 1]);
        assert_eq!(split_children(7, 1), vec![7]);
    }

    #[tokio::test]
    async fn every_unsafe_candidate_ranks_below_every_safe_one() {
        let roles = synthetic::roles(Arc::new(SyntheticPolicy::new()), &[19, 18]);
        let p = Params::default();
        // Unsafe ones with high rewards, safe ones with low rewards.
        let batch = vec![beam(&[19, 19]), beam(&[2]), beam(&[18, 20]), beam(&[1, 3]), beam(&[19])];
        let mut scored = score_step(&roles, &synthetic::prompt(), &p, Ranking::Augmented, batch).await.unwrap();
        rank(&mut scored);
        let safe: Vec<bool> = scored.iter().map(|b| b.safe_now()).collect();
        assert_eq!(safe, vec![true, true, false, false, false]);
        assert!(scored[1].score > scored[2].score);
        // Among unsafe ones, the least violating first; unsafe ones never asked the reward model.
        assert_eq!(scored[2].z, -0.5);
        assert_eq!(scored[4].z, -1.5);
        assert_eq!(scored[4].score, -1e4 - 1.5);
        assert!(scored[2..].iter().all(|b| b.reward.is_none()));
        assert_eq!(scored[0].reward, Some(2.0));
    }

    #[tokio::test]
    async fn each_step_keeps_the_top_k_candidates() {
        let policy = Arc::new(SyntheticPolicy::new());
        let roles = synthetic::roles(policy.clone(), &[]);
        let p = params(8, 3, 2, 6);
        let (out, steps) = search(Method::InferenceGuard, &p, &roles).await;
        assert_eq!(steps.len(), 3);
        let calls = policy.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].prefixes.len(), 1);
        assert_eq!(calls[0].prefixes[0].children, 8);
        // Step 2 extends exactly the 3 best candidates of step 1 (all safe: by reward), 8 children split 3/3/2.
        let mut first: Vec<Vec<i32>> = replay(&policy, &calls[0]).into_iter().map(|c| c.token_ids).collect();
        first.sort_by(|a, b| mean_id(&text_of(b)).total_cmp(&mean_id(&text_of(a))));
        let extended: Vec<Vec<i32>> = calls[1].prefixes.iter().map(|x| x.token_ids[3..].to_vec()).collect();
        assert_eq!(extended, first[..3].to_vec());
        assert_eq!(calls[1].prefixes.iter().map(|x| x.children).collect::<Vec<_>>(), vec![3, 3, 2]);
        assert!(steps.iter().all(|s| s.live_beams + s.finished_beams <= 3));
        assert_eq!(out.token_ids.len(), 6);
        assert_eq!(out.candidates, 24);
        assert_eq!(out.generated_tokens, 8 * 2 * 3);
        assert!(out.safe);
    }

    #[tokio::test]
    async fn z_and_min_z_follow_the_cost_along_the_response() {
        // One path (N = K = 1), one token per step; token 20 lowers the cost, token 5 raises it.
        let policy = Arc::new(SyntheticPolicy::new());
        let roles = synthetic::roles_with(policy.clone(), SyntheticCost { bad: (1..=10).collect(), good: vec![20] });
        let p = Params { safety_budget: 2.0, ..params(1, 1, 1, 12) };
        let (out, steps) = search(Method::BeamAugmented, &p, &roles).await;
        let zs: Vec<f64> = steps.iter().map(|s| s.best_z.unwrap()).collect();
        assert_eq!(out.z, *zs.last().unwrap());
        assert_eq!(out.z, 2.0 - out.cost);
        let lowest = zs.iter().copied().fold(2.0, f64::min);
        assert_eq!(out.min_z, lowest);
        assert_eq!(out.safe, out.cost <= 2.0);
    }

    #[tokio::test]
    async fn resampling_runs_only_when_every_candidate_is_unsafe() {
        // Nothing unsafe: no resampling.
        let policy = Arc::new(SyntheticPolicy::new());
        let (out, _) = search(Method::InferenceGuard, &params(4, 2, 2, 4), &synthetic::roles(policy.clone(), &[])).await;
        assert_eq!(out.resample_rounds, 0);
        assert_eq!(policy.calls.lock().unwrap().len(), 2);

        // The policy's favourite token is unsafe, and a bias moves it off: one round per step fixes it.
        let policy = Arc::new(SyntheticPolicy { favourite: Some(1), ..SyntheticPolicy::new() });
        let (out, steps) = search(Method::InferenceGuard, &params(4, 2, 2, 4), &synthetic::roles(policy.clone(), &[1])).await;
        assert_eq!(out.resample_rounds, 2);
        assert!(steps.iter().all(|s| s.resample_rounds == 1 && s.safe_fraction == Some(1.0)));
        assert!(out.safe && !out.token_ids.contains(&1));
        let calls = policy.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[1].prefixes[0].biases, vec![(1, -10.0)], "the unsafe children's tokens are pushed down");

        // A policy that resampling cannot fix: exactly max_resamples rounds, biases cumulative, and the
        // unsafe answer is reported as unsafe.
        let policy = Arc::new(SyntheticPolicy { favourite: Some(1), stubborn: true, ..SyntheticPolicy::new() });
        let p = Params { max_resamples: 3, ..params(4, 2, 2, 4) };
        let (out, steps) = search(Method::InferenceGuard, &p, &synthetic::roles(policy.clone(), &[1])).await;
        assert_eq!(out.resample_rounds, 6);
        assert!(steps.iter().all(|s| s.resample_rounds == 3 && s.safe_fraction == Some(0.0)));
        assert_eq!(steps[0].candidates, 16);
        assert!(!out.safe);
        let calls = policy.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 8);
        assert_eq!(calls[3].prefixes[0].biases, vec![(1, -30.0)], "beta per round, cumulative");

        // Baselines never resample.
        let policy = Arc::new(SyntheticPolicy { favourite: Some(1), ..SyntheticPolicy::new() });
        let (out, _) = search(Method::BeamAugmented, &params(4, 2, 2, 4), &synthetic::roles(policy.clone(), &[1])).await;
        assert_eq!(out.resample_rounds, 0);
        assert_eq!(policy.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_answer_is_the_best_safe_response_when_one_exists() {
        let bad = [3, 4, 5, 6, 7];
        let policy = Arc::new(SyntheticPolicy::new());
        let roles = synthetic::roles(policy.clone(), &bad);
        let p = params(8, 8, 4, 4);
        let (out, _) = search(Method::BonAugmented, &p, &roles).await;
        let samples: Vec<String> = replay(&policy, &policy.calls.lock().unwrap()[0]).iter().map(|c| c.text.clone()).collect();
        let cost = |t: &str| t.split_whitespace().filter(|w| bad.iter().any(|b| *w == format!("w{b}"))).count() as f64 - 0.5;
        let safe: Vec<&String> = samples.iter().filter(|t| cost(t) <= 0.0).collect();
        assert!(!safe.is_empty() && safe.len() < samples.len(), "the seed should give a mix: {samples:?}");
        let best = safe.iter().max_by(|a, b| mean_id(a).total_cmp(&mean_id(b))).unwrap();
        assert_eq!(&&out.text, best);
        assert!(out.safe);
        assert_eq!((out.reward, out.cost), (mean_id(best), -0.5));
        // Best-of-N Lagrangian: argmax R - λC over the same samples.
        let (out, _) = search(Method::BonLagrangian, &p, &roles).await;
        let lag = |t: &String| mean_id(t) - 5.0 * cost(t);
        assert_eq!(&out.text, samples.iter().max_by(|a, b| lag(a).total_cmp(&lag(b))).unwrap());
        // No safe sample: the least unsafe (highest z) is returned, marked unsafe.
        let roles = synthetic::roles(policy.clone(), &(1..=20).collect::<Vec<_>>());
        let (out, _) = search(Method::BonAugmented, &p, &roles).await;
        assert!(!out.safe);
        assert_eq!(out.z, -out.cost);
    }

    #[tokio::test]
    async fn best_of_n_continues_each_sample_once_when_some_stop_early() {
        let policy = Arc::new(SyntheticPolicy { stop_every: 4, ..SyntheticPolicy::new() });
        let roles = synthetic::roles(policy.clone(), &[]);
        search(Method::BonAugmented, &params(8, 8, 2, 8), &roles).await;
        let calls = policy.calls.lock().unwrap().clone();
        assert_eq!(calls[0].prefixes[0].children, 8);
        assert!(calls.len() > 1 && calls[1..].iter().all(|c| c.prefixes.iter().all(|p| p.children == 1)));
        let mut seen: Vec<Vec<i32>> = calls[1..].iter().flat_map(|c| c.prefixes.iter().map(|p| p.token_ids.clone())).collect();
        let n = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "no sample is continued twice");
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_search() {
        let run = |seed| async move {
            let policy = Arc::new(SyntheticPolicy { stop_every: 7, ..SyntheticPolicy::new() });
            let roles = synthetic::roles(policy, &[2, 9]);
            search(Method::InferenceGuard, &Params { seed, ..params(6, 2, 3, 12) }, &roles).await.0
        };
        assert_eq!(run(5).await, run(5).await);
        assert_ne!(run(5).await.token_ids, run(6).await.token_ids);
    }

    #[tokio::test]
    async fn base_draws_one_sample_and_stops_at_a_stop_token() {
        let policy = Arc::new(SyntheticPolicy { stop_every: 3, ..SyntheticPolicy::new() });
        let roles = synthetic::roles(policy.clone(), &[]);
        let (out, steps) = search(Method::Base, &params(8, 2, 4, 64), &roles).await;
        assert_eq!(out.candidates as usize, steps.len());
        assert_eq!(out.finish, Finish::Stop);
        assert_eq!(*out.token_ids.last().unwrap(), 0);
        assert!(policy.calls.lock().unwrap().iter().all(|c| c.prefixes.len() == 1 && c.prefixes[0].children == 1));
    }
}
