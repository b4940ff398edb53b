//! The cross-encoder cost head: the two-factor cost `logit(harm · comply) − logit(τ)` whose
//! comply factor reads the request and the answer **together**.
//!
//! The two-factor head ([`crate::two_factor_head`]) embeds the request and the answer
//! separately and mean-pools frozen MiniLM states: the embeddings carry topic, not stance,
//! so "complies" vs "deflects" is barely separable in them and a search finds answers that
//! start a procedure without the words the head learned. Here
//!
//! - `harm(prompt) = σ(w_h · e(prompt) + b_h)` as before (frozen sentence embedding), and
//! - `comply(prompt, response) = σ(w_c · mean(top(bottom([CLS] prompt [SEP] response [SEP]))) + b_c)`:
//!   the trunk's lower layers, frozen, read the pair as one sequence (its attention sees
//!   the request while reading the answer), and its **last layer is fine-tuned** with the
//!   classifier (the weights of that layer ship in the head file).
//!
//! The file is safetensors like [`crate::score_head`], with `format =` [`FORMAT`], the same
//! metadata keys (`input_layout` is `prompt`, the segment the harm factor embeds;
//! `max_tokens` caps the pair too; `threshold` is `τ`), plus `harm_layout`, `comply_layers`
//! (how many bottom layers of the trunk stay frozen: the tuned layer replaces the next one)
//! and the f32 tensors `harm.weight [1, d]`, `harm.bias [1]`, `comply.weight [1, d]`,
//! `comply.bias [1]` and `comply.layer.<name>` for every tensor of a BERT layer
//! ([`LAYER_TENSORS`], names as in Hugging Face checkpoints under `encoder.layer.N.`).
//!
//! Truncation follows the rest of the scorer: over `max_tokens`, the pair loses the start of
//! the request first, then the start of the answer (the newest text is what changed).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::encoder::{Encoded, SentenceEncoder};
use crate::score_head::{HeadMeta, Segment};
use crate::two_factor_head::{format_features, logit, parse_features, product_logit, Factor, Feature};
use crate::{ModelError, Result};

/// The value of the `format` metadata key of a cross-encoder head file.
pub const FORMAT: &str = "inferenceguard.score_head.cross_encoder.v1";

