//! The policy's memory limit in the kustomize base and the Helm chart holds what its
//! settings let it take (KV cache budget + prefix cache + weights and runtime), checked by
//! `helm/tools/check_memory.py` with the server's own defaults.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    policy: ig_policy::PolicyArgs,
}

/// Weights (the demo model in f32 at most) and the runtime, in MiB.
const WEIGHTS_AND_RUNTIME_MB: &str = "1024";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn check(files: &[PathBuf]) -> (bool, String) {
    let defaults = Wrap::parse_from(["ig-policy"]).policy;
    let out = Command::new("python3")
        .arg(root().join("helm/tools/check_memory.py"))
        .args(["--default-kv-mb", &defaults.kv_cache_mb.to_string()])
        .args(["--default-prefix-mb", &defaults.prefix_cache_mb.to_string()])
        .args(["--weights-mb", WEIGHTS_AND_RUNTIME_MB])
        .args(files)
        .output()
        .expect("python3 runs helm/tools/check_memory.py (pyyaml: see scripts/test)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_policy_memory_limits_hold_its_caches() {
    let (ok, report) = check(&[root().join("k8s/base/policy.yaml"), root().join("helm/inferenceguard/values.yaml")]);
    assert!(ok, "{report}");
    assert_eq!(report.lines().filter(|l| l.starts_with("ok")).count(), 2, "{report}");
}

#[test]
fn a_limit_the_default_caches_outgrow_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    // The server's defaults (4 GiB KV + 1 GiB prefix cache) under the chart's 4Gi limit.
    std::fs::write(&values, "roles:\n  - name: policy\n    kind: policy\n    resources: {limits: {memory: 4Gi}}\n").unwrap();
    let (ok, report) = check(&[values]);
    assert!(!ok && report.contains("FAIL"), "{report}");
}
