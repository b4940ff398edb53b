//! The critic role: serves a value network `V(h, z)` over the policy's
//! latent and the safety state, over `inferenceguard.v1.CriticService`.
//!
//! InferenceGuard with critic ranks safe candidates by `Evaluate`; RECONTROL
//! moves a latent uphill with `Ascend` (or `Gradient` steps of its own). A
//! thin layer: [`CriticArgs`] become a device and limits; [`run`] loads the
//! critic file ([`ig_models::critic`]) on its own thread, warms it up at the
//! largest batch a request may carry, and serves [`CriticServer`] with
//! health and reflection.
//!
//! - [`service`]: the RPCs.
//! - [`validate`]: requests to flat batches, or errors naming the field.
//! - [`error`]: [`CriticError`] and its one mapping to gRPC statuses.

pub mod error;
pub mod service;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use ig_core::critic::{CriticBackend, CriticLimits};
use ig_models::critic::Critic;
use ig_models::policy::parse_device;
use ig_proto::v1::critic_service_server::CriticServiceServer;
use ig_serve::{Engine, ServeOptions};
use tokio::net::TcpListener;

pub use error::CriticError;
pub use service::{CriticServer, SERVICE_NAME};

/// Flags of the critic server. Every flag also reads an `IG_*` variable.
#[derive(Debug, Clone, Args)]
pub struct CriticArgs {
    /// The critic: a safetensors file with inferenceguard.critic.v1 metadata
    /// (written by `inferenceguard train-critic`).
    #[arg(long, env = "IG_MODEL")]
    pub model: PathBuf,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "IG_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Address to listen on.
    #[arg(long, env = "IG_LISTEN", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,
    /// Requests that may wait for the model; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IG_QUEUE_DEPTH", default_value_t = 64)]
    pub queue_depth: usize,
    /// Most items per Evaluate, Gradient or Ascend request (also the warm-up batch).
    #[arg(long, env = "IG_MAX_ITEMS", default_value_t = CriticLimits::default().max_items)]
    pub max_items: usize,
    /// Largest AscendRequest.steps.
    #[arg(long, env = "IG_MAX_ASCENT_STEPS", default_value_t = CriticLimits::default().max_ascent_steps)]
    pub max_ascent_steps: usize,
    /// Largest request message, in bytes (the transport refuses larger ones
    /// before decoding them). The default fits max_items latents of a 4096-d policy.
    #[arg(long, env = "IG_MAX_MESSAGE_BYTES", default_value_t = CriticLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
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

impl CriticArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> CriticLimits {
        CriticLimits { max_items: self.max_items, max_ascent_steps: self.max_ascent_steps, max_message_bytes: self.max_message_bytes }
    }
}

/// Loads the critic on a model thread and warms it up; returns at once.
pub fn start_engine(args: &CriticArgs) -> anyhow::Result<Engine<Critic>> {
    let device = parse_device(&args.device)?;
    let path = args.model.clone();
    let warm_items = args.max_items;
    tracing::info!(model = %path.display(), device = %args.device, "loading the critic");
    let engine = Engine::spawn("critic", args.queue_depth, move || {
        let critic = Critic::load(&path, &device)?;
        let m = critic.meta();
        tracing::info!(
            model_id = %m.model_id,
            policy_model_id = %m.policy_model_id,
            latent_dim = m.latent_dim,
            hidden_width = m.hidden_width,
            objective = %m.objective,
            "critic loaded"
        );
        critic.warm_up(warm_items)?;
        Ok(critic)
    })?;
    args.watchdog.start(&engine)?;
    Ok(engine)
}

/// Serves the critic on `listener` until `shutdown` resolves.
pub async fn run(args: CriticArgs, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let engine = start_engine(&args)?;
    serve(engine, &args, listener, shutdown).await
}

/// Serves a critic already on its thread (the caller may keep a handle to
/// `engine`, e.g. to call it in-process too) on `listener` until `shutdown`.
pub async fn serve<B: CriticBackend>(
    engine: Engine<B>,
    args: &CriticArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = args.limits();
    let state = engine.watch_state();
    let options = ServeOptions::new(vec![SERVICE_NAME], limits.max_message_bytes).with_drain(&args.drain)?.with_tls(&args.tls)?;
    let server = CriticServer::new(engine, limits);
    let service = CriticServiceServer::new(server).max_decoding_message_size(options.max_message_bytes).max_encoding_message_size(usize::MAX);
    ig_serve::serve(listener, tonic::service::Routes::new(service), state, options, shutdown).await
}

#[derive(clap::Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    args: CriticArgs,
}

impl CriticArgs {
    /// The flags' defaults for `model` listening on `listen` (the clap
    /// definitions stay the one source of defaults).
    pub fn with_model(model: &std::path::Path, listen: SocketAddr) -> Self {
        use clap::Parser;
        let mut args = DefaultsOnly::parse_from(["ig-critic", "--model", "x"]).args;
        args.model = model.to_path_buf();
        args.listen = listen;
        args.drain = ig_serve::DrainArgs::immediate();
        args
    }
}