/// The tensors of one BERT layer (Hugging Face names under `encoder.layer.N.`): the
/// shape is `[out, in]` for weights, `[out]` for biases, with `h` the hidden size and
/// `i` the intermediate size.
pub const LAYER_TENSORS: &[&str] = &[
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// The expected shape of a [`LAYER_TENSORS`] entry.
fn layer_shape(name: &str, hidden: usize, intermediate: usize) -> Vec<usize> {
    let bias = name.ends_with(".bias") || name.contains("LayerNorm");
    match (name, bias) {
        (n, true) if n.starts_with("intermediate.") => vec![intermediate],
        (_, true) => vec![hidden],
        (n, false) if n.starts_with("intermediate.") => vec![intermediate, hidden],
        ("output.dense.weight", false) => vec![hidden, intermediate],
        _ => vec![hidden, hidden],
    }
}

/// One BERT encoder layer (post-norm, GELU), written with differentiable candle ops only,
/// so the same code serves inference and fine-tuning (candle's fused layer norm and
/// softmax kernels have no backward pass).
#[derive(Debug, Clone)]
pub struct BertLayer {
    t: HashMap<String, Tensor>,
    heads: usize,
    eps: f64,
}

impl BertLayer {
    /// A layer from its [`LAYER_TENSORS`] (any extra key is an error; shapes are checked).
    pub fn new(tensors: HashMap<String, Tensor>, heads: usize, eps: f64) -> Result<Self> {
        let hidden = tensors
            .get("attention.self.query.bias")
            .ok_or_else(|| ModelError::Format("layer tensor \"attention.self.query.bias\" missing".into()))?
            .dim(0)?;
        let intermediate = tensors
            .get("intermediate.dense.bias")
            .ok_or_else(|| ModelError::Format("layer tensor \"intermediate.dense.bias\" missing".into()))?
            .dim(0)?;
        if heads == 0 || hidden % heads != 0 {
            return Err(ModelError::Format(format!("hidden size {hidden} is not a multiple of {heads} attention heads")));
        }
        for name in LAYER_TENSORS {
            let t = tensors.get(*name).ok_or_else(|| ModelError::Format(format!("layer tensor {name:?} missing")))?;
            let want = layer_shape(name, hidden, intermediate);
            if t.dims() != want.as_slice() {
                return Err(ModelError::Format(format!("layer tensor {name:?} has shape {:?}, expected {want:?}", t.dims())));
            }
        }
        if let Some(extra) = tensors.keys().find(|k| !LAYER_TENSORS.contains(&k.as_str())) {
            return Err(ModelError::Format(format!("layer tensor {extra:?} is not part of a BERT layer")));
        }
        Ok(Self { t: tensors, heads, eps })
    }

    /// Layer `index` of a BERT checkpoint's tensors (`encoder.layer.N.*`, with or without
    /// a `bert.` prefix), e.g. to start fine-tuning from it.
    pub fn tensors_of_checkpoint(checkpoint: &HashMap<String, Tensor>, index: usize) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for name in LAYER_TENSORS {
            let plain = format!("encoder.layer.{index}.{name}");
            let t = checkpoint
                .get(&plain)
                .or_else(|| checkpoint.get(&format!("bert.{plain}")))
                .ok_or_else(|| ModelError::Format(format!("checkpoint has no tensor {plain:?}")))?;
            out.insert(name.to_string(), t.to_dtype(DType::F32)?);
        }
        Ok(out)
    }

    /// The layer's tensors by [`LAYER_TENSORS`] name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.t
    }

    fn get(&self, name: &str) -> &Tensor {
        &self.t[name]
    }

    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.get(&format!("{name}.weight"));
        Ok(x.broadcast_matmul(&w.t()?)?.broadcast_add(self.get(&format!("{name}.bias")))?)
    }

    fn layer_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(self.get(&format!("{name}.weight")))?.broadcast_add(self.get(&format!("{name}.bias")))?)
    }

    /// `(b, t, h)` states and a `(b, t)` mask of 1 (token) / 0 (padding) → `(b, t, h)`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let d = h / self.heads;
        let split = |y: Tensor| -> Result<Tensor> { Ok(y.reshape((b, t, self.heads, d))?.transpose(1, 2)?.contiguous()?) };
        let q = split(self.linear(x, "attention.self.query")?)?;
        let k = split(self.linear(x, "attention.self.key")?)?;
        let v = split(self.linear(x, "attention.self.value")?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (d as f64).sqrt())?;
        // A large finite negative rather than −∞ or f32::MIN: stays finite in any dtype.
        let bias = ((mask.to_dtype(scores.dtype())? - 1.0)? * 1e4)?.reshape((b, 1, 1, t))?;
        let probs = candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let attended = self.layer_norm(&(self.linear(&ctx, "attention.output.dense")? + x)?, "attention.output.LayerNorm")?;
        let inner = self.linear(&attended, "intermediate.dense")?.gelu_erf()?;
        self.layer_norm(&(self.linear(&inner, "output.dense")? + attended)?, "output.LayerNorm")
    }
}

/// Mean of `(b, t, h)` states over a `(b, t)` mask → `(b, h)`.
pub fn masked_mean(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(states.dtype())?.unsqueeze(2)?;
    Ok(states.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?)
}

/// Tokenizes a (request, answer) pair as `[CLS] prompt [SEP] response [SEP]` (segment ids 0
/// then 1), dropping request tokens from its start, then answer tokens from its start,
/// beyond `max_tokens`.
pub fn encode_pair(encoder: &SentenceEncoder, prompt: &str, response: &str, max_tokens: usize) -> Result<Encoded> {
    let enc = encoder
        .tokenizer()
        .encode((prompt, response), true)
        .map_err(|e| ModelError::Format(format!("tokenizer: {e}")))?;
    let seq = enc.get_sequence_ids();
    let special = enc.get_special_tokens_mask();
    let content = |want: usize| (0..enc.len()).filter(|&i| special[i] == 0 && seq[i] == Some(want)).collect::<Vec<_>>();
    let limit = max_tokens.min(encoder.max_position_embeddings());
    let keep = crate::encoder::keep_mask(enc.len(), limit, content(0).into_iter().chain(content(1)))
        .ok_or_else(|| ModelError::Unsupported(format!("max_tokens {max_tokens} leaves no room for the special tokens")))?;
    Ok(SentenceEncoder::select(enc.get_ids(), enc.get_type_ids(), &keep))
}

