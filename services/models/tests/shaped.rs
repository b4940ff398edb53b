//! Shaped random-weight checkpoints ([`ig_models::shaped_checkpoint`]): written tensor by
//! tensor with the shapes asked for, loaded by the policy and the scorer like any
//! Hugging Face checkpoint, and their tokenizer maps every generated token to one word a
//! scorer reads back as one token. Small shapes here; the paper-sized ones are the same
//! code with bigger numbers (`inferenceguard fixtures shaped`).

use std::path::Path;

use candle_core::Device;
use ig_core::policy::{ExtendRequest, PolicyBackend, PrefixSpec, Sampling, TextCodec, WorkControl};
use ig_core::scorer::{ScoreInput, ScoreRole, ScorerBackend};
use ig_models::causal_lm::WeightDtype;
use ig_models::policy::{CausalLmPolicy, PolicyOptions, DEFAULT_MAX_PREFILL_TOKENS};
use ig_models::scorer::{ScoreModel, ScorerOptions};
use ig_models::shaped_checkpoint::{write_shaped_checkpoint, ModelShape, ShapedDtype, ShapedHead, LLAMA3_8B, LLAMA_7B};
use safetensors::SafeTensors;

fn small(name: &'static str) -> ModelShape {
    ModelShape {
        name,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        vocab_size: 1000,
        max_position_embeddings: 512,
        rope_theta: 10_000.0,
    }
}

#[test]
fn paper_shapes_have_their_published_sizes() {
    // Meta-Llama-3-8B: 8.03e9 parameters; Llama-7B with a one-output score head: 6.61e9.
    assert_eq!(LLAMA3_8B.parameters(&ShapedHead::CausalLm), 8_030_261_248);
    assert_eq!(LLAMA_7B.parameters(&ShapedHead::Score("cost")), 6_607_347_712);
}

#[test]
fn a_shaped_checkpoint_has_the_shapes_and_dtype_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let shape = small("small");
    let seen = std::sync::Mutex::new(Vec::new());
    let path = write_shaped_checkpoint(&shape, ShapedHead::CausalLm, ShapedDtype::BF16, &dir.path().join("p"), 1, &|n, total| {
        seen.lock().unwrap().push((n, total))
    })
    .unwrap();
    let bytes = std::fs::read(path.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let count: usize = st.tensors().iter().map(|(_, t)| t.shape().iter().product::<usize>()).sum();
    assert_eq!(count as u64, shape.parameters(&ShapedHead::CausalLm));
    assert_eq!(st.tensor("model.layers.1.self_attn.k_proj.weight").unwrap().shape(), &[128, 256]);
    assert_eq!(st.tensor("lm_head.weight").unwrap().shape(), &[1000, 256]);
    assert!(st.tensors().iter().all(|(_, t)| t.dtype() == safetensors::Dtype::BF16));
    // Progress: once per tensor, in order, to the total.
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), st.len());
    assert_eq!(seen.last(), Some(&(st.len() as u64, st.len() as u64)));
    // Uniform within ±1/√fan-in, not constant; norms are ones.
    let values = |name: &str| -> Vec<f32> {
        st.tensor(name).unwrap().data().chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    };
    let q = values("model.layers.0.self_attn.q_proj.weight");
    let bound = 1.0 / 16.0 + 1e-3;
    assert!(q.iter().all(|v| v.abs() <= bound) && q.iter().any(|v| v.abs() > bound / 2.0));
    assert!(values("model.norm.weight").iter().all(|&v| v == 1.0));
}

fn load_policy(path: &Path) -> CausalLmPolicy {
    CausalLmPolicy::load(&PolicyOptions {
        model: path.to_path_buf(),
        dtype: WeightDtype::Native,
        device: Device::Cpu,
        prefix_cache_bytes: 0,
        max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS,
        sampling_on: Default::default(),
    })
    .unwrap()
}

#[test]
fn the_policy_and_the_scorers_load_and_agree_on_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = |_: u64, _: u64| {};
    let policy_dir = write_shaped_checkpoint(&small("policy"), ShapedHead::CausalLm, ShapedDtype::BF16, &dir.path().join("policy"), 1, &quiet).unwrap();
    let mut policy = load_policy(&policy_dir);
    assert_eq!(policy.info().vocab_size, 1000);
    let codec = policy.codec();
    let prompt = codec.tokenize("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    assert_eq!(prompt[0], 2, "<|im_start|> is one special token");
    let req = ExtendRequest {
        prefixes: vec![PrefixSpec { token_ids: prompt.clone(), children: 4, logit_biases: vec![], seed: None }],
        chunk_tokens: 12,
        sampling: Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed: 3 },
        stop_token_ids: vec![],
        max_sequence_tokens: 512,
        with_latents: true,
    };
    let mut out = Vec::new();
    policy.extend(&req, &WorkControl::new(None, &|| false), &mut |c| out.extend(c)).unwrap();
    assert_eq!(out.len(), 4);
    for c in &out {
        assert!(c.token_logprobs.iter().all(|l| l.is_finite()));
        assert_eq!(c.latent.as_ref().unwrap().len(), 256);
        // Each token is one word, and the words read back as the same tokens.
        let words: Vec<&str> = c.text.split_whitespace().collect();
        let kept: Vec<u32> = c.token_ids.iter().copied().take_while(|&t| t != 3).collect();
        assert_eq!(words.len(), kept.len(), "{:?} from {:?}", c.text, c.token_ids);
        assert_eq!(codec.tokenize(&c.text, false).unwrap(), kept);
    }

    for (role, score_type) in [(ScoreRole::Cost, "cost"), (ScoreRole::Reward, "reward")] {
        let scorer_dir =
            write_shaped_checkpoint(&small("scorer"), ShapedHead::Score(score_type), ShapedDtype::F16, &dir.path().join(score_type), 2, &quiet).unwrap();
        let mut model = ScoreModel::load(&ScorerOptions::new(&scorer_dir)).unwrap();
        assert_eq!(model.info().role, role);
        assert_eq!(model.info().architecture, "llama");
        let inputs: Vec<ScoreInput> = out
            .iter()
            .map(|c| ScoreInput { prompt: "Hello there".into(), response: c.text.clone(), token_scores: false, truncate: false })
            .collect();
        let scores = model.score(&inputs, &WorkControl::new(None, &|| false)).unwrap();
        for (s, c) in scores.iter().zip(&out) {
            assert!(s.score.is_finite());
            // The template's words plus one token per generated word.
            assert!(s.token_count > c.text.split_whitespace().count(), "{} tokens for {:?}", s.token_count, c.text);
        }
    }
}
