//! Every supported family against candle-transformers' own implementation of
//! it, on tiny random checkpoints written by `ig_models::tiny_checkpoint`:
//! safetensors against `qwen2` / `qwen3` / `mistral`, GGUF against
//! `quantized_qwen2` / `quantized_qwen3` / `quantized_llama` (llama.cpp writes
//! Mistral as `llama`), the two formats against each other, and the
//! contracts the policy relies on (batch = single, fork = fresh prefill,
//! seeded sampling reproducible) through `CausalLmPolicy`.

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ig_core::policy::{ExtendRequest, PolicyBackend, PrefixSpec, Sampling, TextCodec, WorkControl};
use ig_models::causal_lm::{Architecture, CausalLm, Positions, WeightDtype};
use ig_models::policy::{CausalLmPolicy, PolicyOptions, DEFAULT_MAX_PREFILL_TOKENS};
use ig_models::tiny_checkpoint::{tiny_config, write_tiny_checkpoint, TinyCheckpoint, TinySpec};

const FAMILIES: [Architecture; 3] = [Architecture::Qwen2, Architecture::Qwen3, Architecture::Mistral];
const PROMPT: [u32; 9] = [72, 101, 108, 108, 111, 260, 259, 97, 10];
const NEXT: [u32; 3] = [115, 97, 33];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn write(spec: &TinySpec) -> (tempfile::TempDir, TinyCheckpoint) {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_tiny_checkpoint(spec, dir.path()).unwrap();
    (dir, ckpt)
}

/// A candle-transformers model of the family: forward(ids (1, t), offset) -> last logits.
trait Reference {
    fn step(&mut self, ids: &[u32], offset: usize) -> Vec<f32>;
}

macro_rules! reference {
    ($t:ty) => {
        impl Reference for $t {
            fn step(&mut self, ids: &[u32], offset: usize) -> Vec<f32> {
                let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
                flat(&self.forward(&input, offset).unwrap())
            }
        }
    };
}
reference!(candle_transformers::models::qwen2::ModelForCausalLM);
reference!(candle_transformers::models::qwen3::ModelForCausalLM);
reference!(candle_transformers::models::mistral::Model);
reference!(candle_transformers::models::quantized_qwen2::ModelWeights);
reference!(candle_transformers::models::quantized_qwen3::ModelWeights);
reference!(candle_transformers::models::quantized_llama::ModelWeights);

fn safetensors_reference(spec: &TinySpec, ckpt: &TinyCheckpoint) -> Box<dyn Reference> {
    let cfg = tiny_config(spec);
    let vb = VarBuilder::from_tensors(ckpt.weights.clone(), DType::F32, &Device::Cpu);
    match spec.architecture {
        Architecture::Qwen2 => Box::new(
            candle_transformers::models::qwen2::ModelForCausalLM::new(&serde_json::from_value(cfg).unwrap(), vb).unwrap(),
        ),
        Architecture::Qwen3 => Box::new(
            candle_transformers::models::qwen3::ModelForCausalLM::new(&serde_json::from_value(cfg).unwrap(), vb).unwrap(),
        ),
        Architecture::Mistral => {
            Box::new(candle_transformers::models::mistral::Model::new(&serde_json::from_value(cfg).unwrap(), vb).unwrap())
        }
        Architecture::Llama => unreachable!("Llama is checked against transformers in reference.rs"),
    }
}

fn gguf_reference(spec: &TinySpec, ckpt: &TinyCheckpoint) -> Box<dyn Reference> {
    let mut file = std::fs::File::open(&ckpt.gguf).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let dev = Device::Cpu;
    match spec.architecture {
        Architecture::Qwen2 => Box::new(
            candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &dev).unwrap(),
        ),
        Architecture::Qwen3 => Box::new(
            candle_transformers::models::quantized_qwen3::ModelWeights::from_gguf(content, &mut file, &dev).unwrap(),
        ),
        _ => Box::new(
            candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &dev).unwrap(),
        ),
    }
}

