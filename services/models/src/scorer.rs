//! Score models: a trunk plus a linear score head, implementing
//! [`ScorerBackend`] for the scorer role (cost or reward).
//!
//! # Formats
//!
//! [`ScoreFormat::detect`] picks the format from the files:
//!
//! | format | files | trunk | score |
//! |---|---|---|---|
//! | our head file | `*.safetensors` with `format = inferenceguard.score_head.v1` metadata ([`crate::score_head`]) | a BERT encoder loaded separately (`trunk`, default the MiniLM asset) | `weight . features + bias`, features per `input_layout` |
//! | `BertForSequenceClassification` | dir: `bert.*`, `bert.pooler.*`, `classifier.*` | BERT | `classifier(tanh(pooler([CLS])))` |
//! | `LlamaForSequenceClassification` | dir: `model.*`, `score.weight` (no bias), `tokenizer.json` | Llama | `score` at the last token whose id is not `pad_token_id` (as transformers) |
//! | PKU-Alignment `LlamaForScore` | dir: `model.*`, `score_head.weight` (+ `score_head.bias`), `tokenizer.json` | Llama | `score_head` at the last token, then the normaliser |
//!
//! Directories are recognised by `config.json` `architectures`, or failing
//! that by their tensor names.
//!
//! # Text templates
//!
//! How (prompt, response) becomes model input is configuration
//! ([`ScorerOptions::template`], placeholders `{prompt}` and `{response}`,
//! no escapes; the CLI passes the string through). Defaults:
//!
//! - `LlamaForScore`: PKU's conversation template [`PKU_TEMPLATE`],
//!   `BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}`, as on
//!   the beaver model cards. safe-rlhf's training data also appends the EOS
//!   text; a template ending in `{response}</s>` reads the end score at the
//!   EOS as training did (the tokenizer maps `</s>` to the special token).
//! - `LlamaForSequenceClassification`: the Anthropic HH-RLHF dialogue
//!   format [`HH_TEMPLATE`], which the reward models trained on that data
//!   (e.g. `argsearch/llama-7b-rm-float32`) read. The checkpoint does not
//!   record its format: check it for other models.
//! - `BertForSequenceClassification`: a text pair, `[CLS] prompt [SEP]
//!   response [SEP]` with token types 0 and 1 (how such classifiers are
//!   fine-tuned); a template makes it one text instead.
//! - head files: no template; the head's `input_layout` says what to embed.
//!
//! Causal inputs are tokenised with the tokenizer's own special tokens (a
//! leading BOS for Llama, also added when `tokenizer_config.json` asks for it
//! and the post-processor does not).
//!
//! # Scores
//!
//! - A classification head with one label gives its logit; with two labels,
//!   the log-odds of label 1 (`logit[1] - logit[0]`), so `> 0` means label 1
//!   is the more likely (for a cost classifier with label 1 = unsafe, `> 0`
//!   is unsafe, the convention of the cost role). More labels are refused.
//! - `LlamaForScore` with `score_dim > 1`: dimension 0 (PKU's cost and reward
//!   models have `score_dim = 1`; their trainers read `end_scores[:, 0]`).
//! - PKU's normaliser is applied when `config.json` has `do_normalize: true`,
//!   to end and per-token scores alike, as safe-rlhf does at inference:
//!   `score_type` reward → `(x - mean) / (sqrt(var) + 1e-8)`, cost →
//!   `x / (sqrt(var) + 1e-8)`, critic → `x`. `mean`/`var` come from the
//!   `normalizer.mean`/`normalizer.var` tensors when present (they override
//!   `config.json`'s lists on load in safe-rlhf too), else from
//!   `config.json`, else 0 and 1. The head's bias is used when
//!   `score_head.bias` is in the weights, whatever `score_bias`/`bias` say.
//! - Per-token scores (causal trunks only): the head at every response token
//!   (a token that ends after the response starts and begins before it
//!   ends), with the byte offset in the response where the token ends. On a
//!   causal trunk the score at a token depends only on the text up to it.
//!
//! # Roles
//!
//! [`ScorerOptions::role`] wins. Otherwise a head file's `role`, or PKU's
//! `score_type` (`cost`/`reward`; absent means reward, safe-rlhf's default).
//! Hugging Face classification checkpoints do not say: the role must be
//! given.
//!
//! # Limits and truncation
//!
//! An input longer than the limit (the head's `max_tokens` per embedded
//! segment, or the trunk's positions, capped by [`ScorerOptions::max_tokens`])
//! fails the whole call with `InvalidArgument` on `items[i]`, naming the
//! limit, unless the item asks to truncate. Truncation drops tokens from the
//! start of the prompt, then (if that is not enough) from the start of the
//! response, and never the template's markup or special tokens: the end of
//! the response, which the end score reads, is always kept. Per-token scores
//! then cover the response tokens kept.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScoreRole, ScorerBackend, ScorerInfo};
use ig_core::RoleError;
use tokenizers::Tokenizer;

use crate::encoder::{keep_mask, Encoded, SentenceEncoder};
use crate::cross_head::{encode_pair, PairComply};
use crate::guard_lm::{GuardLm, GuardOptions};
use crate::kv_cache::KvCache;
use crate::causal_lm::{CausalLm, Positions, Segment as LmSegment, WeightDtype};
use crate::policy::device_name;
use crate::score_head::{read_header_metadata, role_name, HeadFile, FORMAT, HEAD_FORMATS};
use crate::{ModelError, Result};

/// PKU-Alignment's conversation template (beaver models).
pub const PKU_TEMPLATE: &str = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}";

/// The Anthropic HH-RLHF dialogue format, the default for
/// `LlamaForSequenceClassification` reward models.
pub const HH_TEMPLATE: &str = "\n\nHuman: {prompt}\n\nAssistant: {response}";

/// Names a head file's `trunk` may carry for the default trunk (the MiniLM asset).
const DEFAULT_TRUNK_NAMES: &[&str] = &["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"];

/// Tokens per causal forward pass (items run as separate segments): large
/// enough to batch the linear layers, small enough to bound activations.
const MAX_PASS_TOKENS: usize = 4096;

/// At most this many items per encoder call.
const ENCODER_GROUP: usize = 64;

/// At most this many padded tokens per encoder call, so that `control` is
/// checked often (a cancelled call frees the model within a fraction of a
/// second) whatever the lengths.
const ENCODER_GROUP_TOKENS: usize = 4096;

