//! Our score head file: a linear head over sentence embeddings of a frozen
//! encoder trunk, stored as safetensors with its meaning in the metadata.
//!
//! A head file holds two f32 tensors, `weight` `[1, in_dim]` and `bias` `[1]`,
//! and a safetensors `__metadata__` string map that says how to rebuild the
//! features it was trained on:
//!
//! | key | value |
//! |---|---|
//! | `format` | `inferenceguard.score_head.v1` ([`FORMAT`]) |
//! | `role` | `cost` or `reward` |
//! | `trunk` | the encoder it was trained over, e.g. `all-MiniLM-L6-v2` |
//! | `trunk_dim` | width of one embedding, e.g. `384` |
//! | `pooling` | `mean` or `cls` |
//! | `normalize` | `true` or `false` (L2 normalisation of each embedding) |
//! | `max_tokens` | tokens per embedded text, special tokens included, e.g. `256` |
//! | `input_layout` | comma-separated segments, each `response`, `prompt` or `prompt_response` |
//! | `threshold` | the decision threshold already folded into `bias` (informational) |
//! | `provenance` | a JSON document: data, command, metrics |
//!
//! Each segment of `input_layout` is embedded *separately* and the
//! embeddings are concatenated in order, so `in_dim = trunk_dim x segments`.
//! (The probe in `assets.md` found that embedding the response on its own
//! separates unsafe from safe answers far better than embedding prompt and
//! response as one text; a layout lets a head have both.) The score is
//! `weight . features + bias`; because the threshold is folded into the bias,
//! `score > 0` means the positive class (unsafe for a cost head).
//!
//! candle's own safetensors writer cannot write `__metadata__`, so this
//! module reads and writes the file with the `safetensors` crate directly.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use ig_core::scorer::ScoreRole;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::encoder::{EmbedOptions, Pooling, SentenceEncoder};
use crate::cross_head::CrossHead;
use crate::two_factor_head::TwoFactorHead;
use crate::{ModelError, Result};

/// The value of the `format` metadata key of a head file.
pub const FORMAT: &str = "inferenceguard.score_head.v1";

/// Every `format` a head file of ours may carry: the linear head, the two-factor head
/// ([`crate::two_factor_head`]) and the cross-encoder head ([`crate::cross_head`]).
pub const HEAD_FORMATS: &[&str] = &[FORMAT, crate::two_factor_head::FORMAT, crate::cross_head::FORMAT];

/// Separator between prompt and response in a [`Segment::PromptResponse`] text.
pub const PROMPT_RESPONSE_SEPARATOR: &str = "\n\n";

/// One text a head embeds; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// The response on its own.
    Response,
    /// The prompt on its own.
    Prompt,
    /// Prompt, [`PROMPT_RESPONSE_SEPARATOR`], response, as one text.
    PromptResponse,
}

impl Segment {
    /// The name used in `input_layout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::Prompt => "prompt",
            Self::PromptResponse => "prompt_response",
        }
    }

    /// The text this segment embeds for one (prompt, response) pair. Training
    /// and serving both build their texts here, so they cannot drift apart.
    pub fn text(self, prompt: &str, response: &str) -> String {
        match self {
            Self::Response => response.to_string(),
            Self::Prompt => prompt.to_string(),
            Self::PromptResponse => format!("{prompt}{PROMPT_RESPONSE_SEPARATOR}{response}"),
        }
    }
}

impl FromStr for Segment {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "response" => Ok(Self::Response),
            "prompt" => Ok(Self::Prompt),
            "prompt_response" => Ok(Self::PromptResponse),
            other => Err(format!("segment {other:?}: expected response, prompt or prompt_response")),
        }
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses an `input_layout` value: comma-separated [`Segment`] names.
pub fn parse_layout(s: &str) -> std::result::Result<Vec<Segment>, String> {
    if s.trim().is_empty() {
        return Err("empty layout: expected comma-separated response, prompt or prompt_response".into());
    }
    s.split(',').map(Segment::from_str).collect()
}

/// Writes a layout the way `input_layout` stores it.
pub fn format_layout(layout: &[Segment]) -> String {
    layout.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// `"cost"` or `"reward"`, as the metadata and the CLI spell a role.
pub fn role_name(role: ScoreRole) -> &'static str {
    match role {
        ScoreRole::Cost => "cost",
        ScoreRole::Reward => "reward",
    }
}

