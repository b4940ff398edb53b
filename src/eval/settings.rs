//! What each method is asked: `--set FIELD=VALUE` for every method,
//! `--set METHOD.FIELD=VALUE` for one. A field is a `SearchParams` field of
//! `guard.proto` or a model choice of the request; unset ones take the
//! guard's defaults.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use ig_orchestrator::search::Method;
use ig_proto::v1 as pb;

/// How a field's value is read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Float,
    /// A registry name.
    Name,
}

/// The fields `--set` accepts. `seed` is not among them: the eval draws one
/// per prompt from `--seed`.
const FIELDS: [(&str, Kind); 18] = [
    ("samples_count", Kind::Int),
    ("beam_width", Kind::Int),
    ("chunk_tokens", Kind::Int),
    ("max_new_tokens", Kind::Int),
    ("max_resamples", Kind::Int),
    ("resample_penalty", Kind::Float),
    ("temperature", Kind::Float),
    ("top_p", Kind::Float),
    ("safety_budget", Kind::Float),
    ("unsafe_penalty", Kind::Float),
    ("lagrange_lambda", Kind::Float),
    ("args_top_k", Kind::Int),
    ("args_weight", Kind::Float),
    ("recontrol_steps", Kind::Int),
    ("recontrol_step_size", Kind::Float),
    ("cost_model", Kind::Name),
    ("reward_model", Kind::Name),
    ("critic", Kind::Name),
];

/// The fields a method is asked with, by name; values as given.
pub type Settings = BTreeMap<String, String>;

/// One `--set`: for every method (`method` unset) or one.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub method: Option<Method>,
    pub field: String,
    pub value: String,
}

/// Parses `FIELD=VALUE` or `METHOD.FIELD=VALUE`, checking the names and the value's type.
pub fn parse_setting(text: &str) -> anyhow::Result<Setting> {
    let (key, value) = text.split_once('=').with_context(|| format!("--set {text:?}: expected FIELD=VALUE or METHOD.FIELD=VALUE"))?;
    let (method, field) = match key.split_once('.') {
        Some((m, f)) => {
            let method = super::method_by_name(m)
                .with_context(|| format!("--set {text:?}: unknown method {m:?} (one of {})", Method::ALL.map(Method::name).join(", ")))?;
            (Some(method), f)
        }
        None => (None, key),
    };
    if field == "seed" {
        bail!("--set {text:?}: the eval draws a seed per prompt; use --seed");
    }
    let Some(&(_, kind)) = FIELDS.iter().find(|(name, _)| *name == field) else {
        bail!("--set {text:?}: unknown field {field:?} (one of {})", FIELDS.map(|f| f.0).join(", "));
    };
    let ok = match kind {
        Kind::Int => value.parse::<i32>().is_ok(),
        Kind::Float => value.parse::<f64>().is_ok_and(f64::is_finite),
        Kind::Name => true,
    };
    if !ok {
        bail!("--set {text:?}: {field} takes {}", if matches!(kind, Kind::Int) { "an integer" } else { "a finite number" });
    }
    Ok(Setting { method, field: field.to_string(), value: value.to_string() })
}

/// The settings of `method`: the ones for every method, then its own (later ones win).
pub fn for_method(all: &[Setting], method: Method) -> Settings {
    all.iter().filter(|s| s.method.is_none_or(|m| m == method)).map(|s| (s.field.clone(), s.value.clone())).collect()
}

/// A GuardService request of `method` on `prompt` with `settings` and `seed`.
pub fn request(method: Method, prompt: &str, settings: &Settings, seed: i64) -> pb::GenerateRequest {
    let mut params = pb::SearchParams { seed: Some(seed), ..Default::default() };
    let mut req = pb::GenerateRequest {
        prompt: Some(pb::generate_request::Prompt::PromptText(prompt.to_string())),
        method: ig_orchestrator::guard::wire_method(method) as i32,
        ..Default::default()
    };
    for (field, value) in settings {
        // Values were checked by `parse_setting`.
        let int = || value.parse::<i32>().ok();
        let float = || value.parse::<f64>().ok();
        match field.as_str() {
            "samples_count" => params.samples_count = int(),
            "beam_width" => params.beam_width = int(),
            "chunk_tokens" => params.chunk_tokens = int(),
            "max_new_tokens" => params.max_new_tokens = int(),
            "max_resamples" => params.max_resamples = int(),
            "resample_penalty" => params.resample_penalty = float().map(|v| v as f32),
            "temperature" => params.temperature = float().map(|v| v as f32),
            "top_p" => params.top_p = float().map(|v| v as f32),
            "safety_budget" => params.safety_budget = float(),
            "unsafe_penalty" => params.unsafe_penalty = float(),
            "lagrange_lambda" => params.lagrange_lambda = float(),
            "args_top_k" => params.args_top_k = int(),
            "args_weight" => params.args_weight = float(),
            "recontrol_steps" => params.recontrol_steps = int(),
            "recontrol_step_size" => params.recontrol_step_size = float().map(|v| v as f32),
            "cost_model" => req.cost_model = value.clone(),
            "reward_model" => req.reward_model = value.clone(),
            "critic" => req.critic = value.clone(),
            _ => {}
        }
    }
    req.params = Some(params);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_for_all_then_for_one_method() {
        let all: Vec<Setting> = ["samples_count=8", "bon_lagrangian.samples_count=16", "max_new_tokens=48", "recontrol.critic=c1"]
            .into_iter()
            .map(|s| parse_setting(s).unwrap())
            .collect();
        let bon = for_method(&all, Method::BonLagrangian);
        assert_eq!(bon.get("samples_count").map(String::as_str), Some("16"));
        let ig = for_method(&all, Method::InferenceGuard);
        assert_eq!(ig.get("samples_count").map(String::as_str), Some("8"));
        assert!(!ig.contains_key("critic"));
        let req = request(Method::Recontrol, "hi", &for_method(&all, Method::Recontrol), 42);
        let p = req.params.unwrap();
        assert_eq!((p.samples_count, p.max_new_tokens, p.seed, p.beam_width), (Some(8), Some(48), Some(42), None));
        assert_eq!(req.critic, "c1");
        assert_eq!(req.method, pb::Method::Recontrol as i32);
    }

    #[test]
    fn bad_settings_name_the_problem() {
        let err = |s: &str| parse_setting(s).unwrap_err().to_string();
        assert!(err("samples").contains("expected FIELD=VALUE"));
        assert!(err("sample_count=3").contains("unknown field \"sample_count\""));
        assert!(err("bon.samples_count=3").contains("unknown method \"bon\""));
        assert!(err("samples_count=3.5").contains("samples_count takes an integer"));
        assert!(err("temperature=nan").contains("temperature takes a finite number"));
        assert!(err("seed=3").contains("use --seed"));
    }
}
