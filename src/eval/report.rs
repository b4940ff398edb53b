//! The evaluation's report from `results.jsonl`: `results.md` in the layout
//! of the paper's Table 2, `results.csv`, `summary.json`, and the plots of
//! its Figures 2 and 3 (SVG and PNG). The responses stay in the JSONL.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use ig_orchestrator::search::Method;
use ig_training::plot::{box_chart, scatter_chart, BoxChart, BoxRow, LabelledPoint, ScatterChart};
use serde::Serialize;

use super::metrics::{summarize, Summary};
use super::prompts::PromptKind;
use super::run::{results_path, EvalRecord};

/// Methods in the order of the paper's Table 2: the base model and the
/// baselines, then InferenceGuard (which `Method::ALL` lists first).
fn table_order() -> impl Iterator<Item = Method> {
    Method::ALL.into_iter().cycle().skip(2).take(Method::ALL.len())
}

/// The method's name as the paper's tables write it.
pub fn paper_label(m: Method) -> &'static str {
    match m {
        Method::Base => "Base",
        Method::BonLagrangian => "BoN (Lagrangian)",
        Method::BonAugmented => "BoN (augmented)",
        Method::BeamLagrangian => "Beam search (Lagrangian)",
        Method::BeamAugmented => "Beam search (augmented)",
        Method::Args => "ARGS",
        Method::ArgsLagrangian => "ARGS (Lagrangian)",
        Method::ArgsCost => "ARGS (cost)",
        Method::Recontrol => "RECONTROL",
        Method::RecontrolLagrangian => "RECONTROL (Lagrangian)",
        Method::InferenceGuard => "InferenceGuard",
        Method::InferenceGuardCritic => "InferenceGuard (critic)",
    }
}

/// The prompt sets a report splits by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    All,
    Harmful,
    Benign,
}

impl Split {
    const ALL: [Split; 3] = [Split::All, Split::Harmful, Split::Benign];

    fn name(self) -> &'static str {
        match self {
            Split::All => "all",
            Split::Harmful => "harmful",
            Split::Benign => "benign",
        }
    }

    fn contains(self, kind: PromptKind) -> bool {
        match self {
            Split::All => true,
            Split::Harmful => kind == PromptKind::Harmful,
            Split::Benign => kind == PromptKind::Benign,
        }
    }
}

/// One method's metrics on one split.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub split: Split,
    pub method: &'static str,
    pub label: &'static str,
    #[serde(flatten)]
    pub summary: Summary,
}

/// The methods present in `records`, in table order.
fn methods(records: &[EvalRecord]) -> Vec<Method> {
    table_order().filter(|m| records.iter().any(|r| r.method == m.name())).collect()
}

