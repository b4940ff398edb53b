//! Random-weight checkpoints of real model shapes, for throughput: a forward pass costs
//! the same whatever the weights, so a Llama-3-8B-shaped policy and 7B-shaped
//! `LlamaForScore` cost and reward models measure what the paper's deployment (7B/8B
//! models on one GPU) would get, without shipping 40 GB of weights.
//!
//! A checkpoint is a Hugging Face directory the policy and scorer load like any other:
//! `config.json` (`LlamaForCausalLM`, or safe-rlhf's `LlamaForScore` with its
//! `score_type`), `model.safetensors` in bf16, f16 or f32, written tensor by tensor so
//! memory holds one tensor at a time, and a word-level tokenizer of the model's full
//! vocabulary (`<unk>`, the ChatML markers, then `w4`, `w5`, …): every generated token
//! decodes to one word that a scorer with the same tokenizer reads back as one token, so
//! the scorers see as many tokens as the policy wrote.
//!
//! Weights are uniform in ±1/√fan-in (norms 1): activations stay finite through 32
//! layers in bf16, and the logits are nearly flat, so generations run to full length.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use safetensors::tensor::{Dtype, View};

use crate::tiny_checkpoint::{added_token, tokenizer_document};
use crate::{ModelError, Result};

/// The dimensions of a Llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// What it is shaped like.
    pub name: &'static str,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RoPE base.
    pub rope_theta: f64,
}

/// Meta-Llama-3-8B(-Instruct): 32 layers of width 4,096, 32 query and 8 key/value heads,
/// a 128,256-token vocabulary.
pub const LLAMA3_8B: ModelShape = ModelShape {
    name: "llama-3-8b",
    hidden_size: 4096,
    intermediate_size: 14336,
    num_layers: 32,
    num_heads: 32,
    num_kv_heads: 8,
    vocab_size: 128_256,
    max_position_embeddings: 8192,
    rope_theta: 500_000.0,
};

/// Llama-7B, the trunk of PKU-Alignment's beaver-7b reward and cost models (the paper's
/// scorers): 32 layers of width 4,096, 32 heads without grouping, 32,000 tokens.
pub const LLAMA_7B: ModelShape = ModelShape {
    name: "llama-7b",
    hidden_size: 4096,
    intermediate_size: 11008,
    num_layers: 32,
    num_heads: 32,
    num_kv_heads: 32,
    vocab_size: 32_000,
    max_position_embeddings: 2048,
    rope_theta: 10_000.0,
};

/// SmolLM2-135M-Instruct, the demo policy: 30 layers of width 576, 9 query and 3
/// key/value heads, 49,152 tokens (its embeddings are tied; here the output layer is its
/// own matrix, the same work).
pub const SMOLLM2_135M: ModelShape = ModelShape {
    name: "smollm2-135m",
    hidden_size: 576,
    intermediate_size: 1536,
    num_layers: 30,
    num_heads: 9,
    num_kv_heads: 3,
    vocab_size: 49_152,
    max_position_embeddings: 8192,
    rope_theta: 100_000.0,
};

/// Every named shape.
pub const SHAPES: [ModelShape; 3] = [LLAMA3_8B, LLAMA_7B, SMOLLM2_135M];

impl std::str::FromStr for ModelShape {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        SHAPES.iter().find(|m| m.name == s).cloned().ok_or_else(|| {
            format!("{s:?}: expected one of {}", SHAPES.iter().map(|m| m.name).collect::<Vec<_>>().join(", "))
        })
    }
}

impl ModelShape {
    /// Parameters, embeddings and output layer included.
    pub fn parameters(&self, head: &ShapedHead) -> u64 {
        self.tensors(head).iter().map(|(_, shape, _)| shape.iter().product::<usize>() as u64).sum()
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Every tensor: Hugging Face name, shape, and the half-width of its uniform values
    /// (`None`: a norm weight, all ones).
    fn tensors(&self, head: &ShapedHead) -> Vec<(String, Vec<usize>, Option<f32>)> {
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv = self.num_kv_heads * self.head_dim();
        let fan = |n: usize| Some(1.0 / (n as f32).sqrt());
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h], Some(0.1))];
        for i in 0..self.num_layers {
            let p = format!("model.layers.{i}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h], None));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h], None));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h], fan(h)));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h], fan(h)));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h], fan(h)));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h], fan(h)));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h], fan(h)));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![f, h], fan(h)));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, f], fan(f)));
        }
        t.push(("model.norm.weight".to_string(), vec![h], None));
        match head {
            ShapedHead::CausalLm => t.push(("lm_head.weight".to_string(), vec![v, h], fan(h))),
            ShapedHead::Score(_) => t.push(("score_head.weight".to_string(), vec![1, h], fan(h))),
        }
        t
    }
}

/// What sits on top of the trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapedHead {
    /// `LlamaForCausalLM`: an untied LM head (a policy).
    CausalLm,
    /// safe-rlhf `LlamaForScore` with this `score_type` (`"cost"` or `"reward"`).
    Score(&'static str),
}

/// The weight dtype written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapedDtype {
    /// bfloat16, as the paper's checkpoints ship.
    BF16,
    /// IEEE half.
    F16,
    /// f32.
    F32,
}

impl std::str::FromStr for ShapedDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" => Ok(Self::BF16),
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(format!("{other:?}: expected bf16, f16 or f32")),
        }
    }
}

