//! The policy backend: a [`CausalLm`] plus its tokenizer and a prefix cache,
//! implementing [`PolicyBackend`] (chunk extension, top-k, and decoding from
//! given latents).
//!
//! An extension ([`CausalLmExtend`]) starts by computing every prefix's state:
//! prefixes that miss the cache are prefilled in one pass, and each prefix's
//! cache is forked into its children, adjacent prefixes of one length into one
//! shared cache (a batch). Each step then feeds the sampled token
//! of every live child of every run in flight, across concurrent requests,
//! in one forward pass (continuous batching). Every sampled token is fed, so
//! a candidate's latent is the hidden state at its own last token and its
//! cache is ready for the next chunk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use ig_core::policy::{
    Candidate, DecodedToken, ExtendRequest, ExtendRun, ExtendStats, FinishReason, LatentDecodeRequest, NextTokens,
    PolicyBackend, PolicyInfo, Sampling, TextCodec, TopKRequest, WorkControl,
};
use ig_core::RoleError;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::device_sampling::sample_rows;
use crate::kv_cache::KvCache;
use crate::causal_lm::{ForwardOutput, CausalLm, Positions, Segment, WeightDtype};
use crate::prefix_cache::{CachedGroup, PrefixCache};
use crate::sampling::{child_rng, log_sum_exp, rng_at_draw, sample};
use crate::tokenizer::TokenizerCodec;
use crate::{ModelError, Result};

/// How to load a policy.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// A `.gguf` file, or a Hugging Face checkpoint directory.
    pub model: PathBuf,
    /// Weight format in memory.
    pub dtype: WeightDtype,
    /// Where to run.
    pub device: Device,
    /// Byte budget of the prefix cache (0 disables it).
    pub prefix_cache_bytes: usize,
    /// Most prompt tokens one prefill pass feeds (activations and attention scores grow
    /// with it); longer prefills take several passes, a long prefix in pieces.
    pub max_prefill_tokens: usize,
    /// Where tokens are drawn.
    pub sampling_on: SamplingOn,
}

/// Where an extension draws its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplingOn {
    /// On the model's device when it is not the CPU.
    #[default]
    Auto,
    /// On the host, from logits copied back every step ([`crate::sampling`]).
    Host,
    /// Where the logits are ([`crate::device_sampling`]): only token ids and log-probs
    /// are copied back.
    Device,
}

impl std::str::FromStr for SamplingOn {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "host" => Ok(Self::Host),
            "device" => Ok(Self::Device),
            other => Err(format!("{other:?}: expected auto, host or device")),
        }
    }
}

/// Default of [`PolicyOptions::max_prefill_tokens`]: two full 2,048-token contexts.
pub const DEFAULT_MAX_PREFILL_TOKENS: usize = 4096;

/// Loads a causal LM and its tokenizer from a `.gguf` file (a `tokenizer.json`
/// beside it wins over the one rebuilt from metadata) or a Hugging Face
/// checkpoint directory.
pub fn load_with_tokenizer(path: &Path, dtype: WeightDtype, device: &Device) -> Result<(CausalLm, TokenizerCodec)> {
    if path.is_dir() {
        let model = CausalLm::from_safetensors_dir(path, dtype, device)?;
        let (eos, bos) = hf_special_ids(path)?;
        let codec = TokenizerCodec::from_hf_dir(path, &eos, bos)?;
        Ok((model, codec))
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let (model, meta) = CausalLm::from_gguf(path, dtype, device)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let codec = if dir.join("tokenizer.json").exists() {
            let eos = meta.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()).into_iter().collect::<Vec<_>>();
            TokenizerCodec::from_hf_dir(dir, &eos, None)?
        } else {
            TokenizerCodec::from_gguf(&meta)?
        };
        Ok((model, codec))
    } else if path.exists() {
        Err(ModelError::Unsupported(format!(
            "{}: expected a .gguf file or a directory with config.json and safetensors",
            path.display()
        )))
    } else {
        Err(ModelError::Io(format!("{}: no such file or directory", path.display())))
    }
}

