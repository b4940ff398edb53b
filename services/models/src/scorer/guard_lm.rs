//! A generative guard model (Llama Guard 3, Qwen3Guard, ShieldGemma, ...) as a
//! cost model: a causal LM asked, through a prompt template, whether the
//! policy's answer is safe, read at the first answer position.
//!
//! `cost = log P(unsafe label) - log P(safe label)` at the position after the
//! rendered template: `> 0` means the guard would rather answer "unsafe", the
//! convention of the cost role. The softmax normaliser cancels in the
//! difference, so it is the difference of the two logits. One forward pass
//! per item, items batched as segments of one pass.
//!
//! The template is Jinja (minijinja, with Python-compatible string methods)
//! and sees `prompt`, `response`, `messages` (`[{role: "user", content:
//! prompt}, {role: "assistant", content: response}]`), `bos_token` and
//! `eos_token`; it is rendered as is (trailing newlines kept) and tokenised
//! with the model's special tokens recognised in the text. Built in:
//! [`GUARD_TEMPLATES`]. `checkpoint` renders the checkpoint's own chat
//! template with `messages` and a generation prompt.
//!
//! Labels default to the built-in template's, else `unsafe` / `safe`. Each
//! label must be exactly one token of the vocabulary (tokenised on its
//! own, without special tokens); a label that is not fails at load, naming it
//! and its tokens.

use std::path::Path;

use candle_core::Device;
use ig_core::policy::{ChatMessage, TextCodec, WorkControl};
use ig_core::scorer::{ScoreInput, ScoreOutput, ScoreRole, ScorerInfo};
use ig_core::RoleError;

use super::{model_id, FormatModel, Loaded, ScorerOptions, MAX_PASS_TOKENS};
use crate::causal_lm::{CausalLm, WeightDtype};
use crate::policy::{device_name, load_with_tokenizer};
use crate::tokenizer::TokenizerCodec;
use crate::{ModelError, Result};

/// A built-in guard template: name, Jinja source, unsafe label, safe label.
pub struct GuardTemplate {
    /// The name `--template` takes.
    pub name: &'static str,
    /// The Jinja source.
    pub source: &'static str,
    /// The answer token that means unsafe.
    pub unsafe_label: &'static str,
    /// The answer token that means safe.
    pub safe_label: &'static str,
}

/// The built-in templates (files under `models/guard_templates/`).
pub const GUARD_TEMPLATES: &[GuardTemplate] = &[
    GuardTemplate {
        name: "llama-guard-3",
        source: include_str!("../../../../models/guard_templates/llama-guard-3.jinja"),
        unsafe_label: "unsafe",
        safe_label: "safe",
    },
    GuardTemplate {
        name: "qwen3guard",
        source: include_str!("../../../../models/guard_templates/qwen3guard.jinja"),
        unsafe_label: " Unsafe",
        safe_label: " Safe",
    },
];

/// Template value that renders the checkpoint's own chat template.
pub const CHECKPOINT_TEMPLATE: &str = "checkpoint";

/// How to load a guard LM.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// A built-in template name, [`CHECKPOINT_TEMPLATE`], or a path to a `.jinja` file
    /// (the scorer's `--template`).
    pub template: String,
    /// `(unsafe, safe)` label texts; default: the built-in template's, else `unsafe`/`safe`.
    pub labels: Option<(String, String)>,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self { template: "llama-guard-3".into(), labels: None }
    }
}

enum Template {
    Jinja(Box<minijinja::Environment<'static>>),
    Checkpoint,
}

/// A loaded guard LM.
pub struct GuardLm {
    model: CausalLm,
    codec: TokenizerCodec,
    template: Template,
    template_name: String,
    unsafe_id: u32,
    safe_id: u32,
    /// The model's positions: the most tokens one rendered item may have.
    positions: usize,
}

/// Loads a guard LM for the scorer: the cost role only, `--template` and
/// `--guard-labels` from the options.
pub(super) fn load(opts: &ScorerOptions) -> Result<Loaded> {
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
    let limit = guard.positions;
    Ok(Loaded { model: Box::new(guard), info, limit })
}

fn label_id(codec: &TokenizerCodec, label: &str, flag_side: &str) -> Result<u32> {
    let ids = codec.tokenize(label, false).map_err(|e| ModelError::Format(e.to_string()))?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(ModelError::Unsupported(format!(
            "--guard-labels: the {flag_side} label {label:?} is {} tokens {ids:?} of this vocabulary; a label must be one token",
            ids.len()
        ))),
    }
}

