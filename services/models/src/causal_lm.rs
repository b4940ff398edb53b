//! A decoder-only causal LM with an external KV cache: the Llama, Mistral,
//! Qwen2/Qwen2.5 and Qwen3 families.
//!
//! All four are the Llama 2/3 block (Touvron et al., arXiv 2302.13971):
//! pre-norm grouped-query attention with rotary embeddings and a SwiGLU MLP.
//! They differ only in details this one type switches on ([`Architecture`]):
//! Qwen2 adds biases to the Q/K/V projections; Qwen3 drops them and
//! RMS-normalises every query and key head before the rotation; Mistral may
//! restrict attention to a sliding window. One type serves both checkpoint
//! formats the project meets: GGUF as shipped by llama.cpp (quantized; for
//! `llama` the Q/K rows are permuted for interleaved rotary embeddings, for
//! `qwen2`/`qwen3` they are not) and Hugging Face safetensors (`config.json`
//! plus one or many shards, f32/f16/bf16, half-split rotary embeddings).
//!
//! Unlike candle's `quantized_llama`, the cache lives outside the weights (as
//! in candle's `llama.rs`), so one model serves many independent sequences:
//! [`CausalLm::forward_segments`] runs several *segments* (groups of rows that
//! share a cache) in one pass. The linear layers see every row of every
//! segment at once; only attention is done per segment, against that
//! segment's own cache and positions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::kv_cache::KvCache;
use crate::{ModelError, Result};

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: GGUF Llama checkpoints (llama.cpp permutes Q and K).
    Interleaved,
    /// Pairs `(i, i + d/2)`: Hugging Face checkpoints.
    HalfSplit,
}

/// The model families this loader runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM and other Llama-layout models (GGUF `llama`).
    Llama,
    /// Mistral: the Llama layout with an optional sliding attention window.
    /// llama.cpp writes Mistral GGUF files as `llama`.
    Mistral,
    /// Qwen2 and Qwen2.5: biases on the Q/K/V projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm of queries and keys, no Q/K/V biases.
    Qwen3,
}

impl Architecture {
    /// Every supported architecture, as named in `config.json` `model_type`
    /// and GGUF `general.architecture`.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3";

    /// The name `config.json` `model_type` and GGUF use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// Resolves a `model_type` or GGUF architecture name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    /// Resolves a transformers class name such as `Qwen2ForCausalLM` or
    /// `LlamaForSequenceClassification` by its family prefix.
    fn from_class(class: &str) -> Option<Self> {
        let family = class.split("For").next().unwrap_or(class).to_ascii_lowercase();
        Self::from_name(&family)
    }

    fn unsupported(name: &str, source: &str) -> ModelError {
        ModelError::Unsupported(format!("architecture {name:?} ({source}); supported: {}", Self::SUPPORTED))
    }
}

/// The resolved architecture of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CausalLmConfig {
    /// The model family.
    pub architecture: Architecture,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the residual stream (= latent size).
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Rotary base frequency.
    pub rope_theta: f32,
    /// Rotary pairing.
    pub rope_style: RopeStyle,
    /// RMS norm epsilon.
    pub rms_norm_eps: f64,
    /// Positions the rotary table covers (the context length).
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's sliding window: a query at position `i` sees the keys at
    /// positions `j` with `i - window < j <= i` (as transformers masks it).
    pub sliding_window: Option<usize>,
}

/// Weight format kept in memory, chosen at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// As stored in the checkpoint (GGUF quantized types stay quantized;
    /// safetensors half types are widened to f32 on CPU).
    Native,
    /// Every projection re-quantized to Q8_0 (candle has a SIMD kernel for it).
    Q8_0,
    /// Dense f32.
    F32,
    /// Dense f16 (activations in f16; meant for CUDA).
    F16,
    /// Dense bf16 (activations in bf16; meant for CUDA).
    BF16,
    /// Chosen at load from the model's size: on CPU, f32 up to
    /// [`AUTO_F32_MAX_PARAMS`] parameters (dense f32 batches fastest there for
    /// small models) and q8_0 above (a 1.5B model decodes 4.7x faster than
    /// in f32; `docs/benchmarks.md`); on CUDA, f32.
    Auto,
}

/// Most parameters [`WeightDtype::Auto`] keeps in dense f32 on CPU (2 GiB of weights).
pub const AUTO_F32_MAX_PARAMS: u64 = 512 << 20;

impl WeightDtype {
    /// Resolves [`WeightDtype::Auto`] for a model of `params` parameters on `device`.
    pub fn resolve(self, params: u64, device: &Device) -> Self {
        match self {
            Self::Auto if device.is_cpu() && params > AUTO_F32_MAX_PARAMS => Self::Q8_0,
            Self::Auto => Self::F32,
            other => other,
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(Self::Native),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown weight dtype {other:?}: expected auto, native, q8_0, f32, f16 or bf16")),
        }
    }
}

