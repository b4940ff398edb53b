//! The critic role: a small network `V(h, z)` over the policy's latent `h`
//! and the safety state `z` (the budget left), trained for one policy.
//!
//! Batches travel flat: `latents` holds `n x latent_dim` values, item after
//! item, and `z` one value per item. Requests here are already validated by
//! the critic server (counts, lengths, finite values, the policy they come
//! from), so a backend only re-checks what its own safety needs.

use crate::policy::WorkControl;
use crate::RoleError;

/// What a critic was trained to predict: the terminal return `G` that its
/// Monte Carlo targets discount (see `algorithm.md`, "Critic").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticObjective {
    /// InferenceGuard's augmented return: `R` if `C <= B`, else `-training_penalty`.
    Augmented,
    /// The Lagrangian return `R - lagrange_lambda * C`.
    Lagrangian,
    /// The reward alone, `R`.
    Reward,
}

impl CriticObjective {
    /// The name the weights' header and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Augmented => "augmented",
            Self::Lagrangian => "lagrangian",
            Self::Reward => "reward",
        }
    }
}

impl std::fmt::Display for CriticObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CriticObjective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "augmented" => Ok(Self::Augmented),
            "lagrangian" => Ok(Self::Lagrangian),
            "reward" => Ok(Self::Reward),
            other => Err(format!("critic objective {other:?}: expected augmented, lagrangian or reward")),
        }
    }
}

/// Limits a critic server enforces. All are inclusive maxima.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticLimits {
    /// Items per Evaluate, Gradient or Ascend call.
    pub max_items: usize,
    /// Largest `AscendRequest.steps`.
    pub max_ascent_steps: usize,
    /// Largest encoded request message, in bytes.
    pub max_message_bytes: usize,
}

impl Default for CriticLimits {
    fn default() -> Self {
        // 256 latents of a 4096-d (7B) policy take about 4.2 MB on the wire.
        Self { max_items: 256, max_ascent_steps: 100, max_message_bytes: 8 << 20 }
    }
}

/// What a critic serves, and how it was trained.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticInfo {
    /// Stable identifier of the critic.
    pub model_id: String,
    /// Identifier of the policy whose latents the critic reads.
    pub policy_model_id: String,
    /// Length of every latent.
    pub latent_dim: usize,
    /// Width of both hidden layers.
    pub hidden_width: usize,
    /// The network reads `z * z_scale`. > 0.
    pub z_scale: f64,
    /// What the critic predicts.
    pub objective: CriticObjective,
    /// Safety budget `B` of the training data.
    pub safety_budget: f64,
    /// Training return of an unsafe response is `-training_penalty` (augmented only).
    pub training_penalty: f64,
    /// Multiplier of the cost in the training return (Lagrangian only).
    pub lagrange_lambda: f64,
    /// Discount of the Monte Carlo targets, in (0, 1].
    pub discount: f64,
    /// Training provenance, a JSON object as text.
    pub provenance: String,
    /// Weight format in memory, e.g. "f32".
    pub weight_dtype: String,
    /// Device, e.g. "cpu".
    pub device: String,
}

/// `V` and its gradient at one item.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticGradient {
    /// `V(h, z)`.
    pub value: f32,
    /// `dV/dh`, `latent_dim` values.
    pub d_latent: Vec<f32>,
    /// `dV/dz` with respect to the unscaled `z`.
    pub d_z: f64,
}

/// One latent after gradient ascent on `V`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ascended {
    /// The moved latent, `latent_dim` values.
    pub latent: Vec<f32>,
    /// `V` at the starting latent.
    pub initial_value: f32,
    /// `V` at the moved latent.
    pub final_value: f32,
}

/// A loaded critic that the critic server drives from one thread.
///
/// Every method takes a batch of `n` items: `latents` holds `n x
/// latent_dim` values and `z` holds `n`; answers come one per item, in
/// order.
pub trait CriticBackend: Send + 'static {
    /// What is served.
    fn info(&self) -> CriticInfo;
    /// Runs a batch of `items` items (the largest a request may carry)
    /// forward and backward so the first request is not slow.
    fn warm_up(&mut self, items: usize) -> Result<(), RoleError>;
    /// `V(h, z)` of each item.
    fn evaluate(&mut self, latents: &[f32], z: &[f64], control: &WorkControl<'_>) -> Result<Vec<f32>, RoleError>;
    /// `V` with `dV/dh` and `dV/dz` of each item.
    fn gradient(&mut self, latents: &[f32], z: &[f64], control: &WorkControl<'_>) -> Result<Vec<CriticGradient>, RoleError>;
    /// `steps` steps of `h <- h + step_size * dV/dh(h, z)` for every item at
    /// once, `z` fixed; `control` is checked before each step.
    fn ascend(
        &mut self,
        latents: &[f32],
        z: &[f64],
        steps: usize,
        step_size: f32,
        control: &WorkControl<'_>,
    ) -> Result<Vec<Ascended>, RoleError>;
}
