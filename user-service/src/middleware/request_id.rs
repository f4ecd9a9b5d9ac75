//! The request id: taken from the `x-request-id` metadata when it is
//! reasonable, else a new UUID v7; written on a span around the whole call
//! and sent back in the response headers.

use std::{
    convert::Infallible,
    fmt,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower::{Layer, Service};
use tracing::Instrument;

use super::{GrpcRequest, GrpcResponse, ResponseFuture, methods};

/// The metadata key of the request id, in requests and responses.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a caller.
const MAX_LEN: usize = 128;

/// A request's id; also in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's id, if it is 1 to 128 characters of letters, digits and
    /// `-_.:` (anything else could forge log lines or blow up their size).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&REQUEST_ID_HEADER)?;
        acceptable(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// `text` as a request id, by the same rule as [`Self::from_headers`]
    /// (for a write of a batch, which carries its own).
    pub fn parse(text: &str) -> Option<Self> {
        if !acceptable(text.as_bytes()) {
            return None;
        }
        HeaderValue::from_str(text).ok().map(Self)
    }

    /// A new id: a UUID v7 (time-ordered).
    pub fn generate() -> Self {
        let text = uuid::Uuid::now_v7().hyphenated().to_string();
        // A UUID is always a valid header value.
        Self(HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("invalid")))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII was accepted or generated.
        self.0.to_str().unwrap_or_default()
    }
}

/// Whether `bytes` may be a request id: 1 to 128 letters, digits and `-_.:`.
fn acceptable(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Adds the request id and the call's span; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S> Service<GrpcRequest> for RequestIdService<S>
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

    fn call(&mut self, mut request: GrpcRequest) -> Self::Future {
        let id = RequestId::from_headers(request.headers()).unwrap_or_else(RequestId::generate);
        let span = tracing::info_span!(
            "rpc",
            method = methods::label(request.uri().path()),
            request_id = %id,
            client = tracing::field::Empty,
        );
        request.extensions_mut().insert(id.clone());
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = response.await?;
                response.headers_mut().insert(REQUEST_ID_HEADER, id.0);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_reasonable_caller_id_is_kept() {
        let id = RequestId::from_headers(&with_id("req-42_a.b:c")).unwrap();
        assert_eq!(id.as_str(), "req-42_a.b:c");
    }

    #[test]
    fn odd_or_long_caller_ids_are_replaced() {
        assert!(RequestId::from_headers(&with_id("a b")).is_none());
        assert!(RequestId::from_headers(&with_id("x\"}{")).is_none());
        assert!(RequestId::from_headers(&with_id(&"a".repeat(129))).is_none());
        assert!(RequestId::from_headers(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_request_id_from_text_follows_the_same_rule() {
        assert_eq!(
            RequestId::parse("req-42_a.b:c").map(|id| id.to_string()).as_deref(),
            Some("req-42_a.b:c")
        );
        for odd in ["", "a b", "a\nb", &"a".repeat(129)] {
            assert!(RequestId::parse(odd).is_none(), "{odd:?}");
        }
    }

    #[test]
    fn generated_ids_are_uuids() {
        let id = RequestId::generate();
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{id}");
    }
}
