//! The CUDA path against the CPU, on the real SmolLM2 model (built only with
//! `--features cuda`; see docs/gpu.md).
//!
//! Each test skips with a message when no CUDA device can be opened (a CPU
//! machine running a CUDA build against the stub driver of
//! `scripts/build-cuda`). With a GPU:
//!
//! - `cuda_forward_matches_cpu`: a prefill (logits and hidden states at every
//!   position) and 32 decode steps on the KV cache, teacher-forced with the CPU
//!   f32 greedy tokens, for each weight dtype on CUDA against the CPU; and a
//!   free-running greedy decode on CUDA against the CPU's tokens.
//! - `cuda_extend_matches_cpu`: `CausalLmPolicy::extend` (seeded sampling,
//!   latents, the prefix cache, a second chunk) on CUDA against the CPU.
//! - `cuda_throughput` (ignored; `--include-ignored`): the workload of
//!   `inferenceguard bench policy` (prefill of B prompts of 64 tokens, then 16
//!   decode steps of B rows) on CUDA and on the machine's CPU.
//!
//! Every number is printed (run with `--nocapture`); set `IG_CUDA_REPORT` to
//! a directory to also get them as JSON lines there.
#![cfg(feature = "cuda")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ig_core::policy::{Candidate, ExtendRequest, PolicyBackend, PrefixSpec, Sampling, TextCodec, WorkControl};
use ig_models::causal_lm::{CausalLm, Positions, WeightDtype};
use ig_models::policy::{CausalLmPolicy, PolicyOptions, DEFAULT_MAX_PREFILL_TOKENS};

fn smollm2() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ig_assets::smollm2_gguf().unwrap_or_else(|e| panic!("the SmolLM2 asset is needed (inferenceguard assets fetch smollm2): {e}"))
    })
}

/// CUDA device 0, or `None` (with a message) when there is none.
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let e = e.to_string();
            eprintln!("SKIPPED: no usable CUDA device 0 ({}); this test needs a GPU", e.lines().next().unwrap_or_default());
            None
        }
    }
}

fn report(name: &str, line: serde_json::Value) {
    println!("{name}: {line}");
    if let Some(dir) = std::env::var_os("IG_CUDA_REPORT") {
        let path = Path::new(&dir).join(format!("{name}.jsonl"));
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// ||a - b|| / ||b||.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    (num / den.max(1e-12)) as f32
}

fn argmax_rows(v: &[f32], vocab: usize) -> Vec<u32> {
    v.chunks(vocab)
        .map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap())
        .collect()
}

/// log-softmax of each row.
fn log_softmax_rows(v: &[f32], vocab: usize) -> Vec<f32> {
    v.chunks(vocab)
        .flat_map(|r| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            r.iter().map(move |x| x - lse).collect::<Vec<_>>()
        })
        .collect()
}

const PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nExplain in two sentences why the sky is blue.<|im_end|>\n<|im_start|>assistant\n";
const STEPS: usize = 32;

/// What one (device, dtype) computes on the fixed workload.
struct Trace {
    /// Prefill logits and hidden states at every position.
    prefill_logits: Vec<f32>,
    prefill_hidden: Vec<f32>,
    /// Per decode step (teacher-forced with `forced`), the logits and hidden state.
    step_logits: Vec<Vec<f32>>,
    step_hidden: Vec<Vec<f32>>,
    /// Free-running greedy tokens.
    greedy: Vec<u32>,
}

fn trace(model: &CausalLm, prompt: &[u32], forced: Option<&[u32]>) -> Trace {
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache();
    let out = model.forward(prompt, 1, &mut cache, Positions::All).unwrap();
    let prefill_logits = to_vec(&out.logits);
    let prefill_hidden = to_vec(&out.hidden);
    let mut greedy_cache = cache.select_rows(&[0]).unwrap();
    let first = *argmax_rows(&prefill_logits[prefill_logits.len() - vocab..], vocab).first().unwrap();

    // Free-running greedy decode.
    let mut greedy = vec![first];
    for _ in 1..STEPS {
        let out = model.forward(&[*greedy.last().unwrap()], 1, &mut greedy_cache, Positions::Last).unwrap();
        greedy.push(argmax_rows(&to_vec(&out.logits), vocab)[0]);
    }

    // Teacher-forced decode: the same tokens on every device.
    let forced = forced.unwrap_or(&greedy).to_vec();
    let (mut step_logits, mut step_hidden) = (Vec::new(), Vec::new());
    for &t in &forced[..STEPS - 1] {
        let out = model.forward(&[t], 1, &mut cache, Positions::Last).unwrap();
        step_logits.push(to_vec(&out.logits));
        step_hidden.push(to_vec(&out.hidden));
    }
    Trace { prefill_logits, prefill_hidden, step_logits, step_hidden, greedy }
}

