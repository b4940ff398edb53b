//! `bench plot`: charts (SVG and PNG) from the JSON files the benchmarks
//! wrote, drawn with the training's line charts (`ig_training::plot`).
//!
//! - `<stem>-decode` and `<stem>-prefill`: policy tokens/s against the batch
//!   size, one line per dtype plus llama.cpp;
//! - `<stem>-items`: scorer items/s against the batch size;
//! - `<stem>-vs-n` and `<stem>-vs-d`: search seconds per prompt against N
//!   (one line per D) and against D (one line per N), per path;
//! - `<stem>-rss`: the soak's RSS and prefix-cache MiB against requests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;
use ig_training::plot::{line_chart, LineChart, Series};
use serde::de::DeserializeOwned;

use super::policy::{PolicyWorkload, PolicyResults, ThroughputRow};
use super::scorer::{ScorerWorkload, ScorerRow};
use super::search::{SearchWorkload, SearchResults, SearchRow, Via};
use super::soak::{SoakWorkload, SoakResults};
use super::Report;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Directory of the JSON files (every `*.json` written by a benchmark).
    #[arg(long)]
    pub input: PathBuf,
    /// Directory for the charts (created if missing).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.output).map_err(|e| anyhow::anyhow!("--output {}: {e}", args.output.display()))?;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&args.input)
        .map_err(|e| anyhow::anyhow!("--input {}: {e}", args.input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    inputs.sort();
    let mut written = Vec::new();
    let mut text = true;
    for input in &inputs {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(input)?)?;
        let stem = input.file_stem().map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned());
        let charts = match json.get("bench").and_then(|b| b.as_str()) {
            Some("policy") => policy_charts(&read(input, json)?),
            Some("scorer") => scorer_charts(&read(input, json)?),
            Some("search") => search_charts(&read(input, json)?),
            Some("soak") => soak_charts(&read(input, json)?),
            _ => {
                println!("skipped {} (not a benchmark report)", input.display());
                continue;
            }
        };
        for (suffix, chart) in charts {
            let base = args.output.join(format!("{stem}-{suffix}"));
            let (svg, png) = (base.with_extension("svg"), base.with_extension("png"));
            text &= line_chart(&chart, &svg, &png)?;
            written.push(svg);
            written.push(png);
        }
    }
    for path in &written {
        println!("wrote {}", path.display());
    }
    if written.is_empty() {
        println!("no benchmark reports in {}", args.input.display());
    }
    if !text {
        println!("no TrueType font found: the charts have no text (set IG_PLOT_FONT to a .ttf file)");
    }
    Ok(())
}

