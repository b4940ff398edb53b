//! A byte-bounded cache of computed prefixes.
//!
//! An entry is a group of rows that went through the model together (a
//! prompt, or the children of one prefix after a chunk): their KV cache, the
//! logits and hidden state at each row's last position, and each row's
//! tokens. A lookup finds the longest cached row that is a prefix of the
//! query, so the next chunk of a beam, a resampling round over the same
//! parents, or a new search over a known prompt skips the work already done.
//! Correctness never depends on it: a miss only costs time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::Tensor;

use crate::kv_cache::KvCache;
use crate::Result;

/// Rows that went through the model together.
#[derive(Debug, Clone)]
pub struct CachedGroup {
    /// Their KV cache (`rows` rows of `len` positions).
    pub kv: KvCache,
    /// `(rows, vocab)` f32 logits at each row's last position.
    pub logits: Tensor,
    /// `(rows, hidden)` f32 post-norm hidden state at each row's last position.
    pub hidden: Tensor,
    /// The `len` tokens of each row.
    pub rows: Vec<Arc<[u32]>>,
}

impl CachedGroup {
    fn size_bytes(&self) -> usize {
        let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
        self.kv.size_bytes() + t(&self.logits) + t(&self.hidden) + self.rows.iter().map(|r| r.len() * 4).sum::<usize>()
    }

    /// A group of the given rows of this one (copied).
    fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::new(idx.as_slice(), self.logits.device())?;
        Ok(Self {
            kv: self.kv.select_rows(rows)?,
            logits: self.logits.index_select(&idx, 0)?,
            hidden: self.hidden.index_select(&idx, 0)?,
            rows: rows.iter().map(|&r| self.rows[r].clone()).collect(),
        })
    }
}

/// Where a query's longest cached prefix lies.
#[derive(Debug, Clone)]
pub struct PrefixHit {
    /// The group holding it.
    pub group: Arc<CachedGroup>,
    /// The row within the group.
    pub row: usize,
    /// Tokens covered (the row's length).
    pub len: usize,
}

/// Hash of every prefix of `tokens`: `h[i]` covers `tokens[..i]`.
fn prefix_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut h = Vec::with_capacity(tokens.len() + 1);
    let mut acc: u64 = 0xcbf2_9ce4_8422_2325;
    h.push(acc);
    for &t in tokens {
        acc = (acc ^ t as u64).wrapping_mul(0x0100_0000_01b3).rotate_left(17) ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h.push(acc);
    }
    h
}

/// LRU cache of [`CachedGroup`]s under a byte budget.
#[derive(Debug)]
pub struct PrefixCache {
    budget_bytes: usize,
    used_bytes: usize,
    tick: u64,
    next_id: u64,
    groups: HashMap<u64, (Arc<CachedGroup>, usize, u64)>, // (group, bytes, last use)
    index: HashMap<(usize, u64), Vec<(u64, usize)>>,      // (len, hash) -> (group id, row)
    lengths: BTreeMap<usize, usize>,                      // row length -> rows indexed
}

