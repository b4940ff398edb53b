//! Admission by bytes: request bodies draw on one byte budget per server while they are
//! being received and decoded.
//!
//! Counting calls does not bound memory (one call may carry a byte or the whole message
//! limit, and a connection may open a thousand streams), so every data frame of a request
//! body takes its length from a shared budget before the decoder sees it, and a frame the
//! budget cannot cover fails the call with `RESOURCE_EXHAUSTED` (retry later or
//! elsewhere), instead of waiting, which would let slow senders pin the budget. A body keeps
//! at most one message limit's worth (the decoder's buffer holds at most one message) and
//! gives its bytes back when it ends or the call goes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

/// Most message limits' worth of bytes a server receives at once.
pub const INFLIGHT_MESSAGES: usize = 4;

/// The layer: wraps every request body of the services below it.
#[derive(Clone)]
pub struct InflightBytesLayer {
    budget: Arc<Semaphore>,
    total: usize,
    per_body: usize,
}

impl InflightBytesLayer {
    /// A budget of `INFLIGHT_MESSAGES x max_message_bytes`, of which one body holds at most
    /// `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        let per_body = max_message_bytes.clamp(1, Semaphore::MAX_PERMITS / INFLIGHT_MESSAGES);
        let total = per_body * INFLIGHT_MESSAGES;
        Self { budget: Arc::new(Semaphore::new(total)), total, per_body }
    }

    /// Bytes of the budget not held by any body now.
    pub fn available(&self) -> usize {
        self.budget.available_permits()
    }
}

impl<S> tower::Layer<S> for InflightBytesLayer {
    type Service = InflightBytes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InflightBytes { inner, layer: self.clone() }
    }
}

/// See [`InflightBytesLayer`].
#[derive(Clone)]
pub struct InflightBytes<S> {
    inner: S,
    layer: InflightBytesLayer,
}

impl<S> tower::Service<http::Request<Body>> for InflightBytes<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let counted = CountedBody { inner: body, layer: self.layer.clone(), held: None };
        self.inner.call(http::Request::from_parts(parts, Body::new(counted)))
    }
}

struct CountedBody {
    inner: Body,
    layer: InflightBytesLayer,
    held: Option<OwnedSemaphorePermit>,
}

impl CountedBody {
    /// Takes `n` bytes from the budget, first giving back what this body holds beyond one
    /// message's worth (already decoded).
    fn take(&mut self, n: usize) -> Result<(), Status> {
        if let Some(held) = &mut self.held {
            let keep = self.layer.per_body.saturating_sub(n);
            if held.num_permits() > keep {
                drop(held.split(held.num_permits() - keep));
            }
        }
        let n = n.min(self.layer.per_body);
        match self.layer.budget.clone().try_acquire_many_owned(n as u32) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            Err(_) => {
                metrics::counter!("ig_admission_refused_total").increment(1);
                Err(Status::resource_exhausted(format!(
                    "the server is receiving {} bytes of requests already (its budget: {} x max_message_bytes); retry later or elsewhere",
                    self.layer.total - self.layer.available(),
                    INFLIGHT_MESSAGES
                )))
            }
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(status) = self.take(data.len()) {
                        self.held = None;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => {
                self.held = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_of(chunks: Vec<usize>) -> Body {
        let frames = chunks.into_iter().map(|n| Ok::<_, Status>(Frame::data(bytes::Bytes::from(vec![0u8; n]))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)))
    }

    fn counted(layer: &InflightBytesLayer, chunks: Vec<usize>) -> CountedBody {
        CountedBody { inner: body_of(chunks), layer: layer.clone(), held: None }
    }

    #[tokio::test]
    async fn bodies_share_the_budget_and_give_it_back() {
        let layer = InflightBytesLayer::new(100); // 400 bytes in all
        let mut bodies: Vec<CountedBody> = (0..4).map(|_| counted(&layer, vec![100, 1])).collect();
        for b in &mut bodies {
            b.frame().await.unwrap().unwrap();
        }
        assert_eq!(layer.available(), 0);
        // A fifth body is refused at its first frame, with RESOURCE_EXHAUSTED.
        let err = counted(&layer, vec![1]).frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("max_message_bytes"), "{}", err.message());
        // A body that ends gives its bytes back; one that is dropped too.
        let mut first = bodies.remove(0);
        first.frame().await.unwrap().unwrap();
        assert!(first.frame().await.is_none());
        assert_eq!(layer.available(), 100);
        drop(bodies);
        assert_eq!(layer.available(), 400);
    }

    #[tokio::test]
    async fn a_long_stream_holds_at_most_one_message_worth() {
        let layer = InflightBytesLayer::new(100);
        let mut stream = counted(&layer, vec![60; 50]);
        for _ in 0..50 {
            stream.frame().await.unwrap().unwrap();
            assert!(layer.available() >= 300, "held {}", 400 - layer.available());
        }
    }
}
