//! Training the critic `V(h, z)` (`algorithm.md`, "Critic") on samples
//! collected from rollouts: regression of Monte Carlo targets with MSE,
//! Adam (AdamW with no weight decay), seeded mini-batches, a validation
//! split by prompt, and a loss plot. No gRPC and no rollout collection
//! here: the caller brings [`CriticSample`]s.
//!
//! Two things make the paper's small learning rate work on raw LLM
//! latents: the inputs are standardised per component with statistics of
//! the training split (stored with the weights, see [`ig_models::critic`]),
//! and the network is fitted to standardised targets, `(G - mean) / std`,
//! with the target scale folded back into the last layer after training, so
//! the saved critic predicts returns in their own units.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use ig_models::critic::{seeded_weights, Critic, CriticMeta, CriticNet};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::plot::{line_chart, LineChart, Series};

/// One training point: a latent at a chunk boundary with its safety state
/// and its Monte Carlo target.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticSample {
    /// The prompt it comes from. Splits keep a prompt's samples together
    /// (the samples of one rollout are strongly correlated).
    pub group: u64,
    /// The policy's latent `h_t`, raw.
    pub latent: Vec<f32>,
    /// The safety state `z_t`, unscaled.
    pub z: f64,
    /// The target `gamma^(T - t) * G`.
    pub target: f64,
}

/// Hyper-parameters of [`train_critic`] (defaults: the paper's, with a
/// hidden width for small policies).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CriticTrainOptions {
    /// Width of both hidden layers.
    pub hidden_width: usize,
    /// Adam's learning rate (paper: 1e-5).
    pub learning_rate: f64,
    /// Samples per step (paper: 8).
    pub batch_size: usize,
    /// Passes over the training split (paper: 50).
    pub epochs: usize,
    /// Share of the prompts (groups) held out for validation, in [0, 1).
    pub validation_fraction: f64,
    /// Seed of the initial weights, the split and the batch order.
    pub seed: u64,
    /// The network reads `z * z_scale`; > 0.
    pub z_scale: f64,
}

impl Default for CriticTrainOptions {
    fn default() -> Self {
        Self { hidden_width: 256, learning_rate: 1e-5, batch_size: 8, epochs: 50, validation_fraction: 0.2, seed: 0, z_scale: 1.0 }
    }
}

/// Losses after one epoch, in squared target units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochLoss {
    /// Epoch, from 1.
    pub epoch: usize,
    /// MSE over the training split.
    pub train_mse: f64,
    /// MSE over the validation split (none when it is empty).
    pub val_mse: Option<f64>,
}

/// A trained critic with its loss history.
#[derive(Debug, Clone)]
pub struct TrainedCritic {
    /// The critic, its header complete (sizes, `z_scale`, provenance with a
    /// `training` object holding the losses and the settings).
    pub critic: Critic,
    /// Losses after every epoch.
    pub history: Vec<EpochLoss>,
    /// MSE over the training split of predicting the training targets' mean.
    pub mean_predictor_train_mse: f64,
    /// MSE over the validation split of predicting the training targets'
    /// mean: the bar a useful critic must clear.
    pub mean_predictor_val_mse: Option<f64>,
    /// Samples trained on.
    pub train_count: usize,
    /// Samples validated on.
    pub val_count: usize,
}

/// Splits samples by group: about `fraction` of the distinct groups
/// (chosen with `seed`, at least one when `fraction > 0` and there are two
/// or more groups) go to the validation split, with all their samples; no
/// group is in both. Returns `(train, validation)`, each in input order.
pub fn split_by_group(samples: Vec<CriticSample>, fraction: f64, seed: u64) -> (Vec<CriticSample>, Vec<CriticSample>) {
    let groups: Vec<u64> = samples.iter().map(|s| s.group).collect::<BTreeSet<_>>().into_iter().collect();
    let fraction = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    let mut n_val = (groups.len() as f64 * fraction).round() as usize;
    if fraction > 0.0 && groups.len() >= 2 {
        n_val = n_val.clamp(1, groups.len() - 1);
    }
    let mut shuffled = groups;
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let val_groups: BTreeSet<u64> = shuffled.into_iter().take(n_val).collect();
    samples.into_iter().partition(|s| !val_groups.contains(&s.group))
}

