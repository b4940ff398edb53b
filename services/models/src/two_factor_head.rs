//! A two-factor cost head: `P(unsafe) = P(harmful request) · P(the answer goes along with it)`.
//!
//! A linear head over `embed(response) ++ embed(prompt)` adds a prompt term to a response
//! term, so it cannot say "unsafe only when the request is harmful **and** the answer
//! complies": a search optimising against it finds answers whose response term is low
//! whatever they say. This head multiplies two logistic factors instead:
//!
//! - `harm(prompt) = σ(w_h · f_h + b_h)`: is the request harmful?
//! - `comply(prompt, response) = σ(w_c · f_c + b_c)`: does the answer comply, or start to
//!   (instructions, "Sure, here is", a plan), rather than refuse, deflect or ramble?
//!
//! A refusal is safe whatever the request; a helpful answer to a benign request is safe
//! because `harm` is low. The score is the log-odds of the product, shifted by the
//! calibrated threshold `τ` (a probability): `score = logit(harm · comply) − logit(τ)`,
//! so `score > 0` means unsafe, as for every cost model of the mesh.
//!
//! The file is safetensors like [`crate::score_head`], with `format =`
//! [`FORMAT`], the same metadata keys (`input_layout` lists the texts embedded,
//! `threshold` is `τ`), plus `harm_layout` and `comply_layout`, and four f32 tensors
//! `harm.weight [1, d_h]`, `harm.bias [1]`, `comply.weight [1, d_c]`, `comply.bias [1]`.
//! A layout is comma-separated [`Feature`]s over the separately embedded segments:
//! `prompt`, `response`, `prompt*response` (element-wise product: "does the answer go where
//! the request points?") and `|prompt-response|`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::score_head::{HeadMeta, Segment};
use crate::{ModelError, Result};

/// The value of the `format` metadata key of a two-factor head file.
pub const FORMAT: &str = "inferenceguard.score_head.two_factor.v1";

/// One block of a factor's features, built from segment embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// A segment's embedding.
    Embed(Segment),
    /// The element-wise product of two segments' embeddings.
    Product(Segment, Segment),
    /// The element-wise absolute difference of two segments' embeddings.
    AbsDiff(Segment, Segment),
}

impl Feature {
    /// The segments this feature reads.
    pub fn segments(self) -> Vec<Segment> {
        match self {
            Self::Embed(s) => vec![s],
            Self::Product(a, b) | Self::AbsDiff(a, b) => vec![a, b],
        }
    }

    /// Appends this feature's values, given each segment's embedding.
    pub fn extend<'e>(self, embedding: &dyn Fn(Segment) -> &'e [f32], out: &mut Vec<f32>) {
        match self {
            Self::Embed(s) => out.extend_from_slice(embedding(s)),
            Self::Product(a, b) => out.extend(embedding(a).iter().zip(embedding(b)).map(|(x, y)| x * y)),
            Self::AbsDiff(a, b) => out.extend(embedding(a).iter().zip(embedding(b)).map(|(x, y)| (x - y).abs())),
        }
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embed(s) => write!(f, "{s}"),
            Self::Product(a, b) => write!(f, "{a}*{b}"),
            Self::AbsDiff(a, b) => write!(f, "|{a}-{b}|"),
        }
    }
}

impl FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let pair = |inner: &str, sep: char| -> std::result::Result<(Segment, Segment), String> {
            let (a, b) = inner.split_once(sep).ok_or_else(|| format!("feature {s:?}: expected two segments"))?;
            Ok((a.parse()?, b.parse()?))
        };
        if let Some(inner) = s.strip_prefix('|').and_then(|r| r.strip_suffix('|')) {
            let (a, b) = pair(inner, '-')?;
            Ok(Self::AbsDiff(a, b))
        } else if s.contains('*') {
            let (a, b) = pair(s, '*')?;
            Ok(Self::Product(a, b))
        } else {
            Ok(Self::Embed(s.parse()?))
        }
    }
}

