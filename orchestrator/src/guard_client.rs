//! A typed client of `inferenceguard.v1.GuardService`, the public API.

use std::time::Duration;

use futures::StreamExt;
use ig_proto::v1 as pb;
use ig_proto::v1::guard_service_client::GuardServiceClient;
use tonic::transport::Channel;

pub use crate::channel::ClientError;
use crate::channel::{connect_lazy, wait_serving};
use ig_serve::tls::ClientTls;
use crate::guard::SERVICE_NAME;

/// A connection to one orchestrator.
#[derive(Debug, Clone)]
pub struct GuardClient {
    endpoint: String,
    channel: Channel,
    inner: GuardServiceClient<Channel>,
    /// `Bearer <token>`, sent with every Guard call.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl GuardClient {
    /// Connects lazily to `endpoint` (e.g. `http://127.0.0.1:50050`; `https://...` with
    /// `tls`).
    pub fn connect_lazy(endpoint: &str, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let channel = connect_lazy(endpoint, tls)?;
        Ok(Self { endpoint: endpoint.into(), inner: GuardServiceClient::new(channel.clone()), channel, authorization: None })
    }

    /// Sends `token` as `authorization: Bearer <token>` with every Guard call.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::Connect {
            endpoint: self.endpoint.clone(),
            message: "--token: must be printable ASCII".into(),
        })?;
        self.authorization = Some(value);
        Ok(self)
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        if let Some(a) = &self.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        request
    }

    /// Waits until the orchestrator's health check says SERVING.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        wait_serving(&self.channel, &self.endpoint, SERVICE_NAME, timeout).await
    }

    /// The registry's models.
    pub async fn list_models(&self) -> Result<Vec<pb::RegisteredModel>, ClientError> {
        Ok(self.inner.clone().list_models(self.request(pb::ListModelsRequest { role: 0 }, None)).await?.into_inner().models)
    }

    /// Runs one guarded generation; `timeout` becomes the request's deadline.
    pub async fn generate(&self, req: pb::GenerateRequest, timeout: Option<Duration>) -> Result<pb::GenerationResult, ClientError> {
        let reply = self.inner.clone().generate(self.request(req, timeout)).await?.into_inner();
        reply.result.ok_or_else(|| ClientError::Status(tonic::Status::internal("the reply has no result")))
    }

    /// Runs one guarded generation, calling `on_step` for each progress
    /// event; `timeout` becomes the request's deadline.
    pub async fn generate_stream(
        &self,
        req: pb::GenerateStreamRequest,
        timeout: Option<Duration>,
        mut on_step: impl FnMut(&pb::StepEvent),
    ) -> Result<pb::GenerationResult, ClientError> {
        let mut stream = self.inner.clone().generate_stream(self.request(req, timeout)).await?.into_inner();
        while let Some(msg) = stream.next().await {
            match msg?.event {
                Some(pb::generate_stream_response::Event::Step(s)) => on_step(&s),
                Some(pb::generate_stream_response::Event::Result(r)) => return Ok(r),
                None => {}
            }
        }
        Err(ClientError::Status(tonic::Status::internal("the stream ended without a result")))
    }
}