/// What a head file's metadata says (everything but the weights).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMeta {
    /// Cost (higher is more harmful, > 0 unsafe) or reward (higher is more helpful).
    pub role: ScoreRole,
    /// The trunk the head was trained over, e.g. `all-MiniLM-L6-v2`.
    pub trunk: String,
    /// Width of one trunk embedding.
    pub trunk_dim: usize,
    /// How token states become one embedding.
    pub pooling: Pooling,
    /// Whether each embedding is L2-normalised.
    pub normalize: bool,
    /// Tokens per embedded text, special tokens included.
    pub max_tokens: usize,
    /// The segments embedded separately and concatenated, in order.
    pub input_layout: Vec<Segment>,
    /// The decision threshold that was folded into the bias (informational:
    /// after folding, score > 0 is the positive class).
    pub threshold: f32,
    /// Where the head came from: data, command, metrics (free-form JSON).
    pub provenance: serde_json::Value,
}

impl HeadMeta {
    /// Length of the feature vector: `trunk_dim x segments`.
    pub fn in_dim(&self) -> usize {
        self.trunk_dim * self.input_layout.len()
    }

    /// The embedding options every segment uses.
    pub fn embed_options(&self) -> EmbedOptions {
        EmbedOptions { pooling: self.pooling, normalize: self.normalize, max_tokens: self.max_tokens }
    }

    /// Human-readable description of the input, e.g.
    /// `encode({response}) ; encode({prompt})`, for `ScorerInfo::text_template`
    /// (the proto's notation for models that encode texts separately).
    pub fn describe_input(&self) -> String {
        self.input_layout
            .iter()
            .map(|s| match s {
                Segment::Response => "encode({response})",
                Segment::Prompt => "encode({prompt})",
                Segment::PromptResponse => "encode({prompt}\\n\\n{response})",
            })
            .collect::<Vec<_>>()
            .join(" ; ")
    }

    /// The features of (prompt, response) pairs as this head expects them:
    /// each segment embedded with [`HeadMeta::embed_options`], concatenated.
    /// Over-long texts are cut as [`SentenceEncoder::embed`] cuts them (the
    /// start is dropped). This is what training uses; the scorer computes the
    /// same features but refuses over-long inputs unless asked to truncate.
    pub fn features(&self, encoder: &SentenceEncoder, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        self.check_trunk(encoder)?;
        let opts = self.embed_options();
        let mut out: Vec<Vec<f32>> = (0..pairs.len()).map(|_| Vec::with_capacity(self.in_dim())).collect();
        for seg in &self.input_layout {
            let texts: Vec<String> = pairs.iter().map(|(p, r)| seg.text(p, r)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (row, emb) in out.iter_mut().zip(encoder.embed(&refs, &opts)?) {
                row.extend_from_slice(&emb);
            }
        }
        Ok(out)
    }

    /// Fails unless `encoder` produces embeddings of `trunk_dim` and accepts
    /// `max_tokens` positions.
    pub fn check_trunk(&self, encoder: &SentenceEncoder) -> Result<()> {
        if encoder.dim() != self.trunk_dim {
            return Err(ModelError::Format(format!(
                "the head expects trunk {:?} with {}-d embeddings, but the loaded trunk gives {}-d",
                self.trunk,
                self.trunk_dim,
                encoder.dim()
            )));
        }
        if self.max_tokens > encoder.max_position_embeddings() {
            return Err(ModelError::Format(format!(
                "the head's max_tokens {} exceeds the trunk's {} positions",
                self.max_tokens,
                encoder.max_position_embeddings()
            )));
        }
        Ok(())
    }

    pub(crate) fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("role".into(), role_name(self.role).into());
        m.insert("trunk".into(), self.trunk.clone());
        m.insert("trunk_dim".into(), self.trunk_dim.to_string());
        m.insert("pooling".into(), self.pooling.as_str().into());
        m.insert("normalize".into(), self.normalize.to_string());
        m.insert("max_tokens".into(), self.max_tokens.to_string());
        m.insert("input_layout".into(), format_layout(&self.input_layout));
        m.insert("threshold".into(), self.threshold.to_string());
        m.insert("provenance".into(), self.provenance.to_string());
        m
    }

