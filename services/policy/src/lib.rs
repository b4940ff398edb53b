//! The policy role: serves a Llama-family causal LM over
//! `inferenceguard.v1.PolicyService`.
//!
//! A thin layer: [`PolicyArgs`] (flags and env vars) become the model options
//! and limits; [`run`] loads the model on its own thread ([`ig_serve::Engine`])
//! and serves [`service::PolicyServer`] with health and reflection.

pub mod batcher;
pub mod service;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use ig_core::policy::{PolicyBackend, PolicyLimits};
use ig_models::causal_lm::WeightDtype;
use ig_models::policy::{parse_device, CausalLmPolicy, PolicyOptions, SamplingOn, DEFAULT_MAX_PREFILL_TOKENS};
use ig_proto::v1::policy_service_server::PolicyServiceServer;
use ig_serve::{Engine, ServeOptions};
use tokio::net::TcpListener;

pub use service::{PolicyServer, SERVICE_NAME};

/// Flags of the policy server. Every flag also reads an `IG_*` variable.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// A `.gguf` file, a Hugging Face checkpoint directory (Llama, Mistral,
    /// Qwen2/2.5, Qwen3), or a model asset id: `qwen2.5-coder-1.5b` (opt-in,
    /// 1.1 GB, fetched if missing). Default: the demo model
    /// SmolLM2-135M-Instruct from the asset cache (fetched if missing).
    #[arg(long, env = "IG_MODEL")]
    pub model: Option<PathBuf>,
    /// Weight format in memory: auto, native (as stored), q8_0, f32, f16,
    /// bf16. auto: on CPU f32 up to 512M parameters (fastest batched decoding
    /// for the 135M demo model) and q8_0 above (the 1.5B model decodes 4.7x
    /// faster than in f32); f32 on CUDA.
    #[arg(long, visible_alias = "policy-dtype", env = "IG_DTYPE", default_value = "auto")]
    pub dtype: WeightDtype,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, visible_alias = "policy-device", env = "IG_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Where tokens are drawn: auto (on the device when it is not the CPU), host (logits
    /// copied back every step) or device (only token ids and log-probs come back).
    #[arg(long, env = "IG_SAMPLING_ON", default_value = "auto")]
    pub sampling_on: SamplingOn,
    /// Address to listen on.
    #[arg(long, env = "IG_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Byte budget of the prefix cache, in MiB (0 disables it).
    #[arg(long, env = "IG_PREFIX_CACHE_MB", default_value_t = 1024)]
    pub prefix_cache_mb: usize,
    /// Most prompt tokens one prefill pass feeds; longer prefills take several passes
    /// (bounds the activations of one pass whatever the request).
    #[arg(long, env = "IG_MAX_PREFILL_TOKENS", default_value_t = DEFAULT_MAX_PREFILL_TOKENS)]
    pub max_prefill_tokens: usize,
    /// Requests that may wait for the model thread; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "IG_QUEUE_DEPTH", default_value_t = 64)]
    pub queue_depth: usize,
    /// Longest sequence (prefix plus generated), in tokens; capped by the
    /// model's context.
    #[arg(long, env = "IG_MAX_SEQUENCE_TOKENS", default_value_t = PolicyLimits::default().max_sequence_tokens)]
    pub max_sequence_tokens: usize,
    /// Most prefixes (ExtendChunk), sequences (TopKNext) or items
    /// (DecodeFromLatent) per request.
    #[arg(long, env = "IG_MAX_PREFIXES", default_value_t = PolicyLimits::default().max_prefixes)]
    pub max_prefixes: usize,
    /// Most children of one prefix.
    #[arg(long, env = "IG_MAX_CHILDREN_PER_PREFIX", default_value_t = PolicyLimits::default().max_children_per_prefix)]
    pub max_children_per_prefix: usize,
    /// Most candidates per request.
    #[arg(long, env = "IG_MAX_CANDIDATES", default_value_t = PolicyLimits::default().max_candidates)]
    pub max_candidates: usize,
    /// Largest chunk, in tokens.
    #[arg(long, env = "IG_MAX_CHUNK_TOKENS", default_value_t = PolicyLimits::default().max_chunk_tokens)]
    pub max_chunk_tokens: usize,
    /// Largest k of TopKNext.
    #[arg(long, env = "IG_MAX_TOP_K", default_value_t = PolicyLimits::default().max_top_k)]
    pub max_top_k: usize,
    /// Most logit biases on one prefix.
    #[arg(long, env = "IG_MAX_LOGIT_BIASES", default_value_t = PolicyLimits::default().max_logit_biases)]
    pub max_logit_biases: usize,
    /// Largest text for Tokenize and RenderChat, in bytes.
    #[arg(long, env = "IG_MAX_TEXT_BYTES", default_value_t = PolicyLimits::default().max_text_bytes)]
    pub max_text_bytes: usize,
    /// Largest request message, in bytes.
    #[arg(long, env = "IG_MAX_MESSAGE_BYTES", default_value_t = PolicyLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Most candidates in one shared forward pass (continuous batching);
    /// requests beyond it wait for the next pass.
    #[arg(long, env = "IG_MAX_BATCH_ROWS", default_value_t = PolicyLimits::default().max_batch_rows)]
    pub max_batch_rows: usize,
    /// Byte budget of the KV cache of all extensions in flight, in MiB.
    #[arg(long, env = "IG_KV_CACHE_MB", default_value_t = PolicyLimits::default().max_kv_cache_bytes >> 20)]
    pub kv_cache_mb: usize,
    /// How the server stops on SIGTERM.
    #[command(flatten)]
    pub drain: ig_serve::DrainArgs,
    /// When a stuck model thread takes the replica out of service.
    #[command(flatten)]
    pub watchdog: ig_serve::WatchdogArgs,
    /// TLS and mTLS of the listener.
    #[command(flatten)]
    pub tls: ig_serve::tls::ServerTlsArgs,
}

