//! The key/value cache of a group of sequences, kept outside the model.
//!
//! All rows of one cache have the same length. Each layer's keys and values
//! live in a buffer preallocated for `capacity` positions and written in
//! place, so a decoding step copies only its new position instead of the
//! whole history (growing by concatenation costs O(length) per step).
//! Buffers are shared between clones: [`KvCache::clone`] (a fork) is cheap,
//! and the first write to a shared buffer copies it (copy on write), so forks
//! grow independently. Row operations ([`KvCache::select_rows`]) copy.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// Positions added beyond the need when full buffers grow.
pub const GROWTH: usize = 32;

/// One layer's `(keys, values)`, each `(rows, kv_heads, capacity, head_dim)`.
type LayerBuffers = Option<(Tensor, Tensor)>;

/// Keys and values of every layer for `rows` sequences of `len` positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Arc<Vec<LayerBuffers>>,
    rows: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: Arc::new(vec![None; num_layers]), rows: 0, len: 0, capacity: 0 }
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

    /// Positions per row the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the cache's buffers (capacity, not just length).
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes one position of one row takes across all layers, for a model of
    /// this shape (what a KV byte budget divides by).
    pub fn bytes_per_position(num_layers: usize, kv_heads: usize, head_dim: usize, dtype: DType) -> usize {
        2 * num_layers * kv_heads * head_dim * dtype.size_in_bytes()
    }

    fn device(&self) -> Result<Device> {
        let first = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone());
        first.ok_or_else(|| ModelError::Shape("non-empty cache without tensors".into()))
    }

    /// A cache whose row `i` is this cache's row `rows[i]`: keeps, drops,
    /// duplicates or reorders rows (beam search, forking a prefix into
    /// children). The copy has room for `extra` more positions per row.
    pub fn select_rows_reserving(&self, rows: &[usize], extra: usize) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows.max(1)) {
            return Err(ModelError::Shape(format!("row {bad} of a cache with {} rows", self.rows)));
        }
        if self.is_empty() {
            return Ok(Self { layers: Arc::new(vec![None; self.layers.len()]), rows: rows.len(), len: 0, capacity: 0 });
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &self.device()?)?;
        let capacity = self.len + extra;
        let copy = |t: &Tensor| -> Result<Tensor> {
            // index_select needs a contiguous source: pick whole buffers,
            // then cut to `len` only when the capacity changes.
            let picked = t.index_select(&idx, 0)?;
            if capacity == t.dim(2)? {
                return Ok(picked);
            }
            Self::with_capacity(&picked.narrow(2, 0, self.len)?, capacity)
        };
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok((copy(k)?, copy(v)?))).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers: Arc::new(layers), rows: rows.len(), len: self.len, capacity })
    }

    /// [`Self::select_rows_reserving`] without extra room beyond what this cache has.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        self.select_rows_reserving(rows, self.capacity - self.len)
    }

    /// `n` copies of a one-row cache (the children of one prefix), with room
    /// for `extra` more positions each.
    pub fn expand(&self, n: usize, extra: usize) -> Result<Self> {
        if self.rows > 1 {
            return Err(ModelError::Shape(format!("expand needs a one-row cache, this one has {} rows", self.rows)));
        }
        self.select_rows_reserving(&vec![0; n], extra)
    }

    /// One cache holding, in order, rows `rows` of each part, with room for
    /// `extra` more positions per row: the children of several prefixes,
    /// decoded as one batch. The parts must have the same length.
    pub fn gather(parts: &[(&KvCache, &[usize])], extra: usize) -> Result<Self> {
        let [(first, first_rows), rest @ ..] = parts else {
            return Err(ModelError::Shape("a gather of no caches".into()));
        };
        if rest.is_empty() {
            return first.select_rows_reserving(first_rows, extra);
        }
        let (len, layers) = (first.len, first.layers.len());
        if let Some((c, _)) = rest.iter().find(|(c, _)| c.len != len || c.layers.len() != layers) {
            return Err(ModelError::Shape(format!(
                "caches of {} positions and {} layers gathered with one of {len} and {layers}",
                c.len,
                c.layers.len()
            )));
        }
        if let Some(&bad) = parts.iter().flat_map(|(c, rows)| rows.iter().filter(|&&r| r >= c.rows.max(1))).next() {
            return Err(ModelError::Shape(format!("row {bad} beyond a gathered cache's rows")));
        }
        let rows = parts.iter().map(|(_, rows)| rows.len()).sum();
        if len == 0 {
            return Ok(Self { layers: Arc::new(vec![None; layers]), rows, len: 0, capacity: 0 });
        }
        let device = first.device()?;
        let indices = parts
            .iter()
            .map(|(_, rows)| Ok(Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &device)?))
            .collect::<Result<Vec<_>>>()?;
        let capacity = len + extra;
        // Each part's rows picked whole, cut to `len`, then stacked and copied into room for `extra`.
        let stack = |l: usize, pick: fn(&(Tensor, Tensor)) -> &Tensor| -> Result<Tensor> {
            let pieces = parts
                .iter()
                .zip(&indices)
                .map(|((c, _), idx)| {
                    let buffers = c.layers[l].as_ref().ok_or_else(|| ModelError::Shape(format!("layer {l} missing from a filled cache")))?;
                    Ok(pick(buffers).index_select(idx, 0)?.narrow(2, 0, len)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Self::with_capacity(&Tensor::cat(&pieces, 0)?, capacity)
        };
        let merged = (0..layers).map(|l| Ok(Some((stack(l, |(k, _)| k)?, stack(l, |(_, v)| v)?)))).collect::<Result<Vec<_>>>()?;
        Ok(Self { layers: Arc::new(merged), rows, len, capacity })
    }

    /// `data` (`(rows, heads, len, dim)`, contiguous) copied into a buffer of
    /// `capacity >= len` positions.
    fn with_capacity(data: &Tensor, capacity: usize) -> Result<Tensor> {
        let (rows, heads, len, dim) = data.dims4()?;
        if capacity == len {
            return Ok(data.contiguous()?);
        }
        let buf = Tensor::zeros((rows, heads, capacity, dim), data.dtype(), data.device())?;
        buf.slice_set(&data.contiguous()?, 2, 0)?;
        Ok(buf)
    }

    /// Makes room for `t` new positions per row, owning the buffers alone:
    /// copies them when a fork shares them or when they are full. Full
    /// buffers grow by [`GROWTH`] positions beyond `t`, so a caller that did
    /// not reserve ahead ([`Self::expand`]) still copies only every few steps.
    pub fn reserve(&mut self, t: usize) -> Result<()> {
        let shared = Arc::strong_count(&self.layers) > 1;
        if self.is_empty() || (!shared && self.len + t <= self.capacity) {
            return Ok(());
        }
        let capacity = if self.len + t <= self.capacity { self.capacity } else { self.len + t + GROWTH };
        let grow = |b: &Tensor| -> Result<Tensor> { Self::with_capacity(&b.narrow(2, 0, self.len)?, capacity) };
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok((grow(k)?, grow(v)?))).transpose())
            .collect::<Result<Vec<_>>>()?;
        self.layers = Arc::new(layers);
        self.capacity = capacity;
        Ok(())
    }

    /// Writes one layer's new keys and values (`(rows, kv_heads, t, dim)`)
    /// after the cached positions and returns views of the whole of that
    /// layer. Call [`Self::reserve`] first; the length advances once every
    /// layer is done ([`Self::advance`]).
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let (len, capacity) = (self.len, self.capacity);
        let layers = Arc::get_mut(&mut self.layers)
            .ok_or_else(|| ModelError::Shape("KV cache written while shared: call reserve first".into()))?;
        let slot = layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Shape(format!("layer {layer} of a cache with fewer layers")))?;
        match slot {
            None => {
                // The first positions: their own tensors are the buffers.
                *slot = Some((k.contiguous()?, v.contiguous()?));
                let (k, v) = slot.as_ref().expect("just set");
                Ok((k.clone(), v.clone()))
            }
            Some((ck, cv)) => {
                if len + t > capacity {
                    return Err(ModelError::Shape(format!("{t} new positions after {len} exceed the reserved {capacity}")));
                }
                ck.slice_set(&k.contiguous()?, 2, len)?;
                cv.slice_set(&v.contiguous()?, 2, len)?;
                Ok((ck.narrow(2, 0, len + t)?, cv.narrow(2, 0, len + t)?))
            }
        }
    }

    pub(crate) fn advance(&mut self, rows: usize, t: usize) {
        if self.is_empty() {
            self.capacity = t;
        }
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
        k.narrow(2, 0, c.len).unwrap().squeeze(3).unwrap().squeeze(1).unwrap().to_vec2().unwrap()
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
        let mut fork = base.expand(2, 1)?;
        let new = Tensor::from_vec(vec![7f32, 8.], (2, 1, 1, 1), &Device::Cpu)?;
        fork.reserve(1)?;
        fork.append(0, new.clone(), new.clone())?;
        fork.append(1, new.clone(), new)?;
        fork.advance(2, 1);
        assert_eq!(keys(&fork, 0), vec![vec![0., 1., 7.], vec![0., 1., 8.]]);
        assert_eq!((base.rows(), base.len()), (1, 2), "the original is untouched");
        assert_eq!(keys(&base, 0), vec![vec![0., 1.]]);
        assert!(fork.expand(3, 0).is_err(), "only one-row caches expand");
        assert_eq!(fork.size_bytes(), 2 * 2 * 2 * 3 * 4);
        Ok(())
    }

    fn append_row_values(c: &mut KvCache, value: f32) -> Result<()> {
        c.reserve(1)?;
        let new = Tensor::full(value, (c.rows(), 1, 1, 1), &Device::Cpu)?;
        for layer in 0..2 {
            c.append(layer, new.clone(), new.clone())?;
        }
        c.advance(c.rows(), 1);
        Ok(())
    }

    #[test]
    fn gathered_rows_of_several_caches_form_one_batch() -> Result<()> {
        let (a, b) = (filled(1, 2)?, filled(3, 2)?);
        let mut both = KvCache::gather(&[(&a, &[0, 0]), (&b, &[2, 1])], 3)?;
        assert_eq!((both.rows(), both.len(), both.capacity()), (4, 2, 5));
        assert_eq!(keys(&both, 1), vec![vec![0., 1.], vec![0., 1.], vec![200., 201.], vec![100., 101.]]);
        append_row_values(&mut both, 5.)?;
        assert_eq!(keys(&both, 0)[3], vec![100., 101., 5.]);
        assert_eq!(keys(&b, 0)[1], vec![100., 101.], "the sources are untouched");
        assert!(KvCache::gather(&[(&a, &[0]), (&filled(1, 3)?, &[0])], 0).is_err(), "lengths differ");
        assert!(KvCache::gather(&[(&a, &[0]), (&b, &[3])], 0).is_err(), "row out of range");
        assert!(KvCache::gather(&[], 0).is_err());
        Ok(())
    }

    #[test]
    fn a_shared_buffer_is_copied_on_write_and_full_buffers_grow_ahead() -> Result<()> {
        let base = filled(1, 2)?;
        let mut fork = base.clone();
        append_row_values(&mut fork, 9.)?;
        assert_eq!(keys(&base, 0), vec![vec![0., 1.]], "the original is untouched");
        assert_eq!(keys(&fork, 0), vec![vec![0., 1., 9.]]);
        assert_eq!(fork.capacity(), 3 + GROWTH);
        // Within capacity and unshared: written in place, no new buffer.
        let before = Arc::as_ptr(&fork.layers);
        append_row_values(&mut fork, 10.)?;
        assert!(std::ptr::eq(before, Arc::as_ptr(&fork.layers)));
        assert_eq!(keys(&fork, 1), vec![vec![0., 1., 9., 10.]]);
        // Rows of a buffer with room to spare can be selected, with more or as much room.
        let picked = fork.select_rows_reserving(&[0, 0], 5)?;
        assert_eq!((picked.rows(), picked.len(), picked.capacity()), (2, 4, 9));
        assert_eq!(keys(&picked, 0), vec![vec![0., 1., 9., 10.]; 2]);
        let same = fork.select_rows(&[0])?;
        assert_eq!((same.len(), same.capacity()), (4, fork.capacity()));
        assert_eq!(keys(&same, 1), vec![vec![0., 1., 9., 10.]]);
        Ok(())
    }
}
