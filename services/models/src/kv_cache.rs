//! The key/value cache of a group of sequences, kept outside the model.
//!
//! All rows of one cache have the same length. Tensors are immutable and
//! reference-counted, so [`KvCache::clone`] (a fork) is cheap and both forks
//! can grow independently; row operations ([`KvCache::select_rows`]) copy.

use candle_core::Tensor;

use crate::{ModelError, Result};

/// Keys and values of every layer for `rows` sequences of `len` positions,
/// each `(rows, kv_heads, len, head_dim)`.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    rows: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], rows: 0, len: 0 }
    }

    /// Positions cached per row.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of sequences.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held by the cache's tensors.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// A cache whose row `i` is this cache's row `rows[i]`: keeps, drops,
    /// duplicates or reorders rows (beam search, forking a prefix into
    /// children).
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows.max(1)) {
            return Err(ModelError::Shape(format!("row {bad} of a cache with {} rows", self.rows)));
        }
        if self.is_empty() {
            return Ok(Self { layers: self.layers.clone(), rows: rows.len(), len: 0 });
        }
        let device = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone());
        let device = device.ok_or_else(|| ModelError::Shape("non-empty cache without tensors".into()))?;
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &device)?;
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, rows: rows.len(), len: self.len })
    }

    /// `n` copies of a one-row cache (the children of one prefix).
    pub fn expand(&self, n: usize) -> Result<Self> {
        if self.rows > 1 {
            return Err(ModelError::Shape(format!("expand needs a one-row cache, this one has {} rows", self.rows)));
        }
        self.select_rows(&vec![0; n])
    }

    /// Appends one layer's new keys and values and returns the whole of that
    /// layer. The length advances once every layer is done ([`Self::advance`]).
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Shape(format!("layer {layer} of a cache with fewer layers")))?;
        let kv = match slot.take() {
            None => (k, v),
            Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
        };
        *slot = Some(kv.clone());
        Ok(kv)
    }

    pub(crate) fn advance(&mut self, rows: usize, t: usize) {
        self.rows = rows;
        self.len += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// A 2-layer cache of `rows` rows and `len` positions whose keys hold
    /// `100 * row + position` (values the negation), one head of width 1.
    fn filled(rows: usize, len: usize) -> Result<KvCache> {
        let mut c = KvCache::new(2);
        let data: Vec<f32> = (0..rows).flat_map(|r| (0..len).map(move |p| (100 * r + p) as f32)).collect();
        let k = Tensor::from_vec(data, (rows, 1, len, 1), &Device::Cpu)?;
        for layer in 0..2 {
            c.append(layer, k.clone(), k.neg()?)?;
        }
        c.advance(rows, len);
        Ok(c)
    }

    fn keys(c: &KvCache, layer: usize) -> Vec<Vec<f32>> {
        let (k, _) = c.layers[layer].as_ref().unwrap();
        k.squeeze(3).unwrap().squeeze(1).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn rows_can_be_kept_duplicated_and_reordered() -> Result<()> {
        let c = filled(3, 2)?;
        let s = c.select_rows(&[2, 0, 0])?;
        assert_eq!((s.rows(), s.len()), (3, 2));
        assert_eq!(keys(&s, 1), vec![vec![200., 201.], vec![0., 1.], vec![0., 1.]]);
        let (_, v) = s.layers[0].as_ref().unwrap();
        assert_eq!(v.dtype(), DType::F32);
        assert!(c.select_rows(&[3]).is_err(), "row out of range");
        Ok(())
    }

    #[test]
    fn forks_grow_independently() -> Result<()> {
        let base = filled(1, 2)?;
        let mut fork = base.expand(2)?;
        let new = Tensor::from_vec(vec![7f32, 8.], (2, 1, 1, 1), &Device::Cpu)?;
        fork.append(0, new.clone(), new.clone())?;
        fork.append(1, new.clone(), new)?;
        fork.advance(2, 1);
        assert_eq!(keys(&fork, 0), vec![vec![0., 1., 7.], vec![0., 1., 8.]]);
        assert_eq!((base.rows(), base.len()), (1, 2), "the original is untouched");
        assert_eq!(keys(&base, 0), vec![vec![0., 1.]]);
        assert!(fork.expand(3).is_err(), "only one-row caches expand");
        assert_eq!(fork.size_bytes(), 2 * 2 * 2 * 3 * 4);
        Ok(())
    }
}
