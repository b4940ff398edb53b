//! Checks of what roles answer. A replica may be buggy, out of date or hostile: an index
//! out of range, a stream cut short, a count that does not match, a NaN must fail the call
//! (so that another replica is tried, or the error names the role) rather than index out
//! of bounds, wrap, or let a search narrow silently.

use std::collections::HashSet;

use ig_proto::v1 as pb;

/// Why a reply was refused.
pub type BadReply = String;

/// `got` results where `asked` were asked for.
pub fn count(what: &str, asked: usize, got: usize) -> Result<(), BadReply> {
    if asked == got {
        Ok(())
    } else {
        Err(format!("asked for {asked} {what}, got {got}"))
    }
}

/// Every value finite.
pub fn finite(what: &str, values: impl IntoIterator<Item = f64>) -> Result<(), BadReply> {
    match values.into_iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(format!("{what}[{i}] is {v}, not a finite number")),
        None => Ok(()),
    }
}

/// A latent of the policy's `dim`, all finite.
pub fn latent(what: &str, latent: Option<&pb::Latent>, dim: usize) -> Result<(), BadReply> {
    let Some(l) = latent else { return Err(format!("{what} is missing")) };
    if l.values.len() != dim {
        return Err(format!("{what} has {} values, the policy's latent_dim is {dim}", l.values.len()));
    }
    finite(what, l.values.iter().map(|&v| f64::from(v)))
}

/// A token id of a vocabulary of `vocab` ids.
pub fn token(what: &str, id: i32, vocab: usize) -> Result<(), BadReply> {
    if usize::try_from(id).is_ok_and(|i| i < vocab) {
        Ok(())
    } else {
        Err(format!("{what} {id} is outside the vocabulary 0..{vocab}"))
    }
}

/// One TopKNext result: ids and logits paired, at most `k`, ids in the vocabulary, no NaN
/// logit (−∞ is a masked token).
pub fn next_tokens(i: usize, n: &pb::NextTokens, k: usize, vocab: usize) -> Result<(), BadReply> {
    if n.token_ids.len() != n.logits.len() || n.token_ids.is_empty() || n.token_ids.len() > k {
        return Err(format!("results[{i}] has {} token ids and {} logits (asked for k = {k})", n.token_ids.len(), n.logits.len()));
    }
    for &id in &n.token_ids {
        token(&format!("results[{i}].token_ids"), id, vocab)?;
    }
    match n.logits.iter().position(|l| l.is_nan()) {
        Some(j) => Err(format!("results[{i}].logits[{j}] is NaN")),
        None => Ok(()),
    }
}

/// What one ExtendChunk stream must deliver, checked message by message: every
/// candidate once, of a prefix and child that were asked for, 1 to `chunk_tokens` ids in
/// the vocabulary, its latent when latents were asked for, then the stats message last.
#[derive(Debug, Clone)]
pub struct ExtendCheck {
    children: Vec<usize>,
    chunk_tokens: usize,
    vocab: usize,
    latent_dim: Option<usize>,
    seen: HashSet<(usize, usize)>,
    stats: bool,
}

impl ExtendCheck {
    /// A stream for prefixes with these `children` counts.
    pub fn new(children: Vec<usize>, chunk_tokens: usize, vocab: usize, latent_dim: Option<usize>) -> Self {
        Self { children, chunk_tokens, vocab, latent_dim, seen: HashSet::new(), stats: false }
    }

    fn asked(&self) -> usize {
        self.children.iter().sum()
    }

    /// One message of the stream.
    pub fn message(&mut self, msg: &pb::ExtendChunkResponse) -> Result<(), BadReply> {
        if self.stats {
            return Err("a message came after the stats message".into());
        }
        for c in &msg.candidates {
            let prefix = usize::try_from(c.prefix_index)
                .ok()
                .filter(|&p| p < self.children.len())
                .ok_or_else(|| format!("candidate prefix_index {} is outside 0..{}", c.prefix_index, self.children.len()))?;
            let child = usize::try_from(c.child_index)
                .ok()
                .filter(|&k| k < self.children[prefix])
                .ok_or_else(|| format!("candidate child_index {} of prefix {prefix} is outside 0..{}", c.child_index, self.children[prefix]))?;
            if !self.seen.insert((prefix, child)) {
                return Err(format!("candidate ({prefix}, {child}) came twice"));
            }
            if c.token_ids.is_empty() || c.token_ids.len() > self.chunk_tokens {
                return Err(format!("candidate ({prefix}, {child}) has {} token ids (chunk_tokens {})", c.token_ids.len(), self.chunk_tokens));
            }
            for &id in &c.token_ids {
                token(&format!("candidate ({prefix}, {child}) token id"), id, self.vocab)?;
            }
            if let Some(dim) = self.latent_dim {
                latent(&format!("the latent of candidate ({prefix}, {child})"), c.latent.as_ref(), dim)?;
            }
        }
        if msg.stats.is_some() {
            self.stats = true;
            if self.seen.len() != self.asked() {
                return Err(format!("the stats message came after {} of {} candidates", self.seen.len(), self.asked()));
            }
        }
        Ok(())
    }