/// Every (split, method) with results, splits first.
pub fn rows(records: &[EvalRecord]) -> Vec<Row> {
    let methods = methods(records);
    Split::ALL
        .into_iter()
        .flat_map(|split| methods.iter().map(move |&m| (split, m)))
        .filter_map(|(split, m)| {
            let outcomes: Vec<_> = records.iter().filter(|r| r.method == m.name() && split.contains(r.kind)).map(EvalRecord::outcome).collect();
            summarize(&outcomes).map(|summary| Row { split, method: m.name(), label: paper_label(m), summary })
        })
        .collect()
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's directory (holding results.jsonl); the report is written there.
    #[arg(long, default_value = "target/eval")]
    pub out: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let records: Vec<EvalRecord> = crate::jsonl::read_resumable(&results_path(&args.out))?;
    if records.is_empty() {
        anyhow::bail!("--out {}: no results in {}", args.out.display(), results_path(&args.out).display());
    }
    for path in write(&args.out, &records)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The records of the prompts every method answered, and how many prompts
/// were left out (a run cut short): methods are compared on the same prompts.
pub fn complete_prompts(records: &[EvalRecord]) -> (Vec<EvalRecord>, usize) {
    let methods = methods(records);
    let mut per_prompt: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for r in records {
        per_prompt.entry(r.prompt_id).or_default().push(&r.method);
    }
    let complete: Vec<u64> = per_prompt.iter().filter(|(_, m)| methods.iter().all(|x| m.contains(&x.name()))).map(|(id, _)| *id).collect();
    let kept: Vec<EvalRecord> = records.iter().filter(|r| complete.binary_search(&r.prompt_id).is_ok()).cloned().collect();
    (kept, per_prompt.len() - complete.len())
}

/// Writes the report of `records` into `out`; the files written.
pub fn write(out: &Path, records: &[EvalRecord]) -> anyhow::Result<Vec<PathBuf>> {
    let (records, partial) = complete_prompts(records);
    let records = &records[..];
    if partial > 0 {
        eprintln!("report: {partial} prompt(s) not answered by every method are left out");
    }
    let rows = rows(records);
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    put("results.md", markdown(records, &rows, partial))?;
    put("results.csv", csv(&rows))?;
    put("summary.json", serde_json::to_string_pretty(&summary_json(records, &rows))?)?;
    written.extend(plots(out, records, &rows)?);
    Ok(written)
}

/// How a method was run: its `--set` fields, the models that answered, the budgets.
#[derive(Debug, Serialize)]
struct MethodFacts<'a> {
    settings: &'a super::settings::Settings,
    /// Model ids per role (more than one if the registry changed during the run).
    models: BTreeMap<&'a str, Vec<&'a str>>,
    budgets: Vec<f64>,
}

/// The facts of each method, by name.
fn run_facts(records: &[EvalRecord]) -> BTreeMap<&'static str, MethodFacts<'_>> {
    let mut facts = BTreeMap::new();
    for m in methods(records) {
        let mine: Vec<&EvalRecord> = records.iter().filter(|r| r.method == m.name()).collect();
        let mut models: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in &mine {
            for (role, id) in &r.models {
                let ids = models.entry(role.as_str()).or_default();
                if !ids.contains(&id.as_str()) {
                    ids.push(id);
                }
            }
        }
        let mut budgets: Vec<f64> = mine.iter().map(|r| r.budget).collect();
        budgets.sort_by(f64::total_cmp);
        budgets.dedup();
        facts.insert(m.name(), MethodFacts { settings: &mine[0].settings, models, budgets });
    }
    facts
}

fn summary_json(records: &[EvalRecord], rows: &[Row]) -> serde_json::Value {
    let count = |k: PromptKind| {
        let mut ids: Vec<u64> = records.iter().filter(|r| r.kind == k).map(|r| r.prompt_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    serde_json::json!({
        "prompts": { "harmful": count(PromptKind::Harmful), "benign": count(PromptKind::Benign) },
        "methods": run_facts(records),
        "rows": rows,
    })
}

fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "split,method,count,reward_mean,reward_std,cost_mean,safety_rate,anytime_safety_rate,max_cost_mean,seconds_mean,seconds_p95,response_tokens_mean,generated_tokens_mean\n",
    );
    for r in rows {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.split.name(),
            r.method,
            s.count,
            s.reward_mean,
            s.reward_std,
            s.cost_mean,
            s.safety_rate,
            s.anytime_safety_rate,
            s.max_cost_mean,
            s.seconds_mean,
            s.seconds_p95,
            s.response_tokens_mean,
            s.generated_tokens_mean
        );
    }
    out
}