/// Per-component mean and standard deviation of the latents.
fn latent_stats(samples: &[CriticSample], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = samples.len() as f64;
    let mut sum = vec![0f64; dim];
    for s in samples {
        for (a, &v) in sum.iter_mut().zip(&s.latent) {
            *a += v as f64;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|a| a / n).collect();
    let mut sq = vec![0f64; dim];
    for s in samples {
        for ((a, &v), m) in sq.iter_mut().zip(&s.latent).zip(&mean) {
            *a += (v as f64 - m).powi(2);
        }
    }
    let std = sq.iter().map(|a| (a / n).sqrt() as f32).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

fn check_samples(samples: &[CriticSample], dim: usize, what: &str) -> Result<()> {
    for (i, s) in samples.iter().enumerate() {
        ensure!(s.latent.len() == dim, "{what}[{i}].latent: {} values, expected {dim} like the first training sample", s.latent.len());
        ensure!(s.latent.iter().all(|v| v.is_finite()), "{what}[{i}].latent: non-finite values");
        ensure!(s.z.is_finite() && s.target.is_finite(), "{what}[{i}]: z {} and target {} must be finite", s.z, s.target);
    }
    Ok(())
}

/// Tensors of a split: latents `(n, dim)`, z `(n)`, targets `(n)` (as given).
struct Split {
    x: Tensor,
    z: Tensor,
    targets: Vec<f64>,
}

impl Split {
    fn new(samples: &[CriticSample], dim: usize, dev: &Device) -> Result<Self> {
        let flat: Vec<f32> = samples.iter().flat_map(|s| s.latent.iter().copied()).collect();
        let z: Vec<f32> = samples.iter().map(|s| s.z as f32).collect();
        Ok(Self {
            x: Tensor::from_vec(flat, (samples.len(), dim), dev)?,
            z: Tensor::from_vec(z, samples.len(), dev)?,
            targets: samples.iter().map(|s| s.target).collect(),
        })
    }

    /// MSE of `net`'s predictions (standardised outputs mapped back with
    /// `mu`, `sigma`) against the targets, in chunks.
    fn mse(&self, net: &CriticNet, mu: f64, sigma: f64) -> Result<f64> {
        let n = self.targets.len();
        let mut total = 0f64;
        for start in (0..n).step_by(4096) {
            let len = (n - start).min(4096);
            let pred = net.forward(&self.x.narrow(0, start, len)?, &self.z.narrow(0, start, len)?)?.to_vec1::<f32>()?;
            for (p, t) in pred.iter().zip(&self.targets[start..start + len]) {
                total += (*p as f64 * sigma + mu - t).powi(2);
            }
        }
        Ok(total / n as f64)
    }
}

/// Trains a critic on `train`, reporting `val` after every epoch.
///
/// `meta` carries what the data does not say (ids, objective, budget,
/// penalty, multiplier, discount, provenance); its `latent_dim`,
/// `hidden_width` and `z_scale` are set here from the data and `opts`, and a
/// `training` object (settings, sample and group counts, final and best
/// losses, the mean predictor's losses) is added to its provenance.
/// `progress` advances one step per epoch (use `ProgressBar::hidden()` for
/// none). Deterministic for a given seed on a given machine.
pub fn train_critic(
    train: &[CriticSample],
    val: &[CriticSample],
    opts: &CriticTrainOptions,
    mut meta: CriticMeta,
    progress: &ProgressBar,
) -> Result<TrainedCritic> {
    ensure!(!train.is_empty(), "no training samples");
    ensure!(opts.hidden_width > 0 && opts.batch_size > 0, "hidden_width and batch_size must be > 0");
    ensure!(opts.learning_rate.is_finite() && opts.learning_rate > 0.0, "learning_rate must be finite and > 0");
    ensure!(opts.z_scale.is_finite() && opts.z_scale > 0.0, "z_scale must be finite and > 0");
    let dim = train[0].latent.len();
    ensure!(dim > 0, "train[0].latent is empty");
    check_samples(train, dim, "train")?;
    check_samples(val, dim, "val")?;
    let train_groups: BTreeSet<u64> = train.iter().map(|s| s.group).collect();
    let val_groups: BTreeSet<u64> = val.iter().map(|s| s.group).collect();
    if let Some(g) = train_groups.intersection(&val_groups).next() {
        anyhow::bail!("group {g} is in both the training and the validation split (split by group)");
    }

    let dev = Device::Cpu;
    let (mean, std) = latent_stats(train, dim);
    let mu = train.iter().map(|s| s.target).sum::<f64>() / train.len() as f64;
    let var = train.iter().map(|s| (s.target - mu).powi(2)).sum::<f64>() / train.len() as f64;
    // Constant targets: nothing to scale.
    let sigma = if var.sqrt() > 1e-8 { var.sqrt() } else { 1.0 };

    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let mut net = CriticNet::new(vb, dim, opts.hidden_width)?;
    let init = seeded_weights(dim, opts.hidden_width, opts.seed, DType::F32, &dev)?;
    varmap.set(init.iter())?;
    net.set_standardization(&mean, &std)?;
    net.set_z_scale(opts.z_scale);

    let tr = Split::new(train, dim, &dev)?;
    let va = if val.is_empty() { None } else { Some(Split::new(val, dim, &dev)?) };
    let y: Vec<f32> = train.iter().map(|s| ((s.target - mu) / sigma) as f32).collect();
    let y = Tensor::from_vec(y, train.len(), &dev)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: opts.learning_rate, weight_decay: 0.0, ..Default::default() })?;

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(1));
    let mut order: Vec<u32> = (0..train.len() as u32).collect();
    let mut history = Vec::with_capacity(opts.epochs);
    progress.set_length(opts.epochs as u64);
    for epoch in 1..=opts.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(opts.batch_size) {
            let idx = Tensor::new(batch, &dev)?;
            let pred = net.forward(&tr.x.index_select(&idx, 0)?, &tr.z.index_select(&idx, 0)?)?;
            let loss = (pred - y.index_select(&idx, 0)?)?.sqr()?.mean_all()?;
            opt.backward_step(&loss)?;
        }
        let train_mse = tr.mse(&net, mu, sigma)?;
        let val_mse = va.as_ref().map(|v| v.mse(&net, mu, sigma)).transpose()?;
        ensure!(train_mse.is_finite(), "the training diverged at epoch {epoch} (MSE {train_mse}); lower the learning rate");
        progress.set_message(match val_mse {
            Some(v) => format!("train MSE {train_mse:.4}, validation MSE {v:.4}"),
            None => format!("train MSE {train_mse:.4}"),
        });
        progress.inc(1);
        history.push(EpochLoss { epoch, train_mse, val_mse });
    }
    progress.finish();

    // Fold the target scale into the last layer: V = sigma * out + mu.
    let w3 = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?.get("fc3.weight").map(|v| v.as_tensor().clone());
    let b3 = varmap.data().lock().map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?.get("fc3.bias").map(|v| v.as_tensor().clone());
    let (w3, b3) = (w3.context("fc3.weight")?, b3.context("fc3.bias")?);
    varmap.set_one("fc3.weight", (w3 * sigma)?)?;
    varmap.set_one("fc3.bias", b3.affine(sigma, mu)?)?;

    let mean_predictor_train_mse = var;
    let mean_predictor_val_mse = (!val.is_empty()).then(|| val.iter().map(|s| (s.target - mu).powi(2)).sum::<f64>() / val.len() as f64);
    let last = history.last();
    let best = history.iter().filter_map(|h| h.val_mse.map(|v| (h.epoch, v))).min_by(|a, b| a.1.total_cmp(&b.1));
    let training = serde_json::json!({
        "optimizer": "adam",
        "loss": "mse",
        "epochs": opts.epochs,
        "learning_rate": opts.learning_rate,
        "batch_size": opts.batch_size,
        "hidden_width": opts.hidden_width,
        "z_scale": opts.z_scale,
        "seed": opts.seed,
        "validation_fraction": opts.validation_fraction,
        "train_samples": train.len(),
        "val_samples": val.len(),
        "train_groups": train_groups.len(),
        "val_groups": val_groups.len(),
        "target_mean": mu,
        "target_std": var.sqrt(),
        "final_train_mse": last.map(|h| h.train_mse),
        "final_val_mse": last.and_then(|h| h.val_mse),
        "best_val_mse": best.map(|b| b.1),
        "best_val_epoch": best.map(|b| b.0),
        "mean_predictor_train_mse": mean_predictor_train_mse,
        "mean_predictor_val_mse": mean_predictor_val_mse,
    });
    if !meta.provenance.is_object() {
        meta.provenance = serde_json::json!({});
    }
    if let Some(p) = meta.provenance.as_object_mut() {
        p.insert("training".into(), training);
    }
    meta.latent_dim = dim;
    meta.hidden_width = opts.hidden_width;
    meta.z_scale = opts.z_scale;

    // The served critic owns plain copies of the trained tensors.
    let tensors = net
        .tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, t.detach().copy()?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let served = CriticNet::load(VarBuilder::from_tensors(tensors, DType::F32, &dev), dim, opts.hidden_width)?;
    let critic = Critic::new(served, meta)?;
    Ok(TrainedCritic { critic, history, mean_predictor_train_mse, mean_predictor_val_mse, train_count: train.len(), val_count: val.len() })
}

