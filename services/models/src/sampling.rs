//! Drawing one token from a row of logits.
//!
//! Plain Rust over `&[f32]`: after the forward pass the logits are on the host
//! anyway, and per-row work (bias, temperature, top-k/top-p, the untempered
//! log-probability) is O(vocab) except for the nucleus cut, which sorts only
//! the head of the distribution.

use ig_core::policy::Sampling;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random stream of one child: a function of (seed, prefix, child) only,
/// so a child's tokens do not depend on its siblings or on batching.
pub fn child_rng(seed: u64, prefix_index: usize, child_index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((prefix_index as u64) << 32) | child_index as u64);
    rng
}

/// `log(sum(exp(logits)))`, computed stably.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    // Summed in f64: a 49k-term f32 sum is off by ~1e-4, and the device sampler sums in
    // another order.
    max + logits.iter().map(|&l| f64::from((l - max).exp())).sum::<f64>().ln() as f32
}

/// Index of the largest value (first one on ties).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// The random stream of one child positioned at its `draw`-th token: the
/// stream [`sample`] draws token `draw` from when it starts at token 0, since
/// every draw takes exactly one 32-bit word of the stream.
pub fn rng_at_draw(seed: u64, prefix_index: usize, child_index: usize, draw: u64) -> ChaCha8Rng {
    let mut rng = child_rng(seed, prefix_index, child_index);
    rng.set_word_pos(u128::from(draw));
    rng
}

/// Draws a token id from `logits` (already biased) with `params`, using `rng`.
/// `scratch` is reused across calls to avoid allocations.
///
/// Every call takes exactly one 32-bit word from `rng`, in every branch
/// (greedy included), so token `j` of a stream is drawn from word `j` and can
/// be drawn alone ([`rng_at_draw`]).
pub fn sample(logits: &[f32], params: &Sampling, rng: &mut ChaCha8Rng, scratch: &mut Vec<(f32, u32)>) -> u32 {
    // The one word of this draw, taken before any branch (`f32` takes one
    // `next_u32`).
    sample_with_unit(logits, params, rng.random::<f32>(), scratch)
}

/// [`sample`] with the draw's uniform number in `[0, 1)` given.
///
/// The token is the first one, in the walk order (token ids for a full softmax, most
/// likely first for a top-k/top-p head), at which the running mass reaches `unit` times
/// the kept mass. Masses are summed in f64: summed in any order they agree to ~1e-15, so
/// [`crate::device_sampling`], which sums in another order, draws the same tokens (in
/// f32 a 49k-token sum is off by ~1e-5, the mass of a tail token, and about one draw in
/// a hundred would differ).
pub fn sample_with_unit(logits: &[f32], params: &Sampling, unit: f32, scratch: &mut Vec<(f32, u32)>) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    let inv_t = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let cut_k = params.top_k.filter(|&k| k < logits.len());
    if cut_k.is_none() && params.top_p >= 1.0 {
        // Full softmax: one pass for the normaliser, one to find the draw.
        let total: f64 = logits.iter().map(|&l| f64::from(((l - max) * inv_t).exp())).sum();
        let target = draw_target(unit, total);
        let mut acc = 0f64;
        let mut last = 0;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) * inv_t).exp();
            if p > 0.0 {
                last = i;
            }
            acc += f64::from(p);
            if acc >= target {
                return i as u32;
            }
        }
        return last as u32;
    }
    // Keep the head of the distribution, most likely first.
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (((l - max) * inv_t).exp(), i as u32)));
    let total: f64 = scratch.iter().map(|p| f64::from(p.0)).sum();
    let by_prob = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let mut keep = cut_k.unwrap_or(scratch.len());
    if params.top_p < 1.0 {
        // Most nucleus cuts keep few tokens: try a small head before sorting all.
        keep = keep.min(1024.max(cut_k.unwrap_or(0)));
    }
    loop {
        let k = keep.min(scratch.len());
        if k < scratch.len() {
            scratch.select_nth_unstable_by(k - 1, by_prob);
        }
        let len = scratch.len();
        let head = &mut scratch[..k];
        head.sort_unstable_by(by_prob);
        // The nucleus: the shortest prefix of the head whose mass reaches top_p of the total.
        let mut n = k;
        let mut mass = 0f64;
        for (i, p) in head.iter().enumerate() {
            mass += f64::from(p.0);
            if params.top_p < 1.0 && mass >= f64::from(params.top_p) * total {
                n = i + 1;
                break;
            }
        }
        if params.top_p < 1.0 && n == k && mass < f64::from(params.top_p) * total && k < len && cut_k.is_none_or(|c| k < c) {
            keep = (k * 8).min(cut_k.unwrap_or(usize::MAX));
            continue; // the nucleus is wider than the head: widen and retry
        }
        let target = draw_target(unit, mass);
        let mut acc = 0f64;
        for p in &head[..n] {
            acc += f64::from(p.0);
            if acc >= target {
                return p.1;
            }
        }
        return head[n - 1].1;
    }
}

