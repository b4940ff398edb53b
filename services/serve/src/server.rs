//! Serving a role: its routes plus health and reflection, on a bound listener.

use std::future::Future;
use std::time::Duration;

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
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 keep-alive pings (detects dead clients).
    pub keepalive: Duration,
}

impl ServeOptions {
    /// Defaults for the given health service names.
    pub fn new(service_names: Vec<&'static str>) -> Self {
        Self { service_names, max_concurrent_streams: 1024, keepalive: Duration::from_secs(30) }
    }
}

/// Serves `routes` with `grpc.health.v1` and server reflection on `listener`
/// until `shutdown` resolves, then drains in-flight calls.
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ig_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, services = ?opts.service_names, "listening");
    let names = opts.service_names.clone();
    // A model that fails to load ends the process with its error (a crash
    // loop with a reason beats a pod that is never ready).
    let mut watch_failure = state.clone();
    let failed = async move {
        let _ = watch_failure.wait_for(|s| matches!(s, EngineState::Failed(_))).await;
    };
    let drain = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = failed => {},
        }
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
        for name in &names {
            reporter.set_service_status(*name, tonic_health::ServingStatus::NotServing).await;
        }
    };
    Server::builder()
        .trace_fn(crate::telemetry::request_span)
        .max_concurrent_streams(opts.max_concurrent_streams)
        .http2_keepalive_interval(Some(opts.keepalive))
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drain)
        .await?;
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