/// Prefill then three single-token steps, ours against the reference.
fn check_against(ours: &CausalLm, reference: &mut dyn Reference, what: &str, tol: f32) {
    let mut cache = ours.new_cache();
    let got = flat(&ours.forward(&PROMPT, 1, &mut cache, Positions::Last).unwrap().logits);
    let want = reference.step(&PROMPT, 0);
    let d = max_abs_diff(&got, &want);
    assert!(d <= tol, "{what}: prefill logits differ by {d}");
    for (pos, &t) in (PROMPT.len()..).zip(NEXT.iter()) {
        let got = flat(&ours.forward(&[t], 1, &mut cache, Positions::Last).unwrap().logits);
        let want = reference.step(&[t], pos);
        let d = max_abs_diff(&got, &want);
        assert!(d <= tol, "{what}: decode logits at position {pos} differ by {d}");
    }
}

#[test]
fn safetensors_logits_match_candle_transformers_for_every_family() {
    for arch in FAMILIES {
        let spec = TinySpec::new(arch);
        let (_dir, ckpt) = write(&spec);
        let ours = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu).unwrap();
        assert_eq!(ours.config().architecture, arch);
        check_against(&ours, safetensors_reference(&spec, &ckpt).as_mut(), &format!("{} safetensors", arch.name()), 1e-4);
    }
}

#[test]
fn gguf_logits_match_candle_quantized_models_for_every_family() {
    for arch in FAMILIES {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let spec = TinySpec { gguf_dtype: dtype, ..TinySpec::new(arch) };
            let (_dir, ckpt) = write(&spec);
            let (ours, _) = CausalLm::from_gguf(&ckpt.gguf, WeightDtype::Native, &Device::Cpu).unwrap();
            let what = format!("{} GGUF {dtype:?}", arch.name());
            check_against(&ours, gguf_reference(&spec, &ckpt).as_mut(), &what, 1e-3);
        }
    }
}

#[test]
fn both_formats_of_one_checkpoint_compute_the_same_function() {
    // F32 GGUF: no quantization error, so only the rotation layouts differ
    // (llama's permuted Q/K rows against Hugging Face's half-split pairs).
    for arch in FAMILIES {
        let spec = TinySpec { gguf_dtype: GgmlDType::F32, ..TinySpec::new(arch) };
        let (_dir, ckpt) = write(&spec);
        let hf = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu).unwrap();
        let (gguf, _) = CausalLm::from_gguf(&ckpt.gguf, WeightDtype::Native, &Device::Cpu).unwrap();
        let run = |m: &CausalLm| flat(&m.forward(&PROMPT, 1, &mut m.new_cache(), Positions::All).unwrap().logits);
        let d = max_abs_diff(&run(&hf), &run(&gguf));
        assert!(d <= 1e-3, "{}: safetensors and GGUF differ by {d}", arch.name());
    }
}