/// The comply factor as a model: the frozen bottom of the trunk, the tuned layer and the
/// linear classifier over the masked mean of its states.
#[derive(Debug)]
pub struct PairComply {
    bottom: SentenceEncoder,
    layer: BertLayer,
    weight: Tensor,
    bias: Tensor,
}

impl PairComply {
    /// From the trunk's directory (its first `head.comply_layers` layers are loaded) and a
    /// head's tuned layer and classifier, on `device`.
    pub fn load(trunk_dir: &Path, head: &CrossHead, device: &Device) -> Result<Self> {
        let bottom = SentenceEncoder::load_layers(trunk_dir, head.comply_layers, device)?;
        let layer = head.layer_on(device, bottom.attention_heads(), bottom.layer_norm_eps())?;
        let weight = Tensor::from_vec(head.comply.weight.clone(), (head.comply.weight.len(), 1), device)?;
        let bias = Tensor::new(&[head.comply.bias], device)?;
        Ok(Self { bottom, layer, weight, bias })
    }

    /// The encoder whose tokenizer and bottom layers this factor reads.
    pub fn bottom(&self) -> &SentenceEncoder {
        &self.bottom
    }

    /// The comply logits of already encoded pairs (see [`encode_pair`]), in input order.
    pub fn logits(&self, pairs: &[Encoded]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; pairs.len()];
        for (idx, states, mask) in self.bottom.hidden_states(pairs)? {
            let pooled = masked_mean(&self.layer.forward(&states, &mask)?, &mask)?;
            let logits = pooled.matmul(&self.weight)?.broadcast_add(&self.bias)?.flatten_all()?.to_vec1::<f32>()?;
            for (i, l) in idx.into_iter().zip(logits) {
                out[i] = l;
            }
        }
        Ok(out)
    }
}

/// The cross-encoder cost head of the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossHead {
    /// `harm(prompt)`: a logistic factor over the request's sentence embedding.
    pub harm: Factor,
    /// The comply classifier over the tuned layer's pooled states: `weight` (trunk_dim
    /// values) and `bias`; its `layout` is empty (it reads the pair, not segments).
    pub comply: Factor,
    /// Frozen bottom layers of the trunk under the tuned one.
    pub comply_layers: usize,
    /// The tuned layer's [`LAYER_TENSORS`], f32 on the CPU.
    pub layer: HashMap<String, Vec<f32>>,
    /// The shape of each layer tensor.
    pub layer_shapes: HashMap<String, Vec<usize>>,
    /// Trunk, embedding options, `threshold` (= `τ`) and provenance; `input_layout` is the
    /// harm factor's segments.
    pub meta: HeadMeta,
}

