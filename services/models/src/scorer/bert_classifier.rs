//! Hugging Face `BertForSequenceClassification`: `classifier(tanh(pooler([CLS])))`
//! over a text pair (or one text under a template).

use candle_core::{DType, Tensor};
use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScorerInfo};
use ig_core::RoleError;

use super::linear_head::{DimRule, LinearHead};
use super::{
    classify, description, dtype_label, encoder_dtype, encoder_groups, model_id, resolve_role, truncate, FormatModel,
    Loaded, Origin, ScoreFormat, ScorerOptions, TextTemplate,
};
use crate::encoder::SentenceEncoder;
use crate::policy::device_name;
use crate::{ModelError, Result};

/// A BERT trunk with its pooler and classifier.
pub(super) struct BertClassifier {
    encoder: SentenceEncoder,
    /// `bert.pooler.dense` weight `(hidden, hidden)` and bias, f32.
    pooler: (Tensor, Tensor),
    classifier: LinearHead,
    template: Option<TextTemplate>,
}

impl BertClassifier {
    pub(super) fn load(opts: &ScorerOptions, template: Option<TextTemplate>) -> Result<Loaded> {
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
        let role = resolve_role(opts, None, "a BertForSequenceClassification checkpoint")?;
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
        Ok(Loaded { model: Box::new(BertClassifier { encoder, pooler: (pw, pb), classifier, template }), info, limit })
    }
}

impl FormatModel for BertClassifier {
    fn score(&self, inputs: &[ScoreInput], limit: usize, control: &WorkControl<'_>) -> std::result::Result<Vec<ScoreOutput>, RoleError> {
        let Self { encoder, pooler, classifier, template } = self;
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
            let (keep, _) = truncate(i, &origin, limit, x.truncate, "the model input")?;
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
}
