//! `bench policy`: the policy model in-process. For each weight dtype and
//! batch size B: prefill of B prompts of P tokens in one pass, then D decode
//! steps of B rows. With `--peer`, llama.cpp runs the same workload on the same
//! GGUF ([`super::llamacpp`]) and the ratios are printed.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ig_models::kv_cache::KvCache;
use ig_core::policy::Sampling;
use ig_models::causal_lm::{CausalLm, Positions, Segment, WeightDtype};
use ig_models::device_sampling::sample_rows;
use ig_models::sampling::{rng_at_draw, sample_with_unit};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::llamacpp::{self, PeerRun, PeerWorkload};
use super::{file_name, list, median, print_table, progress, warm_then_measure, Report};

#[derive(Debug, Args)]
pub struct PolicyBench {
    /// Model file or directory (default: the demo SmolLM2 GGUF).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Weight dtypes to compare.
    #[arg(long, value_delimiter = ',', default_value = "native,q8_0,f32")]
    dtypes: Vec<WeightDtype>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    batches: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Decode steps per run.
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Measured runs per cell (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also time each decode step with the batch split into beams of this
    /// many rows, each with its own KV cache (its own attention kernels), as a
    /// search's beams would run without sharing a batch (0: off).
    #[arg(long, default_value_t = 4)]
    beam_rows: usize,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also run llama.cpp (benches/llamacpp_peer.sh) on the same GGUF and
    /// workload, with as many threads as candle.
    #[arg(long)]
    pub peer: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl PolicyBench {
    /// A tiny configuration that only checks the pipeline.
    pub fn quick(&mut self) {
        (self.dtypes, self.batches, self.prompt_tokens, self.decode_steps, self.runs) = (vec![WeightDtype::F32], vec![1, 4], 16, 4, 1);
    }
}

/// The workload, as written to JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PolicyWorkload {
    pub model: String,
    pub dtypes: Vec<String>,
    pub batches: Vec<usize>,
    pub prompt_tokens: usize,
    pub decode_steps: usize,
    pub runs: usize,
    #[serde(default)]
    pub beam_rows: usize,
    #[serde(default = "cpu")]
    pub device: String,
}

fn cpu() -> String {
    "cpu".into()
}

/// One (engine, dtype, batch) measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ThroughputRow {
    pub dtype: String,
    pub batch: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub ms_per_step: f64,
    /// The same decode steps with the rows split into beams of `beam_rows` rows, each its
    /// own segment and cache: ms per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beams_ms_per_step: Option<f64>,
    /// Drawing one token per row from a step's logits (T = 1, top-p 1, as the search):
    /// copied to the host and drawn there, ms per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_sampling_ms: Option<f64>,
    /// The same drawn where the logits are ([`ig_models::device_sampling`]), ms per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_sampling_ms: Option<f64>,
    /// Of the rows drawn in the measured runs, how many the device drew differently from
    /// the host (same uniform numbers; see the device sampler's doc), as "k of n".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_draws_differing: Option<String>,
}

/// Ours, and llama.cpp's when it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PolicyResults {
    pub ours: Vec<ThroughputRow>,
    pub peer: Option<PeerRun>,
    /// Why the peer did not run, when asked for and it did not.
    pub peer_error: Option<String>,
}

/// One run's timings, in seconds.
struct RunTimes {
    prefill: f64,
    decode: f64,
    /// The decode steps with the batch split into beams, when asked.
    beams_decode: Option<f64>,
    /// Summed over the decode steps.
    host_sampling: f64,
    device_sampling: f64,
    /// Rows drawn, and how many the device drew differently from the host.
    drawn: usize,
    differing: usize,
}