/// A causal LM ready to extend prefixes.
pub struct CausalLmPolicy {
    model: CausalLm,
    codec: Arc<TokenizerCodec>,
    cache: PrefixCache,
    max_prefill_tokens: usize,
    /// Draw tokens where the logits are ([`SamplingOn`]).
    device_sampling: bool,
    info: PolicyInfo,
}

/// The computed state of one prefix before its children are drawn.
struct Start {
    kv: KvCache,
    /// `(vocab,)` next-token logits, on the model's device.
    logits: Tensor,
    hidden: Tensor,
}

/// One child being generated.
struct Child {
    index: usize,
    /// Its row of its batch's cache.
    row: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
}

/// The live children of one prefix.
struct Group {
    prefix_index: usize,
    prefix: Arc<[u32]>,
    children: Vec<Child>,
    biases: Vec<(u32, f32)>,
}

/// Children decoded together as the rows of one KV cache. Adjacent prefixes
/// whose states have the same length (the beams of a search step) share a
/// batch, so a decoding step runs one attention per layer for all their
/// children, not one per prefix: on a GPU the kernel launches per prefix,
/// not the arithmetic, bound the search. The row of a child that ended stays,
/// fed a placeholder token, until the ended rows are worth a copy to drop
/// ([`COMPACT_WHEN_ENDED_PER_LIVE`]).
struct Batch {
    kv: KvCache,
    groups: Vec<Group>,
}

/// A batch is compacted once its ended rows reach one per this many live
/// rows: few enough wasted rows per step, few enough copies of the cache
/// (each copies every live row's keys and values).
const COMPACT_WHEN_ENDED_PER_LIVE: usize = 8;

impl Batch {
    /// One batch of adjacent prefixes' children, each prefix's state forked
    /// into its children, with room for `extra` more positions.
    fn fork(parts: Vec<(KvCache, Group)>, extra: usize) -> Result<Self> {
        let most = parts.iter().map(|(_, g)| g.children.len()).max().unwrap_or(0);
        let first_rows = vec![0; most];
        let sources: Vec<(&KvCache, &[usize])> = parts.iter().map(|(kv, g)| (kv, &first_rows[..g.children.len()])).collect();
        let kv = KvCache::gather(&sources, extra)?;
        let mut groups: Vec<Group> = parts.into_iter().map(|(_, g)| g).collect();
        for (row, c) in groups.iter_mut().flat_map(|g| g.children.iter_mut()).enumerate() {
            c.row = row;
        }
        Ok(Self { kv, groups })
    }

    fn live_rows(&self) -> usize {
        self.groups.iter().map(|g| g.children.len()).sum()
    }

    /// Drops the rows of ended children when they are worth a copy.
    fn compact(&mut self) -> Result<()> {
        let live = self.live_rows();
        let ended = self.kv.rows() - live;
        if live == 0 || ended == 0 || ended * COMPACT_WHEN_ENDED_PER_LIVE < live {
            return Ok(());
        }
        let rows: Vec<usize> = self.groups.iter().flat_map(|g| g.children.iter().map(|c| c.row)).collect();
        self.kv = self.kv.select_rows(&rows)?;
        for (row, c) in self.groups.iter_mut().flat_map(|g| g.children.iter_mut()).enumerate() {
            c.row = row;
        }
        Ok(())
    }
}

impl CausalLmPolicy {
    /// Loads the model and its tokenizer.
    pub fn load(opts: &PolicyOptions) -> Result<Self> {
        let path = &opts.model;
        let (model, codec) = load_with_tokenizer(path, opts.dtype, &opts.device)?;
        let cfg = model.config();
        let info = PolicyInfo {
            model_id: model_id(path),
            architecture: cfg.architecture.name().into(),
            vocab_size: cfg.vocab_size,
            latent_dim: cfg.hidden_size,
            eos_token_ids: codec.eos_ids().to_vec(),
            bos_token_id: codec.bos_id(),
            chat_template: codec.chat_template().unwrap_or_default().to_string(),
            weight_dtype: model.weight_dtype().to_string(),
            device: device_name(&opts.device),
            max_position_embeddings: cfg.max_position_embeddings,
            kv_bytes_per_position: KvCache::bytes_per_position(
                cfg.num_layers,
                cfg.num_kv_heads,
                cfg.head_dim,
                model.activation_dtype(),
            ),
        };
        Ok(Self {
            model,
            codec: Arc::new(codec),
            cache: PrefixCache::new(opts.prefix_cache_bytes),
            max_prefill_tokens: opts.max_prefill_tokens.max(1),
            device_sampling: match opts.sampling_on {
                SamplingOn::Auto => !opts.device.is_cpu(),
                SamplingOn::Host => false,
                SamplingOn::Device => true,
            },
            info,
        })
    }