    /// Reads the metadata map of a head file; errors name the offending key.
    pub fn from_map(m: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| -> Result<&str> {
            m.get(k)
                .map(String::as_str)
                .ok_or_else(|| ModelError::Format(format!("head metadata has no key {k:?}")))
        };
        let bad = |k: &str, why: String| ModelError::Format(format!("head metadata key {k:?}: {why}"));
        let format = get("format")?;
        if !HEAD_FORMATS.contains(&format) {
            return Err(bad("format", format!("{format:?}, expected one of {HEAD_FORMATS:?}")));
        }
        let role = get("role")?.parse::<ScoreRole>().map_err(|e| bad("role", e))?;
        let trunk = get("trunk")?.to_string();
        if trunk.trim().is_empty() {
            return Err(bad("trunk", "empty".into()));
        }
        let positive = |k: &str| -> Result<usize> {
            let v = get(k)?;
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(k, format!("{v:?} is not a positive integer"))),
            }
        };
        let trunk_dim = positive("trunk_dim")?;
        let max_tokens = positive("max_tokens")?;
        let pooling = get("pooling")?.parse::<Pooling>().map_err(|e| bad("pooling", e))?;
        let normalize = match get("normalize")?.trim() {
            "true" => true,
            "false" => false,
            other => return Err(bad("normalize", format!("{other:?}, expected true or false"))),
        };
        let input_layout = parse_layout(get("input_layout")?).map_err(|e| bad("input_layout", e))?;
        let threshold = get("threshold")?;
        let threshold = match threshold.trim().parse::<f32>() {
            Ok(t) if t.is_finite() => t,
            _ => return Err(bad("threshold", format!("{threshold:?} is not a finite number"))),
        };
        let provenance = serde_json::from_str(get("provenance")?)
            .map_err(|e| bad("provenance", format!("not JSON: {e}")))?;
        Ok(Self { role, trunk, trunk_dim, pooling, normalize, max_tokens, input_layout, threshold, provenance })
    }
}

/// A linear head over sentence embeddings: `score = weight . features + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreHead {
    /// `in_dim` weights, one per feature.
    pub weight: Vec<f32>,
    /// The bias, with the decision threshold folded in.
    pub bias: f32,
    /// What the head means and how to build its features.
    pub meta: HeadMeta,
}

impl ScoreHead {
    /// Checks that the weights fit the metadata and are finite.
    pub fn validate(&self) -> Result<()> {
        if self.meta.input_layout.is_empty() {
            return Err(ModelError::Format("head metadata key \"input_layout\": no segments".into()));
        }
        if self.weight.len() != self.meta.in_dim() {
            return Err(ModelError::Format(format!(
                "head tensor \"weight\" has {} values, but trunk_dim {} x {} segments of input_layout = {}",
                self.weight.len(),
                self.meta.trunk_dim,
                self.meta.input_layout.len(),
                self.meta.in_dim()
            )));
        }
        if !self.bias.is_finite() || self.weight.iter().any(|w| !w.is_finite()) {
            return Err(ModelError::Format("head tensors \"weight\"/\"bias\" hold non-finite values".into()));
        }
        Ok(())
    }

    /// Writes the head file (atomically: a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let wbytes: Vec<u8> = self.weight.iter().flat_map(|w| w.to_le_bytes()).collect();
        let bbytes = self.bias.to_le_bytes().to_vec();
        let fmt = |e: safetensors::SafeTensorError| ModelError::Format(format!("{}: {e}", path.display()));
        let weight = TensorView::new(Dtype::F32, vec![1, self.weight.len()], &wbytes).map_err(fmt)?;
        let bias = TensorView::new(Dtype::F32, vec![1], &bbytes).map_err(fmt)?;
        safetensors::serialize_to_file([("weight", weight), ("bias", bias)], Some(self.meta.to_map()), path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
    }

    /// Reads and validates a head file. Errors name the offending metadata
    /// key or tensor.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            ModelError::Format(m) => ModelError::Format(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Whether `path` is a safetensors file whose metadata says it is a head
    /// file of ours, of either kind (only the header is read).
    pub fn is_head_file(path: &Path) -> bool {
        read_header_metadata(path)
            .ok()
            .flatten()
            .is_some_and(|m| m.get("format").is_some_and(|f| HEAD_FORMATS.contains(&f.as_str())))
    }