/// One run: prefill `batch` prompts, then `steps` decode steps, each step's logits also
/// sampled on the host and on the device (timed apart from the forward passes); with
/// `beam_rows` below the batch, the same steps again with the rows split into beams.
fn one_run(model: &CausalLm, batch: usize, prompt: &[u32], steps: usize, beam_rows: usize, seed: u64) -> anyhow::Result<RunTimes> {
    let mut cache: KvCache = model.new_cache();
    let tokens: Vec<u32> = (0..batch).flat_map(|_| prompt.iter().copied()).collect();
    // A GPU runs asynchronously: each pass is timed until the device has finished it.
    let device = model.device();
    device.synchronize()?;
    let t0 = Instant::now();
    model.forward(&tokens, batch, &mut cache, Positions::Last)?;
    device.synchronize()?;
    let prefill = t0.elapsed().as_secs_f64();
    let split = beam_rows > 0 && beam_rows < batch;
    let mut beams: Vec<KvCache> = if split {
        let rows: Vec<usize> = (0..batch).collect();
        rows.chunks(beam_rows).map(|r| cache.select_rows(r)).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut beams_decode = split.then_some(0.0);
    let (mut decode, mut host_sampling, mut device_sampling, mut differing) = (0.0, 0.0, 0.0, 0);
    let sampling = Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed };
    let no_bias: Vec<&[(u32, f32)]> = vec![&[]; batch];
    let mut scratch = Vec::new();
    for step in 0..steps {
        // Token ids vary per row and step so no path can short-cut them (the peer uses the same).
        let next: Vec<u32> = (0..batch).map(|r| (100 + r * 7 + step * 13) as u32 % 10_000 + 100).collect();
        let t = Instant::now();
        let out = model.forward(&next, batch, &mut cache, Positions::Last)?;
        device.synchronize()?;
        decode += t.elapsed().as_secs_f64();
        if let Some(total) = beams_decode.as_mut() {
            let mut segments: Vec<Segment<'_>> =
                beams.iter_mut().zip(next.chunks(beam_rows)).map(|(cache, tokens)| Segment { tokens, rows: tokens.len(), cache }).collect();
            let t = Instant::now();
            model.forward_segments(&mut segments, Positions::Last)?;
            device.synchronize()?;
            *total += t.elapsed().as_secs_f64();
        }
        let units: Vec<f32> = (0..batch).map(|r| rng_at_draw(seed, 0, r, step as u64).random::<f32>()).collect();
        let t = Instant::now();
        let flat: Vec<f32> = out.logits.flatten_all()?.to_vec1()?;
        let vocab = flat.len() / batch;
        let host: Vec<u32> = flat.chunks(vocab).zip(&units).map(|(row, &u)| sample_with_unit(row, &sampling, u, &mut scratch)).collect();
        host_sampling += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let drawn = sample_rows(&out.logits, &sampling, &units, &no_bias)?;
        device_sampling += t.elapsed().as_secs_f64();
        differing += drawn.tokens.iter().zip(&host).filter(|(d, h)| d != h).count();
    }
    Ok(RunTimes { prefill, decode, beams_decode, host_sampling, device_sampling, drawn: batch * steps, differing })
}

