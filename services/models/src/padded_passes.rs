//! Independent token sequences (the items a causal scorer reads) through a
//! causal trunk in few segments.
//!
//! Each segment of a forward pass has its own attention kernels in every
//! layer, so one segment per item makes a scoring call of 128 candidates
//! launch ~128 x layers x ~15 kernels: on a GPU that, not the arithmetic,
//! sets its time. Here sequences are sorted by length and cut into buckets
//! that are right-padded to their longest member, each bucket one multi-row
//! segment. Causal attention never lets a position see a later one, so the
//! padding changes no real position's state; a bucket closes when its padding
//! would pass [`MAX_PADDING_EIGHTHS`]/8 of its real tokens.
//!
//! On a CPU the opposite holds: a segment costs little, one item's attention
//! scores stay in cache, and padded buckets scored 7% fewer items per second
//! (`bench scorer`, docs/benchmarks.md), so there each sequence keeps its own
//! segment ([`rows_per_segment`]).

use candle_core::{Device, Tensor};

use crate::causal_lm::{CausalLm, Positions, Segment};
use crate::Result;

/// A bucket's padded tokens may exceed its real tokens by at most this many
/// eighths (1/8: at most ~11% of a pass is padding).
pub const MAX_PADDING_EIGHTHS: usize = 1;

/// Rows one padded segment may hold on `device`: one on a CPU, no bound on an
/// accelerator.
pub fn rows_per_segment(device: &Device) -> usize {
    if device.is_cpu() {
        1
    } else {
        usize::MAX
    }
}

/// Sequences padded to one length and run as one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bucket {
    /// Indices into the caller's sequences, longest first.
    items: Vec<usize>,
    /// The longest member's length: every row's length in the segment.
    width: usize,
}

/// The sequences one forward pass runs, as padded buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedPass {
    buckets: Vec<Bucket>,
}

impl PaddedPass {
    /// Indices of this pass's sequences, in the order [`CausalLm::hidden_of_pass`]
    /// returns their positions.
    pub fn items(&self) -> impl Iterator<Item = usize> + '_ {
        self.buckets.iter().flat_map(|b| b.items.iter().copied())
    }

    /// Token slots the pass computes, padding included.
    pub fn padded_tokens(&self) -> usize {
        self.buckets.iter().map(|b| b.items.len() * b.width).sum()
    }

    /// Segments (attention launches per layer) the pass runs.
    pub fn segments(&self) -> usize {
        self.buckets.len()
    }
}

/// Plans passes of at most `max_pass_tokens` padded tokens (a sequence longer
/// than that runs alone) over sequences of the given lengths, longest first,
/// with at most `max_rows` sequences per segment. Empty sequences are left out.
pub fn plan_passes(lengths: &[usize], max_pass_tokens: usize, max_rows: usize) -> Vec<PaddedPass> {
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut passes: Vec<PaddedPass> = Vec::new();
    let mut pass_tokens = 0;
    let mut real = 0; // real tokens of the open bucket
    for i in order {
        let len = lengths[i];
        let Some(pass) = passes.last_mut().filter(|_| pass_tokens + len <= max_pass_tokens) else {
            passes.push(PaddedPass { buckets: vec![Bucket { items: vec![i], width: len }] });
            (pass_tokens, real) = (len, len);
            continue;
        };
        let bucket = pass.buckets.last_mut().expect("a pass has a bucket");
        let padded = (bucket.items.len() + 1) * bucket.width;
        let fits = bucket.items.len() < max_rows && pass_tokens + bucket.width <= max_pass_tokens;
        if fits && padded * 8 <= (real + len) * (8 + MAX_PADDING_EIGHTHS) {
            bucket.items.push(i);
            pass_tokens += bucket.width;
            real += len;
        } else {
            pass.buckets.push(Bucket { items: vec![i], width: len });
            pass_tokens += len;
            real = len;
        }
    }
    passes
}