#[test]
fn rows_batched_together_equal_each_alone_and_a_fork_equals_a_fresh_prefill() {
    for arch in FAMILIES {
        let (_dir, ckpt) = write(&TinySpec::new(arch));
        let m = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu).unwrap();
        let other: Vec<u32> = PROMPT.iter().rev().copied().collect();
        let both: Vec<u32> = PROMPT.iter().chain(other.iter()).copied().collect();
        let together = flat(&m.forward(&both, 2, &mut m.new_cache(), Positions::Last).unwrap().logits);
        let alone0 = flat(&m.forward(&PROMPT, 1, &mut m.new_cache(), Positions::Last).unwrap().logits);
        let alone1 = flat(&m.forward(&other, 1, &mut m.new_cache(), Positions::Last).unwrap().logits);
        let v = alone0.len();
        assert!(max_abs_diff(&together[..v], &alone0) <= 1e-4, "{}: row 0 batched", arch.name());
        assert!(max_abs_diff(&together[v..], &alone1) <= 1e-4, "{}: row 1 batched", arch.name());

        // Prefix once, fork into two rows, continue each with its own token.
        let mut cache = m.new_cache();
        m.forward(&PROMPT, 1, &mut cache, Positions::Last).unwrap();
        let mut forked = cache.expand(2, 0).unwrap();
        let cont = flat(&m.forward(&NEXT[..2], 2, &mut forked, Positions::Last).unwrap().logits);
        for (r, &t) in NEXT[..2].iter().enumerate() {
            let mut fresh: Vec<u32> = PROMPT.to_vec();
            fresh.push(t);
            let want = flat(&m.forward(&fresh, 1, &mut m.new_cache(), Positions::Last).unwrap().logits);
            let d = max_abs_diff(&cont[r * v..(r + 1) * v], &want);
            assert!(d <= 1e-4, "{}: forked row {r} differs from a fresh prefill by {d}", arch.name());
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_through_the_policy_for_every_family() {
    for arch in FAMILIES {
        let (_dir, ckpt) = write(&TinySpec::new(arch));
        for model in [ckpt.hf_dir.clone(), ckpt.gguf.clone()] {
            let opts = PolicyOptions {
                model: model.clone(),
                dtype: WeightDtype::Native,
                device: Device::Cpu,
                prefix_cache_bytes: 1 << 20,
                max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS,
                sampling_on: Default::default(),
            };
            let mut policy = CausalLmPolicy::load(&opts).unwrap();
            let codec = policy.tokenizer().clone();
            let prompt = codec.tokenize("<|im_start|>user\nsafe?<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
            assert_eq!(prompt[0], 259, "{}: <|im_start|> is one special token", model.display());
            let req = ExtendRequest {
                prefixes: vec![PrefixSpec { token_ids: prompt, children: 3, logit_biases: vec![], seed: None }],
                chunk_tokens: 6,
                sampling: Sampling { temperature: 1.0, top_p: 0.9, top_k: None, seed: 5 },
                stop_token_ids: vec![],
                max_sequence_tokens: 256,
                with_latents: true,
            };
            let run = |policy: &mut CausalLmPolicy, req: &ExtendRequest| {
                let mut out = Vec::new();
                policy.extend(req, &WorkControl::new(None, &|| false), &mut |c| out.extend(c)).unwrap();
                out.sort_by_key(|c| c.child_index);
                out.into_iter().map(|c| c.token_ids).collect::<Vec<_>>()
            };
            let first = run(&mut policy, &req);
            assert_eq!(first.len(), 3);
            assert_eq!(first, run(&mut policy, &req), "{}: same seed, same draws", model.display());
            let other = ExtendRequest { sampling: Sampling { seed: 6, ..req.sampling }, ..req.clone() };
            assert_ne!(first, run(&mut policy, &other), "{}: another seed draws otherwise", model.display());
        }
    }
}

#[test]
fn a_sliding_window_sees_only_the_last_keys() {
    // With one layer and relative rotary positions, the last position's logits
    // under a window of w equal those of a fresh run over the last w tokens.
    let w = 4;
    let spec = TinySpec { num_layers: 1, sliding_window: Some(w), ..TinySpec::new(Architecture::Mistral) };
    let (_dir, ckpt) = write(&spec);
    let m = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu).unwrap();
    assert_eq!(m.config().sliding_window, Some(w));
    let tail = &PROMPT[PROMPT.len() - w..];
    let want = flat(&m.forward(tail, 1, &mut m.new_cache(), Positions::Last).unwrap().logits);
    let prefill = flat(&m.forward(&PROMPT, 1, &mut m.new_cache(), Positions::Last).unwrap().logits);
    assert!(max_abs_diff(&prefill, &want) <= 1e-3, "prefill ignores the window");
    let mut cache = m.new_cache();
    m.forward(&PROMPT[..PROMPT.len() - 1], 1, &mut cache, Positions::Last).unwrap();
    let decode = flat(&m.forward(&PROMPT[PROMPT.len() - 1..], 1, &mut cache, Positions::Last).unwrap().logits);
    assert!(max_abs_diff(&decode, &want) <= 1e-3, "decoding ignores the window");
    let unwindowed = TinySpec { sliding_window: None, ..spec };
    let (_d2, c2) = write(&unwindowed);
    let full = CausalLm::from_safetensors_dir(&c2.hf_dir, WeightDtype::F32, &Device::Cpu).unwrap();
    let all = flat(&full.forward(&PROMPT, 1, &mut full.new_cache(), Positions::Last).unwrap().logits);
    assert!(max_abs_diff(&all, &want) > 1e-3, "the test must tell a window from none");
}

#[test]
fn unsupported_architectures_and_broken_files_fail_with_one_line_naming_them() {
    let (_dir, ckpt) = write(&TinySpec::new(Architecture::Qwen2));
    // config.json naming another family.
    let cfg_path = ckpt.hf_dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "gemma2".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = CausalLm::from_safetensors_dir(&ckpt.hf_dir, WeightDtype::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("gemma2") && e.contains("llama, mistral, qwen2, qwen3") && e.contains("config.json"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    // A GGUF without a required key, and one without a tensor.
    let mut file = std::fs::File::open(&ckpt.gguf).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let rewrite = |name: &str, drop_key: Option<&str>, drop_tensor: Option<&str>, arch: Option<&str>| {
        let path = ckpt.gguf.with_file_name(name);
        let mut meta: Vec<(String, gguf_file::Value)> =
            content.metadata.iter().filter(|(k, _)| Some(k.as_str()) != drop_key).map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(a) = arch {
            meta.retain(|(k, _)| k != "general.architecture");
            meta.push(("general.architecture".into(), gguf_file::Value::String(a.into())));
        }
        let mut f = std::fs::File::open(&ckpt.gguf).unwrap();
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
            .tensor_infos
            .keys()
            .filter(|k| Some(k.as_str()) != drop_tensor)
            .map(|k| (k.clone(), content.tensor(&mut f, k, &Device::Cpu).unwrap()))
            .collect();
        let mut out = std::fs::File::create(&path).unwrap();
        let m: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut out, &m, &t).unwrap();
        path
    };
    let cases = [
        (rewrite("broken-key.gguf", Some("qwen2.block_count"), None, None), "qwen2.block_count"),
        (rewrite("broken-tensor.gguf", None, Some("blk.1.attn_q.weight"), None), "blk.1.attn_q.weight"),
        (rewrite("broken-arch.gguf", None, None, Some("gemma3")), "gemma3"),
    ];
    for (path, needle) in cases {
        let e = CausalLm::from_gguf(&path, WeightDtype::Native, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains(path.file_name().unwrap().to_str().unwrap()), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn qwen25_coder_answers_paris_greedily_when_the_asset_is_cached() {
    // The 1.1 GB opt-in asset is not fetched by tests: `inferenceguard assets fetch qwen2.5-coder-1.5b`.
    let Ok(cache) = ig_assets::AssetCache::from_env() else { return };
    let Some(status) = cache.list().into_iter().find(|s| s.id == ig_assets::QWEN25_CODER_1_5B) else { return };
    if status.state != ig_assets::AssetState::Cached {
        eprintln!("skipped: {} is not in the asset cache", ig_assets::QWEN25_CODER_1_5B);
        return;
    }
    let path = cache.joined_file(ig_assets::QWEN25_CODER_1_5B).unwrap();
    let (model, codec) = ig_models::policy::load_with_tokenizer(&path, WeightDtype::Q8_0, &Device::Cpu).unwrap();
    assert_eq!(model.config().architecture, Architecture::Qwen2);
    let chat = [ig_core::policy::ChatMessage { role: "user".into(), content: "What is the capital of France?".into() }];
    let prompt = codec.render_chat(&chat, true).unwrap();
    let mut ids = codec.tokenize(&prompt, false).unwrap();
    let start = ids.len();
    let mut cache_kv = model.new_cache();
    let mut feed = ids.clone();
    for _ in 0..16 {
        let logits = flat(&model.forward(&feed, 1, &mut cache_kv, Positions::Last).unwrap().logits);
        let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        if codec.eos_ids().contains(&next) {
            break;
        }
        ids.push(next);
        feed = vec![next];
    }
    let answer = codec.detokenize(&ids[start..], true).unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
}

#[test]
fn the_qwen2_tokenizer_rebuilt_from_gguf_matches_transformers_when_the_asset_is_cached() {
    let Ok(cache) = ig_assets::AssetCache::from_env() else { return };
    let cached = cache.list().into_iter().any(|s| s.id == ig_assets::QWEN25_CODER_1_5B && s.state == ig_assets::AssetState::Cached);
    if !cached {
        eprintln!("skipped: {} is not in the asset cache", ig_assets::QWEN25_CODER_1_5B);
        return;
    }
    let path = cache.joined_file(ig_assets::QWEN25_CODER_1_5B).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let codec = ig_models::tokenizer::TokenizerCodec::from_gguf(&content.metadata).unwrap();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen25_tokenizer_golden.json"))
            .unwrap(),
    )
    .unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(codec.tokenize(text, false).unwrap(), want, "{text:?}");
    }
}
