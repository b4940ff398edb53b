//! Connections to role endpoints: lazy channels and readiness waits shared by
//! every typed role client.

use std::time::{Duration, Instant};

use ig_serve::tls::ClientTls;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Why a call to a role failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint could not be parsed.
    #[error("{endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The role answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// The role did not become ready in time.
    #[error("{endpoint} was not ready after {waited:?}: {last}")]
    NotReady {
        /// The endpoint.
        endpoint: String,
        /// How long we waited.
        waited: Duration,
        /// The last health answer or error.
        last: String,
    },
}

impl ClientError {
    /// The gRPC code, for retry decisions (UNAVAILABLE may be retried on
    /// another replica, INVALID_ARGUMENT never).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(s) => s.code(),
            _ => Code::Unavailable,
        }
    }
}

/// How often a connection is pinged (HTTP/2 PING), busy or idle.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped. A lost node or a
/// half-open connection then fails its calls (UNAVAILABLE, so they fail over) within
/// interval + timeout, instead of hanging until the request's deadline.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to `endpoint` (e.g. `http://127.0.0.1:50051`, or `https://...` with `tls`)
/// that connects on first use and is kept alive by pings.
pub fn connect_lazy(endpoint: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let invalid = |message: String| ClientError::Connect { endpoint: endpoint.into(), message };
    let ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    match (endpoint.starts_with("https://"), tls) {
        (false, _) => Ok(ep.connect_lazy()),
        (true, Some(tls)) => Ok(ep.connect_with_connector_lazy(tls.connector())),
        (true, None) => Err(invalid("an https:// endpoint needs --tls-ca (the CA that signed the server's certificate)".into())),
    }
}

/// The longest one health check may take in [`wait_serving`].
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until `grpc.health.v1` says `service` is SERVING (its model is
/// loaded and warm), polling every 200 ms for at most `timeout`.
pub async fn wait_serving(channel: &Channel, endpoint: &str, service: &str, timeout: Duration) -> Result<(), ClientError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let started = Instant::now();
    loop {
        let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
        // Each check is bounded too: a server that accepts but never answers must not
        // outlast `timeout`.
        let left = timeout.saturating_sub(started.elapsed()).min(HEALTH_CHECK_TIMEOUT).max(Duration::from_millis(1));
        let last = match tokio::time::timeout(left, health.check(req)).await {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => return Ok(()),
            Ok(Ok(r)) => format!("health status {:?}", r.get_ref().status()),
            Ok(Err(s)) => format!("{}: {}", s.code(), s.message()),
            Err(_) => format!("no health answer within {left:?}"),
        };
        if started.elapsed() >= timeout {
            return Err(ClientError::NotReady { endpoint: endpoint.into(), waited: timeout, last });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