impl PrefixCache {
    /// A cache that holds at most `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            used_bytes: 0,
            tick: 0,
            next_id: 0,
            groups: HashMap::new(),
            index: HashMap::new(),
            lengths: BTreeMap::new(),
        }
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// The byte budget.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Number of groups held.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The longest cached row that is a prefix of `tokens` (possibly all of it).
    pub fn lookup(&mut self, tokens: &[u32]) -> Option<PrefixHit> {
        let hashes = prefix_hashes(tokens);
        let lens: Vec<usize> = self.lengths.range(..=tokens.len()).rev().map(|(&l, _)| l).collect();
        for len in lens {
            let Some(cands) = self.index.get(&(len, hashes[len])) else { continue };
            for &(id, row) in cands {
                let Some((group, _, last)) = self.groups.get_mut(&id) else { continue };
                if group.rows[row][..] == tokens[..len] {
                    self.tick += 1;
                    *last = self.tick;
                    return Some(PrefixHit { group: group.clone(), row, len });
                }
            }
        }
        None
    }

    /// Stores a group, evicting the least recently used ones to stay within
    /// the budget. A group larger than half the budget is stored in pieces of
    /// rows that fit (a batch of many beams' children); a single row that
    /// does not fit is not stored.
    pub fn insert(&mut self, group: CachedGroup) -> Result<()> {
        let bytes = group.size_bytes();
        let half = self.budget_bytes / 2;
        if group.rows.is_empty() || (bytes > half && group.rows.len() == 1) {
            return Ok(());
        }
        if bytes > half {
            let per_piece = (half as u128 * group.rows.len() as u128 / bytes as u128) as usize;
            if per_piece == 0 {
                return Ok(());
            }
            let rows: Vec<usize> = (0..group.rows.len()).collect();
            for piece in rows.chunks(per_piece) {
                let piece = group.select_rows(piece)?;
                if piece.size_bytes() <= half {
                    self.insert(piece)?;
                }
            }
            return Ok(());
        }
        while self.used_bytes + bytes > self.budget_bytes {
            let Some(oldest) = self.groups.iter().min_by_key(|(_, (_, _, last))| *last).map(|(&id, _)| id) else { break };
            self.remove(oldest);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.tick += 1;
        for (row, toks) in group.rows.iter().enumerate() {
            let h = *prefix_hashes(toks).last().expect("at least the empty hash");
            self.index.entry((toks.len(), h)).or_default().push((id, row));
            *self.lengths.entry(toks.len()).or_default() += 1;
        }
        self.used_bytes += bytes;
        self.groups.insert(id, (Arc::new(group), bytes, self.tick));
        Ok(())
    }

    fn remove(&mut self, id: u64) {
        let Some((group, bytes, _)) = self.groups.remove(&id) else { return };
        self.used_bytes -= bytes;
        for toks in group.rows.iter() {
            let key = (toks.len(), *prefix_hashes(toks).last().expect("non-empty"));
            if let Some(v) = self.index.get_mut(&key) {
                v.retain(|&(g, _)| g != id);
                if v.is_empty() {
                    self.index.remove(&key);
                }
            }
            if let Some(n) = self.lengths.get_mut(&toks.len()) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&toks.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn group(rows: &[&[u32]], vocab: usize) -> CachedGroup {
        let n = rows.len();
        let mut kv = KvCache::new(1);
        let k = Tensor::zeros((n, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
        kv.append(0, k.clone(), k).unwrap();
        kv.advance(n, 1);
        CachedGroup {
            kv,
            logits: Tensor::zeros((n, vocab), DType::F32, &Device::Cpu).unwrap(),
            hidden: Tensor::zeros((n, 4), DType::F32, &Device::Cpu).unwrap(),
            rows: rows.iter().map(|r| Arc::from(r.to_vec())).collect(),
        }
    }

    #[test]
    fn finds_the_longest_prefix_and_verifies_tokens() -> Result<()> {
        let mut c = PrefixCache::new(1 << 20);
        c.insert(group(&[&[1, 2, 3]], 8))?;
        c.insert(group(&[&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 6]], 8))?;
        let hit = c.lookup(&[1, 2, 3, 4, 6, 9]).expect("hit");
        assert_eq!((hit.len, hit.row), (5, 1));
        let hit = c.lookup(&[1, 2, 3, 7]).expect("hit");
        assert_eq!(hit.len, 3);
        assert!(c.lookup(&[2, 3]).is_none());
        let exact = c.lookup(&[1, 2, 3, 4, 5]).expect("exact hit");
        assert_eq!(exact.len, 5);
        Ok(())
    }

    #[test]
    fn evicts_least_recently_used_within_budget() -> Result<()> {
        let one = group(&[&[1]], 1000).size_bytes();
        let mut c = PrefixCache::new(one * 2 + one / 2);
        c.insert(group(&[&[1]], 1000))?;
        c.insert(group(&[&[2]], 1000))?;
        c.lookup(&[1]).expect("touch 1");
        c.insert(group(&[&[3]], 1000))?; // evicts [2], the least recently used
        assert!(c.lookup(&[2]).is_none());
        assert!(c.lookup(&[1]).is_some() && c.lookup(&[3]).is_some());
        assert!(c.used_bytes() <= c.budget_bytes());
        Ok(())
    }

    #[test]
    fn refuses_rows_over_half_the_budget() -> Result<()> {
        let mut c = PrefixCache::new(100);
        c.insert(group(&[&[1]], 1000))?;
        c.insert(group(&[&[1], &[2]], 1000))?;
        assert!(c.is_empty());
        Ok(())
    }

    #[test]
    fn stores_a_group_over_half_the_budget_in_pieces_that_fit() -> Result<()> {
        let one = group(&[&[1]], 1000).size_bytes();
        let mut c = PrefixCache::new(5 * one);
        c.insert(group(&[&[1], &[2], &[3], &[4], &[5]], 1000))?;
        assert_eq!(c.len(), 3, "pieces of two rows, the last of one");
        assert!(c.used_bytes() <= c.budget_bytes());
        for row in [1, 2, 3, 4, 5] {
            assert!(c.lookup(&[row]).is_some(), "row {row} was stored");
        }
        Ok(())
    }
}
