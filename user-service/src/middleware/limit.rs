//! A global limit on calls in progress, with load shedding, and a timeout
//! per call.

use std::{
    convert::Infallible,
    future::{self, Future},
    num::NonZeroUsize,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{GrpcRequest, GrpcResponse, ResponseFuture, error_response, error_status, methods};

/// At most `max` calls in progress over all connections: one more fails at
/// once with UNAVAILABLE (reason `OVERLOADED`, so clients back off and
/// retry) instead of waiting in a queue. A call that takes longer than
/// `timeout` is dropped and fails with DEADLINE_EXCEEDED.
///
/// Health checks are neither counted nor shed: an overloaded server is busy,
/// not dead. A permit is held until the response headers are ready: for
/// streams, not while the stream runs, except for calls whose work runs in
/// their stream (`ApplyEvents`, see [`methods::works_in_its_stream`]), which
/// hold it, and are bounded by `timeout`, until the stream ends.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl LimitLayer {
    /// A limit of `max` calls at once, each at most `timeout` long.
    pub fn new(max: NonZeroUsize, timeout: Duration) -> Self {
        Self { permits: Arc::new(Semaphore::new(max.get().min(Semaphore::MAX_PERMITS))), timeout }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService { inner, permits: self.permits.clone(), timeout: self.timeout }
    }
}

/// The service of [`LimitLayer`].
#[derive(Debug, Clone)]
pub struct LimitService<S> {
    inner: S,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl<S> Service<GrpcRequest> for LimitService<S>
where
    S: Service<GrpcRequest, Response = GrpcResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        if methods::is_health(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let response = error_response(
                Code::Unavailable,
                "the server is overloaded; retry with backoff",
                "OVERLOADED",
            );
            return Box::pin(future::ready(Ok(response)));
        };
        let timeout = self.timeout;
        let works_in_its_stream = methods::works_in_its_stream(request.uri().path());
        let deadline = tokio::time::Instant::now() + timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            let outcome = tokio::time::timeout_at(deadline, response).await;
            match outcome {
                Ok(Ok(response)) if works_in_its_stream => {
                    let (parts, body) = response.into_parts();
                    let body = BoundedBody {
                        inner: body,
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        timeout,
                        timed_out: false,
                        _permit: permit,
                    };
                    Ok(GrpcResponse::from_parts(parts, tonic::body::Body::new(body)))
                }
                Ok(response) => response,
                Err(_) => {
                    tracing::warn!(?timeout, "call timed out");
                    Ok(timed_out(timeout).into_http())
                }
            }
        })
    }
}

/// A call that ran past the server's limit, before its response headers or
/// in its stream: one status for both.
fn timed_out(timeout: Duration) -> Status {
    error_status(
        Code::DeadlineExceeded,
        format!("the call took longer than the server's limit of {timeout:?}"),
        "REQUEST_TIMEOUT",
    )
}

/// The response body of a call whose work runs in its stream: keeps the
/// call's permit until the stream ends, and ends it with DEADLINE_EXCEEDED
/// once the call has run for the server's limit (dropping the rest of the
/// stream cancels its work).
struct BoundedBody {
    inner: tonic::body::Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    timed_out: bool,
    _permit: OwnedSemaphorePermit,
}

impl Body for BoundedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.timed_out = true;
        let timeout = this.timeout;
        tracing::warn!(?timeout, "call timed out in its stream");
        let status = timed_out(timeout);
        let mut trailers = HeaderMap::new();
        Poll::Ready(Some(match status.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(status) => Err(status),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.timed_out { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}
