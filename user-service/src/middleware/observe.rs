//! One log line and the metrics of every call, with its final gRPC code.
//!
//! The code is in the response headers for trailers-only responses (errors),
//! else in the trailers after the body: then the body is wrapped, and the
//! call is recorded when the trailers pass. A call whose future or body is
//! dropped before that (client gone, stream reset) is recorded as CANCELLED.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tower::{Layer, Service};
use userdata_kit::grpc_code;

use super::{GrpcRequest, GrpcResponse, ResponseFuture, methods};
use crate::metrics::Metrics;

/// Records calls; see the module docs. Without [`Metrics`], only logs.
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer {
    metrics: Option<Arc<Metrics>>,
}

impl ObserveLayer {
    /// Logs every call, and counts it in `metrics` if given.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService { inner, metrics: self.metrics.clone() }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct ObserveService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S> Service<GrpcRequest> for ObserveService<S>
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
        let path = request.uri().path();
        let mut call = Call {
            method: methods::label(path),
            quiet: methods::is_health(path),
            started: Instant::now(),
            span: tracing::Span::current(),
            metrics: self.metrics.clone(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            if body.is_end_stream() {
                // Neither a status in the headers nor a body to bring one.
                call.finish(Code::Unknown);
                return Ok(GrpcResponse::from_parts(parts, body));
            }
            let body = tonic::body::Body::new(ObservedBody { inner: body, call });
            Ok(GrpcResponse::from_parts(parts, body))
        })
    }
}

/// A call being recorded; records exactly once.
struct Call {
    method: &'static str,
    /// Health checks log at DEBUG: probes would drown everything else.
    quiet: bool,
    started: Instant,
    span: tracing::Span,
    metrics: Option<Arc<Metrics>>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.record_call(self.method, code, elapsed);
        }
        self.log(code, elapsed);
    }

    fn log(&self, code: Code, elapsed: Duration) {
        let code = grpc_code::name(code);
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        if self.quiet {
            tracing::debug!(parent: &self.span, code, elapsed_ms, "call finished");
        } else {
            tracing::info!(parent: &self.span, code, elapsed_ms, "call finished");
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A response body that records the call when its trailers pass.
struct ObservedBody {
    inner: tonic::body::Body,
    call: Call,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code()),
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|value| Code::from_bytes(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(Code::NotFound));
    }
}
