//! Fitting a linear head with candle-nn: logistic loss (cost) or Bradley–Terry loss (reward),
//! AdamW, explicit L2 on the weights, seeded mini-batches, a progress bar and a loss curve.

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Hyper-parameters of one fit.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// L2 penalty `l2 * ||w||²` added to the mean loss (bias not penalised).
    pub l2: f64,
    /// Examples (or pairs) per step.
    pub batch_size: usize,
    /// Seed of the mini-batch order.
    pub seed: u64,
}

/// One point of the loss curve: mean data loss (no L2 term) after an epoch.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Loss on the training set.
    pub train: f64,
    /// Loss on the held-out set (measured only, never used to choose anything).
    pub held_out: Option<f64>,
}

/// A fitted linear head.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// One weight per feature.
    pub weight: Vec<f32>,
    /// The bias (before any threshold folding).
    pub bias: f32,
    /// Loss per epoch.
    pub curve: Vec<CurvePoint>,
}

/// A labelled design matrix for the logistic loss.
pub struct Binary<'a> {
    /// Rows of features.
    pub x: &'a [Vec<f32>],
    /// 1 = positive (unsafe).
    pub y: &'a [bool],
}

/// Preference pairs for the Bradley–Terry loss.
pub struct Pairs<'a> {
    /// Features of the chosen side.
    pub chosen: &'a [Vec<f32>],
    /// Features of the rejected side.
    pub rejected: &'a [Vec<f32>],
}

fn matrix(rows: &[Vec<f32>], dim: usize, dev: &Device) -> Result<Tensor> {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), dim), dev)?)
}

/// softplus(z) = log(1 + e^z), stably: relu(z) + log(1 + e^{-|z|}).
fn softplus(z: &Tensor) -> Result<Tensor> {
    let tail = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((z.relu()? + tail)?)
}

struct Head {
    w: Var,
    b: Var,
}

impl Head {
    fn zeros(dim: usize, dev: &Device) -> Result<Self> {
        Ok(Self { w: Var::zeros((1, dim), DType::F32, dev)?, b: Var::zeros(1, DType::F32, dev)? })
    }
    fn linear(&self) -> Linear {
        Linear::new(self.w.as_tensor().clone(), Some(self.b.as_tensor().clone()))
    }
    /// Scores of rows of `x`: shape (n,).
    fn scores(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.linear().forward(x)?.squeeze(D::Minus1)?)
    }
    fn l2(&self) -> Result<Tensor> {
        Ok(self.w.as_tensor().sqr()?.sum_all()?)
    }
    fn export(&self) -> Result<(Vec<f32>, f32)> {
        let w = self.w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let b = self.b.as_tensor().to_vec1::<f32>()?[0];
        Ok((w, b))
    }
}

fn bar(epochs: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] epoch {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("training {what}"));
    bar
}

fn optimizer(head: &Head, cfg: &TrainConfig) -> Result<AdamW> {
    Ok(AdamW::new(
        vec![head.w.clone(), head.b.clone()],
        ParamsAdamW { lr: cfg.lr, weight_decay: 0.0, ..Default::default() },
    )?)
}

/// Class-balanced logistic regression: each class carries half the total weight, so the
/// head is not pulled toward the majority class.
pub fn fit_logistic(train: Binary<'_>, held_out: Option<Binary<'_>>, cfg: &TrainConfig, what: &str) -> Result<Fitted> {
    let dev = Device::Cpu;
    let dim = train.x.first().map(|r| r.len()).unwrap_or(0);
    anyhow::ensure!(dim > 0 && train.x.len() == train.y.len(), "empty or ragged training set");
    let n_pos = train.y.iter().filter(|&&y| y).count().max(1) as f32;
    let n_neg = train.y.iter().filter(|&&y| !y).count().max(1) as f32;
    let n = train.y.len() as f32;
    let weights: Vec<f32> = train.y.iter().map(|&y| if y { n / (2.0 * n_pos) } else { n / (2.0 * n_neg) }).collect();
    let to_t = |b: &Binary<'_>| -> Result<(Tensor, Tensor)> {
        let y: Vec<f32> = b.y.iter().map(|&y| if y { 1.0 } else { 0.0 }).collect();
        Ok((matrix(b.x, dim, &dev)?, Tensor::new(y, &dev)?))
    };
    let (x, y) = to_t(&train)?;
    let wt = Tensor::new(weights, &dev)?;
    let held = held_out.as_ref().map(to_t).transpose()?;

    let head = Head::zeros(dim, &dev)?;
    let mut opt = optimizer(&head, cfg)?;
    // Weighted mean of softplus(s) - y s.
    let loss_of = |x: &Tensor, y: &Tensor, w: Option<&Tensor>| -> Result<Tensor> {
        let s = head.scores(x)?;
        let l = (softplus(&s)? - (y * &s)?)?;
        Ok(match w {
            Some(w) => ((l * w)?.sum_all()? / w.sum_all()?.to_scalar::<f32>()? as f64)?,
            None => l.mean_all()?,
        })
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..train.y.len() as u32).collect();
    let mut curve = Vec::with_capacity(cfg.epochs);
    let pb = bar(cfg.epochs, what);
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size.max(1)) {
            let idx = Tensor::new(batch, &dev)?;
            let (xb, yb, wb) = (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?, wt.index_select(&idx, 0)?);
            let loss = (loss_of(&xb, &yb, Some(&wb))? + (head.l2()? * cfg.l2)?)?;
            opt.backward_step(&loss)?;
        }
        let tr = loss_of(&x, &y, Some(&wt))?.to_scalar::<f32>()? as f64;
        let ho = match &held {
            Some((hx, hy)) => Some(loss_of(hx, hy, None)?.to_scalar::<f32>()? as f64),
            None => None,
        };
        pb.set_message(format!("loss {tr:.4}"));
        pb.inc(1);
        curve.push(CurvePoint { epoch, train: tr, held_out: ho });
    }
    pb.finish();
    let (weight, bias) = head.export()?;
    Ok(Fitted { weight, bias, curve })
}

