//! The BERT trunk the sentence encoder runs (embeddings, then post-norm layers), in f32,
//! f16 or bf16.
//!
//! candle-transformers' `BertModel` computes the same function in f32, but builds its
//! additive attention mask as `(1 − mask) · f32::MIN` in the model's dtype: `f32::MIN`
//! rounds to −∞ in bf16 and f16, so every visible position gets `0 · −∞ = NaN` and a
//! half-precision trunk scores nothing. Here, as transformers does for half precision,
//! the attention scores are taken to f32 for the mask and the softmax, and the
//! probabilities back to the trunk's dtype for the product with the values.
//!
//! [`crate::cross_head::BertLayer`] is the same layer written with differentiable ops for
//! fine-tuning; this one uses candle's fused layer norm and softmax, several times faster.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::Result;

/// Added to the f32 attention score of a padding key: far below any real score, so its
/// probability is exactly 0 as with −∞, without the NaN −∞ makes of a fully masked row.
const MASKED: f32 = -1e30;

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// Embeddings and encoder layers of a BERT checkpoint (names as in Hugging Face's
/// `BertModel`: `embeddings.*`, `encoder.layer.N.*`).
pub struct BertTrunk {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
    dtype: DType,
}

impl BertTrunk {
    /// Loads the first `config.num_hidden_layers` layers from `vb` (in `vb`'s dtype).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !h.is_multiple_of(heads) {
            return Err(crate::ModelError::Format(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let e = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    query: linear(h, h, a.pp("self.query"))?,
                    key: linear(h, h, a.pp("self.key"))?,
                    value: linear(h, h, a.pp("self.value"))?,
                    attention_out: linear(h, h, a.pp("output.dense"))?,
                    attention_norm: layer_norm(h, config.layer_norm_eps, a.pp("output.LayerNorm"))?,
                    intermediate: linear(h, config.intermediate_size, l.pp("intermediate.dense"))?,
                    out: linear(config.intermediate_size, h, l.pp("output.dense"))?,
                    out_norm: layer_norm(h, config.layer_norm_eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(config.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(config.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            embedding_norm: layer_norm(h, config.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads,
            head_dim: h / heads,
            act: config.hidden_act,
            dtype: vb.dtype(),
        })
    }

    /// `(b, t)` token ids and segment ids and a `(b, t)` mask (1 token, 0 padding; any
    /// float dtype) → the final `(b, t, hidden)` states in the trunk's dtype.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.embedding_norm.forward(&x)?;
        // (b, 1, 1, t): 0 where a key is a token, MASKED where it is padding.
        let bias =
            ((1.0 - mask.to_dtype(DType::F32)?)? * f64::from(MASKED))?.reshape((b, 1, 1, t))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias)?;
        }
        Ok(x)
    }

    fn layer(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(l.query.forward(x)?)?;
        let k = heads(l.key.forward(x)?)?;
        let v = heads(l.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(self.dtype)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?;
        let attended = l
            .attention_norm
            .forward(&(l.attention_out.forward(&context)? + x)?)?;
        let inner = l.intermediate.forward(&attended)?;
        let inner = match self.act {
            HiddenAct::Gelu => inner.gelu_erf()?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        Ok(l.out_norm.forward(&(l.out.forward(&inner)? + attended)?)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;
    use candle_transformers::models::bert::BertModel;

    use super::*;

    fn config() -> Config {
        Config {
            vocab_size: 50,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            ..Config::default()
        }
    }

    /// Random weights for every tensor `BertModel` reads.
    fn weights(c: &Config) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![c.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![c.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![c.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for n in 0..c.num_hidden_layers {
            for name in crate::cross_head::LAYER_TENSORS {
                let shape = match *name {
                    "intermediate.dense.weight" => vec![i, h],
                    "intermediate.dense.bias" => vec![i],
                    "output.dense.weight" => vec![h, i],
                    n if n.ends_with("bias") || n.contains("LayerNorm") => vec![h],
                    _ => vec![h, h],
                };
                shapes.push((format!("encoder.layer.{n}.{name}"), shape));
            }
        }
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = if name.ends_with("LayerNorm.weight") {
                    (Tensor::randn(0f32, 0.1, shape, &dev).unwrap() + 1.0).unwrap()
                } else {
                    Tensor::randn(0f32, 0.2, shape, &dev).unwrap()
                };
                (name, t)
            })
            .collect()
    }

    fn inputs() -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[1u32, 7, 9, 33, 2, 0], [1, 4, 2, 0, 0, 0]], &dev).unwrap();
        let types = Tensor::new(&[[0u32, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1., 1., 0.], [1., 1., 1., 0., 0., 0.]],
            &dev,
        )
        .unwrap();
        (ids, types, mask)
    }

    fn norm(t: &Tensor) -> f32 {
        t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        norm(&(a - b).unwrap()) / norm(b)
    }

    #[test]
    fn f32_matches_candle_transformers_bert_with_padding() {
        let c = config();
        let w = weights(&c);
        let (ids, types, mask) = inputs();
        let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
        let ours = BertTrunk::load(vb.clone(), &c)
            .unwrap()
            .forward(&ids, &types, &mask)
            .unwrap();
        let reference = BertModel::load(vb, &c)
            .unwrap()
            .forward(&ids, &types, Some(&mask))
            .unwrap();
        // Every position, padding included: the masked keys get probability 0 in both.
        assert!(rel(&ours, &reference) < 1e-6, "{}", rel(&ours, &reference));
    }

    #[test]
    fn half_precision_is_finite_and_close_to_f32() {
        let c = config();
        let w = weights(&c);
        let (ids, types, mask) = inputs();
        let full = BertTrunk::load(
            VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu),
            &c,
        )
        .unwrap()
        .forward(&ids, &types, &mask)
        .unwrap();
        for (dtype, tol) in [(DType::BF16, 3e-2), (DType::F16, 5e-3)] {
            let half =
                BertTrunk::load(VarBuilder::from_tensors(w.clone(), dtype, &Device::Cpu), &c)
                    .unwrap();
            let out = half
                .forward(&ids, &types, &mask.to_dtype(dtype).unwrap())
                .unwrap();
            assert_eq!(out.dtype(), dtype);
            let out = out.to_dtype(DType::F32).unwrap();
            let finite = out
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite());
            assert!(finite, "{dtype:?}: non-finite states");
            assert!(
                rel(&out, &full) < tol,
                "{dtype:?}: {} from f32",
                rel(&out, &full)
            );
        }
        // What this replaces: candle-transformers' trunk in bf16 is NaN everywhere.
        let vb = VarBuilder::from_tensors(w, DType::BF16, &Device::Cpu);
        let theirs = BertModel::load(vb, &c)
            .unwrap()
            .forward(&ids, &types, Some(&mask))
            .unwrap();
        let theirs = theirs
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(theirs.iter().any(|v| v.is_nan()));
    }
}
