//! A BERT-family sentence encoder on candle (e.g. all-MiniLM-L6-v2).
//!
//! The trunk is [`crate::bert::BertTrunk`] (BERT, Devlin et al., arXiv 1810.04805), in f32, f16 or bf16;
//! pooling follows sentence-transformers: the mean of the token states under
//! the attention mask (special tokens included) or the first (`[CLS]`)
//! state, then optionally L2 normalisation.
//!
//! Checkpoints bake padding and truncation into `tokenizer.json` (MiniLM's
//! pads and cuts at 128); both are switched off at load. This module pads
//! batches itself (right padding plus an attention mask) and truncates to the
//! caller's limit.
//!
//! **Truncation keeps the end of a text**: tokens are dropped from its start
//! (special tokens are kept). sentence-transformers keeps the start instead;
//! we do not, because the scorer reads growing responses and the newest text
//! is what changed. Training ([`SentenceEncoder::embed`]) and serving use the
//! same rule, so a head sees the same features in both.
//!
//! Weights are read with `candle_core::safetensors::load` (no mmap: the
//! workspace forbids `unsafe`) and handed to `VarBuilder::from_tensors`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;

use crate::bert::BertTrunk;
use tokenizers::Tokenizer;

use crate::{ModelError, Result};

/// Padded tokens (rows x longest row) per forward pass: bounds the attention
/// scores' memory while keeping the matrix products large.
const MAX_BATCH_TOKENS: usize = 8192;

/// How token states become one embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// Mean over the tokens under the attention mask (special tokens included).
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
}

impl Pooling {
    /// `"mean"` or `"cls"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
        }
    }
}

impl FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "mean" => Ok(Self::Mean),
            "cls" => Ok(Self::Cls),
            other => Err(format!("pooling {other:?}: expected mean or cls")),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to embed texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Mean or CLS pooling.
    pub pooling: Pooling,
    /// Whether to L2-normalise each embedding.
    pub normalize: bool,
    /// Tokens per text, special tokens included; longer texts lose their start.
    pub max_tokens: usize,
}

impl Default for EmbedOptions {
    /// Sentence embeddings as `assets.md` prescribes for MiniLM: mean
    /// pooling, L2-normalised, 256 tokens.
    fn default() -> Self {
        Self { pooling: Pooling::Mean, normalize: true, max_tokens: 256 }
    }
}

/// A tokenized text, ready for the trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Token type (segment) ids, one per token.
    pub type_ids: Vec<u32>,
    /// Tokens dropped to fit the limit.
    pub truncated_token_count: usize,
}

/// One embedding with the token counts the scorer reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The pooled (and maybe normalised) vector, `dim()` values.
    pub vector: Vec<f32>,
    /// Tokens the trunk read, special tokens included.
    pub token_count: usize,
    /// Tokens dropped to fit `max_tokens`.
    pub truncated_token_count: usize,
}