    /// The model.
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// The tokenizer and chat template.
    pub fn tokenizer(&self) -> &Arc<TokenizerCodec> {
        &self.codec
    }

    /// Bytes held by the prefix cache.
    pub fn prefix_cache_bytes(&self) -> usize {
        self.cache.used_bytes()
    }

    /// Computes (or finds in the cache) the state at the end of each sequence.
    fn start_states(&mut self, sequences: &[&[u32]], stats: &mut ExtendStats) -> Result<Vec<Start>> {
        let mut starts: Vec<Option<Start>> = Vec::with_capacity(sequences.len());
        let mut to_feed: Vec<(usize, KvCache, usize)> = Vec::new(); // (sequence, cache, covered)
        for (i, seq) in sequences.iter().enumerate() {
            match self.cache.lookup(seq) {
                Some(hit) if hit.len == seq.len() => {
                    stats.cached_prefix_tokens += hit.len as u64;
                    starts.push(Some(Start {
                        kv: hit.group.kv.select_rows(&[hit.row])?,
                        logits: hit.group.logits.get(hit.row)?,
                        hidden: hit.group.hidden.get(hit.row)?,
                    }));
                }
                Some(hit) => {
                    stats.cached_prefix_tokens += hit.len as u64;
                    to_feed.push((i, hit.group.kv.select_rows(&[hit.row])?, hit.len));
                    starts.push(None);
                }
                None => {
                    to_feed.push((i, self.model.new_cache(), 0));
                    starts.push(None);
                }
            }
        }
        // Prefill in passes of at most max_prefill_tokens tokens; a sequence that does not
        // fit in what is left of a pass continues in the next (its cache carries over).
        let mut fed: Vec<usize> = to_feed.iter().map(|(_, _, covered)| *covered).collect();
        let mut last: Vec<Option<(Tensor, Tensor)>> = vec![None; to_feed.len()];
        while let Some(first) = (0..to_feed.len()).find(|&k| fed[k] < sequences[to_feed[k].0].len()) {
            let mut room = self.max_prefill_tokens;
            let mut ends: Vec<Option<usize>> = vec![None; to_feed.len()];
            for k in first..to_feed.len() {
                let len = sequences[to_feed[k].0].len();
                if room == 0 {
                    break;
                }
                if fed[k] < len {
                    let end = len.min(fed[k] + room);
                    room -= end - fed[k];
                    ends[k] = Some(end);
                }
            }
            let mut segments: Vec<Segment<'_>> = to_feed
                .iter_mut()
                .zip(&ends)
                .enumerate()
                .filter_map(|(k, ((i, kv, _), end))| end.map(|end| Segment { tokens: &sequences[*i][fed[k]..end], rows: 1, cache: kv }))
                .collect();
            let out = self.model.forward_segments(&mut segments, Positions::Last)?;
            drop(segments);
            stats.forward_passes += 1;
            for (row, k) in (0..to_feed.len()).filter(|&k| ends[k].is_some()).enumerate() {
                let end = ends[k].expect("filtered");
                stats.prefill_tokens += (end - fed[k]) as u64;
                fed[k] = end;
                if end == sequences[to_feed[k].0].len() {
                    last[k] = Some((out.logits.get(row)?, out.hidden.get(row)?));
                }
            }
        }
        for ((i, kv, _), out) in to_feed.into_iter().zip(last) {
            let (logits, hidden) = out.expect("every sequence was fed to its end");
            self.cache.insert(CachedGroup {
                kv: kv.clone(),
                logits: logits.unsqueeze(0)?.copy()?,
                hidden: hidden.unsqueeze(0)?.copy()?,
                rows: vec![Arc::from(sequences[i])],
            })?;
            starts[i] = Some(Start { kv, logits, hidden });
        }
        Ok(starts.into_iter().map(|s| s.expect("every sequence started")).collect())
    }

