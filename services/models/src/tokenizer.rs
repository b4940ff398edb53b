//! Tokenizers and chat templates.
//!
//! A Hugging Face checkpoint brings `tokenizer.json`; a GGUF file carries its
//! vocabulary and merges in metadata, from which we build the same byte-level
//! BPE (tokenizers 0.23: candle's `TokenizerFromGguf` mangles this model's
//! text, and tokenizers 1.0-rc rejects its vocabulary). Chat templates are the
//! model's own Jinja source, rendered with minijinja and its Python-compatible
//! string methods.

use std::path::Path;

use ig_core::policy::{ChatMessage, TextCodec};
use ig_core::RoleError;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

use crate::causal_lm::GgufMetadata;
use crate::{ModelError, Result};

/// Llama 3's pre-tokenizer split (GGUF `tokenizer.ggml.pre` = `llama-bpe`), as
/// in its `tokenizer.json`: numbers in groups of up to three digits.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (`qwen2`): the same, but every digit on its own.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The GGUF pre-tokenizers [`TokenizerCodec::from_gguf`] rebuilds.
pub const GGUF_PRE_TOKENIZERS: &str = "smollm, llama-bpe, qwen2, default";

/// The pre-tokenizer (and normaliser) a GGUF `tokenizer.ggml.pre` names, as
/// the model's own `tokenizer.json` spells it out.
fn gguf_pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Format(format!("pre-tokenizer regex: {e}")))?
            .into())
    };
    Ok(match pre {
        // SmolLM2: digits one by one, then GPT-2's byte-level regex split; no prefix space.
        "smollm" => (Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(), false),
        "llama-bpe" => (Sequence::new(vec![split(LLAMA3_SPLIT)?, ByteLevel::new(false, true, false).into()]).into(), false),
        // Qwen2/2.5 (and Qwen3, which llama.cpp also tags `qwen2`) normalise to NFC first.
        "qwen2" => (Sequence::new(vec![split(QWEN2_SPLIT)?, ByteLevel::new(false, false, false).into()]).into(), true),
        // GPT-2 itself, and files written before llama.cpp recorded the pre-tokenizer.
        "default" | "gpt-2" | "" => (ByteLevel::new(false, true, true).into(), false),
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer.ggml.pre {other:?}; rebuilt from metadata: {GGUF_PRE_TOKENIZERS} \
                 (or put the model's tokenizer.json beside the file)"
            )))
        }
    })
}

/// GGUF token type of control tokens (chat markup, EOS, ...).
const GGUF_TOKEN_CONTROL: i32 = 3;
/// GGUF token type of user-defined added tokens.
const GGUF_TOKEN_USER_DEFINED: i32 = 4;

/// Tokenizer plus chat template of one model.
pub struct TokenizerCodec {
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    env: minijinja::Environment<'static>,
    bos_token: Option<(u32, String)>,
    eos_token: Option<(u32, String)>,
    eos_ids: Vec<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for TokenizerCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerCodec")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("eos_ids", &self.eos_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn meta_str<'a>(meta: &'a GgufMetadata, key: &str) -> Option<&'a String> {
    meta.get(key).and_then(|v| v.to_string().ok())
}

fn meta_u32(meta: &GgufMetadata, key: &str) -> Option<u32> {
    meta.get(key).and_then(|v| v.to_u32().ok())
}

