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

/// Replaces the file at `path` with `items`, one per line, in one piece: a
/// crash leaves the old file or the new one, never a mix (written to a
/// temporary file beside it, synced, then renamed over it).
pub fn rewrite<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> anyhow::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for item in items {
            writeln!(file, "{}", serde_json::to_string(item)?)?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    write().with_context(|| format!("rewriting {} (through {})", path.display(), tmp.display()))
}

/// Opens `path` for appending, creating it.
pub fn open_append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut file = open_append(&path).unwrap();
        for i in 0..3 {
            append(&mut file, &i).unwrap();
        }
        rewrite(&path, &[7, 8]).unwrap();
        assert_eq!(read_resumable::<i32>(&path).unwrap(), vec![7, 8]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.jsonl")]);
    }
}