impl CausalLm {
    /// Runs a planned pass from empty caches and returns the post-norm hidden
    /// states (f32) of every real position of its sequences: sequence by
    /// sequence in [`PaddedPass::items`] order, each's positions in order.
    pub fn hidden_of_pass(&self, pass: &PaddedPass, sequences: &[&[u32]]) -> Result<Tensor> {
        let padded: Vec<Vec<u32>> = pass
            .buckets
            .iter()
            .map(|b| {
                let mut tokens = Vec::with_capacity(b.items.len() * b.width);
                for &i in &b.items {
                    tokens.extend_from_slice(sequences[i]);
                    // Any valid id: padding sits after the real positions, which never see it.
                    tokens.resize(tokens.len() + b.width - sequences[i].len(), 0);
                }
                tokens
            })
            .collect();
        let mut caches: Vec<_> = pass.buckets.iter().map(|_| self.new_cache()).collect();
        let mut segments: Vec<Segment<'_>> = pass
            .buckets
            .iter()
            .zip(&padded)
            .zip(caches.iter_mut())
            .map(|((b, tokens), cache)| Segment { tokens, rows: b.items.len(), cache })
            .collect();
        let hidden = self.hidden_segments(&mut segments, Positions::All)?;
        if pass.buckets.iter().all(|b| b.items.iter().all(|&i| sequences[i].len() == b.width)) {
            return Ok(hidden);
        }
        let mut real: Vec<u32> = Vec::with_capacity(pass.padded_tokens());
        let mut at = 0;
        for b in &pass.buckets {
            for &i in &b.items {
                real.extend((at..at + sequences[i].len()).map(|p| p as u32));
                at += b.width;
            }
        }
        let n = real.len();
        Ok(hidden.index_select(&Tensor::from_vec(real, n, hidden.device())?, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal_lm::{Architecture, WeightDtype};
    use crate::tiny_checkpoint::{write_tiny_checkpoint, TinySpec};
    use candle_core::Device;

    /// Padded into shared segments, each sequence's states are what it gets alone.
    #[test]
    fn padded_segments_give_each_sequence_its_own_states() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::ModelError::Io(e.to_string()))?;
        let ckpt = write_tiny_checkpoint(&TinySpec::new(Architecture::Qwen3), dir.path())?;
        let model = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu)?;
        let seqs: Vec<Vec<u32>> = [17, 18, 16, 17, 5, 18].iter().enumerate().map(|(k, &n)| (0..n).map(|p| (k * 31 + p * 7) as u32 % 200 + 1).collect()).collect();
        let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let passes = plan_passes(&lengths, 4096, usize::MAX);
        assert_eq!((passes.len(), passes[0].segments()), (1, 2), "the five long sequences share a segment; 5 tokens run apart");
        let got = model.hidden_of_pass(&passes[0], &seqs)?.to_vec2::<f32>()?;
        let mut row = 0;
        for i in passes[0].items() {
            let alone = model.hidden_segments(&mut [Segment { tokens: seqs[i], rows: 1, cache: &mut model.new_cache() }], Positions::All)?;
            for want in alone.to_vec2::<f32>()? {
                let d = got[row].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d < 1e-5, "sequence {i}: position differs by {d}");
                row += 1;
            }
        }
        assert_eq!(row, got.len());
        Ok(())
    }

    fn shape(passes: &[PaddedPass]) -> Vec<Vec<(Vec<usize>, usize)>> {
        passes.iter().map(|p| p.buckets.iter().map(|b| (b.items.clone(), b.width)).collect()).collect()
    }

    #[test]
    fn similar_lengths_share_a_bucket_and_passes_stay_bounded() {
        // 10, 10, 9, 9 pad to 40 slots for 38 tokens; 5 would pad to 50 for 43: its own bucket.
        let passes = plan_passes(&[9, 10, 5, 10, 9], 100, usize::MAX);
        assert_eq!(shape(&passes), vec![vec![(vec![1, 3, 0, 4], 10), (vec![2], 5)]]);
        assert_eq!(passes[0].padded_tokens(), 45);
        assert_eq!(passes[0].items().collect::<Vec<_>>(), vec![1, 3, 0, 4, 2]);
        // A 20-token budget: two rows of 10 per pass; a longer sequence runs alone.
        let passes = plan_passes(&[10, 10, 10, 30, 0], 20, usize::MAX);
        assert_eq!(shape(&passes), vec![vec![(vec![3], 30)], vec![(vec![0, 1], 10)], vec![(vec![2], 10)]]);
        assert!(plan_passes(&[], 10, usize::MAX).is_empty());
        // One row per segment (a CPU): no padding, passes as before.
        let passes = plan_passes(&[9, 10, 5], 100, 1);
        assert_eq!(shape(&passes), vec![vec![(vec![1], 10), (vec![0], 9), (vec![2], 5)]]);
        assert_eq!(rows_per_segment(&Device::Cpu), 1);
    }
}
