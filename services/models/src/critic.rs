//! The critic `V(h, z)`: an MLP over the policy's latent `h` and the safety
//! state `z` (InferenceGuard, Ji et al. 2025, arXiv 2502.01208, "Critic";
//! see `algorithm.md`), with the gradients RECONTROL ascends.
//!
//! # Network
//!
//! ```text
//! x = [ (h - input_mean) / input_std ; z * z_scale ]        (latent_dim + 1)
//! V = fc3(relu(fc2(relu(fc1(x)))))                          (hidden_width, hidden_width, 1)
//! ```
//!
//! `input_mean` / `input_std` standardise each latent component with
//! statistics of the training set (the std floored at [`STD_FLOOR`]): raw LLM
//! latents have a few components hundreds of times larger than the rest,
//! which would otherwise swamp the first layer. They are fixed, not trained,
//! and stored with the weights, so a client always sends raw latents and an
//! unscaled `z`; gradients are with respect to those raw inputs.
//!
//! # File format
//!
//! One safetensors file. Tensors (f32; other float types are converted at
//! load): `fc1.weight` `[hidden, latent_dim + 1]`, `fc1.bias` `[hidden]`,
//! `fc2.weight` `[hidden, hidden]`, `fc2.bias` `[hidden]`, `fc3.weight`
//! `[1, hidden]`, `fc3.bias` `[1]`, `input_mean` and `input_std`
//! `[latent_dim]`. The `__metadata__` map holds `format` =
//! `inferenceguard.critic.v1` ([`FORMAT`]) and, under [`META_KEY`], the JSON
//! of [`CriticMeta`]: ids, sizes, `z_scale`, the objective and the training
//! setting (budget, penalty, multiplier, discount) and free-form provenance.
//! A file whose tensors do not fit its header is refused at load, naming the
//! tensor and the header field.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder};
use ig_core::critic::{CriticBackend, CriticInfo};
use ig_core::policy::WorkControl;
use ig_core::RoleError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

pub use ig_core::critic::{Ascended, CriticGradient, CriticObjective};

use crate::policy::device_name;
use crate::score_head::read_header_metadata;
use crate::{ModelError, Result};

/// The value of the `format` metadata key of a critic file.
pub const FORMAT: &str = "inferenceguard.critic.v1";

/// The metadata key holding the JSON of [`CriticMeta`].
pub const META_KEY: &str = "inferenceguard.critic";

/// Smallest per-component standard deviation the input standardisation
/// divides by (a component constant over the training set stays bounded).
pub const STD_FLOOR: f32 = 1e-3;

/// Names of the trained tensors, in the order the layers apply them.
pub const WEIGHT_NAMES: [&str; 6] = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"];

/// Names of the fixed input-standardisation tensors.
pub const STANDARDIZATION_NAMES: [&str; 2] = ["input_mean", "input_std"];

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// What a critic file's header says: who it is for and how it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticMeta {
    /// Stable identifier of the critic, e.g. `critic-smollm2-135m-minilm-v1`.
    pub model_id: String,
    /// `model_id` of the policy whose latents it reads (PolicyService.Info).
    pub policy_model_id: String,
    /// Length of the latent: the policy's hidden size.
    pub latent_dim: usize,
    /// Width of both hidden layers.
    pub hidden_width: usize,
    /// The network reads `z * z_scale`; finite and > 0.
    pub z_scale: f64,
    /// What the critic predicts.
    pub objective: CriticObjective,
    /// Safety budget `B` of the training rollouts.
    pub safety_budget: f64,
    /// Return of an unsafe response is `-training_penalty` (augmented: > 0; else 0).
    #[serde(default)]
    pub training_penalty: f64,
    /// Multiplier of the cost in the return (Lagrangian; else 0).
    #[serde(default)]
    pub lagrange_lambda: f64,
    /// Discount of the Monte Carlo targets, in (0, 1].
    pub discount: f64,
    /// Free-form JSON object: data, split, command, losses, date, ...
    #[serde(default = "empty_object")]
    pub provenance: serde_json::Value,
}