/// Which positions of each row get logits and hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Only the last position of each row (generation).
    Last,
    /// Every position of every row, row-major (tests, scoring).
    All,
}

/// Rows of tokens that share one KV cache.
pub struct Segment<'a> {
    /// `rows * t` token ids, row-major; every row has the same length `t`.
    pub tokens: &'a [u32],
    /// Number of rows; must equal the cache's rows unless the cache is empty.
    pub rows: usize,
    /// The rows' cache; extended in place by `t` positions.
    pub cache: &'a mut KvCache,
}

/// Outputs of a forward pass, in f32, one row per requested position.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `(positions, vocab)` logits.
    pub logits: Tensor,
    /// `(positions, hidden)` hidden states after the final norm.
    pub hidden: Tensor,
}

/// A linear map `y = x W^T (+ b)` over quantized or dense weights.
#[derive(Debug, Clone)]
struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

/// `w` quantized to Q8_0 on its own device. On CUDA, candle 0.11's
/// `QTensor::quantize` leaves the row padding that its matmul kernels read
/// uninitialised (NaN logits, seen on an H100): quantize on the CPU and upload
/// through `QStorage::from_data`, which zeroes the padding like a GGUF load.
fn quantize_q8_0(w: &Tensor) -> Result<QTensor> {
    let device = w.device();
    let w = w.to_dtype(DType::F32)?;
    if !device.is_cuda() {
        return Ok(QTensor::quantize(&w, GgmlDType::Q8_0)?);
    }
    let q = QTensor::quantize(&w.to_device(&Device::Cpu)?, GgmlDType::Q8_0)?;
    let storage = QStorage::from_data(q.data()?, device, GgmlDType::Q8_0)?;
    Ok(QTensor::new(storage, q.shape().clone())?)
}

impl Linear {
    fn from_qtensor(q: QTensor, dtype: WeightDtype, act: DType, device: &Device) -> Result<Self> {
        let inner = match (dtype, q.dtype()) {
            (WeightDtype::Native, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                QMatMul::Tensor(q.dequantize(device)?.to_dtype(act)?)
            }
            (WeightDtype::Native, _) => QMatMul::QTensor(std::sync::Arc::new(q)),
            (WeightDtype::Q8_0, GgmlDType::Q8_0) => QMatMul::QTensor(std::sync::Arc::new(q)),
            (WeightDtype::Q8_0, _) => QMatMul::QTensor(std::sync::Arc::new(quantize_q8_0(&q.dequantize(device)?)?)),
            (WeightDtype::F32 | WeightDtype::F16 | WeightDtype::BF16 | WeightDtype::Auto, _) => {
                QMatMul::Tensor(q.dequantize(device)?.to_dtype(act)?)
            }
        };
        Ok(Self { weight: inner, bias: None })
    }

    fn from_dense(w: Tensor, dtype: WeightDtype, act: DType) -> Result<Self> {
        let inner = match dtype {
            WeightDtype::Q8_0 => QMatMul::QTensor(std::sync::Arc::new(quantize_q8_0(&w)?)),
            _ => QMatMul::Tensor(w.to_dtype(act)?),
        };
        Ok(Self { weight: inner, bias: None })
    }

    fn with_bias(mut self, bias: Option<Tensor>, act: DType) -> Result<Self> {
        self.bias = bias.map(|b| b.to_dtype(act)).transpose()?;
        Ok(self)
    }

    /// `x`: `(n, in)` → `(n, out)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    /// Qwen3's per-head RMSNorm weights of queries and keys (`head_dim`).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A loaded causal LM of any supported family. Immutable: every sequence's state lives in a
/// [`KvCache`] owned by the caller.
#[derive(Debug, Clone)]
pub struct CausalLm {
    cfg: CausalLmConfig,
    embed: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    /// `None` for a trunk loaded to score (see [`CausalLm::trunk_from_safetensors_dir`]):
    /// a score head reads hidden states and must not pay for logits.
    lm_head: Option<Linear>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    act_dtype: DType,
    weight_dtype: String,
}

/// Metadata of a GGUF file that the tokenizer and the policy need besides the
/// weights.
pub type GgufMetadata = HashMap<String, gguf_file::Value>;

fn activation_dtype(dtype: WeightDtype, native_dense: DType, device: &Device) -> DType {
    match dtype {
        WeightDtype::F16 => DType::F16,
        WeightDtype::BF16 => DType::BF16,
        // Half types only pay off with GPU kernels; on CPU compute in f32.
        WeightDtype::Native if device.is_cuda() => native_dense,
        _ => DType::F32,
    }
}

fn rope_tables(cfg: &CausalLmConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1f32 / cfg.rope_theta.powf((2 * i) as f32 / cfg.head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.max_position_embeddings, 1))?;
    let freqs = pos.matmul(&inv)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

fn md<'a>(meta: &'a GgufMetadata, key: &str) -> Result<&'a gguf_file::Value> {
    meta.get(key)
        .ok_or_else(|| ModelError::Format(format!("GGUF metadata has no key {key:?}")))
}

