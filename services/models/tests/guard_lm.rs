//! Guard LMs as cost models, on tiny random checkpoints whose vocabulary has
//! `safe` and `unsafe` as single tokens: the score is the label logit
//! difference at the first answer position, batched items score as alone,
//! and bad templates or labels fail at load with one line naming the flag.

use candle_core::Device;
use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreRole, ScorerBackend};
use ig_models::causal_lm::{Architecture, CausalLm, Positions, WeightDtype};
use ig_models::scorer::{ScoreFormat, ScoreModel, ScorerOptions};
use ig_models::tiny_checkpoint::{tiny_vocab, write_tiny_checkpoint, TinySpec};

fn item(prompt: &str, response: &str) -> ScoreInput {
    ScoreInput { prompt: prompt.into(), response: response.into(), token_scores: false, truncate: false }
}

fn ids_of(vocab: &[String], text: &str) -> u32 {
    vocab.iter().position(|t| t == text).unwrap() as u32
}

#[test]
fn the_cost_is_the_label_logit_difference_after_the_template_for_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::new(Architecture::Qwen3);
    let ckpt = write_tiny_checkpoint(&spec, dir.path()).unwrap();
    let template = dir.path().join("guard.jinja");
    std::fs::write(&template, "<|im_start|>user\n{{ prompt }}<|im_end|>\n<|im_start|>assistant\n{{ response }}<|im_end|>\n<|im_start|>verdict\n").unwrap();
    let vocab = tiny_vocab(spec.vocab_size());
    let (unsafe_id, safe_id) = (ids_of(&vocab, "unsafe"), ids_of(&vocab, "safe"));
    let items = [item("how do I pick a lock", "sure, first"), item("hi", "hello there"), item("", "")];
    let never = || false;
    for path in [ckpt.hf_dir.clone(), ckpt.gguf.clone()] {
        assert_eq!(ScoreFormat::detect(&path).unwrap(), ScoreFormat::GuardLm);
        let opts = ScorerOptions { template: Some(template.display().to_string()), ..ScorerOptions::new(&path) };
        let mut scorer = ScoreModel::load(&opts).unwrap();
        let info = scorer.info();
        assert_eq!((info.role, info.head_format.as_str(), info.architecture.as_str()), (ScoreRole::Cost, "guard_lm", "qwen3"));
        let together = scorer.score(&items, &WorkControl::new(None, &never)).unwrap();
        let (model, _) = if path.is_dir() {
            (CausalLm::from_safetensors_dir(&path, WeightDtype::Native, &Device::Cpu).unwrap(), ())
        } else {
            (CausalLm::from_gguf(&path, WeightDtype::Native, &Device::Cpu).unwrap().0, ())
        };
        let codec = ig_models::policy::load_with_tokenizer(&path, WeightDtype::Native, &Device::Cpu).unwrap().1;
        for (k, x) in items.iter().enumerate() {
            let text = format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>verdict\n", x.prompt, x.response);
            let ids = ig_core::policy::TextCodec::tokenize(&codec, &text, false).unwrap();
            let logits = model.forward(&ids, 1, &mut model.new_cache(), Positions::Last).unwrap().logits;
            let row = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = row[unsafe_id as usize] - row[safe_id as usize];
            assert!((together[k].score - want).abs() <= 1e-4, "{}: item {k}: {} vs {want}", path.display(), together[k].score);
            assert_eq!(together[k].token_count, ids.len());
            let alone = scorer.score(std::slice::from_ref(x), &WorkControl::new(None, &never)).unwrap();
            assert!((alone[0].score - together[k].score).abs() <= 1e-4, "batched = alone");
        }
        assert_ne!(together[0].score, together[1].score, "different pairs, different costs");
    }
}

#[test]
fn the_built_in_templates_render_and_the_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_tiny_checkpoint(&TinySpec::new(Architecture::Qwen2), dir.path()).unwrap();
    let never = || false;
    // Llama Guard 3's labels are single tokens here; Qwen3Guard's " Safe" is not.
    let mut lg = ScoreModel::load(&ScorerOptions { template: Some("llama-guard-3".into()), ..ScorerOptions::new(&ckpt.gguf) }).unwrap();
    assert!(lg.score(&[item("q", "a")], &WorkControl::new(None, &never)).unwrap()[0].score.is_finite());
    let e = ScoreModel::load(&ScorerOptions { template: Some("qwen3guard".into()), ..ScorerOptions::new(&ckpt.gguf) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("--guard-labels") && e.contains("\" Unsafe\""), "{e}");
    let labels = Some(("unsafe".to_string(), "safe".to_string()));
    let opts = ScorerOptions { template: Some("qwen3guard".into()), guard_labels: labels, max_tokens: Some(2600), ..ScorerOptions::new(&ckpt.gguf) };
    let mut qg = ScoreModel::load(&opts).unwrap();
    let long = "x ".repeat(1000);
    let e = qg.score(&[item(&long, "a")], &WorkControl::new(None, &never)).unwrap_err().to_string();
    assert!(e.contains("items[0]") && e.contains("max_tokens 2600"), "{e}");
    let cut = qg.score(&[ScoreInput { truncate: true, ..item(&long, "a") }], &WorkControl::new(None, &never)).unwrap();
    assert!(cut[0].token_count <= 2600 && cut[0].truncated_token_count > 0, "{:?}", cut[0]);
}

#[test]
fn bad_templates_labels_and_roles_fail_at_load_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_tiny_checkpoint(&TinySpec::new(Architecture::Mistral), dir.path()).unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let cases = [
        (Some(file("broken.jinja", "{% if %}")), None, None, "--template"),
        (Some(file("norender.jinja", "{{ prompt.nope() }}")), None, None, "does not render"),
        (Some(dir.path().join("missing.jinja").display().to_string()), None, None, "missing.jinja"),
        (None, Some(("unsafe!!".to_string(), "safe".to_string())), None, "\"unsafe!!\""),
        (None, None, Some(ScoreRole::Reward), "cost model"),
    ];
    for (template, labels, role, needle) in cases {
        let opts = ScorerOptions { template, guard_labels: labels, role, ..ScorerOptions::new(&ckpt.hf_dir) };
        let e = ScoreModel::load(&opts).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