impl TokenizerCodec {
    /// Builds the tokenizer recorded in a GGUF file's metadata (`gpt2`-style
    /// byte-level BPE, as llama.cpp writes it for Llama 3, SmolLM and others).
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Self> {
        let model = meta_str(meta, "tokenizer.ggml.model").map(String::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model {model:?}: only byte-level BPE (\"gpt2\") is built from metadata; \
                 pass a tokenizer.json instead"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            meta.get(key)
                .ok_or_else(|| ModelError::Format(format!("GGUF metadata has no key {key:?}")))?
                .to_vec()?
                .iter()
                .map(|v| Ok(v.to_string()?.clone()))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ModelError::Format(format!("GGUF merge {m:?} has no space")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec()?.iter().map(|t| t.to_i32()).collect::<std::result::Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Format(format!("GGUF tokenizer: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = meta_str(meta, "tokenizer.ggml.pre").map(String::as_str).unwrap_or("");
        let (pre_tokenizer, nfc) = gguf_pre_tokenizer(pre)?;
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        if nfc {
            tokenizer.with_normalizer(Some(NFC)).map_err(|e| ModelError::Format(format!("GGUF tokenizer: {e}")))?;
        }
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == GGUF_TOKEN_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tokenizer.add_special_tokens(special).map_err(|e| ModelError::Format(format!("GGUF special tokens: {e}")))?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == GGUF_TOKEN_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), false))
            .collect();
        tokenizer.add_tokens(user).map_err(|e| ModelError::Format(format!("GGUF added tokens: {e}")))?;
        let named = |key: &str| meta_u32(meta, key).and_then(|id| tokens.get(id as usize).map(|s| (id, s.clone())));
        let bos_token = named("tokenizer.ggml.bos_token_id");
        let eos_token = named("tokenizer.ggml.eos_token_id");
        let mut eos_ids: Vec<u32> = eos_token.iter().map(|(id, _)| *id).collect();
        if let Some(eot) = meta_u32(meta, "tokenizer.ggml.eot_token_id") {
            if !eos_ids.contains(&eot) {
                eos_ids.push(eot);
            }
        }
        let add_bos = meta.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        let chat_template = meta_str(meta, "tokenizer.chat_template").cloned();
        Self::assemble(tokenizer, chat_template, bos_token, eos_token, eos_ids, add_bos)
    }

    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json`
    /// (chat template, BOS/EOS) from a Hugging Face checkpoint directory.
    /// `config_eos` are the EOS ids from `config.json` / `generation_config.json`.
    pub fn from_hf_dir(dir: &Path, config_eos: &[u32], config_bos: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let tc: serde_json::Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("tokenizer_config.json: {e}")))?,
            Err(_) => serde_json::Value::Null,
        };
        let token_text = |key: &str| -> Option<String> {
            match tc.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content").and_then(|c| c.as_str()).map(String::from),
            }
        };
        let with_id = |s: Option<String>| s.and_then(|s| tokenizer.token_to_id(&s).map(|id| (id, s)));
        let bos_token = with_id(token_text("bos_token"))
            .or_else(|| config_bos.and_then(|id| tokenizer.id_to_token(id).map(|s| (id, s))));
        let eos_token = with_id(token_text("eos_token"));
        let mut eos_ids: Vec<u32> = config_eos.to_vec();
        if let Some((id, _)) = &eos_token {
            if !eos_ids.contains(id) {
                eos_ids.push(*id);
            }
        }
        let add_bos = tc.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let chat_template = tc.get("chat_template").and_then(|v| v.as_str()).map(String::from);
        Self::assemble(tokenizer, chat_template, bos_token, eos_token, eos_ids, add_bos)
    }

    fn assemble(
        mut tokenizer: Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<(u32, String)>,
        eos_token: Option<(u32, String)>,
        eos_ids: Vec<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        if eos_ids.is_empty() {
            return Err(ModelError::Format("the checkpoint names no end-of-sequence token".into()));
        }
        // Checkpoints often bake in padding/truncation for training; a server
        // must see whole texts.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Format(format!("tokenizer: {e}")))?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        if let Some(t) = &chat_template {
            env.add_template_owned("chat", t.clone())
                .map_err(|e| ModelError::Format(format!("chat template does not parse: {e}")))?;
        }
        Ok(Self { tokenizer, chat_template, env, bos_token, eos_token, eos_ids, add_bos })
    }

    /// Ids that end a sequence.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The BOS id, when tokenizing with special tokens prepends one.
    pub fn bos_id(&self) -> Option<u32> {
        if self.add_bos { self.bos_token.as_ref().map(|(id, _)| *id) } else { None }
    }

    /// The chat template source, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Decodes the ids `new` appended to `context`, as the text they add:
    /// decode(context + new) minus decode(context), so characters whose bytes
    /// straddle the boundary appear once.
    pub fn decode_continuation(&self, context: &[u32], new: &[u32]) -> std::result::Result<String, RoleError> {
        // A few tokens of context settle byte-level merges and leading spaces.
        let tail = &context[context.len().saturating_sub(8)..];
        let before = self.detokenize(tail, false)?;
        let mut all = tail.to_vec();
        all.extend_from_slice(new);
        let after = self.detokenize(&all, false)?;
        Ok(match after.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            // The context decoded differently once followed by `new` (a
            // replacement character completed): fall back to the new ids alone.
            None => self.detokenize(new, false)?,
        })
    }
}

fn tokenizer_error(e: impl std::fmt::Display) -> RoleError {
    RoleError::Internal(format!("tokenizer: {e}"))
}

impl TextCodec for TokenizerCodec {
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> std::result::Result<Vec<u32>, RoleError> {
        let enc = self.tokenizer.encode_fast(text, false).map_err(tokenizer_error)?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if add_special_tokens {
            ids.extend(self.bos_id());
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    fn detokenize(&self, ids: &[u32], skip_special_tokens: bool) -> std::result::Result<String, RoleError> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(tokenizer_error)
    }

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> std::result::Result<String, RoleError> {
        if self.chat_template.is_none() {
            return Err(RoleError::FailedPrecondition("the model has no chat template".into()));
        }
        let tmpl = self.env.get_template("chat").map_err(|e| RoleError::Internal(e.to_string()))?;
        let text = |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        tmpl.render(minijinja::context! {
            messages => messages
                .iter()
                .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
                .collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => text(&self.bos_token),
            eos_token => text(&self.eos_token),
        })
        .map_err(|e| RoleError::invalid("messages", format!("the chat template rejected the conversation: {e}")))
    }
}