impl CrossHead {
    /// The head around a tuned [`BertLayer`] (its tensors are copied to the CPU in f32).
    pub fn from_layer(harm: Factor, comply: Factor, comply_layers: usize, layer: &BertLayer, meta: HeadMeta) -> Result<Self> {
        let (mut values, mut shapes) = (HashMap::new(), HashMap::new());
        for (name, t) in layer.tensors() {
            values.insert(name.clone(), t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            shapes.insert(name.clone(), t.dims().to_vec());
        }
        let head = Self { harm, comply, comply_layers, layer: values, layer_shapes: shapes, meta };
        head.validate()?;
        Ok(head)
    }

    /// The tuned layer as candle tensors on `device`.
    pub fn layer_on(&self, device: &Device, heads: usize, eps: f64) -> Result<BertLayer> {
        let mut t = HashMap::new();
        for (name, v) in &self.layer {
            t.insert(name.clone(), Tensor::from_vec(v.clone(), self.layer_shapes[name].as_slice(), device)?);
        }
        BertLayer::new(t, heads, eps)
    }

    /// The calibrated score from the two factor logits: `logit(σ(h)σ(c)) − logit(τ)`.
    pub fn combine(&self, harm_logit: f32, comply_logit: f32) -> f32 {
        product_logit(harm_logit, comply_logit) - logit(self.meta.threshold)
    }

    /// The harm factor's logit from the request's embedding.
    pub fn harm_logit(&self, prompt_embedding: &[f32]) -> f32 {
        self.harm.logit(&self.harm.features(&|_| prompt_embedding))
    }

    /// Human-readable description of the input, for `ScorerInfo::text_template`.
    pub fn describe_input(&self) -> String {
        format!(
            "σ(harm[{}]) · σ(comply[{} frozen + 1 tuned layer over [CLS] {{prompt}} [SEP] {{response}} [SEP]]) over encode({{prompt}})",
            format_features(&self.harm.layout),
            self.comply_layers
        )
    }

    /// Checks shapes, values and the threshold; errors name the key or tensor.
    pub fn validate(&self) -> Result<()> {
        let dim = self.meta.trunk_dim;
        if self.harm.layout != [Feature::Embed(Segment::Prompt)] || self.meta.input_layout != [Segment::Prompt] {
            return Err(ModelError::Format(
                "head metadata keys \"harm_layout\"/\"input_layout\": the cross-encoder head's harm factor reads \"prompt\"".into(),
            ));
        }
        for (name, f) in [("harm", &self.harm), ("comply", &self.comply)] {
            if f.weight.len() != dim {
                return Err(ModelError::Format(format!(
                    "head tensor \"{name}.weight\" has {} values, but trunk_dim is {dim}",
                    f.weight.len()
                )));
            }
            if !f.bias.is_finite() || f.weight.iter().any(|w| !w.is_finite()) {
                return Err(ModelError::Format(format!("head tensors \"{name}.weight\"/\"{name}.bias\" hold non-finite values")));
            }
        }
        if !self.comply.layout.is_empty() {
            return Err(ModelError::Format("the comply classifier reads the pair, not segments: its layout must be empty".into()));
        }
        if self.comply_layers == 0 {
            return Err(ModelError::Format("head metadata key \"comply_layers\": must be at least 1".into()));
        }
        let intermediate = self.layer_shapes.get("intermediate.dense.bias").and_then(|s| s.first().copied()).unwrap_or(0);
        for name in LAYER_TENSORS {
            let key = format!("comply.layer.{name}");
            let (Some(v), Some(shape)) = (self.layer.get(*name), self.layer_shapes.get(*name)) else {
                return Err(ModelError::Format(format!("head has no tensor {key:?}")));
            };
            let want = layer_shape(name, dim, intermediate);
            if *shape != want || v.len() != want.iter().product::<usize>() {
                return Err(ModelError::Format(format!("head tensor {key:?} has shape {shape:?}, expected {want:?}")));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ModelError::Format(format!("head tensor {key:?} holds non-finite values")));
            }
        }
        if self.layer.len() != LAYER_TENSORS.len() {
            return Err(ModelError::Format("head holds comply.layer tensors that are not part of a BERT layer".into()));
        }
        let t = self.meta.threshold;
        if !(t > 0.0 && t < 1.0) {
            return Err(ModelError::Format(format!("head metadata key \"threshold\": {t} is not a probability in (0, 1)")));
        }
        Ok(())
    }

