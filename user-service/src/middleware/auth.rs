//! Checks the bearer token and the scope of the method, once per call,
//! before any handler runs.

use std::{
    convert::Infallible,
    future,
    sync::Arc,
    task::{Context, Poll},
};

use http::header::AUTHORIZATION;
use tonic::Code;
use tower::{Layer, Service};

use super::{
    GrpcRequest, GrpcResponse, ResponseFuture, error_response,
    methods::{self, Access},
};
use crate::auth::Tokens;

/// Authenticates calls with [`Tokens`]; without tokens lets every call in.
///
/// A call without a valid token gets UNAUTHENTICATED, one whose client lacks
/// the method's scope PERMISSION_DENIED. An authenticated call carries its
/// [`crate::auth::Client`] in the request extensions, and its name on the
/// call's span (`client`).
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    /// Checks calls against `tokens`; `None` turns authentication off.
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, tokens: self.tokens.clone() }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Service<GrpcRequest> for AuthService<S>
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
        let Some(tokens) = &self.tokens else {
            return Box::pin(self.inner.call(request));
        };
        let Access::Scope(needed) = methods::access(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let client = match tokens.authenticate(request.headers().get(AUTHORIZATION)) {
            Ok(client) => client.clone(),
            Err(rejection) => {
                tracing::warn!(reason = rejection.message(), "call rejected: not authenticated");
                let response = error_response(Code::Unauthenticated, rejection.message(), "UNAUTHENTICATED");
                return Box::pin(future::ready(Ok(response)));
            }
        };
        tracing::Span::current().record("client", client.name());
        if !client.scopes().contains(needed) {
            tracing::warn!(scope = needed.as_str(), "call rejected: missing scope");
            let response = error_response(
                Code::PermissionDenied,
                format!("this call needs the `{needed}` scope"),
                "MISSING_SCOPE",
            );
            return Box::pin(future::ready(Ok(response)));
        }
        request.extensions_mut().insert(client);
        Box::pin(self.inner.call(request))
    }
}