    /// One token per item from the LM head applied to its latent, then the
    /// latents of the extended sequences in one forward pass.
    ///
    /// Each latent goes through the LM head alone (one row), as the hidden
    /// state of a lone child goes through it inside a decoding step, and the
    /// token is drawn from the stream of child 0 of a prefix seeded with the
    /// item's seed, at the item's draw index: so an unedited latent draws
    /// what the extension draws, bit for bit. The extended sequence's state
    /// comes from [`Self::start_states`]: the sequence itself was cached by
    /// the call (or TopKNext, or extension) that returned its latent, so it
    /// is one decoding step.
    fn decode_latents(
        &mut self,
        req: &LatentDecodeRequest,
        control: &WorkControl<'_>,
    ) -> std::result::Result<(Vec<DecodedToken>, ExtendStats), RoleError> {
        let started = std::time::Instant::now();
        control.check()?;
        let stop: HashSet<u32> = self.info.eos_token_ids.iter().chain(&req.stop_token_ids).copied().collect();
        let mut scratch = Vec::new();
        let mut decoded = Vec::with_capacity(req.items.len());
        for item in &req.items {
            let latent = Tensor::from_slice(&item.latent, (1, item.latent.len()), self.model.device()).map_err(ModelError::from)?;
            let logits: Vec<f32> = self.model.lm_head(&latent)?.squeeze(0).and_then(|l| l.to_vec1()).map_err(ModelError::from)?;
            let mut rng = rng_at_draw(item.seed, 0, 0, item.draw_index);
            let token = sample(&logits, &req.sampling, &mut rng, &mut scratch);
            let sequence_tokens = item.token_ids.len() + 1;
            decoded.push(DecodedToken {
                token_id: token,
                logprob: logits[token as usize] - log_sum_exp(&logits),
                text: self.codec.decode_continuation(&item.token_ids, &[token])?,
                finish_reason: if stop.contains(&token) {
                    FinishReason::Stop
                } else if sequence_tokens >= req.max_sequence_tokens {
                    FinishReason::Length
                } else {
                    FinishReason::Chunk
                },
                next_latent: None,
                sequence_tokens,
            });
        }
        let mut stats = ExtendStats { generated_tokens: decoded.len() as u64, ..ExtendStats::default() };
        let open: Vec<usize> = if req.with_next_latents {
            (0..decoded.len()).filter(|&i| decoded[i].finish_reason != FinishReason::Stop).collect()
        } else {
            Vec::new()
        };
        if !open.is_empty() {
            control.check()?;
            let extended: Vec<Vec<u32>> = open
                .iter()
                .map(|&i| {
                    let mut t = req.items[i].token_ids.clone();
                    t.push(decoded[i].token_id);
                    t
                })
                .collect();
            let seqs: Vec<&[u32]> = extended.iter().map(Vec::as_slice).collect();
            let starts = self.start_states(&seqs, &mut stats)?;
            for (&i, start) in open.iter().zip(starts) {
                decoded[i].next_latent = Some(start.hidden.to_vec1().map_err(ModelError::from)?);
            }
        }
        stats.compute = started.elapsed();
        Ok((decoded, stats))
    }

    fn candidate(&self, g: &Group, c: &Child, latent: Option<Vec<f32>>) -> Result<Candidate> {
        Ok(Candidate {
            prefix_index: g.prefix_index,
            child_index: c.index,
            text: self.codec.decode_continuation(&g.prefix, &c.tokens)?,
            token_ids: c.tokens.clone(),
            token_logprobs: c.logprobs.clone(),
            finish_reason: c.finish.unwrap_or(FinishReason::Chunk),
            latent,
            sequence_tokens: g.prefix.len() + c.tokens.len(),
        })
    }

