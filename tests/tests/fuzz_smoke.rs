//! A bounded smoke of every fuzz target (`fuzz/`, bodies in `tests/src/fuzz.rs`) on the
//! stable toolchain: the committed seed corpus, then seeded mutations of it (bit flips,
//! byte edits, truncations, splices), a fixed number per target, so the run takes seconds
//! and is the same every time. The long coverage-guided runs use `cargo +nightly fuzz`
//! (docs/reliability.md); a crash they find is added to the corpus and replayed here.

use std::path::{Path, PathBuf};

use ig_e2e::fuzz::TARGETS;
use ig_proto::v1 as pb;
use prost::Message;

/// Mutated inputs per target.
const MUTATIONS: usize = 100_000;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// xorshift64*: a fixed, dependency-free stream of mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 => data.insert(at, rng.next() as u8),
            3 if at < data.len() => {
                data.remove(at);
            }
            4 => data.truncate(at),
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                data.splice(at..at, other[from..].iter().copied());
            }
        }
    }
    data
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_seeded_mutations() {
    for (i, (name, body)) in TARGETS.iter().enumerate() {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "{name}: empty corpus");
        for s in &seeds {
            body(s);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ i as u64);
        for _ in 0..MUTATIONS {
            body(&mutate(&mut rng, &seeds));
        }
    }
}

/// Writes the seed corpus (run once by hand: `cargo test --release -p ig-e2e --test
/// fuzz_smoke -- --ignored`): requests that pass validation and some at each limit.
#[test]
#[ignore]
fn write_seed_corpus() {
    let ids = |n: usize| (0..n as i32).map(|i| 100 + i % 1000).collect::<Vec<i32>>();
    let sampling = Some(pb::SamplingParams { temperature: Some(0.7), top_p: Some(0.9), top_k: Some(40), seed: Some(3) });
    let prefix = |n: usize, children: i32| pb::PrefixToExtend { token_ids: ids(n), children_count: children, ..Default::default() };
    let extend = vec![
        pb::ExtendChunkRequest { prefixes: vec![prefix(12, 4)], chunk_tokens: 8, sampling: sampling.clone(), ..Default::default() },
        pb::ExtendChunkRequest { prefixes: (0..16).map(|_| prefix(40, 8)).collect(), chunk_tokens: 16, sampling: sampling.clone(), ..Default::default() },
        pb::ExtendChunkRequest { prefixes: vec![prefix(2047, 1)], chunk_tokens: 1, ..Default::default() },
        pb::ExtendChunkRequest { prefixes: vec![pb::PrefixToExtend::default(); 3], chunk_tokens: -1, ..Default::default() },
    ];
    let top_k = vec![
        pb::TopKNextRequest { sequences: vec![pb::SequenceToScore { token_ids: ids(30) }], k: 5, omit_latents: false },
        pb::TopKNextRequest { sequences: (0..64).map(|_| pb::SequenceToScore { token_ids: ids(200) }).collect(), k: 64, omit_latents: true },
        pb::TopKNextRequest { sequences: vec![pb::SequenceToScore { token_ids: vec![-1, 49_152] }], k: 0, omit_latents: true },
    ];
    let latent = |v: f32| Some(pb::Latent { values: vec![v; 576] });
    let decode = vec![
        pb::DecodeFromLatentRequest {
            items: vec![pb::LatentToDecode { token_ids: ids(20), latent: latent(0.5), seed: 1, draw_index: 0 }],
            sampling: sampling.clone(),
            ..Default::default()
        },
        pb::DecodeFromLatentRequest {
            items: (0..8).map(|i| pb::LatentToDecode { token_ids: ids(10), latent: latent(i as f32), seed: i, draw_index: i as i32 }).collect(),
            ..Default::default()
        },
        pb::DecodeFromLatentRequest {
            items: vec![pb::LatentToDecode { token_ids: ids(3), latent: latent(f32::NAN), seed: -1, draw_index: -1 }],
            ..Default::default()
        },
    ];
    let item = |p: &str, r: &str| pb::ScoreItem { item_id: 1, prompt: p.into(), response: r.into(), ..Default::default() };
    let score = vec![
        pb::ScoreRequest { items: vec![item("How do I bake bread?", "Mix flour, water, salt and yeast.")], ..Default::default() },
        pb::ScoreRequest { items: (0..32).map(|_| item("How do I pick a lock?", "I can't help with that.")).collect(), ..Default::default() },
        pb::ScoreRequest { items: vec![item("", ""), item(&"x".repeat(70_000), "\u{fffd}")], ..Default::default() },
    ];
    let critic_item = |z: f64| pb::CriticItem { latent: latent(0.1), z, ..Default::default() };
    let ascend = vec![
        pb::AscendRequest { policy_model_id: "fuzz".into(), items: vec![critic_item(1.0)], steps: 5, step_size: 0.1, ..Default::default() },
        pb::AscendRequest { policy_model_id: "fuzz".into(), items: (0..16).map(|i| critic_item(i as f64)).collect(), steps: 100, step_size: 1.0, ..Default::default() },
        pb::AscendRequest { policy_model_id: "other".into(), items: vec![critic_item(f64::INFINITY)], steps: -3, step_size: f32::NAN, ..Default::default() },
    ];
    let text = |t: &str| Some(pb::generate_request::Prompt::PromptText(t.into()));
    let chat = Some(pb::generate_request::Prompt::PromptChat(pb::ChatPrompt {
        messages: vec![
            pb::ChatMessage { role: "system".into(), content: "Be brief.".into() },
            pb::ChatMessage { role: "user".into(), content: "How do I stay safe online?".into() },
        ],
    }));
    let params = |n: i32, k: i32, d: i32| {
        Some(pb::SearchParams {
            samples_count: Some(n),
            beam_width: Some(k),
            chunk_tokens: Some(d),
            max_new_tokens: Some(64),
            safety_budget: Some(0.0),
            seed: Some(7),
            ..Default::default()
        })
    };
    let generate = vec![
        pb::GenerateRequest { prompt: text("How do I bake bread?"), method: pb::Method::InferenceGuard as i32, params: params(16, 4, 16), ..Default::default() },
        pb::GenerateRequest { prompt: chat, method: pb::Method::BeamLagrangian as i32, params: params(8, 2, 8), ..Default::default() },
        pb::GenerateRequest { prompt: text("x"), method: pb::Method::Recontrol as i32, params: params(0, 0, 0), ..Default::default() },
        pb::GenerateRequest { prompt: text("y"), method: 999, ..Default::default() },
    ];
    let write = |target: &str, messages: Vec<Vec<u8>>| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, m) in messages.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), m).unwrap();
        }
    };
    write("policy_extend", extend.iter().map(Message::encode_to_vec).collect());
    write("policy_top_k", top_k.iter().map(Message::encode_to_vec).collect());
    write("policy_decode", decode.iter().map(Message::encode_to_vec).collect());
    write("scorer_score", score.iter().map(Message::encode_to_vec).collect());
    write("critic_ascend", ascend.iter().map(Message::encode_to_vec).collect());
    write("guard_generate", generate.iter().map(Message::encode_to_vec).collect());
    assert_eq!(TARGETS.len(), 6, "a new target needs its seeds here");
}