    /// Writes the head file.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let bytes = |v: &[f32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
            ("harm.weight".into(), vec![1, self.harm.weight.len()], bytes(&self.harm.weight)),
            ("harm.bias".into(), vec![1], bytes(&[self.harm.bias])),
            ("comply.weight".into(), vec![1, self.comply.weight.len()], bytes(&self.comply.weight)),
            ("comply.bias".into(), vec![1], bytes(&[self.comply.bias])),
        ];
        for name in LAYER_TENSORS {
            owned.push((format!("comply.layer.{name}"), self.layer_shapes[*name].clone(), bytes(&self.layer[*name])));
        }
        let fmt = |e: safetensors::SafeTensorError| ModelError::Format(format!("{}: {e}", path.display()));
        let views = owned
            .iter()
            .map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.clone(), b).map_err(fmt)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut meta = self.meta.to_map();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("harm_layout".into(), format_features(&self.harm.layout));
        meta.insert("comply_layers".into(), self.comply_layers.to_string());
        safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
    }

    /// Parses a cross-encoder head file held in memory; errors name the key or tensor.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(format!("not a safetensors file: {e}")))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format(format!("not a safetensors file: {e}")))?;
        let map: &HashMap<String, String> = header
            .metadata()
            .as_ref()
            .ok_or_else(|| ModelError::Format("no __metadata__: not an InferenceGuard head file".into()))?;
        if map.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(ModelError::Format(format!("head metadata key \"format\": expected {FORMAT:?}")));
        }
        let meta = HeadMeta::from_map(map)?;
        let get = |key: &str| map.get(key).ok_or_else(|| ModelError::Format(format!("head metadata has no key {key:?}")));
        let harm_layout =
            parse_features(get("harm_layout")?).map_err(|e| ModelError::Format(format!("head metadata key \"harm_layout\": {e}")))?;
        let comply_layers = get("comply_layers")?
            .trim()
            .parse::<usize>()
            .map_err(|_| ModelError::Format("head metadata key \"comply_layers\": not a non-negative integer".into()))?;
        let read = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = st.tensor(name).map_err(|_| ModelError::Format(format!("head has no tensor {name:?}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(ModelError::Format(format!("head tensor {name:?} is {:?}, expected F32", t.dtype())));
            }
            let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Ok((v, t.shape().to_vec()))
        };
        let scalar = |name: &str| -> Result<f32> {
            let (v, _) = read(name)?;
            match v.as_slice() {
                [b] => Ok(*b),
                _ => Err(ModelError::Format(format!("head tensor {name:?} has {} values, expected 1", v.len()))),
            }
        };
        let (mut layer, mut layer_shapes) = (HashMap::new(), HashMap::new());
        for name in LAYER_TENSORS {
            let (v, s) = read(&format!("comply.layer.{name}"))?;
            layer.insert(name.to_string(), v);
            layer_shapes.insert(name.to_string(), s);
        }
        if let Some(extra) = st.names().into_iter().find(|n| n.starts_with("comply.layer.") && !LAYER_TENSORS.contains(&&n["comply.layer.".len()..])) {
            return Err(ModelError::Format(format!("head tensor {extra:?} is not part of a BERT layer")));
        }
        let head = Self {
            harm: Factor { layout: harm_layout, weight: read("harm.weight")?.0, bias: scalar("harm.bias")? },
            comply: Factor { layout: Vec::new(), weight: read("comply.weight")?.0, bias: scalar("comply.bias")? },
            comply_layers,
            layer,
            layer_shapes,
            meta,
        };
        head.validate()?;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use ig_core::scorer::ScoreRole;

    use super::*;
    use crate::encoder::Pooling;

    fn random_layer(hidden: usize, intermediate: usize, seed: u64) -> HashMap<String, Tensor> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
        };
        LAYER_TENSORS
            .iter()
            .map(|n| {
                let shape = layer_shape(n, hidden, intermediate);
                let v: Vec<f32> = (0..shape.iter().product()).map(|_| next()).collect();
                let v = if n.ends_with("LayerNorm.weight") { v.iter().map(|x| 1.0 + x).collect() } else { v };
                (n.to_string(), Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap())
            })
            .collect()
    }

    fn head(hidden: usize) -> CrossHead {
        let layer = BertLayer::new(random_layer(hidden, 2 * hidden, 3), 2, 1e-12).unwrap();
        CrossHead::from_layer(
            Factor { layout: vec![Feature::Embed(Segment::Prompt)], weight: vec![0.5; hidden], bias: -1.0 },
            Factor { layout: Vec::new(), weight: vec![0.25; hidden], bias: 0.5 },
            5,
            &layer,
            HeadMeta {
                role: ScoreRole::Cost,
                trunk: "all-MiniLM-L6-v2".into(),
                trunk_dim: hidden,
                pooling: Pooling::Mean,
                normalize: true,
                max_tokens: 256,
                input_layout: vec![Segment::Prompt],
                threshold: 0.3,
                provenance: serde_json::json!({"test": true}),
            },
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_errors_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.safetensors");
        let h = head(4);
        h.save(&path).unwrap();
        assert_eq!(CrossHead::from_bytes(&std::fs::read(&path).unwrap()).unwrap(), h);
        let mut bad = head(4);
        bad.layer.get_mut("output.dense.weight").unwrap().pop();
        assert!(bad.save(&path).unwrap_err().to_string().contains("comply.layer.output.dense.weight"));
        let mut bad = head(4);
        bad.layer.remove("attention.self.key.bias");
        assert!(bad.save(&path).unwrap_err().to_string().contains("comply.layer.attention.self.key.bias"));
        let mut bad = head(4);
        bad.comply.weight.push(1.0);
        assert!(bad.save(&path).unwrap_err().to_string().contains("\"comply.weight\""));
        let mut bad = head(4);
        bad.meta.threshold = 0.0;
        assert!(bad.save(&path).unwrap_err().to_string().contains("\"threshold\""));
    }

    /// The layer written with plain ops computes what candle-nn's fused layer norm and
    /// softmax kernels give, on random weights (the MiniLM check is in tests/scorers.rs).
    #[test]
    fn the_differentiable_layer_matches_a_direct_computation() {
        let (hidden, heads) = (4, 2);
        let t = random_layer(hidden, 8, 7);
        let layer = BertLayer::new(t.clone(), heads, 1e-12).unwrap();
        let x = Tensor::from_vec((0..2 * 3 * hidden).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), (2, 3, hidden), &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &Device::Cpu).unwrap();
        let y = layer.forward(&x, &mask).unwrap();
        // Reference with candle-nn's fused kernels.
        let lin = |n: &str| candle_nn::Linear::new(t[&format!("{n}.weight")].clone(), Some(t[&format!("{n}.bias")].clone()));
        use candle_core::Module;
        let ln = |n: &str| candle_nn::LayerNorm::new(t[&format!("{n}.weight")].clone(), t[&format!("{n}.bias")].clone(), 1e-12);
        let split = |y: Tensor| y.reshape((2, 3, heads, 2)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = split(lin("attention.self.query").forward(&x).unwrap());
        let k = split(lin("attention.self.key").forward(&x).unwrap());
        let v = split(lin("attention.self.value").forward(&x).unwrap());
        let s = (q.matmul(&k.t().unwrap()).unwrap() / 2f64.sqrt()).unwrap();
        let bias = Tensor::new(&[[0f32, 0., 0.], [0., 0., -1e4]], &Device::Cpu).unwrap().reshape((2, 1, 1, 3)).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&bias).unwrap()).unwrap();
        let ctx = p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((2, 3, hidden)).unwrap();
        let a = ln("attention.output.LayerNorm").forward(&(lin("attention.output.dense").forward(&ctx).unwrap() + &x).unwrap()).unwrap();
        let i = lin("intermediate.dense").forward(&a).unwrap().gelu_erf().unwrap();
        let want = ln("output.LayerNorm").forward(&(lin("output.dense").forward(&i).unwrap() + &a).unwrap()).unwrap();
        let diff = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn gradients_reach_every_layer_tensor() {
        let t = random_layer(4, 8, 11);
        let vars: HashMap<String, Var> = t.iter().map(|(n, x)| (n.clone(), Var::from_tensor(x).unwrap())).collect();
        let layer = BertLayer::new(vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect(), 2, 1e-12).unwrap();
        let x = Tensor::from_vec((0..24).map(|i| (i as f32 * 0.21).cos()).collect::<Vec<_>>(), (2, 3, 4), &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1.], [1., 0., 0.]], &Device::Cpu).unwrap();
        let loss = masked_mean(&layer.forward(&x, &mask).unwrap(), &mask).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (n, v) in &vars {
            let g = grads.get(v).unwrap_or_else(|| panic!("no gradient for {n}"));
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "zero gradient for {n}");
        }
    }
}
