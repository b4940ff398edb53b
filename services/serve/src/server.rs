//! Serving a role: its routes plus health and reflection, on a bound listener.

use std::future::Future;
use std::time::Duration;

use clap::Args;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::engine::EngineState;

/// Transport settings of a role server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// gRPC service names whose health follows the model (e.g.
    /// `inferenceguard.v1.PolicyService`). The empty name (liveness) is
    /// SERVING as soon as the server listens.
    pub service_names: Vec<&'static str>,
    /// The largest request message, in bytes: the decoders' cap, and the unit of the
    /// byte budget of requests being received ([`crate::admission`]).
    pub max_message_bytes: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 keep-alive pings (detects dead clients).
    pub keepalive: Duration,
    /// After the shutdown signal, how long the listener still accepts calls while health
    /// already says NOT_SERVING.
    pub drain_delay: Duration,
    /// Then, how long calls in flight may take to finish before they are cut.
    pub drain_timeout: Duration,
    /// TLS (and mTLS) of the listener; None: cleartext.
    pub tls: Option<crate::tls::ServerTls>,
    /// Whether server reflection (v1 and v1alpha) is served.
    pub reflection: bool,
    /// Where `grpc.health.v1` alone is also served, in plaintext (probes that speak no TLS).
    pub health_listen: Option<std::net::SocketAddr>,
}

impl ServeOptions {
    /// Defaults for the given health service names and message limit (no drain delay:
    /// nothing to wait for on loopback).
    pub fn new(service_names: Vec<&'static str>, max_message_bytes: usize) -> Self {
        Self {
            service_names,
            max_message_bytes,
            max_concurrent_streams: 1024,
            keepalive: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs_f64(DRAIN_TIMEOUT_SECONDS),
            tls: None,
            reflection: true,
            health_listen: None,
        }
    }

    /// With the TLS of `tls`'s flags (loads the files now: an error names the flag and the
    /// file).
    pub fn with_tls(self, tls: &crate::tls::ServerTlsArgs) -> anyhow::Result<Self> {
        Ok(Self { tls: crate::tls::ServerTls::from_args(tls)?, health_listen: tls.health_listen, ..self })
    }

    /// With the drain of `drain`'s flags.
    pub fn with_drain(self, drain: &DrainArgs) -> anyhow::Result<Self> {
        Ok(Self { drain_delay: drain.delay()?, drain_timeout: drain.timeout()?, ..self })
    }
}

/// Default seconds calls in flight get once the listener is closed: with the 5 s delay,
/// within Kubernetes' default 30 s grace period.
const DRAIN_TIMEOUT_SECONDS: f64 = 20.0;

/// How a role stops on SIGTERM: health goes NOT_SERVING at once while the listener keeps
/// accepting calls for the drain delay (time for Kubernetes to take the pod out of its
/// endpoints and for clients to see it), then the listener closes and the calls in flight
/// get the drain timeout to finish; whatever is still open is then cut, so a client that
/// never reads cannot keep a pod from stopping. Delay + timeout must stay under the pod's
/// `terminationGracePeriodSeconds`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Seconds between NOT_SERVING and closing the listener.
    #[arg(long, env = "IG_DRAIN_DELAY_SECONDS", default_value_t = 5.0)]
    pub drain_delay_seconds: f64,
    /// Seconds calls in flight get to finish once the listener is closed.
    #[arg(long, env = "IG_DRAIN_TIMEOUT_SECONDS", default_value_t = DRAIN_TIMEOUT_SECONDS)]
    pub drain_timeout_seconds: f64,
}

impl DrainArgs {
    /// No delay (in-process and loopback servers) and the default timeout.
    pub fn immediate() -> Self {
        Self { drain_delay_seconds: 0.0, drain_timeout_seconds: DRAIN_TIMEOUT_SECONDS }
    }

    fn delay(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.drain_delay_seconds)
            .map_err(|_| anyhow::anyhow!("--drain-delay-seconds: must be a number >= 0, got {}", self.drain_delay_seconds))
    }

    fn timeout(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.drain_timeout_seconds)
            .map_err(|_| anyhow::anyhow!("--drain-timeout-seconds: must be a number >= 0, got {}", self.drain_timeout_seconds))
    }
}