/// `unit · mass`, kept within `(0, mass]`: above 0 so a token of zero probability is never
/// reached, at most `mass` so rounding cannot run past the last token with probability.
pub(crate) fn draw_target(unit: f32, mass: f64) -> f64 {
    (f64::from(unit) * mass).max(f64::MIN_POSITIVE).min(mass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: Option<usize>) -> Sampling {
        Sampling { temperature, top_p, top_k, seed: 0 }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut rng = child_rng(1, 0, 0);
        assert_eq!(sample(&[0.1, 3.0, 2.9], &params(0.0, 1.0, None), &mut rng, &mut vec![]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_tiny_is_greedy() {
        let logits: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 5000) as f32 / 1000.0).collect();
        let best = argmax(&logits) as u32;
        for seed in 0..20 {
            let mut rng = child_rng(seed, 0, 0);
            assert_eq!(sample(&logits, &params(1.0, 1.0, Some(1)), &mut rng, &mut vec![]), best);
            assert_eq!(sample(&logits, &params(1.0, 1e-6, None), &mut rng, &mut vec![]), best);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75]
        let logits = [0f32, 3f32.ln()];
        let mut rng = child_rng(7, 0, 0);
        let n = 20_000;
        let ones = (0..n).filter(|_| sample(&logits, &params(1.0, 1.0, None), &mut rng, &mut vec![]) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn wide_nucleus_widens_the_head() {
        // Uniform over 4000 tokens: top_p 0.9 must be able to draw beyond the
        // first 1024 of the sorted head.
        let logits = vec![0f32; 4000];
        let mut rng = child_rng(3, 0, 0);
        let mut seen_high = false;
        for _ in 0..2000 {
            let id = sample(&logits, &params(1.0, 0.9, None), &mut rng, &mut vec![]);
            assert!(id < 3601, "{id} outside the 90% nucleus");
            seen_high |= id > 1024;
        }
        assert!(seen_high);
    }

    #[test]
    fn streams_differ_per_child_and_repeat_per_seed() {
        let a: Vec<u32> = (0..8).map(|_| child_rng(5, 1, 2).random()).collect();
        let b: Vec<u32> = (0..8).map(|_| child_rng(5, 1, 2).random()).collect();
        assert_eq!(a, b);
        assert_ne!(child_rng(5, 1, 2).random::<u64>(), child_rng(5, 1, 3).random::<u64>());
        assert_ne!(child_rng(5, 1, 2).random::<u64>(), child_rng(5, 2, 2).random::<u64>());
    }

    #[test]
    fn every_draw_takes_one_word_and_can_be_drawn_alone() {
        let logits: Vec<f32> = (0..3000).map(|i| ((i * 7919) % 3000) as f32 / 300.0).collect();
        let cases =
            [params(0.0, 1.0, None), params(1.0, 1.0, None), params(0.7, 1.0, Some(40)), params(1.0, 0.9, None), params(1.3, 0.5, Some(3))];
        for p in cases {
            let mut rng = child_rng(9, 0, 0);
            let mut scratch = vec![];
            let tokens: Vec<u32> = (0..70).map(|_| sample(&logits, &p, &mut rng, &mut scratch)).collect();
            assert_eq!(rng.get_word_pos(), 70, "{p:?}: one word per draw");
            for (j, &t) in tokens.iter().enumerate() {
                let mut alone = rng_at_draw(9, 0, 0, j as u64);
                assert_eq!(sample(&logits, &p, &mut alone, &mut scratch), t, "{p:?}: draw {j}");
            }
        }
    }

    #[test]
    fn log_sum_exp_is_stable() {
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
