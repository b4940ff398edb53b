//! Independent token sequences (the items a causal scorer reads) through a
//! causal trunk: shared prefixes computed once, few segments.
//!
//! A search scores the children of each beam together: the children of one
//! beam share the template, the prompt and the beam's response so far, and
//! differ only in their last chunk. Sequences sorted by their tokens fall into
//! groups with a long common prefix; each group's prefix runs once, as one
//! row, and its members' remaining tokens then run on copies of that prefix's
//! keys and values. Causal attention makes a position's state depend on the
//! tokens up to it only, so every state is what the whole sequence alone
//! gives (up to the rounding of differently shaped matmuls).
//!
//! Each segment of a forward pass has its own attention kernels in every
//! layer; on a GPU those launches, not the arithmetic, bound a pass of many
//! short segments. So a group's members run as one segment, right-padded to
//! the longest (causal attention keeps the padding out of every real
//! position), and on an accelerator sequences that share no prefix are
//! padded into buckets of similar length too ([`rows_per_segment`]). On a CPU
//! a segment costs little and padded buckets measured 7% slower
//! (docs/benchmarks.md), so there such sequences keep a segment each.

use candle_core::{Device, Tensor};
use ig_core::RoleError;

use crate::causal_lm::{CausalLm, Positions, Segment};
use crate::kv_cache::KvCache;
use crate::{ModelError, Result};

/// A bucket's padded tokens may exceed its real tokens by at most this many
/// eighths (1/8: at most ~11% of the bucket is padding).
pub const MAX_PADDING_EIGHTHS: usize = 1;

/// A common prefix shorter than this is not worth a pass of its own.
pub const MIN_SHARED_TOKENS: usize = 16;

/// Rows one padded bucket of unrelated sequences may hold on `device`: one on
/// a CPU, no bound on an accelerator.
pub fn rows_per_segment(device: &Device) -> usize {
    if device.is_cpu() {
        1
    } else {
        usize::MAX
    }
}

/// Sequences run as one segment: their first `shared` tokens (the same in
/// all) once, then the rest of each, right-padded to `width`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    items: Vec<usize>,
    shared: usize,
    width: usize,
}

impl Unit {
    /// Token slots the unit computes, padding included.
    fn tokens(&self) -> usize {
        self.shared + self.items.len() * self.width
    }
}

/// Groups sequences (longest common prefixes first) into units: members of a
/// group share its prefix; sequences that share none are bucketed by length
/// with at most `max_rows` per bucket. A unit stays within `max_tokens` token
/// slots unless one sequence alone is longer (a large group is split, each
/// part running the prefix again), so no request can make one pass unbounded.
fn plan_units(seqs: &[&[u32]], max_rows: usize, max_tokens: usize) -> Vec<Unit> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by(|&a, &b| seqs[a].cmp(seqs[b]));
    let lcp = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    // Groups in token order: (members, their common prefix).
    let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
    for i in order {
        if let Some((members, common)) = groups.last_mut() {
            let last = *members.last().expect("a group has a member");
            let with = lcp(seqs[last], seqs[i]).min(*common);
            // Join while the tokens saved do not shrink: m members sharing p tokens save (m - 1) * p.
            // (Greedy: two beams' children may end up sharing only the prompt.)
            let saved_before = (members.len() - 1) * *common;
            if with >= MIN_SHARED_TOKENS && members.len() * with >= saved_before {
                members.push(i);
                *common = with;
                continue;
            }
        }
        groups.push((vec![i], seqs[i].len()));
    }
    let mut units = Vec::new();
    let mut alone: Vec<usize> = Vec::new();
    for (members, common) in groups {
        if members.len() == 1 {
            alone.push(members[0]);
            continue;
        }
        // Every member keeps at least its last token for the segment.
        let shared = members.iter().map(|&i| seqs[i].len() - 1).min().unwrap_or(0).min(common);
        let width = members.iter().map(|&i| seqs[i].len() - shared).max().unwrap_or(0);
        let per_unit = (max_tokens.saturating_sub(shared) / width).max(1);
        units.extend(members.chunks(per_unit).map(|part| Unit { items: part.to_vec(), shared, width }));
    }
    alone.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut real = 0;
    for i in alone {
        let len = seqs[i].len();
        if let Some(bucket) = units.last_mut().filter(|u| u.shared == 0) {
            let padded = (bucket.items.len() + 1) * bucket.width;
            if bucket.items.len() < max_rows && padded <= max_tokens && padded * 8 <= (real + len) * (8 + MAX_PADDING_EIGHTHS) {
                bucket.items.push(i);
                real += len;
                continue;
            }
        }
        units.push(Unit { items: vec![i], shared: 0, width: len });
        real = len;
    }
    units
}