    fn begin(&mut self, req: &ExtendRequest) -> Result<CausalLmExtend> {
        let mut stats = ExtendStats::default();
        let sequences: Vec<&[u32]> = req.prefixes.iter().map(|p| p.token_ids.as_slice()).collect();
        let starts = self.start_states(&sequences, &mut stats)?;
        let mut batches = Vec::new();
        let mut pending: Vec<(KvCache, Group)> = Vec::new();
        let mut host_logits: Vec<Vec<f32>> = Vec::new();
        let mut device_logits: Vec<Tensor> = Vec::new();
        for (i, (p, start)) in req.prefixes.iter().zip(starts).enumerate() {
            if p.children == 0 {
                return Err(ModelError::Shape(format!("prefix {i} asks for no children")));
            }
            if self.device_sampling {
                device_logits.push(start.logits.unsqueeze(0)?.repeat((p.children, 1))?);
            } else {
                host_logits.extend(std::iter::repeat_n(start.logits.to_vec1()?, p.children));
            }
            let group = Group {
                prefix_index: i,
                prefix: Arc::from(p.token_ids.as_slice()),
                children: (0..p.children)
                    .map(|c| Child {
                        index: c,
                        row: 0,
                        rng: match p.seed {
                            Some(seed) => child_rng(seed, 0, c),
                            None => child_rng(req.sampling.seed, i, c),
                        },
                        tokens: Vec::with_capacity(req.chunk_tokens),
                        logprobs: Vec::with_capacity(req.chunk_tokens),
                        finish: None,
                    })
                    .collect(),
                biases: p.logit_biases.clone(),
            };
            if pending.last().is_some_and(|(kv, _)| kv.len() != start.kv.len()) {
                // Room for the whole chunk now, so decoding writes in place.
                batches.push(Batch::fork(std::mem::take(&mut pending), req.chunk_tokens)?);
            }
            pending.push((start.kv, group));
        }
        if !pending.is_empty() {
            batches.push(Batch::fork(pending, req.chunk_tokens)?);
        }
        Ok(CausalLmExtend {
            stop: self.info.eos_token_ids.iter().chain(&req.stop_token_ids).copied().collect(),
            sampling: req.sampling,
            chunk_tokens: req.chunk_tokens,
            max_sequence_tokens: req.max_sequence_tokens,
            with_latents: req.with_latents,
            batches,
            row_logits: if self.device_sampling { RowLogits::Device(Tensor::cat(&device_logits, 0)?) } else { RowLogits::Host(host_logits) },
            step: 0,
            stats,
            finished: Vec::new(),
        })
    }

    /// One token for every live child of every run, in one forward pass.
    fn step(&mut self, runs: &mut [&mut CausalLmExtend]) -> Result<()> {
        let vocab = self.info.vocab_size;
        let fed: Vec<Vec<Vec<u32>>> = runs.iter_mut().map(|r| r.draw(vocab)).collect::<Result<_>>()?;
        let out = {
            let mut segments: Vec<Segment<'_>> = runs
                .iter_mut()
                .zip(&fed)
                .flat_map(|(r, fed)| {
                    r.batches.iter_mut().zip(fed).map(|(b, toks)| Segment { tokens: toks, rows: toks.len(), cache: &mut b.kv })
                })
                .collect();
            self.model.forward_segments(&mut segments, Positions::Last)?
        };
        // Logits come back to the host only for runs that draw there.
        let flat: Option<Vec<f32>> = if self.device_sampling { None } else { Some(out.logits.flatten_all()?.to_vec1()?) };
        let mut base = 0;
        for run in runs.iter_mut() {
            run.stats.forward_passes += 1;
            let rows = run.fed_rows();
            run.absorb(self, &out, flat.as_deref(), base)?;
            base += rows;
        }
        Ok(())
    }
}

/// An extension in progress ([`ExtendRun`]): the live children of each
/// prefix with the logits of their next token.
pub struct CausalLmExtend {
    stop: HashSet<u32>,
    sampling: Sampling,
    chunk_tokens: usize,
    max_sequence_tokens: usize,
    with_latents: bool,
    batches: Vec<Batch>,
    /// Per live child (batches, groups and children in order), its next-token logits.
    row_logits: RowLogits,
    step: usize,
    stats: ExtendStats,
    finished: Vec<Candidate>,
}

/// The next-token logits of an extension's live rows.
enum RowLogits {
    /// Copied to the host, one vector per row.
    Host(Vec<Vec<f32>>),
    /// `(rows, vocab)` on the model's device.
    Device(Tensor),
}