fn markdown(records: &[EvalRecord], rows: &[Row], partial: usize) -> String {
    let mut md = String::from("# Evaluation results\n\n");
    if partial > 0 {
        let _ = writeln!(md, "**{partial} prompt(s) not answered by every method are left out** (the run was cut short).\n");
    }
    md += "Written by `inferenceguard eval` from `results.jsonl`. Reward: mean ± sample std. Safety rate: `C ≤ B` of the final \
           response. Anytime safety: `C(x, y≤t) ≤ B` at every prefix read (every `--audit-every` tokens and at the end). \
           Time: wall time per prompt as the client saw it (mean and p95). Tokens: the response's, and all the policy generated.\n";
    for split in Split::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.split == split).collect();
        let Some(first) = mine.first() else { continue };
        let _ = writeln!(md, "\n## {} prompts ({} per method)\n", capitalised(split.name()), first.summary.count);
        md += "| Method | Reward ↑ | Cost ↓ | Safety rate ↑ | Anytime safety ↑ | Time (s) | p95 time (s) | Response tokens | Generated tokens |\n";
        md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for r in mine {
            let s = &r.summary;
            let _ = writeln!(
                md,
                "| {} | {:.3} ± {:.3} | {:.3} | {:.1}% | {:.1}% | {:.1} | {:.1} | {:.0} | {:.0} |",
                r.label,
                s.reward_mean,
                s.reward_std,
                s.cost_mean,
                100.0 * s.safety_rate,
                100.0 * s.anytime_safety_rate,
                s.seconds_mean,
                s.seconds_p95,
                s.response_tokens_mean,
                s.generated_tokens_mean
            );
        }
    }
    md += "\n## Settings\n\n| Method | `--set` fields | Models | Budget B |\n|---|---|---|---|\n";
    for (method, facts) in run_facts(records) {
        let settings = facts.settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
        let models = facts.models.iter().map(|(role, ids)| format!("{role}: {}", ids.join(" / "))).collect::<Vec<_>>().join("; ");
        let budgets = facts.budgets.iter().map(f64::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(md, "| {method} | {} | {models} | {budgets} |", if settings.is_empty() { "(defaults)".into() } else { settings });
    }
    md += "\nPlots: `fig2-reward-vs-safety`, `fig2-time-vs-safety`, `fig3-reward`, `fig3-max-cost` (`.svg` and `.png`), all prompts.\n";
    md
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}