impl TrainedCritic {
    /// Writes the critic file (see [`ig_models::critic`] for the format).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.critic.save(path).with_context(|| format!("saving the critic to {}", path.display()))
    }

    /// Draws the training and validation MSE per epoch, and the mean
    /// predictor's validation MSE as a flat line, into `svg` and `png`.
    /// Returns whether text could be drawn (see [`crate::plot`]).
    pub fn plot(&self, svg: &Path, png: &Path) -> Result<bool> {
        let mut series = vec![Series {
            label: "training MSE".into(),
            points: self.history.iter().map(|h| (h.epoch as f64, h.train_mse)).collect(),
        }];
        let val: Vec<(f64, f64)> = self.history.iter().filter_map(|h| h.val_mse.map(|v| (h.epoch as f64, v))).collect();
        if !val.is_empty() {
            series.push(Series { label: "validation MSE".into(), points: val });
        }
        if let (Some(m), Some(first), Some(last)) = (self.mean_predictor_val_mse, self.history.first(), self.history.last()) {
            series.push(Series {
                label: "mean predictor (validation)".into(),
                points: vec![(first.epoch as f64, m), (last.epoch as f64, m)],
            });
        }
        let chart = LineChart {
            title: format!("critic {}: loss per epoch", self.critic.meta().model_id),
            x_desc: "epoch".into(),
            y_desc: "MSE".into(),
            series,
            log_x: false,
            markers: self.history.len() <= 1,
        };
        line_chart(&chart, svg, png)
    }

    /// Saves the critic at `weights` and its loss plot beside it
    /// (`<stem>.loss.svg` and `<stem>.loss.png`); returns the plot's paths.
    pub fn write(&self, weights: &Path) -> Result<(PathBuf, PathBuf)> {
        self.save(weights)?;
        let stem = weights.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "critic".into());
        let svg = weights.with_file_name(format!("{stem}.loss.svg"));
        let png = weights.with_file_name(format!("{stem}.loss.png"));
        self.plot(&svg, &png)?;
        Ok((svg, png))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ig_models::critic::CriticObjective;
    use rand::Rng;

    fn meta() -> CriticMeta {
        CriticMeta {
            model_id: "critic-synthetic".into(),
            policy_model_id: "policy-synthetic".into(),
            latent_dim: 0,
            hidden_width: 0,
            z_scale: 1.0,
            objective: CriticObjective::Reward,
            safety_budget: 0.0,
            training_penalty: 0.0,
            lagrange_lambda: 0.0,
            discount: 0.999,
            provenance: serde_json::json!({"data": "synthetic"}),
        }
    }

    /// 60 prompts x 8 samples; the target is a known function of the latent
    /// and z. Component 3 is huge (as in real LLM latents) and irrelevant.
    fn samples() -> Vec<CriticSample> {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let mut out = Vec::new();
        for group in 0..60u64 {
            for _ in 0..8 {
                let mut latent: Vec<f32> = (0..8).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                latent[3] = 500.0 + rng.random_range(-200.0f32..200.0);
                let z: f64 = rng.random_range(-1.0..1.0);
                let (a, b) = (latent[0] as f64, latent[1] as f64);
                let target = 3.0 * a - 2.0 * b + a * b + 1.5 * z + 10.0 + rng.random_range(-0.05..0.05);
                out.push(CriticSample { group, latent, z, target });
            }
        }
        out
    }

    #[test]
    fn split_keeps_groups_whole_and_is_seeded() {
        let (train, val) = split_by_group(samples(), 0.2, 7);
        assert_eq!(train.len() + val.len(), 480);
        let tg: BTreeSet<u64> = train.iter().map(|s| s.group).collect();
        let vg: BTreeSet<u64> = val.iter().map(|s| s.group).collect();
        assert!(tg.is_disjoint(&vg));
        assert_eq!(vg.len(), 12);
        let (_, again) = split_by_group(samples(), 0.2, 7);
        assert_eq!(val, again);
        let (_, other) = split_by_group(samples(), 0.2, 8);
        assert_ne!(val, other);
        let (all, none) = split_by_group(samples(), 0.0, 7);
        assert_eq!((all.len(), none.len()), (480, 0));
    }

    #[test]
    fn validation_error_ends_below_the_mean_predictor() -> Result<()> {
        let (train, val) = split_by_group(samples(), 0.2, 1);
        let opts = CriticTrainOptions { hidden_width: 32, learning_rate: 3e-3, epochs: 25, seed: 3, z_scale: 2.0, ..Default::default() };
        let t = train_critic(&train, &val, &opts, meta(), &ProgressBar::hidden())?;
        assert_eq!(t.history.len(), 25);
        let last = t.history.last().unwrap();
        let baseline = t.mean_predictor_val_mse.unwrap();
        let val_mse = last.val_mse.unwrap();
        assert!(val_mse < 0.1 * baseline, "validation MSE {val_mse} vs mean predictor {baseline}");
        assert!(last.train_mse < t.history[0].train_mse);
        // The folded critic predicts in target units: its own MSE on the
        // validation split is the one reported.
        let flat: Vec<f32> = val.iter().flat_map(|s| s.latent.clone()).collect();
        let z: Vec<f64> = val.iter().map(|s| s.z).collect();
        let pred = t.critic.evaluate(&flat, &z)?;
        let mse = pred.iter().zip(&val).map(|(p, s)| (*p as f64 - s.target).powi(2)).sum::<f64>() / val.len() as f64;
        assert!((mse - val_mse).abs() < 1e-3 * val_mse.max(1.0), "{mse} vs {val_mse}");
        let m = t.critic.meta();
        assert_eq!((m.latent_dim, m.hidden_width, m.z_scale), (8, 32, 2.0));
        assert_eq!(m.provenance["data"], "synthetic");
        assert_eq!(m.provenance["training"]["val_samples"], val.len());
        assert!(m.provenance["training"]["mean_predictor_val_mse"].as_f64().unwrap() > 0.0);

        // Saved and plotted.
        let dir = tempfile::tempdir()?;
        let weights = dir.path().join("critic.safetensors");
        let (svg, png) = t.write(&weights)?;
        let back = Critic::load(&weights, &Device::Cpu)?;
        assert_eq!(back.evaluate(&flat, &z)?, pred);
        assert!(std::fs::read_to_string(svg)?.contains("<svg"));
        assert_eq!(&std::fs::read(png)?[1..4], b"PNG");
        Ok(())
    }

    #[test]
    fn refuses_overlapping_splits_and_ragged_latents() {
        let s = samples();
        let err = train_critic(&s[..16], &s[..8], &CriticTrainOptions::default(), meta(), &ProgressBar::hidden()).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let mut bad = s[..16].to_vec();
        bad[5].latent.pop();
        let err = train_critic(&bad, &[], &CriticTrainOptions::default(), meta(), &ProgressBar::hidden()).unwrap_err();
        assert!(err.to_string().contains("train[5].latent"), "{err}");
    }
}