impl CausalLmExtend {
    /// KV caches each decoding step of this run feeds: one per batch of
    /// adjacent prefixes of one length, each with its own attention kernels.
    pub fn segments(&self) -> usize {
        self.batches.len()
    }

    /// The children of every batch, in row-logits order.
    fn children_mut(&mut self) -> impl Iterator<Item = (&[(u32, f32)], &mut Child)> {
        self.batches.iter_mut().flat_map(|b| b.groups.iter_mut()).flat_map(|g| g.children.iter_mut().map(|c| (g.biases.as_slice(), c)))
    }

    /// Draws one token for every live child; returns the tokens to feed each
    /// batch, one per row of its cache.
    fn draw(&mut self, vocab: usize) -> Result<Vec<Vec<u32>>> {
        // Per live child in order: (token, its log-probability).
        let drawn: Vec<(u32, f32)> = match std::mem::replace(&mut self.row_logits, RowLogits::Host(Vec::new())) {
            RowLogits::Host(rows) => {
                let sampling = self.sampling;
                let mut scratch = Vec::new();
                let mut biased = vec![0f32; vocab];
                rows.iter()
                    .zip(self.children_mut())
                    .map(|(logits, (biases, c))| {
                        let token = draw(logits, biases, &sampling, &mut c.rng, &mut biased, &mut scratch);
                        (token, logits[token as usize] - log_sum_exp(logits))
                    })
                    .collect()
            }
            RowLogits::Device(logits) => {
                // Each child's next word of its stream, as the host sampler takes it.
                let units: Vec<f32> = self.children_mut().map(|(_, c)| c.rng.random::<f32>()).collect();
                let biases: Vec<&[(u32, f32)]> =
                    self.batches.iter().flat_map(|b| &b.groups).flat_map(|g| g.children.iter().map(|_| g.biases.as_slice())).collect();
                let draws = sample_rows(&logits, &self.sampling, &units, &biases)?;
                draws.tokens.into_iter().zip(draws.logprobs).collect()
            }
        };
        let mut drawn = drawn.into_iter();
        let mut fed = Vec::with_capacity(self.batches.len());
        for b in self.batches.iter_mut() {
            // An ended row is fed any valid token: its outputs are never read.
            let mut toks = vec![0u32; b.kv.rows()];
            for g in b.groups.iter_mut() {
                for c in g.children.iter_mut() {
                    let (token, logprob) = drawn.next().expect("one draw per live child");
                    c.logprobs.push(logprob);
                    c.tokens.push(token);
                    let len = g.prefix.len() + c.tokens.len();
                    c.finish = if self.stop.contains(&token) {
                        Some(FinishReason::Stop)
                    } else if len >= self.max_sequence_tokens {
                        Some(FinishReason::Length)
                    } else if self.step + 1 == self.chunk_tokens {
                        Some(FinishReason::Chunk)
                    } else {
                        None
                    };
                    toks[c.row] = token;
                    self.stats.generated_tokens += 1;
                }
            }
            fed.push(toks);
        }
        self.step += 1;
        Ok(fed)
    }

