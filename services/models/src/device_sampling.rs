//! Drawing tokens where the logits are (a GPU): the work of [`crate::sampling::sample`]
//! for many rows at once as tensor ops, so only a token id and a log-probability per row
//! come back to the host instead of `rows × vocab` logits.
//!
//! **Same draws as the host sampler.** Each row takes the same uniform number from its
//! child's stream, keeps the same tokens (bias, temperature, top-k, nucleus) and walks them
//! in the same order: token-id order for a full softmax, probability then token id for a
//! top-k/top-p head. Masses are summed in f64 on both sides, in different orders
//! (reduction trees and blocked prefix sums here, a loop there): they agree to ~1e-15, so
//! a draw can differ only when its uniform number falls that close to the boundary
//! between two tokens. On the CPU device the probabilities themselves are the host's, bit
//! for bit; on a GPU `exp` may differ in the last bit, which moves a boundary by ~1e-7 of
//! a token's mass. Greedy draws are exact (first maximum, as on the host).
//! `tests/device_sampling.rs` compares the two and checks the distribution.
//!
//! A nucleus wider than the head of the [`MAX_HEAD`] most likely tokens (a near-flat
//! distribution) is drawn on the host from that row's copied logits, as the host sampler
//! widens its head; so is every row when `top_k` is above [`MAX_HEAD`].
//!
//! The ops are chosen for candle's CUDA kernels: no sort wider than [`SORT_WIDTH`] (its
//! argsort sorts a row in shared memory) and no prefix sum over the vocabulary in one
//! piece (its cumsum is a product with a triangular matrix).

use candle_core::{DType, Tensor};
use ig_core::policy::Sampling;

use crate::sampling::{log_sum_exp, sample_with_unit};
use crate::{ModelError, Result};

/// Width of the blocks of the full-softmax prefix sum.
const BLOCK: usize = 256;
/// Most tokens of a sorted head drawn on the device; the host sampler's first head for a
/// nucleus is the same size.
pub const MAX_HEAD: usize = 1024;
/// Widest row sorted in one piece: candle's CUDA argsort keeps a row's indices in shared
/// memory (4 bytes per column padded to a power of two, within the default 48 KiB).
const SORT_WIDTH: usize = 4096;

/// One draw per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Draws {
    /// The token drawn for each row.
    pub tokens: Vec<u32>,
    /// `log softmax` of the row's unbiased, untempered logits at its token.
    pub logprobs: Vec<f32>,
    /// Rows whose nucleus was wider than the device head, drawn on the host.
    pub host_rows: usize,
}

/// Draws one token per row of `logits` (`(rows, vocab)`, any float dtype, any device)
/// with `params`, row `r` using the uniform number `units[r]` (the word its child's stream
/// gives the host sampler) and the logit biases `biases[r]`.
pub fn sample_rows(logits: &Tensor, params: &Sampling, units: &[f32], biases: &[&[(u32, f32)]]) -> Result<Draws> {
    let (rows, vocab) = logits.dims2()?;
    if units.len() != rows || biases.len() != rows {
        return Err(ModelError::Shape(format!("{rows} rows of logits, {} uniform numbers, {} bias lists", units.len(), biases.len())));
    }
    if rows == 0 {
        return Ok(Draws { tokens: vec![], logprobs: vec![], host_rows: 0 });
    }
    let x = logits.to_dtype(DType::F32)?;
    let biased = with_biases(&x, biases)?;
    let cut_k = params.top_k.filter(|&k| k < vocab);
    // How many of the most likely tokens the host sampler sorts first.
    let head = match (cut_k, params.top_p < 1.0) {
        (None, false) => None,
        (_, nucleus) => {
            let k = cut_k.unwrap_or(vocab);
            Some(if nucleus { k.min(MAX_HEAD.max(cut_k.unwrap_or(0))) } else { k })
        }
    };
    if params.temperature > 0.0 && head.is_some_and(|h| h > MAX_HEAD) {
        return on_host(&x, &biased, params, units, &vec![true; rows]);
    }
    let (tokens, wider) = if params.temperature <= 0.0 {
        (first_argmax(&biased)?, None)
    } else {
        let max = biased.max_keepdim(1)?;
        // The host's f32 probabilities, then summed in f64 like it.
        let p = (biased.broadcast_sub(&max)? * f64::from(1.0 / params.temperature))?.exp()?.to_dtype(DType::F64)?;
        let unit_col = Tensor::from_slice(units, (rows, 1), x.device())?.to_dtype(DType::F64)?;
        match head {
            None => (full_softmax_draw(&p, &unit_col)?, None),
            Some(keep) => {
                let can_widen = keep < vocab && cut_k.is_none_or(|c| keep < c);
                let (tokens, wider) = head_draw(&p, &unit_col, keep, params.top_p)?;
                (tokens, can_widen.then_some(wider))
            }
        }
    };
    let lse = {
        let max = x.max_keepdim(1)?;
        (x.broadcast_sub(&max)?.exp()?.to_dtype(DType::F64)?.sum_keepdim(1)?.log()?.to_dtype(DType::F32)? + max)?
    };
    let logprobs = (x.gather(&tokens.unsqueeze(1)?, 1)? - lse)?;
    let wider = match wider {
        Some(w) => w.unsqueeze(1)?,
        None => Tensor::zeros((rows, 1), DType::F32, x.device())?,
    };
    // One copy back: the token (exact in f32 below 2^24), its log-probability, the flag.
    let packed = Tensor::cat(&[tokens.to_dtype(DType::F32)?.unsqueeze(1)?, logprobs, wider], 1)?.to_vec2::<f32>()?;
    let host: Vec<bool> = packed.iter().map(|r| r[2] > 0.5).collect();
    let mut draws = if host.iter().any(|&h| h) { on_host(&x, &biased, params, units, &host)? } else { Draws::empty(rows) };
    for (r, row) in packed.iter().enumerate() {
        if !host[r] {
            draws.tokens[r] = row[0] as u32;
            draws.logprobs[r] = row[1];
        }
    }
    Ok(draws)
}