fn first_divergence(a: &[u32], b: &[u32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn cuda_forward_matches_cpu() {
    let Some(cuda) = gpu() else { return };
    let codec = {
        let opts = PolicyOptions { model: smollm2().to_path_buf(), dtype: WeightDtype::F32, device: Device::Cpu, prefix_cache_bytes: 0, max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS, sampling_on: Default::default() };
        CausalLmPolicy::load(&opts).unwrap().tokenizer().clone()
    };
    let prompt = codec.tokenize(PROMPT, false).unwrap();
    let cpu_f32 = CausalLm::from_gguf(smollm2(), WeightDtype::F32, &Device::Cpu).unwrap().0;
    let vocab = cpu_f32.config().vocab_size;
    let reference = trace(&cpu_f32, &prompt, None);
    let forced = reference.greedy.clone();
    println!("prompt: {} tokens; CPU f32 greedy: {:?}", prompt.len(), codec.detokenize(&forced, false).unwrap());

    // (dtype on CUDA, dtype of its CPU reference, bound on the relative logit error)
    let cases = [
        (WeightDtype::F32, WeightDtype::F32, 1e-4f32),
        // Q4_1 against Q4_1: the CPU kernel quantizes activations to 8 bits,
        // CUDA runs prefill (and batches) on dequantized weights: the two differ
        // by about what the CPU's differs from f32 (both are reported).
        (WeightDtype::Native, WeightDtype::Native, 2e-1),
        // Q8_0 against Q8_0: each is ~6e-2 from f32 (measured on an H100); apart, 7e-2.
        (WeightDtype::Q8_0, WeightDtype::Q8_0, 1e-1),
        (WeightDtype::BF16, WeightDtype::F32, 1e-1),
        (WeightDtype::F16, WeightDtype::F32, 5e-2),
    ];
    let mut failures = Vec::new();
    for (dtype, ref_dtype, bound) in cases {
        let want = if ref_dtype == WeightDtype::F32 {
            None
        } else {
            let m = CausalLm::from_gguf(smollm2(), ref_dtype, &Device::Cpu).unwrap().0;
            Some(trace(&m, &prompt, Some(&forced)))
        };
        let want = want.as_ref().unwrap_or(&reference);
        let model = CausalLm::from_gguf(smollm2(), dtype, &cuda).unwrap().0;
        let got = trace(&model, &prompt, Some(&forced));
        let step_logits_got: Vec<f32> = got.step_logits.concat();
        let step_logits_want: Vec<f32> = want.step_logits.concat();
        let step_hidden_got: Vec<f32> = got.step_hidden.concat();
        let step_hidden_want: Vec<f32> = want.step_hidden.concat();
        let lp_got = log_softmax_rows(&step_logits_got, vocab);
        let lp_want = log_softmax_rows(&step_logits_want, vocab);
        let prefill_argmax_agree = argmax_rows(&got.prefill_logits, vocab)
            .iter()
            .zip(argmax_rows(&want.prefill_logits, vocab))
            .filter(|(a, b)| **a == *b)
            .count();
        let step_argmax_agree = argmax_rows(&step_logits_got, vocab)
            .iter()
            .zip(argmax_rows(&step_logits_want, vocab))
            .filter(|(a, b)| **a == *b)
            .count();
        let prefill_rel = rel_err(&got.prefill_logits, &want.prefill_logits);
        let step_rel = rel_err(&step_logits_got, &step_logits_want);
        let step_logits_f32: Vec<f32> = reference.step_logits.concat();
        let line = serde_json::json!({
            "vs_cpu_f32_prefill_logits_rel": rel_err(&got.prefill_logits, &reference.prefill_logits),
            "vs_cpu_f32_decode_logits_rel": rel_err(&step_logits_got, &step_logits_f32),
            "reference_vs_cpu_f32_prefill_logits_rel": rel_err(&want.prefill_logits, &reference.prefill_logits),
            "reference_vs_cpu_f32_decode_logits_rel": rel_err(&step_logits_want, &step_logits_f32),
            "cuda_dtype": model.weight_dtype(),
            "reference": format!("cpu {}", if ref_dtype == WeightDtype::F32 { "f32".to_string() } else { format!("{ref_dtype:?}").to_lowercase() }),
            "prompt_tokens": prompt.len(),
            "prefill_logits_max_abs": max_abs_diff(&got.prefill_logits, &want.prefill_logits),
            "prefill_logits_rel": prefill_rel,
            "prefill_hidden_max_abs": max_abs_diff(&got.prefill_hidden, &want.prefill_hidden),
            "prefill_hidden_rel": rel_err(&got.prefill_hidden, &want.prefill_hidden),
            "prefill_argmax_agree": format!("{prefill_argmax_agree}/{}", prompt.len()),
            "decode_steps": STEPS - 1,
            "decode_logits_max_abs": max_abs_diff(&step_logits_got, &step_logits_want),
            "decode_logits_rel": step_rel,
            "decode_logprobs_max_abs": max_abs_diff(&lp_got, &lp_want),
            "decode_hidden_max_abs": max_abs_diff(&step_hidden_got, &step_hidden_want),
            "decode_hidden_rel": rel_err(&step_hidden_got, &step_hidden_want),
            "decode_argmax_agree": format!("{step_argmax_agree}/{}", STEPS - 1),
            "greedy_first_divergence_vs_reference": first_divergence(&got.greedy, &want.greedy),
            "greedy_first_divergence_vs_cpu_f32": first_divergence(&got.greedy, &reference.greedy),
            "greedy_text": codec.detokenize(&got.greedy, false).unwrap(),
        });
        report("cuda_forward", line);
        // Written so that NaN fails.
        if !(prefill_rel <= bound && step_rel <= bound) {
            failures.push(format!("{dtype:?}: relative logit error prefill {prefill_rel:.2e}, decode {step_rel:.2e} > {bound:.0e}"));
        }
        if dtype == WeightDtype::F32 && got.greedy != reference.greedy {
            failures.push(format!("f32: greedy tokens diverge at {:?}", first_divergence(&got.greedy, &reference.greedy)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn extend_all(policy: &mut CausalLmPolicy, req: &ExtendRequest) -> Vec<Candidate> {
    let mut out = Vec::new();
    policy.extend(req, &WorkControl::new(None, &|| false), &mut |c| out.extend(c)).unwrap();
    out.sort_by_key(|c| (c.prefix_index, c.child_index));
    out
}

/// Compares two extensions candidate by candidate; returns the number of
/// candidates whose tokens agree.
fn compare_extend(label: &str, got: &[Candidate], want: &[Candidate]) -> usize {
    assert_eq!(got.len(), want.len());
    let (mut same, mut lp_abs, mut lat_abs, mut lat_rel, mut diverge) = (0, 0f32, 0f32, 0f32, Vec::new());
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.prefix_index, g.child_index), (w.prefix_index, w.child_index));
        // Log-probs are comparable up to the first differing token.
        let n = first_divergence(&g.token_ids, &w.token_ids).unwrap_or(g.token_ids.len().min(w.token_ids.len()));
        lp_abs = lp_abs.max(max_abs_diff(&g.token_logprobs[..n], &w.token_logprobs[..n]));
        if g.token_ids == w.token_ids {
            same += 1;
            if let (Some(a), Some(b)) = (&g.latent, &w.latent) {
                lat_abs = lat_abs.max(max_abs_diff(a, b));
                lat_rel = lat_rel.max(rel_err(a, b));
            }
        } else {
            diverge.push(n);
        }
    }
    report(
        "cuda_extend",
        serde_json::json!({
            "case": label,
            "candidates": got.len(),
            "tokens_identical": same,
            "divergence_at_token": diverge,
            "logprobs_max_abs_before_divergence": lp_abs,
            "latent_max_abs": lat_abs,
            "latent_max_rel": lat_rel,
        }),
    );
    same
}

#[test]
fn cuda_extend_matches_cpu() {
    let Some(cuda) = gpu() else { return };
    let load = |dtype, device: &Device| {
        CausalLmPolicy::load(&PolicyOptions { model: smollm2().to_path_buf(), dtype, device: device.clone(), prefix_cache_bytes: 256 << 20, max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS, sampling_on: Default::default() })
            .unwrap()
    };
    let mut cpu = load(WeightDtype::F32, &Device::Cpu);
    let codec = cpu.tokenizer().clone();
    let a = codec.tokenize("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let b = codec.tokenize("<|im_start|>user\nWrite a haiku about rivers.<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let req = ExtendRequest {
        prefixes: vec![
            PrefixSpec { token_ids: a.clone(), children: 8, logit_biases: vec![], seed: None },
            PrefixSpec { token_ids: b.clone(), children: 8, logit_biases: vec![(11, -5.0)], seed: None },
        ],
        chunk_tokens: 32,
        sampling: Sampling { temperature: 1.0, top_p: 0.95, top_k: None, seed: 7 },
        stop_token_ids: vec![],
        max_sequence_tokens: 2048,
        with_latents: true,
    };
    let want = extend_all(&mut cpu, &req);
    // A second chunk from two of the first's candidates (prefix cache hits).
    let second = |first: &[Candidate]| ExtendRequest {
        prefixes: first
            .iter()
            .filter(|c| c.child_index == 0)
            .map(|c| {
                let mut t = if c.prefix_index == 0 { a.clone() } else { b.clone() };
                t.extend_from_slice(&c.token_ids);
                PrefixSpec { token_ids: t, children: 4, logit_biases: vec![], seed: None }
            })
            .collect(),
        chunk_tokens: 16,
        ..req.clone()
    };
    let want2 = extend_all(&mut cpu, &second(&want));

    let mut gpu_f32 = load(WeightDtype::F32, &cuda);
    let got = extend_all(&mut gpu_f32, &req);
    let same = compare_extend("f32 cuda vs f32 cpu, chunk 1 (2 prefixes x 8 children x 32 tokens)", &got, &want);
    // The second chunk from the CPU's candidates, so both start from the same prefixes.
    let got2 = extend_all(&mut gpu_f32, &second(&want));
    let same2 = compare_extend("f32 cuda vs f32 cpu, chunk 2 (2 prefixes x 4 children x 16 tokens, prefix cache)", &got2, &want2);

    for dtype in [WeightDtype::BF16, WeightDtype::Native] {
        let mut p = load(dtype, &cuda);
        let got = extend_all(&mut p, &req);
        compare_extend(&format!("{dtype:?} cuda vs f32 cpu, chunk 1").to_lowercase(), &got, &want);
    }
    // Sampling draws the same uniforms on both devices: f32 differences of
    // ~1e-6 flip a token only when a draw falls on a boundary.
    assert!(same * 10 >= want.len() * 9, "only {same}/{} candidates drew the same tokens", want.len());
    assert!(same2 * 10 >= want2.len() * 9, "only {same2}/{} second-chunk candidates drew the same tokens", want2.len());
}

/// One run of `bench policy`'s workload; returns (prefill s, decode s).
fn one_run(model: &CausalLm, batch: usize, prompt: &[u32], steps: usize) -> (f64, f64) {
    let device = model.device().clone();
    let mut cache = model.new_cache();
    let tokens: Vec<u32> = (0..batch).flat_map(|_| prompt.iter().copied()).collect();
    device.synchronize().unwrap();
    let t0 = Instant::now();
    let out = model.forward(&tokens, batch, &mut cache, Positions::Last).unwrap();
    // The policy copies the logits to the host to sample: so does this.
    let _ = to_vec(&out.logits);
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..steps {
        let next: Vec<u32> = (0..batch).map(|r| (100 + r * 7 + step * 13) as u32 % 10_000 + 100).collect();
        let out = model.forward(&next, batch, &mut cache, Positions::Last).unwrap();
        let _ = to_vec(&out.logits);
    }
    (prefill, t1.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "a benchmark: run with --include-ignored on a GPU machine"]
fn cuda_throughput() {
    let Some(cuda) = gpu() else { return };
    let env_list = |k: &str, d: &str| -> Vec<String> {
        std::env::var(k).unwrap_or_else(|_| d.into()).split(',').map(|s| s.trim().to_string()).collect()
    };
    let batches: Vec<usize> = env_list("IG_BENCH_BATCHES", "1,32,128").iter().map(|s| s.parse().unwrap()).collect();
    let (prompt_tokens, steps, runs) = (64usize, 16usize, 3usize);
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| 200 + (i * 37) % 5000).collect();
    let mut cells: Vec<(Device, WeightDtype)> = env_list("IG_BENCH_CUDA_DTYPES", "f32,bf16,f16,native,q8_0")
        .iter()
        .map(|d| (cuda.clone(), d.parse().unwrap()))
        .collect();
    cells.extend(env_list("IG_BENCH_CPU_DTYPES", "f32").iter().filter(|d| !d.is_empty()).map(|d| (Device::Cpu, d.parse().unwrap())));
    println!("cpu threads: {}", ig_models::num_threads());
    for (device, dtype) in cells {
        let model = CausalLm::from_gguf(smollm2(), dtype, &device).unwrap().0;
        let dev = ig_models::policy::device_name(&device);
        for &batch in &batches {
            one_run(&model, batch, &prompt, steps);
            let times: Vec<(f64, f64)> = (0..runs).map(|_| one_run(&model, batch, &prompt, steps)).collect();
            let (prefill, decode) = (median(times.iter().map(|t| t.0).collect()), median(times.iter().map(|t| t.1).collect()));
            report(
                "cuda_throughput",
                serde_json::json!({
                    "device": dev,
                    "dtype": model.weight_dtype(),
                    "batch": batch,
                    "prompt_tokens": prompt_tokens,
                    "decode_steps": steps,
                    "prefill_tokens_per_s": (batch * prompt_tokens) as f64 / prefill,
                    "decode_tokens_per_s": (batch * steps) as f64 / decode,
                    "ms_per_step": decode * 1e3 / steps as f64,
                    "cpu_threads": ig_models::num_threads(),
                }),
            );
        }
    }
}

/// The device sampler on the GPU against the host sampler on the same logits (copied
/// back): greedy, full softmax, nucleus and top-k, at SmolLM2's and Llama 3's vocabulary
/// sizes (the latter sorts in several rounds), with biases. Draws can differ only where
/// CUDA's `exp` rounds a probability differently from the CPU's (last bit); the count is
/// printed and must stay a small fraction. Then the frequencies of GPU draws against
/// exact probabilities.
#[test]
fn cuda_device_sampling_matches_host_sampling() {
    use ig_models::device_sampling::sample_rows;
    use ig_models::sampling::{child_rng, log_sum_exp, sample_with_unit};
    use rand::{Rng, SeedableRng};
    let Some(cuda) = gpu() else { return };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut differ = 0;
    let mut total = 0;
    for (rows, vocab) in [(128usize, 49_152usize), (32, 128_256)] {
        let logits: Vec<f32> = (0..rows * vocab).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 12.0).collect();
        let on_gpu = Tensor::from_vec(logits.clone(), (rows, vocab), &cuda).unwrap();
        let bias = [(7u32, 3.0f32), (9, -1e9)];
        let biases: Vec<&[(u32, f32)]> = (0..rows).map(|r| if r % 2 == 0 { &bias[..] } else { &[][..] }).collect();
        for (i, p) in [
            Sampling { temperature: 0.0, top_p: 1.0, top_k: None, seed: 0 },
            Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed: 0 },
            Sampling { temperature: 0.7, top_p: 0.9, top_k: None, seed: 0 },
            Sampling { temperature: 1.0, top_p: 1.0, top_k: Some(50), seed: 0 },
        ]
        .iter()
        .enumerate()
        {
            let units: Vec<f32> = (0..rows).map(|r| child_rng(i as u64, 0, r).random::<f32>()).collect();
            let started = Instant::now();
            let draws = sample_rows(&on_gpu, p, &units, &biases).unwrap();
            let seconds = started.elapsed().as_secs_f64();
            let mut d = 0;
            for r in 0..rows {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let mut biased = row.to_vec();
                for &(id, b) in biases[r] {
                    biased[id as usize] += b;
                }
                let token = sample_with_unit(&biased, p, units[r], &mut Vec::new());
                if token != draws.tokens[r] {
                    d += 1;
                } else {
                    let lp = row[token as usize] - log_sum_exp(row);
                    assert!((lp - draws.logprobs[r]).abs() < 1e-3, "{p:?} row {r}: log-prob {} vs {lp}", draws.logprobs[r]);
                }
            }
            report(
                "cuda_device_sampling",
                serde_json::json!({"rows": rows, "vocab": vocab, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k,
                                   "differing_draws": d, "host_rows": draws.host_rows, "seconds": seconds}),
            );
            if p.temperature <= 0.0 {
                assert_eq!(d, 0, "greedy draws are exact");
            }
            differ += d;
            total += rows;
        }
    }
    assert!(differ * 100 <= total, "{differ} of {total} GPU draws differ from the host's");

    // Frequencies over 20,000 rows of one known distribution.
    let probs = [0.1f32, 0.2, 0.3, 0.4];
    let n = 20_000;
    let row: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let on_gpu = Tensor::from_vec(row.repeat(n), (n, 4), &cuda).unwrap();
    let units: Vec<f32> = (0..n).map(|_| rng.random()).collect();
    let draws = sample_rows(&on_gpu, &Sampling { temperature: 1.0, top_p: 0.7, top_k: None, seed: 0 }, &units, &vec![&[][..]; n]).unwrap();
    for (t, want) in [(2usize, 3.0 / 7.0), (3, 4.0 / 7.0)] {
        let got = draws.tokens.iter().filter(|&&x| x as usize == t).count() as f64 / n as f64;
        assert!((got - want).abs() < 0.015, "token {t}: {got} vs {want}");
    }
    assert!(draws.tokens.iter().all(|&t| t >= 2), "the 0.7 nucleus is tokens 2 and 3");
}

/// Scoring passes on CUDA (`scoring_passes`: shared prefixes once, sequences
/// of similar length padded into shared segments) give every wanted position
/// the state the CPU gives it.
#[test]
fn cuda_scoring_passes_match_the_cpu() {
    use ig_models::scoring_passes::{rows_per_segment, summarize};
    let Some(gpu) = gpu() else { return };
    let cpu_model = CausalLm::from_gguf(smollm2(), WeightDtype::F32, &Device::Cpu).unwrap().0;
    let gpu_model = CausalLm::from_gguf(smollm2(), WeightDtype::F32, &gpu).unwrap().0;
    // Three children of one 30-token prefix, and unrelated sequences of similar lengths.
    let mut seqs: Vec<Vec<u32>> = (0..3).map(|c| (0..40).map(|p| if p < 30 { 300 + p } else { 1000 + 50 * c + p }).collect()).collect();
    seqs.extend([40, 44, 41, 12, 44, 39].iter().enumerate().map(|(k, &n)| (0..n).map(|p| (k * 97 + p * 13) as u32 % 5000 + 2000).collect::<Vec<u32>>()));
    let seqs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let (on_gpu, on_cpu) = (summarize(&seqs, 4096, rows_per_segment(&gpu)), summarize(&seqs, 4096, rows_per_segment(&Device::Cpu)));
    assert!(on_gpu.segments < on_cpu.segments, "unrelated sequences share segments on the GPU: {on_gpu:?} against {on_cpu:?}");
    let every: Vec<Vec<usize>> = seqs.iter().map(|s| (0..s.len()).collect()).collect();
    let got = gpu_model.hidden_at(&seqs, &every, 4096, &mut || Ok(())).unwrap().to_vec2::<f32>().unwrap();
    let want = cpu_model.hidden_at(&seqs, &every, 4096, &mut || Ok(())).unwrap().to_vec2::<f32>().unwrap();
    let worst = got.iter().zip(&want).map(|(g, w)| rel_err(g, w)).fold(0f32, f32::max);
    report("cuda_scoring_passes", serde_json::json!({ "segments_gpu": on_gpu.segments, "segments_cpu": on_cpu.segments, "max_rel_err": worst }));
    assert!(worst < 1e-3, "GPU states differ from the CPU's by {worst}");
}
