//! Our head files (`inferenceguard.score_head.*`): a linear, two-factor or
//! cross-encoder head over a separately loaded BERT-family encoder.

use std::collections::HashMap;

use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScorerInfo};
use ig_core::RoleError;

use super::{
    description, dtype_label, encoder_dtype, encoder_groups, model_id, resolve_role, too_long, FormatModel, Loaded,
    ScorerOptions, TextTemplate, DEFAULT_TRUNK_NAMES,
};
use crate::cross_head::{encode_pair, PairComply};
use crate::encoder::{Encoded, SentenceEncoder};
use crate::policy::device_name;
use crate::score_head::HeadFile;
use crate::{ModelError, Result};

/// A head file over its encoder (and, for a cross-encoder head, the pair reader).
pub(super) struct HeadFileScorer {
    encoder: SentenceEncoder,
    head: HeadFile,
    /// The comply factor of a cross-encoder head, which reads the pair itself.
    pair: Option<PairComply>,
}

impl HeadFileScorer {
    pub(super) fn load(opts: &ScorerOptions, template: Option<TextTemplate>) -> Result<Loaded> {
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
        let role = resolve_role(opts, Some(head.meta().role), "the head file")?;
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
        Ok(Loaded { model: Box::new(HeadFileScorer { encoder, head, pair }), info, limit })
    }
}

impl FormatModel for HeadFileScorer {
    fn score(&self, inputs: &[ScoreInput], limit: usize, control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let Self { encoder, head, pair } = self;
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
                        let e = encoder.encode(&text, limit)?;
                        seen[s].insert(text, unique[s].len());
                        unique[s].push(e);
                        unique[s].len() - 1
                    }
                };
                let e = &unique[s][k];
                if e.truncated_token_count > 0 && !x.truncate {
                    let what = format!("the {} segment", seg.as_str());
                    return Err(too_long(i, &what, e.ids.len() + e.truncated_token_count, limit));
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
                    let e = encode_pair(pair.bottom(), &x.prompt, &x.response, limit)?;
                    if e.truncated_token_count > 0 && !x.truncate {
                        return Err(too_long(i, "the (prompt, response) pair", e.ids.len() + e.truncated_token_count, limit));
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