impl GuardLm {
    /// Loads the model (a `.gguf` file or a checkpoint directory of a
    /// supported family), its tokenizer, the template and the label ids.
    pub fn load(path: &Path, opts: &GuardOptions, dtype: WeightDtype, device: &Device) -> Result<Self> {
        let (model, codec) = load_with_tokenizer(path, dtype, device)?;
        let builtin = GUARD_TEMPLATES.iter().find(|t| t.name == opts.template);
        let (template, default_labels) = if opts.template == CHECKPOINT_TEMPLATE {
            if codec.chat_template().is_none() {
                return Err(ModelError::Unsupported(format!(
                    "--template {CHECKPOINT_TEMPLATE}: {} has no chat template",
                    path.display()
                )));
            }
            (Template::Checkpoint, None)
        } else {
            let (source, labels) = match builtin {
                Some(t) => (t.source.to_string(), Some((t.unsafe_label.to_string(), t.safe_label.to_string()))),
                None => {
                    let file = Path::new(&opts.template);
                    let source = std::fs::read_to_string(file).map_err(|e| {
                        ModelError::Io(format!(
                            "--template {}: {e} (built in: {}, or {CHECKPOINT_TEMPLATE})",
                            file.display(),
                            GUARD_TEMPLATES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                        ))
                    })?;
                    (source, None)
                }
            };
            let mut env = minijinja::Environment::new();
            let syntax = minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .map_err(|e| ModelError::Format(e.to_string()))?;
            env.set_syntax(syntax);
            env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
            env.add_template_owned("guard", source).map_err(|e| {
                ModelError::Format(format!("--template {}: does not parse: {}", opts.template, one_line(&e)))
            })?;
            (Template::Jinja(Box::new(env)), labels)
        };
        // Llama Guard's words are the default for templates of one's own.
        let (unsafe_label, safe_label) =
            opts.labels.clone().or(default_labels).unwrap_or_else(|| ("unsafe".into(), "safe".into()));
        let unsafe_id = label_id(&codec, &unsafe_label, "unsafe")?;
        let safe_id = label_id(&codec, &safe_label, "safe")?;
        if unsafe_id == safe_id {
            return Err(ModelError::Unsupported(format!("--guard-labels: {unsafe_label:?} and {safe_label:?} are the same token")));
        }
        let positions = model.config().max_position_embeddings;
        let guard = Self { model, codec, template, template_name: opts.template.clone(), unsafe_id, safe_id, positions };
        // A template that cannot render a plain pair fails now, not on the first request.
        guard.render("Hello", "Hi!").map_err(|e| {
            ModelError::Format(format!("--template {}: does not render: {e}", guard.template_name))
        })?;
        Ok(guard)
    }

    /// The text the model reads for one pair.
    pub fn render(&self, prompt: &str, response: &str) -> std::result::Result<String, RoleError> {
        let messages = [
            ChatMessage { role: "user".into(), content: prompt.into() },
            ChatMessage { role: "assistant".into(), content: response.into() },
        ];
        match &self.template {
            Template::Checkpoint => self.codec.render_chat(&messages, true),
            Template::Jinja(env) => {
                let tmpl = env.get_template("guard").map_err(|e| RoleError::Internal(e.to_string()))?;
                tmpl.render(minijinja::context! {
                    prompt => prompt,
                    response => response,
                    messages => messages
                        .iter()
                        .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
                        .collect::<Vec<_>>(),
                    bos_token => self.codec.bos_id().and_then(|id| self.codec.detokenize(&[id], false).ok()).unwrap_or_default(),
                    eos_token => self.codec.eos_ids().first().and_then(|&id| self.codec.detokenize(&[id], false).ok()).unwrap_or_default(),
                })
                .map_err(|e| RoleError::invalid("items", format!("the guard template does not render: {}", one_line(&e))))
            }
        }
    }