/// Serves `routes` with `grpc.health.v1` and server reflection on `listener`
/// until `shutdown` resolves, then drains ([`DrainArgs`]).
///
/// Health: the role's services report NOT_SERVING until `state` becomes
/// [`EngineState::Ready`], and again once shutdown begins.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    state: tokio::sync::watch::Receiver<EngineState>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in &opts.service_names {
        reporter.set_service_status(*name, tonic_health::ServingStatus::NotServing).await;
    }
    let names = opts.service_names.clone();
    let follow = reporter.clone();
    let mut health_state = state.clone();
    tokio::spawn(async move {
        loop {
            let status = match &*health_state.borrow_and_update() {
                EngineState::Ready => tonic_health::ServingStatus::Serving,
                _ => tonic_health::ServingStatus::NotServing,
            };
            for name in &names {
                follow.set_service_status(*name, status).await;
            }
            if health_state.changed().await.is_err() {
                break;
            }
        }
    });
    // Both reflection versions: grpcurl and most tools speak v1, Python's grpcio-reflection
    // only v1alpha.
    // Each server lists and describes only what it serves: its own files and their imports.
    let own_descriptors = ig_proto::file_descriptor_set_for(&opts.service_names)?;
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(&own_descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        opts.service_names.iter().fold(builder, |b, name| b.with_service_name(*name))
    };
    let (reflection_v1, reflection_v1alpha) = if opts.reflection {
        (Some(reflection().build_v1()?), Some(reflection().build_v1alpha()?))
    } else {
        (None, None)
    };
    // Health alone, in plaintext, for probes that speak no TLS: the same statuses.
    let plain_health = match opts.health_listen {
        Some(at) => {
            let health_listener = TcpListener::bind(at).await.map_err(|e| anyhow::anyhow!("--health-listen {at}: {e}"))?;
            tracing::info!(addr = %at, "grpc.health.v1 alone, in plaintext");
            let server = Server::builder().add_service(health.clone()).serve_with_incoming(TcpListenerStream::new(health_listener));
            Some(tokio::spawn(server))
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    let tls = match &opts.tls {
        None => "off",
        Some(t) if t.requires_client_certs() => "mTLS",
        Some(_) => "TLS",
    };
    tracing::info!(%addr, services = ?opts.service_names, tls, reflection = opts.reflection, "listening");
    let names = opts.service_names.clone();
    // A model that fails to load ends the process with its error (a crash
    // loop with a reason beats a pod that is never ready).
    let mut watch_failure = state.clone();
    let failed = async move {
        let _ = watch_failure.wait_for(|s| matches!(s, EngineState::Failed(_))).await;
    };
    let (delay, timeout) = (opts.drain_delay, opts.drain_timeout);
    let (closing, closed) = tokio::sync::oneshot::channel::<()>();
    let drain = async move {
        let failed = tokio::select! {
            _ = shutdown => false,
            _ = failed => true,
        };
        tracing::info!(delay = ?delay, timeout = ?timeout, "shutting down: health NOT_SERVING; the listener closes after the delay, then calls in flight get the timeout");
        for name in &names {
            reporter.set_service_status(*name, tonic_health::ServingStatus::NotServing).await;
        }
        if !failed {
            tokio::time::sleep(delay).await;
        }
        let _ = closing.send(());
    };
    let router = Server::builder()
        .trace_fn(crate::telemetry::request_span)
        .max_concurrent_streams(opts.max_concurrent_streams)
        .http2_keepalive_interval(Some(opts.keepalive))
        .layer(crate::admission::InflightBytesLayer::new(opts.max_message_bytes))
        .layer(tower::util::MapResponseLayer::new(crate::message_limit::rewrite::<tonic::body::Body>))
        .add_routes(routes)
        .add_service(health)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &opts.tls {
        None => Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), drain)),
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener), drain)),
    };
    // Once the listener is closed, calls in flight get `timeout`; then `serve` stops
    // waiting for them and returns (the role's process exits, closing their connections).
    let cut = async move {
        match closed.await {
            Ok(()) => tokio::time::sleep(timeout).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = server => served,
        _ = cut => {
            tracing::warn!(timeout = ?timeout, "calls still in flight after the drain timeout are cut");
            Ok(())
        }
    };
    if let Some(task) = plain_health {
        task.abort();
    }
    served?;
    match &*state.borrow() {
        EngineState::Failed(m) => Err(anyhow::anyhow!("the model failed to load: {m}")),
        _ => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