    /// The end of the stream.
    pub fn end(&self) -> Result<(), BadReply> {
        if self.stats {
            Ok(())
        } else {
            Err(format!("the stream ended without its stats message, after {} of {} candidates", self.seen.len(), self.asked()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(prefix: i32, child: i32, ids: Vec<i32>, latent: Option<Vec<f32>>) -> pb::Candidate {
        pb::Candidate { prefix_index: prefix, child_index: child, token_ids: ids, latent: latent.map(|values| pb::Latent { values }), ..Default::default() }
    }

    fn msg(candidates: Vec<pb::Candidate>, stats: bool) -> pb::ExtendChunkResponse {
        pb::ExtendChunkResponse { candidates, stats: stats.then(pb::ExtendChunkStats::default) }
    }

    #[test]
    fn a_whole_stream_passes() {
        let mut c = ExtendCheck::new(vec![2, 1], 4, 100, Some(2));
        c.message(&msg(vec![cand(0, 1, vec![5], Some(vec![0.0, 1.0]))], false)).unwrap();
        c.message(&msg(vec![cand(0, 0, vec![5, 6], Some(vec![0.0, 1.0])), cand(1, 0, vec![7, 8, 9, 10], Some(vec![1.0, 2.0]))], false)).unwrap();
        c.message(&msg(vec![], true)).unwrap();
        c.end().unwrap();
    }

    #[test]
    fn every_kind_of_bad_candidate_is_named() {
        let cases = [
            (cand(2, 0, vec![1], None), "prefix_index 2 is outside 0..2"),
            (cand(-1, 0, vec![1], None), "prefix_index -1"),
            (cand(1, 1, vec![1], None), "child_index 1 of prefix 1 is outside 0..1"),
            (cand(0, 0, vec![], None), "has 0 token ids"),
            (cand(0, 0, vec![1; 5], None), "has 5 token ids (chunk_tokens 4)"),
            (cand(0, 0, vec![100], None), "token id 100 is outside the vocabulary 0..100"),
        ];
        for (bad, expected) in cases {
            let err = ExtendCheck::new(vec![2, 1], 4, 100, None).message(&msg(vec![bad], false)).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        let mut c = ExtendCheck::new(vec![2, 1], 4, 100, Some(2));
        let err = c.message(&msg(vec![cand(0, 0, vec![1], Some(vec![f32::NAN, 0.0]))], false)).unwrap_err();
        assert!(err.contains("[0] is NaN"), "{err}");
        let err = c.message(&msg(vec![cand(0, 1, vec![1], Some(vec![0.0]))], false)).unwrap_err();
        assert!(err.contains("has 1 values, the policy's latent_dim is 2"), "{err}");
    }

    #[test]
    fn duplicates_missing_candidates_and_a_missing_stats_message_fail() {
        let mut c = ExtendCheck::new(vec![2], 4, 100, None);
        c.message(&msg(vec![cand(0, 0, vec![1], None)], false)).unwrap();
        assert!(c.message(&msg(vec![cand(0, 0, vec![1], None)], false)).unwrap_err().contains("came twice"));
        assert!(c.end().unwrap_err().contains("without its stats message, after 1 of 2"));
        assert!(c.message(&msg(vec![], true)).unwrap_err().contains("after 1 of 2 candidates"));
        assert!(c.message(&msg(vec![], false)).unwrap_err().contains("after the stats message"));
    }

    #[test]
    fn counts_numbers_and_next_tokens() {
        assert!(count("scores", 3, 3).is_ok());
        assert_eq!(count("scores", 3, 2).unwrap_err(), "asked for 3 scores, got 2");
        assert!(finite("values", [1.0, f64::INFINITY]).unwrap_err().contains("values[1] is inf"));
        let n = pb::NextTokens { token_ids: vec![1, 2], logits: vec![0.0, f32::NEG_INFINITY], ..Default::default() };
        next_tokens(0, &n, 2, 10).unwrap();
        assert!(next_tokens(0, &n, 1, 10).is_err());
        let nan = pb::NextTokens { token_ids: vec![1], logits: vec![f32::NAN], ..Default::default() };
        assert!(next_tokens(3, &nan, 1, 10).unwrap_err().contains("results[3].logits[0] is NaN"));
        let out = pb::NextTokens { token_ids: vec![10], logits: vec![0.0], ..Default::default() };
        assert!(next_tokens(0, &out, 1, 10).unwrap_err().contains("outside the vocabulary"));
    }
}