impl CriticMeta {
    /// Checks every field's documented range; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(ModelError::Format(format!("critic metadata field {field:?}: {why}")));
        if self.model_id.trim().is_empty() {
            return bad("model_id", "empty".into());
        }
        if self.policy_model_id.trim().is_empty() {
            return bad("policy_model_id", "empty (a critic must name the policy whose latents it reads)".into());
        }
        if self.latent_dim == 0 {
            return bad("latent_dim", "must be > 0".into());
        }
        if self.hidden_width == 0 {
            return bad("hidden_width", "must be > 0".into());
        }
        if !(self.z_scale.is_finite() && self.z_scale > 0.0) {
            return bad("z_scale", format!("must be finite and > 0, got {}", self.z_scale));
        }
        if !self.safety_budget.is_finite() {
            return bad("safety_budget", format!("must be finite, got {}", self.safety_budget));
        }
        if !(self.training_penalty.is_finite() && self.training_penalty >= 0.0) {
            return bad("training_penalty", format!("must be finite and >= 0, got {}", self.training_penalty));
        }
        if self.objective == CriticObjective::Augmented && self.training_penalty <= 0.0 {
            return bad("training_penalty", "must be > 0 for the augmented objective".into());
        }
        if !(self.lagrange_lambda.is_finite() && self.lagrange_lambda >= 0.0) {
            return bad("lagrange_lambda", format!("must be finite and >= 0, got {}", self.lagrange_lambda));
        }
        if !(self.discount > 0.0 && self.discount <= 1.0) {
            return bad("discount", format!("must be in (0, 1], got {}", self.discount));
        }
        if !self.provenance.is_object() {
            return bad("provenance", "must be a JSON object".into());
        }
        Ok(())
    }

    fn to_map(&self) -> Result<HashMap<String, String>> {
        let json = serde_json::to_string(self).map_err(|e| ModelError::Format(format!("critic metadata: {e}")))?;
        Ok(HashMap::from([("format".to_string(), FORMAT.to_string()), (META_KEY.to_string(), json)]))
    }

    /// Reads the metadata map of a critic file.
    pub fn from_map(m: &HashMap<String, String>) -> Result<Self> {
        match m.get("format") {
            Some(f) if f == FORMAT => {}
            Some(f) => return Err(ModelError::Format(format!("metadata key \"format\": {f:?}, expected {FORMAT:?}"))),
            None => return Err(ModelError::Format(format!("no metadata key \"format\": not an InferenceGuard critic file ({FORMAT})"))),
        }
        let json = m.get(META_KEY).ok_or_else(|| ModelError::Format(format!("no metadata key {META_KEY:?}")))?;
        let meta: CriticMeta =
            serde_json::from_str(json).map_err(|e| ModelError::Format(format!("metadata key {META_KEY:?}: {e}")))?;
        meta.validate()?;
        Ok(meta)
    }

    /// The metadata of a critic file, reading only its header.
    pub fn read(path: &Path) -> Result<Self> {
        let map = read_header_metadata(path)?
            .ok_or_else(|| ModelError::Format(format!("{}: no __metadata__: not an InferenceGuard critic file", path.display())))?;
        Self::from_map(&map).map_err(|e| in_file(path, e))
    }
}

