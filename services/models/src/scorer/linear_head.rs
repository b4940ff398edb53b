//! The linear score heads of the classifier formats, with PKU's normaliser.

use candle_core::{DType, Tensor};

use crate::{ModelError, Result};

/// safe-rlhf's normaliser epsilon, added to the standard deviation.
const PKU_EPSILON: f32 = 1e-8;

/// How a head's outputs become one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reduce {
    /// Output 0 (one label, or PKU's first score dimension).
    First,
    /// `out[1] - out[0]`: log-odds of label 1 of a two-label classifier.
    LogOdds,
}

/// PKU's normaliser at inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Normalize {
    Identity,
    /// `(x - mean) / (std + eps)` (reward).
    Affine { mean: f32, std: f32 },
    /// `x / (std + eps)` (cost).
    Scale { std: f32 },
}

impl Normalize {
    pub(super) fn apply(self, x: f32) -> f32 {
        match self {
            Self::Identity => x,
            Self::Affine { mean, std } => (x - mean) / (std + PKU_EPSILON),
            Self::Scale { std } => x / (std + PKU_EPSILON),
        }
    }
}

/// A linear head over trunk states, in f32.
#[derive(Debug, Clone)]
pub(super) struct LinearHead {
    /// `(outputs, hidden)`.
    weight: Tensor,
    /// `(outputs)`.
    bias: Option<Tensor>,
    reduce: Reduce,
    pub(super) normalize: Normalize,
}

impl LinearHead {
    pub(super) fn new(weight: Tensor, bias: Option<Tensor>, hidden: usize, what: &str, dim_rule: DimRule) -> Result<Self> {
        let (outputs, inp) = weight.dims2().map_err(|_| {
            ModelError::Format(format!("{what}.weight has shape {:?}, expected [outputs, hidden]", weight.dims()))
        })?;
        if inp != hidden {
            return Err(ModelError::Format(format!("{what}.weight has {inp} inputs but the trunk's hidden size is {hidden}")));
        }
        if let Some(b) = &bias {
            if b.dims() != [outputs] {
                return Err(ModelError::Format(format!("{what}.bias has shape {:?}, expected [{outputs}]", b.dims())));
            }
        }
        let reduce = match (dim_rule, outputs) {
            (_, 0) => return Err(ModelError::Format(format!("{what}.weight has no outputs"))),
            (_, 1) | (DimRule::FirstOfMany, _) => Reduce::First,
            (DimRule::Labels, 2) => Reduce::LogOdds,
            (DimRule::Labels, n) => {
                return Err(ModelError::Unsupported(format!(
                    "{what}: {n} labels; a score model needs 1 (a score) or 2 (scored as log-odds of label 1)"
                )))
            }
        };
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?,
            bias: bias.map(|b| b.to_dtype(DType::F32)).transpose()?,
            reduce,
            normalize: Normalize::Identity,
        })
    }

    /// Scores of `x` `(n, hidden)` f32: one per row.
    pub(super) fn scores(&self, x: &Tensor) -> Result<Vec<f32>> {
        let x = x.to_device(self.weight.device())?;
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let rows = y.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let s = match self.reduce {
                    Reduce::First => r[0],
                    Reduce::LogOdds => r[1] - r[0],
                };
                self.normalize.apply(s)
            })
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DimRule {
    /// Classification labels: 1 or 2.
    Labels,
    /// PKU's `score_dim`: take dimension 0.
    FirstOfMany,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizers_match_safe_rlhf() {
        let a = Normalize::Affine { mean: 0.75, std: 1.5 };
        assert!((a.apply(0.707_503_9_f32) - (-0.028_330_764_f32)).abs() < 1e-6);
        let s = Normalize::Scale { std: 1.5 };
        assert!((s.apply(0.707_503_9_f32) - 0.471_669_23_f32).abs() < 1e-6);
    }
}
