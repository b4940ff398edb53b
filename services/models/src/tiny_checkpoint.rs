//! Writes small random checkpoints of every supported family, in both
//! formats, with a byte-level tokenizer: what the reference and contract tests
//! load, so each family is checked without any real weights on disk.
//!
//! A checkpoint is the same set of weights written twice: a Hugging Face
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) and a GGUF file whose metadata carries the same
//! tokenizer and a ChatML template, its projections quantized to
//! [`TinySpec::gguf_dtype`]. The vocabulary is the 256 byte-level symbols,
//! two merges, the ChatML markers and the words `safe` / `unsafe` as single
//! tokens, so a tiny model can also stand in for a guard LM in tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::causal_lm::Architecture;
use crate::{ModelError, Result};

/// Tokens after the 256 byte symbols, in id order.
pub const TINY_EXTRA_TOKENS: [&str; 7] = ["ab", "sa", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "safe", "unsafe"];
/// The ids of `<|im_end|>` (end of turn, the EOS) in a tiny vocabulary.
pub const TINY_EOS: u32 = 260;
/// ChatML, as Qwen and SmolLM ship it (without tool calls).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Shape and format of a tiny checkpoint.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// The family (decides biases, Q/K norms, the GGUF architecture name).
    pub architecture: Architecture,
    /// Residual width; a multiple of 256 so K-quants apply.
    pub hidden_size: usize,
    /// MLP width; a multiple of 256.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head (Qwen3 may differ from `hidden / heads`).
    pub head_dim: usize,
    /// Whether the LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's sliding window, written to `config.json` (not to GGUF).
    pub sliding_window: Option<usize>,
    /// Quantization of the GGUF projections (the norms and biases stay f32).
    pub gguf_dtype: GgmlDType,
    /// Seed of the weights.
    pub seed: u64,
}

impl TinySpec {
    /// A two-layer model of the family with grouped-query attention.
    pub fn new(architecture: Architecture) -> Self {
        Self {
            architecture,
            hidden_size: 256,
            intermediate_size: 512,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            tie_word_embeddings: architecture == Architecture::Qwen2,
            sliding_window: None,
            gguf_dtype: GgmlDType::Q8_0,
            seed: 7,
        }
    }

    /// The vocabulary size: 256 bytes plus [`TINY_EXTRA_TOKENS`], padded to 272.
    pub fn vocab_size(&self) -> usize {
        272
    }

    fn rms_norm_eps(&self) -> f64 {
        1e-6
    }

    fn rope_theta(&self) -> f64 {
        match self.architecture {
            Architecture::Qwen2 | Architecture::Qwen3 => 1_000_000.0,
            _ => 10_000.0,
        }
    }

    fn max_positions(&self) -> usize {
        4096
    }
}

/// Paths of a written checkpoint.
#[derive(Debug, Clone)]
pub struct TinyCheckpoint {
    /// The Hugging Face directory.
    pub hf_dir: PathBuf,
    /// The GGUF file.
    pub gguf: PathBuf,
    /// The weights, by Hugging Face name (f32).
    pub weights: HashMap<String, Tensor>,
}

fn byte_symbols() -> Vec<String> {
    // GPT-2's byte-to-unicode map: printable bytes stand for themselves, the
    // rest are shifted past 255 in byte order, so every byte is one visible symbol.
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut shifted = 0;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(c).expect("valid scalar").to_string()
        })
        .collect()
}

/// The tiny vocabulary, by id (byte symbols, then [`TINY_EXTRA_TOKENS`], then padding).
pub fn tiny_vocab(size: usize) -> Vec<String> {
    let mut v = byte_symbols();
    v.extend(TINY_EXTRA_TOKENS.iter().map(|s| s.to_string()));
    while v.len() < size {
        v.push(format!("<|reserved_{}|>", v.len()));
    }
    v
}

/// An entry of `added_tokens` in a `tokenizer.json`.
pub(crate) fn added_token(id: usize, content: &str, special: bool) -> serde_json::Value {
    serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": !special, "special": special})
}

/// A `tokenizer.json` document with no normalizer, post-processor, padding or truncation.
pub(crate) fn tokenizer_document(
    added: Vec<serde_json::Value>,
    pre_tokenizer: serde_json::Value,
    decoder: serde_json::Value,
    model: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": decoder,
        "model": model
    })
}

fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let ids: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    let added = vocab.iter().enumerate().skip(258).map(|(i, t)| added_token(i, t, t.starts_with("<|"))).collect();
    tokenizer_document(
        added,
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                           "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                           "vocab": ids, "merges": [["a", "b"], ["s", "a"]]}),
    )
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

