//! Frozen-trunk features: every distinct text embedded once, then concatenated per layout.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ig_models::encoder::{EmbedOptions, SentenceEncoder};
use ig_models::score_head::Segment;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// Texts per call to the encoder (the progress bar moves once per call).
const CHUNK: usize = 64;

/// Something that turns texts into fixed-width embeddings.
pub trait Embedder {
    /// Width of one embedding.
    fn dim(&self) -> usize;
    /// A string that changes whenever the embeddings would (cache key).
    fn fingerprint(&self) -> String;
    /// Embeds `texts`, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// The MiniLM (or any BERT) trunk with fixed embedding options.
pub struct EncoderEmbedder {
    /// The trunk.
    pub encoder: SentenceEncoder,
    /// Pooling, normalisation, token limit.
    pub opts: EmbedOptions,
    /// Name written into head files, e.g. `all-MiniLM-L6-v2`.
    pub trunk: String,
    /// Size of the weights file, part of the cache key.
    pub weights_bytes: u64,
}

impl EncoderEmbedder {
    /// Loads the trunk in `dir` (`config.json`, `model.safetensors`, `tokenizer.json`) on CPU.
    pub fn load(dir: &Path, trunk: &str, opts: EmbedOptions) -> Result<Self> {
        let encoder = SentenceEncoder::load(dir, &candle_core::Device::Cpu)
            .with_context(|| format!("loading the encoder in {}", dir.display()))?;
        let weights_bytes = std::fs::metadata(dir.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
        Ok(Self { encoder, opts, trunk: trunk.to_string(), weights_bytes })
    }
}

impl Embedder for EncoderEmbedder {
    fn dim(&self) -> usize {
        self.encoder.dim()
    }
    fn fingerprint(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.trunk, self.weights_bytes, self.opts.pooling, self.opts.normalize, self.opts.max_tokens
        )
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.encoder.embed(texts, &self.opts)?)
    }
}

/// Embeddings of distinct texts.
#[derive(Debug, Clone, Default)]
pub struct EmbeddingTable {
    index: HashMap<String, usize>,
    vectors: Vec<Vec<f32>>,
    dim: usize,
}

impl EmbeddingTable {
    /// Embeds every distinct text of `texts` (first-seen order), showing a progress bar
    /// labelled `what`. With `cache_dir`, a table of the same texts and embedder is read
    /// from (or written to) `cache_dir/<sha256>.bin`.
    pub fn build(
        embedder: &dyn Embedder,
        texts: impl IntoIterator<Item = String>,
        what: &str,
        cache_dir: Option<&Path>,
    ) -> Result<Self> {
        let mut index = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for t in texts {
            if !index.contains_key(&t) {
                index.insert(t.clone(), order.len());
                order.push(t);
            }
        }
        let dim = embedder.dim();
        let cache_path = cache_dir.map(|d| d.join(format!("{}.bin", cache_key(embedder, &order))));
        if let Some(p) = &cache_path {
            if let Ok(vectors) = read_cache(p, order.len(), dim) {
                eprintln!("{what}: {} texts from the embedding cache {}", order.len(), p.display());
                return Ok(Self { index, vectors, dim });
            }
        }
        let bar = ProgressBar::new(order.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} texts {elapsed_precise} (eta {eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("embedding {what}"));
        let mut vectors = Vec::with_capacity(order.len());
        for chunk in order.chunks(CHUNK) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            vectors.extend(embedder.embed(&refs)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
        if let Some(p) = &cache_path {
            if let Err(e) = write_cache(p, &vectors) {
                eprintln!("warning: embedding cache {}: {e:#}", p.display());
            }
        }
        Ok(Self { index, vectors, dim })
    }

    /// The embedding of `text`.
    ///
    /// # Panics
    /// If `text` was not among the texts the table was built from (a caller's bug).
    pub fn get(&self, text: &str) -> &[f32] {
        let i = self.index.get(text).unwrap_or_else(|| panic!("text not embedded: {:.40}…", text));
        &self.vectors[*i]
    }

    /// Features of (prompt, response) under `layout`: each segment's embedding, concatenated.
    pub fn features(&self, layout: &[Segment], prompt: &str, response: &str) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.dim * layout.len());
        for s in layout {
            out.extend_from_slice(self.get(&s.text(prompt, response)));
        }
        out
    }

    /// Distinct texts embedded.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether no text was embedded.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }
}

/// The segment texts of (prompt, response) pairs under several layouts.
pub fn segment_texts<'a>(
    layouts: &'a [Vec<Segment>],
    pairs: impl IntoIterator<Item = (&'a str, &'a str)> + 'a,
) -> impl Iterator<Item = String> + 'a {
    pairs.into_iter().flat_map(move |(p, r)| {
        let mut segs: Vec<Segment> = layouts.iter().flatten().copied().collect();
        segs.dedup();
        segs.into_iter().map(move |s| s.text(p, r))
    })
}

fn cache_key(embedder: &dyn Embedder, texts: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(embedder.fingerprint().as_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    hex::encode(h.finalize())
}

fn read_cache(path: &PathBuf, n: usize, dim: usize) -> Result<Vec<Vec<f32>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    anyhow::ensure!(bytes.len() == n * dim * 4, "cache size mismatch");
    Ok(bytes
        .chunks_exact(dim * 4)
        .map(|row| row.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        .collect())
}

fn write_cache(path: &PathBuf, vectors: &[Vec<f32>]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for v in vectors {
        for x in v {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-dimensional fake embedder: (length, count of 'a').
    struct Fake;
    impl Embedder for Fake {
        fn dim(&self) -> usize {
            2
        }
        fn fingerprint(&self) -> String {
            "fake".into()
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            Ok(texts.iter().map(|t| vec![t.len() as f32, t.matches('a').count() as f32]).collect())
        }
    }

    #[test]
    fn table_concatenates_segments_and_caches() {
        let layouts = vec![vec![Segment::Response, Segment::Prompt], vec![Segment::PromptResponse]];
        let pairs = [("aa", "b"), ("c", "aaa")];
        let texts: Vec<String> = segment_texts(&layouts, pairs.iter().copied()).collect();
        let dir = tempfile::tempdir().unwrap();
        let t = EmbeddingTable::build(&Fake, texts.clone(), "test", Some(dir.path())).unwrap();
        assert_eq!(t.len(), 6);
        assert_eq!(t.features(&layouts[0], "aa", "b"), vec![1.0, 0.0, 2.0, 2.0]);
        assert_eq!(t.features(&layouts[1], "c", "aaa"), vec![6.0, 3.0]);
        // Second build reads the cache file written by the first.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let t2 = EmbeddingTable::build(&Fake, texts, "test", Some(dir.path())).unwrap();
        assert_eq!(t2.features(&layouts[0], "c", "aaa"), t.features(&layouts[0], "c", "aaa"));
    }
}