impl ShapedDtype {
    fn bytes(self) -> usize {
        match self {
            Self::BF16 | Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

/// One tensor, drawn when the writer asks for its bytes.
struct RandomTensor {
    shape: Vec<usize>,
    scale: Option<f32>,
    dtype: ShapedDtype,
    seed: u64,
}

impl RandomTensor {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for RandomTensor {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            ShapedDtype::BF16 => Dtype::BF16,
            ShapedDtype::F16 => Dtype::F16,
            ShapedDtype::F32 => Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut out = Vec::with_capacity(self.data_len());
        let mut bits = 0u64;
        for i in 0..self.len() {
            // Four 16-bit draws per 64-bit word: the 8B model has 8e9 values to draw.
            if i % 4 == 0 {
                bits = rng.next_u64();
            }
            let v = match self.scale {
                None => 1.0,
                Some(s) => ((bits >> (16 * (i % 4))) as u16 as f32 / 32768.0 - 1.0) * s,
            };
            match self.dtype {
                ShapedDtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                ShapedDtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                ShapedDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        self.len() * self.dtype.bytes()
    }
}

/// The ids of the special tokens of a shaped vocabulary.
pub const SHAPED_SPECIALS: [&str; 4] = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// `<|im_end|>`, the end of a turn: the EOS.
pub const SHAPED_EOS: u32 = 3;

/// The word-level tokenizer of the module doc, `vocab` tokens.
fn tokenizer_json(vocab: usize) -> serde_json::Value {
    let mut ids = serde_json::Map::with_capacity(vocab);
    for (i, s) in SHAPED_SPECIALS.iter().enumerate() {
        ids.insert(s.to_string(), serde_json::json!(i));
    }
    for i in SHAPED_SPECIALS.len()..vocab {
        ids.insert(format!("w{i}"), serde_json::json!(i));
    }
    let added = SHAPED_SPECIALS.iter().enumerate().map(|(i, s)| added_token(i, s, true)).collect();
    tokenizer_document(
        added,
        serde_json::json!({"type": "WhitespaceSplit"}),
        serde_json::Value::Null,
        serde_json::json!({"type": "WordLevel", "vocab": ids, "unk_token": "<unk>"}),
    )
}

fn config_json(shape: &ModelShape, head: &ShapedHead, dtype: ShapedDtype) -> serde_json::Value {
    let mut c = serde_json::json!({
        "architectures": [match head { ShapedHead::CausalLm => "LlamaForCausalLM", ShapedHead::Score(_) => "LlamaForScore" }],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim(),
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": SHAPED_EOS,
        "pad_token_id": 0,
        "torch_dtype": match dtype { ShapedDtype::BF16 => "bfloat16", ShapedDtype::F16 => "float16", ShapedDtype::F32 => "float32" },
        "inferenceguard_shaped_like": shape.name,
    });
    if let ShapedHead::Score(score_type) = head {
        c["score_type"] = serde_json::json!(score_type);
        c["score_dim"] = serde_json::json!(1);
        c["score_bias"] = serde_json::json!(false);
        c["do_normalize"] = serde_json::json!(false);
    }
    c
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Format(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
}

/// Writes everything of a checkpoint but its weights into `dir` (created): `config.json`,
/// `tokenizer.json`, `tokenizer_config.json`.
pub fn write_shaped_config(shape: &ModelShape, head: ShapedHead, dtype: ShapedDtype, dir: &Path) -> Result<()> {
    if shape.num_heads == 0 || !shape.hidden_size.is_multiple_of(shape.num_heads) || shape.num_kv_heads == 0 || !shape.num_heads.is_multiple_of(shape.num_kv_heads) {
        return Err(ModelError::Shape(format!(
            "{}: hidden {} with {} heads and {} key/value heads",
            shape.name, shape.hidden_size, shape.num_heads, shape.num_kv_heads
        )));
    }
    if shape.vocab_size <= SHAPED_SPECIALS.len() {
        return Err(ModelError::Shape(format!("{}: a vocabulary of {} tokens", shape.name, shape.vocab_size)));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io(format!("{}: {e}", dir.display())))?;
    write_json(&dir.join("config.json"), &config_json(shape, &head, dtype))?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(shape.vocab_size))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({"chat_template": crate::tiny_checkpoint::CHATML_TEMPLATE, "eos_token": "<|im_end|>",
                            "bos_token": null, "add_bos_token": false}),
    )
}

/// Writes a checkpoint of `shape` with `head` into `dir` (created), weights drawn from
/// `seed`; `on_tensor(done, total)` after each tensor (for a progress bar). Returns `dir`.
pub fn write_shaped_checkpoint(
    shape: &ModelShape,
    head: ShapedHead,
    dtype: ShapedDtype,
    dir: &Path,
    seed: u64,
    on_tensor: &(dyn Fn(u64, u64) + Sync),
) -> Result<PathBuf> {
    write_shaped_config(shape, head, dtype, dir)?;
    let tensors = shape.tensors(&head);
    let total = tensors.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let views: Vec<(String, Counted<'_>)> = tensors
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape, scale))| {
            let tensor = RandomTensor { shape, scale, dtype, seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64) };
            (name, Counted { tensor, done: &done, total, on_tensor })
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    Ok(dir.to_path_buf())
}

/// A tensor that reports when the writer has drawn it.
struct Counted<'a> {
    tensor: RandomTensor,
    done: &'a std::sync::atomic::AtomicU64,
    total: u64,
    on_tensor: &'a (dyn Fn(u64, u64) + Sync),
}

impl View for Counted<'_> {
    fn dtype(&self) -> Dtype {
        self.tensor.dtype()
    }

    fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let data = self.tensor.data();
        let n = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        (self.on_tensor)(n, self.total);
        data
    }

    fn data_len(&self) -> usize {
        self.tensor.data_len()
    }
}