/// Figure 2 (reward and time against the safety rate, a dot per method) and
/// Figure 3 (distributions of reward and of maximum cumulative cost), over all prompts.
fn plots(out: &Path, records: &[EvalRecord], rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    let all: Vec<&Row> = rows.iter().filter(|r| r.split == Split::All).collect();
    let n = all.first().map_or(0, |r| r.summary.count);
    let mut written = Vec::new();
    let mut save = |stem: &str, draw: &dyn Fn(&Path, &Path) -> anyhow::Result<bool>| -> anyhow::Result<()> {
        let (svg, png) = (out.join(format!("{stem}.svg")), out.join(format!("{stem}.png")));
        if !draw(&svg, &png)? {
            eprintln!("{}: no font found, the chart has no text (set IG_PLOT_FONT to a .ttf file)", svg.display());
        }
        written.extend([svg, png]);
        Ok(())
    };
    let scatter = |title: String, y_desc: &str, y: fn(&Summary) -> f64| ScatterChart {
        title,
        x_desc: "safety rate (C ≤ B)".into(),
        y_desc: y_desc.into(),
        points: all.iter().map(|r| LabelledPoint { label: r.label.into(), x: r.summary.safety_rate, y: y(&r.summary) }).collect(),
        x_range: Some((-0.03, 1.03)),
    };
    let reward = scatter(format!("Reward vs safety rate ({n} prompts)"), "mean reward", |s| s.reward_mean);
    save("fig2-reward-vs-safety", &|svg, png| scatter_chart(&reward, svg, png))?;
    let time = scatter(format!("Time vs safety rate ({n} prompts)"), "mean seconds per prompt", |s| s.seconds_mean);
    save("fig2-time-vs-safety", &|svg, png| scatter_chart(&time, svg, png))?;
    let boxes = |title: &str, x_desc: &str, value: fn(&EvalRecord) -> f64, marker| BoxChart {
        title: title.into(),
        x_desc: x_desc.into(),
        rows: methods(records)
            .into_iter()
            .map(|m| BoxRow { label: paper_label(m).into(), values: records.iter().filter(|r| r.method == m.name()).map(value).collect() })
            .collect(),
        marker,
    };
    let reward = boxes("Reward per response", "reward R(x, y)", |r| r.reward, None);
    save("fig3-reward", &|svg, png| box_chart(&reward, svg, png))?;
    let budget = records.first().map_or(0.0, |r| r.budget);
    let max_cost = boxes("Maximum cumulative cost per response", "max over prefixes of C(x, y≤t)", |r| r.max_cost, Some((budget, format!("B = {budget}"))));
    save("fig3-max-cost", &|svg, png| box_chart(&max_cost, svg, png))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt_id: u64, kind: PromptKind, method: Method, reward: f64, cost: f64, max_cost: f64) -> EvalRecord {
        EvalRecord {
            prompt_id,
            kind,
            source: "s".into(),
            method: method.name().into(),
            settings: [("samples_count".to_string(), "4".to_string())].into(),
            seed: 1,
            budget: 0.0,
            reward,
            cost,
            guard_min_z: -cost,
            prefix_costs: vec![(4, max_cost), (8, cost)],
            max_cost,
            seconds: 1.5,
            role_seconds: BTreeMap::new(),
            response_tokens: 8,
            generated_tokens: 32,
            steps: 2,
            candidates: 8,
            resample_rounds: 0,
            models: [("policy".to_string(), "p".to_string())].into(),
            text: "a response".into(),
        }
    }

    #[test]
    fn rows_split_by_prompt_kind_in_table_order_and_files_are_written() {
        let records = vec![
            record(1, PromptKind::Harmful, Method::InferenceGuard, 1.0, -1.0, 0.5),
            record(1, PromptKind::Harmful, Method::Base, 2.0, 1.0, 1.0),
            record(2, PromptKind::Benign, Method::InferenceGuard, 3.0, -2.0, -2.0),
            record(2, PromptKind::Benign, Method::Base, 4.0, -3.0, -1.0),
        ];
        assert_eq!(table_order().next(), Some(Method::Base));
        assert_eq!(table_order().last(), Some(Method::InferenceGuardCritic));
        assert_eq!(table_order().count(), 12);
        let rows = rows(&records);
        let keys: Vec<(Split, &str)> = rows.iter().map(|r| (r.split, r.method)).collect();
        assert_eq!(
            keys,
            [
                (Split::All, "base"),
                (Split::All, "inference_guard"),
                (Split::Harmful, "base"),
                (Split::Harmful, "inference_guard"),
                (Split::Benign, "base"),
                (Split::Benign, "inference_guard"),
            ]
        );
        let ig_all = &rows[1].summary;
        assert_eq!((ig_all.count, ig_all.safety_rate, ig_all.anytime_safety_rate, ig_all.reward_mean), (2, 1.0, 0.5, 2.0));
        let base_harmful = &rows[2].summary;
        assert_eq!((base_harmful.safety_rate, base_harmful.reward_mean), (0.0, 2.0));
        // A prompt only one method answered (a run cut short) is left out of the comparison.
        let mut with_partial = records.clone();
        with_partial.push(record(3, PromptKind::Harmful, Method::Base, 9.0, 9.0, 9.0));
        let (kept, partial) = complete_prompts(&with_partial);
        assert_eq!((kept, partial), (records.clone(), 1));
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), &with_partial).unwrap();
        assert_eq!(written.len(), 3 + 8);
        let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
        assert!(md.contains("| InferenceGuard | 2.000 ± 1.414 | -1.500 | 100.0% | 50.0% |"), "{md}");
        assert!(md.contains("## Harmful prompts (1 per method)"));
        assert!(!md.contains("a response"), "responses stay out of the report");
        assert!(md.contains("1 prompt(s) not answered by every method are left out"));
        let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 6);
        assert!(csv.lines().nth(1).unwrap().starts_with("all,base,2,3,"));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
        assert_eq!(json["prompts"]["harmful"], 1);
        assert_eq!(json["methods"]["base"]["settings"]["samples_count"], "4");
    }
}
