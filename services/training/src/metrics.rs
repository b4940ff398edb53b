//! Evaluation metrics: ROC AUC, rates at a threshold, pairwise accuracy, calibration.

/// Area under the ROC curve of `scores` for binary `labels` (true = positive), computed as
/// the Mann–Whitney statistic: the probability that a random positive scores above a random
/// negative, ties counting one half. `None` when either class is empty or a score is NaN.
pub fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "auc: scores and labels differ in length");
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Midranks (1-based) over tie groups; sum of positive ranks gives U.
    let mut rank_sum_pos = 0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let midrank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum_pos += midrank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Fraction of `scores` strictly above `threshold` (0 for an empty slice).
pub fn rate_above(scores: &[f32], threshold: f32) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

/// Fraction of pairs where the chosen item scores above the rejected one, ties counting
/// one half. `None` for no pairs.
pub fn pairwise_accuracy(chosen: &[f32], rejected: &[f32]) -> Option<f64> {
    assert_eq!(chosen.len(), rejected.len(), "pairwise_accuracy: lengths differ");
    if chosen.is_empty() {
        return None;
    }
    let wins: f64 = chosen
        .iter()
        .zip(rejected)
        .map(|(c, r)| {
            if c > r {
                1.0
            } else if c == r {
                0.5
            } else {
                0.0
            }
        })
        .sum();
    Some(wins / chosen.len() as f64)
}

/// The smallest score `t` among `scores` such that at most `max_rate` of them lie strictly
/// above it: the `(floor(max_rate * n) + 1)`-th largest score. Scoring `> t` as positive
/// then flags at most `floor(max_rate * n)` of these items. `None` for an empty slice.
pub fn threshold_for_rate(scores: &[f32], max_rate: f64) -> Option<f32> {
    if scores.is_empty() {
        return None;
    }
    let mut s = scores.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    let allowed = ((max_rate * s.len() as f64) + 1e-9).floor() as usize;
    Some(s[allowed.min(s.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_hand_made() {
        // Perfect, inverted, and all-tied rankings.
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        // 2 positives {0.35, 0.8}, 2 negatives {0.1, 0.4}: pairs won 0.35>0.1, 0.8>0.1,
        // 0.8>0.4; lost 0.35<0.4 → 3/4.
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        // A tie between classes counts one half: pos {0.4, 0.9}, neg {0.4, 0.1} → 3.5/4.
        assert_eq!(auc(&[0.4, 0.9, 0.4, 0.1], &[true, true, false, false]), Some(0.875));
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auc(&[f32::NAN, 0.2], &[true, false]), None);
    }

    #[test]
    fn auc_matches_brute_force() {
        let scores = [0.3f32, -1.0, 2.0, 0.3, 0.3, 5.0, -2.0, 0.0, 1.0];
        let labels = [true, false, true, false, true, true, false, false, false];
        let mut num = 0.0;
        let mut den = 0.0;
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] && !labels[j] {
                    den += 1.0;
                    num += if scores[i] > scores[j] { 1.0 } else if scores[i] == scores[j] { 0.5 } else { 0.0 };
                }
            }
        }
        assert!((auc(&scores, &labels).unwrap() - num / den).abs() < 1e-12);
    }

    #[test]
    fn pairwise_accuracy_hand_made() {
        assert_eq!(pairwise_accuracy(&[1.0, 2.0, 3.0, 0.0], &[0.0, 3.0, 3.0, -1.0]), Some(2.5 / 4.0));
        assert_eq!(pairwise_accuracy(&[], &[]), None);
    }

    #[test]
    fn threshold_keeps_rate() {
        let s: Vec<f32> = (1..=20).map(|i| i as f32).collect();
        // 10% of 20 = 2 allowed above: the 3rd largest, 18.
        let t = threshold_for_rate(&s, 0.1).unwrap();
        assert_eq!(t, 18.0);
        assert_eq!(rate_above(&s, t), 0.1);
        // 10% of 9 = 0 allowed above: the maximum.
        let t = threshold_for_rate(&s[..9], 0.1).unwrap();
        assert_eq!(t, 9.0);
        assert_eq!(rate_above(&s[..9], t), 0.0);
        assert_eq!(rate_above(&[], 0.0), 0.0);
        assert_eq!(threshold_for_rate(&[], 0.1), None);
    }
}
