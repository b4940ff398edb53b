//! `inferenceguard train-head cost|reward`: trains a demo score head on frozen MiniLM
//! features (the command lives in `ig_training::cli`; see `docs/models.md`).

pub use ig_training::cli::{run, TrainHeadArgs};