fn in_file(path: &Path, e: ModelError) -> ModelError {
    match e {
        ModelError::Format(m) => ModelError::Format(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// The critic MLP (see the module doc). Pure candle: no file format, no
/// metadata; [`Critic`] adds those.
#[derive(Debug, Clone)]
pub struct CriticNet {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    mean: Tensor,
    std: Tensor,
    z_scale: f64,
    latent_dim: usize,
    hidden_width: usize,
}

impl CriticNet {
    /// The three layers from `vb` (`fc1`, `fc2`, `fc3`; a `VarMap`-backed
    /// builder creates them for training), with identity standardisation
    /// and `z_scale` 1.
    pub fn new(vb: VarBuilder, latent_dim: usize, hidden_width: usize) -> Result<Self> {
        if latent_dim == 0 || hidden_width == 0 {
            return Err(ModelError::Shape(format!("critic sizes must be > 0, got latent_dim {latent_dim}, hidden_width {hidden_width}")));
        }
        let fc1 = candle_nn::linear(latent_dim + 1, hidden_width, vb.pp("fc1"))?;
        let fc2 = candle_nn::linear(hidden_width, hidden_width, vb.pp("fc2"))?;
        let fc3 = candle_nn::linear(hidden_width, 1, vb.pp("fc3"))?;
        let dtype = fc1.weight().dtype();
        let device = fc1.weight().device().clone();
        let mean = Tensor::zeros(latent_dim, dtype, &device)?;
        let std = Tensor::ones(latent_dim, dtype, &device)?;
        Ok(Self { fc1, fc2, fc3, mean, std, z_scale: 1.0, latent_dim, hidden_width })
    }

    /// [`CriticNet::new`] plus `input_mean` / `input_std` read from `vb`
    /// (a saved critic).
    pub fn load(vb: VarBuilder, latent_dim: usize, hidden_width: usize) -> Result<Self> {
        let mut net = Self::new(vb.clone(), latent_dim, hidden_width)?;
        let mean = vb.get(latent_dim, "input_mean")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let std = vb.get(latent_dim, "input_std")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        net.set_standardization(&mean, &std)?;
        Ok(net)
    }

    /// Sets the fixed input standardisation: `latent_dim` finite means and
    /// standard deviations (floored at [`STD_FLOOR`]).
    pub fn set_standardization(&mut self, mean: &[f32], std: &[f32]) -> Result<()> {
        let n = self.latent_dim;
        if mean.len() != n || std.len() != n {
            return Err(ModelError::Shape(format!(
                "input_mean/input_std: {} and {} values, expected latent_dim {n}",
                mean.len(),
                std.len()
            )));
        }
        if mean.iter().chain(std).any(|v| !v.is_finite()) {
            return Err(ModelError::Format("input_mean/input_std hold non-finite values".into()));
        }
        let std: Vec<f32> = std.iter().map(|s| s.max(STD_FLOOR)).collect();
        let (dtype, device) = (self.dtype(), self.device().clone());
        self.mean = Tensor::from_slice(mean, n, &device)?.to_dtype(dtype)?;
        self.std = Tensor::from_vec(std, n, &device)?.to_dtype(dtype)?;
        Ok(())
    }

    /// The input standardisation: (means, floored standard deviations).
    pub fn standardization(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.mean.to_dtype(DType::F32)?.to_vec1()?, self.std.to_dtype(DType::F32)?.to_vec1()?))
    }

    /// Sets the constant `z` is multiplied by before the first layer.
    pub fn set_z_scale(&mut self, z_scale: f64) {
        self.z_scale = z_scale;
    }

    /// The constant `z` is multiplied by.
    pub fn z_scale(&self) -> f64 {
        self.z_scale
    }

    /// Length of the latent.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// Width of both hidden layers.
    pub fn hidden_width(&self) -> usize {
        self.hidden_width
    }

    /// Data type of the weights (and of the computation).
    pub fn dtype(&self) -> DType {
        self.fc1.weight().dtype()
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.fc1.weight().device()
    }

    /// `V` of each row: `latents` `(n, latent_dim)` raw latents, `z` `(n)`
    /// unscaled safety states (any float dtype: converted to the weights').
    /// Returns `(n)`. Differentiable with respect to both inputs.
    pub fn forward(&self, latents: &Tensor, z: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = self.dtype();
        let h = latents.to_dtype(dtype)?.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let z = (z.to_dtype(dtype)? * self.z_scale)?.unsqueeze(1)?;
        let x = Tensor::cat(&[&h, &z], 1)?;
        let x = self.fc1.forward(&x)?.relu()?;
        let x = self.fc2.forward(&x)?.relu()?;
        self.fc3.forward(&x)?.squeeze(1)
    }

    /// Every tensor of the file format by name (see the module doc).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        for (name, layer) in [("fc1", &self.fc1), ("fc2", &self.fc2), ("fc3", &self.fc3)] {
            m.insert(format!("{name}.weight"), layer.weight().clone());
            if let Some(b) = layer.bias() {
                m.insert(format!("{name}.bias"), b.clone());
            }
        }
        m.insert("input_mean".into(), self.mean.clone());
        m.insert("input_std".into(), self.std.clone());
        m
    }
}

/// Seeded initial weights of a critic MLP ([`WEIGHT_NAMES`]), as PyTorch's
/// `nn.Linear` draws them: every weight and bias uniform in `±1/sqrt(fan_in)`.
/// The same seed gives the same weights on every machine.
pub fn seeded_weights(latent_dim: usize, hidden_width: usize, seed: u64, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut m = HashMap::new();
    for (name, fan_in, fan_out) in [("fc1", latent_dim + 1, hidden_width), ("fc2", hidden_width, hidden_width), ("fc3", hidden_width, 1)] {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let w = Tensor::from_vec(draw(fan_in * fan_out), (fan_out, fan_in), device)?.to_dtype(dtype)?;
        let b = Tensor::from_vec(draw(fan_out), fan_out, device)?.to_dtype(dtype)?;
        m.insert(format!("{name}.weight"), w);
        m.insert(format!("{name}.bias"), b);
    }
    Ok(m)
}

/// A critic as served: the network, its header, its device.
#[derive(Debug, Clone)]
pub struct Critic {
    net: CriticNet,
    meta: CriticMeta,
}

