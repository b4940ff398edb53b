//! A typed client of `inferenceguard.v1.PolicyService` that keeps gRPC
//! status codes (callers retry UNAVAILABLE on another replica, never
//! INVALID_ARGUMENT).

use std::time::Duration;

use ig_proto::v1 as pb;
use ig_proto::v1::policy_service_client::PolicyServiceClient;
use tonic::transport::Channel;

pub use crate::channel::ClientError;
use ig_serve::tls::ClientTls;
use crate::channel::{connect_lazy, wait_serving};

/// Name of the policy service in `grpc.health.v1`.
pub const POLICY_SERVICE: &str = "inferenceguard.v1.PolicyService";

/// A connection to one policy endpoint.
#[derive(Debug, Clone)]
pub struct PolicyClient {
    endpoint: String,
    channel: Channel,
    inner: PolicyServiceClient<Channel>,
}

impl PolicyClient {
    /// Connects lazily to `endpoint` (e.g. `http://127.0.0.1:50051`).
    /// `tls` verifies an https:// endpoint (and presents a client certificate where it has one).
    pub fn connect_lazy(endpoint: &str, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let channel = connect_lazy(endpoint, tls)?;
        let inner = PolicyServiceClient::new(channel.clone())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Ok(Self { endpoint: endpoint.into(), channel, inner })
    }

    /// Waits until the policy's health check says SERVING (the model is
    /// loaded and warm), for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        wait_serving(&self.channel, &self.endpoint, POLICY_SERVICE, timeout).await
    }

    /// The model and the server's limits.
    pub async fn info(&self) -> Result<pb::PolicyInfoResponse, ClientError> {
        Ok(self.inner.clone().info(pb::PolicyInfoRequest {}).await?.into_inner())
    }

    /// Renders a conversation with the model's template; returns text and ids.
    pub async fn render_chat(&self, messages: Vec<pb::ChatMessage>) -> Result<pb::RenderChatResponse, ClientError> {
        let req = pb::RenderChatRequest { messages, add_generation_prompt: true };
        Ok(self.inner.clone().render_chat(req).await?.into_inner())
    }

    /// Detokenizes ids.
    pub async fn detokenize(&self, token_ids: Vec<i32>, skip_special_tokens: bool) -> Result<String, ClientError> {
        let req = pb::DetokenizeRequest { token_ids, skip_special_tokens };
        Ok(self.inner.clone().detokenize(req).await?.into_inner().text)
    }

    /// Starts a chunk extension; candidates arrive on the returned stream.
    pub async fn extend_chunk(
        &self,
        req: pb::ExtendChunkRequest,
    ) -> Result<tonic::Streaming<pb::ExtendChunkResponse>, ClientError> {
        Ok(self.inner.clone().extend_chunk(req).await?.into_inner())
    }

    /// Top-k next tokens of each sequence.
    pub async fn top_k_next(&self, req: pb::TopKNextRequest) -> Result<pb::TopKNextResponse, ClientError> {
        Ok(self.inner.clone().top_k_next(req).await?.into_inner())
    }
}