/// Splits items of `lens` padded tokens into consecutive encoder calls of at
/// most [`ENCODER_GROUP`] items and [`ENCODER_GROUP_TOKENS`] padded tokens
/// (one item alone may exceed it).
fn encoder_groups(lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut longest) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        let wider = longest.max(len);
        let n = i - start;
        if n > 0 && (n == ENCODER_GROUP || (n + 1) * wider > ENCODER_GROUP_TOKENS) {
            groups.push(start..i);
            start = i;
            longest = len;
        } else {
            longest = wider;
        }
    }
    if start < lens.len() {
        groups.push(start..lens.len());
    }
    groups
}

/// safe-rlhf's normaliser epsilon, added to the standard deviation.
const PKU_EPSILON: f32 = 1e-8;

/// How to load a score model.
#[derive(Debug, Clone)]
pub struct ScorerOptions {
    /// A head file (`*.safetensors` of ours) or a checkpoint directory.
    pub model: PathBuf,
    /// The encoder directory a head file runs over (default: the MiniLM
    /// asset, fetched into the asset cache when missing).
    pub trunk: Option<PathBuf>,
    /// Cost or reward, overriding what the checkpoint says.
    pub role: Option<ScoreRole>,
    /// Text template with `{prompt}` and `{response}` (see the module doc
    /// for the defaults). Not allowed for head files.
    pub template: Option<String>,
    /// A cap on tokens per input below the model's own limit (the server's
    /// `max_tokens`); `None` uses the model's.
    pub max_tokens: Option<usize>,
    /// Weight format in memory. Encoders take `Native`/`F32` (f32), `F16`
    /// or `BF16`; Llama trunks take any.
    pub dtype: WeightDtype,
    /// Where to run.
    pub device: Device,
    /// A guard LM's `(unsafe, safe)` answer labels (default: its template's).
    pub guard_labels: Option<(String, String)>,
}

impl ScorerOptions {
    /// Options with the defaults: checkpoint's role and template, native
    /// dtype, CPU.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            trunk: None,
            role: None,
            template: None,
            max_tokens: None,
            dtype: WeightDtype::Native,
            device: Device::Cpu,
            guard_labels: None,
        }
    }
}

/// The checkpoint layouts a [`ScoreModel`] loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFormat {
    /// Our head file over a separately loaded encoder.
    HeadFile,
    /// Hugging Face `BertForSequenceClassification`.
    BertForSequenceClassification,
    /// Hugging Face `LlamaForSequenceClassification`.
    LlamaForSequenceClassification,
    /// PKU-Alignment safe-rlhf `LlamaForScore`.
    LlamaForScore,
    /// A causal LM read as a generative safety classifier ([`crate::guard_lm`]).
    GuardLm,
}

impl ScoreFormat {
    /// The name reported in `ScorerInfo::head_format`.
    pub fn name(self) -> &'static str {
        match self {
            Self::HeadFile => FORMAT,
            Self::BertForSequenceClassification => "BertForSequenceClassification",
            Self::LlamaForSequenceClassification => "LlamaForSequenceClassification",
            Self::LlamaForScore => "LlamaForScore",
            Self::GuardLm => "guard_lm",
        }
    }

    /// Recognises the format of a head file or checkpoint directory.
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Ok(Self::GuardLm);
        }
        if path.is_file() {
            let is_st = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
            let meta = if is_st { read_header_metadata(path)? } else { None };
            return match meta.as_ref().and_then(|m| m.get("format")) {
                Some(f) if HEAD_FORMATS.contains(&f.as_str()) => Ok(Self::HeadFile),
                Some(f) => Err(ModelError::Unsupported(format!(
                    "{}: head format {f:?}; this build reads {HEAD_FORMATS:?}",
                    path.display()
                ))),
                None => Err(ModelError::Unsupported(format!(
                    "{}: not a head file of ours (a .safetensors file with `format = {FORMAT}` metadata); \
                     pass a head file or a checkpoint directory",
                    path.display()
                ))),
            };
        }
        if !path.is_dir() {
            return Err(ModelError::Io(format!("{}: no such file or directory", path.display())));
        }
        let config = read_json(&path.join("config.json"))?;
        let archs: Vec<&str> = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for a in &archs {
            match *a {
                "BertForSequenceClassification" => return Ok(Self::BertForSequenceClassification),
                "LlamaForSequenceClassification" => return Ok(Self::LlamaForSequenceClassification),
                // Older safe-rlhf code named the class LlamaModelForScore.
                "LlamaForScore" | "LlamaModelForScore" => return Ok(Self::LlamaForScore),
                // A causal LM of a supported family with its LM head: a guard LM.
                a if a.ends_with("ForCausalLM") => return Ok(Self::GuardLm),
                _ => {}
            }
        }
        // No telling architecture: look at the tensors.
        let names = tensor_names(path)?;
        let has = |n: &str| names.iter().any(|k| k == n);
        if has("score_head.weight") {
            Ok(Self::LlamaForScore)
        } else if has("score.weight") && names.iter().any(|k| k.starts_with("model.layers.")) {
            Ok(Self::LlamaForSequenceClassification)
        } else if has("classifier.weight") && names.iter().any(|k| k.starts_with("bert.")) {
            Ok(Self::BertForSequenceClassification)
        } else {
            Err(ModelError::Unsupported(format!(
                "{}: architectures {archs:?} and no score head tensor (score_head.weight, score.weight or \
                 classifier.weight next to a bert.* trunk)",
                path.display()
            )))
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

/// Tensor names of a checkpoint directory, read from the safetensors headers.
fn tensor_names(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let json = read_json(&index)?;
        return Ok(json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default());
    }
    let path = dir.join("model.safetensors");
    use std::io::Read;
    let io = |e: std::io::Error| ModelError::Io(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::open(&path).map_err(io)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 {
        return Err(ModelError::Format(format!("{}: safetensors header of {n} bytes", path.display())));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| ModelError::Format(format!("{}: header is not JSON: {e}", path.display())))?;
    Ok(json.as_object().map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default())
}

/// A text template with `{prompt}` and `{response}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Prompt,
    Response,
}

/// A rendered template: the text and where the prompt and response lie in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedText {
    /// The model input text.
    pub text: String,
    /// Byte range of the prompt (absent when the template has no `{prompt}`).
    pub prompt: Option<Range<usize>>,
    /// Byte range of the response.
    pub response: Range<usize>,
}