impl PolicyArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> PolicyLimits {
        PolicyLimits {
            max_sequence_tokens: self.max_sequence_tokens,
            max_prefixes: self.max_prefixes,
            max_children_per_prefix: self.max_children_per_prefix,
            max_candidates: self.max_candidates,
            max_chunk_tokens: self.max_chunk_tokens,
            max_top_k: self.max_top_k,
            max_logit_biases: self.max_logit_biases,
            max_text_bytes: self.max_text_bytes,
            max_message_bytes: self.max_message_bytes,
            max_batch_rows: self.max_batch_rows,
            max_kv_cache_bytes: self.kv_cache_mb << 20,
        }
    }

    /// The model file: `--model` (a path, or a model asset id fetched into the cache),
    /// or the demo model from the asset cache.
    pub fn model_path(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(ig_assets::resolve_model(p)?),
            None => Ok(ig_assets::smollm2_gguf()?),
        }
    }
}

/// Loads the model described by `args` on a model thread. Returns at once;
/// the engine reports when the model is ready.
pub fn start_engine(args: &PolicyArgs) -> anyhow::Result<Engine<CausalLmPolicy>> {
    let opts = PolicyOptions {
        model: args.model_path()?,
        dtype: args.dtype,
        device: parse_device(&args.device)?,
        prefix_cache_bytes: args.prefix_cache_mb << 20,
        max_prefill_tokens: args.max_prefill_tokens,
        sampling_on: args.sampling_on,
    };
    tracing::info!(model = %opts.model.display(), dtype = ?opts.dtype, device = %args.device, "loading the policy model");
    let engine = Engine::spawn("policy", args.queue_depth, move || {
        let mut policy = CausalLmPolicy::load(&opts)?;
        policy.warm_up()?;
        Ok(policy)
    })?;
    args.watchdog.start(&engine)?;
    Ok(engine)
}

/// Serves the policy on `listener` until `shutdown` resolves.
pub async fn run(args: PolicyArgs, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let engine = start_engine(&args)?;
    serve(engine, &args, listener, shutdown).await
}

/// Serves a model already on its thread (the caller may keep a handle to `engine`, e.g. to
/// call it in-process too) on `listener` until `shutdown`.
pub async fn serve(
    engine: Engine<CausalLmPolicy>,
    args: &PolicyArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = args.limits();
    let state = engine.watch_state();
    let options = ServeOptions::new(vec![SERVICE_NAME], limits.max_message_bytes).with_drain(&args.drain)?.with_tls(&args.tls)?;
    let service = PolicyServiceServer::new(PolicyServer::new(engine, limits, args.queue_depth))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    ig_serve::serve(listener, tonic::service::Routes::new(service), state, options, shutdown).await
}
