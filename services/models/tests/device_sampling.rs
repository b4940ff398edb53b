//! The device sampler ([`ig_models::device_sampling`]) against the host sampler
//! ([`ig_models::sampling`]), run here on candle's CPU device: the same tensor ops a GPU
//! runs. Same uniform number per row → the same token: both sum masses in f64, so their
//! different orders of addition could only disagree within ~1e-15 of a boundary between
//! two tokens. Also the frequencies of the device's draws against the exact distribution.

use candle_core::{Device, Tensor};
use ig_core::policy::Sampling;
use ig_models::device_sampling::{sample_rows, Draws, MAX_HEAD};
use ig_models::sampling::{child_rng, log_sum_exp, sample_with_unit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn params(temperature: f32, top_p: f32, top_k: Option<usize>) -> Sampling {
    Sampling { temperature, top_p, top_k, seed: 0 }
}

/// `rows` rows of `vocab` logits: Gaussian with spread `scale`, optionally rounded to
/// multiples of `step` (quantized and half-precision logits tie often).
fn logits(rows: usize, vocab: usize, scale: f32, step: Option<f32>, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows)
        .map(|_| {
            (0..vocab)
                .map(|_| {
                    // Sum of uniforms: near-Gaussian, heavy enough head for a real nucleus.
                    let g: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * scale;
                    step.map_or(g, |s| (g / s).round() * s)
                })
                .collect()
        })
        .collect()
}

fn units(rows: usize, seed: u64) -> Vec<f32> {
    (0..rows).map(|r| child_rng(seed, 0, r).random::<f32>()).collect()
}

fn device_draws(rows: &[Vec<f32>], p: &Sampling, units: &[f32], biases: &[&[(u32, f32)]]) -> Draws {
    let flat: Vec<f32> = rows.concat();
    let t = Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap();
    sample_rows(&t, p, units, biases).unwrap()
}

fn host_draw(row: &[f32], p: &Sampling, unit: f32, biases: &[(u32, f32)]) -> (u32, f32) {
    let mut biased = row.to_vec();
    for &(id, b) in biases {
        biased[id as usize] += b;
    }
    let token = sample_with_unit(&biased, p, unit, &mut Vec::new());
    (token, row[token as usize] - log_sum_exp(row))
}

/// Device and host draws for the same rows and numbers: how many differ (a boundary
/// case of float rounding); log-probabilities of equal tokens agree.
fn compare(rows: &[Vec<f32>], p: &Sampling, units: &[f32], biases: &[&[(u32, f32)]]) -> (usize, Draws) {
    let draws = device_draws(rows, p, units, biases);
    let mut differ = 0;
    for (r, row) in rows.iter().enumerate() {
        let (token, logprob) = host_draw(row, p, units[r], biases[r]);
        if draws.tokens[r] != token {
            differ += 1;
            eprintln!("{p:?}: row {r} device {} host {token}", draws.tokens[r]);
        } else {
            assert!((draws.logprobs[r] - logprob).abs() < 1e-5, "{p:?}: row {r} logprob {} vs {logprob}", draws.logprobs[r]);
        }
    }
    (differ, draws)
}

#[test]
fn the_device_draws_what_the_host_draws() {
    let cases = [
        params(0.0, 1.0, None),
        params(1.0, 1.0, None),
        params(0.7, 1.0, None),
        params(1.0, 0.9, None),
        params(0.7, 0.9, None),
        params(1.0, 1.0, Some(40)),
        params(1.3, 0.5, Some(3)),
        params(1.0, 0.95, Some(200)),
    ];
    let mut total = 0;
    let mut differ = 0;
    for (vocab, scale, step, seed) in [(272, 4.0, None, 1), (49_152, 12.0, None, 2), (49_152, 12.0, Some(0.125), 3), (5_000, 1.0, None, 4)] {
        let rows = logits(24, vocab, scale, step, seed);
        let no_bias: Vec<&[(u32, f32)]> = vec![&[]; rows.len()];
        for (i, p) in cases.iter().enumerate() {
            let u = units(rows.len(), seed * 100 + i as u64);
            let (d, draws) = compare(&rows, p, &u, &no_bias);
            assert!(draws.tokens.iter().all(|&t| (t as usize) < vocab));
            differ += d;
            total += rows.len();
        }
    }
    assert_eq!(differ, 0, "{differ} of {total} draws differ from the host's");
}

#[test]
fn greedy_and_ties_are_exact() {
    // Rounded logits: many exact ties, including at the maximum.
    let rows = logits(32, 3000, 2.0, Some(0.5), 7);
    let no_bias: Vec<&[(u32, f32)]> = vec![&[]; rows.len()];
    for p in [params(0.0, 1.0, None), params(1.0, 1.0, Some(1)), params(1.0, 1e-6, None), params(1.0, 1.0, Some(17))] {
        let (differ, _) = compare(&rows, &p, &units(rows.len(), 11), &no_bias);
        assert_eq!(differ, 0, "{p:?}");
    }
}