fn norm_weight(rng: &mut ChaCha8Rng, n: usize) -> Result<Tensor> {
    let data: Vec<f32> = (0..n).map(|_| 1.0 + (rng.random::<f32>() - 0.5) * 0.2).collect();
    Ok(Tensor::from_vec(data, n, &Device::Cpu)?)
}

/// Draws the weights of `spec`, by Hugging Face name.
pub fn tiny_weights(spec: &TinySpec) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (h, f, v) = (spec.hidden_size, spec.intermediate_size, spec.vocab_size());
    let (q_out, kv_out) = (spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim);
    let s = 1.0 / (h as f32).sqrt();
    let mut w = HashMap::new();
        // Small enough that tied logits stay spread out, so sampling has choices.
    w.insert("model.embed_tokens.weight".to_string(), random(&mut rng, &[v, h], 0.1)?);
    for i in 0..spec.num_layers {
        let p = format!("model.layers.{i}");
        w.insert(format!("{p}.input_layernorm.weight"), norm_weight(&mut rng, h)?);
        w.insert(format!("{p}.post_attention_layernorm.weight"), norm_weight(&mut rng, h)?);
        w.insert(format!("{p}.self_attn.q_proj.weight"), random(&mut rng, &[q_out, h], s)?);
        w.insert(format!("{p}.self_attn.k_proj.weight"), random(&mut rng, &[kv_out, h], s)?);
        w.insert(format!("{p}.self_attn.v_proj.weight"), random(&mut rng, &[kv_out, h], s)?);
        w.insert(format!("{p}.self_attn.o_proj.weight"), random(&mut rng, &[h, q_out], 1.0 / (q_out as f32).sqrt())?);
        w.insert(format!("{p}.mlp.gate_proj.weight"), random(&mut rng, &[f, h], s)?);
        w.insert(format!("{p}.mlp.up_proj.weight"), random(&mut rng, &[f, h], s)?);
        w.insert(format!("{p}.mlp.down_proj.weight"), random(&mut rng, &[h, f], 1.0 / (f as f32).sqrt())?);
        if spec.architecture == Architecture::Qwen2 {
            w.insert(format!("{p}.self_attn.q_proj.bias"), random(&mut rng, &[q_out], 0.5)?);
            w.insert(format!("{p}.self_attn.k_proj.bias"), random(&mut rng, &[kv_out], 0.5)?);
            w.insert(format!("{p}.self_attn.v_proj.bias"), random(&mut rng, &[kv_out], 0.5)?);
        }
        if spec.architecture == Architecture::Qwen3 {
            w.insert(format!("{p}.self_attn.q_norm.weight"), norm_weight(&mut rng, spec.head_dim)?);
            w.insert(format!("{p}.self_attn.k_norm.weight"), norm_weight(&mut rng, spec.head_dim)?);
        }
    }
    w.insert("model.norm.weight".to_string(), norm_weight(&mut rng, h)?);
    if !spec.tie_word_embeddings {
        w.insert("lm_head.weight".to_string(), random(&mut rng, &[v, h], s)?);
    }
    Ok(w)
}

