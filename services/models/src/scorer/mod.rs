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
//! | guard LM ([`guard_lm`]) | a `.gguf` file, or a dir whose `architectures` is a `*ForCausalLM` | any family of [`crate::causal_lm`] | `logit[unsafe] - logit[safe]` at the first answer token after a Jinja template |
//!
//! Each format is a module of its own behind one trait (`FormatModel`):
//! `head_file`, `bert_classifier`, `causal_classifier`, `guard_lm`; the
//! shared pieces (text templates, linear heads with PKU's normaliser,
//! truncation) have theirs.
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

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScoreRole, ScorerBackend, ScorerInfo};
use ig_core::RoleError;

use crate::causal_lm::WeightDtype;
use crate::encoder::keep_mask;
use crate::score_head::{read_header, read_header_metadata, role_name, FORMAT, HEAD_FORMATS};
use crate::{ModelError, Result};

mod bert_classifier;
mod causal_classifier;
pub mod guard_lm;
mod head_file;
mod linear_head;
mod text_template;

use bert_classifier::BertClassifier;
use causal_classifier::CausalClassifier;
use head_file::HeadFileScorer;
pub use text_template::{RenderedText, TextTemplate};

/// One score-model format, loaded: what [`ScoreModel`] dispatches to. Each
/// format lives in its own module and knows its files, its input and its score.
trait FormatModel: Send {
    /// Scores a batch; `limit` is the token limit per input (after `max_tokens`).
    fn score(&self, inputs: &[ScoreInput], limit: usize, control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError>;

    /// The causal classifier behind this format, for token-id scoring.
    fn causal(&self) -> Option<&CausalClassifier> {
        None
    }
}

/// What a format's loader returns.
struct Loaded {
    model: Box<dyn FormatModel>,
    info: ScorerInfo,
    /// Tokens per input (per embedded segment for head files).
    limit: usize,
}

/// PKU-Alignment's conversation template (beaver models).
pub const PKU_TEMPLATE: &str = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}";

/// The Anthropic HH-RLHF dialogue format, the default for
/// `LlamaForSequenceClassification` reward models.
pub const HH_TEMPLATE: &str = "\n\nHuman: {prompt}\n\nAssistant: {response}";

/// Names a head file's `trunk` may carry for the default trunk (the MiniLM asset).
const DEFAULT_TRUNK_NAMES: &[&str] = &["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"];

/// Token slots (padding included) per causal forward pass
/// ([`crate::scoring_passes`]): large enough to batch the linear layers, small
/// enough to bound activations and attention scores.
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
    let json = read_header(&dir.join("model.safetensors"))?;
    Ok(json.as_object().map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default())
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

/// A loaded score model.
pub struct ScoreModel {
    model: Box<dyn FormatModel>,
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

fn encoder_dtype(dtype: WeightDtype) -> Result<DType> {
    match dtype {
        WeightDtype::Native | WeightDtype::F32 | WeightDtype::Auto => Ok(DType::F32),
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

impl ScoreModel {
    /// Loads a score model in any of the formats of the module doc.
    pub fn load(opts: &ScorerOptions) -> Result<Self> {
        let format = ScoreFormat::detect(&opts.model)?;
        // A guard LM's template is Jinja (its own module reads it).
        let template = match format {
            ScoreFormat::GuardLm => None,
            _ => opts.template.as_deref().map(TextTemplate::parse).transpose()?,
        };
        let Loaded { model, info, mut limit } = match format {
            ScoreFormat::HeadFile => HeadFileScorer::load(opts, template)?,
            ScoreFormat::BertForSequenceClassification => BertClassifier::load(opts, template)?,
            ScoreFormat::LlamaForSequenceClassification | ScoreFormat::LlamaForScore => {
                CausalClassifier::load(opts, format, template)?
            }
            ScoreFormat::GuardLm => guard_lm::load(opts)?,
        };
        if let Some(cap) = opts.max_tokens {
            if cap == 0 {
                return Err(ModelError::Unsupported("max_tokens 0".into()));
            }
            limit = limit.min(cap);
        }
        Ok(Self { model, format, info, limit })
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
        match self.model.causal() {
            Some(causal) => causal.score_token_ids(sequences),
            None => Err(ModelError::Unsupported(format!("{}: token-id scoring needs a causal trunk", self.format.name()))),
        }
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
        if !self.info.token_scores_available {
            if let Some(i) = inputs.iter().position(|x| x.token_scores) {
                return Err(RoleError::FailedPrecondition(format!(
                    "items[{i}].token_scores: per-token scores need a causal trunk; this scorer's trunk is {}",
                    self.info.architecture
                )));
            }
        }
        control.check()?;
        let out = self.model.score(inputs, self.limit, control)?;
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
    fn char_boundaries_round_up() {
        let s = "é!"; // 'é' is 2 bytes
        assert_eq!(ceil_char_boundary(s, 1), 2);
        assert_eq!(ceil_char_boundary(s, 9), 3);
    }
}