/// Units packed into rounds of at most `max_tokens` token slots (a larger
/// unit runs alone); each round is a pass of shared prefixes, then one of the
/// rest.
fn plan_rounds(units: Vec<Unit>, max_tokens: usize) -> Vec<Vec<Unit>> {
    let mut rounds: Vec<Vec<Unit>> = Vec::new();
    let mut used = 0;
    for unit in units {
        match rounds.last_mut() {
            Some(round) if used + unit.tokens() <= max_tokens => {
                used += unit.tokens();
                round.push(unit);
            }
            _ => {
                used = unit.tokens();
                rounds.push(vec![unit]);
            }
        }
    }
    rounds
}

/// What a scoring pass plan does, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanSummary {
    /// Forward passes.
    pub passes: usize,
    /// Segments over all passes.
    pub segments: usize,
    /// Token slots computed, padding included.
    pub tokens: usize,
}

/// The passes [`CausalLm::hidden_at`] runs for these sequences.
pub fn summarize(seqs: &[&[u32]], max_pass_tokens: usize, max_rows: usize) -> PlanSummary {
    let mut s = PlanSummary::default();
    for round in plan_rounds(plan_units(seqs, max_rows, max_pass_tokens), max_pass_tokens) {
        let common = round_prefix(&round, seqs);
        let prefixes = round.iter().filter(|u| u.shared > common).count();
        s.passes += 1 + usize::from(prefixes > 0) + usize::from(common > 0);
        s.segments += prefixes + round.len() + usize::from(common > 0);
        s.tokens += round.iter().map(|u| u.tokens() - common.min(u.shared)).sum::<usize>() + common;
    }
    s
}

/// The prefix every group of a round shares (the prompt, under the children of
/// several beams), when there are two groups or more and it is worth a pass:
/// computed once for the round, then each group's own part on a copy.
fn round_prefix(round: &[Unit], seqs: &[&[u32]]) -> usize {
    let mut groups = round.iter().filter(|u| u.shared > 0);
    let Some(first) = groups.next() else { return 0 };
    let head = &seqs[first.items[0]][..first.shared];
    let mut common = head.len();
    let mut others = 0;
    for u in groups {
        let theirs = &seqs[u.items[0]][..u.shared];
        common = common.min(head.iter().zip(theirs).take_while(|(a, b)| a == b).count());
        others += 1;
    }
    if others > 0 && common >= MIN_SHARED_TOKENS {
        common
    } else {
        0
    }
}