/// The Hugging Face `config.json` of `spec`, with every key candle-transformers'
/// and transformers' configs of the family read.
pub fn tiny_config(spec: &TinySpec) -> serde_json::Value {
    let class = match spec.architecture {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
    };
    serde_json::json!({
        "architectures": [class],
        "model_type": spec.architecture.name(),
        "vocab_size": spec.vocab_size(),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_positions(),
        "rms_norm_eps": spec.rms_norm_eps(),
        "rope_theta": spec.rope_theta(),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "sliding_window": spec.sliding_window.unwrap_or(spec.max_positions()),
        "use_sliding_window": false,
        "max_window_layers": spec.num_layers,
        "attention_bias": false,
        "eos_token_id": TINY_EOS,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Format(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
}

/// GGUF tensor name of a Hugging Face weight name.
fn gguf_name(hf: &str) -> String {
    if hf == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    if hf == "lm_head.weight" {
        return "output.weight".into();
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer weight");
    let (layer, name) = rest.split_once('.').expect("layer.name");
    let name = name
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("self_attn.q_norm", "attn_q_norm")
        .replace("self_attn.k_norm", "attn_k_norm")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down");
    format!("blk.{layer}.{name}")
}

/// Writes `spec` into `dir` (created): `dir/hf/` and `dir/model.gguf`.
pub fn write_tiny_checkpoint(spec: &TinySpec, dir: &Path) -> Result<TinyCheckpoint> {
    let io = |e: std::io::Error, p: &Path| ModelError::Io(format!("{}: {e}", p.display()));
    let hf_dir = dir.join("hf");
    std::fs::create_dir_all(&hf_dir).map_err(|e| io(e, &hf_dir))?;
    let weights = tiny_weights(spec)?;
    candle_core::safetensors::save(&weights, hf_dir.join("model.safetensors"))?;
    write_json(&hf_dir.join("config.json"), &tiny_config(spec))?;
    let vocab = tiny_vocab(spec.vocab_size());
    write_json(&hf_dir.join("tokenizer.json"), &tokenizer_json(&vocab))?;
    write_json(
        &hf_dir.join("tokenizer_config.json"),
        &serde_json::json!({"chat_template": CHATML_TEMPLATE, "eos_token": "<|im_end|>", "bos_token": null,
                            "add_bos_token": false}),
    )?;

    // GGUF: the same weights; projections quantized, everything 1-D stays f32.
    // Both formats store HF's (out, in) layout. For `llama`, llama.cpp rotates
    // interleaved pairs, so its converter permutes the Q/K rows; we do the
    // same, and both files then compute the same function.
    let arch = match spec.architecture {
        Architecture::Mistral => "llama", // as llama.cpp writes Mistral
        a => a.name(),
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    for name in names {
        let mut t = weights[name].clone();
        if arch == "llama" {
            let heads = if name.ends_with("q_proj.weight") {
                Some(spec.num_heads)
            } else if name.ends_with("k_proj.weight") {
                Some(spec.num_kv_heads)
            } else {
                None
            };
            if let Some(n) = heads {
                let (out, inp) = t.dims2()?;
                t = t.reshape((n, 2, out / n / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?;
            }
        }
        let t = &t;
        let q = if t.rank() == 2 && name != "model.embed_tokens.weight" {
            QTensor::quantize(t, spec.gguf_dtype)?
        } else {
            QTensor::quantize(t, GgmlDType::F32)?
        };
        tensors.push((gguf_name(name), q));
    }
    let tokens: Vec<gguf_file::Value> = vocab.iter().map(|t| gguf_file::Value::String(t.clone())).collect();
    let types: Vec<gguf_file::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| gguf_file::Value::I32(if i >= 258 && t.starts_with("<|") { 3 } else if i >= 258 { 4 } else { 1 }))
        .collect();
    let merges = vec![gguf_file::Value::String("a b".into()), gguf_file::Value::String("s a".into())];
    let u = |v: usize| gguf_file::Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        ("general.architecture".into(), gguf_file::Value::String(arch.into())),
        // candle's quantized_qwen3 computes in f16 unless told the file is f32.
        ("general.dtype".into(), gguf_file::Value::U32(0)),
        (key("block_count"), u(spec.num_layers)),
        (key("context_length"), u(spec.max_positions())),
        (key("embedding_length"), u(spec.hidden_size)),
        (key("feed_forward_length"), u(spec.intermediate_size)),
        (key("attention.head_count"), u(spec.num_heads)),
        (key("attention.head_count_kv"), u(spec.num_kv_heads)),
        (key("attention.key_length"), u(spec.head_dim)),
        (key("attention.value_length"), u(spec.head_dim)),
        (key("rope.dimension_count"), u(spec.head_dim)),
        (key("rope.freq_base"), gguf_file::Value::F32(spec.rope_theta() as f32)),
        (key("attention.layer_norm_rms_epsilon"), gguf_file::Value::F32(spec.rms_norm_eps() as f32)),
        ("tokenizer.ggml.model".into(), gguf_file::Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            gguf_file::Value::String(if arch == "llama" { "smollm".into() } else { "qwen2".into() }),
        ),
        ("tokenizer.ggml.tokens".into(), gguf_file::Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), gguf_file::Value::Array(types)),
        ("tokenizer.ggml.merges".into(), gguf_file::Value::Array(merges)),
        ("tokenizer.ggml.eos_token_id".into(), gguf_file::Value::U32(TINY_EOS)),
        ("tokenizer.ggml.add_bos_token".into(), gguf_file::Value::Bool(false)),
        ("tokenizer.chat_template".into(), gguf_file::Value::String(CHATML_TEMPLATE.into())),
    ];
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let gguf = dir.join("model.gguf");
    let mut file = std::fs::File::create(&gguf).map_err(|e| io(e, &gguf))?;
    let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    Ok(TinyCheckpoint { hf_dir, gguf, weights })
}