    /// Parses a head file held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format(format!("not a safetensors file: {e}")))?;
        let map = header
            .metadata()
            .as_ref()
            .ok_or_else(|| ModelError::Format("no __metadata__: not an InferenceGuard head file".into()))?;
        let meta = HeadMeta::from_map(map)?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| ModelError::Format(format!("head has no tensor {name:?}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(ModelError::Format(format!("head tensor {name:?} is {:?}, expected F32", t.dtype())));
            }
            if t.shape() != shape {
                return Err(ModelError::Format(format!(
                    "head tensor {name:?} has shape {:?}, expected {shape:?} (trunk_dim x segments of input_layout)",
                    t.shape()
                )));
            }
            Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let weight = read("weight", &[1, meta.in_dim()])?;
        let bias = read("bias", &[1])?;
        let head = Self { weight, bias: bias[0], meta };
        head.validate()?;
        Ok(head)
    }

    /// The score of one feature vector: `weight . features + bias`.
    ///
    /// # Panics
    /// If `features` does not have `in_dim` values: features come from our
    /// own encoder (checked against the head at load), never from a client.
    pub fn apply(&self, features: &[f32]) -> f32 {
        assert_eq!(features.len(), self.weight.len(), "feature length does not match the head");
        self.weight.iter().zip(features).map(|(w, x)| w * x).sum::<f32>() + self.bias
    }
}

/// A head file of either kind, as the scorer serves it.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadFile {
    /// `weight . features + bias` ([`FORMAT`]).
    Linear(ScoreHead),
    /// `logit(harm · comply) − logit(τ)` ([`crate::two_factor_head::FORMAT`]).
    TwoFactor(TwoFactorHead),
    /// The same with a comply factor that reads the pair ([`crate::cross_head::FORMAT`]).
    Cross(CrossHead),
}