    /// Takes this run's rows `base..` of a forward pass: the logits are the
    /// next step's (`flat`: all rows' copied to the host, when drawing there), the hidden
    /// states the latents of candidates that end here.
    fn absorb(&mut self, policy: &mut CausalLmPolicy, out: &ForwardOutput, flat: Option<&[f32]>, base: usize) -> Result<()> {
        let vocab = policy.info.vocab_size;
        let device = out.logits.device();
        // The first output row of each batch.
        let firsts: Vec<usize> = self.batches.iter().scan(base, |at, b| Some(std::mem::replace(at, *at + b.kv.rows()))).collect();
        // The latents of the rows that end here, copied back in one piece.
        let mut latents = if self.with_latents {
            let ending: Vec<u32> = self
                .batches
                .iter()
                .zip(&firsts)
                .flat_map(|(b, &first)| b.groups.iter().flat_map(|g| &g.children).filter(|c| c.finish.is_some()).map(move |c| (first + c.row) as u32))
                .collect();
            if ending.is_empty() {
                Vec::new()
            } else {
                out.hidden.index_select(&Tensor::new(ending.as_slice(), device)?, 0)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?
            }
        } else {
            Vec::new()
        }
        .into_iter();
        let mut next_host = Vec::new();
        let mut next_rows: Vec<u32> = Vec::new();
        for (b, &first) in self.batches.iter_mut().zip(&firsts) {
            // Children that completed the chunk can be extended again: their
            // state is kept for the next call.
            let mut resumable_rows = Vec::new();
            let mut resumable_tokens: Vec<Arc<[u32]>> = Vec::new();
            for g in b.groups.iter_mut() {
                for c in &g.children {
                    let at = first + c.row;
                    match c.finish {
                        None => match flat {
                            Some(flat) => next_host.push(flat[at * vocab..(at + 1) * vocab].to_vec()),
                            None => next_rows.push(at as u32),
                        },
                        Some(finish) => {
                            let latent = if self.with_latents { latents.next() } else { None };
                            self.finished.push(policy.candidate(g, c, latent)?);
                            if finish == FinishReason::Chunk {
                                resumable_rows.push(c.row);
                                resumable_tokens.push(g.prefix.iter().chain(&c.tokens).copied().collect());
                            }
                        }
                    }
                }
                g.children.retain(|c| c.finish.is_none());
            }
            if !resumable_rows.is_empty() {
                let all = resumable_rows.len() == b.kv.rows();
                let idx: Vec<u32> = resumable_rows.iter().map(|&r| (first + r) as u32).collect();
                let idx = Tensor::new(idx.as_slice(), device)?;
                policy.cache.insert(CachedGroup {
                    kv: if all { b.kv.clone() } else { b.kv.select_rows(&resumable_rows)? },
                    logits: out.logits.index_select(&idx, 0)?,
                    hidden: out.hidden.index_select(&idx, 0)?,
                    rows: resumable_tokens,
                })?;
            }
            b.groups.retain(|g| !g.children.is_empty());
            b.compact()?;
        }
        self.batches.retain(|b| !b.groups.is_empty());
        self.row_logits = match flat {
            Some(_) => RowLogits::Host(next_host),
            None if next_rows.is_empty() => RowLogits::Device(Tensor::zeros((0, vocab), candle_core::DType::F32, device)?),
            None => RowLogits::Device(out.logits.index_select(&Tensor::new(next_rows.as_slice(), device)?, 0)?),
        };
        Ok(())
    }
}

impl ExtendRun for CausalLmExtend {
    fn is_done(&self) -> bool {
        self.batches.is_empty()
    }

    fn take_finished(&mut self) -> Vec<Candidate> {
        std::mem::take(&mut self.finished)
    }

    fn stats(&self) -> ExtendStats {
        self.stats.clone()
    }

    fn fed_rows(&self) -> usize {
        self.batches.iter().map(|b| b.kv.rows()).sum()
    }
}

/// Applies the prefix's biases (if any) and draws a token.
fn draw(
    logits: &[f32],
    biases: &[(u32, f32)],
    sampling: &Sampling,
    rng: &mut ChaCha8Rng,
    biased: &mut [f32],
    scratch: &mut Vec<(f32, u32)>,
) -> u32 {
    if biases.is_empty() {
        return sample(logits, sampling, rng, scratch);
    }
    biased.copy_from_slice(logits);
    for &(id, b) in biases {
        biased[id as usize] += b;
    }
    sample(biased, sampling, rng, scratch)
}

impl PolicyBackend for CausalLmPolicy {
    type Run = CausalLmExtend;

    fn info(&self) -> PolicyInfo {
        self.info.clone()
    }

    fn codec(&self) -> Arc<dyn TextCodec> {
        self.codec.clone()
    }

    fn warm_up(&mut self) -> std::result::Result<(), RoleError> {
        let ids = self.codec.tokenize("Hello! How are you today?", false)?;
        let req = ExtendRequest {
            prefixes: vec![ig_core::policy::PrefixSpec { token_ids: ids, children: 2, logit_biases: vec![], seed: None }],
            chunk_tokens: 2,
            sampling: Sampling::default(),
            stop_token_ids: vec![],
            max_sequence_tokens: self.info.max_position_embeddings,
            with_latents: true,
        };
        self.extend(&req, &WorkControl::new(None, &|| false), &mut |_| {})?;
        Ok(())
    }