impl TextTemplate {
    /// Parses a template: exactly one `{response}`, at most one `{prompt}`;
    /// everything else is literal text.
    pub fn parse(source: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = source;
        let (mut prompts, mut responses) = (0, 0);
        loop {
            let next = [("{prompt}", Part::Prompt), ("{response}", Part::Response)]
                .into_iter()
                .filter_map(|(pat, part)| rest.find(pat).map(|at| (at, pat.len(), part)))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, len, part)) = next else {
                if !rest.is_empty() {
                    parts.push(Part::Text(rest.to_string()));
                }
                break;
            };
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_string()));
            }
            match part {
                Part::Prompt => prompts += 1,
                Part::Response => responses += 1,
                Part::Text(_) => {}
            }
            parts.push(part);
            rest = &rest[at + len..];
        }
        if responses != 1 || prompts > 1 {
            return Err(ModelError::Unsupported(format!(
                "text template {source:?}: needs exactly one {{response}} and at most one {{prompt}} \
                 (found {responses} and {prompts})"
            )));
        }
        Ok(Self { source: source.to_string(), parts })
    }

    /// The template as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Substitutes the texts (placeholders inside them are not expanded).
    pub fn render(&self, prompt: &str, response: &str) -> RenderedText {
        let mut text = String::with_capacity(self.source.len() + prompt.len() + response.len());
        let (mut p, mut r) = (None, 0..0);
        for part in &self.parts {
            let start = text.len();
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Prompt => {
                    text.push_str(prompt);
                    p = Some(start..text.len());
                }
                Part::Response => {
                    text.push_str(response);
                    r = start..text.len();
                }
            }
        }
        RenderedText { text, prompt: p, response: r }
    }
}

/// How a head's outputs become one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduce {
    /// Output 0 (one label, or PKU's first score dimension).
    First,
    /// `out[1] - out[0]`: log-odds of label 1 of a two-label classifier.
    LogOdds,
}

/// PKU's normaliser at inference.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Normalize {
    Identity,
    /// `(x - mean) / (std + eps)` (reward).
    Affine { mean: f32, std: f32 },
    /// `x / (std + eps)` (cost).
    Scale { std: f32 },
}

impl Normalize {
    fn apply(self, x: f32) -> f32 {
        match self {
            Self::Identity => x,
            Self::Affine { mean, std } => (x - mean) / (std + PKU_EPSILON),
            Self::Scale { std } => x / (std + PKU_EPSILON),
        }
    }
}

/// A linear head over trunk states, in f32.
#[derive(Debug, Clone)]
struct LinearHead {
    /// `(outputs, hidden)`.
    weight: Tensor,
    /// `(outputs)`.
    bias: Option<Tensor>,
    reduce: Reduce,
    normalize: Normalize,
}

impl LinearHead {
    fn new(weight: Tensor, bias: Option<Tensor>, hidden: usize, what: &str, dim_rule: DimRule) -> Result<Self> {
        let (outputs, inp) = weight.dims2().map_err(|_| {
            ModelError::Format(format!("{what}.weight has shape {:?}, expected [outputs, hidden]", weight.dims()))
        })?;
        if inp != hidden {
            return Err(ModelError::Format(format!("{what}.weight has {inp} inputs but the trunk's hidden size is {hidden}")));
        }
        if let Some(b) = &bias {
            if b.dims() != [outputs] {
                return Err(ModelError::Format(format!("{what}.bias has shape {:?}, expected [{outputs}]", b.dims())));
            }
        }
        let reduce = match (dim_rule, outputs) {
            (_, 0) => return Err(ModelError::Format(format!("{what}.weight has no outputs"))),
            (_, 1) | (DimRule::FirstOfMany, _) => Reduce::First,
            (DimRule::Labels, 2) => Reduce::LogOdds,
            (DimRule::Labels, n) => {
                return Err(ModelError::Unsupported(format!(
                    "{what}: {n} labels; a score model needs 1 (a score) or 2 (scored as log-odds of label 1)"
                )))
            }
        };
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?,
            bias: bias.map(|b| b.to_dtype(DType::F32)).transpose()?,
            reduce,
            normalize: Normalize::Identity,
        })
    }

    /// Scores of `x` `(n, hidden)` f32: one per row.
    fn scores(&self, x: &Tensor) -> Result<Vec<f32>> {
        let x = x.to_device(self.weight.device())?;
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let rows = y.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let s = match self.reduce {
                    Reduce::First => r[0],
                    Reduce::LogOdds => r[1] - r[0],
                };
                self.normalize.apply(s)
            })
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DimRule {
    /// Classification labels: 1 or 2.
    Labels,
    /// PKU's `score_dim`: take dimension 0.
    FirstOfMany,
}

/// Where a causal format reads its end score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndRule {
    /// The last token (safe-rlhf: the last position under the attention mask).
    Last,
    /// The last token whose id is not the pad id (transformers'
    /// `*ForSequenceClassification`), or the last one if all are.
    LastNonPad(u32),
}

impl EndRule {
    fn index(self, ids: &[u32]) -> usize {
        let last = ids.len().saturating_sub(1);
        match self {
            Self::Last => last,
            Self::LastNonPad(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(last),
        }
    }
}

/// The scores of every position of one token sequence (causal trunks).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionScores {
    /// The position the end score is read at.
    pub end_index: usize,
    /// The end score.
    pub end_score: f32,
    /// The score at every position.
    pub scores: Vec<f32>,
}

enum Kind {
    Head {
        encoder: SentenceEncoder,
        head: HeadFile,
        /// The comply factor of a cross-encoder head, which reads the pair itself.
        pair: Option<PairComply>,
    },
    Bert {
        encoder: SentenceEncoder,
        /// `bert.pooler.dense` weight `(hidden, hidden)` and bias, f32.
        pooler: (Tensor, Tensor),
        classifier: LinearHead,
        template: Option<TextTemplate>,
    },
    Causal {
        model: CausalLm,
        tokenizer: Tokenizer,
        /// Prepended when the tokenizer's post-processor does not add it but
        /// `tokenizer_config.json` asks for it.
        bos: Option<u32>,
        head: LinearHead,
        end: EndRule,
        template: TextTemplate,
    },
    Guard(Box<GuardLm>),
}

/// A loaded score model.
pub struct ScoreModel {
    kind: Kind,
    format: ScoreFormat,
    info: ScorerInfo,
    /// Tokens per input (per embedded segment for head files).
    limit: usize,
}

impl std::fmt::Debug for ScoreModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreModel").field("format", &self.format).field("info", &self.info).finish()
    }
}

/// Which part of the model input a token came from, for truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Prompt,
    Response,
    Other,
}

/// A causal input ready for the trunk.
#[derive(Debug, Clone)]
struct CausalInput {
    ids: Vec<u32>,
    end_index: usize,
    /// (position, byte offset in the response where the token ends).
    response_tokens: Vec<(usize, usize)>,
    truncated: usize,
}

