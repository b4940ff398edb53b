//! The stateless orchestrator of InferenceGuard Mesh.
//!
//! - [`search`]: InferenceGuard and the paper's baselines, plain async Rust
//!   over small role traits (no gRPC, no candle).
//! - [`registry`]: named role endpoints from a TOML file, re-read on change.
//! - [`mesh`]: the role traits over gRPC, with failover and spreading.
//! - [`in_process`]: the role traits straight on the role models' engines
//!   (no gRPC), doing the same work as [`mesh`]: to measure its overhead.
//! - [`guard`]: the public `GuardService`.
//! - [`guard_client`], [`policy_client`], [`scorer_client`], [`channel`]:
//!   typed clients.
//!
//! A search's state lives only as long as its request: any replica of the
//! orchestrator serves any request.

pub mod auth;
pub mod channel;
pub mod guard;
pub mod guard_client;
pub mod in_process;
pub mod mesh;
pub mod openai;
pub mod policy_client;
pub mod registry;
pub mod reply_check;
pub mod rollout;
pub mod scorer_client;
pub mod search;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use channel::ClientError;
use clap::Args;
pub use guard::{GuardLimits, GuardServer};
pub use guard_client::GuardClient;
use ig_proto::v1::guard_service_server::GuardServiceServer;
use ig_serve::engine::EngineState;
use ig_serve::ServeOptions;
pub use policy_client::PolicyClient;
pub use registry::Registry;
pub use scorer_client::ScorerClient;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

/// Flags of the orchestrator. Every flag also reads an `IG_*` variable.
#[derive(Debug, Clone, Args)]
pub struct OrchestratorArgs {
    /// The registry file (TOML) naming the role endpoints; re-read when it
    /// changes and on SIGHUP.
    #[arg(long, env = "IG_REGISTRY")]
    pub registry: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "IG_LISTEN", default_value = "127.0.0.1:50050")]
    pub listen: SocketAddr,
    /// How often the registry file is re-read, in seconds.
    #[arg(long, env = "IG_REGISTRY_POLL_SECONDS", default_value_t = 2.0)]
    pub registry_poll_seconds: f64,
    /// How often every role endpoint's health is checked, in seconds.
    #[arg(long, env = "IG_HEALTH_INTERVAL_SECONDS", default_value_t = 2.0)]
    pub health_interval_seconds: f64,
    /// Largest prompt, in bytes.
    #[arg(long, env = "IG_MAX_PROMPT_BYTES", default_value_t = GuardLimits::default().max_prompt_bytes)]
    pub max_prompt_bytes: usize,
    /// Most messages in a chat prompt.
    #[arg(long, env = "IG_MAX_CHAT_MESSAGES", default_value_t = GuardLimits::default().max_chat_messages)]
    pub max_chat_messages: usize,
    /// Largest samples_count.
    #[arg(long, env = "IG_MAX_SAMPLES_COUNT", default_value_t = GuardLimits::default().max_samples_count)]
    pub max_samples_count: usize,
    /// Largest max_new_tokens.
    #[arg(long, env = "IG_MAX_NEW_TOKENS", default_value_t = GuardLimits::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Largest max_resamples.
    #[arg(long, env = "IG_MAX_RESAMPLES", default_value_t = GuardLimits::default().max_resamples)]
    pub max_resamples: usize,
    /// Longest a search may run, in seconds (requests without a deadline get this one).
    #[arg(long, env = "IG_MAX_DURATION_SECONDS", default_value_t = GuardLimits::default().max_duration.as_secs_f64())]
    pub max_duration_seconds: f64,
    /// Searches this replica runs at once; more fail fast with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IG_MAX_CONCURRENT_REQUESTS", default_value_t = GuardLimits::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,
    /// Largest request message, in bytes.
    #[arg(long, env = "IG_MAX_MESSAGE_BYTES", default_value_t = GuardLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// How the server stops on SIGTERM.
    #[command(flatten)]
    pub drain: ig_serve::DrainArgs,
    /// TLS and mTLS of the Guard API.
    #[command(flatten)]
    pub tls: ig_serve::tls::ServerTlsArgs,
    /// TLS towards the roles (the registry's https:// endpoints).
    #[command(flatten)]
    pub role_tls: ig_serve::tls::ClientTlsArgs,
    /// Named bearer tokens (TOML, `[[token]] name = .. sha256 = ..`): every GuardService call
    /// must carry `authorization: Bearer <token>`. Re-read when it changes.
    #[arg(long, env = "IG_AUTH_TOKENS_FILE")]
    pub auth_tokens: Option<PathBuf>,
    /// Also serve the OpenAI-compatible HTTP API here (`/v1/chat/completions`, ...), over the
    /// same searches, limits and tokens (its body limit is --max-message-bytes).
    #[arg(long, env = "IG_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Serve gRPC reflection (v1 and v1alpha); `--reflection=false` turns it off.
    #[arg(long, env = "IG_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
}