/// A BERT-family encoder with its tokenizer.
pub struct SentenceEncoder {
    model: BertTrunk,
    config: Config,
    tokenizer: Tokenizer,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("hidden_size", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Which tokens to keep when at most `max` of `len` fit, dropping the
/// `candidates` (token indices, in the order they may go) first-come.
/// `None` when even dropping every candidate does not fit.
pub(crate) fn keep_mask(len: usize, max: usize, candidates: impl IntoIterator<Item = usize>) -> Option<Vec<bool>> {
    let mut keep = vec![true; len];
    let mut excess = len.saturating_sub(max);
    for i in candidates {
        if excess == 0 {
            break;
        }
        if let Some(k) = keep.get_mut(i) {
            if *k {
                *k = false;
                excess -= 1;
            }
        }
    }
    (excess == 0).then_some(keep)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from a
    /// directory, in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_parts(dir, DType::F32, device)?.0)
    }

    /// The first `layers` layers of the trunk only, in f32: their final states are the
    /// input of a layer that is not the checkpoint's (see [`crate::cross_head`]).
    pub fn load_layers(dir: &Path, layers: usize, device: &Device) -> Result<Self> {
        Ok(Self::load_parts_with(dir, DType::F32, device, Some(layers))?.0)
    }

    /// Like [`SentenceEncoder::load`] in `dtype`; also returns the
    /// checkpoint's tensors that are not part of the trunk (a classifier
    /// head, a pooler) and the raw `config.json`.
    pub(crate) fn load_parts(
        dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, HashMap<String, Tensor>, serde_json::Value)> {
        Self::load_parts_with(dir, dtype, device, None)
    }

    fn load_parts_with(
        dir: &Path,
        dtype: DType,
        device: &Device,
        layers: Option<usize>,
    ) -> Result<(Self, HashMap<String, Tensor>, serde_json::Value)> {
        let raw = read_json(&dir.join("config.json"))?;
        if let Some(mt) = raw.get("model_type").and_then(|v| v.as_str()) {
            if mt != "bert" {
                return Err(ModelError::Unsupported(format!(
                    "{}: model_type {mt:?}; the encoder handles \"bert\"",
                    dir.join("config.json").display()
                )));
            }
        }
        let mut config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| ModelError::Format(format!("{}: {e}", dir.join("config.json").display())))?;
        if let Some(n) = layers {
            if n == 0 || n > config.num_hidden_layers {
                return Err(ModelError::Unsupported(format!(
                    "{}: {n} layers asked of a trunk with {}",
                    dir.display(),
                    config.num_hidden_layers
                )));
            }
            config.num_hidden_layers = n;
        }
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(ModelError::Io(format!("{}: no such file", weights_path.display())));
        }
        let tensors = candle_core::safetensors::load(&weights_path, device)?;
        // `BertModel` checkpoints name the trunk `embeddings.*`/`encoder.*`;
        // `BertFor*` checkpoints put it under `bert.`.
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert"
        } else if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            return Err(ModelError::Format(format!(
                "{}: no tensor \"embeddings.word_embeddings.weight\" (nor under \"bert.\")",
                weights_path.display()
            )));
        };
        let vb = VarBuilder::from_tensors(tensors.clone(), dtype, device);
        let vb = if prefix.is_empty() { vb } else { vb.pp(prefix) };
        let model = BertTrunk::load(vb, &config)
            .map_err(|e| ModelError::Format(format!("{}: {e}", weights_path.display())))?;
        // What is left (a pooler, a classifier) belongs to the caller.
        let trunk = |k: &str| {
            let k = k.strip_prefix("bert.").unwrap_or(k);
            k.starts_with("embeddings.") || k.starts_with("encoder.")
        };
        let rest: HashMap<String, Tensor> = tensors.into_iter().filter(|(k, _)| !trunk(k)).collect();
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Format(format!("{}: {e}", tok_path.display())))?;
        // The checkpoint's baked-in padding and truncation (128 for MiniLM)
        // would silently cut texts: we pad and truncate ourselves.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::Format(format!("{}: {e}", tok_path.display())))?;
        Ok((Self { model, config, tokenizer, device: device.clone(), dtype }, rest, raw))
    }

    /// Width of an embedding (the hidden size).
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Attention heads per layer.
    pub fn attention_heads(&self) -> usize {
        self.config.num_attention_heads
    }

    /// The layer norms' epsilon.
    pub fn layer_norm_eps(&self) -> f64 {
        self.config.layer_norm_eps
    }

    /// Longest input the trunk accepts, in tokens.
    pub fn max_position_embeddings(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The tokenizer (padding and truncation off).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The device the trunk runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Tokenizes one text with special tokens (`[CLS] text [SEP]`), dropping
    /// tokens from its start beyond `max_tokens`.
    pub fn encode(&self, text: &str, max_tokens: usize) -> Result<Encoded> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Format(format!("tokenizer: {e}")))?;
        let special = enc.get_special_tokens_mask();
        let candidates = (0..enc.len()).filter(|&i| special.get(i) == Some(&0));
        let limit = max_tokens.min(self.max_position_embeddings());
        let keep = keep_mask(enc.len(), limit, candidates).ok_or_else(|| {
            ModelError::Unsupported(format!("max_tokens {max_tokens} leaves no room for the special tokens"))
        })?;
        Ok(Self::select(enc.get_ids(), enc.get_type_ids(), &keep))
    }

    /// The tokens of `ids`/`type_ids` under `keep`, and how many were dropped.
    pub(crate) fn select(ids: &[u32], type_ids: &[u32], keep: &[bool]) -> Encoded {
        let pick = |v: &[u32]| v.iter().zip(keep).filter(|(_, &k)| k).map(|(x, _)| *x).collect::<Vec<_>>();
        Encoded {
            ids: pick(ids),
            type_ids: pick(type_ids),
            truncated_token_count: keep.iter().filter(|&&k| !k).count(),
        }
    }

    /// Embeds texts (the order is kept). Over-long texts lose their start.
    pub fn embed(&self, texts: &[&str], opts: &EmbedOptions) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_detailed(texts, opts)?.into_iter().map(|e| e.vector).collect())
    }

    /// [`SentenceEncoder::embed`] with the tokens read and dropped per text.
    pub fn embed_detailed(&self, texts: &[&str], opts: &EmbedOptions) -> Result<Vec<Embedding>> {
        let encoded = texts.iter().map(|t| self.encode(t, opts.max_tokens)).collect::<Result<Vec<_>>>()?;
        let vectors = self.embed_encoded(&encoded, opts.pooling, opts.normalize)?;
        Ok(vectors
            .into_iter()
            .zip(&encoded)
            .map(|(vector, e)| Embedding { vector, token_count: e.ids.len(), truncated_token_count: e.truncated_token_count })
            .collect())
    }

    /// Embeds already tokenized inputs (see [`SentenceEncoder::encode`]).
    pub fn embed_encoded(&self, batch: &[Encoded], pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(batch.len());
        for (idx, states, mask) in self.run_batched(batch)? {
            let pooled = match pooling {
                Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
                Pooling::Mean => {
                    let m = mask.unsqueeze(2)?; // (b, t, 1)
                    let sum = states.broadcast_mul(&m)?.sum(1)?;
                    let count = m.sum(1)?; // (b, 1), never 0: [CLS] is always there
                    sum.broadcast_div(&count)?
                }
            };
            let pooled = if normalize {
                // torch.nn.functional.normalize: x / max(||x||, 1e-12).
                let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
                pooled.broadcast_div(&norm)?
            } else {
                pooled
            };
            for (i, row) in idx.into_iter().zip(pooled.to_vec2::<f32>()?) {
                out.push((i, row));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    /// Final hidden states of a batch (see [`SentenceEncoder::run_batched`]).
    pub fn hidden_states(&self, batch: &[Encoded]) -> Result<Vec<(Vec<usize>, Tensor, Tensor)>> {
        self.run_batched(batch)
    }

    /// Final hidden states of a batch, in f32: for each sub-batch, the input
    /// indices, `(b, t, hidden)` states and the `(b, t)` f32 attention mask.
    /// Inputs are sorted by length and cut into sub-batches of at most
    /// [`MAX_BATCH_TOKENS`] padded tokens, so little work goes to padding.
    pub(crate) fn run_batched(&self, batch: &[Encoded]) -> Result<Vec<(Vec<usize>, Tensor, Tensor)>> {
        for (i, e) in batch.iter().enumerate() {
            if e.ids.is_empty() || e.ids.len() != e.type_ids.len() {
                return Err(ModelError::Shape(format!("input {i}: {} ids, {} type ids", e.ids.len(), e.type_ids.len())));
            }
            if e.ids.len() > self.max_position_embeddings() {
                return Err(ModelError::Shape(format!(
                    "input {i}: {} tokens exceed the trunk's {} positions",
                    e.ids.len(),
                    self.max_position_embeddings()
                )));
            }
        }
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(batch[i].ids.len()));
        let mut results = Vec::new();
        let mut start = 0;
        while start < order.len() {
            // Sorted longest first: the first row sets the padded length.
            let t = batch[order[start]].ids.len();
            let rows = (MAX_BATCH_TOKENS / t).max(1).min(order.len() - start);
            let idx: Vec<usize> = order[start..start + rows].to_vec();
            let (states, mask) = self.forward_padded(&idx.iter().map(|&i| &batch[i]).collect::<Vec<_>>(), t)?;
            results.push((idx, states, mask));
            start += rows;
        }
        Ok(results)
    }

    fn forward_padded(&self, rows: &[&Encoded], t: usize) -> Result<(Tensor, Tensor)> {
        let b = rows.len();
        let pad = self.config.pad_token_id as u32;
        let mut ids = Vec::with_capacity(b * t);
        let mut types = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for e in rows {
            let n = e.ids.len();
            ids.extend_from_slice(&e.ids);
            ids.extend(std::iter::repeat_n(pad, t - n));
            types.extend_from_slice(&e.type_ids);
            types.extend(std::iter::repeat_n(0u32, t - n));
            mask.extend(std::iter::repeat_n(1f32, n));
            mask.extend(std::iter::repeat_n(0f32, t - n));
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let types = Tensor::from_vec(types, (b, t), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, t), &self.device)?;
        let states = self.model.forward(&ids, &types, &mask)?.to_dtype(DType::F32)?;
        Ok((states, mask))
    }

    /// The states at the first position (`[CLS]`) of each input, `(n, hidden)`
    /// in f32, in input order.
    pub(crate) fn cls_states(&self, batch: &[Encoded]) -> Result<Tensor> {
        let mut parts: Vec<(usize, Tensor)> = Vec::with_capacity(batch.len());
        for (idx, states, _) in self.run_batched(batch)? {
            let cls = states.narrow(1, 0, 1)?.squeeze(1)?;
            for (r, i) in idx.into_iter().enumerate() {
                parts.push((i, cls.get(r)?));
            }
        }
        parts.sort_by_key(|(i, _)| *i);
        let rows: Vec<Tensor> = parts.into_iter().map(|(_, t)| t).collect();
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_mask_drops_candidates_in_order() {
        // 6 tokens, 4 fit; candidates 1..5 go first-come.
        assert_eq!(keep_mask(6, 4, 1..5), Some(vec![true, false, false, true, true, true]));
        assert_eq!(keep_mask(3, 4, 1..2), Some(vec![true; 3]));
        assert_eq!(keep_mask(6, 1, 1..5), None);
    }

    #[test]
    fn encoder_can_move_to_an_engine_thread() {
        fn is_send<T: Send>() {}
        is_send::<SentenceEncoder>();
    }

    #[test]
    fn pooling_parses() {
        assert_eq!("cls".parse::<Pooling>(), Ok(Pooling::Cls));
        assert!("max".parse::<Pooling>().unwrap_err().contains("max"));
    }

    #[test]
    fn cosine_of_parallel_vectors_is_one() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