    fn begin_extend(&mut self, request: &ExtendRequest) -> std::result::Result<CausalLmExtend, RoleError> {
        Ok(self.begin(request)?)
    }

    fn step_extends(&mut self, runs: &mut [&mut CausalLmExtend]) -> std::result::Result<(), RoleError> {
        Ok(self.step(runs)?)
    }

    fn decode_from_latents(
        &mut self,
        request: &LatentDecodeRequest,
        control: &WorkControl<'_>,
    ) -> std::result::Result<(Vec<DecodedToken>, ExtendStats), RoleError> {
        self.decode_latents(request, control)
    }

    fn top_k_next(
        &mut self,
        req: &TopKRequest,
        control: &WorkControl<'_>,
    ) -> std::result::Result<Vec<NextTokens>, RoleError> {
        control.check()?;
        let seqs: Vec<&[u32]> = req.sequences.iter().map(Vec::as_slice).collect();
        let starts = self.start_states(&seqs, &mut ExtendStats::default()).map_err(RoleError::from)?;
        starts
            .into_iter()
            .map(|s| {
                let all: Vec<f32> = s.logits.to_vec1().map_err(|e| RoleError::from(ModelError::from(e)))?;
                let lse = log_sum_exp(&all);
                let mut order: Vec<u32> = (0..all.len() as u32).collect();
                let k = req.k.min(order.len());
                let by_logit = |a: &u32, b: &u32| all[*b as usize].total_cmp(&all[*a as usize]).then(a.cmp(b));
                if k < order.len() {
                    order.select_nth_unstable_by(k - 1, by_logit);
                }
                order.truncate(k);
                order.sort_unstable_by(by_logit);
                let logits: Vec<f32> = order.iter().map(|&i| all[i as usize]).collect();
                let texts = order.iter().map(|&i| self.codec.detokenize(&[i], false)).collect::<std::result::Result<_, _>>()?;
                Ok(NextTokens {
                    texts,
                    logprobs: logits.iter().map(|l| l - lse).collect(),
                    logits,
                    token_ids: order,
                    latent: if req.with_latents {
                        Some(s.hidden.to_vec1().map_err(|e| RoleError::from(ModelError::from(e)))?)
                    } else {
                        None
                    },
                })
            })
            .collect::<std::result::Result<Vec<_>, RoleError>>()
    }
}

/// EOS and BOS ids named by a Hugging Face checkpoint's `generation_config.json`
/// (preferred) or `config.json`.
fn hf_special_ids(dir: &Path) -> Result<(Vec<u32>, Option<u32>)> {
    let ids = |v: Option<&serde_json::Value>| -> Vec<u32> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
            _ => vec![],
        }
    };
    let mut eos = Vec::new();
    let mut bos = None;
    for name in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else { continue };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Format(format!("{name}: {e}")))?;
        if eos.is_empty() {
            eos = ids(json.get("eos_token_id"));
        }
        if bos.is_none() {
            bos = ids(json.get("bos_token_id")).first().copied();
        }
    }
    Ok((eos, bos))
}

fn model_id(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// "cpu" or "cuda:N".
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Parses "cpu" or "cuda[:N]" into a device. CUDA needs the `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ModelError::Unsupported(format!("device {spec:?}: expected cpu, cuda or cuda:N")))?,
        None => return Err(ModelError::Unsupported(format!("device {spec:?}: expected cpu, cuda or cuda:N"))),
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(ModelError::Unsupported(format!(
            "device {spec:?}: this binary was built without CUDA; rebuild with `--features cuda` or use cpu"
        )));
    }
    // candle's driver errors carry a backtrace: keep the first line, and say what to do.
    Device::new_cuda(ordinal).map_err(|e| {
        let first = e.to_string();
        let first = first.lines().next().unwrap_or_default().trim();
        ModelError::Unsupported(format!(
            "device {spec:?}: no usable CUDA device ({first}); check the driver with nvidia-smi, or use cpu"
        ))
    })
}