impl Critic {
    /// Puts a network and its header together. The header's sizes must be
    /// the network's; the header's `z_scale` is applied to the network.
    pub fn new(mut net: CriticNet, meta: CriticMeta) -> Result<Self> {
        meta.validate()?;
        if net.latent_dim() != meta.latent_dim || net.hidden_width() != meta.hidden_width {
            return Err(ModelError::Shape(format!(
                "the network has latent_dim {} and hidden_width {}, the metadata says {} and {}",
                net.latent_dim(),
                net.hidden_width(),
                meta.latent_dim,
                meta.hidden_width
            )));
        }
        net.set_z_scale(meta.z_scale);
        Ok(Self { net, meta })
    }

    /// A randomly initialised critic ([`seeded_weights`], identity
    /// standardisation) of the header's sizes, in f32: for tests and as the
    /// starting point of training.
    pub fn random(meta: CriticMeta, seed: u64, device: &Device) -> Result<Self> {
        let mut ts = seeded_weights(meta.latent_dim, meta.hidden_width, seed, DType::F32, device)?;
        ts.insert("input_mean".into(), Tensor::zeros(meta.latent_dim, DType::F32, device)?);
        ts.insert("input_std".into(), Tensor::ones(meta.latent_dim, DType::F32, device)?);
        let net = CriticNet::load(VarBuilder::from_tensors(ts, DType::F32, device), meta.latent_dim, meta.hidden_width)?;
        Self::new(net, meta)
    }

