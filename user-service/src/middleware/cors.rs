//! CORS for browsers calling over gRPC-Web, from the configured origins only.
//!
//! A request whose `Origin` is allowed goes through tower-http's CORS
//! service (preflights answered, `grpc-status`, `grpc-message` and
//! `grpc-status-details-bin` exposed); any other request, including native
//! gRPC (no `Origin`) and browsers on other origins, bypasses it and so gets
//! no CORS header at all.

use std::{
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures::future::Either;
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

use super::REQUEST_ID_HEADER;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a gRPC-Web client sends (besides the CORS-safelisted ones).
const ALLOWED_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("grpc-timeout"),
    HeaderName::from_static("x-grpc-web"),
    HeaderName::from_static("x-user-agent"),
    REQUEST_ID_HEADER,
];

/// Response headers the browser's script may read: the call's status lives
/// in them (and in trailers, which gRPC-Web moves into the body).
const EXPOSED_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("grpc-status"),
    HeaderName::from_static("grpc-message"),
    HeaderName::from_static("grpc-status-details-bin"),
    REQUEST_ID_HEADER,
];

/// CORS for `origins` (each already checked to be an origin).
#[derive(Debug, Clone)]
pub struct BrowserCorsLayer {
    origins: Arc<[HeaderValue]>,
    cors: CorsLayer,
}

impl BrowserCorsLayer {
    /// Allows exactly `origins`; empty allows none.
    pub fn new(origins: &[String]) -> Self {
        let origins: Arc<[HeaderValue]> =
            origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()).collect();
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::POST])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE);
        Self { origins, cors }
    }
}

impl<S: Clone> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BrowserCors { origins: self.origins.clone(), cors: self.cors.layer(inner.clone()), plain: inner }
    }
}

/// The service of [`BrowserCorsLayer`].
#[derive(Debug, Clone)]
pub struct BrowserCors<S> {
    origins: Arc<[HeaderValue]>,
    cors: Cors<S>,
    plain: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BrowserCors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<<Cors<S> as Service<Request<ReqBody>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.cors.poll_ready(cx))?;
        self.plain.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let allowed =
            request.headers().get(header::ORIGIN).is_some_and(|origin| self.origins.contains(origin));
        if allowed { Either::Left(self.cors.call(request)) } else { Either::Right(self.plain.call(request)) }
    }
}