/// Bradley–Terry: minimise the mean of `-log σ(s_chosen - s_rejected)`. The bias cancels
/// in the loss; it is set afterwards so that the training items' mean score is 0.
pub fn fit_bradley_terry(train: Pairs<'_>, held_out: Option<Pairs<'_>>, cfg: &TrainConfig, what: &str) -> Result<Fitted> {
    let dev = Device::Cpu;
    let dim = train.chosen.first().map(|r| r.len()).unwrap_or(0);
    anyhow::ensure!(dim > 0 && train.chosen.len() == train.rejected.len(), "empty or ragged pairs");
    let to_t = |p: &Pairs<'_>| -> Result<(Tensor, Tensor)> {
        Ok((matrix(p.chosen, dim, &dev)?, matrix(p.rejected, dim, &dev)?))
    };
    let (xc, xr) = to_t(&train)?;
    let held = held_out.as_ref().map(to_t).transpose()?;
    let head = Head::zeros(dim, &dev)?;
    let mut opt = optimizer(&head, cfg)?;
    let loss_of = |c: &Tensor, r: &Tensor| -> Result<Tensor> {
        let margin = (head.scores(c)? - head.scores(r)?)?;
        Ok(softplus(&margin.neg()?)?.mean_all()?)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..train.chosen.len() as u32).collect();
    let mut curve = Vec::with_capacity(cfg.epochs);
    let pb = bar(cfg.epochs, what);
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size.max(1)) {
            let idx = Tensor::new(batch, &dev)?;
            let loss = (loss_of(&xc.index_select(&idx, 0)?, &xr.index_select(&idx, 0)?)? + (head.l2()? * cfg.l2)?)?;
            opt.backward_step(&loss)?;
        }
        let tr = loss_of(&xc, &xr)?.to_scalar::<f32>()? as f64;
        let ho = match &held {
            Some((c, r)) => Some(loss_of(c, r)?.to_scalar::<f32>()? as f64),
            None => None,
        };
        pb.set_message(format!("loss {tr:.4}"));
        pb.inc(1);
        curve.push(CurvePoint { epoch, train: tr, held_out: ho });
    }
    pb.finish();
    let (weight, _) = head.export()?;
    // Centre: mean score over every training item (both sides) is 0.
    let n = (2 * train.chosen.len()) as f32;
    let mean: f32 = train
        .chosen
        .iter()
        .chain(train.rejected)
        .map(|x| x.iter().zip(&weight).map(|(a, b)| a * b).sum::<f32>())
        .sum::<f32>()
        / n;
    Ok(Fitted { weight, bias: -mean, curve })
}

/// `w · x + b`.
pub fn score(weight: &[f32], bias: f32, x: &[f32]) -> f32 {
    weight.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + bias
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrainConfig {
        TrainConfig { epochs: 200, lr: 0.05, l2: 1e-4, batch_size: 8, seed: 1 }
    }

    #[test]
    fn logistic_separates_a_separable_set() {
        // Positive iff x0 > x1.
        let x: Vec<Vec<f32>> = (0..40).map(|i| vec![(i % 7) as f32 / 7.0, (i % 5) as f32 / 5.0]).collect();
        let y: Vec<bool> = x.iter().map(|r| r[0] > r[1]).collect();
        let f = fit_logistic(Binary { x: &x, y: &y }, None, &cfg(), "test").unwrap();
        let acc = x.iter().zip(&y).filter(|(r, &l)| (score(&f.weight, f.bias, r) > 0.0) == l).count();
        assert!(acc >= 38, "accuracy {acc}/40");
        assert!(f.curve.last().unwrap().train < f.curve[0].train);
        // Seeded: same result twice.
        let g = fit_logistic(Binary { x: &x, y: &y }, None, &cfg(), "test").unwrap();
        assert_eq!(f.weight, g.weight);
    }

    #[test]
    fn bradley_terry_learns_the_preferred_direction() {
        let chosen: Vec<Vec<f32>> = (0..20).map(|i| vec![1.0 + i as f32 * 0.1, 0.5]).collect();
        let rejected: Vec<Vec<f32>> = (0..20).map(|i| vec![i as f32 * 0.1, 0.5]).collect();
        let f = fit_bradley_terry(Pairs { chosen: &chosen, rejected: &rejected }, None, &cfg(), "test").unwrap();
        assert!(f.weight[0] > 0.0);
        for (c, r) in chosen.iter().zip(&rejected) {
            assert!(score(&f.weight, f.bias, c) > score(&f.weight, f.bias, r));
        }
        let mean: f32 = chosen.iter().chain(&rejected).map(|x| score(&f.weight, f.bias, x)).sum::<f32>() / 40.0;
        assert!(mean.abs() < 1e-4);
    }
}