/// Parses a factor layout: comma-separated [`Feature`]s.
pub fn parse_features(s: &str) -> std::result::Result<Vec<Feature>, String> {
    if s.trim().is_empty() {
        return Err("empty layout".into());
    }
    s.split(',').map(Feature::from_str).collect()
}

/// Writes a factor layout the way the metadata stores it.
pub fn format_features(layout: &[Feature]) -> String {
    layout.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// One logistic factor: `σ(weight · features + bias)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    /// The features it reads, in order.
    pub layout: Vec<Feature>,
    /// One weight per feature value.
    pub weight: Vec<f32>,
    /// The bias.
    pub bias: f32,
}

impl Factor {
    /// The features of one item, given its segment embeddings.
    pub fn features<'e>(&self, embedding: &dyn Fn(Segment) -> &'e [f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.weight.len());
        for f in &self.layout {
            f.extend(embedding, &mut out);
        }
        out
    }

    /// `weight · features + bias`.
    pub fn logit(&self, features: &[f32]) -> f32 {
        self.weight.iter().zip(features).map(|(w, x)| w * x).sum::<f32>() + self.bias
    }
}

/// `ln σ(x)`, without overflow for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// `logit(σ(a) · σ(b))`, computed in log space: both factors near 1 must not round to +∞.
pub fn product_logit(a: f32, b: f32) -> f32 {
    // ln p ≤ −1e-12 keeps ln(1 − p) finite when both factors saturate.
    let log_p = (log_sigmoid(a as f64) + log_sigmoid(b as f64)).min(-1e-12);
    (log_p - (-log_p.exp_m1()).ln()) as f32
}

/// `logit(p)` of a probability in (0, 1).
pub fn logit(p: f32) -> f32 {
    let p = p as f64;
    (p.ln() - (1.0 - p).ln()) as f32
}

/// The two-factor cost head of the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct TwoFactorHead {
    /// `harm(prompt)`.
    pub harm: Factor,
    /// `comply(prompt, response)`.
    pub comply: Factor,
    /// Trunk, embedding options, `threshold` (= `τ`, a probability) and provenance.
    /// `input_layout` lists the segments embedded.
    pub meta: HeadMeta,
}

impl TwoFactorHead {
    /// The segments to embed, in a fixed order (the order of `meta.input_layout`).
    pub fn segments(&self) -> &[Segment] {
        &self.meta.input_layout
    }

    /// The distinct segments the two factors read, in first-use order.
    pub fn segments_of(harm: &[Feature], comply: &[Feature]) -> Vec<Segment> {
        let mut out = Vec::new();
        for s in harm.iter().chain(comply).flat_map(|f| f.segments()) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// `(harm logit, comply logit)` of one item, given its segment embeddings.
    pub fn factor_logits<'e>(&self, embedding: &dyn Fn(Segment) -> &'e [f32]) -> (f32, f32) {
        (self.harm.logit(&self.harm.features(embedding)), self.comply.logit(&self.comply.features(embedding)))
    }

    /// The calibrated score from the two factor logits: `logit(σ(h)σ(c)) − logit(τ)`.
    pub fn combine(&self, harm_logit: f32, comply_logit: f32) -> f32 {
        product_logit(harm_logit, comply_logit) - logit(self.meta.threshold)
    }

