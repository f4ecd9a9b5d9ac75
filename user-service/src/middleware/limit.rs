//! A global limit on calls in progress, with load shedding, and a timeout
//! per call.

use std::{
    convert::Infallible,
    future,
    num::NonZeroUsize,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::Code;
use tower::{Layer, Service};

use super::{GrpcRequest, GrpcResponse, ResponseFuture, error_response, methods};

/// At most `max` calls in progress over all connections: one more fails at
/// once with UNAVAILABLE (reason `OVERLOADED`, so clients back off and
/// retry) instead of waiting in a queue. A call that takes longer than
/// `timeout` is dropped and fails with DEADLINE_EXCEEDED.
///
/// Health checks are neither counted nor shed: an overloaded server is busy,
/// not dead. A permit is held until the response headers are ready (for
/// streams, not while the stream runs).
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
        let response = self.inner.call(request);
        Box::pin(async move {
            let outcome = tokio::time::timeout(timeout, response).await;
            drop(permit);
            match outcome {
                Ok(response) => response,
                Err(_) => {
                    tracing::warn!(?timeout, "call timed out");
                    Ok(error_response(
                        Code::DeadlineExceeded,
                        format!("the call took longer than the server's limit of {timeout:?}"),
                        "REQUEST_TIMEOUT",
                    ))
                }
            }
        })
    }
}