fn encoder_dtype(dtype: WeightDtype) -> Result<DType> {
    match dtype {
        WeightDtype::Native | WeightDtype::F32 => Ok(DType::F32),
        WeightDtype::F16 => Ok(DType::F16),
        WeightDtype::BF16 => Ok(DType::BF16),
        WeightDtype::Q8_0 => Err(ModelError::Unsupported("q8_0 weights for an encoder trunk; use f32, f16 or bf16".into())),
    }
}

fn dtype_label(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

fn model_id(path: &Path) -> String {
    let name = if path.is_file() { path.file_stem() } else { path.file_name() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn description(role: ScoreRole) -> String {
    match role {
        ScoreRole::Cost => "higher is more harmful; > 0 is unsafe".into(),
        ScoreRole::Reward => "higher is more helpful".into(),
    }
}

/// Rounds a byte offset in `s` up to the next character boundary.
fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn too_long(i: usize, what: &str, count: usize, limit: usize) -> RoleError {
    RoleError::invalid(
        format!("items[{i}]"),
        format!("{what} is {count} tokens, over the limit of {limit} tokens (max_tokens); set truncate to cut it"),
    )
}

fn cannot_fit(i: usize, what: &str, count: usize, limit: usize) -> RoleError {
    RoleError::invalid(
        format!("items[{i}]"),
        format!(
            "{what} is {count} tokens and does not fit the limit of {limit} tokens (max_tokens) even with the prompt \
             and response truncated (the template's markup and special tokens are kept)"
        ),
    )
}

impl ScoreModel {
    /// Loads a score model in any of the formats of the module doc.
    pub fn load(opts: &ScorerOptions) -> Result<Self> {
        let format = ScoreFormat::detect(&opts.model)?;
        // A guard LM's template is Jinja (its own module reads it).
        let template = match format {
            ScoreFormat::GuardLm => None,
            _ => opts.template.as_deref().map(TextTemplate::parse).transpose()?,
        };
        let mut model = match format {
            ScoreFormat::HeadFile => Self::load_head(opts, template)?,
            ScoreFormat::BertForSequenceClassification => Self::load_bert(opts, template)?,
            ScoreFormat::LlamaForSequenceClassification | ScoreFormat::LlamaForScore => {
                Self::load_causal(opts, format, template)?
            }
            ScoreFormat::GuardLm => Self::load_guard(opts)?,
        };
        if let Some(cap) = opts.max_tokens {
            if cap == 0 {
                return Err(ModelError::Unsupported("max_tokens 0".into()));
            }
            model.limit = model.limit.min(cap);
        }
        if let Kind::Guard(guard) = &mut model.kind {
            guard.limit = model.limit;
        }
        Ok(model)
    }

    fn load_guard(opts: &ScorerOptions) -> Result<Self> {
        if opts.role == Some(ScoreRole::Reward) {
            return Err(ModelError::Unsupported(format!(
                "{}: a guard LM is a cost model; it cannot serve the reward role",
                opts.model.display()
            )));
        }
        let guard_opts = GuardOptions {
            template: opts.template.clone().unwrap_or_else(|| GuardOptions::default().template),
            labels: opts.guard_labels.clone(),
        };
        let guard = GuardLm::load(&opts.model, &guard_opts, opts.dtype, &opts.device)?;
        let info = guard.info(&opts.model, device_name(&opts.device));
        let limit = guard.limit;
        Ok(Self { kind: Kind::Guard(Box::new(guard)), format: ScoreFormat::GuardLm, info, limit })
    }

    fn resolve_role(opts: &ScorerOptions, from_file: Option<ScoreRole>, what: &str) -> Result<ScoreRole> {
        match (opts.role, from_file) {
            (Some(r), Some(f)) if r != f => {
                tracing::warn!(
                    "{what} says role {}, overridden to {}",
                    role_name(f),
                    role_name(r)
                );
                Ok(r)
            }
            (Some(r), _) | (None, Some(r)) => Ok(r),
            (None, None) => Err(ModelError::Unsupported(format!(
                "{what} does not say whether it is a cost or a reward model: set the role"
            ))),
        }
    }

    fn load_head(opts: &ScorerOptions, template: Option<TextTemplate>) -> Result<Self> {
        if template.is_some() {
            return Err(ModelError::Unsupported(
                "a head file defines its input by its input_layout metadata; it takes no text template".into(),
            ));
        }
        let head = HeadFile::load(&opts.model)?;
        let trunk_dir = match &opts.trunk {
            Some(t) => t.clone(),
            None if DEFAULT_TRUNK_NAMES.contains(&head.meta().trunk.as_str()) => {
                ig_assets::minilm_dir().map_err(|e| ModelError::Io(format!("the MiniLM trunk asset: {e}")))?
            }
            None => {
                return Err(ModelError::Unsupported(format!(
                    "the head was trained over trunk {:?}; pass its directory as the trunk",
                    head.meta().trunk
                )))
            }
        };
        let dtype = encoder_dtype(opts.dtype)?;
        let (encoder, _, _) = SentenceEncoder::load_parts(&trunk_dir, dtype, &opts.device)?;
        head.meta().check_trunk(&encoder)?;
        let pair = match &head {
            HeadFile::Cross(h) => Some(PairComply::load(&trunk_dir, h, &opts.device)?),
            _ => None,
        };
        let role = Self::resolve_role(opts, Some(head.meta().role), "the head file")?;
        let limit = head.meta().max_tokens;
        let info = ScorerInfo {
            role,
            model_id: model_id(&opts.model),
            score_description: description(role),
            architecture: "bert".into(),
            head_format: head.format().into(),
            text_template: head.describe_input(),
            token_scores_available: false,
            weight_dtype: dtype_label(dtype),
            device: device_name(&opts.device),
            max_model_tokens: limit,
        };
        Ok(Self { kind: Kind::Head { encoder, head, pair }, format: ScoreFormat::HeadFile, info, limit })
    }

    fn load_bert(opts: &ScorerOptions, template: Option<TextTemplate>) -> Result<Self> {
        let dtype = encoder_dtype(opts.dtype)?;
        let (encoder, mut rest, _) = SentenceEncoder::load_parts(&opts.model, dtype, &opts.device)?;
        let hidden = encoder.dim();
        let mut take = |name: &str| -> Result<Tensor> {
            rest.remove(name)
                .or_else(|| rest.remove(name.trim_start_matches("bert.")))
                .ok_or_else(|| ModelError::Format(format!("{}: no tensor {name:?}", opts.model.display())))
        };
        let pw = take("bert.pooler.dense.weight")?.to_dtype(DType::F32)?;
        let pb = take("bert.pooler.dense.bias")?.to_dtype(DType::F32)?;
        if pw.dims() != [hidden, hidden] || pb.dims() != [hidden] {
            return Err(ModelError::Format(format!(
                "bert.pooler.dense has shapes {:?}/{:?}, expected [{hidden}, {hidden}]/[{hidden}]",
                pw.dims(),
                pb.dims()
            )));
        }
        let cw = take("classifier.weight")?;
        let cb = take("classifier.bias")?;
        let classifier = LinearHead::new(cw, Some(cb), hidden, "classifier", DimRule::Labels)?;
        let role = Self::resolve_role(opts, None, "a BertForSequenceClassification checkpoint")?;
        let limit = encoder.max_position_embeddings();
        let text_template = match &template {
            Some(t) => t.source().to_string(),
            None => "[CLS] {prompt} [SEP] {response} [SEP]".into(),
        };
        let info = ScorerInfo {
            role,
            model_id: model_id(&opts.model),
            score_description: description(role),
            architecture: "bert".into(),
            head_format: ScoreFormat::BertForSequenceClassification.name().into(),
            text_template,
            token_scores_available: false,
            weight_dtype: dtype_label(dtype),
            device: device_name(&opts.device),
            max_model_tokens: limit,
        };
        Ok(Self {
            kind: Kind::Bert { encoder, pooler: (pw, pb), classifier, template },
            format: ScoreFormat::BertForSequenceClassification,
            info,
            limit,
        })
    }

    fn load_causal(opts: &ScorerOptions, format: ScoreFormat, template: Option<TextTemplate>) -> Result<Self> {
        let dir = &opts.model;
        let config = read_json(&dir.join("config.json"))?;
        let (model, mut rest) = CausalLm::trunk_from_safetensors_dir(dir, opts.dtype, &opts.device)?;
        let hidden = model.config().hidden_size;
        let missing = |n: &str| ModelError::Format(format!("{}: no tensor {n:?}", dir.display()));
        let (head, end, from_file, default_template) = if format == ScoreFormat::LlamaForScore {
            let w = rest.remove("score_head.weight").ok_or_else(|| missing("score_head.weight"))?;
            // The bias is present or not in the weights; older and newer
            // safe-rlhf disagree on the config key (`bias` vs `score_bias`).
            let b = rest.remove("score_head.bias");
            let mut head = LinearHead::new(w, b, hidden, "score_head", DimRule::FirstOfMany)?;
            let score_type = config.get("score_type").and_then(|v| v.as_str()).unwrap_or("reward");
            let role = match score_type {
                "cost" => Some(ScoreRole::Cost),
                "reward" => Some(ScoreRole::Reward),
                "critic" => None,
                other => {
                    return Err(ModelError::Format(format!("config.json score_type {other:?}: expected reward, cost or critic")))
                }
            };
            if config.get("do_normalize").and_then(|v| v.as_bool()).unwrap_or(false) {
                head.normalize = pku_normalizer(&config, &mut rest, score_type)?;
            }
            (head, EndRule::Last, role, PKU_TEMPLATE)
        } else {
            let w = rest.remove("score.weight").ok_or_else(|| missing("score.weight"))?;
            let b = rest.remove("score.bias");
            let head = LinearHead::new(w, b, hidden, "score", DimRule::Labels)?;
            let end = match config.get("pad_token_id").and_then(|v| v.as_u64()) {
                Some(p) => EndRule::LastNonPad(p as u32),
                None => EndRule::Last,
            };
            (head, end, None, HH_TEMPLATE)
        };
        let what = format!("the {} checkpoint", format.name());
        let role = Self::resolve_role(opts, from_file, &what)?;
        let template = match template {
            Some(t) => t,
            None => TextTemplate::parse(default_template)?,
        };
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(ModelError::Io(format!(
                "{}: no such file; a causal score model needs its tokenizer",
                tok_path.display()
            )));
        }
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Format(format!("{}: {e}", tok_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::Format(format!("{}: {e}", tok_path.display())))?;
        let bos = wanted_bos(dir, &tokenizer, &config)?;
        let limit = model.config().max_position_embeddings;
        let info = ScorerInfo {
            role,
            model_id: model_id(dir),
            score_description: description(role),
            architecture: model.config().architecture.name().into(),
            head_format: format.name().into(),
            text_template: template.source().to_string(),
            token_scores_available: true,
            weight_dtype: model.weight_dtype().to_string(),
            device: device_name(&opts.device),
            max_model_tokens: limit,
        };
        Ok(Self { kind: Kind::Causal { model, tokenizer, bos, head, end, template }, format, info, limit })
    }

    /// The format that was loaded.
    pub fn format(&self) -> ScoreFormat {
        self.format
    }

    /// Tokens per input the model accepts (per embedded segment for head
    /// files), after [`ScorerOptions::max_tokens`].
    pub fn max_tokens(&self) -> usize {
        self.limit
    }

    /// Scores token sequences directly (causal formats only): the head at
    /// every position and the end score, each sequence on its own. This is
    /// the model without its tokenizer and template, for checks against
    /// reference implementations.
    pub fn score_token_ids(&self, sequences: &[Vec<u32>]) -> Result<Vec<PositionScores>> {
        let Kind::Causal { model, head, end, .. } = &self.kind else {
            return Err(ModelError::Unsupported(format!("{}: token-id scoring needs a causal trunk", self.format.name())));
        };
        let mut out = Vec::with_capacity(sequences.len());
        for group in pass_groups(sequences.iter().map(Vec::len)) {
            let mut caches: Vec<KvCache> = group.iter().map(|_| model.new_cache()).collect();
            let mut segs: Vec<LmSegment<'_>> = group
                .iter()
                .zip(caches.iter_mut())
                .map(|(&i, cache)| LmSegment { tokens: &sequences[i], rows: 1, cache })
                .collect();
            let hidden = model.hidden_segments(&mut segs, Positions::All)?;
            let scores = head.scores(&hidden)?;
            let mut off = 0;
            for &i in &group {
                let n = sequences[i].len();
                let s = scores[off..off + n].to_vec();
                let end_index = end.index(&sequences[i]);
                out.push(PositionScores { end_index, end_score: s[end_index], scores: s });
                off += n;
            }
        }
        Ok(out)
    }

    /// Tokenizes one item for a causal trunk, applying the limit.
    fn prepare_causal(&self, i: usize, input: &ScoreInput) -> std::result::Result<CausalInput, RoleError> {
        let Kind::Causal { tokenizer, bos, end, template, .. } = &self.kind else {
            return Err(RoleError::Internal("prepare_causal on a non-causal model".into()));
        };
        let r = template.render(&input.prompt, &input.response);
        let enc = tokenizer
            .encode(r.text.as_str(), true)
            .map_err(|e| RoleError::Internal(format!("tokenizer: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let mut offsets = enc.get_offsets().to_vec();
        let mut special: Vec<bool> = enc.get_special_tokens_mask().iter().map(|&m| m != 0).collect();
        if let Some(b) = bos {
            if ids.first() != Some(b) {
                ids.insert(0, *b);
                offsets.insert(0, (0, 0));
                special.insert(0, true);
            }
        }
        let origin: Vec<Origin> = offsets
            .iter()
            .zip(&special)
            .map(|(&(s, e), &sp)| classify(sp, s, e, r.prompt.as_ref(), &r.response))
            .collect();
        let (keep, truncated) = truncate(i, &origin, self.limit, input.truncate, "the model input")?;
        let mut kept_ids = Vec::with_capacity(ids.len() - truncated);
        let mut response_tokens = Vec::new();
        let mut last_end = 0;
        for (k, (&id, (&(s, e), &sp))) in ids.iter().zip(offsets.iter().zip(&special)).enumerate() {
            if !keep[k] {
                continue;
            }
            let pos = kept_ids.len();
            kept_ids.push(id);
            if !sp && e > r.response.start && s < r.response.end && e > s {
                let rel = e.min(r.response.end) - r.response.start;
                let rel = ceil_char_boundary(&input.response, rel).max(last_end);
                last_end = rel;
                response_tokens.push((pos, rel));
            }
        }
        if kept_ids.is_empty() {
            return Err(RoleError::invalid(
                format!("items[{i}]"),
                "the model input is empty (an empty text under a template that adds no tokens); nothing to score",
            ));
        }
        let end_index = end.index(&kept_ids);
        Ok(CausalInput { ids: kept_ids, end_index, response_tokens, truncated })
    }

    fn score_causal(&self, inputs: &[ScoreInput], control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let Kind::Causal { model, head, .. } = &self.kind else {
            return Err(RoleError::Internal("score_causal on a non-causal model".into()));
        };
        let prepared = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| self.prepare_causal(i, x))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out: Vec<Option<ScoreOutput>> = vec![None; inputs.len()];
        for group in pass_groups(prepared.iter().map(|p| p.ids.len())) {
            control.check()?;
            let mut caches: Vec<KvCache> = group.iter().map(|_| model.new_cache()).collect();
            let mut segs: Vec<LmSegment<'_>> = group
                .iter()
                .zip(caches.iter_mut())
                .map(|(&i, cache)| LmSegment { tokens: &prepared[i].ids, rows: 1, cache })
                .collect();
            let hidden = model.hidden_segments(&mut segs, Positions::All)?;
            // Only the rows a score is read at go through the head.
            let mut rows: Vec<u32> = Vec::new();
            let mut off = 0;
            for &i in &group {
                let p = &prepared[i];
                rows.push((off + p.end_index) as u32);
                if inputs[i].token_scores {
                    rows.extend(p.response_tokens.iter().map(|&(pos, _)| (off + pos) as u32));
                }
                off += p.ids.len();
            }
            let n = rows.len();
            let idx = Tensor::from_vec(rows, n, hidden.device()).map_err(ModelError::from)?;
            let sel = hidden.index_select(&idx, 0).map_err(ModelError::from)?;
            let scores = head.scores(&sel)?;
            let mut next = scores.into_iter();
            for &i in &group {
                let p = &prepared[i];
                let score = next.next().ok_or_else(|| RoleError::Internal("head returned too few scores".into()))?;
                let token_scores = if inputs[i].token_scores {
                    p.response_tokens
                        .iter()
                        .map(|&(_, byte)| next.next().map(|s| (s, byte)))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| RoleError::Internal("head returned too few scores".into()))?
                } else {
                    Vec::new()
                };
                out[i] = Some(ScoreOutput { score, token_scores, token_count: p.ids.len(), truncated_token_count: p.truncated });
            }
        }
        out.into_iter().map(|o| o.ok_or_else(|| RoleError::Internal("an item was not scored".into()))).collect()
    }

    fn score_bert(&self, inputs: &[ScoreInput], control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let Kind::Bert { encoder, pooler, classifier, template } = &self.kind else {
            return Err(RoleError::Internal("score_bert on a non-BERT model".into()));
        };
        let mut encoded = Vec::with_capacity(inputs.len());
        for (i, x) in inputs.iter().enumerate() {
            let enc = match template {
                None => encoder.tokenizer().encode((x.prompt.as_str(), x.response.as_str()), true),
                Some(t) => encoder.tokenizer().encode(t.render(&x.prompt, &x.response).text.as_str(), true),
            }
            .map_err(|e| RoleError::Internal(format!("tokenizer: {e}")))?;
            let special = enc.get_special_tokens_mask();
            let origin: Vec<Origin> = match template {
                None => enc
                    .get_sequence_ids()
                    .iter()
                    .zip(special)
                    .map(|(seq, &sp)| match (sp != 0, seq) {
                        (true, _) => Origin::Other,
                        (false, Some(0)) => Origin::Prompt,
                        (false, Some(_)) => Origin::Response,
                        (false, None) => Origin::Other,
                    })
                    .collect(),
                Some(t) => {
                    let r = t.render(&x.prompt, &x.response);
                    enc.get_offsets()
                        .iter()
                        .zip(special)
                        .map(|(&(s, e), &sp)| classify(sp != 0, s, e, r.prompt.as_ref(), &r.response))
                        .collect()
                }
            };
            let (keep, _) = truncate(i, &origin, self.limit, x.truncate, "the model input")?;
            encoded.push(SentenceEncoder::select(enc.get_ids(), enc.get_type_ids(), &keep));
        }
        let mut scores = Vec::with_capacity(inputs.len());
        let lens: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
        for group in encoder_groups(&lens) {
            control.check()?;
            let chunk = &encoded[group];
            let cls = encoder.cls_states(chunk)?;
            let pooled = cls
                .matmul(&pooler.0.t().map_err(ModelError::from)?)
                .and_then(|y| y.broadcast_add(&pooler.1))
                .and_then(|y| y.tanh())
                .map_err(ModelError::from)?;
            scores.extend(classifier.scores(&pooled)?);
        }
        Ok(scores
            .into_iter()
            .zip(&encoded)
            .map(|(score, e)| ScoreOutput {
                score,
                token_scores: Vec::new(),
                token_count: e.ids.len(),
                truncated_token_count: e.truncated_token_count,
            })
            .collect())
    }

    fn score_head(&self, inputs: &[ScoreInput], control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let Kind::Head { encoder, head, pair } = &self.kind else {
            return Err(RoleError::Internal("score_head on a model without a head file".into()));
        };
        let segments = head.segments();
        let meta = head.meta();
        // A search scores many answers to one prompt: each distinct text of a segment is
        // encoded and embedded once. unique[segment] = encoded texts; slot[item][segment]
        // = the index of the item's text there.
        let mut unique: Vec<Vec<Encoded>> = vec![Vec::new(); segments.len()];
        let mut seen: Vec<HashMap<String, usize>> = vec![HashMap::new(); segments.len()];
        let mut slot: Vec<Vec<usize>> = Vec::with_capacity(inputs.len());
        let mut tokens: Vec<(usize, usize)> = Vec::with_capacity(inputs.len());
        for (i, x) in inputs.iter().enumerate() {
            let (mut slots, mut count, mut truncated) = (Vec::with_capacity(segments.len()), 0, 0);
            for (s, seg) in segments.iter().enumerate() {
                let text = seg.text(&x.prompt, &x.response);
                let k = match seen[s].get(&text) {
                    Some(&k) => k,
                    None => {
                        // Segments are single texts: dropping from the start drops
                        // the prompt first for `prompt_response`.
                        let e = encoder.encode(&text, self.limit)?;
                        seen[s].insert(text, unique[s].len());
                        unique[s].push(e);
                        unique[s].len() - 1
                    }
                };
                let e = &unique[s][k];
                if e.truncated_token_count > 0 && !x.truncate {
                    let what = format!("the {} segment", seg.as_str());
                    return Err(too_long(i, &what, e.ids.len() + e.truncated_token_count, self.limit));
                }
                count += e.ids.len();
                truncated += e.truncated_token_count;
                slots.push(k);
            }
            slot.push(slots);
            tokens.push((count, truncated));
        }
        // A cross-encoder head's comply factor reads each (prompt, response) as one sequence.
        let comply_logits = match pair {
            Some(pair) => {
                let mut encoded = Vec::with_capacity(inputs.len());
                for (i, x) in inputs.iter().enumerate() {
                    let e = encode_pair(pair.bottom(), &x.prompt, &x.response, self.limit)?;
                    if e.truncated_token_count > 0 && !x.truncate {
                        return Err(too_long(i, "the (prompt, response) pair", e.ids.len() + e.truncated_token_count, self.limit));
                    }
                    tokens[i].0 += e.ids.len();
                    tokens[i].1 += e.truncated_token_count;
                    encoded.push(e);
                }
                let lens: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
                let mut logits = Vec::with_capacity(encoded.len());
                for group in encoder_groups(&lens) {
                    control.check()?;
                    logits.extend(pair.logits(&encoded[group])?);
                }
                Some(logits)
            }
            None => None,
        };
        let mut vectors: Vec<Vec<Vec<f32>>> = Vec::with_capacity(segments.len());
        for texts in &unique {
            let lens: Vec<usize> = texts.iter().map(|e| e.ids.len()).collect();
            let mut out = Vec::with_capacity(texts.len());
            for group in encoder_groups(&lens) {
                control.check()?;
                out.extend(encoder.embed_encoded(&texts[group], meta.pooling, meta.normalize)?);
            }
            vectors.push(out);
        }
        Ok(slot
            .iter()
            .zip(tokens)
            .enumerate()
            .map(|(i, (slots, (token_count, truncated_token_count)))| {
                let embeddings: Vec<&[f32]> = slots.iter().enumerate().map(|(s, &k)| vectors[s][k].as_slice()).collect();
                let score = head.score(&embeddings, comply_logits.as_ref().map(|l| l[i]));
                ScoreOutput { score, token_scores: Vec::new(), token_count, truncated_token_count }
            })
            .collect())
    }
}

/// Which part of a rendered text a token with byte range `s..e` belongs to:
/// only tokens wholly inside the prompt or the response may be dropped.
fn classify(special: bool, s: usize, e: usize, prompt: Option<&Range<usize>>, response: &Range<usize>) -> Origin {
    if special || e <= s {
        Origin::Other
    } else if prompt.is_some_and(|p| s >= p.start && e <= p.end) {
        Origin::Prompt
    } else if s >= response.start && e <= response.end {
        Origin::Response
    } else {
        Origin::Other
    }
}

/// Applies the limit: the keep mask and the count dropped. Prompt tokens go
/// first (from the start), then response tokens (from the start).
fn truncate(
    i: usize,
    origin: &[Origin],
    limit: usize,
    allowed: bool,
    what: &str,
) -> std::result::Result<(Vec<bool>, usize), RoleError> {
    let n = origin.len();
    if n <= limit {
        return Ok((vec![true; n], 0));
    }
    if !allowed {
        return Err(too_long(i, what, n, limit));
    }
    let order = (0..n)
        .filter(|&k| origin[k] == Origin::Prompt)
        .chain((0..n).filter(|&k| origin[k] == Origin::Response));
    let keep = keep_mask(n, limit, order).ok_or_else(|| cannot_fit(i, what, n, limit))?;
    Ok((keep, n - limit))
}

/// Groups item indices into forward passes of about [`MAX_PASS_TOKENS`]
/// tokens (an item longer than that runs alone).
fn pass_groups(lengths: impl Iterator<Item = usize>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut tokens = 0;
    for (i, n) in lengths.enumerate() {
        match groups.last_mut() {
            Some(g) if tokens + n <= MAX_PASS_TOKENS => g.push(i),
            _ => {
                groups.push(vec![i]);
                tokens = 0;
            }
        }
        tokens += n;
    }
    groups
}

/// The BOS id to prepend when `tokenizer_config.json` asks for one but the
/// tokenizer's post-processor does not add it.
fn wanted_bos(dir: &Path, tokenizer: &Tokenizer, config: &serde_json::Value) -> Result<Option<u32>> {
    let tc = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
        Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| ModelError::Format(format!("tokenizer_config.json: {e}")))?,
        Err(_) => return Ok(None),
    };
    if tc.get("add_bos_token").and_then(|v| v.as_bool()) != Some(true) {
        return Ok(None);
    }
    let named = match tc.get("bos_token") {
        Some(serde_json::Value::String(s)) => tokenizer.token_to_id(s),
        Some(v) => v.get("content").and_then(|c| c.as_str()).and_then(|s| tokenizer.token_to_id(s)),
        None => None,
    };
    let bos = named.or_else(|| config.get("bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32));
    // Only when the post-processor does not already add it.
    let probe = tokenizer.encode("a", true).map_err(|e| ModelError::Format(format!("tokenizer: {e}")))?;
    Ok(bos.filter(|b| probe.get_ids().first() != Some(b)))
}

/// PKU's normaliser from the checkpoint (tensors win over `config.json`).
fn pku_normalizer(config: &serde_json::Value, rest: &mut HashMap<String, Tensor>, score_type: &str) -> Result<Normalize> {
    let first = |tensor: Option<Tensor>, key: &str, default: f32| -> Result<f32> {
        if let Some(t) = tensor {
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            return v.first().copied().ok_or_else(|| ModelError::Format(format!("normalizer.{key} is empty")));
        }
        match config.get(key) {
            Some(serde_json::Value::Array(a)) => a
                .first()
                .and_then(|x| x.as_f64())
                .map(|x| x as f32)
                .ok_or_else(|| ModelError::Format(format!("config.json {key}: expected a list of numbers"))),
            Some(serde_json::Value::Number(n)) => Ok(n.as_f64().unwrap_or(default as f64) as f32),
            _ => Ok(default),
        }
    };
    let mean = first(rest.remove("normalizer.mean"), "mean", 0.0)?;
    let var = first(rest.remove("normalizer.var"), "var", 1.0)?;
    if !(mean.is_finite() && var.is_finite() && var >= 0.0) {
        return Err(ModelError::Format(format!("normalizer mean {mean} / var {var}: not usable")));
    }
    let std = var.sqrt();
    Ok(match score_type {
        "reward" => Normalize::Affine { mean, std },
        "cost" => Normalize::Scale { std },
        _ => Normalize::Identity,
    })
}

impl ScorerBackend for ScoreModel {
    fn info(&self) -> ScorerInfo {
        let mut info = self.info.clone();
        info.max_model_tokens = self.limit.min(info.max_model_tokens);
        info
    }

    fn warm_up(&mut self) -> std::result::Result<(), RoleError> {
        let item = |p: &str, r: &str| ScoreInput { prompt: p.into(), response: r.into(), token_scores: false, truncate: true };
        let never = || false;
        let control = WorkControl::new(None, &never);
        self.score(&[item("Hello!", "Hi, how can I help?"), item("What is 2 + 2?", "4.")], &control)?;
        Ok(())
    }

    fn score(&mut self, inputs: &[ScoreInput], control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        if !matches!(self.kind, Kind::Causal { .. }) {
            if let Some(i) = inputs.iter().position(|x| x.token_scores) {
                return Err(RoleError::FailedPrecondition(format!(
                    "items[{i}].token_scores: per-token scores need a causal trunk; this scorer's trunk is {}",
                    self.info.architecture
                )));
            }
        }
        control.check()?;
        let out = match self.kind {
            Kind::Head { .. } => self.score_head(inputs, control)?,
            Kind::Bert { .. } => self.score_bert(inputs, control)?,
            Kind::Causal { .. } => self.score_causal(inputs, control)?,
            Kind::Guard(ref guard) => guard.score(inputs, control)?,
        };
        for (i, o) in out.iter().enumerate() {
            if !o.score.is_finite() || o.token_scores.iter().any(|(s, _)| !s.is_finite()) {
                return Err(RoleError::Internal(format!("the model produced a non-finite score for items[{i}]")));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_groups_bound_items_and_padded_tokens() {
        assert!(encoder_groups(&[]).is_empty());
        assert_eq!(encoder_groups(&[10; 100]), vec![0..64, 64..100]);
        // 4096 / 300 = 13 items of 300 padded tokens per call.
        assert_eq!(encoder_groups(&[300; 20]), vec![0..13, 13..20]);
        // A long item starts a new group when it would widen the current one past the budget.
        assert_eq!(encoder_groups(&[100, 100, 3000, 5000]), vec![0..2, 2..3, 3..4]);
    }

    #[test]
    fn template_parses_and_renders_ranges() -> Result<()> {
        let t = TextTemplate::parse(PKU_TEMPLATE)?;
        let r = t.render("Hi {response}", "Hello");
        assert_eq!(r.text, "BEGINNING OF CONVERSATION: USER: Hi {response} ASSISTANT:Hello");
        assert_eq!(&r.text[r.prompt.clone().unwrap()], "Hi {response}");
        assert_eq!(&r.text[r.response.clone()], "Hello");
        let t = TextTemplate::parse("{response}")?;
        assert_eq!(t.render("p", "").response, 0..0);
        assert!(TextTemplate::parse("{prompt} only").is_err());
        assert!(TextTemplate::parse("{response}{response}").is_err());
        assert!(TextTemplate::parse("{prompt}{prompt}{response}").is_err());
        Ok(())
    }

    #[test]
    fn truncation_drops_prompt_then_response_start() {
        use Origin::*;
        let origin = [Other, Prompt, Prompt, Other, Response, Response, Response, Other];
        // 8 tokens, limit 5: both prompt tokens and the first response token go.
        let (keep, n) = truncate(0, &origin, 5, true, "x").unwrap();
        assert_eq!(n, 3);
        assert_eq!(keep, [true, false, false, true, false, true, true, true]);
        // Without permission: InvalidArgument naming the item and the limit.
        match truncate(3, &origin, 5, false, "x").unwrap_err() {
            RoleError::InvalidArgument { field, message } => {
                assert_eq!(field, "items[3]");
                assert!(message.contains("limit of 5 tokens"), "{message}");
            }
            e => panic!("{e:?}"),
        }
        // Markup alone over the limit cannot be fixed.
        assert!(truncate(0, &origin, 2, true, "x").is_err());
    }

    #[test]
    fn end_rules_follow_the_references() {
        assert_eq!(EndRule::Last.index(&[1, 5, 0]), 2);
        assert_eq!(EndRule::LastNonPad(0).index(&[1, 5, 0, 0]), 1);
        assert_eq!(EndRule::LastNonPad(0).index(&[0, 0]), 1);
    }

    #[test]
    fn pass_groups_bound_tokens() {
        let g = pass_groups([3000, 1000, 200, 5000, 10].into_iter());
        assert_eq!(g, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn normalizers_match_safe_rlhf() {
        let a = Normalize::Affine { mean: 0.75, std: 1.5 };
        assert!((a.apply(0.707_503_9_f32) - (-0.028_330_764_f32)).abs() < 1e-6);
        let s = Normalize::Scale { std: 1.5 };
        assert!((s.apply(0.707_503_9_f32) - 0.471_669_23_f32).abs() < 1e-6);
    }

    #[test]
    fn char_boundaries_round_up() {
        let s = "é!"; // 'é' is 2 bytes
        assert_eq!(ceil_char_boundary(s, 1), 2);
        assert_eq!(ceil_char_boundary(s, 9), 3);
    }
}