impl HeadFile {
    /// Reads a head file of either kind; errors name the file and the key or tensor.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let format = SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, h)| h.metadata().as_ref().and_then(|m| m.get("format").cloned()));
        let parsed = match format.as_deref() {
            Some(crate::two_factor_head::FORMAT) => TwoFactorHead::from_bytes(&bytes).map(Self::TwoFactor),
            Some(crate::cross_head::FORMAT) => CrossHead::from_bytes(&bytes).map(Self::Cross),
            _ => ScoreHead::from_bytes(&bytes).map(Self::Linear),
        };
        parsed.map_err(|e| match e {
            ModelError::Format(m) => ModelError::Format(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Trunk, embedding options, role, threshold and provenance.
    pub fn meta(&self) -> &HeadMeta {
        match self {
            Self::Linear(h) => &h.meta,
            Self::TwoFactor(h) => &h.meta,
            Self::Cross(h) => &h.meta,
        }
    }

    /// The `format` of the file.
    pub fn format(&self) -> &'static str {
        match self {
            Self::Linear(_) => FORMAT,
            Self::TwoFactor(_) => crate::two_factor_head::FORMAT,
            Self::Cross(_) => crate::cross_head::FORMAT,
        }
    }

    /// The distinct segments to embed for one item, in order.
    pub fn segments(&self) -> Vec<Segment> {
        let mut out: Vec<Segment> = Vec::new();
        for s in &self.meta().input_layout {
            if !out.contains(s) {
                out.push(*s);
            }
        }
        out
    }

    /// The score of one item from the embeddings of [`HeadFile::segments`], in that order,
    /// and, for a cross-encoder head, its pair's comply logit ([`crate::cross_head::PairComply`]).
    pub fn score(&self, embeddings: &[&[f32]], comply_logit: Option<f32>) -> f32 {
        let segments = self.segments();
        let embedding = |s: Segment| -> &[f32] {
            let i = segments.iter().position(|x| *x == s).expect("a segment the head reads");
            embeddings[i]
        };
        match self {
            Self::Linear(h) => {
                let features: Vec<f32> = h.meta.input_layout.iter().flat_map(|s| embedding(*s).iter().copied()).collect();
                h.apply(&features)
            }
            Self::TwoFactor(h) => h.score(&embedding),
            Self::Cross(h) => {
                let comply = comply_logit.expect("the scorer computes the pair's comply logit for a cross-encoder head");
                h.combine(h.harm_logit(embedding(Segment::Prompt)), comply)
            }
        }
    }

    /// Human-readable description of the input, for `ScorerInfo::text_template`.
    pub fn describe_input(&self) -> String {
        match self {
            Self::Linear(h) => h.meta.describe_input(),
            Self::TwoFactor(h) => h.describe_input(),
            Self::Cross(h) => h.describe_input(),
        }
    }
}

/// The JSON header of a safetensors file, reading only the header.
pub(crate) fn read_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let io = |e: std::io::Error| ModelError::Io(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    // safetensors caps headers at 100 MB; refuse to allocate more for a stray file.
    if n > 100_000_000 {
        return Err(ModelError::Format(format!("{}: safetensors header of {n} bytes", path.display())));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    serde_json::from_slice(&header)
        .map_err(|e| ModelError::Format(format!("{}: safetensors header is not JSON: {e}", path.display())))
}

/// The `__metadata__` of a safetensors file, reading only its header.
pub(crate) fn read_header_metadata(path: &Path) -> Result<Option<HashMap<String, String>>> {
    let json = read_header(path)?;
    Ok(json.get("__metadata__").and_then(|m| serde_json::from_value(m.clone()).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> ScoreHead {
        ScoreHead {
            weight: (0..8).map(|i| i as f32 * 0.25 - 1.0).collect(),
            bias: -0.5,
            meta: HeadMeta {
                role: ScoreRole::Cost,
                trunk: "all-MiniLM-L6-v2".into(),
                trunk_dim: 4,
                pooling: Pooling::Mean,
                normalize: true,
                max_tokens: 256,
                input_layout: vec![Segment::Response, Segment::Prompt],
                threshold: 0.3,
                provenance: serde_json::json!({"data": ["pyrit"], "auc": 0.84}),
            },
        }
    }

    fn write_raw(path: &Path, weight: &[f32], shape: Vec<usize>, meta: HashMap<String, String>) {
        let w: Vec<u8> = weight.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = 0f32.to_le_bytes().to_vec();
        let tensors = [
            ("weight", TensorView::new(Dtype::F32, shape, &w).unwrap()),
            ("bias", TensorView::new(Dtype::F32, vec![1], &b).unwrap()),
        ];
        safetensors::serialize_to_file(tensors, Some(meta), path).unwrap();
    }

    #[test]
    fn round_trip_keeps_everything() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ModelError::Io(e.to_string()))?;
        let path = dir.path().join("head.safetensors");
        let h = head();
        h.save(&path)?;
        assert!(ScoreHead::is_head_file(&path));
        let back = ScoreHead::load(&path)?;
        assert_eq!(back, h);
        let x = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        assert!((back.apply(&x) - (-1.0 + 2.0 * 0.75 - 0.5)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        let good = head().meta.to_map();
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("format", Some("something.else"), "\"format\""),
            ("role", Some("judge"), "\"role\""),
            ("trunk_dim", Some("zero"), "\"trunk_dim\""),
            ("pooling", Some("max"), "\"pooling\""),
            ("normalize", Some("yes"), "\"normalize\""),
            ("max_tokens", Some("0"), "\"max_tokens\""),
            ("input_layout", Some("response,answer"), "\"input_layout\""),
            ("threshold", Some("NaN"), "\"threshold\""),
            ("provenance", Some("{not json"), "\"provenance\""),
            ("trunk", None, "\"trunk\""),
        ];
        for (key, value, expect) in cases {
            let mut m = good.clone();
            match value {
                Some(v) => m.insert(key.into(), v.into()),
                None => m.remove(key),
            };
            write_raw(&path, &head().weight, vec![1, 8], m);
            let err = ScoreHead::load(&path).unwrap_err().to_string();
            assert!(err.contains(expect), "{key}: {err}");
        }
    }

    #[test]
    fn inconsistent_dims_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        // 2 segments x 4 = 8 expected; 4 given.
        write_raw(&path, &[0.0; 4], vec![1, 4], head().meta.to_map());
        let err = ScoreHead::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"weight\"") && err.contains("[1, 8]"), "{err}");
        // A plain safetensors file is not a head file.
        safetensors::serialize_to_file([("weight", TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap())], None, &path)
            .unwrap();
        assert!(!ScoreHead::is_head_file(&path));
        assert!(ScoreHead::load(&path).unwrap_err().to_string().contains("__metadata__"));
        // And saving refuses a head whose weights do not fit its layout.
        let mut h = head();
        h.weight.pop();
        assert!(h.save(&path).is_err());
    }

    #[test]
    fn segments_build_texts_and_layouts_parse() {
        assert_eq!(Segment::PromptResponse.text("p", "r"), "p\n\nr");
        assert_eq!(parse_layout("response, prompt").unwrap(), vec![Segment::Response, Segment::Prompt]);
        assert!(parse_layout("").is_err());
        assert_eq!(format_layout(&[Segment::Response, Segment::PromptResponse]), "response,prompt_response");
        assert_eq!(head().meta.describe_input(), "encode({response}) ; encode({prompt})");
    }
}