    /// Token ids of one item, its prompt shortened from the start when the
    /// item asks to truncate and the rendering is over the limit.
    /// Also returns how many prompt tokens were cut.
    fn prepare(&self, i: usize, item: &ScoreInput, limit: usize) -> std::result::Result<(Vec<u32>, usize), RoleError> {
        let mut prompt = item.prompt.clone();
        let mut cut = 0;
        loop {
            let ids = self.codec.tokenize(&self.render(&prompt, &item.response)?, false)?;
            if ids.len() <= limit {
                return Ok((ids, cut));
            }
            let over = ids.len() - limit;
            let prompt_ids = self.codec.tokenize(&prompt, false)?;
            if !item.truncate || prompt_ids.len() <= over || prompt.is_empty() {
                return Err(RoleError::invalid(format!("items[{i}]"), format!(
                    "the guard prompt is {} tokens, over max_tokens {}{}",
                    ids.len(),
                    limit,
                    if item.truncate { " even with the prompt cut" } else { " (set truncate to cut the prompt)" }
                )));
            }
            // Cut a few more tokens than needed: re-tokenising the seam may merge differently.
            let drop = over + 2.min(prompt_ids.len() - over - 1);
            cut += drop;
            prompt = self.codec.detokenize(&prompt_ids[drop..], false)?;
        }
    }

    /// Costs of the items (`logit[unsafe] - logit[safe]` after each rendering),
    /// with the tokens read and the prompt tokens cut.
    fn score_items(&self, items: &[ScoreInput], limit: usize, control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let (prepared, cut): (Vec<Vec<u32>>, Vec<usize>) =
            items.iter().enumerate().map(|(i, x)| self.prepare(i, x, limit)).collect::<std::result::Result<Vec<_>, _>>()?.into_iter().unzip();
        // The hidden state at each item's last token, then the LM head.
        let seqs: Vec<&[u32]> = prepared.iter().map(Vec::as_slice).collect();
        let last: Vec<Vec<usize>> = seqs.iter().map(|s| vec![s.len().saturating_sub(1)]).collect();
        let hidden = self.model.hidden_at(&seqs, &last, MAX_PASS_TOKENS, &mut || control.check())?;
        let logits = self.model.lm_head(&hidden)?;
        let pick = |id: u32| -> std::result::Result<Vec<f32>, RoleError> {
            let col = logits.narrow(1, id as usize, 1).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
            col.map_err(|e| RoleError::Internal(e.to_string()))
        };
        let (u, s) = (pick(self.unsafe_id)?, pick(self.safe_id)?);
        let costs: Vec<f32> = u.iter().zip(&s).map(|(u, s)| u - s).collect();
        Ok(costs
            .into_iter()
            .zip(prepared.iter().zip(cut))
            .map(|(score, (ids, cut))| ScoreOutput { score, token_scores: vec![], token_count: ids.len(), truncated_token_count: cut })
            .collect())
    }

    /// What the scorer reports about this model.
    pub fn info(&self, path: &Path, device: String) -> ScorerInfo {
        ScorerInfo {
            role: ScoreRole::Cost,
            model_id: model_id(path),
            score_description: format!(
                "guard LM (template {}): log P({:?}) - log P({:?}) at the first answer token; > 0 is unsafe",
                self.template_name,
                self.codec.detokenize(&[self.unsafe_id], false).unwrap_or_default(),
                self.codec.detokenize(&[self.safe_id], false).unwrap_or_default(),
            ),
            architecture: self.model.config().architecture.name().into(),
            head_format: "guard_lm".into(),
            text_template: self.template_name.clone(),
            token_scores_available: false,
            weight_dtype: self.model.weight_dtype().to_string(),
            device,
            max_model_tokens: self.positions,
        }
    }


}

impl FormatModel for GuardLm {
    fn score(&self, inputs: &[ScoreInput], limit: usize, control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        self.score_items(inputs, limit, control)
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
