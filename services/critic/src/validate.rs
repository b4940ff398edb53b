//! Wire requests become a validated flat batch, or a [`CriticError`] naming
//! the field, the limit and the value given.

use ig_core::critic::CriticLimits;
use ig_core::RoleError;
use ig_proto::v1 as pb;

use crate::error::CriticError;

/// Items that passed validation: `latents` holds `len() x latent_dim`
/// finite values, item after item; `z` one finite value per item.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidBatch {
    /// The latents, flat.
    pub latents: Vec<f32>,
    /// The safety states, unscaled.
    pub z: Vec<f64>,
}

impl ValidBatch {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.z.len()
    }

    /// Whether there are no items (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.z.is_empty()
    }
}

/// Refuses latents of another policy: `requested` is the request's
/// `policy_model_id` (empty: not checked), `served` the critic's.
pub fn policy(requested: &str, served: &str) -> Result<(), CriticError> {
    if !requested.is_empty() && requested != served {
        return Err(CriticError::PolicyMismatch { expected: served.to_string(), actual: requested.to_string() });
    }
    Ok(())
}

/// Checks the number of items of a request.
pub fn item_count(n: usize, limits: &CriticLimits) -> Result<(), CriticError> {
    if n == 0 {
        return Err(CriticError::Missing { field: "items".into(), message: "at least one item is required, got none".into() });
    }
    if n > limits.max_items {
        return Err(CriticError::Limit {
            field: "items".into(),
            limit: "max_items",
            value: n as i64,
            message: format!("at most {} items (max_items), got {n}", limits.max_items),
        });
    }
    Ok(())
}

/// Validates the items of a request against the critic's `latent_dim`.
pub fn items(items: &[pb::CriticItem], latent_dim: usize, limits: &CriticLimits) -> Result<ValidBatch, CriticError> {
    item_count(items.len(), limits)?;
    let mut latents = Vec::with_capacity(items.len() * latent_dim);
    let mut z = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let Some(latent) = &it.latent else {
            return Err(CriticError::Missing {
                field: format!("items[{i}].latent"),
                message: format!("required: the policy's latent, latent_dim {latent_dim} values"),
            });
        };
        if latent.values.len() != latent_dim {
            return Err(CriticError::LatentDim { field: format!("items[{i}].latent.values"), expected: latent_dim, actual: latent.values.len() });
        }
        if let Some(j) = latent.values.iter().position(|v| !v.is_finite()) {
            return Err(RoleError::invalid(format!("items[{i}].latent.values[{j}]"), format!("must be finite, got {}", latent.values[j])).into());
        }
        if !it.z.is_finite() {
            return Err(RoleError::invalid(format!("items[{i}].z"), format!("must be finite, got {}", it.z)).into());
        }
        latents.extend_from_slice(&latent.values);
        z.push(it.z);
    }
    Ok(ValidBatch { latents, z })
}

/// Validates Ascend's `steps` and `step_size`; returns the steps.
pub fn ascent(steps: i32, step_size: f32, limits: &CriticLimits) -> Result<usize, CriticError> {
    let max = limits.max_ascent_steps;
    let range = format!("must be in [0, {max}] (max_ascent_steps), got {steps}");
    if steps < 0 {
        return Err(RoleError::invalid("steps", range).into());
    }
    if steps as usize > max {
        return Err(CriticError::Limit { field: "steps".into(), limit: "max_ascent_steps", value: steps as i64, message: range });
    }
    if steps > 0 && !(step_size.is_finite() && step_size > 0.0) {
        return Err(RoleError::invalid("step_size", format!("must be finite and > 0 when steps > 0, got {step_size}")).into());
    }
    Ok(steps as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(values: Vec<f32>, z: f64) -> pb::CriticItem {
        pb::CriticItem { latent: Some(pb::Latent { values }), z }
    }

    #[test]
    fn names_fields_and_limits() {
        let limits = CriticLimits { max_items: 2, max_ascent_steps: 10, ..Default::default() };
        let ok = items(&[item(vec![1.0, 2.0], 0.5), item(vec![3.0, 4.0], -1.0)], 2, &limits).unwrap();
        assert_eq!(ok, ValidBatch { latents: vec![1.0, 2.0, 3.0, 4.0], z: vec![0.5, -1.0] });

        let e = items(&[item(vec![1.0, 2.0], 0.0), item(vec![1.0], 0.0)], 2, &limits).unwrap_err();
        assert_eq!(e, CriticError::LatentDim { field: "items[1].latent.values".into(), expected: 2, actual: 1 });
        let e = items(&vec![item(vec![1.0, 2.0], 0.0); 3], 2, &limits).unwrap_err();
        assert!(matches!(&e, CriticError::Limit { limit: "max_items", value: 3, .. }), "{e:?}");
        assert!(e.to_string().starts_with("items: at most 2 items (max_items), got 3"), "{e}");
        assert!(matches!(items(&[], 2, &limits), Err(CriticError::Missing { .. })));
        let e = items(&[pb::CriticItem { latent: None, z: 0.0 }], 2, &limits).unwrap_err();
        assert!(e.to_string().starts_with("items[0].latent: "), "{e}");
        let e = items(&[item(vec![1.0, f32::NAN], 0.0)], 2, &limits).unwrap_err();
        assert!(e.to_string().starts_with("items[0].latent.values[1]: must be finite"), "{e}");
        let e = items(&[item(vec![1.0, 2.0], f64::INFINITY)], 2, &limits).unwrap_err();
        assert!(e.to_string().starts_with("items[0].z: must be finite"), "{e}");

        assert_eq!(ascent(0, 0.0, &limits).unwrap(), 0);
        assert_eq!(ascent(10, 0.5, &limits).unwrap(), 10);
        let e = ascent(11, 0.5, &limits).unwrap_err();
        assert!(matches!(&e, CriticError::Limit { limit: "max_ascent_steps", value: 11, .. }));
        assert!(e.to_string().contains("max_ascent_steps"));
        assert!(ascent(-1, 0.5, &limits).unwrap_err().to_string().starts_with("steps: "));
        assert!(ascent(3, 0.0, &limits).unwrap_err().to_string().starts_with("step_size: "));
        assert!(ascent(3, f32::NAN, &limits).is_err());

        assert!(policy("", "p").is_ok());
        assert!(policy("p", "p").is_ok());
        assert_eq!(policy("q", "p").unwrap_err(), CriticError::PolicyMismatch { expected: "p".into(), actual: "q".into() });
    }
}