fn read<P: DeserializeOwned, R: DeserializeOwned>(path: &Path, json: serde_json::Value) -> anyhow::Result<Report<P, R>> {
    serde_json::from_value(json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn chart(title: String, x_desc: &str, y_desc: &str, series: Vec<Series>, log_x: bool) -> LineChart {
    LineChart { title, x_desc: x_desc.into(), y_desc: y_desc.into(), series, log_x, markers: true }
}

type Charts = Vec<(&'static str, LineChart)>;

fn policy_charts(r: &Report<PolicyWorkload, PolicyResults>) -> Charts {
    let p = &r.params;
    let lines = |y: fn(&ThroughputRow) -> f64| {
        let mut dtypes: Vec<&str> = Vec::new();
        for c in &r.results.ours {
            if !dtypes.contains(&c.dtype.as_str()) {
                dtypes.push(&c.dtype);
            }
        }
        let mut series: Vec<Series> = dtypes
            .into_iter()
            .map(|d| Series {
                label: d.to_string(),
                points: r.results.ours.iter().filter(|c| c.dtype == d).map(|c| (c.batch as f64, y(c))).collect(),
            })
            .collect();
        if let Some(peer) = &r.results.peer {
            series.push(Series { label: "llama.cpp".into(), points: peer.rows.iter().map(|c| (c.batch as f64, y(c))).collect() });
        }
        series
    };
    let setting = format!("{}, prompt {} tokens, {} steps", p.model, p.prompt_tokens, p.decode_steps);
    vec![
        ("decode", chart(format!("policy decode ({setting})"), "batch size", "decode tokens/s", lines(|c| c.decode_tokens_per_s), true)),
        ("prefill", chart(format!("policy prefill ({setting})"), "batch size", "prefill tokens/s", lines(|c| c.prefill_tokens_per_s), true)),
    ]
}

fn scorer_charts(r: &Report<ScorerWorkload, Vec<ScorerRow>>) -> Charts {
    let series = vec![Series { label: r.params.model.clone(), points: r.results.iter().map(|row| (row.batch as f64, row.items_per_s)).collect() }];
    let title = format!("scorer ({}, responses of ~{} tokens)", r.params.model, r.params.response_tokens);
    vec![("items", chart(title, "batch size", "items/s", series, true))]
}

fn search_charts(r: &Report<SearchWorkload, SearchResults>) -> Charts {
    let p = &r.params;
    let rows = &r.results.rows;
    let several_paths = p.paths.len() > 1;
    // One line per value of `line_key` (and per path), x from `x_key`.
    let lines = |line_key: fn(&SearchRow) -> usize, x_key: fn(&SearchRow) -> usize, name: &str| {
        let mut series = Vec::new();
        for &via in &p.paths {
            let keys: BTreeSet<usize> = rows.iter().filter(|row| row.via == via).map(line_key).collect();
            for key in keys {
                let mut label = format!("{name}={key}");
                if several_paths {
                    label += if via == Via::Mesh { " mesh" } else { " in-process" };
                }
                let points = rows.iter().filter(|row| row.via == via && line_key(row) == key).map(|row| (x_key(row) as f64, row.seconds_per_prompt)).collect();
                series.push(Series { label, points });
            }
        }
        series
    };
    let setting = format!("{}, chunk {}", p.method, p.chunk_tokens);
    vec![
        ("vs-n", chart(format!("search time per prompt vs N ({setting})"), "N (samples per step)", "seconds per prompt", lines(|r| r.max_new_tokens, |r| r.samples, "D"), false)),
        ("vs-d", chart(format!("search time per prompt vs D ({setting})"), "D (most new tokens)", "seconds per prompt", lines(|r| r.samples, |r| r.max_new_tokens, "N"), false)),
    ]
}

fn soak_charts(r: &Report<SoakWorkload, SoakResults>) -> Charts {
    let s = &r.results.series;
    let series = vec![
        Series { label: "RSS".into(), points: s.iter().map(|m| (m.requests as f64, m.rss_mib)).collect() },
        Series { label: "prefix cache".into(), points: s.iter().map(|m| (m.requests as f64, m.prefix_cache_mib)).collect() },
    ];
    let p = &r.params;
    let title = format!("soak: memory over requests ({} N={} d={} D={})", p.method, p.samples, p.chunk_tokens, p.max_new_tokens);
    vec![("rss", LineChart { markers: false, ..chart(title, "requests", "MiB", series, false) })]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::llamacpp::PeerRun;
    use crate::bench::search::{Overhead, RoleSeconds, SameAnswers};
    use crate::bench::soak::{MemorySample, SoakSummary};

    fn throughput(dtype: &str, batch: usize, decode: f64) -> ThroughputRow {
        ThroughputRow { dtype: dtype.into(), batch, prefill_tokens_per_s: 3.0 * decode, decode_tokens_per_s: decode, ms_per_step: 1e3 / decode, beams_ms_per_step: None, host_sampling_ms: None, device_sampling_ms: None, device_draws_differing: None }
    }

    fn search_row(via: Via, samples: usize, max_new_tokens: usize) -> SearchRow {
        let seconds_per_prompt = (samples * max_new_tokens) as f64 / 100.0;
        let busy_seconds_per_prompt = RoleSeconds { policy: seconds_per_prompt * 0.8, cost: 0.1, reward: 0.1 };
        SearchRow { via, samples, max_new_tokens, beam_width: samples / 4, seconds_per_prompt, policy_tokens_per_s: 50.0, busy_seconds_per_prompt }
    }

    #[test]
    fn charts_render_from_reports() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Report::new(
            "policy",
            PolicyWorkload { model: "m.gguf".into(), dtypes: vec!["q8_0".into(), "f32".into()], batches: vec![1, 8, 32], prompt_tokens: 64, decode_steps: 16, runs: 1, beam_rows: 4, device: "cpu".into() },
            PolicyResults {
                ours: [1, 8, 32].into_iter().flat_map(|b| [throughput("q8_0", b, 50.0), throughput("f32", b, 20.0 * b as f64)]).collect(),
                peer: Some(PeerRun { engine: "llama.cpp".into(), system_info: String::new(), threads: 2, rows: vec![throughput("as stored", 1, 60.0), throughput("as stored", 8, 200.0), throughput("as stored", 32, 400.0)] }),
                peer_error: None,
            },
        );
        let scorer = Report::new(
            "scorer",
            ScorerWorkload { model: "cost.safetensors".into(), batches: vec![1, 8], response_tokens: 64, runs: 1, dtype: "f32".into(), device: "cpu".into() },
            vec![ScorerRow { batch: 1, items_per_s: 40.0, ms_per_batch: 25.0, tokens_per_item: 80.0 }, ScorerRow { batch: 8, items_per_s: 90.0, ms_per_batch: 88.0, tokens_per_item: 81.0 }],
        );
        let search = Report::new(
            "search",
            SearchWorkload {
                method: "inference_guard".into(),
                samples: vec![8, 16],
                max_new_tokens: vec![32, 64],
                chunk_tokens: 32,
                beam_width: None,
                runs: 1,
                seeds: vec![1, 2],
                prompts: vec!["hi".into()],
                policy_model: "m.gguf".into(),
                policy_dtype: "f32".into(),
                cost_model: "c".into(),
                reward_model: "r".into(),
                paths: vec![Via::Mesh, Via::InProcess],
                placement: "policy on cpu".into(),
            },
            SearchResults {
                rows: [Via::Mesh, Via::InProcess].into_iter().flat_map(|v| [(8, 32), (16, 32), (8, 64), (16, 64)].map(|(n, d)| search_row(v, n, d))).collect(),
                overhead: vec![Overhead { samples: 8, max_new_tokens: 32, mesh_seconds_per_prompt: 2.0, in_process_seconds_per_prompt: 1.9, overhead_percent: 5.0 }],
                same_answers: Some(SameAnswers { same: 4, compared: 4 }),
            },
        );
        let series: Vec<MemorySample> = (0..5).map(|i| MemorySample { requests: i * 10, seconds: i as f64, rss_mib: 900.0 + i as f64, prefix_cache_mib: 3.0 * i as f64 }).collect();
        let soak = Report::new(
            "soak",
            SoakWorkload {
                requests: 40,
                sample_every: 10,
                warm_up: 10,
                method: "inference_guard".into(),
                samples: 4,
                beam_width: 1,
                chunk_tokens: 8,
                max_new_tokens: 16,
                distinct_prompts: 10,
                policy_model: "m.gguf".into(),
                policy_dtype: "f32".into(),
                prefix_cache_mib: 1024,
            },
            SoakResults {
                summary: SoakSummary {
                    first_rss_mib: 900.0,
                    after_warm_up_rss_mib: 901.0,
                    last_rss_mib: 904.0,
                    max_rss_mib: 904.0,
                    slope_mib_per_100_requests: 10.0,
                    requests_per_s: 2.0,
                    failed_requests: 0,
                    first_error: None,
                },
                series,
            },
        );
        policy.write(Some(&dir.path().join("policy.json"))).unwrap();
        scorer.write(Some(&dir.path().join("scorer.json"))).unwrap();
        search.write(Some(&dir.path().join("search.json"))).unwrap();
        soak.write(Some(&dir.path().join("soak.json"))).unwrap();
        std::fs::write(dir.path().join("notes.json"), "{}").unwrap();

        let out = dir.path().join("charts");
        run(PlotArgs { input: dir.path().to_path_buf(), output: out.clone() }).unwrap();
        let names = ["policy-decode", "policy-prefill", "scorer-items", "search-vs-n", "search-vs-d", "soak-rss"];
        for name in names {
            let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap_or_else(|e| panic!("{name}.svg: {e}"));
            assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}.svg is not an SVG document");
            assert!(svg.contains("<polyline"), "{name}.svg has no line");
            let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2 * names.len(), "one SVG and one PNG per chart, nothing for notes.json");
    }
}