impl CausalLm {
    /// The post-norm hidden states (f32) at the `wanted` positions of each
    /// sequence, sequence by sequence in order: `(total wanted, hidden)`.
    /// Runs in rounds of at most `max_pass_tokens` token slots (bounding
    /// activations and attention scores), calling `between_rounds` before each
    /// (a cancellation check).
    pub fn hidden_at(
        &self,
        seqs: &[&[u32]],
        wanted: &[Vec<usize>],
        max_pass_tokens: usize,
        between_rounds: &mut dyn FnMut() -> std::result::Result<(), RoleError>,
    ) -> std::result::Result<Tensor, RoleError> {
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(ModelError::Shape(format!("sequence {i} is empty")).into());
        }
        if let Some((i, p)) = wanted.iter().enumerate().find_map(|(i, w)| w.iter().find(|&&p| p >= seqs[i].len()).map(|&p| (i, p))) {
            return Err(ModelError::Shape(format!("position {p} of sequence {i}, which has {}", seqs[i].len())).into());
        }
        // Each round's selected rows, and where every wanted row of every sequence lands.
        let mut pieces: Vec<Tensor> = Vec::new();
        let mut at: Vec<Vec<u32>> = wanted.iter().map(|w| vec![0; w.len()]).collect();
        let mut base = 0u32;
        for round in plan_rounds(plan_units(seqs, rows_per_segment(self.device()), max_pass_tokens), max_pass_tokens) {
            between_rounds()?;
            let (selected, rows) = self.run_round(&round, seqs, wanted)?;
            for (i, k, row) in rows {
                at[i][k] = base + row;
            }
            base += selected.dim(0).map_err(ModelError::from)? as u32;
            pieces.push(selected);
        }
        let all = if pieces.len() == 1 { pieces.pop().expect("one piece") } else { Tensor::cat(&pieces, 0).map_err(ModelError::from)? };
        let order: Vec<u32> = at.into_iter().flatten().collect();
        let n = order.len();
        Ok(all.index_select(&Tensor::from_vec(order, n, self.device()).map_err(ModelError::from)?, 0).map_err(ModelError::from)?)
    }

    /// One round: the shared prefixes' pass, then the rest's. Returns the
    /// wanted rows it computed and, for each, (sequence, wanted index, row).
    #[allow(clippy::type_complexity)]
    fn run_round(&self, round: &[Unit], seqs: &[&[u32]], wanted: &[Vec<usize>]) -> Result<(Tensor, Vec<(usize, usize, u32)>)> {
        // The round's common prefix, once.
        let common = round_prefix(round, seqs);
        let mut common_cache = self.new_cache();
        let common_hidden = if common > 0 {
            let first = round.iter().find(|u| u.shared > 0).expect("a group under a common prefix");
            let segment = Segment { tokens: &seqs[first.items[0]][..common], rows: 1, cache: &mut common_cache };
            Some(self.hidden_segments(&mut [segment], Positions::All)?)
        } else {
            None
        };
        // Each group's prefix past it, one row each, on a copy of its cache (copied on write;
        // an empty cache is not shared, as writing to it would need it alone).
        let start = || if common > 0 { common_cache.clone() } else { self.new_cache() };
        let mut prefix_caches: Vec<KvCache> = round.iter().filter(|u| u.shared > 0).map(|_| start()).collect();
        let prefix_hidden = if round.iter().any(|u| u.shared > common) {
            let mut segments: Vec<Segment<'_>> = round
                .iter()
                .filter(|u| u.shared > 0)
                .zip(prefix_caches.iter_mut())
                .filter(|(u, _)| u.shared > common)
                .map(|(u, cache)| Segment { tokens: &seqs[u.items[0]][common..u.shared], rows: 1, cache })
                .collect();
            Some(self.hidden_segments(&mut segments, Positions::All)?)
        } else {
            None
        };
        // The rest: each unit one segment, its rows padded to its width.
        let padded: Vec<Vec<u32>> = round
            .iter()
            .map(|u| {
                let mut tokens = Vec::with_capacity(u.items.len() * u.width);
                for &i in &u.items {
                    tokens.extend_from_slice(&seqs[i][u.shared..]);
                    // Any valid id: padding sits after the real positions, which never see it.
                    tokens.resize(tokens.len() + u.width - (seqs[i].len() - u.shared), 0);
                }
                tokens
            })
            .collect();
        let mut prefixes = prefix_caches.iter();
        let mut caches: Vec<KvCache> = round
            .iter()
            .map(|u| {
                if u.shared == 0 {
                    return Ok(self.new_cache());
                }
                let prefix = prefixes.next().expect("a cache per shared prefix");
                KvCache::gather(&[(prefix, &vec![0; u.items.len()])], u.width)
            })
            .collect::<Result<_>>()?;
        let mut segments: Vec<Segment<'_>> = round
            .iter()
            .zip(&padded)
            .zip(caches.iter_mut())
            .map(|((u, tokens), cache)| Segment { tokens, rows: u.items.len(), cache })
            .collect();
        let rest_hidden = self.hidden_segments(&mut segments, Positions::All)?;
        drop(segments);
        // Rows to keep: from the common prefix's pass, a group prefix's, or the rest's.
        let mut picks: [Vec<u32>; 3] = Default::default();
        let mut rows = Vec::new();
        let (mut prefix_at, mut rest_at) = (0usize, 0usize);
        for u in round {
            for (r, &i) in u.items.iter().enumerate() {
                for (k, &p) in wanted[i].iter().enumerate() {
                    let (pass, row) = if p < common.min(u.shared) {
                        (0, p)
                    } else if p < u.shared {
                        (1, prefix_at + p - common)
                    } else {
                        (2, rest_at + r * u.width + p - u.shared)
                    };
                    rows.push((i, k, pass, picks[pass].len()));
                    picks[pass].push(row as u32);
                }
            }
            prefix_at += u.shared.saturating_sub(common);
            rest_at += u.items.len() * u.width;
        }
        let mut parts = Vec::new();
        let mut starts = [0u32; 3];
        let mut taken = 0u32;
        for (pass, hidden) in [common_hidden.as_ref(), prefix_hidden.as_ref(), Some(&rest_hidden)].into_iter().enumerate() {
            let idx = std::mem::take(&mut picks[pass]);
            starts[pass] = taken;
            let (Some(hidden), false) = (hidden, idx.is_empty()) else { continue };
            taken += idx.len() as u32;
            let n = idx.len();
            parts.push(hidden.index_select(&Tensor::from_vec(idx, n, hidden.device())?, 0)?);
        }
        let selected = if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(&parts, 0)? };
        let rows = rows.into_iter().map(|(i, k, pass, j)| (i, k, starts[pass] + j as u32)).collect();
        Ok((selected, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal_lm::{Architecture, WeightDtype};
    use crate::tiny_checkpoint::{write_tiny_checkpoint, TinySpec};

    fn shape(units: &[Unit]) -> Vec<(Vec<usize>, usize, usize)> {
        units.iter().map(|u| (u.items.clone(), u.shared, u.width)).collect()
    }

    /// `n` tokens: `head` common ones, then ones of `tail`'s own.
    fn seq(head: usize, tail: u32, n: usize) -> Vec<u32> {
        (0..n).map(|p| if p < head { p as u32 + 1 } else { 1000 * tail + p as u32 }).collect()
    }

    #[test]
    fn children_of_a_beam_share_its_prefix_and_strangers_pad_by_length() {
        // Two beams of 50 shared tokens with two children each (a prompt of 20 shared by all),
        // and three unrelated sequences of 10, 9 and 4 tokens.
        let beam = |b: u32, child: u32, n: usize| -> Vec<u32> {
            let mut s = seq(20, 0, 20);
            s.extend((0..30).map(|p| 50 * b + p));
            s.extend((0..n).map(|p| 1000 * (2 * b + child) + p as u32));
            s
        };
        let seqs = [beam(1, 0, 5), vec![7; 10], beam(2, 0, 6), beam(1, 1, 4), vec![8; 9], beam(2, 1, 6), vec![9; 4]];
        let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let units = plan_units(&seqs, usize::MAX, 4096);
        assert_eq!(shape(&units), vec![(vec![0, 3], 50, 5), (vec![2, 5], 50, 6), (vec![1, 4], 0, 10), (vec![6], 0, 4)]);
        // One row per bucket (a CPU): strangers alone, groups unchanged.
        let cpu = plan_units(&seqs, 1, 4096);
        assert_eq!(shape(&cpu)[3..], [(vec![4], 0, 9), (vec![6], 0, 4)]);
        // Rounds of at most 60 slots: 60 + 62 do not fit together.
        let rounds = plan_rounds(units, 60);
        assert_eq!(rounds.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 2]);
        let s = summarize(&seqs, 70, usize::MAX);
        assert_eq!((s.passes, s.segments, s.tokens), (5, 6, 60 + 62 + 20 + 4));
        // At 60 the second group (50 + 2 x 6) is split, each child running the prefix again.
        let s = summarize(&seqs, 60, usize::MAX);
        assert_eq!((s.passes, s.segments, s.tokens), (7, 8, 60 + 56 + 56 + 20 + 4));
    }

    #[test]
    fn a_common_prefix_too_short_or_a_whole_sequence_is_not_shared_past_the_last_token() {
        let (a, b) = (seq(8, 1, 20), seq(8, 2, 20));
        assert!(plan_units(&[&a, &b], usize::MAX, 4096).iter().all(|u| u.shared == 0), "8 tokens are not worth a pass");
        let (long, inside) = (seq(30, 1, 40), seq(30, 1, 30));
        assert_eq!(shape(&plan_units(&[&long, &inside], usize::MAX, 4096)), vec![(vec![1, 0], 29, 11)]);
    }

    #[test]
    fn no_unit_outgrows_a_pass_unless_one_sequence_does() {
        // 100 children of a 20-token prefix, 10 tokens each: 20 + 8 x 10 fit in 100 slots.
        let children: Vec<Vec<u32>> = (0..100).map(|c| (0..30).map(|p| if p < 20 { p + 1 } else { 1000 * (c + 1) + p }).collect()).collect();
        let seqs: Vec<&[u32]> = children.iter().map(Vec::as_slice).collect();
        let units = plan_units(&seqs, usize::MAX, 100);
        assert_eq!(units.len(), 13);
        assert!(units.iter().all(|u| u.shared == 20 && u.tokens() <= 100));
        assert_eq!(units.iter().map(|u| u.items.len()).sum::<usize>(), 100);
        // Strangers: buckets stay within the pass too; a longer sequence runs alone.
        let strangers: Vec<Vec<u32>> = (0..30).map(|k| vec![k + 1; 10]).chain([vec![99; 150]]).collect();
        let seqs: Vec<&[u32]> = strangers.iter().map(Vec::as_slice).collect();
        let units = plan_units(&seqs, usize::MAX, 100);
        assert_eq!(units[0].tokens(), 150);
        assert!(units[1..].iter().all(|u| u.tokens() <= 100 && u.shared == 0));
    }

    /// Shared prefixes and padding give each sequence its own states.
    #[test]
    fn each_sequence_gets_the_states_it_gets_alone() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ModelError::Io(e.to_string()))?;
        let ckpt = write_tiny_checkpoint(&TinySpec::new(Architecture::Qwen3), dir.path())?;
        let model = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu)?;
        let mut seqs: Vec<Vec<u32>> = (0..3).map(|c| (0..24).map(|p| if p < 20 { p + 1 } else { 100 + 10 * c + p }).collect()).collect();
        seqs.push((0..17).map(|p| 200 + p).collect());
        seqs.push((0..5).map(|p| 150 + p).collect());
        let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let s = summarize(&seqs, 4096, 1);
        assert_eq!((s.passes, s.segments), (2, 4), "the three share a prefix pass and a segment; two strangers apart");
        let wanted: Vec<Vec<usize>> = seqs.iter().map(|s| (0..s.len()).rev().collect()).collect();
        let got = model.hidden_at(&seqs, &wanted, 4096, &mut || Ok(())).map_err(|e| ModelError::Shape(e.to_string()))?.to_vec2::<f32>()?;
        let mut row = 0;
        for (i, s) in seqs.iter().enumerate() {
            let alone = model.hidden_segments(&mut [Segment { tokens: s, rows: 1, cache: &mut model.new_cache() }], Positions::All)?.to_vec2::<f32>()?;
            for &p in &wanted[i] {
                let d = got[row].iter().zip(&alone[p]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d < 1e-5, "sequence {i} position {p} differs by {d}");
                row += 1;
            }
        }
        assert_eq!(row, got.len());
        // Rounds too small for the group: the same states, more passes.
        let small = model.hidden_at(&seqs, &wanted, 30, &mut || Ok(())).map_err(|e| ModelError::Shape(e.to_string()))?.to_vec2::<f32>()?;
        let worst = small.iter().flatten().zip(got.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
        assert!(model.hidden_at(&seqs, &[vec![24], vec![], vec![], vec![], vec![]], 4096, &mut || Ok(())).is_err(), "position past the end");
        Ok(())
    }

    /// Two beams under one prompt, three children each: the prompt runs once for
    /// the round, each beam's own part once on a copy, the children on copies of that.
    #[test]
    fn a_prompt_under_several_beams_runs_once_and_states_stay_exact() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ModelError::Io(e.to_string()))?;
        let ckpt = write_tiny_checkpoint(&TinySpec::new(Architecture::Llama), dir.path())?;
        let model = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu)?;
        let child = |beam: u32, c: u32| -> Vec<u32> {
            (0..44).map(|p| if p < 20 { p + 1 } else if p < 40 { 30 + 20 * beam + p } else { 150 + 10 * (3 * beam + c) + p - 40 }).collect()
        };
        let mut seqs: Vec<Vec<u32>> = (0..2).flat_map(|b| (0..3).map(move |c| child(b, c))).collect();
        seqs.push((0..9).map(|p| 240 + p).collect());
        let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let s = summarize(&seqs, 4096, 1);
        assert_eq!((s.passes, s.segments), (3, 6), "prompt; two beams' parts; three segments");
        assert_eq!(s.tokens, 20 + 2 * (20 + 3 * 4) + 9);
        let every: Vec<Vec<usize>> = seqs.iter().map(|s| (0..s.len()).collect()).collect();
        let got = model.hidden_at(&seqs, &every, 4096, &mut || Ok(())).map_err(|e| ModelError::Shape(e.to_string()))?.to_vec2::<f32>()?;
        let mut row = 0;
        for (i, s) in seqs.iter().enumerate() {
            let alone = model.hidden_segments(&mut [Segment { tokens: s, rows: 1, cache: &mut model.new_cache() }], Positions::All)?.to_vec2::<f32>()?;
            for want in &alone {
                let d = got[row].iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d < 1e-5, "sequence {i}: a position differs by {d}");
                row += 1;
            }
        }
        Ok(())
    }
}
