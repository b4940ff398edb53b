//! Append-only JSONL result files that survive a crash: one finished item per
//! line, written in one piece and synced as soon as it is done, so a rerun skips it.
//!
//! Only the last line can be torn (a crash mid-write leaves it without its newline):
//! resuming drops it. Any other line that does not parse is an error naming the file
//! and the line, and nothing is changed: a file is never cut short to make it readable.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads every item of `path` (none if it is missing) to resume writing it: a torn last
/// line is cut from the file so that the next append starts on a line of its own.
pub fn read_resumable<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    read(path, true)
}

/// Reads every item of `path` without changing it (a torn last line is skipped).
pub fn read_complete<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    read(path, false)
}

fn read<T: DeserializeOwned>(path: &Path, cut_torn_tail: bool) -> anyhow::Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Lines end with their newline; what follows the last one is a torn write.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut items = Vec::new();
    for (i, line) in bytes[..complete].split_inclusive(|&b| b == b'\n').enumerate() {
        let line = &line[..line.len() - 1];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = serde_json::from_slice::<T>(line).with_context(|| {
            format!(
                "{} line {}: not a record of this version ({} bytes); the file was left as it is. Only a torn last line is dropped: move the file away to start afresh",
                path.display(),
                i + 1,
                line.len()
            )
        })?;
        items.push(item);
    }
    if complete < bytes.len() {
        tracing::warn!(path = %path.display(), kept = items.len(), torn_bytes = bytes.len() - complete, "a torn last line (no newline) is skipped");
        if cut_torn_tail {
            std::fs::OpenOptions::new().write(true).open(path)?.set_len(complete as u64)?;
        }
    }
    Ok(items)
}

/// Appends one item as a line, in one write with its newline, and syncs it to disk.
pub fn append<T: Serialize>(file: &mut std::fs::File, item: &T) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(item)?;
    line.push('\n');
    file.write_all(line.as_bytes())?;
    file.sync_data()?;
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

    #[test]
    fn only_a_torn_last_line_is_dropped_and_only_when_resuming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "1\n2\n{\"torn").unwrap();
        assert_eq!(read_complete::<i32>(&path).unwrap(), vec![1, 2]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n{\"torn", "a report never writes");
        assert_eq!(read_resumable::<i32>(&path).unwrap(), vec![1, 2]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
        let mut file = open_append(&path).unwrap();
        append(&mut file, &3).unwrap();
        assert_eq!(read_resumable::<i32>(&path).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn a_bad_line_before_the_end_is_an_error_and_the_file_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        // A line from another version in the middle, and a whole last line that does not parse.
        for content in ["1\n\"two\"\n3\n4\n", "1\n2\n{\"x\": 1}\n"] {
            std::fs::write(&path, content).unwrap();
            let err = format!("{:#}", read_resumable::<i32>(&path).unwrap_err());
            let line = if content.starts_with("1\n\"") { 2 } else { 3 };
            assert!(err.contains(&format!("r.jsonl line {line}: not a record of this version")), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), content, "nothing may be cut");
        }
    }
}
