//! The scorer role: serves a score model (a cost model or a reward model)
//! over `inferenceguard.v1.ScorerService`.
//!
//! The same binary is deployed once per score model: the cost model and the
//! reward model of the mesh are two deployments with different weights, and
//! trialling a new cost model is a third. A thin layer: [`ScorerArgs`] become
//! model options and limits; [`run`] loads the model on its own thread and
//! serves [`service::ScorerServer`] with health and reflection.

pub mod service;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use ig_core::scorer::{ScoreRole, ScorerBackend, ScorerLimits};
use ig_models::causal_lm::WeightDtype;
use ig_models::policy::parse_device;
use ig_models::scorer::{ScoreModel, ScorerOptions};
use ig_proto::v1::scorer_service_server::ScorerServiceServer;
use ig_serve::{Engine, ServeOptions};
use tokio::net::TcpListener;

pub use service::{ScorerServer, SERVICE_NAME};

/// Flags of the scorer server. Every flag also reads an `IG_*` variable.
#[derive(Debug, Clone, Args)]
pub struct ScorerArgs {
    /// The score model: a head file of ours (`*.safetensors` with
    /// inferenceguard.score_head.v1 metadata, e.g. models/heads/cost-minilm-l6.safetensors)
    /// or a checkpoint directory (LlamaForScore, LlamaForSequenceClassification,
    /// BertForSequenceClassification).
    #[arg(long, env = "IG_MODEL")]
    pub model: PathBuf,
    /// Trunk directory for a head file (default: all-MiniLM-L6-v2 from the asset cache).
    #[arg(long, env = "IG_TRUNK")]
    pub trunk: Option<PathBuf>,
    /// The role the model plays: cost or reward (default: what the model says).
    #[arg(long, env = "IG_SCORE_ROLE")]
    pub role: Option<ScoreRole>,
    /// Input text template with `{prompt}` and `{response}` placeholders
    /// (default: the format's own convention, see `ig_models::scorer`). For a
    /// guard LM (a `.gguf` file or a `*ForCausalLM` directory): a built-in
    /// guard template (`llama-guard-3`, the default, or `qwen3guard`),
    /// `checkpoint` (the model's own chat template) or a `.jinja` file.
    #[arg(long, env = "IG_TEMPLATE")]
    pub template: Option<String>,
    /// A guard LM's answer labels, `UNSAFE,SAFE`, each one token of its
    /// vocabulary (default: the built-in template's, e.g. `unsafe,safe`).
    #[arg(long, env = "IG_GUARD_LABELS", value_parser = parse_guard_labels)]
    pub guard_labels: Option<(String, String)>,
    /// Weight format in memory: native, q8_0, f32, f16, bf16.
    #[arg(long, env = "IG_DTYPE", default_value = "f32")]
    pub dtype: WeightDtype,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "IG_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Address to listen on.
    #[arg(long, env = "IG_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Requests that may wait for the model; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IG_QUEUE_DEPTH", default_value_t = 256)]
    pub queue_depth: usize,
    /// Most items scored in one model call (requests from concurrent callers are merged up to this).
    #[arg(long, env = "IG_MAX_BATCH_ITEMS", default_value_t = 64)]
    pub max_batch_items: usize,
    /// Most items per request message.
    #[arg(long, env = "IG_MAX_ITEMS", default_value_t = ScorerLimits::default().max_items)]
    pub max_items: usize,
    /// Largest prompt per item, in bytes.
    #[arg(long, env = "IG_MAX_PROMPT_BYTES", default_value_t = ScorerLimits::default().max_prompt_bytes)]
    pub max_prompt_bytes: usize,
    /// Largest response per item, in bytes.
    #[arg(long, env = "IG_MAX_RESPONSE_BYTES", default_value_t = ScorerLimits::default().max_response_bytes)]
    pub max_response_bytes: usize,
    /// Most tokens the model reads per item (capped by the model's own limit).
    #[arg(long, env = "IG_MAX_TOKENS", default_value_t = ScorerLimits::default().max_tokens)]
    pub max_tokens: usize,
    /// Largest request message, in bytes.
    #[arg(long, env = "IG_MAX_MESSAGE_BYTES", default_value_t = ScorerLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Items in flight per ScoreStream before the server stops reading it.
    #[arg(long, env = "IG_MAX_INFLIGHT_ITEMS", default_value_t = ScorerLimits::default().max_inflight_items)]
    pub max_inflight_items: usize,
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

impl ScorerArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> ScorerLimits {
        ScorerLimits {
            max_items: self.max_items,
            max_prompt_bytes: self.max_prompt_bytes,
            max_response_bytes: self.max_response_bytes,
            max_tokens: self.max_tokens,
            max_message_bytes: self.max_message_bytes,
            max_inflight_items: self.max_inflight_items,
        }
    }

    /// How these flags load the model.
    pub fn options(&self) -> anyhow::Result<ScorerOptions> {
        Ok(ScorerOptions {
            model: self.model.clone(),
            trunk: self.trunk.clone(),
            role: self.role,
            template: self.template.clone(),
            max_tokens: Some(self.max_tokens),
            dtype: self.dtype,
            device: parse_device(&self.device)?,
            guard_labels: self.guard_labels.clone(),
        })
    }
}

fn parse_guard_labels(s: &str) -> Result<(String, String), String> {
    match s.split_once(',') {
        Some((u, safe)) if !u.is_empty() && !safe.is_empty() => Ok((u.to_string(), safe.to_string())),
        _ => Err(format!("expected UNSAFE,SAFE (two labels separated by a comma), got {s:?}")),
    }
}

/// Loads the score model on a model thread; returns at once.
pub fn start_engine(args: &ScorerArgs) -> anyhow::Result<Engine<ScoreModel>> {
    let opts = args.options()?;
    tracing::info!(model = %opts.model.display(), role = ?opts.role, "loading the score model");
    let engine = Engine::spawn("scorer", args.queue_depth, move || {
        let mut model = ScoreModel::load(&opts)?;
        model.warm_up()?;
        Ok(model)
    })?;
    args.watchdog.start(&engine)?;
    Ok(engine)
}

/// Serves the scorer on `listener` until `shutdown` resolves.
pub async fn run(args: ScorerArgs, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let engine = start_engine(&args)?;
    serve(engine, &args, listener, shutdown).await
}

/// Serves a model already on its thread (the caller may keep a handle to
/// `engine`, e.g. to call it in-process too) on `listener` until `shutdown`.
pub async fn serve<B: ScorerBackend>(
    engine: Engine<B>,
    args: &ScorerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = args.limits();
    let state = engine.watch_state();
    let options = ServeOptions::new(vec![SERVICE_NAME], limits.max_message_bytes).with_drain(&args.drain)?.with_tls(&args.tls)?;
    let server = ScorerServer::new(engine, limits, args.max_batch_items, args.queue_depth);
    let service = ScorerServiceServer::new(server).max_decoding_message_size(options.max_message_bytes).max_encoding_message_size(usize::MAX);
    ig_serve::serve(listener, tonic::service::Routes::new(service), state, options, shutdown).await
}

#[derive(clap::Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    args: ScorerArgs,
}

impl ScorerArgs {
    /// The flags' defaults for `model` listening on `listen` (the clap
    /// definitions stay the one source of defaults).
    pub fn with_model(model: &std::path::Path, listen: SocketAddr) -> Self {
        use clap::Parser;
        let mut args = DefaultsOnly::parse_from(["ig-scorer", "--model", "x"]).args;
        args.model = model.to_path_buf();
        args.listen = listen;
        args.drain = ig_serve::DrainArgs::immediate();
        args
    }
}