#[test]
fn the_vocabulary_of_llama_3_goes_through_several_sorting_rounds() {
    let rows = logits(3, 128_256, 12.0, None, 8);
    let no_bias: Vec<&[(u32, f32)]> = vec![&[]; rows.len()];
    for p in [params(1.0, 0.9, None), params(0.8, 1.0, Some(50)), params(1.0, 1.0, None)] {
        let (differ, draws) = compare(&rows, &p, &units(rows.len(), 12), &no_bias);
        assert_eq!(differ, 0, "{p:?}");
        assert_eq!(draws.host_rows, 0);
    }
}

#[test]
fn biases_are_applied_per_row_and_only_to_the_draw() {
    let rows = logits(4, 1000, 6.0, None, 9);
    let best: Vec<u32> = rows.iter().map(|r| ig_models::sampling::argmax(r) as u32).collect();
    // Row 0 forbids its best token, row 1 forces token 5, row 2 both, row 3 none.
    let b0 = [(best[0], -1e9f32)];
    let b1 = [(5u32, 1e4f32)];
    let b2 = [(best[2], -1e9f32), (7, 50.0), (7, 50.0)];
    let biases: Vec<&[(u32, f32)]> = vec![&b0, &b1, &b2, &[]];
    for p in [params(0.0, 1.0, None), params(1.0, 1.0, None), params(1.0, 0.9, None), params(1.0, 1.0, Some(10))] {
        let (differ, draws) = compare(&rows, &p, &units(4, 13), &biases);
        assert_eq!(differ, 0, "{p:?}");
        assert_ne!(draws.tokens[0], best[0]);
        assert_eq!(draws.tokens[1], 5);
        assert_eq!(draws.tokens[2], 7, "a repeated bias adds up");
        // The log-probability is the model's, not the biased distribution's.
        let lp = rows[1][5] - log_sum_exp(&rows[1]);
        assert!((draws.logprobs[1] - lp).abs() < 1e-4);
    }
    let bad: [(u32, f32); 1] = [(1000, 1.0)];
    let t = Tensor::from_vec(rows.concat(), (4, 1000), &Device::Cpu).unwrap();
    let err = sample_rows(&t, &params(1.0, 1.0, None), &units(4, 1), &[&bad, &[], &[], &[]]).unwrap_err();
    assert!(err.to_string().contains("token 1000"), "{err}");
}

#[test]
fn a_nucleus_wider_than_the_head_is_drawn_on_the_host() {
    // Near-flat over 5,000 tokens: a 0.95 nucleus holds ~4,750 of them.
    let rows = logits(6, 5000, 0.01, None, 10);
    let no_bias: Vec<&[(u32, f32)]> = vec![&[]; rows.len()];
    let (differ, draws) = compare(&rows, &params(1.0, 0.95, None), &units(6, 14), &no_bias);
    assert_eq!((differ, draws.host_rows), (0, 6));
    // top_k above the head: every row on the host.
    let (differ, draws) = compare(&rows, &params(1.0, 1.0, Some(MAX_HEAD + 1)), &units(6, 15), &no_bias);
    assert_eq!((differ, draws.host_rows), (0, 6));
    // A peaked row next to a flat one: only the flat one goes back.
    let mut mixed = logits(1, 5000, 40.0, None, 11);
    mixed.push(rows[0].clone());
    let (differ, draws) = compare(&mixed, &params(1.0, 0.95, None), &units(2, 16), &no_bias[..2]);
    assert_eq!((differ, draws.host_rows), (0, 1));
}

/// Frequencies of device draws against the exact probabilities (20,000 rows).
#[test]
fn device_draws_follow_the_distribution() {
    let n = 20_000;
    let probs = [0.1f32, 0.2, 0.3, 0.4];
    let row: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let rows = vec![row; n];
    let no_bias: Vec<&[(u32, f32)]> = vec![&[]; n];
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let u: Vec<f32> = (0..n).map(|_| rng.random()).collect();
    // Full softmax; the 0.7 nucleus {3, 2} renormalised; top-2 at temperature 0.5 (p²).
    let cases: [(Sampling, [f64; 4]); 3] = [
        (params(1.0, 1.0, None), [0.1, 0.2, 0.3, 0.4]),
        (params(1.0, 0.7, None), [0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]),
        (params(0.5, 1.0, Some(2)), [0.0, 0.0, 9.0 / 25.0, 16.0 / 25.0]),
    ];
    for (p, want) in cases {
        let draws = device_draws(&rows, &p, &u, &no_bias);
        assert_eq!(draws.host_rows, 0);
        for (t, &w) in want.iter().enumerate() {
            let got = draws.tokens.iter().filter(|&&x| x as usize == t).count() as f64 / n as f64;
            // Four standard deviations of a binomial frequency.
            let sd = (w * (1.0 - w) / n as f64).sqrt();
            assert!((got - w).abs() <= 4.0 * sd + 1e-9, "{p:?}: token {t} {got} vs {w}");
        }
    }
}