    /// The score of one item, given its segment embeddings (`> 0` = unsafe).
    pub fn score<'e>(&self, embedding: &dyn Fn(Segment) -> &'e [f32]) -> f32 {
        let (h, c) = self.factor_logits(embedding);
        self.combine(h, c)
    }

    /// Human-readable description of the input, for `ScorerInfo::text_template`.
    pub fn describe_input(&self) -> String {
        format!(
            "σ(harm[{}]) · σ(comply[{}]) over encode({{prompt}}), encode({{response}})",
            format_features(&self.harm.layout),
            format_features(&self.comply.layout)
        )
    }

    /// Checks shapes, values and the threshold.
    pub fn validate(&self) -> Result<()> {
        let dim = self.meta.trunk_dim;
        for (name, f) in [("harm", &self.harm), ("comply", &self.comply)] {
            if f.layout.is_empty() {
                return Err(ModelError::Format(format!("head metadata key \"{name}_layout\": no features")));
            }
            let want = dim * f.layout.len();
            if f.weight.len() != want {
                return Err(ModelError::Format(format!(
                    "head tensor \"{name}.weight\" has {} values, but trunk_dim {dim} x {} features of {name}_layout = {want}",
                    f.weight.len(),
                    f.layout.len()
                )));
            }
            if !f.bias.is_finite() || f.weight.iter().any(|w| !w.is_finite()) {
                return Err(ModelError::Format(format!("head tensors \"{name}.weight\"/\"{name}.bias\" hold non-finite values")));
            }
        }
        let t = self.meta.threshold;
        if !(t > 0.0 && t < 1.0) {
            return Err(ModelError::Format(format!("head metadata key \"threshold\": {t} is not a probability in (0, 1)")));
        }
        let used = Self::segments_of(&self.harm.layout, &self.comply.layout);
        if used.iter().any(|s| !self.meta.input_layout.contains(s)) {
            return Err(ModelError::Format(format!(
                "head metadata key \"input_layout\": {:?} does not list every segment the factors read",
                self.meta.input_layout
            )));
        }
        Ok(())
    }

    /// Writes the head file (atomically enough for a training run: safetensors writes then
    /// the caller renames nothing; the file is complete when this returns).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let bytes = |v: &[f32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let (hw, hb, cw, cb) =
            (bytes(&self.harm.weight), bytes(&[self.harm.bias]), bytes(&self.comply.weight), bytes(&[self.comply.bias]));
        let fmt = |e: safetensors::SafeTensorError| ModelError::Format(format!("{}: {e}", path.display()));
        let tensors = [
            ("harm.weight", TensorView::new(Dtype::F32, vec![1, self.harm.weight.len()], &hw).map_err(fmt)?),
            ("harm.bias", TensorView::new(Dtype::F32, vec![1], &hb).map_err(fmt)?),
            ("comply.weight", TensorView::new(Dtype::F32, vec![1, self.comply.weight.len()], &cw).map_err(fmt)?),
            ("comply.bias", TensorView::new(Dtype::F32, vec![1], &cb).map_err(fmt)?),
        ];
        let mut meta = self.meta.to_map();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("harm_layout".into(), format_features(&self.harm.layout));
        meta.insert("comply_layout".into(), format_features(&self.comply.layout));
        safetensors::serialize_to_file(tensors, Some(meta), path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
    }

    /// Parses a two-factor head file held in memory; errors name the key or tensor.
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
        let layout = |key: &str| -> Result<Vec<Feature>> {
            let v = map.get(key).ok_or_else(|| ModelError::Format(format!("head metadata has no key {key:?}")))?;
            parse_features(v).map_err(|e| ModelError::Format(format!("head metadata key {key:?}: {e}")))
        };
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| ModelError::Format(format!("head has no tensor {name:?}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(ModelError::Format(format!("head tensor {name:?} is {:?}, expected F32", t.dtype())));
            }
            Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let factor = |name: &str| -> Result<Factor> {
            let bias = read(&format!("{name}.bias"))?;
            if bias.len() != 1 {
                return Err(ModelError::Format(format!("head tensor \"{name}.bias\" has {} values, expected 1", bias.len())));
            }
            Ok(Factor { layout: layout(&format!("{name}_layout"))?, weight: read(&format!("{name}.weight"))?, bias: bias[0] })
        };
        let head = Self { harm: factor("harm")?, comply: factor("comply")?, meta };
        head.validate()?;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use ig_core::scorer::ScoreRole;

    use super::*;
    use crate::encoder::Pooling;

    fn head() -> TwoFactorHead {
        let dim = 2;
        TwoFactorHead {
            harm: Factor { layout: vec![Feature::Embed(Segment::Prompt)], weight: vec![4.0, 0.0], bias: -2.0 },
            comply: Factor {
                layout: vec![Feature::Embed(Segment::Response), Feature::Product(Segment::Prompt, Segment::Response)],
                weight: vec![0.0, 4.0, 0.0, 0.0],
                bias: -2.0,
            },
            meta: HeadMeta {
                role: ScoreRole::Cost,
                trunk: "all-MiniLM-L6-v2".into(),
                trunk_dim: dim,
                pooling: Pooling::Mean,
                normalize: true,
                max_tokens: 256,
                input_layout: vec![Segment::Prompt, Segment::Response],
                threshold: 0.5,
                provenance: serde_json::json!({"test": true}),
            },
        }
    }

    #[test]
    fn unsafe_only_when_the_request_is_harmful_and_the_answer_complies() {
        let h = head();
        // Dimension 0 of the prompt = "harmful"; dimension 1 of the response = "complies".
        let score = |p: [f32; 2], r: [f32; 2]| {
            h.score(&|s| match s {
                Segment::Prompt => &p[..],
                _ => &r[..],
            })
        };
        // Each call needs its own arrays to borrow; the closure above copies them in.
        let (harmful, benign, complies, refuses) = ([1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]);
        assert!(score(harmful, complies) > 0.0);
        assert!(score(harmful, refuses) < 0.0);
        assert!(score(benign, complies) < 0.0);
        assert!(score(benign, refuses) < score(benign, complies));
        // logit(σ(2)·σ(2)) − logit(0.5) = logit(0.7758...)
        let p = (1.0 / (1.0 + (-2.0f64).exp())).powi(2);
        assert!((score(harmful, complies) as f64 - (p / (1.0 - p)).ln()).abs() < 1e-5);
    }

    #[test]
    fn the_product_logit_is_finite_when_both_factors_saturate() {
        assert!(product_logit(80.0, 80.0).is_finite());
        assert!(product_logit(-80.0, -80.0).is_finite());
        assert!((product_logit(0.0, 60.0) - 0.0).abs() < 1e-5, "σ(0) · 1 = 0.5");
        assert!((logit(0.5)).abs() < 1e-7);
    }

    #[test]
    fn features_parse_and_print() {
        let l = parse_features("response, prompt*response,|prompt-response|").unwrap();
        assert_eq!(
            l,
            vec![
                Feature::Embed(Segment::Response),
                Feature::Product(Segment::Prompt, Segment::Response),
                Feature::AbsDiff(Segment::Prompt, Segment::Response)
            ]
        );
        assert_eq!(format_features(&l), "response,prompt*response,|prompt-response|");
        assert!(parse_features("prompt*").is_err());
        assert!(parse_features("").is_err());
        let mut out = Vec::new();
        let (p, r) = ([1.0f32, -2.0], [3.0f32, 1.0]);
        for f in &l {
            f.extend(&|s| if s == Segment::Prompt { &p[..] } else { &r[..] }, &mut out);
        }
        assert_eq!(out, vec![3.0, 1.0, 3.0, -2.0, 2.0, 3.0]);
    }

    #[test]
    fn round_trip_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.safetensors");
        let h = head();
        h.save(&path).unwrap();
        assert_eq!(TwoFactorHead::from_bytes(&std::fs::read(&path).unwrap()).unwrap(), h);
        let mut bad = head();
        bad.meta.threshold = 1.5;
        assert!(bad.save(&path).unwrap_err().to_string().contains("\"threshold\""));
        let mut bad = head();
        bad.comply.weight.pop();
        assert!(bad.save(&path).unwrap_err().to_string().contains("\"comply.weight\""));
        let mut bad = head();
        bad.meta.input_layout = vec![Segment::Prompt];
        assert!(bad.save(&path).unwrap_err().to_string().contains("\"input_layout\""));
    }
}
