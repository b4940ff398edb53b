//! The llama.cpp peer of `bench policy --peer`: `benches/llamacpp_peer.sh`
//! (llama-cpp-python in a scratch venv, built from source on first use) runs
//! our workload on the same GGUF and prints one JSON line per batch size.
//! llama.cpp is never a dependency of the project.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::policy::ThroughputRow;
use super::progress;

/// The workload, as our policy bench ran it.
pub struct PeerWorkload<'a> {
    pub model: &'a Path,
    pub batches: &'a [usize],
    pub prompt_tokens: usize,
    pub decode_steps: usize,
    pub runs: usize,
    pub threads: usize,
}

/// What the peer measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerRun {
    /// e.g. `llama.cpp (llama-cpp-python 0.3.36)`.
    pub engine: String,
    /// llama.cpp's own description of the CPU features it uses.
    pub system_info: String,
    pub threads: usize,
    pub rows: Vec<ThroughputRow>,
}

/// One line of the peer's output.
#[derive(Deserialize)]
struct PeerLine {
    engine: String,
    system_info: String,
    batch: usize,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    ms_per_step: f64,
}

/// How to get the peer working, for every failure message.
const FIX: &str = "set IG_LLAMACPP_VENV=<a venv with llama-cpp-python>, or let benches/llamacpp_peer.sh build one \
                   (needs the package index; ~5-10 min on 2 cores)";

/// The peer script: next to the working directory's `benches/`, else this
/// checkout's.
fn script() -> PathBuf {
    let here = Path::new("benches/llamacpp_peer.sh");
    if here.is_file() {
        here.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/llamacpp_peer.sh")
    }
}

/// Runs the peer; its stderr goes to a log file in the temp dir. The error
/// is one line that says what failed and how to fix it.
pub fn run(w: &PeerWorkload<'_>) -> anyhow::Result<PeerRun> {
    if w.model.extension().is_none_or(|e| e != "gguf") {
        anyhow::bail!("skipped: llama.cpp needs a GGUF file, got {}", w.model.display());
    }
    let log_path = std::env::temp_dir().join(format!("inferenceguard-llamacpp-peer-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)?;
    let script = script();
    let batches = w.batches.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--model")
        .arg(w.model)
        .args(["--batches", &batches])
        .args(["--prompt-tokens", &w.prompt_tokens.to_string()])
        .args(["--decode-steps", &w.decode_steps.to_string()])
        .args(["--runs", &w.runs.to_string()])
        .args(["--threads", &w.threads.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("could not start {}: {e}; {FIX}", script.display()))?;

    let bar = progress(w.batches.len() as u64)?;
    bar.set_message(format!("llama.cpp peer (log: {})", log_path.display()));
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        match serde_json::from_str::<PeerLine>(&line) {
            Ok(parsed) => {
                lines.push(parsed);
                bar.inc(1);
            }
            // Not a result line: show it rather than lose it.
            Err(_) => crate::progress::note(&bar, format!("llama.cpp peer: {line}")),
        }
    }
    let status = child.wait()?;
    bar.finish_and_clear();
    if !status.success() || lines.len() != w.batches.len() {
        let last = std::fs::read_to_string(&log_path).ok().and_then(|l| l.lines().rev().find(|s| !s.trim().is_empty()).map(str::to_string));
        anyhow::bail!(
            "failed ({status}, {} of {} batch sizes measured; last log line: {}; full log {}); {FIX}",
            lines.len(),
            w.batches.len(),
            last.as_deref().unwrap_or("none"),
            log_path.display()
        );
    }
    let first = &lines[0];
    Ok(PeerRun {
        engine: first.engine.clone(),
        system_info: first.system_info.clone(),
        threads: w.threads,
        rows: lines
            .iter()
            .map(|l| ThroughputRow {
                dtype: "as stored".into(),
                batch: l.batch,
                prefill_tokens_per_s: l.prefill_tokens_per_s,
                decode_tokens_per_s: l.decode_tokens_per_s,
                ms_per_step: l.ms_per_step,
                beams_ms_per_step: None,
                host_sampling_ms: None,
                device_sampling_ms: None,
                device_draws_differing: None,
            })
            .collect(),
    })
}
