//! Append-only JSONL result files that survive a crash: one finished item per
//! line, written and flushed as soon as it is done, so a rerun skips it.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads every line of `path` (none if it is missing). A line that does not
/// parse ends the file: it is the torn write of a crash, and it and anything
/// after it are cut from the file so the next append starts clean.
pub fn read_resumable<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut done, mut good_bytes, mut torn) = (Vec::new(), 0u64, false);
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        match serde_json::from_str::<T>(&line) {
            Ok(item) if !torn => {
                good_bytes += line.len() as u64 + 1;
                done.push(item);
            }
            _ => torn = true,
        }
    }
    if torn {
        tracing::warn!(path = %path.display(), kept = done.len(), "dropping a torn line at the end of the file");
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(good_bytes)?;
    }
    Ok(done)
}

/// Appends one item as a line and flushes it to the file.
pub fn append<T: Serialize>(file: &mut std::fs::File, item: &T) -> anyhow::Result<()> {
    writeln!(file, "{}", serde_json::to_string(item)?)?;
    file.flush()?;
    Ok(())
}

/// Opens `path` for appending, creating it.
pub fn open_append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))
}