    /// Reads a critic file onto `device` (f32). Errors name the file and the
    /// offending tensor or metadata field.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes, device).map_err(|e| in_file(path, e))
    }

    /// Parses a critic file held in memory.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Format(format!("not a safetensors file: {e}")))?;
        let map = header
            .metadata()
            .as_ref()
            .ok_or_else(|| ModelError::Format("no __metadata__: not an InferenceGuard critic file".into()))?;
        let meta = CriticMeta::from_map(map)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| ModelError::Format(format!("not a safetensors file: {e}")))?;
        let (d, hw) = (meta.latent_dim, meta.hidden_width);
        let expected: [(&str, Vec<usize>, &str); 8] = [
            ("fc1.weight", vec![hw, d + 1], "[hidden_width, latent_dim + 1]"),
            ("fc1.bias", vec![hw], "[hidden_width]"),
            ("fc2.weight", vec![hw, hw], "[hidden_width, hidden_width]"),
            ("fc2.bias", vec![hw], "[hidden_width]"),
            ("fc3.weight", vec![1, hw], "[1, hidden_width]"),
            ("fc3.bias", vec![1], "[1]"),
            ("input_mean", vec![d], "[latent_dim]"),
            ("input_std", vec![d], "[latent_dim]"),
        ];
        let mut ts = HashMap::new();
        for (name, shape, what) in expected {
            let t = tensors.get(name).ok_or_else(|| ModelError::Format(format!("critic file has no tensor {name:?}")))?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::Format(format!(
                    "tensor {name:?} has shape {:?}, but the metadata's latent_dim {d} and hidden_width {hw} make {what} = {shape:?}",
                    t.dims()
                )));
            }
            let t = t.to_dtype(DType::F32)?;
            if t.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::Format(format!("tensor {name:?} holds non-finite values")));
            }
            ts.insert(name.to_string(), t.to_device(device)?);
        }
        let net = CriticNet::load(VarBuilder::from_tensors(ts, DType::F32, device), d, hw)?;
        Self::new(net, meta)
    }

    /// Writes the critic file (f32), atomically: a temporary file beside
    /// `path` renamed into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.meta.validate()?;
        let fmt = |e: safetensors::SafeTensorError| ModelError::Format(format!("{}: {e}", path.display()));
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut tensors: Vec<(String, Tensor)> = self.net.tensors().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::Format(format!("tensor {name:?} holds non-finite values")));
            }
            data.push((name, t.dims().to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
        let views = data
            .iter()
            .map(|(name, shape, bytes)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(fmt)?)))
            .collect::<Result<Vec<_>>>()?;
        let tmp = path.with_extension("safetensors.partial");
        let io = |e: &dyn std::fmt::Display| ModelError::Io(format!("{}: {e}", path.display()));
        safetensors::serialize_to_file(views, Some(self.meta.to_map()?), &tmp).map_err(|e| io(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(&e))
    }

    /// The header.
    pub fn meta(&self) -> &CriticMeta {
        &self.meta
    }

    /// The network.
    pub fn net(&self) -> &CriticNet {
        &self.net
    }

    /// Length of every latent.
    pub fn latent_dim(&self) -> usize {
        self.meta.latent_dim
    }

    /// Device the critic runs on.
    pub fn device(&self) -> &Device {
        self.net.device()
    }

    /// Checks a flat batch and returns its number of items. Errors are
    /// [`RoleError::InvalidArgument`] naming `latents` or `z`.
    pub fn check_inputs(&self, latents: &[f32], z: &[f64]) -> Result<usize> {
        let d = self.latent_dim();
        let n = z.len();
        if latents.len() != n * d {
            return Err(RoleError::invalid(
                "latents",
                format!("{} values for {n} items, expected {n} x latent_dim {d} = {}", latents.len(), n * d),
            )
            .into());
        }
        if let Some(i) = z.iter().position(|v| !v.is_finite()) {
            return Err(RoleError::invalid(format!("z[{i}]"), format!("must be finite, got {}", z[i])).into());
        }
        if let Some(k) = latents.iter().position(|v| !v.is_finite()) {
            return Err(RoleError::invalid(
                format!("latents[{}][{}]", k / d, k % d),
                format!("must be finite, got {}", latents[k]),
            )
            .into());
        }
        Ok(n)
    }

    fn inputs(&self, latents: &[f32], z: &[f64]) -> Result<(Tensor, Tensor)> {
        let n = self.check_inputs(latents, z)?;
        let (dtype, device) = (self.net.dtype(), self.device());
        let h = Tensor::from_slice(latents, (n, self.latent_dim()), device)?.to_dtype(dtype)?;
        let z = Tensor::from_slice(z, n, device)?.to_dtype(dtype)?;
        Ok((h, z))
    }

    /// `V(h, z)` of each item: `latents` holds `n x latent_dim` raw values,
    /// `z` the `n` unscaled safety states.
    pub fn evaluate(&self, latents: &[f32], z: &[f64]) -> Result<Vec<f32>> {
        let (h, z) = self.inputs(latents, z)?;
        finite_values(self.net.forward(&h, &z)?)
    }

    /// `V`, `dV/dh` and `dV/dz` (with respect to the unscaled `z`) of each
    /// item, from one forward and one backward pass over the batch (items
    /// do not interact, so the gradient of the sum is each item's own).
    pub fn gradient(&self, latents: &[f32], z: &[f64]) -> Result<Vec<CriticGradient>> {
        let (h, z) = self.inputs(latents, z)?;
        let (values, dh, dz) = self.value_and_grad(&h, &z)?;
        let values = finite_values(values)?;
        let d = self.latent_dim();
        let dh = dh.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let dz = dz.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if let Some(i) = dz.iter().position(|v| !v.is_finite()).or_else(|| dh.iter().position(|v| !v.is_finite()).map(|k| k / d)) {
            return Err(RoleError::Internal(format!("the critic produced a non-finite gradient for item {i}")).into());
        }
        Ok(values
            .into_iter()
            .zip(dh.chunks_exact(d))
            .zip(dz)
            .map(|((value, g), d_z)| CriticGradient { value, d_latent: g.to_vec(), d_z })
            .collect())
    }

    /// `V`, `dV/dh` and `dV/dz` as tensors.
    fn value_and_grad(&self, h: &Tensor, z: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let hv = Var::from_tensor(h)?;
        let zv = Var::from_tensor(z)?;
        let v = self.net.forward(hv.as_tensor(), zv.as_tensor())?;
        let grads = v.sum_all()?.backward()?;
        let dh = match grads.get(hv.as_tensor()) {
            Some(g) => g.clone(),
            None => hv.as_tensor().zeros_like()?,
        };
        let dz = match grads.get(zv.as_tensor()) {
            Some(g) => g.clone(),
            None => zv.as_tensor().zeros_like()?,
        };
        Ok((v.detach(), dh, dz))
    }

    /// `steps` steps of `h <- h + step_size * dV/dh(h, z)` for every item at
    /// once, `z` fixed. 0 steps returns the latents unchanged.
    pub fn ascend(&self, latents: &[f32], z: &[f64], steps: usize, step_size: f32) -> Result<Vec<Ascended>> {
        let never = || false;
        self.ascend_with(latents, z, steps, step_size, &WorkControl::new(None, &never))
    }

    /// [`Critic::ascend`], checking `control` before every step. A step size
    /// that sends a latent out of the finite range is an
    /// [`RoleError::InvalidArgument`] naming `step_size`.
    pub fn ascend_with(
        &self,
        latents: &[f32],
        z: &[f64],
        steps: usize,
        step_size: f32,
        control: &WorkControl<'_>,
    ) -> Result<Vec<Ascended>> {
        if steps > 0 && !(step_size.is_finite() && step_size > 0.0) {
            return Err(RoleError::invalid("step_size", format!("must be finite and > 0 when steps > 0, got {step_size}")).into());
        }
        let (mut h, z) = self.inputs(latents, z)?;
        let mut initial = None;
        for step in 0..steps {
            control.check()?;
            let (v, dh, _) = self.value_and_grad(&h, &z)?;
            if step == 0 {
                initial = Some(finite_values(v)?);
            }
            h = (h + (dh * step_size as f64)?)?;
        }
        let d = self.latent_dim();
        let moved = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let last = self.net.forward(&h, &z)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if steps > 0 && (moved.iter().any(|v| !v.is_finite()) || last.iter().any(|v| !v.is_finite())) {
            return Err(RoleError::invalid(
                "step_size",
                format!("the ascent left the finite range within {steps} steps of {step_size}; use a smaller step"),
            )
            .into());
        }
        let last = finite_values(Tensor::new(last, &Device::Cpu)?)?;
        let initial = initial.unwrap_or_else(|| last.clone());
        Ok(moved
            .chunks_exact(d)
            .zip(initial)
            .zip(last)
            .map(|((latent, initial_value), final_value)| Ascended { latent: latent.to_vec(), initial_value, final_value })
            .collect())
    }

    /// Runs a batch of `items` items forward and backward once (the shapes
    /// of the largest request), so the first real call is not slow.
    pub fn warm_up(&self, items: usize) -> Result<()> {
        let n = items.max(1);
        let latents = vec![0f32; n * self.latent_dim()];
        let z = vec![0f64; n];
        self.gradient(&latents, &z)?;
        Ok(())
    }

    /// What the critic serves, for its `Info`.
    pub fn info(&self) -> CriticInfo {
        let m = &self.meta;
        CriticInfo {
            model_id: m.model_id.clone(),
            policy_model_id: m.policy_model_id.clone(),
            latent_dim: m.latent_dim,
            hidden_width: m.hidden_width,
            z_scale: m.z_scale,
            objective: m.objective,
            safety_budget: m.safety_budget,
            training_penalty: m.training_penalty,
            lagrange_lambda: m.lagrange_lambda,
            discount: m.discount,
            provenance: m.provenance.to_string(),
            weight_dtype: dtype_name(self.net.dtype()).into(),
            device: device_name(self.device()),
        }
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "f32",
    }
}