impl CausalLm {
    /// Loads a GGUF checkpoint (`general.architecture` `llama`, `qwen2` or
    /// `qwen3`). Returns the model and the file's metadata (tokenizer, chat
    /// template, special ids). Errors name the file.
    pub fn from_gguf(path: &Path, dtype: WeightDtype, device: &Device) -> Result<(Self, GgufMetadata)> {
        Self::load_gguf(path, dtype, device).map_err(|e| match e {
            ModelError::Format(m) => ModelError::Format(format!("{}: {m}", path.display())),
            ModelError::Unsupported(m) => ModelError::Unsupported(format!("{}: {m}", path.display())),
            ModelError::Candle(c) => ModelError::Format(format!("{}: {c}", path.display())),
            other => other,
        })
    }

    fn load_gguf(path: &Path, dtype: WeightDtype, device: &Device) -> Result<(Self, GgufMetadata)> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| ModelError::Format(format!("not a GGUF file: {e}")))?;
        let meta = content.metadata.clone();
        let params: u64 = content.tensor_infos.values().map(|t| t.shape.elem_count() as u64).sum();
        let dtype = dtype.resolve(params, device);
        let arch_name = md(&meta, "general.architecture")?.to_string()?.clone();
        // llama.cpp writes Mistral checkpoints as `llama`.
        let architecture = Architecture::from_name(&arch_name).filter(|a| *a != Architecture::Mistral).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "architecture {arch_name:?} (GGUF general.architecture); supported: llama (also Mistral), qwen2, qwen3"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get_u = |k: &str| -> Result<usize> { Ok(md(&meta, &key(k))?.to_u32()? as usize) };
        let opt_u = |k: &str| -> Result<Option<usize>> {
            meta.get(&key(k)).map(|v| Ok(v.to_u32()? as usize)).transpose()
        };
        let num_heads = get_u("attention.head_count")?;
        let hidden_size = get_u("embedding_length")?;
        // Qwen3 heads are wider than hidden / heads: `key_length` says so.
        let head_dim = match opt_u("attention.key_length")? {
            Some(d) => d,
            None => opt_u("rope.dimension_count")?.unwrap_or(hidden_size / num_heads),
        };
        // Every tensor is read through here, so a missing one is named.
        let read = |file: &mut std::fs::File, name: &str| -> Result<QTensor> {
            if !content.tensor_infos.contains_key(name) {
                return Err(ModelError::Format(format!("missing tensor {name:?}")));
            }
            Ok(content.tensor(file, name, device)?)
        };
        let embd_q = read(&mut file, "token_embd.weight")?;
        let vocab_size = embd_q.shape().dims()[0];
        let has_output = content.tensor_infos.contains_key("output.weight");
        let cfg = CausalLmConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            num_layers: get_u("block_count")?,
            num_heads,
            num_kv_heads: opt_u("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim,
            rope_theta: meta.get(&key("rope.freq_base")).map(|v| v.to_f32()).transpose()?.unwrap_or(10_000.),
            // llama.cpp permutes Q/K of `llama` for its interleaved rotation; the
            // Qwen families use the half-split (NeoX) rotation unpermuted.
            rope_style: if architecture == Architecture::Llama { RopeStyle::Interleaved } else { RopeStyle::HalfSplit },
            rms_norm_eps: md(&meta, &key("attention.layer_norm_rms_epsilon"))?.to_f32()? as f64,
            max_position_embeddings: get_u("context_length")?,
            tie_word_embeddings: !has_output,
            sliding_window: opt_u("attention.sliding_window")?,
        };
        let act = activation_dtype(dtype, DType::F32, device);
        let embed = embd_q.dequantize(device)?.to_dtype(act)?;
        let lm_head = if has_output {
            Linear::from_qtensor(read(&mut file, "output.weight")?, dtype, act, device)?
        } else {
            match dtype {
                // Dense modes share the embedding matrix instead of a second copy.
                WeightDtype::F32 | WeightDtype::F16 | WeightDtype::BF16 => {
                    Linear { weight: QMatMul::Tensor(embed.clone()), bias: None }
                }
                _ => Linear::from_qtensor(embd_q, dtype, act, device)?,
            }
        };
        let dense = |file: &mut std::fs::File, name: &str| -> Result<Tensor> {
            Ok(read(file, name)?.dequantize(device)?.to_dtype(act)?)
        };
        let optional = |file: &mut std::fs::File, name: &str| -> Result<Option<Tensor>> {
            if content.tensor_infos.contains_key(name) { dense(file, name).map(Some) } else { Ok(None) }
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let w = |n: &str| format!("blk.{i}.{n}");
            let attn_norm = dense(&mut file, &w("attn_norm.weight"))?;
            let ffn_norm = dense(&mut file, &w("ffn_norm.weight"))?;
            let (bq, bk) = (optional(&mut file, &w("attn_q.bias"))?, optional(&mut file, &w("attn_k.bias"))?);
            let (bv, bo) = (optional(&mut file, &w("attn_v.bias"))?, optional(&mut file, &w("attn_output.bias"))?);
            let (q_norm, k_norm) = if architecture == Architecture::Qwen3 {
                (Some(dense(&mut file, &w("attn_q_norm.weight"))?), Some(dense(&mut file, &w("attn_k_norm.weight"))?))
            } else {
                (None, None)
            };
            let mut lin = |n: &str| -> Result<Linear> {
                Linear::from_qtensor(read(&mut file, &w(&format!("{n}.weight")))?, dtype, act, device)
            };
            let (wq, wk) = (lin("attn_q")?.with_bias(bq, act)?, lin("attn_k")?.with_bias(bk, act)?);
            let (wv, wo) = (lin("attn_v")?.with_bias(bv, act)?, lin("attn_output")?.with_bias(bo, act)?);
            let (w_gate, w_up, w_down) = (lin("ffn_gate")?, lin("ffn_up")?, lin("ffn_down")?);
            layers.push(Block { attn_norm, ffn_norm, q_norm, k_norm, wq, wk, wv, wo, w_gate, w_up, w_down });
        }
        let norm = dense(&mut file, "output_norm.weight")?;
        let weight_dtype = match dtype {
            WeightDtype::Native => layers[0].wq_dtype_name().to_lowercase(),
            other => dtype_name(other).into(),
        };
        let (cos, sin) = rope_tables(&cfg, act, device)?;
        let model =
            Self { cfg, embed, layers, norm, lm_head: Some(lm_head), cos, sin, device: device.clone(), act_dtype: act, weight_dtype };
        Ok((model, meta))
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` plus
    /// `model.safetensors` or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn from_safetensors_dir(dir: &Path, dtype: WeightDtype, device: &Device) -> Result<Self> {
        Ok(Self::load_hf(dir, dtype, device, true)?.0)
    }

    /// Loads the trunk of a Hugging Face checkpoint directory without its LM
    /// head, as score models need it (`LlamaForSequenceClassification`,
    /// PKU-Alignment's `LlamaForScore`). Returns the model and the tensors
    /// the trunk did not use (the score head, a normaliser; an
    /// `lm_head.weight` is dropped).
    pub fn trunk_from_safetensors_dir(
        dir: &Path,
        dtype: WeightDtype,
        device: &Device,
    ) -> Result<(Self, HashMap<String, Tensor>)> {
        Self::load_hf(dir, dtype, device, false)
    }

    fn load_hf(dir: &Path, dtype: WeightDtype, device: &Device, with_lm_head: bool) -> Result<(Self, HashMap<String, Tensor>)> {
        let cfg_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| ModelError::Io(format!("{}: {e}", dir.join("config.json").display())))?;
        let hf: serde_json::Value = serde_json::from_str(&cfg_text)
            .map_err(|e| ModelError::Format(format!("{}: {e}", dir.join("config.json").display())))?;
        let cfg = config_from_hf(&hf).map_err(|e| match e {
            ModelError::Format(m) => ModelError::Format(format!("{}: {m}", dir.join("config.json").display())),
            ModelError::Unsupported(m) => ModelError::Unsupported(format!("{}: {m}", dir.join("config.json").display())),
            other => other,
        })?;
        let files = safetensors_files(dir)?;
        let mut weights: HashMap<String, Tensor> = HashMap::new();
        for f in &files {
            weights.extend(candle_core::safetensors::load(f, device)?);
        }
        let params: u64 = weights.values().map(|t| t.elem_count() as u64).sum();
        let dtype = dtype.resolve(params, device);
        let native_dense = weights
            .get("model.embed_tokens.weight")
            .map(|t| t.dtype())
            .ok_or_else(|| ModelError::Format("missing tensor model.embed_tokens.weight".into()))?;
        let act = activation_dtype(dtype, native_dense, device);
        let mut take = |name: &str| -> Result<Tensor> {
            weights
                .remove(name)
                .ok_or_else(|| ModelError::Format(format!("missing tensor {name:?} in {}", dir.display())))
        };
        let embed = take("model.embed_tokens.weight")?.to_dtype(act)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut bias = |n: &str| weights.remove(&format!("{p}.{n}.bias"));
            let (bq, bk, bv, bo) =
                (bias("self_attn.q_proj"), bias("self_attn.k_proj"), bias("self_attn.v_proj"), bias("self_attn.o_proj"));
            let mut take = |name: &str| -> Result<Tensor> {
                weights
                    .remove(name)
                    .ok_or_else(|| ModelError::Format(format!("missing tensor {name:?} in {}", dir.display())))
            };
            let (q_norm, k_norm) = if cfg.architecture == Architecture::Qwen3 {
                (
                    Some(take(&format!("{p}.self_attn.q_norm.weight"))?.to_dtype(act)?),
                    Some(take(&format!("{p}.self_attn.k_norm.weight"))?.to_dtype(act)?),
                )
            } else {
                (None, None)
            };
            let mut lin = |n: &str| -> Result<Linear> { Linear::from_dense(take(&format!("{p}.{n}.weight"))?, dtype, act) };
            let (wq, wk) = (lin("self_attn.q_proj")?.with_bias(bq, act)?, lin("self_attn.k_proj")?.with_bias(bk, act)?);
            let (wv, wo) = (lin("self_attn.v_proj")?.with_bias(bv, act)?, lin("self_attn.o_proj")?.with_bias(bo, act)?);
            let (w_gate, w_up, w_down) = (lin("mlp.gate_proj")?, lin("mlp.up_proj")?, lin("mlp.down_proj")?);
            let attn_norm = take(&format!("{p}.input_layernorm.weight"))?.to_dtype(act)?;
            let ffn_norm = take(&format!("{p}.post_attention_layernorm.weight"))?.to_dtype(act)?;
            layers.push(Block { attn_norm, ffn_norm, q_norm, k_norm, wq, wk, wv, wo, w_gate, w_up, w_down });
        }
        let mut take = |name: &str| -> Result<Tensor> {
            weights
                .remove(name)
                .ok_or_else(|| ModelError::Format(format!("missing tensor {name:?} in {}", dir.display())))
        };
        let norm = take("model.norm.weight")?.to_dtype(act)?;
        let lm_head = match weights.remove("lm_head.weight") {
            _ if !with_lm_head => None,
            Some(w) => Some(Linear::from_dense(w, dtype, act)?),
            None if cfg.tie_word_embeddings => Some(Linear::from_dense(embed.clone(), dtype, act)?),
            None => {
                return Err(ModelError::Format(
                    "missing tensor \"lm_head.weight\" and tie_word_embeddings is false".into(),
                ))
            }
        };
        let weight_dtype = match dtype {
            WeightDtype::Native => format!("{act:?}").to_lowercase(),
            other => dtype_name(other).into(),
        };
        let (cos, sin) = rope_tables(&cfg, act, device)?;
        let model = Self { cfg, embed, layers, norm, lm_head, cos, sin, device: device.clone(), act_dtype: act, weight_dtype };
        Ok((model, weights))
    }

    /// The resolved architecture.
    pub fn config(&self) -> &CausalLmConfig {
        &self.cfg
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weight format in memory, e.g. "q4_1" or "f32".
    pub fn weight_dtype(&self) -> &str {
        &self.weight_dtype
    }

    /// Whether the model was loaded with its LM head (a scoring trunk is not).
    pub fn has_lm_head(&self) -> bool {
        self.lm_head.is_some()
    }

    /// The activation dtype (f32 on CPU).
    pub fn activation_dtype(&self) -> DType {
        self.act_dtype
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_layers)
    }

    /// Runs `tokens` (`rows x t`, row-major) through the model, extending
    /// `cache` by `t` positions.
    pub fn forward(&self, tokens: &[u32], rows: usize, cache: &mut KvCache, positions: Positions) -> Result<ForwardOutput> {
        self.forward_segments(&mut [Segment { tokens, rows, cache }], positions)
    }

    /// Runs several segments in one pass. The output rows follow the
    /// segments' order (and within a segment, its rows; with
    /// [`Positions::All`], every position of each row). Fails on a trunk
    /// loaded without its LM head (use [`CausalLm::hidden_segments`]).
    pub fn forward_segments(&self, segments: &mut [Segment<'_>], positions: Positions) -> Result<ForwardOutput> {
        // Checked before any cache is extended, so a failed call changes nothing.
        let lm_head = self
            .lm_head
            .as_ref()
            .ok_or_else(|| ModelError::Unsupported("this model was loaded without its LM head (a scoring trunk)".into()))?;
        let hidden = self.trunk_forward(segments, positions)?;
        let logits = lm_head.forward(&hidden)?;
        Ok(ForwardOutput { logits: logits.to_dtype(DType::F32)?, hidden: hidden.to_dtype(DType::F32)? })
    }

    /// The LM head alone: `(rows, hidden)` f32 post-norm hidden states (such
    /// as the latents [`CausalLm::forward_segments`] returns, possibly edited) to
    /// `(rows, vocab)` f32 logits. It is the last step of a forward pass, done
    /// the same way: for one row, the logits of a one-row pass's own hidden
    /// state come back bit for bit. Matmuls of one row and of several round
    /// differently (gemv against blocked gemm on CPU), so a caller that must
    /// reproduce what a pass of one row computes calls it with one row.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let lm_head = self
            .lm_head
            .as_ref()
            .ok_or_else(|| ModelError::Unsupported("this model was loaded without its LM head (a scoring trunk)".into()))?;
        let (_, dim) = hidden.dims2()?;
        if dim != self.cfg.hidden_size {
            return Err(ModelError::Shape(format!("hidden states of width {dim}, the model's is {}", self.cfg.hidden_size)));
        }
        let x = hidden.to_device(&self.device)?.to_dtype(self.act_dtype)?;
        Ok(lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Like [`CausalLm::forward_segments`] but stops at the final norm: the
    /// `(positions, hidden)` f32 hidden states, without computing logits
    /// (what a score head reads).
    pub fn hidden_segments(&self, segments: &mut [Segment<'_>], positions: Positions) -> Result<Tensor> {
        Ok(self.trunk_forward(segments, positions)?.to_dtype(DType::F32)?)
    }

    /// The blocks and the final norm, in the activation dtype.
    fn trunk_forward(&self, segments: &mut [Segment<'_>], positions: Positions) -> Result<Tensor> {
        let mut shapes = Vec::with_capacity(segments.len());
        let mut all_tokens = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            if s.rows == 0 || s.tokens.is_empty() || s.tokens.len() % s.rows != 0 {
                return Err(ModelError::Shape(format!(
                    "segment {i}: {} tokens do not split into {} equal rows",
                    s.tokens.len(),
                    s.rows
                )));
            }
            let t = s.tokens.len() / s.rows;
            if !s.cache.is_empty() && s.cache.rows() != s.rows {
                return Err(ModelError::Shape(format!(
                    "segment {i}: {} rows but its cache holds {}",
                    s.rows,
                    s.cache.rows()
                )));
            }
            let start = s.cache.len();
            if start + t > self.cfg.max_position_embeddings {
                return Err(ModelError::Shape(format!(
                    "segment {i}: {} positions exceed the model's context of {}",
                    start + t,
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(bad) = s.tokens.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                return Err(ModelError::Shape(format!("token id {bad} >= vocabulary size {}", self.cfg.vocab_size)));
            }
            shapes.push((s.rows, t, start));
            all_tokens.extend_from_slice(s.tokens);
        }
        for (s, &(_, t, _)) in segments.iter_mut().zip(&shapes) {
            s.cache.reserve(t)?;
        }
        // Each prefill segment's causal mask, built once for every layer (on a GPU each
        // build is an upload from the host).
        let masks: Vec<Option<Tensor>> = shapes
            .iter()
            .map(|&(_, t, start)| (t > 1).then(|| causal_mask(t, start, self.cfg.sliding_window, self.act_dtype, &self.device)).transpose())
            .collect::<Result<_>>()?;
        let n = all_tokens.len();
        let ids = Tensor::from_vec(all_tokens, n, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // (n, hidden)
        let eps = self.cfg.rms_norm_eps as f32;
        for (l, block) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let mut q = block.wq.forward(&h)?;
            let mut k = block.wk.forward(&h)?;
            if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                q = self.head_norm(&q, qn)?;
                k = self.head_norm(&k, kn)?;
            }
            let v = block.wv.forward(&h)?;
            let mut outs = Vec::with_capacity(segments.len());
            let mut off = 0;
            for ((s, &(rows, t, start)), mask) in segments.iter_mut().zip(&shapes).zip(&masks) {
                let len = rows * t;
                let y = self.attention(
                    &q.narrow(0, off, len)?,
                    &k.narrow(0, off, len)?,
                    &v.narrow(0, off, len)?,
                    (rows, t, start),
                    mask.as_ref(),
                    s.cache,
                    l,
                )?;
                outs.push(y);
                off += len;
            }
            let attn = if outs.len() == 1 { outs.pop().expect("one segment") } else { Tensor::cat(&outs, 0)? };
            x = (x + block.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&block.w_gate.forward(&h)?)?;
            let up = block.w_up.forward(&h)?;
            x = (x + block.w_down.forward(&(gate * up)?)?)?;
        }
        for (s, &(rows, t, _)) in segments.iter_mut().zip(&shapes) {
            s.cache.advance(rows, t);
        }
        let x = match positions {
            Positions::All => x,
            Positions::Last => {
                let mut last = Vec::new();
                let mut off = 0u32;
                for &(rows, t, _) in &shapes {
                    for r in 0..rows as u32 {
                        last.push(off + (r + 1) * t as u32 - 1);
                    }
                    off += (rows * t) as u32;
                }
                let idx = Tensor::from_vec(last.clone(), last.len(), &self.device)?;
                x.index_select(&idx, 0)?
            }
        };
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }

    /// Qwen3's RMSNorm of every head: `x` is `(n, heads * head_dim)`.
    fn head_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (n, width) = x.dims2()?;
        let hd = self.cfg.head_dim;
        let y = candle_nn::ops::rms_norm(&x.reshape((n, width / hd, hd))?, weight, self.cfg.rms_norm_eps as f32)?;
        Ok(y.reshape((n, width))?)
    }

    /// Attention of one segment of `rows` rows of `t` new positions after
    /// `start` cached ones: `q`, `k`, `v` are `(rows * t, heads * head_dim)`;
    /// `mask` is the segment's causal mask when `t > 1`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (rows, t, start): (usize, usize, usize),
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let q = q.reshape((rows, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((rows, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((rows, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let (q, k) = match self.cfg.rope_style {
            RopeStyle::Interleaved => (
                candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
            ),
            RopeStyle::HalfSplit => (
                candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
            ),
        };
        let (k, v) = cache.append(layer, k, v)?; // (rows, nkv, L, hd)
        let window = self.cfg.sliding_window;
        let scale = 1.0 / (hd as f64).sqrt();
        let group = nh / nkv;
        let y = if t == 1 {
            // Decoding: the `group` query heads that share a KV head are
            // stacked along that head's query axis, so K/V are never copied
            // per query head. A sliding window keeps the last `w` keys.
            let (k, v) = match window {
                Some(w) if k.dim(2)? > w => {
                    let len = k.dim(2)?;
                    (k.narrow(2, len - w, w)?, v.narrow(2, len - w, w)?)
                }
                _ => (k, v),
            };
            let q = q.reshape((rows, nkv, group, hd))?;
            let att = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?; // (rows, nkv, group, L)
            att.matmul(&v)?.reshape((rows, nh, 1, hd))?
        } else {
            // Prefill: K/V repeated per query head, the same arithmetic as
            // candle's reference implementation. Stacking the heads as in
            // decoding changes attention by ~1e-6, which the quantized
            // activations of a Q4_1 checkpoint amplify to ~0.5 in the
            // logits; prefill attention is a small share of its time.
            let k = candle_transformers::utils::repeat_kv(k, group)?.contiguous()?;
            let v = candle_transformers::utils::repeat_kv(v, group)?.contiguous()?;
            let att = (q.matmul(&k.t()?)? * scale)?; // (rows, nh, t, L)
            let mask = mask.ok_or_else(|| ModelError::Shape("a prefill segment without its mask".into()))?; // (t, L)
            let att = candle_nn::ops::softmax_last_dim(&att.broadcast_add(mask)?)?;
            att.matmul(&v)?
        };
        let y = y.transpose(1, 2)?.reshape((rows * t, nh * hd))?;
        Ok(y)
    }
}

impl Block {
    fn wq_dtype_name(&self) -> String {
        match &self.wq.weight {
            QMatMul::QTensor(q) => format!("{:?}", q.dtype()),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => format!("{:?}", t.dtype()),
        }
    }
}

fn dtype_name(d: WeightDtype) -> &'static str {
    match d {
        WeightDtype::Native => "native",
        WeightDtype::Q8_0 => "q8_0",
        WeightDtype::F32 => "f32",
        WeightDtype::F16 => "f16",
        WeightDtype::BF16 => "bf16",
        WeightDtype::Auto => "auto",
    }
}

/// Additive causal mask `(t, start + t)`: 0 where query `i` (at position
/// `start + i`) may attend, -inf after it and, with a sliding window `w`, at
/// or before `start + i - w`.
fn causal_mask(t: usize, start: usize, window: Option<usize>, dtype: DType, device: &Device) -> Result<Tensor> {
    let kv = start + t;
    let w = window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..kv).map(move |j| if j > start + i || start + i - j >= w { f32::NEG_INFINITY } else { 0. })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, kv), device)?.to_dtype(dtype)?)
}

/// Resolves a Hugging Face `config.json` into [`CausalLmConfig`]. The
/// family comes from `model_type`, else from the class in `architectures`.
pub fn config_from_hf(hf: &serde_json::Value) -> Result<CausalLmConfig> {
    let get = |k: &str| hf.get(k).filter(|v| !v.is_null());
    let req_u = |k: &str| -> Result<usize> {
        get(k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::Format(format!("missing or non-integer {k:?}")))
    };
    let architecture = match get("model_type").and_then(|v| v.as_str()) {
        Some(mt) => Architecture::from_name(mt).ok_or_else(|| Architecture::unsupported(mt, "model_type"))?,
        None => {
            let class = get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_str())
                .ok_or_else(|| ModelError::Format("neither \"model_type\" nor \"architectures\"".into()))?;
            Architecture::from_class(class).ok_or_else(|| Architecture::unsupported(class, "architectures"))?
        }
    };
    // Attention biases load when the weights have them (Qwen2 always does);
    // MLP biases have no slot in the block.
    if get("mlp_bias").and_then(|v| v.as_bool()) == Some(true) {
        return Err(ModelError::Unsupported("mlp_bias = true".into()));
    }
    // Qwen2's windows apply to some layers only (`max_window_layers`); its
    // released checkpoints all ship with them off.
    if architecture != Architecture::Mistral && get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
        return Err(ModelError::Unsupported(format!(
            "use_sliding_window = true for {} (per-layer sliding windows)",
            architecture.name()
        )));
    }
    let sliding_window = match architecture {
        Architecture::Mistral => get("sliding_window").and_then(|v| v.as_u64()).map(|v| v as usize),
        _ => None,
    };
    // transformers >= 5 stores rotary settings under `rope_parameters`;
    // older files put `rope_theta` and `rope_scaling` at the top level.
    let rope = get("rope_parameters");
    let rope_theta = rope
        .and_then(|r| r.get("rope_theta"))
        .or_else(|| get("rope_theta"))
        .and_then(|v| v.as_f64())
        .unwrap_or(10_000.0) as f32;
    let rope_type = rope
        .and_then(|r| r.get("rope_type"))
        .or_else(|| get("rope_scaling").and_then(|s| s.get("rope_type").or_else(|| s.get("type"))))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(ModelError::Unsupported(format!("rope scaling type {rope_type:?}")));
    }
    let hidden_size = req_u("hidden_size")?;
    let num_heads = req_u("num_attention_heads")?;
    let head_dim = get("head_dim").and_then(|v| v.as_u64()).map(|v| v as usize).unwrap_or(hidden_size / num_heads);
    Ok(CausalLmConfig {
        architecture,
        vocab_size: req_u("vocab_size")?,
        hidden_size,
        intermediate_size: req_u("intermediate_size")?,
        num_layers: req_u("num_hidden_layers")?,
        num_heads,
        num_kv_heads: get("num_key_value_heads").and_then(|v| v.as_u64()).map(|v| v as usize).unwrap_or(num_heads),
        head_dim,
        rope_theta,
        rope_style: RopeStyle::HalfSplit,
        rms_norm_eps: get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6),
        max_position_embeddings: req_u("max_position_embeddings")?,
        tie_word_embeddings: get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false),
        sliding_window,
    })
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io(format!("{}: {e}", index.display())))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", index.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Format(format!("{}: no weight_map", index.display())))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::Io(format!(
        "{}: neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_blocks_future_positions() -> Result<()> {
        // t = 2 new queries after 1 cached position: rows see [0,1] and [0,1,2].
        let m = causal_mask(2, 1, None, DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(m[0][..2], [0., 0.]);
        assert!(m[0][2].is_infinite());
        assert_eq!(m[1], [0., 0., 0.]);
        Ok(())
    }

    #[test]
    fn hf_config_reads_rope_parameters_of_transformers_5() -> Result<()> {
        let hf = serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 32, "rope_parameters": {"rope_theta": 50000.0, "rope_type": "default"}
        });
        let cfg = config_from_hf(&hf)?;
        assert_eq!(cfg.rope_theta, 50000.0);
        assert_eq!(cfg.head_dim, 4);
        assert_eq!(cfg.num_kv_heads, 1);
        Ok(())
    }

    #[test]
    fn dtype_parses_and_rejects() {
        assert_eq!("Q8_0".parse::<WeightDtype>(), Ok(WeightDtype::Q8_0));
        assert_eq!("auto".parse::<WeightDtype>(), Ok(WeightDtype::Auto));
        let cpu = Device::Cpu;
        assert_eq!(WeightDtype::Auto.resolve(135_000_000, &cpu), WeightDtype::F32);
        assert_eq!(WeightDtype::Auto.resolve(1_540_000_000, &cpu), WeightDtype::Q8_0);
        assert_eq!(WeightDtype::Native.resolve(1_540_000_000, &cpu), WeightDtype::Native);
        assert!("int4".parse::<WeightDtype>().unwrap_err().contains("int4"));
    }
}