impl Draws {
    fn empty(rows: usize) -> Self {
        Self { tokens: vec![0; rows], logprobs: vec![0.0; rows], host_rows: 0 }
    }
}

/// The host sampler on the rows marked in `rows` (copied back one by one); the others
/// are left at 0 for the caller to fill.
fn on_host(x: &Tensor, biased: &Tensor, params: &Sampling, units: &[f32], rows: &[bool]) -> Result<Draws> {
    let mut draws = Draws::empty(rows.len());
    let mut scratch = Vec::new();
    for (r, _) in rows.iter().enumerate().filter(|(_, &h)| h) {
        let logits = x.get(r)?.to_vec1::<f32>()?;
        let token = sample_with_unit(&biased.get(r)?.to_vec1::<f32>()?, params, units[r], &mut scratch);
        draws.tokens[r] = token;
        draws.logprobs[r] = logits[token as usize] - log_sum_exp(&logits);
        draws.host_rows += 1;
    }
    Ok(draws)
}

/// `x` plus each row's biases (ids must be below the vocabulary size).
fn with_biases(x: &Tensor, biases: &[&[(u32, f32)]]) -> Result<Tensor> {
    let width = biases.iter().map(|b| b.len()).max().unwrap_or(0);
    if width == 0 {
        return Ok(x.clone());
    }
    let (rows, vocab) = x.dims2()?;
    let mut ids = vec![0u32; rows * width];
    let mut values = vec![0f32; rows * width];
    for (r, row) in biases.iter().enumerate() {
        for (i, &(id, b)) in row.iter().enumerate() {
            if id as usize >= vocab {
                return Err(ModelError::Shape(format!("logit bias for token {id}, vocabulary of {vocab}")));
            }
            (ids[r * width + i], values[r * width + i]) = (id, b);
        }
    }
    let ids = Tensor::from_vec(ids, (rows, width), x.device())?;
    let values = Tensor::from_vec(values, (rows, width), x.device())?;
    Ok(x.scatter_add(&ids, &values, 1)?)
}

/// How many entries of each row of `a` (`(rows, n)`) are below the row's `target`
/// (`(rows, 1)`): in a non-decreasing row, the index of the first one that reaches it.
fn count_below(a: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(a.broadcast_lt(target)?.to_dtype(DType::F32)?.sum(1)?.to_dtype(DType::U32)?)
}

/// The index of each row's first maximum (the host's `argmax`), as `(rows,)` u32.
fn first_argmax(x: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = x.dims2()?;
    let ids = Tensor::arange(0u32, vocab as u32, x.device())?.to_dtype(DType::F32)?.broadcast_as((rows, vocab))?;
    let none = Tensor::full(vocab as f32 - 1.0, (rows, vocab), x.device())?;
    let at_max = x.broadcast_eq(&x.max_keepdim(1)?)?;
    // A row without a maximum (NaN) gets the last token rather than an index out of range.
    Ok(at_max.where_cond(&ids, &none)?.min(1)?.to_dtype(DType::U32)?)
}

/// `unit · mass`, kept within `(0, mass]`: above 0 so a token of zero probability is never
/// reached, at most `mass` so rounding cannot run past the last token with probability.
fn draw_target(units: &Tensor, mass: &Tensor) -> Result<Tensor> {
    Ok((units * mass)?.maximum(f64::MIN_POSITIVE)?.minimum(mass)?)
}