/// The values of a `(n)` tensor as f32, refusing non-finite ones (a model
/// failure: the inputs were checked).
fn finite_values(v: Tensor) -> Result<Vec<f32>> {
    let values = v.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(RoleError::Internal(format!("the critic produced a non-finite value for item {i}")).into());
    }
    Ok(values)
}

impl CriticBackend for Critic {
    fn info(&self) -> CriticInfo {
        Critic::info(self)
    }

    fn warm_up(&mut self, items: usize) -> std::result::Result<(), RoleError> {
        Ok(Critic::warm_up(self, items)?)
    }

    fn evaluate(&mut self, latents: &[f32], z: &[f64], control: &WorkControl<'_>) -> std::result::Result<Vec<f32>, RoleError> {
        control.check()?;
        Ok(Critic::evaluate(self, latents, z)?)
    }

    fn gradient(&mut self, latents: &[f32], z: &[f64], control: &WorkControl<'_>) -> std::result::Result<Vec<CriticGradient>, RoleError> {
        control.check()?;
        Ok(Critic::gradient(self, latents, z)?)
    }

    fn ascend(
        &mut self,
        latents: &[f32],
        z: &[f64],
        steps: usize,
        step_size: f32,
        control: &WorkControl<'_>,
    ) -> std::result::Result<Vec<Ascended>, RoleError> {
        control.check()?;
        Ok(self.ascend_with(latents, z, steps, step_size, control)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(latent_dim: usize, hidden_width: usize) -> CriticMeta {
        CriticMeta {
            model_id: "critic-test".into(),
            policy_model_id: "policy-test".into(),
            latent_dim,
            hidden_width,
            z_scale: 0.5,
            objective: CriticObjective::Augmented,
            safety_budget: 0.0,
            training_penalty: 5.0,
            lagrange_lambda: 0.0,
            discount: 0.999,
            provenance: serde_json::json!({"note": "unit test"}),
        }
    }

    /// A random critic computing in `dtype`, with a non-trivial standardisation.
    fn critic(dtype: DType, seed: u64) -> Result<Critic> {
        let (d, hw) = (6, 16);
        let dev = Device::Cpu;
        let mut ts = seeded_weights(d, hw, seed, dtype, &dev)?;
        let mean: Vec<f32> = (0..d).map(|i| i as f32 * 0.1 - 0.2).collect();
        let std: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.3).collect();
        ts.insert("input_mean".into(), Tensor::from_vec(mean, d, &dev)?.to_dtype(dtype)?);
        ts.insert("input_std".into(), Tensor::from_vec(std, d, &dev)?.to_dtype(dtype)?);
        let net = CriticNet::load(VarBuilder::from_tensors(ts, dtype, &dev), d, hw)?;
        Critic::new(net, meta(d, hw))
    }

    fn inputs(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let h = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let z = (0..n).map(|_| rng.random_range(-2.0f64..2.0)).collect();
        (h, z)
    }

    /// `V` of each item computed in the network's own dtype (f64 here).
    fn values_f64(c: &Critic, h: &[f32], z: &[f64]) -> Result<Vec<f64>> {
        let (ht, zt) = c.inputs(h, z)?;
        Ok(c.net.forward(&ht, &zt)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    }

    #[test]
    fn gradient_matches_central_differences() -> Result<()> {
        let c = critic(DType::F64, 7)?;
        let d = c.latent_dim();
        let (h, z) = inputs(3, d, 11);
        let grads = c.gradient(&h, &z)?;
        assert_eq!(grads.len(), 3);
        let eps = 1e-3;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-2 * a.abs().max(b.abs()) + 1e-6;
        for (i, g) in grads.iter().enumerate() {
            let value = c.evaluate(&h[i * d..(i + 1) * d], &z[i..i + 1])?[0];
            assert!((value - g.value).abs() < 1e-6);
            for j in 0..d {
                let (mut up, mut down) = (h.clone(), h.clone());
                up[i * d + j] += eps as f32;
                down[i * d + j] -= eps as f32;
                // The perturbation actually applied, after rounding to f32.
                let step = (up[i * d + j] - down[i * d + j]) as f64;
                let fd = (values_f64(&c, &up, &z)?[i] - values_f64(&c, &down, &z)?[i]) / step;
                assert!(close(fd, g.d_latent[j] as f64), "item {i} component {j}: fd {fd} vs {}", g.d_latent[j]);
            }
            let (mut zu, mut zd) = (z.clone(), z.clone());
            zu[i] += eps;
            zd[i] -= eps;
            let fd = (values_f64(&c, &h, &zu)?[i] - values_f64(&c, &h, &zd)?[i]) / (2.0 * eps);
            assert!(close(fd, g.d_z), "item {i} z: fd {fd} vs {}", g.d_z);
            assert!(g.d_latent.iter().any(|v| *v != 0.0), "item {i}: a dead network proves nothing");
        }
        Ok(())
    }

    #[test]
    fn batch_equals_one_by_one() -> Result<()> {
        let c = critic(DType::F32, 3)?;
        let d = c.latent_dim();
        let (h, z) = inputs(5, d, 4);
        let all = c.evaluate(&h, &z)?;
        for i in 0..5 {
            let one = c.evaluate(&h[i * d..(i + 1) * d], &z[i..i + 1])?[0];
            assert!((one - all[i]).abs() < 1e-5, "item {i}: {one} vs {}", all[i]);
        }
        Ok(())
    }

    #[test]
    fn ascend_zero_steps_is_the_identity_and_small_steps_climb() -> Result<()> {
        let c = critic(DType::F32, 5)?;
        let d = c.latent_dim();
        let (h, z) = inputs(4, d, 6);
        let still = c.ascend(&h, &z, 0, 0.0)?;
        let values = c.evaluate(&h, &z)?;
        for (i, a) in still.iter().enumerate() {
            assert_eq!(a.latent, h[i * d..(i + 1) * d].to_vec());
            assert_eq!(a.initial_value, values[i]);
            assert_eq!(a.final_value, values[i]);
        }
        let moved = c.ascend(&h, &z, 5, 1e-2)?;
        for (i, a) in moved.iter().enumerate() {
            assert_eq!(a.initial_value, values[i]);
            assert!(a.final_value > a.initial_value, "item {i}: {} -> {}", a.initial_value, a.final_value);
            assert!((c.evaluate(&a.latent, &z[i..i + 1])?[0] - a.final_value).abs() < 1e-5);
        }
        // k steps of the ascent are k client-side gradient steps.
        let mut cur = h.clone();
        for _ in 0..5 {
            let g = c.gradient(&cur, &z)?;
            for (i, gi) in g.iter().enumerate() {
                for j in 0..d {
                    cur[i * d + j] += 1e-2f32 * gi.d_latent[j];
                }
            }
        }
        for (i, a) in moved.iter().enumerate() {
            for j in 0..d {
                assert!((a.latent[j] - cur[i * d + j]).abs() < 1e-6);
            }
        }
        assert!(c.ascend(&h, &z, 1, f32::NAN).is_err());
        let diverged = c.ascend(&h, &z, 100, f32::MAX).unwrap_err();
        assert!(diverged.to_string().contains("step_size"), "{diverged}");
        Ok(())
    }

    #[test]
    fn bad_inputs_name_the_field() -> Result<()> {
        let c = critic(DType::F32, 1)?;
        let d = c.latent_dim();
        let err = c.evaluate(&vec![0.0; d - 1], &[0.0]).unwrap_err().to_string();
        assert!(err.contains("latents") && err.contains(&format!("latent_dim {d}")), "{err}");
        let err = c.evaluate(&vec![0.0; d], &[f64::NAN]).unwrap_err().to_string();
        assert!(err.contains("z[0]"), "{err}");
        let mut h = vec![0.0; 2 * d];
        h[d + 2] = f32::INFINITY;
        let err = c.gradient(&h, &[0.0, 0.0]).unwrap_err().to_string();
        assert!(err.contains("latents[1][2]"), "{err}");
        Ok(())
    }

    #[test]
    fn save_load_round_trip_gives_identical_values() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ModelError::Io(e.to_string()))?;
        let path = dir.path().join("critic.safetensors");
        let c = critic(DType::F32, 9)?;
        c.save(&path)?;
        assert_eq!(CriticMeta::read(&path)?, *c.meta());
        let back = Critic::load(&path, &Device::Cpu)?;
        assert_eq!(back.meta(), c.meta());
        assert_eq!(back.net().standardization()?, c.net().standardization()?);
        let (h, z) = inputs(4, c.latent_dim(), 2);
        assert_eq!(back.evaluate(&h, &z)?, c.evaluate(&h, &z)?);
        assert_eq!(back.gradient(&h, &z)?, c.gradient(&h, &z)?);
        let info = back.info();
        assert_eq!((info.latent_dim, info.hidden_width, info.weight_dtype.as_str()), (6, 16, "f32"));
        assert!(info.provenance.contains("unit test"));
        Ok(())
    }

