//! A typed client of `inferenceguard.v1.ScorerService` (a cost or a reward
//! model) that keeps gRPC status codes.

use std::time::Duration;

use ig_proto::v1 as pb;
use ig_proto::v1::scorer_service_client::ScorerServiceClient;
use tonic::transport::Channel;

pub use crate::channel::ClientError;
use ig_serve::tls::ClientTls;
use crate::channel::{connect_lazy, wait_serving};

/// Name of the scorer service in `grpc.health.v1`.
pub const SCORER_SERVICE: &str = "inferenceguard.v1.ScorerService";

/// A connection to one scorer endpoint.
#[derive(Debug, Clone)]
pub struct ScorerClient {
    endpoint: String,
    channel: Channel,
    inner: ScorerServiceClient<Channel>,
}

impl ScorerClient {
    /// Connects lazily to `endpoint` (e.g. `http://127.0.0.1:50052`).
    /// `tls` verifies an https:// endpoint (and presents a client certificate where it has one).
    pub fn connect_lazy(endpoint: &str, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let channel = connect_lazy(endpoint, tls)?;
        Ok(Self { endpoint: endpoint.into(), inner: ScorerServiceClient::new(channel.clone()), channel })
    }

    /// Waits until the scorer's health check says SERVING.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        wait_serving(&self.channel, &self.endpoint, SCORER_SERVICE, timeout).await
    }

    /// The model, its role and the server's limits.
    pub async fn info(&self) -> Result<pb::ScorerInfoResponse, ClientError> {
        Ok(self.inner.clone().info(pb::ScorerInfoRequest {}).await?.into_inner())
    }

    /// Scores (prompt, response) pairs; results come back in order.
    pub async fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, ClientError> {
        let items = pairs
            .iter()
            .enumerate()
            .map(|(i, (p, r))| pb::ScoreItem { item_id: i as i64, prompt: (*p).into(), response: (*r).into(), ..Default::default() })
            .collect();
        let resp = self.inner.clone().score(pb::ScoreRequest { items }).await?.into_inner();
        Ok(resp.results.into_iter().map(|r| r.score).collect())
    }
}