/// Full softmax: the first token, in id order, at which the running mass of `p`
/// (`(rows, vocab)` f64, unnormalised) reaches `unit` times the total.
fn full_softmax_draw(p: &Tensor, units: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = p.dims2()?;
    let dev = p.device();
    let blocks = vocab.div_ceil(BLOCK);
    let padded = if blocks * BLOCK > vocab {
        Tensor::cat(&[p, &Tensor::zeros((rows, blocks * BLOCK - vocab), DType::F64, dev)?], 1)?
    } else {
        p.clone()
    };
    let padded = padded.reshape((rows * blocks, BLOCK))?;
    let block_mass = padded.sum(1)?.reshape((rows, blocks))?;
    let block_ends = block_mass.cumsum(1)?;
    let total = block_ends.narrow(1, blocks - 1, 1)?;
    let target = draw_target(units, &total)?;
    // The first block whose running mass reaches the target, then the token within it.
    let block = count_below(&block_ends, &target)?.minimum(blocks as u32 - 1)?;
    let start = (block_ends - block_mass)?.gather(&block.unsqueeze(1)?, 1)?;
    let row_base = (Tensor::arange(0u32, rows as u32, dev)? * blocks as f64)?;
    let within = padded.index_select(&(row_base + &block)?, 0)?;
    let running = within.cumsum(1)?.broadcast_add(&start)?;
    let target = target.minimum(&running.narrow(1, BLOCK - 1, 1)?)?;
    let offset = count_below(&running, &target)?.minimum(BLOCK as u32 - 1)?;
    Ok(((block * BLOCK as f64)? + offset)?.minimum(vocab as u32 - 1)?)
}

/// Top-k and nucleus (`p`: `(rows, vocab)` f64): the `keep` most likely tokens sorted by
/// probability then id; the
/// nucleus is the shortest prefix of them whose mass reaches `top_p` of the total; the
/// token is the first of it at which the running mass reaches `unit` times the nucleus's.
/// Also returns, per row, 1 where the head's whole mass stays below `top_p` of the total
/// (the host sampler would widen its head), else 0.
fn head_draw(p: &Tensor, units: &Tensor, keep: usize, top_p: f32) -> Result<(Tensor, Tensor)> {
    let (ids, head_p) = top_tokens(p, keep)?;
    let running = head_p.cumsum(1)?;
    let (mass, wider) = if top_p < 1.0 {
        let target = (p.sum_keepdim(1)? * f64::from(top_p))?;
        let reached_at = count_below(&running, &target)?;
        let wider = reached_at.ge(keep as u32)?.to_dtype(DType::F32)?;
        let last = reached_at.minimum(keep as u32 - 1)?;
        (running.gather(&last.unsqueeze(1)?, 1)?, wider)
    } else {
        (running.narrow(1, keep - 1, 1)?, Tensor::zeros(p.dim(0)?, DType::F32, p.device())?)
    };
    let target = draw_target(units, &mass)?;
    let at = count_below(&running, &target)?.minimum(keep as u32 - 1)?;
    Ok((ids.gather(&at.unsqueeze(1)?, 1)?.squeeze(1)?, wider))
}

/// The `keep` (≤ [`MAX_HEAD`]) most likely tokens of each row of `p`, most likely first
/// and the smaller id first among equals: `(rows, keep)` ids and their `p`.
///
/// Sorted by one f64 key per token, `p · (1 − id · 2⁻⁴⁸)`: two f32 probabilities differ
/// by a factor of at least 1 + 2⁻²⁴, far more than the tie-break changes them (below 2⁻³¹
/// for any id under 2¹⁷), which in turn stays far above f64's rounding (2⁻⁵³). Rows wider
/// than [`SORT_WIDTH`] go in rounds: the best `keep` of each piece, then of those.
fn top_tokens(p: &Tensor, keep: usize) -> Result<(Tensor, Tensor)> {
    let (rows, vocab) = p.dims2()?;
    let dev = p.device();
    let ids = Tensor::arange(0u32, vocab as u32, dev)?;
    let tie = (1.0 - (ids.to_dtype(DType::F64)? * 2f64.powi(-48))?)?;
    let mut keys = p.broadcast_mul(&tie)?;
    let mut cand = ids.broadcast_as((rows, vocab))?.contiguous()?;
    loop {
        let width = keys.dim(1)?;
        if width <= SORT_WIDTH {
            let order = keys.arg_sort_last_dim(false)?.narrow(1, 0, keep)?.contiguous()?;
            let top = cand.gather(&order, 1)?;
            let top_p = p.gather(&top, 1)?;
            return Ok((top, top_p));
        }
        let pieces = width.div_ceil(SORT_WIDTH);
        let pad = pieces * SORT_WIDTH - width;
        if pad > 0 {
            // Below every real key (those are ≥ 0): never kept ahead of a real token.
            keys = Tensor::cat(&[&keys, &Tensor::full(-1f64, (rows, pad), dev)?], 1)?;
            cand = Tensor::cat(&[&cand, &Tensor::zeros((rows, pad), DType::U32, dev)?], 1)?;
        }
        let k = keys.reshape((rows * pieces, SORT_WIDTH))?;
        let c = cand.reshape((rows * pieces, SORT_WIDTH))?;
        let order = k.arg_sort_last_dim(false)?.narrow(1, 0, keep)?.contiguous()?;
        keys = k.gather(&order, 1)?.reshape((rows, pieces * keep))?;
        cand = c.gather(&order, 1)?.reshape((rows, pieces * keep))?;
    }
}