pub fn run(args: PolicyBench) -> anyhow::Result<()> {
    let path = match &args.model {
        Some(p) => ig_assets::resolve_model(p)?,
        None => ig_assets::smollm2_gguf()?,
    };
    let runs = args.runs.max(1);
    let bar = progress((args.dtypes.len() * args.batches.len() * (runs + 1)) as u64)?;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| 200 + (i * 37) % 5000).collect();
    let device = ig_models::policy::parse_device(&args.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let mut ours = Vec::new();
    for &dtype in &args.dtypes {
        bar.set_message(format!("loading {dtype:?}"));
        let model = if path.is_dir() { CausalLm::from_safetensors_dir(&path, dtype, &device)? } else { CausalLm::from_gguf(&path, dtype, &device)?.0 };
        for &batch in &args.batches {
            bar.set_message(format!("{} batch {batch}", model.weight_dtype()));
            let times = warm_then_measure(runs, &bar, |run| one_run(&model, batch, &prompt, args.decode_steps, args.beam_rows, run as u64))?;
            let med = |f: fn(&RunTimes) -> f64| median(&times.iter().map(f).collect::<Vec<_>>());
            let (prefill, decode) = (med(|t| t.prefill), med(|t| t.decode));
            let per_step = |s: f64| Some(s * 1e3 / args.decode_steps as f64);
            let beams = times.iter().map(|t| t.beams_decode).collect::<Option<Vec<_>>>().map(|v| median(&v));
            ours.push(ThroughputRow {
                beams_ms_per_step: beams.and_then(per_step),
                host_sampling_ms: per_step(med(|t| t.host_sampling)),
                device_sampling_ms: per_step(med(|t| t.device_sampling)),
                device_draws_differing: Some(format!(
                    "{} of {}",
                    times.iter().map(|t| t.differing).sum::<usize>(),
                    times.iter().map(|t| t.drawn).sum::<usize>()
                )),
                dtype: model.weight_dtype().to_string(),
                batch,
                prefill_tokens_per_s: (batch * args.prompt_tokens) as f64 / prefill,
                decode_tokens_per_s: (batch * args.decode_steps) as f64 / decode,
                ms_per_step: decode * 1e3 / args.decode_steps as f64,
            });
        }
    }
    bar.finish_and_clear();

    let (peer, peer_error) = if args.peer {
        let workload = PeerWorkload {
            model: &path,
            batches: &args.batches,
            prompt_tokens: args.prompt_tokens,
            decode_steps: args.decode_steps,
            runs,
            threads: ig_models::num_threads(),
        };
        match llamacpp::run(&workload) {
            Ok(run) => (Some(run), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };

    let params = PolicyWorkload {
        model: file_name(&path),
        dtypes: args.dtypes.iter().map(|d| format!("{d:?}").to_lowercase()).collect(),
        batches: args.batches.clone(),
        prompt_tokens: args.prompt_tokens,
        decode_steps: args.decode_steps,
        runs,
        beam_rows: args.beam_rows,
        device: ig_models::policy::device_name(&device),
    };
    let report = Report::new("policy", params, PolicyResults { ours, peer, peer_error });
    let p = &report.params;
    report.print_heading(
        "policy: prefill and batched decode, in-process",
        &format!(
            "model {} on {}, prompt {} tokens, {} decode steps, batches {}, median of {} runs after 1 warm-up",
            p.model,
            p.device,
            p.prompt_tokens,
            p.decode_steps,
            list(&p.batches),
            p.runs
        ),
    );
    print_report(&report.results, p.beam_rows);
    report.write(args.json.as_deref())
}

fn print_report(results: &PolicyResults, beam_rows: usize) {
    let row = |r: &ThroughputRow| {
        vec![r.dtype.clone(), r.batch.to_string(), format!("{:.0}", r.prefill_tokens_per_s), format!("{:.1}", r.decode_tokens_per_s), format!("{:.1}", r.ms_per_step)]
    };
    let header = ["dtype", "batch", "prefill tok/s", "decode tok/s", "ms/step"];
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    println!("ours (candle); sampling one token per row after each step (T 1, top-p 1), timed apart from the forward pass;");
    println!("\"as beams\": the same steps with the rows split into beams of {beam_rows} rows, each its own KV cache:");
    println!();
    let beams_header = format!("ms/step as beams of {beam_rows}");
    print_table(
        &["dtype", "batch", "prefill tok/s", "decode tok/s", "ms/step", &beams_header, "host sampling ms/step", "device sampling ms/step", "device draws ≠ host"],
        &results
            .ours
            .iter()
            .map(|r| {
                [
                    row(r),
                    vec![ms(r.beams_ms_per_step), ms(r.host_sampling_ms), ms(r.device_sampling_ms), r.device_draws_differing.clone().unwrap_or_else(|| "-".into())],
                ]
                .concat()
            })
            .collect::<Vec<_>>(),
    );
    if let Some(error) = &results.peer_error {
        println!("llama.cpp peer: {error}");
        println!();
    }
    let Some(peer) = &results.peer else { return };
    println!("{}, threads {}:", peer.engine, peer.threads);
    println!();
    print_table(&header, &peer.rows.iter().map(row).collect::<Vec<_>>());
    println!("ours / llama.cpp (our best dtype at each batch size):");
    println!();
    let mut ratios = Vec::new();
    for theirs in &peer.rows {
        let at_batch = || results.ours.iter().filter(|r| r.batch == theirs.batch);
        let best = |key: fn(&ThroughputRow) -> f64| at_batch().max_by(|a, b| key(a).total_cmp(&key(b)));
        let (Some(decode), Some(prefill)) = (best(|r| r.decode_tokens_per_s), best(|r| r.prefill_tokens_per_s)) else { continue };
        ratios.push(vec![
            theirs.batch.to_string(),
            decode.dtype.clone(),
            format!("{:.2}x", decode.decode_tokens_per_s / theirs.decode_tokens_per_s),
            prefill.dtype.clone(),
            format!("{:.2}x", prefill.prefill_tokens_per_s / theirs.prefill_tokens_per_s),
        ]);
    }
    print_table(&["batch", "best decode dtype", "decode ours/llama.cpp", "best prefill dtype", "prefill ours/llama.cpp"], &ratios);
}