    #[test]
    fn random_critics_are_seeded() -> Result<()> {
        let a = Critic::random(meta(4, 8), 1, &Device::Cpu)?;
        let b = Critic::random(meta(4, 8), 1, &Device::Cpu)?;
        let c = Critic::random(meta(4, 8), 2, &Device::Cpu)?;
        let (h, z) = inputs(3, 4, 0);
        assert_eq!(a.evaluate(&h, &z)?, b.evaluate(&h, &z)?);
        assert_ne!(a.evaluate(&h, &z)?, c.evaluate(&h, &z)?);
        Ok(())
    }

    #[test]
    fn a_file_that_does_not_fit_its_header_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ModelError::Io(e.to_string()))?;
        let path = dir.path().join("critic.safetensors");
        let c = critic(DType::F32, 9)?;
        // Weights of a 6-d critic under a header that says 8.
        let mut lying = c.clone();
        lying.meta.latent_dim = 8;
        lying.save(&path)?;
        let err = Critic::load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("latent_dim 8") && err.contains("fc1.weight"), "{err}");
        assert!(err.contains("critic.safetensors"), "{err}");
        // A bad header field is named.
        let mut bad = c.clone();
        bad.meta.z_scale = 0.0;
        assert!(bad.save(&path).unwrap_err().to_string().contains("z_scale"));
        let mut bad = c.clone();
        bad.meta.policy_model_id.clear();
        assert!(bad.save(&path).unwrap_err().to_string().contains("policy_model_id"));
        // A safetensors file without our header is not a critic.
        safetensors::serialize_to_file([("x", TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap())], None, &path).unwrap();
        assert!(Critic::load(&path, &Device::Cpu).unwrap_err().to_string().contains("__metadata__"));
        Ok(())
    }

    #[test]
    fn objectives_have_snake_case_names() {
        assert_eq!(serde_json::to_string(&CriticObjective::Lagrangian).unwrap(), "\"lagrangian\"");
        assert_eq!("augmented".parse::<CriticObjective>().unwrap(), CriticObjective::Augmented);
        assert!("critic".parse::<CriticObjective>().is_err());
    }
}
