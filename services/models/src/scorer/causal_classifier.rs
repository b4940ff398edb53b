//! Causal-trunk score models: Hugging Face `*ForSequenceClassification`
//! (`score` at the last non-pad token) and PKU-Alignment's `LlamaForScore`
//! (`score_head` at the last token, then the normaliser), over any family of
//! [`crate::causal_lm`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScoreRole, ScorerInfo};
use ig_core::RoleError;
use tokenizers::Tokenizer;

use super::linear_head::{DimRule, LinearHead, Normalize};
use super::{
    ceil_char_boundary, classify, description, model_id, read_json, resolve_role, truncate, FormatModel, Loaded, Origin,
    PositionScores, ScoreFormat, ScorerOptions, TextTemplate, HH_TEMPLATE, MAX_PASS_TOKENS, PKU_TEMPLATE,
};
use crate::causal_lm::CausalLm;
use crate::policy::device_name;
use crate::{ModelError, Result};

/// Where a causal format reads its end score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndRule {
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

/// A causal input ready for the trunk.
#[derive(Debug, Clone)]
struct CausalInput {
    ids: Vec<u32>,
    end_index: usize,
    /// (position, byte offset in the response where the token ends).
    response_tokens: Vec<(usize, usize)>,
    truncated: usize,
}

/// A causal trunk, its tokenizer and template, and the score head.
pub(super) struct CausalClassifier {
    model: CausalLm,
    tokenizer: Tokenizer,
    /// Prepended when the tokenizer's post-processor does not add it but
    /// `tokenizer_config.json` asks for it.
    bos: Option<u32>,
    head: LinearHead,
    end: EndRule,
    template: TextTemplate,
}

impl CausalClassifier {
    pub(super) fn load(opts: &ScorerOptions, format: ScoreFormat, template: Option<TextTemplate>) -> Result<Loaded> {
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
        let role = resolve_role(opts, from_file, &what)?;
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
        Ok(Loaded { model: Box::new(CausalClassifier { model, tokenizer, bos, head, end, template }), info, limit })
    }

    /// Scores token sequences directly (causal formats only): the head at
    /// every position and the end score, each sequence on its own. This is
    /// the model without its tokenizer and template, for checks against
    /// reference implementations.
    pub(super) fn score_token_ids(&self, sequences: &[Vec<u32>]) -> Result<Vec<PositionScores>> {
        let Self { model, head, end, .. } = self;
        let seqs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let every: Vec<Vec<usize>> = seqs.iter().map(|s| (0..s.len()).collect()).collect();
        let hidden = model.hidden_at(&seqs, &every, MAX_PASS_TOKENS, &mut || Ok(())).map_err(|e| ModelError::Shape(e.to_string()))?;
        let scores = head.scores(&hidden)?;
        let mut off = 0;
        Ok(sequences
            .iter()
            .map(|seq| {
                let s = scores[off..off + seq.len()].to_vec();
                off += seq.len();
                let end_index = end.index(seq);
                PositionScores { end_index, end_score: s[end_index], scores: s }
            })
            .collect())
    }

    /// Tokenizes one item for a causal trunk, applying the limit.
    fn prepare(&self, i: usize, input: &ScoreInput, limit: usize) -> std::result::Result<CausalInput, RoleError> {
        let Self { tokenizer, bos, end, template, .. } = self;
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
        let (keep, truncated) = truncate(i, &origin, limit, input.truncate, "the model input")?;
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
}

impl FormatModel for CausalClassifier {
    fn score(&self, inputs: &[ScoreInput], limit: usize, control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let Self { model, head, .. } = self;
        let prepared = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| self.prepare(i, x, limit))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let seqs: Vec<&[u32]> = prepared.iter().map(|p| p.ids.as_slice()).collect();
        // Only the rows a score is read at go through the head.
        let wanted: Vec<Vec<usize>> = prepared
            .iter()
            .zip(inputs)
            .map(|(p, x)| {
                let mut rows = vec![p.end_index];
                if x.token_scores {
                    rows.extend(p.response_tokens.iter().map(|&(pos, _)| pos));
                }
                rows
            })
            .collect();
        let hidden = model.hidden_at(&seqs, &wanted, MAX_PASS_TOKENS, &mut || control.check())?;
        let mut next = head.scores(&hidden)?.into_iter();
        let mut out = Vec::with_capacity(inputs.len());
        for (p, x) in prepared.iter().zip(inputs) {
            let score = next.next().ok_or_else(|| RoleError::Internal("head returned too few scores".into()))?;
            let token_scores = if x.token_scores {
                p.response_tokens
                    .iter()
                    .map(|&(_, byte)| next.next().map(|s| (s, byte)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| RoleError::Internal("head returned too few scores".into()))?
            } else {
                Vec::new()
            };
            out.push(ScoreOutput { score, token_scores, token_count: p.ids.len(), truncated_token_count: p.truncated });
        }
        Ok(out)
    }

    fn causal(&self) -> Option<&CausalClassifier> {
        Some(self)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_rules_follow_the_references() {
        assert_eq!(EndRule::Last.index(&[1, 5, 0]), 2);
        assert_eq!(EndRule::LastNonPad(0).index(&[1, 5, 0, 0]), 1);
        assert_eq!(EndRule::LastNonPad(0).index(&[0, 0]), 1);
    }
}