impl OrchestratorArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> anyhow::Result<GuardLimits> {
        let max_duration = Duration::try_from_secs_f64(self.max_duration_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("--max-duration-seconds: must be > 0, got {}", self.max_duration_seconds))?;
        Ok(GuardLimits {
            max_prompt_bytes: self.max_prompt_bytes,
            max_chat_messages: self.max_chat_messages,
            max_samples_count: self.max_samples_count,
            max_new_tokens: self.max_new_tokens,
            max_resamples: self.max_resamples,
            max_duration,
            max_concurrent_requests: self.max_concurrent_requests,
            max_message_bytes: self.max_message_bytes,
        })
    }

    /// The flags' defaults for `registry` listening on `listen`.
    pub fn with_registry(registry: &std::path::Path, listen: SocketAddr) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct DefaultsOnly {
            #[command(flatten)]
            args: OrchestratorArgs,
        }
        let mut args = DefaultsOnly::parse_from(["ig-orchestrator", "--registry", "x"]).args;
        args.registry = registry.to_path_buf();
        args.listen = listen;
        args.drain = ig_serve::DrainArgs::immediate();
        args
    }
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero()).ok_or_else(|| anyhow::anyhow!("{flag}: must be > 0, got {s}"))
}

/// Serves the GuardService on `listener` (and the HTTP API on `--http-listen`) until
/// `shutdown` resolves.
pub async fn run(args: OrchestratorArgs, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let http = match args.http_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--http-listen {addr}: {e}"))?),
        None => None,
    };
    serve(args, listener, http, shutdown).await
}

/// [`run`] on listeners already bound (`http`: the OpenAI-compatible API's).
pub async fn serve(args: OrchestratorArgs, listener: TcpListener, http: Option<TcpListener>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let limits = args.limits()?;
    let poll = seconds("--registry-poll-seconds", args.registry_poll_seconds)?;
    let registry = Registry::load(&args.registry, ig_serve::tls::ClientTls::from_args(&args.role_tls)?)?;
    registry.spawn_watch(poll);
    registry.spawn_health(seconds("--health-interval-seconds", args.health_interval_seconds)?);
    let mut options = ServeOptions::new(vec![guard::SERVICE_NAME], limits.max_message_bytes).with_drain(&args.drain)?.with_tls(&args.tls)?;
    options.reflection = args.reflection;
    let auth = match &args.auth_tokens {
        Some(path) => Some(auth::TokenAuth::load(path, poll)?),
        None => {
            if !listener.local_addr()?.ip().is_loopback() || http.as_ref().is_some_and(|h| h.local_addr().is_ok_and(|a| !a.ip().is_loopback())) {
                tracing::warn!(listen = %args.listen, "no --auth-tokens: anyone who reaches this address can run searches on the mesh's GPUs");
            }
            None
        }
    };
    let server = GuardServer::new(registry, limits.clone());
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let stopping = std::sync::Arc::new(stopping);
    // The HTTP API drains as the gRPC port does: it accepts for the drain delay after the
    // shutdown signal, then closes its listener (saying when), and requests in flight get the
    // drain timeout from then.
    let (delay, timeout) = (options.drain_delay, options.drain_timeout);
    let (http_closed_tx, http_closed) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    let http_task = match http {
        Some(http) => {
            let addr = http.local_addr()?;
            let app = openai::router(server.clone(), auth.clone(), limits.max_message_bytes);
            let mut stopped = stopped.clone();
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(delay).await;
                tracing::info!(%addr, "the HTTP API stops accepting; requests in flight get the drain timeout");
                let _ = http_closed_tx.send(tokio::time::Instant::now());
            };
            // The gRPC port's certificate (and client CA, for mTLS) serves HTTPS here too.
            match ig_serve::tls::ServerTls::from_args_for_http(&args.tls)? {
                Some(tls) => {
                    tracing::info!(%addr, "OpenAI-compatible HTTP API listening (TLS)");
                    let listener = openai::TlsListener::new(http, &tls)?;
                    Some(tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await }))
                }
                None => {
                    tracing::info!(%addr, "OpenAI-compatible HTTP API listening");
                    Some(tokio::spawn(async move { axum::serve(http, app).with_graceful_shutdown(stop).await }))
                }
            }
        }
        None => None,
    };
    let service = GuardServiceServer::new(server).max_decoding_message_size(options.max_message_bytes).max_encoding_message_size(usize::MAX);
    // Nothing to load: the orchestrator serves as soon as it listens.
    let (_ready, state) = tokio::sync::watch::channel(EngineState::Ready);
    let routes = match auth {
        Some(auth) => tonic::service::Routes::new(InterceptedService::new(service, auth)),
        None => tonic::service::Routes::new(service),
    };
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.send_replace(true);
        }
    };
    let served = ig_serve::serve(listener, routes, state, options, shutdown).await;
    if let Some(mut task) = http_task {
        // Also when the gRPC server ended on its own (an error): the HTTP API stops too.
        stopping.send_replace(true);
        let closed_at = http_closed.await.unwrap_or_else(|_| tokio::time::Instant::now());
        if tokio::time::timeout_at(closed_at + timeout, &mut task).await.is_err() {
            tracing::warn!(?timeout, "HTTP requests still in flight after the drain timeout are cut");
            task.abort();
        }
    }
    served
}
